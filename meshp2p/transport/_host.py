"""Building a libp2p host the way a node does, and the order it dials addresses in.

``mesh_host`` gives py-libp2p's host our transports: TCP with the lean Noise
phase and yamux of this package, QUIC on qh3 with batched UDP I/O (``_quic``),
one connection per peer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import multiaddr
from libp2p import new_host
from libp2p.abc import IHost
from libp2p.crypto.keys import KeyPair
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.transport.quic.config import QUICTransportConfig
from libp2p.transport.tcp.tcp import TCP

from .._errors import ConfigError
from ._noise import PROTOCOL_ID as NOISE_ID
from ._noise import NoiseTransport
from ._quic import QuicTransport
from ._quic_path import QuicPathTuner
from ._yamux import PROTOCOL_ID as YAMUX_ID
from ._yamux import Yamux, honour_muxer_opt

log = logging.getLogger("meshp2p.transport")

DEFAULT_LISTEN = ("/ip4/0.0.0.0/udp/0/quic-v1", "/ip4/0.0.0.0/tcp/0")
#: QUIC per-stream receive window (py-libp2p's default). _quic_path grants it
#: as the application reads, so a stream holds at most about two windows unread.
QUIC_STREAM_WINDOW = 1 << 20


def transport_rank(addr: str) -> int:
    """Dial preference: QUIC (the design's transport), then TCP, then anything else;
    a circuit through a relay (``/p2p-circuit``) last, whatever the relay's transport."""
    if "/p2p-circuit" in addr:
        return 3
    if "/quic" in addr:
        return 0
    return 1 if "/tcp/" in addr else 2


def transport_addrs(addrs: Iterable[str]) -> list[multiaddr.Multiaddr]:
    """Peer addresses without their /p2p/ part, ready to dial, in dial preference order
    (``transport_rank``, then as given); unreadable ones skipped (they come from other
    nodes, so a bad one must not stop us dialling the rest). A circuit keeps its relay's
    /p2p/ part: ``<relay>/p2p/<relay id>/p2p-circuit``."""
    out = []
    for addr in sorted(addrs, key=transport_rank):
        if "/p2p-circuit" in addr:
            bare = addr[: addr.index("/p2p-circuit")] + "/p2p-circuit"
        else:
            bare = addr.split("/p2p/")[0]
        try:
            out.append(multiaddr.Multiaddr(bare))
        except Exception:
            continue
    return out


def _quic_config() -> QUICTransportConfig:
    config = QUICTransportConfig(max_connections_per_peer=1)
    config.STREAM_FLOW_CONTROL_WINDOW = QUIC_STREAM_WINDOW
    config.CONNECTION_FLOW_CONTROL_WINDOW = 4 * QUIC_STREAM_WINDOW
    # py-libp2p drops data beyond this per stream; with windows granted as the
    # application reads (_quic_path.bound_receive_windows) it is never reached.
    config.MAX_STREAM_RECEIVE_BUFFER = 4 * QUIC_STREAM_WINDOW
    return config


def mesh_host(keypair: KeyPair, listen: Sequence[multiaddr.Multiaddr]) -> IHost:
    """A py-libp2p host as a node builds it (QUIC and/or TCP, as ``listen`` says).

    One connection per peer: py-libp2p's dialer waits 250 ms after each address
    ("happy eyeballs") unless a success reaches this limit, and with several
    connections it spreads streams over QUIC and TCP by chance. With one, a dial
    takes the first address (dial ``transport_addrs`` order) that answers, at once.
    """
    host = new_host(
        key_pair=keypair,
        listen_addrs=list(listen),
        # TCP: our Noise transport phase and yamux, the same wire protocols at a
        # fraction of py-libp2p's CPU per frame (see _noise and _yamux).
        sec_opt={NOISE_ID: NoiseTransport(keypair)},
        muxer_opt={YAMUX_ID: Yamux},
        # QUIC: ours on qh3 (_quic), not py-libp2p's on aioquic (~100 us of Python
        # per datagram); it dials and listens on the same /quic-v1 addresses.
        transports=[TCP(), QuicTransport(keypair)],
        connection_config=_quic_config(),
    )
    honour_muxer_opt(host)
    host.get_network().register_notifee(QuicPathTuner())
    return host


def parse_listen(addrs: Iterable[str]) -> list[multiaddr.Multiaddr]:
    out = []
    for addr in addrs:
        try:
            out.append(multiaddr.Multiaddr(addr))
        except Exception:
            raise ConfigError(
                f"--listen {addr!r} is not a multiaddr; try /ip4/0.0.0.0/udp/0/quic-v1"
            ) from None
    return out


def addrs_by_peer(addrs: Iterable[str]) -> dict[ID, list[multiaddr.Multiaddr]]:
    """Bootstrap addresses grouped by peer, each group in dial preference order."""
    grouped: dict[ID, list[str]] = {}
    for addr in addrs:
        try:
            info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        except Exception:
            log.warning("ignoring bootstrap address %s: not a /p2p/ multiaddr", addr)
            continue
        grouped.setdefault(info.peer_id, []).append(addr)
    return {peer: transport_addrs(group) for peer, group in grouped.items()}


def dialable_addrs(host: IHost, node_id: str) -> list[str]:
    """Our listen addresses as others can dial them, each ending in /p2p/<id>, in dial
    preference order (so invite tokens list QUIC first).

    A wildcard listen address (0.0.0.0) is replaced by this machine's addresses.
    """
    out: list[str] = []
    for addr in host.get_addrs():
        text = str(addr)
        if "/p2p/" not in text:
            text = f"{text}/p2p/{node_id}"
        if text.startswith("/ip4/0.0.0.0/"):
            rest = text[len("/ip4/0.0.0.0/") :]
            out.extend(f"/ip4/{ip}/{rest}" for ip in _local_ipv4())
        else:
            out.append(text)
    return sorted(dict.fromkeys(out), key=transport_rank)


def _local_ipv4() -> list[str]:
    import ifaddr

    ips = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ip.ip.startswith("169.254."):
                ips.append(ip.ip)
    # Loopback last: other machines cannot use it, but a node on this one can.
    return sorted(set(ips), key=lambda ip: (ip.startswith("127."), ip)) or ["127.0.0.1"]
