"""The input contract of docs/contract.md: one test per row (``test_Rnn_*`` for row ``Rnn``).

Every call goes through :func:`call`, which checks that no array argument was modified, and
every expected error through :func:`raises`, which checks the exact exception class (so a
``PanicException``, a ``BaseException``, can never pass for the documented one) and a fragment
of its message. Every test runs on every SIMD path this CPU has (only on FASTNLL_SIMD's when
that pins one).
"""

from __future__ import annotations

import math
import os
import re
import warnings
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import fastnll
import reference as ref

BF16 = np.dtype(ml_dtypes.bfloat16)
FLOATS = [np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16), BF16]
INTS = [
    np.dtype(t)
    for t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)
]
REDUCTIONS = ["none", "sum", "mean"]
INF, NAN = np.inf, np.nan
AxisError = np.exceptions.AxisError

CONTRACT = Path(__file__).resolve().parent.parent / "docs" / "contract.md"


def _paths():
    """Every SIMD path this CPU has, or only FASTNLL_SIMD's when it pins one."""
    pinned = os.environ.get("FASTNLL_SIMD", "").strip().lower()
    avail = fastnll.available_simd_paths()
    return [pinned] if pinned in avail else avail


@pytest.fixture(autouse=True, params=_paths())
def simd_path(request):
    old = fastnll.simd_path()
    fastnll.set_simd_path(request.param)
    bug_paths = getattr(request.function, "bug_on_paths", None)
    if bug_paths is not None and request.param in bug_paths:
        request.applymarker(pytest.mark.xfail(strict=True, reason=request.function.bug_reason))
    yield request.param
    fastnll.set_simd_path(old)


def bug_on_paths(paths, reason):
    """A **BUG** row that only some SIMD paths get wrong: xfail(strict) on those paths."""

    def deco(f):
        f.bug_on_paths, f.bug_reason = tuple(paths), reason
        return f

    return deco


# ----------------------------------------------------------------------------------- helpers


def _state(a: np.ndarray):
    return (np.array(a, copy=True).tobytes(), a.dtype, a.shape, a.strides, a.flags.writeable)


def call(fn, *args, **kwargs):
    """fn(*args, **kwargs), checking that no ndarray argument changed (bytes, dtype, shape,
    strides, writeability), whether the call returned or raised."""
    arrays = [
        a
        for a in list(args) + list(kwargs.values())
        if isinstance(a, np.ndarray) and a.size <= 10_000_000
    ]
    before = [_state(a) for a in arrays]
    try:
        return fn(*args, **kwargs)
    finally:
        for a, b in zip(arrays, before):
            after = _state(a)
            assert after[1:] == b[1:], f"argument metadata changed: {b[1:]} -> {after[1:]}"
            assert after[0] == b[0], "fastnll modified an argument's data"


def raises(exc_type, fragment, fn, *args, **kwargs):
    """The call raises exactly `exc_type` (not a subclass, not a BaseException) whose message
    contains `fragment`; returns the exception."""
    try:
        call(fn, *args, **kwargs)
    except BaseException as e:  # noqa: B902 - PanicException is a BaseException
        assert type(e) is exc_type, (
            f"expected exactly {exc_type.__name__}, got {type(e).__module__}."
            f"{type(e).__name__}: {e}"
        )
        assert fragment in str(e), f"{fragment!r} not in {str(e)!r}"
        return e
    pytest.fail(f"{getattr(fn, '__name__', fn)} did not raise {exc_type.__name__}")


def f64(a):
    return np.asarray(a).astype(np.float64)


def close(got, expected, dtype=np.float32, *, what=""):
    """Per-row results against a float64 expectation (NaN == NaN, inf exact)."""
    got = np.asarray(got)
    rtol, atol = (1e-12, 1e-12) if np.dtype(dtype) == np.float64 else (2e-6, 2e-5)
    np.testing.assert_allclose(
        got.astype(np.float64),
        np.asarray(expected, np.float64),
        rtol=rtol,
        atol=atol,
        equal_nan=True,
        err_msg=what,
    )


def same_float(got, expected, rel=1e-6):
    assert isinstance(got, float), type(got)
    if math.isnan(expected):
        assert math.isnan(got), got
    elif math.isinf(expected):
        assert got == expected, (got, expected)
    else:
        assert abs(got - expected) <= rel * abs(expected) + 1e-6, (got, expected)


def logits(shape=(4, 3), dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def all_results(x, t, y, w=None):
    """Every function on one input: a dict of name -> result (for layout rows)."""
    out = {}
    for red in REDUCTIONS:
        out[f"ce_{red}"] = call(fastnll.cross_entropy, x, t, weight=w, reduction=red)
        out[f"ce_ls_{red}"] = call(fastnll.cross_entropy, x, t, reduction=red, label_smoothing=0.2)
        out[f"soft_{red}"] = call(fastnll.cross_entropy, x, y, reduction=red)
        out[f"bce_{red}"] = call(fastnll.binary_cross_entropy_with_logits, x, y, reduction=red)
    lp = -np.abs(np.asarray(x).astype(np.float64))
    out["nll"] = call(fastnll.nll_loss, lp, t, reduction="none")
    out["lse"] = call(fastnll.logsumexp, x)
    out["lse_axis0"] = call(fastnll.logsumexp, x, axis=0)
    out["lse_b"] = call(fastnll.logsumexp, x, b=np.full(x.shape, 0.5))
    out["sm"] = call(fastnll.softmax, x)
    out["lsm"] = call(fastnll.log_softmax, x)
    out["lsm_axis0"] = call(fastnll.log_softmax, x, axis=0)
    return out


def same_results(got: dict, expected: dict, dtype, what):
    for k, e in expected.items():
        if isinstance(e, float):
            same_float(got[k], e)
        else:
            assert np.asarray(got[k]).dtype == np.asarray(e).dtype, (what, k)
            close(got[k], f64(e), dtype, what=f"{what} {k}")


def layout_case(dtype, seed=0, n=13, c=21):
    """Logits, targets, soft targets of a shape that exercises tails and both kernels."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, c)) * 3).astype(dtype)
    t = rng.integers(0, c, n)
    t[3] = -100
    y = rng.random((n, c))
    y = (y / y.sum(axis=1, keepdims=True)).astype(np.float32)
    return x, t, y


# ==================================================================================== shapes


def test_R01_target_batch_length_differs():
    x = logits((2, 3))
    for func in (fastnll.cross_entropy, fastnll.nll_loss):
        for red in REDUCTIONS:
            raises(
                ValueError,
                "target shape (3,) does not match input shape (2, 3)",
                func,
                -np.abs(x),
                np.array([0, 1, 2]),
                reduction=red,
            )
            raises(
                ValueError,
                "target shape (1,) does not match input shape (2, 3)",
                func,
                -np.abs(x),
                np.array([0]),
                reduction=red,
            )


def test_R02_target_has_an_extra_axis():
    x = -np.abs(logits((2, 3)))
    one_hot = np.eye(3, dtype=np.int64)[[0, 2]]
    for func in (fastnll.cross_entropy, fastnll.nll_loss):
        raises(
            ValueError,
            "target shape (2, 3) does not match input shape (2, 3): expected (2,)",
            func,
            x,
            one_hot,
        )
        raises(
            ValueError,
            "target shape (1, 2) does not match input shape (2, 3)",
            func,
            x,
            np.array([[0, 1]]),
        )


def test_R03_target_missing_an_axis_or_transposed():
    x = -np.abs(logits((2, 4, 3)))
    for func in (fastnll.cross_entropy, fastnll.nll_loss):
        raises(ValueError, "expected (2, 4)", func, x, np.array([0, 1]))
        raises(
            ValueError,
            "target shape (4, 2) does not match input shape (2, 4, 3): expected (2, 4)",
            func,
            x,
            np.zeros((4, 2), np.int64),
        )


def test_R04_zero_d_target():
    x = logits((2, 3))
    for func in (fastnll.cross_entropy, fastnll.nll_loss):
        raises(ValueError, "target shape ()", func, -np.abs(x), np.array(1))
        raises(ValueError, "target shape ()", func, -np.abs(x), 1)
    row = logits((5,), np.float64)
    got = call(fastnll.cross_entropy, row, np.array(3), reduction="none")
    assert isinstance(got, np.ndarray) and got.shape == ()
    close(got, -ref.log_softmax(row)[3], np.float64)
    same_float(call(fastnll.cross_entropy, row, 3), float(-ref.log_softmax(row)[3]))
    lp = ref.log_softmax(row)
    same_float(call(fastnll.nll_loss, lp, np.int8(2)), float(-lp[2]))


def test_R05_probability_target_shape_differs():
    x = logits((2, 3))
    raises(
        ValueError,
        "probability target shape (2, 2) does not match input shape (2, 3)",
        fastnll.cross_entropy,
        x,
        np.full((2, 2), 0.5),
    )
    raises(
        ValueError,
        "probability target shape (3, 3) does not match input shape (2, 3)",
        fastnll.cross_entropy,
        x,
        np.full((3, 3), 1 / 3, np.float32),
    )


def test_R06_float_targets_shaped_like_indices():
    x = logits((2, 3))
    for t in (np.array([0.0, 2.0]), [0.0, 2.0], np.array([0, 2], np.float16)):
        raises(ValueError, "class-index targets must be integers", fastnll.cross_entropy, x, t)
        raises(TypeError, "must hold integer class indices", fastnll.nll_loss, -np.abs(x), t)


def test_R07_bce_target_shape_differs():
    x = logits((4, 3))
    for red in REDUCTIONS:
        raises(
            ValueError,
            "target shape (3,) does not match input shape (4, 3)",
            fastnll.binary_cross_entropy_with_logits,
            x,
            np.full(3, 0.5),
            reduction=red,
        )
        raises(
            ValueError,
            "target shape (4, 2) does not match input shape (4, 3)",
            fastnll.binary_cross_entropy_with_logits,
            x,
            np.full((4, 2), 0.5),
            reduction=red,
        )


def test_R08_bce_weight_and_pos_weight_not_broadcastable():
    x, y = logits((4, 3)), np.full((4, 3), 0.5)
    bce = fastnll.binary_cross_entropy_with_logits
    raises(
        ValueError,
        "weight of shape (2,) cannot be broadcast to input shape (4, 3)",
        bce,
        x,
        y,
        weight=np.ones(2),
    )
    raises(
        ValueError, "weight of shape (5, 3) cannot be broadcast", bce, x, y, weight=np.ones((5, 3))
    )
    raises(
        ValueError,
        "pos_weight of shape (2,) cannot be broadcast to the last axis (3 elements)",
        bce,
        x,
        y,
        pos_weight=np.ones(2),
    )
    raises(
        ValueError,
        "pos_weight of shape (1, 3) cannot be broadcast",
        bce,
        x,
        y,
        pos_weight=np.ones((1, 3)),
    )


def test_R09_logsumexp_b_not_broadcastable():
    raises(
        ValueError,
        "b of shape (2,) cannot be broadcast to a's shape (4, 3)",
        fastnll.logsumexp,
        logits((4, 3)),
        b=np.ones(2),
    )
    raises(
        ValueError,
        "b of shape (4, 3, 2) cannot be broadcast",
        fastnll.logsumexp,
        logits((4, 3)),
        b=np.ones((4, 3, 2)),
        return_sign=True,
    )


def test_R10_axis_out_of_range_or_repeated():
    x = logits((4, 3))
    for func in (fastnll.logsumexp, fastnll.softmax, fastnll.log_softmax):
        raises(AxisError, "axis 2 is out of bounds for array of dimension 2", func, x, axis=2)
        raises(AxisError, "axis -3 is out of bounds", func, x, axis=-3)
    raises(ValueError, "repeated axis", fastnll.logsumexp, x, axis=(0, 0))
    raises(ValueError, "repeated axis", fastnll.logsumexp, x, axis=(1, -1))


def test_R11_class_weight_wrong_length_or_ndim():
    x = logits((2, 3))
    t = np.array([0, 2])
    for w, shape in (
        (np.ones(2), "(2,)"),
        (np.ones(4), "(4,)"),
        (np.ones((1, 3)), "(1, 3)"),
        (np.float64(1.0), ""),
    ):
        msg = f"weight must be a 1-d array of 3 elements (one per class), got shape {shape}"
        raises(ValueError, msg, fastnll.cross_entropy, x, t, weight=w)
        raises(ValueError, msg, fastnll.cross_entropy, x, np.full((2, 3), 1 / 3), weight=w)
        raises(ValueError, msg, fastnll.nll_loss, -np.abs(x), t, weight=w)


# ===================================================================== class-index targets


def test_R12_target_at_least_C():
    x = logits((2, 3))
    for func, xx in ((fastnll.cross_entropy, x), (fastnll.nll_loss, -np.abs(x))):
        for red in REDUCTIONS:
            raises(
                IndexError,
                "target 3 at position 1 is out of range for 3 classes",
                func,
                xx,
                np.array([0, 3]),
                reduction=red,
            )
            raises(
                IndexError,
                "target 3 at position 1",
                func,
                xx,
                np.array([0, 3]),
                reduction=red,
                weight=np.ones(3),
            )
        raises(IndexError, "target 7 at position 0", func, xx, np.array([7, 0]))
    raises(
        IndexError,
        "target 3 at position 1",
        fastnll.cross_entropy,
        x,
        np.array([0, 3]),
        label_smoothing=0.3,
    )
    x3 = logits((2, 2, 3))
    t3 = np.zeros((2, 2), np.int64)
    t3[1, 0] = 5
    raises(
        IndexError,
        "target 5 at position (1, 0) is out of range for 3 classes",
        fastnll.cross_entropy,
        x3,
        t3,
    )
    # Far into a big batch (the vectorised short-row kernel and the chunked driver).
    xb = np.zeros((50_000, 7), np.float32)
    tb = np.zeros(50_000, np.int64)
    tb[43_210] = 7
    for red in REDUCTIONS:
        raises(
            IndexError, "target 7 at position 43210", fastnll.cross_entropy, xb, tb, reduction=red
        )


def test_R13_negative_targets_never_wrap():
    x = logits((2, 3))
    for bad in (-1, -101, -(2**63)):
        for func, xx in ((fastnll.cross_entropy, x), (fastnll.nll_loss, -np.abs(x))):
            for red in REDUCTIONS:
                raises(
                    IndexError,
                    f"target {bad} at position 0",
                    func,
                    xx,
                    np.array([bad, 0]),
                    reduction=red,
                )


def test_R14_uint64_max_target():
    x = logits((2, 3))
    t = np.array([0, 2**64 - 1], dtype=np.uint64)
    for func, xx in ((fastnll.cross_entropy, x), (fastnll.nll_loss, -np.abs(x))):
        for red in REDUCTIONS:
            raises(
                IndexError, "target 18446744073709551615 at position 1", func, xx, t, reduction=red
            )
        raises(IndexError, "target 18446744073709551615", func, xx, t, ignore_index=-1)


def test_R15_out_of_range_in_every_integer_dtype():
    x = logits((2, 3))
    for dt in INTS:
        t = np.array([1, 100], dtype=dt)
        raises(IndexError, "target 100 at position 1", fastnll.cross_entropy, x, t)
        raises(IndexError, "target 100 at position 1", fastnll.nll_loss, -np.abs(x), t)
    # uint8 156 has the bits of int8 -100 but is class 156, not the ignore_index.
    z = np.zeros((1, 200), np.float32)
    got = call(fastnll.cross_entropy, z, np.array([156], np.uint8), reduction="none")
    close(got, [math.log(200)])
    raises(IndexError, "target 156", fastnll.cross_entropy, z[:, :100], np.array([156], np.uint8))


def test_R16_bool_targets():
    x = logits((2, 3))
    for t in (np.array([True, False]), [True, False]):
        raises(
            TypeError,
            "must hold integer class indices (int8 ... uint64), got dtype bool",
            fastnll.cross_entropy,
            x,
            t,
        )
        raises(TypeError, "got dtype bool", fastnll.nll_loss, -np.abs(x), t)


def test_R17_non_integer_targets():
    x = logits((2, 3))
    for t in (
        np.array([0, 1], object),
        np.array(["0", "1"]),
        np.array([0, 1], complex),
        np.zeros(2, "datetime64[s]"),
        np.zeros(2, "timedelta64[s]"),
        [0, 2**70],
    ):
        raises(TypeError, "must hold integer class indices", fastnll.cross_entropy, x, t)
        raises(TypeError, "must hold integer class indices", fastnll.nll_loss, -np.abs(x), t)


def test_R18_list_with_uint64_max_becomes_float():
    x = logits((2, 3))
    raises(
        ValueError, "class-index targets must be integers", fastnll.cross_entropy, x, [0, 2**64 - 1]
    )
    raises(
        TypeError, "must hold integer class indices", fastnll.nll_loss, -np.abs(x), [0, 2**64 - 1]
    )


def test_R19_ignore_index_rows():
    x = logits((4, 3), np.float64)
    lp = ref.log_softmax(x)
    t8 = np.array([0, -100, 2, -100], np.int8)
    rows = call(fastnll.cross_entropy, x, t8, reduction="none")
    close(rows, [-lp[0, 0], 0.0, -lp[2, 2], 0.0], np.float64)
    same_float(call(fastnll.cross_entropy, x, t8), float((-lp[0, 0] - lp[2, 2]) / 2))
    # An ignore_index inside [0, C) ignores that class, as PyTorch.
    t = np.array([0, 1, 2, 0])
    same_float(call(fastnll.nll_loss, lp, t, ignore_index=0), float((-lp[1, 1] - lp[2, 2]) / 2))
    same_float(
        call(fastnll.cross_entropy, x, t, ignore_index=0, reduction="sum"),
        float(-lp[1, 1] - lp[2, 2]),
    )


def test_R20_ignore_index_not_an_integer():
    x = logits((2, 3))
    t = np.array([0, 1])
    for func, xx in ((fastnll.cross_entropy, x), (fastnll.nll_loss, -np.abs(x))):
        for bad in (1.5, "a", None, np.float64(1.0)):
            raises(TypeError, "ignore_index must be an integer", func, xx, t, ignore_index=bad)
        for bad in (2**63, -(2**63) - 1, 2**64):
            raises(ValueError, "does not fit in int64", func, xx, t, ignore_index=bad)
    # bool is not an integer here, as in every option of the API (R75).
    for func, xx in ((fastnll.cross_entropy, x), (fastnll.nll_loss, -np.abs(x))):
        for bad in (True, False, np.bool_(True)):
            raises(TypeError, "ignore_index must be an integer", func, xx, t, ignore_index=bad)


def test_R21_targets_in_unusual_layouts(tmp_path):
    x = logits((9, 5), np.float32)
    t = np.array([0, 4, 1, -100, 2, 3, 3, 0, 1])
    ct = t.copy()
    expected = fastnll.cross_entropy(x, ct, reduction="none")
    big = np.zeros(18, np.int64)
    big[::2] = t
    mis = np.zeros(9 * 8 + 1, np.uint8)[1:].view(np.int64)
    mis[:] = t
    ro = t.copy()
    ro.setflags(write=False)
    mm = np.memmap(tmp_path / "t.bin", dtype=np.int32, mode="w+", shape=(9,))
    mm[:] = t
    mm.flush()
    mmr = np.memmap(tmp_path / "t.bin", dtype=np.int32, mode="r", shape=(9,))
    variants = {
        "strided": big[::2],
        "negative": np.ascontiguousarray(t[::-1])[::-1],
        "byteswapped": t.astype(t.dtype.newbyteorder()),
        "misaligned": mis,
        "read-only": ro,
        "memmap": mmr,
    }
    assert not mis.flags.aligned
    for name, tv in variants.items():
        close(call(fastnll.cross_entropy, x, tv, reduction="none"), expected, what=name)
        close(
            call(fastnll.nll_loss, -np.abs(x), tv, reduction="none"),
            fastnll.nll_loss(-np.abs(x), ct, reduction="none"),
            what=name,
        )
    # broadcast targets
    tb = np.broadcast_to(np.int64(2), (9,))
    close(
        call(fastnll.cross_entropy, x, tb, reduction="none"),
        fastnll.cross_entropy(x, np.full(9, 2), reduction="none"),
    )


# ==================================================================================== weights


def test_R22_negative_weights_propagate():
    x = logits((3, 3), np.float64)
    t = np.array([0, 2, 1])
    w = np.array([-1.0, 2.0, 3.0])
    lp = ref.log_softmax(x)
    rows = -w[t] * lp[[0, 1, 2], t]
    close(call(fastnll.cross_entropy, x, t, weight=w, reduction="none"), rows, np.float64)
    same_float(call(fastnll.cross_entropy, x, t, weight=w), float(rows.sum() / w[t].sum()))
    same_float(call(fastnll.nll_loss, lp, t, weight=w), float(rows.sum() / w[t].sum()))


def test_R23_nan_weight():
    x = logits((3, 3), np.float64)
    t = np.array([0, 2, 2])
    w = np.array([NAN, 1.0, 1.0])
    rows = call(fastnll.cross_entropy, x, t, weight=w, reduction="none")
    assert np.isnan(rows[0]) and np.all(np.isfinite(rows[1:]))
    assert math.isnan(call(fastnll.cross_entropy, x, t, weight=w))
    assert math.isnan(call(fastnll.nll_loss, ref.log_softmax(x), t, weight=w))
    # not the weight of any target: no effect
    w2 = np.array([1.0, NAN, 1.0])
    same_float(
        call(fastnll.cross_entropy, x, t, weight=w2),
        ref.cross_entropy(x, t, weight=np.array([1.0, 7.0, 1.0])),
    )
    # ... unless label smoothing sums over every class
    rows = call(fastnll.cross_entropy, x, t, weight=w2, label_smoothing=0.1, reduction="none")
    assert np.all(np.isnan(rows))


def test_R24_infinite_weight():
    x = logits((2, 3), np.float64)
    t = np.array([0, 1])
    rows = call(fastnll.cross_entropy, x, t, weight=np.array([INF, 1.0, 1.0]), reduction="none")
    assert rows[0] == INF and np.isfinite(rows[1])
    assert math.isnan(call(fastnll.cross_entropy, x, t, weight=np.array([INF, 1.0, 1.0])))
    rows = call(
        fastnll.nll_loss, ref.log_softmax(x), t, weight=np.array([-INF, 1.0, 1.0]), reduction="none"
    )
    assert rows[0] == -INF


def test_R25_weights_summing_to_zero():
    x = logits((2, 3), np.float64)
    t = np.array([0, 0])
    w = np.array([0.0, 1.0, 1.0])
    for eps in (0.0, 0.4):
        assert math.isnan(call(fastnll.cross_entropy, x, t, weight=w, label_smoothing=eps))
    assert call(fastnll.cross_entropy, x, t, weight=w, reduction="sum") == 0.0
    s = call(fastnll.cross_entropy, x, t, weight=w, reduction="sum", label_smoothing=0.4)
    assert math.isfinite(s) and s > 0
    assert math.isnan(call(fastnll.nll_loss, ref.log_softmax(x), t, weight=w))
    w3 = np.array([1.0, -1.0, 5.0])  # +1 - 1 = 0
    assert math.isnan(call(fastnll.cross_entropy, x, np.array([0, 1]), weight=w3))


def test_R26_non_numeric_class_weight():
    x = logits((2, 3))
    t = np.array([0, 1])
    for w in (
        np.array(["a", "b", "c"]),
        np.ones(3, complex),
        np.ones(3, bool),
        np.array([1, 2, 3], object),
        ["a", "b", "c"],
    ):
        raises(TypeError, "weight must be numeric", fastnll.cross_entropy, x, t, weight=w)
        raises(TypeError, "weight must be numeric", fastnll.nll_loss, -np.abs(x), t, weight=w)
        raises(
            TypeError,
            "weight must be numeric",
            fastnll.cross_entropy,
            x,
            np.full((2, 3), 1 / 3),
            weight=w,
        )


def test_R27_bce_negative_or_nan_weights():
    x = logits((4, 3), np.float64)
    y = np.random.default_rng(1).random((4, 3))
    bce = fastnll.binary_cross_entropy_with_logits
    base = ref.binary_cross_entropy_with_logits(x, y, reduction="none")
    close(call(bce, x, y, weight=-np.ones(3), reduction="none"), -base, np.float64)
    pw = np.array([-1.0, 2.0, 0.5])
    close(
        call(bce, x, y, pos_weight=pw, reduction="none"),
        ref.binary_cross_entropy_with_logits(x, y, pos_weight=pw, reduction="none"),
        np.float64,
    )
    rows = call(bce, x, y, weight=np.array([NAN, 1.0, 1.0]), reduction="none")
    assert np.all(np.isnan(rows[:, 0])) and np.all(np.isfinite(rows[:, 1:]))
    assert math.isnan(call(bce, x, y, pos_weight=np.array([1.0, NAN, 1.0])))


def test_R28_non_numeric_b_and_bce_weights():
    x, y = logits((4, 3)), np.full((4, 3), 0.5)
    bce = fastnll.binary_cross_entropy_with_logits
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a ComplexWarning is not an answer
        for bad in (np.array(["a", "b", "c"]), np.ones(3, complex)):
            raises(TypeError, "numeric", fastnll.logsumexp, x, b=bad)
            raises(TypeError, "numeric", bce, x, y, weight=bad)
            raises(TypeError, "numeric", bce, x, y, pos_weight=bad)


# ==================================================================================== options


def test_R29_unknown_reduction():
    x = logits((2, 3))
    t = np.array([0, 1])
    msg = "reduction must be 'none', 'mean' or 'sum', got "
    for bad in ("avg", None, "MEAN", b"mean", "", "elementwise_mean"):
        raises(ValueError, msg + repr(bad), fastnll.cross_entropy, x, t, reduction=bad)
        raises(ValueError, msg, fastnll.cross_entropy, x, np.full((2, 3), 1 / 3), reduction=bad)
        raises(ValueError, msg, fastnll.nll_loss, -np.abs(x), t, reduction=bad)
        raises(
            ValueError,
            msg,
            fastnll.binary_cross_entropy_with_logits,
            x,
            np.zeros((2, 3)),
            reduction=bad,
        )


def test_R30_label_smoothing_out_of_range():
    x = logits((2, 3))
    for t in (np.array([0, 1]), np.full((2, 3), 1 / 3)):
        for bad in (-0.1, 1.5, NAN, INF, -INF, 1 + 1e-12):
            raises(
                ValueError,
                "label_smoothing must be in [0, 1]",
                fastnll.cross_entropy,
                x,
                t,
                label_smoothing=bad,
            )
        for bad in ("a", None, [0.1]):
            raises(
                TypeError,
                "label_smoothing must be a number",
                fastnll.cross_entropy,
                x,
                t,
                label_smoothing=bad,
            )


def test_R31_label_smoothing_edges():
    x = logits((3, 4), np.float64)
    t = np.array([0, 3, 1])
    lp = ref.log_softmax(x)
    same_float(call(fastnll.cross_entropy, x, t, label_smoothing=0.0), ref.cross_entropy(x, t))
    uniform = float(np.mean(-lp.mean(axis=1)))
    same_float(call(fastnll.cross_entropy, x, t, label_smoothing=1.0), uniform)
    same_float(call(fastnll.cross_entropy, x, t, label_smoothing=True), uniform)
    same_float(call(fastnll.cross_entropy, x, np.full((3, 4), 0.25), label_smoothing=1.0), uniform)


def test_R32_unknown_keyword():
    x = logits((2, 3))
    t = np.array([0, 1])
    for func, args, kw in (
        (fastnll.cross_entropy, (x, t), {"reductoin": "sum"}),
        (fastnll.cross_entropy, (x, t), {"size_average": True}),
        (fastnll.nll_loss, (-np.abs(x), t), {"dim": 1}),
        (fastnll.binary_cross_entropy_with_logits, (x, np.zeros((2, 3))), {"label_smoothing": 0.1}),
        (fastnll.logsumexp, (x,), {"dim": 1}),
        (fastnll.softmax, (x,), {"dim": 1}),
    ):
        raises(TypeError, "unexpected keyword argument", func, *args, **kw)


def test_R33_thread_and_path_settings():
    before = fastnll.get_num_threads()
    raises(ValueError, "number of threads must be >= 0", fastnll.set_num_threads, -1)
    raises(OverflowError, "", fastnll.set_num_threads, 2**64)
    assert fastnll.get_num_threads() == before
    path = fastnll.simd_path()
    raises(ValueError, "unknown SIMD path", fastnll.set_simd_path, "foo")
    raises(TypeError, "", fastnll.set_simd_path, None)
    missing = [
        p for p in ("scalar", "avx2", "avx512", "neon") if p not in fastnll.available_simd_paths()
    ]
    for p in missing:
        raises(ValueError, "not supported by this CPU", fastnll.set_simd_path, p)
    assert fastnll.simd_path() == path


# ==================================================================== dimensions and sizes


def test_R34_zero_d_logits_for_losses():
    for func, name in ((fastnll.cross_entropy, "logits"), (fastnll.nll_loss, "log_probs")):
        for x in (np.float32(-1.0), np.array(-1.0), -1.0):
            raises(ValueError, f"{name} must have at least 1 dimension", func, x, np.array(0))


def test_R35_zero_d_inputs():
    for x in (np.float32(2.0), np.array(2.0), 2.0):
        lse = call(fastnll.logsumexp, x)
        assert np.ndim(lse) == 0 and float(lse) == 2.0
        sm = call(fastnll.softmax, x)
        lsm = call(fastnll.log_softmax, x)
        assert sm.shape == () and float(sm) == 1.0
        assert lsm.shape == () and float(lsm) == 0.0
    bce = fastnll.binary_cross_entropy_with_logits
    expected = math.log1p(math.exp(-2.0))
    same_float(call(bce, np.float32(2.0), np.float32(1.0)), expected)
    rows = call(bce, np.array(2.0), np.array(1.0), reduction="none")
    assert isinstance(rows, np.ndarray) and rows.shape == ()
    close(rows, expected, np.float64)


def test_R36_zero_classes():
    x = np.zeros((3, 0), np.float32)
    lse = call(fastnll.logsumexp, x)
    assert lse.shape == (3,) and np.all(lse == -INF)
    assert call(fastnll.softmax, x).shape == (3, 0)
    assert call(fastnll.log_softmax, x).shape == (3, 0)
    for func in (fastnll.cross_entropy, fastnll.nll_loss):
        for red in REDUCTIONS:
            raises(
                IndexError,
                "target 0 at position 0 is out of range for 0 classes",
                func,
                x,
                np.zeros(3, np.int64),
                reduction=red,
            )
        ign = np.full(3, -100)
        assert math.isnan(call(func, x, ign))
        assert call(func, x, ign, reduction="sum") == 0.0
        assert np.all(call(func, x, ign, reduction="none") == 0.0)
    bce = fastnll.binary_cross_entropy_with_logits
    assert math.isnan(call(bce, x, x))
    assert call(bce, x, x, reduction="sum") == 0.0
    assert call(bce, x, x, reduction="none").shape == (3, 0)


@pytest.mark.parametrize("lead", [(0,), (2, 0), (0, 3)])
def test_R37_empty_batch(lead):
    for dtype in FLOATS:
        x = np.zeros(lead + (5,), dtype)
        t = np.zeros(lead, np.int64)
        y = np.zeros(lead + (5,), np.float32)
        od = np.float64 if dtype == np.float64 else np.float32
        for red in REDUCTIONS:
            for got in (
                call(fastnll.cross_entropy, x, t, reduction=red),
                call(
                    fastnll.cross_entropy,
                    x,
                    t,
                    reduction=red,
                    weight=np.ones(5),
                    label_smoothing=0.1,
                ),
                call(fastnll.cross_entropy, x, y, reduction=red),
                call(fastnll.nll_loss, x, t, reduction=red),
            ):
                if red == "none":
                    assert got.shape == lead and got.dtype == od
                elif red == "sum":
                    assert got == 0.0 and isinstance(got, float)
                else:
                    assert math.isnan(got)
            got = call(fastnll.binary_cross_entropy_with_logits, x, y, reduction=red)
            assert (
                got.shape == x.shape
                if red == "none"
                else (got == 0.0 if red == "sum" else math.isnan(got))
            )
        assert call(fastnll.logsumexp, x).shape == lead
        assert call(fastnll.softmax, x).shape == x.shape
        assert call(fastnll.log_softmax, x).shape == x.shape


def test_R38_every_row_ignored():
    x = logits((5, 4))
    t = np.full(5, -100)
    for func, xx in ((fastnll.cross_entropy, x), (fastnll.nll_loss, -np.abs(x))):
        for kw in ({}, {"weight": np.ones(4)}):
            assert math.isnan(call(func, xx, t, **kw))
            assert call(func, xx, t, reduction="sum", **kw) == 0.0
            assert np.all(call(func, xx, t, reduction="none", **kw) == 0.0)
    assert math.isnan(call(fastnll.cross_entropy, x, t, label_smoothing=0.5))


def test_R39_more_than_2_31_elements(simd_path):
    if simd_path != fastnll.available_simd_paths()[-1]:
        pytest.skip("one path is enough (a few seconds per call)")
    row = np.zeros(2**20, np.float32)
    x = np.broadcast_to(row, (2049, 2**20))  # 2**31 + 2**20 elements, 4 MiB of memory
    assert x.size > 2**31
    want = 20 * math.log(2)
    lse = fastnll.logsumexp(x)
    assert lse.shape == (2049,)
    close(lse, np.full(2049, want))
    t = np.broadcast_to(np.int64(12345), (2049,))
    same_float(fastnll.cross_entropy(x, t), want, rel=1e-6)
    same_float(fastnll.cross_entropy(x, t, reduction="sum"), 2049 * want, rel=1e-6)
    if os.environ.get("FASTNLL_CONTRACT_HUGE") == "1":  # minutes: 2**31 broadcast rows
        xs = np.broadcast_to(np.float32(0), (2**31 + 5, 2))
        ts = np.broadcast_to(np.int64(1), (2**31 + 5,))
        same_float(fastnll.cross_entropy(xs, ts), math.log(2), rel=1e-6)


# ======================================================================= dtypes, array-likes

BAD_DTYPES = [
    object,
    "U3",
    "S3",
    np.complex64,
    np.complex128,
    np.int8,
    np.int32,
    np.int64,
    np.uint8,
    np.uint64,
    bool,
    np.longdouble,
    "datetime64[s]",
    "timedelta64[s]",
    "V2",
]


def test_R40_unsupported_logits_dtypes():
    t = np.array([0, 1])
    y = np.full((2, 3), 0.5)
    for dt in BAD_DTYPES:
        x = np.zeros((2, 3), dtype=dt)
        name = str(x.dtype)
        frag = "accepted dtypes: float32, float64, float16, bfloat16 (ml_dtypes)"
        raises(TypeError, f"logits has dtype {name}; " + frag, fastnll.cross_entropy, x, t)
        raises(TypeError, frag, fastnll.cross_entropy, x, y)
        raises(TypeError, f"log_probs has dtype {name}", fastnll.nll_loss, x, t)
        raises(TypeError, frag, fastnll.binary_cross_entropy_with_logits, x, y)
        raises(
            TypeError, f"target has dtype {name}", fastnll.binary_cross_entropy_with_logits, y, x
        )
        for func in (fastnll.logsumexp, fastnll.softmax, fastnll.log_softmax):
            raises(TypeError, frag, func, x)


def test_R41_python_sequences():
    x = [[2, 0, -1], [1, 1, 1]]
    same_float(
        call(fastnll.cross_entropy, x, [0, 2]),
        ref.cross_entropy(np.array(x, np.float64), np.array([0, 2])),
    )
    close(
        call(fastnll.logsumexp, [[True, False]]), ref.logsumexp(np.array([[1.0, 0.0]])), np.float64
    )
    frag = "accepted dtypes"
    for bad in ([["a", "b"]], None):
        for func, args in (
            (fastnll.cross_entropy, (bad, [0])),
            (fastnll.logsumexp, (bad,)),
            (fastnll.softmax, (bad,)),
            (fastnll.nll_loss, (bad, [0])),
            (fastnll.binary_cross_entropy_with_logits, (bad, [[0.0, 1.0]])),
        ):
            raises(TypeError, frag, func, *args)
    ragged = [[1.0, 2.0], [3.0]]
    for func, args in (
        (fastnll.cross_entropy, (ragged, [0, 0])),
        (fastnll.logsumexp, (ragged,)),
        (fastnll.log_softmax, (ragged,)),
    ):
        raises(TypeError, "could not be converted to an array", func, *args)


# ============================================================================ memory layouts


def _swapped(a):
    return a.byteswap().view(a.dtype.newbyteorder())


@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: np.dtype(d).name)
def test_R42_big_endian(dtype):
    x, t, y = layout_case(dtype)
    xs = _swapped(x)
    assert not xs.dtype.isnative
    same_results(all_results(xs, t, y), all_results(x, t, y), dtype, "big-endian")


@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: np.dtype(d).name)
def test_R43_fortran_order(dtype):
    x, t, y = layout_case(dtype)
    xf = np.asfortranarray(x)
    assert xf.flags.f_contiguous and not xf.flags.c_contiguous
    same_results(all_results(xf, t, y), all_results(x, t, y), dtype, "fortran")
    xt = np.ascontiguousarray(x.T).T
    same_results(all_results(xt, t, y), all_results(x, t, y), dtype, "transposed")


@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: np.dtype(d).name)
def test_R44_negative_strides(dtype):
    x, t, y = layout_case(dtype)
    xn = np.ascontiguousarray(x[::-1, ::-1])[::-1, ::-1]
    assert all(s < 0 for s in xn.strides)
    same_results(all_results(xn, t, y), all_results(x, t, y), dtype, "negative strides")


@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: np.dtype(d).name)
def test_R45_zero_strides(dtype):
    x, t, y = layout_case(dtype)
    for name, xb in (
        ("rows", np.broadcast_to(x[2], x.shape)),
        ("cols", np.broadcast_to(x[:, 4:5], x.shape)),
        ("scalar", np.broadcast_to(x[1, 1], x.shape)),
    ):
        assert 0 in xb.strides
        same_results(
            all_results(xb, t, y),
            all_results(np.ascontiguousarray(xb), t, y),
            dtype,
            f"zero stride {name}",
        )


@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: np.dtype(d).name)
def test_R46_misaligned(dtype):
    x, t, y = layout_case(dtype)
    buf = bytearray(x.nbytes + 1)
    xm = np.frombuffer(buf, dtype=x.dtype, count=x.size, offset=1).reshape(x.shape)
    assert not xm.flags.aligned
    buf[1:] = x.tobytes()
    same_results(all_results(xm, t, y), all_results(x, t, y), dtype, "misaligned")


def test_R47_read_only_arrays():
    x, t, y = layout_case(np.float32)
    w = np.linspace(0.5, 2.0, x.shape[1])
    expected = all_results(x, t, y, w)
    for a in (x, t, y, w):
        a.setflags(write=False)
    same_results(all_results(x, t, y, w), expected, np.float32, "read-only")
    b = np.full(x.shape, 0.5)
    b.setflags(write=False)
    call(fastnll.logsumexp, x, b=b, return_sign=True)
    call(fastnll.binary_cross_entropy_with_logits, x, y, weight=w, pos_weight=w)
    assert not any(a.flags.writeable for a in (x, t, y, w, b))


def test_R48_memmap(tmp_path):
    x, t, y = layout_case(np.float32)
    path = tmp_path / "x.bin"
    raw = np.memmap(path, dtype=np.uint8, mode="w+", shape=(x.nbytes + 2,))
    raw[2:] = np.frombuffer(x.tobytes(), np.uint8)
    raw.flush()
    del raw
    expected = all_results(x, t, y)
    for offset in (2,):
        mm = np.memmap(path, dtype=np.float32, mode="r", offset=offset, shape=x.shape)
        assert not mm.flags.aligned
        got = all_results(mm, t, y)
        same_results(got, expected, np.float32, "memmap")
        for k, v in got.items():
            assert type(v) in (float, np.ndarray), (k, type(v))
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    same_results(all_results(mm, t, y), expected, np.float32, "np.load mmap")


# ========================================================================= non-finite values


@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: np.dtype(d).name)
def test_R49_nan_in_a_row(dtype):
    for c in (3, 17, 40):  # the short-row kernel, its tail, the general kernel
        x = logits((4, c), dtype, seed=c)
        t = np.array([0, 1, 2, 0])
        x[1, 1] = NAN  # at the target
        x[2, 0] = NAN  # elsewhere
        rows = call(fastnll.cross_entropy, x, t, reduction="none")
        assert np.isnan(rows[1]) and np.isnan(rows[2]) and np.all(np.isfinite(rows[[0, 3]]))
        assert math.isnan(call(fastnll.cross_entropy, x, t))
        assert math.isnan(call(fastnll.cross_entropy, x, t, reduction="sum"))
        lse = call(fastnll.logsumexp, x)
        assert np.isnan(lse[1]) and np.isnan(lse[2]) and np.isfinite(lse[0])
        for func in (fastnll.softmax, fastnll.log_softmax):
            out = call(func, x)
            assert np.all(np.isnan(out[1])) and np.all(np.isnan(out[2]))
            assert np.all(np.isfinite(out[0]))
        lp = -np.abs(x)
        nll = call(fastnll.nll_loss, lp, t, reduction="none")
        assert np.isnan(nll[1]) and np.isfinite(nll[2])  # row 2's NaN is not gathered


@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: np.dtype(d).name)
def test_R50_pos_inf_at_a_non_target_logit(dtype):
    for c in (3, 17, 40):
        x = logits((3, c), dtype, seed=c)
        x[1, 2] = INF
        t = np.array([0, 0, 1])
        rows = call(fastnll.cross_entropy, x, t, reduction="none")
        assert rows[1] == INF and np.all(np.isfinite(rows[[0, 2]]))
        assert call(fastnll.cross_entropy, x, t) == INF
        rows = call(fastnll.cross_entropy, x, t, reduction="none", label_smoothing=0.1)
        assert np.isnan(rows[1])
        assert call(fastnll.logsumexp, x)[1] == INF
        sm, lsm = call(fastnll.softmax, x)[1], call(fastnll.log_softmax, x)[1]
        assert np.isnan(sm[2]) and np.all(np.delete(sm, 2) == 0.0)
        assert np.isnan(lsm[2]) and np.all(np.delete(lsm, 2) == -INF)


def test_R51_pos_inf_at_the_target():
    for dtype in FLOATS:
        x = logits((2, 5), dtype)
        x[0, 3] = INF
        rows = call(fastnll.cross_entropy, x, np.array([3, 0]), reduction="none")
        assert np.isnan(rows[0]) and np.isfinite(rows[1])


def test_R52_neg_inf_at_target_or_elsewhere():
    for dtype in FLOATS:
        for c in (3, 17, 40):
            x = logits((2, c), dtype, seed=c)
            x[0, 1] = -INF
            x[1, 2] = -INF
            t = np.array([1, 0])
            rows = call(fastnll.cross_entropy, x, t, reduction="none")
            assert rows[0] == INF and np.isfinite(rows[1])
            close(rows[1], ref.cross_entropy(f64(x), t, reduction="none")[1], dtype)
            assert call(fastnll.softmax, x)[1, 2] == 0.0
            assert call(fastnll.log_softmax, x)[1, 2] == -INF
            nll = call(
                fastnll.nll_loss,
                np.where(np.isinf(x), x, -np.abs(x)).astype(dtype),
                t,
                reduction="none",
            )
            assert nll[0] == INF


def test_R53_all_neg_inf_row():
    for dtype in FLOATS:
        for c in (1, 3, 17, 40):
            x = logits((2, c), dtype, seed=c)
            x[0] = -INF
            t = np.array([0, 0])
            assert call(fastnll.logsumexp, x)[0] == -INF
            assert np.isnan(call(fastnll.cross_entropy, x, t, reduction="none")[0])
            assert np.all(np.isnan(call(fastnll.softmax, x)[0]))
            assert np.all(np.isnan(call(fastnll.log_softmax, x)[0]))


@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: np.dtype(d).name)
def test_R54_non_finite_values_in_ignored_rows(dtype):
    for c, layout in ((5, "c"), (17, "c"), (32, "c"), (33, "c"), (100, "c"), (5, "strided")):
        n = 64
        rng = np.random.default_rng(c)
        x = rng.standard_normal((n, c)).astype(dtype)
        t = rng.integers(0, c, n)
        bad_rows = [0, 7, 8, 15, 16, 31, 40, 63]
        for k, r in enumerate(bad_rows):
            x[r, k % c] = (NAN, INF, -INF)[k % 3]
            if k % 4 == 3:
                x[r] = NAN
            t[r] = -100
        clean = x.copy()
        clean[bad_rows] = 0.0
        xv = x if layout == "c" else np.ascontiguousarray(np.repeat(x, 2, axis=1))[:, ::2]
        w = rng.uniform(0.5, 2.0, c)
        for kw in (
            {},
            {"weight": w},
            {"label_smoothing": 0.2},
            {"weight": w, "label_smoothing": 0.3},
        ):
            for red in REDUCTIONS:
                got = call(fastnll.cross_entropy, xv, t, reduction=red, **kw)
                want = fastnll.cross_entropy(clean, t, reduction=red, **kw)
                if red == "none":
                    assert np.all(got[bad_rows] == 0.0)
                    close(got, want, dtype)
                else:
                    same_float(got, want, rel=1e-6)
                    assert math.isfinite(got)
        lp = np.where(np.isnan(x), x, -np.abs(x)).astype(dtype)
        for red in ("mean", "sum"):
            got = call(fastnll.nll_loss, lp, t, reduction=red)
            lpc = lp.copy()
            lpc[bad_rows] = 0.0
            same_float(got, fastnll.nll_loss(lpc, t, reduction=red), rel=1e-9)
    # One special value alone in an otherwise clean batch (the SIMD short-row kernels handle
    # whole blocks of rows: a lone special must not leak). -inf in column 0: see R65.
    for c in (3, 5, 16, 17, 32, 33, 100):
        clean = np.random.default_rng(c).standard_normal((64, c)).astype(dtype)
        t = np.ones(64, np.int64)
        t[21] = -100
        want = {red: fastnll.cross_entropy(clean, t, reduction=red) for red in REDUCTIONS}
        for v, col in ((NAN, 0), (NAN, c - 1), (INF, 0), (INF, c - 1), (-INF, c - 1)):
            if v == -INF and col == 0:
                continue
            x = clean.copy()
            x[21, col] = v
            for red in REDUCTIONS:
                got = call(fastnll.cross_entropy, x, t, reduction=red)
                if red == "none":
                    assert got[21] == 0.0, (c, v, col, got[21])
                    close(got, want[red], dtype)
                else:
                    same_float(got, want[red], rel=1e-6)


def test_R55_nll_loss_rejects_non_log_probabilities():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    for red in REDUCTIONS:
        raises(
            ValueError,
            "nll_loss expects log-probabilities (all <= 0), but the input at the "
            "target of position (0, 0) is 0.7",
            fastnll.nll_loss,
            probs,
            np.array([0, 2]),
            reduction=red,
        )
    lp = np.log(probs)
    lp[1, 1] = INF
    raises(ValueError, "position (1, 1) is inf", fastnll.nll_loss, lp, np.array([0, 1]))
    x3 = -np.ones((1, 3, 2))
    x3[0, 2, 0] = 0.3
    raises(ValueError, "position (0, 2, 0)", fastnll.nll_loss, x3, np.zeros((1, 3), np.int64))
    # Rounding headroom, and positives that are not gathered.
    same_float(call(fastnll.nll_loss, np.array([[1e-5, -1.0]]), [0]), -1e-5, rel=1e-12)
    raises(ValueError, "log-probabilities", fastnll.nll_loss, np.array([[2e-5, -1.0]]), [0])
    same_float(call(fastnll.nll_loss, np.array([[5.0, -1.0]]), [1]), 1.0)
    # Ignored rows are never looked at.
    same_float(call(fastnll.nll_loss, np.array([[5.0, 5.0], [-1.0, -2.0]]), [-100, 1]), 2.0)


def test_R56_soft_targets_unvalidated():
    x = np.array([[0.0, 1.0, 2.0]] * 4 + [[0.0, -INF, 2.0], [0.0, INF, 1.0]])
    y = np.array(
        [
            [NAN, 0.5, 0.5],
            [INF, 0.0, 0.0],
            [-1.0, 1.0, 1.0],
            [0.2, 0.2, 0.2],
            [0.5, 0.0, 0.5],
            [0.5, 0.0, 0.5],
        ]
    )
    rows = call(fastnll.cross_entropy, x, y, reduction="none")
    lp = ref.log_softmax(x[0])
    assert np.isnan(rows[0]) and rows[1] == INF
    close(rows[2], -(-lp[0] + lp[1] + lp[2]), np.float64)
    close(rows[3], -0.2 * lp.sum(), np.float64)
    close(rows[4], ref.cross_entropy(x[4:5], y[4:5], reduction="none")[0], np.float64)
    assert np.isfinite(rows[4])  # y = 0 at the -inf logit counts 0 (PyTorch: NaN)
    assert rows[5] == INF  # +inf elsewhere: the limit


def test_R57_label_smoothing_zero_weight_at_neg_inf():
    x = np.array([[0.0, -INF, 2.0], [1.0, 0.5, -INF]])
    t = np.array([0, 1])
    w = np.array([1.0, 0.0, 2.0])
    rows = call(fastnll.cross_entropy, x, t, weight=w, label_smoothing=0.3, reduction="none")
    lp = ref.log_softmax(x)
    eps, c = 0.3, 3
    want0 = (1 - eps) * w[0] * -lp[0, 0] + eps / c * -(w[0] * lp[0, 0] + w[2] * lp[0, 2])
    close(rows[0], want0, np.float64)
    assert rows[1] == INF  # row 1's -inf class has weight 2


def test_R58_bce_non_finite():
    z = np.array([0.0, 1.0, -1.0, INF, -INF, NAN, 50.0, -50.0])
    zz, yy = np.meshgrid(z, np.array([0.0, 1.0, 0.3, NAN, INF, -1.0]))
    pw = np.linspace(0.5, 3.0, zz.shape[1])
    with np.errstate(invalid="ignore", over="ignore"):
        sp = np.log1p(np.exp(-np.abs(zz))) + np.maximum(-zz, 0.0)
        want = (1 - yy) * zz + (1 + (pw - 1) * yy) * sp
    for dtype in (np.float32, np.float64):
        got = call(
            fastnll.binary_cross_entropy_with_logits,
            zz.astype(dtype),
            yy.astype(dtype),
            pos_weight=pw,
            reduction="none",
        )
        close(got, want, dtype)
    assert np.isnan(want[1, 4]) and want[0, 3] == INF  # z=-inf, y=1 / z=+inf, y=0


def test_R59_logsumexp_b_special_values():
    a = np.array([[0.0, INF, 1.0], [0.0, NAN, 1.0]])
    b = np.array([[1.0, 0.0, 1.0], [1.0, 0.0, 1.0]])
    close(call(fastnll.logsumexp, a, b=b), [math.log(1 + math.e)] * 2, np.float64)
    got = call(fastnll.logsumexp, np.array([[0.0, 0.0, 1.0]]), b=np.array([[1.0, NAN, 1.0]]))
    assert np.isnan(got[0])
    x = np.array([[0.0, 0.0, 1.0]])
    bn = np.array([[1.0, -5.0, 1.0]])
    assert np.isnan(call(fastnll.logsumexp, x, b=bn)[0])
    v, s = call(fastnll.logsumexp, x, b=bn, return_sign=True)
    close(v, [math.log(5 - 1 - math.e)], np.float64)
    assert s[0] == -1.0
    v, s = call(fastnll.logsumexp, x, b=np.zeros((1, 3)), return_sign=True)
    assert v[0] == -INF and s[0] == 0.0


def test_R60_extreme_finite_magnitudes():
    x = np.array([[3e38, -3e38]], np.float32)
    assert call(fastnll.logsumexp, x)[0] == np.float32(3e38)
    assert call(fastnll.cross_entropy, x, [0]) == 0.0
    assert call(fastnll.cross_entropy, x, [1], reduction="none")[0] == INF  # beyond float32
    same_float(call(fastnll.cross_entropy, x, [1]), 2 * float(np.float32(3e38)), rel=1e-7)
    assert call(fastnll.softmax, x).tolist() == [[1.0, 0.0]]
    x = np.array([[1e308, -1e308, 0.0]])
    assert call(fastnll.logsumexp, x)[0] == 1e308
    assert call(fastnll.cross_entropy, x, [0]) == 0.0
    h = np.array([[65504.0, -65504.0, 0.0]], np.float16)
    assert call(fastnll.logsumexp, h)[0] == 65504.0
    same_float(call(fastnll.cross_entropy, h, [1]), 131008.0)
    s = np.array([[1e-45, 1e-40, 0.0, -1e-42]], np.float32)
    close(call(fastnll.logsumexp, s), [math.log(4)])
    close(call(fastnll.cross_entropy, s, [0], reduction="none"), [math.log(4)])


def test_R61_float64_large_common_offset():
    for v in (1e6, 1e15, 1e17):
        x = np.array([[v, v, v - 1.0]])
        lp = ref.log_softmax(x)
        np.testing.assert_allclose(call(fastnll.log_softmax, x), lp, rtol=1e-12)
        np.testing.assert_allclose(call(fastnll.softmax, x), np.exp(lp), rtol=1e-12)
        np.testing.assert_allclose(
            call(fastnll.cross_entropy, x, [0], reduction="none"), -lp[:, 0], rtol=1e-12
        )


def test_R64_float32_label_smoothing_large_offset():
    rng = np.random.default_rng(0)
    for dtype in (np.float32, BF16):
        for c in (8, 40, 4096):
            x = (1e6 + rng.standard_normal((4, c)) * 3).astype(dtype)
            t = np.arange(4) % c
            got = call(fastnll.cross_entropy, x, t, label_smoothing=1.0, reduction="none")
            close(got, ref.cross_entropy(f64(x), t, label_smoothing=1.0, reduction="none"))


def test_R65_ignored_row_with_neg_inf_in_column_0(dtype):
    for c in (1, 3, 16, 17, 32):
        x = np.zeros((64, c), dtype)
        x[21, 0] = -INF
        t = np.zeros(64, np.int64)
        t[21] = -100
        for kw in ({}, {"weight": np.ones(c)}):
            rows = call(fastnll.cross_entropy, x, t, reduction="none", **kw)
            assert rows[21] == 0.0, (c, kw, rows[21])
            same_float(call(fastnll.cross_entropy, x, t, **kw), math.log(c) if c > 1 else 0.0)


# ============================================================================ other arguments


def test_R62_axis_of_the_wrong_type():
    x = logits((4, 3))
    raises(TypeError, "axis", fastnll.softmax, x, axis=(0, 1))
    raises(TypeError, "axis", fastnll.softmax, x, axis=None)
    raises(TypeError, "axis", fastnll.log_softmax, x, axis=None)
    raises(TypeError, "axis", fastnll.logsumexp, x, axis=1.5)


def test_R63_logsumexp_b_on_an_empty_batch():
    x = np.zeros((0, 3), np.float32)
    got = call(fastnll.logsumexp, x, b=np.ones(3))
    assert got.shape == (0,)
    v, s = call(fastnll.logsumexp, x, return_sign=True)
    assert v.shape == (0,) and s.shape == (0,)


# ================================================================== the table and the tests


def test_every_contract_row_has_one_test(simd_path):
    if simd_path != fastnll.available_simd_paths()[0]:
        pytest.skip("checked once")
    rows = re.findall(r"^\| (R\d\d) \|", CONTRACT.read_text(), flags=re.MULTILINE)
    assert len(rows) >= 40 and len(rows) == len(set(rows)), rows
    hostile = (Path(__file__).resolve().parent / "test_hostile.py").read_text()
    tests = [name for name in globals() if re.match(r"test_R\d\d_", name)]
    tests += re.findall(r"^def (test_R\d\d_\w+)\(", hostile, flags=re.MULTILINE)
    test_ids = sorted(name[5:8] for name in tests)
    assert len(test_ids) == len(set(test_ids)), "two tests for one row"
    assert sorted(rows) == test_ids, set(rows) ^ set(test_ids)
    bug_rows = set(
        re.findall(r"^\| (R\d\d) \| \*\*BUG\*\*", CONTRACT.read_text(), flags=re.MULTILINE)
    )
    xfail = {
        name[5:8]
        for name in tests
        if name in globals()
        and (
            any(m.name == "xfail" for m in getattr(globals()[name], "pytestmark", []))
            or hasattr(globals()[name], "bug_on_paths")
        )
    }
    assert "xfail" not in hostile  # R66-R79 are fixed rows
    assert bug_rows == xfail, (bug_rows, xfail)


@pytest.mark.parametrize("c", [2, 100])
@pytest.mark.parametrize("eps", [0.5, 1.0])
def test_R57b_label_smoothing_masked_target(c, eps):
    # a masked (-inf) target logit: PyTorch's (1-ε)·nll + ε/C·Σ_c(-log p_c) is inf + inf = inf
    # for ε < 1, and 0·inf + inf = NaN at ε = 1 (the fast ε·(x_t - mean x) form must not turn
    # that into inf); the same for the mean and for per-row losses
    g = np.random.default_rng(c)
    x = g.standard_normal((40, c)).astype(np.float32)
    t = g.integers(0, c, 40)
    x[5, t[5]] = -INF
    lp = ref.log_softmax(x.astype(np.float64))
    with np.errstate(invalid="ignore"):
        want = (1 - eps) * -lp[np.arange(40), t] + eps / c * -lp.sum(axis=1)
    assert np.isnan(want[5]) if eps == 1.0 else want[5] == INF
    rows = fastnll.cross_entropy(x, t, label_smoothing=eps, reduction="none")
    close(np.delete(rows, 5), np.delete(want, 5), np.float32)
    assert np.isnan(rows[5]) if eps == 1.0 else rows[5] == INF
    mean = fastnll.cross_entropy(x, t, label_smoothing=eps)
    assert np.isnan(mean) if eps == 1.0 else mean == INF
