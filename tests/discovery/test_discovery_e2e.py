"""Discovery end to end: real node processes, a real Nostr relay, the discover command."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import NodeProcess, NostrRelay, wait_until

pytestmark = pytest.mark.e2e

NAME = "test-mesh"
FAST = ["--publish-interval", "5"]


def discover(*relays: str, extra: tuple[str, ...] = ()) -> list[dict]:  # type: ignore[type-arg]
    args = [sys.executable, "-m", "meshp2p_cli", "discover", "--json", *extra]
    for url in relays:
        args += ["--nostr-relay", url]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def listed(relay: NostrRelay, name: str = NAME) -> dict | None:  # type: ignore[type-arg]
    return next((m for m in discover(relay.url) if m["name"] == name), None)


def test_a_published_mesh_is_found_joined_and_outlives_its_publisher(
    start_node: object, nostr_relay: Callable[[], NostrRelay], model_path: Path
) -> None:
    start = start_node  # type: ignore[assignment]
    relay = nostr_relay()
    relays = ["--nostr-relay", relay.url]
    a: NodeProcess = start(
        ["--model", str(model_path), "--publish", "--mesh-name", NAME, *relays, *FAST]
    ).wait_ready()
    assert any(line.startswith("published: ") for line in a.lines)
    wait_until(lambda: listed(relay) is not None, 20, "discover to list the mesh")
    listing = listed(relay)
    assert listing is not None
    assert listing["mesh_id"] == a.status()["mesh_id"]
    assert listing["models_served"] == ["gemma-3-270m-Q4_K_M"]
    assert listing["nodes"] == 1 and listing["score"] is not None

    b: NodeProcess = start(["--auto", "--mesh-name", NAME, *relays, *FAST]).wait_started()
    assert b.status()["mesh_id"] == a.status()["mesh_id"]
    a_id = a.status()["node_id"]
    wait_until(lambda: a_id in {p["id"] for p in b.status()["peers"]}, 15, "B to see A")

    a.kill()
    killed = time.time()
    wait_until(
        lambda: (found := listed(relay)) is not None and found["created_at"] > killed,
        150,
        "another member to republish the listing",
        interval=1.0,
        describe=lambda: f"listing {listed(relay)}; B discovery {b.status()['discovery']}",
    )
    fresh = listed(relay)
    assert fresh is not None and fresh["publisher"] == b.status()["node_id"]
    assert b.status()["discovery"]["publishing"] is True
    assert b.status()["discovery"]["takeovers"] == 1


def test_auto_with_nothing_listed_starts_a_published_mesh(
    start_node: object, nostr_relay: Callable[[], NostrRelay]
) -> None:
    relay = nostr_relay()
    node: NodeProcess = start_node(  # type: ignore[operator]
        ["--auto", "--publish", "--mesh-name", "fresh", "--standby", "--nostr-relay", relay.url]
    ).wait_started()
    wait_until(lambda: listed(relay, "fresh") is not None, 20, "the new mesh to be listed")
    assert listed(relay, "fresh")["mesh_id"] == node.status()["mesh_id"]  # type: ignore[index]


def test_members_re_find_each_other_through_sealed_rendezvous_records(
    start_node: object,
    nostr_relay: Callable[[], NostrRelay],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The founder restarts on new ports: its member's addresses for it are all stale,
    and it has none for the member; both find each other through the relay, which
    learns nothing readable."""
    start = start_node  # type: ignore[assignment]
    relay = nostr_relay()
    relays = ["--nostr-relay", relay.url, *FAST]
    home = tmp_path_factory.mktemp("founder")
    a: NodeProcess = start(["--standby", *relays], home=home).wait_started()
    token = a.wait_for_line("invite: ").split(" ", 1)[1]
    b: NodeProcess = start(["--join", token, "--standby", *relays]).wait_started()
    b_id = b.status()["node_id"]
    wait_until(lambda: b_id in {p["id"] for p in a.status()["peers"]}, 15, "A to see B")
    wait_until(
        lambda: (
            a.status()["discovery"]["rendezvous"]["last_publish"]
            and b.status()["discovery"]["rendezvous"]["last_publish"]
        ),
        20,
        "both to publish rendezvous records",
    )
    mesh_id, secret = a.status()["mesh_id"], json.loads((home / "mesh.json").read_text())["secret"]
    addrs = a.status()["addrs"] + b.status()["addrs"]
    assert a.stop() == 0

    again: NodeProcess = start(["--standby", *relays], home=home).wait_started()
    assert set(again.status()["addrs"]).isdisjoint(addrs)  # new ports: nobody knows them
    wait_until(
        lambda: b_id in {p["id"] for p in again.status()["peers"]},
        45,
        "the restarted founder to find its member again",
        describe=lambda: f"founder discovery {again.status()['discovery']}",
    )
    stored = "\n".join(relay.stored())
    assert "30078" in stored  # the relay did store the members' records
    for clear in [secret, mesh_id, *addrs, *(a.split("/p2p/")[0] for a in addrs)]:
        assert clear not in stored, f"{clear} readable on the relay"


def test_discover_with_only_a_dead_relay_says_so_quickly(
    nostr_relay: Callable[[], NostrRelay],
) -> None:
    relay = nostr_relay()
    relay.kill()
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "meshp2p_cli", "discover", "--nostr-relay", relay.url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("0 meshes from 0 of 1 relays")
    assert time.monotonic() - started < 15


def test_auto_skips_a_listed_mesh_that_does_not_answer(
    start_node: object, nostr_relay: Callable[[], NostrRelay]
) -> None:
    """The best-scored listing points at nothing; --auto health-checks it, moves on."""
    import trio
    from libp2p.crypto.ed25519 import create_new_key_pair

    from meshp2p.discovery import MeshListing, NostrKey, RelayClient, listing_event
    from meshp2p.mesh import InviteToken, MeshCredentials
    from meshp2p.transport import peer_id

    relay = nostr_relay()
    live: NodeProcess = start_node(  # type: ignore[operator]
        ["--standby", "--publish", "--mesh-name", NAME, "--nostr-relay", relay.url]
    ).wait_started()
    wait_until(lambda: listed(relay) is not None, 20, "the live mesh to be listed")
    ghost = MeshCredentials.new()
    nobody = peer_id(create_new_key_pair())
    token = InviteToken(ghost, (f"/ip4/127.0.0.1/tcp/1/p2p/{nobody}",))
    fake = MeshListing(ghost.mesh_id, token.encode(), name=NAME, nodes=10, models_served=("a", "b"))
    event = listing_event(NostrKey(b"\x07" * 32), fake, int(time.time()))
    assert trio.run(RelayClient(relay.url).publish, event)

    joiner: NodeProcess = start_node(  # type: ignore[operator]
        ["--auto", "--mesh-name", NAME, "--standby", "--nostr-relay", relay.url]
    ).wait_started()
    assert joiner.status()["mesh_id"] == live.status()["mesh_id"] != ghost.mesh_id
