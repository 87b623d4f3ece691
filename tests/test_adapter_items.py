"""Every adapter kind answers the evaluation questions: a target's probability equals the model's own computation.

Each test edits the image (a darkened copy beside the original, one batch of two) and
compares ``adapter.probability`` with the probability computed directly from the model
and its tokenizer / processor, without the adapter's item code.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mmexplain as mx
from mmexplain.adapters import ClassifierAdapter, Item, ItemAdapter, as_item_adapter

from conftest import assert_unchanged, snapshot


@pytest.fixture(scope="module")
def scene():
    return mx.world.generate(mx.world.split_seeds("test", 3)[2])


def _edited(image: torch.Tensor) -> torch.Tensor:
    """(2, 3, H, W): the image and a darkened, noisier copy."""
    g = torch.Generator().manual_seed(0)
    other = (0.6 * image + 0.2 * torch.rand(image.shape, generator=g)).clamp(0, 1)
    return torch.stack([image, other])


def _caption_item(scene) -> Item:
    words = scene.caption.split()
    chosen = sorted(scene.alignment)
    return Item("caption", scene.image, [words[i] for i in chosen], caption=scene.caption, words=chosen)


def _answer_item(scene) -> Item:
    qa = next(q for q in scene.questions if q.objects)
    return Item("answer", scene.image, [qa.answer], question=qa.question, answer=qa.answer)


def test_zoo_classifier_probability_is_the_sigmoid_of_its_logit(scene):
    model = mx.zoo.load("classifier")
    adapter = as_item_adapter(model)
    assert isinstance(adapter, ItemAdapter) and adapter.capabilities == {"layer", "pixels", "picture", "image-gradient", "relu"}
    item = Item("class", scene.image, ["x", "y"], classes=[3, 7])
    images = _edited(adapter.display_image(adapter.load_image(scene.image)))
    before = snapshot(model)
    got = adapter.probability(images, item, 1)
    assert_unchanged(model, before)
    with torch.no_grad():
        want = torch.sigmoid(model(images)[:, 7])  # multi-label head
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, torch.softmax(model(images), -1)[:, 7].detach())


def test_torchvision_classifier_probability_is_the_softmax_of_normalised_pixels(scene):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).eval()
    adapter = ClassifierAdapter.torchvision(model, "resnet18", size=64)
    assert adapter.default_layer == "layer4" and "relu" in adapter.capabilities
    item = Item("class", scene.image, ["c2"], classes=[2])
    shown = adapter.display_image(adapter.load_image(scene.image))  # (3, 64, 64)
    images = _edited(shown)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        want = model((images - mean) / std).softmax(-1)[:, 2]
    torch.testing.assert_close(adapter.probability(images, item, 0), want, rtol=1e-5, atol=1e-6)


def test_zoo_captioner_probability_is_the_teacher_forced_word_probability(scene):
    model = mx.zoo.load("captioner")
    adapter = as_item_adapter(model)
    item = _caption_item(scene)
    images = _edited(scene.image)
    words = scene.caption.split()
    ids = [model.vocab.stoi[w] for w in words]
    tokens = torch.tensor([[model.vocab.bos, *ids]] * 2)  # (2, T+1)
    with torch.no_grad():
        logp = model(images, tokens).log_softmax(-1)  # (2, T+1, V)
    for k, i in enumerate(item.words):
        torch.testing.assert_close(adapter.probability(images, item, k), logp[:, i, ids[i]].exp())


def test_zoo_vqa_probability_is_the_softmax_of_the_answer(scene):
    model = mx.zoo.load("vqa")
    adapter = as_item_adapter(model)
    item = _answer_item(scene)
    images = _edited(scene.image)
    with torch.no_grad():
        want = model(images, model.encode_question(item.question)[None].expand(2, -1)).softmax(-1)
    torch.testing.assert_close(adapter.probability(images, item, 0), want[:, model.answers.index(item.answer)])


def test_tiny_ved_probability_sums_the_word_tokens(scene):
    adapter = mx.zoo.load("tiny-ved")
    assert adapter.capabilities == {"layer", "pixels", "picture", "image-gradient", "attention"}
    item = _caption_item(scene)
    images = _edited(adapter.display_image(adapter.load_image(scene.image)))
    processor, tokenizer = adapter.image_processor, adapter.tokenizer
    pixel_values = processor(images=list(images), return_tensors="pt", do_rescale=False)["pixel_values"]
    words = scene.caption.split()
    start = adapter.model.config.decoder_start_token_id
    per_word = [tokenizer(w if i == 0 else " " + w, add_special_tokens=False)["input_ids"] for i, w in enumerate(words)]
    ids = [t for p in per_word for t in p]
    decoder = torch.tensor([[start, *ids]] * 2)
    with torch.no_grad():
        logp = adapter.model(pixel_values=pixel_values, decoder_input_ids=decoder).logits.log_softmax(-1)
    offsets = [sum(len(p) for p in per_word[:i]) for i in range(len(words))]
    for k, i in enumerate(item.words):
        want = sum(logp[:, offsets[i] + j, t] for j, t in enumerate(per_word[i])).exp()
        torch.testing.assert_close(adapter.probability(images, item, k), want, rtol=1e-4, atol=1e-6)


def test_tiny_vilt_probability_is_the_sigmoid_of_the_answer_logit(scene):
    adapter = mx.zoo.load("tiny-vilt")
    item = _answer_item(scene)
    images = _edited(adapter.display_image(adapter.load_image(scene.image)))
    processor = adapter.image_processor
    pixel_values = processor(images=list(images), return_tensors="pt", do_rescale=False)["pixel_values"]
    text = adapter.tokenizer([item.question] * 2, return_tensors="pt")
    with torch.no_grad():
        logits = adapter.hf_model(pixel_values=pixel_values, input_ids=text["input_ids"],
                                  attention_mask=text["attention_mask"],
                                  token_type_ids=torch.zeros_like(text["input_ids"])).logits
    index = adapter.hf_model.config.label2id[item.answer]
    torch.testing.assert_close(adapter.probability(images, item, 0), logits[:, index].sigmoid(), rtol=1e-4, atol=1e-6)


def test_tiny_vlm_probability_reads_the_words_after_the_chat_prompt(scene):
    adapter = mx.zoo.load("tiny-vlm")
    assert {"layer", "lm", "pixels", "picture", "attention"} <= adapter.capabilities  # attention: the LM's, for relevancy
    item = _caption_item(scene)
    images = _edited(adapter.display_image(adapter.load_image(scene.image)))
    processor, tokenizer = adapter.processor, adapter.tokenizer
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": adapter.prompt}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    words = scene.caption.split()
    enc = processor(text=[prompt + " " + scene.caption] * 2, images=list(images), return_tensors="pt", do_rescale=False)
    n_prompt = processor(text=prompt, images=[images[0]], return_tensors="pt", do_rescale=False)["input_ids"].shape[1]
    ids = enc["input_ids"][0, n_prompt:].tolist()
    pieces = tokenizer.convert_ids_to_tokens(ids)
    groups: list[list[int]] = []  # byte-level BPE: a piece starting with the space mark starts a word
    for j, piece in enumerate(pieces):
        if piece.startswith("\u0120") or not groups:
            groups.append([])
        groups[-1].append(j)
    assert ["".join(pieces[j] for j in g).replace("\u0120", "") for g in groups] == words
    assert any(len(g) > 1 for g in groups)  # some words really are several tokens
    with torch.no_grad():
        logp = adapter.hf_model(**enc).logits.log_softmax(-1)  # (2, L, V)
    for k, i in enumerate(item.words):
        want = sum(logp[:, n_prompt - 1 + j, ids[j]] for j in groups[i]).exp()  # every token of the word
        torch.testing.assert_close(adapter.probability(images, item, k), want, rtol=1e-4, atol=1e-6)


def test_item_of_another_kind_is_refused_by_name(scene):
    adapter = as_item_adapter(mx.zoo.load("captioner"))
    with pytest.raises(ValueError, match="item: .* caption items, not 'answer'"):
        adapter.probability(scene.image[None], _answer_item(scene), 0)
    with pytest.raises(TypeError, match="model: expected"):
        as_item_adapter("captioner")


def test_plain_module_is_a_classifier_adapter_with_tensor_inputs():
    class Plain(nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3))  # (B, 3) logits

    adapter = as_item_adapter(Plain())
    assert isinstance(adapter, ClassifierAdapter) and adapter.default_layer is None
    x = torch.tensor([[[[0.0]], [[1.0]], [[2.0]]]])  # (1, 3, 1, 1), outside [0, 1]: used as it is
    assert torch.equal(adapter.load_image(x), x)
    item = Item("class", x[0], ["1"], classes=[1])
    want = torch.tensor([0.0, 1.0, 2.0]).softmax(-1)[1]
    torch.testing.assert_close(adapter.probability(x, item, 0), want[None])
