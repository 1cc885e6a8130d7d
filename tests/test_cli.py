"""The fastnll command end to end, in subprocesses (python -m fastnll)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from eval_reference import make_preds, make_targets, reference_compare, reference_metrics
from fastnll._progress import Progress, format_bytes, format_duration

EVAL_KEYS = {
    "schema",
    "schema_version",
    "kind",
    "n_classes",
    "rows",
    "ignored",
    "sum_nll",
    "mean_nll",
    "nll_se",
    "perplexity",
    "bits_per_token",
    "accuracy",
    "top_k_accuracy",
    "mean_entropy",
    "brier",
    "ece",
    "mce",
    "n_bins",
    "bins",
    "inputs",
    "ties",
}  # schema_version 2 adds "ties" (and "extras" when asked for)
BIN_KEYS = {"lower", "upper", "count", "mean_confidence", "accuracy"}
COMPARE_KEYS = {
    "schema",
    "schema_version",
    "kind",
    "n_classes",
    "rows",
    "ignored",
    "mean_kl",
    "sum_kl",
    "mean_dnll",
    "sum_dnll",
    "dnll_se",
    "top1_agreement",
    "inputs",
    # schema_version 2: the llama.cpp --kl-divergence statistics
    "kl_se",
    "mean_dp",
    "dp_se",
    "dp_rms",
    "dp_rms_se",
    "top1_agreement_se",
    "mean_nll_base",
    "mean_nll_base_se",
    "mean_nll_new",
    "mean_nll_new_se",
    "ppl_base",
    "ppl_base_se",
    "ppl_new",
    "ppl_new_se",
    "ln_ppl_ratio",
    "ln_ppl_ratio_se",
    "ppl_ratio",
    "ppl_ratio_se",
    "ppl_diff",
    "ppl_diff_se",
    "ln_ppl_cov",
    "ln_ppl_correlation",
    "kl_percentiles",
    "dp_percentiles",
    "percentile_method",
    "percentile_rel_error",
}


def run(*args: Any, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "fastnll", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def dump(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    x = make_preds(rng, (4, 50, 30), "logits", "float32")
    y = make_preds(rng, (4, 50, 30), "logits", "float16")
    t = make_targets(rng, (4, 50), 30)
    np.save(d / "x.npy", x)
    np.save(d / "y.npy", y)
    np.save(d / "t.npy", t)
    return {"dir": d, "x": x, "y": y, "t": t, "X": d / "x.npy", "Y": d / "y.npy", "T": d / "t.npy"}


def test_eval_table(dump: dict[str, Any]) -> None:
    code, out, err = run("eval", dump["X"], dump["T"], "--shift")
    assert code == 0 and err == ""  # stderr is not a terminal: no progress bar
    ref = reference_metrics(dump["x"], dump["t"], shift=True)
    for label in (
        "mean NLL",
        "perplexity",
        "bits per token",
        "top-1 accuracy",
        "top-5 accuracy",
        "mean entropy",
        "Brier score",
        "ECE (15 bins)",
        "MCE",
        "calibration bins",
    ):
        assert label in out
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("mean NLL"))
    assert float(line.split()[2]) == pytest.approx(ref["mean_nll"], rel=1e-5)
    assert f"{ref['rows']:,}" in out


def test_eval_json_matches_reference(dump: dict[str, Any]) -> None:
    out_json = dump["dir"] / "r.json"
    code, _, _ = run(
        "eval",
        dump["X"],
        dump["T"],
        "--shift",
        "--top-k",
        "1",
        "3",
        "--bins",
        "10",
        "--ignore-index",
        "-100",
        "--json",
        out_json,
    )
    assert code == 0
    r = json.loads(out_json.read_text())
    assert set(r) == EVAL_KEYS and r["schema"] == "fastnll.evaluate"
    assert all(set(b) == BIN_KEYS for b in r["bins"]) and len(r["bins"]) == 10
    ref = reference_metrics(dump["x"], dump["t"], shift=True, top_k=(1, 3), n_bins=10)
    assert (r["rows"], r["ignored"], r["n_classes"]) == (ref["rows"], ref["ignored"], 30)
    for key in (
        "mean_nll",
        "sum_nll",
        "nll_se",
        "perplexity",
        "bits_per_token",
        "accuracy",
        "mean_entropy",
        "brier",
        "ece",
        "mce",
    ):
        assert r[key] == pytest.approx(ref[key], rel=2e-5, abs=1e-5), key
    assert r["top_k_accuracy"] == {"1": ref["accuracy"], "3": ref["top_k_accuracy"][3]}
    assert r["inputs"] == {
        "preds": str(dump["X"]),
        "targets": str(dump["T"]),
        "ignore_index": -100,
        "shift": True,
    }


def test_json_to_stdout_keeps_stdout_clean(dump: dict[str, Any]) -> None:
    code, out, err = run("eval", dump["X"], dump["T"], "--json", "-")
    assert code == 0 and set(json.loads(out)) == EVAL_KEYS and "mean NLL" in err


def test_per_row_file(dump: dict[str, Any]) -> None:
    dest = dump["dir"] / "rows.npy"
    code, out, _ = run("eval", dump["X"], dump["T"], "--shift", "--per-row", dest)
    assert code == 0 and str(dest) in out
    rec = np.load(dest)
    ref = reference_metrics(dump["x"], dump["t"], shift=True)
    assert rec.shape == (4, 49) and rec.dtype.names == ("nll", "rank")
    np.testing.assert_allclose(rec["nll"].ravel(), ref["row_nll"], rtol=2e-5, atol=1e-6)
    np.testing.assert_array_equal(rec["rank"].ravel(), ref["row_rank"])


def test_plot(dump: dict[str, Any]) -> None:
    pytest.importorskip("matplotlib")
    dest = dump["dir"] / "rel.png"
    code, _, err = run("eval", dump["X"], dump["T"], "--plot", dest)
    assert code == 0, err
    assert dest.stat().st_size > 1000 and dest.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib(dump: dict[str, Any], tmp_path: Path) -> None:
    fake = tmp_path / "matplotlib"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    path = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    code, _, err = run(
        "eval", dump["X"], dump["T"], "--plot", tmp_path / "p.png", env={"PYTHONPATH": path}
    )
    assert code == 1 and "pip install 'fastnll[plot]'" in err
    assert err.count("\n") == 1 and not (tmp_path / "p.png").exists()


def test_raw_files(dump: dict[str, Any]) -> None:
    raw = dump["dir"] / "x.f32"
    raw.write_bytes(dump["x"].tobytes())
    traw = dump["dir"] / "t.bin"
    traw.write_bytes(dump["t"].astype(np.int32).tobytes())
    code, out, err = run(
        "eval",
        raw,
        traw,
        "--dtype",
        "float32",
        "--shape",
        "-1,50,30",
        "--target-dtype",
        "int32",
        "--json",
        "-",
    )
    assert code == 0, err
    ref = reference_metrics(dump["x"], dump["t"])
    assert json.loads(out)["mean_nll"] == pytest.approx(ref["mean_nll"], rel=2e-5)


def test_compare(dump: dict[str, Any]) -> None:
    out_json = dump["dir"] / "c.json"
    code, out, err = run("compare", dump["X"], dump["Y"], dump["T"], "--shift", "--json", out_json)
    assert code == 0 and err == ""
    for label in ("KL(base || new)", "NLL new - base", "top-1 agreement"):
        assert label in out
    r = json.loads(out_json.read_text())
    assert set(r) == COMPARE_KEYS and r["schema"] == "fastnll.compare"
    ref = reference_compare(dump["x"], dump["y"], dump["t"], shift=True)
    for key in ("mean_kl", "mean_dnll", "dnll_se", "top1_agreement"):
        assert r[key] == pytest.approx(ref[key], rel=2e-5, abs=1e-6), key


def test_demo() -> None:
    code, out, err = run("demo")
    assert code == 0, err
    assert "20000 x 100" in out and "ECE (15 bins)" in out
    ref_line = next(line for line in out.splitlines() if "reference mean NLL" in line)
    diff_line = next(line for line in out.splitlines() if "absolute difference" in line)
    assert float(ref_line.split()[-1]) > 0 and float(diff_line.split()[-1]) < 1e-6
    ece = float(next(line for line in out.splitlines() if "ECE" in line).split()[-1])
    assert ece < 0.03  # targets drawn from the softmax: calibrated


def _bad(dump: dict[str, Any], tmp: Path) -> list[tuple[list[Any], int, str]]:
    d = dump["dir"]
    np.save(tmp / "t_short.npy", dump["t"][:, :10])
    np.save(tmp / "t_float.npy", dump["t"].astype(np.float32))
    big = dump["t"].copy()
    big[2, 7] = 999
    np.save(tmp / "t_big.npy", big)
    (tmp / "junk.npy").write_bytes(b"\x93NUMPY garbage")
    np.savez(tmp / "two.npz", a=dump["x"], b=dump["x"])
    X, T = dump["X"], dump["T"]
    return [
        ([], 2, "choose a command"),
        (["eval", X], 2, "required"),
        (["eval", X, T, "--bogus"], 2, "unrecognized"),
        (["eval", X, T, "--kind", "prob"], 2, "invalid choice"),
        (["eval", X, T, "--top-k", "0"], 2, "positive integer"),
        (["eval", X, T, "--bins", "many"], 2, "positive integer"),
        (["eval", X, T, "--dtype", "float32"], 2, "--dtype and --shape go together"),
        (["eval", X, T, "--dtype", "float32", "--shape", "4,50,30"], 2, "only for raw"),
        (["eval", X, T, "--dtype", "float7", "--shape", "3"], 2, "unknown dtype"),
        (["eval", X, T, "--dtype", "f4", "--shape", "3;4"], 2, "bad shape"),
        (["eval", d / "nope.npy", T], 1, "nope.npy: no such file"),
        (["eval", X, d / "nope.npy"], 1, "nope.npy: no such file"),
        (["eval", X, tmp / "t_short.npy"], 1, "t_short.npy has shape (4, 10)"),
        (["eval", X, tmp / "t_float.npy"], 1, "integer class indices"),
        (["eval", X, tmp / "t_big.npy"], 1, "999"),
        (["eval", X, T, "--kind", "probs"], 1, "declared probs"),
        (["eval", X, T, "--kind", "log_probs"], 1, "pass kind='logits'"),
        (["eval", tmp / "junk.npy", T], 1, "junk.npy"),
        (["eval", tmp / "two.npz", T], 1, "holds 2 arrays"),
        (["eval", d / "x.bin_missing_dtype", T], 1, "no such file"),
        (["eval", X, T, "--json", tmp / "no" / "dir" / "r.json"], 1, "r.json"),
        (["compare", X, tmp / "two.npz:a", tmp / "t_short.npy"], 1, "t_short.npy"),
        (["compare", X, T], 2, "required"),
    ]


def test_error_paths(dump: dict[str, Any], tmp_path: Path) -> None:
    raw = tmp_path / "plain.bin"
    raw.write_bytes(b"\0" * 64)
    cases = _bad(dump, tmp_path) + [(["eval", raw, dump["T"]], 1, "give its dtype and shape")]
    for args, want_code, want_text in cases:
        code, _out, err = run(*args)
        assert code == want_code, (args, err)
        assert err.count("\n") == 1 and err.startswith("fastnll"), (args, err)
        assert "Traceback" not in err and want_text in err, (args, err)


def test_ctrl_c_exits_130() -> None:
    script = (
        "import os, signal, sys\nimport fastnll.cli as cli\n"
        "cli._cmd_eval = lambda a: os.kill(os.getpid(), signal.SIGINT)\n"
        "sys.exit(cli.main(['eval', 'a.npy', 'b.npy']))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 130
    assert proc.stderr.strip() == "fastnll: interrupted" and "Traceback" not in proc.stderr


def test_help_lists_commands() -> None:
    code, out, _ = run("--help")
    assert code == 0 and all(c in out for c in ("eval", "compare", "demo"))


def test_progress_bar() -> None:
    now = [0.0]
    buf = io.StringIO()
    bar = Progress(1000, "eval", enabled=True, stream=buf, delay=1.0, clock=lambda: now[0])
    bar.advance(100)
    assert buf.getvalue() == ""  # short work stays quiet
    now[0] = 2.0
    bar.advance(400)
    line = buf.getvalue()
    assert "50.0%" in line and "ETA 0:02" in line and "/s" in line and line.startswith("\r")
    bar.close()
    assert buf.getvalue().endswith("\r\x1b[K")
    quiet = io.StringIO()
    auto = Progress(10, stream=quiet, delay=0.0, clock=lambda: now[0])  # not a terminal
    auto.advance(5)
    assert not auto.enabled and quiet.getvalue() == ""
    assert format_bytes(1536) == "1.5 KiB" and format_duration(3725) == "1:02:05"
