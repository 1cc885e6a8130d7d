"""pytest-benchmark set-up for the matrix cells (``pytest benches/ --benchmark-only``).

Environment: FASTNLL_BENCH_MIB (MiB per float input, default 4), FASTNLL_BENCH_GRID (a selection
of cases.py: matrix (default), quick or full), FASTNLL_BENCH_CASES (a regex on cell names),
FASTNLL_BENCH_THREADS (default: all cores), FASTNLL_BENCH_PEERS (comma-separated, any of
roofline, torch, compile: extra benchmarks in each cell's group; default none).
"""

from __future__ import annotations

import os
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cases  # noqa: E402

MIB = float(os.environ.get("FASTNLL_BENCH_MIB", "4"))
GRID = os.environ.get("FASTNLL_BENCH_GRID", "matrix")
PATTERN = os.environ.get("FASTNLL_BENCH_CASES") or None
THREADS = int(os.environ.get("FASTNLL_BENCH_THREADS", "0")) or (os.cpu_count() or 1)
PEERS = [p for p in os.environ.get("FASTNLL_BENCH_PEERS", "").split(",") if p]


@pytest.fixture(scope="session")
def fnl():
    """fastnll with FASTNLL_BENCH_THREADS threads."""
    os.environ["FASTNLL_NUM_THREADS"] = str(THREADS)
    import fastnll

    fastnll.set_num_threads(THREADS)
    return fastnll


@pytest.fixture(scope="session")
def data():
    """One DataCache for the session (cells run in cases.run_order, so each array is built once);
    dump files live in a temporary directory removed at the end."""
    with tempfile.TemporaryDirectory(prefix="fastnll-bench-", dir=os.environ.get("TMPDIR", "/var/tmp")) as d:
        cache = cases.DataCache(int(MIB * cases.MiB), d)
        yield cache
        cache.drop_files()


@pytest.fixture(scope="session")
def torch_mod():
    torch = pytest.importorskip("torch", reason="FASTNLL_BENCH_PEERS names torch, which is not installed")
    torch.set_num_threads(THREADS)
    torch._dynamo.config.cache_size_limit = 1 << 16
    if hasattr(torch._dynamo.config, "recompile_limit"):
        torch._dynamo.config.recompile_limit = 1 << 16
    return torch
