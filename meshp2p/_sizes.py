"""Parsing and printing of byte sizes such as ``150MB`` or ``8GiB``."""

from __future__ import annotations

import re
from decimal import Decimal

from ._errors import ConfigError

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """Return the number of bytes in ``text`` (``"150MB"``, ``"8GiB"``, ``"1024"``).

    Decimal units (kB, MB, GB, TB) are powers of 1000, binary units (KiB, MiB,
    GiB, TiB) powers of 1024, as in IEC 80000-13.
    """
    match = _SIZE_RE.match(text)
    if match is None:
        raise ConfigError(f"invalid size {text!r}; use a number with a unit such as 150MB or 8GiB")
    number, unit = match.groups()
    factor = _UNITS.get(unit.lower())
    if factor is None:
        raise ConfigError(
            f"unknown size unit {unit!r} in {text!r}; use B, kB, MB, GB, TB, KiB, MiB, GiB or TiB"
        )
    # Decimal, not float: "2.01kB" is 2010 bytes, and float arithmetic makes it 2009.
    value = int(Decimal(number) * factor)
    if value <= 0:
        raise ConfigError(f"size {text!r} must be at least one byte")
    return value


def format_size(n: int) -> str:
    """Return ``n`` bytes as a short human string (``"253.1 MB"``)."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        text = f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        # Compare what is printed, so 999_950 bytes reads "1.0 MB", not "1000.0 kB".
        if abs(float(text.split()[0])) < 1000 or unit == "TB":
            return text
        value /= 1000
    raise AssertionError("unreachable")
