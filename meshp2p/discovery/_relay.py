"""Talking to Nostr relays over websockets, on trio: publish an event, query events.

Each operation opens its own short connection (discovery talks to a relay once a
minute or so) and is bounded by timeouts, by the size of one message, and by the
number of events it keeps, so a relay that is down, slow, closes early, sends
garbage or floods costs at most its timeouts; ``RelayPool`` asks all relays at
once and merges what the live ones say.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio
from trio_websocket import open_websocket_url

from .._errors import ProtocolError
from ._nostr import (
    MAX_MESSAGE,
    Closed,
    EndOfStored,
    Event,
    EventMessage,
    Notice,
    Ok,
    close_message,
    event_message,
    parse_relay_message,
    req_message,
)

log = logging.getLogger("meshp2p.discovery")
_T = TypeVar("_T")

CONNECT_TIMEOUT = 5.0
#: A query or publish, whole: connect, send, and every answer up to EOSE or OK.
OPERATION_TIMEOUT = 8.0
#: Events kept from one query of one relay; the rest are not read.
MAX_EVENTS = 500
#: Garbage messages tolerated in one query before the relay is given up on.
MAX_BAD_MESSAGES = 20
#: Relays a node may be given.
MAX_RELAYS = 16

#: Public relays, contacted only when a discovery feature (--publish, --auto,
#: ``meshp2p discover``) is asked for and no --nostr-relay is given.
DEFAULT_RELAYS = ("wss://relay.damus.io", "wss://nos.lol", "wss://relay.nostr.band")


class RelayError(Exception):
    """A relay could not be used for an operation; the message says why."""


@dataclass
class RelayHealth:
    """What the last operations with one relay taught us (for ``/api/status``)."""

    url: str
    ok: int = 0
    failed: int = 0
    last_ok: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    last_ms: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "healthy": self.last_ok is not None
            and (self.last_error_at is None or self.last_ok >= self.last_error_at),
            "ok": self.ok,
            "failed": self.failed,
            "last_ok": self.last_ok,
            "last_error": self.last_error,
            "last_ms": self.last_ms,
        }


@dataclass
class RelayClient:
    """One relay. Every method opens and closes its own connection."""

    url: str
    connect_timeout: float = CONNECT_TIMEOUT
    timeout: float = OPERATION_TIMEOUT
    health: RelayHealth = field(init=False)

    def __post_init__(self) -> None:
        if not self.url.startswith(("ws://", "wss://")):
            raise ValueError(f"a Nostr relay URL starts with ws:// or wss://, not {self.url!r}")
        self.health = RelayHealth(self.url)

    async def publish(self, event: Event) -> bool:
        """Send ``event``; True if the relay accepted it (OK true). RelayError if it
        could not be asked or did not answer in time."""

        async def run(ws: Any) -> bool:
            await ws.send_message(event_message(event))
            bad = 0
            while True:
                try:
                    message = parse_relay_message(await ws.get_message())
                except ProtocolError as exc:
                    bad = self._garbage(bad, exc)
                    continue
                if isinstance(message, Ok) and message.event_id == event.id:
                    if not message.accepted:
                        log.info("relay %s refused event: %s", self.url, message.message)
                    return message.accepted
                if isinstance(message, Notice):
                    log.info("relay %s says: %s", self.url, message.message[:200])

        return await self._operation("publish", run)

    async def query(
        self, filters: Sequence[Mapping[str, Any]], *, limit: int = MAX_EVENTS
    ) -> list[Event]:
        """The stored events matching ``filters`` (up to EOSE, at most ``limit``).
        Events are shape-checked, not verified: callers verify what they use."""
        subscription = secrets.token_hex(8)

        async def run(ws: Any) -> list[Event]:
            await ws.send_message(req_message(subscription, filters))
            events: list[Event] = []
            bad = 0
            while len(events) < limit:
                try:
                    message = parse_relay_message(await ws.get_message())
                except ProtocolError as exc:
                    bad = self._garbage(bad, exc)
                    continue
                if isinstance(message, EventMessage) and message.subscription == subscription:
                    events.append(message.event)
                elif isinstance(message, EndOfStored) and message.subscription == subscription:
                    break
                elif isinstance(message, Closed) and message.subscription == subscription:
                    log.info("relay %s closed the query: %s", self.url, message.message)
                    break
                elif isinstance(message, Notice):
                    log.info("relay %s says: %s", self.url, message.message[:200])
            if len(events) >= limit:
                log.info("relay %s sent more than %d events; kept the first", self.url, limit)
            await ws.send_message(close_message(subscription))
            return events

        return await self._operation("query", run)

    def _garbage(self, bad: int, exc: ProtocolError) -> int:
        bad += 1
        if bad == 1:
            log.info("ignoring a bad message from relay %s: %s", self.url, exc)
        if bad >= MAX_BAD_MESSAGES:
            raise RelayError(f"relay {self.url} sends garbage ({exc})")
        return bad

    async def _operation(self, what: str, run: Callable[[Any], Awaitable[_T]]) -> _T:
        started = time.monotonic()
        try:
            with trio.fail_after(self.timeout):
                async with open_websocket_url(
                    self.url,
                    connect_timeout=self.connect_timeout,
                    disconnect_timeout=1.0,
                    max_message_size=MAX_MESSAGE,
                    message_queue_size=64,
                ) as ws:
                    result = await run(ws)
        except trio.TooSlowError:
            raise self._failed(f"no answer to {what} within {self.timeout:.0f} s") from None
        except RelayError as exc:
            raise self._failed(str(exc)) from None
        except Exception as exc:  # OSError, handshake and close errors of any kind
            raise self._failed(f"{what} failed: {exc or type(exc).__name__}") from None
        self.health.ok += 1
        self.health.last_ok = time.time()
        self.health.last_ms = round((time.monotonic() - started) * 1000, 1)
        return result

    def _failed(self, reason: str) -> RelayError:
        self.health.failed += 1
        self.health.last_error = reason
        self.health.last_error_at = time.time()
        return RelayError(f"relay {self.url}: {reason}")


class RelayPool:
    """Several relays used together: publish to all, query all, merge."""

    def __init__(self, urls: Sequence[str], *, timeout: float = OPERATION_TIMEOUT) -> None:
        unique = list(dict.fromkeys(urls))
        if len(unique) > MAX_RELAYS:
            raise ValueError(f"at most {MAX_RELAYS} relays")
        self.relays = [RelayClient(url, timeout=timeout) for url in unique]

    def status(self) -> list[dict[str, Any]]:
        return [relay.health.to_json() for relay in self.relays]

    async def publish(self, event: Event) -> int:
        """How many relays accepted ``event``; failures are logged, not raised."""
        accepted = 0

        async def one(relay: RelayClient) -> None:
            nonlocal accepted
            try:
                ok = await relay.publish(event)  # not `accepted += await ...`: a race
            except RelayError as exc:
                log.info("%s", exc)
                return
            accepted += ok

        async with trio.open_nursery() as nursery:
            for relay in self.relays:
                nursery.start_soon(one, relay)
        return accepted

    async def query(self, filters: Sequence[Mapping[str, Any]]) -> list[Event]:
        """Every event any live relay returns, once each (by id)."""
        found: dict[str, Event] = {}
        answered = 0

        async def one(relay: RelayClient) -> None:
            nonlocal answered
            try:
                events = await relay.query(filters)
            except RelayError as exc:
                log.info("%s", exc)
                return
            answered += 1
            for event in events:
                found.setdefault(event.id, event)

        async with trio.open_nursery() as nursery:
            for relay in self.relays:
                nursery.start_soon(one, relay)
        if not answered and self.relays:
            log.warning("no Nostr relay answered (%s)", ", ".join(r.url for r in self.relays))
        return list(found.values())
