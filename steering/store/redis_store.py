"""Redis registry (redis.asyncio): shared by every replica; changes are announced on a pub/sub channel.

Keys, under `steerserve:<namespace>`:
    :vectors                 set of vector ids
    :vector:<id>:seq         version counter (gaps are possible after a failed write; versions never repeat)
    :vector:<id>:versions    sorted set of stored versions
    :vector:<id>:v:<n>       hash: meta (JSON) and layer:<L> (little-endian float32 bytes)
    :presets                 hash: name -> preset JSON
    :events                  pub/sub channel: {"kind": "vector"|"preset", "name": ...}
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import redis.asyncio as redis
from redis.exceptions import RedisError, WatchError

from steering.errors import ConflictError, StoreUnavailableError
from steering.store.base import (
    Preset,
    VectorRecord,
    VectorStore,
    check_name,
    decode_layers,
    encode_layers,
    make_record,
    referencing_presets,
)
from steering.vectors import Float32Array, SteeringVector, VectorDefaults

logger = logging.getLogger("steerserve.store")
Callback = Callable[[str, str], Awaitable[None] | None]


class RedisStore(VectorStore):
    def __init__(self, url: str, namespace: str) -> None:
        self.namespace = namespace
        self.url = url
        self._redis = redis.Redis.from_url(url, decode_responses=False, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._prefix = f"steerserve:{namespace}"
        self._listener: asyncio.Task[None] | None = None

    def _key(self, *parts: object) -> str:
        return ":".join([self._prefix, *map(str, parts)])

    async def _call(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        try:
            return await fn()
        except (RedisError, OSError) as exc:
            raise StoreUnavailableError(f"redis unavailable: {exc}") from exc

    async def _publish(self, kind: str, name: str) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._redis.publish(self._key("events"), json.dumps({"kind": kind, "name": name}))

    # ---- vectors ------------------------------------------------------------------------------------------
    async def add_vector(
        self,
        vector_id: str,
        layers: Mapping[int, Float32Array],
        defaults: VectorDefaults,
        description: str = "",
        provenance: Mapping[str, Any] | None = None,
        model: Mapping[str, Any] | None = None,
    ) -> VectorRecord:
        check_name("vector", vector_id)
        make_record(vector_id, 1, layers, defaults, description, provenance or {}, model or {})  # validate first

        async def write() -> VectorRecord:
            version = int(await self._redis.incr(self._key("vector", vector_id, "seq")))
            record = make_record(vector_id, version, layers, defaults, description, provenance or {}, model or {})
            mapping: dict[str, bytes] = {"meta": json.dumps(record.to_json()).encode()}
            mapping.update({f"layer:{k}": v for k, v in encode_layers(layers).items()})
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(self._key("vector", vector_id, "v", version), mapping=mapping)  # type: ignore[arg-type]
                pipe.zadd(self._key("vector", vector_id, "versions"), {str(version): version})
                pipe.sadd(self._key("vectors"), vector_id)
                await pipe.execute()
            return record

        record: VectorRecord = await self._call(write)
        await self._publish("vector", vector_id)
        return record

    async def latest_version(self, vector_id: str) -> int | None:
        async def read() -> int | None:
            top = await self._redis.zrevrange(self._key("vector", vector_id, "versions"), 0, 0)
            return int(top[0]) if top else None  # type: ignore[arg-type]

        version: int | None = await self._call(read)
        return version

    async def get_vector(self, vector_id: str, version: int | None = None) -> tuple[VectorRecord, SteeringVector]:
        if version is None:
            version = await self.latest_version(vector_id)
            if version is None:
                raise KeyError(vector_id)
        key = self._key("vector", vector_id, "v", version)
        raw: dict[bytes, bytes] = await self._call(lambda: self._redis.hgetall(key))
        if not raw:
            raise KeyError(vector_id)
        record = VectorRecord.from_json(json.loads(raw[b"meta"]))
        layers = decode_layers({int(k.split(b":")[1]): v for k, v in raw.items() if k.startswith(b"layer:")})
        return record, SteeringVector(vector_id, layers, record.version, record.defaults)

    async def list_versions(self, vector_id: str) -> list[VectorRecord]:
        async def read() -> list[VectorRecord]:
            versions = await self._redis.zrange(self._key("vector", vector_id, "versions"), 0, -1)
            metas = [
                await self._redis.hget(self._key("vector", vector_id, "v", int(v)), "meta")  # type: ignore[arg-type]
                for v in versions
            ]
            return [VectorRecord.from_json(json.loads(m)) for m in metas if m]

        records: list[VectorRecord] = await self._call(read)
        return records

    async def list_vectors(self) -> list[VectorRecord]:
        ids = sorted(i.decode() for i in await self._call(lambda: self._redis.smembers(self._key("vectors"))))
        records = []
        for vector_id in ids:
            versions = await self.list_versions(vector_id)
            if versions:
                records.append(versions[-1])
        return records

    async def delete_vector(self, vector_id: str) -> bool:
        presets_key = self._key("presets")

        async def delete() -> bool:
            async with self._redis.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        await pipe.watch(presets_key)
                        bodies = await pipe.hvals(presets_key)
                        users = referencing_presets([Preset.model_validate_json(b) for b in bodies], vector_id)
                        if users:
                            raise ConflictError(f"vector {vector_id!r} is used by presets {users}")
                        versions = await pipe.zrange(self._key("vector", vector_id, "versions"), 0, -1)
                        pipe.multi()  # type: ignore[no-untyped-call]
                        for v in versions:
                            pipe.delete(self._key("vector", vector_id, "v", int(v)))  # type: ignore[arg-type]
                        pipe.delete(self._key("vector", vector_id, "versions"))
                        pipe.srem(self._key("vectors"), vector_id)
                        results = await pipe.execute()
                        return bool(results[-1])
                    except WatchError:
                        continue

        deleted: bool = await self._call(delete)
        if deleted:
            await self._publish("vector", vector_id)
        return deleted

    # ---- presets ------------------------------------------------------------------------------------------
    async def put_preset(self, preset: Preset) -> None:
        check_name("preset", preset.name)
        await self._call(lambda: self._redis.hset(self._key("presets"), preset.name, preset.model_dump_json()))
        await self._publish("preset", preset.name)

    async def get_preset(self, name: str) -> Preset | None:
        body = await self._call(lambda: self._redis.hget(self._key("presets"), name))
        return Preset.model_validate_json(body) if body else None

    async def list_presets(self) -> list[Preset]:
        bodies = await self._call(lambda: self._redis.hvals(self._key("presets")))
        return sorted((Preset.model_validate_json(b) for b in bodies), key=lambda p: p.name)

    async def delete_preset(self, name: str) -> bool:
        removed = await self._call(lambda: self._redis.hdel(self._key("presets"), name))
        if removed:
            await self._publish("preset", name)
        return bool(removed)

    # ---- documents and counters ---------------------------------------------------------------------------
    async def put_document(self, kind: str, name: str, body: Mapping[str, Any]) -> None:
        await self._call(lambda: self._redis.hset(self._key("docs", kind), name, json.dumps(dict(body))))

    async def get_document(self, kind: str, name: str) -> dict[str, Any] | None:
        raw = await self._call(lambda: self._redis.hget(self._key("docs", kind), name))
        return json.loads(raw) if raw else None

    async def list_documents(self, kind: str) -> list[dict[str, Any]]:
        raw = await self._call(lambda: self._redis.hgetall(self._key("docs", kind)))
        return [json.loads(raw[name]) for name in sorted(raw)]

    async def delete_document(self, kind: str, name: str) -> bool:
        async def delete() -> bool:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hdel(self._key("docs", kind), name)
                pipe.delete(self._key("counters", kind, name))
                removed, _ = await pipe.execute()
            return bool(removed)

        deleted: bool = await self._call(delete)
        return deleted

    async def add_counters(self, kind: str, name: str, deltas: Mapping[str, float]) -> None:
        async def write() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                for field, value in deltas.items():
                    pipe.hincrbyfloat(self._key("counters", kind, name), field, float(value))
                await pipe.execute()

        await self._call(write)

    async def get_counters(self, kind: str, name: str) -> dict[str, float]:
        raw = await self._call(lambda: self._redis.hgetall(self._key("counters", kind, name)))
        return {_text(k): float(v) for k, v in raw.items()}

    # ---- change notifications -----------------------------------------------------------------------------
    async def subscribe(self, callback: Callback) -> None:
        """Listen for other replicas' writes; reconnects after Redis outages."""

        async def listen() -> None:
            while True:
                try:
                    pubsub = self._redis.pubsub()
                    await pubsub.subscribe(self._key("events"))
                    async for message in pubsub.listen():
                        if message.get("type") != "message":
                            continue
                        event = json.loads(message["data"])
                        result = callback(event["kind"], event["name"])
                        if asyncio.iscoroutine(result):
                            await result
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - keep listening through outages
                    logger.warning("registry pub/sub interrupted (%s); retrying", exc)
                    await asyncio.sleep(1.0)

        self._listener = asyncio.create_task(listen())

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
        await self._redis.aclose()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
