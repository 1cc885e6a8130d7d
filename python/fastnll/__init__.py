"""fastnll: exact, memory-bandwidth losses and metrics for prediction dumps.

Losses follow PyTorch (``cross_entropy``, ``nll_loss``, ``binary_cross_entropy_with_logits``)
with the class axis last; ``logsumexp`` follows SciPy. Inputs are float32, float64, float16 or
bfloat16 (``ml_dtypes``) arrays of any layout, read in place by a Rust core with SIMD and
threads. See the README for the numerics and the benchmarks.
"""

from __future__ import annotations

import importlib.metadata as _metadata
import os as _os
import warnings as _warnings

from . import _core
from ._losses import binary_cross_entropy_with_logits, cross_entropy, nll_loss
from ._softmax import log_softmax, logsumexp, softmax
from ._temperature import TemperatureFit, fit_temperature
from ._traps import InputWarning
from .evaluate import BinStat, CompareReport, EvalReport, Evaluator, compare, evaluate
from .readers import DumpError

try:
    __version__: str = _metadata.version("fastnll")
except _metadata.PackageNotFoundError:  # pragma: no cover - imported from a source tree
    __version__ = "0+unknown"


def set_num_threads(n: int) -> None:
    """Worker threads for the next calls (0 restores the default: ``FASTNLL_NUM_THREADS``,
    then ``RAYON_NUM_THREADS``, then the number of CPUs). Results do not depend on it."""
    if int(n) < 0:
        raise ValueError(f"number of threads must be >= 0, got {n}")
    _core.set_num_threads(int(n))


def get_num_threads() -> int:
    """Worker threads the next call will use."""
    return int(_core.get_num_threads())


def simd_path() -> str:
    """The SIMD code path in use: ``"avx512"``, ``"avx2"``, ``"neon"`` or ``"scalar"``."""
    return str(_core.simd_path())


def set_simd_path(name: str) -> None:
    """Force a SIMD path (``"scalar"``, ``"avx2"``, ``"avx512"``, ``"neon"``) for this process, as the
    ``FASTNLL_SIMD`` environment variable does at start-up. ValueError if unavailable."""
    _core.set_simd_path(name)


def available_simd_paths() -> list[str]:
    """The SIMD paths this CPU can run."""
    return list(_core.available_simd_paths())


def _warm_up() -> None:
    """The core's first array argument makes rust-numpy import NumPy's C API (Python code):
    do it now, with Ctrl-C held back, so a KeyboardInterrupt there cannot become a panic."""
    import numpy as _np

    from ._atomic import _signals_deferred

    with _signals_deferred():
        _core.roofline_sum(_np.zeros(1, _np.float32), "f32", False)


_warm_up()

if _os.environ.get("FASTNLL_SIMD") and _core.simd_env_problem():
    _warnings.warn(f"{_core.simd_env_problem()}; using {simd_path()}", RuntimeWarning, stacklevel=2)

__all__ = [
    "BinStat",
    "CompareReport",
    "DumpError",
    "EvalReport",
    "Evaluator",
    "InputWarning",
    "TemperatureFit",
    "available_simd_paths",
    "binary_cross_entropy_with_logits",
    "compare",
    "cross_entropy",
    "evaluate",
    "fit_temperature",
    "get_num_threads",
    "log_softmax",
    "logsumexp",
    "nll_loss",
    "set_num_threads",
    "set_simd_path",
    "simd_path",
    "softmax",
]
