"""The Responses API core: request validation into chat parameters, and the answer's
shapes (typed stream events in order, the response object). Pure, no model."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshp2p.api import ApiError, parse_request
from meshp2p.api._responses import ResponsesShaper
from meshp2p.api._shapes import Ending

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def parse(**fields: Any) -> Any:
    body = {"model": "m", "input": "hi", **fields}
    return parse_request("responses", json.dumps(body).encode())


def refusal(**fields: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        parse(**fields)
    assert info.value.status == 400
    assert "\n" not in info.value.message
    return info.value


def test_a_string_input_is_one_user_turn_after_the_instructions() -> None:
    request = parse(instructions="Be brief.", max_output_tokens=9, temperature=0.5)
    assert request.endpoint == "responses"
    assert request.params["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ]
    assert request.params["max_tokens"] == 9
    assert request.params["temperature"] == 0.5
    assert request.params["shape"]["instructions"] == "Be brief."


def test_items_become_a_conversation_with_calls_and_results() -> None:
    items = [
        {"role": "developer", "content": "Use tools."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Oslo?"}]},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Let me look."}],
        },
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "Sunny"},
    ]
    messages = parse(input=items).params["messages"]
    assert messages == [
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Oslo?"},
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "Sunny", "name": "get_weather"},
    ]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"input": []}, "input"),
        ({"input": None}, "input"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "input[0].content[0]",
        ),
        ({"input": [{"type": "function_call", "name": "f"}]}, "input[0]"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"temperature": 3}, "temperature"),
        ({"background": True}, "background"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"text": {"format": {"type": "xml"}}}, "text"),
        ({"previous_response_id": 7}, "previous_response_id"),
        ({"top_logprobs": 3}, "top_logprobs"),
    ],
)
def test_bad_fields_get_400_naming_them(fields: dict[str, Any], param: str) -> None:
    assert refusal(**fields).param == param


def test_function_tools_are_kept_and_others_named_as_ignored() -> None:
    request = parse(
        tools=[{"type": "web_search"}, WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
        reasoning={"effort": "low"},
        store=False,
        metadata={"a": "b"},
    )
    assert request.params["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER["parameters"],
                "description": "Weather in a city",
            },
        }
    ]
    assert request.params["tool_choice"] == {
        "type": "function",
        "function": {"name": "get_weather"},
    }
    # Fields without effect are not reported; those that would have one are.
    assert request.ignored == ("reasoning", "tools[0]:web_search")


def test_a_json_schema_text_format_becomes_a_response_format() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    request = parse(text={"format": {"type": "json_schema", "name": "x", "schema": schema}})
    assert request.params["response_format"] == {"type": "json_object", "schema": schema}


def events(frames: list[bytes]) -> list[dict[str, Any]]:
    out = []
    for frame in frames:
        name, data = frame.decode().strip().split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert name == f"event: {event['type']}"
        out.append(event)
    return out


def test_a_streamed_text_answer_sends_the_typed_events_in_order() -> None:
    shaper = ResponsesShaper("m", parse().params["shape"], now=1)
    frames = shaper.opening(5) + shaper.delta("Hel") + shaper.delta("lo")
    frames += shaper.closing(Ending("stop", 5, 2, "Hello"))
    got = events(frames)
    assert [e["type"] for e in got] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in got] == list(range(len(got)))
    final = got[-1]["response"]
    assert final["status"] == "completed"
    assert final["output"][0]["content"][0]["text"] == "Hello"
    assert final["usage"]["input_tokens"] == 5 and final["usage"]["total_tokens"] == 7
    assert got[6]["text"] == "Hello"


def test_a_call_is_a_function_call_item_with_its_argument_events() -> None:
    shaper = ResponsesShaper("m", {}, now=1)
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
    got = events(shaper.opening(3) + shaper.closing(Ending("tool_calls", 3, 9, "", [call])))
    assert [e["type"] for e in got] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    item = got[-1]["response"]["output"][0]
    assert item["type"] == "function_call"
    assert (item["call_id"], item["name"], item["arguments"]) == ("call_1", "f", '{"a":1}')
    body = ResponsesShaper("m", {}, now=1).body(Ending("tool_calls", 3, 9, "", [call]))
    assert [o["type"] for o in body["output"]] == ["function_call"]


def test_an_answer_cut_by_max_output_tokens_is_incomplete() -> None:
    shaper = ResponsesShaper("m", {}, now=1)
    got = events(
        shaper.opening(1) + shaper.delta("a") + shaper.closing(Ending("length", 1, 1, "a"))
    )
    assert got[-1]["type"] == "response.incomplete"
    assert got[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert shaper.body(Ending("length", 1, 1, "a"))["status"] == "incomplete"


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)
_FIELDS = [
    "input",
    "instructions",
    "max_output_tokens",
    "temperature",
    "top_p",
    "tools",
    "tool_choice",
    "text",
    "stream",
    "previous_response_id",
    "background",
]


@settings(max_examples=300, deadline=None)
@given(hostile=st.dictionaries(st.sampled_from(_FIELDS), _json, max_size=3))
def test_hostile_field_values_only_ever_give_400(hostile: dict[str, Any]) -> None:
    body = {"model": "m", "input": [{"role": "user", "content": "x"}], **hostile}
    try:
        request = parse_request("responses", json.dumps(body).encode())
    except ApiError as exc:
        assert exc.status == 400 and exc.message and "\n" not in exc.message
    else:
        json.loads(request.to_worker_json())
