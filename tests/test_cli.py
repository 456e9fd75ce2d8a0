"""The spiral-fast console script: help texts, a tiny demo run, and clear errors on bad arguments."""

from dataclasses import asdict, fields

import pytest

from spiral_fast.cli import build_parser, main


@pytest.mark.parametrize(
    "argv", [["--help"], ["demo", "--help"], ["profile-memory", "--help"]], ids=["top", "demo", "profile-memory"]
)
def test_help_describes_the_command(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "usage: spiral-fast" in text
    expected = {"--help": "profile-memory", "demo": "--iterations", "profile-memory": "--contexts"}[argv[0]]
    assert expected in text


def test_console_script_entry_point():
    from importlib.metadata import entry_points

    (script,) = entry_points(group="console_scripts", name="spiral-fast")
    assert script.value == "spiral_fast.cli:main" and script.load() is main


def test_tiny_demo_writes_png_and_metric_lines(tmp_path, capsys):
    out = tmp_path / "plots" / "demo.png"
    main(
        [
            "demo",
            "--iterations",
            "2",
            "--problems",
            "2",
            "--traces",
            "3",
            "--sets",
            "2",
            "--set-size",
            "2",
            "--aggregations",
            "2",
            "--hidden-size",
            "16",
            "--layers",
            "1",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert text.count("agg_reward") == 2 and "iter    1" in text
    assert f"plot written to {out}" in text


@pytest.mark.parametrize(
    "argv,message",
    [
        (["demo", "--iterations", "0"], "positive integer"),
        (["demo", "--iterations", "many"], "positive integer"),
        (["demo", "--step-impl", "fast"], "invalid choice"),
        (["demo", "--set-size", "9"], "--set-size must be <="),
        (["demo", "--lr", "-1"], "lr must be"),
        (["profile-memory", "--contexts", "64,x"], "positive integer"),
        (["profile-memory", "--contexts", "16"], "--contexts must exceed"),
        (["profile-memory", "--impls", "step,fast"], "--impls"),
        (["profile-memory", "--device", "cpu", "--snapshot", "snaps"], "--snapshot needs a CUDA"),
        (["profile-memory", "--model", "/nonexistent/model-dir"], "--model"),
        (["fly"], "invalid choice"),
        (["train"], "--config"),
        ([], "required"),
    ],
    ids=[
        "iterations-0",
        "iterations-word",
        "impl",
        "set-size",
        "lr",
        "contexts-word",
        "contexts-short",
        "impls",
        "snapshot-cpu",
        "model-missing",
        "unknown-command",
        "train-no-config",
        "no-command",
    ],
)
def test_bad_arguments_fail_clearly(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_demo_options_mirror_the_config():
    from spiral_fast.recipe.demo import DemoConfig

    args = build_parser().parse_args(["demo", "--base", "5"])
    assert {f.name: getattr(args, f.name) for f in fields(DemoConfig)} == asdict(DemoConfig(base=5))


def test_demo_engine_option():
    from spiral_fast.cli import build_parser
    from spiral_fast.recipe.demo import DemoConfig

    assert build_parser().parse_args(["demo", "--engine", "vllm"]).engine == "vllm"
    assert build_parser().parse_args(["demo"]).engine == "hf"
    with pytest.raises(ValueError, match="engine"):
        DemoConfig(engine="sglang")
