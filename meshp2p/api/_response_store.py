"""``previous_response_id`` for the Responses API: the conversations this node's gateway
answered, kept for a while so that the next turn may name the last one instead of
sending it all again; no I/O.

Kept per node (the node whose API received the request, whichever node generated the
answer), bounded in count (``max_count``), in age (``max_age``) and in bytes
(``max_bytes``); requests with ``"store": false`` are not kept. A follow-up naming a
response this node does not keep (another node answered it, it expired, or it was never
kept) gets 400 saying so.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._openai import ApiError

DEFAULT_MAX_COUNT = 1000
DEFAULT_MAX_AGE_S = 3600.0
DEFAULT_MAX_BYTES = 64 * 2**20
#: A streamed answer is scanned for its final event up to this many bytes.
MAX_CAPTURE = 16 * 2**20


@dataclass(frozen=True)
class _Kept:
    items: list[dict[str, Any]]
    size: int
    at: float


class ResponseStore:
    """Conversations by response id: the input items and the response's output items."""

    def __init__(
        self,
        *,
        max_count: int = DEFAULT_MAX_COUNT,
        max_age: float = DEFAULT_MAX_AGE_S,
        max_bytes: int = DEFAULT_MAX_BYTES,
        clock: Callable[[], float],
    ) -> None:
        self.max_count = max_count
        self.max_age = max_age
        self.max_bytes = max_bytes
        self.clock = clock
        self._kept: OrderedDict[str, _Kept] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        self._expire()
        return len(self._kept)

    def _drop_oldest(self) -> None:
        _, kept = self._kept.popitem(last=False)
        self.bytes -= kept.size

    def _expire(self) -> None:
        limit = self.clock() - self.max_age
        while self._kept and next(iter(self._kept.values())).at < limit:
            self._drop_oldest()

    def put(self, response_id: str, items: list[dict[str, Any]]) -> bool:
        """Keep ``items`` under ``response_id``; False if they alone exceed the byte limit."""
        size = len(json.dumps(items, separators=(",", ":")))
        if size > self.max_bytes:
            return False
        self._expire()
        if response_id in self._kept:
            self.bytes -= self._kept.pop(response_id).size
        while self._kept and (
            len(self._kept) >= self.max_count or self.bytes + size > self.max_bytes
        ):
            self._drop_oldest()
        self._kept[response_id] = _Kept(items, size, self.clock())
        self.bytes += size
        return True

    def get(self, response_id: str) -> list[dict[str, Any]] | None:
        self._expire()
        kept = self._kept.get(response_id)
        return None if kept is None else list(kept.items)

    def expand(self, raw: bytes) -> tuple[bytes, list[dict[str, Any]] | None]:
        """A Responses body with its ``previous_response_id`` conversation put before its
        input, and the whole input as items (None when the body should not be kept).

        A body that is no JSON object comes back as it is (validation says what is wrong);
        a ``previous_response_id`` not kept here is ApiError 400.
        """
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            return raw, None
        if not isinstance(body, dict):
            return raw, None
        items = input_items(body.get("input"))
        previous = body.get("previous_response_id")
        if isinstance(previous, str) and items is not None:
            kept = self.get(previous)
            if kept is None:
                raise ApiError(
                    400,
                    f"previous_response_id {previous[:80]!r} is not kept by this node: a node "
                    f"keeps the responses its API answered, the last {self.max_count} for "
                    f"{self.max_age / 60:.0f} minutes, unless sent with store false; send the "
                    "whole conversation as input instead",
                    param="previous_response_id",
                    code="previous_response_not_found",
                )
            items = kept + items
            raw = json.dumps({**body, "input": items}, separators=(",", ":")).encode()
        if body.get("store") is False:
            return raw, None
        return raw, items

    def keep(self, items: list[dict[str, Any]], response: dict[str, Any]) -> bool:
        """Keep a finished response's conversation: ``items`` (its input) and its output."""
        response_id, output = response.get("id"), response.get("output")
        if not isinstance(response_id, str) or not isinstance(output, list):
            return False
        return self.put(response_id, items + output)


def input_items(value: Any) -> list[dict[str, Any]] | None:
    """A Responses ``input`` as a list of items; None when it is neither form."""
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if isinstance(value, list) and all(isinstance(item, dict) for item in value):
        return list(value)
    return None


class ResponseCapture:
    """Finds the response object in an answer as it streams past: the body of a plain
    answer, or the ``response`` of a stream's ``response.completed`` (or ``incomplete``)
    event. Reads at most ``limit`` bytes; gives up beyond them."""

    def __init__(self, streamed: bool, limit: int = MAX_CAPTURE) -> None:
        self.streamed = streamed
        self.limit = limit
        self._buffer = bytearray()
        self._size = 0
        self.response: dict[str, Any] | None = None
        self.overflowed = False

    def feed(self, chunk: bytes) -> None:
        if self.overflowed or self.response is not None:
            return
        self._size += len(chunk)
        if self._size > self.limit:
            self.overflowed = True
            self._buffer.clear()
            return
        self._buffer += chunk
        if self.streamed:
            self._scan()

    def _scan(self) -> None:
        while (end := self._buffer.find(b"\n\n")) != -1:
            event = bytes(self._buffer[:end])
            del self._buffer[: end + 2]
            for line in event.split(b"\n"):
                if not line.startswith(b"data:"):
                    continue
                try:
                    data = json.loads(line[5:])
                except ValueError:
                    continue
                if isinstance(data, dict) and data.get("type") in (
                    "response.completed",
                    "response.incomplete",
                ):
                    response = data.get("response")
                    if isinstance(response, dict):
                        self.response = response
                        self._buffer.clear()
                        return

    def result(self) -> dict[str, Any] | None:
        """The response object, once the answer is complete."""
        if self.response is None and not self.streamed and not self.overflowed:
            try:
                body = json.loads(bytes(self._buffer))
            except ValueError:
                return None
            if isinstance(body, dict) and body.get("object") == "response":
                self.response = body
        return self.response
