"""The OpenAI-compatible API of a node: an ASGI app that validates requests and relays them.

It answers ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions`` and
``/health`` for every model the mesh serves. Requests are validated here
(``_openai``), then the router picks the host: this node's own worker or a
remote node over ``/mesh/route``. A host that fails before its first byte is
replaced by the next; streamed answers are passed on chunk by chunk, and a
client that goes away cancels the generation wherever it runs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from typing import Any

import trio

from ..route._router import RequestRouter
from ..route._routing import affinity_key
from ..route._upstream import HostUnavailable, UpstreamBroken, UpstreamResponse
from ._asgi import (
    ClientGone,
    Receive,
    Scope,
    Send,
    lifespan,
    read_body,
    send_error,
    send_json,
    watch_disconnect,
)
from ._openai import (
    ApiError,
    Endpoint,
    InferenceRequest,
    error_body,
    model_not_found,
    parse_request,
    sse,
)

log = logging.getLogger("meshp2p.gateway")

DEFAULT_MAX_BODY = 8 * 1024 * 1024


class Gateway:
    """ASGI app serving the OpenAI API for the models the router knows."""

    def __init__(
        self,
        router: RequestRouter,
        *,
        node_id: str,
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        self.router = router
        self.node_id = node_id
        self.max_body = max_body
        self._routes: dict[str, dict[str, Callable[..., Any]]] = {
            "/v1/models": {"GET": self._models},
            "/v1/chat/completions": {"POST": self._chat},
            "/v1/completions": {"POST": self._completion},
            "/health": {"GET": self._health},
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"].rstrip("/") or "/"
        method: str = scope["method"]
        try:
            if path.startswith("/v1/models/"):
                await self._model(path[len("/v1/models/") :], send)
                return
            handlers = self._routes.get(path)
            if handlers is None:
                raise ApiError(404, f"no such endpoint: {method} {path}", code="not_found")
            handler = handlers.get(method)
            if handler is None:
                allowed = ", ".join(handlers)
                raise ApiError(
                    405,
                    f"{method} is not allowed on {path}; use {allowed}",
                    code="method_not_allowed",
                    headers={"allow": allowed},
                )
            await handler(scope, receive, send)
        except ApiError as err:
            await send_error(send, err)
        except ClientGone:
            pass

    # -- endpoints ---------------------------------------------------------

    def _model_object(self, model: str, entry: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": model,
            "object": "model",
            # Every node must list a model alike, and no time is common to them all
            # (each loaded its own copy whenever it started): 0, "unknown".
            "created": 0,
            "owned_by": "meshp2p",
            "meshp2p": {"state": entry["state"], "nodes": entry["nodes"]},
        }

    async def _models(self, scope: Scope, receive: Receive, send: Send) -> None:
        models = self.router.models()
        data = [self._model_object(m, models[m]) for m in sorted(models)]
        await send_json(send, 200, {"object": "list", "data": data})

    async def _model(self, model: str, send: Send) -> None:
        models = self.router.models()
        if model not in models:
            raise model_not_found(model, sorted(models))
        await send_json(send, 200, self._model_object(model, models[model]))

    async def _health(self, scope: Scope, receive: Receive, send: Send) -> None:
        models = {m: e["state"] for m, e in self.router.models().items()}
        await send_json(send, 200, {"status": "ok", "node_id": self.node_id, "models": models})

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._inference("chat", scope, receive, send)

    async def _completion(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._inference("completion", scope, receive, send)

    async def _inference(
        self, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send
    ) -> None:
        raw = await read_body(scope, receive, self.max_body)
        request = parse_request(endpoint, raw, tools_supported=self.router.tools_supported)
        model, upstreams = self.router.plan(request.model, affinity_key(endpoint, request.params))
        if model != request.model:
            # The name resolved to another id: a node we forward to must see that id.
            body = json.dumps({**json.loads(raw), "model": model}).encode()
            request = dataclasses.replace(request, model=model, body=body)
        error: ApiError | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_disconnect, receive, nursery.cancel_scope.cancel)
            try:
                await self._answer(request, upstreams, send)
            except ApiError as err:
                error = err  # raised outside the nursery, not as an ExceptionGroup
            nursery.cancel_scope.cancel()
        if error is not None:
            raise error

    async def _answer(self, request: InferenceRequest, upstreams: list[Any], send: Send) -> None:
        """Try the hosts in order until one answers; relay its answer."""
        failures: list[str] = []
        for upstream in upstreams:
            with self.router.track(upstream.node_id):
                try:
                    async with upstream.open(request) as response:
                        if await self._relay(request, response, send):
                            self.router.host_ok(upstream.node_id)
                        else:
                            self.router.host_failed(upstream.node_id)
                        return
                except HostUnavailable as exc:
                    log.info(
                        "host %s could not take %s: %s",
                        upstream.node_id,
                        request.model,
                        exc.message,
                    )
                    if exc.code != "busy":
                        self.router.host_failed(upstream.node_id)
                    failures.append(exc.message)
        raise ApiError(
            503,
            f"no host could answer for {request.model!r}: " + "; ".join(failures),
            type="server_error",
            code="model_unavailable",
            headers={"retry-after": "5"},
        )

    async def _relay(
        self, request: InferenceRequest, response: UpstreamResponse, send: Send
    ) -> bool:
        """Pass the answer on; False if the host broke off mid-answer."""
        headers = [(k.encode(), v.encode()) for k, v in response.headers]
        headers.append((b"x-meshp2p-node", response.node_id.encode()))
        if request.ignored:
            headers.append((b"x-meshp2p-ignored-fields", ",".join(request.ignored).encode()))
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        try:
            async for chunk in response.body:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except UpstreamBroken as exc:
            tail = b""
            if request.stream:
                tail = sse(error_body(str(exc), type="server_error", code="host_failed"))
            await send({"type": "http.response.body", "body": tail, "more_body": False})
            return False
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return True
