"""Real node processes inside lab namespaces, and the fixtures that clean the lab up.

A test imports the fixtures it uses (``from labnodes import lab, lab_nodes``); pytest
then finds them in the test module. Every namespace, link and node is gone after the
test, pass or fail: the fixtures' teardown kills the nodes first, then deletes the
namespaces.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import NodeProcess
from netlab import Host, Lab, LabUnavailable

#: Every interface of the host's namespace (its lab address and its loopback).
ANY = ["--listen", "/ip4/0.0.0.0/udp/0/quic-v1", "--listen", "/ip4/0.0.0.0/tcp/0"]
FAST = ["--heartbeat-interval", "1", "--dead-after", "4"]


class LabNode(NodeProcess):
    """A node run with ``ip netns exec``; its APIs are reached from inside its namespace."""

    def __init__(
        self, host: Host, home: Path, args: list[str], listen: list[str] | None = None
    ) -> None:
        super().__init__(home, [*(ANY if listen is None else listen), *args], wrap=host.wrap())
        self.host = host

    def status(self) -> dict[str, Any]:
        url = self.console_url + "/api/status"
        return self.host.call(lambda: httpx.get(url, timeout=10).json(), timeout=20)  # type: ignore[no-any-return]

    def node_id(self) -> str:
        return self.wait_for_line("meshp2p ").split()[-1]

    def invite(self) -> str:
        return self.wait_for_line("invite: ").split(" ", 1)[1]

    def freeze(self, seconds: float) -> None:
        """Stop the node's process (SIGSTOP) for ``seconds``, then let it go on."""
        os.kill(self.proc.pid, signal.SIGSTOP)
        time.sleep(seconds)
        os.kill(self.proc.pid, signal.SIGCONT)

    def flap(self, seconds: float) -> None:
        """Take the node's link down for ``seconds``, then up again."""
        self.host.link(False)
        time.sleep(seconds)
        self.host.link(True)

    def peer_ids(self) -> set[str]:
        return {p["id"] for p in self.status()["peers"]}

    def chat(self, body: dict[str, Any], timeout: float = 120.0) -> httpx.Response:
        """POST /chat/completions from inside the node's namespace."""
        url = self.api_url + "/chat/completions"
        return self.host.call(
            lambda: httpx.post(url, json=body, timeout=timeout), timeout=timeout + 10
        )

    def stream_chat(
        self,
        body: dict[str, Any],
        timeout: float = 120.0,
        on_first: Callable[[], None] | None = None,
        on_head: Callable[[str], None] | None = None,
    ) -> tuple[list[dict[str, Any]], str]:
        """A streamed chat: its decoded events and the node that served it.

        ``on_head`` gets the serving node's id once the head has arrived; ``on_first``
        runs once the first event has (a test injects its fault there). ``timeout``
        bounds every read; the whole call may take longer.
        """
        url = self.api_url + "/chat/completions"

        def run() -> tuple[list[dict[str, Any]], str]:
            events: list[dict[str, Any]] = []
            with httpx.Client(timeout=timeout) as http:
                with http.stream("POST", url, json={**body, "stream": True}) as response:
                    serving = response.headers.get("x-meshp2p-node", "")
                    if on_head is not None:
                        on_head(serving)
                    for line in response.iter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        events.append(json.loads(line[len("data: ") :]))
                        if len(events) == 1 and on_first is not None:
                            on_first()
            return events, serving

        return self.host.call(run, timeout=timeout * 10)

    def say_hi(self, model: str) -> tuple[httpx.Response, str]:
        """A short greedy chat, plain and then streamed: both must answer, with the same
        text. The plain reply, and the node that served the stream."""
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": "Say hi."}],
            "max_tokens": 8,
            "temperature": 0,
        }
        reply = self.chat(body)
        assert reply.status_code == 200, reply.text
        events, serving = self.stream_chat(body)
        assert text_of(events) == reply.json()["choices"][0]["message"]["content"]
        return reply, serving


@pytest.fixture
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """A fresh lab for one test; skipped with the reason where namespaces cannot run."""
    try:
        made = Lab(tag=request.node.name[:6].replace("_", ""))
    except LabUnavailable as why:
        pytest.skip(str(why))
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def lab_nodes(
    lab: Lab, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., LabNode]]:
    """Start nodes with ``lab_nodes(host, args)``; all are killed before the lab goes."""
    nodes: list[LabNode] = []

    def start(host: Host, args: list[str], home: Path | None = None) -> LabNode:
        node = LabNode(host, home or tmp_path_factory.mktemp(f"lab-{host.name}"), args)
        nodes.append(node)
        return node

    try:
        yield start
    finally:
        for node in nodes:
            if node.proc.poll() is None:
                os.kill(node.proc.pid, signal.SIGCONT)  # a test may have frozen it
            node.close(timeout=10)


def text_of(events: list[dict[str, Any]]) -> str:
    return "".join(
        (e["choices"][0]["delta"].get("content") or "")
        for e in events
        if e.get("choices") and e["choices"][0].get("delta")
    )
