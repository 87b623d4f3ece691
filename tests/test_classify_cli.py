"""`mmexplain classify`: figures from local weights, clear one-line errors, no partial output."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file

from mmexplain.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("classify")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)  # tiny head: the CLI reads num_classes from it
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, root / "resnet18.safetensors")
    torch.save(state, root / "resnet18.pt")
    torch.save({"state_dict": state}, root / "wrapped.pth")
    array = np.zeros((48, 64, 3), np.uint8)
    array[10:30, 8:28] = (220, 30, 30)
    Image.fromarray(array).save(root / "scene.png")
    (root / "notes.png").write_text("not an image")
    return {
        "root": root,
        "image": str(root / "scene.png"),
        "st": str(root / "resnet18.safetensors"),
        "pt": str(root / "resnet18.pt"),
        "wrapped": str(root / "wrapped.pth"),
        "bad_image": str(root / "notes.png"),
    }


def _run(capsys, argv: list[str]) -> tuple[int, str, str]:
    rc = main(["classify", *argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _is_png(path) -> bool:
    return path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gradcam_figure_from_safetensors(files, tmp_path, capsys) -> None:
    out = tmp_path / "figs" / "cam.png"
    rc, stdout, stderr = _run(capsys, [files["image"], "--arch", "resnet18", "--weights", files["st"], "--size", "64", "--target", "3", "--out", str(out)])
    assert rc == 0, stderr
    assert _is_png(out)
    assert "class 3" in stdout and "layer4" in stdout and str(out) in stdout
    assert "warning" not in stderr
    assert sorted(p.name for p in out.parent.iterdir()) == ["cam.png"]  # no temp file left


@pytest.mark.parametrize("method", ["guided", "counterfactual", "hirescam", "eigencam", "occlusion"])
def test_other_methods_and_torch_state_dicts(files, tmp_path, capsys, method) -> None:
    out = tmp_path / f"{method}.png"
    weights = files["pt"] if method in ("guided", "hirescam") else files["wrapped"]
    rc, stdout, stderr = _run(capsys, [files["image"], "--arch", "resnet18", "--weights", weights, "--size", "64", "--method", method, "--out", str(out)])
    assert rc == 0, stderr
    assert _is_png(out) and f"method {method}" in stdout


def test_random_model_warns_clearly(files, tmp_path, capsys) -> None:
    out = tmp_path / "random.png"
    rc, stdout, stderr = _run(capsys, [files["image"], "--arch", "resnet18", "--size", "64", "--layer", "layer3", "--out", str(out)])
    assert rc == 0
    assert _is_png(out)
    assert "randomly initialised" in stderr and "explains nothing" in stderr
    assert "layer3" in stdout


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing_image", "no such image file"),
        ("not_an_image", "not an image file"),
        ("unknown_arch", "nearest: resnet18"),
        ("bad_layer", "layer 'layer9' not found; nearest:"),
        ("bad_extension", "expected a file ending in .png"),
        ("mismatched_weights", "do not fit --arch resnet34"),
        ("missing_weights", "no such file"),
        ("unreadable_weights", "cannot read it"),
        ("target_out_of_range", "--target 10 out of range"),
    ],
)
def test_bad_inputs_exit_2_with_one_line_and_no_output(files, tmp_path, capsys, case, message) -> None:
    out = tmp_path / "out.png"
    args = {
        "image": files["image"], "arch": "resnet18", "weights": files["st"], "layer": None,
        "target": None, "out": str(out),
    }  # fmt: skip
    if case == "missing_image":
        args["image"] = str(tmp_path / "nope.png")
    elif case == "not_an_image":
        args["image"] = files["bad_image"]
    elif case == "unknown_arch":
        args["arch"] = "resnet-18"
    elif case == "bad_layer":
        args["layer"] = "layer9"
    elif case == "bad_extension":
        args["out"] = str(tmp_path / "out.pngx")
    elif case == "mismatched_weights":
        args["arch"] = "resnet34"  # same key names for the shared part, more blocks
    elif case == "missing_weights":
        args["weights"] = str(tmp_path / "none.safetensors")
    elif case == "unreadable_weights":
        args["weights"] = files["bad_image"]
    elif case == "target_out_of_range":
        args["target"] = "10"
    argv = [args["image"], "--arch", args["arch"], "--weights", args["weights"], "--size", "64", "--out", args["out"]]
    if args["layer"]:
        argv += ["--layer", args["layer"]]
    if args["target"]:
        argv += ["--target", args["target"]]
    rc, stdout, stderr = _run(capsys, argv)
    assert rc == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("mmexplain classify: error: ") and message in lines[0], lines[0]
    assert list(tmp_path.iterdir()) == []  # no output, no temp file


def test_default_layers_per_family() -> None:
    from mmexplain.adapters.torchvision import default_layer

    for arch, layer in [
        ("resnet18", "layer4"),
        ("vgg11", "features.18"),  # the last Conv2d
        ("densenet121", "features"),
        ("mobilenet_v3_small", "features"),
        ("efficientnet_b0", "features"),
        ("convnext_tiny", "features"),
    ]:
        with torch.device("meta"):  # structure only: no weights allocated or initialised
            model = torchvision.models.get_model(arch, weights=None)
        name, reshape = default_layer(arch, model)
        assert name == layer and reshape is None
        model.get_submodule(name)  # exists


def test_help_lists_classify(capsys) -> None:
    assert main(["classify", "--help"]) == 0
    assert "--weights" in capsys.readouterr().out


def test_method_list_and_unknown_method(files, tmp_path, capsys) -> None:
    assert main(["classify", "--method", "list"]) == 0
    listed = capsys.readouterr().out
    assert "counterfactual" in listed and "scorecam" in listed and "relevancy" not in listed and "tam" not in listed
    rc, _, stderr = _run(capsys, [files["image"], "--arch", "resnet18", "--method", "saliency", "--out", str(tmp_path / "x.png")])
    assert rc == 2 and "--method 'saliency'" in stderr and not (tmp_path / "x.png").exists()


def test_a_users_model_from_a_factory(files, tmp_path, capsys, monkeypatch) -> None:
    """--model pkg.module:factory with --mean/--std: the model's own class names and default layer are used."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "userfactory.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        "    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),\n"
        "                      nn.Linear(4, 3))\n"
        "    m.classes = ['cat', 'dog', 'cup']\n"
        "    m.default_layer = '0'\n"
        "    return m\n")
    monkeypatch.syspath_prepend(str(pkg))
    out = tmp_path / "user.png"
    rc, stdout, stderr = _run(capsys, [files["image"], "--model", "userfactory:build", "--mean", "0", "0", "0",
                                       "--std", "1", "1", "1", "--size", "48", "--target", "1", "--out", str(out)])
    assert rc == 0, stderr
    assert _is_png(out) and "class 1 (dog)" in stdout and "layer 0" in stdout
    for argv, message in (
        (["--model", "userfactory:nothing"], "cannot import"),
        (["--model", "userfactory"], "PKG.MODULE:FACTORY"),
        (["--model", "userfactory:build", "--arch", "resnet18"], "give one of them"),
        (["--model", "userfactory:build", "--std", "1", "0", "1"], "--std"),
    ):
        rc, _, stderr = _run(capsys, [files["image"], *argv, "--out", str(tmp_path / "bad.png")])
        assert rc == 2 and message in stderr and not (tmp_path / "bad.png").exists()
