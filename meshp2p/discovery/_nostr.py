"""Nostr (NIP-01) core: events, their ids and BIP-340 signatures, relay messages.

Sans-I/O: nothing here opens a socket or reads a clock (``now`` is a parameter).
What comes from a relay is untrusted: every parser bounds sizes, checks types,
and raises ``ProtocolError`` for anything malformed; ``verify`` checks an event's
id and signature. NIP-40 expiration and NIP-33 replaceable events (per author,
kind and ``d`` tag, only the newest counts) are enforced here, on our side,
whatever a relay returns.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import coincurve

from .._errors import ProtocolError

#: Largest relay message we parse (a websocket frame): an event with 64 KiB of
#: content, escaped, fits well within it.
MAX_MESSAGE = 256 * 1024
#: Larger content is ignored: no listing or record of ours comes near it.
MAX_CONTENT = 64 * 1024
MAX_TAGS = 64
MAX_TAG_ITEMS = 16
MAX_TAG_ITEM = 1024
#: A listing dated this far ahead of our clock is refused (clocks drift; not that much).
MAX_FUTURE_S = 600

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX128 = re.compile(r"^[0-9a-f]{128}$")


@dataclass(frozen=True)
class Event:
    """A Nostr event (NIP-01). ``tags`` is a tuple of tuples of strings."""

    id: str
    pubkey: str
    created_at: int
    kind: int
    tags: tuple[tuple[str, ...], ...]
    content: str
    sig: str

    def tag(self, name: str) -> str | None:
        """The first value of the first tag called ``name``."""
        for tag in self.tags:
            if len(tag) >= 2 and tag[0] == name:
                return tag[1]
        return None

    @property
    def expiration(self) -> int | None:
        """NIP-40: the time after which the event is to be ignored; None if none
        (or unreadable, which counts as none only for events we never require it of)."""
        value = self.tag("expiration")
        if value is None or not value.isdigit():
            return None
        return int(value)

    def expired(self, now: float) -> bool:
        exp = self.expiration
        return exp is not None and exp <= now

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "pubkey": self.pubkey,
            "created_at": self.created_at,
            "kind": self.kind,
            "tags": [list(t) for t in self.tags],
            "content": self.content,
            "sig": self.sig,
        }


def event_id(
    pubkey: str, created_at: int, kind: int, tags: Sequence[Sequence[str]], content: str
) -> str:
    """NIP-01: sha256 of the compact JSON ``[0, pubkey, created_at, kind, tags, content]``."""
    serial = json.dumps(
        [0, pubkey, created_at, kind, [list(t) for t in tags], content],
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(serial.encode()).hexdigest()


@dataclass(frozen=True)
class NostrKey:
    """A secp256k1 key for signing events; ``pubkey`` is its x-only public key, hex."""

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) != 32:
            raise ValueError("a Nostr secret key is 32 bytes")

    @property
    def pubkey(self) -> str:
        return coincurve.PrivateKey(self.secret).public_key_xonly.format().hex()

    def sign(
        self,
        kind: int,
        tags: Iterable[Sequence[str]],
        content: str,
        created_at: int,
        *,
        aux: bytes | None = None,
    ) -> Event:
        """A signed event. ``aux`` (32 bytes) fixes BIP-340's randomness, for test vectors."""
        tag_tuple = tuple(tuple(t) for t in tags)
        pubkey = self.pubkey
        ident = event_id(pubkey, created_at, kind, tag_tuple, content)
        private = coincurve.PrivateKey(self.secret)
        digest = bytes.fromhex(ident)
        sig = private.sign_schnorr(digest) if aux is None else private.sign_schnorr(digest, aux)
        return Event(ident, pubkey, created_at, kind, tag_tuple, content, sig.hex())


def verify(event: Event) -> bool:
    """The id is the hash of the event and the signature is its author's."""
    if event.id != event_id(event.pubkey, event.created_at, event.kind, event.tags, event.content):
        return False
    try:
        key = coincurve.PublicKeyXOnly(bytes.fromhex(event.pubkey))
        return bool(key.verify(bytes.fromhex(event.sig), bytes.fromhex(event.id)))
    except (ValueError, TypeError):
        return False


def parse_event(value: Any) -> Event:
    """An event object from JSON, shape-checked (not verified: see ``verify``)."""
    if not isinstance(value, dict):
        raise ProtocolError("an event must be a JSON object")
    ident, pubkey, sig = value.get("id"), value.get("pubkey"), value.get("sig")
    if not (isinstance(ident, str) and _HEX64.match(ident)):
        raise ProtocolError("event id must be 64 lowercase hex digits")
    if not (isinstance(pubkey, str) and _HEX64.match(pubkey)):
        raise ProtocolError("event pubkey must be 64 lowercase hex digits")
    if not (isinstance(sig, str) and _HEX128.match(sig)):
        raise ProtocolError("event sig must be 128 lowercase hex digits")
    created_at, kind = value.get("created_at"), value.get("kind")
    for name, number in (("created_at", created_at), ("kind", kind)):
        if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number < 2**53:
            raise ProtocolError(f"event {name} must be a non-negative integer")
    content = value.get("content")
    if not isinstance(content, str):
        raise ProtocolError("event content must be a string")
    if len(content) > MAX_CONTENT:
        raise ProtocolError(f"event content is over {MAX_CONTENT} characters")
    tags = value.get("tags")
    if not isinstance(tags, list) or len(tags) > MAX_TAGS:
        raise ProtocolError(f"event tags must be a list of at most {MAX_TAGS}")
    parsed: list[tuple[str, ...]] = []
    for tag in tags:
        if (
            not isinstance(tag, list)
            or not 1 <= len(tag) <= MAX_TAG_ITEMS
            or not all(isinstance(i, str) and len(i) <= MAX_TAG_ITEM for i in tag)
        ):
            raise ProtocolError("each event tag must be a short list of short strings")
        parsed.append(tuple(tag))
    return Event(ident, pubkey, created_at, kind, tuple(parsed), content, sig)  # type: ignore[arg-type]


# Relay -> client messages (NIP-01, NIP-20 OK).


@dataclass(frozen=True)
class EventMessage:
    subscription: str
    event: Event


@dataclass(frozen=True)
class Ok:
    event_id: str
    accepted: bool
    message: str


@dataclass(frozen=True)
class EndOfStored:
    subscription: str


@dataclass(frozen=True)
class Notice:
    message: str


@dataclass(frozen=True)
class Closed:
    subscription: str
    message: str


RelayMessage = EventMessage | Ok | EndOfStored | Notice | Closed


def parse_relay_message(text: str | bytes) -> RelayMessage:
    """One message from a relay; ``ProtocolError`` if it is none we know, or malformed."""
    if len(text) > MAX_MESSAGE:
        raise ProtocolError(f"relay message over {MAX_MESSAGE} bytes")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise ProtocolError("relay message is not JSON") from None
    if not isinstance(value, list) or not value or not isinstance(value[0], str):
        raise ProtocolError("relay message must be a JSON array starting with its type")
    kind, args = value[0], value[1:]

    def text_arg(i: int, name: str) -> str:
        if len(args) <= i or not isinstance(args[i], str) or len(args[i]) > 4096:
            raise ProtocolError(f"{kind} needs a {name} string")
        return args[i]  # type: ignore[no-any-return]

    if kind == "EVENT":
        if len(args) != 2:
            raise ProtocolError("EVENT needs a subscription id and an event")
        return EventMessage(text_arg(0, "subscription id"), parse_event(args[1]))
    if kind == "OK":
        if len(args) < 2 or not isinstance(args[1], bool):
            raise ProtocolError("OK needs an event id and true or false")
        message = args[2] if len(args) > 2 and isinstance(args[2], str) else ""
        return Ok(text_arg(0, "event id"), args[1], message[:4096])
    if kind == "EOSE":
        return EndOfStored(text_arg(0, "subscription id"))
    if kind == "NOTICE":
        return Notice(text_arg(0, "message"))
    if kind == "CLOSED":
        message = args[1] if len(args) > 1 and isinstance(args[1], str) else ""
        return Closed(text_arg(0, "subscription id"), message[:4096])
    raise ProtocolError(f"unknown relay message type {kind[:32]!r}")


# Client -> relay messages.


def event_message(event: Event) -> str:
    return json.dumps(["EVENT", event.to_json()], separators=(",", ":"), ensure_ascii=False)


def req_message(subscription: str, filters: Sequence[Mapping[str, Any]]) -> str:
    return json.dumps(["REQ", subscription, *filters], separators=(",", ":"))


def close_message(subscription: str) -> str:
    return json.dumps(["CLOSE", subscription], separators=(",", ":"))


def newest_replaceable(events: Iterable[Event], now: float) -> list[Event]:
    """NIP-33 on our side: of the valid, unexpired events, only the newest per author,
    kind and ``d`` tag (ties: the lowest id, as NIP-01 says); sorted newest first.

    Invalid signatures, expired events and events dated more than ``MAX_FUTURE_S``
    ahead are dropped, whatever a relay returned.
    """
    best: dict[tuple[str, int, str], Event] = {}
    for event in events:
        if event.expired(now) or event.created_at > now + MAX_FUTURE_S or not verify(event):
            continue
        key = (event.pubkey, event.kind, event.tag("d") or "")
        held = best.get(key)
        if held is None or (event.created_at, held.id) > (held.created_at, event.id):
            best[key] = event
    return sorted(best.values(), key=lambda e: (-e.created_at, e.id))
