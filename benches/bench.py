#!/usr/bin/env python3
"""fastnll benchmark harness.

    python benches/bench.py [--quick] [--json out.json] [--threads N] [--cases REGEX] [--repeat 5]

Times fastnll's cross_entropy / logsumexp / log_softmax / evaluate on large C-contiguous
arrays (about 512 MiB each, 32 MiB with --quick), against a read-only SIMD sum over the same
array (the bandwidth "roofline") and against PyTorch CPU, a NumPy composition and SciPy, and
measures the extra peak resident memory of each fastnll call in a fresh subprocess.
See benches/README.md for what every column means.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

MiB = 1 << 20
FULL_BYTES = 512 * MiB
QUICK_BYTES = 32 * MiB
# Skip a peer whose estimated temporaries exceed this (or 80% of available memory).
PEER_MEM_LIMIT = 16 * (1 << 30)
SEED = 20240611
GEN_CHUNK = 1 << 24  # elements per generation chunk (keeps generation peaks small, deterministic)

CLASS_COUNTS = [2, 10, 32, 128, 1000, 32000, 50257, 262144, 1048576]
BIG_C = 4194304
BIG_N = 4

DTYPE_NAMES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}


# ----------------------------------------------------------------------------- data


def np_dtype(tag: str) -> np.dtype:
    if tag == "f32":
        return np.dtype(np.float32)
    if tag == "f16":
        return np.dtype(np.float16)
    if tag == "bf16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    raise ValueError(tag)


def make_logits(n: int, c: int, tag: str) -> np.ndarray:
    """Standard normal * 3, C-contiguous, generated in fixed chunks so that the result is the
    same in every process and no full-size float32 temporary exists for 16-bit dtypes."""
    rng = np.random.default_rng(SEED)
    dt = np_dtype(tag)
    out = np.empty((n, c), dtype=dt)
    flat = out.reshape(-1)
    total = flat.size
    if tag == "f32":
        for s in range(0, total, GEN_CHUNK):
            e = min(total, s + GEN_CHUNK)
            rng.standard_normal(e - s, dtype=np.float32, out=flat[s:e])
            flat[s:e] *= np.float32(3.0)
    else:
        buf = np.empty(min(total, GEN_CHUNK), dtype=np.float32)
        for s in range(0, total, GEN_CHUNK):
            e = min(total, s + GEN_CHUNK)
            b = buf[: e - s]
            rng.standard_normal(e - s, dtype=np.float32, out=b)
            b *= np.float32(3.0)
            flat[s:e] = b.astype(dt)
        del buf
    return out


def make_targets(n: int, c: int) -> np.ndarray:
    return np.random.default_rng(SEED + 1).integers(0, c, size=n, dtype=np.int64)


# ----------------------------------------------------------------------------- cases


@dataclass
class Case:
    op: str  # cross_entropy | logsumexp | log_softmax | evaluate
    tag: str  # f32 | f16 | bf16
    n: int
    c: int
    order: int  # position in the printed table

    @property
    def name(self) -> str:
        if self.c == BIG_C and self.n == BIG_N:
            return f"{self.op}/{self.tag}/N={self.n}/C={self.c}"
        return f"{self.op}/{self.tag}/C={self.c}"

    @property
    def key(self) -> Tuple[str, int, int]:
        return (self.tag, self.n, self.c)

    @property
    def needs_target(self) -> bool:
        return self.op in ("cross_entropy", "evaluate")

    @property
    def logits_bytes(self) -> int:
        return self.n * self.c * np_dtype(self.tag).itemsize

    @property
    def input_bytes(self) -> int:
        return self.logits_bytes + (self.n * 8 if self.needs_target else 0)


def rows_for(c: int, tag: str, target_bytes: int) -> int:
    return max(1, target_bytes // (c * np_dtype(tag).itemsize))


def build_cases(target_bytes: int) -> List[Case]:
    cases: List[Case] = []

    def add(op: str, tag: str, c: int, n: Optional[int] = None) -> None:
        cases.append(Case(op, tag, n if n is not None else rows_for(c, tag, target_bytes), c, len(cases)))

    for c in CLASS_COUNTS:
        add("cross_entropy", "f32", c)
    for c in CLASS_COUNTS:
        add("logsumexp", "f32", c)
    for c in (1000, 50257):
        add("log_softmax", "f32", c)
    add("cross_entropy", "bf16", 32000)
    add("cross_entropy", "f16", 32000)
    add("cross_entropy", "f32", BIG_C, BIG_N)
    add("logsumexp", "f32", BIG_C, BIG_N)
    for c in (1000, 32000):
        add("evaluate", "f32", c)
    return cases


# ----------------------------------------------------------------------------- timing


def time_call(fn: Callable[[], Any], repeat: int, budget: Optional[float] = None) -> Dict[str, Any]:
    """One warm-up call, then `repeat` timed calls (fewer if `budget` seconds would be exceeded
    judging by the warm-up). Returns median and all times."""
    t0 = time.perf_counter()
    result = fn()
    warm = time.perf_counter() - t0
    runs = repeat
    if budget is not None and warm > 0 and warm * repeat > budget:
        runs = max(1, int(budget // warm))
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        r = fn()
        times.append(time.perf_counter() - t0)
        del r
    return {"median_s": statistics.median(times), "times_s": times, "warmup_s": warm, "result": result}


def time_once(fn: Callable[[], Any]) -> float:
    """Seconds one call takes."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def fmt_time(s: Optional[float]) -> str:
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    if s < 1.0:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.3f} s"


def fmt_ratio(r: Optional[float]) -> str:
    if r is None:
        return "-"
    if r >= 100:
        return f"{r:.0f}x"
    if r >= 10:
        return f"{r:.1f}x"
    return f"{r:.2f}x"


# ----------------------------------------------------------------------------- fastnll


def resolve(mod: Any, op: str) -> Optional[Callable[..., Any]]:
    """fastnll.<op> as a function (also when the name is a submodule holding the function)."""
    f = getattr(mod, op, None)
    if f is not None and not callable(f):
        f = getattr(f, op, None)
    return f if callable(f) else None


def op_call(f: Any, op: str, x: np.ndarray, t: Optional[np.ndarray]) -> Callable[[], Any]:
    if op == "cross_entropy":
        return lambda: f(x, t, reduction="mean")
    if op in ("logsumexp", "log_softmax"):
        return lambda: f(x, axis=-1)
    if op == "evaluate":
        return lambda: f(x, t, kind="logits")
    raise ValueError(op)


class Fast:
    """Access to the installed fastnll, recording anything the harness wanted but did not find."""

    def __init__(self, threads: int):
        os.environ["FASTNLL_NUM_THREADS"] = str(threads)
        import fastnll

        self.mod = fastnll
        self.missing: List[str] = []
        self.core = getattr(fastnll, "_core", None)
        try:
            from fastnll import _arrays

            self.arrays = _arrays
        except ImportError:
            self.arrays = None
            self.missing.append("fastnll._arrays")
        if hasattr(fastnll, "set_num_threads"):
            fastnll.set_num_threads(threads)
            self.thread_method = "fastnll.set_num_threads"
        else:
            self.thread_method = "env FASTNLL_NUM_THREADS (set before import)"
            self.missing.append("fastnll.set_num_threads")
        self.threads_reported = None
        for getter in ("get_num_threads", "num_threads"):
            f = getattr(fastnll, getter, None)
            if callable(f):
                try:
                    self.threads_reported = int(f())
                except Exception:
                    pass
                break
        for fn in ("cross_entropy", "logsumexp", "log_softmax", "evaluate"):
            if resolve(fastnll, fn) is None:
                self.missing.append(f"fastnll.{fn}")
        if self.core is None or not hasattr(self.core, "roofline_sum"):
            self.missing.append("fastnll._core.roofline_sum")
        if self.core is None or not hasattr(self.core, "simd_path"):
            self.missing.append("fastnll._core.simd_path (FASTNLL_SIMD env used if set)")

    def version(self) -> str:
        v = getattr(self.mod, "__version__", None)
        if v:
            return str(v)
        try:
            from importlib.metadata import version

            return version("fastnll")
        except Exception:
            return "unknown"

    def simd_path(self) -> Optional[str]:
        if self.core is not None and hasattr(self.core, "simd_path"):
            try:
                return str(self.core.simd_path())
            except Exception as exc:  # pragma: no cover
                return f"error: {exc}"
        return os.environ.get("FASTNLL_SIMD")

    def has(self, op: str) -> bool:
        return resolve(self.mod, op) is not None

    def call(self, op: str, x: np.ndarray, t: Optional[np.ndarray]) -> Callable[[], Any]:
        return op_call(resolve(self.mod, op), op, x, t)

    def roofline(self, x: np.ndarray) -> Optional[Callable[[], Any]]:
        if self.core is None or not hasattr(self.core, "roofline_sum") or self.arrays is None:
            return None
        view, tag, swap = self.arrays.core_view(x)
        core = self.core
        return lambda: core.roofline_sum(view, tag, swap)


# ----------------------------------------------------------------------------- peers


def _np_lse(x: np.ndarray) -> np.ndarray:
    m = x.max(-1, keepdims=True)
    return m[..., 0] + np.log(np.exp(x - m).sum(-1))


def numpy_peer(op: str, x: np.ndarray, t: Optional[np.ndarray]) -> Optional[Callable[[], Any]]:
    if op == "cross_entropy":

        def f():
            lse = _np_lse(x)
            return (lse - x[np.arange(x.shape[0]), t]).mean()

        return f
    if op == "logsumexp":
        return lambda: _np_lse(x)
    if op == "log_softmax":

        def g():
            m = x.max(-1, keepdims=True)
            return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))

        return g
    return None


def scipy_peer(op: str, x: np.ndarray, t: Optional[np.ndarray]) -> Optional[Callable[[], Any]]:
    if op != "logsumexp":
        return None
    from scipy.special import logsumexp

    return lambda: logsumexp(x, axis=-1)


def torch_tensor(torch: Any, x: np.ndarray, tag: str) -> Any:
    """Zero-copy torch view of the same array."""
    if tag == "bf16":
        return torch.from_numpy(x.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(x)


def torch_peer(torch: Any, op: str, xt: Any, tt: Any) -> Optional[Callable[[], Any]]:
    F = torch.nn.functional
    if op == "cross_entropy":
        return lambda: F.cross_entropy(xt, tt, reduction="mean")
    if op == "logsumexp":
        return lambda: torch.logsumexp(xt, dim=-1)
    if op == "log_softmax":
        return lambda: torch.log_softmax(xt, dim=-1)
    return None


# Estimated peak temporaries of each peer, in units of the logits array (see README).
PEER_TEMP_FACTOR = {"torch": 2.0, "numpy": 3.0, "scipy": 4.0}


def to_f64(r: Any) -> np.ndarray:
    if hasattr(r, "detach"):  # torch tensor
        r = r.detach().float().numpy()
    return np.asarray(r, dtype=np.float64)


def compare(a: Any, b: Any) -> Optional[float]:
    """Max relative difference max|a-b| / max(1, max|b|); None when not comparable."""
    try:
        fa, fb = to_f64(a), to_f64(b)
        if fa.shape != fb.shape:
            return None
        if fa.size == 0:
            return 0.0
        scale = max(1.0, float(np.max(np.abs(fb))))
        return float(np.max(np.abs(fa - fb))) / scale
    except Exception:
        return None


TOL = {"f32": 1e-4, "f16": 2e-2, "bf16": 5e-2}


# ----------------------------------------------------------------------------- peak memory

_CHILD = "__memchild__"


def _proc_status_kb(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field_name} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def mem_child(spec_json: str) -> None:
    """Runs in a fresh interpreter: make the same arrays, then measure VmHWM growth over one
    fastnll call (twice, each after resetting the peak; the larger delta is reported)."""
    spec = json.loads(spec_json)
    os.environ["FASTNLL_NUM_THREADS"] = str(spec["threads"])
    import fastnll

    if hasattr(fastnll, "set_num_threads"):
        fastnll.set_num_threads(spec["threads"])
    x = make_logits(spec["n"], spec["c"], spec["tag"])
    t = make_targets(spec["n"], spec["c"]) if spec["op"] in ("cross_entropy", "evaluate") else None
    fn = op_call(resolve(fastnll, spec["op"]), spec["op"], x, t)
    gc.collect()
    deltas = []
    method = "clear_refs"
    for _ in range(2):
        if _reset_peak():
            before = _proc_status_kb("VmRSS")
        else:  # peak not resettable: the generation above keeps its own peak near the final size
            method = "VmHWM (no reset)"
            before = _proc_status_kb("VmHWM")
        r = fn()
        after = _proc_status_kb("VmHWM")
        del r
        gc.collect()
        deltas.append(max(0, after - before) * 1024)
    print(json.dumps({"extra_peak_bytes": max(deltas), "deltas": deltas, "method": method}))


def measure_peak(case: Case, threads: int) -> Dict[str, Any]:
    spec = json.dumps({"op": case.op, "tag": case.tag, "n": case.n, "c": case.c, "threads": threads})
    env = dict(os.environ)
    env["FASTNLL_NUM_THREADS"] = str(threads)
    try:
        p = subprocess.run(
            [sys.executable, os.path.abspath(__file__), _CHILD, spec],
            capture_output=True,
            text=True,
            env=env,
            timeout=1800,
        )
    except subprocess.TimeoutExpired:
        return {"error": "timeout"}
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": f"child exited {p.returncode}: {tail}"}
    try:
        return json.loads(p.stdout.strip().splitlines()[-1])
    except Exception:
        return {"error": f"bad child output: {p.stdout[-200:]!r}"}


# ----------------------------------------------------------------------------- machine info


def machine_info(fast: Fast, threads: int, torch: Any) -> Dict[str, Any]:
    cpu = platform.processor() or "unknown"
    flags: List[str] = []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and cpu in ("unknown", "x86_64", ""):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    info: Dict[str, Any] = {
        "cpu_model": cpu,
        "logical_cores": os.cpu_count(),
        "cpu_simd_flags": [f for f in ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_bf16") if f in flags],
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    caches = {}
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for d in sorted(os.listdir(base)):
            if not d.startswith("index"):
                continue
            rd = lambda f: open(os.path.join(base, d, f)).read().strip()  # noqa: E731
            kind = {"Data": "d", "Instruction": "i", "Unified": ""}.get(rd("type"), "?")
            size = rd("size")
            if size.endswith("K") and int(size[:-1]) >= 1024 and int(size[:-1]) % 1024 == 0:
                size = f"{int(size[:-1]) // 1024}M"
            caches[f"L{rd('level')}{kind}"] = size
    except OSError:
        pass
    info["caches"] = caches
    try:
        info["load_average_at_start"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    try:
        import psutil

        info["physical_cores"] = psutil.cpu_count(logical=False)
        info["memory_total_gib"] = round(psutil.virtual_memory().total / (1 << 30), 1)
    except ImportError:
        pass
    versions: Dict[str, Optional[str]] = {"fastnll": fast.version(), "numpy": np.__version__}
    versions["torch"] = torch.__version__ if torch is not None else None
    for mod in ("scipy", "ml_dtypes", "jax"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:
            versions[mod] = None
    info["versions"] = versions
    info["threads"] = threads
    info["thread_setting"] = fast.thread_method
    info["fastnll_threads_reported"] = fast.threads_reported
    info["torch_threads"] = torch.get_num_threads() if torch is not None else None
    info["simd_path"] = fast.simd_path()
    info["FASTNLL_SIMD"] = os.environ.get("FASTNLL_SIMD")
    return info


# ----------------------------------------------------------------------------- running


def available_bytes() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return 1 << 62


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_case(
    case: Case,
    x: np.ndarray,
    t: Optional[np.ndarray],
    fast: Fast,
    torch: Any,
    args: argparse.Namespace,
    time_cache: Dict[Tuple[str, Tuple[str, int, int]], float],
) -> Dict[str, Any]:
    rec: Dict[str, Any] = {
        "case": case.name,
        "op": case.op,
        "dtype": DTYPE_NAMES[case.tag],
        "shape": [case.n, case.c],
        "logits_bytes": case.logits_bytes,
        "input_bytes": case.input_bytes,
        "peers": {},
        "notes": [],
    }
    if not fast.has(case.op):
        rec["error"] = f"fastnll.{case.op} missing"
        return rec

    # fastnll itself
    try:
        tm = time_call(fast.call(case.op, x, t), args.repeat)
    except Exception as exc:
        rec["error"] = f"fastnll.{case.op} raised {type(exc).__name__}: {exc}"
        return rec
    ours = tm.pop("result")
    rec.update({"time_s": tm["median_s"], "times_s": tm["times_s"], "warmup_s": tm["warmup_s"]})
    rec["gb_per_s"] = case.input_bytes / tm["median_s"] / 1e9
    rec["elements_per_ns"] = case.n * case.c / tm["median_s"] / 1e9
    time_cache[(case.op, case.key)] = tm["median_s"]

    # roofline: read-only SIMD sum over the same logits, scaled to all input bytes. Timed in
    # alternation with the case (case, sum, case, sum, ...), the ratio being the median of the
    # pairs' ratios, so that drift in the machine's speed between cases cancels out.
    rf = fast.roofline(x)
    if rf is not None:
        try:
            case_fn = fast.call(case.op, x, t)
            rf()
            pairs = [(time_once(case_fn), time_once(rf)) for _ in range(args.repeat)]
            scale = case.input_bytes / case.logits_bytes
            roof_s = statistics.median(r for _, r in pairs)
            rec["roofline_sum_s"] = roof_s
            rec["roofline_gb_per_s"] = case.logits_bytes / roof_s / 1e9
            rec["roofline_time_s"] = roof_s * scale
            rec["roofline_ratio"] = statistics.median(r * scale / c for c, r in pairs)
            rec["roofline_pairs_s"] = pairs
        except Exception as exc:
            rec["notes"].append(f"roofline error: {type(exc).__name__}: {exc}")

    # evaluate: ratio to cross_entropy alone on the same array, timed in alternation (CE,
    # evaluate, CE, evaluate, ...) so that drift in the machine's speed cancels out
    if case.op == "evaluate" and fast.has("cross_entropy"):
        try:
            ce_fn, ev_fn = fast.call("cross_entropy", x, t), fast.call("evaluate", x, t)
            ce_fn()
            ratios, ces = [], []
            for _ in range(args.repeat):
                a, b = time_once(ce_fn), time_once(ev_fn)
                ratios.append(b / a)
                ces.append(a)
            rec["vs_cross_entropy"] = statistics.median(ratios)
            rec["cross_entropy_interleaved_s"] = statistics.median(ces)
            rec["vs_cross_entropy_all"] = ratios
            rec["notes"].append(f"{rec['vs_cross_entropy']:.2f}x CE time")
        except Exception as exc:
            rec["notes"].append(f"cross_entropy for ratio failed: {exc}")

    # peers
    if not args.no_peers and case.op != "evaluate":
        limit = min(PEER_MEM_LIMIT, int(0.8 * available_bytes()))
        peers: List[Tuple[str, Callable[[], Optional[Callable[[], Any]]]]] = []
        if torch is not None:

            def mk_torch():
                tt = torch.from_numpy(t) if t is not None else None
                return torch_peer(torch, case.op, torch_tensor(torch, x, case.tag), tt)

            peers.append(("torch", mk_torch))
        peers.append(("numpy", lambda: numpy_peer(case.op, x, t)))
        if case.op == "logsumexp" and importlib.util.find_spec("scipy") is not None:
            peers.append(("scipy", lambda: scipy_peer(case.op, x, t)))
        for pname, mk in peers:
            need = PEER_TEMP_FACTOR[pname] * case.logits_bytes
            if need > limit:
                rec["peers"][pname] = {"skipped": f"needs ~{need / (1 << 30):.1f} GiB of temporaries"}
                continue
            try:
                fn = mk()
                if fn is None:
                    continue
                log(f"    {pname} ...")
                r = time_call(fn, args.repeat, budget=args.peer_budget)
            except Exception as exc:
                rec["peers"][pname] = {"skipped": f"{type(exc).__name__}: {str(exc)[:200]}"}
                gc.collect()
                continue
            res = r.pop("result")
            diff = compare(ours, res)
            del res, fn
            gc.collect()
            entry = {
                "time_s": r["median_s"],
                "runs": len(r["times_s"]),
                "speedup": r["median_s"] / tm["median_s"],
                "max_rel_diff": diff,
            }
            rec["peers"][pname] = entry
            # NumPy computes in the input dtype (16-bit sums are inexact), so only check the
            # float32 results and PyTorch (which accumulates 16-bit inputs in float32).
            if diff is not None and (case.tag == "f32" or pname == "torch") and diff > TOL[case.tag]:
                rec["notes"].append(f"differs from {pname}: {diff:.2e}")

    del ours
    gc.collect()

    if not args.no_memory:
        log("    peak memory (subprocess) ...")
        pk = measure_peak(case, args.threads)
        if "extra_peak_bytes" in pk:
            rec["extra_peak_bytes"] = pk["extra_peak_bytes"]
            rec["extra_peak_pct_of_input"] = 100.0 * pk["extra_peak_bytes"] / case.input_bytes
            rec["peak_method"] = pk.get("method")
        else:
            rec["notes"].append(f"peak memory: {pk.get('error')}")
    return rec


COLUMNS = [
    ("case", "<"),
    ("shape", ">"),
    ("dtype", "<"),
    ("time", ">"),
    ("GB/s", ">"),
    ("elem/ns", ">"),
    ("roofline", ">"),
    ("vs torch", ">"),
    ("vs numpy", ">"),
    ("vs scipy", ">"),
    ("extra peak", ">"),
    ("notes", "<"),
]


def row_cells(rec: Dict[str, Any]) -> List[str]:
    n, c = rec["shape"]
    if "error" in rec:
        return [rec["case"], f"{n}x{c}", rec["dtype"]] + ["-"] * 8 + [rec["error"]]

    def peer(name: str) -> str:
        p = rec["peers"].get(name)
        if not p or "speedup" not in p:
            return "-"
        s = fmt_ratio(p["speedup"])
        return s if p["runs"] >= 2 else s + "*"

    if "extra_peak_bytes" in rec:
        mb = rec["extra_peak_bytes"] / MiB
        peak = f"{mb:.1f} MiB ({rec['extra_peak_pct_of_input']:.1f}%)"
    else:
        peak = "-"
    return [
        rec["case"],
        f"{n}x{c}",
        rec["dtype"],
        fmt_time(rec.get("time_s")),
        f"{rec['gb_per_s']:.2f}",
        f"{rec['elements_per_ns']:.3f}",
        f"{rec['roofline_ratio']:.2f}" if "roofline_ratio" in rec else "-",
        peer("torch"),
        peer("numpy"),
        peer("scipy"),
        peak,
        "; ".join(rec["notes"]),
    ]


def print_table(records: List[Dict[str, Any]]) -> None:
    rows = [row_cells(r) for r in records]
    heads = [h for h, _ in COLUMNS]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(heads)]

    def line(cells: List[str]) -> str:
        out = []
        for (h, align), w, cell in zip(COLUMNS, widths, cells):
            out.append(cell.ljust(w) if align == "<" else cell.rjust(w))
        return "  ".join(out).rstrip()

    print(line(heads))
    print(line(["-" * w for w in widths]))
    for r in rows:
        print(line(r))


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="~32 MiB arrays instead of ~512 MiB")
    ap.add_argument("--json", metavar="PATH", help="also write all results and machine info as JSON")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for fastnll and torch (default: all cores)")
    ap.add_argument("--cases", metavar="REGEX", help="run only cases whose name matches (re.search), e.g. 'logsumexp' or 'C=1000$'")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per measurement, after one warm-up (median reported)")
    ap.add_argument("--peer-budget", type=float, default=60.0, metavar="SEC",
                    help="cap on timed seconds per peer and case; slow peers get fewer runs (marked *)")
    ap.add_argument("--no-peers", action="store_true", help="skip PyTorch/NumPy/SciPy")
    ap.add_argument("--no-memory", action="store_true", help="skip the extra-peak-memory subprocesses")
    ap.add_argument("--list", action="store_true", help="list case names and shapes, then exit")
    args = ap.parse_args(argv)
    if args.repeat < 1 or args.threads < 1:
        ap.error("--repeat and --threads must be >= 1")

    cases = build_cases(QUICK_BYTES if args.quick else FULL_BYTES)
    if args.cases:
        pat = re.compile(args.cases)
        cases = [c for c in cases if pat.search(c.name)]
    if args.list:
        for c in cases:
            print(f"{c.name:40s} {c.n}x{c.c}  {c.input_bytes / MiB:.1f} MiB")
        return 0
    if not cases:
        print("no case matches --cases", file=sys.stderr)
        return 2

    # Threads: env first (read at import if fastnll has no setter), torch afterwards.
    os.environ["FASTNLL_NUM_THREADS"] = str(args.threads)
    fast = Fast(args.threads)
    torch = None
    if not args.no_peers:
        try:
            import torch as _torch

            _torch.set_num_threads(args.threads)
            torch = _torch
        except ImportError:
            log("torch not installed: PyTorch column will be '-'")

    if not fast.has("evaluate"):
        skipped = [c.name for c in cases if c.op == "evaluate"]
        cases = [c for c in cases if c.op != "evaluate"]
        if skipped:
            log("fastnll has no evaluate: skipping " + ", ".join(skipped))
        if not cases:
            return 2

    info = machine_info(fast, args.threads, torch)
    log(f"fastnll {info['versions']['fastnll']}  simd={info['simd_path']}  threads={args.threads} "
        f"({info['thread_setting']})  cpu={info['cpu_model']}")
    if fast.missing:
        log("missing from fastnll: " + ", ".join(fast.missing))
    load1 = info.get("load_average_at_start", [0.0])[0]
    if load1 > 0.5:
        log(f"warning: 1-minute load average is {load1} before starting: other work on the cores "
            "will disturb the timings")

    # Run grouped by array so each array is generated once; print in the canonical order.
    groups: Dict[Tuple[str, int, int], List[Case]] = {}
    for c in cases:
        groups.setdefault(c.key, []).append(c)
    records: Dict[int, Dict[str, Any]] = {}
    time_cache: Dict[Tuple[str, Tuple[str, int, int]], float] = {}
    t_start = time.time()
    for key, group in groups.items():
        tag, n, c = key
        log(f"[{DTYPE_NAMES[tag]} {n}x{c}] generating {group[0].logits_bytes / MiB:.0f} MiB ...")
        x = make_logits(n, c, tag)
        t = make_targets(n, c) if any(k.needs_target for k in group) else None
        for case in group:
            log(f"  {case.name}")
            rec = run_case(case, x, t, fast, torch, args, time_cache)
            records[case.order] = rec
            if "error" in rec:
                log(f"    error: {rec['error']}")
            else:
                log(f"    {fmt_time(rec['time_s'])}  {rec['gb_per_s']:.2f} GB/s  roofline "
                    f"{rec.get('roofline_ratio', float('nan')):.2f}")
        del x, t
        gc.collect()

    ordered = [records[k] for k in sorted(records)]
    print()
    llc = info["caches"].get("L3") or info["caches"].get("L2")
    print(f"fastnll {info['versions']['fastnll']} | {info['cpu_model']} (LLC {llc}) | threads={args.threads} | "
          f"simd={info['simd_path']} | numpy {info['versions']['numpy']} | torch {info['versions']['torch']} | "
          f"scipy {info['versions']['scipy']} | {'quick (~32 MiB)' if args.quick else '~512 MiB'} arrays | "
          f"median of {args.repeat}")
    print_table(ordered)
    print("roofline = read-only SIMD sum time / case time (1.0 = bandwidth bound); vs X = X time / fastnll "
          "time; * = peer timed fewer than 2 runs (--peer-budget); extra peak = VmHWM growth over one call.")
    if fast.missing:
        print("missing from fastnll: " + ", ".join(fast.missing))
    print(f"total {time.time() - t_start:.0f} s")

    if args.json:
        out = {
            "machine": info,
            "config": {
                "quick": args.quick,
                "array_bytes_target": QUICK_BYTES if args.quick else FULL_BYTES,
                "repeat": args.repeat,
                "threads": args.threads,
                "peer_budget_s": args.peer_budget,
                "cases_pattern": args.cases,
                "seed": SEED,
            },
            "missing_from_fastnll": fast.missing,
            "cases": ordered,
        }
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, default=lambda o: o.item() if hasattr(o, "item") else str(o))
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == _CHILD:
        mem_child(sys.argv[2])
        sys.exit(0)
    sys.exit(main())
