"""Stop sequences over streamed text: what is safe to send now, and where to stop.

Generated text arrives one token's piece at a time, and a stop sequence can
span several pieces. ``StopScanner`` holds back only the tail that could still
be the start of a stop sequence, so a client never sees any part of one, and
everything else is released as soon as it arrives. Pure: no llama.cpp, no I/O.
"""

from __future__ import annotations


class StopScanner:
    """Feed pieces with ``push``; emit what it returns; ``stopped`` once a sequence matched."""

    def __init__(self, sequences: tuple[str, ...] | list[str]):
        self._sequences = tuple(s for s in sequences if s)
        self._held = ""
        self.stopped = False

    def push(self, piece: str) -> str:
        """Add ``piece``; return the text that can be sent now (empty once stopped)."""
        if self.stopped:
            return ""
        if not self._sequences:
            return piece
        text = self._held + piece
        cut = min((i for i in (text.find(s) for s in self._sequences) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._held = ""
            return text[:cut]
        keep = self._longest_partial(text)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """The held-back tail, at the end of generation (it turned out not to be a stop)."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _longest_partial(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a sequence."""
        best = 0
        for sequence in self._sequences:
            for length in range(min(len(sequence) - 1, len(text)), best, -1):
                if text.endswith(sequence[:length]):
                    best = length
                    break
        return best
