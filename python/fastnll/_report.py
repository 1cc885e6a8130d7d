"""Typed results of :func:`fastnll.evaluate` and :func:`fastnll.compare`, their JSON form
(docs/evaluate.md) and their human-readable tables."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

__all__ = ["SCHEMA_VERSION", "BinStat", "EvalReport", "CompareReport", "format_eval",
           "format_compare"]

SCHEMA_VERSION = 1


def _json_float(v: Optional[float]) -> Optional[float]:
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
    mean_confidence: Optional[float]  # None for an empty bin
    accuracy: Optional[float]  # top-1 accuracy of the bin's rows; None if empty

    def to_dict(self) -> Dict[str, Any]:
        return {"lower": self.lower, "upper": self.upper, "count": self.count,
                "mean_confidence": _json_float(self.mean_confidence),
                "accuracy": _json_float(self.accuracy)}


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
    top_k_accuracy: Dict[int, float]
    mean_entropy: float
    brier: float
    ece: float
    mce: float
    n_bins: int
    bins: Tuple[BinStat, ...]
    row_nll: Optional[np.ndarray] = field(default=None, repr=False, compare=False)
    row_rank: Optional[np.ndarray] = field(default=None, repr=False, compare=False)

    def to_dict(self) -> Dict[str, Any]:
        """The documented JSON object (per-row arrays are not included)."""
        f = _json_float
        return {
            "schema": "fastnll.evaluate", "schema_version": SCHEMA_VERSION,
            "kind": self.kind, "n_classes": self.n_classes, "rows": self.rows,
            "ignored": self.ignored, "sum_nll": f(self.sum_nll), "mean_nll": f(self.mean_nll),
            "nll_se": f(self.nll_se), "perplexity": f(self.perplexity),
            "bits_per_token": f(self.bits_per_token), "accuracy": f(self.accuracy),
            "top_k_accuracy": {str(k): f(v) for k, v in self.top_k_accuracy.items()},
            "mean_entropy": f(self.mean_entropy), "brier": f(self.brier), "ece": f(self.ece),
            "mce": f(self.mce), "n_bins": self.n_bins,
            "bins": [b.to_dict() for b in self.bins],
        }


@dataclass(frozen=True)
class CompareReport:
    """KL(base || new), NLL difference new - base, and top-1 agreement over scored rows."""

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

    def to_dict(self) -> Dict[str, Any]:
        """The documented JSON object."""
        f = _json_float
        return {
            "schema": "fastnll.compare", "schema_version": SCHEMA_VERSION,
            "kind": self.kind, "n_classes": self.n_classes, "rows": self.rows,
            "ignored": self.ignored, "mean_kl": f(self.mean_kl), "sum_kl": f(self.sum_kl),
            "mean_dnll": f(self.mean_dnll), "sum_dnll": f(self.sum_dnll),
            "dnll_se": f(self.dnll_se), "top1_agreement": f(self.top1_agreement),
        }


def _num(v: Optional[float], fmt: str = ".6f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return format(v, fmt)


def _pct(v: Optional[float]) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{100 * v:.2f}%"


def _rows(pairs: List[Tuple[str, str]]) -> List[str]:
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
        ("top-1 accuracy", _pct(r.accuracy)),
    ]
    pairs += [(f"top-{k} accuracy", _pct(v)) for k, v in r.top_k_accuracy.items() if k != 1]
    pairs += [
        ("mean entropy", _num(r.mean_entropy)),
        ("Brier score", _num(r.brier)),
        (f"ECE ({r.n_bins} bins)", _num(r.ece)),
        ("MCE", _num(r.mce)),
    ]
    lines = [title] if title else []
    lines += _rows(pairs)
    lines += ["", "  calibration bins (confidence = max probability; ties count as correct)",
              f"  {'confidence':<13} {'rows':>10} {'mean conf':>10} {'accuracy':>10} {'gap':>8}"]
    for b in r.bins:
        if not b.count:
            continue
        gap = (b.accuracy or 0.0) - (b.mean_confidence or 0.0)
        lines.append(f"  {b.lower:.3f}-{b.upper:.3f}   {b.count:>10,} "
                     f"{_num(b.mean_confidence, '.4f'):>10} {_num(b.accuracy, '.4f'):>10} "
                     f"{gap:>+8.4f}")
    return "\n".join(lines)


def format_compare(r: CompareReport, title: str = "") -> str:
    """A readable table of a :class:`CompareReport`."""
    pairs = [
        ("kind", f"{r.kind} ({r.n_classes} classes)"),
        ("rows scored", f"{r.rows:,} ({r.ignored:,} ignored)"),
        ("KL(base || new)", f"{_num(r.mean_kl)} nats/row (mean)"),
        ("NLL new - base", f"{_num(r.mean_dnll, '+.6f')} +/- {_num(r.dnll_se)} "
                           f"(standard error)"),
        ("top-1 agreement", _pct(r.top1_agreement)),
    ]
    lines = [title] if title else []
    return "\n".join(lines + _rows(pairs))
