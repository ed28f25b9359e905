"""protocols/vectors/discovery.json: what another implementation must reproduce."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from meshp2p.discovery._listing import (
    open_rendezvous,
    parse_listing,
    rendezvous_key,
    rendezvous_tag,
)
from meshp2p.discovery._nostr import NostrKey, parse_event, verify

VECTORS = {
    v["name"]: v
    for v in json.loads(
        (Path(__file__).resolve().parents[2] / "protocols/vectors/discovery.json").read_text()
    )
}


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_every_vector_event_verifies(name: str) -> None:
    assert verify(parse_event(VECTORS[name]["event"]))


def test_the_signed_event_is_reproduced_exactly_from_its_key() -> None:
    vector: dict[str, Any] = VECTORS["signed-event"]
    event = parse_event(vector["event"])
    key = NostrKey(bytes.fromhex(vector["check"]["secret_key"]))
    again = key.sign(
        event.kind,
        event.tags,
        event.content,
        event.created_at,
        aux=bytes.fromhex(vector["check"]["aux"]),
    )
    assert again == event


def test_the_listing_vector_reads_as_its_listing() -> None:
    vector = VECTORS["mesh-listing"]
    listing = parse_listing(parse_event(vector["event"]))
    assert listing.content() == vector["check"]["listing"]


def test_the_rendezvous_vector_opens_with_its_secret() -> None:
    vector = VECTORS["rendezvous-record"]
    check = vector["check"]
    secret = bytes.fromhex(check["mesh_secret"])
    event = parse_event(vector["event"])
    assert rendezvous_key(secret).hex() == check["key"]
    assert event.tag("d") == check["tag"] == rendezvous_tag(secret, event.created_at)
    record = open_rendezvous(event, secret)
    assert {"node": record.node_id, "addrs": list(record.addrs), "at": record.at} == check["record"]
