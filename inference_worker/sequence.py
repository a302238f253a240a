"""One request's place in a batch scheduler (``inference_worker/batch.py``), and how it ends."""

from __future__ import annotations

import queue
import time

from model_swap.generation import Sampling


class SchedulerClosed(Exception):
    """The model is being unloaded: the scheduler takes no new sequences."""


class DecodeFailed(Exception):
    """llama_decode failed for a batch holding this sequence."""


class Sequence:
    """One request's place in a scheduler. Granted by ``BatchScheduler.reserve``.

    ``out`` yields the sampled token ids (ints) in order, then one final item:
    a finish reason (``"stop"``: end of generation token; ``"length"``: the
    token budget) or a ``DecodeFailed``. The fields below ``out`` belong to the
    scheduler's thread.
    """

    def __init__(self) -> None:
        self.prompt: list[int] = []
        self.max_tokens = 0
        self.sampling = Sampling()
        self.out: queue.SimpleQueue = queue.SimpleQueue()
        self.submitted = time.perf_counter()
        # Requests sent to this model at the same moment as this one, itself included (the
        # store's group after a swap): the first step of an idle scheduler waits for them.
        self.together = 1
        self.admitted: float | None = None  # set when it gets a slot
        self.cancelled = False
        self.released = False
        self.slot = -1
        self.fed = 0  # prompt tokens decoded so far (or reused)
        self.reused = 0  # prompt tokens whose KV cells were found in its slot (prefix reuse)
        self.restored = 0  # of those, restored from the host-memory prompt cache
        self.placed = False  # its slot's cells are ready (prefix.KeptCells.place)
        self.generated = 0
        self.pending: int | None = None  # the last sampled token, decoded at the next step
        self.row = -1  # its logits row in the current batch, or -1
        self.sampler = None
