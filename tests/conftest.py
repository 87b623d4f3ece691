"""Shared test helpers: torch threads, model-state snapshots, the notebook runner."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_LIMIT_S = float(os.environ.get("MMEXPLAIN_NOTEBOOK_LIMIT_S", 120))  # wall clock per notebook


# ---------------------------------------------------------------- the fast lane: python -m pytest -m "not slow"
# whole modules and single tests (``file::name``, every parametrization) that take over ~5 s on 2 busy cores;
# tests that drive a browser (the ``driver`` fixture) are marked ``browser`` and ``slow``
SLOW_MODULES = {"test_notebooks.py", "test_notebooks_bias.py", "test_notebooks_hf.py", "test_notebooks_naming.py",
                "test_real_photos.py", "test_concurrency.py"}
SLOW_TESTS = {
    "test_bad_input.py::test_wheel_carries_the_models",
    "test_cli_startup.py::test_progress_forces_bars_into_a_file",
    "test_runner.py::test_grounding_two_processes_equal_one",
    "test_runner.py::test_dissect_two_processes_equal_one",
    "test_runner.py::test_explain_dataset_killed_and_resumed_gives_the_same_files",
    # over ~2 s of the fast lane each (``--durations``), so that ``-m "not slow"`` runs in about a minute
    "test_layout.py::test_using_the_engine_imports_nothing_heavy",
    "test_cli_explain.py::test_demo_writes_report",
    "test_grounding.py::test_shipped_models_report",
    "test_grounding.py::test_report_counts_and_baselines",
    "test_methods.py::test_scorecam_matches_torchcam_and_pytorch_grad_cam",
    "test_cli_startup.py::test_evaluate_grounding_to_a_file_writes_no_carriage_return",
    "test_methods.py::test_matches_pytorch_grad_cam",
    "test_runner.py::test_workers_do_not_change_grounding",
    "test_zoo.py::test_loading_imports_no_training_code",
    "test_evaluation_adapters.py::test_protocols_give_finite_numbers_on_shipped_transformers_models",
    "test_methods.py::test_ablationcam_matches_pytorch_grad_cam",
    "test_classify_cli.py::test_other_methods_and_torch_state_dicts",
    "test_bad_input.py::test_disk_full_is_one_line",
    "test_explain.py::test_every_method_through_the_explainers_equals_a_direct_call",
    "test_cli_startup.py::test_vqa_imports_no_nltk",
    "test_grounding.py::test_cli_writes_json",
    "test_engine.py::test_matches_captum_layer_gradcam",
    "test_layout.py::test_zoo_load_does_not_import_training",
    "test_viz.py::test_viz_imports_matplotlib_lazily",
    "test_grounding.py::test_report_maps_are_the_explainers_maps",
    "test_vlm_all_methods.py::test_every_registered_method_runs_on_the_vlm_or_says_why_not",
    "test_bad_input.py::test_cli_bad_input",
    "test_viz.py::test_viz_does_not_import_the_explainers",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the slow and the browser tests; a listed slow test that a collected file lacks is an error."""
    seen: set[str] = set()
    files = {item.path.name for item in items}
    for item in items:
        key = f"{item.path.name}::{getattr(item, 'originalname', item.name)}"
        browser = "driver" in getattr(item, "fixturenames", ())
        if item.path.name in SLOW_MODULES or key in SLOW_TESTS or browser:
            item.add_marker(pytest.mark.slow)
        if browser:
            item.add_marker(pytest.mark.browser)
        seen.add(key)
    stale = sorted(k for k in SLOW_TESTS if k.split("::")[0] in files and k not in seen)
    if stale:
        raise pytest.UsageError(f"conftest.SLOW_TESTS names tests that do not exist: {', '.join(stale)}")


@pytest.fixture(autouse=True)
def _torch_threads():
    """Two CPU threads per test (the machine's cores), restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("MMEXPLAIN_TEST_THREADS", 2)))
    yield
    torch.set_num_threads(before)


def snapshot(model: nn.Module) -> dict:
    """Everything an explanation must leave as it found: weights and buffers, flags, grads, hooks."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "training": {k: m.training for k, m in model.named_modules()},
        "requires_grad": {k: p.requires_grad for k, p in model.named_parameters()},
        "grads": {k: None if p.grad is None else p.grad.clone() for k, p in model.named_parameters()},
        "hooks": {
            k: (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
                len(m._backward_pre_hooks), len(m._forward_hooks_with_kwargs), len(m._forward_pre_hooks_with_kwargs))
            for k, m in model.named_modules()
        },
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    """The model's state equals the ``snapshot`` taken before."""
    after = snapshot(model)
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["hooks"] == before["hooks"]
    assert after["state"].keys() == before["state"].keys()
    for k, v in before["state"].items():
        assert torch.equal(v, after["state"][k]), k
    for k, g in before["grads"].items():
        assert (g is None and after["grads"][k] is None) or torch.equal(g, after["grads"][k]), k


class TinyViT(nn.Module):
    """A fixed-seed toy ViT: CLS + 2x2 patch tokens, D=3; a per-token nonlinearity so the gradient differs per token."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.embed = nn.Linear(4, 3)
        self.cls = nn.Parameter(torch.randn(1, 1, 3))
        self.block = nn.Linear(3, 3)
        self.head = nn.Linear(3, 2)

    def forward(self, x):  # x (B, 1, 4, 4) -> (B, 2)
        patches = x.unfold(2, 2, 2).unfold(3, 2, 2).reshape(x.shape[0], 4, 4)  # (B, 4 patches, 4 px)
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), self.embed(patches)], dim=1)  # (B, 5, 3)
        tokens = self.block(tokens)  # hooked: (B, 5, 3)
        return self.head(torch.tanh(tokens).pow(2).mean(dim=1))


@contextlib.contextmanager
def feature_zeroed(module: nn.Module, index: int):
    """Within the block, ``module``'s output has feature ``index`` of its last axis set to 0 (a hook of our own):
    the hand reference of Ablation-CAM's ablated forward."""
    def zero(m, args, output):
        output = output.clone()
        output[..., index] = 0
        return output

    handle = module.register_forward_hook(zero)
    try:
        yield
    finally:
        handle.remove()


def drop_cls(tokens):  # (B, 1+4, D) -> (B, D, 2, 2)
    """``reshape=`` for TinyViT's token layer: CLS dropped, patches on the 2x2 grid."""
    return tokens[:, 1:].transpose(1, 2).reshape(tokens.shape[0], tokens.shape[-1], 2, 2)


@pytest.fixture
def run_notebook(monkeypatch):
    """Execute ``notebooks/NAME`` with nbclient; returns (executed notebook, its printed text).

    The kernel imports this checkout (PYTHONPATH), draws with an inline backend and runs
    in ``cwd`` (default: notebooks/). A cell error fails the test with the cell's source
    and error; so does a cell running past the time limit.
    Set ``MMEXPLAIN_NOTEBOOK_OUT`` to a folder to keep the executed notebooks.
    """
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    from nbclient.exceptions import CellExecutionError, CellTimeoutError

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")

    def run(name: str, *, cwd: Path | None = None):
        nb = nbformat.read(REPO / "notebooks" / name, as_version=4)
        start = time.perf_counter()
        client = nbclient.NotebookClient(nb, timeout=NOTEBOOK_LIMIT_S, kernel_name="python3",
                                         resources={"metadata": {"path": str(cwd or REPO / "notebooks")}})
        try:
            client.execute()
        except CellTimeoutError as exc:
            pytest.fail(f"{name}: a cell ran past {NOTEBOOK_LIMIT_S:.0f} s: {str(exc)[:500]}")
        except CellExecutionError as exc:
            pytest.fail(f"{name}: a cell raised:\n{str(exc)[-3000:]}")
        finally:
            keep = os.environ.get("MMEXPLAIN_NOTEBOOK_OUT")
            if keep:
                Path(keep).mkdir(parents=True, exist_ok=True)
                nbformat.write(nb, Path(keep) / name)
        seconds = time.perf_counter() - start
        assert seconds < 2 * NOTEBOOK_LIMIT_S, f"{name} took {seconds:.0f} s in all"
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
        text = "\n".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
        return nb, text

    return run


def displayed_figures(nb) -> int:
    """How many PNG figures the executed notebook displayed."""
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
