"""libp2p transport-interop test app on meshp2p's host (https://github.com/libp2p/test-plans).

Settings come from the environment: ``IS_DIALER`` ("true"/"false"), ``REDIS_ADDR``
(host:port), ``TEST_KEY``, ``TRANSPORT`` ("tcp" or "quic-v1"), ``SECURE_CHANNEL``
("noise") and ``MUXER`` ("yamux") for tcp, optional ``LISTENER_IP`` (default 0.0.0.0)
and ``test_timeout_seconds`` (default 180). The host is the one a meshp2p node builds
(``meshp2p.transport.mesh_host``: its own Noise transport phase and yamux on TCP, its
own QUIC on qh3), or with ``PY_STACK=stock`` a stock py-libp2p host (py-libp2p's Noise,
yamux and aioquic-based QUIC), the peer a node must still talk to.

The listener ``RPUSH``es its multiaddr to ``{TEST_KEY}_listener_multiaddr`` and stays up
until it is killed (or the timeout passes). The dialer ``BLPOP``s it, dials, pings and
prints ``{"handshakePlusOneRTTMillis": X, "pingRTTMillis": Y}`` on stdout. The exit code
is the verdict (0 = pass); diagnostics go to stderr.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.host.ping import PingService
from libp2p.peer.peerinfo import info_from_p2p_addr

from meshp2p.transport import mesh_host


class AppError(Exception):
    """A failure with a one-line reason for stderr."""


# -- a tiny RESP client: just RPUSH and BLPOP -------------------------------------


class Redis:
    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._buf = b""

    @classmethod
    async def connect(cls, addr: str) -> Redis:
        host, _, port = addr.rpartition(":")
        if not host or not port.isdigit():
            raise AppError(f"REDIS_ADDR {addr!r} is not host:port")
        try:
            stream = await trio.open_tcp_stream(host, int(port))
        except OSError as exc:
            raise AppError(f"cannot connect to redis at {addr}: {exc}") from None
        return cls(stream)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def command(self, *args: str) -> object:
        out = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode()
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
        await self._stream.send_all(b"".join(out))
        return await self._reply()

    async def _line(self) -> bytes:
        while b"\r\n" not in self._buf:
            chunk = await self._stream.receive_some(65536)
            if not chunk:
                raise AppError("redis closed the connection")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\r\n")
        return line

    async def _exactly(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = await self._stream.receive_some(65536)
            if not chunk:
                raise AppError("redis closed the connection")
            self._buf += chunk
        data, self._buf = self._buf[:n], self._buf[n:]
        return data

    async def _reply(self) -> object:
        line = await self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise AppError(f"redis error: {rest.decode(errors='replace')}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = await self._exactly(n + 2)
            return data[:-2].decode()
        if kind == b"*":
            n = int(rest)
            if n < 0:
                return None
            return [await self._reply() for _ in range(n)]
        raise AppError(f"unexpected redis reply {line[:40]!r}")


# -- the app ------------------------------------------------------------------------


def _env(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if value is None or value == "":
        raise AppError(f"{name} is not set")
    return value


def _outbound_ip() -> str:
    """The address other hosts reach us on, when told to listen on 0.0.0.0."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent for a UDP connect
            return str(s.getsockname()[0])
        except OSError:
            return "127.0.0.1"


def _new_host(key_pair: KeyPair, listen: list[multiaddr.Multiaddr]) -> object:
    stack = os.environ.get("PY_STACK", "meshp2p")
    if stack == "stock":
        return new_host(key_pair=key_pair, listen_addrs=listen)
    if stack != "meshp2p":
        raise AppError(f"PY_STACK {stack!r} is not supported (meshp2p, stock)")
    return mesh_host(key_pair, listen)


def _make_host(transport: str, ip: str) -> tuple[object, list[multiaddr.Multiaddr]]:
    key_pair = create_new_key_pair()
    if transport == "tcp":
        security = _env("SECURE_CHANNEL")
        muxer = _env("MUXER")
        if security != "noise":
            raise AppError(f"SECURE_CHANNEL {security!r} is not supported (only noise)")
        if muxer != "yamux":
            raise AppError(f"MUXER {muxer!r} is not supported (only yamux)")
        listen = [multiaddr.Multiaddr(f"/ip4/{ip}/tcp/0")]
        host = _new_host(key_pair, listen)
    elif transport == "quic-v1":
        listen = [multiaddr.Multiaddr(f"/ip4/{ip}/udp/0/quic-v1")]
        host = _new_host(key_pair, listen)
    else:
        raise AppError(f"TRANSPORT {transport!r} is not supported (tcp, quic-v1)")
    return host, listen


_phase = "starting"


def _set_phase(text: str) -> None:
    """What the app is doing now, for the message when the timeout passes."""
    global _phase
    _phase = text


async def _listener(host: object, redis: Redis, key: str, ip: str, wait_s: float) -> None:
    # The host listens on LISTENER_IP; publish the address a dialer can reach.
    addrs = [str(a) for a in host.get_addrs()]  # type: ignore[attr-defined]
    if not addrs:
        raise AppError("the host has no listen address")
    publish_ip = _outbound_ip() if ip == "0.0.0.0" else ip
    addr = addrs[0].replace("/ip4/0.0.0.0/", f"/ip4/{publish_ip}/", 1)
    _set_phase("publishing the listen address to redis")
    await redis.command("RPUSH", f"{key}_listener_multiaddr", addr)
    print(f"listener: published {addr}", file=sys.stderr, flush=True)
    _set_phase("waiting for the dialer (nobody stopped this listener)")
    await trio.sleep(wait_s)


async def _dialer(host: object, redis: Redis, key: str, wait_s: float) -> dict[str, float]:
    _set_phase(f"waiting for the listener address in redis ({key}_listener_multiaddr)")
    reply = await redis.command("BLPOP", f"{key}_listener_multiaddr", str(max(1, int(wait_s))))
    if not isinstance(reply, list) or len(reply) != 2 or not isinstance(reply[1], str):
        raise AppError(f"no listener address in redis within {wait_s:g}s")
    target = reply[1]
    print(f"dialer: dialing {target}", file=sys.stderr, flush=True)
    info = info_from_p2p_addr(multiaddr.Multiaddr(target))
    ping = PingService(host)  # type: ignore[arg-type]

    _set_phase(f"dialing {target}")
    start = time.perf_counter()
    await host.connect(info)  # type: ignore[attr-defined]
    connected = time.perf_counter()
    _set_phase(f"pinging {target}")
    handshake_plus_rtt = ping_rtt = 0.0
    mark = start
    count = 0
    # One stream, two pings: the first completes handshake + one RTT, the second is the RTT.
    async for _ in ping.ping_iter(info.peer_id, ping_amt=2):
        now = time.perf_counter()
        if count == 0:
            handshake_plus_rtt = (now - start) * 1000
        else:
            ping_rtt = (now - mark) * 1000
        mark = now
        count += 1
    if count != 2:
        raise AppError(f"expected 2 pongs, got {count}")
    print(
        f"dialer: connected in {(connected - start) * 1000:.1f} ms, first pong after "
        f"{handshake_plus_rtt:.1f} ms",
        file=sys.stderr,
        flush=True,
    )
    return {"handshakePlusOneRTTMillis": handshake_plus_rtt, "pingRTTMillis": ping_rtt}


async def amain() -> int:
    is_dialer = _env("IS_DIALER").lower() == "true"
    redis_addr = _env("REDIS_ADDR", "redis:6379")
    key = _env("TEST_KEY")
    transport = _env("TRANSPORT")
    ip = _env("LISTENER_IP", "0.0.0.0")
    timeout = float(_env("test_timeout_seconds", "180"))
    host, listen = _make_host(transport, "127.0.0.1" if is_dialer and ip == "0.0.0.0" else ip)

    result: dict[str, float] | None = None
    with trio.fail_after(timeout):
        _set_phase(f"connecting to redis at {redis_addr}")
        redis = await Redis.connect(redis_addr)
        try:
            with trio.CancelScope() as shutdown:
                _set_phase("starting libp2p")
                async with host.run(listen_addrs=listen):  # type: ignore[attr-defined]
                    if not is_dialer:
                        await _listener(host, redis, key, ip, timeout)
                        raise AppError(f"no dialer finished within {timeout:g}s")
                    result = await _dialer(host, redis, key, timeout)
                    print(json.dumps(result), flush=True)
                    # The verdict is in; give closing the host a short while, no more.
                    _set_phase("closing the host")
                    shutdown.deadline = trio.current_time() + 2
        except Exception as exc:
            if result is None:
                raise
            print(f"py_app: ignoring an error while closing: {exc!r}", file=sys.stderr)
        finally:
            with trio.move_on_after(1) as cleanup:
                cleanup.shield = True
                await redis.aclose()
    return 0


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def main() -> int:
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if os.environ.get("DEBUG") else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        code = trio.run(amain)
    except AppError as exc:
        print(f"py_app: {exc}", file=sys.stderr, flush=True)
        code = 1
    except trio.TooSlowError:
        print(f"py_app: test_timeout_seconds passed while {_phase}", file=sys.stderr, flush=True)
        code = 1
    except KeyboardInterrupt:
        code = 130
    except BaseException as exc:
        leaves = _leaves(exc)
        app = [e for e in leaves if isinstance(e, AppError)]
        if app:
            print(f"py_app: {app[0]}", file=sys.stderr, flush=True)
        elif any(isinstance(e, trio.TooSlowError) for e in leaves):
            msg = f"test_timeout_seconds passed while {_phase}"
            print(f"py_app: {msg}", file=sys.stderr, flush=True)
        else:
            first = leaves[0] if leaves else exc
            msg = f"{_phase}: {type(first).__name__}: {first}"
            print(f"py_app: {msg}", file=sys.stderr, flush=True)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    # py-libp2p's background tasks can outlive the host; do not wait for them.
    os._exit(code)


if __name__ == "__main__":
    main()
