"""The console app without a node: its Origin/Host rule (pure), and the app served by
hypercorn on loopback with a stand-in status, join and API."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio

from meshp2p import JoinRefusedError
from meshp2p.api import Console
from meshp2p.api._asgi import Receive, Scope, Send, hypercorn_config, send_json
from meshp2p.api._events import sse_message
from meshp2p.api._origin import host_refusal, origin_refusal, request_refusal, split_host
from meshp2p.mesh import InviteError

SERVER = ("127.0.0.1", 3131)

# -- the rule, pure -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("127.0.0.1:3131", ("127.0.0.1", 3131)),
        ("LOCALHOST:3131", ("localhost", 3131)),
        ("[::1]:3131", ("::1", 3131)),
        ("example.com", ("example.com", None)),
        ("::1", None),
        ("a:b", None),
        ("a:99999", None),
        ("evil.example@127.0.0.1:3131", None),
        ("", None),
    ],
)
def test_host_headers_are_split_strictly(value: str, parsed: object) -> None:
    assert split_host(value) == parsed


@pytest.mark.parametrize(
    "host", ["127.0.0.1:3131", "localhost:3131", "console.localhost:3131", "127.0.0.2:3131"]
)
def test_own_loopback_addresses_are_accepted(host: str) -> None:
    assert host_refusal(host, SERVER) is None


@pytest.mark.parametrize(
    "host",
    [
        "evil.example:3131",  # DNS rebinding: a name of the attacker's resolving to us
        "127.0.0.1:3132",
        "127.0.0.1",
        "192.168.1.5:3131",
        "localhost.evil.example:3131",
        "[::1:3131",
    ],
)
def test_foreign_hosts_are_refused(host: str) -> None:
    assert host_refusal(host, SERVER) is not None


def test_a_console_on_all_interfaces_answers_at_the_address_a_request_arrived_on() -> None:
    lan = ("192.168.1.5", 3131)
    assert host_refusal("192.168.1.5:3131", lan) is None
    assert host_refusal("localhost:3131", lan) is not None  # not a loopback connection
    assert host_refusal("mybox.lan:3131", lan) is not None  # names can be rebound


def test_no_host_header_is_refused_on_a_socket_but_not_in_process() -> None:
    assert host_refusal(None, SERVER) is not None
    assert host_refusal(None, None) is None


def test_origin_must_be_the_consoles_own_when_present() -> None:
    assert origin_refusal(None, "127.0.0.1:3131") is None
    assert origin_refusal("http://127.0.0.1:3131", "127.0.0.1:3131") is None
    assert origin_refusal("http://evil.example", "127.0.0.1:3131") is not None
    assert origin_refusal("null", "127.0.0.1:3131") is not None
    assert origin_refusal("https://127.0.0.1:3131", "127.0.0.1:3131") is not None
    assert origin_refusal("http://localhost:3131", "127.0.0.1:3131") is not None


def test_request_rule_checks_host_then_origin() -> None:
    ours = [(b"host", b"127.0.0.1:3131"), (b"origin", b"http://127.0.0.1:3131")]
    assert request_refusal(ours, SERVER) is None
    evil = [(b"host", b"127.0.0.1:3131"), (b"origin", b"http://evil.example")]
    assert "evil.example" in (request_refusal(evil, SERVER) or "")
    rebound = [(b"host", b"evil.example:3131"), (b"origin", b"http://evil.example:3131")]
    assert "DNS rebinding" in (request_refusal(rebound, SERVER) or "")


def test_sse_messages_are_one_json_line() -> None:
    message = sse_message({"a": "x\ny"}, event="status", id=3)
    assert message == b'event: status\nid: 3\ndata: {"a":"x\\ny"}\n\n'


# -- the app, served ------------------------------------------------------------------


class Fakes:
    """Stand-ins for the node behind the console."""

    def __init__(self) -> None:
        self.version = 0
        self.change = trio.Event()
        self.joins: list[str] = []
        self.join_error: Exception | None = None
        self.api_calls: list[tuple[str, str]] = []

    def status(self) -> dict[str, Any]:
        return {"node_id": "node-a", "version": self.version}

    async def changed(self) -> None:
        await self.change.wait()

    def bump(self) -> None:
        self.version += 1
        self.change.set()
        self.change = trio.Event()

    async def join(self, token: str) -> dict[str, Any]:
        if self.join_error is not None:
            raise self.join_error
        self.joins.append(token)
        return {"mesh_id": "b" * 16, "previous_mesh_id": "a" * 16, "members": 1}

    async def api(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.api_calls.append((scope["method"], scope["path"]))
        await send_json(send, 200, {"object": "list", "data": []})


@asynccontextmanager
async def console(fakes: Fakes, **options: Any) -> AsyncIterator[httpx.AsyncClient]:
    from hypercorn.trio import serve

    app = Console(fakes.status, changed=fakes.changed, join=fakes.join, api=fakes.api, **options)
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve, app, hypercorn_config("127.0.0.1", 0, "test"))
        async with httpx.AsyncClient(base_url=binds[0], timeout=10, trust_env=False) as http:
            yield http
        nursery.cancel_scope.cancel()


def own_origin(http: httpx.AsyncClient) -> dict[str, str]:
    return {"origin": str(http.base_url).rstrip("/")}


async def test_root_serves_the_page_with_headers_that_keep_it_to_itself() -> None:
    async with console(Fakes()) as http:
        page = await http.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "<title>meshp2p console</title>" in page.text
        csp = page.headers["content-security-policy"]
        assert "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert page.headers["x-frame-options"] == "DENY"
        for path, kind in (("/app.js", "text/javascript"), ("/style.css", "text/css")):
            reply = await http.get(path)
            assert reply.status_code == 200 and reply.headers["content-type"].startswith(kind)
            again = await http.get(path, headers={"if-none-match": reply.headers["etag"]})
            assert again.status_code == 304 and again.content == b""


async def test_page_loads_nothing_from_elsewhere() -> None:
    async with console(Fakes()) as http:
        for path in ("/", "/app.js", "/style.css"):
            text = (await http.get(path)).text
            assert "https://" not in text.replace("http://www.w3.org/2000/svg", "")
            assert "//cdn" not in text


async def test_events_send_a_snapshot_at_once_and_on_each_change() -> None:
    fakes = Fakes()
    async with console(fakes, events_interval=60.0) as http:
        async with http.stream("GET", "/api/events") as reply:
            assert reply.headers["content-type"].startswith("text/event-stream")
            lines = reply.aiter_lines()
            with trio.fail_after(5):
                assert await anext(lines) == "retry: 2000"
                versions = []
                async for line in lines:
                    if line.startswith("data: "):
                        versions.append(json.loads(line[6:])["version"])
                        if len(versions) == 3:
                            break
                        fakes.bump()  # far sooner than the 60 s interval
            assert versions == [0, 1, 2]


async def test_events_repeat_every_interval_without_changes() -> None:
    async with console(Fakes(), events_interval=0.2) as http:
        async with http.stream("GET", "/api/events") as reply:
            events = 0
            with trio.fail_after(3):
                async for line in reply.aiter_lines():
                    events += line.startswith("event: status")
                    if events == 3:
                        break


async def test_join_from_another_site_is_forbidden() -> None:
    fakes = Fakes()
    async with console(fakes) as http:
        reply = await http.post(
            "/api/join", json={"token": "mp1.x"}, headers={"origin": "http://evil.example"}
        )
        assert reply.status_code == 403
        assert "evil.example" in reply.json()["error"]["message"]
        assert fakes.joins == []


async def test_dns_rebinding_is_forbidden_even_for_reads() -> None:
    fakes = Fakes()
    async with console(fakes) as http:
        port = http.base_url.port
        rebound = {"host": f"evil.example:{port}", "origin": f"http://evil.example:{port}"}
        assert (
            await http.post("/api/join", json={"token": "t"}, headers=rebound)
        ).status_code == 403
        assert (
            await http.get("/api/status", headers={"host": f"evil.example:{port}"})
        ).status_code == 403
        assert (await http.get("/", headers={"host": f"evil.example:{port}"})).status_code == 403
        assert fakes.joins == []
        ok = await http.get("/api/status", headers={"host": f"localhost:{port}"})
        assert ok.status_code == 200


async def test_join_from_the_page_reaches_the_node() -> None:
    fakes = Fakes()
    async with console(fakes) as http:
        reply = await http.post("/api/join", json={"token": " mp1.abc "}, headers=own_origin(http))
        assert reply.status_code == 200, reply.text
        assert reply.json()["mesh_id"] == "b" * 16
        assert fakes.joins == ["mp1.abc"]
        # Without an Origin (curl, a script) is not a web page: allowed too.
        assert (await http.post("/api/join", json={"token": "mp1.d"})).status_code == 200


async def test_join_errors_say_why() -> None:
    fakes = Fakes()
    async with console(fakes) as http:
        headers = own_origin(http)
        form = await http.post("/api/join", data={"token": "mp1.x"}, headers=headers)
        assert form.status_code == 415  # a form post needs no preflight: refused
        assert (await http.post("/api/join", json={"tok": 1}, headers=headers)).status_code == 400
        assert (await http.get("/api/join")).status_code == 405
        fakes.join_error = InviteError("invite token is damaged")
        bad = await http.post("/api/join", json={"token": "mp1.x"}, headers=headers)
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_token"
        fakes.join_error = JoinRefusedError("this node serves gemma to 2 other nodes")
        refused = await http.post("/api/join", json={"token": "mp1.x"}, headers=headers)
        assert refused.status_code == 409
        assert refused.json()["error"]["message"] == "this node serves gemma to 2 other nodes"


async def test_v1_is_the_nodes_api_under_the_pages_origin() -> None:
    fakes = Fakes()
    async with console(fakes) as http:
        assert (await http.get("/v1/models")).status_code == 200
        evil = await http.post(
            "/v1/chat/completions", json={}, headers={"origin": "http://evil.example"}
        )
        assert evil.status_code == 403
        assert fakes.api_calls == [("GET", "/v1/models")]


async def test_unknown_paths_are_404() -> None:
    async with console(Fakes()) as http:
        assert (await http.get("/api/nothing")).status_code == 404
        assert (await http.get("/../etc/passwd")).status_code in (400, 404)
