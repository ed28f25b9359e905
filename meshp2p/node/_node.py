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
from collections.abc import AsyncIterator, Mapping, Sequence
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
from ..planner._demand import AnnouncedRates, DemandMeter, wanted_only
from ..route._router import RemoteHost, RequestRouter
from ..route._service import RemoteUpstream, RoutingTableClient
from ..tensor._placement import PlacementPlan, plan_placement, tensor_split
from ..tensor._service import (
    LocalFiles,
    TensorServer,
    TensorTunnel,
    WorkerUnavailable,
    open_tunnels,
)
from ..transport._identity import load_or_create_key, peer_id
from ._config import NodeConfig, default_threads, idle_batch_threads, is_loopback
from ._console_view import console_status
from ._discovery import NodeDiscovery, pick_mesh
from ._home import HomeLock, remember_models, remembered_models
from ._membership import Membership
from ._planning import ModelPlanner
from ._status import mesh_providers, node_status

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
        self.started = time.time()
        self.discovery: NodeDiscovery | None = None
        #: Requests per model entering the mesh here; the planner's input, by gossip.
        self.demand = DemandMeter()
        self._announced_rates = AnnouncedRates()
        self.planner: ModelPlanner | None = None
        self._services: trio.Nursery | None = None
        self._worker_scopes: dict[str, trio.CancelScope] = {}
        #: The mesh this node is in, and moving to another (``join``).
        self.membership = Membership(self)
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
        if self.planner is not None:
            self.planner.mesh_changed()

    def view(self) -> MeshView:
        """An immutable snapshot of the mesh (this node included) for placement and routing."""
        if self.mesh is None:
            raise MeshError("the node is not running")
        return self.mesh.view()

    def _running_mesh(self) -> MeshService:
        if self.mesh is None:
            raise MeshError("the node is not running")
        return self.mesh

    async def wait_change(self) -> None:
        """Return at the next change of the node: a worker's state, the mesh, the
        routing table, a join. What the console's event stream waits on."""
        await self._changed.wait()

    async def join(self, token: str) -> dict[str, Any]:
        """Leave this mesh for the one of invite ``token``, at run time; models and APIs
        go on serving, and the home remembers the new mesh as ``--join`` does.

        Refused (``JoinRefusedError``, saying why) while others depend on this node:
        the rule is in ``meshp2p/node/_join.py``. ``InviteError`` for a bad token.
        Returns ``{"mesh_id", "previous_mesh_id", "members"}`` once a node of the new
        mesh admitted this one (or after 10 s).
        """
        return await self.membership.join(token)

    def status(self) -> dict[str, Any]:
        """``/api/status``: see ``_status.node_status``."""
        return node_status(self)

    async def providers(self, model_id: str) -> dict[str, Any]:
        """Who the mesh DHT says serves ``model_id``, and who holds its file."""
        return await mesh_providers(self, model_id)

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
        loading = [w.model_id for w in self.workers if w.state == "loading"]
        if self.planner is not None:
            loading += sorted(self.planner.fetching)
        return LocalState(
            role=role,
            models_served=ready,
            models_on_disk=self._on_disk,
            memory_free=max(0, total - used),
            memory_total=total,
            request_rates=self._request_rates(),
            models_loading=tuple(dict.fromkeys(loading)),
        )

    def _request_rates(self) -> Mapping[str, float]:
        """The rates we announce: all of them in a small mesh; in a large one only those
        for models nobody serves yet, once per model (the rest goes by push-sum).
        Demand for a model no node serves or loads is announced at once."""
        now = trio.current_time()
        rates = self.demand.rates(now)
        hosted = set(self.router.models()) if self.router is not None else set()
        view = self.mesh.view() if self.mesh is not None else None
        if view is not None:
            hosted.update(m for p in view for m in p.models_loading)
        unhosted = set(rates) - hosted
        if self.mesh is not None and view is not None and self.mesh.large:
            mine = self._announced_rates.current
            elsewhere = {m for p in view if p.id != self.mesh.node_id for m in p.request_rates}
            rates = wanted_only(rates, unhosted, mine, elsewhere)
        return self._announced_rates.update(rates, now, unhosted)

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
        self.workers = [
            self._make_worker(f, layout, len(files))
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
        # The mesh (and a client's routing table) can change at run time: see _membership.
        self.membership.open(self.credentials, self.bootstrap)
        self.router = RequestRouter(
            self.node_id,
            lambda: self.workers,
            self._remote_hosts,
            lambda node_id: RemoteUpstream(
                self._running_mesh(),
                node_id,
                self._addrs_of,
                first_byte_timeout=cfg.queue_timeout + 60.0,
            ),
            self.http,
            on_host_failure=lambda _node_id: self.table.refresh_soon() if self.table else None,
            prefix_affinity=cfg.prefix_affinity,
            pending=self._pending,
            on_request=lambda model: self.demand.record(model, trio.current_time()),
        )
        gateway = Gateway(
            self.router, node_id=self.node_id, max_body=cfg.max_body, api_keys=cfg.api_keys
        )
        try:
            async with trio.open_nursery() as nursery:
                # The mesh, what rides on it (route/tensor servers or the routing
                # table, discovery), and moving it to another mesh on a join.
                await nursery.start(self.membership.run)
                self._services = nursery
                for worker in self.workers:
                    await self._start_worker(worker)
                if not cfg.client:
                    self.planner = ModelPlanner(
                        self.node_id,
                        self.store,
                        self.view,
                        lambda: self.workers,
                        self.add_worker,
                        self.remove_worker,
                        pinned=bool(self.workers) and not cfg.reassign,
                        interval=cfg.plan_interval,
                    )
                    await nursery.start(self.planner.run)
                api = await nursery.start(
                    serve, gateway, hypercorn_config(cfg.api_host, cfg.api_port, "meshp2p.api")
                )
                console = await nursery.start(
                    serve,
                    Console(
                        lambda: console_status(self),
                        self.providers,
                        changed=self.wait_change,
                        join=self.join,
                        api=gateway,
                        api_local_only=is_loopback(cfg.api_host),
                    ),
                    hypercorn_config(cfg.console_host, cfg.console_port, "meshp2p.console"),
                )
                self.api_url = api[0] + "/v1"
                self.console_url = console[0]
                self._notify()
                task_status.started(self)
                await self._stopping.wait()
                # A clean exit: say goodbye while the mesh links are still up.
                await self._running_mesh().leave()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self.http.aclose()

    def _make_worker(self, file: ModelFile, layout: GgufLayout, models: int) -> InferenceWorker:
        """A worker for ``file``, its threads shared with ``models`` models in all."""
        cfg = self.config
        cores = os.cpu_count() or 1
        threads, threads_batch = default_threads(models, cores)
        if cfg.threads is not None:
            threads = threads_batch = cfg.threads
        # Batches may take every core (this model's share of them) while other
        # processes leave them idle; not when the user set the threads.
        idle = None if cfg.threads_batch or cfg.threads else idle_batch_threads(models, cores)
        return InferenceWorker(
            WorkerSettings(
                model_id=file.id,
                model_path=file.path,
                threads=threads,
                threads_batch=cfg.threads_batch or threads_batch,
                threads_batch_idle=idle,
                ctx_size=cfg.ctx_size,
                log_dir=cfg.home / "logs",
                max_queue=cfg.max_queue,
                queue_timeout=cfg.queue_timeout,
                default_max_tokens=cfg.default_max_tokens,
                speculative=cfg.speculative,
                draft_path=self.store.resolve(cfg.draft).path if cfg.draft else None,
            ),
            placement=self._placement(file, layout),
        )

    async def _start_worker(self, worker: InferenceWorker) -> None:
        """Run ``worker`` in the node's service nursery, until ``_stop_worker``."""
        assert self._services is not None
        scope = trio.CancelScope()
        self._worker_scopes[worker.model_id] = scope

        async def supervise(*, task_status: trio.TaskStatus[None]) -> None:
            with scope:
                async with trio.open_nursery() as nursery:
                    await nursery.start(worker.run)
                    nursery.start_soon(self._announce_changes, worker)
                    task_status.started()

        await self._services.start(supervise)

    async def add_worker(self, file: ModelFile) -> None:
        """Serve ``file`` from now on (the planner took it on)."""
        if any(w.model_id == file.id for w in self.workers):
            return
        layout = await trio.to_thread.run_sync(read_layout, file.path)
        worker = self._make_worker(file, layout, len(self.workers) + 1)
        self.workers.append(worker)
        await self._start_worker(worker)
        self._notify()

    async def remove_worker(self, model_id: str) -> None:
        """Stop serving ``model_id`` (the planner gave it up); its child is stopped."""
        worker = next((w for w in self.workers if w.model_id == model_id), None)
        scope = self._worker_scopes.pop(model_id, None)
        if worker is None or scope is None:
            return
        self.workers.remove(worker)
        scope.cancel()
        self.plans.pop(model_id, None)
        self._memory_use.pop(model_id, None)
        self._notify()

    def _pending(self, model: str) -> tuple[str, list[str]] | None:
        """For the router: a model nobody serves that the catalog or a disk knows, and
        who is loading it."""
        name = self.planner.known(model) if self.planner is not None else None
        if name is None or self.mesh is None:
            return None
        loading = [p.id for p in self.mesh.view() if name in p.models_loading]
        return name, loading

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
