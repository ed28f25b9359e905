"""QUIC datagram size per path: the rule, and real py-libp2p hosts using it."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import multiaddr
import pytest
import trio
from libp2p.abc import IHost
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import PeerInfo

from meshp2p.transport import mesh_host
from meshp2p.transport._quic import QH3_MAX, QuicConn
from meshp2p.transport._quic_path import (
    AIOQUIC_MAX,
    QUIC_MIN,
    datagram_size,
    is_direct,
    route_mtu,
)

SINK = TProtocol("/meshp2p/test/sink/1")
ECHO = TProtocol("/meshp2p/test/echo/1")
LISTEN = [multiaddr.Multiaddr("/ip4/127.0.0.1/udp/0/quic-v1")]


@asynccontextmanager
async def running_pair(
    handlers: dict[TProtocol, Callable[[Any], Awaitable[None]]],
) -> AsyncIterator[tuple[IHost, IHost]]:
    """A server and a client host built as a node builds them, running on loopback QUIC."""
    server = mesh_host(create_new_key_pair(), LISTEN)
    client = mesh_host(create_new_key_pair(), LISTEN)
    with trio.fail_after(60):
        async with server.run(listen_addrs=LISTEN), client.run(listen_addrs=LISTEN):
            for protocol, handler in handlers.items():
                server.set_stream_handler(protocol, handler)
            yield server, client


@pytest.mark.parametrize(
    ("ip", "direct"),
    [
        ("127.0.0.1", True),
        ("10.1.2.3", True),
        ("192.168.1.20", True),
        ("172.16.0.9", True),
        ("100.101.102.103", True),  # CGNAT / overlay (Tailscale)
        ("169.254.1.1", True),
        ("::1", True),
        ("fd00::1", True),
        ("fe80::1%eth0", True),
        ("::ffff:192.168.1.2", True),
        ("8.8.8.8", False),
        ("2001:4860:4860::8888", False),
        ("not an address", False),
    ],
)
def test_direct_addresses(ip: str, direct: bool) -> None:
    assert is_direct(ip) is direct


def test_size_follows_the_route_mtu_for_direct_peers_only() -> None:
    # Ethernet LAN: 1500 - 20 (IPv4) - 8 (UDP).
    assert datagram_size("192.168.1.2", mtu=1500) == 1472
    assert datagram_size("fd00::2", mtu=1500) == 1452  # 40-byte IPv6 header
    # Jumbo frames and loopback: capped where aioquic's 2-byte frame lengths end.
    assert datagram_size("10.0.0.2", mtu=9000) == 8972
    assert datagram_size("127.0.0.1", mtu=65536) == AIOQUIC_MAX
    # An overlay with a small MTU (WireGuard 1280) never goes below QUIC's minimum.
    assert datagram_size("100.64.0.7", mtu=1280) == 1252
    assert datagram_size("10.0.0.2", mtu=576) == QUIC_MIN
    # The internet: the first hop's MTU says nothing about the path.
    assert datagram_size("8.8.8.8", mtu=1500) == QUIC_MIN
    assert datagram_size("8.8.8.8", mtu=1500, default=1350) == 1350
    # Unknown MTU: the default.
    assert datagram_size("127.0.0.1", mtu=None) == QUIC_MIN
    # The peer's max_udp_payload_size wins (quinn announces 1472).
    assert datagram_size("127.0.0.1", mtu=65536, peer_max=1472) == 1472
    assert datagram_size("127.0.0.1", mtu=65536, peer_max=1000) == QUIC_MIN


def test_route_mtu_of_loopback_is_the_interfaces() -> None:
    mtu = route_mtu("127.0.0.1")
    assert mtu is not None and mtu >= 16_384  # Linux loopback: 65536


async def test_hosts_send_big_datagrams_to_each_other_and_data_arrives_intact() -> None:
    """Two node-built hosts on loopback QUIC: both ends size up, 8 MiB arrives byte-exact.

    The connection is ours on qh3 (``_quic``), its datagrams sized from the
    loopback route; ping-pongs must still flow both ways after the bulk.
    """
    payload = hashlib.sha256(b"seed").digest() * (8 * 1024 * 1024 // 32)
    received = trio.Event()
    got: list[bytes] = []

    async def sink(stream: object) -> None:
        buf = bytearray()
        (size,) = struct.unpack(">Q", await stream.read(8))  # type: ignore[attr-defined]
        while len(buf) < size:
            buf += await stream.read(1 << 20)  # type: ignore[attr-defined]
        got.append(bytes(buf))
        await stream.write(b"K")  # type: ignore[attr-defined]
        received.set()

    async def echo(stream: object) -> None:
        while data := await stream.read(64):  # type: ignore[attr-defined]
            await stream.write(data)  # type: ignore[attr-defined]

    async with running_pair({SINK: sink, ECHO: echo}) as (server, client):
        await client.connect(PeerInfo(server.get_id(), server.get_addrs()))
        stream = await client.new_stream(server.get_id(), [SINK])
        await stream.write(struct.pack(">Q", len(payload)))
        for i in range(0, len(payload), 64 * 1024):
            await stream.write(payload[i : i + 64 * 1024])
        assert await stream.read(1) == b"K"
        await received.wait()
        (conn,) = client.get_network().connections[server.get_id()]
        assert isinstance(conn.muxed_conn, QuicConn)
        assert conn.muxed_conn.datagram_size == QH3_MAX
        await stream.close()
        pings = await client.new_stream(server.get_id(), [ECHO])
        for i in range(200):
            message = b"%064d" % i
            await pings.write(message)
            answer = b""
            while len(answer) < len(message):
                answer += await pings.read(64 - len(answer))
            assert answer == message
        await pings.close()
    assert got == [payload]


async def test_a_reader_that_lags_loses_nothing() -> None:
    """A writer far ahead of a slow reader: every byte arrives, in order.

    aioquic alone doubles a stream's window as data arrives, read or not, and
    py-libp2p drops what overflows a stream's receive buffer: without the
    read-driven windows of _quic_path this received about 2 of the 8 MiB.
    """
    payload = hashlib.sha256(b"lag").digest() * (8 * 1024 * 1024 // 32)
    got = bytearray()
    done = trio.Event()

    async def slow(stream: object) -> None:
        await trio.sleep(1.5)  # the writer sends everything it may meanwhile
        while len(got) < len(payload):
            data = await stream.read(256 * 1024)  # type: ignore[attr-defined]
            if not data:
                break
            got.extend(data)
            await trio.sleep(0.01)  # and reads slowly
        done.set()

    async with running_pair({SINK: slow}) as (server, client):
        await client.connect(PeerInfo(server.get_id(), server.get_addrs()))
        stream = await client.new_stream(server.get_id(), [SINK])
        for i in range(0, len(payload), 64 * 1024):
            await stream.write(payload[i : i + 64 * 1024])
        await done.wait()
        await stream.close()
    assert bytes(got) == payload


async def test_a_peer_that_disconnects_and_dials_again_gets_a_working_connection() -> None:
    """Disconnect, dial again, ten times: the server sees each close at once.

    Without end_on_peer_close the server kept each closed connection for about a
    second (aioquic's draining), so they piled up and, with one connection per
    peer, the swarm trimmed a new one and a stream on it failed.
    """

    async def echo(stream: object) -> None:
        await stream.write(await stream.read(64))  # type: ignore[attr-defined]
        await stream.close()  # type: ignore[attr-defined]

    async with running_pair({ECHO: echo}) as (server, client):
        info = PeerInfo(server.get_id(), server.get_addrs())
        for round_ in range(10):
            await client.connect(info)
            stream = await client.new_stream(server.get_id(), [ECHO])
            await stream.write(b"%064d" % round_)
            assert await stream.read(64) == b"%064d" % round_
            await stream.close()
            kept = server.get_network().get_connections_map().get(client.get_id(), [])
            assert len(kept) == 1, f"round {round_}: the server holds {len(kept)}"
            await client.disconnect(server.get_id())
            await trio.sleep(0.05)
