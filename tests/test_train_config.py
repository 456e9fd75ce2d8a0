"""Every configuration error of spiral-fast train is a ValueError naming the key, raised before any
model is loaded; each section is its dataclass; the three settings that moved to one home still load
under their old algorithm.* spellings, with a DeprecationWarning naming the new key."""

import dataclasses
import os
import warnings

import pytest

from spiral_fast import SpiralConfig
from spiral_fast.recipe.config import MOVED, SCHEMA, load_config, parse_override, to_toml
from spiral_fast.rollout.config import RolloutConfig

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
    moved = {key for (_, key) in MOVED}
    assert moved == {"temperature", "max_grad_norm", "gradient_checkpointing"}
    assert list(SCHEMA["algorithm"]) == [f.name for f in dataclasses.fields(SpiralConfig) if f.name not in moved]
    assert list(SCHEMA["rollout"]) == [f.name for f in dataclasses.fields(RolloutConfig)]
    # one home per setting, with its documentation
    assert "temperature" in SCHEMA["rollout"] and "max_grad_norm" in SCHEMA["optim"]
    assert "gradient_checkpointing" in SCHEMA["model"]
    assert all(doc for keys in SCHEMA.values() for (_, _, doc) in keys.values())


def test_defaults_are_the_papers(files):
    cfg = load_config(files[0])
    r = cfg.rollout
    assert (r.num_traces, r.set_size, r.num_sets, r.num_aggregations, r.problems_per_step) == (8, 4, 4, 4, 256)
    assert (r.max_new_tokens, r.agg_max_new_tokens, r.temperature) == (4096, 4096, 1.0)
    assert cfg.lora.rank == 32 and cfg.optim.lr == 2e-5 and cfg.algorithm == SpiralConfig()


@pytest.mark.parametrize(
    "overrides,match",
    [
        pytest.param(["modle.path=1"], r"unknown config section \[modle\]", id="unknown-section"),
        pytest.param(["rollout.num_trace=4"], r"unknown config key rollout.num_trace", id="unknown-key"),
        pytest.param(["algorithm.clipp=1"], r"unknown config key algorithm.clipp", id="unknown-algorithm-key"),
        pytest.param(['rollout.num_traces="8"'], r"rollout.num_traces must be int", id="str-for-int"),
        pytest.param(["rollout.num_traces=8.0"], r"rollout.num_traces must be int", id="float-for-int"),
        pytest.param(["rollout.dynamic_sampling=1"], r"rollout.dynamic_sampling must be bool", id="int-for-bool"),
        pytest.param(["optim.lr=true"], r"optim.lr must be float", id="bool-for-float"),
        pytest.param(["lora.target_modules=3"], r"lora.target_modules must be str or list", id="target-modules-type"),
        pytest.param(['optim.max_grad_norm="off"'], r"optim.max_grad_norm", id="bad-none-word"),
        pytest.param(["algorithm.kl_coef=-1.0"], r"config key algorithm.kl_coef must be", id="algorithm-value"),
        pytest.param(
            ['algorithm.estimator="ppo"'], r"config key algorithm.estimator must be one of", id="algorithm-choice"
        ),
        pytest.param(['rollout.engine="sglang"'], r"rollout.engine must be one of", id="engine-choice"),
        pytest.param(['reward.kind="fuzzy"'], r"reward.kind must be one of", id="reward-choice"),
        pytest.param(['model.dtype="int8"'], r"model.dtype must be one of", id="dtype-choice"),
        pytest.param(['train.device="tpu"'], r"train.device must be one of", id="device-choice"),
        pytest.param(["rollout.num_traces=0"], r"rollout.num_traces must be an int >= 1", id="zero-traces"),
        pytest.param(["rollout.set_size=9"], r"rollout.set_size must be <= num_traces", id="set-too-big"),
        pytest.param(
            ["rollout.num_traces=4", "rollout.set_size=3", "rollout.num_sets=5"],
            r"rollout.num_sets",
            id="too-many-distinct-sets",
        ),
        pytest.param(["optim.betas=[0.9]"], r"optim.betas", id="betas"),
        pytest.param(["rollout.gpu_memory_utilization=1.5"], r"rollout.gpu_memory_utilization", id="vllm-share"),
        pytest.param(["optim.lr=0"], r"optim.lr must be a finite number > 0", id="lr"),
        pytest.param(["eval.pass_k=[1, 16]"], r"eval.pass_k", id="pass-k-over-population"),
        pytest.param(
            ['prompts.search="solve it"'], r"prompts.search must contain \{problem\}", id="search-placeholder"
        ),
        pytest.param(
            ['prompts.aggregation="{problem}"'],
            r"prompts.aggregation must contain \{candidates\}",
            id="aggregation-placeholder",
        ),
        pytest.param(
            ['prompts.candidate="{solution}"'], r"prompts.candidate must contain \{index\}", id="candidate-placeholder"
        ),
        pytest.param(
            ["rollout.temperature=0.7", "algorithm.temperature=1.0"],
            r"algorithm.temperature=1.0 and rollout.temperature=0.7 are one value, given twice by --set",
            id="alias-conflict",
        ),
        pytest.param(['model.path="/nonexistent/model"'], r"model.path", id="missing-model-dir"),
        pytest.param(['data.train="/nonexistent.jsonl"'], r"data.train: file", id="missing-train-file"),
        pytest.param(['data.eval="/nonexistent.jsonl"'], r"data.eval: file", id="missing-eval-file"),
        pytest.param(["rollout"], r"--set must be section.key=value", id="malformed-set"),
        pytest.param(
            ['algorithm.aggregation="parallel"'], r"algorithm.aggregation must be \"text\"", id="parallel-not-in-train"
        ),
    ],
)
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
    assert parse_override('lora.target_modules=["q_proj", "v_proj"]') == (
        "lora",
        "target_modules",
        ["q_proj", "v_proj"],
    )


def test_settings_come_from_their_homes(files):
    cfg = load_config(
        files[0], ["rollout.temperature=0.7", 'optim.max_grad_norm="none"', "model.gradient_checkpointing=true"]
    )
    assert cfg.algorithm.temperature == 0.7 and cfg.algorithm.max_grad_norm is None
    assert cfg.algorithm.gradient_checkpointing and cfg.optim.max_grad_norm is None
    assert cfg.rollout.temperature == 0.7 and cfg.model.gradient_checkpointing


def test_example_config_is_valid(files, tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    model, data = tmp_path / "model", tmp_path / "train.jsonl"
    cfg = load_config(
        os.path.join(root, "examples", "spiral_qwen3_4b.toml"),
        [f'model.path="{model}"', f'data.train="{data}"', f'data.eval="{data}"'],
    )
    assert cfg.lora.rank == 32 and cfg.rollout.problems_per_step == 256


# (old algorithm name, its home section, a value, a different value) for the three moved settings
MOVED_PAIRS = [
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
    out = tmp / "moved.toml"
    out.write_text(text)
    return str(out)


def _both(cfg, key, home):
    return getattr(cfg.algorithm, key), getattr(getattr(cfg, home), key)


@pytest.mark.parametrize("key, home, value, different", MOVED_PAIRS)
def test_old_spelling_loads_with_a_deprecation_warning_naming_the_new_key(files, key, home, value, different):
    old_in_file = _with_file_values(files, {"algorithm": {key: value}})
    with pytest.warns(DeprecationWarning, match=rf"algorithm.{key} is deprecated: use {home}.{key}"):
        cfg = load_config(old_in_file)
    assert _both(cfg, key, home) == (value, value)
    # the record written to the output holds the setting in its home only
    assert key not in cfg.raw["algorithm"] and cfg.raw[home][key] == value
    with pytest.warns(DeprecationWarning, match=rf"use {home}.{key}"):
        cfg = load_config(files[0], [f"algorithm.{key}={_toml(different)}"])
    assert _both(cfg, key, home) == (different, different)
    # the new spelling: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        cfg = load_config(files[0], [f"{home}.{key}={_toml(different)}"])
    assert _both(cfg, key, home) == (different, different)


@pytest.mark.parametrize("key, home, value, different", MOVED_PAIRS)
def test_command_line_overrides_the_file_under_either_spelling(files, key, home, value, different):
    both_in_file = _with_file_values(files, {"algorithm": {key: value}, home: {key: value}})
    for name in (f"algorithm.{key}", f"{home}.{key}"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            cfg = load_config(both_in_file, [f"{name}={_toml(different)}"])
        assert _both(cfg, key, home) == (different, different), name
        assert cfg.raw[home][key] == different


@pytest.mark.parametrize("key, home, value, different", MOVED_PAIRS)
def test_two_spellings_with_two_values_in_one_source_is_an_error(files, key, home, value, different):
    warnings.simplefilter("ignore", DeprecationWarning)
    conflicting_file = _with_file_values(files, {"algorithm": {key: value}, home: {key: different}})
    with pytest.raises(ValueError, match=rf"algorithm.{key}=.* and {home}.{key}=.* given twice by the config file"):
        load_config(conflicting_file)
    with pytest.raises(ValueError, match=rf"algorithm.{key}=.* and {home}.{key}=.* given twice by --set"):
        load_config(files[0], [f"algorithm.{key}={_toml(value)}", f"{home}.{key}={_toml(different)}"])
    cfg = load_config(files[0], [f"algorithm.{key}={_toml(value)}", f"{home}.{key}={_toml(value)}"])
    assert _both(cfg, key, home) == (value, value)
    one_in_file = _with_file_values(files, {home: {key: value}})
    cfg = load_config(one_in_file, [f"algorithm.{key}={_toml(different)}"])
    assert _both(cfg, key, home) == (different, different)


def test_written_config_round_trips(files, tmp_path):
    cfg = load_config(
        files[0],
        [
            "rollout.oversample=0.5",
            'rollout.kv_cache_gb="none"',
            "rollout.grpo_match=count",
            'optim.max_grad_norm="none"',
            "algorithm.clip=[0.1, 0.3]",
        ],
    )
    path = tmp_path / "config.toml"
    path.write_text(to_toml(cfg.raw))
    again = load_config(str(path))
    assert again.raw == cfg.raw
    for section in SCHEMA:
        assert getattr(again, section) == getattr(cfg, section), section


@pytest.mark.parametrize(
    "example",
    sorted(
        f
        for f in os.listdir(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"))
        if f.endswith(".toml")
    ),
)
def test_examples_use_the_new_spellings_and_take_overrides(files, tmp_path, example):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(root, "examples", example)
    data = tmp_path / "train.jsonl"
    data.write_text('{"problem": "1 + 1", "answer": "2"}\n')
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    base = [f'model.path="{model}"', f'data.train="{data}"', f'data.eval="{data}"']
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # the examples use the new spellings only
        cfg = load_config(
            path, base + ["model.gradient_checkpointing=false", "rollout.temperature=0.5", "optim.max_grad_norm=3.0"]
        )
    assert (cfg.algorithm.gradient_checkpointing, cfg.model.gradient_checkpointing) == (False, False)
    assert (cfg.algorithm.temperature, cfg.rollout.temperature) == (0.5, 0.5)
    assert (cfg.algorithm.max_grad_norm, cfg.optim.max_grad_norm) == (3.0, 3.0)
    assert cfg.rollout.engine == "auto" and cfg.rollout.grpo_match == "length"


def test_engine_vllm_without_vllm_fails_at_load_with_the_install_line(files, monkeypatch):
    from spiral_fast.recipe import engine

    monkeypatch.setattr(engine, "vllm_unavailable_reason", lambda config=None: "vLLM is not installed")
    with pytest.raises(
        ValueError, match=r"rollout.engine = \"vllm\": vLLM is not installed\. Install vLLM.*pip install"
    ):
        load_config(files[0], ['rollout.engine="vllm"'])
    assert load_config(files[0], ['rollout.engine="auto"']).rollout.engine == "auto"  # resolved when the model loads


def test_a_bad_data_row_fails_at_load(files):
    bad = files[1] / "bad.jsonl"
    bad.write_text('{"problem": "1 + 1", "answer": "2"}\n{"question": "2 + 2"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        load_config(files[0], [f'data.train="{bad}"'])


def test_reasoning_gym_source_needs_a_task(files):
    with pytest.raises(ValueError, match=r"data.task is required"):
        load_config(files[0], ['data.source="reasoning_gym"'])
    with pytest.raises(ValueError, match=r"data.source must be one of"):
        load_config(files[0], ['data.source="csv"'])
    assert SCHEMA["data"]["source"][0] == "jsonl"
    assert {"task", "task_config", "train_size", "eval_size"} <= set(SCHEMA["data"])


def test_help_config_lists_every_key_with_its_documentation(capsys):
    from spiral_fast.train import main

    with pytest.raises(SystemExit) as stop:
        main(["--help-config"])  # no --config needed
    assert stop.value.code == 0
    text = capsys.readouterr().out
    for section, keys in SCHEMA.items():
        assert f"[{section}]" in text
        for key, (_, _, doc) in keys.items():
            assert f"  {key} = " in text and doc in text, f"{section}.{key}"
    assert "oversample = 1.5" in text and 'grpo_match = "length"' in text and 'engine = "auto"' in text
