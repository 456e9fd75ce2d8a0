"""``python -m spiral_fast.train`` (and ``torchrun ... -m spiral_fast.train``): the training command."""
from __future__ import annotations

import argparse
import sys

from spiral_fast.recipe.command import train
from spiral_fast.recipe.config import load_config


def build_parser(prog: str = "spiral-fast train") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Train a model with SPIRAL from one TOML config (see examples/spiral_qwen3_4b.toml); "
                               "under torchrun the problems of a step are split across ranks (FSDP2).")
    parser.add_argument("--config", required=True, help="TOML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one key (the value parsed as TOML); repeatable")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in train.output")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: list[str] | None = None, prog: str = "spiral-fast train") -> list[dict]:
    """Parse the command line, check the whole config (ValueError before any model is loaded), train."""
    args = build_parser(prog).parse_args(sys.argv[1:] if argv is None else argv)
    cfg = load_config(args.config, args.overrides)
    return train(cfg, resume=args.resume, progress=not args.no_progress)


if __name__ == "__main__":
    main(prog="python -m spiral_fast.train")
