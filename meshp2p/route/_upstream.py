"""Where a validated API request is answered: a local worker or a remote host.

An upstream opens a request and yields a response whose status and headers are
known, then streams its body. Failing *before* that point raises
``HostUnavailable``, which is safe to retry on another host; failing after it
raises ``UpstreamBroken`` while the body streams, which is not.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

import httpx
import trio

from ..api._openai import InferenceRequest
from ..api._resume import PROGRESS_HEADER, RESUMED_HEADER

log = logging.getLogger("meshp2p.upstream")

RELAYED_HEADERS = frozenset(
    {
        "content-type",
        "retry-after",
        "cache-control",
        "x-accel-buffering",
        PROGRESS_HEADER,
        RESUMED_HEADER,
    }
)


class HostUnavailable(Exception):
    """The host could not take the request; another host may."""

    def __init__(self, message: str, code: str = "host_unavailable") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class UpstreamBroken(Exception):
    """The host failed after it started answering."""


@dataclass
class UpstreamResponse:
    status: int
    headers: list[tuple[str, str]]
    body: AsyncIterator[bytes]
    node_id: str
    extra: dict[str, str] = field(default_factory=dict)


class Upstream(Protocol):
    node_id: str

    def open(self, request: InferenceRequest) -> AbstractAsyncContextManager[UpstreamResponse]:
        """Send ``request``; the response is ready (status known) inside the context."""
        ...


class WorkerLike(Protocol):
    in_flight: int
    resumed: int

    @property
    def base_url(self) -> str | None: ...

    def unavailable_reason(self) -> str: ...


class LocalUpstream:
    """A model served by an inference worker of this node, over loopback HTTP."""

    def __init__(
        self,
        worker: WorkerLike,
        client: httpx.AsyncClient,
        node_id: str,
        *,
        retry_on_busy: bool = True,
    ) -> None:
        self.worker = worker
        self.client = client
        self.node_id = node_id
        # With other hosts to try, a full queue here is a reason to try them.
        self.retry_on_busy = retry_on_busy

    @asynccontextmanager
    async def open(self, request: InferenceRequest) -> AsyncIterator[UpstreamResponse]:
        base_url = self.worker.base_url
        if base_url is None:
            raise HostUnavailable(self.worker.unavailable_reason(), "model_unavailable")
        self.worker.in_flight += 1
        if request.resume is not None:
            self.worker.resumed += 1
        try:
            async with self._open(request, base_url) as response:
                yield response
        finally:
            self.worker.in_flight -= 1

    @asynccontextmanager
    async def _open(
        self, request: InferenceRequest, base_url: str
    ) -> AsyncIterator[UpstreamResponse]:
        try:
            context = self.client.stream(
                "POST",
                base_url + "/generate",
                content=request.to_worker_json(),
                headers={"content-type": "application/json"},
            )
            response = await context.__aenter__()
        except httpx.HTTPError as exc:
            raise HostUnavailable(
                f"the worker serving {request.model!r} failed before answering ({exc!r})",
                "worker_failed",
            ) from None
        try:
            if response.status_code == 503 and self.retry_on_busy:
                body = await response.aread()
                raise HostUnavailable(_error_message(body), "busy")
            headers = [
                (k.lower(), v) for k, v in response.headers.items() if k.lower() in RELAYED_HEADERS
            ]
            yield UpstreamResponse(
                response.status_code, headers, _httpx_body(response, request.model), self.node_id
            )
        finally:
            with trio.CancelScope(shield=True):
                await context.__aexit__(None, None, None)


async def _httpx_body(response: httpx.Response, model: str) -> AsyncIterator[bytes]:
    try:
        async for chunk in response.aiter_raw():
            yield chunk
    except httpx.HTTPError as exc:
        log.warning("worker serving %s failed mid-answer: %r", model, exc)
        raise UpstreamBroken(f"the worker serving {model!r} failed mid-answer") from None


def _error_message(body: bytes) -> str:
    try:
        message = json.loads(body)["error"]["message"]
        return str(message)
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", "replace")[:200] or "busy"


#: Builds the upstream for a remote node id (given by the node, which owns the mesh).
RemoteFactory = Callable[[str], Upstream]
