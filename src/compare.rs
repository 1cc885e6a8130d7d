//! The two-dump comparison (llama.cpp `perplexity --kl-divergence` statistics): per row
//! KL(base || new), Δp = p_new(t) - p_base(t), both NLLs and whether the argmaxes agree, with
//! mergeable sums of them, reading each dump once.
//!
//! KL is that of the rows renormalised (for every kind: log-probabilities and probabilities
//! of a low-precision dump are off 1 by rounding, which would otherwise add Σq - Σp, of
//! either sign and up to ~1e-3 for bfloat16, to a divergence that can be 1e-5); the NLLs and
//! Δp use the values as given, as `evaluate` reads them. KL is summed in the form Σ_j p_j·f(r_j), f(r) = e^r - 1 - r >= 0, r_j = ln q_j - ln p_j
//! (p base, q new). It equals Σ p (ln p - ln q) because Σ q = Σ p = 1, every term is >= 0
//! (so a row's KL is never negative and identical rows give exactly 0), and an error ε in the
//! normalisers moves it only by about ε·KL + ε²/2 instead of ε. f is a series for |r| <= 1/2
//! (no cancellation), and q_j - p_j - p_j·r_j otherwise.

use crate::compare_lanes as lanes;
use crate::error::{Error, Result};
use crate::eval::Kind;
use crate::kernel;
use crate::loss::class_of;
use crate::parallel;
use crate::rows::{RowStats, Rows, Want};
use crate::simd::{self, Elem, Isa, Path, BF16, F16};
use crate::stage;
use crate::tensor::{check_target_shape, DType, IntView, View};
use std::ops::Range;

/// Mergeable sums of a two-dump comparison (over scored rows).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CompareSums {
    pub n: u64,
    pub n_ignored: u64,
    /// Σ KL(p_base || p_new) and Σ KL²
    pub sum_kl: f64,
    pub sum_kl_sq: f64,
    /// Σ (nll_new - nll_base) and its square
    pub sum_dnll: f64,
    pub sum_dnll_sq: f64,
    /// Σ nll_base, Σ nll_base², Σ nll_new, Σ nll_new², Σ nll_base·nll_new
    pub sum_nll_base: f64,
    pub sum_nll_base_sq: f64,
    pub sum_nll_new: f64,
    pub sum_nll_new_sq: f64,
    pub sum_nll_cross: f64,
    /// Σ Δp, Σ Δp², Σ Δp⁴ with Δp = p_new(t) - p_base(t)
    pub sum_dp: f64,
    pub sum_dp_sq: f64,
    pub sum_dp_4: f64,
    /// Rows whose argmax (first maximal index) agrees.
    pub top1_agree: u64,
}

impl CompareSums {
    pub fn merge(&mut self, o: &CompareSums) {
        self.n += o.n;
        self.n_ignored += o.n_ignored;
        self.sum_kl += o.sum_kl;
        self.sum_kl_sq += o.sum_kl_sq;
        self.sum_dnll += o.sum_dnll;
        self.sum_dnll_sq += o.sum_dnll_sq;
        self.sum_nll_base += o.sum_nll_base;
        self.sum_nll_base_sq += o.sum_nll_base_sq;
        self.sum_nll_new += o.sum_nll_new;
        self.sum_nll_new_sq += o.sum_nll_new_sq;
        self.sum_nll_cross += o.sum_nll_cross;
        self.sum_dp += o.sum_dp;
        self.sum_dp_sq += o.sum_dp_sq;
        self.sum_dp_4 += o.sum_dp_4;
        self.top1_agree += o.top1_agree;
    }
}

/// Per-row outputs, one element per row of the dumps (each optional): ignored rows get NaN
/// and `same = -1`.
#[derive(Default)]
pub struct CompareOut<'a> {
    pub kl: Option<&'a mut [f64]>,
    pub dp: Option<&'a mut [f64]>,
    pub nll_base: Option<&'a mut [f64]>,
    pub nll_new: Option<&'a mut [f64]>,
    /// 1 if the argmaxes agree, 0 if not, -1 for an ignored row.
    pub same: Option<&'a mut [i8]>,
}

/// `s` cut into `k` pieces of `per` elements (the last shorter), or `k` Nones.
fn pieces<T>(s: Option<&mut [T]>, per: usize, k: usize) -> Vec<Option<&mut [T]>> {
    match s {
        Some(s) => s.chunks_mut(per).map(Some).collect(),
        None => (0..k).map(|_| None).collect(),
    }
}

impl<'a> CompareOut<'a> {
    fn len_ok(&self, n: usize) -> bool {
        let f = |l: Option<usize>| l.is_none_or(|l| l == n);
        f(self.kl.as_ref().map(|v| v.len()))
            && f(self.dp.as_ref().map(|v| v.len()))
            && f(self.nll_base.as_ref().map(|v| v.len()))
            && f(self.nll_new.as_ref().map(|v| v.len()))
            && f(self.same.as_ref().map(|v| v.len()))
    }

    /// The outputs of rows k·per.. (k < ceil(n / per)) for each chunk of `per` rows.
    fn split(self, per: usize, n: usize) -> Vec<CompareOut<'a>> {
        let k = n.div_ceil(per);
        let kl = pieces(self.kl, per, k);
        let dp = pieces(self.dp, per, k);
        let nb = pieces(self.nll_base, per, k);
        let nn = pieces(self.nll_new, per, k);
        let sm = pieces(self.same, per, k);
        kl.into_iter()
            .zip(dp)
            .zip(nb)
            .zip(nn)
            .zip(sm)
            .map(|((((kl, dp), nll_base), nll_new), same)| CompareOut {
                kl,
                dp,
                nll_base,
                nll_new,
                same,
            })
            .collect()
    }

    fn put(&mut self, idx: usize, r: Option<&RowCompare>) {
        let nan = f64::NAN;
        let (kl, dp, nb, nn, same) = r.map_or((nan, nan, nan, nan, -1), |r| {
            (r.kl, r.dp, r.nll_base, r.nll_new, i8::from(r.same))
        });
        for (o, v) in [
            (&mut self.kl, kl),
            (&mut self.dp, dp),
            (&mut self.nll_base, nb),
            (&mut self.nll_new, nn),
        ] {
            if let Some(o) = o.as_deref_mut() {
                o[idx] = v;
            }
        }
        if let Some(o) = self.same.as_deref_mut() {
            o[idx] = same;
        }
    }

    /// Rows at..at + 16 of a clean group (see `compare_lanes::run`).
    pub(crate) fn put16(
        &mut self,
        at: usize,
        kl: &[f64; 16],
        dp: &[f64; 16],
        nb: &[f64; 16],
        nn: &[f64; 16],
        same: &[i8; 16],
    ) {
        for (o, v) in [
            (&mut self.kl, kl),
            (&mut self.dp, dp),
            (&mut self.nll_base, nb),
            (&mut self.nll_new, nn),
        ] {
            if let Some(o) = o.as_deref_mut() {
                o[at..at + 16].copy_from_slice(v);
            }
        }
        if let Some(o) = self.same.as_deref_mut() {
            o[at..at + 16].copy_from_slice(same);
        }
    }
}

/// Number of float64 sums a row adds to (see [`terms`]).
const NSUMS: usize = 12;

/// What a row adds to each float64 sum of [`CompareSums`], in field order (KL, KL², ΔNLL,
/// ΔNLL², NLL_base, NLL_base², NLL_new, NLL_new², NLL_base·NLL_new, Δp, Δp², Δp⁴).
#[inline(always)]
fn terms(kl: f64, dp: f64, nb: f64, nn: f64) -> [f64; NSUMS] {
    let d = nn - nb;
    let dp2 = dp * dp;
    [
        kl,
        kl * kl,
        d,
        d * d,
        nb,
        nb * nb,
        nn,
        nn * nn,
        nb * nn,
        dp,
        dp2,
        dp2 * dp2,
    ]
}

/// [`CompareSums`] of one chunk, lane by lane: the chunk's row k adds to lane k % 16 on every
/// path (row by row, a group at a time, or the clean-run kernel's 16 lanes at once), and the
/// lanes are folded in order at the end, so the bits do not depend on which path a row took
/// (and so not on the layout or the target dtype).
#[derive(Default)]
pub(crate) struct LaneSums {
    v: [[f64; 16]; NSUMS],
    n: u64,
    n_ignored: u64,
    top1: u64,
}

impl LaneSums {
    fn add(&mut self, l: usize, r: &RowCompare) {
        let t = terms(r.kl, r.dp, r.nll_base, r.nll_new);
        for (acc, v) in self.v.iter_mut().zip(t) {
            acc[l] += v;
        }
        self.n += 1;
        self.top1 += u64::from(r.same);
    }

    /// 16 scored rows (lanes 0..16), `same` 1 where the argmaxes agree.
    #[inline(always)]
    pub(crate) fn add16(
        &mut self,
        kl: &[f64; 16],
        dp: &[f64; 16],
        nb: &[f64; 16],
        nn: &[f64; 16],
        same: &[i8; 16],
    ) {
        // sum by sum over the lanes (each loop is one vector add per 8 lanes), the values of
        // `terms` lane by lane
        let mut t = [[0f64; 16]; NSUMS];
        for l in 0..16 {
            let d = nn[l] - nb[l];
            let dp2 = dp[l] * dp[l];
            t[0][l] = kl[l];
            t[1][l] = kl[l] * kl[l];
            t[2][l] = d;
            t[3][l] = d * d;
            t[4][l] = nb[l];
            t[5][l] = nb[l] * nb[l];
            t[6][l] = nn[l];
            t[7][l] = nn[l] * nn[l];
            t[8][l] = nb[l] * nn[l];
            t[9][l] = dp[l];
            t[10][l] = dp2;
            t[11][l] = dp2 * dp2;
        }
        for (acc, v) in self.v.iter_mut().zip(&t) {
            for l in 0..16 {
                acc[l] += v[l];
            }
        }
        self.n += 16;
        self.top1 += same.iter().map(|&s| u64::from(s == 1)).sum::<u64>();
    }

    fn fold(&self) -> CompareSums {
        let f = |k: usize| self.v[k].iter().fold(0.0, |a, &v| a + v);
        CompareSums {
            n: self.n,
            n_ignored: self.n_ignored,
            sum_kl: f(0),
            sum_kl_sq: f(1),
            sum_dnll: f(2),
            sum_dnll_sq: f(3),
            sum_nll_base: f(4),
            sum_nll_base_sq: f(5),
            sum_nll_new: f(6),
            sum_nll_new_sq: f(7),
            sum_nll_cross: f(8),
            sum_dp: f(9),
            sum_dp_sq: f(10),
            sum_dp_4: f(11),
            top1_agree: self.top1,
        }
    }
}

/// What one scored row contributes.
struct RowCompare {
    kl: f64,
    dp: f64,
    nll_base: f64,
    nll_new: f64,
    same: bool,
}

/// Below this (in nats from the row max) a logit counts as probability 0 in the KL's log
/// ratio; exp of it is 0 in every float format.
pub(crate) const FLOOR: f32 = -1.0e4;
/// |r| up to which f(r) = e^r - 1 - r is taken from its series.
const SERIES: f32 = 0.5;

/// f(r)/r² = 1/2 + r/6 + ... + r^7/9!, truncation < 2.2e-9 relative for |r| <= 1/2.
#[inline(always)]
unsafe fn series<I: Isa>(r: I::V) -> I::V {
    const C: [f32; 8] = [
        1.0 / 2.0,
        1.0 / 6.0,
        1.0 / 24.0,
        1.0 / 120.0,
        1.0 / 720.0,
        1.0 / 5040.0,
        1.0 / 40320.0,
        1.0 / 362_880.0,
    ];
    let mut p = I::splat(C[7]);
    for &c in C[..7].iter().rev() {
        p = I::fma(p, r, I::splat(c));
    }
    I::mul(I::mul(r, r), p)
}

/// One vector of the KL sweep: adds e_a·f(r) (or e_b·g - e_a·(1 + r) for |r| > 1/2) to
/// `acc`, and to `inf` the lanes where the base has mass and the new row none.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn kl_vec<I: Isa>(
    xa: I::V,
    xb: I::V,
    ma: I::V,
    mb: I::V,
    c: I::V,
    g: I::V,
    acc: &mut I::V,
    inf: &mut I::V,
) {
    let floor = I::splat(FLOOR);
    let ya = I::max_keep_nan(floor, I::sub(xa, ma));
    let yb = I::max_keep_nan(floor, I::sub(xb, mb));
    kl_shifted::<I>(ya, yb, c, g, acc, inf);
}

/// [`kl_vec`]'s terms given the shifted rows ya = max(FLOOR, xa - ma), yb likewise (the
/// short-row lanes of `compare_lanes` take them from their tiles).
#[inline(always)]
unsafe fn kl_shifted<I: Isa>(ya: I::V, yb: I::V, c: I::V, g: I::V, acc: &mut I::V, inf: &mut I::V) {
    kl_terms::<I>(ya, yb, I::exp_le0(ya), I::exp_le0(yb), c, g, acc, inf);
}

/// [`kl_shifted`] given also ea = exp(ya) and eb = exp(yb) (`exp_le0`; the lanes have them
/// from the rows' sums).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn kl_terms<I: Isa>(
    ya: I::V,
    yb: I::V,
    ea: I::V,
    eb: I::V,
    c: I::V,
    g: I::V,
    acc: &mut I::V,
    inf: &mut I::V,
) {
    let (floor, zero) = (I::splat(FLOOR), I::splat(0.0));
    let r = I::add(I::sub(yb, ya), c);
    let h_small = I::mul(ea, series::<I>(r));
    // every lane in the series' range (two close models: most vectors): the same sum
    // without the other branch (its terms would be masked to 0 and added)
    let h = if I::all_abs_below(r, SERIES) {
        h_small
    } else {
        let big = I::count_gt(zero, I::abs(r), I::splat(SERIES));
        let small = I::sub(I::splat(1.0), big);
        let h_big = I::sub(I::mul(eb, g), I::fma(ea, r, ea));
        I::add(
            I::zero_where_zero(big, h_big),
            I::zero_where_zero(small, h_small),
        )
    };
    *acc = I::add(*acc, h);
    let has_a = I::count_gt(zero, ya, floor);
    let has_b = I::count_gt(zero, yb, floor);
    *inf = I::fma(has_a, I::sub(I::splat(1.0), has_b), *inf);
}

/// Σ_j e^(ya_j)·f(r_j) over two finite-max rows (see the module doc), given the maxima, the
/// normaliser difference c and g = e^c. Returns [Σ h, lanes with p_a > 0 but p_b = 0].
/// Sums are f32 lanes within a block of 4096 and f64 across blocks.
#[inline(always)]
unsafe fn kl_rows<I: Isa, A: Elem, B: Elem>(
    xa: &[A],
    xb: &[B],
    ma: f32,
    mb: f32,
    c: f32,
    g: f32,
) -> [f64; 2] {
    let w = I::W;
    let (vma, vmb, vc, vg) = (I::splat(ma), I::splat(mb), I::splat(c), I::splat(g));
    let n = xa.len().min(xb.len());
    let (pa, pb) = (xa.as_ptr(), xb.as_ptr());
    let mut total = [0f64; 2];
    let mut start = 0;
    while start < n {
        let end = (start + 4096).min(n);
        let z = I::splat(0.0);
        let (mut a0, mut a1, mut inf) = (z, z, z);
        let mut i = start;
        while i + 2 * w <= end {
            kl_vec::<I>(
                A::load::<I>(pa.add(i)),
                B::load::<I>(pb.add(i)),
                vma,
                vmb,
                vc,
                vg,
                &mut a0,
                &mut inf,
            );
            kl_vec::<I>(
                A::load::<I>(pa.add(i + w)),
                B::load::<I>(pb.add(i + w)),
                vma,
                vmb,
                vc,
                vg,
                &mut a1,
                &mut inf,
            );
            i += 2 * w;
        }
        while i + w <= end {
            kl_vec::<I>(
                A::load::<I>(pa.add(i)),
                B::load::<I>(pb.add(i)),
                vma,
                vmb,
                vc,
                vg,
                &mut a0,
                &mut inf,
            );
            i += w;
        }
        if i < end {
            // lanes past the end hold -inf in both rows: they add 0
            let (ta, tb) = (
                A::load_tail::<I>(pa.add(i), end - i),
                B::load_tail::<I>(pb.add(i), end - i),
            );
            kl_vec::<I>(ta, tb, vma, vmb, vc, vg, &mut a1, &mut inf);
        }
        total[0] += I::hsum(I::add(a0, a1)) as f64;
        total[1] += I::hsum(inf) as f64;
        start = end;
    }
    total
}

macro_rules! dispatch2 {
    ($name:ident => $kernel:ident) => {
        fn $name<A: Elem, B: Elem>(
            path: Path,
            xa: &[A],
            xb: &[B],
            ma: f32,
            mb: f32,
            c: f32,
            g: f32,
        ) -> [f64; 2] {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma,f16c,popcnt")]
            unsafe fn avx2<A: Elem, B: Elem>(
                xa: &[A],
                xb: &[B],
                ma: f32,
                mb: f32,
                c: f32,
                g: f32,
            ) -> [f64; 2] {
                $kernel::<simd::avx2::Avx2, A, B>(xa, xb, ma, mb, c, g)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,popcnt")]
            unsafe fn avx512<A: Elem, B: Elem>(
                xa: &[A],
                xb: &[B],
                ma: f32,
                mb: f32,
                c: f32,
                g: f32,
            ) -> [f64; 2] {
                $kernel::<simd::avx512::Avx512, A, B>(xa, xb, ma, mb, c, g)
            }
            #[cfg(target_arch = "aarch64")]
            #[target_feature(enable = "neon")]
            unsafe fn neon<A: Elem, B: Elem>(
                xa: &[A],
                xb: &[B],
                ma: f32,
                mb: f32,
                c: f32,
                g: f32,
            ) -> [f64; 2] {
                $kernel::<simd::neon::Neon, A, B>(xa, xb, ma, mb, c, g)
            }
            match path {
                // SAFETY: a Path other than Scalar is only selected after `Path::available`
                // confirmed the CPU has its features.
                #[cfg(target_arch = "x86_64")]
                Path::Avx512 => unsafe { avx512::<A, B>(xa, xb, ma, mb, c, g) },
                #[cfg(target_arch = "x86_64")]
                Path::Avx2 => unsafe { avx2::<A, B>(xa, xb, ma, mb, c, g) },
                // SAFETY: likewise (selected only after `is_aarch64_feature_detected!`).
                #[cfg(target_arch = "aarch64")]
                Path::Neon => unsafe { neon::<A, B>(xa, xb, ma, mb, c, g) },
                // SAFETY: the scalar path needs no CPU feature.
                _ => unsafe { $kernel::<simd::scalar::Scalar, A, B>(xa, xb, ma, mb, c, g) },
            }
        }
    };
}

dispatch2!(kl_sweep => kl_rows);

/// f(r) = e^r - 1 - r in f64 (series near 0).
fn f_r(r: f64) -> f64 {
    // 1/k! for k = 2..=12: truncation < 1e-13 relative for |r| <= 1/2
    const C: [f64; 11] = [
        1.0 / 2.0,
        1.0 / 6.0,
        1.0 / 24.0,
        1.0 / 120.0,
        1.0 / 720.0,
        1.0 / 5040.0,
        1.0 / 40320.0,
        1.0 / 362_880.0,
        1.0 / 3_628_800.0,
        1.0 / 39_916_800.0,
        1.0 / 479_001_600.0,
    ];
    if r.abs() <= 0.5 {
        let p = C.iter().rev().fold(0.0, |p, &c| p * r + c);
        r * r * p
    } else {
        r.exp_m1() - r
    }
}

/// KL of two rows given as natural-log probabilities up to per-row constants:
/// ln p_j = la_j - na, ln q_j = lb_j - nb (float64, any values; -inf = probability 0), as
/// Σ p f(r), which is Σ p ln(p/q) for normalised rows and, like the SIMD sweep, moves only by
/// about ε·KL when a normaliser is off by ε (e.g. one side's lse from an f32 sweep).
fn kl_scalar(
    la: impl Iterator<Item = f64>,
    lb: impl Iterator<Item = f64>,
    na: f64,
    nb: f64,
) -> f64 {
    let mut kl = 0.0;
    for (a, b) in la.zip(lb) {
        if a.is_nan() || b.is_nan() {
            return f64::NAN;
        }
        let lp = a - na;
        let lq = b - nb;
        if lp == f64::NEG_INFINITY {
            kl += lq.exp(); // p = 0: the term q - p - p·r is q
            continue;
        }
        if lq == f64::NEG_INFINITY {
            return f64::INFINITY;
        }
        let r = lq - lp;
        kl += if r.abs() <= 0.5 {
            lp.exp() * f_r(r)
        } else {
            lq.exp() - lp.exp() * (1.0 + r)
        };
    }
    kl.max(0.0)
}

/// A row read once, with its statistics (for logits and log-probabilities).
struct RowRead {
    rs: RowStats,
    /// ln of the normaliser relative to the max: ln s (lse = m + ln s).
    ln_s: f64,
}

#[allow(clippy::float_cmp)] // m is a value of the row: the search for it is exact on purpose
fn argmax_first(rw: &Rows, i: usize, m: f64) -> usize {
    // first index holding the row max (NaN rows: the first non-NaN maximum, as the scan)
    (0..rw.cols())
        .find(|&j| rw.value(i, j) == m)
        .unwrap_or_else(|| {
            let mut best = (f64::NEG_INFINITY, 0);
            for j in 0..rw.cols() {
                let v = rw.value(i, j);
                if v > best.0 {
                    best = (v, j);
                }
            }
            best.1
        })
}

/// The KL sweep of two typed rows and the first index of each row's max (the rows' maxima
/// `ma`, `mb` are values of the rows, so the search is exact).
#[allow(clippy::too_many_arguments, clippy::float_cmp)]
fn sweep_pair<A: Elem, B: Elem>(
    path: Path,
    xa: &[A],
    xb: &[B],
    ma: f32,
    mb: f32,
    c: f32,
    g: f32,
) -> ([f64; 2], bool) {
    let kl = kl_sweep(path, xa, xb, ma, mb, c, g);
    let ia = kernel::first_eq(path, xa, ma);
    let ib = kernel::first_eq(path, xb, mb);
    (kl, ia == ib)
}

/// Row `i` of both dumps as one typed pair: (KL sweep, argmaxes agree).
#[allow(clippy::too_many_arguments)]
fn sweep_typed(
    path: Path,
    ra: &mut Rows,
    rb: &mut Rows,
    i: usize,
    ma: f32,
    mb: f32,
    c: f32,
    g: f32,
) -> ([f64; 2], bool) {
    let (adt, bdt) = (ra.view.dtype, rb.view.dtype);
    macro_rules! second {
        ($xa:expr) => {
            match bdt {
                DType::F32 => sweep_pair(path, $xa, rb.row_f32(i), ma, mb, c, g),
                DType::F16 => sweep_pair(path, $xa, rb.row_f16(i), ma, mb, c, g),
                DType::BF16 => sweep_pair(path, $xa, rb.row_bf16(i), ma, mb, c, g),
                DType::F64 => unreachable!("float64 rows take the scalar path"),
            }
        };
    }
    match adt {
        DType::F32 => second!(ra.row_f32(i)),
        DType::F16 => second!(ra.row_f16(i)),
        DType::BF16 => second!(ra.row_bf16(i)),
        DType::F64 => unreachable!("float64 rows take the scalar path"),
    }
}

/// Column-major staging tiles of 16 short rows of each dump (see [`lanes::lanes`]).
#[derive(Default)]
struct Tiles {
    a32: Vec<f32>,
    a16: Vec<F16>,
    ab16: Vec<BF16>,
    b32: Vec<f32>,
    b16: Vec<F16>,
    bb16: Vec<BF16>,
}

impl Tiles {
    /// Stages rows i..i + g (g <= 16; the rest padded) of both dumps and runs the lanes.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &mut self,
        path: Path,
        a: &View,
        b: &View,
        i: usize,
        g: usize,
        kf: &[f32; 16],
        log_probs: bool,
        o: &mut lanes::LaneCompare,
    ) {
        let c = a.cols();
        macro_rules! second {
            ($ta:expr) => {{
                let ta = $ta;
                match b.dtype {
                    DType::F32 => {
                        b.copy_cols(i, g, 16, &mut self.b32);
                        lanes::lanes_on(path, ta, &self.b32, c, kf, log_probs, o);
                    }
                    DType::F16 => {
                        b.copy_cols(i, g, 16, &mut self.b16);
                        lanes::lanes_on(path, ta, &self.b16, c, kf, log_probs, o);
                    }
                    DType::BF16 => {
                        b.copy_cols(i, g, 16, &mut self.bb16);
                        lanes::lanes_on(path, ta, &self.bb16, c, kf, log_probs, o);
                    }
                    DType::F64 => unreachable!("float64 rows take the row path"),
                }
            }};
        }
        match a.dtype {
            DType::F32 => {
                a.copy_cols(i, g, 16, &mut self.a32);
                second!(&self.a32[..]);
            }
            DType::F16 => {
                a.copy_cols(i, g, 16, &mut self.a16);
                second!(&self.a16[..]);
            }
            DType::BF16 => {
                a.copy_cols(i, g, 16, &mut self.ab16);
                second!(&self.ab16[..]);
            }
            DType::F64 => unreachable!("float64 rows take the row path"),
        }
    }
}

fn read(rw: &mut Rows, i: usize) -> RowRead {
    let rs = rw.stats(i, 0.0, Want::default());
    let ln_s = if rs.finite() { rs.st.s.ln() } else { f64::NAN };
    RowRead { rs, ln_s }
}

/// One scored row of logits or log-probabilities.
#[allow(clippy::too_many_arguments)]
fn row_logits(
    kind: Kind,
    path: Path,
    a: &View,
    b: &View,
    ra: &mut Rows,
    rb: &mut Rows,
    i: usize,
    k: usize,
) -> RowCompare {
    let (pa, pb) = (read(ra, i), read(rb, i));
    let (xa_t, xb_t) = (ra.value(i, k), rb.value(i, k));
    // NLLs as `evaluate` gives them: lse - x_t for logits, -x_t for log-probabilities
    let nll = |rr: &RowRead, xt: f64| match kind {
        Kind::Logits => rr.rs.minus(xt),
        _ => -xt,
    };
    let (nll_base, nll_new) = (nll(&pa, xa_t), nll(&pb, xb_t));
    let dp = (-nll_new).exp() - (-nll_base).exp();
    let simd_ok = pa.rs.finite()
        && pb.rs.finite()
        && a.dtype != DType::F64
        && b.dtype != DType::F64
        && pa.rs.m.abs() < 1.0e30
        && pb.rs.m.abs() < 1.0e30;
    let mut same = None;
    let kl = if simd_ok {
        // KL of the renormalised rows, ln p = (x - m) - ln s, for log-probabilities too (a
        // low-precision dump's rows are off 1 by rounding; see the module doc)
        let c = pa.ln_s - pb.ln_s;
        let g = c.exp() as f32;
        let ([sum, inf], agree) =
            sweep_typed(path, ra, rb, i, pa.rs.m as f32, pb.rs.m as f32, c as f32, g);
        same = Some(agree);
        if inf > 0.0 {
            f64::INFINITY
        } else {
            (sum / pa.rs.st.s).max(0.0)
        }
    } else {
        let (la, lb) = (pa.rs.lse(), pb.rs.lse());
        if !la.is_finite() || !lb.is_finite() {
            f64::NAN
        } else {
            kl_scalar(
                (0..a.cols()).map(|j| ra.value(i, j)),
                (0..b.cols()).map(|j| rb.value(i, j)),
                la,
                lb,
            )
        }
    };
    let same = same.unwrap_or_else(|| argmax_first(ra, i, pa.rs.m) == argmax_first(rb, i, pb.rs.m));
    RowCompare {
        kl,
        dp,
        nll_base,
        nll_new,
        same,
    }
}

/// One scored row of probabilities (float64 scalar: classifier-sized rows).
fn row_probs(ra: &Rows, rb: &Rows, i: usize, k: usize) -> RowCompare {
    let c = ra.cols();
    let (pt_a, pt_b) = (ra.value(i, k), rb.value(i, k));
    // KL of the renormalised rows (NLL and Δp use p as given, as `evaluate` reads them); a
    // negative probability has no log: NaN
    let (sa, sb): (f64, f64) = (
        (0..c).map(|j| ra.value(i, j)).sum(),
        (0..c).map(|j| rb.value(i, j)).sum(),
    );
    let kl = if sa > 0.0 && sb > 0.0 {
        kl_scalar(
            (0..c).map(|j| ra.value(i, j).ln()),
            (0..c).map(|j| rb.value(i, j).ln()),
            sa.ln(),
            sb.ln(),
        )
    } else {
        f64::NAN
    };
    let am = |rw: &Rows| {
        let mut best = (f64::NEG_INFINITY, 0);
        for j in 0..c {
            let v = rw.value(i, j);
            if v > best.0 {
                best = (v, j);
            }
        }
        best.1
    };
    RowCompare {
        kl,
        dp: pt_b - pt_a,
        nll_base: -pt_a.ln(),
        nll_new: -pt_b.ln(),
        same: am(ra) == am(rb),
    }
}

/// KL(base || new), Δp, NLLs and top-1 agreement per row and summed, reading each dump once.
pub fn compare_rows(
    base: &View,
    new: &View,
    t: &IntView,
    kind: Kind,
    ignore_index: i64,
    out: Option<CompareOut>,
) -> Result<CompareSums> {
    if base.shape() != new.shape() {
        return Err(Error::Shape(format!(
            "the two dumps differ in shape: {:?} and {:?}",
            base.shape(),
            new.shape()
        )));
    }
    check_target_shape(base, t.shape(), "target")?;
    let path = simd::current();
    let c = base.cols();
    // short rows of 16/32-bit logits or log-probabilities: 16 rows in SIMD lanes (the scalar
    // path keeps the row path, as `evaluate` does)
    let lanes = kind != Kind::Probs
        && (1..=lanes::MAX_C).contains(&c)
        && base.dtype != DType::F64
        && new.dtype != DType::F64
        && path != Path::Scalar;
    let chunk = |r: Range<usize>, mut o: Option<CompareOut>| -> Result<CompareSums> {
        let (mut ra, mut rb) = (Rows::new(base), Rows::new(new));
        let mut acc = LaneSums::default();
        if lanes {
            let mut tiles = Tiles::default();
            let mut lc = lanes::LaneCompare::default();
            let (mut sa, mut sb) = (stage::Scratch::default(), stage::Scratch::default());
            // runs of clean groups in one kernel loop (`stage::compare_run`); after a group it
            // stops at, the next try waits `backoff` rows, doubled while tries fail at once
            // (runs of ignored rows) and reset by a try that gets anywhere
            let (mut retry, mut backoff) = (r.start, 16);
            let mut i = r.start;
            while i < r.end {
                if i >= retry && r.end - i >= 16 {
                    let at = i - r.start;
                    let (lp, o) = (kind == Kind::LogProbs, o.as_mut());
                    let run = (&mut acc, o, at, &mut sa, &mut sb);
                    let got =
                        stage::compare_run_any(path, base, new, t, i..r.end, ignore_index, lp, run);
                    i += got;
                    backoff = if got == 0 {
                        (2 * backoff).min(4096)
                    } else {
                        16
                    };
                    retry = i + backoff;
                    if i >= r.end {
                        break;
                    }
                }
                let g = (r.end - i).min(16);
                let mut ks = [None; 16];
                let mut kf = [0f32; 16];
                for l in 0..g {
                    ks[l] = class_of(t, base, i + l, ignore_index)?;
                    kf[l] = ks[l].map_or(0.0, |k| k as f32);
                }
                tiles.run(path, base, new, i, g, &kf, kind == Kind::LogProbs, &mut lc);
                for l in 0..g {
                    let idx = i + l - r.start;
                    let Some(k) = ks[l] else {
                        acc.n_ignored += 1;
                        if let Some(o) = o.as_mut() {
                            o.put(idx, None);
                        }
                        continue;
                    };
                    let row = if lc.ok[l] == 0.0 {
                        row_logits(kind, path, base, new, &mut ra, &mut rb, i + l, k)
                    } else {
                        RowCompare {
                            kl: lanes::lane_kl(lc.h[l], lc.sa[l], lc.inf[l]),
                            dp: f64::from(lc.dp[l]),
                            nll_base: f64::from(lc.nll_a[l]),
                            nll_new: f64::from(lc.nll_b[l]),
                            same: lc.same[l] != 0.0,
                        }
                    };
                    acc.add(idx % 16, &row);
                    if let Some(o) = o.as_mut() {
                        o.put(idx, Some(&row));
                    }
                }
                i += g;
            }
            return Ok(acc.fold());
        }
        for (idx, i) in r.enumerate() {
            let Some(k) = class_of(t, base, i, ignore_index)? else {
                acc.n_ignored += 1;
                if let Some(o) = o.as_mut() {
                    o.put(idx, None);
                }
                continue;
            };
            let row = match kind {
                Kind::Probs => row_probs(&ra, &rb, i, k),
                _ => row_logits(kind, path, base, new, &mut ra, &mut rb, i, k),
            };
            acc.add(idx % 16, &row);
            if let Some(o) = o.as_mut() {
                o.put(idx, Some(&row));
            }
        }
        Ok(acc.fold())
    };
    let n = base.rows();
    // (at least a group of rows while each dump's row is at most GROUP_ROW_BYTES: a pair of
    // rows over 512 KiB had made chunks of one row, and the 16-row tiles of column-major
    // dumps were staged for every row, Fortran order at C = 128256 900 ms against 17 in
    // C order)
    let each = base.cols() * base.dtype.size().max(new.dtype.size());
    let least = if each <= parallel::GROUP_ROW_BYTES {
        crate::kernel::GROUP
    } else {
        1
    };
    let per = parallel::chunk_rows(base.cols() * (base.dtype.size() + new.dtype.size())).max(least);
    let parts: Vec<Result<CompareSums>> = match out {
        Some(o) => {
            if !o.len_ok(n) {
                return Err(Error::Shape(format!(
                    "per-row outputs must have {n} elements"
                )));
            }
            let pieces: Vec<_> = o.split(per, n).into_iter().enumerate().collect();
            parallel::map_items(pieces, per, |(k, p)| {
                let r = k * per..((k + 1) * per).min(n);
                chunk(r, Some(p))
            })
        }
        None => parallel::map_chunks(n, per, |r| chunk(r, None)),
    };
    let mut total = CompareSums::default();
    for p in parts {
        total.merge(&p?);
    }
    Ok(total)
}

/// The sums of [`compare_rows`] without per-row outputs.
pub fn compare(
    base: &View,
    new: &View,
    t: &IntView,
    kind: Kind,
    ignore_index: i64,
) -> Result<CompareSums> {
    compare_rows(base, new, t, kind, ignore_index, None)
}

#[cfg(test)]
#[allow(clippy::float_cmp)] // the tests check exact results (0, inf, bit-equal paths) on purpose
mod tests {
    use super::*;

    fn rng(seed: &mut u64) -> f64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        (*seed >> 11) as f64 / (1u64 << 53) as f64
    }

    /// (lse, ln s, max) of an f32 row in f64.
    fn norm(x: &[f32]) -> (f64, f64, f32) {
        let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let s: f64 = x.iter().map(|&v| (v as f64 - m as f64).exp()).sum();
        (m as f64 + s.ln(), s.ln(), m)
    }

    fn sweep_kl(p: Path, a: &[f32], b: &[f32]) -> f64 {
        let ((_, lsa, ma), (_, lsb, mb)) = (norm(a), norm(b));
        let s_a: f64 = lsa.exp();
        let c = lsa - lsb;
        let [sum, inf] = kl_sweep(p, a, b, ma, mb, c as f32, c.exp() as f32);
        let _ = sweep_pair::<f32, f32>; // (the pair also finds the argmaxes)
        if inf > 0.0 {
            f64::INFINITY
        } else {
            sum / s_a
        }
    }

    #[test]
    fn simd_kl_matches_float64_and_is_zero_for_identical_rows() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for &c in &[1usize, 2, 7, 16, 33, 1000, 4099, 9000] {
            for noise in [1e-3, 3e-2, 1.0] {
                let a: Vec<f32> = (0..c)
                    .map(|_| (rng(&mut seed) * 8.0 - 4.0) as f32)
                    .collect();
                let mut b: Vec<f32> = a
                    .iter()
                    .map(|&v| v + ((rng(&mut seed) - 0.5) * noise) as f32)
                    .collect();
                let mut a = a;
                if c > 5 {
                    a[3] = f32::NEG_INFINITY; // masked in both
                    b[3] = f32::NEG_INFINITY;
                    a[4] = f32::NEG_INFINITY; // masked in base only: finite
                }
                let (la, lb) = (norm(&a).0, norm(&b).0);
                let want = kl_scalar(
                    a.iter().map(|&v| v as f64),
                    b.iter().map(|&v| v as f64),
                    la,
                    lb,
                );
                for p in Path::ALL.into_iter().filter(|p| p.available()) {
                    let got = sweep_kl(p, &a, &b);
                    assert!(
                        (got - want).abs() <= 2e-5 * want + 1e-12,
                        "{p:?} C={c} noise={noise}: {got} vs {want}"
                    );
                    assert_eq!(sweep_kl(p, &a, &a), 0.0, "{p:?} C={c}");
                    if c > 5 {
                        let mut z = b.clone();
                        z[5] = f32::NEG_INFINITY; // the new row gives 0 where base has mass
                        assert_eq!(sweep_kl(p, &a, &z), f64::INFINITY);
                    }
                }
            }
        }
    }

    #[test]
    fn scalar_kl_is_nonnegative_and_exact_on_small_cases() {
        // p = (1/2, 1/2), q = (1/4, 3/4): KL = ½ln2 + ½ln(2/3)
        let (a, b) = ([0.5f64.ln(), 0.5f64.ln()], [0.25f64.ln(), 0.75f64.ln()]);
        let want = 0.5 * 2f64.ln() + 0.5 * (2.0f64 / 3.0).ln();
        let got = kl_scalar(a.iter().copied(), b.iter().copied(), 0.0, 0.0);
        assert!((got - want).abs() < 1e-15);
        assert_eq!(
            kl_scalar(a.iter().copied(), a.iter().copied(), 0.0, 0.0),
            0.0
        );
        let z = [0.0, f64::NEG_INFINITY];
        assert_eq!(
            kl_scalar(a.iter().copied(), z.iter().copied(), 0.0, 0.0),
            f64::INFINITY
        );
    }
}
