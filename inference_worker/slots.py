"""Which sequence holds which slot of a batch scheduler, the slots kept compact.

With one KV stream per sequence, llama.cpp evaluates in one pass only sequences
whose ids follow each other in batch order, so the running sequences always
hold slots 0..k-1 and every batch is laid out in slot order
(``inference_worker/batch.py``). ``SlotTable`` is that bookkeeping and the
choice of which sequence moves where; moving the KV cells is the caller's
(``prefix.KeptCells.swap``). Pure; the scheduler's loop thread owns it.
"""

from __future__ import annotations

import bisect
from operator import attrgetter

# The sort key of sequences by the slot they hold.
SLOT = attrgetter("slot")


class SlotTable:
    """The sequences holding a slot, in admission order, and the free slots, sorted."""

    def __init__(self, parallel: int):
        self.active: list = []  # sequences holding a slot (their ``slot`` says which)
        self.free: list[int] = list(range(parallel))

    def take(self, seq) -> None:
        """Give ``seq`` the lowest free slot (the caller checked that one is free)."""
        seq.slot = self.free.pop(0)
        self.active.append(seq)

    def leave(self, seq) -> None:
        """``seq`` ended: its slot is free, perhaps below running sequences until
        ``compact``."""
        self.active.remove(seq)
        bisect.insort(self.free, seq.slot)
        seq.slot = -1

    def compact(self) -> list[tuple[int, int]]:
        """While a free slot lies below the highest running sequence, that sequence moves
        into it. Returns the moves in order, as (slot moved into, slot moved from); the
        sequences' ``slot`` already say where they are, and the slots they left are free."""
        moves = []
        while self.free:
            last = max(self.active, key=SLOT, default=None)
            if last is None or last.slot < self.free[0]:
                break
            hole = self.free.pop(0)
            moves.append((hole, last.slot))
            bisect.insort(self.free, last.slot)
            last.slot = hole
        return moves
