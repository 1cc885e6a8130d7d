#!/usr/bin/env python3
"""CPU-time ratios of fastnll calls to a one-thread read of the same bytes.

    python benches/cpu_ratio.py [--threads 1] [--mib 128] [C ...]

For a shared machine: the CPU time a call consumes (time.process_time, all threads) is far
less disturbed by other processes than its wall time, so these ratios compare kernels and
short-row schemes (gather vs transpose) when the matrix in bench.py cannot be run quietly.
A ratio of 1.0 means the call costs as much CPU as reading its bytes once.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import fastnll
from fastnll import _arrays, _core


def cpu(f: Callable[[], Any], repeat: int = 5) -> float:
    f()
    ts = []
    for _ in range(repeat):
        t0 = time.process_time()
        f()
        ts.append(time.process_time() - t0)
    return sorted(ts)[len(ts) // 2]


def one_c(c: int, mib: int, rng: np.random.Generator) -> None:
    """One line of the table: the ratios at C classes."""
    n = (mib << 20) // (4 * c)
    x = rng.standard_normal((n, c), dtype=np.float32) * 3
    t = rng.integers(0, c, n)
    v, tv = _arrays.core_view(x), _arrays.core_view(t.view(np.float32))
    roof = cpu(lambda: (_core.roofline_sum(*v), _core.roofline_sum(*tv)))
    ce = {}
    for scheme in ("gather", "transpose"):
        _core.set_short_scheme(scheme)
        ce[scheme] = cpu(lambda: fastnll.cross_entropy(x, t))
    _core.set_short_scheme("auto")
    ev = cpu(lambda: fastnll.evaluate(x, t, check_kind=False, progress=False))
    p = np.exp(x - x.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    evp = cpu(lambda: fastnll.evaluate(p, t, kind="probs", progress=False))
    y = (rng.random(x.shape) > 0.5).astype(np.float32)
    vy = _arrays.core_view(y)
    roof_b = cpu(lambda: (_core.roofline_sum(*v), _core.roofline_sum(*vy)))
    bce = cpu(lambda: fastnll.binary_cross_entropy_with_logits(x, y))
    print(
        f"{c:>7} {(x.nbytes + t.nbytes) / roof / 1e9:>9.1f} {roof / ce['gather']:>9.2f} "
        f"{roof / ce['transpose']:>9.2f} {roof / ev:>8.2f} {roof / evp:>6.2f} {roof_b / bce:>6.2f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("classes", nargs="*", type=int, default=[2, 3, 10, 32, 1000, 32000])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mib", type=int, default=128)
    a = ap.parse_args()
    fastnll.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    print(f"threads={a.threads} simd={fastnll.simd_path()} default scheme={_core.short_scheme()}")
    print(
        f"{'C':>7} {'roof GB/s':>9} {'ce gather':>9} {'ce transp':>9} {'evaluate':>8} {'probs':>6} {'bce':>6}"
    )
    for c in a.classes:
        one_c(c, a.mib, rng)


if __name__ == "__main__":
    main()
