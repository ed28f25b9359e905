"""Small ASGI building blocks shared by the node's HTTP apps: bodies, JSON, disconnects."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from ._openai import ApiError, ErrorStyle

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class ClientGone(Exception):
    """The client disconnected before its request was read; there is no one to answer."""


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body; ApiError 413 as soon as it passes ``limit`` bytes."""
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                raise ApiError(400, "invalid Content-Length header") from None
            if declared > limit:
                raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        body = message.get("body", b"")
        size += len(body)
        if size > limit:
            raise _too_large(limit)
        chunks.append(body)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"request body is larger than the limit of {limit} bytes",
        code="request_too_large",
    )


def _header_list(
    content_type: bytes, headers: Iterable[tuple[str, str]] = ()
) -> list[tuple[bytes, bytes]]:
    out = [(b"content-type", content_type)]
    out.extend((k.lower().encode(), v.encode()) for k, v in headers)
    return out


async def send_json(
    send: Send, status: int, obj: Any, headers: Iterable[tuple[str, str]] = ()
) -> None:
    body = json.dumps(obj, separators=(",", ":")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": _header_list(b"application/json", headers),
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, error: ApiError, style: ErrorStyle = "openai") -> None:
    headers = list(error.headers.items())
    await send_json(send, error.status, error.body(style), headers)


async def start_stream(
    send: Send, status: int = 200, headers: Iterable[tuple[str, str]] = ()
) -> None:
    """Open a server-sent-events response; proxies must not buffer it."""
    extra = [("cache-control", "no-cache"), ("x-accel-buffering", "no"), *headers]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": _header_list(b"text/event-stream", extra),
        }
    )


async def watch_disconnect(receive: Receive, on_disconnect: Callable[[], None]) -> None:
    """Call ``on_disconnect`` when the client goes away. Start after the body is read."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            on_disconnect()
            return


async def lifespan(receive: Receive, send: Send) -> None:
    """Answer ASGI lifespan events; our apps need no start-up or shut-down work."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def hypercorn_config(host: str, port: int, logger_name: str) -> Any:
    """A quiet hypercorn config bound to one address."""
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger(logger_name)
    config.graceful_timeout = 2.0
    config.keep_alive_timeout = 75.0
    # Headers plus a request line; bodies are bounded by read_body.
    config.h11_max_incomplete_size = 64 * 1024
    return config
