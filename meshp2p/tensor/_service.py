"""The ``/mesh/rpc-tensor/1.0.0`` driver: llama.cpp RPC connections carried between nodes.

- ``TensorServer`` (every full node): answers members' streams by piping each into a
  llama.cpp RPC server of its own (``_rpc_child``, 127.0.0.1 only), one server process
  per host using it, started on demand and stopped when the host has been gone a while.
- ``TensorTunnel`` (a host): listens on a 127.0.0.1 port for its llama.cpp child; each
  TCP connection becomes one stream to the worker. It counts bytes and round trips.

The byte rewriting is in ``_tensor`` (sans I/O); the protocol in protocols/rpc-tensor.md.
"""

from __future__ import annotations

import logging
import mmap
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from libp2p.abc import INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from .._errors import MeshError, ProtocolError
from ..inference._gguf import GgufLayout
from ..inference._worker import _run_process, ready_event
from ..mesh._service import MeshService
from ..transport._host import transport_addrs
from ..transport._streams import close_quietly, close_write, read_some, reset_quietly
from ..transport._wire import FrameDecoder, encode_frame
from . import _protocol as _tensor
from ._protocol import (
    HostHello,
    HostRewriter,
    Refused,
    ResponseFilter,
    RewriteCounters,
    WorkerHello,
    WorkerRewriter,
)

log = logging.getLogger("meshp2p.tensor")

RPC_TENSOR = TProtocol(_tensor.PROTOCOL_ID)
_HELLO_TIMEOUT = 10.0
_CONNECT_TIMEOUT = 10.0
_READ = 256 * 1024
_COALESCE = 64 * 1024
_RPC_READY_TIMEOUT = 30.0
#: A worker's RPC server for a host stops when no stream of that host was open this long.
RPC_IDLE_STOP_S = 15.0


class WorkerUnavailable(MeshError):
    """A worker could not be reached or refused the tunnel; ``node_id`` says which."""

    def __init__(self, node_id: str, reason: str) -> None:
        super().__init__(f"worker {node_id} {reason}")
        self.node_id = node_id
        self.reason = reason


class LocalFiles:
    """Read-only maps of this node's GGUF files, by SHA-256, kept open for the process.

    Regions are memoryviews of the map (no copy); maps are never closed, since a view
    may still be in a socket's send call.
    """

    def __init__(self, paths: Callable[[], Mapping[str, Path]]) -> None:
        self._paths = paths
        self._maps: dict[bytes, memoryview] = {}

    def shas(self) -> list[str]:
        return sorted(self._paths())

    def sizes(self, shas: Sequence[str]) -> dict[bytes, int]:
        paths = self._paths()
        return {bytes.fromhex(s): paths[s].stat().st_size for s in shas if s in paths}

    def read(self, sha256: bytes, offset: int, length: int) -> memoryview:
        view = self._maps.get(sha256)
        if view is None:
            path = self._paths()[sha256.hex()]
            with path.open("rb") as f:
                view = memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
            self._maps[sha256] = view
        if offset + length > len(view):
            raise ProtocolError(f"region {offset}+{length} is outside the file")
        return view[offset : offset + length]


async def _read_frame(stream: INetStream) -> tuple[dict[str, Any] | None, bytes]:
    """One frame from ``stream`` and whatever bytes followed it in the same reads."""
    decoder = FrameDecoder(_tensor.MAX_FRAME)
    with trio.fail_after(_HELLO_TIMEOUT):
        while True:
            data = await read_some(stream, _tensor.MAX_FRAME)
            if not data:
                return None, b""
            frames = decoder.feed(data, limit=1)
            if frames:
                return frames[0], decoder.rest


async def _send_chunks(send: Callable[[Any], Awaitable[None]], chunks: Sequence[Any]) -> None:
    """Write ``chunks`` in order, joining small ones: one write per read where possible."""
    pending: list[Any] = []
    size = 0
    for chunk in chunks:
        if not len(chunk):
            continue
        if len(chunk) >= _COALESCE:
            if pending:
                await send(b"".join(pending))
                pending, size = [], 0
            await send(chunk)
            continue
        pending.append(chunk)
        size += len(chunk)
        if size >= _COALESCE:
            await send(b"".join(pending))
            pending, size = [], 0
    if pending:
        await send(b"".join(pending))


# -- worker side ---------------------------------------------------------------------------


@dataclass
class _RpcServer:
    host: str
    endpoint: str
    process: trio.Process
    memory: int = 0
    streams: int = 0
    idle_since: float = field(default_factory=time.monotonic)
    exited: trio.Event = field(default_factory=trio.Event)
    stopping: bool = False


class TensorServer:
    """Lends this node's memory: serves ``/mesh/rpc-tensor`` streams from members.

    ``await nursery.start(server.run)`` registers the handler; RPC server children run
    in that nursery and stop with it.
    """

    def __init__(
        self,
        mesh: MeshService,
        files: LocalFiles,
        *,
        threads: int,
        log_dir: Path,
        available: Callable[[], bool] = lambda: True,
        idle_stop: float = RPC_IDLE_STOP_S,
    ) -> None:
        self.mesh = mesh
        self.files = files
        self.threads = threads
        self.log_dir = log_dir
        self.available = available
        self.idle_stop = idle_stop
        self.servers: dict[str, _RpcServer] = {}
        self._starting: dict[str, trio.Lock] = {}
        self._nursery: trio.Nursery | None = None
        self.counters = dict.fromkeys(
            ("streams", "refused", "bytes_received", "bytes_sent", "bytes_by_reference"), 0
        )

    @property
    def lent_bytes(self) -> int:
        """Memory the hosts using this node said their plans count on."""
        return sum(s.memory for s in self.servers.values())

    def status(self) -> list[dict[str, Any]]:
        return [
            {
                "host": s.host,
                "pid": s.process.pid,
                "memory": s.memory,
                "open_streams": s.streams,
            }
            for s in self.servers.values()
        ]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.mesh.host.set_stream_handler(RPC_TENSOR, self.mesh.members_only(self.handle))
            nursery.start_soon(self._stop_idle)
            task_status.started()
            await trio.sleep_forever()

    async def handle(self, stream: INetStream) -> None:
        host = stream.muxed_conn.peer_id.to_base58()
        self.counters["streams"] += 1
        try:
            raw, early = await _read_frame(stream)
            if raw is None:
                return
            hello = _tensor.parse_host_hello(raw)
        except (ProtocolError, trio.TooSlowError) as exc:
            log.warning("bad rpc-tensor hello from %s: %s", host, exc)
            await reset_quietly(stream)
            return
        except Exception as exc:
            log.info("rpc-tensor stream from %s failed: %r", host, exc)
            await reset_quietly(stream)
            return
        answer = _tensor.answer_hello(
            hello, node_id=self.mesh.node_id, files=self.files.shas(), available=self.available()
        )
        server: _RpcServer | None = None
        if isinstance(answer, WorkerHello):
            try:
                server = await self._server_for(host)
            except MeshError as exc:
                answer = Refused("unavailable", str(exc))
        try:
            await stream.write(encode_frame(answer.to_map()))
        except Exception:
            await reset_quietly(stream)
            return
        if isinstance(answer, Refused) or server is None:
            self.counters["refused"] += 1
            await close_quietly(stream)
            return
        if hello.memory:
            server.memory = hello.memory
        rewriter = WorkerRewriter(self.files.sizes(answer.files), self.files.read)
        server.streams += 1
        try:
            await self._pipe(stream, server, rewriter, early)
        finally:
            server.streams -= 1
            server.idle_since = time.monotonic()
            self.counters["bytes_by_reference"] += rewriter.counters.bytes_by_reference

    async def _pipe(
        self, stream: INetStream, server: _RpcServer, rewriter: WorkerRewriter, early: bytes
    ) -> None:
        address, port = server.endpoint.rsplit(":", 1)
        try:
            with trio.fail_after(_CONNECT_TIMEOUT):
                tcp = await trio.open_tcp_stream(address, int(port))
        except (OSError, trio.TooSlowError) as exc:
            log.warning("cannot reach the RPC server for %s: %r", server.host, exc)
            await reset_quietly(stream)
            return

        async def upstream() -> None:  # stream -> RPC server
            if early:
                await _send_chunks(tcp.send_all, rewriter.feed(early))
            while True:
                data = await read_some(stream, _READ)
                if not data:
                    rewriter.end_of_stream()
                    await tcp.send_eof()
                    return
                self.counters["bytes_received"] += len(data)
                await _send_chunks(tcp.send_all, rewriter.feed(data))

        async def downstream() -> None:  # RPC server -> stream
            answers = ResponseFilter()
            while True:
                data = await tcp.receive_some(_READ)
                if not data:
                    return
                self.counters["bytes_sent"] += len(data)
                whole = answers.feed(data)
                if whole:
                    await stream.write(b"".join(whole))

        try:
            async with tcp, trio.open_nursery() as nursery:
                nursery.start_soon(_until_done, upstream, nursery.cancel_scope)
                await downstream()
                nursery.cancel_scope.cancel()
        except Exception as exc:
            log.info("rpc-tensor stream from %s ended: %r", server.host, exc)
            await reset_quietly(stream)
            return
        await close_quietly(stream)

    async def _server_for(self, host: str) -> _RpcServer:
        lock = self._starting.setdefault(host, trio.Lock())
        async with lock:
            server = self.servers.get(host)
            if server is not None and not server.exited.is_set():
                return server
            if self._nursery is None:
                raise MeshError("this node is stopping")
            started: _RpcServer = await self._nursery.start(self._run_server, host)
            return started

    async def _run_server(self, host: str, *, task_status: trio.TaskStatus[_RpcServer]) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "meshp2p.tensor._rpc_child",
            "--port",
            "0",
            "--threads",
            str(self.threads),
        ]
        with (self.log_dir / "rpc-worker.log").open("ab") as log_file:
            async with trio.open_nursery() as nursery:
                process: trio.Process = await nursery.start(_run_process, command, log_file)
                server: _RpcServer | None = None
                try:
                    try:
                        with trio.fail_after(_RPC_READY_TIMEOUT):
                            ready = await ready_event(process)
                    except trio.TooSlowError:
                        ready = None
                    if ready is None:
                        process.kill()
                        raise MeshError(
                            "the llama.cpp RPC server did not start; see rpc-worker.log"
                        )
                    server = _RpcServer(host, str(ready["endpoint"]), process)
                    self.servers[host] = server
                    log.info("RPC server for host %s on %s", host, server.endpoint)
                    task_status.started(server)
                    await process.wait()
                    if not server.stopping:
                        log.warning(
                            "RPC server for host %s exited (%s); see rpc-worker.log",
                            host,
                            process.returncode,
                        )
                finally:
                    if server is not None:
                        server.exited.set()
                        if self.servers.get(host) is server:
                            del self.servers[host]
                    nursery.cancel_scope.cancel()

    async def _stop_idle(self) -> None:
        while True:
            await trio.sleep(1.0)
            now = time.monotonic()
            for server in list(self.servers.values()):
                if server.streams == 0 and now - server.idle_since > self.idle_stop:
                    log.info(
                        "host %s stopped using this node; stopping its RPC server", server.host
                    )
                    if self.servers.get(server.host) is server:
                        del self.servers[server.host]
                    server.stopping = True
                    server.process.terminate()


async def _until_done(fn: Callable[[], Any], scope: trio.CancelScope) -> None:
    """Run one direction of a pipe; an error in it ends both."""
    try:
        await fn()
    except BaseException:
        scope.cancel()
        raise


# -- host side -----------------------------------------------------------------------------


@dataclass
class TunnelCounters:
    connections: int = 0
    open: int = 0
    bytes_received: int = 0
    round_trips: int = 0


class TensorTunnel:
    """A 127.0.0.1 port that carries the host's llama.cpp to one worker, stream by stream.

    ``await nursery.start(tunnel.run)`` returns once it listens; ``endpoint`` is what
    llama.cpp registers. ``broken`` is set, with a reason, when a stream that carried
    RPC bytes fails (the worker died or its link broke): llama.cpp aborts then.
    """

    def __init__(
        self,
        mesh: MeshService,
        worker: str,
        *,
        addrs: Sequence[str] = (),
        memory: int = 0,
        layouts: Mapping[str, GgufLayout] | None = None,
        files: LocalFiles | None = None,
    ) -> None:
        self.mesh = mesh
        self.worker = worker
        self.peer = ID.from_base58(worker)
        self.addrs = tuple(addrs)
        self.memory = memory
        self.layouts = dict(layouts or {})
        self.files = files
        self.endpoint = ""
        self.counters = TunnelCounters()
        #: What every connection's HostRewriter read from llama.cpp and wrote to streams.
        self.rewrites = RewriteCounters()
        self.broken: str | None = None
        self.worker_files: tuple[str, ...] = ()

    def status(self) -> dict[str, Any]:
        return {
            "worker": self.worker,
            "endpoint": self.endpoint,
            "broken": self.broken,
            "files_by_reference": list(self.worker_files),
            **vars(self.counters),
            "bytes_from_llama": self.rewrites.bytes_in,
            "bytes_sent": self.rewrites.bytes_out,
            "bytes_by_reference": self.rewrites.bytes_by_reference,
            "uploads": self.rewrites.uploads,
            "uploads_by_reference": self.rewrites.uploads_by_reference,
        }

    def _hello(self) -> HostHello:
        return HostHello(
            worker=self.worker,
            files=tuple(sorted(self.layouts)),
            ext=(_tensor.EXT_GGUF_REF,) if self.layouts else (),
            memory=self.memory,
        )

    async def open_stream(self) -> tuple[INetStream, WorkerHello]:
        """A new stream to the worker, hellos exchanged; WorkerUnavailable if not."""
        try:
            with trio.fail_after(_CONNECT_TIMEOUT):
                if not await self.mesh.connect(self.peer, transport_addrs(self.addrs)):
                    raise WorkerUnavailable(self.worker, "is not reachable as a mesh member")
                stream = await self.mesh.host.new_stream(self.peer, [RPC_TENSOR])
        except WorkerUnavailable:
            raise
        except Exception as exc:
            raise WorkerUnavailable(self.worker, f"is not reachable: {exc!r}") from None
        try:
            await stream.write(encode_frame(self._hello().to_map()))
            raw, _ = await _read_frame(stream)
            if raw is None:
                raise WorkerUnavailable(self.worker, "closed the RPC tunnel before answering")
            reply = _tensor.parse_worker_reply(raw)
        except WorkerUnavailable:
            await reset_quietly(stream)
            raise
        except Exception as exc:
            await reset_quietly(stream)
            raise WorkerUnavailable(self.worker, f"broke the RPC tunnel hello: {exc}") from None
        if isinstance(reply, Refused):
            await close_quietly(stream)
            raise WorkerUnavailable(
                self.worker, f"refused the RPC tunnel ({reply.code}): {reply.message}"
            )
        self.worker_files = reply.files
        return stream, reply

    async def check(self) -> WorkerHello:
        """Hellos only: whether the worker will serve us, before llama.cpp depends on it."""
        stream, reply = await self.open_stream()
        await close_quietly(stream)
        return reply

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        self.endpoint = f"127.0.0.1:{port}"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self._connection, listeners)
            task_status.started(self.endpoint)
            await trio.sleep_forever()

    async def _connection(self, tcp: trio.SocketStream) -> None:
        self.counters.connections += 1
        self.counters.open += 1
        carried = False
        try:
            async with tcp:
                try:
                    stream, reply = await self.open_stream()
                except WorkerUnavailable as exc:
                    self._break(exc.reason)
                    return
                accepted = {s: self.layouts[s] for s in reply.files if s in self.layouts}
                if _tensor.EXT_GGUF_REF not in reply.ext or self.files is None:
                    accepted = {}
                files = self.files
                rewriter = HostRewriter(
                    accepted,
                    files.read if files is not None else _no_file,
                    self.rewrites,
                )
                awaiting = False
                llama_closed = False

                async def upstream() -> None:  # llama.cpp -> worker
                    nonlocal awaiting, carried, llama_closed
                    while True:
                        data = await tcp.receive_some(_READ)
                        if not data:
                            llama_closed = True
                            rewriter.end_of_stream()
                            await close_write(stream)
                            return
                        carried = True
                        chunks = rewriter.feed(data)
                        await _send_chunks(lambda c: stream.write(bytes(c)), chunks)
                        awaiting = awaiting or any(len(c) for c in chunks)

                async def downstream() -> None:  # worker -> llama.cpp
                    nonlocal awaiting
                    while True:
                        data = await read_some(stream, _READ)
                        if not data:
                            if carried and not llama_closed:
                                self._break("the worker closed an RPC connection in use")
                            return
                        if awaiting:
                            self.counters.round_trips += 1
                            awaiting = False
                        self.counters.bytes_received += len(data)
                        await tcp.send_all(data)

                ended = False
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(_until_done, upstream, nursery.cancel_scope)
                        await downstream()
                        nursery.cancel_scope.cancel()
                    ended = True
                except Exception as exc:
                    if carried:
                        self._break(f"tunnel stream failed: {exc!r}")
                finally:
                    # Cancelled (the tunnel closes with its child) or failed: reset, so the
                    # worker's end of the stream and its RPC connection end now too.
                    with trio.CancelScope(shield=True):
                        await (close_quietly(stream) if ended else reset_quietly(stream))
        finally:
            self.counters.open -= 1

    def _break(self, reason: str) -> None:
        if self.broken is None:
            log.warning("RPC tunnel to worker %s broke: %s", self.worker, reason)
            self.broken = reason


def _no_file(sha256: bytes, offset: int, length: int) -> bytes:
    raise ProtocolError("no local files to compare with")


@asynccontextmanager
async def open_tunnels(tunnels: Sequence[TensorTunnel]) -> AsyncIterator[list[str]]:
    """Run ``tunnels`` for the duration of the block; yields their endpoints in order."""
    async with trio.open_nursery() as nursery:
        endpoints = [await nursery.start(t.run) for t in tunnels]
        try:
            yield endpoints
        finally:
            nursery.cancel_scope.cancel()
