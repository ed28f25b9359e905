"""``meshp2p launch``: each agent started against a real node, with stand-in executables
on PATH that record what they were given and then talk to the node the way the real
agent would, with what launch set (environment, flags, config)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import NodeProcess, free_port

pytestmark = pytest.mark.e2e

MODEL = "gemma-3-270m-Q4_K_M"
KEY = "launch-key"
STAND_IN_EXIT = 7

# One stand-in for every agent: it records its arguments and environment (and pi's
# agent directory), then makes one request as that agent would from its configuration.
STAND_IN = """#!{python}
import json, os, pathlib, sys

import httpx

name = pathlib.Path(sys.argv[0]).name
env = dict(os.environ)
record = {{"name": name, "argv": sys.argv[1:], "env": env}}
chat = {{"messages": [{{"role": "user", "content": "Say hi."}}], "max_tokens": 4}}


def post(url, key, body):
    reply = httpx.post(url, json=body, headers={{"authorization": "Bearer " + key}}, timeout=120)
    record["status"], record["reply"] = reply.status_code, reply.json()


if name == "claude":
    import anthropic

    client = anthropic.Anthropic(
        base_url=env["ANTHROPIC_BASE_URL"], auth_token=env["ANTHROPIC_AUTH_TOKEN"], max_retries=0
    )
    message = client.messages.create(
        model=env["ANTHROPIC_MODEL"], max_tokens=4, messages=chat["messages"]
    )
    record["status"], record["reply"] = 200, message.model_dump()
elif name == "codex":
    flags = dict(v.split("=", 1) for k, v in zip(sys.argv[1:], sys.argv[2:]) if k == "-c")
    provider = "model_providers." + json.loads(flags["model_provider"])
    body = {{"model": json.loads(flags["model"]), "input": "Say hi.", "max_output_tokens": 4}}
    key = env[json.loads(flags[provider + ".env_key"])]
    assert json.loads(flags[provider + ".wire_api"]) == "responses"
    post(json.loads(flags[provider + ".base_url"]) + "/responses", key, body)
elif name == "goose":
    url = env["OPENAI_HOST"] + "/" + env["OPENAI_BASE_PATH"]
    post(url, env["OPENAI_API_KEY"], {{**chat, "model": env["GOOSE_MODEL"]}})
elif name == "opencode":
    config = json.loads(env["OPENCODE_CONFIG_CONTENT"])
    provider_id, model = config["model"].split("/", 1)
    options = config["provider"][provider_id]["options"]
    key = env[options["apiKey"].removeprefix("{{env:").removesuffix("}}")]
    post(options["baseURL"] + "/chat/completions", key, {{**chat, "model": model}})
elif name == "pi":
    directory = pathlib.Path(env["PI_CODING_AGENT_DIR"])
    record["pi_dir"] = str(directory)
    record["links"] = {{p.name: os.readlink(p) for p in directory.iterdir() if p.is_symlink()}}
    models = json.loads((directory / "models.json").read_text())
    record["models"] = models
    args = sys.argv[1:]
    provider = models["providers"][args[args.index("--provider") + 1]]
    model = args[args.index("--model") + 1]
    assert any(m["id"] == model for m in provider["models"])
    url = provider["baseUrl"] + "/chat/completions"
    post(url, env[provider["apiKey"]], {{**chat, "model": model}})
pathlib.Path(env["LAUNCH_RECORD"]).write_text(json.dumps(record))
sys.exit({code})
"""


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Iterator[NodeProcess]:
    proc = NodeProcess(
        tmp_path_factory.mktemp("launch-node"), ["--model", str(model_path), "--api-key", KEY]
    )
    with proc.serving() as ready:
        yield ready


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory: pytest.TempPathFactory) -> Path:
    bin_dir = tmp_path_factory.mktemp("bin")
    script = STAND_IN.format(python=sys.executable, code=STAND_IN_EXIT)
    for agent in ("claude", "codex", "goose", "opencode", "pi"):
        path = bin_dir / agent
        path.write_text(script)
        path.chmod(0o755)
    return bin_dir


def launch(
    node: NodeProcess,
    *args: str,
    env: dict[str, str] | None = None,
    path: Path | None = None,
    console: str | None = None,
) -> subprocess.CompletedProcess[str]:
    environment = {
        k: v for k, v in os.environ.items() if k not in ("MESHP2P_API_KEY", "PI_CODING_AGENT_DIR")
    }
    environment["PATH"] = f"{path}:/usr/bin:/bin" if path else "/usr/bin:/bin"
    environment.update(env or {})
    agent, *rest = args
    # --console right after the agent's name: what follows "--" is the agent's.
    command = [sys.executable, "-m", "meshp2p_cli", "launch", agent]
    command += ["--console", console or node.console_url, *rest]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, env=environment)


def test_print_shows_the_base_url_of_the_node(node: NodeProcess) -> None:
    done = launch(node, "claude", "--print", env={"MESHP2P_API_KEY": KEY})
    assert done.returncode == 0, done.stderr
    origin = node.api_url.removesuffix("/v1")
    assert f"export ANTHROPIC_BASE_URL={origin}\n" in done.stdout
    assert f"export ANTHROPIC_MODEL={MODEL}\n" in done.stdout
    assert "unset ANTHROPIC_API_KEY" in done.stdout
    assert done.stdout.rstrip().endswith("\nclaude")
    for agent in ("codex", "opencode", "pi"):
        printed = launch(node, agent, "--print", "--api-key", KEY)
        assert printed.returncode == 0, printed.stderr
        assert node.api_url in printed.stdout and MODEL in printed.stdout


@pytest.mark.parametrize("agent", ["claude", "codex", "goose", "opencode", "pi"])
def test_each_agent_reaches_the_node_with_what_launch_set(
    node: NodeProcess, stand_ins: Path, tmp_path: Path, agent: str
) -> None:
    record = tmp_path / "record.json"
    user_pi = tmp_path / "pi-agent"
    (user_pi / "sessions").mkdir(parents=True)
    (user_pi / "settings.json").write_text("{}")
    mine = {"providers": {"ollama": {"baseUrl": "http://localhost:11434/v1", "models": []}}}
    (user_pi / "models.json").write_text(json.dumps(mine))
    env = {
        "LAUNCH_RECORD": str(record),
        "MESHP2P_API_KEY": KEY,
        # Never to be sent to the node: launch unsets it for Claude Code.
        "ANTHROPIC_API_KEY": "sk-ant-real-key",
        "PI_CODING_AGENT_DIR": str(user_pi),
    }
    done = launch(node, agent, "--", "--flag", "two words", env=env, path=stand_ins)
    assert done.returncode == STAND_IN_EXIT, done.stderr
    assert f"{agent} on {MODEL}" in done.stderr
    got = json.loads(record.read_text())
    assert got["status"] == 200, got.get("reply")
    assert got["argv"][-2:] == ["--flag", "two words"]
    if agent == "claude":
        assert "ANTHROPIC_API_KEY" not in got["env"]
        assert got["env"]["ANTHROPIC_AUTH_TOKEN"] == KEY
        assert got["env"]["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
        assert got["reply"]["content"][0]["type"] == "text"
    elif agent == "codex":
        assert got["argv"][:2] == ["-c", 'model_provider="meshp2p"']
        assert got["reply"]["object"] == "response"
    elif agent == "pi":
        models = got["models"]["providers"]
        assert set(models) == {"ollama", "meshp2p"}  # the user's own providers kept
        links = got["links"]
        assert links == {
            "sessions": str(user_pi / "sessions"),
            "settings.json": str(user_pi / "settings.json"),
        }
        # The temporary agent directory is gone once the agent exits.
        assert not Path(got["pi_dir"]).exists()
    else:
        assert got["reply"]["choices"][0]["message"]["role"] == "assistant"


def test_options_after_the_agent_and_a_model_named_in_another_case(
    node: NodeProcess, stand_ins: Path, tmp_path: Path
) -> None:
    record = tmp_path / "record.json"
    done = launch(
        node,
        "goose",
        "--model",
        MODEL.lower(),
        "--api-key",
        KEY,
        "--",
        "session",
        "--model",
        "x",
        env={"LAUNCH_RECORD": str(record)},
        path=stand_ins,
    )
    assert done.returncode == STAND_IN_EXIT, done.stderr
    got = json.loads(record.read_text())
    assert got["env"]["GOOSE_MODEL"] == MODEL
    assert got["argv"] == ["session", "--model", "x"]


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ((), {}, "needs a key: pass it with --api-key or $MESHP2P_API_KEY"),
        (("--api-key", "wrong"), {}, "refused the key (401)"),
        (("--model", "nope"), {"MESHP2P_API_KEY": KEY}, f"served: {MODEL}"),
    ],
)
def test_what_keeps_an_agent_from_starting_is_one_line(
    node: NodeProcess, stand_ins: Path, args: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    done = launch(node, "claude", *args, env=env, path=stand_ins)
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("meshp2p: error: ") and message in line


def test_an_agent_not_installed_or_no_node_is_said_so(node: NodeProcess) -> None:
    missing = launch(node, "codex", env={"MESHP2P_API_KEY": KEY})
    assert missing.returncode == 1
    assert "codex is not installed (not on PATH); npm install -g @openai/codex" in missing.stderr
    nobody = launch(node, "claude", console=f"http://127.0.0.1:{free_port()}")
    assert nobody.returncode == 1
    assert "no meshp2p node answers at" in nobody.stderr
    assert "start one with `meshp2p node`" in nobody.stderr


def test_the_agent_list_is_checked(node: NodeProcess) -> None:
    done = launch(node, "vim")
    assert done.returncode == 2
    assert "invalid choice: 'vim'" in done.stderr
