"""Held-out metrics of every shipped model, and the Grad-CAM pointing game of the CNN models.

CNN models, on the first ``n`` scenes of the test split:

* classifier: mAP over the colour x shape classes (AP per class, then the mean), and
  the mean AP per colour and per shape;
* captioner: BLEU-4 (``nltk.translate.bleu_score.corpus_bleu``, greedy decoding),
  exact-caption rate, object-count accuracy, and per-attribute word accuracy on the
  captions whose object count is right;
* vqa: accuracy over every question of the test scenes, and per question kind;
* all three: the Grad-CAM pointing game (:func:`pointing`, ``mx.GradCAM`` at the model's
  ``default_layer`` and :func:`mmexplain.metrics.pointing_game`).

Tiny transformers models, on the first ``n`` scenes of the val split: tiny-ved, greedy
exact caption match and teacher-forced next-word accuracy by word kind; tiny-vilt,
answer accuracy overall and per question kind.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .. import world
from ..zoo import tiny_hf
from ..zoo.captioner import Captioner
from ..zoo.classifier import Classifier
from ..zoo.vqa import VQA
from . import tiny_hf as hf_data
from .zoo import caption_tensors, make_batch
from ..errors import InputTypeError

__all__ = ["average_precision", "evaluate_zoo", "pointing", "evaluate_ved", "evaluate_vilt", "evaluate",
           "headline", "HEADLINE"]

HEADLINE = {"classifier": "mAP", "captioner": "BLEU-4", "vqa": "accuracy", "tiny-ved": "exact_match",
            "tiny-vilt": "accuracy"}  # the metric each model's one-line summary reports


def _kind(word: str) -> str:
    return "size" if word in world.SIZES else "color" if word in world.COLORS else "shape"


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """AP of one class: mean precision at the rank of each positive (ties broken by order)."""
    order = np.argsort(-scores, kind="stable")
    hits = labels[order] > 0
    if not hits.any():
        return float("nan")
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


@torch.no_grad()
def evaluate_zoo(model: nn.Module, *, n: int = 1000, batch_size: int = 100, bias: dict | None = None,
                 pointing_n: int = 200) -> dict[str, Any]:
    """Held-out metrics of a CNN model on the first ``n`` test scenes (see the module docstring).

    The pointing game runs on the first ``min(n, pointing_n)`` scenes; ``pointing_n=0`` skips it.
    """
    pn = min(n, pointing_n)
    model.eval()
    seeds = world.split_seeds("test", n)
    point = (lambda: pointing(model, n=pn)) if pn > 0 else dict
    if isinstance(model, Classifier):
        scores, labels = [], []
        for i in range(0, n, batch_size):
            b = make_batch(model, seeds[i:i + batch_size], bias=bias)
            scores.append(model(b["images"]).numpy())  # (b, C)
            labels.append(b["targets"].numpy())
        s, y = np.concatenate(scores), np.concatenate(labels)
        ap = {c: average_precision(s[:, k], y[:, k]) for k, c in enumerate(model.classes)}
        valid = {c: v for c, v in ap.items() if not math.isnan(v)}
        per_color = {col: float(np.mean([v for c, v in valid.items() if c.split()[0] == col])) for col in world.COLORS}
        per_shape = {sh: float(np.mean([v for c, v in valid.items() if c.split()[1] == sh])) for sh in world.SHAPES}
        return {"n_scenes": n, "mAP": float(np.mean(list(valid.values()))),
                "exact_set_accuracy": float(((s > 0) == (y > 0)).all(axis=1).mean()),
                "AP_per_color": per_color, "AP_per_shape": per_shape, "gradcam_pointing": point(),
                "pointing_scenes": pn, "AP_per_class": valid}
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
            for k in s.alignment:
                total[_kind(ref[k])] += 1
                correct[_kind(ref[k])] += hyp[k] == ref[k]
        with warnings.catch_warnings():  # an untrained model shares no 4-gram with the references: BLEU 0, said once
            warnings.filterwarnings("ignore", message=r"\s*The hypothesis contains 0 counts", category=UserWarning)
            bleu = float(corpus_bleu(refs, hyps))
        return {"n_scenes": n, "BLEU-4": bleu,
                "exact_caption": float(np.mean([h == r[0] for h, r in zip(hyps, refs)])),
                "object_count_accuracy": count_ok / n,
                "word_accuracy": {a: correct[a] / max(1, total[a]) for a in correct},
                "gradcam_word_pointing": point(), "pointing_scenes": pn,
                "examples": [{"reference": " ".join(r[0]), "generated": " ".join(h)}
                             for h, r in list(zip(hyps, refs))[:5]]}
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
    raise InputTypeError(f"model must be a zoo model, got {type(model).__name__}")


def pointing(model: nn.Module, *, n: int = 200) -> dict[str, float]:
    """Pointing game on the first ``n`` test scenes: is the Grad-CAM maximum inside the right object?

    ``mx.GradCAM`` at ``model.default_layer``; a hit is
    :func:`mmexplain.metrics.pointing_game` of the upsampled map and the object's mask.

    * captioner: every content word of the reference caption (its log-probability,
      teacher-forced), grouped by word kind;
    * classifier: every class present (its logit; a hit inside any object of the class);
    * vqa: colour/shape/size questions (the right answer's logit; a hit inside the
      object asked about), by question kind.

    Returns:
        ``{"all": rate, <kind>: rate, ...}``.
    """
    from ..methods import GradCAM
    from ..metrics import pointing_game
    from ..targets import AnswerScore, ClassLogit, WordLogProb

    cam = GradCAM(model, model.default_layer)
    hits: dict[str, list[bool]] = {}
    for seed in world.split_seeds("test", n):
        s = world.generate(seed, size=model.config.image_size)
        image = s.image[None]  # (1, 3, H, W)
        if isinstance(model, Captioner):
            tokens, targets = caption_tensors(model.vocab, [s.caption])  # (1, L) each
            words = s.caption.split()
            pos = sorted(s.alignment)
            maps = cam((image, tokens), [WordLogProb(i, int(targets[0, i])) for i in pos]).maps  # (N, 1, H, W)
            for m, i in zip(maps[:, 0], pos):
                hits.setdefault(_kind(words[i]), []).append(pointing_game(m, s.objects[s.alignment[i]].mask))
        elif isinstance(model, Classifier):
            present = sorted({f"{o.color} {o.shape}" for o in s.objects})
            maps = cam(image, [ClassLogit(model.classes.index(c)) for c in present]).maps  # (N, 1, H, W)
            for m, c in zip(maps[:, 0], present):
                mask = torch.stack([o.mask for o in s.objects if f"{o.color} {o.shape}" == c]).any(dim=0)  # (H, W)
                hits.setdefault("class", []).append(pointing_game(m, mask))
        elif isinstance(model, VQA):
            asked = [qa for qa in s.questions if qa.kind in ("color", "shape", "size")]
            if not asked:
                continue
            questions = model.encode_questions([qa.question for qa in asked])  # (Q, L)
            answers = [model.answers.index(qa.answer) for qa in asked]
            maps = cam((image.expand(len(asked), -1, -1, -1), questions), AnswerScore(answers)).maps  # (Q, H, W)
            for m, qa in zip(maps, asked):
                hits.setdefault(qa.kind, []).append(pointing_game(m, s.objects[qa.objects[0]].mask))
        else:
            raise InputTypeError(f"model must be a zoo model, got {type(model).__name__}")
    every = [h for v in hits.values() for h in v]
    return {"all": float(np.mean(every)), **{k: float(np.mean(v)) for k, v in hits.items()}}


@torch.no_grad()
def evaluate_ved(model: nn.Module, tokenizer: Any, images: Tensor, captions: list[str], *,
                 batch_size: int = 100) -> dict[str, Any]:
    """Greedy exact caption match and teacher-forced word accuracy by word kind; images uint8 ``(n, 3, H, W)``."""
    kinds = {w: _kind(w) for w in (*world.SIZES, *world.COLORS, *world.SHAPES)}
    was_training = model.training
    model.eval()
    exact, hits, counts = 0, {}, {}
    max_len = model.config.decoder.n_positions
    try:
        for s in range(0, len(captions), batch_size):
            px = hf_data.pixels(images[s: s + batch_size])  # (b, 3, H, W)
            caps = captions[s: s + batch_size]
            texts = tokenizer.batch_decode(model.generate(pixel_values=px, max_new_tokens=max_len - 1),
                                           skip_special_tokens=True)
            exact += sum(t.split() == c.split() for t, c in zip(texts, caps))
            dec_in, labels = hf_data.encode_captions(tokenizer, caps, max_len)
            pred = model(pixel_values=px, decoder_input_ids=dec_in).logits.argmax(-1)  # (b, T)
            for b, cap in enumerate(caps):
                for j, word in enumerate(cap.split()):
                    kind = kinds.get(word, "other")
                    counts[kind] = counts.get(kind, 0) + 1
                    hits[kind] = hits.get(kind, 0) + int(pred[b, j] == labels[b, j])
    finally:
        model.train(was_training)
    return {"exact_match": exact / len(captions), "word_accuracy": {k: hits[k] / counts[k] for k in counts},
            "word_accuracy_all": sum(hits.values()) / sum(counts.values()), "n": len(captions)}


@torch.no_grad()
def evaluate_vilt(model: nn.Module, tokenizer: Any, images: Tensor, rows: list[list], *,
                  batch_size: int = 200) -> dict[str, Any]:
    """Answer accuracy, all questions and per kind; rows as :func:`mmexplain.training.tiny_hf.question_split`'s."""
    label2id = model.config.label2id
    was_training = model.training
    model.eval()
    hits: dict[str, list[int]] = {}
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # ViLT draws the order of its image patches at random
            for s in range(0, len(rows), batch_size):
                batch = rows[s: s + batch_size]
                px = hf_data.pixels(images[[r[0] for r in batch]])  # (b, 3, H, W)
                q = hf_data.encode_questions(tokenizer, [r[1] for r in batch], model.config.max_position_embeddings)
                pred = model(pixel_values=px, **q).logits.argmax(-1)  # (b,)
                for r, p in zip(batch, pred.tolist()):
                    ok = int(p == label2id[r[2]])
                    hits.setdefault(r[3], []).append(ok)
                    hits.setdefault("all", []).append(ok)
    finally:
        model.train(was_training)
    return {"accuracy": {k: sum(v) / len(v) for k, v in hits.items()}, "n_questions": len(rows), "n": len(images)}


def evaluate(name: str, model: Any, *, n: int, cache_dir: Path | None = None) -> dict[str, Any]:
    """Held-out metrics of any shipped model (a zoo ``nn.Module`` or a tiny model's adapter)."""
    if name in ("classifier", "captioner", "vqa"):
        return evaluate_zoo(model, n=n)
    hf_model, tokenizer, _ = tiny_hf.parts(model)
    size = tiny_hf.config_of(model).image_size
    if name == "tiny-ved":
        images, captions = hf_data.caption_split("val", n, size=size, cache_dir=cache_dir)
        return evaluate_ved(hf_model, tokenizer, images, captions)
    images, rows = hf_data.question_split("val", n, size=size, cache_dir=cache_dir)
    return evaluate_vilt(hf_model, tokenizer, images, rows)


def headline(name: str, metrics: dict[str, Any]) -> str:
    """One line: the model's main held-out metric and on how many scenes."""
    key = HEADLINE[name]
    value = metrics[key]["all"] if isinstance(metrics[key], dict) else metrics[key]
    split = "test" if name in ("classifier", "captioner", "vqa") else "val"
    return f"{name}: {key} = {value:.4f} on {metrics.get('n_scenes', metrics.get('n'))} held-out {split} scenes"
