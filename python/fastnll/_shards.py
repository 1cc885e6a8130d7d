"""Many dump files read as one dump: shard lists, pairing, and shards that pickle as paths.

* :func:`expand` turns paths, globs (``"preds/*.npy"``) and directories into a list of files,
  each glob or directory sorted by name (digit runs compared as numbers, so ``shard-10``
  follows ``shard-9``); ``"dump.npz:logits"`` style keys are kept on every match.
* :func:`pair` reads each shard's shape and dtype (headers only: nothing is read into memory)
  and matches prediction and target shards by position, checking counts, rows and classes.
* :func:`open_shard` maps a shard read-only as a :class:`ShardArray`: a NumPy array whose
  pickle (and Dask's serialisation) is the file's path, offset, shape and strides, never the
  data. Pickling a plain ``np.memmap`` ships all its bytes; a ShardArray moved to another
  worker or process is mapped again there from the (shared) file.
* Running shards (one task per shard, in this process or on Dask) and the command line's use
  of them: :mod:`fastnll._shard_runs`.
"""

from __future__ import annotations

import glob
import math
import mmap
import os
import pickle
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from .readers import KNOWN_SUFFIXES, DumpError, is_path, load_array, split_key

__all__ = ["Shard", "ShardArray", "describe", "expand", "is_specs", "open_shard", "pair"]

Specs = Union[str, "os.PathLike[str]", Sequence[Union[str, "os.PathLike[str]"]]]


# ----------------------------------------------------------------------------- listing
def _natural(name: str) -> list[Any]:
    return [(0, int(p), p) if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name)]


def is_specs(source: Any) -> bool:
    """True for a path, a glob, a directory, or a list/tuple of them (not arrays)."""
    if is_path(source):
        return True
    return isinstance(source, (list, tuple)) and len(source) > 0 and all(map(is_path, source))


def expand(specs: Specs, what: str = "preds") -> list[str]:
    """Files named by paths, globs and directories, in order (each glob/directory sorted).

    A directory contributes its .npy/.npz/.safetensors files; a glob that matches nothing, an
    empty directory, or a file listed twice is a :class:`DumpError` naming it."""
    items: list[Any] = [specs] if is_path(specs) else list(specs)  # type: ignore[arg-type]
    if not items:
        raise DumpError(f"no {what} files given")
    out: list[str] = []
    for spec in items:
        text = os.fspath(spec)
        path, key = split_key(text)
        base, tail = str(path), ("" if key is None else f":{key}")
        if os.path.isdir(base):
            found = [
                os.path.join(base, f)
                for f in os.listdir(base)
                if os.path.splitext(f)[1].lower() in KNOWN_SUFFIXES
                and os.path.isfile(os.path.join(base, f))
            ]
            if not found:
                raise DumpError(f"{text}: directory holds no .npy, .npz or .safetensors files")
        elif glob.has_magic(base) and not os.path.exists(base):
            found = [f for f in glob.glob(base) if os.path.isfile(f)]
            if not found:
                raise DumpError(f"{text}: no {what} file matches this pattern")
        else:
            found = [base]
        out.extend(f + tail for f in sorted(found, key=_natural))
    seen: dict[str, str] = {}
    for f in out:
        real = os.path.realpath(split_key(f)[0]) + (split_key(f)[1] or "")
        if real in seen:
            raise DumpError(f"{f}: listed twice among the {what} shards (also as {seen[real]})")
        seen[real] = f
    return out


# ----------------------------------------------------------------------------- shards
@dataclass(frozen=True)
class Shard:
    """One file of a sharded dump, described from its header (the data is not read)."""

    source: str  # path, with ":key" for .npz / .safetensors members
    shape: tuple[int, ...]
    dtype: np.dtype
    raw_dtype: Any = None  # for raw binary files: how to open them again
    raw_shape: Any = None

    @property
    def rows(self) -> int:
        """Scored positions: the product of all axes but the class axis (targets: all)."""
        return math.prod(self.shape)


def _is_raw(source: str) -> bool:
    return split_key(source)[0].suffix.lower() not in KNOWN_SUFFIXES


def _recipe(source: str, target: bool, dtype: Any, shape: Any) -> tuple[Any, Any]:
    if not _is_raw(source):
        return None, None
    if target:
        return (dtype if dtype is not None else "int64"), (-1,)
    return dtype, shape


def describe(source: str, *, target: bool = False, dtype: Any = None, shape: Any = None) -> Shard:
    """Shape and dtype of one shard. Predictions: ``dtype``/``shape`` describe raw binary
    files; targets: ``dtype`` is the raw file's integer dtype (default int64)."""
    rd, rs = _recipe(source, target, dtype, shape)
    arr = load_array(source, dtype=rd, shape=rs)
    return Shard(source, tuple(int(d) for d in arr.shape), arr.dtype, rd, rs)


def pair(
    pred_specs: Specs,
    target_specs: Specs,
    *,
    dtype: Any = None,
    shape: Any = None,
    target_dtype: Any = None,
    what: str = "preds",
) -> tuple[list[Shard], list[Shard]]:
    """Prediction and target shards matched by position (sorted names), checked: the same
    number of files, each target shard holding one class index per prediction row, every
    prediction shard of the same rank and number of classes, integer targets."""
    pf, tf = expand(pred_specs, what), expand(target_specs, "target")
    if len(pf) != len(tf):
        raise DumpError(
            f"{len(pf)} {what} shards ({_first(pf)}) but {len(tf)} target shards "
            f"({_first(tf)}): shards are matched one to one by sorted name"
        )
    preds = [describe(p, dtype=dtype, shape=shape) for p in pf]
    targets = [describe(t, target=True, dtype=target_dtype) for t in tf]
    first = preds[0]
    for p, t in zip(preds, targets):
        if len(p.shape) not in (2, 3):
            raise DumpError(f"{p.source}: must be 2-d [N, C] or 3-d [B, T, V], got shape {p.shape}")
        if len(p.shape) != len(first.shape) or p.shape[-1] != first.shape[-1]:
            raise DumpError(
                f"{p.source} has shape {p.shape} but {first.source} has "
                f"{first.shape}: shards must have the same rank and classes"
            )
        if t.dtype.kind not in "iu":
            raise DumpError(
                f"{t.source}: targets must hold integer class indices, got dtype {t.dtype}"
            )
        lead = p.shape[:-1]
        if t.shape != lead and t.rows != math.prod(lead):
            raise DumpError(
                f"{t.source} holds {t.rows} targets (shape {t.shape}) but its "
                f"predictions {p.source} have {math.prod(lead)} rows (shape "
                f"{p.shape}): shards are matched by sorted name"
            )
    return preds, targets


def _first(files: list[str]) -> str:
    return files[0] + (f" ... {files[-1]}" if len(files) > 1 else "")


# ----------------------------------------------------------------------------- ShardArray
def _mapping(a: Any) -> Any:
    """The mmap object under an array's chain of bases, or None."""
    while a is not None:
        if isinstance(a, mmap.mmap):
            return a
        a = getattr(a, "base", None)
    return None


class ShardArray(np.ndarray):
    """A read-only array backed by a shard file; pickles as (file, offset, shape, strides).

    Views (slices, reshapes, transposes) stay file-backed and pickle the same way; arrays
    computed from it (copies, ufunc results) pickle their data as any array does."""

    _fastnll_open: Any = None  # (source, raw dtype, raw shape, target) to map the file again
    _fastnll_origin: Any = None  # the whole mapped array

    def __array_finalize__(self, obj: Any) -> None:
        self._fastnll_open = getattr(obj, "_fastnll_open", None)
        self._fastnll_origin = getattr(obj, "_fastnll_origin", None)

    def _file_position(self) -> int | None:
        """Byte offset of this array's first element in the mapped shard, or None if this
        array's memory is not the shard's mapping."""
        org = self._fastnll_origin
        if org is None or self._fastnll_open is None:
            return None
        mm = _mapping(self)
        if mm is None or mm is not _mapping(org):
            return None
        start: int = self.__array_interface__["data"][0]
        base: int = org.__array_interface__["data"][0]
        lo = hi = 0
        for n, s in zip(self.shape, self.strides):
            if n == 0:
                return None
            lo, hi = lo + min(0, (n - 1) * s), hi + max(0, (n - 1) * s)
        if start + lo < base or start + hi + self.itemsize > base + org.nbytes:
            return None
        return start - base

    def __reduce__(self) -> Any:
        pos = self._file_position()
        if pos is None:
            return (np.asarray, (np.array(self.view(np.ndarray)),))
        return (_reopen, (self._fastnll_open, pos, self.shape, self.dtype, self.strides))

    def __reduce_ex__(self, protocol: Any) -> Any:  # ndarray's own would pickle the bytes
        return self.__reduce__()


def _wrap(arr: np.ndarray, recipe: tuple[Any, ...]) -> np.ndarray:
    if _mapping(arr) is None:  # an empty shard, or a compressed .npz member: plain data
        return arr
    out = arr.view(ShardArray)
    out._fastnll_open, out._fastnll_origin = recipe, arr
    return out


def _reopen(
    recipe: tuple[Any, ...],
    pos: int,
    shape: tuple[int, ...],
    dtype: np.dtype,
    strides: tuple[int, ...],
) -> np.ndarray:
    whole = _load(recipe)
    mm = _mapping(whole)
    if mm is None:
        raise DumpError(f"{recipe[0]}: this shard is no longer a mapped file")
    start = whole.__array_interface__["data"][0] - np.frombuffer(mm, np.uint8).ctypes.data
    view = np.ndarray(shape, dtype=dtype, buffer=mm, offset=start + pos, strides=strides)
    out: ShardArray = view.view(ShardArray)
    out._fastnll_open, out._fastnll_origin = recipe, whole
    return out


def _load(recipe: tuple[Any, ...]) -> np.ndarray:
    source, rd, rs = recipe
    return load_array(source, dtype=rd, shape=rs)


def open_shard(
    shard: Shard | str, *, target: bool = False, dtype: Any = None, shape: Any = None
) -> np.ndarray:
    """Map one shard read-only (in the process that calls it, e.g. a Dask task) as a
    :class:`ShardArray`."""
    _register_dask()
    if isinstance(shard, Shard):
        recipe = (shard.source, shard.raw_dtype, shard.raw_shape)
    else:
        rd, rs = _recipe(shard, target, dtype, shape)
        recipe = (shard, rd, rs)
    return _wrap(_load(recipe), recipe)


_REGISTERED = False


def _register_dask() -> None:
    """Teach Dask the ShardArray's size (a path, not its bytes) and Distributed its wire
    format (the pickle above), when they are loaded."""
    global _REGISTERED
    if _REGISTERED or "dask" not in sys.modules:
        return
    from dask.sizeof import sizeof

    def _size(x: ShardArray) -> int:
        return 512 if x._file_position() is not None else int(x.nbytes)

    sizeof.register(ShardArray)(_size)

    try:
        from distributed.protocol.serialize import dask_deserialize, dask_serialize
    except ImportError:  # plain dask: nothing is serialised between threads
        _REGISTERED = True
        return

    def _ser(x: ShardArray) -> tuple[dict[str, Any], list[bytes]]:
        return {}, [pickle.dumps(x, protocol=5)]

    def _de(header: dict[str, Any], frames: list[Any]) -> Any:
        return pickle.loads(b"".join(bytes(f) for f in frames))

    dask_serialize.register(ShardArray)(_ser)
    dask_deserialize.register(ShardArray)(_de)

    _REGISTERED = True


_register_dask()  # on a worker that unpickles a ShardArray, dask is already loaded
