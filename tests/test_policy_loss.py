"""policy_loss: torch and Triton paths against a plain per-token loop and against autograd of the reference."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import assert_within_tolerance

import spiral_fast
from spiral_fast.algorithm.reference import NORMALIZERS, policy_loss_reference

STAT_FIELDS = ("clip_frac_low", "clip_frac_high", "ratio_mean", "kl_mean")


def make_batch(rows: int, seqs: int, *, with_ref: bool = True, seed: int = 0) -> dict:
    """Random packed rows: ratios spread well past both clip bounds, signed advantages (some 0),
    sequences of uneven length (some with no rows), rows of one sequence not contiguous."""
    g = torch.Generator().manual_seed(seed)
    logp = -3 * torch.rand(rows, generator=g)
    adv = torch.randn(seqs, generator=g)
    adv[::5] = 0.0
    return dict(
        logp=logp,
        old_logp=logp + 0.4 * torch.randn(rows, generator=g),
        token_seq=torch.randint(0, seqs, (rows,), generator=g),
        seq_adv=adv,
        seq_weight=0.5 + torch.rand(seqs, generator=g),
        ref_logp=logp + 0.3 * torch.randn(rows, generator=g) if with_ref else None,
    )


def naive_loss(b: dict, *, clip, kl_coef, normalizer, constant=None) -> tuple[float, dict]:
    """Row by row in Python floats: the formulas of the issue, nothing shared with the package."""
    logp, old, seq = b["logp"].tolist(), b["old_logp"].tolist(), b["token_seq"].tolist()
    adv, w = b["seq_adv"].tolist(), b["seq_weight"].tolist()
    ref = b["ref_logp"].tolist() if b["ref_logp"] is not None else None
    counts = {q: seq.count(q) for q in set(seq)}
    total, low, high, ratios, kls = 0.0, 0, 0, 0.0, 0.0
    for t, q in enumerate(seq):
        r = math.exp(logp[t] - old[t])
        a = adv[q]
        term = -r * a if clip is None else -min(r * a, min(max(r, 1 - clip[0]), 1 + clip[1]) * a)
        kl = 0.0
        if ref is not None:
            d = ref[t] - logp[t]
            kl = math.exp(d) - d - 1
            term += kl_coef * kl
        if normalizer == "token-mean":
            total += w[q] * term / len(seq)
        elif normalizer == "constant":
            total += w[q] * term / constant
        else:
            total += w[q] * term / counts[q] / len(counts)
        if clip is not None:
            low += r < 1 - clip[0] and a < 0
            high += r > 1 + clip[1] and a > 0
        ratios += r
        kls += kl
    n = len(seq)
    return total, dict(clip_frac_low=low / n, clip_frac_high=high / n, ratio_mean=ratios / n, kl_mean=kls / n)


def run(b: dict, *, backend: str, grad_out: float = 1.0, **kw):
    """backend "reference" runs the plain-torch spec (its stats come as a dict)."""
    logp = b["logp"].clone().requires_grad_()
    if backend == "reference":
        loss, stats = policy_loss_reference(
            logp, b["old_logp"], b["token_seq"], b["seq_adv"], b["seq_weight"], ref_logp=b["ref_logp"], **kw
        )
        loss.backward(torch.tensor(grad_out))
        return loss.detach(), logp.grad, type("Stats", (), stats)
    loss, stats = spiral_fast.policy_loss(
        logp,
        b["old_logp"],
        b["token_seq"],
        b["seq_adv"],
        b["seq_weight"],
        ref_logp=b["ref_logp"],
        backend=backend,
        **kw,
    )
    loss.backward(torch.tensor(grad_out))
    return loss.detach(), logp.grad, stats


def run_reference(b: dict, dtype: torch.dtype, grad_out: float, **kw):
    cast = {k: (v.to(dtype) if v is not None and v.is_floating_point() else v) for k, v in b.items()}
    logp = cast["logp"].clone().requires_grad_()
    loss, stats = policy_loss_reference(
        logp, cast["old_logp"], cast["token_seq"], cast["seq_adv"], cast["seq_weight"], ref_logp=cast["ref_logp"], **kw
    )
    loss.backward(torch.tensor(grad_out, dtype=dtype))
    return loss.detach(), logp.grad


BACKENDS = [pytest.param("torch", id="torch"), pytest.param("triton", id="triton", marks=pytest.mark.interpret)]
CASES = [
    pytest.param(dict(clip=(0.2, 0.28), kl_coef=0.0, with_ref=False), id="no-ref"),
    pytest.param(dict(clip=(0.2, 0.28), kl_coef=0.05, with_ref=True), id="kl0.05"),
    pytest.param(dict(clip=(0.1, 0.5), kl_coef=1.0, with_ref=True), id="clip0.1-0.5-kl1"),
    pytest.param(dict(clip=None, kl_coef=0.0, with_ref=False), id="no-clip"),
    pytest.param(dict(clip=None, kl_coef=0.05, with_ref=True), id="no-clip-kl0.05"),
]


@pytest.mark.parametrize("backend", BACKENDS + ["reference"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("normalizer", NORMALIZERS)
def test_matches_per_token_loop(backend, case, normalizer, triton_device):
    case = dict(case)
    b = make_batch(700, 9, with_ref=case.pop("with_ref"))
    constant = 333.0 if normalizer == "constant" else None
    want, want_stats = naive_loss(b, normalizer=normalizer, constant=constant, **case)
    if backend == "triton":
        b = {k: None if v is None else v.to(triton_device) for k, v in b.items()}
    loss, _, stats = run(b, backend=backend, normalizer=normalizer, constant=constant, **case)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert abs(loss.item() - want) <= 1e-5 * max(1.0, abs(want))
    for f in STAT_FIELDS:
        got = getattr(stats, f)
        assert got.dtype == torch.float32 and got.dim() == 0, f
        assert abs(got.item() - want_stats[f]) <= 1e-5, f


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("normalizer", NORMALIZERS)
@pytest.mark.parametrize("with_ref", [False, True], ids=["no-ref", "ref"])
def test_gradient_matches_autograd_of_reference(backend, normalizer, with_ref, triton_device):
    b = make_batch(1500, 13, with_ref=with_ref, seed=1)
    grad_out = float(torch.randn(()))  # a random upstream gradient, not 1
    kw = dict(clip=(0.2, 0.28), kl_coef=0.1, normalizer=normalizer, total_tokens=2000)
    loss64, grad64 = run_reference(b, torch.float64, grad_out, **kw)
    loss32, grad32 = run_reference(b, torch.float32, grad_out, **kw)
    dev = {k: None if v is None else v.to(triton_device) for k, v in b.items()} if backend == "triton" else b
    loss, grad, _ = run(dev, backend=backend, grad_out=grad_out, **kw)
    assert_within_tolerance(loss.cpu(), loss64, loss32, floor=1e-7, name="loss")
    assert_within_tolerance(grad.cpu(), grad64, grad32, floor=1e-9, name="grad")


@pytest.mark.parametrize("backend", BACKENDS)
def test_unclipped_gradient_matches_autograd_of_reference(backend, triton_device):
    """clip=None: the plain importance-weighted gradient -coef * ratio * A, also where a clip would
    have cut it (ratios spread far past 1 +- 0.3 here)."""
    b = make_batch(1100, 7, with_ref=True, seed=4)
    grad_out = float(torch.randn(()))
    kw = dict(clip=None, kl_coef=0.1, normalizer="constant", constant=1.0)
    loss64, grad64 = run_reference(b, torch.float64, grad_out, **kw)
    loss32, grad32 = run_reference(b, torch.float32, grad_out, **kw)
    dev = {k: None if v is None else v.to(triton_device) for k, v in b.items()} if backend == "triton" else b
    loss, grad, stats = run(dev, backend=backend, grad_out=grad_out, **kw)
    # a token sum (constant 1) of ~1e3 terms: the fused path's chunked float32 sum rounds in another
    # order than the reference's, a few float32 eps of the sum
    floor = 4 * torch.finfo(torch.float32).eps * loss64.abs().item()
    assert_within_tolerance(loss.cpu(), loss64, loss32, floor=floor, name="loss")
    assert_within_tolerance(grad.cpu(), grad64, grad32, floor=1e-9, name="grad")
    assert stats.clip_frac_low.item() == stats.clip_frac_high.item() == 0.0
    clipped = run(dev, backend=backend, grad_out=grad_out, **{**kw, "clip": (0.2, 0.28)})
    assert clipped[2].clip_frac_low.item() + clipped[2].clip_frac_high.item() > 0  # a clip would bite here


@pytest.mark.interpret
@pytest.mark.parametrize("rows", [0, 1, 1023, 1025, 2500], ids=lambda r: f"R{r}")
def test_triton_equals_torch(rows, triton_device):
    b = make_batch(rows, 6, seed=rows)
    torch_out = run(b, backend="torch", grad_out=0.7, kl_coef=0.2)
    dev = {k: None if v is None else v.to(triton_device) for k, v in b.items()}
    loss, grad, stats = run(dev, backend="triton", grad_out=0.7, kl_coef=0.2)
    torch.testing.assert_close(loss.cpu(), torch_out[0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad.cpu(), torch_out[1], rtol=1e-5, atol=1e-9)
    for f in STAT_FIELDS:
        torch.testing.assert_close(getattr(stats, f).cpu(), getattr(torch_out[2], f), rtol=1e-5, atol=1e-7)


@pytest.mark.interpret
def test_triton_is_deterministic(triton_device):
    b = {k: None if v is None else v.to(triton_device) for k, v in make_batch(3000, 7, seed=3).items()}
    first, again = run(b, backend="triton", kl_coef=0.1), run(b, backend="triton", kl_coef=0.1)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def test_only_logp_gets_a_gradient():
    b = make_batch(50, 4)
    old = b["old_logp"].clone().requires_grad_()
    adv = b["seq_adv"].clone().requires_grad_()
    logp = b["logp"].clone().requires_grad_()
    loss, _ = spiral_fast.policy_loss(logp, old, b["token_seq"], adv, b["seq_weight"], ref_logp=b["ref_logp"])
    loss.backward()
    assert logp.grad is not None and old.grad is None and adv.grad is None


def test_int32_token_seq_and_bf16_old_logp():
    b = make_batch(200, 5, seed=2)
    b["old_logp"] = b["old_logp"].bfloat16()
    want = run(b, backend="torch")
    got = run({**b, "token_seq": b["token_seq"].int()}, backend="torch")
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_global_counts_may_be_tensors():
    # counts all-reduced across ranks arrive as tensors
    b = make_batch(100, 4, seed=4)
    as_int = run(b, backend="torch", total_tokens=250)
    as_tensor = run(b, backend="torch", total_tokens=torch.tensor(250))
    assert torch.equal(as_int[0], as_tensor[0]) and torch.equal(as_int[1], as_tensor[1])


@pytest.mark.gpu
@pytest.mark.parametrize("normalizer", NORMALIZERS)
def test_gpu_triton_equals_torch(normalizer):
    b = {k: None if v is None else v.cuda() for k, v in make_batch(1 << 20, 4096, seed=5).items()}
    want = run(b, backend="torch", normalizer=normalizer, kl_coef=0.1, grad_out=1.3)
    got = run(b, backend="triton", normalizer=normalizer, kl_coef=0.1, grad_out=1.3)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-12)
    for f in STAT_FIELDS:
        torch.testing.assert_close(getattr(got[2], f), getattr(want[2], f), rtol=1e-5, atol=1e-7)
