"""A byte-level BPE tokenizer trained on ShapeWorld text, with the chat templates of the tiny VLMs.

The vocabulary is small on purpose (:data:`VOCAB_SIZE`): frequent words become one token,
rarer ones split into several pieces (``"triangle"`` may be ``Ġtri`` + ``angle``), so the
per-word sums of the explanation adapters run on the same sub-word path as real VLMs.
Training is deterministic (the ``tokenizers`` BPE trainer on a fixed corpus: the captions,
questions and answers of the first :data:`CORPUS_SCENES` train scenes and the prompts).

Example:
    >>> from mmexplain.zoo.shapeworld_bpe import train_tokenizer
    >>> tok = train_tokenizer(["<|image_pad|>"])
    >>> len(tok.tokenize(" triangle")) > 1                  # doctest: +SKIP
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["VOCAB_SIZE", "CORPUS_SCENES", "CAPTION_PROMPT", "SPECIALS", "corpus", "train_tokenizer", "split_words"]

VOCAB_SIZE = 96  # bytes seen in the corpus + merges + special tokens
CORPUS_SCENES = 2000
CAPTION_PROMPT = "describe the image"
SPECIALS = ("<pad>", "<unk>", "<s>", "</s>")  # ids 0..3; model-specific image tokens follow


def corpus(n: int = CORPUS_SCENES) -> list[str]:
    """The training text: caption, questions and answers of the first ``n`` train scenes, plus the prompts."""
    from .. import world

    lines = [CAPTION_PROMPT, "user: assistant:"]
    for seed in world.split_seeds("train", n):
        scene = world.generate(seed, size=32)
        lines.append(scene.caption)
        lines += [f"{qa.question} {qa.answer}" for qa in scene.questions]
    return lines


def train_tokenizer(image_tokens: Sequence[str], *, vocab_size: int = VOCAB_SIZE, n: int = CORPUS_SCENES) -> Any:
    """A ``PreTrainedTokenizerFast`` (byte-level BPE, ``add_prefix_space``) with the specials and ``image_tokens``.

    Words are pre-tokenized with their leading space (``Ġ``); the decoder restores the text.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    specials = [*SPECIALS, *image_tokens]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size + len(image_tokens), special_tokens=specials,
                                  show_progress=False, min_frequency=1)
    backend.train_from_iterator(corpus(n), trainer=trainer)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", clean_up_tokenization_spaces=False)


def split_words(tokenizer: Any, words: Sequence[str]) -> dict[str, list[str]]:
    """The words of ``words`` that the tokenizer splits into several pieces (word -> its pieces after a space)."""
    out = {}
    for word in words:
        pieces = tokenizer.tokenize(" " + word)
        if len(pieces) > 1:
            out[word] = pieces
    return out
