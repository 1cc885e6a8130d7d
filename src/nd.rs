//! The public Rust API: the same losses and metrics as the Python package, over [`ndarray`]
//! views of any layout (C order, Fortran order, sliced, transposed, negative strides), read in
//! place.
//!
//! Logits are `ArrayView<A, D>` with the classes on the last axis, `A` one of `f32`, `f64`,
//! [`half::f16`] and [`half::bf16`]; class targets are `ArrayView<T, E>` of the logits' shape
//! without its last axis, `T` any primitive integer. Per-row results are `f32` for 16/32-bit
//! input and `f64` for `f64` input ([`Float::Out`]), as in Python.
//!
//! ```
//! use fastnll::ndarray::{array, s};
//! use fastnll::ClassOptions;
//!
//! let logits = array![[2.0f32, 0.0, -1.0], [0.5, 0.5, 3.0]];
//! let targets = array![0i64, 2];
//! let total = fastnll::cross_entropy(logits.view(), targets.view(), &ClassOptions::default())?;
//! // the mean over rows, as torch.nn.functional.cross_entropy gives it
//! assert!((total.mean() - 0.160_927_20).abs() < 1e-6);
//!
//! // Any view: here a transposed one (classes were the first axis), and a slice of rows.
//! let by_class = logits.t().to_owned();
//! let per_row = fastnll::cross_entropy_rows(by_class.t(), targets.view(), &ClassOptions::default())?;
//! assert_eq!(per_row.shape(), &[2]);
//! let first = fastnll::cross_entropy(logits.slice(s![..1, ..]), targets.slice(s![..1]),
//!                                    &ClassOptions::default())?;
//! assert!((first.sum - per_row[0] as f64).abs() < 1e-6);
//! # Ok::<(), fastnll::Error>(())
//! ```

// Views are taken by value, as ndarray's own functions take them (they are two pointers and
// a shape: `logits.view()` at the call site, like a slice).
#![allow(clippy::needless_pass_by_value)]

use crate::error::{Error, Result};
use crate::eval::{self, CompareSums, EvalOptions, EvalSums, Kind};
use crate::loss::{self, ClassOptions, Out, Total};
use crate::softmax as sm;
use crate::tensor::{DType, IntType, IntView, View};
use ndarray::{Array, ArrayView, Axis, Dimension};

mod sealed {
    pub trait Sealed {}
}

/// A logits element type the core reads: `f32`, `f64`, [`half::f16`], [`half::bf16`].
pub trait Float: Copy + Send + Sync + 'static + sealed::Sealed {
    /// The core's tag of this type.
    const DTYPE: DType;
    /// The per-row output type: `f32` for 16/32-bit input, `f64` for `f64`.
    type Out: Out + 'static;
    #[doc(hidden)]
    fn softmax(x: &View, log: bool, out: &mut [Self::Out]) -> Result<()>;
}

macro_rules! float {
    ($t:ty, $tag:ident, $out:ty, $soft:ident) => {
        impl sealed::Sealed for $t {}
        impl Float for $t {
            const DTYPE: DType = DType::$tag;
            type Out = $out;
            fn softmax(x: &View, log: bool, out: &mut [$out]) -> Result<()> {
                sm::$soft(x, log, out)
            }
        }
    };
}
float!(f32, F32, f32, softmax_f32);
float!(f64, F64, f64, softmax_f64);
float!(half::f16, F16, f32, softmax_f32);
float!(half::bf16, BF16, f32, softmax_f32);

/// A class-index element type: any primitive integer.
pub trait Index: Copy + Send + Sync + 'static + sealed::Sealed {
    /// The core's tag of this type.
    const TYPE: IntType;
}

macro_rules! index {
    ($($t:ty => $tag:ident),*) => {$(
        impl sealed::Sealed for $t {}
        impl Index for $t {
            const TYPE: IntType = IntType::$tag;
        }
    )*};
}
index!(i8 => I8, i16 => I16, i32 => I32, i64 => I64, u8 => U8, u16 => U16, u32 => U32,
       u64 => U64);
#[cfg(target_pointer_width = "64")]
index!(isize => I64, usize => U64);
#[cfg(target_pointer_width = "32")]
index!(isize => I32, usize => U32);

fn byte_strides<A, D: Dimension>(x: &ArrayView<'_, A, D>) -> Vec<isize> {
    let size = std::mem::size_of::<A>() as isize;
    x.strides().iter().map(|&s| s * size).collect()
}

/// The core's [`View`] of an ndarray view (no copy), for the lower-level functions of
/// [`crate::loss`], [`crate::softmax`](mod@crate::softmax) and [`crate::eval`]. A 0-d view is an error (the last
/// axis holds the classes).
pub fn view<'a, A: Float, D: Dimension>(x: &ArrayView<'a, A, D>) -> Result<View<'a>> {
    if x.ndim() == 0 {
        return Err(Error::Shape(
            "input must have at least 1 dimension (classes on the last axis), got a 0-d array"
                .into(),
        ));
    }
    // SAFETY: an ArrayView<'a> guarantees every element it addresses is readable for 'a;
    // the strides are its own (in bytes), so the View addresses exactly those elements.
    unsafe {
        View::new(
            x.as_ptr().cast::<u8>(),
            A::DTYPE,
            x.shape(),
            &byte_strides(x),
            false,
        )
    }
}

/// The core's [`IntView`] of an ndarray view of class indices (no copy).
#[must_use]
pub fn int_view<'a, T: Index, D: Dimension>(t: &ArrayView<'a, T, D>) -> IntView<'a> {
    // SAFETY: as in `view`: the view's elements are readable for 'a at its strides.
    unsafe {
        IntView::new(
            t.as_ptr().cast::<u8>(),
            T::TYPE,
            t.shape(),
            &byte_strides(t),
        )
    }
}

fn lead_dim<D: Dimension>(shape: &D) -> D::Smaller {
    shape.try_remove_axis(Axis(shape.ndim() - 1))
}

/// Cross-entropy of logits `[..., C]` against class indices `[...]`, as PyTorch's
/// `F.cross_entropy` with the class axis last: [`Total::mean`] is `reduction="mean"`,
/// [`Total::sum`] is `"sum"`. Errors for a target outside `[0, C)` that is not
/// `opts.ignore_index` (naming it and its position) and for mismatched shapes.
///
/// ```
/// use fastnll::ndarray::Array2;
/// use fastnll::{half::bf16, ClassOptions};
///
/// let logits = Array2::from_shape_fn((4, 3), |(i, j)| bf16::from_f32((i * 3 + j) as f32 / 4.0));
/// let targets = fastnll::ndarray::array![2u8, 1, 0, 7];
/// let opts = ClassOptions { ignore_index: 7, ..ClassOptions::default() };
/// let total = fastnll::cross_entropy(logits.view(), targets.view(), &opts)?;
/// assert_eq!(total.weight, 3.0); // the row with target 7 is ignored
/// assert!(fastnll::cross_entropy(logits.view(), targets.view(), &ClassOptions::default())
///     .unwrap_err().to_string().contains("target 7 at position 3"));
/// # Ok::<(), fastnll::Error>(())
/// ```
pub fn cross_entropy<A: Float, T: Index, D: Dimension, E: Dimension>(
    logits: ArrayView<'_, A, D>,
    target: ArrayView<'_, T, E>,
    opts: &ClassOptions,
) -> Result<Total> {
    loss::cross_entropy::<A::Out>(&view(&logits)?, &int_view(&target), opts, None)
}

/// Per-row cross-entropy (`reduction="none"`), an array of the logits' shape without its last
/// axis. Ignored rows give 0.
pub fn cross_entropy_rows<A: Float, T: Index, D: Dimension, E: Dimension>(
    logits: ArrayView<'_, A, D>,
    target: ArrayView<'_, T, E>,
    opts: &ClassOptions,
) -> Result<Array<A::Out, D::Smaller>> {
    let x = view(&logits)?;
    let mut out = vec![A::Out::default(); x.rows()];
    loss::cross_entropy(&x, &int_view(&target), opts, Some(&mut out))?;
    shaped(lead_dim(&logits.raw_dim()), out)
}

/// Cross-entropy against class probabilities of the logits' shape (PyTorch's soft targets;
/// `opts.ignore_index` does not apply). [`Total::mean`] divides by the number of rows.
pub fn cross_entropy_soft<A: Float, B: Float, D: Dimension>(
    logits: ArrayView<'_, A, D>,
    probs: ArrayView<'_, B, D>,
    opts: &ClassOptions,
) -> Result<Total> {
    loss::cross_entropy_soft::<A::Out>(&view(&logits)?, &view(&probs)?, opts, None)
}

/// Negative log-likelihood of log-probabilities `[..., C]`, as PyTorch's `F.nll_loss`.
/// A gathered value above 1e-5 cannot be a log-probability and is an error.
pub fn nll_loss<A: Float, T: Index, D: Dimension, E: Dimension>(
    log_probs: ArrayView<'_, A, D>,
    target: ArrayView<'_, T, E>,
    opts: &ClassOptions,
) -> Result<Total> {
    loss::nll_loss::<A::Out>(&view(&log_probs)?, &int_view(&target), opts, None)
}

/// Per-row NLL (`reduction="none"`); ignored rows give 0.
pub fn nll_loss_rows<A: Float, T: Index, D: Dimension, E: Dimension>(
    log_probs: ArrayView<'_, A, D>,
    target: ArrayView<'_, T, E>,
    opts: &ClassOptions,
) -> Result<Array<A::Out, D::Smaller>> {
    let x = view(&log_probs)?;
    let mut out = vec![A::Out::default(); x.rows()];
    loss::nll_loss(&x, &int_view(&target), opts, Some(&mut out))?;
    shaped(lead_dim(&log_probs.raw_dim()), out)
}

/// `log Σ_c exp(x[..., c])` over the last axis, as `scipy.special.logsumexp(x, axis=-1)`.
///
/// ```
/// let x = fastnll::ndarray::array![[0.0f64, 0.0], [1.0, f64::NEG_INFINITY]];
/// let lse = fastnll::logsumexp(x.view())?;
/// assert!((lse[0] - 2f64.ln()).abs() < 1e-15 && lse[1] == 1.0);
/// # Ok::<(), fastnll::Error>(())
/// ```
pub fn logsumexp<A: Float, D: Dimension>(
    x: ArrayView<'_, A, D>,
) -> Result<Array<A::Out, D::Smaller>> {
    let v = view(&x)?;
    let mut out = vec![A::Out::default(); v.rows()];
    sm::logsumexp(&v, &mut out)?;
    shaped(lead_dim(&x.raw_dim()), out)
}

/// `x - logsumexp(x)` over the last axis, as PyTorch's `log_softmax(x, dim=-1)`, in a new
/// C-order array of the input's shape.
pub fn log_softmax<A: Float, D: Dimension>(x: ArrayView<'_, A, D>) -> Result<Array<A::Out, D>> {
    softmax_any(x, true)
}

/// `exp(log_softmax(x))` over the last axis, as PyTorch's `softmax(x, dim=-1)`.
pub fn softmax<A: Float, D: Dimension>(x: ArrayView<'_, A, D>) -> Result<Array<A::Out, D>> {
    softmax_any(x, false)
}

fn softmax_any<A: Float, D: Dimension>(
    x: ArrayView<'_, A, D>,
    log: bool,
) -> Result<Array<A::Out, D>> {
    let v = view(&x)?;
    let mut out = vec![A::Out::default(); x.len()];
    A::softmax(&v, log, &mut out)?;
    shaped(x.raw_dim(), out)
}

/// One-pass metrics of predictions `[..., C]` (`opts.kind`: logits, log-probabilities or
/// probabilities) against class indices: mergeable sums ([`EvalSums::merge`]) of the NLL, its
/// square, entropy, Brier score, top-k hits and calibration bins.
///
/// ```
/// use fastnll::{EvalOptions, Kind};
///
/// let x = fastnll::ndarray::array![[3.0f32, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 3.0]];
/// let t = fastnll::ndarray::array![0i32, 1, 0];
/// let opts = EvalOptions {
///     kind: Kind::Logits,
///     ignore_index: -100,
///     top_k: vec![1, 2],
///     n_bins: 10,
///     ties_first: false,
/// };
/// let sums = fastnll::evaluate(x.view(), t.view(), &opts)?;
/// // the last row's target (0) ties with class 1 for second place: a tie counts as a hit
/// assert_eq!((sums.n, sums.topk_correct.clone()), (3, vec![2, 3]));
/// assert!((sums.sum_nll / 3.0 - 1.094_923).abs() < 1e-5); // NumPy float64: 1.0949229564
/// # Ok::<(), fastnll::Error>(())
/// ```
pub fn evaluate<A: Float, T: Index, D: Dimension, E: Dimension>(
    preds: ArrayView<'_, A, D>,
    target: ArrayView<'_, T, E>,
    opts: &EvalOptions,
) -> Result<EvalSums> {
    eval::evaluate(&view(&preds)?, &int_view(&target), opts, None)
}

/// KL(base || new), NLL difference (new - base) and top-1 agreement of two dumps of the same
/// shape (their dtypes may differ), reading each once.
pub fn compare<A: Float, B: Float, T: Index, D: Dimension, E: Dimension>(
    base: ArrayView<'_, A, D>,
    new: ArrayView<'_, B, D>,
    target: ArrayView<'_, T, E>,
    kind: Kind,
    ignore_index: i64,
) -> Result<CompareSums> {
    eval::compare(
        &view(&base)?,
        &view(&new)?,
        &int_view(&target),
        kind,
        ignore_index,
    )
}

fn shaped<O, D: Dimension>(dim: D, out: Vec<O>) -> Result<Array<O, D>> {
    Array::from_shape_vec(dim, out).map_err(|e| Error::Shape(format!("output shape: {e}")))
}
