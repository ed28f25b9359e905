"""/mesh/gossip/1.0.0: signed announcements, their messages, and the MeshState they build."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from libp2p.crypto.ed25519 import Ed25519PrivateKey

from meshp2p._errors import ProtocolError
from meshp2p.mesh._gossip import (
    ANNOUNCEMENT_DOMAIN,
    MAX_DIGEST_ENTRIES,
    MAX_FRAME,
    Announce,
    Announcement,
    Dead,
    Digest,
    Leaving,
    ModelFile,
    Want,
    digests,
    encode_gossip_message,
    next_seq,
    node_id_of,
    parse_announcement,
    parse_gossip_message,
    sign,
    sign_leaving,
    verify,
    verify_leaving,
)
from meshp2p.mesh._state import MeshState
from meshp2p.transport._wire import FrameDecoder, encode_cbor

MESH = "mesh"
KEYS = [Ed25519PrivateKey.new(hashlib.sha256(b"gossip test key %d" % i).digest()) for i in range(4)]
IDS = [node_id_of(k) for k in KEYS]
SHA = hashlib.sha256(b"weights").hexdigest()


def fields(seq: int, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "seq": seq,
        "mesh_id": MESH,
        "addrs": ["/ip4/127.0.0.1/tcp/4001"],
        "role": "host",
        "models_served": ["m1"],
        "models_on_disk": [ModelFile("m1", 1000, SHA)],
        "memory_free": 1 << 30,
        "memory_total": 1 << 34,
        "request_rates": {"m1": 3.5},
        "version": "0.1.0",
    }
    return {**base, **overrides}


def ann(key: int, seq: int, **overrides: Any) -> Announcement:
    return sign(fields(seq, **overrides), KEYS[key])


def through_the_wire(msg: Any) -> Any:
    (decoded,) = FrameDecoder(MAX_FRAME).feed(encode_gossip_message(msg))
    return parse_gossip_message(decoded)


# Signatures.


def test_a_signed_announcement_verifies_and_names_its_key() -> None:
    a = ann(0, 1)
    assert verify(a)
    assert a.node_id == IDS[0]
    assert a.public_key == KEYS[0].get_public_key().serialize()


def test_any_changed_field_breaks_the_signature() -> None:
    a = ann(0, 1)
    for change in (
        {"seq": 2},
        {"memory_free": 0},
        {"mesh_id": "other"},
        {"addrs": ("/ip4/6.6.6.6/tcp/1",)},
        {"request_rates": {"m1": 3.25}},
        {"extra": {"injected": 1}},
    ):
        assert not verify(dataclasses.replace(a, **change)), change


def test_an_announcement_signed_by_another_key_does_not_verify() -> None:
    a, b = ann(0, 1), ann(1, 1)
    assert not verify(dataclasses.replace(a, signature=b.signature))
    # Swapping in the other key changes the peer id that key derives.
    assert not verify(dataclasses.replace(b, node_id=a.node_id))
    assert not verify(dataclasses.replace(a, public_key=b.public_key))


def test_garbage_public_key_does_not_verify_and_does_not_raise() -> None:
    a = ann(0, 1)
    for junk in (b"\x00", b"\x08\x01\x12\x03abc", b"\x08\x07\x12\x01a", bytes(64)):
        assert not verify(dataclasses.replace(a, public_key=junk))


def test_signature_covers_unknown_keys_and_survives_relaying() -> None:
    a = sign(
        fields(
            5,
            gpu={"name": "x"},
            models_on_disk=[{"name": "m1", "size": 1, "sha256": SHA, "quant": "q4"}],
        ),
        KEYS[0],
    )
    relayed = through_the_wire(Announce(a))
    assert isinstance(relayed, Announce)
    assert relayed.announcement.extra == {"gpu": {"name": "x"}}
    assert relayed.announcement.models_on_disk[0].extra == {"quant": "q4"}
    assert verify(relayed.announcement)
    assert through_the_wire(relayed) == relayed
    dropped = dataclasses.replace(relayed.announcement, extra={})
    assert not verify(dropped)


def test_models_loading_is_signed_when_present_and_absent_otherwise() -> None:
    loading = through_the_wire(Announce(ann(0, 3, models_loading=["m2"]))).announcement
    assert loading.models_loading == ("m2",) and verify(loading)
    assert "models_loading" not in ann(0, 4).unsigned_map()  # older nodes' exact map
    # A peer that sends an empty list has it kept as sent, so its signature holds.
    empty = through_the_wire(Announce(ann(1, 5, models_loading=[]))).announcement
    assert empty.models_loading == () and verify(empty)
    with pytest.raises(ValueError):
        ann(0, 6, models_loading=[""])


def test_integer_request_rates_from_another_implementation_verify_as_sent() -> None:
    # A JavaScript peer's CBOR encoder writes 2.0 as the integer 2; we must not convert it.
    unsigned = {
        **fields(1),
        "node_id": IDS[1],
        "public_key": KEYS[1].get_public_key().serialize(),
        "models_on_disk": [],
        "request_rates": {"m1": 2},
    }
    signature = KEYS[1].sign(ANNOUNCEMENT_DOMAIN + encode_cbor(unsigned))
    a = parse_announcement({**unsigned, "signature": signature})
    assert a.request_rates == {"m1": 2} and type(a.request_rates["m1"]) is int
    assert verify(a)


def test_we_always_send_request_rates_as_floats() -> None:
    a = ann(0, 1, request_rates={"m1": 4})
    assert type(a.request_rates["m1"]) is float


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"role": "king"}, "role"),
        ({"node_id": "12D3KooWnotme"}, "not the peer id"),
        ({"signature": b"x"}, "signature"),
        ({"seq": -1}, "seq"),
        ({"addrs": ["/ip4/1.2.3.4/tcp/1/" + "x" * 300]}, "addrs"),
    ],
)
def test_sign_refuses_what_a_peer_would_refuse(change: dict[str, Any], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        sign({**fields(1), **change}, KEYS[0])


def test_sign_refuses_an_announcement_too_big_for_one_frame() -> None:
    big = fields(
        1,
        addrs=["/dns/" + "a" * 250] * 32,
        models_served=["m" * 256] * 64,
        models_on_disk=[ModelFile("d" * 256, 1, SHA)] * 128,
    )
    with pytest.raises(ValueError, match="over the 65536-byte limit"):
        sign(big, KEYS[0])


def test_a_received_unknown_role_is_kept_for_newer_peers() -> None:
    m = ann(0, 1).to_map()
    m["role"] = "relay"
    assert parse_announcement(m).role == "relay"


# Messages.


@pytest.mark.parametrize(
    "msg",
    [
        Announce(ann(0, 1)),
        Digest({IDS[0]: 1, IDS[1]: 2}),
        Digest({}),
        Want((IDS[0], IDS[2])),
        sign_leaving(7, MESH, KEYS[0]),
        Dead(IDS[0], 3),
    ],
    ids=lambda m: type(m).__name__,
)
def test_every_message_round_trips_through_a_frame(msg: Any) -> None:
    assert through_the_wire(msg) == msg


def test_an_unknown_message_type_is_ignored_for_forward_compatibility() -> None:
    assert parse_gossip_message({"t": "rumour", "x": 1}) is None


def test_unknown_keys_in_messages_are_ignored() -> None:
    assert parse_gossip_message({"t": "dead", "node_id": "n", "seq": 1, "why": "x"}) == Dead("n", 1)


@pytest.mark.parametrize(
    "m",
    [
        {"t": "digest", "entries": {f"n{i}": 1 for i in range(MAX_DIGEST_ENTRIES + 1)}},
        {"t": "digest", "entries": {"n": -1}},
        {"t": "digest", "entries": {"n": True}},
        {"t": "digest", "entries": {"": 1}},
        {"t": "want", "node_ids": ["n"] * 513},
        {"t": "want", "node_ids": [1]},
        {"t": "dead", "node_id": "n"},
        {"t": "dead", "node_id": "n" * 129, "seq": 1},
        {"t": "announce", "announcement": []},
        {"t": "leaving", "node_id": "n", "seq": 1, "mesh_id": "m", "public_key": b"k"},
    ],
)
def test_malformed_or_over_limit_messages_are_protocol_errors(m: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        parse_gossip_message(m)


@pytest.mark.parametrize(
    "change",
    [
        {"seq": True},
        {"memory_free": 1.5},
        {"request_rates": {"m": -1.0}},
        {"request_rates": {"m": "fast"}},
        {"models_on_disk": [{"name": "m", "size": 1, "sha256": "ABC"}]},
        {"models_on_disk": [{"name": "m", "size": 1, "sha256": SHA.upper()}]},
        {"models_on_disk": ["m"]},
        {"addrs": [""]},
        {"version": 1},
        {"public_key": "not bytes"},
    ],
)
def test_announcement_fields_are_type_and_limit_checked(change: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        parse_announcement({**ann(0, 1).to_map(), **change})


def test_leaving_is_signed_by_the_leaving_node() -> None:
    leaving = sign_leaving(9, MESH, KEYS[0])
    assert leaving.node_id == IDS[0] and verify_leaving(leaving)
    assert not verify_leaving(dataclasses.replace(leaving, seq=10))
    assert not verify_leaving(dataclasses.replace(leaving, mesh_id="other"))
    assert not verify_leaving(dataclasses.replace(leaving, node_id=IDS[1]))


def test_digests_split_a_large_view_into_frames_that_fit() -> None:
    view = {f"12D3KooW{i:044d}": 1_767_225_600_000 + i for i in range(1300)}
    parts = digests(view)
    assert [len(p.entries) for p in parts] == [512, 512, 276]
    assert {k: v for p in parts for k, v in p.entries.items()} == view
    for part in parts:
        assert len(encode_gossip_message(part)) <= MAX_FRAME
    assert digests({}) == [Digest({})]


def test_next_seq_follows_the_clock_but_never_goes_back() -> None:
    assert next_seq(0, 1000.0) == 1_000_000
    assert next_seq(5_000_000, 1000.0) == 5_000_001


# MeshState.


def test_a_verified_announcement_appears_in_the_snapshot() -> None:
    state = MeshState(MESH)
    a = ann(0, 1)
    assert state.apply_announcement(a, now=10.0)
    assert state.record_rtt(a.node_id, 12.5)
    view = state.snapshot()
    peer = view.peer(a.node_id)
    assert peer is not None and len(view) == 1 and a.node_id in view
    assert (peer.role, peer.addrs, peer.models_served) == ("host", a.addrs, ("m1",))
    assert (peer.memory_free, peer.rtt_ms, peer.last_seen, peer.seq) == (1 << 30, 12.5, 10.0, 1)
    assert list(view) == [peer]


def test_snapshot_is_sorted_by_node_id_and_immutable() -> None:
    state = MeshState(MESH)
    for i in range(3):
        state.apply_announcement(ann(i, 1), now=0.0)
    view = state.snapshot()
    assert [p.id for p in view] == sorted(IDS[:3])
    with pytest.raises(dataclasses.FrozenInstanceError):
        view.peers[0].role = "client"  # type: ignore[misc]
    hash(view)


def test_announcements_for_another_mesh_are_refused() -> None:
    assert not MeshState("other").apply_announcement(ann(0, 1), now=0.0)


def test_announcements_with_a_bad_signature_are_refused() -> None:
    forged = dataclasses.replace(ann(0, 1), memory_free=0)
    assert not MeshState(MESH).apply_announcement(forged, now=0.0)


def test_only_a_strictly_higher_seq_replaces_an_announcement() -> None:
    state = MeshState(MESH)
    assert state.apply_announcement(ann(0, 5), now=0.0)
    assert not state.apply_announcement(ann(0, 5, memory_free=1), now=1.0)
    assert not state.apply_announcement(ann(0, 4), now=1.0)
    assert state.apply_announcement(ann(0, 6), now=1.0)
    assert state.digest() == {IDS[0]: 6}


def test_leaving_buries_the_node_and_stale_announcements_cannot_resurrect_it() -> None:
    state = MeshState(MESH)
    state.apply_announcement(ann(0, 5), now=0.0)
    assert state.apply_leaving(sign_leaving(5, MESH, KEYS[0]), now=1.0)
    assert IDS[0] not in state and state.dead() == {IDS[0]: 5}
    assert not state.apply_announcement(ann(0, 5), now=2.0)
    assert not state.apply_leaving(sign_leaving(5, MESH, KEYS[0]), now=2.0)


def test_a_restarted_node_with_a_higher_seq_comes_back_from_the_dead() -> None:
    state = MeshState(MESH)
    state.apply_announcement(ann(0, 5), now=0.0)
    state.apply_leaving(sign_leaving(5, MESH, KEYS[0]), now=1.0)
    assert state.apply_announcement(ann(0, 6), now=2.0)
    assert IDS[0] in state and state.dead() == {}


def test_a_leaving_older_than_the_held_announcement_is_ignored() -> None:
    state = MeshState(MESH)
    state.apply_announcement(ann(0, 6), now=0.0)
    assert not state.apply_leaving(sign_leaving(5, MESH, KEYS[0]), now=1.0)
    assert IDS[0] in state


def test_a_forged_or_foreign_leaving_is_ignored() -> None:
    state = MeshState(MESH)
    state.apply_announcement(ann(0, 5), now=0.0)
    assert not state.apply_leaving(dataclasses.replace(sign_leaving(5, MESH, KEYS[0]), seq=6), 1.0)
    assert not state.apply_leaving(sign_leaving(5, "other", KEYS[0]), now=1.0)
    impostor = dataclasses.replace(sign_leaving(5, MESH, KEYS[1]), node_id=IDS[0])
    assert not state.apply_leaving(impostor, now=1.0)
    assert IDS[0] in state


def test_a_leaving_from_an_unknown_node_still_blocks_its_stale_announcements() -> None:
    state = MeshState(MESH)
    assert state.apply_leaving(sign_leaving(5, MESH, KEYS[0]), now=0.0)
    assert not state.apply_announcement(ann(0, 4), now=1.0)


def test_a_death_notice_buries_at_our_seq_not_the_notices() -> None:
    state = MeshState(MESH)
    state.apply_announcement(ann(0, 5), now=0.0)
    assert state.apply_dead(IDS[0], 2**63, now=1.0)
    assert state.dead() == {IDS[0]: 5}
    # So a forged huge seq cannot bar the node: its next announcement gets back in.
    assert state.apply_announcement(ann(0, 6), now=2.0)


def test_a_stale_or_unknown_death_notice_is_ignored() -> None:
    state = MeshState(MESH)
    state.apply_announcement(ann(0, 5), now=0.0)
    assert not state.apply_dead(IDS[0], 4, now=1.0)
    assert not state.apply_dead(IDS[1], 99, now=1.0)
    assert state.dead() == {} and IDS[0] in state


def test_nodes_not_seen_within_dead_after_expire_and_are_returned() -> None:
    state = MeshState(MESH)
    state.apply_announcement(ann(0, 1), now=0.0)
    state.apply_announcement(ann(1, 1), now=0.0)
    assert state.mark_seen(IDS[1], now=50.0)
    assert state.expire(now=60.0, dead_after=60.0) == []
    assert state.expire(now=60.5, dead_after=60.0) == [IDS[0]]
    assert state.dead() == {IDS[0]: 1} and list(state.digest()) == [IDS[1]]


def test_mark_seen_ignores_unknown_nodes_and_never_goes_back_in_time() -> None:
    state = MeshState(MESH)
    assert not state.mark_seen(IDS[0], now=1.0)
    state.apply_announcement(ann(0, 1), now=10.0)
    state.mark_seen(IDS[0], now=5.0)
    assert state.last_seen(IDS[0]) == 10.0


def test_death_clears_the_measured_rtt() -> None:
    state = MeshState(MESH)
    state.apply_announcement(ann(0, 1), now=0.0)
    state.record_rtt(IDS[0], 3.0)
    state.apply_dead(IDS[0], 1, now=1.0)
    state.apply_announcement(ann(0, 2), now=2.0)
    peer = state.snapshot().peer(IDS[0])
    assert peer is not None and peer.rtt_ms is None
    assert not state.record_rtt(IDS[0], float("nan"))


def test_digest_exchange_finds_what_each_side_lacks() -> None:
    ours, theirs = MeshState(MESH), MeshState(MESH)
    for state, key, seq in ((ours, 0, 2), (theirs, 0, 1), (theirs, 1, 1), (ours, 2, 1)):
        state.apply_announcement(ann(key, seq), now=0.0)
    ours.apply_leaving(sign_leaving(1, MESH, KEYS[3]), now=0.0)
    their_digest = {**theirs.digest(), IDS[3]: 1}
    assert ours.missing_from(their_digest) == [IDS[1]]
    assert [a.node_id for a in ours.newer_than(their_digest)] == [IDS[0]]
    assert ours.newer_deaths(their_digest) == [Dead(IDS[3], 1)]
    assert ours.announcements_for([IDS[1], IDS[2]]) == [ours.announcement(IDS[2])]


def test_a_full_view_refuses_newcomers_but_still_takes_updates() -> None:
    state = MeshState(MESH, max_nodes=2)
    assert state.apply_announcement(ann(0, 1), now=0.0)
    assert state.apply_announcement(ann(1, 1), now=0.0)
    assert not state.apply_announcement(ann(2, 1), now=0.0)
    assert state.apply_announcement(ann(0, 2), now=0.0)
    state.expire(now=100.0, dead_after=10.0)
    assert state.apply_announcement(ann(2, 1), now=100.0)


def test_the_dead_set_forgets_its_oldest_entries_beyond_its_cap() -> None:
    state = MeshState(MESH, max_dead=2)
    for i in range(3):
        state.apply_leaving(sign_leaving(1, MESH, KEYS[i]), now=float(i))
    assert state.dead() == {IDS[1]: 1, IDS[2]: 1}


def test_stored_announcements_stay_within_the_byte_budget() -> None:
    one = ann(0, 1)
    budget = len(one.signed_payload) + len(one.signature)
    state = MeshState(MESH, max_bytes=budget)
    assert state.apply_announcement(one, now=0.0)
    assert not state.apply_announcement(ann(1, 1), now=0.0)
    assert state.apply_announcement(ann(0, 2), now=0.0)
    assert not state.apply_announcement(ann(0, 3, version="0.1.0-longer"), now=0.0)
    assert state.stored_bytes <= budget
    state.apply_dead(IDS[0], 2, now=1.0)
    assert state.stored_bytes == 0


# Hypothesis: MeshState invariants under arbitrary gossip.

SEQS = range(1, 5)
POOL = {(k, s): ann(k, s) for k in range(3) for s in SEQS}
LEAVINGS = {(k, s): sign_leaving(s, MESH, KEYS[k]) for k in range(3) for s in SEQS}
BAD = [
    ann(0, 9, mesh_id="other"),
    dataclasses.replace(ann(1, 9), memory_free=1),
    dataclasses.replace(LEAVINGS[(2, 1)], seq=9),
]

operations = st.one_of(
    st.tuples(st.just("announce"), st.sampled_from(sorted(POOL))),
    st.tuples(st.just("leaving"), st.sampled_from(sorted(LEAVINGS))),
    st.tuples(st.just("dead"), st.tuples(st.integers(0, 3), st.integers(0, 2**64 - 1))),
    st.tuples(st.just("seen"), st.integers(0, 3)),
    st.tuples(st.just("expire"), st.floats(0, 20)),
    st.tuples(st.just("bad"), st.integers(0, len(BAD) - 1)),
)


@settings(max_examples=120, deadline=None)
@given(st.lists(operations, max_size=30), st.integers(1, 3), st.integers(1, 3))
def test_mesh_state_invariants_hold_under_any_gossip(
    ops: list[tuple[str, Any]], max_nodes: int, max_dead: int
) -> None:
    state = MeshState(MESH, max_nodes=max_nodes, max_dead=max_dead)
    high_water: dict[str, int] = {}
    now = 0.0
    for op, arg in ops:
        now += 1.0
        if op == "announce":
            a = POOL[arg]
            if state.apply_announcement(a, now):
                # Accepted only above anything held or buried: no resurrection by stale seq.
                assert a.seq > high_water.get(a.node_id, -1)
        elif op == "leaving":
            state.apply_leaving(LEAVINGS[arg], now)
        elif op == "dead":
            key, seq = arg
            state.apply_dead(IDS[key], seq, now)
        elif op == "seen":
            state.mark_seen(IDS[arg], now)
        elif op == "expire":
            state.expire(now, dead_after=arg)
        else:
            bad = BAD[arg]
            if isinstance(bad, Leaving):
                assert not state.apply_leaving(bad, now)
            else:
                assert not state.apply_announcement(bad, now)

        live, dead = state.digest(), state.dead()
        assert len(live) <= max_nodes and len(dead) <= max_dead
        assert not set(live) & set(dead)
        for node_id in set(high_water) - set(live) - set(dead):
            del high_water[node_id]  # evicted from the bounded dead set: forgotten
        for node_id, seq in {**live, **dead}.items():
            assert seq >= high_water.get(node_id, -1), "seq went backwards"
            high_water[node_id] = seq
        for node_id in live:
            held = state.announcement(node_id)
            assert held is not None and held.mesh_id == MESH and verify(held)
        assert len(state.snapshot()) == len(live)


gossip_maps = st.fixed_dictionaries(
    {"t": st.sampled_from(["announce", "digest", "want", "leaving", "dead", "x"])},
    optional={
        "announcement": st.one_of(
            st.just(ann(0, 1).to_map()),
            st.dictionaries(st.text(max_size=12), st.integers() | st.text() | st.binary()),
        ),
        "entries": st.dictionaries(st.text(max_size=5), st.integers() | st.booleans()),
        "node_ids": st.lists(st.text(max_size=5) | st.integers(), max_size=4),
        "node_id": st.text(max_size=5) | st.binary(max_size=3),
        "seq": st.integers() | st.floats() | st.none(),
        "mesh_id": st.text(max_size=4),
        "public_key": st.binary(max_size=40),
        "signature": st.binary(max_size=64),
    },
)


@settings(max_examples=150, deadline=None)
@given(gossip_maps)
def test_random_gossip_maps_parse_or_raise_only_protocol_error(m: dict[str, Any]) -> None:
    try:
        msg = parse_gossip_message(m)
    except ProtocolError:
        return
    state = MeshState(MESH)
    if isinstance(msg, Announce):
        state.apply_announcement(msg.announcement, now=0.0)
    elif isinstance(msg, Leaving):
        state.apply_leaving(msg, now=0.0)
    elif isinstance(msg, Dead):
        state.apply_dead(msg.node_id, msg.seq, now=0.0)
    elif isinstance(msg, Digest):
        state.missing_from(msg.entries)
        state.newer_than(msg.entries)
    elif isinstance(msg, Want):
        state.announcements_for(msg.node_ids)
