"""Shared test helpers (imported by test modules as ``from helpers import ...``)."""

from __future__ import annotations

import torch


def assert_within_tolerance(out, ref64, ref_lowp, *, mult: float = 2.0, floor: float = 1e-6, name: str = "out"):
    """The accuracy rule of docs/testing.md: the fast path's error against float64 truth may be at most
    ``mult`` times plain PyTorch's own error in the op's dtype, plus ``floor``."""
    out = out.double()
    ref64 = ref64.double()
    ref_lowp = ref_lowp.double()
    err = (out - ref64).abs().max().item() if out.numel() else 0.0
    base = (ref_lowp - ref64).abs().max().item() if out.numel() else 0.0
    bound = mult * base + floor
    assert err <= bound, f"{name}: max abs error {err:.3e} > {mult} * torch error {base:.3e} + {floor:.1e}"


def assert_rows_within_tolerance(
    out, ref64, ref_lowp, *, mult: float = 2.0, floor: float = 1e-5, global_floor: float = 1e-9, name: str = "out"
):
    """The accuracy rule (docs/testing.md) on a scale that sees small entries: every row (every entry of a 1-D tensor)
    is divided by its own largest true entry, then the fast path's largest error against float64
    truth may be at most ``mult`` times plain PyTorch's largest error plus ``floor``.

    Gradients such as dW [V, H] span many orders of magnitude (a target token's row ~30, a row the
    softmax barely weighs ~1e-9): against one absolute floor the small rows could be anything.
    Rows below ``global_floor`` of the largest row are measured on that scale instead: there float32
    logits (absolute error ~1e-7 |z|) no longer fix a softmax weight's relative digits. A row that
    is 0 in truth must be exactly 0.
    """

    def rows(x):
        x = x.detach().double()
        return x.reshape(x.shape[0], -1) if x.dim() else x.reshape(1, 1)

    o, t, lo = rows(out), rows(ref64), rows(ref_lowp)
    if o.numel() == 0:
        return
    size = t.abs().amax(1)
    scale = torch.maximum(size, global_floor * size.max())
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    err = (o - t).abs().amax(1) / scale
    base = ((lo - t).abs().amax(1) / scale).max().item()
    bound = mult * base + floor
    r = int(err.argmax())
    assert err[r] <= bound, (
        f"{name}[{r}]: max error {err[r]:.3e} of the row's size {size[r]:.3e} > {mult} * torch's "
        f"{base:.3e} + {floor:.1e} ({int((err > bound).sum())} rows out of tolerance)"
    )


# Metrics decided by sampling, counting and scoring: equal tokens give equal values, so a resumed
# run must match them exactly. Every other float metric (loss, grad_norm, log-prob mismatch, ratio
# and entropy statistics) is a floating-point reduction, and floats are not bitwise equal across
# processes on a loaded CPU (measured: grad_norm 0.13600598 vs 0.13600600, logprob_mismatch_mean
# 7.9e-8 vs 9.1e-8 for identical tokens): those match within RUN_RTOL * |value| + RUN_ATOL.
EXACT_METRICS = (
    "step",
    "problems",
    "problems_sampled",
    "problems_dropped",
    "rounds",
    "trace_tokens_sampled",
    "agg_tokens_sampled",
    "reward",
    "agg_reward",
    "set_value",
    "set_value_std",
    "trace_acc",
    "reward_errors",
    "nonfinite",
    "nonfinite_steps",
    "lr",
    "micro_batches",
)
RUN_RTOL, RUN_ATOL = 1e-4, 1e-6


def assert_same_run(rows, expected, *, ignore=("seconds_rollout", "seconds_step", "seconds_sync")):
    """Two runs' metrics rows are "equal after resume": the same steps and keys; tokens, rewards and
    counts (``EXACT_METRICS``, strings, ints) exactly; other floats within RUN_RTOL / RUN_ATOL."""
    import math

    assert [r.get("step") for r in rows] == [r.get("step") for r in expected]
    for row, want in zip(rows, expected):
        keys = set(row) - set(ignore)
        assert keys == set(want) - set(ignore), (row.get("step"), keys ^ (set(want) - set(ignore)))
        for k in sorted(keys):
            a, b = row[k], want[k]
            if k in EXACT_METRICS or not isinstance(b, float) or not isinstance(a, float):
                assert a == b or (a != a and b != b), f"step {row.get('step')}: {k} = {a!r}, expected {b!r} exactly"
            elif not (math.isnan(a) and math.isnan(b)):
                assert abs(a - b) <= RUN_RTOL * abs(b) + RUN_ATOL, (
                    f"step {row.get('step')}: {k} = {a!r}, expected {b!r}"
                )


def names(argument: str) -> str:
    """A ``pytest.raises(match=...)`` pattern: the argument's name as a whole identifier (``k`` does
    not match ``packed`` or ``k_proj``, ``members`` does not match ``set_members``)."""
    import re

    return rf"(?<![\w.]){re.escape(argument)}(?!\w)"


def file_rendezvous(directory) -> str:
    """``init_method`` of a torch.distributed rendezvous through a file in ``directory`` (a test's
    tmp_path): no TCP port, so no race with another process between choosing a port and binding it
    (what ``free_port`` cannot rule out)."""
    import os

    return "file://" + os.path.join(os.path.abspath(directory), "rendezvous")


def end_rank() -> None:
    """The last call of a spawned rank whose work succeeded: a barrier (no rank tears down its gloo
    connections while a peer is still in a collective), ``destroy_process_group``, then an immediate
    exit with status 0. CI saw a rank abort once after its results were saved ("terminate called
    without an active exception", SIGABRT, 2026-12-06): a C++ thread still joinable when the
    interpreter tore down. The test's results are in files by then, so skipping that teardown hides
    nothing the test checks."""
    import os
    import sys

    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def spawn_with_free_port(fn, make_args, nprocs: int, attempts: int = 3) -> None:
    """``torch.multiprocessing.spawn(fn, args=make_args(port), nprocs=nprocs)`` on a ``free_port``,
    retried on a new port when another process took it first (for code that rendezvouses through
    MASTER_PORT, e.g. the training command's ``init_process_group()``)."""
    import torch.multiprocessing as mp

    for attempt in range(attempts):
        try:
            mp.spawn(fn, args=make_args(free_port()), nprocs=nprocs, join=True)
            return
        except mp.ProcessRaisedException as exc:
            text = str(exc).lower()
            if attempt == attempts - 1 or not ("eaddrinuse" in text or "address already in use" in text):
                raise


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (MASTER_PORT). Another process may take it
    before the rendezvous binds it: prefer ``file_rendezvous`` where the process group allows, else
    ``spawn_with_free_port``."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
