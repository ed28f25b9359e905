"""NAT traversal in the lab: two nodes behind different NATs meet through a public
member acting as their circuit relay, gossip and routing cross the circuit, and DCUtR
then punches a direct connection through both NATs."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import wait_until
from labnodes import FAST, LabNode, lab, lab_nodes
from netlab import Host, Lab

__all__ = ["lab", "lab_nodes"]  # fixtures, used by name

pytestmark = pytest.mark.lab

DEFAULT = "gemma-3-270m-Q4_K_M"
#: The issue's target: a NAT'd node is reachable through the relay this soon.
REACHABLE_WITHIN = 10.0


def paths_to(node: LabNode, peer: str) -> list[str]:
    return [c["path"] for c in node.status()["connections"] if c["peer"] == peer]


def circuit_addrs(node: LabNode, of: str) -> list[str]:
    """The circuit addresses ``node``'s view holds for peer ``of``."""
    for peer in node.status()["peers"]:
        if peer["id"] == of:
            return [a for a in peer.get("addrs", []) if "/p2p-circuit" in a]
    return []


def test_nodes_behind_two_nats_meet_through_a_relaying_member(
    lab: Lab, lab_nodes: Callable[[Host, list[str]], LabNode], model_path: Path
) -> None:
    relay_host = lab.public("relay")
    n1_host = lab.nat("r1").private("n1")
    n2_host = lab.nat("r2").private("n2")
    relay = lab_nodes(relay_host, ["--standby", *FAST]).wait_started()
    token = relay.invite()
    n1 = lab_nodes(n1_host, ["--join", token, "--model", str(model_path), *FAST]).wait_ready()
    relay_id, n1_id = relay.node_id(), n1.node_id()

    # N1 reserved a slot on the relay and announces its circuit through it.
    wait_until(lambda: n1.peer_ids() == {relay_id}, 15, "N1 to join through the relay")

    # N2, behind another NAT, joins: it can dial the relay but not N1's own address.
    joined = time.monotonic()
    n2 = lab_nodes(n2_host, ["--join", token, *FAST]).wait_started()
    n2_id = n2.node_id()

    def relayed_both_ways() -> bool:
        return "relayed" in paths_to(n2, n1_id) and n1_id in n2.peer_ids()

    wait_until(
        relayed_both_ways,
        REACHABLE_WITHIN + 5,
        "N2 to reach N1 through the relay",
        describe=lambda: f"N2: {n2.status()['connections']}\nN1: {n1.status()['connections']}",
    )
    reached = time.monotonic() - joined
    print(f"NAT'd node reached through the relay {reached:.1f} s after joining")
    assert reached < REACHABLE_WITHIN
    wait_until(lambda: n2_id in n1.peer_ids(), 10, "N1 to list N2 (gossip over the circuit)")
    # Connections to the relay itself are direct; the one between the NAT'd nodes is not.
    assert paths_to(n1, relay_id) == ["direct"]
    assert "relayed" in paths_to(n1, n2_id)

    # DCUtR then punches a direct connection through both NATs (the lab's routers
    # masquerade like Linux home routers: ports kept, unsolicited packets dropped).
    wait_until(
        lambda: "hole-punched" in paths_to(n2, n1_id) or "hole-punched" in paths_to(n1, n2_id),
        30,
        "DCUtR to punch a direct connection between N1 and N2",
        describe=lambda: f"N2: {n2.status()['connections']}\nN1: {n1.status()['connections']}",
    )

    # A request N2 receives is served by N1 (through the NATs), streamed and not.
    reply, serving = n2.say_hi(DEFAULT)
    assert reply.headers["x-meshp2p-node"] == n1_id
    assert serving == n1_id
