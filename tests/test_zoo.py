"""Reference models: shapes, teacher forcing, preprocessing, training, shipped checkpoints, `mmexplain train`."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mmexplain import cli, world, zoo
from mmexplain.training import evaluate as ev
from mmexplain.training import loop
from mmexplain.training import zoo as training


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fresh():
    return {name: zoo.new(name, seed=0) for name in zoo.NAMES}


@pytest.fixture(scope="module")
def shipped():
    return {name: zoo.load(name) for name in zoo.NAMES}


def test_forward_shapes(fresh):
    x = torch.rand(2, 3, 96, 96)
    clf, cap, vqa = fresh["classifier"], fresh["captioner"], fresh["vqa"]
    assert clf(x).shape == (2, len(clf.classes)) == (2, 20)
    assert clf.classes[0] == "red circle" and isinstance(clf.fc, torch.nn.Linear)
    tokens = torch.tensor([[cap.vocab.bos, 5, 6, 7], [cap.vocab.bos, 8, cap.vocab.pad, cap.vocab.pad]])
    assert cap(x, tokens).shape == (2, 4, len(cap.vocab))
    q = vqa.encode_questions(["what shape is the red object ?", "is there a red circle?"])
    assert q.shape == (2, 7) and q[0, -1] != vqa.vocab.pad and q[1, -1] == vqa.vocab.pad
    assert vqa(x, q).shape == (2, len(vqa.answers))
    for m in fresh.values():  # the layer to explain exists and is 12 x 12
        layer = dict(m.named_modules())[m.default_layer]
        out = {}
        h = layer.register_forward_hook(lambda mod, i, o: out.setdefault("a", o))
        try:
            m(x) if m is clf else m(x, tokens) if m is cap else m(x, q)
        finally:
            h.remove()
        assert out["a"].shape[-2:] == (12, 12)


def test_captioner_is_causal_and_generates(fresh):
    cap = fresh["captioner"]
    x = torch.rand(1, 3, 96, 96)
    a = torch.tensor([[cap.vocab.bos, 5, 6, 7, 8]])
    b = a.clone()
    b[0, 3:] = torch.tensor([9, 10])
    la, lb = cap(x, a), cap(x, b)
    assert torch.allclose(la[:, :3], lb[:, :3], atol=1e-6)  # position t sees tokens[: t + 1] only
    assert not torch.allclose(la[:, 3:], lb[:, 3:])
    out = cap.generate(torch.rand(2, 3, 96, 96), max_len=5)
    assert len(out) == 2 and all(isinstance(w, str) for c in out for w in c) and all(len(c) <= 5 for c in out)
    assert len(cap.generate(torch.rand(3, 96, 96), beam=3, max_len=6)) == 1
    with pytest.raises(ValueError, match="beam"):
        cap.generate(x, beam=0)


def test_vocab_and_questions(fresh):
    cap, vqa = fresh["captioner"], fresh["vqa"]
    v = cap.vocab
    assert v.decode([v.bos, *v.encode(["a", "red", "circle"]), v.eos, 5]) == ["a", "red", "circle"]
    assert v.encode(["zebra"]) == [v.unk]
    with pytest.raises(ValueError, match="zebra"):
        vqa.encode_question("is there a zebra ?")
    with pytest.raises(TypeError, match="question"):
        vqa.encode_question(3)
    for s in (world.generate(k) for k in range(30)):  # every caption / question is in vocabulary
        assert v.unk not in v.encode(s.caption.split())
        for qa in s.questions:
            vqa.encode_question(qa.question)
            assert qa.answer in vqa.answers


def test_preprocess_inputs(fresh, tmp_path):
    from PIL import Image

    m = fresh["classifier"]
    img = world.generate(3).image
    arr = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    path = tmp_path / "scene.png"
    Image.fromarray(arr).save(path)
    ref = torch.from_numpy(arr).permute(2, 0, 1).float().unsqueeze(0) / 255
    for x in (str(path), path, Image.fromarray(arr), arr, arr.astype(np.float32) / 255, ref[0], ref):
        out = m.preprocess(x)
        assert out.shape == (1, 3, 96, 96) and torch.allclose(out, ref, atol=1e-6)
    assert m.preprocess(torch.rand(3, 48, 64)).shape == (1, 3, 96, 96)
    with pytest.raises(FileNotFoundError, match="nope.png"):
        m.preprocess(tmp_path / "nope.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ValueError, match="not an image"):
        m.preprocess(tmp_path / "text.png")
    with pytest.raises(TypeError, match="image"):
        m.preprocess(42)
    with pytest.raises(ValueError, match="image"):
        m.preprocess(torch.rand(4, 96, 96))
    with pytest.raises(ValueError, match="image"):
        m.preprocess(np.zeros((96, 96, 2), dtype=np.uint8))
    gray = m.preprocess(arr[..., 0])  # a grayscale array is read as three equal channels
    assert torch.equal(gray[0, 1], ref[0, 0]) and torch.equal(gray[0, 2], ref[0, 0])


@pytest.mark.parametrize("name", zoo.NAMES)
def test_a_few_steps_lower_the_loss(name):
    torch.manual_seed(0)
    model = zoo.new(name, seed=0).train()
    batch = training.make_batch(model, world.split_seeds("train", 16))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    first = training.batch_loss(model, batch).item()
    for _ in range(8):
        loss = training.batch_loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert training.batch_loss(model, batch).item() < 0.8 * first


# floors on 64 held-out scenes (the cards report 1,000-scene numbers well above these)
FLOORS = {"classifier": ("mAP", 0.9), "captioner": ("BLEU-4", 0.5), "vqa": ("accuracy", 0.8)}


@pytest.mark.parametrize("name", zoo.NAMES)
def test_shipped_checkpoint_clears_floor(shipped, name):
    model = shipped[name]
    assert not model.training
    key, floor = FLOORS[name]
    metrics = ev.evaluate_zoo(model, n=64, pointing_n=0)
    assert metrics[key] >= floor, metrics


def test_shipped_captioner_beats_language_prior(shipped):
    # the same caption for every image would be the language prior; captions must follow the image
    cap = shipped["captioner"]
    scenes = [world.generate(s) for s in world.split_seeds("test", 16)]
    out = cap.generate(torch.stack([s.image for s in scenes]))
    assert len({" ".join(c) for c in out}) >= 12
    assert sum(" ".join(c) == s.caption for c, s in zip(out, scenes)) >= 8


def test_save_load_roundtrip(fresh, tmp_path):
    model = fresh["vqa"]
    zoo.save(model, tmp_path / "vqa")
    assert sorted(p.name for p in (tmp_path / "vqa").iterdir()) == ["config.json", "vocab.json",
                                                                      "weights.safetensors"]
    loaded = zoo.load("vqa", tmp_path)  # a directory holding vqa/
    loaded2 = zoo.load("vqa", tmp_path / "vqa")  # the model directory itself
    x = torch.rand(2, 3, 96, 96)
    q = model.encode_questions(["what shape is the red object ?"] * 2)
    assert torch.equal(model(x, q), loaded(x, q)) and torch.equal(loaded(x, q), loaded2(x, q))
    assert loaded.answers == model.answers and loaded.vocab.itos == model.vocab.itos


def test_corrupt_checkpoint_fails_cleanly(tmp_path):
    src = zoo.default_root() / "classifier"
    bad = tmp_path / "classifier"
    shutil.copytree(src, bad)
    data = (bad / "weights.safetensors").read_bytes()
    (bad / "weights.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="weights.safetensors"):
        zoo.load("classifier", tmp_path)
    (bad / "weights.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="weights.safetensors"):
        zoo.load("classifier", tmp_path)
    (bad / "weights.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="weights.safetensors"):
        zoo.load("classifier", tmp_path)
    shutil.copy(src / "weights.safetensors", bad / "weights.safetensors")
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        zoo.load("classifier", tmp_path)
    cfg = json.loads((src / "config.json").read_text())
    cfg["config"]["widths"] = [8, 8, 8]  # weights no longer match
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="weights.safetensors"):
        zoo.load("classifier", tmp_path)
    (bad / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        zoo.load("classifier", tmp_path)
    with pytest.raises(ValueError, match="name"):
        zoo.load("resnet")


    cap = json.loads((zoo.default_root() / "captioner" / "config.json").read_text())
    assert cap["config"]["grid"] == 0  # the shipped captioner predates the removal of the grid option
    cap["config"]["grid"] = 3
    shutil.copytree(zoo.default_root() / "captioner", tmp_path / "captioner")
    (tmp_path / "captioner" / "config.json").write_text(json.dumps(cap))
    with pytest.raises(ValueError, match="grid"):
        zoo.load("captioner", tmp_path)


# ----------------------------------------------------------------------------- grad-cam pointing


def _independent_peaks(model, inputs, scores):
    """(y, x) of each upsampled Grad-CAM maximum, written out by hand (alpha = mean dy/dA; ReLU(sum alpha A))."""
    store = {}
    layer = dict(model.named_modules())[model.default_layer]
    handle = layer.register_forward_hook(lambda mod, inp, out: store.setdefault("a", out))
    try:
        with torch.enable_grad():
            ys = scores(model(*inputs))  # (N,)
            peaks = []
            for n in range(ys.shape[0]):
                (g,) = torch.autograd.grad(ys[n], store["a"], retain_graph=True)
                cam = torch.relu((g.mean(dim=(2, 3), keepdim=True) * store["a"]).sum(1, keepdim=True))  # (1, 1, h, w)
                up = torch.nn.functional.interpolate(cam, size=inputs[0].shape[-2:], mode="bilinear", align_corners=False)
                peaks.append(divmod(int(up[0, 0].argmax()), up.shape[-1]))
    finally:
        handle.remove()
    return peaks


def test_pointing_game_matches_an_independent_gradcam(shipped):
    res = ev.pointing(shipped["captioner"], n=6)
    assert set(res) == {"all", "size", "color", "shape"} and all(0.0 <= v <= 1.0 for v in res.values())
    clf = shipped["classifier"]
    hits = []
    for seed in world.split_seeds("test", 8):
        s = world.generate(seed)
        present = sorted({f"{o.color} {o.shape}" for o in s.objects})
        idx = [clf.classes.index(c) for c in present]
        for (y, x), c in zip(_independent_peaks(clf, (s.image[None],), lambda out: out[0, idx]), present):
            hits.append(any(bool(o.mask[y, x]) for o in s.objects if f"{o.color} {o.shape}" == c))
    assert ev.pointing(clf, n=8) == {"all": float(np.mean(hits)), "class": float(np.mean(hits))}


# ----------------------------------------------------------------------------- the shared loop


def test_loop_is_seeded_and_leaves_the_callers_random_state():
    def run(seed):
        with torch.random.fork_rng():
            torch.manual_seed(1)
            model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1))

        def batch(step, gen):
            return torch.randn(16, 4, generator=gen)

        info = loop.fit(model, batch, lambda m, x: m(x).pow(2).mean(), loop.LoopConfig(steps=5, seed=seed, log_every=0))
        return model, info

    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, info = run(0)
    assert torch.equal(torch.get_rng_state(), before) and not a.training
    b, _ = run(0)
    c, _ = run(1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))
    assert info["steps"] == 5 and info["final_loss"] < info["first_loss"] * 1.5


def test_loop_stops_on_divergence():
    model = torch.nn.Linear(3, 1)
    x = torch.randn(8, 3)
    with pytest.raises(loop.TrainingDiverged, match="step 2 of 3: the loss"):
        loop.fit(model, lambda step, gen: (x, step), lambda m, b: m(b[0]).sum() * (float("nan") if b[1] else 1.0),
                 loop.LoopConfig(steps=3, log_every=0))
    with pytest.raises(ValueError, match="lr must be"):
        loop.LoopConfig(lr=-1.0)
    with pytest.raises(ValueError, match="steps must be"):
        loop.LoopConfig(steps=0)


@pytest.mark.parametrize("name", zoo.HF_NAMES)
def test_tiny_model_steps_through_the_shared_loop_lower_the_loss(name):
    from mmexplain.training import tiny_hf

    data = tiny_hf.training_data(name, zoo.new(name, seed=0), 6)
    fixed = tiny_hf.select(name, data, torch.arange(min(8, data["count"])))
    with torch.no_grad():
        before = tiny_hf.loss(zoo.tiny_hf.parts(zoo.new(name, seed=0))[0], fixed).item()
    model, info = tiny_hf.train(name, loop.LoopConfig(steps=3, batch_size=8, lr=3e-3, warmup=0, log_every=0),
                                n_train=6, log=None)
    with torch.no_grad():
        after = tiny_hf.loss(zoo.tiny_hf.parts(model)[0], fixed).item()
    assert info["steps"] == 3 and info["architecture"] == vars(zoo.tiny_hf.config_of(model))
    assert after < before, (before, after)


# ----------------------------------------------------------------------------- loading by name


def test_tiny_models_load_by_name_from_any_folder(monkeypatch, tmp_path):
    import transformers

    from mmexplain.adapters.hf import ViltVQA, VisionEncoderDecoderCaptioner

    monkeypatch.chdir(tmp_path)  # no models/ here
    ved, vilt = zoo.load("tiny-ved"), zoo.load("tiny-vilt")
    assert isinstance(ved, VisionEncoderDecoderCaptioner) and isinstance(vilt, ViltVQA)
    assert not ved.model.training and not vilt.hf_model.training
    px = torch.rand(2, 3, 64, 64) * 2 - 1
    tokens = torch.tensor([[1, 4, 9, 14], [1, 4, 8, 13]])
    direct = transformers.VisionEncoderDecoderModel.from_pretrained(ROOT / "models" / "tiny-ved").eval()
    by_path = zoo.load("tiny-ved", ROOT / "models" / "tiny-ved")
    with torch.no_grad():
        logits = ved.model(pixel_values=px, decoder_input_ids=tokens).logits  # (2, 4, V)
        assert torch.equal(logits, direct(pixel_values=px, decoder_input_ids=tokens).logits)
        assert torch.equal(logits, by_path.model(pixel_values=px, decoder_input_ids=tokens).logits)
    q = vilt.tokenizer(["what color is the square ?"] * 2, return_tensors="pt")
    direct = transformers.ViltForQuestionAnswering.from_pretrained(ROOT / "models" / "tiny-vilt").eval()
    with torch.no_grad():
        outs = []
        for model in (vilt.hf_model, direct, zoo.load("tiny-vilt", ROOT / "models").hf_model):
            torch.manual_seed(0)  # ViLT draws its patch order at random
            outs.append(model(pixel_values=px, **q).logits)  # (2, A)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    assert ved.generate(ved.load_image(world.generate(2_000_000, size=64).image))
    with pytest.raises(FileNotFoundError, match="mmexplain train tiny-ved"):
        zoo.load("tiny-ved", tmp_path)


def test_new_gives_untrained_models_of_every_name():
    for name in zoo.ALL_NAMES:
        a, b = zoo.new(name), zoo.new(name)
        pa = zoo.tiny_hf.parts(a)[0] if name in zoo.HF_NAMES else a
        pb = zoo.tiny_hf.parts(b)[0] if name in zoo.HF_NAMES else b
        assert all(torch.equal(x, y) for x, y in zip(pa.state_dict().values(), pb.state_dict().values()))
        assert not pa.training
    assert zoo.tiny_hf.config_of(zoo.new("tiny-ved", config={"enc_layers": 3})).enc_layers == 3
    with pytest.raises(ValueError, match="nearest: enc_layers"):
        zoo.new("tiny-ved", config={"enc_layer": 3})


def test_loading_imports_no_training_code():
    code = ("import sys, mmexplain as mx; mx.zoo.load('captioner'); mx.zoo.load('tiny-ved'); "
            "print(sorted(m for m in sys.modules if m.startswith('mmexplain.training')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", check=True,
                         env={"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip().splitlines()[-1] == "[]"


# ----------------------------------------------------------------------------- mmexplain train


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_train_without_out_writes_a_new_folder_and_keeps_models(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    before = _hashes(zoo.default_root())
    rc = cli.main(["train", "captioner", "--steps", "2", "--batch-size", "4", "--n", "4", "--log-every", "0"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert _hashes(zoo.default_root()) == before
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("captioner-") and f"wrote {Path('runs') / run.name}" in printed
    assert sorted(p.name for p in run.iterdir()) == ["CARD.md", "config.json", "vocab.json", "weights.safetensors"]
    card = (run / "CARD.md").read_text()
    assert "mmexplain train captioner --steps 2 --batch-size 4" in card and "--evaluate-only --scenes 4" in card
    assert "BLEU-4" in printed and zoo.load("captioner", run).vocab.itos == zoo.load("captioner").vocab.itos
    assert json.loads((run / "config.json").read_text())["training"]["steps"] == 2


def test_train_replaces_an_existing_folder_only_with_force(tmp_path, capsys):
    out = tmp_path / "clf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ["train", "classifier", "--steps", "2", "--batch-size", "4", "--n", "8", "--log-every", "0", "--out", str(out)]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "--force" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert cli.main(args + ["--force"]) == 0  # the checkpoint files replaced; the user's own file carried over
    assert sorted(p.name for p in out.iterdir()) == ["CARD.md", "config.json", "keep.txt", "vocab.json",
                                                     "weights.safetensors"]
    assert "mAP" in capsys.readouterr().out
    # continue from it (--init, old spelling --resume): the card keeps the earlier run
    assert cli.main(["train", "classifier", "--steps", "1", "--batch-size", "4", "--n", "8", "--log-every", "0",
                     "--resume", str(out), "--out", str(tmp_path / "more")]) == 0
    assert "continued from a checkpoint made by `mmexplain train classifier --steps 2" in \
        (tmp_path / "more" / "CARD.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clf", "more"]  # no temporary folders left


def test_diverged_training_saves_nothing(tmp_path, capsys):
    out = tmp_path / "x"
    rc = cli.main(["train", "classifier", "--steps", "3", "--batch-size", "4", "--n", "8", "--log-every", "0",
                   "--lr", "1e30", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "diverged" in err and "--lr" in err and "nothing was saved" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, option", [
    (["classifier", "--steps", "0"], "--steps"),
    (["captioner", "--n", "0"], "--n"),
    (["resnet"], "NAME"),
    (["vqa", "--lr", "-0.1"], "--lr"),
    (["captioner", "--batch-size", "0"], "--batch-size"),
    (["tiny-ved", "--questions-per-scene", "2"], "--questions-per-scene"),
    (["classifier", "--n-train", "10"], "--n-train"),
    (["captioner", "--config", "grid=3"], "--config"),
    (["tiny-vilt", "--evaluate-only", "--steps", "3"], "--steps"),
    (["captioner", "--from", "models/captioner"], "--from"),
])
def test_bad_train_input_gets_one_line_naming_the_option(monkeypatch, tmp_path, capsys, args, option):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mmexplain train: error: ") and option in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_evaluate_only_prints_the_metrics(capsys):
    assert cli.main(["train", "vqa", "--evaluate-only", "--n", "12"]) == 0
    out = capsys.readouterr().out
    metrics = json.loads(out[: out.rindex("}") + 1])
    assert metrics["n_scenes"] == 12 and metrics["accuracy"] >= 0.8 and "gradcam_answer_pointing" in metrics
    assert out.strip().splitlines()[-1] == f"vqa: accuracy = {metrics['accuracy']:.4f} on 12 held-out test scenes"
    assert cli.main(["train", "tiny-vilt", "--eval-only", "--from", str(zoo.default_root() / "tiny-vilt"),
                     "--n", "6"]) == 0
    out = capsys.readouterr().out
    metrics = json.loads(out[: out.rindex("}") + 1])
    assert metrics["n"] == 6 and 0.3 < metrics["accuracy"]["all"] <= 1.0 and "color" in metrics["accuracy"]


def test_help_shows_the_recipes():
    from mmexplain.cli import train as train_cli
    from mmexplain.training.run import recipe_table

    assert train_cli.RECIPES == recipe_table()
