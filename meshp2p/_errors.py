"""The one exception hierarchy of meshp2p: every error a caller can expect is a MeshError."""

from __future__ import annotations


class MeshError(Exception):
    """Base class of every error meshp2p raises on purpose.

    Its message is one line a person can act on.
    """


class ConfigError(MeshError):
    """A setting, flag or size string is invalid."""


class ModelError(MeshError):
    """A model cannot be found, fetched, verified or loaded."""


class ModelNotFoundError(ModelError):
    """The named model is neither a file, in the model store, nor in the catalog."""


class ChecksumError(ModelError):
    """A model file's sha256 does not match the expected value."""


class DownloadError(ModelError):
    """A model download failed (network, HTTP status, size)."""


class WorkerError(MeshError):
    """An inference worker child process failed to start or died."""


class PortInUseError(MeshError):
    """A port the node must listen on is already taken."""


class ProtocolError(MeshError):
    """A peer sent a malformed or hostile frame; the stream it came on must be closed."""


class JoinRefusedError(MeshError):
    """A running node cannot join another mesh now; the message says why and what to do.

    ``code`` tells the cases apart: ``join_refused`` (others depend on this node, or it
    is stopping, or already joining), ``same_mesh``, ``mesh_unreachable`` (no node of
    the invited mesh answered; this node stayed where it was).
    """

    def __init__(self, message: str, code: str = "join_refused") -> None:
        super().__init__(message)
        self.code = code
