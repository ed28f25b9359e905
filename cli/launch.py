"""``meshp2p launch AGENT``: run a coding agent against this machine's node.

It asks the node's console (``/api/status``, default http://127.0.0.1:3131) where the API
is, picks a model (the one asked for, else the largest one the mesh serves and has
ready), checks the API key against ``/v1/models``, and starts the agent pointed at it:

- ``claude`` (Claude Code): Anthropic's Messages API, by environment variables;
- ``codex`` (Codex CLI): OpenAI's Responses API, a model provider given with ``-c``;
- ``goose``: OpenAI chat completions, by environment variables;
- ``opencode``: OpenAI chat completions, a provider in ``OPENCODE_CONFIG_CONTENT``;
- ``pi``: OpenAI chat completions, a provider in the ``models.json`` of a temporary agent
  directory (``PI_CODING_AGENT_DIR``) whose other entries link to the user's own.

``--print`` prints what would be set and run instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from meshp2p import MeshError

from .apikeys import ENV_KEY, env_key

AGENTS = ("claude", "codex", "goose", "opencode", "pi")
DEFAULT_CONSOLE = "http://127.0.0.1:3131"
#: The provider name the agents are given for the mesh.
PROVIDER = "meshp2p"
_TIMEOUT = 10.0
#: Tokens an agent may ask for in one answer, where its config wants a number.
_MAX_OUTPUT = 1024
_INSTALL = {
    "claude": "npm install -g @anthropic-ai/claude-code",
    "codex": "npm install -g @openai/codex",
    "goose": "see https://block.github.io/goose/docs/getting-started/installation",
    "opencode": "npm install -g opencode-ai",
    "pi": "npm install -g @mariozechner/pi-coding-agent",
}


@dataclass(frozen=True)
class Target:
    """Where the agent goes: the node's API, the model, the key."""

    api_url: str
    """The API's base URL, ``.../v1``."""
    model: str
    key: str | None
    context: int | None = None
    """The model's context in tokens, where the node knows it."""

    @property
    def origin(self) -> str:
        """The API's URL without ``/v1`` (what Anthropic's and goose's clients take)."""
        return self.api_url.removesuffix("/").removesuffix("/v1")


@dataclass
class Launch:
    """What ``meshp2p launch`` runs: the command, the environment it changes, the files
    it writes (in a temporary directory, removed when the agent exits)."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    unset: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    """File name (in the temporary directory) to content."""
    links_from: Path | None = None
    """A directory whose entries are linked into the temporary one (pi's agent dir)."""


def _options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "--model", default=default(None), help="the model (default: the largest ready one)"
    )
    parser.add_argument(
        "--console",
        default=default(DEFAULT_CONSOLE),
        metavar="URL",
        help=f"the node's console, where it says where its API is (default {DEFAULT_CONSOLE})",
    )
    parser.add_argument(
        "--api-key", default=default(None), metavar="KEY", help=f"the API key (default ${ENV_KEY})"
    )
    parser.add_argument(
        "--print",
        dest="print_only",
        action="store_true",
        default=default(False),
        help="print the environment, files and command instead of running the agent",
    )


def add_launch_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """``meshp2p launch``. The agent's own arguments follow ``--`` and may look like ours:
    the words from the agent's name on are parsed by ``parse_words``, which splits them
    there first (argparse alone would take the agent's options for ours)."""
    launch = sub.add_parser(
        "launch",
        parents=[common],
        help="run a coding agent (claude, codex, goose, opencode, pi) against this node",
        description="Run a coding agent against this machine's meshp2p node: it finds the "
        "node's API through its console, picks a model, and starts the agent pointed at it.",
        usage="meshp2p launch AGENT [--model M] [--console URL] [--api-key KEY] [--print] "
        "[-- ARGS...]",
    )
    _options(launch, defaults=False)
    launch.add_argument(
        "words",
        nargs=argparse.REMAINDER,
        metavar="AGENT [-- ARGS...]",
        help=f"one of {', '.join(AGENTS)}; ARGS after -- go to the agent",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshp2p launch")
    parser.add_argument("agent", choices=AGENTS, help="the agent to run")
    _options(parser, defaults=True)
    # Global options given after the agent's name: accepted, unused here.
    parser.add_argument("--home", help=argparse.SUPPRESS)
    parser.add_argument("--log-level", help=argparse.SUPPRESS)
    return parser


def parse_words(
    words: list[str], given: argparse.Namespace | None = None
) -> tuple[argparse.Namespace, list[str]]:
    """The launch options, and the agent's arguments (everything after the first ``--``).
    Options ``given`` before the agent's name count where the words do not set them."""
    if "--" in words:
        at = words.index("--")
        ours, theirs = words[:at], words[at + 1 :]
    else:
        ours, theirs = words, []
    parser = _parser()
    options = parser.parse_args(ours)
    for name in ("model", "console", "api_key", "print_only"):
        if (
            given is not None
            and hasattr(given, name)
            and getattr(options, name) == parser.get_default(name)
        ):
            setattr(options, name, getattr(given, name))
    return options, theirs


def _get(http: httpx.Client, url: str, what: str, headers: Mapping[str, str] = {}) -> Any:
    try:
        response = http.get(url, headers=dict(headers))
    except httpx.HTTPError as exc:
        raise MeshError(f"{what} at {url} does not answer ({exc})") from None
    if response.status_code == 401:
        raise MeshError(
            f"the node's API refused the key (401): pass the right one with --api-key or ${ENV_KEY}"
            if headers
            else f"the node's API needs a key: pass it with --api-key or ${ENV_KEY}"
        )
    if response.status_code != 200:
        raise MeshError(f"{what} at {url} answered {response.status_code}: {response.text[:200]}")
    try:
        return response.json()
    except ValueError:
        raise MeshError(f"{what} at {url} did not answer JSON") from None


def node_status(http: httpx.Client, console: str) -> dict[str, Any]:
    url = console.rstrip("/") + "/api/status"
    try:
        response = http.get(url)
    except httpx.HTTPError as exc:
        reason = str(exc) or type(exc).__name__
        raise MeshError(
            f"no meshp2p node answers at {console} ({reason}): start one with "
            "`meshp2p node`, or pass --console URL"
        ) from None
    try:
        status = response.json() if response.status_code == 200 else None
    except ValueError:
        status = None
    if not isinstance(status, dict) or not isinstance(status.get("api_url"), str):
        raise MeshError(
            f"{console} is not a meshp2p node's console ({url} answered "
            f"{response.status_code} without the node's api_url)"
        )
    return status


def api_base(status: Mapping[str, Any]) -> str:
    """The API URL from the status; a wildcard bind (0.0.0.0, ::) reached on loopback."""
    parts = urlsplit(str(status["api_url"]))
    host = parts.hostname or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        loopback = "127.0.0.1" if host == "0.0.0.0" else "[::1]"
        netloc = f"{loopback}:{parts.port}" if parts.port else loopback
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts).rstrip("/")


def _sizes(status: Mapping[str, Any]) -> dict[str, int]:
    """Model file sizes the status tells: this node's files, and what peers hold."""
    sizes: dict[str, int] = {}
    for peer in status.get("peers") or []:
        for held in peer.get("models_on_disk") or []:
            if isinstance(held.get("name"), str) and isinstance(held.get("size"), int):
                sizes[held["name"]] = held["size"]
    for served in status.get("models_served") or []:
        try:
            sizes[served["id"]] = os.path.getsize(served["path"])
        except (KeyError, TypeError, OSError):
            pass
    return sizes


def choose_model(models: list[dict[str, Any]], status: Mapping[str, Any], asked: str | None) -> str:
    """The model asked for (its canonical id), else the largest ready one (then the one
    with the most hosts, then by name). ``models``: the API's ``/v1/models`` data."""
    ids = [str(m["id"]) for m in models if isinstance(m.get("id"), str)]
    if asked is not None:
        for model in ids:
            if model == asked or model.lower() == asked.lower():
                return model
        served = ", ".join(ids) or "none"
        raise MeshError(f"model {asked!r} is not served by this mesh; served: {served}")
    ready = [m for m in models if (m.get("meshp2p") or {}).get("state", "ready") == "ready"]
    if not ready:
        if not models:
            raise MeshError(
                "the mesh serves no model yet; start a node with --model, or wait for one"
            )
        raise MeshError(
            "no model of the mesh is ready yet ("
            + ", ".join(f"{m['id']}: {(m.get('meshp2p') or {}).get('state')}" for m in models)
            + "); retry in a moment"
        )
    sizes = _sizes(status)

    def rank(m: dict[str, Any]) -> tuple[int, int, str]:
        nodes = (m.get("meshp2p") or {}).get("nodes") or []
        return (-sizes.get(m["id"], 0), -len(nodes), m["id"])

    return str(sorted(ready, key=rank)[0]["id"])


def _context(status: Mapping[str, Any], model: str) -> int | None:
    for served in status.get("models_served") or []:
        if served.get("id") == model and isinstance(served.get("n_ctx"), int):
            return int(served["n_ctx"])
    return None


def resolve(console: str, asked: str | None, key: str | None) -> Target:
    """Find the node, check the key, pick the model."""
    with httpx.Client(timeout=_TIMEOUT, trust_env=False) as http:
        status = node_status(http, console)
        api = api_base(status)
        if status.get("api_key_required") and key is None:
            raise MeshError(
                f"the node's API at {api} needs a key: pass it with --api-key or ${ENV_KEY}"
            )
        headers = {"authorization": f"Bearer {key}"} if key else {}
        listing = _get(http, api + "/models", "the node's API", headers)
    models = [m for m in listing.get("data") or [] if isinstance(m, dict)]
    model = choose_model(models, status, asked)
    return Target(api, model, key, _context(status, model))


# -- one plan per agent -------------------------------------------------------------


def _toml(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(value)


def plan_claude(target: Target, args: list[str]) -> Launch:
    model = target.model
    env = {
        "ANTHROPIC_BASE_URL": target.origin,
        # Sent as "Authorization: Bearer": Claude Code asks nothing about it.
        "ANTHROPIC_AUTH_TOKEN": target.key or "unused",
        "ANTHROPIC_MODEL": model,
        "ANTHROPIC_DEFAULT_OPUS_MODEL": model,
        "ANTHROPIC_DEFAULT_SONNET_MODEL": model,
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": model,
        "ANTHROPIC_SMALL_FAST_MODEL": model,
        "CLAUDE_CODE_SUBAGENT_MODEL": model,
        # No telemetry or update checks to Anthropic: everything stays on the mesh.
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        # Local models are slower than Anthropic's: ten minutes per request.
        "API_TIMEOUT_MS": "600000",
    }
    # A real Anthropic key in the environment would be sent to the node as x-api-key.
    return Launch(["claude", *args], env, unset=["ANTHROPIC_API_KEY"])


def plan_codex(target: Target, args: list[str]) -> Launch:
    provider = f"model_providers.{PROVIDER}"
    overrides = [
        f"model_provider={_toml(PROVIDER)}",
        f"model={_toml(target.model)}",
        f"{provider}.name={_toml('meshp2p mesh')}",
        f"{provider}.base_url={_toml(target.api_url)}",
        f"{provider}.wire_api={_toml('responses')}",
    ]
    env = {}
    if target.key:
        overrides.append(f"{provider}.env_key={_toml(ENV_KEY)}")
        env[ENV_KEY] = target.key
    if target.context:
        overrides.append(f"model_context_window={target.context}")
    argv = ["codex"]
    for override in overrides:
        argv += ["-c", override]
    return Launch([*argv, *args], env)


def plan_goose(target: Target, args: list[str]) -> Launch:
    env = {
        "GOOSE_PROVIDER": "openai",
        "GOOSE_MODEL": target.model,
        "OPENAI_HOST": target.origin,
        "OPENAI_BASE_PATH": "v1/chat/completions",
        "OPENAI_API_KEY": target.key or "unused",
    }
    return Launch(["goose", *args], env)


def plan_opencode(target: Target, args: list[str]) -> Launch:
    model: dict[str, Any] = {"name": target.model}
    if target.context:
        model["limit"] = {"context": target.context, "output": _MAX_OUTPUT}
    config = {
        "$schema": "https://opencode.ai/config.json",
        "provider": {
            PROVIDER: {
                "npm": "@ai-sdk/openai-compatible",
                "name": "meshp2p mesh",
                "options": {"baseURL": target.api_url, "apiKey": f"{{env:{ENV_KEY}}}"},
                "models": {target.model: model},
            }
        },
        "model": f"{PROVIDER}/{target.model}",
        "small_model": f"{PROVIDER}/{target.model}",
    }
    env = {"OPENCODE_CONFIG_CONTENT": json.dumps(config), ENV_KEY: target.key or "unused"}
    return Launch(["opencode", *args], env)


def _pi_agent_dir() -> Path:
    configured = os.environ.get("PI_CODING_AGENT_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".pi" / "agent"


def plan_pi(target: Target, args: list[str]) -> Launch:
    user_dir = _pi_agent_dir()
    providers: dict[str, Any] = {}
    try:
        existing = json.loads((user_dir / "models.json").read_text())
        if isinstance(existing, dict) and isinstance(existing.get("providers"), dict):
            providers = dict(existing["providers"])
    except (OSError, ValueError):
        pass
    providers[PROVIDER] = {
        "baseUrl": target.api_url,
        "api": "openai-completions",
        # pi reads the key from the environment variable of this name.
        "apiKey": ENV_KEY,
        "compat": {"supportsDeveloperRole": False, "supportsReasoningEffort": False},
        "models": [
            {
                "id": target.model,
                "name": target.model,
                "reasoning": False,
                "input": ["text"],
                "contextWindow": target.context or 4096,
                "maxTokens": _MAX_OUTPUT,
                "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0},
            }
        ],
    }
    models = json.dumps({"providers": providers}, indent=2) + "\n"
    return Launch(
        ["pi", "--provider", PROVIDER, "--model", target.model, *args],
        {ENV_KEY: target.key or "unused"},
        files={"models.json": models},
        links_from=user_dir if user_dir.is_dir() else None,
    )


PLANS = {
    "claude": plan_claude,
    "codex": plan_codex,
    "goose": plan_goose,
    "opencode": plan_opencode,
    "pi": plan_pi,
}


def describe(launch: Launch, target: Target, console: str) -> str:
    """What ``--print`` prints: shell lines that reproduce the launch."""
    lines = [f"# meshp2p launch: node {console}, API {target.api_url}, model {target.model}"]
    lines += [f"unset {name}" for name in launch.unset]
    if launch.files:
        lines.append("# in a temporary directory $DIR (removed when the agent exits):")
        if launch.links_from is not None:
            lines.append(f"# $DIR links to every entry of {launch.links_from} but these files")
        for name, content in launch.files.items():
            lines.append(f"cat > \"$DIR/{name}\" <<'EOF'\n{content.rstrip()}\nEOF")
        lines.append('export PI_CODING_AGENT_DIR="$DIR"')
    lines += [f"export {name}={shlex.quote(value)}" for name, value in launch.env.items()]
    lines.append(shlex.join(launch.argv))
    return "\n".join(lines)


def _environment(launch: Launch, directory: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in launch.unset}
    env.update(launch.env)
    if directory is not None:
        env["PI_CODING_AGENT_DIR"] = str(directory)
    return env


def _prepare_directory(launch: Launch) -> Path:
    directory = Path(tempfile.mkdtemp(prefix="meshp2p-launch-"))
    if launch.links_from is not None:
        for entry in launch.links_from.iterdir():
            if entry.name not in launch.files:
                (directory / entry.name).symlink_to(entry)
    for name, content in launch.files.items():
        path = directory / name
        path.write_text(content)
        path.chmod(0o600)
    return directory


def execute(launch: Launch) -> int:
    """Run the agent: in place of this process, or as a child when files need removing."""
    binary = shutil.which(launch.argv[0], path=os.environ.get("PATH"))
    if binary is None:
        raise MeshError(
            f"{launch.argv[0]} is not installed (not on PATH); {_INSTALL[launch.argv[0]]}"
        )
    if not launch.files:
        os.execve(binary, launch.argv, _environment(launch, None))
    directory = _prepare_directory(launch)
    try:
        child = subprocess.Popen(
            launch.argv, executable=binary, env=_environment(launch, directory)
        )

        def forward(signum: int, _frame: object) -> None:
            child.send_signal(signum)

        # The terminal's Ctrl-C reaches the agent itself (same process group); a
        # SIGTERM or SIGHUP sent to us is passed on. Then the directory can go.
        previous = {
            signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
            signal.SIGTERM: signal.signal(signal.SIGTERM, forward),
            signal.SIGHUP: signal.signal(signal.SIGHUP, forward),
        }
        try:
            return child.wait()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def run_launch(args: argparse.Namespace) -> int:
    options, agent_args = parse_words(list(args.words), args)
    key = options.api_key or env_key()
    target = resolve(options.console, options.model, key)
    launch = PLANS[options.agent](target, agent_args)
    if options.print_only:
        print(describe(launch, target, options.console))
        return 0
    print(
        f"meshp2p: {options.agent} on {target.model} at {target.api_url}",
        file=sys.stderr,
        flush=True,
    )
    return execute(launch)
