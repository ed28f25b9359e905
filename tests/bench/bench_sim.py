"""Simulator: the real planner and demand meter on a simulated clock, for a thousand nodes.

Run with ``make bench-sim`` (or ``python tests/bench/bench_sim.py``). N nodes (memory
8-192 GB, one-way link delays 10-50 ms, so 20-100 ms round trips: ``--link-ms``)
join, leave and die; requests arrive at random nodes with Zipf demand over 12 of ~20
models, a new set and order every simulated hour. Every node counts the requests entering through it
(``meshp2p.planner.DemandMeter``), its view is rebuilt at every heartbeat as gossip
would deliver it (``MeshView`` of ``PeerInfo``), and every planning interval it runs
``meshp2p.planner.plan`` unchanged and acts on the decision (loading takes time: from
disk, or a download first).

It prints one last line ``nodes=N demand_served=X new_model_s=Y switches_per_node_hour=Z
gossip_kb_node_min=W converge_99_s=V`` and writes ``docs/benchmarks/sim.json``.

Gossip runs on the bounded overlay of ``meshp2p.mesh._overlay`` (each node links to
the 8 members its rendezvous hash ranks first; links are answered both ways), as a
mesh of more than 16 nodes does: the cost per node per minute is, on every link each
heartbeat, a one-hash Tick, answered with a Summary and a digest where the views
differ at two heartbeats in a row (a change that had not reached both ends of a
link yet, twice); one push-sum share of demand (``meshp2p.mesh.PushSum``, run for
every node; a share goes to a random live node, standing in for a random overlay
link); and every change (state changes, joins and demand for models nobody serves,
as ``meshp2p.planner.wanted_only`` and ``AnnouncedRates`` let it change; deaths).
The shared view's demand is one random node's push-sum estimate, as that node's
planner would read it. Sizes are the real encoder's frames plus 30 bytes of yamux
and Noise per frame.

A change's cost and its convergence come from flooding it message by message
(``spread``) on the real cores the node runs: each node's own ``MeshState``, which
verifies every signature, and ``meshp2p.mesh._lazy.LazyPush``, as
``meshp2p.mesh._service`` drives them: the origin sends its announcement on all its
links, a relay sends a one-entry digest on the links it chose, a node that lacks
the announcement Wants the body once. Deaths are relayed whole (costed as a signed
leaving). A node handles one message at a time, in ``--hop-ms``, and writes its
frames one after another, ``--send-ms`` each; a frame takes its link's one-way delay.
Convergence is when 99 % of the nodes hold the change, worst of 20 random origins.
``--nodes 30 --link-ms 0.05 0.05`` is the loopback scenario of
``tests/bench/bench_convergence.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from _bench import machine, write_result  # noqa: E402
from libp2p.crypto.ed25519 import Ed25519PrivateKey  # noqa: E402

from meshp2p.mesh import (  # noqa: E402
    Announce,
    DemandShare,
    Digest,
    Leaving,
    MeshState,
    MeshView,
    ModelFile,
    PeerInfo,
    PushSum,
    Summary,
    Tick,
    Want,
)
from meshp2p.mesh._gossip import encode_gossip_message, sign, sign_leaving  # noqa: E402
from meshp2p.mesh._lazy import LazyPush  # noqa: E402
from meshp2p.mesh._overlay import DEGREE, overlay_targets  # noqa: E402
from meshp2p.planner import (  # noqa: E402
    AnnouncedRates,
    DemandMeter,
    NodeState,
    PlannerParams,
    plan,
    plan_round,
    wanted_only,
)

GB = 10**9
HEARTBEAT_S = 5.0
DEAD_AFTER_S = 12.0
SHA = "0" * 64
#: Bytes a frame costs on the wire beyond its own (varint-prefixed CBOR): a yamux
#: header (12) and a Noise message's length (2) and tag (16). QUIC's per-packet
#: overhead is about the same.
FRAME_OVERHEAD = 30
MESH_ID = "sim-mesh-0123456789abcdef"


def wire(message: Any) -> int:
    """Bytes of one gossip message on the wire: the real encoder's frame plus overhead."""
    return len(encode_gossip_message(message)) + FRAME_OVERHEAD


def host_announcement(key: Ed25519PrivateKey, seq: int) -> Any:
    """A host's announcement as the node signs it: three addresses (TCP and QUIC on
    IPv4, TCP on IPv6), one model served, its file on disk."""
    return sign(
        {
            "seq": seq,
            "mesh_id": MESH_ID,
            "addrs": [
                "/ip4/203.0.113.7/tcp/4001",
                "/ip4/203.0.113.7/udp/4001/quic-v1",
                "/ip6/2001:db8::7/tcp/4001",
            ],
            "role": "host",
            "models_served": ["qwen2.5-7b-instruct-q4_k_m"],
            "models_on_disk": [ModelFile("qwen2.5-7b-instruct-q4_k_m.gguf", 4_683_073_536, SHA)],
            "memory_free": 12 * GB,
            "memory_total": 64 * GB,
            "request_rates": {},
            "version": "0.9.0",
        },
        key,
    )


_KEY = Ed25519PrivateKey.new(b"\x01" * 32)
_ROOT = b"\x00" * 8
#: Sizes on the wire, from the real encoder: a Tick, a Summary, one digest entry, and a
#: push-sum share (a fixed part and one per model in it).
TICK_BYTES = wire(Tick(_ROOT))
SUMMARY_BYTES = wire(Summary((_ROOT,) * 16))
DIGEST_ENTRY_BYTES = wire(Digest({host_announcement(_KEY, 1).node_id: 1_767_225_600_000})) - wire(
    Digest({})
)
SHARE_BYTES = wire(DemandShare(14_000_000, 1 / 3, {}))
SHARE_MODEL_BYTES = wire(DemandShare(14_000_000, 1 / 3, {"model-00": 1 / 3})) - SHARE_BYTES
ANNOUNCEMENT_BYTES = wire(Announce(host_announcement(_KEY, 1_767_225_600_000)))


@dataclass
class SimNode:
    id: str
    memory: int
    delay_s: float
    disk: frozenset[str]
    meter: DemandMeter = field(default_factory=DemandMeter)
    announced: AnnouncedRates = field(default_factory=AnnouncedRates)
    pushsum: PushSum = field(default_factory=PushSum)
    served: set[str] = field(default_factory=set)
    loading: tuple[str, float] | None = None
    since: float = 0.0
    next_plan: float = 0.0
    dead_at: float | None = None
    switches: int = 0

    def peer(self, now: float, hosted: set[str], elsewhere: set[str]) -> PeerInfo:
        rates, unhosted = self.meter.rates(now), set(self.meter.rates(now)) - hosted
        wanted = wanted_only(rates, unhosted, self.announced.current, elsewhere)
        return PeerInfo(
            self.id,
            (),
            "host" if self.served else "standby",
            tuple(sorted(self.served)),
            tuple(ModelFile(m, 1, SHA) for m in sorted(self.disk)),
            self.memory,
            self.memory,
            None,
            now,
            request_rates=self.announced.update(wanted, now, unhosted),
            models_loading=(self.loading[0],) if self.loading else (),
        )


@dataclass
class Sim:
    args: argparse.Namespace
    rng: random.Random
    models: dict[str, int]
    nodes: dict[str, SimNode] = field(default_factory=dict)
    next_id: int = 0
    requests: int = 0
    served: int = 0
    unhosted_since: dict[str, float] = field(default_factory=dict)
    new_model_waits: list[float] = field(default_factory=list)
    changes: int = 0
    node_seconds: float = 0.0
    zipf: list[str] = field(default_factory=list)
    #: Announcements after the warm-up, by cause (demand: counted at the end).
    kinds: dict[str, int] = field(default_factory=dict)
    warmup: float = 0.0

    def count(self, kind: str, now: float) -> None:
        self.changes += 1
        if now >= self.warmup:
            self.kinds[kind] = self.kinds.get(kind, 0) + 1

    def add_node(self, now: float) -> None:
        self.next_id += 1
        held = frozenset(m for m in self.models if self.rng.random() < self.args.disk_share)
        node = SimNode(
            f"n{self.next_id:05d}",
            int(self.rng.uniform(8, 192) * GB),
            self.rng.uniform(*self.args.link_ms) / 1000,
            held,
            since=now,
            next_plan=now + self.rng.uniform(0, self.args.plan_interval),
        )
        self.nodes[node.id] = node
        self.count("join", now)

    def view(self, now: float, previous: MeshView | None = None) -> MeshView:
        hosted = self.hosted() | {n.loading[0] for n in self.nodes.values() if n.loading}
        elsewhere = {m for p in previous or () for m in p.request_rates}
        peers = tuple(n.peer(now, hosted, elsewhere) for n in self.nodes.values())
        alive = [n for n in self.nodes.values() if n.dead_at is None]
        reader = self.rng.choice(alive) if alive else None
        demand = reader.pushsum.estimate(len(peers)) if reader else {}
        return MeshView("sim", peers, demand=demand)

    def push_sum_round(self, now: float, alive: list[SimNode]) -> int:
        """Every live node sends half its push-sum mass to a random live node; the
        bytes sent."""
        sent = 0
        for node in alive:
            epoch, weight, sums = node.pushsum.share(now, node.meter.rates(now))
            target = self.rng.choice(alive)
            target.pushsum.receive(epoch, weight, sums, now, target.meter.rates(now))
            sent += SHARE_BYTES + SHARE_MODEL_BYTES * len(sums)
        return sent

    def hosted(self) -> set[str]:
        return {m for n in self.nodes.values() if n.dead_at is None for m in n.served}

    def reshuffle(self) -> None:
        """A new hour: another set of models in demand, in another order of popularity."""
        self.zipf = self.rng.sample(list(self.models), self.args.active_models)

    def pick_model(self) -> str:
        weights = [1 / (rank + 1) ** self.args.zipf for rank in range(len(self.zipf))]
        return self.rng.choices(self.zipf, weights)[0]

    def load_time(self, node: SimNode, model: str) -> float:
        size = self.models[model]
        fetch = 0.0 if model in node.disk else size / (self.args.download_mbs * 1e6)
        return fetch + 5.0 + size / 2e9  # read into memory at ~2 GB/s


def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    models = {
        f"model-{i:02d}": int(math.exp(rng.uniform(math.log(1), math.log(60))) * GB)
        for i in range(args.models)
    }
    sim = Sim(args, rng, models, warmup=args.warmup_min * 60)
    params = PlannerParams(dwell=args.dwell)
    for _ in range(args.nodes):
        sim.add_node(0.0)
    sim.reshuffle()
    horizon = args.hours * 3600
    warmup = args.warmup_min * 60
    view = sim.view(0.0)
    shared = plan_round(view, models, params)
    announced = 0
    beats = changed_beats = 0
    share_bytes = 0.0
    changes_at_beat = changes_at_warmup = 0
    started = time.monotonic()
    now = 0.0
    while now < horizon:
        now += 1.0
        if int(now) % 3600 == 0:
            sim.reshuffle()
        # Churn: leaves and deaths; joins keep the size.
        for node in list(sim.nodes.values()):
            if node.dead_at is None and rng.random() < args.churn_per_hour / 3600:
                node.dead_at = now
                node.served.clear()
            elif node.dead_at is not None and now - node.dead_at >= DEAD_AFTER_S:
                del sim.nodes[node.id]
                sim.count("death", now)
                sim.add_node(now)
        # Loading finishes.
        for node in sim.nodes.values():
            if node.loading and node.loading[1] <= now:
                node.served.add(node.loading[0])
                node.loading, node.since = None, now
                sim.count("model ready", now)
        # Requests.
        hosted = sim.hosted()
        alive = [n for n in sim.nodes.values() if n.dead_at is None]
        for _ in range(_poisson(rng, args.rate_per_min / 60)):
            model = sim.pick_model()
            rng.choice(alive).meter.record(model, now)
            if now >= warmup:
                sim.requests += 1
                sim.served += model in hosted
            if model not in hosted:
                sim.unhosted_since.setdefault(model, now)
        for model in list(sim.unhosted_since):
            if model in hosted:
                sim.new_model_waits.append(now - sim.unhosted_since.pop(model))
        # Heartbeat: the view gossip delivers, and the shared part of the plan.
        if now % args.heartbeat == 0:
            view = sim.view(now, view)
            shared = plan_round(view, models, params)
            sent = sim.push_sum_round(now, alive)
            changes = sim.changes + sum(n.announced.changes for n in sim.nodes.values())
            if now < warmup:
                changes_at_warmup = changes
            else:
                beats += 1
                changed_beats += changes != changes_at_beat
                share_bytes += sent / max(1, len(alive))
            changes_at_beat = changes
        if now >= warmup:
            sim.node_seconds += len(alive)
        # Planning rounds.
        for node in alive:
            if node.next_plan > now:
                continue
            node.next_plan = now + args.plan_interval
            decision = plan(view, node.id, now, NodeState(since=node.since), models, params, shared)
            if decision.model is None or decision.action == "stay":
                continue
            if decision.release is not None:
                node.served.discard(decision.release)
                if now >= warmup:
                    node.switches += 1
            node.loading = (decision.model, now + sim.load_time(node, decision.model))
            sim.count("model taken on", now)
            announced += 1
    elapsed = time.monotonic() - started
    n = args.nodes
    minutes = (horizon - warmup) / 60
    alive_nodes = [node for node in sim.nodes.values() if node.dead_at is None]
    overlay = overlay_graph(alive_nodes)
    links = overlay.links_per_node
    # Per node per minute: on every link each heartbeat a Tick (a Summary and a bucket
    # digest where views still differ at the next one); a push-sum share; and every
    # change flooded through the mesh, message by message on the real cores
    # (``spread``): an announcement (a node's state, a join, demand for a model
    # nobody serves) relayed lazily; a death relayed whole, costed as a leaving.
    announcements = sim.changes + sum(node.announced.changes for node in sim.nodes.values())
    changes_per_min = (announcements - changes_at_warmup) / minutes
    deaths_per_min = sim.kinds.get("death", 0) / minutes
    changed = changed_beats / max(1, beats)
    origins = [rng.choice(alive_nodes).id for _ in range(args.origins)]
    floods = spreads(overlay, origins, args.hop_ms / 1000, args.send_ms / 1000)
    converge = [f.time_to(0.99) for f in floods["lazy"]]
    converge_leave = [f.time_to(0.99) for f in floods["leaving"]]
    converge_eager = [f.time_to(0.99) for f in floods["eager"]]
    per_change = {kind: statistics.mean(f.kb_per_node() for f in fl) for kind, fl in floods.items()}
    by_kind = {
        kind: round(statistics.mean(f.bytes_by_kind.get(kind, 0) for f in floods["lazy"]) / n, 1)
        for kind in ("announce", "advert", "want")
    }
    # A link's views differ at a heartbeat if a change is still on its way then.
    differ = min(1.0, changes_per_min / 60 * max(converge))
    repair = SUMMARY_BYTES + DIGEST_ENTRY_BYTES * len(alive_nodes) / 16
    beat_bytes = TICK_BYTES + differ**2 * repair
    heartbeats_per_min = 60 / args.heartbeat
    summary_kb = links * heartbeats_per_min * beat_bytes / 1000
    push_sum_kb = share_bytes / minutes / 1000
    flood = changes_per_min - deaths_per_min
    flood_kb = flood * per_change["lazy"] + deaths_per_min * per_change["leaving"]
    flood_eager_kb = flood * per_change["eager"] + deaths_per_min * per_change["leaving"]
    node_hours = sim.node_seconds / 3600
    switches = sum(node.switches for node in sim.nodes.values())
    return {
        "machine": machine(),
        "nodes": n,
        "models": args.models,
        "hours": args.hours,
        "warmup_min": args.warmup_min,
        "rate_per_min": args.rate_per_min,
        "plan_interval_s": args.plan_interval,
        "requests": sim.requests,
        "demand_served": round(sim.served / max(1, sim.requests), 4),
        "new_model_s": round(max(sim.new_model_waits, default=0.0), 1),
        "new_model_s_median": round(statistics.median(sim.new_model_waits), 1)
        if sim.new_model_waits
        else 0.0,
        "new_model_events": len(sim.new_model_waits),
        "switches_per_node_hour": round(switches / max(node_hours, 1e-9), 4),
        "gossip_kb_node_min": round(summary_kb + push_sum_kb + flood_kb, 1),
        "gossip_summary_kb_node_min": round(summary_kb, 1),
        "gossip_heartbeats_with_change": round(changed, 3),
        "gossip_links_differing_at_heartbeat": round(differ, 4),
        "gossip_push_sum_kb_node_min": round(push_sum_kb, 1),
        "gossip_flood_kb_node_min": round(flood_kb, 1),
        "gossip_flood_eager_kb_node_min": round(flood_eager_kb, 1),
        "gossip_bytes_per_node_per_announcement": by_kind,
        "wire_bytes": {
            "announce": ANNOUNCEMENT_BYTES,
            "tick": TICK_BYTES,
            "summary": SUMMARY_BYTES,
            "digest_entry": DIGEST_ENTRY_BYTES,
            "demand_share": SHARE_BYTES,
            "demand_share_per_model": SHARE_MODEL_BYTES,
        },
        "overlay_degree": DEGREE,
        "links_per_node": round(links, 1),
        "link_ms": args.link_ms,
        "hop_ms": args.hop_ms,
        "send_ms": args.send_ms,
        "heartbeat_s": args.heartbeat,
        "converge_99_s": round(max(converge), 3),
        "converge_99_s_median": round(statistics.median(converge), 3),
        "converge_99_eager_s": round(max(converge_eager), 3),
        "converge_99_leave_s": round(max(converge_leave), 3),
        "converge_99_leave_s_median": round(statistics.median(converge_leave), 3),
        "converge_all_leave_s": round(max(f.time_to(1.0) for f in floods["leaving"]), 3),
        "announcements_per_min": round(changes_per_min, 1),
        "announcements_by_cause": {
            **sim.kinds,
            "demand for a model nobody serves": announcements
            - changes_at_warmup
            - sum(sim.kinds.values()),
        },
        "simulated_minutes": round(minutes, 1),
        "wall_s": round(elapsed, 1),
    }


def _poisson(rng: random.Random, mean: float) -> int:
    threshold, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= threshold:
            return k
        k += 1


@dataclass
class Overlay:
    """The live nodes' gossip links: ``chosen`` (a node's overlay targets, on which it
    relays) and ``links`` (chosen or answered: every link, for heartbeats and a
    node's own announcements), with one-way delays."""

    delay: dict[tuple[str, str], float]
    chosen: dict[str, list[str]]
    links: dict[str, list[str]]

    @property
    def links_per_node(self) -> float:
        return statistics.mean(len(v) for v in self.links.values())


def overlay_graph(nodes: list[SimNode]) -> Overlay:
    by_id = {node.id: node for node in nodes}
    delay: dict[tuple[str, str], float] = {}
    chosen: dict[str, list[str]] = {node.id: [] for node in nodes}
    both: dict[str, set[str]] = {node.id: set() for node in nodes}
    for node in nodes:
        for target in overlay_targets(by_id, node.id):
            d = (node.delay_s + by_id[target].delay_s) / 2
            delay[node.id, target] = delay[target, node.id] = d
            chosen[node.id].append(target)
            both[node.id].add(target)
            both[target].add(node.id)
    return Overlay(delay, chosen, {k: sorted(v) for k, v in both.items()})


@dataclass
class Spread:
    """One change flooded through the overlay, message by message."""

    arrival: dict[str, float]
    bytes_by_kind: dict[str, int]
    nodes: int

    def time_to(self, share: float) -> float:
        times = sorted(self.arrival.values())
        if len(times) < share * self.nodes:
            return math.inf
        return times[min(len(times) - 1, int(share * self.nodes))]

    def kb_per_node(self) -> float:
        return sum(self.bytes_by_kind.values()) / self.nodes / 1000


def spread(
    overlay: Overlay,
    origin: str,
    change: Any,
    hop_s: float,
    *,
    lazy: bool,
    send_s: float = 0.0,
) -> Spread:
    """Flood ``change`` (an announcement, or a ``Leaving``) from ``origin`` as the node
    does (``meshp2p.mesh._service``), on the real cores: every node has its own
    ``MeshState`` (which verifies each signature) and ``LazyPush``. The origin sends
    its change on all its links; a node that stores it relays it on the links it
    chose, skipping peers known to hold it: whole (a leaving, or ``lazy=False``),
    or as a one-entry ``Digest`` that a peer lacking it answers with a ``Want`` for
    the body. A node is one process doing one thing at a time: it handles each
    message in ``hop_s`` and writes each frame in ``send_s``, in order; a frame then
    takes its link's one-way delay. Returns when each node stored the change (handled
    it) and the bytes sent, by kind."""
    import heapq

    states = {n: MeshState(MESH_ID) for n in overlay.links}
    pushes = {n: LazyPush() for n in overlay.links}
    busy = dict.fromkeys(overlay.links, 0.0)
    arrival = {origin: 0.0}
    sent: dict[str, int] = {}
    queue: list[tuple[float, int, str, str, Any]] = []
    counter = 0

    def send(src: str, dst: str, kind: str, message: Any) -> None:
        nonlocal counter
        counter += 1
        sent[kind] = sent.get(kind, 0) + wire(message)
        busy[src] += send_s
        heapq.heappush(queue, (busy[src] + overlay.delay[src, dst], counter, dst, src, message))

    is_leaving = isinstance(change, Leaving)
    first = change if is_leaving else Announce(change)
    if is_leaving:
        states[origin].apply_leaving(change, 0.0)
    else:
        states[origin].apply_announcement(change, 0.0)
    busy[origin] = hop_s
    for peer in overlay.links[origin]:
        send(origin, peer, "leaving" if is_leaving else "announce", first)
    while queue:
        at, _, node, src, message = heapq.heappop(queue)
        busy[node] = done = max(at, busy[node]) + hop_s
        state, push = states[node], pushes[node]
        if isinstance(message, Leaving):
            if state.apply_leaving(message, at):
                arrival.setdefault(node, done)
                for peer in overlay.chosen[node]:
                    if peer != src:
                        send(node, peer, "leaving", message)
        elif isinstance(message, Announce):
            ann = message.announcement
            push.heard(src, ann.node_id, ann.seq)
            if state.apply_announcement(ann, at):
                arrival.setdefault(node, done)
                push.got(ann.node_id, ann.seq)
                holders = push.holders(ann.node_id, ann.seq)
                for peer in overlay.chosen[node]:
                    if peer == src or peer in holders:
                        continue
                    if lazy:
                        send(node, peer, "advert", Digest({ann.node_id: ann.seq}))
                    else:
                        send(node, peer, "announce", message)
        elif isinstance(message, Digest):
            push.heard_all(src, message.entries)
            missing = state.missing_from(message.entries)
            wanted = push.to_want(src, {n: message.entries[n] for n in missing}, at)
            if wanted:
                send(node, src, "want", Want(tuple(wanted)))
        elif isinstance(message, Want):
            for ann in state.announcements_for(message.node_ids):
                send(node, src, "announce", Announce(ann))
                push.heard(src, ann.node_id, ann.seq)
    return Spread(arrival, sent, len(overlay.links))


def spreads(
    overlay: Overlay,
    origins: list[str],
    hop_s: float,
    send_s: float,
    seq0: int = 1_767_225_600_000,
) -> dict[str, list[Spread]]:
    """A new announcement relayed lazily (as the node does), the same relayed whole (as
    before), and a leaving (relayed whole, as every leaving and death is), from
    each origin; each origin a new key."""
    out: dict[str, list[Spread]] = {"lazy": [], "eager": [], "leaving": []}
    for i, origin in enumerate(origins):
        key = Ed25519PrivateKey.new(hashlib.sha256(b"sim origin %d" % i).digest())
        ann = host_announcement(key, seq0 + i)
        out["lazy"].append(spread(overlay, origin, ann, hop_s, lazy=True, send_s=send_s))
        out["eager"].append(spread(overlay, origin, ann, hop_s, lazy=False, send_s=send_s))
        leaving = sign_leaving(seq0 + i + 1, MESH_ID, key)
        out["leaving"].append(spread(overlay, origin, leaving, hop_s, lazy=False, send_s=send_s))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--hours", type=float, default=3.0)
    parser.add_argument("--warmup-min", type=float, default=15.0)
    parser.add_argument("--rate-per-min", type=float, default=3000.0)
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument(
        "--active-models", type=int, default=12, help="models in demand in any one hour"
    )
    parser.add_argument("--plan-interval", type=float, default=60.0)
    parser.add_argument("--dwell", type=float, default=900.0)
    parser.add_argument("--disk-share", type=float, default=0.05)
    parser.add_argument("--download-mbs", type=float, default=100.0)
    parser.add_argument("--churn-per-hour", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--link-ms",
        type=float,
        nargs=2,
        default=(10.0, 50.0),
        metavar=("LO", "HI"),
        help="a node's one-way delay to any other is uniform in LO..HI ms (default 10 50: "
        "20-100 ms round trips); 0.05 0.05 is about loopback",
    )
    parser.add_argument(
        "--hop-ms", type=float, default=2.0, help="time a node takes to handle one message"
    )
    parser.add_argument(
        "--send-ms", type=float, default=0.1, help="time a node takes to write one frame"
    )
    parser.add_argument("--heartbeat", type=float, default=HEARTBEAT_S)
    parser.add_argument("--origins", type=int, default=20, help="changes flooded to time")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks/sim.json")
    args = parser.parse_args()
    result = run(args)
    write_result(args.out, result)
    targets = (
        ("demand_served", result["demand_served"] >= 0.95),
        ("new_model_s", result["new_model_s"] <= 2 * args.plan_interval),
        ("switches_per_node_hour", result["switches_per_node_hour"] <= 1),
        ("gossip_kb_node_min", result["gossip_kb_node_min"] <= 50),
        ("converge_99_s", result["converge_99_s"] <= 5),
    )
    for name, ok in targets:
        print(f"{name:24} {result[name]!s:>12}  {'MET' if ok else 'MISSED'}")
    print(
        f"nodes={result['nodes']} demand_served={result['demand_served']} "
        f"new_model_s={result['new_model_s']} "
        f"switches_per_node_hour={result['switches_per_node_hour']} "
        f"gossip_kb_node_min={result['gossip_kb_node_min']} "
        f"converge_99_s={result['converge_99_s']}"
    )


if __name__ == "__main__":
    main()
