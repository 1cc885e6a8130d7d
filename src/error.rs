//! The core's one error type. The bindings map each variant to a Python exception class.

use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// A class index outside [0, classes) that is not the ignore index (IndexError).
    TargetOutOfRange {
        value: i128,
        position: Vec<usize>,
        classes: usize,
    },
    /// nll_loss was handed something that cannot be log-probabilities (ValueError).
    NotLogProbabilities { value: f64, position: Vec<usize> },
    /// Shapes that do not fit together (ValueError).
    Shape(String),
    /// An option outside its domain (ValueError).
    Value(String),
    /// A dtype the core does not read (TypeError).
    Type(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// `3` for one-dimensional positions, `(1, 2)` otherwise, as NumPy prints an index.
pub fn fmt_position(p: &[usize]) -> String {
    match p {
        [i] => i.to_string(),
        _ => format!(
            "({})",
            p.iter()
                .map(std::string::ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::TargetOutOfRange {
                value,
                position,
                classes,
            } => write!(
                f,
                "target {value} at position {} is out of range for {classes} classes \
                 (valid: 0..{}, or the ignore_index)",
                fmt_position(position),
                classes.saturating_sub(1)
            ),
            Error::NotLogProbabilities { value, position } => write!(
                f,
                "nll_loss expects log-probabilities (all <= 0), but the input at the target \
                 of position {} is {value}: the input looks like probabilities (or logits). \
                 Pass np.log(probs), or use cross_entropy(logits, target) on raw logits",
                fmt_position(position)
            ),
            Error::Shape(s) | Error::Value(s) | Error::Type(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for Error {}
