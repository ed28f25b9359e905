"""Tests of the generation loop on the real default model and llama-cpp-python (no mocks)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import llama_cpp
import pytest
from conftest import with_chat_template

from meshp2p.api._openai import ApiError
from meshp2p.inference._engine import Cancelled, Delta, Engine, Finish, PreparedRequest
from meshp2p.inference._models import ModelStore

PROMPTS = ["The capital of France is", "Once upon a time", "def fib(n):"]
MAX_TOKENS = 12


def _load(path: Path, n_ctx: int) -> Any:
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=1, verbose=False)


@pytest.fixture(scope="module")
def gemma_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ModelStore(tmp_path_factory.mktemp("home")).ensure_default().path


@pytest.fixture(scope="module")
def llama(gemma_path: Path) -> Any:
    return _load(gemma_path, 2048)


@pytest.fixture(scope="module")
def engine(llama: Any) -> Engine:
    return Engine(llama)


@pytest.fixture(scope="module")
def small_engine(gemma_path: Path) -> Engine:
    """A 256-token context, so that filling it stays fast on one thread."""
    return Engine(_load(gemma_path, 256))


def run(
    engine: Engine, endpoint: str, params: dict[str, Any], cancel: threading.Event | None = None
) -> tuple[PreparedRequest, list[Delta], Finish]:
    """Prepare and generate from a fresh model state (no prefix-cache reuse)."""
    prepared = engine.prepare(endpoint, params)
    engine.llama.reset()
    events = list(engine.generate(prepared, cancel or threading.Event()))
    *deltas, finish = events
    assert all(isinstance(d, Delta) for d in deltas)
    assert isinstance(finish, Finish)
    return prepared, deltas, finish  # type: ignore[return-value]


def greedy(prompt: str | list[int], max_tokens: int = MAX_TOKENS, **extra: Any) -> dict[str, Any]:
    return {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **extra}


@pytest.fixture(scope="module")
def greedy_runs(engine: Engine) -> dict[str, tuple[dict[str, Any], list[Delta], Finish]]:
    """Per prompt: llama-cpp-python's own greedy completion, and the engine's events."""
    runs = {}
    for prompt in PROMPTS:
        engine.llama.reset()
        reference = engine.llama.create_completion(prompt, max_tokens=MAX_TOKENS, temperature=0)
        _, deltas, finish = run(engine, "completion", greedy(prompt))
        runs[prompt] = (reference, deltas, finish)
    return runs


def test_greedy_text_matches_llama_cpp_python(greedy_runs: dict[str, Any]) -> None:
    for prompt, (reference, _, finish) in greedy_runs.items():
        assert finish.text == reference["choices"][0]["text"], prompt
        assert finish.reason == reference["choices"][0]["finish_reason"], prompt


def test_usage_matches_llama_cpp_python(greedy_runs: dict[str, Any]) -> None:
    for prompt, (reference, _, finish) in greedy_runs.items():
        assert finish.prompt_tokens == reference["usage"]["prompt_tokens"], prompt
        assert finish.completion_tokens == reference["usage"]["completion_tokens"], prompt


def test_deltas_concatenate_to_the_finished_text(greedy_runs: dict[str, Any]) -> None:
    for prompt, (_, deltas, finish) in greedy_runs.items():
        assert len(deltas) > 1, prompt  # streamed token by token, not in one piece
        assert "".join(d.text for d in deltas) == finish.text, prompt
        assert all(d.text for d in deltas), prompt


def test_length_finish_counts_exactly_max_tokens(greedy_runs: dict[str, Any]) -> None:
    finishes = [finish for _, _, finish in greedy_runs.values()]
    assert any(f.reason == "length" for f in finishes)
    for finish in finishes:
        if finish.reason == "length":
            assert finish.completion_tokens == MAX_TOKENS


def test_prompt_tokens_in_usage_is_the_prepared_prompt_length(engine: Engine) -> None:
    prepared, _, finish = run(engine, "completion", greedy("Once upon a time", max_tokens=2))
    assert finish.prompt_tokens == len(prepared.prompt_tokens)


@pytest.mark.parametrize("stop", ["country of France", "France", "capital", " of the"])
def test_stop_string_cuts_the_text_and_is_never_streamed(
    engine: Engine, greedy_runs: dict[str, Any], stop: str
) -> None:
    prompt = "The capital of France is"
    full = greedy_runs[prompt][2].text
    assert stop in full  # the greedy answer does reach the stop string
    _, deltas, finish = run(engine, "completion", greedy(prompt, stop=[stop]))
    expected = full[: full.index(stop)]
    assert finish.reason == "stop"
    assert finish.text == expected
    # Deltas are appended by the client, so nothing past the cut may ever be sent.
    assert "".join(d.text for d in deltas) == expected
    assert finish.completion_tokens < MAX_TOKENS


def test_earliest_of_several_stop_strings_wins(engine: Engine, greedy_runs: dict[str, Any]) -> None:
    prompt = "The capital of France is"
    full = greedy_runs[prompt][2].text
    _, deltas, finish = run(engine, "completion", greedy(prompt, stop=["France", "capital"]))
    assert finish.text == full[: full.index("capital")]
    assert "".join(d.text for d in deltas) == finish.text


def test_setting_cancel_stops_generation_before_the_next_token(engine: Engine) -> None:
    prepared = engine.prepare("completion", greedy("Once upon a time", max_tokens=200))
    engine.llama.reset()
    cancel = threading.Event()
    seen: list[Delta | Finish] = []
    events = engine.generate(prepared, cancel)
    with pytest.raises(Cancelled):
        for event in events:
            seen.append(event)
            if len(seen) == 3:
                cancel.set()
    assert len(seen) == 3
    assert all(isinstance(e, Delta) for e in seen)
    # The model evaluated only a handful of tokens past the prompt, not 200.
    assert engine.llama.n_tokens <= len(prepared.prompt_tokens) + 4


def test_cancel_set_before_the_first_token_yields_nothing(engine: Engine) -> None:
    prepared = engine.prepare("completion", greedy("Once upon a time", max_tokens=200))
    cancel = threading.Event()
    cancel.set()
    engine.llama.reset()
    events = engine.generate(prepared, cancel)
    with pytest.raises(Cancelled):
        next(events)


def test_model_is_usable_after_a_cancelled_generation(
    engine: Engine, greedy_runs: dict[str, Any]
) -> None:
    prepared = engine.prepare("completion", greedy("def fib(n):", max_tokens=50))
    cancel = threading.Event()
    with pytest.raises(Cancelled):
        for _ in engine.generate(prepared, cancel):
            cancel.set()
    _, _, finish = run(engine, "completion", greedy("Once upon a time"))
    assert finish.text == greedy_runs["Once upon a time"][2].text


def test_prompt_longer_than_the_context_is_rejected(engine: Engine) -> None:
    with pytest.raises(ApiError) as info:
        engine.prepare("completion", greedy("hello world " * 2000))
    error = info.value
    assert (error.status, error.code, error.param) == (400, "context_length_exceeded", "prompt")
    assert "2048" in error.message


def test_token_prompt_filling_the_whole_context_is_rejected(engine: Engine) -> None:
    with pytest.raises(ApiError) as info:
        engine.prepare("completion", greedy([engine.llama.token_bos()] + [1000] * 2047))
    assert (info.value.status, info.value.code) == (400, "context_length_exceeded")


def test_chat_longer_than_the_context_is_rejected_naming_messages(engine: Engine) -> None:
    messages = [{"role": "user", "content": "hello world " * 2000}]
    with pytest.raises(ApiError) as info:
        engine.prepare("chat", {"messages": messages})
    error = info.value
    assert (error.status, error.code, error.param) == (400, "context_length_exceeded", "messages")


def test_max_tokens_larger_than_the_room_left_is_clamped(small_engine: Engine) -> None:
    llama = small_engine.llama
    assert small_engine.n_ctx == 256
    tokens = llama.tokenize(b"hello world " * 200, add_bos=True, special=True)[:253]
    prepared, deltas, finish = run(small_engine, "completion", greedy(tokens, max_tokens=100))
    assert prepared.max_tokens == 3
    assert finish.completion_tokens <= 3
    assert finish.reason in ("length", "stop")
    assert "".join(d.text for d in deltas) == finish.text


def test_no_max_tokens_and_no_default_means_the_rest_of_the_context(small_engine: Engine) -> None:
    prepared = small_engine.prepare("chat", {"messages": [{"role": "user", "content": "hi"}]})
    assert small_engine.default_max_tokens == 0
    assert prepared.max_tokens == 256 - len(prepared.prompt_tokens)


def test_no_max_tokens_gets_the_default_cap(engine: Engine) -> None:
    capped = Engine(engine.llama, default_max_tokens=100)
    prepared = capped.prepare("completion", {"prompt": "Once upon a time"})
    assert prepared.max_tokens == 100
    # An explicit max_tokens is the client's to choose, above the default too.
    prepared = capped.prepare("completion", {"prompt": "Once upon a time", "max_tokens": 300})
    assert prepared.max_tokens == 300


def test_default_cap_never_exceeds_the_room_left(small_engine: Engine) -> None:
    capped = Engine(small_engine.llama, default_max_tokens=100_000)
    prepared = capped.prepare("chat", {"messages": [{"role": "user", "content": "hi"}]})
    assert prepared.max_tokens == 256 - len(prepared.prompt_tokens)


def test_prompt_longer_than_a_context_that_is_not_a_multiple_of_256_is_rejected(
    gemma_path: Path,
) -> None:
    engine = Engine(_load(gemma_path, 64))
    tokens = engine.llama.tokenize(b"hello world " * 100, add_bos=True, special=True)[:100]
    with pytest.raises(ApiError) as info:
        engine.prepare("completion", greedy(tokens))
    assert info.value.code == "context_length_exceeded"


def test_token_id_prompt_generates_like_the_same_text(
    engine: Engine, greedy_runs: dict[str, Any]
) -> None:
    prompt = "The capital of France is"
    tokens = engine.llama.tokenize(prompt.encode(), add_bos=True, special=True)
    prepared, _, finish = run(engine, "completion", greedy(tokens))
    assert prepared.prompt_tokens == tokens
    assert prompt in prepared.prompt_text
    assert finish.text == greedy_runs[prompt][2].text


@pytest.mark.parametrize("bad", [-1, 262144, 10**9])
def test_token_id_outside_the_vocabulary_is_rejected(engine: Engine, bad: int) -> None:
    assert engine.llama.n_vocab() == 262144
    with pytest.raises(ApiError) as info:
        engine.prepare("completion", greedy([engine.llama.token_bos(), 651, bad]))
    assert (info.value.status, info.value.param) == (400, "prompt")


def test_empty_token_prompt_is_rejected(engine: Engine) -> None:
    with pytest.raises(ApiError) as info:
        engine.prepare("completion", greedy([]))
    assert (info.value.status, info.value.param) == (400, "prompt")


def test_chat_without_a_template_uses_a_transcript(engine: Engine) -> None:
    assert engine.chat_template_source == "transcript"
    assert engine.tools_supported is False
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hi"},
        {"role": "assistant", "content": "Hi"},
        {"role": "user", "content": "Again"},
    ]
    prepared = engine.prepare("chat", {"messages": messages})
    assert prepared.prompt_text == (
        "<bos>Be brief.\n\nUser: Say hi\nAssistant: Hi\nUser: Again\nAssistant:"
    )


def test_transcript_turns_end_the_answer(engine: Engine) -> None:
    assert engine.turn_stop_strings == ["\nUser:", "\nAssistant:"]
    prepared = engine.prepare("chat", {"messages": [{"role": "user", "content": "hi"}]})
    assert {"\nUser:", "\nAssistant:"} <= set(prepared.stop)


def test_base_model_chat_ends_at_the_next_turn(engine: Engine) -> None:
    """The README's first chat: no max_tokens, and the base model ends its answer."""
    params = {"messages": [{"role": "user", "content": "hello"}], "temperature": 0}
    _, deltas, finish = run(engine, "chat", params)
    assert finish.reason == "stop"
    assert finish.completion_tokens < 50
    assert "User:" not in finish.text and "Assistant:" not in finish.text
    assert not finish.text.startswith(" ")  # the space after "Assistant:" is the format's
    assert "".join(d.text for d in deltas) == finish.text


def test_completions_have_no_turn_stops(engine: Engine) -> None:
    prepared = engine.prepare("completion", {"prompt": "User: hi\nAssistant:"})
    assert prepared.stop == [] and prepared.stop_tokens == frozenset()


def test_chat_prompt_has_exactly_one_bos_token(engine: Engine) -> None:
    prepared = engine.prepare("chat", {"messages": [{"role": "user", "content": "hi"}]})
    bos = engine.llama.token_bos()
    assert prepared.prompt_text.startswith("<bos>User: hi")
    assert prepared.prompt_tokens[0] == bos
    assert prepared.prompt_tokens.count(bos) == 1


def test_chat_generation_reports_prepared_prompt_tokens(engine: Engine) -> None:
    params = {"messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4}
    prepared, deltas, finish = run(engine, "chat", {**params, "temperature": 0})
    assert finish.prompt_tokens == len(prepared.prompt_tokens)
    assert 1 <= finish.completion_tokens <= 4
    assert "".join(d.text for d in deltas) == finish.text
    assert "<eos>" not in finish.text


def test_same_seed_samples_the_same_text(engine: Engine) -> None:
    params = {"prompt": "Once upon a time", "max_tokens": 8, "temperature": 1.0, "seed": 1234}
    first = run(engine, "completion", params)[2].text
    again = run(engine, "completion", params)[2].text
    assert first == again


def test_echo_streams_the_prompt_first(engine: Engine) -> None:
    _, deltas, _ = run(engine, "completion", greedy("Once upon a time", max_tokens=3, echo=True))
    assert deltas[0].text == "Once upon a time"


def test_echo_is_part_of_the_finished_text_like_llama_cpp_python(engine: Engine) -> None:
    prompt = "Once upon a time"
    engine.llama.reset()
    reference = engine.llama.create_completion(prompt, max_tokens=3, temperature=0, echo=True)
    _, deltas, finish = run(engine, "completion", greedy(prompt, max_tokens=3, echo=True))
    assert "".join(d.text for d in deltas) == finish.text
    assert finish.text == reference["choices"][0]["text"]


def test_a_seed_gives_the_same_text_whatever_the_cache_holds(engine: Engine) -> None:
    params = {"prompt": "A story:", "max_tokens": 12, "temperature": 1.0, "seed": 42}
    texts = []
    for _ in range(3):  # the first evaluates the prompt; the next could resume from the cache
        prepared = engine.prepare("completion", params)
        *_, finish = engine.generate(prepared, threading.Event())
        assert isinstance(finish, Finish)
        texts.append(finish.text)
    assert len(set(texts)) == 1, texts


# Gemma's instruction-tuned turn format: its markers are control tokens of the vocabulary.
GEMMA_TEMPLATE = """{{ bos_token }}{% for m in messages %}<start_of_turn>\
{{ 'model' if m['role'] == 'assistant' else 'user' }}
{{ m['content'] | trim }}<end_of_turn>
{% endfor %}{% if add_generation_prompt %}<start_of_turn>model
{% endif %}"""


@pytest.fixture(scope="module")
def gemma_turns(gemma_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Engine:
    """The default model with Gemma's turn template in its GGUF, as instruct models ship."""
    out = tmp_path_factory.mktemp("gemma-turns") / "gemma-turns.gguf"
    return Engine(_load(with_chat_template(gemma_path, out, GEMMA_TEMPLATE), 512))


def test_turn_markers_that_are_control_tokens_stop_generation(gemma_turns: Engine) -> None:
    llama = gemma_turns.llama
    start, end = (
        llama.tokenize(marker, add_bos=False, special=True)[0]
        for marker in (b"<start_of_turn>", b"<end_of_turn>")
    )
    assert gemma_turns.chat_template_source == "gguf"
    assert gemma_turns.turn_stop_tokens == {start, end}
    # <start_of_turn> is no end-of-generation token: only the turn stop ends the answer.
    assert not llama_cpp.llama_vocab_is_eog(llama._model.vocab, start)
    params = {
        "messages": [{"role": "user", "content": "hello"}],
        "temperature": 0,
        "max_tokens": 20,
        "logit_bias": {str(start): 100},
    }
    _, deltas, finish = run(gemma_turns, "chat", params)
    assert (finish.reason, finish.text, finish.completion_tokens) == ("stop", "", 0)
    assert deltas == []


def test_turn_markers_written_as_text_are_stop_strings(tool_model: Path) -> None:
    """A ChatML template over a vocabulary without ChatML tokens: the markers are text."""
    engine = Engine(_load(tool_model, 512))
    assert engine.turn_stop_tokens == frozenset()
    assert engine.turn_stop_strings == [
        "<|im_end|>",
        "\n<|im_start|>user",
        "\n<|im_start|>assistant",
    ]
