"""Benchmark: llama.cpp thread counts on a quiet machine and with one core busy elsewhere.

Run with ``make bench-threads`` (or ``python tests/bench/bench_threads.py``). For
each setting (generation threads / prompt threads) it loads the default model as
a node does and times, by medians over several rounds, a short chat of 16 tokens
and the evaluation of a ~500-token prompt, first on a quiet machine and then
while another process spins on one core. It prints each time as a ratio to the
quiet machine with every core, and writes ``docs/benchmarks/threads.json``, which
``docs/performance.md`` quotes.

llama.cpp's threads meet at a barrier for every layer: with as many threads as
cores, one core taken by another process makes every step wait for the thread
that lost its core, so a node's default leaves one core free
(``meshp2p.node._node.default_threads``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from _bench import machine, write_result  # noqa: E402

from meshp2p.inference._models import ModelStore  # noqa: E402

CHAT = "<bos>User: Count from one to twenty, one number per line.\nAssistant:"
LONG = "The history of the bicycle is long and full of inventors. " * 45


def _load(path: Path, gen: int, batch: int) -> Any:
    from llama_cpp import Llama

    from meshp2p.inference._llamacpp import split_model_params

    with split_model_params(cpu_repack=False):
        return Llama(
            model_path=str(path),
            n_ctx=1024,
            n_threads=gen,
            n_threads_batch=batch,
            verbose=False,
        )


def _chat_s(llama: Any, tokens: int) -> float:
    """A 16-token answer from a fresh cache: its short prompt, then the tokens."""
    prompt = llama.tokenize(CHAT.encode(), add_bos=False, special=True)
    llama.reset()
    started = time.perf_counter()
    for n, _ in enumerate(llama.generate(prompt, temp=0.0), start=1):
        if n >= tokens:
            break
    return time.perf_counter() - started


def _prompt_s(llama: Any) -> float:
    """Evaluating a long prompt (one batch decode per 512 tokens)."""
    tokens = llama.tokenize(LONG.encode(), add_bos=True, special=False)
    llama.reset()
    started = time.perf_counter()
    llama.eval(tokens)
    return time.perf_counter() - started


def _spinner() -> subprocess.Popen[bytes]:
    """Another process that keeps one core busy."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def measure(path: Path, gen: int, batch: int, rounds: int, tokens: int) -> dict[str, float]:
    llama = _load(path, gen, batch)
    _chat_s(llama, tokens)  # warm-up
    chat = statistics.median(_chat_s(llama, tokens) for _ in range(rounds))
    prompt = statistics.median(_prompt_s(llama) for _ in range(max(3, rounds // 2)))
    del llama
    return {"chat_s": round(chat, 4), "prompt_s": round(prompt, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks/threads.json")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    path = ModelStore(Path(tempfile.mkdtemp(prefix="bench-threads-"))).ensure_default().path
    settings = sorted({(cores, cores), (max(1, cores - 1), cores), (max(1, cores - 1),) * 2})
    rows: list[dict[str, Any]] = []
    for load in ("quiet", "one core busy"):
        spinner = _spinner() if load != "quiet" else None
        try:
            for gen, batch in reversed(settings):
                row = {"load": load, "gen_threads": gen, "prompt_threads": batch}
                row.update(measure(path, gen, batch, args.rounds, args.tokens))
                rows.append(row)
                print(row, flush=True)
        finally:
            if spinner is not None:
                spinner.kill()
                spinner.wait()
    base = next(r for r in rows if r["load"] == "quiet" and r["gen_threads"] == cores)
    header = ("load", "gen", "prompt", "chat s", "ratio", "prompt s", "ratio")
    print("\n{:14} {:>4} {:>6} {:>8} {:>6} {:>9} {:>6}".format(*header))
    for r in rows:
        r["chat_ratio"] = round(r["chat_s"] / base["chat_s"], 3)
        r["prompt_ratio"] = round(r["prompt_s"] / base["prompt_s"], 3)
        print(
            f"{r['load']:14} {r['gen_threads']:>4} {r['prompt_threads']:>6} {r['chat_s']:8.3f} "
            f"{r['chat_ratio']:6.2f} {r['prompt_s']:9.3f} {r['prompt_ratio']:6.2f}"
        )
    write_result(
        args.out,
        {
            "machine": machine(),
            "tokens": args.tokens,
            "rounds": args.rounds,
            "baseline": "quiet machine, every core for generation and prompt",
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
