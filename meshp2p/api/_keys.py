"""API keys of a node's ``/v1`` API (``--api-key``): which requests carry one; no I/O.

A key arrives as ``Authorization: Bearer KEY`` (OpenAI's clients) or ``x-api-key: KEY``
(Anthropic's). Both sides are hashed before a constant-time comparison, so neither the
key's bytes nor its length show in how long a refusal takes.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable

_KEY = re.compile(r"[\x21-\x7e]+")


def check_key(key: str) -> str:
    """``key`` if it can travel in an HTTP header (visible ASCII, no spaces); else ValueError."""
    if not _KEY.fullmatch(key):
        raise ValueError("an API key is one or more visible ASCII characters, without spaces")
    return key


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


class ApiKeys:
    """The keys a node's API takes; none means it takes requests without one."""

    def __init__(self, keys: Iterable[str] = ()) -> None:
        self._digests = [_digest(check_key(k).encode()) for k in keys]

    @property
    def required(self) -> bool:
        return bool(self._digests)

    def allows(self, headers: Iterable[tuple[bytes, bytes]]) -> bool:
        """Whether the request's headers carry one of the keys (always, when none is set)."""
        if not self._digests:
            return True
        offered: list[bytes] = []
        for name, value in headers:
            name = name.lower()
            if name == b"authorization":
                scheme, _, token = value.strip().partition(b" ")
                if scheme.lower() == b"bearer":
                    offered.append(token.strip())
            elif name == b"x-api-key":
                offered.append(value.strip())
        allowed = False
        for token in offered:
            digest = _digest(token)
            for key in self._digests:
                # No early exit: every comparison runs whatever matched.
                allowed |= hmac.compare_digest(digest, key)
        return allowed
