"""steerserve's steering core: spec, vectors, registry and the vLLM plugin (no FastAPI here)."""

__version__ = "0.1.0"
