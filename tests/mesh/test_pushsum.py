"""Push-sum demand and view Ticks: what keeps gossip small in a mesh of many nodes."""

from __future__ import annotations

import math
import random

import pytest
import trio
from _meshes import start_mesh, until
from libp2p.crypto.ed25519 import create_new_key_pair

from meshp2p._errors import ProtocolError
from meshp2p.mesh import DemandShare, LocalState, MeshService, MeshView, PushSum, Tick, _service
from meshp2p.mesh._gossip import encode_gossip_message, parse_gossip_message
from meshp2p.mesh._invite import MeshCredentials
from meshp2p.mesh._overlay import FULL_DIGEST_NODES, overlay_targets
from meshp2p.mesh._pushsum import EPOCH_HEARTBEATS
from meshp2p.planner import view_demand, wanted_only
from meshp2p.transport._wire import FrameDecoder


def rounds(
    nodes: list[PushSum],
    rates: list[dict[str, float]],
    wall: float,
    rng: random.Random,
    links: dict[int, list[int]],
) -> None:
    """One heartbeat: every node sends half its mass to one random link."""
    for i, node in enumerate(nodes):
        epoch, weight, sums = node.share(wall, rates[i])
        j = rng.choice(links[i])
        nodes[j].receive(epoch, weight, sums, wall, rates[j])


def overlay(n: int) -> dict[int, list[int]]:
    names = [f"n{i:04d}" for i in range(n)]
    links: dict[int, set[int]] = {i: set() for i in range(n)}
    for i, name in enumerate(names):
        for target in overlay_targets(names, name):
            j = names.index(target)
            links[i].add(j)
            links[j].add(i)
    return {i: sorted(v) for i, v in links.items()}


def test_push_sum_estimates_the_mesh_demand_on_every_node() -> None:
    n, rng = 300, random.Random(7)
    rates = [{"a": 6.0, "b": 1.0} if i % 3 == 0 else {"a": 3.0} for i in range(n)]
    truth = {"a": sum(r.get("a", 0) for r in rates), "b": sum(r.get("b", 0) for r in rates)}
    nodes = [PushSum() for _ in range(n)]
    links = overlay(n)
    for beat in range(EPOCH_HEARTBEATS * 2 + 1):  # two epochs of heartbeats, a third begun
        rounds(nodes, rates, beat * 5.0, rng, links)
    for node in nodes:
        estimate = node.estimate(n)
        assert estimate["a"] == pytest.approx(truth["a"], rel=0.02)
        assert estimate["b"] == pytest.approx(truth["b"], rel=0.02)


def test_mass_is_conserved_and_other_epochs_are_dropped() -> None:
    a, b = PushSum(epoch_s=10.0), PushSum(epoch_s=10.0)
    epoch, weight, sums = a.share(5.0, {"m": 4.0})
    assert (epoch, weight, sums) == (0, 0.5, {"m": 2.0})
    assert b.receive(epoch, weight, sums, 5.0, {})
    assert b.weight + a.weight == 2.0 and b.sums["m"] + a.sums["m"] == 4.0
    assert not b.receive(7, 0.5, {"m": 1.0}, 5.0, {})  # from a clock far off: dropped
    assert b.weight == 1.5
    # A share of the next epoch (the sender's clock a little ahead) starts ours early.
    assert b.receive(1, 0.25, {"m": 1.0}, 9.9, {"m": 0.5})
    assert b.epoch == 1 and b.mean == pytest.approx({"m": 2.0 / 1.5})
    assert b.weight == 1.25 and b.sums == {"m": 1.5}


def test_ticks_and_demand_shares_parse_and_bad_ones_are_protocol_errors() -> None:
    def roundtrip(message: object) -> object:
        frame = encode_gossip_message(message)  # type: ignore[arg-type]
        (decoded,) = FrameDecoder(1 << 16).feed(frame)
        return parse_gossip_message(decoded)

    assert roundtrip(Tick(b"12345678")) == Tick(b"12345678")
    share = DemandShare(3, 0.25, {"m": 1.5})
    assert roundtrip(share) == share
    for bad in (
        {"t": "tick", "root": b"short"},
        {"t": "tick"},
        {"t": "demand", "epoch": 1, "weight": -1.0, "sums": {}},
        {"t": "demand", "epoch": 1, "weight": math.nan, "sums": {}},
        {"t": "demand", "epoch": 1, "weight": 1.0, "sums": {"m": math.inf}},
        {"t": "demand", "epoch": 1, "weight": 1.0, "sums": {"m": True}},
        {"t": "demand", "epoch": -1, "weight": 1.0, "sums": {}},
        {"t": "demand", "epoch": 1, "weight": 1.0, "sums": {f"m{i}": 1.0 for i in range(65)}},
    ):
        with pytest.raises(ProtocolError):
            parse_gossip_message(bad)


def test_a_large_mesh_announces_only_new_wanted_models_once() -> None:
    rates = {"served": 30.0, "new": 2.0, "other": 1.0}
    unhosted = {"new", "other"}
    assert wanted_only(rates, unhosted, mine=(), elsewhere={"other"}) == {"new": 2.0}
    # Once we announced it, we keep announcing it even though others now do too.
    assert wanted_only(rates, unhosted, mine={"other"}, elsewhere={"other"}) == {
        "new": 2.0,
        "other": 1.0,
    }


def test_view_demand_takes_the_push_sum_estimate_where_it_is_higher() -> None:
    from meshp2p.mesh import PeerInfo

    peer = PeerInfo("a", (), "standby", (), (), 1, 1, None, 0.0, request_rates={"new": 2.0})
    assert view_demand(MeshView("m", (peer,))) == {"new": 2.0}
    assert view_demand(MeshView("m", (peer,), demand={"new": 1.0, "hot": 50.0})) == {
        "new": 2.0,
        "hot": 50.0,
    }


TCP = "/ip4/127.0.0.1/tcp/0"


async def test_a_large_mesh_agrees_on_its_demand_by_push_sum(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Real services on loopback, more of them than full digests serve (the threshold
    lowered from FULL_DIGEST_NODES so that a few hosts in one process suffice): they
    converge, their heartbeats become Ticks, and every node's view carries the mesh's
    demand."""
    assert FULL_DIGEST_NODES > 3
    monkeypatch.setattr(_service, "FULL_DIGEST_NODES", 3)
    n = 6
    credentials = MeshCredentials.new()
    local = LocalState("standby", (), (), 0, 0, {})
    demand = [{"m": 3.0} if i % 2 else {} for i in range(n)]

    def service(i: int, bootstrap: tuple[str, ...] = ()) -> MeshService:
        return MeshService(
            create_new_key_pair(),
            credentials,
            local=lambda: local,
            version="test",
            listen=[TCP],
            bootstrap=bootstrap,
            heartbeat_interval=0.4,
            dead_after=20.0,
            local_demand=lambda: demand[i],
        )

    async with trio.open_nursery() as nursery:
        services = await start_mesh(nursery, service, n)
        founder = services[0]
        with trio.fail_after(60):
            assert all(s.large for s in services)
            # Views agree: links tick instead of sending Summaries.
            root = founder.state.root()
            await until(
                lambda: all(
                    s.state.root() == root
                    and all(link.peer_root == root for link in s._links.values())
                    for s in services
                )
            )
            # Two whole epochs for push-sum to mix and settle.
            first = founder.demand.epoch
            await until(lambda: founder.demand.epoch >= first + 2)
        truth = sum(d.get("m", 0.0) for d in demand)
        for s in services:
            assert s.view().demand is not None
            assert s.view().demand["m"] == pytest.approx(truth, rel=0.1), s.node_id  # type: ignore[index]
        nursery.cancel_scope.cancel()
