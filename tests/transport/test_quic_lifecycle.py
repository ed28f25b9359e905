"""QUIC connections of the node's own transport across a frozen peer: a dial given up
while the peer is frozen must not come back to life when the peer thaws."""

from __future__ import annotations

import socket

import multiaddr
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.peerinfo import PeerInfo

from meshp2p.transport import mesh_host

LISTEN = [multiaddr.Multiaddr("/ip4/127.0.0.1/udp/0/quic-v1")]


class FrozenPeer:
    """A UDP address in front of a real listener that reads nothing until ``thaw``:
    a frozen process's socket, which queues what arrives. Thawed, it hands the queue
    to the listener, then forwards both ways (from its own socket, like a NAT)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.front = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.back = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.dialer: tuple[str, int] | None = None

    async def bind(self) -> multiaddr.Multiaddr:
        await self.front.bind(("127.0.0.1", 0))
        await self.back.bind(("127.0.0.1", 0))
        port = self.front.getsockname()[1]
        return multiaddr.Multiaddr(f"/ip4/127.0.0.1/udp/{port}/quic-v1")

    async def thaw(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._inbound)
            nursery.start_soon(self._outbound)

    async def _inbound(self) -> None:
        while True:
            data, addr = await self.front.recvfrom(65536)
            self.dialer = addr
            await self.back.sendto(data, self.target)

    async def _outbound(self) -> None:
        while True:
            data, _ = await self.back.recvfrom(65536)
            if self.dialer is not None:
                await self.front.sendto(data, self.dialer)


async def test_a_dial_given_up_while_the_peer_is_frozen_leaves_no_connection_behind() -> None:
    """A node dials a frozen peer and gives up (its own deadline); the peer thaws with
    the dial's Initial still queued. The dial must have ended its connection: before,
    it went on in the background, the handshake completed after the thaw, and the
    peer's swarm held a connection to the node that the node's swarm knew nothing of
    (the peer's streams on it went unanswered, and with one connection per peer it
    never dialled anew: after a SIGSTOP, two lab hosts stayed apart)."""
    server = mesh_host(create_new_key_pair(), LISTEN)
    client = mesh_host(create_new_key_pair(), LISTEN)
    with trio.fail_after(60):
        async with server.run(listen_addrs=LISTEN), client.run(listen_addrs=LISTEN):
            quic = next(a for a in server.get_addrs() if "/quic" in str(a))
            frozen = FrozenPeer(("127.0.0.1", int(quic.value_for_protocol("udp"))))
            front = await frozen.bind()
            with trio.move_on_after(1.5) as given_up:
                await client.connect(PeerInfo(server.get_id(), [front]))
            assert given_up.cancelled_caught, "the dial of a frozen peer succeeded"
            async with trio.open_nursery() as nursery:
                nursery.start_soon(frozen.thaw)
                # Long enough for the handshake to complete through the proxy (it
                # takes milliseconds on loopback) and for a close to arrive.
                await trio.sleep(3)
                held = server.get_network().get_connections(client.get_id())
                assert not held, (
                    f"the thawed peer holds {len(held)} connection(s) from a dial the "
                    "node gave up; the node's swarm holds "
                    f"{len(client.get_network().get_connections(server.get_id()))}"
                )
                nursery.cancel_scope.cancel()
