"""The benchmark matrix as pytest-benchmark tests: one benchmark per cell of cases.py (the same
list bench.py prints), grouped by cell so that peers (FASTNLL_BENCH_PEERS) sit beside it.

    pytest benches/ --benchmark-only                          # 4 MiB inputs, the matrix
    pytest benches/ --benchmark-only --benchmark-autosave     # saved as JSON under .benchmarks/
    pytest benches/ --benchmark-only --benchmark-compare      # against the last saved run

Not part of the test command (pytest's testpaths is tests/). The cold-cache cell is left out:
a benchmark repeats its call, and only the first read of a file is cold. Environment:
FASTNLL_BENCH_MIB (MiB per float input, default 4), FASTNLL_BENCH_GRID (a selection of
cases.py: matrix (default), quick or full), FASTNLL_BENCH_CASES (a regex on cell names),
FASTNLL_BENCH_THREADS (default: all cores), FASTNLL_BENCH_PEERS (comma-separated, any of
roofline, torch, compile: extra benchmarks in each cell's group; default none). The fixtures
live here, not in a conftest.py, so that ``pytest tests benches`` does not see two modules
named conftest.
"""

from __future__ import annotations

import math
import os
import tempfile

import cases
import numpy as np
import pytest

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
    with tempfile.TemporaryDirectory(
        prefix="fastnll-bench-", dir=os.environ.get("TMPDIR", "/var/tmp")
    ) as d:
        cache = cases.DataCache(int(MIB * cases.MiB), d)
        # as bench.py: steady-state paging before the first timed cell
        import measure

        measure.warm_allocator(4 * 3 * int(MIB * cases.MiB))
        yield cache
        cache.drop_files()


@pytest.fixture(scope="session")
def torch_mod():
    torch = pytest.importorskip(
        "torch", reason="FASTNLL_BENCH_PEERS names torch, which is not installed"
    )
    torch.set_num_threads(THREADS)
    torch._dynamo.config.cache_size_limit = 1 << 16
    if hasattr(torch._dynamo.config, "recompile_limit"):
        torch._dynamo.config.recompile_limit = 1 << 16
    return torch


CELLS = cases.run_order([k for k in cases.select(GRID, PATTERN) if not k.cold])
PEER_CELLS = [(k, p) for k in CELLS for p in PEERS if not (k.is_file and p in ("torch", "compile"))]


def _finite(r) -> bool:
    s = cases.summary(r)
    if s is None:  # CLI: the report was printed
        return isinstance(r, str) and "nll" in r.lower()
    return bool(np.isfinite(np.asarray(s, dtype=np.float64)).all())


def _info(benchmark, k: cases.Cell, inp: cases.Inputs) -> None:
    benchmark.group = k.name
    benchmark.extra_info.update(
        cell=k.name,
        axes=dict(k.__dict__),
        shape=[inp.x.shape[0], k.c],
        touch_bytes=inp.touch_bytes,
        threads=THREADS,
    )


def _rate(benchmark, inp: cases.Inputs) -> None:
    med = benchmark.stats.stats.median if benchmark.stats else None
    if med:
        benchmark.extra_info["gb_per_s"] = inp.touch_bytes / med / 1e9


@pytest.mark.parametrize("k", CELLS, ids=[k.name for k in CELLS])
def test_cell(benchmark, k, data, fnl):
    """fastnll on one cell; its result must be finite (every input is finite)."""
    inp = data.get(k)
    _info(benchmark, k, inp)
    r = benchmark(cases.fastnll_call(fnl, k, inp, THREADS))
    _rate(benchmark, inp)
    assert _finite(r), f"{k.name}: result {cases.summary(r)!r} is not finite"


@pytest.mark.skipif(not PEER_CELLS, reason="no FASTNLL_BENCH_PEERS asked for")
@pytest.mark.parametrize(
    "k,peer", PEER_CELLS or [(None, None)], ids=[f"{k.name}|{p}" for k, p in PEER_CELLS] or ["none"]
)
def test_peer(benchmark, k, peer, data, fnl, request):
    """A reference in the cell's group: the bandwidth roofline, PyTorch eager or torch.compile."""
    inp = data.get(k)
    _info(benchmark, k, inp)
    benchmark.extra_info["peer"] = peer
    if peer == "roofline":
        import measure

        roof = measure.Roofline(fnl, THREADS, inp.touch_bytes)
        fn = (
            roof.copy(inp.touch_bytes)
            if k.op in cases.NXC_OUTPUT_OPS
            else roof.read(inp.touch_bytes)
        )
        benchmark(fn)
        _rate(benchmark, inp)
        return
    torch = request.getfixturevalue("torch_mod")
    x, t, y = cases.torch_args(torch, inp)
    f = cases.torch_fn(torch, k.op, t is not None and t.dtype != torch.int64)
    if peer == "compile":
        torch._dynamo.reset()
        f = torch.compile(f, dynamic=False)
        f(x, t, y)  # compile and warm up outside the timing
    r = benchmark(lambda: f(x, t, y))
    _rate(benchmark, inp)
    assert r is not None


def test_matrix_covers_every_axis():
    """The default selection holds every value of every axis against a base cell (f32, int64,
    C order), the full op x C grid at the base, and files through both the path API and the CLI."""
    cells = set(cases.matrix())
    for op in cases.OPS:
        for c in cases.CLASS_COUNTS:
            assert cases.cell(op, c) in cells
    for c in cases.CLASS_COUNTS:
        for op in ("cross_entropy", "evaluate_logits"):
            for d in cases.DTYPES:
                assert cases.cell(op, c, dtype=d) in cells
            for lay in cases.LAYOUTS:
                assert cases.cell(op, c, layout=lay) in cells
            for td in cases.TDTYPES:
                k = cases.cell(op, c, tdtype=td)
                assert (k in cells) == (c <= cases.TDTYPE_MAX_C[td])
    files = [k for k in cells if k.is_file]
    assert {k.store for k in files} == set(cases.STORES)
    assert {k.via for k in files} == {"path", "cli"}
    assert sum(k.cold for k in files) == 1


def test_layouts_hold_the_base_values():
    """Every layout is a view of the same values as the C-order array (so results must agree)."""
    base = cases.make_values("logits", 37, 10, "f32")
    for lay in cases.LAYOUTS:
        v = cases.with_layout(base, lay)
        assert v.shape == base.shape and np.array_equal(v, base)
    assert not cases.with_layout(base, "rows2").flags.c_contiguous
    assert cases.with_layout(base, "fortran").flags.f_contiguous
    t = [cases.make_targets(37, 10, td) for td in cases.TDTYPES]
    assert all(np.array_equal(t[0], u) for u in t[1:])
    assert math.isclose(
        cases.lines_fraction(
            cases.with_layout(cases.make_values("logits", 4096, 2, "f32"), "rows2")
        ),
        0.5,
    )
