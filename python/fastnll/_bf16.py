"""ml_dtypes' bfloat16 dtype, imported on first use: ``import ml_dtypes`` takes about a second
(ml_dtypes 0.7 with NumPy 2.4), which every ``fastnll`` command paid at startup. An array that
already holds bfloat16 means ml_dtypes is loaded, so only readers creating bfloat16 views
(.safetensors / .npy files, DLPack tensors, a ``dtype="bfloat16"`` option) import it."""

from __future__ import annotations

import functools

import numpy as np


@functools.cache
def bf16() -> np.dtype | None:
    """The bfloat16 dtype, or None without ml_dtypes (a dependency: not expected)."""
    try:
        import ml_dtypes
    except ImportError:  # pragma: no cover - ml_dtypes is a dependency
        return None
    dt: np.dtype = np.dtype(ml_dtypes.bfloat16)
    return dt


def is_bf16(dt: np.dtype) -> bool:
    """Whether dt (native byte order) is bfloat16, without importing ml_dtypes for any other
    dtype (bfloat16 is a 2-byte 'V' kind dtype named bfloat16)."""
    if dt.kind != "V" or dt.itemsize != 2 or dt.names is not None or dt.name != "bfloat16":
        return False
    b = bf16()
    return b is not None and dt == b
