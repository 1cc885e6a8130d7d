"""Type stubs of the compiled core (src/py/mod.rs). Internal: use the functions in ``fastnll``.

Float inputs are passed as ``(view, tag, swap)`` from ``fastnll._arrays.core_view``: ``tag`` is
"f32", "f64", "f16" or "bf16"; ``swap`` says the bytes are in non-native order. Arrays may have
any strides. Per-row outputs are C-contiguous arrays allocated by the caller.
"""

from typing import Any

import numpy as np
from numpy.typing import NDArray

# PyO3 gives the module an __all__ of every #[pyfunction]; stubtest checks the two agree.
__all__ = [
    "available_simd_paths",
    "bce_with_logits",
    "compare_rows",
    "cross_entropy",
    "cross_entropy_soft",
    "eval_rows",
    "get_num_threads",
    "log_hist",
    "logsumexp",
    "logsumexp_b",
    "nll_loss",
    "order_stats",
    "quantiles",
    "roofline_sum",
    "set_num_threads",
    "set_short_scheme",
    "set_simd_path",
    "short_scheme",
    "simd_env_problem",
    "simd_path",
    "softmax",
]

def cross_entropy(
    x: np.ndarray,
    tag: str,
    swap: bool,
    target: np.ndarray,
    weight: NDArray[np.float64] | None,
    ignore_index: int,
    label_smoothing: float,
    out: np.ndarray | None = None,
) -> tuple[float, float]:
    """(Σ loss, Σ weight) of integer-target cross-entropy; per-row losses into ``out``."""

def nll_loss(
    x: np.ndarray,
    tag: str,
    swap: bool,
    target: np.ndarray,
    weight: NDArray[np.float64] | None,
    ignore_index: int,
    out: np.ndarray | None = None,
) -> tuple[float, float]:
    """(Σ loss, Σ weight) of NLL of log-probabilities; ValueError if a gathered value > 0."""

def cross_entropy_soft(
    x: np.ndarray,
    tag: str,
    swap: bool,
    y: np.ndarray,
    ytag: str,
    yswap: bool,
    weight: NDArray[np.float64] | None,
    label_smoothing: float,
    out: np.ndarray | None = None,
) -> tuple[float, float]:
    """(Σ loss, number of rows) of cross-entropy against probability targets."""

def bce_with_logits(
    x: np.ndarray,
    tag: str,
    swap: bool,
    y: np.ndarray,
    ytag: str,
    yswap: bool,
    weight: np.ndarray | None,
    wtag: str,
    wswap: bool,
    pos_weight: NDArray[np.float64] | None,
    out: np.ndarray | None = None,
) -> tuple[float, float]:
    """(Σ loss, number of elements) of binary cross-entropy with logits."""

def logsumexp(x: np.ndarray, tag: str, swap: bool, out: np.ndarray) -> None:
    """log Σ exp over the last axis into ``out`` (float32 or float64)."""

def logsumexp_b(
    x: np.ndarray,
    tag: str,
    swap: bool,
    b: NDArray[np.float64],
    out: np.ndarray,
    sign: np.ndarray | None = None,
) -> None:
    """SciPy's weighted logsumexp over the last axis; signs into ``sign`` if given."""

def softmax(x: np.ndarray, tag: str, swap: bool, log: bool, out: np.ndarray) -> None:
    """log_softmax (``log``) or softmax over the last axis into a C-contiguous ``out``."""

def roofline_sum(x: np.ndarray, tag: str, swap: bool) -> float:
    """Read-only SIMD sum of every element: the benchmarks' bandwidth roofline."""

def order_stats(v: np.ndarray, ks: list[int]) -> list[float]:
    """Exact order statistics (0-based ranks) of a 1-d C-contiguous float64 array without NaN,
    which is only read."""

def log_hist(
    v: np.ndarray, lo: float, per_decade: int, nb: int, signed: bool
) -> tuple[np.ndarray, int]:
    """Counts (uint64) of a 1-d C-contiguous float64 array in a log-spaced histogram (nb bins
    on edges lo·10^(k/per_decade), a zero and an overflow bin; mirrored when ``signed``) and
    the number of NaN values."""

def quantiles(v: np.ndarray, qs: list[float]) -> tuple[list[float], int]:
    """Quantiles (linear between order statistics) of the non-NaN values of a 1-d C-contiguous
    float64 array, which is only read, and the number of those values."""

def eval_rows(
    x: np.ndarray,
    tag: str,
    swap: bool,
    target: np.ndarray,
    kind: str,
    ignore_index: int,
    top_k: list[int],
    n_bins: int,
    row_offset: int = 0,
    nll_out: NDArray[np.float64] | None = None,
    rank_out: NDArray[np.int64] | None = None,
    conf_out: NDArray[np.float64] | None = None,
    ties: str = "target",
) -> dict[str, Any]:
    """One-pass metric sums of a dump chunk (see docs/evaluate.md). ``conf_out`` (with
    ``nll_out``/``rank_out``) receives each row's confidence (max probability; NaN for ignored
    rows); ``ties="first"`` ranks by the argmax rule (ties before the target count)."""

def compare_rows(
    base: np.ndarray,
    base_tag: str,
    base_swap: bool,
    new: np.ndarray,
    new_tag: str,
    new_swap: bool,
    target: np.ndarray,
    kind: str,
    ignore_index: int,
    row_offset: int = 0,
    kl_out: np.ndarray | None = None,
    dp_out: np.ndarray | None = None,
    nll_base_out: np.ndarray | None = None,
    nll_new_out: np.ndarray | None = None,
    same_out: np.ndarray | None = None,
) -> dict[str, Any]:
    """Sums of KL(base || new), Δp, both NLLs (and squares, cross product) and top-1
    agreement of two dump chunks; per-row float64 kl/dp/nll_base/nll_new and int8 same
    (-1 = ignored) outputs, each optional."""

def simd_path() -> str: ...
def set_simd_path(name: str) -> None: ...
def available_simd_paths() -> list[str]: ...
def simd_env_problem() -> str | None: ...
def short_scheme() -> str: ...
def set_short_scheme(name: str) -> None: ...
def get_num_threads() -> int: ...
def set_num_threads(n: int) -> None: ...
