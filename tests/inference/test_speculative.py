"""Speculative decoding: the proposers and the draft policy as pure code, then the engine
on the real default model (text with speculation equals text without) and on a
synthetic target/draft pair written with gguf's writer (the draft-model path)."""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Any

import llama_cpp
import pytest
from synthetic_gguf import vocabulary, write_model

from meshp2p._errors import WorkerError
from meshp2p.inference._engine import Engine, Finish
from meshp2p.inference._models import ModelStore
from meshp2p.inference._speculative import (
    DRAFT_MAX,
    DRAFT_START,
    MIN_ACCEPTANCE,
    TILED_MM_ENV,
    DraftModelProposer,
    DraftPolicy,
    NgramProposer,
    SpeculationStats,
    batches_exact,
    check_vocabularies,
    decode_tokens,
    exact_batch,
    tiled_matmul_off,
)
from meshp2p.inference._worker_child import load_model

CODE = "\n".join(f"def f{i}(x):\n    return x * {i} + {i * i}  # step {i}" for i in range(10))
COPY_PROMPT = f"Rewrite this code, renaming f7 to g7:\n\n{CODE}\n\nRewritten:\n\n"
JSON_PROMPT = '{"name": "Ada", "age": 36, "city": "London"}\nThe same JSON with age 37:\n'
# "def fib(n):": its 42nd greedy token is a near tie ("elif" leads "else" by 0.066),
# which a model loaded with inexact batches turns the other way; the worker's are exact.
FREE_PROMPTS = ["The capital of France is", "Once upon a time", "def fib(n):"]


# -- the n-gram proposer ---------------------------------------------------------------


def test_ngram_proposes_what_followed_the_latest_longest_suffix() -> None:
    proposer = NgramProposer(max_n=3, min_n=2)
    # "1 2" occurs twice before the end; the latest occurrence is followed by 9 8.
    text = [1, 2, 3, 4, 1, 2, 9, 8, 7, 5, 1, 2]
    assert proposer.propose(text, 3) == [9, 8, 7]
    # A longer suffix wins over a later shorter one: "5 1 2" ... was never seen, but
    # "7 5" then "1 2" are; extend the text so "9 8" repeats with its follower.
    assert proposer.propose([*text, 9, 8], 2) == [7, 5]


def test_ngram_proposes_nothing_without_a_match_or_room() -> None:
    proposer = NgramProposer(max_n=4, min_n=2)
    assert proposer.propose([1, 2, 3, 4, 5], 4) == []
    assert proposer.propose([1, 2, 1, 2], 0) == []
    # A single repeated token is not enough with min_n=2.
    assert proposer.propose([7, 1, 2, 7], 3) == []


def test_ngram_index_follows_growth_and_restarts_on_another_text() -> None:
    proposer = NgramProposer(max_n=2, min_n=2)
    assert proposer.propose([5, 6, 7, 5, 6], 2) == [7, 5]
    assert proposer.propose([5, 6, 7, 5, 6, 8, 5, 6], 1) == [8]  # the latest occurrence
    assert proposer.propose([1, 2, 3, 1, 2], 1) == [3]  # another text: no stale entries


def test_ngram_lengths_are_checked() -> None:
    with pytest.raises(ValueError, match="n-gram lengths"):
        NgramProposer(max_n=1, min_n=2)


# -- the draft policy -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "off"),
    [
        (None, False),
        ("0", True),
        (" 0", True),
        ("00", True),
        ("abc", True),
        ("1", False),
        ("2x", False),
    ],
)
def test_the_tiled_product_switch_is_read_as_ggml_reads_it(
    monkeypatch: pytest.MonkeyPatch, value: str | None, off: bool
) -> None:
    """ggml: ``env == NULL || atoi(env) != 0`` keeps its tiled K-quant product on."""
    if value is None:
        monkeypatch.delenv(TILED_MM_ENV, raising=False)
    else:
        monkeypatch.setenv(TILED_MM_ENV, value)
    assert tiled_matmul_off() is off


def test_draft_length_grows_on_acceptance_and_shrinks_on_rejection() -> None:
    policy = DraftPolicy()
    assert policy.next() == DRAFT_START
    policy.record_draft(DRAFT_START, DRAFT_START)
    assert policy.next() == 2 * DRAFT_START
    for _ in range(10):
        policy.record_draft(policy.k, policy.k)
    assert policy.next() == DRAFT_MAX
    policy.record_draft(DRAFT_MAX, 12)  # most held: no pause, a shorter draft
    assert policy.next() == 13


def test_drafting_pauses_while_too_few_guesses_hold_and_retries() -> None:
    policy = DraftPolicy()
    policy.record_draft(4, 1)  # a quarter held: below MIN_ACCEPTANCE
    pauses = 0
    while policy.next() == 0:
        pauses += 1
    assert pauses == 8
    policy.record_draft(4, 0)
    pauses = 0
    while policy.next() == 0:
        pauses += 1
    assert pauses == 16  # longer each time
    policy.begin()  # a new request is given a chance at once
    assert policy.next() == DRAFT_START


def test_drafting_that_pays_is_not_paused() -> None:
    policy = DraftPolicy()
    policy.record_draft(4, 4)
    policy.record_draft(8, 5)
    assert policy.acceptance is not None and policy.acceptance >= MIN_ACCEPTANCE
    assert policy.next() > 0


# -- the default model -----------------------------------------------------------------


@pytest.fixture(scope="module")
def gemma_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ModelStore(tmp_path_factory.mktemp("home")).ensure_default().path


@pytest.fixture(scope="module")
def gemma(gemma_path: Path) -> Any:
    """Loaded as a worker loads it: exact batches."""
    return load_model(str(gemma_path), threads=1, ctx_size=1024)


@pytest.mark.parametrize("context", [40, 120, None])
def test_a_worker_model_decodes_a_batch_as_it_decodes_tokens_one_by_one(
    gemma: Any, context: int | None
) -> None:
    """At several cache lengths, as many tokens as a verification may hold: with the
    tiled K-quant product on, a batch of 8 differed after 60 tokens of context but
    not after 40."""
    assert batches_exact(gemma)
    k = exact_batch(gemma)
    tokens = gemma.tokenize(("\n".join([CODE, JSON_PROMPT, CODE])).encode(), add_bos=True)
    assert len(tokens) > 200  # the plain attention path differs past ~64 tokens
    tokens = tokens[:context]
    head, tail = tokens[:-k], tokens[-k:]
    gemma.reset()
    gemma.eval(head)
    one_by_one = []
    for token in tail:
        gemma.eval([token])
        one_by_one.append(list(gemma._ctx.get_logits_ith(-1)[: gemma.n_vocab()]))
    gemma.reset()
    gemma.eval(head)
    gemma._batch.set_batch(batch=tail, n_past=gemma.n_tokens, logits_all=True)
    gemma._ctx.decode(gemma._batch)
    batched = [list(gemma._ctx.get_logits_ith(i)[: gemma.n_vocab()]) for i in range(len(tail))]
    assert batched == one_by_one  # bit for bit


def test_greedy_text_at_a_near_tie_deep_in_a_copy_is_the_same(gemma: Any) -> None:
    """bench_spec's Python file: 80 tokens in, plain decoding writes `count: int = 0`
    by a margin of 0.047; a verification batch of 8 or more tokens wrote `1`."""
    spec = importlib.util.spec_from_file_location(
        "bench_spec", Path(__file__).parents[1] / "bench" / "bench_spec.py"
    )
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    on, off = Engine(gemma), Engine(gemma, speculative=False)
    params = {"prompt": bench.PROMPTS["copy"][0], "max_tokens": 96, "temperature": 0}
    plain = finish(off, params)
    fast = finish(on, params)
    assert "count: int = 0" in plain.text
    assert fast.text == plain.text
    assert on.speculation.accepted > 48


def test_a_greedy_request_answers_the_same_whether_its_prompt_was_cached_or_not(
    gemma: Any,
) -> None:
    """bench_spec's Python file (a prompt of several hundred tokens): evaluated in one
    batch with its last token, a fresh prompt wrote `count: int = 1` where the same
    request with its prompt cached wrote `0`. Speculative or not, fresh or cached,
    one text."""
    spec = importlib.util.spec_from_file_location(
        "bench_spec", Path(__file__).parents[1] / "bench" / "bench_spec.py"
    )
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    params = {"prompt": bench.PROMPTS["copy"][0], "max_tokens": 96, "temperature": 0}
    texts = []
    for speculative in (False, False, True, True):
        engine = Engine(gemma, speculative=speculative)
        prepared = engine.prepare("completion", params)
        if len(texts) % 2 == 0:
            gemma.reset()  # fresh; the next run finds the prompt cached
        events = list(engine.generate(prepared, threading.Event()))
        assert isinstance(events[-1], Finish)
        texts.append(events[-1].text)
    assert "count: int = 0" in texts[0]
    assert texts == [texts[0]] * 4


def test_a_model_loaded_plainly_is_not_taken_as_exact(gemma_path: Path) -> None:
    plain = llama_cpp.Llama(model_path=str(gemma_path), n_ctx=512, n_threads=1, verbose=False)
    assert not batches_exact(plain)
    # The near-tie guard keeps its greedy text where the free prompts go.
    on, off = Engine(plain), Engine(plain, speculative=False)
    params = {"prompt": "def fibonacci(n):", "max_tokens": 48, "temperature": 0}
    assert finish(on, params).text == finish(off, params).text


def finish(engine: Engine, params: dict[str, Any]) -> Finish:
    prepared = engine.prepare("completion", params)
    engine.llama.reset()
    events = list(engine.generate(prepared, threading.Event()))
    last = events[-1]
    assert isinstance(last, Finish)
    return last


@pytest.mark.parametrize("prompt", [COPY_PROMPT, JSON_PROMPT, *FREE_PROMPTS])
def test_greedy_text_is_the_same_with_and_without_speculation(gemma: Any, prompt: str) -> None:
    on, off = Engine(gemma), Engine(gemma, speculative=False)
    params = {"prompt": prompt, "max_tokens": 48, "temperature": 0}
    plain = finish(off, params)
    fast = finish(on, params)
    assert fast.text == plain.text
    assert fast.completion_tokens == plain.completion_tokens
    assert off.speculation.drafted == 0


def test_copy_heavy_prompts_accept_most_guesses(gemma: Any) -> None:
    engine = Engine(gemma)
    done = finish(engine, {"prompt": COPY_PROMPT, "max_tokens": 64, "temperature": 0})
    stats = engine.speculation
    assert stats.drafted > 0
    assert stats.accepted >= stats.drafted // 2
    # Each verification is one decode for several tokens.
    assert stats.verifications * 2 <= done.completion_tokens


def test_seeded_sampling_gives_the_same_text_and_decodes_plainly(gemma: Any) -> None:
    on, off = Engine(gemma), Engine(gemma, speculative=False)
    params = {"prompt": COPY_PROMPT, "max_tokens": 32, "temperature": 0.8, "seed": 7}
    assert finish(on, params).text == finish(off, params).text
    assert on.speculation.drafted == 0


def test_unseeded_sampling_is_speculative(gemma: Any) -> None:
    engine = Engine(gemma)
    finish(engine, {"prompt": COPY_PROMPT, "max_tokens": 32, "temperature": 0.3})
    assert engine.speculation.drafted > 0


def test_decoding_without_a_proposer_is_llama_cpp_pythons_generate(gemma: Any) -> None:
    tokens = gemma.tokenize(b"Once upon a time", add_bos=True)
    sampling = {"temp": 0.0, "top_p": 0.95, "top_k": 40, "min_p": 0.05}
    gemma.reset()
    reference = gemma.generate(tokens, **sampling)
    expected = [next(reference) for _ in range(16)]
    reference.close()
    gemma.reset()
    ours = decode_tokens(gemma, tokens, sampling, None, None, None, SpeculationStats())
    assert [next(ours) for _ in range(16)] == expected
    ours.close()


# -- a synthetic target and draft ------------------------------------------------------


def _load(path: Path) -> Any:
    return llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=1, verbose=False)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """A target and a draft file with the same vocabulary and weights: the draft's
    greedy guesses are the target's own, up to the last bits of a batch."""
    folder = tmp_path_factory.mktemp("synthetic")
    target = write_model(folder / "target.gguf", seed=1)
    draft = write_model(folder / "draft.gguf", seed=1)
    return _load(target), _load(draft)


def test_a_draft_with_another_vocabulary_is_refused(pair: tuple[Any, Any], tmp_path: Path) -> None:
    target, _ = pair
    other = _load(write_model(tmp_path / "other.gguf", seed=2, tokens=vocabulary("zebra")))
    with pytest.raises(WorkerError, match=r"token 270 is .*zebra.* a draft model must share"):
        check_vocabularies(target, other)
    bigger = _load(write_model(tmp_path / "bigger.gguf", seed=2, extra_tokens=3))
    with pytest.raises(WorkerError, match="vocabulary has 274 tokens, the model's 271"):
        check_vocabularies(target, bigger)


def test_a_draft_with_the_same_vocabulary_is_accepted(pair: tuple[Any, Any]) -> None:
    check_vocabularies(*pair)


def test_draft_model_guesses_are_its_greedy_continuation(pair: tuple[Any, Any]) -> None:
    _, draft = pair
    text = [1, 259, 260, 261]
    draft.reset()
    reference = draft.generate(text, temp=0.0)
    expected = [next(reference) for _ in range(5)]
    reference.close()
    proposer = DraftModelProposer(draft)
    assert proposer.propose(text, 5) == expected
    # Later calls evaluate only what is new, and give the same answers.
    assert proposer.propose([*text, expected[0]], 4) == expected[1:]


def test_draft_model_speculation_gives_the_plain_text(pair: tuple[Any, Any]) -> None:
    target, draft = pair
    prompt = [1, 259, 260, 261, 262, 263]
    on = Engine(target, draft=draft)
    off = Engine(target, speculative=False)
    params = {"prompt": prompt, "max_tokens": 40, "temperature": 0}
    assert finish(on, params).text == finish(off, params).text
    # Random weights leave many near ties, which the guard evaluates alone: some held.
    assert on.speculation.drafted > 0
    assert on.speculation.accepted > 0


def test_greedy_with_a_logit_bias_speculates_and_gives_the_plain_text(gemma: Any) -> None:
    on, off = Engine(gemma), Engine(gemma, speculative=False)
    # Ban gemma's end of text and end of turn, as the split benchmark does.
    params = {
        "prompt": JSON_PROMPT,
        "max_tokens": 40,
        "temperature": 0,
        "logit_bias": {"1": -100, "106": -100},
    }
    assert finish(on, params).text == finish(off, params).text
    assert on.speculation.drafted > 0


def test_a_request_can_turn_speculation_off(gemma: Any) -> None:
    engine = Engine(gemma)
    prepared = engine.prepare(
        "completion", {"prompt": COPY_PROMPT, "max_tokens": 24, "temperature": 0}
    )
    gemma.reset()
    list(engine.generate(prepared, threading.Event(), speculative=False))
    assert engine.speculation.drafted == 0


def test_ngram_follows_the_copy_it_guessed_from() -> None:
    # Three similar blocks "7 1 N", then the answer copying them from the first.
    prompt = [7, 1, 10, 7, 1, 11, 7, 1, 12, 9]
    proposer = NgramProposer(max_n=2, min_n=2)
    text = [*prompt, 7, 1, 10]
    assert proposer.propose(text, 3) == [7, 1, 11]
    text += [7, 1, 11, 7, 1]
    # The copy goes on with block 3; the latest "7 1" (in the answer) would say 11.
    assert proposer.propose(text, 2) == [12, 9]
    assert NgramProposer(max_n=2, min_n=2).propose(text, 2) == [11, 7]
    # Once the answer leaves the copy, the index decides again.
    text += [5, 7, 1]
    assert proposer.propose(text, 1) == [5]
