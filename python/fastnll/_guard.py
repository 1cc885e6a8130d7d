"""Reading memory-mapped dumps without ever dying of SIGBUS.

A memory map of a file that another process truncates faults (SIGBUS) on the first page past
the new end: no Python code can turn that into an exception. :class:`FileGuard` makes the
chunked readers of ``evaluate``/``compare``/``Evaluator.update`` safe in two ways:

* **Mapped, under a read lease** (Linux ``F_SETLEASE``; the normal case, no cost): while
  fastnll holds the lease, no other process can truncate or open the file for writing
  without the kernel first telling fastnll and holding the other process back (up to
  ``/proc/sys/fs/lease-break-time``, 45 s by default; ``truncate(1)`` opens with
  ``O_NONBLOCK`` and gets EAGAIN instead). Before each chunk fastnll looks at the lease; once
  another process asks for the file, fastnll gives the lease up and reads the remaining
  chunks the second way.
* **Copied with pread** into one reused buffer, after checking the file's size: a short read
  is an error naming the file, never a fault. Used when no lease can be had (the file is open
  for writing somewhere, is not ours, or the file system has no leases) and after a break.

The lease-break notice is delivered as SIGURG (ignored by default) instead of the default
SIGIO, which would end the process. Either way, a file that shrinks below the array it holds
raises :class:`~fastnll.readers.DumpError` (a ``ValueError``) naming it.
"""

from __future__ import annotations

import mmap
import os
import signal
import stat
from typing import Any

import numpy as np

from .readers import DumpError

try:
    import fcntl

    _F_SETLEASE: int | None = getattr(fcntl, "F_SETLEASE", None)
    _F_GETLEASE: int | None = getattr(fcntl, "F_GETLEASE", None)
    _F_SETSIG: int | None = getattr(fcntl, "F_SETSIG", 10 if _F_SETLEASE else None)
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]
    _F_SETLEASE = _F_GETLEASE = _F_SETSIG = None

try:
    from numpy.lib.array_utils import byte_bounds
except ImportError:  # pragma: no cover - NumPy < 2
    from numpy import byte_bounds  # type: ignore[attr-defined,no-redef]

__all__ = ["FileGuard", "guard_for"]

# A view whose bytes span more than this many times its own size (Fortran-order rows,
# sparse strides) is not copied: it is read through the map after the size check.
_SPARSE = 4

# Tests force the copying path with FASTNLL_NO_LEASE=1.
_NO_LEASE_ENV = "FASTNLL_NO_LEASE"


def _ptr(a: np.ndarray) -> int:
    return int(a.__array_interface__["data"][0])


class FileGuard:
    """Guards the reads of one memory-mapped array (and its views) of one file."""

    def __init__(self, root: np.memmap) -> None:
        self.path = str(root.filename)
        mm = root._mmap  # type: ignore[attr-defined]  # NumPy keeps the mmap object here
        offset = int(root.offset)
        # np.memmap maps from the allocation-granularity boundary below `offset`.
        self._map_start = offset - offset % mmap.ALLOCATIONGRANULARITY
        self._map_ptr = _ptr(np.frombuffer(mm, np.uint8))
        _lo, hi = byte_bounds(root)
        self.need = self._pos(hi)  # the file must hold at least this many bytes
        self._buf: np.ndarray | None = None
        self.fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        self.leased = False
        try:
            st = os.fstat(self.fd)
            if not stat.S_ISREG(st.st_mode):
                raise DumpError(f"{self.path}: not a regular file")
            if _mapped_file(self._map_ptr) != (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino):
                raise _NotTheMappedFile()
            self.leased = self._take_lease()
            self.check()
        except BaseException:
            self.close()
            raise

    # -- lease
    def _take_lease(self) -> bool:
        if _F_SETLEASE is None or os.environ.get(_NO_LEASE_ENV):
            return False
        try:
            if _F_SETSIG is not None:
                fcntl.fcntl(self.fd, _F_SETSIG, int(signal.SIGURG))
            fcntl.fcntl(self.fd, _F_SETLEASE, fcntl.F_RDLCK)
        except OSError:  # open for writing somewhere, not our file, no lease support
            return False
        return True

    def _lease_held(self) -> bool:
        if not self.leased or _F_GETLEASE is None:
            return False
        try:
            held = fcntl.fcntl(self.fd, _F_GETLEASE) == fcntl.F_RDLCK
        except OSError:
            held = False
        if not held:  # someone wants the file: let them have it, copy from now on
            self.release()
        return held

    def release(self) -> None:
        """Give the lease up (reads are copies from now on)."""
        if self.leased and _F_SETLEASE is not None:
            self.leased = False
            try:
                fcntl.fcntl(self.fd, _F_SETLEASE, fcntl.F_UNLCK)
            except OSError:
                pass

    # -- checks and reads
    def _pos(self, addr: int) -> int:
        return self._map_start + (addr - self._map_ptr)

    def _shrunk(self, size: int, need: int) -> DumpError:
        return DumpError(
            f"{self.path}: the file shrank to {size} bytes while it was being "
            f"read (the array needs {need}); was it truncated or rewritten?"
        )

    def check(self) -> None:
        """DumpError if the file no longer holds the whole array."""
        size = os.fstat(self.fd).st_size
        if size < self.need:
            raise self._shrunk(size, self.need)

    def safe_to_map(self) -> bool:
        """True while the lease makes reading through the map safe (checked per chunk)."""
        if self._lease_held():
            return True
        self.check()
        return False

    def fetch(self, view: np.ndarray) -> np.ndarray:
        """``view`` itself while mapped reads are safe, else a copy read with pread (into a
        buffer reused by the next fetch: use the result before fetching again)."""
        if self.safe_to_map() or view.size == 0:
            return view
        lo, hi = byte_bounds(view)
        span = hi - lo
        if span > _SPARSE * view.nbytes + (1 << 20):
            return view  # size checked just now; copying would read the whole file
        if self._buf is None or self._buf.size < span:
            self._buf = np.empty(span, np.uint8)
        buf = self._buf
        start, got = self._pos(lo), 0
        mv = buf.data[:span]
        while got < span:
            n = os.preadv(self.fd, [mv[got:]], start + got)
            if n <= 0:
                raise self._shrunk(os.fstat(self.fd).st_size, start + span)
            got += n
        out: np.ndarray = np.ndarray(
            view.shape, view.dtype, buffer=buf, offset=_ptr(view) - lo, strides=view.strides
        )
        return out

    def take(self, view: np.ndarray, index: tuple[np.ndarray, ...]) -> np.ndarray:
        """``view[index]`` for a tuple of integer index arrays (a sample of rows), never
        faulting."""
        if self.safe_to_map():
            return np.asarray(view[index])
        rest = view.shape[len(index) :]
        parts: list[np.ndarray] = []
        for k in range(len(index[0])):  # a sample of <= 1024 points, not the data
            at = tuple(slice(int(i[k]), int(i[k]) + 1) for i in index)
            parts.append(np.array(self.fetch(view[at]), copy=True).reshape(rest))
        if not parts:
            return np.asarray(view[index])
        return np.stack(parts)

    def close(self) -> None:
        """Release the lease and close the descriptor."""
        if self.fd >= 0:
            self.release()
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:  # pragma: no cover - timing of GC
        try:
            self.close()
        except Exception:  # noqa: BLE001, S110 - a finalizer must not raise
            pass


class _NotTheMappedFile(Exception):
    """The path no longer names the mapped file (it was replaced or removed)."""


def _mapped_file(addr: int) -> tuple[int, int, int] | None:
    """(major, minor, inode) of the file mapped at ``addr``, from /proc/self/maps."""
    try:
        with open("/proc/self/maps") as fh:
            for line in fh:
                parts = line.split(None, 5)
                lo, _, hi = parts[0].partition("-")
                if int(lo, 16) <= addr < int(hi, 16):
                    major, minor = (int(v, 16) for v in parts[3].split(":"))
                    return major, minor, int(parts[4])
    except (OSError, ValueError, IndexError):
        pass
    return None


def guard_for(a: Any) -> FileGuard | None:
    """A guard if ``a`` is (a view of) a file-backed ``np.memmap`` whose file is still at
    its path, else None. (A map of a file that was since replaced or deleted cannot be
    truncated through any path, and is read through the map as it is; without
    /proc/self/maps, i.e. off Linux, nothing is guarded.)"""
    if not isinstance(a, np.memmap) or getattr(a, "_mmap", None) is None:
        return None
    if not getattr(a, "filename", None) or a.size == 0:
        return None
    try:
        return FileGuard(a)
    except _NotTheMappedFile:
        return None
    except OSError as exc:
        if not os.path.exists(str(a.filename)):
            return None
        raise DumpError(f"{a.filename}: cannot open ({exc.strerror or exc})") from None
