"""Words with real subword tokenizers: a byte-level BPE (Qwen2 / Llama 3 pre-tokenizer: every digit alone,
a space before a digit a token of its own, 'Ġ') and a SentencePiece-style Unigram (Metaspace + single
digits: '▁' alone before a digit), both trained here with the ``tokenizers`` library on a few sentences.

Checked against an independent oracle (the tokens of word i are those that complete it in the decoded
prefix, from decoding alone, no offsets): each word's tokens, including the stand-alone space; the words'
log-probabilities summing to the whole caption's, read from the model's own logits; per-word Grad-CAM
on a tiny LLaVA equal to a hand-written autograd reference; generated ids kept, never re-tokenized.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

import mmexplain as mx  # noqa: E402
from mmexplain.adapters import hf  # noqa: E402
from mmexplain.adapters.hf.words import GeneratedWords, assign_tokens, generated_words  # noqa: E402

CORPUS = ["there are 3 circles and 12 squares .", "a red circle, left of a blue square!", "what color is the shape ?",
          "describe image", "the circles are red and the squares are blue ."] * 20
CAPTION = "there are 3 circles and 12 squares. a reddish circle, left!"
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
               r"|\s+(?!\S)|\s+")
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<image>"]


@functools.cache
def tokenizer(kind):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "bpe":
        backend = Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=330, special_tokens=SPECIALS,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    else:
        backend = Tokenizer(models.Unigram())
        backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(),
                                                         pre_tokenizers.Digits(individual_digits=True)])
        backend.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=70, special_tokens=SPECIALS, unk_token="<unk>")
    backend.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", extra_special_tokens={"image_token": "<image>"},
                                   clean_up_tokenization_spaces=False)


def oracle_groups(tok, ids, words):
    """Word i's tokens: from the end of word i-1 to the first prefix whose decoded text completes word i."""
    groups, begin = [], 0
    for i, word in enumerate(words):
        end = next(k for k in range(begin + 1, len(ids) + 1)
                   if len(tok.decode(ids[:k]).split()) > i and tok.decode(ids[:k]).split()[i] == word
                   and (k == len(ids) or tok.decode(ids[:k + 1]).split()[i] == word))
        groups.append(list(range(begin, end)))
        begin = end
    return groups


@pytest.mark.parametrize("kind, space", [("bpe", "Ġ"), ("unigram", "▁")])
def test_every_token_belongs_to_its_word(kind, space):
    tok = tokenizer(kind)
    words = CAPTION.split()
    ids, groups = hf.tokenize_words(tok, words)
    pieces = [tok.convert_ids_to_tokens([ids[k] for k in g]) for g in groups]
    assert pieces[words.index("3")] == [space, "3"] and pieces[words.index("12")] == [space, "1", "2"]
    assert len(pieces[words.index("reddish")]) > 1 and pieces[words.index("circle,")][-1] == ","
    assert sorted(k for g in groups for k in g) == list(range(len(ids)))  # every token, once
    assert groups == oracle_groups(tok, ids, words)
    # special tokens belong to no word
    ids2, groups2 = hf.tokenize_words(tok, words, add_special_tokens=True)
    assert [[ids2[k] for k in g] for g in groups2] == [[ids[k] for k in g] for g in groups]


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_generated_ids_map_to_words_losslessly(kind):
    tok = tokenizer(kind)
    text = " " + CAPTION  # a continuation after a prompt starts with its space
    ids = tok(text, add_special_tokens=False).input_ids
    eos = tok.eos_token_id
    gen = generated_words(tok, [*ids, eos, tok.pad_token_id])
    assert isinstance(gen, GeneratedWords) and list(gen) == CAPTION.split()
    assert gen.ids == ids  # the trailing EOS and padding dropped, nothing re-tokenized
    assert gen.groups == oracle_groups(tok, ids, CAPTION.split())
    assert gen.tokens_for(CAPTION.split()) == (ids, gen.groups) and gen.tokens_for(["x"]) is None
    # a special token between words stays in the ids and belongs to no word
    mid = generated_words(tok, [*ids[:3], eos, *ids[3:]])
    assert list(mid) == CAPTION.split() and 3 not in [k for g in mid.groups for k in g] and len(mid.ids) == len(ids) + 1
    # a multi-byte character split over two byte tokens goes to its word whole
    if kind == "bpe":
        two = tok(" caf\u00e9 3", add_special_tokens=False).input_ids
        got = generated_words(tok, two)
        assert list(got) == ["caf\u00e9", "3"] and sorted(k for g in got.groups for k in g) == list(range(len(two)))


def test_a_token_across_two_words_is_refused():
    with pytest.raises(ValueError, match="covers the words 'a' and 'b'"):
        assign_tokens("a b", [(0, 3)], [False])
    assert assign_tokens(" a  b ", [(0, 1), (1, 2), (2, 4), (4, 5), (5, 6)], [False] * 5)[1] == [[0, 1], [2, 3, 4]]


@functools.cache
def llava(kind):
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok = tokenizer(kind)
    ip = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                            image_mean=[0.5] * 3, image_std=[0.5] * 3)
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1)
    vit = dict(model_type="clip_vision_model", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=37, image_size=32, patch_size=8)
    text = dict(model_type="llama", vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, intermediate_size=37, max_position_embeddings=256, pad_token_id=0,
                bos_token_id=2, eos_token_id=3)
    torch.manual_seed(5)
    cfg = LlavaConfig(vision_config=vit, text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"),
                      vision_feature_layer=-1, vision_feature_select_strategy="default")
    model = LlavaForConditionalGeneration(cfg).eval()
    return hf.adapter(model, proc, prompt="describe image", max_new_tokens=12)


def reference(vlm, pixels, caption_ids, group):
    """log p of the tokens ``group`` of the caption and their Grad-CAM at the site, by hand: the prompt's
    ids + the caption's ids, the model's full logits, our own hook, autograd.grad, channel-mean weights."""
    prompt = vlm.prompt_inputs(pixels)
    ids = torch.cat([prompt["input_ids"], torch.tensor([caption_ids])], dim=1)
    inputs = {**prompt, "input_ids": ids, "attention_mask": torch.ones_like(ids)}
    start = prompt["input_ids"].shape[1]
    store = {}
    handle = vlm.hf_model.get_submodule(vlm.site).register_forward_hook(lambda m, a, o: store.setdefault("act", o if torch.is_tensor(o) else o[0]))
    try:
        logp = vlm.hf_model(**inputs).logits[0].log_softmax(-1)  # (L, V)
    finally:
        handle.remove()
    score = sum(logp[start + k - 1, caption_ids[k]] for k in group)
    (grad,) = torch.autograd.grad(score, store["act"])
    act, grad = store["act"][0, 1:].detach(), grad[0, 1:]  # (16, D): CLS dropped, row-major 4 x 4
    total = sum(logp[start + k - 1, t] for k, t in enumerate(caption_ids)).detach()
    return score.detach(), F.relu(act @ grad.mean(0)).reshape(4, 4), total


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_word_logprobs_sum_to_the_caption_and_maps_match_autograd(kind):
    vlm = llava(kind)
    tok = vlm.tokenizer
    image = torch.rand(3, 40, 32, generator=torch.Generator().manual_seed(3))
    pixels = vlm.load_image(image)
    words = CAPTION.split()
    ex = mx.explain_caption(vlm, image, CAPTION)
    caption_ids = tok(CAPTION, add_special_tokens=False).input_ids
    groups = oracle_groups(tok, caption_ids, words)
    _, _, total = reference(vlm, pixels, caption_ids, [0])
    assert torch.allclose(ex.logprobs.sum(), total, atol=1e-4)
    for word in ("3", "12", "reddish", "circle,"):
        i = words.index(word)
        score, cam, _ = reference(vlm, pixels, caption_ids, groups[i])
        assert torch.allclose(ex.logprobs[i], score, atol=1e-5), word
        torch.testing.assert_close(ex.result.raw[i, 0], cam, atol=1e-6, rtol=1e-4)
    # the same with the words per backward bounded
    few = mx.explain_caption(vlm, image, CAPTION, words_per_pass=3)
    torch.testing.assert_close(few.result.raw, ex.result.raw, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_generated_caption_keeps_the_generated_ids(kind):
    vlm = llava(kind)
    image = torch.rand(3, 40, 32, generator=torch.Generator().manual_seed(3))
    pixels = vlm.load_image(image)
    inputs = vlm.prompt_inputs(pixels)
    with torch.no_grad():
        out = vlm.hf_model.generate(**inputs, max_new_tokens=12, do_sample=False)[0, inputs["input_ids"].shape[1]:]
    ids = out.tolist()
    while ids and ids[-1] in tok_specials(vlm):
        ids.pop()
    words = vlm.generate(pixels)
    assert words.ids == ids and words, "a random model's greedy text, its ids as generated"
    ex = mx.explain_caption(vlm, image)
    assert ex.words == list(words)
    counted = [k for k, i in enumerate(ids) if i not in tok_specials(vlm)]
    _, _, _ = reference(vlm, pixels, ids, [0])
    score, _, _ = reference(vlm, pixels, ids, counted)
    assert torch.allclose(ex.logprobs.sum(), score, atol=1e-4)


def tok_specials(vlm):
    return set(vlm.tokenizer.all_special_ids)
