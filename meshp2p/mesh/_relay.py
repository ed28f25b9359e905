"""Circuit relay v2 between members: who relays, who reserves, dialling through a relay.

A node behind NAT cannot be dialled, but it can dial out. It reserves a slot on up to
``MAX_RELAYS`` members it reached directly, and announces ``<relay>/p2p-circuit/p2p/<it>``
after its own addresses; a member that cannot dial those dials the circuit instead.
py-libp2p's circuit v2 (``libp2p.relay.circuit_v2``) does the wire protocol; this module
decides and gates:

- **Who offers relaying:** every full member, to members only (the hop and stop
  handlers are wrapped in ``MeshService.members_only``), within ``RELAY_LIMITS``.
  Passive clients neither relay nor reserve, but dial through relays.
- **Who reserves:** a full member none of whose addresses is global (``needs_relay``).
  Without AutoNAT a node cannot know whether a private address is reachable from
  where its peers are, so it reserves whenever it might be NAT'd; the circuit is
  announced last and dialled only when the direct addresses fail.

- **Hole punching:** over a relayed connection py-libp2p's DCUtR (members only too)
  has both sides dial each other's observed address at once; where the NATs keep
  ports and drop (rather than refuse) unsolicited packets, a direct connection opens
  and the relayed one is closed after a grace period. ``/api/status`` then says
  ``hole-punched`` for it.

The pure helpers (``needs_relay``, ``can_relay_for``, ``circuit_addr``,
``split_addrs``, ``connection_path``) decide; ``MeshRelay`` is the trio driver.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import multiaddr
import trio
from libp2p.abc import IHost
from libp2p.connection_types import ConnectionType
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2 import (
    DCUTR_PROTOCOL_ID,
    CircuitV2Protocol,
    CircuitV2Transport,
    DCUtRProtocol,
    RelayLimits,
)
from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL
from libp2p.relay.circuit_v2.protocol import STOP_PROTOCOL_ID as STOP_PROTOCOL
from libp2p.tools.anyio_service.context import background_trio_service

from ..transport._host import transport_rank

if TYPE_CHECKING:
    from ._service import MeshService

log = logging.getLogger("meshp2p.mesh.relay")

#: What one relaying member grants: a relayed connection lives at most an hour (the
#: mesh then dials it anew) and carries at most 1 GiB; 8 circuits per reservation and
#: 16 reservations (py-libp2p adds per-IP rate limits of its own).
RELAY_LIMITS = RelayLimits(
    duration=3600,
    data=1 << 30,
    max_circuit_conns=8,
    max_reservations=16,
    reservation_ttl=3600,
)
#: Relays a NAT'd node keeps a reservation on.
MAX_RELAYS = 2
#: Seconds between checks of the reservations (and the first check after start).
CHECK_INTERVAL = 1.0
#: A reservation is renewed when this much of its TTL has passed.
RENEW_AFTER = RELAY_LIMITS.reservation_ttl / 2
#: Longest a reservation or a circuit dial may take.
RELAY_TIMEOUT = 10.0

CIRCUIT = "/p2p-circuit"


def is_circuit(addr: str) -> bool:
    return CIRCUIT in addr


def needs_relay(addrs: Iterable[str]) -> bool:
    """True unless one of our addresses is global (a NAT'd node's never are)."""
    for addr in addrs:
        if is_circuit(addr):
            continue
        parts = addr.split("/")
        if len(parts) > 2 and parts[1] in ("ip4", "ip6"):
            try:
                if ipaddress.ip_address(parts[2]).is_global:
                    return False
            except ValueError:
                continue
    return True


def _ip(addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    parts = addr.split("/")
    if len(parts) > 2 and parts[1] in ("ip4", "ip6") and not is_circuit(addr):
        try:
            return ipaddress.ip_address(parts[2])
        except ValueError:
            return None
    return None


def can_relay_for(relay_addrs: Iterable[str], own_addrs: Iterable[str]) -> bool:
    """Whether a member announcing ``relay_addrs`` can relay for a node at ``own_addrs``:
    one of its addresses lies outside our own networks (taken as /24, /64) and is not
    loopback or link-local. A neighbour on our LAN is no better placed than we are."""
    ours = []
    for addr in own_addrs:
        ip = _ip(addr)
        if ip is not None:
            ours.append(ipaddress.ip_network(f"{ip}/{24 if ip.version == 4 else 64}", strict=False))
    for addr in relay_addrs:
        ip = _ip(addr)
        if ip is None or ip.is_loopback or ip.is_link_local or ip.is_unspecified:
            continue
        if not any(ip in net for net in ours):
            return True
    return False


def circuit_addr(relay_addr: str, relay_id: str, own_id: str) -> str:
    """Our address through ``relay_id`` reached at ``relay_addr``."""
    base = relay_addr.split("/p2p/")[0]
    return f"{base}/p2p/{relay_id}{CIRCUIT}/p2p/{own_id}"


def split_addrs(
    addrs: Sequence[multiaddr.Multiaddr],
) -> tuple[list[multiaddr.Multiaddr], list[multiaddr.Multiaddr]]:
    """(direct, circuit) addresses, each kept in the order given."""
    direct = [a for a in addrs if not is_circuit(str(a))]
    circuit = [a for a in addrs if is_circuit(str(a))]
    return direct, circuit


def connection_path(relayed: bool, punched: bool) -> str:
    """How a connection runs: 'relayed' through a relay, 'hole-punched' (a direct
    connection DCUtR opened through the NATs), else 'direct'."""
    if relayed:
        return "relayed"
    return "hole-punched" if punched else "direct"


@dataclass
class Reservation:
    relay: ID
    addrs: list[str]
    made: float


class MeshRelay:
    """The relay roles of one node on its mesh host (see the module docstring)."""

    def __init__(self, mesh: MeshService) -> None:
        self.mesh = mesh
        self.reservations: dict[ID, Reservation] = {}
        #: Peers we have held a relayed connection to (a direct one to them since is
        #: DCUtR's doing: hole-punched).
        self.relayed_once: set[ID] = set()
        self._transport: CircuitV2Transport | None = None
        self._dcutr: DCUtRProtocol | None = None

    @property
    def punched(self) -> set[ID]:
        """Peers DCUtR connected directly, through the NATs, after a relayed connection."""
        if self._dcutr is None:
            return set()
        return self._dcutr._direct_connections & self.relayed_once

    @property
    def host(self) -> IHost:
        return self.mesh.host

    @property
    def offers(self) -> bool:
        return not self.mesh.client

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        protocol = CircuitV2Protocol(self.host, RELAY_LIMITS, allow_hop=self.offers)
        # DCUtR: over a relayed connection both sides learn the other's observed
        # address (identify) and dial it at once: a hole punch where the NATs allow.
        dcutr = DCUtRProtocol(self.host)
        async with background_trio_service(protocol), background_trio_service(dcutr):
            await protocol.event_started.wait()
            await dcutr.event_started.wait()
            self._dcutr = dcutr
            self.host.set_stream_handler(
                DCUTR_PROTOCOL_ID, self.mesh.members_only(dcutr._handle_dcutr_stream)
            )
            # Members only, on both roles: a stranger can neither reserve nor dial
            # through us, and only a member's relay may hand us a circuit.
            if self.offers:
                self.host.set_stream_handler(
                    HOP_PROTOCOL, self.mesh.members_only(protocol._handle_hop_stream)
                )
            self.host.set_stream_handler(
                STOP_PROTOCOL, self.mesh.members_only(protocol._handle_stop_stream)
            )
            # STOP only: dialling through a relay must not reserve a slot on it.
            self._transport = CircuitV2Transport(
                self.host, protocol, RelayConfig(roles=RelayRole.STOP)
            )
            task_status.started()
            while True:
                self._note_relayed()
                if not self.mesh.client:
                    await self._keep_reserved()
                await trio.sleep(CHECK_INTERVAL)

    def _note_relayed(self) -> None:
        for peer, conns in self.host.get_network().get_connections_map().items():
            if any(conn_is_relayed(c) for c in conns):
                self.relayed_once.add(peer)

    # -- reserving ------------------------------------------------------------

    def _candidates(self, own: list[str]) -> list[ID]:
        """Members we hold a direct connection to that can relay for us
        (``can_relay_for``)."""
        network = self.host.get_network()
        out = []
        for peer, conns in network.get_connections_map().items():
            if peer not in self.mesh.members or peer in self.reservations:
                continue
            if any(conn_is_relayed(c) for c in conns):
                continue
            if can_relay_for(self._relay_addrs(peer), own):
                out.append(peer)
        return sorted(out, key=lambda p: p.to_base58())

    async def _keep_reserved(self) -> None:
        own = [a for a in self.mesh.addrs if not is_circuit(a)]
        if not needs_relay(own):
            return
        now = time.monotonic()
        for relay in list(self.reservations):
            held = self.reservations[relay]
            if relay not in self.mesh.members or not self.host.get_network().get_connections(relay):
                del self.reservations[relay]
            elif now - held.made > RENEW_AFTER:
                await self._reserve(relay)
        for relay in self._candidates(own)[: max(0, MAX_RELAYS - len(self.reservations))]:
            await self._reserve(relay)
        circuits = [a for r in self.reservations.values() for a in r.addrs]
        if own + circuits != self.mesh.addrs:
            self.mesh.addrs = own + circuits
            self.mesh.announce_soon()

    async def _reserve(self, relay: ID) -> bool:
        assert self._transport is not None
        try:
            with trio.fail_after(RELAY_TIMEOUT):
                stream = await self.host.new_stream(relay, [HOP_PROTOCOL])
                try:
                    ok = await self._transport._make_reservation(stream, relay)
                finally:
                    await stream.close()
        except Exception as exc:
            log.info("no relay reservation on %s: %s", relay, exc or type(exc).__name__)
            self.reservations.pop(relay, None)
            return False
        if not ok:
            self.reservations.pop(relay, None)
            return False
        relay_addrs = self._relay_addrs(relay)
        own_id = self.mesh.node_id
        addrs = [circuit_addr(a, relay.to_base58(), own_id) for a in relay_addrs]
        self.reservations[relay] = Reservation(relay, addrs, time.monotonic())
        log.info("reserved a relay slot on %s: %s", relay, addrs)
        return True

    def _relay_addrs(self, relay: ID) -> list[str]:
        """The relay's addresses as the mesh announced them, else as we dialled it."""
        info = self.mesh.view().peer(relay.to_base58())
        addrs = list(info.addrs) if info is not None else []
        if not addrs:
            addrs = [str(a) for a in self.host.get_peerstore().addrs(relay)]
        direct = [a for a in addrs if not is_circuit(a) and "/ip4/127." not in a]
        return sorted(direct, key=transport_rank)[:2]

    # -- dialling -------------------------------------------------------------

    async def dial(self, peer: ID, circuits: Sequence[multiaddr.Multiaddr]) -> bool:
        """Connect to ``peer`` through the first of its circuit addresses that works."""
        if self._transport is None:
            return False
        for addr in circuits:
            text = str(addr)
            if f"/p2p/{peer.to_base58()}" not in text:
                addr = multiaddr.Multiaddr(f"{text}/p2p/{peer.to_base58()}")
            relay_part = text.split(CIRCUIT)[0]
            relay_id = ID.from_base58(relay_part.rsplit("/p2p/", 1)[1])
            if relay_id == self.mesh.peer_id:
                continue
            try:
                with trio.fail_after(RELAY_TIMEOUT):
                    # The relay serves members only: be one first.
                    relay_addr = multiaddr.Multiaddr(relay_part.rsplit("/p2p/", 1)[0])
                    if not await self.mesh.connect(relay_id, [relay_addr]):
                        continue
                    conn = await self._transport.dial(addr)
                if not conn_is_relayed(conn):
                    set_info = getattr(conn, "set_transport_info", None)
                    if set_info is not None:
                        set_info([addr], ConnectionType.RELAYED)
                self.relayed_once.add(peer)
                return True
            except Exception as exc:
                log.info("circuit %s failed: %s", addr, exc or type(exc).__name__)
        return False


def conn_is_relayed(conn: object) -> bool:
    """Whether a swarm connection runs through a relay. Not by its
    ``get_transport_addresses``: without transport info that falls back to the
    peer's addresses, circuits included."""
    kind = getattr(conn, "get_connection_type", None)
    if kind is not None and kind() == ConnectionType.RELAYED:
        return True
    actual = getattr(conn, "_actual_transport_addresses", None) or []
    return any(is_circuit(str(a)) for a in actual)
