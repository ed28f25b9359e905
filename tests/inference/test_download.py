"""Tests of the resumable, verified downloader against a real loopback HTTP server."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from meshp2p._errors import ChecksumError, DownloadError
from meshp2p.inference._download import download, part_path
from meshp2p.inference._progress import ProgressBar, ProgressFactory, quiet_progress


@dataclass
class ServerState:
    """What the test server serves and how it misbehaves; every field can change mid-test."""

    files: dict[str, bytes] = field(default_factory=dict)
    # Send this many body bytes of the next response, then drop the connection (once).
    drop_after: int | None = None
    ignore_range: bool = False
    # path -> value of an X-Linked-Etag header sent on a 302 to "/cdn" + path (as Hugging Face).
    linked_etag: dict[str, str] = field(default_factory=dict)
    etag: dict[str, str] = field(default_factory=dict)
    stall_s: float = 0.0
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        state = self.server.state
        state.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        if self.path in state.linked_etag:
            self.send_response(302)
            self.send_header("Location", "/cdn" + self.path)
            self.send_header("X-Linked-Etag", state.linked_etag[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path = self.path.removeprefix("/cdn")
        data = state.files.get(path)
        if data is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = 0
        range_header = self.headers.get("Range")
        if range_header and not state.ignore_range:
            start = int(range_header.removeprefix("bytes=").rstrip("-"))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        if path in state.etag:
            self.send_header("ETag", state.etag[path])
        self.end_headers()
        if state.stall_s:
            time.sleep(state.stall_s)
        if state.drop_after is not None:
            cut, state.drop_after = state.drop_after, None
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, state: ServerState) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients that time out or give up leave broken pipes behind; that is the point.
        pass


@dataclass
class Loopback:
    state: ServerState
    base_url: str

    def url(self, path: str) -> str:
        return self.base_url + path


@pytest.fixture
def server() -> Iterator[Loopback]:
    state = ServerState()
    httpd = _Server(state)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield Loopback(state, f"http://127.0.0.1:{httpd.server_address[1]}")
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _payload(n: int = 1_500_000) -> bytes:
    # Not a repeating pattern, so a misplaced byte range changes the digest.
    return b"GGUF" + hashlib.shake_256(b"meshp2p").digest(n - 4)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_full_download_writes_verified_file_and_creates_parents(
    server: Loopback, tmp_path: Path
) -> None:
    data = _payload()
    server.state.files["/m.gguf"] = data
    dest = tmp_path / "a" / "b" / "m.gguf"

    result = download(server.url("/m.gguf"), dest, size=len(data), sha256=_sha(data))

    assert result == dest
    assert dest.read_bytes() == data
    assert not part_path(dest).exists()
    assert "range" not in server.state.requests[0][1]


def test_resume_after_dropped_connection_sends_range_and_is_byte_identical(
    server: Loopback, tmp_path: Path
) -> None:
    data = _payload()
    server.state.files["/m.gguf"] = data
    server.state.drop_after = 400_000
    dest = tmp_path / "m.gguf"

    with pytest.raises(DownloadError, match="run again to resume"):
        download(server.url("/m.gguf"), dest, size=len(data), sha256=_sha(data))
    partial = part_path(dest).stat().st_size
    assert 0 < partial < len(data)
    assert not dest.exists()

    download(server.url("/m.gguf"), dest, size=len(data), sha256=_sha(data))

    assert server.state.requests[-1][1].get("range") == f"bytes={partial}-"
    assert dest.read_bytes() == data
    assert not part_path(dest).exists()


def test_server_ignoring_range_restarts_from_zero(server: Loopback, tmp_path: Path) -> None:
    data = _payload()
    server.state.files["/m.gguf"] = data
    server.state.ignore_range = True
    dest = tmp_path / "m.gguf"
    # A wrong prefix proves the 200 body replaced the part instead of being appended to it.
    part_path(dest).write_bytes(b"X" * 1000)

    download(server.url("/m.gguf"), dest, size=len(data), sha256=_sha(data))

    assert server.state.requests[0][1].get("range") == "bytes=1000-"
    assert dest.read_bytes() == data


def test_complete_part_is_committed_after_416(server: Loopback, tmp_path: Path) -> None:
    data = _payload(10_000)
    server.state.files["/m.gguf"] = data
    dest = tmp_path / "m.gguf"
    part_path(dest).write_bytes(data)

    # No size given, so the downloader must ask; the server answers 416 for a full part.
    download(server.url("/m.gguf"), dest, sha256=_sha(data))

    assert server.state.requests[0][1].get("range") == f"bytes={len(data)}-"
    assert dest.read_bytes() == data


def test_part_longer_than_remote_file_restarts(server: Loopback, tmp_path: Path) -> None:
    data = _payload(10_000)
    server.state.files["/m.gguf"] = data
    dest = tmp_path / "m.gguf"
    part_path(dest).write_bytes(b"Y" * 20_000)

    download(server.url("/m.gguf"), dest, sha256=_sha(data))

    assert dest.read_bytes() == data
    assert "range" not in server.state.requests[-1][1]


def test_complete_part_with_known_size_needs_no_request(server: Loopback, tmp_path: Path) -> None:
    data = _payload(10_000)
    dest = tmp_path / "m.gguf"
    part_path(dest).write_bytes(data)

    download(server.url("/m.gguf"), dest, size=len(data), sha256=_sha(data))

    assert dest.read_bytes() == data
    assert server.state.requests == []


def test_checksum_mismatch_deletes_everything(server: Loopback, tmp_path: Path) -> None:
    data = _payload()
    server.state.files["/m.gguf"] = data
    dest = tmp_path / "m.gguf"
    wrong = "0" * 64

    with pytest.raises(ChecksumError) as info:
        download(server.url("/m.gguf"), dest, size=len(data), sha256=wrong)

    message = str(info.value)
    assert "\n" not in message
    assert wrong in message and _sha(data) in message
    assert not dest.exists()
    assert not part_path(dest).exists()


def test_404_is_a_download_error(server: Loopback, tmp_path: Path) -> None:
    dest = tmp_path / "m.gguf"
    with pytest.raises(DownloadError, match="HTTP 404") as info:
        download(server.url("/missing.gguf"), dest, sha256="a" * 64)
    assert "\n" not in str(info.value)
    assert not dest.exists()


def test_no_checksum_known_is_refused(server: Loopback, tmp_path: Path) -> None:
    server.state.files["/m.gguf"] = _payload(10_000)
    dest = tmp_path / "m.gguf"
    # An md5-looking ETag is not a sha256 and must not be trusted as one.
    server.state.etag["/m.gguf"] = '"0123456789abcdef0123456789abcdef"'

    with pytest.raises(DownloadError, match="no sha256 is known"):
        download(server.url("/m.gguf"), dest)
    assert not dest.exists()


def test_x_linked_etag_on_redirect_supplies_the_checksum(server: Loopback, tmp_path: Path) -> None:
    data = _payload()
    server.state.files["/m.gguf"] = data
    server.state.linked_etag["/m.gguf"] = f'"{_sha(data)}"'
    dest = tmp_path / "m.gguf"

    download(server.url("/m.gguf"), dest)

    assert dest.read_bytes() == data
    assert [path for path, _ in server.state.requests] == ["/m.gguf", "/cdn/m.gguf"]


def test_wrong_x_linked_etag_fails_verification(server: Loopback, tmp_path: Path) -> None:
    data = _payload(10_000)
    server.state.files["/m.gguf"] = data
    server.state.linked_etag["/m.gguf"] = "f" * 64
    dest = tmp_path / "m.gguf"

    with pytest.raises(ChecksumError):
        download(server.url("/m.gguf"), dest)
    assert not dest.exists()


def test_sha256_etag_supplies_the_checksum(server: Loopback, tmp_path: Path) -> None:
    data = _payload(10_000)
    server.state.files["/m.gguf"] = data
    server.state.etag["/m.gguf"] = f'W/"{_sha(data).upper()}"'
    dest = tmp_path / "m.gguf"

    download(server.url("/m.gguf"), dest)

    assert dest.read_bytes() == data


def test_size_mismatch_is_refused_before_download(server: Loopback, tmp_path: Path) -> None:
    data = _payload(10_000)
    server.state.files["/m.gguf"] = data
    dest = tmp_path / "m.gguf"

    with pytest.raises(DownloadError, match="10000 bytes but 9999 were expected"):
        download(server.url("/m.gguf"), dest, size=9999, sha256=_sha(data))
    assert not dest.exists()


def test_connection_refused_is_a_download_error(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port any more.
    with pytest.raises(DownloadError, match="cannot download") as info:
        download(f"http://127.0.0.1:{port}/m.gguf", tmp_path / "m.gguf", sha256="a" * 64)
    assert "\n" not in str(info.value)


def test_stalled_read_times_out_and_keeps_part(server: Loopback, tmp_path: Path) -> None:
    data = _payload(10_000)
    server.state.files["/m.gguf"] = data
    server.state.stall_s = 3.0
    dest = tmp_path / "m.gguf"

    started = time.monotonic()
    with pytest.raises(DownloadError):
        download(server.url("/m.gguf"), dest, sha256=_sha(data), timeout=0.5)
    assert time.monotonic() - started < 2.5
    assert not dest.exists()
    assert part_path(dest).exists()


def test_progress_factory_sees_every_byte(server: Loopback, tmp_path: Path) -> None:
    data = _payload()
    server.state.files["/m.gguf"] = data
    bars: list[ProgressBar] = []

    def factory(label: str, total: int | None) -> ProgressBar:
        bar = quiet_progress(label, total)
        bars.append(bar)
        return bar

    progress: ProgressFactory = factory
    download(server.url("/m.gguf"), tmp_path / "m.gguf", sha256=_sha(data), progress=progress)

    assert len(bars) == 1
    assert bars[0].label == "m.gguf"
    assert bars[0].total == len(data)
    assert bars[0].done == len(data)


def test_progress_bar_in_a_log_prints_at_most_one_line_per_ten_percent() -> None:
    stream = io.StringIO()
    with ProgressBar("model", 1000, stream) as bar:
        for _ in range(1000):
            bar.update(1)
    lines = stream.getvalue().splitlines()
    assert 2 <= len(lines) <= 11
    assert lines[-1].startswith("model: 100%")
    assert "\r" not in stream.getvalue()


def test_progress_bar_on_a_tty_redraws_one_line() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    bar = ProgressBar("model", 10_000_000, stream)
    for _ in range(100):
        bar.update(100_000)
    bar.close()
    bar.close()
    text = stream.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    # Rate-limited to ~10 redraws a second: a fast loop draws once, plus the final draw.
    assert 1 <= text.count("\r") <= 3
    assert "100%" in text and "10.0 MB" in text and "MB/s" in text


def test_progress_bar_without_total_prints_once_at_close() -> None:
    stream = io.StringIO()
    with ProgressBar("stream", None, stream) as bar:
        bar.update(5_000_000)
    assert stream.getvalue().count("\n") == 1
    assert "5.0 MB" in stream.getvalue()


def test_quiet_progress_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with quiet_progress("x", 10) as bar:
        bar.update(10)
    captured = capsys.readouterr()
    assert captured.out == captured.err == ""
    assert bar.done == 10


def test_partial_file_is_not_visible_under_dest_name(server: Loopback, tmp_path: Path) -> None:
    data = _payload()
    server.state.files["/m.gguf"] = data
    server.state.drop_after = 100_000
    dest = tmp_path / "m.gguf"
    with pytest.raises(DownloadError):
        download(server.url("/m.gguf"), dest, sha256=_sha(data))
    assert sorted(os.listdir(tmp_path)) == ["m.gguf.part"]
