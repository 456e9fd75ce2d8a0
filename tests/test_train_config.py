"""Every configuration error of spiral-fast train is a ValueError naming the key, raised before any
model is loaded; the algorithm section follows SpiralConfig's fields; the reward functions."""
import dataclasses
import os

import pytest

from spiral_fast import SpiralConfig
from spiral_fast.recipe.config import SCHEMA, load_config, parse_override

SECTIONS = ["model", "lora", "data", "prompts", "reward", "rollout", "algorithm", "optim", "train", "eval"]


@pytest.fixture
def files(tmp_path):
    model = tmp_path / "model"
    model.mkdir()  # never loaded: every error below comes first
    data = tmp_path / "train.jsonl"
    data.write_text('{"problem": "1 + 1", "answer": "2"}\n')
    config = tmp_path / "run.toml"
    config.write_text(f'[model]\npath = "{model}"\n[data]\ntrain = "{data}"\n')
    return str(config), tmp_path


def test_sections_and_algorithm_keys_follow_spiral_config():
    assert list(SCHEMA) == SECTIONS
    assert list(SCHEMA["algorithm"]) == [f.name for f in dataclasses.fields(SpiralConfig)]
    assert set(SCHEMA["rollout"]) == {"engine", "problems_per_step", "num_traces", "set_size", "num_sets",
                                      "num_aggregations", "max_new_tokens", "agg_max_new_tokens", "temperature",
                                      "dynamic_sampling", "max_extra_rounds", "gpu_memory_utilization", "method",
                                      "dtype", "behaviour_logprobs", "kv_cache_gb"}


def test_defaults_are_the_papers(files):
    cfg = load_config(files[0])
    r = cfg.rollout
    assert (r.num_traces, r.set_size, r.num_sets, r.num_aggregations, r.problems_per_step) == (8, 4, 4, 4, 256)
    assert (r.max_new_tokens, r.agg_max_new_tokens, r.temperature) == (4096, 4096, 1.0)
    assert cfg.lora.rank == 32 and cfg.optim.lr == 2e-5 and cfg.algorithm == SpiralConfig()


@pytest.mark.parametrize("overrides,match", [
    pytest.param(["modle.path=1"], r"unknown config section \[modle\]", id="unknown-section"),
    pytest.param(["rollout.num_trace=4"], r"unknown config key rollout.num_trace", id="unknown-key"),
    pytest.param(["algorithm.clipp=1"], r"unknown config key algorithm.clipp", id="unknown-algorithm-key"),
    pytest.param(["rollout.num_traces=\"8\""], r"rollout.num_traces must be int", id="str-for-int"),
    pytest.param(["rollout.num_traces=8.0"], r"rollout.num_traces must be int", id="float-for-int"),
    pytest.param(["rollout.dynamic_sampling=1"], r"rollout.dynamic_sampling must be bool", id="int-for-bool"),
    pytest.param(["optim.lr=true"], r"optim.lr must be int or float", id="bool-for-float"),
    pytest.param(["lora.target_modules=3"], r"lora.target_modules must be str or list", id="target-modules-type"),
    pytest.param(["optim.max_grad_norm=\"off\""], r"optim.max_grad_norm", id="bad-none-word"),
    pytest.param(["algorithm.kl_coef=-1.0"], r"\[algorithm\]: kl_coef", id="algorithm-value"),
    pytest.param(["algorithm.estimator=\"ppo\""], r"\[algorithm\]: estimator", id="algorithm-choice"),
    pytest.param(["rollout.engine=\"sglang\""], r"rollout.engine must be one of", id="engine-choice"),
    pytest.param(["reward.kind=\"fuzzy\""], r"reward.kind must be one of", id="reward-choice"),
    pytest.param(["model.dtype=\"int8\""], r"model.dtype must be one of", id="dtype-choice"),
    pytest.param(["train.device=\"tpu\""], r"train.device must be one of", id="device-choice"),
    pytest.param(["rollout.num_traces=0"], r"rollout.num_traces must be >= 1", id="zero-traces"),
    pytest.param(["rollout.set_size=9"], r"rollout.set_size must be <= rollout.num_traces", id="set-too-big"),
    pytest.param(["rollout.num_traces=4", "rollout.set_size=3", "rollout.num_sets=5"], r"rollout.num_sets",
                 id="too-many-distinct-sets"),
    pytest.param(["optim.betas=[0.9]"], r"optim.betas", id="betas"),
    pytest.param(["rollout.gpu_memory_utilization=1.5"], r"rollout.gpu_memory_utilization", id="vllm-share"),
    pytest.param(["optim.lr=0"], r"optim.lr must be > 0", id="lr"),
    pytest.param(["eval.pass_k=[1, 16]"], r"eval.pass_k", id="pass-k-over-population"),
    pytest.param(["prompts.search=\"solve it\""], r"prompts.search must contain \{problem\}", id="search-placeholder"),
    pytest.param(["prompts.aggregation=\"{problem}\""], r"prompts.aggregation must contain \{candidates\}",
                 id="aggregation-placeholder"),
    pytest.param(["prompts.candidate=\"{solution}\""], r"prompts.candidate must contain \{index\}",
                 id="candidate-placeholder"),
    pytest.param(["rollout.temperature=0.7", "algorithm.temperature=1.0"],
                 r"algorithm.temperature=1.0 and rollout.temperature=0.7 are one value, given twice by --set",
                 id="alias-conflict"),
    pytest.param(["model.path=\"/nonexistent/model\""], r"model.path", id="missing-model-dir"),
    pytest.param(["data.train=\"/nonexistent.jsonl\""], r"data.train: file", id="missing-train-file"),
    pytest.param(["data.eval=\"/nonexistent.jsonl\""], r"data.eval: file", id="missing-eval-file"),
    pytest.param(["rollout"], r"--set must be section.key=value", id="malformed-set"),
    pytest.param(["algorithm.aggregation=\"parallel\""], r"algorithm.aggregation must be \"text\"",
                 id="parallel-not-in-train"),
])
def test_config_errors_name_the_key(files, overrides, match):
    with pytest.raises(ValueError, match=match):
        load_config(files[0], overrides)


def test_missing_or_invalid_file_and_errors_come_before_loading(files, monkeypatch):
    from spiral_fast.recipe import command
    from spiral_fast.train import main

    with pytest.raises(ValueError, match="config file '/nonexistent.toml' does not exist"):
        load_config("/nonexistent.toml")
    bad = files[1] / "bad.toml"
    bad.write_text("[model\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_config(str(bad))
    monkeypatch.setattr(command, "load_model", lambda *a: pytest.fail("a model was loaded"))
    with pytest.raises(ValueError, match="rollout.num_traces"):
        main(["--config", files[0], "--set", "rollout.num_traces=x1"])


def test_set_values_parse_as_toml():
    assert parse_override("rollout.temperature=0.7") == ("rollout", "temperature", 0.7)
    assert parse_override("eval.pass_k=[1, 2]") == ("eval", "pass_k", [1, 2])
    assert parse_override("model.path=/data/qwen") == ("model", "path", "/data/qwen")
    assert parse_override('lora.target_modules=["q_proj", "v_proj"]') == ("lora", "target_modules",
                                                                          ["q_proj", "v_proj"])


def test_aliases_fill_each_other(files):
    cfg = load_config(files[0], ["rollout.temperature=0.7", "optim.max_grad_norm=\"none\"",
                                 "model.gradient_checkpointing=true"])
    assert cfg.algorithm.temperature == 0.7 and cfg.algorithm.max_grad_norm is None
    assert cfg.algorithm.gradient_checkpointing and cfg.optim.max_grad_norm is None


def test_example_config_is_valid(files, tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    model, data = tmp_path / "model", tmp_path / "train.jsonl"
    cfg = load_config(os.path.join(root, "examples", "spiral_qwen3_4b.toml"),
                      [f'model.path="{model}"', f'data.train="{data}"', f'data.eval="{data}"'])
    assert cfg.lora.rank == 32 and cfg.rollout.problems_per_step == 256


# (algorithm name, other section, a value, a different value) for the three aliased values (issue 16)
ALIAS_PAIRS = [
    pytest.param("temperature", "rollout", 0.7, 0.9, id="temperature"),
    pytest.param("max_grad_norm", "optim", 0.5, 2.0, id="max_grad_norm"),
    pytest.param("gradient_checkpointing", "model", True, False, id="gradient_checkpointing"),
]


def _toml(v) -> str:
    return "true" if v is True else "false" if v is False else repr(v)


def _with_file_values(files, table: dict) -> str:
    """The fixture's config file plus `table` ({section: {key: value}})."""
    path, tmp = files
    text = open(path).read()
    for section, keys in table.items():
        body = "".join(f"{k} = {_toml(v)}\n" for k, v in keys.items())
        if f"[{section}]\n" in text:
            text = text.replace(f"[{section}]\n", f"[{section}]\n{body}")
        else:
            text += f"[{section}]\n{body}"
    out = tmp / "aliases.toml"
    out.write_text(text)
    return str(out)


def _both(cfg, key, other):
    return getattr(cfg.algorithm, key), getattr(getattr(cfg, other), key)


@pytest.mark.parametrize("key, other, value, different", ALIAS_PAIRS)
def test_alias_set_on_the_command_line_overrides_the_file_for_both_names(files, key, other, value, different):
    both_in_file = _with_file_values(files, {"algorithm": {key: value}, other: {key: value}})
    for name in (f"algorithm.{key}", f"{other}.{key}"):
        cfg = load_config(both_in_file, [f"{name}={_toml(different)}"])
        assert _both(cfg, key, other) == (different, different), name
        assert cfg.raw["algorithm"][key] == cfg.raw[other][key] == different


@pytest.mark.parametrize("key, other, value, different", ALIAS_PAIRS)
def test_alias_conflict_is_an_error_only_within_one_source(files, key, other, value, different):
    conflicting_file = _with_file_values(files, {"algorithm": {key: value}, other: {key: different}})
    with pytest.raises(ValueError, match=rf"algorithm.{key}=.* and {other}.{key}=.* given twice by the config file"):
        load_config(conflicting_file)
    with pytest.raises(ValueError, match=rf"algorithm.{key}=.* and {other}.{key}=.* given twice by --set"):
        load_config(files[0], [f"algorithm.{key}={_toml(value)}", f"{other}.{key}={_toml(different)}"])
    # the same value under both names, in one source, is fine
    cfg = load_config(files[0], [f"algorithm.{key}={_toml(value)}", f"{other}.{key}={_toml(value)}"])
    assert _both(cfg, key, other) == (value, value)
    # the file gives one name, the command line the other: the command line wins, no error
    one_in_file = _with_file_values(files, {other: {key: value}})
    cfg = load_config(one_in_file, [f"algorithm.{key}={_toml(different)}"])
    assert _both(cfg, key, other) == (different, different)


@pytest.mark.parametrize("example", sorted(f for f in os.listdir(os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "examples")) if f.endswith(".toml")))
def test_examples_set_each_aliased_value_once_and_take_overrides(files, tmp_path, example):
    import tomllib

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(root, "examples", example)
    with open(path, "rb") as fh:
        raw = tomllib.load(fh)
    from spiral_fast.recipe.config import ALIASES

    for key, other in ALIASES.items():
        assert not (key in raw.get("algorithm", {}) and key in raw.get(other, {})), f"{example} sets {key} twice"
    data = tmp_path / "train.jsonl"
    data.write_text('{"problem": "1 + 1", "answer": "2"}\n')
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    base = [f'model.path="{model}"', f'data.train="{data}"', f'data.eval="{data}"']
    cfg = load_config(path, base + ["model.gradient_checkpointing=false", "rollout.temperature=0.5",
                                    "algorithm.max_grad_norm=3.0"])
    assert (cfg.algorithm.gradient_checkpointing, cfg.model.gradient_checkpointing) == (False, False)
    assert (cfg.algorithm.temperature, cfg.rollout.temperature) == (0.5, 0.5)
    assert (cfg.algorithm.max_grad_norm, cfg.optim.max_grad_norm) == (3.0, 3.0)
