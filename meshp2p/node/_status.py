"""What a node says of itself on ``/api/status`` and ``/api/providers/<model>``."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import trio

from ..mesh._kad import on_disk_key, served_key
from ..planner._demand import view_demand
from ..tensor._placement import PlacementPlan

if TYPE_CHECKING:
    from ._node import Node


def node_status(node: Node) -> dict[str, Any]:
    """What ``/api/status`` says of a node: its identity, models, mesh, peers,
    connections, placements and splits, discovery, demand and the planner."""
    mesh = node.mesh
    return {
        "node_id": node.node_id,
        "version": node.version,
        "api_url": node.api_url,
        "console_url": node.console_url,
        "home": str(node.config.home),
        "uptime_s": round(time.time() - node.started, 1),
        "role": node.local_state().role,
        "models_served": [w.status() for w in node.workers],
        # Per model, through this node's API: in flight now, resumed elsewhere since start.
        "requests": node.router.requests_status() if node.router else {},
        "mesh_id": node.credentials.mesh_id,
        "invite_token": mesh.invite_token() if mesh else None,
        "addrs": list(mesh.addrs) if mesh else [],
        "peers": _peers_status(node),
        "connections": mesh.connections() if mesh else [],
        "rejected": list(mesh.rejections) if mesh else [],
        "gossip": {**mesh.counters, "sent_by_kind": mesh.sent_by_kind} if mesh else {},
        "kad": {
            "protocol": str(mesh.kad.protocol_id),
            "routing_table_size": mesh.kad.routing_table_size,
        }
        if mesh and mesh.kad
        else None,
        "placements": [_plan_status(p) for p in node.plans.values()],
        "split": next(
            (_plan_status(p) for p in node.plans.values() if p.mode == "split" and p.fits),
            None,
        ),
        "tunnels": [t.status() for ts in node.tunnels.values() for t in ts],
        "lending": node.tensor_server.status() if node.tensor_server else [],
        # Since start, over all hosts: streams, refused, bytes each way, by reference.
        "lending_totals": dict(node.tensor_server.counters) if node.tensor_server else {},
        "discovery": node.discovery.status() if node.discovery else None,
        "demand": {
            "local": node.demand.rates(trio.current_time()),
            "mesh": view_demand(mesh.view()) if mesh else {},
        },
        "planner": node.planner.status() if node.planner else None,
    }


async def mesh_providers(node: Node, model_id: str) -> dict[str, Any]:
    """Who the mesh DHT says serves ``model_id``, and who holds its file."""

    if node.mesh is None:
        return {"model": model_id, "served_by": [], "on_disk": []}
    # The file's hash comes from gossip: whoever holds it announced it.
    sha = next(
        (m.sha256 for p in node.mesh.view() for m in p.models_on_disk if m.name == model_id),
        None,
    )
    return {
        "model": model_id,
        "served_by": await node.mesh.providers(served_key(model_id)),
        "on_disk": await node.mesh.providers(on_disk_key(sha)) if sha else [],
    }


def _peers_status(node: Node) -> list[dict[str, Any]]:
    if node.table is not None:
        return [
            {
                "id": h.node_id,
                "addrs": list(h.addrs),
                "role": "host",
                "models_served": list(h.models),
                "inflight": h.inflight,
            }
            for h in node.table.hosts
        ]
    return node.mesh.peers_status(trio.current_time()) if node.mesh else []


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
