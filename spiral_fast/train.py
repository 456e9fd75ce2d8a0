"""``python -m spiral_fast.train`` (and ``torchrun ... -m spiral_fast.train``): the training command."""

from __future__ import annotations

import argparse
import sys

from spiral_fast.recipe.command import train
from spiral_fast.recipe.config import help_text, load_config
from spiral_fast.recipe.user_errors import run_command


class _HelpConfig(argparse.Action):
    """--help-config: print every config section and key (default, documentation) and exit."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(help_text())
        parser.exit()


def build_parser(prog: str = "spiral-fast train") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train a model with SPIRAL from one TOML config (see examples/spiral_qwen3_4b.toml); "
        "under torchrun the problems of a step are split across ranks (FSDP2).",
    )
    parser.add_argument("--config", required=True, help="TOML file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one key (the value parsed as TOML); repeatable",
    )
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in train.output")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--help-config",
        action=_HelpConfig,
        help="list every config section and key with its default and documentation, and exit",
    )
    return parser


def main(argv: list[str] | None = None, prog: str = "spiral-fast train") -> list[dict]:
    """Parse the command line, check the whole config (ValueError before any model is loaded), train."""
    args = build_parser(prog).parse_args(sys.argv[1:] if argv is None else argv)
    cfg = load_config(args.config, args.overrides)
    return train(cfg, resume=args.resume, progress=not args.no_progress)


if __name__ == "__main__":  # a user error: one line and exit 2 (--debug: the traceback), as `spiral-fast train`
    run_command(
        lambda argv: main(argv, prog="python -m spiral_fast.train"), sys.argv[1:], prog="python -m spiral_fast.train"
    )
