"""Steering vectors: one direction per covered layer, immutable, identified by a content hash; the op, site and
position vocabulary and a vector's defaults, defined once for the spec, the store, the server and the clients."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from steering.errors import InvalidSteeringError

Float32Array = npt.NDArray[np.float32]
Op = Literal["add", "project", "clamp"]
Site = Literal["residual", "mlp", "attn"]
PositionMode = Literal["all", "prompt", "generated", "last_prompt"]
ConditionScope = Literal["token", "prompt"]
SITES: tuple[str, ...] = get_args(Site)


class ConditionDefaults(BaseModel):
    """What a term's `condition` naming this vector takes when it leaves threshold or scope unset (extraction
    writes them: the probe's cut on r̂·x per layer, and the scope its rows were pooled for)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    thresholds: dict[int, float] = Field(description="Per layer: θ on r̂·x.")
    scope: ConditionScope = "token"


class VectorDefaults(BaseModel):
    """Values a term takes when it leaves a field unset (stored with each vector version)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    strength: float = Field(default=1.0, allow_inf_nan=False)
    op: Op = "add"
    site: Site = "residual"
    positions: PositionMode = "all"
    layers: tuple[int, ...] | None = Field(default=None, description="None: every layer the vector covers.")
    condition: ConditionDefaults | None = Field(default=None, description="Defaults when used as a condition.")


@dataclass(frozen=True)
class SteeringVector:
    """A versioned steering vector: `layers[L]` is the direction for decoder block L (0-based)."""

    id: str
    layers: Mapping[int, Float32Array]
    version: int = 1
    defaults: VectorDefaults = field(default_factory=VectorDefaults)

    def __post_init__(self) -> None:
        if not self.layers:
            raise InvalidSteeringError(f"vector {self.id!r} covers no layer", param="layers")
        sizes = {int(v.shape[-1]) for v in self.layers.values()}
        if len(sizes) != 1 or any(v.ndim != 1 for v in self.layers.values()):
            raise InvalidSteeringError(
                f"vector {self.id!r}: every layer must hold a 1-D direction of one size", param="layers"
            )
        for layer, data in self.layers.items():
            if data.dtype != np.float32:
                raise InvalidSteeringError(f"vector {self.id!r}: layer {layer} is not float32", param="layers")
            if not np.isfinite(data).all():
                raise InvalidSteeringError(
                    f"vector {self.id!r}: layer {layer} holds NaN or Inf", param=f"layers.{layer}"
                )
            if not math.isfinite(float(np.linalg.norm(data))) or not np.any(data):
                raise InvalidSteeringError(
                    f"vector {self.id!r}: layer {layer} is zero or overflows", param=f"layers.{layer}"
                )

    @property
    def hidden_size(self) -> int:
        return int(next(iter(self.layers.values())).shape[-1])

    @property
    def sha256(self) -> str:
        """Content hash over (layer, little-endian float32 bytes), in layer order; names do not enter it."""
        return content_hash(self.layers)


VECTOR_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_VECTOR_REF = re.compile(rf"^(?P<id>{VECTOR_ID_PATTERN})(?:@(?P<version>[1-9][0-9]{{0,8}}))?$")


def parse_vector_ref(ref: str) -> tuple[str, int | None]:
    """Split `id[@version]`."""
    match = _VECTOR_REF.match(ref)
    if match is None:
        raise InvalidSteeringError(f"invalid vector reference {ref!r}", param="steering.vector")
    version = match.group("version")
    return match.group("id"), int(version) if version else None


def check_vector_ref(value: str) -> str:
    """A pydantic validator of a vector reference field."""
    if not _VECTOR_REF.match(value):
        raise ValueError("must be `<id>` or `<id>@<version>`; ids use letters, digits, '.', '_', '-'")
    return value


VectorLookup = Callable[[str, int | None], "SteeringVector"]  # (id, version or None) -> vector; KeyError if unknown


def content_hash(layers: Mapping[int, Float32Array]) -> str:
    digest = hashlib.sha256()
    for layer in sorted(layers):
        data = np.ascontiguousarray(layers[layer], dtype="<f4")
        digest.update(f"{layer}:{data.shape[0]}:".encode())
        digest.update(data.tobytes())
    return digest.hexdigest()
