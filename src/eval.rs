//! One-pass metrics over a prediction dump (loss, rank, entropy, Brier, calibration bins).
//! Sums are mergeable, so chunks, shards and processes combine. The two-dump comparison is in
//! [`crate::compare`] (re-exported here).

use crate::error::{Error, Result};
use crate::kernel;
use crate::loss::class_of;
use crate::parallel;
use crate::rows::{RowStats, Rows, Want};
use crate::simd::{self, BF16, F16};
use crate::stage::{self, Scratch};
use crate::tensor::{check_target_shape, DType, IntView, View};
use std::ops::Range;

pub use crate::compare::{compare, CompareSums};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Logits,
    LogProbs,
    Probs,
}

impl Kind {
    pub fn parse(s: &str) -> Result<Kind> {
        match s {
            "logits" => Ok(Kind::Logits),
            "log_probs" => Ok(Kind::LogProbs),
            "probs" => Ok(Kind::Probs),
            _ => Err(Error::Value(format!(
                "kind must be 'logits', 'log_probs' or 'probs', got {s:?}"
            ))),
        }
    }
}

#[derive(Clone, Debug)]
pub struct EvalOptions {
    pub kind: Kind,
    pub ignore_index: i64,
    pub top_k: Vec<usize>,
    pub n_bins: usize,
    /// Ties in rank: false counts a tie for the target (rank = #classes above it); true is the
    /// argmax rule (torch.argmax, first maximal index wins): ties before the target count too.
    pub ties_first: bool,
}

/// Mergeable sums of the metrics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EvalSums {
    pub n: u64,
    pub n_ignored: u64,
    pub sum_nll: f64,
    pub sum_nll_sq: f64,
    pub sum_entropy: f64,
    pub sum_brier: f64,
    pub topk_correct: Vec<u64>,
    pub bin_count: Vec<u64>,
    /// Σ confidence per bin in fixed point (units of 2^-60), so that the sums, and ECE / MCE
    /// (small differences of them), come out the same for any chunking or merge order.
    pub bin_conf_fixed: Vec<u128>,
    pub bin_correct: Vec<u64>,
    /// Rows whose confidence is NaN or infinite (counted in bin 0; they make ECE/MCE NaN).
    pub conf_nonfinite: u64,
    /// Scored rows whose NLL is +inf (a target probability of 0).
    pub nll_inf: u64,
}

/// A confidence in units of 2^-60: exact for conf >= 2^-7, below off by < 2^-60. (Values
/// above 1 only come from invalid probabilities; capped below 16 to fit the u64.)
pub(crate) fn conf_fixed(conf: f64) -> u64 {
    (conf.clamp(0.0, 15.0) * 2f64.powi(60)) as u64
}

impl EvalSums {
    fn new(opt: &EvalOptions) -> Self {
        EvalSums {
            topk_correct: vec![0; opt.top_k.len()],
            bin_count: vec![0; opt.n_bins],
            bin_conf_fixed: vec![0; opt.n_bins],
            bin_correct: vec![0; opt.n_bins],
            ..Default::default()
        }
    }

    pub fn merge(&mut self, o: &EvalSums) {
        self.n += o.n;
        self.n_ignored += o.n_ignored;
        self.conf_nonfinite += o.conf_nonfinite;
        self.nll_inf += o.nll_inf;
        self.sum_nll += o.sum_nll;
        self.sum_nll_sq += o.sum_nll_sq;
        self.sum_entropy += o.sum_entropy;
        self.sum_brier += o.sum_brier;
        let add = |a: &mut Vec<u64>, b: &Vec<u64>| a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        add(&mut self.topk_correct, &o.topk_correct);
        add(&mut self.bin_count, &o.bin_count);
        add(&mut self.bin_correct, &o.bin_correct);
        for (x, y) in self.bin_conf_fixed.iter_mut().zip(&o.bin_conf_fixed) {
            *x = x.saturating_add(*y);
        }
    }
}

/// What one scored row contributes.
struct RowMetrics {
    nll: f64,
    rank: u64,
    entropy: f64,
    brier: f64,
    conf: f64,
}

/// Metrics of a probabilities row: one SIMD pass for 16/32-bit rows, float64 for float64.
fn probs_metrics(rw: &mut Rows, i: usize, k: usize) -> RowMetrics {
    let xt = rw.value(i, k);
    let ps = rw.probs(i, xt);
    RowMetrics {
        nll: kernel::nll_of_prob(xt),
        rank: ps.gt,
        entropy: -ps.plogp,
        brier: ps.sq - 2.0 * xt + 1.0,
        conf: ps.pmax,
    }
}

/// Metrics of an ordinary logits row (finite max and sum) given ln s and exp(x_t - m):
/// κ = 1/s, and m - lse = -ln s.
fn finish_logits(xt: f64, rs: &RowStats, ln_s: f64, e_t: f64) -> RowMetrics {
    let (nll, entropy, brier, conf, rank) = finish_logits_parts(xt, rs.m, &rs.st, ln_s, e_t);
    RowMetrics {
        nll,
        rank: rank as u64,
        entropy,
        brier,
        conf,
    }
}

/// [`finish_logits`] from the row's max `m` and statistics: (NLL, entropy, Brier, confidence,
/// rank as f64), for the kernels' long-row groups (`kernel::eval_long`).
#[inline(always)]
pub(crate) fn finish_logits_parts(
    xt: f64,
    m: f64,
    st: &crate::kernel::Stats,
    ln_s: f64,
    e_t: f64,
) -> (f64, f64, f64, f64, f64) {
    let kappa = 1.0 / st.s;
    (
        (m - xt) + ln_s,
        ln_s - kappa * st.t,
        kappa * (kappa * st.q - 2.0 * e_t) + 1.0,
        kappa,
        st.gt as f64,
    )
}

/// Metrics of a log-probabilities row, or of a logits row that is not ordinary (inf/NaN: the
/// ordinary ones go to [`finish_logits`]), from its statistics and target value.
fn finish(kind: Kind, xt: f64, rs: &RowStats) -> RowMetrics {
    let st = rs.st;
    // p_c = e_c·κ with e_c = exp(x_c - m) and κ = exp(m - L), L = lse for logits (+inf
    // entries share the mass: κ = 1/s), 0 for log-probabilities.
    let (m_minus_l, kappa, nll) = if kind == Kind::Logits {
        let l = rs.lse();
        (rs.m - l, 1.0 / st.s, l - xt)
    } else {
        (rs.m, rs.m.exp(), -xt)
    };
    RowMetrics {
        nll,
        rank: st.gt,
        entropy: -kappa * (st.t + m_minus_l * st.s),
        brier: kappa * kappa * st.q - 2.0 * (-nll).exp() + 1.0,
        conf: kappa,
    }
}

/// Most calibration bins `evaluate` takes (a bin index must fit the lanes' u32).
pub const MAX_BINS: usize = 1 << 24;

/// Rows whose statistics are taken and finished together (see [`evaluate`]).
const BATCH: usize = 16;

/// Per-row outputs of [`evaluate`]: NLL, rank and (optionally) confidence, one per row (NaN,
/// -1 and NaN for ignored rows).
pub struct PerRow<'a> {
    pub nll: &'a mut [f64],
    pub rank: &'a mut [i64],
    pub conf: Option<&'a mut [f64]>,
}

impl PerRow<'_> {
    fn set(&mut self, idx: usize, nll: f64, rank: i64, conf: f64) {
        self.nll[idx] = nll;
        self.rank[idx] = rank;
        if let Some(c) = self.conf.as_deref_mut() {
            c[idx] = conf;
        }
    }
}

/// The metrics of a group of 16 scored short float64 logits rows `i..i + 16` (C in
/// 1..=[`kernel::F64_LANES_MAX_C`]) straight from their block's vector statistics
/// ([`Rows::f64_block`]): the rank counts in lanes, the finishing by libm in float64, the same
/// bits as the row-by-row [`Rows::stats`] and [`finish_logits`]. False (and `m` partly
/// written) when a row is not ordinary, for the caller's general path.
fn f64_group(
    rw: &mut Rows,
    i: usize,
    rows: &[Option<(usize, f64)>; BATCH],
    m: &mut kernel::Metrics16,
) -> bool {
    const L: usize = kernel::F64_LANES;
    let b = rw.f64_block(i, true);
    if b.at != i || b.n != L {
        return false;
    }
    let mut xt = [0f64; L];
    for l in 0..L {
        let Some((_, v)) = rows[l] else { return false };
        xt[l] = v;
        // with a finite max, s is NaN exactly when the row holds a NaN (see `stats_lanes`)
        if !(b.st.m[l].is_finite() && b.st.s[l].is_finite()) {
            return false;
        }
    }
    let mut gt = [0u64; L];
    for col in b.cols.chunks_exact(L) {
        for l in 0..L {
            gt[l] += u64::from(col[l] > xt[l]);
        }
    }
    for l in 0..L {
        let st = kernel::Stats {
            m: b.st.m[l] as f32,
            s: b.st.s[l],
            t: b.st.t[l],
            q: b.st.q[l],
            gt: gt[l],
            nan: false,
        };
        let mx = b.st.m[l];
        (m.nll[l], m.ent[l], m.brier[l], m.conf[l], m.rank[l]) =
            finish_logits_parts(xt[l], mx, &st, st.s.ln(), (xt[l] - mx).exp());
    }
    true
}

/// Adds one scored row's metrics to the sums (and its per-row outputs at `idx`).
#[inline]
fn add_row(
    acc: &mut EvalSums,
    o: &mut Option<PerRow>,
    idx: usize,
    m: &RowMetrics,
    opt: &EvalOptions,
) {
    let nb = opt.n_bins;
    acc.n += 1;
    acc.nll_inf += u64::from(m.nll == f64::INFINITY);
    acc.sum_nll += m.nll;
    acc.sum_nll_sq += m.nll * m.nll;
    acc.sum_entropy += m.entropy;
    acc.sum_brier += m.brier;
    for (c, &kk) in acc.topk_correct.iter_mut().zip(&opt.top_k) {
        *c += (m.rank < kk as u64) as u64;
    }
    let b = if m.conf.is_finite() {
        // conf in [0, 1] for valid inputs; the cast saturates (NaN excluded above)
        let b = ((m.conf * nb as f64) as usize).min(nb - 1);
        // a u128 of units of 2^-60 cannot overflow before 2^64 rows
        acc.bin_conf_fixed[b] = acc.bin_conf_fixed[b].wrapping_add(u128::from(conf_fixed(m.conf)));
        b
    } else {
        acc.conf_nonfinite += 1;
        0
    };
    acc.bin_count[b] += 1;
    acc.bin_correct[b] += (m.rank == 0) as u64;
    if let Some(o) = o.as_mut() {
        o.set(idx, m.nll, m.rank as i64, m.conf);
    }
}

/// Whether `evaluate` takes the rows-in-lanes metrics for this input: a SIMD path, 16/32-bit
/// rows of at most `LANES_MAX_C` classes.
fn lanes_apply(x: &View) -> bool {
    let c = x.cols();
    x.dtype != DType::F64
        && (1..=kernel::LANES_MAX_C).contains(&c)
        && simd::current() != simd::Path::Scalar
}

/// Metrics of `x` `[..., C]` against `t` `[...]`, with optional per-row outputs.
///
/// Rows are taken 16 at a time: their targets decoded, their statistics taken (rows in SIMD
/// lanes for short rows, the row kernel otherwise and for rows that are not ordinary), then
/// finished together (one vector log and exp per 16 rows). A row's statistics never depend on
/// which rows share its group, so whole, chunked and merged runs score every row the same.
pub fn evaluate(
    x: &View,
    t: &IntView,
    opt: &EvalOptions,
    per_row: Option<PerRow>,
) -> Result<EvalSums> {
    check_target_shape(x, t.shape(), "target")?;
    if opt.n_bins == 0 || opt.n_bins > MAX_BINS {
        return Err(Error::Value(format!(
            "n_bins must be in [1, {MAX_BINS}], got {}",
            opt.n_bins
        )));
    }
    if let Some(&k) = opt.top_k.iter().find(|&&k| k == 0) {
        return Err(Error::Value(format!("top_k values must be >= 1, got {k}")));
    }
    let lanes = lanes_apply(x);
    let c = x.cols();
    let path = simd::current();
    // The f32 finishing (vector ln and exp) is for 16/32-bit inputs; float64 rows are
    // finished in float64 so that they are exact.
    let f32_finish = x.dtype != DType::F64;
    let chunk = |r: Range<usize>, mut o: Option<PerRow>| -> Result<EvalSums> {
        let mut rw = Rows::new(x);
        let mut scratch = Scratch::default();
        let mut lane = kernel::LaneMetrics::default();
        let mut tbuf: Vec<i64> = Vec::new();
        // per-lane f64 sums of NLL, NLL², entropy and Brier of the clean lane groups
        let mut lacc = [[0f64; BATCH]; 4];
        let mut acc = EvalSums::new(opt);
        // the clean groups' histogram (see `kernel::Hist`), folded into acc at the end (the
        // lanes and the 16/32-bit row groups use it: none for float64)
        let ways = if opt.n_bins <= 256 { 4 } else { 1 };
        // (the row groups are summed there only for ordinary logits rows, ties counted for
        // the target: see `clean` below)
        // With one way (n_bins > 256) the groups add to acc's own bins: no second copy.
        let group_sums = opt.kind == Kind::Logits && !opt.ties_first;
        let grouped = f32_finish && group_sums;
        // short float64 logits rows: whole groups from their block (`f64_group`)
        let f64_groups = !f32_finish && group_sums && (1..=kernel::F64_LANES_MAX_C).contains(&c);
        let hb = if ways > 1 && (lanes || group_sums) {
            ways * opt.n_bins
        } else {
            0
        };
        let (mut h_count, mut h_conf, mut h_correct) =
            (vec![0u64; hb], vec![0u128; hb], vec![0u64; hb]);
        macro_rules! hist {
            () => {
                if ways == 1 {
                    kernel::Hist {
                        ways,
                        count: &mut acc.bin_count,
                        conf: &mut acc.bin_conf_fixed,
                        correct: &mut acc.bin_correct,
                    }
                } else {
                    kernel::Hist {
                        ways,
                        count: &mut h_count,
                        conf: &mut h_conf,
                        correct: &mut h_correct,
                    }
                }
            };
        }
        let lp = match opt.kind {
            Kind::Logits => kernel::LOGITS,
            Kind::LogProbs => kernel::LOG_PROBS,
            Kind::Probs => kernel::PROBS,
        };
        // runs of clean groups in one kernel loop (`stage::eval_run`: short rows in lanes,
        // longer logits rows by the inlined row kernel); after a group it stops at, the next
        // try waits `backoff` rows, doubled while tries fail at once (runs of ignored rows)
        // and reset by a try that gets anywhere
        let long_ok = grouped && c > kernel::LANES_MAX_C && c <= 2 * crate::rows::SEGMENT;
        let run_ok = (lanes && !opt.ties_first) || long_ok;
        let (mut retry, mut backoff) = (r.start, BATCH);
        let mut i = r.start;
        while i < r.end {
            if run_ok && i >= retry && r.end - i >= BATCH {
                let k = i - r.start;
                let outs = o.as_mut().map(|o| {
                    (
                        &mut o.nll[k..],
                        &mut o.rank[k..],
                        o.conf.as_deref_mut().map(|c| &mut c[k..]),
                    )
                });
                let (got, [nf, ni]) = {
                    let mut hist = hist!();
                    let sums = (
                        &opt.top_k[..],
                        &mut lacc,
                        &mut acc.topk_correct[..],
                        &mut hist,
                    );
                    let (ig, sc) = (opt.ignore_index, &mut scratch);
                    match x.dtype {
                        DType::F32 => {
                            stage::eval_run::<f32>(path, x, t, i..r.end, ig, lp, sums, outs, sc)
                        }
                        DType::F16 => {
                            stage::eval_run::<F16>(path, x, t, i..r.end, ig, lp, sums, outs, sc)
                        }
                        DType::BF16 => {
                            stage::eval_run::<BF16>(path, x, t, i..r.end, ig, lp, sums, outs, sc)
                        }
                        DType::F64 => unreachable!("the lanes and the row groups exclude float64"),
                    }
                };
                acc.n += got as u64;
                (acc.conf_nonfinite, acc.nll_inf) = (acc.conf_nonfinite + nf, acc.nll_inf + ni);
                i += got;
                backoff = if got == 0 {
                    (2 * backoff).min(4096)
                } else {
                    BATCH
                };
                retry = i + backoff;
                if i >= r.end {
                    break;
                }
            }
            let g = (r.end - i).min(BATCH);
            // targets: (class, target value) of scored rows
            let mut rows: [Option<(usize, f64)>; BATCH] = [None; BATCH];
            // targets widened in one typed pass; class_of (with its exact error) only for
            // values that are not plainly in range
            let tv = t.to_i64(i, g, opt.ignore_index, &mut tbuf);
            for (l, slot) in rows.iter_mut().enumerate().take(g) {
                let v = tv[l];
                let decoded = if v != opt.ignore_index && (v as u64) < c as u64 {
                    Some(v as usize)
                } else {
                    class_of(t, x, i + l, opt.ignore_index)?
                };
                match decoded {
                    None => {
                        acc.n_ignored += 1;
                        if let Some(o) = o.as_mut() {
                            o.set(i + l - r.start, f64::NAN, -1, f64::NAN);
                        }
                    }
                    // the lanes pick the target value themselves
                    Some(k) => *slot = Some((k, if lanes { f64::NAN } else { rw.value(i + l, k) })),
                }
            }
            // a clean group's metrics `m`: summed in one vector pass, its per-row outputs
            // written, and on to the next group
            macro_rules! sum_clean {
                ($m:expr, $rank:expr) => {{
                    let m = &$m;
                    let mut hist = hist!();
                    let [nf, ni] = kernel::eval_sums16::<f32>(
                        path,
                        m,
                        &opt.top_k,
                        &mut lacc,
                        &mut acc.topk_correct,
                        &mut hist,
                    );
                    (acc.conf_nonfinite, acc.nll_inf) = (acc.conf_nonfinite + nf, acc.nll_inf + ni);
                    acc.n += BATCH as u64;
                    if let Some(o) = o.as_mut() {
                        for l in 0..BATCH {
                            o.set(i + l - r.start, m.nll[l], $rank(l), m.conf[l]);
                        }
                    }
                    i += g;
                    continue;
                }};
            }
            if f64_groups && g == BATCH {
                let mut m = kernel::Metrics16::default();
                if f64_group(&mut rw, i, &rows, &mut m) {
                    sum_clean!(m, |l: usize| m.rank[l] as i64);
                }
            }
            if opt.kind == Kind::Probs && !lanes {
                for (l, row) in rows.iter().enumerate().take(g) {
                    if let Some((k, _)) = *row {
                        let mut m = probs_metrics(&mut rw, i + l, k);
                        if opt.ties_first {
                            m.rank += rw.count_eq_before(i + l, k);
                        }
                        add_row(&mut acc, &mut o, i + l - r.start, &m, opt);
                    }
                }
                i += g;
                continue;
            }
            if lanes {
                // short rows: the metrics of all 16 lanes in SIMD, the rows that are not
                // ordinary again by the row kernel
                let mut kf = [0f32; BATCH];
                for (l, row) in rows.iter().enumerate().take(g) {
                    if let Some((k, _)) = row {
                        kf[l] = *k as f32;
                    }
                }
                let lm = &mut lane;
                match x.dtype {
                    DType::F32 => {
                        stage::eval_block::<f32>(path, x, i, g, &kf, lp, lm, &mut scratch);
                    }
                    DType::F16 => {
                        stage::eval_block::<F16>(path, x, i, g, &kf, lp, lm, &mut scratch);
                    }
                    DType::BF16 => {
                        stage::eval_block::<BF16>(path, x, i, g, &kf, lp, lm, &mut scratch);
                    }
                    DType::F64 => unreachable!("lanes_apply excludes float64"),
                }
                let clean = g == BATCH
                    && !opt.ties_first
                    && (0..BATCH).all(|l| rows[l].is_some() && lane.ok[l] != 0.0);
                if clean {
                    // every row scored and ordinary: the sums in a vector pass over the lanes
                    let mut m = kernel::Metrics16::default();
                    let mut hist = hist!();
                    let [nf, ni] = kernel::eval_clean16::<f32>(
                        path,
                        &lane,
                        lp,
                        &opt.top_k,
                        &mut lacc,
                        &mut acc.topk_correct,
                        &mut hist,
                        &mut m,
                    );
                    (acc.conf_nonfinite, acc.nll_inf) = (acc.conf_nonfinite + nf, acc.nll_inf + ni);
                    acc.n += BATCH as u64;
                    if let Some(o) = o.as_mut() {
                        for l in 0..BATCH {
                            o.set(i + l - r.start, m.nll[l], lane.rank[l] as i64, m.conf[l]);
                        }
                    }
                    i += g;
                    continue;
                }
                for l in 0..g {
                    let Some((k, _)) = rows[l] else { continue };
                    let mut m = if lane.ok[l] == 0.0 && opt.kind == Kind::Probs {
                        probs_metrics(&mut rw, i + l, k)
                    } else if lane.ok[l] == 0.0 {
                        let xt = rw.value(i + l, k);
                        let rs = rw.stats(i + l, xt, Want { eval: true });
                        if opt.kind == Kind::Logits && rs.finite() {
                            finish_logits(xt, &rs, rs.st.s.ln(), (xt - rs.m).exp())
                        } else {
                            finish(opt.kind, xt, &rs)
                        }
                    } else {
                        RowMetrics {
                            nll: if opt.kind == Kind::Probs {
                                -kernel::ln_f32(lane.nll[l])
                            } else {
                                lane.nll[l] as f64
                            },
                            rank: lane.rank[l] as u64,
                            entropy: lane.ent[l] as f64,
                            brier: lane.brier[l] as f64,
                            conf: match opt.kind {
                                Kind::LogProbs => kernel::exp_f32_le0(lane.conf[l]),
                                Kind::Probs => lane.conf[l] as f64,
                                Kind::Logits => 1.0 / lane.conf[l] as f64,
                            },
                        }
                    };
                    if opt.ties_first {
                        m.rank += rw.count_eq_before(i + l, k);
                    }
                    add_row(&mut acc, &mut o, i + l - r.start, &m, opt);
                }
                i += g;
                continue;
            }
            // statistics by the row kernel
            let mut st: [Option<RowStats>; BATCH] = [None; BATCH];
            for l in 0..g {
                let Some((_, xt)) = rows[l] else { continue };
                st[l] = Some(rw.stats(i + l, xt, Want { eval: true }));
            }
            // finishing: ordinary logits rows take ln s and exp(x_t - m) in SIMD (16/32-bit;
            // float64 rows by libm, exact)
            let ordinary = |rs: &RowStats| opt.kind == Kind::Logits && rs.finite();
            let fast = |rs: &RowStats| f32_finish && ordinary(rs);
            let (mut ln_s, mut e_t) = ([1f32; BATCH], [0f32; BATCH]);
            if f32_finish {
                for l in 0..g {
                    if let (Some((_, xt)), Some(rs)) = (rows[l], st[l]) {
                        if fast(&rs) {
                            (ln_s[l], e_t[l]) = (rs.st.s as f32, (xt - rs.m) as f32);
                        }
                    }
                }
                kernel::ln_exp16::<f32>(path, &mut ln_s, &mut e_t);
            }
            let clean = g == BATCH
                && group_sums
                && (0..BATCH).all(|l| rows[l].is_some() && st[l].as_ref().is_some_and(ordinary));
            if clean {
                // every row scored and ordinary: finished here, summed in one vector pass
                // (the same per-row metrics as the row-by-row finishing below)
                let mut m = kernel::Metrics16::default();
                for l in 0..BATCH {
                    let (Some((_, xt)), Some(rs)) = (rows[l], st[l]) else {
                        unreachable!("a clean group")
                    };
                    let rm = if f32_finish {
                        finish_logits(xt, &rs, ln_s[l] as f64, e_t[l] as f64)
                    } else {
                        finish_logits(xt, &rs, rs.st.s.ln(), (xt - rs.m).exp())
                    };
                    (m.nll[l], m.ent[l], m.brier[l], m.conf[l]) =
                        (rm.nll, rm.entropy, rm.brier, rm.conf);
                    m.rank[l] = rm.rank as f64;
                }
                sum_clean!(m, |l: usize| m.rank[l] as i64);
            }
            for l in 0..g {
                let (Some((k, xt)), Some(rs)) = (rows[l], st[l]) else {
                    continue;
                };
                let mut m = if fast(&rs) {
                    finish_logits(xt, &rs, ln_s[l] as f64, e_t[l] as f64)
                } else if opt.kind == Kind::Logits && rs.finite() {
                    finish_logits(xt, &rs, rs.st.s.ln(), (xt - rs.m).exp())
                } else {
                    finish(opt.kind, xt, &rs)
                };
                if opt.ties_first {
                    m.rank += rw.count_eq_before(i + l, k);
                }
                add_row(&mut acc, &mut o, i + l - r.start, &m, opt);
            }
            i += g;
        }
        for (k, b) in (0..hb).map(|k| (k, k % opt.n_bins)) {
            acc.bin_count[b] += h_count[k];
            acc.bin_conf_fixed[b] = acc.bin_conf_fixed[b].wrapping_add(h_conf[k]);
            acc.bin_correct[b] += h_correct[k];
        }
        let lane_sum = |a: &[f64; BATCH]| a.iter().sum::<f64>();
        acc.sum_nll += lane_sum(&lacc[0]);
        acc.sum_nll_sq += lane_sum(&lacc[1]);
        acc.sum_entropy += lane_sum(&lacc[2]);
        acc.sum_brier += lane_sum(&lacc[3]);
        Ok(acc)
    };
    let n = x.rows();
    let per = parallel::chunk_rows(x.cols() * x.dtype.size());
    let parts: Vec<Result<EvalSums>> = match per_row {
        Some(pr) => {
            let PerRow { nll, rank, conf } = pr;
            if nll.len() != n || rank.len() != n || conf.as_ref().is_some_and(|c| c.len() != n) {
                return Err(Error::Shape(format!(
                    "per-row outputs must have {n} elements"
                )));
            }
            // one PerRow per chunk, split off in order
            let mut outs = Vec::new();
            let (mut a, mut b, mut cf) = (nll, rank, conf);
            for rg in parallel::chunks(n, per) {
                let len = rg.len();
                let (a1, a2) = std::mem::take(&mut a).split_at_mut(len);
                let (b1, b2) = std::mem::take(&mut b).split_at_mut(len);
                let c1 = match cf.take() {
                    Some(c) => {
                        let (c1, c2) = c.split_at_mut(len);
                        cf = Some(c2);
                        Some(c1)
                    }
                    None => None,
                };
                (a, b) = (a2, b2);
                outs.push((
                    rg,
                    PerRow {
                        nll: a1,
                        rank: b1,
                        conf: c1,
                    },
                ));
            }
            parallel::map_items(outs, per, |(rg, o)| chunk(rg, Some(o)))
        }
        None => parallel::map_chunks(n, per, |r| chunk(r, None)),
    };
    let mut total = EvalSums::new(opt);
    for p in parts {
        total.merge(&p?);
    }
    Ok(total)
}
