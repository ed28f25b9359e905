"""Benchmark: the effect of prompt-prefix affinity on time to first token.

Run with ``make bench-affinity`` (or ``python tests/bench/bench_affinity.py``).
Two hosts serve the default model; two passive clients join them, one routing
with prefix affinity (the default) and one with ``--no-prefix-affinity``.
Each client sends chats that alternate between two long system prompts, with a
new question every time. llama.cpp keeps one prompt's KV cache per model, so
the time to first token depends on whether the host just evaluated the same
system prompt. Results go to ``docs/benchmarks/affinity.json``.

The two system prompts are chosen (by the same rendezvous rule the router
uses) so that affinity sends them to different hosts, the case it is for; with
more distinct prefixes than hosts, prefixes sharing a host still evict each
other.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from _bench import machine, stop_all, write_result  # noqa: E402
from conftest import NodeProcess  # noqa: E402

from meshp2p.inference._models import DEFAULT_MODEL, ModelStore  # noqa: E402
from meshp2p.route._routing import Candidate, affinity_key, order_hosts  # noqa: E402

FILLER = "Answer briefly, politely and accurately, and never invent facts. " * 12


def system_prompt(k: int) -> str:
    return f"You are assistant number {k}. {FILLER}"


def first_host(prompt: str, hosts: list[str]) -> str:
    messages = [{"role": "system", "content": prompt}, {"role": "user", "content": "x"}]
    key = affinity_key("chat", {"messages": messages})
    return order_hosts([Candidate(h, 0, None) for h in hosts], key)[0].node_id


def ttft(http: httpx.Client, api: str, system: str, question: str) -> tuple[float, str]:
    body = {
        "model": DEFAULT_MODEL,
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": question},
        ],
        "max_tokens": 2,
        "temperature": 0,
        "stream": True,
    }
    start = time.perf_counter()
    first = None
    with http.stream("POST", api + "/chat/completions", json=body) as response:
        response.raise_for_status()
        node = response.headers["x-meshp2p-node"]
        for line in response.iter_lines():
            has_text = '"content":"' in line and '"content":""' not in line
            if first is None and line.startswith("data: {") and has_text:
                first = time.perf_counter() - start
    return (first if first is not None else time.perf_counter() - start) * 1000, node


def wait_for_hosts(client: NodeProcess, count: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        data = httpx.get(client.api_url + "/models", timeout=10).json()["data"]
        if any(m["id"] == DEFAULT_MODEL and len(m["meshp2p"]["nodes"]) == count for m in data):
            return
        time.sleep(0.1)
    raise SystemExit("the client never learned both hosts")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "affinity.json")
    args = parser.parse_args()
    nodes: list[NodeProcess] = []
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        model = ModelStore(base / "h1").ensure_default()
        try:
            h1 = NodeProcess(base / "h1", ["--model", str(model.path)])
            nodes.append(h1.wait_ready())
            token = h1.wait_for_line("invite: ").split(" ", 1)[1]
            h2 = NodeProcess(base / "h2", ["--join", token, "--model", str(model.path)])
            nodes.append(h2.wait_ready())
            hosts = [n.wait_for_line("meshp2p ").split()[-1] for n in (h1, h2)]
            prompts: dict[str, str] = {}
            k = 0
            while len(prompts) < 2:
                prompts.setdefault(first_host(system_prompt(k), hosts), system_prompt(k))
                k += 1
            pair = [prompts[hosts[0]], prompts[hosts[1]]]
            common = ["--join", token, "--client", "--heartbeat-interval", "1"]
            for name, extra in (
                ("without_affinity", ["--no-prefix-affinity"]),
                ("with_affinity", []),
            ):
                client = NodeProcess(base / name, [*common, *extra])
                nodes.append(client.wait_started())
                wait_for_hosts(client, 2)
                times: list[float] = []
                served: dict[str, int] = {}
                with httpx.Client(timeout=120, trust_env=False) as http:
                    for i in range(args.rounds * 2):
                        ms, node = ttft(http, client.api_url, pair[i % 2], f"Question {i}?")
                        if i >= 2:  # the first of each prompt is cold on every path
                            times.append(ms)
                        served[node] = served.get(node, 0) + 1
                results[name] = {"ttft_ms": statistics.median(times), "hosts_used": served}
                print(f"{name:18} ttft median {statistics.median(times):8.1f} ms  hosts {served}")
        finally:
            stop_all(nodes)
    on = float(results["with_affinity"]["ttft_ms"])  # type: ignore[arg-type]
    off = float(results["without_affinity"]["ttft_ms"])  # type: ignore[arg-type]
    result = {
        "benchmark": "affinity",
        "model": DEFAULT_MODEL,
        "rounds": args.rounds,
        "machine": machine(),
        **results,
        "speedup": off / on,
    }
    print(f"time to first token without / with affinity: {off / on:.1f}x")
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
