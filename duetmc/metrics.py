"""Retrieval metrics. Every evaluation convention lives here, stated once and tested:

- **Scores** are cosine similarities: embeddings are L2-normalised here, so baselines (e.g. CLAP
  embeddings) are scored exactly like ours.
- **Ranks start at 1.** R@k is the percentage of queries whose rank is <= k.
- **Ties are worst-case**: a target's rank is 1 + the number of *other* candidates scoring >= it,
  i.e. every tie is broken against the target. A constant model therefore scores rank N, not 1.
- **Targets are item indices**, never caption text: two identical captions of different clips are
  two queries with different targets.
- **Every caption is a query** (several captions per clip, e.g. Song Describer, give several
  queries with the same target).
- **Music -> text**: each item queries the candidate texts; it has one or more positive texts, and
  its rank is that of its best positive, worst-case among ties:
  1 + #(negative texts scoring >= its best positive's score).
- **Subsets**: metrics are computed on `n_subsets` seeded random subsets of `subset_size` items and
  averaged; `<metric>_std` is the spread over subsets (0 with a single subset). Only items in the
  subset are candidates, and the queries are all texts whose target item is in the subset. When
  there are no more than `subset_size` items (or `subset_size=None`), the whole set is used once.
- **Non-finite scores are refused** (`NonFiniteError`): a NaN never compares >= anything, so it would
  get rank 0 and count as a hit at every k.
- **Chance level**: a random ranking of N candidates puts the target in the top k with probability
  min(k, N) / N (`chance_levels`); every reported R@k should be read against it.
- Memory stays bounded: similarities are computed in query chunks of at most `max_bytes`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from duetmc.errors import DuetmcError

DEFAULT_MAX_BYTES = 256 * 2**20
RANK_METRICS = ("R@1", "R@5", "R@10", "MedR")


class NonFiniteError(DuetmcError, ValueError):
    """Embeddings or scores hold NaN or Inf; ranking them would count them as hits."""


def check_finite(x: np.ndarray, what: str) -> None:
    """Refuse NaN/Inf in `x` with one line saying how many rows are affected."""
    bad = ~np.isfinite(x)
    if bad.any():
        rows = np.flatnonzero(bad.reshape(len(x), -1).any(axis=1)) if x.ndim > 1 else np.flatnonzero(bad)
        raise NonFiniteError(f"{what}: {rows.size} of {len(x)} row(s) hold NaN or Inf (first row {int(rows[0])}); "
                             "ranking would count them as hits, so fix the model or features that produced them")


def chance_levels(n_candidates: int, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """R@k (percent) of a random ranking over `n_candidates` items: min(k, N) / N."""
    n = max(1, int(n_candidates))
    return {f"R@{k}": 100.0 * min(k, n) / n for k in ks}


def _chunk_rows(n_cols: int, max_bytes: int, bytes_per_cell: int) -> int:
    return max(1, max_bytes // max(1, n_cols * bytes_per_cell))


def _normalise(x, what: str = "embeddings") -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be [n, dim], got shape {x.shape}")
    check_finite(x, what)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def retrieval_ranks(sim, target, max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    """1-based worst-case ranks: `rank[q] = #{n : sim[q, n] >= sim[q, target[q]]}`.

    sim: `[Q, N]` scores; target: `[Q]` column of each query's positive. Works in row chunks so the
    temporaries stay under `max_bytes`.
    """
    sim = np.asarray(sim)
    target = np.asarray(target, dtype=np.int64)
    if sim.ndim != 2 or target.shape != (sim.shape[0],):
        raise ValueError(f"need sim [Q, N] and target [Q]; got {sim.shape} and {target.shape}")
    check_finite(sim, "scores")
    q, n = sim.shape
    if q and (target.min() < 0 or target.max() >= n):
        raise ValueError(f"targets must index the {n} candidates, got range [{target.min()}, {target.max()}]")
    ranks = np.empty(q, dtype=np.int64)
    step = _chunk_rows(n, max_bytes, 1)  # the bool comparison is the only Q_chunk x N temporary
    for start in range(0, q, step):
        block = sim[start : start + step]
        rows = np.arange(block.shape[0])
        own = block[rows, target[start : start + step]]
        ranks[start : start + step] = np.count_nonzero(block >= own[:, None], axis=1)
    return ranks


def best_positive_ranks(sim, positive, max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    """1-based worst-case rank of each row's best positive: `1 + #{negatives >= best positive}`.

    sim: `[Q, N]` scores; positive: `[Q, N]` bool with at least one True per row.
    """
    sim = np.asarray(sim)
    positive = np.asarray(positive, dtype=bool)
    if sim.shape != positive.shape or sim.ndim != 2:
        raise ValueError(f"need sim and positive of the same [Q, N] shape; got {sim.shape}, {positive.shape}")
    if not positive.any(axis=1).all():
        raise ValueError("every query needs at least one positive")
    check_finite(sim, "scores")
    q, n = sim.shape
    ranks = np.empty(q, dtype=np.int64)
    step = _chunk_rows(n, max_bytes, sim.itemsize + 3)  # masked scores + three bool temporaries
    for start in range(0, q, step):
        block, pos = sim[start : start + step], positive[start : start + step]
        best = np.where(pos, block, -np.inf).max(axis=1)
        ranks[start : start + step] = 1 + np.count_nonzero((block >= best[:, None]) & ~pos, axis=1)
    return ranks


def _embedding_ranks(query, items, target=None, positive_of=None, max_bytes=DEFAULT_MAX_BYTES):
    """Ranks from unit embeddings without materialising the full `[Q, N]` score matrix.

    Exactly one of `target[Q]` (single positive column) or `positive_of` (`[Q]` key per query and
    `[N]` key per candidate, as a pair; positives share a key) is given.
    """
    q, n = query.shape[0], items.shape[0]
    ranks = np.empty(q, dtype=np.int64)
    # Per cell: float32 scores, the positive mask, and the temporaries of the rank functions
    # (at most 4 + 3 bytes), so one block plus its ranking stays under max_bytes.
    step = _chunk_rows(n, max_bytes, 4 + 1 + 4 + 3)
    for start in range(0, q, step):
        stop = min(q, start + step)
        block = query[start:stop] @ items.T
        if target is not None:
            ranks[start:stop] = retrieval_ranks(block, target[start:stop], max_bytes=max_bytes)
        else:
            query_keys, item_keys = positive_of
            pos = query_keys[start:stop, None] == item_keys[None, :]
            ranks[start:stop] = best_positive_ranks(block, pos, max_bytes=max_bytes)
    return ranks


def rank_summary(ranks: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """R@k (percent), median and mean rank of a set of 1-based ranks."""
    out = {f"R@{k}": 100.0 * float(np.mean(ranks <= k)) for k in ks}
    out["MedR"] = float(np.median(ranks))
    out["MeanR"] = float(np.mean(ranks))
    return out


def item_subsets(n_items: int, subset_size: int | None, n_subsets: int, seed: int) -> list[np.ndarray]:
    """The seeded item subsets the metrics average over (sorted item indices; the whole set once
    when `n_items <= subset_size` or `subset_size` is None)."""
    if subset_size is None or n_items <= subset_size:
        return [np.arange(n_items)]
    if n_subsets < 1:
        raise ValueError(f"n_subsets must be at least 1, got {n_subsets}")
    rng = np.random.default_rng(seed)
    return [np.sort(rng.choice(n_items, size=subset_size, replace=False)) for _ in range(n_subsets)]


def _average(per_subset: list[dict[str, float]], n_queries: list[int], n_items: int, subset_size: int | None,
             empty: str) -> dict:
    """Mean and std over subsets of each metric, with the subset bookkeeping; `empty` is the error."""
    if not per_subset:
        raise ValueError(empty)
    out: dict = {}
    for key in per_subset[0]:
        values = np.array([m[key] for m in per_subset])
        out[key] = float(values.mean())
        out[f"{key}_std"] = float(values.std())
    out.update(n_subsets=len(per_subset), subset_size=int(min(n_items, subset_size or n_items)),
               n_queries=float(np.mean(n_queries)))
    return out


def _check_index(index, n: int, what: str) -> np.ndarray:
    index = np.asarray(index, dtype=np.int64)
    if index.ndim != 1 or (index.size and (index.min() < 0 or index.max() >= n)):
        raise ValueError(f"{what} must be a 1-D array of item indices in [0, {n}); got shape {index.shape}")
    return index


def retrieval_metrics(
    query_emb,
    item_emb,
    query_item,
    subset_size: int | None = 500,
    n_subsets: int = 10,
    seed: int = 0,
    ks: Sequence[int] = (1, 5, 10),
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> dict:
    """Text -> music retrieval. query_emb `[Q, d]`, item_emb `[N, d]`, query_item `[Q]` target index.

    Returns `R@k`, `MedR`, `MeanR` averaged over subsets, each with `<key>_std`, plus `n_subsets`,
    `subset_size` (items per subset) and `n_queries` (mean queries per subset).
    """
    queries, items = _normalise(query_emb, "query embeddings"), _normalise(item_emb, "item embeddings")
    query_item = _check_index(query_item, items.shape[0], "query_item")
    if query_item.shape[0] != queries.shape[0]:
        raise ValueError(f"{queries.shape[0]} query embeddings but {query_item.shape[0]} query targets")
    per_subset, n_queries = [], []
    for subset in item_subsets(items.shape[0], subset_size, n_subsets, seed):
        position = np.full(items.shape[0], -1, dtype=np.int64)
        position[subset] = np.arange(subset.size)
        local = position[query_item]
        chosen = np.flatnonzero(local >= 0)
        if chosen.size == 0:
            continue  # no caption of any sampled item: nothing to score in this subset
        ranks = _embedding_ranks(queries[chosen], items[subset], target=local[chosen], max_bytes=max_bytes)
        per_subset.append(rank_summary(ranks, ks))
        n_queries.append(chosen.size)
    return _average(per_subset, n_queries, items.shape[0], subset_size,
                    "no query has its target among the items; check query_item")


def music_to_text_metrics(
    item_emb,
    text_emb,
    text_item,
    subset_size: int | None = 500,
    n_subsets: int = 10,
    seed: int = 0,
    ks: Sequence[int] = (1, 5, 10),
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> dict:
    """Music -> text retrieval over the same item subsets as `retrieval_metrics` (same seed).

    Each subset item that has at least one text queries all texts of the subset's items; its rank is
    its best positive's (worst-case ties). Same output keys as `retrieval_metrics`.
    """
    items, texts = _normalise(item_emb, "item embeddings"), _normalise(text_emb, "text embeddings")
    text_item = _check_index(text_item, items.shape[0], "text_item")
    if text_item.shape[0] != texts.shape[0]:
        raise ValueError(f"{texts.shape[0]} text embeddings but {text_item.shape[0]} text owners")
    has_text = np.zeros(items.shape[0], dtype=bool)
    has_text[text_item] = True
    per_subset, n_queries = [], []
    for subset in item_subsets(items.shape[0], subset_size, n_subsets, seed):
        in_subset = np.zeros(items.shape[0], dtype=bool)
        in_subset[subset] = True
        candidates = np.flatnonzero(in_subset[text_item])
        query_items = subset[has_text[subset]]
        if query_items.size == 0:
            continue
        ranks = _embedding_ranks(
            items[query_items],
            texts[candidates],
            positive_of=(query_items, text_item[candidates]),
            max_bytes=max_bytes,
        )
        per_subset.append(rank_summary(ranks, ks))
        n_queries.append(query_items.size)
    return _average(per_subset, n_queries, items.shape[0], subset_size, "no item has a text; check text_item")


def tag_retrieval_metrics(tag_emb, item_emb, labels) -> dict:
    """Zero-shot tag retrieval (TTMR style): each tag's text embedding scores every item.

    labels `[N, G]` bool (item n has tag g). Returns macro ROC-AUC and PR-AUC (average precision)
    over tags, in [0, 1]. Tags with no positive or no negative item have no AUC and are skipped;
    `n_tags` says how many were scored.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    tags, items = _normalise(tag_emb, "tag embeddings"), _normalise(item_emb, "item embeddings")
    labels = np.asarray(labels, dtype=bool)
    if labels.shape != (items.shape[0], tags.shape[0]):
        raise ValueError(f"labels must be [{items.shape[0]} items, {tags.shape[0]} tags], got {labels.shape}")
    scores = items @ tags.T
    n_pos = labels.sum(axis=0)
    usable = np.flatnonzero((n_pos > 0) & (n_pos < labels.shape[0]))
    if usable.size == 0:
        raise ValueError("no tag has both positive and negative items; AUCs are undefined")
    return {
        "roc_auc": float(roc_auc_score(labels[:, usable], scores[:, usable], average="macro")),
        "pr_auc": float(average_precision_score(labels[:, usable], scores[:, usable], average="macro")),
        "n_tags": int(usable.size),
        "n_tags_skipped": int(tags.shape[0] - usable.size),
    }


def _cell(metrics: dict | None, key: str, digits: int) -> str:
    if metrics is None or key not in metrics:
        return "–"
    text = f"{metrics[key]:.{digits}f}"
    if f"{key}_std" in metrics:
        text += f" ± {metrics[f'{key}_std']:.{digits}f}"
    return text


def markdown_table(
    rows: list[dict],
    metrics: Sequence[str] = RANK_METRICS,
    config_key: str = "config",
    dataset_key: str = "dataset",
    digits: int = 1,
) -> str:
    """A Table-4-style Markdown table: one row per configuration, `R@1 R@5 R@10 MedR` per dataset.

    rows: long format, one dict per (configuration, dataset) holding `config`, `dataset` and metric
    values, optionally `<metric>_std` (shown as `mean ± std`). Rows and dataset columns keep their
    first-appearance order; missing cells show "–".
    """
    configs: list[str] = []
    datasets: list[str] = []
    cells: dict[tuple[str, str], dict] = {}
    for row in rows:
        config, dataset = str(row[config_key]), str(row[dataset_key])
        if config not in configs:
            configs.append(config)
        if dataset not in datasets:
            datasets.append(dataset)
        cells[(config, dataset)] = row
    header = ["Configuration"] + [f"{d} {m}" for d in datasets for m in metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for config in configs:
        values = [_cell(cells.get((config, d)), m, digits) for d in datasets for m in metrics]
        lines.append("| " + " | ".join([config] + values) + " |")
    return "\n".join(lines) + "\n"
