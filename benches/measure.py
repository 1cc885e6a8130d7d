"""Measurement tools of the benchmark: timing, the bandwidth rooflines, the PyTorch peers (eager
and ``torch.compile``), extra peak memory in a fresh interpreter, and the machine description.
Used by ``bench.py``; see README.md for what each number means."""

from __future__ import annotations

import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cases
import numpy as np

# ----------------------------------------------------------------------------- timing


def time_once(fn: Callable[[], Any]) -> float:
    """Seconds one call takes."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# Calls shorter than this get more runs (SHORT_RUNS_S of them in all, at most MAX_RUNS): the
# median of 3 sub-millisecond calls moved 1.3-3x between runs on this VM (nll_loss, C = 1000).
SHORT_CALL_S = 5e-3
SHORT_RUNS_S = 0.1
MAX_RUNS = 50


def runs_for(call_s: float, repeat: int) -> int:
    """Timed runs for a call that took ``call_s``: ``repeat``, or more for a short call."""
    if call_s >= SHORT_CALL_S or call_s <= 0:
        return repeat
    return max(repeat, min(MAX_RUNS, math.ceil(SHORT_RUNS_S / call_s)))


def time_runs(fn: Callable[[], Any], repeat: int, budget: float | None = None) -> dict[str, Any]:
    """One warm-up call (its result is returned), then ``repeat`` timed calls (more for a short
    call, see :func:`runs_for`), fewer when the warm-up says they would take more than
    ``budget`` seconds."""
    t0 = time.perf_counter()
    result = fn()
    warm = time.perf_counter() - t0
    runs = runs_for(warm, repeat)
    if budget is not None and warm > 0 and warm * repeat > budget:
        runs = max(1, int(budget // warm))
    times = [time_once(fn) for _ in range(runs)]
    return {
        "median_s": statistics.median(times),
        "times_s": times,
        "warmup_s": warm,
        "result": result,
    }


def warm_allocator(nbytes: int) -> tuple[int, float]:
    """Touches and frees ``nbytes`` (capped at a quarter of the available memory) once, before
    any cell is timed; returns the bytes touched and the seconds it took. On a Linux machine
    with transparent huge pages on ``madvise`` (NumPy asks for them on large arrays), the first
    large allocations of a process can stall on compaction: a fresh [33554, 1000] softmax
    output took 140-230 ms where it takes 20 ms once the huge pages are free. Without this,
    whichever cells come first (softmax, in the run order) pay it, fastnll's call and its
    references alike."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    if avail is not None:
        nbytes = min(nbytes, avail // 4)
    t0 = time.perf_counter()
    if nbytes > 0:
        a = np.ones(nbytes, dtype=np.uint8)
        del a
    return nbytes, time.perf_counter() - t0


def alternate(
    case: Callable[[], Any], roof: Callable[[], Any], repeat: int, scale: float = 1.0
) -> dict[str, Any]:
    """Case and roofline timed in alternation (case, roof, case, roof, ...), so that drift of this
    shared machine's speed cancels: the ratio is the median of the pairs' roof*scale/case.
    ``repeat`` pairs, more where the first pair says the case is short (:func:`runs_for`)."""
    roof()
    pairs = [(time_once(case), time_once(roof))]
    pairs += [(time_once(case), time_once(roof)) for _ in range(runs_for(pairs[0][0], repeat) - 1)]
    return {
        "case_s": statistics.median(p[0] for p in pairs),
        "roof_s": statistics.median(p[1] for p in pairs) * scale,
        "ratio": statistics.median(r * scale / c for c, r in pairs),
        "pairs_s": pairs,
    }


# ----------------------------------------------------------------------------- rooflines


class Roofline:
    """Bandwidth references, with fastnll's threads.

    ``read(nbytes)``: a read-only SIMD sum (``fastnll._core.roofline_sum``) over the first
    ``nbytes`` of one packed float32 buffer (allocated once, filled with ones);
    ``copy(nbytes)``: a threaded ``np.copyto`` of ``nbytes`` of that buffer into a fresh array;
    ``read_mapping(arr)``: the same sum over a memory-mapped file's data."""

    def __init__(self, fnl: Any, threads: int, max_bytes: int):
        self.threads = threads
        self.pool = ThreadPoolExecutor(max_workers=threads)
        self.buf = np.ones(max(1, max_bytes // 4 + 16), dtype=np.float32)
        self.method, self._sum = self._find_sum(fnl)

    def _find_sum(self, fnl: Any) -> tuple[str, Callable[[np.ndarray], Any]]:
        core = getattr(fnl, "_core", None)
        f = getattr(core, "roofline_sum", None)
        probe = np.ones(64, dtype=np.float32)
        if f is not None:
            try:
                f(probe)
                return "fastnll._core.roofline_sum(x)", f
            except TypeError:
                pass
            try:
                from fastnll import _arrays

                f(*_arrays.core_view(probe))
                return "fastnll._core.roofline_sum(view, tag, swap)", lambda a: f(
                    *_arrays.core_view(a)
                )
            except Exception:
                pass
        return "threaded numpy sum (no fastnll._core.roofline_sum)", self._np_sum

    def _chunks(self, n: int) -> list[tuple[int, int]]:
        step = -(-n // self.threads)
        return [(s, min(n, s + step)) for s in range(0, n, step)]

    def _np_sum(self, a: np.ndarray) -> float:
        flat = a.reshape(-1)
        return sum(
            self.pool.map(lambda se: float(flat[se[0] : se[1]].sum()), self._chunks(flat.size))
        )

    def read(self, nbytes: int) -> Callable[[], Any]:
        v = self.buf[: max(1, nbytes // 4)]
        return lambda: self._sum(v)

    def read_mappings(self, arrays: list[np.ndarray]) -> Callable[[], Any]:
        return lambda: [self._sum(a) for a in arrays]

    def copy(self, nbytes: int) -> Callable[[], Any]:
        src = self.buf[: max(1, nbytes // 4)]
        parts = self._chunks(src.size)

        def run() -> np.ndarray:
            dst = np.empty_like(src)
            list(self.pool.map(lambda se: np.copyto(dst[se[0] : se[1]], src[se[0] : se[1]]), parts))
            return dst

        return run


# ----------------------------------------------------------------------------- PyTorch


def short(exc: BaseException, n: int = 120) -> str:
    """One line: the exception type and the start of its message."""
    msg = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {msg[:n]}"


def torch_peers(
    torch: Any, k: cases.Cell, inp: cases.Inputs, repeat: int, budget: float, compile_too: bool
) -> dict[str, Any]:
    """Time PyTorch eager and ``torch.compile`` (dynamic=False, compiled for this shape and dtype,
    warmed up) on zero-copy views of the cell's arrays. Returns {"eager": {...}, "compile": {...}}
    with "time_s", "runs", "result" or "error", plus "long_targets" when targets needed .long()."""
    out: dict[str, Any] = {}
    try:
        x, t, y = cases.torch_args(torch, inp)
    except Exception as exc:
        return {"eager": {"error": short(exc)}, "compile": {"error": short(exc)}}
    long_t = False
    fn = cases.torch_fn(torch, k.op, False)
    try:
        fn(x, t, y)
    except Exception as exc:
        if t is None or t.dtype == torch.int64:
            out["eager"] = {"error": short(exc)}
        else:
            long_t = True
    if "eager" not in out:
        fn = cases.torch_fn(torch, k.op, long_t)
        try:
            r = time_runs(lambda: fn(x, t, y), repeat, budget)
            out["eager"] = {
                "time_s": r["median_s"],
                "runs": len(r["times_s"]),
                "result": r["result"],
            }
        except Exception as exc:
            out["eager"] = {"error": short(exc)}
    out["long_targets"] = long_t
    if compile_too:
        try:
            torch._dynamo.reset()
            # inductor's gather takes int32/int64 indices only: other targets go through .long()
            long_c = t is not None and t.dtype not in (torch.int64, torch.int32)
            cf = torch.compile(cases.torch_fn(torch, k.op, long_t or long_c), dynamic=False)
            t0 = time.perf_counter()
            cf(x, t, y)
            comp_s = time.perf_counter() - t0
            r = time_runs(lambda: cf(x, t, y), repeat, budget)
            out["compile"] = {
                "time_s": r["median_s"],
                "runs": len(r["times_s"]),
                "result": r["result"],
                "compile_s": comp_s,
            }
        except Exception as exc:
            out["compile"] = {"error": short(exc, 100)}
    return out


def setup_torch(threads: int) -> tuple[Any, str | None]:
    """(torch or None, why not)."""
    try:
        import torch
    except ImportError:
        return None, "torch not installed"
    torch.set_num_threads(threads)
    try:
        torch._dynamo.config.cache_size_limit = 1 << 16
        if hasattr(torch._dynamo.config, "recompile_limit"):
            torch._dynamo.config.recompile_limit = 1 << 16
    except Exception:
        pass
    return torch, None


# ----------------------------------------------------------------------------- peak memory

CHILD = "__memchild__"


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _sampled_anon_peak(fn: Callable[[], Any]) -> int:
    """Peak growth of RssAnon during fn(), sampled every 0.2 ms by a thread (file cells: the
    mapped file's pages count in VmHWM but are not extra memory)."""
    before = _status_kb("RssAnon")
    peak = [before]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _status_kb("RssAnon"))
            time.sleep(0.0002)

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    try:
        fn()
    finally:
        done.set()
        th.join()
    peak[0] = max(peak[0], _status_kb("RssAnon"))
    return (peak[0] - before) * 1024


def mem_child(spec_json: str) -> None:
    """In a fresh interpreter: build the cell's inputs, then the growth of peak RSS over one
    fastnll call (twice, after resetting the peak; the larger is printed as JSON)."""
    spec = json.loads(spec_json)
    os.environ["FASTNLL_NUM_THREADS"] = str(spec["threads"])
    import fastnll

    fastnll.set_num_threads(spec["threads"])
    k = cases.Cell(**spec["cell"])
    if k.is_file:
        x = np.empty((1, k.c), dtype=np.float32)
        inp = cases.Inputs(x, None, None, 0, 0, 0, tuple(spec["paths"]))
    else:
        inp = cases.DataCache(spec["nbytes"]).get(k)
    fn = cases.fastnll_call(fastnll, k, inp, spec["threads"])
    if not k.is_file:
        # one call on ~64 KiB of the same kind first: the modules a first call imports and
        # the thread pool it starts are the interpreter's, not this call's (~2 MiB for
        # evaluate); not on the cell's own inputs, where the allocator would keep the output's
        # pages for the measured call
        small = cases.DataCache(64 << 10).get(k)
        cases.fastnll_call(fastnll, k, small, spec["threads"])()
        del small
    gc.collect()
    deltas, raw, method, out_bytes = [], [], "clear_refs", 0
    for _ in range(2):
        if k.is_file:
            method = "sampled RssAnon"
            deltas.append(_sampled_anon_peak(fn))
            continue
        if _reset_peak():
            before = _status_kb("VmRSS")
        else:
            method = "VmHWM (no reset)"
            before = _status_kb("VmHWM")
        r = fn()
        after = _status_kb("VmHWM")
        out_bytes = result_bytes(r)
        del r
        gc.collect()
        # the array the call returns (logsumexp's [N], log_softmax's [N, C]) is its answer,
        # not working memory: what is extra is the growth beyond it
        raw.append(max(0, after - before) * 1024)
        deltas.append(max(0, raw[-1] - out_bytes))
    print(
        json.dumps(
            {
                "extra_peak_bytes": max(deltas),
                "deltas": deltas,
                "raw_deltas": raw,
                "method": method,
                "output_bytes": out_bytes,
            }
        )
    )


def result_bytes(r: Any) -> int:
    """Bytes of the NumPy arrays a call returned (itself, or inside a tuple / list)."""
    if isinstance(r, np.ndarray):
        return int(r.nbytes)
    if isinstance(r, (tuple, list)):
        return sum(result_bytes(v) for v in r)
    return 0


def measure_peak(
    script: str, k: cases.Cell, nbytes: int, threads: int, paths: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """Run ``script CHILD spec`` (bench.py re-executing itself) and parse its answer."""
    spec = json.dumps(
        {
            "cell": k.__dict__,
            "nbytes": nbytes,
            "threads": threads,
            "paths": list(paths) if paths else None,
        }
    )
    env = dict(os.environ, FASTNLL_NUM_THREADS=str(threads))
    try:
        p = subprocess.run(
            [sys.executable, script, CHILD, spec],
            capture_output=True,
            text=True,
            env=env,
            timeout=1800,
        )
    except subprocess.TimeoutExpired:
        return {"error": "timeout"}
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": f"child exited {p.returncode}: {tail[:160]}"}
    try:
        return json.loads(p.stdout.strip().splitlines()[-1])
    except Exception:
        return {"error": f"bad child output: {p.stdout[-200:]!r}"}


# ----------------------------------------------------------------------------- machine


def machine_info(fnl: Any, threads: int, torch: Any) -> dict[str, Any]:
    """CPU, caches, memory, versions, threads and the SIMD path."""
    cpu, flags = platform.processor() or "unknown", []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and cpu in ("unknown", "x86_64", ""):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu_model": cpu,
        "logical_cores": os.cpu_count(),
        "cpu_simd_flags": [
            f for f in ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_bf16") if f in flags
        ],
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    caches: dict[str, str] = {}
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for d in sorted(os.listdir(base)):
            if d.startswith("index"):

                def rd(f: str, d: str = d) -> str:
                    with open(os.path.join(base, d, f)) as fh:
                        return fh.read().strip()

                kind = {"Data": "d", "Instruction": "i", "Unified": ""}.get(rd("type"), "?")
                caches[f"L{rd('level')}{kind}"] = rd("size")
    except OSError:
        pass
    info["caches"] = caches
    try:
        info["load_average_at_start"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    try:
        import psutil

        info["memory_total_gib"] = round(psutil.virtual_memory().total / (1 << 30), 1)
    except ImportError:
        pass
    versions: dict[str, str | None] = {
        "fastnll": getattr(fnl, "__version__", "?"),
        "numpy": np.__version__,
        "torch": getattr(torch, "__version__", None),
    }
    for mod in ("ml_dtypes", "scipy"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:
            versions[mod] = None
    info["versions"] = versions
    info["threads"] = threads
    info["fastnll_threads"] = fnl.get_num_threads()
    info["torch_threads"] = torch.get_num_threads() if torch is not None else None
    info["simd_path"] = fnl.simd_path()
    return info


def available_bytes() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return 1 << 62
