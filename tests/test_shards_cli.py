"""The command line on many shards: globs, directories and repeated paths give the JSON of the
one-file run (floats to 1e-12, everything else identical), in this process and on a local Dask
cluster (--workers 2); shard lists are expanded, sorted and matched with clear errors."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from eval_reference import make_preds, make_targets, reference_metrics
from fastnll._shards import expand, pair
from fastnll.readers import DumpError


def run(*args: Any) -> tuple[int, str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "fastnll", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    return proc.returncode, proc.stdout, proc.stderr


def _split(d: Path, name: str, arr: np.ndarray, sizes: list[int]) -> list[str]:
    (d / name).mkdir(parents=True, exist_ok=True)
    cuts = np.cumsum([0] + sizes)
    out = []
    for i, (a, b) in enumerate(itertools.pairwise(cuts)):
        p = d / name / f"part-{i}.npy"  # part-10 sorts after part-9 (digits compare as numbers)
        np.save(p, arr[a:b])
        out.append(str(p))
    return out


@pytest.fixture(scope="module")
def dumps(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(4)
    sizes = [3, 1, 2, 1, 1, 1, 1, 1, 1, 1, 2]  # 11 shards: part-10 must follow part-9
    x3 = make_preds(rng, (15, 24, 40), "logits", "float32")
    y3 = make_preds(rng, (15, 24, 40), "logits", "float16")
    t3 = make_targets(rng, (15, 24), 40)
    x2 = make_preds(rng, (1500, 40), "logits", "float32")
    t2 = make_targets(rng, (1500,), 40)
    out: dict[str, Any] = {"dir": d, "x3": x3, "t3": t3, "x2": x2, "t2": t2}
    for name, arr in (("x3", x3), ("y3", y3), ("t3", t3)):
        np.save(d / f"{name}.npy", arr)
        out[name + "_files"] = _split(d, name, arr, sizes)
    for name, arr in (("x2", x2), ("t2", t2)):
        np.save(d / f"{name}.npy", arr)
        out[name + "_files"] = _split(d, name, arr, [s * 100 for s in sizes])
    return out


def _json(args: list[Any], tmp: Path, tag: str) -> dict[str, Any]:
    dest = tmp / f"{tag}.json"
    code, _out, err = run(*args, "--json", dest, "--no-progress")
    assert code == 0, err
    assert "Traceback" not in err
    obj = json.loads(dest.read_text())
    obj.pop("inputs")
    return obj


def _same(a: Any, b: Any, where: str = "") -> None:
    """Equal JSON, floats to 1e-12 relative (shard boundaries change the summation order)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (u, v) in enumerate(zip(a, b)):
            _same(u, v, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-12, abs_tol=0), (where, a, b)
    else:
        assert a == b, where


@pytest.mark.parametrize("shift", [False, True])
def test_eval_glob_directory_and_list_match_one_file(
    dumps: dict[str, Any], tmp_path: Path, shift: bool
) -> None:
    d = dumps["dir"]
    flags = ["--shift"] if shift else []
    for dim in ("3", "2"):  # [B, T, V] shards, and [N, C] shards (one sequence with --shift)
        one = _json(
            ["eval", d / f"x{dim}.npy", d / f"t{dim}.npy", *flags, "--top-k", "1", "3"],
            tmp_path,
            "one",
        )
        ref = reference_metrics(dumps[f"x{dim}"], dumps[f"t{dim}"], shift=shift)
        assert one["rows"] == ref["rows"]
        assert one["mean_nll"] == pytest.approx(ref["mean_nll"], rel=1e-6)
        for form in (
            [d / f"x{dim}" / "*.npy", d / f"t{dim}" / "part-*.npy"],
            [d / f"x{dim}", d / f"t{dim}"],
            dumps[f"x{dim}_files"] + dumps[f"t{dim}_files"],
        ):
            _same(_json(["eval", *form, *flags, "--top-k", "1", "3"], tmp_path, "many"), one)


def test_compare_on_shards_matches_one_file(dumps: dict[str, Any], tmp_path: Path) -> None:
    d = dumps["dir"]
    one = _json(["compare", d / "x3.npy", d / "y3.npy", d / "t3.npy", "--shift"], tmp_path, "1")
    many = _json(["compare", d / "x3", d / "y3" / "*.npy", d / "t3", "--shift"], tmp_path, "m")
    _same(many, one)
    assert one["rows"] == 15 * 23 - int((dumps["t3"][:, 1:] == -100).sum())


def test_workers_2_and_scheduler_give_the_same_json(dumps: dict[str, Any], tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    d = dumps["dir"]
    one = _json(["eval", d / "x3.npy", d / "t3.npy", "--shift"], tmp_path, "one")
    _same(
        _json(["eval", d / "x3" / "*.npy", d / "t3", "--shift", "--workers", "2"], tmp_path, "w"),
        one,
    )
    cmp_one = _json(["compare", d / "x2.npy", d / "x2.npy", d / "t2.npy"], tmp_path, "c1")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as lc:
        addr = lc.scheduler_address
        _same(
            _json(["compare", d / "x2", d / "x2", d / "t2", "--scheduler", addr], tmp_path, "cw"),
            cmp_one,
        )
        bad = dumps["t3"].copy()
        bad[4, 7] = 40  # shard part-2 holds sequences 4..5: its (0, 7)
        files = _split(tmp_path, "bad", bad, [3, 1, 2, 1, 1, 1, 1, 1, 1, 1, 2])
        code, _, err = run("eval", d / "x3", tmp_path / "bad", "--scheduler", addr)
        assert code == 1 and err.count("\n") == 1, err
        assert f"{files[2]}: target 40 at position (0, 7) is out of range for 40 classes" in err
    code, _, err = run("eval", d / "x3", tmp_path / "bad", "--workers", "2", "--no-progress")
    assert code == 1 and err.count("\n") == 1, err  # a local cluster's logs stay quiet


def test_shard_lists_are_sorted_and_checked(dumps: dict[str, Any], tmp_path: Path) -> None:
    d = dumps["dir"]
    files = expand(str(d / "x3" / "*.npy"))
    assert [os.path.basename(f) for f in files] == [f"part-{i}.npy" for i in range(11)]
    assert expand(str(d / "x3")) == files
    with pytest.raises(DumpError, match="no preds file matches"):
        expand(str(d / "nothing-*.npy"))
    with pytest.raises(DumpError, match="listed twice"):
        expand([files[0], files[1], files[0]])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DumpError, match="directory holds no"):
        expand(str(tmp_path / "empty"))
    preds, targets = pair(str(d / "x3"), str(d / "t3"))
    assert [p.shape for p in preds][:2] == [(3, 24, 40), (1, 24, 40)]
    assert [t.shape for t in targets][:2] == [(3, 24), (1, 24)]
    with pytest.raises(DumpError, match=r"t3/part-0\.npy holds 72 targets .* 300 rows"):
        pair(dumps["x2_files"][:1], dumps["t3_files"][:1])
    with pytest.raises(DumpError, match=r"shape \(100, 40\) but .* \(3, 24, 40\)"):
        pair(dumps["x3_files"][:1] + dumps["x2_files"][1:2], dumps["t3_files"][:2])


def test_cli_shard_errors_are_one_line(dumps: dict[str, Any], tmp_path: Path) -> None:
    d = dumps["dir"]
    code, _, err = run("eval", d / "x3", d / "t2")
    assert code == 1 and err.count("\n") == 1
    assert "part-0.npy holds 300 targets" in err and "72 rows" in err
    code, _, err = run("eval", d / "x3", d / "t3" / "*.npy", d / "t3.npy")
    assert code == 2 and "do not split into 2 groups" in err
    code, _, err = run("eval", d / "x3", d / "t3", "--per-row", tmp_path / "r.npy")
    assert code == 2 and "--per-row" in err and not (tmp_path / "r.npy").exists()
    code, _, err = run("eval", d / "x3", d / "t3", "--workers", "2", "--scheduler", "tcp://x:1")
    assert code == 2 and "not allowed with" in err
    bad = dumps["t2"].copy()
    bad[1234] = 99  # shard part-9 holds rows 1200..1299
    bad_dir = tmp_path / "bad"
    files = _split(bad_dir, "t", bad, [s * 100 for s in [3, 1, 2, 1, 1, 1, 1, 1, 1, 1, 2]])
    code, _, err = run("eval", d / "x2", bad_dir / "t")
    assert code == 1 and err.count("\n") == 1
    assert f"{files[9]}: target 99 at position 34 is out of range for 40 classes" in err
    code, _, err = run("eval", d / "x2", bad_dir / "t", "--shift")  # row 1233 predicts it
    assert code == 1 and f"{files[9]}: target 99 at position 34 " in err


def test_one_sequence_across_shards_of_mixed_target_dtypes(tmp_path: Path) -> None:
    """[N, C] with shift is one sequence: each shard's last row is scored against the next
    shard's first target, whatever the shards' integer dtypes (uint64 next to int8 too)."""
    import fastnll
    from fastnll._shard_runs import evaluate_files

    rng = np.random.default_rng(8)
    x = make_preds(rng, (300, 5), "logits", "float32")
    t = make_targets(rng, (300,), 5)
    t[t < 0] = 4
    xs, ts = [], []
    for i, dt in enumerate((np.int8, np.uint64, np.int16)):
        xs.append(str(tmp_path / f"x{i}.npy"))
        ts.append(str(tmp_path / f"t{i}.npy"))
        np.save(xs[-1], x[100 * i : 100 * (i + 1)])
        np.save(ts[-1], t[100 * i : 100 * (i + 1)].astype(dt))
    opts = dict(
        kind="logits",
        ignore_index=-100,
        top_k=(1, 2),
        n_bins=10,
        chunk_bytes=1 << 20,
        check_kind=True,
        shift=True,
    )
    got = evaluate_files(xs, ts, **opts)
    want = fastnll.evaluate(x, t, shift=True, top_k=(1, 2), n_bins=10)
    assert got.rows == want.rows == 299
    assert got.bins == want.bins and got.top_k_accuracy == want.top_k_accuracy
    assert got.mean_nll == pytest.approx(want.mean_nll, rel=1e-12)
