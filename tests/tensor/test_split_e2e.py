"""Integration: a model bigger than its host, split with a worker over /mesh/rpc-tensor.

Real node processes on loopback. A serves the default model with ``--max-vram`` below
what it needs, B joins without a model and lends its memory. The greedy answers through
A's API must equal a solo node's, byte for byte.

The mesh listens on TCP only here: py-libp2p's QUIC moves ~2 MB/s on this machine
(see ``make bench-transport``), which would turn the by-transfer load into a minute.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import NodeProcess, wait_until

pytestmark = pytest.mark.e2e

DEFAULT = "gemma-3-270m-Q4_K_M"
FAST = ["--heartbeat-interval", "1", "--dead-after", "4"]
TCP = ["--listen", "/ip4/127.0.0.1/tcp/0"]
# 253 MB model: needs 278 MB; the embeddings alone need 196 MB on the host.
HOST_VRAM = ["--max-vram", "230MB"]
WORKER_VRAM = ["--max-vram", "100MB"]
PROMPTS = ["The capital of France is", "def fibonacci(n):"]
CHAT = [{"role": "user", "content": "Name three colours."}]
SPLIT_TIMEOUT = 90.0


def invite(node: NodeProcess) -> str:
    return node.wait_for_line("invite: ").split(" ", 1)[1]


def node_id(node: NodeProcess) -> str:
    return node.wait_for_line("meshp2p ").split()[-1]


def greedy(node: NodeProcess) -> list[str]:
    client = openai.OpenAI(base_url=node.api_url, api_key="x", max_retries=0, timeout=120)
    out = []
    for prompt in PROMPTS:
        reply = client.completions.create(
            model=DEFAULT, prompt=prompt, max_tokens=48, temperature=0
        )
        out.append(reply.choices[0].text)
    chat = client.chat.completions.create(
        model=DEFAULT,
        messages=CHAT,
        max_tokens=48,
        temperature=0,  # type: ignore[arg-type]
    )
    out.append(chat.choices[0].message.content or "")
    return out


@pytest.fixture(scope="module")
def solo_answers(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The same requests answered by a node that holds the whole model."""
    node = NodeProcess(tmp_path_factory.mktemp("solo"), ["--model", str(model_path), *TCP])
    try:
        node.wait_ready()
        return greedy(node)
    finally:
        node.stop()


def worker_home(tmp_path: Path, model_path: Path | None) -> Path:
    """A node home; with ``model_path``, the model file is in its store (a hard link)."""
    home = tmp_path / "worker-home"
    (home / "models").mkdir(parents=True)
    if model_path is not None:
        os.link(model_path, home / "models" / model_path.name)
    return home


def model_state(node: NodeProcess) -> dict[str, Any]:
    return node.status()["models_served"][0]  # type: ignore[no-any-return]


def split_ready(node: NodeProcess) -> bool:
    return model_state(node)["state"] == "ready" and node.status()["split"] is not None


def wait_split(a: NodeProcess, what: str) -> None:
    wait_until(
        lambda: split_ready(a),
        SPLIT_TIMEOUT,
        what,
        describe=lambda: (model_state(a), a.status()["placements"]),
    )


def start_split(
    start: Any, model_path: Path, b_home: Path, host_vram: str, worker_vram: str
) -> tuple[NodeProcess, NodeProcess]:
    a: NodeProcess = start(
        ["--model", str(model_path), "--max-vram", host_vram, *FAST, *TCP]
    ).wait_started()
    b: NodeProcess = start(
        ["--join", invite(a), "--max-vram", worker_vram, *FAST, *TCP], home=b_home
    )
    b.wait_started()
    wait_split(a, "A to load the model split with B")
    return a, b


def assert_split_with(
    a: NodeProcess, b: NodeProcess, worker_memory: int = 100_000_000
) -> dict[str, Any]:
    status = a.status()
    split = status["split"]
    assert split["model"] == DEFAULT and split["host"] == node_id(a)
    (worker,) = split["workers"]
    assert worker["id"] == node_id(b)
    assert worker["layers"] >= 1 and split["host_layers"] + worker["layers"] == 18
    assert worker["memory"] == worker_memory
    (tunnel,) = status["tunnels"]
    assert tunnel["worker"] == node_id(b) and tunnel["broken"] is None
    # B says it lends memory to A.
    lending = b.status()["lending"]
    assert [entry["host"] for entry in lending] == [node_id(a)]
    totals = b.status()["lending_totals"]
    assert totals["streams"] >= 1 and totals["bytes_received"] > 0 and totals["bytes_sent"] > 0
    return tunnel  # type: ignore[no-any-return]


def test_split_loads_by_reference_answers_as_solo_and_survives_its_worker(
    start_node: object, model_path: Path, tmp_path: Path, solo_answers: list[str]
) -> None:
    start = start_node  # type: ignore[assignment]
    b_home = worker_home(tmp_path, model_path)
    a: NodeProcess = start(["--model", str(model_path), *HOST_VRAM, *FAST, *TCP]).wait_started()

    # Alone, A cannot hold the model: 503, saying how much memory is missing.
    wait_until(lambda: model_state(a)["state"] == "waiting", 30, "A to wait for memory")
    refused = httpx.post(
        a.api_url + "/completions", json={"model": DEFAULT, "prompt": "hi"}, timeout=10
    )
    assert refused.status_code == 503
    assert "48.4 MB short" in refused.json()["error"]["message"]

    b: NodeProcess = start(["--join", invite(a), *WORKER_VRAM, *FAST, *TCP], home=b_home)
    b.wait_started()
    wait_split(a, "A to load the model split with B")
    tunnel = assert_split_with(a, b)
    size = model_path.stat().st_size
    # B has the file: the weights did not cross the mesh, only references to them.
    assert tunnel["bytes_sent"] <= size // 100, tunnel
    assert tunnel["files_by_reference"] and tunnel["uploads_by_reference"] >= 13 * 9
    assert tunnel["bytes_by_reference"] > 40_000_000, tunnel

    assert greedy(a) == solo_answers

    # B dies mid-stream: the client gets an error event promptly, A stays up.
    client = openai.OpenAI(base_url=a.api_url, api_key="x", max_retries=0, timeout=60)
    stream = client.completions.create(
        model=DEFAULT,
        prompt="Tell a long story.",
        max_tokens=2000,
        temperature=0,
        stream=True,
        logit_bias={"1": -100, "106": -100},  # no end of text: it runs until B dies
    )
    chunks = iter(stream)
    for _ in range(5):
        next(chunks)
    b.kill()
    killed = time.monotonic()
    with pytest.raises(openai.APIError) as failure:
        for _ in chunks:
            pass
    assert time.monotonic() - killed < 10
    assert "failed mid-answer" in str(failure.value)

    # A re-plans without B: too small alone, so 503 with what is missing.
    def unavailable() -> bool:
        r = httpx.post(a.api_url + "/completions", json={"model": DEFAULT, "prompt": "hi"})
        return r.status_code == 503 and "MB short" in r.json()["error"]["message"]

    wait_until(unavailable, 30, "A to report the model unavailable")
    assert a.proc.poll() is None

    # B comes back (same home, same node id): A splits with it again and answers.
    b2: NodeProcess = start(["--join", invite(a), *WORKER_VRAM, *FAST, *TCP], home=b_home)
    b2.wait_started()
    wait_split(a, "A to split with B again")
    assert greedy(a)[0] == solo_answers[0]


def test_split_loads_by_transfer_when_the_worker_lacks_the_file(
    start_node: object, model_path: Path, tmp_path: Path, solo_answers: list[str]
) -> None:
    # A host too small even for the embeddings it keeps (178 MB): every layer goes to B.
    a, b = start_split(start_node, model_path, worker_home(tmp_path, None), "150MB", "200MB")
    tunnel = assert_split_with(a, b, worker_memory=200_000_000)
    worker_layers = a.status()["split"]["workers"][0]["layers"]
    assert worker_layers == 18
    # The worker's layers crossed the mesh: about 3.9 MB of weights per layer.
    assert tunnel["files_by_reference"] == [] and tunnel["bytes_by_reference"] == 0
    assert tunnel["bytes_sent"] >= worker_layers * 3_500_000, tunnel
    assert greedy(a) == solo_answers
