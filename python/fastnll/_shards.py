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
* :func:`cli_evaluate` / :func:`cli_compare` run the command line on several shards, in this
  process or on a Dask cluster (``--workers`` / ``--scheduler``, through :mod:`fastnll.dask`).
"""

from __future__ import annotations

import glob
import math
import mmap
import os
import pickle
import re
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .readers import KNOWN_SUFFIXES, DumpError, is_path, load_array, split_key

__all__ = ["Shard", "ShardArray", "Unit", "expand", "describe", "pair", "open_shard", "units",
           "is_specs", "plan_eval", "plan_compare", "run_eval_unit", "run_compare_unit",
           "evaluate_files", "compare_files", "split_cli", "cli_evaluate", "cli_compare"]

Specs = Union[str, "os.PathLike[str]", Sequence[Union[str, "os.PathLike[str]"]]]


# ----------------------------------------------------------------------------- listing
def _natural(name: str) -> List[Any]:
    return [(0, int(p), p) if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name)]


def is_specs(source: Any) -> bool:
    """True for a path, a glob, a directory, or a list/tuple of them (not arrays)."""
    if is_path(source):
        return True
    return isinstance(source, (list, tuple)) and len(source) > 0 and all(map(is_path, source))


def expand(specs: Specs, what: str = "preds") -> List[str]:
    """Files named by paths, globs and directories, in order (each glob/directory sorted).

    A directory contributes its .npy/.npz/.safetensors files; a glob that matches nothing, an
    empty directory, or a file listed twice is a :class:`DumpError` naming it."""
    items: List[Any] = [specs] if is_path(specs) else list(specs)  # type: ignore[arg-type]
    if not items:
        raise DumpError(f"no {what} files given")
    out: List[str] = []
    for spec in items:
        text = os.fspath(spec)
        path, key = split_key(text)
        base, tail = str(path), ("" if key is None else f":{key}")
        if os.path.isdir(base):
            found = [os.path.join(base, f) for f in os.listdir(base)
                     if os.path.splitext(f)[1].lower() in KNOWN_SUFFIXES
                     and os.path.isfile(os.path.join(base, f))]
            if not found:
                raise DumpError(f"{text}: directory holds no .npy, .npz or .safetensors files")
        elif glob.has_magic(base) and not os.path.exists(base):
            found = [f for f in glob.glob(base) if os.path.isfile(f)]
            if not found:
                raise DumpError(f"{text}: no {what} file matches this pattern")
        else:
            found = [base]
        out.extend(f + tail for f in sorted(found, key=_natural))
    seen: Dict[str, str] = {}
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
    shape: Tuple[int, ...]
    dtype: np.dtype
    raw_dtype: Any = None  # for raw binary files: how to open them again
    raw_shape: Any = None

    @property
    def rows(self) -> int:
        """Scored positions: the product of all axes but the class axis (targets: all)."""
        return math.prod(self.shape)


def _is_raw(source: str) -> bool:
    return split_key(source)[0].suffix.lower() not in KNOWN_SUFFIXES


def _recipe(source: str, target: bool, dtype: Any, shape: Any) -> Tuple[Any, Any]:
    if not _is_raw(source):
        return None, None
    if target:
        return (dtype if dtype is not None else "int64"), (-1,)
    return dtype, shape


def describe(source: str, *, target: bool = False, dtype: Any = None,
             shape: Any = None) -> Shard:
    """Shape and dtype of one shard. Predictions: ``dtype``/``shape`` describe raw binary
    files; targets: ``dtype`` is the raw file's integer dtype (default int64)."""
    rd, rs = _recipe(source, target, dtype, shape)
    arr = load_array(source, dtype=rd, shape=rs)
    return Shard(source, tuple(int(d) for d in arr.shape), arr.dtype, rd, rs)


def pair(pred_specs: Specs, target_specs: Specs, *, dtype: Any = None, shape: Any = None,
         target_dtype: Any = None, what: str = "preds",
         ) -> Tuple[List[Shard], List[Shard]]:
    """Prediction and target shards matched by position (sorted names), checked: the same
    number of files, each target shard holding one class index per prediction row, every
    prediction shard of the same rank and number of classes, integer targets."""
    pf, tf = expand(pred_specs, what), expand(target_specs, "target")
    if len(pf) != len(tf):
        raise DumpError(f"{len(pf)} {what} shards ({_first(pf)}) but {len(tf)} target shards "
                        f"({_first(tf)}): shards are matched one to one by sorted name")
    preds = [describe(p, dtype=dtype, shape=shape) for p in pf]
    targets = [describe(t, target=True, dtype=target_dtype) for t in tf]
    first = preds[0]
    for p, t in zip(preds, targets):
        if len(p.shape) not in (2, 3):
            raise DumpError(f"{p.source}: must be 2-d [N, C] or 3-d [B, T, V], got shape "
                            f"{p.shape}")
        if len(p.shape) != len(first.shape) or p.shape[-1] != first.shape[-1]:
            raise DumpError(f"{p.source} has shape {p.shape} but {first.source} has "
                            f"{first.shape}: shards must have the same rank and classes")
        if t.dtype.kind not in "iu":
            raise DumpError(f"{t.source}: targets must hold integer class indices, got dtype "
                            f"{t.dtype}")
        lead = p.shape[:-1]
        if t.shape != lead and t.rows != math.prod(lead):
            raise DumpError(f"{t.source} holds {t.rows} targets (shape {t.shape}) but its "
                            f"predictions {p.source} have {math.prod(lead)} rows (shape "
                            f"{p.shape}): shards are matched by sorted name")
    return preds, targets


def _first(files: List[str]) -> str:
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

    def _file_position(self) -> Optional[int]:
        """Byte offset of this array's first element in the mapped shard, or None if this
        array's memory is not the shard's mapping."""
        org = self._fastnll_origin
        if org is None or self._fastnll_open is None:
            return None
        mm = _mapping(self)
        if mm is None or mm is not _mapping(org):
            return None
        start = self.__array_interface__["data"][0]
        base = org.__array_interface__["data"][0]
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


def _wrap(arr: np.ndarray, recipe: Tuple[Any, ...]) -> np.ndarray:
    if _mapping(arr) is None:  # an empty shard, or a compressed .npz member: plain data
        return arr
    out = arr.view(ShardArray)
    out._fastnll_open, out._fastnll_origin = recipe, arr
    return out


def _reopen(recipe: Tuple[Any, ...], pos: int, shape: Tuple[int, ...], dtype: np.dtype,
            strides: Tuple[int, ...]) -> np.ndarray:
    whole = _load(recipe)
    mm = _mapping(whole)
    if mm is None:
        raise DumpError(f"{recipe[0]}: this shard is no longer a mapped file")
    start = whole.__array_interface__["data"][0] - np.frombuffer(mm, np.uint8).ctypes.data
    view = np.ndarray(shape, dtype=dtype, buffer=mm, offset=start + pos, strides=strides)
    out = view.view(ShardArray)
    out._fastnll_open, out._fastnll_origin = recipe, whole
    return out


def _load(recipe: Tuple[Any, ...]) -> np.ndarray:
    source, rd, rs = recipe
    return load_array(source, dtype=rd, shape=rs)


def open_shard(shard: Union[Shard, str], *, target: bool = False, dtype: Any = None,
               shape: Any = None) -> np.ndarray:
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

    @sizeof.register(ShardArray)
    def _size(x: ShardArray) -> int:
        return 512 if x._file_position() is not None else int(x.nbytes)

    try:
        from distributed.protocol import dask_deserialize, dask_serialize
    except ImportError:  # plain dask: nothing is serialised between threads
        _REGISTERED = True
        return

    @dask_serialize.register(ShardArray)
    def _ser(x: ShardArray) -> Tuple[Dict[str, Any], List[bytes]]:
        return {}, [pickle.dumps(x, protocol=5)]

    @dask_deserialize.register(ShardArray)
    def _de(header: Dict[str, Any], frames: List[Any]) -> Any:
        return pickle.loads(b"".join(bytes(f) for f in frames))

    _REGISTERED = True


_register_dask()  # on a worker that unpickles a ShardArray, dask is already loaded


# ----------------------------------------------------------------------------- units
@dataclass(frozen=True)
class Unit:
    """One task of a sharded run: the shards of one position, and for a 2-d dump scored with
    shift (one sequence across all shards) the next target shard, whose first target the last
    row of this shard predicts."""

    index: int
    preds: Tuple[Shard, ...]  # one (eval) or two (compare: base, new)
    target: Shard
    next_target: Optional[Shard]
    chained: bool  # 2-d with shift: row i is scored against target i + 1 of the whole dump


def units(preds: Sequence[Sequence[Shard]], targets: Sequence[Shard], shift: bool) -> List[Unit]:
    """Tasks for ``preds[k]`` (a tuple per position) against ``targets[k]``."""
    chained = shift and len(preds[0][0].shape) == 2
    out = []
    for k, (p, t) in enumerate(zip(preds, targets)):
        nxt = targets[k + 1] if chained and k + 1 < len(targets) else None
        out.append(Unit(k, tuple(p), t, nxt, chained))
    return out


def unit_arrays(u: Unit) -> Tuple[List[np.ndarray], np.ndarray, bool]:
    """(prediction arrays, targets, shift) of a chained unit, opened here: rows scored
    against the next row's target, the shard's last row against the next shard's first."""
    xs = [open_shard(p) for p in u.preds]
    t = np.asarray(open_shard(u.target)).reshape(-1)
    if u.next_target is not None:
        head = np.asarray(open_shard(u.next_target)).reshape(-1)[:1]
        dt = np.promote_types(t.dtype, head.dtype)
        if dt.kind == "f":  # uint64 beside a signed type: int64 holds every valid class index
            dt = np.dtype(np.int64)
            big = np.iinfo(np.int64).max
            for part, src in ((t, u.target.source), (head, u.next_target.source)):
                if part.dtype.kind == "u" and part.size and int(part.max()) > big:
                    raise IndexError(f"{src}: target {int(part.max())} is out of range (it "
                                     f"does not even fit in int64)")
        return xs, np.concatenate([t[1:].astype(dt), head.astype(dt)]), False
    return [x[:-1] for x in xs], t[1:], False


def chained_message(u: Unit, value: int, i: int, classes: int, ignore_index: int) -> str:
    """The message for target ``i`` of a chained unit's targets, named by its file and row."""
    from ._partial import target_message

    if i + 1 < u.target.rows or u.next_target is None:
        return target_message(value, (i + 1,), classes, ignore_index, u.target.source)
    return target_message(value, (0,), classes, ignore_index, u.next_target.source)


# ----------------------------------------------------------------------------- running units
EVAL_KEYS = ("kind", "ignore_index", "top_k", "n_bins", "chunk_bytes", "check_kind")


def _unit_dumps(u: Unit, opts: Dict[str, Any]) -> Tuple[List[Any], Any]:
    """The unit's dumps (shift applied; files opened here) and how to word a bad target."""
    from ._inputs import check_declared_kind, prepare
    from ._partial import target_message

    ii = int(opts["ignore_index"])
    if not u.chained:
        ds = [prepare(p.source, u.target.source, shift=bool(opts["shift"]), dtype=p.raw_dtype,
                      shape=p.raw_shape, target_dtype=u.target.raw_dtype) for p in u.preds]
        c, tname = ds[0].x.shape[-1], ds[0].tname

        def where(value: int, pos: Tuple[int, ...]) -> str:
            return target_message(value, pos, c, ii, tname)
    else:
        xs, ts, _ = unit_arrays(u)
        ds = [prepare(x.view(np.ndarray), ts, shift=False) for x in xs]
        for d, p in zip(ds, u.preds):
            d.name = p.source
        c = ds[0].x.shape[-1]

        def where(value: int, pos: Tuple[int, ...]) -> str:
            return chained_message(u, value, pos[0], c, ii)
    if opts["check_kind"]:
        for d in ds:
            check_declared_kind(d, opts["kind"], ii, int(opts["chunk_bytes"]))
    return ds, where


def run_eval_unit(u: Unit, opts: Dict[str, Any]) -> Any:
    """An Evaluator filled with one unit: files opened here, read in windows of chunk_bytes
    whose pages are released as it goes; errors name the files."""
    from ._partial import eval_dump
    from .evaluate import Evaluator

    (d,), where = _unit_dumps(u, opts)
    ev = Evaluator(shift=False, progress=False, check_kind=False,
                   **{k: opts[k] for k in EVAL_KEYS if k != "check_kind"})
    eval_dump(ev, d, int(opts["chunk_bytes"]), where)
    if ev.n_classes is None:
        ev.n_classes = d.x.shape[-1]
    return ev


def run_compare_unit(u: Unit, opts: Dict[str, Any]) -> Any:
    """CompareSums of one unit (base and new shards against the target shard)."""
    from ._partial import CompareSums, compare_dumps

    (db, dn), where = _unit_dumps(u, opts)
    acc = CompareSums(opts["kind"], opts["ignore_index"])
    compare_dumps(acc, db, dn, int(opts["chunk_bytes"]), where)
    if acc.n_classes is None:
        acc.n_classes = db.x.shape[-1]
    return acc


def plan_eval(preds: Specs, target: Specs, opts: Dict[str, Any]) -> List[Unit]:
    """Units of an evaluation of shard files (checked: counts, rows, classes)."""
    ps, ts = pair(preds, target, dtype=opts.get("dtype"), shape=opts.get("shape"),
                  target_dtype=opts.get("target_dtype"))
    return units([(p,) for p in ps], ts, bool(opts["shift"]))


def plan_compare(base: Specs, new: Specs, target: Specs, opts: Dict[str, Any]) -> List[Unit]:
    """Units of a comparison of two models' shard files on the same target shards."""
    kw = dict(dtype=opts.get("dtype"), shape=opts.get("shape"),
              target_dtype=opts.get("target_dtype"))
    bs, ts = pair(base, target, what="base", **kw)
    ns, _ = pair(new, target, what="new", **kw)
    for b, n in zip(bs, ns):
        if b.shape != n.shape:
            raise DumpError(f"{n.source} has shape {n.shape} but {b.source} has {b.shape}: "
                            f"the two models' shards must match")
    return units(list(zip(bs, ns)), ts, bool(opts["shift"]))


def evaluate_files(preds: Specs, target: Specs, **opts: Any) -> Any:
    """:func:`fastnll.evaluate` of shard files in this process, one shard after another."""
    from .evaluate import Evaluator

    acc = Evaluator(shift=opts["shift"], progress=False, **{k: opts[k] for k in EVAL_KEYS})
    for u in plan_eval(preds, target, opts):
        acc.merge(run_eval_unit(u, opts))
    return acc.result()


def compare_files(base: Specs, new: Specs, target: Specs, **opts: Any) -> Any:
    """:func:`fastnll.compare` of shard files in this process, one shard after another."""
    from ._partial import CompareSums

    acc = CompareSums(opts["kind"], opts["ignore_index"])
    for u in plan_compare(base, new, target, opts):
        acc.merge(run_compare_unit(u, opts))
    return acc.result()


# ----------------------------------------------------------------------------- command line
def _one_file(group: List[str]) -> bool:
    if len(group) != 1:
        return False
    base = str(split_key(group[0])[0])
    return not os.path.isdir(base) and not (glob.has_magic(base) and not os.path.exists(base))


def split_cli(a: Any, names: Sequence[str]) -> None:
    """Split the CLI's positional paths into ``len(names)`` equal groups (preds... targets...;
    base... new... targets...): ``a.<name>`` is each group's text, and ``a.shards`` the groups
    when the run takes the sharded path (several files, a glob, a directory, or a cluster)."""
    from .cli import UsageError

    paths = list(getattr(a, "paths", None) or [])
    cluster = bool(getattr(a, "workers", None) or getattr(a, "scheduler", None))
    if getattr(a, "workers", None) and getattr(a, "scheduler", None):
        raise UsageError("give --workers (a local cluster) or --scheduler (a running one), "
                         "not both")
    if not paths:  # a namespace made without positional paths (e.g. by the demo)
        a.shards = None
        return
    k = len(names)
    if len(paths) < k:  # as argparse says it for missing positionals
        raise UsageError(f"the following arguments are required: {', '.join(names[len(paths):])}")
    if len(paths) % k:
        raise UsageError(f"expected {' '.join(n.upper() + '...' for n in names)} (equal "
                         f"numbers of each): {len(paths)} paths do not split into {k} groups")
    groups = [paths[i * len(paths) // k:(i + 1) * len(paths) // k] for i in range(k)]
    for n, g in zip(names, groups):
        setattr(a, n, " ".join(g))
    a.shards = None if all(map(_one_file, groups)) and not cluster else groups
    if a.shards is not None and getattr(a, "per_row", None):
        raise UsageError("--per-row takes one predictions file in this process; it cannot be "
                         "combined with several shards, --workers or --scheduler")


def _cli_opts(a: Any) -> Dict[str, Any]:
    return dict(kind=a.kind, ignore_index=a.ignore_index, shift=a.shift,
                chunk_bytes=a.chunk_mb << 20, check_kind=not a.no_kind_check, dtype=a.dtype,
                shape=a.shape, target_dtype=a.target_dtype)


def cli_evaluate(a: Any) -> Any:
    """The EvalReport of ``fastnll eval`` over shards (see :func:`split_cli`): in this
    process, or on a Dask cluster with ``--workers N`` / ``--scheduler ADDRESS``."""
    preds_g, target_g = a.shards
    opts = dict(_cli_opts(a), top_k=tuple(a.top_k), n_bins=a.bins)
    if not (a.workers or a.scheduler):
        return evaluate_files(preds_g, target_g, **opts)
    from . import dask as fdask

    with fdask.cluster(a.scheduler, a.workers):
        return fdask.evaluate(preds_g, target_g, **opts)


def cli_compare(a: Any) -> Any:
    """The CompareReport of ``fastnll compare`` over shards."""
    base_g, new_g, target_g = a.shards
    opts = _cli_opts(a)
    if not (a.workers or a.scheduler):
        return compare_files(base_g, new_g, target_g, **opts)
    from . import dask as fdask

    with fdask.cluster(a.scheduler, a.workers):
        return fdask.compare(base_g, new_g, target_g, **opts)
