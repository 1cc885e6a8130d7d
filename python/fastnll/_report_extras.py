"""Extra views of :func:`fastnll.evaluate`, computed from the per-row NLL and rank the core
already writes (``_core.eval_rows(..., nll_out=, rank_out=)``), in the same read of each row:

* per position t of a [B, T, V] dump: rows, mean NLL, top-1 accuracy (the long-context curve);
* per sequence b: rows, mean NLL, perplexity, and across sequences the mean ± SE;
* bits per byte and word perplexity (lm-evaluation-harness): -Σ ll / (n_bytes ln 2) and
  exp(-Σ ll / n_words), from byte / word counts the user passes (totals or per sequence);
* per class (C <= MAX_CLASSES): rows, mean NLL, recall (top-1 accuracy of the class's rows);
* classwise ECE (C <= MAX_CLASSES; optional, it re-reads each chunk to form its softmax in
  float32): the mean over classes k of Σ_b (n_kb / N) |freq_kb - conf_kb|, bins of p_k;
* equal-mass (adaptive) ECE: rows sorted by confidence (the core's ``conf_out``) split into
  n_bins bins of equal counts, exact up to MAX_EXACT_ROWS rows (9 bytes per row held), beyond
  from 2^16 equal-width fine bins (each bin then holds N/n_bins rows ± one fine bin's rows);
* probabilities: rows whose target probability is 0 (NLL +inf), and with ``clip=eps`` the NLL
  of max(p_t, eps) (sklearn's ``log_loss`` clipping) and the rows at the clip.

:class:`ExtrasAccumulator` sums are mergeable (``merge``), so chunks and shards combine.
``mask=`` and ``min_position=`` act on the targets before scoring (see :func:`masked_target`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ._report import EvalReport

__all__ = ["MAX_CLASSES", "Extras", "ExtrasAccumulator", "masked_target"]

MAX_CLASSES = 4096  # per-class statistics are kept for at most this many classes
MAX_EXACT_ROWS = 1 << 26  # equal-mass ECE from the rows themselves up to this many rows
FINE_BINS = 1 << 16
Count = int | Sequence[int] | np.ndarray | None


def masked_target(
    target: Any, mask: Any, min_position: int, ignore_index: int, shift: bool = False
) -> np.ndarray:
    """A copy of the targets with ``ignore_index`` where ``mask`` is 0/False (a labels or
    attention mask shaped like the targets as given: with ``shift=True``, mask[:, 1:] goes
    with the scored targets, as in Hugging Face's shifted loss) and for the predictions at
    positions < ``min_position`` along T (after the shift: with shift=True the prediction
    at position t has seen t + 1 tokens). The caller's targets are never modified."""
    from .readers import load_array

    t = np.array(load_array(target), copy=True)
    if t.dtype.kind not in "iu":
        raise TypeError(f"target must hold integer class indices, got dtype {t.dtype}")
    if t.dtype.kind == "u" or t.dtype.itemsize < 8:
        t = t.astype(np.int64)
    if mask is not None:
        m = np.asarray(load_array(mask))
        if m.shape != t.shape:
            raise ValueError(f"mask has shape {m.shape} but the targets have shape {t.shape}")
        t[m == 0] = ignore_index
    if int(min_position) < 0:
        raise ValueError(f"min_position must be >= 0, got {min_position}")
    if min_position:
        t[..., : int(min_position) + int(bool(shift))] = ignore_index
    return t


def _counts(v: Count, name: str, n_seq: int) -> np.ndarray | None:
    if v is None:
        return None
    a = np.asarray(v, dtype=np.float64).reshape(-1)
    if a.size not in (1, n_seq):
        raise ValueError(
            f"{name} must be a total or one count per sequence ({n_seq}), got {a.size} values"
        )
    if np.any(a <= 0) or not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be positive, got {v!r}")
    return a


@dataclass
class Extras:
    """The extra views of one evaluation (fields None when not asked for)."""

    position_count: np.ndarray | None = None  # [T] scored rows per position
    position_mean_nll: np.ndarray | None = None  # [T] (NaN where no row)
    position_accuracy: np.ndarray | None = None
    position_nll_se: np.ndarray | None = None  # [T] SE of the mean (NaN below 2 rows)
    sequence_count: np.ndarray | None = None  # [B]
    sequence_mean_nll: np.ndarray | None = None
    sequence_perplexity: np.ndarray | None = None
    sequence_nll_mean: float = math.nan  # mean over sequences of their mean NLL
    sequence_nll_se: float = math.nan  # its standard error across sequences
    sequence_perplexity_mean: float = math.nan
    sequence_perplexity_se: float = math.nan
    n_bytes: float | None = None
    n_words: float | None = None
    bits_per_byte: float = math.nan
    word_perplexity: float = math.nan
    class_count: np.ndarray | None = None  # [C]
    class_mean_nll: np.ndarray | None = None
    class_recall: np.ndarray | None = None
    classwise_ece: float = math.nan  # only with classwise_ece=True
    class_ece: np.ndarray | None = None  # [C] each class's ECE
    ece_equal_mass: float = math.nan  # only with equal_mass_ece=True
    # [{lower, upper, count, mean_confidence, accuracy}] per equal-mass bin
    equal_mass_bins: list[dict[str, float]] | None = None
    equal_mass_exact: bool | None = None
    zero_prob_rows: int | None = None  # probabilities only
    clip: float | None = None
    clipped_rows: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (arrays as lists, non-finite as null); only the views computed."""

        def j(v: Any) -> Any:
            if isinstance(v, np.ndarray):
                return [j(x) for x in v.tolist()]
            if isinstance(v, float):
                return v if math.isfinite(v) else None
            return v

        out: dict[str, Any] = {}
        if self.position_count is not None:
            out["positions"] = {
                "count": j(self.position_count),
                "mean_nll": j(self.position_mean_nll),
                "accuracy": j(self.position_accuracy),
                "nll_se": j(self.position_nll_se),
            }
        if self.sequence_count is not None:
            out["sequences"] = {
                "count": j(self.sequence_count),
                "mean_nll": j(self.sequence_mean_nll),
                "perplexity": j(self.sequence_perplexity),
                "nll_mean": j(self.sequence_nll_mean),
                "nll_se": j(self.sequence_nll_se),
                "perplexity_mean": j(self.sequence_perplexity_mean),
                "perplexity_se": j(self.sequence_perplexity_se),
            }
        if self.n_bytes is not None:
            out["n_bytes"], out["bits_per_byte"] = self.n_bytes, j(self.bits_per_byte)
        if self.n_words is not None:
            out["n_words"], out["word_perplexity"] = self.n_words, j(self.word_perplexity)
        if self.class_count is not None:
            out["classes"] = {
                "count": j(self.class_count),
                "mean_nll": j(self.class_mean_nll),
                "recall": j(self.class_recall),
            }
        if self.class_ece is not None:
            out["classwise_ece"] = j(self.classwise_ece)
            out["class_ece"] = j(self.class_ece)
        if self.equal_mass_bins is not None:
            out["ece_equal_mass"] = j(self.ece_equal_mass)
            out["equal_mass_exact"] = self.equal_mass_exact
            out["equal_mass_bins"] = [{k: j(v) for k, v in b.items()} for b in self.equal_mass_bins]
        if self.zero_prob_rows is not None:
            out["zero_prob_rows"] = self.zero_prob_rows
        if self.clip is not None:
            out["clip"], out["clipped_rows"] = self.clip, self.clipped_rows
        return out


class ExtrasAccumulator:
    """Mergeable sums behind :class:`Extras`, fed chunk by chunk with per-row NLL and rank."""

    def __init__(
        self,
        shape: Sequence[int],
        n_classes: int,
        *,
        per_position: bool = False,
        per_sequence: bool = False,
        per_class: bool = False,
        probs: bool = False,
        clip: float | None = None,
        n_bytes: Count = None,
        n_words: Count = None,
        classwise_bins: int = 0,
        mass_bins: int = 0,
    ) -> None:
        b, t = (1, int(shape[0])) if len(shape) == 1 else (int(shape[0]), int(shape[1]))
        self.b, self.t, self.c = b, t, int(n_classes)
        if per_position and len(shape) != 2:
            raise ValueError("per_position needs a [B, T, V] dump")
        if per_sequence and len(shape) != 2:
            raise ValueError("per_sequence needs a [B, T, V] dump")
        if per_class and self.c > MAX_CLASSES:
            raise ValueError(
                f"per_class is kept for at most {MAX_CLASSES} classes, the dump has {self.c}"
            )
        if classwise_bins and self.c > MAX_CLASSES:
            raise ValueError(
                f"classwise_ece is computed for at most {MAX_CLASSES} classes, "
                f"the dump has {self.c}"
            )
        self.cw_bins = int(classwise_bins)
        nb = max(self.cw_bins, 1)
        self.cw_n = np.zeros(self.c * nb, np.float64)  # rows per (class, bin of p_k)
        self.cw_p = np.zeros(self.c * nb, np.float64)  # Σ p_k
        self.cw_y = np.zeros(self.c * nb, np.float64)  # Σ 1[target = k]
        self.cw_rows = 0
        self.mass_bins = int(mass_bins)
        self._conf: list[np.ndarray] = []
        self._ok: list[np.ndarray] = []
        self._kept = 0
        self.fine: np.ndarray | None = None  # (count, Σ conf, Σ correct) per fine bin
        # once past MAX_EXACT_ROWS
        if clip is not None and not 0 < float(clip) < 1:
            raise ValueError(f"clip must be in (0, 1), got {clip}")
        self.flags = (per_position, per_sequence, per_class, probs, clip)
        self.n_bytes = _counts(n_bytes, "n_bytes", b)
        self.n_words = _counts(n_words, "n_words", b)

        def z(n: int) -> np.ndarray:
            return np.zeros(n, np.float64)

        # per position only when asked: for a 2-d dump t is the number of rows, and four
        # arrays of it were 4x the input at C = 2
        tp = t if per_position else 0
        self.pos_n, self.pos_nll, self.pos_ok, self.pos_sq = z(tp), z(tp), z(tp), z(tp)
        self.seq_n, self.seq_nll = z(b), z(b)
        self.cls_n, self.cls_nll, self.cls_ok = z(self.c), z(self.c), z(self.c)
        self.sum_nll = 0.0
        self.zero_prob = self.clipped = 0
        self.sum_clipped = self.sum_clipped_sq = 0.0
        self.n = 0

    def _fold(self) -> None:
        """Move the kept confidences into the fine histogram (past MAX_EXACT_ROWS)."""
        if self.fine is None:
            self.fine = np.zeros((3, FINE_BINS), np.float64)
        for c, k in zip(self._conf, self._ok):
            b = np.clip((c * FINE_BINS).astype(np.int64), 0, FINE_BINS - 1)
            self.fine[0] += np.bincount(b, minlength=FINE_BINS)
            self.fine[1] += np.bincount(b, weights=c, minlength=FINE_BINS)
            self.fine[2] += np.bincount(b, weights=k, minlength=FINE_BINS)
        self._conf, self._ok, self._kept = [], [], 0

    @property
    def rows_needed(self) -> bool:
        """Whether an extra needs the per-row NLL and rank (the zero-probability count alone
        comes from each chunk's sums: see :meth:`add_sums`)."""
        per_position, per_sequence, per_class, _, clip = self.flags
        return bool(
            per_position
            or per_sequence
            or per_class
            or clip is not None
            or self.n_bytes is not None
            or self.n_words is not None
            or self.cw_bins
            or self.mass_bins
        )

    def add_sums(self, r: dict[str, Any]) -> None:
        """A chunk's core sums, when no rows are fed: its rows of NLL +inf (target
        probability 0) and its scored rows."""
        self.zero_prob += int(r["nll_inf"])
        self.n += int(r["n"])

    def add(
        self,
        offset: int,
        nll: np.ndarray,
        rank: np.ndarray,
        target: np.ndarray | None,
        conf: np.ndarray | None = None,
    ) -> None:
        """Rows offset .. offset + len(nll) of the flat [B*T] order (ignored rows: rank -1)."""
        per_position, per_sequence, per_class, probs, clip = self.flags
        ok = rank >= 0
        if self.mass_bins and conf is not None:
            self._conf.append(conf[ok].copy())
            self._ok.append(rank[ok] == 0)
            self._kept += int(ok.sum())
            if self.fine is not None or self._kept > MAX_EXACT_ROWS:
                self._fold()
        per_seq = per_sequence or (self.n_bytes is not None and self.n_bytes.size > 1)
        need_rows = per_position or per_seq
        # each pass below is over a chunk's rows: only the ones an asked-for extra needs
        rows = np.arange(offset, offset + nll.size)[ok] if need_rows else None
        v = nll[ok]
        r = rank[ok] if per_position or per_class else None
        self.n += v.size
        self.sum_nll += float(v.sum())
        if per_position and rows is not None and r is not None:
            p = rows % self.t
            self.pos_n += np.bincount(p, minlength=self.t)
            self.pos_nll += np.bincount(p, weights=v, minlength=self.t)
            self.pos_ok += np.bincount(p, weights=(r == 0), minlength=self.t)
            self.pos_sq += np.bincount(p, weights=v * v, minlength=self.t)
        if rows is not None and per_seq:
            s = rows // self.t
            self.seq_n += np.bincount(s, minlength=self.b)
            self.seq_nll += np.bincount(s, weights=v, minlength=self.b)
        if per_class and target is not None and r is not None:
            k = target[ok].astype(np.int64)
            self.cls_n += np.bincount(k, minlength=self.c)
            self.cls_nll += np.bincount(k, weights=v, minlength=self.c)
            self.cls_ok += np.bincount(k, weights=(r == 0), minlength=self.c)
        if probs:
            self.zero_prob += int(np.count_nonzero(v == np.inf))
        if clip is not None:
            cap = -math.log(float(clip))
            self.clipped += int((v > cap).sum())
            w = np.minimum(v, cap)
            self.sum_clipped += float(w.sum())
            self.sum_clipped_sq += float((w * w).sum())

    def add_probs(self, p: np.ndarray, target: np.ndarray) -> None:
        """Classwise-ECE sums of scored rows' probabilities p [r, C] and targets [r]."""
        nb = self.cw_bins
        b = np.minimum((p * nb).astype(np.int64), nb - 1)
        b = np.maximum(b, 0) + np.arange(self.c)[None, :] * nb
        self.cw_n += np.bincount(b.ravel(), minlength=self.cw_n.size)
        self.cw_p += np.bincount(
            b.ravel(), weights=p.ravel().astype(np.float64), minlength=self.cw_n.size
        )
        self.cw_y += np.bincount(b[np.arange(target.size), target], minlength=self.cw_n.size)
        self.cw_rows += target.size

    def merge(self, o: ExtrasAccumulator) -> ExtrasAccumulator:
        """Add another accumulator's sums (same shape and options)."""
        if (o.b, o.t, o.c, o.flags) != (self.b, self.t, self.c, self.flags):
            raise ValueError("cannot merge extras of different shapes or options")
        if o.cw_bins != self.cw_bins or o.mass_bins != self.mass_bins:
            raise ValueError("cannot merge extras of different options")
        self._conf += o._conf
        self._ok += o._ok
        self._kept += o._kept
        if o.fine is not None:
            self._fold()
            assert self.fine is not None
            self.fine += o.fine
        elif self.fine is not None or self._kept > MAX_EXACT_ROWS:
            self._fold()
        self.cw_rows += o.cw_rows
        for name in (
            "cw_n",
            "cw_p",
            "cw_y",
            "pos_n",
            "pos_nll",
            "pos_ok",
            "pos_sq",
            "seq_n",
            "seq_nll",
            "cls_n",
            "cls_nll",
            "cls_ok",
        ):
            setattr(self, name, getattr(self, name) + getattr(o, name))
        self.sum_nll += o.sum_nll
        self.zero_prob += o.zero_prob
        self.clipped += o.clipped
        self.sum_clipped += o.sum_clipped
        self.sum_clipped_sq += o.sum_clipped_sq
        self.n += o.n
        return self

    def result(self) -> Extras:
        """The views asked for."""
        per_position, per_sequence, per_class, probs, clip = self.flags
        e = Extras()
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            if per_position:
                e.position_count = self.pos_n.astype(np.int64)
                e.position_mean_nll = np.where(self.pos_n > 0, self.pos_nll / self.pos_n, np.nan)
                e.position_accuracy = np.where(self.pos_n > 0, self.pos_ok / self.pos_n, np.nan)
                n = self.pos_n
                var = (self.pos_sq - self.pos_nll**2 / n) / (n - 1)
                e.position_nll_se = np.where(n > 1, np.sqrt(np.maximum(var, 0) / n), np.nan)
            if per_sequence:
                e.sequence_count = self.seq_n.astype(np.int64)
                m = np.where(self.seq_n > 0, self.seq_nll / self.seq_n, np.nan)
                e.sequence_mean_nll, e.sequence_perplexity = m, np.exp(m)
                got = m[~np.isnan(m)]
                if got.size:
                    e.sequence_nll_mean = float(got.mean())
                    e.sequence_perplexity_mean = float(np.exp(got).mean())
                if got.size > 1:
                    e.sequence_nll_se = float(got.std(ddof=1) / math.sqrt(got.size))
                    e.sequence_perplexity_se = float(np.exp(got).std(ddof=1) / math.sqrt(got.size))
            if per_class:
                e.class_count = self.cls_n.astype(np.int64)
                e.class_mean_nll = np.where(self.cls_n > 0, self.cls_nll / self.cls_n, np.nan)
                e.class_recall = np.where(self.cls_n > 0, self.cls_ok / self.cls_n, np.nan)
        if self.cw_bins:
            nb, rows = self.cw_bins, max(self.cw_rows, 1)
            gap = np.abs(self.cw_y - self.cw_p).reshape(self.c, nb).sum(axis=1) / rows
            e.class_ece = gap if self.cw_rows else np.full(self.c, np.nan)
            e.classwise_ece = float(gap.mean()) if self.cw_rows else math.nan
        if self.mass_bins:
            e.ece_equal_mass, e.equal_mass_bins, e.equal_mass_exact = self._equal_mass()
        if self.n_bytes is not None:
            e.n_bytes = float(self.n_bytes.sum())
            e.bits_per_byte = self.sum_nll / (e.n_bytes * math.log(2))
        if self.n_words is not None:
            e.n_words = float(self.n_words.sum())
            e.word_perplexity = _exp(self.sum_nll / e.n_words)
        if probs:
            e.zero_prob_rows = self.zero_prob
        if clip is not None:
            e.clip, e.clipped_rows = float(clip), self.clipped
        return e

    def _equal_mass(self) -> tuple[float, list[dict[str, float]], bool]:
        """(ECE, bins, exact) over n_bins bins of equal row counts by confidence."""
        nb = self.mass_bins
        if self.fine is None:
            c = np.concatenate(self._conf) if self._conf else np.zeros(0)
            k = np.concatenate(self._ok) if self._ok else np.zeros(0, bool)
            n = c.size
            if n == 0:
                return math.nan, [], True
            order = np.argsort(c, kind="stable")
            c, k = c[order], k[order].astype(np.float64)
            edges = (np.arange(nb + 1) * n) // nb
            cnt = np.diff(edges)
            cs, ks = np.add.reduceat(c, edges[:-1]), np.add.reduceat(k, edges[:-1])
            lo, hi = c[edges[:-1]], c[np.maximum(edges[1:] - 1, 0)]
            keep = cnt > 0
            cnt, cs, ks, lo, hi = cnt[keep], cs[keep], ks[keep], lo[keep], hi[keep]
            exact = True
        else:
            f = self.fine
            n = int(f[0].sum())
            if n == 0:
                return math.nan, [], False
            cum = np.cumsum(f[0])
            # fine bin j goes to equal-mass bin floor(nb * rows before its middle / n)
            mid = cum - f[0] / 2
            g = np.minimum((mid * nb / n).astype(np.int64), nb - 1)
            cnt = np.bincount(g, weights=f[0], minlength=nb)
            cs = np.bincount(g, weights=f[1], minlength=nb)
            ks = np.bincount(g, weights=f[2], minlength=nb)
            idx = np.arange(FINE_BINS)
            occupied = f[0] > 0
            lo = np.array(
                [
                    idx[(g == b) & occupied].min() / FINE_BINS if cnt[b] else np.nan
                    for b in range(nb)
                ]
            )
            hi = np.array(
                [
                    (idx[(g == b) & occupied].max() + 1) / FINE_BINS if cnt[b] else np.nan
                    for b in range(nb)
                ]
            )
            keep = cnt > 0
            cnt, cs, ks, lo, hi = cnt[keep], cs[keep], ks[keep], lo[keep], hi[keep]
            exact = False
        ece = float(np.sum(np.abs(ks - cs)) / n)
        bins = [
            {
                "lower": float(a),
                "upper": float(b),
                "count": int(m),
                "mean_confidence": float(x / m),
                "accuracy": float(y / m),
            }
            for a, b, m, x, y in zip(lo, hi, cnt, cs, ks)
        ]
        return ece, bins, exact

    def clipped_nll(self) -> tuple[float, float]:
        """(Σ, Σ²) of min(nll, -ln clip) over scored rows."""
        return self.sum_clipped, self.sum_clipped_sq


def _exp(v: float) -> float:
    try:
        return math.exp(v)
    except OverflowError:
        return math.inf


def block_of(offset: int, rows: int, t: int) -> tuple[int, int, int, int]:
    """(b0, b1, t0, t1) of a chunk of ``rows`` consecutive flat rows starting at ``offset``
    (the planner's chunks are a run inside one sequence, or whole sequences)."""
    b0, t0 = divmod(offset, t)
    if t0 + rows <= t:
        return b0, b0 + 1, t0, t0 + rows
    return b0, b0 + rows // t, 0, t


def make(
    d: Any,
    kind: str,
    per_position: bool,
    per_sequence: bool,
    per_class: bool,
    n_bytes: Count,
    n_words: Count,
    clip: float | None,
    classwise_ece: bool = False,
    n_bins: int = 15,
    equal_mass_ece: bool = False,
) -> ExtrasAccumulator | None:
    """The accumulator :func:`fastnll.evaluate` feeds, or None when no extra is asked for
    (probabilities always count their zero-probability targets)."""
    if clip is not None and kind != "probs":
        raise ValueError(
            f"clip= applies to kind='probs' (got kind={kind!r}): logits and "
            "log-probabilities have no probability to clip"
        )
    wanted = (
        per_position
        or per_sequence
        or per_class
        or n_bytes is not None
        or n_words is not None
        or kind == "probs"
        or classwise_ece
        or equal_mass_ece
    )
    if not wanted:
        return None
    return ExtrasAccumulator(
        d.out_shape,
        d.x.shape[-1],
        per_position=per_position,
        per_sequence=per_sequence,
        per_class=per_class,
        probs=kind == "probs",
        clip=clip,
        n_bytes=n_bytes,
        n_words=n_words,
        classwise_bins=n_bins if classwise_ece else 0,
        mass_bins=n_bins if equal_mass_ece else 0,
    )


def _probs(x: np.ndarray, kind: str) -> np.ndarray:
    """float32 probabilities of rows of x [r, C]."""
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if kind == "probs":
            return x
        if kind == "log_probs":
            p: np.ndarray = np.exp(x)
            return p
        m = x.max(axis=1, keepdims=True)
        e = np.exp(x - np.where(np.isfinite(m), m, 0))
        q: np.ndarray = e / e.sum(axis=1, keepdims=True)
        return q


def chain(d: Any, sink: Any, ex: ExtrasAccumulator | None, kind: str = "logits") -> Any:
    """One row sink feeding the per-row store (if any) and the extras that need rows (if
    any; see :func:`sums_hook` for the others)."""
    if ex is None or not ex.rows_needed:
        return sink
    t_len = d.x.shape[1]
    want_t = ex.flags[2]

    def both(
        offset: int, nll: np.ndarray, rank: np.ndarray, conf: np.ndarray | None = None
    ) -> None:
        if sink is not None:
            sink(offset, nll, rank, conf)
        tgt = None
        if want_t or ex.cw_bins:
            b0, b1, t0, t1 = block_of(offset, nll.size, t_len)
            tgt = np.asarray(d.t[b0:b1, t0:t1]).reshape(-1)
        ex.add(offset, nll, rank, tgt, conf)
        if ex.cw_bins and tgt is not None:
            ok = rank >= 0
            x = np.asarray(d.x[b0:b1, t0:t1]).reshape(-1, d.x.shape[-1])[ok]
            ex.add_probs(_probs(x, kind), tgt[ok].astype(np.int64))

    return both


def sums_hook(ex: ExtrasAccumulator | None) -> Callable[[dict[str, Any]], None] | None:
    """What takes each chunk's core sums: the extras when they need no rows (probabilities'
    zero-probability count alone), else nothing (:func:`chain` feeds them rows)."""
    if ex is None or ex.rows_needed:
        return None
    return ex.add_sums


def attach(rep: EvalReport, ex: ExtrasAccumulator | None) -> EvalReport:
    """The report with its extras; with clip= its NLL fields are the clipped NLL's."""
    from dataclasses import replace

    if ex is None:
        return rep
    e = ex.result()
    rep = replace(rep, extras=e)
    if e.clip is None or not rep.rows:
        return rep
    s, s2 = ex.clipped_nll()
    n = rep.rows
    mean = s / n
    se = math.sqrt(max((s2 - s * s / n) / (n - 1), 0.0) / n) if n > 1 else math.nan
    return replace(
        rep,
        sum_nll=s,
        mean_nll=mean,
        nll_se=se,
        perplexity=_exp(mean),
        bits_per_token=mean / math.log(2),
    )
