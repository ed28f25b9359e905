"""LAN discovery across two Linux network namespaces joined by a veth pair.

The test makes the namespaces itself (as root; skipped with the reason otherwise).
The joiner's invite token holds a wrong address for the founder, so only mDNS can
bring them together; a node of another mesh on the same LAN is never admitted.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import NodeProcess, wait_until

from meshp2p.mesh import InviteToken

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2's ip is not installed"),
]


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def lan() -> Iterator[tuple[str, str]]:
    """Two namespaces on one link: 10.77.0.1 and 10.77.0.2."""
    tag = secrets.token_hex(3)
    ns = (f"mp-a-{tag}", f"mp-b-{tag}")
    veth = (f"mpa{tag}", f"mpb{tag}")
    for name in ns:
        ip("netns", "add", name)
    try:
        ip("link", "add", veth[0], "type", "veth", "peer", "name", veth[1])
        for i, (name, dev) in enumerate(zip(ns, veth, strict=True)):
            ip("link", "set", dev, "netns", name)
            ip("-n", name, "addr", "add", f"10.77.0.{i + 1}/24", "dev", dev)
            ip("-n", name, "link", "set", dev, "up")
            ip("-n", name, "link", "set", "lo", "up")
        yield ns
    finally:
        for name in ns:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def in_namespace(ns: str, address: str, args: list[str], home: Path) -> NodeProcess:
    listen = ["--listen", f"/ip4/{address}/tcp/0", "--listen", f"/ip4/{address}/udp/0/quic-v1"]
    return NodeProcess(
        home, ["--log-level", "INFO", *args, *listen], wrap=["ip", "netns", "exec", ns]
    )


def logged(node: NodeProcess, text: str) -> bool:
    return any(text in line for line in node.stderr_lines)


def test_members_on_one_lan_find_each_other_by_mdns(
    lan: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    a_ns, b_ns = lan
    nodes: list[NodeProcess] = []
    try:
        # A node of another mesh on the same LAN, up first: it must hear nobody (its
        # service name differs), and nobody may dial it.
        stranger = in_namespace(
            b_ns, "10.77.0.2", ["--standby", "--lan"], tmp_path_factory.mktemp("c")
        )
        nodes.append(stranger)
        stranger.wait_started()
        c_id = stranger.wait_for_line("meshp2p ").split()[-1]

        a = in_namespace(a_ns, "10.77.0.1", ["--standby", "--lan"], tmp_path_factory.mktemp("a"))
        nodes.append(a)
        a.wait_started()
        a_id = a.wait_for_line("meshp2p ").split()[-1]
        token = InviteToken.decode(a.wait_for_line("invite: ").split(" ", 1)[1])
        # The right secret, a wrong address: the bootstrap dial can never succeed.
        stale = InviteToken(token.credentials, (f"/ip4/10.77.0.1/tcp/9/p2p/{a_id}",)).encode()
        b = in_namespace(
            b_ns, "10.77.0.2", ["--join", stale, "--lan"], tmp_path_factory.mktemp("b")
        )
        nodes.append(b)
        b.wait_started()
        b_id = b.wait_for_line("meshp2p ").split()[-1]
        wait_until(
            lambda: (
                logged(a, f"peer {b_id} proved mesh membership")
                and logged(b, f"peer {a_id} proved mesh membership")
            ),
            30,
            "the two nodes to find each other on the LAN",
            interval=0.2,
            describe=lambda: "\n".join(a.stderr_lines[-5:] + b.stderr_lines[-5:]),
        )
        assert logged(a, "on the LAN") or logged(b, "on the LAN")
        assert not logged(stranger, "on the LAN")
        assert not any(logged(n, c_id) for n in (a, b))
    finally:
        for node in nodes:
            try:
                node.stop(timeout=15)
            except subprocess.TimeoutExpired:
                node.kill()
