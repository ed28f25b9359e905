"""Hanging up on a member: the connections it had close, a connection it makes
meanwhile stays (real services and QUIC on loopback)."""

from __future__ import annotations

import multiaddr
import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from meshp2p.mesh import MeshCredentials, MeshService
from meshp2p.mesh._invite import InviteToken
from meshp2p.transport._quic import QuicConn, QuicTransport

QUIC = "/ip4/127.0.0.1/udp/0/quic-v1"


async def test_a_connection_the_peer_makes_while_we_hang_up_on_it_stays_listed() -> None:
    """A buries a peer (``drop``) just as the peer, thawed, dials it anew: the old
    connection closes, the new one must stay in A's swarm. py-libp2p's
    ``disconnect`` forgot every connection to the peer once it had closed the old
    ones, the new one too; it then stayed open unlisted, the peer's streams on it
    still reached A's handlers, and A never dialled the peer it thought gone (after a
    SIGSTOP the lab's hosts stayed apart)."""
    credentials = MeshCredentials.new()
    host = MeshService(create_new_key_pair(), credentials, listen=[QUIC], client=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(host.run)
        bootstrap = InviteToken.decode(host.invite_token()).bootstrap
        node = MeshService(
            create_new_key_pair(), credentials, listen=[QUIC], bootstrap=bootstrap, client=True
        )
        await nursery.start(node.run)
        with trio.fail_after(10):
            while host.peer_id not in node.members:  # noqa: ASYNC110 (no event to wait on)
                await trio.sleep(0.05)
        network = node.host.get_network()
        (old,) = network.get_connections(host.peer_id)
        quic = next(
            t
            for t in host.host.get_network().transport_manager.get_transports()  # type: ignore[attr-defined]
            if isinstance(t, QuicTransport)
        )
        target = multiaddr.Multiaddr(
            next(a for a in node.addrs if "/quic" in a)  # the node's own QUIC address
        )
        node.drop(host.peer_id)  # closes `old` in the background
        with trio.fail_after(10):
            new = await quic.dial(target)  # the peer dials anew meanwhile
            await old.event_closed.wait()  # type: ignore[attr-defined]
            await trio.sleep(0.3)  # the hang-up's own cleanup ends
        listed = [c.muxed_conn for c in network.get_connections(host.peer_id)]
        assert any(
            isinstance(c, QuicConn) and c.remote[1] == new.endpoint.local[1] for c in listed
        ), f"the connection the peer made during the hang-up is not listed: {listed}"
        await new.close()
        nursery.cancel_scope.cancel()
