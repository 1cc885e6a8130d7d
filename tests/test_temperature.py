"""fastnll.fit_temperature against float64 NumPy / SciPy references."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

import fastnll


def nll64(z: np.ndarray, t: np.ndarray, temp: float) -> float:
    """float64 mean NLL of softmax(z / T)."""
    u = z.astype(np.float64) / temp
    lse = np.logaddexp.reduce(u, axis=1)
    return float(np.mean(lse - u[np.arange(t.size), t]))


def ece64(z: np.ndarray, t: np.ndarray, temp: float, n_bins: int = 15) -> float:
    u = z.astype(np.float64) / temp
    p = np.exp(u - np.logaddexp.reduce(u, axis=1, keepdims=True))
    conf = p.max(1)
    correct = (u >= u[np.arange(t.size), t][:, None]).sum(1) == 1  # ties count (none here)
    b = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for i in range(n_bins):
        m = b == i
        if m.any():
            ece += m.sum() / t.size * abs(correct[m].mean() - conf[m].mean())
    return ece


def synthetic(rng: np.random.Generator, n: int, c: int, temp: float):
    """Logits z and targets drawn from softmax(z / temp): the MLE temperature is ~temp."""
    z = rng.standard_normal((n, c)) * 3.0
    u = z / temp
    p = np.exp(u - np.logaddexp.reduce(u, axis=1, keepdims=True))
    t = np.minimum((p.cumsum(1) < rng.random((n, 1))).sum(1), c - 1)
    return z.astype(np.float32), t


@pytest.mark.parametrize("temp", [0.6, 1.7, 3.0])
def test_recovers_known_temperature_within_1_percent(temp: float) -> None:
    z, t = synthetic(np.random.default_rng(int(temp * 10)), 60000, 20, temp)
    fit = fastnll.fit_temperature(z, t, chunk_bytes=1 << 20)
    assert fit.converged and abs(fit.temperature / temp - 1) < 0.01
    assert fit.nll_after <= fit.nll_before


def test_nll_and_ece_match_float64_reference_and_scipy_minimum() -> None:
    scipy_opt = pytest.importorskip("scipy.optimize")
    z, t = synthetic(np.random.default_rng(1), 8000, 37, 2.2)
    t[::50] = -100
    fit = fastnll.fit_temperature(z, t, chunk_bytes=40_000)
    keep = t != -100
    zz, tt = z[keep], t[keep]
    ref = scipy_opt.minimize_scalar(
        lambda T: nll64(zz, tt, T), bounds=(0.1, 10), method="bounded", options={"xatol": 1e-9}
    )
    assert fit.temperature == pytest.approx(ref.x, rel=1e-4)
    assert fit.nll_before == pytest.approx(nll64(zz, tt, 1.0), rel=1e-6)
    assert fit.nll_after == pytest.approx(nll64(zz, tt, fit.temperature), rel=1e-6)
    assert fit.ece_before == pytest.approx(ece64(zz, tt, 1.0), abs=1e-6)
    assert fit.ece_after == pytest.approx(ece64(zz, tt, fit.temperature), abs=1e-5)
    assert fit.rows == keep.sum() and fit.ece_after < fit.ece_before


def test_bfloat16_3d_and_paths(tmp_path) -> None:
    z, t = synthetic(np.random.default_rng(2), 6000, 16, 0.8)
    zb = z.astype(ml_dtypes.bfloat16).reshape(20, 300, 16)
    np.save(tmp_path / "z.npy", zb)
    np.save(tmp_path / "t.npy", t.reshape(20, 300))
    fit = fastnll.fit_temperature(tmp_path / "z.npy", tmp_path / "t.npy")
    zf = zb.astype(np.float64).reshape(-1, 16)
    ref = min((nll64(zf, t, T), T) for T in np.linspace(0.7, 0.9, 201))[1]
    assert fit.temperature == pytest.approx(ref, abs=1.5e-3)
    assert fit.nll_after == pytest.approx(nll64(zf, t, fit.temperature), rel=1e-5)


def test_errors_are_clear() -> None:
    z = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="no scored rows"):
        fastnll.fit_temperature(z, np.full(4, -100))
    with pytest.raises(ValueError, match="kind='logits' or 'log_probs'"):
        fastnll.fit_temperature(z, np.zeros(4, int), kind="probs")
    with pytest.raises(IndexError, match="target 7"):
        fastnll.fit_temperature(z, np.array([0, 1, 7, 2]))
    rng = np.random.default_rng(9)
    noise = rng.standard_normal((3000, 8)).astype(np.float32) * 3
    y = rng.integers(0, 8, 3000)
    y = np.where((noise[np.arange(3000), y] > 0), (y + 1) % 8, y)  # targets shun the logits
    with pytest.raises(ValueError, match="T -> infinity"):
        fastnll.fit_temperature(noise, y)
    perfect = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]] * 5
    with pytest.raises(ValueError, match="no finite temperature"):
        fastnll.fit_temperature(perfect, np.array([0, 1, 2, 0]))


def test_cli_fit_temperature(tmp_path) -> None:
    import json

    from fastnll.cli import main

    z, t = synthetic(np.random.default_rng(3), 5000, 10, 2.0)
    np.save(tmp_path / "z.npy", z)
    np.save(tmp_path / "t.npy", t)
    code = main(
        [
            "eval",
            str(tmp_path / "z.npy"),
            str(tmp_path / "t.npy"),
            "--fit-temperature",
            "--no-progress",
            "--json",
            str(tmp_path / "r.json"),
        ]
    )
    assert code == 0
    d = json.loads((tmp_path / "r.json").read_text())["temperature"]
    assert math.isclose(d["temperature"], 2.0, rel_tol=0.03) and d["nll_after"] < d["nll_before"]


def test_matches_sklearn_temperature_scaling() -> None:
    """sklearn >= 1.8: CalibratedClassifierCV(method="temperature") on the same logits (a frozen
    identity estimator whose decision_function is the logits) fits beta_ = 1/T."""
    calibration = pytest.importorskip("sklearn.calibration")
    frozen = pytest.importorskip("sklearn.frozen")
    from sklearn.base import BaseEstimator, ClassifierMixin

    class Identity(ClassifierMixin, BaseEstimator):
        def fit(self, X, y):
            self.classes_ = np.unique(y)
            return self

        def decision_function(self, X):
            return X

        def predict(self, X):
            return np.argmax(X, axis=1)

    z, t = synthetic(np.random.default_rng(4), 20000, 10, 1.7)
    z64 = z.astype(np.float64)
    try:
        cal = calibration.CalibratedClassifierCV(
            frozen.FrozenEstimator(Identity().fit(z64, t)), method="temperature"
        ).fit(z64, t)
    except ValueError as exc:  # sklearn < 1.8: InvalidParameterError for method
        if "method" in str(exc):
            pytest.skip("this sklearn has no method='temperature'")
        raise
    beta = cal.calibrated_classifiers_[0].calibrators[0].beta_
    assert fastnll.fit_temperature(z, t).temperature == pytest.approx(1 / beta, rel=1e-4)
