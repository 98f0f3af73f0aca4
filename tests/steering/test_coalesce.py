"""Many callers, one call: keys asked for together share a fetch; keys asked for during a fetch share the next."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from steering.coalesce import Coalesced


async def test_callers_of_one_turn_share_a_call_and_later_ones_the_next() -> None:
    calls: list[list[str]] = []
    release = asyncio.Event()

    async def fetch(keys: Sequence[str]) -> dict[str, str]:
        calls.append(list(keys))
        await release.wait()
        return {k: k.upper() for k in keys if k != "fine"}

    coalesced: Coalesced[str, str] = Coalesced(fetch)
    first = [asyncio.create_task(coalesced.get(k)) for k in ("a", "fine", "b")]
    await asyncio.sleep(0.01)
    later = [asyncio.create_task(coalesced.get(k)) for k in ("c", "d")]  # asked while the first call is in flight
    await asyncio.sleep(0.01)
    assert calls == [["a", "fine", "b"]]
    release.set()
    assert await asyncio.gather(*first) == ["A", None, "B"]
    assert await asyncio.gather(*later) == ["C", "D"]
    assert calls == [["a", "fine", "b"], ["c", "d"]]
    assert await coalesced.get("e") == "E" and calls[-1] == ["e"]  # idle again: a new call


async def test_a_failed_call_fails_each_of_its_callers_and_the_next_call_is_fresh() -> None:
    attempts = 0

    async def fetch(keys: Sequence[str]) -> dict[str, str]:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise RuntimeError("engine gone")
        return {}

    coalesced: Coalesced[str, str] = Coalesced(fetch)
    results = await asyncio.gather(coalesced.get("a"), coalesced.get("b"), return_exceptions=True)
    assert [type(r) for r in results] == [RuntimeError, RuntimeError]
    assert await coalesced.get("c") is None
    with pytest.raises(asyncio.TimeoutError):  # a caller that gives up leaves the others unharmed
        await asyncio.wait_for(Coalesced(lambda keys: asyncio.sleep(1, {})).get("x"), 0.01)
