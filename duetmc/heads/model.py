"""DuET-MC heads: one aggregator + projection branch per modality over cached encoder features.

Both encoders are frozen and never run here; the heads see their stacked hidden states
`[B, L, T, D]` and map each item to a 256-d unit vector. Similarity is the cosine of those vectors
times `logit_scale = 1 / temperature` (0.03 by default, fixed unless `learn_temperature`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from duetmc.heads.aggregator import LayerAggregator
from duetmc.heads.buckets import encode_bucketed
from duetmc.heads.projection import Projection

# CLIP's cap on the learnable logit scale, so a learned temperature cannot collapse below 0.01.
MAX_LOGIT_SCALE = 100.0


@dataclass
class HeadsConfig:
    audio_dim: int
    audio_layers: int
    text_dim: int
    text_layers: int
    dim: int = 256
    transformer_layers: int = 2
    heads: int = 2
    dropout: float = 0.1
    temperature: float = 0.03
    learn_temperature: bool = False
    audio_max_tokens: int | None = None
    text_max_tokens: int | None = None
    ff_dim: int | None = None  # None: 4 * dim

    def __post_init__(self):
        if not 0.0 < self.temperature <= 1.0:
            raise ValueError(f"temperature must be in (0, 1], got {self.temperature}")
        if self.dim % self.heads:
            raise ValueError(f"dim={self.dim} must be divisible by heads={self.heads}")


def positional_sizes(text_attrs: list[dict], audio_tokens: int) -> dict:
    """`HeadsConfig` sizes for learnable positions, when a config asks for them (off by default,
    see heads/projection.py): text positions cover the text encoder's own token limit recorded in
    each cache, not the longest training text, so any text the encoder can encode fits."""
    from duetmc.featurize.text import token_limit

    return {"audio_max_tokens": audio_tokens, "text_max_tokens": max(token_limit(a) for a in text_attrs)}


class DuetHeads(nn.Module):
    def __init__(self, config: HeadsConfig):
        super().__init__()
        self.config = config
        c = config
        self.audio_aggregator = LayerAggregator(c.audio_layers)
        self.audio_projection = Projection(
            c.audio_dim, c.dim, c.transformer_layers, c.heads, c.dropout, c.audio_max_tokens, c.ff_dim
        )
        self.text_aggregator = LayerAggregator(c.text_layers)
        self.text_projection = Projection(
            c.text_dim, c.dim, c.transformer_layers, c.heads, c.dropout, c.text_max_tokens, c.ff_dim
        )
        log_scale = torch.tensor(math.log(1.0 / c.temperature))
        if c.learn_temperature:
            self.log_logit_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_logit_scale", log_scale)

    def _encode(self, aggregator, projection, x, lengths, what):
        if x.dim() != 4:
            raise ValueError(
                f"{what} features must be [batch, layers, tokens, dim], got shape {tuple(x.shape)}"
            )
        dtype = aggregator.conv.weight.dtype  # the cache stores float16

        def encode(xb, lb):
            return projection(aggregator(xb.to(dtype)), lb)

        if lengths is None:
            return encode(x, None)
        return encode_bucketed(encode, x, torch.as_tensor(lengths, device=x.device))

    def encode_audio(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """`[B, audio_layers, T, audio_dim]` -> `[B, dim]` unit vectors."""
        return self._encode(self.audio_aggregator, self.audio_projection, x, lengths, "audio")

    def encode_text(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """`[B, text_layers, T, text_dim]` (+ valid token counts) -> `[B, dim]` unit vectors."""
        return self._encode(self.text_aggregator, self.text_projection, x, lengths, "text")

    def logit_scale(self) -> torch.Tensor:
        """`1 / temperature` (clamped at 100 when learnt)."""
        return self.log_logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def forward(
        self,
        audio: torch.Tensor,
        text: torch.Tensor,
        audio_lengths: torch.Tensor | None = None,
        text_lengths: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (audio embeddings, text embeddings, logit scale), ready for `duetmc.loss`."""
        return (
            self.encode_audio(audio, audio_lengths),
            self.encode_text(text, text_lengths),
            self.logit_scale(),
        )

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
