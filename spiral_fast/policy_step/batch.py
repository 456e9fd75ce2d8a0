"""``ProblemRollout`` / ``SpiralBatch``: one SPIRAL batch, validated on construction, and its
flattening into the CSR tensors of ``spiral_advantages`` and the trained sequences of the loss.

Vocabulary: P problems; per problem N traces y_i, M sets, G_j aggregations z_jg of set j. A
*trained sequence* is prompt + response: x + y_i (trace role, only for traces in some set) or
a_j + z_jg (aggregator role); its trained tokens are the response tokens. In parallel mode
(``SpiralConfig(aggregation="parallel")``) a_j is the head h_j alone, and h_j + z_jg attends to the
trace sequences of its set (their keys and values) instead of a textual copy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from spiral_fast.policy_step.advantages import advantages
from spiral_fast.policy_step.config import SpiralConfig

TRACE, AGG = 0, 1  # roles


def _tokens(what: str, seq, *, allow_empty: bool = False) -> torch.Tensor:
    """A 1-D int64 CPU tensor of token ids >= 0 from a list or an integer tensor."""
    if isinstance(seq, torch.Tensor):
        if seq.dtype.is_floating_point or seq.dtype.is_complex or seq.dtype == torch.bool:
            raise ValueError(f"{what} must hold integer token ids, got dtype {seq.dtype}")
        t = seq.detach().to("cpu", torch.int64).reshape(-1) if seq.dim() <= 1 else None
        if t is None:
            raise ValueError(f"{what} must be 1-D, got shape {tuple(seq.shape)}")
    else:
        try:
            items = list(seq)
        except TypeError:
            raise ValueError(f"{what} must be a sequence of token ids, got {type(seq).__name__}") from None
        if any(isinstance(v, bool) or not isinstance(v, int) for v in items):
            bad = next(v for v in items if isinstance(v, bool) or not isinstance(v, int))
            raise ValueError(f"{what} must hold integer token ids, got {bad!r}")
        t = torch.tensor(items, dtype=torch.int64)
    if t.numel() == 0 and not allow_empty:
        raise ValueError(f"{what} is empty")
    if t.numel() and int(t.min()) < 0:
        raise ValueError(f"{what} has a negative token id {int(t.min())}")
    return t


def _floats(what: str, values, length: int) -> torch.Tensor:
    """A 1-D float32 CPU tensor of `length` NaN-free values (log-probs)."""
    t = torch.as_tensor(values.detach() if isinstance(values, torch.Tensor) else values)
    if t.dim() != 1 or not (t.dtype.is_floating_point or t.numel() == 0):
        raise ValueError(f"{what} must be a 1-D sequence of floats, got shape {tuple(t.shape)} dtype {t.dtype}")
    if t.numel() != length:
        raise ValueError(f"{what} has {t.numel()} values but its response has {length} tokens")
    t = t.to("cpu", torch.float32)
    if bool(torch.isnan(t).any()):
        raise ValueError(f"{what} contains NaN at position {int(torch.isnan(t).nonzero()[0])}")
    return t


def _rows(what: str, value) -> list:
    """Split a list, tuple or tensor along its first dimension."""
    if isinstance(value, torch.Tensor):
        if value.dim() == 0:
            raise ValueError(f"{what} must be a sequence, got a 0-d tensor")
        return list(value.unbind(0))
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise ValueError(f"{what} must be a list or a tensor, got {type(value).__name__}")
    return list(value)


@dataclass(frozen=True, eq=False)
class ProblemRollout:
    """The rollouts of one problem, normalised to CPU tensors on construction.

    prompt: token ids of x [Lx]. traces: N responses y_i (prompt excluded). sets: M tuples of
    distinct trace indices. agg_prompts: M rendered aggregation prompts a_j (for
    ``SpiralConfig(aggregation="parallel")``: the head h_j alone, no copy of x or the traces; the
    order of a set's members then does not matter). aggregations: per set,
    G_j >= 1 responses z_jg to a_j. rewards: per set, G_j finite floats. Optional per response
    token (float, same length as the response): trace_old_logprobs [N], agg_old_logprobs ``[M][G_j]``
    (behaviour policy; without them the step is on-policy) and, beyond the paper,
    trace_ref_logprobs / agg_ref_logprobs (reference policy, needed when ``kl_coef > 0``).
    Tensors (1-D token rows, 2-D [N, L] / [M, G] blocks) or nested lists are accepted.

    After construction: prompt / traces / agg_prompts / aggregations hold int64 tensors, sets
    tuples of ints, rewards lists of floats, log-probs float32 tensors or None.
    Raises ``ValueError`` naming the set / trace / aggregation index on bad input.
    """

    prompt: object
    traces: object
    sets: object
    agg_prompts: object
    aggregations: object
    rewards: object
    trace_old_logprobs: object = None
    agg_old_logprobs: object = None
    trace_ref_logprobs: object = None
    agg_ref_logprobs: object = None

    def __post_init__(self):
        put = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen dataclass)
        put("prompt", _tokens("prompt", self.prompt))
        traces = [_tokens(f"traces[{i}]", y) for i, y in enumerate(_rows("traces", self.traces))]
        if not traces:
            raise ValueError("traces is empty: a problem needs at least one trace")
        put("traces", traces)
        sets = []
        for j, s in enumerate(_rows("sets", self.sets)):
            members = [int(v) for v in _tokens(f"sets[{j}]", s, allow_empty=True).tolist()]
            if not members:
                raise ValueError(f"sets[{j}] is empty")
            for i in members:
                if i >= len(traces):
                    raise ValueError(f"sets[{j}] names trace {i}, but there are only {len(traces)} traces")
            if len(set(members)) != len(members):
                dup = next(i for i in members if members.count(i) > 1)
                raise ValueError(f"sets[{j}] lists trace {dup} more than once")
            sets.append(tuple(members))
        if not sets:
            raise ValueError("sets is empty: a problem needs at least one set")
        put("sets", sets)
        m = len(sets)
        agg_prompts = [_tokens(f"agg_prompts[{j}]", a) for j, a in enumerate(_rows("agg_prompts", self.agg_prompts))]
        if len(agg_prompts) != m:
            raise ValueError(f"agg_prompts has {len(agg_prompts)} prompts but there are {m} sets")
        put("agg_prompts", agg_prompts)
        per_set = _rows("aggregations", self.aggregations)
        if len(per_set) != m:
            raise ValueError(f"aggregations has {len(per_set)} entries but there are {m} sets")
        aggregations = []
        for j, zs in enumerate(per_set):
            zs = [_tokens(f"aggregations[{j}][{g}]", z) for g, z in enumerate(_rows(f"aggregations[{j}]", zs))]
            if not zs:
                raise ValueError(f"aggregations[{j}] is empty: set {j} needs at least one aggregation response")
            aggregations.append(zs)
        put("aggregations", aggregations)
        put("rewards", self._rewards(aggregations))
        put("trace_old_logprobs", self._trace_lp("trace_old_logprobs", self.trace_old_logprobs))
        put("trace_ref_logprobs", self._trace_lp("trace_ref_logprobs", self.trace_ref_logprobs))
        put("agg_old_logprobs", self._agg_lp("agg_old_logprobs", self.agg_old_logprobs))
        put("agg_ref_logprobs", self._agg_lp("agg_ref_logprobs", self.agg_ref_logprobs))

    def _rewards(self, aggregations) -> list[list[float]]:
        if self.rewards is None:
            raise ValueError("rewards is missing")
        per_set = _rows("rewards", self.rewards)
        if len(per_set) != len(aggregations):
            raise ValueError(f"rewards has {len(per_set)} entries but there are {len(aggregations)} sets")
        out = []
        for j, rs in enumerate(per_set):
            rs = _rows(f"rewards[{j}]", rs)
            if len(rs) != len(aggregations[j]):
                raise ValueError(
                    f"rewards[{j}] has {len(rs)} rewards but set {j} has {len(aggregations[j])} aggregation responses"
                )
            vals = []
            for g, r in enumerate(rs):
                r = r.item() if isinstance(r, torch.Tensor) and r.numel() == 1 else r
                if r is None or isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r):
                    raise ValueError(f"rewards[{j}][{g}] must be a finite number, got {r!r}")
                vals.append(float(r))
            out.append(vals)
        return out

    def _trace_lp(self, name, value):
        if value is None:
            return None
        rows = _rows(name, value)
        if len(rows) != len(self.traces):
            raise ValueError(f"{name} has {len(rows)} entries but there are {len(self.traces)} traces")
        return [_floats(f"{name}[{i}]", lp, self.traces[i].numel()) for i, lp in enumerate(rows)]

    def _agg_lp(self, name, value):
        if value is None:
            return None
        per_set = _rows(name, value)
        if len(per_set) != len(self.sets):
            raise ValueError(f"{name} has {len(per_set)} entries but there are {len(self.sets)} sets")
        out = []
        for j, lps in enumerate(per_set):
            lps = _rows(f"{name}[{j}]", lps)
            if len(lps) != len(self.aggregations[j]):
                raise ValueError(
                    f"{name}[{j}] has {len(lps)} entries but set {j} has "
                    f"{len(self.aggregations[j])} aggregation responses"
                )
            out.append([_floats(f"{name}[{j}][{g}]", lp, self.aggregations[j][g].numel()) for g, lp in enumerate(lps)])
        return out

    def trained_traces(self) -> list[int]:
        """Indices of the traces that sit in at least one set (the others get no loss)."""
        used = {i for s in self.sets for i in s}
        return [i for i in range(len(self.traces)) if i in used]

    def unique_tokens_bound(self) -> int:
        """Tokens this problem packs to, counting x once and each a_j once: an upper bound of the
        trie's count (only prefixes shared between aggregation prompts are missed)."""
        return sum(self.part_sizes().values())

    def part_sizes(self, *, all_traces: bool = False) -> dict:
        """Unique-token bound of each part of the problem: "traces" (x + the traces in a set, or
        every trace with ``all_traces``) and, per set j, j (a_j + its G_j responses). A part keeps
        its own shared prefix (x, a_j)."""
        traces = range(len(self.traces)) if all_traces else self.trained_traces()
        sizes = {"traces": self.prompt.numel() + sum(self.traces[i].numel() for i in traces)}
        for j, (a, zs) in enumerate(zip(self.agg_prompts, self.aggregations)):
            sizes[j] = a.numel() + sum(z.numel() for z in zs)
        return sizes


@dataclass(frozen=True)
class AdvantageInputs:
    """The CSR form of a batch's structure for ``spiral_fast.spiral_advantages`` (CPU tensors).

    rewards [A] float32, agg_set [A], set_problem [S], set_members [sum K], set_offsets [S+1],
    trace_problem [N] int64; per problem p its first trace / set / aggregation response in the
    global numbering: trace_start / set_start / agg_start [P+1] (Python ints).
    """

    rewards: torch.Tensor
    agg_set: torch.Tensor
    set_problem: torch.Tensor
    set_members: torch.Tensor
    set_offsets: torch.Tensor
    trace_problem: torch.Tensor
    trace_start: list
    set_start: list
    agg_start: list


@dataclass(frozen=True)
class TrainedSequences:
    """The trained sequences of some problems, trace role first, then aggregator role.

    tokens: Q token tensors (prompt + response); prompt_lens [Q] int64 (the first trained
    position of each sequence); num_trace: the first num_trace sequences are trace role;
    seq_adv [Q] float32; old_logp / ref_logp [R] float32 over the trained tokens in (seq, pos)
    order, with old_given [R] bool (False: on-policy, use the current log-prob) and ref_logp None
    when any sequence lacks reference log-probs. contexts: None (text mode) or, in parallel mode,
    per sequence None (a trace) or the indices of the trace sequences x + y_i, i in S_j, that the
    aggregation sequence h_j + z_jg attends to (``pack_sequences(..., contexts=...)``);
    share_limits: None or, in parallel mode, |x| for a trace (each member trace is its own keys, see
    ``pack_sequences(share_limits=...)``) and None for an aggregation sequence.
    """

    tokens: list
    prompt_lens: torch.Tensor
    num_trace: int
    seq_adv: torch.Tensor
    old_logp: torch.Tensor
    old_given: torch.Tensor
    ref_logp: torch.Tensor | None
    contexts: list | None = None
    share_limits: list | None = None

    @property
    def response_lens(self) -> torch.Tensor:
        return torch.tensor([t.numel() for t in self.tokens], dtype=torch.int64) - self.prompt_lens

    def role_tokens(self) -> tuple[int, int]:
        """(trace-role trained tokens, aggregator-role trained tokens)."""
        lens = self.response_lens
        return int(lens[: self.num_trace].sum()), int(lens[self.num_trace :].sum())


class _Row(NamedTuple):
    """One trained sequence while ``SpiralBatch.trained_sequences`` collects them."""

    tokens: torch.Tensor  # prompt + response
    prompt_len: int
    adv: torch.Tensor  # 0-dim float32: the sequence's advantage
    old_logp: torch.Tensor | None  # [response_len] behaviour log-probs, None: on-policy
    ref_logp: torch.Tensor | None  # [response_len] reference log-probs
    response_len: int


@dataclass(frozen=True, eq=False)
class SpiralBatch:
    """A batch of problems: ``SpiralBatch([ProblemRollout(...), ...])``, P >= 1.

    ``advantage_inputs()`` and ``trained_sequences(problems, adv)`` give the flat forms that
    ``step`` and ``step_reference`` feed to the ops.
    """

    problems: list
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        problems = _rows("problems", self.problems)
        if not problems:
            raise ValueError("problems is empty: a SpiralBatch needs at least one ProblemRollout")
        for p, pr in enumerate(problems):
            if not isinstance(pr, ProblemRollout):
                raise ValueError(f"problems[{p}] must be a ProblemRollout, got {type(pr).__name__}")
        object.__setattr__(self, "problems", problems)

    def __len__(self) -> int:
        return len(self.problems)

    def advantage_inputs(self) -> AdvantageInputs:
        if "adv" not in self._cache:
            rewards, agg_set, set_problem, members, offsets, trace_problem = [], [], [], [], [0], []
            trace_start, set_start, agg_start = [0], [0], [0]
            for p, pr in enumerate(self.problems):
                for j, s in enumerate(pr.sets):
                    members.extend(trace_start[-1] + i for i in s)
                    offsets.append(len(members))
                    set_problem.append(p)
                    rewards.extend(pr.rewards[j])
                    agg_set.extend([set_start[-1] + j] * len(pr.rewards[j]))
                trace_problem.extend([p] * len(pr.traces))
                trace_start.append(len(trace_problem))
                set_start.append(len(set_problem))
                agg_start.append(len(rewards))
            i64 = lambda v: torch.tensor(v, dtype=torch.int64)  # noqa: E731
            self._cache["adv"] = AdvantageInputs(
                rewards=torch.tensor(rewards, dtype=torch.float32),
                agg_set=i64(agg_set),
                set_problem=i64(set_problem),
                set_members=i64(members),
                set_offsets=i64(offsets),
                trace_problem=i64(trace_problem),
                trace_start=trace_start,
                set_start=set_start,
                agg_start=agg_start,
            )
        return self._cache["adv"]

    def informative(self, config=SpiralConfig()) -> tuple[SpiralBatch | None, int]:
        """Dynamic sampling (the paper's): keep the problems that teach something.

        A problem is dropped when every advantage of it under ``config`` (its aggregation responses'
        and its traces', as ``step`` trains them, length gate included) is exactly 0, e.g. when all
        its rewards are equal. Returns (a new ``SpiralBatch`` of the kept problems in their order,
        number dropped); when every problem is dropped there is no batch to return (a
        ``SpiralBatch`` holds at least one problem): the result is (None, len(self)).
        """
        kept = [pr for pr, good in zip(self.problems, self.informative_mask(config)) if good]
        return (SpiralBatch(kept) if kept else None), len(self.problems) - len(kept)

    def informative_mask(self, config=SpiralConfig()) -> list[bool]:
        """Per problem, whether any of its advantages under ``config`` (its aggregation responses'
        and its traces', as ``step`` trains them, length gate included) is nonzero. The primitive of
        dynamic sampling, whose policy (how many to keep, when to sample more) is the recipe's
        (``spiral_fast.recipe.dynamic_sampling``)."""
        if not isinstance(config, SpiralConfig):
            raise ValueError(f"config must be a spiral_fast.SpiralConfig, got {type(config).__name__}")
        adv, flat = advantages(self, config), self.advantage_inputs()
        return [
            bool(adv.agg[flat.agg_start[p] : flat.agg_start[p + 1]].any())
            or bool(adv.trace[flat.trace_start[p] : flat.trace_start[p + 1]].any())
            for p in range(len(self.problems))
        ]

    def trained_sequences(
        self, items, agg_adv: torch.Tensor, trace_adv: torch.Tensor, *, aggregation: str = "text"
    ) -> TrainedSequences:
        """The trained sequences of the given work items, in item order within each role.

        items: problem indices p (the whole problem) or pairs (p, part) with part "traces" (its
        trace-role sequences) or a set index j (the aggregation responses of set j).
        agg_adv [A] / trace_adv [N]: global advantages (``spiral_advantages(...).agg / .trace``).
        aggregation: "text" (aggregation sequences a_j + z_jg) or "parallel" (h_j + z_jg with the
        contexts of their sets' traces; items must then be whole problems).
        """
        if aggregation not in ("text", "parallel"):
            raise ValueError(f"aggregation must be 'text' or 'parallel', got {aggregation!r}")
        parallel = aggregation == "parallel"
        if parallel and any(not isinstance(item, int) for item in items):
            bad = next(item for item in items if not isinstance(item, int))
            raise ValueError(
                f"aggregation='parallel' needs whole problems as items (a set needs its traces), got {bad!r}"
            )
        trace_row = {}  # (p, i) -> index of x + y_i among the trace-role sequences
        contexts = []  # per aggregation-role sequence: its set's trace rows (parallel mode)
        flat = self.advantage_inputs()
        agg_adv, trace_adv = agg_adv.detach().float().cpu(), trace_adv.detach().float().cpu()
        roles = {TRACE: [], AGG: []}  # role -> its _Row list
        for item in items:
            p, part = (item, None) if isinstance(item, int) else item
            pr = self.problems[p]
            if part in (None, "traces"):
                for i in pr.trained_traces():
                    trace_row[p, i] = len(roles[TRACE])
                    roles[TRACE].append(
                        _Row(
                            tokens=torch.cat([pr.prompt, pr.traces[i]]),
                            prompt_len=pr.prompt.numel(),
                            adv=trace_adv[flat.trace_start[p] + i],
                            old_logp=pr.trace_old_logprobs[i] if pr.trace_old_logprobs else None,
                            ref_logp=pr.trace_ref_logprobs[i] if pr.trace_ref_logprobs else None,
                            response_len=pr.traces[i].numel(),
                        )
                    )
            a = flat.agg_start[p]
            for j, zs in enumerate(pr.aggregations):
                for g, z in enumerate(zs):
                    if part is None or part == j:
                        contexts.append([trace_row[p, i] for i in pr.sets[j]] if parallel else None)
                        roles[AGG].append(
                            _Row(
                                tokens=torch.cat([pr.agg_prompts[j], z]),
                                prompt_len=pr.agg_prompts[j].numel(),
                                adv=agg_adv[a],
                                old_logp=pr.agg_old_logprobs[j][g] if pr.agg_old_logprobs else None,
                                ref_logp=pr.agg_ref_logprobs[j][g] if pr.agg_ref_logprobs else None,
                                response_len=z.numel(),
                            )
                        )
                    a += 1
        rows = roles[TRACE] + roles[AGG]
        old = [r.old_logp if r.old_logp is not None else torch.zeros(r.response_len) for r in rows]
        given = [torch.full((r.response_len,), r.old_logp is not None) for r in rows]
        has_ref = all(r.ref_logp is not None for r in rows)
        cat = lambda parts, dtype: torch.cat(parts) if parts else torch.zeros(0, dtype=dtype)  # noqa: E731
        return TrainedSequences(
            tokens=[r.tokens for r in rows],
            prompt_lens=torch.tensor([r.prompt_len for r in rows], dtype=torch.int64),
            num_trace=len(roles[TRACE]),
            seq_adv=torch.stack([r.adv for r in rows]) if rows else torch.zeros(0),
            old_logp=cat(old, torch.float32),
            old_given=cat(given, torch.bool),
            ref_logp=cat([r.ref_logp for r in rows], torch.float32) if has_ref and rows else None,
            contexts=[None] * len(roles[TRACE]) + contexts if parallel else None,
            share_limits=[r.prompt_len for r in roles[TRACE]] + [None] * len(roles[AGG]) if parallel else None,
        )
