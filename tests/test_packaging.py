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
