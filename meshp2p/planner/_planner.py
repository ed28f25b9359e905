"""Which model a node should serve: a pure function of the mesh view, the node and the time.

The same function runs in every node (``meshp2p.planner.PlannerService``) and in the
simulator (``tests/bench/bench_sim.py``). Each node computes the same assignment for
the whole mesh from (nearly) the same view and acts only on its own part, so two
standby nodes do not both take the same model at once.

Rules (after the product we rebuild, and Petals' throughput-seeking servers):

1. **Needs.** A model is *wanted* when it has demand and no host (serving or
   loading it), and *hot* when its demand per host is at least ``hot`` requests per
   minute. Wanted models come first (most demanded first), then hot ones (highest
   demand per host first). A model is only a need if some node holds its file or
   the catalog can fetch it, and a node can hold it (size x ``headroom``).
2. **Standby nodes take needs**, one new host per need per round: among standby
   nodes that can hold the model, those with its file on disk first, then by a
   rendezvous hash of node and model (deterministic, spread evenly).
3. **Hosts may switch** to a wanted model nobody standing by could take: a host
   of a cold model (one that keeps another host, or has no demand) whose
   assignment is older than ``dwell``; the first by rendezvous hash moves. A model
   with demand is never left without a host, and a model is never given up for one
   that is less than ``imbalance`` times hotter per host.
4. **Pinned nodes** (started with ``--model``, no ``--reassign``) are never moved.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from ..mesh._state import MeshView, PeerInfo
from ._demand import view_demand

Action = Literal["serve", "switch", "stay"]


@dataclass(frozen=True)
class PlannerParams:
    #: Demand per host (requests per minute) above which a model gets another host.
    hot: float = 10.0
    #: A host switches only to a model at least this many times hotter per host.
    imbalance: float = 3.0
    #: Seconds a host keeps a model before it may switch (no thrashing).
    dwell: float = 900.0
    #: A model needs its size times this in memory (llama.cpp's buffers, the context).
    headroom: float = 1.1


DEFAULT_PARAMS = PlannerParams()
NO_CATALOG: Mapping[str, int] = MappingProxyType({})


@dataclass(frozen=True)
class NodeState:
    """What a node knows of itself that the view does not say."""

    #: Started with --model and not allowed to be reassigned.
    pinned: bool = False
    #: When the node's current assignment began (its models started), in planner time.
    since: float = 0.0
    #: The models this node runs, loads or fetches, as it knows them itself: its own
    #: entry in the view lags until its next announcement is applied.
    models: tuple[str, ...] = ()


@dataclass(frozen=True)
class Decision:
    action: Action
    model: str | None
    reason: str
    #: With "switch": the model this node stops serving.
    release: str | None = None


@dataclass(frozen=True)
class Need:
    model: str
    demand: float
    hosts: int
    size: int

    @property
    def wanted(self) -> bool:
        return self.hosts == 0

    @property
    def per_host(self) -> float:
        return self.demand / self.hosts if self.hosts else float("inf")


def rendezvous(node_id: str, model: str) -> bytes:
    return hashlib.sha256(f"{model}\x00{node_id}".encode()).digest()


def model_sizes(view: MeshView, catalog: Mapping[str, int]) -> dict[str, int]:
    """Every model some node holds on disk or the catalog can fetch, with its size."""
    sizes = dict(catalog)
    for peer in view:
        for model in peer.models_on_disk:
            sizes.setdefault(model.name, model.size)
    return sizes


def hosts_of(view: MeshView) -> dict[str, list[str]]:
    """Per model, the nodes serving it or loading it."""
    out: dict[str, list[str]] = {}
    for peer in view:
        for model in dict.fromkeys((*peer.models_served, *peer.models_loading)):
            out.setdefault(model, []).append(peer.id)
    return out


def needs(view: MeshView, catalog: Mapping[str, int], params: PlannerParams) -> list[Need]:
    """Models that want a host (another one), most urgent first."""
    demand = view_demand(view)
    hosts = hosts_of(view)
    sizes = model_sizes(view, catalog)
    largest = max((p.memory_total for p in view), default=0)
    out = []
    for model, rate in demand.items():
        size = sizes.get(model)
        if size is None or size * params.headroom > largest or rate <= 0:
            continue
        need = Need(model, rate, len(hosts.get(model, ())), size)
        if need.wanted or need.per_host >= params.hot:
            out.append(need)
    return sorted(
        out, key=lambda n: (not n.wanted, -n.per_host if not n.wanted else -n.demand, n.model)
    )


def is_standby(peer: PeerInfo) -> bool:
    return peer.role == "standby" and not peer.models_served and not peer.models_loading


def _fits(peer: PeerInfo, need: Need, params: PlannerParams) -> bool:
    return need.size * params.headroom <= peer.memory_total


def _has_file(peer: PeerInfo, model: str) -> bool:
    return any(m.name == model for m in peer.models_on_disk)


def _can_get(peer: PeerInfo, model: str, catalog: Mapping[str, int]) -> bool:
    """The node holds the file, or can download it from the catalog."""
    return model in catalog or _has_file(peer, model)


def assign_standby(
    view: MeshView, wanted: Iterable[Need], catalog: Mapping[str, int], params: PlannerParams
) -> dict[str, str]:
    """Standby node -> model, for this round: one new host per need."""
    free = [p for p in view if is_standby(p)]
    taken: dict[str, str] = {}
    for need in wanted:
        eligible = [
            p
            for p in free
            if p.id not in taken and _fits(p, need, params) and _can_get(p, need.model, catalog)
        ]
        if not eligible:
            continue
        best = min(
            eligible, key=lambda p: (not _has_file(p, need.model), rendezvous(p.id, need.model))
        )
        taken[best.id] = need.model
    return taken


@dataclass(frozen=True)
class Round:
    """The part of a plan every node computes alike from one view: what is needed, and
    which standby node takes what. ``plan`` computes it; a simulator of many nodes
    sharing a view computes it once with ``plan_round`` and passes it in."""

    needs: list[Need]
    assignment: dict[str, str]


def plan_round(view: MeshView, catalog: Mapping[str, int], params: PlannerParams) -> Round:
    urgent = needs(view, catalog, params)
    return Round(urgent, assign_standby(view, urgent, catalog, params) if urgent else {})


def plan(
    view: MeshView,
    node_id: str,
    now: float,
    state: NodeState,
    catalog: Mapping[str, int] = NO_CATALOG,
    params: PlannerParams = DEFAULT_PARAMS,
    shared: Round | None = None,
) -> Decision:
    """What ``node_id`` should do now (see the module's rules). ``shared``: this view's
    ``plan_round``, if already computed."""
    me = view.peer(node_id)
    if me is None:
        return Decision("stay", None, "not in the mesh view yet")
    if state.pinned:
        return Decision("stay", None, "pinned: started with --model")
    loading = [*me.models_loading, *(m for m in state.models if m not in me.models_served)]
    if loading:
        return Decision("stay", None, f"loading {', '.join(dict.fromkeys(loading))}")
    current = shared if shared is not None else plan_round(view, catalog, params)
    urgent, assignment = current.needs, current.assignment
    if not urgent:
        return Decision("stay", None, "no model needs another host")
    if is_standby(me):
        model = assignment.get(node_id)
        if model is None:
            return Decision("stay", None, "other nodes are first in line for what is needed")
        need = next(n for n in urgent if n.model == model)
        why = (
            f"{model} has {need.demand:.1f} requests/min and no host"
            if need.wanted
            else f"{model} has {need.per_host:.1f} requests/min per host (>= {params.hot:g})"
        )
        return Decision("serve", model, why)
    if me.role != "host" or not me.models_served:
        return Decision("stay", None, f"role {me.role}")
    return _maybe_switch(view, me, now, state, urgent, set(assignment.values()), catalog, params)


def _maybe_switch(
    view: MeshView,
    me: PeerInfo,
    now: float,
    state: NodeState,
    urgent: list[Need],
    covered: set[str],
    catalog: Mapping[str, int],
    params: PlannerParams,
) -> Decision:
    starved = [n for n in urgent if n.wanted and n.model not in covered]
    if not starved:
        return Decision("stay", None, "standby nodes cover what is needed")
    if now - state.since < params.dwell:
        left = params.dwell - (now - state.since)
        return Decision("stay", None, f"serving its model {left:.0f} s more before any switch")
    demand = view_demand(view)
    hosts = hosts_of(view)

    def movable(peer: PeerInfo, target: Need) -> str | None:
        """The model ``peer`` could give up for ``target``; None if none."""
        if peer.role != "host" or peer.models_loading or not _fits(peer, target, params):
            return None
        if not _can_get(peer, target.model, catalog):
            return None
        for model in peer.models_served:
            count = len(hosts.get(model, ()))
            rate = demand.get(model, 0.0)
            if rate > 0 and count < 2:
                continue  # its last host: never leave a demanded model unserved
            per_host = rate / count if count else 0.0
            if per_host * params.imbalance <= target.per_host:
                return model
        return None

    for target in starved:
        candidates = [p for p in view if movable(p, target) is not None]
        if not candidates:
            continue
        first = min(candidates, key=lambda p: rendezvous(p.id, target.model))
        if first.id != me.id:
            return Decision(
                "stay", None, f"{first.id} is first in line to switch to {target.model}"
            )
        release = movable(me, target)
        return Decision(
            "switch",
            target.model,
            f"{target.model} has {target.demand:.1f} requests/min and no host; "
            f"{release} has another host or no demand",
            release=release,
        )
    return Decision("stay", None, "no host can give up its model for what is wanted")
