"""Two bare py-libp2p hosts join one mesh with an invite token and gossip.

Only ``meshp2p.mesh`` is used on top of py-libp2p: each host proves the mesh
secret on ``/mesh/auth``, then each prints the other's signed announcement as
it arrives over ``/mesh/gossip``.
"""

from collections.abc import Callable

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair

from meshp2p.mesh import InviteToken, LocalState, MeshCredentials, MeshService


def local_state(role: str, memory: int) -> LocalState:
    """What a host announces about itself."""
    return LocalState(role, (), (), memory, memory, {})


class Changes:
    """Called by a MeshService whenever its view changes; lets us wait for a view."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def __call__(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def until(self, seen: Callable[[], bool]) -> None:
        while not seen():
            await self._event.wait()


async def main() -> None:
    loopback = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    first = new_host(key_pair=create_new_key_pair(), listen_addrs=loopback)
    second = new_host(key_pair=create_new_key_pair(), listen_addrs=loopback)
    async with first.run(loopback), second.run(loopback), trio.open_nursery() as nursery:
        # The first host starts a mesh; its invite token carries the secret and its address.
        founder_changes, joiner_changes = Changes(), Changes()
        founder = MeshService.on_host(
            first,
            MeshCredentials.new(),
            local=lambda: local_state("standby", 8 << 30),
            on_change=founder_changes,
        )
        await nursery.start(founder.run)
        token = InviteToken.decode(founder.invite_token())
        # The second host joins with the token alone.
        joiner = MeshService.on_host(
            second,
            token.credentials,
            bootstrap=token.bootstrap,
            local=lambda: local_state("standby", 4 << 30),
            on_change=joiner_changes,
        )
        await nursery.start(joiner.run)
        with trio.fail_after(30):
            await founder_changes.until(lambda: joiner.node_id in founder.view())
            await joiner_changes.until(lambda: founder.node_id in joiner.view())
        for me, other in ((founder, joiner), (joiner, founder)):
            peer = me.view().peer(other.node_id)
            assert peer is not None
            print(
                f"{me.node_id[-8:]} sees {peer.id[-8:]}: role {peer.role}, "
                f"{peer.memory_total >> 30} GiB, announcement seq {peer.seq}"
            )
        nursery.cancel_scope.cancel()


trio.run(main)
