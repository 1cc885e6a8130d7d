"""fastnll.dask on a real distributed.LocalCluster (2 process workers, 1 thread each), and on
the threaded and synchronous schedulers: the reports equal the in-memory call on the
concatenated data (and a float64 NumPy reference), shards are never shipped, threads follow
the workers. Skips only where dask / distributed are not installed."""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

import itertools

from dask.delayed import Delayed

import fastnll
import fastnll.dask as fd
from eval_reference import make_preds, make_targets, reference_compare, reference_metrics
from fastnll._partial import CompareSums, LossSums
from fastnll._shards import ShardArray, open_shard
from fastnll.readers import DumpError
from test_readers import write_safetensors

BF16 = np.dtype(ml_dtypes.bfloat16)
SCHEDULERS = ["cluster", "threads", "sync"]


@pytest.fixture(scope="module")
def client():
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            worker_dashboard_address=None,
        ) as lc,
        distributed.Client(lc) as c,
    ):
        yield c


def _sched(name: str, client: Any) -> Any:
    return client if name == "cluster" else name


def _save(path: Path, arr: np.ndarray) -> str:
    if path.suffix == ".safetensors":
        write_safetensors(path, {"x": arr})
    else:
        np.save(path, arr)
    return str(path)


def _shard(d: Path, name: str, arr: np.ndarray, sizes: list[int], suffix: str) -> list[str]:
    """Write arr split along axis 0 into files name-000..., returning their paths."""
    d.mkdir(parents=True, exist_ok=True)
    cuts = np.cumsum([0] + sizes)
    assert cuts[-1] == arr.shape[0]
    return [
        _save(d / f"{name}-{i:03d}{suffix}", arr[a:b])
        for i, (a, b) in enumerate(itertools.pairwise(cuts))
    ]


# Each case: (shape, dtype, kind, shift, ignore_index, target dtype, suffix, shard sizes,
# flat targets)
CASES = {
    "2d-f32-ignore": (
        (2000, 37),
        np.float32,
        "logits",
        False,
        -1,
        np.int64,
        ".npy",
        [700, 1, 650, 649],
        False,
    ),
    "3d-shift-bf16-int32": (
        (12, 40, 64),
        BF16,
        "logits",
        True,
        -100,
        np.int32,
        ".safetensors",
        [5, 4, 3],
        False,
    ),
    "2d-shift-f64-logprobs": (
        (900, 21),
        np.float64,
        "log_probs",
        True,
        -100,
        np.int64,
        ".npy",
        [300, 300, 300],
        False,
    ),
    "3d-f16-flat-targets": (
        (6, 30, 17),
        np.float16,
        "logits",
        False,
        -100,
        np.int16,
        ".npy",
        [2, 2, 2],
        True,
    ),
}


LOGIT_CASES = sorted(k for k, v in CASES.items() if v[2] == "logits")


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    name = request.param
    shape, dt, kind, shift, ii, tdt, suffix, sizes, flat = CASES[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    x = make_preds(rng, shape, kind, dt)
    y = make_preds(rng, shape, kind, dt, scale=1.0)
    t = make_targets(rng, shape[:-1], shape[-1], ignore_index=ii, ignore_frac=0.15).astype(tdt)
    d = tmp_path_factory.mktemp(name)
    tt = t.reshape(t.shape[0], -1) if flat else t
    files = {
        "x": _shard(d / "x", "x", x, sizes, suffix),
        "y": _shard(d / "y", "y", y, sizes, suffix),
        "t": _shard(d / "t", "t", tt, sizes, ".npy"),
    }
    if flat:  # 1-d target files per shard: [b * T] each
        files["t"] = [_save(Path(p), np.load(p).reshape(-1)) for p in files["t"]]
    return dict(name=name, x=x, y=y, t=t, kind=kind, shift=shift, ii=ii, dir=d, files=files)


def _arrays(case: dict[str, Any], which: str) -> Any:
    return fd.from_shards(case["files"][which], target=which == "t")


def _assert_eval_equal(got: fastnll.EvalReport, ref: fastnll.EvalReport) -> None:
    for f in (
        "kind",
        "n_classes",
        "rows",
        "ignored",
        "n_bins",
        "bins",
        "ece",
        "mce",
        "accuracy",
        "top_k_accuracy",
    ):
        assert getattr(got, f) == getattr(ref, f) or (
            isinstance(getattr(ref, f), float)
            and math.isnan(getattr(ref, f))
            and math.isnan(getattr(got, f))
        ), f
    for f in (
        "sum_nll",
        "mean_nll",
        "nll_se",
        "perplexity",
        "bits_per_token",
        "mean_entropy",
        "brier",
    ):
        assert getattr(got, f) == pytest.approx(getattr(ref, f), rel=1e-12, abs=0), f


def _assert_against_reference(got: fastnll.EvalReport, case: dict[str, Any]) -> None:
    ref = reference_metrics(
        case["x"], case["t"], kind=case["kind"], ignore_index=case["ii"], shift=case["shift"]
    )
    assert (got.rows, got.ignored) == (ref["rows"], ref["ignored"])
    assert got.mean_nll == pytest.approx(ref["mean_nll"], rel=1e-5)
    assert got.accuracy == pytest.approx(ref["accuracy"], abs=2 / got.rows)
    assert [b.count for b in got.bins] == pytest.approx([b[0] for b in ref["bins"]], abs=2)


@pytest.mark.parametrize("sched", SCHEDULERS)
def test_evaluate_matches_in_memory(case: dict[str, Any], sched: str, client: Any) -> None:
    opts = dict(kind=case["kind"], ignore_index=case["ii"], shift=case["shift"], top_k=(1, 3))
    ref = fastnll.evaluate(case["x"], case["t"], **opts)
    _assert_against_reference(ref, case)
    got = fd.evaluate(
        _arrays(case, "x"), _arrays(case, "t"), scheduler=_sched(sched, client), **opts
    )
    assert isinstance(got, fastnll.EvalReport)
    assert got.rows > 100
    _assert_eval_equal(got, ref)


def test_evaluate_shard_files_on_cluster(case: dict[str, Any], client: Any) -> None:
    """Paths instead of arrays: one task per shard, the files opened in the workers."""
    opts = dict(kind=case["kind"], ignore_index=case["ii"], shift=case["shift"])
    ref = fastnll.evaluate(case["x"], case["t"], **opts)
    got = fd.evaluate(
        str(case["dir"] / "x"), str(case["dir"] / "t" / "*.npy"), scheduler=client, **opts
    )
    _assert_eval_equal(got, ref)


@pytest.mark.parametrize("sched", SCHEDULERS)
def test_compare_matches_in_memory(case: dict[str, Any], sched: str, client: Any) -> None:
    opts = dict(kind=case["kind"], ignore_index=case["ii"], shift=case["shift"])
    ref = fastnll.compare(case["x"], case["y"], case["t"], **opts)
    want = reference_compare(case["x"], case["y"], case["t"], **opts)
    assert ref.rows == want["rows"]
    assert ref.mean_kl == pytest.approx(want["mean_kl"], rel=1e-5, abs=1e-7)
    for got in (
        fd.compare(
            _arrays(case, "x"),
            _arrays(case, "y"),
            _arrays(case, "t"),
            scheduler=_sched(sched, client),
            **opts,
        ),
        fd.compare(
            case["files"]["x"],
            case["files"]["y"],
            case["files"]["t"],
            scheduler=_sched(sched, client),
            **opts,
        ),
    ):
        assert isinstance(got, fastnll.CompareReport)
        assert (got.kind, got.n_classes, got.rows, got.ignored, got.top1_agreement) == (
            ref.kind,
            ref.n_classes,
            ref.rows,
            ref.ignored,
            ref.top1_agreement,
        )
        for f in ("mean_kl", "sum_kl", "mean_dnll", "sum_dnll", "dnll_se"):
            assert getattr(got, f) == pytest.approx(getattr(ref, f), rel=1e-12, abs=0), f


@pytest.mark.parametrize("case", LOGIT_CASES, indirect=True)
@pytest.mark.parametrize("sched", SCHEDULERS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_matches_in_memory(
    case: dict[str, Any], sched: str, reduction: str, client: Any
) -> None:
    x, t = case["x"], case["t"]
    c = x.shape[-1]
    w = np.linspace(0.5, 2.0, c)
    xs, ts = _arrays(case, "x"), _arrays(case, "t")
    if ts.shape != t.shape:
        ts = ts.reshape(t.shape)
    # float64 logits sum in float64 (1e-12); 16/32-bit logits sum the core's float32 row
    # losses in float32 within blocks, so block boundaries move the sum by ~1e-8 relative.
    rel = 1e-12 if x.dtype == np.float64 else 1e-6
    for kw in (dict(), dict(weight=w, label_smoothing=0.1)):
        ref = fastnll.cross_entropy(x, t, ignore_index=case["ii"], reduction=reduction, **kw)
        got = fd.cross_entropy(
            xs,
            ts,
            ignore_index=case["ii"],
            reduction=reduction,
            scheduler=_sched(sched, client),
            **kw,
        )
        assert isinstance(got, float)
        assert got == pytest.approx(ref, rel=rel, abs=0)
        x64 = x.astype(np.float64)  # and a float64 NumPy reference of the same rows
        lse = np.log(np.exp(x64 - x64.max(-1, keepdims=True)).sum(-1)) + x64.max(-1)
        keep = t != case["ii"]
        tk = np.where(keep, t, 0).astype(np.int64)
        nll = lse - np.take_along_axis(x64, tk[..., None], -1)[..., 0]
        wt = (w[tk] if "weight" in kw else np.ones_like(nll)) * keep
        eps = kw.get("label_smoothing", 0.0)
        smooth = ((w if "weight" in kw else 1.0) * (lse[..., None] - x64)).sum(-1) / c
        loss = ((1 - eps) * nll * wt + eps * smooth * keep).sum()
        want = loss / wt.sum() if reduction == "mean" else loss
        assert got == pytest.approx(want, rel=1e-5)


def test_cross_entropy_probability_targets_and_nd(client: Any) -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 50, 33))
    p = np.exp(x * 0.7)
    p /= p.sum(-1, keepdims=True)
    for red in ("mean", "sum"):
        ref = fastnll.cross_entropy(x, p, reduction=red, label_smoothing=0.05)
        got = fd.cross_entropy(
            da.from_array(x, chunks=(2, 20, 11)),
            da.from_array(p, chunks=(3, 25, 33)),
            reduction=red,
            label_smoothing=0.05,
            scheduler=client,
        )
        assert got == pytest.approx(ref, rel=1e-12)


def test_lazy_results_and_chunking_along_t(client: Any) -> None:
    """compute=False gives a Delayed; a [B, T, V] array chunked along T and V is rechunked so
    that with shift no (position, next token) pair is lost at a block boundary."""
    rng = np.random.default_rng(5)
    x = make_preds(rng, (6, 64, 19), "logits", np.float32)
    t = make_targets(rng, (6, 64), 19)
    xs, ts = da.from_array(x, chunks=(2, 16, 7)), da.from_array(t, chunks=(3, 10))
    for shift in (False, True):
        lazy = fd.evaluate(xs, ts, shift=shift, compute=False)
        assert isinstance(lazy, Delayed)
        _assert_eval_equal(lazy.compute(scheduler=client), fastnll.evaluate(x, t, shift=shift))
    assert fd.evaluate(xs, ts, shift=True).rows == fastnll.evaluate(x, t, shift=True).rows
    lazy_ce = fd.cross_entropy(xs, ts, compute=False)
    assert lazy_ce.compute(scheduler="sync") == pytest.approx(fastnll.cross_entropy(x, t), rel=1e-6)


def test_workers_use_their_share_of_threads(client: Any) -> None:
    """Each process worker's fastnll runs its worker's nthreads (1 here), not all cores."""
    client.run(fastnll.set_num_threads, 0)  # back to the default: every CPU
    before = client.run(fastnll.get_num_threads)
    x = np.random.default_rng(2).standard_normal((400, 9))
    fd.evaluate(
        da.from_array(x, chunks=50), da.zeros(400, dtype=np.int64, chunks=50), scheduler=client
    )
    after = client.run(fastnll.get_num_threads)
    nthreads = client.nthreads()
    assert set(after) == set(nthreads) and len(after) == 2
    assert all(after[w] == nthreads[w] == 1 for w in after), (before, after)
    import os

    if (os.cpu_count() or 1) > 1 and not (
        os.environ.get("FASTNLL_NUM_THREADS") or os.environ.get("RAYON_NUM_THREADS")
    ):
        assert all(v > 1 for v in before.values()), before  # the check is not vacuous


def _wire_bytes(client: Any) -> int:
    """Bytes the workers sent each other so far (what went on the wire, not Dask's sizeof)."""
    logs = client.run(
        lambda dask_worker: sum(
            int(e.get("compressed") or 0) for e in dask_worker.transfer_outgoing_log
        )
    )
    return sum(logs.values())


def _graph_bytes(*arrays: Any) -> int:
    import cloudpickle

    graph: dict[Any, Any] = {}
    for a in arrays:
        graph.update(dict(a.__dask_graph__()))
    return len(cloudpickle.dumps(graph))


def test_shards_are_not_shipped(tmp_path: Path, client: Any) -> None:
    """Only paths and partial sums travel: the graph and the worker-to-worker transfers are
    thousands of times smaller than the dump. The same measure on da.from_array of a memmap
    (the shipping mistake) sees the whole dump."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((8192, 512), dtype=np.float32)  # 16 MiB
    t = rng.integers(0, 512, 8192)
    xf = _shard(tmp_path / "x", "x", x, [1024] * 8, ".npy")
    tf = _shard(tmp_path / "t", "t", t, [1024] * 8, ".npy")
    xs, ts = fd.from_shards(xf), fd.from_shards(tf, target=True)
    # targets chunked unlike the predictions, so blocks meet on one worker
    xr, tr = xs, ts.rechunk(1536)
    before = _wire_bytes(client)
    got = fd.evaluate(xr, tr, scheduler=client)
    sent = _wire_bytes(client) - before
    graph = _graph_bytes(xr, tr)
    assert got.rows == 8192
    assert got.mean_nll == pytest.approx(fastnll.evaluate(x, t).mean_nll, rel=1e-12)
    data = x.nbytes + t.nbytes
    assert graph < data / 200, graph
    print(f"data {data} graph {graph} sent {sent}")
    assert sent < data / 100, sent  # at most the targets (1/64 of the data) and a few sums
    shipped = da.from_array(np.load(xf[0], mmap_mode="r"), chunks=(256, 512))
    assert _graph_bytes(shipped) > 1024 * 512 * 4  # the control: the memmap's bytes
    # and a shard mapped on one worker, used on the other: its path moves, not its bytes
    a, b = sorted(client.nthreads())
    fut = client.submit(open_shard, xf[3], workers=[a], pure=False)
    before = _wire_bytes(client)
    total = client.submit(
        lambda arr: float(np.asarray(arr, np.float64).sum()), fut, workers=[b], pure=False
    ).result()
    assert total == pytest.approx(float(x[3072:4096].astype(np.float64).sum()), rel=1e-12)
    assert 0 < _wire_bytes(client) - before < 4096


def test_shard_array_pickles_as_its_path(tmp_path: Path) -> None:
    x = np.arange(6000, dtype=np.float32).reshape(200, 30)
    p = _save(tmp_path / "x.npy", x)
    s = open_shard(p)
    assert isinstance(s, ShardArray) and not s.flags.writeable
    for view, want in (
        (s, x),
        (s[17:90, 3::4], x[17:90, 3::4]),
        (s[::-3, ::-1], x[::-3, ::-1]),
        (s.T, x.T),
        (s[5], x[5]),
    ):
        data = pickle.dumps(view, protocol=5)
        assert len(data) < 1000
        back = pickle.loads(data)
        assert isinstance(back, ShardArray)
        np.testing.assert_array_equal(back, want)
        np.testing.assert_array_equal(pickle.loads(pickle.dumps(back)), want)
    # arrays computed from a shard are not the file: they pickle their (new) values
    for derived, want in ((s * 2, x * 2), (s.astype(np.float64) + 1, x + 1.0), (s.copy(), x)):
        back = pickle.loads(pickle.dumps(derived))
        np.testing.assert_array_equal(back, want)
    bf = _save(tmp_path / "b.safetensors", x.astype(BF16))
    sb = open_shard(bf)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(sb[3:9])), x.astype(BF16)[3:9])
    assert len(pickle.dumps(sb[3:9])) < 1000


def test_partial_results_carry_a_format_version() -> None:
    for obj in (CompareSums("logits", -100), LossSums(1.0, 2.0)):
        state = obj.__getstate__()
        assert state["format"][1] >= 1
        clone = pickle.loads(pickle.dumps(obj))
        # the state holds arrays (CompareSums' percentile material): compare it pickled
        assert pickle.dumps(clone.__getstate__()) == pickle.dumps(state)
        bad = dict(state, format=(type(obj).__name__, state["format"][1] + 1))
        fresh = type(obj).__new__(type(obj))
        with pytest.raises(ValueError, match="format"):
            fresh.__setstate__(bad)


def test_errors_name_positions_and_files(tmp_path: Path, client: Any) -> None:
    rng = np.random.default_rng(11)
    x = rng.standard_normal((300, 10)).astype(np.float32)
    t = rng.integers(0, 10, 300)
    t[217] = 12
    xs, ts = da.from_array(x, chunks=70), da.from_array(t, chunks=70)
    with pytest.raises(IndexError, match=r"target 12 at position 217 .* 10 classes"):
        fd.evaluate(xs, ts, scheduler=client)
    with pytest.raises(IndexError, match=r"target 12 at position 217 "):
        fd.cross_entropy(xs, ts, scheduler=client)
    with pytest.raises(IndexError, match=r"target 12 at position 217 "):
        fd.compare(xs, xs, ts, scheduler="sync")
    x3, t3 = x.reshape(30, 10, 10), t.reshape(30, 10)  # 217 -> (21, 7)
    with pytest.raises(IndexError, match=r"target 12 at position \(21, 7\)"):
        fd.evaluate(
            da.from_array(x3, chunks=(4, 10, 10)),
            da.from_array(t3, chunks=4),
            shift=True,
            scheduler="sync",
        )
    xf = _shard(tmp_path / "x", "x", x, [100, 100, 100], ".npy")
    tf = _shard(tmp_path / "t", "t", t, [100, 100, 100], ".npy")
    with pytest.raises(IndexError, match=r"t-002\.npy: target 12 at position 17 "):
        fd.evaluate(xf, tf, scheduler=client)
    with pytest.raises(DumpError, match=r"3 preds shards .* but 2 target shards"):
        fd.evaluate(xf, tf[:2], scheduler="sync")
    with pytest.raises(DumpError, match=r"t-001\.npy holds 100 targets .* 99 rows"):
        fd.evaluate(xf[:1] + [_save(tmp_path / "short.npy", x[:99])] + xf[2:], tf)
    with pytest.raises(TypeError, match="dask array or shard paths"):
        fd.evaluate(np.load(xf[0], mmap_mode="r"), t[:100])
    with pytest.raises(ValueError, match="target has shape"):
        fd.evaluate(xs, ts[:-1])


def test_docs_example_runs() -> None:
    """The runnable example of docs/distributed.md (its asserts check the result)."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "distributed.md").read_text()
    blocks = [b.split("```", 1)[0] for b in doc.split("```python\n")[1:]]
    runnable = [b for b in blocks if b.startswith("# example: runs in tests/test_dask.py")]
    assert len(runnable) == 1
    exec(compile(runnable[0], "docs/distributed.md", "exec"), {})


def _rss_file() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssFile:"):
                return int(line.split()[1]) * 1024
    pytest.skip("no RssFile in /proc/self/status (not Linux)")


def test_blocks_release_mapped_pages(tmp_path: Path) -> None:
    """Mapped file pages count in RSS, which Dask's nanny holds to the worker's memory limit:
    shards are scored in windows whose pages are released, so a shard larger than a worker's
    memory limit does not get the worker killed. (A sparse 256 MiB .npy of zeros: no disk.)"""
    from fastnll._inputs import prepare
    from fastnll._partial import eval_dump

    path = tmp_path / "zeros.npy"
    shape = (8, 1024, 8192)
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(
            fh, {"descr": "<f4", "fortran_order": False, "shape": shape}
        )
        fh.truncate(fh.tell() + int(np.prod(shape)) * 4)
    t = np.zeros(shape[:2], np.int64)
    x = np.load(path, mmap_mode="r")
    before = _rss_file()
    ours = fastnll.Evaluator(check_kind=False)
    eval_dump(ours, prepare(x, t, shift=False), 16 << 20, lambda v, p: f"{v} {p}")
    grown = _rss_file() - before  # the mapping is still open: nothing held but a window
    plain = fastnll.Evaluator().update(x, t)  # the control: every page stays resident
    held = _rss_file() - before
    assert held > 200 << 20, held
    assert grown < 48 << 20, grown
    assert ours.result() == plain.result()
