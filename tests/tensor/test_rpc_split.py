"""Splitting a model's layers over llama.cpp RPC workers (the llama.cpp side of /mesh/rpc-tensor).

The end-to-end tests start real ``meshp2p.tensor._rpc_child`` workers and load the
default model in a separate probe process (``rpc_split_probe.py``), because
RPC registration is process-global and llama.cpp aborts the whole process
when a worker goes away.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Protocol

import psutil  # type: ignore[import-untyped]
import pytest

from meshp2p._errors import WorkerError
from meshp2p.inference._llamacpp import (
    LayerSplit,
    register_rpc_servers,
    rpc_endpoint_reachable,
    split_fractions,
    split_layers,
)
from meshp2p.tensor._rpc_child import free_port

PROBE = Path(__file__).with_name("rpc_split_probe.py")
PROMPTS = ["The capital of France is", "def fibonacci(n):"]
TIMEOUT = 60.0
N_LAYERS = 18  # gemma-3-270m
MIB = 1 << 20

_LAYER = re.compile(r"layer\s+(\d+) assigned to device (\w+),")
_MODEL_BUFFER = re.compile(r"(RPC\d+)\[([^\]]+)\] model buffer size =\s+([\d.]+) MiB")


class JsonLines:
    """A child process whose stdout is JSON lines, read by a thread into a queue."""

    def __init__(self, command: list[str], stderr: IO[str], stdin: int | None = None) -> None:
        self.proc = subprocess.Popen(
            command,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            # Without it a ggml abort runs gdb, which takes seconds and writes to stdout.
            env={**os.environ, "PYTHONUNBUFFERED": "1", "GGML_NO_BACKTRACE": "1"},
        )
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                self.events.put(json.loads(line))
        self.events.put(None)

    def wait_for(self, name: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next event called ``name``; fails when the process ends first or time runs out."""
        while True:
            try:
                event = self.events.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no {name!r} event within {timeout} s") from None
            if event is None:
                raise AssertionError(f"exited ({self.proc.wait()}) before a {name!r} event")
            if event["event"] == name:
                return event

    def all_until(self, name: str) -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        while (event := self.wait_for_any()) is not None and event["event"] != name:
            seen.append(event)
        return seen

    def wait_for_any(self, timeout: float = TIMEOUT) -> dict[str, Any] | None:
        return self.events.get(timeout=timeout)


class RpcWorker:
    def __init__(self, log: Path) -> None:
        self.log = log
        self.child = JsonLines(
            [sys.executable, "-m", "meshp2p.tensor._rpc_child", "--port", "0", "--threads", "1"],
            stderr=log.open("w"),
            stdin=subprocess.PIPE,
        )
        self.ready = self.child.wait_for("ready")
        self.endpoint: str = self.ready["endpoint"]
        self.process = psutil.Process(self.ready["pid"])

    def stop(self) -> int:
        """Close its stdin, as a parent that exits does; its exit status."""
        assert self.child.proc.stdin is not None
        self.child.proc.stdin.close()
        return self.child.proc.wait(timeout=10)


class StartWorker(Protocol):
    def __call__(self) -> RpcWorker: ...


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[StartWorker]:
    workers: list[RpcWorker] = []

    def start() -> RpcWorker:
        worker = RpcWorker(tmp_path / f"rpc-worker-{len(workers)}.log")
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        if worker.child.proc.poll() is None:
            worker.child.proc.kill()
            worker.child.proc.wait(timeout=10)


class Probe:
    def __init__(
        self, model: Path, log: Path, rpc: list[str], split: str, *extra: str, prompts: bool = True
    ) -> None:
        self.log = log
        command = [sys.executable, str(PROBE), "--model", str(model), "--split", split]
        for endpoint in rpc:
            command += ["--rpc", endpoint]
        for prompt in PROMPTS if prompts else []:
            command += ["--prompt", prompt]
        self.child = JsonLines([*command, *extra], stderr=log.open("w"))

    def finish(self) -> list[dict[str, Any]]:
        """The completions, once the probe has exited cleanly."""
        completions = [e for e in self.child.all_until("done") if e["event"] == "completion"]
        assert self.child.proc.wait(timeout=TIMEOUT) == 0, self.log.read_text()[-2000:]
        return completions

    def layers(self) -> dict[int, str]:
        """Where the load log says each layer went (layer 18 is the output layer's slot)."""
        return {int(n): dev for n, dev in _LAYER.findall(self.log.read_text())}

    def model_buffers(self) -> dict[str, float]:
        """MiB of weights on each RPC endpoint, from the load log."""
        return {ep: float(mib) for _, ep, mib in _MODEL_BUFFER.findall(self.log.read_text())}


@pytest.fixture(scope="module")
def solo_texts(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    log = tmp_path_factory.mktemp("solo") / "probe.log"
    return [c["text"] for c in Probe(model_path, log, [], "").finish()]


@pytest.mark.e2e
def test_rpc_worker_listens_on_loopback_only(start_worker: StartWorker) -> None:
    worker = start_worker()
    listening = [c for c in worker.process.net_connections("all") if c.status == "LISTEN"]
    assert [(c.laddr.ip, c.laddr.port) for c in listening] == [("127.0.0.1", worker.ready["port"])]
    assert rpc_endpoint_reachable(worker.endpoint)


@pytest.mark.e2e
def test_rpc_worker_exits_when_its_stdin_closes(start_worker: StartWorker) -> None:
    worker = start_worker()
    assert worker.stop() == 0


@pytest.mark.e2e
def test_split_completions_match_solo(
    start_worker: StartWorker, model_path: Path, tmp_path: Path, solo_texts: list[str]
) -> None:
    worker = start_worker()
    rss_before = worker.process.memory_info().rss
    probe = Probe(model_path, tmp_path / "split.log", [worker.endpoint], "11,7")
    loaded = probe.child.wait_for("loaded")
    rss_loaded = worker.process.memory_info().rss  # the probe holds the model: buffers live
    texts = [c["text"] for c in probe.finish()]

    assert texts == solo_texts
    assert all(texts)
    assert loaded["n_gpu_layers"] == 8 and loaded["tensor_split"] == [8.0]
    assert [(d["endpoint"], d["index"], d["name"]) for d in loaded["devices"]] == [
        (worker.endpoint, 0, "RPC0")
    ]
    layers = probe.layers()
    assert {n for n, dev in layers.items() if dev == "CPU"} == set(range(11))
    assert {n for n, dev in layers.items() if dev == "RPC0"} == set(range(11, 19))
    # Seven layers are ~25 MiB; the output matrix alone (tied to token_embd) is 170 MiB,
    # so a buffer under 100 MiB shows it stayed on the host despite its slot on RPC0.
    assert 10 < probe.model_buffers()[worker.endpoint] < 100
    assert "tensor token_embd.weight (170 MiB q8_0) buffer type overridden to CPU" in (
        probe.log.read_text()
    )
    assert rss_loaded - rss_before > 20 * MIB, "the worker never received the layers"


@pytest.mark.e2e
def test_tensor_split_follows_registration_order(
    start_worker: StartWorker, model_path: Path, tmp_path: Path, solo_texts: list[str]
) -> None:
    first, second = start_worker(), start_worker()
    probe = Probe(model_path, tmp_path / "split2.log", [first.endpoint, second.endpoint], "10,3,5")
    texts = [c["text"] for c in probe.finish()]

    assert texts == solo_texts
    layers = probe.layers()
    assert {n for n, dev in layers.items() if dev == "RPC0"} == {10, 11, 12}
    assert {n for n, dev in layers.items() if dev == "RPC1"} == {13, 14, 15, 16, 17, 18}
    buffers = probe.model_buffers()
    assert buffers[first.endpoint] < buffers[second.endpoint] < 100


@pytest.mark.e2e
def test_worker_death_aborts_only_the_process_using_it(
    start_worker: StartWorker, model_path: Path, tmp_path: Path
) -> None:
    worker = start_worker()
    probe = Probe(
        model_path,
        tmp_path / "killed.log",
        [worker.endpoint],
        "11,7",
        "--stream",
        "400",
        prompts=False,
    )
    probe.child.wait_for("token")
    worker.child.proc.kill()

    status = probe.child.proc.wait(timeout=TIMEOUT)
    assert status == -signal.SIGABRT  # llama.cpp's GGML_ABORT, not a Python exception
    assert "Remote RPC server crashed" in probe.log.read_text()
    # ...and this process, which never loaded llama.cpp's RPC client, is still here.


def test_unreachable_worker_is_refused_before_llama_cpp_connects() -> None:
    endpoint = f"127.0.0.1:{free_port()}"
    assert not rpc_endpoint_reachable(endpoint, timeout=1.0)
    with pytest.raises(WorkerError, match=f"not reachable: {endpoint}"):
        register_rpc_servers([endpoint])  # would abort this process if it got to llama.cpp


def test_split_fractions_follow_memory() -> None:
    assert split_fractions(6, [2, 4]) == [0.5, 1 / 6, 1 / 3]
    assert split_fractions(0, [5]) == [0.0, 1.0]
    with pytest.raises(ValueError):
        split_fractions(0, [0])
    with pytest.raises(ValueError):
        split_fractions(-1, [4])


def test_split_layers_gives_whole_layers_and_an_output_slot() -> None:
    plan = split_layers(N_LAYERS, split_fractions(11, [7]))
    assert plan == LayerSplit(host_layers=11, worker_layers=(7,))
    assert plan.n_gpu_layers == 8 and plan.tensor_split == [8.0]

    plan = split_layers(N_LAYERS, split_fractions(10, [3, 5]))
    assert plan.worker_layers == (3, 5) and plan.tensor_split == [3.0, 6.0]

    # Largest remainder: 10 layers over 3 equal nodes gives the spare layer to the host.
    assert split_layers(10, [1, 1, 1]) == LayerSplit(4, (3, 3))
    plan = split_layers(N_LAYERS, split_fractions(7, [3, 3, 3]))
    assert plan == LayerSplit(8, (4, 3, 3))  # 7.875, 3.375 x3: the first worker rounds up


def test_nothing_offloaded_means_a_solo_load() -> None:
    plan = split_layers(N_LAYERS, split_fractions(100, [1]))
    assert plan == LayerSplit(18, (0,))
    assert plan.n_gpu_layers == 0 and plan.tensor_split is None
