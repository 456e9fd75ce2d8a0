"""``spiral-fast train``: a run of the one loop (``recipe.loop``) built from a TOML config
(``recipe.config``): the model (a local HF folder or a ``.gguf`` file, with a LoRA), the
``MathTask``, the sampler, AdamW with a warm-up, metrics, samples, evaluation and checkpoints."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys

import torch
from tqdm import tqdm

from spiral_fast._version import __version__
from spiral_fast.distributed import barrier
from spiral_fast.evaluate import majority_vote, pass_at_k, recursive_aggregation
from spiral_fast.models.lora import is_peft_model
from spiral_fast.recipe import checkpoint, distributed
from spiral_fast.recipe.config import to_toml
from spiral_fast.recipe.engine import resolve_engine
from spiral_fast.recipe.faults import NonFinite, Preemption
from spiral_fast.recipe.loop import Trainer, problem_seed, train_loop
from spiral_fast.recipe.model_loading import load_model
from spiral_fast.recipe.scaling import EvalConfig, EvalResult, evaluate_task
from spiral_fast.rollout.sampler import HFSampler
from spiral_fast.rollout.vllm import VLLMSampler  # imports vLLM only when a sampler is built
from spiral_fast.tasks.data import load_jsonl
from spiral_fast.tasks.math import MathTask
from spiral_fast.tasks.rewards import has_math_verify

log = logging.getLogger("spiral_fast.train")


def build_sampler(cfg, model, task, world: int):
    """The sampler of ``rollout.engine`` ("auto": ``resolve_engine``): a ``VLLMSampler`` in
    ``rollout.dtype`` (default: ``model.dtype``), or HF generate on the model itself (full
    fine-tuning), on a merged copy of a LoRA model refreshed by ``sync`` (one process), or on an
    unsharded copy refreshed by ``sync`` (FSDP2)."""
    if resolve_engine(cfg.rollout.engine, model) == "vllm":
        dtype = cfg.rollout.dtype or cfg.model.dtype
        source = HFSampler(model, copy=True).model if world > 1 else model
        extra = (
            {} if cfg.rollout.kv_cache_gb is None else {"kv_cache_memory_bytes": int(cfg.rollout.kv_cache_gb * 2**30)}
        )
        return VLLMSampler(
            source, seed=cfg.train.seed, dtype=dtype, gpu_memory_utilization=cfg.rollout.gpu_memory_utilization, **extra
        )
    return HFSampler(model, pad_token_id=task.pad_token_id, copy=world > 1, merged=world == 1 and is_peft_model(model))


class MetricsLog:
    """OUTPUT/metrics.jsonl (one JSON line per step), OUTPUT/samples.jsonl and TensorBoard where
    installed; rank 0 only."""

    def __init__(self, output: str, enabled: bool):
        self.path = os.path.join(output, "metrics.jsonl")
        self.samples = os.path.join(output, "samples.jsonl")
        self.enabled, self.tb = enabled, None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(os.path.join(output, "tensorboard"))
            except ImportError:  # tensorboard not installed
                self.tb = None

    def truncate(self, step: int) -> None:
        """Keep the lines of steps <= step (a resumed run rewrites what came after its checkpoint)."""
        for path in (self.path, self.samples):
            if not self.enabled or not os.path.isfile(path):
                continue
            with open(path) as fh:
                rows = [line for line in fh if line.strip() and json.loads(line)["step"] <= step]
            with open(path, "w") as fh:
                fh.writelines(rows)

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, row["step"])
            self.tb.flush()

    def write_samples(self, lines: list[dict]) -> None:
        if self.enabled and lines:
            with open(self.samples, "a") as fh:
                fh.writelines(json.dumps(line) + "\n" for line in lines)


def evaluate_run(sampler, task, problems: list, cfg, step: int) -> dict:
    """Recursive self-aggregation on ``problems``, pass@k and majority vote of its step-0
    population: {"eval/rsa_acc_t": ..., "eval/pass@k": ..., "eval/majority": ...}."""
    e, r = cfg.eval, cfg.rollout
    torch.manual_seed(problem_seed(cfg.train.seed, "eval", step))
    res = recursive_aggregation(
        sampler,
        [task.prompt(p) for p in problems],
        template=task.template,
        score_fn=lambda p, resp: task.score(problems[p], resp),
        population=e.rsa_population,
        set_size=e.rsa_set_size,
        steps=e.rsa_steps,
        temperature=r.temperature,
        max_new_tokens=r.max_new_tokens,
        agg_max_new_tokens=r.agg_max_new_tokens,
        eos_token_id=task.eos_token_id,
        pad_token_id=task.pad_token_id,
        generator=torch.Generator().manual_seed(cfg.train.seed),
    )
    out = {f"eval/rsa_acc_{t}": a for t, a in enumerate(res.accuracy)}
    first = res.populations[0]
    correct = [sum(task.score(problems[p], resp) == 1.0 for resp in rows) for p, rows in enumerate(first)]
    for k in e.pass_k:
        out[f"eval/pass@{k}"] = float(pass_at_k([len(rows) for rows in first], correct, k).mean())
    votes = []
    for p, rows in enumerate(first):
        answers = [task.answer_of(resp) for resp in rows]
        winner = majority_vote(answers)
        votes.append(
            winner is not None
            and any(a == winner and task.score(problems[p], resp) == 1.0 for a, resp in zip(answers, rows))
        )
    out["eval/majority"] = sum(votes) / len(votes)
    return out


def sample_lines(task, batch, problems: list, step: int) -> list[dict]:
    """One samples.jsonl line per problem of ``batch`` (``problems``: the task's problem of each,
    or None): step, problem, answer, traces [str], sets [[int]], aggregations [[str]] (per set),
    rewards [[float]]."""
    lines = []
    for pr, problem in zip(batch.problems, problems):
        text, answer = task.describe(problem) if problem is not None else (task.decode(pr.prompt.tolist()), "")
        lines.append(
            {
                "step": step,
                "problem": text,
                "answer": answer,
                "traces": [task.decode(y.tolist()) for y in pr.traces],
                "sets": [list(s) for s in pr.sets],
                "aggregations": [[task.decode(z.tolist()) for z in zs] for zs in pr.aggregations],
                "rewards": [list(rs) for rs in pr.rewards],
            }
        )
    return lines


def build_task(cfg, tokenizer) -> MathTask:
    """The run's task: a ``MathTask`` over data.train and the first eval.num_problems rows of data.eval
    (source "jsonl"), or a ``ReasoningGymTask`` (source "reasoning_gym"); the prompts and the reward."""
    d, p = cfg.data, cfg.prompts
    prompts = dict(
        search=p.search, aggregation=p.aggregation, candidate=p.candidate, reward_timeout_s=cfg.reward.timeout_s
    )
    if d.source == "reasoning_gym":
        from spiral_fast.tasks.reasoning_gym import ReasoningGymTask  # reasoning_gym: an optional dependency

        task = ReasoningGymTask(
            tokenizer,
            d.task,
            d.task_config,
            train_size=d.train_size,
            eval_size=d.eval_size,
            seed=cfg.train.seed,
            **prompts,
        )
        task.eval_rows = task.eval_rows[: cfg.eval.num_problems]
        return task
    return MathTask(
        tokenizer,
        load_jsonl(d.train),
        load_jsonl(d.eval)[: cfg.eval.num_problems] if d.eval else [],
        reward=cfg.reward.kind,
        **prompts,
    )


def evaluate_config(cfg, config: EvalConfig, *, checkpoint_dir: str | None = None) -> EvalResult:
    """Test-time scaling (pass@k, majority vote@k, RSA per step: ``recipe.scaling.evaluate_task``) of
    the model of ``cfg`` (with the LoRA adapter of ``checkpoint_dir``/adapter when given, else the
    base model) on the first ``config.problems`` problems of data.eval, sampled with
    rollout.engine. ``config.max_new_tokens`` / ``agg_max_new_tokens`` come from the rollout
    section."""
    from dataclasses import replace

    rank, world, device = distributed.init(cfg.train.device)
    model, tokenizer = load_model(
        cfg, device, adapter=None if checkpoint_dir is None else os.path.join(checkpoint_dir, "adapter")
    )
    model.eval()
    task = build_task(cfg, tokenizer)
    if not task.eval_rows:
        raise ValueError("config key data.eval is required to evaluate")
    if cfg.data.source == "jsonl":
        task.eval_rows = load_jsonl(cfg.data.eval)
    problems = task.eval_problems(config.problems)
    config = replace(
        config, max_new_tokens=cfg.rollout.max_new_tokens, agg_max_new_tokens=cfg.rollout.agg_max_new_tokens
    )
    sampler = build_sampler(cfg, model, task, world)
    try:
        results = evaluate_task(sampler, task, problems, config, progress=True)
    finally:
        sampler.close()
    distributed.close()
    return results


def train(cfg, *, resume: bool = False, progress: bool = True) -> list[dict]:
    """Run ``cfg`` (``load_config``); returns the metrics rows of the steps run (every rank)."""
    rank, world, device = distributed.init(cfg.train.device)
    model, tokenizer = load_model(cfg, device)
    task = build_task(cfg, tokenizer)
    sampler = build_sampler(cfg, model, task, world)
    if world > 1:
        distributed.shard(model, device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), weight_decay=cfg.optim.weight_decay
    )
    warmup = cfg.optim.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    trainer = Trainer(
        model=model,
        sampler=sampler,
        task=task,
        settings=cfg.rollout,
        config=cfg.algorithm,
        optimizer=optimizer,
        scheduler=scheduler,
        rank=rank,
        world=world,
        device=device,
        seed=cfg.train.seed,
    )
    out_dir, t = cfg.train.output, cfg.train
    start, position, state = 0, 0, {}
    ckpt = checkpoint.latest(out_dir) if resume else None  # the latest complete one (with state.json)
    if ckpt is not None:
        state = checkpoint.load(ckpt, model=model, optimizer=optimizer, scheduler=scheduler, rank=rank)
        start, position = state["step"], state["data_position"]
        sampler.sync(model)
    nonfinite = NonFinite(t.max_nonfinite_steps, state.get("nonfinite_steps", 0))
    preemption = Preemption(rank)
    last_saved = [ckpt]
    logger = MetricsLog(out_dir, rank == 0)
    if rank == 0:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "config.toml"), "w") as fh:
            fh.write(f"# spiral_fast {__version__}, world size {world}\n" + to_toml(cfg.raw))
        logger.truncate(start)
        if cfg.reward.kind == "math" and not has_math_verify():
            log.warning(
                "reward 'math': math-verify is not installed, using the normalised exact match of the final "
                "answer (pip install math-verify)"
            )
        if ckpt is not None:
            tqdm.write(f"resumed from {ckpt} (step {start})")
        elif resume:
            tqdm.write(f"--resume: no checkpoint in {out_dir}, starting at step 1")
    source = task.train_problems(t.seed, position)

    def after_step(row: dict) -> bool:
        bad = nonfinite.count(row)
        if t.eval_every and task.eval_rows and row["step"] % t.eval_every == 0:
            if rank == 0:
                row.update(evaluate_run(sampler, task, task.eval_rows, cfg, row["step"]))
            barrier()
        if t.log_samples_every and row["step"] % t.log_samples_every == 0 and trainer.last_batch is not None:
            logger.write_samples(sample_lines(task, trainer.last_batch, trainer.last_problems, row["step"]))
        logger.write(row)
        nonfinite.check(row["step"], last_saved[0])  # NonFiniteError: no checkpoint of a bad state
        stop = preemption.agreed()  # every rank, every step: a signal to one rank stops all
        if not bad and (stop or (t.save_every and row["step"] % t.save_every == 0) or row["step"] == t.steps):
            last_saved[0] = checkpoint.save(
                out_dir,
                row["step"],
                model=model,
                optimizer=optimizer,
                scheduler=scheduler,
                data_position=source.position,
                tokenizer=tokenizer,
                rank=rank,
                world=world,
                extra={"nonfinite_steps": nonfinite.total},
            )
        elif bad and (stop or row["step"] == t.steps) and rank == 0:
            log.warning("step %d: no finite step since the last non-finite one, no checkpoint written", row["step"])
        if stop and rank == 0:
            name = signal.Signals(stop).name
            tqdm.write(
                f"spiral-fast train: stopped by {name} after step {row['step']}; the latest complete "
                f"checkpoint is {last_saved[0] or 'none'}; continue with --resume",
                file=sys.stderr,
            )
        return bool(stop)

    try:
        with preemption:
            rows = train_loop(
                trainer, source, steps=t.steps, start=start, progress=progress, desc="spiral train", on_step=after_step
            )
    finally:
        sampler.close()
    distributed.close()  # after a run that ended well on every rank (a failed rank's peers are stopped by torchrun)
    return rows
