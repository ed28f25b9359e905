"""meshp2p: pool the GPUs and CPUs of many machines into one peer-to-peer LLM inference mesh.

    import trio, meshp2p

    async def main():
        async with trio.open_nursery() as nursery:
            node = await nursery.start(meshp2p.Node(meshp2p.NodeConfig()).run)
            await node.wait_ready()  # its models are loaded
            print(node.api_url)  # an OpenAI-compatible API
            node.stop()

Everything importable from this package root is public; modules whose names
start with ``_`` may change without notice.
"""

from ._auth import AuthResult, Challenge, Hello, Proof
from ._errors import (
    ChecksumError,
    ConfigError,
    DownloadError,
    MeshError,
    ModelError,
    ModelNotFoundError,
    PortInUseError,
    ProtocolError,
    WorkerError,
)
from ._gossip import (
    Announce,
    Announcement,
    Dead,
    Digest,
    Leaving,
    MeshView,
    PeerInfo,
    Want,
)
from ._invite import InviteError, InviteToken, MeshCredentials
from ._mesh import MeshService
from ._node import DEFAULT_API_PORT, DEFAULT_CONSOLE_PORT, Node, NodeConfig
from ._sizes import format_size, parse_size

__all__ = [
    "DEFAULT_API_PORT",
    "DEFAULT_CONSOLE_PORT",
    "Announce",
    "Announcement",
    "AuthResult",
    "Challenge",
    "ChecksumError",
    "ConfigError",
    "Dead",
    "Digest",
    "DownloadError",
    "Hello",
    "InviteError",
    "InviteToken",
    "Leaving",
    "MeshCredentials",
    "MeshError",
    "MeshService",
    "MeshView",
    "ModelError",
    "ModelNotFoundError",
    "Node",
    "NodeConfig",
    "PeerInfo",
    "PortInUseError",
    "Proof",
    "ProtocolError",
    "Want",
    "WorkerError",
    "format_size",
    "parse_size",
]
