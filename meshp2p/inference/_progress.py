"""A dependency-free progress bar for long copies and downloads, quiet enough for log files."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

from .._sizes import format_size

# A terminal redraw costs a syscall; ten a second looks smooth and stays cheap.
_TTY_INTERVAL_S = 0.1


class ProgressBar:
    """Shows how many of ``total`` bytes are done.

    On a terminal it redraws one line in place; anywhere else (a log file, a
    pipe, CI) it prints at most one line per 10 % so logs stay short. ``stream``
    defaults to the ``sys.stderr`` of the moment the bar is made, so redirected
    or captured stderr is honoured.
    """

    def __init__(self, label: str, total: int | None, stream: TextIO | None = None) -> None:
        self.label = label
        self.total = total if total is not None and total > 0 else None
        self.done = 0
        self._stream = sys.stderr if stream is None else stream
        self._tty = _isatty(self._stream)
        self._start = time.monotonic()
        self._last_draw = -math.inf
        self._last_width = 0
        self._last_decile = -1
        self._closed = False

    def update(self, n_bytes: int) -> None:
        """Record ``n_bytes`` more bytes as done and redraw if it is time to."""
        self.done += n_bytes
        if self._closed:
            return
        if self._tty:
            now = time.monotonic()
            if now - self._last_draw >= _TTY_INTERVAL_S:
                self._last_draw = now
                self._redraw()
        elif self.total is not None:
            decile = min(10, self.done * 10 // self.total)
            if decile > self._last_decile:
                self._last_decile = decile
                self._write(self._line() + "\n")

    def close(self) -> None:
        """Draw the final state and end the line; calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        if self._tty:
            self._redraw()
            self._write("\n")
        elif self._last_decile < 10:
            # Without a known total nothing was printed yet; with one, say where it stopped.
            self._write(self._line() + "\n")

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _line(self) -> str:
        elapsed = max(time.monotonic() - self._start, 1e-6)
        rate = f"{self.done / elapsed / 1e6:.1f} MB/s"
        if self.total is None:
            return f"{self.label}: {format_size(self.done)} {rate}"
        percent = min(100.0, 100.0 * self.done / self.total)
        return (
            f"{self.label}: {percent:3.0f}% "
            f"{format_size(self.done)} / {format_size(self.total)} {rate}"
        )

    def _redraw(self) -> None:
        line = self._line()
        # Pad with spaces so a shorter line fully covers the previous one.
        self._write("\r" + line.ljust(self._last_width))
        self._last_width = len(line)

    def _write(self, text: str) -> None:
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):
            # A closed or broken stream must never break the copy it reports on.
            pass


class _QuietProgressBar(ProgressBar):
    def _write(self, text: str) -> None:
        pass


ProgressFactory = Callable[[str, int | None], ProgressBar]
"""Makes a progress bar from a label and a total byte count (None when unknown)."""


def quiet_progress(label: str, total: int | None) -> ProgressBar:
    """A ProgressFactory whose bars count bytes but print nothing."""
    return _QuietProgressBar(label, total)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, OSError, ValueError):
        return False
