"""Resuming a generation from the tokens of another run's steps (mid-stream failover):
the real default model, cut at several points, must finish with the text of the
uninterrupted run and never repeat or drop a delta."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from meshp2p.inference._engine import Delta, Engine, Finish, Step
from meshp2p.inference._models import ModelStore
from meshp2p.inference._worker_child import load_model

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
ASKED = [{"role": "user", "content": "What is the weather in Oslo?"}]
CALLED = [
    *ASKED,
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 C"},
    {"role": "user", "content": "And the weather in Bergen?"},
]

CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "greedy completion": (
        "completion",
        {"prompt": "Once upon a time", "max_tokens": 40, "temperature": 0},
    ),
    "seeded completion": (
        "completion",
        {"prompt": "A story:", "max_tokens": 40, "temperature": 1.0, "seed": 42},
    ),
    "greedy chat": (
        "chat",
        {
            "messages": [{"role": "user", "content": "Name three rivers of Europe."}],
            "max_tokens": 40,
            "temperature": 0,
        },
    ),
    "seeded chat with a penalty": (
        "chat",
        {
            "messages": [{"role": "user", "content": "Tell me about the sea."}],
            "max_tokens": 40,
            "temperature": 0.9,
            "seed": 7,
            "frequency_penalty": 0.5,
        },
    ),
    "tool call begun freely": (
        "chat",
        {"messages": CALLED, "tools": [WEATHER], "max_tokens": 60, "temperature": 0},
    ),
    "forced tool call": (
        "chat",
        {"messages": ASKED, "tools": [WEATHER], "tool_choice": "required", "temperature": 0},
    ),
}


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    """Loaded as a worker loads it, so its batches are exact: the first run may decode
    speculatively (greedy) and the replay in batches, yet the texts must be equal.
    (A model loaded otherwise may turn a near tie: its resumed answers are not exact.)"""
    path: Path = ModelStore(tmp_path_factory.mktemp("home")).ensure_default().path
    return Engine(load_model(str(path), threads=1, ctx_size=2048))


def events(engine: Engine, endpoint: str, params: dict[str, Any], replay: list[int]) -> list[Any]:
    prepared = engine.prepare(endpoint, params)
    return list(engine.generate(prepared, threading.Event(), replay=replay, steps=True))


def same_end(a: Finish, b: Finish) -> bool:
    """Equal but for the tool calls' ids, which are drawn afresh for every answer."""
    calls = [(c.name, c.arguments) for c in a.tool_calls]
    return calls == [(c.name, c.arguments) for c in b.tool_calls] and (
        a.reason,
        a.prompt_tokens,
        a.completion_tokens,
        a.text,
        a.stop_sequence,
    ) == (b.reason, b.prompt_tokens, b.completion_tokens, b.text, b.stop_sequence)


def text(deltas: list[Any]) -> str:
    return "".join(d.text for d in deltas if isinstance(d, Delta))


@pytest.mark.parametrize("case", list(CASES))
def test_a_resumed_answer_goes_on_exactly_where_the_first_broke_off(
    engine: Engine, case: str
) -> None:
    endpoint, params = CASES[case]
    whole = events(engine, endpoint, params, [])
    finish = whole[-1]
    assert isinstance(finish, Finish)
    steps = [i for i, e in enumerate(whole) if isinstance(e, Step)]
    # The token that completes a stop string is counted, and ends the answer: no step.
    assert finish.completion_tokens - 1 <= len(steps) <= finish.completion_tokens
    tokens = [whole[i].token for i in steps]
    for cut in sorted({1, len(steps) // 3, len(steps) // 2, len(steps) - 1}):
        if not 0 < cut < len(steps):
            continue
        # What a requester has passed on when the host dies after step `cut`.
        delivered = whole[: steps[cut - 1] + 1]
        resumed = events(engine, endpoint, params, tokens[:cut])
        assert not any(isinstance(e, Step) and e.token < 0 for e in resumed)
        assert [e.token for e in resumed if isinstance(e, Step)] == tokens[cut:], (case, cut)
        assert text(delivered) + text(resumed) == text(whole), (case, cut)
        assert same_end(resumed[-1], finish), (case, cut)


def test_replay_without_steps_yields_only_what_comes_after(engine: Engine) -> None:
    endpoint, params = CASES["greedy completion"]
    whole = events(engine, endpoint, params, [])
    tokens = [e.token for e in whole if isinstance(e, Step)]
    prepared = engine.prepare(endpoint, params)
    resumed = list(engine.generate(prepared, threading.Event(), replay=tokens[:5]))
    assert not any(isinstance(e, Step) for e in resumed)
    assert text(resumed) == text(whole)[len(text(whole)) - len(text(resumed)) :]
