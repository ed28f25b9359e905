"""The mesh view that /mesh/gossip builds: ``MeshState`` (mutable, pure) and the
``MeshView`` snapshots that placement and routing read.

Sans-I/O: no streams, no clock reads (``now`` is always a parameter).
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from ._gossip import (
    ROOT_HASH_LEN,
    SUMMARY_BUCKETS,
    SUMMARY_HASH_LEN,
    Announcement,
    Dead,
    Leaving,
    ModelFile,
    verify,
    verify_leaving,
)


def bucket_of(node_id: str) -> int:
    """The summary bucket of a node id (stable, spread evenly)."""
    return hashlib.sha256(node_id.encode()).digest()[0] % SUMMARY_BUCKETS


@dataclass(frozen=True)
class PeerInfo:
    """What placement and routing read about one live node."""

    id: str
    addrs: tuple[str, ...]
    role: str
    models_served: tuple[str, ...]
    models_on_disk: tuple[ModelFile, ...]
    memory_free: int
    memory_total: int
    rtt_ms: float | None
    last_seen: float
    request_rates: Mapping[str, float] = field(default_factory=dict)
    version: str = ""
    seq: int = 0
    #: Models the node has taken on and is loading (not answering yet).
    models_loading: tuple[str, ...] = ()

    def __hash__(self) -> int:
        return hash((self.id, self.seq, self.last_seen))


@dataclass(frozen=True)
class MeshView:
    """An immutable snapshot of the live nodes, sorted by id."""

    mesh_id: str
    peers: tuple[PeerInfo, ...]
    #: In a large mesh, the mesh-wide demand per model (requests per minute) as this
    #: node's push-sum estimates it (``meshp2p.planner.PushSum``); None where every
    #: node announces its own rates (``request_rates``) and they are summed instead.
    demand: Mapping[str, float] | None = field(default=None, compare=False)
    _by_id: Mapping[str, PeerInfo] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_id", {p.id: p for p in self.peers})

    def __hash__(self) -> int:
        return hash((self.mesh_id, self.peers))

    def peer(self, node_id: str) -> PeerInfo | None:
        return self._by_id.get(node_id)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._by_id

    def __iter__(self) -> Iterator[PeerInfo]:
        return iter(self.peers)

    def __len__(self) -> int:
        return len(self.peers)


@dataclass(frozen=True)
class _Grave:
    seq: int
    died_at: float
    #: Where it was when it died (not when it left): after a partition heals it is
    #: dialled there again, or two sides that buried each other would never meet.
    addrs: tuple[str, ...] = ()


class MeshState:
    """The verified announcements of one mesh, who was seen when, and who is dead.

    Pure: callers pass ``now`` (seconds on any monotonic clock). Memory is bounded by
    ``max_nodes`` live nodes, ``max_bytes`` of announcements and ``max_dead`` dead
    entries, so a hostile member can crowd the view but not exhaust the node.
    """

    def __init__(
        self,
        mesh_id: str,
        *,
        max_nodes: int = 10_000,
        max_dead: int = 10_000,
        max_bytes: int = 64 * 2**20,
    ) -> None:
        self.mesh_id = mesh_id
        self.max_nodes = max_nodes
        self.max_dead = max_dead
        self.max_bytes = max_bytes
        self._announcements: dict[str, Announcement] = {}
        self._direct: dict[str, float] = {}  # node -> last message from it, directly
        self._last_seen: dict[str, float] = {}
        self._rtt_ms: dict[str, float] = {}
        # Insertion order is burial order, so the oldest death is evicted first.
        self._dead: OrderedDict[str, _Grave] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._announcements)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._announcements

    @property
    def stored_bytes(self) -> int:
        return self._bytes

    def announcement(self, node_id: str) -> Announcement | None:
        return self._announcements.get(node_id)

    def announcements_for(self, node_ids: Iterable[str]) -> list[Announcement]:
        """The announcements to answer a Want with (unknown ids are skipped)."""
        return [a for i in node_ids if (a := self._announcements.get(i)) is not None]

    def last_seen(self, node_id: str) -> float | None:
        return self._last_seen.get(node_id)

    def dead(self) -> dict[str, int]:
        """Dead node ids and the seq each died at."""
        return {node_id: grave.seq for node_id, grave in self._dead.items()}

    def apply_announcement(self, announcement: Announcement, now: float) -> bool:
        """Store ``announcement`` if it is verified, for this mesh, and newer than anything
        held or buried for its node. True if it was stored (so the driver relays it)."""
        node_id = announcement.node_id
        if announcement.mesh_id != self.mesh_id:
            return False
        held = self._announcements.get(node_id)
        if held is not None and announcement.seq <= held.seq:
            return False
        grave = self._dead.get(node_id)
        if grave is not None and announcement.seq <= grave.seq:
            return False
        if held is None and len(self._announcements) >= self.max_nodes:
            # A full view keeps the nodes it knows; newcomers get in as others expire.
            return False
        size = _size(announcement)
        if self._bytes - (_size(held) if held else 0) + size > self.max_bytes:
            return False
        # Signature last: it is the only expensive check, and stale gossip is common.
        if not verify(announcement):
            return False
        self._bytes += size - (_size(held) if held else 0)
        self._announcements[node_id] = announcement
        self._last_seen[node_id] = max(now, self._last_seen.get(node_id, now))
        self._dead.pop(node_id, None)
        return True

    def apply_leaving(self, leaving: Leaving, now: float) -> bool:
        """Bury the node at the signed ``seq``. True if that changed anything (relay it)."""
        node_id = leaving.node_id
        if leaving.mesh_id != self.mesh_id:
            return False
        held = self._announcements.get(node_id)
        if held is not None and leaving.seq < held.seq:
            return False  # it has announced again since
        grave = self._dead.get(node_id)
        if grave is not None and leaving.seq <= grave.seq:
            return False
        if not verify_leaving(leaving):
            return False
        self._bury(node_id, leaving.seq, now, left=True)
        return True

    def apply_dead(self, node_id: str, seq: int, now: float) -> bool:
        """Bury a live node a peer reports dead at ``seq`` >= the seq we hold.

        Unsigned, so it can only end what we hold: the node is buried at *our* seq, never
        at the notice's, or one forged notice with a huge seq would bar the node forever.
        """
        held = self._announcements.get(node_id)
        if held is None or seq < held.seq:
            return False
        self._bury(node_id, held.seq, now)
        return True

    def mark_seen(self, node_id: str, now: float) -> bool:
        """Record direct evidence (a message from the node itself) that a known node is
        alive; False for an unknown node. Such a node is *watched*: its silence for
        ``dead_after`` kills it (``expire``)."""
        if node_id not in self._announcements:
            return False
        self._last_seen[node_id] = max(now, self._last_seen[node_id])
        self._direct[node_id] = max(now, self._direct.get(node_id, now))
        return True

    def unwatch(self, node_id: str) -> None:
        """We no longer exchange gossip with ``node_id`` directly (the overlay moved on):
        its silence means nothing now; its watchers report its death."""
        self._direct.pop(node_id, None)

    def vouch(self, node_ids: Iterable[str], now: float) -> None:
        """A member that watches others still holds these nodes alive: indirect evidence,
        which keeps a node we do not watch from going stale."""
        for node_id in node_ids:
            if node_id in self._last_seen:
                self._last_seen[node_id] = max(now, self._last_seen[node_id])

    def record_rtt(self, node_id: str, rtt_ms: float) -> bool:
        if node_id not in self._announcements or not math.isfinite(rtt_ms) or rtt_ms < 0:
            return False
        self._rtt_ms[node_id] = rtt_ms
        return True

    def expire(self, now: float, dead_after: float, stale_after: float | None = None) -> list[str]:
        """Bury dead nodes; return their ids (sorted) so the driver can broadcast Dead
        notices for them. A watched node (``mark_seen``) is dead after ``dead_after``
        seconds of silence; any other after ``stale_after`` (default ``dead_after``)
        without any evidence: a new announcement of it, or a member vouching for it."""
        stale = dead_after if stale_after is None else stale_after
        expired = sorted(
            n
            for n, seen in self._last_seen.items()
            if (now - self._direct[n] > dead_after if n in self._direct else now - seen > stale)
        )
        for node_id in expired:
            self._bury(node_id, self._announcements[node_id].seq, now)
        return expired

    def graves_to_redial(self, now: float, within: float) -> list[tuple[str, tuple[str, ...]]]:
        """Nodes that died (not left) less than ``within`` seconds ago, newest first,
        with the addresses they last announced: a freeze or a broken link that heals
        brings them back, but only if someone dials them."""
        out = [
            (node_id, grave.addrs)
            for node_id, grave in self._dead.items()
            if grave.addrs and now - grave.died_at < within
        ]
        return out[::-1]

    def digest(self) -> dict[str, int]:
        return {node_id: a.seq for node_id, a in self._announcements.items()}

    def summary(self) -> tuple[bytes, ...]:
        """One hash per bucket of the (node id, seq) entries, for a ``Summary``."""
        buckets: list[list[str]] = [[] for _ in range(SUMMARY_BUCKETS)]
        for node_id, announcement in self._announcements.items():
            buckets[bucket_of(node_id)].append(f"{node_id}:{announcement.seq}")
        return tuple(
            hashlib.sha256("\n".join(sorted(b)).encode()).digest()[:SUMMARY_HASH_LEN]
            for b in buckets
        )

    def root(self) -> bytes:
        """One short hash of the whole view, for a ``Tick``."""
        return root_of(self.summary())

    def differing_buckets(self, theirs: tuple[bytes, ...]) -> list[int]:
        return [i for i, (a, b) in enumerate(zip(self.summary(), theirs, strict=True)) if a != b]

    def bucket_digest(self, buckets: Iterable[int]) -> dict[str, int]:
        """Our entries for these buckets only: the answer to a differing Summary."""
        wanted = set(buckets)
        return {n: a.seq for n, a in self._announcements.items() if bucket_of(n) in wanted}

    def bucket_members(self, buckets: Iterable[int]) -> list[str]:
        wanted = set(buckets)
        return [n for n in self._announcements if bucket_of(n) in wanted]

    def last_direct(self, node_id: str) -> float | None:
        """When ``node_id`` last sent us a message itself; None if it never did."""
        return self._direct.get(node_id)

    def missing_from(self, digest: Mapping[str, int]) -> list[str]:
        """Node ids a peer's digest lists at a seq newer than ours: what to Want."""
        missing = []
        for node_id, seq in digest.items():
            held = self._announcements.get(node_id)
            grave = self._dead.get(node_id)
            if (held is None or seq > held.seq) and (grave is None or seq > grave.seq):
                missing.append(node_id)
        return sorted(missing)

    def newer_than(self, digest: Mapping[str, int]) -> list[Announcement]:
        """Our announcements for nodes a peer's digest lists at an older seq: what to push.

        Nodes absent from a digest are not pushed: a digest may be one part of several,
        and the peer pulls those from our own digest instead.
        """
        newer = []
        for node_id, seq in digest.items():
            held = self._announcements.get(node_id)
            if held is not None and held.seq > seq:
                newer.append(held)
        return sorted(newer, key=lambda a: a.node_id)

    def newer_deaths(self, digest: Mapping[str, int]) -> list[Dead]:
        """Dead notices for nodes a peer's digest still lists at or below their burial seq."""
        deaths = []
        for node_id, seq in digest.items():
            grave = self._dead.get(node_id)
            if grave is not None and grave.seq >= seq:
                deaths.append(Dead(node_id, grave.seq))
        return sorted(deaths, key=lambda d: d.node_id)

    def snapshot(self) -> MeshView:
        peers = tuple(
            PeerInfo(
                id=a.node_id,
                addrs=a.addrs,
                role=a.role,
                models_served=a.models_served,
                models_on_disk=a.models_on_disk,
                memory_free=a.memory_free,
                memory_total=a.memory_total,
                rtt_ms=self._rtt_ms.get(a.node_id),
                last_seen=self._last_seen[a.node_id],
                request_rates=dict(a.request_rates),
                version=a.version,
                seq=a.seq,
                models_loading=a.models_loading,
            )
            for a in sorted(self._announcements.values(), key=lambda a: a.node_id)
        )
        return MeshView(mesh_id=self.mesh_id, peers=peers)

    def _bury(self, node_id: str, seq: int, now: float, *, left: bool = False) -> None:
        held = self._announcements.pop(node_id, None)
        if held is not None:
            self._bytes -= _size(held)
        addrs = () if left or held is None else tuple(held.addrs)
        self._last_seen.pop(node_id, None)
        self._direct.pop(node_id, None)
        self._rtt_ms.pop(node_id, None)
        grave = self._dead.pop(node_id, None)
        self._dead[node_id] = _Grave(max(seq, grave.seq if grave else seq), now, addrs)
        while len(self._dead) > self.max_dead:
            self._dead.popitem(last=False)


def root_of(buckets: Iterable[bytes]) -> bytes:
    """The view hash a Summary's buckets stand for (what a ``Tick`` carries)."""
    return hashlib.sha256(b"".join(buckets)).digest()[:ROOT_HASH_LEN]


def _size(announcement: Announcement) -> int:
    return len(announcement.signed_payload) + len(announcement.signature)
