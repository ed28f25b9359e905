"""Loads a model split over llama.cpp RPC workers and prints greedy completions as JSON lines.

Run by ``test_rpc_split.py`` as a child process: registering RPC devices is
process-global and llama.cpp aborts the process when a worker goes away.
``--split HOST,W0,...`` gives the memory each node offers; without ``--rpc``
the model loads solo, with the same parameters otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from typing import Any

from meshp2p.inference._llamacpp import (
    register_rpc_servers,
    split_fractions,
    split_layers,
    split_model_params,
)


def emit(**event: object) -> None:
    print(json.dumps(event), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--rpc", action="append", default=[], help="worker endpoint host:port")
    parser.add_argument("--split", default="", help="memory per node: HOST,W0,W1...")
    parser.add_argument("--n-layers", type=int, default=18)
    parser.add_argument("--prompt", action="append", default=[])
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--stream", type=int, default=0, help="then stream this many tokens")
    args = parser.parse_args()

    n_gpu_layers, tensor_split, devices = 0, None, []
    if args.rpc:
        # Before llama_cpp is even imported: the libraries are found by soname,
        # so libllama later maps the same copies and sees these devices.
        devices = register_rpc_servers(args.rpc)
        memories = [int(m) for m in args.split.split(",")]
        plan = split_layers(args.n_layers, split_fractions(memories[0], memories[1:]))
        n_gpu_layers, tensor_split = plan.n_gpu_layers, plan.tensor_split

    from llama_cpp import Llama

    started = time.monotonic()
    with split_model_params(cpu_repack=False):
        llama = Llama(
            model_path=args.model,
            n_ctx=512,
            n_threads=1,
            n_threads_batch=1,
            n_gpu_layers=n_gpu_layers,
            tensor_split=tensor_split,
            seed=0,
            verbose=True,  # the load log on stderr says where each layer went
        )
    emit(
        event="loaded",
        load_s=round(time.monotonic() - started, 3),
        devices=[dataclasses.asdict(d) for d in devices],
        n_gpu_layers=n_gpu_layers,
        tensor_split=tensor_split,
    )
    for prompt in args.prompt:
        started = time.monotonic()
        out: Any = llama.create_completion(prompt, max_tokens=args.max_tokens, temperature=0.0)
        emit(
            event="completion",
            prompt=prompt,
            text=out["choices"][0]["text"],
            tokens=out["usage"]["completion_tokens"],
            seconds=round(time.monotonic() - started, 3),
        )
    if args.stream:
        chunks = llama.create_completion(
            "Tell a long story.", max_tokens=args.stream, temperature=0.0, stream=True
        )
        for n, _ in enumerate(chunks):
            emit(event="token", n=n)
    emit(event="done")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
