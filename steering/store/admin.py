"""Vector and preset administration: validation against the served model, then one atomic store write.

The bodies of the registry's write routes are declared here too (pydantic; the HTTP routes are `server.routes`).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from steering import vector_formats
from steering.errors import BadRequestError, InvalidSteeringError, NotFoundError
from steering.sources import SteeringSources
from steering.spec import ModelShape, SteeringTerm
from steering.store.base import Preset, VectorRecord, check_name
from steering.store.cache import CachedRegistry
from steering.vectors import Float32Array, VectorDefaults


class VectorUpload(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    layers: dict[str, str] = Field(min_length=1, description="layer index -> base64 little-endian float32")
    description: str = Field(default="", max_length=4096)
    defaults: VectorDefaults | None = None
    provenance: dict[str, Any] = Field(default_factory=dict)


class VectorImport(BaseModel):
    """The form fields of `POST /v1/steering/vectors/import` besides the file."""

    model_config = ConfigDict(extra="forbid")
    id: str
    format: Literal["safetensors", "gguf", "npy"] | None = Field(default=None, description="default: detected")
    layer: int | None = Field(default=None, description="the layer of a 1-D .npy array")
    description: str = Field(default="", max_length=4096)
    defaults: VectorDefaults | None = None


class VectorCreated(BaseModel):
    id: str
    version: int
    sha256: str
    hidden_size: int
    layers: list[int]

    @classmethod
    def of(cls, record: VectorRecord) -> VectorCreated:
        return cls(
            id=record.id,
            version=record.version,
            sha256=record.sha256,
            hidden_size=record.hidden_size,
            layers=list(record.layers),
        )


class PresetBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steering: list[SteeringTerm] = Field(min_length=1)
    description: str = Field(default="", max_length=4096)


def decode_upload(body: VectorUpload, shape: ModelShape) -> dict[int, Float32Array]:
    """Decode base64 layers and check them against the model: layer ids, hidden size, finite values."""
    check_name("vector", body.id)
    if len(body.layers) > shape.num_layers:
        raise BadRequestError(f"{len(body.layers)} layers given; the model has {shape.num_layers}", param="layers")
    layers: dict[int, Float32Array] = {}
    for key, encoded in body.layers.items():
        param = f"layers.{key}"
        try:
            layer = int(key)
        except ValueError:
            raise BadRequestError(f"layer key {key!r} is not an integer", param=param) from None
        if not -shape.num_layers <= layer < shape.num_layers:
            raise BadRequestError(f"layer {layer} does not exist (the model has {shape.num_layers})", param=param)
        layer %= shape.num_layers
        if layer in layers:
            raise BadRequestError(f"layer {layer} is given twice", param=param)
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequestError("not valid base64", param=param) from None
        if len(raw) != 4 * shape.hidden_size:
            raise BadRequestError(
                f"expected {shape.hidden_size} float32 values ({4 * shape.hidden_size} bytes), got {len(raw)} bytes",
                param=param,
            )
        data = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        if not np.isfinite(data).all():
            raise BadRequestError("values must be finite (no NaN or Inf)", param=param)
        if not data.any():
            raise BadRequestError("the direction is all zeros", param=param)
        layers[layer] = data
    return layers


def defaults_of(d: VectorDefaults | None, shape: ModelShape, layers: dict[int, Float32Array]) -> VectorDefaults:
    """The uploaded defaults with their layers checked against the uploaded layers and made non-negative."""
    if d is None:
        return VectorDefaults()
    default_layers = None
    if d.layers is not None:
        resolved = []
        for layer in d.layers:
            if not -shape.num_layers <= layer < shape.num_layers or layer % shape.num_layers not in layers:
                raise BadRequestError(
                    f"default layer {layer} is not among the uploaded layers", param="defaults.layers"
                )
            resolved.append(layer % shape.num_layers)
        default_layers = tuple(sorted(set(resolved)))
    return d.model_copy(update={"layers": default_layers})


class Admin:
    def __init__(self, registry: CachedRegistry, sources: SteeringSources, shape: ModelShape) -> None:
        self.registry = registry
        self.store = registry.store
        self.sources = sources
        self.shape = shape

    def fingerprint(self) -> dict[str, Any]:
        return self.shape.fingerprint()

    async def add_vector(self, body: VectorUpload) -> VectorRecord:
        layers = decode_upload(body, self.shape)
        defaults = defaults_of(body.defaults, self.shape, layers)
        return await self._store(body.id, layers, defaults, body.description, body.provenance)

    async def import_vector(self, upload: VectorImport, data: bytes) -> VectorRecord:
        """A vector file (safetensors, GGUF control vector or .npy; format detected unless given)."""
        check_name("vector", upload.id)
        decoded = vector_formats.decode(data, self.shape.num_layers, upload.format, upload.layer)
        for layer, direction in decoded.layers.items():
            if direction.shape[0] != self.shape.hidden_size:
                raise BadRequestError(
                    f"layer {layer} has {direction.shape[0]} values; the model's hidden size is "
                    f"{self.shape.hidden_size}",
                    param="file",
                )
        defaults = defaults_of(upload.defaults, self.shape, decoded.layers)
        provenance = {"imported": {"format": decoded.format, **decoded.metadata}}
        return await self._store(upload.id, decoded.layers, defaults, upload.description, provenance)

    async def _store(
        self,
        vector_id: str,
        layers: dict[int, Float32Array],
        defaults: VectorDefaults,
        description: str,
        provenance: dict[str, Any],
    ) -> VectorRecord:
        record = await self.store.add_vector(vector_id, layers, defaults, description, provenance, self.fingerprint())
        self.registry.invalidate("vector", vector_id)
        return record

    async def vector_info(self, vector_id: str) -> dict[str, Any]:
        versions = await self.store.list_versions(vector_id)
        if not versions:
            raise NotFoundError(f"vector {vector_id!r} does not exist", param="id")
        return {**versions[-1].to_json(), "versions": [v.to_json() for v in versions]}

    async def vector_data(self, vector_id: str, version: int | None, fmt: str) -> tuple[VectorRecord, bytes]:
        """The vector as a file in `fmt` (safetensors, gguf or npy)."""
        try:
            record, vector = await self.store.get_vector(vector_id, version)
        except KeyError:
            raise NotFoundError(f"vector {vector_id!r} does not exist", param="id") from None
        metadata = {
            "id": record.id,
            "version": str(record.version),
            "sha256": record.sha256,
            "hidden_size": str(record.hidden_size),
        }
        data = vector_formats.encode(
            dict(vector.layers),
            fmt,
            num_layers=self.shape.num_layers,
            metadata=metadata,
            model_hint=vector_formats.model_hint(self.shape.architecture),
        )
        return record, data

    async def delete_vector(self, vector_id: str) -> None:
        if not await self.store.delete_vector(vector_id):
            raise NotFoundError(f"vector {vector_id!r} does not exist", param="id")
        self.registry.invalidate("vector", vector_id)

    async def put_preset(self, name: str, body: PresetBody, served_model: str) -> Preset:
        check_name("preset", name)
        if name == served_model or name.startswith("experiment"):
            raise InvalidSteeringError(f"preset name {name!r} is reserved", param="name")
        await self.sources.resolve_terms(list(body.steering))  # every vector, layer and limit checked now
        preset = Preset(name=name, steering=list(body.steering), description=body.description)
        await self.store.put_preset(preset)
        self.registry.invalidate("preset", name)
        return preset

    async def get_preset(self, name: str) -> Preset:
        preset = await self.store.get_preset(name)
        if preset is None:
            raise NotFoundError(f"preset {name!r} does not exist", param="name")
        return preset

    async def delete_preset(self, name: str) -> None:
        if not await self.store.delete_preset(name):
            raise NotFoundError(f"preset {name!r} does not exist", param="name")
        self.registry.invalidate("preset", name)
