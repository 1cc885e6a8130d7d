//! AArch64 NEON (Advanced SIMD, part of every AArch64 CPU): 4 f32 lanes.
//!
//! The same algorithms as the x86 paths (exp, base-2 exp for sums, log), so every path rounds
//! alike. Gathers and the int64 target decode have no NEON instruction: they go lane by lane.

use super::{exp2c, expc, lnc, Isa};
use std::arch::aarch64::*;

#[derive(Clone, Copy)]
pub(crate) struct Neon;

#[inline(always)]
unsafe fn from_lanes(a: [f32; 4]) -> float32x4_t {
    vld1q_f32(a.as_ptr())
}

#[inline(always)]
unsafe fn bits(v: float32x4_t) -> uint32x4_t {
    vreinterpretq_u32_f32(v)
}

#[inline(always)]
unsafe fn float(v: uint32x4_t) -> float32x4_t {
    vreinterpretq_f32_u32(v)
}

/// 2^n · p for integral n in [-127, 128] (n's exponent bits added to p's).
#[inline(always)]
unsafe fn scale(p: float32x4_t, n: float32x4_t) -> float32x4_t {
    let e = vshlq_n_s32::<23>(vcvtq_s32_f32(n));
    vreinterpretq_f32_s32(vaddq_s32(vreinterpretq_s32_f32(p), e))
}

impl Isa for Neon {
    type V = float32x4_t;
    const W: usize = 4;
    #[inline(always)]
    unsafe fn splat(x: f32) -> float32x4_t {
        vdupq_n_f32(x)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> float32x4_t {
        vld1q_f32(p)
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u16) -> float32x4_t {
        // binary16 -> f32 by integer steps (the f16 conversion instructions need Rust's
        // unstable f16 types): exponent rebiased by 112, exponent 31 (inf/NaN) made 255, and
        // subnormals (exponent 0) as mantissa · 2^-24, which is exact and never an f32
        // subnormal, so a flush-to-zero mode cannot touch it.
        let h = vmovl_u16(vld1_u16(p));
        let mag = vshlq_n_u32::<13>(vandq_u32(h, vdupq_n_u32(0x7FFF)));
        let exp = vandq_u32(h, vdupq_n_u32(0x7C00));
        let normal = vaddq_u32(mag, vdupq_n_u32(112 << 23));
        let special = vceqq_u32(exp, vdupq_n_u32(0x7C00));
        let normal = vorrq_u32(normal, vandq_u32(special, vdupq_n_u32(0x7F80_0000)));
        let sub = vmulq_f32(
            vcvtq_f32_u32(vandq_u32(h, vdupq_n_u32(0x03FF))),
            vdupq_n_f32(1.0 / 16_777_216.0),
        );
        let v = vbslq_u32(vceqq_u32(exp, vdupq_n_u32(0)), bits(sub), normal);
        let sign = vshlq_n_u32::<16>(vandq_u32(h, vdupq_n_u32(0x8000)));
        float(vorrq_u32(v, sign))
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const u16) -> float32x4_t {
        float(vshlq_n_u32::<16>(vmovl_u16(vld1_u16(p))))
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: float32x4_t) {
        vst1q_f32(p, v)
    }
    #[inline(always)]
    unsafe fn prefetch(p: *const u8) {
        // PRFM never faults, whatever the address.
        std::arch::asm!("prfm pldl1keep, [{0}]", in(reg) p, options(nostack, readonly, preserves_flags));
    }
    #[inline(always)]
    unsafe fn load_tail(p: *const f32, n: usize) -> float32x4_t {
        let mut a = [f32::NEG_INFINITY; 4];
        for (k, v) in a.iter_mut().enumerate().take(n) {
            *v = *p.add(k);
        }
        from_lanes(a)
    }
    #[inline(always)]
    unsafe fn store_tail(p: *mut f32, v: float32x4_t, n: usize) {
        let mut a = [0f32; 4];
        vst1q_f32(a.as_mut_ptr(), v);
        for (k, &x) in a.iter().enumerate().take(n) {
            *p.add(k) = x;
        }
    }
    #[inline(always)]
    unsafe fn add(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        vaddq_f32(a, b)
    }
    #[inline(always)]
    unsafe fn sub(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        vsubq_f32(a, b)
    }
    #[inline(always)]
    unsafe fn mul(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        vmulq_f32(a, b)
    }
    #[inline(always)]
    unsafe fn div(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        vdivq_f32(a, b)
    }
    #[inline(always)]
    unsafe fn fma(a: float32x4_t, b: float32x4_t, c: float32x4_t) -> float32x4_t {
        vfmaq_f32(c, a, b)
    }
    #[inline(always)]
    unsafe fn max_ignore_nan(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // b > a is false where either is NaN: a is kept, as x86's MAXPS(b, a) does
        vbslq_f32(vcgtq_f32(b, a), b, a)
    }
    #[inline(always)]
    unsafe fn max_keep_nan(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // a > b is false where either is NaN: b is returned, as x86's MAXPS(a, b) does
        vbslq_f32(vcgtq_f32(a, b), a, b)
    }
    #[inline(always)]
    unsafe fn exp_le0(x: float32x4_t) -> float32x4_t {
        // exact zeros below exp(LO); NaN compares false and is kept
        let below = vcltq_f32(x, vdupq_n_f32(expc::LO));
        float(vbicq_u32(bits(Self::exp_sum(x)), below))
    }
    #[inline(always)]
    unsafe fn exp_clamped(xc: float32x4_t) -> float32x4_t {
        let n = vrndnq_f32(vmulq_f32(xc, vdupq_n_f32(expc::LOG2E)));
        let r = vfmsq_f32(xc, n, vdupq_n_f32(expc::LN2_HI));
        let r = vfmsq_f32(r, n, vdupq_n_f32(expc::LN2_LO));
        let mut p = vdupq_n_f32(expc::C7);
        for c in [expc::C6, expc::C5, expc::C4, expc::C3, expc::C2, 1.0, 1.0] {
            p = vfmaq_f32(vdupq_n_f32(c), p, r);
        }
        scale(p, n)
    }
    #[inline(always)]
    unsafe fn exp2_sum(t: float32x4_t) -> float32x4_t {
        // below -127 the exponent arithmetic would wrap: clamp (NaN is kept)
        let tc = Self::max_keep_nan(vdupq_n_f32(-127.0), t);
        let n = vrndmq_f32(tc);
        let f = vsubq_f32(tc, n);
        let c = exp2c::P;
        let mut p = vdupq_n_f32(c[6]);
        for &ck in c[..6].iter().rev() {
            p = vfmaq_f32(vdupq_n_f32(ck), p, f);
        }
        scale(p, n)
    }
    #[inline(always)]
    unsafe fn abs(v: float32x4_t) -> float32x4_t {
        vabsq_f32(v)
    }
    #[inline(always)]
    unsafe fn ok_abs_below(v: float32x4_t, b: f32, one: float32x4_t) -> float32x4_t {
        let lt = vcltq_f32(vabsq_f32(v), vdupq_n_f32(b));
        vreinterpretq_f32_u32(vandq_u32(lt, vreinterpretq_u32_f32(one)))
    }
    #[inline(always)]
    unsafe fn all_abs_below(v: float32x4_t, b: f32) -> bool {
        // |v| < |b|, false for NaN
        vminvq_u32(vcaltq_f32(v, vdupq_n_f32(b))) != 0
    }
    #[inline(always)]
    unsafe fn hsum(v: float32x4_t) -> f32 {
        vaddvq_f32(v)
    }
    #[inline(always)]
    unsafe fn hmax(v: float32x4_t) -> f32 {
        vmaxvq_f32(v)
    }
    #[inline(always)]
    unsafe fn zero_where_zero(mask: float32x4_t, v: float32x4_t) -> float32x4_t {
        float(vbicq_u32(bits(v), vceqq_f32(mask, vdupq_n_f32(0.0))))
    }
    #[inline(always)]
    unsafe fn gt_lanes(v: float32x4_t, t: float32x4_t) -> u32 {
        vaddvq_u32(vshrq_n_u32::<31>(vcgtq_f32(v, t)))
    }
    #[inline(always)]
    unsafe fn eq_bits(v: float32x4_t, t: float32x4_t) -> u32 {
        let w = vld1q_u32([1u32, 2, 4, 8].as_ptr());
        vaddvq_u32(vandq_u32(vceqq_f32(v, t), w))
    }
    #[inline(always)]
    unsafe fn count_gt(acc: float32x4_t, v: float32x4_t, t: float32x4_t) -> float32x4_t {
        let one = vandq_u32(vcgtq_f32(v, t), bits(vdupq_n_f32(1.0)));
        vaddq_f32(acc, float(one))
    }
    #[inline(always)]
    unsafe fn gather(p: *const f32, stride: usize) -> float32x4_t {
        from_lanes([*p, *p.add(stride), *p.add(2 * stride), *p.add(3 * stride)])
    }
    #[inline(always)]
    unsafe fn gather_idx(p: *const f32, idx: &[i32; 16]) -> float32x4_t {
        let at = |l: usize| *p.add(idx[l] as usize);
        from_lanes([at(0), at(1), at(2), at(3)])
    }
    #[inline(always)]
    unsafe fn deinterleave2(p: *const f32) -> (float32x4_t, float32x4_t) {
        let v = vld2q_f32(p);
        (v.0, v.1)
    }
    #[inline(always)]
    unsafe fn store_pair(p: *mut f32, a: float32x4_t, b: float32x4_t) {
        vst2q_f32(p, float32x4x2_t(a, b));
    }
    #[inline(always)]
    unsafe fn blend_eq(k: float32x4_t, j: f32, a: float32x4_t, b: float32x4_t) -> float32x4_t {
        vbslq_f32(vceqq_f32(k, vdupq_n_f32(j)), b, a)
    }
    #[inline(always)]
    unsafe fn targets(
        t: *const i64,
        c: usize,
        stride: usize,
        ignore: i64,
        idx: &mut [i32; 16],
    ) -> (float32x4_t, u32, bool, float32x4_t) {
        let (mut ok, mut n, mut bad, mut kf) = ([0f32; 4], 0u32, false, [0f32; 4]);
        for l in 0..4 {
            let v = *t.add(l);
            let inr = (v as u64) < c as u64;
            let scored = inr && v != ignore;
            let k = if scored { v as i32 } else { 0 };
            idx[l] = (l * stride) as i32 + k;
            ok[l] = scored as u32 as f32;
            kf[l] = k as f32;
            n += scored as u32;
            bad |= !inr && v != ignore;
        }
        (from_lanes(ok), n, bad, from_lanes(kf))
    }
    #[inline(always)]
    unsafe fn ln_ge1(x: float32x4_t) -> float32x4_t {
        let xi = vreinterpretq_s32_f32(x);
        let e = vsubq_s32(vshrq_n_s32::<23>(xi), vdupq_n_s32(127));
        let m = float(vorrq_u32(
            vandq_u32(bits(x), vdupq_n_u32(0x007F_FFFF)),
            vdupq_n_u32(0x3F80_0000),
        ));
        let big = vcgtq_f32(m, vdupq_n_f32(lnc::SQRT2));
        let m = vbslq_f32(big, vmulq_f32(m, vdupq_n_f32(0.5)), m);
        // big is all ones (-1) where m was halved: one more in the exponent
        let e = vcvtq_f32_s32(vsubq_s32(e, vreinterpretq_s32_u32(big)));
        let f = vsubq_f32(m, vdupq_n_f32(1.0));
        let z = vdivq_f32(f, vaddq_f32(f, vdupq_n_f32(2.0)));
        let z2 = vmulq_f32(z, z);
        let mut p = vdupq_n_f32(lnc::C9);
        for c in [lnc::C7, lnc::C5, lnc::C3, 1.0] {
            p = vfmaq_f32(vdupq_n_f32(c), p, z2);
        }
        let r = vmulq_f32(vaddq_f32(z, z), p);
        vfmaq_f32(r, e, vdupq_n_f32(lnc::LN2))
    }
}
