"""Mergeable partial results for sharded and distributed runs: comparison sums and loss sums.

Each block, shard or partition of a distributed run fills one of these (or an
:class:`~fastnll.Evaluator`), ships it (a few hundred bytes: sums and counts, never rows) and
they are merged in a tree. Their pickled state carries ``format``: a worker running another
fastnll whose partial sums mean something else fails loudly instead of merging wrong numbers.
"""

from __future__ import annotations

import importlib
import math
from typing import Any, Dict, Optional, Tuple

import numpy as np

from . import _arrays
from ._inputs import check_declared_kind, chunks, name_of, prepare, reraise, shape_of, validate
from ._report import CompareReport

__all__ = ["FORMAT", "CompareSums", "LossSums"]

FORMAT = 1  # bump when the meaning of the fields below changes


class _Versioned:
    """Pickles its fields with the format version; unpickling another version raises."""

    _fields: Tuple[str, ...] = ()

    def __getstate__(self) -> Dict[str, Any]:
        state = {f: getattr(self, f) for f in self._fields}
        state["format"] = (type(self).__name__, FORMAT)
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        fmt = state.get("format")
        if fmt != (type(self).__name__, FORMAT):
            raise ValueError(f"cannot load a fastnll {type(self).__name__} of format {fmt!r}: "
                             f"this fastnll reads format {FORMAT} (mixed fastnll versions "
                             f"across workers?)")
        for f in self._fields:
            setattr(self, f, state[f])


class CompareSums(_Versioned):
    """Mergeable sums of :func:`fastnll.compare`: KL, NLL difference, top-1 agreement."""

    _fields = ("kind", "ignore_index", "n_classes", "n", "n_ignored", "sum_kl", "sum_dnll",
               "sum_dnll_sq", "agree")

    def __init__(self, kind: str = "logits", ignore_index: int = -100) -> None:
        validate(kind, (1,), 1, 1)
        self.kind, self.ignore_index = kind, int(ignore_index)
        self.n_classes: Optional[int] = None
        self.n = self.n_ignored = self.agree = 0
        self.sum_kl = self.sum_dnll = self.sum_dnll_sq = 0.0

    def update(self, base: Any, new: Any, target: Any, *, shift: bool = False,
               chunk_bytes: int = 256 << 20, check_kind: bool = True, dtype: Any = None,
               shape: Any = None, target_dtype: Any = None) -> "CompareSums":
        """Add the rows of two dumps of one shard (inputs as for :func:`fastnll.compare`)."""
        db = prepare(base, target, shift=shift, dtype=dtype, shape=shape,
                     target_dtype=target_dtype)
        dn = prepare(new, target, shift=shift, dtype=dtype, shape=shape,
                     target_dtype=target_dtype)
        db.name, dn.name = name_of(base, "base"), name_of(new, "new")
        if db.x.shape != dn.x.shape:
            raise ValueError(f"{dn.name} has shape {shape_of(dn)} but {db.name} has "
                             f"{shape_of(db)}: the two dumps must match")
        if check_kind:
            check_declared_kind(db, self.kind, self.ignore_index, chunk_bytes)
            check_declared_kind(dn, self.kind, self.ignore_index, chunk_bytes)
        b, t, c = db.x.shape
        if self.n_classes is not None and c != self.n_classes:
            raise ValueError(f"{db.name} has {c} classes but earlier data had {self.n_classes}")
        self.n_classes = c
        core = importlib.import_module(f"{__package__}._core")
        row_bytes = c * (db.x.dtype.itemsize + dn.x.dtype.itemsize)
        for b0, b1, t0, t1 in chunks(b, t, row_bytes, chunk_bytes):
            xb, ts, lead = db.block(b0, b1, t0, t1)
            vb, tb, sb = _arrays.core_view(xb)
            vn, tn, sn = _arrays.core_view(dn.preds_block(b0, b1, t0, t1))
            try:
                r = core.compare_rows(vb, tb, sb, vn, tn, sn, ts, self.kind, self.ignore_index,
                                      lead)
            except (IndexError, ValueError) as exc:
                reraise(exc, db, ts, b0, t0, self.ignore_index)
            self._add(int(r["n"]), int(r["n_ignored"]), float(r["sum_kl"]),
                      float(r["sum_dnll"]), float(r["sum_dnll_sq"]), int(r["top1_agree"]))
        return self

    def _add(self, n: int, ign: int, kl: float, d: float, d2: float, agree: int) -> None:
        self.n += n
        self.n_ignored += ign
        self.sum_kl += kl
        self.sum_dnll += d
        self.sum_dnll_sq += d2
        self.agree += agree

    def merge(self, other: "CompareSums") -> "CompareSums":
        """Add another shard's sums (same kind and ignore_index). Returns self."""
        if not isinstance(other, CompareSums):
            raise TypeError(f"can only merge CompareSums, got {type(other).__name__}")
        if (other.kind, other.ignore_index) != (self.kind, self.ignore_index):
            raise ValueError(f"cannot merge comparisons with different settings: "
                             f"{(other.kind, other.ignore_index)} vs "
                             f"{(self.kind, self.ignore_index)} (kind, ignore_index)")
        if other.n_classes is not None:
            if self.n_classes is not None and other.n_classes != self.n_classes:
                raise ValueError(f"a shard has {other.n_classes} classes but earlier data had "
                                 f"{self.n_classes}")
            self.n_classes = other.n_classes
        self._add(other.n, other.n_ignored, other.sum_kl, other.sum_dnll, other.sum_dnll_sq,
                  other.agree)
        return self

    def result(self) -> CompareReport:
        """The report of everything added, as :func:`fastnll.compare` gives it."""
        from .evaluate import _se

        n, nan = self.n, float("nan")
        return CompareReport(kind=self.kind, n_classes=self.n_classes or 0, rows=n,
                             ignored=self.n_ignored, mean_kl=self.sum_kl / n if n else nan,
                             sum_kl=self.sum_kl, mean_dnll=self.sum_dnll / n if n else nan,
                             sum_dnll=self.sum_dnll, dnll_se=_se(self.sum_dnll,
                                                                 self.sum_dnll_sq, n),
                             top1_agreement=self.agree / n if n else nan)


class LossSums(_Versioned):
    """Mergeable ``(sum of losses, sum of weights)`` of a loss with a ``mean`` reduction:
    mean = total / weight (PyTorch's weighted mean), ``nan`` when the weight is 0."""

    _fields = ("total", "weight")

    def __init__(self, total: float = 0.0, weight: float = 0.0) -> None:
        self.total, self.weight = float(total), float(weight)

    def merge(self, other: "LossSums") -> "LossSums":
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
