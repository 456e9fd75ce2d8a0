"""VLLMSampler weight sync: seconds and bytes per sync, and LoRA merged weights vs a vLLM LoRA adapter.

Run as a script (each model needs its own engine, ~20-40 s to start on a CPU):

    python benchmarks/bench_vllm_sync.py [--models tiny,qwen2-100m] [--lora]
    python benchmarks/bench_vllm_sync.py --logprobs     # vLLM behaviour log-probs vs batch_logprobs

Per model: the median of 3 syncs of the full model (``sampler.sync(model)``: state dict -> engine
``reload_weights`` -> prefix-cache reset). With ``--lora`` (rank-32 LoRA on every linear layer of
the largest model), the two ways to get a trained LoRA into vLLM, side by side:
- merged: ``sampler.sync(peft_model)`` (W + BA computed out of place, every weight pushed);
- adapter: save the adapter (``peft_model.save_pretrained``) and sample with a fresh
  ``LoRARequest`` on an engine built with ``enable_lora=True`` (what vLLM offers for adapters);
and the sampling time of one fixed workload in each engine (LoRA kernels run on every token).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

# Qwen2-style shapes (head size >= 32: vLLM's CPU attention has no smaller one)
MODELS = {
    "tiny": dict(vocab_size=50, hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1),
    # ~100M parameters: embeddings 32000 x 768 (tied) + 12 layers of 6.3M
    "qwen2-100m": dict(
        vocab_size=32000, hidden_size=768, num_layers=12, num_heads=12, num_kv_heads=4, max_positions=512
    ),
}
WORKLOAD = dict(prompts=16, prompt_tokens=64, samples=4, new_tokens=32)


def build(name: str, seed: int = 0):
    from spiral_fast.recipe.tiny_model import tiny_qwen2

    kw = dict(MODELS[name])
    vocab = kw.pop("vocab_size")
    model = tiny_qwen2(vocab, seed=seed, **kw)
    if name != "tiny":  # tiny_qwen2's intermediate size is 2 * hidden; a real MLP is ~2.7x wider
        model.config.intermediate_size = 2048
        model = type(model)(model.config)
    return model


def sync_cost(sampler, model, repeats: int = 3) -> dict:
    runs = [sampler.sync(model) for _ in range(repeats)]
    return {"seconds": statistics.median(r["seconds"] for r in runs), "bytes": runs[0]["bytes"]}


def sample_seconds(sampler, vocab: int, lora_request=None) -> float:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    gen = torch.Generator().manual_seed(0)
    prompts = [
        TokensPrompt(prompt_token_ids=torch.randint(0, vocab, (WORKLOAD["prompt_tokens"],), generator=gen).tolist())
        for _ in range(WORKLOAD["prompts"])
    ]
    params = SamplingParams(
        n=WORKLOAD["samples"], temperature=1.0, max_tokens=WORKLOAD["new_tokens"], ignore_eos=True, logprobs=0
    )
    sampler.llm.reset_prefix_cache()
    start = time.perf_counter()
    sampler.llm.generate(prompts, params, use_tqdm=False, lora_request=lora_request)
    return time.perf_counter() - start


def lora_model(name: str):
    import peft

    torch.manual_seed(1)
    return peft.get_peft_model(
        build(name), peft.LoraConfig(r=32, lora_alpha=64, target_modules="all-linear", init_lora_weights=False)
    )


def main() -> None:
    import spiral_fast

    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="tiny,qwen2-100m")
    parser.add_argument("--lora", action="store_true")
    parser.add_argument("--logprobs", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.logprobs:
        logprob_error()
        return
    names = args.models.split(",")
    for name in names:
        model = build(name)
        params = sum(p.numel() for p in model.parameters())
        with spiral_fast.VLLMSampler(model, dtype="float32", kv_cache_memory_bytes=256 << 20) as sampler:
            cost = sync_cost(sampler, model)
            print(
                f"{name}: {params / 1e6:.1f}M params, full sync {cost['seconds']:.3f} s, "
                f"{cost['bytes'] / 2**20:.1f} MiB pushed"
            )
            if args.lora and name == names[-1]:
                peft_model = lora_model(name)
                merged = sync_cost(sampler, peft_model)
                base_s = sample_seconds(sampler, model.config.vocab_size)
                print(
                    f"{name} LoRA r=32 merged: sync {merged['seconds']:.3f} s, {merged['bytes'] / 2**20:.1f} MiB; "
                    f"workload {WORKLOAD} sampled in {base_s:.2f} s"
                )
    if args.lora:
        adapter_cost(names[-1])


def adapter_cost(name: str) -> None:
    """The same LoRA as a vLLM adapter: per sync, save it and sample with a new LoRARequest."""
    import os

    from vllm.lora.request import LoRARequest

    import spiral_fast

    peft_model = lora_model(name)
    model = build(name)
    with spiral_fast.VLLMSampler(
        model, dtype="float32", kv_cache_memory_bytes=256 << 20, enable_lora=True, max_lora_rank=32, max_loras=1
    ) as sampler:
        vocab = model.config.vocab_size
        sample_seconds(sampler, vocab, LoRARequest("warm", 1, _save(peft_model)))  # compile and warm up
        saves, firsts, sizes = [], [], []
        for i in range(3):
            start = time.perf_counter()
            path = _save(peft_model)
            saves.append(time.perf_counter() - start)
            sizes.append(sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)))
            firsts.append(sample_seconds(sampler, vocab, LoRARequest(f"step{i}", i + 2, path)))
        steady = sample_seconds(sampler, vocab, LoRARequest("step2", 4, path))
        print(
            f"{name} LoRA r=32 adapter: save {statistics.median(saves):.3f} s, {sizes[0] / 2**20:.1f} MiB; "
            f"workload with a new adapter {statistics.median(firsts):.2f} s (load included), "
            f"with a loaded adapter {steady:.2f} s"
        )


def logprob_error() -> None:
    """Max |vLLM behaviour log-prob - batch_logprobs| (fp32) over the traces and the aggregations of
    SPIRAL rollouts of the tiny model: T = 1.0 and 0.7, the initial weights, after a sync of
    perturbed weights, and a rank-8 LoRA merged by sync."""
    import peft

    import spiral_fast

    model = build("tiny")
    template = spiral_fast.rollout.AggregationTemplate(head=(1,), separator=(2,), tail=(4,))
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(5, 50, (n,), generator=gen).tolist() for n in (4, 7, 12, 3)]
    with spiral_fast.VLLMSampler(model, dtype="float32", kv_cache_memory_bytes=64 << 20) as sampler:
        for label in ("initial", "synced", "lora"):
            if label == "synced":
                with torch.no_grad():
                    for p in model.parameters():
                        p.add_(0.05 * torch.randn_like(p))
            if label == "lora":
                model = peft.get_peft_model(
                    model, peft.LoraConfig(r=8, target_modules="all-linear", init_lora_weights=False)
                )
            if label != "initial":
                sampler.sync(model)
            for temperature in (1.0, 0.7):
                batch = spiral_fast.rollout(
                    sampler,
                    prompts,
                    reward_fn=lambda p, s, z: 0.0,
                    template=template,
                    num_traces=8,
                    num_sets=4,
                    set_size=4,
                    num_aggregations=4,
                    max_new_tokens=16,
                    temperature=temperature,
                    generator=gen,
                    engine="vllm",
                )
                want = spiral_fast.batch_logprobs(
                    model, batch, config=spiral_fast.SpiralConfig(temperature=temperature)
                )
                err = {"traces": 0.0, "aggregations": 0.0}
                tokens = 0
                for p, pr in enumerate(batch.problems):
                    for lp, w in zip(pr.trace_old_logprobs, want.traces[p]):
                        err["traces"] = max(err["traces"], (lp - w).abs().max().item())
                        tokens += lp.numel()
                    for lps, ws in zip(pr.agg_old_logprobs, want.aggregations[p]):
                        for lp, w in zip(lps, ws):
                            err["aggregations"] = max(err["aggregations"], (lp - w).abs().max().item())
                            tokens += lp.numel()
                print(
                    f"{label} T={temperature}: max |vLLM - batch_logprobs| traces {err['traces']:.2e}, "
                    f"aggregations {err['aggregations']:.2e} ({tokens} tokens)"
                )


def _save(peft_model) -> str:
    path = tempfile.mkdtemp(prefix="spiral_fast_lora_")
    peft_model.save_pretrained(path)
    return path


if __name__ == "__main__":
    main()
