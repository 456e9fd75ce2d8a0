"""Compile every Triton kernel, as its launcher would launch it, for sm_90 (H100/H200) without a GPU.

``python -m spiral_fast.kernels.compile_check [--json]`` prints registers, shared memory and
spills per (kernel, dtype, launch config). It calls the real launchers on small CPU tensors with a
stand-in driver whose current target is ``GPUTarget("cuda", 90, 32)``; Triton's ``jit_cache_hook``
records each kernel the launcher asks for and stops the launch, then every recorded kernel is
compiled with ``triton.compile`` and the ptxas shipped in the Triton wheel. Shared memory comes
from the compiled kernel, registers and spills from ``ptxas -v`` on its PTX. Nothing is launched,
so a launcher's config choice, specialisation flags and dtypes are exactly those of a GPU run.

Runs in its own process: ``TRITON_INTERPRET`` must be unset before triton is imported (under the
interpreter ``@triton.jit`` makes interpreted functions, which cannot be compiled).

Limits of the H100/H200 (sm_90): 227 KB = 232,448 bytes of shared memory per block, 255
registers per thread. Spills are reported in bytes of spill stores per thread.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

from spiral_fast.kernels.tree_attention_configs import configs

SM90_SHARED_LIMIT = 232_448
SM90_REGISTER_LIMIT = 255
ARCH = 90

# Shapes of the stand-in tensors: multiples of 16 like every real model's H, V, T and strides, so
# Triton's divisibility specialisation matches a real run (Qwen2.5-7B: H=3584, V=152064, Hq=28, Hkv=4).
_N, _H, _V, _V_ROW = 256, 256, 512, 2048
_T, _HQ, _HKV = 256, 28, 4
_HEAD_DIMS = (128, 256)  # 128: the largest head of the wide-tile config; 256: the small-tile config


def ptxas_path() -> str | None:
    """The ptxas Triton uses for sm_90, or None when the wheel ships none."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        path = get_ptxas(ARCH).path
    except Exception:  # noqa: BLE001 - any failure to locate it means: no ptxas here
        return None
    return path if path and os.path.exists(path) else None


class _Sm90Driver:
    """The minimum of Triton's driver interface that ``JITFunction.run`` reads before compiling."""

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", ARCH, 32)


@contextlib.contextmanager
def _recording(requests: list, label: str):
    """Within the block, kernel launches append (label, request) to ``requests`` instead of running."""
    from triton import knobs
    from triton.runtime import driver

    def hook(*, key, repr, fn, compile, is_manual_warmup, already_compiled):
        jf = fn.jit_function
        requests.append(
            dict(
                label=label,
                module=jf.fn.__module__,
                name=jf.fn.__name__,
                signature=compile["signature"],
                constants=compile["constants"],
                attrs=compile["configs"][0],
                num_warps=compile["num_warps"],
                num_stages=compile["num_stages"],
                num_ctas=compile["num_ctas"],
                enable_fp_fusion=compile["enable_fp_fusion"],
            )
        )
        return True  # "handled": run() returns before compiling or launching

    previous_hook = knobs.runtime.jit_cache_hook
    previous_driver = driver._active  # reset_active() would build the real driver, which needs a GPU
    driver.set_active(_Sm90Driver())
    knobs.runtime.jit_cache_hook = hook
    try:
        yield
    finally:
        knobs.runtime.jit_cache_hook = previous_hook
        driver._active = previous_driver


@contextlib.contextmanager
def _tf32(enabled: bool | None):
    import torch

    if enabled is None:
        yield
        return
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    matmul.fp32_precision = "tf32" if enabled else "ieee"
    try:
        yield
    finally:
        matmul.fp32_precision = before


def _dtype_cases():
    import torch

    return [
        ("bf16", torch.bfloat16, None),
        ("fp16", torch.float16, None),
        ("fp32-tf32", torch.float32, True),
        ("fp32-ieee", torch.float32, False),
    ]


def _kernel(name: str):
    """The kernel module ``spiral_fast.kernels.<name>`` (they import triton: imported here, once
    ``TRITON_INTERPRET`` is checked unset, not at the top of this module)."""
    from spiral_fast.kernels import logprobs, policy_loss, tree_attention

    return {"logprobs": logprobs, "policy_loss": policy_loss, "tree_attention": tree_attention}[name]


def _logprob_launches(requests):
    import torch

    K = _kernel("logprobs")

    for label, dtype, tf32 in _dtype_cases():
        hidden = torch.randn(_N, _H, dtype=dtype)
        weight = torch.randn(_V, _H, dtype=dtype)
        bias = torch.randn(_V, dtype=dtype)
        targets = torch.randint(0, _V, (_N,))
        stats = [torch.zeros(_N) for _ in range(3)]
        dl, de = torch.zeros(_N), torch.zeros(_N)
        # the heaviest flags: bias, entropy and its gradient, every gradient wanted
        with _tf32(tf32), _recording(requests, label):
            K.token_logprobs_fwd(hidden, weight, bias, targets, 1.0, True)
            K.token_logprobs_bwd(hidden, weight, bias, targets, stats, dl, de, 1.0, True, True, True)
        if tf32 is False:
            continue  # no dot in the row kernels: one float32 case
        logits = torch.randn(_N, _V_ROW, dtype=dtype)
        with _recording(requests, label.split("-")[0]):
            K.logits_logprobs_fwd(logits, targets, 1.0, True)
            K.logits_logprobs_bwd(logits, targets, stats, dl, de, 1.0)


def _tree_attention_launches(requests):
    import torch

    K = _kernel("tree_attention")

    tables = [torch.zeros(8, dtype=torch.int32) for _ in range(12)]
    for label, dtype, tf32 in _dtype_cases():
        if tf32 is False:
            continue  # float32 attention always runs IEEE dots: one float32 case
        label = label.split("-")[0]
        for d in _HEAD_DIMS:
            q = torch.randn(_T, _HQ, d, dtype=dtype)
            k = torch.randn(_T, _HKV, d, dtype=dtype)
            v = torch.randn(_T, _HKV, d, dtype=dtype)
            lse = torch.zeros(_HQ, _T)
            for fwd, bwd in configs(d, dtype, interpret=False):
                with _recording(requests, f"{label} D={d}"):
                    K.tree_attention_fwd(q, k, v, *tables[:6], 0.1, **fwd)
                    K.tree_attention_bwd(q, q, k, v, q, lse, *tables, 0.1, **bwd)


def _policy_loss_launches(requests):
    import torch

    K = _kernel("policy_loss")

    rows, seqs = 4096, 64
    logp = torch.randn(rows)
    with _recording(requests, "fp32"):
        K.policy_loss_fwd(
            logp,
            logp,
            logp,
            torch.zeros(rows, dtype=torch.int64),
            torch.zeros(seqs),
            torch.zeros(seqs),
            clip_low=0.2,
            clip_high=0.28,
            kl_coef=0.1,
        )


def launch_requests() -> list[dict]:
    """Every (kernel, specialisation, launch options) the launchers ask for, over dtypes and configs."""
    requests: list[dict] = []
    _logprob_launches(requests)
    _tree_attention_launches(requests)
    _policy_loss_launches(requests)
    return requests


def _constexprs(req) -> dict:
    import importlib

    jf = _jit_function(importlib.import_module(req["module"]), req["name"])
    names = jf.arg_names
    return {names[path[0]]: value for path, value in req["constants"].items()}


def _jit_function(module, name):
    from triton.runtime.jit import JITFunction

    obj = getattr(module, name)
    while not isinstance(obj, JITFunction):  # heuristics / autotune wrappers
        obj = obj.fn
    return obj


def _compile_one(req) -> dict:
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    jf = _jit_function(importlib.import_module(req["module"]), req["name"])
    options = dict(
        num_warps=req["num_warps"],
        num_stages=req["num_stages"],
        num_ctas=req["num_ctas"],
        enable_fp_fusion=req["enable_fp_fusion"],
    )
    row = dict(
        kernel=req["name"],
        dtype=req["label"],
        num_warps=req["num_warps"],
        num_stages=req["num_stages"],
        blocks={k: v for k, v in _constexprs(req).items() if k.startswith("BLOCK")},
    )
    start = time.perf_counter()
    try:
        compiled = triton.compile(
            ASTSource(jf, req["signature"], req["constants"], req["attrs"]),
            target=GPUTarget("cuda", ARCH, 32),
            options=options,
        )
    except Exception as exc:  # noqa: BLE001 - reported per row; OutOfResources is the usual one
        row.update(error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return row
    row["shared"] = int(compiled.metadata.shared)
    row.update(_ptxas_usage(compiled.asm["ptx"]))
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row


def _ptxas_usage(ptx: str) -> dict:
    """Registers, spill store/load bytes and stack frame from ``ptxas -v`` (Triton's own flags)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        out = subprocess.run(
            [
                ptxas_path(),
                "-v",
                "--regAllocOptLevel=2",
                f"--gpu-name=sm_{ARCH}a",
                src,
                "-o",
                os.path.join(tmp, "k.cubin"),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    log = out.stderr + out.stdout
    regs = re.search(r"Used (\d+) registers", log)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    stack = re.search(r"(\d+) bytes stack frame", log)
    return dict(
        registers=int(regs.group(1)) if regs else -1,
        spill_stores=int(spill.group(1)) if spill else 0,
        spill_loads=int(spill.group(2)) if spill else 0,
        stack=int(stack.group(1)) if stack else 0,
    )


def compile_all(workers: int | None = None) -> list[dict]:
    """Compile every launch request for sm_90; one row per (kernel, dtype, config), in launch order."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("compile_check needs TRITON_INTERPRET unset (run it in its own process)")
    if ptxas_path() is None:
        raise RuntimeError("no ptxas in the Triton wheel: cannot compile for sm_90 here")
    requests, seen = [], set()
    for req in launch_requests():
        key = (req["name"], req["label"], repr(sorted(req["constants"].items())), req["num_warps"], req["num_stages"])
        if key not in seen:
            seen.add(key)
            requests.append(req)
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    if workers == 1:
        return [_compile_one(r) for r in requests]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(_compile_one, requests))


def markdown(rows: list[dict]) -> str:
    """Rows as a markdown table: kernel, dtype, config, registers, shared memory, spills."""
    lines = [
        "| kernel | dtype | blocks, warps, stages | registers | shared memory (B) | spill stores / loads (B) |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        cfg = ", ".join(f"{k[6:] or 'BLOCK'}={v}" for k, v in r["blocks"].items())
        cfg += f"; w{r['num_warps']} s{r['num_stages']}"
        if "error" in r:
            lines.append(f"| {r['kernel']} | {r['dtype']} | {cfg} | - | - | {r['error']} |")
        else:
            lines.append(
                f"| {r['kernel']} | {r['dtype']} | {cfg} | {r['registers']} | {r['shared']:,} | "
                f"{r['spill_stores']} / {r['spill_loads']} |"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    parser.add_argument("--workers", type=int, default=None, help="compile processes (default: up to 4)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    rows = compile_all(args.workers)
    if args.json:
        print(json.dumps(rows))
    else:
        print(markdown(rows))
        print(f"\n{len(rows)} kernels compiled for sm_{ARCH} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
