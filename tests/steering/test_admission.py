"""Admission: at most N distinct configs in flight; the rest wait; shared configs and unsteered never wait."""

from __future__ import annotations

import asyncio

from steering.admission import ConfigAdmission


async def test_extra_configs_wait_until_one_finishes() -> None:
    admission = ConfigAdmission(2)
    order: list[str] = []
    gate = asyncio.Event()

    async def hold(key: str | None, tag: str) -> None:
        async with admission.admit(key):
            order.append(f"in:{tag}")
            await gate.wait()
        order.append(f"out:{tag}")

    tasks = [
        asyncio.create_task(hold(k, t)) for k, t in [("a", "a1"), ("b", "b1"), ("c", "c1"), ("a", "a2"), (None, "n")]
    ]
    await asyncio.sleep(0.05)
    assert sorted(order) == ["in:a1", "in:a2", "in:b1", "in:n"]
    assert admission.waiting == 1 and admission.active_configs == 2
    gate.set()
    await asyncio.gather(*tasks)
    assert "in:c1" in order and admission.active_configs == 0 and admission.waiting == 0


async def test_cancelled_waiter_leaves_no_trace() -> None:
    admission = ConfigAdmission(1)
    async with admission.admit("a"):
        waiter = asyncio.create_task(admission.admit("b").__aenter__())
        await asyncio.sleep(0.01)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        assert admission.waiting == 0
    assert admission.active_configs == 0
