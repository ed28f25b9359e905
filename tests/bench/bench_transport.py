"""Benchmark: the data plane's transports against raw trio TCP, all in one process on loopback.

Run with ``python tests/bench/bench_transport.py``. In one run it measures, for
raw trio TCP (the baseline), stock py-libp2p over TCP (its own Noise and yamux,
for reference), a node's host over TCP (meshp2p's Noise transport phase and
yamux), a node's host over QUIC, and "default" (two hosts built the way a node
builds its host, listening on QUIC and TCP, the client dialling the server's
whole address list as a node dials a peer it learned by gossip):

- bulk MB/s on one stream (32 MiB in 64 KiB writes, until the receiver has it all);
- the median round trip of a 64-byte ping-pong on one open stream;
- connection set-up: dial + first stream + one round trip, median of fresh connections;
- aggregate MB/s of 8 concurrent streams of 4 MiB each.

A slow transport gets smaller amounts (the output says so). For "default" it
records which transport each stream actually went over. Results go to
``docs/benchmarks/transport.json``. This only measures; it changes no transport.
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import socket
import statistics
import struct
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import PeerInfo

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from _bench import machine, write_result  # noqa: E402

from meshp2p.transport import mesh_host, transport_addrs  # noqa: E402

MiB = 1 << 20
CHUNK = 64 * 1024
PING = 64
SINK = TProtocol("/meshp2p/bench/sink/1")
ECHO = TProtocol("/meshp2p/bench/echo/1")
QUIC_ADDR = "/ip4/127.0.0.1/udp/0/quic-v1"
TCP_ADDR = "/ip4/127.0.0.1/tcp/0"
NAMES = ("raw-tcp", "stock-py-libp2p-tcp", "libp2p-tcp", "libp2p-quic", "default")
# Longest a single bulk or concurrent transfer may take before the size is cut.
TARGET_S = 10.0
DEFAULT_NOTE = (
    "default = hosts built like a node's (meshp2p.transport.mesh_host, listening on QUIC and "
    "TCP), the client dialling the server's whole address list in meshp2p's order: QUIC "
    "first, TCP if QUIC fails; one connection per peer, so every stream of a peer goes "
    "over the same transport (transport_used says which, per step)"
)


# -- one stream, whatever carries it ------------------------------------------


@dataclass
class Stream:
    send: Callable[[bytes], Awaitable[Any]]
    recv: Callable[[int], Awaitable[bytes]]
    close: Callable[[], Awaitable[Any]]
    transport: str


async def recv_exactly(stream: Stream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        data = await stream.recv(n - len(buf))
        if not data:
            raise EOFError(f"stream ended after {len(buf)} of {n} bytes")
        buf += data
    return bytes(buf)


async def serve_sink(stream: Stream) -> None:
    """Read an 8-byte length, then that many bytes; answer one byte when all arrived."""
    try:
        head = await recv_exactly(stream, 8)
        (total,) = struct.unpack(">Q", head)
        got = 0
        while got < total:
            data = await stream.recv(min(256 * 1024, total - got))
            if not data:
                return
            got += len(data)
        await stream.send(b"K")
    except Exception:
        pass
    finally:
        await _close_quietly(stream)


async def serve_echo(stream: Stream) -> None:
    """Send every 64-byte message straight back until the stream ends."""
    try:
        while True:
            await stream.send(await recv_exactly(stream, PING))
    except Exception:
        pass
    finally:
        await _close_quietly(stream)


async def _close_quietly(stream: Stream) -> None:
    with trio.move_on_after(2):
        try:
            await stream.close()
        except Exception:
            pass


# -- endpoints ----------------------------------------------------------------


@dataclass
class Endpoint:
    """A server and a client of one transport: open streams, make fresh connections."""

    name: str
    open: Callable[[bytes], Awaitable[Stream]]  # b"S" sink or b"E" echo
    fresh: Callable[[], Awaitable[tuple[Stream, float, Callable[[], Awaitable[None]]]]]
    info: dict[str, Any] = field(default_factory=dict)
    used: dict[str, int] = field(default_factory=dict)  # streams opened, by transport


@asynccontextmanager
async def raw_tcp() -> AsyncIterator[Endpoint]:
    async def handler(sock: trio.SocketStream) -> None:
        stream = _raw_stream(sock)
        try:
            mode = await recv_exactly(stream, 1)
        except Exception:
            await _close_quietly(stream)
            return
        await (serve_sink if mode == b"S" else serve_echo)(stream)

    async with trio.open_nursery() as nursery:
        serve = functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
        listeners = await nursery.start(serve)
        port = listeners[0].socket.getsockname()[1]

        async def open_(mode: bytes) -> Stream:
            stream = _raw_stream(await trio.open_tcp_stream("127.0.0.1", port))
            await stream.send(mode)
            ep.used["tcp"] = ep.used.get("tcp", 0) + 1
            return stream

        async def fresh() -> tuple[Stream, float, Callable[[], Awaitable[None]]]:
            start = time.perf_counter()
            stream = await open_(b"E")
            connected = time.perf_counter() - start
            return stream, connected, _nothing

        ep = Endpoint("raw-tcp", open_, fresh, {"note": "one TCP connection per stream"})
        yield ep
        nursery.cancel_scope.cancel()


async def _nothing() -> None:
    return None


def _raw_stream(sock: trio.SocketStream) -> Stream:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return Stream(sock.send_all, sock.receive_some, sock.aclose, "tcp")


def _transport_of(net_stream: Any) -> str:
    kind = type(getattr(net_stream, "muxed_conn", None)).__name__
    return {
        "QUICConnection": "quic",  # py-libp2p's (aioquic)
        "QuicConn": "quic",  # ours (qh3)
        "Yamux": "tcp",
        "Mplex": "tcp",
    }.get(kind, kind)


def _libp2p_stream(net_stream: Any) -> Stream:
    async def recv(n: int) -> bytes:
        try:
            return await net_stream.read(n)
        except Exception:  # QUIC raises at end of stream; treat every failure as EOF
            return b""

    return Stream(net_stream.write, recv, net_stream.close, _transport_of(net_stream))


@asynccontextmanager
async def libp2p(name: str, listen: list[str], stock: bool = False) -> AsyncIterator[Endpoint]:
    addrs = [multiaddr.Multiaddr(a) for a in listen]
    if stock:  # py-libp2p as it comes (its Noise and yamux): the reference for ours
        server, client = (new_host(create_new_key_pair(), listen_addrs=addrs) for _ in "sc")
    else:
        server = mesh_host(create_new_key_pair(), addrs)
        client = mesh_host(create_new_key_pair(), addrs)

    async def sink(net_stream: Any) -> None:
        await serve_sink(_libp2p_stream(net_stream))

    async def echo(net_stream: Any) -> None:
        await serve_echo(_libp2p_stream(net_stream))

    async with server.run(listen_addrs=addrs), client.run(listen_addrs=addrs):
        server.set_stream_handler(SINK, sink)
        server.set_stream_handler(ECHO, echo)
        peer = server.get_id()
        # As a node dials a peer: its whole address list, in meshp2p's preference order.
        info = PeerInfo(peer, transport_addrs(str(a) for a in server.get_addrs()))

        async def open_(mode: bytes) -> Stream:
            net_stream = await client.new_stream(peer, [SINK if mode == b"S" else ECHO])
            stream = _libp2p_stream(net_stream)
            ep.used[stream.transport] = ep.used.get(stream.transport, 0) + 1
            return stream

        async def fresh() -> tuple[Stream, float, Callable[[], Awaitable[None]]]:
            if client.get_network().connections.get(peer):
                await client.disconnect(peer)
            start = time.perf_counter()
            await client.connect(info)
            connected = time.perf_counter() - start
            stream = await open_(b"E")

            async def drop() -> None:
                await _close_quietly(stream)
                await client.disconnect(peer)

            return stream, connected, drop

        ep = Endpoint(
            name,
            open_,
            fresh,
            {"listen": listen, "server_addrs": [str(a) for a in server.get_addrs()]},
        )
        await client.connect(info)
        ep.info["connections"] = _connections(client, peer)
        yield ep


def _connections(host: Any, peer: Any) -> list[str]:
    """The transports of the client's open connections to ``peer``."""
    return [_transport_of(c) for c in host.get_network().connections.get(peer, [])]


# -- measurements -------------------------------------------------------------


async def send_bulk(ep: Endpoint, total: int) -> float:
    """Seconds from the first write until the receiver says it has all ``total`` bytes."""
    stream = await ep.open(b"S")
    payload = b"\x5a" * CHUNK
    try:
        start = time.perf_counter()
        await stream.send(struct.pack(">Q", total))
        left = total
        while left > 0:
            n = min(CHUNK, left)
            await stream.send(payload if n == CHUNK else payload[:n])
            left -= n
        if await recv_exactly(stream, 1) != b"K":
            raise RuntimeError("receiver did not confirm")
        return time.perf_counter() - start
    finally:
        await _close_quietly(stream)


def _pick(sizes: list[int], rate: float, budget_s: float) -> int:
    """The largest size that moves within ``budget_s`` at ``rate`` bytes/s."""
    for size in sizes:
        if size / rate <= budget_s:
            return size
    return sizes[-1]


async def measure_bulk(ep: Endpoint, row: dict[str, Any], full: int) -> None:
    probe = 2 * MiB
    probe_s = await send_bulk(ep, probe)  # also warms the path
    rate = probe / probe_s
    row["probe_mb_s"] = rate / 1e6
    total = _pick([full, full // 2, full // 4, full // 8, full // 16], rate, TARGET_S)
    runs = 3 if total / rate < 1.5 else 1
    times = [await send_bulk(ep, total) for _ in range(runs)]
    row["bulk_bytes"] = total
    row["bulk_runs"] = runs
    row["bulk_mb_s"] = total / statistics.median(times) / 1e6


async def measure_rtt(ep: Endpoint, row: dict[str, Any], rounds: int) -> None:
    stream = await ep.open(b"E")
    msg = b"p" * PING
    try:
        for _ in range(10):  # warm-up
            await stream.send(msg)
            await recv_exactly(stream, PING)
        samples = []
        for _ in range(rounds):
            start = time.perf_counter()
            await stream.send(msg)
            await recv_exactly(stream, PING)
            samples.append(time.perf_counter() - start)
    finally:
        await _close_quietly(stream)
    row["rtt_rounds"] = rounds
    row["rtt_us"] = statistics.median(samples) * 1e6
    row["rtt_p90_us"] = statistics.quantiles(samples, n=10)[-1] * 1e6


async def measure_setup(ep: Endpoint, row: dict[str, Any], rounds: int) -> None:
    msg = b"s" * PING
    total: list[float] = []
    connect: list[float] = []
    for _ in range(rounds):
        start = time.perf_counter()
        stream, connected, drop = await ep.fresh()
        await stream.send(msg)
        await recv_exactly(stream, PING)
        total.append(time.perf_counter() - start)
        connect.append(connected)
        await drop()
        await trio.sleep(0.05)
    row["setup_rounds"] = rounds
    row["setup_ms"] = statistics.median(total) * 1000
    row["setup_connect_ms"] = statistics.median(connect) * 1000
    row["setup_samples_ms"] = [round(t * 1000, 2) for t in total]


async def measure_concurrent(ep: Endpoint, row: dict[str, Any], streams: int, each: int) -> None:
    rate = row.get("bulk_mb_s", 0.0) * 1e6 or row.get("probe_mb_s", 1.0) * 1e6
    each = _pick([each, each // 2, each // 4, each // 8, each // 16], rate / streams, TARGET_S)
    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(streams):
            nursery.start_soon(send_bulk, ep, each)
    elapsed = time.perf_counter() - start
    row["concurrent_streams"] = streams
    row["concurrent_bytes_each"] = each
    row["concurrent_mb_s"] = streams * each / elapsed / 1e6


# -- the run ------------------------------------------------------------------


def endpoints() -> dict[str, Callable[[], Any]]:
    return {
        "raw-tcp": raw_tcp,
        "stock-py-libp2p-tcp": lambda: libp2p("stock-py-libp2p-tcp", [TCP_ADDR], stock=True),
        "libp2p-tcp": lambda: libp2p("libp2p-tcp", [TCP_ADDR]),
        "libp2p-quic": lambda: libp2p("libp2p-quic", [QUIC_ADDR]),
        "default": lambda: libp2p("default", [QUIC_ADDR, TCP_ADDR]),
    }


# Seconds each transport may take in all; the whole run stays under ~3 minutes.
BUDGET_S = {
    "raw-tcp": 20,
    "stock-py-libp2p-tcp": 40,
    "libp2p-tcp": 40,
    "libp2p-quic": 60,
    "default": 60,
}


async def run_one(name: str, factory: Callable[[], Any], args: argparse.Namespace) -> dict:
    row: dict[str, Any] = {"errors": {}, "transport_used": {}}
    steps: list[tuple[str, float, Callable[[Endpoint], Awaitable[None]]]] = [
        ("bulk", 30, lambda ep: measure_bulk(ep, row, args.bulk_mib * MiB)),
        ("rtt", 15, lambda ep: measure_rtt(ep, row, args.rtt_rounds)),
        (
            "concurrent",
            25,
            lambda ep: measure_concurrent(ep, row, args.streams, args.stream_mib * MiB),
        ),
        ("setup", 15, lambda ep: measure_setup(ep, row, args.setup_rounds)),
    ]
    print(f"-- {name}", flush=True)
    start = time.perf_counter()
    try:
        with trio.fail_after(BUDGET_S[name]):
            async with factory() as ep:
                row.update(ep.info)
                for step, limit, fn in steps:
                    before = dict(ep.used)
                    try:
                        with trio.fail_after(limit):
                            await fn(ep)
                    except Exception as exc:
                        row["errors"][step] = _describe(exc)
                        print(f"   {step} failed: {row['errors'][step]}", flush=True)
                    row["transport_used"][step] = {
                        k: v - before.get(k, 0) for k, v in ep.used.items() if v > before.get(k, 0)
                    }
    except Exception as exc:
        row["errors"]["transport"] = _describe(exc)
        print(f"   failed: {row['errors']['transport']}", flush=True)
    row["wall_s"] = round(time.perf_counter() - start, 1)
    return row


def _describe(exc: BaseException) -> str:
    """The first leaf of an exception (group), as one line."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, trio.TooSlowError):
        return "TooSlowError: timed out"
    return f"{type(exc).__name__}: {exc}"[:500]


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def _num(value: float | None, spec: str) -> str:
    return "nan" if value is None else format(value, spec)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bulk-mib", type=int, default=32)
    parser.add_argument("--rtt-rounds", type=int, default=200)
    parser.add_argument("--setup-rounds", type=int, default=5)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--stream-mib", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "transport.json")
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # py-libp2p logs normal stream closes as errors

    async def everything() -> dict[str, dict]:
        return {name: await run_one(name, f, args) for name, f in endpoints().items()}

    started = time.perf_counter()
    rows = trio.run(everything)
    wall = time.perf_counter() - started

    raw = rows["raw-tcp"]
    for row in rows.values():
        bulk, rtt = row.get("bulk_mb_s"), row.get("rtt_us")
        row["bulk_ratio"] = bulk / raw["bulk_mb_s"] if bulk and raw.get("bulk_mb_s") else None
        row["rtt_ratio"] = rtt / raw["rtt_us"] if rtt and raw.get("rtt_us") else None

    print()
    print(
        f"{'transport':12} {'bulk MB/s':>10} {'bulk MiB':>8} {'rtt us':>8} {'p90 us':>8} "
        f"{'setup ms':>9} {'connect ms':>10} {'8x MB/s':>8} {'8x MiB':>7}  streams opened over"
    )
    for name in NAMES:
        r = rows[name]
        each = r.get("concurrent_bytes_each")
        used: dict[str, int] = {}
        for counts in r.get("transport_used", {}).values():
            for k, v in counts.items():
                used[k] = used.get(k, 0) + v
        print(
            f"{name:12} {_fmt(r.get('bulk_mb_s'), '10.1f')} "
            f"{_fmt(r.get('bulk_bytes', 0) / MiB or None, '8g')} "
            f"{_fmt(r.get('rtt_us'), '8.0f')} {_fmt(r.get('rtt_p90_us'), '8.0f')} "
            f"{_fmt(r.get('setup_ms'), '9.1f')} {_fmt(r.get('setup_connect_ms'), '10.1f')} "
            f"{_fmt(r.get('concurrent_mb_s'), '8.1f')} {_fmt(each / MiB if each else None, '7g')}"
            f"  {', '.join(f'{k}: {v}' for k, v in used.items())}"
        )
    print(
        f"(MB = 10^6 bytes; bulk = one stream, {CHUNK // 1024} KiB writes, median of 3 runs when "
        f"a run takes < 1.5 s; rtt = median of {args.rtt_rounds} x {PING}-byte ping-pongs; "
        f"setup = median of {args.setup_rounds} fresh dial + stream + round trip; "
        f"8x = {args.streams} concurrent streams; sizes below {args.bulk_mib} / "
        f"{args.stream_mib} MiB were cut so one transfer takes <= ~{TARGET_S:g} s)"
    )
    print(DEFAULT_NOTE)
    for name in NAMES:
        r = rows[name]
        steps = r.get("transport_used", {})
        if len({k for counts in steps.values() for k in counts}) > 1:
            by_step = "; ".join(
                f"{step} " + ", ".join(f"{k} {v}" for k, v in counts.items())
                for step, counts in steps.items()
            )
            print(f"{name}: streams by step: {by_step}")
        if len(r.get("connections", [])) > 1:
            order = ["quic" if "/quic" in a else "tcp" for a in r.get("server_addrs", [])]
            print(
                f"{name}: connections open after one dial: {', '.join(r['connections'])}; "
                f"server advertised {' then '.join(order)}"
            )
    for name in NAMES:
        for step, err in rows[name]["errors"].items():
            print(f"error {name} {step}: {err}")
    print()
    for name in NAMES:
        r = rows[name]
        print(
            f"{name} bulk_ratio={_num(r['bulk_ratio'], '.4f')} "
            f"rtt_ratio={_num(r['rtt_ratio'], '.2f')} setup_ms={_num(r.get('setup_ms'), '.1f')}"
        )

    result = {
        "benchmark": "transport",
        "machine": machine(),
        "libp2p": _libp2p_version(),
        "wall_s": round(wall, 1),
        "mb": "10^6 bytes",
        "chunk_bytes": CHUNK,
        "ping_bytes": PING,
        "default_note": DEFAULT_NOTE,
        "transports": rows,
    }
    write_result(args.out, result)
    return 0


def _libp2p_version() -> str:
    from importlib.metadata import version

    return version("libp2p")


if __name__ == "__main__":
    sys.exit(main())
