"""``torch.save`` files (``.pt``/``.pth``): a tensor, or one tensor of a dict (``file.pt:key``).

The file is opened with ``torch.load(path, map_location="cpu", weights_only=True, mmap=True)``:
no pickled code runs, and tensor storages are memory-mapped from the file (file-backed pages,
not a copy in memory). The tensor is then read in place through DLPack, like any tensor.
PyTorch is needed only here, and imported only when a ``.pt`` file is opened.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ._dlpack import from_dlpack

__all__ = ["PT_SUFFIXES", "list_pt", "open_pt"]

PT_SUFFIXES = (".pt", ".pth")


def _error(message: str) -> Exception:
    from .readers import DumpError  # readers imports this module lazily: no import cycle

    return DumpError(message)


def _torch(p: Path) -> Any:
    try:
        import torch
    except ImportError:
        raise _error(
            f"{p}: reading a .pt file needs PyTorch, which is not installed: "
            "pip install torch (or fastnll[peers]), or save the tensors as .npy or "
            ".safetensors"
        ) from None
    return torch


def _load(p: Path) -> Any:
    from .readers import _require_file, _short

    _require_file(p)
    if not zipfile.is_zipfile(p):
        raise _error(
            f"{p}: not a zip-format torch.save file (a legacy-format .pt, which cannot "
            "be memory-mapped: re-save it with torch.save, or not a .pt file at all)"
        )
    torch = _torch(p)
    try:
        return torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        raise _error(
            f"{p}: holds objects that are not tensors, refused by "
            f"torch.load(weights_only=True) ({_short(exc)})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as exc:
        raise _error(f"{p}: not a readable .pt file ({_short(exc)})") from None


def _tensors(p: Path, obj: Any, torch: Any) -> list[str]:
    if not isinstance(obj, dict):
        raise _error(f"{p}: holds a {type(obj).__name__}, not a tensor or a dict of tensors")
    return sorted(k for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor))


def open_pt(path: Any, key: str | None = None) -> np.ndarray:
    """A read-only NumPy view of a tensor saved with ``torch.save`` (memory-mapped, no copy);
    ``key`` names it in a saved dict (a dict of one tensor needs no key)."""
    from .readers import _pick

    p = Path(path)
    obj = _load(p)
    torch = _torch(p)
    if isinstance(obj, torch.Tensor):
        if key is not None:
            raise _error(f"{p}: holds a single tensor; there is no {key!r}")
        tensor = obj
    else:
        tensor = obj[_pick(p, _tensors(p, obj, torch), key, "tensor")]
    try:
        return from_dlpack(tensor, str(p))
    except TypeError as exc:
        raise _error(str(exc)) from None


def list_pt(path: Any) -> list[str]:
    """Names of the tensors in a ``.pt`` dict (``[]`` for a file holding one tensor)."""
    p = Path(path)
    obj = _load(p)
    torch = _torch(p)
    return [] if isinstance(obj, torch.Tensor) else _tensors(p, obj, torch)
