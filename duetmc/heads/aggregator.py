"""Layer aggregator: a learnable weighted combination of an encoder's stacked hidden layers.

The paper's MERT branch applies a 1-D convolution with kernel 1 over the layer axis, i.e. one scalar
weight per layer plus a bias, shared by every token and feature. It starts as a plain average so that
training begins from "all layers count equally" rather than from a random mix.
"""

from __future__ import annotations

import torch
from torch import nn


class LayerAggregator(nn.Module):
    """`[B, L, T, D] -> [B, T, D]`: `sum_l w_l * x[:, l] + b`, with `w_l = 1/L`, `b = 0` at init.

    With `L == 1` this is the identity times a learnable scale plus a bias (both start neutral).
    """

    def __init__(self, n_layers: int):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"LayerAggregator needs at least one layer, got n_layers={n_layers}")
        self.n_layers = n_layers
        # The layer axis is the conv's channel axis; kernel 1 means no mixing across tokens/features.
        self.conv = nn.Conv1d(n_layers, 1, kernel_size=1)
        with torch.no_grad():
            self.conv.weight.fill_(1.0 / n_layers)
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.n_layers:
            raise ValueError(
                f"LayerAggregator expects [batch, {self.n_layers} layers, tokens, dim], "
                f"got shape {tuple(x.shape)}"
            )
        # The conv's own kernel (oneDNN) costs ~20 % of a CPU training step for what is a weighted
        # sum over a handful of layers; the same sum as one small matmul is exact and cheap.
        w, bias = self.conv.weight.reshape(self.n_layers), self.conv.bias
        if self.n_layers == 1:
            return torch.addcmul(bias, x[:, 0], w)
        return torch.einsum("bltd,l->btd", x, w) + bias

    def layer_weights(self) -> torch.Tensor:
        """The per-layer weights as a detached `[L]` tensor (the bias is `self.conv.bias`)."""
        return self.conv.weight.detach().reshape(self.n_layers).clone()
