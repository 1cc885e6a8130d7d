"""Threads, the GIL, thread-count invariance, fork, racing writers and Ctrl-C.

* 8 Python threads calling concurrently get the serial answers, bit for bit (while another
  thread keeps changing the worker-thread count);
* the GIL is released while the core computes (a ticker thread keeps ticking during calls on a
  200 MB input);
* every result is bitwise identical for 1, 2 and 7 worker threads, on every SIMD path (or on
  the one FASTNLL_SIMD pins; the other tests use the process's path);
* a child created with ``os.fork()`` after parallel calls (also while another thread is
  computing) finishes its own calls: no rayon deadlock (subprocess + timeout);
* a thread writing into the input while a call reads it causes no crash (result unspecified);
* Ctrl-C during ``python -m fastnll eval`` on a 2 GB dump stops it within a second, exit code
  130, no traceback.
"""

from __future__ import annotations

import os
import random
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time

import ml_dtypes
import numpy as np
import pytest

import fastnll


def _paths():
    """Every SIMD path this CPU has, or only FASTNLL_SIMD's when it pins one."""
    pinned = os.environ.get("FASTNLL_SIMD", "").strip().lower()
    avail = fastnll.available_simd_paths()
    return [pinned] if pinned in avail else avail


PATHS = _paths()


def fingerprint(result) -> bytes:
    """Exact bytes of a result: floats bit for bit (NaN payloads included), arrays with dtype
    and shape."""
    if isinstance(result, float):
        return struct.pack("<d", result)
    if isinstance(result, tuple):
        return b"|".join(fingerprint(r) for r in result)
    a = np.asarray(result)
    return str((a.dtype.str, a.shape)).encode() + a.tobytes()


def make_inputs():
    rng = np.random.default_rng(1234)
    n, c = 3000, 700  # 8.4 MB of float32: ~32 chunks of 256 KiB
    x = (rng.standard_normal((n, c)) * 4).astype(np.float32)
    x[5, 3] = np.nan
    x[17, :] = -np.inf
    t = rng.integers(0, c, n)
    t[::7] = -100
    t[5] = -100
    y = rng.random((n, c)).astype(np.float32)
    y /= y.sum(axis=1, keepdims=True)
    w = rng.uniform(0.5, 2.0, c)
    short = (rng.standard_normal((40_000, 13)) * 3).astype(np.float32)  # short-row kernel
    ts = rng.integers(0, 13, 40_000)
    wide = rng.standard_normal((3, 200_001)).astype(np.float32)  # rows split into segments
    x64 = x.astype(np.float64)
    xbf = x.astype(ml_dtypes.bfloat16)
    xf = np.asfortranarray(x[:500])
    return dict(x=x, t=t, y=y, w=w, short=short, ts=ts, wide=wide, x64=x64, xbf=xbf, xf=xf)


def calls(d):
    """name -> zero-argument callable, every public function on several layouts."""
    F = fastnll
    lp = np.log(F.softmax(d["x"][:1000]).astype(np.float64) + 1e-30)
    lps = F.log_softmax(d["short"])
    lpw = np.tile(F.log_softmax(d["x"]), (4, 1))  # 12 000 rows of 700 classes
    return {
        "ce_mean": lambda: F.cross_entropy(d["x"], d["t"]),
        "ce_none": lambda: F.cross_entropy(d["x"], d["t"], reduction="none"),
        "ce_w_ls_sum": lambda: F.cross_entropy(
            d["x"], d["t"], weight=d["w"], label_smoothing=0.1, reduction="sum"
        ),
        "ce_soft": lambda: F.cross_entropy(d["x"], d["y"], reduction="none"),
        "ce_short": lambda: F.cross_entropy(d["short"], d["ts"]),
        "ce_short_none": lambda: F.cross_entropy(d["short"], d["ts"], reduction="none"),
        "ce_wide": lambda: F.cross_entropy(d["wide"], np.array([0, 5, 200_000])),
        "ce_f64": lambda: F.cross_entropy(d["x64"], d["t"], reduction="none"),
        "ce_bf16": lambda: F.cross_entropy(d["xbf"], d["t"]),
        "ce_fortran": lambda: F.cross_entropy(d["xf"], d["t"][:500], reduction="none"),
        "nll": lambda: F.nll_loss(lp, d["t"][:1000]),
        # nll_loss chunks by rows (16384 rows of <= 64 bytes, 4096 of >= 256): 40 000 rows
        # of 52 bytes are 3 chunks, 3000 rows of 2800 bytes 1 (inline), 12 000 such rows 3
        "nll_chunks": lambda: F.nll_loss(lps, d["ts"], weight=d["w"][:13]),
        "nll_chunks_none": lambda: F.nll_loss(lps, d["ts"], reduction="none"),
        "nll_wide_chunks": lambda: F.nll_loss(lpw, np.tile(d["t"], 4)),
        "bce": lambda: F.binary_cross_entropy_with_logits(d["x"], d["y"]),
        "lse": lambda: F.logsumexp(d["x"]),
        "lse_short": lambda: F.logsumexp(d["short"]),
        "lse_wide": lambda: F.logsumexp(d["wide"]),
        "lse_axis0": lambda: F.logsumexp(d["x"], axis=0),
        "lse_b": lambda: F.logsumexp(d["x"], b=d["y"], return_sign=True),
        "lsm": lambda: F.log_softmax(d["x"]),
        "sm_f64": lambda: F.softmax(d["x64"][:1000]),
    }


@pytest.fixture(scope="module")
def inputs():
    return make_inputs()


@pytest.fixture
def restore_threads():
    yield
    fastnll.set_num_threads(0)


# ----------------------------------------------------------------------------- 8 threads


def test_eight_threads_get_the_serial_answers(inputs, restore_threads):
    fns = calls(inputs)
    serial = {k: fingerprint(f()) for k, f in fns.items()}
    errors: list = []
    start = threading.Barrier(9)
    done = threading.Event()

    def worker(seed):
        order = list(fns)
        random.Random(seed).shuffle(order)
        start.wait()
        try:
            for _ in range(2):
                for k in order:
                    if fingerprint(fns[k]()) != serial[k]:
                        errors.append((seed, k))
        except BaseException as e:  # noqa: B902 - a PanicException must fail the test too
            errors.append((seed, repr(e)))

    def toggler():
        # Results do not depend on the worker-thread count: change it under the workers' feet.
        start.wait()
        k = 0
        while not done.is_set():
            fastnll.set_num_threads((1, 2, 7, 0)[k % 4])
            k += 1
            time.sleep(0.002)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    tog = threading.Thread(target=toggler)
    for th in threads + [tog]:
        th.start()
    for th in threads:
        th.join(timeout=120)
    done.set()
    tog.join()
    assert not any(th.is_alive() for th in threads), "a worker thread hung"
    assert not errors, errors[:10]


# ------------------------------------------------------------------------------ the GIL


def test_gil_released_while_computing(restore_threads):
    n, c = 50_000, 1000  # 200 MB of float32
    x = np.empty((n, c), np.float32)
    x[...] = np.random.default_rng(0).standard_normal(c).astype(np.float32)
    t = np.arange(n) % c
    y = np.full((n // 10, c), 1.0 / c, np.float32)
    lp = -np.abs(x)
    ticks: list = []
    stop = threading.Event()

    def ticker():
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.0005)

    th = threading.Thread(target=ticker)
    th.start()
    try:
        time.sleep(0.05)
        report = []
        for name, f in (
            ("cross_entropy", lambda: fastnll.cross_entropy(x, t)),
            ("cross_entropy none", lambda: fastnll.cross_entropy(x, t, reduction="none")),
            ("nll_loss", lambda: fastnll.nll_loss(lp, t)),
            ("logsumexp", lambda: fastnll.logsumexp(x)),
            ("soft targets", lambda: fastnll.cross_entropy(x[: n // 10], y)),
            ("bce", lambda: fastnll.binary_cross_entropy_with_logits(x[: n // 10], y)),
        ):
            during, secs, reps = 0, 0.0, 0
            while reps < 3 or secs < 0.05:  # at least 50 ms of calls
                reps += 1
                t0 = time.perf_counter()
                f()
                t1 = time.perf_counter()
                during += sum(1 for a in ticks[-4000:] if t0 < a < t1)
                secs += t1 - t0
            report.append((name, during, round(secs, 3)))
            # A held GIL would give ~0 ticks; a free one about one per 0.5-1 ms of computing.
            assert during >= max(5, int(secs * 1000 * 0.2)), report
    finally:
        stop.set()
        th.join()


# ------------------------------------------------------------------ thread-count invariance


@pytest.mark.parametrize("path", PATHS)
def test_results_identical_for_1_2_and_7_threads(inputs, path, restore_threads):
    fns = calls(inputs)
    old = fastnll.simd_path()
    fastnll.set_simd_path(path)
    try:
        results = {}
        for n in (1, 2, 7):
            fastnll.set_num_threads(n)
            assert fastnll.get_num_threads() == n
            results[n] = {k: fingerprint(f()) for k, f in fns.items()}
    finally:
        fastnll.set_simd_path(old)
    for k in fns:
        assert results[1][k] == results[2][k] == results[7][k], k


# ----------------------------------------------------------------------------------- fork

FORK_SCRIPT = textwrap.dedent(
    """
    import os, sys, threading, time
    import numpy as np, fastnll

    fastnll.set_num_threads(2)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20_000, 300)).astype(np.float32)
    t = rng.integers(0, 300, 20_000)
    mean = fastnll.cross_entropy(x, t)                    # the pool exists and has run
    rows = fastnll.cross_entropy(x, t, reduction="none").tobytes()

    def child_work():
        ok = fastnll.cross_entropy(x, t) == mean
        ok &= fastnll.cross_entropy(x, t, reduction="none").tobytes() == rows
        fastnll.set_num_threads(3)                        # a new pool in the child
        ok &= fastnll.cross_entropy(x, t) == mean
        return ok

    def fork_and_wait(label):
        pid = os.fork()
        if pid == 0:
            try:
                os._exit(0 if child_work() else 3)
            except BaseException:
                os._exit(4)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        assert code == 0, (label, code)

    fork_and_wait("after a parallel call")

    # Fork while another thread of the parent is inside fastnll calls.
    stop = threading.Event()
    def busy():
        while not stop.is_set():
            fastnll.cross_entropy(x, t)
            fastnll.logsumexp(x)
    th = threading.Thread(target=busy)
    th.start()
    for k in range(6):
        time.sleep(0.005 * k)
        fork_and_wait(f"while busy {k}")
    stop.set()
    th.join()
    assert fastnll.cross_entropy(x, t) == mean             # the parent's pool still works
    print("fork ok")
    """
)


def run_script(script, timeout, env=None):
    """Runs `script` in a new session; on timeout kills the whole group (forked children too)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=env,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"timed out after {timeout} s (deadlock?)")
    return proc.returncode, out, err


def test_fork_after_a_parallel_call():
    code, out, err = run_script(FORK_SCRIPT, timeout=120)
    assert code == 0 and "fork ok" in out, (code, out, err)


# ------------------------------------------------------------------ writers racing a call

WRITER_SCRIPT = textwrap.dedent(
    """
    import threading, time
    import numpy as np, fastnll

    rng = np.random.default_rng(0)
    n, c = 20_000, 1000                        # 80 MB
    x = rng.standard_normal((n, c)).astype(np.float32)
    t = rng.integers(0, c, n)
    y = np.full((n // 4, c), 1.0 / c, np.float32)
    short = rng.standard_normal((200_000, 16)).astype(np.float32)
    ts = rng.integers(0, 16, 200_000)
    stop = threading.Event()
    specials = np.array([np.nan, np.inf, -np.inf, 1e30, -1e30, 0.5], np.float32)

    def write_logits():
        r = np.random.default_rng(1)
        while not stop.is_set():
            i = int(r.integers(0, n - 100))
            x[i:i + 100] = specials[int(r.integers(0, len(specials)))]
            j = int(r.integers(0, 200_000 - 1000))
            short[j:j + 1000, int(r.integers(0, 16))] = specials[int(r.integers(0, len(specials)))]

    def write_targets():
        r = np.random.default_rng(2)
        while not stop.is_set():
            i = int(r.integers(0, n))
            t[i] = int(r.choice([-1, -100, c, 2**40, 0]))
            ts[int(r.integers(0, 200_000))] = int(r.choice([-7, 16, 3]))
            time.sleep(0)

    writers = [threading.Thread(target=write_logits), threading.Thread(target=write_targets)]
    for w in writers:
        w.start()
    allowed = (IndexError, ValueError)      # documented errors the races may produce
    outcomes = {"ok": 0, "error": 0}
    t_end = time.time() + 3.0
    while time.time() < t_end:
        for f in (lambda: fastnll.cross_entropy(x, t),
                  lambda: fastnll.cross_entropy(x, t, reduction="none", label_smoothing=0.1),
                  lambda: fastnll.cross_entropy(short, ts, reduction="none"),
                  lambda: fastnll.cross_entropy(short, ts),
                  lambda: fastnll.nll_loss(-np.abs(x[:2000]), t[:2000]),
                  lambda: fastnll.logsumexp(x),
                  lambda: fastnll.logsumexp(short),
                  lambda: fastnll.log_softmax(x[:2000]),
                  lambda: fastnll.cross_entropy(x[: n // 4], y),
                  lambda: fastnll.binary_cross_entropy_with_logits(x[: n // 4], y)):
            try:
                f()
                outcomes["ok"] += 1
            except allowed:
                outcomes["error"] += 1
    stop.set()
    for w in writers:
        w.join()
    print("writers ok", outcomes)
    """
)


def test_writer_thread_during_a_call_does_not_crash():
    code, out, err = run_script(WRITER_SCRIPT, timeout=120)
    # A crash would show as a negative return code (signal) or a foreign exception.
    assert code == 0 and "writers ok" in out, (code, out, err[-3000:])


# ----------------------------------------------------------------------- Ctrl-C in the CLI


def _mapped(pid: int, path: str) -> bool:
    try:
        with open(f"/proc/{pid}/maps") as f:
            return any(path in line for line in f)
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and SIGINT")
@pytest.mark.skipif(
    PATHS[-1] != fastnll.available_simd_paths()[-1],
    reason="once per suite: in the run on the best path (it pins scalar itself)",
)
def test_ctrl_c_stops_cli_eval_quickly(tmp_path):
    n, c = 500_000, 1000  # 2 GB of float32, a sparse file: cheap to make
    preds = tmp_path / "preds.npy"
    x = np.lib.format.open_memmap(preds, mode="w+", dtype=np.float32, shape=(n, c))
    x[::1000] = np.linspace(-2.0, 2.0, c, dtype=np.float32)
    x.flush()
    del x
    targets = tmp_path / "targets.npy"
    np.save(targets, (np.arange(n) % c).astype(np.int64))
    # The scalar path on one worker thread: a few seconds of computing to interrupt.
    env = dict(os.environ, FASTNLL_SIMD="scalar", FASTNLL_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastnll", "eval", str(preds), str(targets)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not _mapped(proc.pid, str(preds)):
            assert proc.poll() is None, ("eval ended before reading the dump", proc.communicate())
            assert time.monotonic() < deadline, "eval never mapped the dump"
            time.sleep(0.01)
        time.sleep(0.5)  # well inside the computation (the whole run takes seconds)
        assert proc.poll() is None, (
            "eval finished before the interrupt: make the dump bigger",
            proc.communicate(),
        )
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail("eval did not stop within 10 s of SIGINT")
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130, (proc.returncode, out, err)
    assert elapsed < 1.0, f"took {elapsed:.2f} s to stop"
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "interrupted" in err, err
