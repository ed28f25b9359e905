"""The simulator's gossip flood (``tests/bench/bench_sim.py``): message by message on
the node's own cores, so what it reports is what the protocol sends."""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest
from libp2p.crypto.ed25519 import Ed25519PrivateKey

from meshp2p.mesh._overlay import DEGREE

BENCH = Path(__file__).parents[1] / "bench"


def _load() -> ModuleType:
    sys.path.insert(0, str(BENCH))  # its _bench helper
    spec = importlib.util.spec_from_file_location("bench_sim", BENCH / "bench_sim.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_sim"] = module
    spec.loader.exec_module(module)
    return module


sim = _load()


def overlay(n: int, link_ms: tuple[float, float] = (10.0, 50.0)):  # type: ignore[no-untyped-def]
    rng = random.Random(n)
    nodes = [
        sim.SimNode(f"n{i:04d}", 1, rng.uniform(*link_ms) / 1000, frozenset()) for i in range(n)
    ]
    return sim.overlay_graph(nodes)


def key(i: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.new(hashlib.sha256(b"test sim %d" % i).digest())


def test_a_lazy_flood_reaches_every_node_with_one_body_each() -> None:
    n = 150
    graph = overlay(n)
    ann = sim.host_announcement(key(1), 10)
    lazy = sim.spread(graph, "n0007", ann, 0.002, lazy=True)
    eager = sim.spread(graph, "n0007", ann, 0.002, lazy=False)
    assert len(lazy.arrival) == len(eager.arrival) == n
    body = sim.wire(sim.Announce(ann))
    # The origin sends its own to all its links; everyone else fetches it once.
    own = len(graph.links["n0007"])
    assert lazy.bytes_by_kind["announce"] == (n - 1) * body
    assert lazy.bytes_by_kind["want"] == (n - 1 - own) * sim.wire(sim.Want(("x" * 52,)))
    # Eager relays send a body on (nearly) every chosen link of every node.
    assert eager.bytes_by_kind["announce"] > (n * DEGREE * 0.8) * body
    assert lazy.kb_per_node() < eager.kb_per_node() / 2.5
    # Each relay hop costs two more link delays: slower, still well under a heartbeat.
    assert eager.time_to(0.99) < lazy.time_to(0.99) < 3.5 * eager.time_to(0.99) < 1.0


def test_a_leaving_floods_whole_and_every_node_buries_the_leaver() -> None:
    graph = overlay(60, (0.05, 0.05))
    leaving = sim.sign_leaving(20, sim.MESH_ID, key(2))
    flood = sim.spread(graph, "n0003", leaving, 0.001, lazy=True)
    assert len(flood.arrival) == 60
    assert set(flood.bytes_by_kind) == {"leaving"}
    # Loopback links: the time is the hops times the handling cost (and some waiting
    # where copies queue up at a node).
    assert 0.002 <= flood.time_to(1.0) <= 0.008


def test_a_node_writes_its_frames_one_after_another() -> None:
    graph = overlay(60, (0.05, 0.05))
    leaving = sim.sign_leaving(20, sim.MESH_ID, key(2))
    slow = sim.spread(graph, "n0003", leaving, 0.0, lazy=False, send_s=0.010)
    fast = sim.spread(graph, "n0003", leaving, 0.0, lazy=False, send_s=0.0)
    assert len(slow.arrival) == len(fast.arrival) == 60
    # The first frame lands one write and one link delay after the start, the k-th
    # no sooner than k writes: frames queue behind each other, not side by side.
    times = sorted(t for node, t in slow.arrival.items() if node != "n0003")
    assert times[0] == pytest.approx(0.010 + 0.00005)
    assert all(t >= 0.010 * (k // DEGREE + 1) - 1e-9 for k, t in enumerate(times))
    assert fast.time_to(1.0) < 0.001 < 0.020 < slow.time_to(1.0)


def test_a_short_run_meets_the_targets_and_reports_gossip_by_kind(tmp_path: Path) -> None:
    args = argparse.Namespace(
        nodes=60,
        models=20,
        hours=0.5,
        warmup_min=10.0,
        rate_per_min=600.0,
        zipf=1.1,
        active_models=12,
        plan_interval=60.0,
        dwell=900.0,
        disk_share=0.05,
        download_mbs=100.0,
        churn_per_hour=0.02,
        seed=3,
        link_ms=(10.0, 50.0),
        hop_ms=2.0,
        send_ms=0.1,
        heartbeat=5.0,
        origins=4,
        out=tmp_path / "sim.json",
    )
    result = sim.run(args)
    assert result["nodes"] == 60
    assert result["demand_served"] >= 0.95
    assert result["gossip_kb_node_min"] <= 50
    assert result["gossip_flood_kb_node_min"] < result["gossip_flood_eager_kb_node_min"]
    assert result["converge_99_s"] <= 5
    assert set(result["gossip_bytes_per_node_per_announcement"]) == {"announce", "advert", "want"}


@pytest.mark.parametrize("name", ["TICK_BYTES", "SUMMARY_BYTES", "ANNOUNCEMENT_BYTES"])
def test_wire_sizes_come_from_the_encoder(name: str) -> None:
    # A frame is never smaller than its overhead, and an announcement dwarfs a Tick.
    assert getattr(sim, name) > sim.FRAME_OVERHEAD
    assert sim.TICK_BYTES < sim.SUMMARY_BYTES < sim.ANNOUNCEMENT_BYTES
