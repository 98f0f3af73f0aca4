"""Build steering vectors from the served model's own activations: contrasts, positions, methods, layer scan."""
