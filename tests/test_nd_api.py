"""The Rust ndarray API (src/nd.rs, tested by tests/nd_api.rs) and the Python package give the
same results on the same inputs.

``tests/nd_expected.txt`` holds a small fixed case (logits exactly representable in float16
and bfloat16, targets with an ignored row) and its float64 NumPy reference (``reference.py``).
The Rust test reads the file and checks the ndarray API on C-order, Fortran-order, sliced and
transposed views of every dtype against it; this test checks that the file is the reference
(not stale) and that the Python functions match it with the same tolerances.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import fastnll
import reference as ref
from conftest import BF16

FILE = Path(__file__).with_name("nd_expected.txt")
N, C = 6, 5


def case() -> dict[str, np.ndarray]:
    """The inputs: multiples of 1/4 in [-4, 4] (exact in every accepted dtype)."""
    i = np.arange(N * C)
    k = (5 * i * i + 13 * i) % 33 - 16
    x = (k / 4.0).reshape(N, C)
    t = np.array([0, 4, -100, 2, 1, 3], dtype=np.int64)
    return {"logits": x, "target": t}


def expected() -> dict[str, np.ndarray]:
    c = case()
    x, t = c["logits"], c["target"]
    lp = ref.log_softmax(x)
    return {
        **c,
        "ce_rows": ref.cross_entropy(x, t, reduction="none"),
        "ce_mean": np.array([ref.cross_entropy(x, t)]),
        "ce_smooth_sum": np.array([ref.cross_entropy(x, t, reduction="sum", label_smoothing=0.1)]),
        "nll_rows": ref.nll_loss(lp, t, reduction="none"),
        "lse": ref.logsumexp(x, axis=-1),
        "log_softmax": lp.reshape(-1),
        "softmax": ref.softmax(x).reshape(-1),
    }


def read() -> dict[str, np.ndarray]:
    out = {}
    for line in FILE.read_text().splitlines():
        if line and not line.startswith("#"):
            name, *vals = line.split()
            out[name] = np.array([float(v) for v in vals])
    return out


def write() -> None:
    head = "# name values... (float64 reference of tests/test_nd_api.py; regenerate: python tests/test_nd_api.py)"
    lines: list[str] = [head]
    for name, v in expected().items():
        lines.append(" ".join([name] + [repr(float(e)) for e in np.ravel(v)]))
    FILE.write_text("\n".join(lines) + "\n")


def test_file_is_the_float64_reference() -> None:
    got, want = read(), expected()
    assert sorted(got) == sorted(want)
    for name, v in want.items():
        np.testing.assert_array_equal(got[name], np.ravel(v).astype(np.float64), err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, BF16])
def test_python_matches_the_file(dtype: np.dtype) -> None:
    e = read()
    x = e["logits"].reshape(N, C).astype(dtype)
    t = e["target"].astype(np.int64)
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == np.float64 else {"rtol": 2e-6, "atol": 2e-5}
    np.testing.assert_allclose(fastnll.cross_entropy(x, t, reduction="none"), e["ce_rows"], **tol)
    np.testing.assert_allclose(fastnll.cross_entropy(x, t), e["ce_mean"][0], **tol)
    np.testing.assert_allclose(
        fastnll.cross_entropy(x, t, reduction="sum", label_smoothing=0.1),
        e["ce_smooth_sum"][0],
        **tol,
    )
    lp = fastnll.log_softmax(x)
    np.testing.assert_allclose(lp.reshape(-1), e["log_softmax"], **tol)
    np.testing.assert_allclose(fastnll.softmax(x).reshape(-1), e["softmax"], **tol)
    np.testing.assert_allclose(fastnll.logsumexp(x), e["lse"], **tol)
    np.testing.assert_allclose(
        fastnll.nll_loss(e["log_softmax"].reshape(N, C), t, reduction="none"),
        e["nll_rows"],
        rtol=1e-12,
        atol=1e-12,
    )


if __name__ == "__main__":
    write()
