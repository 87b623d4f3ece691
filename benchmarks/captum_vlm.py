"""Per-word maps of a VLM's caption: mmexplain's methods beside Captum's segment perturbation, pointing and time.

Captum's recipe for multimodal LLMs is ``LLMAttribution(FeatureAblation(model), tokenizer)`` with an
``ImageMaskInput``: the picture cut into segments, each segment blanked in turn (``baseline``, default
black here as for our Occlusion), the processor run again, and the log-probability of every output token
read; a word's attribution is the sum over its tokens (the log-probability of a word is the sum of its
tokens'). Segments: the square cells of a ``--cells`` x ``--cells`` grid, whose values are laid on the
image as every map here (bilinear from the cell centres), so the map's maximum is a cell centre. One change
to Captum's recipe: its one-forward mode extends only ``input_ids`` and ``attention_mask``, so Qwen2-VL's
``mm_token_type_ids`` are rebuilt from ``input_ids`` in a wrapper (``TokenTypes``), else the model refuses.

On held-out ShapeWorld scenes, each model explains its scene's own caption (teacher-forced, the same
words for every method); a content word hits when its map's maximum lies on the object it describes.
Seconds per caption (all words) are the median over scenes, one thread.

    python benchmarks/captum_vlm.py models/tiny-llava models/tiny-qwen2vl --scenes 20
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import mmexplain as mx
from mmexplain.evaluation.grounding import image_size

METHODS = ["gradcam", "scorecam", "occlusion", "relevancy", "attention", "tam", "lm-gradcam", "gradxinput", "pixel-gradxinput"]


class TokenTypes(torch.nn.Module):
    """The VLM with ``mm_token_type_ids`` rebuilt from ``input_ids``: Qwen2-VL needs them for M-RoPE, and Captum's
    one-forward mode extends only ``input_ids`` and ``attention_mask`` with the target tokens."""

    def __init__(self, hf) -> None:
        super().__init__()
        self.hf, self.image_token = hf, hf.config.image_token_id

    def forward(self, **inputs):
        if "image_grid_thw" in inputs:
            inputs["mm_token_type_ids"] = (inputs["input_ids"] == self.image_token).long()
        return self.hf(**inputs)


def captum_maps(vlm, picture, words, *, cells: int, baseline: tuple[int, int, int], by_tokens: bool):
    """(T, H, W) per-word maps from Captum's LLMAttribution(FeatureAblation) with an ImageMaskInput."""
    from captum.attr import FeatureAblation, ImageMaskInput, LLMAttribution
    from torchvision.transforms.functional import to_pil_image, to_tensor

    pixels = vlm.load_image(picture)
    _, spans = vlm.teacher_forced(pixels, words)
    tokens = torch.tensor([t for _, group in spans for t in group])  # (n,) the caption's token ids
    owner = torch.tensor([w for w, (_, group) in enumerate(spans) for _ in group])  # (n,) token -> word
    side = picture.shape[-1]
    step = side // cells
    mask = (torch.arange(side)[:, None] // step).clamp(max=cells - 1) * cells + \
        (torch.arange(side)[None, :] // step).clamp(max=cells - 1)  # (H, W) segment ids, row-major cells

    def process(image):
        inputs = vlm.prompt_inputs(vlm.load_image(to_tensor(image)))
        return {k: v for k, v in inputs.items() if k != "mm_token_type_ids"}  # Captum extends only ids and mask

    attribution = LLMAttribution(FeatureAblation(TokenTypes(vlm.hf_model)), vlm.tokenizer)
    inp = ImageMaskInput(to_pil_image(picture), mask=mask, baseline=baseline, processor_fn=process)
    res = attribution.attribute(inp, target=tokens, forward_in_tokens=by_tokens)
    per_token = res.token_attr.float()  # (n, cells * cells)
    per_word = torch.zeros(len(spans), per_token.shape[-1]).index_add_(0, owner, per_token)  # (T, cells^2)
    grid = per_word.reshape(len(spans), 1, cells, cells)
    return F.interpolate(grid, size=(side, side), mode="bilinear", align_corners=False)[:, 0]


def measure(path: str, scenes: int, cells: int, by_tokens: bool, methods: list[str]) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from mmexplain.zoo.quiet import quiet_transformers

    with quiet_transformers():
        model = AutoModelForImageTextToText.from_pretrained(path).eval()
        vlm = mx.hf.adapter(model, AutoProcessor.from_pretrained(path), prompt="describe the image",
                            max_new_tokens=40)
    size = image_size(vlm)
    names = [*methods, "captum"]
    hits = {m: [] for m in names}
    seconds = {m: [] for m in names}
    share = []
    for seed in mx.world.split_seeds("test", scenes):
        scene = mx.world.generate(seed, size=size)
        words = scene.caption.split()
        maps = {}
        for m in methods:
            start = time.perf_counter()
            maps[m] = mx.explain_caption(vlm, scene.image, scene.caption, method=m).maps
            seconds[m].append(time.perf_counter() - start)
        start = time.perf_counter()
        maps["captum"] = captum_maps(vlm, scene.image, words, cells=cells, baseline=(0, 0, 0), by_tokens=by_tokens)
        seconds["captum"].append(time.perf_counter() - start)
        for i, j in sorted(scene.alignment.items()):
            mask = scene.objects[j].mask.flatten()
            share.append(float(mask.float().mean()))
            for m in names:
                hits[m].append(bool(mask[int(maps[m][i].flatten().argmax())]))
    mode = "token by token" if by_tokens else "one forward per segment"
    print(f"{path}: {scenes} test scenes, {len(share)} content words; Captum FeatureAblation on {cells}x{cells} "
          f"segments ({mode})")
    print(f"| method | pointing | s / caption | vs Captum |")
    print(f"|---|---|---|---|")
    captum_s = statistics.median(seconds["captum"])
    for m in names:
        s = statistics.median(seconds[m])
        label = "Captum LLMAttribution(FeatureAblation)" if m == "captum" else mx.methods.display_name(m)
        print(f"| {label} | {sum(hits[m]) / len(hits[m]):.3f} | {s:.3f} | {captum_s / s:.1f}x faster |")
    print(f"| chance (object area) | {sum(share) / len(share):.3f} | | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="local transformers VLM folders")
    parser.add_argument("--scenes", type=int, default=20)
    parser.add_argument("--cells", type=int, default=8, help="Captum's segments: a cells x cells grid")
    parser.add_argument("--by-tokens", action="store_true", help="Captum's default token-by-token forwards")
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    for path in args.models:
        measure(path, args.scenes, args.cells, args.by_tokens, args.methods.split(","))


if __name__ == "__main__":
    main()
