"""One sequence's llama.cpp sampler chain, built from a request's sampling settings.

The chain is the one ``llama_cpp.Llama.generate`` builds (so a request samples
exactly as it did before batching): repetition penalties over the last 64
tokens, then greedy for temperature 0, else top-k 40, typical 1.0, top-p
(default 0.95), min-p 0.05, temperature (default 0.8) and a seeded draw. Each
sequence owns its chain: its penalties see only its own tokens and its seed
only its own draws.
"""

from __future__ import annotations

import llama_cpp
from llama_cpp._internals import LlamaSampler

from model_swap.generation import Sampling

# llama_cpp.Llama's defaults (Llama.generate, Llama.__init__'s last_n_tokens_size).
TOP_K = 40
TYPICAL_P = 1.0
TOP_P = 0.95
MIN_P = 0.05
TEMPERATURE = 0.8
PENALTY_LAST_N = 64


def sampler_chain(sampling: Sampling, n_vocab: int) -> LlamaSampler:
    """A new chain for ``sampling``; the caller closes it (``LlamaSampler.close``)."""
    chain = LlamaSampler()
    chain.add_penalties(
        n_vocab=n_vocab,
        penalty_last_n=PENALTY_LAST_N,
        penalty_repeat=1.0,
        penalty_freq=sampling.frequency_penalty,
        penalty_present=sampling.presence_penalty,
    )
    temperature = TEMPERATURE if sampling.temperature is None else sampling.temperature
    if temperature == 0.0:
        chain.add_greedy()
        return chain
    seed = llama_cpp.LLAMA_DEFAULT_SEED if sampling.seed is None else sampling.seed
    top_p = TOP_P if sampling.top_p is None else sampling.top_p
    chain.add_top_k(TOP_K)
    chain.add_typical(TYPICAL_P, 1)
    chain.add_top_p(top_p, 1)
    chain.add_min_p(MIN_P, 1)
    chain.add_temp(temperature)
    chain.add_dist(seed)
    return chain
