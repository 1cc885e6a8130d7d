"""The same data in every layout and target dtype gives bit-identical results (issue 14), on
every short-row scheme; float64 evaluate is exact; the core's per-row confidence and argmax tie
rule match float64 / torch references written here."""

from __future__ import annotations

import numpy as np
import pytest

import fastnll
from fastnll import _core

ml_dtypes = pytest.importorskip("ml_dtypes")

DTYPES = {"f32": np.float32, "f16": np.float16, "bf16": ml_dtypes.bfloat16, "f64": np.float64}


def _data(n: int, c: int, dt, seed: int):
    g = np.random.default_rng(seed)
    x = (g.standard_normal((n, c)) * 3).astype(dt)
    t = g.integers(0, c, n)
    t[:613:23] = -100  # (the rows after 613 are clean runs, several tiles long)
    if c > 1:
        x[7, (t[7] + 1) % c] = -np.inf  # a masked class
    x[11, 0] = np.nan  # rows the kernels leave to the row kernel
    x[13] = (x[13].astype(np.float64) + 3000).astype(dt)
    return x, t


def _layouts(x: np.ndarray):
    """Views of the same logical matrix in the layouts users have."""
    n, c = x.shape
    wide = np.zeros((n, c + 5), x.dtype)
    wide[:, :c] = x
    twice = np.zeros((2 * n, c), x.dtype)
    twice[::2] = x
    swapped = x.astype(x.dtype.newbyteorder(">")) if x.dtype != DTYPES["bf16"] else None
    raw = np.zeros(x.nbytes + 1, np.uint8)
    mis = raw[1:].view(x.dtype).reshape(n, c)  # misaligned by one byte
    mis[...] = x
    out = {
        "C": x,
        "F": np.asfortranarray(x),
        "rows[::2]": twice[::2],
        "x[:, :C]": wide[:, :c],
        "reversed": x[::-1].copy()[::-1],
        "misaligned": mis,
    }
    if swapped is not None:
        out["byteswapped"] = swapped
    return out


def _results(x, t):
    res = {
        "ce_mean": fastnll.cross_entropy(x, t),
        "ce_none": fastnll.cross_entropy(x, t, reduction="none"),
        "ce_w": fastnll.cross_entropy(x, t, weight=np.linspace(0.5, 2, x.shape[1])),
        "lse": fastnll.logsumexp(x, axis=-1),
        "ce_smooth": fastnll.cross_entropy(x, t, label_smoothing=0.1),
        "ce_smooth_sum": fastnll.cross_entropy(x, t, label_smoothing=0.1, reduction="sum"),
        "log_softmax": fastnll.log_softmax(x),
        "softmax": fastnll.softmax(x),
    }
    rep = fastnll.evaluate(x, t, per_row=True, check_kind=False)
    res.update(
        ev_nll=rep.sum_nll,
        ev_acc=rep.accuracy,
        ev_top=rep.top_k_accuracy,
        ev_ece=rep.ece,
        ev_ent=rep.mean_entropy,
        ev_brier=rep.brier,
        ev_rows=rep.row_nll,
        ev_rank=rep.row_rank,
    )
    return res


def _same(a, b, what):
    for k in a:
        va, vb = a[k], b[k]
        if isinstance(va, np.ndarray):
            assert va.dtype == vb.dtype and np.array_equal(va.view(np.uint8), vb.view(np.uint8)), (
                f"{what}: {k} differs"
            )
        elif isinstance(va, float):
            assert np.float64(va).tobytes() == np.float64(vb).tobytes(), f"{what}: {k} {va} != {vb}"
        else:
            assert va == vb, f"{what}: {k}"


@pytest.mark.parametrize("scheme", ["gather", "transpose"])
@pytest.mark.parametrize("c", [1, 2, 3, 10, 24, 32, 33, 1000])
@pytest.mark.parametrize("tag", ["f32", "bf16", "f16", "f64"])
def test_every_layout_and_target_dtype_gives_the_same_bits(scheme, c, tag):
    before = _core.short_scheme()
    _core.set_short_scheme(scheme)
    try:
        # more than two of the widest tiles (4096 rows: stage::TARGET_TILE), so in-place runs
        # with widened targets and staged runs cross tile boundaries
        n = 150 if c >= 1000 else 613 if c > 32 else 8805
        x, t = _data(n, c, DTYPES[tag], seed=c)
        want = _results(x, t)
        for name, xv in _layouts(x).items():
            assert np.array_equal(
                np.asarray(xv, np.float64), np.asarray(x, np.float64), equal_nan=True
            )
            _same(want, _results(xv, t), f"{tag} C={c} layout {name}")
        for tdt in (np.int32, np.int16, np.uint16, np.uint8, np.uint32, np.int64):
            if np.iinfo(tdt).max < c:
                continue
            tt = t.astype(tdt)
            ign = -100 if np.issubdtype(tdt, np.signedinteger) else None
            if ign is None:
                # unsigned dumps mark ignored rows with a value of their own
                tt = np.where(t == -100, np.iinfo(tdt).max, t).astype(tdt)
                got = {
                    "ce_mean": fastnll.cross_entropy(x, tt, ignore_index=int(np.iinfo(tdt).max)),
                    "ce_none": fastnll.cross_entropy(
                        x, tt, reduction="none", ignore_index=int(np.iinfo(tdt).max)
                    ),
                }
                _same({k: want[k] for k in got}, got, f"{tag} C={c} targets {tdt.__name__}")
                continue
            _same(want, _results(x, tt), f"{tag} C={c} targets {tdt.__name__}")
            strided = np.zeros(2 * n, tdt)
            strided[::2] = tt
            _same(want, _results(x, strided[::2]), f"{tag} C={c} strided {tdt.__name__}")
    finally:
        _core.set_short_scheme(before)


@pytest.mark.parametrize("c, n", [(20000, 40), (140000, 20)])
@pytest.mark.parametrize("tag", ["f32", "bf16"])
def test_long_rows_in_every_layout_give_the_same_bits(c, n, tag):
    """Rows longer than 16 K float32 classes (a 32000-token vocabulary): chunks of at least 16
    rows reach the long-row kernels from every layout (they had gone row by row, element by
    element, in Fortran order), with the same bits as C order and a float64 reference's value.
    Rows over 512 KiB (C = 140000) come a row per chunk, and column-major ones a row per tile."""
    x, t = _data(n, c, DTYPES[tag], seed=7)
    want = _results(x, t)
    for name, xv in _layouts(x).items():
        _same(want, _results(xv, t), f"{tag} C={c} layout {name}")
    x64 = np.asarray(x, np.float64)
    keep = (t != -100) & np.isfinite(x64).all(axis=1)
    nll, rank, _, _ = _ref_rows(x64[keep], t[keep])
    np.testing.assert_allclose(want["ce_none"][keep], nll, rtol=2e-6, atol=0)
    np.testing.assert_allclose(want["ev_rows"][keep], nll, rtol=2e-6, atol=0)
    assert np.array_equal(want["ev_rank"][keep], rank)
    m = x64[keep].max(axis=1)
    lse = m + np.log(np.exp(x64[keep] - m[:, None]).sum(axis=1))
    np.testing.assert_allclose(np.asarray(want["lse"], np.float64)[keep], lse, rtol=2e-6)


def _bce_ref(x, y, w, pw):
    """float64 reference of binary_cross_entropy_with_logits per element (PyTorch's formula)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    lw = 1.0 if pw is None else 1.0 + (np.asarray(pw, np.float64) - 1.0) * y
    sp = np.log1p(np.exp(-np.abs(x))) + np.maximum(-x, 0.0)
    loss = (1.0 - y) * x + lw * sp
    return loss if w is None else loss * np.asarray(w, np.float64)


@pytest.mark.parametrize(
    "c, n", [(1, 300_000), (2, 140_000), (10, 30_000), (1000, 300), (32000, 12), (150_000, 2)]
)
@pytest.mark.parametrize("tag", ["f32", "bf16", "f16"])
def test_bce_with_logits_same_bits_in_every_layout(c, n, tag):
    """binary_cross_entropy_with_logits over more than one chunk (256 K elements): logits,
    targets and weights in every layout give C order's bits (strided and Fortran inputs had
    summed per row run, a different grouping, 1e-9 apart), and a float64 reference's value."""
    g = np.random.default_rng(c)
    dt = DTYPES[tag]
    x = (g.standard_normal((n, c)) * 4).astype(dt)
    y = g.random((n, c)).astype(dt)
    y[::3] = np.round(y[::3])  # hard 0/1 labels beside soft ones
    w = (g.random((n, c)) + 0.5).astype(dt)
    pw = np.linspace(0.5, 3.0, c)

    def res(xv, yv, wv):
        return {
            "mean": fastnll.binary_cross_entropy_with_logits(xv, yv),
            "sum_w": fastnll.binary_cross_entropy_with_logits(
                xv, yv, weight=wv, pos_weight=pw, reduction="sum"
            ),
            "none": fastnll.binary_cross_entropy_with_logits(xv, yv, reduction="none"),
        }

    want = res(x, y, w)
    ref = _bce_ref(x, y, None, None)
    np.testing.assert_allclose(np.asarray(want["none"], np.float64), ref, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(want["mean"], ref.mean(), rtol=1e-6)
    np.testing.assert_allclose(want["sum_w"], _bce_ref(x, y, w, pw).sum(), rtol=1e-6)
    ys, ws = _layouts(y), _layouts(w)
    for name, xv in _layouts(x).items():
        _same(want, res(xv, y, w), f"{tag} C={c} logits {name}")
        _same(want, res(x, ys[name], ws[name]), f"{tag} C={c} targets and weights {name}")
        _same(want, res(xv, ys[name], ws[name]), f"{tag} C={c} all {name}")
    # a weight of one row, broadcast (a zero row stride) vs written out in full
    w0 = np.ascontiguousarray(np.broadcast_to(w[0], x.shape))
    _same(
        {"s": fastnll.binary_cross_entropy_with_logits(x, y, weight=w[0], reduction="sum")},
        {"s": fastnll.binary_cross_entropy_with_logits(x, y, weight=w0, reduction="sum")},
        f"{tag} C={c} broadcast weight",
    )


@pytest.mark.parametrize("c, n", [(1000, 150), (20000, 40), (70000, 20), (140000, 16)])
@pytest.mark.parametrize("tag", ["f32", "bf16"])
def test_long_rows_soft_targets_and_compare_in_every_layout(c, n, tag):
    """The row paths of soft-target cross-entropy, label smoothing and compare read
    column-major rows from 16-row tiles (they had gathered each row element by element): every
    layout of logits and targets gives C order's bits and the float64 reference's value."""
    x, t = _data(n, c, DTYPES[tag], seed=c + 1)
    g = np.random.default_rng(c)
    y = g.random((n, c)).astype(DTYPES[tag])
    y = (np.asarray(y, np.float64) / np.asarray(y, np.float64).sum(axis=1, keepdims=True)).astype(
        DTYPES[tag]
    )
    x2 = (np.asarray(x, np.float64) + g.normal(0, 0.1, x.shape)).astype(DTYPES[tag])

    def res(xv, yv, bv):
        out = {
            "soft": fastnll.cross_entropy(xv, yv, reduction="none"),
            "soft_ls": fastnll.cross_entropy(xv, yv, label_smoothing=0.1, reduction="sum"),
            "smooth": fastnll.cross_entropy(xv, t, label_smoothing=0.1, reduction="none"),
        }
        out.update(_compare_results(xv, bv, t))
        return out

    want = res(x, y, x2)
    ys, bs = _layouts(y), _layouts(x2)
    for name, xv in _layouts(x).items():
        _same(want, res(xv, ys[name], bs[name]), f"{tag} C={c} layout {name}")
    x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
    ok = np.isfinite(x64).all(axis=1)
    m = x64[ok].max(axis=1, keepdims=True)
    lse = m + np.log(np.exp(x64[ok] - m).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(
        want["soft"][ok], (y64[ok] * (lse - x64[ok])).sum(axis=1), rtol=2e-6, atol=0
    )


def _ref_rows(x: np.ndarray, t: np.ndarray):
    """float64 reference: per-row NLL, rank (ties for the target), argmax rank, confidence."""
    x = np.asarray(x, np.float64)
    m = x.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))[:, 0]
    xt = x[np.arange(len(t)), t]
    rank = (x > xt[:, None]).sum(axis=1)
    before = np.arange(x.shape[1])[None, :] < t[:, None]
    rank_first = rank + ((x == xt[:, None]) & before).sum(axis=1)
    return lse - xt, rank, rank_first, np.exp(m[:, 0] - lse)


@pytest.mark.parametrize("c", [2, 5, 10, 32, 300])
def test_float64_evaluate_is_exact(c):
    g = np.random.default_rng(5)
    x = g.normal(size=(300, c))
    t = g.integers(0, c, 300)
    rep = fastnll.evaluate(x, t, per_row=True)
    nll, rank, _, _conf = _ref_rows(x, t)
    assert abs(rep.mean_nll - nll.mean()) <= 1e-12 * abs(nll.mean())
    np.testing.assert_allclose(rep.row_nll, nll, rtol=1e-12, atol=0)
    assert np.array_equal(rep.row_rank, rank)
    assert abs(rep.mean_nll - fastnll.cross_entropy(x, t)) <= 1e-13


def _eval_rows(x, t, ties="target"):
    n = x.shape[0]
    nll, rank, conf = np.empty(n), np.empty(n, np.int64), np.empty(n)
    xv, tag, swap = fastnll._arrays.core_view(x)
    _core.eval_rows(
        xv,
        tag,
        swap,
        t,
        "logits",
        -100,
        [1],
        15,
        nll_out=nll,
        rank_out=rank,
        conf_out=conf,
        ties=ties,
    )
    return nll, rank, conf


@pytest.mark.parametrize("c", [3, 10, 50])
def test_conf_out_and_argmax_ties(c):
    g = np.random.default_rng(c)
    # few distinct values: many ties, as in bfloat16 dumps
    x = g.integers(-3, 3, size=(500, c)).astype(np.float32)
    t = g.integers(0, c, 500)
    t[::17] = -100
    keep = t != -100
    nll_ref, rank_ref, first_ref, conf_ref = _ref_rows(x[keep], t[keep])
    nll, rank, conf = _eval_rows(x, t)
    assert np.array_equal(rank[keep], rank_ref)
    assert np.all(rank[~keep] == -1) and np.all(np.isnan(conf[~keep]))
    np.testing.assert_allclose(conf[keep], conf_ref, rtol=2e-6)
    np.testing.assert_allclose(nll[keep], nll_ref, rtol=2e-6, atol=2e-6)
    _, rank_first, _ = _eval_rows(x, t, ties="first")
    assert np.array_equal(rank_first[keep], first_ref)
    # the argmax rule is torch's: top-1 correct exactly where argmax (first max) is the target
    assert np.array_equal(rank_first[keep] == 0, x[keep].argmax(axis=1) == t[keep])
    with pytest.raises(ValueError, match="ties must be"):
        _eval_rows(x, t, ties="last")


@pytest.mark.parametrize("log", [True, False])
def test_softmax_out_writes_the_callers_array(log):
    f = fastnll.log_softmax if log else fastnll.softmax
    g = np.random.default_rng(2)
    for shape, axis, dt in [
        ((37, 10), -1, np.float32),
        ((5, 7, 300), 1, np.float64),
        ((64, 2), 0, ml_dtypes.bfloat16),
    ]:
        x = (g.standard_normal(shape) * 4).astype(dt)
        want_dt = np.float64 if dt == np.float64 else np.float32
        x64 = np.asarray(x, np.float64)
        m = x64.max(axis=axis, keepdims=True)
        ref = x64 - (m + np.log(np.exp(x64 - m).sum(axis=axis, keepdims=True)))
        ref = ref if log else np.exp(ref)
        out = np.moveaxis(np.full(np.moveaxis(x, axis, -1).shape, np.nan, want_dt), -1, axis)
        got = f(x, axis=axis, out=out)
        assert got is out
        tol = 1e-12 if dt == np.float64 else 2e-6
        np.testing.assert_allclose(out, ref, rtol=tol, atol=tol)
        np.testing.assert_array_equal(out, f(x, axis=axis))
    x = np.zeros((4, 3), np.float32)
    for bad, err, msg in [
        (np.zeros((4, 3), np.float64), TypeError, "dtype"),
        (np.zeros((3, 4), np.float32), ValueError, "shape"),
        (np.zeros((4, 6), np.float32)[:, ::2], ValueError, "C-contiguous"),
        (x, ValueError, "overlap"),
        ([0.0] * 12, TypeError, "NumPy array"),
    ]:
        with pytest.raises(err, match=msg):
            f(x, out=bad)
    ro = np.zeros((4, 3), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        f(x, out=ro)


@pytest.mark.parametrize("c", [5, 40])  # the short-row tile path and the row path
def test_label_smoothing_skips_zero_weight_classes(c):
    """A masked class (-inf logit) of weight 0 adds nothing to the smoothing term (0·inf is
    not taken), on the short-row path as on the row path; float64 reference written here."""
    g = np.random.default_rng(c)
    n, eps = 333, 0.1
    x = (g.standard_normal((n, c)) * 2).astype(np.float32)
    x[:, 3] = -np.inf
    w = g.uniform(0.5, 2.0, c)
    w[3] = 0.0
    t = g.choice([k for k in range(c) if k != 3], n)
    x64 = x.astype(np.float64)
    m = x64.max(axis=1, keepdims=True)
    lp = x64 - (m + np.log(np.exp(x64 - m).sum(axis=1, keepdims=True)))
    keep = w != 0
    smooth = -(lp[:, keep] * w[keep]).sum(axis=1)
    rows = (1 - eps) * w[t] * -lp[np.arange(n), t] + eps / c * smooth
    want = rows.sum() / w[t].sum()
    got = fastnll.cross_entropy(x, t, weight=w, label_smoothing=eps)
    assert np.isfinite(got) and got == pytest.approx(want, rel=2e-6)
    per = fastnll.cross_entropy(x, t, weight=w, label_smoothing=eps, reduction="none")
    np.testing.assert_allclose(per, rows, rtol=2e-6, atol=2e-6)


def test_misaligned_class_weights_read_correctly():
    """Class weights in a misaligned buffer (as an unpickled array can be) give the same loss
    as aligned ones: the core copies what it cannot read in place."""
    g = np.random.default_rng(3)
    x = g.normal(size=(50, 7)).astype(np.float32)
    t = g.integers(0, 7, 50)
    w = g.uniform(0.5, 2.0, 7)
    raw = np.zeros(w.nbytes + 1, np.uint8)
    mis = raw[1:].view(np.float64)
    mis[:] = w
    assert mis.ctypes.data % 8 != 0
    for kw in ({}, {"label_smoothing": 0.1}):
        assert fastnll.cross_entropy(x, t, weight=mis, **kw) == fastnll.cross_entropy(
            x, t, weight=w, **kw
        )
    lp = x - np.log(np.exp(x).sum(1, keepdims=True))
    assert fastnll.nll_loss(lp, t, weight=mis) == fastnll.nll_loss(lp, t, weight=w)


@pytest.mark.parametrize("c", [1, 2, 3, 10, 33])
@pytest.mark.parametrize("tag", ["f32", "bf16", "f16", "f64"])
def test_nll_loss_same_bits_in_every_layout_and_target_dtype(c, tag):
    # packed binary rows take SIMD lanes (kernel::nll_pairs), every other input the scalar
    # loop; both add 16 rows at a time into 16 partial sums in the same order, so every layout
    # and target dtype gives the same bits, within rounding of a float64 sum written here
    n = 16 * 70 + 5
    g = np.random.default_rng(c + 10 * len(tag))
    lp = (-np.abs(g.standard_normal((n, c))) * 3).astype(DTYPES[tag])
    t = g.integers(0, c, n)
    t[::23] = -100
    t[300:520] = -100
    if c > 1:
        lp[40, (t[40] + 1) % c] = -np.inf  # not read
        lp[41, (t[41] + 1) % c] = np.nan  # not read
    w = np.linspace(0.5, 2, c)

    def res(x, tt):
        return {
            "mean": fastnll.nll_loss(x, tt),
            "sum": fastnll.nll_loss(x, tt, reduction="sum"),
            "none": fastnll.nll_loss(x, tt, reduction="none"),
            "w": fastnll.nll_loss(x, tt, weight=w),
        }

    want = res(lp, t)
    x64, v = lp.astype(np.float64), t != -100
    picked = -x64[np.arange(n), np.where(v, t, 0)]
    assert want["sum"] == pytest.approx(picked[v].sum(), rel=1e-12)
    assert want["mean"] == pytest.approx(picked[v].mean(), rel=1e-12)
    np.testing.assert_allclose(want["none"], np.where(v, picked, 0.0), rtol=1e-6)
    for name, xv in _layouts(lp).items():
        _same(want, res(xv, t), f"nll {tag} C={c} layout {name}")
    for tdt in (np.int32, np.int16, np.int64):
        tt = t.astype(tdt)
        _same(want, res(lp, tt), f"nll {tag} C={c} targets {tdt.__name__}")
        strided = np.zeros(2 * n, tdt)
        strided[::2] = tt
        _same(want, res(lp, strided[::2]), f"nll {tag} C={c} strided {tdt.__name__}")
    # a probability in the middle of a run is reported with its position
    bad = lp.copy()
    k = int(np.flatnonzero(v[700:])[0]) + 700
    bad[k, t[k]] = 0.5
    with pytest.raises(ValueError, match=rf"position \({k}, {t[k]}\) is 0\.5"):
        fastnll.nll_loss(bad, t)


def _compare_results(a, b, t, kind="logits"):
    rep = fastnll.compare(a, b, t, kind=kind, per_row=True, check_kind=False)
    out = {k: getattr(rep, k) for k in ("sum_kl", "sum_dnll", "rows", "ignored")}
    out.update({f"kl_{k}": v for k, v in rep.kl_percentiles.items()})
    out.update({f"dp_{k}": v for k, v in rep.dp_percentiles.items()})
    for k in ("row_kl", "row_dp", "row_nll_base", "row_nll_new", "row_same_top1"):
        out[k] = np.ascontiguousarray(getattr(rep, k))
    for k in ("mean_kl", "kl_se", "mean_dp", "dp_rms", "top1_agreement", "ppl_ratio"):
        out[k] = getattr(rep, k)
    return out


@pytest.mark.parametrize("scheme", ["gather", "transpose"])
@pytest.mark.parametrize("c", [2, 3, 10, 32, 33])
@pytest.mark.parametrize("tag", ["f32", "bf16", "f16"])
@pytest.mark.parametrize("kind", ["logits", "log_probs"])
def test_compare_gives_the_same_bits_in_every_layout_and_target_dtype(scheme, c, tag, kind):
    """compare's clean runs (short rows read in place or staged, targets widened) and its
    group and row paths (ignored rows, a masked class, NaN and huge rows) give the same bits
    whatever the layout of either dump and the target dtype; the per-row values match a
    float64 reference."""
    before = _core.short_scheme()
    _core.set_short_scheme(scheme)
    try:
        n = 9001
        x, _ = _data(n, c, DTYPES[tag], seed=c + 7)
        g = np.random.default_rng(c)
        # mostly clean groups of 16 (the run kernel's), several tiles (256 rows at C = 32,
        # 4096 at C = 2 or with widened targets)
        t = g.integers(0, c, n)
        t[[1000, 2100]] = -100
        y = (np.asarray(x, np.float64) + g.standard_normal(x.shape) * 0.3).astype(x.dtype)
        y[200:260] = x[200:260]  # identical rows: KL 0
        if kind == "log_probs":
            # log-probabilities of the logits (the kernels renormalise them)
            def lp(v):
                v = np.asarray(v, np.float64)
                m = np.nanmax(np.where(np.isinf(v), np.nan, v), axis=1, keepdims=True)
                m = np.where(np.isnan(m), 0, m)
                return (v - m - np.log(np.exp(v - m).sum(axis=1, keepdims=True))).astype(x.dtype)

            with np.errstate(all="ignore"):
                x, y = lp(x), lp(y)
        t[400:450] = -100  # a run of ignored rows (the run kernel's backoff)
        want = _compare_results(x, y, t, kind)
        lx, ly = _layouts(x), _layouts(y)
        for name in lx:
            _same(want, _compare_results(lx[name], ly[name], t, kind), f"{tag} C={c} {name}")
            _same(want, _compare_results(lx[name], y, t, kind), f"{tag} C={c} {name} / C order")
        for tdt in (np.int32, np.int16):
            tt = t.astype(tdt)
            _same(want, _compare_results(x, y, tt, kind), f"{tag} C={c} targets {tdt.__name__}")
        # every group with an ignored row (so none is clean: the group path): each other row's
        # values are those of the run kernel, bit for bit
        t2 = t.copy()
        t2[5::16] = -100
        grp = _compare_results(x, y, t2, kind)
        keep = t2 != -100
        for k in ("row_kl", "row_dp", "row_nll_base", "row_nll_new", "row_same_top1"):
            assert np.array_equal(grp[k][keep], want[k][keep], equal_nan=True), k
        # mixed dtypes: the new dump in float32 (both staged), against the same values
        y32 = np.asarray(y, np.float32)
        mixed = _compare_results(x, y32, t, kind)
        _same(_compare_results(np.asarray(x, np.float32), y32, t, kind), mixed, "mixed dtypes")
        # per-row values against float64 (ordinary rows: the renormalised rows' KL)
        xs, ys = np.asarray(x, np.float64), np.asarray(y, np.float64)
        ok = (t != -100) & np.isfinite(xs).all(1) & np.isfinite(ys).all(1)
        ok &= np.abs(xs).max(1) < 1000
        tk = np.where(ok, t, 0)

        def logp(v):
            m = v.max(1, keepdims=True)
            return v - m - np.log(np.exp(v - m).sum(1, keepdims=True))

        la, lb = logp(xs[ok]), logp(ys[ok])
        kl = (np.exp(la) * (la - lb)).sum(1)
        np.testing.assert_allclose(want["row_kl"][ok], kl, rtol=2e-4, atol=3e-7)
        rows = np.arange(n)[ok]
        if kind == "logits":
            nb = -la[np.arange(ok.sum()), tk[ok]]
            np.testing.assert_allclose(want["row_nll_base"][ok], nb, rtol=1e-5, atol=1e-5)
        same = xs[ok].argmax(1) == ys[ok].argmax(1)
        assert np.array_equal(want["row_same_top1"][rows] == 1, same)
        assert np.all(want["row_same_top1"][t == -100] == -1)
        assert np.all(want["row_kl"][200:260][ok[200:260]] == 0)
    finally:
        _core.set_short_scheme(before)
