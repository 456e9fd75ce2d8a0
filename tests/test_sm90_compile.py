"""Every Triton kernel, in every launch config its launcher can choose and every input dtype (bf16,
fp16, fp32 with TF32 on and off), compiles for sm_90 (H100/H200) within its shared memory and
registers, without a GPU: ``spiral_fast.kernels.compile_check`` drives the real launchers against a
stand-in sm_90 target and compiles with the ptxas shipped in the Triton wheel.

It runs in a subprocess because the kernels must be imported without TRITON_INTERPRET (which the
test session sets). Cold, it compiles 43 kernels (2-4 minutes on a loaded 2-core machine, hence
also ``slow``); Triton's own on-disk cache (outside the repository) makes reruns take ~20-40 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# ptxas's spill stores per thread that a config may keep: 16 values that stay in L1. Today's worst is
# 24 B (the D = 256 bf16/fp16 dK/dV; the IEEE fp32 log-prob backward 20 B); every bf16 config with D <= 128
# spills nothing.
SPILL_ALLOWANCE_BYTES = 64


def _ptxas_missing() -> str | None:
    try:
        from spiral_fast.kernels.compile_check import ptxas_path
    except ImportError as exc:  # triton itself is missing
        return f"triton is not installed ({exc})"
    return None if ptxas_path() else "the Triton wheel ships no ptxas for sm_90"


@pytest.fixture(scope="module")
def sm90_rows():
    reason = _ptxas_missing()
    if reason:
        pytest.skip(reason)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run(
        [sys.executable, "-m", "spiral_fast.kernels.compile_check", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.sm90_compile
@pytest.mark.slow
def test_every_kernel_config_and_dtype_fits_sm90(sm90_rows):
    from spiral_fast.kernels.compile_check import SM90_REGISTER_LIMIT, SM90_SHARED_LIMIT

    kernels = {r["kernel"] for r in sm90_rows}
    assert {
        "_token_logprobs_fwd_kernel",
        "_token_logprobs_bwd_kernel",
        "_logits_logprobs_fwd_kernel",
        "_logits_logprobs_bwd_kernel",
        "_tree_attention_fwd_kernel",
        "_tree_attention_bwd_dq_kernel",
        "_tree_attention_bwd_dkdv_kernel",
        "_tree_attention_delta_kernel",
        "_policy_loss_fwd_kernel",
    } <= kernels
    dtypes = {r["dtype"].split()[0] for r in sm90_rows}
    assert {"bf16", "fp16", "fp32-tf32", "fp32-ieee"} <= dtypes
    bad = []
    for r in sm90_rows:
        name = f"{r['kernel']} {r['dtype']} {r['blocks']} w{r['num_warps']} s{r['num_stages']}"
        if "error" in r:
            bad.append(f"{name}: {r['error']}")
        elif r["shared"] > SM90_SHARED_LIMIT or r["registers"] > SM90_REGISTER_LIMIT:
            bad.append(f"{name}: {r['shared']} B shared, {r['registers']} registers")
        elif r["spill_stores"] > SPILL_ALLOWANCE_BYTES:
            bad.append(f"{name}: spills {r['spill_stores']} B/thread (allowance {SPILL_ALLOWANCE_BYTES})")
    assert not bad, "kernels that would fail or spill on sm_90:\n" + "\n".join(bad)
