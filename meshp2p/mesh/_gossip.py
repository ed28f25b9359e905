"""/mesh/gossip/1.0.0 core: signed node announcements and the messages that carry them.

Sans-I/O: no streams; see protocols/gossip.md. The view they build is ``_state``'s.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from libp2p.crypto.keys import PrivateKey
from libp2p.crypto.serialization import deserialize_public_key
from libp2p.peer.id import ID

from .._errors import ProtocolError
from ..transport._wire import (
    TYPE_KEY,
    bytes_field,
    encode_cbor,
    encode_varint,
    list_field,
    map_field,
    message_type,
    text_field,
    uint_field,
)

PROTOCOL_ID = "/mesh/gossip/1.0.0"
MAX_FRAME = 64 * 1024

ROLES = ("host", "worker", "client", "standby")
"""Roles this version assigns. A received role outside this set is kept as-is: a newer
peer may know more roles, and refusing its announcement would hide it from the mesh."""

MAX_NODE_ID_LEN = 128
MAX_MESH_ID_LEN = 128
MAX_ADDRS = 32
MAX_ADDR_LEN = 256
MAX_ROLE_LEN = 32
MAX_MODELS_SERVED = 64
MAX_MODELS_ON_DISK = 128
MAX_MODEL_NAME_LEN = 256
MAX_REQUEST_RATES = 64
MAX_VERSION_LEN = 64
MAX_PUBLIC_KEY_LEN = 1024
MAX_SIGNATURE_LEN = 1024
MAX_MAP_KEYS = 64
"""Known plus unknown keys of one announcement or model entry."""
MAX_DIGEST_ENTRIES = 512
MAX_WANT = 512

ANNOUNCEMENT_DOMAIN = b"meshp2p/gossip/v1 announcement\x00"
LEAVING_DOMAIN = b"meshp2p/gossip/v1 leaving\x00"

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ModelFile:
    """A model file a node holds on disk; ``sha256`` is 64 lowercase hex digits."""

    name: str
    size: int
    sha256: str
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Keys this version does not know, kept so a relayed announcement still verifies."""

    def __hash__(self) -> int:
        return hash((self.name, self.size, self.sha256))

    def to_map(self) -> dict[str, Any]:
        return {**self.extra, "name": self.name, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class Announcement:
    """One node's signed description of itself; a higher ``seq`` supersedes a lower one.

    ``signature`` covers the deterministic CBOR of the announcement map as received,
    minus the ``signature`` key, unknown keys included (``extra``).
    """

    node_id: str
    seq: int
    mesh_id: str
    addrs: tuple[str, ...]
    role: str
    models_served: tuple[str, ...]
    models_on_disk: tuple[ModelFile, ...]
    memory_free: int
    memory_total: int
    request_rates: Mapping[str, float]
    version: str
    public_key: bytes
    signature: bytes
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Keys this version does not know, kept so a relayed announcement still verifies."""
    #: Optional (v1): models this node has taken on and is loading; absent when none.
    models_loading: tuple[str, ...] = ()

    def __hash__(self) -> int:
        return hash((self.node_id, self.seq, self.signature))

    def to_map(self) -> dict[str, Any]:
        return {**self.unsigned_map(), "signature": self.signature}

    def unsigned_map(self) -> dict[str, Any]:
        return {
            **self.extra,
            "node_id": self.node_id,
            "seq": self.seq,
            "mesh_id": self.mesh_id,
            "addrs": list(self.addrs),
            "role": self.role,
            "models_served": list(self.models_served),
            "models_on_disk": [model.to_map() for model in self.models_on_disk],
            "memory_free": self.memory_free,
            "memory_total": self.memory_total,
            "request_rates": dict(self.request_rates),
            "version": self.version,
            "public_key": self.public_key,
            # Optional keys appear only when set: announcements without them keep the
            # exact map (and signature) older nodes make.
            **({"models_loading": list(self.models_loading)} if self.models_loading else {}),
        }

    @cached_property
    def signed_payload(self) -> bytes:
        """The exact bytes the signature is over."""
        return ANNOUNCEMENT_DOMAIN + encode_cbor(self.unsigned_map())


_ANNOUNCEMENT_KEYS = frozenset(
    (
        "node_id",
        "seq",
        "mesh_id",
        "addrs",
        "role",
        "models_served",
        "models_on_disk",
        "memory_free",
        "memory_total",
        "request_rates",
        "version",
        "public_key",
        "signature",
        "models_loading",
    )
)
_MODEL_FILE_KEYS = frozenset(("name", "size", "sha256"))


def parse_announcement(m: Mapping[str, Any]) -> Announcement:
    """Check every limit and type of an announcement map; raise ProtocolError. No crypto."""
    where = "announcement "
    if not isinstance(m, Mapping):
        raise ProtocolError("an announcement must be a map")
    if len(m) > MAX_MAP_KEYS:
        raise ProtocolError(f"announcement has more than {MAX_MAP_KEYS} keys")
    addrs = list_field(m, "addrs", max_len=MAX_ADDRS, where=where)
    served = list_field(m, "models_served", max_len=MAX_MODELS_SERVED, where=where)
    on_disk = list_field(m, "models_on_disk", max_len=MAX_MODELS_ON_DISK, where=where)
    rates = map_field(m, "request_rates", max_len=MAX_REQUEST_RATES, where=where)
    loading = (
        list_field(m, "models_loading", max_len=MAX_MODELS_SERVED, where=where)
        if "models_loading" in m
        else []
    )
    return Announcement(
        node_id=text_field(m, "node_id", max_len=MAX_NODE_ID_LEN, where=where),
        seq=uint_field(m, "seq", where=where),
        mesh_id=text_field(m, "mesh_id", max_len=MAX_MESH_ID_LEN, where=where),
        addrs=tuple(_text_item(a, "addrs", MAX_ADDR_LEN) for a in addrs),
        role=text_field(m, "role", max_len=MAX_ROLE_LEN, where=where),
        models_served=tuple(_text_item(s, "models_served", MAX_MODEL_NAME_LEN) for s in served),
        models_on_disk=tuple(_parse_model_file(entry) for entry in on_disk),
        memory_free=uint_field(m, "memory_free", where=where),
        memory_total=uint_field(m, "memory_total", where=where),
        request_rates={
            _text_item(k, "request_rates", MAX_MODEL_NAME_LEN): _rate(v) for k, v in rates.items()
        },
        version=text_field(m, "version", max_len=MAX_VERSION_LEN, min_len=0, where=where),
        public_key=bytes_field(m, "public_key", max_len=MAX_PUBLIC_KEY_LEN, where=where),
        signature=bytes_field(m, "signature", max_len=MAX_SIGNATURE_LEN, where=where),
        # An empty models_loading list stays as received, so its signature still verifies.
        extra={
            k: v
            for k, v in m.items()
            if k not in _ANNOUNCEMENT_KEYS or (k == "models_loading" and not loading)
        },
        models_loading=tuple(_text_item(s, "models_loading", MAX_MODEL_NAME_LEN) for s in loading),
    )


def _text_item(value: Any, name: str, max_len: int) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= max_len:
        raise ProtocolError(
            f"announcement field {name!r} holds an item that is not 1..{max_len} characters of text"
        )
    return value


def _rate(value: Any) -> float:
    # Kept exactly as received (an int stays an int): converting would change the
    # deterministic encoding and break the signature of a peer whose CBOR library
    # writes 2.0 as the integer 2.
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ProtocolError("announcement field 'request_rates' values must be numbers >= 0")
    return value


def _finite(value: Any, name: str, limit: float) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 <= value <= limit  # also refuses NaN
    ):
        raise ProtocolError(f"demand field {name!r} values must be numbers in 0..{limit:g}")
    return float(value)


def _parse_model_file(entry: Any) -> ModelFile:
    where = "models_on_disk entry "
    if not isinstance(entry, dict):
        raise ProtocolError("announcement field 'models_on_disk' holds an item that is not a map")
    if len(entry) > MAX_MAP_KEYS:
        raise ProtocolError(f"{where}has more than {MAX_MAP_KEYS} keys")
    sha256 = text_field(entry, "sha256", min_len=64, max_len=64, where=where)
    if not _SHA256_HEX.fullmatch(sha256):
        raise ProtocolError(f"{where}field 'sha256' must be 64 lowercase hex digits")
    return ModelFile(
        name=text_field(entry, "name", max_len=MAX_MODEL_NAME_LEN, where=where),
        size=uint_field(entry, "size", where=where),
        sha256=sha256,
        extra={k: v for k, v in entry.items() if k not in _MODEL_FILE_KEYS},
    )


def node_id_of(private_key: PrivateKey) -> str:
    """The libp2p peer id (base58 multihash) a key signs as."""
    return ID.from_pubkey(private_key.get_public_key()).to_base58()


def sign(fields: Mapping[str, Any], private_key: PrivateKey) -> Announcement:
    """Build and sign an announcement from ``fields`` (the map keys, minus the signature).

    ``public_key`` and ``node_id`` come from ``private_key``; a ``node_id`` in ``fields``
    must match it. Raises ValueError for fields we would refuse from a peer, an unknown
    role, or an announcement too big for one frame.
    """
    unsigned = dict(fields)
    if "signature" in unsigned:
        raise ValueError("fields to sign must not hold a signature")
    node_id = node_id_of(private_key)
    if unsigned.setdefault("node_id", node_id) != node_id:
        raise ValueError(f"node_id {unsigned['node_id']!r} is not the peer id of the key")
    if unsigned.get("role") not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    unsigned["public_key"] = private_key.get_public_key().serialize()
    unsigned["models_on_disk"] = [
        m.to_map() if isinstance(m, ModelFile) else dict(m)
        for m in unsigned.get("models_on_disk", ())
    ]
    rates = unsigned.get("request_rates", {})
    if isinstance(rates, Mapping):
        # We always send floats; peers must still accept integers (see _rate).
        unsigned["request_rates"] = {
            k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v
            for k, v in rates.items()
        }
    payload = ANNOUNCEMENT_DOMAIN + encode_cbor(unsigned)
    try:
        announcement = parse_announcement({**unsigned, "signature": private_key.sign(payload)})
    except ProtocolError as exc:
        raise ValueError(str(exc)) from None
    encode_gossip_message(Announce(announcement))  # raises ValueError if it cannot be sent
    return announcement


def _signature_ok(node_id: str, public_key: bytes, payload: bytes, signature: bytes) -> bool:
    # libp2p's key parsers raise a different exception type per key type and per way the
    # bytes are wrong; to a verifier every one of them just means "not valid".
    try:
        key = deserialize_public_key(public_key)
        if ID.from_pubkey(key).to_base58() != node_id:
            return False
        return bool(key.verify(payload, signature))
    except Exception:
        return False


def verify(announcement: Announcement) -> bool:
    """True if the signature is valid and ``node_id`` is the peer id of ``public_key``."""
    return _signature_ok(
        announcement.node_id,
        announcement.public_key,
        announcement.signed_payload,
        announcement.signature,
    )


# Messages.


@dataclass(frozen=True)
class Announce:
    """Carries one announcement, new or relayed."""

    announcement: Announcement

    def to_map(self) -> dict[str, Any]:
        return {TYPE_KEY: "announce", "announcement": self.announcement.to_map()}


@dataclass(frozen=True)
class Digest:
    """The sender's (node_id → seq) view, or part of it; also serves as the heartbeat."""

    entries: Mapping[str, int]

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.entries.items())))

    def to_map(self) -> dict[str, Any]:
        return {TYPE_KEY: "digest", "entries": dict(self.entries)}


#: A summary splits the view into this many buckets (by a hash of the node id).
SUMMARY_BUCKETS = 16
SUMMARY_HASH_LEN = 8


@dataclass(frozen=True)
class Summary:
    """The sender's view as one short hash per bucket of node ids: in a large mesh, the
    heartbeat. A receiver answers the buckets that differ from its own with a Digest
    of just those nodes (``_state.MeshState.bucket_digest``)."""

    buckets: tuple[bytes, ...]

    def to_map(self) -> dict[str, Any]:
        return {TYPE_KEY: "summary", "buckets": list(self.buckets)}


@dataclass(frozen=True)
class Want:
    """Asks for the current announcements of these nodes."""

    node_ids: tuple[str, ...]

    def to_map(self) -> dict[str, Any]:
        return {TYPE_KEY: "want", "node_ids": list(self.node_ids)}


@dataclass(frozen=True)
class Leaving:
    """A node's own signed notice that it is leaving; supersedes announcements up to ``seq``.

    ``signature`` covers the deterministic CBOR of the whole message map as received,
    minus the ``signature`` key, unknown keys included.
    """

    node_id: str
    seq: int
    mesh_id: str
    public_key: bytes
    signature: bytes
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __hash__(self) -> int:
        return hash((self.node_id, self.seq, self.signature))

    def to_map(self) -> dict[str, Any]:
        return {**self.unsigned_map(), "signature": self.signature}

    def unsigned_map(self) -> dict[str, Any]:
        return {
            **self.extra,
            TYPE_KEY: "leaving",
            "node_id": self.node_id,
            "seq": self.seq,
            "mesh_id": self.mesh_id,
            "public_key": self.public_key,
        }

    @cached_property
    def signed_payload(self) -> bytes:
        return LEAVING_DOMAIN + encode_cbor(self.unsigned_map())


@dataclass(frozen=True)
class Dead:
    """A peer's unsigned notice that ``node_id`` stopped answering at ``seq``."""

    node_id: str
    seq: int

    def to_map(self) -> dict[str, Any]:
        return {TYPE_KEY: "dead", "node_id": self.node_id, "seq": self.seq}


ROOT_HASH_LEN = 8


@dataclass(frozen=True)
class Tick:
    """In a large mesh, the heartbeat to a peer whose last view hash equalled ours: one
    short hash of the whole view (``_state.MeshState.root``) instead of a Summary's 16.
    A receiver whose own hash differs answers with its Summary."""

    root: bytes

    def to_map(self) -> dict[str, Any]:
        return {TYPE_KEY: "tick", "root": self.root}


#: Push-sum weights sum to the number of nodes; no mesh holds more than the view cap.
MAX_DEMAND_WEIGHT = 1e6
#: A rate (requests per minute, summed over a share) above this is garbage.
MAX_DEMAND_SUM = 1e12


@dataclass(frozen=True)
class DemandShare:
    """One push-sum share of the mesh's demand (``meshp2p.planner.PushSum``): in a large
    mesh, nodes average their request rates this way instead of each announcing its own."""

    epoch: int
    weight: float
    sums: Mapping[str, float]

    def to_map(self) -> dict[str, Any]:
        return {
            TYPE_KEY: "demand",
            "epoch": self.epoch,
            "weight": self.weight,
            "sums": dict(self.sums),
        }


GossipMessage = Announce | Digest | Summary | Want | Leaving | Dead | Tick | DemandShare

_LEAVING_KEYS = frozenset((TYPE_KEY, "node_id", "seq", "mesh_id", "public_key", "signature"))


def sign_leaving(seq: int, mesh_id: str, private_key: PrivateKey) -> Leaving:
    unsigned = Leaving(
        node_id=node_id_of(private_key),
        seq=seq,
        mesh_id=mesh_id,
        public_key=private_key.get_public_key().serialize(),
        signature=b"",
    )
    return Leaving(
        node_id=unsigned.node_id,
        seq=seq,
        mesh_id=mesh_id,
        public_key=unsigned.public_key,
        signature=private_key.sign(unsigned.signed_payload),
    )


def verify_leaving(leaving: Leaving) -> bool:
    """True if the leaving node signed this notice and ``node_id`` matches its key."""
    return _signature_ok(
        leaving.node_id, leaving.public_key, leaving.signed_payload, leaving.signature
    )


def parse_gossip_message(m: Mapping[str, Any]) -> GossipMessage | None:
    """Turn a decoded map into a gossip message; None for a type this version does not know.

    Raises ProtocolError for a known type with missing, mistyped or over-limit fields.
    """
    kind = message_type(m)
    if kind == "announce":
        return Announce(parse_announcement(map_field(m, "announcement", max_len=MAX_MAP_KEYS)))
    if kind == "digest":
        entries = map_field(m, "entries", max_len=MAX_DIGEST_ENTRIES)
        return Digest({_node_id(k): uint_field(entries, k, where="digest ") for k in entries})
    if kind == "summary":
        buckets = list_field(m, "buckets", max_len=SUMMARY_BUCKETS)
        if len(buckets) != SUMMARY_BUCKETS or not all(
            isinstance(b, bytes) and len(b) == SUMMARY_HASH_LEN for b in buckets
        ):
            raise ProtocolError(
                f"summary must hold {SUMMARY_BUCKETS} hashes of {SUMMARY_HASH_LEN} bytes"
            )
        return Summary(tuple(buckets))
    if kind == "tick":
        return Tick(bytes_field(m, "root", max_len=ROOT_HASH_LEN, min_len=ROOT_HASH_LEN))
    if kind == "demand":
        sums = map_field(m, "sums", max_len=MAX_REQUEST_RATES)
        return DemandShare(
            epoch=uint_field(m, "epoch"),
            weight=_finite(m.get("weight"), "weight", MAX_DEMAND_WEIGHT),
            sums={
                _text_item(k, "sums", MAX_MODEL_NAME_LEN): _finite(v, "sums", MAX_DEMAND_SUM)
                for k, v in sums.items()
            },
        )
    if kind == "want":
        ids = list_field(m, "node_ids", max_len=MAX_WANT)
        return Want(tuple(_node_id(i) for i in ids))
    if kind == "leaving":
        return Leaving(
            node_id=text_field(m, "node_id", max_len=MAX_NODE_ID_LEN),
            seq=uint_field(m, "seq"),
            mesh_id=text_field(m, "mesh_id", max_len=MAX_MESH_ID_LEN),
            public_key=bytes_field(m, "public_key", max_len=MAX_PUBLIC_KEY_LEN),
            signature=bytes_field(m, "signature", max_len=MAX_SIGNATURE_LEN),
            extra={k: v for k, v in m.items() if k not in _LEAVING_KEYS},
        )
    if kind == "dead":
        return Dead(
            node_id=text_field(m, "node_id", max_len=MAX_NODE_ID_LEN), seq=uint_field(m, "seq")
        )
    return None


def _node_id(value: Any) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_NODE_ID_LEN:
        raise ProtocolError(f"node id must be 1..{MAX_NODE_ID_LEN} characters of text")
    return value


def encode_gossip_message(msg: GossipMessage) -> bytes:
    """The frame for ``msg``; ValueError if it would exceed MAX_FRAME (a peer would refuse it)."""
    body = encode_cbor(msg.to_map())
    if len(body) > MAX_FRAME:
        raise ValueError(f"gossip message is {len(body)} bytes, over the {MAX_FRAME}-byte limit")
    return encode_varint(len(body)) + body


def digests(entries: Mapping[str, int]) -> list[Digest]:
    """Split a view into Digest messages that each fit the entry limit (at least one)."""
    items = sorted(entries.items())
    chunks = [items[i : i + MAX_DIGEST_ENTRIES] for i in range(0, len(items), MAX_DIGEST_ENTRIES)]
    return [Digest(dict(chunk)) for chunk in chunks] or [Digest({})]


def next_seq(previous: int, wall_clock: float) -> int:
    """The seq for a node's next announcement: milliseconds since the epoch, but always above
    ``previous`` so it keeps rising across restarts and clock steps backwards."""
    return max(previous + 1, int(wall_clock * 1000))
