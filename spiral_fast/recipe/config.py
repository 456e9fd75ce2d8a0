"""The training command's configuration: one TOML file (read with ``tomllib``), overridable key by
key with ``--set section.key=value`` (the value parsed as TOML), checked before any model loads.

Each section is one validated dataclass (``SECTIONS``: ``recipe.sections``, ``RolloutConfig`` and
``SpiralConfig`` for ``[algorithm]``); the schema (``SCHEMA``: keys, defaults, types, documentation)
is derived from their fields, and a config is valid when every section builds. TOML has no null: a
key whose value may be None takes the string "none". Each setting has one home: ``rollout.temperature``,
``optim.max_grad_norm``, ``model.gradient_checkpointing``; their older ``algorithm.*`` spellings still
load, with a DeprecationWarning naming the new key (``MOVED``).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from types import SimpleNamespace

import tomllib

from spiral_fast._fields import field_types
from spiral_fast.policy_step.config import SpiralConfig
from spiral_fast.recipe.engine import check_engine
from spiral_fast.recipe.sections import (
    DataConfig,
    EvaluationConfig,
    LoRAConfig,
    ModelConfig,
    OptimConfig,
    PromptsConfig,
    RewardConfig,
    TrainConfig,
)
from spiral_fast.rollout.config import RolloutConfig

SECTIONS = {
    "model": ModelConfig,
    "lora": LoRAConfig,
    "data": DataConfig,
    "prompts": PromptsConfig,
    "reward": RewardConfig,
    "rollout": RolloutConfig,
    "algorithm": SpiralConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "eval": EvaluationConfig,
}
# old spelling -> the setting's one home; the step's SpiralConfig takes these from their homes
MOVED = {
    ("algorithm", "temperature"): ("rollout", "temperature"),
    ("algorithm", "max_grad_norm"): ("optim", "max_grad_norm"),
    ("algorithm", "gradient_checkpointing"): ("model", "gradient_checkpointing"),
}


def _schema_of(section: str, cls) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        if (section, f.name) in MOVED:
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        types, nullable = field_types(f)
        if not types:  # an annotation like "int | tuple | None" that field_types maps partly; any TOML value
            types = (object,)
        if float in types and int not in types:
            types += (int,)  # TOML writes 1 for 1.0
        types = tuple(list if t is tuple else t for t in types) + (("none",) if nullable else ())
        default = list(default) if isinstance(default, tuple) else "none" if default is None else default
        out[f.name] = (default, types, f.metadata.get("doc") or f"spiral_fast.SpiralConfig.{f.name}")
    return out


# section -> key -> (default as TOML gives it, accepted types, documentation)
SCHEMA = {section: _schema_of(section, cls) for section, cls in SECTIONS.items()}


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


def _check_keys(given: dict) -> None:
    """ValueError naming the key for an unknown section or key."""
    for section, table in given.items():
        if section not in SCHEMA:
            raise ValueError(f"unknown config section [{section}]; sections: {list(SCHEMA)}")
        if not isinstance(table, dict):
            raise ValueError(f"config section [{section}] must be a table, got {table!r}")
        for key in table:
            if key not in SCHEMA[section] and (section, key) not in MOVED:
                raise ValueError(f"unknown config key {section}.{key}; keys of [{section}]: {list(SCHEMA[section])}")


def _move_old_spellings(source: dict, where: str) -> None:
    """algorithm.temperature & co. -> their homes, with a DeprecationWarning naming the new key."""
    for (old_s, key), (new_s, new_key) in MOVED.items():
        if key not in source.get(old_s, {}):
            continue
        value = source[old_s].pop(key)
        warnings.warn(
            f"config key {old_s}.{key} is deprecated: use {new_s}.{new_key}", DeprecationWarning, stacklevel=3
        )
        home = source.setdefault(new_s, {})
        if new_key in home and home[new_key] != value:
            raise ValueError(
                f"config keys {old_s}.{key}={value!r} and {new_s}.{new_key}={home[new_key]!r} are one "
                f"value, given twice by {where}: give {new_s}.{new_key} only"
            )
        home[new_key] = value


def _value(section: str, key: str, v):
    """A TOML value as the dataclass field takes it: "none" -> None where allowed; the algorithm's
    lists -> tuples."""
    types = SCHEMA[section][key][1]
    if v == "none" and "none" in types:
        return None
    if section == "algorithm" and isinstance(v, list):
        return tuple(None if x == "none" else x for x in v)
    return v


def _build(section: str, cls, values: dict):
    """The section's dataclass from its values; its ValueError names the config key."""
    for key, v in values.items():
        types = SCHEMA[section][key][1]
        if v == "none" and "none" in types:
            continue
        accepted = tuple(t for t in types if isinstance(t, type)) + ((int,) if float in types else ())
        if object not in types and not isinstance(v, accepted):
            names = " or ".join(
                '"none"' if t == "none" else "a number" if t is float else t.__name__ for t in dict.fromkeys(types)
            )
            raise ValueError(f"config key {section}.{key} must be {names}, got {v!r}")
        if isinstance(v, bool) and bool not in types:
            raise ValueError(f"config key {section}.{key} must be {types[0].__name__}, got {v!r}")
    try:
        return cls(**{k: _value(section, k, v) for k, v in values.items()})
    except ValueError as err:
        text = str(err)
        if text.startswith("config key "):
            raise
        field = text.split(" ", 1)[0].rstrip(":")
        if field in SCHEMA[section]:
            raise ValueError(f"config key {section}.{text}") from None
        raise ValueError(f"config section [{section}]: {text}") from None


def load_config(path: str | None, overrides=()) -> SimpleNamespace:
    """The run's configuration: defaults <- the TOML file at ``path`` <- ``overrides``
    (``section.key=value`` strings). Returns a namespace of the sections' dataclasses
    (``cfg.rollout.num_traces``; ``cfg.algorithm`` is the step's ``SpiralConfig``, its temperature,
    max_grad_norm and gradient_checkpointing taken from their homes) and ``cfg.raw``, the merged dict
    (written to the output). ValueError naming the key for an unknown section or key, a wrong type, a
    bad value, a missing or bad file; nothing is loaded."""
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
    for source, where in ((from_file, "the config file"), (from_cli, "--set")):
        _check_keys(source)
        _move_old_spellings(source, where)
    given = {s: dict(t) for s, t in from_file.items()}
    for section, table in from_cli.items():
        given.setdefault(section, {}).update(table)
    raw = {s: {k: spec[0] for k, spec in keys.items()} | given.get(s, {}) for s, keys in SCHEMA.items()}
    built = {section: _build(section, cls, raw[section]) for section, cls in SECTIONS.items() if section != "algorithm"}
    algorithm = _build("algorithm", SpiralConfig, raw["algorithm"])
    homes = {key: getattr(built[home], home_key) for (_, key), (home, home_key) in MOVED.items()}
    built = {s: built[s] if s != "algorithm" else dataclasses.replace(algorithm, **homes) for s in SECTIONS}
    _check_run(built)
    return SimpleNamespace(raw=raw, **built)


def _check_run(cfg: dict) -> None:
    """What no single section can check."""
    if cfg["algorithm"].aggregation != "text":
        # the command renders aggregation prompts as text (prompts.aggregation with the candidates):
        # training them in parallel mode would read a whole text prompt as the head
        raise ValueError(
            f'config key algorithm.aggregation must be "text" for spiral-fast train '
            f"(parallel mode is available through spiral_fast.rollout / spiral_fast.step), "
            f"got {cfg['algorithm'].aggregation!r}"
        )
    check_engine(cfg["rollout"].engine)


def help_text() -> str:
    """Every section and key with its default and documentation (``spiral-fast train --help-config``)."""
    lines = []
    for section, keys in SCHEMA.items():
        lines.append(f"[{section}]")
        for key, (default, _, doc) in keys.items():
            lines.append(f"  {key} = {to_toml_value(default)}  # {doc}")
    return "\n".join(lines)


def to_toml_value(v) -> str:
    if v is None:
        return '"none"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(to_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {to_toml_value(x)}" for k, x in v.items()) + "}"
    return repr(v)


def to_toml(raw: dict) -> str:
    """The merged configuration as TOML (written to OUTPUT/config.toml: the run's record)."""
    lines = []
    for section, table in raw.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {to_toml_value(v)}" for k, v in table.items()]
        lines.append("")
    return "\n".join(lines)
