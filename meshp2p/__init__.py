"""meshp2p: pool the GPUs and CPUs of many machines into one peer-to-peer LLM inference mesh.

    import trio, meshp2p

    async def main():
        async with trio.open_nursery() as nursery:
            node = await nursery.start(meshp2p.Node(meshp2p.NodeConfig()).run)
            print(node.api_url)  # an OpenAI-compatible API

Everything importable from this package root is public; modules whose names
start with ``_`` may change without notice.
"""

from ._errors import (
    ChecksumError,
    ConfigError,
    DownloadError,
    MeshError,
    ModelError,
    ModelNotFoundError,
    PortInUseError,
    WorkerError,
)
from ._node import DEFAULT_API_PORT, DEFAULT_CONSOLE_PORT, Node, NodeConfig
from ._sizes import format_size, parse_size

__all__ = [
    "DEFAULT_API_PORT",
    "DEFAULT_CONSOLE_PORT",
    "ChecksumError",
    "ConfigError",
    "DownloadError",
    "MeshError",
    "ModelError",
    "ModelNotFoundError",
    "Node",
    "NodeConfig",
    "PortInUseError",
    "WorkerError",
    "format_size",
    "parse_size",
]
