"""The console's event stream (``GET /api/events``): the node's status as server-sent
events, every ``interval`` seconds and at once when the node says something changed."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from ._asgi import Receive, Send, start_stream, watch_disconnect

#: Seconds between snapshots when nothing changes (what the issue calls "about 2 s").
SNAPSHOT_INTERVAL = 2.0
#: After a change, wait this long for the burst that usually follows (a worker loads,
#: gossip spreads it) and send one snapshot for all of it.
COALESCE = 0.1
#: What EventSource waits before reconnecting after the stream breaks, in ms.
RETRY_MS = 2000


def sse_message(data: Any, *, event: str | None = None, id: int | None = None) -> bytes:
    """One server-sent event whose data is ``data`` as compact JSON (one line)."""
    lines = []
    if event is not None:
        lines.append(f"event: {event}")
    if id is not None:
        lines.append(f"id: {id}")
    lines.append("data: " + json.dumps(data, separators=(",", ":")))
    return ("\n".join(lines) + "\n\n").encode()


class StatusEvents:
    """Streams ``snapshot()`` to each client of ``GET /api/events``.

    ``changed`` returns when the node next changes (a node joined or left, a model
    changed state, the routing table moved); snapshots go out at once then, and every
    ``interval`` seconds otherwise, so a page never polls.
    """

    def __init__(
        self,
        snapshot: Callable[[], Awaitable[dict[str, Any]]],
        changed: Callable[[], Awaitable[None]],
        *,
        interval: float = SNAPSHOT_INTERVAL,
        coalesce: float = COALESCE,
    ) -> None:
        self.snapshot = snapshot
        self.changed = changed
        self.interval = interval
        self.coalesce = coalesce
        #: Open streams now; for the status page and for tests.
        self.clients = 0

    async def stream(self, receive: Receive, send: Send) -> None:
        """Answer one ``GET /api/events`` until the client goes or the node stops."""
        await start_stream(send)
        self.clients += 1
        wake = _Wake()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch_disconnect, receive, nursery.cancel_scope.cancel)
                # Listens all the time, so a change made while a snapshot is being sent
                # is not missed: it makes the next one go at once.
                nursery.start_soon(self._watch, wake)
                await send(_chunk(f"retry: {RETRY_MS}\n\n".encode()))
                sequence = 0
                while True:
                    sequence += 1
                    wake.reset()
                    message = sse_message(await self.snapshot(), event="status", id=sequence)
                    await send(_chunk(message))
                    with trio.move_on_after(self.interval):
                        await wake.wait()
                        await trio.sleep(self.coalesce)  # one snapshot for a burst
        finally:
            self.clients -= 1

    async def _watch(self, wake: _Wake) -> None:
        while True:
            await self.changed()
            wake.set()


class _Wake:
    """A resettable flag: set by changes, cleared before each snapshot."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        self._event.set()

    def reset(self) -> None:
        if self._event.is_set():
            self._event = trio.Event()

    async def wait(self) -> None:
        await self._event.wait()


def _chunk(body: bytes) -> dict[str, Any]:
    return {"type": "http.response.body", "body": body, "more_body": True}
