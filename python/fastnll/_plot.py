"""Plots (optional: ``pip install fastnll[plot]``): the reliability diagram with its confidence
histogram, the per-position NLL curve of a [B, T, V] dump, and the KL histogram of a compare.

matplotlib is imported only here, inside the functions, and drawn with the Agg canvas directly
(no pyplot, no change to the global backend). Colours are opaque and distinct (one colour per
legend entry); empty bins are not drawn. Each function writes the file and returns the
matplotlib Figure.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from ._report import CompareReport, EvalReport

__all__ = ["kl_histogram", "position_curve", "reliability_diagram", "require_matplotlib"]

MISSING = "plotting needs matplotlib, which is not installed: pip install 'fastnll[plot]'"
BLUE, ORANGE, GREEN, GREY, RED = "#3b6fb6", "#e07b28", "#3f9a5a", "#7f7f7f", "#c0392b"


def require_matplotlib() -> None:
    """Raise ImportError with an install hint when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError(MISSING) from None


def _figure(size: Any) -> Any:
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | os.PathLike[str], dpi: int) -> None:
    fig.tight_layout()
    try:
        fig.savefig(os.fspath(path), dpi=dpi)
    except (OSError, ValueError) as exc:
        raise OSError(f"{os.fspath(path)}: cannot write plot ({exc})") from None


def reliability_diagram(
    report: EvalReport,
    path: str | os.PathLike[str],
    title: str | None = None,
    dpi: int = 120,
    log_counts: bool | None = None,
) -> Any:
    """Write a PNG (or any format matplotlib infers from the suffix). Top: per non-empty
    confidence bin, top-1 accuracy (bars, with a 95% binomial error bar from the bin's row
    count) and mean confidence (markers) against the diagonal, each bar labelled with its row
    count. Bottom: rows per bin, on a log scale when ``log_counts`` (default: when the
    non-empty bins' counts span more than a factor 100)."""
    fig = _figure((6.0, 6.8))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.2]})
    bins = [b for b in report.bins if b.count > 0]
    width = 1.0 / report.n_bins
    lefts = np.array([b.lower for b in bins])
    mids = lefts + width / 2
    acc = np.array([b.accuracy for b in bins], dtype=float)
    conf = np.array([b.mean_confidence for b in bins], dtype=float)
    counts = np.array([b.count for b in bins])
    err = 1.96 * np.sqrt(np.clip(acc * (1 - acc), 0, None) / np.maximum(counts, 1))
    top.plot([0, 1], [0, 1], "--", color=GREY, linewidth=1, label="perfect calibration")
    top.bar(
        lefts,
        acc,
        width=width * 0.9,
        align="edge",
        color=BLUE,
        edgecolor="white",
        label="top-1 accuracy (95% interval)",
        zorder=2,
    )
    top.errorbar(
        mids - width * 0.05,
        acc,
        yerr=err,
        fmt="none",
        ecolor="black",
        elinewidth=0.9,
        capsize=2,
        zorder=3,
    )
    top.plot(
        mids - width * 0.05,
        conf,
        "D",
        color=ORANGE,
        markersize=5,
        label="mean confidence",
        zorder=4,
    )
    fs = 7 if len(bins) <= 20 else 5
    for x, a, e, c, n in zip(mids - width * 0.05, acc, err, conf, counts):
        y = min(max(a + e, c + 0.025), 0.97) + 0.015  # above the error bar and the marker
        top.text(
            x,
            y,
            f"{n:,}",
            ha="center",
            va="bottom",
            fontsize=fs,
            rotation=90 if len(bins) > 12 else 0,
            color="black",
        )
    top.set_xlim(0, 1)
    top.set_ylim(0, 1.08)
    top.set_ylabel("top-1 accuracy")
    top.legend(loc="upper left", fontsize=8, framealpha=1.0)
    _annotate(top, report)
    if title:
        top.set_title(title, fontsize=10)
    bottom.bar(lefts, counts, width=width * 0.9, align="edge", color=GREEN, edgecolor="white")
    if log_counts is None:
        log_counts = counts.size > 0 and counts.max() > 100 * counts.min()
    if log_counts:
        bottom.set_yscale("log")
    bottom.set_xlabel("confidence (max probability)")
    bottom.set_ylabel("rows" + (" (log)" if log_counts else ""))
    _save(fig, path, dpi)
    return fig


def _annotate(ax: Any, r: EvalReport) -> None:
    text = f"ECE {r.ece:.4f}\nMCE {r.mce:.4f}\nrows {r.rows:,}"
    ax.text(
        0.97,
        0.03,
        text,
        transform=ax.transAxes,
        ha="right",
        va="bottom",
        fontsize=8,
        bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": GREY},
    )


def position_curve(
    extras: Any, path: str | os.PathLike[str], title: str | None = None, dpi: int = 120
) -> Any:
    """Mean NLL per position t (``evaluate(per_position=True).extras``) with its 95% band from
    the standard error across the position's rows; positions with no scored row are left
    out. Below: rows scored per position."""
    if extras is None or extras.position_count is None:
        raise ValueError("position_curve needs evaluate(..., per_position=True).extras")
    fig = _figure((7.0, 5.0))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    cnt = extras.position_count
    pos = np.flatnonzero(cnt > 0)
    m = extras.position_mean_nll[pos]
    se = np.nan_to_num(extras.position_nll_se[pos], nan=0.0)
    top.fill_between(
        pos, m - 1.96 * se, m + 1.96 * se, color="#b9cde8", linewidth=0, label="95% interval"
    )
    top.plot(pos, m, color=BLUE, linewidth=1.4, label="mean NLL")
    top.set_ylabel("mean NLL (nats)")
    top.legend(loc="upper right", fontsize=8, framealpha=1.0)
    if title:
        top.set_title(title, fontsize=10)
    bottom.bar(pos, cnt[pos], width=1.0, color=GREEN)
    bottom.set_xlabel("position t")
    bottom.set_ylabel("rows")
    _save(fig, path, dpi)
    return fig


def kl_histogram(
    report: CompareReport,
    path: str | os.PathLike[str],
    title: str | None = None,
    dpi: int = 120,
    log_counts: bool = False,
) -> Any:
    """Rows per KL(base || new) on log-spaced bins (10 per decade; rows with KL below 1e-15,
    e.g. identical rows, are counted in the text, not drawn), with the median, 99% and max."""
    edges, counts = report.kl_hist_edges, report.kl_hist_counts
    if edges is None or counts is None:
        raise ValueError("kl_histogram needs a CompareReport from fastnll.compare")
    fig = _figure((6.5, 4.2))
    ax = fig.subplots(1, 1)
    drawn = int(np.sum(counts))
    if counts.size:
        ax.bar(
            edges[:-1],
            counts,
            width=np.diff(edges),
            align="edge",
            color=BLUE,
            edgecolor="white",
            linewidth=0.5,
        )
        ax.set_xscale("log")
        from matplotlib.ticker import NullFormatter

        ax.xaxis.set_minor_formatter(NullFormatter())  # decade labels only: no overlaps
    pct = report.kl_percentiles
    for key, colour, label in (
        ("median", ORANGE, "median"),
        ("99", RED, "99%"),
        ("max", "black", "max"),
    ):
        v = pct.get(key, math.nan)
        if v > 0 and math.isfinite(v):
            ax.axvline(v, color=colour, linewidth=1.2, linestyle="--", label=f"{label} {v:.4g}")
    if log_counts:
        ax.set_yscale("log")
    ax.set_xlabel("KL(base || new) per row (nats)")
    ax.set_ylabel("rows" + (" (log)" if log_counts else ""))
    zero = report.rows - drawn
    ax.text(
        0.02,
        0.97,
        f"mean {report.mean_kl:.5g} +/- {report.kl_se:.2g}\nrows {report.rows:,}"
        + (f"\n{zero:,} rows with KL < 1e-15 (not drawn)" if zero else ""),
        transform=ax.transAxes,
        ha="left",
        va="top",
        fontsize=8,
        bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": GREY},
    )
    if any(pct.get(k, 0) > 0 for k in ("median", "99", "max")):
        ax.legend(loc="upper right", fontsize=8, framealpha=1.0)
    if title:
        ax.set_title(title, fontsize=10)
    _save(fig, path, dpi)
    return fig
