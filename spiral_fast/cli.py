"""The `spiral-fast` console script: `spiral-fast demo`, `spiral-fast eval` and `spiral-fast profile-memory`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

import torch
from tqdm import tqdm

from spiral_fast import profile_memory as pm
from spiral_fast.recipe.command import evaluate_config
from spiral_fast.recipe.config import load_config
from spiral_fast.recipe.demo import CHOICES, METHODS, DemoConfig, load_demo, run_compare, save_demo, train_demo
from spiral_fast.recipe.plots import plot_history
from spiral_fast.recipe.scaling import EvalConfig, evaluate_demo, format_table, plot_eval
from spiral_fast.recipe.tiny_model import tiny_qwen2
from spiral_fast.recipe.user_errors import run_command
from spiral_fast.tasks.toy import ToyTask
from spiral_fast.train import main as train_main

_EVAL_HELP = {
    "problems": "evaluation problems (balanced answers)",
    "samples": "traces per problem for pass@k and majority vote, k = 1..samples",
    "population": "RSA: candidates per problem",
    "set_size": "RSA: candidates per aggregation (default: the set size the model was trained with)",
    "steps": "RSA: aggregation steps",
    "seed": "seed of the problems, set draws and sampling",
    "temperature": "sampling temperature",
    "votes": "majority vote@k: random orderings of the samples averaged over",
    "threads": "torch intra-op threads (1 is fastest for the tiny model on a shared CPU)",
    "max_new_tokens": "longest sampled trace (the toy task answers in one token)",
    "agg_max_new_tokens": "longest RSA aggregation (default: max_new_tokens)",
}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default once: "(default: X)" is appended unless the help already states
    its default, or the default is None / False / empty (nothing to show: the help says what
    happens then); a list default is written as the option takes it (comma-separated)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (
            "(default" in text
            or "%(default)" in text
            or not action.option_strings
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or default == []
        ):
            return text
        if isinstance(default, (list, tuple)):
            return text + " (default: " + ",".join(map(str, default)).replace("%", "%%") + ")"
        return text + " (default: %(default)s)"


_DEBUG_HELP = "on an error, show the full traceback (accepted before or after the command)"


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


def _add_options(parser, config_cls, helps: dict, *, prefix: str = "", choices: dict | None = None) -> None:
    """One --[prefix-]name option per dataclass field, its default, help and type from the table."""
    defaults = config_cls()
    for f in fields(config_cls):
        opts = {"type": _positive_int}
        if f.name in (choices or {}):
            opts = {"choices": choices[f.name]}
        elif f.type == "bool":
            opts = {"action": "store_true"}
        elif f.type == "float":
            opts = {"type": float}
        elif f.name == "seed":
            opts = {"type": int}
        parser.add_argument(
            "--" + (prefix + f.name).replace("_", "-"), default=getattr(defaults, f.name), help=helps[f.name], **opts
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spiral-fast",
        description="SPIRAL training steps made fast: a CPU demo of the full loop, its evaluation "
        "and a memory profiler.",
    )
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="train a tiny random model on a toy task with the full SPIRAL loop (CPU, minutes)",
        description="Rollouts (N traces, M sets of K, G aggregations; transformers generate) then "
        "spiral_fast.step with AdamW, per iteration; prints one metrics line per "
        "iteration and writes a PNG of aggregation reward and set value. With --compare "
        "grpo: trains SPIRAL and GRPO from the same seed, evaluates both (options "
        "--eval-*) and writes a PNG of pass@k, majority vote and RSA.",
        formatter_class=_HelpFormatter,
    )
    _add_options(demo, DemoConfig, DemoConfig.help(), choices=CHOICES)
    demo.add_argument("--out", default="runs/spiral_demo.png", help="path of the PNG plot")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    demo.add_argument(
        "--save",
        default=None,
        metavar="DIR",
        help="save the trained model (save_pretrained) and its settings for `spiral-fast eval`",
    )
    demo.add_argument(
        "--compare",
        default=None,
        choices=[m for m in METHODS if m != "spiral"],
        help="also train this baseline from the same seed and compare both at test time",
    )
    _add_options(demo, EvalConfig, _EVAL_HELP, prefix="eval_")

    ev = sub.add_parser(
        "eval",
        help="pass@k, majority vote and recursive self-aggregation of a demo model",
        description="Evaluates a model saved by `spiral-fast demo --save DIR` (or a fresh random one) "
        "on the toy task: pass@k and majority vote over k = 1..samples traces, and RSA over "
        "its steps; prints a table and writes one PNG.",
        formatter_class=_HelpFormatter,
    )
    ev.add_argument(
        "--model",
        default=None,
        metavar="DIR",
        help="folder written by `spiral-fast demo --save` (default: a fresh random model "
        "with the demo's default settings, seeded by --seed)",
    )
    ev.add_argument(
        "--config",
        default=None,
        metavar="TOML",
        help="instead of a demo model: the model of a `spiral-fast train` config (model.path, LoRA "
        "adapter of --checkpoint) on its data.eval problems, sampled with rollout.engine and "
        "rollout.max_new_tokens / agg_max_new_tokens",
    )
    ev.add_argument(
        "--checkpoint",
        default=None,
        metavar="DIR",
        help="with --config: a checkpoint-STEP folder of that run (default: the base model)",
    )
    ev.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="with --config: override one config key (repeatable)",
    )
    ev.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    _add_options(ev, EvalConfig, _EVAL_HELP)
    ev.add_argument("--out", default="spiral_eval.png", help="path of the PNG plot")

    # parsed by spiral_fast.train (main delegates before this parser runs); listed here for --help
    sub.add_parser("train", add_help=False, help="train a model with SPIRAL from a TOML config (spiral-fast train -h)")

    prof = sub.add_parser(
        "profile-memory",
        help="peak memory of one step vs step_reference over context lengths",
        description="Peak memory of one SPIRAL step on long aggregation contexts, each case in a "
        "fresh subprocess: CPU = ru_maxrss above the post-setup baseline; CUDA = the "
        "allocator's peak above the post-setup allocation.",
        formatter_class=_HelpFormatter,
    )
    prof.add_argument(
        "--model",
        default=None,
        help="transformers config name or path available locally (random weights); "
        "default: a small Qwen2-style config built in code",
    )
    prof.add_argument("--layers", type=_positive_int, default=None, help="override the config's num_hidden_layers")
    prof.add_argument(
        "--contexts", type=_int_list, default=[256, 1024], help="comma-separated aggregation-context lengths (tokens)"
    )
    prof.add_argument("--set-sizes", type=_int_list, default=[2, 4], help="comma-separated set sizes K")
    prof.add_argument(
        "--impls",
        type=lambda s: s.split(","),
        default=list(("step", "reference")),
        help="comma-separated: step, reference",
    )
    prof.add_argument("--sets", type=_positive_int, default=2, help="sets M per problem")
    prof.add_argument("--aggregations", type=_positive_int, default=4, help="responses G per set")
    prof.add_argument("--device", default=None, help="cpu or cuda[:i] (default: cuda if available)")
    prof.add_argument(
        "--snapshot", default=None, help="CUDA only: folder to dump a torch.cuda.memory snapshot of each step"
    )
    prof.add_argument("--out", default="profile_memory.png", help="path of the PNG plot")
    for command in (demo, ev, prof):  # listed in each command's --help; main() strips it wherever it is
        command.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    return parser


def _config(parser, config_cls, args, prefix: str = ""):
    """config_cls from the parsed --[prefix-]options; its ValueError names the option (a user error:
    one line, exit 2)."""
    try:
        return config_cls(**{f.name: getattr(args, prefix + f.name) for f in fields(config_cls)})
    except ValueError as err:
        text = str(err)
        name = text.split(" ", 1)[0].rstrip(":")
        if name in {f.name for f in fields(config_cls)}:  # "lr must be ..." -> "--lr must be ..."
            text = "--" + (prefix + name).replace("_", "-") + text[len(name) :]
        raise ValueError(text) from None


def _log_row(row, method: str = "") -> None:

    spiral = (
        f"agg_reward {row['agg_reward']:.3f}  set_value {row['set_value']:.3f} (std {row['set_value_std']:.3f})  "
        if "agg_reward" in row
        else f"reward {row['reward']:.3f}  "
    )
    dropped = f"dropped {row['dropped']}  " if row["dropped"] else ""
    tqdm.write(
        f"{method + ' ' if method else ''}iter {row['iteration']:4d}  {spiral}trace_acc "
        f"{row['trace_acc']:.3f}  {dropped}loss {row['loss']:+.4f}  {row['seconds']:.2f}s"
    )


def _summary(history, what: str) -> str:
    k = max(1, len(history) // 10)
    first = sum(r["reward"] for r in history[:k]) / k
    last = sum(r["reward"] for r in history[-k:]) / k
    return f"{what}: first {k} iterations {first:.3f} -> last {k} iterations {last:.3f}"


def _run_demo(args, parser) -> None:

    config = _config(parser, DemoConfig, args)
    eval_config = _config(parser, EvalConfig, args, "eval_")
    if args.compare:
        start = time.perf_counter()
        results = run_compare(
            config,
            eval_config,
            baseline=args.compare,
            progress=not args.no_progress,
            on_iteration=lambda method, row: _log_row(row, method),
        )
        for method, (run, _) in results.items():
            print(_summary(run.history, f"{method} trained reward"))
        print(format_table({method: result for method, (_, result) in results.items()}))
        path = plot_eval(
            {method: result for method, (_, result) in results.items()},
            args.out,
            title=f"SPIRAL vs {args.compare.upper()} on the toy task (same seed, "
            f"same sampled response tokens per problem)",
        )
        print(f"total {time.perf_counter() - start:.1f}s (training and evaluation of both)")
        runs = {method: run for method, (run, _) in results.items()}
    else:
        run = train_demo(config, on_iteration=_log_row, progress=not args.no_progress)
        path = plot_history(run.history, args.out, title=f"{config.method.upper()} demo")
        print(_summary(run.history, "aggregation reward" if config.method == "spiral" else "trace reward"))
        runs = {config.method: run}
    print(f"plot written to {path}")
    if args.save:
        for method, run in runs.items():
            folder = args.save if len(runs) == 1 else f"{args.save}/{method}"
            print(f"model saved to {save_demo(run.model, replace(config, method=method), folder)}")


def _run_eval(args, parser) -> None:

    eval_config = _config(parser, EvalConfig, args)
    if args.config is not None:
        if args.model is not None:
            raise ValueError("give --config or --model, not both")
        cfg = load_config(args.config, args.overrides)  # checks every key and data file: before any model loads
        name = "base model" if args.checkpoint is None else Path(args.checkpoint).name
        if eval_config.set_size is None:
            raise ValueError("--set-size is required with --config")
        if cfg.data.source == "jsonl" and not cfg.data.eval:
            raise ValueError("config key data.eval is required to evaluate (a JSONL file like data.train)")
        if args.checkpoint is not None and not Path(args.checkpoint, "adapter").is_dir():
            raise ValueError(
                f"--checkpoint: {args.checkpoint!r} has no adapter/ folder "
                "(expected a checkpoint-STEP folder of a LoRA run)"
            )
        result = evaluate_config(cfg, eval_config, checkpoint_dir=args.checkpoint)
        _report({name: result}, args)
        return
    if args.model is not None:
        try:
            model, demo_config = load_demo(args.model)
        except ValueError as err:
            raise ValueError(f"--model: {err}") from None
        name = Path(args.model).name or args.model
    else:
        demo_config = DemoConfig(seed=eval_config.seed)
        model = tiny_qwen2(
            len(ToyTask(base=demo_config.base).tokenizer),
            seed=demo_config.seed,
            hidden_size=demo_config.hidden_size,
            num_layers=demo_config.layers,
        )
        name = "fresh model"
    set_size = eval_config.set_size or demo_config.set_size
    if set_size > eval_config.population:
        raise ValueError(f"--set-size {set_size} must be <= --population {eval_config.population}")
    _report({name: evaluate_demo(model, demo_config, eval_config)}, args)


def _report(results: dict, args) -> None:
    """The table, the PNG and (--json) the results as JSON."""
    print(format_table(results))
    print(f"plot written to {plot_eval(results, args.out)}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({k: asdict(v) for k, v in results.items()}, indent=1) + "\n")
        print(f"results written to {args.json}")


def _run_profile(args, parser) -> None:

    bad = [i for i in args.impls if i not in pm.IMPLS]
    if bad:
        raise ValueError(f"--impls: unknown implementation(s) {bad}; choose from {list(pm.IMPLS)}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.snapshot and not device.startswith("cuda"):
        raise ValueError(f"--snapshot needs a CUDA device, got --device {device}")
    too_short = [c for c in args.contexts if c <= pm.PROMPT_LEN + max(args.set_sizes)]
    if too_short:
        raise ValueError(f"--contexts must exceed {pm.PROMPT_LEN + max(args.set_sizes)} tokens, got {too_short}")
    try:
        pm.load_config(args.model, args.layers)  # fail here, not in every subprocess
    except ValueError as err:
        raise ValueError(f"--model: {err}") from None
    print(
        f"profile-memory on {device}: contexts {args.contexts}, set sizes {args.set_sizes}, "
        f"impls {args.impls}, M={args.sets}, G={args.aggregations}"
    )
    results = pm.sweep(
        args.contexts,
        args.set_sizes,
        args.impls,
        model=args.model,
        layers=args.layers,
        num_sets=args.sets,
        num_aggregations=args.aggregations,
        device=device,
        snapshot=args.snapshot,
    )
    print(pm.format_table(results))
    print(f"plot written to {pm.plot_results(results, args.out)}")


_COMMANDS = {"demo": _run_demo, "eval": _run_eval, "profile-memory": _run_profile}


def _dispatch(argv: list[str]) -> None:
    if argv[:1] == ["train"]:
        train_main(argv[1:])
        return
    parser = build_parser()
    args = parser.parse_args(argv)
    _COMMANDS[args.command](args, parser)


def main(argv: list[str] | None = None) -> None:
    """The console script. A user error (``recipe.user_errors``: a config or data mistake, a missing
    file or optional dependency) prints one line ``spiral-fast: error: ...`` on stderr and exits with
    status 2; ``--debug`` (anywhere on the line) prints its traceback first. Any other exception is a
    bug and keeps its traceback (``recipe.user_errors.run_command``)."""
    run_command(_dispatch, list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
