"""Listings, their scores, rendezvous records, and who publishes: pure functions."""

from __future__ import annotations

import json
import secrets

import pytest

from meshp2p._errors import ProtocolError
from meshp2p.discovery._listing import (
    LISTING_KIND,
    LISTING_TTL_S,
    MeshListing,
    Preferences,
    RendezvousRecord,
    current_listings,
    current_rendezvous,
    listing_event,
    open_rendezvous,
    parse_listing,
    ranked,
    rendezvous_event,
    rendezvous_filter,
    rendezvous_tag,
    score,
)
from meshp2p.discovery._nostr import Event, NostrKey
from meshp2p.discovery._service import is_stale, publisher_rank, should_yield, takeover_position
from meshp2p.mesh import MeshCredentials, MeshView, PeerInfo

NOW = 1_800_000_000
KEY, OTHER = NostrKey(b"\x01" * 32), NostrKey(b"\x02" * 32)


def listing(mesh_id: str = "aa" * 8, **fields: object) -> MeshListing:
    return MeshListing(mesh_id=mesh_id, invite="mp1.token", **fields)  # type: ignore[arg-type]


def test_a_listing_round_trips_through_its_event() -> None:
    original = listing(
        name="poker-night", region="eu", models_served=("m",), nodes=3, max_clients=9
    )
    event = listing_event(KEY, original, NOW)
    assert event.kind == LISTING_KIND
    assert (event.tag("d"), event.tag("k"), event.tag("n")) == (
        original.mesh_id,
        "meshp2p",
        "poker-night",
    )
    assert event.expiration == NOW + LISTING_TTL_S
    back = parse_listing(event)
    assert back.content() == original.content()
    assert (back.created_at, back.author) == (NOW, KEY.pubkey)


def _event_with(
    content: object, *, d: str = "aa" * 8, tags: list[list[str]] | None = None
) -> Event:
    tags = tags if tags is not None else [["d", d], ["k", "meshp2p"], ["expiration", str(NOW + 60)]]
    return KEY.sign(
        LISTING_KIND, tags, content if isinstance(content, str) else json.dumps(content), NOW
    )


@pytest.mark.parametrize(
    "event",
    [
        _event_with("not json"),
        _event_with([1, 2]),
        _event_with({**listing().content(), "v": 2}),
        _event_with(listing().content(), d="bb" * 8),  # d tag and mesh id disagree
        _event_with({**listing().content(), "invite": "http://x"}),
        _event_with({**listing().content(), "nodes": -1}),
        _event_with({**listing().content(), "nodes": True}),
        _event_with({**listing().content(), "models_served": ["x"] * 65}),
        _event_with(listing().content(), tags=[["d", "aa" * 8], ["k", "meshp2p"]]),  # no expiry
        _event_with(
            listing().content(), tags=[["d", "aa" * 8], ["k", "other"], ["expiration", "9"]]
        ),
    ],
    ids=[
        "json",
        "shape",
        "version",
        "d-tag",
        "invite",
        "negative",
        "bool",
        "models",
        "expiry",
        "k-tag",
    ],
)
def test_malformed_listings_are_refused(event: Event) -> None:
    with pytest.raises(ProtocolError):
        parse_listing(event)


def test_current_listings_keep_the_freshest_per_mesh_across_authors() -> None:
    first = listing_event(KEY, listing(name="a"), NOW - 50)
    takeover = listing_event(OTHER, listing(name="a"), NOW - 5)
    other_mesh = listing_event(KEY, listing("bb" * 8, name="b"), NOW - 20)
    expired = listing_event(KEY, listing("cc" * 8), NOW - LISTING_TTL_S - 1)
    junk = _event_with("not json", d="dd" * 8)
    found = current_listings([first, takeover, other_mesh, expired, junk, takeover], NOW)
    assert [(f.mesh_id, f.author) for f in found] == [
        ("aa" * 8, OTHER.pubkey),
        ("bb" * 8, KEY.pubkey),
    ]


def test_score_follows_the_documented_rule() -> None:
    plain = listing()
    assert score(plain, Preferences()) == 100
    assert score(listing(name="x"), Preferences()) == -100  # named, none asked
    assert score(listing(name="x"), Preferences(mesh_name="x")) == 400
    assert score(listing(name="y"), Preferences(mesh_name="x")) is None
    assert score(plain, Preferences(last_mesh=plain.mesh_id)) == 600
    assert (
        score(listing(max_clients=100, clients=10), Preferences()) == 120
    )  # headroom capped at 20
    assert score(listing(max_clients=5, clients=5), Preferences()) is None  # full
    assert score(listing(nodes=30), Preferences()) == 150  # +5 per node, up to 10
    assert score(listing(models_served=("a", "b"), models_wanted=("c",)), Preferences()) == 135
    assert score(listing(region="eu"), Preferences(region="eu")) == 150
    assert score(listing(models_served=("m",)), Preferences(models=("m",))) == 210
    assert score(listing(models_on_disk=("m",)), Preferences(models=("m",))) == 125


def test_ranked_is_best_first_and_leaves_out_non_candidates() -> None:
    small, big = listing("aa" * 8, nodes=1), listing("bb" * 8, nodes=8)
    full = listing("cc" * 8, nodes=9, max_clients=0)
    assert [item.mesh_id for _, item in ranked([small, big, full], Preferences())] == [
        "bb" * 8,
        "aa" * 8,
    ]


SECRET = MeshCredentials.new().secret


def test_a_rendezvous_record_opens_only_with_the_mesh_secret() -> None:
    record = RendezvousRecord("12D3KooWnode", ("/ip4/10.0.0.7/tcp/4001/p2p/12D3KooWnode",), NOW)
    event = rendezvous_event(KEY, SECRET, record, NOW)
    assert open_rendezvous(event, SECRET) == record
    with pytest.raises(ProtocolError):
        open_rendezvous(event, secrets.token_bytes(32))
    tampered = KEY.sign(event.kind, event.tags, event.content[:-4] + "AAAA", NOW)
    with pytest.raises(ProtocolError):
        open_rendezvous(tampered, SECRET)


def test_nothing_in_a_rendezvous_record_is_readable_without_the_secret() -> None:
    creds = MeshCredentials.new()
    address = "/ip4/192.168.77.5/udp/4001/quic-v1/p2p/12D3KooWsecretnode"
    event = rendezvous_event(
        KEY, creds.secret, RendezvousRecord("12D3KooWsecretnode", (address,), NOW), NOW
    )
    text = json.dumps(event.to_json())
    for clear in (
        creds.secret.hex(),
        creds.mesh_id,
        "192.168.77.5",
        "12D3KooWsecretnode",
        "meshp2p",
    ):
        assert clear not in text


def test_rendezvous_tags_change_daily_and_lookups_cover_yesterday() -> None:
    today, tomorrow = rendezvous_tag(SECRET, NOW), rendezvous_tag(SECRET, NOW + 86_400)
    assert today != tomorrow and rendezvous_tag(secrets.token_bytes(32), NOW) != today
    assert rendezvous_filter(SECRET, NOW + 86_400)["#d"] == [tomorrow, today]


def test_current_rendezvous_keeps_each_members_newest_record() -> None:
    a_old = rendezvous_event(
        KEY, SECRET, RendezvousRecord("A", ("/ip4/1.1.1.1/tcp/1/p2p/A",), NOW - 9), NOW - 9
    )
    a_new = rendezvous_event(
        KEY, SECRET, RendezvousRecord("A", ("/ip4/1.1.1.2/tcp/1/p2p/A",), NOW - 1), NOW - 1
    )
    b = rendezvous_event(
        OTHER, SECRET, RendezvousRecord("B", ("/ip4/1.1.1.3/tcp/1/p2p/B",), NOW - 5), NOW - 5
    )
    stranger = rendezvous_event(OTHER, secrets.token_bytes(32), RendezvousRecord("C", (), NOW), NOW)
    found = current_rendezvous([a_old, b, a_new, stranger], SECRET, NOW)
    assert [(r.node_id, r.addrs[0]) for r in found] == [
        ("A", "/ip4/1.1.1.2/tcp/1/p2p/A"),
        ("B", "/ip4/1.1.1.3/tcp/1/p2p/B"),
    ]


def view(*ids: str) -> MeshView:
    return MeshView("mesh", tuple(PeerInfo(i, (), "host", (), (), 0, 0, None, 0.0) for i in ids))


def test_the_takeover_order_is_the_same_on_every_node() -> None:
    members = view("n1", "n2", "n3", "n4")
    positions = sorted(takeover_position(members, n) for n in ("n1", "n2", "n3", "n4"))
    assert positions == [0, 1, 2, 3]
    first = min(("n1", "n2", "n3", "n4"), key=lambda n: publisher_rank("mesh", n))
    assert takeover_position(members, first) == 0


def test_a_listing_is_stale_after_one_and_a_half_intervals() -> None:
    assert is_stale(None, NOW, 60)
    assert not is_stale(listing(created_at=NOW - 89), NOW, 60)  # type: ignore[arg-type]
    assert is_stale(listing(created_at=NOW - 91), NOW, 60)  # type: ignore[arg-type]


def test_a_publisher_yields_only_to_a_live_better_ranked_fresh_one() -> None:
    members = view("n1", "n2")
    best, worst = sorted(("n1", "n2"), key=lambda n: publisher_rank("mesh", n))
    fresh = listing(publisher=best, created_at=NOW - 10)  # type: ignore[arg-type]
    assert should_yield(fresh, members, worst, NOW, 60)
    assert not should_yield(fresh, members, best, NOW, 60)
    old = listing(publisher=best, created_at=NOW - 70)  # type: ignore[arg-type]
    assert not should_yield(old, members, worst, NOW, 60)
    gone = listing(publisher="n9", created_at=NOW - 10)  # type: ignore[arg-type]
    assert not should_yield(gone, members, worst, NOW, 60)
