"""Tests of OpenAI request validation, response shapes and error bodies (pure, no I/O)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshp2p.api._openai import (
    SSE_DONE,
    ApiError,
    InferenceRequest,
    ResponseShaper,
    model_not_found,
    parse_request,
    sse,
    usage,
)

USER_HI = [{"role": "user", "content": "hi"}]


def _raw(body: Any) -> bytes:
    return json.dumps(body).encode()


def _chat_raw(**fields: Any) -> bytes:
    return _raw({"model": "m", "messages": USER_HI, **fields})


def _completion_raw(**fields: Any) -> bytes:
    return _raw({"model": "m", "prompt": "Once", **fields})


def chat(tools_supported: bool = False, **fields: Any) -> InferenceRequest:
    body = {"model": "m", "messages": USER_HI, **fields}
    return parse_request("chat", _raw(body), tools_supported=lambda _model: tools_supported)


def completion(**fields: Any) -> InferenceRequest:
    return parse_request("completion", _raw({"model": "m", "prompt": "Once", **fields}))


def rejection(endpoint: str, raw: bytes, tools_supported: bool = False) -> ApiError:
    with pytest.raises(ApiError) as info:
        parse_request(endpoint, raw, tools_supported=lambda _model: tools_supported)  # type: ignore[arg-type]
    assert info.value.status == 400
    return info.value


# --- valid requests normalise -------------------------------------------------


def test_minimal_chat_request_keeps_messages_and_defaults() -> None:
    req = chat()
    assert req.endpoint == "chat"
    assert req.model == "m"
    assert req.stream is False
    assert req.include_usage is False
    assert req.params == {"messages": USER_HI}
    assert req.ignored == ()


def test_developer_role_becomes_system() -> None:
    req = chat(messages=[{"role": "developer", "content": "be brief"}, *USER_HI])
    assert req.params["messages"][0] == {"role": "system", "content": "be brief"}


def test_text_content_parts_are_joined() -> None:
    parts = [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "world"}]
    req = chat(messages=[{"role": "user", "content": parts}])
    assert req.params["messages"] == [{"role": "user", "content": "Hello, world"}]


def test_assistant_tool_calls_and_tool_results_are_kept() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages = [
        *USER_HI,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "name": "f", "content": "42"},
    ]
    req = chat(messages=messages)
    assert req.params["messages"][1] == {"role": "assistant", "content": None, "tool_calls": [call]}
    assert req.params["messages"][2] == {
        "role": "tool",
        "content": "42",
        "name": "f",
        "tool_call_id": "call_1",
    }


def test_max_completion_tokens_becomes_max_tokens() -> None:
    assert chat(max_completion_tokens=7).params["max_tokens"] == 7


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    assert chat(max_tokens=100, max_completion_tokens=7).params["max_tokens"] == 7


def test_stop_string_becomes_a_list() -> None:
    assert chat(stop="\n\n").params["stop"] == ["\n\n"]
    assert completion(stop=["a", "b", "c", "d"]).params["stop"] == ["a", "b", "c", "d"]


@pytest.mark.parametrize(
    ("seed", "folded"),
    [(42, 42), (2**32 + 5, 5), (2**64 - 1, 2**32 - 1), (-1, 2**32 - 1)],
)
def test_seed_is_folded_to_32_bits(seed: int, folded: int) -> None:
    assert chat(seed=seed).params["seed"] == folded


def test_sampling_numbers_pass_through() -> None:
    params = chat(temperature=0, top_p=0.5, presence_penalty=-2, frequency_penalty=1.5).params
    assert params["temperature"] == 0
    assert params["top_p"] == 0.5
    assert params["presence_penalty"] == -2
    assert params["frequency_penalty"] == 1.5


def test_logit_bias_keys_become_token_ids() -> None:
    assert chat(logit_bias={"15": -100, "7": 2.5}).params["logit_bias"] == {15: -100.0, 7: 2.5}


def test_completion_defaults_max_tokens_to_16() -> None:
    req = completion()
    assert req.endpoint == "completion"
    assert req.params == {"prompt": "Once", "max_tokens": 16}


def test_completion_keeps_an_explicit_max_tokens() -> None:
    assert completion(max_tokens=300).params["max_tokens"] == 300


def test_completion_single_prompt_in_a_list_is_unwrapped() -> None:
    assert completion(prompt=["Once"]).params["prompt"] == "Once"


def test_completion_token_id_prompt_is_kept() -> None:
    assert completion(prompt=[1, 2, 3]).params["prompt"] == [1, 2, 3]


def test_completion_echo_is_kept() -> None:
    assert completion(echo=True).params["echo"] is True


@pytest.mark.parametrize("field", ["suffix", "logprobs"])
def test_completion_fields_the_engine_cannot_honour_are_rejected(field: str) -> None:
    error = rejection("completion", _completion_raw(**{field: 2 if field == "logprobs" else "!"}))
    assert (error.param, error.code) == (field, "unsupported")


def test_legacy_functions_become_tools() -> None:
    fn = {"name": "get_weather", "parameters": {"type": "object"}}
    req = chat(tools_supported=True, functions=[fn], function_call="auto")
    assert req.params["tools"] == [{"type": "function", "function": fn}]
    assert req.params["tool_choice"] == "auto"
    assert req.ignored == ()


def test_tools_are_accepted_when_the_template_supports_them() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    choice = {"type": "function", "function": {"name": "f"}}
    req = chat(tools_supported=True, tools=tools, tool_choice=choice)
    assert req.params["tools"] == tools
    assert req.params["tool_choice"] == choice


def test_tools_are_accepted_whatever_the_template_says() -> None:
    # A model whose template has no tools gets them emulated by its worker.
    tools = [{"type": "function", "function": {"name": "f"}}]
    raw = _raw({"model": "qwen", "messages": USER_HI, "tools": tools})
    request = parse_request("chat", raw, tools_supported=lambda _model: False)
    assert request.params["tools"] == tools


def test_tool_choice_none_without_tools_is_accepted() -> None:
    assert "tool_choice" not in chat(tool_choice="none").params


@pytest.mark.parametrize(
    ("response_format", "expected"),
    [
        ({"type": "text"}, None),
        ({"type": "json_object"}, {"type": "json_object"}),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
            {"type": "json_object", "schema": {"type": "object"}},
        ),
    ],
)
def test_response_format_is_normalised(response_format: Any, expected: Any) -> None:
    assert chat(response_format=response_format).params.get("response_format") == expected


def test_stream_with_include_usage() -> None:
    req = chat(stream=True, stream_options={"include_usage": True})
    assert (req.stream, req.include_usage) == (True, True)


@pytest.mark.parametrize("field", ["n", "best_of"])
def test_one_choice_is_accepted(field: str) -> None:
    assert parse_request("chat", _chat_raw(**{field: 1})).ignored == ()


def test_fields_without_effect_are_accepted_and_not_reported() -> None:
    req = chat(
        user="u-1",
        store=False,
        metadata={"k": "v"},
        service_tier="auto",
        parallel_tool_calls=True,
    )
    assert req.ignored == ()


def test_unknown_fields_are_reported_as_ignored() -> None:
    req = chat(top_k=5, frobnicate=True, user="u")
    assert req.ignored == ("frobnicate", "top_k")


def test_chat_only_fields_are_reported_ignored_on_completions() -> None:
    assert completion(response_format={"type": "json_object"}).ignored == ("response_format",)


def test_to_worker_json_carries_the_validated_request() -> None:
    req = chat(stream=True, stream_options={"include_usage": True}, temperature=0.5)
    assert json.loads(req.to_worker_json()) == {
        "endpoint": "chat",
        "model": "m",
        "stream": True,
        "include_usage": True,
        "params": {"messages": USER_HI, "temperature": 0.5},
    }


# --- rejections name the field ---------------------------------------------


@pytest.mark.parametrize(
    "raw", [b"", b"{", b"not json", b'{"model": "m",}', b"\xff\xfe\xfa", b"{'model': 'm'}"]
)
def test_bad_json_is_rejected(raw: bytes) -> None:
    error = rejection("chat", raw)
    assert error.code == "invalid_json"
    assert error.param is None


@pytest.mark.parametrize("raw", [b"[]", b"null", b"42", b'"chat"', b"true"])
def test_non_object_body_is_rejected(raw: bytes) -> None:
    assert rejection("completion", raw).code == "invalid_json"


@pytest.mark.parametrize(
    "body", [{"messages": USER_HI}, {"model": "", "messages": USER_HI}, {"model": 3}]
)
def test_missing_model_is_rejected(body: Any) -> None:
    error = rejection("chat", _raw(body))
    assert (error.param, error.code) == ("model", "missing_required_parameter")


@pytest.mark.parametrize("messages", [[], None, "hi", {"role": "user"}])
def test_empty_or_missing_messages_are_rejected(messages: Any) -> None:
    body: dict[str, Any] = {"model": "m"}
    if messages is not None:
        body["messages"] = messages
    assert rejection("chat", _raw(body)).param == "messages"


@pytest.mark.parametrize("role", ["robot", "", None, 3, "User"])
def test_bad_role_is_rejected(role: Any) -> None:
    raw = _chat_raw(messages=[*USER_HI, {"role": role, "content": "x"}])
    assert rejection("chat", raw).param == "messages[1]"


@pytest.mark.parametrize("role", [["user"], {"r": "user"}])
def test_unhashable_role_is_rejected(role: Any) -> None:
    assert rejection("chat", _chat_raw(messages=[{"role": role, "content": "x"}])).param == (
        "messages[0]"
    )


def test_message_that_is_not_an_object_is_rejected() -> None:
    assert rejection("chat", _chat_raw(messages=["hi"])).param == "messages[0]"


def test_message_without_content_is_rejected() -> None:
    assert rejection("chat", _chat_raw(messages=[{"role": "user"}])).param == "messages[0].content"


def test_image_content_part_is_rejected() -> None:
    parts = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]
    error = rejection("chat", _chat_raw(messages=[{"role": "user", "content": parts}]))
    assert (error.param, error.code) == ("messages[0].content[1]", "unsupported")


@pytest.mark.parametrize("parts", [[{"text": "x"}], ["x"], [{"type": "text", "text": 3}]])
def test_malformed_content_parts_are_rejected(parts: Any) -> None:
    raw = _chat_raw(messages=[{"role": "user", "content": parts}])
    assert rejection("chat", raw).param == "messages[0].content"


def test_tool_calls_on_a_user_message_are_rejected() -> None:
    raw = _chat_raw(messages=[{"role": "user", "content": "x", "tool_calls": [{}]}])
    assert rejection("chat", raw).param == "messages[0]"


@pytest.mark.parametrize(("field", "value"), [("n", 2), ("best_of", 3)])
def test_more_than_one_choice_is_rejected(field: str, value: int) -> None:
    for endpoint, raw in (
        ("chat", _chat_raw(**{field: value})),
        ("completion", _completion_raw(**{field: value})),
    ):
        error = rejection(endpoint, raw)
        assert (error.param, error.code) == (field, "unsupported")


@pytest.mark.parametrize("value", [0, -1, "2", 1.5])
def test_invalid_choice_count_is_rejected(value: Any) -> None:
    assert rejection("chat", _chat_raw(n=value)).param == "n"


@pytest.mark.parametrize(
    "raw_value",
    [b"2.5", b"-0.1", b'"hot"', b"NaN", b"Infinity", b"-Infinity", b'"NaN"', b"true", b"[1]"],
)
def test_bad_temperature_is_rejected(raw_value: bytes) -> None:
    raw = (
        b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": '
        + raw_value
        + b"}"
    )
    assert rejection("chat", raw).param == "temperature"


def test_temperature_integer_beyond_float_range_is_rejected() -> None:
    raw = b'{"model": "m", "prompt": "x", "temperature": ' + b"9" * 400 + b"}"
    assert rejection("completion", raw).param == "temperature"


@pytest.mark.parametrize(
    ("field", "value"),
    [("top_p", 1.01), ("top_p", -0.5), ("presence_penalty", 2.1), ("frequency_penalty", -3)],
)
def test_sampling_numbers_out_of_range_are_rejected(field: str, value: float) -> None:
    error = rejection("chat", _chat_raw(**{field: value}))
    assert (error.param, error.code) == (field, "invalid_value")


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_tokens", 0), ("max_tokens", "5"), ("max_tokens", 2.0), ("max_completion_tokens", -1)],
)
def test_bad_max_tokens_is_rejected(field: str, value: Any) -> None:
    assert rejection("chat", _chat_raw(**{field: value})).param == field


@pytest.mark.parametrize("stop", [["a", "b", "c", "d", "e"], [1], 5, {"s": 1}])
def test_bad_stop_is_rejected(stop: Any) -> None:
    assert rejection("completion", _completion_raw(stop=stop)).param == "stop"


@pytest.mark.parametrize("seed", ["1", 1.5, True])
def test_bad_seed_is_rejected(seed: Any) -> None:
    assert rejection("chat", _chat_raw(seed=seed)).param == "seed"


@pytest.mark.parametrize("bias", [[1], {"x": 1}, {"1": 101}, {"1": "big"}, {"1": True}])
def test_bad_logit_bias_is_rejected(bias: Any) -> None:
    assert rejection("chat", _chat_raw(logit_bias=bias)).param == "logit_bias"


def test_stream_options_without_stream_are_rejected() -> None:
    raw = _chat_raw(stream_options={"include_usage": True})
    assert rejection("chat", raw).param == "stream_options"


@pytest.mark.parametrize("options", [[], {"include_usage": "yes"}])
def test_bad_stream_options_are_rejected(options: Any) -> None:
    assert (
        rejection("chat", _chat_raw(stream=True, stream_options=options)).param == "stream_options"
    )


@pytest.mark.parametrize("stream", [1, "true"])
def test_non_boolean_stream_is_rejected(stream: Any) -> None:
    assert rejection("chat", _chat_raw(stream=stream)).param == "stream"


def test_logprobs_on_chat_are_rejected() -> None:
    error = rejection("chat", _chat_raw(logprobs=True))
    assert (error.param, error.code) == ("logprobs", "unsupported")


@pytest.mark.parametrize("logprobs", [6, -1, True, "2", 0])
def test_bad_completion_logprobs_are_rejected(logprobs: Any) -> None:
    assert rejection("completion", _completion_raw(logprobs=logprobs)).param == "logprobs"


def test_legacy_functions_are_accepted_without_template_tool_support() -> None:
    request = chat(tools_supported=False, functions=[{"name": "f"}])
    assert request.params["tools"] == [{"type": "function", "function": {"name": "f"}}]


@pytest.mark.parametrize(
    "tools",
    [
        [{"type": "function"}],
        [{"type": "code_interpreter", "function": {"name": "f"}}],
        [{"type": "function", "function": {"name": 3}}],
        ["f"],
        [{"type": "function", "function": {"name": "f"}}] * 129,
        {"type": "function"},
    ],
)
def test_malformed_tools_are_rejected(tools: Any) -> None:
    assert rejection("chat", _chat_raw(tools=tools), tools_supported=True).param == "tools"


@pytest.mark.parametrize(
    "choice", ["auto", "required", {"type": "function", "function": {"name": "f"}}]
)
def test_tool_choice_without_tools_is_rejected(choice: Any) -> None:
    assert (
        rejection("chat", _chat_raw(tool_choice=choice), tools_supported=True).param
        == "tool_choice"
    )


@pytest.mark.parametrize("choice", ["sometimes", {"type": "function"}, 3])
def test_bad_tool_choice_is_rejected(choice: Any) -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    raw = _chat_raw(tools=tools, tool_choice=choice)
    assert rejection("chat", raw, tools_supported=True).param == "tool_choice"


def test_legacy_functions_that_are_not_a_list_are_rejected() -> None:
    assert rejection("chat", _chat_raw(functions={"name": "f"})).param == "functions"


@pytest.mark.parametrize(
    "fmt",
    [
        {"type": "xml"},
        "json",
        {},
        {"type": "json_schema"},
        {"type": "json_schema", "json_schema": {"schema": "object"}},
        {"type": "json_schema", "json_schema": []},
    ],
)
def test_bad_response_format_is_rejected(fmt: Any) -> None:
    assert rejection("chat", _chat_raw(response_format=fmt)).param == "response_format"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("audio", {"voice": "alloy", "format": "wav"}),
        ("prediction", {"type": "content", "content": "x"}),
        ("web_search_options", {}),
        ("modalities", ["text", "audio"]),
    ],
)
def test_output_features_this_node_lacks_are_rejected(field: str, value: Any) -> None:
    error = rejection("chat", _chat_raw(**{field: value}))
    assert (error.param, error.code) == (field, "unsupported")


def test_text_only_modalities_are_accepted() -> None:
    assert chat(modalities=["text"]).ignored == ()


@pytest.mark.parametrize("prompt", [["one", "two"], [[1, 2], [3, 4]], ["a", 1], []])
def test_batch_of_prompts_on_completions_is_rejected(prompt: Any) -> None:
    error = rejection("completion", _completion_raw(prompt=prompt))
    assert (error.param, error.code) == ("prompt", "unsupported")


@pytest.mark.parametrize("prompt", [None, 5, {"text": "x"}, [True, False]])
def test_missing_or_bad_completion_prompt_is_rejected(prompt: Any) -> None:
    body: dict[str, Any] = {"model": "m"}
    if prompt is not None:
        body["prompt"] = prompt
    assert rejection("completion", _raw(body)).param == "prompt"


@pytest.mark.parametrize(("field", "value"), [("suffix", 3), ("echo", "yes")])
def test_bad_completion_extras_are_rejected(field: str, value: Any) -> None:
    assert rejection("completion", _completion_raw(**{field: value})).param == field


@pytest.mark.parametrize("raw", [b"[" * 100_000, b'{"model": "m", "messages": ' + b"[" * 100_000])
def test_deeply_nested_json_is_rejected(raw: bytes) -> None:
    assert rejection("chat", raw).code == "invalid_json"


def test_integer_literal_too_long_to_parse_is_rejected() -> None:
    rejection("completion", b'{"model": "m", "prompt": "x", "max_tokens": ' + b"1" * 5000 + b"}")


def test_api_error_body_has_openai_shape() -> None:
    error = rejection("chat", _chat_raw(temperature=9))
    assert error.body() == {
        "error": {
            "message": error.message,
            "type": "invalid_request_error",
            "param": "temperature",
            "code": "invalid_value",
        }
    }
    assert "temperature" in error.message and "\n" not in error.message


def test_model_not_found_is_404_and_lists_served_models() -> None:
    error = model_not_found("llama", ["gemma", "qwen"])
    assert (error.status, error.param, error.code) == (404, "model", "model_not_found")
    assert error.message == "model 'llama' is not served by this mesh; served: gemma, qwen"


def test_model_not_found_with_nothing_served_says_none() -> None:
    assert model_not_found("llama", []).message.endswith("served: none")


# --- response shapes --------------------------------------------------------


def test_usage_totals_prompt_and_completion() -> None:
    assert usage(5, 7) == {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}


def test_sse_frames_compact_json() -> None:
    assert sse({"a": [1, 2]}) == b'data: {"a":[1,2]}\n\n'
    assert SSE_DONE == b"data: [DONE]\n\n"


def _envelope_ok(chunk: dict[str, Any], shaper: ResponseShaper, obj: str) -> None:
    assert chunk["id"] == shaper.id
    assert chunk["object"] == obj
    assert chunk["created"] == 1700000000
    assert chunk["model"] == "m"


def test_chat_stream_chunks_have_openai_shapes() -> None:
    shaper = ResponseShaper("chat", "m", include_usage=False, now=1700000000)
    assert shaper.id.startswith("chatcmpl-")
    first = shaper.first_chunk()
    assert first is not None
    chunks = [first, shaper.delta_chunk("Hel"), *shaper.final_chunks("stop", usage(3, 1))]
    for chunk in chunks:
        _envelope_ok(chunk, shaper, "chat.completion.chunk")
        assert "usage" not in chunk
    assert [c["choices"] for c in chunks] == [
        [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
        ],
        [{"index": 0, "delta": {"content": "Hel"}, "logprobs": None, "finish_reason": None}],
        [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}],
    ]


def test_chat_stream_with_include_usage_ends_with_a_usage_chunk() -> None:
    shaper = ResponseShaper("chat", "m", include_usage=True, now=1700000000)
    first = shaper.first_chunk()
    assert first is not None
    chunks = [first, shaper.delta_chunk("x"), *shaper.final_chunks("length", usage(3, 1))]
    *body, last = chunks
    for chunk in body:
        assert chunk["usage"] is None
        assert len(chunk["choices"]) == 1
    _envelope_ok(last, shaper, "chat.completion.chunk")
    assert last["choices"] == []
    assert last["usage"] == {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    assert body[-1]["choices"][0]["finish_reason"] == "length"


def test_chat_stream_sends_tool_calls_before_the_finish_chunk() -> None:
    shaper = ResponseShaper("chat", "m", include_usage=False, now=1700000000)
    calls = [
        {
            "index": 0,
            "id": "call_1",
            "type": "function",
            "function": {"name": "f", "arguments": "{}"},
        }
    ]
    chunks = shaper.final_chunks("tool_calls", usage(3, 9), calls)
    assert [c["choices"][0] for c in chunks] == [
        {"index": 0, "delta": {"tool_calls": calls}, "logprobs": None, "finish_reason": None},
        {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "tool_calls"},
    ]


def test_completion_stream_chunks_have_openai_shapes() -> None:
    shaper = ResponseShaper("completion", "m", include_usage=True, now=1700000000)
    assert shaper.id.startswith("cmpl-")
    assert shaper.first_chunk() is None
    chunks = [shaper.delta_chunk("Once"), *shaper.final_chunks("stop", usage(2, 1))]
    for chunk in chunks:
        _envelope_ok(chunk, shaper, "text_completion")
    assert chunks[0]["choices"] == [
        {"index": 0, "text": "Once", "logprobs": None, "finish_reason": None}
    ]
    assert chunks[0]["usage"] is None
    assert chunks[1]["choices"] == [
        {"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}
    ]
    assert chunks[1]["usage"] is None
    assert chunks[2]["choices"] == []
    assert chunks[2]["usage"] == usage(2, 1)


def test_chat_response_has_openai_shape() -> None:
    shaper = ResponseShaper("chat", "m", include_usage=False, now=1700000000)
    body = shaper.response("Hello!", "stop", usage(4, 2))
    _envelope_ok(body, shaper, "chat.completion")
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello!"},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert body["usage"] == usage(4, 2)


def test_chat_response_with_tool_calls_and_no_text_has_null_content() -> None:
    shaper = ResponseShaper("chat", "m", include_usage=False, now=1700000000)
    calls = [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    body = shaper.response("", "tool_calls", usage(4, 9), calls)
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": None,
        "tool_calls": calls,
    }
    assert body["choices"][0]["finish_reason"] == "tool_calls"


def test_chat_response_with_tool_calls_keeps_leading_text() -> None:
    shaper = ResponseShaper("chat", "m", include_usage=False, now=1700000000)
    calls = [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    message = shaper.response("Checking.", "tool_calls", usage(4, 9), calls)["choices"][0][
        "message"
    ]
    assert message == {"role": "assistant", "content": "Checking.", "tool_calls": calls}


def test_chat_response_with_no_text_has_empty_string_content() -> None:
    shaper = ResponseShaper("chat", "m", include_usage=False, now=1700000000)
    assert shaper.response("", "stop", usage(4, 0))["choices"][0]["message"]["content"] == ""


def test_completion_response_has_openai_shape() -> None:
    shaper = ResponseShaper("completion", "m", include_usage=False, now=1700000000)
    body = shaper.response(" upon a time", "length", usage(2, 4))
    _envelope_ok(body, shaper, "text_completion")
    assert body["choices"] == [
        {"index": 0, "text": " upon a time", "logprobs": None, "finish_reason": "length"}
    ]
    assert body["usage"] == usage(2, 4)


def test_each_request_gets_its_own_id() -> None:
    a = ResponseShaper("chat", "m", include_usage=False, now=0)
    b = ResponseShaper("chat", "m", include_usage=False, now=0)
    assert a.id != b.id


# --- hostile input only ever gives a 400 ------------------------------------

# Integers stay inside float range: larger ones hit the OverflowError pinned above.
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["user", "system", "assistant", "tool", "text", "function", "auto", "none"])
)
# Dict keys include the names parse_request looks inside objects for.
_keys = st.text(max_size=8) | st.sampled_from(
    [
        "role",
        "content",
        "type",
        "text",
        "function",
        "name",
        "arguments",
        "parameters",
        "tool_calls",
        "include_usage",
        "schema",
        "json_schema",
    ]
)
_json = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_keys, children, max_size=4),
    max_leaves=12,
)
# Roles stay hashable: an unhashable role hits the TypeError pinned above.
_message = st.fixed_dictionaries(
    {"role": _scalars},
    optional={"content": _json, "name": _json, "tool_calls": _json, "tool_call_id": _json},
)
_FIELDS = [
    "model",
    "messages",
    "prompt",
    "temperature",
    "top_p",
    "presence_penalty",
    "stop",
    "seed",
    "logit_bias",
    "stream",
    "stream_options",
    "n",
    "best_of",
    "max_tokens",
    "max_completion_tokens",
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "response_format",
    "logprobs",
    "echo",
    "suffix",
    "modalities",
    "audio",
    "user",
]
# A valid request with a few fields replaced by hostile values, so that the
# validation of every field is reached, not just the first one checked.
_bodies = st.builds(
    lambda messages, hostile: {"model": "m", "messages": messages, "prompt": "x", **hostile},
    st.lists(_message, min_size=1, max_size=3) | st.just(USER_HI),
    st.dictionaries(st.sampled_from(_FIELDS), _json, max_size=3),
)


def _only_400(endpoint: str, raw: bytes, tools_supported: bool) -> None:
    try:
        req = parse_request(endpoint, raw, tools_supported=lambda _m: tools_supported)  # type: ignore[arg-type]
    except ApiError as exc:
        assert exc.status == 400
        assert exc.message
        assert "\n" not in exc.message
    else:
        json.loads(req.to_worker_json())


@settings(max_examples=300, deadline=None)
@given(
    body=_bodies,
    endpoint=st.sampled_from(["chat", "completion"]),
    tools_supported=st.booleans(),
)
def test_hostile_field_values_only_ever_give_400(
    body: dict[str, Any], endpoint: str, tools_supported: bool
) -> None:
    _only_400(endpoint, json.dumps(body).encode(), tools_supported)


@settings(max_examples=200, deadline=None)
@given(body=_json, endpoint=st.sampled_from(["chat", "completion"]))
def test_arbitrary_json_bodies_only_ever_give_400(body: Any, endpoint: str) -> None:
    _only_400(endpoint, json.dumps(body).encode(), True)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=200), endpoint=st.sampled_from(["chat", "completion"]))
def test_arbitrary_bytes_only_ever_give_400(raw: bytes, endpoint: str) -> None:
    _only_400(endpoint, raw, False)
