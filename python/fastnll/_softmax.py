"""logsumexp (SciPy's semantics), log_softmax and softmax (PyTorch's), on any axis."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _core
from ._arrays import as_array, as_float_array, core_view, float_tag

Axis = None | int | Sequence[int]


def _out_dtype(x: np.ndarray) -> type:
    return np.float64 if float_tag(x.dtype) == "f64" else np.float32


def _norm_axes(axis: Axis, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    axes = tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)
    out = []
    for a in axes:
        try:
            a = operator.index(a)
        except TypeError:
            raise TypeError(
                f"axis must be an integer, a tuple of integers or None, got {axis!r}"
            ) from None
        if not -ndim <= a < ndim:
            raise np.exceptions.AxisError(
                f"axis {a} is out of bounds for array of dimension {ndim}"
            )
        out.append(a % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"repeated axis in {axis!r}")
    return tuple(out)


def _lse_last(x: np.ndarray, dtype: type) -> np.ndarray:
    """logsumexp over the last axis of x (any strides), into a new array of `dtype`."""
    out: np.ndarray = np.empty(x.shape[:-1], dtype=dtype)
    view, tag, swap = core_view(x)
    _core.logsumexp(view, tag, swap, out.reshape(-1))
    return out


def logsumexp(
    a: Any,
    axis: Axis = -1,
    b: Any | None = None,
    keepdims: bool = False,
    return_sign: bool = False,
) -> Any:
    """``log(sum(b * exp(a)))`` over ``axis``, as ``scipy.special.logsumexp``.

    ``axis`` is an int, a tuple of ints, or None (all elements); the default is the last axis
    (SciPy's default is None). ``b`` broadcasts against ``a``; entries with ``b == 0`` are left
    out. With ``return_sign`` the result is ``(log|s|, sign(s))``; without it a negative sum
    gives NaN. Shifted by the max: an all ``-inf`` slice gives ``-inf``, ``+inf`` gives ``+inf``,
    NaN propagates; an empty axis gives ``-inf``. Float32 result for 16/32-bit input, float64
    for float64.

    >>> import fastnll
    >>> round(float(fastnll.logsumexp([0.0, 0.0])), 6)
    0.693147
    """
    x = as_float_array(a, "a")
    dtype = _out_dtype(x)
    x0 = x.reshape(1) if x.ndim == 0 else x
    axes = _norm_axes(axis, x0.ndim)
    keep = tuple(i for i in range(x0.ndim) if i not in axes)
    moved = np.transpose(x0, keep + axes)  # a view; reduced axes last
    lead = moved.shape[: len(keep)]
    if b is not None or return_sign:
        bb = np.ones((), dtype=np.float64) if b is None else as_array(b, "b")
        if bb.dtype.kind not in "biuf" and float_tag(bb.dtype) is None:
            raise TypeError(f"b must be numeric (real numbers), got dtype {bb.dtype}")
        bb = bb.astype(np.float64, copy=False)
        try:
            bfull = np.broadcast_to(bb, x.shape).reshape(x0.shape)
        except ValueError:
            raise ValueError(
                f"b of shape {bb.shape} cannot be broadcast to a's shape {x.shape}"
            ) from None
        # The weighted path works on rows; reduced axes are merged (a copy only if needed).
        k = int(np.prod([x0.shape[a] for a in axes]))  # explicit: -1 is ambiguous when empty
        xr = moved.reshape(lead + (k,))
        br = np.transpose(bfull, keep + axes).reshape(lead + (k,))
        out: np.ndarray = np.empty(lead, dtype=dtype)
        sign: np.ndarray | None = np.empty(lead, dtype=dtype) if return_sign else None
        view, tag, swap = core_view(xr)
        _core.logsumexp_b(
            view, tag, swap, br, out.reshape(-1), None if sign is None else sign.reshape(-1)
        )
    else:
        # Reduce one axis at a time (exact: lse over (i, j) = lse_i of lse_j), float64 between
        # steps; a single axis needs no copy at all.
        cur = moved
        for step in range(len(axes)):
            last = step == len(axes) - 1
            cur = _lse_last(cur, dtype if last else np.float64)
        out, sign = cur, None
    if keepdims:
        shape = tuple(1 if i in axes else n for i, n in enumerate(x0.shape))
        out = out.reshape(shape) if x.ndim else out.reshape(())
        sign = None if sign is None else sign.reshape(out.shape)
    res = out[()] if out.ndim == 0 else out
    if return_sign:
        assert sign is not None
        return res, (sign[()] if sign.ndim == 0 else sign)
    return res


def _check_out(out: Any, x: np.ndarray, ax: int) -> np.ndarray:
    """The caller's ``out`` as the core writes it: the input's shape, the result dtype,
    writeable, C-contiguous along the moved class axis, and not overlapping the input."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a NumPy array, got {type(out).__name__}")
    want = np.dtype(_out_dtype(x))
    if out.dtype != want:
        raise TypeError(f"out has dtype {out.dtype}; the result is {want} for {x.dtype} input")
    if out.shape != x.shape:
        raise ValueError(f"out has shape {out.shape}, expected the input's shape {x.shape}")
    if not out.flags.writeable:
        raise ValueError("out is read-only")
    moved = np.moveaxis(out.reshape(1) if out.ndim == 0 else out, ax, -1)
    if not moved.flags.c_contiguous:
        raise ValueError("out must be C-contiguous (with the softmax axis last)")
    if np.shares_memory(out, x):
        raise ValueError("out must not overlap the input (fastnll reads each row while writing)")
    return moved


def _softmax(x_in: Any, axis: int, log: bool, out: np.ndarray | None = None) -> np.ndarray:
    x = as_float_array(x_in, "input")
    x0 = x.reshape(1) if x.ndim == 0 else x
    if isinstance(axis, (tuple, list)) or axis is None or isinstance(axis, bool):
        raise TypeError(f"axis must be a single integer, got {axis!r}")
    ax = _norm_axes(axis, x0.ndim)[0]
    moved = np.moveaxis(x0, ax, -1)
    if out is not None:
        dest = _check_out(out, x, ax)
        view, tag, swap = core_view(moved)
        _core.softmax(view, tag, swap, log, dest.reshape(-1))
        return out
    res: np.ndarray = np.empty(moved.shape, dtype=_out_dtype(x))
    view, tag, swap = core_view(moved)
    _core.softmax(view, tag, swap, log, res.reshape(-1))
    return np.moveaxis(res, -1, ax).reshape(x.shape)


def log_softmax(x: Any, axis: int = -1, *, out: np.ndarray | None = None) -> np.ndarray:
    """``x - logsumexp(x, axis, keepdims=True)``, as PyTorch's ``log_softmax`` (``dim=axis``).

    Writes a new array of the input's shape: float32 for 16/32-bit input, float64 for float64;
    or into ``out`` (that shape and dtype, C-contiguous with ``axis`` last, not overlapping the
    input), which is returned.
    A row holding ``+inf`` gives NaN there and ``-inf`` elsewhere; an all ``-inf`` row gives NaN.

    >>> import fastnll
    >>> fastnll.log_softmax([0.0, 0.0]).round(6).tolist()
    [-0.693147, -0.693147]
    """
    return _softmax(x, axis, True, out)


def softmax(x: Any, axis: int = -1, *, out: np.ndarray | None = None) -> np.ndarray:
    """``exp(log_softmax(x, axis))``, as PyTorch's ``softmax`` (``dim=axis``); ``out`` as for
    :func:`log_softmax`.

    >>> import fastnll
    >>> fastnll.softmax([0.0, 0.0]).tolist()
    [0.5, 0.5]
    """
    return _softmax(x, axis, False, out)
