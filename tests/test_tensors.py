"""Torch and JAX tensors go to every public function, read in place through DLPack.

Each case passes the same numbers twice, once as a tensor and once as the NumPy array of the
same memory, and requires identical results (the core reads the same bytes with the same
strides); the NumPy results are checked against the float64 reference in ``reference.py``
(and torch's own losses) elsewhere and here. "No copy" is shown by the data pointer of the
view fastnll reads and, for an 800 MB bfloat16 tensor, by the process's peak RSS.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import fastnll
import reference as ref
from conftest import BF16
from fastnll._dlpack import from_dlpack

torch = pytest.importorskip("torch")
F = torch.nn.functional

C = 13


def _np(t: Any) -> np.ndarray:
    """The NumPy array of a tensor's own memory (bf16 through an int16 view: no copy)."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(BF16)
    return t.numpy()


def _layouts(dtype: Any) -> dict[str, Any]:
    """Contiguous, transposed and sliced logits tensors [.., C] of one dtype."""
    g = torch.Generator().manual_seed(7)
    base = (torch.randn(24, C, generator=g) * 3).to(dtype)
    wide = (torch.randn(C, 40, generator=g) * 3).to(dtype)
    big = (torch.randn(6, 30, 2 * C, generator=g) * 3).to(dtype)
    return {
        "contiguous": base,
        "transposed": wide.T,  # [40, C], class stride 40 elements
        "sliced": big[1:5, 3:27:2, ::2],  # [4, 12, C], gaps everywhere
        "requires_grad": base.clone().requires_grad_(True),
    }


DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16, "f64": torch.float64}


def _targets(x: Any, dtype: Any = torch.int64, ignore: bool = True) -> Any:
    g = torch.Generator().manual_seed(11)
    t = torch.randint(0, C, x.shape[:-1], generator=g)
    if ignore:
        t.view(-1)[::5] = -100
    return t.to(dtype)


def _probs(x: Any) -> Any:
    """Probabilities of x's shape and dtype, in another tensor with x's layout."""
    return (
        torch.softmax(x.detach().float(), dim=-1).to(x.dtype).T.contiguous().T
        if x.ndim == 2
        else torch.softmax(x.detach().float(), dim=-1).to(x.dtype)
    )


def _same(a: Any, b: Any) -> None:
    if isinstance(a, tuple):
        for u, v in zip(a, b):
            _same(u, v)
        return
    if isinstance(a, float):
        assert a == b or (np.isnan(a) and np.isnan(b)), (a, b)
        return
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert np.asarray(a).dtype == np.asarray(b).dtype


CALLS: dict[str, Callable[[Any, Any, Any], Any]] = {
    "cross_entropy": lambda x, t, y: fastnll.cross_entropy(x, t),
    "cross_entropy_none": lambda x, t, y: fastnll.cross_entropy(x, t, reduction="none"),
    "cross_entropy_smooth": lambda x, t, y: fastnll.cross_entropy(
        x, t, label_smoothing=0.1, reduction="sum"
    ),
    "cross_entropy_soft": lambda x, t, y: fastnll.cross_entropy(x, y, reduction="none"),
    "nll_loss": lambda x, t, y: fastnll.nll_loss(fastnll.log_softmax(x), t, reduction="none"),
    "logsumexp": lambda x, t, y: fastnll.logsumexp(x),
    "logsumexp_all": lambda x, t, y: fastnll.logsumexp(x, axis=None),
    "logsumexp_b": lambda x, t, y: fastnll.logsumexp(x, b=y, return_sign=True),
    "log_softmax": lambda x, t, y: fastnll.log_softmax(x),
    "softmax_axis0": lambda x, t, y: fastnll.softmax(x, axis=0),
    "bce_with_logits": lambda x, t, y: fastnll.binary_cross_entropy_with_logits(
        x, y, weight=y, pos_weight=y[(0,) * (y.ndim - 1)], reduction="none"
    ),
    "evaluate": lambda x, t, y: fastnll.evaluate(x, t, top_k=(1, 3)).to_dict(),
    "compare": lambda x, t, y: fastnll.compare(x, y, t, check_kind=False).to_dict(),
    "evaluator": lambda x, t, y: fastnll.Evaluator(top_k=(1,)).update(x, t).result().to_dict(),
}


@pytest.mark.parametrize("layout", ["contiguous", "transposed", "sliced", "requires_grad"])
@pytest.mark.parametrize("dname", list(DTYPES))
@pytest.mark.parametrize("call", list(CALLS))
def test_torch_tensor_matches_numpy(call: str, dname: str, layout: str) -> None:
    x = _layouts(DTYPES[dname])[layout]
    t = _targets(x)
    y = _probs(x)
    fn = CALLS[call]
    _same(fn(x, t, y), fn(_np(x), t.numpy(), _np(y)))


@pytest.mark.parametrize("dname", ["f32", "bf16", "f16"])
def test_torch_results_match_float64_reference_and_torch(dname: str) -> None:
    x = _layouts(DTYPES[dname])["sliced"]
    t = _targets(x, torch.int32)
    x64 = x.double().numpy()
    got = fastnll.cross_entropy(x, t, reduction="none")
    want = ref.cross_entropy(x64, t.numpy().astype(np.int64), reduction="none")
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-5)
    lt = t.long()
    mean_t = F.cross_entropy(x.double().reshape(-1, C), lt.reshape(-1)).item()
    assert fastnll.cross_entropy(x, t) == pytest.approx(mean_t, rel=1e-6)
    lse = fastnll.logsumexp(x, axis=(0, 2))
    np.testing.assert_allclose(
        lse, torch.logsumexp(x.double(), dim=(0, 2)).numpy(), rtol=2e-6, atol=2e-5
    )


@pytest.mark.parametrize("tdtype", [torch.int32, torch.int64, torch.uint8, torch.int16])
def test_integer_target_tensors(tdtype: Any) -> None:
    x = _layouts(torch.float32)["transposed"]
    t = _targets(x, tdtype, ignore=tdtype not in (torch.uint8,))
    ii = 255 if tdtype == torch.uint8 else -100
    got = fastnll.cross_entropy(x, t, ignore_index=ii, reduction="none")
    np.testing.assert_array_equal(
        got,
        fastnll.cross_entropy(
            x.numpy(), t.numpy().astype(np.int64), ignore_index=ii, reduction="none"
        ),
    )


def test_tensor_weights_and_probability_targets() -> None:
    x = _layouts(torch.bfloat16)["contiguous"]
    w = torch.linspace(0.5, 2.0, C, dtype=torch.bfloat16)
    t = _targets(x)
    got = fastnll.cross_entropy(x, t, weight=w)
    assert got == fastnll.cross_entropy(_np(x), t.numpy(), weight=_np(w))
    y = torch.softmax(x.float(), dim=-1)  # float targets: class probabilities
    got_soft = fastnll.cross_entropy(x, y, reduction="none")
    np.testing.assert_array_equal(
        got_soft, fastnll.cross_entropy(_np(x), y.numpy(), reduction="none")
    )
    np.testing.assert_allclose(
        got_soft,
        F.cross_entropy(x.double(), y.double(), reduction="none").numpy(),
        rtol=2e-6,
        atol=2e-5,
    )
    b = torch.rand(x.shape)
    np.testing.assert_array_equal(fastnll.logsumexp(x, b=b), fastnll.logsumexp(_np(x), b=b.numpy()))


@pytest.mark.parametrize("dname", list(DTYPES))
def test_view_is_the_tensors_memory(dname: str) -> None:
    for layout, x in _layouts(DTYPES[dname]).items():
        v = from_dlpack(x, "logits")
        assert v.__array_interface__["data"][0] == x.data_ptr(), layout
        assert v.strides == tuple(s * x.element_size() for s in x.stride()), layout
        assert not v.flags.writeable  # fastnll can never write into a user's tensor
    assert x.requires_grad and x.grad is None


def test_requires_grad_tensor_is_not_modified_and_keeps_grad() -> None:
    x = _layouts(torch.float32)["requires_grad"]
    before = x.detach().clone()
    fastnll.cross_entropy(x, _targets(x))
    assert torch.equal(x.detach(), before) and x.requires_grad and x.grad_fn is None


class _CudaLike:
    """Stand-in for a GPU tensor (used only when no GPU exists): exports on CUDA device 0."""

    def __dlpack__(self, **kwargs: Any) -> Any:
        raise AssertionError("a GPU tensor must not be exported")

    def __dlpack_device__(self) -> tuple:
        return (2, 0)


def _gpu_tensor() -> Any:
    if torch.cuda.is_available():
        return torch.zeros(4, C, device="cuda")
    return _CudaLike()


@pytest.mark.parametrize("call", ["cross_entropy", "logsumexp", "evaluate", "target"])
def test_gpu_tensor_is_a_clear_error(call: str) -> None:
    g = _gpu_tensor()
    with pytest.raises(TypeError, match=r"cuda:0.*call \.cpu\(\) first") as info:
        if call == "cross_entropy":
            fastnll.cross_entropy(g, np.zeros(4, np.int64))
        elif call == "logsumexp":
            fastnll.logsumexp(g)
        elif call == "evaluate":
            fastnll.evaluate(g, np.zeros(4, np.int64))
        else:
            fastnll.cross_entropy(np.zeros((4, C), np.float32), g)
    head = {"cross_entropy": "logits", "logsumexp": "a", "evaluate": "preds", "target": "target"}[
        call
    ]
    assert str(info.value).startswith(head + " is a ")


def test_unsupported_tensors_name_the_argument() -> None:
    with pytest.raises(TypeError, match="logits has dtype int32"):
        fastnll.cross_entropy(
            torch.zeros(3, C, dtype=torch.int32), torch.zeros(3, dtype=torch.long)
        )
    with pytest.raises(TypeError, match="target must hold integer class indices"):
        fastnll.nll_loss(torch.zeros(3, C), torch.zeros(3, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"^a \(torch.Tensor\) cannot be read in place: .*strided"):
        fastnll.logsumexp(torch.zeros(3, C).to_sparse())
    with pytest.raises(TypeError, match=r"^input \(torch.Tensor\) cannot be read in place: .*meta"):
        fastnll.softmax(torch.zeros(3, C, device="meta"))
    if hasattr(torch, "float8_e4m3fn"):
        with pytest.raises(
            TypeError,
            match=r"^logits \(torch.Tensor of dtype torch.float8_e4m3fn\)"
            r".*accepted dtypes: float32",
        ):
            fastnll.cross_entropy(torch.zeros(3, C).to(torch.float8_e4m3fn), [0, 1, 2])


def test_parameter_and_other_torch_subclasses() -> None:
    w = torch.nn.Parameter(_layouts(torch.bfloat16)["contiguous"].clone())  # requires grad
    t = _targets(w)
    assert fastnll.cross_entropy(w, t) == fastnll.cross_entropy(_np(w), t.numpy())
    assert from_dlpack(w).__array_interface__["data"][0] == w.data_ptr()


JAX_DTYPES = ["float32", "bfloat16", "float16"]


@pytest.mark.parametrize("dname", JAX_DTYPES)
@pytest.mark.parametrize("call", list(CALLS))
def test_jax_array_matches_numpy(call: str, dname: str) -> None:
    jnp = pytest.importorskip("jax.numpy", reason="jax is not installed (pip install jax)")
    rng = np.random.default_rng(3)
    x_np = (rng.standard_normal((3, 20, 2 * C)) * 3).astype(getattr(jnp, dname))
    t_np = rng.integers(0, C, (3, 10)).astype(np.int32)
    x = jnp.asarray(x_np)[:, ::2, ::2]  # a strided JAX computation result (JAX arrays are dense)
    t = jnp.asarray(t_np)
    import jax

    y = jax.nn.softmax(x.astype(jnp.float32), axis=-1).astype(x.dtype)
    fn = CALLS[call]
    _same(fn(x, t, y), fn(np.asarray(x), t_np, np.asarray(y)))
    v = from_dlpack(x, "logits")
    assert v.__array_interface__["data"][0] == x.unsafe_buffer_pointer()


PEAK_SCRIPT = textwrap.dedent(
    """
    import numpy as np, psutil, torch, fastnll, threading, time
    proc = psutil.Process()
    n, c = 400_000, 1000                              # 800 MB of bfloat16
    x = torch.full((n, c), 0.5, dtype=torch.bfloat16)
    x[:, 1] = 2.0
    t = torch.ones(n, dtype=torch.int32)
    x.requires_grad_(True)
    base = proc.memory_info().rss
    peak = [base]
    done = threading.Event()
    def poll():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.002)
    th = threading.Thread(target=poll); th.start()
    loss = fastnll.cross_entropy(x, t)
    lse = fastnll.logsumexp(x)
    rep = fastnll.evaluate(x, t, top_k=(1,))
    done.set(); th.join()
    peak[0] = max(peak[0], proc.memory_info().rss)
    print(f"tensor_mb={x.nbytes / 2**20:.1f} base_mb={base / 2**20:.1f} "
          f"extra_mb={(peak[0] - base) / 2**20:.1f} loss={loss:.6f} nll={rep.mean_nll:.6f} "
          f"lse0={float(lse[0]):.6f}")
    """
)


def test_800mb_bf16_tensor_is_not_copied() -> None:
    pytest.importorskip("psutil")
    r = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    f = dict(kv.split("=") for kv in r.stdout.split())
    # A copy would add 800 MB (a float32 one 1600 MB); fastnll adds outputs and row buffers.
    assert float(f["extra_mb"]) < 0.1 * float(f["tensor_mb"]), r.stdout
    row = np.array([0.5] * 1000)
    row[1] = 2.0
    lse = float(np.log(np.exp(row).sum()))
    assert float(f["loss"]) == pytest.approx(lse - 2.0, rel=1e-5)
    assert float(f["nll"]) == pytest.approx(lse - 2.0, rel=1e-5)
    assert float(f["lse0"]) == pytest.approx(lse, rel=1e-6)


def test_fastnll_does_not_import_torch_or_jax() -> None:
    code = (
        "import sys, numpy as np, fastnll\n"
        "fastnll.cross_entropy(np.zeros((2, 3), np.float32), [0, 1])\n"
        "fastnll.evaluate(np.zeros((2, 3), np.float32), np.array([0, 1]))\n"
        "print(sorted(m for m in ('torch', 'jax') if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
