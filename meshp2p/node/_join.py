"""When a running node may leave its mesh for another (``POST /api/join``): the rule,
pure, and the reading of a node it is applied to.

The rule: a node joins another mesh only when nobody depends on it, because
leaving breaks whatever others get from it. It is refused (one line saying why
and what to do) while it

- is stopping, or already joining;
- publishes its mesh's listing on Nostr (``--publish``): it would go on to publish
  the other mesh's invite token, which its owner may never have meant to make public;
- lends memory to another host's split (that model would stop), or runs a model
  split over other nodes (they would stop holding its layers);
- serves a model while its mesh has other members (gossiping nodes or passive
  clients using it): restart it with ``--standby`` first, or stop it and start it
  with ``--join``;
- has API requests in flight through it (their answers would be cut).

Everything else may go: a node alone in its mesh (its models come along and are
served to the new mesh), a standby node, a passive client. The token's mesh must
answer (one of its nodes proves membership) before this node leaves its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from .._errors import JoinRefusedError
from .._sizes import format_size
from ..mesh._invite import InviteToken
from ..mesh._service import MeshService
from ..transport._host import addrs_by_peer

if TYPE_CHECKING:
    from ._node import Node

#: The invited mesh must let us dial and authenticate within this long.
PROBE_TIMEOUT = 10.0
_PROBE_LISTEN = ("/ip4/127.0.0.1/udp/0/quic-v1", "/ip4/127.0.0.1/tcp/0")


@dataclass(frozen=True)
class JoinSituation:
    """What the join rule looks at, read off a running node."""

    mesh_id: str
    stopping: bool = False
    joining: bool = False
    #: --publish: this node lists its mesh, invite token included, on Nostr.
    publishing: bool = False
    #: (host id, bytes) for each host whose split this node lends memory to.
    lending: tuple[tuple[str, int], ...] = ()
    #: (model, number of workers) for each model this node runs split over others.
    splits: tuple[tuple[str, int], ...] = ()
    #: Models this node serves (in any state).
    serving: tuple[str, ...] = ()
    #: Other members of the current mesh: gossiping nodes and connected clients.
    others: int = 0
    #: API requests in flight through this node.
    inflight: int = 0


def join_refusal(now: JoinSituation, target_mesh: str) -> JoinRefusedError | None:
    """Why a node in ``now`` may not join mesh ``target_mesh``; None if it may."""
    if now.stopping:
        return JoinRefusedError("this node is stopping; start it with --join TOKEN instead")
    if now.joining:
        return JoinRefusedError("this node is already joining a mesh; wait for it to finish")
    if target_mesh == now.mesh_id:
        return JoinRefusedError(f"this node is already in mesh {target_mesh}", "same_mesh")
    if now.publishing:
        return JoinRefusedError(
            f"this node lists mesh {now.mesh_id} on Nostr (--publish), and would go on to "
            "publish the other mesh's invite token; restart it without --publish to join"
        )
    if now.lending:
        host, memory = now.lending[0]
        return JoinRefusedError(
            f"this node lends {format_size(memory) if memory else 'memory'} to the split "
            f"of host {_short(host)}, "
            "whose model would stop; join once that host no longer uses it"
        )
    if now.splits:
        model, workers = now.splits[0]
        return JoinRefusedError(
            f"this node runs {model} split over {workers} other node"
            f"{'' if workers == 1 else 's'} of mesh {now.mesh_id}; leaving would stop it"
        )
    if now.serving and now.others:
        models = ", ".join(now.serving)
        return JoinRefusedError(
            f"this node serves {models} to the {now.others} other node"
            f"{'' if now.others == 1 else 's'} of mesh {now.mesh_id}; restart it with "
            "--standby first, or stop it and start it with --join TOKEN"
        )
    if now.inflight:
        return JoinRefusedError(
            f"{now.inflight} API request{'' if now.inflight == 1 else 's'} "
            f"{'is' if now.inflight == 1 else 'are'} in flight through this node; "
            "join when they have finished"
        )
    return None


def situation(node: Node) -> JoinSituation:
    """The join rule's input, read off ``node`` now."""
    mesh = node.mesh
    others: set[str] = set()
    if mesh is not None:
        others.update(p.id for p in mesh.view() if p.id != node.node_id)
        # Passive clients do not gossip: they are members with an open connection.
        connected = {c["peer"] for c in mesh.connections()}
        others.update(p.to_base58() for p in mesh.members if p.to_base58() in connected)
    if node.table is not None:
        others.update(h.node_id for h in node.table.hosts)
    others.discard(node.node_id)
    # An RPC server per host using this node's memory; one idle for 15 s stops.
    server = node.tensor_server
    lending = tuple((s["host"], int(s["memory"] or 0)) for s in (server.status() if server else []))
    splits = tuple(
        (w.model_id, len(node.plans[w.model_id].workers) if w.model_id in node.plans else 0)
        for w in node.workers
        if w.launch is not None and w.launch.info.get("mode") == "split"
    )
    router = node.router
    return JoinSituation(
        mesh_id=node.credentials.mesh_id,
        stopping=node.stopping,
        joining=node.membership.joining,
        publishing=node.config.publish,
        lending=lending,
        splits=splits,
        serving=tuple(w.model_id for w in node.workers),
        others=len(others),
        inflight=sum(router.inflight.values()) if router is not None else 0,
    )


async def mesh_answers(token: InviteToken, within: float = PROBE_TIMEOUT) -> bool:
    """Whether a node of the token's mesh lets us in ``within`` seconds: dial its
    addresses and prove membership on ``/mesh/auth``, as a passive client with a
    throwaway identity."""
    probe = MeshService(create_new_key_pair(), token.credentials, listen=_PROBE_LISTEN, client=True)
    answered = False
    async with trio.open_nursery() as nursery:
        await nursery.start(probe.run)
        with trio.move_on_after(within):
            for peer, addrs in addrs_by_peer(token.bootstrap).items():
                if await probe.connect(peer, addrs):
                    answered = True
                    # Hang up cleanly, or the node would count us as a client for a while.
                    with trio.move_on_after(2.0):
                        await probe.host.disconnect(peer)
                    break
        nursery.cancel_scope.cancel()
    return answered


def _short(node_id: str) -> str:
    return node_id[-8:]
