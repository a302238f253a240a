"""Continuous batching on one resident model: several sequences share each llama_decode.

A ``BatchScheduler`` owns one llama.cpp context with ``parallel`` sequences
(``n_seq_max``, a separate KV stream of ``n_ctx_seq`` cells each) and one
thread. At every step that thread admits waiting requests into free sequences
(first come, first served), puts the next token of every decoding sequence
plus chunks of newly admitted prompts into one ``llama_batch`` (at most
``n_batch`` tokens, so a long prompt enters over several steps interleaved
with the others' decoding), calls ``llama_decode`` once, and samples each
sequence from its own logits row with its own sampler chain.

Prefix reuse (``inference_worker/prefix.py``): a finished or cancelled sequence's
slot keeps its KV cells and their token ids; a new request goes to the free slot
sharing the longest prefix with its prompt and evaluates only the rest (always its
last token). Slots swap KV streams through one spare stream (``kv_streams`` is
``parallel + 1``), so keeping the slots compact (``inference_worker/slots.py``)
loses no kept cells; cells about to be lost go to the host-memory prompt cache
(``inference_worker/kv_cache.py``), and ``close`` returns the free slots' cells to
be saved on disk. With ``reuse=False`` a finished sequence's cells go at once.

The scheduler hands out token ids only: turning them into text, stop
sequences and streaming happen in the caller's thread
(``inference_worker/generation.py``), beside the next ``llama_decode``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable

import llama_cpp
from llama_cpp import _internals

from inference_worker import decode_thread
from inference_worker.admission import Admission
from inference_worker.batch_stats import BatchStats
from inference_worker.kv_cache import PromptCache, worth_keeping
from inference_worker.kv_state import read_state
from inference_worker.prefix import KeptCells, kv_streams
from inference_worker.sampling import sampler_chain
from inference_worker.sequence import DecodeFailed, SchedulerClosed, Sequence
from inference_worker.slots import SLOT, SlotTable
from inference_worker.threads import CpuMeter, step_threads, usable_cpus

__all__ = ["BatchScheduler", "BatchStats", "DecodeFailed", "SchedulerClosed", "Sequence"]

logger = logging.getLogger(__name__)

# llama_cpp.Llama's default batch: the most tokens one llama_decode takes.
N_BATCH = 512
# Seconds an idle loop sleeps before it checks whether its scheduler is still in use.
IDLE_CHECK = 1.0


class BatchScheduler(Admission):
    """The batch loop of one resident model's context. Thread-safe.

    ``reserve`` and ``start`` never block; ``release`` must be called once per
    reserved sequence (it cancels a sequence still running). ``close`` waits
    until every reserved sequence is released, then frees the context.
    """

    def __init__(
        self,
        llm,
        *,
        name: str,
        parallel: int,
        n_ctx_seq: int,
        stats: BatchStats,
        n_threads: int = 0,
        meter: CpuMeter | None = None,
        on_batch: Callable[[list[int]], None] | None = None,
        reuse: bool = True,
        prompts: PromptCache | None = None,
        load_state: Callable | None = None,
    ):
        self.reuse = reuse  # keep finished sequences' cells for a prompt sharing their prefix
        self._on_batch = on_batch  # tests: called with each batch's sequence ids, in order
        self.moves = 0  # sequences moved to a lower slot to keep the slots compact
        self.parallel = parallel
        self.n_ctx_seq = n_ctx_seq
        self._stats = stats
        self._vocab = llm._model.vocab
        self._n_vocab = llm._model.n_vocab()
        params = llama_cpp.llama_context_default_params()
        # The spare stream (the last one) holds a slot's cells while two slots swap.
        self.kv_streams = kv_streams(parallel, reuse)
        params.n_ctx = self.kv_streams * n_ctx_seq
        params.n_batch = params.n_ubatch = min(N_BATCH, params.n_ctx)
        params.n_seq_max = self.kv_streams
        params.kv_unified = False  # one KV stream per sequence: its numbers do not depend on others
        # As llama_cpp.Llama runs it (and the footprint estimate assumes): the same numbers,
        # so the same texts, as before batching.
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        # Set again before every llama_decode (inference_worker/threads.py); N_THREADS fixes it.
        self._fixed_threads = n_threads
        self._meter = meter or CpuMeter()
        self._cpus = usable_cpus()
        self._model_bytes = llama_cpp.llama_model_size(llm._model.model)
        self.threads = params.n_threads = params.n_threads_batch = n_threads or 1
        params.no_perf = True
        self._context = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
        self._ctx = self._context.ctx
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._kept = KeptCells(self._ctx, parallel, self.kv_streams, prompts if reuse else None)
        self._kept.load = load_state
        self._n_batch = params.n_batch
        self._batch = llama_cpp.llama_batch_init(self._n_batch, 0, 1)
        super().__init__(name)
        self._slots = SlotTable(parallel)
        self.kv_tokens = 0  # cells the running sequences hold, as llama.cpp reports them
        self.cached_tokens = 0  # cells free slots keep for prefix reuse
        self.prompt_tokens = 0  # prompt tokens of the admitted sequences
        self.reused_tokens = 0  # of those, found in kept cells instead of evaluated
        self._llm = llm  # the model outlives this context
        self._thread = threading.Thread(
            target=self._loop, args=(weakref.ref(self),), name=f"batch-{name}", daemon=True
        )
        self._thread.start()

    @property
    def alive(self) -> bool:
        """Whether the loop thread still runs (it ends after close, or if a bug kills it)."""
        return self._thread.is_alive()

    def next_item(self, seq: Sequence):
        """``seq``'s next token id or final item, blocking; DecodeFailed if the loop died.

        Waits as long as the loop runs (a long prompt may take a while), checking every
        IDLE_CHECK seconds that it still does.
        """
        while True:
            try:
                return seq.out.get(timeout=IDLE_CHECK)
            except queue.Empty:
                if not self.alive:
                    return DecodeFailed(f"the batch loop of {self.name} stopped")

    def close(self) -> list[tuple[tuple[int, ...], bytearray]]:
        """Take no new sequences, wait until every submitted one is released, free the context.

        If the loop thread died, waits no longer: nothing can run on the context any more,
        and a reader waiting on it gets DecodeFailed (``next_item``). Returns the states of
        the slots' kept cells worth keeping (with a prompt cache), to be saved.
        """
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            while self._open and self.alive:
                self._cond.wait(IDLE_CHECK)
            if self._open:
                logger.error("closing %s: its batch loop died (%d open)", self.name, self._open)
        self._thread.join()
        kept = []
        if self._kept.cache is not None and self._batch is not None:
            self._flush()
            for slot, tokens in enumerate(self._kept.tokens):
                if worth_keeping(len(tokens)) and (data := read_state(self._ctx, slot)):
                    kept.append((tuple(tokens), data))
        self._free_context()
        return kept

    def _free_context(self) -> None:
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
            self._context.close()

    def __del__(self) -> None:
        # Dropped without close (an app discarded with its engine, in tests): the loop holds
        # no reference between steps, so it is not running now; free the context before the
        # model it belongs to (this object holds the model's Llama until then).
        self._free_context()

    # The loop (its own thread). It holds the scheduler only during one step, so a scheduler
    # nobody uses any more is collected and the loop ends.

    @staticmethod
    def _loop(ref: weakref.ref) -> None:
        while True:
            scheduler = ref()
            if scheduler is None or not scheduler._run_once():
                return
            del scheduler

    def _run_once(self) -> bool:
        """Wait (at most IDLE_CHECK seconds) for work and run one step; False when closed."""
        with self._cond:
            if not (self._slots.active or self._waiting):
                if self._closing and not self._open:
                    return False
                self._cond.wait(IDLE_CHECK)
                return True
            if not self._slots.active:
                hold = self.gathering(len(self._slots.free), time.perf_counter())
                if hold > 0:
                    self._cond.wait(hold)
                    return True
            self._admit()
            active = list(self._slots.active)
        try:
            self._step(active)
        except Exception as err:  # a bug or llama.cpp failing: end these, keep serving
            logger.exception("batch step on %s failed", self.name)
            for seq in active:
                if seq.slot >= 0:
                    self._end(seq, DecodeFailed(f"generation on {self.name} failed: {err}"))
            self._compact()
        return True

    def _admit(self) -> None:
        """Give free slots to waiting sequences in arrival order (under _cond, loop thread).

        Each goes to the free slot whose kept tokens share the longest prefix with its
        prompt. The running sequences hold slots 0..k-1, so it runs in slot k: kept
        cells in a higher free slot swap with k's.
        """
        while self._waiting and self._slots.free:
            seq = self._waiting.popleft()
            self._slots.take(seq)
            seq.admitted = time.perf_counter()
            self._admitted_open += 1
            self._place(seq)

    def _place(self, seq: Sequence) -> None:
        """Ready ``seq``'s slot: the kept cells it starts from (loop thread). Left for after
        the next decode when a state copy must wait for a queued stream copy."""
        running = [s.slot for s in self._slots.active if s is not seq and s.placed]
        placed = self._kept.place(seq.slot, self._slots.free, seq.prompt, self.reuse, running)
        if placed is None:
            return
        common, moved, restored = placed
        self.moves += moved
        seq.fed = seq.reused = common
        seq.restored = restored
        seq.placed = True
        self.prompt_tokens += len(seq.prompt)
        self.reused_tokens += common
        self._stats.observe_prompt(len(seq.prompt), common, restored)

    def _flush(self) -> None:
        """Run the stream copies llama.cpp queued (they run at the start of a decode): one
        token decoded into the spare stream, then removed. Then place the sequences
        that waited for it."""
        if not self._kept.pending or self._kept.spare is None:
            return
        self._batch.n_tokens = 1
        self._batch.token[0], self._batch.pos[0] = 0, 0
        self._batch.n_seq_id[0], self._batch.seq_id[0][0] = 1, self._kept.spare
        self._batch.logits[0] = False
        status = decode_thread.decode(self._ctx, self._batch, self.threads)
        llama_cpp.llama_memory_seq_rm(self._memory, self._kept.spare, -1, -1)
        if status != 0:
            raise RuntimeError(f"llama_decode returned {status} applying stream copies")
        self._applied()

    def _applied(self) -> None:
        """A decode ran llama.cpp's queued stream copies: place the sequences waiting for it."""
        self._kept.pending.clear()
        for seq in self._slots.active:
            if not seq.placed:
                self._place(seq)

    def _step(self, active: list[Sequence]) -> None:
        """One llama_decode: every decoding sequence's next token and prompt chunks, in slot order.

        With one KV stream per sequence llama.cpp puts sequences in one pass only when
        their ids follow each other in batch order; slots are kept compact (``_end``), so
        laying the batch out by slot makes one pass of every step whatever the order in
        which requests arrived and finished. Prompt room goes by admission order.
        """
        for seq in active:
            seq.row = -1
            if seq.cancelled:
                self._end(seq, "cancelled")
        self._compact()
        live = [seq for seq in active if seq.slot >= 0 and seq.placed]
        decoding = sum(seq.pending is not None for seq in live)
        room = self._n_batch - decoding
        chunks: dict[int, list[int]] = {}
        for seq in live:
            if room == 0:
                break
            if seq.pending is None and seq.fed < len(seq.prompt):
                chunks[id(seq)] = seq.prompt[seq.fed : seq.fed + room]
                room -= len(chunks[id(seq)])
        n = 0
        for seq in sorted(live, key=SLOT):
            if seq.pending is not None:
                n = self._add(n, seq.pending, len(seq.prompt) + seq.generated - 1, seq, True)
                seq.row = n - 1
                continue
            chunk = chunks.get(id(seq))
            if chunk is None:
                continue
            if seq.sampler is None:
                seq.sampler = sampler_chain(
                    seq.sampling, self._n_vocab, self._vocab, self.n_ctx_seq
                )
            for offset, token in enumerate(chunk):
                n = self._add(n, token, seq.fed + offset, seq, False)
            seq.fed += len(chunk)
            if seq.fed == len(seq.prompt):
                self._batch.logits[n - 1] = True
                seq.row = n - 1
        if n:
            if self._on_batch is not None:
                self._on_batch([self._batch.seq_id[i][0] for i in range(n)])
            self._decode(live, n, 0 < decoding < n)
        elif any(not seq.placed for seq in active if seq.slot >= 0):
            self._flush()
        free = set(self._slots.free)  # only this thread changes it
        self.kv_tokens = sum(
            llama_cpp.llama_memory_seq_pos_max(self._memory, slot) + 1
            for slot in range(self.parallel)
            if slot not in free
        )
        self.cached_tokens = sum(len(self._kept.tokens[slot]) for slot in free)

    def _decode(self, active: list[Sequence], n: int, mixed: bool) -> None:
        """Decode the batch's ``n`` tokens and sample every sequence that has a row."""
        batch = self._batch
        batch.n_tokens = n
        threads = step_threads(
            tokens=n,
            model_bytes=self._model_bytes,
            cpus=self._cpus,
            spare=self._meter.spare(),
            fixed=self._fixed_threads,
        )
        if threads != self.threads:
            llama_cpp.llama_set_n_threads(self._ctx, threads, threads)
            self.threads = threads
        with self._meter.decoding():  # on the one wide-decode thread when threads > 1
            status = decode_thread.decode(self._ctx, batch, threads)
        self._stats.observe(n, mixed, threads)
        if status != 0:
            raise RuntimeError(f"llama_decode returned {status}")
        self._applied()
        for seq in active:
            if seq.row < 0:
                continue
            token = seq.sampler.sample(self._ctx, seq.row)
            if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                self._end(seq, "stop")
                continue
            seq.generated += 1
            seq.pending = token
            seq.out.put(token)
            if seq.generated >= seq.max_tokens:
                self._end(seq, "length")
        # Once every sequence of the step is sampled: sequences that end in the same step
        # (a wave of equal requests) never move into each other's slots.
        self._compact()

    def _add(self, n: int, token: int, pos: int, seq: Sequence, logits: bool) -> int:
        batch = self._batch
        batch.token[n] = token
        batch.pos[n] = pos
        batch.n_seq_id[n] = 1
        batch.seq_id[n][0] = seq.slot
        batch.logits[n] = logits
        self._kept.tokens[seq.slot].append(token)
        return n + 1

    def _end(self, seq: Sequence, outcome) -> None:
        """Free ``seq``'s slot and tell its reader (loop thread); the caller then runs
        ``_compact``, once for every sequence it ended.

        Its KV cells stay for prefix reuse (unless ``reuse`` is off or a decode failed).
        """
        if seq.slot < 0:
            return
        if not self.reuse or isinstance(outcome, Exception):
            self._kept.drop(seq.slot)
        if seq.sampler is not None:
            seq.sampler.close()
            seq.sampler = None
        with self._cond:
            self._slots.leave(seq)
            seq.row = -1
            self._cond.notify_all()
        seq.out.put(outcome)

    def _compact(self) -> None:
        """Keep the slots compact (loop thread, ``SlotTable.compact``): a sequence that moves
        into a lower slot exchanges KV streams (copied whole at the next decode) and cached
        tokens with it (``KeptCells.swap``), so the freed slot's kept cells go up."""
        with self._cond:
            for hole, source in self._slots.compact():
                self._kept.swap(hole, source)
                self.moves += 1
