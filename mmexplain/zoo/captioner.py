"""Show and Tell captioner: CNN encoder + LSTM decoder, no attention (Vinyals et al. 2015).

The image feature (global average pooling of the last 12 x 12 conv map) initialises the
LSTM state and is fed again at every step next to the word embedding. The pixel
coordinates enter the CNN as two extra input channels (CoordConv), so channels can
encode where an object is and the decoder can tell left from right through the
global average alone; Grad-CAM of a word then decomposes the word's (linearised)
score over the 12 x 12 map exactly as CAM does. Departures from the paper, found
necessary by a probe run: BatchNorm in the CNN and the image feature at every step;
without them the decoder learns only the language prior.

Example:
    >>> import torch
    >>> from mmexplain.zoo.captioner import Captioner, CaptionerConfig
    >>> from mmexplain.zoo.vocab import Vocab
    >>> model = Captioner(CaptionerConfig(), Vocab(["a", "red", "circle"])).eval()
    >>> tokens = torch.tensor([[model.vocab.bos, 4, 5]])
    >>> model(torch.rand(1, 3, 96, 96), tokens).shape     # (B, L, V)
    torch.Size([1, 3, 7])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .common import Encoder, Normalize, check_images, preprocess
from .vocab import Vocab
from ..errors import InputError


@dataclass
class CaptionerConfig:
    image_size: int = 96  # input side the model was trained on
    widths: tuple[int, int, int] = (16, 32, 64)  # CNN channels at stride 2, 4, 8
    extra: int = 1  # extra 3x3 conv blocks at 12 x 12 (more receptive field)
    coords: bool = True  # CoordConv input: x, y channels, so GAP features can say where (for "left of")
    feat_dim: int = 256  # image embedding size
    embed_dim: int = 64  # word embedding size
    hidden_dim: int = 256  # LSTM hidden size
    dropout: float = 0.1  # on the LSTM output
    max_len: int = 20  # default generation length

    def __post_init__(self) -> None:
        self.widths = tuple(self.widths)


class Captioner(nn.Module):
    """CNN + LSTM captioner (Show and Tell) over a :class:`~mmexplain.zoo.vocab.Vocab`.

    ``forward(images, tokens)`` is teacher-forced: ``tokens = [<bos>, w1 .. wT]`` and
    ``logits[:, t]`` is the distribution of the token after ``tokens[:, t]``, so
    ``log p(w_{t+1})`` is read at position ``t`` and ``log p(<eos>)`` at position ``T``.

    Attributes:
        config: the :class:`CaptionerConfig`.
        vocab: the word vocabulary (``bos``, ``eos``, ``pad``, ``unk`` ids).
        default_layer: ``"encoder.features.5"``, the last 12 x 12 conv block.
    """

    def __init__(self, config: CaptionerConfig, vocab: Vocab):
        super().__init__()
        self.config = config
        self.vocab = vocab
        c = config
        self.norm = Normalize()
        self.encoder = Encoder(c.widths, extra=c.extra, coords=c.coords)
        ch = self.encoder.out_channels
        self.image_fc = nn.Sequential(
            nn.Linear(ch, c.feat_dim),
            nn.BatchNorm1d(c.feat_dim),
            nn.ReLU(),
        )
        self.init_h = nn.Linear(c.feat_dim, c.hidden_dim)
        self.init_c = nn.Linear(c.feat_dim, c.hidden_dim)
        self.embed = nn.Embedding(len(vocab), c.embed_dim, padding_idx=vocab.pad)
        self.lstm = nn.LSTM(c.embed_dim + c.feat_dim, c.hidden_dim, batch_first=True)
        self.drop = nn.Dropout(c.dropout)
        self.out = nn.Linear(c.hidden_dim, len(vocab))
        self.default_layer = f"encoder.{self.encoder.last}"

    def preprocess(self, image: object) -> torch.Tensor:
        """Path / PIL / numpy / tensor -> ``(1, 3, H, W)`` in [0, 1] at the model's size."""
        return preprocess(image, size=self.config.image_size)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> ``(B, feat_dim)``."""
        a = self.encoder(self.norm(check_images(images)))  # (B, C, h, w)
        return self.image_fc(a.mean(dim=(2, 3)))  # (B, F)

    def _state(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tanh(self.init_h(f)).unsqueeze(0), torch.tanh(self.init_c(f)).unsqueeze(0)  # (1, B, H) x2

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits.

        Args:
            images: ``(B, 3, H, W)`` float in [0, 1].
            tokens: ``(B, L)`` long, ``[<bos>, w1, ..., wT]`` (padded with ``pad``).

        Returns:
            ``(B, L, V)`` logits; row ``t`` predicts the token after ``tokens[:, t]``.
        """
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.dtype != torch.long:
            got = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise InputError(f"tokens must be a (B, L) long tensor, got {got}")
        f = self.image_features(images)  # (B, F)
        # checked on the features: an explainer may widen the batch after the encoder
        # (mx.GradCAM targets_in_batch: one copy of the activation per explained word)
        if tokens.shape[0] != f.shape[0]:
            raise InputError(f"tokens has batch {tokens.shape[0]} but images has {images.shape[0]}")
        emb = self.embed(tokens)  # (B, L, E)
        x = torch.cat([emb, f.unsqueeze(1).expand(-1, tokens.shape[1], -1)], dim=2)  # (B, L, E+F)
        h, _ = self.lstm(x, self._state(f))  # (B, L, H)
        return self.out(self.drop(h))  # (B, L, V)

    @torch.no_grad()
    def generate(self, images: torch.Tensor, *, max_len: int | None = None, beam: int = 1) -> list[list[str]]:
        """Captions as word lists (no ``<bos>``/``<eos>``).

        Args:
            images: ``(B, 3, H, W)`` (or ``(3, H, W)``) float in [0, 1].
            max_len: most words per caption (default ``config.max_len``).
            beam: beam width; 1 is greedy.
        """
        if isinstance(images, torch.Tensor) and images.dim() == 3:
            images = images.unsqueeze(0)
        check_images(images)
        max_len = self.config.max_len if max_len is None else max_len
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
            raise InputError(f"max_len must be a positive int, got {max_len!r}")
        if isinstance(beam, bool) or not isinstance(beam, int) or beam < 1:
            raise InputError(f"beam must be a positive int, got {beam!r}")
        flags = [(m, m.training) for m in self.modules()]  # every module's own flag, mixed ones included
        self.eval()
        try:
            f = self.image_features(images)  # (B, F)
            if beam == 1:
                return self._greedy(f, max_len)
            return [self._beam(f[i:i + 1], max_len, beam) for i in range(f.shape[0])]
        finally:
            for module, training in flags:
                module.training = training

    def _step(self, f: torch.Tensor, tok: torch.Tensor, state):
        x = torch.cat([self.embed(tok), f], dim=1).unsqueeze(1)  # (B, 1, E+F)
        h, state = self.lstm(x, state)
        return torch.log_softmax(self.out(h[:, 0]), dim=-1), state  # (B, V)

    def _greedy(self, f: torch.Tensor, max_len: int) -> list[list[str]]:
        b = f.shape[0]
        state = self._state(f)
        tok = torch.full((b,), self.vocab.bos, dtype=torch.long)
        out = torch.full((b, max_len), self.vocab.eos, dtype=torch.long)
        done = torch.zeros(b, dtype=torch.bool)
        for t in range(max_len):
            logp, state = self._step(f, tok, state)
            logp[:, [self.vocab.pad, self.vocab.bos, self.vocab.unk]] = -float("inf")  # never emitted
            tok = logp.argmax(dim=-1)  # (B,)
            tok = torch.where(done, torch.full_like(tok, self.vocab.eos), tok)
            out[:, t] = tok
            done |= tok == self.vocab.eos
            if bool(done.all()):
                break
        return [self.vocab.decode(row.tolist()) for row in out]

    def _beam(self, f: torch.Tensor, max_len: int, beam: int) -> list[str]:
        h0, c0 = self._state(f)
        beams = [([], 0.0, (h0, c0))]  # (tokens, logp, state)
        finished: list[tuple[list[int], float]] = []
        for _ in range(max_len):
            toks = torch.tensor([b[0][-1] if b[0] else self.vocab.bos for b in beams])
            state = (torch.cat([b[2][0] for b in beams], 1), torch.cat([b[2][1] for b in beams], 1))
            logp, (h, c) = self._step(f.expand(len(beams), -1), toks, state)
            logp[:, [self.vocab.pad, self.vocab.bos, self.vocab.unk]] = -float("inf")  # never emitted
            cand = []
            for i, (seq, score, _) in enumerate(beams):
                top = torch.topk(logp[i], beam)
                for lp, tok in zip(top.values.tolist(), top.indices.tolist()):
                    cand.append((seq + [tok], score + lp, i))
            cand.sort(key=lambda x: -x[1])
            beams = []
            for seq, score, i in cand:
                if seq[-1] == self.vocab.eos:
                    finished.append((seq, score))
                else:
                    beams.append((seq, score, (h[:, i:i + 1], c[:, i:i + 1])))
                if len(beams) == beam:
                    break
            if len(finished) >= beam or not beams:
                break
        finished.extend((b[0], b[1]) for b in beams)
        best = max(finished, key=lambda x: x[1])[0]
        return self.vocab.decode(best)
