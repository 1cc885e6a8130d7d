//! Short rows of the two-dump comparison in SIMD lanes: 16 rows of each dump (C <= 32,
//! staged column-major), one row per lane, the same quantities as the row path of
//! [`crate::compare`] (KL of the renormalised rows as Σ p·f(r), Δp, both NLLs, argmax
//! agreement). A lane that is not ordinary (an inf/NaN or huge max, a non-finite sum) is
//! flagged and left to the row path, so a row's numbers never depend on which rows share its
//! group: whole, chunked and merged runs agree.

use crate::compare::{kl_terms, CompareOut, LaneSums, FLOOR};
use crate::kernel::{self, Block, RUN_TILE_GROUPS};
use crate::simd::{self, exp2c, Elem, Isa, Path};

/// Longest row taken in lanes (the short-row bound of the other kernels).
pub(crate) const MAX_C: usize = crate::kernel::LANES_MAX_C;

/// Per-lane results of 16 rows: Σ e_a·f(r) and Σ e_a (KL = their ratio), lanes where the
/// base has mass the new row lacks (KL = inf), both NLLs, Δp, argmax agreement and the
/// ordinary flag (1.0 / 0.0).
#[derive(Default)]
pub(crate) struct LaneCompare {
    pub h: [f32; 16],
    pub sa: [f32; 16],
    pub inf: [f32; 16],
    pub nll_a: [f32; 16],
    pub nll_b: [f32; 16],
    pub dp: [f32; 16],
    pub same: [f32; 16],
    pub ok: [f32; 16],
}

/// Loads the c columns of W rows at `p` (mode `M`, stride `st`: see `kernel::load_cols`) into
/// `cols`; returns their max, first argmax and the target column's value.
#[inline(always)]
unsafe fn scan<I: Isa, E: Elem, const M: u8>(
    p: *const E,
    st: usize,
    c: usize,
    vk: I::V,
    cols: *mut I::V,
) -> (I::V, I::V, I::V) {
    let vm = kernel::load_cols::<I, E, M>(p, st, c, cols);
    let mut xt = I::splat(0.0);
    for j in 0..c {
        xt = I::blend_eq(vk, j as f32, xt, cols.add(j).read());
    }
    // the first index holding the max: scanned from the end, the last hit is the first
    let mut arg = I::splat(0.0);
    for j in (0..c).rev() {
        let d = I::sub(cols.add(j).read(), vm);
        arg = I::blend_eq(d, 0.0, arg, I::splat(j as f32));
    }
    (vm, arg, xt)
}

/// [`LaneCompare`] of 16 rows of each dump, read in mode `M` (`kernel::{COLS, GATHER,
/// TRANSPOSE}`: COLS = column j at `p + j·st`, else row l at `p + l·st`), lane l scored
/// against class `kf[l]`; `log_probs` selects the NLL rule.
#[inline(always)]
#[allow(clippy::too_many_lines, clippy::too_many_arguments)]
pub(crate) unsafe fn lanes<I: Isa, A: Elem, B: Elem, const M: u8>(
    a: *const A,
    sta: usize,
    b: *const B,
    stb: usize,
    c: usize,
    kf: &[f32; 16],
    log_probs: bool,
    o: &mut LaneCompare,
) {
    let mut ya = std::mem::MaybeUninit::<[I::V; MAX_C]>::uninit();
    let mut yb = std::mem::MaybeUninit::<[I::V; MAX_C]>::uninit();
    let (ya, yb) = (ya.as_mut_ptr() as *mut I::V, yb.as_mut_ptr() as *mut I::V);
    let mut ea = std::mem::MaybeUninit::<[I::V; MAX_C]>::uninit();
    let mut eb = std::mem::MaybeUninit::<[I::V; MAX_C]>::uninit();
    let (ea, eb) = (ea.as_mut_ptr() as *mut I::V, eb.as_mut_ptr() as *mut I::V);
    let (zero, one, floor) = (I::splat(0.0), I::splat(1.0), I::splat(FLOOR));
    for g in (0..16).step_by(I::W) {
        let (pa, pb) = if M == kernel::COLS {
            (a.add(g), b.add(g))
        } else {
            (a.add(g * sta), b.add(g * stb))
        };
        let vk = I::load(kf.as_ptr().add(g));
        let (ma, arg_a, xta) = scan::<I, A, M>(pa, sta, c, vk, ya);
        let (mb, arg_b, xtb) = scan::<I, B, M>(pb, stb, c, vk, yb);
        // shifted rows (clamped at FLOOR: -inf entries are probability 0) and their sums
        let (mut sa, mut sb) = (zero, zero);
        for j in 0..c {
            let va = I::max_keep_nan(floor, I::sub(ya.add(j).read(), ma));
            let vb = I::max_keep_nan(floor, I::sub(yb.add(j).read(), mb));
            let (xa, xb) = (I::exp_le0(va), I::exp_le0(vb));
            ya.add(j).write(va);
            yb.add(j).write(vb);
            ea.add(j).write(xa);
            eb.add(j).write(xb);
            sa = I::add(sa, xa);
            sb = I::add(sb, xb);
        }
        let (lsa, lsb) = (
            I::ln_ge1(I::max_ignore_nan(one, sa)),
            I::ln_ge1(I::max_ignore_nan(one, sb)),
        );
        // r = ln q - ln p = (yb - ya) + cc, cc = ln sa - ln sb (|cc| <= ln 32), g = e^cc
        let cc = I::sub(lsa, lsb);
        let gg = I::exp2_sum(I::mul(cc, I::splat(exp2c::LOG2E)));
        let (mut h, mut inf) = (zero, zero);
        for j in 0..c {
            let (va, vb) = (ya.add(j).read(), yb.add(j).read());
            let (xa, xb) = (ea.add(j).read(), eb.add(j).read());
            kl_terms::<I>(va, vb, xa, xb, cc, gg, &mut h, &mut inf);
        }
        let (nll_a, nll_b) = if log_probs {
            (I::sub(zero, xta), I::sub(zero, xtb))
        } else {
            (I::add(I::sub(ma, xta), lsa), I::add(I::sub(mb, xtb), lsb))
        };
        let nl2 = I::splat(-exp2c::LOG2E);
        let dp = I::sub(
            I::exp2_sum(I::mul(nll_b, nl2)),
            I::exp2_sum(I::mul(nll_a, nl2)),
        );
        // ordinary: both maxima finite and below BIG, finite sums (NaN anywhere spoils them)
        let chk = I::fma(I::add(I::add(sa, sb), h), zero, I::add(ma, mb));
        let ok = I::mul(
            I::ok_abs_below(chk, exp2c::BIG, one),
            I::mul(
                I::ok_abs_below(ma, exp2c::BIG, one),
                I::ok_abs_below(mb, exp2c::BIG, one),
            ),
        );
        let same = I::blend_eq(I::sub(arg_a, arg_b), 0.0, zero, one);
        for (dst, v) in [
            (&mut o.h, h),
            (&mut o.sa, sa),
            (&mut o.inf, inf),
            (&mut o.nll_a, nll_a),
            (&mut o.nll_b, nll_b),
            (&mut o.dp, dp),
            (&mut o.same, same),
            (&mut o.ok, ok),
        ] {
            I::store(dst.as_mut_ptr().add(g), v);
        }
    }
}

/// [`lanes`] on the given path.
pub(crate) fn lanes_on<A: Elem, B: Elem>(
    path: Path,
    a: &[A],
    b: &[B],
    c: usize,
    kf: &[f32; 16],
    log_probs: bool,
    o: &mut LaneCompare,
) {
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c,popcnt")]
    unsafe fn avx2<A: Elem, B: Elem>(
        a: *const A,
        b: *const B,
        c: usize,
        kf: &[f32; 16],
        lp: bool,
        o: &mut LaneCompare,
    ) {
        lanes::<simd::avx2::Avx2, A, B, { kernel::COLS }>(a, 16, b, 16, c, kf, lp, o);
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,popcnt")]
    unsafe fn avx512<A: Elem, B: Elem>(
        a: *const A,
        b: *const B,
        c: usize,
        kf: &[f32; 16],
        lp: bool,
        o: &mut LaneCompare,
    ) {
        lanes::<simd::avx512::Avx512, A, B, { kernel::COLS }>(a, 16, b, 16, c, kf, lp, o);
    }
    #[cfg(target_arch = "aarch64")]
    #[target_feature(enable = "neon")]
    unsafe fn neon<A: Elem, B: Elem>(
        a: *const A,
        b: *const B,
        c: usize,
        kf: &[f32; 16],
        lp: bool,
        o: &mut LaneCompare,
    ) {
        lanes::<simd::neon::Neon, A, B, { kernel::COLS }>(a, 16, b, 16, c, kf, lp, o);
    }
    assert!(c <= MAX_C && a.len() >= 16 * c && b.len() >= 16 * c);
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    // SAFETY: the tiles hold 16·c elements (asserted); a Path other than Scalar is only
    // selected after `Path::available` (or `is_aarch64_feature_detected!`) confirmed the
    // CPU has its features, and the scalar path needs none.
    unsafe {
        match path {
            #[cfg(target_arch = "x86_64")]
            Path::Avx512 => avx512::<A, B>(pa, pb, c, kf, log_probs, o),
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => avx2::<A, B>(pa, pb, c, kf, log_probs, o),
            #[cfg(target_arch = "aarch64")]
            Path::Neon => neon::<A, B>(pa, pb, c, kf, log_probs, o),
            _ => lanes::<simd::scalar::Scalar, A, B, { kernel::COLS }>(
                pa, 16, pb, 16, c, kf, log_probs, o,
            ),
        }
    }
}

/// The clean groups of a run of short rows of both dumps in one run (two loops per tile of
/// `kernel::RUN_TILE_GROUPS` groups, see the body), 16 rows at a time:
/// targets decoded in vectors, [`lanes`], the rows' values in float64 as the group path takes
/// them, summed lane by lane ([`LaneSums::add16`]) and written to the per-row outputs from
/// `at`. Stops at the end or at the first group that is not clean (a target ignored or out of
/// range, a lane that is not ordinary), which the caller takes the group way. Returns the rows
/// done (a multiple of 16).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn run<I: Isa, A: Elem, B: Elem, const M: u8>(
    a: Block<A>,
    b: Block<B>,
    t: &[i64],
    ignore: i64,
    log_probs: bool,
    acc: &mut LaneSums,
    out: Option<&mut CompareOut>,
    at: usize,
) -> usize {
    let c = a.c;
    if c == 0 || c > MAX_C || b.c != c || t.len() < a.n || b.n < a.n {
        return 0;
    }
    let mut out = out;
    // Two loops over a tile of up to RUN_TILE_GROUPS groups, as `kernel::eval_run` does: the
    // lanes of every group first (a long dependency chain in a short body, overlapped across
    // groups), then their sums and outputs, group by group in order (the same bits).
    let mut tile: [LaneCompare; RUN_TILE_GROUPS] = std::array::from_fn(|_| LaneCompare::default());
    let (mut idx, mut kf) = ([0i32; 16], [0f32; 16]);
    let mut done = 0;
    loop {
        let (mut ng, mut stop) = (0, false);
        'groups: while ng < RUN_TILE_GROUPS {
            let base = done + 16 * ng;
            if base + 16 > a.n {
                stop = true;
                break;
            }
            for g in (0..16).step_by(I::W) {
                let (_, n, bad, k) = I::targets(t.as_ptr().add(base + g), c, 0, ignore, &mut idx);
                if bad || n as usize != I::W {
                    stop = true;
                    break 'groups;
                }
                I::store(kf.as_mut_ptr().add(g), k);
            }
            let (pa, pb) = if M == kernel::COLS {
                (a.p.add(base), b.p.add(base))
            } else {
                let (pa, pb) = (a.p.add(base * a.st), b.p.add(base * b.st));
                kernel::short_prefetch::<I, A>(pa, a.st);
                kernel::short_prefetch::<I, B>(pb, b.st);
                (pa, pb)
            };
            let o = &mut tile[ng];
            lanes::<I, A, B, M>(pa, a.st, pb, b.st, c, &kf, log_probs, o);
            if o.ok.contains(&0.0) {
                stop = true;
                break;
            }
            ng += 1;
        }
        for (q, o) in tile.iter().enumerate().take(ng) {
            let (mut kl, mut dp, mut na, mut nb) = ([0f64; 16], [0f64; 16], [0f64; 16], [0f64; 16]);
            let mut same = [0i8; 16];
            for l in 0..16 {
                kl[l] = lane_kl(o.h[l], o.sa[l], o.inf[l]);
                dp[l] = f64::from(o.dp[l]);
                na[l] = f64::from(o.nll_a[l]);
                nb[l] = f64::from(o.nll_b[l]);
                same[l] = i8::from(o.same[l] != 0.0);
            }
            acc.add16(&kl, &dp, &na, &nb, &same);
            if let Some(w) = out.as_deref_mut() {
                w.put16(at + done + 16 * q, &kl, &dp, &na, &nb, &same);
            }
        }
        done += 16 * ng;
        if stop {
            break;
        }
    }
    done
}

/// A lane's KL from its sums (see [`LaneCompare`]): Σ e_a·f(r) / Σ e_a, +inf where the base
/// has mass the new row lacks, never below 0.
#[inline(always)]
pub(crate) fn lane_kl(h: f32, sa: f32, inf: f32) -> f64 {
    if inf > 0.0 {
        f64::INFINITY
    } else {
        (f64::from(h) / f64::from(sa)).max(0.0)
    }
}

/// [`run`] on the given path (not the scalar one: the caller keeps it on the row path).
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_on<A: Elem, B: Elem, const M: u8>(
    path: Path,
    a: Block<A>,
    b: Block<B>,
    t: &[i64],
    ignore: i64,
    log_probs: bool,
    acc: &mut LaneSums,
    out: Option<&mut CompareOut>,
    at: usize,
) -> usize {
    macro_rules! isa {
        ($name:ident, $isa:ty, $feat:literal) => {
            #[target_feature(enable = $feat)]
            #[allow(clippy::too_many_arguments)]
            unsafe fn $name<A: Elem, B: Elem, const M: u8>(
                a: Block<A>,
                b: Block<B>,
                t: &[i64],
                ignore: i64,
                lp: bool,
                acc: &mut LaneSums,
                out: Option<&mut CompareOut>,
                at: usize,
            ) -> usize {
                run::<$isa, A, B, M>(a, b, t, ignore, lp, acc, out, at)
            }
        };
    }
    #[cfg(target_arch = "x86_64")]
    isa!(avx2, simd::avx2::Avx2, "avx2,fma,f16c,popcnt");
    #[cfg(target_arch = "x86_64")]
    isa!(
        avx512,
        simd::avx512::Avx512,
        "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,popcnt"
    );
    #[cfg(target_arch = "aarch64")]
    isa!(neon, simd::neon::Neon, "neon");
    // SAFETY: the blocks address a.n (b.n) rows of c values each in their mode, alive for
    // the call (the caller's views or this thread's tiles); a Path other than Scalar is only
    // selected after `Path::available` (or `is_aarch64_feature_detected!`) confirmed the CPU
    // has its features.
    unsafe {
        match path {
            #[cfg(target_arch = "x86_64")]
            Path::Avx512 => avx512::<A, B, M>(a, b, t, ignore, log_probs, acc, out, at),
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => avx2::<A, B, M>(a, b, t, ignore, log_probs, acc, out, at),
            #[cfg(target_arch = "aarch64")]
            Path::Neon => neon::<A, B, M>(a, b, t, ignore, log_probs, acc, out, at),
            _ => 0,
        }
    }
}
