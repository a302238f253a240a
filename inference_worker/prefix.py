"""Prefix reuse: which free sequence's kept KV cells a new prompt can start from.

Pure decisions for ``inference_worker/batch.py``, which keeps, per slot, the token
ids whose KV cells the slot's stream holds.
"""

from __future__ import annotations


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def best_prefix(
    cached: list[list[int]], free: list[int], lowest: int, prompt: list[int]
) -> tuple[int, int]:
    """The free slot (``lowest`` or one of ``free``) whose cached tokens share the longest
    prefix with ``prompt``, and how many tokens it can reuse: never the whole prompt (its
    last token is evaluated for the logits). Ties go to ``lowest`` (no move)."""
    best, common = lowest, 0
    for slot in [lowest, *free]:
        shared = min(common_prefix(cached[slot], prompt), len(prompt) - 1)
        if shared > common:
            best, common = slot, shared
    return best, common


def kv_streams(parallel: int, reuse: bool) -> int:
    """KV streams of a context serving ``parallel`` sequences: one more with prefix reuse
    (the spare that lets two slots swap their cells), unless there is a single slot."""
    return parallel + 1 if reuse and parallel > 1 else parallel
