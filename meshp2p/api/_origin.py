"""Which requests the console answers: those addressed to itself, from itself.

Any web page open in the same browser can send requests to ``127.0.0.1:3131``
(a form post, a ``fetch`` in ``no-cors`` mode), and a DNS-rebinding page can
even read the answers, under a name of its own that it makes resolve to
127.0.0.1. Both are stopped here, by a pure rule applied to every request:

- ``Host`` must name the address the connection arrived on (the IP literal
  itself, or ``localhost`` for a loopback address) with the console's port. An
  attacker can rebind a name, never an IP literal, so no name but ``localhost``
  passes (``*.localhost`` too: browsers resolve those to loopback themselves).
- ``Origin``, when a request carries one, must be the console's own
  (``http://`` + that ``Host``). Browsers send it on every request that can
  change anything (POST and the like) and on cross-origin reads; a request
  without one is not from a web page (curl, a script), so it passes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable


def split_host(value: str) -> tuple[str, int | None] | None:
    """``host[:port]`` of a Host header (IPv6 in brackets); None if malformed."""
    value = value.strip().lower()
    if not value or any(c in value for c in "/@?#\\ \t"):
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[1:end], value[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else None
    elif value.count(":") == 1:
        host, port_text = value.split(":")
    elif ":" in value:
        return None  # an IPv6 literal without brackets is not a valid Host
    else:
        host, port_text = value, None
    if not host:
        return None
    if port_text is None:
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return None
    return host, int(port_text)


def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An IP address (an IPv4-mapped IPv6 one as IPv4); None if ``text`` is not one."""
    try:
        address = ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def host_refusal(host_header: str | None, server: tuple[str, int] | None) -> str | None:
    """Why a request whose Host is ``host_header`` must not be answered, when it arrived
    on the local address ``server``; None if it may."""
    if server is None:
        return None  # not a socket (an in-process call): nothing to rebind
    local_ip, local_port = parse_ip(server[0]), server[1]
    where = f"{server[0]}:{local_port}"
    if host_header is None:
        return f"a request without a Host header; this console answers at http://{where}"
    parsed = split_host(host_header)
    if parsed is None:
        return "the Host header is malformed"
    name, port = parsed
    if (port or 80) != local_port:
        return f"this console answers at http://{where}, not at {host_header}"
    ip = parse_ip(name)
    if ip is not None:
        if local_ip is not None and ip == local_ip:
            return None
        if local_ip is not None and local_ip.is_loopback and ip.is_loopback:
            return None
    elif (name == "localhost" or name.endswith(".localhost")) and (
        local_ip is not None and local_ip.is_loopback
    ):
        return None
    return (
        f"this console answers at http://{where} (by address, or localhost), not at "
        f"{host_header}: other names are how DNS rebinding gets in"
    )


def origin_refusal(origin: str | None, host_header: str | None) -> str | None:
    """Why a request carrying ``origin`` is not the console's own page; None if it is
    (or if it carries no Origin: not a web page). Check the Host first."""
    if origin is None:
        return None
    if host_header is not None and origin.strip().lower() == f"http://{host_header.lower()}":
        return None
    return f"a request from {origin} (another web site) may not use this console"


def request_refusal(
    headers: Iterable[tuple[bytes, bytes]], server: tuple[str, int] | None
) -> str | None:
    """The console's rule for one request: why it gets 403, or None.

    The Host is checked on every request (a rebinding page could otherwise read
    ``/api/status``, invite token and mesh secret included); the Origin on every
    request that carries one, which every browser does for requests that change
    anything or spend compute.
    """
    host: str | None = None
    origin: str | None = None
    for name, value in headers:
        if name == b"host" and host is None:
            host = value.decode("latin-1")
        elif name == b"origin" and origin is None:
            origin = value.decode("latin-1")
    return host_refusal(host, server) or origin_refusal(origin, host)
