"""Reference models: shapes, teacher forcing, preprocessing, training steps, shipped checkpoints."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from mmexplain import world, zoo
from mmexplain.training import zoo as training

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def fresh():
    torch.manual_seed(0)
    return {name: training.new_model(name).eval() for name in zoo.NAMES}


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
    model = training.new_model(name).train()
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
    metrics = training.evaluate(model, n=64, pointing_n=0)
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
    training.save(model, tmp_path / "vqa")
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


def test_train_command_writes_checkpoint(tmp_path, capsys):
    out = tmp_path / "clf"
    rc = training.main(["train", "classifier", "--steps", "2", "--batch-size", "4", "--n", "8",
                        "--out", str(out)])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["CARD.md", "config.json", "vocab.json",
                                                     "weights.safetensors"]
    assert "mAP" in capsys.readouterr().out
    assert "mmexplain train" in (out / "CARD.md").read_text()
    assert zoo.load("classifier", out).classes == zoo.load("classifier").classes


def test_pointing_game_reports_each_word_kind(shipped):
    res = training.pointing(shipped["captioner"], n=6)
    assert set(res) == {"all", "size", "color", "shape"} and all(0.0 <= v <= 1.0 for v in res.values())
