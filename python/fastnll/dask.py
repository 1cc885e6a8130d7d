"""fastnll on Dask: evaluate, compare and cross-entropy over dask arrays or shard files.

Install with ``pip install 'fastnll[dask]'``. Each block of rows is scored where it lives
(one :class:`~fastnll.Evaluator`, comparison or loss sum per block: a few hundred bytes) and
the partial results are merged by a tree reduction; the report is the one the in-memory
function gives on the concatenated data (float sums to rounding, counts, ranks and
calibration bins exactly). See docs/distributed.md.

* Inputs are dask arrays (``da.from_zarr``, ``da.from_npy_stack``, :func:`from_shards`...) or
  shard files (paths, globs, directories, lists of them: one task per shard, the file opened
  in the task, errors naming the file).
* The class axis is rechunked to one chunk (no row is split across blocks) and the targets to
  the row chunks of the predictions. With ``shift=True`` a ``[B, T, V]`` dump is cut along B
  only, never along T, so no (prediction, next token) pair is lost at a block boundary; a
  ``[N, C]`` dump is one sequence, scored as ``preds[:-1]`` against ``target[1:]``.
* Threads: each task sets fastnll's thread count to its worker's ``nthreads``, so process
  workers share the machine's cores instead of each using all of them.
* ``compute=False`` returns a ``dask.delayed.Delayed`` whose ``compute()`` is the report.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

try:
    import dask.array as da
    from dask.delayed import delayed
except ImportError as exc:  # pragma: no cover - exercised where dask is absent
    raise ImportError("fastnll.dask needs dask: pip install 'fastnll[dask]'") from exc

from . import _shard_runs, _shards
from ._arrays import float_tag
from ._partial import (
    CompareSums,
    LossSums,
    as_block,
    compare_dumps,
    eval_dump,
    release,
    target_message,
)
from .evaluate import Evaluator

__all__ = [
    "cluster",
    "compare",
    "cross_entropy",
    "evaluate",
    "from_shards",
    "use_worker_threads",
]

SPLIT_EVERY = 8  # partial results merged per reduction task


# ----------------------------------------------------------------------------- arrays
def from_shards(
    paths: Any,
    *,
    dtype: Any = None,
    shape: Any = None,
    target: bool = False,
    target_dtype: Any = None,
) -> da.Array:
    """A dask array of shard files concatenated along their first axis, one chunk per shard.

    ``paths``: a path, glob, directory, or list of them (sorted as :func:`expand` says). Only
    headers are read here; each chunk is mapped inside the task that needs it, and a chunk
    moved between workers travels as its file name and offset (the files must be readable
    from every worker, e.g. a shared filesystem), never as its bytes. ``target=True`` opens
    integer target shards (raw files: ``target_dtype``, default int64)."""
    files = _shards.expand(paths, "target" if target else "preds")
    shards = [
        _shards.describe(
            f,
            target=target,
            dtype=target_dtype if target else dtype,
            shape=None if target else shape,
        )
        for f in files
    ]
    first = shards[0]
    for s in shards[1:]:
        if s.shape[1:] != first.shape[1:] or s.dtype != first.dtype:
            raise ValueError(
                f"{s.source} has shape {s.shape} and dtype {s.dtype} but "
                f"{first.source} has {first.shape} and {first.dtype}: shards "
                f"concatenate along their first axis only"
            )
    # Not pure: every call gets new task keys, so a shard file rewritten between two calls is
    # read again instead of answered from results the scheduler may still hold.
    opener = delayed(_shards.open_shard)
    blocks = [
        da.from_delayed(
            opener(s), shape=s.shape, dtype=s.dtype, meta=np.empty((0,) * len(s.shape), s.dtype)
        )
        for s in shards
    ]
    out: da.Array = blocks[0] if len(blocks) == 1 else da.concatenate(blocks, axis=0)
    return out


def _as_dask(x: Any, name: str, *, target: bool = False) -> da.Array:
    if isinstance(x, da.Array):
        return x
    if _shards.is_specs(x):
        return from_shards(x, target=target)
    raise TypeError(
        f"{name} must be a dask array or shard paths (path, glob, directory or "
        f"list), got {type(x).__name__}; in-memory arrays go to fastnll itself, and "
        f"da.from_array of a memory map would ship its bytes to the workers"
    )


def _check_preds(x: da.Array, name: str) -> None:
    if float_tag(x.dtype) is None:
        raise TypeError(
            f"{name} has dtype {x.dtype}; accepted dtypes: float32, float64, "
            f"float16, bfloat16 (ml_dtypes)"
        )
    if x.ndim not in (2, 3):
        raise ValueError(f"{name} must be 2-d [N, C] or 3-d [B, T, V], got shape {x.shape}")
    if x.shape[-1] == 0:
        raise ValueError(f"{name} has 0 classes (shape {x.shape})")


def _aligned(
    xs: list[da.Array], t: da.Array, shift: bool, names: Sequence[str]
) -> tuple[list[da.Array], da.Array, bool, int]:
    """Predictions with one chunk along the class axis (and along T for a shifted [B, T, V]
    dump), targets rechunked to their row chunks; returns (preds, target, shift left for the
    blocks, how far the target positions of the blocks are shifted)."""
    x0 = xs[0]
    for x, n in zip(xs, names):
        _check_preds(x, n)
        if x.shape != x0.shape:
            raise ValueError(
                f"{n} has shape {x.shape} but {names[0]} has {x0.shape}: the two dumps must match"
            )
    if t.dtype.kind not in "iu":
        raise TypeError(f"target must hold integer class indices, got dtype {t.dtype}")
    lead = x0.shape[:-1]
    if t.shape != lead:
        if t.ndim == 1 and t.shape[0] == math.prod(lead):
            t = t.reshape(lead)
        else:
            raise ValueError(
                f"target has shape {t.shape} but {names[0]} has shape "
                f"{x0.shape}: targets must have shape {lead}"
            )
    offset = 0
    if shift and x0.ndim == 2:  # one sequence across every block
        xs, t, shift, offset = [x[:-1] for x in xs], t[1:], False, 1
    whole = {x0.ndim - 1: -1}
    if shift:
        whole[1] = -1  # never cut a sequence: blocks along B only
    xs = [x.rechunk(whole) for x in xs]
    xs = [xs[0]] + [x.rechunk(xs[0].chunks) for x in xs[1:]]
    return xs, t.rechunk(xs[0].chunks[:-1]), shift, offset


def _parts(
    func: Callable[..., Any], xs: list[da.Array], t: da.Array | None, **kw: Any
) -> list[Any]:
    """One delayed partial result per block of rows: func(blocks, target block, first index
    of the block along each lead axis, **kw). The blocks come from ``to_delayed`` (each array's
    graph optimised): Dask runs each scoring task where its blocks were read. Without a
    target, func gets None for it."""
    xd = [x.to_delayed() for x in xs]
    lead = xs[0].chunks[:-1]
    td = t.to_delayed() if t is not None else None
    starts = [np.cumsum((0,) + c[:-1]) for c in lead]
    task = delayed(func)
    out = []
    for idx in np.ndindex(*xd[0].shape[:-1]):
        first = tuple(int(s[i]) for s, i in zip(starts, idx))
        out.append(task([d[idx + (0,)] for d in xd], None if td is None else td[idx], first, **kw))
    return out


def _tree(
    parts: list[Any], merge: Callable[..., Any], empty: Callable[[], Any], split_every: int
) -> Any:
    """Merge delayed partial results, ``split_every`` at a time, into one delayed result."""
    if split_every < 2:
        raise ValueError(f"split_every must be >= 2, got {split_every}")
    level = parts or [delayed(empty)()]
    while len(level) > 1:
        level = [
            delayed(merge)(*level[i : i + split_every]) for i in range(0, len(level), split_every)
        ]
    return level[0]


def _merge(*parts: Any) -> Any:
    acc = parts[0]
    for p in parts[1:]:
        acc.merge(p)
    return acc


def _finish(result: Any, *args: Any) -> Any:
    return result.result(*args)


def _run(root: Any, compute: bool, scheduler: Any, *args: Any) -> Any:
    out = delayed(_finish)(root, *args)
    return out.compute(scheduler=scheduler) if compute else out


# ----------------------------------------------------------------------------- threads
def use_worker_threads() -> int:
    """In a Dask worker, set fastnll's thread count to the worker's ``nthreads`` (its share of
    the machine's cores); elsewhere leave it. Returns the thread count now in use. Every task
    of this module calls it; call it in your own tasks that use fastnll."""
    from . import get_num_threads, set_num_threads

    try:
        from distributed import get_worker

        n = int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return get_num_threads()
    if get_num_threads() != n:
        set_num_threads(n)
    return n


# ----------------------------------------------------------------------------- block tasks
def _where(
    starts: tuple[int, ...], offset: int, classes: int, ignore_index: int
) -> Callable[[int, tuple[int, ...]], str]:
    """Words a block's bad target at its position in the whole target array."""

    def where(value: int, pos: tuple[int, ...]) -> str:
        full = [s + p for s, p in zip(starts, pos)]
        full[-1] += offset
        return target_message(value, tuple(full), classes, ignore_index)

    return where


def _block_dumps(blocks: list[Any], tb: Any, opts: dict[str, Any]) -> list[Any]:
    from ._inputs import check_declared_kind, prepare

    t = as_block(tb)
    ds = [prepare(as_block(x), t, shift=opts["shift"]) for x in blocks]
    if opts["check_kind"]:
        for d in ds:
            check_declared_kind(d, opts["kind"], opts["ignore_index"], opts["chunk_bytes"])
    return ds


def _eval_block(
    xb: list[Any], tb: Any, starts: tuple[int, ...], *, opts: dict[str, Any]
) -> Evaluator:
    use_worker_threads()
    (d,) = _block_dumps(xb, tb, opts)
    ev = Evaluator(
        progress=False,
        shift=False,
        check_kind=False,
        **{k: opts[k] for k in _shard_runs.EVAL_KEYS if k != "check_kind"},
    )
    c = d.x.shape[-1]
    eval_dump(ev, d, opts["chunk_bytes"], _where(starts, opts["offset"], c, opts["ignore_index"]))
    if ev.n_classes is None:
        ev.n_classes = c
    return ev


def _compare_block(
    bb: list[Any], tb: Any, starts: tuple[int, ...], *, opts: dict[str, Any]
) -> CompareSums:
    use_worker_threads()
    db, dn = _block_dumps(bb, tb, opts)
    acc = CompareSums(opts["kind"], opts["ignore_index"])
    c = db.x.shape[-1]
    compare_dumps(
        acc, db, dn, opts["chunk_bytes"], _where(starts, opts["offset"], c, opts["ignore_index"])
    )
    if acc.n_classes is None:
        acc.n_classes = c
    return acc


def _unit_task(run: Callable[..., Any], u: Any, opts: dict[str, Any]) -> Any:
    use_worker_threads()
    return run(u, opts)


def _file_parts(run: Callable[..., Any], us: list[Any], opts: dict[str, Any]) -> list[Any]:
    task = delayed(_unit_task)
    return [task(run, u, opts) for u in us]


# ----------------------------------------------------------------------------- public API
def evaluate(
    preds: Any,
    target: Any,
    *,
    kind: str = "logits",
    ignore_index: int = -100,
    top_k: Sequence[int] = (1, 5),
    n_bins: int = 15,
    shift: bool = False,
    chunk_bytes: int = 256 << 20,
    check_kind: bool = True,
    dtype: Any = None,
    shape: Any = None,
    target_dtype: Any = None,
    compute: bool = True,
    scheduler: Any = None,
    split_every: int = SPLIT_EVERY,
) -> Any:
    """:func:`fastnll.evaluate` over dask arrays or shard files; the same :class:`EvalReport`.

    ``preds`` [N, C] or [B, T, V] and integer ``target`` of ``preds.shape[:-1]`` (or flat) as
    dask arrays, or both as shard files (paths, globs, directories, lists; matched by sorted
    name; ``dtype``/``shape``/``target_dtype`` describe raw binary files). ``scheduler``: as
    for ``dask.compute`` (default: the active ``distributed.Client``, else threads).
    ``compute=False`` returns a Delayed of the report. Per-row outputs are not offered here."""
    opts: dict[str, Any] = dict(
        kind=kind,
        ignore_index=int(ignore_index),
        top_k=tuple(top_k),
        n_bins=int(n_bins),
        chunk_bytes=int(chunk_bytes),
        check_kind=bool(check_kind),
        shift=bool(shift),
    )
    empty = Evaluator(progress=False, **{k: opts[k] for k in _shard_runs.EVAL_KEYS}, shift=shift)
    if _shards.is_specs(preds) and _shards.is_specs(target):
        opts.update(dtype=dtype, shape=shape, target_dtype=target_dtype)
        us = _shard_runs.plan_eval(preds, target, opts)
        parts = _file_parts(_shard_runs.run_eval_unit, us, opts)
    else:
        (x,), t, opts["shift"], opts["offset"] = _aligned(
            [_as_dask(preds, "preds")], _as_dask(target, "target", target=True), shift, ("preds",)
        )
        parts = _parts(_eval_block, [x], t, opts=opts)
    return _run(_tree(parts, _merge, lambda: empty, split_every), compute, scheduler)


def compare(
    base: Any,
    new: Any,
    target: Any,
    *,
    kind: str = "logits",
    ignore_index: int = -100,
    shift: bool = False,
    chunk_bytes: int = 256 << 20,
    check_kind: bool = True,
    dtype: Any = None,
    shape: Any = None,
    target_dtype: Any = None,
    compute: bool = True,
    scheduler: Any = None,
    split_every: int = SPLIT_EVERY,
) -> Any:
    """:func:`fastnll.compare` over dask arrays or shard files; the same
    :class:`CompareReport` (KL(base || new), NLL difference, top-1 agreement)."""
    opts: dict[str, Any] = dict(
        kind=kind,
        ignore_index=int(ignore_index),
        chunk_bytes=int(chunk_bytes),
        check_kind=bool(check_kind),
        shift=bool(shift),
    )
    empty = CompareSums(kind, int(ignore_index))
    if all(map(_shards.is_specs, (base, new, target))):
        opts.update(dtype=dtype, shape=shape, target_dtype=target_dtype)
        us = _shard_runs.plan_compare(base, new, target, opts)
        parts = _file_parts(_shard_runs.run_compare_unit, us, opts)
    else:
        (xb, xn), t, opts["shift"], opts["offset"] = _aligned(
            [_as_dask(base, "base"), _as_dask(new, "new")],
            _as_dask(target, "target", target=True),
            shift,
            ("base", "new"),
        )
        parts = _parts(_compare_block, [xb, xn], t, opts=opts)
    return _run(_tree(parts, _merge, lambda: empty, split_every), compute, scheduler)


CE_WINDOW = 256 << 20  # bytes of logits per core call in a cross_entropy block


def _ce_block(xb: list[Any], tb: Any, starts: tuple[int, ...], *, opts: dict[str, Any]) -> LossSums:
    from . import _core
    from ._arrays import as_target_array, core_view

    use_worker_threads()
    x, t = as_block(xb[0]), as_block(tb)
    ii, c = opts["ignore_index"], x.shape[-1]
    step = max(1, CE_WINDOW // max(1, x[:1].nbytes)) if x.shape[0] else 1
    acc = LossSums()
    for a in range(0, max(x.shape[0], 1), step):  # windows along the first axis
        xw, tw = x[a : a + step], t[a : a + step]
        view, tag, swap = core_view(xw)
        if opts["soft"]:
            yv, ytag, yswap = core_view(tw)
            s, w = _core.cross_entropy_soft(
                view, tag, swap, yv, ytag, yswap, opts["weight"], opts["label_smoothing"], None
            )
        else:
            ts = as_target_array(tw)
            try:
                s, w = _core.cross_entropy(
                    view, tag, swap, ts, opts["weight"], ii, opts["label_smoothing"], None
                )
            except IndexError:
                bad = np.argwhere((ts != ii) & ((ts < 0) | (ts >= c)))
                if not len(bad):
                    raise
                pos = tuple(int(i) for i in bad[0])
                full = tuple(
                    s0 + p + (a if k == 0 else 0) for k, (s0, p) in enumerate(zip(starts, pos))
                )
                raise IndexError(target_message(int(ts[pos]), full, c, ii)) from None
        acc.merge(LossSums(s, w))
        release(x, t)
    return acc


def cross_entropy(
    logits: Any,
    target: Any,
    weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    compute: bool = True,
    scheduler: Any = None,
    split_every: int = SPLIT_EVERY,
) -> Any:
    """:func:`fastnll.cross_entropy` (PyTorch semantics, classes on the last axis) of a dask
    array of logits ``[..., C]`` against integer targets ``[...]`` or class probabilities of
    the logits' shape, with ``reduction="mean"`` (weighted as PyTorch: divided by the
    summed weights of the non-ignored targets) or ``"sum"``. Returns a float, or a Delayed
    of it with ``compute=False``."""
    from ._losses import _check_ignore_index, _check_reduction, _check_smoothing, _class_weight

    _check_reduction(reduction)
    if reduction == "none":
        raise ValueError(
            "reduction='none' is per row: use dask.array.blockwise with "
            "fastnll.cross_entropy(..., reduction='none') on each block"
        )
    x, t = _as_dask(logits, "logits"), _as_dask(target, "target", target=True)
    if float_tag(x.dtype) is None:
        raise TypeError(
            f"logits have dtype {x.dtype}; accepted dtypes: float32, float64, "
            f"float16, bfloat16 (ml_dtypes)"
        )
    if x.ndim < 1:
        raise ValueError("logits must have at least 1 dimension (classes on the last axis)")
    soft = float_tag(t.dtype) is not None
    if not soft and t.dtype.kind not in "iu":
        raise TypeError(
            f"target must hold integer class indices or class probabilities, got dtype {t.dtype}"
        )
    want = x.shape if soft else x.shape[:-1]
    if t.shape != want:
        raise ValueError(
            f"target shape {t.shape} does not match input shape {x.shape}: expected {want}"
        )
    if x.ndim == 1:  # one row
        x, t = x[None], t[None]
    opts = dict(
        soft=soft,
        weight=_class_weight(weight, x.shape[-1]),
        ignore_index=_check_ignore_index(ignore_index),
        label_smoothing=_check_smoothing(label_smoothing),
    )
    x = x.rechunk({x.ndim - 1: -1})
    lead = x.chunks[:-1]
    if soft:  # the probabilities ride with the logits; the lead axes give the blocks
        parts = _parts(_ce_soft_block, [x, t.rechunk(x.chunks)], None, opts=opts)
    else:
        parts = _parts(_ce_block, [x], t.rechunk(lead), opts=opts)
    return _run(_tree(parts, _merge, LossSums, split_every), compute, scheduler, reduction)


def _ce_soft_block(
    xb: list[Any], tb: Any, starts: tuple[int, ...], *, opts: dict[str, Any]
) -> LossSums:
    return _ce_block([xb[0]], xb[1], starts, opts=opts)


# ----------------------------------------------------------------------------- clusters
@contextlib.contextmanager
def cluster(
    scheduler: str | None = None, workers: int | None = None, quiet: bool = True
) -> Iterator[Any]:
    """A ``distributed.Client`` for the block: connected to ``scheduler`` (an address such as
    ``tcp://host:8786``), or to a new local cluster of ``workers`` processes sharing this
    machine's cores (``threads_per_worker`` = cores // workers, at least 1). ``quiet``: the
    local cluster logs only critical messages (a task's error still reaches the caller as
    its exception), so the command line keeps its one-line errors."""
    from distributed import Client, LocalCluster

    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    n = int(workers or 1)
    threads = max(1, (os.cpu_count() or 1) // n)
    level = logging.CRITICAL if quiet else logging.WARNING
    # dashboard off, its HTTP server on a free port (no warning when 8787 is taken)
    with (
        LocalCluster(
            n_workers=n,
            threads_per_worker=threads,
            processes=True,
            dashboard_address=":0",
            silence_logs=level,
        ) as lc,
        Client(lc) as client,
    ):
        yield client
