"""Open prediction and target dumps without reading them into memory.

Every reader returns a NumPy array that is either the caller's own array or a read-only
memory map of the file, so a dump far bigger than RAM costs only address space:

* ``.npy``: ``np.load(path, mmap_mode="r")``.
* ``.npz``: a member by name (``"dump.npz:logits"`` or ``key=``); a file holding one array needs
  no name. Stored (uncompressed, ``np.savez``) members are memory-mapped in place; compressed
  members (``np.savez_compressed``) have to be inflated into memory.
* In .npy/.npz, 2-byte opaque void data (``|V2``, how NumPy records ml_dtypes' bfloat16) is
  read as bfloat16.
* ``.safetensors``: the 8-byte little-endian header length and the JSON header are parsed here
  and the tensor is ``np.memmap``-ed at its data offset (no ``safetensors`` package needed).
* ``.pt``/``.pth`` (``torch.save``; ``"file.pt:key"`` for a dict): see ``fastnll._pt``.
* anything else: raw binary, which needs ``dtype`` and ``shape`` (one dimension may be -1).

Errors are :class:`DumpError` (a ``ValueError``) whose message starts with the file name.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _dlpack, _pt

try:
    import ml_dtypes

    _BF16: Optional[np.dtype] = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover
    _BF16 = None

__all__ = [
    "DumpError",
    "PathLike",
    "is_path",
    "split_key",
    "load_array",
    "open_npy",
    "open_npz",
    "open_safetensors",
    "open_raw",
    "read_safetensors_header",
    "list_arrays",
    "parse_dtype",
    "parse_shape",
]

PathLike = Union[str, "os.PathLike[str]"]

KNOWN_SUFFIXES = (".npy", ".npz", ".safetensors", ".pt", ".pth")  # .pt/.pth: see _pt

# safetensors dtype names -> little-endian NumPy dtypes (BF16 handled separately)
_ST_DTYPES: Dict[str, str] = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U64": "<u8",
    "U32": "<u4",
    "U16": "<u2",
    "U8": "u1",
    "BOOL": "?",
}

_DTYPE_ALIASES: Dict[str, str] = {
    "f64": "float64",
    "double": "float64",
    "f32": "float32",
    "float": "float32",
    "f16": "float16",
    "half": "float16",
    "fp16": "float16",
    "fp32": "float32",
    "i64": "int64",
    "i32": "int32",
    "i16": "int16",
    "i8": "int8",
    "u8": "uint8",
    "u16": "uint16",
    "u32": "uint32",
    "u64": "uint64",
}

_MAX_ST_HEADER = 100 << 20  # a safetensors JSON header is small; refuse absurd lengths


class DumpError(ValueError):
    """A dump file cannot be opened or does not hold what was asked for."""


def is_path(source: Any) -> bool:
    """True for str and os.PathLike (the sources the readers open)."""
    return isinstance(source, (str, os.PathLike))


def split_key(source: PathLike) -> Tuple[Path, Optional[str]]:
    """``"dump.npz:logits"`` -> ``(Path("dump.npz"), "logits")``. A path that exists as given is
    never split, so file names holding a colon still work."""
    text = os.fspath(source)
    path = Path(text)
    if path.exists() or ":" not in text:
        return path, None
    head, _, key = text.rpartition(":")
    if head and key and Path(head).suffix.lower() in (".npz", ".safetensors", ".pt", ".pth"):
        return Path(head), key
    return path, None


def parse_dtype(spec: Union[str, np.dtype, type]) -> np.dtype:
    """A dtype from a name: NumPy names and codes (``float32``, ``<f2``, ``>f4``) plus
    ``bfloat16``/``bf16`` and short aliases (``f32``, ``f16``, ``half``, ``i64``...)."""
    if isinstance(spec, np.dtype):
        return spec
    if isinstance(spec, str):
        low = spec.strip().lower()
        if low in ("bfloat16", "bf16"):
            if _BF16 is None:  # pragma: no cover
                raise ValueError("bfloat16 needs the ml_dtypes package")
            return _BF16
        spec = _DTYPE_ALIASES.get(low, spec.strip())
    try:
        return np.dtype(spec)
    except TypeError:
        raise ValueError(f"unknown dtype {spec!r}") from None


def parse_shape(spec: Union[str, Sequence[int]]) -> Tuple[int, ...]:
    """``"1000,50257"`` / ``"1000x50257"`` / ``[1000, 50257]`` -> a tuple; one entry may be -1."""
    if isinstance(spec, str):
        parts = [p for p in spec.replace("x", ",").replace(" ", ",").split(",") if p]
        try:
            dims = tuple(int(p) for p in parts)
        except ValueError:
            raise ValueError(f"bad shape {spec!r}: expected integers like 1000,50257") from None
    else:
        dims = tuple(int(d) for d in spec)
    if not dims:
        raise ValueError("shape must have at least one dimension")
    if sum(d == -1 for d in dims) > 1 or any(d < -1 for d in dims):
        raise ValueError(f"bad shape {dims}: sizes must be >= 0 with at most one -1")
    return dims


def _require_file(path: Path) -> None:
    if not path.exists():
        raise DumpError(f"{path}: no such file")
    if path.is_dir():
        raise DumpError(f"{path}: is a directory, not a dump file")


def _bf16_from_void(arr: np.ndarray) -> np.ndarray:
    """NumPy records ml_dtypes' bfloat16 in .npy headers as opaque 2-byte void ('|V2'):
    read such arrays as bfloat16 (a view, no copy)."""
    dt = arr.dtype
    if dt.kind == "V" and dt.names is None and dt.itemsize == 2 and _BF16 is not None:
        return arr.view(_BF16)
    return arr


def open_npy(path: PathLike) -> np.ndarray:
    """Memory-map a ``.npy`` file read-only (``|V2`` data is read as bfloat16)."""
    p = Path(path)
    _require_file(p)
    try:
        arr = np.load(p, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DumpError(f"{p}: not a readable .npy file ({_short(exc)})") from None
    if not isinstance(arr, np.ndarray):  # pragma: no cover - np.load of .npy is an array
        raise DumpError(f"{p}: not a .npy array")
    return _bf16_from_void(arr)


def read_safetensors_header(path: PathLike) -> Tuple[Dict[str, Any], int]:
    """(header dict without ``__metadata__``, byte offset where tensor data starts)."""
    p = Path(path)
    _require_file(p)
    size = p.stat().st_size
    with open(p, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise DumpError(f"{p}: too short for a .safetensors file ({size} bytes)")
        (n,) = struct.unpack("<Q", raw)
        if n > min(size - 8, _MAX_ST_HEADER):
            raise DumpError(f"{p}: not a .safetensors file (header length {n} > file size {size})")
        text = fh.read(n)
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DumpError(f"{p}: .safetensors header is not valid JSON ({_short(exc)})") from None
    if not isinstance(header, dict):
        raise DumpError(f"{p}: .safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    return header, 8 + n


def _st_dtype(p: Path, name: str, code: Any) -> np.dtype:
    if code == "BF16":
        if _BF16 is None:  # pragma: no cover
            raise DumpError(f"{p}: tensor {name!r} is BF16, which needs ml_dtypes")
        return _BF16
    if code not in _ST_DTYPES:
        raise DumpError(f"{p}: tensor {name!r} has unsupported dtype {code}")
    return np.dtype(_ST_DTYPES[code])


def _pick(p: Path, names: List[str], key: Optional[str], what: str) -> str:
    if key is not None:
        if key not in names:
            raise DumpError(f"{p}: no {what} named {key!r}; it holds: {', '.join(names) or 'none'}")
        return key
    if len(names) == 1:
        return names[0]
    if not names:
        raise DumpError(f"{p}: holds no {what}s")
    listed = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")
    raise DumpError(f"{p}: holds {len(names)} {what}s ({listed}); name one as {p}:{names[0]}")


def open_safetensors(path: PathLike, key: Optional[str] = None) -> np.ndarray:
    """Memory-map one tensor of a ``.safetensors`` file read-only."""
    p = Path(path)
    header, start = read_safetensors_header(p)
    name = _pick(p, sorted(header), key, "tensor")
    info = header[name]
    try:
        code = info["dtype"]
        shape = tuple(int(d) for d in info["shape"])
        begin, end = (int(v) for v in info["data_offsets"])
    except (KeyError, TypeError, ValueError):
        raise DumpError(f"{p}: malformed header entry for tensor {name!r}") from None
    dtype = _st_dtype(p, name, code)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if end - begin != nbytes or begin < 0:
        raise DumpError(
            f"{p}: tensor {name!r} data_offsets span {end - begin} bytes, "
            f"but {code}{list(shape)} needs {nbytes}"
        )
    if start + end > p.stat().st_size:
        raise DumpError(f"{p}: truncated: tensor {name!r} ends past the end of the file")
    if nbytes == 0:
        return np.empty(shape, dtype=dtype)
    return np.memmap(p, dtype=dtype, mode="r", offset=start + begin, shape=shape)


def _zip_data_offset(fh: Any, info: zipfile.ZipInfo) -> int:
    """Offset of a member's bytes: after its local header (which has its own extra field)."""
    fh.seek(info.header_offset)
    local = fh.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise ValueError("bad zip local header")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return int(info.header_offset) + 30 + int(name_len) + int(extra_len)


def open_npz(path: PathLike, key: Optional[str] = None) -> np.ndarray:
    """One member of a ``.npz`` file: memory-mapped if stored, loaded if compressed."""
    p = Path(path)
    _require_file(p)
    try:
        with zipfile.ZipFile(p) as zf:
            infos = {i.filename[:-4] if i.filename.endswith(".npy") else i.filename: i
                     for i in zf.infolist()}
            name = _pick(p, sorted(infos), key, "array")
            info = infos[name]
            if info.compress_type == zipfile.ZIP_STORED and info.flag_bits & 1 == 0:
                with open(p, "rb") as fh:
                    base = _zip_data_offset(fh, info)
                    fh.seek(base)
                    version = np.lib.format.read_magic(fh)
                    if version == (1, 0):
                        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
                    else:
                        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
                    offset = fh.tell()
                if dtype.hasobject:
                    raise DumpError(f"{p}: array {name!r} holds Python objects")
                if int(np.prod(shape, dtype=np.int64)) == 0:
                    return np.empty(shape, dtype=dtype, order="F" if fortran else "C")
                return _bf16_from_void(np.memmap(p, dtype=dtype, mode="r", offset=offset,
                                                 shape=shape, order="F" if fortran else "C"))
        with np.load(p, allow_pickle=False) as npz:
            return _bf16_from_void(np.asarray(npz[name]))
    except DumpError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise DumpError(f"{p}: not a readable .npz file ({_short(exc)})") from None


def open_raw(path: PathLike, dtype: Any, shape: Union[str, Sequence[int]],
             offset: int = 0) -> np.ndarray:
    """Memory-map raw binary of the given dtype and shape (one dimension may be -1)."""
    p = Path(path)
    _require_file(p)
    dt = parse_dtype(dtype)
    dims = list(parse_shape(shape))
    avail = p.stat().st_size - offset
    if -1 in dims:
        known = int(np.prod([d for d in dims if d != -1], dtype=np.int64)) * dt.itemsize
        if known == 0 or avail % known:
            raise DumpError(f"{p}: {avail} bytes do not divide into rows of shape {tuple(dims)} "
                            f"{dt}")
        dims[dims.index(-1)] = avail // known
    need = int(np.prod(dims, dtype=np.int64)) * dt.itemsize
    if need != avail:
        raise DumpError(f"{p}: file holds {avail} bytes but shape {tuple(dims)} of {dt} "
                        f"needs {need}")
    if need == 0:
        return np.empty(tuple(dims), dtype=dt)
    return np.memmap(p, dtype=dt, mode="r", offset=offset, shape=tuple(dims))


def list_arrays(path: PathLike) -> List[str]:
    """Names of the arrays in a ``.npz`` or tensors in a ``.safetensors`` file."""
    p = Path(path)
    if p.suffix.lower() == ".safetensors":
        return sorted(read_safetensors_header(p)[0])
    if p.suffix.lower() in (".pt", ".pth"):
        return _pt.list_pt(p)
    _require_file(p)
    try:
        with zipfile.ZipFile(p) as zf:
            return sorted(n[:-4] if n.endswith(".npy") else n for n in zf.namelist())
    except zipfile.BadZipFile:
        raise DumpError(f"{p}: not a readable .npz file") from None


def load_array(source: Any, *, key: Optional[str] = None, dtype: Any = None,
               shape: Union[None, str, Sequence[int]] = None) -> np.ndarray:
    """An array for any accepted source.

    Arrays (including memmaps) are returned as they are; other array-likes go through
    ``np.asarray``. Paths are opened by suffix (see the module docstring); ``dtype`` and
    ``shape`` are for raw binary only.
    """
    if not is_path(source):
        if key is not None or dtype is not None or shape is not None:
            raise ValueError("key, dtype and shape apply only when reading from a file path")
        if _dlpack.is_dlpack(source):  # a torch / JAX / ... CPU tensor, read in place
            return _dlpack.from_dlpack(source)
        return source if isinstance(source, np.ndarray) else np.asarray(source)
    path, inline_key = split_key(source)
    if key is not None and inline_key is not None and key != inline_key:
        raise ValueError(f"{source}: key given twice ({inline_key!r} and {key!r})")
    key = key if key is not None else inline_key
    suffix = path.suffix.lower()
    if suffix in KNOWN_SUFFIXES:
        if dtype is not None or shape is not None:
            raise ValueError(f"{path}: dtype and shape are only for raw binary files, "
                             f"a {suffix} file records its own")
        if suffix == ".npy":
            if key is not None:
                raise DumpError(f"{path}: a .npy file holds one array; there is no {key!r}")
            return open_npy(path)
        if suffix == ".npz":
            return open_npz(path, key)
        if suffix in (".pt", ".pth"):
            return _pt.open_pt(path, key)
        return open_safetensors(path, key)
    if dtype is None or shape is None:
        _require_file(path)
        raise DumpError(f"{path}: not a .npy/.npz/.safetensors/.pt file; to read raw binary give "
                        f"its dtype and shape (--dtype/--shape)")
    return open_raw(path, dtype, shape)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
