//! AVX-512 (F, BW, VL, DQ): 16 f32 lanes.

use super::{expc, Isa};
use std::arch::x86_64::*;

#[derive(Clone, Copy)]
pub(crate) struct Avx512;

impl Isa for Avx512 {
    type V = __m512;
    const W: usize = 16;
    #[inline(always)]
    unsafe fn splat(x: f32) -> __m512 {
        _mm512_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u16) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const u16) -> __m512 {
        let w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i));
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(w))
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m512) {
        _mm512_storeu_ps(p, v)
    }
    #[inline(always)]
    unsafe fn add(a: __m512, b: __m512) -> __m512 {
        _mm512_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn sub(a: __m512, b: __m512) -> __m512 {
        _mm512_sub_ps(a, b)
    }
    #[inline(always)]
    unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
        _mm512_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn max_ignore_nan(a: __m512, b: __m512) -> __m512 {
        // VMAXPS returns its second operand when either is NaN.
        _mm512_max_ps(b, a)
    }
    #[inline(always)]
    unsafe fn max_keep_nan(a: __m512, b: __m512) -> __m512 {
        _mm512_max_ps(a, b)
    }
    #[inline(always)]
    unsafe fn exp_le0(x: __m512) -> __m512 {
        let lo = _mm512_set1_ps(expc::LO);
        let keep = _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(x, lo); // x >= LO or NaN
        let xc = _mm512_max_ps(lo, x); // NaN in x survives
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(xc, _mm512_set1_ps(expc::LOG2E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(expc::LN2_HI), xc);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(expc::LN2_LO), r);
        let mut p = _mm512_set1_ps(expc::C7);
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(expc::C6));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(expc::C5));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(expc::C4));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(expc::C3));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(expc::C2));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0));
        let e = _mm512_slli_epi32::<23>(_mm512_cvtps_epi32(n));
        let y = _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(p), e));
        _mm512_maskz_mov_ps(keep, y)
    }
    #[inline(always)]
    unsafe fn hsum(v: __m512) -> f32 {
        _mm512_reduce_add_ps(v)
    }
    #[inline(always)]
    unsafe fn hmax(v: __m512) -> f32 {
        _mm512_reduce_max_ps(v)
    }
    #[inline(always)]
    unsafe fn count_gt(v: __m512, t: __m512) -> u32 {
        (_mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, t) as u32).count_ones()
    }
}
