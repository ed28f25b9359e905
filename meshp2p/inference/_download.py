"""Fetch one file over HTTP(S) into place: resumable, sha256-verified, atomically renamed.

Nothing reaches ``dest`` unless its sha256 is known and matches.
"""

from __future__ import annotations

import hashlib
import os
import re
from io import BufferedWriter
from pathlib import Path
from typing import Protocol

import httpx

from .._errors import ChecksumError, DownloadError
from .._sizes import format_size
from ._progress import ProgressBar, ProgressFactory, quiet_progress

_CHUNK = 1 << 20
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
_UNSATISFIED_RANGE = re.compile(r"^\s*bytes\s+\*/(\d+)\s*$", re.IGNORECASE)
# Each attempt either finishes or throws away a .part the server would not continue;
# three covers "resume refused" followed by one clean start.
_MAX_ATTEMPTS = 3


def part_path(dest: Path) -> Path:
    """Where ``download`` keeps the unfinished file for ``dest``."""
    return dest.with_suffix(dest.suffix + ".part")


def download(
    url: str,
    dest: Path,
    *,
    size: int | None = None,
    sha256: str | None = None,
    progress: ProgressFactory | None = None,
    timeout: float = 30.0,
    transport: httpx.BaseTransport | None = None,
) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``.

    ``size`` and ``sha256`` are the expected byte count and digest. Without
    ``sha256`` a 64-hex digest in the server's ``X-Linked-Etag`` or ``ETag``
    header is used (Hugging Face sends one for LFS files); with neither the
    download is refused. An interrupted download resumes from its ``.part``
    file on the next call.
    """
    expected = sha256.strip().lower() if sha256 is not None else None
    if expected is not None and not _HEX64.match(expected):
        raise DownloadError(f"invalid sha256 {sha256!r} for {url}; it must be 64 hex digits")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    make_bar = quiet_progress if progress is None else progress

    # A .part completed by an earlier run that died before the rename needs no network.
    if size is not None and expected is not None and _file_size(part) == size:
        _verify_and_commit(url, part, dest, _hash_file(part), expected)
        return dest

    client = httpx.Client(
        follow_redirects=True,
        timeout=httpx.Timeout(timeout),
        transport=transport,
        # Model files do not compress, and a decoded body would not match Content-Length.
        headers={"Accept-Encoding": "identity", "User-Agent": "meshp2p"},
    )
    with client:
        for _attempt in range(_MAX_ATTEMPTS):
            outcome = _attempt_once(client, url, part, size, expected, make_bar, dest.name)
            if outcome is not None:
                actual, wanted = outcome
                _verify_and_commit(url, part, dest, actual, wanted)
                return dest
    raise DownloadError(f"download of {url} restarted {_MAX_ATTEMPTS} times; try again later")


def commit_part(part: Path, dest: Path) -> None:
    """Make the finished ``part`` durable and rename it to ``dest`` in one atomic step."""
    with part.open("rb+") as f:
        os.fsync(f.fileno())
    os.replace(part, dest)
    # The rename itself is only durable once the directory entry is flushed.
    try:
        fd = os.open(dest.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _attempt_once(
    client: httpx.Client,
    url: str,
    part: Path,
    size: int | None,
    expected: str | None,
    make_bar: ProgressFactory,
    label: str,
) -> tuple[str, str] | None:
    """One GET. Returns (actual digest, expected digest), or None to start again from zero."""
    offset = _file_size(part)
    if size is not None and offset > size:
        part.unlink()
        offset = 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        with client.stream("GET", url, headers=headers) as response:
            status = response.status_code
            if status == 416:
                return _on_range_not_satisfiable(response, part, offset, expected)
            if status not in (200, 206):
                raise DownloadError(_status_message(url, response))
            total: int | None
            if status == 206:
                start, total = _content_range(response)
                if start != offset:
                    part.unlink(missing_ok=True)
                    return None
            else:
                # The server ignored the Range header and sends the whole file: start over.
                offset = 0
                total = _content_length(response)
            wanted = expected if expected is not None else server_sha256(response)
            if wanted is None:
                raise DownloadError(
                    f"no sha256 is known for {url}: none was given and the server sent none; "
                    "refusing to use unverified model weights, add the sha256 to the catalog"
                )
            if size is not None and total is not None and total != size:
                raise DownloadError(
                    f"{url} is {total} bytes but {size} were expected; "
                    "the file on the server changed, check the catalog entry"
                )
            total = size if size is not None else total
            actual = _receive(response, url, part, offset, total, make_bar, label)
            return actual, wanted
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise DownloadError(
            f"cannot download {url}: {_one_line(exc)}; check the network and run again to resume"
        ) from exc


def _receive(
    response: httpx.Response,
    url: str,
    part: Path,
    offset: int,
    total: int | None,
    make_bar: ProgressFactory,
    label: str,
) -> str:
    """Append the body to ``part`` (after ``offset`` bytes) and return the whole file's digest."""
    hasher = hashlib.sha256()
    if offset:
        # The digest covers the whole file, so the bytes from earlier runs are hashed again.
        _hash_into(hasher, part)
    received = offset
    bar: ProgressBar
    with make_bar(label, total) as bar, _open_part(part, append=offset > 0) as f:
        bar.update(offset)
        try:
            # No chunk_size: httpx would hold up to that much in memory and lose it on a drop.
            for chunk in response.iter_bytes():
                f.write(chunk)
                hasher.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        except httpx.HTTPError as exc:
            raise DownloadError(
                f"download of {url} was interrupted after {format_size(received)}: "
                f"{_one_line(exc)}; run again to resume"
            ) from exc
        except OSError as exc:
            raise DownloadError(
                f"cannot write {part}: {exc.strerror or exc}; check free disk space"
            ) from exc
    if total is not None and received < total:
        raise DownloadError(
            f"download of {url} ended after {received} of {total} bytes; run again to resume"
        )
    if total is not None and received > total:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"{url} sent {received} bytes but {total} were expected; "
            "the file on the server changed, check the catalog entry"
        )
    return hasher.hexdigest()


def _on_range_not_satisfiable(
    response: httpx.Response, part: Path, offset: int, expected: str | None
) -> tuple[str, str] | None:
    """416: the .part may already hold the whole file; otherwise start over."""
    match = _UNSATISFIED_RANGE.match(response.headers.get("content-range", ""))
    wanted = expected if expected is not None else server_sha256(response)
    if match is not None and int(match.group(1)) == offset and wanted is not None:
        return _hash_file(part), wanted
    part.unlink(missing_ok=True)
    return None


def _verify_and_commit(url: str, part: Path, dest: Path, actual: str, expected: str) -> None:
    if actual != expected:
        part.unlink(missing_ok=True)
        raise ChecksumError(
            f"sha256 mismatch for {dest.name} from {url}: expected {expected}, got {actual}; "
            "the download was deleted, try again or fix the catalog entry"
        )
    commit_part(part, dest)


def server_sha256(response: httpx.Response) -> str | None:
    """The sha256 the server (or a redirect before it) states for the file, if any.

    Hugging Face puts the LFS sha256 in ``X-Linked-Etag`` on the redirect to
    its CDN; plain servers may use a sha256 as ``ETag``. Other ETags (md5,
    git sha1, opaque strings) are not 64 hex digits and are ignored.
    """
    chain = [response, *reversed(response.history)]
    for header in ("x-linked-etag", "etag"):
        for hop in chain:
            raw: str | None = hop.headers.get(header)
            if raw is None:
                continue
            value = raw.strip()
            if value.startswith("W/"):
                value = value[2:]
            value = value.strip('"').lower()
            if _HEX64.match(value):
                return value
    return None


def _content_range(response: httpx.Response) -> tuple[int, int | None]:
    match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
    if match is None:
        # A 206 without a usable Content-Range cannot be placed; -1 forces a restart.
        return -1, None
    total = match.group(3)
    return int(match.group(1)), None if total == "*" else int(total)


def _content_length(response: httpx.Response) -> int | None:
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    value = response.headers.get("content-length")
    if encoding != "identity" or value is None or not value.strip().isdigit():
        return None
    return int(value)


def _status_message(url: str, response: httpx.Response) -> str:
    status = response.status_code
    if status == 404:
        hint = "the file is not on the server, check the model name and catalog URL"
    elif status in (401, 403):
        hint = "the server refused access; the repository may be gated or private"
    elif status >= 500:
        hint = "the server failed, try again later"
    else:
        hint = "check the URL"
    return f"download of {url} failed: HTTP {status} {response.reason_phrase}; {hint}"


def _open_part(part: Path, *, append: bool) -> BufferedWriter:
    try:
        return part.open("ab" if append else "wb")
    except OSError as exc:
        raise DownloadError(f"cannot write {part}: {exc.strerror or exc}") from exc


class _Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...


def _hash_into(hasher: _Hasher, path: Path) -> None:
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            hasher.update(block)


def _hash_file(path: Path) -> str:
    hasher = hashlib.sha256()
    _hash_into(hasher, path)
    return hasher.hexdigest()


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
