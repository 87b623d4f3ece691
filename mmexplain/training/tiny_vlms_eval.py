"""Held-out quality of the tiny ShapeWorld VLMs and their model cards.

:func:`evaluate` runs on the first ``n`` val-split scenes (never trained on), through the
``mx.hf`` adapter users get from ``mx.zoo.load``:

* teacher-forced word accuracy of the reference caption by word kind (``size``,
  ``color``, ``shape``, ``relation`` for ``left of``, ``other`` for ``a``): a word is
  right when every one of its tokens (a lone leading-space token included) is the
  model's argmax after the true prefix;
* greedy caption exact match (the generated words equal the caption's);
* greedy answer accuracy per question kind (``color``, ``shape``, ``size``, ``count``, ``exist``);
* the pointing game of Grad-CAM per content word of the reference caption (its map's
  maximum inside the mask of the object it names), beside the uniform map's chance level.

``python -m mmexplain.training.tiny_vlms_eval NAME [FOLDER] [N]`` prints the metrics as JSON.

Example:
    >>> import mmexplain as mx
    >>> from mmexplain.training.tiny_vlms_eval import evaluate
    >>> evaluate(mx.zoo.load("tiny-qwen2vl"), n=20)["caption_exact"]       # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .. import world
from ..targets import SequenceLogProb
from ..errors import InputError

__all__ = ["word_kind", "word_tokens", "forced_inputs", "evaluate", "card"]


def word_kind(word: str) -> str:
    """``size``, ``color``, ``shape``, ``relation`` (``left``, ``of``) or ``other``."""
    if word in world.SIZES:
        return "size"
    if word in world.COLORS:
        return "color"
    if word in world.SHAPES:
        return "shape"
    return "relation" if word in world.RELATION.split() else "other"


def word_tokens(tokenizer: Any, words: Sequence[str]) -> list[list[int]]:
    """Each word's token ids, its leading space included (byte-level BPE encodes words independently)."""
    pieces = [tokenizer(w, add_special_tokens=False).input_ids for w in words]
    whole = tokenizer(" ".join(words), add_special_tokens=False).input_ids
    if [t for p in pieces for t in p] != whole:
        raise InputError(f"words: the tokenizer does not encode {' '.join(words)!r} word by word")
    return pieces


def forced_inputs(vlm: Any, pixels: Tensor, words: Sequence[str],
                  prompt: str | None = None) -> tuple[dict[str, Tensor], list[tuple[list[int], list[int]]]]:
    """One teacher-forced input over ``prompt + words`` and per word (logit rows, token ids), every token counted.

    Row ``r`` of the logits predicts the token at ``r + 1`` (absolute positions, no ``logits_to_keep``).
    """
    inputs = vlm.prompt_inputs(pixels, prompt)
    pieces = word_tokens(vlm.tokenizer, words)
    ids = [t for p in pieces for t in p]
    length = inputs["input_ids"].shape[1]
    out = dict(inputs)
    out["input_ids"] = torch.cat([inputs["input_ids"], torch.tensor([ids])], dim=1)  # (1, P + n)
    out["attention_mask"] = torch.ones_like(out["input_ids"])
    if "mm_token_type_ids" in inputs:
        out["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros(1, len(ids), dtype=torch.long)],
                                             dim=1)
    spans, k = [], length - 1
    for p in pieces:
        spans.append((list(range(k, k + len(p))), p))
        k += len(p)
    return out, spans


def evaluate(vlm: Any, *, n: int = 200, pointing: bool = True,
             log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Held-out metrics of a tiny VLM adapter on the first ``n`` val scenes (see the module docstring)."""
    from .. import metrics
    from ..methods import GradCAM, upsample_and_normalize

    size = vlm.display_image(vlm.load_image(torch.zeros(3, 96, 96))).shape[-1]
    exact, right, total, q_right, q_total = 0, {}, {}, {}, {}
    hits, chance, misses = [], [], []
    start = time.time()
    for seed in world.split_seeds("val", n):
        scene = world.generate(seed, size=size)
        pixels = vlm.load_image(scene.image)
        words = scene.caption.split()
        said = vlm.generate(pixels)
        exact += said == words
        if said != words and len(misses) < 5:
            misses.append({"seed": seed, "caption": scene.caption, "generated": " ".join(said)})
        inputs, spans = forced_inputs(vlm, pixels, words)
        with torch.no_grad():
            logits = vlm.hf_model(**inputs).logits[0]  # (L, V)
        for word, (rows, tokens) in zip(words, spans):
            kind = word_kind(word)
            total[kind] = total.get(kind, 0) + 1
            right[kind] = right.get(kind, 0) + int(all(int(logits[r].argmax()) == t for r, t in zip(rows, tokens)))
        for qa in scene.questions:
            q_total[qa.kind] = q_total.get(qa.kind, 0) + 1
            q_right[qa.kind] = q_right.get(qa.kind, 0) + int(vlm.answer(pixels, qa.question) == qa.answer)
        if pointing:
            content = sorted(scene.alignment)
            targets = [SequenceLogProb(spans[i][1], positions=spans[i][0]) for i in content]
            res = GradCAM(vlm.model, vlm.default_layer, reshape=vlm.reshape_for(pixels))(inputs, targets,
                                                                                          size=(size, size))
            flat = upsample_and_normalize(torch.ones(1, 1, 1), (size, size))[0]
            for j, i in enumerate(content):
                mask = scene.objects[scene.alignment[i]].mask
                hits.append(float(metrics.pointing_game(res.maps[j, 0], mask)))
                chance.append(float(metrics.pointing_expected(flat, mask)))
    if log is not None:
        log(f"evaluated {n} val scenes in {time.time() - start:.0f}s")
    out = {"n_scenes": n, "caption_exact": exact / n,
           "word_accuracy": {k: right[k] / total[k] for k in sorted(total)},
           "answer_accuracy": sum(q_right.values()) / sum(q_total.values()), "n_questions": sum(q_total.values()),
           "answer_accuracy_per_kind": {k: q_right[k] / q_total[k] for k in world.QUESTION_KINDS if k in q_total},
           "caption_misses": misses, "layer": vlm.site}
    if pointing:
        out["pointing"] = {"Grad-CAM": sum(hits) / max(1, len(hits)),
                           "uniform map (chance)": sum(chance) / max(1, len(chance))}
        out["pointing_words"] = len(hits)
    return out


ABOUT = {
    "tiny-llava": ("LlavaForConditionalGeneration", "LlavaProcessor",
                   "a CLIP vision tower ({vision_layers} x {vision_hidden}, patch {patch_size} on {image_size} x "
                   "{image_size} images -> a {grid} x {grid} grid + CLS; its learned positions start as 2-D "
                   "sine-cosine ones), LLaVA's two-layer projector and a Llama LM "
                   "({text_layers} x {text_hidden}); the LM reads `hidden_states[-2]` (the output of vision block "
                   "{read} of 0..{last}) with CLS dropped: {grid2} image tokens"),
    "tiny-qwen2vl": ("Qwen2VLForConditionalGeneration", "Qwen2VLProcessor",
                     "Qwen2-VL's vision transformer ({vision_layers} x {vision_hidden}, patch {patch_size}, temporal "
                     "patch 2, 2-D rotary positions) on {image_size} x {image_size} images -> a {grid} x {grid} grid, "
                     "its merger (2 x 2 patches -> one token: {merged} image tokens, `image_grid_thw` = [1, {grid}, "
                     "{grid}]) and the Qwen2 LM ({text_layers} x {text_hidden}) with M-RoPE (temporal / height / width "
                     "rotary sections)"),
}


def card(name: str, info: dict[str, Any], metrics: dict[str, Any], *, command: str, eval_command: str,
         split: dict[str, list[str]], size_bytes: int) -> str:
    """``CARD.md`` of a tiny VLM: architecture, tokenizer, recipe, time, seed and held-out metrics."""
    a = info["architecture"]
    grid = a["image_size"] // a["patch_size"]
    cls, proc, text = ABOUT[name]
    arch = text.format(**a, grid=grid, grid2=grid * grid, merged=grid * grid // 4, read=a["vision_layers"] - 2,
                       last=a["vision_layers"] - 1)
    r = info["recipe"]
    stages = info["stages"]
    cpu = sum(s["cpu_seconds"] for s in stages)
    share = 100 * cpu / max(sum(s["seconds"] for s in stages), 1e-9)
    budgets = ", ".join(f"{m:.1f}" for m in r["minutes"])
    continued = ""
    if "continued" in info:
        more = ", ".join(f"{m:.1f}" for m in info["continued"]["minutes"])
        continued = (f"\n- then continued from that checkpoint (the last stage(s) above, wall-clock budgets {more} "
                     "minutes), because the first run got too little CPU time on the shared machine")
    words = "\n".join(f"| {k} | {v:.3f} |" for k, v in metrics["word_accuracy"].items())
    kinds = "\n".join(f"| {k} | {v:.3f} |" for k, v in metrics["answer_accuracy_per_kind"].items())
    splits = ", ".join(f"`{w}` = {' + '.join(f'`{p}`' for p in ps)}" for w, ps in split.items())
    point = ""
    if "pointing" in metrics:
        point = ("\n\nGrad-CAM pointing game (content words of the reference caption, map maximum inside the named "
                 f"object's mask, {metrics['pointing_words']} words): {metrics['pointing']['Grad-CAM']:.3f}; "
                 f"uniform map (chance): {metrics['pointing']['uniform map (chance)']:.3f}.")
    turns = info["recipe"].get("turns", 0)
    listing = info["recipe"].get("listing", 0.0)
    listed = (f", {listing:.0%} of their examples replaced by the objects listed shape first" if listing else "")
    data = (f" (batches of captions{listed}; every third batch {turns} questions per scene as dialogue turns)"
            if turns else " (every batch half captions, half questions)")
    labels = ("vision pretraining (tower + projector + slot head on the caption's objects)",
              "alignment + instruction tuning, tower frozen" + data, "full tuning" + data)
    by_kind = {k: metrics["word_accuracy"].get(k, 0.0) for k in ("shape", "color", "size")}
    weakest = min(by_kind, key=by_kind.__getitem__)
    bars = [("shape, colour and size words (teacher-forced)", by_kind[weakest], 0.95),
            ("greedy captions exact", metrics["caption_exact"], 0.8), ("answers", metrics["answer_accuracy"], 0.9)]
    below = [f"{what} {got:.3f} < {bar}" for what, got, bar in bars if got < bar]
    asked = metrics.get("answer_accuracy_per_kind", {})
    worst = min(asked, key=asked.__getitem__) if asked else None
    targets = ("All reached: shape/colour/size >= 0.95, captions >= 0.8 exact, answers >= 0.9." if not below else
               "Below the bar: " + "; ".join(below) + f". The weakest word kind is {weakest} ({by_kind[weakest]:.3f}; "
               f"objects of 16-25 px on {a['patch_size']} px patches)" + (f", the weakest question kind {worst} "
               f"({asked[worst]:.3f})" if worst else "") + "; the stages stop on their wall-clock budgets with the "
               "losses still falling.")
    stage_lines = "\n".join(
        f"  {s.get('stage', k + 1)}. {labels[s.get('stage', k + 1) - 1]}: {s['steps']} steps of {s['batch_size']}, "
        f"lr {s['lr']}, {s['seconds']:.0f} s ({s['cpu_seconds']:.0f} s CPU), "
        f"loss {s['first_loss']} -> {s['final_loss']}"
        for k, s in enumerate(stages))
    threads = f"{info['threads']} torch thread" + ("s" if info["threads"] > 1 else "")
    machine = f", on a {info['cores']}-core machine" if info.get("cores") else ""
    return f"""# {name}: a tiny {cls.replace('ForConditionalGeneration', '')} trained on ShapeWorld

A Hugging Face `{cls}` built from configs and trained from scratch on CPU: {arch}.
{info['parameters']:,} parameters, {size_bytes / 1e6:.1f} MB on disk (safetensors).
Tokenizer: byte-level BPE trained with `tokenizers` on ShapeWorld text (vocabulary
{info.get('vocab_size', '?')} tokens), so that words split into pieces: {splits}.
Chat template `user: <image> PROMPT assistant:`; it captions (prompt `describe the image`) and answers
ShapeWorld questions (the question is the prompt). It exists to measure explanations of an
LLM-based VLM whose words mean something; it is not a general model.

Load (no network): `mx.zoo.load("{name}")`, or

```python
from transformers import {cls}, {proc}
model = {cls}.from_pretrained("./models/{name}")
processor = {proc}.from_pretrained("./models/{name}")
vlm = mx.hf.adapter(model, processor, prompt="describe the image")
```

## Training

Command: `{command}` (seed {r['seed']}, {threads}; {info['seconds'] / 60:.1f} minutes wall clock in
all, {info['data_seconds']:.0f} s of it preparing the data (generated, or read from --cache-dir);
{cpu / 60:.1f} CPU minutes of training, {share:.0f}% of one core{machine}).

- data: ShapeWorld train seeds 0..{r['n_train'] - 1} at {a['image_size']} px, each scene's caption and all
  its questions; random vertical flips; no masks or boxes are used;
- stages (AdamW, warm-up + cosine, each with a wall-clock budget of {budgets} minutes):
{stage_lines}{continued}

## Held-out metrics (ShapeWorld val, first {metrics['n_scenes']} seeds)

Printed by `{eval_command}`.

- greedy caption exact match: {metrics['caption_exact']:.3f}
- greedy answer accuracy: {metrics['answer_accuracy']:.3f} ({metrics['n_questions']} questions)

Teacher-forced word accuracy of the reference caption (every token of the word right), by word kind:

| word kind | accuracy |
|---|---|
{words}

Answer accuracy by question kind:

| question kind | accuracy |
|---|---|
{kinds}{point}

## Quality bars

{targets}
"""


def main(argv: list[str] | None = None) -> None:
    """``python -m mmexplain.training.tiny_vlms_eval NAME [FOLDER] [N]``: the held-out metrics as JSON."""
    import json
    import sys

    from .. import zoo
    from ..zoo import tiny_vlms

    args = sys.argv[1:] if argv is None else argv
    name = args[0]
    vlm = zoo.load(name) if len(args) < 2 else tiny_vlms.load(args[1], name)
    torch.manual_seed(0)
    print(json.dumps(evaluate(vlm, n=int(args[2]) if len(args) > 2 else 200), indent=1))


if __name__ == "__main__":
    main()
