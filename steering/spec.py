"""Steering spec: the terms a request carries, their validation, resolution and canonical hash.

Importable without torch or vLLM. A request's terms are *resolved* against the vector registry and the served
model into a `ResolvedSpec`: every default filled in, layers made non-negative, trigger strings turned into
token ids, vectors named by content hash. Its `config_hash` identifies the steering for slot sharing and for
salting the prefix cache.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import math
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, field_validator

from steering.conditions import Condition, ResolvedCondition, resolve_condition
from steering.errors import InvalidSteeringError, UnknownVectorError
from steering.vectors import (
    SITES,
    Op,
    PositionMode,
    Site,
    SteeringVector,
    VectorLookup,
    check_vector_ref,
    parse_vector_ref,
)

POSITION_MODES: tuple[str, ...] = (*get_args(PositionMode), "tokens")


class TokenPositions(BaseModel):
    """Steer only where the input token is one of these (ids, or strings that encode to one token)."""

    model_config = ConfigDict(extra="forbid")
    tokens: list[Union[int, str]] = Field(min_length=1)


class Schedule(BaseModel):
    """The strength as a function of the request's generated-token count t: piecewise linear through `points`
    (`[t, strength]`, t strictly increasing), constant before the first point and after the last. For the token
    whose output is the request's j-th generated token (0-based), t = j; prompt tokens before it have t = 0."""

    model_config = ConfigDict(extra="forbid")
    by: Literal["generated_tokens"] = "generated_tokens"
    points: list[tuple[int, float]] = Field(min_length=1, description="[[t, strength], ...], t increasing.")

    @field_validator("points")
    @classmethod
    def _check_points(cls, points: list[tuple[int, float]]) -> list[tuple[int, float]]:
        counts = [t for t, _ in points]
        if any(t < 0 for t in counts) or any(b <= a for a, b in zip(counts, counts[1:], strict=False)):
            raise ValueError("token counts must be >= 0 and strictly increasing")
        if not all(math.isfinite(s) for _, s in points):
            raise ValueError("strengths must be finite")
        return points


class SteeringTerm(BaseModel):
    """One term of a request's steering; unset fields take the vector's stored defaults."""

    model_config = ConfigDict(extra="forbid")

    vector: str = Field(description="Vector id, optionally pinned to a version: `id` or `id@3`.")
    strength: FiniteFloat | None = Field(default=None, description="Scale s of the op (see README formulas).")
    layers: list[int] | None = Field(
        default=None, description="Decoder blocks (0-based output index; negative counts from the end)."
    )
    op: Op | None = None
    site: Site | None = None
    positions: PositionMode | TokenPositions | None = None
    schedule: Schedule | None = Field(
        default=None, description="Strength by generated-token count (add and project), instead of `strength`."
    )
    condition: Condition | None = Field(
        default=None, description="Act only where a probe direction's projection exceeds a threshold."
    )

    _check_ref = field_validator("vector")(check_vector_ref)


@dataclass(frozen=True)
class ModelShape:
    """What the spec needs to know about the served model."""

    num_layers: int
    hidden_size: int
    vocab_size: int
    architecture: str = ""
    name: str = ""

    def fingerprint(self) -> dict[str, Any]:
        """What a stored vector records about the model it was made for."""
        return {
            "architecture": self.architecture,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "name": self.name,
        }


@dataclass(frozen=True)
class SteeringLimits:
    """Bounds a request's steering must respect; the engine's tables are sized from the same numbers."""

    max_strength: float = 1000.0
    max_terms: int = 16
    max_terms_per_site: int = 4
    max_trigger_tokens: int = 8
    max_schedule_points: int = 8


@dataclass(frozen=True)
class ResolvedTerm:
    """A term with every field decided; vectors named by id/version for humans and sha256 for the engine."""

    vector_id: str
    version: int
    sha256: str
    strength: float
    layers: tuple[int, ...]
    op: str
    site: str
    positions: str
    tokens: tuple[int, ...] = ()
    schedule: tuple[tuple[int, float], ...] = ()  # (t, strength) points; set: `strength` is 1 (the unit)
    condition: ResolvedCondition | None = None
    vector: SteeringVector | None = field(default=None, compare=False, repr=False)  # for loading into workers

    def canonical(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "sha256": self.sha256,
            "strength": repr(float(self.strength)),
            "layers": list(self.layers),
            "op": self.op,
            "site": self.site,
            "positions": self.positions,
            "tokens": list(self.tokens),
        }
        if self.schedule:
            body["schedule"] = [[t, repr(float(s))] for t, s in self.schedule]
        if self.condition is not None:
            body["condition"] = self.condition.canonical()
        return body

    def describe(self) -> dict[str, Any]:
        body = {
            "vector": self.vector_id,
            "version": self.version,
            "strength": None if self.schedule else self.strength,
            "layers": list(self.layers),
            "op": self.op,
            "site": self.site,
            "positions": {"tokens": list(self.tokens)} if self.positions == "tokens" else self.positions,
        }
        if self.schedule:
            body["schedule"] = {"by": "generated_tokens", "points": [[t, s] for t, s in self.schedule]}
        if self.condition is not None:
            body["condition"] = self.condition.describe()
        return body


@dataclass(frozen=True)
class ResolvedSpec:
    """The resolved, ordered terms of one request; empty means unsteered."""

    terms: tuple[ResolvedTerm, ...]
    config_hash: str = field(init=False)

    def __post_init__(self) -> None:
        blob = json.dumps([t.canonical() for t in self.terms], sort_keys=True, separators=(",", ":"))
        object.__setattr__(self, "config_hash", hashlib.sha256(blob.encode()).hexdigest()[:32])

    @property
    def is_noop(self) -> bool:
        return not self.terms

    @property
    def vector_hashes(self) -> tuple[str, ...]:
        return tuple(self.vectors)

    @property
    def vectors(self) -> dict[str, SteeringVector | None]:
        """Every vector the workers need (steering and condition directions), by content hash."""
        found: dict[str, SteeringVector | None] = {}
        for term in self.terms:
            found.setdefault(term.sha256, term.vector)
            if term.condition is not None:
                found.setdefault(term.condition.sha256, term.condition.vector)
        return found

    @property
    def decides_on_prompt(self) -> bool:
        """A term's condition reads the whole prompt (scope `prompt`)."""
        return any(t.condition is not None and t.condition.scope == "prompt" for t in self.terms)

    def engine_payload(self) -> dict[str, Any]:
        """The JSON-able form that travels in `SamplingParams.extra_args` (hashes, no names)."""
        return {"hash": self.config_hash, "terms": [t.canonical() for t in self.terms]}

    def engine_fields(self, slot: int, ticket: str, vectors: Sequence[SteeringVector] = ()) -> dict[str, str]:
        """What a request carries to the workers: the slot the API process admitted it to, a ticket to ask after
        it by, and the `vectors` the workers may not hold yet (every layer, base64 little-endian float32).
        vLLM's `vllm_xargs` / `SamplingParams.extra_args` are flat: the payload travels as JSON."""
        payload: dict[str, Any] = {**self.engine_payload(), "slot": slot, "ticket": ticket}
        if vectors:
            payload["vectors"] = [
                {
                    "sha256": v.sha256,
                    "layers": {
                        str(layer): base64.b64encode(np.asarray(d, dtype="<f4").tobytes()).decode()
                        for layer, d in v.layers.items()
                    },
                }
                for v in vectors
            ]
        return {"steerserve": json.dumps(payload, separators=(",", ":"))}

    def cache_salt(self, existing: str | None = None) -> str:
        """The prefix-cache salt: steered KV is never shared with another config or with unsteered requests. A
        prompt-scoped condition decides from every prompt token's stream, and what it decided shapes the KV of
        the tokens after the prompt: such a request shares its cache with no other (a salt of its own)."""
        own = f":{uuid.uuid4().hex}" if self.decides_on_prompt else ""
        return f"steer:{self.config_hash}{own}" + (f"|{existing}" if existing else "")

    def describe(self) -> dict[str, Any]:
        return {"config_hash": self.config_hash, "terms": [t.describe() for t in self.terms]}


TokenEncoder = Callable[[str], list[int]]


def resolve_spec(
    terms: Sequence[SteeringTerm],
    lookup: VectorLookup,
    model: ModelShape,
    limits: SteeringLimits = SteeringLimits(),
    encode: TokenEncoder | None = None,
    sites: Sequence[str] = SITES,
    layers: Collection[int] | None = None,
    conditions_unavailable: str | None = None,
) -> ResolvedSpec:
    """Validate `terms` against the registry (`lookup`), the model, `limits` and the sites and `layers` (absolute;
    None: all) the engine has an op at (`conditions_unavailable`: why this engine cannot gate terms, or None);
    raise a `SteerserveError`."""
    if len(terms) > limits.max_terms:
        raise InvalidSteeringError(
            f"at most {limits.max_terms} steering terms are allowed, got {len(terms)}", param="steering"
        )
    resolved: list[ResolvedTerm] = []
    for index, term in enumerate(terms):
        item = _resolve_term(term, f"steering[{index}]", lookup, model, limits, encode, sites, layers)
        if item is not None and term.condition is not None:
            condition = resolve_condition(
                term.condition,
                f"steering[{index}]",
                lookup,
                model.hidden_size,
                model.num_layers,
                item.layers,
                item.site,
                layers,
                conditions_unavailable,
            )
            item = dataclasses.replace(item, condition=condition)
        if item is not None:
            resolved.append(item)
    per_site = Counter((layer, t.site) for t in resolved for layer in t.layers)
    for (layer, site), count in per_site.items():
        if count > limits.max_terms_per_site:
            raise InvalidSteeringError(
                f"{count} terms steer layer {layer} at site {site!r}; at most {limits.max_terms_per_site} "
                "may share one layer and site",
                param="steering",
            )
    per_layer = Counter(t.condition.layer for t in resolved if t.condition is not None)
    for layer, count in per_layer.items():
        if count > limits.max_terms_per_site:
            raise InvalidSteeringError(
                f"{count} conditions read layer {layer}; at most {limits.max_terms_per_site} may share one layer",
                param="steering",
            )
    return ResolvedSpec(tuple(resolved))


def _resolve_term(
    term: SteeringTerm,
    where: str,
    lookup: VectorLookup,
    model: ModelShape,
    limits: SteeringLimits,
    encode: TokenEncoder | None,
    sites: Sequence[str],
    steerable: Collection[int] | None,
) -> ResolvedTerm | None:
    vector_id, version = parse_vector_ref(term.vector)
    try:
        vector = lookup(vector_id, version)
    except KeyError:
        pinned = f" version {version}" if version is not None else ""
        raise UnknownVectorError(f"unknown steering vector {vector_id!r}{pinned}", param=f"{where}.vector") from None
    if vector.hidden_size != model.hidden_size:
        raise InvalidSteeringError(
            f"vector {vector_id!r} has hidden size {vector.hidden_size}, the model has {model.hidden_size}",
            param=f"{where}.vector",
        )
    defaults = vector.defaults
    op = term.op or defaults.op
    schedule = _resolve_schedule(term, op, limits, where)
    strength = 1.0 if schedule else float(term.strength if term.strength is not None else defaults.strength)
    if not math.isfinite(strength) or abs(strength) > limits.max_strength:
        raise InvalidSteeringError(
            f"strength must be finite with |strength| <= {limits.max_strength:g}, got {strength!r}",
            param=f"{where}.strength",
        )
    site = term.site or defaults.site
    if site not in sites:
        raise InvalidSteeringError(
            f"site {site!r} is not enabled on this server (enabled: {', '.join(sites)}; see --steering-sites)",
            param=f"{where}.site",
        )
    layers = _resolve_layers(term.layers, vector, model, f"{where}.layers")
    if steerable is not None and not set(layers) <= set(steerable):
        raise InvalidSteeringError(
            f"layer(s) {sorted(set(layers) - set(steerable))} are not steerable on this server (steerable: "
            f"{sorted(steerable)}; see --steering-layers)",
            param=f"{where}.layers",
        )
    positions, tokens = _resolve_positions(term.positions or defaults.positions, model, limits, encode, where)
    zero = all(s == 0.0 for _, s in schedule) if schedule else strength == 0.0
    if zero and op in ("add", "project"):
        return None  # the identity: dropping it lets zero-strength arms share the unsteered cache
    return ResolvedTerm(
        vector_id, vector.version, vector.sha256, strength, layers, op, site, positions, tokens, schedule, vector=vector
    )


def _resolve_schedule(term: SteeringTerm, op: str, limits: SteeringLimits, where: str) -> tuple[tuple[int, float], ...]:
    if term.schedule is None:
        return ()
    param = f"{where}.schedule"
    if term.strength is not None:
        raise InvalidSteeringError("a term takes `strength` or `schedule`, not both", param=param)
    if op not in ("add", "project"):
        raise InvalidSteeringError(
            f"a schedule scales `add` and `project` terms; `{op}` sets a target value", param=param
        )
    points = term.schedule.points
    if len(points) > limits.max_schedule_points:
        raise InvalidSteeringError(f"at most {limits.max_schedule_points} schedule points", param=param)
    if any(abs(s) > limits.max_strength for _, s in points):
        raise InvalidSteeringError(f"schedule strengths must be within ±{limits.max_strength:g}", param=param)
    return tuple((int(t), float(s)) for t, s in points)


def _resolve_layers(
    asked: list[int] | tuple[int, ...] | None, vector: SteeringVector, model: ModelShape, param: str
) -> tuple[int, ...]:
    if asked is None:
        asked = list(vector.defaults.layers) if vector.defaults.layers is not None else sorted(vector.layers)
    if not asked:
        raise InvalidSteeringError("layers must not be empty", param=param)
    layers: list[int] = []
    for layer in asked:
        if not -model.num_layers <= layer < model.num_layers:
            raise InvalidSteeringError(
                f"layer {layer} does not exist: the model has {model.num_layers} layers "
                f"(0..{model.num_layers - 1}, or negative from the end)",
                param=param,
            )
        absolute = layer % model.num_layers
        if absolute not in vector.layers:
            raise InvalidSteeringError(
                f"vector {vector.id!r} has no direction for layer {absolute}; it covers {sorted(vector.layers)}",
                param=param,
            )
        if absolute not in layers:
            layers.append(absolute)
    return tuple(sorted(layers))


def _resolve_positions(
    positions: str | TokenPositions,
    model: ModelShape,
    limits: SteeringLimits,
    encode: TokenEncoder | None,
    where: str,
) -> tuple[str, tuple[int, ...]]:
    if isinstance(positions, str):
        if positions not in POSITION_MODES or positions == "tokens":
            raise InvalidSteeringError(f"unknown positions mode {positions!r}", param=f"{where}.positions")
        return positions, ()
    if len(positions.tokens) > limits.max_trigger_tokens:
        raise InvalidSteeringError(
            f"at most {limits.max_trigger_tokens} trigger tokens per term", param=f"{where}.positions.tokens"
        )
    ids: list[int] = []
    for token in positions.tokens:
        if isinstance(token, int):
            if not 0 <= token < model.vocab_size:
                raise InvalidSteeringError(
                    f"token id {token} is outside the vocabulary (0..{model.vocab_size - 1})",
                    param=f"{where}.positions.tokens",
                )
            ids.append(token)
            continue
        if encode is None:
            raise InvalidSteeringError("string trigger tokens need the served tokenizer", param=f"{where}.positions")
        encoded = encode(token)
        if len(encoded) != 1:
            raise InvalidSteeringError(
                f"trigger {token!r} encodes to {len(encoded)} tokens {encoded}; it must be exactly one token",
                param=f"{where}.positions.tokens",
            )
        ids.append(encoded[0])
    return "tokens", tuple(sorted(set(ids)))
