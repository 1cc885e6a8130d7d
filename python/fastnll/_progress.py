"""A tiny progress bar for long reads: bytes done, rate and ETA on one stderr line.

It stays silent unless asked (``enabled=True``) or, by default (``enabled=None``), when the
stream is a terminal; even then nothing is drawn before ``delay`` seconds have passed, so
short jobs print nothing.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["Progress", "format_bytes", "format_duration"]


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def format_duration(seconds: float) -> str:
    """75 -> '1:15', 3725 -> '1:02:05'."""
    if math.isnan(seconds) or seconds == float("inf"):
        return "?"
    s = round(seconds)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """``with Progress(total_bytes, "eval") as bar: bar.advance(n)``."""

    def __init__(
        self,
        total: int,
        label: str = "",
        *,
        enabled: bool | None = None,
        stream: TextIO | None = None,
        delay: float = 1.0,
        interval: float = 0.1,
        width: int = 24,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = max(int(total), 0)
        self.label = label
        self.stream: TextIO = stream if stream is not None else sys.stderr
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            try:
                enabled = bool(isatty()) if isatty is not None else False
            except (ValueError, OSError):  # closed stream
                enabled = False
        self.enabled = enabled
        self.delay = delay
        self.interval = interval
        self.width = width
        self._clock = clock
        self._start = clock()
        self._last = float("-inf")
        self._drawn = False
        self.done = 0

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def advance(self, n: int) -> None:
        """Count ``n`` more bytes done and redraw if it is time."""
        self.done += int(n)
        if not self.enabled:
            return
        now = self._clock()
        if now - self._start < self.delay or now - self._last < self.interval:
            return
        self._last = now
        self._draw(now)

    def line(self, now: float | None = None) -> str:
        """The text of the bar at time ``now``."""
        now = self._clock() if now is None else now
        elapsed = max(now - self._start, 1e-9)
        frac = min(self.done / self.total, 1.0) if self.total else 1.0
        filled = int(frac * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        head = f"{self.label} " if self.label else ""
        return (
            f"{head}{frac * 100:5.1f}% [{bar}] {format_bytes(self.done)}/"
            f"{format_bytes(self.total)} {format_bytes(rate)}/s ETA {format_duration(eta)}"
        )

    def _draw(self, now: float) -> None:
        try:
            self.stream.write("\r" + self.line(now) + "\x1b[K")
            self.stream.flush()
            self._drawn = True
        except (OSError, ValueError):  # stderr gone: stop drawing
            self.enabled = False

    def close(self) -> None:
        """Erase the bar (if one was drawn) so later output starts on a clean line."""
        if self._drawn:
            try:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
            except (OSError, ValueError):
                pass
            self._drawn = False
