"""Write the walk-through notebooks (outputs cleared): ``python notebooks/_build.py``.

The notebooks are generated from the cell lists below so that they stay reviewable as
plain Python; ``tests/test_notebooks.py`` executes them end to end with nbclient.
Both load the shipped models (``models/``); set ``MMEXPLAIN_MODELS`` to another models
folder to run them on other checkpoints.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

SETUP = """\
%matplotlib inline
import os

import torch
from matplotlib.figure import Figure

import mmexplain as mx
from mmexplain import metrics

torch.set_num_threads(2)
MODELS = os.environ.get("MMEXPLAIN_MODELS")  # None: the repository's models/ folder"""

CAPTION_CELLS = [
    ("md", """\
# Per-word caption heatmaps

A captioner says *"a small red diamond left of a large red square"*. Which pixels made it say **red**, and
which made it say **square**? Grad-CAM (Selvaraju et al., arXiv 1610.02391) answers for any differentiable
scalar; here the scalar is the log-probability of one word given the image and the words before it.

The reference captioner is *Show and Tell* without attention: a CNN encodes the image into one vector, an
LSTM writes the words. Nothing in its architecture points at image regions, yet the paper claims the maps
localize what the caption talks about. This notebook checks that claim on ShapeWorld, where every content word
of a caption is linked to the pixel mask of the object it describes.

What we do:
1. load the shipped captioner and generate held-out scenes;
2. explain every word of a caption (one forward pass, one batched backward);
3. verify that the whole-caption map is the sum of the word maps (before the ReLU);
4. check that a word's map ignores the words after it;
5. compare the maps with the ground-truth masks (pointing game, energy ratio)."""),
    ("code", SETUP + """
captioner = mx.zoo.load("captioner", MODELS)
print(type(captioner).__name__, "explained at", captioner.default_layer)"""),
    ("md", """\
## Held-out scenes

Scenes come from the *test* seed range, disjoint from the training seeds. Each has a reference caption, and
`scene.alignment` maps word positions of the caption to object indices."""),
    ("code", """\
scenes = [mx.world.generate(seed) for seed in mx.world.split_seeds("test", 6)]
fig = Figure(figsize=(12, 2.6), layout="constrained")
for ax, scene in zip(fig.subplots(1, len(scenes)), scenes):
    ax.imshow(mx.viz.to_image_array(scene.image))
    ax.set_axis_off()
    ax.set_title(scene.caption.replace(" left of ", "\\nleft of "), fontsize=8)
fig"""),
    ("md", """\
## Every word of the model's own caption

`explain_caption` generates the caption when none is given, then explains each word. The title of each panel
is the word and its probability p(word | image, previous words); the last panel explains the whole caption."""),
    ("code", """\
scene = scenes[0]
ex = mx.explain_caption(captioner, scene.image)
print("generated:", ex.caption)
print("reference:", scene.caption)
for word, lp in zip(ex.words, ex.logprobs.tolist()):
    print(f"  {word:10s} log p = {lp:7.3f}")
ex.plot()"""),
    ("md", """\
Function words (*a*, *of*) are predicted from grammar, not from pixels; hiding them leaves the words that
should point at objects. A given caption is explained the same way (an unknown word raises a `ValueError`)."""),
    ("code", """\
ex_ref = mx.explain_caption(captioner, scene.image, scene.caption)
ex_ref.plot(hide_function_words=True)"""),
    ("md", """\
## The interactive view, with other methods beside Grad-CAM

`ex.show()` renders the report inline: point at a word to see its map over the image, step with the arrow keys,
and switch between the methods passed in `methods=` (every name of `mx.explain.METHODS` works)."""),
    ("code", """\
others = {name: mx.explain_caption(captioner, scene.image, scene.caption, method=m)
          for name, m in (("HiResCAM", "hirescam"), ("Score-CAM", "scorecam"), ("Guided Grad-CAM", "guided"))}
ex_ref.show(methods=others)"""),
    ("md", """\
## The whole-caption map is the sum of the word maps

The caption's log-probability is the sum of its words' log-probabilities, and Grad-CAM is linear in the target
before its ReLU. So the map of the whole caption equals ReLU(sum over words of the pre-ReLU word maps). We check
it against an independent Grad-CAM call whose single target is the whole caption."""),
    ("code", """\
import torch.nn.functional as F
from mmexplain.methods import upsample_and_normalize
from mmexplain.targets import SequenceLogProb

summed = upsample_and_normalize(F.relu(ex_ref.result.pre_relu.sum(dim=0)), (96, 96))[0]
ids = captioner.vocab.encode(ex_ref.words)
tokens = torch.tensor([[captioner.vocab.bos, *ids]])
whole = mx.GradCAM(captioner, captioner.default_layer)((captioner.preprocess(scene.image), tokens),
                                                       SequenceLogProb(ids), size=(96, 96))
print("max |caption_map - ReLU(sum of word maps)| =", float((ex_ref.caption_map - summed).abs().max()))
print("max |caption_map - Grad-CAM(whole caption)| =", float((ex_ref.caption_map - whole.maps[0]).abs().max()))
print("sum of word log-probs", float(ex_ref.logprobs.sum()), "= caption log-prob", float(whole.scores[0]))"""),
    ("md", """\
## A word's map does not see the future

The LSTM reads left to right, so the map for word *t* must not change when a later word changes. Two captions
share their first seven words: their first seven maps are identical."""),
    ("code", """\
a = mx.explain_caption(captioner, scene.image, "a small red diamond left of a large red square")
b = mx.explain_caption(captioner, scene.image, "a small red diamond left of a small blue circle")
for t, (wa, wb) in enumerate(zip(a.words, b.words)):
    diff = float((a.maps[t] - b.maps[t]).abs().max())
    print(f"{t}: {wa:8s} {wb:8s} max map difference {diff:.2e}")"""),
    ("md", """\
## Maps against the ground truth

For each content word, the object it describes has an exact pixel mask. Below, each word's map with the
outline of its object; then two numbers per word: the **pointing game** (is the map's maximum inside the
mask?) and the **energy ratio** (mean map inside the mask / mean outside; 1.0 is a uniform map; the paper
reports 3.27 for Grad-CAM against DenseCap boxes)."""),
    ("code", """\
content = sorted(scene.alignment)
fig = Figure(figsize=(2.2 * len(content), 2.6), layout="constrained")
for ax, t in zip(fig.subplots(1, len(content)), content):
    obj = scene.objects[scene.alignment[t]]
    mx.viz.overlay(ex_ref.image, ex_ref.maps[t], ax=ax, colorbar=False)
    ax.contour(obj.mask.float().numpy(), levels=[0.5], colors="white", linewidths=1.5)
    hit = metrics.pointing_game(ex_ref.maps[t], obj.mask)
    ratio = metrics.energy_ratio(ex_ref.maps[t], obj.mask)
    ax.set_title(f"{ex_ref.words[t]} -> {obj.name}\\nhit={hit}, ratio={ratio:.1f}", fontsize=8)
fig"""),
    ("md", """\
Over more held-out scenes, by word type (size, colour, shape). The reference captions are explained (teacher
forcing), so every word has its object."""),
    ("code", """\
from collections import defaultdict

hits, ratios = defaultdict(list), defaultdict(list)
kind = {**{w: "size" for w in mx.world.SIZES}, **{w: "color" for w in mx.world.COLORS},
        **{w: "shape" for w in mx.world.SHAPES}}
for seed in mx.world.split_seeds("test", 10, start=100):
    s = mx.world.generate(seed)
    e = mx.explain_caption(captioner, s.image, s.caption)
    for t, o in s.alignment.items():
        mask = s.objects[o].mask
        hits[kind[e.words[t]]].append(metrics.pointing_game(e.maps[t], mask))
        ratios[kind[e.words[t]]].append(metrics.energy_ratio(e.maps[t], mask))
print(f"{'word type':10s} {'n':>4s} {'pointing':>9s} {'energy ratio (median)':>22s}")
for k in ("size", "color", "shape"):
    r = sorted(ratios[k])
    print(f"{k:10s} {len(hits[k]):4d} {sum(hits[k]) / len(hits[k]):9.2f} {r[len(r) // 2]:22.2f}")
every = [h for v in hits.values() for h in v]
print(f"{'all':10s} {len(every):4d} {sum(every) / len(every):9.2f}")"""),
    ("md", """\
`mmexplain evaluate grounding` measures this on 500 scenes with baselines (uniform, centre prior, random map)
and Guided Grad-CAM.

## Guided Grad-CAM

`method="guided"` multiplies each word's map with Guided Backpropagation: pixel-sharp, class-discriminative
evidence (the guided row under the maps)."""),
    ("code", """\
mx.explain_caption(captioner, scene.image, " ".join(scene.caption.split()[:4]), method="guided").plot()"""),
]

VQA_CELLS = [
    ("md", """\
# VQA answer grounding and counterfactuals

A VQA model answers *"what color is the square?"* with **red**. Grad-CAM of the answer's score shows where the
evidence lies; Grad-CAM of the *negated* score (the paper's counterfactual explanation, Sec. 3.2) shows the
regions that argue against it; gradient x embedding on the question words shows which words mattered.

The reference model is "deeper LSTM Q + norm I" (Lu et al. 2015): CNN image features, an LSTM question
encoding, an MLP over the answers. ShapeWorld questions name the objects they refer to, so the answer maps can
be checked against exact masks."""),
    ("code", SETUP + """
vqa = mx.zoo.load("vqa", MODELS)
print(len(vqa.answers), "answers:", ", ".join(vqa.answers))"""),
    ("code", """\
scenes = [mx.world.generate(seed) for seed in mx.world.split_seeds("test", 8)]
scene = next(s for s in scenes if len(s.objects) >= 2)
for qa in scene.questions:
    print(f"{qa.kind:6s} {qa.question:38s} -> {qa.answer:8s} objects {qa.objects}")
fig = Figure(figsize=(3, 3), layout="constrained")
ax = fig.subplots()
ax.imshow(mx.viz.to_image_array(scene.image))
ax.set_title(scene.caption, fontsize=8)
ax.set_axis_off()
fig"""),
    ("md", """\
## An answer, its counterfactual, and the question words

One forward pass explains the answer and its counterfactual together; the question-word attributions come from
the same backward. Green bars pushed the answer up, red bars pushed it down."""),
    ("code", """\
qa = next(q for q in scene.questions if q.kind == "color")
ax = mx.explain_answer(vqa, scene.image, qa.question)
print(f"Q: {qa.question}  A: {ax.answer} (p = {float(ax.probabilities[0]):.3f}); truth: {qa.answer}")
for token, value in zip(ax.question_tokens, ax.token_attributions[0].tolist()):
    print(f"  {token:8s} {value:+.4f}")
ax.plot()"""),
    ("md", """\
The counterfactual map is exactly the Grad-CAM map of the negated answer score. Written out by hand with a
`Scalar` target:"""),
    ("code", """\
from mmexplain.targets import Scalar

index = vqa.answers.index(ax.answer)
inputs = (vqa.preprocess(scene.image), vqa.encode_question(qa.question)[None])
negated = mx.GradCAM(vqa, vqa.default_layer)(inputs, Scalar(lambda out: -out[:, index]))
print("max |counterfactual - map of -score| =", float((ax.counterfactual - negated.maps[0]).abs().max()))"""),
    ("md", """\
## The top answers, from one forward pass

`top_k=3` explains the three most likely answers (and their counterfactuals) together: one row each."""),
    ("code", """\
top = mx.explain_answer(vqa, scene.image, qa.question, top_k=3)
print([(a, round(float(p), 3)) for a, p in zip(top.answers, top.probabilities)])
top.plot()"""),
    ("md", """\
The same three answers as an interactive view: click an answer to see its map, toggle the counterfactual, and read
the question words coloured by their attribution."""),
    ("code", """\
top.show()"""),
    ("md", """\
## The map follows the question

Same image, questions about different objects: the evidence moves to the object the question names."""),
    ("code", """\
grounded = [q for q in scene.questions if q.kind in ("color", "shape", "size") and len(q.objects) == 1][:3]
fig = Figure(figsize=(3.2 * len(grounded), 3.4), layout="constrained")
for axes, q in zip(fig.subplots(1, len(grounded), squeeze=False)[0], grounded):
    e = mx.explain_answer(vqa, scene.image, q.question)
    mx.viz.overlay(e.image, e.map, ax=axes, colorbar=False)
    axes.contour(scene.objects[q.objects[0]].mask.float().numpy(), levels=[0.5], colors="white")
    axes.set_title(f"{q.question}\\n-> {e.answer} (truth {q.answer})", fontsize=8)
fig"""),
    ("md", """\
## Grounding against the masks

Over held-out scenes, for questions that refer to exactly one object: how often the answer map's maximum
falls inside that object (pointing game), and the energy ratio inside/outside its mask. The counterfactual map
is scored the same way for contrast."""),
    ("code", """\
rows = []
for seed in mx.world.split_seeds("test", 12, start=200):
    s = mx.world.generate(seed)
    for q in s.questions:
        if q.kind in ("color", "shape", "size") and len(q.objects) == 1:
            e = mx.explain_answer(vqa, s.image, q.question)
            mask = s.objects[q.objects[0]].mask
            rows.append((q.kind, e.answer == q.answer, metrics.pointing_game(e.map, mask),
                         metrics.pointing_game(e.counterfactual, mask), metrics.energy_ratio(e.map, mask)))
print(f"{'kind':6s} {'n':>4s} {'correct':>8s} {'pointing':>9s} {'pointing (counterfactual)':>26s} {'energy ratio':>13s}")
for k in ("color", "shape", "size", None):
    r = [x for x in rows if k is None or x[0] == k]
    n = len(r)
    ratio = sorted(x[4] for x in r)[n // 2]
    print(f"{k or 'all':6s} {n:4d} {sum(x[1] for x in r) / n:8.2f} {sum(x[2] for x in r) / n:9.2f} "
          f"{sum(x[3] for x in r) / n:26.2f} {ratio:13.2f}")"""),
    ("md", """\
`mmexplain vqa IMAGE "QUESTION" --top-k 3 --out fig.png` makes the same figure from the command line, and
`mmexplain demo` writes a report with answer maps for several scenes."""),
]


def build(cells: list[tuple[str, str]], prefix: str) -> nbformat.NotebookNode:
    nb = new_notebook(cells=[new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in cells])
    for i, cell in enumerate(nb.cells):
        cell.id = f"{prefix}-{i:02d}"  # stable ids: rebuilding changes nothing that did not change
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def main() -> None:
    for name, cells in (("caption_heatmaps.ipynb", CAPTION_CELLS), ("vqa_grounding.ipynb", VQA_CELLS)):
        nb = build(cells, name.split("_")[0])
        nbformat.validate(nb)
        nbformat.write(nb, HERE / name)
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main()
