"""/mesh/auth/1.0.0 core: both peers prove they hold the mesh secret, bound to their peer ids.

A sans-I/O pair of state machines (AuthInitiator, AuthResponder); see protocols/auth.md.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .._errors import ProtocolError
from ..transport._wire import (
    TYPE_KEY,
    bool_field,
    bytes_field,
    message_type,
    text_field,
    uint_field,
)

PROTOCOL_ID = "/mesh/auth/1.0.0"
AUTH_VERSION = 1
"""The MAC construction in use; a peer offering another one is refused."""

MAX_FRAME = 1024
"""Auth messages are tiny; a small limit keeps an unauthenticated peer from costing memory."""

SECRET_LEN = 32
NONCE_LEN = 32
MAC_LEN = 32
MAX_MESH_ID_LEN = 128
MAX_REASON_LEN = 128

RESPONDER_LABEL = b"meshp2p/auth/v1 responder"
INITIATOR_LABEL = b"meshp2p/auth/v1 initiator"


class AuthState(enum.Enum):
    IDLE = "idle"
    HELLO_SENT = "hello_sent"
    CHALLENGE_SENT = "challenge_sent"
    PROOF_SENT = "proof_sent"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class Hello:
    """Initiator → responder: which mesh it wants to join, and its fresh nonce."""

    mesh_id: str
    nonce: bytes
    v: int = AUTH_VERSION

    def to_map(self) -> dict[str, Any]:
        return {TYPE_KEY: "hello", "v": self.v, "mesh_id": self.mesh_id, "nonce": self.nonce}


@dataclass(frozen=True)
class Challenge:
    """Responder → initiator: its fresh nonce and its proof of the secret."""

    nonce: bytes
    mac: bytes

    def to_map(self) -> dict[str, Any]:
        return {TYPE_KEY: "challenge", "nonce": self.nonce, "mac": self.mac}


@dataclass(frozen=True)
class Proof:
    """Initiator → responder: the initiator's proof of the secret."""

    mac: bytes

    def to_map(self) -> dict[str, Any]:
        return {TYPE_KEY: "proof", "mac": self.mac}


@dataclass(frozen=True)
class AuthResult:
    """Responder → initiator: the verdict; ``reason`` is a short code when ``ok`` is false."""

    ok: bool
    reason: str | None = None

    def to_map(self) -> dict[str, Any]:
        out: dict[str, Any] = {TYPE_KEY: "result", "ok": self.ok}
        if self.reason is not None:
            out["reason"] = self.reason
        return out


AuthMessage = Hello | Challenge | Proof | AuthResult


def parse_auth_message(msg: Mapping[str, Any]) -> AuthMessage:
    """Turn a decoded map into an auth message, ignoring unknown keys; raise ProtocolError."""
    if not isinstance(msg, Mapping):
        raise ProtocolError("an auth message must be a map")
    kind = message_type(msg)
    if kind == "hello":
        return Hello(
            mesh_id=text_field(msg, "mesh_id", max_len=MAX_MESH_ID_LEN),
            nonce=bytes_field(msg, "nonce", min_len=NONCE_LEN, max_len=NONCE_LEN),
            v=uint_field(msg, "v"),
        )
    if kind == "challenge":
        return Challenge(
            nonce=bytes_field(msg, "nonce", min_len=NONCE_LEN, max_len=NONCE_LEN),
            mac=bytes_field(msg, "mac", min_len=MAC_LEN, max_len=MAC_LEN),
        )
    if kind == "proof":
        return Proof(mac=bytes_field(msg, "mac", min_len=MAC_LEN, max_len=MAC_LEN))
    if kind == "result":
        reason = None
        if msg.get("reason") is not None:
            reason = text_field(msg, "reason", max_len=MAX_REASON_LEN)
        return AuthResult(ok=bool_field(msg, "ok"), reason=reason)
    raise ProtocolError(f"unknown auth message type {kind!r}")


def transcript(
    label: bytes,
    mesh_id: str,
    initiator_peer_id: bytes,
    responder_peer_id: bytes,
    nonce_i: bytes,
    nonce_r: bytes,
) -> bytes:
    """The bytes a MAC covers: each part prefixed by its 4-byte big-endian length.

    Length prefixes make the concatenation unambiguous, so no two different sets of
    parts (say a mesh id ending where a peer id begins) can yield the same MAC input.
    """
    parts = (label, mesh_id.encode("utf-8"), initiator_peer_id, responder_peer_id, nonce_i, nonce_r)
    return b"".join(len(part).to_bytes(4, "big") + part for part in parts)


def compute_mac(secret: bytes, message: bytes) -> bytes:
    return hmac.new(secret, message, hashlib.sha256).digest()


class SeenNonces:
    """A bounded memory of nonces already used, shared by the handshakes of one node.

    Fresh nonces on both sides already make an old transcript useless; this also refuses
    a peer that repeats a nonce (a broken RNG or a replay) instead of trusting it.
    """

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._nonces: OrderedDict[bytes, None] = OrderedDict()

    def add(self, nonce: bytes) -> bool:
        """Remember ``nonce``; False if it was already remembered."""
        if nonce in self._nonces:
            return False
        self._nonces[nonce] = None
        while len(self._nonces) > self.capacity:
            self._nonces.popitem(last=False)
        return True

    def __contains__(self, nonce: object) -> bool:
        return nonce in self._nonces

    def __len__(self) -> int:
        return len(self._nonces)


NonceSource = bytes | Callable[[], bytes]


class _Handshake:
    """What both sides share: the secret, the transcript inputs, and failing closed."""

    def __init__(
        self,
        *,
        secret: bytes,
        mesh_id: str,
        local_peer_id: bytes,
        remote_peer_id: bytes,
        nonce: NonceSource,
        seen_nonces: SeenNonces | None = None,
    ) -> None:
        if len(secret) != SECRET_LEN:
            raise ValueError(f"the mesh secret must be {SECRET_LEN} bytes, got {len(secret)}")
        if not 1 <= len(mesh_id) <= MAX_MESH_ID_LEN:
            raise ValueError(f"mesh id must be 1..{MAX_MESH_ID_LEN} characters")
        own_nonce = nonce() if callable(nonce) else nonce
        if len(own_nonce) != NONCE_LEN:
            raise ValueError(f"nonce must be {NONCE_LEN} bytes, got {len(own_nonce)}")
        self._secret = secret
        self.mesh_id = mesh_id
        self.local_peer_id = local_peer_id
        self.remote_peer_id = remote_peer_id
        self.nonce = own_nonce
        self._seen = seen_nonces
        if seen_nonces is not None:
            seen_nonces.add(own_nonce)
        self.state = AuthState.IDLE
        self.reason: str | None = None
        """Why the handshake failed, in one line; None unless state is FAILED."""

    @property
    def peer_verified(self) -> bool:
        """True only once the handshake has completed and the peer proved the secret."""
        return self.state is AuthState.DONE

    def _fresh(self, remote_nonce: bytes) -> bool:
        # Our own nonce coming back means a reflection; a remembered one, a replay.
        if hmac.compare_digest(remote_nonce, self.nonce):
            return False
        return self._seen is None or self._seen.add(remote_nonce)

    def _fail(self, reason: str) -> None:
        self.state = AuthState.FAILED
        self.reason = reason

    @staticmethod
    def _parse(msg: Mapping[str, Any] | AuthMessage) -> AuthMessage:
        if isinstance(msg, Hello | Challenge | Proof | AuthResult):
            return msg
        return parse_auth_message(msg)


class AuthInitiator(_Handshake):
    """The side that opened the stream: sends Hello, checks Challenge, sends Proof."""

    def start(self) -> Hello:
        if self.state is not AuthState.IDLE:
            raise RuntimeError(f"handshake already started (state {self.state.value})")
        self.state = AuthState.HELLO_SENT
        return Hello(mesh_id=self.mesh_id, nonce=self.nonce)

    def receive(self, msg: Mapping[str, Any] | AuthMessage) -> AuthMessage | None:
        """Handle one message from the responder; return the reply to send, if any.

        Never raises for anything the peer sends: a bad message moves the handshake to
        FAILED with ``reason`` set, and the driver closes the stream.
        """
        if self.state is AuthState.FAILED:
            return None
        try:
            parsed = self._parse(msg)
        except ProtocolError as exc:
            self._fail(f"malformed message from responder: {exc}")
            return None
        if isinstance(parsed, AuthResult) and not parsed.ok:
            self._fail(f"responder refused: {parsed.reason or 'no reason given'}")
            return None
        if self.state is AuthState.HELLO_SENT and isinstance(parsed, Challenge):
            return self._on_challenge(parsed)
        if self.state is AuthState.PROOF_SENT and isinstance(parsed, AuthResult):
            self.state = AuthState.DONE
            return None
        self._fail(f"unexpected {type(parsed).__name__} in state {self.state.value}")
        return None

    def _on_challenge(self, challenge: Challenge) -> Proof | None:
        if not self._fresh(challenge.nonce):
            self._fail("responder reused a nonce")
            return None
        expected = compute_mac(self._secret, self._transcript(RESPONDER_LABEL, challenge.nonce))
        if not hmac.compare_digest(expected, challenge.mac):
            self._fail("responder does not hold the mesh secret (bad MAC)")
            return None
        self.state = AuthState.PROOF_SENT
        mac = compute_mac(self._secret, self._transcript(INITIATOR_LABEL, challenge.nonce))
        return Proof(mac=mac)

    def _transcript(self, label: bytes, nonce_r: bytes) -> bytes:
        return transcript(
            label, self.mesh_id, self.local_peer_id, self.remote_peer_id, self.nonce, nonce_r
        )


class AuthResponder(_Handshake):
    """The side that accepted the stream: checks Hello, sends Challenge, checks Proof."""

    # The initiator's nonce, once its Hello arrived.
    _nonce_i: bytes | None = None

    def receive(self, msg: Mapping[str, Any] | AuthMessage) -> AuthMessage | None:
        """Handle one message from the initiator; return the reply to send, if any.

        Never raises for anything the peer sends. On failure the reply is an
        ``AuthResult(ok=False, reason=code)`` (once), and ``reason`` says more locally.
        """
        if self.state is AuthState.FAILED:
            return None
        try:
            parsed = self._parse(msg)
        except ProtocolError as exc:
            return self._refuse("malformed", f"malformed message from initiator: {exc}")
        if self.state is AuthState.IDLE and isinstance(parsed, Hello):
            return self._on_hello(parsed)
        if self.state is AuthState.CHALLENGE_SENT and isinstance(parsed, Proof):
            return self._on_proof(parsed)
        if self.state is AuthState.DONE:
            # The verdict is already sent; a late message is a violation, but saying so
            # would contradict the ok we sent. Fail closed locally.
            self._fail(f"unexpected {type(parsed).__name__} after the handshake")
            return None
        return self._refuse(
            "order", f"unexpected {type(parsed).__name__} in state {self.state.value}"
        )

    def _on_hello(self, hello: Hello) -> AuthMessage:
        if hello.v != AUTH_VERSION:
            return self._refuse("version", f"initiator offers auth version {hello.v}")
        if hello.mesh_id != self.mesh_id:
            return self._refuse(
                "mesh_id", f"initiator wants mesh {hello.mesh_id!r}, this is {self.mesh_id!r}"
            )
        if not self._fresh(hello.nonce):
            return self._refuse("nonce", "initiator reused a nonce")
        self._nonce_i = hello.nonce
        self.state = AuthState.CHALLENGE_SENT
        mac = compute_mac(self._secret, self._transcript(RESPONDER_LABEL))
        return Challenge(nonce=self.nonce, mac=mac)

    def _on_proof(self, proof: Proof) -> AuthResult:
        expected = compute_mac(self._secret, self._transcript(INITIATOR_LABEL))
        if not hmac.compare_digest(expected, proof.mac):
            return self._refuse("mac", "initiator does not hold the mesh secret (bad MAC)")
        self.state = AuthState.DONE
        return AuthResult(ok=True)

    def _refuse(self, code: str, reason: str) -> AuthResult:
        self._fail(reason)
        return AuthResult(ok=False, reason=code)

    def _transcript(self, label: bytes) -> bytes:
        assert self._nonce_i is not None
        return transcript(
            label, self.mesh_id, self.remote_peer_id, self.local_peer_id, self._nonce_i, self.nonce
        )
