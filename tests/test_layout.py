"""The package's layout rules, checked on the source: cheap import, layers that only look down, small modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mmexplain"

# layer -> packages/modules of mmexplain it must never import (directly or lazily)
FORBIDDEN = {
    "world": {"explain", "adapters", "viz", "cli", "methods", "dissect", "evaluation", "training", "zoo"},
    "targets": {"explain", "adapters", "viz", "cli", "evaluation", "training", "zoo", "dissect"},
    "methods": {"explain", "adapters", "viz", "cli", "evaluation", "training", "zoo", "dissect"},
    "metrics": {"explain", "adapters", "viz", "cli", "evaluation", "training"},
    "dissect": {"explain", "adapters", "viz", "cli", "evaluation", "training", "zoo"},
    "viz": {"methods", "adapters", "cli", "evaluation", "training", "zoo"},  # draws results, runs no model
    "adapters": {"explain", "viz", "cli", "evaluation", "training"},
    "explain": {"cli", "evaluation", "training"},
    "evaluation": {"cli", "training"},
    "zoo": {"explain", "viz", "cli", "evaluation", "training"},
}


# every top-level module in import order: a module imports only modules before it (no circle;
# imports under ``if TYPE_CHECKING:`` are annotations, not imports, and are not counted)
ORDER = ["errors", "_io", "targets", "metrics", "runner", "words", "world_coco", "world", "methods", "adapters", "dissect",
         "zoo", "viz", "explain", "evaluation", "demo", "training", "cli", "__main__"]
PACKAGE_ITSELF = {"__init__", "__version__"}  # ``from .. import __version__`` reads the package, not a module

def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _layer(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    return rel.parts[0]


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes inside ``if TYPE_CHECKING:`` blocks."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                inside.update(id(n) for n in ast.walk(child))
    return inside


def _imported(path: Path, *, runtime: bool = False) -> set[str]:
    """Top-level mmexplain subpackages/modules that ``path`` imports, at any depth of the file.

    ``runtime``: leave out the imports under ``if TYPE_CHECKING:``.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    rel = path.relative_to(PACKAGE)
    here = list(rel.parts[:-1])  # the package the file lives in, below mmexplain
    found: set[str] = set()
    skip = _type_checking_nodes(tree) if runtime else set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                parts = (node.module or "").split(".")
                if parts[0] != "mmexplain":
                    continue
                base = parts[1:]
            else:
                up = here[: len(here) - (node.level - 1)] if node.level > 1 else here
                if node.level - 1 > len(here):
                    continue
                base = up + (node.module.split(".") if node.module else [])
            if base:
                found.add(base[0])
            else:  # from . import x, y  /  from .. import world
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "mmexplain" and len(parts) > 1:
                    found.add(parts[1])
    return found


def test_no_lower_layer_imports_a_higher_one():
    problems = []
    for path in _modules():
        layer = _layer(path)
        if layer.endswith(".py"):
            layer = layer[:-3]
        bad = _imported(path) & FORBIDDEN.get(layer, set())
        bad.discard(layer)
        if bad:
            problems.append(f"{path.relative_to(PACKAGE)} imports {sorted(bad)}")
    assert not problems, "\n".join(problems)


def test_every_module_imports_only_modules_below_it():
    top = {_layer(p).removesuffix(".py") for p in _modules()} - PACKAGE_ITSELF
    assert top == set(ORDER), f"place every top-level module in ORDER: missing {sorted(top - set(ORDER))}"
    problems = []
    for path in _modules():
        layer = _layer(path).removesuffix(".py")
        if layer in PACKAGE_ITSELF:
            continue
        allowed = set(ORDER[: ORDER.index(layer)]) | PACKAGE_ITSELF | {layer}
        bad = _imported(path, runtime=True) - allowed
        if bad:
            problems.append(f"{path.relative_to(PACKAGE)} ({layer}) imports {sorted(bad)}, which come after it")
    assert not problems, "\n".join(problems)


def _private_imports() -> set[tuple[str, str]]:
    """(file, name) for every ``from mmexplain-module import _name`` in the package."""
    found = set()
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                is_ours = node.level > 0 or (node.module or "").startswith("mmexplain")
                for alias in node.names:
                    if is_ours and alias.name.startswith("_") and not alias.name.endswith("__"):
                        found.add((path.relative_to(PACKAGE).as_posix(), alias.name))
    return found


def test_no_module_imports_an_underscore_name_from_another():
    new = sorted(_private_imports())
    assert not new, "underscore names imported across modules (make them public): " + ", ".join(map(str, new))


def test_the_private_import_scan_sees_one(tmp_path):
    fake = PACKAGE / "methods" / "_probe_for_private_test.py"
    fake.write_text("def f():\n    from .base import _slots\n")
    try:
        assert ("methods/_probe_for_private_test.py", "_slots") in _private_imports()
    finally:
        fake.unlink()


def test_modules_stay_small():
    long = [f"{p.relative_to(PACKAGE)} ({n})" for p in _modules() if (n := len(p.read_text().splitlines())) > 500]
    assert not long, "modules over 500 lines: " + ", ".join(long)


def test_the_checker_sees_upward_imports(tmp_path):
    """The import scan would catch a violation (so the test above can fail)."""
    fake = PACKAGE / "methods" / "_probe_for_layout_test.py"
    fake.write_text("def f():\n    from ..explain import explain_caption\n    from mmexplain import viz\n"
                    "if TYPE_CHECKING:\n    from ..cli import main\n")
    try:
        assert {"explain", "viz", "cli"} <= _imported(fake)
        assert "cli" not in _imported(fake, runtime=True) and {"explain", "viz"} <= _imported(fake, runtime=True)
    finally:
        fake.unlink()


def test_bare_import_loads_nothing_heavy():
    heavy = ("torch", "matplotlib", "transformers", "tqdm", "mmexplain.training", "mmexplain.methods")
    code = f"import sys, mmexplain\nprint([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


# tqdm is left out here: torch itself imports it
@pytest.mark.parametrize("heavy", ["matplotlib", "transformers", "mmexplain.training", "mmexplain.cli",
                                   "mmexplain.explain", "nltk", "torchvision"])
def test_using_the_engine_imports_nothing_heavy(heavy):
    code = (
        "import sys, mmexplain as mx\n"
        "mx.GradCAM; mx.targets.ClassLogit; mx.world.generate; mx.metrics.pointing_game\n"
        f"print({heavy!r} in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False", f"import mmexplain (with the engine, targets, world and metrics) imported {heavy}"


def test_zoo_load_does_not_import_training():
    code = "import sys, mmexplain as mx\nmx.zoo.load('captioner')\nprint('mmexplain.training' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
