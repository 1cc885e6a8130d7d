"""Mergeable partial results for sharded and distributed runs: comparison sums and loss sums.

Each block, shard or partition of a distributed run fills one of these (or an
:class:`~fastnll.Evaluator`), ships it (a few hundred bytes: sums and counts, never rows) and
they are merged in a tree. Their pickled state carries ``format``: a worker running another
fastnll whose partial sums mean something else fails loudly instead of merging wrong numbers.
"""

from __future__ import annotations

import importlib
import math
import mmap
from collections.abc import Iterator
from typing import Any

import numpy as np

from ._inputs import (
    Dump,
    check_declared_kind,
    chunks,
    name_of,
    prepare,
    shape_of,
    validate,
)
from ._report import CompareReport

__all__ = [
    "FORMAT",
    "CompareSums",
    "LossSums",
    "as_block",
    "bad_target",
    "release",
    "target_message",
    "windows",
]

FORMAT = 3  # bump when the meaning of the fields below changes (2: llama.cpp statistics;
# 3: a compare accumulator's histograms no longer also count the exact values it holds)


class _Versioned:
    """Pickles its fields with the format version; unpickling another version raises."""

    _fields: tuple[str, ...] = ()

    def __getstate__(self) -> dict[str, Any]:
        state = {f: getattr(self, f) for f in self._fields}
        state["format"] = (type(self).__name__, FORMAT)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        fmt = state.get("format")
        if fmt != (type(self).__name__, FORMAT):
            raise ValueError(
                f"cannot load a fastnll {type(self).__name__} of format {fmt!r}: "
                f"this fastnll reads format {FORMAT} (mixed fastnll versions "
                f"across workers?)"
            )
        for f in self._fields:
            setattr(self, f, state[f])


class CompareSums(_Versioned):
    """Mergeable :func:`fastnll.compare` statistics (llama.cpp's): the core's sums, and what
    the percentiles need (each row's KL and delta-p while the total stays within
    ``max_exact_rows``, log-spaced histograms always), so merged shards give the same report
    as one process."""

    _fields = ("kind", "ignore_index", "n_classes", "acc")

    def __init__(
        self, kind: str = "logits", ignore_index: int = -100, max_exact_rows: int = 1 << 26
    ) -> None:
        from ._compare_stats import CompareAccumulator

        validate(kind, (1,), 1, 1)
        self.kind, self.ignore_index = kind, int(ignore_index)
        self.n_classes: int | None = None
        self.acc = CompareAccumulator(exact=True, max_exact_rows=int(max_exact_rows))

    @property
    def n(self) -> int:
        return int(self.acc.sums["n"])

    def update(
        self,
        base: Any,
        new: Any,
        target: Any,
        *,
        shift: bool = False,
        chunk_bytes: int = 256 << 20,
        check_kind: bool = True,
        dtype: Any = None,
        shape: Any = None,
        target_dtype: Any = None,
    ) -> CompareSums:
        """Add the rows of two dumps of one shard (inputs as for :func:`fastnll.compare`)."""
        db = prepare(base, target, shift=shift, dtype=dtype, shape=shape, target_dtype=target_dtype)
        dn = prepare(new, target, shift=shift, dtype=dtype, shape=shape, target_dtype=target_dtype)
        db.name, dn.name = name_of(base, "base"), name_of(new, "new")
        if db.x.shape != dn.x.shape:
            raise ValueError(
                f"{dn.name} has shape {shape_of(dn)} but {db.name} has "
                f"{shape_of(db)}: the two dumps must match"
            )
        if check_kind:
            check_declared_kind(db, self.kind, self.ignore_index, chunk_bytes)
            check_declared_kind(dn, self.kind, self.ignore_index, chunk_bytes)
        c = db.x.shape[-1]
        if self.n_classes is not None and c != self.n_classes:
            raise ValueError(f"{db.name} has {c} classes but earlier data had {self.n_classes}")
        self.n_classes = c
        from .evaluate import _compare_chunks  # the one chunk loop of compare

        core = importlib.import_module(f"{__package__}._core")
        _compare_chunks(
            core, db, dn, self.kind, self.ignore_index, chunk_bytes, False, self.acc, None
        )
        return self

    def merge(self, other: CompareSums) -> CompareSums:
        """Add another shard's statistics (same kind and ignore_index). Returns self."""
        if not isinstance(other, CompareSums):
            raise TypeError(f"can only merge CompareSums, got {type(other).__name__}")
        if (other.kind, other.ignore_index) != (self.kind, self.ignore_index):
            raise ValueError(
                f"cannot merge comparisons with different settings: "
                f"{(other.kind, other.ignore_index)} vs "
                f"{(self.kind, self.ignore_index)} (kind, ignore_index)"
            )
        if other.n_classes is not None:
            if self.n_classes is not None and other.n_classes != self.n_classes:
                raise ValueError(
                    f"a shard has {other.n_classes} classes but earlier data had {self.n_classes}"
                )
            self.n_classes = other.n_classes
        self.acc.merge(other.acc)
        return self

    def result(self) -> CompareReport:
        """The report of everything added, as :func:`fastnll.compare` gives it."""
        from .evaluate import compare_report

        return compare_report(self.acc, self.kind, self.n_classes or 0)


class LossSums(_Versioned):
    """Mergeable ``(sum of losses, sum of weights)`` of a loss with a ``mean`` reduction:
    mean = total / weight (PyTorch's weighted mean), ``nan`` when the weight is 0."""

    _fields = ("total", "weight")

    def __init__(self, total: float = 0.0, weight: float = 0.0) -> None:
        self.total, self.weight = float(total), float(weight)

    def merge(self, other: LossSums) -> LossSums:
        """Add another block's sums. Returns self."""
        if not isinstance(other, LossSums):
            raise TypeError(f"can only merge LossSums, got {type(other).__name__}")
        self.total += other.total
        self.weight += other.weight
        return self

    def result(self, reduction: str) -> float:
        """``"sum"`` or ``"mean"`` of everything added."""
        if reduction == "sum":
            return float(self.total)
        return float(self.total / self.weight) if self.weight != 0 else math.nan


def as_block(x: Any) -> np.ndarray:
    """A block as a plain ndarray view (file-backed blocks stay file-backed)."""
    arr = x if isinstance(x, np.ndarray) else np.asarray(x)
    return arr.view(np.ndarray) if type(arr) is not np.ndarray else arr


# ----------------------------------------------------------------------------- windows
def release(*arrays: Any) -> None:
    """Drop the resident pages of memory-mapped arrays from this process (they stay in the
    page cache; touching them again is a minor fault). Mapped file pages count in a process's
    RSS, which Dask's nanny compares with the worker's memory limit: without this, one shard
    larger than the limit gets its worker killed, however little memory it really holds."""
    advice = getattr(mmap, "MADV_DONTNEED", None)
    for a in arrays:
        while a is not None and not isinstance(a, mmap.mmap):
            a = getattr(a, "base", None)
        if a is not None and advice is not None and hasattr(a, "madvise"):
            try:
                a.madvise(advice)
            except (OSError, ValueError):  # pragma: no cover - closed or unsupported
                pass


def windows(
    d: Dump, budget: int
) -> Iterator[tuple[tuple[int, int, int, int], np.ndarray, np.ndarray]]:
    """``((b0, b1, t0, t1), predictions, targets)`` windows of a dump (shift applied) of at
    most ``budget`` bytes of predictions, each window's pages released after it is used."""
    b, t, c = d.x.shape
    for w in chunks(b, t, c * d.x.dtype.itemsize, budget):
        xs, ts, _ = d.block(*w)
        yield w, xs, ts
        release(d.x, d.t)


def bad_target(
    d: Dump, ts: np.ndarray, b0: int, t0: int, ignore_index: int
) -> tuple[int, tuple[int, ...]] | None:
    """(value, position in the user's target array of this dump) of a window's first
    out-of-range target, or None."""
    c = d.x.shape[-1]
    bad = np.argwhere((ts != ignore_index) & ((ts < 0) | (ts >= c)))
    if not len(bad):
        return None
    idx = tuple(int(i) for i in bad[0])
    value = int(ts[idx])
    if d.two_d:
        return value, (t0 + idx[0] + d.shift,)
    return value, (b0 + idx[0], t0 + idx[1] + d.shift)


def target_message(
    value: int, pos: tuple[int, ...], classes: int, ignore_index: int, name: str = ""
) -> str:
    """The out-of-range message fastnll gives everywhere, at a position of the whole input."""
    where = str(pos[0]) if len(pos) == 1 else str(tuple(pos))
    head = f"{name}: " if name else ""
    return (
        f"{head}target {value} at position {where} is out of range for {classes} classes "
        f"(valid: 0..{classes - 1}, or ignore_index={ignore_index})"
    )


def eval_dump(ev: Any, d: Dump, budget: int, where: Any) -> None:
    """Add a dump to an Evaluator (built with shift=False, check_kind=False: the dump has the
    shift applied and the caller checked the kind) window by window; an out-of-range target
    raises IndexError with ``where(value, position)`` as its message."""
    for (b0, _, t0, _), xs, ts in windows(d, budget):
        try:
            ev.update(xs, ts)
        except IndexError:
            bad = bad_target(d, ts, b0, t0, ev.ignore_index)
            if bad is None:
                raise
            raise IndexError(where(*bad)) from None


def compare_dumps(acc: CompareSums, db: Dump, dn: Dump, budget: int, where: Any) -> None:
    """Add two dumps of one shard to comparison sums, window by window (as eval_dump)."""
    if db.x.shape != dn.x.shape:
        raise ValueError(
            f"{dn.name} has shape {shape_of(dn)} but {db.name} has "
            f"{shape_of(db)}: the two dumps must match"
        )
    for (b0, b1, t0, t1), xs, ts in windows(db, budget):
        try:
            acc.update(xs, dn.preds_block(b0, b1, t0, t1), ts, check_kind=False, chunk_bytes=budget)
        except IndexError:
            bad = bad_target(db, ts, b0, t0, acc.ignore_index)
            if bad is None:
                raise
            raise IndexError(where(*bad)) from None
        release(dn.x)
