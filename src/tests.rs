//! Core tests: every kernel on every SIMD path this CPU has, against float64 references
//! written here (plain loops with libm exp), over all tail lengths and magnitudes.
#![allow(clippy::float_cmp)] // the tests check bit-exact results on purpose

use crate::eval::{compare, evaluate, EvalOptions, Kind};
use crate::loss::{bce_with_logits, cross_entropy, cross_entropy_soft, nll_loss, ClassOptions};
use crate::simd::{self, Path, BF16, F16};
use crate::softmax::{logsumexp, softmax_f32, stream_sum};
use crate::tensor::{IntView, View};
use crate::Error;
use std::sync::{Mutex, PoisonError};

/// Tests switch the process-wide path; run them one at a time.
static PATH_LOCK: Mutex<()> = Mutex::new(());

/// Every path this CPU has, or only `FASTNLL_SIMD`'s when it is set (valgrind runs pin a path
/// it can decode).
fn paths() -> Vec<Path> {
    if let Some(p) = std::env::var("FASTNLL_SIMD")
        .ok()
        .and_then(|v| Path::parse(&v))
    {
        return vec![p].into_iter().filter(|p| p.available()).collect();
    }
    Path::ALL.into_iter().filter(|p| p.available()).collect()
}

/// Runs `f` on every SIMD path, each with every short-row scheme (gathers and transposes).
pub(crate) fn on_each_path(mut f: impl FnMut(Path)) {
    let _g = PATH_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    for p in paths() {
        assert!(simd::set_path(p));
        for s in simd::Short::ALL {
            simd::set_short_scheme(s);
            f(p);
        }
    }
    simd::set_path(simd::path_from_env().unwrap_or_else(|_| Path::best()));
    simd::set_short_scheme(simd::Short::detect());
}

/// A small deterministic generator (xorshift), so tests need no extra crate.
pub(crate) struct Rng(pub u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub(crate) fn normal(&mut self) -> f64 {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        let v = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        (-2.0 * (u + 1e-300).ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn ref_lse(row: &[f64]) -> f64 {
    let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !m.is_finite() {
        return m;
    }
    m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
}

pub(crate) fn close(got: f64, want: f64, rtol: f64, atol: f64) -> bool {
    (got.is_nan() && want.is_nan()) || got == want || (got - want).abs() <= atol + rtol * want.abs()
}

/// Asserts that `out[r]` is the float64 logsumexp of row r of `data` (rows of c) within the
/// f32 bound (rtol 2e-6, atol 2e-5).
fn assert_lse_rows(data: &[f32], c: usize, out: &[f32], what: &str) {
    for (r, &got) in out.iter().enumerate() {
        let row: Vec<f64> = data[r * c..(r + 1) * c].iter().map(|&x| x as f64).collect();
        let want = ref_lse(&row);
        assert!(
            close(got as f64, want, 2e-6, 2e-5),
            "{what} row {r}: lse {got} vs {want}"
        );
    }
}

#[test]
fn scalar_exp_matches_libm() {
    on_each_path(|p| {
        let xs: Vec<f32> = (0..20000).map(|i| -(i as f32) * 0.0045).collect();
        for &x in &xs {
            let got = simd::scalar::exp_le0(x) as f64;
            let want = (x as f64).exp();
            assert!(
                close(got, want, 3e-7, 1e-37),
                "{p:?} exp({x}) = {got}, want {want}"
            );
        }
    });
}

#[test]
fn exp2_poly_accuracy() {
    // The sums' 2^t on every path: within 1.5e-7 relative (about 1 ulp after rounding) down
    // to 2^-126, below it anything in [0, 2^-126), 0 or tiny for -inf, NaN kept.
    let mut t: Vec<f32> = (0..=263_000).map(|i| 0.5 - i as f32 * 0.0005).collect();
    t.extend([
        0.0,
        -0.0,
        -1.0,
        -126.0,
        -200.0,
        -1e30,
        f32::NEG_INFINITY,
        f32::NAN,
    ]);
    on_each_path(|p| {
        let mut out = vec![f32::NAN; t.len()];
        crate::kernel::exp2_sum_each::<f32>(p, &t, &mut out);
        for (&ti, &got) in t.iter().zip(&out) {
            let want = (ti as f64).exp2();
            if ti.is_nan() {
                assert!(got.is_nan(), "{p:?} 2^NaN = {got}");
            } else if ti >= -126.0 {
                let rel = (got as f64 - want).abs() / want;
                assert!(
                    rel <= 1.5e-7,
                    "{p:?} 2^{ti} = {got}, want {want} (rel {rel:e})"
                );
            } else {
                assert!(
                    (0.0..=f32::MIN_POSITIVE).contains(&got),
                    "{p:?} 2^{ti} = {got}"
                );
            }
        }
    });
}

#[test]
fn huge_offsets_take_the_wide_path() {
    // |max| >= 2^30 leaves the f32 sweep (its shift's rounding would leave f32's range):
    // every kernel (lanes, grouped rows, row kernel, cross-entropy) must still be right.
    let mut rng = Rng(11);
    on_each_path(|p| {
        for c in [1, 2, 7, 32, 33, 100, 5000] {
            for (offset, spread) in [
                (1e8f64, 1.0f64),
                (1.2e9, 1.0),
                (-1.2e9, 300.0),
                (1e12, 1e6),
                (-1e30, 1e29),
                (1e30, 1e29),
                (3e38, 1e37),
            ] {
                let rows = 20;
                let data: Vec<f32> = (0..rows * c)
                    .map(|_| (offset + rng.normal() * spread) as f32)
                    .collect();
                let v = View::from_slice(&data, rows, c);
                let mut out = vec![0f32; rows];
                logsumexp(&v, &mut out).unwrap();
                let t: Vec<i64> = (0..rows).map(|r| (r % c) as i64).collect();
                let mut ce = vec![0f32; rows];
                let tv = IntView::from_slice(&t);
                cross_entropy::<f32>(&v, &tv, &ClassOptions::default(), Some(&mut ce)).unwrap();
                assert_lse_rows(&data, c, &out, &format!("{p:?} C={c} offset={offset}"));
                for r in 0..rows {
                    let row: Vec<f64> =
                        data[r * c..(r + 1) * c].iter().map(|&x| x as f64).collect();
                    let want = ref_lse(&row);
                    let want_ce = want - row[t[r] as usize];
                    assert!(
                        close(ce[r] as f64, want_ce, 2e-6, 2e-5 + 1e-7 * want.abs()),
                        "{p:?} C={c} offset={offset}: ce {} vs {want_ce}",
                        ce[r]
                    );
                }
            }
        }
    });
}

#[test]
fn logsumexp_all_lengths_and_magnitudes() {
    let mut rng = Rng(7);
    on_each_path(|p| {
        for c in (0..70).chain([127, 128, 129, 4095, 4096, 4097, 9000, 140_000]) {
            for scale in [1.0, 1e3, 1e6] {
                let rows = 3;
                let data: Vec<f32> = (0..rows * c)
                    .map(|_| (rng.normal() * scale) as f32)
                    .collect();
                let v = View::from_slice(&data, rows, c);
                let mut out = vec![0f32; rows];
                logsumexp(&v, &mut out).unwrap();
                assert_lse_rows(&data, c, &out, &format!("{p:?} C={c} scale={scale}"));
            }
        }
    });
}

#[test]
fn half_types_widen_exactly() {
    let mut rng = Rng(11);
    on_each_path(|p| {
        for c in [1, 7, 8, 15, 16, 17, 33, 1000] {
            let f: Vec<f32> = (0..c).map(|_| (rng.normal() * 4.0) as f32).collect();
            let h: Vec<F16> = f
                .iter()
                .map(|&x| F16(half::f16::from_f32(x).to_bits()))
                .collect();
            let b: Vec<BF16> = f
                .iter()
                .map(|&x| BF16(half::bf16::from_f32(x).to_bits()))
                .collect();
            let hf: Vec<f64> = h
                .iter()
                .map(|v| half::f16::from_bits(v.0).to_f64())
                .collect();
            let bf: Vec<f64> = b
                .iter()
                .map(|v| half::bf16::from_bits(v.0).to_f64())
                .collect();
            let mut o = [0f32; 1];
            logsumexp(&View::from_slice(&h, 1, c), &mut o).unwrap();
            assert!(
                close(o[0] as f64, ref_lse(&hf), 2e-6, 2e-5),
                "{p:?} f16 C={c}"
            );
            logsumexp(&View::from_slice(&b, 1, c), &mut o).unwrap();
            assert!(
                close(o[0] as f64, ref_lse(&bf), 2e-6, 2e-5),
                "{p:?} bf16 C={c}"
            );
        }
    });
}

/// A partial vector of float16 / bfloat16 values (`Elem::load_tail`, masked on AVX-512):
/// the first n lanes widened exactly, the others -inf, for every n below the path's width.
#[test]
fn half_tails_widen_exactly_and_pad_with_minus_inf() {
    let bits: Vec<u16> = (0..16u16).map(|k| 0x3c00 ^ (k * 0x0937)).collect();
    let h: Vec<F16> = bits.iter().map(|&b| F16(b)).collect();
    let bf: Vec<BF16> = bits.iter().map(|&b| BF16(b)).collect();
    let check = |p: Path, bf16: bool, w: usize, out: &[f32]| {
        for n in 0..w {
            for l in 0..w {
                let got = out[n * w + l];
                let want = match (l < n, bf16) {
                    (false, _) => f32::NEG_INFINITY,
                    (true, false) => half::f16::from_bits(bits[l]).to_f32(),
                    (true, true) => half::bf16::from_bits(bits[l]).to_f32(),
                };
                assert!(
                    got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                    "{p:?} bf16={bf16} n={n} lane {l}: {got:e}, want {want:e}"
                );
            }
        }
    };
    on_each_path(|p| {
        let mut out = vec![0f32; 256];
        let w = crate::kernel::widen_tails::<F16>(p, &h, &mut out);
        check(p, false, w, &out);
        let w = crate::kernel::widen_tails::<BF16>(p, &bf, &mut out);
        check(p, true, w, &out);
    });
}

/// Packed rows of two float16 / bfloat16 values split into their two columns
/// (`Elem::load_pair`: one wide load split on x86) widen exactly, every bit pattern, on every
/// path.
#[test]
fn half_pairs_split_and_widen_exactly() {
    let bits: Vec<u16> = (0..=u16::MAX).collect();
    let h: Vec<F16> = bits.iter().map(|&b| F16(b)).collect();
    let bf: Vec<BF16> = bits.iter().map(|&b| BF16(b)).collect();
    let same =
        |got: f32, want: f32| got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan());
    on_each_path(|p| {
        let mut out = [0f32; 32];
        // W, then every pattern in blocks of 2·W (65,536 is a multiple of every 2·W)
        let w0 = crate::kernel::widen_pairs::<F16>(p, &h, &mut out);
        for i in (0..bits.len()).step_by(2 * w0) {
            let w = crate::kernel::widen_pairs::<F16>(p, &h[i..], &mut out);
            for l in 0..2 * w {
                let b = bits[i + 2 * (l % w) + l / w];
                let want = half::f16::from_bits(b).to_f32();
                assert!(same(out[l], want), "{p:?} f16 {b:#06x}: {}", out[l]);
            }
            let w = crate::kernel::widen_pairs::<BF16>(p, &bf[i..], &mut out);
            for l in 0..2 * w {
                let b = bits[i + 2 * (l % w) + l / w];
                let want = half::bf16::from_bits(b).to_f32();
                assert!(same(out[l], want), "{p:?} bf16 {b:#06x}: {}", out[l]);
            }
        }
    });
}

#[test]
fn every_half_bit_pattern_widens_exactly() {
    // all 65,536 float16 and bfloat16 values (zeros, subnormals, inf, NaN) through each path's
    // vector load, against the half crate's conversion
    let bits: Vec<u16> = (0..=u16::MAX).collect();
    let h: Vec<F16> = bits.iter().map(|&b| F16(b)).collect();
    let bf: Vec<BF16> = bits.iter().map(|&b| BF16(b)).collect();
    on_each_path(|p| {
        let mut out = vec![0f32; bits.len()];
        crate::kernel::widen::<F16>(p, &h, &mut out);
        for (&b, &got) in bits.iter().zip(&out) {
            let want = half::f16::from_bits(b).to_f32();
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{p:?} f16 {b:#06x}: {got:e}, want {want:e}"
            );
        }
        crate::kernel::widen::<BF16>(p, &bf, &mut out);
        for (&b, &got) in bits.iter().zip(&out) {
            let want = half::bf16::from_bits(b).to_f32();
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{p:?} bf16 {b:#06x}: {got:e}, want {want:e}"
            );
        }
    });
}

#[test]
fn nonfinite_policy() {
    let inf = f32::INFINITY;
    let nan = f32::NAN;
    let rows: Vec<Vec<f32>> = vec![
        vec![1.0, inf, 2.0],
        vec![-inf, -inf, -inf],
        vec![nan, 1.0, 2.0],
        vec![-inf, nan, -inf],
        vec![inf, nan, 0.0],
        vec![-inf, 3.0, -inf],
    ];
    let want = [
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        f64::NAN,
        f64::NAN,
        3.0,
    ];
    on_each_path(|p| {
        for (row, &w) in rows.iter().zip(&want) {
            // pad to several lengths so the special values land in tails and full vectors
            for pad in [0usize, 5, 16, 40, 5000] {
                let mut r = row.clone();
                r.extend(std::iter::repeat_n(-inf, pad));
                let mut o = [0f32; 1];
                logsumexp(&View::from_slice(&r, 1, r.len()), &mut o).unwrap();
                assert!(
                    close(o[0] as f64, w, 1e-6, 1e-6),
                    "{p:?} {row:?}+{pad}: {}",
                    o[0]
                );
            }
        }
    });
}

#[test]
fn cross_entropy_matches_reference_with_options() {
    let mut rng = Rng(3);
    on_each_path(|p| {
        for c in [1, 2, 3, 10, 17, 64, 1000] {
            let n = 50;
            let x: Vec<f32> = (0..n * c).map(|_| (rng.normal() * 3.0) as f32).collect();
            let t: Vec<i64> = (0..n)
                .map(|i| {
                    if i % 7 == 3 {
                        -100
                    } else {
                        rng.below(c) as i64
                    }
                })
                .collect();
            let w: Vec<f64> = (0..c).map(|k| 0.5 + k as f64 * 0.1).collect();
            for (eps, weight) in [
                (0.0, None),
                (0.1, None),
                (0.0, Some(&w[..])),
                (0.2, Some(&w[..])),
            ] {
                let opt = ClassOptions {
                    weight,
                    ignore_index: -100,
                    label_smoothing: eps,
                };
                let v = View::from_slice(&x, n, c);
                let mut out = vec![0f32; n];
                let tot =
                    cross_entropy(&v, &IntView::from_slice(&t), &opt, Some(&mut out)).unwrap();
                let (mut s, mut ws) = (0.0, 0.0);
                for i in 0..n {
                    let row: Vec<f64> = x[i * c..(i + 1) * c].iter().map(|&v| v as f64).collect();
                    let lse = ref_lse(&row);
                    let want = if t[i] == -100 {
                        0.0
                    } else {
                        let k = t[i] as usize;
                        let wt = |j: usize| weight.map_or(1.0, |w| w[j]);
                        let smooth: f64 = (0..c).map(|j| wt(j) * (lse - row[j])).sum();
                        ws += wt(k);
                        (1.0 - eps) * wt(k) * (lse - row[k]) + eps / c as f64 * smooth
                    };
                    s += want;
                    assert!(
                        close(out[i] as f64, want, 2e-6, 2e-5),
                        "{p:?} C={c} eps={eps} row {i}"
                    );
                }
                assert!(close(tot.sum, s, 1e-6, 1e-4) && close(tot.weight, ws, 1e-12, 0.0));
            }
        }
    });
}

#[test]
fn nll_soft_and_bce() {
    let x: Vec<f32> = vec![-0.5, -1.5, -2.0, -0.1];
    let v = View::from_slice(&x, 2, 2);
    let t = [1i64, 0];
    let tot =
        nll_loss::<f32>(&v, &IntView::from_slice(&t), &ClassOptions::default(), None).unwrap();
    assert!(close(tot.sum, 3.5, 1e-7, 0.0) && tot.weight == 2.0);
    let probs: Vec<f32> = vec![0.7, 0.3];
    let pv = View::from_slice(&probs, 1, 2);
    let err = nll_loss::<f32>(
        &pv,
        &IntView::from_slice(&[0]),
        &ClassOptions::default(),
        None,
    )
    .unwrap_err();
    assert!(matches!(err, Error::NotLogProbabilities { .. }));
    // soft targets: one-hot equals hard targets; zero-probability -inf terms count 0
    let lg: Vec<f32> = vec![2.0, f32::NEG_INFINITY, 0.5];
    let y: Vec<f32> = vec![1.0, 0.0, 0.0];
    let s = cross_entropy_soft::<f32>(
        &View::from_slice(&lg, 1, 3),
        &View::from_slice(&y, 1, 3),
        &ClassOptions::default(),
        None,
    )
    .unwrap();
    let lse = ref_lse(&[2.0, f64::NEG_INFINITY, 0.5]);
    assert!(close(s.sum, lse - 2.0, 1e-6, 1e-7));
    // bce: z = 0, y = 1 -> ln 2; z = 2, y = 0 -> 2 + ln(1 + e^-2)
    // (on every path, explicitly: the float64 loop on the scalar path, the f32 vector kernel
    // elsewhere; this test used to read whichever path a concurrent test had left set)
    let z: Vec<f32> = vec![0.0, 2.0];
    let yy: Vec<f32> = vec![1.0, 0.0];
    let want = 2f64.ln() + 2.0 + (-2f64).exp().ln_1p();
    on_each_path(|p| {
        let b = bce_with_logits::<f32>(
            &View::from_slice(&z, 1, 2),
            &View::from_slice(&yy, 1, 2),
            None,
            None,
            None,
        )
        .unwrap();
        let tol = if p == Path::Scalar { 1e-12 } else { 1e-6 };
        assert!(
            close(b.sum, want, tol, 0.0) && b.weight == 2.0,
            "{p:?}: {}",
            b.sum
        );
    });
}

#[test]
fn target_errors_name_value_and_position() {
    let x = vec![0f32; 6];
    let v = View::from_slice(&x, 3, 2);
    for bad in [-1i64, 2, i64::MAX] {
        let t = [0, 1, bad];
        let e = cross_entropy::<f32>(&v, &IntView::from_slice(&t), &ClassOptions::default(), None)
            .unwrap_err();
        assert_eq!(
            e,
            Error::TargetOutOfRange {
                value: bad as i128,
                position: vec![2],
                classes: 2
            }
        );
        assert!(e.to_string().contains(&bad.to_string()));
    }
}

#[test]
fn strided_and_swapped_views_match_contiguous() {
    let mut rng = Rng(5);
    let (n, c) = (9, 13);
    let x: Vec<f32> = (0..n * c).map(|_| rng.normal() as f32).collect();
    let cont = View::from_slice(&x, n, c);
    let mut want = vec![0f32; n];
    logsumexp(&cont, &mut want).unwrap();
    // Fortran order copy: element (i, j) at j * n + i
    let f: Vec<f32> = (0..n * c).map(|k| x[(k % n) * c + k / n]).collect();
    // SAFETY: f holds n * c elements addressed by these strides.
    let fv = unsafe {
        View::new(
            f.as_ptr() as *const u8,
            crate::DType::F32,
            &[n, c],
            &[4, 4 * n as isize],
            false,
        )
    }
    .unwrap();
    let mut got = vec![0f32; n];
    logsumexp(&fv, &mut got).unwrap();
    // the packed input may take the rows-in-lanes kernel, the strided one the row kernel
    let same = |got: &[f32]| {
        got.iter()
            .zip(&want)
            .all(|(&g, &w)| close(g as f64, w as f64, 2e-6, 2e-6))
    };
    assert!(same(&got), "{got:?} vs {want:?}");
    // byte-swapped, misaligned (offset 1 in a byte buffer)
    let mut bytes = vec![0u8; 1 + 4 * n * c];
    for (k, v) in x.iter().enumerate() {
        bytes[1 + 4 * k..5 + 4 * k].copy_from_slice(&v.to_be_bytes());
    }
    // SAFETY: the buffer holds n * c four-byte elements from offset 1.
    let sv = unsafe {
        View::new(
            bytes.as_ptr().add(1),
            crate::DType::F32,
            &[n, c],
            &[4 * c as isize, 4],
            cfg!(target_endian = "little"),
        )
    }
    .unwrap();
    logsumexp(&sv, &mut got).unwrap();
    assert!(same(&got), "{got:?} vs {want:?}");
}

#[test]
fn sums_do_not_depend_on_thread_count() {
    let _g = PATH_LOCK.lock().unwrap_or_else(PoisonError::into_inner); // no path switch meanwhile
    let _t = crate::parallel::THREADS_LOCK
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let mut rng = Rng(9);
    let (n, c) = (20000, 10);
    let x: Vec<f32> = (0..n * c).map(|_| rng.normal() as f32).collect();
    let t: Vec<i64> = (0..n).map(|_| rng.below(c) as i64).collect();
    let v = View::from_slice(&x, n, c);
    let run = |k| {
        crate::parallel::set_num_threads(k);
        cross_entropy::<f32>(&v, &IntView::from_slice(&t), &ClassOptions::default(), None).unwrap()
    };
    let a = run(1);
    assert_eq!(a, run(2));
    assert_eq!(a, run(7));
    crate::parallel::set_num_threads(0);
}

#[test]
fn softmax_rows_and_roofline() {
    let mut rng = Rng(13);
    on_each_path(|p| {
        for c in [1, 5, 16, 33, 5000] {
            let x: Vec<f32> = (0..2 * c).map(|_| (rng.normal() * 5.0) as f32).collect();
            let mut out = vec![0f32; 2 * c];
            softmax_f32(&View::from_slice(&x, 2, c), true, &mut out).unwrap();
            for r in 0..2 {
                let row: Vec<f64> = x[r * c..(r + 1) * c].iter().map(|&v| v as f64).collect();
                let lse = ref_lse(&row);
                for j in 0..c {
                    assert!(
                        close(out[r * c + j] as f64, row[j] - lse, 2e-6, 2e-5),
                        "{p:?} C={c}"
                    );
                }
            }
            let s = stream_sum(&View::from_slice(&x, 2, c));
            let want: f64 = x.iter().map(|&v| v as f64).sum();
            assert!(close(s, want, 1e-5, 1e-3), "{p:?} sum");
        }
    });
}

#[test]
fn evaluate_metrics_and_compare() {
    let x: Vec<f32> = vec![2.0, 1.0, 0.0, 0.0, 0.0, 3.0];
    let v = View::from_slice(&x, 2, 3);
    let t = [1i64, 2];
    let opt = EvalOptions {
        kind: Kind::Logits,
        ignore_index: -100,
        top_k: vec![1, 2],
        n_bins: 10,
        ties_first: false,
    };
    on_each_path(|_| {
        let s = evaluate(&v, &IntView::from_slice(&t), &opt, None).unwrap();
        let (r0, r1) = ([2.0, 1.0, 0.0], [0.0, 0.0, 3.0]);
        let (l0, l1) = (ref_lse(&r0), ref_lse(&r1));
        assert_eq!(s.n, 2);
        assert!(close(s.sum_nll, (l0 - 1.0) + (l1 - 3.0), 1e-6, 1e-6));
        assert_eq!(s.topk_correct, vec![1, 2]);
        let ent = |r: &[f64; 3], l: f64| -r.iter().map(|v| (v - l).exp() * (v - l)).sum::<f64>();
        assert!(close(
            s.sum_entropy,
            ent(&r0, l0) + ent(&r1, l1),
            1e-5,
            1e-6
        ));
        let brier = |r: &[f64; 3], l: f64, k: usize| {
            r.iter()
                .enumerate()
                .map(|(j, v)| ((v - l).exp() - (j == k) as u8 as f64).powi(2))
                .sum::<f64>()
        };
        assert!(close(
            s.sum_brier,
            brier(&r0, l0, 1) + brier(&r1, l1, 2),
            1e-5,
            1e-6
        ));
        let c = compare(&v, &v, &IntView::from_slice(&t), Kind::Logits, -100).unwrap();
        assert_eq!((c.n, c.top1_agree), (2, 2));
        assert!(c.sum_kl.abs() < 1e-12 && c.sum_dnll == 0.0);
    });
}

#[test]
fn short_rows_in_lanes_with_nonfinite_rows_mixed_in() {
    let mut rng = Rng(21);
    on_each_path(|p| {
        for c in 1..=66 {
            let n = 70;
            let mut x: Vec<f32> = (0..n * c).map(|_| (rng.normal() * 10.0) as f32).collect();
            x[3 * c] = f32::INFINITY;
            x[20 * c + c - 1] = f32::NAN;
            for v in &mut x[40 * c..41 * c] {
                *v = f32::NEG_INFINITY;
            }
            // masked classes: one -inf in a finite row (row 51's is its target, below)
            x[50 * c] = f32::NEG_INFINITY;
            x[51 * c] = f32::NEG_INFINITY;
            let mut out = vec![0f32; n];
            logsumexp(&View::from_slice(&x, n, c), &mut out).unwrap();
            let mut t: Vec<i64> = (0..n).map(|_| rng.below(c) as i64).collect();
            t[51] = 0;
            let mut ce = vec![0f32; n];
            let opt = ClassOptions {
                label_smoothing: 0.3,
                ..Default::default()
            };
            cross_entropy(
                &View::from_slice(&x, n, c),
                &IntView::from_slice(&t),
                &opt,
                Some(&mut ce),
            )
            .unwrap();
            // without smoothing the rows-in-lanes kernel takes the ordinary rows
            let mut hard = vec![0f32; n];
            cross_entropy(
                &View::from_slice(&x, n, c),
                &IntView::from_slice(&t),
                &ClassOptions::default(),
                Some(&mut hard),
            )
            .unwrap();
            for i in 0..n {
                let row: Vec<f64> = x[i * c..(i + 1) * c].iter().map(|&v| v as f64).collect();
                let lse = if row.iter().any(|v| v.is_nan()) {
                    f64::NAN
                } else {
                    ref_lse(&row)
                };
                assert!(
                    close(out[i] as f64, lse, 2e-6, 2e-5),
                    "{p:?} C={c} row {i}: {} vs {lse}",
                    out[i]
                );
                let k = t[i] as usize;
                let sx: f64 = row.iter().sum();
                let want = 0.7 * (lse - row[k]) + 0.3 / c as f64 * (c as f64 * lse - sx);
                assert!(
                    close(ce[i] as f64, want, 2e-6, 2e-5),
                    "{p:?} C={c} ce row {i}: {} vs {want}",
                    ce[i]
                );
                let want_hard = lse - row[k];
                assert!(
                    close(hard[i] as f64, want_hard, 2e-6, 2e-5),
                    "{p:?} C={c} hard row {i}: {} vs {want_hard}",
                    hard[i]
                );
            }
        }
    });
}

#[test]
#[cfg(target_arch = "aarch64")]
fn neon_is_tested_on_aarch64() {
    // every AArch64 CPU has NEON: the tests above must have run on it, not only on scalar
    assert!(paths().contains(&Path::Neon) || std::env::var("FASTNLL_SIMD").is_ok());
    assert_eq!(Path::best(), Path::Neon);
}

#[test]
#[cfg(target_arch = "aarch64")]
fn f16_subnormals_widen_exactly_under_flush_to_zero() {
    // FPCR.FZ (set by some -ffast-math libraries) flushes f32 subnormal arithmetic to zero;
    // half subnormals are normal f32 values and must survive NEON's widening with it set.
    let h: Vec<F16> = (1..=0x03FFu16).chain(0x8001..=0x83FF).map(F16).collect();
    let h = &h[..h.len() / 16 * 16];
    let mut out = vec![0f32; h.len()];
    let _g = PATH_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let old: u64;
    // SAFETY: only the flush-to-zero bit (24) of this thread's FPCR changes, and is restored.
    unsafe {
        std::arch::asm!("mrs {0}, fpcr", out(reg) old);
        std::arch::asm!("msr fpcr, {0}", in(reg) old | (1 << 24));
    }
    crate::kernel::widen::<F16>(Path::Neon, h, &mut out);
    // SAFETY: writes back this thread's FPCR exactly as it was read above.
    unsafe { std::arch::asm!("msr fpcr, {0}", in(reg) old) };
    for (v, &got) in h.iter().zip(&out) {
        assert_eq!(got, half::f16::from_bits(v.0).to_f32(), "{:#06x}", v.0);
    }
}

#[test]
fn first_eq_finds_the_first_equal_element_on_every_path() {
    // ties, NaN, -inf, a value only in the tail, no match; every length 0..40
    let mut seed = 7u64;
    let mut next = || {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (seed >> 33) % 5
    };
    on_each_path(|p| {
        for n in 0..40 {
            let x: Vec<f32> = (0..n)
                .map(|_| match next() {
                    0 => f32::NAN,
                    1 => f32::NEG_INFINITY,
                    k => k as f32,
                })
                .collect();
            for v in [2.0, 3.0, 4.0, f32::NEG_INFINITY, f32::NAN, 9.0] {
                let want = x.iter().position(|&e| e == v);
                assert_eq!(crate::kernel::first_eq(p, &x, v), want, "{p:?} n={n} v={v}");
                let h: Vec<BF16> = x
                    .iter()
                    .map(|&e| BF16((e.to_bits() >> 16) as u16))
                    .collect();
                assert_eq!(
                    crate::kernel::first_eq(p, &h, v),
                    want,
                    "{p:?} bf16 n={n} v={v}"
                );
            }
        }
    });
}

/// `kernel::ln_f32` (evaluate's log of a probability) against libm's float64 log: within 4
/// ulps of the result over the positive normal float32 values, and exact where libm's is
/// (powers of two, 1).
#[test]
fn ln_f32_matches_libm_within_a_few_ulps() {
    use crate::kernel::{ln_f32, nll_of_prob};
    let mut worst = 0f64;
    let mut bits = f32::MIN_POSITIVE.to_bits();
    while bits < f32::MAX.to_bits() {
        let p = f32::from_bits(bits);
        let want = f64::from(p).ln();
        let got = ln_f32(p);
        let ulp = if want == 0.0 {
            f64::MIN_POSITIVE
        } else {
            f64::from_bits(want.abs().to_bits() + 1) - want.abs()
        };
        worst = worst.max((got - want).abs() / ulp);
        bits += 9973; // ~213,000 values across every binade
    }
    // the values next to 1, where a table or a plain series would lose relative accuracy
    for k in 1..2000u32 {
        for p in [
            f32::from_bits(1f32.to_bits() - k),
            f32::from_bits(1f32.to_bits() + k),
        ] {
            let want = f64::from(p).ln();
            let ulp = f64::from_bits(want.abs().to_bits() + 1) - want.abs();
            worst = worst.max((ln_f32(p) - want).abs() / ulp);
        }
    }
    assert!(worst <= 4.0, "ln_f32 is {worst} ulps off libm");
    assert_eq!(ln_f32(1.0), 0.0);
    assert_eq!(ln_f32(0.5), -std::f64::consts::LN_2);
    // nll_of_prob: the same for float32-exact values, libm for the rest
    assert_eq!(nll_of_prob(0.25), -ln_f32(0.25));
    assert_eq!(nll_of_prob(0.1), -(0.1f64).ln());
    assert_eq!(nll_of_prob(0.0), f64::INFINITY);
    assert!(nll_of_prob(-0.5).is_nan());
    assert_eq!(nll_of_prob(1e-40), -(1e-40f64).ln()); // subnormal as f32: libm
}

/// `kernel::exp_f32_le0` (evaluate's confidence of a log-probability row) against libm's
/// float64 exp over float32 x <= 0, down to the subnormals and 0.
#[test]
fn exp_f32_le0_matches_libm_within_a_few_ulps() {
    use crate::kernel::exp_f32_le0;
    let mut worst = 0f64;
    let mut bits = 0u32; // 0.0, then negative values of growing magnitude
    while bits < (-800f32).to_bits() & 0x7fff_ffff {
        let x = -f32::from_bits(bits);
        let want = f64::from(x).exp();
        let got = exp_f32_le0(x);
        if want >= f64::MIN_POSITIVE {
            let ulp = f64::from_bits(want.to_bits() + 1) - want;
            worst = worst.max((got - want).abs() / ulp);
        } else {
            // subnormal results: within a few units of the smallest subnormal
            assert!(
                (got - want).abs() <= 4.0 * 5e-324,
                "x = {x}: {got} vs {want}"
            );
        }
        bits += 7919;
    }
    assert!(worst <= 4.0, "exp_f32_le0 is {worst} ulps off libm");
    assert_eq!(exp_f32_le0(0.0), 1.0);
    assert_eq!(exp_f32_le0(-1e30), 0.0);
    assert_eq!(exp_f32_le0(-f32::MAX), 0.0);
}

/// Short float64 rows' statistics from their blocks of 16 (`Rows::stats` through
/// `kernel::stats_f64_lanes`) are the bits `kernel::stats_f64` gives row by row, on every path,
/// in C order (rows read in place) and Fortran order (read element by element), with and
/// without the metrics' sums, for rows asked in order, backwards and repeated; rows with a
/// NaN, -inf, +inf, only -inf, huge or -0 values among them; C up to the blocks' bound and
/// one past it; a partial last block.
#[test]
fn f64_short_rows_in_blocks_are_the_row_kernels_bits() {
    use crate::kernel::{stats_f64, F64_LANES_MAX_C};
    use crate::rows::{Rows, Want};
    let mut rng = Rng(77);
    let n = 16 * 3 + 5;
    for c in [
        1usize,
        2,
        3,
        10,
        16,
        31,
        F64_LANES_MAX_C,
        F64_LANES_MAX_C + 1,
    ] {
        let mut x: Vec<f64> = (0..n * c).map(|_| 4.0 * rng.normal()).collect();
        let specials = [
            f64::NAN,
            f64::NEG_INFINITY,
            f64::INFINITY,
            1e300,
            -1e300,
            -0.0,
            -800.0,
        ];
        for (k, &v) in specials.iter().enumerate() {
            x[(3 + 5 * k) * c + k % c] = v;
        }
        for v in &mut x[20 * c..21 * c] {
            *v = f64::NEG_INFINITY;
        }
        for v in &mut x[22 * c..23 * c] {
            *v = 0.0;
        }
        x[22 * c] = -0.0;
        let xt: Vec<f64> = (0..n).map(|i| x[i * c + (i * 7) % c]).collect();
        let fortran: Vec<f64> = (0..n * c).map(|k| x[(k % n) * c + k / n]).collect();
        let c_order = View::from_slice(&x, n, c);
        // SAFETY: `fortran` holds n x c elements, column j at j·n.
        let f_order = unsafe {
            View::new(
                fortran.as_ptr() as *const u8,
                crate::tensor::DType::F64,
                &[n, c],
                &[8, 8 * n as isize],
                false,
            )
        }
        .unwrap();
        let same = |a: f64, b: f64| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
        on_each_path(|p| {
            for view in [&c_order, &f_order] {
                let mut rw = Rows::new(view);
                let order: Vec<(usize, bool)> = (0..n)
                    .map(|i| (i, i % 3 != 0))
                    .chain((0..n).rev().map(|i| (i, true)))
                    .chain((0..n).flat_map(|i| [(i, false), (i, true), (i, false)]))
                    .collect();
                for (i, eval) in order {
                    let got = rw.stats(i, xt[i], Want { eval });
                    let (m, st) = stats_f64(p, &x[i * c..(i + 1) * c], xt[i], eval);
                    let ctx = format!("{p:?} C={c} row {i} eval {eval}");
                    assert!(
                        same(got.m, m) && same(got.st.m as f64, st.m as f64),
                        "{ctx}"
                    );
                    assert!(same(got.st.s, st.s), "{ctx}: s {} vs {}", got.st.s, st.s);
                    assert!(same(got.st.t, st.t) && same(got.st.q, st.q), "{ctx}");
                    assert_eq!((got.st.gt, got.st.nan), (st.gt, st.nan), "{ctx}");
                }
            }
        });
    }
}

/// Cross-entropy of short float64 rows (their 16-row fast path, `loss::ce_f64_short`) on
/// every path: each row's loss within 1e-13 of a libm float64 reference written here, and
/// the same bits as the row kernel's arithmetic (`stats_f64`, `RowStats::minus`), with class
/// weights (a zero and a negative one among them), ignored rows (0), an ignore_index that is
/// a class, a masked -inf class, a -inf target (inf), a NaN row (NaN) and a +inf row
/// (lse = inf: inf, or NaN for the +inf class), which the row kernel takes, a large offset;
/// at C = 10 more than two parallel chunks, which end inside a block of 16; the sum and
/// weight of the scored rows; a target out of range reported with its row.
#[test]
fn f64_short_rows_cross_entropy_matches_a_float64_reference() {
    use crate::kernel::stats_f64;
    use crate::rows::RowStats;
    let mut rng = Rng(5);
    let cases = [
        (1usize, -100),
        (2, -100),
        (3, -100),
        (3, 0),
        (10, -100),
        (31, -100),
        (32, 5),
    ];
    for (c, ignore) in cases.into_iter().chain([(33, -100)]) {
        let n = if c == 10 {
            2 * crate::parallel::chunk_rows(80) + 37
        } else {
            16 * 4 + 7
        };
        let mut x: Vec<f64> = (0..n * c).map(|_| 3.0 * rng.normal()).collect();
        let mut t: Vec<i64> = (0..n).map(|i| ((i * 5 + 1) % c) as i64).collect();
        for i in (0..n).step_by(9) {
            t[i] = ignore;
        }
        x[17 * c + (t[17] as usize + 1) % c] = f64::NEG_INFINITY; // masked class (or the target at C = 1)
        x[19 * c + t[19] as usize] = f64::NEG_INFINITY; // the target's logit
        x[33 * c] = f64::NAN;
        x[35 * c + c / 2] = f64::INFINITY;
        for v in &mut x[40 * c..41 * c] {
            *v += 1e6;
        }
        let mut weight: Vec<f64> = (0..c).map(|j| 0.5 + j as f64 / 8.0).collect();
        if c >= 3 {
            (weight[1], weight[2]) = (0.0, -0.75);
        }
        let v = View::from_slice(&x, n, c);
        let tv = IntView::from_slice(&t);
        let opt = ClassOptions {
            weight: Some(&weight),
            ignore_index: ignore,
            ..ClassOptions::default()
        };
        on_each_path(|p| {
            let mut out = vec![0f64; n];
            let tot = cross_entropy::<f64>(&v, &tv, &opt, Some(&mut out)).unwrap();
            let (mut sum, mut wsum) = (0.0, 0.0);
            for i in 0..n {
                let ctx = format!("{p:?} C={c} row {i}");
                if t[i] == ignore {
                    assert_eq!(out[i], 0.0, "{ctx}");
                    continue;
                }
                let row = &x[i * c..(i + 1) * c];
                let k = t[i] as usize;
                wsum += weight[k];
                sum += out[i];
                if row.iter().any(|r| r.is_nan()) {
                    assert!(out[i].is_nan(), "{ctx}: {}", out[i]);
                    continue;
                }
                let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let lse = if m == f64::INFINITY {
                    m
                } else {
                    m + row.iter().map(|r| (r - m).exp()).sum::<f64>().ln()
                };
                let (m_row, st) = stats_f64(p, row, row[k], false);
                let kernel = weight[k] * RowStats { m: m_row, st }.minus(row[k]);
                assert!(
                    out[i].to_bits() == kernel.to_bits() || (out[i].is_nan() && kernel.is_nan()),
                    "{ctx}: {} vs the row kernel's {kernel}",
                    out[i]
                );
                let want = weight[k] * (lse - row[k]);
                if want.is_nan() {
                    // C = 1 with a -inf logit: -inf - -inf
                    assert!(out[i].is_nan(), "{ctx}: {}", out[i]);
                } else if want.is_infinite() {
                    assert_eq!(out[i], want, "{ctx}");
                } else {
                    let tol = 1e-13 * (lse.abs() + row[k].abs()).max(1.0);
                    assert!((out[i] - want).abs() <= tol, "{ctx}: {} vs {want}", out[i]);
                }
            }
            let scale: f64 = weight.iter().map(|w| w.abs()).sum::<f64>() * n as f64;
            assert!((tot.weight - wsum).abs() <= 1e-14 * scale, "{p:?} C={c}");
            // (NaN rows make both sums NaN)
            let close = (tot.sum - sum).abs() <= 1e-12 * sum.abs();
            assert!(
                close || (sum.is_nan() && tot.sum.is_nan()),
                "{p:?} C={c}: {}",
                tot.sum
            );
            let mut bad = t.clone();
            bad[50] = c as i64;
            let err = cross_entropy::<f64>(&v, &IntView::from_slice(&bad), &opt, None);
            assert!(
                format!("{:?}", err.unwrap_err()).contains("50"),
                "{p:?} C={c}"
            );
        });
    }
}

/// Float64 rows' statistics (`kernel::stats_f64`: exp by `exp_le0_f64`, in vectors a chunk at
/// a time) are the same bits on every path, whatever the row length (chunks and their tails),
/// and agree with libm float64 sums; `exp_le0_f64` itself stays within a few ulps of libm on
/// float64 (not only float32) arguments, with exp(-inf) = 0 and NaN kept.
#[test]
fn f64_row_stats_same_bits_on_every_path_and_match_libm() {
    use crate::kernel::{exp_le0_f64, stats_f64};
    let mut rng = Rng(41);
    for c in [1usize, 2, 7, 15, 16, 17, 33, 40, 1000] {
        let mut x: Vec<f64> = (0..c).map(|_| 6.0 * rng.normal()).collect();
        if c > 7 {
            x[3] = f64::NEG_INFINITY;
        }
        let xt = x[c / 2];
        let m = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let (mut s, mut t, mut q) = (0.0, 0.0, 0.0);
        for &v in &x {
            let e = (v - m).exp();
            s += e;
            if e > 0.0 {
                t += e * (v - m);
            }
            q += e * e;
        }
        let gt = x.iter().filter(|&&v| v > xt).count() as u64;
        let mut first = None;
        on_each_path(|p| {
            let (mm, st) = stats_f64(p, &x, xt, true);
            let bits = (mm, st.s.to_bits(), st.t.to_bits(), st.q.to_bits(), st.gt);
            assert_eq!(*first.get_or_insert(bits), bits, "{p:?} C={c}");
            assert_eq!((mm, st.gt, st.nan), (m, gt, false), "{p:?} C={c}");
            for (got, want) in [(st.s, s), (st.t, t), (st.q, q)] {
                assert!(
                    (got - want).abs() <= 1e-14 * want.abs().max(1.0),
                    "{p:?} C={c}: {got} vs {want}"
                );
            }
        });
    }
    let mut worst = 0f64;
    for _ in 0..100_000 {
        let x = -(rng.normal() * 200.0).abs();
        let (got, want) = (exp_le0_f64(x), x.exp());
        if want >= f64::MIN_POSITIVE {
            let ulp = f64::from_bits(want.to_bits() + 1) - want;
            worst = worst.max((got - want).abs() / ulp);
        }
    }
    assert!(worst <= 4.0, "exp_le0_f64 is {worst} ulps off libm");
    assert_eq!(exp_le0_f64(f64::NEG_INFINITY), 0.0);
    assert!(exp_le0_f64(f64::NAN).is_nan());
}
