"""The relay client against a real Nostr relay, and against hostile ones.

A real ``nostr-relay`` process (``make relay-install``) stores and returns events;
in-process websocket servers play relays that send garbage, flood, stall or hang
up, which cost at most their timeouts while the real relay still works.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
from conftest import NostrRelay
from trio_websocket import WebSocketRequest, serve_websocket

from meshp2p.discovery import (
    MeshListing,
    NostrKey,
    RelayClient,
    RelayError,
    RelayPool,
    current_listings,
    listing_event,
    listing_filter,
)
from meshp2p.discovery._relay import MAX_EVENTS

KEY = NostrKey(os.urandom(32))


def a_listing(mesh_id: str, name: str = "test") -> MeshListing:
    return MeshListing(mesh_id=mesh_id, invite="mp1.x", name=name)


async def test_publish_then_query_a_real_relay(nostr_relay: Callable[[], NostrRelay]) -> None:
    relay = nostr_relay()
    client = RelayClient(relay.url)
    now = int(time.time())
    event = listing_event(KEY, a_listing("aa" * 8), now)
    assert await client.publish(event)
    found = await client.query([listing_filter("aa" * 8)])
    assert [e.id for e in found] == [event.id]
    assert client.health.to_json()["healthy"]


async def test_replaceable_listing_replaced_and_merged(
    nostr_relay: Callable[[], NostrRelay],
) -> None:
    pool = RelayPool([nostr_relay().url, nostr_relay().url])
    now = int(time.time())
    old = listing_event(KEY, a_listing("bb" * 8, "old"), now - 30)
    new = listing_event(KEY, a_listing("bb" * 8, "new"), now - 10)
    assert await pool.publish(old) == 2
    assert await pool.publish(new) == 2
    events = await pool.query([listing_filter("bb" * 8)])
    assert [item.name for item in current_listings(events, time.time())] == ["new"]


async def test_a_relay_that_is_down_costs_its_connect_timeout(
    nostr_relay: Callable[[], NostrRelay],
) -> None:
    live, dead = nostr_relay(), nostr_relay()
    dead.kill()
    pool = RelayPool([live.url, dead.url])
    event = listing_event(KEY, a_listing("cc" * 8), int(time.time()))
    started = time.monotonic()
    assert await pool.publish(event) == 1
    assert [e.id for e in await pool.query([listing_filter("cc" * 8)])] == [event.id]
    assert time.monotonic() - started < 10
    status = {s["url"]: s for s in pool.status()}
    assert status[live.url]["healthy"] and not status[dead.url]["healthy"]
    assert status[dead.url]["last_error"]


async def test_a_relay_killed_between_operations(nostr_relay: Callable[[], NostrRelay]) -> None:
    first, second = nostr_relay(), nostr_relay()
    pool = RelayPool([first.url, second.url])
    now = int(time.time())
    assert await pool.publish(listing_event(KEY, a_listing("dd" * 8), now)) == 2
    first.kill()  # mid-test: the other relay still has it
    later = listing_event(KEY, a_listing("dd" * 8, "later"), now + 1)
    assert await pool.publish(later) == 1
    events = await pool.query([listing_filter("dd" * 8)])
    assert [item.name for item in current_listings(events, time.time())] == ["later"]


Behaviour = Callable[[Any, list[Any]], Awaitable[None]]


async def run_hostile(behaviour: Behaviour, test: Callable[[str], Awaitable[None]]) -> None:
    """Serve ``behaviour`` as a websocket relay on a free port while ``test`` runs."""

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            req = json.loads(await ws.get_message())
            await behaviour(ws, req)
        except Exception:
            pass

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
        await test(f"ws://127.0.0.1:{server.port}")
        nursery.cancel_scope.cancel()


async def garbage(ws: Any, req: list[Any]) -> None:
    for payload in ["not json", "[]", '["EVENT"]', '{"x":1}', '["EVENT","s",{"id":"zz"}]'] * 10:
        await ws.send_message(payload)
    await trio.sleep_forever()


async def flood(ws: Any, req: list[Any]) -> None:
    event = listing_event(KEY, a_listing("ee" * 8), int(time.time())).to_json()
    for _ in range(MAX_EVENTS * 5):
        await ws.send_message(json.dumps(["EVENT", req[1], event]))
    await ws.send_message(json.dumps(["EOSE", req[1]]))


async def stall(ws: Any, req: list[Any]) -> None:
    await trio.sleep_forever()


async def hang_up(ws: Any, req: list[Any]) -> None:
    await ws.aclose()


async def test_garbage_is_given_up_on_with_a_reason() -> None:
    async def check(url: str) -> None:
        client = RelayClient(url, timeout=3)
        with pytest.raises(RelayError, match="garbage"):
            await client.query([listing_filter()])

    await run_hostile(garbage, check)


async def test_a_flood_is_cut_at_the_event_limit() -> None:
    async def check(url: str) -> None:
        events = await RelayClient(url, timeout=20).query([listing_filter()])
        assert len(events) == MAX_EVENTS

    await run_hostile(flood, check)


@pytest.mark.parametrize("behaviour", [stall, hang_up], ids=["stalls", "hangs-up"])
async def test_silent_relays_cost_their_timeout_and_the_pool_goes_on(
    behaviour: Behaviour, nostr_relay: Callable[[], NostrRelay]
) -> None:
    live = nostr_relay()
    event = listing_event(KEY, a_listing("ff" * 8), int(time.time()))
    assert await RelayClient(live.url).publish(event)

    async def check(url: str) -> None:
        pool = RelayPool([url, live.url], timeout=2)
        started = time.monotonic()
        events = await pool.query([listing_filter("ff" * 8)])
        assert time.monotonic() - started < 4
        assert [e.id for e in events] == [event.id]

    await run_hostile(behaviour, check)


def test_relay_urls_must_be_websockets() -> None:
    with pytest.raises(ValueError, match="ws://"):
        RelayClient("http://relay.example")
