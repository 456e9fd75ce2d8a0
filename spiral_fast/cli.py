"""The `spiral-fast` console script: `spiral-fast demo` and `spiral-fast profile-memory`."""
from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from spiral_fast.demo.train import ENGINES, STEP_IMPLS, DemoConfig

_DEMO_HELP = {
    "iterations": "SPIRAL iterations (rollout + one optimizer step each)",
    "seed": "seed of the model init, problems, sets and sampling",
    "problems": "problems per iteration (P)",
    "traces": "traces sampled per problem (N)",
    "sets": "sets drawn per problem (M)",
    "set_size": "traces per set (K); at most --traces",
    "aggregations": "aggregation responses per set (G)",
    "base": "toy task: digits are 0..base-1, answer = (sum of digits + 1) mod base",
    "digits": "toy task: digits per problem",
    "lr": "AdamW learning rate",
    "temperature": "sampling and training temperature",
    "hidden_size": "hidden size of the tiny Qwen2 model",
    "layers": "decoder layers of the tiny Qwen2 model",
    "step_impl": "spiral_fast.step ('step') or the naive oracle spiral_fast.step_reference",
    "threads": "torch intra-op threads (1 is fastest for the tiny model on a shared CPU)",
    "engine": "sampler: transformers generate ('hf') or an in-process vLLM engine synced after every step "
              "('vllm'; needs vLLM, see README; the model then has attention heads of size 32)",
}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _int_list(text: str) -> list[int]:
    values = [_positive_int(part) for part in text.split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spiral-fast",
        description="SPIRAL training steps made fast: a CPU demo of the full loop and a memory profiler.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo", help="train a tiny random model on a toy task with the full SPIRAL loop (CPU, minutes)",
        description="Rollouts (N traces, M sets of K, G aggregations; transformers generate) then "
                    "spiral_fast.step with AdamW, per iteration; prints one metrics line per "
                    "iteration and writes a PNG of aggregation reward and set value.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    defaults = DemoConfig()
    special = {"step_impl": {"choices": STEP_IMPLS}, "engine": {"choices": ENGINES, "type": str},
               "lr": {"type": float}, "temperature": {"type": float}, "seed": {"type": int}}
    for f in fields(DemoConfig):
        demo.add_argument("--" + f.name.replace("_", "-"), default=getattr(defaults, f.name),
                          help=_DEMO_HELP[f.name], **special.get(f.name, {"type": _positive_int}))
    demo.add_argument("--out", default="spiral_demo.png", help="path of the PNG plot")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    prof = sub.add_parser(
        "profile-memory", help="peak memory of one step vs step_reference over context lengths",
        description="Peak memory of one SPIRAL step on long aggregation contexts, each case in a "
                    "fresh subprocess: CPU = ru_maxrss above the post-setup baseline; CUDA = the "
                    "allocator's peak above the post-setup allocation.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    prof.add_argument("--model", default=None,
                      help="transformers config name or path available locally (random weights); "
                           "default: a small Qwen2-style config built in code")
    prof.add_argument("--layers", type=_positive_int, default=None,
                      help="override the config's num_hidden_layers")
    prof.add_argument("--contexts", type=_int_list, default=[256, 1024],
                      help="comma-separated aggregation-context lengths (tokens)")
    prof.add_argument("--set-sizes", type=_int_list, default=[2, 4],
                      help="comma-separated set sizes K")
    prof.add_argument("--impls", type=lambda s: s.split(","), default=list(("step", "reference")),
                      help="comma-separated: step, reference")
    prof.add_argument("--sets", type=_positive_int, default=2, help="sets M per problem")
    prof.add_argument("--aggregations", type=_positive_int, default=4, help="responses G per set")
    prof.add_argument("--device", default=None, help="cpu or cuda[:i] (default: cuda if available)")
    prof.add_argument("--snapshot", default=None,
                      help="CUDA only: folder to dump a torch.cuda.memory snapshot of each step")
    prof.add_argument("--out", default="profile_memory.png", help="path of the PNG plot")
    return parser


def _run_demo(args, parser) -> None:
    from tqdm import tqdm

    from spiral_fast.demo.plot import plot_history
    from spiral_fast.demo.train import run_demo

    try:
        config = DemoConfig(**{f.name: getattr(args, f.name) for f in fields(DemoConfig)})
    except ValueError as err:
        parser.error(str(err))

    def log(row):
        tqdm.write(f"iter {row['iteration']:4d}  agg_reward {row['agg_reward']:.3f}  set_value "
                   f"{row['set_value']:.3f} (std {row['set_value_std']:.3f})  trace_acc "
                   f"{row['trace_acc']:.3f}  loss {row['loss']:+.4f}  {row['seconds']:.2f}s")

    history = run_demo(config, on_iteration=log, progress=not args.no_progress)
    path = plot_history(history, args.out)
    k = max(1, len(history) // 10)
    first = sum(r["agg_reward"] for r in history[:k]) / k
    last = sum(r["agg_reward"] for r in history[-k:]) / k
    print(f"aggregation reward: first {k} iterations {first:.3f} -> last {k} iterations {last:.3f}")
    print(f"plot written to {path}")


def _run_profile(args, parser) -> None:
    import torch

    from spiral_fast import profile_memory as pm

    bad = [i for i in args.impls if i not in pm.IMPLS]
    if bad:
        parser.error(f"--impls: unknown implementation(s) {bad}; choose from {list(pm.IMPLS)}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.snapshot and not device.startswith("cuda"):
        parser.error(f"--snapshot needs a CUDA device, got --device {device}")
    too_short = [c for c in args.contexts if c <= pm.PROMPT_LEN + max(args.set_sizes)]
    if too_short:
        parser.error(f"--contexts must exceed {pm.PROMPT_LEN + max(args.set_sizes)} tokens, got {too_short}")
    try:
        pm.load_config(args.model, args.layers)  # fail here, not in every subprocess
    except ValueError as err:
        parser.error(f"--model: {err}")
    print(f"profile-memory on {device}: contexts {args.contexts}, set sizes {args.set_sizes}, "
          f"impls {args.impls}, M={args.sets}, G={args.aggregations}")
    results = pm.sweep(args.contexts, args.set_sizes, args.impls, model=args.model,
                       layers=args.layers, num_sets=args.sets, num_aggregations=args.aggregations,
                       device=device, snapshot=args.snapshot)
    print(pm.format_table(results))
    print(f"plot written to {pm.plot_results(results, args.out)}")


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "demo":
        _run_demo(args, parser)
    else:
        _run_profile(args, parser)


if __name__ == "__main__":
    main()
