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


async def test_a_request_about_to_wait_is_put_to_the_queue_limit_first() -> None:
    """With every slot held, the k-th waiter asks the engine's queue check for k (itself and those before it);
    a refusal leaves nothing behind. Requests that would not wait never ask."""
    admission = ConfigAdmission(1)
    asked: list[int] = []

    def check(n: int) -> None:
        asked.append(n)
        if n > 2:
            raise OverflowError("queue full")

    async with admission.admit("a", check):
        async with admission.admit("a", check):  # shares the held config: no wait, no check
            pass
        waiters = [asyncio.create_task(admission.admit("b", check).__aenter__()) for _ in range(2)]
        await asyncio.sleep(0.01)
        assert asked == [1, 2] and admission.waiting == 2
        try:
            async with admission.admit("c", check):
                raise AssertionError("admitted past the queue limit")
        except OverflowError:
            pass
        assert asked == [1, 2, 3] and admission.waiting == 2
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
    assert admission.waiting == 0 and admission.active_configs == 0
