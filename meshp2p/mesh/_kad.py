"""Mesh-scoped Kademlia: py-libp2p's KadDHT on a protocol id of its own, open to members only.

The wire protocol is libp2p Kademlia (``/ipfs/kad/1.0.0`` messages, unchanged) under the id

    /mesh/kad/1.0.0/<tag>

where ``<tag>`` is the first 16 bytes, in 32 lowercase hex digits, of
``sha256(b"meshp2p/kad/v1\\x00" + mesh_id.encode("utf-8"))``. A mesh id may be any string,
so it is hashed into a fixed-length token that multistream accepts; hashing also keeps the
mesh's name out of the protocol list that identify shows to every peer that connects. Meshes
therefore never mix with each other or with the public IPFS DHT, and an inbound kad stream
from a peer that is not a member of the mesh is reset before any kad message on it is read.
A stream that arrives before its sender is a member waits, like every other ``/mesh/*``
stream, for the membership handshake that may still be completing on the same connection
(``wait_member``), and is reset only if that does not admit the sender in time.

Provider-record keys are sha2-256 multihashes (``0x12 0x20`` + ``sha256(name)``) of the names
``/mesh-model/served/<model id>`` and ``/mesh-model/disk/<sha256 of the file>``: js-libp2p's
and go-libp2p's Kademlia accept only CID multihash keys in ADD_PROVIDER / GET_PROVIDERS, so
any libp2p Kademlia can store and serve these records (js-libp2p: a CIDv1 with the ``raw``
codec and that multihash). KadDHT takes them as the lowercase hex string of those bytes.

KadDHT hard-codes ``/ipfs/kad/1.0.0`` and talks to the host directly, so it is given a
:class:`ScopedHost` (a proxy of the real host) instead of the host: no py-libp2p global is
patched, and several meshes can share one host.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import trio
from libp2p.abc import IHost, INetStream, IPeerStore
from libp2p.custom_types import StreamHandlerFn, TProtocol
from libp2p.kad_dht.common import PROTOCOL_ID as KAD_PROTOCOL_ID
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.network.stream.exceptions import StreamClosed, StreamEOF, StreamReset
from libp2p.peer.envelope import Envelope
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.peer.peerstore import PERMANENT_ADDR_TTL
from libp2p.tools.anyio_service.context import background_trio_service
from multiaddr import Multiaddr

logger = logging.getLogger(__name__)

PROTOCOL_PREFIX = "/mesh/kad/1.0.0/"
DEFAULT_TIMEOUT = 10.0
"""Seconds one find_peer / provide / find_providers call may take in all."""

SERVED_PREFIX = "/mesh-model/served/"
ON_DISK_PREFIX = "/mesh-model/disk/"
_SHA2_256 = b"\x12\x20"
"""Multihash prefix: code 0x12 (sha2-256), digest length 32."""

_TAG_DOMAIN = b"meshp2p/kad/v1\x00"
_NON_MEMBER_PROTOCOLS = ["/meshp2p/not-a-mesh-member"]
"""What the scoped peerstore reports as a non-member's protocols: non-empty (so KadDHT treats
identify as done) and without the kad id (so KadDHT's routing table refuses the peer)."""


def protocol_id_for(mesh_id: str) -> TProtocol:
    """The kad protocol id of the mesh named ``mesh_id``."""
    tag = hashlib.sha256(_TAG_DOMAIN + mesh_id.encode("utf-8")).digest()[:16].hex()
    return TProtocol(PROTOCOL_PREFIX + tag)


def provider_key(name: str) -> str:
    """The provider key for ``name``: its sha2-256 multihash, as lowercase hex.

    That is ``(0x12 0x20 + sha256(name.encode("utf-8"))).hex()``; KadDHT sends the 34
    multihash bytes the hex spells, which every libp2p Kademlia accepts as a provider key.
    """
    return (_SHA2_256 + hashlib.sha256(name.encode("utf-8")).digest()).hex()


def served_key(model_id: str) -> str:
    """The provider key under which nodes serving ``model_id`` announce themselves.

    The multihash of ``/mesh-model/served/<model_id>`` (see :func:`provider_key`).
    """
    return provider_key(SERVED_PREFIX + model_id)


def on_disk_key(sha256: str) -> str:
    """The provider key under which nodes holding the model file ``sha256`` announce it.

    The multihash of ``/mesh-model/disk/<sha256>`` (see :func:`provider_key`).
    """
    return provider_key(ON_DISK_PREFIX + sha256)


class _NotAMemberError(Exception):
    """KadDHT tried to open a kad stream to a peer outside the mesh (it catches this)."""


class _StreamCloseNoise(logging.Filter):
    """Drop KadDHT's warning for a kad stream the remote closed or reset between requests.

    KadDHT logs ``Failed to read DHT message from stream`` whenever a client closes its
    stream after the answer, which is how every lookup ends. Other read failures still pass.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Failed to read DHT message from stream"):
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        return not (args and isinstance(args[0], StreamClosed | StreamEOF | StreamReset))


_STREAM_CLOSE_NOISE = _StreamCloseNoise()


class _ScopedPeerStore:
    """The host's peerstore as KadDHT must see it: members speak the mesh's kad, no one else."""

    def __init__(self, peerstore: IPeerStore, is_member: Callable[[ID], bool]) -> None:
        self._peerstore = peerstore
        self._is_member = is_member

    def __getattr__(self, name: str) -> Any:
        return getattr(self._peerstore, name)

    def get_protocols(self, peer_id: ID) -> list[str]:
        # KadDHT's routing table admits a peer only if this lists /ipfs/kad/1.0.0. Membership
        # is the authority here, not identify: identify may have run before this mesh's
        # handler was registered, and a non-member may well run the mesh's protocol.
        if not self._is_member(peer_id):
            return list(_NON_MEMBER_PROTOCOLS)
        try:
            protocols = self._peerstore.get_protocols(peer_id)
        except Exception:
            protocols = []
        return [str(KAD_PROTOCOL_ID), *(p for p in protocols if p != KAD_PROTOCOL_ID)]

    def peer_ids(self) -> list[ID]:
        # KadDHT seeds a lookup from the whole peerstore when its routing table is thin.
        return [p for p in self._peerstore.peer_ids() if self._is_member(p)]

    def addrs(self, peer_id: ID) -> list[Multiaddr]:
        # KadDHT answers FIND_NODE with the target's addresses whenever the peerstore has
        # them; a mesh's DHT must not hand out where non-members are.
        if not self._is_member(peer_id):
            return []
        return self._peerstore.addrs(peer_id)

    def get_peer_record(self, peer_id: ID) -> Envelope | None:
        if not self._is_member(peer_id):
            return None
        return self._peerstore.get_peer_record(peer_id)


class ScopedHost:
    """A proxy of an :class:`IHost` that puts KadDHT on one mesh's protocol id.

    Everything is delegated to the real host except what KadDHT uses to reach the network:
    handler registration and ``new_stream`` translate ``/ipfs/kad/1.0.0`` to ``protocol_id``;
    the handler resets streams from non-members unread (after ``wait_member``, if given,
    has waited for the sender's admission in vain); streams are never opened to
    non-members; the connected-peer list leaves non-members out; and the peerstore shows
    every member, and no one else, as a kad server, and keeps non-members' addresses to itself.
    """

    def __init__(
        self,
        host: IHost,
        protocol_id: TProtocol,
        is_member: Callable[[ID], bool],
        wait_member: Callable[[ID], Awaitable[bool]] | None = None,
        on_reject: Callable[[ID, str], None] | None = None,
    ) -> None:
        self._host = host
        self.protocol_id = protocol_id
        self._is_member = is_member
        self._wait_member = wait_member
        self._on_reject = on_reject
        self._peerstore = _ScopedPeerStore(host.get_peerstore(), is_member)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._host, name)

    async def _admitted(self, peer_id: ID) -> bool:
        if self._is_member(peer_id):
            return True
        return self._wait_member is not None and await self._wait_member(peer_id)

    def _scoped(self, protocol_id: TProtocol) -> TProtocol:
        return self.protocol_id if protocol_id == KAD_PROTOCOL_ID else protocol_id

    def set_stream_handler(self, protocol_id: TProtocol, stream_handler: StreamHandlerFn) -> None:
        if protocol_id != KAD_PROTOCOL_ID:
            self._host.set_stream_handler(protocol_id, stream_handler)
            return

        async def members_only(stream: INetStream) -> None:
            peer_id = stream.muxed_conn.peer_id
            if not await self._admitted(peer_id):
                logger.warning(
                    "reset kad stream from %s: not a member of this mesh (%s)",
                    peer_id,
                    self.protocol_id,
                )
                if self._on_reject is not None:
                    self._on_reject(
                        peer_id, f"{self.protocol_id} stream before proving mesh membership"
                    )
                try:
                    await stream.reset()
                except Exception:
                    pass
                return
            await stream_handler(stream)

        self._host.set_stream_handler(self.protocol_id, members_only)

    def remove_stream_handler(self, protocol_id: TProtocol) -> None:
        self._host.remove_stream_handler(self._scoped(protocol_id))

    async def new_stream(self, peer_id: ID, protocol_ids: Sequence[TProtocol]) -> INetStream:
        scoped = [self._scoped(p) for p in protocol_ids]
        if self.protocol_id in scoped and not self._is_member(peer_id):
            raise _NotAMemberError(f"{peer_id} is not a member of this mesh")
        return await self._host.new_stream(peer_id, scoped)

    def get_connected_peers(self) -> list[ID]:
        # KadDHT seeds a lookup from the connected peers when its routing table is thin.
        return [p for p in self._host.get_connected_peers() if self._is_member(p)]

    def get_peerstore(self) -> IPeerStore:
        return cast(IPeerStore, self._peerstore)


class MeshKad:
    """A Kademlia DHT for one mesh, on a host that may serve other meshes too.

    Run it in a nursery (``await nursery.start(kad.run)``), seed it with ``add_peer`` for each
    member the membership layer knows, then ``provide`` and ``find_providers`` keys made by
    :func:`served_key` / :func:`on_disk_key`, and ``find_peer`` members' addresses. Every
    lookup gives up after ``timeout`` seconds and then returns an empty answer.

    ``is_member`` says whether a peer is a member now. ``wait_member``, if given, is awaited
    for the sender of an inbound kad stream that is not (yet) a member: it should wait a
    while for that peer's admission and return whether it was admitted. Without it such a
    stream is reset at once. ``on_reject(peer, reason)`` is told of every reset stream.
    """

    def __init__(
        self,
        host: IHost,
        mesh_id: str,
        is_member: Callable[[ID], bool],
        *,
        wait_member: Callable[[ID], Awaitable[bool]] | None = None,
        on_reject: Callable[[ID, str], None] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.host = host
        self.mesh_id = mesh_id
        self.protocol_id = protocol_id_for(mesh_id)
        self.timeout = timeout
        self._is_member = is_member
        self._wait_member = wait_member
        self._on_reject = on_reject
        self._dht: KadDHT | None = None

    def is_member(self, peer_id: ID) -> bool:
        """True for this host and for peers the membership predicate accepts."""
        return peer_id == self.host.get_id() or self._is_member(peer_id)

    @property
    def running(self) -> bool:
        return self._dht is not None

    @property
    def routing_table_size(self) -> int:
        return 0 if self._dht is None else self._dht.get_routing_table_size()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve this mesh's DHT until cancelled; ``started`` once the handler is registered."""
        if self._dht is not None:
            raise RuntimeError("this MeshKad is already running")
        logging.getLogger("libp2p.kad_dht.kad_dht").addFilter(_STREAM_CLOSE_NOISE)
        scoped = ScopedHost(
            self.host, self.protocol_id, self.is_member, self._wait_member, self._on_reject
        )
        dht = KadDHT(cast(IHost, scoped), DHTMode.SERVER)  # registers the scoped handler
        try:
            async with background_trio_service(dht):
                self._dht = dht
                logger.debug("kad for mesh %r serving on %s", self.mesh_id, self.protocol_id)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._dht = None
            self.host.remove_stream_handler(self.protocol_id)

    def _running_dht(self) -> KadDHT:
        if self._dht is None:
            raise RuntimeError("MeshKad is not running: start it with nursery.start(kad.run)")
        return self._dht

    async def add_peer(self, peer_id: ID, addrs: Sequence[Multiaddr]) -> bool:
        """Bootstrap: remember a member's addresses and put it in the routing table.

        Returns False (and changes nothing) for a peer that is not a member.
        """
        dht = self._running_dht()
        if not self._is_member(peer_id) or peer_id == self.host.get_id():
            logger.debug("kad add_peer(%s) ignored: not another member of this mesh", peer_id)
            return False
        peerstore = self.host.get_peerstore()
        if addrs:
            peerstore.add_addrs(peer_id, list(addrs), PERMANENT_ADDR_TTL)
        known = list(addrs) or (peerstore.addrs(peer_id) if peerstore.has_peer(peer_id) else [])
        if not known:
            logger.debug("kad add_peer(%s) ignored: no address for it", peer_id)
            return False
        # The membership layer vouches that the peer is a member running this DHT, so the
        # identify-based server-mode check (which may predate this mesh's handler) is skipped.
        return await dht.routing_table.add_peer(
            PeerInfo(peer_id, known), skip_server_mode_check=True
        )

    async def find_peer(self, peer_id: ID) -> PeerInfo | None:
        """A member's addresses, from the routing table, the peerstore or a DHT lookup.

        None for a peer that is not a member: this DHT neither looks for nor tells of them.
        """
        dht = self._running_dht()
        if not self.is_member(peer_id):
            return None
        with trio.move_on_after(self.timeout):
            return await dht.find_peer(peer_id)
        logger.info("kad find_peer(%s) gave up after %.1f s", peer_id, self.timeout)
        return None

    async def provide(self, key: str) -> bool:
        """Announce this host as a provider of ``key``; True if it went out to a member.

        KadDHT sends ADD_PROVIDER without waiting for an answer, so True means sent, not stored.
        """
        dht = self._running_dht()
        with trio.move_on_after(self.timeout):
            return await dht.provide(key)
        logger.info("kad provide(%r) gave up after %.1f s", key, self.timeout)
        return False

    async def find_providers(self, key: str) -> list[ID]:
        """The members that provide ``key``, each once, in the order the DHT returned them.

        Records naming a peer that is no longer a member are left out.
        """
        dht = self._running_dht()
        found: list[PeerInfo] = []
        with trio.move_on_after(self.timeout) as scope:
            found = await dht.find_providers(key)
        if scope.cancelled_caught:
            logger.info("kad find_providers(%r) gave up after %.1f s", key, self.timeout)
        providers = dict.fromkeys(info.peer_id for info in found if self.is_member(info.peer_id))
        return list(providers)
