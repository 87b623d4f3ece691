"""Words <-> tokens for real subword tokenizers: every token of a caption belongs to exactly one word.

A *word* is a whitespace-separated piece of the text (``text.split()``); punctuation
belongs to the word it touches (``"circle,"`` is one word of two tokens). A word's
log-probability is the sum over ALL the tokens that make it up, so the words' scores
add up to the text's. The rules that assign a token to a word, from the characters the
token covers in the text:

1. a token whose characters include a non-space character belongs to the word in which
   its first non-space character lies (``"Ġcircle"`` -> ``circle``; ``"3"`` -> ``3``);
2. a token that covers only whitespace, or no character at all, belongs to the next word:
   a stand-alone space before a word (byte-level BPE ``"Ġ"`` before ``"3"``, as Qwen2 and
   Llama 3 split every number; SentencePiece ``"▁"`` before a piece the vocabulary lacks)
   and a token holding the first bytes of a character another token completes; after
   the last word, the previous word;
3. special tokens (BOS, EOS, padding, image tokens) belong to no word;
4. a token that covers two words (a merge across a space) is an error naming it: its
   log-probability cannot be split between them.

Given text is tokenized once with character offsets (fast tokenizers; slow ones word by
word). Generated ids are never re-tokenized: :func:`generated_words` maps the ids the model
wrote to the words a person reads, with the characters each id adds to the decoded text,
and returns them as :class:`GeneratedWords` (a ``list[str]`` that carries its ids), so a
teacher-forced pass over them scores exactly the tokens the model generated.

Example:
    >>> tokenizer = ...                                    # doctest: +SKIP
    >>> ids, groups = tokenize_words(tokenizer, ["there", "are", "3", "circles"])   # doctest: +SKIP
    >>> tokenizer.convert_ids_to_tokens([ids[k] for k in groups[2]])              # doctest: +SKIP
    ['Ġ', '3']
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from ...errors import InputError

__all__ = ["tokenize_words", "decode_words", "generated_words", "GeneratedWords", "assign_tokens"]


class GeneratedWords(list):
    """Words a model generated, with the token ids it generated and each word's token indices.

    A ``list[str]`` (equal to the plain list of its words) with two attributes:

    Attributes:
        ids: the generated token ids, in order (trailing special tokens dropped).
        groups: ``groups[i]`` the indices into ``ids`` of word ``i``'s tokens.
    """

    def __init__(self, words: Sequence[str], ids: Sequence[int], groups: Sequence[Sequence[int]]) -> None:
        super().__init__(words)
        self.ids = [int(i) for i in ids]
        self.groups = [list(g) for g in groups]

    def tokens_for(self, words: Sequence[str]) -> tuple[list[int], list[list[int]]] | None:
        """``(ids, groups)`` when ``words`` are these words, else None (the words were edited)."""
        return (list(self.ids), [list(g) for g in self.groups]) if list(words) == list(self) else None


def assign_tokens(text: str, spans: Sequence[tuple[int, int]], special: Sequence[bool]) -> tuple[list[str], list[list[int]]]:
    """The words of ``text`` and, per word, the indices of its tokens (the module's rules).

    Args:
        text: the text the tokens make.
        spans: per token, the ``(start, end)`` characters of ``text`` it covers.
        special: per token, True for a special token (belongs to no word).

    Returns:
        ``(words, groups)``: ``text.split()`` and, per word, its token indices (never empty).
    """
    words = text.split()
    starts, ends, pos = [], [], 0
    for w in words:
        pos = text.index(w, pos)
        starts.append(pos)
        ends.append(pos + len(w))
        pos += len(w)
    groups: list[list[int]] = [[] for _ in words]
    pending: list[int] = []  # whitespace-only / empty tokens waiting for the next word
    last = -1
    for k, ((s, e), is_special) in enumerate(zip(spans, special)):
        if is_special:
            continue
        while s < e and text[s].isspace():
            s += 1
        if s >= e:
            pending.append(k)
            continue
        i = bisect_right(starts, s) - 1
        j = bisect_right(starts, e - 1) - 1  # the word of its last character
        if j != i and text[starts[j]:e].strip():
            raise InputError(f"token {k} ({text[s:e]!r}) covers the words {words[i]!r} and {words[j]!r}; "
                             "its log-probability cannot be split between them")
        groups[i].extend(pending)
        groups[i].append(k)
        pending, last = [], i
    if pending:
        if last < 0:
            raise InputError(f"no token of {text!r} covers a word")
        groups[last].extend(pending)
    empty = [words[i] for i, g in enumerate(groups) if not g]
    if empty:
        raise InputError(f"words {empty} have no token of their own")
    return words, [sorted(g) for g in groups]


def tokenize_words(tokenizer: Any, words: Sequence[str], *,
                   add_special_tokens: bool = False) -> tuple[list[int], list[list[int]]]:
    """Token ids of ``" ".join(words)`` and, for each word, the indices of ALL its tokens.

    Fast tokenizers: character offsets and the special-tokens mask, by the module's rules
    (stand-alone space tokens go to the next word). Slow ones: word by word, each word
    after a space except the first.

    Args:
        tokenizer: a transformers tokenizer.
        words: the words, each non-empty and without spaces.
        add_special_tokens: include the tokenizer's special tokens ([CLS] ... [SEP]);
            they belong to no word.

    Returns:
        ``(ids, groups)``: ids of the whole text; ``groups[i]`` the positions in
        ``ids`` of word i's tokens (never empty).
    """
    words = list(words)
    if not words or not all(isinstance(w, str) and w and w.split() == [w] for w in words):
        raise InputError(f"words: expected a non-empty list of words without spaces, got {words!r}")
    text = " ".join(words)
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True,
                        return_special_tokens_mask=True)
        ids = list(enc["input_ids"])
        special = [bool(m) for m in enc["special_tokens_mask"]]
        try:
            _, groups = assign_tokens(text, [tuple(o) for o in enc["offset_mapping"]], special)
        except ValueError as exc:
            raise InputError(f"words {words!r} with {type(tokenizer).__name__}: {exc}") from exc
        return ids, groups
    ids, groups = [], []
    for i, w in enumerate(words):
        piece = tokenizer.encode(w if i == 0 else " " + w, add_special_tokens=False)
        if not piece:
            raise InputError(f"words ['{w}'] produced no tokens with {type(tokenizer).__name__}")
        groups.append(list(range(len(ids), len(ids) + len(piece))))
        ids.extend(piece)
    if add_special_tokens:
        full = list(tokenizer.build_inputs_with_special_tokens(ids))
        shift = next((j for j in range(len(full) - len(ids) + 1) if full[j:j + len(ids)] == ids), None)
        if shift is None:
            raise InputError(f"{type(tokenizer).__name__} changed the tokens when adding special tokens")
        groups = [[k + shift for k in g] for g in groups]
        ids = full
    return ids, groups


def generated_words(tokenizer: Any, ids: Sequence[int] | Tensor, *, start: int | None = None) -> GeneratedWords:
    """Generated ids -> the words a person reads, each with the generated tokens that make it.

    The characters token ``k`` adds are those by which the decoded text of ``ids[:k+1]``
    extends the decoded text of ``ids[:k]`` (measured as common prefixes with the whole
    decoded text, so a byte that completes a character later adds it then). Trailing
    special tokens (EOS, padding) are dropped from ``ids``; other special tokens stay in
    ``ids`` and belong to no word.

    Args:
        tokenizer: the model's tokenizer.
        ids: the generated ids (after the prompt; an encoder-decoder's decoder output).
        start: the decoder's start token, dropped when the ids begin with it.
    """
    ids = ids.tolist() if isinstance(ids, Tensor) else [int(i) for i in ids]
    if start is not None and ids and ids[0] == start:
        ids = ids[1:]
    specials = set(getattr(tokenizer, "all_special_ids", []) or [])
    while ids and ids[-1] in specials:
        ids.pop()
    special = [i in specials for i in ids]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    spans, done = [], 0
    for k in range(len(ids)):
        prefix = tokenizer.decode(ids[:k + 1], skip_special_tokens=True) if not special[k] else ""
        common = 0
        limit = min(len(prefix), len(text))
        while common < limit and prefix[common] == text[common]:
            common += 1
        end = max(done, common) if not special[k] else done
        spans.append((done, end))
        done = end
    if not text.split():
        return GeneratedWords([], ids, [])
    words, groups = assign_tokens(text, spans, special)
    return GeneratedWords(words, ids, groups)


def decode_words(tokenizer: Any, ids: Sequence[int] | Tensor, *, start: int | None = None) -> list[str]:
    """Generated ids -> the words a person reads (special tokens dropped).

    Args:
        tokenizer: the model's tokenizer.
        ids: the generated ids.
        start: the decoder's start token, dropped when the ids begin with it (``generate``
            returns it first, and a tokenizer need not list it as special).
    """
    ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
    if start is not None and ids and ids[0] == start:
        ids = ids[1:]
    return tokenizer.decode(ids, skip_special_tokens=True).split()
