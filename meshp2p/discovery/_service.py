"""Discovery on a running node: its mesh's public listing, and private rendezvous.

``DiscoveryService`` runs beside the node's ``MeshService``:

- **Publishing.** A node started with ``--publish`` republishes its mesh's listing
  every interval (and soon after a change). Every member with relays watches the
  listing: when it is older than 1.5 intervals (the publisher missed a round: it
  left or died), members take over in a fixed order (``publisher_rank``: a hash
  of mesh id and node id), each waiting its rank times a sixth of the interval
  and looking again before it publishes, so the first in line takes over and the
  rest see its listing and stay quiet. A publisher that sees a fresh listing by a
  live member ranked before it stops, so two publishers never alternate for long.
- **Rendezvous.** Every few intervals each member publishes its addresses sealed
  under the mesh secret (``_listing.rendezvous_event``); ``find_members`` reads
  them back, for a node whose bootstrap addresses all fail.

The decisions (stale? who publishes?) are pure functions of the listings, the
mesh view and the time, below; the service only does the I/O.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import trio

from ..mesh._service import MeshService
from ..mesh._state import MeshView
from ._listing import (
    REPUBLISH_S,
    MeshListing,
    RendezvousRecord,
    current_listings,
    current_rendezvous,
    listing_event,
    listing_filter,
    rendezvous_event,
    rendezvous_filter,
)
from ._nostr import NostrKey
from ._relay import RelayPool

log = logging.getLogger("meshp2p.discovery")

#: Rendezvous records are republished every this many listing intervals.
RENDEZVOUS_EVERY = 5


def publisher_rank(mesh_id: str, node_id: str) -> bytes:
    """The order in which members take over publishing (lowest first)."""
    return hashlib.sha256(f"{mesh_id}/{node_id}".encode()).digest()


def takeover_position(view: MeshView, node_id: str) -> int:
    """This node's place in line among the live members (0: first)."""
    ranks = sorted(publisher_rank(view.mesh_id, p.id) for p in view)
    return ranks.index(publisher_rank(view.mesh_id, node_id))


def is_stale(listing: MeshListing | None, now: float, interval: float) -> bool:
    """No listing, or one older than 1.5 intervals: its publisher missed a round."""
    return listing is None or now - listing.created_at > 1.5 * interval


def should_yield(
    listing: MeshListing | None, view: MeshView, node_id: str, now: float, interval: float
) -> bool:
    """A publisher stops when a live member ranked before it published within the
    last interval."""
    if listing is None or listing.publisher in ("", node_id) or listing.publisher not in view:
        return False
    if now - listing.created_at > interval:
        return False
    mine = publisher_rank(view.mesh_id, node_id)
    return publisher_rank(view.mesh_id, listing.publisher) < mine


@dataclass(frozen=True)
class ListingMeta:
    """What a listing says beyond the mesh's state: chosen by the publisher."""

    name: str | None = None
    region: str | None = None
    max_clients: int | None = None


class DiscoveryService:
    """Publishes and watches a mesh's listing, and its members' rendezvous records."""

    def __init__(
        self,
        pool: RelayPool,
        key: NostrKey,
        mesh: MeshService,
        listing: Callable[[ListingMeta], MeshListing],
        *,
        publish: bool = False,
        meta: ListingMeta = ListingMeta(),
        rendezvous: bool = True,
        interval: float = REPUBLISH_S,
    ) -> None:
        self.pool = pool
        self.key = key
        self.mesh = mesh
        self.listing = listing
        self.publishing = publish
        self.meta = meta
        self.rendezvous = rendezvous
        self.interval = interval
        self.last_publish: float | None = None
        self.last_seen: MeshListing | None = None
        self.last_rendezvous: float | None = None
        self.took_over = 0
        self._changed = trio.Event()

    def changed(self) -> None:
        """The mesh changed (a model, a node): republish the listing soon."""
        self._changed.set()

    def status(self) -> dict[str, Any]:
        seen = self.last_seen
        return {
            "relays": self.pool.status(),
            "publishing": self.publishing,
            "last_publish": self.last_publish,
            "takeovers": self.took_over,
            "listing": None
            if seen is None
            else {
                "name": seen.name,
                "publisher": seen.publisher,
                "created_at": seen.created_at,
                "age_s": round(time.time() - seen.created_at, 1),
            },
            "rendezvous": {"enabled": self.rendezvous, "last_publish": self.last_rendezvous},
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._listing_loop)
            if self.rendezvous:
                nursery.start_soon(self._rendezvous_loop)

    # -- the listing ----------------------------------------------------------

    async def _listing_loop(self) -> None:
        if self.publishing:
            await self._publish()
        while True:
            wait = self.interval if self.publishing else self.interval / 2
            with trio.move_on_after(wait):
                await self._changed.wait()
            self._changed = trio.Event()
            await self._watch()
            if self.publishing:
                await self._publish()

    async def _own_listing(self) -> MeshListing | None:
        events = await self.pool.query([listing_filter(self.mesh.credentials.mesh_id)])
        found = current_listings(events, time.time())
        return found[0] if found else None

    async def _watch(self) -> None:
        listing = await self._own_listing()
        if listing is not None:
            self.last_seen = listing
            # A member that takes over keeps the name and region the mesh was listed by.
            if self.meta.name is None and self.meta.region is None:
                self.meta = replace(self.meta, name=listing.name, region=listing.region)
        now = time.time()
        view = self.mesh.view()
        if self.publishing:
            if should_yield(listing, view, self.mesh.node_id, now, self.interval):
                log.info(
                    "member %s publishes this mesh's listing; stopping",
                    listing and listing.publisher,
                )
                self.publishing = False
            return
        if listing is None or not is_stale(listing, now, self.interval):
            return  # never listed (a private mesh), or its publisher is alive
        position = takeover_position(view, self.mesh.node_id)
        await trio.sleep(position * self.interval / 6)
        again = await self._own_listing()
        if again is not None and not is_stale(again, time.time(), self.interval):
            self.last_seen = again
            return
        log.warning("this mesh's listing is stale; publishing it from this node")
        self.publishing = True
        self.took_over += 1

    async def _publish(self) -> None:
        listing = self.listing(self.meta)
        event = listing_event(self.key, listing, int(time.time()))
        accepted = await self.pool.publish(event)
        if accepted:
            self.last_publish = time.time()
            self.last_seen = replace(listing, created_at=event.created_at, author=self.key.pubkey)
        else:
            log.warning("no relay accepted this mesh's listing")

    # -- rendezvous -----------------------------------------------------------

    async def _rendezvous_loop(self) -> None:
        while True:
            await self.publish_whereabouts()
            await trio.sleep(self.interval * RENDEZVOUS_EVERY)

    async def publish_whereabouts(self) -> None:
        mesh = self.mesh
        record = RendezvousRecord(mesh.node_id, tuple(mesh.addrs), int(time.time()))
        event = rendezvous_event(self.key, mesh.credentials.secret, record, record.at)
        if await self.pool.publish(event):
            self.last_rendezvous = time.time()

    async def find_members(self) -> Sequence[RendezvousRecord]:
        """Where the other members of this mesh last said they were."""
        secret = self.mesh.credentials.secret
        events = await self.pool.query([rendezvous_filter(secret, time.time())])
        records = current_rendezvous(events, secret, time.time())
        return [r for r in records if r.node_id != self.mesh.node_id]
