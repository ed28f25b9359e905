"""The console's web page: files shipped in the package (``meshp2p/api/console/``), served
with headers that keep the page to its own origin: no other site may frame it, and it
may load or contact nothing but the console itself."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from ._asgi import Send

#: Everything the page may load or contact is the console itself; nothing inline runs.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
}

#: URL path -> file in meshp2p/api/console/.
PAGES = {
    "/": "index.html",
    "/index.html": "index.html",
    "/app.js": "app.js",
    "/style.css": "style.css",
    "/favicon.svg": "favicon.svg",
}


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    content_type: bytes
    etag: bytes


def load_page() -> dict[str, StaticFile]:
    """The page's files by URL path, read once from the installed package."""
    folder = resources.files(__package__ or "meshp2p.api") / "console"
    files: dict[str, StaticFile] = {}
    for path, name in PAGES.items():
        body = (folder / name).read_bytes()
        suffix = name[name.rfind(".") :]
        etag = b'"' + hashlib.sha256(body).hexdigest()[:16].encode() + b'"'
        files[path] = StaticFile(body, _TYPES[suffix], etag)
    return files


async def send_static(
    send: Send, file: StaticFile, if_none_match: bytes | None, *, head: bool = False
) -> None:
    """Answer with ``file`` (304 when the browser holds this version)."""
    fresh = if_none_match is not None and file.etag in if_none_match
    headers = [
        (b"content-type", file.content_type),
        (b"etag", file.etag),
        # Revalidate every time: a node upgraded in place serves its new page at once.
        (b"cache-control", b"no-cache"),
        (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"no-referrer"),
    ]
    if not fresh:
        headers.append((b"content-length", str(len(file.body)).encode()))
    await send({"type": "http.response.start", "status": 304 if fresh else 200, "headers": headers})
    body = b"" if fresh or head else file.body
    await send({"type": "http.response.body", "body": body})
