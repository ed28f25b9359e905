"""The relay decisions (pure) and a relayed connection between real hosts on loopback."""

from __future__ import annotations

import multiaddr
import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.relay.circuit_v2 import CircuitV2Protocol, CircuitV2Transport
from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP
from libp2p.tools.anyio_service.context import background_trio_service

from meshp2p.mesh._relay import (
    RELAY_LIMITS,
    can_relay_for,
    circuit_addr,
    conn_is_relayed,
    connection_path,
    needs_relay,
    split_addrs,
)
from meshp2p.transport import close_write, mesh_host, read_some, transport_addrs

RELAY = "12D3KooWEprYViVmAiL3CywvAHKeXH4kG1pbQ9ZPJs89QxsxqbaN"
ME = "12D3KooWMJ6nbpKvAhaKg4xzMcimoQZjLPcZwzvhPNRt5fckL8qy"


def test_only_a_node_without_a_global_address_reserves() -> None:
    assert needs_relay(["/ip4/192.168.1.2/tcp/4001", "/ip4/127.0.0.1/tcp/4001"])
    assert needs_relay(["/ip4/10.77.0.11/udp/1/quic-v1"])
    assert needs_relay([])
    assert not needs_relay(["/ip4/192.168.1.2/tcp/1", "/ip4/8.8.4.4/tcp/1"])
    assert not needs_relay(["/ip6/2001:4860::1/tcp/1"])
    # Our own circuit addresses do not make us reachable.
    assert needs_relay([f"/ip4/8.8.4.4/tcp/1/p2p/{RELAY}/p2p-circuit/p2p/{ME}"])


def test_a_relay_is_a_member_beyond_our_own_networks() -> None:
    lan = ["/ip4/192.168.1.2/tcp/1", "/ip4/127.0.0.1/tcp/1"]
    assert can_relay_for(["/ip4/10.77.0.11/tcp/5", "/ip4/127.0.0.1/tcp/5"], lan)
    assert can_relay_for(["/ip4/8.8.4.4/udp/5/quic-v1"], lan)
    # A neighbour on our LAN, or loopback (every test mesh), is no relay.
    assert not can_relay_for(["/ip4/192.168.1.7/tcp/5", "/ip4/127.0.0.1/tcp/5"], lan)
    assert not can_relay_for(["/ip4/127.0.0.1/tcp/5"], ["/ip4/127.0.0.1/tcp/1"])
    assert not can_relay_for([f"/ip4/8.8.4.4/tcp/1/p2p/{RELAY}/p2p-circuit/p2p/{ME}"], lan)


def test_circuit_address_names_the_relay_then_us() -> None:
    assert (
        circuit_addr(f"/ip4/10.0.0.1/tcp/5/p2p/{RELAY}", RELAY, ME)
        == f"/ip4/10.0.0.1/tcp/5/p2p/{RELAY}/p2p-circuit/p2p/{ME}"
    )
    assert circuit_addr("/ip4/10.0.0.1/udp/5/quic-v1", RELAY, ME).endswith(f"/p2p/{ME}")


def test_circuits_are_dialled_last_and_keep_their_relay() -> None:
    circuit = f"/ip4/10.0.0.1/udp/5/quic-v1/p2p/{RELAY}/p2p-circuit/p2p/{ME}"
    addrs = transport_addrs([circuit, f"/ip4/192.168.1.2/tcp/7/p2p/{ME}"])
    assert [str(a) for a in addrs] == [
        "/ip4/192.168.1.2/tcp/7",
        f"/ip4/10.0.0.1/udp/5/quic-v1/p2p/{RELAY}/p2p-circuit",
    ]
    direct, circuits = split_addrs(addrs)
    assert (direct, circuits) == ([addrs[0]], [addrs[1]])


def test_connection_path_names() -> None:
    assert connection_path(relayed=True, punched=False) == "relayed"
    assert connection_path(relayed=False, punched=True) == "hole-punched"
    assert connection_path(relayed=False, punched=False) == "direct"


ECHO = TProtocol("/test/echo/1")


@pytest.mark.parametrize("listen", ["/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"])
async def test_our_hosts_carry_a_circuit_through_a_relay(listen: str) -> None:
    """py-libp2p's circuit v2 over the node's own host (our Noise and yamux inside the
    circuit, TCP or QUIC to the relay): reserve, connect, streams both ways, half-close."""
    addrs = [multiaddr.Multiaddr(listen)]
    relay, behind, dialer = (mesh_host(create_new_key_pair(), addrs) for _ in range(3))

    async def echo(stream: object) -> None:
        got = b""
        while chunk := await read_some(stream, 65536):  # type: ignore[arg-type]
            got += chunk
        await stream.write(b"echo:" + got)  # type: ignore[attr-defined]
        await stream.close()  # type: ignore[attr-defined]

    async with relay.run(addrs), behind.run(addrs), dialer.run(addrs):
        services = [
            CircuitV2Protocol(relay, RELAY_LIMITS, allow_hop=True),
            CircuitV2Protocol(behind, RELAY_LIMITS, allow_hop=False),
            CircuitV2Protocol(dialer, RELAY_LIMITS, allow_hop=False),
        ]
        behind.set_stream_handler(ECHO, echo)
        dialer.set_stream_handler(ECHO, echo)
        async with (
            background_trio_service(services[0]),
            background_trio_service(services[1]),
            background_trio_service(services[2]),
        ):
            for service in services:
                await service.event_started.wait()
            relay_info = PeerInfo(relay.get_id(), relay.get_addrs())
            with trio.fail_after(20):
                await behind.connect(relay_info)
                transport = CircuitV2Transport(
                    behind, services[1], RelayConfig(roles=RelayRole.STOP)
                )
                stream = await behind.new_stream(relay.get_id(), [HOP])
                assert await transport._make_reservation(stream, relay.get_id())
                await stream.close()

                await dialer.connect(relay_info)
                through = CircuitV2Transport(dialer, services[2], RelayConfig(roles=RelayRole.STOP))
                relay_addr = str(relay.get_addrs()[0]).split("/p2p/")[0]
                circuit = circuit_addr(
                    relay_addr, relay.get_id().to_base58(), ID.to_base58(behind.get_id())
                )
                conn = await through.dial(multiaddr.Multiaddr(circuit))
                assert conn_is_relayed(conn)

                for a, b in ((dialer, behind), (behind, dialer)):
                    stream = await a.new_stream(b.get_id(), [ECHO])
                    await stream.write(b"x" * 100_000)
                    await close_write(stream)
                    answer = b""
                    while chunk := await read_some(stream, 65536):
                        answer += chunk
                    assert answer == b"echo:" + b"x" * 100_000
