"""Prefix reuse in the batch scheduler (``inference_worker/batch.py``) on a real tiny model:
a new request starts from the kept KV cells of the free sequence sharing the longest prefix
with its prompt, evaluates only the rest, and samples the same text as without reuse."""

from __future__ import annotations

import threading

import llama_cpp
import pytest

from inference_worker.batch import BatchScheduler, BatchStats
from inference_worker.prefix import best_prefix, common_prefix
from model_swap.generation import Sampling
from tests.conftest import A

GREEDY = Sampling(temperature=0.0)
SEEDED = Sampling(temperature=0.8, seed=7)


@pytest.fixture
def llm(models_dir):
    model = llama_cpp.Llama(str(models_dir / A), n_ctx=16, verbose=False)
    yield model
    model.close()


def scheduler_for(llm, parallel: int, reuse: bool) -> BatchScheduler:
    return BatchScheduler(
        llm, name="tiny", parallel=parallel, n_ctx_seq=512, stats=BatchStats(), reuse=reuse
    )


def tokens(llm, text: str) -> list[int]:
    return llm.tokenize(text.encode(), add_bos=True, special=False)


def generate(scheduler, prompts: list[list[int]], budget: int, sampling: Sampling):
    """Start ``prompts`` together; every one's sampled ids and how many prompt tokens it reused."""
    seqs = []
    with scheduler._cond:  # the loop admits none before all are queued
        for prompt in prompts:
            seqs.append(scheduler.reserve())
            scheduler.start(seqs[-1], prompt, budget, sampling)
    results = [None] * len(seqs)

    def read(i):
        out = []
        while isinstance(item := seqs[i].out.get(timeout=60), int):
            out.append(item)
        assert item == "length", item
        results[i] = out

    threads = [threading.Thread(target=read, args=(i,)) for i in range(len(seqs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for seq in seqs:
        scheduler.release(seq)
    return results, [seq.reused for seq in seqs]


def conversation(llm, scheduler, sampling: Sampling) -> tuple[list[list[int]], list[int]]:
    """Four turns, each prompt the previous prompt plus its answer plus new text, then the
    first prompt again: the texts sampled and the prompt tokens each turn reused."""
    prompt = tokens(llm, "The weather today is")
    answers, reused = [], []
    first = list(prompt)
    for turn in range(4):
        (answer,), (n,) = generate(scheduler, [prompt], 12, sampling)
        answers.append(answer)
        reused.append(n)
        prompt = prompt + answer + tokens(llm, f" and then turn {turn} says")[1:]
    (answer,), (n,) = generate(scheduler, [first], 12, sampling)
    return [*answers, answer], [*reused, n]


@pytest.mark.parametrize("sampling", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_same_text_with_and_without_reuse_and_only_the_new_tokens_evaluated(llm, sampling):
    plain = scheduler_for(llm, 2, reuse=False)
    reusing = scheduler_for(llm, 2, reuse=True)
    try:
        expected, none = conversation(llm, plain, sampling)
        got, reused = conversation(llm, reusing, sampling)
        assert got == expected
        assert none == [0] * 5 and plain.reused_tokens == 0
        # Every later turn starts from the previous turn's prompt and answer (less the last
        # sampled token, never decoded); the repeated first prompt from its own cells.
        assert reused[0] == 0 and all(n > 0 for n in reused[1:])
        assert reused[-1] == len(tokens(llm, "The weather today is")) - 1
        assert reusing.reused_tokens == sum(reused)
        assert reusing.prompt_tokens == plain.prompt_tokens > reusing.reused_tokens
    finally:
        plain.close()
        reusing.close()


def test_a_request_lands_on_the_sequence_with_the_longest_shared_prefix(llm):
    """Three different prompts run together, then one extending each, in another order: each
    follow-up reuses its own predecessor's cells (their slots were swapped to keep the running
    sequences compact) and samples what it samples without reuse."""
    bases = [tokens(llm, f"story number {i} begins with a dragon who") for i in range(3)]
    scheduler = scheduler_for(llm, 3, reuse=True)
    plain = scheduler_for(llm, 3, reuse=False)
    try:
        answers, _ = generate(scheduler, bases, 8, GREEDY)
        follow = [bases[i] + answers[i] + tokens(llm, " next")[1:] for i in (2, 0, 1)]
        got, reused = generate(scheduler, follow, 8, GREEDY)
        expected, _ = generate(plain, follow, 8, GREEDY)
        assert got == expected
        for prompt, (i, n) in zip(follow, zip((2, 0, 1), reused, strict=True), strict=True):
            # The whole predecessor prompt and the answer tokens that were decoded.
            assert n == len(bases[i]) + len(answers[i]) - 1, (i, n)
            assert n < len(prompt)
        assert scheduler.cached_tokens > 0 and plain.cached_tokens == 0
    finally:
        scheduler.close()
        plain.close()


def test_best_prefix_prefers_the_longest_share_and_keeps_the_last_token_to_evaluate():
    cached = [[1, 2, 9], [1, 2, 3, 4], [], [5]]
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert best_prefix(cached, [1, 2, 3], 0, [1, 2, 3, 4, 5]) == (1, 4)
    assert best_prefix(cached, [1, 2, 3], 0, [1, 2, 3, 4]) == (1, 3)  # last one evaluated
    assert best_prefix(cached, [1, 2, 3], 0, [1, 2, 9]) == (0, 2)  # a tie stays in place
    assert best_prefix(cached, [1, 2, 3], 0, [7, 8]) == (0, 0)
