"""Typed results of :func:`fastnll.evaluate` and :func:`fastnll.compare`, their JSON form
(docs/evaluate.md) and their human-readable tables."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "SCHEMA_VERSION",
    "BinStat",
    "CompareReport",
    "EvalReport",
    "format_compare",
    "format_eval",
]

SCHEMA_VERSION = 2


def _json_float(v: float | None) -> float | None:
    """JSON has no NaN/Infinity: undefined or infinite values become null."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


@dataclass(frozen=True)
class BinStat:
    """One equal-width confidence bin: [lower, upper) (the last bin includes 1.0)."""

    lower: float
    upper: float
    count: int
    mean_confidence: float | None  # None for an empty bin
    accuracy: float | None  # top-1 accuracy of the bin's rows; None if empty

    def to_dict(self) -> dict[str, Any]:
        return {
            "lower": self.lower,
            "upper": self.upper,
            "count": self.count,
            "mean_confidence": _json_float(self.mean_confidence),
            "accuracy": _json_float(self.accuracy),
        }


@dataclass(frozen=True)
class EvalReport:
    """Metrics of one dump (or of everything merged into an :class:`Evaluator`).

    Means are over scored rows (targets != ignore_index); with no scored row they are NaN.
    ``row_nll``/``row_rank`` are only set by ``evaluate(per_row=...)``.
    """

    kind: str
    n_classes: int
    rows: int
    ignored: int
    sum_nll: float
    mean_nll: float
    nll_se: float
    perplexity: float
    bits_per_token: float
    accuracy: float
    top_k_accuracy: dict[int, float]
    mean_entropy: float
    brier: float
    ece: float
    mce: float
    n_bins: int
    bins: tuple[BinStat, ...]
    row_nll: np.ndarray | None = field(default=None, repr=False, compare=False)
    row_rank: np.ndarray | None = field(default=None, repr=False, compare=False)
    ties: str = "target"  # the top-1 rule used: a target tied with the best class is correct
    extras: Any = field(default=None, repr=False, compare=False)  # _report_extras.Extras

    def to_dict(self) -> dict[str, Any]:
        """The documented JSON object (per-row arrays are not included)."""
        f = _json_float
        d = self._base_dict(f)
        d["ties"] = self.ties
        if self.extras is not None:
            d["extras"] = self.extras.to_dict()
        return d

    def _base_dict(self, f: Any) -> dict[str, Any]:
        return {
            "schema": "fastnll.evaluate",
            "schema_version": SCHEMA_VERSION,
            "kind": self.kind,
            "n_classes": self.n_classes,
            "rows": self.rows,
            "ignored": self.ignored,
            "sum_nll": f(self.sum_nll),
            "mean_nll": f(self.mean_nll),
            "nll_se": f(self.nll_se),
            "perplexity": f(self.perplexity),
            "bits_per_token": f(self.bits_per_token),
            "accuracy": f(self.accuracy),
            "top_k_accuracy": {str(k): f(v) for k, v in self.top_k_accuracy.items()},
            "mean_entropy": f(self.mean_entropy),
            "brier": f(self.brier),
            "ece": f(self.ece),
            "mce": f(self.mce),
            "n_bins": self.n_bins,
            "bins": [b.to_dict() for b in self.bins],
        }


@dataclass(frozen=True)
class CompareReport:
    """llama.cpp ``perplexity --kl-divergence`` statistics of two dumps over scored rows:
    KL(base || new), Δp = p_new(target) - p_base(target), both NLLs / perplexities, their
    ratio and difference (delta method with the covariance), and top-1 agreement. Formulas:
    docs/evaluate.md. Row arrays (``row_kl`` ...) only with ``compare(per_row=...)``."""

    kind: str
    n_classes: int
    rows: int
    ignored: int
    mean_kl: float
    sum_kl: float
    mean_dnll: float
    sum_dnll: float
    dnll_se: float
    top1_agreement: float
    kl_se: float = math.nan
    kl_percentiles: dict[str, float] = field(default_factory=dict)
    mean_dp: float = math.nan
    dp_se: float = math.nan
    dp_percentiles: dict[str, float] = field(default_factory=dict)
    dp_rms: float = math.nan
    dp_rms_se: float = math.nan
    top1_agreement_se: float = math.nan
    mean_nll_base: float = math.nan
    mean_nll_base_se: float = math.nan
    mean_nll_new: float = math.nan
    mean_nll_new_se: float = math.nan
    ppl_base: float = math.nan
    ppl_base_se: float = math.nan
    ppl_new: float = math.nan
    ppl_new_se: float = math.nan
    ln_ppl_ratio: float = math.nan
    ln_ppl_ratio_se: float = math.nan
    ppl_ratio: float = math.nan
    ppl_ratio_se: float = math.nan
    ppl_diff: float = math.nan
    ppl_diff_se: float = math.nan
    ln_ppl_cov: float = math.nan
    ln_ppl_correlation: float = math.nan
    percentile_method: str = "exact"
    percentile_rel_error: float | None = None
    kl_hist_edges: np.ndarray | None = field(default=None, repr=False, compare=False)
    kl_hist_counts: np.ndarray | None = field(default=None, repr=False, compare=False)
    row_kl: np.ndarray | None = field(default=None, repr=False, compare=False)
    row_dp: np.ndarray | None = field(default=None, repr=False, compare=False)
    row_nll_base: np.ndarray | None = field(default=None, repr=False, compare=False)
    row_nll_new: np.ndarray | None = field(default=None, repr=False, compare=False)
    row_same_top1: np.ndarray | None = field(default=None, repr=False, compare=False)

    SCALARS = (
        "mean_kl",
        "sum_kl",
        "kl_se",
        "mean_dnll",
        "sum_dnll",
        "dnll_se",
        "mean_dp",
        "dp_se",
        "dp_rms",
        "dp_rms_se",
        "top1_agreement",
        "top1_agreement_se",
        "mean_nll_base",
        "mean_nll_base_se",
        "mean_nll_new",
        "mean_nll_new_se",
        "ppl_base",
        "ppl_base_se",
        "ppl_new",
        "ppl_new_se",
        "ln_ppl_ratio",
        "ln_ppl_ratio_se",
        "ppl_ratio",
        "ppl_ratio_se",
        "ppl_diff",
        "ppl_diff_se",
        "ln_ppl_cov",
        "ln_ppl_correlation",
    )

    def to_dict(self) -> dict[str, Any]:
        """The documented JSON object (schema_version 2; per-row arrays are not included)."""
        f = _json_float
        d: dict[str, Any] = {
            "schema": "fastnll.compare",
            "schema_version": SCHEMA_VERSION,
            "kind": self.kind,
            "n_classes": self.n_classes,
            "rows": self.rows,
            "ignored": self.ignored,
        }
        d.update({k: f(getattr(self, k)) for k in self.SCALARS})
        d["kl_percentiles"] = {k: f(v) for k, v in self.kl_percentiles.items()}
        d["dp_percentiles"] = {k: f(v) for k, v in self.dp_percentiles.items()}
        d["percentile_method"] = self.percentile_method
        d["percentile_rel_error"] = f(self.percentile_rel_error)
        return d


def _num(v: float | None, fmt: str = ".6f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return format(v, fmt)


def _pct(v: float | None) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{100 * v:.2f}%"


def _rows(pairs: list[tuple[str, str]]) -> list[str]:
    width = max(len(k) for k, _ in pairs)
    return [f"  {k:<{width}}  {v}" for k, v in pairs]


def format_eval(r: EvalReport, title: str = "") -> str:
    """A readable table of an :class:`EvalReport` (with the calibration bin table)."""
    pairs = [
        ("kind", f"{r.kind} ({r.n_classes} classes)"),
        ("rows scored", f"{r.rows:,} ({r.ignored:,} ignored)"),
        ("mean NLL", f"{_num(r.mean_nll)} +/- {_num(r.nll_se)} (standard error)"),
        ("sum NLL", _num(r.sum_nll, ".4f")),
        ("perplexity", _num(r.perplexity, ".4f")),
        ("bits per token", _num(r.bits_per_token)),
        (
            "top-1 accuracy",
            _pct(r.accuracy) + ("" if r.ties == "target" else " (ties='first': argmax rule)"),
        ),
    ]
    pairs += [(f"top-{k} accuracy", _pct(v)) for k, v in r.top_k_accuracy.items() if k != 1]
    pairs += [
        ("mean entropy", _num(r.mean_entropy)),
        ("Brier score", _num(r.brier)),
        (f"ECE ({r.n_bins} bins)", _num(r.ece)),
        ("MCE", _num(r.mce)),
    ]
    e = r.extras
    if e is not None:
        pairs += _extra_pairs(e)
    lines = [title] if title else []
    lines += _rows(pairs)
    rule = (
        "ties count as correct" if r.ties == "target" else "top-1 = first maximal index, as argmax"
    )
    lines += [
        "",
        f"  calibration bins (confidence = max probability; {rule})",
        f"  {'confidence':<13} {'rows':>10} {'mean conf':>10} {'accuracy':>10} {'gap':>8}",
    ]
    for b in r.bins:
        if not b.count:
            continue
        gap = (b.accuracy or 0.0) - (b.mean_confidence or 0.0)
        lines.append(
            f"  {b.lower:.3f}-{b.upper:.3f}   {b.count:>10,} "
            f"{_num(b.mean_confidence, '.4f'):>10} {_num(b.accuracy, '.4f'):>10} "
            f"{gap:>+8.4f}"
        )
    return "\n".join(lines)


def _g(v: float | None, digits: int = 5) -> str:
    """Enough significant digits for small KL values (4.0921e-05), n/a for NaN."""
    if v is None or math.isnan(v):
        return "n/a"
    return f"{v:.{digits}g}"


def _pm(v: float, se: float, digits: int = 5, scale: float = 1.0, unit: str = "") -> str:
    return f"{_g(v * scale, digits)} +/- {_g(se * scale, digits)}{unit}"


def _extra_pairs(e: Any) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if e.sequence_count is not None:
        out.append(
            (
                "sequences",
                (
                    f"{int((e.sequence_count > 0).sum()):,} scored; mean NLL "
                    f"{_num(e.sequence_nll_mean)} +/- {_num(e.sequence_nll_se)}, "
                    f"mean perplexity {_num(e.sequence_perplexity_mean, '.4f')} "
                    f"+/- {_num(e.sequence_perplexity_se, '.4f')} (SE across "
                    "sequences)"
                ),
            )
        )
    if e.equal_mass_bins is not None:
        out.append(
            (
                f"ECE equal-mass ({len(e.equal_mass_bins)} bins)",
                _num(e.ece_equal_mass) + ("" if e.equal_mass_exact else " (from 2^16 fine bins)"),
            )
        )
    if e.class_ece is not None:
        out.append(("classwise ECE", _num(e.classwise_ece)))
    if e.n_bytes is not None:
        out.append(("bits per byte", f"{_num(e.bits_per_byte)} ({e.n_bytes:,.0f} bytes)"))
    if e.n_words is not None:
        out.append(
            ("word perplexity", (f"{_num(e.word_perplexity, '.4f')} ({e.n_words:,.0f} words)"))
        )
    if e.zero_prob_rows is not None:
        out.append(
            (
                "target probability 0",
                f"{e.zero_prob_rows:,} rows (NLL +inf"
                + (
                    f"; clipped at {e.clip:g}: {e.clipped_rows:,} rows)"
                    if e.clip
                    else "; pass clip= to clip)"
                ),
            )
        )
    if e.position_count is not None:
        out.append(("per position", f"{e.position_count.size} positions (see extras)"))
    if e.class_count is not None:
        out.append(("per class", f"{e.class_count.size} classes (see extras)"))
    return out


def format_compare(r: CompareReport, title: str = "") -> str:
    """A readable report of a :class:`CompareReport`, in llama.cpp's order."""
    pc = 100.0
    head = [
        ("kind", f"{r.kind} ({r.n_classes} classes)"),
        ("rows scored", f"{r.rows:,} ({r.ignored:,} ignored)"),
    ]
    ppl = [
        ("Mean PPL(new)", _pm(r.ppl_new, r.ppl_new_se, 8)),
        ("Mean PPL(base)", _pm(r.ppl_base, r.ppl_base_se, 8)),
        ("Cor(ln PPL(new), ln PPL(base))", f"{_g(pc * r.ln_ppl_correlation, 5)}%"),
        ("Mean ln(PPL(new)/PPL(base))", _pm(r.ln_ppl_ratio, r.ln_ppl_ratio_se)),
        ("Mean PPL(new)/PPL(base)", _pm(r.ppl_ratio, r.ppl_ratio_se, 7)),
        ("Mean PPL(new)-PPL(base)", _pm(r.ppl_diff, r.ppl_diff_se)),
        ("NLL new - base", _pm(r.mean_dnll, r.dnll_se)),
    ]
    kl = [("Mean KL(base || new)", _pm(r.mean_kl, r.kl_se))]
    kl += [(f"{_level(k)} KLD", _g(v)) for k, v in r.kl_percentiles.items()]
    dp = [("Mean dp", _pm(r.mean_dp, r.dp_se, 5, pc, " %"))]
    dp += [(f"{_level(k)} dp", f"{_g(pc * v)} %") for k, v in r.dp_percentiles.items()]
    dp += [
        ("RMS dp", _pm(r.dp_rms, r.dp_rms_se, 5, pc, " %")),
        ("Same top p (top-1 agreement)", _pm(r.top1_agreement, r.top1_agreement_se, 5, pc, " %")),
    ]
    how = (
        "exact (from per-row values)"
        if r.percentile_method == "exact"
        else f"log-spaced histogram (relative error <= {_g(r.percentile_rel_error, 3)})"
    )
    lines = [title] if title else []
    lines += _rows(head) + ["", "  ====== Perplexity statistics ======"] + _rows(ppl)
    lines += ["", "  ====== KL divergence statistics (nats; KL >= 0 per row) ======"]
    lines += (
        _rows(kl)
        + ["", ("  ====== Token probability statistics (dp = p_new - p_base of the target) ======")]
        + _rows(dp)
    )
    lines += ["", f"  percentiles: {how}"]
    return "\n".join(lines)


def _level(k: str) -> str:
    return {"max": "Maximum", "min": "Minimum", "median": "Median"}.get(k, f"{k}%")
