"""The OpenAI-compatible API of a node: an ASGI app that validates requests and relays them.

It answers ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions`` and
``/health``. Requests are validated here (``_openai``) and then relayed to the
inference worker that serves the requested model; streamed answers are passed
on chunk by chunk, and a client that goes away cancels the generation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import httpx
import trio

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
_RELAYED_HEADERS = frozenset({"content-type", "retry-after", "cache-control", "x-accel-buffering"})


class Backend(Protocol):
    """Something that serves one model over HTTP: today a local worker."""

    @property
    def model_id(self) -> str: ...

    @property
    def base_url(self) -> str | None: ...

    @property
    def info(self) -> dict[str, Any]: ...

    def unavailable_reason(self) -> str: ...

    def status(self) -> dict[str, Any]: ...


class ModelDirectory(Protocol):
    """Where the gateway looks up who serves a model."""

    def backends(self) -> Sequence[Backend]: ...


def find_backend(directory: ModelDirectory, model: str) -> Backend:
    """The backend of ``model``, matched exactly or, failing that, ignoring case."""
    backends = directory.backends()
    for backend in backends:
        if backend.model_id == model:
            return backend
    folded = [b for b in backends if b.model_id.lower() == model.lower()]
    if len(folded) == 1:
        return folded[0]
    raise model_not_found(model, sorted(b.model_id for b in backends))


class Gateway:
    """ASGI app serving the OpenAI API for the models in ``directory``."""

    def __init__(
        self,
        directory: ModelDirectory,
        *,
        node_id: str,
        max_body: int = DEFAULT_MAX_BODY,
        read_timeout: float = 360.0,
    ) -> None:
        self.directory = directory
        self.node_id = node_id
        self.max_body = max_body
        self.started = int(time.time())
        # trust_env=False: a proxy from the environment must never see local traffic.
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=5.0, read=read_timeout, write=30.0, pool=30.0),
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=64),
            trust_env=False,
        )
        self._routes: dict[str, dict[str, Callable[..., Any]]] = {
            "/v1/models": {"GET": self._models},
            "/v1/chat/completions": {"POST": self._chat},
            "/v1/completions": {"POST": self._completion},
            "/health": {"GET": self._health},
        }

    async def aclose(self) -> None:
        await self.client.aclose()

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

    def _model_object(self, backend: Backend) -> dict[str, Any]:
        return {
            "id": backend.model_id,
            "object": "model",
            "created": self.started,
            "owned_by": "meshp2p",
            "meshp2p": {
                "state": backend.status().get("state"),
                "nodes": [self.node_id],
            },
        }

    async def _models(self, scope: Scope, receive: Receive, send: Send) -> None:
        data = [self._model_object(b) for b in self.directory.backends()]
        await send_json(send, 200, {"object": "list", "data": data})

    async def _model(self, model: str, send: Send) -> None:
        await send_json(send, 200, self._model_object(find_backend(self.directory, model)))

    async def _health(self, scope: Scope, receive: Receive, send: Send) -> None:
        models = {b.model_id: b.status().get("state") for b in self.directory.backends()}
        await send_json(send, 200, {"status": "ok", "node_id": self.node_id, "models": models})

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._inference("chat", scope, receive, send)

    async def _completion(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._inference("completion", scope, receive, send)

    async def _inference(
        self, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send
    ) -> None:
        raw = await read_body(scope, receive, self.max_body)

        def tools_supported(model: str) -> bool:
            return bool(find_backend(self.directory, model).info.get("tools_supported"))

        request = parse_request(endpoint, raw, tools_supported=tools_supported)
        backend = find_backend(self.directory, request.model)
        base_url = backend.base_url
        if base_url is None:
            raise ApiError(
                503,
                backend.unavailable_reason(),
                type="server_error",
                code="model_unavailable",
                headers={"retry-after": "5"},
            )
        if request.model != backend.model_id:
            request = InferenceRequest(
                request.endpoint,
                backend.model_id,
                request.stream,
                request.include_usage,
                request.params,
                request.ignored,
            )
        await self._relay(request, base_url, receive, send)

    # -- relay to a worker -------------------------------------------------

    async def _relay(
        self, request: InferenceRequest, base_url: str, receive: Receive, send: Send
    ) -> None:
        extra: list[tuple[bytes, bytes]] = []
        if request.ignored:
            extra.append((b"x-meshp2p-ignored-fields", ",".join(request.ignored).encode()))
        error: ApiError | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_disconnect, receive, nursery.cancel_scope.cancel)
            try:
                await self._forward(request, base_url, extra, send)
            except ApiError as err:
                error = err  # raised outside the nursery, not as an ExceptionGroup
            nursery.cancel_scope.cancel()
        if error is not None:
            raise error

    async def _forward(
        self, request: InferenceRequest, base_url: str, extra: list[tuple[bytes, bytes]], send: Send
    ) -> None:
        started = False
        try:
            async with self.client.stream(
                "POST",
                base_url + "/generate",
                content=request.to_worker_json(),
                headers={"content-type": "application/json"},
            ) as response:
                headers = [
                    (k.lower().encode(), v.encode())
                    for k, v in response.headers.items()
                    if k.lower() in _RELAYED_HEADERS
                ]
                await send(
                    {
                        "type": "http.response.start",
                        "status": response.status_code,
                        "headers": headers + extra,
                    }
                )
                started = True
                async for chunk in response.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except httpx.HTTPError as exc:
            log.warning("relay of %s failed: %r", request.model, exc)
            if not started:
                raise ApiError(
                    503,
                    f"the worker serving {request.model!r} failed before answering ({exc!r}); "
                    "retry shortly",
                    type="server_error",
                    code="worker_failed",
                    headers={"retry-after": "5"},
                ) from None
            message = f"the worker serving {request.model!r} failed mid-answer"
            if request.stream:
                event = sse(error_body(message, type="server_error", code="worker_failed"))
                await send({"type": "http.response.body", "body": event, "more_body": False})
            else:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
