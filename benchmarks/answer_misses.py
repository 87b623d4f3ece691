"""Where an answer's map misses its object: does the answer depend on the object the map points at?

For each question about an object (held-out ShapeWorld test scenes) whose answer map (``--method``,
default gradient x input on the pixels) peaks on ANOTHER object, each object is painted over with the
scene's background colour (``scene.background``) in turn and the answer's log-probability read again
(teacher-forced, the scene's own answer):

- drop when the object under the map's peak is removed,
- drop when the asked-about object (the referent) is removed,
- drop when a third object, neither of them, is removed (scenes with three objects).

A positive drop means the answer needed that object. The printout gives the misses per question kind
and the medians, so a map's misses can be read as evidence the model used, or not.

    python benchmarks/answer_misses.py models/tiny-qwen2vl models/tiny-llava --scenes 40
"""

from __future__ import annotations

import argparse
import statistics
from collections import Counter

import torch

import mmexplain as mx
from mmexplain.evaluation.grounding import image_size


def painted(scene, j: int) -> torch.Tensor:
    """The scene's (3, H, W) image with object ``j`` painted in the scene's background colour."""
    image = scene.image.clone()
    image[:, scene.objects[j].mask] = torch.tensor(scene.background, dtype=image.dtype)[:, None]
    return image


def measure(path: str, scenes: int, method: str) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from mmexplain.zoo.quiet import quiet_transformers

    with quiet_transformers():
        model = AutoModelForImageTextToText.from_pretrained(path).eval()
        vlm = mx.hf.adapter(model, AutoProcessor.from_pretrained(path), prompt="describe the image")
    size = image_size(vlm)

    def logp(image, qa) -> float:  # the answer's summed token log-probability (one forward, no map needed)
        return float(mx.explain_answer(vlm, image, qa.question, qa.answer, method="attention").scores[0])

    asked, misses, drops = Counter(), Counter(), {"peak": [], "referent": [], "third": []}
    for seed in mx.world.split_seeds("test", scenes):
        scene = mx.world.generate(seed, size=size)
        for qa in scene.questions:
            if not qa.objects:
                continue
            asked[qa.kind] += 1
            ex = mx.explain_answer(vlm, scene.image, qa.question, qa.answer, method=method)
            flat = int(ex.maps[0].flatten().argmax())
            peak = [j for j, o in enumerate(scene.objects) if bool(o.mask.flatten()[flat]) and j not in qa.objects]
            if not peak:
                continue
            misses[qa.kind] += 1
            base = float(ex.scores[0])
            drops["peak"].append(base - logp(painted(scene, peak[0]), qa))
            drops["referent"].append(base - logp(painted(scene, qa.objects[0]), qa))
            rest = [j for j in range(len(scene.objects)) if j not in qa.objects and j != peak[0]]
            if rest:
                drops["third"].append(base - logp(painted(scene, rest[0]), qa))
    print(f"{path}: {scenes} test scenes, {sum(asked.values())} questions about objects, "
          f"{mx.methods.display_name(method)}")
    print("  answers whose map peaks on another object, by question kind: "
          + ", ".join(f"{k} {misses[k]}/{asked[k]}" for k in sorted(asked)))
    for name, label in (("peak", "the object under the peak"), ("referent", "the asked-about object"),
                        ("third", "a third object")):
        values = drops[name]
        if values:
            lowered = sum(v > 0.1 for v in values)
            print(f"  removing {label:26s} median drop of log p(answer) {statistics.median(values):+.2f} nats; "
                  f"lowers it by > 0.1 in {lowered}/{len(values)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="local transformers VLM folders")
    parser.add_argument("--scenes", type=int, default=40)
    parser.add_argument("--method", default="pixel-gradxinput")
    args = parser.parse_args()
    torch.set_num_threads(2)
    for path in args.models:
        measure(path, args.scenes, args.method)


if __name__ == "__main__":
    main()
