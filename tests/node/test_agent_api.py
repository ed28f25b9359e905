"""End to end: the agent APIs (OpenAI Responses, Anthropic Messages, embeddings) of a real
``meshp2p node`` started with an API key, talked to with the official ``openai`` and
``anthropic`` SDKs, on the default model (a base model: tools are emulated)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from conftest import NodeProcess, wait_until

pytestmark = pytest.mark.e2e

MODEL = "gemma-3-270m-Q4_K_M"
KEY = "K"
WEATHER_FUNCTION = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": WEATHER_FUNCTION["parameters"],
}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Iterator[NodeProcess]:
    proc = NodeProcess(
        tmp_path_factory.mktemp("agent-node"),
        ["--model", str(model_path), "--api-key", KEY, "--max-body", "1MiB"],
    )
    with proc.serving() as ready:
        yield ready


@pytest.fixture(scope="module")
def oai(node: NodeProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=node.api_url, api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def claude(node: NodeProcess) -> anthropic.Anthropic:
    origin = node.api_url.removesuffix("/v1")
    return anthropic.Anthropic(base_url=origin, api_key=KEY, max_retries=0, timeout=120)


OPENAI_PATHS = ["/models", "/chat/completions", "/responses", "/embeddings"]
ANTHROPIC_PATHS = ["/messages", "/messages/count_tokens"]


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer nope"}, {"x-api-key": "k"}])
@pytest.mark.parametrize("path", OPENAI_PATHS + ANTHROPIC_PATHS)
def test_a_request_without_the_key_gets_401_in_its_endpoints_shape(
    node: NodeProcess, path: str, headers: dict[str, str]
) -> None:
    method = "GET" if path == "/models" else "POST"
    response = httpx.request(method, node.api_url + path, headers=headers, json={}, timeout=10)
    assert response.status_code == 401
    body = response.json()
    if path in ANTHROPIC_PATHS:
        assert body["type"] == "error"
        assert body["error"]["type"] == "authentication_error"
    else:
        assert body["error"]["code"] == "invalid_api_key"
    assert "--api-key" in json.dumps(body)


def test_the_sdks_see_a_wrong_key_as_an_authentication_error(node: NodeProcess) -> None:
    wrong = openai.OpenAI(base_url=node.api_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.responses.create(model=MODEL, input="hi")
    origin = node.api_url.removesuffix("/v1")
    bad = anthropic.Anthropic(base_url=origin, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "hi"}])


def test_responses_answer_text_with_usage(oai: openai.OpenAI) -> None:
    response = oai.responses.create(
        model=MODEL,
        input="Say hello.",
        instructions="Be brief.",
        max_output_tokens=12,
        temperature=0,
    )
    assert response.status in ("completed", "incomplete")
    assert response.output_text
    assert response.usage is not None and response.usage.input_tokens > 0
    assert 0 < response.usage.output_tokens <= 12
    assert response.instructions == "Be brief."


def test_responses_stream_typed_events_in_order(oai: openai.OpenAI) -> None:
    stream = oai.responses.create(
        model=MODEL,
        input="Count from one to ten.",
        max_output_tokens=16,
        temperature=0,
        stream=True,
    )
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 1
    assert kinds[-4:-1] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    final = events[-1]
    assert final.type in ("response.completed", "response.incomplete")
    assert final.response.output_text == "".join(deltas)
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_responses_function_tool_round_trip(oai: openai.OpenAI) -> None:
    first = oai.responses.create(
        model=MODEL,
        input="What is the weather in Oslo?",
        tools=[WEATHER_FUNCTION],  # type: ignore[list-item]
        tool_choice="required",
        max_output_tokens=60,
    )
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather"
    assert isinstance(json.loads(call.arguments)["city"], str)
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"}
    # The conversation kept by the node, named by its id ...
    second = oai.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        input=[result],  # type: ignore[list-item]
        tools=[WEATHER_FUNCTION],  # type: ignore[list-item]
        max_output_tokens=24,
    )
    assert second.previous_response_id == first.id
    assert second.usage is not None and first.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens
    # ... or sent whole, as stateless clients do.
    whole = [
        {"role": "user", "content": "What is the weather in Oslo?"},
        call.model_dump(exclude_none=True),
        result,
    ]
    third = oai.responses.create(
        model=MODEL,
        input=whole,
        tools=[WEATHER_FUNCTION],
        max_output_tokens=24,  # type: ignore[arg-type]
    )
    assert third.status in ("completed", "incomplete")


def test_an_unknown_previous_response_is_400_saying_it_is_not_kept(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        oai.responses.create(model=MODEL, input="hi", previous_response_id="resp_unknown")
    assert "not kept by this node" in str(info.value)


def test_chat_completions_tool_round_trip_on_a_model_without_tool_template(
    oai: openai.OpenAI,
) -> None:
    tool = {
        "type": "function",
        "function": {k: v for k, v in WEATHER_FUNCTION.items() if k != "type"},
    }
    ask = [{"role": "user", "content": "What is the weather in Oslo?"}]
    reply = oai.chat.completions.create(
        model=MODEL,
        messages=ask,
        tools=[tool],
        tool_choice="required",
        max_tokens=60,  # type: ignore[arg-type,list-item]
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    answer = oai.chat.completions.create(
        model=MODEL,
        messages=[
            *ask,
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"},
        ],  # type: ignore[arg-type]
        tools=[tool],  # type: ignore[list-item]
        max_tokens=24,
    )
    assert answer.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_embeddings_of_two_inputs_have_equal_length(oai: openai.OpenAI) -> None:
    result = oai.embeddings.create(model=MODEL, input=["The cat sat.", "A dog ran far away."])
    assert [d.index for d in result.data] == [0, 1]
    lengths = {len(d.embedding) for d in result.data}
    assert lengths == {640}
    assert result.usage.prompt_tokens > 4
    floats = oai.embeddings.create(model=MODEL, input="The cat sat.", encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(result.data[0].embedding, abs=1e-6)


def test_messages_create_and_stream(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model=MODEL,
        max_tokens=12,
        system="Be brief.",
        messages=[{"role": "user", "content": "Say hello."}],
    )
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.input_tokens > 0
    with claude.messages.stream(
        model=MODEL, max_tokens=16, messages=[{"role": "user", "content": "Count to ten."}]
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1
    assert final.content[0].text == "".join(pieces)  # type: ignore[union-attr]
    assert 0 < final.usage.output_tokens <= 16


def test_messages_stop_sequences_are_reported(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model=MODEL,
        max_tokens=40,
        extra_body={"temperature": 0},  # this SDK release no longer takes it as an argument
        stop_sequences=[" 4"],
        messages=[{"role": "user", "content": "Count: 1 2 3 4 5 6"}],
    )
    if message.stop_reason == "stop_sequence":
        assert message.stop_sequence == " 4"
        assert " 4" not in message.content[0].text  # type: ignore[union-attr]


def test_messages_tool_use_round_trip(claude: anthropic.Anthropic) -> None:
    ask = {"role": "user", "content": "What is the weather in Oslo?"}
    first = claude.messages.create(
        model=MODEL,
        max_tokens=60,
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice={"type": "any"},
        messages=[ask],  # type: ignore[list-item]
    )
    assert first.stop_reason == "tool_use"
    [use] = [block for block in first.content if block.type == "tool_use"]
    assert use.name == "get_weather" and isinstance(use.input["city"], str)  # type: ignore[index]
    result = {"type": "tool_result", "tool_use_id": use.id, "content": "Sunny, 21 C"}
    with claude.messages.stream(
        model=MODEL,
        max_tokens=24,
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        messages=[
            ask,
            {"role": "assistant", "content": first.content},
            {"role": "user", "content": [result]},
        ],  # type: ignore[list-item]
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason in ("end_turn", "max_tokens", "tool_use")
    # A forced call streamed: its input arrives as input_json_delta events.
    with claude.messages.stream(
        model=MODEL,
        max_tokens=60,
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[ask],  # type: ignore[list-item]
    ) as stream:
        kinds = [event.type for event in stream]
        streamed = stream.get_final_message()
    assert "input_json" in kinds
    assert streamed.content[-1].type == "tool_use"


def test_messages_count_tokens(claude: anthropic.Anthropic) -> None:
    ask = [{"role": "user", "content": "Say hello."}]
    plain = claude.messages.count_tokens(model=MODEL, messages=ask)  # type: ignore[arg-type]
    with_tools = claude.messages.count_tokens(model=MODEL, messages=ask, tools=[WEATHER_TOOL])  # type: ignore[arg-type,list-item]
    message = claude.messages.create(model=MODEL, max_tokens=2, messages=ask)  # type: ignore[arg-type]
    assert plain.input_tokens == message.usage.input_tokens
    assert with_tools.input_tokens > plain.input_tokens


AUTH = {"authorization": f"Bearer {KEY}"}
USER = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/responses", {"model": MODEL}, 400, "input"),
        ("/responses", {"model": MODEL, "input": "x", "temperature": "hot"}, 400, "temperature"),
        ("/responses", {"model": "nope", "input": "x"}, 404, "model"),
        ("/messages", {"model": MODEL, "messages": USER}, 400, "max_tokens"),
        ("/messages", {"model": MODEL, "max_tokens": 4, "messages": "hi"}, 400, "messages"),
        ("/messages", {"model": "nope", "max_tokens": 4, "messages": USER}, 404, None),
        ("/messages/count_tokens", {"model": MODEL}, 400, "messages"),
        ("/embeddings", {"model": MODEL, "input": []}, 400, "input"),
        ("/embeddings", {"model": MODEL, "input": "x", "dimensions": 3}, 400, "dimensions"),
        ("/embeddings", {"model": "nope", "input": "x"}, 404, "model"),
    ],
)
def test_bad_requests_get_errors_naming_the_field(
    node: NodeProcess, path: str, body: dict[str, Any], status: int, param: str | None
) -> None:
    response = httpx.post(node.api_url + path, json=body, headers=AUTH, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()
    if path.startswith("/messages"):
        assert error["type"] == "error"
        message = error["error"]["message"]
        if param is not None:
            assert param in message
    else:
        assert error["error"]["param"] == param
        message = error["error"]["message"]
    if status == 404:
        assert f"served: {MODEL}" in message


@pytest.mark.parametrize("path", ["/responses", "/messages", "/embeddings"])
def test_bodies_over_max_body_get_413(node: NodeProcess, path: str) -> None:
    big = json.dumps({"model": MODEL, "input": "x" * (1024 * 1024), "max_tokens": 4})
    response = httpx.post(node.api_url + path, content=big, headers=AUTH, timeout=60)
    assert response.status_code == 413
    if path == "/messages":
        assert response.json()["error"]["type"] == "request_too_large"
    else:
        assert response.json()["error"]["code"] == "request_too_large"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/responses", {"model": MODEL, "input": "hi", "max_output_tokens": 2, "shiny": 1}),
        ("/messages", {"model": MODEL, "messages": USER, "max_tokens": 2, "shiny": 1}),
        ("/embeddings", {"model": MODEL, "input": "hi", "shiny": 1}),
    ],
)
def test_unknown_fields_are_reported_and_not_fatal(
    node: NodeProcess, path: str, body: dict[str, Any]
) -> None:
    response = httpx.post(node.api_url + path, json=body, headers=AUTH, timeout=60)
    assert response.status_code == 200
    assert response.headers["x-meshp2p-ignored-fields"] == "shiny"


def test_a_client_node_routes_the_agent_apis_over_the_mesh(
    node: NodeProcess, start_node: object, claude: anthropic.Anthropic
) -> None:
    invite = node.wait_for_line("invite: ").split(" ", 1)[1]
    client: NodeProcess = start_node(["--join", invite, "--client"]).wait_started()  # type: ignore[operator]
    wait_until(
        lambda: MODEL in httpx.get(client.api_url + "/models", timeout=5).text,
        30,
        "the client to learn the model",
    )
    host = node.wait_for_line("meshp2p ").split()[-1]
    via = openai.OpenAI(base_url=client.api_url, api_key="unused", max_retries=0, timeout=120)
    raw = via.responses.with_raw_response.create(model=MODEL, input="Say hi.", max_output_tokens=8)
    assert raw.headers["x-meshp2p-node"] == host
    assert raw.parse().output_text
    vectors = via.embeddings.create(model=MODEL, input=["a", "b"])
    assert len(vectors.data) == 2
    origin = client.api_url.removesuffix("/v1")
    remote = anthropic.Anthropic(base_url=origin, api_key="unused", max_retries=0, timeout=120)
    with remote.messages.stream(
        model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "Say hi."}]
    ) as stream:
        text = "".join(stream.text_stream)
    assert text
    count = remote.messages.count_tokens(
        model=MODEL, messages=[{"role": "user", "content": "Say hi."}]
    )
    assert (
        count.input_tokens
        == claude.messages.count_tokens(
            model=MODEL, messages=[{"role": "user", "content": "Say hi."}]
        ).input_tokens
    )
    # Errors validated by the host keep Anthropic's shape across the mesh too.
    bad = httpx.post(origin + "/v1/messages", json={"model": MODEL, "messages": USER}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"


def _node_command(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshp2p_cli", "--home", str(tmp_path), "node", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )


def test_a_node_on_a_public_host_without_a_key_refuses_to_start(tmp_path: Path) -> None:
    refused = _node_command(tmp_path, "--host", "0.0.0.0", "--standby")
    assert refused.returncode == 1
    [line] = refused.stderr.strip().splitlines()
    assert line.startswith("meshp2p: error: --host 0.0.0.0 opens the API to other machines")
    assert "--api-key" in line and "--no-api-key" in line
    both = _node_command(tmp_path, "--api-key", "K", "--no-api-key", "--standby")
    assert both.returncode == 1 and "--no-api-key contradicts --api-key" in both.stderr
    spaced = _node_command(tmp_path, "--api-key", "a b", "--standby")
    assert spaced.returncode == 1 and "without spaces" in spaced.stderr
