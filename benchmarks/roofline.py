"""Roofline predictions for every kernel on an H200, written before any GPU run (issue 12).

Each entry: FLOPs, HBM bytes, the roofline bound max(FLOPs / peak, bytes / bandwidth) and a
prediction = the bound at an attainable fraction of peak (below). ``gpu_kernels.py`` prints its
measured times next to these; ``python benchmarks/roofline.py`` prints the table of docs/roofline.md.

Shapes (Qwen2.5-7B: H=3584, V=152064, 28 query heads, 4 KV heads, D=128; attention per layer):
- "qwen": the LM head at N=16,384 trained tokens; attention over 16,384 tokens in 4 causal sequences of 4,096.
- "spiral": one problem of SPIRAL["layout-issue"] (prompt 256, 16 traces x 4,096, 4 sets of 4, 4
  aggregations x 512): 73,728 trained (response) tokens through the LM head; tree attention over its
  139,864 unique packed tokens with 846,164,556 visible (query, key) pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

# H200 SXM: dense bf16 tensor-core peak, HBM3e bandwidth (KINDS.md measured ~790 TFLOP/s on a large
# GEMM and ~4.3 TB/s device copy; the fractions below are of the data-sheet peaks)
BF16_FLOPS = 989e12
HBM_BYTES_PER_S = 4.8e12
# attainable fractions: cuBLAS-class GEMM, Triton flash-attention forward / backward, streaming kernels
EFF = {"gemm": 0.75, "attn-fwd": 0.45, "attn-bwd": 0.35, "stream": 0.8}

H, V, HQ, HKV, D = 3584, 152064, 28, 4, 128
TOKENS = {"qwen": 16_384, "spiral": 73_728}  # LM-head rows
ATTN_T = {"qwen": 16_384, "spiral": 139_864}  # packed tokens per layer
ATTN_PAIRS = {"qwen": 4 * 4096 * 4097 // 2, "spiral": 846_164_556}
LOGPROB_BLOCK = 128  # BLOCK_N = BLOCK_V of the bf16 log-prob kernels
CHUNK_PASSES = 6  # fp32 [chunk, V] logits passes of the chunked torch path (write, softmax, grad, read x3)


@dataclass(frozen=True)
class Prediction:
    kernel: str
    shape: str
    flops: float
    bytes: float
    kind: str  # key of EFF

    @property
    def bound_s(self) -> float:
        return max(self.flops / BF16_FLOPS, self.bytes / HBM_BYTES_PER_S)

    @property
    def predicted_s(self) -> float:
        compute = self.flops / (BF16_FLOPS * (EFF[self.kind] if self.kind != "stream" else 1.0))
        memory = self.bytes / (HBM_BYTES_PER_S * (EFF["stream"] if self.kind == "stream" else 1.0))
        return max(compute, memory)


def _logprob(shape: str) -> list[Prediction]:
    n = TOKENS[shape]
    w, hid = 2 * V * H, 2 * n * H  # bf16 operands
    tiles_v, tiles_n = V / LOGPROB_BLOCK, n / LOGPROB_BLOCK
    # forward: programs of one wave stream W in step, so W comes from HBM about once per wave
    waves = max(1.0, tiles_n / 132)
    fwd = Prediction("logprobs fwd (triton)", shape, 2 * n * H * V, w * waves + hid, "gemm")
    # backward today: every tile adds its fp32 dH / dW slice with atomics; with no L2 reuse each lands in
    # HBM, and every tile re-reads its W and h slices (the issue's ~840 GB at the qwen shape)
    atomics = 4 * n * H * tiles_v + 4 * V * H * tiles_n
    rereads = hid * tiles_v + w * tiles_n
    bwd = Prediction("logprobs bwd (triton, ungrouped)", shape, 6 * n * H * V, atomics + rereads, "stream")
    # grouped tile order: a wave's tiles share dW rows and dH rows in L2; if L2 absorbs the atomics the
    # kernel is compute-bound again, HBM then holds the operands once per wave and the fp32 results once
    grouped = Prediction(
        "logprobs bwd (triton, grouped)", shape, 6 * n * H * V, (w + hid) * waves + 4 * (n + V) * H, "gemm"
    )
    # chunked cuBLAS path (the A/B peer), forward + backward: 8 N H V of GEMMs + fp32 logit chunks
    chunked = Prediction(
        "logprobs fwd+bwd (torch chunked)", shape, 8 * n * H * V, CHUNK_PASSES * 4 * n * V + 2 * w + 3 * hid, "gemm"
    )
    return [fwd, bwd, grouped, chunked]


def _attention(shape: str) -> list[Prediction]:
    t, pairs = ATTN_T[shape], ATTN_PAIRS[shape]
    q = 2 * t * HQ * D
    kv = 2 * 2 * t * HKV * D
    fwd = Prediction("tree-attn fwd", shape, 4 * D * HQ * pairs, q * 2 + kv, "attn-fwd")
    bwd = Prediction("tree-attn bwd (dq + dkdv)", shape, 10 * D * HQ * pairs, 4 * q + 2 * kv, "attn-bwd")
    delta = Prediction("tree-attn delta = rowsum(dO*O)", shape, 2 * t * HQ * D, 2 * q + 4 * t * HQ, "stream")
    # GQA today: fp32 dK/dV per query head (write, read back), summed to bf16 per KV head
    gqa = Prediction(
        "tree-attn GQA dK/dV sum (fp32 per head)", shape, 2 * t * HQ * D, 2 * (4 * t * HQ * D) * 2 + kv, "stream"
    )
    return [fwd, bwd, delta, gqa]


def _streaming() -> list[Prediction]:
    n = TOKENS["qwen"]
    rows = 1 << 24
    return [
        Prediction("logits logprobs fwd", "qwen", 6 * n * V, 2 * n * V, "stream"),
        Prediction("logits logprobs bwd", "qwen", 8 * n * V, 4 * n * V, "stream"),
        Prediction("policy loss (16M rows)", "16M", 30 * rows, 24 * rows, "stream"),
    ]


def predictions() -> list[Prediction]:
    return _logprob("qwen") + _logprob("spiral") + _attention("qwen") + _attention("spiral") + _streaming()


def lookup(kernel: str, shape: str) -> Prediction:
    for p in predictions():
        if p.kernel == kernel and p.shape == shape:
            return p
    raise KeyError((kernel, shape))


def markdown() -> str:
    lines = [
        "| kernel | shape | GFLOP | HBM GB | bound (ms) | predicted H200 (ms) | limited by |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for p in predictions():
        limit = "compute" if p.flops / BF16_FLOPS >= p.bytes / HBM_BYTES_PER_S else "memory"
        lines.append(
            f"| {p.kernel} | {p.shape} | {p.flops / 1e9:,.0f} | {p.bytes / 1e9:,.2f} | "
            f"{p.bound_s * 1e3:,.3f} | {p.predicted_s * 1e3:,.3f} | {limit} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())
