import tracemalloc

import numpy as np
import pytest

from duetmc.metrics import (
    DEFAULT_MAX_BYTES,
    best_positive_ranks,
    item_subsets,
    markdown_table,
    music_to_text_metrics,
    rank_summary,
    retrieval_metrics,
    retrieval_ranks,
    tag_retrieval_metrics,
)

# --- independent brute force (plain Python loops) -------------------------------------------------


def brute_rank(scores, positives):
    """1 + number of negatives scoring >= the best positive (worst-case ties, 1-based)."""
    best = max(scores[j] for j in positives)
    return 1 + sum(1 for j, s in enumerate(scores) if j not in positives and s >= best)


def brute_summary(ranks):
    ranks = list(ranks)
    out = {f"R@{k}": 100.0 * sum(r <= k for r in ranks) / len(ranks) for k in (1, 5, 10)}
    ordered = sorted(ranks)
    mid = len(ordered) // 2
    out["MedR"] = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    out["MeanR"] = sum(ranks) / len(ranks)
    return out


def cosine(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a.astype(np.float32) @ b.astype(np.float32).T)


def brute_text_to_music(queries, items, query_item, subset):
    sim = cosine(queries, items[subset])
    ranks = []
    for q, target in enumerate(query_item):
        if target in subset:
            ranks.append(brute_rank(list(sim[q]), {list(subset).index(target)}))
    return brute_summary(ranks)


def brute_music_to_text(items, texts, text_item, subset):
    candidates = [j for j, owner in enumerate(text_item) if owner in subset]
    sim = cosine(items, texts[candidates])
    ranks = []
    for i in subset:
        positives = {c for c, j in enumerate(candidates) if text_item[j] == i}
        if positives:
            ranks.append(brute_rank(list(sim[i]), positives))
    return brute_summary(ranks)


def assert_close_dicts(got, expected):
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-9), key


# --- ranks ----------------------------------------------------------------------------------------


def test_ranks_hand_computed_with_ties_are_one_based_and_worst_case():
    sim = np.array(
        [
            [0.9, 0.1, 0.5, 0.3],  # target 0 is the best: rank 1
            [0.2, 0.7, 0.7, 0.1],  # target 2 ties with item 1: worst case, rank 2
            [0.5, 0.5, 0.5, 0.5],  # everything tied: rank 4 (a constant model gains nothing)
            [0.4, 0.8, 0.6, 0.0],  # target 3 is the worst: rank 4
        ]
    )
    assert retrieval_ranks(sim, [0, 2, 1, 3]).tolist() == [1, 2, 4, 4]


def test_ranks_match_brute_force_on_random_matrices_with_ties():
    rng = np.random.default_rng(0)
    for q, n in [(1, 1), (7, 3), (40, 25)]:
        sim = rng.integers(0, 4, size=(q, n)).astype(np.float32)  # few values: many ties
        target = rng.integers(0, n, size=q)
        expected = [brute_rank(list(sim[i]), {target[i]}) for i in range(q)]
        assert retrieval_ranks(sim, target).tolist() == expected
        # chunking changes nothing
        assert retrieval_ranks(sim, target, max_bytes=1).tolist() == expected


def test_ranks_reject_targets_outside_the_candidates():
    with pytest.raises(ValueError, match="targets"):
        retrieval_ranks(np.zeros((2, 3)), [0, 3])


def test_best_positive_ranks_hand_computed():
    sim = np.array([[0.1, 0.9, 0.8, 0.9], [0.3, 0.3, 0.2, 0.3]])
    positive = np.array([[False, False, True, True], [True, False, True, False]])
    # row 0: best positive 0.9 ties with negative 1 -> rank 2; row 1: 0.3 ties with negatives 1 and 3
    assert best_positive_ranks(sim, positive).tolist() == [2, 3]
    # two tied positives and nothing above: rank 1 (ties among positives never hurt)
    assert best_positive_ranks(np.array([[0.5, 0.5, 0.1]]), np.array([[True, True, False]])).tolist() == [1]


def test_best_positive_ranks_match_brute_force():
    rng = np.random.default_rng(1)
    sim = rng.integers(0, 5, size=(30, 12)).astype(np.float32)
    positive = rng.random((30, 12)) < 0.2
    positive[np.arange(30), rng.integers(0, 12, 30)] = True
    expected = [brute_rank(list(sim[i]), set(np.flatnonzero(positive[i]))) for i in range(30)]
    assert best_positive_ranks(sim, positive).tolist() == expected
    assert best_positive_ranks(sim, positive, max_bytes=1).tolist() == expected


def test_rank_summary_hand_computed():
    out = rank_summary(np.array([1, 2, 6, 11]))
    assert out == {"R@1": 25.0, "R@5": 50.0, "R@10": 75.0, "MedR": 4.0, "MeanR": 5.0}


# --- subsets and protocol -------------------------------------------------------------------------


def test_item_subsets_are_seeded_distinct_and_whole_set_when_small():
    subsets = item_subsets(2000, 500, 10, seed=0)
    assert len(subsets) == 10
    for s in subsets:
        assert s.size == 500 and len(set(s.tolist())) == 500 and np.all(np.diff(s) > 0)
        assert s.min() >= 0 and s.max() < 2000
    assert all(np.array_equal(a, b) for a, b in zip(subsets, item_subsets(2000, 500, 10, seed=0)))
    assert not np.array_equal(subsets[0], item_subsets(2000, 500, 10, seed=1)[0])
    assert not np.array_equal(subsets[0], subsets[1])
    for small in (item_subsets(500, 500, 10, 0), item_subsets(300, 500, 10, 0), item_subsets(2000, None, 10, 0)):
        assert len(small) == 1 and np.array_equal(small[0], np.arange(small[0].size))


def test_defaults_are_500_item_subsets_and_r_at_1_5_10():
    rng = np.random.default_rng(2)
    items = rng.normal(size=(1200, 8))
    out = retrieval_metrics(items + 0.5 * rng.normal(size=items.shape), items, np.arange(1200))
    assert out["subset_size"] == 500 and out["n_subsets"] == 10
    assert {"R@1", "R@5", "R@10", "MedR", "MeanR", "R@10_std"} <= out.keys()


def test_text_to_music_matches_brute_force_on_subsets():
    rng = np.random.default_rng(3)
    n_items, n_queries = 60, 150
    items = rng.normal(size=(n_items, 6))
    query_item = rng.integers(0, n_items, n_queries)  # several captions per clip, some clips none
    queries = items[query_item] + 1.5 * rng.normal(size=(n_queries, 6))
    out = retrieval_metrics(queries, items, query_item, subset_size=20, n_subsets=5, seed=7)
    per_subset = [brute_text_to_music(queries, items, query_item, s) for s in item_subsets(60, 20, 5, 7)]
    for key in ("R@1", "R@5", "R@10", "MedR", "MeanR"):
        values = [m[key] for m in per_subset]
        assert out[key] == pytest.approx(np.mean(values))
        assert out[f"{key}_std"] == pytest.approx(np.std(values))
    assert out["R@10"] > 0 and out["R@10_std"] > 0  # the check above is not vacuous
    assert out["n_subsets"] == 5 and out["subset_size"] == 20


def test_whole_set_when_small_and_perfect_and_constant_models():
    rng = np.random.default_rng(4)
    items = rng.normal(size=(30, 16))
    perfect = retrieval_metrics(items, items, np.arange(30))
    assert perfect["n_subsets"] == 1 and perfect["R@1"] == 100.0 and perfect["MedR"] == 1.0
    assert perfect["R@1_std"] == 0.0
    # a model that maps everything to one point ranks every target last (worst-case ties)
    constant = retrieval_metrics(np.ones((30, 4)), np.ones((30, 4)), np.arange(30))
    assert constant["R@10"] == 0.0 and constant["MedR"] == 30.0


def test_targets_are_item_indices_not_caption_text():
    """Two identical captions of different clips are two queries with different targets."""
    items = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    queries = np.array([[1.0, 0.1], [1.0, 0.1], [0.0, 1.0]])  # captions 0 and 1 are identical
    ranks = retrieval_ranks(cosine(queries, items), [0, 2, 1])
    assert ranks.tolist() == [1, 2, 1]
    out = retrieval_metrics(queries, items, [0, 2, 1])
    assert out["n_queries"] == 3 and out["R@1"] == pytest.approx(200 / 3)


def test_items_outside_the_subset_are_not_candidates():
    rng = np.random.default_rng(5)
    items = rng.normal(size=(10, 4))
    queries = np.repeat(items[:1], 10, axis=0)  # every query is the same vector
    # All queries agree on one best item, so exactly one query per candidate set is right:
    # R@1 is 1/3 with 3-item subsets, but would be 1/10 if the other 7 items competed.
    out = retrieval_metrics(queries, items, np.arange(10), subset_size=3, n_subsets=4, seed=0)
    assert out["R@1"] == pytest.approx(100 / 3) and out["R@1_std"] == pytest.approx(0)
    whole = retrieval_metrics(queries, items, np.arange(10), subset_size=None)
    assert whole["R@1"] == pytest.approx(10.0)


def test_music_to_text_matches_brute_force_and_hand_case():
    # item 0 has texts 0 and 1; text 1 is the best match, text 0 is beaten by text 2 (item 1's)
    items = np.array([[1.0, 0.0], [0.0, 1.0]])
    texts = np.array([[0.6, 0.8], [1.0, 0.05], [0.8, 0.6]])
    out = music_to_text_metrics(items, texts, [0, 0, 1])
    # item 0: best positive is text 1 -> rank 1; item 1: text 2 (0.6) vs text 0 (0.8) -> rank 2
    assert out["R@1"] == 50.0 and out["MeanR"] == 1.5 and out["n_queries"] == 2

    rng = np.random.default_rng(6)
    items = rng.normal(size=(40, 5))
    text_item = rng.integers(0, 40, 90)
    texts = items[text_item] + 1.5 * rng.normal(size=(90, 5))
    out = music_to_text_metrics(items, texts, text_item, subset_size=15, n_subsets=4, seed=3)
    per_subset = [brute_music_to_text(items, texts, text_item, s) for s in item_subsets(40, 15, 4, 3)]
    for key in ("R@1", "R@5", "R@10", "MedR", "MeanR"):
        assert out[key] == pytest.approx(np.mean([m[key] for m in per_subset]))


def test_metric_inputs_are_checked():
    with pytest.raises(ValueError, match="query_item"):
        retrieval_metrics(np.ones((2, 3)), np.ones((4, 3)), [0, 4])
    with pytest.raises(ValueError, match="query targets"):
        retrieval_metrics(np.ones((2, 3)), np.ones((4, 3)), [0, 1, 2])


# --- memory bound ---------------------------------------------------------------------------------


def peak_bytes(fn):
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("direction", ["text_to_music", "music_to_text"])
def test_chunking_bounds_memory_small(direction):
    rng = np.random.default_rng(7)
    n, d, budget = 3000, 32, 2 * 2**20
    queries = rng.normal(size=(n, d)).astype(np.float32)
    items = rng.normal(size=(n, d)).astype(np.float32)
    owner = np.arange(n)
    fn = retrieval_metrics if direction == "text_to_music" else music_to_text_metrics
    args = (queries, items, owner) if direction == "text_to_music" else (items, queries, owner)
    peak = peak_bytes(lambda: fn(*args, subset_size=None, max_bytes=budget))
    inputs = queries.nbytes + items.nbytes  # the normalised copies of the embeddings
    assert peak < budget + inputs + 2**20
    # the measurement sees numpy's allocations: unchunked, the peak holds the full score matrix
    unbounded = peak_bytes(lambda: fn(*args, subset_size=None, max_bytes=2**40))
    assert unbounded > n * n * 4 > 4 * budget


@pytest.mark.slow
def test_ten_thousand_squared_stays_under_the_default_chunk_bound():
    rng = np.random.default_rng(8)
    n, d = 10_000, 256
    queries = rng.normal(size=(n, d)).astype(np.float32)
    items = rng.normal(size=(n, d)).astype(np.float32)
    peak = peak_bytes(lambda: retrieval_metrics(queries, items, np.arange(n), subset_size=None))
    assert n * n * 4 > DEFAULT_MAX_BYTES  # the full matrix alone would exceed the bound
    assert peak < DEFAULT_MAX_BYTES + queries.nbytes + items.nbytes + 2**20


# --- tag retrieval --------------------------------------------------------------------------------


def brute_auc(labels, scores):
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def brute_average_precision(labels, scores):
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    hits, total = 0, 0.0
    for position, i in enumerate(order, start=1):
        if labels[i]:
            hits += 1
            total += hits / position
    return total / hits


def test_tag_retrieval_aucs_match_brute_force_and_skip_degenerate_tags():
    rng = np.random.default_rng(9)
    n, g, d = 50, 6, 8
    tags = rng.normal(size=(g, d))
    labels = rng.random((n, g)) < 0.3
    labels[:, 4] = False  # no positive: AUC undefined, skipped
    labels[:, 5] = True  # no negative: skipped
    items = labels[:, :4].astype(float) @ tags[:4] + 1.0 * rng.normal(size=(n, d))
    out = tag_retrieval_metrics(tags, items, labels)
    scores = cosine(items, tags)
    rocs = [brute_auc(labels[:, j], scores[:, j]) for j in range(4)]
    aps = [brute_average_precision(labels[:, j], scores[:, j]) for j in range(4)]
    assert out["roc_auc"] == pytest.approx(np.mean(rocs), rel=1e-6)
    assert out["pr_auc"] == pytest.approx(np.mean(aps), rel=1e-6)
    assert out["n_tags"] == 4 and out["n_tags_skipped"] == 2
    assert out["roc_auc"] > 0.6  # the signal is real


def test_tag_retrieval_hand_case():
    tags = np.array([[1.0, 0.0]])
    items = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.1]])
    labels = np.array([[True], [False], [False], [True]])
    # positive scores 1.0 and ~-1; negatives 0 and 0.707: 2 of 4 pairs won
    out = tag_retrieval_metrics(tags, items, labels)
    assert out["roc_auc"] == pytest.approx(0.5)
    assert out["pr_auc"] == pytest.approx((1 / 1 + 2 / 4) / 2)


# --- table ----------------------------------------------------------------------------------------


def test_markdown_table_layout():
    rows = [
        {"config": "tags only", "dataset": "MusicCaps", "R@1": 1.0, "R@5": 4.5, "R@10": 8.25,
         "MedR": 101.0, "R@10_std": 0.5},
        {"config": "tags only", "dataset": "SDD", "R@1": 2.0, "R@5": 6.0, "R@10": 11.0, "MedR": 60.0},
        {"config": "+ TextSwap", "dataset": "MusicCaps", "R@1": 3.0, "R@5": 9.0, "R@10": 15.0, "MedR": 40.5},
    ]
    assert markdown_table(rows) == (
        "| Configuration | MusicCaps R@1 | MusicCaps R@5 | MusicCaps R@10 | MusicCaps MedR "
        "| SDD R@1 | SDD R@5 | SDD R@10 | SDD MedR |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        "| tags only | 1.0 | 4.5 | 8.2 ± 0.5 | 101.0 | 2.0 | 6.0 | 11.0 | 60.0 |\n"
        "| + TextSwap | 3.0 | 9.0 | 15.0 | 40.5 | – | – | – | – |\n"
    )
