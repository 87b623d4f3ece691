"""Pointing of the LM methods (and the vision tower's Grad-CAM) on held-out ShapeWorld scenes, per tiny VLM.

A content word hits when its map's maximum lies in the mask of the object it describes
(``scene.alignment``); the caption explained is the scene's own (teacher-forced). An answer
(the scene's, given its question) hits when its map's maximum lies in its objects' masks (also
printed per question kind). Also the seconds per caption (all words) of each method, and the
variants of the methods' choices (attention layers or rollout into the tower, relevancy without the
tower, TAM's filter, the LM Grad-CAM layer, the pixel gradient x input's smoothing) called directly, and
occlusion-gradxinput's gate exponent (0.5, 1 against 1/4; words and answers).
"on an object": how often the maximum lies on any object at all (a map that finds objects but not the
described one scores there, not in pointing).

``--random-weights SEED`` measures the same architecture with freshly drawn weights (the trained processor
kept): the control for maps that the image itself shapes (gradient x input's factor x imprints the objects).

    python benchmarks/lm_pointing.py models/tiny-llava models/tiny-qwen2vl --scenes 20
    python benchmarks/lm_pointing.py models/tiny-llava models/tiny-qwen2vl --scenes 20 --random-weights 7
    python benchmarks/lm_pointing.py models/tiny-llava models/tiny-qwen2vl --scenes 20 --split val
"""

from __future__ import annotations

import argparse
import time

import torch

import mmexplain as mx
from mmexplain.evaluation.grounding import image_size
from mmexplain.methods import OcclusionGradientXInput, Relevancy
from mmexplain.methods.input_gradient import PixelGradientXInput
from mmexplain.methods.lm_maps import LMAttention, LMGradCAM, TokenActivationMap
from mmexplain.targets import SequenceLogProb

METHODS = ["attention", "tam", "lm-gradcam", "gradxinput", "relevancy", "gradcam", "scorecam", "occlusion",
           "pixel-gradxinput"]


def variants(vlm, count):
    """name -> method class factory for the choices the registry's defaults fix."""
    out = {"attention[last-half]": lambda m, r: LMAttention(m, reshape=r, layers="last-half"),
           "attention[tower rollout]": lambda m, r: LMAttention(m, reshape=r, vision=True),
           "relevancy[LM only]": lambda m, r: Relevancy(m, reshape=r, vision=False),
           "tam[no denoise]": lambda m, r: TokenActivationMap(m, reshape=r, denoise=False),
           "tam[sigma 1]": lambda m, r: TokenActivationMap(m, reshape=r, sigma=1.0),
           "pixel-gradxinput[sigma 0]": lambda m, r: PixelGradientXInput(m, reshape=r, sigma=0),
           "pixel-gradxinput[sigma 2]": lambda m, r: PixelGradientXInput(m, reshape=r, sigma=2),
           "pixel-gradxinput[sigma 3]": lambda m, r: PixelGradientXInput(m, reshape=r, sigma=3)}
    for k in range(count - 1):
        out[f"lm-gradcam[layer {k}]"] = lambda m, r, k=k: LMGradCAM(m, reshape=r, layer=k)
    return out


def gate_variants(gammas=(0.5, 1.0)) -> list[str]:
    """``occlusion-gradxinput`` with other gate exponents than its default 1/4, registered by name (so that the
    answers, explained through ``explain_answer``, are measured too)."""
    names = []
    for gamma in gammas:
        name = f"occlusion-gradxinput[gamma {gamma:g}]"
        if name not in mx.methods.METHODS:
            def init(self, model, layer=None, *, gamma=gamma, **options):
                OcclusionGradientXInput.__init__(self, model, layer, gamma=gamma, **options)
            cls = type(f"OcclusionGradientXInputGamma{gamma:g}".replace(".", "_"), (OcclusionGradientXInput,),
                       {"__init__": init})
            mx.methods.register(name, cls, description=f"occlusion-gradxinput, gate exponent {gamma:g}",
                                needs_layer=False, requires={"picture", "image-gradient"})
        names.append(name)
    return names


def measure(path: str, scenes: int, prompt: str, random_weights: int | None = None,
            methods: list[str] = METHODS, split: str = "test") -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    if random_weights is not None:  # the same architecture, weights drawn afresh
        torch.manual_seed(random_weights)
        model = type(model)(model.config).eval()
    vlm = mx.hf.adapter(model, AutoProcessor.from_pretrained(path), prompt=prompt)
    size = image_size(vlm)
    layers = len(mx.methods.lm_maps.lm_view(vlm.model).layers)
    extra = {k: v for k, v in variants(vlm, layers).items() if k.split("[")[0] in methods}
    hits = {m: [] for m in [*methods, *extra]}
    on_object = {m: [] for m in hits}
    seconds = {m: 0.0 for m in hits}
    right = 0
    share: list[float] = []
    answer_hits = {m: [] for m in methods}
    answer_kinds: list[str] = []  # the question kind of each answer
    answer_seconds = {m: 0.0 for m in methods}
    for seed in mx.world.split_seeds(split, scenes):
        scene = mx.world.generate(seed, size=size)
        words = scene.caption.split()
        pixels = vlm.load_image(scene.image)
        right += vlm.generate(pixels) == words
        maps = {}
        for m in methods:
            start = time.perf_counter()
            maps[m] = mx.explain_caption(vlm, scene.image, scene.caption, method=m).maps
            seconds[m] += time.perf_counter() - start
        inputs, spans = vlm.teacher_forced(pixels, words)
        targets = [SequenceLogProb(t, positions=p) for p, t in spans]
        for name, make in extra.items():
            start = time.perf_counter()
            maps[name] = make(vlm.model, vlm.reshape_for(pixels))(inputs, targets, size=(size, size)).maps[:, 0]
            seconds[name] += time.perf_counter() - start
        for i, j in sorted(scene.alignment.items()):
            mask = scene.objects[j].mask
            share.append(float(mask.float().mean()))  # a random map's hit rate
            anything = torch.stack([o.mask for o in scene.objects]).any(0).flatten()
            for m, per in maps.items():
                flat = int(per[i].flatten().argmax())
                hits[m].append(bool(mask.flatten()[flat]))
                on_object[m].append(bool(anything[flat]))
        for qa in scene.questions:  # the answer's map (all its tokens), given the question
            if not qa.objects:
                continue
            mask = torch.zeros_like(scene.objects[0].mask)
            for j in qa.objects:
                mask |= scene.objects[j].mask
            answer_kinds.append(qa.kind)
            for m in methods:
                start = time.perf_counter()
                per = mx.explain_answer(vlm, scene.image, qa.question, qa.answer, method=m).maps[0]
                answer_seconds[m] += time.perf_counter() - start
                answer_hits[m].append(bool(mask.flatten()[int(per.flatten().argmax())]))
    words = len(share)
    weights = "trained weights" if random_weights is None else f"weights drawn afresh (seed {random_weights})"
    print(f"{path} ({weights}): {scenes} {split} scenes, {words} content words, greedy caption exact {right}/{scenes}, "
          f"{layers} LM layers, {size} px")
    print(f"  {'chance (object area)':24s} pointing {sum(share) / len(share):.3f}")
    for m, h in hits.items():
        print(f"  {m:26s} pointing {sum(h) / len(h):.3f}   on an object {sum(on_object[m]) / len(h):.3f}   "
              f"{seconds[m] / scenes:.3f} s/caption")
    count = len(answer_hits[methods[0]])
    print(f"  answers ({count} questions about objects):")
    kinds = sorted(set(answer_kinds))
    for m, h in answer_hits.items():
        per_kind = "  ".join(f"{k} {sum(x for x, q in zip(h, answer_kinds) if q == k) / answer_kinds.count(k):.2f}"
                             for k in kinds)
        print(f"  {m:26s} pointing {sum(h) / max(len(h), 1):.3f}   {answer_seconds[m] / max(count, 1):.3f} s/answer"
              f"   by question kind: {per_kind}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="local transformers VLM folders")
    parser.add_argument("--scenes", type=int, default=20)
    parser.add_argument("--prompt", default="describe the image", help="the caption prompt the models were trained on")
    parser.add_argument("--random-weights", type=int, default=None, metavar="SEED",
                        help="measure the architecture with weights drawn afresh from SEED (a control)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated registry names")
    parser.add_argument("--split", default="test", choices=("val", "test"),
                        help="the scenes: held-out test (default) or validation, where the variants are chosen")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    methods = args.methods.split(",")
    if "occlusion-gradxinput" in methods:  # its gate's exponent against the default
        methods += gate_variants()
    for path in args.models:
        measure(path, args.scenes, args.prompt, args.random_weights, methods, args.split)


if __name__ == "__main__":
    main()
