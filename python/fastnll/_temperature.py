"""Post-hoc temperature scaling: the T minimising the mean NLL of softmax(x / T).

In β = 1/T the mean NLL, L(β) = mean(logsumexp(β x) - β x_t), is convex, with L'(β) =
mean(E_p[x] - x_t) and L''(β) = mean(Var_p[x]) (p = softmax(β x)). Newton's method in β,
halving a step that does not lower L, converges in a handful of passes over the dump; each
pass forms β·x chunk by chunk in bounded float32 buffers (never N x C at once) and sums in
float64. NLL and ECE before and after come from :class:`fastnll.Evaluator` (the core), the
"after" one on the scaled chunks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Tuple

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
    iterations: int  # Newton passes over the dump (plus one each for before and after)
    converged: bool
    rows: int
    before: EvalReport
    after: EvalReport

    def to_dict(self) -> dict:
        """JSON-ready summary (the "temperature" object of docs/evaluate.md)."""
        f = lambda v: v if math.isfinite(v) else None  # noqa: E731
        return {"temperature": f(self.temperature), "nll_before": f(self.nll_before),
                "nll_after": f(self.nll_after), "ece_before": f(self.ece_before),
                "ece_after": f(self.ece_after), "iterations": self.iterations,
                "converged": self.converged, "rows": self.rows}


def _rows(d: Dump, chunk_bytes: int, ignore_index: int):
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


def _pass(d: Dump, beta: float, chunk_bytes: int, ignore_index: int
          ) -> Tuple[float, float, float, int, int]:
    """(Σ NLL, Σ L', Σ L'', n, rows whose target is the unique max) at β, in float64 sums
    over float32 rows."""
    s_nll = s_g = s_h = 0.0
    n = n_sep = 0
    b32 = np.float32(beta)
    for x, tt in _rows(d, chunk_bytes, ignore_index):
        u = x * b32
        m = u.max(axis=1, keepdims=True)
        m = np.where(np.isfinite(m), m, 0.0).astype(np.float32)
        e = np.exp(u - m)
        s = e.sum(axis=1, dtype=np.float64)
        xf = np.where(e > 0, x, 0.0).astype(np.float32)  # -inf logits carry no mass
        ex = (e * xf).sum(axis=1, dtype=np.float64) / s
        ex2 = (e * xf * xf).sum(axis=1, dtype=np.float64) / s
        xt = x[np.arange(tt.size), tt].astype(np.float64)
        s_nll += float((np.log(s) + m[:, 0] - beta * xt).sum())
        s_g += float((ex - xt).sum())
        s_h += float(np.maximum(ex2 - ex * ex, 0.0).sum())
        n += tt.size
        n_sep += int(((x >= x[np.arange(tt.size), tt][:, None]).sum(axis=1) == 1).sum())
    return s_nll, s_g, s_h, n, n_sep


def _scaled_report(d: Dump, beta: float, chunk_bytes: int, ignore_index: int,
                   n_bins: int) -> EvalReport:
    from .evaluate import Evaluator

    ev = Evaluator(kind="logits", ignore_index=ignore_index, top_k=(1,), n_bins=n_bins,
                   check_kind=False)
    b, t, c = d.x.shape
    b32 = np.float32(beta)
    for b0, b1, t0, t1 in chunks(b, t, c * 4, max(c * 4, min(chunk_bytes, BUFFER_BYTES))):
        xs, ts, _ = d.block(b0, b1, t0, t1)
        ev.update(np.asarray(xs, dtype=np.float32) * b32, ts)
    return ev.result()


def fit_temperature(preds: Any, target: Any, *, kind: str = "logits",
                    ignore_index: int = -100, shift: bool = False, n_bins: int = 15,
                    max_iter: int = 50, tol: float = 1e-6, chunk_bytes: int = 256 << 20,
                    dtype: Any = None, shape: Any = None,
                    target_dtype: Any = None) -> TemperatureFit:
    """Fit the temperature T minimising the mean NLL of softmax(preds / T) against target.

    ``preds``: logits (or log-probabilities, ``kind="log_probs"``: softmax(log p / T) is the
    same family) as an array, memmap or path, as for :func:`fastnll.evaluate`. Newton steps in
    1/T (convex) until the relative step is below ``tol``; returns T with the NLL and ECE
    (``n_bins`` equal-width bins) before (T = 1) and after. Raises ValueError when no row is
    scored or the NLL has no finite minimum (e.g. every row already predicts its target with
    certainty, where T -> 0)."""
    if kind not in ("logits", "log_probs"):
        raise ValueError(f"fit_temperature needs kind='logits' or 'log_probs', got {kind!r} "
                         "(for probabilities pass np.log(probs) with kind='log_probs')")
    if int(max_iter) < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    d = prepare(preds, target, shift=shift, dtype=dtype, shape=shape,
                target_dtype=target_dtype)
    cb = int(chunk_bytes)
    before = _scaled_report(d, 1.0, cb, ignore_index, n_bins)
    beta, it, converged = 1.0, 0, False
    nll, g, h, n, n_sep = _pass(d, beta, cb, ignore_index)
    if n == 0:
        raise ValueError("fit_temperature: no scored rows (every target is ignore_index)")
    if n_sep == n:
        raise ValueError(f"fit_temperature: every one of the {n} rows ranks its target "
                         "strictly first, so the NLL keeps falling as T -> 0: no finite "
                         "temperature")
    if not math.isfinite(nll):
        raise ValueError("fit_temperature: the NLL at T = 1 is not finite (NaN or +inf "
                         "logits in the dump)")
    while it < max_iter:
        it += 1
        if h <= 0:
            break
        step = -g / h
        while True:
            nb = beta + step
            if nb <= 0:
                step /= 2
                continue
            nll_new, g_new, h_new, _, _ = _pass(d, nb, cb, ignore_index)
            if nll_new <= nll + 1e-12 * abs(nll) or abs(step) < tol * beta:
                break
            step /= 2
            it += 1
        beta, nll, g, h = nb, nll_new, g_new, h_new
        if abs(step) <= tol * beta:
            converged = True
            break
    if not converged and abs(g) / n < 1e-9:
        converged = True
    if not converged:
        raise ValueError(f"fit_temperature: no convergence in max_iter={max_iter} passes "
                         f"(T = {1 / beta:.6g}, dNLL/d(1/T) = {g / n:.3g})")
    after = _scaled_report(d, beta, cb, ignore_index, n_bins)
    return TemperatureFit(temperature=1.0 / beta, nll_before=before.mean_nll,
                          nll_after=after.mean_nll, ece_before=before.ece,
                          ece_after=after.ece, iterations=it, converged=converged, rows=n,
                          before=before, after=after)
