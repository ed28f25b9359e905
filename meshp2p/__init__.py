"""meshp2p: pool the GPUs and CPUs of many machines into one peer-to-peer LLM inference mesh.

    import trio, meshp2p

    async def main():
        async with trio.open_nursery() as nursery:
            node = await nursery.start(meshp2p.Node(meshp2p.NodeConfig()).run)
            await node.wait_ready()  # its models are loaded
            print(node.api_url)  # an OpenAI-compatible API
            node.stop()

The package root gives a whole node and the errors; each layer is a package of
its own, usable without a ``Node`` (``docs/library.md``):

- ``meshp2p.transport``: a libp2p host built as a node builds it; framing.
- ``meshp2p.mesh``: ``/mesh/auth`` and ``/mesh/gossip`` membership, the mesh DHT.
- ``meshp2p.route``: ``/mesh/route``, OpenAI requests between nodes.
- ``meshp2p.tensor``: ``/mesh/rpc-tensor``, splitting a model over nodes.
- ``meshp2p.inference``: models on disk, llama.cpp workers.
- ``meshp2p.api``: the OpenAI gateway and the console.
- ``meshp2p.node``: the composition root.

Names in a package's ``__all__`` are public; modules whose names start with
``_`` may change without notice.
"""

from ._errors import (
    ChecksumError,
    ConfigError,
    DownloadError,
    JoinRefusedError,
    MeshError,
    ModelError,
    ModelNotFoundError,
    PortInUseError,
    ProtocolError,
    WorkerError,
)
from ._sizes import format_size, parse_size
from .node import DEFAULT_API_PORT, DEFAULT_CONSOLE_PORT, HomeInUseError, Node, NodeConfig

__all__ = [
    "DEFAULT_API_PORT",
    "DEFAULT_CONSOLE_PORT",
    "ChecksumError",
    "ConfigError",
    "DownloadError",
    "HomeInUseError",
    "JoinRefusedError",
    "MeshError",
    "ModelError",
    "ModelNotFoundError",
    "Node",
    "NodeConfig",
    "PortInUseError",
    "ProtocolError",
    "WorkerError",
    "format_size",
    "parse_size",
]
