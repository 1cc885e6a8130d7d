"""``torch.save`` files: ``fastnll eval logits.pt targets.pt`` and ``file.pt:key``, memory-mapped.

Expected numbers come from the same arrays passed in memory (whose results the rest of the
suite checks against float64 references) and from a float64 reference of the mean NLL here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fastnll
from conftest import BF16
from fastnll.readers import DumpError, list_arrays, load_array

torch = pytest.importorskip("torch")

N, C = 300, 17


def _cli(*args: Any, env: Any = None) -> subprocess.CompletedProcess:
    full = dict(os.environ, **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "fastnll", *map(str, args)],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env=full,
    )


def _data(dtype: Any) -> Any:
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(N, C, generator=g) * 2).to(dtype)
    t = torch.randint(0, C, (N,), generator=g)
    t[::7] = -100
    return x, t


def _mean_nll_f64(x: Any, t: Any) -> float:
    x64 = x.double().numpy()
    keep = t.numpy() != -100
    m = x64.max(axis=1, keepdims=True)
    lse = np.log(np.exp(x64 - m).sum(axis=1)) + m[:, 0]
    rows = lse - x64[np.arange(N), np.where(keep, t.numpy(), 0)]
    return float(rows[keep].mean())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cli_eval_of_pt_files(tmp_path: Path, dtype: Any) -> None:
    x, t = _data(dtype)
    torch.save(x, tmp_path / "logits.pt")
    torch.save(t, tmp_path / "targets.pt")
    r = _cli("eval", tmp_path / "logits.pt", tmp_path / "targets.pt", "--json", "-")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got.pop("inputs")["preds"] == str(tmp_path / "logits.pt")
    want = fastnll.evaluate(
        x.numpy() if dtype != torch.bfloat16 else x.view(torch.int16).numpy().view(BF16), t.numpy()
    ).to_dict()
    assert got == json.loads(json.dumps(want))
    assert got["rows"] == int((t != -100).sum())
    assert got["mean_nll"] == pytest.approx(_mean_nll_f64(x, t), rel=1e-6)


def test_dict_with_key(tmp_path: Path) -> None:
    x, t = _data(torch.bfloat16)
    p = tmp_path / "dump.pt"
    torch.save({"logits": x, "targets": t.to(torch.int32), "step": 3}, p)
    rep = fastnll.evaluate(f"{p}:logits", f"{p}:targets")
    assert rep.mean_nll == pytest.approx(_mean_nll_f64(x, t), rel=1e-6)
    r = _cli("eval", f"{p}:logits", f"{p}:targets", "--json", "-")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["mean_nll"] == pytest.approx(rep.mean_nll, rel=1e-12)
    assert list_arrays(p) == ["logits", "targets"]  # "step" is not a tensor
    assert load_array(p, key="targets").dtype == np.int32
    single = tmp_path / "one.pt"
    torch.save({"only": x}, single)  # a dict of one tensor needs no key
    np.testing.assert_array_equal(
        load_array(single).view(np.uint16), x.view(torch.int16).numpy().view(np.uint16)
    )


def test_pt_array_is_a_read_only_map_of_the_file(tmp_path: Path) -> None:
    x, _ = _data(torch.float32)
    p = tmp_path / "x.pt"
    torch.save({"x": x}, p)
    arr = load_array(f"{p}:x")
    assert not arr.flags.writeable
    np.testing.assert_array_equal(arr, x.numpy())
    with open("/proc/self/maps") as fh:
        maps = fh.read()
    assert str(p) in maps  # the storage is mmap-ed from the file, not read into memory


RSS_SCRIPT = r"""
import json, sys, threading, time
import numpy as np, torch
from fastnll.evaluate import evaluate

def rss_anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024

evaluate(np.zeros((4, 8), np.float32), np.zeros(4, np.int64))  # warm up
before = rss_anon()
peak = [before]
done = threading.Event()
def poll():
    while not done.is_set():
        peak[0] = max(peak[0], rss_anon())
        time.sleep(0.005)
th = threading.Thread(target=poll, daemon=True); th.start()
rep = evaluate(sys.argv[1], sys.argv[2], progress=False)
done.set(); th.join()
print(json.dumps({"growth": max(peak[0], rss_anon()) - before, "rows": rep.rows,
                  "mean_nll": rep.mean_nll}))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_pt_dump_is_memory_mapped_rss_anon_bounded(tmp_path: Path) -> None:
    n, c = 200_000, 500  # 400 MB of float32
    p = tmp_path / "big.pt"
    torch.save({"logits": torch.zeros(n, c), "targets": torch.arange(n) % c}, p)
    size = p.stat().st_size
    r = subprocess.run(
        [sys.executable, "-c", RSS_SCRIPT, f"{p}:logits", f"{p}:targets"],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    p.unlink()
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["growth"] < 0.05 * size, (
        f"RssAnon grew {got['growth'] / 2**20:.0f} MiB of {size / 2**20:.0f}"
    )
    assert got["rows"] == n
    assert got["mean_nll"] == pytest.approx(np.log(c), rel=1e-6)  # all-equal logits


class Unsafe:
    """A pickled object that torch.load(weights_only=True) refuses to rebuild."""


def test_pt_errors(tmp_path: Path) -> None:
    x, t = _data(torch.float32)
    both = tmp_path / "both.pt"
    torch.save({"logits": x, "targets": t}, both)
    with pytest.raises(DumpError, match=r"both.pt: holds 2 tensors \(logits, targets\); name one"):
        load_array(both)
    with pytest.raises(DumpError, match=r"no tensor named 'nope'; it holds: logits, targets"):
        load_array(f"{both}:nope")
    one = tmp_path / "one.pt"
    torch.save(x, one)
    with pytest.raises(DumpError, match="holds a single tensor; there is no 'k'"):
        load_array(one, key="k")
    legacy = tmp_path / "legacy.pt"
    torch.save(x, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(DumpError, match="legacy.pt: not a zip-format torch.save file"):
        load_array(legacy)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a pickle")
    with pytest.raises(DumpError, match="junk.pt: not a zip-format"):
        load_array(junk)
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"x": x, "obj": Unsafe()}, unsafe)
    with pytest.raises(DumpError, match="unsafe.pt: holds objects that are not tensors"):
        load_array(f"{unsafe}:x")
    lst = tmp_path / "list.pt"
    torch.save([x], lst)
    with pytest.raises(DumpError, match="list.pt: holds a list, not a tensor or a dict"):
        load_array(lst)
    with pytest.raises(DumpError, match="missing.pt: no such file"):
        load_array(tmp_path / "missing.pt")
    r = _cli("eval", f"{both}:nope", f"{both}:targets")
    assert (
        r.returncode != 0 and "no tensor named 'nope'" in r.stderr and "Traceback" not in r.stderr
    )


def test_pt_without_torch_says_to_install_it(tmp_path: Path) -> None:
    x, t = _data(torch.float32)
    torch.save(x, tmp_path / "logits.pt")
    np.save(tmp_path / "t.npy", t.numpy())
    fake = tmp_path / "fake" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named torch')\n")
    path = os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")])
    r = _cli("eval", tmp_path / "logits.pt", tmp_path / "t.npy", env={"PYTHONPATH": path})
    assert r.returncode != 0
    assert "reading a .pt file needs PyTorch, which is not installed: pip install torch" in r.stderr
    assert "Traceback" not in r.stderr
