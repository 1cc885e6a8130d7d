//! Row kernels, written once over [`Isa`] and [`Elem`] and instantiated per instruction set.
//!
//! One read of a row: the row is cut into L1-sized blocks; each block's max is taken, then the
//! block is swept again while it is still in L1 (exp-sums and whatever else the caller asked
//! for). When a later block raises the max, the running sums are rescaled. The running sums are
//! f32 lanes within a block and f64 across blocks.

use crate::simd::{self, exp2c, expc, Elem, Isa, Path};

/// Elements per block: 16 KiB of f32, comfortably inside L1 with its sweep.
pub(crate) const BLOCK: usize = 4096;

/// Statistics of a row or of a segment of one, relative to the shift `m`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stats {
    /// Max over the non-NaN values (-inf if none).
    pub m: f32,
    /// Σ exp(x - m)
    pub s: f64,
    /// Σ exp(x - m) * max(x - m, LO) (only with EVAL)
    pub t: f64,
    /// Σ exp(x - m)^2 (only with EVAL)
    pub q: f64,
    /// Number of x > xt (only with EVAL)
    pub gt: u64,
    /// A NaN was seen where the sums could not carry it (rows whose max is infinite).
    pub nan: bool,
}

impl Stats {
    pub const EMPTY: Stats = Stats {
        m: f32::NEG_INFINITY,
        s: 0.0,
        t: 0.0,
        q: 0.0,
        gt: 0,
        nan: false,
    };

    /// Moves the shift to `m_new >= self.m`.
    #[inline]
    fn rescale(&mut self, m_new: f32) {
        if self.m == f32::NEG_INFINITY {
            self.m = m_new;
            return;
        }
        let d = self.m as f64 - m_new as f64; // <= 0
        let r = d.exp();
        self.t = r * (self.t + d.max(expc::LO as f64) * self.s);
        self.s *= r;
        self.q *= r * r;
        self.m = m_new;
    }

    /// Combines the statistics of two segments (in order, for reproducible sums).
    #[must_use]
    pub fn merge(mut self, mut o: Stats) -> Stats {
        let m = self.m.max(o.m);
        if m.is_finite() {
            self.rescale(m);
            o.rescale(m);
        }
        Stats {
            m,
            s: self.s + o.s,
            t: self.t + o.t,
            q: self.q + o.q,
            gt: self.gt + o.gt,
            nan: self.nan || o.nan,
        }
    }

    /// log Σ exp(x), with the policy: NaN anywhere -> NaN; +inf -> +inf; all -inf -> -inf.
    pub fn lse(&self) -> f64 {
        if self.nan || self.s.is_nan() {
            f64::NAN
        } else if self.m == f32::INFINITY {
            f64::INFINITY
        } else if self.m == f32::NEG_INFINITY {
            f64::NEG_INFINITY
        } else {
            self.m as f64 + self.s.ln()
        }
    }
}

#[inline(always)]
unsafe fn block_max<I: Isa, E: Elem>(x: &[E]) -> f32 {
    let n = x.len();
    let p = x.as_ptr();
    let w = I::W;
    let ninf = I::splat(f32::NEG_INFINITY);
    let (mut a0, mut a1, mut a2, mut a3) = (ninf, ninf, ninf, ninf);
    let mut i = 0;
    while i + 4 * w <= n {
        a0 = I::max_ignore_nan(a0, E::load::<I>(p.add(i)));
        a1 = I::max_ignore_nan(a1, E::load::<I>(p.add(i + w)));
        a2 = I::max_ignore_nan(a2, E::load::<I>(p.add(i + 2 * w)));
        a3 = I::max_ignore_nan(a3, E::load::<I>(p.add(i + 3 * w)));
        i += 4 * w;
    }
    while i + w <= n {
        a0 = I::max_ignore_nan(a0, E::load::<I>(p.add(i)));
        i += w;
    }
    if i < n {
        a1 = I::max_ignore_nan(a1, E::load_tail::<I>(p.add(i), n - i));
    }
    let a = I::max_ignore_nan(I::max_ignore_nan(a0, a1), I::max_ignore_nan(a2, a3));
    I::hmax(a)
}

/// One vector's contribution to the sweep. `vl` is log2(e) and `vnt` is -m·log2(e) rounded,
/// so t = x·log2(e) - m·log2(e) takes one fma and the sums are of 2^t. `CLAMP` keeps e·t
/// finite where x = -inf (e = 0, t = -inf); without it such a block's Σ e·t is NaN and the
/// block is swept again with it (see [`stats`]).
#[inline(always)]
unsafe fn sweep_vec<I: Isa, const EVAL: bool, const CLAMP: bool>(
    x: I::V,
    vl: I::V,
    vnt: I::V,
    vxt: I::V,
    acc: &mut [I::V; 4],
    gt: &mut u32,
) {
    let t = I::fma(x, vl, vnt);
    if EVAL {
        let t = if CLAMP {
            I::max_keep_nan(I::splat(exp2c::LO2), t)
        } else {
            t
        };
        let e = I::exp2_sum(t);
        acc[0] = I::add(acc[0], e);
        acc[1] = I::fma(e, t, acc[1]);
        acc[2] = I::fma(e, e, acc[2]);
        *gt += I::gt_lanes(x, vxt);
    } else {
        acc[0] = I::add(acc[0], I::exp2_sum(t));
    }
}

/// The sweep of one L1-resident block: lane sums of 2^t (and with `EVAL` of e·t and e²), and
/// the count of x > xt (0 without `EVAL`), prefetching the memory `ahead` of it.
#[inline(always)]
unsafe fn sweep_block<I: Isa, E: Elem, const EVAL: bool, const CLAMP: bool>(
    blk: &[E],
    vl: I::V,
    vnt: I::V,
    vxt: I::V,
    ahead: *const u8,
) -> ([I::V; 4], u32) {
    let w = I::W;
    let mut acc = [I::splat(0.0); 4];
    let mut gt = 0;
    let p = blk.as_ptr();
    let mut i = 0;
    while i + w <= blk.len() {
        I::prefetch(ahead.wrapping_add(i * std::mem::size_of::<E>()));
        sweep_vec::<I, EVAL, CLAMP>(E::load::<I>(p.add(i)), vl, vnt, vxt, &mut acc, &mut gt);
        i += w;
    }
    if i < blk.len() {
        // clamped: the lanes past the end hold -inf
        let v = E::load_tail::<I>(p.add(i), blk.len() - i);
        sweep_vec::<I, EVAL, true>(v, vl, vnt, vxt, &mut acc, &mut gt);
    }
    (acc, gt)
}

/// 2^k for the small |k| <= 64 of the shift's rounding (|k| < 2^-10 for |m| < ~700): a short
/// series there (error < 1e-17), libm beyond.
#[inline(always)]
fn exp2_small(k: f64) -> f64 {
    if k.abs() < 1.0 / 1024.0 {
        let y = k * std::f64::consts::LN_2;
        1.0 + y * (1.0 + y * (0.5 + y * (1.0 / 6.0 + y * (1.0 / 24.0))))
    } else {
        k.exp2()
    }
}

/// Statistics of `x` (a row or a segment). `xt` is the target's value for the rank count.
#[inline(always)]
pub(crate) unsafe fn stats<I: Isa, E: Elem, const EVAL: bool>(x: &[E], xt: f32) -> Stats {
    let mut st = Stats::EMPTY;
    let vxt = I::splat(xt);
    for blk in x.chunks(BLOCK) {
        let bm = block_max::<I, E>(blk);
        if bm > st.m {
            if bm == f32::INFINITY {
                return stats_nonfinite(x, xt, EVAL);
            }
            if bm.abs() >= exp2c::BIG {
                return stats_huge(x, xt, EVAL);
            }
            st.rescale(bm);
        }
        if st.m == f32::NEG_INFINITY {
            continue; // all -inf (or NaN) so far: nothing to add
        }
        // The sweep sums 2^(x·L - tm) with tm = m·L rounded to f32 (L = log2 e); the block's
        // sums are brought back to the shift m exactly, in f64: 2^(x·L - tm) = exp(x - m)·2^-k.
        let tm = st.m * exp2c::LOG2E;
        let k = tm as f64 - st.m as f64 * exp2c::LOG2E as f64;
        let (vl, vnt) = (I::splat(exp2c::LOG2E), I::splat(-tm));
        // While this block is swept from L1, pull the next one (of this row, or the next
        // packed row) from memory, so reading and computing overlap.
        let ahead = (blk.as_ptr() as *const u8).wrapping_add(BLOCK * std::mem::size_of::<E>());
        let (mut acc, mut gt) = sweep_block::<I, E, EVAL, false>(blk, vl, vnt, vxt, ahead);
        if EVAL && I::hsum(acc[1]).is_nan() {
            // a -inf (or NaN) entry: again with t clamped (a NaN stays NaN)
            (acc, gt) = sweep_block::<I, E, EVAL, true>(blk, vl, vnt, vxt, ahead);
        }
        let corr = exp2_small(k);
        let se = I::hsum(acc[0]) as f64;
        st.s += corr * se;
        if EVAL {
            // x - m = (t + k) / L, so Σ exp(x - m)·(x - m) = corr·(Σ e·t + k·Σ e) / L
            let set = I::hsum(acc[1]) as f64;
            st.t += corr * (set + k * se) * exp2c::INV_LOG2E;
            st.q += corr * corr * I::hsum(acc[2]) as f64;
            st.gt += u64::from(gt);
        }
    }
    if st.m == f32::NEG_INFINITY {
        st.nan = x.iter().any(|v| v.to_f32().is_nan());
    }
    st
}

/// The rare rows holding +inf: exact scalar statistics (the +inf entries share the mass).
#[cold]
fn stats_nonfinite<E: Elem>(x: &[E], xt: f32, eval: bool) -> Stats {
    let mut st = Stats {
        m: f32::INFINITY,
        ..Stats::EMPTY
    };
    for v in x.iter().map(|v| v.to_f32()) {
        st.nan |= v.is_nan();
        if v == f32::INFINITY {
            st.s += 1.0;
            st.q += 1.0;
        }
        if eval && v > xt {
            st.gt += 1;
        }
    }
    st
}

/// Writes log_softmax (`LOG`) or softmax of a finite-max row into `out`, given its shift `m`
/// and `ln_s` = ln Σ exp(x - m).
#[inline(always)]
pub(crate) unsafe fn write_row<I: Isa, E: Elem, const LOG: bool>(
    x: &[E],
    m: f32,
    ln_s: f32,
    out: &mut [f32],
) {
    let w = I::W;
    let vm = I::splat(m);
    let vl = I::splat(ln_s);
    let n = x.len();
    let mut i = 0;
    // A macro, not a closure: closures do not inherit the target features of the function
    // they are inlined into, so every vector operation in one would be an out-of-line call.
    macro_rules! f {
        ($v:expr) => {{
            let y = I::sub(I::sub($v, vm), vl);
            if LOG {
                y
            } else {
                I::exp_le0(y)
            }
        }};
    }
    while i + w <= n {
        I::store(out.as_mut_ptr().add(i), f!(E::load::<I>(x.as_ptr().add(i))));
        i += w;
    }
    if i < n {
        let v = f!(E::load_tail::<I>(x.as_ptr().add(i), n - i));
        I::store_tail(out.as_mut_ptr().add(i), v, n - i);
    }
}

/// Σ x over a row, read-only: the roofline the benchmarks compare against.
#[inline(always)]
pub(crate) unsafe fn sum<I: Isa, E: Elem>(x: &[E]) -> f64 {
    let w = I::W;
    let z = I::splat(0.0);
    let (mut a0, mut a1, mut a2, mut a3) = (z, z, z, z);
    let p = x.as_ptr();
    let n = x.len();
    let mut i = 0;
    while i + 4 * w <= n {
        a0 = I::add(a0, E::load::<I>(p.add(i)));
        a1 = I::add(a1, E::load::<I>(p.add(i + w)));
        a2 = I::add(a2, E::load::<I>(p.add(i + 2 * w)));
        a3 = I::add(a3, E::load::<I>(p.add(i + 3 * w)));
        i += 4 * w;
    }
    let tail: f64 = x[i..].iter().map(|v| v.to_f32() as f64).sum();
    I::hsum(I::add(I::add(a0, a1), I::add(a2, a3))) as f64 + tail
}

/// Statistics of a probabilities row for the metrics: max p, Σ p², Σ p·ln p (p > 0), the
/// count of p > p_t, and whether a NaN was seen. f32 lanes within a block, f64 across blocks.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct ProbStats {
    pub pmax: f64,
    pub sq: f64,
    pub plogp: f64,
    pub gt: u64,
    pub nan: bool,
}

#[inline(always)]
unsafe fn probs_vec<I: Isa>(p: I::V, vpt: I::V, acc: &mut [I::V; 4]) {
    // ln of p > 0 by the same log as the sums (exponent + atanh series: any positive normal
    // value); p = 0 (or subnormal) contributes 0, NaN propagates through the sums
    let tiny = I::splat(f32::MIN_POSITIVE);
    let pc = I::max_keep_nan(tiny, p);
    let pl = I::mul(p, I::ln_ge1(pc));
    acc[0] = I::max_ignore_nan(acc[0], p);
    acc[1] = I::fma(p, p, acc[1]);
    acc[2] = I::add(acc[2], I::zero_where_zero(p, pl));
    acc[3] = I::count_gt(acc[3], p, vpt);
}

/// [`ProbStats`] of one row of probabilities against the target's probability `pt`.
#[inline(always)]
pub(crate) unsafe fn probs_stats<I: Isa, E: Elem>(x: &[E], pt: f32) -> ProbStats {
    let w = I::W;
    let vpt = I::splat(pt);
    let mut out = ProbStats {
        pmax: f64::NEG_INFINITY,
        ..ProbStats::default()
    };
    for blk in x.chunks(BLOCK) {
        let z = I::splat(0.0);
        let mut acc = [I::splat(f32::NEG_INFINITY), z, z, z];
        let p = blk.as_ptr();
        let mut i = 0;
        while i + w <= blk.len() {
            probs_vec::<I>(E::load::<I>(p.add(i)), vpt, &mut acc);
            i += w;
        }
        // the tail padded with zeros: they add nothing to Σ p² and Σ p·ln p, but would be
        // counted above a negative p_t and would be the max of a row of negatives (invalid
        // probabilities, but every path must give them the same rank and confidence)
        let (mut pad, mut tail_max) = (0u64, f32::NEG_INFINITY);
        if i < blk.len() {
            let mut buf = [E::ZERO; 16];
            buf[..blk.len() - i].copy_from_slice(&blk[i..]);
            let keep = acc[0];
            probs_vec::<I>(E::load::<I>(buf.as_ptr()), vpt, &mut acc);
            acc[0] = keep;
            tail_max = blk[i..].iter().map(|v| v.to_f32()).fold(tail_max, f32::max);
            pad = (w - (blk.len() - i)) as u64;
        }
        out.pmax = out.pmax.max(I::hmax(acc[0]).max(tail_max) as f64);
        out.sq += I::hsum(acc[1]) as f64;
        out.plogp += I::hsum(acc[2]) as f64;
        out.gt += I::hsum(acc[3]) as u64 - if 0.0 > pt { pad } else { 0 };
    }
    out.nan = out.sq.is_nan() || out.plogp.is_nan();
    out
}

/// Binary cross-entropy with logits over a run of elements (PyTorch's stable form):
/// l = (1-y)·x + (1 + (pw-1)·y)·(log1p(exp(-|x|)) + max(-x, 0)), times w, computed as
/// lw·log1p(e) + (1-y)·max(x, 0) + pw·y·max(-x, 0) (tiny losses keep their relative accuracy
/// where the first form cancels); per-element losses to `out` if given. Returns Σ l (f32 lanes within a block of `BLOCK`, f64 across blocks).
///
/// log1p(e) for e = exp(-|x|) in (0, 1] is ln(u) - ((u - 1) - e) with u = 1 + e rounded: the
/// second term restores what the rounding of u lost, so tiny losses keep their relative
/// accuracy (ln u alone would give 0 for e < 2^-24).
#[inline(always)]
pub(crate) unsafe fn bce_run<I: Isa>(
    x: &[f32],
    y: &[f32],
    w: Option<&[f32]>,
    pw: Option<&[f32]>,
    mut out: Option<&mut [f32]>,
) -> f64 {
    let n = x.len();
    let (zero, one) = (I::splat(0.0), I::splat(1.0));
    // the loss of one vector; `m` masks a partial vector's padding lanes (x = y = 0 there)
    macro_rules! loss {
        ($vx:expr, $vy:expr, $vw:expr, $vp:expr) => {{
            let (vx, vy) = ($vx, $vy);
            let e = I::exp_le0(I::sub(zero, I::abs(vx)));
            let u = I::add(one, e);
            let l1p = I::sub(I::ln_ge1(u), I::sub(I::sub(u, one), e));
            let pos = I::max_keep_nan(zero, vx);
            let neg = I::max_keep_nan(zero, I::sub(zero, vx));
            let (lw, pwy) = match $vp {
                Some(p) => (I::fma(I::sub(p, one), vy, one), I::mul(p, vy)),
                None => (one, vy),
            };
            // (1-y)·x + lw·max(-x, 0) rewritten as (1-y)·max(x, 0) + pw·y·max(-x, 0): the
            // same value with no cancellation of x against max(-x, 0) for y in {0, 1}
            // + 0·max(-x, 0): NaN at x = -inf, where PyTorch's form is NaN (-inf + inf)
            let stable = I::fma(
                lw,
                l1p,
                I::fma(I::sub(one, vy), pos, I::fma(pwy, neg, I::mul(zero, neg))),
            );
            // a non-finite target takes PyTorch's form itself (its inf/NaN pattern)
            let torch = I::fma(lw, I::add(l1p, neg), I::mul(I::sub(one, vy), vx));
            let yfin = I::ok_abs_below(vy, f32::INFINITY, one);
            let l = I::blend_eq(yfin, 1.0, torch, stable);
            match $vw {
                Some(w) => I::mul(l, w),
                None => l,
            }
        }};
    }
    let mut total = 0.0f64;
    let mut i0 = 0;
    while i0 < n {
        let end = (i0 + BLOCK).min(n);
        let mut acc = zero;
        let mut i = i0;
        while i + I::W <= end {
            // (matches, not closures: a closure would not inherit the target features)
            let vw = match w {
                Some(w) => Some(I::load(w.as_ptr().add(i))),
                None => None,
            };
            let vp = match pw {
                Some(p) => Some(I::load(p.as_ptr().add(i))),
                None => None,
            };
            let l = loss!(
                I::load(x.as_ptr().add(i)),
                I::load(y.as_ptr().add(i)),
                vw,
                vp
            );
            if let Some(o) = out.as_deref_mut() {
                I::store(o.as_mut_ptr().add(i), l);
            }
            acc = I::add(acc, l);
            i += I::W;
        }
        if i < end {
            // the tail through zero-padded buffers; padding lanes get weight 0
            let k = end - i;
            let (mut xb, mut yb, mut wb, mut pb) = ([0f32; 16], [0f32; 16], [0f32; 16], [0f32; 16]);
            xb[..k].copy_from_slice(&x[i..end]);
            yb[..k].copy_from_slice(&y[i..end]);
            match w {
                Some(w) => wb[..k].copy_from_slice(&w[i..end]),
                None => wb[..k].iter_mut().for_each(|v| *v = 1.0),
            }
            if let Some(p) = pw {
                pb[..k].copy_from_slice(&p[i..end]);
            }
            let vp = match pw {
                Some(_) => Some(I::load(pb.as_ptr())),
                None => None,
            };
            let l = loss!(
                I::load(xb.as_ptr()),
                I::load(yb.as_ptr()),
                Some(I::load(wb.as_ptr())),
                vp
            );
            if let Some(o) = out.as_deref_mut() {
                let mut b = [0f32; 16];
                I::store(b.as_mut_ptr(), l);
                o[i..end].copy_from_slice(&b[..k]);
            }
            acc = I::add(acc, l);
        }
        total += I::hsum(acc) as f64;
        i0 = end;
    }
    total
}

/// [`bce_run`] with the unused storage parameter `dispatch!` expects.
#[inline(always)]
unsafe fn bce_run_e<I: Isa, E: Elem>(
    x: &[f32],
    y: &[f32],
    w: Option<&[f32]>,
    pw: Option<&[f32]>,
    out: Option<&mut [f32]>,
) -> f64 {
    bce_run::<I>(x, y, w, pw, out)
}

/// Longest row the rows-in-lanes kernel takes: beyond it one row per call is faster.
pub(crate) const LANES_MAX_C: usize = 32;

/// Σ of the per-row results of the fully vectorised short-row kernels, and the rows done.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockSums {
    pub sum: f64,
    pub weight: f64,
    pub rows: usize,
}

/// How a short-row block's columns reach the lanes (the `M` parameter of the kernels below):
/// row l at `p + l·st`, each column gathered.
pub(crate) const GATHER: u8 = 0;
/// Column j at `p + j·st`, row l at offset l (a column-major tile, or a Fortran-order input
/// read in place): plain vector loads.
pub(crate) const COLS: u8 = 1;
/// Row l at `p + l·st`, loaded row by row and transposed in registers (`Isa::rows_to_cols`).
pub(crate) const TRANSPOSE: u8 = 2;

/// Max, exp-sum and log of W rows of `c` (1..=LANES_MAX_C) elements, one row per lane, and
/// (with `PICK`) each lane's value at its class `kf` (f32) / `idx` (element offsets, for the
/// gathers of `GATHER`; the other modes pick by a compare and blend per column).
///
/// Returns (m, ln s, finite, x_t) where finite is false if any lane has an inf/NaN max or
/// sum, or a max of magnitude >= BIG (see `stats`): such blocks are left to the row kernel.
#[inline(always)]
unsafe fn lane_lse<I: Isa, E: Elem, const M: u8, const PICK: bool>(
    p: *const E,
    st: usize,
    c: usize,
    kf: I::V,
    idx: &[i32; 16],
) -> (I::V, I::V, bool, I::V) {
    let zero = I::splat(0.0);
    if c == 2 {
        // Binary rows: m = max(a, b) and s = 1 + 2^(-|a - b|·log2 e), no shift to correct.
        // One check: e is NaN where a or b is NaN or both are the same inf, m must be finite
        // and below BIG (as in `stats`; it also keeps m - x from overflowing). A -inf beside
        // a finite value (a masked class) stays: e = 0, s = 1.
        let (a, b) = if M == COLS {
            (E::load::<I>(p), E::load::<I>(p.add(st)))
        } else if st == 2 {
            E::load_pair::<I>(p)
        } else if M == TRANSPOSE {
            let mut ab = std::mem::MaybeUninit::<[I::V; 2]>::uninit();
            let q = ab.as_mut_ptr() as *mut I::V;
            I::rows_to_cols::<E>(p, st, 2, q);
            (q.read(), q.add(1).read())
        } else {
            (E::load_col::<I>(p, st), E::load_col::<I>(p.add(1), st))
        };
        let vm = I::max_ignore_nan(a, b);
        let d = I::abs(I::sub(a, b));
        let e = I::exp2_sum(I::mul(d, I::splat(-exp2c::LOG2E)));
        let finite = I::all_abs_below(I::fma(e, zero, vm), exp2c::BIG);
        let xt = if PICK {
            I::blend_eq(kf, 1.0, a, b)
        } else {
            zero
        };
        return (vm, I::ln_ge1(I::add(I::splat(1.0), e)), finite, xt);
    }
    // Only the first c columns are written and read: no need to initialise the rest.
    let mut tile = std::mem::MaybeUninit::<[I::V; LANES_MAX_C]>::uninit();
    let cols = tile.as_mut_ptr() as *mut I::V;
    let mut vm = I::splat(f32::NEG_INFINITY);
    let mut xt = zero;
    if M == TRANSPOSE {
        I::rows_to_cols::<E>(p, st, c, cols);
    }
    for j in 0..c {
        let v = match M {
            COLS => E::load::<I>(p.add(j * st)),
            TRANSPOSE => cols.add(j).read(),
            _ => E::load_col::<I>(p.add(j), st),
        };
        if M != TRANSPOSE {
            cols.add(j).write(v);
        }
        vm = I::max_ignore_nan(vm, v);
        if PICK && M != GATHER {
            xt = I::blend_eq(kf, j as f32, xt, v);
        }
    }
    if PICK && M == GATHER {
        xt = E::load_idx::<I>(p, idx);
    }
    // Σ 2^(x·L - tm) with tm = m·L rounded, times 2^(m·L - tm) (see `stats`).
    let vl = I::splat(exp2c::LOG2E);
    let tm = I::mul(vm, vl);
    let vnt = I::sub(zero, tm);
    let mut vs = zero;
    for j in 0..c {
        vs = I::add(vs, I::exp2_sum(I::fma(cols.add(j).read(), vl, vnt)));
    }
    let vs = I::mul(vs, I::exp2_sum(I::fma(vm, I::splat(-exp2c::LOG2E), tm)));
    // One check for all lanes: vs·0 + m is NaN where vs is inf/NaN, and m must be finite
    // and below BIG (see `stats`); other blocks are left to the row kernel.
    let finite = I::all_abs_below(I::fma(vs, zero, vm), exp2c::BIG);
    let ln_s = I::ln_ge1(I::max_ignore_nan(I::splat(1.0), vs));
    (vm, ln_s, finite, xt)
}

/// How far ahead of the rows in lanes their data is prefetched, in bytes.
const SHORT_AHEAD: usize = 4096;

/// Prefetches the logits `SHORT_AHEAD` bytes past the W rows of stride `st` at `p`, when rows
/// are short (<= 32 bytes): it lifts C = 2 cross-entropy from 0.6 to 0.85 of the read-only
/// roofline (the hardware prefetcher alone falls behind two equal streams, logits and
/// targets), but one prefetch per line costs more than it gains at C = 32 (0.72 -> 0.56),
/// measured (AVX-512).
#[inline(always)]
pub(crate) unsafe fn short_prefetch<I: Isa, E: Elem>(p: *const E, st: usize) {
    let bytes = I::W * st * std::mem::size_of::<E>();
    if st * std::mem::size_of::<E>() <= 32 {
        let p = p as *const u8;
        for k in (0..bytes).step_by(64) {
            I::prefetch(p.wrapping_add(SHORT_AHEAD + k));
        }
    }
}

/// One row's class target: (class to read, 1 if scored else 0, weight as f32, weight as f64),
/// or None for a target other than `ignore` outside [0, c). Ignored rows read class 0.
#[inline(always)]
fn decode_target(
    v: i64,
    c: usize,
    ignore: i64,
    wt: Option<(&[f32], &[f64])>,
) -> Option<(usize, f32, f32, f64)> {
    let inr = (v as u64) < c as u64;
    if v == ignore {
        return Some((0, 0.0, 0.0, 0.0));
    }
    if !inr {
        return None;
    }
    let k = v as usize;
    Some(wt.map_or((k, 1.0, 1.0, 1.0), |(a, b)| (k, 1.0, a[k], b[k])))
}

/// Where a run of `n` rows of `c` classes is, for the kernels below: row l at `p + l·st`
/// (`cm` false) or column j at `p + j·st` with row l at offset l (`cm` true, short rows only).
/// The caller guarantees every addressed element is readable.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Block<E> {
    pub p: *const E,
    pub st: usize,
    pub n: usize,
    pub c: usize,
}

// SAFETY: a Block only addresses memory its creator keeps alive and unaliased by writers for
// the call (a borrowed input or this thread's tile).
unsafe impl<E: Send> Send for Block<E> {}

/// The class-target side of a cross-entropy block: packed i64 targets (one per row), the
/// ignore index, optional (f32, f64) class weights, and an optional per-row f32 output.
pub(crate) struct CeArgs<'a> {
    pub t: &'a [i64],
    pub ignore: i64,
    pub wt: Option<(&'a [f32], &'a [f64])>,
    pub out: Option<&'a mut [f32]>,
}

/// Cross-entropy of short rows, W rows per step, added to `acc`, until the end or the first
/// block holding a target out of range or an inf/NaN row (left to the row kernel, which
/// reports or handles it). Returns the rows done.
#[inline(always)]
pub(crate) unsafe fn ce_short<I: Isa, E: Elem, const M: u8>(
    b: Block<E>,
    a: &mut CeArgs,
    acc: &mut BlockSums,
) -> usize {
    let w = I::W;
    let (c, st, t) = (b.c, b.st, a.t);
    if c == 0 || c > LANES_MAX_C || t.len() < b.n {
        return 0;
    }
    if c == 2 && st == 2 && M != COLS && a.wt.is_none() {
        return ce_pairs::<I, E>(b, a, acc);
    }
    // Element offsets of the targets for the gathers (rows mode only).
    let istride = if M == GATHER { st } else { 0 };
    let (mut idx, mut wl, mut sl, mut kl) = ([0i32; 16], [0f32; 16], [0f32; 16], [0f32; 16]);
    let mut done = 0;
    while done + w <= b.n {
        let r0 = done;
        // (weights, scored lanes): an ignored row's lane must give 0 even if the class it
        // reads is -inf (0·inf would be NaN), so it is masked, not multiplied.
        let (weights, scored, wsum, bad, kf) = if a.wt.is_none() {
            let (v, n, bad, kf) = I::targets(t.as_ptr().add(r0), c, istride, a.ignore, &mut idx);
            (v, v, n as f64, bad, kf)
        } else {
            let (mut bad, mut wsum) = (false, 0.0f64);
            for l in 0..w {
                match decode_target(t[r0 + l], c, a.ignore, a.wt) {
                    Some((k, sc, w32, w64)) => {
                        idx[l] = (l * istride + k) as i32;
                        (sl[l], wl[l], kl[l]) = (sc, w32, k as f32);
                        wsum += w64;
                    }
                    None => bad = true,
                }
            }
            (
                I::load(wl.as_ptr()),
                I::load(sl.as_ptr()),
                wsum,
                bad,
                I::load(kl.as_ptr()),
            )
        };
        if bad {
            break;
        }
        let p = if M == COLS {
            b.p.add(r0)
        } else {
            b.p.add(r0 * st)
        };
        if M != COLS {
            short_prefetch::<I, E>(p, st);
        }
        let pt = (t.as_ptr().add(r0) as *const u8).wrapping_add(SHORT_AHEAD);
        for k in (0..w * 8).step_by(64) {
            I::prefetch(pt.wrapping_add(k));
        }
        let (vm, ln_s, finite, xt) = lane_lse::<I, E, M, true>(p, st, c, kf, &idx);
        if !finite {
            break;
        }
        let loss = I::zero_where_zero(scored, I::mul(I::add(I::sub(vm, xt), ln_s), weights));
        if let Some(o) = a.out.as_deref_mut() {
            I::store(o.as_mut_ptr().add(r0), loss);
        }
        acc.sum += I::hsum(loss) as f64;
        acc.weight += wsum;
        done += w;
    }
    acc.rows += done;
    done
}

/// [`ce_short`] of packed binary rows without class weights: the most common dump, in its
/// own loop so that nothing of the general short-row body (tiles, transposes, the weighted
/// decode) competes for registers (that cost C = 2 a quarter of its speed). Same arithmetic
/// as `lane_lse`'s c = 2 branch and the same per-block sum, so results are bit-identical.
#[inline(always)]
unsafe fn ce_pairs<I: Isa, E: Elem>(b: Block<E>, a: &mut CeArgs, acc: &mut BlockSums) -> usize {
    let w = I::W;
    let t = a.t;
    let mut idx = [0i32; 16];
    let (zero, one, nl2) = (I::splat(0.0), I::splat(1.0), I::splat(-exp2c::LOG2E));
    let mut out = a.out.as_deref_mut();
    // the running sum continues acc's, block by block as in `ce_short` (bit-identical)
    let (mut done, mut sum, mut wsum) = (0, acc.sum, 0u64);
    while done + w <= b.n {
        let (scored, n, bad, kf) = I::targets(t.as_ptr().add(done), 2, 0, a.ignore, &mut idx);
        if bad {
            break;
        }
        let p = b.p.add(done * 2);
        short_prefetch::<I, E>(p, 2);
        let pt = (t.as_ptr().add(done) as *const u8).wrapping_add(SHORT_AHEAD);
        for k in (0..w * 8).step_by(64) {
            I::prefetch(pt.wrapping_add(k));
        }
        let (x0, x1) = E::load_pair::<I>(p);
        let vm = I::max_ignore_nan(x0, x1);
        let e = I::exp2_sum(I::mul(I::abs(I::sub(x0, x1)), nl2));
        if !I::all_abs_below(I::fma(e, zero, vm), exp2c::BIG) {
            break;
        }
        let ln_s = I::ln_ge1(I::add(one, e));
        let xt = I::blend_eq(kf, 1.0, x0, x1);
        let loss = I::zero_where_zero(scored, I::mul(I::add(I::sub(vm, xt), ln_s), scored));
        if let Some(o) = out.as_deref_mut() {
            I::store(o.as_mut_ptr().add(done), loss);
        }
        sum += I::hsum(loss) as f64;
        wsum += u64::from(n);
        done += w;
    }
    acc.sum = sum;
    // counts: exact in f64 in any order
    acc.weight += wsum as f64;
    acc.rows += done;
    done
}

/// `nll_loss` of `n` packed binary rows at `p` (row l at `p + 2l`) without class weights or
/// per-row output, 16 rows per step into the per-lane f64 sums `lsum` (losses) and `lw`
/// (weights), lane l taking row 16j + l: the arithmetic and order of the caller's scalar loop
/// (-f64(x_t) per scored row, +0 and weight 0 for an ignored one), so the sums are the same
/// bits. Stops at the end or at the first 16 rows holding a target out of range or an x_t
/// above `tol` (not a log-probability), which the caller's loop then stops at. Returns the
/// rows done.
#[inline(always)]
pub(crate) unsafe fn nll_pairs<I: Isa, E: Elem>(
    p: *const E,
    n: usize,
    t: &[i64],
    ignore: i64,
    tol: f64,
    sums: &mut [[f64; 16]; 2],
) -> usize {
    let mut idx = [0i32; 16];
    let (mut xt, mut sc) = ([0f32; 16], [0f32; 16]);
    let mut done = 0;
    'blocks: while done + 16 <= n.min(t.len()) {
        // both streams prefetched ahead, as in `ce_pairs`
        short_prefetch::<I, E>(p.add(2 * done), 2);
        short_prefetch::<I, E>(p.add(2 * done + I::W * 2), 2);
        let pt = (t.as_ptr().add(done) as *const u8).wrapping_add(SHORT_AHEAD);
        for k in (0..16 * 8).step_by(64) {
            I::prefetch(pt.wrapping_add(k));
        }
        for g in (0..16).step_by(I::W) {
            let (scored, _, bad, kf) = I::targets(t.as_ptr().add(done + g), 2, 0, ignore, &mut idx);
            if bad {
                break 'blocks;
            }
            let (a, b) = E::load_pair::<I>(p.add(2 * (done + g)));
            I::store(xt.as_mut_ptr().add(g), I::blend_eq(kf, 1.0, a, b));
            I::store(sc.as_mut_ptr().add(g), scored);
        }
        // branch-free, so that it vectorises: selects and a count, no `&&` (it compiled to a
        // branch per lane: 2.2 -> 1.5 ns per row)
        let (mut loss, mut w, mut above) = ([0f64; 16], [0f64; 16], 0u32);
        for l in 0..16 {
            let v = f64::from(xt[l]);
            let keep = sc[l] != 0.0;
            above += u32::from(keep) * u32::from(v > tol);
            loss[l] = if keep { -v } else { 0.0 };
            w[l] = f64::from(sc[l]);
        }
        if above != 0 {
            break;
        }
        for l in 0..16 {
            sums[0][l] += loss[l];
            sums[1][l] += w[l];
        }
        done += 16;
    }
    done
}

/// logsumexp of short rows into `out`, W rows per step, until the end or the first block
/// holding an inf/NaN row. Returns the rows done.
#[inline(always)]
pub(crate) unsafe fn lse_short<I: Isa, E: Elem, const M: u8, const SPLIT: bool>(
    b: Block<E>,
    out: &mut [f32],
) -> usize {
    let w = I::W;
    let (c, st) = (b.c, b.st);
    let mut done = 0;
    let need = if SPLIT { 2 * b.n } else { b.n };
    if c == 0 || c > LANES_MAX_C || out.len() < need {
        return 0;
    }
    let (zero, idx) = (I::splat(0.0), [0i32; 16]);
    while done + w <= b.n {
        let p = if M == COLS {
            b.p.add(done)
        } else {
            b.p.add(done * st)
        };
        if M != COLS {
            short_prefetch::<I, E>(p, st);
        }
        let (vm, ln_s, finite, _) = lane_lse::<I, E, M, false>(p, st, c, zero, &idx);
        if !finite {
            break;
        }
        if SPLIT {
            // the max and ln s apart, for log-probabilities (x - m) - ln s (see `write_row`)
            I::store(out.as_mut_ptr().add(done), vm);
            I::store(out.as_mut_ptr().add(b.n + done), ln_s);
        } else {
            I::store(out.as_mut_ptr().add(done), I::add(vm, ln_s));
        }
        done += w;
    }
    done
}

/// log_softmax (`LOG`) or softmax of packed rows of `c` classes given each row's max `m` and
/// `ls` = ln Σ exp(x - m): out = (x - m) - ln s (or its exp), over the flat run, with the two
/// per-row values spread per element in `spread` (2 · rows · c floats of scratch).
#[inline(always)]
pub(crate) unsafe fn write_rows<I: Isa, E: Elem, const LOG: bool>(
    x: &[E],
    c: usize,
    m: &[f32],
    ls: &[f32],
    spread: &mut Vec<f32>,
    out: &mut [f32],
) {
    let n = x.len();
    spread.clear();
    spread.resize(2 * n, 0.0);
    let (sm, sl) = spread.split_at_mut(n);
    for (r, (&mv, &lv)) in m.iter().zip(ls).enumerate() {
        sm[r * c..(r + 1) * c].fill(mv);
        sl[r * c..(r + 1) * c].fill(lv);
    }
    let w = I::W;
    let mut i = 0;
    macro_rules! f {
        ($v:expr, $i:expr) => {{
            let y = I::sub(
                I::sub($v, I::load(sm.as_ptr().add($i))),
                I::load(sl.as_ptr().add($i)),
            );
            if LOG {
                y
            } else {
                I::exp_le0(y)
            }
        }};
    }
    while i + w <= n {
        I::store(
            out.as_mut_ptr().add(i),
            f!(E::load::<I>(x.as_ptr().add(i)), i),
        );
        i += w;
    }
    if i < n {
        let k = n - i;
        let (mut bm, mut bl) = ([0f32; 16], [0f32; 16]);
        bm[..k].copy_from_slice(&sm[i..n]);
        bl[..k].copy_from_slice(&sl[i..n]);
        let y = I::sub(
            I::sub(
                E::load_tail::<I>(x.as_ptr().add(i), k),
                I::load(bm.as_ptr()),
            ),
            I::load(bl.as_ptr()),
        );
        let v = if LOG { y } else { I::exp_le0(y) };
        I::store_tail(out.as_mut_ptr().add(i), v, k);
    }
}

/// log_softmax (`LOG`) or softmax of `n` packed binary rows at `p` (row l at `p + 2l`) into
/// the packed f32 `out`, W rows per step in one pass: each block's max and ln s as
/// [`lse_short`] takes them (`lane_lse`'s c = 2 branch), then (x - m) - ln s per element (or its
/// exp) as [`write_rows`] writes it, so the bits are those of the tile path, without its
/// per-row spread and second read. Stops at the end (a ragged end of fewer than W rows is left)
/// or at the first block holding a row that is not ordinary. Returns the rows done.
#[inline(always)]
pub(crate) unsafe fn softmax_pairs<I: Isa, E: Elem, const LOG: bool>(
    p: *const E,
    n: usize,
    out: &mut [f32],
) -> usize {
    let w = I::W;
    let (zero, idx) = (I::splat(0.0), [0i32; 16]);
    let mut done = 0;
    while done + w <= n.min(out.len() / 2) {
        let q = p.add(2 * done);
        short_prefetch::<I, E>(q, 2);
        let (vm, ln_s, finite, _) = lane_lse::<I, E, GATHER, false>(q, 2, 2, zero, &idx);
        if !finite {
            break;
        }
        let (a, b) = E::load_pair::<I>(q);
        let (ya, yb) = (I::sub(I::sub(a, vm), ln_s), I::sub(I::sub(b, vm), ln_s));
        let (ya, yb) = if LOG {
            (ya, yb)
        } else {
            (I::exp_le0(ya), I::exp_le0(yb))
        };
        I::store_pair(out.as_mut_ptr().add(2 * done), ya, yb);
        done += w;
    }
    done
}

/// Loads the c columns of W short rows into `cols` (see `GATHER`, `COLS`, `TRANSPOSE`) and
/// returns their lane-wise max (NaN ignored).
#[inline(always)]
pub(crate) unsafe fn load_cols<I: Isa, E: Elem, const M: u8>(
    p: *const E,
    st: usize,
    c: usize,
    cols: *mut I::V,
) -> I::V {
    if c == 2 && st == 2 && M != COLS {
        let (a, b) = E::load_pair::<I>(p);
        cols.write(a);
        cols.add(1).write(b);
    } else if M == TRANSPOSE {
        I::rows_to_cols::<E>(p, st, c, cols);
    } else {
        for j in 0..c {
            let v = if M == COLS {
                E::load::<I>(p.add(j * st))
            } else {
                E::load_col::<I>(p.add(j), st)
            };
            cols.add(j).write(v);
        }
    }
    let mut vm = I::splat(f32::NEG_INFINITY);
    for j in 0..c {
        vm = I::max_ignore_nan(vm, cols.add(j).read());
    }
    vm
}

/// What the rows of [`eval_short`] hold.
pub(crate) const LOGITS: u8 = 0;
pub(crate) const LOG_PROBS: u8 = 1;
pub(crate) const PROBS: u8 = 2;

/// [`eval_short`]'s metrics of W probability rows (columns at `cols`, lane max `vm`, target
/// value `xt`), stored at lane offset `g`: the arithmetic of `probs_vec` (Σ p², Σ p·ln p with
/// p = 0 adding 0, the count of p > p_t, max p); the `nll` slot holds p_t itself, whose
/// -ln the caller takes in float64 (as the row path does: exact). Lanes with a NaN or infinite
/// value, or a target probability below the smallest normal (NLL inf or a subnormal's log),
/// are not ordinary.
#[inline(always)]
unsafe fn probs_lanes<I: Isa>(
    cols: *const I::V,
    c: usize,
    vm: I::V,
    xt: I::V,
    g: usize,
    o: &mut LaneMetrics,
) {
    let (zero, one) = (I::splat(0.0), I::splat(1.0));
    let tiny = I::splat(f32::MIN_POSITIVE);
    let (mut sq, mut plogp, mut gt) = (zero, zero, zero);
    for j in 0..c {
        let p = cols.add(j).read();
        let pl = I::mul(p, I::ln_ge1(I::max_keep_nan(tiny, p)));
        sq = I::fma(p, p, sq);
        plogp = I::add(plogp, I::zero_where_zero(p, pl));
        gt = I::count_gt(gt, p, xt);
    }
    // ordinary: finite sums and max (NaN anywhere spoils a sum), p_t >= the smallest normal
    let chk = I::fma(I::add(sq, plogp), zero, vm);
    let okv = I::mul(
        I::ok_abs_below(chk, f32::MAX, one),
        I::sub(one, I::count_gt(zero, tiny, xt)),
    );
    let brier = I::add(I::fma(I::splat(-2.0), xt, sq), one);
    for (a, v) in [
        (&mut o.nll, xt),
        (&mut o.ent, I::sub(zero, plogp)),
        (&mut o.brier, brier),
        (&mut o.conf, vm),
        (&mut o.rank, gt),
        (&mut o.ok, okv),
    ] {
        I::store(a.as_mut_ptr().add(g), v);
    }
}

/// [`eval_short`]'s metrics of W binary rows (logits or log-probabilities) in closed form,
/// stored at lane offset `g`. With a, b the two values, m = max(a, b) and u = -|a - b| (the
/// smaller value less m, clamped at LO so that e·u stays finite where one is -inf):
/// - logits: e = exp(u), s = 1 + e, κ = 1/s; NLL = (m - x_t) + ln s, entropy = ln s - κ·e·u,
///   Brier = κ²(1 + e²) - 2κ·e_t + 1 with e_t = 1 for the larger class and e for the other;
/// - log-probabilities: p = exp(x) per class; NLL = -x_t, entropy = -Σ p·x, Brier = Σ p² -
///   2p_t + 1, confidence exp(m) (taken in f64 by the caller from m);
///
/// rank = 1 where the other class is above the target (a tie counts for the target). One exp,
/// one log and one division per lane for logits (the general body takes five
/// transcendentals), two exps for log-probabilities. Lanes that are not ordinary (as in the general body: an inf/NaN max or
/// sum, |m| >= BIG, log-probabilities above 0) are marked so and left to the row kernel.
#[inline(always)]
unsafe fn pair_lanes<I: Isa, E: Elem, const M: u8, const KIND: u8>(
    p: *const E,
    st: usize,
    vk: I::V,
    g: usize,
    o: &mut LaneMetrics,
) {
    let (zero, one) = (I::splat(0.0), I::splat(1.0));
    let (a, b) = if M == COLS {
        (E::load::<I>(p), E::load::<I>(p.add(st)))
    } else if st == 2 {
        E::load_pair::<I>(p)
    } else if M == TRANSPOSE {
        let mut ab = std::mem::MaybeUninit::<[I::V; 2]>::uninit();
        let q = ab.as_mut_ptr() as *mut I::V;
        I::rows_to_cols::<E>(p, st, 2, q);
        (q.read(), q.add(1).read())
    } else {
        (E::load_col::<I>(p, st), E::load_col::<I>(p.add(1), st))
    };
    let vm = I::max_ignore_nan(a, b);
    let xt = I::blend_eq(vk, 1.0, a, b);
    let xo = I::blend_eq(vk, 1.0, b, a);
    let gt = I::count_gt(zero, xo, xt);
    let (nll, ent, brier, conf, okv);
    if KIND == LOG_PROBS {
        let lo = I::splat(expc::LO);
        let (pa, pb) = (I::exp_le0(a), I::exp_le0(b));
        let plogp = I::fma(
            pa,
            I::max_keep_nan(lo, a),
            I::mul(pb, I::max_keep_nan(lo, b)),
        );
        let q = I::fma(pa, pa, I::mul(pb, pb));
        // p_t is one of the two exponentials (the same function of the same value)
        let pt = I::blend_eq(vk, 1.0, pa, pb);
        let chk = I::fma(I::add(plogp, q), zero, vm);
        okv = I::mul(
            I::ok_abs_below(chk, exp2c::BIG, one),
            I::ok_abs_below(I::max_keep_nan(zero, vm), f32::MIN_POSITIVE, one),
        );
        nll = I::sub(zero, xt);
        ent = I::sub(zero, plogp);
        brier = I::add(I::fma(I::splat(-2.0), pt, q), one);
        conf = vm;
    } else {
        // t = u·log2(e), clamped at LO2 (e·t finite where one value is -inf)
        let t = I::max_keep_nan(
            I::splat(exp2c::LO2),
            I::mul(I::abs(I::sub(a, b)), I::splat(-exp2c::LOG2E)),
        );
        let e = I::exp2_sum(t);
        let s = I::add(one, e);
        let ln_s = I::ln_ge1(I::max_ignore_nan(one, s));
        let kappa = I::div(one, s);
        // e_t: 1 where the target is the larger value (or a tie), e where it is the smaller
        // (a blend: e - 1 would round away e's low bits)
        let e_t = I::blend_eq(gt, 1.0, one, e);
        let q = I::fma(e, e, one);
        let eu = I::mul(I::mul(e, t), I::splat(exp2c::INV_LOG2E as f32));
        okv = I::ok_abs_below(I::fma(s, zero, vm), exp2c::BIG, one);
        nll = I::add(I::sub(vm, xt), ln_s);
        ent = I::sub(ln_s, I::mul(kappa, eu));
        brier = I::fma(kappa, I::fma(kappa, q, I::mul(I::splat(-2.0), e_t)), one);
        conf = s;
    }
    for (dst, v) in [
        (&mut o.nll, nll),
        (&mut o.ent, ent),
        (&mut o.brier, brier),
        (&mut o.conf, conf),
        (&mut o.rank, gt),
        (&mut o.ok, okv),
    ] {
        I::store(dst.as_mut_ptr().add(g), v);
    }
}

/// Per-row metrics of 16 short rows, one row per lane: NLL, entropy, Brier score, what the
/// confidence is made of (the exp-sum s for logits, κ = 1/s; the max m for log-probabilities,
/// κ = exp(m): taken in f64 by the caller, since calibration errors are small differences of
/// confidences), rank (classes above the target), and `ok` = 1 where the row is ordinary
/// (finite max below BIG and finite sums; other rows are left to the row kernel).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LaneMetrics {
    pub nll: [f32; 16],
    pub ent: [f32; 16],
    pub brier: [f32; 16],
    pub conf: [f32; 16],
    pub rank: [f32; 16],
    pub ok: [f32; 16],
}

/// [`LaneMetrics`] of the 16 short rows at `p` (mode `M`, stride `st`), lane l scored against
/// class `kf[l]` (as f32), as logits, log-probabilities or probabilities (`KIND`: [`LOGITS`],
/// [`LOG_PROBS`], [`PROBS`]), W lanes at a time.
///
/// Sums are taken in base 2 with the shift tm = m·L rounded (see `stats`), t clamped so that
/// e·t stays finite where x = -inf, then brought back to the shift m; the metrics follow
/// `eval::finish_logits` / `eval::finish` (κ = exp(m - lse)), in f32.
#[inline(always)]
pub(crate) unsafe fn eval_short<I: Isa, E: Elem, const M: u8, const KIND: u8>(
    p: *const E,
    st: usize,
    c: usize,
    kf: &[f32; 16],
    o: &mut LaneMetrics,
) {
    let mut tile = std::mem::MaybeUninit::<[I::V; LANES_MAX_C]>::uninit();
    let cols = tile.as_mut_ptr() as *mut I::V;
    let (zero, one, vl) = (I::splat(0.0), I::splat(1.0), I::splat(exp2c::LOG2E));
    for g in (0..16).step_by(I::W) {
        let pb = if M == COLS { p.add(g) } else { p.add(g * st) };
        let vk = I::load(kf.as_ptr().add(g));
        if c == 2 && KIND != PROBS {
            pair_lanes::<I, E, M, KIND>(pb, st, vk, g, o);
            continue;
        }
        let vm = load_cols::<I, E, M>(pb, st, c, cols);
        let mut xt = zero;
        for j in 0..c {
            xt = I::blend_eq(vk, j as f32, xt, cols.add(j).read());
        }
        if KIND == PROBS {
            probs_lanes::<I>(cols, c, vm, xt, g, o);
            continue;
        }
        let tm = I::mul(vm, vl);
        let vnt = I::sub(zero, tm);
        let (mut s, mut et, mut q, mut gt) = (zero, zero, zero, zero);
        for j in 0..c {
            let x = cols.add(j).read();
            let t = I::max_keep_nan(I::splat(exp2c::LO2), I::fma(x, vl, vnt));
            let e = I::exp2_sum(t);
            s = I::add(s, e);
            et = I::fma(e, t, et);
            q = I::fma(e, e, q);
            gt = I::count_gt(gt, x, xt);
        }
        // back to the shift m: exp(x - m) = e·2^k with k = tm - m·L, x - m = (t + k)/L
        let k = I::fma(vm, I::splat(-exp2c::LOG2E), tm);
        let corr = I::exp2_sum(k);
        let sm = I::mul(s, corr);
        let tv = I::mul(
            I::mul(corr, I::fma(k, s, et)),
            I::splat(exp2c::INV_LOG2E as f32),
        );
        let qm = I::mul(I::mul(corr, corr), q);
        // ordinary lanes: |m| < BIG and finite sums (NaN anywhere makes a sum NaN)
        let chk = I::fma(I::add(I::add(sm, tv), qm), zero, vm);
        let mut okv = I::ok_abs_below(chk, exp2c::BIG, one);
        let (nll, ent, brier, conf);
        if KIND == LOG_PROBS {
            // κ = exp(m): log-probabilities above 0 are not ordinary (left to the row kernel)
            okv = I::mul(
                okv,
                I::ok_abs_below(I::max_keep_nan(zero, vm), f32::MIN_POSITIVE, one),
            );
            let vmc = I::max_ignore_nan(I::splat(expc::LO), I::sub(zero, I::abs(vm)));
            let kappa = I::exp_le0(vmc);
            nll = I::sub(zero, xt);
            ent = I::sub(zero, I::mul(kappa, I::fma(vm, sm, tv)));
            let et_ = I::exp_le0(I::sub(zero, I::abs(xt)));
            brier = I::add(
                I::fma(I::mul(kappa, kappa), qm, I::mul(I::splat(-2.0), et_)),
                one,
            );
            conf = vm;
        } else {
            let ln_s = I::ln_ge1(I::max_ignore_nan(one, sm));
            nll = I::add(I::sub(vm, xt), ln_s);
            let kappa = I::exp_le0(I::sub(zero, ln_s));
            let e_t = I::exp_le0(I::sub(xt, vm));
            ent = I::sub(ln_s, I::mul(kappa, tv));
            brier = I::fma(kappa, I::fma(kappa, qm, I::mul(I::splat(-2.0), e_t)), one);
            conf = sm;
        }
        for (a, v) in [
            (&mut o.nll, nll),
            (&mut o.ent, ent),
            (&mut o.brier, brier),
            (&mut o.conf, conf),
            (&mut o.rank, gt),
            (&mut o.ok, okv),
        ] {
            I::store(a.as_mut_ptr().add(g), v);
        }
    }
}

/// The calibration histogram of `evaluate`: rows, Σ confidence (fixed point, see
/// `eval::conf_fixed`) and correct rows per bin, `ways` (1, 2, 4, ...) copies of `n_bins`
/// bins, way-major: lane l adds to copy l % ways, so that rows falling in the same bin (most
/// rows, for a confident model) do not wait on each other's read-modify-write.
pub(crate) struct Hist<'a> {
    pub ways: usize,
    pub count: &'a mut [u64],
    pub conf: &'a mut [u128],
    pub correct: &'a mut [u64],
}

/// The metrics of 16 scored, ordinary rows in float64 (the rank as f64: exact to 2^53).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Metrics16 {
    pub nll: [f64; 16],
    pub ent: [f64; 16],
    pub brier: [f64; 16],
    pub conf: [f64; 16],
    pub rank: [f64; 16],
}

/// A clean group of 16 [`LaneMetrics`] (every row scored and ordinary) widened to
/// [`Metrics16`]: NLL (for probabilities -ln p_t in f64) and the confidence per kind.
#[inline(always)]
unsafe fn lanes_to_metrics<I: Isa, E: Elem>(lane: &LaneMetrics, kind: u8, m: &mut Metrics16) {
    // two loops, not one with a branch: if-converted, the branch would take the scalar
    // libm log of all 16 lanes for every kind (it was a fifth of evaluate's time at C = 2)
    if kind == PROBS {
        // ordinary lanes hold positive normal p_t (see `probs_lanes`)
        for l in 0..16 {
            m.nll[l] = -ln_f32(lane.nll[l]);
        }
    } else {
        for l in 0..16 {
            m.nll[l] = f64::from(lane.nll[l]);
        }
    }
    for l in 0..16 {
        m.ent[l] = f64::from(lane.ent[l]);
        m.brier[l] = f64::from(lane.brier[l]);
        m.rank[l] = f64::from(lane.rank[l]);
    }
    if kind == LOG_PROBS {
        // ordinary lanes: the row max is finite and <= 0 (see `eval_short`)
        for l in 0..16 {
            m.conf[l] = exp_f32_le0(lane.conf[l]);
        }
    } else if kind == PROBS {
        for l in 0..16 {
            m.conf[l] = f64::from(lane.conf[l]);
        }
    } else {
        for l in 0..16 {
            m.conf[l] = 1.0 / f64::from(lane.conf[l]);
        }
    }
}

/// ln p in float64 for a positive normal float32 p (so every probability a float32, float16 or
/// bfloat16 dump holds), without libm and without a table, so the 16-lane loops vectorise it:
/// p = 2^e·m with m in [√½, √2), ln m = 2·atanh(z) = 2(z + z³/3 + ... + z²¹/21),
/// z = (m - 1)/(m + 1) (|z| <= 0.1716: truncation below 1e-17 relative), and e·ln 2 in two
/// parts. m - 1 and m + 1 are exact, so the result is within a few float64 ulps of ln p
/// (and exact in relative terms near p = 1). Every path that takes a float32-exact
/// probability's log uses it, so a row's NLL does not depend on the path.
#[inline(always)]
pub(crate) fn ln_f32(p: f32) -> f64 {
    const LN2_HI: f64 = 0.693_147_180_369_123_8; // 32 significant bits: e·LN2_HI is exact
    const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
    let bits = p.to_bits() as i32;
    // exponent and mantissa in [1, 2), then m in [√½, √2): m > √2 halves m and bumps e
    let e0 = ((bits >> 23) & 0xff) - 127;
    let m0 = f64::from(f32::from_bits(((bits & 0x007f_ffff) | 0x3f80_0000) as u32));
    let big = m0 > std::f64::consts::SQRT_2;
    let (m, e) = if big { (m0 * 0.5, e0 + 1) } else { (m0, e0) };
    let z = (m - 1.0) / (m + 1.0);
    let z2 = z * z;
    let mut q = 2.0 / 21.0;
    for k in (0..10).rev() {
        q = q * z2 + 2.0 / f64::from(2 * k + 1);
    }
    let e = f64::from(e);
    e * LN2_HI + (e * LN2_LO + z * q)
}

/// exp(x) in float64 for a finite float32 x <= 0 (a log-probability row's max: its
/// confidence): [`exp_le0_f64`].
#[inline(always)]
pub(crate) fn exp_f32_le0(x: f32) -> f64 {
    exp_le0_f64(f64::from(x))
}

/// exp(x) in float64 for x <= 0 (-inf gives 0, NaN gives NaN), without libm, so the 16-lane
/// loops (and [`sums_f64`]) vectorise it: exp(x) = 2^n·exp(r),
/// n = round(x/ln 2), r = x - n·ln 2 in two parts (|r| <= 0.347), exp(r) by its series to
/// r^13/13! (truncation below 1e-17 relative), 2^n applied in two halves (so results down to
/// the subnormals; 0 below -745.2). Within a few float64 ulps of exp(x).
#[inline(always)]
pub(crate) fn exp_le0_f64(x: f64) -> f64 {
    // 1/k! for k = 1..=13
    const C: [f64; 13] = [
        1.0,
        1.0 / 2.0,
        1.0 / 6.0,
        1.0 / 24.0,
        1.0 / 120.0,
        1.0 / 720.0,
        1.0 / 5040.0,
        1.0 / 40_320.0,
        1.0 / 362_880.0,
        1.0 / 3_628_800.0,
        1.0 / 39_916_800.0,
        1.0 / 479_001_600.0,
        1.0 / 6_227_020_800.0,
    ];
    const LN2_HI: f64 = 0.693_147_180_369_123_8;
    const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
    // 2^52: adding it to an integer-valued f64 in [0, 2^52) puts the integer in the low bits
    const SHIFTER: f64 = 4_503_599_627_370_496.0;
    // (ties to even and no integer casts: both vectorise; a cast's NaN rule did not)
    let n = (x * std::f64::consts::LOG2_E)
        .round_ties_even()
        .clamp(-1100.0, 0.0);
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // e = Σ r^k / k! (k = 0..=13) by Estrin's scheme (pairs, then r², r⁴, r⁸): a chain of 4
    // multiply-adds instead of Horner's 13, so one row's few exponentials do not wait on it
    let (r2, a) = (r * r, |k: usize| C[k - 1]);
    let (r4, q0) = (r2 * r2, 1.0 + r);
    let (q1, q2, q3) = (a(2) + a(3) * r, a(4) + a(5) * r, a(6) + a(7) * r);
    let (q4, q5, q6) = (a(8) + a(9) * r, a(10) + a(11) * r, a(12) + a(13) * r);
    let (s0, s1, s2) = (q0 + q1 * r2, q2 + q3 * r2, q4 + q5 * r2);
    let (u0, u1) = (s0 + s1 * r4, s2 + q6 * r4);
    let e = u0 + u1 * (r4 * r4);
    // n = h1 + h2 with h1 = trunc(n / 2): each 2^h in [2^-550, 1], a normal number; its
    // exponent field h + 1023 taken from the low bits of h + 1023 + 2^52
    let h1 = (n * 0.5).trunc();
    let h2 = n - h1;
    let s1 = f64::from_bits((h1 + (1023.0 + SHIFTER)).to_bits() << 52);
    let s2 = f64::from_bits((h2 + (1023.0 + SHIFTER)).to_bits() << 52);
    // below -745.2 exp(x) rounds to 0 (and the clamp of n would leave r out of range)
    if x < -745.2 {
        0.0
    } else {
        e * s1 * s2
    }
}

/// -ln p as `evaluate` scores a probability p read as float64: [`ln_f32`] where p is a
/// positive normal float32 value (float32, float16 and bfloat16 dumps, and float64 ones that
/// hold such values), libm's log otherwise.
#[inline(always)]
#[allow(clippy::float_cmp)] // whether p is a float32 value: exact on purpose
pub(crate) fn nll_of_prob(p: f64) -> f64 {
    let f = p as f32;
    if f64::from(f) == p && f >= f32::MIN_POSITIVE && f.is_finite() {
        -ln_f32(f)
    } else {
        -p.ln()
    }
}

/// Adds 16 rows' [`Metrics16`] to the per-lane f64 sums `lacc` (NLL, NLL², entropy, Brier),
/// the top-k counts and the histogram; returns [rows of non-finite confidence (counted in
/// bin 0), rows of NLL +inf]. Plain loops over the 16 rows: under the caller's target features
/// they vectorise (at the baseline ISA this bookkeeping cost more than the kernel). `rank32`:
/// the lanes' f32 ranks of the same rows where the caller has them (short rows), so that the
/// top-k counts are one compare per vector.
#[inline(always)]
unsafe fn accumulate16<I: Isa>(
    m: &Metrics16,
    rank32: Option<&[f32; 16]>,
    top_k: &[usize],
    lacc: &mut [[f64; 16]; 4],
    topk: &mut [u64],
    hist: &mut Hist<'_>,
) -> [u64; 2] {
    let mut nll_inf = 0;
    for l in 0..16 {
        let v = m.nll[l];
        nll_inf += u64::from(v == f64::INFINITY);
        lacc[0][l] += v;
        lacc[1][l] += v * v;
        lacc[2][l] += m.ent[l];
        lacc[3][l] += m.brier[l];
    }
    for (cnt, &kk) in topk.iter_mut().zip(top_k) {
        *cnt += if let Some(r) = rank32 {
            // lanes' ranks (below LANES_MAX_C, exact in f32; kk rounds only beyond them):
            // one compare and popcount per vector
            let vk = I::splat(kk as f32);
            let mut n = 0;
            for g in (0..16).step_by(I::W) {
                n += I::gt_lanes(vk, I::load(r.as_ptr().add(g)));
            }
            u64::from(n)
        } else {
            // ranks are integers below 2^53, exact in f64; kk rounds only beyond any rank
            let k = kk as f64;
            // a mask and its popcount (a sum of 16 u64 flags compiled to 16 mask extractions)
            let mut bits = 0u32;
            for l in 0..16 {
                bits |= u32::from(m.rank[l] < k) << l;
            }
            u64::from(bits.count_ones())
        };
    }
    let ways = hist.ways;
    let nb = hist.count.len() / ways;
    debug_assert!(ways.is_power_of_two() && hist.conf.len() == nb * ways);
    let (nbf, top) = (nb as f64, (nb - 1) as f64);
    let (mut bin, mut fx, mut hit) = ([0u32; 16], [0u64; 16], [0u64; 16]);
    let mut nonfinite = 0;
    for l in 0..16 {
        // conf in (0, 1] for valid inputs; NaN fails `>=` and goes to 0, as does a
        // non-finite conf's bin (counted below)
        let v = m.conf[l];
        let finite = v.is_finite();
        nonfinite += u64::from(!finite);
        let b = if finite && v >= 0.0 {
            (v * nbf).min(top)
        } else {
            0.0
        };
        let c = if finite && v >= 0.0 { v.min(15.0) } else { 0.0 };
        // SAFETY: b in [0, nb - 1] and c·2^60 in [0, 15·2^60] fit u32 / u64 (evaluate
        // rejects n_bins above eval::MAX_BINS = 2^24); `conf_fixed` gives the same value for
        // a finite v (the clamp at 0 and the truncation are the same).
        (bin[l], fx[l]) = (
            b.to_int_unchecked::<u32>(),
            (c * 2f64.powi(60)).to_int_unchecked::<u64>(),
        );
        if !finite {
            fx[l] = 0;
        }
        // the way's copy: ways · nb <= 4 · 256 or nb <= 2^24 with one way, so it fits u32
        bin[l] += ((l & (ways - 1)) * nb) as u32;
        hit[l] = u64::from(m.rank[l] == 0.0);
    }
    // SAFETY: bin[l] < ways · nb (above).
    scatter16(hist, &bin, &fx, &hit);
    [nonfinite, nll_inf]
}

/// The histogram's read-modify-writes of 16 rows (bin, fixed-point confidence, hit), from
/// arrays in memory. Not inlined on purpose: inlined, the compiler took bin and fx out of the
/// vector registers of the loop above lane by lane (vextracti32x4, vpextrq: ~40 instructions
/// per 16 rows) and interleaved them with the add/adc chains, and evaluate at C = 2 ran at
/// 11 ns per row on one Zen 4 thread; as a call, reading 16 u32 and 32 u64 from the stack,
/// 5.3 ns.
///
/// # Safety
/// Every `bin[l]` is below `hist.count.len()` (= `hist.conf.len()` = `hist.correct.len()`).
#[inline(never)]
unsafe fn scatter16(hist: &mut Hist<'_>, bin: &[u32; 16], fx: &[u64; 16], hit: &[u64; 16]) {
    for l in 0..16 {
        let b = bin[l] as usize;
        *hist.conf.get_unchecked_mut(b) += u128::from(fx[l]);
        *hist.count.get_unchecked_mut(b) += 1;
        *hist.correct.get_unchecked_mut(b) += hit[l];
    }
}

/// A clean lanes group: [`lanes_to_metrics`] into `m` (the caller's per-row outputs read it),
/// then [`accumulate16`].
#[inline(always)]
pub(crate) unsafe fn eval_clean<I: Isa, E: Elem>(
    lane: &LaneMetrics,
    kind: u8,
    top_k: &[usize],
    lacc: &mut [[f64; 16]; 4],
    topk: &mut [u64],
    hist: &mut Hist<'_>,
    m: &mut Metrics16,
) -> [u64; 2] {
    lanes_to_metrics::<I, E>(lane, kind, m);
    accumulate16::<I>(m, Some(&lane.rank), top_k, lacc, topk, hist)
}

/// [`accumulate16`] of metrics the caller finished (`E` is unused).
#[inline(always)]
pub(crate) unsafe fn eval_sums<I: Isa, E: Elem>(
    m: &Metrics16,
    top_k: &[usize],
    lacc: &mut [[f64; 16]; 4],
    topk: &mut [u64],
    hist: &mut Hist<'_>,
) -> [u64; 2] {
    accumulate16::<I>(m, None, top_k, lacc, topk, hist)
}

/// Per-row outputs of [`eval_run`] from the block's first row: NLL, rank and (optionally)
/// confidence.
pub(crate) type EvalOut<'a> = (&'a mut [f64], &'a mut [i64], Option<&'a mut [f64]>);

/// The target side and the sums of an [`eval_run`]: packed int64 targets (one per row), the
/// ignore index, the top-k list, the lanes' f64 sums, top-k counts and histogram (see
/// [`accumulate16`]), the counts (non-finite confidences, NLL +inf) and optional per-row
/// outputs.
pub(crate) struct EvalRun<'a, 'h> {
    pub t: &'a [i64],
    pub ignore: i64,
    pub top_k: &'a [usize],
    pub lacc: &'a mut [[f64; 16]; 4],
    pub topk: &'a mut [u64],
    pub hist: Hist<'h>,
    pub counts: [u64; 2],
    pub out: Option<EvalOut<'a>>,
}

/// Groups of 16 rows per tile of the two-loop runs ([`eval_run`], `compare_lanes::run`).
pub(crate) const RUN_TILE_GROUPS: usize = 16;

/// `evaluate`'s clean groups of short rows in one run (two loops per tile of
/// [`RUN_TILE_GROUPS`] groups, see the body): 16 rows at a time, their targets
/// decoded in vectors, their metrics taken in lanes ([`eval_short`]) and summed
/// ([`lanes_to_metrics`], [`accumulate16`]): the same arithmetic, in the same order, as the
/// caller's group by group path, without its per-group decode and calls. Stops at the end or
/// at the first group that is not clean (a target ignored or out of range, a row that is not
/// ordinary), which the caller then takes row by row. Returns the rows done (a multiple of 16).
#[inline(always)]
pub(crate) unsafe fn eval_run<I: Isa, E: Elem, const M: u8, const KIND: u8>(
    b: Block<E>,
    a: &mut EvalRun,
) -> usize {
    let (c, st) = (b.c, b.st);
    if c == 0 || c > LANES_MAX_C || a.t.len() < b.n {
        return 0;
    }
    // Two loops over a tile of up to RUN_TILE_GROUPS groups: the lanes' metrics of every
    // group first (a short body with a long dependency chain through exp, log and division, so
    // the out-of-order window overlaps several groups), then the bookkeeping of every group
    // (conversions, sums, the histogram's scatter). One loop doing both per group ran at
    // about one instruction per cycle at C = 2: the window held one group. The sums are
    // taken group by group in the same order, so the bits are those of the one-loop form.
    let mut lanes = [LaneMetrics::default(); RUN_TILE_GROUPS];
    let mut m = Metrics16::default();
    let (mut idx, mut kf) = ([0i32; 16], [0f32; 16]);
    let mut done = 0;
    loop {
        let mut ng = 0;
        let mut stop = false;
        'groups: while ng < RUN_TILE_GROUPS {
            let base = done + 16 * ng;
            if base + 16 > b.n {
                stop = true;
                break;
            }
            for g in (0..16).step_by(I::W) {
                let (_, n, bad, k) =
                    I::targets(a.t.as_ptr().add(base + g), c, 0, a.ignore, &mut idx);
                if bad || n as usize != I::W {
                    stop = true;
                    break 'groups;
                }
                I::store(kf.as_mut_ptr().add(g), k);
            }
            let p = if M == COLS {
                b.p.add(base)
            } else {
                b.p.add(base * st)
            };
            if M != COLS {
                short_prefetch::<I, E>(p, st);
            }
            let lane = &mut lanes[ng];
            eval_short::<I, E, M, KIND>(p, st, c, &kf, lane);
            if lane.ok.contains(&0.0) {
                stop = true;
                break;
            }
            ng += 1;
        }
        for (q, lane) in lanes.iter().enumerate().take(ng) {
            lanes_to_metrics::<I, E>(lane, KIND, &mut m);
            let [nf, ni] =
                accumulate16::<I>(&m, Some(&lane.rank), a.top_k, a.lacc, a.topk, &mut a.hist);
            a.counts[0] += nf;
            a.counts[1] += ni;
            if let Some((nll, rank, conf)) = a.out.as_mut() {
                let at = done + 16 * q;
                for l in 0..16 {
                    nll[at + l] = m.nll[l];
                    rank[at + l] = lane.rank[l] as i64;
                }
                if let Some(cf) = conf.as_deref_mut() {
                    cf[at..at + 16].copy_from_slice(&m.conf);
                }
            }
        }
        done += 16 * ng;
        if stop {
            break;
        }
    }
    done
}

/// `evaluate`'s clean groups of logits rows longer than [`LANES_MAX_C`] (and at most two
/// segments, which the row path would split) in one loop: 16 rows at a time, each row's
/// statistics by the inlined row kernel ([`stats`]), ln s and exp(x_t - m) in vectors
/// ([`ln_exp_each`]), the metrics by `eval::finish_logits` and the sums by [`accumulate16`]:
/// the arithmetic and order of the caller's group path, without its per-row calls. Stops at the
/// end or at the first group holding a target ignored or out of range or a row that is not
/// ordinary. Returns the rows done (a multiple of 16).
#[inline(always)]
pub(crate) unsafe fn eval_long<I: Isa, E: Elem>(b: Block<E>, a: &mut EvalRun) -> usize {
    let (c, st) = (b.c, b.st);
    if c <= LANES_MAX_C || c > 2 * crate::rows::SEGMENT || a.t.len() < b.n {
        return 0;
    }
    let mut m = Metrics16::default();
    let (mut ln_s, mut e_t) = ([1f32; 16], [0f32; 16]);
    let mut rs = [Stats::EMPTY; 16];
    let mut xt = [0f64; 16];
    let mut done = 0;
    'groups: while done + 16 <= b.n {
        for l in 0..16 {
            let v = a.t[done + l];
            if v == a.ignore || (v as u64) >= c as u64 {
                break 'groups;
            }
            let row = std::slice::from_raw_parts(b.p.add((done + l) * st), c);
            let x = f64::from(row[v as usize].to_f32());
            let s = stats::<I, E, true>(row, x as f32);
            if !(f64::from(s.m).is_finite() && !s.nan && s.s.is_finite()) {
                break 'groups;
            }
            (rs[l], xt[l]) = (s, x);
            (ln_s[l], e_t[l]) = (s.s as f32, (x - f64::from(s.m)) as f32);
        }
        ln_exp_each::<I, E>(&mut ln_s, &mut e_t);
        for l in 0..16 {
            let rm = crate::eval::finish_logits_parts(
                xt[l],
                f64::from(rs[l].m),
                &rs[l],
                f64::from(ln_s[l]),
                f64::from(e_t[l]),
            );
            (m.nll[l], m.ent[l], m.brier[l], m.conf[l], m.rank[l]) = rm;
        }
        let [nf, ni] = accumulate16::<I>(&m, None, a.top_k, a.lacc, a.topk, &mut a.hist);
        a.counts[0] += nf;
        a.counts[1] += ni;
        if let Some((nll, rank, conf)) = a.out.as_mut() {
            for l in 0..16 {
                nll[done + l] = m.nll[l];
                rank[done + l] = m.rank[l] as i64;
            }
            if let Some(cf) = conf.as_deref_mut() {
                cf[done..done + 16].copy_from_slice(&m.conf);
            }
        }
        done += 16;
    }
    done
}

/// Rows per group in [`ce_rows`] / [`lse_rows`]: their logs are taken together, W at a time.
pub(crate) const GROUP: usize = 16;

/// A group's class targets, ignore index and (f32, f64) class weights.
type Targets<'a> = (&'a [i64], i64, Option<(&'a [f32], &'a [f64])>);

/// Per-row statistics of a group (see [`group_stats`]).
struct Group {
    m: [f32; GROUP],
    s: [f32; GROUP],
    xt: [f32; GROUP],
    w: [f32; GROUP],
    scored: [f32; GROUP],
    wsum: f64,
}

/// One group of rows of any length (row l at `p + l·st`): per-row max, exp-sum (the blocked
/// row kernel, inlined) and target value, for rows that are finite. None at a bad target or
/// an inf/NaN row (left to the row kernel).
#[inline(always)]
unsafe fn group_stats<I: Isa, E: Elem>(
    p: *const E,
    st: usize,
    c: usize,
    targets: Option<Targets>,
) -> Option<Group> {
    let mut g = Group {
        m: [0.0; GROUP],
        s: [1.0; GROUP],
        xt: [0.0; GROUP],
        w: [0.0; GROUP],
        scored: [0.0; GROUP],
        wsum: 0.0,
    };
    for l in 0..GROUP {
        let row = std::slice::from_raw_parts(p.add(l * st), c);
        let k = match targets {
            None => 0,
            Some((t, ignore, wt)) => {
                let (k, sc, w32, w64) = decode_target(t[l], c, ignore, wt)?;
                (g.scored[l], g.w[l]) = (sc, w32);
                g.wsum += w64;
                k
            }
        };
        let st = stats::<I, E, false>(row, 0.0);
        if !st.m.is_finite() || !st.s.is_finite() {
            return None;
        }
        (g.m[l], g.s[l], g.xt[l]) = (st.m, st.s as f32, row[k].to_f32());
    }
    Some(g)
}

/// Cross-entropy of rows of any length (row l at `p + l·st`), GROUP rows at a time with one
/// vector log per W rows (no per-row call or scalar log), added to `acc`, until the end or
/// the first group holding a bad target or an inf/NaN row. Returns the rows done.
#[inline(always)]
pub(crate) unsafe fn ce_rows<I: Isa, E: Elem>(
    b: Block<E>,
    a: &mut CeArgs,
    acc: &mut BlockSums,
) -> usize {
    let (c, st) = (b.c, b.st);
    if c == 0 || a.t.len() < b.n {
        return 0;
    }
    let mut done = 0;
    while done + GROUP <= b.n {
        let r0 = done;
        let tg = Some((&a.t[r0..r0 + GROUP], a.ignore, a.wt));
        let Some(gr) = group_stats::<I, E>(b.p.add(r0 * st), st, c, tg) else {
            break;
        };
        for g in (0..GROUP).step_by(I::W) {
            macro_rules! ld {
                ($a:expr) => {
                    I::load($a.as_ptr().add(g))
                };
            }
            let nll = I::add(I::sub(ld!(gr.m), ld!(gr.xt)), I::ln_ge1(ld!(gr.s)));
            let loss = I::zero_where_zero(ld!(gr.scored), I::mul(nll, ld!(gr.w)));
            if let Some(o) = a.out.as_deref_mut() {
                I::store(o.as_mut_ptr().add(r0 + g), loss);
            }
            acc.sum += I::hsum(loss) as f64;
        }
        acc.weight += gr.wsum;
        done += GROUP;
    }
    acc.rows += done;
    done
}

/// logsumexp of rows of any length, GROUP rows at a time (see [`ce_rows`]).
#[inline(always)]
pub(crate) unsafe fn lse_rows<I: Isa, E: Elem>(b: Block<E>, out: &mut [f32]) -> usize {
    let mut done = 0;
    if b.c == 0 || out.len() < b.n {
        return 0;
    }
    while done + GROUP <= b.n {
        let Some(gr) = group_stats::<I, E>(b.p.add(done * b.st), b.st, b.c, None) else {
            break;
        };
        for g in (0..GROUP).step_by(I::W) {
            macro_rules! ld {
                ($a:expr) => {
                    I::load($a.as_ptr().add(g))
                };
            }
            I::store(
                out.as_mut_ptr().add(done + g),
                I::add(ld!(gr.m), I::ln_ge1(ld!(gr.s))),
            );
        }
        done += GROUP;
    }
    done
}

/// Instantiates a generic kernel for every path behind one safe, dispatching function.
macro_rules! dispatch {
    (
        $(#[$meta:meta])*
        $vis:vis fn $name:ident<$E:ident $(, const $C:ident: $CT:ty)*>($($arg:ident: $ty:ty),*) -> $ret:ty
        => $kernel:ident
    ) => {
        $(#[$meta])*
        #[inline]
        $vis fn $name<$E: Elem $(, const $C: $CT)*>(path: Path, $($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma,f16c,popcnt")]
            unsafe fn avx2<$E: Elem $(, const $C: $CT)*>($($arg: $ty),*) -> $ret {
                $kernel::<simd::avx2::Avx2, $E $(, $C)*>($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,popcnt")]
            unsafe fn avx512<$E: Elem $(, const $C: $CT)*>($($arg: $ty),*) -> $ret {
                $kernel::<simd::avx512::Avx512, $E $(, $C)*>($($arg),*)
            }
            #[cfg(target_arch = "aarch64")]
            #[target_feature(enable = "neon")]
            unsafe fn neon<$E: Elem $(, const $C: $CT)*>($($arg: $ty),*) -> $ret {
                $kernel::<simd::neon::Neon, $E $(, $C)*>($($arg),*)
            }
            match path {
                // SAFETY: a Path other than Scalar is only ever selected after
                // `Path::available` confirmed the CPU has its features.
                #[cfg(target_arch = "x86_64")]
                Path::Avx512 => unsafe { avx512::<$E $(, $C)*>($($arg),*) },
                #[cfg(target_arch = "x86_64")]
                Path::Avx2 => unsafe { avx2::<$E $(, $C)*>($($arg),*) },
                // SAFETY: likewise; Neon is selected only after `is_aarch64_feature_detected!`.
                #[cfg(target_arch = "aarch64")]
                Path::Neon => unsafe { neon::<$E $(, $C)*>($($arg),*) },
                // SAFETY: the scalar path needs no CPU feature.
                _ => unsafe { $kernel::<simd::scalar::Scalar, $E $(, $C)*>($($arg),*) },
            }
        }
    };
}

dispatch! {
    /// Row statistics on the given path.
    pub(crate) fn row_stats<E, const EVAL: bool>(x: &[E], xt: f32) -> Stats
    => stats
}

dispatch! {
    /// log_softmax / softmax of a row with finite max.
    pub(crate) fn row_write<E, const LOG: bool>(x: &[E], m: f32, ln_s: f32, out: &mut [f32]) -> ()
    => write_row
}

dispatch! {
    /// Cross-entropy of short rows (see [`ce_short`]).
    pub(crate) fn ce_short_rows<E, const M: u8>(b: Block<E>, a: &mut CeArgs, acc: &mut BlockSums) -> usize
    => ce_short
}

dispatch! {
    /// Cross-entropy of rows of any length (see [`ce_rows`]).
    pub(crate) fn ce_long_rows<E>(b: Block<E>, a: &mut CeArgs, acc: &mut BlockSums) -> usize
    => ce_rows
}

dispatch! {
    /// logsumexp of rows of any length (see [`lse_rows`]).
    pub(crate) fn lse_long_rows<E>(b: Block<E>, out: &mut [f32]) -> usize
    => lse_rows
}

dispatch! {
    /// logsumexp of short rows (see [`lse_short`]).
    pub(crate) fn lse_short_rows<E, const M: u8, const SPLIT: bool>(b: Block<E>, out: &mut [f32]) -> usize
    => lse_short
}

dispatch! {
    /// Metrics of 16 short rows (see [`eval_short`]).
    pub(crate) fn eval_short_rows<E, const M: u8, const KIND: u8>(
        p: *const E,
        st: usize,
        c: usize,
        kf: &[f32; 16],
        o: &mut LaneMetrics
    ) -> ()
    => eval_short
}

dispatch! {
    /// Probabilities-row statistics (see [`probs_stats`]).
    pub(crate) fn probs_row<E>(x: &[E], pt: f32) -> ProbStats
    => probs_stats
}

dispatch! {
    /// Binary cross-entropy with logits of a run of f32 elements (see [`bce_run`]).
    pub(crate) fn bce_elems<E>(
        x: &[f32],
        y: &[f32],
        w: Option<&[f32]>,
        pw: Option<&[f32]>,
        out: Option<&mut [f32]>
    ) -> f64
    => bce_run_e
}

dispatch! {
    /// log_softmax / softmax of packed short rows (see [`write_rows`]).
    pub(crate) fn write_short_rows<E, const LOG: bool>(
        x: &[E],
        c: usize,
        m: &[f32],
        ls: &[f32],
        spread: &mut Vec<f32>,
        out: &mut [f32]
    ) -> ()
    => write_rows
}

/// The index of the first element equal to `v` (as f32; none for NaN), a vector at a time.
#[inline(always)]
unsafe fn first_eq_in<I: Isa, E: Elem>(x: &[E], v: f32) -> Option<usize> {
    let (w, vv, p) = (I::W, I::splat(v), x.as_ptr());
    let mut i = 0;
    while i + w <= x.len() {
        let bits = I::eq_bits(E::load::<I>(p.add(i)), vv);
        if bits != 0 {
            return Some(i + bits.trailing_zeros() as usize);
        }
        i += w;
    }
    // the tail one by one: a padded load could match a padding value
    #[allow(clippy::float_cmp)] // equality with the row's own maximum, on purpose
    let at = x[i..].iter().position(|e| e.to_f32() == v);
    at.map(|k| i + k)
}

dispatch! {
    /// See [`first_eq_in`].
    pub(crate) fn first_eq<E>(x: &[E], v: f32) -> Option<usize>
    => first_eq_in
}

/// The 16 partial sums of [`dev_sum_in`] / [`soft_sum_in`] added pairwise.
#[inline(always)]
fn pairwise16(mut acc: [f64; 16]) -> f64 {
    let mut k = 16;
    while k > 1 {
        k /= 2;
        for j in 0..k {
            acc[j] += acc[j + k];
        }
    }
    acc[0]
}

/// Σ_c w_c·(shift - x_c) over a row (w_c = 1 without weights; a zero weight skips its term,
/// so a masked -inf class gives no 0·inf), in float64: 16 independent partial sums, added
/// pairwise at the end. Plain loops that vectorise under the path's features; the operations
/// and their order are the same on every path, so is the result.
#[inline(always)]
unsafe fn dev_sum_in<I: Isa, E: Elem>(x: &[E], shift: f64, w: Option<&[f64]>) -> f64 {
    const L: usize = 16;
    let mut acc = [0f64; L];
    let n = x.len() / L * L;
    let d = |v: E| shift - f64::from(v.to_f32());
    match w {
        None => {
            for ch in x[..n].chunks_exact(L) {
                for j in 0..L {
                    acc[j] += d(ch[j]);
                }
            }
            for (a, &v) in acc.iter_mut().zip(&x[n..]) {
                *a += d(v);
            }
        }
        Some(w) => {
            // (as zip: a weight vector shorter than the row ends the sum)
            let m = x.len().min(w.len());
            let n = m / L * L;
            let term = |v: E, wc: f64| if wc == 0.0 { 0.0 } else { wc * d(v) };
            for (ch, wc) in x[..n].chunks_exact(L).zip(w[..n].chunks_exact(L)) {
                for j in 0..L {
                    acc[j] += term(ch[j], wc[j]);
                }
            }
            for ((a, &v), &wc) in acc.iter_mut().zip(&x[n..m]).zip(&w[n..m]) {
                *a += term(v, wc);
            }
        }
    }
    pairwise16(acc)
}

dispatch! {
    /// See [`dev_sum_in`].
    pub(crate) fn dev_sum<E>(x: &[E], shift: f64, w: Option<&[f64]>) -> f64
    => dev_sum_in
}

/// Σ_j w_j·y'_j·((shift - x_j) + ln_s) over a row widened to f64, y' = (1-ε)·y + ε/C, terms
/// with y' = 0 counting 0 (soft-target cross-entropy; w_j = 1 without weights): 16
/// independent partial sums added pairwise, the same on every path (see [`dev_sum_in`]).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn soft_sum_in<I: Isa, E: Elem>(
    xs: &[f64],
    ys: &[f64],
    shift: f64,
    ln_s: f64,
    eps: f64,
    c: f64,
    w: Option<&[f64]>,
) -> f64 {
    const L: usize = 16;
    let mut acc = [0f64; L];
    let n = xs.len().min(ys.len());
    let term = |xv: f64, yv: f64, wj: f64| {
        let yj = (1.0 - eps) * yv + eps / c;
        if yj == 0.0 {
            0.0
        } else {
            wj * yj * ((shift - xv) + ln_s)
        }
    };
    let body = n / L * L;
    match w {
        None => {
            for (cx, cy) in xs[..body].chunks_exact(L).zip(ys[..body].chunks_exact(L)) {
                for j in 0..L {
                    acc[j] += term(cx[j], cy[j], 1.0);
                }
            }
        }
        Some(w) => {
            for ((cx, cy), cw) in xs[..body]
                .chunks_exact(L)
                .zip(ys[..body].chunks_exact(L))
                .zip(w[..body].chunks_exact(L))
            {
                for j in 0..L {
                    acc[j] += term(cx[j], cy[j], cw[j]);
                }
            }
        }
    }
    for j in body..n {
        acc[j - body] += term(xs[j], ys[j], w.map_or(1.0, |w| w[j]));
    }
    pairwise16(acc)
}

dispatch! {
    /// See [`soft_sum_in`] (`E` is unused).
    pub(crate) fn soft_sum<E>(
        xs: &[f64],
        ys: &[f64],
        shift: f64,
        ln_s: f64,
        eps: f64,
        c: f64,
        w: Option<&[f64]>
    ) -> f64
    => soft_sum_in
}

dispatch! {
    /// Read-only sum of a row.
    pub(crate) fn row_sum<E>(x: &[E]) -> f64
    => sum
}

/// ln(max(s, 1)) and exp(d) (d <= 0) of 16 values in place: the transcendental part of
/// finishing 16 rows' metrics (`E` is unused).
#[inline(always)]
unsafe fn ln_exp_each<I: Isa, E: Elem>(s: &mut [f32; 16], d: &mut [f32; 16]) {
    for g in (0..16).step_by(I::W) {
        let vs = I::max_ignore_nan(I::splat(1.0), I::load(s.as_ptr().add(g)));
        I::store(s.as_mut_ptr().add(g), I::ln_ge1(vs));
        I::store(
            d.as_mut_ptr().add(g),
            I::exp_le0(I::load(d.as_ptr().add(g))),
        );
    }
}

dispatch! {
    /// See [`eval_clean`] (`E` is unused).
    pub(crate) fn eval_clean16<E>(
        lane: &LaneMetrics,
        kind: u8,
        top_k: &[usize],
        lacc: &mut [[f64; 16]; 4],
        topk: &mut [u64],
        hist: &mut Hist<'_>,
        m: &mut Metrics16
    ) -> [u64; 2]
    => eval_clean
}

dispatch! {
    /// See [`eval_sums`] (`E` is unused).
    pub(crate) fn eval_sums16<E>(
        m: &Metrics16,
        top_k: &[usize],
        lacc: &mut [[f64; 16]; 4],
        topk: &mut [u64],
        hist: &mut Hist<'_>
    ) -> [u64; 2]
    => eval_sums
}

dispatch! {
    /// See [`eval_run`].
    pub(crate) fn eval_run_rows<E, const M: u8, const KIND: u8>(
        b: Block<E>,
        a: &mut EvalRun<'_, '_>
    ) -> usize
    => eval_run
}

dispatch! {
    /// See [`ln_exp_each`].
    pub(crate) fn ln_exp16<E>(s: &mut [f32; 16], d: &mut [f32; 16]) -> ()
    => ln_exp_each
}

/// `out[i] = 2^t[i]` by the path's sum exp (for its accuracy test).
#[cfg(test)]
#[inline(always)]
unsafe fn exp2_each<I: Isa, E: Elem>(t: &[E], out: &mut [f32]) {
    let w = I::W;
    let mut i = 0;
    while i + w <= t.len() {
        I::store(
            out.as_mut_ptr().add(i),
            I::exp2_sum(E::load::<I>(t.as_ptr().add(i))),
        );
        i += w;
    }
    for (k, &v) in t[i..].iter().enumerate() {
        let mut buf = [0f32; 16];
        I::store(buf.as_mut_ptr(), I::exp2_sum(I::splat(v.to_f32())));
        out[i + k] = buf[0];
    }
}

#[cfg(test)]
dispatch! {
    pub(crate) fn exp2_sum_each<E>(t: &[E], out: &mut [f32]) -> ()
    => exp2_each
}

/// `out[i] = x[i]` widened to f32 by the path's vector load (exact: its test compares it with
/// the scalar conversions), the tail one by one.
#[inline(always)]
unsafe fn widen_each<I: Isa, E: Elem>(x: &[E], out: &mut [f32]) {
    debug_assert_eq!(x.len(), out.len());
    let n = x.len().min(out.len());
    let mut i = 0;
    while i + I::W <= n {
        I::store(out.as_mut_ptr().add(i), E::load::<I>(x.as_ptr().add(i)));
        i += I::W;
    }
    for k in i..n {
        out[k] = x[k].to_f32();
    }
}

dispatch! {
    pub(crate) fn widen<E>(x: &[E], out: &mut [f32]) -> ()
    => widen_each
}

/// `E::load_tail(x, n)` for n = 0..W, W lanes each, into `out` (at least W·W floats); returns
/// W.
#[cfg(test)]
#[inline(always)]
unsafe fn widen_tails_each<I: Isa, E: Elem>(x: &[E], out: &mut [f32]) -> usize {
    assert!(x.len() >= I::W && out.len() >= I::W * I::W);
    for n in 0..I::W {
        I::store(
            out.as_mut_ptr().add(n * I::W),
            E::load_tail::<I>(x.as_ptr(), n),
        );
    }
    I::W
}

#[cfg(test)]
dispatch! {
    pub(crate) fn widen_tails<E>(x: &[E], out: &mut [f32]) -> usize
    => widen_tails_each
}

/// `E::load_pair(x)` (the two columns of W packed rows of two) into `out[..W]` and
/// `out[W..2W]`; returns W.
#[cfg(test)]
#[inline(always)]
unsafe fn widen_pairs_each<I: Isa, E: Elem>(x: &[E], out: &mut [f32]) -> usize {
    assert!(x.len() >= 2 * I::W && out.len() >= 2 * I::W);
    let (a, b) = E::load_pair::<I>(x.as_ptr());
    I::store(out.as_mut_ptr(), a);
    I::store(out.as_mut_ptr().add(I::W), b);
    I::W
}

#[cfg(test)]
dispatch! {
    pub(crate) fn widen_pairs<E>(x: &[E], out: &mut [f32]) -> usize
    => widen_pairs_each
}

/// Statistics of a float64 row (in float64: exp by [`exp_le0_f64`], a few ulps from libm,
/// vectorised on `path` a chunk at a time; the sums in element order, so every path gives the
/// same bits).
pub(crate) fn stats_f64(path: Path, x: &[f64], xt: f64, eval: bool) -> (f64, Stats) {
    stats_iter(x.iter().copied(), xt, eval, |m, st| {
        for ch in x.chunks(F64_CHUNK) {
            sums_f64(path, ch, m, xt, eval, st);
        }
    })
}

/// Rows per block of [`stats_f64_lanes`].
pub(crate) const F64_LANES: usize = 16;
/// The longest float64 rows [`stats_f64_lanes`] takes (longer ones amortise the row kernel's
/// per-row cost over their elements).
pub(crate) const F64_LANES_MAX_C: usize = 32;

/// Float64 statistics of [`F64_LANES`] rows at once, row l in lane l: max `m`, exp-sum `s`
/// and (with `eval`) Σ e·(x - m) `t` and Σ e² `q`, where a row's max is finite. The same
/// operations in the same order as [`stats_f64`] (a row's sums in element order, no fused
/// operations), so each lane holds that row's bits; a row with a NaN has a NaN `s`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct F64Lanes {
    pub m: [f64; F64_LANES],
    pub s: [f64; F64_LANES],
    pub t: [f64; F64_LANES],
    pub q: [f64; F64_LANES],
}

impl Default for F64Lanes {
    fn default() -> Self {
        F64Lanes {
            m: [f64::NEG_INFINITY; F64_LANES],
            s: [0.0; F64_LANES],
            t: [0.0; F64_LANES],
            q: [0.0; F64_LANES],
        }
    }
}

/// [`F64Lanes`] of the column-major block `cols` (column j of the 16 rows at
/// `cols[16 j..16 j + 16]`, `c` = cols.len() / 16 <= [`F64_LANES_MAX_C`] columns), each
/// column's lanes in one vector loop on `path`. Lanes whose max is not finite hold no
/// statistics (the caller takes those rows to [`stats_f64`]).
pub(crate) fn stats_f64_lanes(path: Path, cols: &[f64], eval: bool, o: &mut F64Lanes) {
    #[inline(always)]
    fn each(cols: &[f64], eval: bool, o: &mut F64Lanes) {
        const L: usize = F64_LANES;
        let mut m = [f64::NEG_INFINITY; L];
        for col in cols.chunks_exact(L) {
            for l in 0..L {
                // `stats_iter`'s rule: NaN never replaces the max
                m[l] = if col[l] > m[l] { col[l] } else { m[l] };
            }
        }
        // a finite stand-in keeps the other lanes' loop in range
        let mf: [f64; L] = std::array::from_fn(|l| if m[l].is_finite() { m[l] } else { 0.0 });
        let (mut s, mut t, mut q) = ([0f64; L], [0f64; L], [0f64; L]);
        for col in cols.chunks_exact(L) {
            for l in 0..L {
                let d = col[l] - mf[l];
                let e = exp_le0_f64(d);
                s[l] += e;
                if eval {
                    // adding +0 leaves t's bits (t is never -0), as skipping does in `sums_f64`
                    t[l] += if e > 0.0 { e * d } else { 0.0 };
                    q[l] += e * e;
                }
            }
        }
        *o = F64Lanes { m, s, t, q };
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
    unsafe fn avx512(cols: &[f64], eval: bool, o: &mut F64Lanes) {
        each(cols, eval, o);
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2(cols: &[f64], eval: bool, o: &mut F64Lanes) {
        each(cols, eval, o);
    }
    debug_assert!(
        cols.len().is_multiple_of(F64_LANES) && cols.len() <= F64_LANES * F64_LANES_MAX_C
    );
    match path {
        // SAFETY: a Path other than Scalar is only selected after `Path::available` confirmed
        // the CPU has its features.
        #[cfg(target_arch = "x86_64")]
        Path::Avx512 => unsafe { avx512(cols, eval, o) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => unsafe { avx2(cols, eval, o) },
        _ => each(cols, eval, o),
    }
}

/// Rows whose max has magnitude >= 2^30, where the rounding of m·log2(e) in the sweep's
/// shift would leave f32's range: the float64 statistics, read twice without a copy.
#[cold]
fn stats_huge<E: Elem>(x: &[E], xt: f32, eval: bool) -> Stats {
    let xt = f64::from(xt);
    let wide = |v: &E| f64::from(v.to_f32());
    stats_iter(x.iter().map(wide), xt, eval, |m, st| {
        let mut vs = [0f64; F64_CHUNK];
        for ch in x.chunks(F64_CHUNK) {
            for (d, v) in vs.iter_mut().zip(ch) {
                *d = wide(v);
            }
            sums_f64(Path::Scalar, &vs[..ch.len()], m, xt, eval, st);
        }
    })
    .1
}

/// Elements of a float64 row whose exponentials [`sums_f64`] takes together.
const F64_CHUNK: usize = 16;

/// Adds the elements `x` (at most [`F64_CHUNK`]) of a row with finite max `m` to `st`: their
/// exponentials in one vector loop on `path` (no fused operations: the same bits on every
/// path), then the sums in element order.
fn sums_f64(path: Path, x: &[f64], m: f64, xt: f64, eval: bool, st: &mut Stats) {
    #[inline(always)]
    fn each(x: &[f64], m: f64, e: &mut [f64]) {
        for (e, &v) in e.iter_mut().zip(x) {
            *e = exp_le0_f64(v - m);
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
    unsafe fn avx512(x: &[f64], m: f64, e: &mut [f64]) {
        each(x, m, e);
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2(x: &[f64], m: f64, e: &mut [f64]) {
        each(x, m, e);
    }
    let mut es = [0f64; F64_CHUNK];
    let e = &mut es[..x.len()];
    match path {
        // SAFETY: a Path other than Scalar is only selected after `Path::available` confirmed
        // the CPU has its features.
        #[cfg(target_arch = "x86_64")]
        Path::Avx512 => unsafe { avx512(x, m, e) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => unsafe { avx2(x, m, e) },
        _ => each(x, m, e),
    }
    for (&v, &e) in x.iter().zip(e.iter()) {
        st.s += e;
        if eval {
            if e > 0.0 {
                st.t += e * (v - m);
            }
            st.q += e * e;
            st.gt += u64::from(v > xt);
        }
    }
}

/// The max and NaN flag of a row (`x`), the +inf rows' statistics, and for a finite max m
/// `finite(m, stats)`.
fn stats_iter<It: Iterator<Item = f64> + Clone>(
    x: It,
    xt: f64,
    eval: bool,
    finite: impl FnOnce(f64, &mut Stats),
) -> (f64, Stats) {
    let mut m = f64::NEG_INFINITY;
    let mut nan = false;
    for v in x.clone() {
        if v > m {
            m = v;
        }
        nan |= v.is_nan();
    }
    let mut st = Stats {
        nan,
        ..Stats::EMPTY
    };
    if m == f64::INFINITY {
        // Rare: the +inf entries share the mass, as in `stats_nonfinite`.
        for v in x {
            if v == f64::INFINITY {
                st.s += 1.0;
                st.q += 1.0;
            }
            st.gt += (eval && v > xt) as u64;
        }
    }
    if m.is_finite() {
        finite(m, &mut st);
    }
    st.m = m as f32;
    (m, st)
}

dispatch! {
    /// See [`nll_pairs`].
    pub(crate) fn nll_pairs_rows<E>(
        p: *const E,
        n: usize,
        t: &[i64],
        ignore: i64,
        tol: f64,
        sums: &mut [[f64; 16]; 2]
    ) -> usize
    => nll_pairs
}

dispatch! {
    /// See [`softmax_pairs`].
    pub(crate) fn softmax_pairs_rows<E, const LOG: bool>(
        p: *const E,
        n: usize,
        out: &mut [f32]
    ) -> usize
    => softmax_pairs
}

dispatch! {
    /// See [`eval_long`].
    pub(crate) fn eval_long_rows<E>(b: Block<E>, a: &mut EvalRun<'_, '_>) -> usize
    => eval_long
}
