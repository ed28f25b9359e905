"""The planner and the demand meter: pure functions of a view and the time."""

from __future__ import annotations

import pytest

from meshp2p.mesh import MeshView, ModelFile, PeerInfo
from meshp2p.planner import DemandMeter, NodeState, PlannerParams, mesh_demand, needs, plan
from meshp2p.planner._planner import rendezvous

GB = 10**9
SHA = "0" * 64


def peer(
    name: str,
    role: str = "standby",
    *,
    served: tuple[str, ...] = (),
    loading: tuple[str, ...] = (),
    disk: tuple[str, ...] = (),
    memory: int = 16 * GB,
    rates: dict[str, float] | None = None,
) -> PeerInfo:
    return PeerInfo(
        name,
        (),
        role,
        served,
        tuple(ModelFile(m, 4 * GB, SHA) for m in disk),
        memory,
        memory,
        None,
        0.0,
        request_rates=rates or {},
        models_loading=loading,
    )


def view(*peers: PeerInfo) -> MeshView:
    return MeshView("mesh", tuple(sorted(peers, key=lambda p: p.id)))


CATALOG = {"m": 4 * GB, "n": 4 * GB, "big": 40 * GB}


def test_demand_meter_reads_a_steady_rate_and_decays() -> None:
    meter = DemandMeter(tau=60)
    for second in range(600):  # one request a second for ten minutes
        meter.record("m", float(second))
    assert meter.rates(600.0)["m"] == pytest.approx(60, rel=0.02)
    assert meter.rates(600.0 + 120)["m"] == pytest.approx(60 * 2.718**-2, rel=0.05)
    assert "m" not in meter.rates(600.0 + 3600)


def test_mesh_demand_sums_nodes() -> None:
    assert mesh_demand([{"m": 1.5}, {"m": 2.0, "n": 1.0}, {}]) == {"m": 3.5, "n": 1.0}


def test_a_wanted_model_goes_to_one_standby_node_only() -> None:
    mesh = view(peer("client", "client", rates={"m": 3}), peer("s1"), peer("s2"), peer("s3"))
    decisions = {n: plan(mesh, n, 0, NodeState(), CATALOG) for n in ("s1", "s2", "s3")}
    takers = [n for n, d in decisions.items() if d.action == "serve"]
    assert len(takers) == 1 and decisions[takers[0]].model == "m"
    assert "no host" in decisions[takers[0]].reason
    assert takers[0] == min(("s1", "s2", "s3"), key=lambda n: rendezvous(n, "m"))


def test_a_node_holding_the_file_goes_first() -> None:
    mesh = view(peer("c", "client", rates={"m": 3}), peer("s1"), peer("s2", disk=("m",)))
    assert plan(mesh, "s2", 0, NodeState(), {}).action == "serve"
    assert plan(mesh, "s1", 0, NodeState(), {}).action == "stay"  # not in the catalog either


def test_a_hot_model_gets_another_host_a_cool_one_does_not() -> None:
    hot = view(peer("h", "host", served=("m",), rates={"m": 25}), peer("s"))
    assert plan(hot, "s", 0, NodeState(), CATALOG).action == "serve"
    cool = view(peer("h", "host", served=("m",), rates={"m": 5}), peer("s"))
    assert plan(cool, "s", 0, NodeState(), CATALOG).action == "stay"


def test_a_model_being_loaded_counts_as_hosted() -> None:
    mesh = view(peer("c", "client", rates={"m": 3}), peer("s1", loading=("m",)), peer("s2"))
    assert plan(mesh, "s2", 0, NodeState(), CATALOG).action == "stay"
    assert plan(mesh, "s1", 0, NodeState(), CATALOG).reason == "loading m"


def test_models_nobody_can_hold_or_fetch_are_no_need() -> None:
    mesh = view(peer("c", "client", rates={"big": 50, "unknown": 50}), peer("s"))
    assert needs(mesh, CATALOG, PlannerParams()) == []


def test_pinned_nodes_never_move() -> None:
    mesh = view(peer("h", "host", served=("n",), rates={"m": 50}))
    assert plan(mesh, "h", 10_000, NodeState(pinned=True), CATALOG).action == "stay"


def test_a_cold_host_switches_to_a_starved_model_after_its_dwell() -> None:
    mesh = view(
        peer("h1", "host", served=("n",), rates={"m": 30, "n": 1}),
        peer("h2", "host", served=("n",)),
    )
    params = PlannerParams(dwell=600)
    first = min(("h1", "h2"), key=lambda n: rendezvous(n, "m"))
    other = "h2" if first == "h1" else "h1"
    assert plan(mesh, first, 100, NodeState(since=0), CATALOG, params).action == "stay"  # dwell
    decision = plan(mesh, first, 700, NodeState(since=0), CATALOG, params)
    assert (decision.action, decision.model, decision.release) == ("switch", "m", "n")
    assert plan(mesh, other, 700, NodeState(since=0), CATALOG, params).action == "stay"


def test_the_last_host_of_a_demanded_model_never_switches() -> None:
    mesh = view(peer("h", "host", served=("n",), rates={"m": 30, "n": 1}))
    assert plan(mesh, "h", 10_000, NodeState(), CATALOG).action == "stay"
