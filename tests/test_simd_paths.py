"""The SIMD path can be forced, and every available path gives the float64 reference's answer."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import fastnll
import reference as ref


def test_env_var_selects_the_path_in_use():
    want = os.environ.get("FASTNLL_SIMD")
    if want:
        assert fastnll.simd_path() == want
    assert fastnll.simd_path() in fastnll.available_simd_paths()
    assert "scalar" in fastnll.available_simd_paths()


@pytest.mark.parametrize("path", ["scalar", "avx2", "avx512", "neon"])
def test_forced_path_in_subprocess(path):
    if path not in fastnll.available_simd_paths():
        pytest.skip(f"{path} not available on this CPU")
    code = "import fastnll; print(fastnll.simd_path())"
    env = dict(os.environ, FASTNLL_SIMD=path)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == path


def test_unknown_env_value_warns_and_falls_back():
    env = dict(os.environ, FASTNLL_SIMD="sse9")
    code = "import warnings, fastnll; print(fastnll.simd_path())"
    out = subprocess.run(
        [sys.executable, "-W", "always", "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "sse9" in out.stderr
    assert out.stdout.strip() in ("scalar", "avx2", "avx512", "neon")


def test_set_simd_path_rejects_unknown():
    with pytest.raises(ValueError, match="unknown SIMD path"):
        fastnll.set_simd_path("mmx")


@pytest.mark.parametrize(
    "C", [1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 4095, 4096, 4097, 70000]
)
def test_every_path_matches_reference(C):
    rng = np.random.default_rng(C)
    n = 40 if C < 10000 else 3
    x = (rng.standard_normal((n, C)) * 4).astype(np.float32)
    t = rng.integers(0, C, n)
    ref_lse = ref.logsumexp(x.astype(np.float64), axis=-1)
    ref_ce = ref.cross_entropy(x.astype(np.float64), t, reduction="none")
    before = fastnll.simd_path()
    try:
        for p in fastnll.available_simd_paths():
            fastnll.set_simd_path(p)
            np.testing.assert_allclose(
                fastnll.logsumexp(x), ref_lse, rtol=2e-6, atol=2e-5, err_msg=p
            )
            np.testing.assert_allclose(
                fastnll.cross_entropy(x, t, reduction="none"),
                ref_ce,
                rtol=2e-6,
                atol=2e-5,
                err_msg=p,
            )
    finally:
        fastnll.set_simd_path(before)
