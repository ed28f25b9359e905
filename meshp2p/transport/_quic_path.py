"""Per-connection tuning of py-libp2p's QUIC: datagram size, sends, windows, closes.

Applied by :class:`QuicPathTuner` to every QUIC connection of a node's host:
datagrams as large as the route to the peer allows (below), :func:`gate_sends`
(no packet building when nothing changed), :func:`bound_receive_windows`
(stream data granted as the application reads it, so a slow reader loses
nothing) and :func:`end_on_peer_close` (a peer's close is seen at once).

Datagram size per path: as large as the route to the peer allows.

py-libp2p's QUIC transport sends every datagram at one configured size (1200
bytes, the safe minimum for any internet path), and its cost is per datagram:
aioquic spends ~110-150 us of Python on each one whatever its size (in memory,
no sockets: 8.7 MB/s at 1200 bytes, 88 MB/s at 16 000). So the size of a
datagram is the QUIC data plane's throughput, and a path that carries bigger
ones should get them.

The rule (:func:`datagram_size`, pure): for a peer this machine reaches
directly (loopback, private, link-local, CGNAT/overlay ranges such as
Tailscale's 100.64/10, IPv6 ULA) the kernel's MTU of the route to it, less the
IP and UDP headers; for a global address the configured default, because the
first hop's MTU says nothing about the rest of an internet path and aioquic
does no path-MTU discovery (a datagram too big for a hop would be lost again on
every retransmission). Never below QUIC's 1200, never above
:data:`AIOQUIC_MAX`, and never above what the peer's ``max_udp_payload_size``
transport parameter accepts (quinn, under js-libp2p's QUIC, announces 1472 by
default).

:class:`QuicPathTuner` applies it to each QUIC connection a host opens or
accepts, after the handshake (a py-libp2p notifee): the connection's packet
builder, pacer and congestion controller take the new size, and a congestion
window still at its initial ten datagrams grows to ten of the new ones. Only
the sending side changes; receiving already takes any size (py-libp2p reads
up to 64 KiB per datagram).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from typing import Any

from aioquic import tls
from aioquic._buffer import Buffer
from aioquic.quic.packet import pull_quic_transport_parameters
from libp2p.abc import INetConn, INetStream, INetwork, INotifee
from multiaddr import Multiaddr

log = logging.getLogger(__name__)

#: QUIC's minimum and py-libp2p's default datagram size.
QUIC_MIN = 1200
#: aioquic writes a STREAM frame's length as a 2-byte varint (< 16384), so a
#: datagram must stay below that with room for the packet and frame headers.
AIOQUIC_MAX = 16_000
#: Ranges reached without crossing the internet: their route MTU is the path's.
_OVERLAY = ipaddress.ip_network("100.64.0.0/10")
# Linux socket options (not all exposed by the socket module).
_IP_MTU = getattr(socket, "IP_MTU", 14)
_IPV6_MTU = getattr(socket, "IPV6_MTU", 24)
_HEADERS = {4: 20 + 8, 6: 40 + 8}


def is_direct(ip: str) -> bool:
    """Whether ``ip`` is reached without crossing the public internet."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return (
        addr.is_loopback
        or addr.is_private
        or addr.is_link_local
        or (isinstance(addr, ipaddress.IPv4Address) and addr in _OVERLAY)
    )


def route_mtu(ip: str, port: int = 9) -> int | None:
    """The kernel's MTU of the route to ``ip`` (connecting a UDP socket sends nothing)."""
    try:
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((ip, port))
            level, option = (
                (socket.IPPROTO_IPV6, _IPV6_MTU)
                if family == socket.AF_INET6
                else (socket.IPPROTO_IP, _IP_MTU)
            )
            mtu = sock.getsockopt(level, option)
    except OSError:
        return None
    return mtu if isinstance(mtu, int) and mtu > 0 else None


def datagram_size(
    ip: str,
    *,
    mtu: int | None,
    default: int = QUIC_MIN,
    peer_max: int | None = None,
) -> int:
    """The UDP payload size to send to ``ip`` over a route of ``mtu`` bytes."""
    size = default
    if mtu is not None and is_direct(ip):
        version = 6 if ":" in ip and ipaddress.ip_address(ip.split("%", 1)[0]).version == 6 else 4
        size = max(size, mtu - _HEADERS[version])
    if peer_max is not None:
        size = min(size, peer_max)
    return max(QUIC_MIN, min(size, AIOQUIC_MAX))


def peer_max_udp_payload(quic: Any) -> int | None:
    """The peer's ``max_udp_payload_size`` transport parameter (None: not sent)."""
    for ext_type, ext_data in getattr(quic.tls, "received_extensions", None) or ():
        if ext_type in (
            tls.ExtensionType.QUIC_TRANSPORT_PARAMETERS,
            tls.ExtensionType.QUIC_TRANSPORT_PARAMETERS_DRAFT,
        ):
            params = pull_quic_transport_parameters(Buffer(data=ext_data))
            value = params.max_udp_payload_size
            return int(value) if value is not None else None
    return None


def set_datagram_size(quic: Any, size: int) -> bool:
    """Make an established aioquic connection send datagrams of ``size`` bytes.

    Returns False (and changes nothing) when this aioquic lacks the fields it
    sets, so an aioquic upgrade degrades to the default size, not to a crash.
    """
    loss: Any = getattr(quic, "_loss", None)
    pacer: Any = getattr(loss, "_pacer", None)
    cc: Any = getattr(loss, "_cc", None)
    if not (
        hasattr(quic, "_max_datagram_size")
        and hasattr(pacer, "_max_datagram_size")
        and hasattr(cc, "congestion_window")
    ):
        return False
    old = int(quic._max_datagram_size)
    if size == old:
        return True
    quic._max_datagram_size = size
    pacer._max_datagram_size = size
    if hasattr(cc, "_max_datagram_size"):
        cc._max_datagram_size = size
    # Still the initial window (ten old datagrams): make it ten new ones.
    if cc.congestion_window == 10 * old:
        cc.congestion_window = 10 * size
    return True


#: aioquic calls after which it may have something new to send.
_INPUTS = (
    "receive_datagram",
    "send_stream_data",
    "reset_stream",
    "stop_stream",
    "handle_timer",
    "close",
    "send_ping",
    "send_datagram_frame",
    "request_key_update",
    "change_connection_id",
)


def gate_sends(quic: Any, due: Any = None) -> bool:
    """Skip ``datagrams_to_send`` calls that cannot produce a datagram.

    py-libp2p asks aioquic for datagrams after every write, every received
    datagram, every event batch and every loop turn: about 14 calls per
    64-byte round trip where 4 send something, each building (and throwing
    away) a packet in Python. What aioquic sends depends only on the calls made
    to it and on its timer (ACK delay, loss detection, pacing), so a call with
    no input since the last one and before that timer would return nothing:
    answer it at once. Wraps this connection's methods (the instance, not the
    class); False if this aioquic lacks one of them. ``due()``, if given, says a
    MAX_STREAM_DATA is owed though no aioquic method was called (the app read).
    """
    if not all(callable(getattr(quic, name, None)) for name in (*_INPUTS, "datagrams_to_send")):
        return False
    state = {"dirty": True, "timer": None}
    send = quic.datagrams_to_send
    get_timer = quic.get_timer

    def datagrams_to_send(now: float) -> Any:
        timer = state["timer"]
        if not state["dirty"] and (timer is None or now < timer) and not (due and due()):
            return []
        state["dirty"] = False
        out = send(now=now)
        state["timer"] = get_timer()
        return out

    def marking(method: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            state["dirty"] = True
            return method(*args, **kwargs)

        return call

    for name in _INPUTS:
        setattr(quic, name, marking(getattr(quic, name)))
    quic.datagrams_to_send = lambda now: datagrams_to_send(now)
    return True


def _consumed(muxed: Any, stream: Any) -> int:
    """Bytes of ``stream`` the application has read (delivered minus still buffered)."""
    mine = muxed._streams.get(stream.stream_id)
    buffered = len(mine._receive_buffer) if mine is not None else 0
    return int(stream.receiver.starting_offset()) - buffered


def _window_due(muxed: Any, stream: Any, window: int) -> bool:
    return bool(
        stream.max_stream_data_local
        and _consumed(muxed, stream) + window - stream.max_stream_data_local >= window // 2
    )


def bound_receive_windows(muxed: Any, quic: Any, window: int) -> bool:
    """Grant a peer stream data only as the application reads it: nothing is dropped.

    aioquic doubles a stream's receive window whenever the peer has sent half of
    it, whether or not anyone read the data, and py-libp2p's QUIC stream drops
    whatever overflows its receive buffer (2 MiB by default): a reader lagging
    behind a fast writer loses data silently. Here MAX_STREAM_DATA is at most
    what the application read plus ``window`` (raised once half a window was
    read), so a stream never holds more than about two windows unread, well
    under the buffer py-libp2p is given (``mesh_host``). False if this aioquic
    or py-libp2p lacks what it relies on.
    """
    if not callable(getattr(quic, "_write_stream_limits", None)) or not isinstance(
        getattr(muxed, "_streams", None), dict
    ):
        return False
    from aioquic.quic.connection import MAX_STREAM_DATA_FRAME_CAPACITY
    from aioquic.quic.packet import QuicFrameType

    def write_stream_limits(builder: Any, space: Any, stream: Any) -> None:
        # aioquic's _write_stream_limits with the doubling replaced by consumption.
        if _window_due(muxed, stream, window):
            stream.max_stream_data_local = _consumed(muxed, stream) + window
        if stream.max_stream_data_local_sent != stream.max_stream_data_local:
            buf = builder.start_frame(
                QuicFrameType.MAX_STREAM_DATA,
                capacity=MAX_STREAM_DATA_FRAME_CAPACITY,
                handler=quic._on_max_stream_data_delivery,
                handler_args=(stream,),
            )
            buf.push_uint_var(stream.stream_id)
            buf.push_uint_var(stream.max_stream_data_local)
            stream.max_stream_data_local_sent = stream.max_stream_data_local

    quic._write_stream_limits = write_stream_limits
    return True


def announce_reads(muxed: Any, quic_stream: Any, window: int) -> None:
    """Wake the connection after a read that frees half a window (to send MAX_STREAM_DATA).

    py-libp2p's QUIC stream read does not touch the connection, whose loop may
    then sleep up to its idle interval before the peer learns it may send more.
    """
    read = quic_stream.read
    quic = muxed._quic

    async def read_and_announce(n: int | None = None) -> bytes:
        data: bytes = await read(n)
        stream = quic._streams.get(quic_stream.stream_id)
        if stream is not None and _window_due(muxed, stream, window):
            muxed._signal_activity()
        return data

    quic_stream.read = read_and_announce


def end_on_peer_close(quic: Any) -> bool:
    """Report a peer's CONNECTION_CLOSE at once instead of after the draining period.

    aioquic holds a connection the peer closed in "draining" for three probe
    timeouts (about a second here) before it emits ConnectionTerminated, and
    py-libp2p keeps listing the connection as open until then: a peer that
    disconnects and dials again finds its old connection still counted (with
    one connection per peer, the swarm then trims one of the two, sometimes the
    new one, and the next stream fails). Nothing is sent in draining anyway, so
    this ends it when the close arrives. False if this aioquic lacks the parts.
    """
    from aioquic.quic.connection import QuicConnectionState

    receive = getattr(quic, "receive_datagram", None)
    if not callable(receive) or not callable(getattr(quic, "_close_end", None)):
        return False

    def receive_datagram(data: bytes, addr: Any, now: float) -> None:
        receive(data, addr, now=now)
        if quic._state == QuicConnectionState.DRAINING and quic._close_at is not None:
            quic._close_end()

    quic.receive_datagram = receive_datagram
    return True


def tune_connection(muxed: Any) -> int | None:
    """Apply :func:`datagram_size` to a py-libp2p QUIC connection; the size, or None."""
    quic = getattr(muxed, "_quic", None)
    remote = getattr(muxed, "_remote_addr", None)
    if quic is None or not remote:
        return None
    ip, port = str(remote[0]), int(remote[1])
    size = datagram_size(
        ip,
        mtu=route_mtu(ip, port),
        default=int(quic._max_datagram_size),
        peer_max=peer_max_udp_payload(quic),
    )
    config = getattr(getattr(muxed, "_transport", None), "_config", None)
    window = int(getattr(config, "STREAM_FLOW_CONTROL_WINDOW", 0) or 0)
    if window and bound_receive_windows(muxed, quic, window):
        streams = quic._streams

        def due() -> bool:
            return any(_window_due(muxed, st, window) for st in streams.values())

        muxed._meshp2p_window = window
        gate_sends(quic, due)
    else:
        gate_sends(quic)
    end_on_peer_close(quic)
    if not set_datagram_size(quic, size):
        log.debug("this aioquic does not take a datagram size per connection")
        return None
    return size


class QuicPathTuner(INotifee):
    """Sizes the datagrams of every QUIC connection a host makes (see module doc)."""

    def __init__(self) -> None:
        #: Connections tuned, by the size they got (for status and tests).
        self.sizes: dict[int, int] = {}

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        muxed = getattr(conn, "muxed_conn", None)
        if muxed is None or not hasattr(muxed, "_quic"):
            return
        try:
            size = tune_connection(muxed)
        except Exception:  # never let a tuning failure break a connection
            log.exception("could not size QUIC datagrams for a connection")
            return
        if size is not None:
            self.sizes[size] = self.sizes.get(size, 0) + 1

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        return None

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        muxed = getattr(stream, "muxed_conn", None)
        window = getattr(muxed, "_meshp2p_window", None)
        quic_stream = getattr(stream, "muxed_stream", None)
        if window and quic_stream is not None and hasattr(quic_stream, "stream_id"):
            announce_reads(muxed, quic_stream, window)

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def listen(self, network: INetwork, multiaddr: Multiaddr) -> None:
        return None

    async def listen_close(self, network: INetwork, multiaddr: Multiaddr) -> None:
        return None
