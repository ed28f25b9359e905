"""The node's own QUIC transport (qh3) in hosts: concurrent streams, TCP fallback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import multiaddr
import trio
import trio.testing
from libp2p.abc import IHost
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import PeerInfo

from meshp2p.transport import mesh_host, transport_addrs
from meshp2p.transport._quic import QuicConn, _Endpoint, quic_fallback_reason

ECHO = TProtocol("/meshp2p/test/echo/1")
LISTEN = [multiaddr.Multiaddr("/ip4/127.0.0.1/udp/0/quic-v1")]


@asynccontextmanager
async def two_hosts(
    handler: Callable[[Any], Awaitable[None]],
) -> AsyncIterator[tuple[IHost, IHost]]:
    """A server answering ``ECHO`` with ``handler`` and a client, both running on
    QUIC over loopback (not yet connected)."""
    server = mesh_host(create_new_key_pair(), LISTEN)
    client = mesh_host(create_new_key_pair(), LISTEN)
    async with server.run(listen_addrs=LISTEN), client.run(listen_addrs=LISTEN):
        server.set_stream_handler(ECHO, handler)
        yield server, client


async def test_eight_streams_opened_at_once_on_a_new_connection_all_work() -> None:
    """Eight streams opened together right after a dial, five times over.

    Their first frames reach the listener in any order; an id that arrives after a
    higher one used to be taken for a finished stream and dropped (the dialer's
    negotiation then timed out), and accepting skipped ids before their own frames
    made the listener write on streams qh3 did not know yet.
    """

    async def echo(stream: Any) -> None:
        data = await stream.read(64)
        await stream.write(data)
        await stream.close()

    with trio.fail_after(60):
        async with two_hosts(echo) as (server, client):
            info = PeerInfo(server.get_id(), server.get_addrs())
            for round_ in range(5):
                await client.connect(info)
                (conn,) = client.get_network().connections[server.get_id()]
                assert isinstance(conn.muxed_conn, QuicConn)
                answers: list[bytes] = []

                async def one(message: bytes, out: list[bytes]) -> None:
                    stream = await client.new_stream(server.get_id(), [ECHO])
                    await stream.write(message)
                    out.append(await stream.read(64))

                with trio.fail_after(8):
                    async with trio.open_nursery() as nursery:
                        for i in range(8):
                            nursery.start_soon(one, b"%d-%d" % (round_, i), answers)
                assert sorted(answers) == sorted(b"%d-%d" % (round_, i) for i in range(8))
                await client.disconnect(server.get_id())


async def test_a_failed_quic_dial_falls_back_to_tcp_and_says_why() -> None:
    """The peer's QUIC address answers with another peer's certificate: the dial is
    refused, the swarm dials the peer's TCP address by itself, and the reason is kept
    for /api/status (``connections[].quic_fallback``)."""
    both = [*LISTEN, multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    server = mesh_host(create_new_key_pair(), both)
    decoy = mesh_host(create_new_key_pair(), LISTEN)
    client = mesh_host(create_new_key_pair(), both)
    with trio.fail_after(60):
        async with (
            server.run(listen_addrs=both),
            decoy.run(listen_addrs=LISTEN),
            client.run(listen_addrs=both),
        ):
            server.set_stream_handler(ECHO, _echo_once)
            decoy_quic = [a for a in decoy.get_addrs() if "/quic" in str(a)]
            server_tcp = [a for a in server.get_addrs() if "/tcp/" in str(a)]
            addrs = transport_addrs(str(a) for a in [*decoy_quic, *server_tcp])
            assert "/quic" in str(addrs[0])  # QUIC is dialled first
            await client.connect(PeerInfo(server.get_id(), addrs))
            (conn,) = client.get_network().connections[server.get_id()]
            assert not isinstance(conn.muxed_conn, QuicConn)
            reason = quic_fallback_reason(client, server.get_id())
            assert reason is not None and "mismatch" in reason, reason
            stream = await client.new_stream(server.get_id(), [ECHO])
            await stream.write(b"over tcp")
            assert await stream.read(64) == b"over tcp"
            # A QUIC dial that works clears the reason.
            await client.disconnect(server.get_id())
            server_quic = [a for a in server.get_addrs() if "/quic" in str(a)]
            await client.connect(PeerInfo(server.get_id(), transport_addrs(map(str, server_quic))))
            assert quic_fallback_reason(client, server.get_id()) is None


async def _echo_once(stream: Any) -> None:
    await stream.write(await stream.read(64))
    await stream.close()


async def test_a_listener_keeps_no_task_for_a_connection_that_ended() -> None:
    """py-libp2p's handler for an inbound connection waits for the whole swarm to stop;
    the listener ends it with the connection, so a node that accepts connections for
    days does not pile up a task for each."""
    with trio.fail_after(60):
        async with two_hosts(_echo_once) as (server, client):
            (listener,) = (
                lst
                for lst in server.get_network().listeners.values()  # type: ignore[attr-defined]
                if hasattr(lst, "endpoint")
            )
            nursery = listener.endpoint.nursery
            info = PeerInfo(server.get_id(), server.get_addrs())
            counts = []
            for _ in range(6):
                await client.connect(info)
                stream = await client.new_stream(server.get_id(), [ECHO])
                await stream.write(b"x")
                assert await stream.read(64) == b"x"
                (inbound,) = server.get_network().connections[client.get_id()]
                await client.disconnect(server.get_id())
                with trio.fail_after(5):
                    await inbound.muxed_conn.event_closed.wait()
                await trio.testing.wait_all_tasks_blocked()
                counts.append(len(nursery.child_tasks))
            assert counts[-1] <= counts[0], counts


async def _echo_forever(stream: Any) -> None:
    try:
        while True:
            await stream.write(await stream.read(64))
    except Exception:
        pass


async def test_a_round_trip_is_one_datagram_each_way(monkeypatch: Any) -> None:
    """The ACK for a message rides on the reply instead of leaving alone: a 64-byte
    ping-pong costs one datagram each way (three, with a pure ACK per round trip,
    before the driver let the reader answer first)."""
    sent: list[int] = []
    send = _Endpoint.send

    def counting(self: _Endpoint, datagrams: list[bytes], addr: Any) -> None:
        sent.extend(len(d) for d in datagrams)
        send(self, datagrams, addr)

    with trio.fail_after(60):
        async with two_hosts(_echo_forever) as (server, client):
            await client.connect(PeerInfo(server.get_id(), server.get_addrs()))
            stream = await client.new_stream(server.get_id(), [ECHO])
            for _ in range(20):  # settle: negotiation, handshake leftovers
                await stream.write(b"p" * 64)
                assert await stream.read(64) == b"p" * 64
            monkeypatch.setattr(_Endpoint, "send", counting)
            rounds = 300
            for _ in range(rounds):
                await stream.write(b"p" * 64)
                assert await stream.read(64) == b"p" * 64
            monkeypatch.setattr(_Endpoint, "send", send)
            await stream.close()
    # A loaded machine stretches a few round trips past qh3's ACK delay; then a
    # pure ACK leaves on the timer. Before: 3 per round trip.
    assert len(sent) <= 2.3 * rounds, f"{len(sent)} datagrams for {rounds} round trips"


async def test_a_reader_that_does_not_answer_still_gets_its_data_acked() -> None:
    """The ACK waits for a reply only briefly: a handler that reads and then does not
    answer (nor read again) still has the data ACKed, so the sender's loss recovery
    does not resend it."""
    read = trio.Event()

    async def read_then_stall(stream: Any) -> None:
        await stream.read(64)
        read.set()
        await trio.sleep(30)

    with trio.fail_after(60):
        async with two_hosts(read_then_stall) as (server, client):
            await client.connect(PeerInfo(server.get_id(), server.get_addrs()))
            (conn,) = client.get_network().connections[server.get_id()]
            quic = conn.muxed_conn
            assert isinstance(quic, QuicConn)
            stream = await client.new_stream(server.get_id(), [ECHO])
            await stream.write(b"x" * 64)
            with trio.fail_after(5):
                await read.wait()
            core = quic.quic._core
            assert core is not None
            start = trio.current_time()
            for _ in range(1000):
                if not core.bytes_in_flight:
                    break
                await trio.sleep(0.001)
            # qh3's ACK delay (1 ms) + ACK_SLACK (2 ms) + timer granularity; loss
            # recovery would resend after ~25 ms.
            assert not core.bytes_in_flight, "the data was never acknowledged"
            assert trio.current_time() - start < 0.02
            assert core.loss_total == 0
