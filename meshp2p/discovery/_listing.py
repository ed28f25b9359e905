"""What meshp2p puts on Nostr: public mesh listings and private rendezvous records.

Pure: building, reading and scoring the events, no I/O and no clock reads.
``protocols/discovery.md`` is the specification; its test vectors come from here.

- A **listing** (kind 31990, replaceable per author and ``d`` = mesh id, tag
  ``k`` = ``meshp2p``, NIP-40 expiration) makes a mesh public: its invite token,
  models, memory, node counts, name and region.
- A **rendezvous record** (kind 30078, ``d`` = an opaque tag derived from the
  mesh secret and the day) lets members of a private mesh re-find each other:
  its content is the member's addresses, encrypted (ChaCha20-Poly1305) under a
  key derived from the secret. Outsiders see random-looking tags and ciphertext.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .._errors import ProtocolError
from ._nostr import MAX_CONTENT, Event, NostrKey, newest_replaceable

LISTING_KIND = 31990
RENDEZVOUS_KIND = 30078
LISTING_TAG = "meshp2p"
LISTING_VERSION = 1
#: A publisher republishes every interval; a listing expires after two.
REPUBLISH_S = 60
LISTING_TTL_S = 120
#: Rendezvous records: republished every few minutes, kept a while longer.
RENDEZVOUS_EVERY_S = 300
RENDEZVOUS_TTL_S = 1800

_MAX_NAME = 64
_MAX_MODELS = 64
_MAX_ADDRS = 32
_KEY_INFO = b"meshp2p/rendezvous/v1 key"
_TAG_INFO = b"meshp2p/rendezvous/v1 tag"
_DAY_S = 86_400


@dataclass(frozen=True)
class MeshListing:
    """A public mesh as its listing describes it."""

    mesh_id: str
    invite: str
    name: str | None = None
    region: str | None = None
    models_served: tuple[str, ...] = ()
    models_wanted: tuple[str, ...] = ()
    models_on_disk: tuple[str, ...] = ()
    memory_total: int = 0
    nodes: int = 0
    clients: int = 0
    max_clients: int | None = None
    version: str = ""
    #: The node that published it (its libp2p peer id).
    publisher: str = ""
    # From the event, not the content:
    created_at: int = 0
    expires_at: int | None = None
    author: str = field(default="", compare=False)

    @property
    def full(self) -> bool:
        return self.max_clients is not None and self.clients >= self.max_clients

    def content(self) -> dict[str, Any]:
        return {
            "v": LISTING_VERSION,
            "mesh_id": self.mesh_id,
            "invite": self.invite,
            "name": self.name,
            "region": self.region,
            "models_served": list(self.models_served),
            "models_wanted": list(self.models_wanted),
            "models_on_disk": list(self.models_on_disk),
            "memory_total": self.memory_total,
            "nodes": self.nodes,
            "clients": self.clients,
            "max_clients": self.max_clients,
            "version": self.version,
            "publisher": self.publisher,
        }


def listing_event(
    key: NostrKey, listing: MeshListing, now: int, *, aux: bytes | None = None
) -> Event:
    """The signed kind-31990 event for ``listing``, valid for ``LISTING_TTL_S``."""
    tags = [
        ["d", listing.mesh_id],
        ["k", LISTING_TAG],
        ["expiration", str(now + LISTING_TTL_S)],
    ]
    if listing.name:
        tags.append(["n", listing.name])
    content = json.dumps(listing.content(), separators=(",", ":"), ensure_ascii=False)
    return key.sign(LISTING_KIND, tags, content, now, aux=aux)


def listing_filter(mesh_id: str | None = None, name: str | None = None) -> dict[str, Any]:
    """The relay filter for meshp2p listings (of one mesh, or of one name)."""
    out: dict[str, Any] = {"kinds": [LISTING_KIND], "#k": [LISTING_TAG], "limit": 500}
    if mesh_id is not None:
        out["#d"] = [mesh_id]
    if name is not None:
        out["#n"] = [name]
    return out


def parse_listing(event: Event) -> MeshListing:
    """The listing an event carries; ``ProtocolError`` if it is none (the event's
    signature and expiry are ``newest_replaceable``'s to check)."""
    if event.kind != LISTING_KIND or event.tag("k") != LISTING_TAG:
        raise ProtocolError("not a meshp2p listing")
    if event.expiration is None:
        raise ProtocolError("a listing must expire (NIP-40)")
    try:
        data = json.loads(event.content)
    except (ValueError, RecursionError):
        raise ProtocolError("listing content is not JSON") from None
    if not isinstance(data, dict) or data.get("v") != LISTING_VERSION:
        raise ProtocolError("listing content is not a version-1 object")
    mesh_id = _text(data, "mesh_id", 128)
    if mesh_id != event.tag("d"):
        raise ProtocolError("listing's mesh id differs from its d tag")
    invite = _text(data, "invite", MAX_CONTENT)
    if not invite.startswith("mp1."):
        raise ProtocolError("listing's invite is not a meshp2p token")
    return MeshListing(
        mesh_id=mesh_id,
        invite=invite,
        name=_optional_text(data, "name", _MAX_NAME),
        region=_optional_text(data, "region", _MAX_NAME),
        models_served=_names(data, "models_served"),
        models_wanted=_names(data, "models_wanted"),
        models_on_disk=_names(data, "models_on_disk"),
        memory_total=_count(data, "memory_total"),
        nodes=_count(data, "nodes"),
        clients=_count(data, "clients"),
        max_clients=None if data.get("max_clients") is None else _count(data, "max_clients"),
        version=_optional_text(data, "version", 64) or "",
        publisher=_optional_text(data, "publisher", 128) or "",
        created_at=event.created_at,
        expires_at=event.expiration,
        author=event.pubkey,
    )


def current_listings(events: Iterable[Event], now: float) -> list[MeshListing]:
    """One listing per mesh, the freshest, from whatever relays returned: bad
    signatures, expired and future-dated events, malformed listings and older
    replaceable versions dropped; sorted freshest first."""
    best: dict[str, MeshListing] = {}
    for event in newest_replaceable(events, now):
        try:
            listing = parse_listing(event)
        except ProtocolError:
            continue
        held = best.get(listing.mesh_id)
        if held is None or listing.created_at > held.created_at:
            best[listing.mesh_id] = listing
    return sorted(best.values(), key=lambda item: (-item.created_at, item.mesh_id))


@dataclass(frozen=True)
class Preferences:
    """What ``--auto`` looks for."""

    mesh_name: str | None = None
    region: str | None = None
    last_mesh: str | None = None
    models: tuple[str, ...] = ()


def score(listing: MeshListing, wants: Preferences) -> float | None:
    """How well a listing suits this node; None: not a candidate (full, or another
    name than the one asked for). The product's auto-join score, adapted:

    base 100; the asked name +300; a named mesh when none was asked -200; the mesh
    this home was last in +500; free client slots +min(headroom, 20); +5 per node
    (up to 10 nodes); +10 per served model; +15 per wanted model; +50 for the asked
    region; +100 per asked model the mesh serves, +25 per one it holds on disk.
    """
    if listing.full:
        return None
    if wants.mesh_name is not None and listing.name != wants.mesh_name:
        return None
    total = 100.0
    if wants.mesh_name is not None:
        total += 300
    elif listing.name:
        total -= 200
    if wants.last_mesh is not None and listing.mesh_id == wants.last_mesh:
        total += 500
    if listing.max_clients is not None:
        total += min(listing.max_clients - listing.clients, 20)
    total += 5 * min(listing.nodes, 10)
    total += 10 * len(listing.models_served) + 15 * len(listing.models_wanted)
    if wants.region is not None and listing.region == wants.region:
        total += 50
    for model in wants.models:
        if model in listing.models_served:
            total += 100
        elif model in listing.models_on_disk:
            total += 25
    return total


def ranked(listings: Iterable[MeshListing], wants: Preferences) -> list[tuple[float, MeshListing]]:
    """The candidates, best first (ties: the fresher listing, then the mesh id)."""
    scored = [(s, item) for item in listings if (s := score(item, wants)) is not None]
    return sorted(scored, key=lambda p: (-p[0], -p[1].created_at, p[1].mesh_id))


# Rendezvous.


@dataclass(frozen=True)
class RendezvousRecord:
    """A member's whereabouts, as decrypted from its record."""

    node_id: str
    addrs: tuple[str, ...]
    at: int


def rendezvous_key(secret: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_KEY_INFO).derive(secret)


def rendezvous_tag(secret: bytes, now: float) -> str:
    """The opaque ``d`` tag of a mesh's records on the day of ``now`` (UTC days, so the
    tag changes daily and records of different days cannot be linked by it)."""
    day = int(now // _DAY_S)
    return hmac.new(secret, _TAG_INFO + day.to_bytes(8, "big"), hashlib.sha256).hexdigest()


def rendezvous_tags(secret: bytes, now: float) -> list[str]:
    """Tags to look up at ``now``: today's, and yesterday's (a record made just before
    midnight lives on into the new day)."""
    return [rendezvous_tag(secret, now), rendezvous_tag(secret, now - _DAY_S)]


def rendezvous_event(
    key: NostrKey,
    secret: bytes,
    record: RendezvousRecord,
    now: int,
    *,
    nonce: bytes | None = None,
    aux: bytes | None = None,
) -> Event:
    """The signed kind-30078 record of a member's addresses, sealed under the mesh
    secret. ``nonce`` (12 bytes) and ``aux`` are fixed only for test vectors."""
    tag = rendezvous_tag(secret, now)
    plain = json.dumps(
        {"node": record.node_id, "addrs": list(record.addrs), "at": record.at},
        separators=(",", ":"),
    ).encode()
    nonce = os.urandom(12) if nonce is None else nonce
    sealed = nonce + ChaCha20Poly1305(rendezvous_key(secret)).encrypt(nonce, plain, tag.encode())
    content = base64.urlsafe_b64encode(sealed).decode().rstrip("=")
    tags = [["d", tag], ["expiration", str(now + RENDEZVOUS_TTL_S)]]
    return key.sign(RENDEZVOUS_KIND, tags, content, now, aux=aux)


def open_rendezvous(event: Event, secret: bytes) -> RendezvousRecord:
    """The record an event seals; ``ProtocolError`` if it is not one of this mesh's."""
    tag = event.tag("d")
    if event.kind != RENDEZVOUS_KIND or tag is None:
        raise ProtocolError("not a rendezvous record")
    try:
        sealed = base64.urlsafe_b64decode(event.content + "=" * (-len(event.content) % 4))
        plain = ChaCha20Poly1305(rendezvous_key(secret)).decrypt(
            sealed[:12], sealed[12:], tag.encode()
        )
        data = json.loads(plain)
    except Exception:  # wrong key, tampered, truncated: all mean "not ours"
        raise ProtocolError("rendezvous record does not open with this mesh's secret") from None
    if not isinstance(data, dict):
        raise ProtocolError("rendezvous record is not an object")
    addrs = data.get("addrs")
    if not isinstance(addrs, list) or len(addrs) > _MAX_ADDRS:
        raise ProtocolError("rendezvous record has no address list")
    if not all(isinstance(a, str) and len(a) <= 256 and "/p2p/" in a for a in addrs):
        raise ProtocolError("rendezvous record has a bad address")
    return RendezvousRecord(_text(data, "node", 128), tuple(addrs), _count(data, "at"))


def rendezvous_filter(secret: bytes, now: float) -> dict[str, Any]:
    return {"kinds": [RENDEZVOUS_KIND], "#d": rendezvous_tags(secret, now), "limit": 500}


def current_rendezvous(
    events: Iterable[Event], secret: bytes, now: float
) -> list[RendezvousRecord]:
    """The newest record of each member that opens with ``secret``, newest first."""
    best: dict[str, RendezvousRecord] = {}
    for event in newest_replaceable(events, now):
        try:
            record = open_rendezvous(event, secret)
        except ProtocolError:
            continue
        held = best.get(record.node_id)
        if held is None or record.at > held.at:
            best[record.node_id] = record
    return sorted(best.values(), key=lambda r: (-r.at, r.node_id))


# Field readers: every value from a relay is untrusted.


def _text(data: dict[str, Any], name: str, limit: int) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value or len(value) > limit:
        raise ProtocolError(f"{name!r} must be a non-empty string of at most {limit} characters")
    return value


def _optional_text(data: dict[str, Any], name: str, limit: int) -> str | None:
    return None if data.get(name) in (None, "") else _text(data, name, limit)


def _count(data: dict[str, Any], name: str) -> int:
    value = data.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise ProtocolError(f"{name!r} must be a non-negative integer")
    return value


def _names(data: dict[str, Any], name: str) -> tuple[str, ...]:
    value = data.get(name, [])
    if not isinstance(value, list) or len(value) > _MAX_MODELS:
        raise ProtocolError(f"{name!r} must be a list of at most {_MAX_MODELS} names")
    if not all(isinstance(v, str) and 0 < len(v) <= 256 for v in value):
        raise ProtocolError(f"{name!r} must hold model names")
    return tuple(value)


def names_from(items: Sequence[str]) -> tuple[str, ...]:
    """At most the number of model names a listing may carry, sorted and unique."""
    return tuple(sorted(set(items)))[:_MAX_MODELS]
