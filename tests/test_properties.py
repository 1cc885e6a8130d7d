"""Differential property tests: every public function against the float64 reference.

Hypothesis draws shapes (row lengths hitting every tail of 8- and 16-lane SIMD: C = 1..70 and
a few long rows), dtypes (float32, float64, float16, bfloat16), magnitudes (x1, x1e3, x1e6),
value distributions (spread out, or a large common offset with O(1) differences, where
cancellation shows), -inf sprinkles, memory layouts (slices, transposes, negative strides,
byte-swapped, misaligned), target dtypes and layouts, ignore patterns and every option. Each
test runs on every SIMD path this CPU has (``fastnll.set_simd_path``), or on the one
``FASTNLL_SIMD`` pins.

Expected values come from ``tests/reference.py`` applied to the *same rounded inputs*
(float64 copies of what fastnll reads), so input rounding is not an error source and every
result must be close relative to its own magnitude (the loss's, not the logits'). Per row:

    |got - ref| <= atol + rtol * |ref|        (+ the allowances below)

with rtol/atol = 2e-6/2e-5 for 16/32-bit inputs (float32 results) and 1e-12/1e-12 for float64.
Logits of magnitude 1e6 with O(1) differences ("offset" draws) make this demanding: the shift
m ~ 1e6 must cancel exactly. Allowances, in units of u * mag (u = 2**-24, or 2**-53 for
float64; mag = the row's largest finite |x| times the weight / probability mass on it):

* binary_cross_entropy_with_logits, float64: 8 (PyTorch's own formula cancels at large |z|);
* known fastnll bugs, reported, dropped by ``FASTNLL_STRICT_ACCURACY=1``:
  A. float64 ``x - (m + ln s)`` rounds the shift first: 8 for float64 cross_entropy /
     log_softmax / softmax (pinned by ``test_float64_offset_logits_accurate_relative_to_the_loss``);
  B. label smoothing computes C * lse - sum(x), which cancels: unweighted 16/32-bit inputs
     sum x in float32, eps * max(16, C / 4) (at C = 4096 and offset 1e6 the answer can be 2-3x
     the truth: only strict mode tests this); float64 inputs, eps * 2C (pinned by
     ``test_float32_label_smoothing_at_large_offsets``).
  C. the AVX2/AVX-512 short-row cross-entropy turns an ignored row with -inf in column 0 into
     NaN: such values are replaced by 0 in the draws (ignored rows, so the expected answer is
     the same; pinned by ``test_ignored_row_with_neg_inf_in_column_0``).

Profiles (registered here, selected by FASTNLL_HYPOTHESIS_PROFILE):
* ``quick`` (default): derandomized, QUICK_EXAMPLES examples per test and SIMD path;
* ``thorough``: >= 100,000 examples over all the tests (per run, whatever the number of
  paths), random seeds.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

import fastnll
import reference as ref

BF16 = np.dtype(ml_dtypes.bfloat16)
FLOATS = [np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16), BF16]


def _paths():
    """Every SIMD path this CPU has, or only FASTNLL_SIMD's when it pins one (scripts/test.sh
    runs the suite once per path)."""
    pinned = os.environ.get("FASTNLL_SIMD", "").strip().lower()
    avail = fastnll.available_simd_paths()
    return [pinned] if pinned in avail else avail


PATHS = _paths()

#: Property tests in this file (for the thorough budget).
N_TESTS = 8
QUICK_EXAMPLES = 200
THOROUGH_TOTAL = 105_000
THOROUGH_EXAMPLES = math.ceil(THOROUGH_TOTAL / (N_TESTS * len(PATHS)))

_COMMON = dict(
    deadline=None,
    print_blob=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)
settings.register_profile(
    "fastnll-quick", max_examples=QUICK_EXAMPLES, derandomize=True, database=None, **_COMMON
)
settings.register_profile("fastnll-thorough", max_examples=THOROUGH_EXAMPLES, **_COMMON)
PROFILE_NAME = os.environ.get("FASTNLL_HYPOTHESIS_PROFILE", "quick")
if PROFILE_NAME not in ("quick", "thorough"):
    raise ValueError(f"FASTNLL_HYPOTHESIS_PROFILE must be quick or thorough, got {PROFILE_NAME!r}")
# Applied per test (not load_profile) so other test files keep their own hypothesis settings.
PROFILE = settings.get_profile(f"fastnll-{PROFILE_NAME}")

STRICT = os.environ.get("FASTNLL_STRICT_ACCURACY") == "1"

#: Row lengths: every tail of 8/16-lane vectors and of the 32-class short-row kernel, then
#: block (4096) and segment boundaries.
SMALL_C = list(range(1, 71))
LARGE_C = [95, 127, 128, 129, 255, 256, 257, 1000, 1023, 1024, 1025, 4095, 4096, 4097, 8193]
MAX_ELEMENTS = 40_000

paths = pytest.mark.parametrize("path", PATHS)


@contextmanager
def on_path(path):
    old = fastnll.simd_path()
    fastnll.set_simd_path(path)
    try:
        yield
    finally:
        fastnll.set_simd_path(old)


# ------------------------------------------------------------------------------- tolerances


def is64(dtype) -> bool:
    return np.dtype(dtype) == np.float64


def out_dtype(dtype):
    return np.dtype(np.float64) if is64(dtype) else np.dtype(np.float32)


def tol_params(dtype):
    """(rtol, atol, unit roundoff of the input precision)."""
    return (1e-12, 1e-12, 2.0**-53) if is64(dtype) else (2e-6, 2e-5, 2.0**-24)


def magnitude(x64, axis=-1, keepdims=False):
    """Largest finite |x| along `axis` (0 for empty or all non-finite)."""
    a = np.where(np.isfinite(x64), np.abs(x64), 0.0)
    return np.max(a, axis=axis, keepdims=keepdims, initial=0.0)


def row_tol(ref_vals, dtype, *, mag=0.0, shift_bug=False, smoothing_bug=0.0, path=None, classes=1):
    """atol + rtol |ref|, plus the allowances of the module docstring: `shift_bug` for bug A
    (float64 only), `smoothing_bug` = eps of label smoothing for bug B (see smoothing_eps)."""
    rtol, atol, u = tol_params(dtype)
    with np.errstate(invalid="ignore"):
        tol = atol + rtol * np.abs(ref_vals)
        if not STRICT:
            if shift_bug and is64(dtype):
                tol = tol + 8 * u * mag
            if smoothing_bug and not is64(dtype):
                tol = tol + smoothing_bug * max(16, classes / 4) * u * mag
            elif smoothing_bug:  # float64: C * lse - sum(w x) cancels in float64
                tol = tol + smoothing_bug * 2 * classes * u * mag
    return tol


def assert_rows(got, expected, tol, dtype, what=""):
    got = np.asarray(got)
    expected = np.asarray(expected, dtype=np.float64)
    assert got.dtype == out_dtype(dtype), (what, got.dtype, out_dtype(dtype))
    assert got.shape == expected.shape, (what, got.shape, expected.shape)
    g = got.astype(np.float64)
    same = (g == expected) | (np.isnan(g) & np.isnan(expected))
    with np.errstate(invalid="ignore"):
        ok = same | (np.abs(g - expected) <= tol)
    if not np.all(ok):
        bad = np.argwhere(~ok)[:5]
        details = [
            (tuple(i), g[tuple(i)], expected[tuple(i)], np.broadcast_to(tol, g.shape)[tuple(i)])
            for i in bad
        ]
        raise AssertionError(
            f"{what}: {np.count_nonzero(~ok)} of {g.size} off (index, got, "
            f"expected, tol): {details}"
        )


def assert_total(got, expected, tol, what=""):
    """A "sum"/"mean" result (a Python float) against the reference."""
    assert isinstance(got, float), (what, type(got))
    if math.isnan(expected) or math.isinf(expected):
        assert got == expected or (math.isnan(got) and math.isnan(expected)), (what, got, expected)
        return
    assert abs(got - expected) <= tol, f"{what}: got {got!r}, expected {expected!r}, tol {tol:.3g}"


# ------------------------------------------------------------------------------- strategies


def small_or_large_c(min_c=1):
    return st.one_of(
        st.integers(min_c, 70),
        st.integers(min_c, 70),
        st.integers(min_c, 70),
        st.sampled_from(LARGE_C),
    )


@st.composite
def lead_shapes(draw, c):
    """Leading (row) axes: none (one 1-d row), [N] or [A, B], with at most MAX_ELEMENTS."""
    cap = max(1, MAX_ELEMENTS // max(c, 1))
    kind = draw(st.sampled_from(["1d", "rows", "rows", "rows", "nd"]))
    if kind == "1d":
        return ()
    if kind == "rows":
        return (draw(st.integers(0, min(40, cap))),)
    a = draw(st.integers(0, min(5, cap)))
    b = draw(st.integers(1, max(1, min(7, cap // max(a, 1)))))
    return (a, b)


@st.composite
def values(draw, shape, dtype, neg_inf=True):
    """Logical float64 values already rounded to `dtype` (returned as a `dtype` array)."""
    seed = draw(st.integers(0, 2**32 - 1))
    scale = draw(st.sampled_from([1.0, 1e3, 1e6]))
    dist = draw(st.sampled_from(["normal", "normal", "offset", "uniform", "ties", "spike"]))
    rng = np.random.default_rng(seed)
    if dist == "normal":
        v = rng.standard_normal(shape) * scale
    elif dist == "offset":  # a large common offset with O(1) differences: cancellation
        v = scale * draw(st.sampled_from([1.0, -1.0, 3.7])) + rng.standard_normal(shape) * 3
    elif dist == "uniform":
        v = rng.uniform(-scale, scale, shape)
    elif dist == "ties":
        v = rng.integers(-3, 4, shape) * scale / 4
    else:  # one dominant entry per row
        v = rng.standard_normal(shape)
        if v.size:
            idx = rng.integers(0, shape[-1], shape[:-1])
            np.put_along_axis(v, idx[..., None], 20.0 * scale, axis=-1)
    if np.dtype(dtype) == np.float16:
        v = np.clip(v, -6e4, 6e4)
    if neg_inf and v.size and draw(st.integers(0, 4)) == 0:
        v[rng.random(shape) < draw(st.sampled_from([0.02, 0.3]))] = -np.inf
    note(f"values: dist={dist} scale={scale} seed={seed}")
    return v.astype(dtype)


LAYOUTS = [
    "c",
    "c",
    "fortran",
    "slice_cols",
    "slice_rows",
    "row_gap",
    "negative",
    "swapped",
    "misaligned",
]


def layout(a: np.ndarray, kind: str) -> np.ndarray:
    """The same logical values as `a` in another memory layout."""
    if a.ndim == 0 or a.size == 0 or kind == "c":
        return a
    if kind == "fortran":
        return np.asfortranarray(a)
    if kind == "slice_cols":
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1] + 1,), a.dtype)
        big[..., 1::2] = a
        return big[..., 1::2]
    if kind == "slice_rows":
        if a.ndim < 2:
            return layout(a, "slice_cols")
        big = np.zeros((2 * a.shape[0],) + a.shape[1:], a.dtype)
        big[::2] = a
        return big[::2]
    if kind == "row_gap":  # rows contiguous, row starts unaligned to any vector width
        big = np.zeros(a.shape[:-1] + (a.shape[-1] + 3,), a.dtype)
        big[..., 3:] = a
        return big[..., 3:]
    if kind == "negative":
        flip = (slice(None, None, -1),) * a.ndim
        return np.ascontiguousarray(a[flip])[flip]
    if kind == "swapped":
        return a.byteswap().view(a.dtype.newbyteorder())
    if kind == "misaligned":
        buf = np.zeros(a.nbytes + 1, np.uint8)
        m = buf[1:].view(a.dtype).reshape(a.shape)
        m[...] = a
        assert not m.flags.aligned or a.dtype.itemsize == 1
        return m
    raise AssertionError(kind)


TARGET_DTYPES = [
    "int64",
    "int64",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
]
TARGET_LAYOUTS = ["c", "c", "strided", "negative", "swapped", "broadcast"]


@st.composite
def class_targets(draw, lead, c):
    """(targets array, ignore_index, logical int64 targets)."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    t = rng.integers(0, c, lead).astype(np.int64)
    tdt = np.dtype(draw(st.sampled_from(TARGET_DTYPES)))
    info = np.iinfo(tdt)
    if c - 1 > info.max:
        tdt, info = np.dtype(np.int64), np.iinfo(np.int64)
    # ignore_index: PyTorch's default, a class inside [0, C) (then that class is ignored),
    # or a value outside [0, C).
    choices = [-100, 0, c - 1, c + 7]
    ii = draw(st.sampled_from([v for v in choices if info.min <= v <= info.max]))
    pattern = draw(st.sampled_from(["none", "some", "some", "all", "edges"]))
    if t.size:
        if pattern == "some":
            t[rng.random(lead) < draw(st.sampled_from([0.1, 0.5, 0.9]))] = ii
        elif pattern == "all":
            t[...] = ii
        elif pattern == "edges":
            t.reshape(-1)[0] = ii
            t.reshape(-1)[-1] = ii
    arr = t.astype(tdt)
    kind = draw(st.sampled_from(TARGET_LAYOUTS)) if arr.ndim else "c"
    if kind == "broadcast" and arr.ndim >= 1 and arr.size:
        arr = np.broadcast_to(arr[:1], arr.shape)
        t = np.broadcast_to(t[:1], t.shape).copy()
    elif kind == "strided" and arr.size:
        big = np.zeros(arr.shape[:-1] + (2 * arr.shape[-1],), tdt)
        big[..., ::2] = arr
        arr = big[..., ::2]
    elif kind == "negative" and arr.size:
        flip = (slice(None, None, -1),) * arr.ndim
        arr = np.ascontiguousarray(arr[flip])[flip]
    elif kind == "swapped" and arr.size:
        arr = arr.byteswap().view(arr.dtype.newbyteorder())
    note(f"targets: dtype={tdt} ignore_index={ii} pattern={pattern} layout={kind}")
    return arr, ii, t


@st.composite
def class_weights(draw, c):
    kind = draw(st.sampled_from(["none", "none", "positive", "with_zeros"]))
    if kind == "none":
        return None
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    w = rng.uniform(0.1, 3.0, c)
    if kind == "with_zeros":
        w[rng.random(c) < 0.3] = 0.0
    return w


label_smoothings = st.one_of(st.just(0.0), st.just(0.0), st.floats(0.0, 1.0), st.just(1.0))
reductions = st.sampled_from(["none", "sum", "mean"])
float_dtypes = st.sampled_from(FLOATS)


@st.composite
def logits_case(draw, min_c=1, neg_inf=True):
    dtype = draw(float_dtypes)
    c = draw(small_or_large_c(min_c))
    lead = draw(lead_shapes(c))
    x = draw(values(lead + (c,), dtype, neg_inf=neg_inf))
    kind = draw(st.sampled_from(LAYOUTS))
    note(f"dtype={dtype} shape={x.shape} layout={kind}")
    return dtype, x, layout(x, kind)


def f64(a):
    return np.asarray(a).astype(np.float64)


# -------------------------------------------------------------------------- class-index losses


def avoid_bug_c(x, xl, t, ii):
    """Bug C (module docstring): unless strict, -inf in column 0 of ignored rows becomes 0 in
    both the logical values `x` and the array `xl` fastnll reads (same positions)."""
    if STRICT or x.size == 0:
        return x, xl
    hit = (t == ii) & (f64(x[..., 0]) == -np.inf)
    if not np.any(hit):
        return x, xl
    x = x.copy()
    x[..., 0][hit] = 0
    if xl.dtype.isnative:
        xl = layout(x, "c") if xl.flags.c_contiguous else np.asfortranarray(x)
    else:
        xl = layout(x, "swapped")
    return x, xl


def smoothing_eps(eps, weight, dtype):
    """The eps that bug B's allowance applies to: 16/32-bit inputs sum x in float32 only
    without weights (the weighted sum is float64); float64 inputs cancel either way."""
    return eps if (weight is None or is64(dtype)) else 0.0


def _hard_expectations(x64, t, weight, ii, eps, dtype, path):
    """Reference rows, per-row tolerances and the mean's denominator."""
    c = x64.shape[-1]
    w = np.ones(c) if weight is None else weight
    if eps > 0 and np.any(w == 0):
        # A class of weight 0 counts 0 in the smoothing term even at a -inf logit (fastnll's
        # documented choice, as for zero-probability soft targets; PyTorch gives 0 * -inf = NaN).
        hard = ref.cross_entropy(x64, t, weight=weight, ignore_index=ii, reduction="none")
        lp = ref.log_softmax(x64)
        with np.errstate(invalid="ignore"):
            smooth = -np.sum(np.where(w != 0, w * lp, 0.0), axis=-1)
        rows = np.where(t != ii, (1 - eps) * hard + eps / c * smooth, 0.0)
    else:
        rows = ref.cross_entropy(
            x64, t, weight=weight, ignore_index=ii, reduction="none", label_smoothing=eps
        )
    keep = t != ii
    wt = np.where(keep, w[np.where(keep, t, 0)], 0.0)
    # Error scale: the row's magnitude times the weight mass multiplying it.
    mass = np.abs(wt) * (1 - eps) + (eps / c) * np.sum(np.abs(w))
    mag = magnitude(x64) * np.where(keep, mass, 0.0)
    tol = np.where(
        keep,
        row_tol(
            rows,
            dtype,
            mag=mag,
            shift_bug=True,
            path=path,
            classes=c,
            smoothing_bug=smoothing_eps(eps, weight, dtype),
        ),
        0.0,
    )
    return rows, tol, float(np.sum(wt))


def _check_reduction(got, rows, tol, denom, reduction, dtype, what):
    if reduction == "none":
        assert_rows(got, rows, tol, dtype, what)
        return
    total = float(np.sum(rows))
    if reduction == "sum":
        expected, t = total, float(np.sum(tol)) + 1e-12 * float(np.sum(np.abs(rows)))
    elif denom == 0:
        # No weight at all (empty, all ignored, or zero weights): NaN, as PyTorch (even when
        # label smoothing makes the sum non-zero).
        assert isinstance(got, float) and math.isnan(got), (what, got)
        return
    else:
        expected = total / denom
        t = (float(np.sum(tol)) + 1e-12 * float(np.sum(np.abs(rows)))) / abs(denom)
    if not np.all(np.isfinite(rows)):
        # Non-finite rows: the reduction is the same IEEE combination.
        assert got == expected or (math.isnan(got) and math.isnan(expected)), (what, got, expected)
        return
    assert_total(got, expected, t, what)


@paths
@PROFILE
@given(case=logits_case(), data=st.data(), reduction=reductions, eps=label_smoothings)
def test_cross_entropy_class_targets(path, case, data, reduction, eps):
    dtype, x, xl = case
    c = x.shape[-1]
    t_arr, ii, t = data.draw(class_targets(x.shape[:-1], c))
    x, xl = avoid_bug_c(x, xl, t, ii)
    weight = data.draw(class_weights(c))
    x64 = f64(x)
    rows, tol, denom = _hard_expectations(x64, t, weight, ii, eps, dtype, path)
    with on_path(path):
        got = fastnll.cross_entropy(
            xl, t_arr, weight=weight, ignore_index=ii, reduction=reduction, label_smoothing=eps
        )
    _check_reduction(got, rows, tol, denom, reduction, dtype, f"cross_entropy[{path}]")


@paths
@PROFILE
@given(case=logits_case(neg_inf=False), data=st.data(), reduction=reductions)
def test_nll_loss(path, case, data, reduction):
    dtype, x, _ = case
    c = x.shape[-1]
    # Log-probabilities rounded to the dtype (<= 0 whatever the rounding).
    lp = ref.log_softmax(f64(x)).astype(dtype)
    kind = data.draw(st.sampled_from(LAYOUTS))
    t_arr, ii, t = data.draw(class_targets(x.shape[:-1], c))
    weight = data.draw(class_weights(c))
    lp64 = f64(lp)
    rows = ref.nll_loss(lp64, t, weight=weight, ignore_index=ii, reduction="none")
    w = np.ones(c) if weight is None else weight
    keep = t != ii
    wt = np.where(keep, w[np.where(keep, t, 0)], 0.0)
    tol = np.where(keep, row_tol(rows, dtype), 0.0)
    with on_path(path):
        got = fastnll.nll_loss(
            layout(lp, kind), t_arr, weight=weight, ignore_index=ii, reduction=reduction
        )
    _check_reduction(got, rows, tol, float(np.sum(wt)), reduction, dtype, f"nll_loss[{path}]")


@st.composite
def probabilities(draw, shape, dtype):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    p = rng.random(shape) + 0.01
    p[rng.random(shape) < draw(st.sampled_from([0.0, 0.3, 0.9]))] = 0.0
    s = p.sum(axis=-1, keepdims=True)
    p = np.where(s > 0, p / np.where(s > 0, s, 1.0), 1.0 / max(shape[-1], 1))
    return p.astype(dtype)


@paths
@PROFILE
@given(case=logits_case(), data=st.data(), reduction=reductions, eps=label_smoothings)
def test_cross_entropy_probability_targets(path, case, data, reduction, eps):
    dtype, x, xl = case
    c = x.shape[-1]
    ydt = data.draw(float_dtypes)
    y = data.draw(probabilities(x.shape, ydt))
    yl = layout(y, data.draw(st.sampled_from(LAYOUTS)))
    weight = data.draw(class_weights(c))
    x64, y64 = f64(x), f64(y)
    rows = ref.cross_entropy(x64, y64, weight=weight, reduction="none", label_smoothing=eps)
    w = np.ones(c) if weight is None else weight
    ys = y64 * (1 - eps) + eps / c
    mass = np.sum(np.abs(w) * np.abs(ys), axis=-1)
    tol = row_tol(rows, dtype, mag=magnitude(x64) * mass, shift_bug=True)
    with on_path(path):
        got = fastnll.cross_entropy(xl, yl, weight=weight, reduction=reduction, label_smoothing=eps)
    n = int(np.prod(x.shape[:-1]))
    _check_reduction(
        got,
        np.asarray(rows).reshape(x.shape[:-1]),
        tol.reshape(x.shape[:-1]),
        float(n),
        reduction,
        dtype,
        f"cross_entropy soft[{path}]",
    )


@paths
@PROFILE
@given(case=logits_case(min_c=1, neg_inf=False), data=st.data(), reduction=reductions)
def test_binary_cross_entropy_with_logits(path, case, data, reduction):
    dtype, x, xl = case
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    ydt = data.draw(float_dtypes)
    ykind = data.draw(st.sampled_from(["probs", "binary", "any"]))
    if ykind == "probs":
        y = rng.random(x.shape)
    elif ykind == "binary":
        y = (rng.random(x.shape) < 0.5).astype(np.float64)
    else:  # PyTorch accepts any target
        y = rng.uniform(-1.0, 2.0, x.shape)
    y = y.astype(ydt)
    yl = layout(y, data.draw(st.sampled_from(LAYOUTS)))
    c = x.shape[-1]
    wkind = data.draw(st.sampled_from(["none", "full", "last", "scalar"]))
    weight = {
        "none": None,
        "full": rng.uniform(0, 2, x.shape),
        "last": rng.uniform(0, 2, c),
        "scalar": np.float64(rng.uniform(0, 2)),
    }[wkind]
    pos_weight = data.draw(st.sampled_from([None, "vec", "scalar"]))
    if pos_weight == "vec":
        pos_weight = rng.uniform(0.1, 5, c)
    elif pos_weight == "scalar":
        pos_weight = float(rng.uniform(0.1, 5))
    x64, y64 = f64(x), f64(y)
    expected = ref.binary_cross_entropy_with_logits(
        x64, y64, weight=weight, pos_weight=pos_weight, reduction="none"
    )
    # PyTorch's form (1 - y) z + (1 + (pw - 1) y) softplus(-z) cancels at large |z|.
    pw = 1.0 if pos_weight is None else np.asarray(pos_weight)
    w = 1.0 if weight is None else np.asarray(weight)
    mag = np.abs(np.where(np.isfinite(x64), x64, 0)) * (np.abs(1 - y64) + np.abs(pw * y64) + 1)
    rtol, atol, _ = tol_params(dtype)
    tol = atol + rtol * np.abs(expected) + 8 * 2.0**-53 * np.abs(w) * mag
    with on_path(path):
        got = fastnll.binary_cross_entropy_with_logits(
            xl, yl, weight=weight, pos_weight=pos_weight, reduction=reduction
        )
    if reduction == "none":
        assert_rows(got, expected, tol, dtype, f"bce[{path}]")
        return
    total = float(np.sum(expected))
    t = float(np.sum(tol)) + 1e-12 * float(np.sum(np.abs(expected)))
    if reduction == "mean":
        n = expected.size
        total, t = (total / n, t / n) if n else (math.nan, 0.0)
    if not np.all(np.isfinite(expected)):
        assert got == total or (math.isnan(got) and math.isnan(total)), (got, total)
        return
    assert_total(got, total, t, f"bce {reduction}[{path}]")


# ------------------------------------------------------------------- logsumexp and softmax


@st.composite
def axes(draw, ndim):
    kind = draw(st.sampled_from(["last", "last", "int", "tuple", "none"]))
    if kind == "last" or ndim == 0:
        return -1
    if kind == "int":
        return draw(st.integers(-ndim, ndim - 1))
    if kind == "none":
        return None
    return tuple(draw(st.sets(st.integers(0, ndim - 1), min_size=1, max_size=ndim)))


@paths
@PROFILE
@given(case=logits_case(min_c=0), data=st.data(), keepdims=st.booleans())
def test_logsumexp(path, case, data, keepdims):
    dtype, x, xl = case
    axis = data.draw(axes(x.ndim))
    x64 = f64(x)
    expected = ref.logsumexp(x64, axis=axis, keepdims=keepdims)
    with on_path(path):
        got = fastnll.logsumexp(xl, axis=axis, keepdims=keepdims)
    got = np.asarray(got)
    assert_rows(got, expected, row_tol(expected, dtype), dtype, f"logsumexp axis={axis}[{path}]")


@paths
@PROFILE
@given(
    case=logits_case(min_c=1, neg_inf=False).filter(lambda c: c[1].size > 0),
    data=st.data(),
    return_sign=st.booleans(),
)
def test_logsumexp_with_b(path, case, data, return_sign):
    """(Empty inputs are left out: fastnll raises on them, reported; see the contract.)"""
    dtype, x, xl = case
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    bkind = data.draw(st.sampled_from(["full", "last", "scalar", "zeros_at_inf"]))
    signed = return_sign and data.draw(st.booleans())
    lo = -1.0 if signed else 0.0
    if bkind == "full":
        b = rng.uniform(lo, 2.0, x.shape)
    elif bkind == "last":
        b = rng.uniform(lo, 2.0, x.shape[-1])
    elif bkind == "scalar":
        b = float(rng.uniform(0.1, 2.0))
    else:  # b = 0 where a is +inf: those entries are left out
        b = rng.uniform(0.1, 2.0, x.shape)
        if x.size:
            x = x.copy()
            hit = rng.random(x.shape) < 0.2
            x[hit] = np.inf
            b[hit] = 0.0
            xl = x
    b = np.where(rng.random(np.shape(b)) < 0.2, 0.0, b) if np.ndim(b) else b
    x64 = f64(x)
    with on_path(path):
        got = fastnll.logsumexp(xl, b=b, return_sign=return_sign)
    bb = np.broadcast_to(np.asarray(b, dtype=np.float64), x64.shape)
    # Condition number of log|sum|: sum |b e^(x-m)| / |sum b e^(x-m)| (1 without signs).
    xm = np.where(bb != 0, x64, -np.inf)
    m = np.max(xm, axis=-1, keepdims=True, initial=-np.inf)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        e = np.where(bb != 0, bb * np.exp(xm - m), 0.0)
        kappa = np.sum(np.abs(e), axis=-1) / np.abs(np.sum(e, axis=-1))
    if return_sign:
        exp_v, exp_s = ref.logsumexp(x64, b=bb, return_sign=True)
        got_v, got_s = (np.asarray(g) for g in got)
        good = np.isfinite(kappa) & (kappa < 1e6)
        assert_rows(
            np.where(good, got_s, 0).astype(got_s.dtype),
            np.where(good, exp_s, 0),
            0.0,
            dtype,
            f"logsumexp sign[{path}]",
        )
        tol = row_tol(exp_v, dtype) * np.where(good, kappa, 1.0)
        assert_rows(
            np.where(good, got_v, 0).astype(got_v.dtype),
            np.where(good, exp_v, 0),
            tol,
            dtype,
            f"logsumexp b value[{path}]",
        )
    else:
        expected = ref.logsumexp(x64, b=bb)
        assert_rows(got, expected, row_tol(expected, dtype), dtype, f"logsumexp b[{path}]")


@paths
@PROFILE
@given(case=logits_case(min_c=1), data=st.data(), log=st.booleans())
def test_softmax_and_log_softmax(path, case, data, log):
    dtype, x, xl = case
    axis = (
        data.draw(st.integers(-max(x.ndim, 1), max(x.ndim, 1) - 1))
        if data.draw(st.booleans())
        else -1
    )
    x64 = f64(x)
    func = "log_softmax" if log else "softmax"
    expected = getattr(ref, func)(x64, axis=axis)
    mag = magnitude(x64, axis=axis, keepdims=True)
    with on_path(path):
        got = getattr(fastnll, func)(xl, axis=axis)
    # softmax = exp(log_softmax): its error is its value times log_softmax's.
    if log:
        tol = row_tol(expected, dtype, mag=mag, shift_bug=True)
    else:
        with np.errstate(invalid="ignore"):
            tol = (
                row_tol(1.0, dtype, mag=mag, shift_bug=True) * np.abs(expected)
                + tol_params(dtype)[1]
            )
    assert_rows(got, expected, tol, dtype, f"{func} axis={axis}[{path}]")


# ---------------------------------------------------------- non-finite values, +inf and NaN


@paths
@PROFILE
@given(data=st.data(), reduction=reductions, eps=label_smoothings)
def test_nan_and_inf_anywhere(path, data, reduction, eps):
    """NaN, +inf and -inf sprinkled anywhere (including ignored rows). fastnll's documented
    policy: lse is NaN if the row holds a NaN, +inf if it holds +inf, -inf if all -inf; the
    losses are then computed from lse (so +inf elsewhere gives a +inf loss, where PyTorch
    gives NaN); an ignored row is 0 whatever it holds."""
    dtype = data.draw(float_dtypes)
    c = data.draw(small_or_large_c())
    lead = data.draw(lead_shapes(c))
    x = data.draw(values(lead + (c,), dtype, neg_inf=False))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    if x.size:
        for v in (np.nan, np.inf, -np.inf):
            x[rng.random(x.shape) < data.draw(st.sampled_from([0.0, 0.01, 0.1]))] = v
    xl = layout(x, data.draw(st.sampled_from(LAYOUTS)))
    t_arr, ii, t = data.draw(class_targets(lead, c))
    x, xl = avoid_bug_c(x, xl, t, ii)
    weight = data.draw(class_weights(c))
    x64 = f64(x)
    lse = np.asarray(ref.logsumexp(x64))
    w = np.ones(c) if weight is None else weight
    keep = t != ii
    tt = np.where(keep, t, 0)
    xt = np.take_along_axis(x64, tt[..., None], axis=-1)[..., 0] if x64.size else np.zeros(lead)
    wt = np.where(keep, w[tt], 0.0)
    with np.errstate(invalid="ignore", over="ignore"):
        rows = wt * (lse - xt)
        if eps > 0:
            smooth = np.sum(np.where(w != 0, w * (lse[..., None] - x64), 0.0), axis=-1)
            rows = (1 - eps) * rows + eps / c * smooth
    rows = np.where(keep, rows, 0.0)
    mass = np.abs(wt) * (1 - eps) + (eps / c) * np.sum(np.abs(w))
    tol = np.where(
        keep,
        row_tol(
            rows,
            dtype,
            mag=magnitude(x64) * mass,
            shift_bug=True,
            path=path,
            classes=c,
            smoothing_bug=smoothing_eps(eps, weight, dtype),
        ),
        0.0,
    )
    with on_path(path):
        got_lse = fastnll.logsumexp(xl)
        got = fastnll.cross_entropy(
            xl, t_arr, weight=weight, ignore_index=ii, reduction=reduction, label_smoothing=eps
        )
    assert_rows(got_lse, lse, row_tol(lse, dtype), dtype, f"lse[{path}]")
    _check_reduction(
        got, rows, tol, float(np.sum(wt)), reduction, dtype, f"cross_entropy non-finite[{path}]"
    )


# -------------------------------------------------------- accuracy of float64 at large offsets


@paths
def test_float64_offset_logits_accurate_relative_to_the_loss(path):
    """The float64 reference of the same inputs is accurate to ~1e-16 relative to the loss
    whatever the offset (PyTorch computes (x - m) - ln s); fastnll's float64 results should be
    within 1e-12 of it, as the README says."""
    x = np.array([[1e6, 1e6, 1e6 - 1.0], [1e15, 1e15, 1e15 - 1.0]])
    t = np.array([0, 0])
    with on_path(path):
        ce = fastnll.cross_entropy(x, t, reduction="none")
        lsm = fastnll.log_softmax(x)
        sm = fastnll.softmax(x)
    np.testing.assert_allclose(ce, ref.cross_entropy(x, t, reduction="none"), rtol=1e-12)
    np.testing.assert_allclose(lsm, ref.log_softmax(x), rtol=1e-12)
    np.testing.assert_allclose(sm, ref.softmax(x), rtol=1e-12)


@paths
def test_float32_label_smoothing_at_large_offsets(path):
    """Label smoothing of float32 logits 1e6 + N(0, 3): the reference (float64, same inputs)
    is ~12.3 for C = 4096; fastnll must be within rtol 2e-6 of it, as without smoothing."""
    rng = np.random.default_rng(0)
    for c in (8, 40, 4096):
        x = (1e6 + rng.standard_normal((4, c)) * 3).astype(np.float32)
        t = np.arange(4) % c
        with on_path(path):
            got = fastnll.cross_entropy(x, t, label_smoothing=1.0, reduction="none")
        np.testing.assert_allclose(
            got,
            ref.cross_entropy(f64(x), t, label_smoothing=1.0, reduction="none"),
            rtol=2e-6,
            atol=2e-5,
        )


@paths
def test_ignored_row_with_neg_inf_in_column_0(request, path):
    """An ignored row gives 0 whatever it holds: here -inf in column 0, alone in an otherwise
    clean batch (the short-row kernels gather column 0 for ignored lanes; 0 * inf = NaN)."""
    for c in (3, 16, 32):
        x = np.zeros((64, c), np.float32)
        x[21, 0] = -np.inf
        t = np.ones(64, np.int64)
        t[21] = -100
        with on_path(path):
            rows = fastnll.cross_entropy(x, t, reduction="none")
            mean = fastnll.cross_entropy(x, t)
        assert rows[21] == 0.0 and mean == pytest.approx(math.log(c)), (c, rows[21], mean)


def test_thorough_budget():
    """The thorough profile runs >= 100,000 examples over the property tests of this file."""
    n = sum(
        1 for name, f in globals().items() if name.startswith("test_") and hasattr(f, "hypothesis")
    )
    assert n == N_TESTS, n
    assert THOROUGH_EXAMPLES * N_TESTS * len(PATHS) >= 100_000
