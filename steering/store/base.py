"""The vector registry interface: immutable vector versions and presets, under a namespace.

Two backends implement it: Redis (`steering.store.redis_store`, shared by replicas) and an embedded SQLite
file (`steering.store.embedded`, the zero-config default). `steering.store.cache` puts an LRU in front.
"""

from __future__ import annotations

import re
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from steering.errors import InvalidSteeringError
from steering.spec import SteeringTerm
from steering.vectors import Float32Array, SteeringVector, VectorDefaults, content_hash

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(kind: str, name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise InvalidSteeringError(
            f"invalid {kind} name {name!r}: 1-128 letters, digits, '.', '_', '-', starting alphanumeric",
            param="id" if kind == "vector" else "name",
        )
    return name


@dataclass(frozen=True)
class VectorRecord:
    """Metadata of one immutable vector version."""

    id: str
    version: int
    sha256: str
    hidden_size: int
    layers: tuple[int, ...]
    defaults: VectorDefaults = field(default_factory=VectorDefaults)
    description: str = ""
    provenance: Mapping[str, Any] = field(default_factory=dict)
    model: Mapping[str, Any] = field(default_factory=dict)  # fingerprint: architecture, hidden size, layers, name
    created_at: float = field(default_factory=time.time)
    dtype: str = "float32"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "version": self.version,
            "sha256": self.sha256,
            "dtype": self.dtype,
            "hidden_size": self.hidden_size,
            "layers": list(self.layers),
            "defaults": self.defaults.model_dump(mode="json"),
            "description": self.description,
            "provenance": dict(self.provenance),
            "model": dict(self.model),
            "created_at": self.created_at,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> VectorRecord:
        return cls(
            id=data["id"],
            version=int(data["version"]),
            sha256=data["sha256"],
            hidden_size=int(data["hidden_size"]),
            layers=tuple(int(x) for x in data["layers"]),
            defaults=VectorDefaults.model_validate(data["defaults"]),
            description=data.get("description", ""),
            provenance=data.get("provenance", {}),
            model=data.get("model", {}),
            created_at=float(data.get("created_at", 0.0)),
            dtype=data.get("dtype", "float32"),
        )


def encode_layers(layers: Mapping[int, Float32Array]) -> dict[int, bytes]:
    return {int(k): np.ascontiguousarray(v, dtype="<f4").tobytes() for k, v in layers.items()}


def decode_layers(raw: Mapping[int, bytes]) -> dict[int, Float32Array]:
    return {int(k): np.frombuffer(v, dtype="<f4").astype(np.float32) for k, v in raw.items()}


def make_record(
    vector_id: str,
    version: int,
    layers: Mapping[int, Float32Array],
    defaults: VectorDefaults,
    description: str,
    provenance: Mapping[str, Any],
    model: Mapping[str, Any],
) -> VectorRecord:
    vector = SteeringVector(vector_id, layers, version, defaults)  # validates shapes and finiteness
    return VectorRecord(
        id=vector_id,
        version=version,
        sha256=content_hash(layers),
        hidden_size=vector.hidden_size,
        layers=tuple(sorted(int(k) for k in layers)),
        defaults=defaults,
        description=description,
        provenance=dict(provenance),
        model=dict(model),
    )


class Preset(BaseModel):
    """A named steering spec, selectable as a model."""

    model_config = ConfigDict(extra="forbid")
    name: str
    steering: list[SteeringTerm] = Field(min_length=1)
    description: str = ""


class VectorStore(ABC):
    """Async registry of vector versions and presets. Writes are atomic: a failed write stores nothing."""

    namespace: str

    @abstractmethod
    async def add_vector(
        self,
        vector_id: str,
        layers: Mapping[int, Float32Array],
        defaults: VectorDefaults,
        description: str = "",
        provenance: Mapping[str, Any] | None = None,
        model: Mapping[str, Any] | None = None,
    ) -> VectorRecord:
        """Store a new version of `vector_id` (version 1 if new) and return its record."""

    @abstractmethod
    async def get_vector(self, vector_id: str, version: int | None = None) -> tuple[VectorRecord, SteeringVector]:
        """The given version, or the latest; KeyError when unknown."""

    @abstractmethod
    async def latest_version(self, vector_id: str) -> int | None: ...

    @abstractmethod
    async def list_versions(self, vector_id: str) -> list[VectorRecord]: ...

    @abstractmethod
    async def list_vectors(self) -> list[VectorRecord]:
        """The latest version of every vector."""

    @abstractmethod
    async def delete_vector(self, vector_id: str) -> bool:
        """Delete every version; ConflictError while a preset references it."""

    @abstractmethod
    async def put_preset(self, preset: Preset) -> None: ...

    @abstractmethod
    async def get_preset(self, name: str) -> Preset | None: ...

    @abstractmethod
    async def list_presets(self) -> list[Preset]: ...

    @abstractmethod
    async def delete_preset(self, name: str) -> bool: ...

    # ---- documents (extraction jobs, experiments) and shared counters (experiment tallies) -------------------
    @abstractmethod
    async def put_document(self, kind: str, name: str, body: Mapping[str, Any]) -> None:
        """Create or replace one JSON document."""

    @abstractmethod
    async def get_document(self, kind: str, name: str) -> dict[str, Any] | None: ...

    @abstractmethod
    async def list_documents(self, kind: str) -> list[dict[str, Any]]: ...

    @abstractmethod
    async def delete_document(self, kind: str, name: str) -> bool:
        """Delete the document and its counters."""

    @abstractmethod
    async def add_counters(self, kind: str, name: str, deltas: Mapping[str, float]) -> None:
        """Atomically add each delta to its named counter (replicas may add concurrently)."""

    @abstractmethod
    async def get_counters(self, kind: str, name: str) -> dict[str, float]: ...

    async def subscribe(self, callback: Any) -> None:  # noqa: B027 - optional hook, no-op by default
        """Call `callback(kind, name)` when another process changes a vector or preset."""
        return None

    async def close(self) -> None:
        return None


def referencing_presets(presets: list[Preset], vector_id: str) -> list[str]:
    from steering.vectors import parse_vector_ref

    return sorted(p.name for p in presets if any(parse_vector_ref(t.vector)[0] == vector_id for t in p.steering))
