"""A llama.cpp RPC worker process: lends this machine's CPU and memory to another node's model.

Run as ``python -m meshp2p.tensor._rpc_child --port 0 --cache-dir DIR --threads N``.
It starts llama.cpp's RPC server (``ggml_backend_rpc_start_server``) with the
CPU device on 127.0.0.1, prints one JSON line
``{"event": "ready", "port": N, "pid": ..., ...}`` on stdout, and exits when its
stdin closes, so it never outlives its parent, even after a ``kill -9``.

Security: llama.cpp's RPC server has no authentication and a history of
remote crash and code-execution bugs. It binds to 127.0.0.1 only and must
only ever be reached through meshp2p's authenticated tunnel; never expose it.

llama.cpp writes its own messages to stdout; they are sent to stderr here so
stdout holds only the ready line. The parent should send stderr to a log file
(a pipe nobody reads fills up and stalls the server). With ``--cache-dir`` the
server keeps a copy of every weight over 10 MiB it receives, named by its
FNV-1a hash, and loads it from there the next time instead of over the wire.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import socket
import sys
import threading
from pathlib import Path

from .._errors import WorkerError
from ..inference._llamacpp import ggml_libraries, rpc_endpoint_reachable
from ..inference._speculative import exact_kernels

HOST = "127.0.0.1"
_START_TIMEOUT = 10.0
_PORT_ATTEMPTS = 3


def free_port() -> int:
    """A loopback port nobody listens on right now (another process may take it first)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _listening(port: int) -> bool:
    return rpc_endpoint_reachable(f"{HOST}:{port}", timeout=1.0)


def start_server(port: int, cache_dir: Path | None, threads: int) -> threading.Thread | None:
    """Start the RPC server on ``HOST:port`` in a thread; the thread once it listens.

    None when the server gave up (its reason is on stderr), e.g. the port was taken.
    """
    if _listening(port):
        # Someone else's listener would answer the readiness check below.
        print(f"meshp2p-rpc-worker: {HOST}:{port} is in use", file=sys.stderr)
        return None
    libs = ggml_libraries()
    devices = (ctypes.c_void_p * 1)(libs.cpu_device())
    endpoint = f"{HOST}:{port}".encode()
    cache = str(cache_dir).encode() if cache_dir is not None else None
    server = threading.Thread(
        target=libs.rpc.ggml_backend_rpc_start_server,
        args=(endpoint, cache, threads, 1, devices),
        name="llama-rpc-server",
        daemon=True,
    )
    server.start()  # ctypes lets go of the GIL for the call, which never returns when it serves
    waited = 0.0
    while waited < _START_TIMEOUT:
        if _listening(port):
            return server
        server.join(0.02)  # wakes at once if the server gave up
        if not server.is_alive():
            return None
        waited += 0.02
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="meshp2p-rpc-worker", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    parser.add_argument(
        "--memory",
        type=int,
        default=None,
        help="bytes this worker offers (reported only: RPC v7 cannot cap or announce it)",
    )
    args = parser.parse_args(argv)
    # The host verifies speculative guesses in batches that must compute here what
    # one-token decodes compute (inference._speculative.exact_kernels).
    exact_kernels()
    if args.cache_dir is not None:
        args.cache_dir.mkdir(parents=True, exist_ok=True)

    # stdout is for the ready line alone; llama.cpp's printf output goes to stderr.
    ready_out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    try:
        libs = ggml_libraries()
        cpu = libs.cpu_device()
    except WorkerError as exc:
        print(f"meshp2p-rpc-worker: {exc}", file=sys.stderr)
        sys.exit(1)
    server = None
    port = args.port
    for _ in range(_PORT_ATTEMPTS if args.port == 0 else 1):
        port = args.port or free_port()
        server = start_server(port, args.cache_dir, args.threads)
        if server is not None:
            break
    if server is None:
        print(f"meshp2p-rpc-worker: could not listen on {HOST}:{port}", file=sys.stderr)
        sys.exit(1)

    def exit_when_server_stops() -> None:
        server.join()
        print("meshp2p-rpc-worker: the RPC server stopped", file=sys.stderr)
        os._exit(1)

    threading.Thread(target=exit_when_server_stops, daemon=True).start()
    free, total = libs.device_memory(cpu)
    ready = {
        "event": "ready",
        "port": port,
        "pid": os.getpid(),
        "endpoint": f"{HOST}:{port}",
        "device": libs.device_description(cpu),
        "memory": args.memory if args.memory is not None else free,
        "memory_free": free,
        "memory_total": total,
    }
    ready_out.write(json.dumps(ready) + "\n")
    ready_out.flush()

    # The parent holds our stdin; EOF means it is gone, so we go too. os._exit,
    # because the server thread is inside C code that never returns.
    try:
        while os.read(sys.stdin.fileno(), 4096):
            pass
    except (KeyboardInterrupt, OSError):
        pass
    os._exit(0)


if __name__ == "__main__":
    main()
