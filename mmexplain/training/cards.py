"""Model cards (``CARD.md``): what a shipped model is, how it was made, its held-out metrics.

Every card names the command that made the model and the one that reproduces its
metrics (``mmexplain train NAME --evaluate-only``). A model trained from another
checkpoint (``--init``) keeps the earlier training in its card.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch

__all__ = ["zoo_card", "ved_card", "vilt_card", "earlier_card"]

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


def _fmt(x: object) -> str:
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def _machine(info: dict[str, Any]) -> str:
    return (f"{info.get('threads')} torch thread(s); {platform.machine()} CPU, torch {torch.__version__}")


def zoo_card(name: str, model: torch.nn.Module, info: dict[str, Any], metrics: dict[str, Any], command: str) -> str:
    """The card of a CNN model: description, training, held-out metrics, notes."""
    n_params = sum(p.numel() for p in model.parameters())
    qps = info.get("questions_per_scene")
    per_scene = "" if qps is None else " scenes x " + (
        f"up to {qps} questions" if qps > 0 else "every question of the scene")
    lines = [f"# {name}", "", DESCRIPTION[name], "",
             f"Parameters: {n_params:,}. Input: (B, 3, 96, 96) floats in [0, 1] (normalised inside `forward`). "
             f"Grad-CAM layer: `{model.default_layer}` (12x12).", "",
             "## How it was made", "", "```", command, "```", "",
             f"- steps: {info.get('steps')}, batch size: {info.get('batch_size')}{per_scene}, peak lr: "
             f"{info.get('lr')} (AdamW, {info.get('warmup')} warm-up steps, cosine decay), seed: {info.get('seed')}",
             ("- CNN initialised from the `" + str(info.get("encoder_from")) + "` checkpoint's encoder "
              "(like the paper's pretrained CNN), then trained end to end" if info.get("encoder_from")
              else "- trained from scratch (random initialisation)"),
             "- data: fresh ShapeWorld train-split scenes every step (no scene seen twice)"
             + (f", biased: {info.get('bias')}" if info.get("bias") else ""),
             f"- training time: {info.get('seconds')} s wall clock, {info.get('cpu_seconds')} s of CPU time "
             f"({_machine(info)}); on a machine shared with other jobs the wall clock is mostly waiting",
             f"- loss: {info.get('first_loss')} (first 20 steps) -> {info.get('final_loss')} (last 50 steps)"]
    prev = info.get("resumed_from")
    while prev:  # earlier stages of a continued training
        t = prev.get("training") or {}
        lines.append(f"- continued from a checkpoint made by `{prev.get('command')}`: {t.get('steps')} steps, "
                     f"{t.get('seconds')} s wall clock, {t.get('cpu_seconds')} s CPU, loss {t.get('first_loss')} "
                     f"-> {t.get('final_loss')}")
        prev = t.get("resumed_from")
    lines += ["", "## Held-out metrics", "",
              f"First {metrics['n_scenes']} scenes of the test split "
              f"(`mx.world.split_seeds('test', {metrics['n_scenes']})`). Reproduce with:", "",
              "```", f"mmexplain train {name} --evaluate-only" + (
                  "" if metrics["n_scenes"] == 1000 else f" --scenes {metrics['n_scenes']}"), "```", "",
              "| metric | value |", "|---|---|"]
    for k, v in metrics.items():
        if isinstance(v, dict) and k != "AP_per_class":
            lines += [f"| {k} / {kk} | {_fmt(vv)} |" for kk, vv in v.items()]
        elif not isinstance(v, (dict, list)):
            lines.append(f"| {k} | {_fmt(v)} |")
    if "AP_per_class" in metrics:
        lines += ["", "AP per class:", "", "| class | AP |", "|---|---|"]
        lines += [f"| {c} | {v:.4f} |" for c, v in metrics["AP_per_class"].items()]
    if "examples" in metrics:
        lines += ["", "Examples (reference -> generated):", ""]
        lines += [f"- `{e['reference']}` -> `{e['generated']}`" for e in metrics["examples"]]
    lines += ["", "## Notes", "", NOTES[name], "",
              f"Load it with `mx.zoo.load(\"{name}\")` (safetensors, no pickle).", ""]
    return "\n".join(lines)


def _training_lines(info: dict[str, Any], data: str) -> str:
    return (f"- data: {data}, random vertical flips; AdamW lr {info.get('lr')}, warmup {info.get('warmup')}, "
            f"cosine, batch {info.get('batch_size')}, {info.get('steps')} steps run (limits: {info.get('max_steps')} "
            f"steps, {info.get('minutes')} minutes), seed {info.get('seed')}; final training-batch loss "
            f"{info.get('last_loss')}\n"
            f"- time: {info.get('seconds', 0):.0f} s training + {info.get('data_seconds', 0):.0f} s data, CPU "
            f"({_machine(info)})\n"
            "- full config: `train_config.json`")


def ved_card(info: dict[str, Any], metrics: dict[str, Any], command: str) -> str:
    """The card of tiny-ved."""
    a = info["architecture"]
    grid = a["image_size"] // a["patch_size"]
    rows = "\n".join(f"| {k} | {v:.3f} |" for k, v in sorted(metrics["word_accuracy"].items()))
    return f"""# tiny-ved — a tiny ViT + GPT-2 captioner trained on ShapeWorld

A Hugging Face `VisionEncoderDecoderModel` (ViT encoder {a['enc_layers']}x{a['enc_hidden']}, patch
{a['patch_size']} on {a['image_size']}x{a['image_size']} images -> {grid}x{grid} grid;
GPT-2 decoder {a['dec_layers']}x{a['dec_hidden']} with cross-attention), built from configs and trained from
scratch on CPU; a word-level tokenizer over the ShapeWorld vocabulary. It exists so that
`mmexplain.hf` can be checked on a transformer whose words mean something; it is not a
general captioner.

Load (no network): `mx.zoo.load("tiny-ved")` (a `mx.hf.VisionEncoderDecoderCaptioner`), or
`VisionEncoderDecoderModel`, `PreTrainedTokenizerFast` and `ViTImageProcessor`
`.from_pretrained` on the folder.

## Training

Command: `{command}`

{_training_lines(info, f"ShapeWorld train seeds 0..{info['n_train'] - 1} (`mx.world.generate(seed, size={a['image_size']})`)")}

## Held-out metrics (ShapeWorld val, first {metrics['n']} seeds)

Reproduce with `mmexplain train tiny-ved --evaluate-only --scenes {metrics['n']}`.

- greedy caption exact match: {metrics['exact_match']:.3f}
- teacher-forced next-word accuracy, all words: {metrics['word_accuracy_all']:.3f}

| word kind | accuracy |
|---|---|
{rows}

Grounding (per-word pointing game and energy ratio of Grad-CAM maps):
`python benchmarks/hf_grounding.py`.
"""


def vilt_card(info: dict[str, Any], metrics: dict[str, Any], command: str) -> str:
    """The card of tiny-vilt."""
    from .. import world

    a = info["architecture"]
    grid = a["image_size"] // a["patch_size"]
    rows = "\n".join(f"| {k} | {v:.3f} |" for k, v in sorted(metrics["accuracy"].items()))
    return f"""# tiny-vilt — a tiny ViLT answer classifier trained on ShapeWorld questions

A Hugging Face `ViltForQuestionAnswering` ({a['layers']} layers x {a['hidden']}, patch {a['patch_size']} on
{a['image_size']}x{a['image_size']} images -> {grid}x{grid} patches inside the joint text+image sequence), built from a config
and trained from scratch on CPU over ShapeWorld's {len(world.answers())} answers with ViLT's VQA objective
(binary cross-entropy per answer); a word-level tokenizer with `[CLS] question [SEP]`. It exists so that
`mx.hf.ViltVQA` (answer maps + question-token attributions) can be checked on a trained ViLT.

Load (no network): `mx.zoo.load("tiny-vilt")` (a `mx.hf.ViltVQA`), or
`ViltForQuestionAnswering`, `PreTrainedTokenizerFast` and `ViltImageProcessor` `.from_pretrained`
on the folder.

## Training

Command: `{command}`

{_training_lines(info, f"all questions of ShapeWorld train seeds 0..{info['n_train'] - 1} at {a['image_size']} px")}

## Held-out answer accuracy (ShapeWorld val, first {metrics['n']} scenes, {metrics['n_questions']} questions)

Reproduce with `mmexplain train tiny-vilt --evaluate-only --scenes {metrics['n']}`.

| question kind | accuracy |
|---|---|
{rows}

Grounding of the answer maps: `python benchmarks/hf_grounding.py`.
"""


def earlier_card(init: str | Path | None) -> str:
    """The card of the checkpoint a run continued from, as a section to append (``""`` without one)."""
    if init is None:
        return ""
    path = Path(init) / "CARD.md"
    card = path.read_text(encoding="utf-8") if path.is_file() else "(no CARD.md)\n"
    body = "\n".join(line if not line.startswith("#") else "#" + line for line in card.splitlines())
    return ("\n## Earlier training: this run continued from the checkpoint below (its card)\n\n"
            "The weights above start from that checkpoint; the times add up.\n\n" + body + "\n")
