"""fastnll.compare's llama.cpp --kl-divergence statistics against a float64 NumPy reference
written here from llama.cpp's formulas (tools/perplexity/perplexity.cpp), and torch's kl_div."""

from __future__ import annotations

import json
import math
from typing import Any

import ml_dtypes
import numpy as np
import pytest

import fastnll
from fastnll._report import format_compare
from fastnll.evaluate import compare

DT = {
    "float32": np.float32,
    "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
    "float64": np.float64,
}


def _logp(x: np.ndarray, kind: str) -> np.ndarray:
    x = x.astype(np.float64)
    with np.errstate(divide="ignore"):
        if kind == "logits":
            m = x.max(-1, keepdims=True)
            return x - (m + np.log(np.exp(x - m).sum(-1, keepdims=True)))
        return x if kind == "log_probs" else np.log(x)


def reference(
    base: np.ndarray, new: np.ndarray, t: np.ndarray, kind: str = "logits", ignore_index: int = -100
) -> dict[str, Any]:
    """Per-row values and the llama.cpp statistics, float64, whole arrays at once."""
    c = base.shape[-1]
    lb, ln = _logp(base, kind).reshape(-1, c), _logp(new, kind).reshape(-1, c)
    t = t.reshape(-1)
    v = t != ignore_index
    lb, ln, tt = lb[v], ln[v], t[v]
    with np.errstate(invalid="ignore"):  # KL of the renormalised rows (docs/evaluate.md)
        lbn = lb - np.logaddexp.reduce(lb, axis=1, keepdims=True)
        lnn = ln - np.logaddexp.reduce(ln, axis=1, keepdims=True)
        pb = np.exp(lbn)
        kl = np.where(pb > 0, pb * (lbn - lnn), 0.0).sum(1)
    r = np.arange(tt.size)
    nb, nn = -lb[r, tt], -ln[r, tt]
    dp = np.exp(-nn) - np.exp(-nb)
    same = np.argmax(base.reshape(-1, c)[v].astype(np.float64), 1) == np.argmax(
        new.reshape(-1, c)[v].astype(np.float64), 1
    )
    n = tt.size
    se = lambda a: float(np.std(a, ddof=1) / math.sqrt(n))
    cov = float(np.cov(nn, nb, ddof=1)[0, 1] / n)
    ppl_b, ppl_n = math.exp(nb.mean()), math.exp(nn.mean())
    lr_se = math.sqrt(se(nn) ** 2 + se(nb) ** 2 - 2 * cov)
    p = same.mean()
    mse, mse_se = float((dp * dp).mean()), se(dp * dp)
    pct = lambda a, q: float(np.percentile(a, 100 * q))
    return {
        "kl": kl,
        "dp": dp,
        "nll_base": nb,
        "nll_new": nn,
        "same": same,
        "rows": n,
        "mean_kl": kl.mean(),
        "kl_se": se(kl),
        "mean_dp": dp.mean(),
        "dp_se": se(dp),
        "dp_rms": math.sqrt(mse),
        "dp_rms_se": 0.5 / math.sqrt(mse) * mse_se,
        "top1_agreement": p,
        "top1_agreement_se": math.sqrt(p * (1 - p) / (n - 1)),
        "ppl_base": ppl_b,
        "ppl_base_se": ppl_b * se(nb),
        "ppl_new": ppl_n,
        "ppl_new_se": ppl_n * se(nn),
        "ln_ppl_ratio": nn.mean() - nb.mean(),
        "ln_ppl_ratio_se": lr_se,
        "ppl_ratio": math.exp(nn.mean() - nb.mean()),
        "ppl_ratio_se": math.exp(nn.mean() - nb.mean()) * lr_se,
        "ppl_diff": ppl_n - ppl_b,
        "ppl_diff_se": math.sqrt(
            (ppl_n * se(nn)) ** 2 + (ppl_b * se(nb)) ** 2 - 2 * ppl_n * ppl_b * cov
        ),
        "ln_ppl_correlation": float(np.corrcoef(nn, nb)[0, 1]),
        "mean_dnll": (nn - nb).mean(),
        "dnll_se": se(nn - nb),
        "kl_pct": {
            "max": kl.max(),
            "99.9": pct(kl, 0.999),
            "99": pct(kl, 0.99),
            "95": pct(kl, 0.95),
            "90": pct(kl, 0.9),
            "median": float(np.median(kl)),
            "10": pct(kl, 0.1),
            "5": pct(kl, 0.05),
            "1": pct(kl, 0.01),
            "0.1": pct(kl, 0.001),
            "min": kl.min(),
        },
        "dp_pct": {
            k: pct(dp, q)
            for k, q in (
                ("max", 1),
                ("99.9", 0.999),
                ("99", 0.99),
                ("95", 0.95),
                ("90", 0.9),
                ("75", 0.75),
                ("median", 0.5),
                ("25", 0.25),
                ("10", 0.1),
                ("5", 0.05),
                ("1", 0.01),
                ("0.1", 0.001),
                ("min", 0),
            )
        },
    }


def _pair(
    rng: np.random.Generator,
    shape,
    noise: float,
    dtype_b: str = "float32",
    dtype_n: str = "float32",
    kind: str = "logits",
):
    z = rng.standard_normal(shape) * 2.0
    y = z + rng.standard_normal(shape) * noise
    if kind != "logits":
        z, y = _logp(z, "logits"), _logp(y, "logits")
        if kind == "probs":
            z, y = np.exp(z), np.exp(y)
    return z.astype(DT[dtype_b]), y.astype(DT[dtype_n])


SCALARS = (
    "mean_kl",
    "kl_se",
    "mean_dp",
    "dp_se",
    "dp_rms",
    "dp_rms_se",
    "top1_agreement",
    "top1_agreement_se",
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
    "ln_ppl_correlation",
    "mean_dnll",
    "dnll_se",
)


@pytest.mark.parametrize("kind", ["logits", "log_probs", "probs"])
@pytest.mark.parametrize(
    "dtypes",
    [
        ("float32", "float32"),
        ("bfloat16", "float16"),
        ("float64", "float32"),
        ("float16", "bfloat16"),
    ],
)
@pytest.mark.parametrize("c", [53, 2, 7, 32])  # C <= 32: 16-row SIMD lanes (and ragged ends)
def test_llama_statistics_match_reference(kind: str, dtypes, c: int) -> None:
    rng = np.random.default_rng(1)
    base, new = _pair(rng, (6, 70, c), 0.2, *dtypes, kind=kind)
    t = rng.integers(0, c, (6, 70))
    t[rng.random(t.shape) < 0.1] = -100
    rep = compare(base, new, t, kind=kind, chunk_bytes=3000, per_row=True, check_kind=False)
    ref = reference(base, new, t, kind)
    assert rep.rows == ref["rows"] and rep.ignored == int((t == -100).sum())
    for k in SCALARS:
        assert getattr(rep, k) == pytest.approx(ref[k], rel=1e-4, abs=1e-9), k
    for k, v in ref["kl_pct"].items():
        assert rep.kl_percentiles[k] == pytest.approx(v, rel=1e-4, abs=1e-9), k
    # Δp is a difference of probabilities from float32 row statistics: an absolute error of
    # up to ~1e-6 (the NLLs are float32-accurate), most of a 1e-5 median at C = 2
    for k, v in ref["dp_pct"].items():
        assert rep.dp_percentiles[k] == pytest.approx(v, rel=1e-4, abs=1e-6), k
    v = t != -100
    assert rep.row_kl.shape == t.shape
    np.testing.assert_allclose(rep.row_kl[v], ref["kl"], rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(rep.row_dp[v], ref["dp"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(rep.row_nll_base[v], ref["nll_base"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(rep.row_nll_new[v], ref["nll_new"], rtol=1e-5, atol=1e-7)
    assert np.array_equal(rep.row_same_top1[v] == 1, ref["same"])
    assert np.all(rep.row_same_top1[~v] == -1) and np.all(np.isnan(rep.row_kl[~v]))
    assert rep.percentile_method == "exact"


def test_small_kl_is_accurate_to_many_digits() -> None:
    """KL ~ 1e-5 per row (a good quantisation): the SIMD sum keeps 4+ significant digits."""
    rng = np.random.default_rng(2)
    base, new = _pair(rng, (2000, 300), 0.006)
    t = rng.integers(0, 300, 2000)
    ref = reference(base, new, t)
    before = fastnll.simd_path()  # restored after: later tests run on the path pinned for them
    for path in fastnll.available_simd_paths():
        fastnll.set_simd_path(path)
        try:
            rep = compare(base, new, t, per_row=True)
        finally:
            fastnll.set_simd_path(before)
        assert 1e-6 < ref["mean_kl"] < 1e-4
        assert rep.mean_kl == pytest.approx(ref["mean_kl"], rel=1e-5), path
        np.testing.assert_allclose(rep.row_kl, ref["kl"], rtol=1e-4, err_msg=path)
        assert f"{rep.mean_kl:.5g}" in format_compare(rep)  # e.g. 1.684e-05: 5 digits


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64"])
@pytest.mark.parametrize("kind", ["logits", "log_probs", "probs"])
def test_identical_dumps_give_exactly_zero(dtype: str, kind: str) -> None:
    rng = np.random.default_rng(3)
    base, _ = _pair(rng, (300, 1030), 0.1, dtype, dtype, kind=kind)
    base[0, :7] = -np.inf if kind != "probs" else 0.0  # masked classes
    t = rng.integers(7, 1030, 300)
    before = fastnll.simd_path()
    for path in fastnll.available_simd_paths():
        fastnll.set_simd_path(path)
        try:
            rep = compare(base, base.copy(), t, kind=kind, per_row=True, check_kind=False)
        finally:
            fastnll.set_simd_path(before)
        assert rep.mean_kl == 0.0 and rep.kl_percentiles["max"] == 0.0, path
        assert np.all(rep.row_kl == 0.0) and rep.mean_dp == 0.0 and rep.top1_agreement == 1
        assert rep.ppl_ratio == 1.0 and rep.ppl_diff == 0.0


def test_new_model_zero_where_base_positive_is_infinite() -> None:
    base = np.zeros((3, 4), np.float32)
    new = base.copy()
    new[1, 2] = -np.inf  # new gives class 2 probability 0, base 1/4
    base[2, 0] = new[2, 0] = -np.inf  # both mask class 0: finite
    rep = compare(base, new, np.array([1, 1, 1]), per_row=True)
    assert rep.row_kl[0] == 0 and rep.row_kl[1] == math.inf
    assert rep.row_kl[2] == 0
    # base masks a class the new model keeps: finite, = ln(4/3)
    rep = compare(new, base, np.array([1, 1, 1]), per_row=True)
    assert rep.row_kl[1] == pytest.approx(math.log(4 / 3), rel=1e-6)


def test_matches_torch_kl_div() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    base, new = _pair(rng, (500, 2049), 0.3)
    t = rng.integers(0, 2049, 500)
    rep = compare(base, new, t, per_row=True)
    lb = torch.log_softmax(torch.from_numpy(base).double(), -1)
    ln = torch.log_softmax(torch.from_numpy(new).double(), -1)
    kl = torch.nn.functional.kl_div(ln, lb, log_target=True, reduction="none").sum(-1)
    np.testing.assert_allclose(rep.row_kl, kl.numpy(), rtol=1e-5)


def test_chunked_whole_and_histogram_agree() -> None:
    rng = np.random.default_rng(5)
    base, new = _pair(rng, (4, 500, 40), 0.3, "bfloat16", "float32")
    t = rng.integers(0, 40, (4, 500))
    whole = compare(base, new, t)
    chunked = compare(base, new, t, chunk_bytes=999)
    for k in SCALARS:
        assert getattr(chunked, k) == pytest.approx(getattr(whole, k), rel=1e-12, abs=1e-15), k
    assert chunked.kl_percentiles == whole.kl_percentiles  # the same per-row values
    hist = compare(base, new, t, max_exact_rows=0)
    assert hist.percentile_method == "histogram" and hist.percentile_rel_error < 0.0012
    for k, v in whole.kl_percentiles.items():  # within the stated error
        assert abs(hist.kl_percentiles[k] - v) <= 2 * hist.percentile_rel_error * abs(v) + 1e-15, k
    for k, v in whole.dp_percentiles.items():
        # an interpolated percentile between two bins: stated error of each order statistic
        assert abs(hist.dp_percentiles[k] - v) <= 2 * hist.percentile_rel_error * abs(v) + 1e-12, k
    assert hist.mean_kl == whole.mean_kl


def test_per_row_file_and_json(tmp_path) -> None:
    rng = np.random.default_rng(6)
    base, new = _pair(rng, (3, 40, 17), 0.5)
    t = rng.integers(0, 17, (3, 40))
    t[0, :5] = -100
    path = tmp_path / "rows.npy"
    rep = compare(base, new, t, per_row=path, chunk_bytes=500)
    rec = np.load(path)
    assert rec.dtype.names == ("kl", "dp", "nll_base", "nll_new", "same_top1")
    assert rec.shape == (3, 40)
    ref = reference(base, new, t)
    np.testing.assert_allclose(rec["kl"][t != -100], ref["kl"], rtol=1e-4, atol=1e-9)
    assert np.all(rec["same_top1"][0, :5] == -1)
    d = json.loads(json.dumps(rep.to_dict(), allow_nan=False))
    assert d["schema_version"] == 2 and set(d["kl_percentiles"]) == set(ref["kl_pct"])
    assert d["ppl_ratio"] == pytest.approx(ref["ppl_ratio"], rel=1e-5)


def test_cli_compare_per_row(tmp_path) -> None:
    from fastnll.cli import main

    rng = np.random.default_rng(7)
    base, new = _pair(rng, (200, 30), 0.4)
    t = rng.integers(0, 30, 200)
    for name, a in (("b.npy", base), ("n.npy", new), ("t.npy", t)):
        np.save(tmp_path / name, a)
    code = main(
        [
            "compare",
            str(tmp_path / "b.npy"),
            str(tmp_path / "n.npy"),
            str(tmp_path / "t.npy"),
            "--per-row",
            str(tmp_path / "r.npy"),
            "--no-progress",
            "--json",
            str(tmp_path / "c.json"),
        ]
    )
    assert code == 0
    rec = np.load(tmp_path / "r.npy")
    np.testing.assert_allclose(rec["kl"], reference(base, new, t)["kl"], rtol=1e-4)
    assert json.loads((tmp_path / "c.json").read_text())["rows"] == 200


def test_failed_compare_leaves_per_row_file_untouched(tmp_path) -> None:
    """A target out of range in the last chunk: IndexError naming it, the existing records
    file unchanged and no partial file left beside it."""
    rng = np.random.default_rng(8)
    base, new = _pair(rng, (2, 50, 9), 0.3)
    t = rng.integers(0, 9, (2, 50))
    t[1, 45] = 9
    path = tmp_path / "rows.npy"
    path.write_bytes(b"previous results")
    with pytest.raises(IndexError, match=r"target 9 at position \(1, 45\)"):
        compare(base, new, t, per_row=path, chunk_bytes=300)
    assert path.read_bytes() == b"previous results"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.npy"]
    with pytest.raises(OSError, match="nodir/rows.npy: cannot write"):
        compare(base, new, np.zeros((2, 50), int), per_row=tmp_path / "nodir" / "rows.npy")


def test_nan_rows_give_nan_kl_and_are_left_out_of_percentiles() -> None:
    rng = np.random.default_rng(9)
    base, new = _pair(rng, (300, 20), 0.3)
    new[7, 3] = np.nan
    t = rng.integers(0, 20, 300)
    rep = compare(base, new, t, per_row=True, check_kind=False)
    assert np.isnan(rep.row_kl[7]) and math.isnan(rep.mean_kl)
    keep = np.arange(300) != 7
    ref = reference(base[keep], new[keep], t[keep])
    assert rep.kl_percentiles["median"] == pytest.approx(ref["kl_pct"]["median"], rel=1e-4)
    assert rep.kl_percentiles["max"] == pytest.approx(ref["kl_pct"]["max"], rel=1e-4)


@pytest.mark.parametrize("kind", ["logits", "log_probs"])
@pytest.mark.parametrize("c", [2, 5, 32])
def test_short_rows_lanes_and_row_path_agree_on_odd_rows(kind: str, c: int) -> None:
    # C <= 32 runs 16 rows per SIMD lane group; rows that are not ordinary (+inf, NaN, a
    # huge max, -inf entries, identical rows, argmax ties) must give what the row path (the
    # scalar path has no lanes) gives, and the ordinary rows the float64 reference's values
    rng = np.random.default_rng(c)
    n = 16 * 6 + 3
    base = (rng.standard_normal((n, c)) * 3).astype(np.float32)
    if kind == "log_probs":
        base -= np.logaddexp.reduce(base.astype(np.float64), axis=1, keepdims=True).astype(
            np.float32
        )
    new = (base + 0.3 * rng.standard_normal((n, c))).astype(np.float32)
    base[3, 0] = np.inf
    new[20, -1] = np.nan
    base[37] = base[37] + 1e31
    base[50, 0] = new[50, 0] = -np.inf
    new[60] = base[60]
    base[70] = new[70] = -1.0  # every class ties: the first index is the argmax
    t = rng.integers(0, c, n)
    t[50] = 0  # the masked class as target: NLL inf
    t[9] = -100
    before = fastnll.simd_path()
    got = {}
    try:
        for p in fastnll.available_simd_paths():
            fastnll.set_simd_path(p)
            got[p] = compare(base, new, t, kind=kind, per_row=True, check_kind=False)
    finally:
        fastnll.set_simd_path(before)
    row = got["scalar"]
    for p, rep in got.items():
        for name in ("row_kl", "row_dp", "row_nll_base", "row_nll_new"):
            a, b = getattr(rep, name), getattr(row, name)
            np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=f"{p} {name}")
            np.testing.assert_array_equal(np.isinf(a), np.isinf(b), err_msg=f"{p} {name}")
            fin = np.isfinite(a) & np.isfinite(b)
            np.testing.assert_allclose(a[fin], b[fin], rtol=1e-4, atol=1e-6, err_msg=f"{p} {name}")
        np.testing.assert_array_equal(rep.row_same_top1, row.row_same_top1, err_msg=p)
    assert row.row_kl[60] == 0.0 and all(r.row_kl[60] == 0.0 for r in got.values())
    assert all(r.row_same_top1[70] == 1 for r in got.values())
    assert all(np.isinf(r.row_nll_base[50]) for r in got.values())
    ref = reference(base, new, t, kind)
    ok = np.ones(n, bool)
    ok[[3, 9, 20, 37, 50]] = False
    v = t != -100
    np.testing.assert_allclose(got[before].row_kl[ok], ref["kl"][ok[v]], rtol=1e-4, atol=1e-8)


def test_merge_past_max_exact_rows_counts_each_value_once() -> None:
    # An accumulator holds either exact values or histogram counts of a value, never both:
    # merging parts past max_exact_rows moves the held values into the histograms once, so
    # the merged histograms equal one histogram of every value (and exact parts merged within
    # the limit keep exact percentiles)
    from fastnll._compare_stats import CompareAccumulator, LogHistogram

    rng = np.random.default_rng(8)
    parts = []
    every_kl, every_dp = [], []
    for k in range(4):
        n = 300 + 50 * k
        kl = rng.exponential(1e-3, n)
        dp = rng.normal(0, 1e-2, n)
        same = np.where(rng.random(n) < 0.1, -1, 1).astype(np.int8)
        acc = CompareAccumulator(exact=True, max_exact_rows=700, capacity=n if k % 2 else 0)
        acc.add({key: 0 for key in acc.sums}, kl, dp, same)
        parts.append(acc)
        every_kl.append(kl[same >= 0])
        every_dp.append(dp[same >= 0])
    a = parts[0].merge(parts[1])  # 2 x ~300 rows: within 700, still exact
    assert a.exact and a.percentiles()[2] == "exact"
    a.merge(parts[2]).merge(parts[3])  # past 700: histograms
    assert not a.exact and a.percentiles()[2] == "histogram"
    ref_kl, ref_dp = LogHistogram(), LogHistogram(hi=10.0, signed=True)
    ref_kl.add(np.concatenate(every_kl))
    ref_dp.add(np.concatenate(every_dp))
    np.testing.assert_array_equal(a.kl_hist.counts, ref_kl.counts)
    np.testing.assert_array_equal(a.dp_hist.counts, ref_dp.counts)


@pytest.mark.parametrize(
    "make",
    [
        lambda g: g.lognormal(-10, 3, 1_000_003),  # KL-like: positive, heavy-tailed
        lambda g: g.normal(0, 1e-3, 300_001),  # delta-p-like: signed
        lambda g: np.round(g.normal(0, 2, 50_000)),  # many ties
        lambda g: np.array([0.0, -0.0, np.inf, -np.inf, 5e-324, -1e300, np.nan, 1.0]),
        lambda g: np.full(10_000, 0.125),
        lambda g: np.array([7.0]),
    ],
)
def test_exact_percentiles_match_numpy(make):
    """The core's radix pre-selection gives the percentiles of the non-NaN values exactly
    (llama.cpp's rule on a full sort, written here: (1 - f)·v[i] + f·v[i + 1] at h = q·(n - 1)),
    within rounding of NumPy's, and leaves its input unchanged."""
    from fastnll._compare_stats import DP_LEVELS, KL_LEVELS, exact_percentiles

    v = make(np.random.default_rng(11))
    before = v.copy()
    s = np.sort(v[~np.isnan(v)])
    n = s.size
    for levels in (KL_LEVELS, DP_LEVELS):
        got = exact_percentiles(v, levels)
        for name, q in levels:
            h = q * (n - 1)
            i = min(math.floor(h), n - 1)
            f = h - i
            want = s[i] if f == 0 or i + 1 >= n else (1 - f) * s[i] + f * s[i + 1]
            assert got[name] == want, (name, q, got[name], want)
            if np.all(np.isfinite(s[max(i - 1, 0) : i + 2])):
                np.testing.assert_allclose(got[name], np.percentile(s, 100 * q), rtol=1e-12)
    assert np.array_equal(v, before, equal_nan=True)


@pytest.mark.parametrize("per_decade", [10, 1000])
@pytest.mark.parametrize("signed", [False, True])
def test_log_histogram_bins_match_the_log10_formula(per_decade, signed):
    """The core's log-spaced histogram (LogHistogram.add) against NumPy's floor(log10(|v|/lo)
    · per_decade) written here, with zeros, NaN, inf, values below lo and beyond hi."""
    from fastnll._compare_stats import LogHistogram

    g = np.random.default_rng(per_decade)
    v = np.exp(g.normal(size=200_000) * 6 - 10)
    if signed:
        v *= np.where(g.random(v.size) < 0.5, -1, 1)
    v[:6] = [0.0, -0.0, 1e-20, np.inf, -np.inf, 1e30]
    v[6:9] = np.nan
    h = LogHistogram(per_decade=per_decade, signed=signed, hi=1e5)
    h.add(v[: v.size // 2])
    h.add(v[v.size // 2 :])
    nb, lo = h.nb, h.lo
    w = v[~np.isnan(v)]
    a = np.abs(w)
    with np.errstate(divide="ignore"):
        k = np.floor((np.log10(np.maximum(a, lo)) - np.log10(lo)) * per_decade)
    k = np.minimum(k, nb).astype(np.int64)
    k[a < lo] = -1
    if signed:
        z = nb + 1
        idx = np.where(k < 0, z, np.where(w > 0, z + 1 + k, z - 1 - k))
    else:
        idx = k + 1
    ref = np.bincount(idx, minlength=h.counts.size)
    assert h.nan == 3
    assert np.array_equal(h.counts, ref)


@pytest.mark.parametrize("case", ["chi2", "ties", "inf", "all_nan", "one"])
def test_core_quantiles_skip_nan_and_match_the_sorted_values(case):
    """_core.quantiles (compare's exact percentiles): the linear rule on the sorted non-NaN
    values, written here, bit for bit; NaN skipped without a copy; the input left as given."""
    from fastnll import _core
    from fastnll._compare_stats import DP_LEVELS

    g = np.random.default_rng(3)
    n = 300_001
    v = {
        "chi2": g.normal(size=n) ** 2 * 1e-3,
        "ties": g.integers(0, 3, n).astype(np.float64),  # wide buckets: narrowed, not copied
        "inf": np.where(g.random(n) < 0.01, np.inf, g.normal(size=n)),
        "all_nan": np.full(n, np.nan),
        "one": np.array([2.5]),
    }[case]
    if case not in ("all_nan", "one"):
        v[::5] = np.nan
    before = v.copy()
    qs = [q for _, q in DP_LEVELS]
    got, m = _core.quantiles(v, qs)
    assert np.array_equal(v, before, equal_nan=True)
    s = np.sort(v[~np.isnan(v)])
    assert m == s.size
    if m == 0:
        assert all(np.isnan(got))
        return
    want = []
    for q in qs:
        h = q * (m - 1)
        i = min(int(np.floor(h)), m - 1)
        f = h - i
        want.append(s[i] if f == 0 or i + 1 >= m else (1 - f) * s[i] + f * s[i + 1])
    assert np.array_equal(np.array(got), np.array(want)), (got, want)
    with pytest.raises(ValueError, match="outside"):
        _core.quantiles(v, [1.5])
