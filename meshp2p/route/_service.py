"""The ``/mesh/route/1.0.0`` driver: requests between nodes, and tables for passive clients.

- ``RouteServer`` answers other members' requests with this node's own workers
  (never forwarding further: one hop), and serves the routing table.
- ``RemoteUpstream`` sends one of our API requests to another node.
- ``RoutingTableClient`` keeps a passive client's table fresh by asking a host
  for it, with the version it holds, every interval: a host keeps no state per
  client between requests.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
import multiaddr
import trio
from libp2p.abc import INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from .._errors import ProtocolError
from ..api._openai import ApiError, Endpoint, InferenceRequest, error_style, parse_request
from ..inference._worker import InferenceWorker
from ..mesh._service import MeshService
from ..mesh._state import MeshView
from ..transport._host import transport_addrs
from ..transport._streams import close_quietly, read_message, read_some, reset_quietly
from ..transport._wire import FrameDecoder
from . import _protocol as _route
from ._upstream import HostUnavailable, LocalUpstream, UpstreamBroken, UpstreamResponse

log = logging.getLogger("meshp2p.route")

ROUTE = TProtocol(_route.PROTOCOL_ID)
_CONNECT_TIMEOUT = 5.0
_FRAME_TIMEOUT = 120.0  # between two frames of an answer (one token can be slow; not this slow)
# A live host answers a table request in milliseconds; a dead one would hold us up.
_TABLE_TIMEOUT = 3.0
_SOURCE_PENALTY = 30.0
_PING_INTERVAL = 1.0
_PING_FAILURES = 2
#: Hosts a passive client pings per interval, to notice a dead one before the mesh does.
_CHECKED_HOSTS = 8


class _HostSilent(Exception):
    """The host stopped answering pings while we waited for its answer."""


def table_from_view(view: MeshView) -> _route.RoutingTable:
    """The routing table a host hands to passive clients: every node serving a model.

    In-flight counts are left at 0: they would change the table's version (a digest
    of its content) with every request, and each client counts its own anyway.
    """
    return _route.make_table(
        _route.HostEntry(p.id, tuple(p.addrs), tuple(p.models_served), 0)
        for p in view
        if p.models_served
    )


class RouteServer:
    """Serves ``/mesh/route`` to members: our workers' answers, and routing tables."""

    def __init__(
        self,
        mesh: MeshService,
        workers: Callable[[], Sequence[InferenceWorker]],
        http: httpx.AsyncClient,
    ) -> None:
        self.mesh = mesh
        self.workers = workers
        self.http = http
        self.served = 0

    def register(self) -> None:
        self.mesh.host.set_stream_handler(ROUTE, self.mesh.members_only(self.handle))

    async def handle(self, stream: INetStream) -> None:
        peer = stream.muxed_conn.peer_id
        exchange = _route.RouteServerExchange()
        decoder = FrameDecoder(exchange.max_frame)
        try:
            with trio.fail_after(_CONNECT_TIMEOUT):
                raw = await read_message(stream, decoder, [])
            if raw is None:
                exchange.end_of_stream()
                return
            message = exchange.receive(raw)
        except (ProtocolError, trio.TooSlowError) as exc:
            log.warning("bad route request from %s: %s", peer, exc)
            await reset_quietly(stream)
            return
        except Exception as exc:  # stream errors
            log.info("route stream from %s failed: %r", peer, exc)
            return
        try:
            if isinstance(message, _route.TableRequest):
                table = table_from_view(self.mesh.view())
                await stream.write(exchange.send(_route.answer_table(table, message.since)))
            elif isinstance(message, _route.RouteRequest):
                await self._request(stream, exchange, message)
            else:
                await stream.write(exchange.send(message))  # the exchange's own refusal
        except Exception as exc:
            log.info("route answer to %s ended: %r", peer, exc)
            await reset_quietly(stream)
            return
        await close_quietly(stream)

    async def _request(
        self,
        stream: INetStream,
        exchange: _route.RouteServerExchange,
        request: _route.RouteRequest,
    ) -> None:
        async def send(message: _route.ServerMessage) -> None:
            await stream.write(exchange.send(message))

        # The body is the client's OpenAI JSON: validated here as a local request would be.
        try:
            model = json.loads(request.body).get("model")
        except (ValueError, AttributeError):
            model = None
        worker = next((w for w in self.workers() if w.model_id == model), None)
        if worker is None and isinstance(model, str):
            await send(_route.Unavailable("not_served", f"{model!r} is not served here"))
            return
        try:
            inference = parse_request(
                request.endpoint,  # type: ignore[arg-type]  # the exchange checked it
                request.body,
            )
        except ApiError as error:
            await send(_route.ResponseHead(error.status, {"content-type": "application/json"}))
            body = error.body(error_style(request.endpoint))
            for piece in _route.split_body(json.dumps(body).encode()):
                await send(piece)
            await send(_route.ResponseEnd())
            return
        assert worker is not None  # parse_request refuses a body without a model name
        inference = dataclasses.replace(inference, progress=request.progress, resume=request.resume)
        upstream = LocalUpstream(worker, self.http, self.mesh.node_id)
        async with trio.open_nursery() as nursery:
            # A reset from the requester (its client left) cancels the generation.
            nursery.start_soon(_watch_reset, stream, nursery.cancel_scope)
            try:
                async with upstream.open(inference) as response:
                    self.served += 1
                    await send(_route.ResponseHead(response.status, dict(response.headers)))
                    try:
                        async for chunk in response.body:
                            for piece in _route.split_body(chunk):
                                await send(piece)
                    except UpstreamBroken as exc:
                        await send(_route.RouteError("worker_failed", str(exc)[:1000]))
                    else:
                        await send(_route.ResponseEnd())
            except HostUnavailable as exc:
                code = "busy" if exc.code == "busy" else "worker_down"
                await send(_route.Unavailable(code, exc.message[:1000]))
            nursery.cancel_scope.cancel()


class RemoteUpstream:
    """One of our API requests answered by another node over ``/mesh/route``."""

    def __init__(
        self,
        mesh: MeshService,
        node_id: str,
        addrs: Callable[[str], Sequence[str]],
        first_byte_timeout: float,
    ) -> None:
        self.mesh = mesh
        self.node_id = node_id
        self.addrs = addrs
        self.first_byte_timeout = first_byte_timeout

    @asynccontextmanager
    async def open(self, request: InferenceRequest) -> AsyncIterator[UpstreamResponse]:
        peer = ID.from_base58(self.node_id)
        exchange = _route.RouteClientExchange(
            _route.RouteRequest(
                secrets.token_hex(8),
                request.endpoint,
                request.body,
                progress=request.progress,
                resume=request.resume,
            )
        )
        decoder = FrameDecoder(exchange.max_frame)
        pending: list[dict[str, Any]] = []
        stream: INetStream | None = None
        try:
            try:
                with trio.fail_after(_CONNECT_TIMEOUT):
                    addrs = transport_addrs(self.addrs(self.node_id))
                    if not await self.mesh.connect(peer, addrs):
                        raise HostUnavailable(f"node {self.node_id} is unreachable", "unreachable")
                    stream = await self.mesh.host.new_stream(peer, [ROUTE])
                    await stream.write(exchange.start())
                with trio.fail_after(self.first_byte_timeout):
                    head = await self._head(stream, exchange, decoder, pending)
            except HostUnavailable:
                raise
            except Exception as exc:  # stream errors, timeouts, protocol errors
                raise HostUnavailable(
                    f"node {self.node_id} failed before answering ({exc!r})", "host_failed"
                ) from None
            yield UpstreamResponse(
                head.status,
                list(head.headers.items()),
                self._body(stream, exchange, decoder, pending),
                self.node_id,
            )
        finally:
            if stream is not None:
                with trio.CancelScope(shield=True):
                    # An unfinished answer: reset, so the host stops generating.
                    done = exchange.state is _route.ClientState.DONE
                    await (close_quietly(stream) if done else reset_quietly(stream))

    async def _head(
        self,
        stream: INetStream,
        exchange: _route.RouteClientExchange,
        decoder: FrameDecoder,
        pending: list[dict[str, Any]],
    ) -> _route.ResponseHead:
        while True:
            raw = await self._next_while_alive(stream, decoder, pending)
            if raw is None:
                exchange.end_of_stream()
                raise HostUnavailable(f"node {self.node_id} closed the request", "closed")
            message = exchange.receive(raw)
            if isinstance(message, _route.Unavailable):
                raise HostUnavailable(f"node {self.node_id}: {message.message}", message.code)
            if isinstance(message, _route.ResponseHead):
                return message

    async def _body(
        self,
        stream: INetStream,
        exchange: _route.RouteClientExchange,
        decoder: FrameDecoder,
        pending: list[dict[str, Any]],
    ) -> AsyncIterator[bytes]:
        try:
            while True:
                with trio.fail_after(_FRAME_TIMEOUT):
                    raw = await self._next_while_alive(stream, decoder, pending)
                if raw is None:
                    exchange.end_of_stream()
                    raise UpstreamBroken(f"node {self.node_id} stopped mid-answer")
                message = exchange.receive(raw)
                if isinstance(message, _route.ResponseData):
                    yield message.data
                elif isinstance(message, _route.ResponseEnd):
                    return
                elif isinstance(message, _route.RouteError):
                    raise UpstreamBroken(f"node {self.node_id}: {message.message}")
        except UpstreamBroken:
            raise
        except Exception as exc:
            raise UpstreamBroken(f"node {self.node_id} failed mid-answer ({exc!r})") from None

    async def _next_while_alive(
        self, stream: INetStream, decoder: FrameDecoder, pending: list[dict[str, Any]]
    ) -> dict[str, Any] | None:
        """The next frame; _HostSilent if the host stops answering pings meanwhile.

        A killed host's QUIC connection gives no sign until its idle timeout; pings
        notice within a few seconds, so the client hears of it promptly.
        """
        if pending:
            return pending.pop(0)
        silent = False
        result: dict[str, Any] | None = None

        async def watchdog(scope: trio.CancelScope) -> None:
            nonlocal silent
            peer = ID.from_base58(self.node_id)
            failures = 0
            while failures < _PING_FAILURES:
                await trio.sleep(_PING_INTERVAL)
                failures = 0 if await self.mesh.ping(peer, _PING_INTERVAL) else failures + 1
            silent = True
            scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watchdog, nursery.cancel_scope)
            result = await read_message(stream, decoder, pending)
            nursery.cancel_scope.cancel()
        if silent:
            raise _HostSilent(f"node {self.node_id} stopped answering")
        return result


@asynccontextmanager
async def route_request(
    mesh: MeshService,
    node_id: str,
    body: bytes,
    *,
    endpoint: Endpoint = "chat",
    addrs: Sequence[str] = (),
    first_byte_timeout: float = 120.0,
) -> AsyncIterator[UpstreamResponse]:
    """Send one OpenAI request (the client's JSON ``body``) to mesh node ``node_id``
    over ``/mesh/route`` and yield its answer: status, headers, and the body as it
    streams (Server-Sent Events when the request asked to stream).

    ``endpoint`` names the API: ``"chat"`` (``/v1/chat/completions``), ``"completion"``,
    ``"responses"``, ``"messages"``, ``"count_tokens"`` or ``"embeddings"``. The body is
    checked here as a node's API would (``ApiError``, 400); the serving node checks it
    again. A Responses body goes as it is: ``previous_response_id`` is resolved only by
    a node's own API, so send the whole conversation as ``input``. ``HostUnavailable`` if
    the node cannot be reached or will not answer; ``UpstreamBroken`` from the body if it
    fails mid-answer.
    """
    if endpoint not in _route.ENDPOINTS:
        raise ValueError(f"endpoint must be one of {', '.join(_route.ENDPOINTS)}")
    request = parse_request(endpoint, body)
    upstream = RemoteUpstream(mesh, node_id, lambda _node: addrs, first_byte_timeout)
    async with upstream.open(request) as response:
        yield response


class RoutingTableClient:
    """A passive client's view of who serves what, refreshed from a host.

    Every interval it asks one host for the table (the one that answered last, else
    the next), and pings a few of the table's hosts. A host that fails either
    is left out of ``hosts`` (and of routing) until it answers again, so a dead host
    goes from the client within about an interval plus a timeout, without waiting
    for the mesh to declare it dead and the table to say so.
    """

    def __init__(
        self, mesh: MeshService, interval: float, on_change: Callable[[], None] = lambda: None
    ) -> None:
        self.mesh = mesh
        self.interval = interval
        #: Called when the hosts change: a new table, or a host stopped answering.
        self.on_change = on_change
        self.table = _route.RoutingTable(0, ())
        self.source: str | None = None
        self._failed: dict[str, float] = {}
        self._refresh = trio.Event()

    @property
    def hosts(self) -> tuple[_route.HostEntry, ...]:
        """The table's hosts, less those that stopped answering us lately."""
        return tuple(h for h in self.table.hosts if not self._unreachable(h.node_id))

    def _unreachable(self, node_id: str) -> bool:
        return trio.current_time() - self._failed.get(node_id, -1e9) < _SOURCE_PENALTY

    def refresh_soon(self) -> None:
        self._refresh.set()

    def addrs(self, node_id: str) -> Sequence[str]:
        for host in self.table.hosts:
            if host.node_id == node_id:
                return host.addrs
        return ()

    def _sources(self) -> list[tuple[ID, list[multiaddr.Multiaddr]]]:
        """Hosts to ask for the table: the one that answered last first, then the
        bootstrap peers, then the table's hosts; those that failed lately last."""
        addrs: dict[str, list[multiaddr.Multiaddr]] = {}
        for addr in self.mesh.bootstrap:
            addrs.setdefault(addr.rsplit("/p2p/", 1)[1], []).extend(transport_addrs([addr]))
        for host in self.table.hosts:
            addrs.setdefault(host.node_id, []).extend(transport_addrs(host.addrs))

        def rank(node: str) -> tuple[bool, bool]:
            return self._unreachable(node), node != self.source

        return [(ID.from_base58(node), addrs[node]) for node in sorted(addrs, key=rank)]

    def _answered(self, node_id: str) -> None:
        if self._failed.pop(node_id, None) is not None:
            self.on_change()

    def _silent(self, peer: ID) -> None:
        """``peer`` did not answer: hide it, and forget its connection (a dead QUIC
        peer's would stay open until its idle timeout, and look connected)."""
        node_id = peer.to_base58()
        hidden = not self._unreachable(node_id)
        self._failed[node_id] = trio.current_time()
        if self.source == node_id:
            self.source = None
        self.mesh.drop(peer)
        if hidden and any(h.node_id == node_id for h in self.table.hosts):
            log.info("host %s stopped answering; routing around it", node_id)
            self.on_change()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            for peer, addrs in self._sources():
                if await self._fetch(peer, addrs):
                    self.source = peer.to_base58()
                    self._answered(self.source)
                    break
                self._silent(peer)
            await self._check_hosts()
            with trio.move_on_after(self.interval):
                await self._refresh.wait()
            self._refresh = trio.Event()

    async def _check_hosts(self) -> None:
        """Ping the table's hosts (those we hold connections to first, at most
        ``_CHECKED_HOSTS``): a killed host is noticed within about an interval,
        whichever host gave us the table and whether or not we route to it."""
        network = self.mesh.host.get_network()
        hosts = [h for h in self.table.hosts if h.node_id != self.source]
        hosts.sort(key=lambda h: not network.get_connections(ID.from_base58(h.node_id)))

        async def check(host: _route.HostEntry) -> None:
            peer = ID.from_base58(host.node_id)
            with trio.move_on_after(_TABLE_TIMEOUT):
                if await self.mesh.connect(peer, transport_addrs(host.addrs)):
                    for _ in range(_PING_FAILURES):
                        if await self.mesh.ping(peer, _PING_INTERVAL):
                            self._answered(host.node_id)
                            return
            self._silent(peer)

        async with trio.open_nursery() as nursery:
            for host in hosts[:_CHECKED_HOSTS]:
                nursery.start_soon(check, host)

    async def _fetch(self, peer: ID, addrs: list[multiaddr.Multiaddr]) -> bool:
        exchange = _route.RouteClientExchange(_route.TableRequest(self.table.version))
        try:
            with trio.fail_after(_TABLE_TIMEOUT):
                if not await self.mesh.connect(peer, addrs):
                    return False
                stream = await self.mesh.host.new_stream(peer, [ROUTE])
                try:
                    await stream.write(exchange.start())
                    raw = await read_message(stream, FrameDecoder(exchange.max_frame), [])
                    if raw is None:
                        exchange.end_of_stream()
                    else:
                        exchange.receive(raw)
                finally:
                    await close_quietly(stream)
        except Exception as exc:
            log.info("routing table from %s failed: %r", peer, exc)
            return False
        if exchange.table is not None:
            changed = exchange.table.version != self.table.version
            if changed:
                log.info(
                    "routing table %d: %d hosts", exchange.table.version, len(exchange.table.hosts)
                )
            self.table = exchange.table
            if changed:
                self.on_change()
        return exchange.state is _route.ClientState.DONE


async def _watch_reset(stream: INetStream, scope: trio.CancelScope) -> None:
    """Cancel ``scope`` if the requester resets the stream (its own client went away)."""
    try:
        while await read_some(stream, 1024):
            pass  # nothing more is expected from the requester; ignore it
    except Exception:
        scope.cancel()
        return
    # End of stream: the requester half-closed after its request, which route.md allows.
