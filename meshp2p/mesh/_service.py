"""The mesh layer of a node: a libp2p host, membership by the mesh secret, and gossip.

``MeshService`` drives the sans-I/O cores in ``_auth`` and ``_gossip`` over
libp2p streams. Every peer proves it holds the mesh secret on a
``/mesh/auth/1.0.0`` stream before any ``/mesh/*`` protocol is served to it;
then each side keeps one outbound ``/mesh/gossip/1.0.0`` stream to the other
and pushes announcements, digests (the heartbeat), wants, deaths and leavings.

One piece (about 800 lines): membership, gossip links and the view are one
node's state; admitting a peer opens its link and shares the DHT with it, a
broken link probes the peer and may bury it, and every path updates the same
members, links and view under one nursery. The protocol logic itself is in the
sans-I/O cores (``_auth``, ``_gossip``, ``_state``); the host is ``transport``'s.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import multiaddr
import trio
from libp2p.abc import IHost, INetStream
from libp2p.crypto.keys import KeyPair
from libp2p.custom_types import TProtocol
from libp2p.host.ping import ID as PING
from libp2p.host.ping import perform_ping_roundtrip
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo as Libp2pPeerInfo

from .._errors import ProtocolError
from ..transport._host import (
    DEFAULT_LISTEN,
    addrs_by_peer,
    dialable_addrs,
    mesh_host,
    parse_listen,
    transport_addrs,
)
from ..transport._quic import quic_fallback_reason
from ..transport._streams import close_quietly, reset_quietly
from ..transport._wire import FrameDecoder, encode_frame
from . import _auth, _gossip
from ._gossip import (
    Announce,
    Announcement,
    Dead,
    DemandShare,
    Digest,
    Leaving,
    Summary,
    Tick,
    Want,
)
from ._invite import InviteToken, MeshCredentials
from ._kad import MeshKad, on_disk_key, served_key
from ._lazy import LazyPush
from ._overlay import FULL_DIGEST_NODES, overlay_targets
from ._pushsum import EPOCH_HEARTBEATS, PushSum
from ._relay import MeshRelay, conn_is_relayed, connection_path, split_addrs
from ._state import MeshState, MeshView, root_of

log = logging.getLogger("meshp2p.mesh")

AUTH = TProtocol(_auth.PROTOCOL_ID)
GOSSIP = TProtocol(_gossip.PROTOCOL_ID)

_AUTH_TIMEOUT = 10.0
_DIAL_TIMEOUT = 10.0
#: How long a peer's own addresses are tried before its relay circuits.
_DIRECT_FIRST = 3.0
_WRITE_TIMEOUT = 10.0
_PING_TIMEOUT = 5.0
# A stream may arrive a moment before the handshake that admits its sender ends.
_MEMBERSHIP_GRACE = 5.0
_MAX_HANDSHAKES = 32
_LINK_BUFFER = 256
_REDIAL_AFTER = 2.0
#: Peers that died less than this long ago are dialled again (``_redial_graves``),
#: each at most every _REDIAL_GRAVE_EVERY s, at most _GRAVES_PER_BEAT a heartbeat.
_REDIAL_GRAVES_FOR = 600.0
_REDIAL_GRAVE_EVERY = 5.0
_GRAVES_PER_BEAT = 4
_REJECTIONS_KEPT = 32
_LEAVE_GRACE = 2.0
#: After closing a link it no longer chose, a node waits this long for the peer's
#: answering stream to close too; one still open means the peer chose this node. At
#: most a quarter of dead_after: the peer watches us, and hears nothing meanwhile.
_ANSWER_GRACE = 5.0
_REAP_EVERY = 1.0
_PROBES = 2
_PROBE_WAIT = 1.0
#: A member this node does not watch itself (no gossip link: in a large mesh) is
#: buried after this many dead_after without any evidence of life; its watchers
#: normally report its death long before.
STALE_AFTER_FACTOR = 10


_Side = TypeVar("_Side", _auth.AuthInitiator, _auth.AuthResponder)


@dataclass(frozen=True)
class LocalState:
    """What this node says about itself in its announcement, apart from identity."""

    role: str
    models_served: tuple[str, ...]
    models_on_disk: tuple[_gossip.ModelFile, ...]
    memory_free: int
    memory_total: int
    request_rates: Mapping[str, float]
    #: Models taken on and loading, not answering yet (the planner's doing).
    models_loading: tuple[str, ...] = ()


@dataclass
class _Link:
    """Our outbound gossip stream to one member."""

    peer: ID
    send: trio.MemorySendChannel[bytes]
    stream: INetStream | None = None
    done: trio.Event = field(default_factory=trio.Event)
    #: We chose this peer (dialled it, or target it in the overlay); else the link only
    #: answers the peer's own link to us, and goes when that does.
    initiated: bool = True
    #: For a link that answers: the peer's stream it answers. It closes when that
    #: stream ends cleanly, never on another stream's end: an answer is always to a
    #: stream opened before it, so two links can never hold each other open (answers
    #: matched to "some stream from the peer" did: two answers, each kept by the
    #: other's stream, re-opened each other endlessly).
    answers: INetStream | None = None
    #: The peer sends Summaries (its view is large): answer in kind, so that it sends
    #: us digests of the buckets where we differ (a joiner learns the mesh this way).
    summaries: bool = False
    #: The view hash the peer last told us (by Tick or Summary): once we have one, the
    #: heartbeat is a Tick.
    peer_root: bytes | None = None
    #: Ticks in a row whose view hash differed from ours.
    mismatches: int = 0
    #: When we last sent the peer our Summary (trio time).
    summary_sent: float = float("-inf")


def _standby() -> LocalState:
    return LocalState("standby", (), (), 0, 0, {})


class MeshService:
    """One node's membership in one mesh. ``await nursery.start(service.run)``.

    It builds and runs its own libp2p host (``meshp2p.transport.mesh_host`` on
    ``listen``), or, given ``host``, serves the ``/mesh/*`` protocols on an app's
    own running host (see ``on_host``). ``local`` says what this node announces.
    """

    def __init__(
        self,
        keypair: KeyPair,
        credentials: MeshCredentials,
        *,
        local: Callable[[], LocalState] = _standby,
        version: str = "0",
        listen: Sequence[str] = DEFAULT_LISTEN,
        bootstrap: Sequence[str] = (),
        heartbeat_interval: float = 5.0,
        dead_after: float = 12.0,
        client: bool = False,
        on_change: Callable[[], None] = lambda: None,
        host: IHost | None = None,
        local_demand: Callable[[], Mapping[str, float]] = dict,
        demand_epoch: float | None = None,
    ) -> None:
        self.keypair = keypair
        self.credentials = credentials
        self.local = local
        self.version = version
        self.listen = parse_listen(listen)
        #: An app's own host, already running: used as it is, never closed by us.
        self._given_host = host
        self.bootstrap = tuple(bootstrap)
        self.heartbeat_interval = heartbeat_interval
        self.dead_after = dead_after
        self._answer_grace = min(_ANSWER_GRACE, dead_after / 4)
        #: A passive client authenticates but takes no part in gossip or the DHT.
        self.client = client
        #: Called when the view changes: a node appeared, changed or went.
        self.on_change = on_change
        #: This node's own request rates per model (its DemandMeter), for push-sum.
        self.local_demand = local_demand
        self.demand = PushSum(demand_epoch or EPOCH_HEARTBEATS * heartbeat_interval)
        self.peer_id = ID.from_pubkey(keypair.public_key)
        self.node_id = self.peer_id.to_base58()
        self.state = MeshState(credentials.mesh_id)
        self.members: dict[ID, float] = {}
        self.rejections: deque[dict[str, Any]] = deque(maxlen=_REJECTIONS_KEPT)
        self.addrs: list[str] = []
        #: Circuit relay v2 between members (``_relay``): relaying, reserving, dialling.
        self.relay = MeshRelay(self)
        self._host: IHost | None = None
        self._nursery: trio.Nursery | None = None
        self._links: dict[ID, _Link] = {}
        #: The gossip streams each peer has open to us (its links), oldest first.
        self._inbound: dict[ID, list[INetStream]] = {}
        #: When we last closed our link to a peer on purpose (trio time).
        self._unlinked_at: dict[ID, float] = {}
        self._dialing: set[ID] = set()
        self._last_dial: dict[ID, float] = {}
        self._own: Announcement | None = None
        self._own_fields: dict[str, Any] | None = None
        self._seq = 0
        self._changed = trio.Event()
        self._membership = trio.Event()
        self._handshakes = trio.Semaphore(_MAX_HANDSHAKES)
        #: One ping at a time per peer (``ping``).
        self._ping_locks: dict[ID, trio.Lock] = {}
        self.kad: MeshKad | None = None
        self._provided: set[str] = set()
        self._leaving = False
        self.counters = dict.fromkeys(
            ("frames_sent", "bytes_sent", "frames_received", "bytes_received"), 0
        )
        #: Frames and bytes queued for sending, by message type ("advert": a one-entry
        #: digest relaying an announcement in a large mesh).
        self.sent_by_kind: dict[str, dict[str, int]] = {}
        #: Relays in a large mesh: ids first, bodies on request (``_lazy``).
        self.lazy = LazyPush()

    @classmethod
    def on_host(cls, host: IHost, credentials: MeshCredentials, **options: Any) -> MeshService:
        """Membership for an app's own py-libp2p host, which it runs (``host.run``)
        before starting the service; ``options`` are ``MeshService``'s keywords."""
        keypair = KeyPair(host.get_private_key(), host.get_public_key())
        return cls(keypair, credentials, host=host, **options)

    # -- public -------------------------------------------------------------

    @property
    def host(self) -> IHost:
        assert self._host is not None, "MeshService is not running"
        return self._host

    def is_member(self, peer: ID) -> bool:
        return peer in self.members

    def view(self) -> MeshView:
        """An immutable snapshot of the mesh, this node included; in a large mesh with
        the push-sum estimate of its demand."""
        view = self.state.snapshot()
        if not self.large:
            return view
        return MeshView(view.mesh_id, view.peers, demand=self.demand.estimate(len(view)))

    @property
    def large(self) -> bool:
        """More members than full digests serve: Summaries, Ticks and push-sum demand."""
        return len(self.state) > FULL_DIGEST_NODES

    def connections(self) -> list[dict[str, Any]]:
        """This node's open libp2p connections: peer, transport, QUIC datagram size."""
        if self._host is None:
            return []
        out = []
        for peer, conns in self._host.get_network().get_connections_map().items():
            for conn in conns:
                muxed = conn.muxed_conn
                quic = getattr(muxed, "_quic", None)  # py-libp2p's QUIC (aioquic)
                is_quic = quic is not None or getattr(muxed, "transport_name", "") == "quic"
                out.append(
                    {
                        "peer": peer.to_base58(),
                        "transport": "quic" if is_quic else "tcp",
                        "datagram_size": getattr(
                            muxed, "datagram_size", getattr(quic, "_max_datagram_size", None)
                        ),
                        # Why not QUIC: our last QUIC dial to this peer failed and the
                        # swarm fell back to the peer's TCP address.
                        "quic_fallback": (
                            None if is_quic else quic_fallback_reason(self._host, peer)
                        ),
                        "path": connection_path(conn_is_relayed(conn), peer in self.relay.punched),
                    }
                )
        return out

    def invite_token(self) -> str:
        return InviteToken(self.credentials, tuple(self.addrs)).encode()

    def announce_soon(self) -> None:
        """Our own state changed (a model became ready, say): tell the mesh now."""
        self._changed.set()

    def members_only(
        self, handler: Callable[[INetStream], Awaitable[None]]
    ) -> Callable[[INetStream], Awaitable[None]]:
        """Wrap a stream handler so that only mesh members reach it; others are reset."""

        async def gated(stream: INetStream) -> None:
            peer = stream.muxed_conn.peer_id
            if not await self._wait_member(peer):
                protocol = stream.get_protocol()
                log.warning("reset %s stream from non-member %s", protocol, peer)
                self._reject(peer, f"{protocol} stream before proving mesh membership")
                await stream.reset()
                return
            await handler(stream)

        return gated

    def peers_status(self, now_mono: float) -> list[dict[str, Any]]:
        """Other nodes as ``/api/status`` lists them."""
        out = []
        for peer in self.view():
            if peer.id == self.node_id:
                continue
            out.append(
                {
                    "id": peer.id,
                    "addrs": list(peer.addrs),
                    "role": peer.role,
                    "models_served": list(peer.models_served),
                    "models_on_disk": [
                        {"name": m.name, "size": m.size, "sha256": m.sha256}
                        for m in peer.models_on_disk
                    ],
                    "memory_free": peer.memory_free,
                    "memory_total": peer.memory_total,
                    "rtt_ms": peer.rtt_ms,
                    "last_seen": round(time.time() - (now_mono - peer.last_seen), 3),
                    "version": peer.version,
                }
            )
        return out

    # -- lifecycle ------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self._given_host is not None:
            self._host = self._given_host
            await self._serve(task_status)
            return
        host = mesh_host(self.keypair, self.listen)
        self._host = host
        async with host.run(listen_addrs=self.listen):
            await self._serve(task_status)

    async def _serve(self, task_status: trio.TaskStatus[None]) -> None:
        host = self.host
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self.addrs = dialable_addrs(host, self.node_id)
                host.set_stream_handler(AUTH, self._handle_auth)
                await nursery.start(self.relay.run)
                if not self.client:
                    host.set_stream_handler(GOSSIP, self.members_only(self._handle_gossip))
                    self.kad = MeshKad(
                        host,
                        self.credentials.mesh_id,
                        self.is_member,
                        wait_member=self._wait_member,
                        on_reject=self._reject,
                    )
                    await nursery.start(self.kad.run)
                    self._refresh_own(force=True)
                    nursery.start_soon(self._heartbeat)
                    nursery.start_soon(self._reaper)
                for peer, addrs in addrs_by_peer(self.bootstrap).items():
                    nursery.start_soon(self._join_bootstrap, peer, addrs)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    # -- membership -----------------------------------------------------------

    async def _wait_member(self, peer: ID) -> bool:
        with trio.move_on_after(_MEMBERSHIP_GRACE):
            while peer not in self.members:
                await self._membership.wait()
        return peer in self.members

    def _admit(self, peer: ID) -> None:
        if self._leaving:
            return
        first = peer not in self.members
        self.members[peer] = trio.current_time()
        self._membership.set()
        self._membership = trio.Event()
        if first:
            log.info("peer %s proved mesh membership", peer)

    def _link_up(self, peer: ID, *, initiated: bool, answers: INetStream | None = None) -> None:
        """Gossip with a member: open our outbound link and share the DHT with it.

        Only for peers that gossip (we dialled them as a full node, or they opened
        a gossip stream to us): passive clients never get here, so a server keeps
        no gossip or DHT state for them. ``initiated``: we chose the peer, rather than
        answering its link to us (``answers``: the stream of that link).
        """
        if self.client or self._leaving or self._nursery is None:
            return
        held = self._links.get(peer)
        if held is not None:
            held.initiated = held.initiated or initiated
            if not held.initiated and held.answers is None:
                held.answers = answers
            return
        send, receive = trio.open_memory_channel[bytes](_LINK_BUFFER)
        link = _Link(peer, send, initiated=initiated, answers=None if initiated else answers)
        self._links[peer] = link
        # Open with our view: our own announcement first, then what we hold.
        if self._own is not None:
            own = encode_frame(Announce(self._own).to_map())
            send.send_nowait(own)
            self._count("announce", own)
        for kind, frame in self._heartbeat_frames(link):
            send.send_nowait(frame)
            self._count(kind, frame)
        self._nursery.start_soon(self._run_link, link, receive)
        if self.kad is not None:
            addrs = self.host.get_peerstore().addrs(peer)
            self._nursery.start_soon(self.kad.add_peer, peer, addrs)
            # A newcomer's routing table is empty: offer our records to it too.
            self._provided.clear()
            self._nursery.start_soon(self._provide_records)

    async def connect(self, peer: ID, addrs: Sequence[multiaddr.Multiaddr]) -> bool:
        """Dial and authenticate ``peer`` if needed; True once it is a member."""
        if peer in self.members:
            return True
        return await self._dial(Libp2pPeerInfo(peer, list(addrs)))

    def _reject(self, peer: ID, reason: str) -> None:
        self.rejections.append({"peer": str(peer), "reason": reason, "at": time.time()})

    def drop(self, peer: ID) -> None:
        """Forget a member that stopped answering: the next ``connect`` dials it anew."""
        if peer in self.members:
            self._forget(peer)

    def _forget(self, peer: ID) -> None:
        """Drop a member that left or died: its link, and its connection, which a dead
        peer's QUIC would otherwise keep open until its idle timeout."""
        self.members.pop(peer, None)
        self.lazy.forget((peer.to_base58(),))
        link = self._links.pop(peer, None)
        if link is not None:
            link.send.close()
        if self._nursery is not None:
            self._nursery.start_soon(self._hang_up, peer)
        self.on_change()

    async def _hang_up(self, peer: ID) -> None:
        """Close the connections we hold to ``peer`` now, one by one: not with
        ``host.disconnect``, whose swarm forgets *every* connection to the peer once
        it has closed the ones it had, a new one that came up meanwhile too (a thawed
        peer dials at the moment we bury it): that one then stayed open, unlisted,
        and the peer's streams on it reached handlers of a connection we no longer
        knew (it looked connected to the peer; we did not, and never dialled it)."""
        with trio.move_on_after(_DIAL_TIMEOUT):
            for conn in self.host.get_network().get_connections(peer):
                try:
                    await conn.close()
                except Exception as exc:
                    log.debug("closing the connection to %s: %r", peer, exc)

    async def _join_bootstrap(self, peer: ID, addrs: list[multiaddr.Multiaddr]) -> None:
        """Dial a bootstrap peer until it admits us (it may start later)."""
        if peer == self.peer_id:
            return
        delay = 1.0
        while peer not in self.members:
            await self._dial(Libp2pPeerInfo(peer, addrs))
            if peer in self.members:
                return
            await trio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _dial(self, info: Libp2pPeerInfo) -> bool:
        peer = info.peer_id
        if peer in self._dialing or peer == self.peer_id:
            return False
        self._dialing.add(peer)
        self._last_dial[peer] = trio.current_time()
        try:
            await self._connect_direct_or_relayed(info)
            ok = await self._authenticate(peer)
        except Exception as exc:  # libp2p raises many kinds; none may stop the node
            log.info("could not reach %s: %s", peer, exc or type(exc).__name__)
            return False
        finally:
            self._dialing.discard(peer)
        if ok:
            self._admit(peer)
            self._link_up(peer, initiated=True)
        return ok

    async def _connect_direct_or_relayed(self, info: Libp2pPeerInfo) -> None:
        """Dial the peer's own addresses; when they fail (or it has none: it is behind
        NAT), its circuit addresses through the relays it reserved on."""
        direct, circuits = split_addrs(info.addrs)
        connected = bool(self.host.get_network().get_connections(info.peer_id))
        if info.addrs and not connected:
            # The swarm dials every address the peerstore holds: a restarted peer's
            # old ones (dead ports) would eat the dial's time before its new ones.
            self.host.get_peerstore().clear_addrs(info.peer_id)
        if not circuits or connected:
            with trio.fail_after(_DIAL_TIMEOUT):
                await self.host.connect(info)
            return
        if direct:
            with trio.move_on_after(_DIRECT_FIRST):
                try:
                    await self.host.connect(Libp2pPeerInfo(info.peer_id, direct))
                    return
                except Exception as exc:
                    log.debug("direct dial of %s failed: %r", info.peer_id, exc)
        if not await self.relay.dial(info.peer_id, circuits):
            raise ConnectionError(f"neither direct nor relayed dial of {info.peer_id} worked")

    def _handshake(self, side: type[_Side], peer: ID) -> _Side:
        """A fresh handshake with ``peer``: our secret, both peer ids, a new nonce."""
        return side(
            secret=self.credentials.secret,
            mesh_id=self.credentials.mesh_id,
            local_peer_id=self.peer_id.to_bytes(),
            remote_peer_id=peer.to_bytes(),
            nonce=secrets.token_bytes(_auth.NONCE_LEN),
        )

    async def _authenticate(self, peer: ID) -> bool:
        """Run the handshake as initiator; True if the peer proved the secret."""
        with trio.fail_after(_AUTH_TIMEOUT):
            stream = await self.host.new_stream(peer, [AUTH])
            handshake = self._handshake(_auth.AuthInitiator, peer)
            try:
                await stream.write(encode_frame(handshake.start().to_map()))
                await _drive(stream, handshake, _auth.MAX_FRAME)
            finally:
                await close_quietly(stream)
        if not handshake.peer_verified:
            log.warning("mesh handshake with %s failed: %s", peer, handshake.reason)
            self._reject(peer, f"handshake failed: {handshake.reason}")
            return False
        return True

    async def _handle_auth(self, stream: INetStream) -> None:
        peer = stream.muxed_conn.peer_id
        async with self._handshakes:
            handshake = self._handshake(_auth.AuthResponder, peer)
            try:
                with trio.fail_after(_AUTH_TIMEOUT):
                    await _drive(stream, handshake, _auth.MAX_FRAME)
            except Exception as exc:
                log.info("mesh handshake from %s broke off: %r", peer, exc)
            finally:
                await close_quietly(stream)
        if handshake.peer_verified:
            self._admit(peer)
        else:
            log.warning("refused %s: %s", peer, handshake.reason or "handshake incomplete")
            self._reject(peer, f"handshake failed: {handshake.reason or 'incomplete'}")

    # -- gossip ---------------------------------------------------------------

    def _refresh_own(self, *, force: bool = False) -> bool:
        """Re-sign our announcement if anything in it changed. True if it did."""
        local = self.local()
        fields: dict[str, Any] = {
            "mesh_id": self.credentials.mesh_id,
            "addrs": list(self.addrs),
            "role": local.role,
            "models_served": list(local.models_served),
            "models_on_disk": list(local.models_on_disk),
            "memory_free": local.memory_free,
            "memory_total": local.memory_total,
            "request_rates": dict(local.request_rates),
            "version": self.version,
        }
        if local.models_loading:
            fields["models_loading"] = list(local.models_loading)
        if not force and fields == self._own_fields:
            return False
        self._seq = _gossip.next_seq(self._seq, time.time())
        self._own = _gossip.sign({**fields, "seq": self._seq}, self.keypair.private_key)
        self._own_fields = fields
        self.state.apply_announcement(self._own, trio.current_time())
        if self._nursery is not None:
            self._nursery.start_soon(self._provide_records)
        return True

    def _refute(self) -> None:
        """Rumours of our death: say otherwise at once, with a newer announcement on
        every link (not at the next heartbeat: in a large mesh that is a Tick, and
        the news would wait for a repair)."""
        self._refresh_own(force=True)
        if self._own is not None:
            self._broadcast(encode_frame(Announce(self._own).to_map()), "announce")

    async def _provide_records(self) -> None:
        """Provider records in the mesh DHT: which models we serve and hold on disk."""
        if self.kad is None or self._own is None:
            return
        keys = {served_key(m) for m in self._own.models_served}
        keys |= {on_disk_key(m.sha256) for m in self._own.models_on_disk}
        for key in sorted(keys - self._provided):
            if await self.kad.provide(key):
                self._provided.add(key)

    async def providers(self, key: str) -> list[str]:
        """Members the mesh DHT names as providers of ``key`` (see ``_kad``'s keys)."""
        if self.kad is None:
            return []
        return [p.to_base58() for p in await self.kad.find_providers(key)]

    async def _heartbeat(self) -> None:
        next_beat = trio.current_time()
        while True:
            with trio.move_on_at(next_beat):
                await self._changed.wait()
            self._changed = trio.Event()
            now = trio.current_time()
            if self._refresh_own() and self._own is not None:
                self._broadcast(encode_frame(Announce(self._own).to_map()), "announce")
            if now < next_beat:
                continue
            next_beat = now + self.heartbeat_interval
            self.state.mark_seen(self.node_id, now)
            for link in list(self._links.values()):
                for kind, frame in self._heartbeat_frames(link):
                    self._send(link, frame, kind)
            self._share_demand()
            self._connect_to_known(now)
            self._redial_graves(now)
            if self._nursery is not None:
                for peer in list(self.members):
                    self._nursery.start_soon(self._measure_rtt, peer)

    def _heartbeat_frames(self, link: _Link | None = None) -> list[tuple[str, bytes]]:
        """Full digests in a small mesh; in a large one (or to a peer that sends us
        Summaries) a Summary of 16 short hashes, answered with digests of the buckets
        that differ."""
        entries = self.state.digest()
        if len(entries) > FULL_DIGEST_NODES or (link is not None and link.summaries):
            # A Tick once the peer has told us its view hash: a peer whose view differs
            # answers with its Summary, so a change costs buckets only where it is
            # missed, not on every link.
            if link is not None and link.peer_root is not None:
                return [("tick", encode_frame(Tick(self.state.root()).to_map()))]
            return [("summary", self._summary_frame(link))]
        return [("digest", encode_frame(d.to_map())) for d in _gossip.digests(entries)]

    def _share_demand(self) -> None:
        """In a large mesh, half of our push-sum mass to one random link."""
        if not self.large or not self._links or self._leaving:
            return
        link = secrets.choice(list(self._links.values()))
        epoch, weight, sums = self.demand.share(time.time(), self.local_demand())
        self._send(link, encode_frame(DemandShare(epoch, weight, sums).to_map()), "demand")

    async def _reaper(self) -> None:
        """Bury peers silent for ``dead_after``, checked every second, not every heartbeat:
        a death is then noticed at most a second after its deadline."""
        while True:
            await trio.sleep(min(_REAP_EVERY, self.heartbeat_interval))
            self.state.mark_seen(self.node_id, trio.current_time())
            now = trio.current_time()
            self._bury(
                self.state.expire(now, self.dead_after, STALE_AFTER_FACTOR * self.dead_after)
            )
            # Wants that an advertiser left unanswered go to the next one that advertised.
            for peer, node_ids in self.lazy.retries(now).items():
                link = self._links.get(ID.from_base58(peer))
                if link is not None:
                    self._send(link, encode_frame(Want(tuple(node_ids)).to_map()), "want")

    def _bury(self, node_ids: Iterable[str]) -> None:
        """Tell the mesh these peers are dead, and drop them here."""
        for node_id in node_ids:
            if node_id == self.node_id:
                continue
            log.warning("peer %s stopped answering; declaring it dead", node_id)
            dead = self.state.dead().get(node_id, 0)
            self._broadcast(encode_frame(Dead(node_id, dead).to_map()), "dead")
            self._forget(ID.from_base58(node_id))

    async def _probe(self, peer: ID) -> None:
        """A gossip link broke: if the peer answers no ping either, it is dead now.

        A killed process's TCP connection breaks at once, so this notices it in
        about two seconds rather than after dead_after; a peer that still answers
        just gets a new link at the next heartbeat.
        """
        for _ in range(_PROBES):
            if await self.ping(peer, _PROBE_WAIT):
                return
        node_id = peer.to_base58()
        held = self.state.announcement(node_id)
        if held is not None and self.state.apply_dead(node_id, held.seq, trio.current_time()):
            log.warning("peer %s is gone (link broken, no answer to pings)", node_id)
            self._broadcast(encode_frame(Dead(node_id, held.seq).to_map()), "dead")
            self._forget(peer)

    def _redial_graves(self, now: float) -> None:
        """Dial peers that died lately where they last were: after a freeze or a broken
        link heals, two sides that buried each other meet again only if one dials. The
        peer then hears of its death in our digest answer and announces anew."""
        if self._nursery is None or self._leaving:
            return
        graves = self.state.graves_to_redial(now, _REDIAL_GRAVES_FOR)
        for node_id, addrs in graves[:_GRAVES_PER_BEAT]:
            peer = ID.from_base58(node_id)
            if peer in self._links or peer in self._dialing:
                continue
            if now - self._last_dial.get(peer, -1e9) < _REDIAL_GRAVE_EVERY:
                continue
            self._nursery.start_soon(self._dial, Libp2pPeerInfo(peer, transport_addrs(addrs)))

    def _connect_to_known(self, now: float) -> None:
        """Keep links to this node's overlay targets (``_overlay``: every member, in a
        mesh of at most DEGREE + 1), and close the links it chose that it no longer
        targets, once its targets are linked."""
        if self._nursery is None:
            return
        view = self.view()
        targets = overlay_targets((p.id for p in view), self.node_id)
        for node_id in targets:
            peer = ID.from_base58(node_id)
            link = self._links.get(peer)
            if link is not None:
                link.initiated = True  # ours now, even if the peer opened it first
                link.answers = None
                continue
            if peer in self._dialing:
                continue
            if now - self._last_dial.get(peer, -1e9) < _REDIAL_AFTER:
                continue
            info = view.peer(node_id)
            addrs = transport_addrs(info.addrs) if info is not None else []
            self._nursery.start_soon(self._dial_known, peer, addrs)
        for peer, at in list(self._unlinked_at.items()):
            if now - at > self._answer_grace:
                del self._unlinked_at[peer]
        wanted = {ID.from_base58(t) for t in targets}
        if len(wanted & set(self._links)) < len(wanted):
            return  # not settled yet: keep every link until the targets are up
        for peer, link in list(self._links.items()):
            if link.initiated and peer not in wanted:
                log.debug("overlay: closing our link to %s", peer)
                self._unlink(link)
                if peer in self._inbound:
                    self._nursery.start_soon(self._answer_if_chosen, peer)

    async def _answer_if_chosen(self, peer: ID) -> None:
        """A closed link's peer also streams to us: an answer to our link, which it
        closes when ours ends (``_handle_gossip``), or a link it chose itself, which
        it keeps, and which we must answer again or it hears nothing from us and
        buries us. (Keeping every link the peer streamed on, as before, kept them all:
        each answer is such a stream, so a joiner's first links never closed.) If both
        close at once, our answer is closed again when its stream ends."""
        await trio.sleep(self._answer_grace)
        streams = self._inbound.get(peer)
        if streams and peer not in self._links and peer in self.members:
            log.debug("overlay: %s chose us; answering its link", peer)
            self._link_up(peer, initiated=False, answers=streams[-1])

    def _unlink(self, link: _Link) -> None:
        """Close a link cleanly: its writer flushes and closes the stream, and the peer's
        silence no longer means anything (others watch it)."""
        self._drop_link(link)
        self.state.unwatch(link.peer.to_base58())
        self._unlinked_at[link.peer] = trio.current_time()

    async def _dial_known(self, peer: ID, addrs: list[multiaddr.Multiaddr]) -> None:
        """Dial a node learned by gossip; if it announced no usable address, ask the DHT."""
        if not addrs and self.kad is not None:
            found = await self.kad.find_peer(peer)
            if found is None:
                return
            addrs = list(found.addrs)
        await self._dial(Libp2pPeerInfo(peer, addrs))

    async def _measure_rtt(self, peer: ID) -> None:
        await self.ping(peer, _PING_TIMEOUT)

    async def ping(self, peer: ID, within: float) -> bool:
        """Ping ``peer`` once (libp2p ping); True if it answered within ``within`` s.

        One ping per peer at a time (callers queue), each on a stream of its own that
        is closed, or reset when it fails or times out. py-libp2p's PingService kept
        the stream of a ping cut short by a timeout cached, and on the next ping
        called ``is_closed()`` on it, a property: a TypeError, for every later ping of
        that peer. One slow pong (a frozen host, a busy machine) thus made a live
        host look dead to this node for good.
        """
        if self._nursery is None:
            return False
        with trio.move_on_after(within):
            async with self._ping_locks.setdefault(peer, trio.Lock()):
                stream: INetStream | None = None
                answered = False
                try:
                    stream = await self.host.new_stream(peer, [PING])
                    rtt_ms = await perform_ping_roundtrip(stream)
                    answered = True
                except Exception:
                    return False
                finally:
                    if stream is not None:
                        with trio.CancelScope(shield=True):
                            await (close_quietly if answered else reset_quietly)(stream)
                self.state.record_rtt(peer.to_base58(), float(rtt_ms))
                return True
        return False

    def _summary_frame(self, link: _Link | None) -> bytes:
        """Our Summary, to be sent on ``link`` (recorded as its ``summary_sent``)."""
        if link is not None:
            link.summary_sent = trio.current_time()
        return encode_frame(Summary(self.state.summary()).to_map())

    def _send_summary(self, link: _Link) -> None:
        self._send(link, self._summary_frame(link), "summary")

    def _count(self, kind: str, frame: bytes) -> None:
        counted = self.sent_by_kind.setdefault(kind, {"frames": 0, "bytes": 0})
        counted["frames"] += 1
        counted["bytes"] += len(frame)

    def _send(self, link: _Link, frame: bytes, kind: str) -> None:
        """Queue ``frame`` (a message of type ``kind``, for ``sent_by_kind``) on ``link``."""
        try:
            link.send.send_nowait(frame)
            self._count(kind, frame)
        except trio.WouldBlock:
            log.warning("peer %s is not reading its gossip; dropping the link", link.peer)
            self._drop_link(link)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._drop_link(link)

    def _broadcast(
        self,
        frame: bytes,
        kind: str,
        *,
        skip: ID | None = None,
        holders: frozenset[str] = frozenset(),
    ) -> None:
        """Send to every link; a relay (``skip``: the sender) in a large mesh only to
        the links we chose (our overlay targets, bootstrap peers): a random 8-out
        graph, which reaches every node as surely as the whole overlay (a node that
        no other node chose is one in e^8), at half the messages. What a relay
        misses, heartbeats repair (Tick, Summary, digests). Peers in ``holders``
        (base58) have what the frame carries already and are skipped too."""
        if self._leaving:
            return
        relay_out_only = skip is not None and self.large
        for link in list(self._links.values()):
            if link.peer == skip or not (link.initiated or not relay_out_only):
                continue
            if holders and link.peer.to_base58() in holders:
                continue
            self._send(link, frame, kind)

    def _relay_announcement(self, message: Announce, sender: ID) -> None:
        """Pass on an announcement we just stored: whole in a small mesh; in a large
        one as a one-entry digest (``_lazy``: a peer that lacks it Wants the body),
        never to a peer known to hold it."""
        ann = message.announcement
        holders = self.lazy.holders(ann.node_id, ann.seq)
        if self.large:
            advert = encode_frame(Digest({ann.node_id: ann.seq}).to_map())
            self._broadcast(advert, "advert", skip=sender, holders=holders)
        else:
            self._broadcast(
                encode_frame(message.to_map()), "announce", skip=sender, holders=holders
            )

    def _drop_link(self, link: _Link) -> None:
        if self._links.get(link.peer) is link:
            del self._links[link.peer]
        link.send.close()

    async def _run_link(self, link: _Link, receive: trio.MemoryReceiveChannel[bytes]) -> None:
        peer = link.peer
        try:
            if self._links.get(peer) is not link:
                return  # closed before it opened: the peer need not hear of it
            with trio.fail_after(_DIAL_TIMEOUT):
                link.stream = await self.host.new_stream(peer, [GOSSIP])
            async with receive:
                async for frame in receive:
                    with trio.fail_after(_WRITE_TIMEOUT):
                        await link.stream.write(frame)
                    self.counters["frames_sent"] += 1
                    self.counters["bytes_sent"] += len(frame)
        except Exception as exc:
            log.info("gossip link to %s ended: %r", peer, exc)
            if not self._leaving and self._nursery is not None and peer in self.members:
                self._nursery.start_soon(self._probe, peer)
        finally:
            self._drop_link(link)
            if link.stream is not None:
                with trio.CancelScope(shield=True):
                    await close_quietly(link.stream)
            link.done.set()

    async def _handle_gossip(self, stream: INetStream) -> None:
        peer = stream.muxed_conn.peer_id
        self._inbound.setdefault(peer, []).append(stream)
        # It gossips with us, so we gossip with it; but not at once when we closed
        # our link to it just now: this stream may be its answer to that link, opened
        # late, about to close, and answering it would make the two sides answer each
        # other's answers without end.
        unlinked_at = self._unlinked_at.get(peer, float("-inf"))
        if trio.current_time() - unlinked_at < self._answer_grace and peer not in self._links:
            if self._nursery is not None:
                self._nursery.start_soon(self._answer_if_chosen, peer)
        else:
            self._link_up(peer, initiated=False, answers=stream)
        decoder = FrameDecoder(_gossip.MAX_FRAME)
        ended_cleanly = False
        try:
            while True:
                data = await stream.read(_gossip.MAX_FRAME)
                if not data:
                    ended_cleanly = True
                    return
                self.counters["bytes_received"] += len(data)
                for message in decoder.feed(data):
                    self.counters["frames_received"] += 1
                    self._on_message(peer, message)
        except ProtocolError as exc:
            log.warning("bad gossip from %s: %s", peer, exc)
            self._reject(peer, f"bad gossip: {exc}")
            await stream.reset()
        except StreamEOF:  # the peer closed its side: on purpose
            ended_cleanly = True
        except Exception as exc:  # StreamReset, connection loss
            log.debug("gossip stream from %s ended: %r", peer, exc)
        finally:
            self._stream_ended(peer, stream, cleanly=ended_cleanly)
            await close_quietly(stream)

    def _stream_ended(self, peer: ID, stream: INetStream, *, cleanly: bool) -> None:
        """The peer closed its link on purpose (the overlay moved on): close the one
        that answered it. A broken stream is the peer's link task's to probe: our
        answer stays, for the peer's next stream (or to end with its next clean end).
        A stream of the peer's still open is answered after a grace, not at once:
        it may be the peer's answer to the link we close, and answering it at once
        could set the two sides re-opening each other's answers."""
        streams = self._inbound.get(peer, [])
        if stream in streams:
            streams.remove(stream)
        if not streams:
            self._inbound.pop(peer, None)
        link = self._links.get(peer)
        if link is None:
            if cleanly and not streams:
                # No gossip either way now (we closed ours first): its silence means
                # nothing here any more. Watched, it would be buried in dead_after.
                self.state.unwatch(peer.to_base58())
            return
        if link.initiated:
            return
        if link.answers is stream:
            link.answers = None
        if link.answers is not None or not cleanly:
            return  # it answers another stream, still open; or wait for the next
        self._unlink(link)
        if streams and self._nursery is not None:
            self._nursery.start_soon(self._answer_if_chosen, peer)

    def _on_message(self, sender: ID, raw: Mapping[str, Any]) -> None:
        now = trio.current_time()
        self.state.mark_seen(sender.to_base58(), now)
        try:
            message = _gossip.parse_gossip_message(raw)
        except ProtocolError as exc:
            log.info("ignoring malformed gossip from %s: %s", sender, exc)
            return
        link = self._links.get(sender)
        peer = sender.to_base58()
        if isinstance(message, Announce):
            ann = message.announcement
            if ann.node_id == self.node_id:
                return
            self.lazy.heard(peer, ann.node_id, ann.seq)
            if self.state.apply_announcement(ann, now):
                self.lazy.got(ann.node_id, ann.seq)
                self._relay_announcement(message, sender)
                self._connect_to_known(now)
                self.on_change()
        elif isinstance(message, Tick):
            if link is None:
                return
            link.summaries, link.peer_root = True, message.root
            if message.root == self.state.root():
                link.mismatches = 0
                self.state.vouch(self.state.bucket_members(range(_gossip.SUMMARY_BUCKETS)), now)
                return
            # Views differ. Usually an announcement is still on its way (it floods in a
            # fraction of a heartbeat); if they still differ at the next Tick, one of us
            # missed it: our Summary tells the peer which buckets to compare.
            link.mismatches += 1
            if link.mismatches >= 2:
                link.mismatches = 0
                self._send_summary(link)
        elif isinstance(message, DemandShare):
            self.demand.receive(
                message.epoch, message.weight, message.sums, time.time(), self.local_demand()
            )
        elif isinstance(message, Summary):
            if link is not None:
                link.summaries, link.peer_root = True, root_of(message.buckets)
            differing = self.state.differing_buckets(message.buckets)
            agreed = set(range(len(message.buckets))) - set(differing)
            self.state.vouch(self.state.bucket_members(agreed), now)
            if differing and link is not None:
                answer = Digest(self.state.bucket_digest(differing))
                for part in _gossip.digests(answer.entries):
                    self._send(link, encode_frame(part.to_map()), "digest")
                # Our digest gives the peer what it lacks; our Summary, unless we sent
                # one lately, makes it answer with what *we* lack: a joiner learns the
                # mesh in one exchange, not after two mismatched Ticks (10 s and more).
                if now - link.summary_sent >= self.heartbeat_interval:
                    self._send_summary(link)
        elif isinstance(message, Digest):
            ours = self.state.digest()
            self.state.vouch((n for n, seq in message.entries.items() if ours.get(n) == seq), now)
            self.lazy.heard_all(peer, message.entries)
            if link is None:
                return
            missing = self.state.missing_from(message.entries)
            # One Want per announcement: not again while another peer's answer is due.
            wanted = self.lazy.to_want(peer, {n: message.entries[n] for n in missing}, now)
            if wanted:
                self._send(link, encode_frame(Want(tuple(wanted)).to_map()), "want")
            for ann in self.state.newer_than(message.entries):
                self._send(link, encode_frame(Announce(ann).to_map()), "announce")
            for dead in self.state.newer_deaths(message.entries):
                self._send(link, encode_frame(dead.to_map()), "dead")
            if self.node_id in self.state.dead() or (
                self.node_id in message.entries
                and self._own is not None
                and message.entries[self.node_id] > self._own.seq
            ):
                self._refute()
        elif isinstance(message, Want):
            if link is None:
                return
            for ann in self.state.announcements_for(message.node_ids):
                self._send(link, encode_frame(Announce(ann).to_map()), "announce")
                self.lazy.heard(peer, ann.node_id, ann.seq)
        elif isinstance(message, Leaving):
            if self.state.apply_leaving(message, now):
                log.info("peer %s left the mesh", message.node_id)
                self._broadcast(encode_frame(message.to_map()), "leaving", skip=sender)
                self._forget(ID.from_base58(message.node_id))
        elif isinstance(message, Dead):
            self._on_dead(sender, message, now)

    def _on_dead(self, sender: ID, message: Dead, now: float) -> None:
        if message.node_id == self.node_id:
            self._refute()
            return
        seen = self.state.last_direct(message.node_id)
        if seen is not None and now - seen < self.heartbeat_interval * 2:
            # We heard from it ourselves just now: the sender's link is what broke. The
            # sender buried it, and only a newer announcement from the node brings it
            # back there: tell the node, which refutes (a node the sender is not
            # linked to would otherwise never hear of its burial).
            link = self._links.get(ID.from_base58(message.node_id))
            if link is not None:
                self._send(link, encode_frame(message.to_map()), "dead")
            return
        if self.state.apply_dead(message.node_id, message.seq, now):
            log.info("peer %s reported dead by %s", message.node_id, sender)
            self._broadcast(encode_frame(message.to_map()), "dead", skip=sender)
            self._forget(ID.from_base58(message.node_id))

    async def leave(self) -> None:
        """Tell every member we are going, so they drop us at once, not after dead_after.

        Call it before cancelling ``run``: it needs the links still up.
        """
        if self._own is None:
            return
        self._leaving = True
        self._seq = _gossip.next_seq(self._seq, time.time())
        leaving = _gossip.sign_leaving(
            self._seq, self.credentials.mesh_id, self.keypair.private_key
        )
        frame = encode_frame(leaving.to_map())
        links = list(self._links.values())
        log.info("leaving the mesh (seq %d), telling %d links", self._seq, len(links))
        for link in links:
            self._send(link, frame, "leaving")
            link.send.close()  # the link task writes what is queued, then closes
        with trio.move_on_after(_LEAVE_GRACE):
            for link in links:
                await link.done.wait()


async def _drive(
    stream: INetStream,
    handshake: _auth.AuthInitiator | _auth.AuthResponder,
    max_frame: int,
) -> None:
    """Feed handshake messages until it is done or failed, writing its replies."""
    decoder = FrameDecoder(max_frame)
    while handshake.state not in (_auth.AuthState.DONE, _auth.AuthState.FAILED):
        data = await stream.read(max_frame)
        if not data:
            return
        try:
            messages = decoder.feed(data)
        except ProtocolError as exc:
            handshake.receive({"t": "malformed", "error": str(exc)})
            return
        for message in messages:
            reply = handshake.receive(message)
            if reply is not None:
                await stream.write(encode_frame(reply.to_map()))
            if handshake.state in (_auth.AuthState.DONE, _auth.AuthState.FAILED):
                return
