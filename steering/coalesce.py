"""One call for many callers: keys asked for while a call is in flight, or in the same event-loop turn, go
together into the next call (e.g. every finished request's "was it steered?" check in one worker RPC)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Coalesced(Generic[K, V]):
    def __init__(self, fetch: Callable[[Sequence[K]], Awaitable[dict[K, V]]]) -> None:
        self._fetch = fetch  # keys -> the values of those that have one
        self._waiting: list[tuple[K, asyncio.Future[V | None]]] = []
        self._task: asyncio.Task[None] | None = None

    async def get(self, key: K) -> V | None:
        """The value `fetch` gives for `key` (None: it gave none), from a call shared with other callers."""
        future: asyncio.Future[V | None] = asyncio.get_running_loop().create_future()
        self._waiting.append((key, future))
        if self._task is None:
            self._task = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                await asyncio.sleep(0)  # callers of this loop turn join the call
                batch, self._waiting = self._waiting, []
                try:
                    values = await self._fetch([key for key, _ in batch])
                except Exception as exc:  # noqa: BLE001 - each caller gets the call's error
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for key, future in batch:
                    if not future.done():
                        future.set_result(values.get(key))
        finally:
            self._task = None
            for _, future in self._waiting:  # cancelled while callers waited: they are not left hanging
                if not future.done():
                    future.cancel()
            self._waiting = []
