"""The OpenAI-compatible API of a node: an ASGI app that validates requests and relays them.

It answers ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions``,
``/v1/responses`` (OpenAI Responses), ``/v1/messages`` and ``/v1/messages/count_tokens``
(Anthropic Messages, with Anthropic's error shape), ``/v1/embeddings`` and ``/health``
for every model the mesh serves. With API keys set, every ``/v1`` request must carry one
(401 otherwise). Requests are validated here (``_openai`` and its siblings), then the
router picks the host: this node's own worker or a remote node over ``/mesh/route``. A
host that fails before its first byte is replaced by the next; streamed answers are
passed on chunk by chunk, and a client that goes away cancels the generation wherever
it runs. Responses answered here are kept for ``previous_response_id``
(``_response_store``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import trio

from ..route._router import RequestRouter
from ..route._routing import affinity_key
from ..route._upstream import HostUnavailable, UpstreamBroken, UpstreamResponse
from ._anthropic import anthropic_error_body
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
from ._keys import ApiKeys
from ._openai import (
    CHAT_LIKE,
    ApiError,
    Endpoint,
    ErrorStyle,
    InferenceRequest,
    error_body,
    model_not_found,
    parse_request,
    sse,
)
from ._response_store import ResponseCapture, ResponseStore
from ._resume import PROGRESS_HEADER, RESUMED_HEADER, ProgressError, ProgressReader, Resume
from ._shapes import sse_event

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
        api_keys: Iterable[str] = (),
        responses: ResponseStore | None = None,
    ) -> None:
        self.router = router
        self.node_id = node_id
        self.max_body = max_body
        #: With keys, every /v1 request must carry one (Bearer or x-api-key).
        self.keys = ApiKeys(api_keys)
        #: Conversations kept for previous_response_id.
        self.responses = responses if responses is not None else ResponseStore(clock=time.monotonic)
        self._routes: dict[str, dict[str, Callable[..., Any]]] = {
            "/v1/models": {"GET": self._models},
            "/v1/chat/completions": {"POST": self._endpoint("chat")},
            "/v1/completions": {"POST": self._endpoint("completion")},
            "/v1/responses": {"POST": self._endpoint("responses")},
            "/v1/messages": {"POST": self._endpoint("messages")},
            "/v1/messages/count_tokens": {"POST": self._endpoint("count_tokens")},
            "/v1/embeddings": {"POST": self._endpoint("embeddings")},
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
        # Anthropic's clients read errors in Anthropic's shape.
        style: ErrorStyle = "anthropic" if path.startswith("/v1/messages") else "openai"
        try:
            if (path == "/v1" or path.startswith("/v1/")) and not self.keys.allows(
                scope.get("headers", [])
            ):
                raise ApiError(
                    401,
                    "this node's API needs an API key: send 'Authorization: Bearer KEY' or "
                    "'x-api-key: KEY' with a key the node was started with (--api-key)",
                    code="invalid_api_key",
                    headers={"www-authenticate": 'Bearer realm="meshp2p"'},
                )
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
            await send_error(send, err, style)
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

    def _endpoint(self, endpoint: Endpoint) -> Callable[[Scope, Receive, Send], Any]:
        async def handle(scope: Scope, receive: Receive, send: Send) -> None:
            await self._inference(endpoint, scope, receive, send)

        return handle

    async def _inference(
        self, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send
    ) -> None:
        raw = await read_body(scope, receive, self.max_body)
        conversation: list[dict[str, Any]] | None = None
        if endpoint == "responses":
            # previous_response_id names a conversation kept here: it travels in full.
            raw, conversation = self.responses.expand(raw)
        request = parse_request(endpoint, raw)
        affinity = affinity_key("chat" if endpoint in CHAT_LIKE else endpoint, request.params)
        model, upstreams = self.router.plan(request.model, affinity)
        if model != request.model:
            # The name resolved to another id: a node we forward to must see that id.
            body = json.dumps({**json.loads(raw), "model": model}).encode()
            request = dataclasses.replace(request, model=model, body=body)
        capture = ResponseCapture(request.stream) if conversation is not None else None
        error: ApiError | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_disconnect, receive, nursery.cancel_scope.cancel)
            try:
                await self._answer(request, upstreams, send, capture, affinity)
            except ApiError as err:
                error = err  # raised outside the nursery, not as an ExceptionGroup
            nursery.cancel_scope.cancel()
        if error is not None:
            raise error
        answered = capture.result() if capture is not None else None
        if conversation is not None and answered is not None:
            self.responses.keep(conversation, answered)

    async def _answer(
        self,
        request: InferenceRequest,
        upstreams: list[Any],
        send: Send,
        capture: ResponseCapture | None = None,
        affinity: bytes | None = None,
    ) -> None:
        """Try the hosts in order until one answers; relay its answer. A chat or
        completion answer whose host breaks off goes on on another host
        (``_resume``)."""
        resumable = request.endpoint in RESUMABLE
        if resumable:
            request = dataclasses.replace(request, progress=True)
        relay = _Relay(
            request, send, capture, ProgressReader(request.stream) if resumable else None
        )
        failures: list[str] = []
        tried: set[str] = set()
        queue = list(upstreams)
        with self.router.answering(request.model):
            while queue:
                upstream = queue.pop(0)
                tried.add(upstream.node_id)
                resume = relay.resume()
                attempt = dataclasses.replace(request, resume=resume) if resume else request
                with self.router.track(upstream.node_id):
                    try:
                        async with upstream.open(attempt) as response:
                            finished = await relay.run(response)
                    except HostUnavailable as exc:
                        log.info(
                            "host %s could not take %s: %s",
                            upstream.node_id,
                            request.model,
                            exc.message,
                        )
                        # A busy host, or an older one without this endpoint, is fine otherwise.
                        if exc.code not in ("busy", "unsupported"):
                            self.router.host_failed(upstream.node_id)
                        failures.append(exc.message)
                        continue
                if finished:
                    self.router.host_ok(upstream.node_id)
                    return
                self.router.host_failed(upstream.node_id)
                failures.append(relay.broken or f"node {upstream.node_id} broke off")
                if not relay.resumable:
                    await relay.fail()
                    return
                log.info(
                    "host %s broke off an answer of %s after %d tokens; resuming elsewhere",
                    upstream.node_id,
                    request.model,
                    len(relay.reader.tokens) if relay.reader else 0,
                )
                queue = queue or self._others(request.model, affinity, tried)
                if queue and relay.resume() is not None:
                    self.router.resumed[request.model] += 1
        if relay.started:
            await relay.fail()  # no other host left: the error event, as without failover
            return
        raise ApiError(
            503,
            f"no host could answer for {request.model!r}: " + "; ".join(failures),
            type="server_error",
            code="model_unavailable",
            headers={"retry-after": "5"},
        )

    def _others(self, model: str, affinity: bytes | None, tried: set[str]) -> list[Any]:
        """The hosts of ``model`` not tried yet for this request, in the router's order."""
        try:
            _, upstreams = self.router.plan(model, affinity)
        except ApiError:
            return []
        return [u for u in upstreams if u.node_id not in tried]


RESUMABLE = frozenset({"chat", "completion"})
"""Endpoints whose answers go on on another host when theirs breaks off."""


class _Relay:
    """Passes one request's answer to the client, across the hosts that give it.

    With a ``ProgressReader`` the host's progress comments are read and left out, a
    token's events go on once its step arrives, and a host that breaks off can be
    followed by another that resumes from the tokens given so far.
    """

    def __init__(
        self,
        request: InferenceRequest,
        send: Send,
        capture: ResponseCapture | None,
        reader: ProgressReader | None,
    ) -> None:
        self.request = request
        self.send = send
        self.capture = capture
        self.reader = reader
        #: The client has the answer's status and headers.
        self.started = False
        #: Why the last host broke off, if it did.
        self.broken: str | None = None
        #: Whether another host may go on with the answer.
        self.resumable = False

    def resume(self) -> Resume | None:
        return self.reader.resume() if self.reader is not None else None

    async def run(self, response: UpstreamResponse) -> bool:
        """Relay ``response``; False if the host broke off (``broken`` says why)."""
        self.broken = None
        self.resumable = False
        headers = dict(response.headers)
        progress = self.reader is not None and headers.get(PROGRESS_HEADER) == "1"
        resume = self.resume()
        if resume is not None:
            if not progress or headers.get(RESUMED_HEADER) != str(len(resume.tokens)):
                self.broken = f"node {response.node_id} did not resume the answer"
                return False
        elif self.started and self.reader is not None and not progress:
            # Nothing was final yet, so the answer may start again, but with progress.
            self.broken = f"node {response.node_id} cannot resume answers"
            return False
        if not progress:
            return await self._plain(response)
        assert self.reader is not None
        if self.request.stream and not self.started:
            await self._start(response, response.status, ())
        try:
            async for chunk in response.body:
                out = self.reader.feed(chunk)
                if out:
                    await self._body(out)
            out = self.reader.end()
        except (UpstreamBroken, ProgressError) as exc:
            self.reader.restart()
            self.broken = str(exc)
            self.resumable = True
            return False
        if self.request.stream:
            await self._body(out)
        else:
            if self.reader.answer is None:
                self.broken = f"node {response.node_id} ended without an answer"
                self.resumable = True
                return False
            status, body = self.reader.answer
            await self._start(response, status, [("content-type", "application/json")])
            await self._body(body)
        await self.send({"type": "http.response.body", "body": b"", "more_body": False})
        return True

    async def _plain(self, response: UpstreamResponse) -> bool:
        """An answer without progress: an error before the first token, or a host that
        does not report progress. Passed on as it comes."""
        if not self.started:
            await self._start(response, response.status, None)
        if self.capture is not None and response.status != 200:
            self.capture = None
        try:
            async for chunk in response.body:
                await self._body(chunk)
        except UpstreamBroken as exc:
            self.broken = str(exc)
            return False
        await self.send({"type": "http.response.body", "body": b"", "more_body": False})
        return True

    async def _start(
        self,
        response: UpstreamResponse,
        status: int,
        replace: Iterable[tuple[str, str]] | None,
    ) -> None:
        kept = [(k, v) for k, v in response.headers if k not in _PRIVATE_HEADERS]
        if replace is not None:
            names = {k for k, _ in replace}
            kept = [(k, v) for k, v in kept if k not in names and k != "content-type"]
            kept.extend(replace)
            if not self.request.stream:
                kept = [(k, v) for k, v in kept if k not in _STREAM_HEADERS]
        headers = [(k.encode(), v.encode()) for k, v in kept]
        headers.append((b"x-meshp2p-node", response.node_id.encode()))
        if self.request.ignored:
            headers.append((b"x-meshp2p-ignored-fields", ",".join(self.request.ignored).encode()))
        if replace is not None and self.request.stream:
            headers = [(k, v) for k, v in headers if k != b"content-type"]
            headers.append((b"content-type", b"text/event-stream"))
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        self.started = True
        if self.capture is not None and status != 200:
            self.capture = None

    async def _body(self, chunk: bytes) -> None:
        if self.capture is not None:
            self.capture.feed(chunk)
        await self.send({"type": "http.response.body", "body": chunk, "more_body": True})

    async def fail(self) -> None:
        """End the answer after its host broke off and none took over."""
        if not self.started:
            return
        message = self.broken or "the host broke off"
        tail = _broken_stream_event(self.request.endpoint, message) if self.request.stream else b""
        await self.send({"type": "http.response.body", "body": tail, "more_body": False})


_PRIVATE_HEADERS = frozenset({PROGRESS_HEADER, RESUMED_HEADER})
_STREAM_HEADERS = frozenset({"cache-control", "x-accel-buffering"})


def _broken_stream_event(endpoint: str, message: str) -> bytes:
    """The event that ends a stream whose host broke off, in the endpoint's own shape."""
    if endpoint == "messages":
        return sse_event("error", anthropic_error_body(500, message))
    if endpoint == "responses":
        # The host's sequence numbers are not known here; the error event ends the stream.
        event = {"type": "error", "code": "host_failed", "message": message, "param": None}
        return sse_event("error", {**event, "sequence_number": 0})
    return sse(error_body(message, type="server_error", code="host_failed"))
