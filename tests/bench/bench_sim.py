"""Simulator: the real planner and demand meter on a simulated clock, for a thousand nodes.

Run with ``make bench-sim`` (or ``python tests/bench/bench_sim.py``). N nodes (memory
8-192 GB, one-way link delays 10-50 ms, so 20-100 ms round trips) join, leave and die;
requests arrive at random nodes with Zipf demand over 12 of ~20 models, a new set and
order every simulated hour. Every node counts the requests entering through it
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
link yet, twice); one push-sum share
of demand (``meshp2p.mesh.PushSum``, run for every node; a share goes to a random
live node, standing in for a random overlay link); and every announcement (state
changes, deaths, and demand for models nobody serves, as
``meshp2p.planner.wanted_only`` and ``AnnouncedRates`` let it change) relayed on the
links the node chose (its 8 overlay targets). The shared view's demand is one random
node's push-sum estimate, as that node's planner would read it. Convergence is the
time for a relayed change to reach 99 % of the nodes along the shortest paths of the
chosen links (one-way link delays plus 2 ms per hop), worst of 20 random origins.
"""

from __future__ import annotations

import argparse
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

from meshp2p.mesh import MeshView, ModelFile, PeerInfo, PushSum  # noqa: E402
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
#: Bytes on the wire (CBOR, varint, yamux header, Noise tag) of one Summary, one Tick,
#: one announcement, and of a push-sum share: a fixed part and one per model in it.
SUMMARY_BYTES = 200
TICK_BYTES = 60
#: A host's announcement with one model and a few addresses is 580 bytes of CBOR
#: (protocols/vectors/gossip.json); more addresses and models make it larger.
#: The digest of the buckets that differ, after one change: a bucket holds 1/16 of
#: the nodes, at ~60 bytes an entry.
DIGEST_ENTRY_BYTES = 60
ANNOUNCEMENT_BYTES = 650
SHARE_BYTES, SHARE_MODEL_BYTES = 60, 36
#: Checking an announcement's signature and relaying it, per hop.
HOP_S = 0.002
SHA = "0" * 64


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
            self.rng.uniform(0.010, 0.050),
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
    share_bytes = 0
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
        if now % HEARTBEAT_S == 0:
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
    graph, links = overlay_graph(alive_nodes)
    # Per node per minute: on every link each heartbeat a Summary after a change, else
    # a Tick; a push-sum share; and every change (an announcement: a node's state or
    # its demand for a model nobody serves; a death) sent on every link but the one it
    # came by.
    announcements = sim.changes + sum(node.announced.changes for node in sim.nodes.values())
    changes_per_min = (announcements - changes_at_warmup) / minutes
    changed = changed_beats / max(1, beats)
    converge = [spread_time(graph, rng.choice(alive_nodes), 0.99) for _ in range(20)]
    # A link's views differ at a heartbeat if a change is still on its way then.
    differ = min(1.0, changes_per_min / 60 * max(converge))
    repair = SUMMARY_BYTES + DIGEST_ENTRY_BYTES * len(alive_nodes) / 16
    beat_bytes = TICK_BYTES + differ**2 * repair
    summary_kb = links * (60 / HEARTBEAT_S) * beat_bytes / 1000
    push_sum_kb = share_bytes / minutes / 1000
    flood_kb = changes_per_min * DEGREE * ANNOUNCEMENT_BYTES / 1000
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
        "overlay_degree": DEGREE,
        "links_per_node": round(links, 1),
        "converge_99_s": round(max(converge), 3),
        "converge_99_s_median": round(statistics.median(converge), 3),
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


def overlay_graph(nodes: list[SimNode]) -> tuple[dict[str, dict[str, float]], float]:
    """The links a node chose (its overlay targets), on which it relays, with one-way
    delays; and the mean number of links per node, counting
    those that answer another node's choice (each gets a heartbeat)."""
    by_id = {node.id: node for node in nodes}
    graph: dict[str, dict[str, float]] = {node.id: {} for node in nodes}
    both: dict[str, set[str]] = {node.id: set() for node in nodes}
    for node in nodes:
        for target in overlay_targets(by_id, node.id):
            graph[node.id][target] = (node.delay_s + by_id[target].delay_s) / 2
            both[node.id].add(target)
            both[target].add(node.id)
    return graph, statistics.mean(len(v) for v in both.values())


def spread_time(graph: dict[str, dict[str, float]], origin: SimNode, share: float) -> float:
    """When ``share`` of the nodes know a change flooded from ``origin``: the shortest
    paths of the overlay, plus the time to check and relay at each hop."""
    import heapq

    arrival = {origin.id: 0.0}
    queue = [(0.0, origin.id)]
    while queue:
        at, node = heapq.heappop(queue)
        if at > arrival.get(node, math.inf):
            continue
        for nxt, delay in graph[node].items():
            when = at + delay + HOP_S
            if when < arrival.get(nxt, math.inf):
                arrival[nxt] = when
                heapq.heappush(queue, (when, nxt))
    times = sorted(arrival.values())
    return (
        times[min(len(times) - 1, int(share * len(graph)))]
        if len(times) >= share * len(graph)
        else math.inf
    )


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
