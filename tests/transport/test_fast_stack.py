"""meshp2p's lean yamux and Noise (meshp2p.transport._yamux and _noise) on real hosts and sockets.

Host tests run two py-libp2p hosts on loopback TCP, each with our stack or py-libp2p's stock
one, in every combination that matters: ours <-> ours, and ours <-> stock in both dialling
directions (the stock side runs py-libp2p's own Noise and Yamux, so these prove the wire
format). Protocol-violation tests drive one of our ``Yamux`` over a socket pair whose other
end the test writes raw frames to; Noise tampering goes through a relay that flips a bit.
"""

from __future__ import annotations

import hashlib
import random
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from libp2p import new_host
from libp2p.abc import IHost, IMuxedConn, INetStream, ISecureConn
from libp2p.connection_types import ConnectionType
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair, PrivateKey, PublicKey
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.io.trio import TrioTCPStream
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.network.stream.exceptions import StreamEOF, StreamReset
from libp2p.network.stream.net_stream import NetStream
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.security.noise.transport import Transport as StockNoiseTransport
from libp2p.stream_muxer.exceptions import MuxedConnUnavailable, MuxedStreamReset
from libp2p.stream_muxer.yamux.yamux import Yamux as StockYamux
from multiaddr import Multiaddr

from meshp2p.transport._noise import MAX_PLAINTEXT, NoiseDecryptError, NoiseSession, NoiseTransport
from meshp2p.transport._noise import PROTOCOL_ID as NOISE_ID
from meshp2p.transport._yamux import (
    FLAG_ACK,
    FLAG_RST,
    FLAG_SYN,
    GO_AWAY_PROTOCOL_ERROR,
    INITIAL_WINDOW,
    TYPE_DATA,
    TYPE_GO_AWAY,
    TYPE_PING,
    TYPE_WINDOW_UPDATE,
    Yamux,
    YamuxDeadlineExceeded,
    honour_muxer_opt,
)
from meshp2p.transport._yamux import PROTOCOL_ID as YAMUX_ID

TCP = Multiaddr("/ip4/127.0.0.1/tcp/0")
STEP = 15.0  # seconds any one step may take
MiB = 1 << 20
ECHO = TProtocol("/test/echo/1")
DIGEST = TProtocol("/test/digest/1")
SOURCE = TProtocol("/test/source/1")
HOLD = TProtocol("/test/hold/1")
HEADER = struct.Struct(">BBHII")


def pattern(n: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(n)


# -- hosts -------------------------------------------------------------------------------


def make_host(fast: bool) -> IHost:
    key_pair = create_new_key_pair()
    if not fast:
        return new_host(key_pair=key_pair, listen_addrs=[TCP])
    host = new_host(
        key_pair=key_pair,
        listen_addrs=[TCP],
        muxer_opt={YAMUX_ID: Yamux},
        sec_opt={NOISE_ID: NoiseTransport(key_pair)},
    )
    honour_muxer_opt(host)
    return host


async def read_all(stream: INetStream) -> bytes:
    out = bytearray()
    while True:
        try:
            data = await stream.read(1 << 20)
        except StreamEOF:
            return bytes(out)
        if not data:
            return bytes(out)
        out += data


async def read_exactly(stream: INetStream, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        data = await stream.read(n - len(out))
        assert data, f"stream ended after {len(out)} of {n} bytes"
        out += data
    return bytes(out)


async def close_write(stream: INetStream) -> None:
    """Half-close: send FIN, keep reading."""
    assert isinstance(stream, NetStream)
    await stream.close_write()


async def serve_echo(stream: INetStream) -> None:
    """Echo what arrives as it arrives; close once the client closed its side."""
    while True:
        try:
            data = await stream.read(1 << 16)
        except StreamEOF:
            break
        await stream.write(data)
    await stream.close()


async def serve_digest(stream: INetStream) -> None:
    """Read to EOF, then answer the byte count and sha256 of everything read."""
    data = await read_all(stream)
    await stream.write(struct.pack(">Q", len(data)) + hashlib.sha256(data).digest())
    await stream.close()


async def serve_source(stream: INetStream) -> None:
    """Read a length and a seed, send that many pattern bytes in uneven writes, close."""
    size, seed = struct.unpack(">QI", await read_exactly(stream, 12))
    data = pattern(size, seed)
    rng = random.Random(seed)
    pos = 0
    while pos < size:
        step = rng.choice((1, 1000, 65519, 65520, 1 << 16, 300_000, 1 << 20))
        await stream.write(data[pos : pos + step])
        pos += step
    await stream.close()


@asynccontextmanager
async def host_pair(client_fast: bool, server_fast: bool) -> AsyncIterator[tuple[IHost, IHost]]:
    server, client = make_host(server_fast), make_host(client_fast)
    async with server.run(listen_addrs=[TCP]), client.run(listen_addrs=[TCP]):
        server.set_stream_handler(ECHO, serve_echo)
        server.set_stream_handler(DIGEST, serve_digest)
        server.set_stream_handler(SOURCE, serve_source)
        with trio.fail_after(STEP):
            await client.connect(PeerInfo(server.get_id(), server.get_addrs()))
        yield client, server


def muxed_conn(host: IHost, peer: ID) -> IMuxedConn:
    conns = host.get_network().get_connections(peer)
    assert len(conns) == 1
    return conns[0].muxed_conn


COMBOS = [
    pytest.param(True, True, id="ours-ours"),
    pytest.param(True, False, id="ours-dials-stock"),
    pytest.param(False, True, id="stock-dials-ours"),
]


@pytest.mark.parametrize(("client_fast", "server_fast"), COMBOS)
async def test_stacks_interoperate_and_move_8_mib_exactly_both_ways(
    client_fast: bool, server_fast: bool
) -> None:
    async with host_pair(client_fast, server_fast) as (client, server):
        # Each side really runs the stack it was given (the stock one is py-libp2p's own).
        for host, fast, peer in ((client, client_fast, server), (server, server_fast, client)):
            conn = muxed_conn(host, peer.get_id())
            assert type(conn) is (Yamux if fast else StockYamux)
            secured = conn.secured_conn
            assert isinstance(secured, NoiseSession) == fast
            assert conn.get_remote_address() is not None
            assert conn.get_transport_addresses()
        data = pattern(8 * MiB)
        with trio.fail_after(60):
            # Client to server, in uneven writes (one bigger than a Noise message, one
            # bigger than a yamux frame), the answer compared by hash.
            stream = await client.new_stream(server.get_id(), [DIGEST])
            pos = 0
            for size in (1, 65519, 65520, 3 * MiB, 100_000, 8 * MiB):
                await stream.write(data[pos : pos + size])
                pos += size
            await close_write(stream)
            answer = await read_exactly(stream, 40)
            assert answer == struct.pack(">Q", len(data)) + hashlib.sha256(data).digest()
            # Server to client.
            stream = await client.new_stream(server.get_id(), [SOURCE])
            await stream.write(struct.pack(">QI", 8 * MiB, 11))
            assert await read_all(stream) == pattern(8 * MiB, 11)


@pytest.mark.parametrize(("client_fast", "server_fast"), COMBOS)
async def test_eight_concurrent_streams(client_fast: bool, server_fast: bool) -> None:
    async with host_pair(client_fast, server_fast) as (client, server):
        results: dict[int, bytes] = {}

        async def one(i: int) -> None:
            stream = await client.new_stream(server.get_id(), [DIGEST])
            data = pattern(1 * MiB + i * 1000, seed=i)
            for pos in range(0, len(data), 50_000):
                await stream.write(data[pos : pos + 50_000])
            await close_write(stream)
            answer = await read_exactly(stream, 40)
            assert answer == struct.pack(">Q", len(data)) + hashlib.sha256(data).digest()
            results[i] = answer

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for i in range(8):
                    nursery.start_soon(one, i)
        assert len(results) == 8


@pytest.mark.parametrize(("client_fast", "server_fast"), COMBOS)
async def test_ping_pong_of_200_small_messages(client_fast: bool, server_fast: bool) -> None:
    async with host_pair(client_fast, server_fast) as (client, server):
        with trio.fail_after(STEP):
            stream = await client.new_stream(server.get_id(), [ECHO])
            for i in range(200):
                msg = struct.pack(">I", i) * 16
                await stream.write(msg)
                assert await read_exactly(stream, len(msg)) == msg
            if client_fast:
                # 12.8 KB each way is far below half the window: no WINDOW_UPDATE was due,
                # everything read is still unannounced (multistream-select's bytes too).
                assert isinstance(stream, NetStream)
                muxed: Any = stream.muxed_stream
                assert muxed._unannounced >= 200 * 64
                assert muxed._recv_window + muxed._unannounced == muxed._window_max
            await close_write(stream)
            with pytest.raises(StreamEOF):
                await stream.read(1)


@pytest.mark.parametrize(("client_fast", "server_fast"), COMBOS)
async def test_half_close_peer_reads_eof_then_still_replies(
    client_fast: bool, server_fast: bool
) -> None:
    async with host_pair(client_fast, server_fast) as (client, server):
        with trio.fail_after(STEP):
            stream = await client.new_stream(server.get_id(), [DIGEST])
            await stream.write(b"question")
            await close_write(stream)
            # The server saw EOF (it only answers after it) and could still write.
            answer = await read_exactly(stream, 40)
            assert answer == struct.pack(">Q", 8) + hashlib.sha256(b"question").digest()
            with pytest.raises(StreamEOF):
                await stream.read(1)


@pytest.mark.parametrize(("client_fast", "server_fast"), COMBOS)
async def test_reset_is_seen_by_the_peer(client_fast: bool, server_fast: bool) -> None:
    async with host_pair(client_fast, server_fast) as (client, server):
        seen: list[str] = []
        got_data = trio.Event()
        done = trio.Event()

        async def hold(stream: INetStream) -> None:
            try:
                await stream.read(5)
                got_data.set()
                await stream.read(5)
                seen.append("data")
            except StreamReset:
                seen.append("reset")
            except Exception as exc:
                seen.append(f"{type(exc).__name__}: {exc}")
            done.set()

        server.set_stream_handler(HOLD, hold)
        with trio.fail_after(STEP):
            stream = await client.new_stream(server.get_id(), [HOLD])
            await stream.write(b"hello")
            await got_data.wait()
            await stream.reset()
            await done.wait()
        # py-libp2p's own Yamux drops a stream's state on RST and then reports EOF.
        assert seen == (["reset"] if server_fast else ["StreamEOF: "])


@pytest.mark.parametrize(("client_fast", "server_fast"), COMBOS)
async def test_server_reset_fails_the_clients_read(client_fast: bool, server_fast: bool) -> None:
    async def reset_at_once(stream: INetStream) -> None:
        await stream.read(1)
        await stream.reset()

    async with host_pair(client_fast, server_fast) as (client, server):
        server.set_stream_handler(HOLD, reset_at_once)
        with trio.fail_after(STEP):
            stream = await client.new_stream(server.get_id(), [HOLD])
            await stream.write(b"x")
            # py-libp2p's own Yamux (stock client) reports a peer's RST as EOF.
            with pytest.raises(StreamReset if client_fast else (StreamReset, StreamEOF)):
                await stream.read(1)


async def test_closing_a_connection_ends_the_peers_streams() -> None:
    async with host_pair(True, True) as (client, server):
        with trio.fail_after(STEP):
            stream = await client.new_stream(server.get_id(), [ECHO])
            await stream.write(b"ping")
            assert await read_exactly(stream, 4) == b"ping"
            conn = muxed_conn(server, client.get_id())
            await conn.close()
            assert conn.is_closed
            with pytest.raises((StreamReset, StreamEOF)):
                await stream.read(1)
            client_conn: Any = stream.muxed_conn
            await client_conn.event_closed.wait()
            assert not client.get_network().get_connections(server.get_id())


# -- yamux against crafted frames --------------------------------------------------------


class PlainConn(ISecureConn):
    """A plaintext stand-in for a secured connection: yamux frames go straight to a socket."""

    def __init__(self, stream: trio.SocketStream, initiator: bool) -> None:
        self.stream = stream
        self.is_initiator = initiator
        key_pair = create_new_key_pair()
        self._key_pair = key_pair
        self._peer = ID.from_pubkey(key_pair.public_key)

    async def read(self, n: int | None = None) -> bytes:
        try:
            return await self.stream.receive_some(n or 65536)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return b""

    async def write(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def close(self) -> None:
        await self.stream.aclose()

    def get_remote_address(self) -> tuple[str, int] | None:
        return None

    def get_transport_addresses(self) -> list[Multiaddr]:
        return []

    def get_connection_type(self) -> ConnectionType:
        return ConnectionType.DIRECT

    def get_local_peer(self) -> ID:
        return self._peer

    def get_local_private_key(self) -> PrivateKey:
        return self._key_pair.private_key

    def get_remote_peer(self) -> ID:
        return self._peer

    def get_remote_public_key(self) -> PublicKey:
        return self._key_pair.public_key


class RawPeer:
    """The far end of a socket pair: writes and reads raw yamux frames."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def send(self, typ: int, flags: int, sid: int, length: int, body: bytes = b"") -> None:
        await self.stream.send_all(HEADER.pack(0, typ, flags, sid, length) + body)

    async def frame(self) -> tuple[int, int, int, int, bytes]:
        """The next frame (type, flags, stream, length, body); EOFError at the end."""
        while True:
            if len(self.buf) >= 12:
                _, typ, flags, sid, length = HEADER.unpack_from(self.buf)
                size = 12 + (length if typ == TYPE_DATA else 0)
                if len(self.buf) >= size:
                    body = bytes(self.buf[12:size])
                    del self.buf[:size]
                    return typ, flags, sid, length, body
            data = await self.stream.receive_some(1 << 16)
            if not data:
                raise EOFError("yamux side closed the connection")
            self.buf += data

    async def frame_of(self, typ: int) -> tuple[int, int, int, int, bytes]:
        while True:
            frame = await self.frame()
            if frame[0] == typ:
                return frame


@asynccontextmanager
async def raw_yamux(
    receive_window: int = 16 * MiB,
    send_window_timeout: float = 60.0,
    window_budget: int = 128 * MiB,
) -> AsyncIterator[tuple[Yamux, RawPeer]]:
    """Our Yamux as the responder over a socket pair; the test is the initiator."""
    ours, theirs = trio.socket.socketpair()
    mux = Yamux(
        PlainConn(trio.SocketStream(ours), False),
        ID(b"raw-peer"),
        receive_window=receive_window,
        send_window_timeout=send_window_timeout,
        window_budget=window_budget,
    )
    peer = RawPeer(trio.SocketStream(theirs))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(mux.start)
        with trio.fail_after(STEP):
            await mux.event_started.wait()
        yield mux, peer
        with trio.fail_after(STEP):
            await mux.close()
        nursery.cancel_scope.cancel()


async def test_a_peer_overrunning_the_granted_window_gets_the_stream_reset() -> None:
    async with raw_yamux(receive_window=INITIAL_WINDOW) as (mux, peer):
        with trio.fail_after(STEP):
            await peer.send(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0)
            stream = await mux.accept_stream()
            typ, flags, sid, length, _ = await peer.frame()
            assert (typ, flags, sid, length) == (TYPE_WINDOW_UPDATE, FLAG_ACK, 1, 0)
            # The whole window is fine...
            await peer.send(TYPE_DATA, 0, 1, 200_000, b"a" * 200_000)
            await peer.send(TYPE_DATA, 0, 1, INITIAL_WINDOW - 200_000, b"b" * 62_144)
            # ...one byte more is not: RST, and the stream is dead here too.
            await peer.send(TYPE_DATA, 0, 1, 1, b"c")
            typ, flags, sid, _, _ = await peer.frame()
            assert (typ, sid) == (TYPE_WINDOW_UPDATE, 1) and flags & FLAG_RST
            with pytest.raises(MuxedStreamReset, match="overran the receive window"):
                await stream.read(1)
            # The connection itself lives on.
            await peer.send(TYPE_PING, FLAG_SYN, 0, 77)
            assert (await peer.frame_of(TYPE_PING))[1:4] == (FLAG_ACK, 0, 77)


async def test_window_is_granted_back_at_half_and_never_beyond() -> None:
    async with raw_yamux(receive_window=INITIAL_WINDOW) as (mux, peer):
        with trio.fail_after(STEP):
            await peer.send(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0)
            stream = await mux.accept_stream()
            await peer.frame()  # ACK
            await peer.send(TYPE_DATA, 0, 1, 100_000, b"x" * 100_000)
            assert len(await stream.read(100_000)) == 100_000  # < half: nothing granted
            await peer.send(TYPE_DATA, 0, 1, 100_000, b"y" * 100_000)
            assert len(await stream.read(100_000)) == 100_000
            typ, _, sid, delta, _ = await peer.frame()
            assert (typ, sid, delta) == (TYPE_WINDOW_UPDATE, 1, 200_000)


async def test_window_budget_caps_what_one_connection_grants() -> None:
    extra = MiB - INITIAL_WINDOW
    async with raw_yamux(receive_window=MiB, window_budget=extra) as (mux, peer):
        with trio.fail_after(STEP):
            deltas = []
            for sid in (1, 3):
                await peer.send(TYPE_WINDOW_UPDATE, FLAG_SYN, sid, 0)
                await mux.accept_stream()
                deltas.append((await peer.frame())[3])
            # The first stream took the whole budget; the second got the initial window.
            assert deltas == [extra, 0]
            await peer.send(TYPE_WINDOW_UPDATE, FLAG_RST, 1, 0)  # frees stream 1's share
            await peer.send(TYPE_WINDOW_UPDATE, FLAG_SYN, 5, 0)
            await mux.accept_stream()
            assert (await peer.frame())[2:4] == (5, extra)


async def test_oversized_frame_closes_the_connection_with_go_away() -> None:
    async with raw_yamux() as (mux, peer):
        with trio.fail_after(STEP):
            await peer.send(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0)
            stream = await mux.accept_stream()
            await peer.send(TYPE_DATA, 0, 1, 0x7FFFFFFF)  # no body: it must not wait for one
            typ, _, _, code, _ = await peer.frame_of(TYPE_GO_AWAY)
            assert (typ, code) == (TYPE_GO_AWAY, GO_AWAY_PROTOCOL_ERROR)
            await mux.event_closed.wait()
            with pytest.raises(MuxedConnUnavailable, match="exceeds the 16777216-byte"):
                await mux.accept_stream()
            with pytest.raises(MuxedStreamReset, match="protocol error"):
                await stream.read(1)


@pytest.mark.parametrize(
    ("header", "why"),
    [
        (HEADER.pack(1, TYPE_DATA, 0, 1, 0), "version 1"),
        (HEADER.pack(0, 9, 0, 1, 0), "unknown frame type 9"),
        (HEADER.pack(0, TYPE_WINDOW_UPDATE, FLAG_SYN, 2, 0), "not its id space"),
    ],
)
async def test_malformed_header_is_a_protocol_error(header: bytes, why: str) -> None:
    async with raw_yamux() as (mux, peer):
        with trio.fail_after(STEP):
            await peer.stream.send_all(header)
            assert (await peer.frame_of(TYPE_GO_AWAY))[3] == GO_AWAY_PROTOCOL_ERROR
            await mux.event_closed.wait()
            with pytest.raises(MuxedConnUnavailable, match=why):
                await mux.open_stream()


async def test_truncated_frame_ends_the_connection_instead_of_hanging() -> None:
    async with raw_yamux() as (mux, peer):
        with trio.fail_after(STEP):
            await peer.send(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0)
            stream = await mux.accept_stream()
            await peer.stream.send_all(
                HEADER.pack(0, TYPE_DATA, 0, 1, 100) + b"only 20 bytes here.."
            )
            await peer.stream.aclose()
            await mux.event_closed.wait()
            with pytest.raises(MuxedStreamReset, match="inside a 100-byte DATA frame"):
                await stream.read(1)


async def test_ping_is_answered_and_go_away_stops_new_streams() -> None:
    async with raw_yamux() as (mux, peer):
        with trio.fail_after(STEP):
            await peer.send(TYPE_PING, FLAG_SYN, 0, 12345)
            assert (await peer.frame())[:4] == (TYPE_PING, FLAG_ACK, 0, 12345)
            # Our ping, answered by the raw side.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(mux.ping)
                _, _, _, opaque, _ = await peer.frame_of(TYPE_PING)
                await peer.send(TYPE_PING, FLAG_ACK, 0, opaque)
            assert mux.rtt() > 0
            # Streams we open use our (responder: even) ids.
            stream = await mux.open_stream()
            assert stream.stream_id == 2
            typ, flags, sid, delta, _ = await peer.frame()
            assert (typ, flags, sid) == (TYPE_WINDOW_UPDATE, FLAG_SYN, 2)
            assert delta == mux.receive_window - INITIAL_WINDOW
            await peer.send(TYPE_GO_AWAY, 0, 0, 0)
            # Frames are handled in order: once this ping is answered, GO_AWAY was seen.
            await peer.send(TYPE_PING, FLAG_SYN, 0, 1)
            await peer.frame_of(TYPE_PING)
            with pytest.raises(MuxedConnUnavailable, match="GO_AWAY"):
                await mux.open_stream()
            # The stream opened before GO_AWAY still works.
            await stream.write(b"still here")
            assert (await peer.frame_of(TYPE_DATA))[4] == b"still here"


async def test_deadline_fails_a_read_that_waits_too_long() -> None:
    async with raw_yamux() as (mux, _):
        with trio.fail_after(STEP):
            stream = await mux.open_stream()
            stream.set_deadline(0)
            with pytest.raises(YamuxDeadlineExceeded, match="read deadline"):
                await stream.read(1)
            with pytest.raises(ValueError):
                stream.set_deadline(-1)


async def test_send_window_wait_times_out_with_a_clear_error() -> None:
    async with raw_yamux(send_window_timeout=1) as (mux, peer):
        with trio.fail_after(STEP):
            stream = await mux.open_stream()
            frames: list[tuple[int, int, int, int, bytes]] = []
            reset_seen = trio.Event()

            async def collect() -> None:
                while True:
                    frames.append(await peer.frame())
                    if frames[-1][0] == TYPE_WINDOW_UPDATE and frames[-1][1] & FLAG_RST:
                        reset_seen.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(collect)
                # The raw side reads but never grants more than the initial 256 KiB.
                with pytest.raises(MuxedStreamReset, match="granted no send window"):
                    await stream.write(b"z" * (INITIAL_WINDOW + 1))
                await reset_seen.wait()
                nursery.cancel_scope.cancel()
            # SYN, 256 KiB of data, and then the peer was told: RST.
            assert frames[0][:3] == (TYPE_WINDOW_UPDATE, FLAG_SYN, stream.stream_id)
            assert sum(f[3] for f in frames if f[0] == TYPE_DATA) == INITIAL_WINDOW
            assert frames[-1][2] == stream.stream_id


# -- noise -------------------------------------------------------------------------------


def raw_conn(sock: trio.socket.SocketType, initiator: bool) -> RawConnection:
    """A py-libp2p TCP-style raw connection (RawConnection > TrioTCPStream > SocketStream)."""
    return RawConnection(TrioTCPStream(trio.SocketStream(sock)), initiator)


class Relay:
    """Forwards bytes between two socket pairs; can flip a bit of the next a->b chunk."""

    def __init__(self) -> None:
        self.a, a_side = trio.socket.socketpair()
        b_side, self.b = trio.socket.socketpair()
        self.a_side = trio.SocketStream(a_side)
        self.b_side = trio.SocketStream(b_side)
        self.tamper = False

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, self.a_side, self.b_side, True)
            nursery.start_soon(self._pump, self.b_side, self.a_side, False)

    async def _pump(self, src: trio.SocketStream, dst: trio.SocketStream, a_to_b: bool) -> None:
        while data := await src.receive_some(1 << 16):
            if a_to_b and self.tamper:
                self.tamper = False
                data = data[:-1] + bytes([data[-1] ^ 1])
            await dst.send_all(data)


async def handshake(
    relay: Relay,
    make_a: Callable[[KeyPair], StockNoiseTransport],
    make_b: Callable[[KeyPair], StockNoiseTransport],
) -> tuple[ISecureConn, ISecureConn]:
    keys_a, keys_b = create_new_key_pair(), create_new_key_pair()
    transport_a, transport_b = make_a(keys_a), make_b(keys_b)
    out: dict[str, ISecureConn] = {}

    async def run(name: str, fn: Callable[[], Awaitable[ISecureConn]]) -> None:
        out[name] = await fn()

    peer_b = ID.from_pubkey(keys_b.public_key)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            run, "a", lambda: transport_a.secure_outbound(raw_conn(relay.a, True), peer_b)
        )
        nursery.start_soon(run, "b", lambda: transport_b.secure_inbound(raw_conn(relay.b, False)))
    return out["a"], out["b"]


async def read_n(conn: ISecureConn, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        out += await conn.read(n - len(out))
    return bytes(out)


def stock_noise(keys: KeyPair) -> StockNoiseTransport:
    return StockNoiseTransport(keys, noise_privkey=create_x25519_key_pair().private_key)


@pytest.mark.parametrize(
    ("a_fast", "b_fast"), [(True, True), (True, False), (False, True)], ids=str
)
async def test_noise_sessions_interoperate(a_fast: bool, b_fast: bool) -> None:
    relay = Relay()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(relay.run)
        with trio.fail_after(STEP):
            a, b = await handshake(
                relay,
                NoiseTransport if a_fast else stock_noise,
                NoiseTransport if b_fast else stock_noise,
            )
            assert isinstance(a, NoiseSession) == a_fast and isinstance(b, NoiseSession) == b_fast
            assert a.get_remote_peer() == b.get_local_peer()
            assert b.get_remote_peer() == a.get_local_peer()
            # Exactly one message, one byte more, and several.
            for size in (MAX_PLAINTEXT, MAX_PLAINTEXT + 1, 1_000_000):
                data = pattern(size, size)
                async with trio.open_nursery() as both:
                    both.start_soon(a.write, data)
                    both.start_soon(b.write, data[::-1])
                    assert await read_n(b, size) == data
                    assert await read_n(a, size) == data[::-1]
        nursery.cancel_scope.cancel()


async def test_tampered_noise_ciphertext_fails_with_a_clear_error() -> None:
    relay = Relay()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(relay.run)
        with trio.fail_after(STEP):
            a, b = await handshake(relay, NoiseTransport, NoiseTransport)
            await a.write(b"fine")
            assert await read_n(b, 4) == b"fine"
            relay.tamper = True
            await a.write(b"tampered in flight")
            with pytest.raises(NoiseDecryptError, match="message 1 failed authentication"):
                await b.read(100)
            # The session stays failed: the nonce sequence cannot recover.
            with pytest.raises(NoiseDecryptError):
                await b.read(100)
        nursery.cancel_scope.cancel()


async def test_noise_message_shorter_than_its_tag_is_rejected() -> None:
    relay = Relay()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(relay.run)
        with trio.fail_after(STEP):
            a, b = await handshake(relay, NoiseTransport, NoiseTransport)
            assert isinstance(a, NoiseSession)
            await a.conn.write(b"\x00\x05hello")  # a 5-byte "message" on the wire
            with pytest.raises(NoiseDecryptError, match="shorter than its authentication tag"):
                await b.read(10)
        nursery.cancel_scope.cancel()
