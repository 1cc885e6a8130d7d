"""Independent float64 NumPy reference implementations of the fastnll loss API.

Straightforward, unoptimised code that follows the documented semantics of
``scipy.special.logsumexp`` and PyTorch's ``log_softmax``, ``softmax``, ``nll_loss``,
``cross_entropy`` and ``binary_cross_entropy_with_logits``, with the class axis LAST.
Every input is converted to float64 first (bfloat16 through ``.astype(np.float64)``), so the
reference sees exactly the (rounded) values fastnll sees. Reduced results are Python floats.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "log_softmax",
    "logsumexp",
    "nll_loss",
    "softmax",
]


def _f64(x) -> np.ndarray:
    return np.asarray(x).astype(np.float64)


def _is_floating(arr: np.ndarray) -> bool:
    # ml_dtypes.bfloat16 has kind 'V', so test by name as well as by kind.
    return arr.dtype.kind == "f" or arr.dtype.name == "bfloat16"


def _reduce(rows: np.ndarray, reduction: str, denom: float):
    if reduction == "none":
        return rows
    total = float(np.sum(rows, dtype=np.float64))
    if reduction == "sum":
        return total
    if reduction == "mean":
        with np.errstate(invalid="ignore", divide="ignore"):
            return float(np.float64(total) / np.float64(denom))
    raise ValueError(f"unknown reduction {reduction!r}")


def logsumexp(a, axis=-1, b=None, keepdims=False, return_sign=False):
    """log(sum(b * exp(a))) along `axis` (None: all elements), as scipy.special.logsumexp.

    Entries whose weight b is 0 contribute nothing, even where a is +inf. An empty reduction
    gives -inf (sign 0). With return_sign, returns (log|s|, sign(s)); without it, a negative
    sum gives NaN.
    """
    a = _f64(a)
    if b is not None:
        b = _f64(b)
        a, b = np.broadcast_arrays(a, b)
        a = np.where(b != 0, a, -np.inf)
    else:
        b = np.ones_like(a)
    m = np.max(a, axis=axis, keepdims=True, initial=-np.inf)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        s = np.sum(b * np.exp(a - m), axis=axis, keepdims=True)
        if return_sign:
            sign = np.sign(s)
            s = np.abs(s)
        out = np.log(s) + m
    if not keepdims:
        out = np.squeeze(out, axis=axis) if axis is not None else out.reshape(())
        if return_sign:
            sign = np.squeeze(sign, axis=axis) if axis is not None else sign.reshape(())
    if return_sign:
        return out, sign
    return out


def log_softmax(x, axis=-1):
    """PyTorch log_softmax: (x - max) - log(sum(exp(x - max))). A row holding +inf or made
    only of -inf gives NaN, as in PyTorch."""
    x = _f64(x)
    if x.shape[axis] == 0:
        return x.copy()
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        m = np.max(x, axis=axis, keepdims=True)
        shifted = x - m
        return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def softmax(x, axis=-1):
    """PyTorch softmax: exp(x - max) / sum(exp(x - max))."""
    x = _f64(x)
    if x.shape[axis] == 0:
        return x.copy()
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        m = np.max(x, axis=axis, keepdims=True)
        e = np.exp(x - m)
        return e / np.sum(e, axis=axis, keepdims=True)


def _hard_rows(logp, target, weight, ignore_index):
    """Per-row -w[t] * logp[t] (0 for ignored rows), the row weights w[t] (0 if ignored)
    and the keep mask, for logp [..., C] and integer targets [...]."""
    n_classes = logp.shape[-1]
    lp = logp.reshape(-1, n_classes)
    t = np.asarray(target).astype(np.int64).reshape(-1)
    if t.shape[0] != lp.shape[0]:
        raise ValueError("shape mismatch")
    w = np.ones(n_classes) if weight is None else _f64(weight)
    keep = t != ignore_index
    if np.any(keep & ((t < 0) | (t >= n_classes))):
        raise IndexError("target out of range")
    tt = np.where(keep, t, 0)
    rows_idx = np.arange(lp.shape[0])
    if n_classes > 0:
        picked = lp[rows_idx, tt]
        wt = np.where(keep, w[tt], 0.0)
    else:
        picked = np.zeros(lp.shape[0])
        wt = np.zeros(lp.shape[0])
    with np.errstate(invalid="ignore"):
        rows = np.where(keep, -wt * picked, 0.0)
    return rows, wt, keep, w, lp


def nll_loss(log_probs, target, weight=None, ignore_index=-100, reduction="mean"):
    """PyTorch nll_loss with the class axis last."""
    x = _f64(log_probs)
    rows, wt, _, _, _ = _hard_rows(x, target, weight, ignore_index)
    shape = np.asarray(target).shape
    if reduction == "none":
        return rows.reshape(shape)
    return _reduce(rows, reduction, np.sum(wt))


def cross_entropy(
    logits, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0
):
    """PyTorch cross_entropy with the class axis last; integer targets [...] or probability
    targets [..., C]. In soft targets a zero probability contributes exactly 0."""
    x = _f64(logits)
    n_classes = x.shape[-1]
    eps = float(label_smoothing)
    lp = log_softmax(x, axis=-1)
    t_arr = np.asarray(target)
    if _is_floating(t_arr):
        y = _f64(t_arr)
        if y.shape != x.shape:
            raise ValueError("shape mismatch")
        if eps > 0:
            y = y * (1.0 - eps) + eps / n_classes
        w = np.ones(n_classes) if weight is None else _f64(weight)
        with np.errstate(invalid="ignore"):
            terms = np.where(y == 0, 0.0, y * w * lp)
        rows = -np.sum(terms, axis=-1)
        if reduction == "none":
            return rows
        return _reduce(rows.reshape(-1), reduction, rows.size)
    rows, wt, keep, w, lp2 = _hard_rows(lp, t_arr, weight, ignore_index)
    if eps > 0:
        with np.errstate(invalid="ignore"):
            smooth = -np.sum(lp2 * w, axis=-1)
            smooth = np.where(keep, smooth, 0.0)
            rows = np.where(keep, (1.0 - eps) * rows + (eps / n_classes) * smooth, 0.0)
    if reduction == "none":
        return rows.reshape(t_arr.shape)
    return _reduce(rows, reduction, np.sum(wt))


def _softplus(z):
    """log(1 + exp(z)) without overflow."""
    return np.maximum(z, 0.0) + np.log1p(np.exp(-np.abs(z)))


def binary_cross_entropy_with_logits(
    logits, target, weight=None, pos_weight=None, reduction="mean"
):
    """PyTorch binary_cross_entropy_with_logits, written in the cancellation-free form
    pos_weight*y*softplus(-z) + (1-y)*softplus(z), times weight (broadcast to z);
    pos_weight broadcasts along the last axis. The mean is over all elements."""
    z = _f64(logits)
    y = _f64(target)
    if y.shape != z.shape:
        raise ValueError("shape mismatch")
    pw = 1.0 if pos_weight is None else _f64(pos_weight)
    with np.errstate(invalid="ignore", over="ignore"):
        loss = pw * y * _softplus(-z) + (1.0 - y) * _softplus(z)
        if weight is not None:
            loss = loss * _f64(weight)
    loss = np.broadcast_to(loss, z.shape).copy()
    if reduction == "none":
        return loss
    return _reduce(loss.reshape(-1), reduction, loss.size)
