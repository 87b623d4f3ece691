"""The shipped tiny VLMs (models/tiny-llava, models/tiny-qwen2vl): offline loading from a copied folder,
a byte-level BPE tokenizer whose words split, Qwen2-VL patches laid out as the processor does, and per-word
Grad-CAM maps equal to a reference written here by hand: the processor's own prompt + the caption's tokens
(every token of a word, a lone leading-space token included), our own forward hook at the vision layer the
LM reads, torch.autograd.grad of the word's summed log-probability, channel weights = the gradient's mean
over the patch tokens, ReLU(A alpha) laid on the patch grid by hand (LLaVA: CLS dropped, row-major; Qwen2-VL:
2 x 2 merge blocks in order)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

import mmexplain as mx  # noqa: E402
from mmexplain.training import tiny_vlms as T  # noqa: E402
from mmexplain.training.tiny_hf import pixels  # noqa: E402
from mmexplain.zoo import shapeworld_bpe, tiny_vlms  # noqa: E402

MODELS = Path(__file__).resolve().parents[1] / "models"
NAMES = [pytest.param(n, marks=pytest.mark.skipif(not (MODELS / n / "model.safetensors").is_file(),
                                                   reason=f"models/{n} is not trained yet")) for n in tiny_vlms.NAMES]
SITES = {"tiny-llava": "model.vision_tower.encoder.layers.{read}", "tiny-qwen2vl": "model.visual.blocks.{last}"}


@pytest.fixture(scope="module", params=NAMES)
def copied(request, tmp_path_factory):
    """(name, the adapter loaded offline from a copy of the shipped folder)."""
    name = request.param
    folder = tmp_path_factory.mktemp(name) / "copy"
    shutil.copytree(MODELS / name, folder)
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("TRANSFORMERS_OFFLINE", "1")
    try:
        vlm = mx.zoo.load(name, folder)
    finally:
        mp.undo()
    return name, vlm


def hand_grid(name, config, values):
    """Token values (L,) of the site -> (g, g) patch grid, by hand from the config."""
    if name == "tiny-llava":
        g = config.vision_config.image_size // config.vision_config.patch_size
        assert values.shape == (g * g + 1,)
        return values[1:].reshape(g, g)  # CLS first, then patches row-major
    g = 96 // config.vision_config.patch_size
    m = config.vision_config.spatial_merge_size
    out = torch.empty(g, g)
    k = 0
    for bh in range(g // m):  # merge blocks row-major, the m x m patches of each block together
        for bw in range(g // m):
            for i in range(m):
                for j in range(m):
                    out[bh * m + i, bw * m + j] = values[k]
                    k += 1
    return out


def reference(vlm, name, image, words):
    """Per word: (summed log-probability, Grad-CAM grid) by hand (see the module docstring)."""
    model, processor, tok = vlm.hf_model, vlm.processor, vlm.processor.tokenizer
    turn = [{"type": "image"}, {"type": "text", "text": "describe the image"}]
    chat = processor.apply_chat_template([{"role": "user", "content": turn}], add_generation_prompt=True, tokenize=False)
    pieces = [tok(w, add_special_tokens=False).input_ids for w in words]
    enc = processor(text=chat + " " + " ".join(words), images=image, return_tensors="pt", do_rescale=False)
    ids = enc["input_ids"][0]
    n = sum(len(p) for p in pieces)
    assert ids[-n:].tolist() == [t for p in pieces for t in p]  # the caption's tokens end the sequence
    layers = model.config.vision_config.num_hidden_layers if name == "tiny-llava" else model.config.vision_config.depth
    site = model.get_submodule(SITES[name].format(read=layers - 2, last=layers - 1))
    out = []
    start = len(ids) - n
    for p in pieces:
        store = {}
        handle = site.register_forward_hook(
            lambda m, a, o: store.__setitem__("act", o[0] if isinstance(o, tuple) else o))
        try:
            with torch.enable_grad():
                logp = model(**enc).logits[0].log_softmax(-1)  # (L, V)
        finally:
            handle.remove()
        score = sum(logp[start + k - 1, t] for k, t in enumerate(p))
        (grad,) = torch.autograd.grad(score, store["act"])
        act, grad = store["act"].detach().reshape(-1, act_dim(store)), grad.reshape(-1, act_dim(store))  # (L, D)
        patches = slice(1, None) if name == "tiny-llava" else slice(None)
        alpha = grad[patches].mean(0)  # (D,)
        out.append((score.detach(), hand_grid(name, model.config, F.relu(act @ alpha))))
        start += len(p)
    return out


def act_dim(store):
    return store["act"].shape[-1]


def test_qwen_patches_match_the_processor():
    _, processor = tiny_vlms.new_parts("tiny-qwen2vl")
    images = (torch.rand(2, 3, 96, 96) * 255).round().to(torch.uint8)
    enc = processor.image_processor(images=[i.float() / 255 for i in images], return_tensors="pt", do_rescale=False)
    p = processor.image_processor.patch_size
    assert torch.allclose(T.qwen_patches(pixels(images), patch=p), enc["pixel_values"], atol=1e-6)
    assert enc["image_grid_thw"].tolist() == [[1, 96 // p, 96 // p]] * 2


@pytest.mark.parametrize("name", tiny_vlms.NAMES)
def test_a_dialogue_is_the_chat_template_of_the_conversation(name):
    """A scene's questions as turns: the ids read as the chat template renders the conversation (the image once,
    in the first turn), and only the answers (each with its ``</s>``) carry labels."""
    _, processor = tiny_vlms.new_parts(name)
    rows = [[0, "what color is the circle?", "red", "color"], [0, "how many squares are there?", "two", "count"]]
    data = T.Batches(name, processor, torch.zeros(1, 3, 96, 96, dtype=torch.uint8), rows)
    ids, labels = data.dialogue([0, 1])
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": rows[0][1]}]},
                {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
                {"role": "user", "content": [{"type": "text", "text": rows[1][1]}]}]
    rendered = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    image = processor.tokenizer.convert_tokens_to_ids(IMAGE[name])
    text = processor.tokenizer.decode([i for i in ids if i != image])
    eos = processor.tokenizer.eos_token
    assert " ".join(text.replace(eos, " ").split()) == " ".join(f"{rendered} two".replace(IMAGE[name], "").split())
    assert processor.tokenizer.decode([t for t in labels if t != -100]).split() == ["red" + eos, "two" + eos]
    batch = data.text([[0, 1], [1]])
    assert batch["input_ids"].shape[0] == 2 and int(batch["attention_mask"][1].sum()) < len(ids)


IMAGE = {"tiny-llava": "<image>", "tiny-qwen2vl": "<|image_pad|>"}


@pytest.mark.parametrize("turns", [-1, 2.5, True, "4"])
def test_a_bad_number_of_turns_is_refused_by_name(turns):
    with pytest.raises(ValueError, match=r"^turns: expected an int >= 0"):
        T.Recipe(turns=turns)


@pytest.mark.parametrize("listing", [1.5, -0.1, True, "0.5"])
def test_a_bad_listing_share_is_refused_by_name(listing):
    with pytest.raises(ValueError, match=r"^listing: expected a share between 0 and 1"):
        T.Recipe(turns=4, listing=listing)
    with pytest.raises(ValueError, match=r"^listing: replaces caption examples .* need turns > 0"):
        T.Recipe(turns=0, listing=0.5)


def test_shape_first_lists_the_objects_by_shape():
    """Shapes in world.SHAPES order (circle, square, triangle, diamond); two of a shape stay left to right."""
    caption = "a small red diamond left of a large blue circle left of a small red circle"
    assert T.shape_first(caption) == "circle large blue circle small red diamond small red"
    assert T.shape_first("a large purple square") == "square large purple"


def test_sincos_positions_by_hand():
    """tiny-llava's CLIP positions start as MAE's 2-D sine-cosine table: CLS zero; for the patch at (row y,
    column x), channels [sin(y f), cos(y f), sin(x f), cos(x f)] with f_k = 10000^(-k / (D/4)), times 0.2."""
    model, _ = tiny_vlms.new_parts("tiny-llava")
    T.sincos_positions(model)
    weight = model.model.vision_tower.embeddings.position_embedding.weight.detach()  # (1 + 6 * 6, 96)
    assert weight.shape == (37, 96) and float(weight[0].abs().max()) == 0
    f = 10000.0 ** (-torch.arange(24) / 24)
    for y, x in [(0, 0), (0, 5), (3, 1), (5, 5)]:
        expected = 0.2 * torch.cat([torch.sin(y * f), torch.cos(y * f), torch.sin(x * f), torch.cos(x * f)])
        torch.testing.assert_close(weight[1 + 6 * y + x], expected)


@pytest.mark.parametrize("name", NAMES)
def test_shipped_models_came_from_their_recipe(name):
    """`mmexplain train NAME` reproduces the shipped model: the recipe and architecture it recorded are the command's."""
    import dataclasses
    import json

    recorded = json.loads((MODELS / name / "metrics.json").read_text())["training"]["recipe"]
    expected = dataclasses.asdict(T.recipe_for(name))
    defaults = dataclasses.asdict(T.Recipe())  # a field added later: its default is what the older run did
    assert set(recorded) <= set(expected)
    recorded = {**{k: defaults[k] for k in expected if k not in recorded}, **recorded}
    assert {k: list(v) if isinstance(v, tuple) else v for k, v in expected.items()} == {
        k: list(v) if isinstance(v, tuple) else v for k, v in recorded.items()}
    assert T.recipe_for("tiny-vlm") == T.recipe_for("tiny-llava")
    architecture = json.loads((MODELS / name / "metrics.json").read_text())["training"]["architecture"]
    assert architecture == dataclasses.asdict(tiny_vlms.SPECS[name])  # the command builds the shipped architecture


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2vl"])
def test_shipped_cards_name_the_listing_of_their_recipe(name):
    """The card's stage labels say whether the language stages learned the shape-first listing."""
    card = (MODELS / name / "CARD.md").read_text()
    listing = T.recipe_for(name).listing
    assert ("listed shape first" in card) == bool(listing)
    if listing:
        assert f"{listing:.0%} of their examples replaced by the objects listed shape first" in card


def test_slot_and_count_targets_read_the_caption():
    slots = T.slot_targets("a small red diamond left of a large blue circle left of a small red circle")
    assert slots == [[1, 0, 0, 3], [1, 1, 2, 0], [1, 0, 0, 0]]
    two = T.slot_targets("a small red diamond left of a large blue circle")
    assert two == [[1, 0, 0, 3], [1, 1, 2, 0], [0, -100, -100, -100]]
    # sizes (small, large), colours (red, green, blue, yellow, purple), shapes (circle, square, triangle, diamond)
    assert T.count_targets(torch.tensor([slots, two])).tolist() == [[2, 1, 2, 0, 1, 0, 0, 2, 0, 0, 1],
                                                                    [1, 1, 1, 0, 1, 0, 0, 1, 0, 0, 1]]


def test_loads_offline_and_words_split(copied):
    name, vlm = copied
    assert type(vlm.hf_model).__name__ == tiny_vlms.CLASSES[name] and type(vlm) is mx.hf.ImageTextToText
    files = {p.name for p in (MODELS / name).iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja", "CARD.md"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    assert (MODELS / name / "model.safetensors").stat().st_size < 8e6
    tok = vlm.tokenizer
    assert tok.backend_tokenizer.model.__class__.__name__ == "BPE"
    content = [*mx.world.SIZES, *mx.world.COLORS, *mx.world.SHAPES]
    split = shapeworld_bpe.split_words(tok, content)
    assert len(split) >= 2, split  # some content words are several tokens
    scene = mx.world.generate(mx.world.split_seeds("test", 1)[0])
    pixels = vlm.load_image(scene.image)
    said = vlm.generate(pixels)
    assert said and said == mx.zoo.load(name, MODELS / name).generate(pixels)
    if name == "tiny-llava":
        assert mx.zoo.load("tiny-vlm").hf_model.config.to_dict() == mx.zoo.load("tiny-llava").hf_model.config.to_dict()


def test_word_maps_equal_the_hand_reference(copied):
    name, vlm = copied
    scene = mx.world.generate(mx.world.split_seeds("test", 2)[1])
    words = scene.caption.split()
    ex = mx.explain_caption(vlm, scene.image, scene.caption)
    ref = reference(vlm, name, scene.image, words)
    lone = [i for i, w in enumerate(words) if vlm.tokenizer.tokenize(" " + w)[0] == "Ġ"]
    compared = 0
    for i, (score, grid) in enumerate(ref):
        if i in lone:
            continue
        assert torch.allclose(ex.logprobs[i], score, atol=1e-4), (name, words[i])
        assert torch.allclose(ex.result.raw[i, 0], grid, atol=1e-5, rtol=1e-4), (name, words[i])
        compared += int(grid.amax() > 0)
    assert compared >= 3  # non-zero maps compared (a word's map may be all zero after the ReLU)


def test_words_with_a_lone_space_token_equal_the_hand_reference(copied):
    name, vlm = copied
    scene = mx.world.generate(mx.world.split_seeds("test", 2)[1])
    words = scene.caption.split()
    lone = [i for i, w in enumerate(words) if vlm.tokenizer.tokenize(" " + w)[0] == "Ġ"]
    assert lone  # "left" (and "red") begin with a lone "Ġ"
    ex = mx.explain_caption(vlm, scene.image, scene.caption)
    ref = reference(vlm, name, scene.image, words)
    for i in lone:
        assert torch.allclose(ex.logprobs[i], ref[i][0], atol=1e-4), (name, words[i])
        assert torch.allclose(ex.result.raw[i, 0], ref[i][1], atol=1e-5, rtol=1e-4), (name, words[i])
