//! The portable path: one f32 lane, the same reduced-range exp as the vector paths.

use super::{exp2c, expc, Isa};

#[derive(Clone, Copy)]
pub(crate) struct Scalar;

/// exp(x) for x <= 0 with the vector paths' algorithm, so every path rounds alike.
#[inline(always)]
pub(crate) fn exp_le0(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    if x < expc::LO {
        return 0.0;
    }
    let n = (x * expc::LOG2E).round_ties_even();
    // Plain multiply-add: `mul_add` without an FMA target feature is a slow libm call.
    let r = x - n * expc::LN2_HI;
    let r = r - n * expc::LN2_LO;
    let mut p = expc::C7;
    for c in [expc::C6, expc::C5, expc::C4, expc::C3, expc::C2, 1.0, 1.0] {
        p = p * r + c;
    }
    f32::from_bits((p.to_bits() as i32).wrapping_add((n as i32) << 23) as u32)
}

/// 2^t with the vector paths' algorithm (see [`Isa::exp2_sum`]).
#[inline(always)]
pub(crate) fn exp2_sum(t: f32) -> f32 {
    if t.is_nan() {
        return t;
    }
    let tc = t.max(-127.0);
    let n = tc.floor();
    let f = tc - n;
    let c = exp2c::P;
    let mut p = c[6];
    for &ck in c[..6].iter().rev() {
        p = p * f + ck;
    }
    f32::from_bits((p.to_bits() as i32).wrapping_add((n as i32) << 23) as u32)
}

impl Isa for Scalar {
    type V = f32;
    const W: usize = 1;
    #[inline(always)]
    unsafe fn splat(x: f32) -> f32 {
        x
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> f32 {
        *p
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u16) -> f32 {
        half::f16::from_bits(*p).to_f32()
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const u16) -> f32 {
        f32::from_bits((*p as u32) << 16)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: f32) {
        *p = v;
    }
    #[inline(always)]
    unsafe fn prefetch(_p: *const u8) {}
    #[inline(always)]
    unsafe fn load_tail(_p: *const f32, _n: usize) -> f32 {
        f32::NEG_INFINITY // one lane: there is never a partial vector
    }
    #[inline(always)]
    unsafe fn store_tail(_p: *mut f32, _v: f32, _n: usize) {}
    #[inline(always)]
    unsafe fn add(a: f32, b: f32) -> f32 {
        a + b
    }
    #[inline(always)]
    unsafe fn sub(a: f32, b: f32) -> f32 {
        a - b
    }
    #[inline(always)]
    unsafe fn mul(a: f32, b: f32) -> f32 {
        a * b
    }
    #[inline(always)]
    unsafe fn div(a: f32, b: f32) -> f32 {
        a / b
    }
    #[inline(always)]
    unsafe fn fma(a: f32, b: f32, c: f32) -> f32 {
        // Without an FMA target feature `mul_add` is a slow libm call. In f64 the product is
        // exact and the sum rounds at most twice, as good as fused for f32 (the shifted
        // exponent t = x·log2(e) - m·log2(e) of the sums needs that).
        (a as f64 * b as f64 + c as f64) as f32
    }
    #[inline(always)]
    unsafe fn max_ignore_nan(a: f32, b: f32) -> f32 {
        if b > a {
            b
        } else {
            a
        }
    }
    #[inline(always)]
    unsafe fn max_keep_nan(a: f32, b: f32) -> f32 {
        if b.is_nan() || b > a {
            b
        } else {
            a
        }
    }
    #[inline(always)]
    unsafe fn exp_le0(x: f32) -> f32 {
        exp_le0(x)
    }
    #[inline(always)]
    unsafe fn exp_clamped(x: f32) -> f32 {
        exp_le0(x)
    }
    #[inline(always)]
    unsafe fn exp2_sum(t: f32) -> f32 {
        exp2_sum(t)
    }
    #[inline(always)]
    unsafe fn abs(v: f32) -> f32 {
        v.abs()
    }
    #[inline(always)]
    unsafe fn ok_abs_below(v: f32, b: f32, one: f32) -> f32 {
        if v.abs() < b {
            one
        } else {
            0.0
        }
    }
    #[inline(always)]
    unsafe fn all_abs_below(v: f32, b: f32) -> bool {
        v.abs() < b
    }
    #[inline(always)]
    unsafe fn hsum(v: f32) -> f32 {
        v
    }
    #[inline(always)]
    unsafe fn hmax(v: f32) -> f32 {
        v
    }
    #[inline(always)]
    unsafe fn zero_where_zero(mask: f32, v: f32) -> f32 {
        if mask == 0.0 {
            0.0
        } else {
            v
        }
    }
    #[inline(always)]
    unsafe fn gt_lanes(v: f32, t: f32) -> u32 {
        u32::from(v > t)
    }
    #[inline(always)]
    unsafe fn eq_bits(v: f32, t: f32) -> u32 {
        u32::from(v == t)
    }
    #[inline(always)]
    unsafe fn count_gt(acc: f32, v: f32, t: f32) -> f32 {
        acc + (v > t) as u32 as f32
    }
    #[inline(always)]
    unsafe fn gather(p: *const f32, _stride: usize) -> f32 {
        *p
    }
    #[inline(always)]
    unsafe fn gather_idx(p: *const f32, idx: &[i32; 16]) -> f32 {
        *p.add(idx[0] as usize)
    }
    #[inline(always)]
    unsafe fn deinterleave2(p: *const f32) -> (f32, f32) {
        (*p, *p.add(1))
    }
    #[inline(always)]
    unsafe fn store_pair(p: *mut f32, a: f32, b: f32) {
        (*p, *p.add(1)) = (a, b);
    }
    #[inline(always)]
    unsafe fn blend_eq(k: f32, j: f32, a: f32, b: f32) -> f32 {
        if k == j {
            b
        } else {
            a
        }
    }
    #[inline(always)]
    unsafe fn targets(
        t: *const i64,
        c: usize,
        _stride: usize,
        ignore: i64,
        idx: &mut [i32; 16],
    ) -> (f32, u32, bool, f32) {
        let v = *t;
        let inr = (v as u64) < c as u64;
        let ok = inr && v != ignore;
        idx[0] = if ok { v as i32 } else { 0 };
        let k = idx[0] as f32;
        (ok as u32 as f32, ok as u32, !inr && v != ignore, k)
    }
    #[inline(always)]
    unsafe fn ln_ge1(x: f32) -> f32 {
        (x as f64).ln() as f32
    }
}
