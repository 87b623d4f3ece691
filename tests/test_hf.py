"""mmexplain.hf on tiny random transformers models (ModelTester pattern: hidden 32, 2 layers,
32-48 px images), built locally with a word-level/WordPiece tokenizer: nothing downloads.

Checks per architecture: shapes, finiteness, non-zero maps; word scores against the
model's own log-softmax and its own training loss; the per-word identity (ReLU of the
summed pre-ReLU word maps == the whole-caption map); the image map against a direct
autograd reference computed here (forward hook + torch.autograd.grad by hand); the model
untouched after a call (weights, flags, requires_grad, grads, hooks), also after an error;
images read through the one loader (the processor's own 8-bit path as the reference);
the ViLT patch grid computed per call; ``AnswerQuery`` holding data only.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

import mmexplain as mx  # noqa: E402
from mmexplain.adapters import hf  # noqa: E402
from mmexplain.adapters.grids import conv_grid  # noqa: E402
from mmexplain.adapters.hf.common import pixels_of  # noqa: E402
from mmexplain.adapters.protocols import AnswerAdapter, AnswerQuery, CaptionAdapter  # noqa: E402

WORDS = "a red blue green circle square left of what color is the shape yes no small large ?".split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[DEC]", "[BOS]", "[EOS]"]
SUBWORDS = ["tri", "##ang", "##le", "dia", "##mond"]  # "triangle" -> 3 tokens, "diamond" -> 2


def make_tokenizer():
    """WordPiece over whole words plus a few sub-words; [CLS] q [SEP] template like BERT."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS + SUBWORDS)}
    tk = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.decoder = decoders.WordPiece(prefix="##")
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", bos_token="[BOS]", eos_token="[EOS]")


TOK = make_tokenizer()
V = len(TOK)
CAPTION = "a red triangle left of a blue diamond".split()  # sub-words in two of the words


def blip_config():
    from transformers import BlipConfig

    text = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                max_position_embeddings=32, bos_token_id=TOK.convert_tokens_to_ids("[DEC]"), pad_token_id=0,
                sep_token_id=TOK.sep_token_id, eos_token_id=TOK.sep_token_id)
    vision = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                  image_size=32, patch_size=8)
    return BlipConfig(text_config=text, vision_config=vision, projection_dim=32)


@pytest.fixture(scope="module")
def blip_captioner():
    from transformers import BlipForConditionalGeneration, BlipImageProcessor

    torch.manual_seed(0)
    model = BlipForConditionalGeneration(blip_config()).eval()
    return hf.caption_adapter(model, image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                              tokenizer=TOK, max_new_tokens=5)


@pytest.fixture(scope="module")
def ved_captioner():
    from transformers import (GPT2Config, ViTConfig, ViTImageProcessor, VisionEncoderDecoderConfig,
                              VisionEncoderDecoderModel)

    torch.manual_seed(1)
    enc = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=37)
    dec = GPT2Config(vocab_size=V, n_positions=32, n_embd=32, n_layer=2, n_head=4, bos_token_id=TOK.bos_token_id,
                     eos_token_id=TOK.eos_token_id, pad_token_id=0)
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = TOK.bos_token_id, 0, TOK.eos_token_id
    model = VisionEncoderDecoderModel(config=config).eval()
    gen = model.generation_config
    gen.decoder_start_token_id, gen.pad_token_id, gen.eos_token_id = TOK.bos_token_id, 0, TOK.eos_token_id
    return hf.caption_adapter(model, image_processor=ViTImageProcessor(size={"height": 32, "width": 32}),
                              tokenizer=TOK, max_new_tokens=5)


@pytest.fixture(scope="module")
def blip_vqa():
    from transformers import BlipForQuestionAnswering, BlipImageProcessor

    torch.manual_seed(2)
    model = BlipForQuestionAnswering(blip_config()).eval()
    return hf.answer_adapter(model, image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                             tokenizer=TOK, max_new_tokens=4)


ANSWERS = ["red", "blue", "green", "yes", "no", "triangle"]


@pytest.fixture(scope="module")
def vilt_vqa():
    from transformers import ViltConfig, ViltForQuestionAnswering, ViltImageProcessor

    torch.manual_seed(3)
    config = ViltConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, image_size=32, patch_size=8, max_position_embeddings=32,
                        num_labels=len(ANSWERS), id2label=dict(enumerate(ANSWERS)),
                        label2id={a: i for i, a in enumerate(ANSWERS)})
    model = ViltForQuestionAnswering(config).eval()
    processor = ViltImageProcessor(size={"shortest_edge": 32}, size_divisor=8)
    return hf.answer_adapter(model, image_processor=processor, tokenizer=TOK)


def image(h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))  # (3, H, W) in [0, 1]


# ----------------------------------------------------------------------------- helpers


def snapshot(model: torch.nn.Module) -> dict:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "training": {n: m.training for n, m in model.named_modules()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
    }


def assert_untouched(model: torch.nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert before["state"].keys() == after["state"].keys()
    assert all(torch.equal(before["state"][k], after["state"][k]) for k in before["state"])
    assert all(p.grad is None for p in model.parameters())
    for name, m in model.named_modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks, name


def word_targets(spans):
    return [mx.targets.SequenceLogProb(tokens, positions=positions) for positions, tokens in spans]


def reference_cam(model, layer_name, inputs, score_fn, grid, size):
    """Grad-CAM by hand: hook the layer, autograd.grad of the score, drop the prefix tokens."""
    store = {}

    def hook(module, args, output):
        out = output[0] if isinstance(output, tuple) else output
        store["act"] = out
        return None

    handle = model.get_submodule(layer_name).register_forward_hook(hook)
    try:
        output = model(**inputs)
    finally:
        handle.remove()
    score = score_fn(output)
    (grad,) = torch.autograd.grad(score, store["act"])
    h, w = grid
    act = store["act"][0, -h * w:].T.reshape(-1, h, w)  # (D, h, w)
    g = grad[0, -h * w:].T.reshape(-1, h, w)  # (D, h, w)
    alpha = g.mean(dim=(1, 2))  # (D,)
    raw = F.relu((alpha[:, None, None] * act).sum(0))  # (h, w)
    up = F.interpolate(raw[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    up = (up - up.min()) / (up.max() - up.min())
    return score.detach(), raw.detach(), up.detach()


# ----------------------------------------------------------------------------- units


def test_patch_grid_reads_the_last_tokens_row_major():
    tokens = torch.arange(2 * 7 * 3.0).reshape(2, 7, 3)  # (B, 1 + 6, D)
    grid = hf.PatchGrid((2, 3))(tokens)  # (B, D, 2, 3)
    assert grid.shape == (2, 3, 2, 3)
    assert torch.equal(grid[1, :, 1, 0], tokens[1, 1 + 3])  # row 1, col 0 = patch 3
    assert hf.PatchGrid()(torch.zeros(4, 17, 5)).shape == (4, 5, 4, 4)  # CLS + 4x4 inferred
    assert hf.PatchGrid()(torch.zeros(3, 2, 18, 5)).shape == (3, 2, 5, 4, 4)  # CLS + distillation, leading dims
    with pytest.raises(ValueError, match="square"):
        hf.PatchGrid()(torch.zeros(1, 7, 5))
    with pytest.raises(ValueError, match="needs 9 tokens"):
        hf.PatchGrid((3, 3))(torch.zeros(1, 5, 2))
    with pytest.raises(ValueError, match="grid"):
        hf.PatchGrid((0, 3))
    # the grid a patch convolution makes of an image: the formula against the convolution itself
    for conv in (torch.nn.Conv2d(3, 2, 8, stride=8), torch.nn.Conv2d(3, 2, 7, stride=4, padding=3)):
        for size in ((32, 48), (37, 21)):
            assert conv_grid(conv, size) == tuple(conv(torch.zeros(1, 3, *size)).shape[-2:]), (conv, size)
    with pytest.raises(TypeError, match="conv"):
        conv_grid(torch.nn.Linear(2, 2), (8, 8))


def test_tokenize_words_merges_subwords_and_skips_specials():
    ids, groups = hf.tokenize_words(TOK, CAPTION)
    assert TOK.convert_ids_to_tokens(ids) == ["a", "red", "tri", "##ang", "##le", "left", "of", "a", "blue",
                                              "dia", "##mond"]
    assert groups == [[0], [1], [2, 3, 4], [5], [6], [7], [8], [9, 10]]
    ids, groups = hf.tokenize_words(TOK, ["what", "color", "is", "the", "triangle", "?"], add_special_tokens=True)
    assert ids[0] == TOK.cls_token_id and ids[-1] == TOK.sep_token_id
    assert groups == [[1], [2], [3], [4], [5, 6, 7], [8]]
    with pytest.raises(ValueError, match="words"):
        hf.tokenize_words(TOK, ["two words"])


def test_adapter_dispatch_and_argument_errors(blip_captioner, vilt_vqa):
    with pytest.raises(TypeError, match="no caption adapter for Linear"):
        hf.caption_adapter(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="no VQA adapter"):
        hf.answer_adapter(blip_captioner.model)
    with pytest.raises(TypeError, match="no adapter for Linear"):
        hf.adapter(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="image_processor"):
        hf.caption_adapter(blip_captioner.model, tokenizer=TOK)
    with pytest.raises(ValueError, match="unknown word 'octagon'"):
        blip_captioner.split_words("a red octagon")
    # mx.hf.adapter picks the role from the model class
    pieces = {"image_processor": blip_captioner.image_processor, "tokenizer": TOK}
    assert type(hf.adapter(blip_captioner.model, **pieces)) is hf.BlipCaptioner
    assert type(hf.adapter(vilt_vqa.hf_model, image_processor=vilt_vqa.image_processor, tokenizer=TOK)) is hf.ViltVQA
    assert isinstance(blip_captioner, CaptionAdapter) and not isinstance(blip_captioner, AnswerAdapter)
    assert isinstance(vilt_vqa, AnswerAdapter) and not isinstance(vilt_vqa, CaptionAdapter)
    assert mx.adapters.as_caption_adapter(blip_captioner) is blip_captioner
    assert mx.adapters.as_answer_adapter(vilt_vqa) is vilt_vqa


def test_load_and_display_image_round_trip(ved_captioner):
    img = image(40, 40)
    pixels = ved_captioner.load_image(img)  # resized to 32x32, normalized
    assert pixels.shape == (1, 3, 32, 32)
    shown = ved_captioner.display_image(pixels)
    expected = F.interpolate(img[None], size=(32, 32), mode="bilinear", antialias=True, align_corners=False)[0]
    assert shown.shape == (3, 32, 32)
    assert (shown - expected).abs().mean() < 0.03
    assert torch.allclose(ved_captioner.load_image((img * 255).round().to(torch.uint8)), pixels, atol=0.02)
    with pytest.raises(ValueError, match=r"image: a float image must lie in \[0, 1\]"):
        ved_captioner.load_image(img * 3)  # the loader's own error, naming the argument


PROCESSORS = {
    "vit bilinear": lambda: __import__("transformers").ViTImageProcessor(size={"height": 32, "width": 32}),
    "blip bicubic": lambda: __import__("transformers").BlipImageProcessor(size={"height": 32, "width": 32}),
    "vilt bicubic": lambda: __import__("transformers").ViltImageProcessor(size={"shortest_edge": 32}, size_divisor=8),
}


@pytest.mark.parametrize("name", sorted(PROCESSORS))
def test_images_reach_the_processor_through_the_one_loader(name, tmp_path):
    """PIL image / path / uint8 array: the loader's floats with do_rescale=False == the processor's own 8-bit path.

    The reference is what the adapters did before reading through ``load_image``: the
    processor given the 8-bit image itself (``do_rescale=True``). Equal within 1e-6 when
    the image is already at the processor's size (the shipped models' 64 x 64 scenes);
    when the processor resizes, its 8-bit path rounds the resampled pixels to 1/255
    (and bicubic clamps each pass to [0, 255]), so only the bilinear case is bounded by
    one grey level there.
    """
    from PIL import Image

    processor = PROCESSORS[name]()
    rng = np.random.default_rng(0)
    at_size = rng.integers(0, 256, size=(32, 40 if name.startswith("vilt") else 32, 3), dtype=np.uint8)
    resized = rng.integers(0, 256, size=(45, 61, 3), dtype=np.uint8)
    std = torch.tensor(processor.image_std)[:, None, None]  # (3, 1, 1): normalized units -> grey levels
    for array, tol in [(at_size, 1e-6), (resized, 1 / 255 if name.startswith("vit") else None)]:
        Image.fromarray(array).save(tmp_path / "x.png")
        reference = processor(images=Image.fromarray(array), return_tensors="pt")["pixel_values"]  # (1, 3, h, w)
        for source in (Image.fromarray(array), tmp_path / "x.png", str(tmp_path / "x.png"), array):
            ours = pixels_of(processor, source)["pixel_values"]
            assert ours.shape == reference.shape, (type(source), ours.shape, reference.shape)
            if tol is not None:
                gap = float(((ours - reference) * std).abs().max())  # in [0, 1] pixel units
                assert gap <= tol + 1e-6, (type(source).__name__, gap)
    floats = torch.from_numpy(at_size).permute(2, 0, 1).float() / 255  # (3, H, W)
    assert torch.allclose(pixels_of(processor, floats)["pixel_values"],
                          processor(images=Image.fromarray(at_size), return_tensors="pt")["pixel_values"], atol=1e-6)


def test_teacher_forced_copies_repeat_the_text_rows(blip_captioner, ved_captioner):
    for captioner in (blip_captioner, ved_captioner):
        pixels = captioner.load_image(image())
        one, spans = captioner.teacher_forced(pixels, CAPTION)
        three, spans3 = captioner.teacher_forced(pixels, CAPTION, copies=3)
        assert spans3 == spans and captioner.targets_in_batch is False
        assert three["pixel_values"] is pixels  # one image row: the engine copies the layer's activation
        for key in set(one) - {"pixel_values"}:
            assert three[key].shape == (3, one[key].shape[1])
            assert torch.equal(three[key], one[key].expand(3, -1)), key
        with pytest.raises(ValueError, match="copies"):
            captioner.teacher_forced(pixels, CAPTION, copies=0)
    # the copies serve GradCAM(targets_in_batch=True): the same maps as the batched backward
    pixels = ved_captioner.load_image(image())
    inputs, spans = ved_captioner.teacher_forced(pixels, CAPTION)
    copies, _ = ved_captioner.teacher_forced(pixels, CAPTION, copies=len(spans))
    cam = mx.GradCAM(ved_captioner.model, ved_captioner.default_layer, reshape=ved_captioner.reshape_for(pixels))
    batched = cam(inputs, word_targets(spans))
    in_batch = cam(copies, word_targets(spans), targets_in_batch=True)
    assert torch.allclose(in_batch.scores, batched.scores, atol=1e-5)
    assert torch.allclose(in_batch.raw, batched.raw, atol=1e-5)


# ----------------------------------------------------------------------------- captioners


@pytest.mark.parametrize("name", ["blip_captioner", "ved_captioner"])
def test_caption_words_scores_and_maps(name, request):
    captioner = request.getfixturevalue(name)
    model = captioner.model
    before = snapshot(model)
    pixels = captioner.load_image(image())
    words = captioner.generate(pixels)
    start = TOK.convert_ids_to_tokens(captioner.start_token_id)  # BLIP's [DEC] is no special token of TOK
    assert start not in words and all(isinstance(w, str) and w.split() == [w] for w in words)
    inputs, spans = captioner.teacher_forced(pixels, CAPTION)
    assert [len(p) for p, _ in spans] == [1, 1, 3, 1, 1, 1, 1, 2]  # sub-words merged per word

    # word scores == log-softmax of the model's own logits, and their sum == -(HF loss) * n_tokens
    with torch.no_grad():
        logits = model(**inputs).logits[0]  # (1+n, V)
        ids = [t for _, toks in spans for t in toks]
        labels_key = "input_ids" if "input_ids" in inputs else "decoder_input_ids"
        labels = inputs[labels_key] if labels_key == "input_ids" else torch.tensor([ids])
        hf_inputs = {k: v for k, v in inputs.items() if k != "decoder_input_ids" and k != "decoder_attention_mask"}
        loss = model(**hf_inputs, labels=labels).loss
    logp = logits.log_softmax(-1)
    by_hand = torch.stack([sum(logp[p, t] for p, t in zip(pos, toks)) for pos, toks in spans])

    cam = mx.GradCAM(model, captioner.default_layer, reshape=captioner.reshape_for(pixels))
    assert captioner.reshape_for(pixels).grid == (4, 4)  # from the patch convolution, not guessed
    res = cam(inputs, word_targets(spans))
    assert torch.allclose(res.scores[:, 0], by_hand, atol=1e-5)
    assert torch.allclose(res.scores.sum(), -loss * len(ids), atol=1e-4)
    assert res.maps.shape == (len(CAPTION), 1, 32, 32) and res.raw.shape == (len(CAPTION), 1, 4, 4)
    assert torch.isfinite(res.maps).all() and torch.isfinite(res.pre_relu).all()
    assert (res.maps.amax(dim=(-2, -1)) > 0).sum() >= len(CAPTION) // 2
    assert res.weights.shape == (len(CAPTION), 1, 32)

    # per-word identity: ReLU(sum of word pre-ReLU maps) == the whole caption's map
    whole = cam(inputs, mx.targets.SequenceLogProb(ids, positions=[p for pos, _ in spans for p in pos]))
    assert torch.allclose(F.relu(res.pre_relu.sum(0)), whole.raw, atol=1e-5)
    assert torch.allclose(whole.scores, res.scores.sum(0), atol=1e-5)

    # the image map against autograd by hand (word 2: three sub-word tokens)
    pos, toks = spans[2]
    score, raw, up = reference_cam(model, captioner.default_layer, inputs,
                                   lambda out: sum(out.logits[0, p].log_softmax(-1)[t] for p, t in zip(pos, toks)),
                                   (4, 4), (32, 32))
    assert torch.allclose(res.scores[2, 0], score, atol=1e-5)
    assert torch.allclose(res.raw[2, 0], raw, atol=1e-5)
    assert torch.allclose(res.maps[2, 0], up, atol=1e-4)
    assert_untouched(model, before)


def test_explain_caption_on_hf_models(blip_captioner, ved_captioner):
    for captioner in (blip_captioner, ved_captioner):
        before = snapshot(captioner.model)
        ex = mx.explain_caption(captioner, image(48, 40), " ".join(CAPTION))
        assert ex.words == CAPTION
        assert ex.maps.shape == (len(CAPTION), 32, 32) and ex.image.shape == (3, 32, 32)
        assert torch.isfinite(ex.maps).all() and torch.isfinite(ex.logprobs).all()
        assert (ex.logprobs < 0).all()
        assert_untouched(captioner.model, before)
    # Guided Grad-CAM through the adapter == mx.GuidedGradCAM on the same inputs
    ex = mx.explain_caption(ved_captioner, image(), " ".join(CAPTION[:3]), method="guided")
    pixels = ved_captioner.load_image(image())
    inputs, spans = ved_captioner.teacher_forced(pixels, CAPTION[:3])
    ggc = mx.GuidedGradCAM(ved_captioner.model, ved_captioner.default_layer, reshape=ved_captioner.reshape_for(pixels))
    assert torch.allclose(ex.guided, ggc(inputs, word_targets(spans)).pixels[:, 0], atol=1e-6, rtol=1e-4)


# ----------------------------------------------------------------------------- VQA


def test_blip_vqa_answer_map_and_question_tokens(blip_vqa):
    hf_model = blip_vqa.hf_model
    before = snapshot(hf_model)
    pixels = blip_vqa.load_image(image())
    question = "what color is the triangle ?"
    query = blip_vqa.query(pixels, question, "blue triangle", 1)
    assert query.question_tokens == ["what", "color", "is", "the", "tri", "##ang", "##le", "?"]
    assert query.token_positions == list(range(1, 9))  # [CLS] at 0 and [SEP] at 9 excluded

    cam = mx.GradCAM(blip_vqa.model, blip_vqa.default_layer, reshape=blip_vqa.reshape_for(pixels))
    res = cam(query.inputs, query.targets[0], extra_layers={"q": blip_vqa.question_layer})
    assert res.maps.shape == (1, 32, 32) and torch.isfinite(res.maps).all() and res.maps.max() > 0
    emb, grad = res.extra["q"]
    assert emb.shape == (1, 10, 32) and grad.shape == (1, 10, 32)

    # by hand: answer log-prob from the decoder's logits, gradients for both layers at once
    store = {}
    vision_layer = blip_vqa.default_layer.removeprefix("model.")
    handles = [
        hf_model.get_submodule(vision_layer).register_forward_hook(lambda m, a, o: store.__setitem__("img", o[0] if isinstance(o, tuple) else o)),
        hf_model.text_encoder.embeddings.word_embeddings.register_forward_hook(lambda m, a, o: store.__setitem__("q", o)),
        hf_model.text_decoder.register_forward_hook(lambda m, a, o: store.__setitem__("dec", o)),
    ]
    try:
        hf_model(**query.inputs)
    finally:
        for h in handles:
            h.remove()
    answer_ids = TOK("blue triangle", add_special_tokens=False).input_ids
    logp = store["dec"].logits[0].log_softmax(-1)
    score = sum(logp[k, t] for k, t in enumerate(answer_ids))
    g_img, g_q = torch.autograd.grad(score, [store["img"], store["q"]])
    assert torch.allclose(res.scores, score.detach()[None], atol=1e-5)
    assert torch.allclose(grad, g_q, atol=1e-6)
    alpha = g_img[0, 1:].mean(0)  # (D,) mean over the 16 patches (CLS dropped)
    raw = F.relu(store["img"][0, 1:].detach() @ alpha).reshape(4, 4)
    assert torch.allclose(res.raw[0], raw, atol=1e-5)

    ax = mx.explain_answer(blip_vqa, image(), question, "blue triangle")
    assert ax.answers == ["blue triangle"] and ax.maps.shape == (1, 32, 32)
    assert ax.token_attributions.shape == (1, 8) and torch.isfinite(ax.token_attributions).all()
    assert torch.allclose(ax.probabilities, res.scores.exp(), atol=1e-5)
    assert_untouched(hf_model, before)


def test_blip_vqa_generated_answer_and_cleanup_after_error(blip_vqa):
    hf_model = blip_vqa.hf_model
    before = snapshot(hf_model)
    pixels = blip_vqa.load_image(image())
    question = "what color is the shape ?"
    answer = blip_vqa.answer(pixels, question)
    # the generated answer is the decoder's own greedy choice: every token is the argmax of the
    # teacher-forced logits, and generation stopped where the model puts [SEP] (or at max_new_tokens)
    query = blip_vqa.query(pixels, question, None, 1)
    assert query.answers == [answer] and blip_vqa.answers(query, None) == [answer]
    ids, _ = hf.tokenize_words(TOK, answer.split())
    with torch.no_grad():
        logits = blip_vqa.model(**query.inputs).logits[0]  # (1+n, V)
    assert logits[:len(ids)].argmax(-1).tolist() == ids
    assert len(ids) == blip_vqa.max_new_tokens - 1 or int(logits[len(ids)].argmax()) == TOK.sep_token_id
    assert blip_vqa.model.training is False  # the wrapper's flag is the wrapped model's
    hf_model.train()
    assert blip_vqa.model.training is True
    hf_model.eval()
    with pytest.raises(ValueError, match="top_k"):
        blip_vqa.query(pixels, "what color is the shape ?", None, 3)

    def broken(output):
        raise RuntimeError("target failed")

    query = blip_vqa.query(pixels, "what color is the shape ?", "red", 1)
    cam = mx.GradCAM(blip_vqa.model, blip_vqa.default_layer, reshape=blip_vqa.reshape_for(pixels))
    with pytest.raises(RuntimeError, match="target failed"):
        cam(query.inputs, mx.targets.Scalar(broken), extra_layers={"q": blip_vqa.question_layer})
    assert_untouched(hf_model, before)


def test_vilt_patch_order_keeps_the_output_and_fixes_the_grid(vilt_vqa):
    hf_model = vilt_vqa.hf_model
    pixels = vilt_vqa.load_image(image(32, 48))
    assert pixels.shape == (1, 3, 32, 48)
    query = vilt_vqa.query(pixels, "what color is the circle ?", None, 2)
    with torch.no_grad():
        ours = vilt_vqa.model(**query.inputs).logits
        theirs = hf_model(**query.inputs).logits  # random patch order inside
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert vilt_vqa.patch_grid(pixels) == (4, 6) and vilt_vqa.reshape_for(pixels).grid == (4, 6)


def vilt_reference(vqa, pixels, query, answer_index):
    """Score and raw map of one answer by hand, on the unwrapped model in its own random patch order.

    The order is recovered by replaying the RNG, and the tokens are scattered to their
    patches by hand; the grid is ViLT's own (``visual_embed``).
    """
    hf_model = vqa.hf_model
    layer = vqa.default_layer.removeprefix("model.")
    with torch.random.fork_rng():
        torch.manual_seed(123)
        mask = torch.ones(1, *pixels.shape[-2:], dtype=torch.long)
        _, _, (patch_index, (gh, gw)) = hf_model.vilt.embeddings.visual_embed(
            pixels, mask, max_image_length=hf_model.config.max_image_length)
        torch.manual_seed(123)
        store = {}
        handle = hf_model.get_submodule(layer).register_forward_hook(lambda m, a, o: store.__setitem__("act", o))
        try:
            out = hf_model(**query.inputs)
        finally:
            handle.remove()
    assert not torch.equal(patch_index[0, :, 0] * gw + patch_index[0, :, 1], torch.arange(gh * gw)), \
        "the model's own order should be shuffled (else this test checks nothing)"
    score = out.logits[0, answer_index]
    (grad,) = torch.autograd.grad(score, store["act"])
    n = gh * gw
    act_img, grad_img = store["act"][0, -n:].detach(), grad[0, -n:]  # (N, D) in the model's order
    alpha = grad_img.mean(0)  # (D,): the mean over patches does not depend on the order
    raw = torch.zeros(int(gh), int(gw))
    raw[patch_index[0, :, 0], patch_index[0, :, 1]] = F.relu(act_img @ alpha)
    return score.detach(), raw


def test_vilt_answer_map_against_a_reference_in_the_models_own_order(vilt_vqa):
    hf_model = vilt_vqa.hf_model
    before = snapshot(hf_model)
    pixels = vilt_vqa.load_image(image(32, 48, seed=5))
    query = vilt_vqa.query(pixels, "what color is the triangle ?", "green", 1)
    assert query.question_tokens == ["what", "color", "is", "the", "tri", "##ang", "##le", "?"]
    cam = mx.GradCAM(vilt_vqa.model, vilt_vqa.default_layer, reshape=vilt_vqa.reshape_for(pixels))
    res = cam(query.inputs, query.targets[0], extra_layers={"q": vilt_vqa.question_layer})
    assert res.maps.shape == (1, 32, 48) and res.raw.shape == (1, 4, 6)
    assert torch.isfinite(res.maps).all() and res.maps.max() > 0
    score, raw = vilt_reference(vilt_vqa, pixels, query, ANSWERS.index("green"))
    assert torch.allclose(res.scores, score[None], atol=1e-5)
    assert torch.allclose(res.raw[0], raw, atol=1e-5)
    assert_untouched(hf_model, before)


def test_vilt_patch_grid_is_computed_per_call(vilt_vqa):
    """Images of different shapes through ONE adapter, interleaved: each gets its own grid, and its map
    equals the reference in ViLT's own order (a grid kept from the previous call would misplace it)."""
    question = "what color is the square ?"
    seen = []
    for h, w, seed in [(32, 48, 1), (48, 32, 2), (32, 64, 3), (32, 48, 1)]:
        pixels = vilt_vqa.load_image(image(h, w, seed=seed))
        grid = (pixels.shape[-2] // 8, pixels.shape[-1] // 8)  # patch_size 8
        query = vilt_vqa.query(pixels, question, "red", 1)
        reshape = vilt_vqa.reshape_for(pixels)
        assert reshape.grid == grid
        res = mx.GradCAM(vilt_vqa.model, vilt_vqa.default_layer, reshape=reshape)(query.inputs, query.targets[0])
        score, raw = vilt_reference(vilt_vqa, pixels, query, ANSWERS.index("red"))
        assert res.raw.shape == (1, *grid) and torch.allclose(res.raw[0], raw, atol=1e-5), (h, w)
        ax = mx.explain_answer(vilt_vqa, image(h, w, seed=seed), question, "red")
        assert torch.allclose(ax.result.raw[0, 0], raw, atol=1e-5) and ax.maps.shape == (1, *pixels.shape[-2:])
        seen.append(grid)
    assert seen == [(4, 6), (6, 4), (3, 6), (4, 6)]  # 32 x 64 is shrunk to 24 x 48 (ViLT caps the longer side)
    assert vars(vilt_vqa.model).keys() == vars(hf.ViltPatchOrder(vilt_vqa.hf_model)).keys()  # nothing kept by calls


def test_answer_query_holds_data_only(blip_vqa, vilt_vqa):
    """AnswerQuery stores no functions: names and probabilities come from the adapter's declared methods."""
    assert [f.name for f in dataclasses.fields(AnswerQuery)] == [
        "inputs", "targets", "question_tokens", "token_positions", "answers"]
    pixels = vilt_vqa.load_image(image())
    queries = [vilt_vqa.query(pixels, "what color is the square ?", None, 3),
               vilt_vqa.query(pixels, "what color is the square ?", "red", 1),
               blip_vqa.query(blip_vqa.load_image(image()), "what color is the square ?", "red", 1)]
    for query in queries:
        with pytest.raises(dataclasses.FrozenInstanceError):
            query.answers = ["blue"]
        for field in dataclasses.fields(query):
            value = getattr(query, field.name)
            items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else [value]
            if field.name == "targets":  # target specs: instances of mx.targets classes, no bare functions
                assert all(type(t).__module__ == "mmexplain.targets" and not isinstance(t, mx.targets.Scalar)
                           for t in items), value
            else:
                assert not any(callable(v) for v in items), (field.name, value)
    top, given = queries[0], queries[1]
    assert top.answers is None and given.answers == ["red"]
    with torch.no_grad():
        logits = vilt_vqa.model(**top.inputs).logits  # (1, A)
    assert vilt_vqa.answers(top, logits) == [ANSWERS[i] for i in logits[0].topk(3).indices]
    assert torch.allclose(vilt_vqa.probabilities(top, logits), logits[0].topk(3).values.sigmoid())
    assert vilt_vqa.answers(given, logits) == ["red"]


def test_explain_answer_on_vilt_top_k(vilt_vqa):
    before = snapshot(vilt_vqa.hf_model)
    ax = mx.explain_answer(vilt_vqa, image(32, 32, seed=7), "what color is the square ?", top_k=3)
    with torch.no_grad():
        logits = vilt_vqa.model(**vilt_vqa.query(vilt_vqa.load_image(image(32, 32, seed=7)),
                                                 "what color is the square ?", None, 1).inputs).logits[0]
    top = logits.topk(3)
    assert ax.answers == [ANSWERS[i] for i in top.indices]
    assert torch.allclose(ax.scores, top.values, atol=1e-5)
    assert torch.allclose(ax.probabilities, top.values.sigmoid(), atol=1e-5)
    assert ax.maps.shape == (3, 32, 32) and ax.counterfactuals.shape == (3, 32, 32)
    assert ax.token_attributions.shape == (3, 6) and torch.isfinite(ax.token_attributions).all()
    assert ax.question_tokens == "what color is the square ?".split()
    with pytest.raises(ValueError, match="'purple' is not one of"):
        mx.explain_answer(vilt_vqa, image(), "what color is the square ?", "purple")
    guided = mx.explain_answer(vilt_vqa, image(32, 32, seed=7), "what color is the square ?", top_k=2, method="guided")
    assert guided.answers == ax.answers[:2] and guided.guided.shape == (2, 3, 32, 32)
    assert torch.isfinite(guided.guided).all() and torch.allclose(guided.maps, ax.maps[:2], atol=1e-6)
    assert_untouched(vilt_vqa.hf_model, before)


# ----------------------------------------------------------------------------- shipped checkpoints


def test_shipped_checkpoints_load_locally_as_safetensors():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "models"
    for name in ("tiny-ved", "tiny-vilt"):
        files = {p.name for p in (root / name).iterdir()}
        assert {"model.safetensors", "config.json", "tokenizer.json", "preprocessor_config.json", "CARD.md"} <= files
        assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files), files
    captioner = mx.zoo.load("tiny-ved")
    assert isinstance(captioner, hf.VisionEncoderDecoderCaptioner) and isinstance(captioner, CaptionAdapter)
    scene = mx.world.generate(mx.world.split_seeds("test", 1)[0], size=64)
    words = captioner.generate(captioner.load_image(scene.image))
    assert words and set(words) <= set(captioner.tokenizer.get_vocab())
    vqa = mx.zoo.load("tiny-vilt")
    assert isinstance(vqa, hf.ViltVQA) and isinstance(vqa, AnswerAdapter)
    qa = scene.questions[0]
    ax = mx.explain_answer(vqa, scene.image, qa.question, top_k=2)
    with torch.no_grad():
        logits = vqa.model(**vqa.query(vqa.load_image(scene.image), qa.question, None, 1).inputs).logits[0]  # (A,)
    assert ax.answers == [vqa.labels[i] for i in logits.topk(2).indices] and set(ax.answers) <= set(mx.world.answers())
    assert ax.maps.shape == (2, 64, 64) and ax.token_attributions.shape == (2, len(qa.question.split()))
