"""Post-hoc temperature scaling: the T minimising the mean NLL of softmax(x / T).

In β = 1/T the mean NLL, L(β) = mean(logsumexp(β x) - β x_t), is convex, with L'(β) =
mean(E_p[x] - x_t) = (mean NLL - mean entropy) / β and L''(β) = mean(Var_p[x]) (p =
softmax(β x)). Each pass is one core evaluation (:class:`fastnll.Evaluator`) of β·x, formed
chunk by chunk in bounded float32 buffers (never N x C at once): it gives L, L' and the ECE.
The first step is Newton's, with L''(1) from the first chunk in NumPy; the next are secant
steps on L' kept inside the bracket of the root (bisection when they leave it), until the
step is below ``tol``·β: typically 3-6 passes. The last pass is the "after" report.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._inputs import Dump, chunks, prepare
from ._report import EvalReport

__all__ = ["TemperatureFit", "fit_temperature"]

BUFFER_BYTES = 32 << 20  # float32 work buffers per chunk


@dataclass(frozen=True)
class TemperatureFit:
    """Result of :func:`fit_temperature`: T and the metrics before (T = 1) and after."""

    temperature: float
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float
    iterations: int  # passes over the dump after the "before" one
    converged: bool
    rows: int
    before: EvalReport
    after: EvalReport

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (the "temperature" object of docs/evaluate.md)."""

        def f(v: float) -> float | None:
            return v if math.isfinite(v) else None

        return {
            "temperature": f(self.temperature),
            "nll_before": f(self.nll_before),
            "nll_after": f(self.nll_after),
            "ece_before": f(self.ece_before),
            "ece_after": f(self.ece_after),
            "iterations": self.iterations,
            "converged": self.converged,
            "rows": self.rows,
        }


def _rows(d: Dump, chunk_bytes: int, ignore_index: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(float32 logits [r, C], int64 targets [r]) of the scored rows, chunk by chunk."""
    b, t, c = d.x.shape
    budget = max(c * 4, min(int(chunk_bytes), BUFFER_BYTES))
    for b0, b1, t0, t1 in chunks(b, t, c * 4, budget):
        xs, ts, _ = d.block(b0, b1, t0, t1)
        x = np.asarray(xs, dtype=np.float32).reshape(-1, c)
        tt = np.asarray(ts).reshape(-1).astype(np.int64)
        keep = tt != ignore_index
        if not keep.all():
            x, tt = x[keep], tt[keep]
        if tt.size and (tt.min() < 0 or tt.max() >= c):
            bad = int(tt[(tt < 0) | (tt >= c)][0])
            raise IndexError(f"{d.tname}: target {bad} is out of range for {c} classes")
        yield x, tt


def _curvature(d: Dump, chunk_bytes: int, ignore_index: int) -> float:
    """mean Var_p[x] at T = 1 over the first chunk with scored rows (<= 32 MiB): L''(1) for
    the first Newton step (the later steps are secant steps on the core's L')."""
    for x, tt in _rows(d, chunk_bytes, ignore_index):
        if not tt.size:
            continue
        m = x.max(axis=1, keepdims=True)
        e = np.exp(x - np.where(np.isfinite(m), m, 0.0).astype(np.float32))
        s = e.sum(axis=1, dtype=np.float64)
        xf = np.where(e > 0, x, 0.0).astype(np.float32)  # -inf logits carry no mass
        ex = (e * xf).sum(axis=1, dtype=np.float64) / s
        ex2 = (e * xf * xf).sum(axis=1, dtype=np.float64) / s
        return float(np.mean(np.maximum(ex2 - ex * ex, 0.0)))
    return 0.0


def _scaled_report(
    d: Dump, beta: float, chunk_bytes: int, ignore_index: int, n_bins: int
) -> EvalReport:
    from .evaluate import Evaluator

    ev = Evaluator(
        kind="logits", ignore_index=ignore_index, top_k=(1,), n_bins=n_bins, check_kind=False
    )
    b, t, c = d.x.shape
    if beta == 1.0:  # the dump as it is, read in place
        ev._update(d, None)
        return ev.result()
    b32 = np.float32(beta)
    for b0, b1, t0, t1 in chunks(b, t, c * 4, max(c * 4, min(chunk_bytes, BUFFER_BYTES))):
        xs, ts, _ = d.block(b0, b1, t0, t1)
        ev.update(np.multiply(xs, b32, dtype=np.float32), ts)
    return ev.result()


def _slope(r: EvalReport, beta: float) -> float:
    """L'(β) = mean(E_p[x] - x_t) = (mean NLL - mean entropy) / β at p = softmax(β x), since
    E_p[β x] = logsumexp(β x) - H(p)."""
    return (r.mean_nll - r.mean_entropy) / beta


def fit_temperature(
    preds: Any,
    target: Any,
    *,
    kind: str = "logits",
    ignore_index: int = -100,
    shift: bool = False,
    n_bins: int = 15,
    max_iter: int = 50,
    tol: float = 1e-6,
    chunk_bytes: int = 256 << 20,
    dtype: Any = None,
    shape: Any = None,
    target_dtype: Any = None,
) -> TemperatureFit:
    """Fit the temperature T minimising the mean NLL of softmax(preds / T) against target.

    ``preds``: logits (or log-probabilities, ``kind="log_probs"``: softmax(log p / T) is the
    same family) as an array, memmap or path, as for :func:`fastnll.evaluate`. Newton, then
    secant steps in 1/T (convex) until the relative step is below ``tol``; returns T with the NLL and ECE
    (``n_bins`` equal-width bins) before (T = 1) and after. Raises ValueError when no row is
    scored or the NLL has no finite minimum: every row ranks its target strictly first
    (T -> 0), or the logits carry no information about the targets (T -> infinity)."""
    if kind not in ("logits", "log_probs"):
        raise ValueError(
            f"fit_temperature needs kind='logits' or 'log_probs', got {kind!r} "
            "(for probabilities pass np.log(probs) with kind='log_probs')"
        )
    if int(max_iter) < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    d = prepare(preds, target, shift=shift, dtype=dtype, shape=shape, target_dtype=target_dtype)
    cb = int(chunk_bytes)
    before = _scaled_report(d, 1.0, cb, ignore_index, n_bins)
    n = before.rows
    if n == 0:
        raise ValueError("fit_temperature: no scored rows (every target is ignore_index)")
    if not math.isfinite(before.mean_nll) or not math.isfinite(before.mean_entropy):
        raise ValueError(
            "fit_temperature: the NLL at T = 1 is not finite (NaN or +inf logits in the dump)"
        )
    g = _slope(before, 1.0)
    lo: float | None = None  # L' < 0 here (the minimum is at a larger β)
    hi: float | None = None  # L' >= 0 here
    if g < 0:
        lo = 1.0
    else:
        hi = 1.0
    h = _curvature(d, cb, ignore_index)
    nb = 1.0 - g / h if h > 0 else (4.0 if g < 0 else 0.25)
    nb = min(max(nb, 0.125), 8.0)
    cur, cur_g, after = 1.0, g, before
    it, converged = 0, g == 0
    while not converged and it < max_iter:
        if nb > 1e4:
            raise ValueError(
                f"fit_temperature: the NLL keeps falling as T -> 0 (T = "
                f"{1 / nb:.3g} after {it} passes): the rows already rank their "
                "targets first; no finite temperature"
            )
        if nb < 1e-4:
            raise ValueError(
                f"fit_temperature: the NLL keeps falling as T -> infinity (T = "
                f"{1 / nb:.3g} after {it} passes): the logits carry no "
                "information about the targets, the uniform prediction is best"
            )
        rep = _scaled_report(d, nb, cb, ignore_index, n_bins)
        it += 1
        g = _slope(rep, nb)
        if g < 0 and rep.mean_nll < 1e-5:  # below float32's resolution of the NLL
            raise ValueError(
                f"fit_temperature: the NLL keeps falling as T -> 0 (mean NLL "
                f"{rep.mean_nll:.3g} at T = {1 / nb:.3g}): the rows already rank "
                "their targets first; no finite temperature"
            )
        prev, prev_g = cur, cur_g
        cur, cur_g, after = nb, g, rep
        if g < 0:
            lo = nb if lo is None else max(lo, nb)
        else:
            hi = nb if hi is None else min(hi, nb)
        if g == 0 or abs(cur - prev) <= tol * cur:
            converged = True
            break
        # secant on L' (increasing: L is convex in β), kept inside the bracket
        cand = cur - g * (cur - prev) / (g - prev_g) if g != prev_g else math.nan
        if lo is not None and hi is not None:
            nb = cand if lo < cand < hi else math.sqrt(lo * hi)
        elif not cand > 0 or (lo is not None and cand <= lo) or (hi is not None and cand >= hi):
            nb = cur * 4 if g < 0 else cur / 4
        else:
            nb = cand
    if not converged:
        raise ValueError(
            f"fit_temperature: no convergence in max_iter={max_iter} passes "
            f"(T = {1 / cur:.6g}, dNLL/d(1/T) = {g:.3g})"
        )
    beta = cur
    return TemperatureFit(
        temperature=1.0 / beta,
        nll_before=before.mean_nll,
        nll_after=after.mean_nll,
        ece_before=before.ece,
        ece_after=after.ece,
        iterations=it,
        converged=converged,
        rows=n,
        before=before,
        after=after,
    )
