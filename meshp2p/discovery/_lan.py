"""LAN discovery: members on the same network find each other by mDNS.

py-libp2p's mDNS (on zeroconf) announces this node's addresses under a service
type derived from the mesh secret (``_p2p-<8 hex>``: members share it, nobody
else can tell which mesh it is), and reports the nodes it hears; each is then
dialled and must still prove the secret on ``/mesh/auth`` like any other peer.
zeroconf works in threads of its own: what it finds is handed to trio through
a bounded channel, and its blocking calls run in worker threads.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Any

import trio
from libp2p.discovery.events.peerDiscovery import peerDiscovery
from libp2p.discovery.mdns.mdns import create_mdns_discovery
from libp2p.peer.peerinfo import PeerInfo

from ..mesh._service import MeshService

log = logging.getLogger("meshp2p.discovery")

_FOUND_BUFFER = 64


def lan_fingerprint(secret: bytes) -> str:
    """The mesh's mDNS service name part: opaque, and short enough for DNS-SD (15
    characters with ``_p2p-``)."""
    return hmac.new(secret, b"meshp2p/mdns/v1", hashlib.sha256).hexdigest()[:8]


class LanDiscovery:
    """Announces this node on the LAN and dials the members it hears of."""

    def __init__(self, mesh: MeshService) -> None:
        self.mesh = mesh
        self.found = 0
        self.dialled = 0

    def status(self) -> dict[str, Any]:
        return {"enabled": True, "found": self.found, "dialled": self.dialled}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        mesh = self.mesh
        tcp_port = next(
            (int(a.split("/tcp/")[1].split("/")[0]) for a in mesh.addrs if "/tcp/" in a), 0
        )
        send, receive = trio.open_memory_channel[PeerInfo](_FOUND_BUFFER)
        token = trio.lowlevel.current_trio_token()

        def deliver(info: PeerInfo) -> None:
            try:
                send.send_nowait(info)
            except (trio.WouldBlock, trio.ClosedResourceError):
                pass  # a flood of announcements: the next round repeats them

        def heard(info: PeerInfo) -> None:  # on a zeroconf thread
            try:
                token.run_sync_soon(deliver, info)
            except trio.RunFinishedError:
                pass

        mdns = await trio.to_thread.run_sync(
            lambda: create_mdns_discovery(
                mesh.host.get_network(),
                port=tcp_port,
                listen_addrs=list(mesh.addrs),
                private_network_fingerprint=lan_fingerprint(mesh.credentials.secret),
            )
        )
        peerDiscovery.register_peer_discovered_handler(heard)
        try:
            await trio.to_thread.run_sync(mdns.broadcaster.register)
            task_status.started()
            async with trio.open_nursery() as nursery, receive:
                async for info in receive:
                    if info.peer_id == mesh.peer_id or mesh.is_member(info.peer_id):
                        continue
                    self.found += 1
                    log.info("heard of %s on the LAN", info.peer_id)
                    nursery.start_soon(self._dial, info)
        finally:
            peerDiscovery.unregister_peer_discovered_handler(heard)
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_close, mdns)

    async def _dial(self, info: PeerInfo) -> None:
        if await self.mesh.connect(info.peer_id, list(info.addrs)):
            self.dialled += 1
            log.info("joined %s, found on the LAN", info.peer_id)


def _close(mdns: Any) -> None:
    try:
        mdns.broadcaster.unregister()
        mdns.listener.stop()
    finally:
        mdns.zeroconf.close()
