"""MeshKad on real py-libp2p hosts on loopback: scoped protocol id, membership gate, lookups."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetStream
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.kad_dht.common import PROTOCOL_ID as IPFS_KAD
from libp2p.kad_dht.kad_dht import _encode_key
from libp2p.kad_dht.pb.kademlia_pb2 import Message
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.utils.varint import encode_uvarint, read_varint_prefixed_bytes_limited
from multiaddr import Multiaddr

from meshp2p.mesh import _service as _mesh
from meshp2p.mesh._invite import MeshCredentials
from meshp2p.mesh._kad import MeshKad, ScopedHost, on_disk_key, protocol_id_for, served_key
from meshp2p.mesh._service import LocalState, MeshService

TCP = "/ip4/127.0.0.1/tcp/0"
QUIC = "/ip4/127.0.0.1/udp/0/quic-v1"
STEP_TIMEOUT = 10.0


@asynccontextmanager
async def running_hosts(n: int, listen: str = TCP) -> AsyncIterator[list[IHost]]:
    addrs = [Multiaddr(listen)]
    quic = "quic" in listen
    hosts = [
        new_host(key_pair=create_new_key_pair(), listen_addrs=addrs, enable_quic=quic)
        for _ in range(n)
    ]
    async with AsyncExitStack() as stack:
        for host in hosts:
            await stack.enter_async_context(host.run(listen_addrs=addrs))
        yield hosts


async def start_kads(
    nursery: trio.Nursery, hosts: Sequence[IHost], mesh_id: str, is_member: Callable[[ID], bool]
) -> list[MeshKad]:
    kads = [MeshKad(host, mesh_id, is_member) for host in hosts]
    for kad in kads:
        await nursery.start(kad.run)
    return kads


async def link(a: IHost, b: IHost, *meshes: tuple[MeshKad, MeshKad]) -> None:
    """Connect two hosts and introduce them to each other in each mesh given."""
    with trio.fail_after(STEP_TIMEOUT):
        await a.connect(PeerInfo(b.get_id(), b.get_addrs()))
    for kad_a, kad_b in meshes:
        assert await kad_a.add_peer(b.get_id(), b.get_addrs())
        assert await kad_b.add_peer(a.get_id(), a.get_addrs())


async def link_chain(hosts: Sequence[IHost], *meshes: Sequence[MeshKad]) -> None:
    """A-B, B-C, C-D: each host knows only its neighbours."""
    async with trio.open_nursery() as nursery:
        for i in range(len(hosts) - 1):
            pairs = [(kads[i], kads[i + 1]) for kads in meshes]
            nursery.start_soon(link, hosts[i], hosts[i + 1], *pairs)


def bare(addrs: Sequence[Multiaddr]) -> set[str]:
    """Addresses without their /p2p/<peer id> suffix, which some lists carry and some not."""
    return {str(addr).split("/p2p/")[0] for addr in addrs}


def kad_warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and text in r.getMessage()
    ]


class Admissions:
    """A membership set whose ``wait`` waits ``grace`` seconds for a peer, as MeshService's."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.members: set[ID] = set()
        self._changed = trio.Event()

    def admit(self, peer: ID) -> None:
        self.members.add(peer)
        self._changed.set()
        self._changed = trio.Event()

    async def wait(self, peer: ID) -> bool:
        with trio.move_on_after(self.grace):
            while peer not in self.members:
                await self._changed.wait()
        return peer in self.members


async def find_node(stream: INetStream, target: ID) -> Message:
    """One raw FIND_NODE on an open kad stream, and its answer."""
    request = Message(type=Message.MessageType.FIND_NODE, key=target.to_bytes())
    body = request.SerializeToString()
    await stream.write(encode_uvarint(len(body)) + body)
    answer = Message()
    answer.ParseFromString(await read_varint_prefixed_bytes_limited(stream, 1 << 20))
    return answer


def test_provider_keys_are_multihashes_of_namespaced_names() -> None:
    served = served_key("gemma-3-270m")
    digest = hashlib.sha256(b"/mesh-model/served/gemma-3-270m").digest()
    assert served == "1220" + digest.hex()
    assert served == (bytes([0x12, 0x20]) + digest).hex()
    # KadDHT sends exactly the 34 multihash bytes: what js-/go-libp2p take as a CID key.
    assert _encode_key(served) == bytes.fromhex(served)
    assert len(_encode_key(served)) == 34
    sha = "ab" * 32
    assert (
        on_disk_key(sha) == "1220" + hashlib.sha256(f"/mesh-model/disk/{sha}".encode()).hexdigest()
    )
    snowman = hashlib.sha256("/mesh-model/served/☃".encode()).hexdigest()
    assert served_key("☃") == "1220" + snowman
    assert len({served_key("a"), served_key("b"), on_disk_key("a")}) == 3


def test_protocol_id_is_namespaced() -> None:
    pid = protocol_id_for("my mesh ☃")
    assert pid.startswith("/mesh/kad/1.0.0/")
    assert len(pid.rsplit("/", 1)[1]) == 32
    assert pid.isascii()
    assert pid == protocol_id_for("my mesh ☃")
    assert pid != protocol_id_for("my mesh")


async def test_only_the_scoped_protocol_is_registered_and_it_goes_on_stop() -> None:
    async with running_hosts(1) as (host,), trio.open_nursery() as nursery:
        kad = MeshKad(host, "mesh-a", lambda _: True)
        with pytest.raises(RuntimeError, match="not running"):
            await kad.provide(served_key("x"))
        await nursery.start(kad.run)
        protocols = host.get_mux().get_protocols()
        assert kad.protocol_id in protocols
        assert IPFS_KAD not in protocols
        nowhere = ID.from_pubkey(create_new_key_pair().public_key)
        assert not await kad.add_peer(nowhere, [])
        assert kad.routing_table_size == 0
        nursery.cancel_scope.cancel()
    assert kad.protocol_id not in host.get_mux().get_protocols()
    assert not kad.running


async def test_lookups_cross_a_chain_of_members(caplog: pytest.LogCaptureFixture) -> None:
    async with running_hosts(4) as hosts, trio.open_nursery() as nursery:
        a, _, _, d = hosts
        members = {h.get_id() for h in hosts}
        kads = await start_kads(nursery, hosts, "mesh-a", members.__contains__)
        await link_chain(hosts, kads)
        assert a.get_id() not in d.get_connected_peers()
        assert a.get_id() not in d.get_peerstore().peer_ids()

        info = await kads[3].find_peer(a.get_id())
        assert info is not None
        assert bare(info.addrs) == bare(a.get_addrs())

        key = served_key("gemma-3-270m")
        assert await kads[0].provide(key)
        assert await kads[3].find_providers(key) == [a.get_id()]
        assert await kads[2].find_providers(key) == [a.get_id()]
        assert await kads[3].find_providers(on_disk_key("00" * 32)) == []
        nursery.cancel_scope.cancel()
    # Each lookup ends with clients closing their streams; that is not worth a warning.
    assert kad_warnings(caplog, "Failed to read DHT message") == []


async def test_non_member_is_reset_and_finds_nothing(caplog: pytest.LogCaptureFixture) -> None:
    async with running_hosts(5) as hosts, trio.open_nursery() as nursery:
        a, b, _, _, outsider = hosts
        members = {h.get_id() for h in hosts[:4]}
        kads = await start_kads(nursery, hosts[:4], "mesh-a", members.__contains__)
        # The outsider knows the mesh id and trusts everyone; the members do not trust it.
        (rogue,) = await start_kads(nursery, [outsider], "mesh-a", lambda _: True)
        await link_chain(hosts[:4], kads)
        with trio.fail_after(STEP_TIMEOUT):
            await outsider.connect(PeerInfo(b.get_id(), b.get_addrs()))
        assert not await kads[1].add_peer(outsider.get_id(), outsider.get_addrs())
        await rogue.add_peer(b.get_id(), b.get_addrs())

        key = served_key("gemma-3-270m")
        assert await kads[0].provide(key)

        # A raw kad stream from the outsider is reset before anything is read from it: the
        # reset may even beat multistream's last answer, failing the outsider's new_stream.
        with trio.fail_after(STEP_TIMEOUT), pytest.raises(Exception):  # noqa: B017
            stream = await outsider.new_stream(b.get_id(), [kads[1].protocol_id])
            await stream.write(b"\x00")
            if not await stream.read(1):
                raise EOFError
        assert kad_warnings(caplog, f"reset kad stream from {outsider.get_id()}")

        assert await rogue.find_providers(key) == []
        assert await rogue.find_peer(a.get_id()) is None
        rogue_key = served_key("rogue-model")
        await rogue.provide(rogue_key)
        assert await kads[1].find_providers(rogue_key) == []
        assert await kads[3].find_providers(rogue_key) == []
        assert outsider.get_id() not in (await kads[3].find_providers(key))

        # Members never open kad streams to the outsider, though B is connected to it.
        inbound: list[ID] = []

        async def record(stream: INetStream) -> None:
            inbound.append(stream.muxed_conn.peer_id)
            await stream.reset()

        outsider.set_stream_handler(rogue.protocol_id, record)
        for kad in kads:
            assert await kad.find_providers(rogue_key) == []
            assert await kad.find_peer(outsider.get_id()) is None
        # B knows where the outsider is, but its DHT neither dials nor tells of it.
        scoped = ScopedHost(b, kads[1].protocol_id, members.__contains__)
        assert b.get_peerstore().addrs(outsider.get_id())
        assert scoped.get_peerstore().addrs(outsider.get_id()) == []
        assert outsider.get_id() not in scoped.get_connected_peers()
        with pytest.raises(Exception, match="not a member"):
            await scoped.new_stream(outsider.get_id(), [IPFS_KAD])
        assert inbound == []
        nursery.cancel_scope.cancel()


async def test_meshes_on_the_same_hosts_do_not_share_records() -> None:
    async with running_hosts(4) as hosts, trio.open_nursery() as nursery:
        a, _, _, d = hosts
        members = {h.get_id() for h in hosts}
        red = await start_kads(nursery, hosts, "red", members.__contains__)
        blue = await start_kads(nursery, hosts, "blue", members.__contains__)
        assert {red[0].protocol_id, blue[0].protocol_id} <= set(a.get_mux().get_protocols())
        await link_chain(hosts, red, blue)

        red_only, blue_only = served_key("red-model"), served_key("blue-model")
        assert await red[0].provide(red_only)
        assert await blue[3].provide(blue_only)
        assert await red[3].find_providers(red_only) == [a.get_id()]
        assert await blue[0].find_providers(blue_only) == [d.get_id()]
        for kad in blue:
            assert await kad.find_providers(red_only) == []
        for kad in red:
            assert await kad.find_providers(blue_only) == []
        nursery.cancel_scope.cancel()


async def test_lookups_work_over_quic() -> None:
    async with running_hosts(4, QUIC) as hosts, trio.open_nursery() as nursery:
        a = hosts[0]
        members = {h.get_id() for h in hosts}
        kads = await start_kads(nursery, hosts, "mesh-q", members.__contains__)
        await link_chain(hosts, kads)
        info = await kads[3].find_peer(a.get_id())
        assert info is not None
        assert any("quic-v1" in str(addr) for addr in info.addrs)
        key = on_disk_key("ab" * 32)
        assert await kads[0].provide(key)
        assert await kads[3].find_providers(key) == [a.get_id()]
        nursery.cancel_scope.cancel()


async def test_a_member_whose_kad_stream_beats_its_admission_is_served(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The kad gate waits for the membership handshake, like the other /mesh/* gates."""
    async with running_hosts(3) as hosts, trio.open_nursery() as nursery:
        a, b, outsider = hosts
        admissions = Admissions(grace=2.0)
        kad_a = MeshKad(a, "mesh-a", admissions.members.__contains__, wait_member=admissions.wait)
        kad_b = MeshKad(b, "mesh-a", lambda _: True)
        for kad in (kad_a, kad_b):
            await nursery.start(kad.run)
        key = served_key("gemma-3-270m")
        await kad_a.provide(key)  # stored locally; no member to send it to yet
        with trio.fail_after(STEP_TIMEOUT):
            await b.connect(PeerInfo(a.get_id(), a.get_addrs()))
            await outsider.connect(PeerInfo(a.get_id(), a.get_addrs()))
        assert await kad_b.add_peer(a.get_id(), a.get_addrs())

        # B's lookup reaches A before A has admitted B: A holds the streams until it does.
        async def admit_b_later() -> None:
            await trio.sleep(0.5)
            admissions.admit(b.get_id())

        nursery.start_soon(admit_b_later)
        with trio.fail_after(STEP_TIMEOUT):
            assert await kad_b.find_providers(key) == [a.get_id()]
        assert kad_warnings(caplog, f"reset kad stream from {b.get_id()}") == []
        # Once admitted, B is answered at once.
        with trio.fail_after(STEP_TIMEOUT):
            stream = await b.new_stream(a.get_id(), [kad_a.protocol_id])
            assert (await find_node(stream, a.get_id())).type == Message.MessageType.FIND_NODE
            await stream.close()

        # A peer that is never admitted is reset once the grace is over, not before.
        started = trio.current_time()
        with trio.fail_after(STEP_TIMEOUT), pytest.raises(Exception):  # noqa: B017
            stream = await outsider.new_stream(a.get_id(), [kad_a.protocol_id])
            await find_node(stream, a.get_id())
        assert trio.current_time() - started >= admissions.grace - 0.1
        assert kad_warnings(caplog, f"reset kad stream from {outsider.get_id()}")
        nursery.cancel_scope.cancel()


async def test_mesh_service_kad_gate_waits_for_the_handshake(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """MeshService gives its kad the same grace as its other /mesh/* handlers."""
    monkeypatch.setattr(_mesh, "_MEMBERSHIP_GRACE", 2.0)
    credentials = MeshCredentials.new()
    local = LocalState("host", (), (), 0, 0, {})
    service = MeshService(
        create_new_key_pair(), credentials, local=lambda: local, version="test", listen=[TCP]
    )
    async with running_hosts(2) as (b, outsider), trio.open_nursery() as nursery:
        await nursery.start(service.run)
        a = service.host
        protocol = protocol_id_for(credentials.mesh_id)
        with trio.fail_after(STEP_TIMEOUT):
            await b.connect(PeerInfo(a.get_id(), a.get_addrs()))
            await outsider.connect(PeerInfo(a.get_id(), a.get_addrs()))

        async def admit_b_later() -> None:
            await trio.sleep(0.5)
            service._admit(b.get_id())  # what a completed /mesh/auth handshake does

        # B's kad stream arrives while its handshake is still (notionally) running.
        nursery.start_soon(admit_b_later)
        with trio.fail_after(STEP_TIMEOUT):
            stream = await b.new_stream(a.get_id(), [protocol])
            assert (await find_node(stream, a.get_id())).type == Message.MessageType.FIND_NODE
            await stream.close()
        assert kad_warnings(caplog, f"reset kad stream from {b.get_id()}") == []

        started = trio.current_time()
        with trio.fail_after(STEP_TIMEOUT), pytest.raises(Exception):  # noqa: B017
            stream = await outsider.new_stream(a.get_id(), [protocol])
            await find_node(stream, a.get_id())
        assert trio.current_time() - started >= 2.0 - 0.1
        assert kad_warnings(caplog, f"reset kad stream from {outsider.get_id()}")
        nursery.cancel_scope.cancel()
