"""Losses with PyTorch's semantics (class axis last) and SciPy-style logsumexp / softmax.

Everything here normalises arguments and calls one function of the Rust core, which reads the
input in place (any strides, dtype float32/float64/float16/bfloat16) with the GIL released.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

from . import _core
from ._arrays import as_array, as_float_array, as_target_array, core_view, float_tag
from ._options import check_ignore_index

Reduction = Literal["none", "mean", "sum"]
ArrayLike = Any
_INT64 = (-(2**63), 2**63 - 1)


def _out_dtype(x: np.ndarray) -> type:
    return np.float64 if float_tag(x.dtype) == "f64" else np.float32


def _check_reduction(reduction: str) -> None:
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")


def _check_ignore_index(ignore_index: Any) -> int:
    return check_ignore_index(ignore_index)  # one check for the whole API (_options)


def _check_smoothing(label_smoothing: Any) -> float:
    try:
        ls = float(label_smoothing)
    except (TypeError, ValueError):
        raise TypeError(f"label_smoothing must be a number, got {label_smoothing!r}") from None
    if not 0.0 <= ls <= 1.0:  # also rejects NaN
        raise ValueError(f"label_smoothing must be in [0, 1], got {ls}")
    return ls


def _class_weight(weight: ArrayLike | None, classes: int) -> np.ndarray | None:
    if weight is None:
        return None
    w = as_array(weight, "weight")
    if w.dtype.kind not in "fiu" and float_tag(w.dtype) is None:
        raise TypeError(f"weight must be numeric (real numbers), got dtype {w.dtype}")
    if w.ndim != 1 or w.shape[0] != classes:
        raise ValueError(
            f"weight must be a 1-d array of {classes} elements (one per class), got shape {w.shape}"
        )
    return np.ascontiguousarray(w, dtype=np.float64)


def _logits(x: ArrayLike, name: str) -> np.ndarray:
    arr = as_float_array(x, name)
    if arr.ndim == 0:
        raise ValueError(
            f"{name} must have at least 1 dimension (classes on the last axis), got a 0-d array"
        )
    return arr


def _reduce(total: tuple[float, float], reduction: str, out: np.ndarray | None) -> Any:
    s, w = total
    if reduction == "none":
        return out
    if reduction == "sum":
        return float(s)
    return float(s / w) if w != 0 else math.nan


def _per_row_out(
    shape: tuple[int, ...], x: np.ndarray, reduction: str
) -> tuple[np.ndarray | None, np.ndarray | None]:
    if reduction != "none":
        return None, None
    out: np.ndarray = np.empty(shape, dtype=_out_dtype(x))
    return out, out.reshape(-1)


def _class_target(target: ArrayLike, x: np.ndarray) -> np.ndarray:
    t = as_target_array(target)
    if t.shape != x.shape[:-1]:
        raise ValueError(
            f"target shape {t.shape} does not match input shape {x.shape}: expected {x.shape[:-1]} "
            "(the input's shape without its last, class axis)"
        )
    return t


def cross_entropy(
    logits: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    label_smoothing: float = 0.0,
) -> Any:
    """Cross-entropy of **logits** ``[..., C]`` (classes on the last axis), as PyTorch's
    ``F.cross_entropy``.

    With integer targets ``[...]``::

        loss_i = (1 - eps) * w[t_i] * (lse_i - x[i, t_i]) + eps / C * sum_c w[c] * (lse_i - x[i, c])
        lse_i  = log(sum_c exp(x[i, c]))

    ``mean`` divides by ``sum_i w[t_i]`` over rows whose target is not ``ignore_index`` (an empty
    or all-ignored batch gives ``nan``; ``sum`` gives ``0.0``). With floating targets of the
    input's shape (class probabilities), ``loss_i = sum_c w[c] * y'[i, c] * (lse_i - x[i, c])``
    with ``y' = (1 - eps) * y + eps / C``; a term with ``y' = 0`` counts 0 even where the
    log-probability is ``-inf`` (PyTorch gives NaN there); ``mean`` divides by the number of rows.

    Returns a float (``mean``/``sum``, float64 accumulation) or an array of per-row losses
    (``none``; float32 for 16/32-bit input, float64 for float64). Errors: IndexError for a target
    outside ``[0, C)`` (naming value and position), ValueError for mismatched shapes or bad
    options, TypeError for unsupported dtypes.

    >>> import fastnll
    >>> round(fastnll.cross_entropy([[2.0, 0.0, -1.0]], [0]), 6)
    0.169846
    """
    _check_reduction(reduction)
    ls = _check_smoothing(label_smoothing)
    ii = _check_ignore_index(ignore_index)
    x = _logits(logits, "logits")
    w = _class_weight(weight, x.shape[-1])
    view, tag, swap = core_view(x)
    t_arr = as_array(target, "target")
    # Floating targets are class probabilities; an empty Python list is an empty index batch.
    is_float = float_tag(t_arr.dtype) is not None  # bfloat16's kind is "V", not "f"
    if is_float and (hasattr(target, "dtype") or t_arr.size > 0):
        y = as_float_array(t_arr, "target")
        if y.shape != x.shape:
            raise ValueError(
                f"probability target shape {y.shape} does not match input shape {x.shape} "
                "(class-index targets must be integers)"
            )
        if ii >= 0:  # as PyTorch: a class index cannot be ignored in probability targets
            raise ValueError(
                f"ignore_index={ii} is not supported with probability (floating "
                f"point) targets: there is no class index to ignore"
            )
        yv, ytag, yswap = core_view(y)
        out, flat = _per_row_out(x.shape[:-1], x, reduction)
        total = _core.cross_entropy_soft(view, tag, swap, yv, ytag, yswap, w, ls, flat)
        return _reduce(total, reduction, out)
    t = _class_target(target, x)
    out, flat = _per_row_out(t.shape, x, reduction)
    total = _core.cross_entropy(view, tag, swap, t, w, ii, ls, flat)
    return _reduce(total, reduction, out)


def nll_loss(
    log_probs: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Any:
    """Negative log-likelihood of **log-probabilities** ``[..., C]``, as PyTorch's ``F.nll_loss``
    with the class axis last: ``loss_i = -w[t_i] * log_probs[i, t_i]``.

    ``mean`` divides by ``sum_i w[t_i]`` over non-ignored rows (``nan`` if there are none).
    A gathered value above 0 (beyond 1e-5 of rounding) cannot be a log-probability: that is the
    classic mistake of passing softmax probabilities, which PyTorch silently turns into a
    negative loss; fastnll raises ValueError instead. Take ``np.log`` of probabilities, or call
    :func:`cross_entropy` on the logits.

    >>> import numpy as np, fastnll
    >>> lp = np.log(np.array([[0.5, 0.25, 0.25]]))
    >>> round(fastnll.nll_loss(lp, [1]), 6)
    1.386294
    """
    _check_reduction(reduction)
    ii = _check_ignore_index(ignore_index)
    x = _logits(log_probs, "log_probs")
    w = _class_weight(weight, x.shape[-1])
    t = _class_target(target, x)
    view, tag, swap = core_view(x)
    out, flat = _per_row_out(t.shape, x, reduction)
    total = _core.nll_loss(view, tag, swap, t, w, ii, flat)
    return _reduce(total, reduction, out)


def binary_cross_entropy_with_logits(
    logits: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    pos_weight: ArrayLike | None = None,
    reduction: Reduction = "mean",
) -> Any:
    """Binary cross-entropy of logits, element-wise, as PyTorch's
    ``F.binary_cross_entropy_with_logits``, stable for any logit::

        loss = w * ((1 - y) * z + (1 + (pw - 1) * y) * (log1p(exp(-|z|)) + max(-z, 0)))

    ``weight`` broadcasts to the input, ``pos_weight`` along the last axis. ``mean`` divides by
    the number of elements. It equals 2-class cross-entropy on logits ``[0, z]``.

    >>> import fastnll
    >>> round(fastnll.binary_cross_entropy_with_logits([0.0, 2.0], [1.0, 0.0]), 6)
    1.410038
    """
    _check_reduction(reduction)
    x = as_float_array(logits, "logits")
    y = as_float_array(target, "target")
    if y.shape != x.shape:
        raise ValueError(f"target shape {y.shape} does not match input shape {x.shape}")
    if x.ndim == 0:
        x, y = x.reshape(1), y.reshape(1)
    wv, wtag, wswap = None, "f64", False
    if weight is not None:
        wa = as_array(weight, "weight")
        if wa.dtype.kind in "iub":  # integer or bool weights: a float64 copy
            wa = wa.astype(np.float64)
        elif float_tag(wa.dtype) is None:
            raise TypeError(f"weight must be numeric (real numbers), got dtype {wa.dtype}")
        try:
            # a zero-stride view: a full-size weight is read in place, never copied
            wv, wtag, wswap = core_view(np.broadcast_to(wa, x.shape))
        except ValueError:
            raise ValueError(
                f"weight of shape {np.shape(weight)} cannot be broadcast to input shape {x.shape}"
            ) from None
    pw = None
    if pos_weight is not None:
        pwa = as_array(pos_weight, "pos_weight")
        if pwa.dtype.kind not in "fiub" and float_tag(pwa.dtype) is None:
            raise TypeError(f"pos_weight must be numeric (real numbers), got dtype {pwa.dtype}")
        try:
            pw = np.ascontiguousarray(np.broadcast_to(pwa.astype(np.float64), (x.shape[-1],)))
        except ValueError:
            raise ValueError(
                f"pos_weight of shape {np.shape(pos_weight)} cannot be broadcast to the last axis "
                f"({x.shape[-1]} elements)"
            ) from None
    view, tag, swap = core_view(x)
    yv, ytag, yswap = core_view(y)
    out, flat = _per_row_out(x.shape, x, reduction)
    total = _core.bce_with_logits(view, tag, swap, yv, ytag, yswap, wv, wtag, wswap, pw, flat)
    if out is not None and np.ndim(logits) == 0:
        out = out.reshape(())
    return _reduce(total, reduction, out)
