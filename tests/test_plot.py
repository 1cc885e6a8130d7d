"""The plots: files written, what is drawn (no empty bins, opaque distinct colours, counts on
the bars, log scale), and the CLI options that make them."""

from __future__ import annotations

import numpy as np
import pytest

import fastnll

pytest.importorskip("matplotlib")
from matplotlib.colors import to_rgba
from matplotlib.patches import Rectangle

from fastnll._plot import kl_histogram, position_curve, reliability_diagram


def _bars(ax):
    return [p for p in ax.patches if isinstance(p, Rectangle) and p.get_height() > 0]


def overconfident(n: int = 5000, c: int = 10):
    rng = np.random.default_rng(0)
    z = rng.standard_normal((n, c)) * 2.5
    u = z / 1.8
    p = np.exp(u - np.logaddexp.reduce(u, axis=1, keepdims=True))
    t = np.minimum((p.cumsum(1) < rng.random((n, 1))).sum(1), c - 1)
    return z.astype(np.float32), t


def test_reliability_diagram_draws_only_nonempty_bins_with_counts(tmp_path) -> None:
    z, t = overconfident()
    rep = fastnll.evaluate(z, t, n_bins=20)
    nonempty = [b for b in rep.bins if b.count]
    assert len(nonempty) < 20  # some bins are empty (confidence >= 1/C)
    fig = reliability_diagram(rep, tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 5000
    top, bottom = fig.axes
    bars = _bars(top)
    assert len(bars) == len(nonempty)  # no bar (or line along the axis) for empty bins
    assert [round(b.get_height(), 12) for b in bars] == [round(b.accuracy, 12) for b in nonempty]
    labels = {tx.get_text() for tx in top.texts}
    assert {f"{b.count:,}" for b in nonempty} <= labels  # the row count on every bar
    assert len(_bars(bottom)) == len(nonempty)
    # opaque, and one colour per legend entry
    for p in bars + _bars(bottom):
        assert to_rgba(p.get_facecolor())[3] == 1.0
    handles, names = top.get_legend_handles_labels()
    assert len(names) == 3
    colours = set()
    for h in handles:
        if hasattr(h, "patches"):  # a bar container
            colours.add(to_rgba(h.patches[0].get_facecolor()))
        elif h.get_marker() not in (None, "None", ""):
            colours.add(to_rgba(h.get_markerfacecolor()))
        else:
            colours.add(to_rgba(h.get_color()))
    assert len(colours) == 3


def test_reliability_log_scale_option(tmp_path) -> None:
    z, t = overconfident()
    rep = fastnll.evaluate(z, t)
    assert (
        reliability_diagram(rep, tmp_path / "a.png", log_counts=True).axes[1].get_yscale() == "log"
    )
    assert (
        reliability_diagram(rep, tmp_path / "b.png", log_counts=False).axes[1].get_yscale()
        == "linear"
    )


def test_position_curve(tmp_path) -> None:
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((8, 60, 20)) * np.linspace(1, 3, 60)[None, :, None]).astype(np.float32)
    t = rng.integers(0, 20, (8, 60))
    t[:, 10] = -100  # a position with no scored row is left out of the curve
    rep = fastnll.evaluate(x, t, per_position=True)
    fig = position_curve(rep.extras, tmp_path / "p.png")
    line = next(ln for ln in fig.axes[0].lines if ln.get_label() == "mean NLL")
    xs, ys = line.get_data()
    assert 10 not in xs and len(xs) == 59
    np.testing.assert_allclose(ys, np.delete(rep.extras.position_mean_nll, 10))
    with pytest.raises(ValueError, match="per_position=True"):
        position_curve(fastnll.evaluate(x, t).extras, tmp_path / "q.png")


def test_kl_histogram(tmp_path) -> None:
    rng = np.random.default_rng(2)
    a = (rng.standard_normal((3000, 50)) * 2).astype(np.float32)
    b = (a + rng.standard_normal(a.shape) * 0.1).astype(np.float32)
    b[:40] = a[:40]  # identical rows: KL exactly 0, counted apart
    rep = fastnll.compare(a, b, rng.integers(0, 50, 3000))
    fig = kl_histogram(rep, tmp_path / "k.png", log_counts=True)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert sum(p.get_height() for p in _bars(ax)) == 3000 - 40
    assert any("40 rows with KL < 1e-15" in tx.get_text() for tx in ax.texts)


def test_cli_compare_plot(tmp_path) -> None:
    from fastnll.cli import main

    rng = np.random.default_rng(3)
    a = rng.standard_normal((300, 20)).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", a * 1.1)
    np.save(tmp_path / "t.npy", rng.integers(0, 20, 300))
    code = main(
        [
            "compare",
            str(tmp_path / "a.npy"),
            str(tmp_path / "b.npy"),
            str(tmp_path / "t.npy"),
            "--plot",
            str(tmp_path / "k.png"),
            "--no-progress",
        ]
    )
    assert code == 0 and (tmp_path / "k.png").stat().st_size > 5000
