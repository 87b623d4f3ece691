"""The one place that writes files (atomically, with the usual permissions) and reads JSON safely.

A file is written to a temporary sibling (``.NAME.PID.XXXX.tmp``) and renamed over the
destination, so a crash or an error mid-write leaves the old file (or nothing) at the
destination, never a partial one. A folder is built as a temporary sibling
(``.DIR.PID.XXXX.tmp/``) and swapped in whole when complete. The writer's process id
is part of each temporary's name: a process killed mid-write (SIGKILL, power loss)
leaves its temporary behind, and the next write beside it removes the temporaries of
processes no longer alive, so they never accumulate.

Example:
    >>> from mmexplain._io import write_text
    >>> write_text(path, "hello\\n")                             # doctest: +SKIP
    >>> with atomic_folder("out") as tmp:                        # doctest: +SKIP
    ...     (tmp / "report.md").write_text("...")
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import InputError

__all__ = ["atomic_write", "write_text", "write_json", "atomic_folder", "read_json", "check_replaceable"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's) or cannot tell: keep its files
    return True


def _prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def _remove_stale(path: Path) -> None:
    """Remove temporaries beside ``path`` (``.NAME.PID.*.tmp`` / ``.old``) left by dead processes."""
    try:
        entries = list(path.parent.glob(f".{glob.escape(path.name)}.*"))
    except OSError:
        return
    for entry in entries:
        rest = entry.name[len(path.name) + 2:]
        pid, _, tail = rest.partition(".")
        if not pid.isdigit() or not (tail.endswith(".tmp") or tail.endswith(".old")) or _alive(int(pid)):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``.

    Parent folders are created. The file gets the permissions a plain ``open`` would
    give (0o666 less the umask), not ``mkstemp``'s private 0o600.

    Raises:
        IsADirectoryError: ``path`` is an existing folder.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{str(path)!r} is a folder; give a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=_prefix(path), suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)

    return atomic_write(path, write)


def write_json(path: str | os.PathLike[str], data: Any, *, indent: int = 2) -> Path:
    """Write ``data`` as JSON (with a final newline) to ``path`` atomically."""
    return write_text(path, json.dumps(data, indent=indent) + "\n")


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not allowed
        shutil.copy2(src, dst)


def check_replaceable(out: str | os.PathLike[str], *, option: str = "out") -> Path:
    """Refuse, before any work, a folder that cannot be swapped whole: the current folder or one holding it.

    Raises:
        ValueError: ``out`` is the working folder or one of its parents (its replacement would
            pull the ground from under the running process).
    """
    path = Path(out)
    try:
        here, target = Path.cwd().resolve(), path.resolve()
    except OSError:  # the working folder is gone: nothing to protect
        return path
    if target == here or target in here.parents:
        what = "the current folder" if target == here else "a folder holding the current folder"
        raise InputError(f"{option} {str(out)!r} is {what}; the output folder is replaced whole, so name a new "
                         f"folder inside it (e.g. {option} {str(Path(out) / 'results')!r})")
    return path


@contextlib.contextmanager
def atomic_folder(out: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success it replaces ``out`` whole.

    An existing ``out`` stays untouched until the new folder is complete. Then entries
    of the old ``out`` that the new one does not have (the user's own files) are carried
    over (hard links where possible), the old folder is renamed aside, the new one is
    renamed into place, and the old one is deleted. On an error or an interrupt the
    temporary folder is removed and ``out`` is as it was.

    Raises:
        NotADirectoryError: ``out`` exists and is not a folder.
        ValueError: ``out`` is the current folder or holds it (:func:`check_replaceable`).
    """
    out = check_replaceable(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{str(out)!r} exists and is not a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(out)
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(out), suffix=".tmp", dir=out.parent))
    try:
        tmp.chmod(0o777 & ~_umask())
        yield tmp
        old = None
        if out.exists():
            for entry in out.iterdir():
                if not (tmp / entry.name).exists() and not entry.is_symlink():
                    if entry.is_dir():
                        shutil.copytree(entry, tmp / entry.name, copy_function=_link_or_copy)
                    else:
                        _link_or_copy(str(entry), str(tmp / entry.name))
            old = Path(tempfile.mkdtemp(prefix=_prefix(out), suffix=".old", dir=out.parent))
            os.replace(out, old / out.name)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_json(path: str | os.PathLike[str], *, what: str, max_bytes: int = 4 * 2**20) -> Any:
    """The JSON document in ``path``, or a one-line ``ValueError`` naming the file and ``what`` it should be.

    Refuses, before parsing, a file over ``max_bytes``; then anything that is not UTF-8 JSON
    (empty, truncated, not JSON) and nesting too deep for the parser.

    Args:
        path: the file.
        what: what the file is, for messages (``"explain-dataset manifest"``).
        max_bytes: the largest file read.

    Raises:
        FileNotFoundError: no such file.
        ValueError: too large, not UTF-8, not JSON, or nested too deeply.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} file: {str(path)!r}")
    size = path.stat().st_size
    if size > max_bytes:
        raise InputError(f"{what} {str(path)!r}: {size} bytes, more than such a file holds ({max_bytes} at most)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} {str(path)!r}: not UTF-8 text (byte {exc.start})") from exc
    if not text.strip():
        raise InputError(f"{what} {str(path)!r}: the file is empty")
    try:
        return json.loads(text)
    except RecursionError as exc:
        raise InputError(f"{what} {str(path)!r}: JSON nested too deeply") from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"{what} {str(path)!r}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                         "the file is damaged or truncated") from exc
