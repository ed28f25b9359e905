"""Benchmark: requests routed through a passive client against the serving node directly.

Run with ``make bench-route`` (or ``python tests/bench/bench_route.py``). In one
run it starts a host serving the default model (one llama.cpp thread) and a
``--client`` node joined to it on loopback, then alternates streamed
completions sent to the host's own API and to the client's (which forwards
them over ``/mesh/route``). Each pair of prompts starts with different words so
neither path gains from the other's KV cache. Results go to
``docs/benchmarks/route.json``.

Targets (issue 4): tokens/s ratio >= 0.95; added time to first token <= 20 ms.
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
sys.path.insert(0, str(ROOT / "tests" / "bench"))

from _bench import machine, print_comparison, stop_all, write_result  # noqa: E402
from bench_gateway import PROMPTS, WORDS, gateway_run  # noqa: E402
from conftest import NodeProcess  # noqa: E402

from meshp2p.inference._models import DEFAULT_MODEL, ModelStore  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--ttft-rounds", type=int, default=30)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "route.json")
    args = parser.parse_args()

    nodes: list[NodeProcess] = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        model = ModelStore(base / "host").ensure_default()
        try:
            host = NodeProcess(base / "host", ["--model", str(model.path)])
            nodes.append(host.wait_ready())
            token = host.wait_for_line("invite: ").split(" ", 1)[1]
            client = NodeProcess(
                base / "client", ["--join", token, "--client", "--heartbeat-interval", "1"]
            )
            nodes.append(client.wait_started())
            deadline = time.monotonic() + 30
            while True:
                data = httpx.get(client.api_url + "/models", timeout=10).json()["data"]
                if any(m["id"] == DEFAULT_MODEL for m in data):
                    break
                if time.monotonic() > deadline:
                    raise SystemExit("the client never learned the host's model")
                time.sleep(0.1)
            # Gemma's <eos> (1) and <end_of_turn> (106) banned: both paths make max_tokens.
            bias = {1: -100.0, 106: -100.0}
            with httpx.Client(timeout=120, trust_env=False) as http:
                gateway_run(http, host.api_url, "Hello", 8, bias)
                gateway_run(http, client.api_url, "Hi there", 8, bias)
                ttft_direct: list[float] = []
                ttft_routed: list[float] = []
                for i in range(args.ttft_rounds):
                    mine = f"{WORDS[i % len(WORDS)]} number {i}"
                    theirs = f"{WORDS[(i + 5) % len(WORDS)]} number {i}"
                    pair = [
                        lambda p=mine: ttft_direct.append(
                            gateway_run(http, host.api_url, p, 2, {})["ttft_ms"]
                        ),
                        lambda p=theirs: ttft_routed.append(
                            gateway_run(http, client.api_url, p, 2, {})["ttft_ms"]
                        ),
                    ]
                    for run in pair if i % 2 == 0 else reversed(pair):
                        run()
                direct: list[float] = []
                routed: list[float] = []
                for i in range(args.rounds):
                    first = PROMPTS[i % len(PROMPTS)]
                    second = PROMPTS[(i + 3) % len(PROMPTS)]
                    pair = [
                        lambda p=first: direct.append(
                            gateway_run(http, host.api_url, p, args.max_tokens, bias)["tok_s"]
                        ),
                        lambda p=second: routed.append(
                            gateway_run(http, client.api_url, p, args.max_tokens, bias)["tok_s"]
                        ),
                    ]
                    for run in pair if i % 2 == 0 else reversed(pair):
                        run()
        finally:
            stop_all(nodes)

    result = {
        "benchmark": "route",
        "model": DEFAULT_MODEL,
        "threads": 1,
        "max_tokens": args.max_tokens,
        "rounds": args.rounds,
        "ttft_rounds": args.ttft_rounds,
        "machine": machine(),
        "direct": {
            "ttft_ms": statistics.median(ttft_direct),
            "tok_s": statistics.median(direct),
        },
        "routed": {
            "ttft_ms": statistics.median(ttft_routed),
            "tok_s": statistics.median(routed),
        },
    }
    result["tok_s_ratio"] = result["routed"]["tok_s"] / result["direct"]["tok_s"]
    result["ttft_added_ms"] = result["routed"]["ttft_ms"] - result["direct"]["ttft_ms"]
    result["targets"] = {"tok_s_ratio": ">= 0.95", "ttft_added_ms": "<= 20"}
    result["pass"] = result["tok_s_ratio"] >= 0.95 and result["ttft_added_ms"] <= 20
    print_comparison(
        result,
        ("direct", "routed"),
        ratio_target=0.95,
        latency_key="ttft_added_ms",
        latency_target=20,
    )
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
