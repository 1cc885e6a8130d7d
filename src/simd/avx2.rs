//! AVX2 + FMA + F16C: 8 f32 lanes.

use super::{exp2c, expc, lnc, Elem, Isa};
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
        _mm256_storeu_ps(p, v);
    }
    #[inline(always)]
    unsafe fn prefetch(p: *const u8) {
        _mm_prefetch::<_MM_HINT_T0>(p as *const i8);
    }
    #[inline(always)]
    unsafe fn load_tail(p: *const f32, n: usize) -> __m256 {
        let m = _mm256_cmpgt_epi32(
            _mm256_set1_epi32(n as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        );
        let v = _mm256_maskload_ps(p, m);
        _mm256_blendv_ps(_mm256_set1_ps(f32::NEG_INFINITY), v, _mm256_castsi256_ps(m))
    }
    #[inline(always)]
    unsafe fn store_tail(p: *mut f32, v: __m256, n: usize) {
        let m = _mm256_cmpgt_epi32(
            _mm256_set1_epi32(n as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        );
        _mm256_maskstore_ps(p, m, v);
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
    unsafe fn mul(a: __m256, b: __m256) -> __m256 {
        _mm256_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn div(a: __m256, b: __m256) -> __m256 {
        _mm256_div_ps(a, b)
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
        // exact zeros below exp(LO); NaN compares unordered and is kept
        let keep = _mm256_cmp_ps::<_CMP_NLT_UQ>(x, _mm256_set1_ps(expc::LO));
        _mm256_and_ps(Self::exp_sum(x), keep)
    }
    #[inline(always)]
    unsafe fn exp_clamped(xc: __m256) -> __m256 {
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
        _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e))
    }
    #[inline(always)]
    unsafe fn exp2_sum(t: __m256) -> __m256 {
        // below -127 the exponent arithmetic would wrap: clamp (NaN is kept)
        let tc = Self::max_keep_nan(_mm256_set1_ps(-127.0), t);
        let n = _mm256_floor_ps(tc);
        let f = _mm256_sub_ps(tc, n);
        let c = exp2c::P;
        let mut p = _mm256_set1_ps(c[6]);
        for &ck in c[..6].iter().rev() {
            p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(ck));
        }
        let e = _mm256_slli_epi32::<23>(_mm256_cvtps_epi32(n));
        _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e))
    }
    #[inline(always)]
    unsafe fn abs(v: __m256) -> __m256 {
        _mm256_andnot_ps(_mm256_set1_ps(-0.0), v)
    }
    #[inline(always)]
    unsafe fn ok_abs_below(v: __m256, b: f32, one: __m256) -> __m256 {
        _mm256_and_ps(
            _mm256_cmp_ps::<_CMP_LT_OQ>(Self::abs(v), _mm256_set1_ps(b)),
            one,
        )
    }
    #[inline(always)]
    unsafe fn all_abs_below(v: __m256, b: f32) -> bool {
        let lt = _mm256_cmp_ps::<_CMP_LT_OQ>(Self::abs(v), _mm256_set1_ps(b));
        _mm256_movemask_ps(lt) == 0xFF
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
    unsafe fn zero_where_zero(mask: __m256, v: __m256) -> __m256 {
        _mm256_and_ps(v, _mm256_cmp_ps::<_CMP_NEQ_UQ>(mask, _mm256_setzero_ps()))
    }
    #[inline(always)]
    unsafe fn gt_lanes(v: __m256, t: __m256) -> u32 {
        (_mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(v, t)) as u32).count_ones()
    }
    #[inline(always)]
    unsafe fn eq_bits(v: __m256, t: __m256) -> u32 {
        _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(v, t)) as u32
    }
    #[inline(always)]
    unsafe fn count_gt(acc: __m256, v: __m256, t: __m256) -> __m256 {
        let gt = _mm256_cmp_ps::<_CMP_GT_OQ>(v, t);
        _mm256_add_ps(acc, _mm256_and_ps(gt, _mm256_set1_ps(1.0)))
    }
    #[inline(always)]
    unsafe fn gather(p: *const f32, stride: usize) -> __m256 {
        let idx = _mm256_mullo_epi32(
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
            _mm256_set1_epi32(stride as i32),
        );
        _mm256_i32gather_ps::<4>(p, idx)
    }
    #[inline(always)]
    unsafe fn rows_to_cols<E: Elem>(p: *const E, st: usize, c: usize, cols: *mut __m256) {
        // 8 rows of up to 8 columns per pass: one (masked) load per row, then an 8 x 8
        // transpose (unpacks, shuffles, 128-bit permutes: 24 shuffles, no gather).
        let mut h = 0;
        while h < c {
            let w = (c - h).min(8);
            let mut r = [_mm256_setzero_ps(); 8];
            for (l, v) in r.iter_mut().enumerate() {
                let q = p.add(l * st + h);
                // A whole-vector load wherever it stays inside the 8 rows (it ends at or
                // before the end of the last row's c elements), as on the AVX-512 path (there
                // masked loads crossing a cache line made C = 10 3x slower on Zen 4; this
                // path was not timed). The lanes past w are never used.
                // (float32 only: 16-bit rows kept their masked loads, which were faster
                // for them: bf16 / f16 cross_entropy at C = 10 6.1 ms masked, 6.8 ms whole)
                let whole = std::mem::size_of::<E>() == 4 && l * st + h + 8 <= 7 * st + c;
                *v = if w == 8 || whole {
                    E::load::<Self>(q)
                } else {
                    E::load_tail::<Self>(q, w)
                };
            }
            let t = transpose8(r);
            for (j, v) in t.iter().enumerate().take(w) {
                cols.add(h + j).write(*v);
            }
            h += 8;
        }
    }
    #[inline(always)]
    unsafe fn gather_idx(p: *const f32, idx: &[i32; 16]) -> __m256 {
        _mm256_i32gather_ps::<4>(p, _mm256_loadu_si256(idx.as_ptr() as *const __m256i))
    }
    #[inline(always)]
    unsafe fn load_pair_u16<const BF: bool>(p: *const u16) -> (__m256, __m256) {
        let w = _mm256_loadu_si256(p as *const __m256i);
        if BF {
            let hi = _mm256_set1_epi32(0xFFFF_0000_u32 as i32);
            (
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(w)),
                _mm256_castsi256_ps(_mm256_and_si256(w, hi)),
            )
        } else {
            // the low and high halves packed per 128-bit lane (lo 0-3, hi 0-3 | lo 4-7,
            // hi 4-7), then the 64-bit quarters reordered: lo 0-7 | hi 0-7
            let lo = _mm256_and_si256(w, _mm256_set1_epi32(0xFFFF));
            let q = _mm256_permute4x64_epi64::<0xD8>(_mm256_packus_epi32(
                lo,
                _mm256_srli_epi32::<16>(w),
            ));
            (
                _mm256_cvtph_ps(_mm256_castsi256_si128(q)),
                _mm256_cvtph_ps(_mm256_extracti128_si256::<1>(q)),
            )
        }
    }
    #[inline(always)]
    unsafe fn deinterleave2(p: *const f32) -> (__m256, __m256) {
        let (a, b) = (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)));
        // per 128-bit half: rows (0, 1, 4, 5 | 2, 3, 6, 7); then the 64-bit pairs reordered
        // (a macro, not a closure: a closure here would not inherit the caller's target
        // features and would call each intrinsic out of line)
        macro_rules! fix {
            ($v:expr) => {
                _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd($v)))
            };
        }
        (
            fix!(_mm256_shuffle_ps::<0x88>(a, b)),
            fix!(_mm256_shuffle_ps::<0xDD>(a, b)),
        )
    }
    #[inline(always)]
    unsafe fn store_pair(p: *mut f32, a: __m256, b: __m256) {
        // per 128-bit half: (a0 b0 a1 b1 | a4 b4 a5 b5) and (a2 b2 a3 b3 | a6 b6 a7 b7)
        let (l, h) = (_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
        _mm256_storeu_ps(p, _mm256_permute2f128_ps::<0x20>(l, h));
        _mm256_storeu_ps(p.add(8), _mm256_permute2f128_ps::<0x31>(l, h));
    }
    #[inline(always)]
    unsafe fn blend_eq(k: __m256, j: f32, a: __m256, b: __m256) -> __m256 {
        _mm256_blendv_ps(a, b, _mm256_cmp_ps::<_CMP_EQ_OQ>(k, _mm256_set1_ps(j)))
    }
    #[inline(always)]
    unsafe fn targets(
        t: *const i64,
        c: usize,
        stride: usize,
        ignore: i64,
        idx: &mut [i32; 16],
    ) -> (__m256, u32, bool, __m256) {
        let (vc, vi, z) = (
            _mm256_set1_epi64x(c as i64),
            _mm256_set1_epi64x(ignore),
            _mm256_setzero_si256(),
        );
        // Macros, not closures: a closure would not inherit the caller's target features and
        // would call every intrinsic out of line (measured: 40 ns per row at C = 2).
        macro_rules! one {
            ($p:expr) => {{
                let v = _mm256_loadu_si256($p as *const __m256i);
                let ig = _mm256_cmpeq_epi64(v, vi);
                let inr = _mm256_andnot_si256(_mm256_cmpgt_epi64(z, v), _mm256_cmpgt_epi64(vc, v));
                let ok = _mm256_andnot_si256(ig, inr);
                let bad = _mm256_andnot_si256(ig, _mm256_andnot_si256(inr, _mm256_set1_epi64x(-1)));
                (_mm256_and_si256(v, ok), ok, bad)
            }};
        }
        let (v0, ok0, bad0) = one!(t);
        let (v1, ok1, bad1) = one!(t.add(4));
        // low 32 bits of each int64, 8 lanes
        let sel = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
        macro_rules! pack {
            ($a:expr, $b:expr) => {{
                let a = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32($a, sel));
                let b = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32($b, sel));
                _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(a), b)
            }};
        }
        let tt = pack!(v0, v1);
        let okm = pack!(ok0, ok1);
        let base = _mm256_mullo_epi32(
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
            _mm256_set1_epi32(stride as i32),
        );
        _mm256_storeu_si256(idx.as_mut_ptr() as *mut __m256i, _mm256_add_epi32(base, tt));
        let bad = _mm256_movemask_pd(_mm256_castsi256_pd(_mm256_or_si256(bad0, bad1))) != 0;
        let n = (_mm256_movemask_ps(_mm256_castsi256_ps(okm)) as u32).count_ones();
        (
            _mm256_and_ps(_mm256_castsi256_ps(okm), _mm256_set1_ps(1.0)),
            n,
            bad,
            _mm256_cvtepi32_ps(tt),
        )
    }
    #[inline(always)]
    unsafe fn ln_ge1(x: __m256) -> __m256 {
        let xi = _mm256_castps_si256(x);
        let e = _mm256_sub_epi32(_mm256_srli_epi32::<23>(xi), _mm256_set1_epi32(127));
        let m = _mm256_castsi256_ps(_mm256_or_si256(
            _mm256_and_si256(xi, _mm256_set1_epi32(0x007F_FFFF)),
            _mm256_set1_epi32(0x3F80_0000),
        ));
        let big = _mm256_cmp_ps::<_CMP_GT_OQ>(m, _mm256_set1_ps(lnc::SQRT2));
        let m = _mm256_blendv_ps(m, _mm256_mul_ps(m, _mm256_set1_ps(0.5)), big);
        let e = _mm256_cvtepi32_ps(_mm256_sub_epi32(e, _mm256_castps_si256(big)));
        let f = _mm256_sub_ps(m, _mm256_set1_ps(1.0));
        let z = _mm256_div_ps(f, _mm256_add_ps(f, _mm256_set1_ps(2.0)));
        let z2 = _mm256_mul_ps(z, z);
        let mut p = _mm256_set1_ps(lnc::C9);
        p = _mm256_fmadd_ps(p, z2, _mm256_set1_ps(lnc::C7));
        p = _mm256_fmadd_ps(p, z2, _mm256_set1_ps(lnc::C5));
        p = _mm256_fmadd_ps(p, z2, _mm256_set1_ps(lnc::C3));
        p = _mm256_fmadd_ps(p, z2, _mm256_set1_ps(1.0));
        let r = _mm256_mul_ps(_mm256_add_ps(z, z), p);
        _mm256_fmadd_ps(e, _mm256_set1_ps(lnc::LN2), r)
    }
}

/// Transposes 8 rows of 8 f32 into 8 columns.
#[inline(always)]
unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    let mut t = [_mm256_setzero_ps(); 8];
    for i in 0..4 {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // u[4g + k]: column k (and k + 4 in the high half) of rows 4g..4g+4
    let mut u = [_mm256_setzero_ps(); 8];
    for g in 0..2 {
        u[4 * g] = _mm256_shuffle_ps::<0x44>(t[4 * g], t[4 * g + 2]);
        u[4 * g + 1] = _mm256_shuffle_ps::<0xEE>(t[4 * g], t[4 * g + 2]);
        u[4 * g + 2] = _mm256_shuffle_ps::<0x44>(t[4 * g + 1], t[4 * g + 3]);
        u[4 * g + 3] = _mm256_shuffle_ps::<0xEE>(t[4 * g + 1], t[4 * g + 3]);
    }
    let mut out = [_mm256_setzero_ps(); 8];
    for k in 0..4 {
        out[k] = _mm256_permute2f128_ps::<0x20>(u[k], u[4 + k]);
        out[k + 4] = _mm256_permute2f128_ps::<0x31>(u[k], u[4 + k]);
    }
    out
}
