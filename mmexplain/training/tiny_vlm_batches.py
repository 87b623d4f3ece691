"""Model inputs of the tiny VLMs' training: Qwen2-VL's patch layout and :class:`Batches` (chat-templated prompts
encoded once, targets, question dialogues, images laid out per family)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..zoo import tiny_vlms
from .tiny_hf import pixels

__all__ = ["qwen_patches", "Batches"]


def qwen_patches(images: Tensor, *, patch: int, merge: int = 2, temporal: int = 2) -> Tensor:
    """``(B, 3, H, W)`` normalized -> Qwen2-VL's flattened patches ``(B * h * w, 3 * temporal * patch * patch)``.

    Rows in merge-block order (each 2 x 2 block of patches together), the image repeated
    ``temporal`` times, as ``Qwen2VLImageProcessor`` lays them out.
    """
    b, c, height, width = images.shape
    h, w = height // patch, width // patch
    x = images[:, None].expand(b, temporal, c, height, width)  # (B, T, C, H, W)
    x = x.reshape(b, temporal, c, h // merge, merge, patch, w // merge, merge, patch)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # (B, h/m, w/m, m, m, C, T, p, p)
    return x.reshape(b * h * w, c * temporal * patch * patch)


class Batches:
    """Model inputs for the examples of one processor: prompts encoded once, images laid out per family."""

    def __init__(self, name: str, processor: Any, images: Tensor, rows: list[list]) -> None:
        from ..adapters.hf.vlm import chat_text

        self.name, self.processor, self.images, self.rows = name, processor, images, rows
        self.tokenizer = processor.tokenizer
        self.spec = tiny_vlms.SPECS[name]
        side = images.shape[-1]
        prompts: dict[str, list[int]] = {}
        self.encoded = []
        for _, prompt, target, _ in rows:
            if prompt not in prompts:
                enc = processor(text=chat_text(processor, prompt), images=torch.zeros(3, side, side),
                                return_tensors="pt", do_rescale=False)
                prompts[prompt] = enc["input_ids"][0].tolist()
            self.encoded.append((prompts[prompt], self.target_ids(target)))
        self.later_turns: dict[str, list[int]] = {}  # prompt -> ids of a turn after the first
        self.image_token = processor.image_token_id if hasattr(processor, "image_token_id") else \
            self.tokenizer.convert_tokens_to_ids(processor.image_token)

    def target_ids(self, text: str) -> list[int]:
        """The target's token ids followed by ``</s>``."""
        return [*self.tokenizer(text, add_special_tokens=False).input_ids, self.tokenizer.eos_token_id]

    def pixel_inputs(self, images: Tensor) -> dict[str, Tensor]:
        """uint8 ``(B, 3, H, W)`` -> ``pixel_values`` (and ``image_grid_thw``) as the saved processor makes them."""
        values = pixels(images)  # (B, 3, H, W) in [-1, 1]
        if self.name == "tiny-llava":
            return {"pixel_values": values}
        p = self.spec.patch_size
        grid = torch.tensor([[1, values.shape[-2] // p, values.shape[-1] // p]] * len(values))  # (B, 3)
        return {"pixel_values": qwen_patches(values, patch=p), "image_grid_thw": grid}

    def images_of(self, index: list[int]) -> Tensor:
        return self.images[torch.tensor([self.rows[i][0] for i in index])]

    def later_turn(self, prompt: str) -> list[int]:
        """The ids of ``prompt`` as a turn after the first: the chat template's user turn without the image."""
        if prompt not in self.later_turns:
            from ..adapters.hf.vlm import chat_text

            text = chat_text(self.processor, prompt, image=False)
            self.later_turns[prompt] = self.tokenizer(text, add_special_tokens=False).input_ids
        return self.later_turns[prompt]

    def dialogue(self, turns: list[int]) -> tuple[list[int], list[int]]:
        """Rows of one scene as a conversation ``(ids, labels)``: labels on the answers only (``-100`` elsewhere).

        The first turn is the chat prompt with the image; each later one (:meth:`later_turn`)
        follows the previous answer's ``</s>``.
        """
        ids: list[int] = []
        labels: list[int] = []
        for k, i in enumerate(turns):
            prompt = self.encoded[i][0] if k == 0 else self.later_turn(self.rows[i][1])
            target = self.encoded[i][1]
            ids += prompt + target
            labels += [-100] * len(prompt) + target
        return ids, labels

    def text(self, index: list[int] | list[list[int]], *, flip: bool = False) -> dict[str, Tensor]:
        """Right-padded ``input_ids`` / ``attention_mask`` / ``labels`` ``(B, L)`` and the pixel inputs.

        ``index``: one row per example, or per example the rows of one scene (a dialogue).
        """
        seqs = [self.dialogue(i if isinstance(i, list) else [i]) for i in index]
        length = max(len(ids) for ids, _ in seqs)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(index), length), pad)  # (B, L)
        labels = torch.full((len(index), length), -100)  # (B, L)
        mask = torch.zeros(len(index), length, dtype=torch.long)  # (B, L)
        for b, (seq, label) in enumerate(seqs):
            ids[b, :len(seq)] = torch.tensor(seq)
            labels[b, :len(seq)] = torch.tensor(label)
            mask[b, :len(seq)] = 1
        images = self.images_of([i[0] if isinstance(i, list) else i for i in index])
        out = {"input_ids": ids, "attention_mask": mask, "labels": labels,
               **self.pixel_inputs(images.flip(-2) if flip else images)}
        if self.name == "tiny-qwen2vl":
            out["mm_token_type_ids"] = (ids == self.image_token).long()  # (B, L): 1 on image tokens
        return out
