"""Time every kernel at the roofline shapes on a CUDA device; print measured next to predicted.

``python benchmarks/gpu_kernels.py [--shapes qwen,spiral] [--json PATH] [--show PATH]`` (CUDA only; run by
``gpu_check.sh bench``). Each row: one kernel or one A/B pair member, median of CUDA-event timings
after a warm-up call that also compiles; predictions come from ``roofline.py`` (written before
any GPU run). A/B pairs: Triton log-prob forward + backward vs the chunked cuBLAS (torch) path;
grouped vs ungrouped tile order of the Triton backward; two- vs one-stage tree-attention backward;
the delta kernel vs the float32 torch expression it replaced.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import roofline  # noqa: E402

ROWS: list[dict] = []


def _time(fn, reps: int) -> float:
    fn()  # warm-up: compiles, fills caches
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


def record(name: str, shape: str, fn, *, predicted=None, reps: int = 3):
    """Time ``fn``; ``predicted`` names the roofline kernel(s) it is measured against (default: name;
    a tuple: the sum of their predictions)."""
    try:
        seconds = _time(fn, reps)
    except Exception as exc:  # noqa: BLE001 - one failing kernel must not hide the other rows
        ROWS.append(dict(kernel=name, shape=shape, error=f"{type(exc).__name__}: {exc}"[:160]))
        print(f"{name} [{shape}]: {ROWS[-1]['error']}", flush=True)
        return
    row = dict(kernel=name, shape=shape, measured_ms=seconds * 1e3)
    try:
        names = predicted or name
        names = (names,) if isinstance(names, str) else names
        row["predicted_ms"] = sum(roofline.lookup(p, shape).predicted_s for p in names) * 1e3
    except KeyError:
        pass
    ROWS.append(row)
    print(f"{name} [{shape}]: {seconds * 1e3:.3f} ms", flush=True)


def logprob_rows(shape: str):
    from spiral_fast.kernels import logprobs as K
    from spiral_fast.ops.logprobs.op import token_logprobs

    n, h, v = roofline.TOKENS[shape], roofline.H, roofline.V
    g = torch.Generator(device="cuda").manual_seed(0)
    hidden = torch.randn(n, h, device="cuda", generator=g).bfloat16()
    weight = (torch.randn(v, h, device="cuda", generator=g) / h**0.5).bfloat16()
    targets = torch.randint(0, v, (n,), device="cuda", generator=g)
    dl = torch.randn(n, device="cuda", generator=g) / n
    m, log_s, _, _, _ = K.token_logprobs_fwd(hidden, weight, None, targets, 1.0, False)
    stats = (m, log_s, None)
    reps = 3 if shape == "qwen" else 1
    record(
        "logprobs fwd (triton)",
        shape,
        lambda: K.token_logprobs_fwd(hidden, weight, None, targets, 1.0, False),
        reps=reps,
    )
    bwd = lambda: K.token_logprobs_bwd(hidden, weight, None, targets, stats, dl, None, 1.0, True, True, False)  # noqa: E731
    record("logprobs bwd (triton, grouped)", shape, bwd, reps=reps)
    grouped = K._GPU_BWD
    K._GPU_BWD = dict(grouped, GROUP_N=1 << 16)  # one group of every token block: the old 2-D order
    try:
        record("logprobs bwd (triton, ungrouped)", shape, bwd, reps=reps)
    finally:
        K._GPU_BWD = grouped

    def fwd_bwd(backend):
        def run():
            hl, wl = hidden.detach().requires_grad_(), weight.detach().requires_grad_()
            logp = token_logprobs(hl, wl, targets, backend=backend)
            torch.autograd.grad(logp, (hl, wl), dl)

        return run

    record("logprobs fwd+bwd (torch chunked)", shape, fwd_bwd("torch"), reps=reps)
    # the A/B peer of the chunked path: Triton forward + (grouped) backward, against both predictions summed
    record(
        "logprobs fwd+bwd (triton)",
        shape,
        fwd_bwd("triton"),
        predicted=("logprobs fwd (triton)", "logprobs bwd (triton, grouped)"),
        reps=reps,
    )
    if shape == "qwen":
        rank = min(64, h)  # a low-rank product: realistic logit spread without an [N, V] GEMM at H
        logits = (hidden[:, :rank].float() @ torch.randn(rank, v, device="cuda", generator=g)).bfloat16()
        record("logits logprobs fwd", shape, lambda: K.logits_logprobs_fwd(logits, targets, 1.0, False))
        record("logits logprobs bwd", shape, lambda: K.logits_logprobs_bwd(logits, targets, stats, dl, None, 1.0))


def _attention_batch(shape: str):
    import spiral_fast

    if shape == "qwen":
        g = torch.Generator().manual_seed(0)
        return spiral_fast.pack_sequences([torch.randint(0, 32000, (4096,), generator=g) for _ in range(4)])
    from bench_packing import spiral_sequences
    from presets import SPIRAL

    return spiral_fast.pack_sequences(
        spiral_sequences(dataclasses.replace(SPIRAL["layout-issue"], problems=1), vocab=32000)
    )


def attention_rows(shape: str):
    from spiral_fast.kernels import tree_attention as K
    from spiral_fast.ops.tree_attention.backend_triton import _table_args, configs
    from spiral_fast.ops.tree_attention.layout import block_tables

    packed = _attention_batch(shape).to("cuda")
    t, hq, hkv, d = packed.num_tokens, roofline.HQ, roofline.HKV, roofline.D
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(t, hq, d, device="cuda", generator=g).bfloat16()
    k, v = (torch.randn(t, hkv, d, device="cuda", generator=g).bfloat16() for _ in range(2))
    do = torch.randn(t, hq, d, device="cuda", generator=g).bfloat16()
    scale = d**-0.5
    choices = configs(d, torch.bfloat16, interpret=False)
    fwd_cfg = choices[0][0]
    fwd_tables = _table_args(block_tables(packed, fwd_cfg["block_m"], fwd_cfg["block_n"]), False)
    o, lse = K.tree_attention_fwd(q, k, v, *fwd_tables, scale, **fwd_cfg)
    record("tree-attn fwd", shape, lambda: K.tree_attention_fwd(q, k, v, *fwd_tables, scale, **fwd_cfg))
    for _, bwd_cfg in choices:
        tables = _table_args(block_tables(packed, bwd_cfg["block_m"], bwd_cfg["block_n"]), True)
        record(
            f"tree-attn bwd (dq + dkdv), {bwd_cfg['num_stages']} stages",
            shape,
            lambda: K.tree_attention_bwd(do, q, k, v, o, lse, *tables, scale, **bwd_cfg),
            predicted="tree-attn bwd (dq + dkdv)",
        )
    record("tree-attn delta = rowsum(dO*O)", shape, lambda: K._delta(o, do), reps=10)
    record(
        "tree-attn delta, torch fp32 (replaced)",
        shape,
        lambda: (do.float() * o.float()).sum(-1).transpose(0, 1).contiguous(),
        predicted="tree-attn delta = rowsum(dO*O)",
        reps=10,
    )


def policy_rows():
    from spiral_fast.kernels.policy_loss import policy_loss_fwd

    rows, seqs = 1 << 24, 65536
    g = torch.Generator(device="cuda").manual_seed(0)
    logp = torch.randn(rows, device="cuda", generator=g) - 1
    old, ref = logp + 0.1, logp - 0.1
    token_seq = torch.randint(0, seqs, (rows,), device="cuda", generator=g)
    adv, coef = torch.randn(seqs, device="cuda", generator=g), torch.rand(seqs, device="cuda", generator=g)
    record(
        "policy loss (16M rows)",
        "16M",
        lambda: policy_loss_fwd(logp, old, ref, token_seq, adv, coef, clip_low=0.2, clip_high=0.28, kl_coef=0.1),
        reps=10,
    )


def markdown(rows) -> str:
    lines = [
        "| kernel / A-B member | shape | measured (ms) | predicted (ms) | measured / predicted |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['kernel']} | {r['shape']} | {r['error']} | | |")
            continue
        pred = r.get("predicted_ms")
        ratio = f"{r['measured_ms'] / pred:.2f}" if pred else ""
        lines.append(
            f"| {r['kernel']} | {r['shape']} | {r['measured_ms']:.3f} | "
            f"{'' if pred is None else f'{pred:.3f}'} | {ratio} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="qwen,spiral", help="comma-separated roofline shapes")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--show", default=None, help="print the table of a JSON file written earlier, and exit")
    args = parser.parse_args(argv)
    if args.show:
        path = Path(args.show)
        print(markdown(json.loads(path.read_text())) if path.exists() else f"no kernel timings in {path}")
        return 0
    if not torch.cuda.is_available():
        print("gpu_kernels.py needs a CUDA device")
        return 1
    start = time.perf_counter()
    for shape in args.shapes.split(","):
        for part in (logprob_rows, attention_rows):
            try:
                part(shape)
            except Exception as exc:  # noqa: BLE001 - keep the other shapes' rows
                ROWS.append(dict(kernel=part.__name__, shape=shape, error=f"{type(exc).__name__}: {exc}"[:160]))
            torch.cuda.empty_cache()
    policy_rows()
    if args.json:
        Path(args.json).write_text(json.dumps(ROWS, indent=1))
    print(
        f"\n== kernels: measured vs roofline prediction ({torch.cuda.get_device_name()}, "
        f"{time.perf_counter() - start:.0f} s) =="
    )
    print(markdown(ROWS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
