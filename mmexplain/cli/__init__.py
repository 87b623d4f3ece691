"""The ``mmexplain`` command.

Each subcommand lives beside the code it drives: the module named in ``COMMANDS``
defines ``add_<name>_command(subparsers)``, which adds its parser and sets
``func=`` to a handler ``handler(args) -> int``. This file only wires them up, so
importing the CLI stays cheap and a subcommand's heavy imports happen when it runs.

Errors the user can fix (``CLIError``, ``ValueError``, ``FileNotFoundError``) are
printed as one line on stderr with exit status 2; nothing is left half-written
because every writer in the package writes atomically.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> module that defines add_<subcommand>_command(subparsers)
COMMANDS: dict[str, str] = {
    "demo": "mmexplain.cli.demo",
    "classify": "mmexplain.cli.classify",
    "caption": "mmexplain.cli.caption",
    "vqa": "mmexplain.cli.caption",
    "evaluate": "mmexplain.evaluation.grounding",
    "train": "mmexplain.training.zoo",
    "dissect": "mmexplain.cli.dissect",
}


class CLIError(Exception):
    """An error in the user's command line or input files: printed as one line, exit 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmexplain",
        description="Show what vision and vision-language models look at (Grad-CAM for any scalar).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # a subcommand whose module is not part of this build
        getattr(module, f"add_{name}_command")(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.func(args) or 0)
    except (CLIError, ValueError, FileNotFoundError, IsADirectoryError) as exc:
        print(f"mmexplain {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # run through the package so CLIError is one class, not __main__.CLIError
    from mmexplain.cli import main as _main

    sys.exit(_main())
