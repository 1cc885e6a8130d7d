"""Sharded evaluation on Dask: a >= 2 GB dump on 1 and 2 local workers against one process,
and the cost model of docs/distributed.md (bytes per partial result, merge time, per-task
overhead of a 1,000-block reduction).

    python benches/dask_bench.py [--gb 2.1] [--repeat 3] [--dir /tmp/fastnll-dask-bench]

Writes the dump once (shards plus the same data as one file, float32 logits [B, T, V]), reads
it once to warm the page cache, then times every configuration once per round, --repeat
rounds (median; alternating keeps the shared machine's drift out of the ratios). Time
and GB/s count the logits and targets read; the machine's other load is printed with the table
because the 2 cores are shared.
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import fastnll
import fastnll.dask as fd
from fastnll._partial import CompareSums, LossSums

V, T, B_PER_SHARD = 32000, 1024, 2  # 262 MB per shard


def write_dump(d: Path, gb: float) -> tuple[list[str], list[str], str, str, int]:
    shard_bytes = B_PER_SHARD * T * V * 4
    n = max(2, round(gb * 1e9 / shard_bytes))
    xs, ts = (
        [str(d / "x" / f"x-{i:03d}.npy") for i in range(n)],
        [str(d / "t" / f"t-{i:03d}.npy") for i in range(n)],
    )
    one_x, one_t = str(d / "one_x.npy"), str(d / "one_t.npy")
    if all(os.path.exists(p) for p in xs + ts + [one_x, one_t]):
        return xs, ts, one_x, one_t, n
    (d / "x").mkdir(parents=True, exist_ok=True)
    (d / "t").mkdir(parents=True, exist_ok=True)
    big = np.lib.format.open_memmap(
        one_x, mode="w+", dtype=np.float32, shape=(n * B_PER_SHARD, T, V)
    )
    tall = np.empty((n * B_PER_SHARD, T), np.int64)
    rng = np.random.default_rng(0)
    for i in range(n):
        x = rng.standard_normal((B_PER_SHARD, T, V), dtype=np.float32)
        x *= 2.0
        t = rng.integers(0, V, (B_PER_SHARD, T))
        t[rng.random(t.shape) < 0.05] = -100
        np.save(xs[i], x)
        np.save(ts[i], t)
        big[i * B_PER_SHARD : (i + 1) * B_PER_SHARD] = x
        tall[i * B_PER_SHARD : (i + 1) * B_PER_SHARD] = t
    big.flush()
    del big
    np.save(one_t, tall)
    return xs, ts, one_x, one_t, n


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def cost_model(client: Any) -> list[str]:
    """Sizes of the partial results, their merge time, and per-task overhead on a cluster."""
    import dask.array as da

    rng = np.random.default_rng(1)
    x = rng.standard_normal((4096, 1000)).astype(np.float32)
    t = rng.integers(0, 1000, 4096)
    ev = fastnll.Evaluator().update(x, t)
    cs = CompareSums().update(x, x * 0.5, t)
    lines = [
        (
            f"pickled partial result: Evaluator (15 bins, top-1/5) {len(pickle.dumps(ev))} B, "
            f"CompareSums {len(pickle.dumps(cs))} B, LossSums {len(pickle.dumps(LossSums()))} B"
        )
    ]
    blobs = [pickle.dumps(ev)] * 1000
    t0 = time.perf_counter()
    acc = fastnll.Evaluator()
    for b in blobs:
        acc.merge(pickle.loads(b))
    merge_us = (time.perf_counter() - t0) / 1000 * 1e6
    lines.append(f"unpickle + merge one Evaluator: {merge_us:.1f} us")
    blocks = 1000
    xs = da.random.default_rng(2).standard_normal((blocks * 64, 128), chunks=(64, 128))
    ts = da.zeros(blocks * 64, dtype=np.int64, chunks=64)
    fd.evaluate(xs[:640], ts[:640], scheduler=client)  # warm the workers
    t_small, _ = timed(lambda: fd.evaluate(xs, ts, scheduler=client), 3)
    merges, m = 0, blocks
    while m > 1:  # the tree: 8 partial results per merge task
        m = -(-m // fd.SPLIT_EVERY)
        merges += m
    n_tasks = blocks * 3 + merges + 1  # make x, make t, evaluate per block; merges; report
    lines.append(
        f"{blocks}-block reduction on this cluster (2 workers, 64x128 float64 blocks "
        f"made in the workers): {t_small * 1e3:.0f} ms for ~{n_tasks} tasks = "
        f"{t_small / n_tasks * 1e3:.2f} ms per task"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=2.1)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--dir", default="/tmp/fastnll-dask-bench")
    a = ap.parse_args(argv)
    from distributed import Client, LocalCluster

    d = Path(a.dir)
    xs, ts, one_x, one_t, n = write_dump(d, a.gb)
    nbytes = sum(os.path.getsize(p) for p in xs + ts)
    for p in xs + ts + [one_x, one_t]:  # warm the page cache: every run reads from memory
        with open(p, "rb") as fh:
            while fh.read(64 << 20):
                pass
    load = os.getloadavg()
    fastnll.set_num_threads(2)
    ref = fastnll.evaluate(one_x, one_t)
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None
        ) as lc1,
        Client(lc1, set_as_default=False) as c1,
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as lc2,
        Client(lc2, set_as_default=False) as c2,
    ):
        for c in (c1, c2):  # the workers' imports and first mappings happen here
            fd.evaluate(xs[:1], ts[:1], scheduler=c)
        xa, ta = fd.from_shards(xs), fd.from_shards(ts, target=True)
        configs: list[tuple[str, Callable[[], Any]]] = [
            (
                "fastnll.evaluate, one file, 1 process x 2 threads",
                lambda: fastnll.evaluate(one_x, one_t),
            ),
            (
                f"fastnll.dask.evaluate, {n} shard files, synchronous (1 process x 2 threads)",
                lambda: fd.evaluate(xs, ts, scheduler="sync"),
            ),
        ]
        for c, label in ((c1, "1 worker x 2 threads"), (c2, "2 workers x 1 thread")):
            configs.append(
                (
                    f"fastnll.dask.evaluate, {n} shard files, {label}",
                    lambda c=c: fd.evaluate(xs, ts, scheduler=c),
                )
            )
            configs.append(
                (
                    f"fastnll.dask.evaluate, from_shards arrays, {label}",
                    lambda c=c: fd.evaluate(xa, ta, scheduler=c),
                )
            )
        times: dict[str, list[float]] = {name: [] for name, _ in configs}
        for _ in range(a.repeat):  # rounds of every configuration: drift hits all alike
            for name, fn in configs:
                t0 = time.perf_counter()
                r = fn()
                times[name].append(time.perf_counter() - t0)
                assert r.rows == ref.rows and r.bins == ref.bins
                assert abs(r.mean_nll - ref.mean_nll) <= 1e-12 * abs(ref.mean_nll)
        rows = [(name, statistics.median(times[name])) for name, _ in configs]
        t1 = rows[0][1]
        cost = cost_model(c2)
    print(
        f"fastnll {fastnll.__version__} | {n} shards of [{B_PER_SHARD}, {T}, {V}] float32 + "
        f"int64 targets = {nbytes / 1e9:.2f} GB | page cache warm | median of {a.repeat} | "
        f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} | "
        f"{os.cpu_count()} CPUs"
    )
    print(f"{'configuration':<72} {'time':>8} {'GB/s':>6} {'vs one process':>15}")
    print("-" * 104)
    for name, sec in rows:
        print(f"{name:<72} {sec:7.2f}s {nbytes / sec / 1e9:6.2f} {t1 / sec:14.2f}x")
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print("\n".join(cost))
    return 0


if __name__ == "__main__":
    sys.exit(main())
