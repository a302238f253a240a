"""The host-memory prompt cache (``inference_worker/kv_cache.py``): a slot's cells about to be
taken by an unrelated prompt are kept in host memory, and a later prompt extending them
restores them instead of evaluating them again; same text as without reuse (real tiny model)."""

from __future__ import annotations

import llama_cpp
import pytest

from inference_worker.batch import BatchScheduler, BatchStats
from inference_worker.kv_cache import PromptCache, should_restore, worth_keeping
from tests.conftest import A
from tests.test_prefix_reuse import GREEDY, SEEDED, generate, tokens


@pytest.fixture
def llm(models_dir):
    model = llama_cpp.Llama(str(models_dir / A), n_ctx=16, verbose=False)
    yield model
    model.close()


def scheduler_for(llm, parallel: int, reuse: bool, cache: PromptCache | None):
    return BatchScheduler(
        llm,
        name="tiny",
        parallel=parallel,
        n_ctx_seq=512,
        stats=BatchStats(),
        reuse=reuse,
        prompts=cache,
    )


def test_restore_rule_and_what_is_worth_keeping():
    assert should_restore(kept_common=100, slot_common=0, state_tokens=100)
    assert not should_restore(kept_common=10, slot_common=10, state_tokens=10)  # no gain
    assert not should_restore(kept_common=2, slot_common=1, state_tokens=2000)  # too big a copy
    assert should_restore(kept_common=300, slot_common=5, state_tokens=2000)
    assert worth_keeping(64) and not worth_keeping(3)


def test_prompt_cache_is_lru_bounded_by_bytes_and_keeps_the_longest_of_a_conversation():
    cache = PromptCache(capacity=30)
    assert cache.keep((1, 2, 3), bytearray(10)) == []
    assert cache.keep((1, 2, 3, 4, 5), bytearray(12)) == []  # replaces (1, 2, 3)
    assert [e.tokens for e in cache.entries()] == [(1, 2, 3, 4, 5)]
    assert cache.keep((1, 2), bytearray(5)) == []  # held by (1, 2, 3, 4, 5) already
    cache.keep((7, 8), bytearray(10))
    entry, common = cache.best([1, 2, 3, 4, 5, 6])
    assert entry.tokens == (1, 2, 3, 4, 5) and common == 5
    assert cache.best([1, 2, 3, 4, 5]) == (entry, 4)  # its last token is evaluated
    cache.used(entry, 5)  # most recently used now: (7, 8) goes first
    dropped = cache.keep((9, 9, 9), bytearray(10))
    assert [e.tokens for e in dropped] == [(7, 8)]
    assert cache.bytes_in_memory == 22 and cache.restored_tokens == 5
    assert cache.keep((4,), bytearray(31)) == []  # bigger than the whole cache


def test_a_state_on_disk_costs_no_memory_and_stays_known_when_memory_is_short(tmp_path):
    cache = PromptCache(capacity=20)
    cache.index((1, 2, 3), 15, tmp_path / "x")
    assert cache.bytes_in_memory == 0
    entry, _ = cache.best([1, 2, 3, 4])
    cache.loaded(entry, bytearray(15))
    assert cache.bytes_in_memory == 15
    cache.keep((5, 6), bytearray(10))  # the disk entry's memory copy goes, the entry stays
    assert entry.data is None and entry in cache.entries()


def test_a_kept_prompt_is_restored_after_its_cells_were_reused(llm):
    """Two slots; a conversation's first turn, then two unrelated prompts take both slots'
    cells; its second turn restores the first turn's state from host memory and evaluates
    only the new tokens, sampling what a scheduler without reuse samples."""
    cache = PromptCache(capacity=64 * 1024 * 1024)
    reusing = scheduler_for(llm, 2, True, cache)
    plain = scheduler_for(llm, 2, False, None)
    try:
        first = tokens(llm, "Once upon a time in a land far away there lived a")
        (answer,), _ = generate(reusing, [first], 16, GREEDY)
        others = [tokens(llm, f"Unrelated question {i}: what is") for i in range(2)]
        generate(reusing, others, 4, GREEDY)
        generate(reusing, [others[0][:3] + tokens(llm, " something else")[1:]], 4, GREEDY)
        assert cache.entries(), "the first turn's cells were kept in host memory"
        second = first + answer + tokens(llm, " who said")[1:]
        before, saved = cache.restored, cache.restored_tokens
        (got,), (reused,) = generate(reusing, [second], 12, GREEDY)
        (expected,), _ = generate(plain, [second], 12, GREEDY)
        assert got == expected
        assert reused == len(first) + len(answer) - 1  # everything but the new text
        assert cache.restored == before + 1 and cache.restored_tokens == saved + reused
        assert reusing.reused_tokens < reusing.prompt_tokens
    finally:
        reusing.close()
        plain.close()


@pytest.mark.parametrize("sampling", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_many_conversations_on_few_slots_answer_as_without_reuse(llm, sampling):
    """Five conversations over two slots, three turns each, all turns of a round at once:
    slots swap, keep and restore states while others decode; the texts never change."""
    cache = PromptCache(capacity=64 * 1024 * 1024)
    reusing = scheduler_for(llm, 2, True, cache)
    plain = scheduler_for(llm, 2, False, None)
    try:
        prompts = [tokens(llm, f"Conversation {i} is about the colour of a") for i in range(5)]
        for _ in range(3):
            got, reused = generate(reusing, prompts, 8, sampling)
            expected, _ = generate(plain, prompts, 8, sampling)
            assert got == expected
            prompts = [p + a + tokens(llm, " and")[1:] for p, a in zip(prompts, got, strict=True)]
        assert cache.restored > 0
        assert reusing.reused_tokens > 0
    finally:
        reusing.close()
        plain.close()


def test_a_prompt_sharing_a_running_sequences_prefix_starts_from_a_copy_of_its_cells(llm):
    """A long shared system prompt: the second request arrives while the first one still
    generates, and starts from a copy of the first one's cells (llama_memory_seq_cp) instead
    of evaluating the shared part; both texts are what they are without reuse."""
    system = tokens(llm, " ".join(f"rule {i} says be kind" for i in range(12)))
    prompts = [system + tokens(llm, f" question {q}: why")[1:] for q in range(2)]
    reusing = scheduler_for(llm, 2, True, PromptCache(0))
    plain = scheduler_for(llm, 2, False, None)
    try:
        first = reusing.reserve()
        reusing.start(first, prompts[0], 64, GREEDY)
        assert isinstance(first.out.get(timeout=60), int)  # generating now
        (got,), (reused,) = generate(reusing, [prompts[1]], 12, GREEDY)
        reusing.release(first)
        (expected,), _ = generate(plain, [prompts[1]], 12, GREEDY)
        assert got == expected
        assert reused >= len(system) - 1 and reusing._kept.copied == 1
    finally:
        reusing.close()
        plain.close()


def test_kv_settings_take_sizes_and_default_inside_the_budget():
    from inference_worker.config import WorkerSettings
    from model_swap.settings import SettingsError

    defaults = WorkerSettings.from_env({})
    assert defaults.kv_cache_bytes == 256 * 2**20 and defaults.kv_disk_bytes == 2**30
    chosen = WorkerSettings.from_env({"KV_CACHE_BYTES": "64MiB", "KV_DISK_BYTES": "0"})
    assert chosen.kv_cache_bytes == 64 * 2**20 and chosen.kv_disk_bytes == 0
    with pytest.raises(SettingsError, match="KV_CACHE_BYTES"):
        WorkerSettings.from_env({"KV_CACHE_BYTES": "lots"})
