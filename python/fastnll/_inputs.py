"""Input side of fastnll.evaluate: open and shape-check dumps, plan chunks of rows, check the
declared kind on a sample of rows, and translate core errors into the user's terms."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np

from . import _arrays
from ._guard import FileGuard, guard_for
from ._options import check_bool, check_chunk_bytes, check_ignore_index, check_n_bins, check_top_k
from .readers import KNOWN_SUFFIXES, is_path, load_array, split_key

KINDS = ("logits", "log_probs", "probs")
SAMPLE_ROWS = 32  # rows read by the kind check
DEFAULT_NAMES = ("preds", "target", "base", "new")  # names of in-memory inputs


@dataclass
class Dump:
    """A dump ready for chunked scoring: always held as [B, T, C] views."""

    x: np.ndarray  # [B, T, C] view of the scored predictions (shift already applied)
    t: np.ndarray  # [B, T] view of the matching targets
    name: str  # how messages name the predictions
    tname: str
    out_shape: tuple[int, ...]  # shape of per-row outputs
    two_d: bool = False  # the user's preds were [N, C] (held here as [1, N, C])
    shift: int = 0
    xg: FileGuard | None = None  # guards of file-backed inputs (see _guard)
    tg: FileGuard | None = None

    def preds_block(self, b0: int, b1: int, t0: int, t1: int) -> np.ndarray:
        """The predictions of a block of rows: a view, or a copy when mapped reads are not
        safe (valid until the next block is read)."""
        v = self.x[0, t0:t1] if self.two_d else self.x[b0:b1, t0:t1]
        return self.xg.fetch(v) if self.xg is not None else v

    def block(self, b0: int, b1: int, t0: int, t1: int) -> tuple[np.ndarray, np.ndarray, int]:
        """(preds view, targets, leading-index offset) of a block of rows for the core."""
        t = self.t[0, t0:t1] if self.two_d else self.t[b0:b1, t0:t1]
        if self.tg is not None:
            t = self.tg.fetch(t)  # a view, or a copy valid until the next block
        ts = _arrays.as_target_array(t, self.tname)
        return self.preds_block(b0, b1, t0, t1), ts, t0 if self.two_d else b0

    def rows(self, bi: np.ndarray, ti: np.ndarray) -> np.ndarray:
        """Predictions at (bi, ti) as a new array (never faulting on a shrunk file)."""
        return self.xg.take(self.x, (bi, ti)) if self.xg is not None else self.x[bi, ti]

    def targets_at(self, bi: np.ndarray, ti: np.ndarray) -> np.ndarray:
        """Targets at (bi, ti) as a new array."""
        return self.tg.take(self.t, (bi, ti)) if self.tg is not None else self.t[bi, ti]

    def close(self) -> None:
        """Release the file guards (leases, descriptors)."""
        for g in (self.xg, self.tg):
            if g is not None:
                g.close()
        self.xg = self.tg = None

    def target_error(self, ts: np.ndarray, b0: int, t0: int, ignore_index: int) -> str:
        """Message for the first out-of-range target of a block, in the user's coordinates."""
        c = self.x.shape[-1]
        bad = np.argwhere((ts != ignore_index) & ((ts < 0) | (ts >= c)))
        if not len(bad):
            return ""
        idx = tuple(int(i) for i in bad[0])
        value = int(ts[idx])
        if self.two_d:
            pos = str(t0 + idx[0] + self.shift)
        else:
            pos = f"({b0 + idx[0]}, {t0 + idx[1] + self.shift})"
        head = "" if self.tname in DEFAULT_NAMES else f"{self.tname}: "
        return (
            f"{head}target {value} at position {pos} is out of range for {c} "
            f"classes (valid: 0..{c - 1}, or ignore_index={ignore_index})"
        )


def name_of(source: Any, default: str) -> str:
    """How messages name an input: its path, or a default for in-memory arrays."""
    return os.fspath(source) if is_path(source) else default


def _load_target(target: Any, target_dtype: Any) -> np.ndarray:
    if is_path(target) and split_key(target)[0].suffix.lower() not in KNOWN_SUFFIXES:
        return load_array(target, dtype=target_dtype or "int64", shape=(-1,))
    return load_array(target)


def prepare(
    preds: Any,
    target: Any,
    *,
    shift: bool,
    dtype: Any = None,
    shape: Any = None,
    target_dtype: Any = None,
) -> Dump:
    """Open (without copying) and shape-check predictions and targets."""
    name, tname = name_of(preds, "preds"), name_of(target, "target")
    preds, target = _arrays.tensor_in(preds, name), _arrays.tensor_in(target, tname)
    x = _arrays.as_float_array(load_array(preds, dtype=dtype, shape=shape), name)
    t = _load_target(target, target_dtype)
    if t.dtype.kind not in "iu":
        raise TypeError(f"{tname} must hold integer class indices, got dtype {t.dtype}")
    if x.ndim not in (2, 3):
        raise ValueError(f"{name} must be 2-d [N, C] or 3-d [B, T, V], got shape {x.shape}")
    if x.shape[-1] == 0:
        raise ValueError(f"{name} has 0 classes (shape {x.shape})")
    lead = x.shape[:-1]
    if t.shape != lead and t.ndim == 1 and t.size == math.prod(lead):
        flat = t.view()
        try:
            flat.shape = lead  # a view or nothing: never copy a target dump
            t = flat
        except AttributeError:
            pass
    if t.shape != lead:
        raise ValueError(
            f"{tname} has shape {t.shape} but {name} has shape {x.shape}: "
            f"targets must have shape {lead}"
        )
    if x.ndim == 2:  # one [N, C] table (or one sequence when shifting)
        x, t = x[None], t[None]
    if shift:
        x, t = x[:, :-1], t[:, 1:]
    out_shape = x.shape[1:-1] if len(lead) == 1 else x.shape[:-1]
    xg = guard_for(x)
    try:
        tg = guard_for(t)
    except BaseException:
        if xg is not None:
            xg.close()
        raise
    return Dump(
        x, t, name, tname, tuple(out_shape), two_d=len(lead) == 1, shift=int(shift), xg=xg, tg=tg
    )


def chunks(b: int, t: int, row_bytes: int, chunk_bytes: int) -> Iterator[tuple[int, int, int, int]]:
    """(b0, b1, t0, t1) blocks of whole rows, each at most chunk_bytes (but >= 1 row), of
    near-equal sizes (no small remainder: each block is one parallel call); the rows of a
    block are consecutive in flat [B*T] order."""
    per = max(1, int(chunk_bytes) // max(row_bytes, 1))
    if t == 0 or b == 0:
        return
    if t >= per or b == 1:
        per = -(-t // -(-t // per))  # t split into ceil(t / per) near-equal blocks
        for bi in range(b):
            for t0 in range(0, t, per):
                yield bi, bi + 1, t0, min(t, t0 + per)
    else:
        step = per // t
        step = -(-b // -(-b // step))
        for b0 in range(0, b, step):
            yield b0, min(b, b0 + step), 0, t


#: Bytes of per-row temporaries (NLL, rank, KL, ...) one chunk may allocate: a chunk's rows are
#: capped so that these stay a small, fixed cost instead of a multiple of the input (at C = 2
#: a 256 MiB chunk would allocate 3x its own size in per-row arrays).
ROW_TEMP_BYTES = 8 << 20


def temp_chunk_bytes(chunk_bytes: int, row_bytes: int, temp_per_row: int) -> int:
    """chunk_bytes, lowered so that a chunk's per-row temporaries (temp_per_row bytes each)
    fit ROW_TEMP_BYTES (but a chunk keeps at least 16384 rows: each chunk is a parallel call)."""
    rows = max(ROW_TEMP_BYTES // max(temp_per_row, 1), 16384)
    return min(int(chunk_bytes), rows * max(row_bytes, 1))


def _finfo_eps(dt: np.dtype) -> float:
    try:
        return float(np.finfo(dt).eps)
    except (TypeError, ValueError):
        import ml_dtypes

        return float(ml_dtypes.finfo(dt).eps)  # type: ignore[no-untyped-call]


def _sample(d: Dump, ignore_index: int, budget: int) -> np.ndarray | None:
    """Up to SAMPLE_ROWS non-ignored rows spread through the dump, as float64."""
    b, t, c = d.x.shape
    total = b * t
    if total == 0:
        return None
    # 1024 evenly spaced rows (all rows of a smaller dump); a step >= 1 keeps them distinct
    if total <= 1024:
        cand = np.arange(total, dtype=np.int64)
    else:
        cand = np.linspace(0, total - 1, 1024).astype(np.int64)
    bi, ti = np.divmod(cand, t)
    keep = cand[np.asarray(d.targets_at(bi, ti)) != ignore_index]
    if keep.size == 0:
        return None
    m = max(1, min(SAMPLE_ROWS, budget // (8 * c)))
    if keep.size > m:
        keep = keep[np.linspace(0, keep.size - 1, m).astype(np.int64)]
    bi, ti = np.divmod(keep, t)
    return np.asarray(d.rows(bi, ti)).astype(np.float64)


def _lse(rows: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        m = rows.max(axis=1, keepdims=True)
        m = np.where(np.isfinite(m), m, 0.0)
        out: np.ndarray = np.log(np.exp(rows - m).sum(axis=1)) + m[:, 0]
        return out


def _guess(rows: np.ndarray, tol: float) -> str:
    with np.errstate(invalid="ignore"):
        sums = rows.sum(axis=1)
    if rows.min() >= 0 and rows.max() <= 1 + tol:
        if np.all(np.abs(sums - 1) <= tol):
            return "these look like probabilities: pass kind='probs'"
        return (
            "these look like independent per-class scores (e.g. sigmoid outputs), "
            "not a distribution over classes"
        )
    if rows.max() <= tol and np.all(np.abs(_lse(rows)) <= tol):
        return "these look like log-probabilities: pass kind='log_probs'"
    return "these look like logits: pass kind='logits'"


def shape_of(d: Dump) -> tuple[int, ...]:
    """The scored shape as the user sees it ([N, C] dumps are held as [1, N, C])."""
    return tuple(d.out_shape) + (d.x.shape[-1],)


def _rng(v: np.ndarray) -> str:
    return f"{np.min(v):.3g}..{np.max(v):.3g}"


def check_declared_kind(d: Dump, kind: str, ignore_index: int, budget: int = 64 << 20) -> None:
    """Raise ValueError when sampled rows contradict the declared kind (logits are anything)."""
    if kind == "logits":
        return
    rows = _sample(d, ignore_index, budget)
    if rows is None:
        return
    if np.isnan(rows).any():
        raise ValueError(f"{d.name} hold NaN values (found in a sample of {len(rows)} rows)")
    c = rows.shape[1]
    eps = _finfo_eps(d.x.dtype)
    head = f"{d.name} were declared {kind} but"
    if kind == "log_probs":
        tol = max(0.01, 4 * eps * (1 + math.log(c)))
        if rows.max() > tol:
            problem = f"hold positive values (up to {rows.max():.3g})"
        else:
            lse = _lse(rows)
            if np.all(np.abs(lse) <= tol):
                return
            problem = f"rows do not normalise: logsumexp of sampled rows ranges {_rng(lse)}"
    elif kind == "probs":
        tol = max(0.01, 4 * eps)
        sums = rows.sum(axis=1)
        if rows.min() < 0:
            problem = f"hold negative values (down to {rows.min():.3g})"
        elif rows.max() > 1 + tol:
            problem = f"hold values above 1 (up to {rows.max():.3g})"
        elif np.all(np.abs(sums - 1) <= tol):
            return
        else:
            problem = f"rows do not sum to 1: sums of sampled rows range {_rng(sums)}"
    else:
        return
    raise ValueError(f"{head} {problem}; {_guess(rows, tol)}")


def check_kind(kind: Any) -> str:
    """One of KINDS."""
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return kind


def validate(kind: str, top_k: Sequence[int], n_bins: int, chunk_bytes: int) -> tuple[int, ...]:
    """Check the settings (strictly, see :func:`check_settings`); returns the sorted distinct
    top-k values."""
    return check_settings(kind, top_k, n_bins, chunk_bytes)[1]


def check_settings(
    kind: str,
    top_k: Sequence[int],
    n_bins: int,
    chunk_bytes: int,
    ignore_index: Any = -100,
    shift: Any = False,
    check: Any = True,
) -> tuple[str, tuple[int, ...], int, int, int, bool, bool]:
    """Check every setting the same way (bool and float are not integers; sizes bounded).
    Returns (kind, sorted distinct top_k, n_bins, chunk_bytes, ignore_index, shift,
    check_kind) as validated values."""
    return (
        check_kind(kind),
        check_top_k(top_k),
        check_n_bins(n_bins),
        check_chunk_bytes(chunk_bytes),
        check_ignore_index(ignore_index),
        check_bool("shift", shift),
        check_bool("check_kind", check),
    )


def reraise(
    exc: Exception, d: Dump, ts: np.ndarray, b0: int, t0: int, ignore_index: int
) -> NoReturn:
    """Core errors in the user's terms: out-of-range targets at their position in the
    user's target array (shift and chunking undone), file names in messages."""
    if isinstance(exc, IndexError):
        msg = d.target_error(ts, b0, t0, ignore_index)
        if msg:
            raise IndexError(msg) from None
    if d.name in DEFAULT_NAMES or str(exc).startswith(d.name):
        raise exc
    raise type(exc)(f"{d.name}: {exc}") from None
