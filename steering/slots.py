"""Slot bookkeeping for steering configs: refcounted, identical configs share a slot, idle slots reused LRU.

Slot 0 is the no-op row and is never handed out. Pure Python so that it is unit-tested without an engine.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class SlotGrant:
    slot: int
    needs_fill: bool  # False when the config already sits in this slot from an earlier request


class SlotAllocator:
    """Maps config keys to slots 1..num_slots; a slot in use is never reassigned."""

    def __init__(self, num_slots: int) -> None:
        if num_slots < 1:
            raise ValueError("num_slots must be >= 1")
        self.num_slots = num_slots
        self._slot_of: dict[str, int] = {}
        self._refs: dict[str, int] = {}
        self._idle: OrderedDict[str, int] = OrderedDict()  # configs kept warm, least recently used first
        self._never_used = list(range(num_slots, 0, -1))

    def acquire(self, key: str) -> SlotGrant | None:
        """A slot for `key`, or None when every slot holds a config still in use."""
        slot = self._slot_of.get(key)
        if slot is not None:
            self._refs[key] += 1
            self._idle.pop(key, None)
            return SlotGrant(slot, needs_fill=False)
        if self._never_used:
            slot = self._never_used.pop()
        elif self._idle:
            evicted, slot = self._idle.popitem(last=False)
            del self._slot_of[evicted]
            del self._refs[evicted]
        else:
            return None
        self._slot_of[key] = slot
        self._refs[key] = 1
        return SlotGrant(slot, needs_fill=True)

    def release(self, key: str) -> None:
        refs = self._refs.get(key)
        if refs is None:
            return
        if refs > 1:
            self._refs[key] = refs - 1
            return
        self._refs[key] = 0
        self._idle[key] = self._slot_of[key]

    def in_use(self) -> int:
        return sum(1 for refs in self._refs.values() if refs > 0)

    def slot_of(self, key: str) -> int | None:
        return self._slot_of.get(key)
