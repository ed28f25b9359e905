"""A meshp2p node: the tree of services one process runs, and its configuration.

``Node.run`` resolves the models, then starts, in one nursery, the mesh (a
libp2p host with membership, gossip and the DHT), the route server (or, for a
passive client, the routing-table poller), an inference worker per model, the
OpenAI gateway and the management console. ``Node.stop`` leaves the mesh
cleanly first; cancelling the nursery stops everything at once, child
processes included.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio

from .._errors import ConfigError, MeshError, PortInUseError
from ..api._asgi import hypercorn_config
from ..api._console import Console
from ..api._gateway import Gateway
from ..inference._gguf import GgufLayout, read_layout
from ..inference._llamacpp import split_layers
from ..inference._models import ModelFile, ModelStore
from ..inference._progress import ProgressFactory
from ..inference._worker import InferenceWorker, Launch, Unplaceable, WorkerSettings
from ..mesh._gossip import ModelFile as AnnouncedModel
from ..mesh._invite import (
    InviteToken,
    MeshCredentials,
    load_credentials,
    save_credentials,
    stored_bootstrap,
)
from ..mesh._service import LocalState, MeshService
from ..mesh._state import MeshView
from ..route._router import RemoteHost, RequestRouter
from ..route._service import RemoteUpstream, RouteServer, RoutingTableClient
from ..tensor._placement import PlacementPlan, plan_placement, tensor_split
from ..tensor._service import (
    LocalFiles,
    TensorServer,
    TensorTunnel,
    WorkerUnavailable,
    open_tunnels,
)
from ..transport._identity import load_or_create_key, peer_id
from ._config import NodeConfig, default_threads
from ._discovery import NodeDiscovery, pick_mesh
from ._home import HomeLock, remember_models, remembered_models

log = logging.getLogger("meshp2p.node")

#: A worker whose tunnel failed is left out of plans until it announces anew (it
#: restarted) or this long has passed.
WORKER_FAILURE_S = 60.0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("meshp2p")
    except PackageNotFoundError:  # running from a source tree
        return "0+unknown"


class Node:
    """One meshp2p node. ``await nursery.start(node.run)`` returns once it serves."""

    def __init__(self, config: NodeConfig, *, progress: ProgressFactory | None = None) -> None:
        self.config = config
        # First: a second node on this home must not touch its key or mesh.
        self._home_lock = HomeLock(config.home)
        self.progress = progress
        self.store = ModelStore(config.home)
        self.keypair = load_or_create_key(config.home)
        self.node_id = peer_id(self.keypair)
        self.version = _version()
        self.workers: list[InferenceWorker] = []
        self.api_url: str | None = None
        self.console_url: str | None = None
        self.mesh: MeshService | None = None
        self.table: RoutingTableClient | None = None
        self.router: RequestRouter | None = None
        self._on_disk: tuple[AnnouncedModel, ...] = ()
        self._disk_paths: dict[str, Path] = {}
        self.files = LocalFiles(lambda: self._disk_paths)
        self.tensor_server: TensorServer | None = None
        #: Per model: the last placement plan, the host's bytes in use, the live tunnels.
        self.plans: dict[str, PlacementPlan] = {}
        self._memory_use: dict[str, int] = {}
        self.tunnels: dict[str, list[TensorTunnel]] = {}
        self._failed_workers: dict[str, tuple[int, float]] = {}  # id -> (seq, at)
        self._stopping = trio.Event()
        self._changed = trio.Event()
        self._started = time.time()
        self.discovery: NodeDiscovery | None = None
        if config.auto:
            # Which mesh is decided in run(), from the listings on Nostr.
            self.credentials = load_credentials(config.home) or MeshCredentials.new()
            self.bootstrap: tuple[str, ...] = ()
            self.new_mesh = True
        else:
            self.credentials, self.bootstrap, self.new_mesh = self._mesh_membership(config.join)

    def _mesh_membership(
        self, join: str | None, *, fresh: bool = False
    ) -> tuple[MeshCredentials, tuple[str, ...], bool]:
        """Which mesh to be in: the invited one, the one this home was in, or a new one
        (``fresh``: a new one whatever the home was in)."""
        home = self.config.home
        if join is not None:
            token = InviteToken.decode(join)
            previous = load_credentials(home)
            if previous is not None and previous.mesh_id != token.credentials.mesh_id:
                log.warning(
                    "leaving mesh %s for mesh %s", previous.mesh_id, token.credentials.mesh_id
                )
            save_credentials(home, token.credentials, token.bootstrap)
            return token.credentials, token.bootstrap, False
        stored = None if fresh else load_credentials(home)
        if stored is not None:
            return stored, stored_bootstrap(home), False
        created = MeshCredentials.new()
        save_credentials(home, created, ())
        return created, (), True

    def stop(self) -> None:
        """Leave the mesh cleanly and stop every service; ``run`` returns soon after.

        Cancelling ``run`` instead stops at once, and peers notice only when the
        node stops answering.
        """
        self._stopping.set()
        self._notify()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def wait_ready(self, model: str | None = None) -> None:
        """Wait until this node's API can answer; bound it with ``trio.fail_after``.

        With ``model``: until some node of the mesh (this one or another) serves it
        ready. Without: until every model this node serves is ready, or, for a node
        that serves none (standby, client), until the mesh serves some model.
        ``MeshError`` if the node stops first.
        """
        while not self._ready(model):
            if self.stopping:
                raise MeshError("the node stopped before it was ready")
            await self._changed.wait()

    def _ready(self, model: str | None) -> bool:
        if self.router is None or self.api_url is None or self.stopping:
            return False
        if model is None and self.workers:
            return all(w.state == "ready" for w in self.workers)
        return self.router.ready(model)

    def _notify(self) -> None:
        """Something ``wait_ready`` looks at changed: a worker, the mesh, the table."""
        self._changed.set()
        self._changed = trio.Event()
        if self.discovery is not None:
            self.discovery.changed()

    def view(self) -> MeshView:
        """An immutable snapshot of the mesh (this node included) for placement and routing."""
        if self.mesh is None:
            raise MeshError("the node is not running")
        return self.mesh.view()

    def status(self) -> dict[str, Any]:
        mesh = self.mesh
        return {
            "node_id": self.node_id,
            "version": self.version,
            "api_url": self.api_url,
            "console_url": self.console_url,
            "home": str(self.config.home),
            "uptime_s": round(time.time() - self._started, 1),
            "role": self.local_state().role,
            "models_served": [w.status() for w in self.workers],
            "mesh_id": self.credentials.mesh_id,
            "invite_token": mesh.invite_token() if mesh else None,
            "addrs": list(mesh.addrs) if mesh else [],
            "peers": self._peers_status(),
            "connections": mesh.connections() if mesh else [],
            "rejected": list(mesh.rejections) if mesh else [],
            "gossip": dict(mesh.counters) if mesh else {},
            "kad": {
                "protocol": str(mesh.kad.protocol_id),
                "routing_table_size": mesh.kad.routing_table_size,
            }
            if mesh and mesh.kad
            else None,
            "placements": [_plan_status(p) for p in self.plans.values()],
            "split": next(
                (_plan_status(p) for p in self.plans.values() if p.mode == "split" and p.fits),
                None,
            ),
            "tunnels": [t.status() for ts in self.tunnels.values() for t in ts],
            "lending": self.tensor_server.status() if self.tensor_server else [],
            # Since start, over all hosts: streams, refused, bytes each way, by reference.
            "lending_totals": dict(self.tensor_server.counters) if self.tensor_server else {},
            "discovery": self.discovery.status() if self.discovery else None,
        }

    async def providers(self, model_id: str) -> dict[str, Any]:
        """Who the mesh DHT says serves ``model_id``, and who holds its file."""
        from ..mesh._kad import on_disk_key, served_key

        if self.mesh is None:
            return {"model": model_id, "served_by": [], "on_disk": []}
        # The file's hash comes from gossip: whoever holds it announced it.
        sha = next(
            (m.sha256 for p in self.mesh.view() for m in p.models_on_disk if m.name == model_id),
            None,
        )
        return {
            "model": model_id,
            "served_by": await self.mesh.providers(served_key(model_id)),
            "on_disk": await self.mesh.providers(on_disk_key(sha)) if sha else [],
        }

    def _peers_status(self) -> list[dict[str, Any]]:
        if self.table is not None:
            return [
                {
                    "id": h.node_id,
                    "addrs": list(h.addrs),
                    "role": "host",
                    "models_served": list(h.models),
                    "inflight": h.inflight,
                }
                for h in self.table.hosts
            ]
        return self.mesh.peers_status(trio.current_time()) if self.mesh else []

    def local_state(self) -> LocalState:
        """What this node announces about itself to the mesh."""
        ready = tuple(w.model_id for w in self.workers if w.state == "ready")
        total = self.memory_total()
        lent = self.tensor_server.lent_bytes if self.tensor_server else 0
        used = sum(self._memory_use.values()) + lent
        if self.config.client:
            role = "client"
        elif self.workers:
            role = "host"
        else:
            role = "worker" if lent else "standby"
        return LocalState(
            role=role,
            models_served=ready,
            models_on_disk=self._on_disk,
            memory_free=max(0, total - used),
            memory_total=total,
            request_rates={},
        )

    def memory_total(self) -> int:
        """The memory this node offers: ``--max-vram``, else what the machine has."""
        return self.config.max_vram or _physical_memory()

    def resolve_models(self) -> list[ModelFile]:
        """The model files to serve; may assemble or download (blocking).

        ``--model`` names them. Without it a node serves what its home served last;
        a home that never ran a node serves the default model when it starts a new
        mesh, and nothing (standby, offering its memory) when it joins one.
        """
        cfg = self.config
        if cfg.client or cfg.standby:
            return []
        specs = list(cfg.models)
        remembered = False
        if not specs:
            last = remembered_models(cfg.home)
            if last is None:
                return [self.store.ensure_default(progress=self.progress)] if self.new_mesh else []
            specs, remembered = last, True
        files = []
        for spec in specs:
            try:
                files.append(self.store.resolve(spec, progress=self.progress))
            except MeshError as exc:
                if not remembered:
                    raise
                raise ConfigError(
                    f"this node served {spec} before, but cannot now: {exc}; "
                    "name the models with --model, or pass --standby"
                ) from None
        ids = [f.id for f in files]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ConfigError(f"model {duplicates[0]!r} is given more than once")
        return files

    async def run(self, *, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until ``stop`` (or cancellation); started once the API answers.

        The API may answer 503 for a model still loading: ``wait_ready`` waits for it.
        The home stays locked until this returns.
        """
        try:
            await self._run(task_status)
        finally:
            self._home_lock.release()

    async def _run(self, task_status: trio.TaskStatus[Node]) -> None:
        from hypercorn.trio import serve

        cfg = self.config
        # Fail on a taken port now, not after a long model download.
        _check_port_free(cfg.api_host, cfg.api_port, "--port")
        _check_port_free(cfg.console_host, cfg.console_port, "--console-port")
        if cfg.auto:
            token = await pick_mesh(cfg, cfg.home)
            if token is None:
                log.warning("no listed mesh answered; starting a new one")
            self.credentials, self.bootstrap, self.new_mesh = self._mesh_membership(
                token, fresh=True
            )
        files = await trio.to_thread.run_sync(self.resolve_models)
        if not cfg.client:
            remember_models(cfg.home, [str(f.path) for f in files])
        # Files served from outside the store are on disk too.
        stored = await trio.to_thread.run_sync(self.store.list)
        on_disk = {m.sha256: m for m in [*stored, *files]}
        self._on_disk = tuple(
            AnnouncedModel(m.id, m.size, m.sha256)
            for m in sorted(on_disk.values(), key=lambda m: m.id)
        )
        self._disk_paths = {m.sha256: m.path for m in on_disk.values()}
        layouts = [await trio.to_thread.run_sync(read_layout, f.path) for f in files]
        threads, threads_batch = default_threads(len(files), os.cpu_count() or 1)
        if cfg.threads is not None:
            threads = threads_batch = cfg.threads
        threads_batch = cfg.threads_batch or threads_batch
        self.workers = [
            InferenceWorker(
                WorkerSettings(
                    model_id=f.id,
                    model_path=f.path,
                    threads=threads,
                    threads_batch=threads_batch,
                    ctx_size=cfg.ctx_size,
                    log_dir=cfg.home / "logs",
                    max_queue=cfg.max_queue,
                    queue_timeout=cfg.queue_timeout,
                    default_max_tokens=cfg.default_max_tokens,
                ),
                placement=self._placement(f, layout),
            )
            for f, layout in zip(files, layouts, strict=True)
        ]
        # trust_env=False: a proxy from the environment must never see local traffic.
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(
                connect=5.0, read=cfg.queue_timeout + 60.0, write=30.0, pool=30.0
            ),
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=64),
            trust_env=False,
        )
        self.mesh = mesh = MeshService(
            self.keypair,
            self.credentials,
            local=self.local_state,
            version=self.version,
            listen=cfg.listen,
            bootstrap=self.bootstrap,
            heartbeat_interval=cfg.heartbeat_interval,
            dead_after=cfg.dead_after,
            client=cfg.client,
            on_change=self._notify,
        )
        if cfg.client:
            self.table = RoutingTableClient(mesh, cfg.heartbeat_interval, on_change=self._notify)
        self.router = RequestRouter(
            self.node_id,
            lambda: self.workers,
            self._remote_hosts,
            lambda node_id: RemoteUpstream(
                mesh, node_id, self._addrs_of, first_byte_timeout=cfg.queue_timeout + 60.0
            ),
            self.http,
            on_host_failure=lambda _node_id: self.table.refresh_soon() if self.table else None,
            prefix_affinity=cfg.prefix_affinity,
        )
        gateway = Gateway(self.router, node_id=self.node_id, max_body=cfg.max_body)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(mesh.run)
                if self.table is not None:
                    await nursery.start(self.table.run)
                else:
                    RouteServer(mesh, lambda: self.workers, self.http).register()
                    self.tensor_server = TensorServer(
                        mesh,
                        self.files,
                        threads=cfg.threads or default_threads(1, os.cpu_count() or 1)[0],
                        log_dir=cfg.home / "logs",
                        available=lambda: not self.stopping,
                    )
                    await nursery.start(self.tensor_server.run)
                for worker in self.workers:
                    await nursery.start(worker.run)
                    nursery.start_soon(self._announce_changes, worker)
                discovery = NodeDiscovery(cfg, mesh, self.version)
                if discovery.active:
                    self.discovery = discovery
                    await nursery.start(discovery.run)
                api = await nursery.start(
                    serve, gateway, hypercorn_config(cfg.api_host, cfg.api_port, "meshp2p.api")
                )
                console = await nursery.start(
                    serve,
                    Console(self.status, self.providers),
                    hypercorn_config(cfg.console_host, cfg.console_port, "meshp2p.console"),
                )
                self.api_url = api[0] + "/v1"
                self.console_url = console[0]
                self._notify()
                task_status.started(self)
                await self._stopping.wait()
                # A clean exit: say goodbye while the mesh links are still up.
                await self.mesh.leave()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self.http.aclose()

    def _placement(self, model: ModelFile, layout: GgufLayout) -> Any:
        """The worker's Placement: plan each start from the mesh view of that moment."""

        @asynccontextmanager
        async def place() -> AsyncIterator[Launch]:
            self._memory_use.pop(model.id, None)
            plan = self.plan(model, layout)
            self.plans[model.id] = plan
            if not plan.fits:
                raise Unplaceable(f"{model.id} {plan.reason}")
            if plan.mode == "solo":
                self._memory_use[model.id] = model.size
                yield Launch(info={"mode": "solo"})
                return
            async with self._split(model, layout, plan) as launch:
                yield launch

        return place

    def plan(self, model: ModelFile, layout: GgufLayout) -> PlacementPlan:
        """Where ``model`` would run now. The decision is ``_placement.plan_placement``'s, a
        pure function of the mesh view; this only adjusts the view: the host's free memory
        is what its other models leave, and workers that failed recently are left out."""
        view = self.view()
        now = time.monotonic()
        lent = self.tensor_server.lent_bytes if self.tensor_server else 0
        others = sum(use for m, use in self._memory_use.items() if m != model.id)
        peers = []
        for peer in view:
            if peer.id == self.node_id:
                free = max(0, self.memory_total() - others - lent)
                peer = dataclasses.replace(peer, memory_free=free)
            else:
                failed = self._failed_workers.get(peer.id)
                if failed and failed[0] == peer.seq and now - failed[1] < WORKER_FAILURE_S:
                    continue
            peers.append(peer)
        return plan_placement(
            MeshView(view.mesh_id, tuple(peers)),
            host_id=self.node_id,
            model_id=model.id,
            model_size=model.size,
            model_sha256=model.sha256,
            n_layers=layout.n_layers,
            host_only_bytes=layout.host_only_bytes,
        )

    def _worker_failed(self, node_id: str, reason: str) -> None:
        peer = self.mesh.view().peer(node_id) if self.mesh is not None else None
        log.warning("leaving worker %s out of plans: %s", node_id, reason)
        self._failed_workers[node_id] = (peer.seq if peer else -1, time.monotonic())

    @asynccontextmanager
    async def _split(
        self, model: ModelFile, layout: GgufLayout, plan: PlacementPlan
    ) -> AsyncIterator[Launch]:
        """Tunnels to the plan's workers, checked before llama.cpp depends on them."""
        assert self.mesh is not None
        view = self.mesh.view()
        tunnels = []
        for w in plan.workers:
            peer = view.peer(w.node_id)
            tunnels.append(
                TensorTunnel(
                    self.mesh,
                    w.node_id,
                    addrs=peer.addrs if peer else (),
                    memory=layout.layers_bytes(len(w.layers)),
                    layouts={model.sha256: layout},
                    files=self.files,
                )
            )
        self.tunnels[model.id] = tunnels
        for tunnel in tunnels:
            try:
                await tunnel.check()
            except WorkerUnavailable as exc:
                self._worker_failed(exc.node_id, exc.reason)
                raise Unplaceable(str(exc)) from None
        split = split_layers(plan.n_layers, tensor_split(plan))
        self._memory_use[model.id] = layout.host_only_bytes + layout.layers_bytes(
            len(plan.host_layers)
        )
        async with open_tunnels(tunnels) as endpoints:
            try:
                yield Launch(
                    rpc=tuple(endpoints),
                    n_gpu_layers=split.n_gpu_layers,
                    tensor_split=tuple(split.tensor_split or ()),
                    info={
                        "mode": "split",
                        "endpoints": endpoints,
                        "n_gpu_layers": split.n_gpu_layers,
                        "tensor_split": split.tensor_split,
                    },
                )
            finally:
                for tunnel in tunnels:
                    if tunnel.broken is not None:
                        self._worker_failed(tunnel.worker, tunnel.broken)

    def _remote_hosts(self) -> list[RemoteHost]:
        """Other nodes that serve models: from the routing table or from gossip."""
        if self.table is not None:
            return [
                RemoteHost(h.node_id, tuple(h.models), None)
                for h in self.table.hosts
                if h.node_id != self.node_id
            ]
        if self.mesh is None:
            return []
        return [
            RemoteHost(p.id, tuple(p.models_served), p.rtt_ms)
            for p in self.mesh.view()
            if p.id != self.node_id and p.models_served
        ]

    def _addrs_of(self, node_id: str) -> Sequence[str]:
        if self.table is not None:
            return self.table.addrs(node_id)
        peer = self.mesh.view().peer(node_id) if self.mesh is not None else None
        return peer.addrs if peer is not None else ()

    async def _announce_changes(self, worker: InferenceWorker) -> None:
        while True:
            await worker.wait_state_change()
            self._notify()
            if self.mesh is not None:
                self.mesh.announce_soon()


def _plan_status(plan: PlacementPlan) -> dict[str, Any]:
    return {
        "model": plan.model,
        "host": plan.host,
        "mode": plan.mode if plan.fits else "unavailable",
        "host_layers": len(plan.host_layers),
        "host_memory": plan.host_memory,
        "required_bytes": plan.required_bytes,
        "missing_bytes": plan.missing_bytes,
        "reason": plan.reason,
        "workers": [
            {
                "id": w.node_id,
                "layers": len(w.layers),
                "layer_range": [w.layers.start, w.layers.stop],
                "memory": w.memory,
                "rtt_ms": w.rtt_ms,
            }
            for w in plan.workers
        ],
    }


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def _check_port_free(host: str, port: int, flag: str) -> None:
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(
                    f"port {port} on {host} is in use; stop the other process or pass {flag}"
                ) from None
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
