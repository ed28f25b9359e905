"""Real mesh services in one process, for tests of large-mesh gossip."""

from __future__ import annotations

from collections.abc import Callable

import trio

from meshp2p.mesh import MeshService
from meshp2p.mesh._invite import InviteToken


async def until(condition: Callable[[], bool]) -> None:
    """Wait (the caller bounds it) until ``condition()`` holds."""
    while not condition():  # noqa: ASYNC110 (state without an event to wait on)
        await trio.sleep(0.05)


async def start_mesh(
    nursery: trio.Nursery,
    service: Callable[..., MeshService],
    n: int,
    within: float = 60.0,
) -> list[MeshService]:
    """Start ``service(0)``, then ``service(i, bootstrap)`` for the others, joined
    through the first; return them once every one sees all ``n`` members."""
    founder = service(0)
    await nursery.start(founder.run)
    bootstrap = InviteToken.decode(founder.invite_token()).bootstrap
    services = [founder]
    for i in range(1, n):
        services.append(service(i, bootstrap))
        await nursery.start(services[-1].run)
    with trio.fail_after(within):
        await until(lambda: all(len(s.view()) == n for s in services))
    return services
