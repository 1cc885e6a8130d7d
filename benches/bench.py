#!/usr/bin/env python3
"""fastnll benchmark matrix.

    python benches/bench.py [--quick] [--grid matrix|quick|full] [--cases REGEX] [--mib 256]
                            [--threads N] [--repeat 5] [--json out.json] [--list]

Times every cell of the matrix (op x C x logits dtype x target dtype x layout, plus dumps on
disk through the path API and the CLI, and one cold-cache run) against the bandwidth roofline
of the bytes it must touch, PyTorch eager and ``torch.compile``, and measures the extra peak
memory of each call in a fresh interpreter. The cells are defined in cases.py (shared with the
pytest-benchmark tests in test_bench.py); README.md says what every column means.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cases
import dumps
import measure
import numpy as np
from cases import Cell, MiB

FULL_MIB = 256
QUICK_MIB = 16
PEER_MEM_FACTOR = 4.0  # skip torch when ~4x the float inputs would not fit


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fmt_time(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    return f"{s * 1e3:.2f} ms" if s < 1.0 else f"{s:.3f} s"


def fmt_ratio(r: float | None) -> str:
    if r is None:
        return "-"
    return f"{r:.0f}x" if r >= 100 else (f"{r:.1f}x" if r >= 10 else f"{r:.2f}x")


# ----------------------------------------------------------------------------- one cell


def roofline_for(k: Cell, inp: cases.Inputs, roof: measure.Roofline) -> tuple[Any, float, str]:
    """(roofline callable, scale, what it is) for a cell (see README, "Rooflines")."""
    if k.is_file:
        maps = [dumps.file_mapping(inp.paths[0], cases.np_dtype(k.dtype))]
        if k.op == "compare":
            maps.append(dumps.file_mapping(inp.paths[1], cases.np_dtype(k.dtype)))
        mapped = sum(m.nbytes for m in maps)
        return (
            roof.read_mappings(maps),
            inp.file_bytes / mapped,
            "threaded read of the file mapping",
        )
    if k.op in cases.NXC_OUTPUT_OPS:
        in_b = inp.touch_bytes
        return roof.copy(in_b), (in_b + inp.out_bytes) / (2 * in_b), "copy into a fresh array"
    return roof.read(inp.touch_bytes), 1.0, "read of the same bytes, packed"


def check_torch(rec: dict[str, Any], k: Cell, ours: Any, peer: dict[str, Any], name: str) -> None:
    res = peer.pop("result", None)
    if res is None:
        return
    mine = cases.summary(ours)
    d = cases.rel_diff(mine, res)
    peer["max_rel_diff"] = d
    res = res[0] if isinstance(res, tuple) else res
    theirs = res.detach().double().numpy() if hasattr(res, "detach") else np.asarray(res)
    if np.isfinite(np.asarray(mine, dtype=np.float64)).all() and not np.isfinite(theirs).all():
        rec["notes"].append(f"{name} result not finite")
    elif d is not None and d > cases.TORCH_TOL[k.dtype]:
        rec["notes"].append(f"differs from {name}: {d:.1e}")


def run_cell(
    k: Cell,
    data: cases.DataCache,
    roof: measure.Roofline,
    torch: Any,
    args: argparse.Namespace,
    base_fp: dict[Cell, tuple[str | None, Any]],
    startup_s: float | None,
) -> dict[str, Any]:
    rec: dict[str, Any] = {"cell": k.name, "axes": dict(k.__dict__), "notes": [], "peers": {}}
    try:
        inp = data.get(k)
    except Exception as exc:
        rec["error"] = f"inputs: {measure.short(exc)}"
        return rec
    n = inp.x.shape[0]
    rec["shape"] = [n, k.c]
    rec["touch_bytes"] = inp.touch_bytes
    import fastnll

    fn = cases.fastnll_call(fastnll, k, inp, args.threads)
    try:
        ours = fn()
    except Exception as exc:
        rec["error"] = f"fastnll raised {measure.short(exc, 200)}"
        return rec
    fp = cases.fingerprint(ours)
    if k == k.base:
        base_fp[k] = (fp, cases.summary(ours))
    elif k.base in base_fp and fp is not None:
        same = fp == base_fp[k.base][0]
        rec["identical_to_base"] = same
        if not same:
            d = cases.rel_diff(cases.summary(ours), base_fp[k.base][1])
            rec["diff_to_base"] = d
            rec["notes"].append(
                f"not bit-identical to {k.base.layout}/{k.base.tdtype} (rel {d:.1e})"
                if d is not None
                else f"result differs from {k.base.name}"
            )

    if k.cold:
        return cold_run(k, inp, rec, args, startup_s)
    if k.is_file:
        for p in inp.paths:
            subprocess.run(["cat", p], stdout=subprocess.DEVNULL, check=True)
        res = min(dumps.resident_fraction(p) or 0.0 for p in inp.paths)
        rec["resident_fraction"] = res
        if res < 0.99:
            rec["notes"].append(f"only {res:.0%} of the files in the page cache")

    rf, scale, what = roofline_for(k, inp, roof)
    rec["roofline_kind"] = what
    alt = measure.alternate(fn, rf, args.repeat, scale)
    rec.update(
        time_s=alt["case_s"],
        roofline_s=alt["roof_s"],
        roofline_ratio=alt["ratio"],
        pairs_s=alt["pairs_s"],
    )
    rec["gb_per_s"] = inp.touch_bytes / alt["case_s"] / 1e9
    rec["elements_per_ns"] = n * k.c / alt["case_s"] / 1e9
    if not k.is_file:
        lf = cases.lines_fraction(inp.x)
        if lf < 0.95:
            rec["lines_fraction"] = lf
            rec["notes"].append(f"elements fill {lf:.0%} of the lines read")
    if k.via == "cli" and startup_s is not None:
        rec["startup_s"] = startup_s
        rest = alt["case_s"] - startup_s
        rec["notes"].append(f"startup {startup_s * 1e3:.0f} ms")
        if rest > 0:
            rec["roofline_ratio_without_startup"] = alt["roof_s"] / rest
            rec["notes"][-1] += f"; {alt['roof_s'] / rest:.2f} without it"

    if torch is not None and not k.is_file:
        need = PEER_MEM_FACTOR * (inp.touch_bytes + inp.out_bytes)
        if need > 0.8 * measure.available_bytes():
            rec["notes"].append("torch skipped: memory")
        else:
            log("    torch ...")
            peers = measure.torch_peers(
                torch, k, inp, args.repeat, args.peer_budget, not args.no_compile
            )
            if peers.pop("long_targets", False):
                rec["notes"].append("torch: t.long()")
            for name in ("eager", "compile"):
                p = peers.get(name)
                if p is None:
                    continue
                if "error" in p:
                    rec["notes"].append(f"torch {name}: {p['error']}")
                else:
                    check_torch(rec, k, ours, p, "torch" if name == "eager" else "torch.compile")
                    p["speedup"] = p["time_s"] / alt["case_s"]
                rec["peers"][name] = p
            gc.collect()
    del ours
    gc.collect()

    if not args.no_memory and k.via != "cli":
        log("    peak memory (subprocess) ...")
        pk = measure.measure_peak(
            os.path.abspath(__file__), k, args.nbytes, args.threads, inp.paths
        )
        if "extra_peak_bytes" in pk:
            rec["extra_peak_bytes"] = pk["extra_peak_bytes"]
            rec["input_bytes"] = inp.input_bytes
            rec["extra_peak_pct"] = 100.0 * pk["extra_peak_bytes"] / inp.input_bytes
            rec["peak_method"] = pk.get("method")
        else:
            rec["notes"].append(f"peak memory: {pk.get('error')}")
    return rec


def cold_run(
    k: Cell,
    inp: cases.Inputs,
    rec: dict[str, Any],
    args: argparse.Namespace,
    startup_s: float | None,
) -> dict[str, Any]:
    """One run of the CLI from a cold page cache against ``cat`` of the same files from cold."""
    try:
        method = dumps.evict(inp.paths, args.cold_method)
        left = max(dumps.resident_fraction(p) or 0.0 for p in inp.paths)
        if left > 0.05:
            rec["error"] = f"cold cache not reached ({method}: {left:.0%} still resident)"
            return rec
        t0 = time.perf_counter()
        subprocess.run(["cat", *inp.paths], stdout=subprocess.DEVNULL, check=True)
        cat_s = time.perf_counter() - t0
        dumps.evict(inp.paths, args.cold_method)
        cli_s = dumps.run_cli(dumps.cli_command(k.op == "compare", inp.paths), args.threads)[
            "wall_s"
        ]
    except OSError as exc:
        rec["error"] = f"cannot drop the page cache: {measure.short(exc)}"
        return rec
    rec.update(
        time_s=cli_s,
        roofline_s=cat_s,
        roofline_ratio=cat_s / cli_s,
        evict_method=method,
        roofline_kind="cat of the same files from a cold cache",
    )
    rec["gb_per_s"] = inp.file_bytes / cli_s / 1e9
    rec["elements_per_ns"] = rec["shape"][0] * k.c / cli_s / 1e9
    rec["notes"].append(f"cold ({method}); cat {fmt_time(cat_s)}")
    if startup_s is not None and cli_s > startup_s:
        rec["startup_s"] = startup_s
        rec["roofline_ratio_without_startup"] = cat_s / (cli_s - startup_s)
        rec["notes"].append(
            f"startup {startup_s * 1e3:.0f} ms; {rec['roofline_ratio_without_startup']:.2f} without it"
        )
    return rec


# ----------------------------------------------------------------------------- table

COLUMNS = [
    ("cell", "<"),
    ("shape", ">"),
    ("time", ">"),
    ("GB/s", ">"),
    ("elem/ns", ">"),
    ("roofline", ">"),
    ("vs torch", ">"),
    ("vs compile", ">"),
    ("extra peak", ">"),
    ("notes", "<"),
]


def row_cells(rec: dict[str, Any]) -> list[str]:
    shape = "x".join(map(str, rec["shape"])) if "shape" in rec else "-"
    if "error" in rec:
        return [rec["cell"], shape] + ["-"] * 7 + ["ERROR " + rec["error"]]

    def peer(name: str) -> str:
        p = rec["peers"].get(name)
        if not p or "speedup" not in p:
            return "-"
        return fmt_ratio(p["speedup"]) + ("" if p["runs"] >= 2 else "*")

    peak = "-"
    if "extra_peak_bytes" in rec:
        peak = f"{rec['extra_peak_bytes'] / MiB:.1f} MiB ({rec['extra_peak_pct']:.1f}%)"
    return [
        rec["cell"],
        shape,
        fmt_time(rec.get("time_s")),
        f"{rec['gb_per_s']:.2f}",
        f"{rec['elements_per_ns']:.3f}",
        f"{rec['roofline_ratio']:.2f}" if "roofline_ratio" in rec else "-",
        peer("eager"),
        peer("compile"),
        peak,
        "; ".join(rec["notes"]),
    ]


def print_table(records: list[dict[str, Any]]) -> None:
    rows = [row_cells(r) for r in records]
    heads = [h for h, _ in COLUMNS]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(heads)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if a == "<" else c.rjust(w) for (_, a), w, c in zip(COLUMNS, widths, cells)
        ).rstrip()

    print(line(heads))
    print(line(["-" * w for w in widths]))
    for r in rows:
        print(line(r))


def targets_report(records: list[dict[str, Any]]) -> list[tuple[str, int, int, str]]:
    """The issue's bars, checked on this run: (bar, cells checked, cells missing, worst cell)."""
    ok = [r for r in records if "error" not in r]
    ax = lambda r: r["axes"]
    out: list[tuple[str, int, int, str]] = []

    def bar(name: str, rows: list[tuple[float, str]], limit: float, below: bool = False) -> None:
        # a cell misses when its value is under the limit (over it when below=True)
        miss = sorted(
            (v for v in rows if (v[0] >= limit if below else v[0] < limit)), reverse=below
        )
        worst = f"{miss[0][0]:.3g} at {miss[0][1]}" if miss else "-"
        out.append((name, len(rows), len(miss), worst))

    def roof(r: dict[str, Any]) -> float:
        return r["roofline_ratio"] * (
            1.1 / 0.6 if ax(r)["cold"] else 1.0
        )  # cold: within 1.1x of cat

    bar(
        "roofline >= 0.6 (cold: >= 1/1.1 of cat)",
        [(roof(r), r["cell"]) for r in ok if "roofline_ratio" in r],
        0.6,
    )
    bar(
        "f32 cross_entropy C >= 128: roofline >= 0.85",
        [
            (r["roofline_ratio"], r["cell"])
            for r in ok
            if ax(r)["op"] == "cross_entropy"
            and ax(r)["dtype"] == "f32"
            and ax(r)["c"] >= 128
            and ax(r)["store"] == "mem"
            and "roofline_ratio" in r
        ],
        0.85,
    )
    ce_ev = [
        r
        for r in ok
        if ax(r)["op"] in ("cross_entropy", "evaluate_logits")
        and ax(r)["store"] == "mem"
        and ax(r)["tdtype"] in ("i64", "i32")
    ]
    for peer, limit in (("eager", 10.0), ("compile", 3.0)):
        bar(
            f"cross_entropy / evaluate, i64 / i32 targets: >= {limit:g}x torch {peer}",
            [
                (r["peers"][peer]["speedup"], r["cell"])
                for r in ce_ev
                if "speedup" in r["peers"].get(peer, {})
            ],
            limit,
        )
    f32 = {
        (ax(r)["op"], ax(r)["c"], ax(r)["tdtype"], ax(r)["layout"], ax(r)["store"]): r
        for r in ok
        if ax(r)["dtype"] == "f32"
    }
    half = []
    for r in ok:
        a = ax(r)
        if (
            a["dtype"] in ("bf16", "f16")
            and a["op"] in ("cross_entropy", "evaluate_logits")
            and a["c"] >= 1000
        ):
            b = f32.get((a["op"], a["c"], a["tdtype"], a["layout"], a["store"]))
            if b is not None:
                half.append((r["elements_per_ns"] / b["elements_per_ns"], r["cell"]))
    bar("bf16 / f16 cross_entropy, evaluate C >= 1000: >= 1.5x f32 elements/ns", half, 1.5)
    bar(
        "reductions: extra peak (net of the returned array) < 1% of the input (%)",
        [
            (r["extra_peak_pct"], r["cell"])
            for r in ok
            if "extra_peak_pct" in r and ax(r)["op"] not in cases.NXC_OUTPUT_OPS
        ],
        1.0,
        below=True,
    )
    same = [
        (1.0 if r["identical_to_base"] else 0.0, r["cell"]) for r in ok if "identical_to_base" in r
    ]
    bar("bit-identical to the base cell (i64, C order)", same, 0.5)
    return out


def final_line(records: list[dict[str, Any]], selected: int) -> str:
    """ONE line: cells, failures, the minimum roofline ratio and the minimum vs-torch ratios."""
    ok = [r for r in records if "error" not in r]

    def worst(vals: list[tuple[float, str]], label: str) -> str:
        if not vals:
            return f"min {label} -"
        v, name = min(vals)
        return f"min {label} {v:.3g} at {name}"

    roofs = [(r["roofline_ratio"], r["cell"]) for r in ok if "roofline_ratio" in r]
    eager = [
        (r["peers"]["eager"]["speedup"], r["cell"])
        for r in ok
        if "speedup" in r["peers"].get("eager", {})
    ]
    comp = [
        (r["peers"]["compile"]["speedup"], r["cell"])
        for r in ok
        if "speedup" in r["peers"].get("compile", {})
    ]
    diff = sum(1 for r in ok if r.get("identical_to_base") is False)
    return (
        f"cells {selected}: {len(ok)} measured, {len(records) - len(ok)} failed, {diff} not "
        f"bit-identical to their base | {worst(roofs, 'roofline')} | {worst(eager, 'vs torch')} | "
        f"{worst(comp, 'vs torch.compile')}"
    )


# ----------------------------------------------------------------------------- main


def cli_startup(threads: int) -> float | None:
    """Median seconds of starting Python and importing fastnll and its CLI (what every CLI run pays)."""
    cmd = [sys.executable, "-c", "import fastnll, fastnll.cli"]
    env = dict(os.environ, FASTNLL_NUM_THREADS=str(threads))
    ts: list[float] = []
    subprocess.run(cmd, env=env)  # warm: bytecode caches, page cache
    for _ in range(5):
        t0 = time.perf_counter()
        if subprocess.run(cmd, env=env).returncode != 0:
            return None
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--quick", action="store_true", help=f"the quick grid on ~{QUICK_MIB} MiB arrays"
    )
    ap.add_argument(
        "--grid",
        choices=sorted(cases.SELECTIONS),
        help="named selection (default matrix; quick with --quick)",
    )
    ap.add_argument("--cases", metavar="REGEX", help="only cells whose name matches (re.search)")
    ap.add_argument(
        "--mib",
        type=float,
        help=f"MiB per float input (default {FULL_MIB}; {QUICK_MIB} with --quick)",
    )
    ap.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="threads for fastnll and torch"
    )
    ap.add_argument(
        "--repeat",
        type=int,
        help="timed runs per measurement (median), after one warm-up (default 5; 3 with --quick)",
    )
    ap.add_argument(
        "--peer-budget",
        type=float,
        default=30.0,
        metavar="SEC",
        help="cap on timed seconds per peer and cell",
    )
    ap.add_argument("--no-peers", action="store_true", help="skip PyTorch")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    ap.add_argument(
        "--no-memory", action="store_true", help="skip the extra-peak-memory subprocesses"
    )
    ap.add_argument(
        "--dump-dir", help="directory for the dump files (default: a temporary directory)"
    )
    ap.add_argument(
        "--cold-method",
        choices=("drop_caches", "fadvise"),
        default="drop_caches",
        help="how the cold-cache cell empties the page cache (drop_caches needs root; else fadvise)",
    )
    ap.add_argument("--json", metavar="PATH", help="also write every measurement as JSON")
    ap.add_argument(
        "--list", action="store_true", help="print the selected cells and their count, then exit"
    )
    args = ap.parse_args(argv)
    args.repeat = args.repeat or (3 if args.quick else 5)
    if args.repeat < 1 or args.threads < 1:
        ap.error("--repeat and --threads must be >= 1")
    args.grid = args.grid or ("quick" if args.quick else "matrix")
    args.mib = args.mib or (QUICK_MIB if args.quick else FULL_MIB)
    args.nbytes = int(args.mib * MiB)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    cells = cases.select(args.grid, args.cases)
    if args.list:
        for k in cells:
            print(f"{k.name:58s} {cases.describe(k, args.nbytes)}")
        print(cases.count_line(cells))
        return 0
    if not cells:
        log("no cell matches --cases")
        return 2
    os.environ["FASTNLL_NUM_THREADS"] = str(args.threads)
    import fastnll

    fastnll.set_num_threads(args.threads)
    torch, why = (None, "--no-peers") if args.no_peers else measure.setup_torch(args.threads)
    if torch is None:
        log(f"PyTorch columns '-': {why}")
    info = measure.machine_info(fastnll, args.threads, torch)
    log(
        f"fastnll {info['versions']['fastnll']} simd={info['simd_path']} threads={args.threads} "
        f"cpu={info['cpu_model']} | {cases.count_line(cells)}"
    )
    if info.get("load_average_at_start", [0])[0] > 0.5:
        log(
            f"warning: load average {info['load_average_at_start'][0]} at start: other work disturbs the timings"
        )

    order = cases.run_order(cells)
    max_touch = max(k.touch_bytes(args.nbytes) for k in cells)
    roof = measure.Roofline(fastnll, args.threads, int(max_touch * 1.1))
    info["roofline_method"] = roof.method
    # steady-state paging for every cell (see measure.warm_allocator): 4x the largest cell
    warmed, info["allocator_warmup_s"] = measure.warm_allocator(4 * max_touch)
    info["allocator_warmup_bytes"] = warmed
    log(
        f"allocator warmed: {warmed / 2**30:.1f} GiB touched (asked {4 * max_touch / 2**30:.1f},"
        f" capped at a quarter of MemAvailable) in {info['allocator_warmup_s']:.1f} s"
    )
    tmp = None
    dump_dir = args.dump_dir
    if any(k.is_file for k in cells) and dump_dir is None:
        tmp = tempfile.TemporaryDirectory(
            prefix="fastnll-bench-", dir=os.environ.get("TMPDIR", "/var/tmp")
        )
        dump_dir = tmp.name
    if dump_dir:
        info["dump_dir"] = dump_dir
        info["dump_fs"] = dumps.fs_type(dump_dir)
    startup = cli_startup(args.threads) if any(k.via == "cli" for k in cells) else None
    data = cases.DataCache(args.nbytes, dump_dir)
    records: dict[Cell, dict[str, Any]] = {}
    base_fp: dict[Cell, tuple[str | None, Any]] = {}
    t_start = time.time()
    try:
        for i, k in enumerate(order):
            log(f"[{i + 1}/{len(order)}] {k.name}")
            rec = run_cell(k, data, roof, torch, args, base_fp, startup)
            records[k] = rec
            log(
                f"    ERROR {rec['error']}"
                if "error" in rec
                else f"    {fmt_time(rec['time_s'])}  {rec['gb_per_s']:.2f} GB/s  roofline {rec['roofline_ratio']:.2f}"
            )
    finally:
        data.drop_files()
        if tmp is not None:
            tmp.cleanup()
    ordered = [records[k] for k in cells if k in records]
    print()
    print(
        f"fastnll {info['versions']['fastnll']} | {info['cpu_model']} (L3 {info['caches'].get('L3', '?')}) | "
        f"threads={args.threads} | simd={info['simd_path']} | numpy {info['versions']['numpy']} | "
        f"torch {info['versions']['torch']} | {args.mib:g} MiB per input | grid {args.grid} | "
        f"median of {args.repeat} (up to {measure.MAX_RUNS} for calls under "
        f"{measure.SHORT_CALL_S * 1e3:g} ms) | roofline: {roof.method}"
    )
    print_table(ordered)
    print(
        "roofline = reference time / cell time (1.0 = as fast as touching its bytes once; see benches/README.md); "
        "vs X = X time / fastnll time; * = fewer than 2 runs; extra peak = growth of peak RSS over one call, less the array it returns."
    )
    failed = [r for r in ordered if "error" in r]
    for r in failed:
        print(f"FAILED {r['cell']}: {r['error']}")
    print(f"total {time.time() - t_start:.0f} s; {cases.count_line(cells)}")
    bars = targets_report(ordered)
    for name, checked, miss, worst in bars:
        print(
            f"bar: {name}: {miss} of {checked} cells miss" + (f" (worst {worst})" if miss else "")
        )
    if args.json:
        out = {
            "machine": info,
            "config": {k: v for k, v in vars(args).items()},
            "cases": ordered,
            "bars": [dict(zip(("bar", "checked", "missing", "worst"), b)) for b in bars],
        }
        with open(args.json, "w") as f:
            json.dump(
                out, f, indent=1, default=lambda o: o.item() if hasattr(o, "item") else str(o)
            )
        log(f"wrote {args.json}")
    print(final_line(ordered, len(cells)))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == measure.CHILD:
        measure.mem_child(sys.argv[2])
        sys.exit(0)
    sys.exit(main())
