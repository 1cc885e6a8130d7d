"""fastnll against the float64 reference (tests/reference.py), SciPy and PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastnll
import reference as ref
from conftest import (
    CLASS_COUNTS,
    FLOAT_DTYPES,
    INT_DTYPES,
    INT_IDS,
    REDUCTIONS,
    assert_close,
    check_loss,
    make_logits,
    make_soft_targets,
    make_targets,
    soft_dtype,
)


def n_rows_for(n_classes):  # keep C=1000 / 4099 cheap
    return 37 if n_classes < 1000 else 5


# ---------------------------------------------------------------- logsumexp / softmax family


@pytest.mark.parametrize("n_classes", CLASS_COUNTS)
def test_logsumexp_rows(rng, dtype, n_classes):
    x = make_logits(rng, (n_rows_for(n_classes), n_classes), dtype)
    assert_close(fastnll.logsumexp(x), ref.logsumexp(x), dtype)


@pytest.mark.parametrize("axis", [0, 1, 2, -1, -2, None])
@pytest.mark.parametrize("keepdims", [False, True])
def test_logsumexp_axis_keepdims(rng, dtype, axis, keepdims):
    x = make_logits(rng, (4, 5, 6), dtype)
    got = fastnll.logsumexp(x, axis=axis, keepdims=keepdims)
    assert_close(got, ref.logsumexp(x, axis=axis, keepdims=keepdims), dtype)


def test_logsumexp_1d_is_scalar_like(rng, dtype):
    x = make_logits(rng, (50,), dtype)
    got = np.asarray(fastnll.logsumexp(x))
    assert got.shape == ()
    assert_close(got, ref.logsumexp(x), dtype)


@pytest.mark.parametrize("b_shape", ["full", "row", "scalar", "with_zeros"])
def test_logsumexp_positive_b(rng, dtype, b_shape):
    x = make_logits(rng, (9, 33), dtype)
    b = {
        "full": lambda: rng.uniform(0.1, 3.0, x.shape),
        "row": lambda: rng.uniform(0.1, 3.0, (33,)),
        "scalar": lambda: np.float64(2.5),
        "with_zeros": lambda: np.where(
            rng.random(x.shape) < 0.3, 0.0, rng.uniform(0.1, 3.0, x.shape)
        ),
    }[b_shape]()
    got = fastnll.logsumexp(x, b=b)
    assert_close(got, ref.logsumexp(x, b=b), dtype, check_dtype=False)


@pytest.mark.parametrize("axis", [-1, 0, None])
def test_logsumexp_return_sign(rng, dtype, axis):
    x = make_logits(rng, (6, 10), dtype)
    # Each row's weights share one sign (no cancellation): +, -, or all zero.
    signs = np.array([1.0, -1.0, 0.0, 1.0, -1.0, 1.0])[:, None]
    b = signs * rng.uniform(0.5, 2.0, x.shape)
    if axis == 0 or axis is None:
        b = np.abs(b) * -1.0  # one sign per column / overall
    val, sgn = fastnll.logsumexp(x, axis=axis, b=b, return_sign=True)
    rval, rsgn = ref.logsumexp(x, axis=axis, b=b, return_sign=True)
    assert_close(val, rval, dtype, check_dtype=False)
    np.testing.assert_array_equal(np.asarray(sgn, dtype=np.float64), rsgn)


@pytest.mark.parametrize("n_classes", CLASS_COUNTS)
@pytest.mark.parametrize("func", ["log_softmax", "softmax"])
def test_softmax_family_rows(rng, dtype, n_classes, func):
    x = make_logits(rng, (n_rows_for(n_classes), n_classes), dtype)
    got = getattr(fastnll, func)(x)
    assert_close(got, getattr(ref, func)(x), dtype)


@pytest.mark.parametrize("axis", [0, 1, 2, -1, -2])
@pytest.mark.parametrize("func", ["log_softmax", "softmax"])
def test_softmax_family_axis(rng, dtype, axis, func):
    x = make_logits(rng, (3, 4, 17), dtype)
    got = getattr(fastnll, func)(x, axis=axis)
    assert_close(got, getattr(ref, func)(x, axis=axis), dtype)


def test_softmax_rows_sum_to_one(rng):
    x = make_logits(rng, (20, 1000), np.float32)
    s = np.asarray(fastnll.softmax(x), dtype=np.float64).sum(axis=-1)
    np.testing.assert_allclose(s, 1.0, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------ nll_loss


@pytest.mark.parametrize("n_classes", CLASS_COUNTS)
def test_nll_loss_rows(rng, dtype, reduction, n_classes):
    n = n_rows_for(n_classes)
    lp = (-rng.exponential(2.0, (n, n_classes))).astype(dtype)
    t = make_targets(rng, (n,), n_classes, ignore_index=-100)
    got = fastnll.nll_loss(lp, t, reduction=reduction)
    check_loss(got, ref.nll_loss(lp, t, reduction=reduction), dtype, reduction, n_rows=n)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore_index", [-100, 3, -1, 100])
def test_nll_loss_weight_ignore(rng, dtype, reduction, weighted, ignore_index):
    n, c = 64, 17
    lp = (-rng.exponential(2.0, (n, c))).astype(dtype)
    t = make_targets(rng, (n,), c, ignore_index=ignore_index)
    w = rng.uniform(0.5, 2.0, c) if weighted else None
    got = fastnll.nll_loss(lp, t, weight=w, ignore_index=ignore_index, reduction=reduction)
    expected = ref.nll_loss(lp, t, weight=w, ignore_index=ignore_index, reduction=reduction)
    check_loss(got, expected, dtype, reduction, n_rows=n, denom_scale=2.0)


# ------------------------------------------------------------------------ cross_entropy


@pytest.mark.parametrize("n_classes", CLASS_COUNTS)
def test_cross_entropy_rows(rng, dtype, reduction, n_classes):
    n = n_rows_for(n_classes)
    x = make_logits(rng, (n, n_classes), dtype)
    t = make_targets(rng, (n,), n_classes, ignore_index=-100, frac_ignored=0.1)
    got = fastnll.cross_entropy(x, t, reduction=reduction)
    check_loss(got, ref.cross_entropy(x, t, reduction=reduction), dtype, reduction, n_rows=n)


@pytest.mark.parametrize("n_classes", [5, 33])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore_index", [-100, 3, -1])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 1.0])
def test_cross_entropy_options(
    rng, dtype, reduction, n_classes, weighted, ignore_index, label_smoothing
):
    n = 48
    x = make_logits(rng, (n, n_classes), dtype)
    t = make_targets(rng, (n,), n_classes, ignore_index=ignore_index)
    w = rng.uniform(0.5, 2.0, n_classes) if weighted else None
    kw = dict(
        weight=w, ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing
    )
    got = fastnll.cross_entropy(x, t, **kw)
    check_loss(got, ref.cross_entropy(x, t, **kw), dtype, reduction, n_rows=n, denom_scale=2.0)


@pytest.mark.parametrize("n_classes", [1, 2, 3, 8, 17, 100, 1000])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_cross_entropy_soft_targets(rng, dtype, reduction, n_classes, weighted, label_smoothing):
    n = 23
    x = make_logits(rng, (n, n_classes), dtype)
    y = make_soft_targets(rng, (n, n_classes), dtype=dtype)
    w = rng.uniform(0.5, 2.0, n_classes) if weighted else None
    kw = dict(weight=w, reduction=reduction, label_smoothing=label_smoothing)
    got = fastnll.cross_entropy(x, y, **kw)
    check_loss(got, ref.cross_entropy(x, y, **kw), dtype, reduction, n_rows=n, denom_scale=2.0)


def test_soft_one_hot_equals_hard(rng, dtype):
    x = make_logits(rng, (30, 9), dtype)
    t = make_targets(rng, (30,), 9)
    onehot = np.eye(9, dtype=np.float64)[t].astype(dtype)
    hard = fastnll.cross_entropy(x, t, reduction="none")
    assert_close(
        fastnll.cross_entropy(x, onehot, reduction="none"),
        ref.cross_entropy(x, t, reduction="none"),
        dtype,
    )
    assert_close(hard, ref.cross_entropy(x, onehot, reduction="none"), dtype)


def test_soft_targets_float64_with_float32_logits(rng, reduction):
    x = make_logits(rng, (40, 12), np.float32)
    y = make_soft_targets(rng, (40, 12), dtype=np.float64)
    got = fastnll.cross_entropy(x, y, reduction=reduction)
    check_loss(
        got,
        ref.cross_entropy(x, y, reduction=reduction),
        np.float32,
        reduction,
        n_rows=40,
        check_dtype=False,
    )


# ---------------------------------------------------------- binary_cross_entropy_with_logits


@pytest.mark.parametrize("weight_kind", [None, "row", "column", "full"])
@pytest.mark.parametrize("use_pos_weight", [False, True])
@pytest.mark.parametrize("soft", [False, True])
def test_bce_with_logits(rng, dtype, reduction, weight_kind, use_pos_weight, soft):
    n, c = 31, 7
    z = make_logits(rng, (n, c), dtype)
    y = rng.random((n, c)) if soft else (rng.random((n, c)) < 0.5).astype(np.float64)
    y = y.astype(dtype)
    w = {
        None: None,
        "row": rng.uniform(0.5, 2.0, (c,)),
        "column": rng.uniform(0.5, 2.0, (n, 1)),
        "full": rng.uniform(0.5, 2.0, (n, c)),
    }[weight_kind]
    pw = rng.uniform(0.5, 3.0, (c,)) if use_pos_weight else None
    kw = dict(weight=w, pos_weight=pw, reduction=reduction)
    got = fastnll.binary_cross_entropy_with_logits(z, y, **kw)
    expected = ref.binary_cross_entropy_with_logits(z, y, **kw)
    check_loss(got, expected, dtype, reduction, n_rows=n * c)


# ------------------------------------------------------------ N-d inputs, targets, batch sizes


@pytest.mark.parametrize("n_classes", [1, 5, 17])
def test_nd_inputs(rng, dtype, reduction, n_classes):
    shape = (2, 3, n_classes)
    x = make_logits(rng, shape, dtype)
    t = make_targets(rng, shape[:-1], n_classes, ignore_index=-100)
    y = make_soft_targets(rng, shape, dtype=soft_dtype(dtype))
    lp = (-rng.exponential(1.0, shape)).astype(dtype)
    cases = [
        (
            fastnll.cross_entropy(x, t, reduction=reduction, label_smoothing=0.1),
            ref.cross_entropy(x, t, reduction=reduction, label_smoothing=0.1),
        ),
        (
            fastnll.cross_entropy(x, y, reduction=reduction),
            ref.cross_entropy(x, y, reduction=reduction),
        ),
        (fastnll.nll_loss(lp, t, reduction=reduction), ref.nll_loss(lp, t, reduction=reduction)),
    ]
    for got, expected in cases:
        check_loss(got, expected, dtype, reduction, n_rows=6)
    yb = (rng.random(shape) < 0.5).astype(dtype)
    check_loss(
        fastnll.binary_cross_entropy_with_logits(x, yb, reduction=reduction),
        ref.binary_cross_entropy_with_logits(x, yb, reduction=reduction),
        dtype,
        reduction,
        n_rows=x.size,
    )
    assert_close(fastnll.logsumexp(x), ref.logsumexp(x), dtype)
    assert_close(fastnll.log_softmax(x), ref.log_softmax(x), dtype)
    assert_close(fastnll.softmax(x), ref.softmax(x), dtype)


@pytest.mark.parametrize("tdtype", INT_DTYPES, ids=INT_IDS)
@pytest.mark.parametrize("func", ["nll_loss", "cross_entropy"])
def test_integer_target_dtypes(rng, reduction, tdtype, func):
    n, c = 40, 7
    x = make_logits(rng, (n, c), np.float32)
    if func == "nll_loss":
        x = -np.abs(x)
    t = make_targets(rng, (n,), c, dtype=tdtype, ignore_index=3)  # 3 fits every dtype
    got = getattr(fastnll, func)(x, t, ignore_index=3, reduction=reduction)
    expected = getattr(ref, func)(x, t, ignore_index=3, reduction=reduction)
    check_loss(got, expected, np.float32, reduction, n_rows=n)
    if np.dtype(tdtype).kind == "i":  # default ignore_index -100 in signed dtypes
        t2 = make_targets(rng, (n,), c, dtype=tdtype, ignore_index=-100)
        check_loss(
            getattr(fastnll, func)(x, t2, reduction=reduction),
            getattr(ref, func)(x, t2, reduction=reduction),
            np.float32,
            reduction,
            n_rows=n,
        )


def test_python_lists(reduction):
    x = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0], [2.0, 2.0, 2.0]]
    t = [0, 2, 1]
    check_loss(
        fastnll.cross_entropy(x, t, reduction=reduction),
        ref.cross_entropy(x, t, reduction=reduction),
        np.float64,
        reduction,
        n_rows=3,
    )
    lp = [[-0.5, -1.0], [-2.0, -0.1]]
    check_loss(
        fastnll.nll_loss(lp, [1, 0], reduction=reduction),
        ref.nll_loss(lp, [1, 0], reduction=reduction),
        np.float64,
        reduction,
        n_rows=2,
    )
    z, y = [0.5, -2.0, 3.0], [1.0, 0.0, 0.5]
    check_loss(
        fastnll.binary_cross_entropy_with_logits(z, y, reduction=reduction),
        ref.binary_cross_entropy_with_logits(z, y, reduction=reduction),
        np.float64,
        reduction,
        n_rows=3,
    )
    assert_close(fastnll.logsumexp(x), ref.logsumexp(x), np.float64)
    assert_close(fastnll.softmax(x), ref.softmax(x), np.float64)
    assert_close(fastnll.log_softmax(x), ref.log_softmax(x), np.float64)


@pytest.mark.parametrize("n", [1, 2, 3, 255, 4097])
def test_batch_sizes(rng, dtype, reduction, n):
    x = make_logits(rng, (n, 10), dtype)
    t = make_targets(rng, (n,), 10)
    check_loss(
        fastnll.cross_entropy(x, t, reduction=reduction),
        ref.cross_entropy(x, t, reduction=reduction),
        dtype,
        reduction,
        n_rows=n,
    )


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 20),
    c=st.integers(1, 40),
    dtype_i=st.integers(0, 3),
    reduction=st.sampled_from(REDUCTIONS),
    eps=st.sampled_from([0.0, 0.05, 0.5]),
    weighted=st.booleans(),
)
def test_cross_entropy_property(seed, n, c, dtype_i, reduction, eps, weighted):
    rng = np.random.default_rng(seed)
    dtype = FLOAT_DTYPES[dtype_i]
    x = make_logits(rng, (n, c), dtype, scale=rng.uniform(0.1, 20.0))
    t = make_targets(rng, (n,), c, ignore_index=-100)
    w = rng.uniform(0.5, 2.0, c) if weighted else None
    kw = dict(weight=w, reduction=reduction, label_smoothing=eps)
    check_loss(
        fastnll.cross_entropy(x, t, **kw),
        ref.cross_entropy(x, t, **kw),
        dtype,
        reduction,
        n_rows=n,
        denom_scale=2.0,
    )


# ---------------------------------------------------------------------- 1e7 rows, float64 sums


def test_mean_over_ten_million_rows():
    n, c, chunk = 10_000_000, 3, 1_000_000
    rng = np.random.default_rng(20240607)
    x = rng.standard_normal((n, c), dtype=np.float32)
    x *= 3.0
    t = rng.integers(0, c, n, dtype=np.uint8)
    ce_sum = sum(
        ref.cross_entropy(x[i : i + chunk], t[i : i + chunk], reduction="sum")
        for i in range(0, n, chunk)
    )
    got_mean = fastnll.cross_entropy(x, t)
    assert abs(got_mean - ce_sum / n) <= 1e-6 * abs(ce_sum / n), (got_mean, ce_sum / n)
    got_sum = fastnll.cross_entropy(x, t, reduction="sum")
    assert abs(got_sum - ce_sum) <= 1e-6 * abs(ce_sum), (got_sum, ce_sum)
    np.negative(np.abs(x, out=x), out=x)  # valid log-probabilities, in place (memory)
    nll_sum = sum(
        ref.nll_loss(x[i : i + chunk], t[i : i + chunk], reduction="sum")
        for i in range(0, n, chunk)
    )
    got_nll = fastnll.nll_loss(x, t)
    assert abs(got_nll - nll_sum / n) <= 1e-6 * abs(nll_sum / n), (got_nll, nll_sum / n)


# ----------------------------------------------------------------------------------- SciPy


@pytest.mark.parametrize("axis", [-1, 0, None])
@pytest.mark.parametrize("with_b", [False, True])
@pytest.mark.parametrize("return_sign", [False, True])
def test_logsumexp_vs_scipy(rng, axis, with_b, return_sign):
    special = pytest.importorskip("scipy.special")
    x = make_logits(rng, (7, 19), np.float64)
    b = rng.uniform(0.2, 2.0, x.shape) if with_b else None
    got = fastnll.logsumexp(x, axis=axis, b=b, return_sign=return_sign)
    expected = special.logsumexp(x, axis=axis, b=b, return_sign=return_sign)
    if return_sign:
        assert_close(got[0], expected[0], np.float64)
        np.testing.assert_array_equal(np.asarray(got[1], dtype=np.float64), expected[1])
    else:
        assert_close(got, expected, np.float64)


def test_logsumexp_signed_b_vs_scipy():
    special = pytest.importorskip("scipy.special")
    a = np.array([[1.0, 2.0, 0.5], [3.0, 3.0, -1.0], [0.0, 1.0, 2.0]])
    b = np.array([[2.0, -1.0, 1.0], [1.0, -1.0, 0.0], [-1.0, -1.0, 0.5]])
    got_v, got_s = fastnll.logsumexp(a, b=b, return_sign=True)
    exp_v, exp_s = special.logsumexp(a, axis=-1, b=b, return_sign=True)
    np.testing.assert_allclose(np.asarray(got_v), exp_v, rtol=1e-12)
    np.testing.assert_array_equal(np.asarray(got_s, dtype=np.float64), exp_s)
    # Without return_sign a negative sum has no real logarithm: NaN, as SciPy.
    assert np.isnan(np.asarray(fastnll.logsumexp(np.array([1.0, 2.0]), b=[1.0, -1.0])))


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_softmax_family_vs_scipy(rng, axis):
    special = pytest.importorskip("scipy.special")
    x = make_logits(rng, (6, 11), np.float64)
    assert_close(fastnll.softmax(x, axis=axis), special.softmax(x, axis=axis), np.float64)
    assert_close(fastnll.log_softmax(x, axis=axis), special.log_softmax(x, axis=axis), np.float64)


# --------------------------------------------------------------------------------- PyTorch


def _torch_f():
    torch = pytest.importorskip("torch")
    return torch, torch.nn.functional


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.3])
def test_cross_entropy_vs_torch(rng, reduction, weighted, label_smoothing):
    torch, F = _torch_f()
    x = make_logits(rng, (50, 13), np.float64)
    t = make_targets(rng, (50,), 13, ignore_index=4)
    w = rng.uniform(0.5, 2.0, 13) if weighted else None
    kw = dict(ignore_index=4, reduction=reduction, label_smoothing=label_smoothing)
    expected = F.cross_entropy(
        torch.from_numpy(x),
        torch.from_numpy(t),
        weight=None if w is None else torch.from_numpy(w),
        **kw,
    )
    got = fastnll.cross_entropy(x, t, weight=w, **kw)
    check_loss(
        got,
        expected.numpy() if reduction == "none" else expected.item(),
        np.float64,
        reduction,
        n_rows=50,
        denom_scale=2.0,
    )
    y = make_soft_targets(rng, (50, 13)) * 0.9 + 0.1 / 13  # no zeros: torch gives nan there
    expected = F.cross_entropy(
        torch.from_numpy(x),
        torch.from_numpy(y),
        reduction=reduction,
        label_smoothing=label_smoothing,
    )
    got = fastnll.cross_entropy(x, y, reduction=reduction, label_smoothing=label_smoothing)
    check_loss(
        got,
        expected.numpy() if reduction == "none" else expected.item(),
        np.float64,
        reduction,
        n_rows=50,
    )


def test_nd_cross_entropy_and_nll_vs_torch(rng, reduction):
    torch, F = _torch_f()
    x = make_logits(rng, (3, 5, 8), np.float64)
    t = make_targets(rng, (3, 5), 8, ignore_index=-100)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 2, 1)))  # torch: class dim 1
    expected = F.cross_entropy(xt, torch.from_numpy(t), reduction=reduction)
    check_loss(
        fastnll.cross_entropy(x, t, reduction=reduction),
        expected.numpy() if reduction == "none" else expected.item(),
        np.float64,
        reduction,
        n_rows=15,
    )
    lp = F.log_softmax(xt, dim=1)
    expected = F.nll_loss(lp, torch.from_numpy(t), reduction=reduction)
    got = fastnll.nll_loss(lp.numpy().transpose(0, 2, 1), t, reduction=reduction)
    check_loss(
        got,
        expected.numpy() if reduction == "none" else expected.item(),
        np.float64,
        reduction,
        n_rows=15,
    )


@pytest.mark.parametrize("use_pos_weight", [False, True])
def test_bce_vs_torch(rng, reduction, use_pos_weight):
    torch, F = _torch_f()
    z = make_logits(rng, (20, 6), np.float64)
    y = rng.random((20, 6))
    w = rng.uniform(0.5, 2.0, (20, 1))
    pw = rng.uniform(0.5, 3.0, 6) if use_pos_weight else None
    expected = F.binary_cross_entropy_with_logits(
        torch.from_numpy(z),
        torch.from_numpy(y),
        weight=torch.from_numpy(w),
        pos_weight=None if pw is None else torch.from_numpy(pw),
        reduction=reduction,
    )
    got = fastnll.binary_cross_entropy_with_logits(
        z, y, weight=w, pos_weight=pw, reduction=reduction
    )
    check_loss(
        got,
        expected.numpy() if reduction == "none" else expected.item(),
        np.float64,
        reduction,
        n_rows=120,
    )


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_softmax_family_vs_torch(rng, dim):
    torch, F = _torch_f()
    x = make_logits(rng, (4, 6, 9), np.float32)
    xt = torch.from_numpy(x.astype(np.float64))
    assert_close(fastnll.softmax(x, axis=dim), F.softmax(xt, dim=dim).numpy(), np.float32)
    assert_close(fastnll.log_softmax(x, axis=dim), F.log_softmax(xt, dim=dim).numpy(), np.float32)
    assert_close(fastnll.logsumexp(x, axis=dim), torch.logsumexp(xt, dim=dim).numpy(), np.float32)


@pytest.mark.parametrize("n_classes", [2, 3, 10, 63, 64, 100, 1000])
@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_label_smoothing_rows_against_reference(rng, dtype, n_classes, offset):
    """Unweighted label smoothing takes the cross-entropy kernel plus eps * (x_t - mean x): the
    same number as the float64 reference (short and long rows, a large common offset, ignored
    rows), and its mean agrees with the per-row losses the other path computes."""
    n = 300 if n_classes <= 100 else 40
    x64 = rng.normal(size=(n, n_classes)) * 2 + offset
    x = x64.astype(dtype)
    t = make_targets(rng, (n,), n_classes, ignore_index=-100, frac_ignored=0.1)
    for reduction in ("mean", "sum"):
        got = fastnll.cross_entropy(x, t, reduction=reduction, label_smoothing=0.1)
        want = ref.cross_entropy(x, t, reduction=reduction, label_smoothing=0.1)
        check_loss(got, want, dtype, reduction, n_rows=n)
    rows = fastnll.cross_entropy(x, t, reduction="none", label_smoothing=0.1)
    keep = t != -100
    np.testing.assert_allclose(
        fastnll.cross_entropy(x, t, reduction="sum", label_smoothing=0.1),
        np.sum(rows[keep], dtype=np.float64),
        rtol=1e-6,
    )


@pytest.mark.parametrize("n_classes", [2, 10, 100])
def test_label_smoothing_masked_target_is_inf_not_nan(rng, dtype, n_classes):
    """A row whose target class is -inf (a masked class) has an infinite smoothed loss, as in
    PyTorch and the float64 reference, in every reduction; the other rows stay finite."""
    n = 64
    x = make_logits(rng, (n, n_classes), dtype)
    t = make_targets(rng, (n,), n_classes)
    x[5, t[5]] = -np.inf
    for reduction in ("mean", "sum"):
        got = fastnll.cross_entropy(x, t, reduction=reduction, label_smoothing=0.1)
        assert got == np.inf, (reduction, got)
        assert ref.cross_entropy(x, t, reduction=reduction, label_smoothing=0.1) == np.inf
    rows = fastnll.cross_entropy(x, t, reduction="none", label_smoothing=0.1)
    assert rows[5] == np.inf and np.isfinite(np.delete(rows, 5)).all()
