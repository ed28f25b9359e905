"""The namespace lab itself, and a mesh across it: public members and one behind NAT."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import wait_until
from labnodes import FAST, LabNode, lab, lab_nodes, text_of
from netlab import Host, Lab, can_connect, sh

__all__ = ["lab", "lab_nodes"]  # fixtures, used by name

pytestmark = pytest.mark.lab

DEFAULT = "gemma-3-270m-Q4_K_M"


def listening(host: Host, port: int) -> socket.socket:
    def bind() -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", port))
        sock.listen()
        return sock

    return host.call(bind)


def test_nat_lets_connections_out_and_keeps_them_from_coming_in(lab: Lab) -> None:
    a, b = lab.public("a"), lab.public("b")
    router = lab.nat("r")
    inside = router.private("c")
    servers = [listening(h, 5000) for h in (a, b, inside)]
    try:
        assert can_connect(a, b.ip, 5000)
        assert can_connect(inside, a.ip, 5000)
        # Nothing reaches the NAT'd host, neither at its own address nor the router's.
        assert not can_connect(a, inside.ip, 5000, timeout=1)
        assert not can_connect(a, router.wan.ip, 5000, timeout=1)
        # From the outside, the NAT'd host's connections come from the router's address.
        inside.call(lambda: socket.create_connection((a.ip, 5000), timeout=2))
        _, (seen, _) = a.call(lambda: servers[0].accept())
        assert seen == router.wan.ip

        a.link(False)
        assert not can_connect(b, a.ip, 5000, timeout=1)
        a.link(True)
        wait_until(lambda: can_connect(b, a.ip, 5000, timeout=1), 10, "the link to come back")

        a.cap("1mbit")
        assert "rate 1Mbit" in a.run("tc", "qdisc", "show", "dev", "eth0")
        assert "rate 1Mbit" in sh("tc", "qdisc", "show", "dev", a.peer, ns=a.bridge_ns)
        a.cap(None)
        assert "tbf" not in a.run("tc", "qdisc", "show", "dev", "eth0")
    finally:
        for server in servers:
            server.close()


def test_lab_leaves_no_namespace_behind(tmp_path: Path) -> None:
    try:
        made = Lab(tag="gone")
    except Exception as why:
        pytest.skip(str(why))
    try:
        made.public("a")
        made.nat("r").private("c")
        names = set(made.namespaces)
    finally:
        made.close()
    assert not names & set(sh("ip", "netns", "list").split())


def test_node_behind_nat_joins_a_public_member_and_is_served_through_it(
    lab: Lab, lab_nodes: Callable[[Host, list[str]], LabNode], model_path: Path
) -> None:
    a_host = lab.public("a")
    inside = lab.nat("r").private("n")
    a = lab_nodes(a_host, ["--model", str(model_path), *FAST]).wait_ready()
    n = lab_nodes(inside, ["--join", a.invite(), *FAST]).wait_started()

    # Gossip crosses the NAT on the connection the NAT'd node opened.
    wait_until(lambda: a.peer_ids() == {n.node_id()}, 15, "A to list the NAT'd node")
    wait_until(lambda: n.peer_ids() == {a.node_id()}, 15, "the NAT'd node to list A")
    reply = n.chat(
        {
            "model": DEFAULT,
            "messages": [{"role": "user", "content": "Say hi."}],
            "max_tokens": 8,
            "temperature": 0,
        }
    )
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-meshp2p-node"] == a.node_id()
    events, serving = n.stream_chat(
        {"model": DEFAULT, "messages": [{"role": "user", "content": "Count."}], "max_tokens": 8}
    )
    assert serving == a.node_id()
    assert text_of(events)
