"""libp2p QUIC v1 on qh3 for py-libp2p's host: a transport, its listener, connections
and streams, driven by trio over batched UDP I/O.

qh3 keeps aioquic's sans-I/O API but does packet protection, ACKs, loss recovery,
congestion control and streams in Rust, so the Python left per packet is this
driver: one ``recvmmsg``/GRO read hands every waiting datagram to its connection in
one call, and a connection's datagrams leave in one ``sendmsg`` with GSO
(``qh3._hazmat.UdpSocketState``). The wire is libp2p's (RFC 9000, TLS 1.3, ALPN
``libp2p``, the libp2p certificate extension with both ends authenticated, one
bidirectional QUIC stream per libp2p stream; ``_quic_tls``), so stock py-libp2p,
js-libp2p and go-libp2p peers dial it and are dialled by it.

A listener tells its connections apart by the peer's address (one connection per
address and port, as every libp2p dialer makes); a dial uses a socket of its own.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any

import multiaddr
import trio
from libp2p.abc import IListener, IMuxedConn, IMuxedStream, ITransport
from libp2p.connection_types import ConnectionType
from libp2p.crypto.keys import KeyPair
from libp2p.custom_types import THandler
from libp2p.peer.id import ID
from libp2p.stream_muxer.exceptions import (
    MuxedConnUnavailable,
    MuxedStreamClosed,
    MuxedStreamEOF,
    MuxedStreamError,
    MuxedStreamReset,
)
from libp2p.transport.exceptions import OpenConnectionError
from qh3._hazmat import UdpSocketState, pull_quic_header
from qh3.quic import events
from qh3.quic.configuration import QuicConfiguration

from ._quic_path import is_direct, route_mtu
from ._quic_tls import (
    MeshQuicConnection,
    QuicPeerRefused,
    libp2p_certificate,
    peer_id_from_certificate,
    quic_configuration,
)

log = logging.getLogger("meshp2p.transport.quic")


class _QuietPeerClose(logging.Filter):
    """qh3 logs every CONNECTION_CLOSE a peer sends as a warning; it is routine."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Native peer close")


logging.getLogger("quic").addFilter(_QuietPeerClose())

#: Smallest UDP payload QUIC allows (RFC 9000 14); internet peers start here.
QUIC_MIN = 1200
#: Largest datagram we send to a direct peer (loopback's MTU is 64 KiB; bigger
#: datagrams mean fewer packets, and the kernel does not fragment on loopback).
QH3_MAX = 16_000
#: The connection-wide and per-stream receive windows we grant.
CONNECTION_WINDOW = 16 << 20
STREAM_WINDOW = 4 << 20
#: A writer waits while more than this is queued unsent on its stream.
SEND_HIGH_WATER = 1 << 20
#: Unread bytes a stream may hold before it is reset (the reader is not reading).
MAX_UNREAD = 64 << 20
HANDSHAKE_TIMEOUT = 10.0
ACCEPT_BACKLOG = 256
CLOSE_LINGER = 0.2
#: How far ahead of its pacing timer a small send may go (see QuicConn._transmit).
PACING_SKIP = 0.002
#: Bytes waiting to be sent that count as a small message for the pacing skip.
SMALL_SEND = 16 * 1024
#: Datagrams read per ``recvmmsg`` round before other tasks get a turn.
_RECV_ROUNDS = 16
#: How late the timer may send an ACK that did not ride on a reply (QuicConn._pump,
#: _rearm): far inside the max_ack_delay we announce (25 ms), and one wake-up of the
#: timer then serves many round trips instead of one each.
ACK_SLACK = 0.002
#: Writes in a row that do not yield to the scheduler (as _noise does for TCP).
_WRITE_STREAK = 8

Address = tuple[str, int]


def _norm(addr: Any) -> Address:
    return (str(addr[0]), int(addr[1]))


def quic_datagram_size(ip: str, port: int) -> int:
    """The UDP payload size for a peer: the route MTU less headers for peers reached
    directly (loopback, private, link-local, overlay), ``QUIC_MIN`` across the
    internet (a client's path-MTU discovery raises it there, see ``_client_config``)."""
    if not is_direct(ip):
        return QUIC_MIN
    mtu = route_mtu(ip, port)
    if mtu is None:
        return QUIC_MIN
    header = 48 if ipaddress.ip_address(ip.split("%", 1)[0]).version == 6 else 28
    return max(QUIC_MIN, min(mtu - header, QH3_MAX))


def _split_maddr(maddr: multiaddr.Multiaddr) -> tuple[str, int, socket.AddressFamily]:
    protos = [p.name for p in maddr.protocols()]
    if "udp" not in protos or "quic-v1" not in protos:
        raise OpenConnectionError(f"not a QUIC v1 address: {maddr}")
    if "ip4" in protos:
        ip, family = maddr.value_for_protocol("ip4"), socket.AF_INET
    elif "ip6" in protos:
        ip, family = maddr.value_for_protocol("ip6"), socket.AF_INET6
    else:
        raise OpenConnectionError(f"QUIC needs an IP address, not a name: {maddr}")
    return str(ip), int(maddr.value_for_protocol("udp")), family


def _quic_maddr(ip: str, port: int) -> multiaddr.Multiaddr:
    version = "ip6" if ":" in ip else "ip4"
    return multiaddr.Multiaddr(f"/{version}/{ip}/udp/{port}/quic-v1")


# -- streams --------------------------------------------------------------------------


class QuicStream(IMuxedStream):
    """One bidirectional QUIC stream as a libp2p stream."""

    def __init__(self, conn: QuicConn, stream_id: int, *, outbound: bool) -> None:
        self.conn = conn
        self.muxed_conn = conn
        self.stream_id = stream_id
        self.is_initiator = outbound
        self._chunks: deque[bytes] = deque()
        self._head = 0
        self._buffered = 0
        self._readable = trio.Event()
        self._waiting = False  # a task is parked in read()
        self._remote_fin = False
        self._local_fin = False
        self._reset = False
        self._reset_why = ""
        self._deadline = math.inf

    @property
    def is_closed(self) -> bool:
        return self._reset or (self._local_fin and self._remote_fin)

    def _on_data(self, data: bytes, fin: bool) -> bool:
        """Take the peer's data; True if it woke a task parked in ``read``."""
        if self._reset:
            return False
        if data:
            self._chunks.append(data)
            self._buffered += len(data)
        if fin:
            self._remote_fin = True
        self._readable.set()
        if self._buffered > MAX_UNREAD:
            self.conn._abort_stream(self, "the application stopped reading it")
        elif self.is_closed and not self._buffered:
            self.conn._forget(self)
        return self._waiting

    def _on_reset(self, why: str) -> None:
        if self._reset:
            return
        self._reset = True
        self._reset_why = why
        self._chunks.clear()
        self._buffered = 0
        self._readable.set()
        self.conn._forget(self)

    async def read(self, n: int | None = None) -> bytes:
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
            conn = self.conn
            if conn._flush_pending:  # what the last datagrams asked for goes now
                conn._transmit()
            self._waiting = True
            try:
                await self._wait(event, "read")
            finally:
                self._waiting = False
        data = self._take(self._buffered if n is None or n < 0 else n)
        if self.is_closed and not self._buffered:
            self.conn._forget(self)
        return data

    def _take(self, n: int) -> bytes:
        chunks = self._chunks
        first = chunks[0]
        if self._head == 0 and n >= len(first) and (len(chunks) == 1 or n == len(first)):
            chunks.popleft()
            self._buffered -= len(first)
            return first
        parts: list[bytes] = []
        need, head = n, self._head
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
        raise MuxedStreamError(f"stream {self.stream_id}: {what} deadline exceeded")

    def _check_writable(self) -> None:
        if self._reset:
            raise MuxedStreamReset(f"stream {self.stream_id} was reset: {self._reset_why}")
        if self.conn._dead:
            raise MuxedStreamReset(f"stream {self.stream_id}: {self.conn._close_reason}")
        if self._local_fin:
            raise MuxedStreamClosed(f"stream {self.stream_id} is closed for writing")

    async def write(self, data: bytes) -> None:
        self._check_writable()
        if data:
            self.conn._send_stream(self.stream_id, data, False)
        await self.conn._wait_for_send_room(self)

    async def close(self) -> None:
        """Half-close: FIN. Reading goes on until the peer closes its side."""
        if self._local_fin or self._reset or self.conn._dead:
            await trio.lowlevel.checkpoint()
            return
        self._local_fin = True
        self.conn._send_stream(self.stream_id, b"", True)
        if self.is_closed and not self._buffered:
            self.conn._forget(self)
        await trio.lowlevel.checkpoint()

    async def close_write(self) -> None:
        await self.close()

    async def reset(self) -> None:
        self.conn._abort_stream(self, "reset locally")
        await trio.lowlevel.checkpoint()

    def set_deadline(self, ttl: int) -> None:
        if ttl < 0:
            raise ValueError(f"deadline ttl must be >= 0, got {ttl}")
        self._deadline = trio.current_time() + ttl

    def get_remote_address(self) -> tuple[str, int] | None:
        return self.conn.get_remote_address()

    async def __aenter__(self) -> QuicStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<QuicStream {self.stream_id} peer={self.conn.peer_id}>"


# -- connections ----------------------------------------------------------------------


class QuicConn(IMuxedConn):
    """A libp2p connection over one qh3 QUIC connection (already secure and muxed)."""

    transport_name = "quic"

    def __init__(
        self,
        endpoint: _Endpoint,
        quic: MeshQuicConnection,
        remote: Address,
        *,
        is_initiator: bool,
        expected_peer: ID | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.quic = quic
        self.remote = remote
        self.is_initiator_value = is_initiator
        self.expected_peer = expected_peer
        self.peer_id: ID = expected_peer  # type: ignore[assignment]  # set by _verified
        self.on_close: Callable[[], Awaitable[Any]] | None = None
        self.streams: dict[int, QuicStream] = {}
        self._accept_send, self._accept_recv = trio.open_memory_channel[QuicStream](ACCEPT_BACKLOG)
        self.event_started = trio.Event()
        self.event_closed = trio.Event()
        self.handshake_done = trio.Event()
        self._progress = trio.Event()
        self._dead = False
        self._close_reason = ""
        self._peer_error: str | None = None
        self._floor = 0.0
        # The peer's next bidirectional stream id: client-initiated ones are 0 mod 4.
        self._next_inbound = 1 if is_initiator else 0
        self._skipped_inbound: set[int] = set()
        # run_timer sleeps in this scope; its deadline is moved (never a task woken)
        # when qh3's timer comes sooner.
        self._timer_scope: trio.CancelScope | None = None
        # Set when datagrams that woke a reader were received: what qh3 has to send
        # now (an ACK) waits for that reader's reply or its next blocking read.
        self._flush_pending = False
        self._flush_by = math.inf
        self._armed_at = math.inf  # the deadline of _timer_scope
        self._write_streak = 0
        # trio.current_time without its two layers of lookups (it is read per datagram).
        self._clock = trio.lowlevel.current_clock().current_time

    # -- IMuxedConn ------------------------------------------------------------------

    @property
    def is_initiator(self) -> bool:
        return self.is_initiator_value

    @property
    def is_established(self) -> bool:
        return self.handshake_done.is_set() and not self._dead

    @property
    def is_closed(self) -> bool:
        return self._dead

    @property
    def datagram_size(self) -> int:
        return int(self.quic.configuration.max_datagram_size)

    def get_transport_addresses(self) -> list[multiaddr.Multiaddr]:
        return [_quic_maddr(*self.remote)]

    def get_connection_type(self) -> ConnectionType:
        return ConnectionType.DIRECT

    def get_remote_address(self) -> tuple[str, int] | None:
        return self.remote

    async def start(self) -> None:
        """Runs while the connection lives (its I/O runs in its endpoint)."""
        self.event_started.set()
        await self.event_closed.wait()
        if self.on_close is not None:
            hook, self.on_close = self.on_close, None
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await hook()

    async def close(self) -> None:
        self._abandon("connection closed locally")
        await trio.lowlevel.checkpoint()

    def _abandon(self, reason: str) -> None:
        """Close now, without waiting (safe in a cancelled task)."""
        if not self._dead:
            self._send_close()
            self._terminate(reason)

    def _send_close(self) -> None:
        """Send CONNECTION_CLOSE now, even if qh3's pacer would hold it a while: the
        connection ends here, and a close that never leaves costs the peer an idle
        timeout."""
        quic = self.quic
        try:
            quic.close(reason_phrase="closed")
            now = self._now()
            for _ in range(3):
                datagrams = quic.datagrams_to_send(now)
                if datagrams:
                    self.endpoint.send([d for d, _ in datagrams], self.remote)
                    return
                timer = quic.get_timer()
                if timer is None:
                    return
                now = max(now, timer)
                quic.handle_timer(now)
        except Exception as exc:
            log.debug("QUIC close to %s: %s", self.remote, exc)

    async def open_stream(self) -> QuicStream:
        if self._dead:
            raise MuxedConnUnavailable(f"QUIC connection is closed ({self._close_reason})")
        sid = self.quic.get_next_available_stream_id()
        stream = QuicStream(self, sid, outbound=True)
        self.streams[sid] = stream
        # A stream exists for the peer once it carries a frame; the first write
        # (multistream-select's header) comes at once.
        try:
            self.quic._open_stream()
        except Exception as exc:
            self.streams.pop(sid, None)
            raise MuxedConnUnavailable(f"cannot open a QUIC stream: {exc}") from None
        await trio.lowlevel.checkpoint()
        return stream

    async def accept_stream(self) -> QuicStream:
        try:
            return await self._accept_recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise MuxedConnUnavailable(
                f"QUIC connection is closed ({self._close_reason})"
            ) from None

    # -- driving qh3 ---------------------------------------------------------------------

    def _now(self) -> float:
        # Never behind a time already given to qh3 (see _transmit's pacing skip).
        now = self._clock()
        if now < self._floor:
            return self._floor
        return now

    def receive(self, datagrams: list[bytes]) -> None:
        now = self._now()
        quic = self.quic
        core = quic._core
        try:
            if core is not None and quic._handshake_complete and quic._quic_logger is None:
                # What qh3's receive_many_datagrams does after the handshake, less its
                # per-call address check and logging hooks.
                quic._call_core(core.receive_many_datagrams, datagrams, self.remote, now)
                quic._drain_core()
            else:
                quic.receive_many_datagrams(datagrams, self.remote, now)
        except Exception as exc:
            log.debug("QUIC %s: %s", self.remote, exc)
            self._peer_error = str(exc)
        self._pump(may_defer=True)

    def _pump(self, *, may_defer: bool = False) -> None:
        """Hand qh3's events to streams, send what it has, re-arm the timer.

        With ``may_defer`` (datagrams just arrived), when the events woke a task
        parked in ``read``, sending waits for that task: it usually answers at once,
        and then what qh3 has due now (the ACK for these datagrams) leaves in the
        same datagram as the answer, not in a datagram of its own: one datagram each
        way per round trip, not two. The reader's write sends it, or its next read
        that has to wait, or else the timer ACK_SLACK later.

        An error from qh3 ends this connection only: the listener's socket and its
        other connections go on.
        """
        quic = self.quic
        try:
            woke = False
            pending = quic._events  # what quic.next_event() pops from
            while pending:
                if self._on_event(pending.popleft()):
                    woke = True
            if woke and may_defer:
                if not self._flush_pending:
                    self._flush_pending = True
                    self._flush_by = self._now() + ACK_SLACK
                self._rearm()
            else:
                self._transmit()
            closed = quic._close_event
            if closed is not None and not self._dead:
                # The peer's CONNECTION_CLOSE: qh3 reports it only after the draining
                # period (~3 PTO); a peer that dials again meanwhile would find two
                # connections where a node keeps one. Nothing more can arrive: end now.
                why = closed.reason_phrase or f"code {closed.error_code}"
                self._terminate(f"connection closed by the peer ({why})")
        except Exception as exc:
            self._fail(exc)
        self._progress.set()

    def _fail(self, exc: Exception) -> None:
        log.warning("QUIC connection to %s failed: %s", self.remote, exc)
        self._peer_error = f"QUIC error: {exc}"
        self._terminate(self._peer_error)

    def _transmit(self, *, after_write: bool = False) -> None:
        """Send every datagram qh3 has now (one ``sendmsg``), then re-arm the timer."""
        self._flush_pending = False
        core = self.quic._core
        if self._dead or core is None:
            return
        try:
            now = self._now()
            # After a write: when everything qh3 had fitted in one small datagram, it
            # is not asked again. qh3 charges every poll that congestion allows a whole
            # max_datagram_size of pacing credit, even one that finds nothing to send,
            # so the empty poll that ends the loop would double what a message-sized
            # exchange costs the pacer (and hold its replies once credit runs out).
            one_small = after_write and self.quic._handshake_confirmed
            for _ in range(4):
                # qh3's datagrams_to_send without its per-datagram logging hooks
                # (they parse every packet header even with no logger).
                datagrams = []
                while (transmit := core.poll_transmit(now)) is not None:
                    datagrams.append(transmit[0])
                    if (
                        one_small
                        and len(transmit[0]) < QUIC_MIN
                        and len(datagrams) == 1
                        and not core.get_send_buffer_size(None)
                    ):
                        break
                if datagrams:
                    self.endpoint.send(datagrams, self.remote)
                    self._progress.set()
                # qh3 paces in whole datagrams of max_datagram_size: with the large
                # ones a direct route allows, a 64-byte reply waited ~1 ms for pacing
                # credit. Pacing spreads a burst over an RTT; when what waits is a
                # small message, take the credit now (at most PACING_SKIP early); bulk
                # data stays paced.
                timer = core.get_timer()
                if timer is None:
                    break
                kind, at = timer
                if kind != "pacing":
                    # qh3 shows only its earliest timer, and an ACK timer can hide the
                    # pacer's: data that waits after a poll that sent nothing, with the
                    # congestion window open, waits for pacing credit, at most one
                    # datagram's worth at the pacer's rate (congestion window per RTT).
                    if datagrams or not kind.startswith("ack"):
                        break
                    wait = self._pacing_wait(core)
                    if wait is None:
                        break
                    at = now + wait
                if at - trio.current_time() > PACING_SKIP:
                    break
                waiting = core.get_send_buffer_size(None)
                if not waiting:
                    break  # no data waits: qh3 polls its pacer even with nothing to send
                if datagrams and waiting > SMALL_SEND:
                    break
                if at > now:
                    self._floor = now = at
                self.quic.handle_timer(now)
            else:
                timer = core.get_timer()
        except Exception as exc:
            self._fail(exc)
            return
        self._arm(timer)

    def _pacing_wait(self, core: Any) -> float | None:
        """At most how long qh3's pacer holds the next datagram (one datagram's worth
        at congestion window per RTT); None when the congestion window holds it."""
        window = core.congestion_window
        size = self.quic.configuration.max_datagram_size
        if window - core.bytes_in_flight < size:
            return None
        rtt = max(core.smoothed_rtt or self.quic.configuration.initial_rtt, 0.001)
        return float(size * rtt / max(window, 1))

    def _rearm(self) -> None:
        core = self.quic._core
        if self._timer_scope is not None and core is not None:
            self._arm(core.get_timer())

    def _arm(self, timer: tuple[str, float] | None) -> None:
        """Make run_timer wake by qh3's next timer.

        Its deadline only ever moves earlier here (moving it costs ~5 us; a wake-up
        for nothing, when a deadline set here passed away meanwhile, costs a task
        switch, and run_timer re-arms then). ACK timers get ACK_SLACK: in a
        conversation the ACK rides on the next datagram out long before, and one
        deadline then covers many round trips."""
        scope = self._timer_scope
        core = self.quic._core
        if scope is None or core is None or timer is None:
            return  # (no scope: run_timer is running and re-arms when it sleeps again)
        kind, at = timer
        armed = self._armed_at
        if at < armed and kind.startswith("ack"):  # (later than armed: woken by then)
            if not core.get_send_buffer_size(None):
                if kind == "ack_application":
                    at += ACK_SLACK
            else:
                # Data of ours waits too, held by the pacer whose own (later) timer
                # this ACK timer hides: wake when the pacer lets it go.
                wait = self._pacing_wait(core)
                if wait is not None:
                    at = max(at, self._now() + wait)
        if self._flush_pending and at > self._flush_by:
            at = self._flush_by
        if at < armed:
            scope.deadline = self._armed_at = at

    def _on_event(self, event: events.QuicEvent) -> bool:
        """Act on one qh3 event; True if it woke a task that may answer at once."""
        if isinstance(event, events.StreamDataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is None:
                stream = self._inbound_stream(event.stream_id)
                if stream is None:
                    return False
                stream._on_data(event.data, event.end_stream)
                return True  # a new stream: its handler answers (multistream-select)
            return stream._on_data(event.data, event.end_stream)
        if isinstance(event, events.StreamReset):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream._on_reset(f"reset by the peer (code {event.error_code})")
        elif isinstance(event, events.StopSendingReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                self._abort_stream(stream, "the peer stopped reading it")
        elif isinstance(event, events.HandshakeCompleted):
            self._verified()
        elif isinstance(event, events.ConnectionTerminated):
            why = event.reason_phrase or f"code {event.error_code}"
            self._terminate(f"connection closed by the peer ({why})")
        return False

    def _inbound_stream(self, sid: int) -> QuicStream | None:
        """The peer's stream ``sid``, new; None if it is not a new stream of the peer's.

        The first frames of concurrent streams can arrive in any order: ids skipped
        over are remembered until their own frames come (qh3 knows a stream only then,
        so it is accepted only then too)."""
        ours = (sid & 1) == (0 if self.is_initiator_value else 1)
        if ours or sid & 2:
            return None  # a stream of ours already forgotten, or a unidirectional one
        if sid >= self._next_inbound:
            self._skipped_inbound.update(range(self._next_inbound, sid, 4))
            self._next_inbound = sid + 4
        elif sid in self._skipped_inbound:
            self._skipped_inbound.discard(sid)
        else:
            return None  # accepted before and finished since
        stream = QuicStream(self, sid, outbound=False)
        try:
            self._accept_send.send_nowait(stream)
        except trio.WouldBlock:
            self.quic.reset_stream(sid, 0)
            self.quic.stop_stream(sid, 0)
            return None
        self.streams[sid] = stream
        return stream

    def _verified(self) -> None:
        if self.is_initiator_value:
            cert = self.quic.get_peercert()
            try:
                if cert is None:
                    raise QuicPeerRefused("the peer sent no certificate")
                self.peer_id = peer_id_from_certificate(cert.public_bytes(), self.expected_peer)
            except QuicPeerRefused as exc:
                self._peer_error = str(exc)
                self.quic.close(error_code=0x0100 + 42, reason_phrase="peer id refused")
                self._transmit()
                self._terminate(str(exc))
                return
        self.handshake_done.set()

    def _send_stream(self, sid: int, data: bytes, fin: bool) -> None:
        quic = self.quic
        core = quic._core
        try:
            if core is not None and quic._handshake_complete:
                # qh3's send_stream_data once the handshake is done, less its stream
                # bookkeeping: open_stream recorded ours, the peer's need none.
                core.send_stream(sid, data, fin)
            else:
                quic.send_stream_data(sid, data, fin)
        except Exception as exc:
            raise MuxedStreamReset(f"stream {sid}: {exc}") from None
        self._transmit(after_write=True)

    async def _wait_for_send_room(self, stream: QuicStream) -> None:
        # A write that did not have to wait yields to the scheduler only every
        # _WRITE_STREAK-th time in a row (as _noise's for TCP): a yield per write costs
        # a scheduler pass per message, and py-libp2p's stream yields on its own lock.
        await trio.lowlevel.checkpoint_if_cancelled()
        self._write_streak += 1
        if self._write_streak >= _WRITE_STREAK:
            self._write_streak = 0
            await trio.lowlevel.cancel_shielded_checkpoint()
        core = self.quic._core
        while not self._dead and not stream._reset:
            if core is None or core.get_send_buffer_size(stream.stream_id) <= SEND_HIGH_WATER:
                return
            self._write_streak = 0
            event = self._progress
            if event.is_set():
                self._progress = event = trio.Event()
            await stream._wait(event, "write")
        stream._check_writable()

    def _abort_stream(self, stream: QuicStream, why: str) -> None:
        log.debug("QUIC %s: stream %d aborted: %s", self.remote, stream.stream_id, why)
        if not stream._reset and not self._dead:
            try:
                if not stream._local_fin:
                    self.quic.reset_stream(stream.stream_id, 0)
                if not stream._remote_fin:
                    self.quic.stop_stream(stream.stream_id, 0)
            except Exception:
                pass
            stream._on_reset(why)
            self._pump()
        else:
            stream._on_reset(why)

    def _forget(self, stream: QuicStream) -> None:
        self.streams.pop(stream.stream_id, None)

    def _terminate(self, reason: str) -> None:
        if self._dead:
            return
        self._dead = True
        self._close_reason = reason
        log.debug("QUIC connection %s (peer %s) ended: %s", self.remote, self.peer_id, reason)
        for stream in list(self.streams.values()):
            stream._on_reset(reason)
        self._accept_send.close()
        self._progress.set()
        if self._timer_scope is not None:
            self._timer_scope.cancel()
        self.handshake_done.set()
        self.event_closed.set()
        self.endpoint.forget(self)

    async def run_timer(self) -> None:
        """Fire qh3's timer (ACK delay, loss detection, pacing, idle timeout) when it
        is due, and send what a woken reader left unsent (see ``_pump``)."""
        while not self._dead:
            with trio.CancelScope() as scope:
                self._timer_scope = scope
                self._armed_at = math.inf
                self._rearm()
                await trio.sleep_forever()
            self._timer_scope = None
            if self._dead:
                return
            core = self.quic._core
            timer = core.get_timer() if core is not None else None
            now = self._now()
            if timer is not None and timer[1] <= now:
                try:
                    self.quic.handle_timer(now)
                except Exception as exc:
                    self._terminate(f"QUIC error: {exc}")
                    return
                self._pump()
                if self.quic._close_event is not None and self.quic.get_timer() is None:
                    self._terminate("connection timed out")
            elif self._flush_pending and now >= self._flush_by:
                self._transmit()

    def __repr__(self) -> str:
        return f"<QuicConn {self.remote} peer={self.peer_id}>"


# -- UDP endpoints ----------------------------------------------------------------------


class _Endpoint:
    """A UDP socket and the QUIC connections on it; ``run`` reads it."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.udp = UdpSocketState(sock.fileno())
        self.conns: dict[Address, QuicConn] = {}
        self.on_initial: Callable[[bytes, Address], QuicConn | None] | None = None
        self.nursery: trio.Nursery | None = None
        self._pending: deque[tuple[list[bytes], Address]] = deque()
        self._writable = trio.Event()
        self.closed = trio.Event()

    @property
    def local(self) -> Address:
        return _norm(self.sock.getsockname())

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                nursery.start_soon(self._flush_pending)
                task_status.started()
                await self._read_loop()
        finally:
            self.closed.set()
            for conn in list(self.conns.values()):
                conn._terminate("the UDP socket closed")
            self.sock.close()

    async def _read_loop(self) -> None:
        udp = self.udp
        while True:
            await trio.lowlevel.wait_readable(self.sock)
            for _ in range(_RECV_ROUNDS):
                try:
                    batch = udp.recv()
                except OSError as exc:  # e.g. ICMP port unreachable reported late
                    log.debug("QUIC recv on %s: %s", self.local, exc)
                    continue
                if not batch:
                    break
                self._deliver(batch)
                if len(batch) == 1:
                    # One datagram from a read with room for many: the socket was
                    # empty (wait_readable says so at once if not), so no second read.
                    break
            # No extra checkpoint: wait_readable is one (a scheduler pass per wake-up
            # is a round trip's worth of latency when both ends share a process).

    def _deliver(self, batch: list[tuple[bytes, Any]]) -> None:
        # Runs of datagrams from one peer go to its connection in one call.
        run: list[bytes] = []
        run_addr: Address | None = None
        for data, addr in batch:
            key = _norm(addr)
            if key != run_addr and run:
                self._to_conn(run, run_addr)  # type: ignore[arg-type]
                run = []
            run_addr = key
            run.append(data)
        if run:
            self._to_conn(run, run_addr)  # type: ignore[arg-type]

    def _to_conn(self, datagrams: list[bytes], addr: Address) -> None:
        conn = self.conns.get(addr)
        if conn is None:
            if self.on_initial is None:
                return
            conn = self.on_initial(datagrams[0], addr)
            if conn is None:
                return
        conn.receive(datagrams)

    def add(self, conn: QuicConn) -> None:
        self.conns[conn.remote] = conn
        assert self.nursery is not None
        self.nursery.start_soon(conn.run_timer)

    def forget(self, conn: QuicConn) -> None:
        if self.conns.get(conn.remote) is conn:
            del self.conns[conn.remote]

    def send(self, datagrams: list[bytes], addr: Address) -> None:
        if self._pending:
            self._pending.append((datagrams, addr))
            return
        sent = self._send_now(datagrams, addr)
        if sent < len(datagrams):
            self._pending.append((datagrams[sent:], addr))
            self._writable.set()

    def _send_now(self, datagrams: list[bytes], addr: Address) -> int:
        try:
            return int(self.udp.send(datagrams, addr))
        except BlockingIOError as exc:
            return int(getattr(exc, "datagrams_sent", 0) or 0)
        except OSError as exc:
            # Unreachable and the like: QUIC's loss recovery and timeouts deal with it.
            log.debug("QUIC send to %s: %s", addr, exc)
            return len(datagrams)

    async def _flush_pending(self) -> None:
        while True:
            await self._writable.wait()
            self._writable = trio.Event()
            while self._pending:
                await trio.lowlevel.wait_writable(self.sock)
                datagrams, addr = self._pending[0]
                sent = self._send_now(datagrams, addr)
                if sent >= len(datagrams):
                    self._pending.popleft()
                else:
                    self._pending[0] = (datagrams[sent:], addr)

    def close(self) -> None:
        if self.nursery is not None:
            self.nursery.cancel_scope.cancel()


def _udp_socket(family: socket.AddressFamily, bind: Address) -> trio.socket.SocketType:
    sock = trio.socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    except OSError:
        pass
    return sock


# -- transport and listener -----------------------------------------------------------


@dataclass(frozen=True)
class QuicSettings:
    """Per-host QUIC knobs (tests shorten the timeouts)."""

    handshake_timeout: float = HANDSHAKE_TIMEOUT
    idle_timeout: float = 30.0


class QuicTransport(ITransport):
    """libp2p QUIC v1 over qh3 (``/ip4|ip6/.../udp/N/quic-v1``)."""

    def __init__(self, keypair: KeyPair, settings: QuicSettings | None = None) -> None:
        self.keypair = keypair
        self.local_peer = ID.from_pubkey(keypair.public_key)
        self.settings = settings or QuicSettings()
        self._cert, self._key = libp2p_certificate(keypair)
        self._base: dict[bool, QuicConfiguration] = {}
        self._nursery: trio.Nursery | None = None
        self.listeners: list[QuicListener] = []
        #: Why the last QUIC dial to a peer failed (cleared when one succeeds): the
        #: swarm then dials the peer's next address, TCP, by itself; status shows this.
        self.failures: dict[ID, str] = {}

    # py-libp2p's TransportManager calls these.
    def set_background_nursery(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    def protocols(self) -> list[str]:
        return ["quic-v1"]

    def can_dial(self, maddr: multiaddr.Multiaddr) -> bool:
        try:
            _split_maddr(maddr)
        except OpenConnectionError:
            return False
        return True

    def can_listen(self, maddr: multiaddr.Multiaddr) -> bool:
        return self.can_dial(maddr)

    def config(self, *, is_client: bool, datagram_size: int) -> QuicConfiguration:
        base = self._base.get(is_client)
        if base is None:
            base = quic_configuration(
                self._cert, self._key, is_client=is_client, max_datagram_size=QUIC_MIN
            )
            base.max_data = CONNECTION_WINDOW
            base.max_stream_data = STREAM_WINDOW
            base.idle_timeout = self.settings.idle_timeout
            self._base[is_client] = base
        # Path-MTU discovery only where the size was not read off a direct route.
        return replace(
            base,
            max_datagram_size=datagram_size,
            probe_datagram_size=is_client and datagram_size == QUIC_MIN,
        )

    async def dial(self, maddr: multiaddr.Multiaddr) -> QuicConn:  # type: ignore[override]
        ip, port, family = _split_maddr(maddr)
        try:
            peer_text = maddr.value_for_protocol("p2p")
            expected = ID.from_base58(str(peer_text)) if peer_text else None
        except Exception:
            expected = None
        if self._nursery is None:
            raise OpenConnectionError("the QUIC transport is not running (no nursery)")
        sock = _udp_socket(family, ("", 0))
        await sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        endpoint = _Endpoint(sock)
        await self._nursery.start(endpoint.run)
        remote = (ip, port)
        quic = MeshQuicConnection(
            configuration=self.config(is_client=True, datagram_size=quic_datagram_size(ip, port))
        )
        conn = QuicConn(endpoint, quic, remote, is_initiator=True, expected_peer=expected)
        endpoint.add(conn)
        # The dialler's socket lives as long as its one connection.
        assert endpoint.nursery is not None
        endpoint.nursery.start_soon(_close_when_done, endpoint, conn)
        quic.connect(remote, conn._now())
        conn._pump()
        try:
            with trio.move_on_after(self.settings.handshake_timeout):
                await conn.handshake_done.wait()
        finally:
            if not conn.is_established:
                # Failed, timed out or cancelled (the caller's deadline, the swarm's
                # happy eyeballs): end the connection and its socket now. Left
                # running, a handshake the peer completes later (a frozen peer that
                # thaws with our Initial in its socket buffer) would make a connection
                # the peer uses and our swarm never hears of.
                why = conn._peer_error or conn._close_reason or "no answer"
                conn._abandon("the dial was given up")
        if not conn.is_established:
            if expected is not None:
                self.failures[expected] = f"QUIC dial to {ip}:{port} failed: {why}"
            raise OpenConnectionError(f"QUIC dial to {maddr} failed: {why}")
        self.failures.pop(conn.peer_id, None)
        return conn

    def create_listener(self, handler_function: THandler) -> QuicListener:
        listener = QuicListener(self, handler_function)
        self.listeners.append(listener)
        return listener

    async def close(self) -> None:
        for listener in list(self.listeners):
            await listener.close()


async def _close_when_done(endpoint: _Endpoint, conn: QuicConn) -> None:
    await conn.event_closed.wait()
    await trio.sleep(CLOSE_LINGER)  # let the CONNECTION_CLOSE leave
    endpoint.close()


class QuicListener(IListener):
    """Accepts QUIC connections on one UDP socket; hands verified ones to the swarm."""

    def __init__(self, transport: QuicTransport, handler: THandler) -> None:
        self.transport = transport
        self.handler = handler
        self.background_nursery: trio.Nursery | None = None
        self.endpoint: _Endpoint | None = None
        self._addrs: list[multiaddr.Multiaddr] = []

    async def listen(self, maddr: multiaddr.Multiaddr) -> None:
        ip, port, family = _split_maddr(maddr)
        nursery = self.background_nursery or self.transport._nursery
        if nursery is None:
            raise OpenConnectionError("QUIC listener has no nursery to run in")
        sock = _udp_socket(family, (ip, port))
        try:
            await sock.bind((ip, port))
        except OSError as exc:
            sock.close()
            raise OpenConnectionError(f"cannot listen on {maddr}: {exc}") from None
        endpoint = _Endpoint(sock)
        endpoint.on_initial = self._on_initial
        await nursery.start(endpoint.run)
        self.endpoint = endpoint
        bound = endpoint.local
        self._addrs.append(_quic_maddr(ip, bound[1]))

    def _on_initial(self, data: bytes, addr: Address) -> QuicConn | None:
        assert self.endpoint is not None
        try:
            header = pull_quic_header(data, 0, 8)
        except ValueError:
            return None
        if len(data) < QUIC_MIN or header[1] != 0:  # only a long-header Initial opens
            return None
        holder: dict[str, ID] = {}

        def check(der: bytes) -> None:
            holder["peer"] = peer_id_from_certificate(der)

        config = self.transport.config(is_client=False, datagram_size=quic_datagram_size(*addr))
        quic = MeshQuicConnection(
            configuration=config,
            original_destination_connection_id=header[3],
            client_check=check,
        )
        conn = _InboundConn(self, quic, addr, holder)
        self.endpoint.add(conn)
        return conn

    def get_addrs(self) -> tuple[multiaddr.Multiaddr, ...]:
        return tuple(self._addrs)

    async def close(self) -> None:
        if self.endpoint is not None:
            for conn in list(self.endpoint.conns.values()):
                await conn.close()
            self.endpoint.close()
            await self.endpoint.closed.wait()
            self.endpoint = None


class _InboundConn(QuicConn):
    def __init__(
        self,
        listener: QuicListener,
        quic: MeshQuicConnection,
        remote: Address,
        holder: dict[str, ID],
    ) -> None:
        assert listener.endpoint is not None
        super().__init__(listener.endpoint, quic, remote, is_initiator=False)
        self._listener = listener
        self._holder = holder

    def _verified(self) -> None:
        peer = self._holder.get("peer")
        if peer is None:  # cannot happen: the TLS layer refuses a handshake without one
            self._terminate("the peer proved no peer id")
            return
        self.peer_id = peer
        super()._verified()
        nursery = self.endpoint.nursery
        if nursery is not None:
            nursery.start_soon(self._serve)

    async def _serve(self) -> None:
        """Run the swarm's handler for this connection until the connection ends (the
        handler itself waits for the whole swarm to stop: one task per connection
        ever accepted, otherwise)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._listener.handler, self)  # type: ignore[arg-type]
            await self.event_closed.wait()
            nursery.cancel_scope.cancel()


def quic_transport(keypair: KeyPair) -> QuicTransport:
    """The QUIC transport a node gives its host."""
    return QuicTransport(keypair)


def quic_fallback_reason(host: Any, peer: ID) -> str | None:
    """Why ``host`` is not on QUIC with ``peer`` (its last QUIC dial failed), or None."""
    try:
        transports = host.get_network().transport_manager.get_transports()
    except AttributeError:
        return None
    for transport in transports:
        if isinstance(transport, QuicTransport) and peer in transport.failures:
            return transport.failures[peer]
    return None
