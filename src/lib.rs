//! fastnll: log-sum-exp, log-softmax, NLL, cross-entropy and one-pass metrics over rows of any
//! length, reading each input once, with runtime-dispatched SIMD and rayon.
//!
//! The core is pure Rust (no Python); the PyO3 bindings live in `py` behind the `python`
//! feature. Inputs are [`View`]s of caller memory with any strides, dtype f32/f64/f16/bf16.
//!
//! The crate-level functions ([`cross_entropy`], [`logsumexp`], [`evaluate`], ...) take
//! [`ndarray`] views (module [`nd`]); the `View`-level ones are in [`loss`], [`softmax`] and
//! [`eval`].

pub mod compare;
mod compare_lanes;
pub mod error;
pub mod eval;
pub(crate) mod kernel;
pub mod loss;
pub mod nd;
pub mod parallel;
pub mod rows;
pub mod select;
pub mod simd;
pub mod softmax;
pub(crate) mod stage;
pub mod tensor;

#[cfg(feature = "python")]
mod py;

pub use compare::{compare_rows, CompareOut, CompareSums};
pub use error::{Error, Result};
pub use eval::{EvalOptions, EvalSums, Kind};
pub use kernel::Stats;
pub use loss::{bce_with_logits, ClassOptions, Total};
pub use nd::{
    compare, cross_entropy, cross_entropy_rows, cross_entropy_soft, evaluate, log_softmax,
    logsumexp, nll_loss, nll_loss_rows, softmax, Float, Index,
};
pub use softmax::{logsumexp_b, softmax_f32, softmax_f64, stream_sum};
pub use tensor::{DType, IntType, IntView, View};
/// The `ndarray` and `half` crates this API takes (for `fastnll::ndarray::array!`, `bf16`).
pub use {half, ndarray};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_layout;
