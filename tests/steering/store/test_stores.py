"""The registry contract on both backends (embedded SQLite, real redis-server), and the cache in front of it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from steering.errors import ConflictError, InvalidSteeringError, StoreUnavailableError
from steering.spec import SteeringTerm
from steering.store.base import Preset, VectorStore
from steering.store.cache import CachedRegistry
from steering.store.embedded import EmbeddedStore
from steering.store.redis_store import RedisStore
from steering.vectors import VectorDefaults
from tests.fixtures.processes import RedisServer


def layers(seed: int, hidden: int = 8) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {1: rng.standard_normal(hidden).astype(np.float32), 3: rng.standard_normal(hidden).astype(np.float32)}


@pytest.fixture(params=["embedded", "redis"])
async def store(request: Any, tmp_path: Path) -> AsyncIterator[VectorStore]:
    namespace = f"ns-{uuid.uuid4().hex[:8]}"
    if request.param == "embedded":
        backend: VectorStore = EmbeddedStore(tmp_path / "reg.sqlite3", namespace)
    else:
        backend = RedisStore(request.getfixturevalue("redis_url"), namespace)
    yield backend
    await backend.close()


async def test_versions_are_immutable_and_content_hashed(store: VectorStore) -> None:
    first = await store.add_vector(
        "r", layers(1), VectorDefaults(strength=0.5, op="project"), "first", {"method": "diffmean"}, {"hidden_size": 8}
    )
    second = await store.add_vector("r", layers(2), VectorDefaults())
    assert (first.version, second.version) == (1, 2) and first.sha256 != second.sha256
    record, vector = await store.get_vector("r", 1)
    assert record.sha256 == first.sha256 == vector.sha256 and record.defaults.op == "project"
    assert record.provenance == {"method": "diffmean"} and record.model == {"hidden_size": 8}
    assert np.array_equal(vector.layers[3], layers(1)[3])
    latest, _ = await store.get_vector("r")
    assert latest.version == 2 and await store.latest_version("r") == 2
    assert [r.version for r in await store.list_versions("r")] == [1, 2]
    assert [r.id for r in await store.list_vectors()] == ["r"]
    with pytest.raises(KeyError):
        await store.get_vector("r", 9)
    with pytest.raises(KeyError):
        await store.get_vector("nope")


async def test_failed_writes_store_nothing(store: VectorStore) -> None:
    bad = {1: np.array([np.nan] * 8, dtype=np.float32)}
    with pytest.raises(InvalidSteeringError):
        await store.add_vector("bad", bad, VectorDefaults())
    with pytest.raises(InvalidSteeringError):
        await store.add_vector("../x", layers(1), VectorDefaults())
    assert await store.list_vectors() == [] and await store.latest_version("bad") is None


async def test_presets_and_delete_conflict(store: VectorStore) -> None:
    await store.add_vector("r", layers(1), VectorDefaults())
    await store.put_preset(Preset(name="up", steering=[SteeringTerm(vector="r@1", strength=0.5)]))
    assert (await store.get_preset("up")) is not None and [p.name for p in await store.list_presets()] == ["up"]
    with pytest.raises(ConflictError):
        await store.delete_vector("r")
    assert await store.delete_preset("up") and not await store.delete_preset("up")
    assert await store.delete_vector("r") and not await store.delete_vector("r")
    assert await store.list_vectors() == []


async def test_cache_serves_pinned_and_rechecks_latest(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "c.sqlite3", "ns")
    cache = CachedRegistry(store, check_interval=0.05)
    await store.add_vector("r", layers(1), VectorDefaults())
    (one, _), (again, _) = await cache.vector("r"), await cache.vector("r")
    assert one.version == again.version == 1 and cache.stats.hits == 1
    await store.add_vector("r", layers(2), VectorDefaults())  # written behind the cache's back (another replica)
    await asyncio.sleep(0.06)
    record, _ = await cache.vector("r")
    assert record.version == 2
    pinned, _ = await cache.vector("r", 1)
    assert pinned.version == 1


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server this test may kill and restart."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


async def test_redis_outage_stale_cache_then_recovery(private_redis: RedisServer) -> None:
    store = RedisStore(private_redis.url, "outage")
    cache = CachedRegistry(store, check_interval=0.0)
    await store.add_vector("cached", layers(1), VectorDefaults())
    await store.add_vector("uncached", layers(2), VectorDefaults())
    await cache.vector("cached")
    private_redis.stop()
    record, _ = await cache.vector("cached")  # store down: the cached entry keeps serving
    assert record.version == 1 and cache.stats.stale >= 1
    with pytest.raises(StoreUnavailableError):
        await cache.vector("uncached")
    with pytest.raises(StoreUnavailableError):
        await store.add_vector("new", layers(3), VectorDefaults())
    private_redis.start()
    for _ in range(50):  # redis-py reconnects by itself
        try:
            created = await store.add_vector("new", layers(3), VectorDefaults())
            break
        except StoreUnavailableError:
            await asyncio.sleep(0.1)
    assert created.version == 1
    assert (await store.get_vector("uncached"))[0].version == 1, "AOF lost a vector across the restart"
    await store.close()


async def test_pubsub_invalidates_another_replicas_cache(redis_url: str) -> None:
    namespace = f"replicas-{uuid.uuid4().hex[:6]}"
    writer, reader = RedisStore(redis_url, namespace), RedisStore(redis_url, namespace)
    cache = CachedRegistry(reader, check_interval=3600)  # only pub/sub can refresh it in time
    await cache.start()
    await asyncio.sleep(0.2)
    await writer.add_vector("shared", layers(1), VectorDefaults())
    assert (await cache.vector("shared"))[0].version == 1
    await writer.add_vector("shared", layers(2), VectorDefaults())
    for _ in range(50):
        if (await cache.vector("shared"))[0].version == 2:
            break
        await asyncio.sleep(0.02)
    assert (await cache.vector("shared"))[0].version == 2
    await writer.close()
    await reader.close()


async def test_documents_and_shared_counters(store: VectorStore) -> None:
    await store.put_document("job", "j1", {"id": "j1", "status": "queued"})
    await store.put_document("job", "j0", {"id": "j0", "status": "running"})
    await store.put_document("job", "j1", {"id": "j1", "status": "succeeded"})
    assert await store.get_document("job", "j1") == {"id": "j1", "status": "succeeded"}
    assert [d["id"] for d in await store.list_documents("job")] == ["j0", "j1"]
    assert await store.get_document("job", "nope") is None and await store.list_documents("experiment") == []
    # concurrent increments from many writers are all counted (what replicas rely on for experiment tallies)
    await asyncio.gather(*(store.add_counters("job", "j1", {"a": 1, "b": 0.5}) for _ in range(40)))
    assert await store.get_counters("job", "j1") == {"a": 40.0, "b": 20.0}
    assert await store.delete_document("job", "j1") and not await store.delete_document("job", "j1")
    assert await store.get_counters("job", "j1") == {}
