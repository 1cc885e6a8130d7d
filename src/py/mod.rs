//! The PyO3 module `fastnll._core`: the only Rust code that touches Python. Each function takes
//! views of the caller's arrays, runs one core function with the GIL released, and converts the
//! result. Arguments were validated by the Python layer; the core re-checks what it relies on.

mod arrays;

use crate::error::Error;
use crate::eval::{EvalOptions, Kind};
use crate::loss::{ClassOptions, Total};
use crate::{parallel, simd};
use arrays::{contig, f64_slice, float_view, int_view, out_buf, rw, OutBuf};
use numpy::PyUntypedArray;
use pyo3::exceptions::{
    PyIndexError, PyKeyboardInterrupt, PyRuntimeError, PyTypeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::sync::{Arc, Mutex, PoisonError};

type Arr<'py> = Bound<'py, PyUntypedArray>;

#[allow(clippy::needless_pass_by_value)] // by value so that `.map_err(to_py)` reads as it should
fn to_py(e: Error) -> PyErr {
    match e {
        Error::TargetOutOfRange { .. } => PyIndexError::new_err(e.to_string()),
        Error::Type(_) => PyTypeError::new_err(e.to_string()),
        _ => PyValueError::new_err(e.to_string()),
    }
}

/// Runs `f` without the GIL; a panic becomes a RuntimeError, never a PanicException. The
/// calling thread waits while the pool works and checks for signals every 50 ms (taking the
/// GIL briefly): a KeyboardInterrupt (or any exception a signal handler raises) cancels the
/// rest of the call between chunks and is raised here.
fn run<T: Send>(py: Python<'_>, f: impl FnOnce() -> crate::Result<T> + Send) -> PyResult<T> {
    let pending: Arc<Mutex<Option<PyErr>>> = Arc::default();
    let seen = pending.clone();
    let r = py.detach(move || {
        parallel::run_cancellable(f, move || {
            Python::attach(|py| match py.check_signals() {
                Ok(()) => false,
                Err(e) => {
                    *seen.lock().unwrap_or_else(PoisonError::into_inner) = Some(e);
                    true
                }
            })
        })
    });
    if let Some(e) = pending
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
    {
        return Err(e);
    }
    match r {
        Ok(r) => r.map_err(to_py),
        Err(p) if p.is::<parallel::Cancelled>() => {
            Err(PyKeyboardInterrupt::new_err("fastnll call cancelled"))
        }
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| {
                    p.downcast_ref::<&str>()
                        .map(std::string::ToString::to_string)
                })
                .unwrap_or_default();
            Err(PyRuntimeError::new_err(format!(
                "fastnll internal error (please report): {msg}"
            )))
        }
    }
}

fn shift_position(e: Error, offset: usize) -> Error {
    match e {
        Error::TargetOutOfRange {
            value,
            mut position,
            classes,
        } => {
            if let Some(p) = position.first_mut() {
                *p += offset;
            }
            Error::TargetOutOfRange {
                value,
                position,
                classes,
            }
        }
        e => e,
    }
}

fn class_options(
    weight: Option<&[f64]>,
    ignore_index: i64,
    label_smoothing: f64,
) -> ClassOptions<'_> {
    ClassOptions {
        weight,
        ignore_index,
        label_smoothing,
    }
}

fn pair(t: Total) -> (f64, f64) {
    (t.sum, t.weight)
}

/// Runs a loss with an optional f32/f64 per-row output.
macro_rules! with_out {
    ($py:expr, $out:expr, |$o:ident| $body:expr) => {{
        match $out.map(out_buf).transpose()? {
            None => {
                let $o: Option<&mut [f32]> = None;
                run($py, move || $body)
            }
            Some(OutBuf::F32(mut g)) => {
                let $o = Some(contig(&mut g)?);
                run($py, move || $body)
            }
            Some(OutBuf::F64(mut g)) => {
                let $o = Some(contig(&mut g)?);
                run($py, move || $body)
            }
        }
    }};
}

#[pyfunction]
#[pyo3(signature = (x, tag, swap, target, weight, ignore_index, label_smoothing, out=None))]
#[allow(clippy::too_many_arguments)]
fn cross_entropy(
    py: Python<'_>,
    x: &Arr,
    tag: &str,
    swap: bool,
    target: &Arr,
    weight: Option<&Arr>,
    ignore_index: i64,
    label_smoothing: f64,
    out: Option<&Arr>,
) -> PyResult<(f64, f64)> {
    let (x, t) = (float_view(x, tag, swap)?, int_view(target)?);
    let w = weight.map(f64_slice).transpose()?;
    let opt = class_options(w.as_deref(), ignore_index, label_smoothing);
    with_out!(py, out, |o| crate::loss::cross_entropy(&x, &t, &opt, o)
        .map(pair))
}

#[pyfunction]
#[pyo3(signature = (x, tag, swap, target, weight, ignore_index, out=None))]
#[allow(clippy::too_many_arguments)]
fn nll_loss(
    py: Python<'_>,
    x: &Arr,
    tag: &str,
    swap: bool,
    target: &Arr,
    weight: Option<&Arr>,
    ignore_index: i64,
    out: Option<&Arr>,
) -> PyResult<(f64, f64)> {
    let (x, t) = (float_view(x, tag, swap)?, int_view(target)?);
    let w = weight.map(f64_slice).transpose()?;
    let opt = class_options(w.as_deref(), ignore_index, 0.0);
    with_out!(py, out, |o| crate::loss::nll_loss(&x, &t, &opt, o)
        .map(pair))
}

#[pyfunction]
#[pyo3(signature = (x, tag, swap, y, ytag, yswap, weight, label_smoothing, out=None))]
#[allow(clippy::too_many_arguments)]
fn cross_entropy_soft(
    py: Python<'_>,
    x: &Arr,
    tag: &str,
    swap: bool,
    y: &Arr,
    ytag: &str,
    yswap: bool,
    weight: Option<&Arr>,
    label_smoothing: f64,
    out: Option<&Arr>,
) -> PyResult<(f64, f64)> {
    let (x, y) = (float_view(x, tag, swap)?, float_view(y, ytag, yswap)?);
    let w = weight.map(f64_slice).transpose()?;
    let opt = class_options(w.as_deref(), -100, label_smoothing);
    with_out!(py, out, |o| crate::loss::cross_entropy_soft(
        &x, &y, &opt, o
    )
    .map(pair))
}

#[pyfunction]
#[pyo3(signature = (x, tag, swap, y, ytag, yswap, weight, wtag, wswap, pos_weight, out=None))]
#[allow(clippy::too_many_arguments)]
fn bce_with_logits(
    py: Python<'_>,
    x: &Arr,
    tag: &str,
    swap: bool,
    y: &Arr,
    ytag: &str,
    yswap: bool,
    weight: Option<&Arr>,
    wtag: &str,
    wswap: bool,
    pos_weight: Option<&Arr>,
    out: Option<&Arr>,
) -> PyResult<(f64, f64)> {
    let (x, y) = (float_view(x, tag, swap)?, float_view(y, ytag, yswap)?);
    let w = weight.map(|w| float_view(w, wtag, wswap)).transpose()?;
    let pw = pos_weight.map(f64_slice).transpose()?;
    with_out!(py, out, |o| {
        crate::loss::bce_with_logits(&x, &y, w.as_ref(), pw.as_deref(), o).map(pair)
    })
}

#[pyfunction]
fn logsumexp(py: Python<'_>, x: &Arr, tag: &str, swap: bool, out: &Arr) -> PyResult<()> {
    let x = float_view(x, tag, swap)?;
    match out_buf(out)? {
        OutBuf::F32(mut g) => {
            let o = contig(&mut g)?;
            run(py, move || crate::softmax::logsumexp(&x, o))
        }
        OutBuf::F64(mut g) => {
            let o = contig(&mut g)?;
            run(py, move || crate::softmax::logsumexp(&x, o))
        }
    }
}

#[pyfunction]
#[pyo3(signature = (x, tag, swap, b, out, sign=None))]
fn logsumexp_b(
    py: Python<'_>,
    x: &Arr,
    tag: &str,
    swap: bool,
    b: &Arr,
    out: &Arr,
    sign: Option<&Arr>,
) -> PyResult<()> {
    let x = float_view(x, tag, swap)?;
    let b = float_view(b, "f64", false)?;
    let sign = sign.map(out_buf).transpose()?;
    match (out_buf(out)?, sign) {
        (OutBuf::F32(mut g), None) => {
            let o = contig(&mut g)?;
            run(py, move || crate::softmax::logsumexp_b(&x, &b, o, None))
        }
        (OutBuf::F64(mut g), None) => {
            let o = contig(&mut g)?;
            run(py, move || crate::softmax::logsumexp_b(&x, &b, o, None))
        }
        (OutBuf::F32(mut g), Some(OutBuf::F32(mut h))) => {
            let (o, s) = (contig(&mut g)?, contig(&mut h)?);
            run(py, move || crate::softmax::logsumexp_b(&x, &b, o, Some(s)))
        }
        (OutBuf::F64(mut g), Some(OutBuf::F64(mut h))) => {
            let (o, s) = (contig(&mut g)?, contig(&mut h)?);
            run(py, move || crate::softmax::logsumexp_b(&x, &b, o, Some(s)))
        }
        _ => Err(PyValueError::new_err(
            "internal: out and sign dtypes differ",
        )),
    }
}

#[pyfunction]
fn softmax(py: Python<'_>, x: &Arr, tag: &str, swap: bool, log: bool, out: &Arr) -> PyResult<()> {
    let x = float_view(x, tag, swap)?;
    match out_buf(out)? {
        OutBuf::F32(mut g) => {
            let o = contig(&mut g)?;
            run(py, move || crate::softmax::softmax_f32(&x, log, o))
        }
        OutBuf::F64(mut g) => {
            let o = contig(&mut g)?;
            run(py, move || crate::softmax::softmax_f64(&x, log, o))
        }
    }
}

/// Exact order statistics (0-based ranks `ks`) of a 1-d C-contiguous float64 array without
/// NaN, which is only read (see `select::order_stats`).
#[pyfunction]
fn order_stats(py: Python<'_>, v: &Arr, ks: Vec<usize>) -> PyResult<Vec<f64>> {
    let v = arrays::f64_slice(v)?;
    run(py, move || crate::select::order_stats(&v, &ks))
}

/// Quantiles of the non-NaN values of a 1-d C-contiguous float64 array (linear interpolation
/// between order statistics; see `select::quantiles`) and the number of those values.
#[pyfunction]
fn quantiles(py: Python<'_>, v: &Arr, qs: Vec<f64>) -> PyResult<(Vec<f64>, usize)> {
    let v = arrays::f64_slice(v)?;
    run(py, move || crate::select::quantiles(&v, &qs))
}

/// Counts of a log-spaced histogram of a 1-d float64 array (see `select::log_hist`) and its
/// number of NaN values.
#[pyfunction]
fn log_hist<'py>(
    py: Python<'py>,
    v: &Arr<'py>,
    lo: f64,
    per_decade: u32,
    nb: usize,
    signed: bool,
) -> PyResult<(Bound<'py, numpy::PyArray1<u64>>, u64)> {
    let v = arrays::f64_slice(v)?;
    let b = crate::select::LogBins {
        lo,
        per_decade,
        nb,
        signed,
    };
    let (h, nan) = run(py, move || crate::select::log_hist(&v, b))?;
    Ok((numpy::PyArray1::from_vec(py, h), nan))
}

/// Read-only SIMD sum of every element: the streaming roofline of the benchmarks.
#[pyfunction]
fn roofline_sum(py: Python<'_>, x: &Arr, tag: &str, swap: bool) -> PyResult<f64> {
    let x = float_view(x, tag, swap)?;
    run(py, move || Ok(crate::softmax::stream_sum(&x)))
}

#[pyfunction]
#[pyo3(signature = (x, tag, swap, target, kind, ignore_index, top_k, n_bins, row_offset=0, nll_out=None, rank_out=None, conf_out=None, ties="target"))]
#[allow(clippy::too_many_arguments)]
fn eval_rows<'py>(
    py: Python<'py>,
    x: &Arr<'py>,
    tag: &str,
    swap: bool,
    target: &Arr<'py>,
    kind: &str,
    ignore_index: i64,
    top_k: Vec<usize>,
    n_bins: usize,
    row_offset: usize,
    nll_out: Option<&Arr<'py>>,
    rank_out: Option<&Arr<'py>>,
    conf_out: Option<&Arr<'py>>,
    ties: &str,
) -> PyResult<Bound<'py, PyDict>> {
    let (x, t) = (float_view(x, tag, swap)?, int_view(target)?);
    let ties_first = match ties {
        "target" => false,
        "first" => true,
        _ => {
            return Err(PyValueError::new_err(format!(
                "ties must be 'target' or 'first', got {ties:?}"
            )))
        }
    };
    let opt = EvalOptions {
        kind: Kind::parse(kind).map_err(to_py)?,
        ignore_index,
        top_k,
        n_bins,
        ties_first,
    };
    let mut guards = match (nll_out, rank_out) {
        (Some(a), Some(b)) => Some((rw::<f64>(a)?, rw::<i64>(b)?)),
        (None, None) => None,
        _ => return Err(PyValueError::new_err("nll_out and rank_out go together")),
    };
    let mut conf_guard = match conf_out {
        Some(c) if guards.is_some() => Some(rw::<f64>(c)?),
        Some(_) => return Err(PyValueError::new_err("conf_out needs nll_out and rank_out")),
        None => None,
    };
    let per_row = match guards.as_mut() {
        Some((a, b)) => Some(crate::eval::PerRow {
            nll: contig(a)?,
            rank: contig(b)?,
            conf: match conf_guard.as_mut() {
                Some(c) => Some(contig(c)?),
                None => None,
            },
        }),
        None => None,
    };
    let s = run(py, move || {
        crate::eval::evaluate(&x, &t, &opt, per_row).map_err(|e| shift_position(e, row_offset))
    })?;
    let d = PyDict::new(py);
    d.set_item("n", s.n)?;
    d.set_item("n_ignored", s.n_ignored)?;
    d.set_item("sum_nll", s.sum_nll)?;
    d.set_item("sum_nll_sq", s.sum_nll_sq)?;
    d.set_item("sum_entropy", s.sum_entropy)?;
    d.set_item("sum_brier", s.sum_brier)?;
    d.set_item("topk_correct", s.topk_correct)?;
    d.set_item("bin_count", s.bin_count)?;
    d.set_item("bin_conf_fixed", s.bin_conf_fixed)?;
    d.set_item("conf_nonfinite", s.conf_nonfinite)?;
    d.set_item("nll_inf", s.nll_inf)?;
    d.set_item("bin_correct", s.bin_correct)?;
    Ok(d)
}

/// Two-dump comparison of one chunk of rows; per-row outputs (kl, dp, nll_base, nll_new as
/// float64, same as int8) all or none, one element per row.
#[pyfunction]
#[pyo3(signature = (base, base_tag, base_swap, new, new_tag, new_swap, target, kind, ignore_index, row_offset=0, kl_out=None, dp_out=None, nll_base_out=None, nll_new_out=None, same_out=None))]
#[allow(clippy::too_many_arguments)]
fn compare_rows<'py>(
    py: Python<'py>,
    base: &Arr<'py>,
    base_tag: &str,
    base_swap: bool,
    new: &Arr<'py>,
    new_tag: &str,
    new_swap: bool,
    target: &Arr<'py>,
    kind: &str,
    ignore_index: i64,
    row_offset: usize,
    kl_out: Option<&Arr<'py>>,
    dp_out: Option<&Arr<'py>>,
    nll_base_out: Option<&Arr<'py>>,
    nll_new_out: Option<&Arr<'py>>,
    same_out: Option<&Arr<'py>>,
) -> PyResult<Bound<'py, PyDict>> {
    let a = float_view(base, base_tag, base_swap)?;
    let b = float_view(new, new_tag, new_swap)?;
    let t = int_view(target)?;
    let kind = Kind::parse(kind).map_err(to_py)?;
    // each per-row output is optional (the percentiles need KL and Δp only)
    let f64_out = |o: Option<&Arr<'py>>| o.map(rw::<f64>).transpose();
    let (mut gk, mut gd) = (f64_out(kl_out)?, f64_out(dp_out)?);
    let (mut gb, mut gn) = (f64_out(nll_base_out)?, f64_out(nll_new_out)?);
    let mut gs = same_out.map(rw::<i8>).transpose()?;
    let any = gk.is_some() || gd.is_some() || gb.is_some() || gn.is_some() || gs.is_some();
    let out = if any {
        Some(crate::compare::CompareOut {
            kl: gk.as_mut().map(contig).transpose()?,
            dp: gd.as_mut().map(contig).transpose()?,
            nll_base: gb.as_mut().map(contig).transpose()?,
            nll_new: gn.as_mut().map(contig).transpose()?,
            same: gs.as_mut().map(contig).transpose()?,
        })
    } else {
        None
    };
    let s = run(py, move || {
        crate::compare::compare_rows(&a, &b, &t, kind, ignore_index, out)
            .map_err(|e| shift_position(e, row_offset))
    })?;
    let d = PyDict::new(py);
    d.set_item("n", s.n)?;
    d.set_item("n_ignored", s.n_ignored)?;
    d.set_item("sum_kl", s.sum_kl)?;
    d.set_item("sum_kl_sq", s.sum_kl_sq)?;
    d.set_item("sum_dnll", s.sum_dnll)?;
    d.set_item("sum_dnll_sq", s.sum_dnll_sq)?;
    d.set_item("sum_nll_base", s.sum_nll_base)?;
    d.set_item("sum_nll_base_sq", s.sum_nll_base_sq)?;
    d.set_item("sum_nll_new", s.sum_nll_new)?;
    d.set_item("sum_nll_new_sq", s.sum_nll_new_sq)?;
    d.set_item("sum_nll_cross", s.sum_nll_cross)?;
    d.set_item("sum_dp", s.sum_dp)?;
    d.set_item("sum_dp_sq", s.sum_dp_sq)?;
    d.set_item("sum_dp_4", s.sum_dp_4)?;
    d.set_item("top1_agree", s.top1_agree)?;
    Ok(d)
}

/// The SIMD path in use ("scalar", "avx2", "avx512" or "neon").
#[pyfunction]
fn simd_path() -> &'static str {
    simd::current().name()
}

/// Forces a SIMD path; ValueError if unknown or not supported by this CPU.
#[pyfunction]
fn set_simd_path(name: &str) -> PyResult<()> {
    let p = simd::Path::parse(name).ok_or_else(|| {
        PyValueError::new_err(format!(
            "unknown SIMD path {name:?}: use scalar, avx2, avx512 or neon"
        ))
    })?;
    if !simd::set_path(p) {
        return Err(PyValueError::new_err(format!(
            "SIMD path {name:?} is not supported by this CPU"
        )));
    }
    Ok(())
}

/// Paths this CPU can run.
#[pyfunction]
fn available_simd_paths() -> Vec<&'static str> {
    simd::Path::ALL
        .into_iter()
        .filter(|p| p.available())
        .map(super::simd::Path::name)
        .collect()
}

/// The short-row scheme in use ("gather" or "transpose"; see `simd::Short`).
#[pyfunction]
fn short_scheme() -> &'static str {
    simd::short_scheme().name()
}

/// Forces the short-row scheme ("gather", "transpose", or "auto" for this CPU's default).
#[pyfunction]
fn set_short_scheme(name: &str) -> PyResult<()> {
    let s = match name {
        "auto" => simd::Short::detect(),
        _ => simd::Short::parse(name).ok_or_else(|| {
            PyValueError::new_err(format!(
                "unknown short-row scheme {name:?}; expected 'gather', 'transpose' or 'auto'"
            ))
        })?,
    };
    simd::set_short_scheme(s);
    Ok(())
}

/// Error text if FASTNLL_SIMD names an unknown or unavailable path, else None.
#[pyfunction]
fn simd_env_problem() -> Option<String> {
    simd::path_from_env().err()
}

#[pyfunction]
fn get_num_threads() -> usize {
    parallel::num_threads()
}

#[pyfunction]
fn set_num_threads(n: usize) {
    parallel::set_num_threads(n);
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(cross_entropy, m)?)?;
    m.add_function(wrap_pyfunction!(nll_loss, m)?)?;
    m.add_function(wrap_pyfunction!(cross_entropy_soft, m)?)?;
    m.add_function(wrap_pyfunction!(bce_with_logits, m)?)?;
    m.add_function(wrap_pyfunction!(logsumexp, m)?)?;
    m.add_function(wrap_pyfunction!(logsumexp_b, m)?)?;
    m.add_function(wrap_pyfunction!(softmax, m)?)?;
    m.add_function(wrap_pyfunction!(roofline_sum, m)?)?;
    m.add_function(wrap_pyfunction!(order_stats, m)?)?;
    m.add_function(wrap_pyfunction!(log_hist, m)?)?;
    m.add_function(wrap_pyfunction!(quantiles, m)?)?;
    m.add_function(wrap_pyfunction!(eval_rows, m)?)?;
    m.add_function(wrap_pyfunction!(compare_rows, m)?)?;
    m.add_function(wrap_pyfunction!(simd_path, m)?)?;
    m.add_function(wrap_pyfunction!(short_scheme, m)?)?;
    m.add_function(wrap_pyfunction!(set_short_scheme, m)?)?;
    m.add_function(wrap_pyfunction!(set_simd_path, m)?)?;
    m.add_function(wrap_pyfunction!(available_simd_paths, m)?)?;
    m.add_function(wrap_pyfunction!(simd_env_problem, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    Ok(())
}
