"""The planner in real nodes: a standby node takes on a hot model it holds on disk."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import NodeProcess, wait_until

pytestmark = pytest.mark.e2e

MODEL = "gemma-3-270m-Q4_K_M"
FAST = ["--plan-interval", "5"]


def hosts(node: NodeProcess) -> list[str]:
    data = httpx.get(node.api_url + "/models", timeout=10).json()["data"]
    return next((m["meshp2p"]["nodes"] for m in data if m["id"] == MODEL), [])


def test_a_standby_node_holding_the_file_takes_on_a_hot_model(
    start_node: object, model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    start = start_node  # type: ignore[assignment]
    a: NodeProcess = start(["--model", str(model_path), *FAST]).wait_ready()
    b_home = tmp_path_factory.mktemp("standby")
    (b_home / "models").mkdir()
    os.link(model_path, b_home / "models" / model_path.name)  # the same GGUF in its store
    token = a.wait_for_line("invite: ").split(" ", 1)[1]
    b: NodeProcess = start(["--join", token, *FAST], home=b_home).wait_started()
    b_id = b.status()["node_id"]
    assert b.status()["models_served"] == []
    assert (
        b.status()["planner"]["decision"] is None
        or b.status()["planner"]["decision"]["action"] == "stay"
    )

    stop = threading.Event()

    def load() -> None:  # ~60 requests a minute through A, far above the hot threshold (10)
        with httpx.Client(timeout=60) as http:
            while not stop.is_set():
                http.post(
                    a.api_url + "/completions",
                    json={"model": MODEL, "prompt": "Hi", "max_tokens": 1},
                )
                stop.wait(1.0)

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    try:
        wait_until(
            lambda: a.status()["demand"]["mesh"].get(MODEL, 0) >= 10, 60, "the model to be hot"
        )
        hot = time.monotonic()
        wait_until(
            lambda: b_id in hosts(a),
            4 * 5 + 10,  # four planning intervals, and the model's load time
            "the standby node to serve the hot model",
            describe=lambda: f"B planner {b.status()['planner']}; demand {a.status()['demand']}",
        )
        assert time.monotonic() - hot < 30
        # The node said why, once, at the default log level.
        taking = [line for line in b.stderr_lines if f"taking on {MODEL}" in line]
        assert len(taking) == 1 and "per host" in taking[0], b.stderr_lines
    finally:
        stop.set()
        loader.join(timeout=70)
