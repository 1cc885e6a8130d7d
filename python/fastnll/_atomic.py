"""Outputs as transactions: every file fastnll writes (``--json``, ``--per-row``, ``--plot``,
``evaluate(per_row=path)``) goes through :class:`AtomicOutput`.

The data is written to a temporary file in the destination's directory (so the final rename
cannot cross file systems), flushed to disk with ``fsync`` and renamed over the destination
only once it is complete. On any failure, ``KeyboardInterrupt`` or ``SystemExit`` (the CLI
turns SIGTERM into one) the temporary file is removed and an existing destination is left
byte for byte as it was. A destination that is the same file as an input (same device and
inode, after following symlinks; hard links included) is refused before anything is written.
A destination that is a symlink is replaced at the file it points to (the link stays).
Only a SIGKILL or a power cut can leave a temporary ``.NAME.XXXX.tmp...`` file behind.
"""

from __future__ import annotations

import errno
import os
import signal
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["AtomicOutput", "check_output_path", "same_file"]


def _file_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)  # follows symlinks
    except OSError:
        return None
    return st.st_dev, st.st_ino


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """True when both paths exist and are the same file (device and inode)."""
    ia, ib = _file_id(os.fspath(a)), _file_id(os.fspath(b))
    return ia is not None and ia == ib


def check_output_path(
    dest: str | os.PathLike[str], inputs: Iterable[Any], what: str = "output"
) -> None:
    """ValueError if ``dest`` is a directory or the same file as one of ``inputs``
    (paths; other inputs, such as arrays, are skipped)."""
    d = os.fspath(dest)
    if os.path.isdir(d):
        raise ValueError(f"{what} {d} is a directory; give a file name")
    for src in inputs:
        if isinstance(src, (str, os.PathLike)) and same_file(d, src):
            raise ValueError(
                f"{what} {d} is the same file as the input {os.fspath(src)}; "
                f"writing it would destroy the input: choose another name"
            )


def _error(dest: str, exc: OSError) -> OSError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        why = "no space left on the device"
    else:
        why = exc.strerror or str(exc)
    return OSError(exc.errno, f"{dest}: cannot write ({why}); the file was left as it was")


class AtomicOutput:
    """Context manager for one output file::

        with AtomicOutput(dest, inputs=[preds, targets]) as out:
            write to out.path (or out.file, an open binary file)
        # renamed into place here, only if the block raised nothing

    ``out.path`` ends with the destination's suffix (matplotlib picks the format from it).
    """

    def __init__(
        self, dest: str | os.PathLike[str], inputs: Iterable[Any] = (), what: str = "output"
    ) -> None:
        self.dest = os.fspath(dest)
        check_output_path(self.dest, inputs, what)
        # Write beside the file a symlink points to, so the rename keeps the link.
        self.target = os.path.realpath(self.dest)
        self.path = ""
        self.file: Any = None
        self._done = False

    def __enter__(self) -> AtomicOutput:
        directory, name = os.path.split(self.target)
        try:
            with _signals_deferred():  # no Ctrl-C between creating the file and owning it
                try:
                    fd, self.path = tempfile.mkstemp(
                        prefix=f".{name}.", suffix=".tmp" + Path(name).suffix, dir=directory or "."
                    )
                except OSError as exc:
                    raise _error(self.dest, exc) from None
                self.file = os.fdopen(fd, "w+b")
        except BaseException:
            if self.path:
                self.abort()
            raise
        return self

    def preallocate(self, size: int) -> None:
        """Reserve ``size`` bytes now, so a full disk fails before the work, not halfway
        (and never as a SIGBUS through a memory map)."""
        if size <= 0:
            return
        try:
            os.posix_fallocate(self.file.fileno(), 0, size)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                return  # a file system without it: writes still report ENOSPC
            raise _error(self.dest, exc) from None

    def commit(self) -> None:
        """Flush, fsync and rename into place (also done by ``__exit__`` on success)."""
        if self._done:
            return
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            try:
                mode = os.stat(self.target).st_mode & 0o7777
            except OSError:
                mode = 0o666 & ~_umask()
            os.chmod(self.path, mode)  # mkstemp makes 0600; keep the usual permissions
            os.replace(self.path, self.target)
        except OSError as exc:
            self.abort()
            raise _error(self.dest, exc) from None
        except BaseException:  # Ctrl-C or SIGTERM during fsync: no temporary file left
            self.abort()
            raise
        self._done = True
        try:  # make the rename itself durable
            dfd = os.open(os.path.dirname(self.target) or ".", os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass

    def abort(self) -> None:
        """Remove the temporary file; the destination is untouched."""
        if self._done:
            return
        self._done = True
        try:
            if self.file is not None and not self.file.closed:
                self.file.close()
        except OSError:
            pass
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


class _signals_deferred:
    """Hold Python's SIGINT/SIGTERM handlers back for a few statements: a signal arriving
    meanwhile (on any thread: the kernel may deliver it to a worker) is recorded and raised
    again, under the previous handler, when the block ends. Only the main thread runs Python
    signal handlers, so other threads need nothing."""

    def __enter__(self) -> None:
        self.saved: dict[int, Any] = {}
        self.caught: list[int] = []
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            old = signal.getsignal(sig)
            if old is None:  # set outside Python: leave it alone
                continue
            try:
                signal.signal(sig, self._record)
            except (ValueError, OSError):
                continue
            self.saved[sig] = old

    def _record(self, signum: int, frame: Any) -> None:
        self.caught.append(signum)

    def __exit__(self, *exc: object) -> None:
        for sig, old in self.saved.items():
            signal.signal(sig, old)
        for sig in self.caught:
            signal.raise_signal(sig)  # now handled as it would have been


def _umask() -> int:
    """The process umask, read without changing it (os.umask would, for every thread)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022
