"""Dumps on disk for the benchmark's file cells: .npy / .safetensors writers, the data region of
a file (for the mapping roofline), the ``fastnll`` CLI runner, and the page cache (residency by
mincore, eviction by drop_caches or fadvise, the file system of a directory)."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from typing import Any

import numpy as np

MiB = 1 << 20


def write_npy(path: str, a: np.ndarray) -> None:
    """np.save, fsync'd (bfloat16 is stored as NumPy writes it: a 2-byte void descr)."""
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(a))
        f.flush()
        os.fsync(f.fileno())


_ST_DTYPE = {
    "float32": "F32",
    "float64": "F64",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "uint16": "U16",
    "uint8": "U8",
}


def write_safetensors(path: str, a: np.ndarray, name: str | None = None) -> None:
    """One tensor in a .safetensors file (8-byte little-endian header length, JSON header padded
    to 8 bytes, raw little-endian data), fsync'd."""
    a = np.ascontiguousarray(a)
    name = name or ("logits" if a.dtype.kind != "i" and a.dtype.kind != "u" else "target")
    hdr = {
        name: {
            "dtype": _ST_DTYPE[a.dtype.name],
            "shape": list(a.shape),
            "data_offsets": [0, a.nbytes],
        }
    }
    raw = json.dumps(hdr).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        flat = a.reshape(-1).view(np.uint8)
        f.writelines(flat[s : s + 64 * MiB].tobytes() for s in range(0, flat.size, 64 * MiB))
        f.flush()
        os.fsync(f.fileno())


def data_region(path: str) -> tuple[int, int]:
    """(offset, length) of the array data in a .npy or single-tensor .safetensors file."""
    with open(path, "rb") as f:
        if path.endswith(".npy"):
            major, _ = np.lib.format.read_magic(f)
            read = (
                np.lib.format.read_array_header_1_0
                if major == 1
                else np.lib.format.read_array_header_2_0
            )
            read(f)
            off = f.tell()
        else:
            off = 8 + int.from_bytes(f.read(8), "little")
    return off, os.path.getsize(path) - off


def file_mapping(path: str, dt: np.dtype) -> np.ndarray:
    """A read-only memory map of a file's data as dtype ``dt`` (for the file roofline)."""
    off, length = data_region(path)
    return np.memmap(path, dtype=dt, mode="r", offset=off, shape=(length // dt.itemsize,))


def fastnll_cli() -> list[str]:
    """The ``fastnll`` console script next to this interpreter, else ``python -m fastnll``."""
    exe = os.path.join(os.path.dirname(sys.executable), "fastnll")
    if os.access(exe, os.X_OK):
        return [exe]
    found = shutil.which("fastnll")
    return [found] if found else [sys.executable, "-m", "fastnll"]


def cli_command(compare: bool, paths: Iterable[str]) -> list[str]:
    """``fastnll eval PREDS TARGETS`` (or ``compare BASE NEW TARGETS``) without a progress bar."""
    return fastnll_cli() + ["compare" if compare else "eval", *paths, "--no-progress"]


def run_cli(cmd: list[str], threads: int) -> dict[str, Any]:
    """Run the CLI once: wall seconds and the child's max RSS (wait4); raises on failure."""
    import time

    env = dict(os.environ, FASTNLL_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out, err = p.communicate()
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd[-4:])} exited {p.returncode}: "
            f"{(err.decode(errors='replace').strip().splitlines() or ['?'])[-1]}"
        )
    return {"wall_s": wall, "stdout": out.decode(errors="replace")}


# ----------------------------------------------------------------------------- page cache

_libc = None


def _lib() -> Any:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.mmap.restype = ctypes.c_void_p
        _libc.mmap.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_long,
        ]
        _libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        _libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    return _libc


def resident_fraction(path: str) -> float | None:
    """Fraction of a file's pages in the page cache (mincore), None if it cannot be asked."""
    size = os.path.getsize(path)
    if size == 0 or not sys.platform.startswith("linux"):
        return None
    lib, page = _lib(), os.sysconf("SC_PAGE_SIZE")
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = lib.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
        if addr in (None, ctypes.c_void_p(-1).value):
            return None
        try:
            vec = (ctypes.c_ubyte * ((size + page - 1) // page))()
            if lib.mincore(addr, size, vec) != 0:
                return None
            return float(np.frombuffer(vec, dtype=np.uint8).__and__(1).mean())
        finally:
            lib.munmap(addr, size)
    finally:
        os.close(fd)


def evict(paths: Iterable[str], method: str) -> str:
    """Drop files from the page cache: "drop_caches" (sync; echo 3 > /proc/sys/vm/drop_caches,
    root only) or "fadvise" (POSIX_FADV_DONTNEED on each file). Returns the method used, or
    raises OSError if neither works."""
    paths = list(paths)
    if method == "drop_caches":
        os.sync()
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
            return "drop_caches"
        except OSError:
            method = "fadvise"
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return "fadvise"


def fs_type(path: str) -> str:
    """File-system type of the mount holding ``path`` (from /proc/mounts), or "unknown"."""
    best, kind = "", "unknown"
    real = os.path.realpath(path)
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if (
                    len(parts) > 2
                    and (real == parts[1] or real.startswith(parts[1].rstrip("/") + "/"))
                    and len(parts[1]) > len(best)
                ):
                    best, kind = parts[1], parts[2]
    except OSError:
        pass
    return kind
