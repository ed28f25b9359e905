"""Benchmark: py-libp2p's stock TCP stack (noise + yamux) against meshp2p's lean one.

Run with ``python tests/bench/bench_stack.py``. Both ends live in one process on
loopback; for each stack it prints bulk MB/s on one stream (32 MiB in 64 KiB writes,
until the receiver confirms it has everything), the median round trip of a 64-byte
ping-pong on one open stream, and ours/stock ratios. Raw trio TCP is measured too, as
the floor. Results go to ``docs/benchmarks/stack.json``.
"""

from __future__ import annotations

import argparse
import functools
import logging
import statistics
import struct
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetStream
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import PeerInfo

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from _bench import machine, write_result  # noqa: E402

from meshp2p._noise import PROTOCOL_ID as NOISE_ID  # noqa: E402
from meshp2p._noise import NoiseTransport  # noqa: E402
from meshp2p._yamux import PROTOCOL_ID as YAMUX_ID  # noqa: E402
from meshp2p._yamux import Yamux, honour_muxer_opt  # noqa: E402

MiB = 1 << 20
CHUNK = 64 * 1024
PING = 64
SINK = TProtocol("/meshp2p/bench/sink/1")
ECHO = TProtocol("/meshp2p/bench/echo/1")
LISTEN = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]


@dataclass
class Pipe:
    send: Callable[[bytes], Awaitable[Any]]
    recv: Callable[[int], Awaitable[bytes]]
    close: Callable[[], Awaitable[Any]]


async def recv_exactly(pipe: Pipe, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        data = await pipe.recv(n - len(buf))
        if not data:
            raise EOFError(f"ended after {len(buf)} of {n} bytes")
        buf += data
    return bytes(buf)


async def serve_sink(pipe: Pipe) -> None:
    (total,) = struct.unpack(">Q", await recv_exactly(pipe, 8))
    got = 0
    while got < total:
        data = await pipe.recv(256 * 1024)
        if not data:
            return
        got += len(data)
    await pipe.send(b"K")


async def serve_echo(pipe: Pipe) -> None:
    try:
        while True:
            await pipe.send(await recv_exactly(pipe, PING))
    except Exception:
        pass


def _net_pipe(stream: INetStream) -> Pipe:
    async def recv(n: int) -> bytes:
        try:
            return await stream.read(n)
        except Exception:
            return b""

    return Pipe(stream.write, recv, stream.close)


def _host(fast: bool) -> IHost:
    key_pair = create_new_key_pair()
    if not fast:
        return new_host(key_pair=key_pair, listen_addrs=LISTEN)
    host = new_host(
        key_pair=key_pair,
        listen_addrs=LISTEN,
        muxer_opt={YAMUX_ID: Yamux},
        sec_opt={NOISE_ID: NoiseTransport(key_pair)},
    )
    honour_muxer_opt(host)
    return host


@asynccontextmanager
async def libp2p_pair(fast: bool) -> AsyncIterator[Callable[[bytes], Awaitable[Pipe]]]:
    server, client = _host(fast), _host(fast)

    async def sink(stream: INetStream) -> None:
        await serve_sink(_net_pipe(stream))
        await stream.close()

    async def echo(stream: INetStream) -> None:
        await serve_echo(_net_pipe(stream))
        await stream.close()

    async with server.run(listen_addrs=LISTEN), client.run(listen_addrs=LISTEN):
        server.set_stream_handler(SINK, sink)
        server.set_stream_handler(ECHO, echo)
        await client.connect(PeerInfo(server.get_id(), server.get_addrs()))

        async def open_(mode: bytes) -> Pipe:
            stream = await client.new_stream(server.get_id(), [SINK if mode == b"S" else ECHO])
            return _net_pipe(stream)

        yield open_


@asynccontextmanager
async def raw_pair() -> AsyncIterator[Callable[[bytes], Awaitable[Pipe]]]:
    def pipe(sock: trio.SocketStream) -> Pipe:
        return Pipe(sock.send_all, sock.receive_some, sock.aclose)

    async def handler(sock: trio.SocketStream) -> None:
        p = pipe(sock)
        mode = await recv_exactly(p, 1)
        await (serve_sink if mode == b"S" else serve_echo)(p)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]

        async def open_(mode: bytes) -> Pipe:
            p = pipe(await trio.open_tcp_stream("127.0.0.1", port))
            await p.send(mode)
            return p

        yield open_
        nursery.cancel_scope.cancel()


async def bulk(open_: Callable[[bytes], Awaitable[Pipe]], total: int) -> float:
    pipe = await open_(b"S")
    payload = b"\x5a" * CHUNK
    start = time.perf_counter()
    await pipe.send(struct.pack(">Q", total))
    for _ in range(total // CHUNK):
        await pipe.send(payload)
    if await recv_exactly(pipe, 1) != b"K":
        raise RuntimeError("receiver did not confirm")
    elapsed = time.perf_counter() - start
    await pipe.close()
    return total / elapsed / 1e6


async def rtt(open_: Callable[[bytes], Awaitable[Pipe]], rounds: int) -> float:
    pipe = await open_(b"E")
    msg = b"p" * PING
    samples = []
    for i in range(rounds + 20):
        start = time.perf_counter()
        await pipe.send(msg)
        await recv_exactly(pipe, PING)
        if i >= 20:  # warm-up
            samples.append(time.perf_counter() - start)
    await pipe.close()
    return statistics.median(samples) * 1e6


async def measure(name: str, factory: Any, total: int, rounds: int) -> dict[str, float]:
    with trio.fail_after(120):
        async with factory() as open_:
            await bulk(open_, 2 * MiB)  # warm-up
            mb_s = statistics.median([await bulk(open_, total) for _ in range(3)])
            us = await rtt(open_, rounds)
    print(f"{name:10} bulk {mb_s:8.1f} MB/s   rtt {us:7.0f} us", flush=True)
    return {"bulk_mb_s": mb_s, "rtt_us": us}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bulk-mib", type=int, default=32)
    parser.add_argument("--rtt-rounds", type=int, default=500)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "stack.json")
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # py-libp2p logs normal stream closes as errors
    total = args.bulk_mib * MiB

    async def everything() -> dict[str, dict[str, float]]:
        return {
            "raw-tcp": await measure("raw-tcp", raw_pair, total, args.rtt_rounds),
            "stock": await measure("stock", lambda: libp2p_pair(False), total, args.rtt_rounds),
            "ours": await measure("ours", lambda: libp2p_pair(True), total, args.rtt_rounds),
        }

    rows = trio.run(everything)
    raw, stock, ours = rows["raw-tcp"], rows["stock"], rows["ours"]
    print(
        f"ours/stock: bulk x{ours['bulk_mb_s'] / stock['bulk_mb_s']:.1f}, "
        f"rtt x{stock['rtt_us'] / ours['rtt_us']:.1f} faster; "
        f"ours/raw-tcp: bulk {ours['bulk_mb_s'] / raw['bulk_mb_s']:.2f}, "
        f"rtt {ours['rtt_us'] / raw['rtt_us']:.1f}x"
    )
    print(
        f"(MB = 10^6 bytes; bulk = median of 3 x {args.bulk_mib} MiB in {CHUNK // 1024} KiB "
        f"writes on one stream; rtt = median of {args.rtt_rounds} {PING}-byte round trips)"
    )
    write_result(args.out, {"machine": machine(), **rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
