"""The composition root: a ``Node`` runs the mesh, routing, workers and the APIs.

``NodeConfig`` holds everything a node needs; the CLI builds one from its flags.
"""

from ._config import (
    DEFAULT_API_PORT,
    DEFAULT_CONSOLE_PORT,
    DEFAULT_MAX_TOKENS,
    NodeConfig,
    default_threads,
)
from ._home import HomeInUseError
from ._node import Node

__all__ = [
    "DEFAULT_API_PORT",
    "DEFAULT_CONSOLE_PORT",
    "DEFAULT_MAX_TOKENS",
    "HomeInUseError",
    "Node",
    "NodeConfig",
    "default_threads",
]
