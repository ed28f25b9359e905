"""Benchmark: what resuming an answer on another host costs (mid-stream failover).

Run with ``python tests/bench/bench_resume.py``. It loads the default model as a node
does, generates a greedy completion of N tokens, then resumes it from its first k tokens
(``Engine.generate(replay=...)``: the prompt in one batch, then one evaluation per
replayed token) and times until the next token, for several k; best of several rounds, the one least
disturbed by other work on the machine. It prints the replay time
as a ratio to generating the same tokens (plain decoding), measured in the same run, and writes
``docs/benchmarks/resume.json``, which ``docs/routing.md`` quotes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from _bench import machine, write_result  # noqa: E402

from meshp2p.inference._engine import Engine, Step  # noqa: E402
from meshp2p.inference._models import ModelStore  # noqa: E402

PARAMS = {"prompt": "The history of ships:", "temperature": 0, "logit_bias": {"1": -100}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks/resume.json")
    args = parser.parse_args()

    import llama_cpp

    path = ModelStore(Path(tempfile.mkdtemp())).ensure_default().path
    llama = llama_cpp.Llama(model_path=str(path), n_ctx=2048, n_threads=args.threads, verbose=False)
    # Plain decoding, one token per step, as the replay evaluates: the ratio is then the
    # cost of the replay's evaluations against that of decoding and sampling them.
    engine = Engine(llama, speculative=False)
    params: dict[str, Any] = {**PARAMS, "max_tokens": args.tokens + 1}
    cuts = [c for c in (25, 50, 100, 200, 400) if c <= args.tokens]
    generate: list[float] = []
    replay: dict[int, list[float]] = {c: [] for c in cuts}
    tokens: list[int] = []
    for _ in range(args.rounds):
        llama.reset()  # type: ignore[no-untyped-call]
        prepared = engine.prepare("completion", params)
        started = time.perf_counter()
        steps = [e for e in engine.generate(prepared, threading.Event(), steps=True)]
        generate.append(time.perf_counter() - started)
        tokens = [e.token for e in steps if isinstance(e, Step)]
        for cut in cuts:
            prepared = engine.prepare("completion", params)
            started = time.perf_counter()
            events = engine.generate(prepared, threading.Event(), replay=tokens[:cut], steps=True)
            next(e for e in events if isinstance(e, Step))
            replay[cut].append(time.perf_counter() - started)
            del events  # closes the generator: its sampler is freed at once
    per_token = min(generate) / len(tokens)
    rows = []
    for cut in cuts:
        took = min(replay[cut])
        ratio = took / (per_token * cut)
        rows.append({"replayed": cut, "resume_s": round(took, 3), "ratio": round(ratio, 2)})
        print(f"replay {cut:4d} tokens + 1: {took:6.2f} s  ({ratio:.2f} x generating them)")
    print(f"generating: {per_token * 1000:.1f} ms per token (best of {args.rounds})")
    write_result(
        args.out,
        {
            "machine": machine(),
            "threads": args.threads,
            "generate_ms_per_token": round(per_token * 1000, 1),
            "resume": rows,
        },
    )


if __name__ == "__main__":
    main()
