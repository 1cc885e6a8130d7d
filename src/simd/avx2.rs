//! AVX2 + FMA + F16C: 8 f32 lanes.

use super::{expc, Isa};
use std::arch::x86_64::*;

#[derive(Clone, Copy)]
pub(crate) struct Avx2;

impl Isa for Avx2 {
    type V = __m256;
    const W: usize = 8;
    #[inline(always)]
    unsafe fn splat(x: f32) -> __m256 {
        _mm256_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const u16) -> __m256 {
        let w = _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i));
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(w))
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m256) {
        _mm256_storeu_ps(p, v)
    }
    #[inline(always)]
    unsafe fn add(a: __m256, b: __m256) -> __m256 {
        _mm256_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn sub(a: __m256, b: __m256) -> __m256 {
        _mm256_sub_ps(a, b)
    }
    #[inline(always)]
    unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
        _mm256_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn max_ignore_nan(a: __m256, b: __m256) -> __m256 {
        // MAXPS returns its second operand when either is NaN.
        _mm256_max_ps(b, a)
    }
    #[inline(always)]
    unsafe fn max_keep_nan(a: __m256, b: __m256) -> __m256 {
        _mm256_max_ps(a, b)
    }
    #[inline(always)]
    unsafe fn exp_le0(x: __m256) -> __m256 {
        let lo = _mm256_set1_ps(expc::LO);
        let keep = _mm256_cmp_ps::<_CMP_NLT_UQ>(x, lo); // x >= LO or NaN
        let xc = _mm256_max_ps(lo, x); // NaN in x survives
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(xc, _mm256_set1_ps(expc::LOG2E)),
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(expc::LN2_HI), xc);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(expc::LN2_LO), r);
        let mut p = _mm256_set1_ps(expc::C7);
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(expc::C6));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(expc::C5));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(expc::C4));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(expc::C3));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(expc::C2));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0));
        let e = _mm256_slli_epi32::<23>(_mm256_cvtps_epi32(n));
        let y = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e));
        _mm256_and_ps(y, keep)
    }
    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
        _mm_cvtss_f32(s)
    }
    #[inline(always)]
    unsafe fn hmax(v: __m256) -> f32 {
        let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_max_ss(s, _mm_shuffle_ps::<1>(s, s));
        _mm_cvtss_f32(s)
    }
    #[inline(always)]
    unsafe fn count_gt(v: __m256, t: __m256) -> u32 {
        (_mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(v, t)) as u32).count_ones()
    }
}
