"""A dump bigger than 4 GiB streams with bounded anonymous memory.

The dump is a sparse .npy file (header, then a truncate to full size: all-zero float32
logits, which are valid and all tied), evaluated in a fresh subprocess that samples its own
RssAnon from /proc/self/status while ``fastnll.evaluate(path, ...)`` runs. Memory-mapped pages
are file-backed (RssFile), so only the core's working buffers may add to RssAnon; the test
requires the peak growth to stay under 5% of the file size. Takes ~10-30 s; see
docs/evaluate.md ("Checking the memory bound").
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

B, T, V = 32, 8193, 4096  # float32 [B, T, V]: 4.0 GiB of logits
SCRIPT = r"""
import json, sys, threading, time
import numpy as np
from fastnll.evaluate import evaluate

def rss_anon():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise SystemExit("no RssAnon in /proc/self/status")

evaluate(np.zeros((2, 4, 8), np.float32), np.zeros((2, 4), np.int64), shift=True)  # warm up
before = rss_anon()
peak = [before]
done = threading.Event()

def poll():
    while not done.is_set():
        peak[0] = max(peak[0], rss_anon())
        time.sleep(0.01)

thread = threading.Thread(target=poll, daemon=True)
thread.start()
t0 = time.time()
rep = evaluate(sys.argv[1], sys.argv[2], shift=True, progress=False)
seconds = time.time() - t0
done.set()
thread.join()
after = rss_anon()
print(json.dumps({"before": before, "after": after, "peak": max(peak[0], after),
                  "rows": rep.rows, "ignored": rep.ignored, "mean_nll": rep.mean_nll,
                  "accuracy": rep.accuracy, "seconds": seconds}))
"""


def write_sparse_npy(path: Path, shape: tuple, dtype: np.dtype) -> int:
    """A valid .npy whose data is a hole of zeros: header, then truncate to full size."""
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
        "fortran_order": False,
        "shape": shape,
    }
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        size = fh.tell() + math.prod(shape) * np.dtype(dtype).itemsize
        fh.truncate(size)
    return size


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_four_gib_dump_streams_in_bounded_memory(tmp_path: Path) -> None:
    need = B * T * V * 4
    if shutil.disk_usage(tmp_path).free < need + (1 << 30):  # in case holes are not supported
        pytest.skip(f"needs {need / 2**30:.1f} GiB free on {tmp_path}")
    preds = tmp_path / "logits.npy"
    size = write_sparse_npy(preds, (B, T, V), np.float32)
    assert size >= 4 << 30
    rng = np.random.default_rng(0)
    target = rng.integers(0, V, size=(B, T)).astype(np.int64)
    target[:, -5:] = -100  # padding
    np.save(tmp_path / "targets.npy", target)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", SCRIPT, str(preds), str(tmp_path / "targets.npy")],
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        preds.unlink()  # drop the page cache of the big file quickly
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    growth = r["peak"] - r["before"]
    assert growth < 0.05 * size, f"RssAnon grew by {growth / 2**20:.0f} MiB ({r})"
    assert r["rows"] + r["ignored"] == B * (T - 1)
    assert r["ignored"] == B * 5  # the padded target[:, -5:] stay in target[:, 1:]
    assert r["mean_nll"] == pytest.approx(math.log(V), rel=1e-6)  # all-equal logits
    assert r["accuracy"] == 1.0  # every class ties with the target: ties count as correct
