//! logsumexp (SciPy's semantics), log_softmax / softmax (which write N x C because the caller
//! asked for it), and the read-only streaming sum the benchmarks use as a roofline.

use crate::error::{Error, Result};
use crate::loss::Out;
use crate::parallel;
use crate::rows::{Rows, Want};
use crate::simd::{BF16, F16};
use crate::stage::{self, Scratch};
use crate::tensor::{DType, View};
use std::ops::Range;

fn per(x: &View) -> usize {
    parallel::chunk_rows(x.cols() * x.dtype.size())
}

fn check_out(len: usize, want: usize) -> Result<()> {
    if len != want {
        return Err(Error::Shape(format!(
            "output has {len} elements, expected {want}"
        )));
    }
    Ok(())
}

/// The vectorised logsumexp over rows `r` where it applies (see `loss::ce_fast`).
fn lse_fast(x: &View, r: Range<usize>, out: Option<&mut [f32]>, s: &mut Scratch) -> Option<usize> {
    let path = crate::simd::current();
    let c = x.cols();
    if path == crate::simd::Path::Scalar || c == 0 || c > 2 * crate::rows::SEGMENT {
        return None;
    }
    let out = &mut out?[..r.len()];
    Some(match x.dtype {
        DType::F32 => stage::lse::<f32>(path, x, r, out, s),
        DType::F16 => stage::lse::<F16>(path, x, r, out, s),
        DType::BF16 => stage::lse::<BF16>(path, x, r, out, s),
        DType::F64 => return None,
    })
}

/// log Σ_c exp(x_ic) per row into `out`. All -inf -> -inf, +inf -> +inf, NaN -> NaN; an empty
/// row (C = 0) gives -inf, as SciPy does.
pub fn logsumexp<O: Out>(x: &View, out: &mut [O]) -> Result<()> {
    check_out(out.len(), x.rows())?;
    parallel::map_chunks_out(out, 1, per(x), |r, o| {
        let mut rw = Rows::new(x);
        let mut scratch = Scratch::default();
        let mut i = r.start;
        let mut use_fast = true;
        while i < r.end {
            if use_fast {
                match lse_fast(x, i..r.end, O::as_f32(&mut o[i - r.start..]), &mut scratch) {
                    Some(n) => i += n,
                    None => use_fast = false,
                }
            }
            // Rows the fast path stopped at (inf/NaN) or does not take: the row kernel.
            let stop = if use_fast { (i + 16).min(r.end) } else { r.end };
            while i < stop {
                o[i - r.start] = O::from_f64(rw.stats(i, 0.0, Want::default()).lse());
                i += 1;
            }
        }
    });
    Ok(())
}

/// log |Σ_c b_ic·exp(x_ic)| and its sign per row (SciPy's `b` and `return_sign`). Entries with
/// b = 0 are left out (so their x may be ±inf); the shift is the max of the others. Without
/// `sign`, a negative sum gives NaN, as in SciPy.
pub fn logsumexp_b<O: Out>(
    x: &View,
    b: &View,
    out: &mut [O],
    mut sign: Option<&mut [O]>,
) -> Result<()> {
    if x.shape() != b.shape() {
        return Err(Error::Shape(format!(
            "b shape {:?} does not match a's shape {:?}",
            b.shape(),
            x.shape()
        )));
    }
    check_out(out.len(), x.rows())?;
    if let Some(s) = sign.as_deref() {
        check_out(s.len(), x.rows())?;
    }
    let c = x.cols();
    let row = |xr: &Rows, br: &Rows, i: usize| -> (f64, f64) {
        let mut m = f64::NEG_INFINITY;
        let mut nan = false;
        for j in 0..c {
            if br.value(i, j) != 0.0 {
                let v = xr.value(i, j);
                nan |= v.is_nan();
                m = m.max(v);
            }
        }
        if nan {
            return (f64::NAN, f64::NAN);
        }
        let shift = if m.is_finite() { m } else { 0.0 };
        let mut s = 0.0;
        for j in 0..c {
            let bj = br.value(i, j);
            if bj != 0.0 {
                s += bj * (xr.value(i, j) - shift).exp();
            }
        }
        let sg = if s > 0.0 {
            1.0
        } else if s < 0.0 {
            -1.0
        } else if s == 0.0 {
            0.0
        } else {
            f64::NAN
        };
        (s.abs().ln() + shift, sg)
    };
    let has_sign = sign.is_some();
    let results: Vec<Vec<(f64, f64)>> = parallel::map_chunks(x.rows(), per(x), |r| {
        let (xr, br) = (Rows::new(x), Rows::new(b));
        r.map(|i| row(&xr, &br, i)).collect()
    });
    for (i, (v, sg)) in results.into_iter().flatten().enumerate() {
        out[i] = O::from_f64(if !has_sign && sg < 0.0 { f64::NAN } else { v });
        if let Some(s) = sign.as_deref_mut() {
            s[i] = O::from_f64(sg);
        }
    }
    Ok(())
}

/// log_softmax (`log`) or softmax of 16/32-bit input into a C-contiguous f32 `out`.
pub fn softmax_f32(x: &View, log: bool, out: &mut [f32]) -> Result<()> {
    if x.dtype == DType::F64 {
        return Err(Error::Type(
            "float64 input is written by softmax_f64".into(),
        ));
    }
    let c = x.cols();
    check_out(out.len(), x.rows() * c)?;
    parallel::map_chunks_out(out, c, per(x), |r, o| {
        let mut rw = Rows::new(x);
        for (k, i) in r.enumerate() {
            rw.write_f32(i, log, &mut o[k * c..(k + 1) * c]);
        }
    });
    Ok(())
}

/// log_softmax (`log`) or softmax of float64 input into a C-contiguous f64 `out`.
pub fn softmax_f64(x: &View, log: bool, out: &mut [f64]) -> Result<()> {
    let c = x.cols();
    check_out(out.len(), x.rows() * c)?;
    parallel::map_chunks_out(out, c, per(x), |r, o| {
        let mut rw = Rows::new(x);
        for (k, i) in r.enumerate() {
            rw.write_f64(i, log, &mut o[k * c..(k + 1) * c]);
        }
    });
    Ok(())
}

/// Σ of every element, read once with SIMD: the bandwidth roofline for the benchmarks.
/// Packed arrays are summed as one flat run (no per-row overhead), others row by row.
pub fn stream_sum(x: &View) -> f64 {
    let path = crate::simd::current();
    macro_rules! flat {
        ($t:ty) => {
            if let Some(all) = x.packed_rows::<$t>(0, x.rows()) {
                let per = parallel::CHUNK_BYTES / std::mem::size_of::<$t>();
                return parallel::map_chunks(all.len(), per, |r| {
                    crate::kernel::row_sum(path, &all[r])
                })
                .into_iter()
                .sum();
            }
        };
    }
    match x.dtype {
        DType::F32 => flat!(f32),
        DType::F16 => flat!(F16),
        DType::BF16 => flat!(BF16),
        DType::F64 => {}
    }
    parallel::map_chunks(x.rows(), per(x), |r| {
        let mut rw = Rows::new(x);
        r.map(|i| rw.sum(i)).sum::<f64>()
    })
    .into_iter()
    .sum()
}
