"""Score whole prediction dumps: loss, perplexity, accuracy, top-k, calibration, comparisons.

The per-row work happens in the Rust core (``_core.eval_rows`` / ``_core.compare_rows``) on
bounded chunks of rows handed over as zero-copy views (memory-mapped files stay file-backed);
this module plans the chunks, checks the inputs, merges the per-chunk sums and turns them into
metrics. Metric definitions and the JSON schema: docs/evaluate.md.
"""

from __future__ import annotations

import importlib
import math
import os
from dataclasses import replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _arrays
from ._inputs import (KINDS, Dump, check_declared_kind, chunks, name_of, prepare, reraise,
                      shape_of, validate)
from . import _report_extras as _extras
from . import _traps
from ._progress import Progress
from ._report import SCHEMA_VERSION, BinStat, CompareReport, EvalReport
from .readers import PathLike

__all__ = ["evaluate", "compare", "Evaluator", "EvalReport", "CompareReport", "BinStat",
           "SCHEMA_VERSION", "KINDS"]


def _core() -> Any:
    """The compiled core, imported lazily (readers and the CLI's help work without it)."""
    return importlib.import_module(f"{__package__}._core")


# ----------------------------------------------------------------------------- evaluator
RowSink = Callable[[int, np.ndarray, np.ndarray, Optional[np.ndarray]], None]
TIES = ("target", "first")


class Evaluator:
    """Mergeable accumulator of :func:`evaluate`'s metrics.

    ``update`` any number of dumps (or shards of one), ``merge`` evaluators filled elsewhere
    (e.g. in other processes: they pickle), then ``result()``. Whole, chunked and merged runs
    agree to floating-point rounding of the sums, and exactly in the calibration bins.
    """

    def __init__(self, *, kind: str = "logits", ignore_index: int = -100,
                 top_k: Sequence[int] = (1, 5), n_bins: int = 15, shift: bool = False,
                 chunk_bytes: int = 256 << 20, progress: Optional[bool] = None,
                 check_kind: bool = True, ties: str = "target") -> None:
        self.top_k = validate(kind, top_k, n_bins, chunk_bytes)
        if ties not in TIES:
            raise ValueError(f"ties must be 'target' or 'first', got {ties!r}")
        self.ties = ties
        self.want_conf = False  # per-row confidence for the sink (equal-mass ECE)
        self.kind, self.ignore_index, self.n_bins = kind, int(ignore_index), int(n_bins)
        self.shift, self.chunk_bytes, self.progress = bool(shift), int(chunk_bytes), progress
        self.check_kind = check_kind
        self._ks = sorted(set(self.top_k) | {1})
        self.n_classes: Optional[int] = None
        self.n = self.n_ignored = 0
        self.sum_nll = self.sum_nll_sq = self.sum_entropy = self.sum_brier = 0.0
        self.topk_correct = np.zeros(len(self._ks), dtype=np.int64)
        self.bin_count = np.zeros(self.n_bins, dtype=np.int64)
        # Σ confidence per bin as exact integers in units of 2**-60 (see _core.eval_rows):
        # chunked, sharded and whole runs give the same bins, ECE and MCE, bit for bit.
        self.bin_conf_fixed: List[int] = [0] * self.n_bins
        self.conf_nonfinite = 0
        self.bin_correct = np.zeros(self.n_bins, dtype=np.int64)

    def _config(self) -> Tuple[Any, ...]:
        return (self.kind, self.ignore_index, self.top_k, self.n_bins, self.ties)

    def _take_classes(self, c: int, who: str) -> None:
        if self.n_classes is not None and self.n_classes != c:
            raise ValueError(f"{who} has {c} classes but earlier data had {self.n_classes}")
        self.n_classes = c

    def update(self, preds: Any, target: Any, *, dtype: Any = None, shape: Any = None,
               target_dtype: Any = None) -> "Evaluator":
        """Add a dump (array, memmap or path; see :func:`evaluate`). Returns self."""
        self._update(prepare(preds, target, shift=self.shift, dtype=dtype, shape=shape,
                             target_dtype=target_dtype), None)
        return self

    def _update(self, d: Dump, sink: Optional[RowSink]) -> None:
        b, t, c = d.x.shape
        self._take_classes(c, d.name)
        _traps.warn_input(d, self.kind, self.ignore_index, bool(d.shift), self.chunk_bytes,
                          self.check_kind)
        if self.check_kind:
            check_declared_kind(d, self.kind, self.ignore_index, self.chunk_bytes)
        core = _core()
        row_bytes = c * d.x.dtype.itemsize
        with Progress(b * t * row_bytes, "eval", enabled=self.progress) as bar:
            for b0, b1, t0, t1 in chunks(b, t, row_bytes, self.chunk_bytes):
                xs, ts, lead = d.block(b0, b1, t0, t1)
                view, tag, swap = _arrays.core_view(xs)
                rows, offset = (b1 - b0) * (t1 - t0), b0 * t + t0
                nll = np.empty(rows, np.float64) if sink else None
                rank = np.empty(rows, np.int64) if sink else None
                conf = np.empty(rows, np.float64) if sink and self.want_conf else None
                try:
                    r = core.eval_rows(view, tag, swap, ts, self.kind, self.ignore_index,
                                       self._ks, self.n_bins, lead, nll, rank, conf,
                                       self.ties)
                except (IndexError, ValueError) as exc:
                    reraise(exc, d, ts, b0, t0, self.ignore_index)
                self._add(r)
                if sink is not None and nll is not None and rank is not None:
                    sink(offset, nll, rank, conf)
                bar.advance(rows * row_bytes)

    def _add(self, r: Dict[str, Any]) -> None:
        self.n += int(r["n"])
        self.n_ignored += int(r["n_ignored"])
        self.sum_nll += float(r["sum_nll"])
        self.sum_nll_sq += float(r["sum_nll_sq"])
        self.sum_entropy += float(r["sum_entropy"])
        self.sum_brier += float(r["sum_brier"])
        self.topk_correct += np.asarray(r["topk_correct"], dtype=np.int64)
        self.bin_count += np.asarray(r["bin_count"], dtype=np.int64)
        self.bin_conf_fixed = [a + int(b) for a, b in zip(self.bin_conf_fixed, r["bin_conf_fixed"])]
        self.conf_nonfinite += int(r["conf_nonfinite"])
        self.bin_correct += np.asarray(r["bin_correct"], dtype=np.int64)

    def merge(self, other: "Evaluator") -> "Evaluator":
        """Add another evaluator's sums (same kind, ignore_index, top_k, n_bins). Returns self."""
        if not isinstance(other, Evaluator):
            raise TypeError(f"can only merge an Evaluator, got {type(other).__name__}")
        if other._config() != self._config():
            raise ValueError(f"cannot merge evaluators with different settings: "
                             f"{other._config()} vs {self._config()} "
                             f"(kind, ignore_index, top_k, n_bins, ties)")
        if other.n_classes is not None:
            self._take_classes(other.n_classes, "the merged evaluator")
        self._add({"n": other.n, "n_ignored": other.n_ignored, "sum_nll": other.sum_nll,
                   "sum_nll_sq": other.sum_nll_sq, "sum_entropy": other.sum_entropy,
                   "sum_brier": other.sum_brier, "topk_correct": other.topk_correct,
                   "bin_count": other.bin_count, "bin_conf_fixed": other.bin_conf_fixed,
                   "bin_correct": other.bin_correct, "conf_nonfinite": other.conf_nonfinite})
        return self

    def result(self) -> EvalReport:
        """The metrics of everything added so far."""
        n, nan = self.n, float("nan")
        mean = self.sum_nll / n if n else nan
        se = _se(self.sum_nll, self.sum_nll_sq, n)
        correct = dict(zip(self._ks, (int(v) for v in self.topk_correct)))
        bins, gaps = [], []
        one = 1 << 60  # the fixed-point unit: exact integer arithmetic, one rounding per value
        bad = self.conf_nonfinite > 0
        for i in range(self.n_bins):
            cnt, fixed = int(self.bin_count[i]), self.bin_conf_fixed[i]
            conf = acc = None
            if cnt:
                conf = nan if bad and i == 0 else fixed / (cnt * one)
                acc = int(self.bin_correct[i]) / cnt
                gaps.append(nan if bad else abs(int(self.bin_correct[i]) * one - fixed) / (cnt * one))
            bins.append(BinStat(i / self.n_bins, (i + 1) / self.n_bins, cnt, conf, acc))
        gap_sum = sum(abs(int(c) * one - f) for c, f in zip(self.bin_correct, self.bin_conf_fixed))
        ece = nan if not n or bad else gap_sum / (n * one)
        return EvalReport(
            kind=self.kind, n_classes=self.n_classes or 0, rows=n, ignored=self.n_ignored,
            sum_nll=self.sum_nll, mean_nll=mean, nll_se=se, perplexity=_exp(mean),
            bits_per_token=mean / math.log(2), accuracy=correct[1] / n if n else nan,
            top_k_accuracy={k: (correct[k] / n if n else nan) for k in self.top_k},
            mean_entropy=self.sum_entropy / n if n else nan,
            brier=self.sum_brier / n if n else nan, ece=ece,
            mce=nan if bad or not gaps else max(gaps), n_bins=self.n_bins, bins=tuple(bins),
            ties=self.ties)


def _se(s: float, sq: float, n: int) -> float:
    """Standard error of the mean from a sum and a sum of squares (sample variance)."""
    if n < 2:
        return float("nan")
    var = max((sq - s * s / n) / (n - 1), 0.0)
    return math.sqrt(var / n)


def _exp(v: float) -> float:
    try:
        return math.exp(v)
    except OverflowError:
        return float("inf")


def _row_store(d: Dump, per_row: Union[bool, PathLike]
               ) -> Tuple[RowSink, np.ndarray, np.ndarray]:
    """Per-row outputs in memory (per_row=True) or streamed to a structured .npy file."""
    rec_dtype = [("nll", "<f8"), ("rank", "<i8")]
    if per_row is True:  # plain contiguous arrays are nicer than record fields in memory
        nll = np.empty(d.out_shape, np.float64)
        rank = np.empty(d.out_shape, np.int64)
        flat_nll, flat_rank = nll.reshape(-1), rank.reshape(-1)
    else:
        assert per_row is not False
        assert per_row is not False
        rec = np.lib.format.open_memmap(os.fspath(per_row), mode="w+", dtype=rec_dtype,
                                        shape=d.out_shape)
        nll, rank = rec["nll"], rec["rank"]
        flat = rec.reshape(-1)  # the file is C-contiguous: a view
        flat_nll, flat_rank = flat["nll"], flat["rank"]

    def sink(offset: int, n: np.ndarray, r: np.ndarray, conf: Optional[np.ndarray] = None
             ) -> None:
        flat_nll[offset:offset + n.size] = n
        flat_rank[offset:offset + r.size] = r

    return sink, nll, rank


def evaluate(preds: Any, target: Any, *, kind: str = "logits", ignore_index: int = -100,
             top_k: Sequence[int] = (1, 5), n_bins: int = 15, shift: bool = False,
             per_row: Union[bool, PathLike] = False, chunk_bytes: int = 256 << 20,
             progress: Optional[bool] = None, dtype: Any = None, shape: Any = None,
             target_dtype: Any = None, check_kind: bool = True, mask: Any = None,
             min_position: int = 0, per_position: bool = False, per_sequence: bool = False,
             per_class: bool = False, n_bytes: Any = None, n_words: Any = None,
             clip: Optional[float] = None, classwise_ece: bool = False,
             equal_mass_ece: bool = False, ties: str = "target") -> EvalReport:
    """Score a whole dump in one streaming read; see docs/evaluate.md.

    ``preds``: [N, C] or [B, T, V] array, memmap, or a path (.npy, .npz[:key],
    .safetensors[:key], raw binary with ``dtype``/``shape``). ``target``: integer class
    indices of shape preds.shape[:-1] (or flat), array or path (raw: ``target_dtype``, default
    int64). ``shift=True`` scores preds[:, :-1] against target[:, 1:]. ``per_row=True`` adds
    ``row_nll``/``row_rank`` arrays; a path instead streams them to a .npy of records
    (``nll``, ``rank``). ``progress``: None = a bar on stderr only when it is a terminal.

    Extras (``report.extras``, docs/evaluate.md): ``mask=`` (0 = not scored, shaped like the
    targets) and ``min_position=`` drop rows before scoring; ``per_position``,
    ``per_sequence``, ``per_class``, ``n_bytes=``/``n_words=`` (bits per byte, word
    perplexity) and ``clip=`` (probabilities: NLL of max(p_t, clip)) are computed from the
    per-row NLL and rank of the same read; ``classwise_ece=True`` (C <= 4096) re-reads each
    chunk for its softmax; ``equal_mass_ece=True`` adds ECE over ``n_bins`` bins of equal row
    counts. ``ties="first"`` scores top-1 by the first maximal index (torch's argmax) instead
    of counting a tie for the target.
    """
    ev = Evaluator(kind=kind, ignore_index=ignore_index, top_k=top_k, n_bins=n_bins,
                   shift=shift, chunk_bytes=chunk_bytes, progress=progress,
                   check_kind=check_kind, ties=ties)
    if mask is not None or min_position:
        target = _extras.masked_target(target, mask, min_position, ignore_index, shift)
    d = prepare(preds, target, shift=shift, dtype=dtype, shape=shape,
                target_dtype=target_dtype)
    ex = _extras.make(d, kind, per_position, per_sequence, per_class, n_bytes, n_words, clip,
                      classwise_ece, n_bins, equal_mass_ece)
    ev.want_conf = bool(equal_mass_ece)
    if (per_row is False or per_row is None) and ex is None:
        ev._update(d, None)
        return ev.result()
    sink, nll, rank = _row_store(d, per_row) if per_row else (None, None, None)
    ev._update(d, _extras.chain(d, sink, ex, kind))
    if isinstance(nll, np.memmap):
        nll.flush()  # flushes the whole record file
    rep = ev.result()
    if per_row:
        rep = replace(rep, row_nll=nll, row_rank=rank)
    return rep if ex is None else _extras.attach(rep, ex)


# ----------------------------------------------------------------------------- compare
_COMPARE_FIELDS = (("kl", "<f8"), ("dp", "<f8"), ("nll_base", "<f8"), ("nll_new", "<f8"),
                   ("same_top1", "i1"))


def _compare_store(d: Dump, per_row: Union[bool, PathLike]
                   ) -> Tuple[Any, Dict[str, Any], Optional[Tuple[str, str]]]:
    """Per-row compare outputs in memory (True) or streamed to a .npy of records (a path):
    written to a hidden temporary file beside it, renamed over it only on success."""
    if per_row is True:
        arrays = {k: np.empty(d.out_shape, np.dtype(t)) for k, t in _COMPARE_FIELDS}
        flat = {k: a.reshape(-1) for k, a in arrays.items()}
        return None, {"arrays": arrays, "flat": flat}, None
    assert per_row is not False
    final = os.fspath(per_row)
    head, tail = os.path.split(final)
    tmp = os.path.join(head, f".{tail}.{os.getpid()}.partial")
    try:
        rec = np.lib.format.open_memmap(tmp, mode="w+", dtype=list(_COMPARE_FIELDS),
                                        shape=d.out_shape)
    except OSError as exc:
        raise OSError(f"{final}: cannot write per-row records ({exc.strerror or exc})") from None
    arrays = {k: rec[k] for k, _ in _COMPARE_FIELDS}
    flat_rec = rec.reshape(-1)
    flat = {k: flat_rec[k] for k, _ in _COMPARE_FIELDS}
    return rec, {"arrays": arrays, "flat": flat}, (tmp, final)


def _compare_chunks(core: Any, db: Dump, dn: Dump, kind: str, ignore_index: int,
                    chunk_bytes: int, progress: Optional[bool], acc: Any,
                    store: Optional[Dict[str, Any]]) -> None:
    """One read of both dumps, chunk by chunk: the core's sums and per-row outputs."""
    b, t, c = db.x.shape
    row_bytes = c * (db.x.dtype.itemsize + dn.x.dtype.itemsize)
    with Progress(b * t * row_bytes, "compare", enabled=progress) as bar:
        for b0, b1, t0, t1 in chunks(b, t, row_bytes, chunk_bytes):
            xb, ts, lead = db.block(b0, b1, t0, t1)
            vb, tb, sb = _arrays.core_view(xb)
            vn, tn, sn = _arrays.core_view(dn.preds_block(b0, b1, t0, t1))
            rows, offset = (b1 - b0) * (t1 - t0), b0 * t + t0
            outs = [np.empty(rows, np.float64) for _ in range(4)] + [np.empty(rows, np.int8)]
            try:
                r = core.compare_rows(vb, tb, sb, vn, tn, sn, ts, kind, ignore_index, lead,
                                      *outs)
            except (IndexError, ValueError) as exc:
                reraise(exc, db, ts, b0, t0, ignore_index)
            acc.add(r, outs[0], outs[1], outs[4])
            if store is not None:
                for (k, _), v in zip(_COMPARE_FIELDS, outs):
                    store["flat"][k][offset:offset + rows] = v
            bar.advance(rows * row_bytes)


def compare(base: Any, new: Any, target: Any, *, kind: str = "logits",
            ignore_index: int = -100, shift: bool = False, per_row: Union[bool, PathLike] = False,
            max_exact_rows: int = 1 << 26, chunk_bytes: int = 256 << 20,
            progress: Optional[bool] = None, dtype: Any = None, shape: Any = None,
            target_dtype: Any = None, check_kind: bool = True) -> CompareReport:
    """llama.cpp ``--kl-divergence`` statistics of two dumps (same shape; dtypes may differ) in
    one read of each: KL(base || new) mean +- SE and percentiles, delta-p = p_new(t) - p_base(t)
    mean +- SE, percentiles and RMS, same top-1 +- SE, PPL(base), PPL(new), their ratio and
    difference +- SE. Inputs as for :func:`evaluate`. ``per_row=True`` adds ``row_kl``,
    ``row_dp``, ``row_nll_base``, ``row_nll_new`` (NaN for ignored rows) and ``row_same_top1``
    (int8, -1 for ignored rows); a path streams them to a .npy of records instead.
    Percentiles are exact (16 bytes per row held) up to ``max_exact_rows`` scored-or-not rows,
    else read from log-spaced histograms (error stated in the report); docs/evaluate.md."""
    from ._compare_stats import CompareAccumulator, summary

    validate(kind, (1,), 1, chunk_bytes)
    if int(max_exact_rows) < 0:
        raise ValueError(f"max_exact_rows must be >= 0, got {max_exact_rows}")
    db = prepare(base, target, shift=shift, dtype=dtype, shape=shape, target_dtype=target_dtype)
    dn = prepare(new, target, shift=shift, dtype=dtype, shape=shape, target_dtype=target_dtype)
    db.name, dn.name = name_of(base, "base"), name_of(new, "new")
    if db.x.shape != dn.x.shape:
        raise ValueError(f"{dn.name} has shape {shape_of(dn)} but {db.name} has "
                         f"{shape_of(db)}: the two dumps must match")
    _traps.warn_input(db, kind, ignore_index, shift, chunk_bytes, check_kind)
    _traps.warn_input(dn, kind, ignore_index, shift, chunk_bytes, check_kind, shift_warned=True)
    if check_kind:
        check_declared_kind(db, kind, ignore_index, chunk_bytes)
        check_declared_kind(dn, kind, ignore_index, chunk_bytes)
    b, t, c = db.x.shape
    core = _core()
    acc = CompareAccumulator(exact=b * t <= int(max_exact_rows))
    rec, store, files = (None, None, None) if per_row is False or per_row is None else \
        _compare_store(db, per_row)
    try:
        _compare_chunks(core, db, dn, kind, int(ignore_index), chunk_bytes, progress, acc,
                        store)
    except BaseException:
        if files is not None:  # never a half-written (or clobbered) records file
            del rec, store
            try:
                os.unlink(files[0])
            except OSError:
                pass
        raise
    if rec is not None and files is not None:
        rec.flush()
        os.replace(*files)
    s = summary(acc.sums)
    kl_p, dp_p, method, err = acc.percentiles()
    edges, counts = acc.kl_hist.coarse(10)
    rep = CompareReport(
        kind=kind, n_classes=c, rows=int(acc.sums["n"]), ignored=int(acc.sums["n_ignored"]),
        sum_kl=float(acc.sums["sum_kl"]), sum_dnll=float(acc.sums["sum_dnll"]),
        kl_percentiles=kl_p, dp_percentiles=dp_p, percentile_method=method,
        percentile_rel_error=err, kl_hist_edges=edges, kl_hist_counts=counts,
        **{k: v for k, v in s.items() if k in CompareReport.SCALARS})  # type: ignore[arg-type]
    if store is not None:
        a = store["arrays"]
        rep = replace(rep, row_kl=a["kl"], row_dp=a["dp"], row_nll_base=a["nll_base"],
                      row_nll_new=a["nll_new"], row_same_top1=a["same_top1"])
    return rep
