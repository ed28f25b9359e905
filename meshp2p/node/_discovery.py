"""A node's discovery: which mesh ``--auto`` joins, and the services that keep the
mesh findable (its listing, members' rendezvous records, mDNS on the LAN)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import trio
from libp2p.peer.id import ID

from ..discovery._auto import choose_mesh, load_or_create_nostr_key
from ..discovery._lan import LanDiscovery
from ..discovery._listing import MeshListing, Preferences, names_from
from ..discovery._relay import RelayPool
from ..discovery._service import DiscoveryService, ListingMeta
from ..mesh._invite import load_credentials
from ..mesh._service import MeshService
from ..transport._host import transport_addrs
from ._config import NodeConfig

log = logging.getLogger("meshp2p.node")

#: A node with no member for this long looks its mesh up in the rendezvous records.
REJOIN_AFTER_S = 10.0


async def pick_mesh(config: NodeConfig, home: Path) -> str | None:
    """``--auto``: the invite token of the best listed mesh that answers; None if none."""
    last = load_credentials(home)
    wants = Preferences(
        mesh_name=config.mesh_name,
        region=config.region,
        last_mesh=last.mesh_id if last else None,
        models=config.models,
    )
    chosen = await choose_mesh(RelayPool(config.relays), wants)
    return chosen.invite if chosen is not None else None


def mesh_listing(mesh: MeshService, meta: ListingMeta, version: str) -> MeshListing:
    """The listing of ``mesh`` as this node sees it now."""
    view = mesh.view()
    members = len(view)
    return MeshListing(
        mesh_id=mesh.credentials.mesh_id,
        invite=mesh.invite_token(),
        name=meta.name,
        region=meta.region,
        models_served=names_from([m for p in view for m in p.models_served]),
        models_on_disk=names_from([m.name for p in view for m in p.models_on_disk]),
        memory_total=sum(p.memory_total for p in view),
        nodes=members,
        # Authenticated peers that do not gossip are passive clients of this node.
        clients=max(0, len(mesh.members) - (members - 1)),
        max_clients=meta.max_clients,
        version=version,
        publisher=mesh.node_id,
    )


class NodeDiscovery:
    """Runs what ``config`` asks for, beside a running ``MeshService``."""

    def __init__(self, config: NodeConfig, mesh: MeshService, version: str) -> None:
        self.config = config
        self.mesh = mesh
        self.service: DiscoveryService | None = None
        self.lan: LanDiscovery | None = LanDiscovery(mesh) if config.lan else None
        if config.relays and not config.client:
            meta = ListingMeta(config.mesh_name, config.region, config.max_clients)
            self.service = DiscoveryService(
                RelayPool(config.relays),
                load_or_create_nostr_key(config.home),
                mesh,
                lambda m: mesh_listing(mesh, m, version),
                publish=config.publish,
                meta=meta,
                rendezvous=config.rendezvous,
                interval=config.publish_interval,
            )

    @property
    def active(self) -> bool:
        return self.service is not None or self.lan is not None

    def changed(self) -> None:
        if self.service is not None:
            self.service.changed()

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = self.service.status() if self.service else {"relays": []}
        out["lan"] = self.lan.status() if self.lan else {"enabled": False}
        return out

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            if self.service is not None:
                await nursery.start(self.service.run)
                if self.service.rendezvous:
                    nursery.start_soon(self._rejoin)
            if self.lan is not None:
                await nursery.start(self.lan.run)
            task_status.started()

    async def _rejoin(self) -> None:
        """While this node has no member, look for them in the rendezvous records: the
        addresses it joined through may all be gone (the inviter left, IPs changed)."""
        assert self.service is not None
        alone_since = trio.current_time()
        while True:
            await trio.sleep(min(REJOIN_AFTER_S, self.config.publish_interval) / 2)
            if self.mesh.members:
                alone_since = trio.current_time()
                continue
            if trio.current_time() - alone_since < REJOIN_AFTER_S:
                continue
            records = await self.service.find_members()
            if records:
                log.info("no member answers; trying %d from rendezvous records", len(records))
            async with trio.open_nursery() as nursery:
                for record in records:
                    nursery.start_soon(self._dial, record.node_id, record.addrs)
            alone_since = trio.current_time() if not self.mesh.members else alone_since
            await trio.sleep(self.config.publish_interval)

    async def _dial(self, node_id: str, addrs: tuple[str, ...]) -> None:
        try:
            peer = ID.from_base58(node_id)
        except Exception:
            return
        if await self.mesh.connect(peer, transport_addrs(addrs)):
            log.info("rejoined the mesh through %s (rendezvous)", node_id)
