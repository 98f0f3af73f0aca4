"""Slot allocator: identical configs share, in-use slots are never reassigned, idle slots reused LRU."""

from __future__ import annotations

from steering.slots import SlotAllocator


def test_share_refcount_and_lru_reuse() -> None:
    slots = SlotAllocator(2)
    a1 = slots.acquire("a")
    a2 = slots.acquire("a")
    assert a1 is not None and a2 is not None and a1.slot == a2.slot and a1.needs_fill and not a2.needs_fill
    b = slots.acquire("b")
    assert b is not None and b.slot != a1.slot and b.slot != 0
    assert slots.acquire("c") is None  # both in use
    slots.release("a")
    assert slots.acquire("c") is None  # "a" still has one user
    slots.release("a")
    slots.release("b")
    again = slots.acquire("a")  # idle but cached: no refill
    assert again is not None and again.slot == a1.slot and not again.needs_fill
    c = slots.acquire("c")  # evicts the least recently used idle config ("b")
    assert c is not None and c.slot == b.slot and c.needs_fill
    assert slots.slot_of("b") is None and slots.in_use() == 2


def test_release_unknown_is_harmless() -> None:
    slots = SlotAllocator(1)
    slots.release("never")
    assert slots.acquire("x") is not None
