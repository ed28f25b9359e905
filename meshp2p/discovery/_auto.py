"""Finding public meshes: ``find_listings`` (``meshp2p discover``) and ``choose_mesh``
(``meshp2p node --auto``), which health-checks the best before joining it."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from .._errors import MeshError
from .._private_files import read_private, write_private
from ..mesh._invite import InviteError, InviteToken
from ..mesh._service import MeshService
from ..transport._host import addrs_by_peer
from ._listing import MeshListing, Preferences, current_listings, listing_filter, ranked
from ._nostr import NostrKey
from ._relay import RelayPool

log = logging.getLogger("meshp2p.discovery")

NOSTR_KEY_FILE = "nostr.key"
#: A listed mesh must let us dial and authenticate within this long to be joined.
PROBE_TIMEOUT = 5.0
#: Listings health-checked before giving up and starting a new mesh.
MAX_PROBES = 5
_PROBE_LISTEN = ("/ip4/127.0.0.1/udp/0/quic-v1", "/ip4/127.0.0.1/tcp/0")


def load_or_create_nostr_key(home: Path) -> NostrKey:
    """The node's Nostr key from ``home/nostr.key`` (hex, mode 0600), made on first use.

    Its own key, not the libp2p one: what a node signs on Nostr cannot be linked to
    its peer id, which matters for private rendezvous records.
    """
    path = home / NOSTR_KEY_FILE
    if path.exists():
        try:
            return NostrKey(bytes.fromhex(read_private(path).decode().strip()))
        except ValueError:
            raise MeshError(f"{path} is not a Nostr key; move it away to make a new one") from None
    key = NostrKey(os.urandom(32))
    write_private(path, key.secret.hex().encode() + b"\n")
    return key


async def find_listings(
    pool: RelayPool, *, mesh_name: str | None = None, model: str | None = None
) -> list[MeshListing]:
    """The public meshes the relays know, freshest first (one listing per mesh)."""
    events = await pool.query([listing_filter(name=mesh_name)])
    found = current_listings(events, time.time())
    if mesh_name is not None:
        found = [item for item in found if item.name == mesh_name]
    if model is not None:
        found = [
            item for item in found if model in item.models_served or model in item.models_on_disk
        ]
    return found


async def probe(listing: MeshListing) -> bool:
    """Whether a listed mesh answers: dial its token's first node and prove membership
    on ``/mesh/auth`` both ways within ``PROBE_TIMEOUT``, as a passive client with a
    throwaway identity."""
    try:
        token = InviteToken.decode(listing.invite)
    except InviteError as exc:
        log.info("listing of mesh %s has a bad token: %s", listing.mesh_id, exc)
        return False
    if token.credentials.mesh_id != listing.mesh_id:
        log.info("listing of mesh %s carries a token of another mesh", listing.mesh_id)
        return False
    mesh = MeshService(create_new_key_pair(), token.credentials, listen=_PROBE_LISTEN, client=True)
    peers = list(addrs_by_peer(token.bootstrap).items())
    ok = False
    async with trio.open_nursery() as nursery:
        await nursery.start(mesh.run)
        with trio.move_on_after(PROBE_TIMEOUT):
            for peer, addrs in peers:
                if await mesh.connect(peer, addrs):
                    ok = True
                    break
        nursery.cancel_scope.cancel()
    return ok


async def choose_mesh(pool: RelayPool, wants: Preferences) -> MeshListing | None:
    """The best-scoring listed mesh that answers a health check; None if none does."""
    listings = await find_listings(pool, mesh_name=wants.mesh_name)
    candidates = ranked(listings, wants)
    log.info("found %d listed meshes, %d candidates", len(listings), len(candidates))
    for points, listing in candidates[:MAX_PROBES]:
        if await probe(listing):
            log.info("joining mesh %s (%s, score %.0f)", listing.mesh_id, listing.name, points)
            return listing
        log.info("mesh %s (%s) did not answer; trying the next", listing.mesh_id, listing.name)
    return None
