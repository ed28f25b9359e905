"""A node's libp2p identity: an Ed25519 key made once and kept in the node's home."""

from __future__ import annotations

from pathlib import Path

from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.serialization import deserialize_private_key
from libp2p.peer.id import ID

from .._errors import ConfigError
from .._private_files import read_private, write_private

KEY_FILE = "node.key"


def load_or_create_key(home: Path) -> KeyPair:
    """The node's key pair from ``home/node.key``, created (mode 0600) on first use.

    The file holds the libp2p protobuf encoding of the private key, the same
    format other libp2p implementations write, so the peer id is stable across
    restarts and portable.
    """
    path = home / KEY_FILE
    if path.exists():
        data = read_private(path)
        try:
            private = deserialize_private_key(data)
        except Exception as exc:
            raise ConfigError(
                f"{path} is not a libp2p private key ({exc}); move it away to make a new identity"
            ) from None
        return KeyPair(private, private.get_public_key())
    pair = create_new_key_pair()
    write_private(path, pair.private_key.serialize())
    return pair


def peer_id(pair: KeyPair) -> str:
    """The base58 peer id (``12D3KooW...``) of a key pair."""
    return str(ID.from_pubkey(pair.public_key).to_base58())
