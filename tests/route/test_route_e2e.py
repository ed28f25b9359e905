"""Integration: every node answers for every model of the mesh, passive clients, failover."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import httpx
import openai
import pytest
from conftest import NodeProcess, wait_until

pytestmark = pytest.mark.e2e

DEFAULT = "gemma-3-270m-Q4_K_M"
TOOLS = "gemma-tools-Q4_K_M"
# Speculation off: the relay checks below time tokens one by one, and speculative
# decoding sends the tokens of a verification together.
FAST = ["--heartbeat-interval", "1", "--dead-after", "4", "--no-speculative"]
# Gemma's <eos> and <end_of_turn>: banned, a generation runs to max_tokens.
END_OF_TEXT_BANNED = {"1": -100, "106": -100}


def invite(node: NodeProcess) -> str:
    return node.wait_for_line("invite: ").split(" ", 1)[1]


def node_id(node: NodeProcess) -> str:
    return node.wait_for_line("meshp2p ").split()[-1]


def listed_models(node: NodeProcess) -> dict[str, list[str]]:
    data = httpx.get(node.api_url + "/models", timeout=10).json()["data"]
    return {m["id"]: m["meshp2p"]["nodes"] for m in data}


def stream_times(client: openai.OpenAI, model: str) -> tuple[list[float], str]:
    started = time.monotonic()
    times: list[float] = []
    text = ""
    for chunk in client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Count slowly from one to twenty."}],
        max_tokens=24,
        temperature=0,
        stream=True,
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            times.append(time.monotonic() - started)
            text += chunk.choices[0].delta.content
    return times, text


def test_client_reaches_every_model_and_fails_over(
    start_node: object, model_path: Path, tool_model: Path
) -> None:
    start = start_node  # type: ignore[assignment]
    a: NodeProcess = start(["--model", str(model_path), *FAST]).wait_ready()
    token = invite(a)
    b: NodeProcess = start(["--join", token, "--model", str(tool_model), *FAST]).wait_ready()
    d: NodeProcess = start(["--join", token, "--model", str(model_path), *FAST]).wait_ready()
    c: NodeProcess = start(["--join", token, "--client", *FAST]).wait_started()
    hosts = {node_id(a): a, node_id(d): d}

    # The client lists both models, with who serves them, from its routing table.
    wait_until(
        lambda: set(listed_models(c)) == {DEFAULT, TOOLS} and len(listed_models(c)[DEFAULT]) == 2,
        20,
        "the client to learn both models",
    )
    assert listed_models(c)[TOOLS] == [node_id(b)]
    # A full node answers for models it does not serve too.
    wait_until(lambda: TOOLS in listed_models(a), 10, "A to list B's model")

    client = openai.OpenAI(base_url=c.api_url, api_key="x", max_retries=0, timeout=60)
    for model in (DEFAULT, TOOLS):
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Say hi."}], max_tokens=8
        )
        assert reply.model == model
        assert reply.choices[0].message.content
        times, text = stream_times(client, model)
        assert text
        # Relayed as generated, not buffered: the pieces arrive spread over the
        # generation (a buffered relay delivers them all within a millisecond).
        assert len(times) > 5
        assert times[-1] - times[0] > 0.1
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        assert sum(gap > 0.005 for gap in gaps) > len(gaps) / 2
    # Another spelling of a model's name: the node it is forwarded to sees the real id.
    reply = client.chat.completions.create(
        model=DEFAULT.upper(), messages=[{"role": "user", "content": "Say hi."}], max_tokens=8
    )
    assert reply.model == DEFAULT

    # Clients take no part in gossip: no host lists C as a peer.
    assert node_id(c) not in {p["id"] for p in a.status()["peers"]}

    # A client that goes away cancels the generation on the remote host.
    worker = b.status()["models_served"][0]
    health = f"http://127.0.0.1:{worker['port']}/health"
    long_answer = {
        "model": TOOLS,
        "prompt": "Write a very long essay about mountains.",
        "max_tokens": 3000,
        "logit_bias": END_OF_TEXT_BANNED,
        "stream": True,
    }
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", c.api_url + "/completions", json=long_answer) as response:
            assert response.status_code == 200
            # Keep the line iterator referenced: dropping it would close the response.
            lines = response.iter_lines()
            assert next(ln for ln in lines if ln.startswith("data: "))
            assert httpx.get(health, timeout=5).json()["busy"] is True
    wait_until(
        lambda: httpx.get(health, timeout=5).json()["busy"] is False,
        10,
        "the remote host to stop generating",
    )

    # Kill the host of a streamed answer mid-stream: the other host of the model resumes
    # it, promptly, and the stream ends normally (tests/route/test_failover.py checks the
    # text).
    body = {
        "model": DEFAULT,
        "messages": [{"role": "user", "content": "Write a long story about the sea."}],
        "max_tokens": 200,
        "logit_bias": END_OF_TEXT_BANNED,
        "stream": True,
    }
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", c.api_url + "/chat/completions", json=body) as response:
            assert response.status_code == 200
            serving = response.headers["x-meshp2p-node"]
            lines = response.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))
            hosts[serving].kill()
            killed = time.monotonic()
            events = [next(line for line in lines if line.startswith("data: "))]
            waited = time.monotonic() - killed
            events += [line for line in lines if line.startswith("data: ")]
    assert waited < 15, f"the stream hung for {waited:.1f} s after its host died"
    assert events[-1] == "data: [DONE]"
    assert not any("error" in json.loads(e[len("data: ") :]) for e in events[:-1])

    # The other host of the model takes every request from now on.
    survivor = next(n for n in hosts if n != serving)
    for i in range(20):
        reply = client.chat.completions.create(
            model=DEFAULT,
            messages=[{"role": "user", "content": f"Number {i}?"}],
            max_tokens=4,
        )
        assert reply.choices[0].message.content is not None
    wait_until(
        lambda: listed_models(c)[DEFAULT] == [survivor],
        20,
        "the client's table to drop the dead host",
        describe=lambda: f"listed: {listed_models(c)}; killed {serving}; status {c.status()}",
    )


def test_model_whose_only_host_died_is_503_then_404_for_unknown(
    start_node: object, model_path: Path, tool_model: Path
) -> None:
    start = start_node  # type: ignore[assignment]
    a: NodeProcess = start(["--model", str(model_path), *FAST]).wait_ready()
    b: NodeProcess = start(["--join", invite(a), "--model", str(tool_model), *FAST]).wait_ready()
    wait_until(lambda: TOOLS in listed_models(a), 10, "A to list B's model")
    b.kill()
    wait_until(lambda: TOOLS not in listed_models(a), 15, "A to drop the dead host")
    client = openai.OpenAI(base_url=a.api_url, api_key="x", max_retries=0, timeout=30)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model=TOOLS, messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 503
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert DEFAULT in str(missing.value)


def test_client_drops_the_killed_host_it_polls_and_learns_new_hosts(
    start_node: object, model_path: Path
) -> None:
    """The client's table host is killed; the client moves on by its own checks.

    The hosts wait 30 s before they declare a silent peer dead: the client must not
    wait for the mesh (and a table refresh) to learn of the death.
    """
    start = start_node  # type: ignore[assignment]
    slow = ["--dead-after", "30"]
    a: NodeProcess = start(["--model", str(model_path), *slow]).wait_ready()
    b: NodeProcess = start(["--join", invite(a), "--model", str(model_path), *slow]).wait_ready()
    c: NodeProcess = start(["--join", invite(a), "--client"]).wait_started()
    wait_until(lambda: len(listed_models(c).get(DEFAULT, [])) == 2, 30, "the client to see both")
    assert c.status()["peers"] and node_id(a) in {p["id"] for p in c.status()["peers"]}

    a.kill()  # SIGKILL: no goodbye; A was the client's bootstrap and table source
    killed = time.monotonic()
    # Within the default death bound of the mesh (15 s).
    wait_until(
        lambda: listed_models(c).get(DEFAULT) == [node_id(b)],
        15,
        "the client to drop the killed host",
        describe=lambda: f"listed {listed_models(c)}; peers {c.status()['peers']}",
    )
    assert time.monotonic() - killed < 15
    assert node_id(a) not in {p["id"] for p in c.status()["peers"]}
    client = openai.OpenAI(base_url=c.api_url, api_key="x", max_retries=0, timeout=30)
    for i in range(3):
        reply = client.chat.completions.create(
            model=DEFAULT, messages=[{"role": "user", "content": f"Number {i}?"}], max_tokens=4
        )
        assert reply.choices[0].message.content is not None

    # A host that joins through another member reaches the client's table too.
    d: NodeProcess = start(["--join", invite(b), "--model", str(model_path), *slow]).wait_ready()
    wait_until(
        lambda: node_id(d) in listed_models(c).get(DEFAULT, []),
        20,
        "the client to learn the new host",
    )
