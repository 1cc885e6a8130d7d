"""Read tensors of other libraries (PyTorch, JAX, CuPy host arrays, ...) in place through DLPack.

Any object whose type has ``__dlpack__`` becomes a read-only NumPy view of the same memory,
without importing the producing library:

* The device comes from ``__dlpack_device__``: only CPU memory is read. A GPU tensor is a
  TypeError saying to call ``.cpu()`` first; nothing is ever copied silently.
* A PyTorch tensor (recognised by its type's module name) that requires grad is detached first
  (a new view of the same storage: free), since torch refuses to export it otherwise.
* bfloat16 has no NumPy dtype that DLPack can name (NumPy < 2.5), so a bfloat16 capsule is
  re-labelled as uint16 before NumPy takes it and the result is viewed as ``ml_dtypes.bfloat16``
  (same 2 bytes per element, same strides: still no copy).

NumPy's ``from_dlpack`` does the rest (strides, byte offset, keeping the producer's memory alive
for the array's lifetime).
"""

from __future__ import annotations

import ctypes
from typing import Any, cast

import numpy as np

from ._bf16 import bf16 as _bf16

__all__ = ["device_name", "from_dlpack", "is_dlpack"]

_KDL_CPU = 1
_KDL_UINT = 1
_KDL_BFLOAT = 4

_DEVICES = {
    1: "cpu",
    2: "cuda",
    3: "cuda_host",
    4: "opencl",
    7: "vulkan",
    8: "metal",
    9: "vpi",
    10: "rocm",
    11: "rocm_host",
    12: "ext_dev",
    13: "cuda_managed",
    14: "oneapi",
    15: "webgpu",
    16: "hexagon",
    17: "maia",
}


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", _DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", _DLDataType),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("byte_offset", ctypes.c_uint64),
    ]


class _DLManagedTensor(ctypes.Structure):  # DLPack < 1.0: "dltensor" capsules
    _fields_ = [
        ("dl_tensor", _DLTensor),
        ("manager_ctx", ctypes.c_void_p),
        ("deleter", ctypes.c_void_p),
    ]


class _DLManagedTensorVersioned(ctypes.Structure):  # DLPack >= 1.0: "dltensor_versioned"
    _fields_ = [
        ("major", ctypes.c_uint32),
        ("minor", ctypes.c_uint32),
        ("manager_ctx", ctypes.c_void_p),
        ("deleter", ctypes.c_void_p),
        ("flags", ctypes.c_uint64),
        ("dl_tensor", _DLTensor),
    ]


_GET_POINTER = ctypes.pythonapi.PyCapsule_GetPointer
_GET_POINTER.restype = ctypes.c_void_p
_GET_POINTER.argtypes = [ctypes.py_object, ctypes.c_char_p]
_GET_NAME = ctypes.pythonapi.PyCapsule_GetName
_GET_NAME.restype = ctypes.c_char_p
_GET_NAME.argtypes = [ctypes.py_object]


def is_dlpack(x: Any) -> bool:
    """True for an object NumPy does not hold natively but that exports DLPack."""
    return not isinstance(x, np.ndarray) and hasattr(type(x), "__dlpack__")


def _is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def _kind(x: Any) -> str:
    return f"{type(x).__module__}.{type(x).__name__}"


def device_name(device: tuple[int, int]) -> str:
    """``(2, 0)`` -> ``"cuda:0"``: a DLPack device as libraries print it."""
    kind, index = int(device[0]), int(device[1])
    return f"{_DEVICES.get(kind, f'device type {kind}')}:{index}"


def _device(x: Any, name: str) -> tuple[int, int]:
    get = getattr(x, "__dlpack_device__", None)
    if get is None:
        raise TypeError(f"{name}: {type(x).__name__} has __dlpack__ but no __dlpack_device__")
    try:
        dev = get()
    except (BufferError, RuntimeError, TypeError, ValueError) as exc:  # e.g. torch's "meta"
        raise TypeError(f"{name} ({_kind(x)}) cannot be read in place: {exc}") from None
    kind, index = int(dev[0]), int(dev[1])
    if kind != _KDL_CPU:
        raise TypeError(
            f"{name} is a {_kind(x)} on {device_name((kind, index))}; "
            "fastnll reads CPU memory only and never copies it over silently: call .cpu() first"
        )
    return kind, index


def _tensor_struct(capsule: Any) -> _DLTensor | None:
    """The DLTensor inside an unconsumed capsule (None if the capsule is of an unknown kind)."""
    raw = _GET_NAME(capsule)
    if raw == b"dltensor_versioned":
        ptr = _GET_POINTER(capsule, raw)
        return cast(_DLTensor, _DLManagedTensorVersioned.from_address(ptr).dl_tensor)
    if raw == b"dltensor":
        ptr = _GET_POINTER(capsule, raw)
        return cast(_DLTensor, _DLManagedTensor.from_address(ptr).dl_tensor)
    return None


class _Export:
    """Hands NumPy one capsule that was already taken from the producer."""

    def __init__(self, capsule: Any, device: tuple[int, int]) -> None:
        self._capsule = capsule
        self._device = device

    def __dlpack__(self, **_: Any) -> Any:
        return self._capsule

    def __dlpack_device__(self) -> tuple[int, int]:
        return self._device


def _export(x: Any, name: str) -> Any:
    try:
        return x.__dlpack__(max_version=(1, 0))
    except TypeError:  # a producer that predates DLPack 1.0 keywords
        pass
    except (BufferError, RuntimeError) as exc:
        raise TypeError(f"{name} ({_kind(x)}) cannot be read in place: {exc}") from None
    try:
        return x.__dlpack__()
    except (BufferError, RuntimeError) as exc:
        raise TypeError(f"{name} ({_kind(x)}) cannot be read in place: {exc}") from None


def from_dlpack(x: Any, name: str = "input") -> np.ndarray:
    """A read-only NumPy view of a CPU tensor's memory (no copy); TypeError for GPU memory or
    a tensor that cannot be exported."""
    device = _device(x, name)
    if _is_torch(x) and getattr(x, "requires_grad", False):
        x = x.detach()  # a view of the same storage, without autograd history
    capsule = _export(x, name)
    dl = _tensor_struct(capsule)
    bf16 = False
    if dl is not None and dl.dtype.code == _KDL_BFLOAT:
        if dl.dtype.bits != 16 or dl.dtype.lanes != 1 or _bf16() is None:
            raise TypeError(
                f"{name} has an unsupported bfloat dtype "
                f"({dl.dtype.bits} bits x {dl.dtype.lanes} lanes)"
            )
        # Same bytes read as uint16: NumPy accepts that; viewed as bfloat16 below.
        dl.dtype.code = _KDL_UINT
        bf16 = True
    try:
        arr = np.from_dlpack(_Export(capsule, device))
    except (BufferError, RuntimeError, TypeError, ValueError) as exc:
        raise TypeError(
            f"{name} ({_kind(x)} of dtype {getattr(x, 'dtype', '?')}) cannot be "
            f"read in place through DLPack: {exc}; accepted dtypes: float32, "
            "float64, float16, bfloat16 (integers for class targets)"
        ) from None
    b16 = _bf16() if bf16 else None
    view = arr.view(b16) if b16 is not None else arr.view()
    view.flags.writeable = False
    return view
