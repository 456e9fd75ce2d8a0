"""token_logprobs / logprobs_from_logits, torch backend: against the float64 reference (docs/testing.md's
tolerance rule), gradcheck, adversarial rows, ignored rows, odd shapes and input validation.

Shapes: N tokens (any leading dims), H hidden, V vocab. Chunk sizes are shrunk by a fixture so that
the small test shapes cross token and vocabulary chunk boundaries.
"""

from __future__ import annotations

import pytest
import torch
from helpers import assert_rows_within_tolerance, assert_within_tolerance, names

import spiral_fast as sf
from spiral_fast.ops.logprobs import chunked
from spiral_fast.ops.logprobs.reference import logprobs_from_logits_reference, token_logprobs_reference


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Force several token chunks and vocabulary chunks even at test sizes."""
    monkeypatch.setattr(chunked, "TOKEN_CHUNK", 16)
    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", 16 * 700)
    monkeypatch.setattr(chunked, "MIN_VOCAB_CHUNK", 64)


# --------------------------------------------------------------------------- shared machinery
def make_linear_inputs(lead, h, v, dtype, *, bias=True, scale=1.0, device="cpu", ignore_every=5):
    """Random hidden [*lead, H], weight [V, H], bias [V], targets [*lead] with some ignored rows."""
    hidden = torch.randn(*lead, h, device=device)
    weight = torch.randn(v, h, device=device) * (scale / h**0.5)
    b = torch.randn(v, device=device) if bias else None
    targets = torch.randint(0, v, lead, device=device)
    if ignore_every:
        targets.view(-1)[1::ignore_every] = -100
    return hidden.to(dtype), weight.to(dtype), None if b is None else b.to(dtype), targets


def upstream_grads(lead, device="cpu"):
    """Random per-token upstream gradients on logp and entropy; with more than one token the first
    gets zero on both (a lone token keeps its gradient: zero there would check nothing)."""
    gl = torch.randn(lead, device=device)
    ge = torch.randn(lead, device=device)
    if gl.numel() > 1:
        gl.view(-1)[0] = 0.0
        ge.view(-1)[0] = 0.0
    return gl, ge


def _leaves(tensors, dtype=None):
    return [None if t is None else t.detach().to(dtype or t.dtype).requires_grad_() for t in tensors]


def _outputs_and_grads(fn, leaves, gl, ge):
    logp, ent = fn(*leaves)
    loss = (logp * gl.to(logp.dtype)).sum() + (ent * ge.to(ent.dtype)).sum()
    grads = torch.autograd.grad(loss, [t for t in leaves if t is not None])
    return [logp, ent, *grads]


def check_linear(
    hidden, weight, bias, targets, *, backend, temperature=1.0, gl=None, ge=None, mult=2.0, floor=1e-6, row_floor=1e-4
):
    """Fast path vs float64 truth vs reference in the input dtype: logp, entropy, dH, dW, db.

    logp and entropy: docs/testing.md's rule with the absolute ``floor``. Gradients: the rule on each row's
    own scale (dW rows span ~1e-9 to ~30) with the relative ``row_floor``, so a wrong small row cannot
    hide under an absolute floor (a row summing terms of both signs keeps ~1e-5 relative digits in
    float32, hence 1e-4).
    """
    lead = targets.shape
    if gl is None:
        gl, ge = upstream_grads(lead, hidden.device)
    names = ["logp", "entropy", "d_hidden", "d_weight", "d_bias"][: 2 + 2 + (bias is not None)]

    def fast(h, w, b):
        return sf.token_logprobs(h, w, targets, temperature=temperature, bias=b, return_entropy=True, backend=backend)

    def ref(dtype):
        return lambda h, w, b: token_logprobs_reference(
            h, w, targets, temperature=temperature, bias=b, return_entropy=True, dtype=dtype
        )

    out = _outputs_and_grads(fast, _leaves([hidden, weight, bias]), gl, ge)
    truth = _outputs_and_grads(ref(torch.float64), _leaves([hidden, weight, bias], torch.float64), gl, ge)
    lowp = _outputs_and_grads(ref(hidden.dtype), _leaves([hidden, weight, bias]), gl, ge)
    assert out[0].dtype == torch.float32 and out[1].dtype == torch.float32
    assert out[2].dtype == hidden.dtype and out[3].dtype == weight.dtype
    for name, o, t, l in zip(names, out, truth, lowp):
        assert o.shape == t.shape, name
        if name in ("logp", "entropy"):
            assert_within_tolerance(o.cpu(), t.cpu(), l.cpu(), mult=mult, floor=floor, name=name)
        else:
            assert_rows_within_tolerance(o.cpu(), t.cpu(), l.cpu(), mult=mult, floor=row_floor, name=name)
    return out


def check_from_logits(logits, targets, *, backend, temperature=1.0, mult=2.0, floor=1e-6, row_floor=1e-4):
    gl, ge = upstream_grads(targets.shape, logits.device)

    def fast(z):
        return sf.logprobs_from_logits(z, targets, temperature=temperature, return_entropy=True, backend=backend)

    def ref(dtype):
        return lambda z: logprobs_from_logits_reference(
            z, targets, temperature=temperature, return_entropy=True, dtype=dtype
        )

    out = _outputs_and_grads(fast, _leaves([logits]), gl, ge)
    truth = _outputs_and_grads(ref(torch.float64), _leaves([logits], torch.float64), gl, ge)
    lowp = _outputs_and_grads(ref(logits.dtype), _leaves([logits]), gl, ge)
    assert out[2].dtype == logits.dtype
    for name, o, t, l in zip(["logp", "entropy", "d_logits"], out, truth, lowp):
        if name in ("logp", "entropy"):
            assert_within_tolerance(o.cpu(), t.cpu(), l.cpu(), mult=mult, floor=floor, name=name)
        else:
            assert_rows_within_tolerance(o.cpu(), t.cpu(), l.cpu(), mult=mult, floor=row_floor, name=name)
    return out


# --------------------------------------------------------------------------- accuracy
LINEAR_CASES = [
    # (lead, H, V, dtype, temperature, bias, scale)
    ((37,), 64, 300, torch.float32, 1.0, True, 4.0),
    ((40,), 123, 5003, torch.float32, 1.0, False, 4.0),
    ((33,), 123, 5003, torch.float32, 0.3, True, 4.0),
    ((33,), 48, 1000, torch.float32, 3.0, True, 4.0),
    ((2, 3, 7), 32, 257, torch.float32, 1.0, True, 2.0),
    ((1,), 16, 100, torch.float32, 1.0, True, 2.0),
    ((33,), 64, 1000, torch.bfloat16, 1.0, True, 4.0),
    ((33,), 64, 1000, torch.float16, 0.3, True, 4.0),
]


@pytest.mark.parametrize(
    "lead,h,v,dtype,temperature,bias,scale",
    [
        pytest.param(
            *c,
            id="N{}-H{}-V{}-{}-T{}{}".format(
                "x".join(map(str, c[0])), c[1], c[2], str(c[3])[6:], c[4], "-bias" if c[5] else ""
            ),
        )
        for c in LINEAR_CASES
    ],
)
def test_token_logprobs_matches_reference(lead, h, v, dtype, temperature, bias, scale):
    hidden, weight, b, targets = make_linear_inputs(lead, h, v, dtype, bias=bias, scale=scale)
    check_linear(hidden, weight, b, targets, backend="torch", temperature=temperature, floor=1e-5)


@pytest.mark.parametrize(
    "n,v,dtype,temperature",
    [
        pytest.param(37, 5003, torch.float32, 1.0, id="N37-V5003-float32-T1"),
        pytest.param(20, 300, torch.float32, 0.3, id="N20-V300-float32-T0.3"),
        pytest.param(20, 300, torch.bfloat16, 3.0, id="N20-V300-bfloat16-T3"),
        pytest.param(1, 50, torch.float16, 1.0, id="N1-V50-float16-T1"),
    ],
)
def test_logprobs_from_logits_matches_reference(n, v, dtype, temperature):
    logits = (torch.randn(n, v) * 4).to(dtype)
    targets = torch.randint(0, v, (n,))
    targets[1::4] = -100
    check_from_logits(logits, targets, backend="torch", temperature=temperature, floor=1e-5)


def test_gradcheck_token_logprobs_float64():
    hidden, weight, bias, targets = make_linear_inputs((9,), 7, 150, torch.float64, scale=3.0, ignore_every=4)
    gl, ge = upstream_grads((9,))

    def f(h, w, b):
        logp, ent = sf.token_logprobs(h, w, targets, temperature=0.7, bias=b, return_entropy=True, backend="torch")
        return logp * gl.double(), ent * ge.double()

    assert torch.autograd.gradcheck(f, _leaves([hidden, weight, bias]))


def test_gradcheck_logprobs_from_logits_float64():
    logits = torch.randn(6, 150, dtype=torch.float64) * 3
    targets = torch.tensor([3, -100, 149, 0, 77, 5])

    def f(z):
        return sf.logprobs_from_logits(z, targets, temperature=1.7, return_entropy=True, backend="torch")

    assert torch.autograd.gradcheck(f, _leaves([logits]))


# --------------------------------------------------------------------------- adversarial rows
def test_all_negative_logits():
    """Every logit far below zero: a running max that started at 0 would give log(0)."""
    hidden, weight, _, targets = make_linear_inputs((20,), 32, 400, torch.float32)
    bias = torch.full((400,), -3000.0) + torch.randn(400)
    out = check_linear(hidden, weight, bias, targets, backend="torch", floor=1e-4)
    assert all(torch.isfinite(o).all() for o in out)


def test_peaked_rows():
    """One logit dominates by ~80: p is 1 to float precision for it and ~e^-80 elsewhere."""
    hidden, weight, bias, targets = make_linear_inputs((24,), 32, 400, torch.float32, ignore_every=0)
    bias = bias.clone()
    bias[targets[::2]] += 80.0
    out = check_linear(hidden, weight, bias, targets, backend="torch", floor=1e-5)
    assert all(torch.isfinite(o).all() for o in out)


def test_masked_vocabulary_minus_inf():
    """-inf logits (a masked vocabulary, incl. a whole first chunk): weight 0, no nan anywhere."""
    logits = torch.randn(18, 700) * 3
    logits[:, :100] = float("-inf")
    logits[::3, 250:400] = float("-inf")
    targets = torch.randint(400, 700, (18,))
    out = check_from_logits(logits, targets, backend="torch", floor=1e-5)
    assert all(torch.isfinite(o).all() for o in out)
    hidden, weight, _, targets = make_linear_inputs((18,), 16, 300, torch.float32)
    bias = torch.randn(300)
    bias[:130] = float("-inf")
    targets[targets >= 0] = 200
    logp, ent = sf.token_logprobs(hidden, weight, targets, bias=bias, return_entropy=True, backend="torch")
    ref = token_logprobs_reference(hidden.double(), weight.double(), targets, bias=bias.double(), return_entropy=True)
    torch.testing.assert_close(logp.double(), ref[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent.double(), ref[1], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- ignored rows, edges
def test_all_rows_ignored_give_zeros_and_no_gradient():
    hidden, weight, bias, targets = make_linear_inputs((12,), 16, 200, torch.float32)
    targets.fill_(-1)
    leaves = _leaves([hidden, weight, bias])
    logp, ent = sf.token_logprobs(
        *leaves[:2], targets, bias=leaves[2], ignore_index=-1, return_entropy=True, backend="torch"
    )
    assert torch.equal(logp, torch.zeros(12)) and torch.equal(ent, torch.zeros(12))
    gl, ge = upstream_grads((12,))
    grads = torch.autograd.grad((logp * gl).sum() + (ent * ge).sum(), leaves)
    assert all(torch.count_nonzero(g) == 0 for g in grads)


def test_first_token_zero_upstream_gradient_gives_zero_hidden_gradient():
    hidden, weight, bias, targets = make_linear_inputs((10,), 16, 200, torch.float32, ignore_every=0)
    gl, ge = upstream_grads((10,))
    out = check_linear(hidden, weight, bias, targets, backend="torch", gl=gl, ge=ge, floor=1e-5)
    d_hidden = out[2]
    assert torch.count_nonzero(d_hidden[0]) == 0 and torch.count_nonzero(d_hidden[1:]) > 0


def test_empty_input():
    hidden, weight, bias, targets = make_linear_inputs((0,), 16, 50, torch.float32)
    leaves = _leaves([hidden, weight, bias])
    logp, ent = sf.token_logprobs(*leaves[:2], targets, bias=leaves[2], return_entropy=True, backend="torch")
    assert logp.shape == (0,) and ent.shape == (0,)
    grads = torch.autograd.grad(logp.sum() + ent.sum(), leaves)
    assert [tuple(g.shape) for g in grads] == [(0, 16), (50, 16), (50,)]


def test_entropy_only_and_logp_only_gradients():
    """Upstream gradient on just one output (the other's grad arrives as None)."""
    hidden, weight, bias, targets = make_linear_inputs((15,), 16, 200, torch.float64)
    gl, ge = upstream_grads((15,))
    leaves = _leaves([hidden, weight, bias])
    _, ent = sf.token_logprobs(*leaves[:2], targets, bias=leaves[2], return_entropy=True, backend="torch")
    got = torch.autograd.grad((ent * ge).sum(), leaves)
    ref_leaves = _leaves([hidden, weight, bias])
    _, ref_ent = token_logprobs_reference(*ref_leaves[:2], targets, bias=ref_leaves[2], return_entropy=True)
    want = torch.autograd.grad((ref_ent * ge).sum(), ref_leaves)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    logp = sf.token_logprobs(*leaves[:2], targets, bias=leaves[2], backend="torch")
    ref_logp = token_logprobs_reference(*ref_leaves[:2], targets, bias=ref_leaves[2])
    for g, w in zip(
        torch.autograd.grad((logp * gl).sum(), leaves), torch.autograd.grad((ref_logp * gl).sum(), ref_leaves)
    ):
        torch.testing.assert_close(g, w)


def test_inputs_not_modified_in_place():
    hidden, weight, bias, targets = make_linear_inputs((9,), 16, 100, torch.float32)
    logits = torch.randn(9, 100)
    before = [t.clone() for t in (hidden, weight, bias, targets, logits)]
    sf.token_logprobs(hidden, weight, targets, bias=bias, temperature=0.5, return_entropy=True, backend="torch")
    sf.logprobs_from_logits(logits, targets, temperature=0.5, return_entropy=True, backend="torch")
    for b, a in zip(before, (hidden, weight, bias, targets, logits)):
        assert torch.equal(a, b)


def test_auto_backend_on_cpu_is_torch_path():
    hidden, weight, bias, targets = make_linear_inputs((9,), 16, 100, torch.float32)
    auto = sf.token_logprobs(hidden, weight, targets, bias=bias)
    torch_path = sf.token_logprobs(hidden, weight, targets, bias=bias, backend="torch")
    assert torch.equal(auto, torch_path)


# --------------------------------------------------------------------------- validation
def _bad_linear_calls():
    h = torch.randn(4, 8)
    w = torch.randn(20, 8)
    t = torch.tensor([0, 5, -100, 19])
    return [
        ("hidden", lambda: sf.token_logprobs(h.long(), w, t)),
        ("weight", lambda: sf.token_logprobs(h, torch.randn(20, 9), t)),
        ("weight", lambda: sf.token_logprobs(h, w.double(), t)),
        ("weight", lambda: sf.token_logprobs(h, torch.randn(20, 8, device="meta"), t)),
        ("bias", lambda: sf.token_logprobs(h, w, t, bias=torch.randn(19))),
        ("bias", lambda: sf.token_logprobs(h, w, t, bias=torch.randn(20).half())),
        ("targets", lambda: sf.token_logprobs(h, w, t[:3])),
        ("targets", lambda: sf.token_logprobs(h, w, t.int())),
        ("targets", lambda: sf.token_logprobs(h, w, torch.tensor([0, 20, 1, 2]))),
        ("targets", lambda: sf.token_logprobs(h, w, torch.tensor([0, -1, 1, 2]))),
        ("temperature", lambda: sf.token_logprobs(h, w, t, temperature=0.0)),
        ("temperature", lambda: sf.token_logprobs(h, w, t, temperature=-1.0)),
        ("temperature", lambda: sf.token_logprobs(h, w, t, temperature=float("nan"))),
        ("ignore_index", lambda: sf.token_logprobs(h, w, t, ignore_index=1.5)),
        ("backend", lambda: sf.token_logprobs(h, w, t, backend="cuda")),
        ("backend", lambda: sf.token_logprobs(h, w, t, backend=None)),
        ("logits", lambda: sf.logprobs_from_logits(torch.randn(4, 20).long(), t)),
        ("targets", lambda: sf.logprobs_from_logits(torch.randn(4, 20), torch.tensor([0, 20, 1, 2]))),
        ("targets", lambda: sf.logprobs_from_logits(torch.randn(3, 20), t)),
        ("temperature", lambda: sf.logprobs_from_logits(torch.randn(4, 20), t, temperature=-2)),
        ("backend", lambda: sf.logprobs_from_logits(torch.randn(4, 20), t, backend="bogus")),
    ]


@pytest.mark.parametrize(
    "index", range(len(_bad_linear_calls())), ids=[f"{i}-{name}" for i, (name, _) in enumerate(_bad_linear_calls())]
)
def test_bad_input_raises_value_error_naming_argument(index):
    name, call = _bad_linear_calls()[index]
    with pytest.raises(ValueError, match=names(name)):
        call()
