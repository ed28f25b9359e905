"""A node's membership in one mesh at a time: the mesh service and the services that ride
on it, moved to another mesh by ``join`` while models and APIs go on serving.

``Membership.run`` owns, in a nursery of its own, the ``MeshService`` and what is
registered on its host: the route and tensor servers (or, for a passive client, the
routing-table poller) and discovery. A join hands the invite to that task through a
channel; the task says goodbye to the old mesh (a signed leaving: members drop this
node at once), cancels that nursery, saves the new credentials in the home as
``--join`` does (a restart stays in the new mesh), and starts the same services on
the new mesh. Workers, the planner and both HTTP servers live in the node's nursery
and are not touched.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import TYPE_CHECKING, Any

import trio

from .._errors import JoinRefusedError, MeshError
from ..mesh._invite import InviteToken, MeshCredentials, save_credentials
from ..mesh._service import MeshService
from ..route._service import RouteServer, RoutingTableClient
from ..tensor._service import TensorServer
from ._config import default_threads
from ._discovery import NodeDiscovery
from ._join import PROBE_TIMEOUT, join_refusal, mesh_answers, situation

if TYPE_CHECKING:
    from ._node import Node

log = logging.getLogger("meshp2p.node")

#: After the switch, how long ``join`` waits for a node of the new mesh to admit us.
SETTLE_TIMEOUT = 10.0
#: Tries at starting the mesh service, a second apart.
START_ATTEMPTS = 5


class Membership:
    """The mesh ``node`` is in, and the services on it. ``open`` builds the first mesh;
    ``await nursery.start(membership.run)`` runs it; ``join`` moves it."""

    def __init__(self, node: Node) -> None:
        self.node = node
        #: A join is under way (from its check until the new mesh runs).
        self.joining = False
        self._send, self._receive = trio.open_memory_channel[tuple[InviteToken, trio.Event]](1)

    def open(self, credentials: MeshCredentials, bootstrap: tuple[str, ...]) -> MeshService:
        """Build the node's mesh service (and a passive client's routing table) for
        ``credentials``; ``run`` starts them."""
        node, cfg = self.node, self.node.config
        mesh = MeshService(
            node.keypair,
            credentials,
            local=node.local_state,
            version=node.version,
            listen=cfg.listen,
            bootstrap=bootstrap,
            heartbeat_interval=cfg.heartbeat_interval,
            dead_after=cfg.dead_after,
            client=cfg.client,
            on_change=node._notify,
            local_demand=lambda: node.demand.rates(trio.current_time()),
        )
        node.mesh = mesh
        node.table = (
            RoutingTableClient(mesh, cfg.heartbeat_interval, on_change=node._notify)
            if cfg.client
            else None
        )
        return mesh

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the current mesh and its services; on a join, leave it and run the next."""
        node = self.node
        started = False
        switched: trio.Event | None = None
        while True:
            mesh = node.mesh
            assert mesh is not None, "Membership.open first"
            async with trio.open_nursery() as nursery:
                await self._serve(nursery, mesh)
                if not started:
                    started = True
                    task_status.started()
                if switched is not None:
                    self.joining = False
                    switched.set()
                    node._notify()
                invite, switched = await self._receive.receive()
                log.warning(
                    "leaving mesh %s for mesh %s",
                    mesh.credentials.mesh_id,
                    invite.credentials.mesh_id,
                )
                await mesh.leave()
                nursery.cancel_scope.cancel()
            self._switch(invite)

    async def _serve(self, nursery: trio.Nursery, mesh: MeshService) -> None:
        node, cfg = self.node, self.node.config
        for attempt in range(START_ATTEMPTS):
            try:
                await nursery.start(mesh.run)
                break
            except OSError as exc:
                # After a join, pinned listen ports may take a moment to be free again.
                if attempt == START_ATTEMPTS - 1:
                    raise MeshError(f"cannot listen for mesh connections: {exc}") from None
                await trio.sleep(1.0)
        if node.table is not None:
            await nursery.start(node.table.run)
        else:
            RouteServer(mesh, lambda: node.workers, node.http).register()
            node.tensor_server = TensorServer(
                mesh,
                node.files,
                threads=cfg.threads or default_threads(1, os.cpu_count() or 1)[0],
                log_dir=cfg.home / "logs",
                available=lambda: not node.stopping,
            )
            await nursery.start(node.tensor_server.run)
        discovery = NodeDiscovery(cfg, mesh, node.version)
        node.discovery = discovery if discovery.active else None
        if node.discovery is not None:
            await nursery.start(node.discovery.run)

    def _switch(self, invite: InviteToken) -> None:
        """The new mesh's credentials, in the home and in the node; its services built."""
        node = self.node
        save_credentials(node.config.home, invite.credentials, invite.bootstrap)
        node.credentials, node.bootstrap, node.new_mesh = (
            invite.credentials,
            invite.bootstrap,
            False,
        )
        node.tensor_server = None
        node.discovery = None
        self.open(invite.credentials, invite.bootstrap)
        node._notify()

    async def join(self, token: str) -> dict[str, Any]:
        """Leave this mesh for the one of invite ``token``, if the join rule allows it
        (``_join``) and a node of that mesh answers; return once a node of it admitted
        this one (or ``SETTLE_TIMEOUT`` passed).

        ``InviteError`` for a token that cannot be read; ``JoinRefusedError`` with the
        reason otherwise, in which case this node stays where it was.
        """
        node = self.node
        invite = InviteToken.decode(token)
        target = invite.credentials.mesh_id
        self._check(target)
        previous = node.credentials.mesh_id
        self.joining = True
        switched = trio.Event()
        try:
            if not await mesh_answers(invite):
                raise JoinRefusedError(
                    f"no node of mesh {target} answered at the invite's addresses within "
                    f"{PROBE_TIMEOUT:.0f} s; this node stays in mesh {previous}",
                    "mesh_unreachable",
                )
            self._check(target, joining=False)  # things may have changed while probing
            self._send.send_nowait((invite, switched))
        except BaseException:
            self.joining = False
            raise
        while not switched.is_set():
            if node.stopping:
                raise MeshError("the node stopped before it finished joining")
            await node.wait_change()  # the switch notifies, and so does a stop
        with trio.move_on_after(SETTLE_TIMEOUT):
            while node.mesh is not None and not node.mesh.members:
                await node.wait_change()
        mesh = node.mesh
        return {
            "mesh_id": target,
            "previous_mesh_id": previous,
            "members": len(mesh.members) if mesh is not None else 0,
        }

    def _check(self, target: str, *, joining: bool | None = None) -> None:
        now = situation(self.node)
        if joining is not None:
            now = dataclasses.replace(now, joining=joining)
        refusal = join_refusal(now, target)
        if refusal is not None:
            raise refusal
