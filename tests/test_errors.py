"""Every documented error: exception type (never PanicException) and message content.

PyO3's PanicException derives from BaseException, so ``pytest.raises(<specific class>)``
lets it escape and fail the test.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import fastnll
from conftest import INT_DTYPES, INT_IDS, REDUCTIONS, make_logits, make_targets

HARD_FUNCS = ["nll_loss", "cross_entropy"]


def _call(func, x, t, **kw):
    if func == "nll_loss":
        x = -np.abs(np.asarray(x))
    return getattr(fastnll, func)(x, t, **kw)


def _shape_re(shape):
    """Matches a shape written as (4, 5) / [4, 5] / (3,) / [3]."""
    return r"[\(\[]" + r",\s*".join(str(d) for d in shape) + r",?[\)\]]"


# -------------------------------------------------------------------- targets out of range


@pytest.mark.parametrize("func", HARD_FUNCS)
@pytest.mark.parametrize("bad", [7, 12, -1, -7])
@pytest.mark.parametrize("position", [0, 4, 5])
def test_target_out_of_range(rng, func, reduction, bad, position):
    x = make_logits(rng, (6, 7), np.float32)
    t = np.array([1, 2, 3, 0, 6, 5])
    t[position] = bad
    with pytest.raises(IndexError) as info:
        _call(func, x, t, reduction=reduction)
    msg = str(info.value)
    assert str(bad) in msg and "7" in msg, msg
    assert re.search(rf"(?<![\w.-]){position}(?![\w.])", msg), msg


@pytest.mark.parametrize("label_smoothing", [0.1, 1.0])
def test_target_out_of_range_with_label_smoothing(rng, reduction, label_smoothing):
    x = make_logits(rng, (5, 3), np.float64)
    with pytest.raises(IndexError, match=r"(?s)(?=.*\b3\b)(?=.*\b9\b)"):
        fastnll.cross_entropy(
            x, np.array([0, 9, 1, 1, 2]), reduction=reduction, label_smoothing=label_smoothing
        )


def test_target_out_of_range_far_in_a_big_batch(rng, reduction):
    n, c = 50_000, 11
    x = make_logits(rng, (n, c), np.float32)
    t = make_targets(rng, (n,), c)
    t[43_217] = 23
    for func in HARD_FUNCS:
        with pytest.raises(IndexError) as info:
            _call(func, x, t, reduction=reduction)
        msg = str(info.value)
        assert "23" in msg and "11" in msg and "43217" in msg.replace(",", "").replace("_", "")


def test_target_out_of_range_nd(rng, reduction):
    x = make_logits(rng, (2, 3, 5), np.float32)
    t = np.zeros((2, 3), dtype=np.int64)
    t[1, 2] = 9
    for func in HARD_FUNCS:
        with pytest.raises(IndexError, match=r"(?s)(?=.*\b9\b)(?=.*\b5\b)"):
            _call(func, x, t, reduction=reduction)


@pytest.mark.parametrize("func", HARD_FUNCS)
def test_negative_targets_never_wrap(rng, func, reduction):
    x = make_logits(rng, (4, 3), np.float32)
    with pytest.raises(IndexError, match="-1"):
        _call(func, x, np.array([0, -1, 1, 2]), reduction=reduction)
    with pytest.raises(IndexError, match="-2"):
        _call(func, x, np.array([0, -1, -2, 2]), ignore_index=-1, reduction=reduction)
    with pytest.raises(IndexError, match="-100"):  # -100 is a target when not ignored
        _call(func, x, np.array([0, -100, 1, 2]), ignore_index=-1, reduction=reduction)


@pytest.mark.parametrize("tdtype", INT_DTYPES, ids=INT_IDS)
@pytest.mark.parametrize("func", HARD_FUNCS)
def test_out_of_range_every_target_dtype(rng, func, tdtype):
    x = make_logits(rng, (3, 7), np.float32)
    big = int(np.iinfo(tdtype).max)
    for bad in (7, big):
        t = np.array([0, bad, 1], dtype=tdtype)
        for reduction in REDUCTIONS:
            with pytest.raises(IndexError, match=str(bad)):
                _call(func, x, t, reduction=reduction)


# -------------------------------------------------------------------------- shape mismatch


@pytest.mark.parametrize(
    "xshape,tshape", [((4, 5), (3,)), ((2, 3, 5), (3, 2)), ((4, 5), (4, 1)), ((2, 3, 5), (6,))]
)
@pytest.mark.parametrize("func", HARD_FUNCS)
def test_hard_target_shape_mismatch(rng, func, reduction, xshape, tshape):
    x = make_logits(rng, xshape, np.float32)
    t = np.zeros(tshape, dtype=np.int64)
    with pytest.raises(ValueError) as info:
        _call(func, x, t, reduction=reduction)
    msg = str(info.value)
    assert re.search(_shape_re(xshape), msg) and re.search(_shape_re(tshape), msg), msg


@pytest.mark.parametrize("yshape", [(4, 6), (4,), (3, 5), (1, 4, 5)])
def test_soft_and_binary_target_shape_mismatch(rng, reduction, yshape):
    x = make_logits(rng, (4, 5), np.float32)
    y = np.full(yshape, 0.2, dtype=np.float32)
    if yshape != (4,):  # float targets of shape [N] are not soft targets of [N, C]
        with pytest.raises(ValueError) as info:
            fastnll.cross_entropy(x, y, reduction=reduction)
        msg = str(info.value)
        assert re.search(_shape_re((4, 5)), msg) and re.search(_shape_re(yshape), msg), msg
    with pytest.raises(ValueError) as info:
        fastnll.binary_cross_entropy_with_logits(x, y, reduction=reduction)
    msg = str(info.value)
    assert re.search(_shape_re((4, 5)), msg) and re.search(_shape_re(yshape), msg), msg


def test_logsumexp_b_not_broadcastable():
    with pytest.raises(ValueError):
        fastnll.logsumexp(np.zeros((3, 4)), b=np.ones(5))


# -------------------------------------------------------------------- arguments out of range


@pytest.mark.parametrize("bad", ["avg", "", "elementwise", "Mean "])
def test_unknown_reduction(rng, bad):
    x = make_logits(rng, (4, 3), np.float32)
    t = np.array([0, 1, 2, 0])
    for call in (
        lambda: fastnll.cross_entropy(x, t, reduction=bad),
        lambda: fastnll.cross_entropy(x, np.full(x.shape, 1 / 3), reduction=bad),
        lambda: fastnll.nll_loss(-np.abs(x), t, reduction=bad),
        lambda: fastnll.binary_cross_entropy_with_logits(x, np.zeros_like(x), reduction=bad),
    ):
        with pytest.raises(ValueError, match="reduction"):
            call()


@pytest.mark.parametrize("eps", [-0.1, 1.0000001, 1.5, np.nan, np.inf, -np.inf])
def test_label_smoothing_out_of_range(rng, reduction, eps):
    x = make_logits(rng, (4, 3), np.float32)
    with pytest.raises(ValueError, match=r"label.?smoothing"):
        fastnll.cross_entropy(x, np.array([0, 1, 2, 0]), reduction=reduction, label_smoothing=eps)
    with pytest.raises(ValueError, match=r"label.?smoothing"):
        fastnll.cross_entropy(x, np.full(x.shape, 1 / 3), reduction=reduction, label_smoothing=eps)


@pytest.mark.parametrize("length", [0, 1, 4, 6])
def test_weight_wrong_length(rng, reduction, length):
    x = make_logits(rng, (4, 5), np.float32)
    t = np.array([0, 1, 2, 4])
    w = np.ones(length)
    calls = [
        lambda: fastnll.cross_entropy(x, t, weight=w, reduction=reduction),
        lambda: fastnll.cross_entropy(x, t, weight=w, reduction=reduction, label_smoothing=0.1),
        lambda: fastnll.cross_entropy(x, np.full(x.shape, 0.2), weight=w, reduction=reduction),
        lambda: fastnll.nll_loss(-np.abs(x), t, weight=w, reduction=reduction),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="weight"):
            call()
    if length != 1:  # a length-1 pos_weight / weight broadcasts
        with pytest.raises(ValueError):
            fastnll.binary_cross_entropy_with_logits(
                x, np.zeros_like(x), pos_weight=w, reduction=reduction
            )
        with pytest.raises(ValueError):
            fastnll.binary_cross_entropy_with_logits(
                x, np.zeros_like(x), weight=w, reduction=reduction
            )


# -------------------------------------------------------------------------- unsupported dtypes

BAD_ARRAYS = {
    "int32": lambda: np.arange(12, dtype=np.int32).reshape(4, 3),
    "int64": lambda: np.arange(12, dtype=np.int64).reshape(4, 3),
    "uint8": lambda: np.arange(12, dtype=np.uint8).reshape(4, 3),
    "complex64": lambda: np.ones((4, 3), dtype=np.complex64),
    "complex128": lambda: np.ones((4, 3), dtype=np.complex128),
    "object": lambda: np.array([[1.0, 2.0, 3.0]] * 4, dtype=object),
    "str": lambda: np.array([["a", "b", "c"]] * 4),
}


@pytest.mark.parametrize("kind", list(BAD_ARRAYS))
def test_unsupported_logits_dtype(kind):
    x = BAD_ARRAYS[kind]()
    t = np.array([0, 1, 2, 0])
    calls = {
        "logsumexp": lambda: fastnll.logsumexp(x),
        "log_softmax": lambda: fastnll.log_softmax(x),
        "softmax": lambda: fastnll.softmax(x),
        "cross_entropy": lambda: fastnll.cross_entropy(x, t),
        "nll_loss": lambda: fastnll.nll_loss(x, t, reduction="none"),
        "bce": lambda: fastnll.binary_cross_entropy_with_logits(x, np.zeros((4, 3))),
    }
    for call in calls.values():
        with pytest.raises(TypeError, match="float32"):
            call()


# --------------------------------------------------------------- nll_loss given probabilities


@pytest.mark.parametrize("shape", [(8, 5), (2, 3, 4), (1, 1)])
def test_nll_loss_rejects_probabilities(rng, dtype, reduction, shape):
    x = make_logits(rng, shape, np.float64, scale=1.0)
    p = np.exp(x - x.max(axis=-1, keepdims=True))
    p = (p / p.sum(axis=-1, keepdims=True)).astype(dtype)
    t = make_targets(rng, shape[:-1], shape[-1])
    with pytest.raises(ValueError, match="probabilities") as info:
        fastnll.nll_loss(p, t, reduction=reduction)
    msg = str(info.value)
    assert "cross_entropy" in msg or re.search(r"\blog\b|log\(|np\.log|log_softmax", msg), msg


def test_nll_loss_single_positive_gathered_value(reduction):
    lp = np.array([[-1.0, -2.0], [-0.5, 0.25], [-3.0, -0.1]])
    with pytest.raises(ValueError, match="probabilities"):
        fastnll.nll_loss(lp, np.array([0, 1, 1]), reduction=reduction)


def test_nll_loss_positive_values_not_gathered_are_fine(reduction):
    """Only gathered, non-ignored values are checked."""
    lp = np.array([[-1.0, 2.0], [0.5, 0.25], [-3.0, -0.1]])
    t = np.array([0, -100, 1])
    got = fastnll.nll_loss(lp, t, reduction=reduction)
    expected = {"none": [1.0, 0.0, 0.1], "sum": 1.1, "mean": 0.55}[reduction]
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-12)
