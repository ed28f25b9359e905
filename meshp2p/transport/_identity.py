"""A node's libp2p identity: an Ed25519 key made once and kept in the node's home."""

from __future__ import annotations

import os
from pathlib import Path

from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.serialization import deserialize_private_key
from libp2p.peer.id import ID

from .._errors import ConfigError

KEY_FILE = "node.key"


def load_or_create_key(home: Path) -> KeyPair:
    """The node's key pair from ``home/node.key``, created (mode 0600) on first use.

    The file holds the libp2p protobuf encoding of the private key, the same
    format other libp2p implementations write, so the peer id is stable across
    restarts and portable.
    """
    path = home / KEY_FILE
    if path.exists():
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise ConfigError(
                f"{path} is readable by other users (mode {mode:o}); run: chmod 600 {path}"
            )
        try:
            private = deserialize_private_key(path.read_bytes())
        except Exception as exc:
            raise ConfigError(
                f"{path} is not a libp2p private key ({exc}); move it away to make a new identity"
            ) from None
        return KeyPair(private, private.get_public_key())
    home.mkdir(parents=True, exist_ok=True)
    pair = create_new_key_pair()
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pair.private_key.serialize())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return pair


def peer_id(pair: KeyPair) -> str:
    """The base58 peer id (``12D3KooW...``) of a key pair."""
    return str(ID.from_pubkey(pair.public_key).to_base58())
