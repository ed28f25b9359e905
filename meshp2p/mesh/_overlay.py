"""Which members a node keeps gossip links to: a bounded overlay. Pure.

With a link to every member, gossip costs grow with the square of the mesh. A node
instead links to the ``DEGREE`` members whose rendezvous hash with it is lowest
(stable as members come and go, spread evenly: close to a random regular graph,
connected with overwhelming probability), and accepts links from whoever chose it;
announcements flood over these links, so a change reaches every node in a few hops.
In a mesh of at most ``DEGREE + 1`` nodes this is every member, as before.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

DEGREE = 8
#: Up to this many members, heartbeats carry full digests (as every version did);
#: above, a 16-hash Summary, answered with digests of the buckets that differ.
FULL_DIGEST_NODES = 16


def link_rank(me: str, other: str) -> bytes:
    return hashlib.sha256(f"{me}|{other}".encode()).digest()


def overlay_targets(members: Iterable[str], me: str, degree: int = DEGREE) -> list[str]:
    """The members ``me`` links to, best first."""
    others = [m for m in members if m != me]
    return sorted(others, key=lambda m: link_rank(me, m))[:degree]
