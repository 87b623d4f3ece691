"""Per-word grounding of Grad-CAM caption maps on held-out ShapeWorld scenes: a table.

For each held-out scene, the ground-truth caption is explained word by word
(``mx.explain_caption``: one teacher-forced forward, one batched backward) and every
content word (size, colour, shape) is scored against the mask of the object it
describes (``scene.alignment``):

* pointing: the map's maximum lies inside the object's mask (``mx.metrics.pointing_game``);
* energy ratio: mean map inside the mask / mean outside (uniform map = 1.0);
* discrimination (two-object scenes): more mean energy on the described object than on
  the other one.

The protocol is that of ``mmexplain evaluate grounding`` for the zoo captioner.

Rows: the shipped Hugging Face ``models/tiny-ved`` (ViT + GPT-2 trained on ShapeWorld),
the same architecture with random weights (the Adebayo et al. sanity check: a map that
survives randomisation explains nothing), the CNN + LSTM ``mx.zoo`` captioner when it is
shipped (same scenes, same protocol, at its own resolution), and two map-free baselines
(a centred Gaussian prior, a random map, and a uniform map whose pointing is the
chance level).

A second table does the same for VQA with the shipped ``models/tiny-vilt``: the
ground-truth answer of every question that refers to objects is explained
(``mx.explain_answer``) against the union of their masks, and the question token with
the largest |gradient x embedding| (same backward) is checked to be a content word.

Usage:
    python benchmarks/hf_grounding.py --n 200 --n-vqa 100     # prints two markdown tables
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

import mmexplain as mx  # noqa: E402
from mmexplain import metrics  # noqa: E402

KINDS = {**{w: "size" for w in mx.world.SIZES}, **{w: "color" for w in mx.world.COLORS},
         **{w: "shape" for w in mx.world.SHAPES}}


def evaluate(explain: Callable[[torch.Tensor, str], torch.Tensor], seeds: range, size: int, *,
             chance: bool = False) -> dict:
    """Score maps ``explain(image, caption) -> (T, H, W)`` over the scenes of ``seeds``.

    The protocol of ``mmexplain evaluate grounding`` (the zoo captioner's evaluation):
    pointing game per content word (``chance=True``: the tie-aware expected hit, for
    the uniform map), energy ratio (mean over finite values, and median), and
    discrimination on two-object scenes (against the other object).
    """
    hits: dict[str, list[float]] = {}
    ratios: list[float] = []
    disc: list[float] = []
    for seed in seeds:
        scene = mx.world.generate(seed, size=size)
        maps = explain(scene.image, scene.caption)  # (T, H, W)
        words = scene.caption.split()
        for i, j in scene.alignment.items():
            saliency, mask = maps[i], scene.objects[j].mask
            hit = metrics.pointing_expected(saliency, mask) if chance else float(metrics.pointing_game(saliency, mask))
            hits.setdefault(KINDS[words[i]], []).append(hit)
            hits.setdefault("all", []).append(hit)
            ratios.append(metrics.energy_ratio(saliency, mask))
            if len(scene.objects) == 2:
                disc.append(float(metrics.discrimination(saliency, mask, scene.objects[1 - j].mask)))
    finite = [r for r in ratios if math.isfinite(r)]
    return {
        "pointing": {k: sum(v) / len(v) for k, v in hits.items()},
        "energy_mean": sum(finite) / len(finite),
        "energy_median": statistics.median(ratios),
        "discrimination": sum(disc) / len(disc) if disc else float("nan"),
        "words": len(ratios),
    }


def gradcam_explainer(captioner) -> Callable[[torch.Tensor, str], torch.Tensor]:
    def explain(image: torch.Tensor, caption: str) -> torch.Tensor:
        return mx.explain_caption(captioner, image, caption).maps  # (T, H, W)

    return explain


def token_gradient_explainer(captioner, mode: str) -> Callable[[torch.Tensor, str], torch.Tensor]:
    """Diagnostic maps that are NOT Grad-CAM, from the same layer and the same gradients.

    ``mode="grad_norm"``: ||d log p(word) / d token||_2 per patch token; ``"grad_x_act"``:
    ReLU(sum_k gradient_k x activation_k) per patch token (no channel averaging). They
    show whether the decoder's sensitivity sits on the described object even where
    Grad-CAM's channel-averaged weights do not.
    """
    from mmexplain.methods import upsample_and_normalize

    layer = captioner.model.get_submodule(captioner.default_layer)

    def explain(image: torch.Tensor, caption: str) -> torch.Tensor:
        pixels = captioner.load_image(image)
        inputs, spans = captioner.teacher_forced(pixels, caption.split())
        store: dict[str, torch.Tensor] = {}
        handle = layer.register_forward_hook(lambda m, a, o: store.__setitem__("act", o[0] if isinstance(o, tuple) else o))
        try:
            output = captioner.model(**inputs)
        finally:
            handle.remove()
        logp = output.logits[0].log_softmax(-1)  # (L, V)
        scores = [sum(logp[p, t] for p, t in zip(ps, ts)) for ps, ts in spans]
        grads = torch.cat([torch.autograd.grad(sc, store["act"], retain_graph=True)[0] for sc in scores])  # (T, L, D)
        act = store["act"].detach()  # (1, L, D)
        per_token = grads.norm(dim=-1) if mode == "grad_norm" else torch.relu((grads * act).sum(-1))  # (T, L)
        grid = captioner.reshape_for(pixels)(per_token[..., None])[:, 0]  # (T, h, w)
        return upsample_and_normalize(grid, tuple(pixels.shape[-2:]))  # (T, H, W)

    return explain


def constant_explainer(make: Callable[[int, int], torch.Tensor]) -> Callable[[torch.Tensor, str], torch.Tensor]:
    def explain(image: torch.Tensor, caption: str) -> torch.Tensor:
        h, w = image.shape[-2:]
        return make(h, w).expand(len(caption.split()), h, w)

    return explain


# ----------------------------------------------------------------------------- VQA

CONTENT = {*mx.world.SIZES, *mx.world.COLORS, *mx.world.SHAPES, *(f"{x}s" for x in mx.world.SHAPES)}


def evaluate_vqa(answer_map: Callable, seeds: range, size: int, *, chance: bool = False) -> dict:
    """Score answer maps against the union mask of the objects each question refers to.

    ``answer_map(image, question, answer) -> (map (H, W), tokens, attributions (L,) or None)``.
    Also: how often the question token with the largest |gradient x embedding| is a
    content word (a size, colour or shape, e.g. "red" in "what shape is the red object ?").
    """
    hits: dict[str, list[float]] = {}
    ratios: list[float] = []
    top_content: list[float] = []
    content_share: list[float] = []  # chance level of top_content: a random token is a content word
    for seed in seeds:
        scene = mx.world.generate(seed, size=size)
        for qa in scene.questions:
            if not qa.objects:
                continue
            saliency, tokens, attributions = answer_map(scene.image, qa.question, qa.answer)
            mask = torch.stack([scene.objects[j].mask for j in qa.objects]).any(0)  # (H, W)
            hit = metrics.pointing_expected(saliency, mask) if chance else float(metrics.pointing_game(saliency, mask))
            hits.setdefault(qa.kind, []).append(hit)
            hits.setdefault("all", []).append(hit)
            if not bool(mask.all()):
                ratios.append(metrics.energy_ratio(saliency, mask))
            content_share.append(sum(t in CONTENT for t in tokens) / len(tokens))
            if attributions is not None:
                top_content.append(float(tokens[int(attributions.abs().argmax())] in CONTENT))
    finite = [r for r in ratios if math.isfinite(r)]
    return {
        "pointing": {k: sum(v) / len(v) for k, v in hits.items()},
        "energy_mean": sum(finite) / len(finite),
        "energy_median": statistics.median(ratios),
        "top_token_content": sum(top_content) / len(top_content) if top_content else float("nan"),
        "content_share": sum(content_share) / len(content_share),
        "questions": len(hits["all"]),
    }


def answer_explainer(vqa) -> Callable:
    def explain(image: torch.Tensor, question: str, answer: str):
        ax = mx.explain_answer(vqa, image, question, answer)
        return ax.map, ax.question_tokens, ax.token_attributions[0]

    return explain


def answer_token_gradient(vqa) -> Callable:
    """Diagnostic (not Grad-CAM): per image-token gradient norm of the answer score at the same layer."""
    from mmexplain.methods import upsample_and_normalize

    layer = vqa.model.get_submodule(vqa.default_layer)

    def explain(image: torch.Tensor, question: str, answer: str):
        pixels = vqa.load_image(image)
        query = vqa.query(pixels, question, answer, 1)
        store: dict[str, torch.Tensor] = {}
        handle = layer.register_forward_hook(lambda m, a, o: store.__setitem__("act", o[0] if isinstance(o, tuple) else o))
        try:
            output = vqa.model(**query.inputs)
        finally:
            handle.remove()
        (grad,) = torch.autograd.grad(query.targets[0](output).sum(), store["act"])  # (1, L, D)
        grid = vqa.reshape_for(pixels)(grad.norm(dim=-1, keepdim=True))[:, 0]  # (1, h, w)
        return upsample_and_normalize(grid, tuple(pixels.shape[-2:]))[0], question.split(), None

    return explain


def constant_answer(make: Callable[[int, int], torch.Tensor]) -> Callable:
    def explain(image: torch.Tensor, question: str, answer: str):
        return make(*image.shape[-2:]), question.split(), None

    return explain


def vqa_table(args: argparse.Namespace) -> None:
    seeds = mx.world.split_seeds(args.split, args.n_vqa)
    trained = mx.zoo.load("tiny-vilt", args.vilt)
    cfg = mx.zoo.tiny_hf.config_of(trained)
    size = cfg.image_size
    random_vqa = mx.zoo.new("tiny-vilt", config=cfg, seed=0)  # same architecture, seeded random weights
    generator = torch.Generator().manual_seed(0)
    rows = []
    for name, explain, chance in [
        (f"tiny-vilt Grad-CAM ({trained.default_layer})", answer_explainer(trained), False),
        ("tiny-vilt, random weights", answer_explainer(random_vqa), False),
        ("tiny-vilt, per-token gradient norm (diagnostic, not Grad-CAM)", answer_token_gradient(trained), False),
        ("centre prior, sigma 1/4 (no model)", constant_answer(lambda h, w: metrics.center_prior(h, w, sigma=0.25)), False),
        ("random map (no model)", constant_answer(lambda h, w: metrics.random_map(h, w, generator=generator)), False),
        ("uniform map (no model; pointing = chance)", constant_answer(metrics.uniform_map), True),
    ]:
        t0 = time.time()
        rows.append((name, evaluate_vqa(explain, seeds, size, chance=chance), time.time() - t0))
        print(f"... {name}: {time.time() - t0:.0f}s", file=sys.stderr, flush=True)
    kinds = [k for k in mx.world.QUESTION_KINDS if k in rows[0][1]["pointing"]]
    print(f"\nVQA answer grounding on {args.n_vqa} held-out scenes ({args.split} split), questions that refer to "
          f"objects; mask = union of the referred objects; ground-truth answer explained\n")
    print(f"| maps | questions | pointing all | {' | '.join(kinds)} | energy ratio mean | median | "
          "top abs(grad x emb) token is a content word | s |")
    print("|---|---|---|" + "---|" * len(kinds) + "---|---|---|---|")
    for name, r, secs in rows:
        p = r["pointing"]
        print(f"| {name} | {r['questions']} | {p['all']:.3f} | " + " | ".join(f"{p[k]:.3f}" for k in kinds)
              + f" | {r['energy_mean']:.2f} | {r['energy_median']:.2f} | {r['top_token_content']:.3f} | {secs:.0f} |")
    print(f"\nchance that a random question token is a content word: {rows[0][1]['content_share']:.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="held-out scenes for the caption table (0: skip)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--model", type=Path, default=mx.zoo.default_root() / "tiny-ved")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared, oversubscribed CPU 2 threads ran 10x slower)")
    parser.add_argument("--no-zoo", action="store_true", help="skip the mx.zoo CNN+LSTM captioner row")
    parser.add_argument("--vilt", type=Path, default=mx.zoo.default_root() / "tiny-vilt")
    parser.add_argument("--n-vqa", type=int, default=100, help="held-out scenes for the VQA table (0: skip)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.n:
        vqa_table(args)
        return 0
    seeds = mx.world.split_seeds(args.split, args.n)
    trained = mx.zoo.load("tiny-ved", args.model)
    size = int(trained.image_processor.size["height"])
    # same architecture, seeded random weights
    random_captioner = mx.zoo.new("tiny-ved", config=mx.zoo.tiny_hf.config_of(trained), seed=0)

    rows: list[tuple[str, int, dict, float]] = []

    def run(name: str, explain: Callable, at: int, *, chance: bool = False) -> None:
        t0 = time.time()
        result = evaluate(explain, seeds, at, chance=chance)
        rows.append((name, at, result, time.time() - t0))
        print(f"... {name}: {time.time() - t0:.0f}s", file=sys.stderr, flush=True)

    run(f"tiny-ved Grad-CAM ({trained.default_layer})", gradcam_explainer(trained), size)
    run("tiny-ved, random weights", gradcam_explainer(random_captioner), size)
    run("tiny-ved, per-token gradient norm (diagnostic, not Grad-CAM)", token_gradient_explainer(trained, "grad_norm"), size)
    run("tiny-ved, per-token gradient x activation (diagnostic)", token_gradient_explainer(trained, "grad_x_act"), size)
    if not args.no_zoo:
        try:
            zoo_captioner = mx.zoo.load("captioner")
        except Exception as exc:  # not shipped in this checkout: say so, skip the row
            print(f"(mx.zoo captioner not available: {type(exc).__name__}: {exc})", file=sys.stderr)
        else:
            zoo_size = int(getattr(zoo_captioner, "image_size", 96))
            run("mx.zoo CNN+LSTM captioner Grad-CAM", gradcam_explainer(zoo_captioner), zoo_size)
    run("centre prior, sigma 1/4 (no model)", constant_explainer(lambda h, w: metrics.center_prior(h, w, sigma=0.25)), size)
    generator = torch.Generator().manual_seed(0)
    run("random map (no model)", constant_explainer(lambda h, w: metrics.random_map(h, w, generator=generator)), size)
    run("uniform map (no model; pointing = chance)", constant_explainer(metrics.uniform_map), size, chance=True)

    print(f"\nPer-word grounding on {args.n} held-out ShapeWorld scenes ({args.split} split, seeds "
          f"{seeds.start}..{seeds.stop - 1}); content words only (size, colour, shape)\n")
    print("| maps | px | words | pointing all | size | color | shape | energy ratio mean | median | discrimination | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, at, r, secs in rows:
        p = r["pointing"]
        print(f"| {name} | {at} | {r['words']} | {p['all']:.3f} | {p.get('size', float('nan')):.3f} | "
              f"{p.get('color', float('nan')):.3f} | {p.get('shape', float('nan')):.3f} | {r['energy_mean']:.2f} | "
              f"{r['energy_median']:.2f} | {r['discrimination']:.3f} | {secs:.0f} |")
    if args.n_vqa:
        vqa_table(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
