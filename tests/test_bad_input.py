"""Every command and public function on a table of bad inputs.

Each CLI case must exit with status 2 and print exactly one line on stderr that names the
argument, with no traceback, and leave the working folder exactly as it was. Each API case
must raise TypeError/ValueError (or FileNotFoundError) naming the argument, and leave the
model unchanged. Models are tiny random ones from ``mx.zoo.new`` saved into a temporary
models folder; the shipped ones are only read.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import site
import struct
import subprocess
import sys
import sysconfig
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import mmexplain as mx
from mmexplain import _io
from mmexplain.cli import main
from mmexplain.dissect.labels import NeuronLabels

from conftest import REPO, assert_unchanged, snapshot


# ---------------------------------------------------------------- fixtures

def _chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def _bomb_png(side: int) -> bytes:
    """A valid PNG header declaring side x side RGB pixels, with almost no data."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\0" * 16)) + _chunk(b"IEND", b"")


def _edit_config(folder: Path, edit) -> None:
    path = folder / "config.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A folder with images, a models folder of tiny random models, and corrupt checkpoints."""
    root = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((96, 96, 3)) * 255).astype("uint8")).save(root / "img.png")
    (root / "bomb.png").write_bytes(_bomb_png(20000))
    (root / "text.png").write_text("not an image\n")
    (root / "empty.png").write_bytes(b"")
    (root / "folder.png").mkdir()
    (root / "file.txt").write_text("x\n")
    models = root / "models"
    for name in ("classifier", "captioner", "vqa"):
        mx.zoo.save(mx.zoo.new(name), models / name)
    bad = root / "badmodels"

    def corrupt(tag: str, edit=None, weights=None) -> None:
        folder = bad / tag
        mx.zoo.save(mx.zoo.new("captioner"), folder)
        if edit is not None:
            _edit_config(folder, edit)
        if weights is not None:
            state = load_file(str(folder / "weights.safetensors"))
            save_file(weights(state), str(folder / "weights.safetensors"))

    corrupt("hidden-1e7", lambda d: d["config"].update(hidden_dim=10**7))
    corrupt("embed-negative", lambda d: d["config"].update(embed_dim=-4))
    corrupt("image-size-0", lambda d: d["config"].update(image_size=0))
    corrupt("widths-str", lambda d: d["config"].update(widths="abc"))
    corrupt("dropout-2", lambda d: d["config"].update(dropout=2.0))
    corrupt("unknown-key", lambda d: d["config"].update(hiden_dim=3))
    corrupt("config-list", lambda d: d.update(config=[1, 2]))
    corrupt("other-name", lambda d: d.update(name="vqa"))
    corrupt("nan-weights", weights=lambda s: {k: (torch.full_like(v, float("nan")) if v.is_floating_point() else v)
                                              for k, v in s.items()})
    corrupt("wrong-shape", weights=lambda s: {k: (v[:1] if v.dim() > 1 else v) for k, v in s.items()})
    corrupt("missing-key", weights=lambda s: {k: v for k, v in s.items() if k != "out.weight"})
    for tag, text in (("nested", "[" * 200_000 + "]" * 200_000), ("not-json", "{oops"), ("huge", " " * (5 * 2**20) + "{}")):
        folder = bad / tag
        mx.zoo.save(mx.zoo.new("captioner"), folder)
        (folder / "config.json").write_text(text)
    folder = bad / "no-weights"
    mx.zoo.save(mx.zoo.new("captioner"), folder)
    (folder / "weights.safetensors").unlink()
    folder = bad / "garbage-weights"
    mx.zoo.save(mx.zoo.new("captioner"), folder)
    (folder / "weights.safetensors").write_bytes(b"\x00" * 64)
    # classify --weights
    import torchvision

    state = torchvision.models.resnet18(num_classes=4).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(root / "r18.safetensors"))
    nan = {k: v.clone() for k, v in state.items()}
    nan["fc.weight"] = torch.full_like(nan["fc.weight"], float("nan"))
    save_file({k: v.contiguous() for k, v in nan.items()}, str(root / "r18-nan.safetensors"))
    wrong = {k: v.contiguous() for k, v in state.items()}
    wrong["conv1.weight"] = torch.zeros(8, 3, 3, 3)
    save_file(wrong, str(root / "r18-shape.safetensors"))
    (root / "junk.safetensors").write_bytes(b"junk")
    (root / "existing").mkdir()
    (root / "existing" / "keep.txt").write_text("mine\n")
    return root


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``root`` with its size and mtime: what a failed command must not change."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        out[str(path.relative_to(root))] = (st.st_size if path.is_file() else -1, st.st_mtime_ns)
    return out


def _run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


# ---------------------------------------------------------------- the CLI table
# (id, argv with {w} = the fixture folder, a text every error line must hold)

IMG, OUT = "{w}/img.png", "{w}/out.png"
CAP = ["caption", IMG, "--models", "{w}/models", "--out", OUT]
VQA = ["vqa", IMG, "what color is the circle ?", "--models", "{w}/models", "--out", OUT]
CLS = ["classify", IMG, "--arch", "resnet18", "--weights", "{w}/r18.safetensors", "--size", "32", "--out", OUT]

CLI_CASES = [
    # images: every entry point
    *[(f"{cmd}-image-{tag}", [c if c != IMG else f"{{w}}/{name}" for c in base], want)
      for cmd, base in (("caption", CAP), ("vqa", VQA), ("classify", CLS))
      for tag, name, want in (("bomb", "bomb.png", "pixels"), ("missing", "nope.png", "nope.png"),
                              ("text", "text.png", "text.png"), ("empty", "empty.png", "empty.png"),
                              ("folder", "folder.png", "folder.png"))],
    # --threads
    *[(f"{cmd}-threads-{v}", [*base, "--threads", v], "--threads")
      for cmd, base in (("caption", CAP), ("vqa", VQA), ("classify", CLS)) for v in ("0", "-2", "two")],
    ("demo-threads-0", ["demo", "--out", "{w}/demo", "--threads", "0"], "--threads"),
    ("train-threads-0", ["train", "classifier", "--out", "{w}/run", "--threads", "0"], "--threads"),
    # --out
    *[(f"{cmd}-out-{tag}", [*base[:-1], out], "--out")
      for cmd, base in (("caption", CAP), ("vqa", VQA), ("classify", CLS))
      for tag, out in (("sys", "/sys/x.png"), ("proc", "/proc/x.png"), ("folder", "{w}/existing"),
                       ("suffix", "{w}/out.txt"), ("under-file", "{w}/file.txt/x.png"))],
    ("caption-html-sys", [*CAP, "--html", "/sys/x.html"], "--html"),
    ("caption-html-suffix", [*CAP, "--html", "{w}/x.htm"], "--html"),
    ("vqa-html-proc", [*VQA, "--html", "/proc/x.html"], "--html"),
    *[(f"evaluate-{ev}-json-{tag}", ["evaluate", ev, "--json", path, "--scenes", "1"], want)
      for ev in ("grounding", "sanity") for tag, path, want in (("sys", "/sys/x.json", "/sys/x.json"),
                                                                ("proc", "/proc/x.json", "/proc/x.json"),
                                                                ("suffix", "{w}/x.txt", ".json"))],
    ("demo-out-file", ["demo", "--out", "{w}/file.txt", "--scenes", "1"], "--out"),
    ("demo-out-sys", ["demo", "--out", "/sys/demo", "--scenes", "1"], "--out"),
    ("train-out-file", ["train", "classifier", "--out", "{w}/file.txt"], "--out"),
    ("train-out-existing", ["train", "classifier", "--out", "{w}/existing"], "--out"),
    # layers and methods
    ("caption-layer-unknown", [*CAP, "--layer", "encoder.features.99"], "encoder.features.99"),
    ("vqa-layer-unknown", [*VQA, "--layer", "nope"], "nope"),
    ("vqa-layer-tuple", [*VQA, "--layer", "lstm"], "lstm"),
    ("classify-layer-unknown", [*CLS, "--layer", "layer9"], "layer9"),
    ("classify-layer-linear", [*CLS, "--layer", "fc"], "fc"),
    ("caption-method-unknown", [*CAP, "--method", "magic"], "--method"),
    ("vqa-method-unknown", [*VQA, "--method", "magic"], "--method"),
    ("classify-method-unknown", [*CLS, "--method", "magic"], "--method"),
    # models
    ("caption-model-missing", [*CAP, "--model", "{w}/nowhere"], "--model"),
    ("caption-model-wrong-kind", [*CAP, "--model", "vqa"], "--model"),
    ("vqa-model-wrong-kind", [*VQA, "--model", "captioner"], "--model"),
    ("caption-models-empty", ["caption", IMG, "--models", "{w}/existing", "--out", OUT], "captioner"),
    *[(f"caption-checkpoint-{tag}", [*CAP, "--model", f"{{w}}/badmodels/{tag}"], want)
      for tag, want in (("hidden-1e7", "hidden_dim"), ("embed-negative", "embed_dim"), ("image-size-0", "image_size"),
                        ("widths-str", "widths"), ("dropout-2", "dropout"), ("unknown-key", "hiden_dim"),
                        ("config-list", "config"), ("other-name", "vqa"), ("nan-weights", "NaN"),
                        ("wrong-shape", "weights.safetensors"), ("missing-key", "weights.safetensors"),
                        ("nested", "nested"), ("not-json", "JSON"), ("huge", "bytes"),
                        ("no-weights", "weights.safetensors"), ("garbage-weights", "weights.safetensors"))],
    # classify
    ("classify-size-0", [*CLS[:-4], "--size", "0", "--out", OUT], "--size"),
    ("classify-size-8", [*CLS[:-4], "--size", "8", "--out", OUT], "--size"),
    ("classify-arch-unknown", ["classify", IMG, "--arch", "resnet19", "--out", OUT], "--arch"),
    ("classify-weights-missing", [*CLS[:4], "--weights", "{w}/nope.safetensors", "--out", OUT], "--weights"),
    ("classify-weights-junk", [*CLS[:4], "--weights", "{w}/junk.safetensors", "--out", OUT], "--weights"),
    ("classify-weights-nan", [*CLS[:4], "--weights", "{w}/r18-nan.safetensors", "--size", "32", "--out", OUT], "--weights"),
    ("classify-weights-shape", [*CLS[:4], "--weights", "{w}/r18-shape.safetensors", "--out", OUT], "--weights"),
    ("classify-weights-arch", [*CLS[:2], "--arch", "vgg11", "--weights", "{w}/r18.safetensors", "--out", OUT], "--weights"),
    ("classify-target-big", [*CLS, "--target", "4"], "--target"),
    ("classify-target-negative", [*CLS, "--target", "-1"], "--target"),
    ("classify-target-text", [*CLS, "--target", "cat"], "--target"),
    ("classify-no-out", CLS[:-2], "--out"),
    ("classify-no-arch", ["classify", IMG, "--out", OUT], "--arch"),
    # demo
    ("demo-naming-scenes-negative", ["demo", "--out", "{w}/demo", "--naming-scenes", "-1"], "--naming-scenes"),
    ("demo-scenes-0", ["demo", "--out", "{w}/demo", "--scenes", "0"], "--scenes"),
    ("demo-seed-negative", ["demo", "--out", "{w}/demo", "--seed", "-1"], "--seed"),
    ("demo-models-empty", ["demo", "--out", "{w}/demo", "--scenes", "1", "--models", "{w}/existing"], "missing"),
    # train
    ("train-n-0", ["train", "classifier", "--out", "{w}/run", "--n", "0"], "--n"),
    ("train-steps-0", ["train", "classifier", "--out", "{w}/run", "--steps", "0"], "--steps"),
    ("train-batch-0", ["train", "classifier", "--out", "{w}/run", "--batch-size", "0"], "--batch-size"),
    ("train-name-unknown", ["train", "clasifier", "--out", "{w}/run"], "clasifier"),
    ("train-config-unknown", ["train", "classifier", "--out", "{w}/run", "--config", "nope=1"], "nope"),
    ("train-config-range", ["train", "classifier", "--out", "{w}/run", "--config", "extra=-3"], "extra"),
    ("train-config-huge", ["train", "captioner", "--out", "{w}/run", "--config", "hidden_dim=10000000"], "hidden_dim"),
    ("train-init-missing", ["train", "classifier", "--out", "{w}/run", "--init", "{w}/nowhere"], "nowhere"),
    # vqa
    ("vqa-top-k-0", [*VQA, "--top-k", "0"], "--top-k"),
    ("unknown-command", ["explode"], "explode"),
]


@pytest.mark.parametrize("argv,want", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input(world, argv, want):
    argv = [a.replace("{w}", str(world)) for a in argv]
    want = want.replace("{w}", str(world))
    before = _tree(world)
    code, err = _run(argv)
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert want in lines[0], lines[0]
    assert "error" in lines[0]
    assert _tree(world) == before, "a failed command changed the folder"


# ---------------------------------------------------------------- the API table

@pytest.fixture(scope="module")
def classifier():
    return mx.zoo.new("classifier")


def _x(batch: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, 96, 96, generator=torch.Generator().manual_seed(0))


def _cam(model, **kw):
    return mx.GradCAM(model, model.default_layer, **kw)


def _nan_model(model):
    bad = mx.zoo.new("classifier")
    with torch.no_grad():
        bad.encoder.features[0][0].weight.fill_(float("nan"))
    return mx.GradCAM(bad, bad.default_layer)(_x(), mx.targets.ClassLogit(0))


def _tokens():
    """A token-shaped layer: (B, 3, 96, 96) -> patches (B, 4, 144)."""
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 8, 8), torch.nn.Flatten(2)).eval()


class _Pair(torch.nn.Module):
    def forward(self, x):
        return {"a": x}, x


def _pair():
    """A layer returning (dict, tensor): no tensor first."""
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.add_module("0", _Pair())

        def forward(self, x):
            return getattr(self, "0")(x)[1]

    return Net().eval()


API_CASES = [
    # the engine
    ("size-0-0", lambda m: _cam(m)(_x(), mx.targets.ClassLogit(0), size=(0, 0)), ValueError, "size"),
    ("size-negative", lambda m: _cam(m)(_x(), mx.targets.ClassLogit(0), size=(-1, 4)), ValueError, "size"),
    ("size-text", lambda m: _cam(m)(_x(), mx.targets.ClassLogit(0), size="big"), ValueError, "size"),
    ("size-float", lambda m: _cam(m)(_x(), mx.targets.ClassLogit(0), size=(2.5, 4)), ValueError, "size"),
    ("targets-empty", lambda m: _cam(m)(_x(), []), ValueError, "targets"),
    ("targets-not-callable", lambda m: _cam(m)(_x(), [3]), TypeError, "targets[0]"),
    ("layer-unknown", lambda m: mx.GradCAM(m, "encoder.features.99"), ValueError, "encoder.features.99"),
    ("layer-number", lambda m: mx.GradCAM(m, 5), TypeError, "layer"),
    ("layer-foreign", lambda m: mx.GradCAM(m, torch.nn.Conv2d(1, 1, 1)), ValueError, "layer"),
    ("layer-linear", lambda m: mx.GradCAM(m, "fc")(_x(), mx.targets.ClassLogit(0)), ValueError, "layer 'fc'"),
    ("model-not-module", lambda m: mx.GradCAM("model", "fc"), TypeError, "model"),
    ("reshape-not-callable", lambda m: mx.GradCAM(m, m.default_layer, reshape=3), TypeError, "reshape"),
    ("relu-not-bool", lambda m: mx.GradCAM(m, m.default_layer, relu="yes"), TypeError, "relu"),
    ("call-negative", lambda m: mx.GradCAM(m, m.default_layer, call=-1), ValueError, "call"),
    ("inputs-text", lambda m: _cam(m)("image", mx.targets.ClassLogit(0)), TypeError, "inputs"),
    ("layer-tokens-no-reshape", lambda m: mx.GradCAM(_tokens(), "1")(_x(), mx.targets.Scalar(lambda o: o.sum((1, 2)))),
     ValueError, "reshape="),
    ("layer-tuple", lambda m: mx.GradCAM(_pair(), "0")(_x(), mx.targets.Scalar(lambda o: o.sum((1, 2, 3)))),
     TypeError, "not a tensor"),
    # targets
    ("classlogit-str", lambda m: mx.targets.ClassLogit("3"), TypeError, "ClassLogit index"),
    ("classlogit-float", lambda m: mx.targets.ClassLogit(1.5), TypeError, "ClassLogit index"),
    ("classlogit-bool", lambda m: mx.targets.ClassLogit(True), TypeError, "ClassLogit index"),
    ("classlogit-list-str", lambda m: mx.targets.ClassLogit([1, "a"]), TypeError, "ClassLogit index"),
    ("classlogit-none", lambda m: mx.targets.ClassLogit(None), TypeError, "ClassLogit index"),
    ("classlogit-float-tensor", lambda m: mx.targets.ClassLogit(torch.tensor(1.0)), TypeError, "ClassLogit index"),
    ("classlogit-range", lambda m: _cam(m)(_x(), mx.targets.ClassLogit(999)), ValueError, "999"),
    ("classlogit-per-sample", lambda m: _cam(m)(_x(2), mx.targets.ClassLogit([1, 2, 3])), ValueError, "index"),
    ("answerscore-str", lambda m: mx.targets.AnswerScore("yes"), TypeError, "AnswerScore index"),
    ("scalar-complex", lambda m: _cam(m)(_x(), mx.targets.Scalar(lambda o: o[:, 0] * (1 + 1j))), TypeError, "dtype"),
    ("scalar-int", lambda m: _cam(m)(_x(), mx.targets.Scalar(lambda o: o[:, 0].long())), TypeError, "dtype"),
    ("scalar-shape", lambda m: _cam(m)(_x(), mx.targets.Scalar(lambda o: o)), ValueError, "one scalar per sample"),
    ("scalar-not-tensor", lambda m: _cam(m)(_x(), mx.targets.Scalar(lambda o: 1.0)), ValueError, "target 0"),
    ("scalar-detached", lambda m: _cam(m)(_x(), mx.targets.Scalar(lambda o: o[:, 0].detach())), ValueError, "depend"),
    # non-finite values
    ("score-nan", lambda m: _cam(m)(_x(), mx.targets.Scalar(lambda o: o[:, 0] * float("nan"))), ValueError, "score"),
    ("score-inf", lambda m: _cam(m)(_x(), mx.targets.Scalar(lambda o: o[:, 0] + float("inf"))), ValueError, "score"),
    ("gradient-inf", lambda m: _cam(m)(_x(), mx.targets.Scalar(lambda o: (o[:, 0] * 0).abs().sqrt())), ValueError,
     "gradient"),
    ("input-nan", lambda m: _cam(m)(torch.full((1, 3, 96, 96), float("nan")), mx.targets.ClassLogit(0)), ValueError,
     "activation"),
    ("input-inf", lambda m: _cam(m)(torch.full((1, 3, 96, 96), float("inf")), mx.targets.ClassLogit(0)), ValueError,
     "activation"),
    ("weights-nan", _nan_model, ValueError, "activation"),
    # images
    ("image-float-255", lambda m: mx.adapters.images.load_image(np.full((8, 8, 3), 200.0)), ValueError, "255"),
    ("image-nan", lambda m: mx.adapters.images.load_image(np.full((8, 8, 3), np.nan)), ValueError, "NaN"),
    ("image-tensor-nan", lambda m: mx.adapters.images.load_image(torch.full((3, 8, 8), float("nan"))), ValueError, "NaN"),
    ("image-int64", lambda m: mx.adapters.images.load_image(np.zeros((8, 8, 3), dtype=np.int64)), ValueError, "int64"),
    ("image-empty", lambda m: mx.adapters.images.load_image(np.zeros((0, 0, 3), dtype=np.uint8)), ValueError, "empty"),
    ("image-shape", lambda m: mx.adapters.images.load_image(np.zeros((8, 8, 5), dtype=np.uint8)), ValueError, "shape"),
    ("image-tensor-shape", lambda m: mx.adapters.images.load_image(torch.rand(2, 3, 8, 8)), ValueError, "tensor"),
    ("image-list", lambda m: mx.adapters.images.load_image([1, 2]), TypeError, "list"),
    ("image-pil-huge", lambda m: mx.adapters.images.load_image(Image.new("L", (9000, 9000))), ValueError, "pixels"),
    ("image-tensor-empty", lambda m: mx.adapters.images.load_image(torch.rand(3, 0, 4)), ValueError, "empty"),
    # zoo
    ("zoo-name", lambda m: mx.zoo.load("clasifier"), ValueError, "classifier"),
    ("zoo-new-huge", lambda m: mx.zoo.new("captioner", config={"hidden_dim": 10**7}), ValueError, "hidden_dim"),
    ("zoo-new-negative", lambda m: mx.zoo.new("captioner", config={"embed_dim": -1}), ValueError, "embed_dim"),
    ("zoo-new-image-size", lambda m: mx.zoo.new("classifier", config={"image_size": 0}), ValueError, "image_size"),
    ("zoo-new-str", lambda m: mx.zoo.new("vqa", config={"hidden_dim": "big"}), ValueError, "hidden_dim"),
    ("zoo-new-unknown", lambda m: mx.zoo.new("vqa", config={"hiden": 2}), ValueError, "hiden"),
    ("zoo-new-config-type", lambda m: mx.zoo.new("vqa", config=3), TypeError, "config"),
    ("zoo-hf-huge", lambda m: mx.zoo.new("tiny-vilt", config={"hidden": 10**7}), ValueError, "hidden"),
    ("zoo-hf-zero", lambda m: mx.zoo.new("tiny-ved", config={"image_size": 0}), ValueError, "image_size"),
]


# the transformers checkpoints: a config.json read before transformers builds anything
HF_CASES = [
    ("nested", lambda d: d.update(deep=json.loads("[" * 10 + "]" * 10)), None),
    ("hidden-1e7", lambda d: d.update(hidden_size=10**7), "hidden_size"),
    ("hidden-negative", lambda d: d.update(hidden_size=-4), "hidden_size"),
    ("image-size-0", lambda d: d.update(image_size=0), "image_size"),
    ("patch-text", lambda d: d.update(patch_size="8"), "patch_size"),
    ("vocab-huge", lambda d: d.update(vocab_size=10**9), "vocab_size"),
]


@pytest.fixture(scope="module")
def vilt_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf") / "tiny-vilt"
    mx.zoo.save(mx.zoo.new("tiny-vilt"), folder)
    return folder


@pytest.mark.parametrize("edit,want", [c[1:] for c in HF_CASES if c[2]], ids=[c[0] for c in HF_CASES if c[2]])
def test_hf_config_checked(vilt_folder, tmp_path, edit, want):
    import shutil

    folder = tmp_path / "tiny-vilt"
    shutil.copytree(vilt_folder, folder)
    _edit_config(folder, edit)
    with pytest.raises(ValueError, match=want):
        mx.zoo.load("tiny-vilt", folder)


def test_hf_config_deeply_nested(vilt_folder, tmp_path):
    import shutil

    folder = tmp_path / "tiny-vilt"
    shutil.copytree(vilt_folder, folder)
    (folder / "config.json").write_text("{" + '"a": {' * 200_000 + "}" * 200_001)
    with pytest.raises(ValueError, match="nested"):
        mx.zoo.load("tiny-vilt", folder)


# ---------------------------------------------------------------- explainers, dissection, labels

def test_explainers_refuse_a_bomb(world):
    captioner, vqa = mx.zoo.load("captioner", world / "models"), mx.zoo.load("vqa", world / "models")
    for call in (lambda: mx.explain_caption(captioner, world / "bomb.png"),
                 lambda: mx.explain_answer(vqa, world / "bomb.png", "what color is the circle ?"),
                 lambda: mx.explain_class(mx.zoo.load("classifier", world / "models"), world / "bomb.png")):
        with pytest.raises(ValueError, match="pixels"):
            call()


def test_dissect_refuses_empty_masks(classifier):
    before = snapshot(classifier)
    data = [(torch.rand(3, 96, 96), {"red": torch.zeros(0, 0, dtype=torch.bool)})]
    with pytest.raises(ValueError, match="mask"):
        mx.dissect(classifier, classifier.default_layer, data)
    assert_unchanged(classifier, before)


LABEL_CASES = [
    ("short-row", "labels.csv", "unit,category,label,score\n0,color\n", "fields"),
    ("unit-text", "labels.csv", "unit,category,label,score\nabc,color,red,0.5\n", "unit"),
    ("iou-nan", "labels.csv", "unit,category,label,score\n0,color,red,nan\n", "score"),
    ("iou-text", "labels.csv", "unit,category,label,score\n0,color,red,high\n", "score"),
    ("bad-header", "labels.csv", "a,b\n1,2\n", "tally.csv"),
    ("bad-iou-column", "labels.csv", "unit,category,label,score,iou:red\n0,color,red,0.5,0.1\n", "iou:"),
    ("not-utf8", "labels.csv", b"\xff\xfe\x00", "UTF-8"),
    ("json-nested", "labels.json", "[" * 200_000 + "]" * 200_000, "nested"),
    ("json-broken", "labels.json", "{", "JSON"),
    ("json-format", "labels.json", json.dumps({"format": "other"}), "document"),
    ("json-iou-nan", "labels.json", None, "iou"),
    ("json-unit-text", "labels.json", None, "unit"),
    ("suffix", "labels.txt", "x", ".json or .csv"),
    ("missing", "nope.json", None, "nope.json"),
]


def _labels_doc(**unit) -> str:
    doc = {"format": "mmexplain.neuron-labels", "version": 1, "layer": "x", "quantile": 0.99, "iou_threshold": 0.04,
           "n_images": 1, "categories": {"red": "color"},
           "units": [{"unit": 0, "concept": "red", "category": "color", "iou": 0.5, **unit}]}
    return json.dumps(doc).replace("NaN", "NaN")


@pytest.mark.parametrize("name,content,want", [c[1:] for c in LABEL_CASES], ids=[c[0] for c in LABEL_CASES])
def test_labels_load_corrupt(tmp_path, name, content, want):
    from mmexplain.dissect import labels as labels_module

    path = tmp_path / name
    if name == "labels.json" and content is None:
        fmt = labels_module._FORMAT
        doc = json.loads(_labels_doc())
        doc["format"] = fmt
        doc["units"][0].update({"iou": float("nan")} if want == "iou" else {"unit": "seven"})
        content = json.dumps(doc)
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        NeuronLabels.load(path)
    assert want in str(info.value), str(info.value)
    assert len(str(info.value).splitlines()) == 1


# ---------------------------------------------------------------- correct answers, nothing corrupted

def test_training_mode_model_is_unchanged():
    model = mx.zoo.new("classifier").train()
    before = snapshot(model)
    with pytest.warns(UserWarning, match="training mode"):
        res = mx.GradCAM(model, model.default_layer)(_x(2), mx.targets.ClassLogit(1))
    assert torch.isfinite(res.maps).all()
    assert_unchanged(model, before)  # running_mean, running_var, num_batches_tracked included


def test_mixed_training_flags_survive_generate_and_explain_caption():
    cap = mx.zoo.new("captioner").train()
    cap.encoder.eval()
    before = snapshot(cap)
    cap.generate(_x())
    assert_unchanged(cap, before)
    with pytest.warns(UserWarning):
        mx.explain_caption(cap, _x()[0])
    assert_unchanged(cap, before)


def test_sixteen_bit_png_equals_its_eight_bit_copy(tmp_path):
    rng = np.random.default_rng(1)
    eight = (rng.random((20, 30)) * 255).astype(np.uint8)
    Image.fromarray(eight).save(tmp_path / "g8.png")
    Image.fromarray(eight.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    a = mx.adapters.images.load_image(tmp_path / "g8.png")
    b = mx.adapters.images.load_image(tmp_path / "g16.png")
    c = mx.adapters.images.load_image(Image.open(tmp_path / "g16.png"))
    assert a.shape == b.shape == (3, 20, 30)
    assert (a - b).abs().max() <= 1 / 255 and (a - c).abs().max() <= 1 / 255


def test_stale_temporaries_do_not_accumulate(tmp_path):
    from mmexplain._io import atomic_folder, write_text

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has exited
    (tmp_path / f".out.txt.{pid}.abcd.tmp").write_text("partial")
    (tmp_path / f".run.{pid}.wxyz.tmp").mkdir()
    (tmp_path / f".run.{pid}.wxyz.tmp" / "x").write_text("partial")
    alive = tmp_path / f".out.txt.{os.getppid()}.efgh.tmp"  # a live process's temporary stays
    alive.write_text("in progress")
    write_text(tmp_path / "out.txt", "done\n")
    with atomic_folder(tmp_path / "run") as tmp:
        (tmp / "a").write_text("a")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["out.txt", "run", alive.name]), names


def test_sigkill_mid_write_leaves_nothing_on_the_next_write(tmp_path):
    code = ("import os, signal, sys; from mmexplain._io import atomic_write\n"
            "def write(tmp):\n    tmp.write_text('half'); os.kill(os.getpid(), signal.SIGKILL)\n"
            f"atomic_write({str(tmp_path / 'f.txt')!r}, write)\n")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=False)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")], "the kill should leave a temporary"
    from mmexplain._io import write_text

    write_text(tmp_path / "f.txt", "whole\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def test_disk_full_is_one_line(tmp_path):
    # a real image, so the write is what fails
    Image.fromarray(np.zeros((96, 96, 3), np.uint8)).save(tmp_path / "img.png")
    # matplotlib's font cache is built first (a fresh venv has none), so the write under the limit is the figure's
    script = (f"{sys.executable} -c 'import matplotlib.pyplot' && ulimit -f 8 && "
              f"exec {sys.executable} -m mmexplain caption {tmp_path}/img.png --out {tmp_path}/o.png --threads 1")
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "File too large" in lines[0], proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.png"]


def test_every_package_is_in_the_wheel_list():
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "mmexplain").rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)


def test_wheel_carries_the_models(tmp_path):
    """Build the wheel, install it into a fresh venv and run the demo from a folder outside the repository.

    The inner venv sees the running environment's packages (torch is not fetched again) through a
    ``.pth`` file listing its site folders, so this works from any venv, and the wheel's own
    ``mmexplain`` comes first on the inner venv's path.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(REPO),
                    "-w", str(tmp_path / "dist")], check=True, cwd=tmp_path, env=env, capture_output=True)
    wheel = next((tmp_path / "dist").glob("mmexplain-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True)
    py = tmp_path / "venv" / "bin" / "python"
    inner = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                           check=True, capture_output=True, text=True).stdout.strip()
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel)], check=True,
                   cwd=tmp_path, env=env, capture_output=True)
    # after the install, so pip never sees the outer mmexplain
    outer = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()}
    # plain path lines: the outer folders' own .pth files (an editable mmexplain) are not run
    Path(inner, "outer-env.pth").write_text("".join(f"{p}\n" for p in sorted(outer) if Path(p).is_dir()))
    work = tmp_path / "elsewhere"
    work.mkdir()
    proc = subprocess.run([str(py), "-m", "mmexplain", "demo", "--scenes", "1", "--naming-scenes", "0", "--out", "X",
                           "--threads", "1"], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (work / "X" / "report.html").is_file()
    where = subprocess.run([str(py), "-c", "import mmexplain.zoo as z; print(z.default_root())"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert "site-packages" in where and where.endswith("shipped"), where


# ---------------------------------------------------------------- datasets, evaluate options, HF folders, reports
# Cases of a second hostile pass: damaged explain-dataset manifests, options past their range, COCO
# file names outside the image folder, methods that do not apply, the current folder as --out,
# damaged transformers checkpoints and report sections pointing outside the page.

_MANIFEST_DAMAGE = {
    "list": "[1, 2]",
    "no-shard-keys": lambda m: {**m, "shards": [{}]},
    "nested": "[" * 200_000 + "]" * 200_000,
    "not-json": "{oops",
    "empty": "",
    "truncated": lambda m: json.dumps(m)[:50],
    "not-utf8": b"\xff\xfe{",
    "options-int": lambda m: {**m, "options": 3},
    "options-list": lambda m: {**m, "options": [1]},
    "complete-string": lambda m: {**m, "complete": "no"},
    "rows-mismatch": lambda m: {**m, "rows": m["rows"] + 1},
    "shard-path": lambda m: {**m, "shards": [{**m["shards"][0], "rows_file": "../../etc/passwd"}]},
}


@pytest.fixture(scope="module")
def datasets(world, tmp_path_factory):
    """An explain-dataset run, copies with damaged manifests, COCO files with bad file names."""
    import shutil

    root = tmp_path_factory.mktemp("datasets")
    code, err = _run(["explain-dataset", "--models", str(world / "models"), "--scenes", "1", "--out",
                      str(root / "good"), "--threads", "1", "--quiet"])
    assert code == 0, err
    manifest = json.loads((root / "good" / "manifest.json").read_text())
    for tag, damage in _MANIFEST_DAMAGE.items():
        shutil.copytree(root / "good", root / tag)
        content = damage(manifest) if callable(damage) else damage
        content = json.dumps(content) if isinstance(content, dict) else content
        path = root / tag / "manifest.json"
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    coco = root / "coco"
    coco.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(coco / "a.png")
    for tag, name in (("escape", "../../etc/passwd"), ("absolute", "/etc/passwd"), ("missing", "b.png"), ("number", 7)):
        (coco / f"{tag}.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png"},
                                                                 {"id": 2, "file_name": name}]}))
    return root


ED = ["explain-dataset", "--models", "{w}/models", "--scenes", "1", "--threads", "1", "--quiet"]
MORE_CLI_CASES = [
    # a damaged manifest is never resumed
    *[(f"explain-dataset-resume-{tag}", [*ED, "--out", f"{{d}}/{tag}", "--resume"], "manifest.json")
      for tag in _MANIFEST_DAMAGE],
    # checked before the first write: no folder, no manifest is left
    ("explain-dataset-map-size-huge", [*ED, "--out", "{d}/new", "--map-size", "100000"], "4096"),
    ("explain-dataset-layer-bogus", [*ED, "--out", "{d}/new", "--layer", "bogus"], "bogus"),
    ("explain-dataset-relevancy-cnn", [*ED, "--out", "{d}/new", "--method", "relevancy"], "Relevancy"),
    ("explain-dataset-scenes-huge", [*ED[:3], "--scenes", "1000000000", "--out", "{d}/new"], "--scenes"),
    *[(f"explain-dataset-coco-{tag}", [*ED, "--out", "{d}/new", "--input", f"{{d}}/coco/{tag}.json"], want)
      for tag, want in (("escape", "../../etc/passwd"), ("absolute", "/etc/passwd"), ("missing", "b.png"),
                        ("number", "file_name"))],
    # options named, not internals
    ("evaluate-grounding-scenes-huge", ["evaluate", "grounding", "--scenes", "1000000000"], "--scenes"),
    ("evaluate-grounding-offset", ["evaluate", "grounding", "--scenes", "10", "--offset", "99995"], "--offset"),
    ("evaluate-sanity-scenes-huge", ["evaluate", "sanity", "--scenes", "100001"], "--scenes"),
    ("demo-seed-past-split", ["demo", "--out", "{d}/demo", "--scenes", "10", "--seed", "99999"], "--seed"),
    ("dissect-scenes-past-split", ["dissect", "classifier", "--out", "{d}/dis", "--scenes", "1000000"], "--scenes"),
    *[(f"evaluate-diagnosis-eps-{v}", ["evaluate", "diagnosis", "--eps", v, "--scenes", "1"], "--eps")
      for v in ("inf", "1e9", "nan", "0", "-1")],
    ("evaluate-diagnosis-biased-missing", ["evaluate", "diagnosis", "--biased", "{d}/nowhere", "--scenes", "1"],
     "--biased"),
    ("evaluate-diagnosis-biased-empty", ["evaluate", "diagnosis", "--biased", "{d}/coco", "--scenes", "1"],
     "--biased"),
    # methods that do not apply to the CNN models: a named refusal, not an IndexError or an empty table
    ("evaluate-grounding-relevancy-cnn", ["evaluate", "grounding", "--methods", "relevancy", "--scenes", "1",
                                          "--models", "{w}/models"], "relevancy"),
    *[(f"evaluate-{ev}-relevancy-cnn", ["evaluate", ev, "--methods", "relevancy", "--scenes", "1",
                                        "--models", "{w}/models"], "relevancy")
      for ev in ("sanity", "faithfulness", "occlusion", "localization")],
]


@pytest.mark.parametrize("argv,want", [c[1:] for c in MORE_CLI_CASES], ids=[c[0] for c in MORE_CLI_CASES])
def test_cli_bad_input_datasets_and_options(world, datasets, argv, want):
    argv = [a.replace("{w}", str(world)).replace("{d}", str(datasets)) for a in argv]
    want = want.replace("{w}", str(world)).replace("{d}", str(datasets))
    before = _tree(world), _tree(datasets)
    code, err = _run(argv)
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert want in lines[0] and "error" in lines[0], lines[0]
    assert (_tree(world), _tree(datasets)) == before, "a failed command changed a folder"


@pytest.mark.parametrize("argv", [["dissect", "classifier", "--scenes", "2", "--no-gallery", "--quiet"],
                                  ["demo", "--scenes", "1", "--naming-scenes", "0"],
                                  ["train", "classifier", "--force", "--steps", "1"]],
                         ids=["dissect", "demo", "train"])
@pytest.mark.parametrize("out", [".", "./", ".."])
def test_out_the_current_folder_is_refused_up_front(world, tmp_path, monkeypatch, argv, out):
    here = tmp_path / "here"
    here.mkdir()
    (here / "mine.txt").write_text("mine\n")
    monkeypatch.chdir(here)
    before = _tree(tmp_path)
    code, err = _run([*argv, "--models", str(world / "models"), "--out", out] if argv[0] != "train"
                     else [*argv, "--out", out])
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "--out" in err and "current folder" in err, err
    assert _tree(tmp_path) == before


def test_read_dataset_refuses_every_damaged_manifest(datasets):
    assert mx.evaluation.read_dataset(datasets / "good").rows.num_rows > 0
    for tag in _MANIFEST_DAMAGE:
        with pytest.raises(ValueError) as info:
            mx.evaluation.read_dataset(datasets / tag)
        text = str(info.value)
        assert str(datasets / tag / "manifest.json") in text and len(text.splitlines()) == 1, (tag, text)


def test_read_dataset_names_a_missing_or_damaged_shard(datasets, tmp_path):
    import shutil

    shutil.copytree(datasets / "good", tmp_path / "run")
    (tmp_path / "run" / "rows-00000.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ValueError, match="rows-00000.parquet"):
        mx.evaluation.read_dataset(tmp_path / "run")
    (tmp_path / "run" / "maps-00000.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="maps-00000.safetensors"):
        mx.evaluation.read_dataset(tmp_path / "run")


# transformers checkpoint folders: (id, model, damage(folder), text the one-line error holds)
def _set(section: str | None, **values):
    def edit(folder: Path) -> None:
        _edit_config(folder, lambda d: (d[section] if section else d).update(values))
    return edit


def _write(name: str, data: bytes):
    return lambda folder: (folder / name).write_bytes(data)


def _pickle(folder: Path) -> None:
    torch.save({"weight": torch.zeros(2)}, folder / "model.safetensors")


HF_FOLDER_CASES = [
    ("vlm-hidden-1e7", "tiny-llava", _set("text_config", hidden_size=10**7), "text_config.hidden_size"),
    ("vlm-vocab-1e9", "tiny-llava", _set("text_config", vocab_size=10**9), "text_config.vocab_size"),
    ("vlm-vision-hidden-1e7", "tiny-llava", _set("vision_config", hidden_size=10**7), "vision_config.hidden_size"),
    ("vlm-layers-0", "tiny-llava", _set("text_config", num_hidden_layers=0), "num_hidden_layers"),
    ("vlm-heads-text", "tiny-llava", _set("text_config", num_attention_heads="4"), "num_attention_heads"),
    ("vlm-nested", "tiny-llava", _write("config.json", b"{" + b'"a": {' * 200_000 + b"}" * 200_001), "nested"),
    ("vlm-pickle", "tiny-llava", _pickle, "pickle"),
    ("vlm-config-huge", "tiny-llava", _write("config.json", b" " * (5 * 2**20) + b"{}"), "bytes"),
    ("ved-pickle", "tiny-ved", _pickle, "model.safetensors"),
    ("ved-truncated", "tiny-ved", lambda f: (f / "model.safetensors").write_bytes(
        (f / "model.safetensors").read_bytes()[:1000]), "model.safetensors"),
    ("ved-decoder-vocab-1e9", "tiny-ved", _set("decoder", vocab_size=10**9), "decoder.vocab_size"),
    ("vilt-pickle", "tiny-vilt", _pickle, "pickle"),
    ("vilt-not-utf8", "tiny-vilt", _write("config.json", b"\xff\xfe{}"), "UTF-8"),
    ("vilt-empty-config", "tiny-vilt", _write("config.json", b""), "empty"),
    ("vilt-config-list", "tiny-vilt", _write("config.json", b"[1, 2]"), "JSON object"),
]


@pytest.mark.parametrize("name,damage,want", [c[1:] for c in HF_FOLDER_CASES], ids=[c[0] for c in HF_FOLDER_CASES])
def test_zoo_load_refuses_a_damaged_transformers_folder(tmp_path, name, damage, want):
    import shutil

    folder = tmp_path / name
    shutil.copytree(REPO / "models" / name, folder)
    damage(folder)
    with pytest.raises(ValueError) as info:
        mx.zoo.load(name, folder)
    text = str(info.value)
    assert want in text and str(folder) in text and len(text.splitlines()) == 1, text


@pytest.fixture(scope="module")
def caption_section(world):
    ex = mx.explain_caption(mx.zoo.load("captioner", world / "models"), mx.world.generate(7).image)
    return mx.viz.caption_view(ex)


@pytest.mark.parametrize("image", ["https://example.com/x.png", "//example.com/x.png", "x.png", "file:///etc/passwd",
                                   "data:image/svg+xml;base64,PHN2Zz4=", 'data:image/png;base64,AA"><img src=x>', None],
                         ids=["https", "scheme-relative", "relative", "file", "svg", "quote", "none"])
def test_report_sections_embed_their_images(caption_section, tmp_path, image):
    mx.viz.write_report([caption_section], tmp_path / "ok.html")  # the section as made: accepted
    with pytest.raises(ValueError, match=r"sections\[0\]\['image'\]"):
        mx.viz.write_report([dict(caption_section, image=image)], tmp_path / "bad.html")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.html"]


def test_report_accepts_a_text_only_figure_but_no_remote_figure_image(caption_section, tmp_path):
    text_only = mx.viz.figure_view(title="Neuron names", paragraphs=["unit 3: red (IoU 0.12)"])
    mx.viz.write_report([caption_section, text_only], tmp_path / "ok.html")  # what the demo writes
    assert "Neuron names" in (tmp_path / "ok.html").read_text()
    with pytest.raises(ValueError, match=r"sections\[1\]\['image'\]"):
        mx.viz.write_report([caption_section, dict(text_only, image="https://example.com/x.png")], tmp_path / "bad.html")
    assert not (tmp_path / "bad.html").exists()


MORE_API_CASES = [
    ("faithfulness-methods-empty", lambda m: mx.evaluation.faithfulness.faithfulness(m, range(2_000_000, 2_000_001),
                                                                                      methods=[]), ValueError, "methods"),
    ("faithfulness-relevancy-cnn", lambda m: mx.evaluation.faithfulness.faithfulness(
        m, range(2_000_000, 2_000_001), methods=["relevancy"]), ValueError, "relevancy"),
    ("sanity-methods-empty", lambda m: mx.evaluation.sanity.sanity_check(m, range(2_000_000, 2_000_001), methods=[]),
     ValueError, "methods"),
    ("pgd-eps-inf", lambda m: mx.evaluation.diagnosis.pgd_attack(m, _x(), 0, eps=float("inf")), ValueError, "eps"),
    ("pgd-eps-nan", lambda m: mx.evaluation.diagnosis.pgd_attack(m, _x(), 0, eps=float("nan")), ValueError, "eps"),
    ("adversarial-eps-huge", lambda m: mx.evaluation.diagnosis.adversarial_pointing(m, range(2_000_000, 2_000_001),
                                                                                     eps=1e9), ValueError, "eps"),
    ("explain-dataset-map-size-huge", lambda m: mx.evaluation.explain_dataset(m, [None], "/nonexistent/x",
                                                                               map_size=100_000), ValueError, "4096"),
    ("atomic-folder-cwd", lambda m: _io.atomic_folder(".").__enter__(), ValueError, "current folder"),
]


@pytest.mark.parametrize("call,error,want", [c[1:] for c in API_CASES + MORE_API_CASES],
                         ids=[c[0] for c in API_CASES + MORE_API_CASES])
def test_api_bad_input(classifier, call, error, want):
    import mmexplain.evaluation.diagnosis  # noqa: F401 - the modules the calls name
    import mmexplain.evaluation.faithfulness  # noqa: F401
    import mmexplain.evaluation.sanity  # noqa: F401

    before = snapshot(classifier)
    with pytest.raises(error) as info:
        call(classifier)
    text = str(info.value)
    assert want in text and len(text.splitlines()) == 1, text
    assert_unchanged(classifier, before)


def test_diagnosis_without_wrong_answers_says_so():
    from mmexplain.evaluation.diagnosis import format_adversarial, format_failures

    text = format_failures({"questions": 7, "wrong": 0, "method": "gradcam", "pointing_predicted": None,
                            "pointing_right": None, "spearman": None, "by_kind": {"color": [0, 7]}})
    assert "no wrong answers among 7" in text and "nan" not in text
    text = format_adversarial({"scenes": 3, "flipped": 0.0, "pointing_before": None, "pointing_after": None,
                               "eps": 0.01, "max_change": 0.01, "seconds": 1.0})
    assert "none of 3 scenes" in text and "nan" not in text and "0%" not in text


def test_localization_of_all_methods_leaves_out_what_does_not_apply(world):
    """--methods all on the classifier: every map method measured; relevancy (no attention) and Guided
    Grad-CAM (no box) are left out, not a reason to refuse the whole run."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["evaluate", "localization", "--methods", "all", "--scenes", "1", "--models", str(world / "models")])
    assert code == 0, err.getvalue()
    rows = [line.split("|")[1].strip() for line in out.getvalue().splitlines() if line.startswith("| ") and "%" in line]
    assert rows[0] == "Grad-CAM" and "Score-CAM" in rows and "Occlusion" in rows, rows
    assert not any("Relevancy" in r or "Guided" in r for r in rows), rows
