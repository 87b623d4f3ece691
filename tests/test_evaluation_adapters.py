"""The evaluation protocols go through adapters: every shipped model, no zoo internals, named blank cells."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch

import mmexplain as mx
from mmexplain.evaluation import faithfulness, grounding, sanity
from mmexplain.evaluation.items import Item, NotApplicable, explain_item, scene_items

from conftest import assert_unchanged, snapshot

EVALUATION = Path(mx.__file__).parent / "evaluation"
ZOO = Path(mx.__file__).parent / "zoo"
#: zoo modules that only load a model (allowed); every other zoo module is a model's internals
ZOO_LOADERS = {"mmexplain.zoo.efficientnet"}
#: attributes of the zoo models that only their adapters may read
ZOO_ATTRIBUTES = {"vocab", "encode_question", "preprocess"}


def _zoo_reaches(source: str, package: str = "mmexplain.evaluation") -> list[str]:
    """What a module's source reaches of the zoo: imports of zoo modules and reads of zoo-model attributes."""
    found = []
    for node in ast.walk(ast.parse(source)):
        modules: list[str] = []
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            modules = [module]
            if module in ("mmexplain", "mmexplain.zoo"):  # ``from ..zoo import classifier``: a submodule by name
                modules += [f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}".startswith("mmexplain.zoo.")
                            and (ZOO / f"{a.name}.py").is_file()]
        elif isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        found += [m for m in modules if m.startswith("mmexplain.zoo.") and m not in ZOO_LOADERS]
        if isinstance(node, ast.Attribute) and node.attr in ZOO_ATTRIBUTES:
            found.append(f".{node.attr}")
    return found


def test_evaluation_imports_no_zoo_internals():
    probe = ("from ..zoo.classifier import Classifier\nfrom .. import zoo\nfrom ..zoo import vocab, load\n"
             "ids = model.vocab.encode(words)\n")
    assert _zoo_reaches(probe) == ["mmexplain.zoo.classifier", "mmexplain.zoo.vocab", ".vocab"]
    assert _zoo_reaches("from ..zoo.efficientnet import load_efficientnet\n") == []
    reaches = {path.name: _zoo_reaches(path.read_text()) for path in sorted(EVALUATION.glob("*.py"))}
    assert {name: r for name, r in reaches.items() if r} == {}


def test_runner_and_distributed_are_reachable_from_evaluation():
    from mmexplain import runner

    assert mx.evaluation.Runner is runner.Runner and mx.evaluation.distributed is runner.distributed
    assert mx.evaluation.read_dataset is not None
    with pytest.raises(AttributeError, match="nope"):
        mx.evaluation.nope  # noqa: B018


@pytest.fixture(scope="module", params=["tiny-vlm", "tiny-ved"])
def shipped(request):
    return request.param, mx.zoo.load(request.param)


def _finite(values) -> bool:
    return all(isinstance(v, float) and math.isfinite(v) for v in values)


def test_protocols_give_finite_numbers_on_shipped_transformers_models(shipped):
    name, adapter = shipped
    seeds = mx.world.split_seeds("test", 1)
    scene_item = scene_items(adapter, "caption", seeds, size=64)[0]
    item = Item("caption", scene_item.image, scene_item.labels[-1:], caption=scene_item.caption,
                words=scene_item.words[-1:])  # one word: the shape
    explain_item(adapter, item, "gradcam")  # transformers adds its output-recording hooks on the first forward
    before = snapshot(adapter.model)
    report = faithfulness.faithfulness(adapter, items=[item], methods=["gradcam", "guided"], steps=4,
                                       fractions=(0.5,), name=name)
    assert report["kind"] == "caption" and report["targets"] == 1
    assert report["methods"] == ["gradcam", "random", "center"] and "relu" in report["not_applicable"]["guided"]
    assert _finite([v for row in report["rows"].values() for v in row.values()])
    checked = sanity.sanity_check(adapter, items=[item], methods=["gradcam"], max_stages=1, name=name)
    assert _finite([checked[mode][0]["gradcam"][k] for mode in ("cascading", "independent")
                    for k in ("spearman", "spearman_abs", "ssim")])
    board = grounding.leaderboard({name: adapter}, seeds, methods=["gradcam", "guided"])
    kinds = {r["kind"]: r["model"] for r in board["rows"]}  # a VLM: its caption words and its answers
    assert kinds == ({"caption": f"{name} (captions)", "answer": f"{name} (answers)"} if name == "tiny-vlm"
                     else {"caption": name})
    for kind, label in kinds.items():
        rows = {r["method"]: r for r in board["rows"] if r["kind"] == kind}
        assert math.isfinite(rows["gradcam"]["pointing"]) and rows["gradcam"]["reason"] is None
        assert rows["guided"]["pointing"] is None and "relu" in rows["guided"]["reason"]
        assert f"| {label} | {rows['guided']['n']} | Guided Grad-CAM | not applicable: " in \
            grounding.format_leaderboard(board)
    assert_unchanged(adapter.model, before)


def test_sanity_randomises_a_copy_of_the_adapter():
    adapter = mx.zoo.load("tiny-ved")
    layers = sanity.parametrised_layers(adapter.model)
    before = snapshot(adapter.model)
    clone = sanity.randomised_adapter(adapter, layers[:1], seed=0)
    assert_unchanged(adapter.model, before)
    top = layers[0]
    changed = [n for n, p in clone.model.get_submodule(top).named_parameters(recurse=False)
               if not torch.equal(p, adapter.model.get_submodule(top).get_parameter(n))]
    assert changed  # the top layer is re-drawn ...
    other = layers[-1]
    assert all(torch.equal(p, adapter.model.get_submodule(other).get_parameter(n))
               for n, p in clone.model.get_submodule(other).named_parameters(recurse=False))  # ... the others kept


def test_explain_item_is_the_explainers_map_and_refuses_by_reason():
    captioner = mx.zoo.load("captioner")
    item = scene_items(captioner, "caption", mx.world.split_seeds("test", 1), size=96)[0]
    got = explain_item(captioner, item, "gradcam")
    ex = mx.explain_caption(captioner, item.image, item.caption)
    torch.testing.assert_close(got.maps, ex.maps[item.words].float())
    assert got.labels == item.labels
    guided = explain_item(captioner, item, "guided")
    torch.testing.assert_close(guided.maps, guided.explanation.guided.abs().sum(dim=-3)[item.words].float())
    with pytest.raises(NotApplicable, match="Relevancy needs .*attention"):
        explain_item(captioner, item, "relevancy")
    with pytest.raises(ValueError, match="item: .*caption items, not 'class'"):
        explain_item(captioner, Item("class", item.image, ["x"], classes=[0]), "gradcam")


def test_cli_sanity_and_faithfulness_on_the_tiny_vlm(capsys):
    from mmexplain.cli import main

    assert main(["evaluate", "sanity", "--on", "tiny-vlm", "--scenes", "1", "--methods", "gradcam,guided",
                 "--stages", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "Sanity check of tiny-vlm" in out and "Guided Grad-CAM: not applicable" in out
    assert main(["evaluate", "faithfulness", "--on", "tiny-vilt", "--scenes", "1", "--methods", "gradcam",
                 "--steps", "4", "--threads", "1"]) == 0
    assert "Faithfulness of tiny-vilt (answer" in capsys.readouterr().out
