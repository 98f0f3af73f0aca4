"""Probe-gated steering: a term that acts only where a condition direction says the context calls for it.

A term's `condition` names a vector c, a layer Lc, a threshold θ and a scope. With r̂ = c[Lc] / |c[Lc]| and x the
residual stream after block Lc (before any steering of layer Lc's own mlp/residual sites, after the steering of
earlier layers):

- scope `token`: the term acts on a token iff r̂·x > θ at that token;
- scope `prompt` (CAST's way): iff the mean of r̂·x over the prompt's tokens > θ, decided once when the prompt's
  last token passes block Lc and held for every later token of the request (the term never acts on the prompt's
  earlier tokens: their outputs come before the decision).

The gate multiplies the term's position gate (and its schedule's strength). Lc must not come after the term's
layers (for site `attn`, it must come before them: a block's attention runs before its output exists).
Importable without torch or vLLM.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, field_validator

from steering.errors import InvalidSteeringError, UnknownVectorError
from steering.vectors import ConditionScope, SteeringVector, VectorLookup, check_vector_ref, parse_vector_ref


class Condition(BaseModel):
    """Gate a term on the projection of the stream after block `layer` onto the direction of `vector`."""

    model_config = ConfigDict(extra="forbid")
    vector: str = Field(description="Condition vector id, optionally `id@version`.")
    layer: int = Field(description="Block Lc whose output stream is read (negative counts from the end).")
    threshold: FiniteFloat | None = Field(
        default=None, description="θ on r̂·x; default: the threshold extraction stored with the vector for Lc."
    )
    scope: ConditionScope | None = Field(default=None, description="`token` or `prompt`; default: the vector's.")

    _check_ref = field_validator("vector")(check_vector_ref)


@dataclass(frozen=True)
class ResolvedCondition:
    vector_id: str
    version: int
    sha256: str
    layer: int
    threshold: float
    scope: str
    vector: SteeringVector | None = field(default=None, compare=False, repr=False)

    def canonical(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "layer": self.layer, "threshold": repr(self.threshold), "scope": self.scope}

    def describe(self) -> dict[str, Any]:
        return {
            "vector": self.vector_id,
            "version": self.version,
            "layer": self.layer,
            "threshold": self.threshold,
            "scope": self.scope,
        }


def resolve_condition(
    condition: Condition,
    where: str,
    lookup: VectorLookup,
    hidden_size: int,
    num_layers: int,
    term_layers: tuple[int, ...],
    site: str,
    steerable: Collection[int] | None,
    allowed: str | None,
) -> ResolvedCondition:
    """Validate one term's condition (`allowed`: None, or why this engine cannot evaluate conditions)."""
    param = f"{where}.condition"
    if allowed is not None:
        raise InvalidSteeringError(f"conditions are not available here: {allowed}", param=param)
    vector_id, version = parse_vector_ref(condition.vector)
    try:
        vector = lookup(vector_id, version)
    except KeyError:
        raise UnknownVectorError(f"unknown condition vector {vector_id!r}", param=f"{param}.vector") from None
    if vector.hidden_size != hidden_size:
        raise InvalidSteeringError(
            f"condition vector {vector_id!r} has hidden size {vector.hidden_size}, the model has {hidden_size}",
            param=f"{param}.vector",
        )
    if not -num_layers <= condition.layer < num_layers:
        raise InvalidSteeringError(
            f"layer {condition.layer} does not exist: the model has {num_layers} layers", param=f"{param}.layer"
        )
    layer = condition.layer % num_layers
    if layer not in vector.layers:
        raise InvalidSteeringError(
            f"condition vector {vector_id!r} has no direction for layer {layer}; it covers {sorted(vector.layers)}",
            param=f"{param}.layer",
        )
    if steerable is not None and layer not in steerable:
        raise InvalidSteeringError(
            f"layer {layer} has no steering op on this server (see --steering-layers)", param=f"{param}.layer"
        )
    first = min(term_layers)
    if layer > first or (site == "attn" and layer == first):
        rule = "before" if site == "attn" else "at or before"
        raise InvalidSteeringError(
            f"the condition's layer {layer} must come {rule} the term's first layer {first} (site {site!r})",
            param=f"{param}.layer",
        )
    defaults = vector.defaults.condition
    threshold = condition.threshold
    if threshold is None:
        if defaults is None or layer not in defaults.thresholds:
            raise InvalidSteeringError(
                f"give a threshold: vector {vector_id!r} stores none for layer {layer}", param=f"{param}.threshold"
            )
        threshold = defaults.thresholds[layer]
    scope = condition.scope or (defaults.scope if defaults is not None else "token")
    return ResolvedCondition(vector_id, vector.version, vector.sha256, layer, float(threshold), scope, vector)
