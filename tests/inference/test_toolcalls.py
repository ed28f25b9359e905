"""Tests of finding tool calls in generated text (Hermes, bare JSON, Mistral)."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshp2p.inference._toolcalls import ToolCall, parse_tool_calls


def _args(call: ToolCall) -> object:
    return json.loads(call.arguments)


def test_hermes_block_becomes_a_call() -> None:
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    content, calls = parse_tool_calls(text)
    assert content == ""
    assert [(c.name, _args(c)) for c in calls] == [("get_weather", {"city": "Paris"})]


def test_hermes_blocks_keep_the_text_before_them_as_content() -> None:
    text = (
        "Let me look both up.\n"
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>\n'
        '<tool_call>{"name": "get_time", "arguments": {"tz": "Europe/Paris"}}</tool_call>'
    )
    content, calls = parse_tool_calls(text)
    assert content == "Let me look both up."
    assert [(c.name, _args(c)) for c in calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {"tz": "Europe/Paris"}),
    ]


def test_hermes_block_holding_a_list_gives_every_call() -> None:
    text = '<tool_call>[{"name": "a", "arguments": {}}, {"name": "b", "arguments": {}}]</tool_call>'
    _, calls = parse_tool_calls(text)
    assert [c.name for c in calls] == ["a", "b"]


def test_hermes_block_without_arguments_is_a_call_with_empty_arguments() -> None:
    _, calls = parse_tool_calls('<tool_call>{"name": "now"}</tool_call>')
    assert [(c.name, _args(c)) for c in calls] == [("now", {})]


def test_hermes_block_with_invalid_json_leaves_all_text_as_content() -> None:
    text = 'Sure. <tool_call>{"name": "f", "arguments": {</tool_call>'
    assert parse_tool_calls(text) == (text, [])


def test_one_bad_hermes_block_leaves_all_text_as_content() -> None:
    text = '<tool_call>{"name": "f", "arguments": {}}</tool_call><tool_call>not json</tool_call>'
    assert parse_tool_calls(text) == (text, [])


def test_bare_json_object_with_parameters_becomes_a_call() -> None:
    text = ' {"name": "search", "parameters": {"query": "trio nurseries", "limit": 3}}\n'
    content, calls = parse_tool_calls(text)
    assert content == ""
    assert [(c.name, _args(c)) for c in calls] == [
        ("search", {"query": "trio nurseries", "limit": 3})
    ]


def test_bare_json_list_of_calls_becomes_several_calls() -> None:
    text = json.dumps(
        [
            {"name": "a", "parameters": {"x": 1}},
            {"name": "b", "arguments": {"y": 2}},
        ]
    )
    content, calls = parse_tool_calls(text)
    assert content == ""
    assert [(c.name, _args(c)) for c in calls] == [("a", {"x": 1}), ("b", {"y": 2})]


def test_mistral_tool_calls_prefix_becomes_calls() -> None:
    text = '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Oslo"}}]'
    content, calls = parse_tool_calls(text)
    assert content == ""
    assert [(c.name, _args(c)) for c in calls] == [("get_weather", {"city": "Oslo"})]


def test_mistral_prefix_with_invalid_json_is_left_as_text() -> None:
    text = "[TOOL_CALLS] [{oops"
    assert parse_tool_calls(text) == (text, [])


def test_arguments_given_as_json_string_are_kept_verbatim() -> None:
    text = json.dumps({"name": "f", "arguments": '{"a": [1, 2]}'})
    _, calls = parse_tool_calls(text)
    assert [c.arguments for c in calls] == ['{"a": [1, 2]}']


def test_arguments_string_that_is_not_json_is_not_a_call() -> None:
    text = json.dumps({"name": "f", "arguments": "{not json"})
    assert parse_tool_calls(text) == (text, [])


@pytest.mark.parametrize("args", [5, None, True, [1, 2]])
def test_arguments_that_are_not_an_object_or_string_are_not_a_call(args: object) -> None:
    text = json.dumps({"name": "f", "arguments": args})
    assert parse_tool_calls(text) == (text, [])


def test_non_ascii_arguments_stay_readable() -> None:
    _, calls = parse_tool_calls('{"name": "f", "parameters": {"city": "Zürich"}}')
    assert calls[0].arguments == '{"city": "Zürich"}'


@pytest.mark.parametrize(
    "text",
    [
        "The weather in Paris is sunny.",
        "",
        "{not json at all",
        '{"answer": 42}',
        '{"name": 7, "arguments": {}}',
        "[1, 2, 3]",
        "[]",
        '[{"name": "a", "arguments": {}}, "stray"]',
        '{"name": "f", "arguments": {}} and then some prose',
        "Use <tool_call> tags to call tools.",
    ],
)
def test_text_without_a_call_is_returned_untouched(text: str) -> None:
    assert parse_tool_calls(text) == (text, [])


def test_bare_json_answer_with_a_name_field_is_not_a_call() -> None:
    # A JSON answer (e.g. under response_format) that happens to have "name".
    text = '{"name": "Ada Lovelace", "born": 1815}'
    assert parse_tool_calls(text) == (text, [])


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000,
        "<tool_call>" + "[" * 100_000 + "</tool_call>",
        "[TOOL_CALLS] " + "[" * 100_000,
        json.dumps({"name": "f", "arguments": "[" * 100_000}),
    ],
)
def test_deeply_nested_json_is_text_not_a_crash(text: str) -> None:
    assert parse_tool_calls(text) == (text, [])


def test_each_call_gets_its_own_openai_style_id() -> None:
    _, calls = parse_tool_calls('[{"name": "a", "arguments": {}}, {"name": "a", "arguments": {}}]')
    assert all(re.fullmatch(r"call_[0-9a-f]{24}", c.id) for c in calls)
    assert calls[0].id != calls[1].id


def test_to_openai_with_index_has_the_streaming_shape() -> None:
    call = ToolCall("call_abc", "get_weather", '{"city": "Paris"}')
    assert call.to_openai(2) == {
        "id": "call_abc",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        "index": 2,
    }


def test_to_openai_without_index_has_the_message_shape() -> None:
    call = ToolCall("call_abc", "get_weather", "{}")
    assert call.to_openai() == {
        "id": "call_abc",
        "type": "function",
        "function": {"name": "get_weather", "arguments": "{}"},
    }


@given(st.text())
def test_parse_tool_calls_never_raises_and_never_invents_text(text: str) -> None:
    content, calls = parse_tool_calls(text)
    if not calls:
        assert content == text
    for call in calls:
        json.loads(call.arguments)
