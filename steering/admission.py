"""Admission of steering configs, and the one ledger of which config holds which slot (API process).

The engine's tables hold N configs besides the no-op row 0. A steered request is admitted with a slot: the
slot its config already holds, else a free one (idle configs keep their slot, least recently used first, so a
config that comes back often needs no refill). Beyond N distinct configs in flight, requests wait their turn.
Requests that share an admitted config, and unsteered requests, never wait. Workers only fill the row they are
told to; they never choose. A request about to wait is first put to the engine's own queue limit (vLLM's
`check_admission`, counting every request already waiting here), so waiting for a slot never overshoots
`--max-num-queued-reqs`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from steering.slots import SlotAllocator


class ConfigAdmission:
    def __init__(self, max_configs: int) -> None:
        self.max_configs = max_configs
        self.slots = SlotAllocator(max_configs)
        self._refs: dict[str, int] = {}
        self._cond = asyncio.Condition()
        self.waiting = 0

    @property
    def active_configs(self) -> int:
        return len(self._refs)

    @asynccontextmanager
    async def admit(self, key: str | None, queue_check: Callable[[int], None] | None = None) -> AsyncIterator[int]:
        """Yields the config's slot (1..N), or 0 for an unsteered request (`key` None). A request that would wait
        calls `queue_check(n)` first, n = the requests that would then be waiting (it raises to refuse)."""
        if key is None:
            yield 0
            return
        if queue_check is not None and key not in self._refs and len(self._refs) >= self.max_configs:
            queue_check(self.waiting + 1)  # synchronous: no other request can slip in between
        async with self._cond:
            self.waiting += 1
            try:
                await self._cond.wait_for(lambda: key in self._refs or len(self._refs) < self.max_configs)
            finally:
                self.waiting -= 1
            grant = self.slots.acquire(key)
            assert grant is not None, "admission let in more configs than there are slots"
            self._refs[key] = self._refs.get(key, 0) + 1
        try:
            yield grant.slot
        finally:
            async with self._cond:
                self.slots.release(key)
                self._refs[key] -= 1
                if self._refs[key] == 0:
                    del self._refs[key]
                    self._cond.notify_all()
