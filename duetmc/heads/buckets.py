"""Length buckets: encode a padded batch of variable-length texts as a few sub-batches of similar length.

Padding costs compute, not results: every padded token goes through the projection's Transformer and
is then masked away. A training batch padded to its longest text (23 MiniLM tokens for captions that
average 13) spends about 40 % of the text branch's compute on padding. Splitting the batch by length
removes most of it; each extra sub-batch costs a fixed overhead (one more pass of small kernels),
so the split points are chosen to minimise `padded tokens + BUCKET_COST_TOKENS per bucket`.
The embeddings are the same (to float rounding); only the order in which dropout draws its masks
changes, so a trained run is a different draw, not different maths (docs/DESIGN.md §6).
"""

from __future__ import annotations

import numpy as np
import torch

# The fixed cost of one more sub-batch, in tokens' worth of compute: a training token costs about
# 10 MFLOP forward and backward (0.25 ms on the 2-core benchmark machine), one more pass of the
# Transformer's ~100 small kernels a few milliseconds plus smaller, less efficient matmuls.
BUCKET_COST_TOKENS = 64
# Below this many items a batch is encoded as one (evaluation batches of a few queries, tests).
MIN_BUCKETED_BATCH = 64


def split_points(lengths: np.ndarray, cost: int = BUCKET_COST_TOKENS) -> list[int]:
    """Sorted distinct lengths -> the indices (into the distinct lengths) that end each bucket.

    Dynamic programme over the distinct lengths `u` with counts `c`: a bucket covering distinct
    lengths i..j costs `sum(c[i..j]) * u[j] + cost`.
    """
    u, c = np.unique(lengths, return_counts=True)
    cum = np.concatenate([[0], np.cumsum(c)])
    best = np.zeros(len(u) + 1)
    start = np.zeros(len(u), dtype=np.int64)
    for j in range(len(u)):
        i = np.arange(j + 1)
        total = best[i] + (cum[j + 1] - cum[i]) * u[j] + cost
        k = int(np.argmin(total))
        best[j + 1], start[j] = total[k], k
    ends, j = [], len(u) - 1
    while j >= 0:
        ends.append(int(u[j]))
        j = int(start[j]) - 1
    return ends[::-1]


def length_buckets(lengths: torch.Tensor, cost: int = BUCKET_COST_TOKENS) -> list[torch.Tensor]:
    """`[B]` valid lengths -> index tensors of the buckets, each sorted by length; together a permutation."""
    if len(lengths) < MIN_BUCKETED_BATCH:
        return [torch.arange(len(lengths), device=lengths.device)]
    lens = lengths.detach().cpu().numpy()
    order = np.argsort(lens, kind="stable")
    ends = split_points(lens, cost)
    cut = np.searchsorted(lens[order], ends, side="right")
    parts = np.split(order, cut[:-1])
    return [torch.from_numpy(p).to(lengths.device) for p in parts if len(p)]


def encode_bucketed(encode, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """`encode(x[idx, :, :longest], lengths[idx])` per bucket, results put back in the input order.

    x: `[B, L, T, D]` features padded to T tokens; encode maps such a batch to `[b, dim]`.
    """
    if lengths.shape != (x.shape[0],):
        raise ValueError(f"lengths must have shape [{x.shape[0]}], got {tuple(lengths.shape)}")
    buckets = length_buckets(lengths)
    if len(buckets) == 1:
        return encode(x, lengths)
    outs = []
    for idx in buckets:
        longest = int(lengths[idx].max())
        outs.append(encode(x[idx, :, :longest], lengths[idx]))
    order = torch.cat(buckets)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order), device=order.device)
    return torch.cat(outs)[inverse]
