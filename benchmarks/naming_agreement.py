"""Naming agreement: do the units that Grad-CAM weighs most for a word carry that word's name?

For each reference model (classifier, captioner, VQA):

1. Network Dissection of its ``default_layer`` on ShapeWorld validation scenes
   (colours, shapes, sizes): number of detectors (IoU > 0.04) and unique concepts.
2. On held-out test scenes, Grad-CAM weights alpha (B, K) at the same layer for
   * classifier: every class present in the scene ("red circle"), scored for its
     colour word and its shape word;
   * captioner: every colour / shape word of the generated caption (greedy), as
     log p(word) with the caption teacher-forced — one forward, N targets;
   * VQA: colour and shape questions, the predicted answer's score, scored when the
     answer is a colour or shape word.
3. Agreement = how often the top-k evidence-for units (alpha > 0, IoU >= 0.05, as in
   ``mx.describe``) include a unit whose label is that very word. Chance = the same
   probability for k' units drawn at random from the named units
   (hypergeometric: 1 - C(n - m, k') / C(n, k'), n named units, m named with the
   word, k' = how many evidence units were shown), averaged over the same cases.

Prints a markdown table. Usage:

    python benchmarks/naming_agreement.py                 # the shipped models in models/
    python benchmarks/naming_agreement.py --n-dissect 1000 --n-eval 200
    python benchmarks/naming_agreement.py --untrained      # smoke run on random weights
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mmexplain as mx  # noqa: E402
from mmexplain import targets as T  # noqa: E402
from mmexplain.dissect import NeuronLabels, dissect, image_forward, unit_evidence  # noqa: E402


@dataclass
class Tally:
    cases: int = 0
    hits: int = 0
    chance: float = 0.0
    no_named_unit: int = 0  # cases whose word names no unit of the layer (cannot agree)
    examples: list[str] = field(default_factory=list)

    def add(self, word: str, alpha: torch.Tensor, labels: NeuronLabels, k: int, min_iou: float) -> None:
        pos, _ = unit_evidence(alpha, labels, k=k, min_iou=min_iou)
        named = [u for u in labels if u.iou >= min_iou]
        n, m, s = len(named), sum(u.concept == word for u in named), len(pos)
        self.cases += 1
        self.hits += any(e.concept == word for e in pos)
        self.chance += 0.0 if s == 0 or m == 0 else 1.0 - math.comb(n - m, s) / math.comb(n, s)
        self.no_named_unit += m == 0


def _load(name: str, root: str | None, untrained: bool) -> torch.nn.Module:
    if untrained:
        from mmexplain.zoo import new as new_model

        torch.manual_seed(0)
        return new_model(name).eval()
    return mx.zoo.load(name, root=root)


def _category(word: str) -> str | None:
    if word in mx.world.COLORS:
        return "color"
    if word in mx.world.SHAPES:
        return "shape"
    return None


def classifier_cases(model, labels, scenes, k, min_iou, tallies):
    cam = mx.GradCAM(model, model.default_layer)
    index = {c: i for i, c in enumerate(model.classes)}
    for scene in scenes:
        present = sorted({f"{o.color} {o.shape}" for o in scene.objects} & set(index))
        if not present:
            continue
        res = cam(scene.image[None], [T.ClassLogit(index[c]) for c in present])  # weights (N, 1, K)
        for n, cls in enumerate(present):
            for word in cls.split():
                tallies[(_category(word))].add(word, res.weights[n, 0], labels, k, min_iou)


def captioner_cases(model, labels, scenes, k, min_iou, tallies):
    cam = mx.GradCAM(model, model.default_layer)
    vocab = model.vocab
    for scene in scenes:
        words = model.generate(scene.image[None])[0]
        wanted = [(i, w) for i, w in enumerate(words) if _category(w) and w in vocab]
        if not wanted:
            continue
        tokens = torch.tensor([[vocab.bos] + vocab.encode(words)])  # (1, 1 + T)
        # logits row i predicts the token after tokens[:, i], i.e. words[i]
        res = cam((scene.image[None], tokens), [T.WordLogProb(i, vocab.stoi[w]) for i, w in wanted])
        for n, (_, w) in enumerate(wanted):
            tallies[_category(w)].add(w, res.weights[n, 0], labels, k, min_iou)


def vqa_cases(model, labels, scenes, k, min_iou, tallies):
    cam = mx.GradCAM(model, model.default_layer)
    for scene in scenes:
        qs = [qa for qa in scene.questions if qa.kind in ("color", "shape")]
        for qa in qs:
            q = model.encode_question(qa.question)[None]  # (1, L)
            with torch.no_grad():
                pred = int(model(scene.image[None], q).argmax(1))
            answer = model.answers[pred]
            if not _category(answer):
                continue
            res = cam((scene.image[None], q), T.AnswerScore(pred))  # weights (1, K)
            tallies[_category(answer)].add(answer, res.weights[0], labels, k, min_iou)


CASES = {"classifier": classifier_cases, "captioner": captioner_cases, "vqa": vqa_cases}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--n-dissect", type=int, default=1000, help="validation scenes for dissection")
    p.add_argument("--n-eval", type=int, default=200, help="test scenes to explain")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--min-iou", type=float, default=0.05)
    p.add_argument("--root", default=None, help="models directory (default: the repository's models/)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--untrained", action="store_true", help="random weights (smoke test, not a measurement)")
    p.add_argument("--save-labels", default=None, help="folder to write <model>_labels.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    scenes = [mx.world.generate(s) for s in mx.world.split_seeds("test", args.n_eval)]
    data = mx.world.concept_dataset(args.n_dissect)
    dissect_rows, agree_rows = [], []
    for name in args.models:
        try:
            model = _load(name, args.root, args.untrained)
        except (FileNotFoundError, ValueError) as exc:
            print(f"skipping {name}: {exc}", file=sys.stderr)
            continue
        t0 = time.perf_counter()
        labels = dissect(model, model.default_layer, data, forward=image_forward, progress=False)
        t_dissect = time.perf_counter() - t0
        if args.save_labels:
            labels.save(Path(args.save_labels) / f"{name}_labels.json")
        det = labels.detectors()
        by_cat = defaultdict(int)
        for u in det:
            by_cat[u.category] += 1
        dissect_rows.append((name, labels.layer, len(labels), len(det), len(labels.unique_concepts()),
                             ", ".join(f"{c} {by_cat[c]}" for c in sorted(by_cat)),
                             ", ".join(labels.unique_concepts()), t_dissect))
        tallies: dict[str, Tally] = defaultdict(Tally)
        t0 = time.perf_counter()
        CASES[name](model, labels, scenes, args.k, args.min_iou, tallies)
        t_explain = time.perf_counter() - t0
        for cat in ("color", "shape"):
            t = tallies.get(cat)
            if t is None or t.cases == 0:
                continue
            named = t.cases - t.no_named_unit  # cases whose word names at least one unit (chance is 0 elsewhere)
            agree_rows.append((name, cat, t.cases, 100 * t.hits / t.cases, 100 * t.chance / t.cases,
                               100 * t.no_named_unit / t.cases, 100 * t.hits / max(named, 1),
                               100 * t.chance / max(named, 1), t_explain))

    weights = "RANDOM WEIGHTS (--untrained): not a measurement" if args.untrained else "shipped checkpoints"
    print(f"\nNetwork Dissection at default_layer ({weights}; {args.n_dissect} val scenes, quantile 0.005, "
          f"detector: IoU > 0.04)\n")
    print("| model | layer | units | detectors | unique concepts | detectors by category | concepts | time (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in dissect_rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]} | {r[6]} | {r[7]:.0f} |")
    print(f"\nNaming agreement: top-{args.k} evidence-for units (alpha > 0, IoU >= {args.min_iou}) include a unit "
          f"named with the word ({args.n_eval} test scenes)\n")
    print("| model | words | cases | agreement % | chance % | word names no unit % | agreement % where "
          "a unit has the name | chance % there |")
    print("|---|---|---|---|---|---|---|---|")
    for r in agree_rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.1f} | {r[4]:.1f} | {r[5]:.1f} | {r[6]:.1f} | {r[7]:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
