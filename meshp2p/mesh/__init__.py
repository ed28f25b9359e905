"""The mesh: membership by a shared secret, gossip, and a Kademlia scoped to the mesh.

- ``/mesh/auth/1.0.0`` (sans-I/O core: ``AuthInitiator``, ``AuthResponder``): a
  peer proves it holds the mesh secret, without sending it, before any other
  ``/mesh/*`` stream is served to it.
- ``/mesh/gossip/1.0.0`` (core: ``MeshState`` and the message records): signed
  announcements, digests as heartbeat, wants, deaths and leavings; ``MeshView``
  is an immutable snapshot of the mesh. In a mesh of more than 16 nodes the
  heartbeat is a ``Summary`` or, while views agree, a one-hash ``Tick``, and demand
  travels as push-sum shares (``PushSum``, ``DemandShare``) instead of every node's
  announced rates.
- ``MeshService``: the trio driver of both on a libp2p host (its own, or an
  app's via ``MeshService.on_host``), with the mesh-scoped DHT (``MeshKad``).
- ``InviteToken``, ``MeshCredentials``: who may join, and where to dial.
"""

from ._auth import PROTOCOL_ID as AUTH_PROTOCOL_ID
from ._auth import (
    AuthInitiator,
    AuthResponder,
    AuthResult,
    AuthState,
    Challenge,
    Hello,
    Proof,
)
from ._gossip import PROTOCOL_ID as GOSSIP_PROTOCOL_ID
from ._gossip import (
    Announce,
    Announcement,
    Dead,
    DemandShare,
    Digest,
    Leaving,
    ModelFile,
    Summary,
    Tick,
    Want,
)
from ._invite import InviteError, InviteToken, MeshCredentials
from ._kad import MeshKad, on_disk_key, served_key
from ._pushsum import PushSum
from ._service import LocalState, MeshService
from ._state import MeshState, MeshView, PeerInfo

__all__ = [
    "AUTH_PROTOCOL_ID",
    "GOSSIP_PROTOCOL_ID",
    "Announce",
    "Announcement",
    "AuthInitiator",
    "AuthResponder",
    "AuthResult",
    "AuthState",
    "Challenge",
    "Dead",
    "DemandShare",
    "Digest",
    "Hello",
    "InviteError",
    "InviteToken",
    "Leaving",
    "LocalState",
    "MeshCredentials",
    "MeshKad",
    "MeshService",
    "MeshState",
    "MeshView",
    "ModelFile",
    "PeerInfo",
    "Proof",
    "PushSum",
    "Summary",
    "Tick",
    "Want",
    "on_disk_key",
    "served_key",
]
