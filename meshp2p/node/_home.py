"""A node's home directory: one node at a time, and what it served last.

The home holds the node's key, its mesh, its models and logs. Two nodes on one
home would share one node id, so a node holds ``node.lock`` (an advisory
``flock``, released by the kernel however the process ends) while it lives.
``node.json`` remembers the models the node served, so a restart serves them
again without naming them.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from .._errors import ConfigError

LOCK_FILE = "node.lock"
STATE_FILE = "node.json"


class HomeInUseError(ConfigError):
    """Another running node holds this home."""


class HomeLock:
    """Holds ``home/node.lock`` until ``release`` (or until the process ends)."""

    def __init__(self, home: Path) -> None:
        self._fd: int | None = None
        home.mkdir(parents=True, exist_ok=True)
        self.path = home / LOCK_FILE
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise HomeInUseError(
                f"home {home} is in use by another meshp2p node (process {holder}); "
                "stop it, or give this node its own home with --home DIR"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __del__(self) -> None:
        self.release()


def remembered_models(home: Path) -> list[str] | None:
    """The model files this home's node served when it last started; None if unknown."""
    try:
        data = json.loads((home / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        return None
    return models


def remember_models(home: Path, models: list[str]) -> None:
    """Keep the served models' paths in ``home/node.json`` (an empty list: standby)."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / STATE_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"models": models}, indent=1) + "\n")
    os.replace(tmp, path)
