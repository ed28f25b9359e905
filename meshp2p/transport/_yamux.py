"""A lean yamux stream muxer for py-libp2p: the same wire protocol, a fraction of the CPU.

py-libp2p's own ``Yamux`` spends ~300 us of Python per frame on loopback: it builds
f-string debug logs for every frame even with DEBUG off, takes several locks per frame,
writes a WINDOW_UPDATE after every read and polls ``trio.sleep(0.01)`` while a send
window is empty. This module speaks the same protocol (hashicorp yamux spec, version 0,
``/yamux/1.0.0``), so go-libp2p, js-libp2p and stock py-libp2p peers interoperate, but:

- one reader task per connection parses frames out of large reads and hands payloads to
  per-stream buffers; the only lock is one write gate per connection, which costs no
  scheduler round trip when uncontended;
- a stream's send-window wait is a ``trio.Event`` the reader sets, with a timeout that
  resets the stream and says why (the peer stopped reading);
- window updates go out only once half the receive window has been consumed and not yet
  re-granted (go-yamux's rule), so a small request/response costs no extra frames;
- the receive window (16 MiB per stream by default) is announced on SYN/ACK like
  go-yamux does, and a peer that sends more than was granted gets the stream reset:
  nothing is ever buffered beyond the window;
- control frames the reader must answer (PING ACK, RST for refused streams) go through a
  small writer task, so the reader never waits on the write gate (which could deadlock
  two peers that are both blocked sending bulk data to each other).

``muxer_opt={PROTOCOL_ID: Yamux}`` in ``libp2p.new_host`` selects it, together with
:func:`honour_muxer_opt` on the host: py-libp2p 0.8.1's ``MuxerMultistream.new_conn``
ignores the configured class for ``/yamux/1.0.0`` and always builds its own ``Yamux``;
``honour_muxer_opt`` replaces that method on this one host's upgrader (nothing
process-wide, so other hosts in the process, and other libraries' hosts, are untouched).

One module, over 800 lines, on purpose: a yamux session is one state machine whose
stream table, send and receive windows, reader task and write gate change together on
every frame; split across modules, each piece would reach into the others' state.
"""

from __future__ import annotations

import logging
import math
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable
from types import MethodType, TracebackType
from typing import Any

import multiaddr
import trio
from libp2p.abc import IMuxedConn, IMuxedStream, ISecureConn
from libp2p.connection_types import ConnectionType
from libp2p.custom_types import TProtocol
from libp2p.io.exceptions import ConnectionClosedError
from libp2p.peer.id import ID
from libp2p.stream_muxer.exceptions import (
    MuxedConnUnavailable,
    MuxedStreamClosed,
    MuxedStreamEOF,
    MuxedStreamError,
    MuxedStreamReset,
)
from libp2p.stream_muxer.muxer_multistream import MuxerMultistream
from libp2p.stream_muxer.yamux.yamux import Yamux as StockYamux

logger = logging.getLogger(__name__)

PROTOCOL_ID = TProtocol("/yamux/1.0.0")

# Header: version, type, flags, stream id, length (network byte order).
_HEADER = struct.Struct(">BBHII")
HEADER_SIZE = 12
VERSION = 0

TYPE_DATA = 0
TYPE_WINDOW_UPDATE = 1
TYPE_PING = 2
TYPE_GO_AWAY = 3

FLAG_SYN = 0x1
FLAG_ACK = 0x2
FLAG_FIN = 0x4
FLAG_RST = 0x8

GO_AWAY_NORMAL = 0
GO_AWAY_PROTOCOL_ERROR = 1
GO_AWAY_INTERNAL_ERROR = 2

#: Every stream starts with this window in both directions (spec).
INITIAL_WINDOW = 256 * 1024
#: The receive window each stream grants its peer (go-yamux's maximum).
DEFAULT_RECEIVE_WINDOW = 16 * 1024 * 1024
#: Largest DATA frame payload this side sends (also bounded by the peer's window).
MAX_SEND_FRAME = 256 * 1024
#: Inbound streams waiting for ``accept_stream``; more are refused with RST (go-yamux: 256).
ACCEPT_BACKLOG = 256
#: Receive window beyond the initial 256 KiB granted over all of a connection's streams;
#: a stream opened while it is used up gets only 256 KiB (go-yamux's memory manager idea).
DEFAULT_WINDOW_BUDGET = 128 * 1024 * 1024
#: Open streams per connection (either direction) before inbound SYNs are refused.
MAX_STREAMS = 1024
#: Seconds a writer waits for the peer to grant send window before the stream is reset.
SEND_WINDOW_TIMEOUT = 60.0
#: Control frames queued for the writer task before the peer counts as flooding.
_MAX_PENDING_CONTROL = 1024
#: How much the reader asks the secured connection for at once.
_READ_SIZE = 1 << 20
_MAX_STREAM_ID = 0xFFFFFFFF

_FLAG_NAMES = ((FLAG_SYN, "SYN"), (FLAG_ACK, "ACK"), (FLAG_FIN, "FIN"), (FLAG_RST, "RST"))
_TYPE_NAMES = ("DATA", "WINDOW_UPDATE", "PING", "GO_AWAY")


class YamuxProtocolError(MuxedStreamError):
    """The peer broke the yamux protocol; the connection is closed with GO_AWAY(1)."""


class YamuxWindowTimeout(MuxedStreamReset):
    """The peer granted no send window for too long (it is not reading); stream reset."""


class YamuxDeadlineExceeded(MuxedStreamError):
    """A read or write passed the deadline set with ``set_deadline``."""


def _describe(typ: int, flags: int, sid: int, length: int) -> str:
    names = "+".join(name for bit, name in _FLAG_NAMES if flags & bit) or "0"
    kind = _TYPE_NAMES[typ] if typ < len(_TYPE_NAMES) else str(typ)
    return f"type={kind} flags={names} stream={sid} length={length}"


class _WriteGate:
    """A FIFO mutex for the connection's writes that costs nothing when uncontended.

    ``trio.Lock`` yields to the scheduler on every uncontended acquire; the write that
    follows checkpoints anyway, so here a free gate is simply taken. Ownership passes
    straight to the first parked waiter on release, as in ``trio.Lock``.
    """

    __slots__ = ("_busy", "_lot")

    def __init__(self) -> None:
        self._busy = False
        self._lot = trio.lowlevel.ParkingLot()

    async def acquire(self) -> None:
        if self._busy:
            await self._lot.park()  # woken owning the gate
        else:
            self._busy = True

    def release(self) -> None:
        if self._lot:
            self._lot.unpark()
        else:
            self._busy = False


class YamuxStream(IMuxedStream):
    """One yamux stream. Reads and writes are the usual ``IMuxedStream`` ones."""

    def __init__(self, conn: Yamux, stream_id: int, *, outbound: bool, receive_window: int) -> None:
        self.conn = conn
        self.muxed_conn = conn
        self.stream_id = stream_id
        self.is_initiator = outbound
        # Received, not yet read: whole payloads, ``_head`` bytes of the first already read.
        self._chunks: deque[bytes] = deque()
        self._head = 0
        self._buffered = 0
        self._window_max = receive_window
        # Bytes the peer may still send. An inbound stream grants more than the initial
        # window only with its ACK (sent on accept), so until then the peer has 256 KiB.
        self._recv_window = receive_window if outbound else INITIAL_WINDOW
        self._unannounced = 0  # read by the app, not yet granted back to the peer
        self._send_window = INITIAL_WINDOW
        self._readable = trio.Event()
        self._writable = trio.Event()
        self._need_ack = not outbound  # an inbound stream's first frame carries ACK
        self._remote_fin = False
        self._local_fin = False
        self._reset = False
        self._reset_why = ""
        self._deadline = math.inf

    # -- state ---------------------------------------------------------------------------

    @property
    def is_closed(self) -> bool:
        """Reset, or closed in both directions."""
        return self._reset or (self._local_fin and self._remote_fin)

    def _wake(self) -> None:
        self._readable.set()
        self._writable.set()

    def _on_remote_fin(self) -> None:
        self._remote_fin = True
        self._readable.set()
        if self._local_fin:
            self.conn._forget(self)

    def _on_reset(self, why: str) -> None:
        if self._reset:
            return
        self._reset = True
        self._reset_why = why
        self._chunks.clear()
        self._buffered = 0
        self._wake()
        self.conn._forget(self)

    def _ack_flag(self) -> int:
        if self._need_ack:
            self._need_ack = False
            return FLAG_ACK
        return 0

    # -- reading -------------------------------------------------------------------------

    async def read(self, n: int | None = None) -> bytes:
        """Up to ``n`` bytes (all buffered bytes if ``n`` is None or negative).

        Waits for at least one byte. ``MuxedStreamEOF`` once the peer closed its side and
        everything was read; ``MuxedStreamReset`` after a reset or a lost connection.
        """
        if n == 0:
            return b""
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self._buffered:
            if self._reset:
                raise MuxedStreamReset(f"stream {self.stream_id} was reset: {self._reset_why}")
            if self._remote_fin:
                raise MuxedStreamEOF(f"stream {self.stream_id} closed by the peer")
            event = self._readable
            if event.is_set():
                self._readable = event = trio.Event()
            await self._wait(event, "read")
        data = self._take(self._buffered if n is None or n < 0 else n)
        self._unannounced += len(data)
        # go-yamux: re-grant the window only once half of it is used up.
        if self._unannounced >= self._window_max >> 1 and not self._remote_fin:
            delta = self._unannounced
            self._unannounced = 0
            self._recv_window += delta
            frame = _HEADER.pack(
                VERSION, TYPE_WINDOW_UPDATE, self._ack_flag(), self.stream_id, delta
            )
            try:
                await self.conn._send(frame)
            except MuxedStreamError:
                pass  # the data is read; a dead connection shows up on the next call
        return data

    def _take(self, n: int) -> bytes:
        chunks = self._chunks
        head = self._head
        first = chunks[0]
        if head == 0 and n >= len(first) and (len(chunks) == 1 or n == len(first)):
            chunks.popleft()
            self._buffered -= len(first)
            return first
        parts: list[bytes] = []
        need = n
        while need and chunks:
            chunk = chunks[0]
            avail = len(chunk) - head
            if avail <= need:
                parts.append(chunk[head:] if head else chunk)
                chunks.popleft()
                head = 0
                need -= avail
            else:
                parts.append(chunk[head : head + need])
                head += need
                need = 0
        self._head = head
        out = parts[0] if len(parts) == 1 else b"".join(parts)
        self._buffered -= len(out)
        return out

    async def _wait(self, event: trio.Event, what: str) -> None:
        if self._deadline == math.inf:
            await event.wait()
            return
        with trio.move_on_at(self._deadline):
            await event.wait()
            return
        raise YamuxDeadlineExceeded(f"stream {self.stream_id}: {what} deadline exceeded")

    # -- writing -------------------------------------------------------------------------

    async def write(self, data: bytes) -> None:
        """Send ``data``, as frames of at most the peer's window and ``MAX_SEND_FRAME``."""
        total = len(data)
        if not total:
            self._check_writable()
            await trio.lowlevel.checkpoint()
            return
        conn = self.conn
        view = memoryview(data)
        offset = 0
        while offset < total:
            self._check_writable()
            window = self._send_window
            if window <= 0:
                await self._wait_for_window()
                continue
            n = min(total - offset, window, conn.max_send_frame)
            self._send_window = window - n
            header = _HEADER.pack(VERSION, TYPE_DATA, self._ack_flag(), self.stream_id, n)
            await conn._send(header + view[offset : offset + n])
            offset += n

    def _check_writable(self) -> None:
        if self._reset:
            raise MuxedStreamReset(f"stream {self.stream_id} was reset: {self._reset_why}")
        if self.conn._dead:
            raise MuxedStreamReset(f"stream {self.stream_id}: {self.conn._close_reason}")
        if self._local_fin:
            raise MuxedStreamClosed(f"stream {self.stream_id} is closed for writing")

    async def _wait_for_window(self) -> None:
        event = self._writable
        if event.is_set():
            self._writable = event = trio.Event()
        timeout = self.conn.send_window_timeout
        with trio.move_on_at(min(trio.current_time() + timeout, self._deadline)):
            await event.wait()
            return
        if trio.current_time() >= self._deadline:
            raise YamuxDeadlineExceeded(f"stream {self.stream_id}: write deadline exceeded")
        why = f"the peer granted no send window for {timeout:g} s (it is not reading the stream)"
        await self._send_reset(why)
        raise YamuxWindowTimeout(f"stream {self.stream_id}: {why}; stream reset")

    # -- closing -------------------------------------------------------------------------

    async def close(self) -> None:
        """Half-close: send FIN. Reading goes on until the peer closes its side."""
        if self._local_fin or self._reset:
            await trio.lowlevel.checkpoint()
            return
        self._local_fin = True
        flags = FLAG_FIN | self._ack_flag()
        try:
            await self.conn._send(
                _HEADER.pack(VERSION, TYPE_WINDOW_UPDATE, flags, self.stream_id, 0)
            )
        except MuxedStreamError:
            pass  # connection gone: nothing left to tell the peer
        if self._remote_fin:
            self.conn._forget(self)

    async def close_write(self) -> None:
        """Same as ``close`` (NetStream.close_write prefers this name)."""
        await self.close()

    async def reset(self) -> None:
        """Abort both directions; the peer's reads and writes fail with a reset."""
        if self._reset or (self._local_fin and self._remote_fin):
            self._on_reset("reset locally")
            await trio.lowlevel.checkpoint()
            return
        await self._send_reset("reset locally")

    async def _send_reset(self, why: str) -> None:
        flags = FLAG_RST | self._ack_flag()
        self._on_reset(why)
        try:
            await self.conn._send(
                _HEADER.pack(VERSION, TYPE_WINDOW_UPDATE, flags, self.stream_id, 0)
            )
        except MuxedStreamError:
            pass

    def set_deadline(self, ttl: int) -> None:
        """Fail reads and writes that would still be waiting ``ttl`` seconds from now."""
        if ttl < 0:
            raise ValueError(f"deadline ttl must be >= 0, got {ttl}")
        self._deadline = trio.current_time() + ttl

    def get_remote_address(self) -> tuple[str, int] | None:
        return self.conn.get_remote_address()

    async def __aenter__(self) -> YamuxStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<YamuxStream {self.stream_id} peer={self.conn.peer_id}>"


class Yamux(IMuxedConn):
    """A yamux connection over a secured connection; ``start()`` runs its reader."""

    def __init__(
        self,
        secured_conn: ISecureConn,
        peer_id: ID,
        is_initiator: bool | None = None,
        on_close: Callable[[], Awaitable[Any]] | None = None,
        *,
        receive_window: int = DEFAULT_RECEIVE_WINDOW,
        window_budget: int = DEFAULT_WINDOW_BUDGET,
        max_send_frame: int = MAX_SEND_FRAME,
        accept_backlog: int = ACCEPT_BACKLOG,
        max_streams: int = MAX_STREAMS,
        send_window_timeout: float = SEND_WINDOW_TIMEOUT,
    ) -> None:
        if not INITIAL_WINDOW <= receive_window <= _MAX_STREAM_ID:
            raise ValueError(
                f"receive_window must be in [{INITIAL_WINDOW}, 2**32), got {receive_window}"
            )
        self.secured_conn = secured_conn
        self.peer_id = peer_id
        self.is_initiator_value = (
            secured_conn.is_initiator if is_initiator is None else is_initiator
        )
        # SwarmConn replaces this with its own hook; called once when the connection ends.
        self.on_close = on_close
        self.receive_window = receive_window
        self.window_budget = window_budget
        self._budget_used = 0
        self.max_send_frame = max_send_frame
        self.max_streams = max_streams
        self.send_window_timeout = send_window_timeout
        # Initiator (client) streams are odd, responder streams even (spec).
        self._next_id = 1 if self.is_initiator_value else 2
        self.streams: dict[int, YamuxStream] = {}
        self._accept_send, self._accept_recv = trio.open_memory_channel[YamuxStream](accept_backlog)
        self._gate = _WriteGate()
        self._control: list[bytes] = []
        self._control_event = trio.Event()
        self.event_started = trio.Event()
        self.event_shutting_down = trio.Event()
        self.event_closed = trio.Event()
        self._started = False
        self._closing = False
        self._dead = False
        self._goaway_sent = False
        self._remote_goaway: int | None = None
        self._close_reason = ""
        self._nursery: trio.Nursery | None = None
        self._rtt = 0.0
        self._ping_id = 0
        self._pings: dict[int, tuple[float, trio.Event]] = {}
        self._created_at = time.time()

    # -- IMuxedConn --------------------------------------------------------------------

    @property
    def is_initiator(self) -> bool:
        return self.is_initiator_value

    @property
    def is_established(self) -> bool:
        return self.event_started.is_set() and not self._dead

    @property
    def is_closed(self) -> bool:
        return self.event_closed.is_set()

    def get_transport_addresses(self) -> list[multiaddr.Multiaddr]:
        return self.secured_conn.get_transport_addresses()

    def get_connection_type(self) -> ConnectionType:
        return self.secured_conn.get_connection_type()

    def get_remote_address(self) -> tuple[str, int] | None:
        return self.secured_conn.get_remote_address()

    def rtt(self) -> float:
        """The last measured ping round trip in seconds (0.0 before any ``ping``)."""
        return self._rtt

    async def start(self) -> None:
        """Run the connection: returns when it ends (peer gone, ``close``, error)."""
        if self._started:
            return
        self._started = True
        reason = "connection closed"
        goaway: int | None = None
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._control_writer)
                self.event_started.set()
                try:
                    await self._read_loop()
                    reason = "connection closed by the peer"
                except YamuxProtocolError as exc:
                    reason = f"protocol error: {exc}"
                    goaway = GO_AWAY_PROTOCOL_ERROR
                    logger.warning("yamux: peer %s: %s", self.peer_id, reason)
                except Exception as exc:  # the secured connection failed
                    reason = f"connection lost: {type(exc).__name__}: {exc}"
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self._teardown(reason, goaway)

    async def close(self, error_code: int = GO_AWAY_NORMAL) -> None:
        """Send GO_AWAY, end every stream and close the secured connection."""
        await self._teardown("connection closed locally", error_code)

    async def open_stream(self) -> YamuxStream:
        if self._closing:
            raise MuxedConnUnavailable(f"yamux connection is closed ({self._close_reason})")
        if self._remote_goaway is not None:
            raise MuxedConnUnavailable("the peer sent GO_AWAY: it accepts no new streams")
        sid = self._next_id
        if sid > _MAX_STREAM_ID:
            raise MuxedConnUnavailable("stream ids exhausted on this connection")
        self._next_id = sid + 2
        stream = YamuxStream(self, sid, outbound=True, receive_window=self._grant())
        self.streams[sid] = stream
        # SYN rides on a window update that also grants the window beyond the initial 256 KiB.
        frame = _HEADER.pack(
            VERSION, TYPE_WINDOW_UPDATE, FLAG_SYN, sid, stream._window_max - INITIAL_WINDOW
        )
        try:
            await self._send(frame)
        except MuxedStreamError as exc:
            self._forget(stream)
            raise MuxedConnUnavailable(f"cannot open a stream: {exc}") from exc
        return stream

    async def accept_stream(self) -> YamuxStream:
        """The next stream the peer opened; ``MuxedConnUnavailable`` once the connection ends."""
        try:
            stream = await self._accept_recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise MuxedConnUnavailable(
                f"yamux connection is closed ({self._close_reason})"
            ) from None
        if stream._need_ack and not stream._reset:
            # ACK on accept (as go-yamux), with our window beyond the initial 256 KiB.
            stream._need_ack = False
            delta = stream._window_max - INITIAL_WINDOW
            stream._recv_window += delta
            frame = _HEADER.pack(VERSION, TYPE_WINDOW_UPDATE, FLAG_ACK, stream.stream_id, delta)
            try:
                await self._send(frame)
            except MuxedStreamError as exc:
                raise MuxedConnUnavailable(f"yamux connection is closed: {exc}") from exc
        return stream

    async def ping(self) -> float:
        """Round trip of one yamux PING in seconds (also what ``rtt()`` reports next).

        Waits for the answer as long as it takes: bound it with ``trio.fail_after``.
        """
        self._ping_id = (self._ping_id + 1) & _MAX_STREAM_ID
        opaque = self._ping_id
        done = trio.Event()
        self._pings[opaque] = (trio.current_time(), done)
        try:
            await self._send(_HEADER.pack(VERSION, TYPE_PING, FLAG_SYN, 0, opaque))
            await done.wait()
        finally:
            self._pings.pop(opaque, None)
        if self._dead:
            raise MuxedConnUnavailable("connection closed while waiting for a ping answer")
        return self._rtt

    # -- writing -----------------------------------------------------------------------

    async def _send(self, frame: bytes) -> None:
        """Write whole frames; all writes of the connection go through here, in order."""
        if self._dead:
            raise MuxedStreamReset(f"yamux connection is closed ({self._close_reason})")
        if logger.isEnabledFor(logging.DEBUG):
            typ, flags, sid, length = _HEADER.unpack_from(frame)[1:]
            logger.debug("yamux TX %s peer=%s", _describe(typ, flags, sid, length), self.peer_id)
        gate = self._gate
        await gate.acquire()
        try:
            await self.secured_conn.write(frame)
        except Exception as exc:
            raise MuxedStreamReset(f"yamux connection lost while writing: {exc}") from exc
        finally:
            gate.release()

    def _queue_control(self, frame: bytes) -> None:
        """A frame the reader must send: written by ``_control_writer``, not the reader."""
        if len(self._control) >= _MAX_PENDING_CONTROL:
            raise YamuxProtocolError("peer floods control frames (pings/refused streams)")
        self._control.append(frame)
        self._control_event.set()

    async def _control_writer(self) -> None:
        while True:
            await self._control_event.wait()
            self._control_event = trio.Event()
            frames, self._control = self._control, []
            try:
                await self._send(b"".join(frames))
            except MuxedStreamError:
                return

    # -- reading -----------------------------------------------------------------------

    async def _read_loop(self) -> None:
        """Parse frames from the secured connection until it ends (returns) or fails."""
        read = self._read_some
        unpack = _HEADER.unpack_from
        debug = logger.isEnabledFor
        buf = bytearray()
        pos = 0
        while True:
            if len(buf) - pos < HEADER_SIZE:
                if pos:
                    del buf[:pos]
                    pos = 0
                chunk = await read(_READ_SIZE)
                if not chunk:
                    if buf:
                        raise YamuxProtocolError(
                            f"connection ended inside a frame header ({len(buf)} bytes)"
                        )
                    return
                buf += chunk
                continue
            version, typ, flags, sid, length = unpack(buf, pos)
            if debug(logging.DEBUG):
                logger.debug(
                    "yamux RX %s peer=%s", _describe(typ, flags, sid, length), self.peer_id
                )
            if version != VERSION:
                raise YamuxProtocolError(f"bad header: version {version}, expected 0")
            if typ == TYPE_DATA:
                # No honest peer sends more than the largest window we ever grant.
                if length > self.receive_window:
                    raise YamuxProtocolError(
                        f"DATA frame of {length} bytes on stream {sid} exceeds the "
                        f"{self.receive_window}-byte receive window"
                    )
                end = pos + HEADER_SIZE + length
                while len(buf) < end:
                    if pos:
                        del buf[:pos]
                        end -= pos
                        pos = 0
                    chunk = await read(max(_READ_SIZE, end - len(buf)))
                    if not chunk:
                        raise YamuxProtocolError(
                            f"connection ended inside a {length}-byte DATA frame"
                        )
                    buf += chunk
                payload = bytes(memoryview(buf)[pos + HEADER_SIZE : end])
                pos = end
                self._on_data(sid, flags, payload)
            elif typ == TYPE_WINDOW_UPDATE:
                pos += HEADER_SIZE
                self._on_window_update(sid, flags, length)
            elif typ == TYPE_PING:
                pos += HEADER_SIZE
                self._on_ping(flags, length)
            elif typ == TYPE_GO_AWAY:
                pos += HEADER_SIZE
                self._on_go_away(length)
            else:
                raise YamuxProtocolError(f"bad header: unknown frame type {typ}")
            if pos == len(buf):
                buf.clear()
                pos = 0

    async def _read_some(self, n: int) -> bytes:
        """Up to ``n`` bytes; b"" at the end (py-libp2p's secure sessions raise instead)."""
        try:
            return await self.secured_conn.read(n)
        except ConnectionClosedError:
            return b""

    def _stream_for(self, sid: int, flags: int) -> YamuxStream | None:
        if flags & FLAG_SYN:
            return self._on_syn(sid)
        return self.streams.get(sid)

    def _on_data(self, sid: int, flags: int, payload: bytes) -> None:
        stream = self._stream_for(sid, flags)
        if stream is None:
            return  # a stream already closed or reset here: drop what was in flight
        n = len(payload)
        if n:
            if n > stream._recv_window:
                # Never buffer beyond the granted window: the stream is reset.
                logger.warning(
                    "yamux: peer %s sent %d bytes on stream %d with only %d granted; resetting it",
                    self.peer_id,
                    n,
                    sid,
                    stream._recv_window,
                )
                self._refuse(stream, "the peer overran the receive window")
                return
            stream._recv_window -= n
            stream._chunks.append(payload)
            stream._buffered += n
            stream._readable.set()
        if flags & (FLAG_FIN | FLAG_RST):
            self._on_close_flags(stream, flags)

    def _on_window_update(self, sid: int, flags: int, delta: int) -> None:
        stream = self._stream_for(sid, flags)
        if stream is None:
            return
        if delta:
            stream._send_window += delta
            stream._writable.set()
        if flags & (FLAG_FIN | FLAG_RST):
            self._on_close_flags(stream, flags)

    def _on_close_flags(self, stream: YamuxStream, flags: int) -> None:
        if flags & FLAG_RST:
            stream._on_reset("reset by the peer")
        elif not stream._remote_fin:
            stream._on_remote_fin()

    def _on_syn(self, sid: int) -> YamuxStream | None:
        if sid == 0 or (sid & 1) == (1 if self.is_initiator_value else 0):
            raise YamuxProtocolError(f"peer opened stream {sid}, which is not its id space")
        if sid in self.streams:
            raise YamuxProtocolError(f"peer opened stream {sid} twice")
        if self._dead or self._goaway_sent or len(self.streams) >= self.max_streams:
            self._queue_control(_HEADER.pack(VERSION, TYPE_WINDOW_UPDATE, FLAG_RST, sid, 0))
            return None
        stream = YamuxStream(self, sid, outbound=False, receive_window=self._grant())
        self.streams[sid] = stream
        try:
            self._accept_send.send_nowait(stream)
        except trio.WouldBlock:
            logger.warning(
                "yamux: peer %s: accept backlog full, refusing stream %d", self.peer_id, sid
            )
            self._forget(stream)
            self._queue_control(_HEADER.pack(VERSION, TYPE_WINDOW_UPDATE, FLAG_RST, sid, 0))
            return None
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self._forget(stream)
            return None
        return stream

    def _refuse(self, stream: YamuxStream, why: str) -> None:
        flags = FLAG_RST | stream._ack_flag()
        stream._on_reset(why)
        self._queue_control(_HEADER.pack(VERSION, TYPE_WINDOW_UPDATE, flags, stream.stream_id, 0))

    def _on_ping(self, flags: int, opaque: int) -> None:
        if flags & FLAG_SYN:
            self._queue_control(_HEADER.pack(VERSION, TYPE_PING, FLAG_ACK, 0, opaque))
        elif flags & FLAG_ACK:
            pending = self._pings.get(opaque)
            if pending is not None:
                self._rtt = trio.current_time() - pending[0]
                pending[1].set()

    def _on_go_away(self, code: int) -> None:
        # Existing streams may finish; the peer takes no new ones (spec). The peer closes
        # the connection next, which ends everything (closing accept here would make
        # SwarmConn close the connection under the streams still finishing).
        self._remote_goaway = code
        if code != GO_AWAY_NORMAL:
            logger.warning("yamux: peer %s sent GO_AWAY with error code %d", self.peer_id, code)

    def _grant(self) -> int:
        """The receive window for a new stream: the full one while the budget lasts."""
        extra = self.receive_window - INITIAL_WINDOW
        if self._budget_used + extra <= self.window_budget:
            self._budget_used += extra
            return self.receive_window
        return INITIAL_WINDOW

    def _forget(self, stream: YamuxStream) -> None:
        if self.streams.get(stream.stream_id) is stream:
            del self.streams[stream.stream_id]
            self._budget_used -= stream._window_max - INITIAL_WINDOW

    # -- shutdown ----------------------------------------------------------------------

    async def _teardown(self, reason: str, goaway: int | None) -> None:
        if self._closing:
            await self.event_closed.wait()  # set before on_close runs, so no deadlock
            return
        self._closing = True
        try:
            await self._shut_down(reason, goaway)
        finally:
            self._dead = True
            self.event_shutting_down.set()
            self.event_closed.set()
        if self.on_close is not None:
            try:
                await self.on_close()
            except Exception:
                logger.exception("yamux: on_close callback failed")

    async def _shut_down(self, reason: str, goaway: int | None) -> None:
        if goaway is not None and not self._goaway_sent:
            self._goaway_sent = True
            with trio.move_on_after(1):
                try:
                    await self._send(_HEADER.pack(VERSION, TYPE_GO_AWAY, 0, 0, goaway))
                except MuxedStreamError:
                    pass
        self._dead = True
        self._close_reason = reason
        self.event_shutting_down.set()
        self._accept_send.close()
        for stream in list(self.streams.values()):
            if not stream._remote_fin:
                stream._on_reset(reason)
            stream._wake()
        self.streams.clear()
        for _, done in self._pings.values():
            done.set()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        try:
            await self.secured_conn.close()
        except Exception as exc:
            logger.debug("yamux: closing the secured connection failed: %s", exc)

    def __repr__(self) -> str:
        return f"<meshp2p Yamux peer={self.peer_id} initiator={self.is_initiator_value}>"


# -- making py-libp2p build this class -------------------------------------------------


async def _new_conn(self: MuxerMultistream, conn: ISecureConn, peer_id: ID) -> IMuxedConn:
    """``MuxerMultistream.new_conn`` that builds the class configured for the protocol."""
    protocol, transport_class = await self._selector.select(
        conn, conn.is_initiator, self.negotiate_timeout
    )
    muxed: IMuxedConn
    if transport_class is StockYamux:
        # Exactly what py-libp2p 0.8.1 does for its own Yamux.
        async def on_close() -> None:
            pass

        muxed = StockYamux(conn, peer_id, is_initiator=conn.is_initiator, on_close=on_close)
    else:
        muxed = transport_class(conn, peer_id)
    return self._annotate_connection(muxed, conn, protocol)


def honour_muxer_opt(host: Any) -> None:
    """Make ``host`` build the class its ``muxer_opt`` maps ``/yamux/1.0.0`` to.

    py-libp2p 0.8.1 builds its own ``Yamux`` whenever ``/yamux/1.0.0`` is negotiated,
    whatever class ``muxer_opt`` names. This replaces ``new_conn`` on this host's
    muxer negotiator only (an instance attribute); idempotent.
    """
    muxers = host.get_network().upgrader.muxer_multistream
    if not isinstance(muxers, MuxerMultistream):
        raise TypeError(f"unexpected py-libp2p muxer negotiator {type(muxers).__name__}")
    setattr(muxers, "new_conn", MethodType(_new_conn, muxers))  # noqa: B010
