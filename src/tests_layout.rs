//! The same data in every layout, dtype of targets and short-row scheme gives the same bits:
//! packed, row-strided, a column slice of a wider array, Fortran order, reversed rows, and
//! byte-swapped misaligned rows; int64, int32, uint16, uint8, uint64 and strided targets.
//! Ordinary rows are mixed with rows the kernels leave to the row kernel (inf, NaN, a masked
//! -inf class, ignored rows, a large offset), and the packed answer is checked against a
//! float64 reference written here.
#![allow(clippy::float_cmp)] // the tests check bit-exact results on purpose

use crate::loss::{cross_entropy, ClassOptions, Total};
use crate::simd::{self, Path};
use crate::softmax::logsumexp;
use crate::tensor::{DType, IntType, IntView, View};
use crate::tests::{close, on_each_path, Rng};

const IGNORE: i64 = -100;

/// A logical n x c matrix of f32 values (rounded to the dtype) and targets.
struct Data {
    n: usize,
    c: usize,
    x: Vec<f32>,
    t: Vec<i64>,
}

fn data(n: usize, c: usize, dtype: DType, seed: u64) -> Data {
    let mut rng = Rng(seed);
    let round = |v: f32| match dtype {
        DType::F16 => half::f16::from_f32(v).to_f32(),
        DType::BF16 => half::bf16::from_f32(v).to_f32(),
        _ => v,
    };
    let mut x: Vec<f32> = (0..n * c)
        .map(|_| round(3.0 * rng.normal() as f32))
        .collect();
    let mut t: Vec<i64> = (0..n).map(|_| rng.below(c) as i64).collect();
    // rows the kernels leave to the row kernel, or must mask: spread over the blocks of the
    // first 340 rows (the rows after them are clean runs, several tiles long)
    for (k, i) in (5..n.min(340)).step_by(37).enumerate() {
        match k % 5 {
            0 => t[i] = IGNORE,
            1 => x[i * c + (t[i] as usize + 1) % c] = f32::NEG_INFINITY,
            2 => x[i * c] = f32::NAN,
            3 => x[i * c + c / 2] = f32::INFINITY,
            _ => x[i * c..(i + 1) * c]
                .iter_mut()
                .for_each(|v| *v = round(*v + 3000.0)),
        }
    }
    Data { n, c, x, t }
}

fn bits(v: f32, dtype: DType) -> Vec<u8> {
    match dtype {
        DType::F32 => v.to_ne_bytes().to_vec(),
        DType::F16 => half::f16::from_f32(v).to_bits().to_ne_bytes().to_vec(),
        DType::BF16 => half::bf16::from_f32(v).to_bits().to_ne_bytes().to_vec(),
        DType::F64 => (v as f64).to_ne_bytes().to_vec(),
    }
}

/// Memory holding a layout of the matrix, and the view's (offset, strides, swap).
struct Laid {
    buf: Vec<u8>,
    off: usize,
    strides: [isize; 2],
    swap: bool,
}

impl Laid {
    fn view(&self, d: &Data, dtype: DType) -> View<'_> {
        // SAFETY: `lay` sized `buf` so every (i, j) of the n x c view addresses its bytes.
        unsafe {
            View::new(
                self.buf.as_ptr().add(self.off),
                dtype,
                &[d.n, d.c],
                &self.strides,
                self.swap,
            )
        }
        .unwrap()
    }
}

const LAYOUTS: [&str; 6] = [
    "packed",
    "rows[::2]",
    "x[:, :c] of c+5",
    "fortran",
    "reversed",
    "swapped+misaligned",
];

fn lay(d: &Data, dtype: DType, layout: &str) -> Laid {
    let (n, c, s) = (d.n, d.c, dtype.size());
    // (physical element index of (i, j), elements in the buffer, byte offset of the view's
    // first element, element strides)
    let (place, len, first, st): (Place, usize, usize, [isize; 2]) = match layout {
        "packed" | "swapped+misaligned" => {
            (Box::new(move |i, j| i * c + j), n * c, 0, [c as isize, 1])
        }
        "rows[::2]" => (
            Box::new(move |i, j| 2 * i * c + j),
            2 * n * c,
            0,
            [2 * c as isize, 1],
        ),
        "x[:, :c] of c+5" => (
            Box::new(move |i, j| i * (c + 5) + j),
            n * (c + 5),
            0,
            [c as isize + 5, 1],
        ),
        "fortran" => (Box::new(move |i, j| j * n + i), n * c, 0, [1, n as isize]),
        "reversed" => (
            Box::new(move |i, j| (n - 1 - i) * c + j),
            n * c,
            (n - 1) * c,
            [-(c as isize), 1],
        ),
        _ => unreachable!(),
    };
    let pad = usize::from(layout == "swapped+misaligned");
    let mut buf = vec![0u8; pad + len * s];
    for i in 0..n {
        for j in 0..c {
            let mut b = bits(d.x[i * c + j], dtype);
            if layout == "swapped+misaligned" {
                b.reverse();
            }
            let p = pad + place(i, j) * s;
            buf[p..p + s].copy_from_slice(&b);
        }
    }
    Laid {
        buf,
        off: pad + first * s,
        strides: [st[0] * s as isize, st[1] * s as isize],
        swap: layout == "swapped+misaligned",
    }
}

/// Targets stored as `ty` (every other element of a twice-longer array when `strided`).
fn targets(t: &[i64], ty: IntType, strided: bool) -> (Vec<u8>, isize) {
    let s = ty.size();
    let step = if strided { 2 } else { 1 };
    let mut buf = vec![0u8; t.len() * s * step];
    for (i, &v) in t.iter().enumerate() {
        // ignored rows keep -100 in signed types; unsigned ones use their own ignore value
        let b: Vec<u8> = match ty {
            IntType::I64 => v.to_ne_bytes().to_vec(),
            IntType::I32 => (v as i32).to_ne_bytes().to_vec(),
            IntType::U16 => (v as u16).to_ne_bytes().to_vec(),
            IntType::U8 => (v as u8).to_ne_bytes().to_vec(),
            IntType::U64 => (v as u64).to_ne_bytes().to_vec(),
            _ => unreachable!(),
        };
        buf[i * s * step..i * s * step + s].copy_from_slice(&b);
    }
    (buf, (s * step) as isize)
}

/// Physical element index of (i, j) in a test buffer.
type Place = Box<dyn Fn(usize, usize) -> usize>;

/// The ignore index as the unsigned types store -100.
fn ignore_for(ty: IntType) -> i64 {
    match ty {
        IntType::U16 => (IGNORE as u16) as i64,
        IntType::U8 => (IGNORE as u8) as i64,
        // signed types store -100 itself; u64 is not used here (its -100 would exceed
        // i64::MAX: `huge_unsigned_targets_are_reported_not_wrapped` covers it)
        _ => IGNORE,
    }
}

struct Results {
    total: Total,
    per_row: Vec<f32>,
    weighted: Total,
    lse: Vec<f32>,
}

fn run(x: &View, t: &IntView, ignore: i64, weight: &[f64]) -> Results {
    let opt = ClassOptions {
        ignore_index: ignore,
        ..ClassOptions::default()
    };
    let total = cross_entropy::<f32>(x, t, &opt, None).unwrap();
    let mut per_row = vec![0f32; x.rows()];
    cross_entropy::<f32>(x, t, &opt, Some(&mut per_row)).unwrap();
    let wopt = ClassOptions {
        weight: Some(weight),
        ..opt
    };
    let weighted = cross_entropy::<f32>(x, t, &wopt, None).unwrap();
    let mut lse = vec![0f32; x.rows()];
    logsumexp(x, &mut lse).unwrap();
    Results {
        total,
        per_row,
        weighted,
        lse,
    }
}

fn same_bits(a: &Results, b: &Results, what: &str) {
    assert_eq!(a.total.sum.to_bits(), b.total.sum.to_bits(), "{what}: sum");
    assert_eq!(a.total.weight, b.total.weight, "{what}: weight");
    assert_eq!(
        a.weighted.sum.to_bits(),
        b.weighted.sum.to_bits(),
        "{what}: weighted sum"
    );
    let rb = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(rb(&a.per_row), rb(&b.per_row), "{what}: per-row losses");
    assert_eq!(rb(&a.lse), rb(&b.lse), "{what}: logsumexp");
}

/// float64 reference of the cross-entropy sum over rows (ignored rows 0).
fn ref_ce_sum(d: &Data) -> f64 {
    let mut sum = 0.0;
    for i in 0..d.n {
        if d.t[i] == IGNORE {
            continue;
        }
        let row: Vec<f64> = d.x[i * d.c..(i + 1) * d.c]
            .iter()
            .map(|&v| v as f64)
            .collect();
        let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let l = if m.is_finite() {
            m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
        } else {
            m
        };
        sum += l - row[d.t[i] as usize];
    }
    sum
}

#[test]
fn every_layout_and_target_dtype_gives_the_same_bits() {
    let dtypes = [DType::F32, DType::F16, DType::BF16, DType::F64];
    on_each_path(|p| {
        for &c in &[1usize, 2, 3, 5, 10, 16, 24, 32, 33, 100, 1000] {
            // short rows: more than two of the widest tiles (stage::TARGET_TILE rows), so runs
            // read in place with widened targets and staged runs both cross tile boundaries
            let n = match c {
                1000.. => 70,
                33.. => 301,
                _ => 2 * crate::stage::TARGET_TILE + 301,
            };
            for (k, &dtype) in dtypes.iter().enumerate() {
                let d = data(n, c, dtype, 11 + c as u64 + k as u64);
                let weight: Vec<f64> = (0..c).map(|j| 0.5 + (j % 7) as f64 / 4.0).collect();
                let packed = lay(&d, dtype, "packed");
                let tv = IntView::from_slice(&d.t);
                let want = run(&packed.view(&d, dtype), &tv, IGNORE, &weight);
                // the packed answer is right (rows holding NaN give NaN, so compare the
                // finite subset through the per-row losses)
                let finite_rows: Vec<usize> = (0..n)
                    .filter(|&i| {
                        d.x[i * c..(i + 1) * c].iter().all(|v| v.is_finite()) || d.t[i] == IGNORE
                    })
                    .collect();
                let sub = Data {
                    n: finite_rows.len(),
                    c,
                    x: finite_rows
                        .iter()
                        .flat_map(|&i| d.x[i * c..(i + 1) * c].to_vec())
                        .collect(),
                    t: finite_rows.iter().map(|&i| d.t[i]).collect(),
                };
                let got: f64 = finite_rows.iter().map(|&i| want.per_row[i] as f64).sum();
                let r = ref_ce_sum(&sub);
                assert!(
                    close(got, r, 1e-5, 1e-3),
                    "{p:?} C={c} {dtype:?}: {got} vs reference {r}"
                );
                for layout in LAYOUTS {
                    let l = lay(&d, dtype, layout);
                    let got = run(&l.view(&d, dtype), &tv, IGNORE, &weight);
                    same_bits(
                        &want,
                        &got,
                        &format!("{p:?} {:?} C={c} {dtype:?} {layout}", simd::short_scheme()),
                    );
                }
                // (u64 cannot store -100 below i64::MAX: tested apart)
                for ty in [IntType::I32, IntType::U16, IntType::U8, IntType::I64] {
                    if ty == IntType::U8 && c > 156 {
                        // u8 stores -100 as 156, a class from C = 157 on
                        continue;
                    }
                    for strided in [false, true] {
                        let (buf, st) = targets(&d.t, ty, strided);
                        // SAFETY: buf holds n targets `st` bytes apart.
                        let tv2 = unsafe { IntView::new(buf.as_ptr(), ty, &[n], &[st]) };
                        let got = run(&packed.view(&d, dtype), &tv2, ignore_for(ty), &weight);
                        same_bits(
                            &want,
                            &got,
                            &format!("{p:?} C={c} {dtype:?} targets {ty:?} strided={strided}"),
                        );
                    }
                }
            }
        }
    });
}

#[test]
fn huge_unsigned_targets_are_reported_not_wrapped() {
    on_each_path(|_| {
        for c in [2usize, 10, 100] {
            let n = 64;
            let x: Vec<f32> = (0..n * c).map(|k| (k % 7) as f32).collect();
            let mut t: Vec<u64> = (0..n as u64).map(|i| i % c as u64).collect();
            t[40] = u64::MAX - 99; // would be -100 (the ignore index) if wrapped to i64
                                   // SAFETY: t holds n u64 targets.
            let tv = unsafe { IntView::new(t.as_ptr() as *const u8, IntType::U64, &[n], &[8]) };
            let err = cross_entropy::<f32>(
                &View::from_slice(&x, n, c),
                &tv,
                &ClassOptions::default(),
                None,
            )
            .unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains(&(u64::MAX - 99).to_string()) && msg.contains("40"),
                "{msg}"
            );
        }
    });
}

#[test]
fn both_short_row_schemes_agree_on_every_path() {
    let mut seen: Vec<(Path, simd::Short, Vec<u32>)> = Vec::new();
    on_each_path(|p| {
        let d = data(333, 7, DType::F32, 3);
        let v = View::from_slice(&d.x, d.n, d.c);
        let mut out = vec![0f32; d.n];
        cross_entropy::<f32>(
            &v,
            &IntView::from_slice(&d.t),
            &ClassOptions::default(),
            Some(&mut out),
        )
        .unwrap();
        seen.push((
            p,
            simd::short_scheme(),
            out.iter().map(|v| v.to_bits()).collect(),
        ));
    });
    for w in seen.windows(2) {
        if w[0].0 == w[1].0 {
            assert_ne!(w[0].1, w[1].1);
            assert_eq!(w[0].2, w[1].2, "{:?}: gather and transpose differ", w[0].0);
        }
    }
}
