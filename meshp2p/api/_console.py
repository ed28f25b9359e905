"""The management API of a node (`--console-port`, default 3131): JSON status."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

from ._asgi import Receive, Scope, Send, lifespan, send_error, send_json
from ._openai import ApiError

_PROVIDERS = "/api/providers/"


class Console:
    """ASGI app: ``GET /api/status`` and ``GET /api/providers/<model id>``.

    Later issues add events, discovery and join.
    """

    def __init__(
        self,
        status: Callable[[], dict[str, Any]],
        providers: Callable[[str], Awaitable[dict[str, Any]]] | None = None,
    ) -> None:
        self.status = status
        self.providers = providers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path = scope["path"].rstrip("/")
        try:
            if path == "/api/status":
                _only_get(scope)
                await send_json(send, 200, self.status())
            elif path.startswith(_PROVIDERS) and self.providers is not None:
                _only_get(scope)
                model = unquote(path[len(_PROVIDERS) :])
                await send_json(send, 200, await self.providers(model))
            else:
                raise ApiError(404, f"no such endpoint: {path or '/'}", code="not_found")
        except ApiError as err:
            await send_error(send, err)


def _only_get(scope: Scope) -> None:
    if scope["method"] != "GET":
        raise ApiError(405, "use GET", code="method_not_allowed", headers={"allow": "GET"})
