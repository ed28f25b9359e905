"""Integration: real node processes on loopback forming a mesh by invite token."""

from __future__ import annotations

import secrets
import signal
import time
from pathlib import Path

import httpx
import multiaddr
import pytest
import trio
from conftest import NodeProcess, wait_until
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.stream.exceptions import StreamError
from libp2p.peer.peerinfo import info_from_p2p_addr

from meshp2p.mesh._invite import InviteToken, MeshCredentials
from meshp2p.mesh._kad import protocol_id_for

pytestmark = pytest.mark.e2e

LOOPBACK = ["--listen", "/ip4/127.0.0.1/udp/0/quic-v1", "--listen", "/ip4/127.0.0.1/tcp/0"]


def peer_ids(node: NodeProcess) -> set[str]:
    return {p["id"] for p in node.status()["peers"]}


def node_id(node: NodeProcess) -> str:
    return node.wait_for_line("meshp2p ").split()[-1]


def invite(node: NodeProcess) -> str:
    return node.wait_for_line("invite: ").split(" ", 1)[1]


def test_four_nodes_form_a_mesh_and_notice_leaving_dying_and_returning(
    start_node: object, model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    start = start_node  # type: ignore[assignment]
    a: NodeProcess = start(["--model", str(model_path), *LOOPBACK]).wait_started()
    token = invite(a)
    homes = {name: tmp_path_factory.mktemp(f"node-{name}") for name in "bcd"}
    b, c = (start(["--join", token, *LOOPBACK], home=homes[n]).wait_started() for n in "bc")
    # A joiner's own token lets others in too.
    d = start(["--join", invite(b), *LOOPBACK], home=homes["d"]).wait_started()
    nodes = {"a": a, "b": b, "c": c, "d": d}
    ids = {name: node_id(node) for name, node in nodes.items()}

    # Every node lists the other three within 5 s of the last one starting.
    for name, node in nodes.items():
        others = {ids[n] for n in nodes if n != name}
        wait_until(
            lambda node=node, others=others: peer_ids(node) == others,
            5,
            f"{name} to list the other three",
        )
    view = {p["id"]: p for p in b.status()["peers"]}
    assert view[ids["a"]]["role"] == "host"
    assert view[ids["c"]]["role"] == "standby"
    assert view[ids["a"]]["memory_total"] > 0
    assert b.status()["mesh_id"] == a.status()["mesh_id"]

    # The mesh-scoped DHT knows who serves and who holds the model.
    def providers() -> dict:  # type: ignore[type-arg]
        url = d.console_url + "/api/providers/gemma-3-270m-Q4_K_M"
        return httpx.get(url, timeout=30).json()  # type: ignore[no-any-return]

    wait_until(lambda: providers()["served_by"] == [ids["a"]], 15, "D to find A in the DHT")
    assert providers()["on_disk"] == [ids["a"]]
    assert d.status()["kad"]["protocol"].startswith("/mesh/kad/1.0.0/")

    # A clean shutdown is noticed within 2 s.
    assert d.stop(signal.SIGINT) == 0
    stopped = time.monotonic()
    for name in "abc":
        wait_until(
            lambda n=nodes[name]: ids["d"] not in peer_ids(n),
            2.0,
            f"{name} to drop the node that left",
        )
    assert time.monotonic() - stopped < 2.0

    # A killed node is declared dead within 15 s.
    c.kill()
    killed = time.monotonic()
    for name in "ab":
        wait_until(
            lambda n=nodes[name]: ids["c"] not in peer_ids(n),
            15,
            f"{name} to declare the killed node dead",
        )
    assert time.monotonic() - killed < 15
    # Its connections go with it (a dead QUIC peer's would linger until an idle timeout).
    for name in "ab":
        wait_until(
            lambda n=nodes[name]: ids["c"] not in {c["peer"] for c in n.status()["connections"]},
            5,
            f"{name} to close its connection to the dead node",
        )
    # At the default log level a death is one line of ours, not py-libp2p's stream errors.
    for name in "ab":
        foreign = [ln for ln in nodes[name].stderr_lines if " meshp2p." not in ln]
        assert foreign == [], f"{name} printed: {foreign}"

    # Restarted with the same home, it comes back with the same id.
    c2 = start(["--join", token, *LOOPBACK], home=homes["c"]).wait_started()
    assert node_id(c2) == ids["c"]
    for name in "ab":
        wait_until(
            lambda n=nodes[name]: ids["c"] in peer_ids(n), 10, f"{name} to list the restarted node"
        )


def test_wrong_secret_is_never_admitted(
    start_node: object, tmp_path: Path, model_path: Path
) -> None:
    start = start_node  # type: ignore[assignment]
    a: NodeProcess = start(["--model", str(model_path), *LOOPBACK]).wait_started()
    real = InviteToken.decode(invite(a))
    forged = InviteToken(
        MeshCredentials(real.credentials.mesh_id, secrets.token_bytes(32)), real.bootstrap
    ).encode()
    w: NodeProcess = start(["--join", forged, *LOOPBACK], home=tmp_path).wait_started()
    w_id = node_id(w)
    wait_until(
        lambda: any(r["peer"] == w_id for r in a.status()["rejected"]),
        10,
        "the node to refuse the wrong secret",
    )
    assert peer_ids(a) == set()
    assert peer_ids(w) == set()
    assert any("handshake failed" in r["reason"] for r in w.status()["rejected"])


def test_malformed_invite_is_a_one_line_error(start_node: object) -> None:
    start = start_node  # type: ignore[assignment]
    node: NodeProcess = start(["--join", "mp1.not-a-token"])
    assert node.proc.wait(timeout=60) == 1
    node.proc.stderr and node.proc.stderr.close()
    wait_until(lambda: node.stderr_lines, 5, "the error line")
    assert node.stderr_lines[-1].startswith("meshp2p: error: invite token is damaged")
    assert not any("Traceback" in line for line in node.stderr_lines)


MESH_PROTOCOLS = ("/mesh/gossip/1.0.0", "/mesh/route/1.0.0", "/mesh/rpc-tensor/1.0.0")


async def test_non_member_gets_no_mesh_stream(
    tmp_path_factory: pytest.TempPathFactory, model_path: Path
) -> None:
    home = tmp_path_factory.mktemp("gated")
    node = NodeProcess(home, ["--model", str(model_path), *LOOPBACK])
    try:
        await trio.to_thread.run_sync(node.wait_started)
        token = InviteToken.decode(invite(node))
        outsider = new_host(
            key_pair=create_new_key_pair(),
            listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")],
        )
        async with outsider.run(listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            target = next(a for a in token.bootstrap if "/tcp/" in a)
            info = info_from_p2p_addr(multiaddr.Multiaddr(target))
            await outsider.connect(info)
            # Every /mesh/* protocol, opened together: each waits out the same grace.
            streams = []
            kad = str(protocol_id_for(token.credentials.mesh_id))
            for protocol in (*MESH_PROTOCOLS, kad):
                stream = await outsider.new_stream(info.peer_id, [TProtocol(protocol)])
                await stream.write(b"\x01\xa0")
                streams.append(stream)
            for stream in streams:
                with trio.fail_after(15), pytest.raises(StreamError):
                    while True:
                        if not await stream.read(1024):
                            raise StreamError("closed without serving")
        status = await trio.to_thread.run_sync(node.status)
        refused = [r["reason"] for r in status["rejected"]]
        for protocol in (*MESH_PROTOCOLS, kad):
            assert f"{protocol} stream before proving mesh membership" in refused
        assert status["lending"] == []  # no llama.cpp RPC server was started for it
    finally:
        await trio.to_thread.run_sync(node.stop)
