"""The sampler: mixing weights as whole permutations, no clip twice in a batch, balanced batch sizes."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pytest

from duetmc.errors import DuetmcError, UsageError
from duetmc.sampler import SamplerConfig, batch_sizes, epoch_batches, weighted_draws


@dataclass
class _Spec:
    weight: float


class FakeIndex:
    """What the sampler reads from a PairIndex: n one-window train clips, each with one tags text."""

    def __init__(self, n: int, weight: float, offset: int = 0):
        self.spec = _Spec(weight)
        self.item_rows = np.stack([np.arange(n) + offset, np.ones(n, dtype=np.int64)], axis=1)
        self.captions = [[] for _ in range(n)]
        self.views = [[] for _ in range(n)]
        self.swaps, self.max_swaps = {}, 0
        self.n = n

    def items(self, split):
        return np.arange(self.n)

    def fixed_text(self, k, p_cap):
        return k


def _draws(batch):
    return list(zip(batch.ds.tolist(), batch.audio_rows.tolist()))


@pytest.mark.parametrize("weights,batch_size", [((1.5,), 64), ((2.0, 0.5), 50), ((1.0, 3.0), 37), ((2.0,), 10_000)])
def test_no_clip_twice_in_a_batch_and_every_clip_seen(weights, batch_size):
    indices = [FakeIndex(n, w) for n, w in zip((300, 70), weights)]
    for epoch in range(20):
        batches = epoch_batches(indices, SamplerConfig(p_cap=0.0), 3, epoch, batch_size, 0.0)
        for b in batches:
            draws = _draws(b)
            assert len(set(draws)) == len(draws)  # no (dataset, clip) twice in one batch
            assert len(draws) <= batch_size
        counts = Counter(x for b in batches for x in _draws(b))
        for d, ix in enumerate(indices):
            mine = {k: c for (dd, k), c in counts.items() if dd == d}
            assert sum(mine.values()) == round(ix.spec.weight * ix.n)
            assert max(mine.values()) <= math.ceil(ix.spec.weight)
            assert min(mine.values()) >= math.floor(ix.spec.weight)
            if ix.spec.weight >= 1:
                assert len(mine) == ix.n  # every clip, every epoch


def test_fractional_weight_draws_a_subset_without_replacement():
    rng = np.random.default_rng(0)
    d = weighted_draws(np.arange(1000), 0.3, rng)
    assert len(d) == 300 and len(np.unique(d)) == 300
    d = weighted_draws(np.arange(1000), 1.5, rng)
    assert sorted(Counter(Counter(d.tolist()).values()).items()) == [(1, 500), (2, 500)]
    with pytest.raises(UsageError, match="--weight -1"):
        weighted_draws(np.arange(10), -1.0, rng)


def test_the_last_partial_batch_is_kept():
    assert batch_sizes(100, 32, 1, 1) == [32, 32, 32, 4]
    assert batch_sizes(65, 32, 1, 1) == [32, 17, 16]  # a lone row would have no negative
    assert batch_sizes(10, 1024, 1, 2) == [5, 5]  # a clip drawn twice needs two batches
    assert batch_sizes(103, 32, 4, 1) == [32, 32, 32, 4]  # torchrun: multiples of the world size
    assert batch_sizes(60, 16, 2, 1) == batch_sizes(60, 16, 1, 1) == [16, 16, 16, 12]  # ranks see one batching
    with pytest.raises(DuetmcError, match="at least 2 rows"):
        batch_sizes(3, 1024, 1, 2)


def test_epoch_batches_depend_only_on_seed_and_epoch():
    ix = [FakeIndex(50, 1.5)]
    a = epoch_batches(ix, SamplerConfig(), 1, 2, 16, 0.0)
    b = epoch_batches(ix, SamplerConfig(), 1, 2, 16, 0.0)
    c = epoch_batches(ix, SamplerConfig(), 1, 3, 16, 0.0)
    assert [x.audio_rows.tolist() for x in a] == [x.audio_rows.tolist() for x in b]
    assert [x.audio_rows.tolist() for x in a] != [x.audio_rows.tolist() for x in c]
