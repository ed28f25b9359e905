"""What the console shows of a node: ``Node.status()`` plus what its page draws from,
the mesh's models, this node's memory split, the passive clients it serves, requests
in flight and each local model's queue."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx
import trio

if TYPE_CHECKING:
    from ._node import Node

#: A worker that does not say how busy it is within this long is shown without it.
HEALTH_TIMEOUT = 0.5


async def console_status(node: Node) -> dict[str, Any]:
    """``/api/status`` as the console serves it (and its event stream sends it)."""
    status = node.status()
    local = node.local_state()
    lent = node.tensor_server.lent_bytes if node.tensor_server is not None else 0
    # A passive client offers no memory to the mesh.
    status["memory"] = (
        None
        if node.config.client
        else {
            "total": local.memory_total,
            "models": max(0, local.memory_total - local.memory_free - lent),
            "lent": lent,
            "free": local.memory_free,
        }
    )
    status["clients"] = _clients(node, status)
    router = node.router
    # Requests this node's API has in flight, by the node answering them.
    status["inflight"] = dict(router.inflight) if router is not None else {}
    queues = await _queues(node)
    for served in status["models_served"]:
        served.update(queues.get(served["id"], {}))
    models = router.models() if router is not None else {}
    status["models"] = [
        {
            "id": model,
            "state": entry["state"],
            "nodes": list(entry["nodes"]),
            **queues.get(model, {}),
        }
        for model, entry in sorted(models.items())
    ]
    status["joining"] = node.membership.joining
    # Set once the API takes keys (--api-key): the page then asks for one.
    status["api_key_required"] = bool(getattr(node.config, "api_keys", None))
    return status


def _clients(node: Node, status: dict[str, Any]) -> list[dict[str, Any]]:
    """Passive clients using this node: members with a connection that do not gossip."""
    mesh = node.mesh
    if mesh is None or node.table is not None:
        return []
    gossiping = {p["id"] for p in status["peers"]} | {node.node_id}
    transports = {c["peer"]: c["transport"] for c in status["connections"]}
    return [
        {"id": peer_id, "role": "client", "transport": transports[peer_id]}
        for peer_id in sorted({p.to_base58() for p in mesh.members})
        if peer_id in transports and peer_id not in gossiping
    ]


async def _queues(node: Node) -> dict[str, dict[str, int]]:
    """Per local model: requests being answered and waiting (from any node)."""
    out: dict[str, dict[str, int]] = {}
    http = getattr(node, "http", None)
    if http is None:
        return out

    async def ask(model: str, url: str) -> None:
        try:
            with trio.move_on_after(HEALTH_TIMEOUT):
                reply = (await http.get(url + "/health")).json()
                out[model] = {"busy": int(reply["busy"]), "waiting": int(reply["waiting"])}
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            pass

    async with trio.open_nursery() as nursery:
        for worker in node.workers:
            if worker.base_url is not None:
                nursery.start_soon(ask, worker.model_id, worker.base_url)
    return out
