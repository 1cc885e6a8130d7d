"""Sharded runs: one unit of work per shard position (files opened where the unit runs,
read in windows whose pages are released), run in this process one after another or as Dask
tasks (:mod:`fastnll.dask`); and the command line's shard handling (``fastnll eval 'preds/*.npy'
targets/ [--workers N | --scheduler ADDRESS]``)."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._shards import Shard, Specs, open_shard, pair
from .readers import DumpError, split_key

__all__ = [
    "EVAL_KEYS",
    "Unit",
    "cli_compare",
    "cli_evaluate",
    "compare_files",
    "evaluate_files",
    "plan_compare",
    "plan_eval",
    "run_compare_unit",
    "run_eval_unit",
    "split_cli",
    "units",
]


# ----------------------------------------------------------------------------- units
@dataclass(frozen=True)
class Unit:
    """One task of a sharded run: the shards of one position, and for a 2-d dump scored with
    shift (one sequence across all shards) the next target shard, whose first target the last
    row of this shard predicts."""

    index: int
    preds: tuple[Shard, ...]  # one (eval) or two (compare: base, new)
    target: Shard
    next_target: Shard | None
    chained: bool  # 2-d with shift: row i is scored against target i + 1 of the whole dump


def units(preds: Sequence[Sequence[Shard]], targets: Sequence[Shard], shift: bool) -> list[Unit]:
    """Tasks for ``preds[k]`` (a tuple per position) against ``targets[k]``."""
    chained = shift and len(preds[0][0].shape) == 2
    out = []
    for k, (p, t) in enumerate(zip(preds, targets)):
        nxt = targets[k + 1] if chained and k + 1 < len(targets) else None
        out.append(Unit(k, tuple(p), t, nxt, chained))
    return out


def unit_arrays(u: Unit) -> tuple[list[np.ndarray], np.ndarray, bool]:
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
                    raise IndexError(
                        f"{src}: target {int(part.max())} is out of range (it "
                        f"does not even fit in int64)"
                    )
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


def _unit_dumps(u: Unit, opts: dict[str, Any]) -> tuple[list[Any], Any]:
    """The unit's dumps (shift applied; files opened here) and how to word a bad target."""
    from ._inputs import check_declared_kind, prepare
    from ._partial import target_message

    ii = int(opts["ignore_index"])
    if not u.chained:
        ds = [
            prepare(
                p.source,
                u.target.source,
                shift=bool(opts["shift"]),
                dtype=p.raw_dtype,
                shape=p.raw_shape,
                target_dtype=u.target.raw_dtype,
            )
            for p in u.preds
        ]
        c, tname = ds[0].x.shape[-1], ds[0].tname

        def where(value: int, pos: tuple[int, ...]) -> str:
            return target_message(value, pos, c, ii, tname)
    else:
        xs, ts, _ = unit_arrays(u)
        ds = [prepare(x.view(np.ndarray), ts, shift=False) for x in xs]
        for d, p in zip(ds, u.preds):
            d.name = p.source
        c = ds[0].x.shape[-1]

        def where(value: int, pos: tuple[int, ...]) -> str:
            return chained_message(u, value, pos[0], c, ii)

    if opts["check_kind"]:
        for d in ds:
            check_declared_kind(d, opts["kind"], ii, int(opts["chunk_bytes"]))
    return ds, where


def run_eval_unit(u: Unit, opts: dict[str, Any]) -> Any:
    """An Evaluator filled with one unit: files opened here, read in windows of chunk_bytes
    whose pages are released as it goes; errors name the files."""
    from ._partial import eval_dump
    from .evaluate import Evaluator

    (d,), where = _unit_dumps(u, opts)
    ev = Evaluator(
        shift=False,
        progress=False,
        check_kind=False,
        **{k: opts[k] for k in EVAL_KEYS if k != "check_kind"},
    )
    eval_dump(ev, d, int(opts["chunk_bytes"]), where)
    if ev.n_classes is None:
        ev.n_classes = d.x.shape[-1]
    return ev


def run_compare_unit(u: Unit, opts: dict[str, Any]) -> Any:
    """CompareSums of one unit (base and new shards against the target shard)."""
    from ._partial import CompareSums, compare_dumps

    (db, dn), where = _unit_dumps(u, opts)
    acc = CompareSums(opts["kind"], opts["ignore_index"])
    compare_dumps(acc, db, dn, int(opts["chunk_bytes"]), where)
    if acc.n_classes is None:
        acc.n_classes = db.x.shape[-1]
    return acc


def plan_eval(preds: Specs, target: Specs, opts: dict[str, Any]) -> list[Unit]:
    """Units of an evaluation of shard files (checked: counts, rows, classes)."""
    ps, ts = pair(
        preds,
        target,
        dtype=opts.get("dtype"),
        shape=opts.get("shape"),
        target_dtype=opts.get("target_dtype"),
    )
    return units([(p,) for p in ps], ts, bool(opts["shift"]))


def plan_compare(base: Specs, new: Specs, target: Specs, opts: dict[str, Any]) -> list[Unit]:
    """Units of a comparison of two models' shard files on the same target shards."""
    kw = dict(
        dtype=opts.get("dtype"), shape=opts.get("shape"), target_dtype=opts.get("target_dtype")
    )
    bs, ts = pair(base, target, what="base", **kw)
    ns, _ = pair(new, target, what="new", **kw)
    for b, n in zip(bs, ns):
        if b.shape != n.shape:
            raise DumpError(
                f"{n.source} has shape {n.shape} but {b.source} has {b.shape}: "
                f"the two models' shards must match"
            )
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
def _one_file(group: list[str]) -> bool:
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
        raise UsageError(
            "give --workers (a local cluster) or --scheduler (a running one), not both"
        )
    if not paths:  # a namespace made without positional paths (e.g. by the demo)
        a.shards = None
        return
    k = len(names)
    if len(paths) < k:  # as argparse says it for missing positionals
        raise UsageError(f"the following arguments are required: {', '.join(names[len(paths) :])}")
    if len(paths) % k:
        raise UsageError(
            f"expected {' '.join(n.upper() + '...' for n in names)} (equal "
            f"numbers of each): {len(paths)} paths do not split into {k} groups"
        )
    groups = [paths[i * len(paths) // k : (i + 1) * len(paths) // k] for i in range(k)]
    for n, g in zip(names, groups):
        setattr(a, n, " ".join(g))
    a.shards = None if all(map(_one_file, groups)) and not cluster else groups
    if a.shards is not None and getattr(a, "per_row", None):
        raise UsageError(
            "--per-row takes one predictions file in this process; it cannot be "
            "combined with several shards, --workers or --scheduler"
        )


def _cli_opts(a: Any) -> dict[str, Any]:
    return dict(
        kind=a.kind,
        ignore_index=a.ignore_index,
        shift=a.shift,
        chunk_bytes=a.chunk_mb << 20,
        check_kind=not a.no_kind_check,
        dtype=a.dtype,
        shape=a.shape,
        target_dtype=a.target_dtype,
    )


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
