"""The management API of a node (`--console-port`, default 3131): JSON status."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._asgi import Receive, Scope, Send, lifespan, send_error, send_json
from ._openai import ApiError


class Console:
    """ASGI app: ``GET /api/status``. Later issues add events, discovery and join."""

    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self.status = status

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path = scope["path"].rstrip("/")
        try:
            if path != "/api/status":
                raise ApiError(404, f"no such endpoint: {path or '/'}", code="not_found")
            if scope["method"] != "GET":
                raise ApiError(405, "use GET", code="method_not_allowed", headers={"allow": "GET"})
            await send_json(send, 200, self.status())
        except ApiError as err:
            await send_error(send, err)
