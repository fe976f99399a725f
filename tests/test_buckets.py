"""Length buckets: fewer padded tokens, the same embeddings in the input order."""

import numpy as np
import pytest
import torch

from duetmc.heads.buckets import MIN_BUCKETED_BATCH, encode_bucketed, length_buckets, split_points
from duetmc.heads.model import DuetHeads, HeadsConfig


def padded_tokens(buckets, lengths):
    return sum(len(b) * int(lengths[b].max()) for b in buckets)


def test_split_points_minimise_padding_plus_bucket_cost():
    # two clusters: short (3) and long (20) texts; one bucket costs 100 + 50*20 = 1100 tokens,
    # two cost 2*100 + 25*3 + 25*20 = 775, three or more only add bucket costs
    lengths = np.array([3] * 25 + [20] * 25)
    assert split_points(lengths, cost=100) == [3, 20]
    # with a bucket as dear as 600 tokens the split no longer pays: 1,200 + 575 > 600 + 1,000
    assert split_points(lengths, cost=600) == [20]


def test_buckets_are_a_permutation_sorted_by_length_and_save_padding():
    lengths = torch.from_numpy(np.random.default_rng(0).integers(1, 40, 500))
    buckets = length_buckets(lengths)
    order = torch.cat(buckets)
    assert sorted(order.tolist()) == list(range(500))
    assert (lengths[order][1:] >= lengths[order][:-1]).all()
    assert padded_tokens(buckets, lengths) < 0.7 * 500 * int(lengths.max())


def test_small_batches_are_one_bucket():
    lengths = torch.arange(1, MIN_BUCKETED_BATCH)
    assert [b.tolist() for b in length_buckets(lengths)] == [list(range(MIN_BUCKETED_BATCH - 1))]


@pytest.mark.parametrize("grad", [False, True])
def test_bucketed_text_embeddings_equal_one_padded_batch(grad):
    torch.manual_seed(0)
    heads = DuetHeads(HeadsConfig(audio_dim=8, audio_layers=1, text_dim=12, text_layers=2, dim=16, dropout=0.0))
    n, t = 300, 30
    lengths = torch.from_numpy(np.random.default_rng(1).integers(1, t + 1, n))
    x = torch.randn(n, 2, t, 12).half()
    with torch.set_grad_enabled(grad):
        got = heads.encode_text(x, lengths)
        ref = heads.text_projection(heads.text_aggregator(x.float()), lengths)  # one padded batch
    assert len(length_buckets(lengths)) > 3
    torch.testing.assert_close(got, ref, atol=2e-6, rtol=1e-5)
    if grad:  # gradients reach every item through the scatter back to input order
        got.sum().backward()
        assert heads.text_projection.linear.weight.grad.abs().sum() > 0


def test_encode_bucketed_rejects_lengths_of_another_batch():
    with pytest.raises(ValueError, match=r"lengths must have shape \[5\]"):
        encode_bucketed(lambda x, l: x, torch.zeros(5, 1, 3, 2), torch.ones(4, dtype=torch.long))
