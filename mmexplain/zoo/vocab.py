"""Tokenization and the word <-> id vocabulary of the zoo models."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from ..errors import InputError, InputTypeError

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
# nltk's wordpunct_tokenize pattern: runs of word characters, runs of other non-space characters
WORDPUNCT = re.compile(r"\w+|[^\w\s]+")


def tokenize(text: str) -> list[str]:
    """Lower-case word/punctuation tokens, as ``nltk.tokenize.wordpunct_tokenize`` splits them.

    The pattern is nltk's own; importing nltk costs more than a second, so it is not used here.

    >>> tokenize("What color is the square?")
    ['what', 'color', 'is', 'the', 'square', '?']
    """
    if not isinstance(text, str):
        raise InputTypeError(f"text must be a str, got {type(text).__name__}")
    return WORDPUNCT.findall(text.lower())


class Vocab:
    """Words <-> ids; ids 0-3 are ``<pad>``, ``<bos>``, ``<eos>``, ``<unk>``.

    Attributes:
        itos: id -> word.
        stoi: word -> id.
        pad, bos, eos, unk: the special ids.
    """

    def __init__(self, words: Iterable[str]):
        self.itos: list[str] = list(SPECIALS)
        for w in words:
            if w not in self.itos:
                self.itos.append(w)
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}
        self.pad, self.bos, self.eos, self.unk = (self.stoi[s] for s in SPECIALS)

    @classmethod
    def build(cls, texts: Iterable[str]) -> "Vocab":
        """A vocabulary of every token in ``texts``, in sorted order (deterministic)."""
        words = sorted({t for text in texts for t in tokenize(text)})
        return cls(words)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: str) -> bool:
        return word in self.stoi

    def encode(self, words: Sequence[str]) -> list[int]:
        """Word list -> ids; unknown words map to ``unk``."""
        if isinstance(words, str):
            raise InputTypeError("words must be a list of words, got a str (split it first)")
        return [self.stoi.get(w, self.unk) for w in words]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Ids -> words, dropping ``<pad>``/``<bos>`` and stopping at ``<eos>``."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos:
                break
            if i in (self.pad, self.bos):
                continue
            out.append(self.itos[i] if 0 <= i < len(self.itos) else UNK)
        return out

    def to_json(self) -> dict:
        return {"itos": self.itos}

    @classmethod
    def from_json(cls, data: dict) -> "Vocab":
        itos = data.get("itos") if isinstance(data, dict) else None
        if not isinstance(itos, list) or list(itos[:4]) != list(SPECIALS):
            raise InputError("vocab json must be {'itos': ['<pad>', '<bos>', '<eos>', '<unk>', ...]}")
        return cls(itos[4:])


def caption_vocab() -> Vocab:
    """Every word a ShapeWorld caption can contain, sorted (the captioner's vocabulary)."""
    from .. import world

    words = {"a", *world.RELATION.split(), *world.SIZES, *world.COLORS, *world.SHAPES}
    return Vocab(sorted(words))


def question_vocab() -> Vocab:
    """Every word a ShapeWorld question can contain, sorted (the VQA model's vocabulary)."""
    from .. import world

    words = {"what", "color", "shape", "size", "is", "the", "object", "objects", "how", "many", "are", "there",
             "a", "?", *world.COLORS, *world.SHAPES, *(s + "s" for s in world.SHAPES)}
    return Vocab(sorted(words))
