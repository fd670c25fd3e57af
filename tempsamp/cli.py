"""The `tempsamp` command line: a thin layer over the library.

Each subcommand lives in the module that owns its work and exposes
``register(subparsers)``; modules keep heavy imports (torch, transformers)
inside their handlers so ``tempsamp --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules that register subcommands, in the order --help lists them.
COMMAND_MODULES = [
    "tempsamp.data.cli",
    "tempsamp.train.cli",
    "tempsamp.evaluation.run_cli",
    "tempsamp.evaluation.score_cli",
    "tempsamp.evaluation.compare",
    "tempsamp.evaluation.view",
    "tempsamp.demo",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tempsamp",
        description="TempSamp-R1: mixed-policy RL fine-tuning of video LLMs for temporal grounding.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
