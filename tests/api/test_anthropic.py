"""The Messages API core: request validation into chat parameters, Anthropic's error
shape, and the answer's shapes (stream events in order, the message object). Pure."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshp2p.api import ApiError, parse_request
from meshp2p.api._anthropic import MessagesShaper
from meshp2p.api._shapes import Ending

USER = [{"role": "user", "content": "hi"}]
WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def parse(endpoint: str = "messages", **fields: Any) -> Any:
    body = {"model": "m", "max_tokens": 16, "messages": USER, **fields}
    return parse_request(endpoint, json.dumps(body).encode())  # type: ignore[arg-type]


def refusal(**fields: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        parse(**fields)
    assert info.value.status == 400 and "\n" not in info.value.message
    return info.value


def test_system_blocks_and_settings_become_chat_parameters() -> None:
    request = parse(
        system=[{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
        stop_sequences=["END"],
        temperature=0.3,
        top_k=5,
    )
    assert request.endpoint == "messages"
    assert request.params["messages"][0] == {"role": "system", "content": "Be brief.\n\nBe kind."}
    assert request.params["stop"] == ["END"]
    assert (request.params["top_k"], request.params["max_tokens"]) == (5, 16)
    assert request.params["shape"] == {"stop_sequences": ["END"]}


def test_tool_use_and_tool_result_blocks_become_calls_and_results() -> None:
    messages = [
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hm", "signature": "s"},
                {"type": "text", "text": "Looking."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "Oslo"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": [{"type": "text", "text": "Sunny"}],
                },
                {"type": "text", "text": "And tomorrow?", "cache_control": {"type": "ephemeral"}},
            ],
        },
    ]
    out = parse(messages=messages).params["messages"]
    assert out == [
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": "Looking.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "Sunny", "name": "get_weather"},
        {"role": "user", "content": "And tomorrow?"},
    ]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": 1.5}, "temperature"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages[0]"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
            "messages[0].content[0]",
        ),
        ({"stop_sequences": "END"}, "stop_sequences"),
        ({"tools": [{"name": "f"}]}, "tools"),
        ({"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "nope"}}, "tool_choice"),
        ({"tool_choice": {"type": "any"}}, "tool_choice"),
        ({"mcp_servers": [{"url": "x"}]}, "mcp_servers"),
    ],
)
def test_bad_fields_get_400_naming_them(fields: dict[str, Any], param: str) -> None:
    assert refusal(**fields).param == param


def test_errors_take_anthropics_shape() -> None:
    error = refusal(max_tokens=None)
    assert error.body("anthropic") == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "'max_tokens' is required"},
    }
    assert ApiError(404, "x").body("anthropic")["error"]["type"] == "not_found_error"
    assert ApiError(401, "x").body("anthropic")["error"]["type"] == "authentication_error"
    assert ApiError(413, "x").body("anthropic")["error"]["type"] == "request_too_large"
    assert ApiError(503, "x").body("anthropic")["error"]["type"] == "overloaded_error"


def test_custom_tools_are_kept_and_anthropics_own_are_named_as_ignored() -> None:
    request = parse(
        tools=[{"type": "web_search_20250305", "name": "web_search"}, WEATHER],
        tool_choice={"type": "any"},
        thinking={"type": "enabled", "budget_tokens": 1024},
        metadata={"user_id": "u"},
    )
    assert [t["function"]["name"] for t in request.params["tools"]] == ["get_weather"]
    assert request.params["tool_choice"] == "required"
    assert request.ignored == ("thinking", "tools[0]:web_search_20250305")


def test_a_token_count_needs_no_max_tokens() -> None:
    body = {"model": "m", "messages": USER, "system": "s", "tools": [WEATHER]}
    request = parse_request("count_tokens", json.dumps(body).encode())
    assert request.endpoint == "count_tokens" and not request.stream
    assert request.params["messages"][0] == {"role": "system", "content": "s"}
    assert request.ignored == ()


def events(frames: list[bytes]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for frame in frames:
        name, data = frame.decode().strip().split("\n")
        out.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


def test_a_streamed_answer_sends_messages_events_in_order() -> None:
    shaper = MessagesShaper("m", {"stop_sequences": ["END"]})
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    frames = (
        shaper.opening(7)
        + shaper.delta("Hi")
        + shaper.closing(Ending("tool_calls", 7, 4, "Hi", [call]))
    )
    got = events(frames)
    assert [name for name, _ in got] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(name == event["type"] for name, event in got)
    assert got[0][1]["message"]["usage"]["input_tokens"] == 7
    assert got[2][1]["delta"] == {"type": "text_delta", "text": "Hi"}
    assert got[4][1]["content_block"] == {
        "type": "tool_use",
        "id": "toolu_1",
        "name": "f",
        "input": {},
    }
    assert got[5][1] == {
        "type": "content_block_delta",
        "index": 1,
        "delta": {"type": "input_json_delta", "partial_json": '{"a": 1}'},
    }
    assert got[7][1]["delta"]["stop_reason"] == "tool_use"


@pytest.mark.parametrize(
    ("end", "reason", "sequence"),
    [
        (Ending("stop", 1, 1, "a", stop_sequence="END"), "stop_sequence", "END"),
        (Ending("stop", 1, 1, "a", stop_sequence="\nUser:"), "end_turn", None),
        (Ending("length", 1, 1, "a"), "max_tokens", None),
    ],
)
def test_stop_reasons(end: Ending, reason: str, sequence: str | None) -> None:
    body = MessagesShaper("m", {"stop_sequences": ["END"]}).body(end)
    assert (body["stop_reason"], body["stop_sequence"]) == (reason, sequence)
    assert body["content"] == [{"type": "text", "text": "a"}]
    assert body["usage"]["input_tokens"] == 1


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)
_FIELDS = [
    "messages",
    "system",
    "max_tokens",
    "temperature",
    "top_k",
    "stop_sequences",
    "tools",
    "tool_choice",
    "stream",
]


@settings(max_examples=300, deadline=None)
@given(
    hostile=st.dictionaries(st.sampled_from(_FIELDS), _json, max_size=3),
    endpoint=st.sampled_from(["messages", "count_tokens"]),
)
def test_hostile_field_values_only_ever_give_400(hostile: dict[str, Any], endpoint: str) -> None:
    body = {"model": "m", "max_tokens": 8, "messages": USER, **hostile}
    try:
        request = parse_request(endpoint, json.dumps(body).encode())  # type: ignore[arg-type]
    except ApiError as exc:
        assert exc.status == 400 and exc.message and "\n" not in exc.message
    else:
        json.loads(request.to_worker_json())
