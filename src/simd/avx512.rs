//! AVX-512 (F, BW, VL, DQ): 16 f32 lanes.

use super::{exp2c, expc, lnc, Elem, Isa};
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
        _mm512_storeu_ps(p, v);
    }
    #[inline(always)]
    unsafe fn prefetch(p: *const u8) {
        _mm_prefetch::<_MM_HINT_T0>(p as *const i8);
    }
    #[inline(always)]
    unsafe fn load_tail_u16<const BF: bool>(p: *const u16, n: usize, fill: u16) -> __m512 {
        let h = _mm256_mask_loadu_epi16(
            _mm256_set1_epi16(fill as i16),
            ((1u32 << n) - 1) as u16,
            p as *const i16,
        );
        if BF {
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
        } else {
            _mm512_cvtph_ps(h)
        }
    }
    #[inline(always)]
    unsafe fn load_pair_u16<const BF: bool>(p: *const u16) -> (__m512, __m512) {
        let w = _mm512_loadu_si512(p as *const _);
        if BF {
            let hi = _mm512_set1_epi32(0xFFFF_0000_u32 as i32);
            (
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(w)),
                _mm512_castsi512_ps(_mm512_and_si512(w, hi)),
            )
        } else {
            (
                _mm512_cvtph_ps(_mm512_cvtepi32_epi16(w)),
                _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(w))),
            )
        }
    }
    #[inline(always)]
    unsafe fn load_tail(p: *const f32, n: usize) -> __m512 {
        _mm512_mask_loadu_ps(
            _mm512_set1_ps(f32::NEG_INFINITY),
            ((1u32 << n) - 1) as u16,
            p,
        )
    }
    #[inline(always)]
    unsafe fn store_tail(p: *mut f32, v: __m512, n: usize) {
        _mm512_mask_storeu_ps(p, ((1u32 << n) - 1) as u16, v);
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
    unsafe fn mul(a: __m512, b: __m512) -> __m512 {
        _mm512_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn div(a: __m512, b: __m512) -> __m512 {
        _mm512_div_ps(a, b)
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
        // exact zeros below exp(LO); NaN compares unordered and is kept
        let keep = _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(x, _mm512_set1_ps(expc::LO));
        _mm512_maskz_mov_ps(keep, Self::exp_sum(x))
    }
    #[inline(always)]
    unsafe fn exp_clamped(xc: __m512) -> __m512 {
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(xc, _mm512_set1_ps(expc::LOG2E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(expc::LN2_HI), xc);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(expc::LN2_LO), r);
        // Degree 6 is enough here (truncation < 1.3e-7 relative) and scalef replaces the
        // exponent-bit arithmetic: 4 fewer operations per vector than the AVX2 path.
        let mut p = _mm512_set1_ps(expc::C6);
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(expc::C5));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(expc::C4));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(expc::C3));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(expc::C2));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0));
        _mm512_scalef_ps(p, n)
    }
    #[inline(always)]
    unsafe fn exp2_sum(t: __m512) -> __m512 {
        // f = t - floor(t) in one instruction (0 for ±inf), and scalef multiplies by
        // 2^floor(t) (0 for -inf): no clamp, no exponent arithmetic.
        let f = _mm512_reduce_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(t);
        let c = exp2c::P;
        let mut p = _mm512_set1_ps(c[6]);
        for &ck in c[..6].iter().rev() {
            p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(ck));
        }
        _mm512_scalef_ps(p, t)
    }
    #[inline(always)]
    unsafe fn abs(v: __m512) -> __m512 {
        _mm512_abs_ps(v)
    }
    #[inline(always)]
    unsafe fn ok_abs_below(v: __m512, b: f32, one: __m512) -> __m512 {
        let m = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(_mm512_abs_ps(v), _mm512_set1_ps(b));
        _mm512_maskz_mov_ps(m, one)
    }
    #[inline(always)]
    unsafe fn all_abs_below(v: __m512, b: f32) -> bool {
        _mm512_cmp_ps_mask::<_CMP_LT_OQ>(_mm512_abs_ps(v), _mm512_set1_ps(b)) == 0xFFFF
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
    unsafe fn zero_where_zero(mask: __m512, v: __m512) -> __m512 {
        _mm512_maskz_mov_ps(
            _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(mask, _mm512_setzero_ps()),
            v,
        )
    }
    #[inline(always)]
    unsafe fn gt_lanes(v: __m512, t: __m512) -> u32 {
        u32::from(_mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, t)).count_ones()
    }
    #[inline(always)]
    unsafe fn eq_bits(v: __m512, t: __m512) -> u32 {
        u32::from(_mm512_cmp_ps_mask::<_CMP_EQ_OQ>(v, t))
    }
    #[inline(always)]
    unsafe fn count_gt(acc: __m512, v: __m512, t: __m512) -> __m512 {
        let gt = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, t);
        _mm512_mask_add_ps(acc, gt, acc, _mm512_set1_ps(1.0))
    }
    #[inline(always)]
    unsafe fn gather(p: *const f32, stride: usize) -> __m512 {
        let idx = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(stride as i32),
        );
        _mm512_i32gather_ps::<4>(idx, p)
    }
    #[inline(always)]
    unsafe fn rows_to_cols<E: Elem>(p: *const E, st: usize, c: usize, cols: *mut __m512) {
        // 16 rows of up to 16 columns per pass: one (masked) load per row, then a 16 x 16
        // transpose by unpacks and 128-bit lane shuffles (64 shuffles, no gather).
        let mut h = 0;
        while h < c {
            let w = (c - h).min(16);
            let mut r = [_mm512_setzero_ps(); 16];
            for (l, v) in r.iter_mut().enumerate() {
                let q = p.add(l * st + h);
                // A whole-vector load wherever it stays inside the 16 rows (it ends at or
                // before the end of the last row's c elements): on Zen 4 a masked load whose
                // masked-off lanes cross a cache line is several times slower (C = 10, one
                // thread: 665 -> 212 cycles per 16 rows). The lanes past w are never used.
                // (float32 only: 16-bit rows kept their masked loads, which were faster
                // for them: bf16 / f16 cross_entropy at C = 10 6.1 ms masked, 6.8 ms whole)
                let whole = std::mem::size_of::<E>() == 4 && l * st + h + 16 <= 15 * st + c;
                *v = if w == 16 || whole {
                    E::load::<Self>(q)
                } else {
                    E::load_tail::<Self>(q, w)
                };
            }
            let t = transpose16(r);
            for (j, v) in t.iter().enumerate().take(w) {
                cols.add(h + j).write(*v);
            }
            h += 16;
        }
    }
    #[inline(always)]
    unsafe fn gather_idx(p: *const f32, idx: &[i32; 16]) -> __m512 {
        _mm512_i32gather_ps::<4>(_mm512_loadu_si512(idx.as_ptr() as *const _), p)
    }
    #[inline(always)]
    unsafe fn deinterleave2(p: *const f32) -> (__m512, __m512) {
        let (a, b) = (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)));
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
        (
            _mm512_permutex2var_ps(a, even, b),
            _mm512_permutex2var_ps(a, odd, b),
        )
    }
    #[inline(always)]
    unsafe fn store_pair(p: *mut f32, a: __m512, b: __m512) {
        let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        let hi = _mm512_add_epi32(lo, _mm512_set1_epi32(8));
        _mm512_storeu_ps(p, _mm512_permutex2var_ps(a, lo, b));
        _mm512_storeu_ps(p.add(16), _mm512_permutex2var_ps(a, hi, b));
    }
    #[inline(always)]
    unsafe fn blend_eq(k: __m512, j: f32, a: __m512, b: __m512) -> __m512 {
        _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_EQ_OQ>(k, _mm512_set1_ps(j)), a, b)
    }
    #[inline(always)]
    unsafe fn targets(
        t: *const i64,
        c: usize,
        stride: usize,
        ignore: i64,
        idx: &mut [i32; 16],
    ) -> (__m512, u32, bool, __m512) {
        let (vc, vi) = (_mm512_set1_epi64(c as i64), _mm512_set1_epi64(ignore));
        let t0 = _mm512_loadu_si512(t as *const _);
        let t1 = _mm512_loadu_si512(t.add(8) as *const _);
        let (ig0, ig1) = (
            _mm512_cmpeq_epi64_mask(t0, vi),
            _mm512_cmpeq_epi64_mask(t1, vi),
        );
        // unsigned compare: negative targets are huge and fail it
        let (in0, in1) = (
            _mm512_cmplt_epu64_mask(t0, vc),
            _mm512_cmplt_epu64_mask(t1, vc),
        );
        let (ok0, ok1) = (in0 & !ig0, in1 & !ig1);
        let bad = (!ig0 & !in0) | (!ig1 & !in1) != 0;
        let lo = _mm512_cvtepi64_epi32(_mm512_maskz_mov_epi64(ok0, t0));
        let hi = _mm512_cvtepi64_epi32(_mm512_maskz_mov_epi64(ok1, t1));
        let tt = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
        let base = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(stride as i32),
        );
        _mm512_storeu_si512(idx.as_mut_ptr() as *mut _, _mm512_add_epi32(base, tt));
        let mask = ok0 as u16 | (ok1 as u16) << 8;
        (
            _mm512_maskz_mov_ps(mask, _mm512_set1_ps(1.0)),
            mask.count_ones(),
            bad,
            _mm512_cvtepi32_ps(tt),
        )
    }
    #[inline(always)]
    unsafe fn ln_ge1(x: __m512) -> __m512 {
        let xi = _mm512_castps_si512(x);
        let e = _mm512_sub_epi32(_mm512_srli_epi32::<23>(xi), _mm512_set1_epi32(127));
        let m = _mm512_castsi512_ps(_mm512_or_si512(
            _mm512_and_si512(xi, _mm512_set1_epi32(0x007F_FFFF)),
            _mm512_set1_epi32(0x3F80_0000),
        ));
        let big = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(m, _mm512_set1_ps(lnc::SQRT2));
        let m = _mm512_mask_mul_ps(m, big, m, _mm512_set1_ps(0.5));
        let e = _mm512_cvtepi32_ps(_mm512_mask_add_epi32(e, big, e, _mm512_set1_epi32(1)));
        let f = _mm512_sub_ps(m, _mm512_set1_ps(1.0));
        let z = _mm512_div_ps(f, _mm512_add_ps(f, _mm512_set1_ps(2.0)));
        let z2 = _mm512_mul_ps(z, z);
        let mut p = _mm512_set1_ps(lnc::C9);
        p = _mm512_fmadd_ps(p, z2, _mm512_set1_ps(lnc::C7));
        p = _mm512_fmadd_ps(p, z2, _mm512_set1_ps(lnc::C5));
        p = _mm512_fmadd_ps(p, z2, _mm512_set1_ps(lnc::C3));
        p = _mm512_fmadd_ps(p, z2, _mm512_set1_ps(1.0));
        let r = _mm512_mul_ps(_mm512_add_ps(z, z), p);
        _mm512_fmadd_ps(e, _mm512_set1_ps(lnc::LN2), r)
    }
}

/// Transposes 16 rows of 16 f32 into 16 columns: unpacks pair rows (lo/hi ps, then pd), then
/// two rounds of 128-bit lane shuffles join the 4-row groups.
#[inline(always)]
unsafe fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // u[4g + k]: column k (+4, +8, +12 in the other 128-bit lanes) of rows 4g..4g+4
    let mut u = [_mm512_setzero_ps(); 16];
    for g in 0..4 {
        let (a, b) = (_mm512_castps_pd(t[4 * g]), _mm512_castps_pd(t[4 * g + 2]));
        let (c, e) = (
            _mm512_castps_pd(t[4 * g + 1]),
            _mm512_castps_pd(t[4 * g + 3]),
        );
        u[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
        u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
        u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, e));
        u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, e));
    }
    // v[8h + k] (k < 4): columns k and k + 8 of rows 8h..8h+8; v[8h + 4 + k]: k + 4, k + 12
    let mut v = [_mm512_setzero_ps(); 16];
    for hh in 0..2 {
        for k in 0..4 {
            let (a, b) = (u[8 * hh + k], u[8 * hh + 4 + k]);
            v[8 * hh + k] = _mm512_shuffle_f32x4::<0x88>(a, b);
            v[8 * hh + 4 + k] = _mm512_shuffle_f32x4::<0xDD>(a, b);
        }
    }
    let mut out = [_mm512_setzero_ps(); 16];
    for k in 0..8 {
        // v[k] holds columns k and k + 8 of rows 0..8, v[8 + k] the same of rows 8..16
        out[k] = _mm512_shuffle_f32x4::<0x88>(v[k], v[8 + k]);
        out[k + 8] = _mm512_shuffle_f32x4::<0xDD>(v[k], v[8 + k]);
    }
    out
}
