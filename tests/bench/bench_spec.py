"""Benchmark: speculative decoding against plain decoding, solo and split, in one run.

Run with ``make bench-spec`` (or ``python tests/bench/bench_spec.py``). The default
model answers copy-heavy prompts (rewrite a 60-line code file with one change; repeat
a JSON document with one field changed) and free-text prompts:

1. **solo**: one inference child with the model on this machine;
2. **split**: node A serves the model with ``--max-vram`` below its size and node B
   lends the memory for the rest, over ``/mesh/rpc-tensor`` (as ``make bench-split``).

Each prompt runs plain and speculative on the same loaded model, alternating, greedy
(the end of text banned, so every answer is ``--max-tokens`` long), and the texts must
be equal. Tokens/s is measured between the first and the last streamed token (not the
prompt). The split's round trips per generated token come from the tunnel's counter.
The last line: ``copy_ratio=X free_ratio=Y split_rt_per_token=Z``: median tokens/s
ratios speculative/plain over the copy-heavy and the free prompts (solo and split
together), and the split's round trips per token on the copy-heavy prompts with
speculation on. Results go to ``docs/benchmarks/spec.json``.

Targets (issue 19): copy_ratio >= 1.5, free_ratio >= 0.95, split_rt_per_token <= 0.5.
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
from bench_split import (  # noqa: E402
    BIAS,
    LISTEN,
    child,
    read_ready,
    start_mesh,
    tunnel_totals,
    wait_split,
)
from conftest import NodeProcess  # noqa: E402

from meshp2p.api._openai import parse_request  # noqa: E402
from meshp2p.inference._models import ModelStore  # noqa: E402


def _code_file() -> str:
    """A 60-line Python file: four lines of header, seven 8-line classes."""
    lines = ['"""Inventory helpers."""', "", "from dataclasses import dataclass", ""]
    for i in range(7):
        lines += [
            "@dataclass",
            f"class Item{i}:",
            "    name: str",
            f"    count: int = {i}",
            "",
            "    def total(self, price: float) -> float:",
            "        return price * self.count",
            "",
        ]
    return "\n".join(lines)


CODE = _code_file()
DOCUMENT = json.dumps(
    {
        "id": 4711,
        "name": "Ada Lovelace",
        "email": "ada@example.org",
        "roles": ["admin", "editor", "viewer"],
        "address": {"street": "12 St James's Square", "city": "London", "zip": "SW1Y 4JH"},
        "settings": {"theme": "dark", "language": "en-GB", "notifications": True},
        "projects": [{"id": n, "title": f"Engine {n}", "done": n % 2 == 0} for n in range(6)],
    },
    indent=2,
)
PROMPTS = {
    "copy": [
        "Here is a Python file:\n\n"
        + CODE
        + "\n\nThe same file, unchanged except that the default count of Item4 is 40:\n\n",
        "Here is a JSON document:\n\n"
        + DOCUMENT
        + '\n\nThe same document, unchanged except that "theme" is "light":\n\n',
    ],
    "free": [
        "Once upon a time, in a village at the edge of a great forest,",
        "The history of the printing press begins",
    ],
}


def generate(
    http: httpx.Client, port: int, prompt: str, max_tokens: int, speculative: bool
) -> dict[str, Any]:
    """One streamed greedy completion on an inference child: its text and tokens/s
    between the first and the last token."""
    body = {
        "model": "m",
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "logit_bias": BIAS,
    }
    request = json.loads(parse_request("completion", json.dumps(body).encode()).to_worker_json())
    request["speculative"] = speculative
    times: list[float] = []
    text: list[str] = []
    tokens = 0
    with http.stream(
        "POST", f"http://127.0.0.1:{port}/generate", content=json.dumps(request).encode()
    ) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[len("data: ") :])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices", []):
                if choice.get("text"):
                    times.append(time.perf_counter())
                    text.append(choice["text"])
    if len(times) < 2 or tokens < 2:
        raise RuntimeError(f"only {len(times)} chunks came back")
    # The first chunk carries the first token; the rest came after it.
    return {"text": "".join(text), "tokens": tokens, "tok_s": (tokens - 1) / (times[-1] - times[0])}


def measure(
    http: httpx.Client,
    port: int,
    rounds: int,
    max_tokens: int,
    on_copy_spec: Any = None,
) -> dict[str, Any]:
    """Per kind of prompt: tokens/s plain and speculative (alternating which goes first),
    and whether the texts were equal."""
    out: dict[str, Any] = {}
    for kind, prompts in PROMPTS.items():
        ratios: list[float] = []
        rows = []
        for r in range(rounds):
            for prompt in prompts:
                runs: dict[bool, dict[str, Any]] = {}
                for speculative in (r % 2 == 0, r % 2 != 0):
                    before = on_copy_spec() if (on_copy_spec and kind == "copy") else None
                    runs[speculative] = generate(http, port, prompt, max_tokens, speculative)
                    if before is not None and speculative:
                        after = on_copy_spec()
                        runs[speculative]["round_trips"] = after - before
                plain, fast = runs[False], runs[True]
                ratios.append(fast["tok_s"] / plain["tok_s"])
                rows.append(
                    {
                        "prompt": prompt[:40],
                        "plain_tok_s": round(plain["tok_s"], 2),
                        "spec_tok_s": round(fast["tok_s"], 2),
                        "same_text": plain["text"] == fast["text"],
                        "tokens": fast["tokens"],
                        **({"round_trips": fast["round_trips"]} if "round_trips" in fast else {}),
                    }
                )
        out[kind] = {"ratio": statistics.median(ratios), "runs": rows}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--threads-batch-idle",
        type=int,
        default=os.cpu_count() or 1,
        help="the solo child's batch threads while other processes leave cores idle "
        "(default: every core, as a node with one model; the split's nodes use their "
        "defaults)",
    )
    parser.add_argument("--skip-split", action="store_true", help="solo only")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "spec.json")
    args = parser.parse_args()

    result: dict[str, Any] = {
        "machine": machine(),
        "rounds": args.rounds,
        "max_tokens": args.max_tokens,
        "threads": args.threads,
        "threads_batch_idle": args.threads_batch_idle,
    }
    nodes: list[NodeProcess] = []
    children: list[subprocess.Popen[str]] = []
    with tempfile.TemporaryDirectory() as tmp, httpx.Client(timeout=600, trust_env=False) as http:
        base = Path(tmp)
        model = ModelStore(base / "store").ensure_default()
        try:
            solo = child(
                [
                    "meshp2p.inference._worker_child",
                    "--model-path",
                    str(model.path),
                    "--model-id",
                    "solo",
                    "--threads",
                    str(args.threads),
                    "--threads-batch-idle",
                    str(args.threads_batch_idle),
                ],
                base / "solo.log",
            )
            children.append(solo)
            port = read_ready(solo, "the solo inference child")["port"]
            generate(http, port, "Hello", 4, True)  # warm
            result["solo"] = measure(http, port, args.rounds, args.max_tokens)
            solo.stdin.close()  # type: ignore[union-attr]
            solo.wait(timeout=30)
            children.clear()

            if not args.skip_split:
                a, b = start_mesh(base, "split", model.path, True, LISTEN["tcp"])
                nodes += [a, b]
                served = wait_split(a)["models_served"][0]
                split_port = served["port"]
                generate(http, split_port, "Hello", 4, True)

                def trips() -> int:
                    return int(tunnel_totals(a.status())["round_trips"])

                result["split"] = measure(
                    http, split_port, args.rounds, args.max_tokens, on_copy_spec=trips
                )
                result["split_speculation"] = a.status()["models_served"][0].get("speculation")
        finally:
            stop_all(nodes)
            for proc in children:
                if proc.stdin:
                    proc.stdin.close()
                proc.terminate()
                proc.wait(timeout=10)

    paths = [p for p in ("solo", "split") if p in result]
    copy_ratios = [
        r["spec_tok_s"] / r["plain_tok_s"] for p in paths for r in result[p]["copy"]["runs"]
    ]
    free_ratios = [
        r["spec_tok_s"] / r["plain_tok_s"] for p in paths for r in result[p]["free"]["runs"]
    ]
    copy_ratio = statistics.median(copy_ratios)
    free_ratio = statistics.median(free_ratios)
    rt = None
    if "split" in result:
        runs = result["split"]["copy"]["runs"]
        rt = sum(r["round_trips"] for r in runs) / sum(r["tokens"] for r in runs)
    same = all(
        r["same_text"] for p in paths for k in ("copy", "free") for r in result[p][k]["runs"]
    )
    result.update(
        copy_ratio=copy_ratio,
        free_ratio=free_ratio,
        split_rt_per_token=rt,
        same_text=same,
        targets={"copy_ratio": 1.5, "free_ratio": 0.95, "split_rt_per_token": 0.5},
    )
    result["pass"] = copy_ratio >= 1.5 and free_ratio >= 0.95 and (rt is None or rt <= 0.5)

    print(f"{machine()}; {args.threads} thread(s), {args.rounds} rounds x {args.max_tokens} tokens")
    print(f"{'path':6} {'kind':5} {'plain':>7} {'spec':>7} {'ratio':>6}  same  prompt")
    for p in paths:
        for kind in ("copy", "free"):
            for r in result[p][kind]["runs"]:
                print(
                    f"{p:6} {kind:5} {r['plain_tok_s']:7.2f} {r['spec_tok_s']:7.2f} "
                    f"{r['spec_tok_s'] / r['plain_tok_s']:6.2f}  {r['same_text']!s:5} "
                    f"{r['prompt'][:30]!r}"
                )
    print(f"same text plain and speculative: {same}")
    write_result(args.out, result)
    shown_rt = f"{rt:.3f}" if rt is not None else "n/a"
    print(f"copy_ratio={copy_ratio:.3f} free_ratio={free_ratio:.3f} split_rt_per_token={shown_rt}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
