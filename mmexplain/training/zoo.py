"""Train, evaluate and ship the reference models on ShapeWorld.

Command line (also ``python -m mmexplain.training.zoo``)::

    mmexplain train captioner [--out models/captioner] [--steps N] [--seed S]
    mmexplain train vqa --eval-only            # print held-out metrics of models/vqa
    python -m mmexplain.training.zoo evaluate classifier [--n 1000]

Training draws fresh scenes from the train split at every step (no epochs, no
overfitting to a fixed set); evaluation uses the first ``n`` scenes of the test split.
Training writes ``weights.safetensors``, ``config.json``, ``vocab.json`` and ``CARD.md``
to ``--out``, each atomically (temp file in the same directory, then ``os.replace``).

Metrics (held-out test split):

* classifier: mAP over the colour x shape classes (AP per class, then the mean), and
  the mean AP per colour and per shape;
* captioner: BLEU-4 (``nltk.translate.bleu_score.corpus_bleu``, greedy decoding),
  exact-caption rate, object-count accuracy, and per-attribute word accuracy on the
  captions whose object count is right;
* vqa: accuracy over every question of the test scenes, and per question kind.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import world
from ..zoo import CARD, CONFIG, NAMES, VOCAB, WEIGHTS, build, default_root, load
from ..zoo.captioner import Captioner
from ..zoo.classifier import Classifier, default_classes
from ..zoo.vocab import Vocab
from ..zoo.vqa import VQA

# per-model training defaults: steps, batch size, peak learning rate
DEFAULTS: dict[str, dict[str, float]] = {
    "classifier": {"steps": 1500, "batch_size": 32, "lr": 3e-3},
    "captioner": {"steps": 2500, "batch_size": 32, "lr": 3e-3},
    "vqa": {"steps": 2500, "batch_size": 24, "lr": 2e-3},
}
QUESTIONS_PER_SCENE = 0  # VQA training questions per scene (distinct kinds); 0: every question of the scene
WARMUP = 0.03  # fraction of steps with linear warm-up, then cosine decay to 0
EVAL_N = 1000


# ----------------------------------------------------------------------------- vocabularies


def caption_vocab() -> Vocab:
    """Every word a ShapeWorld caption can contain, sorted."""
    words = {"a", *world.RELATION.split(), *world.SIZES, *world.COLORS, *world.SHAPES}
    return Vocab(sorted(words))


def question_vocab() -> Vocab:
    """Every word a ShapeWorld question can contain, sorted."""
    words = {"what", "color", "shape", "size", "is", "the", "object", "objects", "how", "many", "are", "there",
             "a", "?", *world.COLORS, *world.SHAPES, *(s + "s" for s in world.SHAPES)}
    return Vocab(sorted(words))


def new_model(name: str) -> nn.Module:
    """An untrained model with the default config."""
    if name == "classifier":
        return build(name, {}, {"classes": default_classes()})
    if name == "captioner":
        return build(name, {}, caption_vocab().to_json())
    if name == "vqa":
        return build(name, {}, {**question_vocab().to_json(), "answers": world.answers()})
    raise ValueError(f"name must be one of {', '.join(NAMES)}, got {name!r}")


def vocab_json(model: nn.Module) -> dict:
    if isinstance(model, Classifier):
        return {"classes": model.classes}
    if isinstance(model, Captioner):
        return model.vocab.to_json()
    if isinstance(model, VQA):
        return {**model.vocab.to_json(), "answers": model.answers}
    raise TypeError(f"model must be a zoo model, got {type(model).__name__}")


def model_name(model: nn.Module) -> str:
    return {Classifier: "classifier", Captioner: "captioner", VQA: "vqa"}[type(model)]


# ----------------------------------------------------------------------------- batches


def caption_tensors(vocab: Vocab, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forcing inputs ``[<bos>, w1..wT]`` and targets ``[w1..wT, <eos>]``, both ``(B, L)``.

    Inputs are padded with ``vocab.pad``, targets with -100 (ignored by the loss).
    """
    ids = [vocab.encode(c.split()) for c in captions]
    length = max(len(x) for x in ids) + 1
    inputs = torch.full((len(ids), length), vocab.pad, dtype=torch.long)
    targets = torch.full((len(ids), length), -100, dtype=torch.long)
    for i, x in enumerate(ids):
        inputs[i, : len(x) + 1] = torch.tensor([vocab.bos, *x])
        targets[i, : len(x) + 1] = torch.tensor([*x, vocab.eos])
    return inputs, targets


def make_batch(model: nn.Module, seeds, *, bias=None, questions_per_scene: int = QUESTIONS_PER_SCENE) -> dict:
    """Scenes for ``seeds`` turned into the model's inputs and targets."""
    size = model.config.image_size
    scenes = [world.generate(s, size=size, bias=bias) for s in seeds]
    images = torch.stack([s.image for s in scenes])  # (B, 3, H, W)
    if isinstance(model, Classifier):
        index = {c: i for i, c in enumerate(model.classes)}
        targets = torch.zeros(len(scenes), len(model.classes))  # (B, C)
        for i, s in enumerate(scenes):
            for o in s.objects:
                targets[i, index[f"{o.color} {o.shape}"]] = 1.0
        return {"images": images, "targets": targets, "scenes": scenes}
    if isinstance(model, Captioner):
        tokens, targets = caption_tensors(model.vocab, [s.caption for s in scenes])
        return {"images": images, "tokens": tokens, "targets": targets, "scenes": scenes}
    if isinstance(model, VQA):
        qas, rows = [], []
        for j, s in enumerate(scenes):  # up to QUESTIONS_PER_SCENE questions: distinct kinds, then one of each
            rng = random.Random(s.seed * 7 + 1)
            kinds = sorted({q.kind for q in s.questions})
            if questions_per_scene <= 0:  # every question of the scene: contrasting questions about one image
                qas += s.questions
                rows += [j] * len(s.questions)
                continue
            for kind in rng.sample(kinds, min(questions_per_scene, len(kinds))):
                qas.append(rng.choice([q for q in s.questions if q.kind == kind]))
                rows.append(j)
        questions = model.encode_questions([q.question for q in qas])  # (Q, L)
        answers = torch.tensor([model.answers.index(q.answer) for q in qas])  # (Q,)
        return {"images": images, "questions": questions, "rows": torch.tensor(rows), "targets": answers,
                "scenes": scenes}
    raise TypeError(f"model must be a zoo model, got {type(model).__name__}")


def batch_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    if isinstance(model, Classifier):
        return nn.functional.binary_cross_entropy_with_logits(model(batch["images"]), batch["targets"])
    if isinstance(model, Captioner):
        logits = model(batch["images"], batch["tokens"])  # (B, L, V)
        return nn.functional.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(), ignore_index=-100)
    if isinstance(model, VQA):  # one CNN pass per image, several questions per image
        image = model.image_embedding(batch["images"])[batch["rows"]]  # (Q, F)
        logits = model.fuse(image, model.question_embedding(batch["questions"]))  # (Q, A)
        return nn.functional.cross_entropy(logits, batch["targets"])
    raise TypeError(f"model must be a zoo model, got {type(model).__name__}")


# ----------------------------------------------------------------------------- training


def init_encoder(model: nn.Module, folder: str | os.PathLike) -> None:
    """Copy the conv encoder of the classifier checkpoint in ``folder`` into ``model.encoder``.

    The paper models start from a pretrained CNN; here the pretrained CNN is our own
    ShapeWorld classifier (same ``widths``/``extra`` required).
    """
    clf = load("classifier", folder)
    if (clf.config.widths, clf.config.extra) != (model.config.widths, model.config.extra):
        raise ValueError(f"init encoder {folder}: classifier widths/extra {clf.config.widths}/{clf.config.extra} "
                         f"do not match the model's {model.config.widths}/{model.config.extra}")
    model.encoder.load_state_dict(clf.encoder.state_dict())


def train(name: str, *, steps: int | None = None, seed: int = 0, batch_size: int | None = None,
          lr: float | None = None, bias=None, progress: bool = True, model: nn.Module | None = None,
          encoder_from: str | os.PathLike | None = None,
          questions_per_scene: int = QUESTIONS_PER_SCENE) -> tuple[nn.Module, dict]:
    """Train a reference model from scratch on fresh train-split scenes.

    Args:
        name: ``"classifier"``, ``"captioner"`` or ``"vqa"``.
        steps, batch_size, lr: default from :data:`DEFAULTS`.
        seed: seeds the initialisation and picks where in the train split to start.
        bias: passed to :func:`mmexplain.world.generate` (biased training data).
        progress: show a tqdm progress bar.
        model: continue from this model instead of a fresh one.
        encoder_from: a classifier checkpoint directory whose CNN initialises the model's encoder.
        questions_per_scene: VQA only: questions (of distinct kinds) asked about each training scene.

    Returns:
        ``(model in eval mode, info)`` with ``info`` holding the losses and timing.
    """
    from tqdm import tqdm

    if name not in NAMES:
        raise ValueError(f"name must be one of {', '.join(NAMES)}, got {name!r}")
    d = DEFAULTS[name]
    steps = int(d["steps"] if steps is None else steps)
    batch_size = int(d["batch_size"] if batch_size is None else batch_size)
    lr = float(d["lr"] if lr is None else lr)
    if steps < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(f"steps and batch_size must be >= 1 and lr > 0, got {steps}, {batch_size}, {lr}")
    torch.manual_seed(seed)
    model = new_model(name) if model is None else model
    if encoder_from is not None:
        init_encoder(model, encoder_from)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() > 1]
    no_decay = [p for n, p in model.named_parameters() if p.dim() <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 1e-4}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr)
    warm = max(1, int(WARMUP * steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    train_seeds = world.SPLITS["train"]
    start = (seed * 100_003) % len(train_seeds)
    losses: list[float] = []
    t0, c0 = time.time(), time.process_time()
    bar = tqdm(range(steps), desc=f"train {name}", disable=not progress, dynamic_ncols=True)
    for step in bar:
        seeds = [train_seeds[(start + step * batch_size + i) % len(train_seeds)] for i in range(batch_size)]
        batch = make_batch(model, seeds, bias=bias, questions_per_scene=questions_per_scene)
        loss = batch_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 20 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
    seconds = time.time() - t0
    cpu_seconds = time.process_time() - c0
    info = {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "seconds": round(seconds, 1),
            "cpu_seconds": round(cpu_seconds, 1), "threads": torch.get_num_threads(),
            "first_loss": round(float(np.mean(losses[:20])), 4),
            "final_loss": round(float(np.mean(losses[-50:])), 4), "bias": bias,
            "encoder_from": None if encoder_from is None else Path(encoder_from).name}
    if isinstance(model, VQA):
        info["questions_per_scene"] = questions_per_scene
    return model.eval(), info


# ----------------------------------------------------------------------------- evaluation


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """AP of one class: mean precision at the rank of each positive (ties broken by order)."""
    order = np.argsort(-scores, kind="stable")
    hits = labels[order] > 0
    if not hits.any():
        return float("nan")
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


@torch.no_grad()
def evaluate(model: nn.Module, *, n: int = EVAL_N, batch_size: int = 100, bias=None, pointing_n: int = 200) -> dict:
    """Held-out metrics on the first ``n`` test scenes (see the module docstring).

    The Grad-CAM pointing game (:func:`pointing`) runs on the first ``min(n, pointing_n)``
    scenes; ``pointing_n=0`` skips it.
    """
    pn = min(n, pointing_n)

    def point() -> dict:
        return pointing(model, n=pn) if pn > 0 else {}

    model.eval()
    seeds = world.split_seeds("test", n)
    if isinstance(model, Classifier):
        scores, labels = [], []
        for i in range(0, n, batch_size):
            b = make_batch(model, seeds[i:i + batch_size], bias=bias)
            scores.append(model(b["images"]).numpy())
            labels.append(b["targets"].numpy())
        s, y = np.concatenate(scores), np.concatenate(labels)
        ap = {c: average_precision(s[:, k], y[:, k]) for k, c in enumerate(model.classes)}
        valid = {c: v for c, v in ap.items() if not math.isnan(v)}
        per_color = {col: float(np.mean([v for c, v in valid.items() if c.split()[0] == col])) for col in world.COLORS}
        per_shape = {sh: float(np.mean([v for c, v in valid.items() if c.split()[1] == sh])) for sh in world.SHAPES}
        exact = float(((s > 0) == (y > 0)).all(axis=1).mean())
        return {"n_scenes": n, "mAP": float(np.mean(list(valid.values()))), "exact_set_accuracy": exact,
                "AP_per_color": per_color, "AP_per_shape": per_shape,
                "gradcam_pointing": point(), "pointing_scenes": pn, "AP_per_class": valid}
    if isinstance(model, Captioner):
        from nltk.translate.bleu_score import corpus_bleu

        refs, hyps, scenes = [], [], []
        for i in range(0, n, batch_size):
            b = make_batch(model, seeds[i:i + batch_size], bias=bias)
            hyps += model.generate(b["images"])
            refs += [[s.caption.split()] for s in b["scenes"]]
            scenes += b["scenes"]
        correct = {"size": 0, "color": 0, "shape": 0}
        total = {"size": 0, "color": 0, "shape": 0}
        count_ok = 0
        for s, hyp in zip(scenes, hyps):
            ref = s.caption.split()
            if hyp.count("a") != len(s.objects) or len(hyp) != len(ref):
                continue
            count_ok += 1
            for k, j in s.alignment.items():
                attr = "size" if ref[k] in world.SIZES else "color" if ref[k] in world.COLORS else "shape"
                total[attr] += 1
                correct[attr] += hyp[k] == ref[k]
        return {"n_scenes": n, "BLEU-4": float(corpus_bleu(refs, hyps)),
                "exact_caption": float(np.mean([h == r[0] for h, r in zip(hyps, refs)])),
                "object_count_accuracy": count_ok / n,
                "word_accuracy": {a: correct[a] / max(1, total[a]) for a in correct},
                "gradcam_word_pointing": point(), "pointing_scenes": pn,
                "examples": [{"reference": " ".join(r[0]), "generated": " ".join(h)} for h, r in
                             list(zip(hyps, refs))[:5]]}
    if isinstance(model, VQA):
        right: dict[str, int] = {}
        count: dict[str, int] = {}
        for i in range(0, n, batch_size):
            scenes = [world.generate(s, size=model.config.image_size, bias=bias) for s in seeds[i:i + batch_size]]
            items = [(j, qa) for j, s in enumerate(scenes) for qa in s.questions]
            images = torch.stack([s.image for s in scenes])  # (b, 3, H, W)
            idx = torch.tensor([j for j, _ in items])
            for k in range(0, len(items), 400):
                chunk = items[k:k + 400]
                q = model.encode_questions([qa.question for _, qa in chunk])  # (q, L)
                pred = model(images[idx[k:k + 400]], q).argmax(dim=1)  # (q,)
                for (_, qa), p in zip(chunk, pred.tolist()):
                    count[qa.kind] = count.get(qa.kind, 0) + 1
                    right[qa.kind] = right.get(qa.kind, 0) + (model.answers[p] == qa.answer)
        per_kind = {k: right[k] / count[k] for k in world.QUESTION_KINDS if k in count}
        return {"n_scenes": n, "n_questions": sum(count.values()),
                "accuracy": sum(right.values()) / sum(count.values()),
                "mean_per_kind_accuracy": float(np.mean(list(per_kind.values()))),
                "accuracy_per_kind": per_kind, "questions_per_kind": count,
                "gradcam_answer_pointing": point(), "pointing_scenes": pn}
    raise TypeError(f"model must be a zoo model, got {type(model).__name__}")


def _gradcam_peaks(model: nn.Module, inputs: tuple, scores) -> list[tuple[int, int]]:
    """(y, x) of the maximum of each upsampled Grad-CAM map at ``model.default_layer``.

    ``scores(output) -> (N,)`` scalars of one image's output; a minimal, independent Grad-CAM
    (alpha = spatial mean of d score / d A; ReLU(sum_k alpha_k A^k); bilinear upsampling).
    """
    layer = dict(model.named_modules())[model.default_layer]
    store: dict[str, torch.Tensor] = {}
    handle = layer.register_forward_hook(lambda mod, inp, out: store.setdefault("a", out))
    try:
        with torch.enable_grad():
            out = model(*inputs)
            ys = scores(out)  # (N,)
            a = store["a"]  # (1, K, h, w)
            peaks = []
            for n in range(ys.shape[0]):
                (g,) = torch.autograd.grad(ys[n], a, retain_graph=n < ys.shape[0] - 1)
                cam = torch.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(dim=1, keepdim=True))  # (1, 1, h, w)
                up = nn.functional.interpolate(cam, size=inputs[0].shape[-2:], mode="bilinear", align_corners=False)
                peaks.append(divmod(int(up[0, 0].argmax()), up.shape[-1]))
    finally:
        handle.remove()
    return peaks


def pointing(model: nn.Module, *, n: int = 200) -> dict:
    """Pointing game on the first ``n`` test scenes: is the Grad-CAM maximum inside the right object?

    captioner: every content word of the reference caption (log p of the word);
    classifier: every class present (its logit; hit if inside any object of the class);
    vqa: colour/shape/size questions (the right answer's logit; hit if inside the object asked about).
    """
    hits: dict[str, list[int]] = {}
    for seed in world.split_seeds("test", n):
        s = world.generate(seed, size=model.config.image_size)
        image = s.image[None]  # (1, 3, H, W)
        if isinstance(model, Captioner):
            tokens, targets = caption_tensors(model.vocab, [s.caption])
            pos = sorted(s.alignment)
            peaks = _gradcam_peaks(model, (image, tokens), lambda out: out.log_softmax(-1)[0, pos, targets[0, pos]])
            for (y, x), i in zip(peaks, pos):
                word = s.caption.split()[i]
                kind = "size" if word in world.SIZES else "color" if word in world.COLORS else "shape"
                hits.setdefault(kind, []).append(bool(s.objects[s.alignment[i]].mask[y, x]))
        elif isinstance(model, Classifier):
            present = sorted({f"{o.color} {o.shape}" for o in s.objects})
            idx = [model.classes.index(c) for c in present]
            peaks = _gradcam_peaks(model, (image,), lambda out: out[0, idx])
            for (y, x), c in zip(peaks, present):
                hits.setdefault("class", []).append(
                    any(bool(o.mask[y, x]) for o in s.objects if f"{o.color} {o.shape}" == c))
        elif isinstance(model, VQA):
            for qa in s.questions:
                if qa.kind in ("color", "shape", "size"):
                    a = model.answers.index(qa.answer)
                    q = model.encode_question(qa.question)[None]
                    (y, x), = _gradcam_peaks(model, (image, q), lambda out: out[0, a:a + 1])
                    hits.setdefault(qa.kind, []).append(bool(s.objects[qa.objects[0]].mask[y, x]))
    allhits = [h for v in hits.values() for h in v]
    return {"all": float(np.mean(allhits)), **{k: float(np.mean(v)) for k, v in hits.items()}}


def headline(name: str, metrics: dict) -> str:
    key = {"classifier": "mAP", "captioner": "BLEU-4", "vqa": "accuracy"}[name]
    return f"{name}: {key} = {metrics[key]:.4f} on {metrics['n_scenes']} held-out test scenes"


# ----------------------------------------------------------------------------- saving


def _atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` on a temp file in ``path``'s directory, then ``os.replace``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_text(path: Path, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
    _atomic_write(path, write)


def save(model: nn.Module, out: str | os.PathLike, *, info: dict | None = None, metrics: dict | None = None,
         command: str | None = None) -> Path:
    """Write ``weights.safetensors``, ``config.json``, ``vocab.json`` and ``CARD.md`` to ``out``."""
    from safetensors.torch import save_file

    name = model_name(model)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    _atomic_write(out / WEIGHTS, lambda tmp: save_file(state, tmp, metadata={"name": name}))
    config = {"name": name, "format": 1, "config": asdict(model.config), "training": info or {},
              "metrics": metrics or {}, "command": command}
    _write_text(out / CONFIG, json.dumps(config, indent=2) + "\n")
    _write_text(out / VOCAB, json.dumps(vocab_json(model), indent=1) + "\n")
    if metrics is not None:
        _write_text(out / CARD, card(name, model, info or {}, metrics, command or ""))
    return out


def _fmt(x: object) -> str:
    return f"{x:.4f}" if isinstance(x, float) else str(x)


DESCRIPTION = {
    "classifier": "Conv stack (6 conv-BN-ReLU blocks, stride 8) -> global average pooling -> one linear layer "
                  "`fc` over the 20 colour x shape classes (multi-label, sigmoid). CAM-compatible.",
    "captioner": "Show and Tell without attention: conv stack (CoordConv input, stride 8, last map 12x12) -> "
                 "global average pooling -> linear + BatchNorm image feature, which initialises the LSTM state "
                 "and is fed at every step next to the word embedding; greedy or beam decoding.",
    "vqa": "\"deeper LSTM Q + norm I\" (Lu et al. 2015): conv stack (last map 12x12) -> global average pooling "
           "+ coarse 3x3 summary -> L2 normalisation -> linear+LayerNorm+tanh; 2-layer LSTM question encoding (h "
           "and c of both layers) -> linear+LayerNorm+tanh; element-wise product; MLP over the answers.",
}

NOTES = {
    "classifier": "A class is positive when at least one object of that colour and shape is in the scene "
                  "(size ignored). Logits are pre-sigmoid; `fc` is the CAM weight matrix.",
    "captioner": "The language prior (the best a model that ignores the image can do on ShapeWorld captions) "
                 "is about 0.77 nats/token; the final training loss above is far below it, so the decoder "
                 "reads the image. Captions list the objects left to right; the pixel coordinates enter the "
                 "CNN as two extra input channels (CoordConv) so that the globally averaged feature can say "
                 "where each object is, and the 12x12 map at the Grad-CAM layer is never pooled before it. "
                 "`gradcam_word_pointing`: share of content words whose Grad-CAM maximum (log p of the word, "
                 "teacher-forced on the reference caption) lies inside the object the word describes.",
    "vqa": "Answers: colours, shapes, sizes, counts (zero..three), yes/no. Training asks every question of "
           "each training scene (contrasting questions about one image, one CNN pass per image); the test "
           "accuracy counts every question of every test scene. LayerNorm before each tanh was needed: without "
           "it the question embedding saturated and the model ignored the object word of colour/shape "
           "questions (accuracy stuck at 0.84, colour 0.65).",
}


def card(name: str, model: nn.Module, info: dict, metrics: dict, command: str) -> str:
    n_params = sum(p.numel() for p in model.parameters())
    lines = [f"# {name}", "", DESCRIPTION[name], "",
             f"Parameters: {n_params:,}. Input: (B, 3, 96, 96) floats in [0, 1] (normalised inside `forward`). "
             f"Grad-CAM layer: `{model.default_layer}` (12x12).", "",
             "## How it was made", "", "```", command, "```", "",
             f"- steps: {info.get('steps')}, batch size: {info.get('batch_size')}"
             + ("" if info.get("questions_per_scene") is None else " scenes x " + (
                 f"up to {info['questions_per_scene']} questions" if info["questions_per_scene"] > 0
                 else "every question of the scene"))
             + f", peak lr: {info.get('lr')} "
             "(AdamW, 3% warm-up, cosine decay), seed: " + str(info.get("seed")),
             ("- CNN initialised from the `" + str(info.get("encoder_from")) + "` checkpoint's encoder "
              "(like the paper's pretrained CNN), then trained end to end" if info.get("encoder_from")
              else "- trained from scratch (random initialisation)"),
             "- data: fresh ShapeWorld train-split scenes every step (no scene seen twice)"
             + (f", biased: {info.get('bias')}" if info.get("bias") else ""),
             f"- training time: {info.get('seconds')} s wall clock, {info.get('cpu_seconds')} s of CPU time "
             f"({info.get('threads')} torch thread(s); 2-core {platform.machine()} VM, torch {torch.__version__}). "
             "The machine was shared with other jobs (load average up to 10+ on 2 cores) while this ran, so "
             "the wall clock can be mostly waiting: on a quiet 2-core machine it takes about the CPU time",
             f"- loss: {info.get('first_loss')} (first 20 steps) -> {info.get('final_loss')} (last 50 steps)"]
    prev = info.get("resumed_from")
    while prev:  # earlier stages of a resumed training
        t = prev.get("training") or {}
        lines.append(f"- continued from a checkpoint made by `{prev.get('command')}`: {t.get('steps')} steps, "
                     f"{t.get('seconds')} s wall clock, {t.get('cpu_seconds')} s CPU, loss {t.get('first_loss')} "
                     f"-> {t.get('final_loss')}")
        prev = t.get("resumed_from")
    lines += ["",
             "## Held-out metrics", "",
             f"First {metrics['n_scenes']} scenes of the test split "
             f"(`mx.world.split_seeds('test', {metrics['n_scenes']})`). Reproduce with:", "",
             "```", f"python -m mmexplain.training.zoo evaluate {name}", "```", "",
             "| metric | value |", "|---|---|"]
    for k, v in metrics.items():
        if isinstance(v, dict) and k != "AP_per_class":
            for kk, vv in v.items():
                lines.append(f"| {k} / {kk} | {_fmt(vv)} |")
        elif not isinstance(v, (dict, list)):
            lines.append(f"| {k} | {_fmt(v)} |")
    if "AP_per_class" in metrics:
        lines += ["", "AP per class:", "", "| class | AP |", "|---|---|"]
        lines += [f"| {c} | {v:.4f} |" for c, v in metrics["AP_per_class"].items()]
    if "examples" in metrics:
        lines += ["", "Examples (reference -> generated):", ""]
        lines += [f"- `{e['reference']}` -> `{e['generated']}`" for e in metrics["examples"]]
    lines += ["", "## Notes", "", NOTES[name], "", "Load it with `mx.zoo.load(\"" + name + "\")` (safetensors, no pickle).", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line


def _train_handler(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else default_root() / args.name
    if args.eval_only:
        model = load(args.name, out)
        metrics = evaluate(model, n=args.n)
        print(json.dumps(metrics, indent=2))
        print(headline(args.name, metrics))
        return 0
    command = "mmexplain train " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else f"mmexplain train {args.name}"
    if args.command_text:
        command = args.command_text
    encoder_from = args.init_encoder
    if encoder_from is None and args.name == "vqa" and not args.resume:
        encoder_from = str(default_root() / "classifier")
    if encoder_from in ("none", ""):
        encoder_from = None
    start, previous = None, None
    if args.resume:  # continue training a checkpoint (its weights; a fresh optimiser and schedule)
        start = load(args.name, args.resume)
        previous = json.loads((Path(args.resume) / CONFIG).read_text(encoding="utf-8"))
    model, info = train(args.name, steps=args.steps, seed=args.seed, batch_size=args.batch_size, lr=args.lr,
                        encoder_from=encoder_from, model=start, questions_per_scene=args.questions_per_scene)
    if previous is not None:
        info["resumed_from"] = {"command": previous.get("command"), "training": previous.get("training")}
        command = f"{previous.get('command')}\n{command}"
    print(f"trained {args.name} in {info['seconds']} s; loss {info['first_loss']} -> {info['final_loss']}")
    metrics = evaluate(model, n=args.n)
    save(model, out, info=info, metrics=metrics, command=command)
    print(headline(args.name, metrics))
    print(f"wrote {out}")
    return 0


def add_train_command(subparsers) -> argparse.ArgumentParser:
    """``mmexplain train NAME [--out DIR] [--steps N] [--seed S] [--eval-only]``."""
    p = subparsers.add_parser("train", help="train a reference model on ShapeWorld and ship it",
                              description="Train a reference model on ShapeWorld, evaluate it on held-out "
                                          "scenes and write weights.safetensors, config.json, vocab.json, CARD.md.")
    p.add_argument("name", choices=NAMES)
    p.add_argument("--out", default=None, help="output directory (default: the repository's models/NAME)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default per model)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--n", type=int, default=EVAL_N, help="held-out test scenes to evaluate on")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--init-encoder", default=None,
                   help="classifier checkpoint whose CNN initialises the encoder ('none' for random; default: "
                        "models/classifier for vqa, none otherwise)")
    p.add_argument("--questions-per-scene", type=int, default=QUESTIONS_PER_SCENE,
                   help="vqa: questions of distinct kinds per training scene (0: every question of the scene)")
    p.add_argument("--resume", default=None, help="continue training this checkpoint directory")
    p.add_argument("--eval-only", action="store_true", help="only evaluate the checkpoint in --out")
    p.add_argument("--command-text", default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=_train_handler)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmexplain.training.zoo")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_command(sub)
    ev = sub.add_parser("evaluate", help="print held-out metrics of a shipped model")
    ev.add_argument("name", choices=NAMES)
    ev.add_argument("--root", default=None, help="models directory or model directory")
    ev.add_argument("--n", type=int, default=EVAL_N)
    ev.add_argument("--threads", type=int, default=2)
    ev.add_argument("--write-card", action="store_true",
                    help="also rewrite CARD.md and the metrics in config.json (training info is kept)")
    args = parser.parse_args(argv)
    if args.command == "evaluate":
        torch.set_num_threads(args.threads)
        model = load(args.name, args.root)
        metrics = evaluate(model, n=args.n)
        print(json.dumps(metrics, indent=2))
        print(headline(args.name, metrics))
        if args.write_card:
            folder = Path(args.root) if args.root else default_root() / args.name
            if not (folder / CONFIG).exists():
                folder = folder / args.name
            old = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
            save(model, folder, info=old.get("training"), metrics=metrics, command=old.get("command"))
            print(f"rewrote {folder / CARD}")
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
