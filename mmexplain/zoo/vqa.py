"""VQA: "deeper LSTM Q + norm I" (Lu et al. 2015; Antol et al., VQA, ICCV 2015).

Image: the CNN's last 12 x 12 map, global-average pooled (plus a coarse 3 x 3 pooled
summary), L2-normalised (times one learned scale, initially sqrt(dim)), then ``Linear + tanh``. Question: word embeddings (tanh)
through a 2-layer LSTM; the final hidden and cell states of both layers, concatenated,
then ``Linear + tanh``. The two are fused by an element-wise product and an MLP
scores the answers. Departure from the paper: BatchNorm in the CNN, trained from
scratch on ShapeWorld instead of a frozen VGG.

Example:
    >>> import torch
    >>> from mmexplain.zoo.vqa import VQA, VQAConfig
    >>> from mmexplain.zoo.vocab import Vocab
    >>> model = VQA(VQAConfig(), Vocab(["is", "there", "a", "red", "circle", "?"]), ["yes", "no"]).eval()
    >>> q = model.encode_question("is there a red circle?").unsqueeze(0)
    >>> model(torch.rand(1, 3, 96, 96), q).shape          # (B, A)
    torch.Size([1, 2])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .common import Encoder, Normalize, check_images, preprocess
from .vocab import Vocab, tokenize
from ..errors import InputError, InputTypeError


@dataclass
class VQAConfig:
    image_size: int = 96  # input side the model was trained on
    widths: tuple[int, int, int] = (16, 32, 64)  # CNN channels at stride 2, 4, 8
    extra: int = 1  # extra 3x3 conv blocks at 12 x 12
    grid: int = 3  # coarse spatial pooling grid next to the global average
    grid_channels: int = 16  # 1x1-reduced channels for the grid summary
    embed_dim: int = 64  # word embedding size
    hidden_dim: int = 128  # LSTM hidden size (2 layers)
    lstm_layers: int = 2  # "deeper LSTM Q"
    fuse_dim: int = 512  # common space of image and question
    mlp_dim: int = 256  # hidden units of the answer MLP
    dropout: float = 0.1
    layer_norm: bool = True  # LayerNorm before each tanh: keeps the embeddings out of tanh saturation

    def __post_init__(self) -> None:
        self.widths = tuple(self.widths)


class VQA(nn.Module):
    """Answer classifier over ``answers`` for (image, question) pairs.

    Attributes:
        config: the :class:`VQAConfig`.
        vocab: question-word vocabulary.
        answers: answer words; ``forward`` scores them in this order.
        default_layer: ``"encoder.features.5"``, the last 12 x 12 conv block.
    """

    def __init__(self, config: VQAConfig, vocab: Vocab, answers: list[str]):
        super().__init__()
        self.config = config
        self.vocab = vocab
        self.answers = list(answers)
        c = config
        self.norm = Normalize()
        self.encoder = Encoder(c.widths, extra=c.extra)
        ch = self.encoder.out_channels
        self.reduce = nn.Conv2d(ch, c.grid_channels, 1)
        self.pool = nn.AdaptiveAvgPool2d(c.grid)
        d = ch + c.grid_channels * c.grid * c.grid
        # learnable length of the L2-normalised image feature: a unit vector over d dims has tiny entries,
        # which made the product with the question vanish and training stall at the answer prior
        self.image_scale = nn.Parameter(torch.tensor(float(d) ** 0.5))
        self.image_fc = nn.Linear(d, c.fuse_dim)
        self.embed = nn.Embedding(len(vocab), c.embed_dim, padding_idx=vocab.pad)
        self.lstm = nn.LSTM(c.embed_dim, c.hidden_dim, num_layers=c.lstm_layers, batch_first=True)
        self.question_fc = nn.Linear(2 * c.lstm_layers * c.hidden_dim, c.fuse_dim)
        self.image_ln = nn.LayerNorm(c.fuse_dim) if c.layer_norm else nn.Identity()
        self.question_ln = nn.LayerNorm(c.fuse_dim) if c.layer_norm else nn.Identity()
        self.mlp = nn.Sequential(
            nn.Dropout(c.dropout),
            nn.Linear(c.fuse_dim, c.mlp_dim),
            nn.Tanh(),
            nn.Dropout(c.dropout),
            nn.Linear(c.mlp_dim, len(self.answers)),
        )
        self.default_layer = f"encoder.{self.encoder.last}"

    def preprocess(self, image: object) -> torch.Tensor:
        """Path / PIL / numpy / tensor -> ``(1, 3, H, W)`` in [0, 1] at the model's size."""
        return preprocess(image, size=self.config.image_size)

    def encode_question(self, question: str) -> torch.Tensor:
        """``"what color is the square?"`` -> ``(L,)`` long ids; an unknown word raises ValueError."""
        if not isinstance(question, str):
            raise InputTypeError(f"question must be a str, got {type(question).__name__}")
        words = tokenize(question)
        if not words:
            raise InputError("question is empty")
        unknown = [w for w in words if w not in self.vocab or self.vocab.stoi[w] < 4]
        if unknown:
            raise InputError(f"question: unknown word {unknown[0]!r}; the model knows: "
                             f"{', '.join(self.vocab.itos[4:])}")
        return torch.tensor(self.vocab.encode(words), dtype=torch.long)

    def encode_questions(self, questions: list[str]) -> torch.Tensor:
        """Several questions -> ``(B, L)`` long, right-padded with ``vocab.pad``."""
        seqs = [self.encode_question(q) for q in questions]
        return nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=self.vocab.pad)

    def forward(self, images: torch.Tensor, questions: torch.Tensor) -> torch.Tensor:
        """Answer logits.

        Args:
            images: ``(B, 3, H, W)`` float in [0, 1].
            questions: ``(B, L)`` long ids, right-padded with ``vocab.pad``.

        Returns:
            ``(B, A)`` logits over ``self.answers``.
        """
        if not isinstance(questions, torch.Tensor) or questions.dim() != 2 or questions.dtype != torch.long:
            got = tuple(questions.shape) if isinstance(questions, torch.Tensor) else type(questions).__name__
            raise InputError(f"questions must be a (B, L) long tensor, got {got}")
        if questions.shape[0] != images.shape[0]:
            raise InputError(f"questions has batch {questions.shape[0]} but images has {images.shape[0]}")
        return self.fuse(self.image_embedding(images), self.question_embedding(questions))  # (B, A)

    def image_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> ``(B, fuse_dim)``: GAP (+ grid) features, L2-normalised, Linear + tanh."""
        a = self.encoder(self.norm(check_images(images)))  # (B, C, h, w)
        feat = torch.cat([a.mean(dim=(2, 3)), self.pool(self.reduce(a)).flatten(1)], dim=1)  # (B, D)
        feat = nn.functional.normalize(feat, dim=1) * self.image_scale  # "norm I" (times a learned scale)
        return torch.tanh(self.image_ln(self.image_fc(feat)))  # (B, F)

    def question_embedding(self, questions: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` padded ids -> ``(B, fuse_dim)``: 2-layer LSTM, final (h, c) of both layers, Linear + tanh."""
        lengths = (questions != self.vocab.pad).sum(dim=1).clamp(min=1).cpu()  # (B,)
        emb = torch.tanh(self.embed(questions))  # (B, L, E)
        packed = nn.utils.rnn.pack_padded_sequence(emb, lengths, batch_first=True, enforce_sorted=False)
        _, (h, c) = self.lstm(packed)  # (layers, B, H) x2
        q = torch.cat([h, c], dim=0).permute(1, 0, 2).flatten(1)  # (B, 2*layers*H)
        return torch.tanh(self.question_ln(self.question_fc(q)))  # (B, F)

    def fuse(self, image: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
        """Element-wise product of the two ``(B, F)`` embeddings, then the answer MLP -> ``(B, A)``."""
        return self.mlp(image * question)
