"""One sequence's llama.cpp sampler chain, built from a request's sampling settings.

The chain is the one ``llama_cpp.Llama.generate`` builds (so a request samples
exactly as it did before batching): a grammar when the request has one (JSON
Schema, tool calls or GBNF: tokens it does not allow are masked first; a lazy
one for tools with ``auto``, applied once the reply starts a call),
repetition penalties over the last 64 tokens, then greedy for temperature 0,
Mirostat when asked for, else top-k 40, typical 1.0, top-p (default 0.95),
min-p 0.05, temperature (default 0.8) and a seeded draw. Each request may set
every one of these (Ollama's option names). Each sequence owns its chain: its
grammar and penalties see only its own tokens and its seed only its own draws.
"""

from __future__ import annotations

import ctypes

import llama_cpp
import numpy as np
from llama_cpp._internals import LlamaSampler

from inference_worker.lazy_grammar import TriggerGuard
from model_swap.generation import Sampling

# llama_cpp.Llama's defaults (Llama.generate, Llama.__init__'s last_n_tokens_size).
TOP_K = 40
TYPICAL_P = 1.0
TOP_P = 0.95
MIN_P = 0.05
TEMPERATURE = 0.8
PENALTY_LAST_N = 64
REPEAT_PENALTY = 1.0
MIROSTAT_TAU = 5.0
MIROSTAT_ETA = 0.1
# Candidates Mirostat (v1) estimates s_hat from, as llama.cpp's own sampling uses.
MIROSTAT_M = 100
# llama_token_data as a numpy record, to build a candidate array without a Python loop.
_TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])


def _grammar_sampler(vocab, sampling: Sampling):
    text = sampling.grammar.encode("utf-8")
    if sampling.grammar_trigger is None:
        return llama_cpp.llama_sampler_init_grammar(vocab, text, b"root")
    patterns = (ctypes.c_char_p * 1)(sampling.grammar_trigger.encode("utf-8"))
    no_tokens = (llama_cpp.llama_token * 0)()
    return llama_cpp.llama_sampler_init_grammar_lazy_patterns(
        vocab, text, b"root", patterns, 1, no_tokens, 0
    )


def _or(value, default):
    return default if value is None else value


class SequenceSampler:
    """One sequence's sampling: its chain, and its grammar kept apart from the chain.

    Like llama.cpp's own ``common_sampler``, ``sample`` draws from the chain first
    and asks the grammar only about the drawn token; only when the grammar refuses
    it does it mask every candidate and draw again. Masking a large vocabulary at
    every step is what makes grammar sampling slow, and most tokens a model draws
    already fit. Not thread-safe: the scheduler's thread owns it.
    """

    def __init__(
        self, chain: LlamaSampler, grammar, n_vocab: int, guard: TriggerGuard | None = None
    ):
        self.chain = chain
        self._grammar = grammar  # a llama_sampler pointer, or None
        self._guard = guard  # a lazy grammar's trigger, mirrored (see lazy_grammar.py)
        self._n_vocab = n_vocab
        self._data = np.zeros(n_vocab, dtype=_TOKEN_DATA) if grammar else None
        if self._data is not None:
            self._data["id"] = np.arange(n_vocab, dtype=np.int32)
        self._one = (llama_cpp.llama_token_data * 1)()

    def _candidates(self, ctx, row: int) -> llama_cpp.llama_token_data_array:
        logits = llama_cpp.llama_get_logits_ith(ctx, row)
        self._data["logit"] = np.ctypeslib.as_array(logits, shape=(self._n_vocab,))
        self._data["p"] = 0.0
        pointer = self._data.ctypes.data_as(llama_cpp.llama_token_data_p)
        return llama_cpp.llama_token_data_array(pointer, self._n_vocab, -1, False)

    def sample(self, ctx, row: int) -> int:
        """The next token from logits row ``row`` of ``ctx``, accepted by the chain (and
        the grammar)."""
        if self._grammar is None:
            return llama_cpp.llama_sampler_sample(self.chain.sampler, ctx, row)
        cur = self._candidates(ctx, row)
        llama_cpp.llama_sampler_apply(self.chain.sampler, ctypes.byref(cur))
        token = int(cur.data[cur.selected].id)
        self._one[0].id, self._one[0].logit, self._one[0].p = token, 1.0, 0.0
        one = llama_cpp.llama_token_data_array(self._one, 1, -1, False)
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(one))
        if self._one[0].logit == float("-inf"):  # the grammar refuses it: mask, draw again
            token = self._draw_again(ctx, row, ())
        refused: list[int] = []
        while self._guard is not None and self._guard.refuses(token):
            refused.append(token)  # it would fire the trigger into text the grammar refuses
            token = self._draw_again(ctx, row, refused)
        # Samplers may reorder the candidates in place: put the ids back in order.
        self._data["id"] = np.arange(self._n_vocab, dtype=np.int32)
        llama_cpp.llama_sampler_accept(self._grammar, token)
        if self._guard is not None:
            self._guard.accepted(token)
        llama_cpp.llama_sampler_accept(self.chain.sampler, token)
        return token

    def _draw_again(self, ctx, row: int, refused) -> int:
        """A token drawn from every candidate the grammar allows, but ``refused``."""
        self._data["id"] = np.arange(self._n_vocab, dtype=np.int32)
        cur = self._candidates(ctx, row)
        for token in refused:
            self._data["logit"][token] = float("-inf")
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(cur))
        llama_cpp.llama_sampler_apply(self.chain.sampler, ctypes.byref(cur))
        return int(cur.data[cur.selected].id)

    def close(self) -> None:
        if self._grammar is not None:
            llama_cpp.llama_sampler_free(self._grammar)
            self._grammar = None
        self.chain.close()


def sampler_chain(sampling: Sampling, n_vocab: int, vocab=None, n_ctx: int = 0) -> SequenceSampler:
    """A new sampler for ``sampling``; the caller closes it (``SequenceSampler.close``).

    ``vocab`` (the model's ``llama_vocab``) is needed for a grammar, which the
    worker checked already (``structured.check_grammar``); ``n_ctx`` is what
    ``repeat_last_n: -1`` covers.
    """
    grammar = guard = None
    if sampling.grammar is not None and vocab is not None:
        grammar = _grammar_sampler(vocab, sampling)
        if not grammar:
            raise ValueError("llama.cpp could not parse the request's grammar")
        if sampling.grammar_trigger is not None:
            guard = TriggerGuard(vocab, sampling.grammar, sampling.grammar_trigger)
    return SequenceSampler(_chain(sampling, n_vocab, n_ctx), grammar, n_vocab, guard)


def _chain(sampling: Sampling, n_vocab: int, n_ctx: int) -> LlamaSampler:
    chain = LlamaSampler()
    last_n = _or(sampling.repeat_last_n, PENALTY_LAST_N)
    chain.add_penalties(
        n_vocab=n_vocab,
        penalty_last_n=n_ctx if last_n == -1 else last_n,
        penalty_repeat=_or(sampling.repeat_penalty, REPEAT_PENALTY),
        penalty_freq=sampling.frequency_penalty,
        penalty_present=sampling.presence_penalty,
    )
    temperature = TEMPERATURE if sampling.temperature is None else sampling.temperature
    if temperature == 0.0:
        chain.add_greedy()
        return chain
    seed = llama_cpp.LLAMA_DEFAULT_SEED if sampling.seed is None else sampling.seed
    tau = _or(sampling.mirostat_tau, MIROSTAT_TAU)
    eta = _or(sampling.mirostat_eta, MIROSTAT_ETA)
    if sampling.mirostat == 1:
        chain.add_temp(temperature)
        chain.add_mirostat(n_vocab, seed, tau, eta, MIROSTAT_M)
        return chain
    if sampling.mirostat == 2:
        chain.add_temp(temperature)
        chain.add_mirostat_v2(seed, tau, eta)
        return chain
    top_k = _or(sampling.top_k, TOP_K)
    chain.add_top_k(top_k if top_k > 0 else n_vocab)
    chain.add_typical(_or(sampling.typical_p, TYPICAL_P), 1)
    chain.add_top_p(_or(sampling.top_p, TOP_P), 1)
    chain.add_min_p(_or(sampling.min_p, MIN_P), 1)
    chain.add_temp(temperature)
    chain.add_dist(seed)
    return chain
