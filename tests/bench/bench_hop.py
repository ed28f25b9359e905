"""Benchmark: what one plain TCP relay process between llama.cpp and its RPC server costs.

Run with ``python tests/bench/bench_hop.py``. It starts three llama.cpp RPC servers
(``meshp2p.tensor._rpc_child``; each serves one client) and three inference children with the split
``make bench-split`` uses (14 layers on the RPC device): one connected straight to
the server, one through a relay process written on trio (what the node's tunnels
are built on), one through a relay process using a blocking thread per direction
(no event loop at all). The relays only copy bytes: no libp2p, no encryption, no
parsing. Generation is timed on the children's own ``/generate``, alternating,
128 greedy tokens per run; it prints tokens/s and the ratio to direct.

The mesh path has two such process hops (the host's tunnel, the worker's tunnel)
plus libp2p, so this bounds what ``make bench-split`` can show on this machine.
Results go to ``docs/benchmarks/hop.json``.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import httpx
import trio

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "bench"))

from _bench import machine, write_result  # noqa: E402
from bench_split import WORDS, child, generate, read_ready  # noqa: E402

from meshp2p.inference._models import ModelStore  # noqa: E402

LAYERS = "14"


# -- the relays (run as their own processes) -------------------------------------------


async def _trio_relay(host: str, port: int) -> None:
    async def pump(a: trio.SocketStream, b: trio.SocketStream) -> None:
        while data := await a.receive_some(1 << 16):
            await b.send_all(data)
        await b.send_eof()

    async def handle(client: trio.SocketStream) -> None:
        upstream = await trio.open_tcp_stream(host, port)
        async with client, upstream, trio.open_nursery() as nursery:
            nursery.start_soon(pump, client, upstream)
            nursery.start_soon(pump, upstream, client)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    print(listeners[0].socket.getsockname()[1], flush=True)
    await trio.serve_listeners(handle, listeners)


def _thread_relay(host: str, port: int) -> None:
    def pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(1 << 16):
                b.sendall(data)
            b.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    server = socket.create_server(("127.0.0.1", 0))
    print(server.getsockname()[1], flush=True)
    while True:
        client, _ = server.accept()
        upstream = socket.create_connection((host, port))
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
        threading.Thread(target=pump, args=(upstream, client), daemon=True).start()


def relay_main(kind: str, host: str, port: int) -> None:
    if kind == "trio":
        trio.run(_trio_relay, host, port)
    else:
        _thread_relay(host, port)


# -- the run ---------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument(
        "--relay", nargs=3, metavar=("KIND", "HOST", "PORT"), help=argparse.SUPPRESS
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "hop.json")
    args = parser.parse_args()
    if args.relay:
        relay_main(args.relay[0], args.relay[1], int(args.relay[2]))
        return 0

    procs: list[subprocess.Popen[str]] = []
    rates: dict[str, list[float]] = {"direct": [], "trio relay": [], "thread relay": []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            base = Path(tmp)
            model = ModelStore(base / "store").ensure_default().path
            # One RPC server per path: llama.cpp's serves one client connection at a time.
            targets: dict[str, str] = {}
            paths = (("direct", None), ("trio relay", "trio"), ("thread relay", "thread"))
            for name, kind in paths:
                rpc = child(
                    ["meshp2p.tensor._rpc_child", "--port", "0", "--threads", "1"],
                    base / f"rpc-{kind}.log",
                )
                procs.append(rpc)
                host, port = read_ready(rpc, "an RPC server")["endpoint"].rsplit(":", 1)
                if kind is None:
                    targets[name] = f"{host}:{port}"
                    continue
                relay = subprocess.Popen(
                    [sys.executable, __file__, "--relay", kind, host, port],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                procs.append(relay)
                assert relay.stdout is not None
                targets[name] = f"127.0.0.1:{int(relay.stdout.readline())}"
            ports: dict[str, int] = {}
            for name, target in targets.items():
                inference = child(
                    [
                        "meshp2p.inference._worker_child",
                        "--model-path",
                        str(model),
                        "--model-id",
                        "hop",
                        "--threads",
                        "1",
                        f"--rpc={target}",
                        "--n-gpu-layers",
                        LAYERS,
                        "--tensor-split",
                        f"{LAYERS}.0",
                    ],
                    base / f"{name}.log",
                )
                procs.append(inference)
                ports[name] = read_ready(inference, name)["port"]
            with httpx.Client(timeout=300, trust_env=False) as http:
                for port_ in ports.values():
                    generate(http, port_, "Hello", 8)  # warm
                names = list(ports)
                for i in range(args.rounds):
                    order = names[i % len(names) :] + names[: i % len(names)]
                    for name in order:
                        prompt = f"{WORDS[i % len(WORDS)]} upon a time"
                        rates[name].append(
                            generate(http, ports[name], prompt, args.max_tokens)["tok_s"]
                        )
    finally:
        for proc in procs:
            if proc.stdin:
                proc.stdin.close()
            proc.terminate()
            proc.wait(timeout=10)

    direct = statistics.median(rates["direct"])
    result: dict[str, Any] = {"machine": machine(), "layers_on_rpc": int(LAYERS)}
    print(f"{'path':13} {'tok/s':>7} {'ratio':>6}  runs")
    for name, runs in rates.items():
        median = statistics.median(runs)
        result[name] = {
            "tok_s": median,
            "ratio": median / direct,
            "runs": [round(r, 2) for r in runs],
        }
        print(f"{name:13} {median:7.2f} {median / direct:6.3f}  {result[name]['runs']}")
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
