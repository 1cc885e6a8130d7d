//! Runtime-dispatched SIMD.
//!
//! Kernels are written once, generic over [`Isa`] (a vector of f32 lanes and the handful of
//! operations the kernels need) and [`Elem`] (how a storage type widens to f32 lanes). Each
//! instruction set instantiates them inside a `#[target_feature]` function, so the generic
//! `#[inline(always)]` code and the intrinsics it calls are compiled for that instruction set.
//! The path is chosen once (CPU detection, overridable by `FASTNLL_SIMD`) and can be forced
//! per call for tests.

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512;
#[cfg(target_arch = "aarch64")]
pub(crate) mod neon;
pub(crate) mod scalar;

use std::sync::atomic::{AtomicU8, Ordering};

/// The instruction set a kernel runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    Scalar,
    Avx2,
    Avx512,
    Neon,
}

impl Path {
    /// Every path, available here or not.
    pub const ALL: [Path; 4] = [Path::Scalar, Path::Avx2, Path::Avx512, Path::Neon];

    pub fn name(self) -> &'static str {
        match self {
            Path::Scalar => "scalar",
            Path::Avx2 => "avx2",
            Path::Avx512 => "avx512",
            Path::Neon => "neon",
        }
    }

    pub fn parse(s: &str) -> Option<Path> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" => Some(Path::Scalar),
            "avx2" => Some(Path::Avx2),
            "avx512" => Some(Path::Avx512),
            "neon" => Some(Path::Neon),
            _ => None,
        }
    }

    /// Whether this CPU can run the path.
    pub fn available(self) -> bool {
        match self {
            Path::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
                    && is_x86_feature_detected!("popcnt")
            }
            #[cfg(target_arch = "x86_64")]
            Path::Avx512 => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512dq")
                    && Path::Avx2.available()
            }
            #[cfg(target_arch = "aarch64")]
            Path::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The best path this CPU has.
    pub fn best() -> Path {
        [Path::Avx512, Path::Avx2, Path::Neon]
            .into_iter()
            .find(|p| p.available())
            .unwrap_or(Path::Scalar)
    }
}

const UNSET: u8 = 0;
static CURRENT: AtomicU8 = AtomicU8::new(UNSET);

fn encode(p: Path) -> u8 {
    match p {
        Path::Scalar => 1,
        Path::Avx2 => 2,
        Path::Avx512 => 3,
        Path::Neon => 4,
    }
}

fn decode(v: u8) -> Path {
    match v {
        2 => Path::Avx2,
        3 => Path::Avx512,
        4 => Path::Neon,
        _ => Path::Scalar,
    }
}

/// The path in use: `FASTNLL_SIMD` if set to an available path, else the best one.
/// An unknown or unavailable `FASTNLL_SIMD` falls back to the best path (see [`path_from_env`]).
pub fn current() -> Path {
    let v = CURRENT.load(Ordering::Relaxed);
    if v != UNSET {
        return decode(v);
    }
    let p = path_from_env().unwrap_or_else(|_| Path::best());
    CURRENT.store(encode(p), Ordering::Relaxed);
    p
}

/// Reads `FASTNLL_SIMD`; Err names a value that is unknown or not available on this CPU.
pub fn path_from_env() -> Result<Path, String> {
    match std::env::var("FASTNLL_SIMD") {
        Err(_) => Ok(Path::best()),
        Ok(s) if s.trim().is_empty() || s.trim() == "auto" => Ok(Path::best()),
        Ok(s) => match Path::parse(&s) {
            Some(p) if p.available() => Ok(p),
            Some(p) => Err(format!(
                "FASTNLL_SIMD={} is not supported by this CPU",
                p.name()
            )),
            None => Err(format!(
                "FASTNLL_SIMD={s:?} is not one of scalar, avx2, avx512, neon, auto"
            )),
        },
    }
}

/// Forces a path for the whole process. Returns false (and changes nothing) if unavailable.
pub fn set_path(p: Path) -> bool {
    if !p.available() {
        return false;
    }
    CURRENT.store(encode(p), Ordering::Relaxed);
    true
}

/// How the rows of a short-row block (C <= `kernel::LANES_MAX_C`) reach the SIMD lanes.
///
/// `Gather` reads each column of W rows with one gather; `Transpose` copies W rows into a
/// small column-major tile first (or reads a column-major input in place) and loads columns
/// with plain vector loads. Gathers are fast on Intel's cores and microcoded on AMD's (Zen 4
/// runs the gather kernels at a quarter of bandwidth), so the default is chosen per CPU
/// vendor; `FASTNLL_SHORT=gather|transpose` forces one, and the tests run both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Short {
    Gather,
    Transpose,
}

impl Short {
    pub const ALL: [Short; 2] = [Short::Gather, Short::Transpose];

    pub fn name(self) -> &'static str {
        match self {
            Short::Gather => "gather",
            Short::Transpose => "transpose",
        }
    }

    pub fn parse(s: &str) -> Option<Short> {
        match s.trim().to_ascii_lowercase().as_str() {
            "gather" => Some(Short::Gather),
            "transpose" => Some(Short::Transpose),
            _ => None,
        }
    }

    /// The scheme for this CPU: gathers on Intel (and anything not AMD), transposes on AMD.
    pub fn detect() -> Short {
        if cpu_vendor() == "AuthenticAMD" {
            Short::Transpose
        } else {
            Short::Gather
        }
    }
}

/// The CPUID vendor string ("GenuineIntel", "AuthenticAMD", ...), or "" off x86.
pub fn cpu_vendor() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        // CPUID leaf 0 (the vendor) exists on every x86-64 CPU.
        let r = std::arch::x86_64::__cpuid(0);
        let mut v = Vec::with_capacity(12);
        for w in [r.ebx, r.edx, r.ecx] {
            v.extend_from_slice(&w.to_le_bytes());
        }
        String::from_utf8_lossy(&v).into_owned()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        String::new()
    }
}

static SHORT: AtomicU8 = AtomicU8::new(UNSET);

/// The short-row scheme in use: `FASTNLL_SHORT` if set to a known scheme, else [`Short::detect`].
pub fn short_scheme() -> Short {
    match SHORT.load(Ordering::Relaxed) {
        1 => Short::Gather,
        2 => Short::Transpose,
        _ => {
            let s = std::env::var("FASTNLL_SHORT")
                .ok()
                .and_then(|v| Short::parse(&v))
                .unwrap_or_else(Short::detect);
            set_short_scheme(s);
            s
        }
    }
}

/// Forces the short-row scheme for the whole process.
pub fn set_short_scheme(s: Short) {
    let v = match s {
        Short::Gather => 1,
        Short::Transpose => 2,
    };
    SHORT.store(v, Ordering::Relaxed);
}

/// A vector of f32 lanes. All methods are `unsafe` because they may only run on a CPU that has
/// the instruction set; pointer arguments must be valid for `W` elements.
pub(crate) trait Isa: Copy {
    type V: Copy;
    const W: usize;
    unsafe fn splat(x: f32) -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    unsafe fn load_f16(p: *const u16) -> Self::V;
    unsafe fn load_bf16(p: *const u16) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    /// Hints that the cache line at `p` will be read soon (never faults, any address).
    unsafe fn prefetch(p: *const u8);
    /// The first n < W lanes from p, the others -inf (masked: nothing past p + n is read).
    unsafe fn load_tail(p: *const f32, n: usize) -> Self::V;
    /// Stores the first n < W lanes at p (nothing past p + n is written).
    unsafe fn store_tail(p: *mut f32, v: Self::V, n: usize);
    /// The first n < W 16-bit values from p (nothing past p + n is read), the other lanes
    /// `fill`, widened as bfloat16 (`BF`) or float16. This default copies them through a
    /// buffer; AVX-512 loads them masked (the buffer's narrow stores and wide load had made
    /// the transposes of 16-bit rows of 10 classes 1.6x slower per row than float32's).
    #[inline(always)]
    unsafe fn load_tail_u16<const BF: bool>(p: *const u16, n: usize, fill: u16) -> Self::V {
        let mut buf = [fill; 16];
        for (k, b) in buf.iter_mut().enumerate().take(n) {
            *b = *p.add(k);
        }
        if BF {
            Self::load_bf16(buf.as_ptr())
        } else {
            Self::load_f16(buf.as_ptr())
        }
    }
    /// The two columns of W packed rows of two 16-bit values at p (2·W values), widened as
    /// bfloat16 (`BF`) or float16. This default copies each column through a buffer; the x86
    /// paths split one wide load (value 2l is the low half of 32-bit lane l).
    #[inline(always)]
    unsafe fn load_pair_u16<const BF: bool>(p: *const u16) -> (Self::V, Self::V) {
        let (mut a, mut b) = ([0u16; 16], [0u16; 16]);
        for l in 0..Self::W {
            (a[l], b[l]) = (*p.add(2 * l), *p.add(2 * l + 1));
        }
        if BF {
            (Self::load_bf16(a.as_ptr()), Self::load_bf16(b.as_ptr()))
        } else {
            (Self::load_f16(a.as_ptr()), Self::load_f16(b.as_ptr()))
        }
    }
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    /// a / b, correctly rounded.
    unsafe fn div(a: Self::V, b: Self::V) -> Self::V;
    /// a * b + c
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// Lane-wise maximum that ignores a NaN in `b` (returns `a` there).
    unsafe fn max_ignore_nan(a: Self::V, b: Self::V) -> Self::V;
    /// Lane-wise maximum that returns `b` where `b` is NaN.
    unsafe fn max_keep_nan(a: Self::V, b: Self::V) -> Self::V;
    /// exp(x) for x <= 0, -inf and NaN (NaN propagates); about 1 ulp.
    unsafe fn exp_le0(x: Self::V) -> Self::V;
    /// exp(x) for x in [LO, 0] or NaN (NaN propagates): the caller clamped x to LO.
    unsafe fn exp_clamped(x: Self::V) -> Self::V;
    /// exp(x) for x <= 0 when the result only feeds a sum: like `exp_le0`, but below
    /// exp(LO) ~ 1.6e-38 it returns exp(LO) instead of 0 (two operations fewer).
    #[inline(always)]
    unsafe fn exp_sum(x: Self::V) -> Self::V {
        Self::exp_clamped(Self::max_keep_nan(Self::splat(expc::LO), x))
    }
    /// 2^t for t <= 0 (or a little above), -inf (0) and NaN (NaN propagates), when the result
    /// only feeds a sum: about 1 ulp, but below 2^-126 it may return any value in [0, 2^-126).
    /// Callers fold the shift into one fma, t = x·log2(e) - m·log2(e), and correct the
    /// rounding of m·log2(e) once per block (see `kernel::stats`).
    unsafe fn exp2_sum(t: Self::V) -> Self::V;
    /// |v| (NaN stays NaN).
    unsafe fn abs(v: Self::V) -> Self::V;
    /// Whether |v| < b in every lane (false where v is NaN); b > 0.
    unsafe fn all_abs_below(v: Self::V, b: f32) -> bool;
    /// `one` in the lanes where |v| < b (not where v is NaN), else 0.
    unsafe fn ok_abs_below(v: Self::V, b: f32, one: Self::V) -> Self::V;
    unsafe fn hsum(v: Self::V) -> f32;
    unsafe fn hmax(v: Self::V) -> f32;
    /// v where mask != 0, else 0 (also where v is NaN or inf).
    unsafe fn zero_where_zero(mask: Self::V, v: Self::V) -> Self::V;
    /// acc + 1 in the lanes where v > t (false for NaN): a per-lane count kept in f32.
    unsafe fn count_gt(acc: Self::V, v: Self::V, t: Self::V) -> Self::V;
    /// The number of lanes where v > t (false for NaN), counted on the integer side: the
    /// long-row sweeps are bound by the vector pipes, which this leaves alone.
    unsafe fn gt_lanes(v: Self::V, t: Self::V) -> u32;
    /// Bit l set where lane l of v equals t (false for NaN).
    unsafe fn eq_bits(v: Self::V, t: Self::V) -> u32;
    /// Lane l = p[l * stride] for l < W (a column of W rows).
    unsafe fn gather(p: *const f32, stride: usize) -> Self::V;
    /// The first `c` (<= 32) columns of W rows, row l at `p + l·st`, into `cols[0..c]`.
    /// This default gathers each column; the x86 paths override it with contiguous row loads
    /// and an in-register transpose (the `Short::Transpose` scheme: no gather instruction).
    #[inline(always)]
    unsafe fn rows_to_cols<E: Elem>(p: *const E, st: usize, c: usize, cols: *mut Self::V) {
        for j in 0..c {
            cols.add(j).write(E::load_col::<Self>(p.add(j), st));
        }
    }
    /// Lane l = p[idx[l]] for l < W.
    unsafe fn gather_idx(p: *const f32, idx: &[i32; 16]) -> Self::V;
    /// (p[2l], p[2l + 1]) for l < W: the two columns of W packed rows of 2 (reads 2W values).
    unsafe fn deinterleave2(p: *const f32) -> (Self::V, Self::V);
    /// Stores a, b interleaved: p[2l] = a[l], p[2l + 1] = b[l] for l < W (the inverse of
    /// `deinterleave2`: two columns back into W packed rows of 2).
    unsafe fn store_pair(p: *mut f32, a: Self::V, b: Self::V);
    /// Lane l = b[l] where k[l] == j, else a[l] (a column-major row block picks each lane's
    /// target column with one compare and one blend per column: no gather).
    unsafe fn blend_eq(k: Self::V, j: f32, a: Self::V, b: Self::V) -> Self::V;
    /// W int64 class targets at `t`: writes idx[l] = l*stride + t_l (l*stride where t_l is
    /// ignored or out of range); returns the 0/1 vector of scored lanes, their number, whether
    /// a target other than `ignore` is outside [0, c), and the lanes' classes as f32 (0 where
    /// not scored).
    unsafe fn targets(
        t: *const i64,
        c: usize,
        stride: usize,
        ignore: i64,
        idx: &mut [i32; 16],
    ) -> (Self::V, u32, bool, Self::V);
    /// ln(x) for finite x >= 1 (the exp-sums of shifted rows); about 1 ulp.
    unsafe fn ln_ge1(x: Self::V) -> Self::V;
}

/// Constants of the vector log: ln m = 2·atanh(z), z = (m-1)/(m+1), m in [√½, √2).
pub(crate) mod lnc {
    pub const SQRT2: f32 = std::f32::consts::SQRT_2;
    pub const LN2: f32 = std::f32::consts::LN_2;
    pub const C9: f32 = 1.0 / 9.0;
    pub const C7: f32 = 1.0 / 7.0;
    pub const C5: f32 = 1.0 / 5.0;
    pub const C3: f32 = 1.0 / 3.0;
}

/// Constants of the reduced-range exp shared by every path, so all paths agree closely.
pub(crate) mod expc {
    pub const LO: f32 = -87.0; // below: exp is < 1.7e-38 and is returned as 0
    pub const LOG2E: f32 = std::f32::consts::LOG2_E;
    pub const LN2_HI: f32 = 0.693_145_75;
    pub const LN2_LO: f32 = 1.428_606_8e-6;
    // Taylor coefficients 1/k! for k = 7..2; |r| <= ln2/2 keeps the truncation below 1e-8.
    pub const C7: f32 = 1.0 / 5040.0;
    pub const C6: f32 = 1.0 / 720.0;
    pub const C5: f32 = 1.0 / 120.0;
    pub const C4: f32 = 1.0 / 24.0;
    pub const C3: f32 = 1.0 / 6.0;
    pub const C2: f32 = 0.5;
}

/// Constants of the base-2 exp for sums: 2^t = 2^floor(t) · p(t - floor(t)), with p a
/// near-minimax degree-6 polynomial for 2^f on [0, 1) (relative error 1.1e-8 with these f32
/// coefficients, fitted for fastnll; see `exp2_poly_accuracy` in the tests).
pub(crate) mod exp2c {
    pub const LOG2E: f32 = std::f32::consts::LOG2_E;
    pub const INV_LOG2E: f64 = 1.0 / LOG2E as f64;
    /// The clamp of t where a sum needs e·t finite: LO in base 2.
    pub const LO2: f32 = super::expc::LO * LOG2E;
    /// Shifts m with |m| >= BIG take the float64 path: below it |m·log2(e)| < 2^31, so its
    /// f32 rounding k is at most 64 and 2^±k stays well inside f32's range.
    pub const BIG: f32 = (1u32 << 30) as f32;
    #[allow(clippy::approx_constant)] // P[1] is a fitted coefficient, not ln 2
    pub const P: [f32; 7] = [
        1.0,
        0.693_147,
        0.240_229_86,
        0.055_483_23,
        0.009_679_067,
        0.001_243_760_5,
        0.000_217_094_03,
    ];
}

/// A storage type the kernels read: f32 directly, half types widened in registers.
pub(crate) trait Elem: Copy + Send + Sync + 'static {
    /// The value used to pad a partial vector so it changes no max, exp-sum or count.
    const NEG_INF: Self;
    /// Zero (the padding of probabilities rows).
    const ZERO: Self;
    unsafe fn load<I: Isa>(p: *const Self) -> I::V;
    fn to_f32(self) -> f32;
    /// The first n < I::W elements from p, widened, the other lanes -inf.
    #[inline(always)]
    unsafe fn load_tail<I: Isa>(p: *const Self, n: usize) -> I::V {
        let mut buf = [Self::NEG_INF; 16];
        for (k, b) in buf.iter_mut().enumerate().take(n) {
            *b = *p.add(k);
        }
        Self::load::<I>(buf.as_ptr())
    }
    /// Lane l = p[l * stride] for l < I::W, widened.
    #[inline(always)]
    unsafe fn load_col<I: Isa>(p: *const Self, stride: usize) -> I::V {
        let mut buf = [Self::NEG_INF; 16];
        for (l, b) in buf.iter_mut().enumerate().take(I::W) {
            *b = *p.add(l * stride);
        }
        Self::load::<I>(buf.as_ptr())
    }
    /// The two columns of I::W packed rows of 2, widened.
    #[inline(always)]
    unsafe fn load_pair<I: Isa>(p: *const Self) -> (I::V, I::V) {
        (Self::load_col::<I>(p, 2), Self::load_col::<I>(p.add(1), 2))
    }
    /// Lane l = p[idx[l]] for l < I::W, widened.
    #[inline(always)]
    unsafe fn load_idx<I: Isa>(p: *const Self, idx: &[i32; 16]) -> I::V {
        let mut buf = [Self::NEG_INF; 16];
        for (b, &k) in buf.iter_mut().zip(idx).take(I::W) {
            *b = *p.add(k as usize);
        }
        Self::load::<I>(buf.as_ptr())
    }
}

/// IEEE binary16 bits.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(transparent)]
pub struct F16(pub u16);

/// bfloat16 bits (the upper half of an f32).
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(transparent)]
pub struct BF16(pub u16);

impl Elem for f32 {
    const NEG_INF: f32 = f32::NEG_INFINITY;
    const ZERO: f32 = 0.0;
    #[inline(always)]
    unsafe fn load<I: Isa>(p: *const f32) -> I::V {
        I::load(p)
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    unsafe fn load_tail<I: Isa>(p: *const f32, n: usize) -> I::V {
        I::load_tail(p, n)
    }
    #[inline(always)]
    unsafe fn load_col<I: Isa>(p: *const f32, stride: usize) -> I::V {
        I::gather(p, stride)
    }
    #[inline(always)]
    unsafe fn load_pair<I: Isa>(p: *const f32) -> (I::V, I::V) {
        I::deinterleave2(p)
    }
    #[inline(always)]
    unsafe fn load_idx<I: Isa>(p: *const f32, idx: &[i32; 16]) -> I::V {
        I::gather_idx(p, idx)
    }
}

impl Elem for F16 {
    const NEG_INF: F16 = F16(0xFC00);
    const ZERO: F16 = F16(0);
    #[inline(always)]
    unsafe fn load<I: Isa>(p: *const F16) -> I::V {
        I::load_f16(p as *const u16)
    }
    #[inline(always)]
    unsafe fn load_tail<I: Isa>(p: *const F16, n: usize) -> I::V {
        I::load_tail_u16::<false>(p as *const u16, n, Self::NEG_INF.0)
    }
    #[inline(always)]
    unsafe fn load_pair<I: Isa>(p: *const F16) -> (I::V, I::V) {
        I::load_pair_u16::<false>(p as *const u16)
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        half::f16::from_bits(self.0).to_f32()
    }
}

impl Elem for BF16 {
    const NEG_INF: BF16 = BF16(0xFF80);
    const ZERO: BF16 = BF16(0);
    #[inline(always)]
    unsafe fn load<I: Isa>(p: *const BF16) -> I::V {
        I::load_bf16(p as *const u16)
    }
    #[inline(always)]
    unsafe fn load_tail<I: Isa>(p: *const BF16, n: usize) -> I::V {
        I::load_tail_u16::<true>(p as *const u16, n, Self::NEG_INF.0)
    }
    #[inline(always)]
    unsafe fn load_pair<I: Isa>(p: *const BF16) -> (I::V, I::V) {
        I::load_pair_u16::<true>(p as *const u16)
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits((self.0 as u32) << 16)
    }
}
