"""The statistics of :func:`fastnll.compare` (llama.cpp ``perplexity --kl-divergence``'s list):
means with standard errors, the PPL ratio/difference by the delta method with the covariance of
the two NLLs, and percentiles of per-row KL and Δp, exact from the per-row values or, for
dumps with more rows than ``max_exact_rows``, from a mergeable log-spaced histogram.

Formulas (n scored rows; sums from the core, so chunks and shards merge):

* mean_se(Σv, Σv², n) = (m, sqrt(max(Σv²/n - m², 0) / (n - 1))), m = Σv / n; the standard
  error of the mean with the sample variance (llama.cpp's ``mean_and_uncertainty``; it prints
  0 below 11 rows, fastnll gives NaN below 2).
* cov = (Σab/n - (Σa/n)(Σb/n)) / (n - 1): covariance of the two mean NLLs.
* PPL = exp(mean NLL) ± PPL·se; ln(PPL_new/PPL_base) = m_new - m_base ± sqrt(se_new² +
  se_base² - 2 cov); ratio = exp(that) ± ratio·se; difference PPL_new - PPL_base ±
  sqrt(u_new² + u_base² - 2·PPL_new·PPL_base·cov); correlation of ln PPL = cov / (se_new·se_base).
* RMS Δp = sqrt(mean Δp²) ± se(Δp²) / (2 RMS); same top-1 p ± sqrt(p(1 - p)/(n - 1)).
* percentile(q) of sorted values v: linear between v[floor(h)] and v[floor(h) + 1], h = q(n-1)
  (llama.cpp's rule, NumPy's default "linear").
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import _core

KL_LEVELS: tuple[tuple[str, float], ...] = (
    ("max", 1.0),
    ("99.9", 0.999),
    ("99", 0.99),
    ("95", 0.95),
    ("90", 0.9),
    ("median", 0.5),
    ("10", 0.1),
    ("5", 0.05),
    ("1", 0.01),
    ("0.1", 0.001),
    ("min", 0.0),
)
DP_LEVELS: tuple[tuple[str, float], ...] = (
    ("max", 1.0),
    ("99.9", 0.999),
    ("99", 0.99),
    ("95", 0.95),
    ("90", 0.9),
    ("75", 0.75),
    ("median", 0.5),
    ("25", 0.25),
    ("10", 0.1),
    ("5", 0.05),
    ("1", 0.01),
    ("0.1", 0.001),
    ("min", 0.0),
)
SUM_KEYS = (
    "n",
    "n_ignored",
    "sum_kl",
    "sum_kl_sq",
    "sum_dnll",
    "sum_dnll_sq",
    "sum_nll_base",
    "sum_nll_base_sq",
    "sum_nll_new",
    "sum_nll_new_sq",
    "sum_nll_cross",
    "sum_dp",
    "sum_dp_sq",
    "sum_dp_4",
    "top1_agree",
)
NAN = float("nan")


def mean_se(s: float, s2: float, n: int) -> tuple[float, float]:
    """(mean, standard error of the mean) from a sum and a sum of squares."""
    if n < 1:
        return NAN, NAN
    m = s / n
    if n < 2:
        return m, NAN
    var = s2 / n - m * m
    return m, math.sqrt(max(var, 0.0) / (n - 1))


def mean_cov(sa: float, sb: float, sab: float, n: int) -> float:
    """Covariance of two means from Σa, Σb, Σab."""
    if n < 2:
        return NAN
    return (sab / n - (sa / n) * (sb / n)) / (n - 1)


def _exp(v: float) -> float:
    try:
        return math.exp(v)
    except OverflowError:
        return math.inf


def _sqrt(v: float) -> float:
    """sqrt of a variance that rounding may have pushed below 0 (then 0); NaN stays NaN."""
    return NAN if math.isnan(v) else math.sqrt(max(v, 0.0))


def summary(s: dict[str, Any]) -> dict[str, float]:
    """Every mean ± SE of the llama.cpp list from the merged sums."""
    n = int(s["n"])
    out: dict[str, float] = {}
    out["mean_kl"], out["kl_se"] = mean_se(s["sum_kl"], s["sum_kl_sq"], n)
    out["mean_dnll"], out["dnll_se"] = mean_se(s["sum_dnll"], s["sum_dnll_sq"], n)
    lb, lb_se = mean_se(s["sum_nll_base"], s["sum_nll_base_sq"], n)
    ln, ln_se = mean_se(s["sum_nll_new"], s["sum_nll_new_sq"], n)
    cov = mean_cov(s["sum_nll_new"], s["sum_nll_base"], s["sum_nll_cross"], n)
    ppl_b, ppl_n = _exp(lb), _exp(ln)
    out.update(
        mean_nll_base=lb,
        mean_nll_base_se=lb_se,
        mean_nll_new=ln,
        mean_nll_new_se=ln_se,
        ppl_base=ppl_b,
        ppl_base_se=ppl_b * lb_se,
        ppl_new=ppl_n,
        ppl_new_se=ppl_n * ln_se,
        ln_ppl_cov=cov,
    )
    den = ln_se * lb_se
    out["ln_ppl_correlation"] = cov / den if n >= 2 and den > 0 else NAN
    ratio_ln = ln - lb
    # var(ln PPL_new - ln PPL_base) = var of the mean of the per-row NLL differences, taken
    # from their own sums: exactly 0 for identical dumps in any merge order (the form
    # se_n² + se_b² - 2·cov cancels to a rounding residual that depends on the order)
    d_se = out["dnll_se"]
    ratio_ln_se = d_se
    out["ln_ppl_ratio"], out["ln_ppl_ratio_se"] = ratio_ln, ratio_ln_se
    ratio = _exp(ratio_ln)
    out["ppl_ratio"], out["ppl_ratio_se"] = ratio, ratio * ratio_ln_se
    out["ppl_diff"] = ppl_n - ppl_b
    # var(a·X - b·Y) (a, b = the PPLs, X, Y = the mean NLLs) written with D = X - Y:
    # a²·var(D) + (a-b)²·var(Y) + 2a(a-b)·(cov(X,Y) - var(Y)); the same value as
    # u_n² + u_b² - 2ab·cov, without its cancellation when the dumps agree
    a_b = ppl_n - ppl_b
    out["ppl_diff_se"] = _sqrt(
        ppl_n * ppl_n * d_se * d_se
        + a_b * a_b * lb_se * lb_se
        + 2 * ppl_n * a_b * (cov - lb_se * lb_se)
    )
    out["mean_dp"], out["dp_se"] = mean_se(s["sum_dp"], s["sum_dp_sq"], n)
    mse, mse_se = mean_se(s["sum_dp_sq"], s["sum_dp_4"], n)
    rms = _sqrt(mse)
    out["dp_rms"] = rms
    out["dp_rms_se"] = 0.5 / rms * mse_se if rms > 0 else (0.0 if rms == 0 else NAN)
    p = int(s["top1_agree"]) / n if n else NAN
    out["top1_agreement"] = p
    out["top1_agreement_se"] = math.sqrt(p * (1 - p) / (n - 1)) if n >= 2 else NAN
    return out


def exact_percentiles(v: np.ndarray, levels: tuple[tuple[str, float], ...]) -> dict[str, float]:
    """Percentiles of the non-NaN values of v (linear interpolation between order statistics,
    NumPy's default), exact: the order statistics come from the core's radix pre-selection
    (two reads of v, on the thread pool, NaN skipped; see src/select.rs), which leaves v as
    given and takes no copy of it."""
    v = np.require(np.asarray(v, np.float64).reshape(-1), requirements=["C", "A"])
    vals, _ = _core.quantiles(v, [q for _, q in levels])
    return {name: float(x) for (name, _), x in zip(levels, vals)}


class LogHistogram:
    """Mergeable histogram of values on log-spaced bins of |v| in [lo, hi), ``per_decade`` bins
    per decade, with the sign kept (``signed``), |v| < lo counted as 0 and |v| >= hi (or inf)
    as ±hi. A percentile read from it is the geometric centre of the bin holding the order
    statistic, so it is within a factor 10^(1/(2 per_decade)) of it (0.115% for 1000 bins per
    decade), or within lo of 0 in the zero bin, or >= hi in the overflow bin (reported as hi)."""

    def __init__(
        self, lo: float = 1e-15, hi: float = 1e5, per_decade: int = 1000, signed: bool = False
    ) -> None:
        self.lo, self.hi, self.per_decade, self.signed = lo, hi, int(per_decade), signed
        self.nb = round(math.log10(hi / lo) * per_decade)
        # layout: [-overflow, -bins (descending |v|)..., zero, +bins..., +overflow]
        self.counts = np.zeros(2 * self.nb + 3 if signed else self.nb + 2, np.int64)
        self.nan = 0

    @property
    def rel_error(self) -> float:
        """Bound on the relative error of a percentile outside the zero and overflow bins."""
        return float(10 ** (0.5 / self.per_decade) - 1)

    def add(self, v: np.ndarray) -> None:
        """Count the values of v (NaN counted apart) in one pass of the core (on its threads,
        no temporaries; a value on an edge lo·10^(k/per_decade) counts in the bin above)."""
        v = np.require(np.asarray(v, np.float64).reshape(-1), requirements=["C", "A"])
        counts, nan = _core.log_hist(v, self.lo, self.per_decade, self.nb, self.signed)
        self.counts += counts.astype(np.int64, copy=False)
        self.nan += int(nan)

    def merge(self, other: LogHistogram) -> LogHistogram:
        """Add another histogram of the same layout."""
        if other.counts.shape != self.counts.shape:
            raise ValueError("cannot merge histograms of different layouts")
        self.counts += other.counts
        self.nan += other.nan
        return self

    def _value(self, idx: int) -> float:
        def mag(k: int) -> float:  # k in -1 (zero) .. nb (overflow)
            if k < 0:
                return 0.0
            if k >= self.nb:
                return self.hi
            return self.lo * 10 ** ((k + 0.5) / self.per_decade)

        if not self.signed:
            return mag(idx - 1)
        z = self.nb + 1
        return mag(idx - z - 1) if idx > z else (-mag(z - 1 - idx) if idx < z else 0.0)

    def percentiles(self, levels: tuple[tuple[str, float], ...]) -> dict[str, float]:
        """Percentiles (same rank rule as the exact ones) from the bins."""
        cum = np.cumsum(self.counts)
        n = int(cum[-1]) if cum.size else 0
        out: dict[str, float] = {}
        for name, q in levels:
            if n == 0:
                out[name] = NAN
                continue
            h = q * (n - 1)
            i = min(math.floor(h), n - 1)
            f = h - i
            vi = self._value(int(np.searchsorted(cum, i, side="right")))
            if f == 0 or i + 1 >= n:
                out[name] = vi
            else:
                vj = self._value(int(np.searchsorted(cum, i + 1, side="right")))
                out[name] = (1 - f) * vi + f * vj
        return out

    def coarse(self, per_decade: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """(edges, counts) of the unsigned histogram merged to ``per_decade`` bins per decade,
        trimmed to the occupied range (for the plot); the zero bin is dropped."""
        assert not self.signed
        step = self.per_decade // per_decade
        body = self.counts[1 : self.nb + 1]
        nb = body.size // step
        c = body[: nb * step].reshape(nb, step).sum(axis=1)
        c[-1] += body[nb * step :].sum() + self.counts[-1]
        edges = self.lo * 10 ** (np.arange(nb + 1) / per_decade)
        nz = np.nonzero(c)[0]
        if nz.size == 0:
            return edges[:1], c[:0]
        a, b = nz[0], nz[-1] + 1
        return edges[a : b + 1], c[a:b]


class CompareAccumulator:
    """Sums from the core plus what the percentiles need: while ``exact``, the per-row KL and
    Δp values (16 bytes per scored row); otherwise log-spaced histograms. The values seen are
    always the histograms' counts plus the values held, so the histograms are filled only
    when the exact values are dropped (a merge past ``max_exact_rows``): per chunk, the
    exact mode costs a copy, not a histogram pass."""

    def __init__(self, exact: bool, max_exact_rows: int | None = None, capacity: int = 0) -> None:
        self.sums: dict[str, float] = {k: 0 for k in SUM_KEYS}
        self.exact = exact
        # merged partial results drop to histograms past this many held rows
        self.max_exact_rows = max_exact_rows
        self._kl: list[np.ndarray] = []
        self._dp: list[np.ndarray] = []
        # one run of known size: the values go straight into two arrays of that many rows
        # (pages an ignored row never fills are never touched), no list to concatenate
        self._buf: tuple[np.ndarray, np.ndarray] | None = (
            (np.empty(capacity), np.empty(capacity)) if exact and capacity > 0 else None
        )
        self._n_buf = 0
        self.kl_hist = LogHistogram()
        self.dp_hist = LogHistogram(hi=10.0, signed=True)

    def _unbuffer(self) -> None:
        """The buffered values as list parts (before a merge changes the set of values)."""
        if self._buf is not None:
            n = self._n_buf
            self._kl, self._dp = [self._buf[0][:n].copy()], [self._buf[1][:n].copy()]
            self._buf, self._n_buf = None, 0

    def _drop_exact(self) -> None:
        """Moves the held values into the histograms and stops holding values."""
        self._unbuffer()
        for v in self._kl:
            self.kl_hist.add(v)
        for v in self._dp:
            self.dp_hist.add(v)
        self.exact, self._kl, self._dp = False, [], []

    def merge(self, other: CompareAccumulator) -> CompareAccumulator:
        """Adds another part's accumulator (shards, blocks, workers). Percentiles stay exact
        while both parts hold their rows and the total is within ``max_exact_rows``."""
        for k in SUM_KEYS:
            self.sums[k] += other.sums[k]
        self.kl_hist.merge(other.kl_hist)
        self.dp_hist.merge(other.dp_hist)
        self._unbuffer()
        other._unbuffer()
        held = sum(len(v) for v in self._kl) + sum(len(v) for v in other._kl)
        if (
            self.exact
            and other.exact
            and (self.max_exact_rows is None or held <= self.max_exact_rows)
        ):
            self._kl += other._kl
            self._dp += other._dp
        else:
            self._drop_exact()
            for v in other._kl:
                self.kl_hist.add(v)
            for v in other._dp:
                self.dp_hist.add(v)
        return self

    def slot(self, rows: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Views of the next ``rows`` held KL and Δp values, for the core to write a chunk's
        per-row values into (NaN for an ignored row; the percentiles skip NaN), or None when
        the values are not held in one buffer (then :meth:`add`)."""
        if not self.exact or self._buf is None:
            return None
        a = self._n_buf
        if a + rows > self._buf[0].size:
            return None
        return self._buf[0][a : a + rows], self._buf[1][a : a + rows]

    def add_filled(self, r: dict[str, Any], rows: int) -> None:
        """One chunk whose values the core wrote into :meth:`slot`'s views."""
        for k in SUM_KEYS:
            self.sums[k] += r[k]
        self._n_buf += rows

    def add(self, r: dict[str, Any], kl: np.ndarray, dp: np.ndarray, same: np.ndarray) -> None:
        """One chunk: the core's sums and its per-row outputs (same = -1 marks ignored rows)."""
        for k in SUM_KEYS:
            self.sums[k] += r[k]
        scored = same >= 0
        if self.exact and self._buf is not None:
            a, n = self._n_buf, int(np.count_nonzero(scored))
            if n == scored.size:  # no ignored row: a plain copy (compress is ~3 ns a value)
                self._buf[0][a : a + n] = kl
                self._buf[1][a : a + n] = dp
            else:
                np.compress(scored, kl, out=self._buf[0][a : a + n])
                np.compress(scored, dp, out=self._buf[1][a : a + n])
            self._n_buf += n
            return
        kv, dv = kl[scored], dp[scored]  # boolean indexing: copies
        if self.exact:
            self._kl.append(kv)
            self._dp.append(dv)
        else:
            self.kl_hist.add(kv)
            self.dp_hist.add(dv)

    def _held(self, parts: list[np.ndarray]) -> np.ndarray:
        if self._buf is not None:
            return self._buf[0 if parts is self._kl else 1][: self._n_buf]
        if not parts:
            return np.zeros(0)
        if len(parts) > 1:
            parts[:] = [np.concatenate(parts)]  # once: later calls reuse it
        return parts[0]

    def plot_hist(self, per_decade: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """(edges, counts) of KL for the report's histogram, ``per_decade`` bins per decade."""
        if not self.exact:
            return self.kl_hist.coarse(per_decade)
        h = LogHistogram(per_decade=per_decade)
        h.add(self._held(self._kl))
        return h.coarse(per_decade)

    def percentiles(self) -> tuple[dict[str, float], dict[str, float], str, float | None]:
        """(KL percentiles, Δp percentiles, method, relative error bound or None)."""
        if self.exact:
            return (
                exact_percentiles(self._held(self._kl), KL_LEVELS),
                exact_percentiles(self._held(self._dp), DP_LEVELS),
                "exact",
                None,
            )
        return (
            self.kl_hist.percentiles(KL_LEVELS),
            self.dp_hist.percentiles(DP_LEVELS),
            "histogram",
            self.kl_hist.rel_error,
        )
