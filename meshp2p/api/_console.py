"""The management console of a node (``--console-port``, default 3131): the web page,
its JSON API and event stream, joining another mesh, and the node's ``/v1`` API under
the page's own origin for its chat."""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

import trio

from .._errors import JoinRefusedError, MeshError
from ..mesh._invite import InviteError
from ._asgi import ClientGone, Receive, Scope, Send, lifespan, read_body, send_error, send_json
from ._events import SNAPSHOT_INTERVAL, StatusEvents
from ._openai import ApiError
from ._origin import parse_ip, request_refusal
from ._static import PAGES, load_page, send_static

log = logging.getLogger("meshp2p.console")

_PROVIDERS = "/api/providers/"
#: An invite token is at most 8 KiB; the rest of a join body is a few bytes.
_MAX_JOIN_BODY = 16 * 1024

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Status = Callable[[], dict[str, Any] | Awaitable[dict[str, Any]]]


class Console:
    """ASGI app of the console.

    - ``GET /``: the web page (``meshp2p/api/console/``), which uses the rest;
    - ``GET /api/status``, ``GET /api/providers/<model id>``: JSON;
    - ``GET /api/events``: the status as server-sent events (``_events``);
    - ``POST /api/join {"token"}``: leave this mesh for the invite's (``join``);
    - ``/v1/*``: the node's OpenAI API (``api``, called in-process, so its own checks,
      API keys included, apply), for the page's chat without cross-origin requests.

    Every request must be addressed to the console itself, and carry no Origin but its
    own (``_origin``): anything else gets 403, DNS-rebinding pages included. ``status``
    may be a plain or an async function.
    """

    def __init__(
        self,
        status: Status,
        providers: Callable[[str], Awaitable[dict[str, Any]]] | None = None,
        *,
        changed: Callable[[], Awaitable[None]] | None = None,
        join: Callable[[str], Awaitable[dict[str, Any]]] | None = None,
        api: ASGIApp | None = None,
        api_local_only: bool = True,
        events_interval: float = SNAPSHOT_INTERVAL,
    ) -> None:
        self.status = status
        self.providers = providers
        self.join = join
        self.api = api
        #: The API listens on loopback only: the console must not open it to others.
        self.api_local_only = api_local_only
        self.events = StatusEvents(
            self._snapshot, changed or trio.sleep_forever, interval=events_interval
        )
        self.page = load_page()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path = scope["path"]
        try:
            refusal = request_refusal(scope.get("headers", []), scope.get("server"))
            if refusal is not None:
                log.info("refused %s %s: %s", scope["method"], path, refusal)
                raise ApiError(403, refusal, type="forbidden", code="forbidden")
            if path == "/v1" or path.startswith("/v1/"):
                await self._api(scope, receive, send)
            elif path in PAGES:
                _only_get(scope, head=True)
                await send_static(
                    send,
                    self.page[path],
                    _header(scope, b"if-none-match"),
                    head=scope["method"] == "HEAD",
                )
            else:
                await self._management(path.rstrip("/"), scope, receive, send)
        except ApiError as err:
            await send_error(send, err)
        except ClientGone:
            pass

    async def _management(self, path: str, scope: Scope, receive: Receive, send: Send) -> None:
        if path == "/api/status":
            _only_get(scope)
            await send_json(send, 200, await self._snapshot(), [("cache-control", "no-store")])
        elif path == "/api/events":
            _only_get(scope)
            await self.events.stream(receive, send)
        elif path == "/api/join" and self.join is not None:
            if scope["method"] != "POST":
                raise ApiError(
                    405, "use POST", code="method_not_allowed", headers={"allow": "POST"}
                )
            token = _join_token(scope, await read_body(scope, receive, _MAX_JOIN_BODY))
            await send_json(send, 200, await self._join(token))
        elif path.startswith(_PROVIDERS) and self.providers is not None:
            _only_get(scope)
            model = unquote(path[len(_PROVIDERS) :])
            await send_json(send, 200, await self.providers(model))
        else:
            raise ApiError(404, f"no such endpoint: {path or '/'}", code="not_found")

    async def _snapshot(self) -> dict[str, Any]:
        status = self.status()
        if inspect.isawaitable(status):
            return await status
        return status

    async def _join(self, token: str) -> dict[str, Any]:
        assert self.join is not None
        try:
            return await self.join(token)
        except InviteError as exc:
            raise ApiError(400, str(exc), param="token", code="invalid_token") from None
        except JoinRefusedError as exc:
            raise ApiError(409, str(exc), code=exc.code) from None
        except MeshError as exc:
            raise ApiError(503, str(exc), type="server_error", code="unavailable") from None

    async def _api(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The node's OpenAI API, in-process: the page's chat stays on its own origin."""
        if self.api is None:
            raise ApiError(404, "this console serves no /v1 API", code="not_found")
        client = scope.get("client")
        if self.api_local_only and client is not None and not _loopback(client[0]):
            raise ApiError(
                403,
                "this node's API listens on its own machine only (--host); "
                "the console does not open it to others",
                type="forbidden",
                code="forbidden",
            )
        await self.api(scope, receive, send)


def _join_token(scope: Scope, body: bytes) -> str:
    """The invite token of a join request: a JSON object ``{"token": "mp1...."}``."""
    content_type = (_header(scope, b"content-type") or b"").split(b";")[0].strip().lower()
    if content_type != b"application/json":
        # Also what makes a cross-origin browser request need a preflight.
        raise ApiError(415, "send the join as JSON (Content-Type: application/json)")
    try:
        request = json.loads(body)
    except ValueError:
        raise ApiError(400, "the join body is not JSON") from None
    token = request.get("token") if isinstance(request, dict) else None
    if not isinstance(token, str) or not token.strip():
        raise ApiError(400, 'send {"token": "<invite token>"}', param="token")
    return token.strip()


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return bytes(value)
    return None


def _loopback(host: str) -> bool:
    address = parse_ip(host)
    return address is not None and address.is_loopback


def _only_get(scope: Scope, *, head: bool = False) -> None:
    allowed = ("GET", "HEAD") if head else ("GET",)
    if scope["method"] not in allowed:
        allow = ", ".join(allowed)
        raise ApiError(405, f"use {allow}", code="method_not_allowed", headers={"allow": allow})
