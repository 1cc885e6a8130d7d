//! Short rows of the two-dump comparison in SIMD lanes: 16 rows of each dump (C <= 32,
//! staged column-major), one row per lane, the same quantities as the row path of
//! [`crate::compare`] (KL of the renormalised rows as Σ p·f(r), Δp, both NLLs, argmax
//! agreement). A lane that is not ordinary (an inf/NaN or huge max, a non-finite sum) is
//! flagged and left to the row path, so a row's numbers never depend on which rows share its
//! group: whole, chunked and merged runs agree.

use crate::compare::{kl_shifted, FLOOR};
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

/// Max, first argmax and target value of W rows (column j at `p + 16·j`).
#[inline(always)]
unsafe fn scan<I: Isa, E: Elem>(p: *const E, c: usize, vk: I::V) -> (I::V, I::V, I::V) {
    let mut vm = I::splat(f32::NEG_INFINITY);
    let mut xt = I::splat(0.0);
    for j in 0..c {
        let v = E::load::<I>(p.add(16 * j));
        vm = I::max_ignore_nan(vm, v);
        xt = I::blend_eq(vk, j as f32, xt, v);
    }
    // the first index holding the max: scanned from the end, the last hit is the first
    let mut arg = I::splat(0.0);
    for j in (0..c).rev() {
        let d = I::sub(E::load::<I>(p.add(16 * j)), vm);
        arg = I::blend_eq(d, 0.0, arg, I::splat(j as f32));
    }
    (vm, arg, xt)
}

/// [`LaneCompare`] of 16 rows of each dump, staged column-major (column j of dump a at
/// `a + 16·j`), lane l scored against class `kf[l]`; `log_probs` selects the NLL rule.
#[inline(always)]
#[allow(clippy::too_many_lines)]
pub(crate) unsafe fn lanes<I: Isa, A: Elem, B: Elem>(
    a: *const A,
    b: *const B,
    c: usize,
    kf: &[f32; 16],
    log_probs: bool,
    o: &mut LaneCompare,
) {
    let mut ya = std::mem::MaybeUninit::<[I::V; MAX_C]>::uninit();
    let mut yb = std::mem::MaybeUninit::<[I::V; MAX_C]>::uninit();
    let (ya, yb) = (ya.as_mut_ptr() as *mut I::V, yb.as_mut_ptr() as *mut I::V);
    let (zero, one, floor) = (I::splat(0.0), I::splat(1.0), I::splat(FLOOR));
    for g in (0..16).step_by(I::W) {
        let (pa, pb) = (a.add(g), b.add(g));
        let vk = I::load(kf.as_ptr().add(g));
        let (ma, arg_a, xta) = scan::<I, A>(pa, c, vk);
        let (mb, arg_b, xtb) = scan::<I, B>(pb, c, vk);
        // shifted rows (clamped at FLOOR: -inf entries are probability 0) and their sums
        let (mut sa, mut sb) = (zero, zero);
        for j in 0..c {
            let va = I::max_keep_nan(floor, I::sub(A::load::<I>(pa.add(16 * j)), ma));
            let vb = I::max_keep_nan(floor, I::sub(B::load::<I>(pb.add(16 * j)), mb));
            ya.add(j).write(va);
            yb.add(j).write(vb);
            sa = I::add(sa, I::exp_le0(va));
            sb = I::add(sb, I::exp_le0(vb));
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
            kl_shifted::<I>(ya.add(j).read(), yb.add(j).read(), cc, gg, &mut h, &mut inf);
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
        lanes::<simd::avx2::Avx2, A, B>(a, b, c, kf, lp, o);
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
        lanes::<simd::avx512::Avx512, A, B>(a, b, c, kf, lp, o);
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
        lanes::<simd::neon::Neon, A, B>(a, b, c, kf, lp, o);
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
            _ => lanes::<simd::scalar::Scalar, A, B>(pa, pb, c, kf, log_probs, o),
        }
    }
}
