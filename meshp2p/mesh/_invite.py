"""Mesh membership credentials: the mesh id and secret a node keeps, and invite tokens.

An invite token is ``mp1.`` followed by the unpadded base64url encoding of one
CBOR map ``{"v": 1, "m": mesh id (8 bytes), "s": secret (32 bytes), "a": [binary
multiaddrs with /p2p/ ids]}``. Unlike the reference system's tokens it carries
the mesh secret: knowing a node's addresses is not enough to join.
"""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

import cbor2
from multiaddr import Multiaddr

from .._errors import ConfigError, MeshError
from .._private_files import read_private, write_private

TOKEN_PREFIX = "mp1."
TOKEN_VERSION = 1
MESH_FILE = "mesh.json"
SECRET_BYTES = 32
MESH_ID_BYTES = 8
_MAX_TOKEN = 8192
_MAX_ADDRS = 32


class InviteError(MeshError):
    """An invite token cannot be read."""


@dataclass(frozen=True)
class MeshCredentials:
    """Which mesh a node belongs to, and the secret that proves it."""

    mesh_id: str  # 16 hex digits
    secret: bytes  # 32 bytes; never leaves the node except inside invite tokens

    @classmethod
    def new(cls) -> MeshCredentials:
        return cls(secrets.token_bytes(MESH_ID_BYTES).hex(), secrets.token_bytes(SECRET_BYTES))

    def __repr__(self) -> str:  # keep the secret out of logs and tracebacks
        return f"MeshCredentials(mesh_id={self.mesh_id!r}, secret=<hidden>)"


@dataclass(frozen=True)
class InviteToken:
    credentials: MeshCredentials
    bootstrap: tuple[str, ...]  # multiaddrs ending in /p2p/<peer id>

    def encode(self) -> str:
        body = {
            "v": TOKEN_VERSION,
            "m": bytes.fromhex(self.credentials.mesh_id),
            "s": self.credentials.secret,
            "a": [Multiaddr(a).to_bytes() for a in self.bootstrap],
        }
        raw = cbor2.dumps(body, canonical=True)
        return TOKEN_PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    @classmethod
    def decode(cls, token: str) -> InviteToken:
        token = token.strip()
        if len(token) > _MAX_TOKEN:
            raise InviteError(f"invite token is too long ({len(token)} characters)")
        if not token.startswith(TOKEN_PREFIX):
            raise InviteError(
                f"invite token must start with {TOKEN_PREFIX!r}; copy the whole line after "
                "'invite: ' from the node that invites you"
            )
        payload = token[len(TOKEN_PREFIX) :]
        try:
            raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
            body = cbor2.loads(raw)
        except Exception:  # binascii, cbor2 and tag decoders raise many kinds
            raise InviteError(
                "invite token is damaged (not base64url CBOR); copy it again"
            ) from None
        if not isinstance(body, dict):
            raise InviteError("invite token is damaged (not a map); copy it again")
        version = body.get("v")
        if version != TOKEN_VERSION:
            raise InviteError(
                f"invite token version {version!r} is not supported (this node reads version "
                f"{TOKEN_VERSION}); upgrade meshp2p"
            )
        mesh_id, secret, addrs = body.get("m"), body.get("s"), body.get("a")
        if not isinstance(mesh_id, bytes) or len(mesh_id) != MESH_ID_BYTES:
            raise InviteError("invite token has no valid mesh id")
        if not isinstance(secret, bytes) or len(secret) != SECRET_BYTES:
            raise InviteError("invite token has no valid mesh secret")
        if not isinstance(addrs, list) or not addrs or len(addrs) > _MAX_ADDRS:
            raise InviteError("invite token lists no node addresses to join through")
        bootstrap: list[str] = []
        for item in addrs:
            try:
                addr = str(Multiaddr(item))
            except Exception:
                raise InviteError("invite token holds an unreadable address") from None
            if "/p2p/" not in addr:
                raise InviteError(f"invite token address {addr} has no /p2p/ peer id")
            bootstrap.append(addr)
        return cls(MeshCredentials(mesh_id.hex(), secret), tuple(bootstrap))


def load_credentials(home: Path) -> MeshCredentials | None:
    """The mesh this home belongs to, or None if it never started or joined one."""
    path = home / MESH_FILE
    if not path.exists():
        return None
    raw = read_private(path)  # it holds the mesh secret
    try:
        data = json.loads(raw)
        creds = MeshCredentials(str(data["mesh_id"]), bytes.fromhex(data["secret"]))
    except (ValueError, KeyError, TypeError):
        raise ConfigError(
            f"{path} is damaged; move it away to start or join a mesh afresh"
        ) from None
    if len(creds.secret) != SECRET_BYTES or len(bytes.fromhex(creds.mesh_id)) != MESH_ID_BYTES:
        raise ConfigError(f"{path} is damaged; move it away to start or join a mesh afresh")
    return creds


def stored_bootstrap(home: Path) -> tuple[str, ...]:
    """The addresses this home last joined its mesh through (empty if it started it)."""
    try:
        data = json.loads((home / MESH_FILE).read_text())
    except (OSError, ValueError):
        return ()
    addrs = data.get("bootstrap", []) if isinstance(data, dict) else []
    return tuple(a for a in addrs if isinstance(a, str))


def save_credentials(home: Path, creds: MeshCredentials, bootstrap: tuple[str, ...]) -> None:
    """Keep the mesh id, secret and join addresses in ``home/mesh.json`` (mode 0600)."""
    record = {"mesh_id": creds.mesh_id, "secret": creds.secret.hex(), "bootstrap": list(bootstrap)}
    write_private(home / MESH_FILE, json.dumps(record).encode())
