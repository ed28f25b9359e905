"""A node acting on the planner: every ``--plan-interval`` (and soon after the mesh
changes) it asks ``meshp2p.planner.plan`` what to serve, and takes a model on
(from its disk, else the catalog) or gives one up."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from ..inference._models import ModelFile, ModelStore, load_catalog
from ..inference._worker import InferenceWorker
from ..mesh._state import MeshView
from ..planner._planner import DEFAULT_PARAMS, Decision, NodeState, PlannerParams, plan

log = logging.getLogger("meshp2p.node")

#: After a change of the mesh, plan again this soon (not at every announcement).
CHANGE_DELAY_S = 2.0


@dataclass
class PlannerReport:
    decision: Decision
    at: float


class ModelPlanner:
    """Runs the planner for one node and carries out its decisions."""

    def __init__(
        self,
        node_id: str,
        store: ModelStore,
        view: Callable[[], MeshView],
        workers: Callable[[], Sequence[InferenceWorker]],
        add_worker: Callable[[ModelFile], Awaitable[None]],
        remove_worker: Callable[[str], Awaitable[None]],
        *,
        pinned: bool,
        interval: float,
        params: PlannerParams = DEFAULT_PARAMS,
    ) -> None:
        self.node_id = node_id
        self.store = store
        self.view = view
        self.workers = workers
        self.add_worker = add_worker
        self.remove_worker = remove_worker
        self.pinned = pinned
        self.interval = interval
        self.params = params
        self.since = 0.0
        #: Models being fetched (downloaded or checked) before their worker starts.
        self.fetching: set[str] = set()
        self.last: PlannerReport | None = None
        self._catalog = {e.name: e.size for e in load_catalog().values()}
        self._changed = trio.Event()

    def mesh_changed(self) -> None:
        self._changed.set()

    def status(self) -> dict[str, Any]:
        last = self.last
        return {
            "interval_s": self.interval,
            "pinned": self.pinned,
            "fetching": sorted(self.fetching),
            "decision": None
            if last is None
            else {
                "action": last.decision.action,
                "model": last.decision.model,
                "release": last.decision.release,
                "reason": last.decision.reason,
                "at": last.at,
            },
        }

    def known(self, model: str) -> str | None:
        """The canonical name of a model the catalog or some node's disk knows."""
        names = set(self._catalog)
        names.update(m.name for p in self.view() for m in p.models_on_disk)
        if model in names:
            return model
        folded = [n for n in names if n.lower() == model.lower()]
        return folded[0] if len(folded) == 1 else None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.since = trio.current_time()
        task_status.started()
        while True:
            with trio.move_on_after(self.interval):
                await self._changed.wait()
                await trio.sleep(CHANGE_DELAY_S)  # let a burst of changes settle
            self._changed = trio.Event()
            await self.round()

    async def round(self) -> Decision:
        own = (*(w.model_id for w in self.workers()), *sorted(self.fetching))
        state = NodeState(pinned=self.pinned, since=self.since, models=own)
        decision = plan(
            self.view(), self.node_id, trio.current_time(), state, self._catalog, self.params
        )
        previous = self.last.decision if self.last else None
        self.last = PlannerReport(decision, time.time())
        if decision != previous:
            log.info("planner: %s %s (%s)", decision.action, decision.model or "", decision.reason)
        if decision.action == "stay" or decision.model is None:
            return decision
        if decision.release is not None:
            log.warning(
                "giving up %s to serve %s: %s", decision.release, decision.model, decision.reason
            )
            await self.remove_worker(decision.release)
        await self._take(decision.model)
        return decision

    async def _take(self, model: str) -> None:
        self.fetching.add(model)
        try:
            log.warning("taking on %s: %s", model, self.last.decision.reason if self.last else "")
            file = await trio.to_thread.run_sync(self.store.resolve, model)
            await self.add_worker(file)
            self.since = trio.current_time()
        except Exception as exc:  # a failed download or a bad file: say so, plan again
            log.warning("could not take on %s: %s", model, exc)
        finally:
            self.fetching.discard(model)
