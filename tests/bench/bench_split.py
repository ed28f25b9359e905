"""Benchmark: a split model through the mesh tunnel against llama.cpp RPC over direct TCP.

Run with ``make bench-split`` (or ``python tests/bench/bench_split.py``). In one run:

1. **mesh, file on the worker**: node A serves the default model with ``--max-vram``
   below its size; node B joins with the model file in its store and lends memory.
   A splits the model with B over ``/mesh/rpc-tensor`` (weights by reference).
2. **direct**: the same split (same layers on the same kind of worker) with llama.cpp
   connected straight to an RPC server on loopback TCP: an ``_rpc_child`` and an
   inference child started by this script with ``--rpc``.
3. **mesh, no file on the worker**: A and a fresh B' without the file: load by transfer.

Generation is measured on the inference children's own ``/generate`` endpoint on both
paths (no gateway), alternating rounds, each ``--max-tokens`` greedy tokens with the end
of text banned. Also: load time and bytes through the tunnel at load, with and without
the file, and bytes and round trips per generated token, and round trips per token on a
copy-heavy prompt with and without speculative decoding. Results go to
``docs/benchmarks/split.json``.

Target (issue 5): split-over-mesh tokens/s >= 0.90 of direct TCP. ``--transport``
picks what the nodes listen on (``tcp``, ``quic`` or ``both``, the default listen set).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "bench"))

from _bench import machine, stop_all, write_result  # noqa: E402
from conftest import NodeProcess, wait_until  # noqa: E402

from meshp2p.api._openai import parse_request  # noqa: E402
from meshp2p.inference._models import ModelStore  # noqa: E402

LISTEN = {
    "tcp": ["--listen", "/ip4/127.0.0.1/tcp/0"],
    "quic": ["--listen", "/ip4/127.0.0.1/udp/0/quic-v1"],
    "both": ["--listen", "/ip4/127.0.0.1/udp/0/quic-v1", "--listen", "/ip4/127.0.0.1/tcp/0"],
}
FAST = ["--heartbeat-interval", "1", "--dead-after", "4"]
BIAS = {"1": -100, "106": -100}  # gemma's <eos> and <end_of_turn>
WORDS = ["Once", "Long", "Far", "Deep", "High", "Under", "Beyond", "Every"]
#: A copy-heavy prompt, where speculative decoding verifies several tokens per decode.
COPY_PROMPT = (
    "Repeat this list exactly:\n\n"
    + "\n".join(
        f"{i}. item number {i}, colour {c}" for i, c in enumerate(["red", "green", "blue"] * 6)
    )
    + "\n\nThe same list:\n\n"
)


def generate(
    http: httpx.Client, port: int, prompt: str, max_tokens: int, speculative: bool = True
) -> dict[str, float]:
    """One streamed completion on an inference child: tokens/s between first and last."""
    body = {
        "model": "m",
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "logit_bias": BIAS,
    }
    request = json.loads(parse_request("completion", json.dumps(body).encode()).to_worker_json())
    request["speculative"] = speculative  # the worker's own switch (speculative decoding)
    times = []
    with http.stream(
        "POST", f"http://127.0.0.1:{port}/generate", content=json.dumps(request).encode()
    ) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: {") and '"text":""' not in line:
                times.append(time.perf_counter())
    if len(times) < 2:
        raise RuntimeError(f"only {len(times)} chunks came back")
    return {"tok_s": (len(times) - 1) / (times[-1] - times[0]), "tokens": len(times)}


def read_ready(proc: subprocess.Popen[str], what: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{what} exited ({proc.wait()}) before it was ready")
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("event") == "ready":
                return event  # type: ignore[no-any-return]
    raise RuntimeError(f"{what} not ready within {timeout} s")


def child(args: list[str], log: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "GGML_NO_BACKTRACE": "1", "GGML_RPC_NO_RDMA": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log.open("ab"),
        text=True,
        env=env,
    )


def pin(pids: set[int], core: int) -> None:
    """Keep ``pids`` and all their threads on one CPU core."""
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            os.sched_setaffinity(int(tid), {core})


def start_mesh(
    base: Path, name: str, model: Path, with_file: bool, listen: list[str]
) -> tuple[NodeProcess, NodeProcess]:
    a = NodeProcess(
        base / f"{name}-a", ["--model", str(model), "--max-vram", "230MB", *FAST, *listen]
    )
    a.wait_started()
    token = a.wait_for_line("invite: ").split(" ", 1)[1]
    home = base / f"{name}-b"
    (home / "models").mkdir(parents=True)
    if with_file:
        os.link(model, home / "models" / model.name)
    b = NodeProcess(home, ["--join", token, "--max-vram", "100MB", *FAST, *listen])
    b.wait_started()
    return a, b


def wait_split(a: NodeProcess) -> dict[str, Any]:
    def ready() -> bool:
        served = a.status()["models_served"][0]
        return bool(served["state"] == "ready" and a.status()["split"])

    wait_until(ready, 180, "the split to load", interval=0.2)
    return a.status()


def tunnel_totals(status: dict[str, Any]) -> dict[str, int]:
    (tunnel,) = status["tunnels"]
    return {k: tunnel[k] for k in ("bytes_sent", "bytes_received", "round_trips")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--transport", choices=sorted(LISTEN), default="tcp")
    parser.add_argument(
        "--pin",
        action="store_true",
        help="host processes on core 0, worker processes on core 1 (two one-core machines)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "split.json")
    args = parser.parse_args()
    listen = LISTEN[args.transport]

    nodes: list[NodeProcess] = []
    children: list[subprocess.Popen[str]] = []
    result: dict[str, Any] = {
        "machine": machine(),
        "transport": args.transport,
        "pinned": args.pin,
    }
    with tempfile.TemporaryDirectory() as tmp, httpx.Client(timeout=300, trust_env=False) as http:
        base = Path(tmp)
        model = ModelStore(base / "store").ensure_default()
        size = model.path.stat().st_size
        try:
            # 1. Mesh, worker holds the file.
            a, b = start_mesh(base, "ref", model.path, True, listen)
            nodes += [a, b]
            status = wait_split(a)
            served = status["models_served"][0]
            launch = served["launch"]
            loaded = tunnel_totals(status)
            result["by_reference"] = {
                "load_s": served["load_s"],
                "bytes_at_load": loaded["bytes_sent"],
                "share_of_file": loaded["bytes_sent"] / size,
            }
            split = status["split"]
            result["split"] = {
                "host_layers": split["host_layers"],
                "worker_layers": split["workers"][0]["layers"],
                "n_gpu_layers": launch["n_gpu_layers"],
                "tensor_split": launch["tensor_split"],
            }

            # 2. Direct TCP: the same split, llama.cpp straight to an RPC server.
            rpc = child(
                ["meshp2p.tensor._rpc_child", "--port", "0", "--threads", "1"], base / "rpc.log"
            )
            children.append(rpc)
            endpoint = read_ready(rpc, "the RPC server")["endpoint"]
            split_arg = ",".join(str(x) for x in launch["tensor_split"])
            direct = child(
                [
                    "meshp2p.inference._worker_child",
                    "--model-path",
                    str(model.path),
                    "--model-id",
                    "direct",
                    "--threads",
                    "1",
                    f"--rpc={endpoint}",
                    "--n-gpu-layers",
                    str(launch["n_gpu_layers"]),
                    "--tensor-split",
                    split_arg,
                ],
                base / "direct.log",
            )
            children.append(direct)
            direct_ready = read_ready(direct, "the direct-TCP inference child")
            result["direct"] = {"load_s": direct_ready["load_s"]}

            ports = {"mesh": served["port"], "direct": direct_ready["port"]}
            if args.pin:
                # One core per "machine": the host's processes on core 0, the worker's on
                # core 1, as if they were two one-core machines (both paths alike).
                lending = b.status()["lending"]
                pin({a.proc.pid, served["pid"], direct.pid}, 0)
                pin({b.proc.pid, rpc.pid, *(entry["pid"] for entry in lending)}, 1)
            for port in ports.values():  # warm both
                generate(http, port, "Hello", 8)
            rates: dict[str, list[float]] = {"mesh": [], "direct": []}
            before = tunnel_totals(a.status())
            mesh_tokens = 0
            for i in range(args.rounds):
                order = ["mesh", "direct"] if i % 2 == 0 else ["direct", "mesh"]
                for path in order:
                    run = generate(
                        http, ports[path], f"{WORDS[i % len(WORDS)]} upon a time", args.max_tokens
                    )
                    rates[path].append(run["tok_s"])
                    if path == "mesh":
                        mesh_tokens += int(run["tokens"])
            after = tunnel_totals(a.status())
            result["per_token"] = {
                "bytes_to_worker": (after["bytes_sent"] - before["bytes_sent"]) / mesh_tokens,
                "bytes_from_worker": (after["bytes_received"] - before["bytes_received"])
                / mesh_tokens,
                "round_trips": (after["round_trips"] - before["round_trips"]) / mesh_tokens,
            }
            # Round trips per token on a copy-heavy prompt, without and with speculation.
            result["speculation"] = {}
            for speculative in (False, True):
                start = tunnel_totals(a.status())["round_trips"]
                run = generate(http, ports["mesh"], COPY_PROMPT, args.max_tokens, speculative)
                trips = tunnel_totals(a.status())["round_trips"] - start
                result["speculation"]["on" if speculative else "off"] = {
                    "round_trips_per_token": trips / run["tokens"],
                    "tok_s": run["tok_s"],
                }
            for path in ("mesh", "direct"):
                result.setdefault(path, {})["tok_s"] = statistics.median(rates[path])
                result[path]["tok_s_runs"] = [round(r, 2) for r in rates[path]]
            stop_all(nodes)
            nodes.clear()

            # 3. Mesh, worker without the file: load by transfer.
            a, b = start_mesh(base, "transfer", model.path, False, listen)
            nodes += [a, b]
            status = wait_split(a)
            loaded = tunnel_totals(status)
            result["by_transfer"] = {
                "load_s": status["models_served"][0]["load_s"],
                "bytes_at_load": loaded["bytes_sent"],
                "share_of_file": loaded["bytes_sent"] / size,
            }
        finally:
            stop_all(nodes)
            for proc in children:
                if proc.stdin:
                    proc.stdin.close()
                proc.terminate()
                proc.wait(timeout=10)

    ratio = result["mesh"]["tok_s"] / result["direct"]["tok_s"]
    result["tok_s_ratio"] = ratio
    result["pass"] = ratio >= 0.90
    s = result["split"]
    print(
        f"split: host {s['host_layers']} layers, worker {s['worker_layers']}; "
        f"transport {args.transport}; {'pinned: host core 0, worker core 1; ' if args.pin else ''}"
        f"{machine()}"
    )
    print(f"{'path':8} {'tok/s':>7}  runs")
    for path in ("direct", "mesh"):
        print(f"{path:8} {result[path]['tok_s']:7.2f}  {result[path]['tok_s_runs']}")
    print(
        f"load: direct {result['direct']['load_s']:.2f} s; mesh by reference "
        f"{result['by_reference']['load_s']:.2f} s, {result['by_reference']['bytes_at_load']:,} B "
        f"({result['by_reference']['share_of_file']:.2%} of the file); mesh by transfer "
        f"{result['by_transfer']['load_s']:.2f} s, {result['by_transfer']['bytes_at_load']:,} B "
        f"({result['by_transfer']['share_of_file']:.2%})"
    )
    t = result["per_token"]
    print(
        f"per token: {t['bytes_to_worker']:,.0f} B to the worker, "
        f"{t['bytes_from_worker']:,.0f} B back, {t['round_trips']:.2f} round trips"
    )
    spec = result["speculation"]
    print(
        "copy-heavy prompt, round trips per token: "
        f"{spec['off']['round_trips_per_token']:.2f} plain ({spec['off']['tok_s']:.1f} tok/s), "
        f"{spec['on']['round_trips_per_token']:.2f} speculative ({spec['on']['tok_s']:.1f} tok/s)"
    )
    print(f"tok_s_ratio={ratio:.3f} (target >= 0.90)  {'PASS' if result['pass'] else 'MISS'}")
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
