"""Warnings for inputs that are legal but almost surely not what the user meant: probabilities
scored as logits, and ``shift=True`` on a 2-d classifier dump. (Float16 probabilities whose
target underflowed to 0 are counted by ``evaluate``'s ``zero_prob_rows``; see ``clip=``.)"""

from __future__ import annotations

import math
import warnings

import numpy as np

from ._inputs import Dump, _finfo_eps, _sample

__all__ = ["InputWarning", "warn_input"]


class InputWarning(UserWarning):
    """An input that fastnll can score but that looks like a mistake (the message says the fix)."""


def looks_like_probs(rows: np.ndarray, eps: float) -> bool:
    """Every sampled row lies in [0, 1] and sums to 1 (within max(0.01, 4 eps)); C >= 2."""
    if rows.size == 0 or rows.shape[1] < 2:
        return False
    tol = max(0.01, 4 * eps)
    # logits almost always hold a negative value: one reduction decides (a NaN min fails
    # the test too, and an inf max fails the next)
    if not rows.min() >= 0 or not rows.max() <= 1 + tol:
        return False
    return bool(np.all(np.abs(rows.sum(axis=1) - 1) <= tol))


def warn_input(
    d: Dump,
    kind: str,
    ignore_index: int,
    shift: bool,
    budget: int,
    check_kind: bool,
    shift_warned: bool = False,
) -> None:
    """Warn (InputWarning) about probabilities declared as logits (a sample of at most 32 rows
    is read, as for the kind check; skipped with check_kind=False) and about shift=True on
    2-d predictions."""
    if shift and d.two_d and not shift_warned:
        warnings.warn(
            f"{d.name}: shift=True with 2-d predictions {d.x.shape[1] + 1} x {d.x.shape[2]} "
            "scores them as ONE sequence (row i against target i + 1); for a classifier dump "
            "[N, C] drop shift=True (--shift)",
            InputWarning,
            stacklevel=4,
        )
    if kind != "logits" or not check_kind:
        return
    rows = _sample(d, ignore_index, budget)
    if rows is None or not looks_like_probs(rows, _finfo_eps(d.x.dtype)):
        return
    warnings.warn(
        f"{d.name} were declared logits (the default kind) but every sampled row "
        f"({len(rows)} rows) lies in [0, 1] and sums to 1: these look like probabilities, "
        f"whose softmax gives a wrong NLL (near ln C = {math.log(rows.shape[1]):.3g}); pass "
        "kind='probs' (--kind probs), or check_kind=False if they really are logits",
        InputWarning,
        stacklevel=4,
    )
