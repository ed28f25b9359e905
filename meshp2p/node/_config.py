"""A node's configuration: ``NodeConfig`` and its defaults."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from .._errors import ConfigError
from ..api._gateway import DEFAULT_MAX_BODY
from ..api._keys import check_key
from ..discovery._relay import DEFAULT_RELAYS
from ..inference._models import default_home
from ..transport._host import DEFAULT_LISTEN

DEFAULT_API_PORT = 9337
DEFAULT_CONSOLE_PORT = 3131
#: A request without max_tokens stops here (about 750 words): a small model that falls
#: into repeating itself (gemma-3-270m does in about 1 sampled answer in 20) then ends
#: in seconds, not the minute 2048 tokens take on one CPU thread.
DEFAULT_MAX_TOKENS = 1024


@dataclass(frozen=True)
class NodeConfig:
    """Everything a node needs to start. The CLI builds one from its flags."""

    home: Path = field(default_factory=default_home)
    #: Model specs: a .gguf path, a file name in the model store, or a catalog
    #: name. Empty means the default model.
    models: tuple[str, ...] = ()
    api_host: str = "127.0.0.1"
    api_port: int = DEFAULT_API_PORT
    #: Keys the /v1 API takes (Bearer or x-api-key); none: it takes requests without one.
    api_keys: tuple[str, ...] = ()
    #: Serve the API on a non-loopback api_host without keys (refused otherwise).
    no_api_key: bool = False
    console_host: str = "127.0.0.1"
    console_port: int = DEFAULT_CONSOLE_PORT
    #: llama.cpp threads per model for generation and for prompts; None shares the
    #: machine's cores among the models (``default_threads``). ``threads_batch``
    #: defaults to ``threads`` when only that is given.
    threads: int | None = None
    threads_batch: int | None = None
    ctx_size: int = 4096
    #: Tokens generated for a request without max_tokens (0: up to the context).
    default_max_tokens: int = DEFAULT_MAX_TOKENS
    max_body: int = DEFAULT_MAX_BODY
    #: Memory this node offers (bytes); None means what the machine has.
    max_vram: int | None = None
    max_queue: int = 64
    queue_timeout: float = 300.0
    #: An invite token: join that mesh instead of starting (or rejoining) one.
    join: str | None = None
    #: libp2p listen multiaddrs (QUIC and TCP on all interfaces by default).
    listen: tuple[str, ...] = DEFAULT_LISTEN
    #: Seconds between gossip heartbeats, and of silence before a peer is dead.
    heartbeat_interval: float = 5.0
    dead_after: float = 12.0
    #: A passive client: API only, no model, no gossip; needs ``join``.
    client: bool = False
    #: Serve no model this time, whatever the home served before: offer memory only.
    standby: bool = False
    #: Send requests whose prompts start the same to the same host (KV cache reuse).
    prefix_affinity: bool = True
    #: Speculative decoding: guessed tokens verified in batches, where it pays
    #: (``inference._speculative``); ``draft`` adds a draft model's guesses (a model
    #: spec, like ``models``'), which must share each served model's vocabulary.
    speculative: bool = True
    draft: str | None = None
    # Discovery (meshp2p.discovery). Relays are contacted only when one of these
    # asks for it: --nostr-relay, --publish or --auto.
    #: Nostr relay URLs; empty: the default public relays, if --publish or --auto.
    nostr_relays: tuple[str, ...] = ()
    #: Publish this mesh's listing (its invite token becomes public).
    publish: bool = False
    #: Join the best listed mesh (with ``mesh_name``: one of that name), else start one.
    auto: bool = False
    mesh_name: str | None = None
    region: str | None = None
    #: Listed as the most passive clients the mesh takes (listings only).
    max_clients: int | None = None
    #: Publish encrypted whereabouts for members to re-find each other (needs relays).
    rendezvous: bool = True
    #: Find members on the LAN by mDNS.
    lan: bool = False
    #: Seconds between listing republications (a listing lives two of them).
    publish_interval: float = 60.0
    #: Seconds between planning rounds (which model a standby node takes on).
    plan_interval: float = 60.0
    #: Let the planner move a node started with models to another model.
    reassign: bool = False

    @property
    def relays(self) -> tuple[str, ...]:
        """The Nostr relays this node talks to; empty when no discovery was asked for."""
        if self.nostr_relays:
            return self.nostr_relays
        return DEFAULT_RELAYS if self.publish or self.auto else ()

    def __post_init__(self) -> None:
        self._check_api_keys()
        for name in ("api_port", "console_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise ConfigError(f"{name.replace('_', ' ')} {port} is not a port number")
        if self.threads is not None and self.threads < 1:
            raise ConfigError("threads must be at least 1")
        if self.threads_batch is not None and self.threads_batch < 1:
            raise ConfigError("prompt threads must be at least 1")
        if self.ctx_size < 64:
            raise ConfigError("context size must be at least 64 tokens")
        if self.default_max_tokens < 0:
            raise ConfigError("default max tokens must be 0 (up to the context) or more")
        if self.draft is not None and not self.speculative:
            raise ConfigError("--draft speeds up speculative decoding; drop --no-speculative")
        if self.client and self.join is None:
            raise ConfigError("--client needs --join TOKEN: a client joins an existing mesh")
        if self.client and self.models:
            raise ConfigError("--client serves no model; drop --model or --client")
        if self.standby and (self.models or self.client):
            other = "--client" if self.client else "--model"
            raise ConfigError(f"--standby serves no model; drop {other} or --standby")
        if not 0 < self.heartbeat_interval < self.dead_after:
            raise ConfigError("the heartbeat interval must be positive and below dead-after")
        self._check_discovery()

    def _check_api_keys(self) -> None:
        for key in self.api_keys:
            try:
                check_key(key)
            except ValueError as exc:
                raise ConfigError(f"--api-key: {exc}") from None
        if self.api_keys and self.no_api_key:
            raise ConfigError("--no-api-key contradicts --api-key; drop one")
        if not self.api_keys and not self.no_api_key and not is_loopback(self.api_host):
            raise ConfigError(
                f"--host {self.api_host} opens the API to other machines, and it has no key: "
                "give one with --api-key KEY (or MESHP2P_API_KEY), or pass --no-api-key to "
                "serve it to anyone who can reach it"
            )

    def _check_discovery(self) -> None:
        if self.auto and self.join is not None:
            raise ConfigError("--auto finds a mesh to join; drop --join or --auto")
        if self.client and (self.publish or self.auto):
            raise ConfigError("a --client neither publishes nor picks a mesh; it needs --join")
        if (self.mesh_name or self.region or self.max_clients) and not (self.publish or self.auto):
            raise ConfigError("--mesh-name, --region and --max-clients go with --publish or --auto")
        if self.mesh_name is not None and not 0 < len(self.mesh_name) <= 64:
            raise ConfigError("a mesh name has 1 to 64 characters")
        if self.max_clients is not None and self.max_clients < 0:
            raise ConfigError("--max-clients must be 0 or more")
        if self.publish_interval < 1:
            raise ConfigError("--publish-interval must be at least 1 second")
        if self.plan_interval < 1:
            raise ConfigError("--plan-interval must be at least 1 second")
        for url in self.nostr_relays:
            if not url.startswith(("ws://", "wss://")):
                raise ConfigError(f"--nostr-relay {url!r} is not a ws:// or wss:// URL")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_threads(models: int, cores: int) -> tuple[int, int]:
    """llama.cpp threads per model: (generation, prompt), the cores but one shared by
    the models.

    llama.cpp's threads meet at a barrier for every layer, so with a thread on each
    core, one core taken by another process (or by this node's own event loop) makes
    every step wait for the thread that lost it: `make bench-threads` on two cores, a
    16-token chat 2.9-4.6x slower and a long prompt 2.5-2.9x, against 1.2-1.7x and
    1.6-2.2x with one thread. A quiet, dedicated machine gains by ``--threads-batch``
    set to every core (prompts about twice as fast on two cores).
    """
    share = max(1, (cores - 1) // max(1, models))
    return share, share


def idle_batch_threads(models: int, cores: int) -> int:
    """llama.cpp threads per model for a batch (a prompt, a speculative verification)
    while the machine's other processes leave cores idle (``inference._threads``):
    every core, shared by the models."""
    return max(default_threads(models, cores)[1], cores // max(1, models))
