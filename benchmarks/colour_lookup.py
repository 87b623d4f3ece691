"""Does a tiny VLM find an object by its shape? Colour answers, and what the answer position reads.

"what color is the X ?" needs the LM to find the object of shape X among the image tokens. On
held-out validation scenes with two or three objects this prints, per model folder:

- colour answers right, by the number of objects in the scene;
- the LM's attention from the answer position (the prompt's last token) to the image tokens that
  cover the asked-about object and to those that cover the other objects, per layer (mean over
  heads; a token's share of an object is the share of its cell the object's mask covers). Masks are
  read here only to analyse; no model sees them;
- how much the answer position's hidden state depends on the shape asked about: the cosine between
  the states of "what color is the X ?" for two different shapes of the same scene, per layer
  (1.0: the question's shape word does not reach the answer position);
- the attention from the answer position to the shape word's tokens in the question, per layer;
- the mean norm of the image tokens and of the text tokens at the LM's input (the projector's
  output against the token embeddings);
- answers right per question template (the question with its shape and colour words replaced by
  <shape> / <colour>), on all the scenes: those that find the object by its shape ("what color is
  the <shape> ?", "how many <shape>s ...") against those that find it by its colour.

    python benchmarks/colour_lookup.py models/tiny-llava models/tiny-qwen2vl --scenes 40
"""

from __future__ import annotations

import argparse

import torch

import mmexplain as mx


def _load(path: str):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from mmexplain.zoo.quiet import quiet_transformers

    with quiet_transformers():
        model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True, use_safetensors=True,
                                                            attn_implementation="eager").eval()
        processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    return model, processor


def _cover(scene, n_tokens: int) -> torch.Tensor:
    """``(objects, n_tokens)``: the share of each image token's cell that each object's mask covers."""
    side = int(round(n_tokens ** 0.5))
    cell = scene.size // side
    masks = torch.stack([o.mask for o in scene.objects]).float()[:, None]  # (O, 1, H, W)
    return torch.nn.functional.avg_pool2d(masks, cell)[:, 0].flatten(1)  # (O, side * side)


def _span(processor, ids: torch.Tensor, question: str) -> torch.Tensor:
    """``(L,)`` bool: the tokens of the question's shape word (the word before "?"), found from the end."""
    word = processor.tokenizer(" " + question.split()[-2], add_special_tokens=False)["input_ids"]
    ids = ids.tolist()
    start = next(i for i in range(len(ids) - len(word), -1, -1) if ids[i:i + len(word)] == word)
    span = torch.zeros(len(ids), dtype=torch.bool)
    span[start:start + len(word)] = True
    return span


def template(question: str) -> str:
    """The question with its shape and colour words replaced: "what color is the <shape> ?"."""
    words = question.split()
    for i, w in enumerate(words):
        if w in mx.world.COLORS:
            words[i] = "<colour>"
        elif w in mx.world.SHAPES or w.rstrip("s") in mx.world.SHAPES:
            words[i] = "<shape>" + w[len(w.rstrip("s")):]
    return " ".join(words)


def measure(path: str, scenes: int) -> None:
    from mmexplain.adapters.hf.vlm import chat_text

    model, processor = _load(path)
    vlm = mx.hf.adapter(model, processor)
    image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    right: dict[int, list[int]] = {}
    asked_mass: list[torch.Tensor] = []  # per question: (layers,)
    other_mass: list[torch.Tensor] = []
    word_mass: list[torch.Tensor] = []  # per question: (layers,)
    norms: list[torch.Tensor] = []  # per question: (image, text)
    cosines: list[torch.Tensor] = []  # per scene: (layers + 1,)
    by_template: dict[str, list[int]] = {}  # template -> 0/1 per question of every scene (yes / no kept apart)
    for seed in mx.world.split_seeds("val", scenes):
        scene = mx.world.generate(seed, size=96)
        pixels = vlm.load_image(scene.image)
        hit = {}
        for qa in scene.questions:
            hit[qa.question] = int(vlm.answer(pixels, qa.question) == qa.answer)
            key = template(qa.question) + (f" ({qa.answer})" if qa.kind == "exist" else "")
            by_template.setdefault(key, []).append(hit[qa.question])
        if len(scene.objects) < 2:
            continue
        last = []
        for qa in (q for q in scene.questions if q.kind == "color"):
            right.setdefault(len(scene.objects), []).append(hit[qa.question])
            enc = processor(text=chat_text(processor, qa.question), images=scene.image, return_tensors="pt",
                            do_rescale=False)
            with torch.no_grad():
                out = model(**enc, output_attentions=True, output_hidden_states=True)
            image = enc["input_ids"][0] == image_id  # (L,)
            cover = _cover(scene, int(image.sum()))  # (O, n)
            rows = torch.stack([a[0, :, -1][:, image].mean(0) for a in out.attentions])  # (layers, n)
            others = [k for k in range(len(scene.objects)) if k != qa.objects[0]]
            asked_mass.append(rows @ cover[qa.objects[0]])
            other_mass.append((rows @ cover[others].T).mean(-1))
            last.append(torch.stack([h[0, -1] for h in out.hidden_states]))  # (layers + 1, D)
            word = _span(processor, enc["input_ids"][0], qa.question)  # (L,)
            word_mass.append(torch.stack([a[0, :, -1][:, word].sum(-1).mean(0) for a in out.attentions]))
            first = out.hidden_states[0][0].norm(dim=-1)  # (L,)
            norms.append(torch.stack([first[image].mean(), first[~image].mean()]))
        if len(last) >= 2:
            cosines.append(torch.nn.functional.cosine_similarity(last[0], last[1], dim=-1))
    print(f"{path}: colour answers right, by objects in the scene: "
          + ", ".join(f"{k} objects {sum(v)}/{len(v)}" for k, v in sorted(right.items())))
    asked, other = torch.stack(asked_mass).mean(0), torch.stack(other_mass).mean(0)
    for layer, (a, o) in enumerate(zip(asked.tolist(), other.tolist())):
        print(f"  LM layer {layer}: attention of the answer position to the asked object {a:.3f}, "
              f"to another object {o:.3f}")
    print("  attention of the answer position to the shape word asked, per LM layer: "
          + " ".join(f"{w:.3f}" for w in torch.stack(word_mass).mean(0).tolist()))
    image_norm, text_norm = torch.stack(norms).mean(0).tolist()
    print(f"  LM input norms: image tokens {image_norm:.1f}, text tokens {text_norm:.2f}")
    cos = torch.stack(cosines).mean(0)
    print("  cosine of the answer position's state between two shapes asked, after the embeddings and each layer: "
          + " ".join(f"{c:.4f}" for c in cos.tolist()))
    print("  answers right by question template:")
    for key, hits in sorted(by_template.items()):
        print(f"    {sum(hits):3d}/{len(hits):3d}  {key}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="local transformers VLM folders")
    parser.add_argument("--scenes", type=int, default=40, help="validation scenes (those with one object are skipped)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for path in args.models:
        measure(path, args.scenes)


if __name__ == "__main__":
    main()
