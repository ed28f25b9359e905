"""Lazy push of relayed announcements in a large mesh: ids first, bodies on request. Pure.

A relayed announcement sent whole on each of a node's 8 chosen links costs every node
8 bodies of ~650 bytes per change in the mesh, though it needs only one. In a large
mesh a relay therefore sends a one-entry ``Digest`` (``{node_id: seq}``, ~110 bytes
on the wire) instead; a receiver that lacks that seq answers with a ``Want`` and gets
the body from whoever advertised it first. ``LazyPush`` is the bookkeeping both ends
need, used unchanged by ``MeshService`` and by the simulator:

- ``heard``: a peer holds a node's announcement at some seq (it advertised or sent it,
  or we answered its Want), so relays skip it (``holders``).
- ``to_want``: of the ids a peer advertised that we lack, the ones to ask it for now;
  ids already asked of another peer are not asked twice, but the peer is kept as an
  alternative.
- ``got``: the body arrived; ``retries``: wants unanswered after ``want_timeout``
  go to the next peer that advertised them, so a link that breaks in between costs a
  second at most, not a heartbeat.

Every message kind here is the protocol's v1 (``digest``, ``want``, ``announce``):
an older node answers an advert with a Want, as it answers any digest.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

#: A Want not answered within this many seconds goes to another advertiser.
WANT_TIMEOUT = 1.0
#: Node ids tracked at most (holders and wants), oldest forgotten first.
MAX_TRACKED = 10_000


@dataclass
class _Pending:
    seq: int
    asked: str
    deadline: float
    #: Other peers that advertised this seq or a later one, first come first.
    alternatives: list[str] = field(default_factory=list)


class LazyPush:
    """Who holds which announcement, and which Wants are out. Pure (``now`` is passed)."""

    def __init__(self, want_timeout: float = WANT_TIMEOUT, max_tracked: int = MAX_TRACKED):
        self.want_timeout = want_timeout
        self.max_tracked = max_tracked
        self._holders: OrderedDict[str, tuple[int, set[str]]] = OrderedDict()
        self._pending: OrderedDict[str, _Pending] = OrderedDict()

    def heard(self, peer: str, node_id: str, seq: int) -> None:
        """``peer`` holds ``node_id``'s announcement at ``seq`` (or later)."""
        held = self._holders.get(node_id)
        if held is None or seq > held[0]:
            self._holders[node_id] = (seq, {peer})
            self._holders.move_to_end(node_id)
            while len(self._holders) > self.max_tracked:
                self._holders.popitem(last=False)
        elif seq == held[0]:
            held[1].add(peer)

    def heard_all(self, peer: str, entries: Mapping[str, int]) -> None:
        for node_id, seq in entries.items():
            self.heard(peer, node_id, seq)

    def holders(self, node_id: str, seq: int) -> frozenset[str]:
        """Peers known to hold ``node_id`` at ``seq`` or later: a relay skips them."""
        held = self._holders.get(node_id)
        return frozenset(held[1]) if held is not None and held[0] >= seq else frozenset()

    def to_want(self, peer: str, missing: Mapping[str, int], now: float) -> list[str]:
        """Of ``missing`` (node id -> seq ``peer`` advertised, newer than ours), the ids
        to Want from ``peer`` now, sorted; the rest are out to another peer already."""
        out = []
        for node_id, seq in sorted(missing.items()):
            pending = self._pending.get(node_id)
            if pending is not None and pending.seq >= seq and now < pending.deadline:
                if peer != pending.asked and peer not in pending.alternatives:
                    pending.alternatives.append(peer)
                continue
            self._pending[node_id] = _Pending(seq, peer, now + self.want_timeout)
            self._pending.move_to_end(node_id)
            out.append(node_id)
        while len(self._pending) > self.max_tracked:
            self._pending.popitem(last=False)
        return out

    def got(self, node_id: str, seq: int) -> None:
        """We hold ``node_id`` at ``seq`` now: a Want for it up to that seq is answered."""
        pending = self._pending.get(node_id)
        if pending is not None and pending.seq <= seq:
            del self._pending[node_id]

    def retries(self, now: float) -> dict[str, list[str]]:
        """Wants unanswered past their deadline, by the next peer to ask (each id once);
        an id nobody else advertised is given up (heartbeats repair it)."""
        out: dict[str, list[str]] = {}
        for node_id, pending in list(self._pending.items()):
            if now < pending.deadline:
                continue
            if not pending.alternatives:
                del self._pending[node_id]
                continue
            pending.asked = pending.alternatives.pop(0)
            pending.deadline = now + self.want_timeout
            out.setdefault(pending.asked, []).append(node_id)
        return out

    def forget(self, node_ids: Iterable[str]) -> None:
        """These nodes left or died: nothing about them is worth keeping."""
        for node_id in node_ids:
            self._holders.pop(node_id, None)
            self._pending.pop(node_id, None)

    @property
    def pending(self) -> int:
        return len(self._pending)
