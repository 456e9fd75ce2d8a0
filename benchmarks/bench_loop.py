"""Whole training iterations of the SmolLM2 example, side by side (issue 23 item 7).

Cases, each with its own model (the example's SmolLM2-135M-Instruct + rank-16 LoRA, the same seeded
LoRA init), optimizer and problem stream, built as ``spiral-fast train`` builds them
(``recipe.command``: ``load_model``, ``build_task``, ``build_sampler``, ``recipe.loop.Trainer``):

- ``spiral-<engine>`` and ``grpo-<engine>``: our loop (``Trainer.train_step``) with
  rollout.method "spiral" / "grpo" on each engine that is installed ("hf"; "vllm" where it imports);
- ``trl-grpo``: TRL's ``GRPOTrainer`` on the same model, LoRA, problems (the task's rendered
  prompts), reward (``task.check``), temperature, optimizer settings and sampled-token budget as our
  GRPO (``grpo_shape``: responses per problem and their max length). TRL samples with HF generate
  here (its vLLM colocate mode needs a CUDA device).

The cases step round-robin (step 1 of every case, then step 2, ...) so that a loaded shared CPU
slows them alike. Dynamic sampling is off unless ``--dynamic-sampling``: every case then samples the
same number of problems per step (TRL has no dynamic sampling), and per step the sampled tokens are
bounded by the same budget. Printed per case: mean seconds per step of rollout / step / sync (TRL:
generation+scoring / the rest), sampled tokens per step and per rollout second, and time per step
relative to our GRPO on the same engine. Step 1 is a warm-up and left out of the means when there is
more than one step.

    python benchmarks/bench_loop.py --steps 2 [--engines hf,vllm] [--no-trl] [--set rollout.x=y ...]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time

import torch

from spiral_fast.recipe.command import build_sampler, build_task
from spiral_fast.recipe.config import load_config
from spiral_fast.recipe.loop import Trainer, grpo_shape
from spiral_fast.recipe.model_loading import load_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "smollm2_addition.toml")


def installed_engines() -> list[str]:
    """ "hf" always; "vllm" where the vllm package can be found."""
    return ["hf"] + (["vllm"] if importlib.util.find_spec("vllm") is not None else [])


def _cfg(config: str, overrides, method: str, engine: str, dynamic: bool):
    extra = [f'rollout.method="{method}"', f'rollout.engine="{engine}"']
    if not dynamic:
        extra.append("rollout.dynamic_sampling=false")
    return load_config(config, list(overrides) + extra)


class OurCase:
    """Our loop, built as ``recipe.command.train`` builds it (one process, CPU)."""

    def __init__(self, config: str, overrides, method: str, engine: str, dynamic: bool):
        self.name = f"{method}-{engine}"
        cfg = _cfg(config, overrides, method, engine, dynamic)
        device = torch.device("cpu")
        self.model, tokenizer = load_model(cfg, device)
        self.task = build_task(cfg, tokenizer)
        self.sampler = build_sampler(cfg, self.model, self.task, 1)
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), weight_decay=cfg.optim.weight_decay
        )
        warmup = cfg.optim.warmup_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0
        )
        self.trainer = Trainer(
            model=self.model,
            sampler=self.sampler,
            task=self.task,
            settings=cfg.rollout,
            config=cfg.algorithm,
            optimizer=optimizer,
            scheduler=scheduler,
            device=device,
            seed=cfg.train.seed,
        )
        self.source = self.task.train_problems(cfg.train.seed, 0)
        self.rows: list[dict] = []

    def step(self, k: int) -> None:
        row = self.trainer.train_step(self.source, k)
        self.rows.append(
            {
                "rollout": row["seconds_rollout"],
                "step": row["seconds_step"],
                "sync": row["seconds_sync"],
                "tokens": row["trace_tokens_sampled"] + row["agg_tokens_sampled"],
                "problems": row["problems_sampled"],
                "reward": row.get("reward", 0.0),
            }
        )

    def close(self) -> None:
        self.sampler.close()


class TRLCase:
    """TRL's GRPOTrainer at our GRPO's shape; ``run(steps, before_step)`` calls ``before_step(k)``
    at the start of each of its steps (the other cases' step k), outside its own timing."""

    def __init__(self, config: str, overrides, steps: int, output: str):
        from datasets import Dataset
        from trl import GRPOConfig, GRPOTrainer

        self.name = "trl-grpo"
        cfg = _cfg(config, overrides, "grpo", "hf", False)
        s, o = cfg.rollout, cfg.optim
        per_problem, length = grpo_shape(s)
        self.model, tokenizer = load_model(cfg, torch.device("cpu"))
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        task = build_task(cfg, tokenizer)
        problems = task.train_problems(cfg.train.seed, 0).take(s.problems_per_step * steps)
        # the prompt our loop samples from, as text (TRL tokenizes it again without special tokens)
        rows = [{"prompt": tokenizer.decode(task.prompt(p)), "row": i} for i, p in enumerate(problems)]

        def reward(completions, row, **_):
            return [float(task.check(c, problems[i])) for c, i in zip(completions, row)]

        args = GRPOConfig(
            output_dir=output,
            max_steps=steps,
            per_device_train_batch_size=s.problems_per_step * per_problem,
            num_generations=per_problem,
            max_completion_length=length,
            temperature=s.temperature,
            top_k=0,
            top_p=1.0,
            learning_rate=o.lr,
            adam_beta1=o.betas[0],
            adam_beta2=o.betas[1],
            weight_decay=o.weight_decay,
            warmup_steps=o.warmup_steps,
            lr_scheduler_type="constant_with_warmup",
            max_grad_norm=o.max_grad_norm,
            beta=0.0,
            epsilon=cfg.algorithm.clip[0],
            epsilon_high=cfg.algorithm.clip[1],
            loss_type="dapo",
            shuffle_dataset=False,
            use_cpu=True,
            report_to="none",
            save_strategy="no",
            logging_steps=1,
            disable_dropout=True,
            seed=cfg.train.seed,
            dataloader_num_workers=0,
            use_vllm=False,
        )
        self.trainer = GRPOTrainer(
            model=self.model,
            reward_funcs=reward,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
        )
        self.rows = []
        self._rollout = 0.0
        self._tokens = 0
        inner = self.trainer._generate_and_score_completions

        def timed(*a, **kw):  # TRL's sampling and scoring of a step, timed and its tokens counted
            start = time.perf_counter()
            out = inner(*a, **kw)
            self._rollout += time.perf_counter() - start
            self._tokens += int(out["completion_mask"].sum())
            return out

        self.trainer._generate_and_score_completions = timed

    def run(self, before_step) -> None:
        from transformers import TrainerCallback

        case = self

        class Clock(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                before_step(state.global_step + 1)
                case._rollout, case._tokens = 0.0, 0
                case._start = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                total = time.perf_counter() - case._start
                case.rows.append(
                    {
                        "rollout": case._rollout,
                        "step": total - case._rollout,
                        "sync": 0.0,
                        "tokens": case._tokens,
                        "problems": None,
                        "reward": None,
                    }
                )

        self.trainer.add_callback(Clock())
        self.trainer.train()

    def close(self) -> None:
        pass


def summary(cases) -> list[dict]:
    """Per case: mean seconds per step (rollout, step, sync, total), sampled tokens per step and per
    rollout second; step 1 left out when there are more."""
    out = []
    for case in cases:
        rows = case.rows[1:] if len(case.rows) > 1 else case.rows
        if not rows:
            continue
        mean = {k: sum(r[k] for r in rows) / len(rows) for k in ("rollout", "step", "sync", "tokens")}
        mean["total"] = mean["rollout"] + mean["step"] + mean["sync"]
        out.append(
            dict(
                case=case.name,
                steps=len(rows),
                **mean,
                tokens_per_s=mean["tokens"] / mean["rollout"] if mean["rollout"] else 0.0,
            )
        )
    return out


def print_table(results, file=sys.stdout) -> None:
    grpo = {r["case"].split("-", 1)[1]: r["total"] for r in results if r["case"].startswith("grpo-")}
    print(
        f"{'case':12s} {'steps':>5s} {'rollout s':>9s} {'step s':>7s} {'sync s':>7s} {'total s':>8s} "
        f"{'tokens':>7s} {'tok/s':>7s} {'vs our GRPO-hf':>14s}",
        file=file,
    )
    for r in results:
        ref = grpo.get(r["case"].split("-", 1)[1]) or grpo.get("hf")
        ratio = f"{r['total'] / ref:13.2f}x" if ref else f"{'-':>14s}"
        print(
            f"{r['case']:12s} {r['steps']:5d} {r['rollout']:9.2f} {r['step']:7.2f} {r['sync']:7.2f} "
            f"{r['total']:8.2f} {r['tokens']:7.0f} {r['tokens_per_s']:7.1f} {ratio}",
            file=file,
        )


def run(
    config: str = EXAMPLE,
    *,
    steps: int = 2,
    engines=None,
    methods=("spiral", "grpo"),
    trl: bool = True,
    overrides=(),
    dynamic: bool = False,
) -> list[dict]:
    """Build every case, step them round-robin, return ``summary``."""
    engines = list(engines or installed_engines())
    ours = [OurCase(config, overrides, m, e, dynamic) for e in engines for m in methods]
    cases = list(ours)
    try:
        if trl and importlib.util.find_spec("trl") is not None:
            with tempfile.TemporaryDirectory() as tmp:
                other = TRLCase(config, overrides, steps, tmp)
                cases.append(other)
                other.run(lambda k: [c.step(k) for c in ours])
        else:
            for k in range(1, steps + 1):
                for c in ours:
                    c.step(k)
    finally:
        for c in cases:
            c.close()
    return summary(cases)


try:
    import pytest

    _slow = pytest.mark.slow  # TRL's trainer setup dominates: 4.4 min on the loaded 2-core CPU
except ImportError:  # run as a script without pytest

    def _slow(fn):
        return fn


@_slow
def test_bench_loop_runs_every_case_on_a_tiny_model(tmp_path):
    """The benchmark's cases run end to end on a tiny random model (seconds): our SPIRAL and GRPO
    on the HF engine, and TRL's GRPOTrainer where installed, each reporting its phases."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from train_fixtures import setup

    config, overrides = setup(str(tmp_path))
    results = run(config, steps=2, engines=["hf"], overrides=overrides + ["rollout.problems_per_step=2"])
    names = [r["case"] for r in results]
    assert names[:2] == ["spiral-hf", "grpo-hf"]
    assert ("trl-grpo" in names) == (importlib.util.find_spec("trl") is not None)
    for r in results:
        assert r["steps"] == 1 and r["rollout"] > 0 and r["step"] > 0 and r["tokens"] > 0, r


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=EXAMPLE)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--engines", default=None, help=f"comma-separated (default: installed: {installed_engines()})")
    ap.add_argument("--methods", default="spiral,grpo")
    ap.add_argument("--no-trl", action="store_true")
    ap.add_argument("--dynamic-sampling", action="store_true", help="keep the config's dynamic sampling")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = ap.parse_args(argv)
    results = run(
        args.config,
        steps=args.steps,
        engines=args.engines.split(",") if args.engines else None,
        methods=tuple(args.methods.split(",")),
        trl=not args.no_trl,
        overrides=args.set,
        dynamic=args.dynamic_sampling,
    )
    print(
        f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs; means over steps 2..{args.steps}"
        if args.steps > 1
        else "one step (includes warm-up)"
    )
    print_table(results)


if __name__ == "__main__":
    main()
