"""End to end: a real ``meshp2p node`` process, talked to with the official openai client."""

from __future__ import annotations

import concurrent.futures
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from conftest import NodeProcess, pid_alive, wait_until

pytestmark = pytest.mark.e2e

MODEL = "gemma-3-270m-Q4_K_M"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Iterator[NodeProcess]:
    proc = NodeProcess(tmp_path_factory.mktemp("api-node"), ["--model", str(model_path)])
    with proc.serving() as ready:
        yield ready


@pytest.fixture(scope="module")
def client(node: NodeProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=node.api_url, api_key="unused", max_retries=0, timeout=60)


def test_models_lists_the_served_model(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


def test_chat_completion_returns_text_and_usage(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=12,
        temperature=0,
    )
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage is not None
    assert reply.usage.prompt_tokens > 0
    assert 0 < reply.usage.completion_tokens <= 12
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_chat_stream_delivers_chunks_then_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count from one to ten."}],
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) > 1
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length")  # the answer may end at the next turn
    assert finishes[:-1] == [None] * (len(finishes) - 1)
    assert chunks[-1].choices == []
    usage = chunks[-1].usage
    assert usage is not None and 1 < usage.completion_tokens <= 16
    assert (usage.completion_tokens == 16) == (finishes[-1] == "length")


def test_completion_matches_llama_cpp_python(client: openai.OpenAI, model_path: Path) -> None:
    from meshp2p.inference._worker_child import load_model

    prompt = "The three primary colours are"
    reply = client.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0)
    # Loaded as the node loads it (CPU repacking off, one thread as NodeProcess starts it):
    # which repacked kernels llama.cpp picks depends on the CPU, and so do their last bits.
    direct = load_model(str(model_path), threads=1, ctx_size=4096)
    expected = direct.create_completion(prompt, max_tokens=24, temperature=0)
    assert reply.choices[0].text == expected["choices"][0]["text"]  # type: ignore[index]
    assert reply.usage is not None and reply.usage.completion_tokens == 24


def test_stop_and_seed_are_honoured(client: openai.OpenAI) -> None:
    reply = client.completions.create(
        model=MODEL, prompt="1, 2, 3, 4, 5,", max_tokens=30, temperature=0, stop=[" 8"]
    )
    assert " 8" not in reply.choices[0].text
    assert reply.choices[0].finish_reason == "stop"
    runs = {
        client.completions.create(
            model=MODEL, prompt="A story:", max_tokens=12, temperature=1.0, seed=42
        )
        .choices[0]
        .text
        for _ in range(2)
    }
    assert len(runs) == 1


def test_four_concurrent_requests_all_succeed(client: openai.OpenAI) -> None:
    def ask(i: int) -> str:
        reply = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"Write the number {i}."}],
            max_tokens=8,
        )
        return reply.choices[0].message.content or ""

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(ask, range(4)))
    assert len(answers) == 4 and all(answers)


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"{not json", 400, None),
        (json.dumps({"model": MODEL, "messages": []}).encode(), 400, "messages"),
        (
            json.dumps(
                {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "n": 2}
            ).encode(),
            400,
            "n",
        ),
        (
            json.dumps(
                {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "temperature": 9}
            ).encode(),
            400,
            "temperature",
        ),
        (
            json.dumps(
                {
                    "model": MODEL,
                    "messages": [{"role": "user", "content": "x"}],
                    "tools": [{"type": "function", "function": {"name": "f"}}],
                    "tool_choice": {"type": "function", "function": {"name": "g"}},
                }
            ).encode(),
            400,
            "tool_choice",
        ),
        (
            json.dumps(
                {"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}
            ).encode(),
            404,
            "model",
        ),
    ],
    ids=[
        "bad-json",
        "empty-messages",
        "n>1",
        "temperature",
        "tool-choice-unknown",
        "unknown-model",
    ],
)
def test_bad_requests_get_openai_errors(
    node: NodeProcess, body: bytes, status: int, param: str | None
) -> None:
    response = httpx.post(node.api_url + "/chat/completions", content=body, timeout=30)
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    if status == 404:
        assert MODEL in error["message"]


def test_unknown_model_error_through_openai_client(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert f"served: {MODEL}" in str(info.value)


def test_oversized_body_gets_413(node: NodeProcess) -> None:
    big = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "x" * (9 * 1024 * 1024)}]}
    )
    response = httpx.post(node.api_url + "/chat/completions", content=big, timeout=30)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_health_and_status(node: NodeProcess) -> None:
    health = httpx.get(node.api_url.removesuffix("/v1") + "/health", timeout=10).json()
    assert health["models"] == {MODEL: "ready"}
    status = node.status()
    assert status["node_id"].startswith("12D3KooW")
    assert status["api_url"] == node.api_url
    assert status["version"]
    assert [m["id"] for m in status["models_served"]] == [MODEL]


def test_client_disconnect_cancels_generation(node: NodeProcess) -> None:
    worker = node.status()["models_served"][0]
    health_url = f"http://127.0.0.1:{worker['port']}/health"
    body = {
        "model": MODEL,
        "prompt": "Write a very long essay about the sea.",
        "max_tokens": 3000,
        "stream": True,
        "temperature": 1.0,
        # Gemma's <eos> and <end_of_turn> banned: it would run to max_tokens.
        "logit_bias": {"1": -100, "106": -100},
    }
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", node.api_url + "/completions", json=body) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))
            assert http.get(health_url).json()["busy"] is True
    # 3000 tokens would take most of a minute; a cancelled request frees the model at once.
    wait_until(
        lambda: httpx.get(health_url, timeout=5).json()["busy"] is False,
        10,
        "the worker to stop generating",
    )


def test_killed_worker_gives_503_then_recovers(start_node: object, model_path: Path) -> None:
    node: NodeProcess = start_node(["--model", str(model_path)])  # type: ignore[operator]
    node.wait_ready()
    client = openai.OpenAI(base_url=node.api_url, api_key="x", max_retries=0, timeout=60)
    pid = node.status()["models_served"][0]["pid"]
    signal_child(pid, signal.SIGKILL)
    wait_until(
        lambda: node.status()["models_served"][0]["state"] != "ready",
        10,
        "the node to notice the dead worker",
    )
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 503
    assert MODEL in str(info.value)
    wait_until(
        lambda: node.status()["models_served"][0]["state"] == "ready", 60, "the worker to come back"
    )
    status = node.status()["models_served"][0]
    assert status["restarts"] == 1 and status["pid"] != pid
    assert "signal 9" in status["last_error"]
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert reply.choices[0].message.content is not None
    assert node.proc.poll() is None


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_node_cleanly_with_no_child_left(
    start_node: object, model_path: Path, sig: int
) -> None:
    node: NodeProcess = start_node(["--model", str(model_path)])  # type: ignore[operator]
    node.wait_ready()
    pid = node.status()["models_served"][0]["pid"]
    assert pid_alive(pid)
    started = time.monotonic()
    assert node.stop(sig) == 0
    assert time.monotonic() - started < 10
    wait_until(lambda: not pid_alive(pid), 5, "the worker child to exit")
    assert not any("Traceback" in line for line in node.stderr_lines)


def test_worker_exits_when_node_is_killed(start_node: object, model_path: Path) -> None:
    node: NodeProcess = start_node(["--model", str(model_path)])  # type: ignore[operator]
    node.wait_ready()
    pid = node.status()["models_served"][0]["pid"]
    node.kill()  # SIGKILL: no chance to clean up
    wait_until(lambda: not pid_alive(pid), 10, "the orphaned worker to exit")


def test_default_model_is_assembled_into_the_home_and_served_after_a_restart(
    start_node: object, tmp_path: Path
) -> None:
    start = start_node  # type: ignore[assignment]
    node: NodeProcess = start([], home=tmp_path).wait_ready()
    assert (tmp_path / "models" / "gemma-3-270m-q4_k_m.gguf").exists()
    assert [m["id"] for m in node.status()["models_served"]] == [MODEL]
    mesh_id = node.status()["mesh_id"]
    assert node.stop() == 0
    # The home now belongs to a mesh (no longer a new one): it serves what it served.
    again: NodeProcess = start([], home=tmp_path).wait_ready()
    assert [m["id"] for m in again.status()["models_served"]] == [MODEL]
    assert again.status()["mesh_id"] == mesh_id


def test_taken_port_is_a_one_line_error(
    node: NodeProcess, model_path: Path, tmp_path: Path
) -> None:
    port = node.api_url.rsplit(":", 1)[1].split("/")[0]
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "meshp2p"),
            "--home",
            str(tmp_path),
            "node",
            "--model",
            str(model_path),
            "--port",
            port,
            "--console-port",
            "0",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"meshp2p: error: port {port} on 127.0.0.1 is in use; stop the other process or pass --port"
    ]


def signal_child(pid: int, sig: int) -> None:
    import os

    os.kill(pid, sig)
