"""The placement rule: solo when the host fits the model, else a split over near workers."""

from __future__ import annotations

import math
import random
import time
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshp2p.inference._llamacpp import split_layers
from meshp2p.mesh._gossip import ModelFile
from meshp2p.mesh._state import MeshView, PeerInfo
from meshp2p.tensor._placement import PlacementPlan, plan_placement, tensor_split

GB = 10**9
SHA = "ab" * 32
OTHER_SHA = "cd" * 32


def peer(
    node_id: str,
    *,
    free: int,
    rtt: float | None = 1.0,
    role: str = "standby",
    holds: bool = False,
) -> PeerInfo:
    disk = (ModelFile("model.gguf", 10 * GB, SHA if holds else OTHER_SHA),)
    return PeerInfo(
        id=node_id,
        addrs=(),
        role=role,
        models_served=(),
        models_on_disk=disk,
        memory_free=free,
        memory_total=free,
        rtt_ms=rtt,
        last_seen=0.0,
    )


def plan(
    *peers: PeerInfo,
    model_size: int = 10 * GB,
    n_layers: int = 40,
    host_only_bytes: int = GB,
) -> PlacementPlan:
    return plan_placement(
        MeshView("mesh", peers),
        host_id="host",
        model_id="m",
        model_size=model_size,
        model_sha256=SHA,
        n_layers=n_layers,
        host_only_bytes=host_only_bytes,
    )


def worker_ids(p: PlacementPlan) -> list[str]:
    return [w.node_id for w in p.workers]


def test_model_that_fits_runs_solo_even_with_workers_around() -> None:
    p = plan(peer("host", free=11 * GB, rtt=None, role="host"), peer("w", free=50 * GB))
    assert p.mode == "solo" and p.fits
    assert p.workers == () and p.host_layers == range(40)
    assert tensor_split(p) == [40.0]
    assert p.reason.startswith("solo:")


def test_split_adds_nearest_workers_until_memory_is_covered() -> None:
    p = plan(
        peer("host", free=4 * GB, role="host"),
        peer("a", free=4 * GB, rtt=10.0),
        peer("b", free=4 * GB, rtt=5.0),
        peer("c", free=4 * GB, rtt=20.0),
        peer("d", free=40 * GB, rtt=30.0),
    )
    # 4 + 4 (b) = 8 GB < 11 GB; + 4 (a) = 12 GB covers it: c and d are not needed.
    assert p.mode == "split" and p.fits
    assert worker_ids(p) == ["b", "a"]
    assert p.capacity_bytes == 12 * GB
    assert p.reason.startswith("split over 2 workers")


def test_slow_or_unmeasured_workers_are_not_candidates() -> None:
    p = plan(
        peer("host", free=4 * GB, role="host"),
        peer("at-cap", free=40 * GB, rtt=80.0),
        peer("unknown", free=40 * GB, rtt=None),
        peer("nan", free=40 * GB, rtt=math.nan),
        peer("under-cap", free=8 * GB, rtt=79.9),
    )
    assert worker_ids(p) == ["under-cap"]


def test_only_standby_and_worker_nodes_are_candidates() -> None:
    p = plan(
        peer("host", free=2 * GB, role="host"),
        peer("other-host", free=40 * GB, rtt=1.0, role="host"),
        peer("client", free=40 * GB, rtt=1.0, role="client"),
        peer("future", free=40 * GB, rtt=1.0, role="gpu-box"),
        peer("w", free=5 * GB, rtt=9.0, role="worker"),
        peer("s", free=5 * GB, rtt=8.0, role="standby"),
    )
    assert worker_ids(p) == ["s", "w"]
    assert p.fits


def test_missing_bytes_are_exact_and_the_best_layout_is_still_shown() -> None:
    p = plan(
        peer("host", free=3 * GB, role="host"),
        peer("w", free=2 * GB, rtt=1.0),
        model_size=10 * GB + 1,
    )
    # ceil((10 GB + 1) x 11/10) = 11 GB + 2 (1.1 is taken as exactly 11/10).
    assert p.required_bytes == 11 * GB + 2
    assert p.missing_bytes == 11 * GB + 2 - 5 * GB
    assert not p.fits and p.mode == "split" and worker_ids(p) == ["w"]
    assert "short" in p.reason


def test_a_lone_host_that_is_too_small_reports_what_is_missing() -> None:
    p = plan(peer("host", free=7 * GB, role="host"))
    assert p.mode == "solo" and p.missing_bytes == 4 * GB


def test_host_too_small_for_its_own_tensors_gives_every_layer_away() -> None:
    p = plan(
        peer("host", free=GB, role="host"),
        peer("w", free=40 * GB, rtt=1.0),
        host_only_bytes=2 * GB,
    )
    # The host keeps embeddings and output (in system memory) and no layer.
    assert p.fits and p.mode == "split"
    assert p.host_layers == range(0) and p.workers[0].layers == range(40)


def test_worker_holding_the_file_wins_a_near_tie() -> None:
    p = plan(
        peer("host", free=4 * GB, role="host"),
        peer("near", free=8 * GB, rtt=5.0),
        peer("holder", free=8 * GB, rtt=6.5, holds=True),
    )
    assert worker_ids(p) == ["holder"]


def test_worker_holding_the_file_loses_when_clearly_farther() -> None:
    p = plan(
        peer("host", free=4 * GB, role="host"),
        peer("near", free=8 * GB, rtt=5.0),
        peer("holder", free=8 * GB, rtt=7.5, holds=True),
    )
    assert worker_ids(p) == ["near"]


def test_exact_disk_tie_goes_to_the_holder() -> None:
    p = plan(
        peer("host", free=4 * GB, role="host"),
        peer("a-near", free=8 * GB, rtt=3.0),
        peer("z-holder", free=8 * GB, rtt=5.0, holds=True),
    )
    assert worker_ids(p) == ["z-holder"]


def test_worker_that_cannot_hold_one_layer_is_skipped() -> None:
    # 9 GB of layers over 40 layers: one layer is 225 MB, 247.5 MB with headroom.
    p = plan(
        peer("host", free=4 * GB, role="host"),
        peer("tiny", free=200_000_000, rtt=0.5),
        peer("w", free=8 * GB, rtt=1.0),
    )
    assert worker_ids(p) == ["w"]


def test_layers_split_by_memory_with_the_host_first() -> None:
    p = plan(
        peer("host", free=5 * GB, role="host"),
        peer("a", free=3 * GB, rtt=1.0),
        peer("b", free=6 * GB, rtt=2.0),
    )
    # Weights: host 5 - 1.1 = 3.9 GB, a 3 GB, b 6 GB; 40 layers -> 12.09, 9.30, 18.60,
    # and the one layer left over goes to the largest remainder (b).
    assert p.host_layers == range(0, 12)
    assert [w.layers for w in p.workers] == [range(12, 21), range(21, 40)]
    assert tensor_split(p) == [12.0, 9.0, 19.0]


def test_tensor_split_feeds_the_llama_cpp_loader_exactly() -> None:
    p = plan(
        peer("host", free=5 * GB, role="host"),
        peer("a", free=3 * GB, rtt=1.0),
        peer("b", free=6 * GB, rtt=2.0),
    )
    layers = split_layers(p.n_layers, tensor_split(p))
    assert layers.host_layers == 12 and layers.worker_layers == (9, 19)
    # 28 worker layers and the output layer's slot; llama.cpp cuts at these counts.
    assert layers.n_gpu_layers == 29 and layers.tensor_split == [9.0, 20.0]


def test_host_missing_from_the_view_is_a_caller_bug() -> None:
    with pytest.raises(ValueError, match="not in the mesh view"):
        plan(peer("w", free=GB))


def test_a_thousand_nodes_plan_well_under_a_second() -> None:
    rng = random.Random(7)
    peers = [peer("host", free=8 * GB, role="host")] + [
        peer(
            f"node-{i:04d}",
            free=rng.randrange(GB, 24 * GB),
            rtt=rng.choice([None, rng.uniform(0.2, 150.0)]),
            role=rng.choice(["standby", "worker", "host", "client"]),
            holds=rng.random() < 0.1,
        )
        for i in range(999)
    ]
    view = MeshView("mesh", tuple(peers))
    started = time.perf_counter()
    p = plan_placement(
        view,
        host_id="host",
        model_id="big",
        model_size=400 * GB,
        model_sha256=SHA,
        n_layers=120,
        host_only_bytes=4 * GB,
    )
    elapsed = time.perf_counter() - started
    assert p.fits and p.mode == "split"
    assert elapsed < 0.25, f"planning 1000 nodes took {elapsed:.3f} s"


# Properties.

ROLES = ["standby", "worker", "host", "client", "other"]


@st.composite
def meshes(draw: st.DrawFn) -> tuple[MeshView, dict[str, int]]:
    n = draw(st.integers(0, 12))
    peers = [
        peer(
            f"n{i}",
            free=draw(st.integers(0, 20 * GB)),
            rtt=draw(st.one_of(st.none(), st.floats(0, 120, allow_nan=False))),
            role=draw(st.sampled_from(ROLES)),
            holds=draw(st.booleans()),
        )
        for i in range(n)
    ]
    peers.append(peer("host", free=draw(st.integers(0, 30 * GB)), role="host"))
    model_size = draw(st.integers(1, 60 * GB))
    args = {
        "model_size": model_size,
        "host_only_bytes": draw(st.integers(0, model_size // 4)),
        "n_layers": draw(st.integers(1, 128)),
    }
    order = draw(st.permutations(peers))
    return MeshView("mesh", tuple(order)), args


def plan_for(view: MeshView, args: dict[str, int]) -> PlacementPlan:
    return plan_placement(view, host_id="host", model_id="m", model_sha256=SHA, **args)


@settings(max_examples=200, deadline=None)
@given(meshes())
def test_every_layer_is_assigned_once_in_contiguous_blocks(
    mesh: tuple[MeshView, dict[str, int]],
) -> None:
    view, args = mesh
    p = plan_for(view, args)
    blocks = [p.host_layers] + [w.layers for w in p.workers]
    assert [i for block in blocks for i in block] == list(range(args["n_layers"]))
    assert all(len(w.layers) > 0 for w in p.workers)
    assert tensor_split(p) == [float(len(block)) for block in blocks]
    assert (p.mode == "split") == bool(p.workers)
    layers = split_layers(args["n_layers"], tensor_split(p))
    assert (layers.host_layers, *layers.worker_layers) == tuple(len(b) for b in blocks)


@settings(max_examples=200, deadline=None)
@given(meshes())
def test_layer_counts_are_within_one_layer_of_the_memory_share(
    mesh: tuple[MeshView, dict[str, int]],
) -> None:
    view, args = mesh
    p = plan_for(view, args)
    host_required = math.ceil(args["host_only_bytes"] * Fraction(11, 10))
    weights = [max(0, p.host_memory - host_required)] + [w.memory for w in p.workers]
    counts = [len(p.host_layers)] + [len(w.layers) for w in p.workers]
    total: int = sum(weights)
    if p.mode == "split" and total > 0:
        for weight, count in zip(weights, counts, strict=True):
            ideal = Fraction(args["n_layers"] * weight, total)
            assert abs(count - ideal) < 1


@settings(max_examples=200, deadline=None)
@given(meshes())
def test_capacity_and_missing_bytes_follow_the_rule(
    mesh: tuple[MeshView, dict[str, int]],
) -> None:
    view, args = mesh
    p = plan_for(view, args)
    required = math.ceil(args["model_size"] * Fraction(11, 10))
    assert p.required_bytes == required
    assert p.missing_bytes == max(0, required - p.capacity_bytes)
    if p.fits:
        assert p.capacity_bytes >= required
    if p.mode == "split" and p.fits:
        # Greedy: the last worker was needed.
        assert p.capacity_bytes - p.workers[-1].memory < required
    for w in p.workers:
        candidate = view.peer(w.node_id)
        assert candidate is not None and candidate.role in ("standby", "worker")
        assert candidate.rtt_ms is not None and candidate.rtt_ms < 80


@settings(max_examples=200, deadline=None)
@given(meshes(), st.randoms(use_true_random=False))
def test_plan_does_not_depend_on_peer_order(
    mesh: tuple[MeshView, dict[str, int]], rng: random.Random
) -> None:
    view, args = mesh
    shuffled = list(view.peers)
    rng.shuffle(shuffled)
    assert plan_for(MeshView("mesh", tuple(shuffled)), args) == plan_for(view, args)
