"""In-process LRU in front of a `VectorStore`: keeps the registry off the hot path.

- A pinned version (`id@3`) is immutable: cached until evicted.
- "Latest" entries are re-checked against the store at most every `check_interval` seconds (a cheap version
  read; pub/sub is lossy), and dropped at once when another replica announces a change.
- When the store errors, cached entries keep serving (counted as stale); anything uncached raises
  `StoreUnavailableError` (the server answers 503).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from steering.errors import StoreUnavailableError
from steering.spec import SteeringTerm
from steering.store.base import Preset, VectorRecord, VectorStore
from steering.vectors import SteeringVector, parse_vector_ref


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    stale: int = 0
    errors: int = 0


@dataclass
class _Entry:
    value: Any
    checked_at: float
    version: int | None = None


class CachedRegistry:
    def __init__(self, store: VectorStore, max_entries: int = 512, check_interval: float = 1.0) -> None:
        self.store = store
        self.max_entries = max_entries
        self.check_interval = check_interval
        self.stats = CacheStats()
        self._vectors: OrderedDict[tuple[str, int | None], _Entry] = OrderedDict()
        self._presets: OrderedDict[str, _Entry] = OrderedDict()

    async def start(self) -> None:
        await self.store.subscribe(self.invalidate)

    def invalidate(self, kind: str, name: str) -> None:
        if kind == "vector":
            for key in [k for k in self._vectors if k[0] == name]:
                del self._vectors[key]
        elif kind == "preset":
            self._presets.pop(name, None)

    def _remember(self, table: OrderedDict[Any, _Entry], key: Any, entry: _Entry) -> None:
        table[key] = entry
        table.move_to_end(key)
        while len(table) > self.max_entries:
            table.popitem(last=False)

    async def vector(self, vector_id: str, version: int | None = None) -> tuple[VectorRecord, SteeringVector]:
        key = (vector_id, version)
        entry = self._vectors.get(key)
        now = time.monotonic()
        if entry is not None and (version is not None or now - entry.checked_at < self.check_interval):
            self.stats.hits += 1
            self._vectors.move_to_end(key)
            return entry.value  # type: ignore[no-any-return]
        try:
            if entry is not None:
                latest = await self.store.latest_version(vector_id)
                if latest == entry.version:
                    entry.checked_at = now
                    self.stats.hits += 1
                    return entry.value  # type: ignore[no-any-return]
            self.stats.misses += 1
            record, vector = await self.store.get_vector(vector_id, version)
        except StoreUnavailableError:
            self.stats.errors += 1
            if entry is not None:
                self.stats.stale += 1
                return entry.value  # type: ignore[no-any-return]
            raise
        except KeyError:
            self._vectors.pop(key, None)
            raise
        self._remember(self._vectors, key, _Entry((record, vector), now, record.version))
        return record, vector

    async def preset(self, name: str) -> Preset | None:
        entry = self._presets.get(name)
        now = time.monotonic()
        if entry is not None and now - entry.checked_at < self.check_interval:
            self.stats.hits += 1
            return entry.value  # type: ignore[no-any-return]
        try:
            self.stats.misses += 1
            preset = await self.store.get_preset(name)
        except StoreUnavailableError:
            self.stats.errors += 1
            if entry is not None:
                self.stats.stale += 1
                return entry.value  # type: ignore[no-any-return]
            raise
        self._remember(self._presets, name, _Entry(preset, now))
        return preset

    async def vectors_for(self, terms: Sequence[SteeringTerm]) -> dict[tuple[str, int | None], SteeringVector]:
        """Fetch every vector the terms name (KeyError for the first unknown one)."""
        found: dict[tuple[str, int | None], SteeringVector] = {}
        refs = [t.vector for t in terms] + [t.condition.vector for t in terms if t.condition is not None]
        for ref in refs:
            key = parse_vector_ref(ref)
            if key not in found:
                found[key] = (await self.vector(*key))[1]
        return found
