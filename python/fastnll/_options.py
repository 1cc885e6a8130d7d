"""One way to check options across the API (losses, evaluate, compare, Evaluator, CLI):
integers are Python/NumPy integers but never bool or float, and every size a user can ask
for has a bound that the message states with its reason."""

from __future__ import annotations

import operator
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "MAX_BINS",
    "MAX_CHUNK_BYTES",
    "MAX_TOP_K",
    "MAX_TOP_K_VALUES",
    "check_bool",
    "check_chunk_bytes",
    "check_ignore_index",
    "check_int",
    "check_n_bins",
    "check_top_k",
]

INT64 = (-(2**63), 2**63 - 1)
MAX_BINS = 10_000
MAX_TOP_K = 2**31 - 1
MAX_TOP_K_VALUES = 64
MAX_CHUNK_BYTES = 1 << 40

BINS_WHY = (
    "each bin is a line of the report and of its JSON, and more bins than rows "
    "leave most of them empty"
)
TOP_K_WHY = "k at or above the number of classes always scores 1.0"


def check_int(name: str, value: Any, lo: int, hi: int, why: str = "") -> int:
    """``value`` as an int in [lo, hi]: TypeError for bool, float, str...; ValueError (with
    the bound and ``why``) outside the range."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None
    if not lo <= v <= hi:
        if (lo, hi) == INT64:
            raise ValueError(f"{name} {v} does not fit in int64")
        reason = f" ({why})" if why else ""
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {v}{reason}")
    return v


def check_bool(name: str, value: Any) -> bool:
    """True/False (NumPy bools too); anything else is a TypeError."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r}")


def check_ignore_index(value: Any) -> int:
    """An int64 class index (bool is not one)."""
    return check_int("ignore_index", value, *INT64)


def check_top_k(top_k: Any) -> tuple[int, ...]:
    """Sorted distinct k values from a sequence of integers (or one integer)."""
    if isinstance(top_k, (str, bytes)) or not isinstance(top_k, (Sequence, np.ndarray)):
        if isinstance(top_k, (int, np.integer)) and not isinstance(top_k, (bool, np.bool_)):
            top_k = (top_k,)
        else:
            raise TypeError(f"top_k must be a sequence of integers, got {top_k!r}")
    ks = tuple(sorted({check_int("top_k value", k, 1, MAX_TOP_K, TOP_K_WHY) for k in top_k}))
    if not ks:
        raise ValueError("top_k must hold at least one value")
    if len(ks) > MAX_TOP_K_VALUES:
        raise ValueError(
            f"top_k may hold at most {MAX_TOP_K_VALUES} distinct values, got "
            f"{len(ks)} (one counter per value)"
        )
    return ks


def check_n_bins(value: Any) -> int:
    """Calibration bins: an integer in [1, MAX_BINS]."""
    return check_int("n_bins", value, 1, MAX_BINS, BINS_WHY)


def check_chunk_bytes(value: Any) -> int:
    """Bytes per chunk: an integer in [1, 1 TiB]."""
    return check_int("chunk_bytes", value, 1, MAX_CHUNK_BYTES, "a chunk is read at once")


def check_per_row(value: Any) -> Any:
    """False/None, True, or a path (str or os.PathLike)."""
    if value is None or isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (str, os.PathLike)):
        return value
    raise TypeError(f"per_row must be True, False or a file path, got {value!r}")
