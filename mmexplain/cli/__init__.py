"""The ``mmexplain`` command: one file per subcommand in this package.

Each module named in ``COMMANDS`` defines ``add_<name>_command(subparsers)``, which adds
its parser and sets ``func=`` to a handler ``handler(args) -> int``. This file only
wires them up, so importing the CLI stays cheap and a subcommand's heavy imports
happen when it runs. Shared option spellings and checks live in ``common``.

Errors the user can fix (``mmexplain.errors.InputError``, of which ``CLIError`` is one,
and missing, unreadable or unwritable files) are printed as one line on stderr with exit
status 2 (set ``MMEXPLAIN_TRACEBACK=1`` to see the traceback instead); any other
exception is a bug and shows its traceback. Either starts on a line of its own, also
after a progress bar. Nothing is left half-written because every writer goes through
``mmexplain._io``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ..errors import InputError
from .common import CLIError

__all__ = ["main", "build_parser", "CLIError", "COMMANDS"]

# subcommand -> module that defines add_<subcommand>_command(subparsers)
COMMANDS: dict[str, str] = {
    "demo": "mmexplain.cli.demo",
    "caption": "mmexplain.cli.caption",
    "vqa": "mmexplain.cli.vqa",
    "classify": "mmexplain.cli.classify",
    "evaluate": "mmexplain.cli.evaluate",
    "dissect": "mmexplain.cli.dissect",
    "explain-dataset": "mmexplain.cli.explain_dataset",
    "train": "mmexplain.cli.train",
}

# errors a user can fix from the command line: one line, exit 2 (OSError: a missing, unreadable or
# unwritable file, a full disk); ValueError and TypeError stay here until every check raises InputError
USER_ERRORS = (InputError, OSError)


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block): ``mmexplain CMD: error: argument --x: ...``."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mmexplain",
        description="Show what vision and vision-language models look at (Grad-CAM for any scalar).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        getattr(importlib.import_module(module_name), f"add_{name.replace('-', '_')}_command")(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a bad option (already printed as one line)
        return exc.code if isinstance(exc.code, int) else 2
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        start_line(args)
        if os.environ.get("MMEXPLAIN_TRACEBACK"):
            raise
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"mmexplain {args.command}: error: {text}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        start_line(args)
        print(f"mmexplain {args.command}: interrupted; nothing was left half-written", file=sys.stderr)
        return 130
    except BaseException:
        start_line(args)
        raise


def start_line(args: argparse.Namespace) -> None:
    """Put stderr at the start of an empty line, whatever a progress bar left there.

    On a terminal the bar's line is cleared; to a file or pipe, where bars only appear with
    ``--progress``, a newline ends the bar's line.
    """
    if sys.stderr.isatty():
        sys.stderr.write("\r\x1b[K")
    elif getattr(args, "progress", None) and "tqdm" in sys.modules:
        sys.stderr.write("\n")
    sys.stderr.flush()
