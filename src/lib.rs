//! fastnll: log-sum-exp, log-softmax, NLL, cross-entropy and one-pass metrics over rows of any
//! length, reading each input once, with runtime-dispatched SIMD and rayon.
//!
//! The core is pure Rust (no Python); the PyO3 bindings live in `py` behind the `python`
//! feature. Inputs are [`View`]s of caller memory with any strides, dtype f32/f64/f16/bf16.

pub mod compare;
pub mod error;
pub mod eval;
pub(crate) mod kernel;
pub mod loss;
pub mod parallel;
pub mod rows;
pub mod simd;
pub mod softmax;
pub(crate) mod stage;
pub mod tensor;

#[cfg(feature = "python")]
mod py;

pub use error::{Error, Result};
pub use compare::{compare, compare_rows, CompareOut, CompareSums};
pub use eval::{evaluate, EvalOptions, EvalSums, Kind};
pub use kernel::Stats;
pub use loss::{bce_with_logits, cross_entropy, cross_entropy_soft, nll_loss, ClassOptions, Total};
pub use softmax::{logsumexp, logsumexp_b, softmax_f32, softmax_f64, stream_sum};
pub use tensor::{DType, IntType, IntView, View};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_layout;
