"""Benchmark: generation through a node's OpenAI gateway against llama-cpp-python called directly.

Run with ``make bench`` (or ``python tests/bench/bench_gateway.py``). In one run
it starts a real node process (one llama.cpp thread) and loads the same model
in this process (one thread), then alternates the two paths over the same
prompts and prints time to first token and decode speed with their ratios.
Results go to ``docs/benchmarks/gateway.json``, which ``docs/performance.md`` quotes.

Targets (issue 2): tokens/s ratio >= 0.97; time-to-first-token overhead <= 15 ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from _bench import machine, print_comparison, stop_all, write_result  # noqa: E402
from conftest import NodeProcess  # noqa: E402

from meshp2p.inference._models import DEFAULT_MODEL, ModelStore  # noqa: E402

PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a bicycle stays upright while it is moving, step by step.",
    "List the planets of the solar system and describe each in one sentence.",
    "Describe the water cycle to a ten year old child in simple words.",
    "What are the main differences between a violin and a cello?",
    "Give a recipe for a simple tomato soup with bread on the side.",
]


WORDS = [
    "apple",
    "river",
    "mountain",
    "cloud",
    "stone",
    "forest",
    "ocean",
    "desert",
    "garden",
    "castle",
    "bridge",
    "tower",
]


def _rate(times: list[float]) -> float:
    """Decode speed: chunks after the first over the time they took."""
    if len(times) < 2:
        return 0.0
    return (len(times) - 1) / (times[-1] - times[0])


def direct_run(
    llama: Any, prompt: str, max_tokens: int, bias: dict[int, float]
) -> dict[str, float]:
    start = time.perf_counter()
    times = []
    for chunk in llama.create_completion(
        prompt, max_tokens=max_tokens, temperature=0, stream=True, logit_bias=bias
    ):
        if chunk["choices"][0]["text"]:
            times.append(time.perf_counter())
    return {"ttft_ms": (times[0] - start) * 1000, "tok_s": _rate(times), "chunks": len(times)}


def gateway_run(
    http: httpx.Client, url: str, prompt: str, max_tokens: int, bias: dict[int, float]
) -> dict[str, float]:
    body = {
        "model": DEFAULT_MODEL,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "logit_bias": {str(k): v for k, v in bias.items()},
    }
    start = time.perf_counter()
    times = []
    with http.stream("POST", url + "/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[6:]).get("choices") or [{}]
            if choices[0].get("text"):
                times.append(time.perf_counter())
    return {"ttft_ms": (times[0] - start) * 1000, "tok_s": _rate(times), "chunks": len(times)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=len(PROMPTS))
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--ttft-rounds", type=int, default=30)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "gateway.json")
    args = parser.parse_args()

    from llama_cpp import Llama

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        model = ModelStore(home).ensure_default()
        llama = Llama(
            model_path=str(model.path), n_ctx=4096, n_threads=1, n_threads_batch=1, verbose=False
        )
        # Ban end-of-generation so both paths always make exactly max_tokens tokens.
        bias = {llama.token_eos(): -100.0}
        bias.update(
            {t: -100.0 for t in llama.tokenize(b"<end_of_turn>", add_bos=False, special=True)}
        )
        node = NodeProcess(home, ["--model", str(model.path)])
        try:
            node.wait_ready()
            with httpx.Client(timeout=120, trust_env=False) as http:
                # Warm both paths (page cache, first-call allocations).
                direct_run(llama, "Hello", 8, bias)
                gateway_run(http, node.api_url, "Hello", 8, bias)
                # Time to first token: many short, distinct prompts, so prompt
                # evaluation (noisy on a shared core) is a small part of it.
                ttft_direct: list[float] = []
                ttft_gateway: list[float] = []
                for i in range(args.ttft_rounds):
                    prompt = f"{WORDS[i % len(WORDS)]} number {i}"
                    runs = [
                        lambda p=prompt: ttft_direct.append(direct_run(llama, p, 2, {})["ttft_ms"]),
                        lambda p=prompt: ttft_gateway.append(
                            gateway_run(http, node.api_url, p, 2, {})["ttft_ms"]
                        ),
                    ]
                    # Alternate which path goes first so drift hits both alike.
                    for run in runs if i % 2 == 0 else reversed(runs):
                        run()
                # Decode speed: long generations with end-of-text banned.
                direct: list[dict[str, float]] = []
                gateway: list[dict[str, float]] = []
                for i in range(args.rounds):
                    prompt = PROMPTS[i % len(PROMPTS)]
                    if i % 2 == 0:
                        direct.append(direct_run(llama, prompt, args.max_tokens, bias))
                        gateway.append(
                            gateway_run(http, node.api_url, prompt, args.max_tokens, bias)
                        )
                    else:
                        gateway.append(
                            gateway_run(http, node.api_url, prompt, args.max_tokens, bias)
                        )
                        direct.append(direct_run(llama, prompt, args.max_tokens, bias))
        finally:
            stop_all([node])

    def med(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    result = {
        "benchmark": "gateway",
        "model": DEFAULT_MODEL,
        "threads": 1,
        "max_tokens": args.max_tokens,
        "rounds": args.rounds,
        "machine": machine(),
        "ttft_rounds": args.ttft_rounds,
        "direct": {"ttft_ms": statistics.median(ttft_direct), "tok_s": med(direct, "tok_s")},
        "gateway": {"ttft_ms": statistics.median(ttft_gateway), "tok_s": med(gateway, "tok_s")},
    }
    result["tok_s_ratio"] = result["gateway"]["tok_s"] / result["direct"]["tok_s"]
    result["ttft_overhead_ms"] = result["gateway"]["ttft_ms"] - result["direct"]["ttft_ms"]
    result["targets"] = {"tok_s_ratio": ">= 0.97", "ttft_overhead_ms": "<= 15"}
    result["pass"] = result["tok_s_ratio"] >= 0.97 and result["ttft_overhead_ms"] <= 15

    print_comparison(
        result,
        ("direct", "gateway"),
        ratio_target=0.97,
        latency_key="ttft_overhead_ms",
        latency_target=15,
    )
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
