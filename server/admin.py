"""Vector and preset administration: validation against the served model, then one atomic store write."""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

import numpy as np
from safetensors.numpy import save

from server.errors import BadRequestError, NotFoundError
from server.protocol import PresetBody, VectorUpload
from server.steering_sources import SteeringSources
from steering.errors import InvalidSteeringError
from steering.spec import ModelShape
from steering.store.base import Preset, VectorRecord, check_name
from steering.store.cache import CachedRegistry
from steering.vectors import Float32Array, VectorDefaults


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


def defaults_of(body: VectorUpload, shape: ModelShape, layers: dict[int, Float32Array]) -> VectorDefaults:
    d = body.defaults
    if d is None:
        return VectorDefaults()
    if not np.isfinite(d.strength):
        raise BadRequestError("default strength must be finite", param="defaults.strength")
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
    return VectorDefaults(strength=d.strength, op=d.op, site=d.site, positions=d.positions, layers=default_layers)


def safetensors_bytes(record: VectorRecord, layers: dict[int, Float32Array]) -> bytes:
    tensors = {f"layer.{k}": np.ascontiguousarray(v, dtype=np.float32) for k, v in sorted(layers.items())}
    meta = {
        "id": record.id,
        "version": str(record.version),
        "sha256": record.sha256,
        "hidden_size": str(record.hidden_size),
    }
    buffer = io.BytesIO(save(tensors, metadata=meta))
    return buffer.getvalue()


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
        defaults = defaults_of(body, self.shape, layers)
        record = await self.store.add_vector(
            body.id, layers, defaults, body.description, body.provenance, self.fingerprint()
        )
        self.registry.invalidate("vector", body.id)
        return record

    async def vector_info(self, vector_id: str) -> dict[str, Any]:
        versions = await self.store.list_versions(vector_id)
        if not versions:
            raise NotFoundError(f"vector {vector_id!r} does not exist", param="id")
        return {**versions[-1].to_json(), "versions": [v.to_json() for v in versions]}

    async def vector_data(self, vector_id: str, version: int | None) -> tuple[VectorRecord, bytes]:
        try:
            record, vector = await self.store.get_vector(vector_id, version)
        except KeyError:
            raise NotFoundError(f"vector {vector_id!r} does not exist", param="id") from None
        return record, safetensors_bytes(record, dict(vector.layers))

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
