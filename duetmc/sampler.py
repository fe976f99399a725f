"""The sampler: (seed, epoch) -> the epoch's batch specs, row numbers only.

A pure function of its arguments, so a resumed run sees exactly the batches it would have seen, ranks
agree on them, and the feature source (memory or streaming) never changes them: it is a performance
choice and gets no say in the science.

Per epoch, dataset d contributes round(weight_d * n_d) draws of its training clips as whole
permutations: every clip once per whole unit of weight, and for the fraction a random subset drawn
without replacement; then the epoch's pool is shuffled. So with weight >= 1 every clip is seen every
epoch, and no clip is drawn more often than ceil(weight) times (never with replacement).

Batches never hold the same (dataset, clip) twice (a clip would be its own false negative): the
epoch has at least as many batches as any clip has draws, and duplicates are swapped with rows of
other batches.

The last partial batch is kept: dropping it would skip different clips every epoch (weight 1 would
no longer mean "every clip once"), and its only cost is one step per epoch with fewer negatives. A
tail of one row (no negative at all) shares the rows of the batch before it instead. Batches are not
evened out over the epoch, because that would make their sizes depend on the number of ranks, and a
torchrun run must see the same batches as one process with the same global batch. Under torchrun
every batch is a multiple of the world size, so fewer than world-size draws of an epoch are left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from duetmc.cache_spec import CacheError
from duetmc.errors import UsageError
from duetmc.pairs import PairIndex


@dataclass
class BatchSpec:
    """Row numbers of one batch; `ds` says which dataset each row comes from."""

    ds: np.ndarray  # [B]
    audio_rows: np.ndarray  # [B] window rows
    text_rows: np.ndarray  # [B]
    hard_rows: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int64))  # [B, K], -1 = none


@dataclass
class SamplerConfig:
    p_cap: float = 0.5
    views: bool = True
    swap: bool = True


def weighted_draws(items: np.ndarray, weight: float, rng: np.random.Generator) -> np.ndarray:
    """round(weight * n) draws: every item once per whole unit of weight, plus a subset without
    replacement for the fraction (unordered: the epoch's pool is shuffled as a whole)."""
    if not weight >= 0:
        raise UsageError(f"--weight {weight}: a sampling weight must be a number >= 0")
    total = int(round(weight * len(items)))
    whole, rest = divmod(total, len(items)) if len(items) else (0, 0)
    parts = [items] * whole
    parts.append(rng.choice(items, size=rest, replace=False) if rest else items[:0])
    return np.concatenate(parts)


def batch_sizes(n: int, batch_size: int, multiple_of: int, min_batches: int) -> list[int]:
    """Full batches and the last partial one, each a multiple of `multiple_of`, covering
    n - n % multiple_of draws in at least `min_batches` batches."""
    units, per = n // multiple_of, max(1, batch_size // multiple_of)
    full = math.ceil(units / per)
    if min_batches > full:  # a clip drawn c times needs c batches: near-equal ones
        sizes = [units // min_batches + (b < units % min_batches) for b in range(min_batches)]
    else:
        sizes = [per] * (units // per) + ([units % per] if units % per else [])
        if len(sizes) > 1 and sizes[-1] * multiple_of < 2:  # a lone row has no negative: share with the last batch
            both = sizes[-2] + sizes[-1]
            sizes[-2:] = [both - both // 2, both // 2]
    sizes = [s * multiple_of for s in sizes]
    if not sizes or min(sizes) < max(2, multiple_of):
        raise CacheError(f"only {n} training draws for {len(sizes)} batch(es): every batch needs at least 2 rows "
                         f"(and {multiple_of} per rank); use more clips or a smaller --batch-size")
    return sizes


def _separate_duplicates(pool: list[tuple[int, int]], sizes: list[int]) -> list[list[tuple[int, int]]]:
    """Cut the shuffled pool into batches and swap rows until no batch holds a draw twice."""
    bounds = np.cumsum([0] + sizes)
    batches = [pool[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]
    members = [set(b) for b in batches]
    for b, batch in enumerate(batches):
        seen: set = set()
        for j, x in enumerate(batch):
            if x not in seen:
                seen.add(x)
                continue
            for c in [*range(b + 1, len(batches)), *range(b)]:  # later batches first: they are repaired later
                if x in members[c]:
                    continue
                q = next((q for q, y in enumerate(batches[c]) if y not in members[b]), None)
                if q is not None:
                    y = batches[c][q]
                    batch[j], batches[c][q] = y, x
                    if y not in batches[c]:  # c may still hold another copy of y, repaired in its turn
                        members[c].discard(y)
                    members[c].add(x)
                    members[b].add(y)
                    seen.add(y)
                    break
            else:  # cannot happen while every draw count <= number of batches and batches hold >= 2 rows
                raise AssertionError(f"no batch can take a second draw of {x}")
    return batches


def epoch_batches(indices: list[PairIndex], cfg: SamplerConfig, seed: int, epoch: int, batch_size: int,
                  p_swap: float, multiple_of: int = 1) -> list[BatchSpec]:
    """The batches of one epoch, a pure function of (seed, epoch): resumes, ranks and sources agree on it."""
    rng = np.random.default_rng([seed, epoch])
    pool: list[tuple[int, int]] = []
    for d, index in enumerate(indices):
        pool += [(d, int(k)) for k in weighted_draws(index.items("train"), index.spec.weight, rng)]
    pool = [pool[i] for i in rng.permutation(len(pool))]
    max_draws = max((math.ceil(ix.spec.weight) for ix in indices), default=1)
    sizes = batch_sizes(len(pool), batch_size, multiple_of, max_draws)
    k_max = max((ix.max_swaps for ix in indices), default=0) if cfg.swap else 0
    return [_batch_spec(chunk, indices, cfg, k_max, p_swap, rng) for chunk in _separate_duplicates(pool, sizes)]


def _batch_spec(chunk, indices: list[PairIndex], cfg: SamplerConfig, k_max: int, p_swap: float,
                rng: np.random.Generator) -> BatchSpec:
    """One batch's rows: a random window per clip, its text (tags, caption or view) and its swaps."""
    audio_rows, text_rows = [], []
    hard = np.full((len(chunk), k_max), -1, dtype=np.int64)
    use_hard = rng.random(len(chunk)) < p_swap
    for j, (d, k) in enumerate(chunk):
        index = indices[d]
        s, n = index.item_rows[k]
        audio_rows.append(int(s + rng.integers(n)))
        if rng.random() < cfg.p_cap and (index.captions[k] or index.views[k]):
            pool_k = index.views[k] if cfg.views and index.views[k] else None
            text = int(rng.choice(pool_k)) if pool_k else index.fixed_text(k, 1.0)
        else:
            text = index.fixed_text(k, 0.0)
        text_rows.append(text)
        if k_max and use_hard[j]:
            swaps = index.swaps.get((k, text), [])
            hard[j, : len(swaps)] = swaps
    return BatchSpec(np.array([d for d, _ in chunk]), np.array(audio_rows), np.array(text_rows), hard)
