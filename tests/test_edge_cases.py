"""Non-finite values, empty inputs, extreme magnitudes and unusual memory layouts."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import fastnll
import reference as ref
from conftest import (
    REDUCTIONS,
    assert_close,
    check_loss,
    f64,
    make_logits,
    make_soft_targets,
    make_targets,
    out_dtype,
    soft_dtype,
)

INF, NAN = np.inf, np.nan


# ----------------------------------------------------------------------- non-finite logits


def test_logsumexp_nonfinite_rows(dtype):
    x = np.array(
        [
            [1.0, -INF, 2.0, 0.5],  # a -inf contributes nothing
            [-INF, -INF, -INF, -INF],  # all -inf -> -inf
            [1.0, NAN, 2.0, 0.5],  # NaN propagates
            [1.0, INF, 2.0, 0.5],  # +inf -> +inf
            [INF, INF, 0.0, 0.0],
            [INF, -INF, 0.0, 0.0],
            [INF, NAN, 0.0, 0.0],  # NaN wins
            [-INF, NAN, -INF, -INF],
        ]
    ).astype(dtype)
    got = np.asarray(fastnll.logsumexp(x))
    expected = ref.logsumexp(x)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    assert got[1] == -INF and got[3] == INF and got[4] == INF and got[5] == INF
    assert_close(got, expected, dtype)


def test_cross_entropy_nonfinite_rows(dtype, reduction):
    x = np.array(
        [
            [1.0, -INF, 2.0, 0.5],  # target 0: finite loss
            [-INF, 1.0, 2.0, 0.5],  # target 0 is -inf: loss +inf
            [1.0, 3.0, NAN, 0.5],  # NaN anywhere in the row: NaN
            [-INF, -INF, -INF, -INF],  # all -inf: NaN (PyTorch: -inf - -inf)
        ]
    ).astype(dtype)
    t = np.array([0, 0, 1, 2])
    expected_rows = ref.cross_entropy(x, t, reduction="none")
    assert np.isfinite(expected_rows[0]) and expected_rows[1] == INF
    assert np.isnan(expected_rows[2]) and np.isnan(expected_rows[3])
    got = fastnll.cross_entropy(x, t, reduction=reduction)
    check_loss(got, ref.cross_entropy(x, t, reduction=reduction), dtype, reduction, n_rows=4)
    # Without the NaN rows the reduction is +inf.
    got2 = fastnll.cross_entropy(x[:2], t[:2], reduction=reduction)
    check_loss(
        got2, ref.cross_entropy(x[:2], t[:2], reduction=reduction), dtype, reduction, n_rows=2
    )


def test_cross_entropy_with_pos_inf_logit(dtype):
    """A +inf logit elsewhere in the row: PyTorch gives NaN, the limit is +inf. Either is
    acceptable, a finite number is not."""
    x = np.array([[INF, 1.0, 2.0], [0.0, INF, 1.0]]).astype(dtype)
    rows = np.asarray(fastnll.cross_entropy(x, np.array([1, 0]), reduction="none"))
    assert np.all(np.isnan(rows) | (rows == INF)), rows


def test_nonfinite_ignored_rows_give_zero(dtype, reduction):
    x = np.array([[NAN, 1.0, 2.0], [INF, 1.0, 0.0], [-INF] * 3, [0.5, 1.0, -1.0]]).astype(dtype)
    t = np.array([-100, -100, -100, 1])
    for eps in (0.0, 0.1):
        got = fastnll.cross_entropy(x, t, reduction=reduction, label_smoothing=eps)
        expected = ref.cross_entropy(x, t, reduction=reduction, label_smoothing=eps)
        check_loss(got, expected, dtype, reduction, n_rows=4)
    lp = np.array([[NAN, -1.0], [-0.5, -2.0]]).astype(dtype)
    check_loss(
        fastnll.nll_loss(lp, np.array([-100, 1]), reduction=reduction),
        ref.nll_loss(lp, np.array([-100, 1]), reduction=reduction),
        dtype,
        reduction,
        n_rows=2,
    )


def test_soft_target_zero_prob_at_neg_inf_logit(dtype, reduction):
    x = np.array([[-INF, 1.0, 2.0], [0.0, -INF, -INF], [1.0, 2.0, 3.0]]).astype(dtype)
    y = np.array([[0.0, 0.25, 0.75], [1.0, 0.0, 0.0], [0.2, 0.3, 0.5]]).astype(dtype)
    got = fastnll.cross_entropy(x, y, reduction=reduction)
    expected = ref.cross_entropy(x, y, reduction=reduction)
    assert np.all(np.isfinite(expected))
    check_loss(got, expected, dtype, reduction, n_rows=3)


def test_softmax_family_nonfinite(dtype):
    x = np.array([[1.0, -INF, 2.0], [-INF, -INF, -INF], [0.0, NAN, 1.0]]).astype(dtype)
    for func in ("log_softmax", "softmax"):
        got = np.asarray(getattr(fastnll, func)(x))
        assert_close(got, getattr(ref, func)(x), dtype, err_msg=func)
    assert np.asarray(fastnll.log_softmax(x))[0, 1] == -INF
    assert np.asarray(fastnll.softmax(x))[0, 1] == 0.0
    # A +inf entry: PyTorch gives a NaN row, SciPy NaN at the +inf only; the limit (prob 1 at
    # the +inf) is also fine. Elsewhere: -inf (prob 0) or NaN, never a finite number.
    xi = np.array([[0.0, INF, 1.0]]).astype(dtype)
    lrow = np.asarray(fastnll.log_softmax(xi))[0]
    assert np.isnan(lrow[1]) or lrow[1] == 0.0, lrow
    assert np.all(np.isnan(lrow[[0, 2]]) | (lrow[[0, 2]] == -INF)), lrow
    prow = np.asarray(fastnll.softmax(xi))[0]
    assert np.isnan(prow[1]) or prow[1] == 1.0, prow
    assert np.all(np.isnan(prow[[0, 2]]) | (prow[[0, 2]] == 0.0)), prow


# ---------------------------------------------------------------- empty and degenerate shapes


@pytest.mark.parametrize("lead", [(0,), (2, 0), (0, 3)])
def test_empty_batch(dtype, reduction, lead):
    c = 5
    x = np.zeros(lead + (c,), dtype=dtype)
    t = np.zeros(lead, dtype=np.int64)
    y = np.zeros(lead + (c,), dtype=soft_dtype(dtype))
    calls = [
        lambda: fastnll.cross_entropy(x, t, reduction=reduction),
        lambda: fastnll.cross_entropy(
            x, t, reduction=reduction, label_smoothing=0.1, weight=np.ones(c)
        ),
        lambda: fastnll.cross_entropy(x, y, reduction=reduction),
        lambda: fastnll.nll_loss(x, t, reduction=reduction),
    ]
    for call in calls:
        got = call()
        if reduction == "none":
            assert isinstance(got, np.ndarray) and got.shape == lead
            assert got.dtype == out_dtype(dtype)
        elif reduction == "sum":
            assert isinstance(got, float) and got == 0.0
        else:
            assert isinstance(got, float) and np.isnan(got)
    got = fastnll.binary_cross_entropy_with_logits(x, y, reduction=reduction)
    if reduction == "none":
        assert got.shape == x.shape
    else:
        assert (got == 0.0) if reduction == "sum" else np.isnan(got)
    assert np.asarray(fastnll.logsumexp(x)).shape == lead
    assert np.asarray(fastnll.log_softmax(x)).shape == x.shape
    assert np.asarray(fastnll.softmax(x)).shape == x.shape


def test_empty_python_lists(reduction):
    got = fastnll.cross_entropy(np.zeros((0, 4)), [], reduction=reduction)
    if reduction == "none":
        assert got.shape == (0,)
    else:
        assert got == 0.0 if reduction == "sum" else np.isnan(got)


def test_zero_classes(dtype):
    x = np.zeros((3, 0), dtype=dtype)
    lse = np.asarray(fastnll.logsumexp(x))
    assert lse.shape == (3,) and np.all(lse == -INF)
    assert np.asarray(fastnll.logsumexp(x, axis=None)) == -INF
    assert np.asarray(fastnll.log_softmax(x)).shape == (3, 0)
    assert np.asarray(fastnll.softmax(x)).shape == (3, 0)
    for red in REDUCTIONS:
        for t in (np.zeros(3, np.int64), np.array([0, 1, 2])):
            with pytest.raises((IndexError, ValueError)):
                fastnll.cross_entropy(x, t, reduction=red)
            with pytest.raises((IndexError, ValueError)):
                fastnll.nll_loss(x, t, reduction=red)
        # N = 0 and C = 0: a result or a clean error, never a crash.
        try:
            fastnll.cross_entropy(
                np.zeros((0, 0), dtype=dtype), np.zeros(0, np.int64), reduction=red
            )
        except (IndexError, ValueError):
            pass


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_all_ignored(rng, dtype, reduction, weighted, label_smoothing):
    x = make_logits(rng, (6, 4), dtype)
    t = np.full(6, 2)
    w = rng.uniform(0.5, 2.0, 4) if weighted else None
    kw = dict(weight=w, ignore_index=2, reduction=reduction)
    for got in (
        fastnll.cross_entropy(x, t, label_smoothing=label_smoothing, **kw),
        fastnll.nll_loss(-np.abs(x), t, **kw),
    ):
        if reduction == "none":
            np.testing.assert_array_equal(got, np.zeros(6))
        elif reduction == "sum":
            assert isinstance(got, float) and got == 0.0
        else:
            assert isinstance(got, float) and np.isnan(got)


# --------------------------------------------------------------------------- magnitudes


@pytest.mark.parametrize("scale", [1e3, 1e6])
def test_large_magnitudes(rng, dtype, scale, reduction):
    if dtype == np.float16 and scale > 1e3:
        pytest.skip("float16 overflows")
    x = make_logits(rng, (40, 17), dtype, scale=scale)
    assert np.all(np.isfinite(f64(x)))
    t = make_targets(rng, (40,), 17)
    check_loss(
        fastnll.cross_entropy(x, t, reduction=reduction, label_smoothing=0.1),
        ref.cross_entropy(x, t, reduction=reduction, label_smoothing=0.1),
        dtype,
        reduction,
        n_rows=40,
    )
    y = make_soft_targets(rng, x.shape, dtype=soft_dtype(dtype))
    check_loss(
        fastnll.cross_entropy(x, y, reduction=reduction),
        ref.cross_entropy(x, y, reduction=reduction),
        dtype,
        reduction,
        n_rows=40,
    )
    yb = (rng.random(x.shape) < 0.5).astype(dtype)
    check_loss(
        fastnll.binary_cross_entropy_with_logits(x, yb, reduction=reduction),
        ref.binary_cross_entropy_with_logits(x, yb, reduction=reduction),
        dtype,
        reduction,
        n_rows=x.size,
    )
    for func in ("logsumexp", "log_softmax", "softmax"):
        assert_close(getattr(fastnll, func)(x), getattr(ref, func)(x), dtype, err_msg=func)


def test_tiny_and_subnormal_logits(dtype):
    x = (np.array([[1e-30, -1e-30, 0.0], [5e-324, 0.0, -5e-324]])).astype(dtype)
    for func in ("logsumexp", "log_softmax", "softmax"):
        assert_close(getattr(fastnll, func)(x), getattr(ref, func)(x), dtype, err_msg=func)


# -------------------------------------------------------------- inputs and memory layouts


def _results(mod, x, t, y):
    """The layout tests' results from `mod` (fastnll, or the float64 reference module, which
    has the same API); x <= 0, so nll_loss accepts it."""
    return {
        "logsumexp": mod.logsumexp(x),
        "log_softmax": mod.log_softmax(x),
        "softmax": mod.softmax(x),
        "ce_none": mod.cross_entropy(x, t, reduction="none"),
        "ce_smooth_mean": mod.cross_entropy(
            x, t, label_smoothing=0.1, weight=np.linspace(0.5, 2, x.shape[-1])
        ),
        "ce_soft_none": mod.cross_entropy(x, y, reduction="none"),
        "nll_none": mod.nll_loss(x, t, reduction="none"),
        "nll_sum": mod.nll_loss(x, t, reduction="sum"),
        "bce_none": mod.binary_cross_entropy_with_logits(x, y, reduction="none"),
    }


def _compare(got, expected, dtype, what=""):
    for key, value in got.items():
        if isinstance(value, float):
            check_loss(
                value, expected[key], dtype, key.rsplit("_", 1)[1], n_rows=64, denom_scale=2.0
            )
        else:
            assert_close(value, expected[key], dtype, err_msg=f"{what} {key}")


def _misaligned(a):
    raw = bytearray(a.nbytes + 1)
    out = np.frombuffer(raw, dtype=a.dtype, count=a.size, offset=1).reshape(a.shape)
    out[...] = a
    return out


def _layout(name, rng, dtype, n=13, c=17):
    base = -np.abs(make_logits(rng, (2 * n, 2 * c), dtype))
    tb = make_targets(rng, (2 * n,), c)
    if name == "cols":
        return base[:n, ::2], tb[:n]
    if name == "rows":
        return base[::2, :c], tb[::2]
    if name == "fortran":
        return np.asfortranarray(base[:n, :c]), tb[:n]
    if name == "neg_rows":
        return base[n - 1 :: -1, :c], tb[n - 1 :: -1]
    if name == "neg_cols":
        return base[:n, c - 1 :: -1], tb[:n]
    if name == "transposed":
        return np.ascontiguousarray(base[:n, :c].T).T, tb[:n]
    if name == "byteswapped":
        swapped = base[:n, :c].dtype.newbyteorder(">" if sys.byteorder == "little" else "<")
        return base[:n, :c].astype(swapped), tb[:n].astype(
            ">i8" if sys.byteorder == "little" else "<i8"
        )
    if name == "misaligned":
        return _misaligned(base[:n, :c]), _misaligned(tb[:n])
    if name == "broadcast":
        return np.broadcast_to(base[0, :c], (n, c)), tb[:n]
    if name == "strided_3d":
        b3 = base.reshape(2, n, 2 * c)
        return b3[:, ::2, 1::2], make_targets(rng, (2, (n + 1) // 2), c)
    raise AssertionError(name)


LAYOUTS = [
    "cols",
    "rows",
    "fortran",
    "neg_rows",
    "neg_cols",
    "transposed",
    "byteswapped",
    "misaligned",
    "broadcast",
    "strided_3d",
]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts_match_contiguous(rng, dtype, layout):
    x, t = _layout(layout, rng, dtype)
    y = make_soft_targets(rng, x.shape, dtype=soft_dtype(dtype))
    contiguous_x = np.ascontiguousarray(x).astype(np.dtype(dtype).newbyteorder("="))
    got = _results(fastnll, x, t, y)
    got_contiguous = _results(fastnll, contiguous_x, np.ascontiguousarray(t, dtype=np.int64), y)
    for key in got:
        if isinstance(got[key], float):
            assert abs(got[key] - got_contiguous[key]) <= 1e-6 * abs(got_contiguous[key]), key
        else:
            assert_close(got[key], f64(got_contiguous[key]), dtype, err_msg=f"{layout} {key}")
    _compare(got, _results(ref, contiguous_x, t, y), dtype, layout)


def test_inputs_not_modified(rng, dtype):
    x = -np.abs(make_logits(rng, (12, 9), dtype))
    t = make_targets(rng, (12,), 9, ignore_index=-100)
    y = make_soft_targets(rng, x.shape, dtype=soft_dtype(dtype))
    w, pw = rng.uniform(0.5, 2, 9), rng.uniform(0.5, 2, 9)
    copies = [a.copy() for a in (x, t, y, w, pw)]
    _results(fastnll, x, t, y)
    fastnll.cross_entropy(x, t, weight=w, label_smoothing=0.3, reduction="none")
    fastnll.cross_entropy(x, y, weight=w, label_smoothing=0.3)
    fastnll.nll_loss(x, t, weight=w)
    fastnll.binary_cross_entropy_with_logits(x, y, weight=w, pos_weight=pw)
    fastnll.logsumexp(x, b=w, return_sign=True)
    for before, after in zip(copies, (x, t, y, w, pw)):
        np.testing.assert_array_equal(f64(before), f64(after))


def test_read_only_inputs(rng, dtype):
    x = -np.abs(make_logits(rng, (12, 9), dtype))
    t = make_targets(rng, (12,), 9)
    y = make_soft_targets(rng, x.shape, dtype=soft_dtype(dtype))
    w = rng.uniform(0.5, 2, 9)
    for a in (x, t, y, w):
        a.setflags(write=False)
    _compare(_results(fastnll, x, t, y), _results(ref, x, t, y), dtype, "read-only")
    check_loss(
        fastnll.cross_entropy(x, t, weight=w, reduction="sum"),
        ref.cross_entropy(x, t, weight=w, reduction="sum"),
        dtype,
        "sum",
        n_rows=12,
    )


def test_memmap_inputs(rng, dtype, tmp_path):
    x0 = -np.abs(make_logits(rng, (20, 11), dtype))
    t0 = make_targets(rng, (20,), 11)
    y = make_soft_targets(rng, x0.shape, dtype=soft_dtype(dtype))
    for name, arr in (("x.bin", x0), ("t.bin", t0)):
        mm = np.memmap(tmp_path / name, dtype=arr.dtype, mode="w+", shape=arr.shape)
        mm[...] = arr
        mm.flush()
        del mm
    x = np.memmap(tmp_path / "x.bin", dtype=x0.dtype, mode="r", shape=x0.shape)
    t = np.memmap(tmp_path / "t.bin", dtype=t0.dtype, mode="r", shape=t0.shape)
    _compare(_results(fastnll, x, t, y), _results(ref, x0, t0, y), dtype, "memmap")
