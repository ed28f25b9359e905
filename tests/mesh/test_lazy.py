"""Lazy push in a large mesh: relays send ids, a receiver Wants the body once."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pytest
import trio
from _meshes import start_mesh, until
from libp2p.crypto.ed25519 import create_new_key_pair

from meshp2p.mesh import Dead, LocalState, MeshService, _service
from meshp2p.mesh._invite import MeshCredentials
from meshp2p.mesh._lazy import LazyPush
from meshp2p.mesh._overlay import FULL_DIGEST_NODES

TCP = "/ip4/127.0.0.1/tcp/0"


def ring_targets(members: Iterable[str], me: str) -> list[str]:
    """Each node chooses the next two node ids after its own: a fixed overlay of
    degree 4 (two chosen, two choosing), where in a mesh of 8 every node has three
    members it is not linked to. (The rendezvous overlay with 2 choices is random:
    the last joiner was linked to every other node in about one run of three.)"""
    ring = sorted(set(members) | {me})
    at = ring.index(me)
    return [ring[(at + k) % len(ring)] for k in (1, 2) if ring[(at + k) % len(ring)] != me]


def ring_service(
    credentials: MeshCredentials,
    local: Callable[[int], LocalState],
    heartbeat: float = 5.0,
    dead_after: float = 60.0,
) -> Callable[..., MeshService]:
    """A factory for ``start_mesh``: node ``i`` announces ``local(i)``; heartbeats are
    slow by default, so a change travels by relay, not by repair."""

    def service(i: int, bootstrap: tuple[str, ...] = ()) -> MeshService:
        return MeshService(
            create_new_key_pair(),
            credentials,
            local=lambda: local(i),
            version="test",
            listen=[TCP],
            bootstrap=bootstrap,
            heartbeat_interval=heartbeat,
            dead_after=dead_after,
        )

    return service


async def settle_on_the_ring(services: list[MeshService]) -> None:
    """Wait until every node's links are its ring neighbours and no others: a joiner's
    first link (to the founder) closes at a heartbeat once its own targets are up."""
    ring = sorted(s.node_id for s in services)

    def neighbours(s: MeshService) -> set[str]:
        at = ring.index(s.node_id)
        return {ring[(at + k) % len(ring)] for k in (-2, -1, 1, 2)}

    with trio.fail_after(30):
        await until(
            lambda: all({p.to_base58() for p in s._links} == neighbours(s) for s in services)
        )


def test_an_id_advertised_by_many_is_wanted_from_the_first_only() -> None:
    lazy = LazyPush(want_timeout=1.0)
    assert lazy.to_want("a", {"x": 5}, now=0.0) == ["x"]
    assert lazy.to_want("b", {"x": 5}, now=0.1) == []
    assert lazy.to_want("a", {"x": 5}, now=0.2) == []
    # A newer seq is wanted again at once, from whoever advertised it.
    assert lazy.to_want("c", {"x": 6}, now=0.3) == ["x"]
    lazy.got("x", 6)
    assert lazy.pending == 0
    assert lazy.retries(now=10.0) == {}


def test_an_unanswered_want_goes_to_the_next_advertiser_then_is_given_up() -> None:
    lazy = LazyPush(want_timeout=1.0)
    assert lazy.to_want("a", {"x": 5, "y": 2}, now=0.0) == ["x", "y"]
    lazy.to_want("b", {"x": 5}, now=0.5)
    lazy.to_want("c", {"x": 5}, now=0.6)
    assert lazy.retries(now=0.9) == {}
    assert lazy.retries(now=1.0) == {"b": ["x"]}  # y: nobody else advertised it
    assert lazy.retries(now=1.5) == {}
    assert lazy.retries(now=2.0) == {"c": ["x"]}
    assert lazy.retries(now=3.0) == {}
    assert lazy.pending == 0


def test_a_got_body_older_than_the_wanted_seq_keeps_the_want() -> None:
    lazy = LazyPush()
    lazy.to_want("a", {"x": 5}, now=0.0)
    lazy.got("x", 4)
    assert lazy.pending == 1


def test_holders_are_the_peers_that_have_this_seq_or_a_later_one() -> None:
    lazy = LazyPush()
    lazy.heard("a", "x", 5)
    lazy.heard("b", "x", 5)
    lazy.heard("c", "x", 4)  # older: says nothing about seq 5
    assert lazy.holders("x", 5) == {"a", "b"}
    assert lazy.holders("x", 4) == {"a", "b"}
    assert lazy.holders("x", 6) == frozenset()
    lazy.heard("c", "x", 6)
    assert lazy.holders("x", 6) == {"c"}
    lazy.forget(["x"])
    assert lazy.holders("x", 6) == frozenset()


def test_tracking_is_bounded() -> None:
    lazy = LazyPush(max_tracked=3)
    for i in range(10):
        lazy.heard("a", f"n{i}", 1)
        lazy.to_want("a", {f"n{i}": 1}, now=0.0)
    assert lazy.pending == 3
    assert lazy.holders("n0", 1) == frozenset()
    assert lazy.holders("n9", 1) == {"a"}


async def test_links_the_overlay_no_longer_needs_close_and_stay_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every joiner first links to the founder, and to the few members it knows; once
    its overlay targets are linked it closes the rest, and the peers close their
    answers to them. Each peer also streams to the closing side, so a node that kept
    every link a peer streamed on never closed one (the founder stayed linked to every
    node); and answers that answered each other re-opened each other without end.
    Heartbeats are fast and deaths quick here: a node that kept watching a peer it no
    longer exchanged gossip with buried it (and the mesh flooded refutations)."""
    monkeypatch.setattr(_service, "FULL_DIGEST_NODES", 3)
    monkeypatch.setattr(_service, "overlay_targets", ring_targets)
    n = 8
    local = LocalState("standby", (), (), 0, 0, {})
    service = ring_service(MeshCredentials.new(), lambda i: local, heartbeat=1.0, dead_after=3.0)
    async with trio.open_nursery() as nursery:
        services = await start_mesh(nursery, service, n)
        await settle_on_the_ring(services)
        await trio.sleep(4.0)  # past dead_after: a wrongly watched peer would be buried
        links = [{p: id(link) for p, link in s._links.items()} for s in services]
        sent = sum(s.counters["frames_sent"] for s in services)
        await trio.sleep(2.0)
        # The same link objects: none was closed and opened again.
        assert [{p: id(link) for p, link in s._links.items()} for s in services] == links
        assert all(len(s._inbound) == 4 for s in services)  # one stream per neighbour
        # Two heartbeats' frames on each link, and a few repairs (churn sent hundreds).
        assert sum(s.counters["frames_sent"] for s in services) - sent <= 4 * 4 * n
        assert all(len(s.view()) == n for s in services)
        assert not any(s.sent_by_kind.get("dead") for s in services)
        nursery.cancel_scope.cancel()


async def test_a_large_mesh_relays_announcements_as_adverts_and_every_node_gets_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Real services on loopback, more than the full-digest threshold (lowered so a few
    hosts in one process suffice): a node's changed announcement reaches every other
    node, relays carry one-entry digests ("advert") and each node fetches the body
    about once, not once per link."""
    assert FULL_DIGEST_NODES > 3
    monkeypatch.setattr(_service, "FULL_DIGEST_NODES", 3)
    # Each node chooses 2 others (not 8): in a mesh of 8, most nodes then hear of a
    # change by relay, as in a large mesh.
    monkeypatch.setattr(_service, "overlay_targets", ring_targets)
    n = 8
    states = [LocalState("standby", (), (), 0, 0, {}) for _ in range(n)]
    service = ring_service(MeshCredentials.new(), lambda i: states[i])

    async with trio.open_nursery() as nursery:
        services = await start_mesh(nursery, service, n)
        assert all(s.large for s in services)
        await settle_on_the_ring(services)

        def announced() -> int:
            return sum(s.sent_by_kind.get("announce", {}).get("frames", 0) for s in services)

        # Let the overlay settle: a new link opens with the opener's announcement.
        with trio.fail_after(30):
            settled = -1
            while settled != announced():
                settled = announced()
                await trio.sleep(1.0)
        before = [
            {k: dict(v) for k, v in s.sent_by_kind.items()} for s in services
        ]  # copies of the counters
        changer = services[-1]
        states[-1] = LocalState("standby", (), (), 0, 0, {}, models_loading=("m",))
        changer.announce_soon()
        # Under one heartbeat (5 s): a repair needs a second differing Tick, a heartbeat
        # after the first, so this was pushed. (3 s was too tight on a loaded machine.)
        with trio.fail_after(4.5):
            await until(
                lambda: all(
                    (p := s.view().peer(changer.node_id)) is not None and p.models_loading == ("m",)
                    for s in services
                )
            )
        await trio.sleep(0.3)  # let stray duplicates land before counting

        def sent(i: int, kind: str) -> int:
            now = services[i].sent_by_kind.get(kind, {}).get("frames", 0)
            return now - before[i].get(kind, {}).get("frames", 0)

        others = range(n - 1)
        # Relays went out as adverts; the bodies, counted over all nodes but the
        # changer's own sends, are about one per node (each Wanted once).
        relayed_to = n - 1 - len(changer._links)  # not linked to the changer itself
        assert relayed_to == 3  # the ring: linked to two after it and two before
        assert sum(sent(i, "advert") for i in others) > 0
        # Each node Wants the body at most once (a node linked to the changer may ask
        # a relay before the changer's own copy lands), and the bodies relays send are
        # no more than one a node: eager relays would send one per chosen link.
        assert all(sent(i, "want") <= 1 for i in others)
        assert sum(sent(i, "want") for i in others) >= relayed_to
        assert sum(sent(i, "announce") for i in others) <= n - 1
        nursery.cancel_scope.cancel()


async def test_a_node_falsely_reported_dead_refutes_at_once_wherever_it_was_buried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A node buried by a member it has no link to (that member's news came from a
    link that broke): the members that still hear from it pass the notice on to it,
    and it re-announces at once, so the burying member takes it back within a
    fraction of a heartbeat (not never: an equal seq cannot resurrect a node, and
    only the node itself can raise it)."""
    monkeypatch.setattr(_service, "FULL_DIGEST_NODES", 3)
    monkeypatch.setattr(_service, "overlay_targets", ring_targets)
    n = 8
    local = LocalState("standby", (), (), 0, 0, {})
    service = ring_service(MeshCredentials.new(), lambda i: local)

    def unlinked(victim: MeshService) -> list[MeshService]:
        return [
            s
            for s in services
            if s is not victim
            and victim.peer_id not in s._links
            and s.peer_id not in victim._links
            and s._links
        ]

    async with trio.open_nursery() as nursery:
        services = await start_mesh(nursery, service, n)
        await settle_on_the_ring(services)
        # Every node heard from each of its links lately (so it vouches for them).
        await trio.sleep(5.5)
        # On the ring every node has three members it is not linked to.
        victim = services[-1]
        assert len(unlinked(victim)) == 3
        buryer = unlinked(victim)[0]
        held = buryer.state.announcement(victim.node_id)
        assert held is not None
        sender = next(iter(buryer._links))
        buryer._on_message(sender, Dead(victim.node_id, held.seq).to_map())
        assert victim.node_id not in buryer.state
        with trio.fail_after(3):  # under one heartbeat: no repair needed
            await until(
                lambda: all(
                    (a := s.state.announcement(victim.node_id)) is not None and a.seq > held.seq
                    for s in services
                    if s is not victim
                )
            )
        nursery.cancel_scope.cancel()
