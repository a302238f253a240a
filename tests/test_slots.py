"""The slot table of a batch scheduler (``inference_worker/slots.py``): which sequence
moves where to keep the running ones in slots 0..k-1. Pure: no model."""

from __future__ import annotations

from types import SimpleNamespace

from inference_worker.slots import SlotTable


def seqs(n: int) -> list[SimpleNamespace]:
    return [SimpleNamespace(name=i, slot=-1) for i in range(n)]


def test_admission_takes_the_lowest_free_slot():
    table, (a, b, c) = SlotTable(4), seqs(3)
    for seq in (a, b, c):
        table.take(seq)
    assert (a.slot, b.slot, c.slot) == (0, 1, 2) and table.free == [3]
    table.leave(b)
    assert b.slot == -1 and table.free == [1, 3]


def test_a_slot_freed_below_running_ones_is_filled_from_the_top():
    table, s = SlotTable(4), seqs(4)
    for seq in s:
        table.take(seq)
    table.leave(s[1])
    assert table.compact() == [(1, 3)]  # the top one moves down
    assert [seq.slot for seq in table.active] == [0, 2, 1] and table.free == [3]
    assert table.compact() == []  # compact already


def test_sequences_that_end_together_are_compacted_once_and_never_moved_into_each_other():
    table, s = SlotTable(8), seqs(8)
    for seq in s:
        table.take(seq)
    for seq in s[:6]:  # six end in one step; 6 and 7 run on
        table.leave(seq)
    assert table.compact() == [(0, 7), (1, 6)]  # two moves, not one per finish
    assert (s[7].slot, s[6].slot) == (0, 1) and table.free == [2, 3, 4, 5, 6, 7]
    for seq in s[6:]:
        table.leave(seq)
    assert table.compact() == [] and table.free == list(range(8))


def test_a_free_slot_above_every_running_one_moves_nothing():
    table, (a, b, c) = SlotTable(3), seqs(3)
    for seq in (a, b, c):
        table.take(seq)
    table.leave(c)
    assert table.compact() == [] and (a.slot, b.slot) == (0, 1)
