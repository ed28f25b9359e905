"""Graves: nodes that died are dialled again where they were, for a while; leavers not."""

from __future__ import annotations

from test_gossip import IDS, KEYS, MESH, ann

from meshp2p.mesh._gossip import sign_leaving
from meshp2p.mesh._state import MeshState


def test_the_dead_are_redialled_where_they_were_for_a_while() -> None:
    state = MeshState(MESH)
    state.apply_announcement(ann(0, 1, addrs=["/ip4/10.0.0.1/tcp/1"]), now=0.0)
    state.apply_announcement(ann(1, 1, addrs=["/ip4/10.0.0.2/tcp/1"]), now=15.0)
    state.mark_seen(IDS[0], now=0.0)
    assert state.expire(now=20.0, dead_after=12.0) == [IDS[0]]
    assert state.apply_dead(IDS[1], 1, now=21.0)
    # Newest death first, with the addresses each last announced.
    assert state.graves_to_redial(now=22.0, within=600.0) == [
        (IDS[1], ("/ip4/10.0.0.2/tcp/1",)),
        (IDS[0], ("/ip4/10.0.0.1/tcp/1",)),
    ]
    assert state.graves_to_redial(now=620.5, within=600.0) == [(IDS[1], ("/ip4/10.0.0.2/tcp/1",))]
    # Back with a newer announcement: no longer a grave.
    state.apply_announcement(ann(1, 2), now=30.0)
    assert [n for n, _ in state.graves_to_redial(now=31.0, within=600.0)] == [IDS[0]]


def test_a_node_that_left_is_not_redialled() -> None:
    state = MeshState(MESH)
    state.apply_announcement(ann(0, 1), now=0.0)
    assert state.apply_leaving(sign_leaving(2, MESH, KEYS[0]), now=1.0)
    assert state.graves_to_redial(now=2.0, within=600.0) == []
