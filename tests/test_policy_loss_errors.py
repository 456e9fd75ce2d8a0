"""policy_loss: bad input raises ValueError naming the argument."""

from __future__ import annotations

import pytest
import torch
from helpers import names

import spiral_fast


def good() -> dict:
    return dict(
        logp=-torch.rand(6),
        old_logp=-torch.rand(6),
        token_seq=torch.tensor([0, 0, 1, 2, 2, 2]),
        seq_adv=torch.tensor([0.5, -1.0, 0.0]),
        seq_weight=torch.ones(3),
        ref_logp=None,
    )


def call(args: dict, **kw):
    return spiral_fast.policy_loss(
        args["logp"],
        args["old_logp"],
        args["token_seq"],
        args["seq_adv"],
        args["seq_weight"],
        ref_logp=args["ref_logp"],
        **kw,
    )


BAD = [
    ("token-seq-too-large", dict(token_seq=torch.tensor([0, 0, 1, 3, 2, 2])), {}, "token_seq"),
    ("token-seq-negative", dict(token_seq=torch.tensor([0, -1, 1, 2, 2, 2])), {}, "token_seq"),
    ("token-seq-float", dict(token_seq=torch.zeros(6)), {}, "token_seq"),
    ("token-seq-length", dict(token_seq=torch.tensor([0, 0, 1, 2, 2])), {}, "token_seq"),
    ("logp-bf16", dict(logp=-torch.rand(6).bfloat16()), {}, "logp"),
    ("logp-2d", dict(logp=-torch.rand(6, 1)), {}, "logp"),
    ("old-logp-length", dict(old_logp=-torch.rand(5)), {}, "old_logp"),
    ("ref-logp-length", dict(ref_logp=-torch.rand(7)), {}, "ref_logp"),
    ("seq-weight-length", dict(seq_weight=torch.ones(4)), {}, "seq_weight"),
    ("seq-adv-int", dict(seq_adv=torch.tensor([1, 0, 1])), {}, "seq_adv"),
    ("normalizer", {}, dict(normalizer="seq-mean"), "normalizer"),
    ("total-tokens-zero", {}, dict(total_tokens=0), "total_tokens"),
    ("total-tokens-negative", {}, dict(total_tokens=-5.0), "total_tokens"),
    ("total-tokens-nan", {}, dict(total_tokens=float("nan")), "total_tokens"),
    ("total-tokens-tensor-zero", {}, dict(total_tokens=torch.tensor(0)), "total_tokens"),
    ("total-sequences-zero", {}, dict(normalizer="seq-mean-token-mean", total_sequences=0), "total_sequences"),
    ("constant-negative", {}, dict(normalizer="constant", constant=-1.0), "constant"),
    (
        "seq-tokens-too-small",
        {},
        dict(normalizer="seq-mean-token-mean", seq_tokens=torch.tensor([2, 1, 2])),
        "seq_tokens",
    ),
    ("seq-tokens-length", {}, dict(normalizer="seq-mean-token-mean", seq_tokens=torch.tensor([2, 1])), "seq_tokens"),
    ("clip-not-pair", {}, dict(clip=0.2), "clip"),
    ("clip-low-too-large", {}, dict(clip=(1.0, 0.2)), "clip"),
    ("clip-high-inf", {}, dict(clip=(0.2, float("inf"))), "clip"),
    ("clip-one-none", {}, dict(clip=(0.2, None)), "clip"),
    ("clip-three", {}, dict(clip=(0.1, 0.2, 0.3)), "clip"),
    ("kl-coef-negative", {}, dict(kl_coef=-0.1), "kl_coef"),
    ("backend", {}, dict(backend="cuda"), "backend"),
]


@pytest.mark.parametrize("change,kwargs,name", [pytest.param(c, k, n, id=i) for i, c, k, n in BAD])
def test_bad_input_names_the_argument(change, kwargs, name):
    call(good())  # the unmodified arguments are valid
    with pytest.raises(ValueError, match=names(name)):
        call({**good(), **change}, **kwargs)
