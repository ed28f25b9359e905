"""Routing of API requests across the mesh: who serves what, and who answers this one.

``RequestRouter`` joins the node's own workers with the remote hosts it knows
(from gossip on a full node, from a routing table on a passive client), counts
requests in flight per host, and orders the hosts for each request with the
pure rule in ``_routing``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from ..api._openai import ApiError, model_not_found
from ..inference._worker import InferenceWorker
from ._routing import Candidate, order_hosts
from ._upstream import LocalUpstream, RemoteFactory, Upstream

#: A model whose hosts all vanished answers 503 (not 404) for this long.
RECENTLY_SERVED_S = 600.0
#: A host that failed goes to the back of the line for 5 s, doubling on each
#: further failure up to 60 s (Petals bans failed servers the same way).
PENALTY_START_S = 5.0
PENALTY_MAX_S = 60.0


Pending = tuple[str, list[str]]
"""A model nobody serves yet: its canonical name, and the nodes loading it."""


@dataclass(frozen=True)
class RemoteHost:
    node_id: str
    models: tuple[str, ...]
    rtt_ms: float | None


class RequestRouter:
    def __init__(
        self,
        node_id: str,
        workers: Callable[[], Sequence[InferenceWorker]],
        remote_hosts: Callable[[], Sequence[RemoteHost]],
        remote: RemoteFactory,
        http: httpx.AsyncClient,
        on_host_failure: Callable[[str], None] = lambda _node_id: None,
        prefix_affinity: bool = True,
        pending: Callable[[str], Pending | None] = lambda _model: None,
        on_request: Callable[[str], None] = lambda _model: None,
    ) -> None:
        self.node_id = node_id
        self.workers = workers
        self.remote_hosts = remote_hosts
        self.remote = remote
        self.http = http
        self.on_host_failure = on_host_failure
        self.prefix_affinity = prefix_affinity
        #: For a model nobody serves: None if no catalog or disk knows it, else its
        #: canonical name and the nodes loading it.
        self.pending = pending
        #: Called with the canonical name of every known model a request asks for
        #: (demand; names nobody knows are not counted).
        self.on_request = on_request
        self.inflight: Counter[str] = Counter()
        #: Per model: requests this node's API has open, and those it resumed on
        #: another host after theirs broke off (mid-stream failover).
        self.model_inflight: Counter[str] = Counter()
        self.resumed: Counter[str] = Counter()
        self._last_served: dict[str, float] = {}
        self._penalties: dict[str, tuple[float, float]] = {}  # node -> (until, length)

    def host_failed(self, node_id: str) -> None:
        """``node_id`` failed a request: try it last for a while."""
        _, length = self._penalties.get(node_id, (0.0, PENALTY_START_S / 2))
        length = min(length * 2, PENALTY_MAX_S)
        self._penalties[node_id] = (time.monotonic() + length, length)
        self.on_host_failure(node_id)

    def host_ok(self, node_id: str) -> None:
        self._penalties.pop(node_id, None)

    def _penalized(self, node_id: str) -> bool:
        until = self._penalties.get(node_id, (0.0, 0.0))[0]
        return until > time.monotonic()

    def models(self, remote_hosts: Sequence[RemoteHost] | None = None) -> dict[str, dict[str, Any]]:
        """Every model the mesh serves: its hosts, and this node's worker state if any."""
        out: dict[str, dict[str, Any]] = {}
        for worker in self.workers():
            out[worker.model_id] = {"nodes": [self.node_id], "state": worker.state}
        for host in self.remote_hosts() if remote_hosts is None else remote_hosts:
            for model in host.models:
                entry = out.setdefault(model, {"nodes": [], "state": "ready"})
                entry["nodes"].append(host.node_id)
        now = time.monotonic()
        for model, entry in out.items():
            if entry["state"] == "ready":
                self._last_served[model] = now
        return out

    def ready(self, model: str | None = None) -> bool:
        """Whether a request for ``model`` has a ready host now (this node or another);
        with no model named, whether the mesh serves any model at all."""
        known = self.models()
        if model is None:
            return any(self._has_ready_host(entry) for entry in known.values())
        canonical = self._canonical(model, known)
        return canonical is not None and self._has_ready_host(known[canonical])

    def _has_ready_host(self, entry: Mapping[str, Any]) -> bool:
        return entry["state"] == "ready" or any(n != self.node_id for n in entry["nodes"])

    def _canonical(self, model: str, known: Mapping[str, Any]) -> str | None:
        if model in known:
            return model
        folded = [m for m in known if m.lower() == model.lower()]
        return folded[0] if len(folded) == 1 else None

    def tools_supported(self, model: str) -> bool:
        """Whether the model's chat template takes tools itself (else its worker emulates
        them). Known for our own workers; a remote host checks for itself."""
        for worker in self.workers():
            if worker.model_id.lower() == model.lower():
                return bool(worker.info.get("tools_supported"))
        return True

    def plan(self, model: str, affinity: bytes | None) -> tuple[str, list[Upstream]]:
        """The model's canonical id and the upstreams to try, in order.

        ApiError 404 when no node serves the model (listing those that are served),
        503 when its hosts are loading, restarting or just went away.
        """
        hosts = self.remote_hosts()  # one snapshot of the mesh for the whole decision
        known = self.models(hosts)
        canonical = self._canonical(model, known)
        if canonical is None:
            waiting = self.pending(model)
            if waiting is not None:
                name, loading = waiting
                self.on_request(name)
                if loading:
                    message = (
                        f"model {name!r} is loading on node {loading[0]}; retry in a few seconds"
                    )
                else:
                    message = (
                        f"model {name!r} has no host yet: a node on standby takes a model "
                        "with demand at its next planning round; retry shortly"
                    )
                raise ApiError(
                    503,
                    message,
                    type="server_error",
                    code="model_loading" if loading else "model_unavailable",
                    headers={"retry-after": "10" if loading else "30"},
                )
            seen = self._canonical(model, self._last_served)
            if seen is not None and time.monotonic() - self._last_served[seen] < RECENTLY_SERVED_S:
                raise ApiError(
                    503,
                    f"model {seen!r} has no host right now (its hosts left or died); retry shortly",
                    type="server_error",
                    code="model_unavailable",
                    headers={"retry-after": "5"},
                )
            raise model_not_found(model, sorted(known))
        self.on_request(canonical)
        local = next((w for w in self.workers() if w.model_id == canonical), None)
        candidates: list[Candidate] = []
        if local is not None and local.state == "ready":
            candidates.append(
                Candidate(
                    self.node_id,
                    self.inflight[self.node_id],
                    0.0,
                    True,
                    self._penalized(self.node_id),
                )
            )
        remotes = {h.node_id: h for h in hosts if canonical in h.models}
        candidates.extend(
            Candidate(
                h.node_id, self.inflight[h.node_id], h.rtt_ms, False, self._penalized(h.node_id)
            )
            for h in remotes.values()
        )
        if not candidates:
            reason = local.unavailable_reason() if local is not None else "no host is ready"
            raise ApiError(
                503,
                reason,
                type="server_error",
                code="model_unavailable",
                headers={"retry-after": "5"},
            )
        ordered = order_hosts(candidates, affinity if self.prefix_affinity else None)
        several = len(ordered) > 1
        upstreams: list[Upstream] = []
        for candidate in ordered:
            if candidate.local and local is not None:
                upstreams.append(
                    LocalUpstream(local, self.http, self.node_id, retry_on_busy=several)
                )
            else:
                upstreams.append(self.remote(candidate.node_id))
        return canonical, upstreams

    @contextmanager
    def track(self, node_id: str) -> Iterator[None]:
        """Count a request in flight to ``node_id`` for as long as it runs."""
        self.inflight[node_id] += 1
        try:
            yield
        finally:
            self.inflight[node_id] -= 1
            if self.inflight[node_id] <= 0:
                del self.inflight[node_id]

    @contextmanager
    def answering(self, model: str) -> Iterator[None]:
        """Count a request for ``model`` in flight through this node's API."""
        self.model_inflight[model] += 1
        try:
            yield
        finally:
            self.model_inflight[model] -= 1
            if self.model_inflight[model] <= 0:
                del self.model_inflight[model]

    def requests_status(self) -> dict[str, dict[str, int]]:
        """Per model: ``in_flight`` through this node's API now, and ``resumed`` since
        start (answers that went on on another host when theirs broke off)."""
        models = sorted(set(self.model_inflight) | set(self.resumed))
        return {
            m: {"in_flight": self.model_inflight[m], "resumed": self.resumed[m]} for m in models
        }
