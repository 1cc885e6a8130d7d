"""Packaging facts the wheel relies on: the version comes from the package metadata (one
version, Cargo.toml's), the stable ABI for CPython >= 3.10 is turned on for maturin."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest

import fastnll

ROOT = Path(__file__).resolve().parent.parent


def test_version_is_the_metadata_version() -> None:
    assert fastnll.__version__ == importlib.metadata.version("fastnll")
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", fastnll.__version__)


def test_version_is_cargos() -> None:
    cargo = ROOT / "Cargo.toml"
    if not cargo.exists():
        pytest.skip("run from outside the source tree (the wheel test): no Cargo.toml")
    m = re.search(r'^version = "([^"]+)"', cargo.read_text(), re.MULTILINE)
    assert m and fastnll.__version__ == m.group(1)


def test_abi3_and_python_floor() -> None:
    meta = importlib.metadata.metadata("fastnll")
    assert meta["Requires-Python"] == ">=3.10"
    py = ROOT / "pyproject.toml"
    text = py.read_text()
    features = re.search(
        r"^\[tool\.maturin\][^\[]*?^features = (\[[^\]]*\])", text, re.MULTILINE | re.DOTALL
    )
    assert features and '"pyo3/abi3-py310"' in features.group(1)
    assert "peers" in (meta.get_all("Provides-Extra") or [])


def test_import_does_not_load_ml_dtypes_until_a_bfloat16_file_needs_it(tmp_path: Path) -> None:
    """``import ml_dtypes`` takes about a second (0.7 with NumPy 2.4): every CLI call paid it.
    A fresh interpreter imports fastnll without it, then reads a bfloat16 .npy (stored as
    opaque '|V2') and a bfloat16 .safetensors file, loading it on demand, and scores them as
    this process does."""
    import json
    import subprocess
    import sys

    import ml_dtypes
    import numpy as np

    g = np.random.default_rng(0)
    x = g.normal(size=(300, 7)).astype(ml_dtypes.bfloat16)
    t = g.integers(0, 7, 300)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "t.npy", t)
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    safetensors_numpy.save_file({"logits": x, "target": t}, str(tmp_path / "d.safetensors"))
    # the float64 reference of the same bfloat16 values
    x64 = x.astype(np.float64)
    lse = np.log(np.exp(x64 - x64.max(1, keepdims=True)).sum(1)) + x64.max(1)
    ref = float(np.mean(lse - x64[np.arange(300), t]))
    code = (
        "import sys, json, fastnll\n"
        "before = 'ml_dtypes' in sys.modules\n"
        f"a = fastnll.evaluate({str(tmp_path / 'x.npy')!r}, {str(tmp_path / 't.npy')!r})\n"
        f"b = fastnll.evaluate({str(tmp_path / 'd.safetensors') + ':logits'!r}, "
        f"{str(tmp_path / 'd.safetensors') + ':target'!r})\n"
        "print(json.dumps([before, a.mean_nll, b.mean_nll]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    before, a, b = json.loads(out.strip().splitlines()[-1])
    assert before is False
    assert a == pytest.approx(ref, rel=1e-6)
    assert b == pytest.approx(ref, rel=1e-6)
