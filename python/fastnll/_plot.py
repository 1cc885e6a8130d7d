"""Reliability diagram with confidence histogram (optional: ``pip install fastnll[plot]``).

matplotlib is imported only here, inside the functions, and drawn with the Agg canvas directly
(no pyplot, no change to the global backend).
"""

from __future__ import annotations

import os
from typing import Any, Optional

from ._report import EvalReport

__all__ = ["require_matplotlib", "reliability_diagram"]

MISSING = "plotting needs matplotlib, which is not installed: pip install 'fastnll[plot]'"


def require_matplotlib() -> None:
    """Raise ImportError with an install hint when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError(MISSING) from None


def reliability_diagram(report: EvalReport, path: "str | os.PathLike[str]",
                        title: Optional[str] = None, dpi: int = 120) -> None:
    """Write a PNG (or any format matplotlib infers from the suffix): top, accuracy per
    confidence bin against the diagonal with the gap shaded; bottom, rows per bin."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width = 1.0 / report.n_bins
    lefts = [b.lower for b in report.bins]
    acc = [b.accuracy if b.accuracy is not None else 0.0 for b in report.bins]
    conf = [b.mean_confidence if b.mean_confidence is not None else 0.0 for b in report.bins]
    counts = [b.count for b in report.bins]

    fig = Figure(figsize=(5.5, 6.5))
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.bar(lefts, acc, width=width, align="edge", color="#4c72b0", edgecolor="white",
            label="accuracy")
    gap_lo = [min(a, c) for a, c, n in zip(acc, conf, counts)]
    gap_h = [abs(a - c) if n else 0.0 for a, c, n in zip(acc, conf, counts)]
    top.bar(lefts, gap_h, bottom=gap_lo, width=width, align="edge", color="#dd8452",
            alpha=0.5, edgecolor="#dd8452", label="gap to confidence")
    top.plot([0, 1], [0, 1], "--", color="gray", linewidth=1, label="perfect calibration")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("top-1 accuracy")
    top.legend(loc="upper left", fontsize=8)
    _annotate(top, report)
    if title:
        top.set_title(title, fontsize=10)
    bottom.bar(lefts, counts, width=width, align="edge", color="#55a868", edgecolor="white")
    bottom.set_xlabel("confidence (max probability)")
    bottom.set_ylabel("rows")
    fig.tight_layout()
    try:
        fig.savefig(os.fspath(path), dpi=dpi)
    except (OSError, ValueError) as exc:
        raise OSError(f"{os.fspath(path)}: cannot write plot ({exc})") from None


def _annotate(ax: Any, r: EvalReport) -> None:
    text = f"ECE {r.ece:.4f}\nMCE {r.mce:.4f}\nrows {r.rows:,}"
    ax.text(0.97, 0.03, text, transform=ax.transAxes, ha="right", va="bottom", fontsize=8,
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8})
