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

Only regular files are read (a FIFO, device, directory or ``<(process substitution)`` is a
DumpError, never a hang). Every header field is validated (types, ranges, duplicates, sizes
against the file and against a zip member's stored size) before anything is mapped.

Errors are :class:`DumpError` (a ``ValueError``) whose message starts with the file name.
"""

from __future__ import annotations

import json
import math
import operator
import os
import stat
import struct
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, Union

import numpy as np

from . import _dlpack, _pt
from ._bf16 import bf16 as _bf16

__all__ = [
    "DumpError",
    "PathLike",
    "is_path",
    "list_arrays",
    "load_array",
    "open_npy",
    "open_npz",
    "open_raw",
    "open_safetensors",
    "parse_dtype",
    "parse_shape",
    "read_safetensors_header",
    "split_key",
]

PathLike = Union[str, "os.PathLike[str]"]

KNOWN_SUFFIXES = (".npy", ".npz", ".safetensors", ".pt", ".pth")  # .pt/.pth: see _pt

# safetensors dtype names -> little-endian NumPy dtypes (BF16 handled separately)
_ST_DTYPES: dict[str, str] = {
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

_DTYPE_ALIASES: dict[str, str] = {
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


def split_key(source: PathLike) -> tuple[Path, str | None]:
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


def parse_dtype(spec: str | np.dtype | type) -> np.dtype:
    """A dtype from a name: NumPy names and codes (``float32``, ``<f2``, ``>f4``) plus
    ``bfloat16``/``bf16`` and short aliases (``f32``, ``f16``, ``half``, ``i64``...)."""
    if isinstance(spec, np.dtype):
        return spec
    if isinstance(spec, str):
        low = spec.strip().lower()
        if low in ("bfloat16", "bf16"):
            b16 = _bf16()
            if b16 is None:  # pragma: no cover
                raise ValueError("bfloat16 needs the ml_dtypes package")
            return b16
        spec = _DTYPE_ALIASES.get(low, spec.strip())
    try:
        return np.dtype(spec)
    except (TypeError, ValueError, SyntaxError):
        raise ValueError(f"unknown dtype {spec!r}") from None


def parse_shape(spec: str | Sequence[int]) -> tuple[int, ...]:
    """``"1000,50257"`` / ``"1000x50257"`` / ``[1000, 50257]`` -> a tuple; one entry may be -1."""
    if isinstance(spec, str):
        parts = [p for p in spec.replace("x", ",").replace(" ", ",").split(",") if p]
        try:
            dims = tuple(int(p) for p in parts)
        except ValueError:
            raise ValueError(f"bad shape {spec!r}: expected integers like 1000,50257") from None
    else:
        try:
            dims = tuple(_index(d, "shape entry") for d in spec)
        except TypeError as exc:
            raise ValueError(f"bad shape {spec!r}: {exc}") from None
    if not dims:
        raise ValueError("shape must have at least one dimension")
    if sum(d == -1 for d in dims) > 1 or any(d < -1 for d in dims):
        raise ValueError(f"bad shape {dims}: sizes must be >= 0 with at most one -1")
    return dims


def _index(v: Any, what: str) -> int:
    """An integer that is not a bool (bool and float are not integers here)."""
    if isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{what} must be an integer, got {v!r}")
    try:
        return operator.index(v)
    except TypeError:
        raise TypeError(f"{what} must be an integer, got {v!r}") from None


def _kind_of(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "is a directory"
    if stat.S_ISFIFO(mode):
        return (
            "is a pipe or FIFO (e.g. <(...) process substitution); save it to a regular file first"
        )
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device"
    if stat.S_ISSOCK(mode):
        return "is a socket"
    return "is not a regular file"


def _open_regular(path: Path) -> IO[bytes]:
    """Open a dump read-only, refusing anything but a regular file *before* reading (a FIFO
    is opened non-blocking, so it cannot hang; the check is on the opened descriptor, so the
    path cannot be swapped in between)."""
    try:
        fh = open(path, "rb", opener=lambda p, f: os.open(p, f | os.O_NONBLOCK))  # noqa: SIM115 - returned open
    except FileNotFoundError:
        raise DumpError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DumpError(f"{path}: is a directory, not a dump file") from None
    except OSError as exc:
        raise DumpError(f"{path}: cannot open ({exc.strerror or exc})") from None
    mode = os.fstat(fh.fileno()).st_mode
    if not stat.S_ISREG(mode):
        fh.close()
        raise DumpError(f"{path}: {_kind_of(mode)}, not a dump file (dumps are regular files)")
    return fh


def _require_file(path: Path) -> None:
    _open_regular(path).close()


def _check_dtype(p: Path, dt: np.dtype, what: str = "array") -> None:
    if dt.hasobject:
        raise DumpError(
            f"{p}: {what} has dtype {dt}, which holds Python objects; dumps must hold numbers"
        )
    if dt.itemsize == 0:
        raise DumpError(f"{p}: {what} has dtype {dt} of 0-byte items")


def _nbytes(p: Path, shape: tuple[int, ...], dt: np.dtype, what: str = "array") -> int:
    n = math.prod(shape) * dt.itemsize
    if n >= 1 << 62:
        raise DumpError(
            f"{p}: {what} of shape {shape} and dtype {dt} would be {n} bytes, "
            f"more than any file holds"
        )
    return n


def _npy_header(p: Path, fh: Any, what: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """The header of a .npy stream, validated; any parse failure is a DumpError."""
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except Exception as exc:  # noqa: BLE001 - NumPy's parser raises many kinds
        raise DumpError(
            f"{p}: {what} has a malformed .npy header ({type(exc).__name__}: {_short(exc)})"
        ) from None
    if not isinstance(shape, tuple) or any(type(d) is not int or d < 0 for d in shape):
        raise DumpError(
            f"{p}: {what} has a bad shape {shape!r} in its header (sizes must be integers >= 0)"
        )
    if type(fortran) is not bool:
        raise DumpError(f"{p}: {what} has fortran_order {fortran!r} (must be True or False)")
    if not isinstance(dtype, np.dtype):
        raise DumpError(f"{p}: {what} has an unreadable dtype in its header")
    _check_dtype(p, dtype, what)
    return shape, fortran, dtype


def _bf16_from_void(arr: np.ndarray) -> np.ndarray:
    """NumPy records ml_dtypes' bfloat16 in .npy headers as opaque 2-byte void ('|V2'):
    read such arrays as bfloat16 (a view, no copy)."""
    dt = arr.dtype
    if dt.kind == "V" and dt.names is None and dt.itemsize == 2:
        b16 = _bf16()
        if b16 is not None:
            return arr.view(b16)
    return arr


def open_npy(path: PathLike) -> np.ndarray:
    """Memory-map a ``.npy`` file read-only (``|V2`` data is read as bfloat16). The header is
    validated and the file must hold exactly the bytes it describes."""
    p = Path(path)
    with _open_regular(p) as fh:
        shape, fortran, dtype = _npy_header(p, fh, "the array")
        offset = fh.tell()
        size = os.fstat(fh.fileno()).st_size
        need = _nbytes(p, shape, dtype)
        if size - offset != need:
            state = "truncated: " if size - offset < need else ""
            raise DumpError(
                f"{p}: {state}the header says {dtype} {shape} ({need} bytes of "
                f"data) but the file holds {size - offset}"
            )
        order = "F" if fortran else "C"
        if need == 0:
            return np.empty(shape, dtype=dtype, order=order)  # type: ignore[call-overload,no-any-return]
        return _bf16_from_void(
            np.memmap(  # type: ignore[call-overload]
                fh, dtype=dtype, mode="r", offset=offset, shape=shape, order=order
            )
        )


def _no_duplicates(p: Path) -> Any:
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise DumpError(f"{p}: the .safetensors header names {k!r} twice")
            out[k] = v
        return out

    return hook


def read_safetensors_header(path: PathLike) -> tuple[dict[str, Any], int]:
    """(header dict without ``__metadata__``, byte offset where tensor data starts). Every
    entry is validated: dtype, shape (integers >= 0), data_offsets (two integers within the
    data area, spanning exactly the tensor's bytes); duplicate names are refused."""
    p = Path(path)
    with _open_regular(p) as fh:
        size = os.fstat(fh.fileno()).st_size
        raw = fh.read(8)
        if len(raw) < 8:
            raise DumpError(f"{p}: too short for a .safetensors file ({size} bytes)")
        (n,) = struct.unpack("<Q", raw)
        if n > min(size - 8, _MAX_ST_HEADER):
            raise DumpError(f"{p}: not a .safetensors file (header length {n} > file size {size})")
        text = fh.read(n)
    try:
        header = json.loads(text.decode("utf-8"), object_pairs_hook=_no_duplicates(p))
    except DumpError:
        raise
    except RecursionError:
        raise DumpError(f"{p}: .safetensors header is nested too deeply to be a header") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise DumpError(f"{p}: .safetensors header is not valid JSON ({_short(exc)})") from None
    if not isinstance(header, dict):
        raise DumpError(f"{p}: .safetensors header is not a JSON object")
    meta = header.pop("__metadata__", None)
    if meta is not None and not isinstance(meta, dict):
        raise DumpError(f"{p}: .safetensors __metadata__ is not a JSON object")
    data = size - 8 - n
    for name, info in header.items():
        _st_entry(p, name, info, data)
    return header, 8 + n


def _st_entry(p: Path, name: str, info: Any, data: int) -> tuple[np.dtype, tuple[int, ...], int]:
    """Validate one header entry against a data area of `data` bytes; returns (dtype, shape,
    begin offset)."""
    head = f"{p}: tensor {name!r}"
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
        raise DumpError(
            f"{head}: the header entry must be an object with dtype, shape and data_offsets"
        )
    code, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(code, str):
        raise DumpError(f"{head}: dtype must be a string, got {code!r}")
    dtype = _st_dtype(p, name, code)
    if not isinstance(shape, list) or any(type(d) is not int or d < 0 for d in shape):
        raise DumpError(f"{head}: shape must be a list of integers >= 0, got {shape!r}")
    if (
        not isinstance(offs, list)
        or len(offs) != 2
        or any(type(v) is not int or v < 0 for v in offs)
    ):
        raise DumpError(f"{head}: data_offsets must be two integers >= 0, got {offs!r}")
    begin, end = offs
    nbytes = _nbytes(p, tuple(shape), dtype, f"tensor {name!r}")
    if end < begin or end - begin != nbytes:
        raise DumpError(
            f"{head}: data_offsets span {end - begin} bytes, but {code}{list(shape)} needs {nbytes}"
        )
    if end > data:
        raise DumpError(
            f"{p}: truncated: tensor {name!r} ends at byte {end} of the data, which holds {data}"
        )
    return dtype, tuple(shape), begin


def _st_dtype(p: Path, name: str, code: Any) -> np.dtype:
    if code == "BF16":
        b16 = _bf16()
        if b16 is None:  # pragma: no cover
            raise DumpError(f"{p}: tensor {name!r} is BF16, which needs ml_dtypes")
        return b16
    if code not in _ST_DTYPES:
        raise DumpError(f"{p}: tensor {name!r} has unsupported dtype {code}")
    return np.dtype(_ST_DTYPES[code])


def _pick(p: Path, names: list[str], key: str | None, what: str) -> str:
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


def open_safetensors(path: PathLike, key: str | None = None) -> np.ndarray:
    """Memory-map one tensor of a ``.safetensors`` file read-only."""
    p = Path(path)
    header, start = read_safetensors_header(p)
    name = _pick(p, sorted(header), key, "tensor")
    with _open_regular(p) as fh:
        data = os.fstat(fh.fileno()).st_size - start
        dtype, shape, begin = _st_entry(p, name, header[name], data)
        if math.prod(shape) == 0:
            return np.empty(shape, dtype=dtype)
        return np.memmap(fh, dtype=dtype, mode="r", offset=start + begin, shape=shape)


def _zip_data_offset(fh: Any, info: zipfile.ZipInfo) -> int:
    """Offset of a member's bytes: after its local header (which has its own extra field)."""
    fh.seek(info.header_offset)
    local = fh.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise DumpError("bad zip local header")
    (method,) = struct.unpack("<H", local[8:10])
    if method != zipfile.ZIP_STORED:
        raise DumpError("the local header's compression method differs from the directory's")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return int(info.header_offset) + 30 + int(name_len) + int(extra_len)


def _npz_members(p: Path, zf: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    infos: dict[str, zipfile.ZipInfo] = {}
    for i in zf.infolist():
        name = i.filename.removesuffix(".npy")
        if name in infos:
            raise DumpError(
                f"{p}: holds two members named {i.filename!r}; which one is meant is ambiguous"
            )
        infos[name] = i
    return infos


def _npz_stored(p: Path, fh: IO[bytes], name: str, info: zipfile.ZipInfo) -> np.ndarray:
    what = f"array {name!r}"
    size = os.fstat(fh.fileno()).st_size
    try:
        base = _zip_data_offset(fh, info)
    except DumpError as exc:
        raise DumpError(f"{p}: {what}: {exc}") from None
    if info.file_size != info.compress_size or base + info.compress_size > size:
        raise DumpError(f"{p}: {what}: the zip directory's sizes do not fit the file")
    fh.seek(base)
    shape, fortran, dtype = _npy_header(p, fh, what)
    offset = fh.tell()
    need = _nbytes(p, shape, dtype, what)
    have = base + info.compress_size - offset
    if need != have:
        raise DumpError(
            f"{p}: {what}: the header says {dtype} {shape} ({need} bytes of data) "
            f"but the zip member holds {have}"
        )
    order = "F" if fortran else "C"
    if need == 0:
        return np.empty(shape, dtype=dtype, order=order)  # type: ignore[call-overload,no-any-return]
    return _bf16_from_void(
        np.memmap(  # type: ignore[call-overload]
            fh, dtype=dtype, mode="r", offset=offset, shape=shape, order=order
        )
    )


def _npz_inflate(p: Path, zf: zipfile.ZipFile, name: str, info: zipfile.ZipInfo) -> np.ndarray:
    what = f"array {name!r}"
    with zf.open(info) as zsrc:
        src: Any = zsrc
        shape, fortran, dtype = _npy_header(p, src, what)
        header_len = src.tell()
        need = _nbytes(p, shape, dtype, what)
        if need != info.file_size - header_len:
            raise DumpError(
                f"{p}: {what}: the header says {dtype} {shape} ({need} bytes of "
                f"data) but the zip member holds {info.file_size - header_len}"
            )
        try:
            arr = np.empty(shape, dtype=dtype, order="F" if fortran else "C")
        except MemoryError:
            raise DumpError(
                f"{p}: {what} ({need} bytes) is compressed and too large to "
                f"inflate in memory; store it uncompressed (np.savez)"
            ) from None
        flat = arr.reshape(-1, order="A").view(np.uint8).data
        got = 0
        while got < need:
            k = src.readinto(flat[got:])
            if not k:
                raise DumpError(
                    f"{p}: {what}: the compressed data ends after {got} of {need} bytes"
                )
            got += k
        if src.read(1):
            raise DumpError(f"{p}: {what}: the compressed data is longer than its header says")
    return _bf16_from_void(arr)


def open_npz(path: PathLike, key: str | None = None) -> np.ndarray:
    """One member of a ``.npz`` file: memory-mapped if stored, inflated into memory if
    compressed. Duplicate members, headers that disagree with the member's stored size,
    encrypted members, unknown compression and corrupt data are DumpErrors."""
    p = Path(path)
    with _open_regular(p) as fh:
        try:
            zf = zipfile.ZipFile(fh)
        except Exception as exc:  # noqa: BLE001 - zipfile raises many kinds
            raise DumpError(f"{p}: not a readable .npz file ({_short(exc)})") from None
        with zf:
            infos = _npz_members(p, zf)
            name = _pick(p, sorted(infos), key, "array")
            info = infos[name]
            try:
                if info.flag_bits & 1:
                    raise DumpError(f"{p}: array {name!r} is encrypted")
                if info.compress_type == zipfile.ZIP_STORED:
                    return _npz_stored(p, fh, name, info)
                return _npz_inflate(p, zf, name, info)
            except DumpError:
                raise
            except Exception as exc:  # noqa: BLE001 - zlib.error, NotImplementedError, ...
                raise DumpError(
                    f"{p}: array {name!r} cannot be read ({type(exc).__name__}: {_short(exc)})"
                ) from None


def open_raw(path: PathLike, dtype: Any, shape: str | Sequence[int], offset: int = 0) -> np.ndarray:
    """Memory-map raw binary of the given dtype and shape (one dimension may be -1). The
    dtype must be numeric (no Python objects) and the file must hold exactly the shape."""
    p = Path(path)
    dt = parse_dtype(dtype)
    _check_dtype(p, dt, "raw data")
    dims = list(parse_shape(shape))
    offset = _index(offset, "offset")
    with _open_regular(p) as fh:
        size = os.fstat(fh.fileno()).st_size
        if not 0 <= offset <= size:
            raise DumpError(f"{p}: offset {offset} is outside the file ({size} bytes)")
        avail = size - offset
        if -1 in dims:
            known = math.prod(d for d in dims if d != -1) * dt.itemsize
            if known == 0 or avail % known:
                raise DumpError(
                    f"{p}: {avail} bytes do not divide into rows of shape {tuple(dims)} {dt}"
                )
            dims[dims.index(-1)] = avail // known
        need = _nbytes(p, tuple(dims), dt, "raw data")
        if need != avail:
            raise DumpError(
                f"{p}: file holds {avail} bytes but shape {tuple(dims)} of {dt} needs {need}"
            )
        if need == 0:
            return np.empty(tuple(dims), dtype=dt)
        return np.memmap(fh, dtype=dt, mode="r", offset=offset, shape=tuple(dims))


def list_arrays(path: PathLike) -> list[str]:
    """Names of the arrays in a ``.npz`` or tensors in a ``.safetensors`` file."""
    p = Path(path)
    if p.suffix.lower() == ".safetensors":
        return sorted(read_safetensors_header(p)[0])
    if p.suffix.lower() in (".pt", ".pth"):
        return _pt.list_pt(p)
    with _open_regular(p) as fh:
        try:
            zf = zipfile.ZipFile(fh)
        except Exception as exc:  # noqa: BLE001
            raise DumpError(f"{p}: not a readable .npz file ({_short(exc)})") from None
        with zf:
            return sorted(_npz_members(p, zf))


def load_array(
    source: Any,
    *,
    key: str | None = None,
    dtype: Any = None,
    shape: None | str | Sequence[int] = None,
) -> np.ndarray:
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
            raise ValueError(
                f"{path}: dtype and shape are only for raw binary files, "
                f"a {suffix} file records its own"
            )
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
        raise DumpError(
            f"{path}: not a .npy/.npz/.safetensors/.pt file; to read raw binary give "
            f"its dtype and shape (--dtype/--shape)"
        )
    return open_raw(path, dtype, shape)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
