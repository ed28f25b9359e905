"""One interop check's outcome, shared by the mesh and transport check modules."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Check:
    """``check`` names what was tried (``dial``, ``auth``, ``gossip`` ...), ``transport``
    where (``tcp``, ``quic`` or ``-`` for checks without one), ``ok`` the verdict and
    ``detail`` one line a person can act on when it failed (or a measurement when not)."""

    check: str
    transport: str
    ok: bool
    detail: str = ""
