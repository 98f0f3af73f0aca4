"""Admission of steering configs: at most N distinct configs in flight; requests beyond that wait their turn.

The engine's tables hold N configs besides the no-op row, so admitting more would leave a request without a
slot. Requests that share an admitted config, and unsteered requests, never wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class ConfigAdmission:
    def __init__(self, max_configs: int) -> None:
        self.max_configs = max_configs
        self._refs: dict[str, int] = {}
        self._cond = asyncio.Condition()
        self.waiting = 0

    @property
    def active_configs(self) -> int:
        return len(self._refs)

    @asynccontextmanager
    async def admit(self, key: str | None) -> AsyncIterator[None]:
        if key is None:
            yield
            return
        async with self._cond:
            self.waiting += 1
            try:
                await self._cond.wait_for(lambda: key in self._refs or len(self._refs) < self.max_configs)
            finally:
                self.waiting -= 1
            self._refs[key] = self._refs.get(key, 0) + 1
        try:
            yield
        finally:
            async with self._cond:
                self._refs[key] -= 1
                if self._refs[key] == 0:
                    del self._refs[key]
                    self._cond.notify_all()
