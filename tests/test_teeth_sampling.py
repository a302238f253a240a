"""The worker's sampler chain applied to hand-made logits: each request setting reaches
the chain with its value (temperature, top_p, seed, penalties), not only "a seed repeats".
llama.cpp's own samplers run on a candidates array; no model is needed, except for a
grammar (it needs a vocabulary: the tiny model's, through the batch scheduler)."""

from __future__ import annotations

import ctypes
import dataclasses
import re

import llama_cpp
import numpy as np
import pytest
from llama_cpp._internals import LlamaTokenDataArray

from inference_worker import sampling as chain_module
from inference_worker.batch import BatchScheduler, BatchStats
from inference_worker.lazy_grammar import trigger_start
from inference_worker.sampling import sampler_chain
from inference_worker.structured import TRIGGERS
from model_swap.generation import Sampling
from model_swap.tool_calls import GENERIC, LLAMA3
from tests.conftest import A

N_VOCAB = 16
# Four likely tokens (softmax over them: 0.57, 0.21, 0.13, 0.08), the rest out of reach.
TOP = [3.0, 2.0, 1.5, 1.0]
LOGITS = np.array(TOP + [-50.0] * (N_VOCAB - len(TOP)), dtype=np.single)


def apply(
    sampling: Sampling,
    history: tuple[int, ...] = (),
    draws: int = 1,
    logits=LOGITS,
    n_ctx: int = 0,
):
    """Run the chain over ``logits`` ``draws`` times (after accepting ``history``); the last
    draw's surviving candidates {id: logit} and every draw's chosen token."""
    n_vocab = len(logits)
    chain = sampler_chain(sampling, n_vocab, n_ctx=n_ctx)
    try:
        for token in history:
            llama_cpp.llama_sampler_accept(chain.chain.sampler, token)
        chosen = []
        for _ in range(draws):
            array = LlamaTokenDataArray(n_vocab=n_vocab)
            array.copy_logits(logits)
            llama_cpp.llama_sampler_apply(chain.chain.sampler, ctypes.byref(array.candidates))
            kept = array.candidates_data[: array.candidates.size]
            chosen.append(int(kept[array.candidates.selected].id))
        return {int(c.id): float(c.logit) for c in kept}, chosen
    finally:
        chain.close()


@pytest.mark.parametrize("temperature", [0.3, 0.8, 1.0, 2.0])
def test_the_requests_temperature_scales_the_logits(temperature):
    kept, _ = apply(Sampling(temperature=temperature, seed=1))
    assert sorted(kept) == [0, 1, 2, 3]
    for token, logit in kept.items():
        assert logit == pytest.approx(TOP[token] / temperature, rel=1e-5)


def test_no_temperature_is_llama_cpps_default():
    kept, _ = apply(Sampling(seed=1))
    assert chain_module.TEMPERATURE == 0.8
    assert kept[0] == pytest.approx(3.0 / 0.8, rel=1e-5)


def test_temperature_zero_is_greedy():
    kept, chosen = apply(Sampling(temperature=0.0, seed=5), draws=5)
    assert chosen == [0] * 5
    assert kept[0] == pytest.approx(3.0)  # nothing rescaled


@pytest.mark.parametrize(("top_p", "survivors"), [(0.5, [0]), (0.75, [0, 1]), (0.85, [0, 1, 2])])
def test_the_requests_top_p_keeps_the_smallest_set_over_it(top_p, survivors):
    kept, _ = apply(Sampling(temperature=1.0, top_p=top_p, seed=1))
    assert sorted(kept) == survivors


def test_no_top_p_is_0_95():
    # 0.57 + 0.21 + 0.13 = 0.91 < 0.95: all four stay (and min-p 0.05 keeps the 0.08 one).
    kept, _ = apply(Sampling(temperature=1.0, seed=1))
    assert sorted(kept) == [0, 1, 2, 3]


def test_the_seed_decides_the_draws():
    hot = Sampling(temperature=5.0, seed=1234)
    _, first = apply(hot, draws=40)
    _, again = apply(hot, draws=40)
    _, other = apply(Sampling(temperature=5.0, seed=99), draws=40)
    assert first == again
    assert first != other
    assert len(set(first)) > 1  # a hot draw really varies


def test_presence_and_frequency_penalties_use_their_values():
    sampling = Sampling(temperature=1.0, seed=1, presence_penalty=0.5, frequency_penalty=0.25)
    kept, _ = apply(sampling, history=(0, 0, 1))
    assert kept[0] == pytest.approx(3.0 - 0.5 - 2 * 0.25)
    assert kept[1] == pytest.approx(2.0 - 0.5 - 1 * 0.25)
    assert kept[2] == pytest.approx(1.5)


def test_no_seed_draws_at_random():
    """No seed is llama.cpp's "random seed": two requests without one draw differently."""
    _, first = apply(Sampling(temperature=5.0), draws=40)
    _, second = apply(Sampling(temperature=5.0), draws=40)
    assert set(first) <= {0, 1, 2, 3} and first != second


def logits(*top: float) -> np.ndarray:
    return np.array(list(top) + [-50.0] * (N_VOCAB - len(top)), dtype=np.single)


def test_min_p_cuts_tokens_far_below_the_best_and_may_keep_one():
    """min-p 0.05 keeps only the tokens at least 5% as likely as the best (top-p off)."""
    sampling = Sampling(temperature=1.0, top_p=1.0, seed=1)
    kept, _ = apply(sampling, logits=logits(10.0, 0.0, 7.5))
    assert sorted(kept) == [0, 2]  # e^-2.5 = 0.082 of the best stays, e^-10 goes
    kept, _ = apply(sampling, logits=logits(10.0, 0.0))
    assert sorted(kept) == [0]


# Ollama's other samplers (also accepted on /v1): each request value reaches its sampler,
# and an absent one is llama.cpp's default.
OPEN = Sampling(temperature=1.0, top_p=1.0, seed=1)  # top-p off; min-p 0.05 cuts the -50s
WIDE = np.linspace(3.0, 2.0, 64, dtype=np.single)  # 64 tokens, all within e^-1 of the best


@pytest.mark.parametrize(("top_k", "count"), [(None, 40), (1, 1), (2, 2), (50, 50), (0, 64)])
def test_top_k_keeps_the_requests_count_and_0_keeps_every_token(top_k, count):
    kept, _ = apply(dataclasses.replace(OPEN, top_k=top_k), logits=WIDE)
    assert sorted(kept) == list(range(count))


@pytest.mark.parametrize(
    ("typical_p", "survivors"), [(0.2, [1]), (0.5, [0, 1]), (None, [0, 1, 2, 3])]
)
def test_typical_p_keeps_the_tokens_closest_to_the_expected_surprise(typical_p, survivors):
    """Entropy 1.1 nats: token 1 (-ln 0.21 = 1.56) is nearer to it than token 0 (0.56)."""
    kept, _ = apply(dataclasses.replace(OPEN, typical_p=typical_p))
    assert sorted(kept) == survivors


def test_the_requests_min_p_replaces_the_default():
    # e^-0.5 = 0.61 and e^-1 = 0.37 of the best: min-p 0.5 cuts only the third.
    kept, _ = apply(
        Sampling(temperature=1.0, top_p=1.0, min_p=0.5, seed=1), logits=logits(10, 9.5, 9)
    )
    assert sorted(kept) == [0, 1]
    kept, _ = apply(Sampling(temperature=1.0, top_p=1.0, min_p=0.0, seed=1), logits=logits(10, 0))
    assert sorted(kept) == list(range(N_VOCAB))  # min-p 0 cuts nothing; 0.05 cuts e^-10


def test_repeat_penalty_divides_a_repeated_tokens_positive_logit():
    kept, _ = apply(dataclasses.replace(OPEN, repeat_penalty=2.0), history=(0,))
    assert kept == {0: pytest.approx(1.5), 1: 2.0, 2: 1.5, 3: 1.0}
    kept, _ = apply(OPEN, history=(0,))
    assert kept[0] == pytest.approx(3.0)  # the default 1.0: no penalty


@pytest.mark.parametrize(
    ("repeat_last_n", "n_ctx", "back", "penalized"),
    [
        (None, 0, 64, True),  # the default window: the last 64 tokens
        (None, 0, 65, False),
        (3, 0, 3, True),
        (3, 0, 4, False),
        (0, 0, 1, False),  # 0: off
        (-1, 100, 65, True),  # -1: the whole context
        (-1, 100, 100, True),
        (-1, 100, 101, False),
    ],
)
def test_repeat_last_n_is_how_far_back_penalties_look(repeat_last_n, n_ctx, back, penalized):
    """Token 2 was sampled ``back`` tokens ago (token 5, out of reach, since)."""
    sampling = dataclasses.replace(OPEN, presence_penalty=1.0, repeat_last_n=repeat_last_n)
    kept, _ = apply(sampling, history=(2,) + (5,) * (back - 1), n_ctx=n_ctx)
    assert kept[2] == pytest.approx(0.5 if penalized else 1.5)
    assert kept[0] == pytest.approx(3.0)


@pytest.mark.parametrize(
    ("mirostat", "tau", "survivors"),
    [(2, None, [0, 1, 2, 3]), (2, 0.5, [0]), (1, None, [0, 1]), (1, 0.5, [0])],
)
def test_mirostat_cuts_by_the_requests_target_surprise(mirostat, tau, survivors):
    """Mirostat 2.0 starts at mu = 2 tau bits: tau 5 keeps every token above 2^-10, tau 0.5
    only the one above 1/2; Mirostat (v1) estimates its cut from the distribution instead."""
    kept, _ = apply(dataclasses.replace(OPEN, mirostat=mirostat, mirostat_tau=tau))
    assert sorted(kept) == survivors


@pytest.mark.parametrize("mirostat", [1, 2])
def test_mirostat_samples_at_the_requests_temperature(mirostat):
    kept, _ = apply(Sampling(temperature=2.0, seed=1, mirostat=mirostat))
    for token, logit in kept.items():
        assert logit == pytest.approx(TOP[token] / 2.0)


@pytest.mark.parametrize(("eta", "survivors"), [(None, [0, 1]), (0.1, [0, 1]), (5.0, [0, 1, 2, 3])])
def test_mirostat_eta_is_how_fast_its_cut_follows_the_draws(eta, survivors):
    """After two draws mu has moved by eta x (surprise - tau): a fast rate opens the cut."""
    sampling = dataclasses.replace(OPEN, mirostat=2, mirostat_tau=1.5, mirostat_eta=eta)
    kept, _ = apply(sampling, draws=3)
    assert sorted(kept) == survivors


@pytest.mark.parametrize("mirostat", [1, 2])
def test_mirostat_draws_follow_the_seed(mirostat):
    hot = Sampling(temperature=5.0, seed=1234, mirostat=mirostat)
    _, first = apply(hot, draws=40)
    _, again = apply(hot, draws=40)
    _, other = apply(dataclasses.replace(hot, seed=99), draws=40)
    assert first == again
    assert first != other


# The grammar path (a real tiny model: a grammar needs the model's vocabulary), through the
# batch scheduler that owns each sequence's sampler.


@pytest.fixture
def llm(models_dir):
    model = llama_cpp.Llama(str(models_dir / A), n_ctx=16, verbose=False)
    yield model
    model.close()


def generate(llm, sampling: Sampling, max_tokens: int = 12) -> tuple[str, object]:
    scheduler = BatchScheduler(llm, name="tiny", parallel=1, n_ctx_seq=256, stats=BatchStats())
    try:
        seq = scheduler.reserve()
        prompt = llm.tokenize(b"request 0: hello world", add_bos=True, special=False)
        scheduler.start(seq, prompt, max_tokens, sampling)
        tokens = []
        while isinstance(item := seq.out.get(timeout=60), int):
            tokens.append(item)
        scheduler.release(seq)
    finally:
        scheduler.close()
    return llm.detokenize(tokens).decode("utf-8", "replace"), item


GRAMMAR = 'root ::= [ab]+ "."'


@pytest.mark.parametrize("sampling", [Sampling(temperature=0.0), Sampling(temperature=1.0, seed=3)])
def test_a_grammar_decides_every_sampled_token(llm, sampling):
    free, _ = generate(llm, sampling)
    assert not re.fullmatch(r"[ab]*\.?", free)  # the tiny model alone writes anything
    text, outcome = generate(llm, dataclasses.replace(sampling, grammar=GRAMMAR))
    assert outcome == "length"
    assert re.fullmatch(r"[ab]{12}", text)  # 12 tokens, each one the grammar allows


def test_a_lazy_grammar_waits_for_its_trigger(llm):
    free, _ = generate(llm, Sampling(temperature=0.0))
    never = Sampling(temperature=0.0, grammar=GRAMMAR, grammar_trigger=r"[\s\S]*?(NOT THERE)")
    assert generate(llm, never) == (free, "length")


def test_a_grammar_llama_cpp_cannot_parse_is_refused(llm):
    vocab = llm._model.vocab
    with pytest.raises(ValueError, match="could not parse the request's grammar"):
        sampler_chain(Sampling(grammar="root ::= ("), llm.n_vocab(), vocab=vocab)
    sampler_chain(Sampling(grammar=GRAMMAR), llm.n_vocab(), vocab=vocab).close()


# A lazy grammar's trigger fired by a token that runs on past it (issue 28: no request can
# crash a service). The tiny model greedily writes "`S`Sb hello worldd..."; a trigger on
# "h" fires inside its " hello" token and hands the grammar "hello".


def test_a_token_firing_the_trigger_into_text_the_grammar_refuses_is_drawn_again(llm):
    """Before: llama.cpp threw from llama_sampler_accept and the process aborted."""
    free, _ = generate(llm, Sampling(temperature=0.0))
    assert free.startswith("`S`Sb hello")
    refusing = Sampling(
        temperature=0.0, grammar='root ::= "h" [ab]+ "."', grammar_trigger=r"[\s\S]*?(h)[\s\S]*"
    )
    text, outcome = generate(llm, refusing)
    assert outcome == "length" and text.startswith("`S`Sb ") and "h" not in text


def test_a_trigger_the_grammar_takes_then_constrains_the_rest(llm):
    taking = Sampling(
        temperature=0.0,
        grammar='root ::= "hello" [ab]+',
        grammar_trigger=r"[\s\S]*?(h)[\s\S]*",
    )
    text, outcome = generate(llm, taking, max_tokens=10)
    assert outcome == "length"
    assert re.fullmatch(r"`S`Sb hello[ab]{4}", text)


@pytest.mark.parametrize(
    ("pattern", "text", "start"),
    [
        (rb"[\s\S]*?(<tool_call>)[\s\S]*", b"ok <tool_call>{", 3),
        (rb"\s*(\{)[\s\S]*", b"say {x", 4),  # not anchored: found anywhere, as llama.cpp does
        (rb"^\s*(\{)[\s\S]*$", b"  {x", 2),
        (rb"[\s\S]*?(NOT THERE)", b"nothing here", None),
        (rb"a(x?)b", b"zab", 1),  # an empty group: the whole match is handed over
    ],
)
def test_the_trigger_hands_over_from_its_first_non_empty_group(pattern, text, start):
    assert trigger_start(re.compile(pattern), text) == start


def test_an_anchored_trigger_fires_only_at_the_start_of_the_reply(llm):
    """The Llama 3.1 and generic tool formats start a call only with a reply opening with
    "{": their trigger is written ^...$, which llama.cpp matches against the whole reply
    (another pattern is looked for anywhere, as the unanchored twin shows on "h")."""
    free, _ = generate(llm, Sampling(temperature=0.0))
    grammar = 'root ::= "hello" [ab]+'
    anywhere = Sampling(temperature=0.0, grammar=grammar, grammar_trigger=r"\s*(h)[\s\S]*")
    assert re.fullmatch(r"`S`Sb hello[ab]{6}", generate(llm, anywhere)[0])
    at_start = Sampling(temperature=0.0, grammar=grammar, grammar_trigger=r"^\s*(h)[\s\S]*$")
    assert generate(llm, at_start)[0] == free
    assert TRIGGERS[GENERIC].startswith("^") and TRIGGERS[GENERIC].endswith("$")
    assert TRIGGERS[LLAMA3] == TRIGGERS[GENERIC]
