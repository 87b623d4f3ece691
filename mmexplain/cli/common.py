"""What every command shares: the one error type, option spellings and their checks.

Each option is spelled once here (``--models``, ``--out``, ``--threads``, ``--scenes``)
so that every command accepts and checks it the same way. Checks run before any model
is loaded, and nothing is created by a check.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..errors import InputError

__all__ = [
    "CLIError", "positive_int", "nonnegative_int", "add_threads", "apply_threads", "add_models", "add_scenes",
    "add_progress", "show_progress", "check_out", "check_image", "load_zoo_model", "scene_seeds", "FIGURE_SUFFIXES",
]

# what matplotlib writes without extra packages (checked without importing matplotlib)
FIGURE_SUFFIXES = (".png", ".pdf", ".svg", ".svgz", ".jpg", ".jpeg", ".eps", ".ps", ".tif", ".tiff", ".webp")


class CLIError(InputError):
    """An error in the user's command line or input files: printed as one line, exit 2."""


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def add_threads(parser: argparse.ArgumentParser, *, default: int | None = 2) -> None:
    what = f"default {default}" if default is not None else "default: torch's own"
    parser.add_argument("--threads", type=positive_int, default=default, metavar="N", help=f"torch CPU threads ({what})")


def apply_threads(args: argparse.Namespace) -> None:
    """Set torch's CPU threads from ``--threads`` (when given)."""
    if getattr(args, "threads", None) is not None:
        import torch

        torch.set_num_threads(args.threads)


def add_progress(parser: argparse.ArgumentParser) -> None:
    """``--progress`` / ``--quiet``: progress bars on or off (default: on when stderr is a terminal)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--progress", dest="progress", action="store_true", default=None,
                       help="show progress bars also when stderr is not a terminal")
    group.add_argument("--quiet", dest="progress", action="store_false",
                       help="no progress bars (default when stderr is not a terminal)")


def show_progress(args: argparse.Namespace) -> bool:
    """Whether to draw progress bars: ``--progress``/``--quiet``, else whether stderr is a terminal."""
    value = getattr(args, "progress", None)
    return sys.stderr.isatty() if value is None else bool(value)


def add_models(parser: argparse.ArgumentParser) -> None:
    """``--models DIR``: the folder holding the shipped models (old spelling ``--root`` kept)."""
    parser.add_argument("--models", "--root", dest="models", default=None, metavar="DIR",
                        help="models folder holding captioner/, vqa/, ... (default: the package's models/)")


def add_scenes(parser: argparse.ArgumentParser, *, default: int, what: str = "ShapeWorld scenes") -> None:
    """``--scenes N`` (alias ``--n``; the long name survives torchrun's own option parser)."""
    parser.add_argument("--scenes", "--n", dest="scenes", type=positive_int, default=default, metavar="N",
                        help=f"{what} (default {default})")


def scene_seeds(scenes: int, *, start: int = 0, start_option: str = "--offset", split: str = "test") -> range:
    """``--scenes`` ShapeWorld seeds of ``split`` after ``start``; CLIError naming the options past the split's end."""
    from .. import world

    size = len(world.SPLITS[split])
    if start + scenes > size:
        what = "held-out test" if split == "test" else split
        raise CLIError(f"--scenes {scenes}{f' after {start_option} {start}' if start else ''}: the {what} split has "
                       f"{size} scenes" + (f"; at most {max(size - start, 0)} after {start_option} {start}" if start else ""))
    return world.split_seeds(split, scenes, start=start)


def check_out(out: str, *, kind: str, suffixes: Sequence[str] = (), option: str = "--out") -> Path:
    """Validate ``--out`` before any work; nothing is created.

    Args:
        out: the option's value.
        kind: ``"file"`` (``suffixes`` lists the accepted extensions) or ``"folder"``.
        option: the option's spelling in messages (``"--json"``, ``"--html"``).

    Raises:
        CLIError: a wrong extension, a folder where a file is wanted (or the reverse), or a
            parent that is not a writable folder.
    """
    path = Path(out)
    if kind == "file":
        if path.suffix.lower() not in suffixes:
            raise CLIError(f"{option} {out!r}: expected a file ending in {', '.join(suffixes)}")
        if path.is_dir():
            raise CLIError(f"{option} {out!r} is a folder; give a file name such as result{suffixes[0]}")
    elif kind == "folder":
        if path.exists() and not path.is_dir():
            raise CLIError(f"{option} {out!r} exists and is not a folder")
        from .._io import check_replaceable

        try:
            check_replaceable(path, option=option)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
    else:
        raise InputError(f"kind: expected 'file' or 'folder', got {kind!r}")
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise CLIError(f"{option} {out!r}: {str(parent)!r} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CLIError(f"{option} {out!r}: the folder {str(parent)!r} is not writable")
    try:  # root passes os.access even on /sys or /proc: try a nameless file there, gone at once
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        raise CLIError(f"{option} {out!r}: cannot write in the folder {str(parent)!r} ({exc.strerror or exc})") from exc
    return path


def check_image(image: str, *, name: str = "IMAGE") -> str:
    """A missing or unreadable image file fails before any model is loaded."""
    path = Path(image)
    if not path.exists():
        raise CLIError(f"{name}: no such image file: {image!r}")
    if not path.is_file():
        raise CLIError(f"{name}: {image!r} is not a file")
    if not os.access(path, os.R_OK):
        raise CLIError(f"{name}: {image!r} is not readable")
    return image


def load_zoo_model(kind: str, spec: str | None, models: str | None = None) -> Any:
    """A reference model of ``kind`` from a name or a checkpoint folder.

    Args:
        kind: ``"captioner"``, ``"vqa"`` or ``"classifier"``: what the command needs.
        spec: None or ``kind`` for the shipped model, a shipped model that does the task
            (``mmexplain.zoo.tasks.names_for(kind)``: ``tiny-ved``, ``tiny-vlm``, ...); otherwise
            a folder holding ``<kind>/`` or the checkpoint files themselves.
        models: the models folder (``--models``); default the package's models/.

    Raises:
        CLIError: the model is missing, or ``spec`` names another kind or no folder.
    """
    from .. import zoo
    from ..zoo.tasks import names_for

    if spec is None or spec == kind:
        root = Path(models) if models is not None else zoo.default_root()
        if not (root / kind / zoo.WEIGHTS).is_file():
            raise CLIError(
                f"the {kind} model is missing ({root / kind / zoo.WEIGHTS}); "
                f"train it with `mmexplain train {kind}` (minutes on a CPU)"
            )
        return zoo.load(kind, root)
    if spec in names_for(kind):  # a shipped transformers model that does this task
        if not zoo.folder(spec, models).is_dir():
            raise CLIError(f"the {spec} model is missing ({zoo.folder(spec, models)}); "
                           f"train it with `mmexplain train {spec}`")
        return zoo.load(spec, models)
    if spec in zoo.ALL_NAMES + zoo.VLM_NAMES:
        raise CLIError(f"--model: this command needs a {kind} ({', '.join(names_for(kind))}), got {spec!r}")
    path = Path(spec)
    if not path.exists():
        raise CLIError(f"--model: no such model folder: {spec!r} (or give the name {kind!r})")
    if not path.is_dir():
        raise CLIError(f"--model: {spec!r} is not a folder")
    return zoo.load(kind, path)
