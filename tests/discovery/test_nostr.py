"""The Nostr core: event ids, BIP-340 signatures, relay messages, NIP-40 and NIP-33."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshp2p._errors import ProtocolError
from meshp2p.discovery._nostr import (
    MAX_CONTENT,
    MAX_FUTURE_S,
    Closed,
    EndOfStored,
    Event,
    EventMessage,
    NostrKey,
    Notice,
    Ok,
    event_id,
    event_message,
    newest_replaceable,
    parse_event,
    parse_relay_message,
    req_message,
    verify,
)

KEY = NostrKey(bytes(range(1, 33)))
OTHER = NostrKey(bytes(range(2, 34)))
NOW = 1_800_000_000


def signed(
    key: NostrKey = KEY, *, at: int = NOW, d: str = "x", content: str = "hi", **extra: str
) -> Event:
    tags = [["d", d], *([k, v] for k, v in extra.items())]
    return key.sign(30078, tags, content, at)


def test_event_id_is_the_nip01_hash_of_the_compact_serialisation() -> None:
    # The serialisation NIP-01 specifies, written out by hand.
    serial = '[0,"' + "a" * 64 + '",1,1,[["t","x"]],"é\\n"]'
    import hashlib

    assert (
        event_id("a" * 64, 1, 1, [["t", "x"]], "é\n") == hashlib.sha256(serial.encode()).hexdigest()
    )


def test_signed_event_verifies_and_survives_json() -> None:
    event = signed()
    assert verify(event)
    again = parse_event(json.loads(json.dumps(event.to_json())))
    assert again == event and verify(again)
    assert event.pubkey == KEY.pubkey and len(event.sig) == 128


@pytest.mark.parametrize(
    "change",
    [
        {"content": "tampered"},
        {"created_at": NOW + 1},
        {"tags": (("d", "y"),)},
        {"pubkey": OTHER.pubkey},
        {"sig": "0" * 128},
    ],
    ids=["content", "time", "tags", "author", "signature"],
)
def test_any_change_breaks_verification(change: dict) -> None:  # type: ignore[type-arg]
    event = signed()
    forged = Event(**{**event.__dict__, **change})
    assert not verify(forged)


def test_a_signature_of_another_key_is_refused() -> None:
    mine, theirs = signed(), signed(OTHER)
    assert not verify(Event(**{**mine.__dict__, "sig": theirs.sig}))


@pytest.mark.parametrize(
    "bad",
    [
        [],
        {"id": "zz"},
        {**signed().to_json(), "kind": -1},
        {**signed().to_json(), "kind": True},
        {**signed().to_json(), "tags": "x"},
        {**signed().to_json(), "tags": [[1]]},
        {**signed().to_json(), "content": None},
        {**signed().to_json(), "content": "x" * (MAX_CONTENT + 1)},
        {**signed().to_json(), "sig": "A" * 128},
    ],
)
def test_malformed_events_are_protocol_errors(bad: object) -> None:
    with pytest.raises(ProtocolError):
        parse_event(bad)


def test_relay_messages_parse() -> None:
    event = signed()
    assert parse_relay_message(json.dumps(["EVENT", "s", event.to_json()])) == EventMessage(
        "s", event
    )
    assert parse_relay_message('["OK","abc",true,""]') == Ok("abc", True, "")
    assert parse_relay_message('["OK","abc",false,"blocked: no"]') == Ok(
        "abc", False, "blocked: no"
    )
    assert parse_relay_message('["EOSE","s"]') == EndOfStored("s")
    assert parse_relay_message('["NOTICE","slow down"]') == Notice("slow down")
    assert parse_relay_message('["CLOSED","s","error: gone"]') == Closed("s", "error: gone")


@pytest.mark.parametrize(
    "text",
    [
        '{"a":1}',
        "[]",
        "[1]",
        '["WHAT"]',
        '["OK","x","yes"]',
        '["EVENT","s"]',
        "not json",
        "[" * 5000,
    ],
)
def test_bad_relay_messages_are_protocol_errors(text: str) -> None:
    with pytest.raises(ProtocolError):
        parse_relay_message(text)


@given(st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_any_relay_text_parses_or_is_a_protocol_error(text: str) -> None:
    try:
        parse_relay_message(text)
    except ProtocolError:
        pass


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
        max_leaves=20,
    )
)
def test_any_json_event_parses_or_is_a_protocol_error(value: object) -> None:
    try:
        parse_relay_message(json.dumps(["EVENT", "s", value]))
    except ProtocolError:
        pass


def test_client_messages_are_compact_json() -> None:
    event = signed()
    assert json.loads(event_message(event)) == ["EVENT", event.to_json()]
    assert req_message("s", [{"kinds": [1]}]) == '["REQ","s",{"kinds":[1]}]'


def test_only_the_newest_replaceable_version_counts() -> None:
    old, new = signed(at=NOW - 10, content="old"), signed(at=NOW, content="new")
    other_d = signed(at=NOW - 20, d="y")
    other_author = signed(OTHER, at=NOW - 30)
    kept = newest_replaceable([new, old, other_d, other_author, old], NOW)
    assert kept == [new, other_d, other_author]


def test_equal_times_keep_the_lowest_id() -> None:
    a, b = signed(content="a"), signed(content="b")
    assert newest_replaceable([a, b], NOW) == [min(a, b, key=lambda e: e.id)]


def test_expired_future_and_forged_events_are_dropped() -> None:
    expired = signed(d="e", expiration=str(NOW - 1))
    alive = signed(d="a", expiration=str(NOW + 60))
    future = signed(d="f", at=NOW + MAX_FUTURE_S + 1)
    forged = Event(**{**signed(d="g").__dict__, "content": "changed"})
    assert newest_replaceable([expired, alive, future, forged], NOW) == [alive]
    assert alive.expiration == NOW + 60 and expired.expired(NOW)


def test_a_nodes_nostr_key_is_kept_private_in_its_home(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os

    from meshp2p._errors import ConfigError
    from meshp2p.discovery import load_or_create_nostr_key

    key = load_or_create_nostr_key(tmp_path)
    path = tmp_path / "nostr.key"
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_nostr_key(tmp_path).pubkey == key.pubkey
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_or_create_nostr_key(tmp_path)
