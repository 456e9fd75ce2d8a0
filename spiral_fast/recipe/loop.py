"""The training loop of ``spiral-fast train``: per step, the next problems -> rollout with dynamic
sampling -> ``spiral_fast.step`` with AdamW and a warm-up/constant LR -> sampler sync -> log ->
evaluate / checkpoint when due. The work lives in the library (rollout, step, evaluate) and in the
small helpers of this package; this file is the loop."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time

import torch

log = logging.getLogger("spiral_fast.train")


def problem_seed(*parts) -> int:
    """A seed from the run seed, step, round and the problem's slot in the step: each problem's
    samples are the same at any world size and after a resume."""
    return int(hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:15], 16)


def load_model(cfg, device):
    """The HF causal LM of model.path in model.dtype, with a LoRA (peft) of lora.rank unless 0."""
    from transformers import AutoModelForCausalLM

    dtype = "auto" if cfg.model.dtype == "auto" else getattr(torch, cfg.model.dtype)
    model = AutoModelForCausalLM.from_pretrained(cfg.model.path, dtype=dtype).to(device)
    if cfg.lora.rank > 0:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(cfg.train.seed)  # the adapters' init
        model = get_peft_model(model, LoraConfig(r=cfg.lora.rank, lora_alpha=cfg.lora.alpha, task_type="CAUSAL_LM",
                                                 target_modules=cfg.lora.target_modules, lora_dropout=0.0))
    model.train()
    return model


class Sampler:
    """What the rollouts sample from: the model itself (one process, HF), an unsharded copy refreshed
    after each step (FSDP2, HF: see ``distributed``), or a ``VLLMSampler`` (engine "vllm")."""

    def __init__(self, cfg, model, world: int):
        import copy

        self.engine = cfg.rollout.engine
        self.copy = copy.deepcopy(model) if world > 1 else None  # before sharding
        if self.engine == "vllm":
            from spiral_fast import VLLMSampler

            self.target = VLLMSampler(self.copy or model, seed=cfg.train.seed,
                                      gpu_memory_utilization=cfg.rollout.gpu_memory_utilization)
        else:
            self.target = self.copy or model

    def sync(self, model) -> None:
        from spiral_fast.recipe.distributed import sync_copy

        if self.copy is not None:
            sync_copy(self.copy, model)
        if self.engine == "vllm":
            self.target.sync(self.copy or model)

    def close(self) -> None:
        if self.engine == "vllm":
            self.target.close()


class Run:
    """One training run: everything the loop needs, built from the config before the first step."""

    def __init__(self, cfg):
        from transformers import AutoTokenizer

        from spiral_fast.recipe import distributed
        from spiral_fast.recipe.data import load_jsonl
        from spiral_fast.recipe.prompts import Prompts
        from spiral_fast.recipe.rewards import REWARDS, has_math_verify

        self.cfg = cfg
        self.rank, self.world, self.device = distributed.init(cfg.train.device)
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model.path)
        self.prompts = Prompts(self.tokenizer, cfg.prompts.search, cfg.prompts.aggregation, cfg.prompts.candidate)
        self.train_rows = load_jsonl(cfg.data.train)
        self.eval_rows = load_jsonl(cfg.data.eval)[:cfg.eval.num_problems] if cfg.data.eval else []
        self.reward = REWARDS[cfg.reward.kind]
        self.notices = []
        if cfg.reward.kind == "math" and not has_math_verify():
            self.notices.append("reward 'math': math-verify is not installed, using the normalised exact match "
                                "of the final answer (pip install math-verify)")
        eos = self.tokenizer.eos_token_id
        self.eos = eos
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else (eos or 0)
        self.model = load_model(cfg, self.device)
        self.sampler = Sampler(cfg, self.model, self.world)
        if self.world > 1:
            distributed.shard(self.model, self.device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                           weight_decay=cfg.optim.weight_decay)
        warmup = cfg.optim.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)

    def rollout_kwargs(self) -> dict:
        r = self.cfg.rollout
        return dict(temperature=r.temperature, max_new_tokens=r.max_new_tokens, agg_max_new_tokens=r.agg_max_new_tokens,
                    eos_token_id=self.eos, pad_token_id=self.pad, engine=r.engine)

    def sample(self, ids: list[int], step: int, rnd: int):
        """This rank's share of problems ``ids`` (a step's global list) sampled as ProblemRollouts."""
        import spiral_fast

        r = self.cfg.rollout
        mine = list(range(self.rank, len(ids), self.world))
        if not mine:
            return []
        rows = [self.train_rows[ids[k]] for k in mine]
        xs = [self.prompts.search(row["problem"]) for row in rows]

        def run(prompts, answers, generator):
            def reward_fn(p, set_traces, z):
                return self.reward(self.prompts.decode(z), answers[p])

            return spiral_fast.rollout(self.sampler.target, prompts, reward_fn=reward_fn,
                                       template=self.prompts.template, num_traces=r.num_traces,
                                       num_sets=r.num_sets, set_size=r.set_size,
                                       num_aggregations=r.num_aggregations, generator=generator,
                                       **self.rollout_kwargs()).problems

        if r.engine == "vllm":  # one batched request: vLLM's own seed drives sampling
            gen = torch.Generator().manual_seed(problem_seed(self.cfg.train.seed, step, rnd, self.rank))
            return run(xs, [row["answer"] for row in rows], gen)
        out = []
        for k, x, row in zip(mine, xs, rows):  # per problem: its samples do not depend on the world size
            seed = problem_seed(self.cfg.train.seed, step, rnd, k)
            torch.manual_seed(seed)
            out += run([x], [row["answer"]], torch.Generator().manual_seed(seed))
        return out

    def rollout_step(self, stream, step: int):
        """(SpiralBatch of this rank, global counts): problems_per_step problems over all ranks; with
        dynamic sampling, problems whose advantages are all 0 are dropped and more are sampled, up
        to rollout.max_extra_rounds extra rounds."""
        from spiral_fast import SpiralBatch
        from spiral_fast.recipe.distributed import sum_ints

        r = self.cfg.rollout
        kept, last, need = [], [], r.problems_per_step
        sampled = dropped = trace_tokens = agg_tokens = rounds = 0
        for rnd in range(1 + (r.max_extra_rounds if r.dynamic_sampling else 0)):
            problems = self.sample(stream.take(need), step, rnd)
            rounds += 1
            sampled += len(problems)
            trace_tokens += sum(y.numel() for pr in problems for y in pr.traces)
            agg_tokens += sum(z.numel() for pr in problems for zs in pr.aggregations for z in zs)
            last = problems or last
            good = problems
            if r.dynamic_sampling and problems:
                batch, n = SpiralBatch(problems).informative(self.cfg.algorithm)
                good, dropped = ([] if batch is None else batch.problems), dropped + n
            kept += good
            total = sum_ints([len(kept)], self.device)[0]
            need = r.problems_per_step - total
            if not r.dynamic_sampling or need <= 0:
                break
        if not kept:
            # nothing informative on this rank: one of its problems keeps it in the step (zero
            # advantages: no gradient; every rank must run the step's collectives)
            kept = last[:1]
        counts = sum_ints([len(kept), sampled, dropped, trace_tokens, agg_tokens], self.device)
        return SpiralBatch(kept), dict(zip(("problems", "problems_sampled", "problems_dropped",
                                            "trace_tokens_sampled", "agg_tokens_sampled"), map(float, counts)),
                                       rounds=float(rounds))

    def evaluate(self, step: int) -> dict:
        """Recursive self-aggregation on the eval problems (rank 0), pass@k and majority vote of its
        step-0 population: {"eval/rsa_acc_t": ..., "eval/pass@k": ..., "eval/majority": ...}."""
        from spiral_fast import evaluate as ev
        from spiral_fast.recipe.rewards import extract_answer, normalize

        e = self.cfg.eval
        answers = [row["answer"] for row in self.eval_rows]
        torch.manual_seed(problem_seed(self.cfg.train.seed, "eval", step))
        res = ev.recursive_aggregation(
            self.sampler.target, [self.prompts.search(row["problem"]) for row in self.eval_rows],
            template=self.prompts.template,
            score_fn=lambda p, resp: self.reward(self.prompts.decode(resp), answers[p]),
            population=e.rsa_population, set_size=e.rsa_set_size, steps=e.rsa_steps,
            generator=torch.Generator().manual_seed(self.cfg.train.seed), **self.rollout_kwargs())
        out = {f"eval/rsa_acc_{t}": a for t, a in enumerate(res.accuracy)}
        first = res.populations[0]
        correct = [sum(self.reward(self.prompts.decode(r), answers[p]) == 1.0 for r in rows)
                   for p, rows in enumerate(first)]
        for k in e.pass_k:
            out[f"eval/pass@{k}"] = float(ev.pass_at_k([len(rows) for rows in first], correct, k).mean())
        votes = []
        for p, rows in enumerate(first):
            found = [extract_answer(self.prompts.decode(r)) for r in rows]
            winner = ev.majority_vote([None if a is None else normalize(a) for a in found])
            votes.append(winner is not None and self.reward(f"\\boxed{{{winner}}}", answers[p]) == 1.0)
        out["eval/majority"] = sum(votes) / len(votes)
        return out


class MetricsLog:
    """OUTPUT/metrics.jsonl (one JSON line per step) and TensorBoard where installed; rank 0 only."""

    def __init__(self, output: str, enabled: bool):
        self.path = os.path.join(output, "metrics.jsonl")
        self.enabled, self.tb = enabled, None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(os.path.join(output, "tensorboard"))
            except ImportError:  # tensorboard not installed
                self.tb = None

    def truncate(self, step: int) -> None:
        """Keep the lines of steps <= step (a resumed run rewrites what came after its checkpoint)."""
        if not self.enabled or not os.path.isfile(self.path):
            return
        with open(self.path) as fh:
            rows = [line for line in fh if line.strip() and json.loads(line)["step"] <= step]
        with open(self.path, "w") as fh:
            fh.writelines(rows)

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for key, value in row.items():
                if key != "step":
                    self.tb.add_scalar(key, value, row["step"])
            self.tb.flush()


def train(cfg, *, resume: bool = False, progress: bool = True) -> list[dict]:
    """Run ``cfg`` (``load_config``); returns the metrics rows of the steps run (every rank)."""
    import spiral_fast
    from tqdm import tqdm

    from spiral_fast.recipe import checkpoint
    from spiral_fast.recipe.config import to_toml
    from spiral_fast.recipe.data import ProblemStream

    run = Run(cfg)
    out_dir, t = cfg.train.output, cfg.train
    start, position = 0, 0
    ckpt = checkpoint.latest(out_dir) if resume else None
    if ckpt is not None:
        state = checkpoint.load(ckpt, model=run.model, optimizer=run.optimizer, scheduler=run.scheduler, rank=run.rank)
        start, position = state["step"], state["data_position"]
        run.sampler.sync(run.model)
    logger = MetricsLog(out_dir, run.rank == 0)
    if run.rank == 0:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "config.toml"), "w") as fh:
            fh.write(f"# spiral_fast {spiral_fast.__version__}, world size {run.world}\n" + to_toml(cfg.raw))
        logger.truncate(start)
        for notice in run.notices:
            log.warning(notice)
        if ckpt is not None:
            tqdm.write(f"resumed from {ckpt} (step {start})")
        elif resume:
            tqdm.write(f"--resume: no checkpoint in {out_dir}, starting at step 1")
    stream = ProblemStream(len(run.train_rows), t.seed, position)
    rows = []
    bar = tqdm(range(start + 1, t.steps + 1), desc="spiral train", disable=not progress or run.rank != 0,
               initial=start, total=t.steps)
    for step in bar:
        t0 = time.perf_counter()
        batch, counts = run.rollout_step(stream, step)
        t1 = time.perf_counter()
        lr = run.scheduler.get_last_lr()[0]
        out = spiral_fast.step(run.model, batch, config=cfg.algorithm, optimizer=run.optimizer)
        run.scheduler.step()
        t2 = time.perf_counter()
        run.sampler.sync(run.model)
        t3 = time.perf_counter()
        row = {"step": step, **out.metrics, **counts, "lr": lr, "seconds_rollout": t1 - t0, "seconds_step": t2 - t1,
               "seconds_sync": t3 - t2}
        if t.eval_every and run.eval_rows and step % t.eval_every == 0:
            if run.rank == 0:
                row.update(run.evaluate(step))
            from spiral_fast.recipe.distributed import barrier

            barrier()
        logger.write(row)
        rows.append(row)
        bar.set_postfix(loss=f"{row['loss']:+.4f}", reward=f"{row['agg_reward_mean']:.3f}",
                        problems=int(row["problems"]))
        if (t.save_every and step % t.save_every == 0) or step == t.steps:
            checkpoint.save(out_dir, step, model=run.model, optimizer=run.optimizer, scheduler=run.scheduler,
                            data_position=stream.position, tokenizer=run.tokenizer, rank=run.rank, world=run.world)
    run.sampler.close()
    return rows
