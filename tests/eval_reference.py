"""Pure-NumPy float64 references for the evaluation tests.

* ``eval_rows`` / ``compare_rows`` mirror the contract of ``fastnll._core``'s functions of the
  same names (same arguments, same dict), row by row in float64.
* ``reference_metrics`` / ``reference_compare`` compute the final metrics straight from the
  definitions in docs/evaluate.md, independent of fastnll.evaluate's aggregation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import ml_dtypes
import numpy as np

_DECODE = {"f32": np.float32, "f64": np.float64, "f16": np.float16, "bf16": ml_dtypes.bfloat16}


def decode(view: np.ndarray, tag: str, swap: bool) -> np.ndarray:
    """The float64 values of a core view (undo byte swap, reinterpret bits)."""
    raw = view.byteswap() if swap else view
    return raw.view(_DECODE[tag]).astype(np.float64)


def log_probs(x: np.ndarray, kind: str) -> np.ndarray:
    """float64 log p for rows of x (last axis = classes)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if kind == "logits":
            m = np.max(x, axis=-1, keepdims=True)
            m = np.where(np.isfinite(m), m, 0.0)
            return x - (np.log(np.exp(x - m).sum(axis=-1, keepdims=True)) + m)
        if kind == "log_probs":
            return x.copy()
        return np.log(x)


def probs(x: np.ndarray, kind: str) -> np.ndarray:
    return x.copy() if kind == "probs" else np.exp(log_probs(x, kind))


def _per_row(x: np.ndarray, t: np.ndarray, kind: str, ignore_index: int) -> dict[str, np.ndarray]:
    """Per-row quantities of 2-d float64 x [R, C] and targets t [R]."""
    c = x.shape[1]
    valid = t != ignore_index
    bad = valid & ((t < 0) | (t >= c))
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise IndexError(f"target {int(t[pos])} at position {pos} is out of range for {c} classes")
    tt = np.where(valid, t, 0).astype(np.int64)
    lp, p = log_probs(x, kind), probs(x, kind)
    r = np.arange(len(t))
    with np.errstate(invalid="ignore", divide="ignore"):
        plogp = np.where(p > 0, p * np.where(p > 0, lp, 0.0), 0.0)
    xt = x[r, tt]
    return {
        "valid": valid,
        "nll": -lp[r, tt],
        "entropy": -plogp.sum(axis=1),
        "brier": (p * p).sum(axis=1) - 2 * p[r, tt] + 1.0,
        "conf": p.max(axis=1),
        "rank": (x > xt[:, None]).sum(axis=1),
        "argmax": np.argmax(x, axis=1),
        "logp": lp,
        "p": p,
    }


def _flat(view: np.ndarray, tag: str, swap: bool, target: np.ndarray):
    x = decode(view, tag, swap)
    if target.shape != x.shape[:-1]:
        raise ValueError(f"target shape {target.shape} does not match {x.shape[:-1]}")
    return x.reshape(-1, x.shape[-1]), np.asarray(target).reshape(-1).astype(np.int64)


def eval_rows(
    x: np.ndarray,
    tag: str,
    swap: bool,
    target: np.ndarray,
    kind: str,
    ignore_index: int,
    top_k: Sequence[int],
    n_bins: int,
    row_offset: int,
    nll_out: np.ndarray | None,
    rank_out: np.ndarray | None,
) -> dict[str, Any]:
    """float64 stand-in for fastnll._core.eval_rows (same contract)."""
    xf, t = _flat(x, tag, swap, target)
    try:
        q = _per_row(xf, t, kind, ignore_index)
    except IndexError as exc:
        msg = str(exc)
        pos = int(msg.split(" at position ")[1].split()[0])
        raise IndexError(msg.replace(f"position {pos}", f"position {pos + row_offset}")) from None
    v = q["valid"]
    rank = np.where(v, q["rank"], -1)
    if nll_out is not None:
        nll_out[:] = np.where(v, q["nll"], np.nan)
    if rank_out is not None:
        rank_out[:] = rank
    conf = q["conf"][v]
    b = np.minimum(np.floor(conf * n_bins), n_bins - 1).astype(np.int64)
    top1 = (q["rank"][v] == 0).astype(np.int64)
    nll = q["nll"][v]
    return {
        "n": int(v.sum()),
        "n_ignored": int((~v).sum()),
        "sum_nll": float(nll.sum()),
        "sum_nll_sq": float((nll * nll).sum()),
        "sum_entropy": float(q["entropy"][v].sum()),
        "sum_brier": float(q["brier"][v].sum()),
        "topk_correct": [int((q["rank"][v] < k).sum()) for k in top_k],
        "bin_count": np.bincount(b, minlength=n_bins).tolist(),
        "bin_conf_sum": np.bincount(b, weights=conf, minlength=n_bins).tolist(),
        "bin_correct": np.bincount(b, weights=top1, minlength=n_bins).astype(np.int64).tolist(),
    }


def compare_rows(
    base: np.ndarray,
    base_tag: str,
    base_swap: bool,
    new: np.ndarray,
    new_tag: str,
    new_swap: bool,
    target: np.ndarray,
    kind: str,
    ignore_index: int,
    row_offset: int = 0,
    *outs: np.ndarray,
) -> dict[str, Any]:
    """float64 stand-in for fastnll._core.compare_rows: the version-1 sums (the per-row
    outputs kl/dp/nll_base/nll_new/same are filled when given; the extra sums of schema 2 are
    tested in tests/test_compare_report.py)."""
    xb, t = _flat(base, base_tag, base_swap, target)
    xn, _ = _flat(new, new_tag, new_swap, target)
    if xb.shape != xn.shape:
        raise ValueError("base and new shapes differ")
    qb, qn = _per_row(xb, t, kind, ignore_index), _per_row(xn, t, kind, ignore_index)
    v = qb["valid"]
    kl = _kl_normalised(qb["logp"], qn["logp"])
    d = (qn["nll"] - qb["nll"])[v]
    if outs:
        kl_o, dp_o, nb_o, nn_o, same_o = outs
        kl_o[:] = np.where(v, kl, np.nan)
        dp_o[:] = np.where(v, np.exp(-qn["nll"]) - np.exp(-qb["nll"]), np.nan)
        nb_o[:] = np.where(v, qb["nll"], np.nan)
        nn_o[:] = np.where(v, qn["nll"], np.nan)
        same_o[:] = np.where(v, qb["argmax"] == qn["argmax"], -1)
    return {
        "n": int(v.sum()),
        "n_ignored": int((~v).sum()),
        "sum_kl": float(kl[v].sum()),
        "sum_dnll": float(d.sum()),
        "sum_dnll_sq": float((d * d).sum()),
        "top1_agree": int((qb["argmax"] == qn["argmax"])[v].sum()),
    }


def _kl_normalised(lb: np.ndarray, ln: np.ndarray) -> np.ndarray:
    """KL(base || new) per row of the renormalised rows (docs/evaluate.md: a low-precision
    dump's log-probabilities / probabilities are off 1 by rounding)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        lb = lb - np.logaddexp.reduce(lb, axis=1, keepdims=True)
        ln = ln - np.logaddexp.reduce(ln, axis=1, keepdims=True)
        pb = np.exp(lb)
        out: np.ndarray = np.where(pb > 0, pb * (lb - ln), 0.0).sum(axis=1)
    return out


def _scored(preds: np.ndarray, target: np.ndarray, shift: bool):
    x = np.asarray(preds).astype(np.float64)
    t = np.asarray(target).astype(np.int64)
    if shift:
        if x.ndim == 2:
            x, t = x[:-1], t[1:]
        else:
            x, t = x[:, :-1], t[:, 1:]
    return x.reshape(-1, x.shape[-1]), t.reshape(-1)


def reference_metrics(
    preds: np.ndarray,
    target: np.ndarray,
    *,
    kind: str = "logits",
    ignore_index: int = -100,
    top_k: Sequence[int] = (1, 5),
    n_bins: int = 15,
    shift: bool = False,
) -> dict[str, Any]:
    """Final metrics straight from their definitions (float64, whole arrays at once)."""
    x, t = _scored(preds, target, shift)
    q = _per_row(x, t, kind, ignore_index)
    v = q["valid"]
    n = int(v.sum())
    nll, rank, conf = q["nll"][v], q["rank"][v], q["conf"][v]
    correct = rank == 0
    mean = float(nll.mean()) if n else math.nan
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ece, gaps, bins = 0.0, [], []
    for i in range(n_bins):
        lo, hi = edges[i], edges[i + 1]
        inb = (conf >= lo) & ((conf < hi) if i < n_bins - 1 else (conf <= hi))
        nb = int(inb.sum())
        if nb:
            acc, cf = float(correct[inb].mean()), float(conf[inb].mean())
            ece += nb / n * abs(acc - cf)
            gaps.append(abs(acc - cf))
            bins.append((nb, cf, acc))
        else:
            bins.append((0, None, None))
    return {
        "rows": n,
        "ignored": int((~v).sum()),
        "sum_nll": float(nll.sum()),
        "mean_nll": mean,
        "nll_se": float(nll.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan,
        "perplexity": math.exp(mean) if n else math.nan,
        "bits_per_token": mean / math.log(2) if n else math.nan,
        "accuracy": float(correct.mean()) if n else math.nan,
        "top_k_accuracy": {k: float((rank < k).mean()) if n else math.nan for k in top_k},
        "mean_entropy": float(q["entropy"][v].mean()) if n else math.nan,
        "brier": float(q["brier"][v].mean()) if n else math.nan,
        "ece": ece if n else math.nan,
        "mce": max(gaps) if gaps else math.nan,
        "bins": bins,
        "conf": conf,
        "row_nll": np.where(v, q["nll"], np.nan),
        "row_rank": np.where(v, q["rank"], -1),
    }


def reference_compare(
    base: np.ndarray,
    new: np.ndarray,
    target: np.ndarray,
    *,
    kind: str = "logits",
    ignore_index: int = -100,
    shift: bool = False,
) -> dict[str, Any]:
    xb, t = _scored(base, target, shift)
    xn, _ = _scored(new, target, shift)
    qb, qn = _per_row(xb, t, kind, ignore_index), _per_row(xn, t, kind, ignore_index)
    v = qb["valid"]
    kl = _kl_normalised(qb["logp"][v], qn["logp"][v])
    d = (qn["nll"] - qb["nll"])[v]
    n = int(v.sum())
    return {
        "rows": n,
        "mean_kl": float(kl.mean()),
        "mean_dnll": float(d.mean()),
        "dnll_se": float(d.std(ddof=1) / math.sqrt(n)),
        "top1_agreement": float((qb["argmax"] == qn["argmax"])[v].mean()),
    }


DTYPES = {
    "float32": np.float32,
    "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
    "float64": np.float64,
}


def make_preds(
    rng: np.random.Generator, shape: Sequence[int], kind: str, dtype: Any, scale: float = 1.5
) -> np.ndarray:
    """Random predictions of a kind, rounded to dtype (log_probs/probs normalised in float64
    first, so they normalise up to the dtype's rounding)."""
    z = rng.standard_normal(tuple(shape)) * scale
    if kind == "logits":
        out = z
    else:
        lp = log_probs(z, "logits")
        out = lp if kind == "log_probs" else np.exp(lp)
    return out.astype(DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype)


def make_targets(
    rng: np.random.Generator,
    shape: Sequence[int],
    n_classes: int,
    ignore_index: int = -100,
    ignore_frac: float = 0.1,
) -> np.ndarray:
    t = rng.integers(0, n_classes, size=tuple(shape)).astype(np.int64)
    t[rng.random(tuple(shape)) < ignore_frac] = ignore_index
    return t
