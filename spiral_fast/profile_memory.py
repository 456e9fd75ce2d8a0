"""`spiral-fast profile-memory`: peak memory of one SPIRAL step on long aggregation contexts.

Each case (aggregation-context length C, set size K, step implementation) runs in a fresh Python
subprocess, so one case's allocations cannot hide in another's peak:
- CPU: peak resident memory from resource.getrusage(RUSAGE_SELF).ru_maxrss (a high-water mark).
  `baseline` is ru_maxrss after imports, model and batch are built; `delta` = ru_maxrss after the
  step - baseline = what the step itself adds on top of everything set up before it.
- CUDA: the caching allocator's statistics. `baseline` = memory_allocated() after setup, peak =
  max_memory_allocated() during the step (reset just before it), `delta` = peak - baseline.
  With a snapshot folder the allocator history of the step is dumped there (torch.cuda.memory).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from spiral_fast.policy_step.batch import ProblemRollout, SpiralBatch
from spiral_fast.policy_step.reference_step import step_reference
from spiral_fast.policy_step.step import step
from spiral_fast.rollout.sets import AggregationTemplate

IMPLS = ("step", "reference")
PROMPT_LEN = 32  # problem prompt x
RESPONSE_LEN = 16  # each aggregation response z_jg


@dataclass(frozen=True)
class Case:
    """One measurement: aggregation-context length, set size K, implementation, model spec."""

    context: int
    set_size: int
    impl: str
    model: str | None = None  # None: default_config(); else a local transformers config name/path
    layers: int | None = None  # override num_hidden_layers (keeps big configs affordable)
    num_sets: int = 2
    num_aggregations: int = 4
    device: str = "cpu"
    snapshot: str | None = None  # CUDA only: folder for a torch.cuda.memory snapshot


def default_config():
    """A small Qwen2-style config (GQA, untied LM head, 16k vocab) built in code."""
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=16384,
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        tie_word_embeddings=False,
    )


def load_config(model: str | None, layers: int | None):
    """default_config() or AutoConfig.from_pretrained(model, local_files_only=True); no download."""
    if model is None:
        config = default_config()
    else:
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(model, local_files_only=True)
        except OSError as err:
            raise ValueError(f"model {model!r} has no config available locally: {err}") from None
    if layers is not None:
        config.num_hidden_layers = layers
    return config


def case_batch(vocab_size: int, context: int, set_size: int, num_sets: int, num_aggregations: int, seed: int = 0):
    """One problem whose M aggregation prompts are ~`context` tokens: N = M*K traces of length
    (context - PROMPT_LEN) // K, disjoint sets, a_j = x + its traces, G responses per set with
    rewards alternating 0/1 (non-zero advantages)."""
    import torch

    if context <= PROMPT_LEN + set_size:
        raise ValueError(f"context must exceed {PROMPT_LEN + set_size} (prompt + one token per trace), got {context}")
    g = torch.Generator().manual_seed(seed)

    def tokens(n):
        return torch.randint(0, vocab_size, (n,), generator=g).tolist()

    trace_len = (context - PROMPT_LEN) // set_size
    prompt = tokens(PROMPT_LEN)
    traces = [tokens(trace_len) for _ in range(num_sets * set_size)]
    sets = [tuple(range(j * set_size, (j + 1) * set_size)) for j in range(num_sets)]
    template = AggregationTemplate()
    return SpiralBatch(
        [
            ProblemRollout(
                prompt=prompt,
                traces=traces,
                sets=sets,
                agg_prompts=[template(prompt, [traces[i] for i in s]) for s in sets],
                aggregations=[[tokens(RESPONSE_LEN) for _ in range(num_aggregations)] for _ in sets],
                rewards=[[float((j + g_) % 2) for g_ in range(num_aggregations)] for j in range(num_sets)],
            )
        ]
    )


def _maxrss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def run_case(case: Case) -> dict:
    """Measure one case in this process (the parent runs it in a fresh subprocess)."""
    if case.impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {case.impl!r}")
    device = torch.device(case.device)
    cuda = device.type == "cuda"
    if not cuda:
        # One intra-op thread: on a shared CPU a thread pool contends for cores and a case takes
        # minutes instead of seconds; memory does not depend on it beyond per-thread scratch.
        torch.set_num_threads(1)
    config = load_config(case.model, case.layers)
    torch.manual_seed(0)
    # bf16 on a GPU as in training; float32 on the CPU, where bf16 matmuls are slow.
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if cuda else torch.float32)
    model.to(device).train()
    batch = case_batch(config.vocab_size, case.context, case.set_size, case.num_sets, case.num_aggregations)
    step_fn = step if case.impl == "step" else step_reference
    if cuda:
        torch.cuda.synchronize(device)
        baseline = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        if case.snapshot:
            torch.cuda.memory._record_memory_history(max_entries=200_000)
    else:
        baseline = _maxrss_bytes()
    step_fn(model, batch)
    if cuda:
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        if case.snapshot:
            folder = Path(case.snapshot)
            folder.mkdir(parents=True, exist_ok=True)
            torch.cuda.memory._dump_snapshot(str(folder / f"{case.impl}-C{case.context}-K{case.set_size}.pickle"))
            torch.cuda.memory._record_memory_history(enabled=None)
    else:
        peak = _maxrss_bytes()
    return {
        **asdict(case),
        "baseline_bytes": baseline,
        "peak_bytes": peak,
        "delta_bytes": peak - baseline,
        "metric": "cuda_allocator" if cuda else "ru_maxrss",
    }


def measure(case: Case, timeout: float = 900.0) -> dict:
    """Run one case in a fresh subprocess; its result is the JSON on the last line of stdout."""
    proc = subprocess.run(
        [sys.executable, "-m", "spiral_fast.profile_memory", json.dumps(asdict(case))],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"profile case {case} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def format_table(results: list[dict]) -> str:
    """Markdown table: one row per (context, set size), the delta (and baseline) of each impl, and
    the ratio step / reference of the deltas."""
    mib = 1 / 2**20
    rows = {}
    for r in results:
        rows.setdefault((r["context"], r["set_size"]), {})[r["impl"]] = r
    impls = [i for i in IMPLS if any(i in v for v in rows.values())]
    metric = results[0]["metric"] if results else "?"
    head = ["context", "K"] + [f"{i} delta MiB (baseline)" for i in impls]
    lines = [
        f"peak memory of one step ({metric}; delta = peak - baseline after setup)",
        "| " + " | ".join(head + ["step/reference"]) + " |",
        "|" + "---|" * (len(head) + 1),
    ]
    for (context, k), by_impl in sorted(rows.items()):
        cells = [str(context), str(k)]
        for i in impls:
            r = by_impl.get(i)
            cells.append("-" if r is None else f"{r['delta_bytes'] * mib:.1f} ({r['baseline_bytes'] * mib:.0f})")
        both = all(i in by_impl for i in IMPLS) and by_impl["reference"]["delta_bytes"] > 0
        cells.append(f"{by_impl['step']['delta_bytes'] / by_impl['reference']['delta_bytes']:.2f}" if both else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_results(results: list[dict], path: str | Path) -> Path:
    """PNG: step delta (MiB) against aggregation-context length, one line per (impl, K)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    series = sorted({(r["impl"], r["set_size"]) for r in results})
    for impl, k in series:
        pts = sorted(
            (r["context"], r["delta_bytes"] / 2**20) for r in results if r["impl"] == impl and r["set_size"] == k
        )
        ax.plot(
            [c for c, _ in pts],
            [m for _, m in pts],
            marker="o",
            ls="-" if impl == "step" else "--",
            label=f"{impl}, K={k}",
        )
    ax.set_xlabel("aggregation-context length (tokens)")
    ax.set_ylabel("peak memory of one step, MiB above setup")
    ax.set_title(f"spiral_fast step vs step_reference ({results[0]['metric'] if results else ''})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def sweep(contexts, set_sizes, impls, *, log=print, **case_kwargs) -> list[dict]:
    """Measure every (context, K, impl) combination, each in its own subprocess."""
    results = []
    for context in contexts:
        for k in set_sizes:
            for impl in impls:
                r = measure(Case(context=context, set_size=k, impl=impl, **case_kwargs))
                log(
                    f"  {impl:9s} C={context:<6d} K={k:<3d} delta {r['delta_bytes'] / 2**20:8.1f} MiB"
                    f"  baseline {r['baseline_bytes'] / 2**20:8.1f} MiB"
                )
                results.append(r)
    return results


def _child(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="internal: measure one profile-memory case")
    parser.add_argument("case_json")
    case = Case(**json.loads(parser.parse_args(argv).case_json))
    print(json.dumps(run_case(case)))


if __name__ == "__main__":
    _child(sys.argv[1:])
