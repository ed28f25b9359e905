"""The console of real ``meshp2p node`` processes, without a browser: the page, the event
stream, the Origin/Host rule, and joining another mesh at run time."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from conftest import NodeProcess, wait_until

from meshp2p.mesh import InviteToken, MeshCredentials
from meshp2p.mesh._invite import load_credentials

pytestmark = pytest.mark.e2e

MODEL = "gemma-3-270m-Q4_K_M"


def join(node: NodeProcess, token: str, origin: str | None = None) -> httpx.Response:
    headers = {"origin": origin or node.console_url}
    return httpx.post(
        node.console_url + "/api/join", json={"token": token}, headers=headers, timeout=60
    )


def unreachable_token(peer_id: str) -> str:
    """The token of a mesh nobody runs: its only address is a closed port."""
    return InviteToken(MeshCredentials.new(), (f"/ip4/127.0.0.1/tcp/1/p2p/{peer_id}",)).encode()


def test_console_serves_page_events_and_refuses_other_sites(start_node: object) -> None:
    node: NodeProcess = start_node(["--standby"]).wait_started()  # type: ignore[operator]
    page = httpx.get(node.console_url + "/", timeout=10)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "meshp2p console" in page.text

    started = time.monotonic()
    events = 0
    with httpx.stream("GET", node.console_url + "/api/events", timeout=10) as reply:
        assert reply.headers["content-type"].startswith("text/event-stream")
        for line in reply.iter_lines():
            events += line.startswith("event: status")
            if events == 2:
                break
    assert events == 2 and time.monotonic() - started < 6

    evil = join(node, "mp1.anything", origin="http://evil.example")
    assert evil.status_code == 403
    port = httpx.URL(node.console_url).port
    rebound = httpx.post(
        node.console_url + "/api/join",
        json={"token": "mp1.anything"},
        headers={"host": f"evil.example:{port}"},
        timeout=10,
    )
    assert rebound.status_code == 403
    status = httpx.get(
        node.console_url + "/api/status", headers={"host": f"evil.example:{port}"}, timeout=10
    )
    assert status.status_code == 403  # the invite token (the mesh secret) stays home

    same = join(node, node.wait_for_line("invite: ").split(" ", 1)[1])
    assert same.status_code == 409 and same.json()["error"]["code"] == "same_mesh"
    bad = join(node, "mp1.damaged")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_token"


def test_a_node_joins_another_mesh_from_the_console(start_node: object, model_path: Path) -> None:
    host: NodeProcess = start_node(["--model", str(model_path)]).wait_ready()  # type: ignore[operator]
    token = host.wait_for_line("invite: ").split(" ", 1)[1]
    loner: NodeProcess = start_node(["--standby"]).wait_started()  # type: ignore[operator]
    before = loner.status()
    host_status = host.status()

    # A mesh nobody answers for: refused, and the node stays where it was.
    gone = join(loner, unreachable_token(host_status["node_id"]))
    assert gone.status_code == 409, gone.text
    assert gone.json()["error"]["code"] == "mesh_unreachable"
    assert loner.status()["mesh_id"] == before["mesh_id"]

    joined = join(loner, token)
    assert joined.status_code == 200, joined.text
    assert joined.json()["mesh_id"] == host_status["mesh_id"]
    assert joined.json()["previous_mesh_id"] == before["mesh_id"]
    assert joined.json()["members"] >= 1
    wait_until(
        lambda: before["node_id"] in {p["id"] for p in host.status()["peers"]},
        20,
        "the host to see the node that joined",
    )
    # The home remembers the new mesh (a restart stays in it), and the node's API
    # answers for the new mesh's model.
    credentials = load_credentials(loner.home)
    assert credentials is not None and credentials.mesh_id == host_status["mesh_id"]
    status = loner.status()
    assert status["mesh_id"] == host_status["mesh_id"]
    assert status["invite_token"] != before["invite_token"]
    wait_until(
        lambda: any(m["id"] == MODEL for m in loner.status()["models"]), 20, "the mesh's model"
    )
    reply = httpx.post(
        loner.api_url + "/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text

    # The host now serves the node that joined: it may not leave.
    refused = join(host, unreachable_token(host_status["node_id"]))
    assert refused.status_code == 409
    message = refused.json()["error"]["message"]
    assert message.startswith(f"this node serves {MODEL} to the 1 other node of mesh"), message
