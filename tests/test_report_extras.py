"""evaluate's extras (per position / sequence / class, bits per byte, word perplexity, mask,
min_position, clip) and the input warnings, against float64 NumPy references written here."""

from __future__ import annotations

import itertools
import json
import math
import warnings

import numpy as np
import pytest

import fastnll
from fastnll._report_extras import ExtrasAccumulator
from fastnll.evaluate import evaluate


def ref_rows(x: np.ndarray, t: np.ndarray, kind: str = "logits"):
    """float64 per-row NLL and top-1 (ties count for the target) of [..., C] vs [...]."""
    z = x.astype(np.float64)
    c = z.shape[-1]
    z2, t2 = z.reshape(-1, c), t.reshape(-1)
    tt = np.where(t2 >= 0, t2, 0)
    with np.errstate(divide="ignore"):
        lp = z2 - np.logaddexp.reduce(z2, axis=1, keepdims=True) if kind == "logits" else np.log(z2)
    r = np.arange(t2.size)
    nll = -lp[r, tt]
    top1 = (z2 > z2[r, tt][:, None]).sum(1) == 0
    return nll.reshape(t.shape), top1.reshape(t.shape)


@pytest.fixture
def lm():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((6, 41, 29)) * 2).astype(np.float32)
    t = rng.integers(0, 29, (6, 41))
    t[1, 5:9] = -100
    t[4, :] = -100  # a sequence with nothing scored
    return x, t


def test_per_position_and_per_sequence(lm) -> None:
    x, t = lm
    rep = evaluate(x, t, shift=True, per_position=True, per_sequence=True, chunk_bytes=900)
    nll, ok = ref_rows(x[:, :-1], t[:, 1:])
    v = t[:, 1:] != -100
    e = rep.extras
    cnt = v.sum(0)
    np.testing.assert_array_equal(e.position_count, cnt)
    np.testing.assert_allclose(e.position_mean_nll, np.where(v, nll, 0).sum(0) / cnt, rtol=1e-6)
    np.testing.assert_allclose(e.position_accuracy, (v & ok).sum(0) / cnt, rtol=1e-12)
    seq_n = v.sum(1)
    with np.errstate(invalid="ignore"):
        seq_m = np.where(v, nll, 0).sum(1) / seq_n
    np.testing.assert_array_equal(e.sequence_count, seq_n)
    np.testing.assert_allclose(e.sequence_mean_nll, seq_m, rtol=1e-6)
    assert np.isnan(e.sequence_mean_nll[4]) and np.isnan(e.sequence_perplexity[4])
    got = seq_m[seq_n > 0]
    assert e.sequence_nll_mean == pytest.approx(got.mean(), rel=1e-6)
    assert e.sequence_nll_se == pytest.approx(got.std(ddof=1) / math.sqrt(got.size), rel=1e-5)
    assert e.sequence_perplexity_mean == pytest.approx(np.exp(got).mean(), rel=1e-6)
    assert rep.mean_nll == pytest.approx(nll[v].mean(), rel=1e-6)
    whole = evaluate(x, t, shift=True, per_position=True, per_sequence=True)
    np.testing.assert_allclose(whole.extras.position_mean_nll, e.position_mean_nll, rtol=1e-12)
    d = json.loads(json.dumps(rep.to_dict(), allow_nan=False))
    assert d["schema_version"] == 2 and len(d["extras"]["positions"]["mean_nll"]) == 40
    assert d["extras"]["sequences"]["mean_nll"][4] is None


def test_bits_per_byte_and_word_perplexity(lm) -> None:
    """lm-evaluation-harness: bits_per_byte = -sum ll / (n_bytes ln 2), word_perplexity =
    exp(-sum ll / n_words); counts per document (sequence) or as totals."""
    x, t = lm
    nll, _ = ref_rows(x[:, :-1], t[:, 1:])
    ll = -nll[t[:, 1:] != -100].sum()
    n_bytes = np.array([150, 160, 170, 120, 1, 140])
    rep = evaluate(x, t, shift=True, n_bytes=n_bytes, n_words=210)
    assert rep.extras.bits_per_byte == pytest.approx(-ll / (n_bytes.sum() * math.log(2)), rel=1e-6)
    assert rep.extras.word_perplexity == pytest.approx(math.exp(-ll / 210), rel=1e-6)
    with pytest.raises(ValueError, match="n_bytes must be a total or one count per sequence"):
        evaluate(x, t, shift=True, n_bytes=[1, 2])
    with pytest.raises(ValueError, match="n_words must be positive"):
        evaluate(x, t, shift=True, n_words=0)


def test_mask_and_min_position(lm) -> None:
    x, t = lm
    rng = np.random.default_rng(1)
    mask = rng.random(t.shape) > 0.3
    t0 = t.copy()
    rep = evaluate(x, t, shift=True, mask=mask, min_position=7)
    assert np.array_equal(t, t0)  # the caller's targets are not modified
    nll, ok = ref_rows(x[:, :-1], t[:, 1:])
    keep = (t[:, 1:] != -100) & mask[:, 1:]
    keep[:, :7] = False  # predictions at positions 0..6
    assert rep.rows == keep.sum()
    assert rep.mean_nll == pytest.approx(nll[keep].mean(), rel=1e-6)
    assert rep.accuracy == pytest.approx(ok[keep].mean(), rel=1e-12)
    with pytest.raises(ValueError, match="mask has shape"):
        evaluate(x, t, mask=mask[:, :-1])


def test_per_class_matches_sklearn() -> None:
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((3000, 10)) * 1.5).astype(np.float32)
    t = rng.integers(0, 10, 3000)
    t[::37] = -100
    rep = evaluate(x, t, per_class=True, chunk_bytes=4000)
    v = t != -100
    nll, _ = ref_rows(x, t)
    recall = sk.recall_score(t[v], np.argmax(x[v], 1), average=None, labels=range(10))
    np.testing.assert_allclose(rep.extras.class_recall, recall, rtol=1e-12)
    np.testing.assert_array_equal(rep.extras.class_count, np.bincount(t[v], minlength=10))
    np.testing.assert_allclose(
        rep.extras.class_mean_nll, np.bincount(t[v], weights=nll[v]) / np.bincount(t[v]), rtol=1e-6
    )
    with pytest.raises(ValueError, match="at most 4096 classes"):
        evaluate(np.zeros((2, 5000), np.float32), np.zeros(2, int), per_class=True)


def test_float16_probs_zero_target_count_and_clip() -> None:
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    z = rng.standard_normal((500, 8)) * 6
    p = np.exp(z - np.logaddexp.reduce(z, axis=1, keepdims=True)).astype(np.float16)
    t = rng.integers(0, 8, 500)
    zero = p[np.arange(500), t] == 0
    assert zero.sum() > 3  # float16 underflow of the target's probability
    rep = evaluate(p, t, kind="probs")
    assert rep.extras.zero_prob_rows == zero.sum() and rep.mean_nll == math.inf
    # counted from the core's sums (no per-row outputs) in any chunking, and from the rows
    # when they are asked for
    for kw in ({"chunk_bytes": 160}, {"per_row": True}, {"per_class": True}):
        assert evaluate(p, t, kind="probs", **kw).extras.zero_prob_rows == zero.sum(), kw
    eps = 1e-7
    clipped = evaluate(p, t, kind="probs", clip=eps)
    pt = p.astype(np.float64)[np.arange(500), t]
    ref = -np.log(np.maximum(pt, eps))
    assert clipped.mean_nll == pytest.approx(ref.mean(), rel=1e-9)
    assert clipped.nll_se == pytest.approx(ref.std(ddof=1) / math.sqrt(500), rel=1e-9)
    assert clipped.extras.clipped_rows == (pt < eps).sum()
    # sklearn's log_loss on the same clipped, renormalised-free target probabilities
    p64 = np.clip(p.astype(np.float64), eps, 1)
    assert clipped.mean_nll == pytest.approx(
        sk.log_loss(t, p64 / p64.sum(1, keepdims=True), labels=range(8)), rel=0.05
    )
    with pytest.raises(ValueError, match="clip= applies to kind='probs'"):
        evaluate(z.astype(np.float32), t, clip=eps)


def test_accumulator_merges(lm) -> None:
    x, t = lm
    rep = evaluate(x, t, shift=True, per_row=True)
    nll, rank = rep.row_nll.reshape(-1), rep.row_rank.reshape(-1)
    shape = rep.row_nll.shape

    def acc():
        return ExtrasAccumulator(shape, 29, per_position=True, per_sequence=True, n_bytes=1000)

    whole = acc()
    whole.add(0, nll, rank, None)
    a, b = acc(), acc()
    a.add(0, nll[:100], rank[:100], None)
    b.add(100, nll[100:], rank[100:], None)
    m = a.merge(b).result()
    w = whole.result()
    np.testing.assert_allclose(m.position_mean_nll, w.position_mean_nll, rtol=1e-12)
    np.testing.assert_allclose(m.sequence_mean_nll, w.sequence_mean_nll, rtol=1e-12)
    assert m.bits_per_byte == pytest.approx(w.bits_per_byte, rel=1e-12)


def test_probabilities_as_logits_warn() -> None:
    rng = np.random.default_rng(4)
    z = rng.standard_normal((200, 10))
    p = (np.exp(z) / np.exp(z).sum(1, keepdims=True)).astype(np.float32)
    t = rng.integers(0, 10, 200)
    with pytest.warns(fastnll.InputWarning, match="kind='probs'"):
        evaluate(p, t)
    with pytest.warns(fastnll.InputWarning, match="kind='probs'"):
        fastnll.compare(p, p, t)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate(z.astype(np.float32), t)  # real logits: silent
        evaluate(p, t, check_kind=False)  # asked not to check
        evaluate(p, t, kind="probs")


def test_shift_on_2d_warns() -> None:
    x = np.zeros((20, 5), np.float32)
    with pytest.warns(fastnll.InputWarning, match="ONE sequence"):
        evaluate(x, np.zeros(20, int), shift=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate(x[None], np.zeros((1, 20), int), shift=True)  # [B, T, V]: silent


def test_cli_plot_positions(tmp_path, lm) -> None:
    pytest.importorskip("matplotlib")
    from fastnll.cli import main

    x, t = lm
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "t.npy", t)
    out = tmp_path / "pos.png"
    code = main(
        [
            "eval",
            str(tmp_path / "x.npy"),
            str(tmp_path / "t.npy"),
            "--shift",
            "--plot-positions",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0 and out.stat().st_size > 1000


def test_classwise_ece_matches_definition() -> None:
    """Classwise ECE (Kull et al. 2019): mean over classes k of sum_b n_kb / N |freq - conf|
    with equal-width bins of p_k; float64 reference from the definition."""
    rng = np.random.default_rng(5)
    z = rng.standard_normal((4000, 6)) * 2
    t = rng.integers(0, 6, 4000)
    t[::41] = -100
    rep = evaluate(z.astype(np.float32), t, classwise_ece=True, n_bins=10, chunk_bytes=5000)
    v = t != -100
    p = np.exp(z - np.logaddexp.reduce(z, axis=1, keepdims=True))[v]
    y = t[v]
    per = []
    for k in range(6):
        b = np.minimum((p[:, k] * 10).astype(int), 9)
        e = 0.0
        for i in range(10):
            m = b == i
            if m.any():
                e += m.sum() / y.size * abs((y[m] == k).mean() - p[m, k].mean())
        per.append(e)
    np.testing.assert_allclose(rep.extras.class_ece, per, rtol=1e-5, atol=1e-7)
    assert rep.extras.classwise_ece == pytest.approx(np.mean(per), rel=1e-5)


def test_ties_first_is_torch_argmax_on_bfloat16() -> None:
    """A bfloat16 dump has many ties: ties='target' counts them for the target, ties='first'
    gives torch's argmax accuracy; the report says which rule it used."""
    import ml_dtypes

    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    x = (rng.standard_normal((5000, 64)) * 0.3).astype(ml_dtypes.bfloat16)
    xf = x.astype(np.float32)
    t = np.argsort(-xf, axis=1, kind="stable")[:, 1]  # the second of a tie, where there is one
    tie = xf[np.arange(5000), t] == xf.max(1)
    assert tie.sum() > 50
    first = evaluate(x, t, ties="first")
    want = (torch.from_numpy(xf).argmax(-1).numpy() == t).mean()
    assert first.accuracy == pytest.approx(want, abs=0) and first.ties == "first"
    assert evaluate(x, t).accuracy == pytest.approx(tie.mean(), abs=0)
    assert evaluate(x, t).to_dict()["ties"] == "target"
    with pytest.raises(ValueError, match="ties must be"):
        evaluate(x, t, ties="last")


def _mass_reference(conf: np.ndarray, correct: np.ndarray, nb: int) -> float:
    order = np.argsort(conf, kind="stable")
    c, k = conf[order], correct[order].astype(float)
    edges = (np.arange(nb + 1) * c.size) // nb
    return float(
        sum(abs(k[a:b].sum() - c[a:b].sum()) for a, b in itertools.pairwise(edges)) / c.size
    )


def test_equal_mass_ece_matches_reference(monkeypatch) -> None:
    from fastnll import _report_extras

    rng = np.random.default_rng(7)
    z = rng.standard_normal((6000, 12)) * 2
    t = rng.integers(0, 12, 6000)
    t[::13] = -100
    rep = evaluate(z.astype(np.float32), t, equal_mass_ece=True, n_bins=10, chunk_bytes=7000)
    v = t != -100
    p = np.exp(z - np.logaddexp.reduce(z, axis=1, keepdims=True))[v]
    correct = np.argmax(z[v], 1) == t[v]
    ref = _mass_reference(p.max(1), correct, 10)
    e = rep.extras
    assert e.equal_mass_exact and e.ece_equal_mass == pytest.approx(ref, rel=1e-5, abs=1e-7)
    counts = [b["count"] for b in e.equal_mass_bins]
    assert max(counts) - min(counts) <= 1 and sum(counts) == v.sum()
    # past the exact bound: the 2^16 fine bins, within one fine bin per bin of the exact one
    monkeypatch.setattr(_report_extras, "MAX_EXACT_ROWS", 1000)
    approx = evaluate(
        z.astype(np.float32), t, equal_mass_ece=True, n_bins=10, chunk_bytes=7000
    ).extras
    assert not approx.equal_mass_exact
    assert approx.ece_equal_mass == pytest.approx(ref, abs=2e-3)


def test_evaluator_keeps_its_ties_rule_through_pickle_and_merge() -> None:
    import pickle

    x = np.zeros((6, 4), np.float32)  # every class ties
    t = np.array([0, 1, 2, 3, 0, 1])
    ev = fastnll.Evaluator(ties="first").update(x, t)
    back = pickle.loads(pickle.dumps(ev))
    assert back.ties == "first" and back.result().accuracy == pytest.approx(2 / 6)
    assert fastnll.Evaluator().update(x, t).result().accuracy == 1.0
    with pytest.raises(ValueError, match="different settings"):
        fastnll.Evaluator().merge(back)
    state = ev.__getstate__()
    state.pop("ties")  # a state written before ties= existed reads as the target rule
    old = fastnll.Evaluator.__new__(fastnll.Evaluator)
    old.__setstate__(state)
    assert old.ties == "target"
