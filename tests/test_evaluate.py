"""fastnll.evaluate / Evaluator / compare against independent float64 references."""

from __future__ import annotations

import json
import math
import pickle
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastnll
from eval_reference import make_preds, make_targets, reference_compare, reference_metrics
from fastnll.evaluate import EvalReport, Evaluator, compare, evaluate

RTOL, ATOL = 2e-5, 1e-6  # the core may compute rows in float32; sums are float64
DTYPES = ["float32", "float16", "bfloat16", "float64"]
KINDS = ["logits", "log_probs", "probs"]
LAYOUTS = {"2d": ((400, 37), False), "3d": ((5, 40, 37), False), "3d-shift": ((5, 41, 37), True)}


def assert_matches(rep: EvalReport, ref: dict[str, Any], n_bins: int = 15) -> None:
    assert (rep.rows, rep.ignored) == (ref["rows"], ref["ignored"])
    for key in (
        "mean_nll",
        "sum_nll",
        "nll_se",
        "perplexity",
        "bits_per_token",
        "mean_entropy",
        "brier",
    ):
        assert getattr(rep, key) == pytest.approx(ref[key], rel=RTOL, abs=ATOL), key
    assert rep.accuracy == ref["accuracy"]  # counts: exact
    assert rep.top_k_accuracy == ref["top_k_accuracy"]
    # a row whose confidence is within rounding of a bin edge may land on either side
    edges = np.arange(1, n_bins) / n_bins
    near = (
        int((np.abs(ref["conf"][:, None] - edges[None]).min(axis=1) < 1e-5).sum())
        if n_bins > 1
        else 0
    )
    counts = np.array([b.count for b in rep.bins])
    assert np.abs(counts - [b[0] for b in ref["bins"]]).sum() <= 2 * near
    slack = 2 * near / max(rep.rows, 1)
    assert abs(rep.ece - ref["ece"]) <= 1e-5 + slack
    if near == 0:
        assert rep.mce == pytest.approx(ref["mce"], rel=RTOL, abs=ATOL)
        for b, (cnt, conf, acc) in zip(rep.bins, ref["bins"]):
            if cnt:
                assert b.mean_confidence == pytest.approx(conf, rel=RTOL, abs=ATOL)
                assert b.accuracy == pytest.approx(acc, abs=1e-12)


def assert_same(a: Any, b: Any, rel: float = 1e-12, path: str = "") -> None:
    """Structural equality of to_dict() trees with a relative tolerance on floats."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same(a[k], b[k], rel, f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, rel, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert b == pytest.approx(a, rel=rel, abs=1e-300), path
    else:
        assert a == b, path


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_metrics_match_reference(dtype: str, kind: str, layout: str) -> None:
    shape, shift = LAYOUTS[layout]
    rng = np.random.default_rng(hash((dtype, kind, layout)) % 2**32)
    x = make_preds(rng, shape, kind, dtype)
    t = make_targets(rng, shape[:-1], shape[-1])
    rep = evaluate(x, t, kind=kind, shift=shift, top_k=(1, 3, 5))
    assert_matches(rep, reference_metrics(x, t, kind=kind, shift=shift, top_k=(1, 3, 5)))
    assert rep.n_classes == shape[-1] and rep.kind == kind


@pytest.mark.parametrize("n_bins", [7, 300])
@pytest.mark.parametrize("c", [2, 5, 17, 32])
@pytest.mark.parametrize("kind", KINDS)
def test_short_rows_in_lanes_match_reference(kind: str, c: int, n_bins: int) -> None:
    # C <= 32: rows in SIMD lanes, whole groups of 16 summed by the vector bookkeeping (its
    # histogram kept in 4 interleaved copies up to 256 bins, one beyond); the ragged end and
    # the group holding an ignored row take the row-by-row sums
    rng = np.random.default_rng(c * 1000 + n_bins)
    x = make_preds(rng, (16 * 40 + 5, c), kind, "float32")
    t = make_targets(rng, (16 * 40 + 5,), c)
    t[100] = -100
    rep = evaluate(x, t, kind=kind, top_k=(1, 2, 40), n_bins=n_bins, per_row=True)
    ref = reference_metrics(x, t, kind=kind, top_k=(1, 2, 40), n_bins=n_bins)
    assert_matches(rep, ref, n_bins=n_bins)
    np.testing.assert_allclose(rep.row_nll, ref["row_nll"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(rep.row_rank, ref["row_rank"])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("c", [2, 3, 10, 32, 33, 200])
@pytest.mark.parametrize("kind", KINDS)
def test_clean_runs_match_reference_at_any_alignment(kind: str, c: int, dtype: str) -> None:
    # few ignored rows: runs of clean groups take one kernel loop (C <= 32: kernel::eval_run;
    # longer logits rows: kernel::eval_long), which stops at an ignored row, at a long run of
    # them (its retries back off) and at a row that is not ordinary; binary rows take the
    # closed form; longer log-probabilities and probabilities take the row path. Every
    # row's NLL and rank must match the reference and must not depend on which 16 rows share
    # its group (slices from rows 1, 7 and 16 realign the groups) or on per-row outputs.
    rng = np.random.default_rng(c * 7 + len(kind) + len(dtype))
    n = 16 * 300 + 9
    x = make_preds(rng, (n, c), kind, dtype)
    t = make_targets(rng, (n,), c, ignore_frac=0.0)
    t[[37, 500]] = -100
    t[1000:2200] = -100
    x[3000, (t[3000] + 1) % c] = -np.inf if kind != "probs" else 0.0  # a masked class
    rep = evaluate(x, t, kind=kind, top_k=(1, 2), per_row=True, check_kind=False)
    ref = reference_metrics(x, t, kind=kind, top_k=(1, 2))
    assert_matches(rep, ref)
    np.testing.assert_allclose(rep.row_nll, ref["row_nll"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(rep.row_rank, ref["row_rank"])
    sums = evaluate(x, t, kind=kind, top_k=(1, 2), check_kind=False)
    assert (sums.sum_nll, sums.brier, sums.ece) == (rep.sum_nll, rep.brier, rep.ece)
    for k in (1, 7, 16):
        sub = evaluate(x[k:], t[k:], kind=kind, top_k=(1, 2), per_row=True, check_kind=False)
        np.testing.assert_array_equal(sub.row_nll, rep.row_nll[k:])
        np.testing.assert_array_equal(sub.row_rank, rep.row_rank[k:])
    # the per-row confidence (max p) the clean runs write, against float64
    conf = np.empty(n)
    xv, tag, swap = fastnll._arrays.core_view(x)
    nll_o, rank_o = np.empty(n), np.empty(n, np.int64)
    fastnll._core.eval_rows(
        xv, tag, swap, t, kind, -100, [1], 15, nll_out=nll_o, rank_out=rank_o, conf_out=conf
    )
    x64 = x.astype(np.float64)
    if kind == "logits":
        p64 = np.exp(x64 - x64.max(axis=1, keepdims=True))
        p64 /= p64.sum(axis=1, keepdims=True)
    else:
        p64 = np.exp(x64) if kind == "log_probs" else x64
    ok = t != -100
    np.testing.assert_allclose(conf[ok], p64.max(axis=1)[ok], rtol=2e-6)
    np.testing.assert_array_equal(nll_o, rep.row_nll)
    # a NaN row is its own: NaN NLL, every other row as before
    x[3100] = np.nan
    bad = evaluate(x, t, kind=kind, top_k=(1, 2), per_row=True, check_kind=False)
    assert np.isnan(bad.row_nll[3100])
    keep = np.arange(n) != 3100
    np.testing.assert_array_equal(bad.row_nll[keep], rep.row_nll[keep])


@pytest.mark.parametrize("n_bins", [15, 300])
@pytest.mark.parametrize("c", [2, 10, 32])
def test_float64_short_row_groups_match_reference(c: int, n_bins: int) -> None:
    # float64 logits, C <= 32: whole groups of 16 ordinary rows are scored from their block's
    # vector statistics and summed together; the ragged end and the groups holding an ignored
    # row, a -inf entry, a +inf logit or a NaN take the row path. Every sum in float64, so the
    # report is held to 1e-12 of the float64 reference, every row's NLL too.
    rng = np.random.default_rng(40 + c)
    n = 16 * 20 + 5
    x = make_preds(rng, (n, c), "logits", "float64") * 3.0
    t = make_targets(rng, (n,), c, ignore_frac=0.0)
    t[40] = -100
    x[70, 0], t[70] = -np.inf, 1  # a -inf entry away from the target: an ordinary NLL
    x[101, c - 1] = np.inf
    x[150, 0] = np.nan
    rep = evaluate(x, t, top_k=(1, 2, 5), n_bins=n_bins, per_row=True)
    assert rep.rows == n - 1 and rep.ignored == 1
    ok = np.ones(n, bool)
    ok[[40, 101, 150]] = False
    x64 = x[ok]
    m = x64.max(axis=1)
    lse = m + np.log(np.exp(x64 - m[:, None]).sum(axis=1))
    nll = lse - x64[np.arange(len(x64)), t[ok]]
    # (a row whose NLL is ~1e-6, ln s with s near 1, is held to its absolute rounding)
    np.testing.assert_allclose(rep.row_nll[ok], nll, rtol=1e-12, atol=1e-14)
    assert np.array_equal(rep.row_rank[ok], (x64 > x64[np.arange(len(x64)), t[ok]][:, None]).sum(1))
    assert np.isnan(rep.row_nll[150]) and rep.row_rank[40] == -1
    # the NaN row (NLL NaN) and the +inf row (NLL inf) poison the sums: the rest without them
    keep = np.ones(n, bool)
    keep[[101, 150]] = False
    ref = reference_metrics(x[keep], t[keep], top_k=(1, 2, 5), n_bins=n_bins)
    clean = evaluate(x[keep], t[keep], top_k=(1, 2, 5), n_bins=n_bins)
    for key in ("mean_nll", "nll_se", "mean_entropy", "brier"):
        assert getattr(clean, key) == pytest.approx(ref[key], rel=1e-12), key
    assert clean.accuracy == ref["accuracy"] and clean.top_k_accuracy == ref["top_k_accuracy"]
    assert [b.count for b in clean.bins] == [b[0] for b in ref["bins"]]
    assert clean.ece == pytest.approx(ref["ece"], rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("n_bins", [7, 300])
@pytest.mark.parametrize("c", [33, 200])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_long_row_groups_match_reference(c: int, n_bins: int, dtype: str) -> None:
    # C > 32, logits: whole groups of 16 ordinary rows are finished together and summed by
    # the vector bookkeeping (4 interleaved histogram copies up to 256 bins; beyond, acc's own
    # bins); the ragged end, a group holding an ignored row and one holding a -inf row do not
    rng = np.random.default_rng(c + n_bins)
    x = make_preds(rng, (16 * 12 + 3, c), "logits", dtype)
    t = make_targets(rng, (16 * 12 + 3,), c)
    t[40] = -100
    x[70, 3] = -np.inf
    rep = evaluate(x, t, top_k=(1, 5, 40), n_bins=n_bins, per_row=True)
    ref = reference_metrics(x, t, top_k=(1, 5, 40), n_bins=n_bins)
    assert_matches(rep, ref, n_bins=n_bins)
    np.testing.assert_allclose(rep.row_nll, ref["row_nll"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(rep.row_rank, ref["row_rank"])


@pytest.mark.parametrize("ignore_index", [0, 4, -1])
def test_other_ignore_index(ignore_index: int) -> None:
    rng = np.random.default_rng(11)
    x = make_preds(rng, (3, 40, 9), "log_probs", "float16")
    t = make_targets(rng, (3, 40), 9, ignore_index=ignore_index, ignore_frac=0.25)
    rep = evaluate(x, t, kind="log_probs", ignore_index=ignore_index, shift=True)
    ref = reference_metrics(x, t, kind="log_probs", ignore_index=ignore_index, shift=True)
    assert rep.ignored == ref["ignored"] > 0
    assert_matches(rep, ref)


def test_per_row_outputs() -> None:
    rng = np.random.default_rng(1)
    x = make_preds(rng, (3, 30, 11), "logits", "float32")
    t = make_targets(rng, (3, 30), 11, ignore_frac=0.3)
    rep = evaluate(x, t, shift=True, per_row=True, chunk_bytes=200)
    ref = reference_metrics(x, t, shift=True)
    assert rep.row_nll is not None and rep.row_rank is not None
    assert rep.row_nll.shape == rep.row_rank.shape == (3, 29)
    np.testing.assert_allclose(rep.row_nll.ravel(), ref["row_nll"], rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(rep.row_rank.ravel(), ref["row_rank"])
    assert np.isnan(rep.row_nll.ravel()[ref["row_rank"] == -1]).all()
    assert_same(rep.to_dict(), evaluate(x, t, shift=True).to_dict())


def test_per_row_to_file(tmp_path: Any) -> None:
    rng = np.random.default_rng(2)
    x = make_preds(rng, (300, 9), "logits", "float16")
    t = make_targets(rng, (300,), 9)
    out = tmp_path / "rows.npy"
    rep = evaluate(x, t, per_row=out, chunk_bytes=500)
    rec = np.load(out)
    assert rec.dtype.names == ("nll", "rank") and rec.shape == (300,)
    ref = reference_metrics(x, t)
    np.testing.assert_allclose(rec["nll"], ref["row_nll"], rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(rec["rank"], ref["row_rank"])
    assert rep.row_rank is not None and (np.asarray(rep.row_rank) == rec["rank"]).all()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_whole_chunked_and_merged_agree(layout: str) -> None:
    shape, shift = LAYOUTS[layout]
    rng = np.random.default_rng(3)
    x = make_preds(rng, shape, "logits", "bfloat16")
    t = make_targets(rng, shape[:-1], shape[-1])
    whole = evaluate(x, t, shift=shift).to_dict()
    for chunk in (1, 37 * 2 * 3, 1000, 5000):
        assert_same(whole, evaluate(x, t, shift=shift, chunk_bytes=chunk).to_dict())
    parts = np.array_split(np.arange(shape[0]), 3)
    shards = [Evaluator(shift=shift).update(x[p], t[p]) for p in parts]
    merged = Evaluator(shift=shift)
    for s in shards:
        merged.merge(pickle.loads(pickle.dumps(s)))
    assert_same(whole, merged.result().to_dict())
    one = Evaluator(shift=shift, chunk_bytes=300)
    for p in parts:
        one.update(x[p], t[p])
    assert_same(whole, one.result().to_dict())


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 60),
    c=st.integers(1, 12),
    chunk=st.integers(1, 3000),
    seed=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(KINDS),
)
def test_chunking_property(n: int, c: int, chunk: int, seed: int, kind: str) -> None:
    rng = np.random.default_rng(seed)
    x = make_preds(rng, (n, c), kind, "float32")
    t = make_targets(rng, (n,), c, ignore_frac=0.2)
    assert_same(
        evaluate(x, t, kind=kind).to_dict(), evaluate(x, t, kind=kind, chunk_bytes=chunk).to_dict()
    )


def test_calibration_sums_are_exact_in_any_order() -> None:
    # Nearly certain, nearly always right: ECE ~1e-9 is a difference of bin sums ~1e3, where a
    # different order of float additions would change its leading digits. Fixed-point sums
    # make whole, chunked and merged runs identical.
    rng = np.random.default_rng(21)
    n, c = 3000, 5
    x = np.full((n, c), -40.0, np.float32)
    t = rng.integers(0, c, n)
    x[np.arange(n), t] = rng.uniform(-4e-9, 0, n).astype(np.float32)
    whole = evaluate(x, t, kind="log_probs")
    assert 0 < whole.ece < 1e-6
    chunked = evaluate(x, t, kind="log_probs", chunk_bytes=7 * 4 * c)
    parts = [Evaluator(kind="log_probs") for _ in range(3)]
    for ev, idx in zip(parts, np.array_split(rng.permutation(n), 3)):
        ev.update(x[idx], t[idx])
    merged = parts[2].merge(parts[0]).merge(parts[1]).result()
    for rep in (chunked, merged):
        assert (rep.ece, rep.mce) == (whole.ece, whole.mce)
        assert [b.mean_confidence for b in rep.bins] == [b.mean_confidence for b in whole.bins]
    conf = np.exp(x.max(axis=1).astype(np.float64))
    assert whole.ece == pytest.approx(abs(1.0 - conf.mean()), rel=1e-9)


def test_layouts_are_read_in_place() -> None:
    rng = np.random.default_rng(4)
    x = make_preds(rng, (60, 13), "logits", "float32")
    t = make_targets(rng, (60,), 13)
    base = evaluate(x, t).to_dict()
    assert_same(base, evaluate(np.asfortranarray(x), t).to_dict())
    assert_same(base, evaluate(x.astype(">f4"), t.astype(">i4")).to_dict())
    assert_same(base, evaluate(x[::-1].copy()[::-1], t).to_dict())
    wide = np.zeros((60, 26), np.float32)
    wide[:, ::2] = x
    assert_same(base, evaluate(wide[:, ::2], t).to_dict())
    x3, t3 = x.reshape(3, 20, 13), t.reshape(3, 20)
    assert_same(base, evaluate(x3, t3).to_dict())
    assert_same(base, evaluate(x3, t, chunk_bytes=100).to_dict())  # flat targets
    t8 = np.where(t3 < 0, 0, t3)
    assert_same(
        evaluate(x3, t8, shift=True).to_dict(),
        evaluate(x3, t8.astype(np.uint8), shift=True).to_dict(),
    )


def test_two_d_shift_is_one_sequence() -> None:
    rng = np.random.default_rng(5)
    x = make_preds(rng, (50, 7), "logits", "float32")
    t = make_targets(rng, (50,), 7)
    assert_same(evaluate(x, t, shift=True).to_dict(), evaluate(x[:-1], t[1:]).to_dict())


def test_ties_count_for_the_target() -> None:
    x = np.zeros((4, 10), np.float32)  # all classes tie: every target is top-1
    rep = evaluate(x, np.array([0, 3, 9, 5]))
    assert rep.accuracy == 1.0 and rep.mean_nll == pytest.approx(math.log(10))
    assert rep.ece == pytest.approx(0.9) and rep.bins[1].count == 4


def test_all_ignored_gives_nan_and_null_json() -> None:
    rep = evaluate(np.zeros((5, 3), np.float32), np.full(5, -1), ignore_index=-1)
    assert rep.rows == 0 and rep.ignored == 5 and math.isnan(rep.mean_nll)
    d = json.loads(json.dumps(rep.to_dict(), allow_nan=False))
    assert d["mean_nll"] is None and d["ece"] is None and d["bins"][0]["accuracy"] is None


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("kind", KINDS)
def test_compare_matches_reference(dtype: str, kind: str) -> None:
    rng = np.random.default_rng(6)
    base = make_preds(rng, (4, 31, 23), kind, dtype)
    new = make_preds(rng, (4, 31, 23), kind, "float32")
    t = make_targets(rng, (4, 31), 23)
    rep = compare(base, new, t, kind=kind, shift=True, chunk_bytes=700)
    ref = reference_compare(base, new, t, kind=kind, shift=True)
    assert rep.rows == ref["rows"]
    for key in ("mean_kl", "mean_dnll", "dnll_se", "top1_agreement"):
        assert getattr(rep, key) == pytest.approx(ref[key], rel=RTOL, abs=ATOL), key
    same = compare(base, base, t, kind=kind)
    assert same.mean_kl == pytest.approx(0, abs=1e-6) and same.top1_agreement == 1.0
    assert same.mean_dnll == 0.0


def test_kind_errors_say_what_the_data_looks_like() -> None:
    rng = np.random.default_rng(7)
    logits = make_preds(rng, (200, 20), "logits", "float32")
    lp = make_preds(rng, (200, 20), "log_probs", "float32")
    p = make_preds(rng, (200, 20), "probs", "float16")
    t = make_targets(rng, (200,), 20)
    cases = [
        (logits - 20, "log_probs", "logsumexp of sampled rows ranges", "kind='logits'"),
        (logits, "log_probs", "positive values", "kind='logits'"),
        (p, "log_probs", "positive values", "kind='probs'"),
        (logits, "probs", "negative values", "kind='logits'"),
        (lp, "probs", "negative values", "kind='log_probs'"),
        (p * 1.5, "probs", "values above 1", "kind='logits'"),
        (p * 0.5, "probs", "do not sum to 1", "not a distribution"),
    ]
    for x, kind, problem, hint in cases:
        with pytest.raises(ValueError, match=f"declared {kind}") as err:
            evaluate(x, t, kind=kind)
        assert problem in str(err.value) and hint in str(err.value)
    evaluate(logits - 20, t, kind="log_probs", check_kind=False)  # opt-out


def test_kind_check_skips_ignored_padding() -> None:
    rng = np.random.default_rng(8)
    lp = make_preds(rng, (64, 10), "log_probs", "float32")
    t = make_targets(rng, (64,), 10, ignore_frac=0)
    lp[::2] = 0.0  # padding rows: not normalised, but ignored
    t[::2] = -100
    assert evaluate(lp, t, kind="log_probs").rows == 32


def test_bad_inputs() -> None:
    x = np.zeros((4, 5), np.float32)
    with pytest.raises(IndexError, match="7"):
        evaluate(x, np.array([0, 1, 7, 2]))
    with pytest.raises(IndexError):
        evaluate(x, np.array([0, 1, -3, 2]), chunk_bytes=20)
    t3 = np.zeros((3, 10), np.int32)
    t3[2, 7] = 5
    x3 = np.zeros((3, 10, 5), np.float16)
    for chunk in (1, 30, 1 << 20):  # positions are the user's, whatever the chunking
        with pytest.raises(IndexError, match=r"target 5 at position \(2, 7\) .* 5 classes"):
            evaluate(x3, t3, shift=True, chunk_bytes=chunk)
        with pytest.raises(IndexError, match=r"target 5 at position 27 "):
            evaluate(x3.reshape(30, 5), t3.reshape(30), chunk_bytes=chunk)
    with pytest.raises(IndexError, match=r"position \(2, 7\)"):
        compare(x3, x3, t3, chunk_bytes=20)
    with pytest.raises(TypeError, match="integer"):
        evaluate(x, np.zeros(4))
    with pytest.raises(TypeError, match="dtype"):
        evaluate(x.astype(np.int32), np.zeros(4, int))
    with pytest.raises(ValueError, match="shape"):
        evaluate(x, np.zeros(3, int))
    with pytest.raises(ValueError, match="2-d"):
        evaluate(np.zeros((2, 2, 2, 2), np.float32), np.zeros((2, 2, 2), int))
    for bad in ({"kind": "logit"}, {"top_k": (0,)}, {"n_bins": 0}, {"chunk_bytes": 0}):
        with pytest.raises(ValueError):
            evaluate(x, np.zeros(4, int), **bad)
    with pytest.raises(ValueError, match="shape"):
        compare(x, np.zeros((4, 6), np.float32), np.zeros(4, int))


def test_merge_checks_settings() -> None:
    a = Evaluator().update(np.zeros((2, 3), np.float32), np.zeros(2, int))
    with pytest.raises(ValueError, match="settings"):
        a.merge(Evaluator(n_bins=10))
    with pytest.raises(ValueError, match="classes"):
        a.merge(Evaluator().update(np.zeros((2, 4), np.float32), np.zeros(2, int)))
    with pytest.raises(TypeError):
        a.merge("not an evaluator")  # type: ignore[arg-type]


# ------------------------------------------------------------------ third-party references
def _probs_case(c: int = 6, n: int = 500, seed: int = 9):
    rng = np.random.default_rng(seed)
    p = make_preds(rng, (n, c), "probs", "float64")
    t = make_targets(rng, (n,), c, ignore_frac=0)
    t[:c] = np.arange(c)  # every class present
    return p, t


def test_sklearn_log_loss_and_top_k() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    p, t = _probs_case()
    rep = evaluate(p, t, kind="probs", top_k=(1, 2, 3))
    assert rep.mean_nll == pytest.approx(metrics.log_loss(t, p, labels=range(6)), rel=1e-9)
    for k in (1, 2, 3):
        want = metrics.top_k_accuracy_score(t, p, k=k, labels=range(6))
        assert rep.top_k_accuracy[k] == pytest.approx(want, abs=1e-12)


def test_sklearn_brier_binary() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    p, t = _probs_case(c=2)
    rep = evaluate(p, t, kind="probs")
    # multi-class Brier sums over both classes: twice the binary score
    assert rep.brier == pytest.approx(2 * metrics.brier_score_loss(t, p[:, 1]), rel=1e-9)


def test_torchmetrics_calibration_error() -> None:
    torch = pytest.importorskip("torch")
    cls = pytest.importorskip("torchmetrics.functional.classification")
    p, t = _probs_case(c=5, n=2000, seed=10)
    rep = evaluate(p, t, kind="probs", n_bins=10)
    args = (torch.tensor(p, dtype=torch.float64), torch.tensor(t))
    ece = cls.multiclass_calibration_error(*args, num_classes=5, n_bins=10, norm="l1")
    mce = cls.multiclass_calibration_error(*args, num_classes=5, n_bins=10, norm="max")
    assert rep.ece == pytest.approx(float(ece), abs=1e-6)
    assert rep.mce == pytest.approx(float(mce), abs=1e-6)


@pytest.mark.parametrize("c", [2, 5, 32])
def test_probability_lanes_and_row_path_agree_on_odd_rows(c: int) -> None:
    # kind="probs" with C <= 32 runs in SIMD lanes; a zero, subnormal, negative, NaN or inf
    # target probability, or a NaN / inf elsewhere in the row, goes to the row path (the
    # scalar path has no lanes), and every row's NLL (float64 -ln p_t, as the row path) and
    # rank must match it
    rng = np.random.default_rng(c)
    n = 16 * 5 + 7
    z = rng.standard_normal((n, c)) * 3
    p = (np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)).astype(np.float32)
    t = rng.integers(0, c, n)
    p[3, t[3]] = 0.0
    p[17, t[17]] = 1e-40  # subnormal
    p[20, t[20]] = -0.25
    p[33, (t[33] + 1) % c] = np.nan
    p[40, t[40]] = np.inf
    p[64, t[64]] = np.nan
    p[70] = 1.0 / c  # every class ties
    t[9] = -100
    before = fastnll.simd_path()
    got = {}
    try:
        for path in fastnll.available_simd_paths():
            fastnll.set_simd_path(path)
            got[path] = evaluate(p, t, kind="probs", per_row=True, check_kind=False)
    finally:
        fastnll.set_simd_path(before)
    row = got["scalar"]
    for path, rep in got.items():
        np.testing.assert_array_equal(rep.row_nll, row.row_nll, err_msg=path)
        np.testing.assert_array_equal(rep.row_rank, row.row_rank, err_msg=path)
        assert rep.ignored == row.ignored == 1 and rep.rows == row.rows
        assert rep.top_k_accuracy == row.top_k_accuracy
        assert [b.count for b in rep.bins] == [b.count for b in row.bins]
    assert row.row_nll[3] == np.inf and np.isnan(row.row_nll[20])
