"""Shared fixtures and helpers for the fastnll loss test suite.

Expected values never come from fastnll itself: they come from ``tests/reference.py`` (plain
float64 NumPy), SciPy or PyTorch.
"""

from __future__ import annotations

import os
import zlib

import ml_dtypes
import numpy as np
import pytest

#: The libraries the reference tests compare against (the ``[peers]`` and ``[test]`` extras).
PEERS = frozenset(
    {
        "torch",
        "sklearn",
        "torchmetrics",
        "safetensors",
        "matplotlib",
        "scipy",
        "jax",
        "psutil",
        "hypothesis",
    }
)

if os.environ.get("FASTNLL_REQUIRE_PEERS") == "1":
    # CI: a peer test must run, not skip. pytest.importorskip of a peer fails instead (at
    # collection for module-level imports), so a missing install cannot pass unnoticed.
    _importorskip = pytest.importorskip

    def _require_peer(modname: str, *args, **kwargs):
        try:
            return _importorskip(modname, *args, **kwargs)
        except pytest.skip.Exception as exc:
            if modname.split(".")[0] not in PEERS:
                raise
            pytest.fail(
                f"FASTNLL_REQUIRE_PEERS=1 but peer {modname!r} is missing ({exc}); "
                "install it: pip install '.[test,peers]'",
                pytrace=False,
            )

    pytest.importorskip = _require_peer

BF16 = np.dtype(ml_dtypes.bfloat16)

#: Every logits dtype fastnll accepts.
FLOAT_DTYPES = [np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16), BF16]
FLOAT_IDS = ["f32", "f64", "f16", "bf16"]

#: Every integer dtype accepted for class targets.
INT_DTYPES = [
    np.dtype(t)
    for t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)
]
INT_IDS = [d.name for d in INT_DTYPES]

#: Class counts exercised everywhere (around SIMD widths 8/16/32 and a large odd one).
CLASS_COUNTS = [1, 2, 3, 7, 8, 15, 16, 17, 31, 33, 100, 1000, 4099]

REDUCTIONS = ["none", "sum", "mean"]

# Per-element tolerances required by the spec.
RTOL_32, ATOL_32 = 2e-6, 2e-5
RTOL_64, ATOL_64 = 1e-12, 1e-12


def is_float64(dtype) -> bool:
    return np.dtype(dtype) == np.float64


def out_dtype(dtype) -> np.dtype:
    """Result dtype of the element-wise / per-row outputs for a given input dtype."""
    return np.dtype(np.float64) if is_float64(dtype) else np.dtype(np.float32)


def tolerances(dtype):
    """(rtol, atol) for per-row results computed from inputs of `dtype`."""
    return (RTOL_64, ATOL_64) if is_float64(dtype) else (RTOL_32, ATOL_32)


def f64(x) -> np.ndarray:
    """Exact float64 copy of an array of any accepted dtype (bfloat16 included)."""
    return np.asarray(x).astype(np.float64)


def assert_close(got, ref, dtype, *, check_dtype=True, atol_scale=1.0, err_msg=""):
    """Per-element comparison of a fastnll array result with a float64 reference."""
    got_arr = np.asarray(got)
    ref_arr = np.asarray(ref, dtype=np.float64)
    if check_dtype:
        assert got_arr.dtype == out_dtype(dtype), (got_arr.dtype, out_dtype(dtype))
    assert got_arr.shape == ref_arr.shape, (got_arr.shape, ref_arr.shape)
    rtol, atol = tolerances(dtype)
    np.testing.assert_allclose(
        got_arr.astype(np.float64),
        ref_arr,
        rtol=rtol,
        atol=atol * atol_scale,
        equal_nan=True,
        err_msg=err_msg,
    )


def assert_reduced(got, ref, dtype, reduction, *, n_rows, denom_scale=1.0):
    """Compare a "sum"/"mean" result (a Python float) with the float64 reference.

    Per-row results of non-negative losses are allowed rtol*|row| + atol; summed, that is
    rtol*|sum| + atol*n_rows. For the mean the atol part is divided by the denominator, which
    is at least n_rows/denom_scale (denom_scale = 1/min(weight) for weighted means).
    """
    assert isinstance(got, float), type(got)
    rtol, atol = tolerances(dtype)
    ref = float(ref)
    if np.isnan(ref):
        assert np.isnan(got), got
        return
    if np.isinf(ref):
        assert got == ref, (got, ref)
        return
    if reduction == "sum":
        tol = rtol * abs(ref) + atol * max(n_rows, 1)
    else:
        tol = rtol * abs(ref) + atol * denom_scale
    assert abs(got - ref) <= tol, f"got {got!r}, expected {ref!r} (tol {tol:.3g})"


def check_loss(got, ref, dtype, reduction, *, n_rows, denom_scale=1.0, check_dtype=True):
    """Dispatch on the reduction: arrays for "none", Python floats otherwise."""
    if reduction == "none":
        assert isinstance(got, np.ndarray), type(got)
        assert_close(got, ref, dtype, check_dtype=check_dtype)
    else:
        assert_reduced(got, ref, dtype, reduction, n_rows=n_rows, denom_scale=denom_scale)


def make_logits(rng, shape, dtype, scale=3.0) -> np.ndarray:
    """Random normal logits rounded to `dtype` (the reference then uses the rounded values)."""
    return (rng.standard_normal(shape) * scale).astype(dtype)


def make_targets(rng, shape, n_classes, dtype=np.int64, ignore_index=None, frac_ignored=0.25):
    t = rng.integers(0, max(n_classes, 1), size=shape).astype(np.int64)
    if ignore_index is not None:
        t[rng.random(shape) < frac_ignored] = ignore_index
    return t.astype(dtype)


def soft_dtype(dtype) -> np.dtype:
    """Soft-target dtype for tests that are not about the target dtype: float32 for bfloat16
    logits, so that bfloat16 *targets* are exercised by their own dedicated tests only."""
    return np.dtype(np.float32) if np.dtype(dtype) == BF16 else np.dtype(dtype)


def make_soft_targets(rng, shape, dtype=np.float64, zero_frac=0.3) -> np.ndarray:
    """Rows of probabilities (some exactly zero) over the last axis."""
    p = rng.random(shape) + 0.05
    p[rng.random(shape) < zero_frac] = 0.0
    s = p.sum(axis=-1, keepdims=True)
    p = np.where(s > 0, p / np.where(s > 0, s, 1.0), 1.0 / max(shape[-1], 1))
    return p.astype(dtype)


@pytest.fixture
def rng(request):
    """A generator seeded from the test's node id: reproducible, but different per test."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(params=FLOAT_DTYPES, ids=FLOAT_IDS)
def dtype(request):
    return request.param


@pytest.fixture(params=REDUCTIONS)
def reduction(request):
    return request.param


@pytest.fixture(autouse=True)
def _simd_settings_restored():
    """Every test leaves the process-wide SIMD path and short-row scheme as it found them: the
    test command pins a path per run (FASTNLL_SIMD), and a test that switched paths and
    restored another one would run every later test, and compare them with subprocesses and
    Dask workers, on the wrong path."""
    import fastnll
    from fastnll import _core

    before = (fastnll.simd_path(), _core.short_scheme())
    yield
    after = (fastnll.simd_path(), _core.short_scheme())
    assert after == before, f"the test left the SIMD settings at {after}, was {before}"
