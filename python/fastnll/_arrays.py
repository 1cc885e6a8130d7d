"""Turn user inputs into the (array, tag, swap) triples the Rust core reads in place.

The core reads any strides (negative, zero, Fortran order), misaligned and byte-swapped data
directly, so nothing here copies a float array: bfloat16 and byte-swapped arrays are *views*.
Tensors of other libraries (torch, JAX, ...) are read in place through DLPack (``_dlpack``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._bf16 import is_bf16
from ._dlpack import from_dlpack, is_dlpack

ACCEPTED = "float32, float64, float16, bfloat16 (ml_dtypes)"

_STORAGE = {"f32": np.float32, "f64": np.float64, "f16": np.uint16, "bf16": np.uint16}

_TAGS = {
    np.dtype(np.float32): "f32",
    np.dtype(np.float64): "f64",
    np.dtype(np.float16): "f16",
}


def float_tag(dt: np.dtype) -> str | None:
    """Core tag of a floating dtype regardless of byte order, or None if unsupported."""
    native = dt.newbyteorder("=")
    if is_bf16(native):
        return "bf16"
    return _TAGS.get(native)


def as_float_array(x: Any, name: str = "input") -> np.ndarray:
    """np.asarray without copying arrays or CPU tensors (DLPack); lists become float64 (as
    torch.tensor would not, but NumPy does). Raises TypeError naming the accepted dtypes."""
    if isinstance(x, np.ndarray):
        arr = x
    elif is_dlpack(x):
        arr = from_dlpack(x, name)
    else:
        try:
            arr = np.asarray(x)
        except (ValueError, TypeError) as exc:
            raise TypeError(f"{name} could not be converted to an array: {exc}") from None
        if arr.dtype.kind in "iub" and not hasattr(x, "dtype"):
            arr = arr.astype(np.float64)
    if float_tag(arr.dtype) is None:
        raise TypeError(f"{name} has dtype {arr.dtype}; accepted dtypes: {ACCEPTED}")
    return arr


def core_view(arr: np.ndarray) -> tuple[np.ndarray, str, bool]:
    """(view, tag, swap): a native-order view the binding can take, with the core tag and
    whether the bytes must be swapped when read. No data is copied."""
    dt = arr.dtype
    tag = float_tag(dt)
    if tag is None:
        raise TypeError(f"dtype {dt} is not supported; accepted dtypes: {ACCEPTED}")
    swap = not dt.isnative
    # Same itemsize, so .view() reinterprets bytes for any strides: no copy.
    view = arr.view(_STORAGE[tag])
    return view, tag, swap


def as_target_array(t: Any, name: str = "target") -> np.ndarray:
    """Integer class targets as an array of native byte order (a copy only if byte-swapped or
    misaligned; targets are small next to the logits)."""
    arr = as_array(t, name)
    if arr.dtype.kind not in "iu":
        if arr.size == 0 and arr.dtype.kind == "f" and not isinstance(t, np.ndarray):
            arr = arr.astype(np.int64)  # an empty list
        else:
            raise TypeError(
                f"{name} must hold integer class indices (int8 ... uint64), got dtype {arr.dtype}"
            )
    if not arr.dtype.isnative or not arr.flags.aligned:
        arr = arr.astype(arr.dtype.newbyteorder("="), copy=True)
    return arr


def as_array(x: Any, name: str = "input") -> np.ndarray:
    """Any array-like as a NumPy array, without copying arrays or CPU tensors (DLPack): for
    arguments whose dtype is checked by the caller (targets, weights)."""
    if isinstance(x, np.ndarray):
        return x
    if is_dlpack(x):
        return from_dlpack(x, name)
    return np.asarray(x)


def tensor_in(x: Any, name: str) -> Any:
    """A DLPack tensor as a NumPy view (named in errors); anything else as it is."""
    return from_dlpack(x, name) if is_dlpack(x) else x
