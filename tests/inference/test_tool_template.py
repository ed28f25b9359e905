"""Tools and JSON output with a model whose chat template supports tools.

The default model has no template. We make a copy of it with a Hermes-style
template (gguf's own metadata tool), so the whole path runs on a real model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from conftest import NodeProcess

pytestmark = pytest.mark.e2e

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.fixture(scope="module")
def client(tool_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    node = NodeProcess(tmp_path_factory.mktemp("tool-node"), ["--model", str(tool_model)])
    try:
        node.wait_ready()
        yield openai.OpenAI(base_url=node.api_url, api_key="x", max_retries=0, timeout=120)
    finally:
        node.stop()


def test_engine_renders_tools_into_the_prompt(tool_model: Path) -> None:
    from llama_cpp import Llama

    from meshp2p.inference._engine import Engine

    engine = Engine(Llama(model_path=str(tool_model), n_ctx=1024, n_threads=1, verbose=False))
    assert engine.tools_supported
    prepared = engine.prepare(
        "chat",
        {"messages": [{"role": "user", "content": "Weather in Oslo?"}], "tools": [WEATHER]},
    )
    assert '"name": "get_weather"' in prepared.prompt_text
    assert prepared.tools


def test_model_lists_tool_support_and_accepts_tools(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="gemma-tools-Q4_K_M",
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="auto",
        max_tokens=24,
        temperature=0,
    )
    choice = reply.choices[0]
    # A base model rarely calls the tool; either way the answer is well formed.
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    if choice.finish_reason == "tool_calls":
        assert choice.message.tool_calls
    else:
        assert choice.message.content is not None


def test_json_object_response_format_constrains_output(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="gemma-tools-Q4_K_M",
        messages=[{"role": "user", "content": "Give me a JSON object about a cat."}],
        response_format={"type": "json_object"},
        max_tokens=48,
        temperature=0,
    )
    text = reply.choices[0].message.content or ""
    assert text.lstrip().startswith("{")
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
