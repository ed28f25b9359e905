"""MeshService.ping, which the mesh (probes, RTTs) and passive clients (host checks,
the watchdog of a routed answer) use to tell a live peer from a dead one."""

from __future__ import annotations

import trio
from libp2p.abc import INetStream
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.host.ping import ID as PING
from libp2p.host.ping import PING_LENGTH

from meshp2p.mesh import MeshCredentials, MeshService
from meshp2p.mesh._invite import InviteToken

QUIC = "/ip4/127.0.0.1/udp/0/quic-v1"


async def test_a_ping_that_timed_out_does_not_spoil_the_next_ones() -> None:
    """The peer answers its first ping late (a freeze, a busy machine), the rest at
    once: the late one is a failure, the next ones succeed. py-libp2p's PingService
    kept the timed-out ping's stream cached and then raised TypeError on every later
    ping of that peer: a passive client dropped a live host for good."""
    credentials = MeshCredentials.new()
    peer = MeshService(create_new_key_pair(), credentials, listen=[QUIC], client=True)
    pings: list[float] = []

    async def slow_first(stream: INetStream) -> None:
        try:
            while data := await stream.read(PING_LENGTH):
                pings.append(trio.current_time())
                if len(pings) == 1:
                    await trio.sleep(1.5)
                await stream.write(data)
        except Exception:  # the pinger reset it, or closed it: end as handlers must
            await stream.reset()

    async with trio.open_nursery() as nursery:
        await nursery.start(peer.run)
        peer.host.set_stream_handler(PING, slow_first)
        bootstrap = InviteToken.decode(peer.invite_token()).bootstrap
        node = MeshService(
            create_new_key_pair(), credentials, listen=[QUIC], bootstrap=bootstrap, client=True
        )
        await nursery.start(node.run)
        with trio.fail_after(10):
            while peer.peer_id not in node.members:  # noqa: ASYNC110 (no event to wait on)
                await trio.sleep(0.05)
        assert not await node.ping(peer.peer_id, 0.5), "a pong 1.5 s late came within 0.5 s"
        results = [await node.ping(peer.peer_id, 3.0) for _ in range(3)]
        assert results == [True, True, True], (results, pings)
        nursery.cancel_scope.cancel()
