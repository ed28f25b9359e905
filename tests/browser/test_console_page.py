"""The console in a real browser: Debian's headless Chromium (``make browser-install``)
driven by Playwright for Python, against three real nodes on loopback.

``MESHP2P_CONSOLE_SCREENSHOT=docs/console.png`` also writes the screenshot there (how
the one in the README was made).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from conftest import NodeProcess

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

MODEL = "gemma-3-270m-Q4_K_M"
CHROMIUM = Path(os.environ.get("MESHP2P_CHROMIUM", "/usr/bin/chromium"))
# Playwright adds --headless itself. The rest keep Chromium off the network: without
# them it calls Google's services at start, and a closed network refuses them.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """A Chromium context with a new, empty profile, at 1280x800."""
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: run make browser-install")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=FLAGS,
            viewport={"width": 1280, "height": 800},
        )
        try:
            yield context
        finally:
            context.close()


def node_item(page: Any, node_id: str) -> Any:
    return page.locator(f'#nodes li[data-node-id="{node_id}"]')


def test_console_shows_the_mesh_chats_and_sees_a_node_leave(
    start_node: Any, model_path: Path, browser: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    # Speculation off: the page is checked to show an answer while it streams, and
    # speculative decoding can send a short answer in one or two bursts.
    host: NodeProcess = start_node(["--model", str(model_path), "--no-speculative"]).wait_ready()
    token = host.wait_for_line("invite: ").split(" ", 1)[1]
    standby: NodeProcess = start_node(["--join", token, "--standby"]).wait_started()
    client: NodeProcess = start_node(["--join", token, "--client"]).wait_started()
    host_id, standby_id, client_id = (n.status()["node_id"] for n in (host, standby, client))

    requested: list[str] = []
    browser.on("request", lambda request: requested.append(request.url))
    page = browser.pages[0] if browser.pages else browser.new_page()
    page.goto(host.console_url)

    # The three nodes, this one marked, with their roles; the model and its state.
    for node_id, role in ((host_id, "host"), (standby_id, "standby"), (client_id, "client")):
        expect(node_item(page, node_id)).to_have_attribute("data-role", role, timeout=30_000)
        expect(page.locator(f'#graph [data-node-id="{node_id}"]')).to_be_visible()
    expect(node_item(page, host_id)).to_contain_text("this node")
    expect(page.locator("#graph")).to_contain_text("(this node)")
    row = page.locator(f'#models tr[data-model="{MODEL}"]')
    expect(row).to_contain_text("ready", timeout=30_000)
    expect(row).to_contain_text("this node")
    assert page.locator("#invite").input_value().startswith("mp1.")
    expect(page.locator("#api-url")).to_have_value(host.api_url)
    expect(page.get_by_label("Model", exact=True)).to_have_value(MODEL, timeout=30_000)
    expect(page.locator("#live")).to_have_text("live")
    # The standby node's link: its transport and round-trip time (pinged each heartbeat).
    expect(page.locator("#graph .link-label").first).to_contain_text(" ms", timeout=15_000)

    # A chat, from the keyboard, its answer streaming in: the page shows part of it
    # while the rest is still coming (what it shows is recorded at each change).
    page.evaluate(
        """() => {
            window.seen = [];
            new MutationObserver(() => {
                const a = [...document.querySelectorAll('#transcript li.answer')].pop();
                if (a) window.seen.push([a.classList.contains('streaming'),
                                         a.querySelector('.text').textContent.length]);
            }).observe(document.getElementById('transcript'),
                       {subtree: true, childList: true, characterData: true, attributes: true});
        }"""
    )
    page.get_by_label("Max tokens").fill("48")
    message = page.get_by_label("Message")
    message.fill("What is the capital of France?")
    # A temperature out of range is refused on the page: nothing is sent or lost.
    page.get_by_label("Temperature").fill("3")
    message.press("Control+Enter")
    expect(page.locator("#chat-status")).to_contain_text("Temperature is a number from 0 to 2")
    expect(page.locator("#transcript li")).to_have_count(0)
    expect(message).to_have_value("What is the capital of France?")
    # Greedy: at the node's default temperature the model samples, and a sampled
    # answer may be empty (its first token the end of turn).
    page.get_by_label("Temperature").fill("0")
    message.press("Control+Enter")
    answer = page.locator("#transcript li.answer").last
    expect(answer).to_have_attribute("data-done", "true", timeout=120_000)
    expect(answer.locator(".error")).to_have_count(0)
    text = answer.locator(".text").inner_text()
    assert text.strip(), "the answer is empty"
    partial = [
        n for streaming, n in page.evaluate("window.seen") if streaming and 0 < n < len(text)
    ]
    assert partial, "no part of the answer was shown before it was complete"
    assert int(answer.get_attribute("data-chunks") or 0) > 1
    expect(page.locator("#chat-status")).to_contain_text("Done")
    expect(page.locator("#chat-stop")).to_be_disabled()
    expect(page.locator(f'#models tr[data-model="{MODEL}"] td').last).not_to_have_text("—")

    shot = tmp_path / "console.png"
    page.screenshot(path=str(shot), full_page=False)
    target = os.environ.get("MESHP2P_CONSOLE_SCREENSHOT")
    if target:
        shutil.copyfile(shot, target)

    # Readable on a phone: one column, nothing wider than the screen.
    phone = browser.new_page()
    phone.set_viewport_size({"width": 390, "height": 844})
    phone.goto(host.console_url)
    expect(node_item(phone, client_id)).to_be_visible(timeout=30_000)
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390
    phone.screenshot(path=str(tmp_path / "console-phone.png"))
    phone.close()

    # The standby node dies: the page drops it within 20 s, by itself.
    standby.kill()
    expect(node_item(page, standby_id)).to_have_count(0, timeout=20_000)
    expect(page.locator(f'#graph [data-node-id="{standby_id}"]')).to_have_count(0)
    expect(node_item(page, client_id)).to_have_count(1)

    outside = [url for url in requested if urlsplit(url).hostname != "127.0.0.1"]
    assert requested and not outside, outside
