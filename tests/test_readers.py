"""fastnll.readers: .npy, .npz, .safetensors and raw binary, all memory-mapped where possible."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from eval_reference import make_preds, make_targets
from fastnll.evaluate import evaluate
from fastnll.readers import (
    DumpError,
    list_arrays,
    load_array,
    open_raw,
    open_safetensors,
    parse_dtype,
    parse_shape,
    split_key,
)

ST_CODES = {
    np.dtype(np.float32): "F32",
    np.dtype(np.float16): "F16",
    np.dtype(ml_dtypes.bfloat16): "BF16",
    np.dtype(np.float64): "F64",
    np.dtype(np.int64): "I64",
    np.dtype(np.int32): "I32",
    np.dtype(np.uint8): "U8",
}


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], pad: int = 0) -> None:
    """Minimal writer following the format: u64 LE header length, JSON header, data."""
    header: dict[str, object] = {"__metadata__": {"format": "np"}}
    blobs, offset = [], 0
    for name, arr in tensors.items():
        data = np.ascontiguousarray(arr).tobytes()
        header[name] = {
            "dtype": ST_CODES[arr.dtype],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode() + b" " * pad
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def _is_mapped(arr: np.ndarray) -> bool:
    base = arr
    while base is not None:
        if isinstance(base, np.memmap) or type(base).__name__ == "mmap":
            return True
        base = getattr(base, "base", None)
    return False


def test_npy_is_memory_mapped(tmp_path: Path) -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.save(tmp_path / "a.npy", x)
    np.save(tmp_path / "f.npy", np.asfortranarray(x))
    for name in ("a.npy", "f.npy"):
        got = load_array(tmp_path / name)
        assert _is_mapped(got) and not got.flags.writeable
        np.testing.assert_array_equal(got, x)
    assert _is_mapped(load_array(str(tmp_path / "a.npy")))


def test_npz_members(tmp_path: Path) -> None:
    x, t = np.ones((4, 3), np.float16), np.arange(4)
    np.savez(tmp_path / "both.npz", logits=x, targets=t)
    np.savez(tmp_path / "one.npz", x)
    np.savez_compressed(tmp_path / "zip.npz", logits=x, targets=t)
    got = load_array(f"{tmp_path}/both.npz:logits")
    assert _is_mapped(got) and got.dtype == np.float16
    np.testing.assert_array_equal(got, x)
    np.testing.assert_array_equal(load_array(tmp_path / "both.npz", key="targets"), t)
    np.testing.assert_array_equal(load_array(tmp_path / "one.npz"), x)
    np.testing.assert_array_equal(load_array(f"{tmp_path}/zip.npz:targets"), t)  # inflated
    assert list_arrays(tmp_path / "both.npz") == ["logits", "targets"]
    with pytest.raises(DumpError, match=r"holds 2 arrays \(logits, targets\)"):
        load_array(tmp_path / "both.npz")
    with pytest.raises(DumpError, match="no array named 'nope'"):
        load_array(f"{tmp_path}/both.npz:nope")


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16, np.float64])
def test_safetensors_dtypes(tmp_path: Path, dtype: type) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 7)).astype(dtype)
    t32 = rng.integers(0, 7, 5).astype(np.int32)
    write_safetensors(
        tmp_path / "d.safetensors", {"logits": x, "t32": t32, "t64": t32.astype(np.int64)}, pad=3
    )
    got = load_array(f"{tmp_path}/d.safetensors:logits")
    assert _is_mapped(got) and got.dtype == np.dtype(dtype) and got.shape == (5, 7)
    np.testing.assert_array_equal(got.view(np.uint8), x.view(np.uint8))
    for key in ("t32", "t64"):
        np.testing.assert_array_equal(open_safetensors(tmp_path / "d.safetensors", key), t32)
    assert list_arrays(tmp_path / "d.safetensors") == ["logits", "t32", "t64"]


def test_safetensors_against_the_package(tmp_path: Path) -> None:
    st = pytest.importorskip("safetensors.numpy")
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float16)
    st.save_file({"x": x, "y": np.arange(3, dtype=np.int64)}, str(tmp_path / "p.safetensors"))
    np.testing.assert_array_equal(load_array(f"{tmp_path}/p.safetensors:x"), x)


def test_safetensors_errors(tmp_path: Path) -> None:
    p = tmp_path / "bad.safetensors"
    p.write_bytes(struct.pack("<Q", 10**9) + b"{}")
    with pytest.raises(DumpError, match="header length"):
        load_array(p)
    p.write_bytes(struct.pack("<Q", 5) + b"{nope")
    with pytest.raises(DumpError, match="not valid JSON"):
        load_array(p)
    p.write_bytes(b"abc")
    with pytest.raises(DumpError, match="too short"):
        load_array(p)
    hdr = json.dumps({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    p.write_bytes(struct.pack("<Q", len(hdr)) + hdr + b"\0" * 8)
    with pytest.raises(DumpError, match="truncated"):
        load_array(p)
    hdr = json.dumps({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}}).encode()
    p.write_bytes(struct.pack("<Q", len(hdr)) + hdr + b"\0" * 16)
    with pytest.raises(DumpError, match="needs 16"):
        load_array(p)
    hdr = json.dumps({"x": {"dtype": "F8_E4M3", "shape": [4], "data_offsets": [0, 4]}}).encode()
    p.write_bytes(struct.pack("<Q", len(hdr)) + hdr + b"\0" * 4)
    with pytest.raises(DumpError, match="unsupported dtype F8_E4M3"):
        load_array(p)


def test_raw_binary(tmp_path: Path) -> None:
    x = np.arange(24, dtype=np.float32).reshape(4, 6)
    (tmp_path / "x.bin").write_bytes(x.tobytes())
    got = load_array(tmp_path / "x.bin", dtype="f32", shape="4,6")
    assert _is_mapped(got)
    np.testing.assert_array_equal(got, x)
    np.testing.assert_array_equal(open_raw(tmp_path / "x.bin", "float32", (-1, 6)), x)
    np.testing.assert_array_equal(
        load_array(tmp_path / "x.bin", dtype=">f4", shape="4x6"), x.view(">f4")
    )
    with pytest.raises(DumpError, match="needs 100"):
        load_array(tmp_path / "x.bin", dtype="f32", shape=(5, 5))
    with pytest.raises(DumpError, match="do not divide"):
        load_array(tmp_path / "x.bin", dtype="f32", shape=(-1, 7))
    with pytest.raises(DumpError, match="give its dtype and shape"):
        load_array(tmp_path / "x.bin")
    with pytest.raises(DumpError, match="no such file"):
        load_array(tmp_path / "missing.npy")
    with pytest.raises(ValueError, match="only for raw"):
        np.save(tmp_path / "x.npy", x)
        load_array(tmp_path / "x.npy", dtype="f32", shape=(4, 6))


def test_parsers_and_keys(tmp_path: Path) -> None:
    assert parse_dtype("bf16") == np.dtype(ml_dtypes.bfloat16)
    assert parse_dtype("half") == np.float16 and parse_dtype("<f4") == np.float32
    with pytest.raises(ValueError):
        parse_dtype("float7")
    assert parse_shape("3, 4") == (3, 4) and parse_shape([2, -1]) == (2, -1)
    for bad in ("a,b", "-1,-1", "-2", ""):
        with pytest.raises(ValueError):
            parse_shape(bad)
    odd = tmp_path / "odd:name.npy"
    np.save(odd, np.zeros((1, 1), np.float32))
    assert split_key(str(odd)) == (odd, None)  # an existing path is never split
    assert split_key("d.npz:logits") == (Path("d.npz"), "logits")
    assert split_key("C:/x.npy") == (Path("C:/x.npy"), None)
    (tmp_path / "dir.npy").mkdir()
    with pytest.raises(DumpError, match="is a directory"):
        load_array(tmp_path / "dir.npy")


@pytest.mark.parametrize("fmt", ["npy", "npz", "safetensors", "raw"])
def test_evaluate_reads_every_format(tmp_path: Path, fmt: str) -> None:
    rng = np.random.default_rng(2)
    x = make_preds(rng, (3, 20, 9), "logits", "bfloat16")
    t = make_targets(rng, (3, 20), 9)
    want = evaluate(x, t, shift=True).to_dict()
    kw: dict[str, object] = {}
    if fmt == "npy":
        np.save(tmp_path / "p.npy", x)
        np.save(tmp_path / "t.npy", t)
        p, tp = tmp_path / "p.npy", tmp_path / "t.npy"
    elif fmt == "npz":
        np.savez(tmp_path / "d.npz", logits=x, targets=t)
        p, tp = f"{tmp_path}/d.npz:logits", f"{tmp_path}/d.npz:targets"
    elif fmt == "safetensors":
        write_safetensors(tmp_path / "d.safetensors", {"logits": x, "targets": t})
        p, tp = f"{tmp_path}/d.safetensors:logits", f"{tmp_path}/d.safetensors:targets"
    else:
        (tmp_path / "p.bin").write_bytes(x.tobytes())
        (tmp_path / "t.i32").write_bytes(t.astype(np.int32).tobytes())
        p, tp = tmp_path / "p.bin", tmp_path / "t.i32"
        kw = {"dtype": "bfloat16", "shape": (3, 20, 9), "target_dtype": "int32"}
    got = evaluate(p, tp, shift=True, **kw).to_dict()
    assert got == want


def test_errors_name_the_file(tmp_path: Path) -> None:
    np.save(tmp_path / "p.npy", np.zeros((4, 3), np.float32))
    np.save(tmp_path / "t.npy", np.array([0, 1, 5, 2]))
    np.save(tmp_path / "short.npy", np.array([0, 1]))
    with pytest.raises(IndexError, match="t.npy"):
        evaluate(tmp_path / "p.npy", tmp_path / "t.npy")
    with pytest.raises(ValueError, match="short.npy"):
        evaluate(tmp_path / "p.npy", tmp_path / "short.npy")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(DumpError, match="junk.npy"):
        evaluate(tmp_path / "junk.npy", tmp_path / "t.npy")
