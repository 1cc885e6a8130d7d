"""The benchmark matrix of fastnll: named axes, named selections of cells, their inputs and calls.

Shared by ``bench.py`` (the table) and ``test_bench.py`` (pytest-benchmark), so both time the
same cells on the same data. A cell is one call of the public API on one kind of input:

    op x C x logits dtype x target dtype x layout   (arrays in memory, ``store="mem"``)
    evaluate / compare on .npy / .safetensors files  (``store`` = "npy" | "safetensors",
                                                      ``via`` = "path" (Python) | "cli")

Data are deterministic (fixed seeds, generated in fixed chunks), so every process builds the
same arrays; a cell in another target dtype or layout holds the same values as its base cell
(``int64`` targets, C order), so their results must be bit-identical.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from dumps import cli_command, run_cli, write_npy, write_safetensors

MiB = 1 << 20
SEED = 20240611
GEN_ELEMS = 1 << 22  # elements generated per chunk (bounded temporaries, deterministic values)

# ----------------------------------------------------------------------------- axes

OPS = (
    "cross_entropy",
    "nll_loss",
    "logsumexp",
    "log_softmax",
    "softmax",
    "evaluate_logits",
    "evaluate_log_probs",
    "evaluate_probs",
    "compare",
    "bce_with_logits",
    "cross_entropy_soft",
    "cross_entropy_smooth",
)
CLASS_COUNTS = (2, 3, 10, 32, 100, 128, 1000, 32000, 128256)
DTYPES = ("f32", "bf16", "f16", "f64")
TDTYPES = ("i64", "i32", "u16", "u8")
LAYOUTS = ("c", "rows2", "cols", "fortran")
STORES = ("npy", "safetensors")

BASE_DTYPE, BASE_TDTYPE, BASE_LAYOUT = "f32", "i64", "c"
LABEL_SMOOTHING = 0.1
COLD_FACTOR = 4  # the cold-cache cell's dump is 4x the size of the others (startup is fixed)

LAYOUT_DOC = {
    "c": "C order",
    "rows2": "x[::2] of a (2N, C) array",
    "cols": "x[:, :C] of an (N, C + pad) array, pad = max(1, C // 8)",
    "fortran": "Fortran order (np.asfortranarray)",
}
TDTYPE_NP = {"i64": np.int64, "i32": np.int32, "u16": np.uint16, "u8": np.uint8}
TDTYPE_MAX_C = {"i64": 1 << 62, "i32": 1 << 31, "u16": 65536, "u8": 256}

# ops -> what the float input holds; ops with integer class targets
OP_KIND = {op: "logits" for op in OPS}
OP_KIND.update(
    {"nll_loss": "log_probs", "evaluate_log_probs": "log_probs", "evaluate_probs": "probs"}
)
INT_TARGET_OPS = {
    "cross_entropy",
    "nll_loss",
    "evaluate_logits",
    "evaluate_log_probs",
    "evaluate_probs",
    "compare",
    "cross_entropy_smooth",
}
# second float input of the same shape: compare's "new" logits, soft targets, BCE targets
SECOND = {"compare": "logits2", "cross_entropy_soft": "probs2", "bce_with_logits": "binary"}
NXC_OUTPUT_OPS = {"log_softmax", "softmax"}
PER_ROW_OUTPUT_OPS = {"logsumexp"}


def np_dtype(tag: str) -> np.dtype:
    """NumPy dtype of a logits dtype tag (bf16 is ml_dtypes.bfloat16)."""
    if tag == "bf16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype({"f32": np.float32, "f16": np.float16, "f64": np.float64}[tag])


def out_itemsize(tag: str) -> int:
    """Per-row / N x C outputs are float32 for 16/32-bit input, float64 for float64."""
    return 8 if tag == "f64" else 4


@dataclass(frozen=True)
class Cell:
    """One benchmark cell. ``tdtype`` is None for ops without integer targets; file cells have
    ``store`` "npy"/"safetensors" and ``via`` "path" or "cli"; ``cold`` = from a cold page cache."""

    op: str
    c: int
    dtype: str = BASE_DTYPE
    tdtype: str | None = BASE_TDTYPE
    layout: str = BASE_LAYOUT
    store: str = "mem"
    via: str = "api"
    cold: bool = False

    @property
    def name(self) -> str:
        td = self.tdtype or "-"
        if self.store == "mem":
            return f"{self.op}/{self.dtype}/{td}/{self.layout}/C={self.c}"
        head = ("cold:" if self.cold else "") + f"{self.via}:{self.op}"
        return f"{head}/{self.dtype}/{td}/{self.store}/C={self.c}"

    @property
    def kind(self) -> str:
        return OP_KIND[self.op]

    @property
    def is_file(self) -> bool:
        return self.store != "mem"

    @property
    def base(self) -> Cell:
        """The same op, dtype and C with int64 targets in C order (its results must match)."""
        return replace(
            self, tdtype=BASE_TDTYPE if self.op in INT_TARGET_OPS else None, layout=BASE_LAYOUT
        )

    def rows(self, nbytes: int) -> int:
        """N such that one float input is about ``nbytes`` (COLD_FACTOR times that when cold)."""
        nbytes *= COLD_FACTOR if self.cold else 1
        return max(1, nbytes // (self.c * np_dtype(self.dtype).itemsize))

    def touch_bytes(self, nbytes: int) -> int:
        """Bytes the call must touch with float inputs of about ``nbytes``: the float inputs and
        targets (packed), plus per-row outputs (logsumexp); N x C outputs are not included.
        nll_loss needs only the target's element of each row: one 64-byte line (or the row)."""
        n = self.rows(nbytes)
        x = n * self.c * np_dtype(self.dtype).itemsize
        if self.op == "nll_loss":  # one gathered element per row: at most a 64-byte line of it
            x = n * min(self.c * np_dtype(self.dtype).itemsize, 64)
        total = x * (2 if self.op in SECOND else 1)
        total += n * np.dtype(TDTYPE_NP[self.tdtype]).itemsize if self.tdtype else 0
        return total + (n * out_itemsize(self.dtype) if self.op in PER_ROW_OUTPUT_OPS else 0)


def cell(
    op: str,
    c: int,
    dtype: str = BASE_DTYPE,
    tdtype: str | None = BASE_TDTYPE,
    layout: str = BASE_LAYOUT,
    **kw: Any,
) -> Cell | None:
    """A Cell, or None where the combination does not exist (uint8 targets at C > 256, ...)."""
    if op not in INT_TARGET_OPS:
        tdtype = None
    elif c > TDTYPE_MAX_C[tdtype]:
        return None
    return Cell(op, c, dtype, tdtype, layout, **kw)


# ----------------------------------------------------------------------------- selections


def _uniq(cells: Iterable[Cell | None]) -> list[Cell]:
    seen, out = set(), []
    for c in cells:
        if c is not None and c not in seen:
            seen.add(c)
            out.append(c)
    return out


def _grids(ops: Iterable[str], cs: Iterable[int]) -> list[Cell | None]:
    """dtype x C, target dtype x C and layout x C for ``ops``, each against the base cell."""
    out: list[Cell | None] = []
    cs = list(cs)
    for op in ops:
        out += [cell(op, c, dtype=d) for d in DTYPES for c in cs]
        out += [cell(op, c, tdtype=t) for t in TDTYPES for c in cs] if op in INT_TARGET_OPS else []
        out += [cell(op, c, layout=lay) for lay in LAYOUTS for c in cs]
    return out


def _files(
    cs_path: Iterable[int],
    cs_cli: Iterable[int],
    cs_cmp: Iterable[int],
    cold_c: int,
    bf16_c: int | None,
) -> list[Cell | None]:
    out: list[Cell | None] = []
    for st in STORES:
        out += [cell("evaluate_logits", c, store=st, via="path") for c in cs_path]
        if bf16_c:
            out.append(cell("evaluate_logits", bf16_c, dtype="bf16", store=st, via="path"))
        out += [cell("evaluate_logits", c, store=st, via="cli") for c in cs_cli]
    out += [cell("compare", c, store="npy", via="path") for c in cs_cmp]
    out += [cell("compare", c, store="npy", via="cli") for c in cs_cmp[-1:]]
    out.append(cell("evaluate_logits", cold_c, store="npy", via="cli", cold=True))
    return out


def matrix() -> list[Cell]:
    """The default selection: every op x every C at the base (f32, int64, C order); the dtype x
    C, target-dtype x C and layout x C grids of cross_entropy and evaluate; every other op in
    every dtype, target dtype and layout at C = 10 and 32000; the dumps on disk."""
    cells: list[Cell | None] = [cell(op, c) for op in OPS for c in CLASS_COUNTS]
    cells += _grids(("cross_entropy", "evaluate_logits"), CLASS_COUNTS)
    cells += _grids(
        [op for op in OPS if op not in ("cross_entropy", "evaluate_logits")], (10, 32000)
    )
    cells += _files((2, 10, 1000, 32000, 128256), (10, 32000), (10, 32000), 32000, 32000)
    return _uniq(cells)


def quick() -> list[Cell]:
    """A reduced grid for development: every op at C = 2 and 1000, every dtype, target dtype and
    layout of cross_entropy and evaluate at C = 10, their half-precision cells at C = 1000, a
    few dumps on disk (no cold run)."""
    cells: list[Cell | None] = [cell(op, c) for op in OPS for c in (2, 1000)]
    cells += _grids(("cross_entropy", "evaluate_logits"), (10,))
    # the half-precision bar (>= 1.5x the f32 elements per ns) is stated for C >= 1000
    cells += [
        cell(op, 1000, dtype=d)
        for op in ("cross_entropy", "evaluate_logits")
        for d in ("bf16", "f16")
    ]
    cells += [
        cell("evaluate_logits", 1000, store=st, via=v) for st in STORES for v in ("path", "cli")
    ]
    cells.append(cell("compare", 1000, store="npy", via="path"))
    return _uniq(cells)


def full() -> list[Cell]:
    """The whole cross product (op x C x dtype x target dtype x layout) plus the dumps."""
    cells: list[Cell | None] = []
    for op in OPS:
        for c in CLASS_COUNTS:
            for d in DTYPES:
                for t in TDTYPES if op in INT_TARGET_OPS else (None,):
                    cells += [cell(op, c, dtype=d, tdtype=t, layout=lay) for lay in LAYOUTS]
    cells += _files(CLASS_COUNTS, (10, 32000), (10, 32000), 32000, 32000)
    return _uniq(cells)


SELECTIONS: dict[str, Callable[[], list[Cell]]] = {"matrix": matrix, "quick": quick, "full": full}


def select(grid: str = "matrix", pattern: str | None = None) -> list[Cell]:
    """Cells of a named selection, optionally filtered by ``re.search(pattern, name)``."""
    import re

    cells = SELECTIONS[grid]()
    if pattern:
        pat = re.compile(pattern)
        cells = [c for c in cells if pat.search(c.name)]
    return cells


def run_order(cells: list[Cell]) -> list[Cell]:
    """Cells grouped so that each array is generated once: by (dtype, C), memory before files,
    the base layout and int64 targets first (so the base result exists for the identity check)."""
    lay = {v: i for i, v in enumerate(LAYOUTS)}
    td = {v: i for i, v in enumerate(TDTYPES)}
    return sorted(
        cells,
        key=lambda k: (
            DTYPES.index(k.dtype),
            k.c,
            k.is_file,
            k.cold,
            lay[k.layout],
            td.get(k.tdtype, -1),
            OPS.index(k.op),
        ),
    )


# ----------------------------------------------------------------------------- data


def _fill_chunks(
    out2d: np.ndarray, seed: int, fill: Callable[[np.random.Generator, int, int], np.ndarray]
) -> None:
    """Fill a C-contiguous (n, c) array row-block by row-block from one seeded generator."""
    n, c = out2d.shape
    rng = np.random.default_rng(seed)
    step = max(1, GEN_ELEMS // c)
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        out2d[r0:r1] = fill(rng, r1 - r0, c).astype(out2d.dtype)


def _normal(rng: np.random.Generator, n: int, c: int) -> np.ndarray:
    return rng.standard_normal((n, c), dtype=np.float32) * np.float32(3.0)


def _log_softmax64(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    m = z.max(axis=1, keepdims=True)
    return z - (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))


def _probs(z: np.ndarray) -> np.ndarray:
    """Softmax mixed with 1% of uniform (in float64), so that no probability rounds to 0 in
    float16 (a 0 at the target would make the NLL infinite)."""
    return 0.99 * np.exp(_log_softmax64(z)) + 0.01 / z.shape[1]


def make_values(role: str, n: int, c: int, dtype: str) -> np.ndarray:
    """A C-contiguous (n, c) array of ``role``: "logits" (N(0, 9)), "log_probs" (their log-softmax
    in float64, then rounded), "probs" (softmax with a 1% uniform floor), "logits2" (another
    seed), "probs2" (soft targets, another seed), "binary" (0/1 BCE targets)."""
    out = np.empty((n, c), dtype=np_dtype(dtype))
    seeds = {
        "logits": SEED,
        "log_probs": SEED,
        "probs": SEED,
        "logits2": SEED + 7,
        "probs2": SEED + 11,
        "binary": SEED + 13,
    }
    fills = {
        "logits": _normal,
        "logits2": _normal,
        "log_probs": lambda g, a, b: _log_softmax64(_normal(g, a, b)),
        "probs": lambda g, a, b: _probs(_normal(g, a, b)),
        "probs2": lambda g, a, b: _probs(_normal(g, a, b)),
        "binary": lambda g, a, b: g.random((a, b), dtype=np.float32) < 0.5,
    }
    _fill_chunks(out, seeds[role], fills[role])
    return out


def make_targets(n: int, c: int, tdtype: str) -> np.ndarray:
    """Class indices uniform in [0, C): the same values in every target dtype."""
    t = np.random.default_rng(SEED + 1).integers(0, c, size=n, dtype=np.int64)
    return t if tdtype == "i64" else t.astype(TDTYPE_NP[tdtype])


def cols_pad(c: int) -> int:
    """Extra columns of the wider array of the "cols" layout."""
    return max(1, c // 8)


def with_layout(base: np.ndarray, layout: str) -> np.ndarray:
    """The same values as ``base`` (C order) in ``layout``; the parent array is kept alive by the
    view. rows2: every other row of a (2N, C) array; cols: the first C columns of (N, C + pad)."""
    n, c = base.shape
    if layout == "c":
        return base
    if layout == "rows2":
        parent = np.empty((2 * n, c), dtype=base.dtype)
        parent[0::2] = base
        parent[1::2] = base
        return parent[0::2]
    if layout == "cols":
        parent = np.zeros((n, c + cols_pad(c)), dtype=base.dtype)
        parent[:, :c] = base
        return parent[:, :c]
    if layout == "fortran":
        return np.asfortranarray(base)
    raise ValueError(layout)


def packed_bytes(a: np.ndarray) -> int:
    return int(a.size) * a.dtype.itemsize


def lines_fraction(x: np.ndarray) -> float:
    """Fraction of the bytes of the 64-byte lines a layout touches that hold its elements
    (1.0 when packed; at most row bytes / row stride for short strided rows), over its first
    4096 rows."""
    if x.flags.c_contiguous or x.flags.f_contiguous or x.ndim != 2:
        return 1.0
    n = min(x.shape[0], 4096)
    r = x.shape[1] * x.dtype.itemsize
    if r > 4096:  # long rows: the lines between a row's ends, never the gap
        return 1.0
    starts = np.arange(n, dtype=np.int64) * abs(x.strides[0])
    first, last = starts // 64, (starts + r - 1) // 64
    span = int((last - first).max()) + 1
    cand = first[:, None] + np.arange(span)[None, :]
    lines = np.unique(cand[cand <= last[:, None]])
    return min(1.0, n * r / (lines.size * 64))


@dataclass
class Inputs:
    """The arrays of one cell (and its files, for file cells)."""

    x: np.ndarray
    t: np.ndarray | None
    y: np.ndarray | None  # second float input (compare's new dump, soft or BCE targets)
    touch_bytes: int  # bytes the call must read (packed) plus per-row output bytes
    out_bytes: int  # N x C output bytes (log_softmax / softmax), else 0
    input_bytes: int = 0  # the inputs' packed sizes (what extra peak memory is relative to)
    paths: tuple[str, ...] | None = None  # files: (preds, [new,] targets)
    file_bytes: int = 0


class DataCache:
    """Builds the inputs of cells, keeping only the arrays of the current (dtype, C, N) group,
    and of the current layout besides the base one (cells come in ``run_order``)."""

    def __init__(self, nbytes: int, dump_dir: str | None = None):
        self.nbytes = nbytes
        self.dump_dir = dump_dir
        self.group: tuple[str, int, int] | None = None
        self.arrays: dict[tuple[Any, ...], np.ndarray] = {}
        self.files: dict[tuple[Any, ...], tuple[str, int]] = {}

    def _enter(self, k: Cell) -> int:
        n = k.rows(self.nbytes)
        g = (k.dtype, k.c, n)
        if g != self.group:
            self.group = g
            self.arrays.clear()
            self.drop_files()
        return n

    def array(self, role: str, n: int, c: int, dtype: str, layout: str) -> np.ndarray:
        key = ("x", role, layout)
        if key not in self.arrays:
            if layout != "c":  # keep the base and one other layout
                for k in [k for k in self.arrays if k[0] == "x" and k[2] not in ("c", layout)]:
                    del self.arrays[k]
                base = self.array(role, n, c, dtype, "c")
                self.arrays[key] = with_layout(base, layout)
            else:
                self.arrays[key] = make_values(role, n, c, dtype)
        return self.arrays[key]

    def targets(self, n: int, c: int, tdtype: str) -> np.ndarray:
        key = ("t", tdtype)
        if key not in self.arrays:
            self.arrays[key] = make_targets(n, c, tdtype)
        return self.arrays[key]

    def get(self, k: Cell) -> Inputs:
        """The inputs of cell ``k`` (files are written to ``dump_dir`` for file cells)."""
        n = self._enter(k)
        x = self.array(k.kind, n, k.c, k.dtype, k.layout)
        t = self.targets(n, k.c, k.tdtype) if k.tdtype else None
        y = self.array(SECOND[k.op], n, k.c, k.dtype, k.layout) if k.op in SECOND else None
        touch = k.touch_bytes(self.nbytes)
        out_b = n * k.c * out_itemsize(k.dtype) if k.op in NXC_OUTPUT_OPS else 0
        in_b = sum(packed_bytes(a) for a in (x, t, y) if a is not None)
        inp = Inputs(x, t, y, touch, out_b, in_b)
        if k.is_file:
            if self.dump_dir is None:
                raise RuntimeError("file cells need a dump directory")
            names = [self.write(k, "x", x)] + ([self.write(k, "y", y)] if y is not None else [])
            names.append(self.write(k, "t", t))
            inp.paths = tuple(p for p, _ in names)
            inp.file_bytes = sum(b for _, b in names)
            inp.touch_bytes = inp.input_bytes = inp.file_bytes
        return inp

    def write(self, k: Cell, role: str, a: np.ndarray) -> tuple[str, int]:
        key = (role, k.store, k.tdtype)
        if key not in self.files:
            ext = ".npy" if k.store == "npy" else ".safetensors"
            path = os.path.join(self.dump_dir, f"{role}_{k.dtype}_{k.c}_{k.tdtype}{ext}")
            (write_npy if k.store == "npy" else write_safetensors)(path, a)
            self.files[key] = (path, os.path.getsize(path))
        return self.files[key]

    def drop_files(self) -> None:
        for p, _ in self.files.values():
            try:
                os.unlink(p)
            except OSError:
                pass
        self.files.clear()


# ----------------------------------------------------------------------------- calls


def fastnll_call(fnl: Any, k: Cell, inp: Inputs, threads: int = 0) -> Callable[[], Any]:
    """The timed fastnll call of a cell (public API only)."""
    x, t, y = inp.x, inp.t, inp.y
    op = k.op
    if k.is_file:
        if k.via == "cli":
            cmd = cli_command(k.op == "compare", inp.paths)
            return lambda: run_cli(cmd, threads or os.cpu_count() or 1)["stdout"]
        if op == "compare":
            b, nw, tp = inp.paths
            return lambda: fnl.compare(b, nw, tp, progress=False)
        xp, tp = inp.paths
        return lambda: fnl.evaluate(xp, tp, kind=k.kind, progress=False)
    if op == "cross_entropy":
        return lambda: fnl.cross_entropy(x, t)
    if op == "cross_entropy_smooth":
        return lambda: fnl.cross_entropy(x, t, label_smoothing=LABEL_SMOOTHING)
    if op == "cross_entropy_soft":
        return lambda: fnl.cross_entropy(x, y)
    if op == "nll_loss":
        return lambda: fnl.nll_loss(x, t)
    if op == "logsumexp":
        return lambda: fnl.logsumexp(x, axis=-1)
    if op == "log_softmax":
        return lambda: fnl.log_softmax(x, axis=-1)
    if op == "softmax":
        return lambda: fnl.softmax(x, axis=-1)
    if op.startswith("evaluate_"):
        return lambda: fnl.evaluate(x, t, kind=k.kind, progress=False)
    if op == "compare":
        return lambda: fnl.compare(x, y, t, progress=False)
    if op == "bce_with_logits":
        return lambda: fnl.binary_cross_entropy_with_logits(x, y)
    raise ValueError(op)


def torch_tensor(torch: Any, a: np.ndarray) -> Any:
    """Zero-copy torch view of an array (bfloat16 through an int16 view)."""
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def torch_fn(torch: Any, op: str, long_targets: bool) -> Callable[..., Any]:
    """PyTorch's way to compute the cell's op (what a user would write), as f(x, t, y).
    evaluate_* time the loss and top-1 accuracy (fastnll's evaluate computes every metric);
    compare times KL(base || new) alone. ``long_targets`` converts targets with ``.long()``
    inside the call (PyTorch's losses need int64 class indices)."""
    F = torch.nn.functional

    def tl(t: Any) -> Any:
        return t.long() if long_targets else t

    def acc(x: Any, t: Any) -> Any:  # top-1 accuracy
        return (x.argmax(dim=-1) == tl(t)).float().mean()

    table: dict[str, Callable[..., Any]] = {
        "cross_entropy": lambda x, t, y: F.cross_entropy(x, tl(t)),
        "cross_entropy_smooth": lambda x, t, y: F.cross_entropy(
            x, tl(t), label_smoothing=LABEL_SMOOTHING
        ),
        "cross_entropy_soft": lambda x, t, y: F.cross_entropy(x, y),
        "nll_loss": lambda x, t, y: F.nll_loss(x, tl(t)),
        "logsumexp": lambda x, t, y: torch.logsumexp(x, dim=-1),
        "log_softmax": lambda x, t, y: torch.log_softmax(x, dim=-1),
        "softmax": lambda x, t, y: torch.softmax(x, dim=-1),
        "evaluate_logits": lambda x, t, y: (F.cross_entropy(x, tl(t)), acc(x, t)),
        "evaluate_log_probs": lambda x, t, y: (F.nll_loss(x, tl(t)), acc(x, t)),
        "evaluate_probs": lambda x, t, y: (F.nll_loss(torch.log(x), tl(t)), acc(x, t)),
        "compare": lambda x, t, y: F.kl_div(
            F.log_softmax(y, dim=-1),
            F.log_softmax(x, dim=-1),
            reduction="batchmean",
            log_target=True,
        ),
        "bce_with_logits": lambda x, t, y: F.binary_cross_entropy_with_logits(x, y),
    }
    return table[op]


def torch_args(torch: Any, inp: Inputs) -> tuple[Any, Any, Any]:
    x = torch_tensor(torch, inp.x)
    t = torch.from_numpy(inp.t) if inp.t is not None else None
    y = torch_tensor(torch, inp.y) if inp.y is not None else None
    return x, t, y


# ----------------------------------------------------------------------------- results


def summary(r: Any) -> Any:
    """A comparable summary of a fastnll result: a float, an array, or a report's main metric
    (evaluate: mean NLL; compare: mean KL)."""
    if hasattr(r, "mean_nll"):
        return float(r.mean_nll)
    if hasattr(r, "mean_kl"):
        return float(r.mean_kl)
    if isinstance(r, str):  # CLI output
        return None
    return r


def fingerprint(r: Any) -> str | None:
    """An exact fingerprint of a result (reports by repr: every metric; arrays by bytes), for the
    bit-identity check of a cell against its base cell."""
    if isinstance(r, str):
        return None
    if isinstance(r, np.ndarray):
        import hashlib

        return f"{r.dtype}{r.shape}" + hashlib.sha1(np.ascontiguousarray(r).tobytes()).hexdigest()
    return repr(r)


def rel_diff(a: Any, b: Any) -> float | None:
    """max|a - b| / max(1, max|b|) of two results (torch tensors or NumPy), None if not comparable."""
    try:
        if isinstance(b, tuple):  # PyTorch's evaluate: (loss, accuracy)
            b = b[0]
        if hasattr(b, "detach"):
            b = b.detach().double().numpy()
        fa, fb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if fa.shape != fb.shape:
            return None
        if fa.size == 0:
            return 0.0
        both_nan = np.isnan(fa) & np.isnan(fb)
        d = np.where(both_nan, 0.0, np.abs(fa - fb))
        return float(np.max(d)) / max(
            1.0, float(np.nanmax(np.abs(fb))) if np.isfinite(fb).any() else 1.0
        )
    except Exception:
        return None


# tolerance of a result against PyTorch per logits dtype
TORCH_TOL = {"f32": 1e-4, "f64": 1e-10, "f16": 2e-2, "bf16": 5e-2}


def describe(k: Cell, nbytes: int) -> str:
    n = k.rows(nbytes)
    return f"{n}x{k.c}"


def count_line(cells: list[Cell]) -> str:
    mem = [c for c in cells if not c.is_file]
    return (
        f"{len(cells)} cells ({len(mem)} in memory, {len(cells) - len(mem)} on disk; "
        f"{len({c.op for c in cells})} ops, {len({c.c for c in cells})} C, "
        f"{len({c.dtype for c in cells})} dtypes, {len({c.tdtype for c in cells if c.tdtype})} target "
        f"dtypes, {len({c.layout for c in mem})} layouts)"
    )
