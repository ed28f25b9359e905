"""The bounded gossip overlay and large-mesh heartbeats: pure functions and MeshState."""

from __future__ import annotations

import hashlib
from collections import deque

from libp2p.crypto.ed25519 import Ed25519PrivateKey

from meshp2p.mesh._gossip import SUMMARY_BUCKETS, ModelFile, node_id_of, sign
from meshp2p.mesh._overlay import DEGREE, overlay_targets
from meshp2p.mesh._state import MeshState, bucket_of

KEYS = [Ed25519PrivateKey.new(hashlib.sha256(b"overlay %d" % i).digest()) for i in range(40)]
IDS = [node_id_of(k) for k in KEYS]


def announcement(i: int, seq: int = 1):  # type: ignore[no-untyped-def]
    fields = {
        "seq": seq,
        "mesh_id": "m",
        "addrs": [],
        "role": "standby",
        "models_served": [],
        "models_on_disk": [ModelFile("x", 1, "0" * 64)][:0],
        "memory_free": 1,
        "memory_total": 1,
        "request_rates": {},
        "version": "t",
    }
    return sign(fields, KEYS[i])


def test_small_meshes_stay_fully_linked() -> None:
    members = [f"n{i}" for i in range(DEGREE + 1)]
    for me in members:
        assert set(overlay_targets(members, me)) == set(members) - {me}


def test_large_meshes_link_each_node_to_degree_others_and_stay_connected() -> None:
    members = [f"node-{i:04d}" for i in range(1000)]
    targets = {m: overlay_targets(members, m) for m in members}
    assert all(len(t) == DEGREE and m not in t for m, t in targets.items())
    # Links are answered both ways: the graph is the union of the choices.
    graph: dict[str, set[str]] = {m: set() for m in members}
    for m, chosen in targets.items():
        for t in chosen:
            graph[m].add(t)
            graph[t].add(m)
    assert max(len(links) for links in graph.values()) < 4 * DEGREE
    seen, queue, hops = {members[0]}, deque([(members[0], 0)]), 0
    while queue:
        node, depth = queue.popleft()
        hops = max(hops, depth)
        for nxt in graph[node] - seen:
            seen.add(nxt)
            queue.append((nxt, depth + 1))
    assert len(seen) == len(members)  # connected
    assert hops <= 6  # a change reaches everyone in a few hops


def test_targets_change_little_when_a_member_joins() -> None:
    members = [f"node-{i:03d}" for i in range(200)]
    before = {m: set(overlay_targets(members, m)) for m in members}
    after = {m: set(overlay_targets([*members, "newcomer"], m)) for m in members}
    changed = sum(len(before[m] - after[m]) for m in members)
    assert changed <= 2 * DEGREE  # only the links the newcomer displaces


def state_with(*entries: tuple[int, int]) -> MeshState:
    state = MeshState("m")
    for i, seq in entries:
        assert state.apply_announcement(announcement(i, seq), 0.0)
    return state


def test_equal_views_have_equal_summaries() -> None:
    a = state_with((0, 1), (1, 1), (2, 5))
    b = state_with((2, 5), (1, 1), (0, 1))
    assert len(a.summary()) == SUMMARY_BUCKETS
    assert a.differing_buckets(b.summary()) == []


def test_a_differing_summary_names_the_buckets_and_their_digest() -> None:
    a = state_with((0, 1), (1, 1), (2, 5))
    b = state_with((0, 1), (1, 2), (2, 5))
    differing = a.differing_buckets(b.summary())
    assert differing == [bucket_of(IDS[1])]
    assert IDS[1] in a.bucket_digest(differing)
    assert set(a.bucket_digest(differing)) == {n for n in IDS[:3] if bucket_of(n) in differing}


def test_only_watched_nodes_die_of_silence() -> None:
    state = state_with((0, 1), (1, 1))
    state.mark_seen(IDS[0], 0.0)  # a direct link: watched
    assert state.expire(13.0, dead_after=12.0, stale_after=120.0) == [IDS[0]]
    assert state.expire(119.0, dead_after=12.0, stale_after=120.0) == []
    state.vouch([IDS[1]], 100.0)  # a member still holds it alive
    assert state.expire(219.0, dead_after=12.0, stale_after=120.0) == []
    assert state.expire(221.0, dead_after=12.0, stale_after=120.0) == [IDS[1]]


def test_an_unwatched_node_is_not_killed_by_our_silence_about_it() -> None:
    state = state_with((0, 1))
    state.mark_seen(IDS[0], 0.0)
    state.unwatch(IDS[0])  # the overlay moved on
    assert state.expire(60.0, dead_after=12.0, stale_after=120.0) == []
    assert state.last_direct(IDS[0]) is None


def test_summaries_parse_and_bad_ones_are_protocol_errors() -> None:
    import pytest

    from meshp2p._errors import ProtocolError
    from meshp2p.mesh._gossip import Summary, encode_gossip_message, parse_gossip_message
    from meshp2p.transport._wire import FrameDecoder

    good = Summary(tuple(bytes([i]) * 8 for i in range(SUMMARY_BUCKETS)))
    (decoded,) = FrameDecoder(1 << 16).feed(encode_gossip_message(good))
    assert parse_gossip_message(decoded) == good
    for bad in ([b"x" * 8] * 3, [b"x" * 7] * SUMMARY_BUCKETS, ["text"] * SUMMARY_BUCKETS):
        with pytest.raises(ProtocolError):
            parse_gossip_message({"t": "summary", "buckets": bad})
