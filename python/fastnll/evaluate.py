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
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from . import _arrays, _traps
from . import _report_extras as _extras
from ._atomic import AtomicOutput, check_output_path
from ._inputs import (
    KINDS,
    Dump,
    check_declared_kind,
    check_settings,
    chunks,
    name_of,
    prepare,
    reraise,
    shape_of,
    temp_chunk_bytes,
)
from ._options import check_bool, check_per_row
from ._progress import Progress
from ._report import SCHEMA_VERSION, BinStat, CompareReport, EvalReport
from .readers import PathLike, split_key

__all__ = [
    "KINDS",
    "SCHEMA_VERSION",
    "BinStat",
    "CompareReport",
    "EvalReport",
    "Evaluator",
    "compare",
    "evaluate",
]


def _core() -> Any:
    """The compiled core, imported lazily (readers and the CLI's help work without it)."""
    return importlib.import_module(f"{__package__}._core")


# ----------------------------------------------------------------------------- evaluator
RowSink = Callable[[int, np.ndarray, np.ndarray, np.ndarray | None], None]
TIES = ("target", "first")

STATE_FORMAT = 1  # version of Evaluator.__getstate__'s dict (its "format" key)
_ONE = 1 << 60  # the fixed-point unit of bin_conf_fixed
_COUNTS = ("n", "n_ignored", "conf_nonfinite")
_SUMS = ("sum_nll", "sum_nll_sq", "sum_entropy", "sum_brier")
_VECTORS = ("topk_correct", "bin_count", "bin_conf_fixed", "bin_correct")


class Evaluator:
    """Mergeable accumulator of :func:`evaluate`'s metrics.

    ``update`` any number of dumps (or shards of one), ``merge`` evaluators filled elsewhere
    (e.g. in other processes: they pickle), then ``result()``. Whole, chunked and merged runs
    agree to floating-point rounding of the sums, and exactly in the calibration bins.

    An ``update`` is all-or-nothing: it is computed into a fresh accumulator and added only
    once every chunk succeeded (a bad target in the last chunk, a truncated file or Ctrl-C
    leave the evaluator as it was, ``n_classes`` included). One evaluator may be updated and
    merged from several threads at once (a lock guards the sums; the reading runs outside
    it). The pickled state is a dict with ``"format": 1``, validated when loaded and before
    a merge (non-negative counts, counts within the rows, consistent bins, finite sums where
    they must be): a tampered or foreign state is a ValueError, never silently merged.
    """

    def __init__(
        self,
        *,
        kind: str = "logits",
        ignore_index: int = -100,
        top_k: Sequence[int] = (1, 5),
        n_bins: int = 15,
        shift: bool = False,
        chunk_bytes: int = 256 << 20,
        progress: bool | None = None,
        check_kind: bool = True,
        ties: str = "target",
    ) -> None:
        (
            self.kind,
            self.top_k,
            self.n_bins,
            self.chunk_bytes,
            self.ignore_index,
            self.shift,
            self.check_kind,
        ) = check_settings(kind, top_k, n_bins, chunk_bytes, ignore_index, shift, check_kind)
        if ties not in TIES:
            raise ValueError(f"ties must be 'target' or 'first', got {ties!r}")
        self.ties = ties  # the top-1 rule (docs/evaluate.md)
        self.want_conf = False  # per-row confidence for the sink (equal-mass ECE)
        if progress is not None:
            check_bool("progress", progress)
        self.progress = progress
        self._ks = sorted(set(self.top_k) | {1})
        self._lock = threading.Lock()
        self.n_classes: int | None = None
        self._zero()

    def _zero(self) -> None:
        self.n = self.n_ignored = 0
        self.sum_nll = self.sum_nll_sq = self.sum_entropy = self.sum_brier = 0.0
        self.topk_correct = np.zeros(len(self._ks), dtype=np.int64)
        self.bin_count = np.zeros(self.n_bins, dtype=np.int64)
        # Σ confidence per bin as exact integers in units of 2**-60 (see _core.eval_rows):
        # chunked, sharded and whole runs give the same bins, ECE and MCE, bit for bit.
        self.bin_conf_fixed: list[int] = [0] * self.n_bins
        self.conf_nonfinite = 0
        self.bin_correct = np.zeros(self.n_bins, dtype=np.int64)

    def _settings(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "ignore_index": self.ignore_index,
            "top_k": self.top_k,
            "n_bins": self.n_bins,
            "shift": self.shift,
            "chunk_bytes": self.chunk_bytes,
            "progress": self.progress,
            "check_kind": self.check_kind,
            "ties": self.ties,
        }

    def _config(self) -> tuple[Any, ...]:
        return (self.kind, self.ignore_index, self.top_k, self.n_bins, self.ties)

    def _fresh(self) -> Evaluator:
        return Evaluator(**self._settings())

    def _check_classes(self, c: int, who: str) -> None:
        if self.n_classes is not None and self.n_classes != c:
            raise ValueError(f"{who} has {c} classes but earlier data had {self.n_classes}")

    def update(
        self,
        preds: Any,
        target: Any,
        *,
        dtype: Any = None,
        shape: Any = None,
        target_dtype: Any = None,
    ) -> Evaluator:
        """Add a dump (array, memmap or path; see :func:`evaluate`). Returns self. All or
        nothing: on any error the evaluator is unchanged."""
        d = prepare(
            preds, target, shift=self.shift, dtype=dtype, shape=shape, target_dtype=target_dtype
        )
        try:
            part = self._fresh()
            part._update(d, None, self)
        finally:
            d.close()
        self._absorb(part.__getstate__(), d.name)
        return self

    def _update(
        self,
        d: Dump,
        sink: RowSink | None,
        owner: Evaluator | None = None,
        on_sums: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        """Fill this (fresh) accumulator from `d`; `owner` is the evaluator it will be
        merged into (checked for the number of classes before any work); `on_sums` takes each
        chunk's core sums."""
        b, t, c = d.x.shape
        (owner or self)._check_classes(c, d.name)
        self.n_classes = c
        _traps.warn_input(
            d, self.kind, self.ignore_index, bool(d.shift), self.chunk_bytes, self.check_kind
        )
        if self.check_kind:
            check_declared_kind(d, self.kind, self.ignore_index, self.chunk_bytes)
        core = _core()
        row_bytes = c * d.x.dtype.itemsize
        # with per-row outputs: NLL, rank and maybe confidence, 8 bytes each, per chunk
        step = (
            temp_chunk_bytes(self.chunk_bytes, row_bytes, 24)
            if sink is not None
            else self.chunk_bytes
        )
        with Progress(b * t * row_bytes, "eval", enabled=self.progress) as bar:
            for b0, b1, t0, t1 in chunks(b, t, row_bytes, step):
                xs, ts, lead = d.block(b0, b1, t0, t1)
                view, tag, swap = _arrays.core_view(xs)
                rows, offset = (b1 - b0) * (t1 - t0), b0 * t + t0
                nll = np.empty(rows, np.float64) if sink else None
                rank = np.empty(rows, np.int64) if sink else None
                conf = np.empty(rows, np.float64) if sink and self.want_conf else None
                try:
                    r = core.eval_rows(
                        view,
                        tag,
                        swap,
                        ts,
                        self.kind,
                        self.ignore_index,
                        self._ks,
                        self.n_bins,
                        lead,
                        nll,
                        rank,
                        conf,
                        self.ties,
                    )
                except (IndexError, ValueError) as exc:
                    reraise(exc, d, ts, b0, t0, self.ignore_index)
                self._add(r)
                if on_sums is not None:
                    on_sums(r)
                if sink is not None and nll is not None and rank is not None:
                    sink(offset, nll, rank, conf)
                bar.advance(rows * row_bytes)

    def _add(self, r: dict[str, Any]) -> None:
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

    def _absorb(self, state: dict[str, Any], who: str) -> None:
        """Add a validated state's sums, under the lock (all checks before any change)."""
        with self._lock:
            if state["n_classes"] is not None:
                self._check_classes(state["n_classes"], who)
                self.n_classes = state["n_classes"]
            self._add(state)

    def merge(self, other: Evaluator) -> Evaluator:
        """Add another evaluator's sums (same kind, ignore_index, top_k, n_bins). Returns self.
        The other's state is validated first; on any error nothing is added."""
        if not isinstance(other, Evaluator):
            raise TypeError(f"can only merge an Evaluator, got {type(other).__name__}")
        state = _check_state(other.__getstate__())  # a snapshot, under the other's lock
        if other._config() != self._config():
            raise ValueError(
                f"cannot merge evaluators with different settings: "
                f"{other._config()} vs {self._config()} "
                f"(kind, ignore_index, top_k, n_bins, ties)"
            )
        self._absorb(state, "the merged evaluator")
        return self

    def __getstate__(self) -> dict[str, Any]:
        """The versioned state (``"format": 1``): settings, ``n_classes`` and the sums, as
        plain Python values."""
        lock = getattr(self, "_lock", None)
        with lock if lock is not None else threading.Lock():
            state: dict[str, Any] = {
                "format": STATE_FORMAT,
                **self._settings(),
                "top_k": list(self.top_k),
                "n_classes": self.n_classes,
            }
            for k in _COUNTS:
                state[k] = int(getattr(self, k))
            for k in _SUMS:
                state[k] = float(getattr(self, k))
            for k in _VECTORS:
                state[k] = [int(v) for v in getattr(self, k)]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        st = _check_state(state)
        Evaluator.__init__(
            self,
            **{
                k: st[k]
                for k in (
                    "kind",
                    "ignore_index",
                    "top_k",
                    "n_bins",
                    "shift",
                    "chunk_bytes",
                    "progress",
                    "check_kind",
                )
            },
            ties=st.get("ties", "target"),
        )
        self.n_classes = st["n_classes"]
        self._add(st)

    def result(self) -> EvalReport:
        """The metrics of everything added so far."""
        with self._lock:
            return self._result()

    def _result(self) -> EvalReport:
        n, nan = self.n, float("nan")
        mean = self.sum_nll / n if n else nan
        se = _se(self.sum_nll, self.sum_nll_sq, n)
        correct = dict(zip(self._ks, (int(v) for v in self.topk_correct)))
        bins, gaps = [], []
        one = _ONE  # the fixed-point unit: exact integer arithmetic, one rounding per value
        bad = self.conf_nonfinite > 0
        for i in range(self.n_bins):
            cnt, fixed = int(self.bin_count[i]), self.bin_conf_fixed[i]
            conf = acc = None
            if cnt:
                conf = nan if bad and i == 0 else fixed / (cnt * one)
                acc = int(self.bin_correct[i]) / cnt
                gaps.append(
                    nan if bad else abs(int(self.bin_correct[i]) * one - fixed) / (cnt * one)
                )
            bins.append(BinStat(i / self.n_bins, (i + 1) / self.n_bins, cnt, conf, acc))
        gap_sum = sum(abs(int(c) * one - f) for c, f in zip(self.bin_correct, self.bin_conf_fixed))
        ece = nan if not n or bad else gap_sum / (n * one)
        return EvalReport(
            kind=self.kind,
            n_classes=self.n_classes or 0,
            rows=n,
            ignored=self.n_ignored,
            sum_nll=self.sum_nll,
            mean_nll=mean,
            nll_se=se,
            perplexity=_exp(mean),
            bits_per_token=mean / math.log(2),
            accuracy=correct[1] / n if n else nan,
            top_k_accuracy={k: (correct[k] / n if n else nan) for k in self.top_k},
            mean_entropy=self.sum_entropy / n if n else nan,
            brier=self.sum_brier / n if n else nan,
            ece=ece,
            mce=nan if bad or not gaps else max(gaps),
            n_bins=self.n_bins,
            bins=tuple(bins),
            ties=self.ties,
        )


def _int_list(v: Any, n: int, what: str) -> list[int]:
    if not isinstance(v, (list, tuple, np.ndarray)) or len(v) != n:
        raise ValueError(f"{what} must be a list of {n} integers")
    out = []
    for x in v:
        if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)) or x < 0:
            raise ValueError(f"{what} must hold integers >= 0, got {x!r}")
        out.append(int(x))
    return out


def _check_state(state: Any) -> dict[str, Any]:
    """A validated copy of an Evaluator state (see Evaluator.__getstate__), else ValueError
    saying what is wrong."""
    fmt = state.get("format") if isinstance(state, dict) else None
    if fmt != STATE_FORMAT:
        raise ValueError(
            f"not a fastnll Evaluator state of format {STATE_FORMAT} (format "
            f"{fmt!r}): written by another version, or not an Evaluator"
        )
    need = {
        "kind",
        "ignore_index",
        "top_k",
        "n_bins",
        "shift",
        "chunk_bytes",
        "progress",
        "check_kind",
        "n_classes",
        *_COUNTS,
        *_SUMS,
        *_VECTORS,
    }
    missing = need - set(state)
    if missing:
        raise ValueError(f"Evaluator state lacks {', '.join(sorted(missing))}")
    head = "invalid Evaluator state: "
    st = dict(state)
    try:
        (
            st["kind"],
            top_k,
            st["n_bins"],
            st["chunk_bytes"],
            st["ignore_index"],
            st["shift"],
            st["check_kind"],
        ) = check_settings(
            st["kind"],
            st["top_k"],
            st["n_bins"],
            st["chunk_bytes"],
            st["ignore_index"],
            st["shift"],
            st["check_kind"],
        )
        if st["progress"] is not None:
            check_bool("progress", st["progress"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{head}{exc}") from None
    if list(top_k) != list(st["top_k"]):
        raise ValueError(f"{head}top_k {st['top_k']!r} is not sorted and distinct")
    st["top_k"] = top_k
    if st.get("ties", "target") not in TIES:  # states written before ties= have none
        raise ValueError(f"{head}ties must be 'target' or 'first', got {st['ties']!r}")
    c = st["n_classes"]
    if c is not None and (isinstance(c, bool) or not isinstance(c, int) or c < 1):
        raise ValueError(f"{head}n_classes must be None or an integer >= 1, got {c!r}")
    for k in _COUNTS:
        v = st[k]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{head}{k} must be an integer >= 0, got {v!r}")
        st[k] = int(v)
    for k in _SUMS:
        v = st[k]
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
            # a corrupt state file is a bad value, not a caller's type error
            raise ValueError(f"{head}{k} must be a number, got {v!r}")  # noqa: TRY004
        st[k] = float(v)
    ks, nb, n = sorted(set(top_k) | {1}), st["n_bins"], st["n"]
    try:
        st["topk_correct"] = _int_list(st["topk_correct"], len(ks), "topk_correct")
        st["bin_count"] = _int_list(st["bin_count"], nb, "bin_count")
        st["bin_correct"] = _int_list(st["bin_correct"], nb, "bin_correct")
        st["bin_conf_fixed"] = _int_list(st["bin_conf_fixed"], nb, "bin_conf_fixed")
    except ValueError as exc:
        raise ValueError(f"{head}{exc}") from None
    problems = []
    if n and c is None:
        problems.append("rows were scored but n_classes is None")
    if any(v > n for v in st["topk_correct"]) or st["topk_correct"] != sorted(st["topk_correct"]):
        problems.append("top-k counts exceed the rows or decrease with k")
    if sum(st["bin_count"]) != n:
        problems.append(f"the bins hold {sum(st['bin_count'])} rows, not n = {n}")
    if any(a > b for a, b in zip(st["bin_correct"], st["bin_count"])):
        problems.append("a bin has more correct rows than rows")
    if sum(st["bin_correct"]) != st["topk_correct"][0]:
        problems.append("the bins' correct rows differ from the top-1 count")
    if st["conf_nonfinite"] > n:
        problems.append("more non-finite confidences than rows")
    s_nll, s_sq, s_ent, s_br = (st[k] for k in _SUMS)
    if n == 0 and any(v != 0.0 for v in (s_nll, s_sq, s_ent, s_br)):
        problems.append("sums are not 0 with no rows")
    slack = 1e-6 * n  # rounding of sums of values >= 0 computed as differences
    if s_sq < 0:
        problems.append("sum_nll_sq is negative")
    if st["kind"] == "logits":  # p = softmax(x): these hold for any logits, NaN aside
        if any(f > b * _ONE for f, b in zip(st["bin_conf_fixed"], st["bin_count"])):
            problems.append("a bin's confidence sum exceeds its rows")
        if s_nll < -slack:
            problems.append(f"sum_nll {s_nll} is negative")
        if not (math.isnan(s_br) or -slack <= s_br <= 2.0 * n + slack):
            problems.append(f"sum_brier {s_br} is outside [0, 2 n]")
        if not (math.isnan(s_ent) or -slack <= s_ent < math.inf):
            problems.append(f"sum_entropy {s_ent} is negative or infinite")
    if problems:
        raise ValueError(head + "; ".join(problems))
    return st


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


REC_DTYPE = np.dtype([("nll", "<f8"), ("rank", "<i8")])


def _input_paths(*sources: Any) -> list[str]:
    """The files behind path inputs ("dump.npz:key" -> dump.npz), for the same-file check."""
    return [os.fspath(split_key(s)[0]) for s in sources if isinstance(s, (str, os.PathLike))]


def _row_sink(d: Dump) -> tuple[RowSink, np.ndarray, np.ndarray]:
    """Per-row outputs in memory (per_row=True)."""
    nll = np.empty(d.out_shape, np.float64)
    rank = np.empty(d.out_shape, np.int64)
    flat_nll, flat_rank = nll.reshape(-1), rank.reshape(-1)

    def sink(offset: int, n: np.ndarray, r: np.ndarray, conf: np.ndarray | None = None) -> None:
        flat_nll[offset : offset + n.size] = n
        flat_rank[offset : offset + r.size] = r

    return sink, nll, rank


def _file_sink(d: Dump, out: AtomicOutput) -> RowSink:
    """Per-row records streamed, in order, to the open temporary .npy of ``out`` (plain
    writes, never through a memory map: a full disk is an OSError, not a SIGBUS)."""
    fh = out.file
    np.lib.format.write_array_header_2_0(
        fh,
        {
            "descr": np.lib.format.dtype_to_descr(REC_DTYPE),
            "fortran_order": False,
            "shape": tuple(d.out_shape),
        },
    )
    out.preallocate(fh.tell() + math.prod(d.out_shape) * REC_DTYPE.itemsize)
    written = [0]

    def sink(offset: int, n: np.ndarray, r: np.ndarray, conf: np.ndarray | None = None) -> None:
        if offset != written[0]:  # chunks() yields rows in flat order
            raise AssertionError(f"per-row records out of order: {offset} != {written[0]}")
        rec = np.empty(n.size, REC_DTYPE)
        rec["nll"], rec["rank"] = n, r
        try:
            fh.write(rec.tobytes())
        except OSError as exc:
            raise OSError(
                exc.errno, f"{out.dest}: cannot write per-row records ({exc.strerror or exc})"
            ) from None
        written[0] += n.size

    return sink


def evaluate(
    preds: Any,
    target: Any,
    *,
    kind: str = "logits",
    ignore_index: int = -100,
    top_k: Sequence[int] = (1, 5),
    n_bins: int = 15,
    shift: bool = False,
    per_row: bool | PathLike = False,
    chunk_bytes: int = 256 << 20,
    progress: bool | None = None,
    dtype: Any = None,
    shape: Any = None,
    target_dtype: Any = None,
    check_kind: bool = True,
    mask: Any = None,
    min_position: int = 0,
    per_position: bool = False,
    per_sequence: bool = False,
    per_class: bool = False,
    n_bytes: Any = None,
    n_words: Any = None,
    clip: float | None = None,
    classwise_ece: bool = False,
    equal_mass_ece: bool = False,
    ties: str = "target",
) -> EvalReport:
    """Score a whole dump in one streaming read; see docs/evaluate.md.

    ``preds``: [N, C] or [B, T, V] array, memmap, or a path (.npy, .npz[:key],
    .safetensors[:key], raw binary with ``dtype``/``shape``). ``target``: integer class
    indices of shape preds.shape[:-1] (or flat), array or path (raw: ``target_dtype``, default
    int64). ``shift=True`` scores preds[:, :-1] against target[:, 1:]. ``per_row=True`` adds
    ``row_nll``/``row_rank`` arrays; a path instead writes them to a .npy of records
    (``nll``, ``rank``) as a transaction: a temporary file renamed into place only on success
    (an existing file is untouched on any failure), never a file that is also an input.
    ``progress``: None = a bar on stderr only when it is a terminal.

    Extras (``report.extras``, docs/evaluate.md): ``mask=`` (0 = not scored, shaped like the
    targets) and ``min_position=`` drop rows before scoring; ``per_position``,
    ``per_sequence``, ``per_class``, ``n_bytes=``/``n_words=`` (bits per byte, word
    perplexity) and ``clip=`` (probabilities: NLL of max(p_t, clip)) are computed from the
    per-row NLL and rank of the same read; ``classwise_ece=True`` (C <= 4096) re-reads each
    chunk for its softmax; ``equal_mass_ece=True`` adds ECE over ``n_bins`` bins of equal row
    counts. ``ties="first"`` scores top-1 by the first maximal index (torch's argmax) instead
    of counting a tie for the target.
    """
    ev = Evaluator(
        kind=kind,
        ignore_index=ignore_index,
        top_k=top_k,
        n_bins=n_bins,
        shift=shift,
        chunk_bytes=chunk_bytes,
        progress=progress,
        check_kind=check_kind,
        ties=ties,
    )
    per_row = check_per_row(per_row)
    if per_row is not True and per_row is not False:
        check_output_path(per_row, _input_paths(preds, target), "per_row output")
    paths = _input_paths(preds, target)
    if mask is not None or min_position:
        target = _extras.masked_target(target, mask, min_position, ignore_index, shift)
    d = prepare(preds, target, shift=shift, dtype=dtype, shape=shape, target_dtype=target_dtype)
    try:
        ex = _extras.make(
            d,
            kind,
            per_position,
            per_sequence,
            per_class,
            n_bytes,
            n_words,
            clip,
            classwise_ece,
            n_bins,
            equal_mass_ece,
        )
        ev.want_conf = bool(equal_mass_ece)
        hook = _extras.sums_hook(ex)
        if per_row is False:
            ev._update(d, _extras.chain(d, None, ex, kind), on_sums=hook)
            return _extras.attach(ev.result(), ex)
        if per_row is True:
            sink, nll, rank = _row_sink(d)
            ev._update(d, _extras.chain(d, sink, ex, kind), on_sums=hook)
            return _extras.attach(replace(ev.result(), row_nll=nll, row_rank=rank), ex)
        with AtomicOutput(per_row, paths, "per_row output") as out:
            ev._update(d, _extras.chain(d, _file_sink(d, out), ex, kind), on_sums=hook)
    finally:
        d.close()
    rec = np.load(os.fspath(per_row), mmap_mode="r")
    return _extras.attach(replace(ev.result(), row_nll=rec["nll"], row_rank=rec["rank"]), ex)


# ----------------------------------------------------------------------------- compare
COMPARE_REC_DTYPE = np.dtype(
    [("kl", "<f8"), ("dp", "<f8"), ("nll_base", "<f8"), ("nll_new", "<f8"), ("same_top1", "i1")]
)
CompareSink = Callable[[int, list[np.ndarray]], None]


def _field_names(dt: np.dtype) -> tuple[str, ...]:
    """The field names of a structured dtype (``dtype.names`` is None for a plain one)."""
    if dt.names is None:
        raise TypeError(f"{dt} is not a structured dtype")
    return dt.names


COMPARE_REC_FIELDS = _field_names(COMPARE_REC_DTYPE)  # kl, dp, nll_base, nll_new, same_top1


def _compare_memory_sink(d: Dump) -> tuple[CompareSink, dict[str, np.ndarray]]:
    """Per-row compare outputs in memory (per_row=True), shaped like the scored targets."""
    arrays = {k: np.empty(d.out_shape, COMPARE_REC_DTYPE[k]) for k in COMPARE_REC_FIELDS}
    flat = [a.reshape(-1) for a in arrays.values()]

    def sink(offset: int, outs: list[np.ndarray]) -> None:
        for f, v in zip(flat, outs):
            f[offset : offset + v.size] = v

    return sink, arrays


def _compare_file_sink(d: Dump, out: AtomicOutput) -> CompareSink:
    """Per-row compare records written in order to the temporary .npy of ``out``."""
    fh = out.file
    np.lib.format.write_array_header_2_0(
        fh,
        {
            "descr": np.lib.format.dtype_to_descr(COMPARE_REC_DTYPE),
            "fortran_order": False,
            "shape": tuple(d.out_shape),
        },
    )
    out.preallocate(fh.tell() + math.prod(d.out_shape) * COMPARE_REC_DTYPE.itemsize)
    written = [0]

    def sink(offset: int, outs: list[np.ndarray]) -> None:
        if offset != written[0]:  # chunks() yields rows in flat order
            raise AssertionError(f"per-row records out of order: {offset} != {written[0]}")
        rec = np.empty(outs[0].size, COMPARE_REC_DTYPE)
        for k, v in zip(COMPARE_REC_FIELDS, outs):
            rec[k] = v
        try:
            fh.write(rec.tobytes())
        except OSError as exc:
            raise OSError(
                exc.errno, f"{out.dest}: cannot write per-row records ({exc.strerror or exc})"
            ) from None
        written[0] += rec.size

    return sink


def _compare_outs(rows: int) -> list[np.ndarray]:
    """A chunk's five per-row outputs: KL, Δp, both NLLs (float64) and same top-1 (int8)."""
    return [np.empty(rows, np.float64) for _ in range(4)] + [np.empty(rows, np.int8)]


def _compare_chunks(
    core: Any,
    db: Dump,
    dn: Dump,
    kind: str,
    ignore_index: int,
    chunk_bytes: int,
    progress: bool | None,
    acc: Any,
    sink: CompareSink | None,
) -> None:
    """One read of both dumps, chunk by chunk: the core's sums and per-row outputs."""
    b, t, c = db.x.shape
    row_bytes = c * (db.x.dtype.itemsize + dn.x.dtype.itemsize)
    # per chunk: four float64 and one int8 output per row (with a per-row sink)
    step = temp_chunk_bytes(chunk_bytes, row_bytes, 33)
    with Progress(b * t * row_bytes, "compare", enabled=progress) as bar:
        for b0, b1, t0, t1 in chunks(b, t, row_bytes, step):
            xb, ts, lead = db.block(b0, b1, t0, t1)
            vb, tb, sb = _arrays.core_view(xb)
            vn, tn, sn = _arrays.core_view(dn.preds_block(b0, b1, t0, t1))
            rows, offset = (b1 - b0) * (t1 - t0), b0 * t + t0
            # without a per-row sink the core writes KL and Δp straight into the values the
            # percentiles read (NaN for ignored rows); else all five outputs, then a copy
            slot = acc.slot(rows) if sink is None else None
            outs: list[np.ndarray] = [] if slot is not None else _compare_outs(rows)
            try:
                r = core.compare_rows(
                    vb, tb, sb, vn, tn, sn, ts, kind, ignore_index, lead, *(slot or outs)
                )
            except (IndexError, ValueError) as exc:
                reraise(exc, db, ts, b0, t0, ignore_index)
            if slot is not None:
                acc.add_filled(r, rows)
            else:
                acc.add(r, outs[0], outs[1], outs[4])
            if sink is not None:
                sink(offset, outs)
            bar.advance(rows * row_bytes)


def compare_report(acc: Any, kind: str, n_classes: int) -> CompareReport:
    """The report of a filled ``_compare_stats.CompareAccumulator`` (one process or merged)."""
    from ._compare_stats import summary

    s = summary(acc.sums)
    kl_p, dp_p, method, err = acc.percentiles()
    edges, counts = acc.plot_hist(10)
    # The summary's SCALARS keys are float fields of CompareReport (any other: TypeError).
    scalars: dict[str, Any] = {k: v for k, v in s.items() if k in CompareReport.SCALARS}
    return CompareReport(
        kind=kind,
        n_classes=n_classes,
        rows=int(acc.sums["n"]),
        ignored=int(acc.sums["n_ignored"]),
        sum_kl=float(acc.sums["sum_kl"]),
        sum_dnll=float(acc.sums["sum_dnll"]),
        kl_percentiles=kl_p,
        dp_percentiles=dp_p,
        percentile_method=method,
        percentile_rel_error=err,
        kl_hist_edges=edges,
        kl_hist_counts=counts,
        **scalars,
    )


def compare(
    base: Any,
    new: Any,
    target: Any,
    *,
    kind: str = "logits",
    ignore_index: int = -100,
    shift: bool = False,
    per_row: bool | PathLike = False,
    max_exact_rows: int = 1 << 26,
    chunk_bytes: int = 256 << 20,
    progress: bool | None = None,
    dtype: Any = None,
    shape: Any = None,
    target_dtype: Any = None,
    check_kind: bool = True,
) -> CompareReport:
    """llama.cpp ``--kl-divergence`` statistics of two dumps (same shape; dtypes may differ) in
    one read of each: KL(base || new) mean +- SE and percentiles, delta-p = p_new(t) - p_base(t)
    mean +- SE, percentiles and RMS, same top-1 +- SE, PPL(base), PPL(new), their ratio and
    difference +- SE. Inputs as for :func:`evaluate`. ``per_row=True`` adds ``row_kl``,
    ``row_dp``, ``row_nll_base``, ``row_nll_new`` (NaN for ignored rows) and ``row_same_top1``
    (int8, -1 for ignored rows); a path writes them to a .npy of records instead, as a
    transaction (as ``evaluate``'s). Percentiles are exact (16 bytes per row held) up to
    ``max_exact_rows`` rows, else read from log-spaced histograms (error stated in the
    report); docs/evaluate.md."""
    kind, _, _, chunk_bytes, ignore_index, shift, check_kind = check_settings(
        kind, (1,), 1, chunk_bytes, ignore_index, shift, check_kind
    )
    if progress is not None:
        check_bool("progress", progress)
    if isinstance(max_exact_rows, bool) or int(max_exact_rows) < 0:
        raise ValueError(f"max_exact_rows must be an integer >= 0, got {max_exact_rows!r}")
    per_row = check_per_row(per_row)
    paths = _input_paths(base, new, target)
    if per_row is not True and per_row is not False:
        check_output_path(per_row, paths, "per_row output")
    db = prepare(base, target, shift=shift, dtype=dtype, shape=shape, target_dtype=target_dtype)
    try:
        dn = prepare(new, target, shift=shift, dtype=dtype, shape=shape, target_dtype=target_dtype)
    except BaseException:
        db.close()
        raise
    try:
        return _compare(
            db,
            dn,
            base,
            new,
            kind,
            ignore_index,
            shift,
            chunk_bytes,
            progress,
            check_kind,
            per_row,
            int(max_exact_rows),
            paths,
        )
    finally:
        db.close()
        dn.close()


def _compare(
    db: Dump,
    dn: Dump,
    base: Any,
    new: Any,
    kind: str,
    ignore_index: int,
    shift: bool,
    chunk_bytes: int,
    progress: bool | None,
    check_kind: bool,
    per_row: Any,
    max_exact_rows: int,
    paths: list[str],
) -> CompareReport:
    from ._compare_stats import CompareAccumulator

    db.name, dn.name = name_of(base, "base"), name_of(new, "new")
    if db.x.shape != dn.x.shape:
        raise ValueError(
            f"{dn.name} has shape {shape_of(dn)} but {db.name} has "
            f"{shape_of(db)}: the two dumps must match"
        )
    _traps.warn_input(db, kind, ignore_index, shift, chunk_bytes, check_kind)
    _traps.warn_input(dn, kind, ignore_index, shift, chunk_bytes, check_kind, shift_warned=True)
    if check_kind:
        check_declared_kind(db, kind, ignore_index, chunk_bytes)
        check_declared_kind(dn, kind, ignore_index, chunk_bytes)
    b, t, c = db.x.shape
    core = _core()
    acc = CompareAccumulator(exact=b * t <= max_exact_rows, capacity=b * t)
    arrays: dict[str, np.ndarray] | None = None
    if per_row is False:
        _compare_chunks(core, db, dn, kind, ignore_index, chunk_bytes, progress, acc, None)
    elif per_row is True:
        sink, arrays = _compare_memory_sink(db)
        _compare_chunks(core, db, dn, kind, ignore_index, chunk_bytes, progress, acc, sink)
    else:
        with AtomicOutput(per_row, paths, "per_row output") as out:
            _compare_chunks(
                core,
                db,
                dn,
                kind,
                ignore_index,
                chunk_bytes,
                progress,
                acc,
                _compare_file_sink(db, out),
            )
        rec = np.load(os.fspath(per_row), mmap_mode="r")
        arrays = {k: rec[k] for k in COMPARE_REC_FIELDS}
    rep = compare_report(acc, kind, c)
    if arrays is not None:
        rep = replace(
            rep,
            row_kl=arrays["kl"],
            row_dp=arrays["dp"],
            row_nll_base=arrays["nll_base"],
            row_nll_new=arrays["nll_new"],
            row_same_top1=arrays["same_top1"],
        )
    return rep
