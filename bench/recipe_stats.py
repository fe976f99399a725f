"""Per-query scores of trained runs and the statistics of the recipe's steps (bench/recipe.py).

The evaluator reports means over subsets; a paired bootstrap needs the score of every query. For a
run and a test cache, `query_scores` embeds the clips and the queries with the evaluator's own
functions and ranks each query among the clips of every subset the evaluator uses (same seed, same
size), so a query's score is its hit rate at k over the subsets that hold its target. Averaging them
gives the evaluator's R@k up to the weighting of subsets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from duetmc import metrics, stats
from duetmc.pairs import PairIndex
from duetmc.evaluate import EvalConfig, embed_items, embed_texts, queries

KS = (1, 5, 10)
PAPER_STEP = "1-5"  # Table 4: each idea adds roughly 1-5 R@10 points per dataset


def query_scores(model, index: PairIndex, cfg: EvalConfig, source=None, d: int = 0) -> dict:
    """{"query_rows": [Q], "R@k": [Q] hit rates over subsets} for the split's queries in English."""
    from duetmc.feature_source import MemorySource

    own = source is None
    if own:
        source, d = MemorySource([index], cfg.device), 0
    try:
        items = index.items(cfg.split)
        item_emb = embed_items(model, source, d, index, items)
        q = queries(index, items, getattr(cfg, "queries", "human"))
        chosen = q.get("en") or q.get("tags") or next(iter(q.values()))
        rows, targets = chosen.rows, chosen.targets
        q_emb = embed_texts(model, source, d, rows)
    finally:
        if own:
            source.close()
    hits = {k: np.zeros(len(rows)) for k in KS}
    seen = np.zeros(len(rows))
    for subset in metrics.item_subsets(len(items), cfg.subset_size, cfg.n_subsets, cfg.seed):
        position = np.full(len(items), -1)
        position[subset] = np.arange(len(subset))
        local = position[targets]
        chosen = np.flatnonzero(local >= 0)
        ranks = metrics.retrieval_ranks(q_emb[chosen] @ item_emb[subset].T, local[chosen])
        seen[chosen] += 1
        for k in KS:
            hits[k][chosen] += ranks <= k
    keep = seen > 0
    out = {"query_rows": np.asarray(rows)[keep]}
    out.update({f"R@{k}": 100.0 * hits[k][keep] / seen[keep] for k in KS})
    return out


def save_scores(path: Path, scores: dict) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **scores)
    tmp.replace(path)


def load_scores(path: Path) -> dict | None:
    if not path.exists():
        return None
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def stack(scores: list[dict], key: str = "R@10") -> np.ndarray:
    """[seeds, queries] for one configuration; every seed must have scored the same queries."""
    rows = [s["query_rows"] for s in scores]
    for r in rows[1:]:
        if not np.array_equal(r, rows[0]):
            raise ValueError("runs of one configuration were scored on different queries; delete their score files")
    return np.stack([s[key] for s in scores])


def step_statistics(before: np.ndarray, after: np.ndarray, table_before: dict, table_after: dict,
                    n_boot: int, seed: int) -> dict:
    """The paired bootstrap CI of one step's R@10 difference, and the smallest difference it could detect.

    `before`/`after` are [seeds, queries] R@10 scores; `table_*` the ablation's aggregated rows
    (R@10_std across seeds, R@10_subset_std across subsets).
    """
    ci = stats.paired_bootstrap_ci(before, after, n_boot=n_boot, seed=seed)
    n_seeds = before.shape[0]
    seed_std = float(np.hypot(table_before["R@10_std"], table_after["R@10_std"]) / np.sqrt(2))
    subset_std = float(np.hypot(table_before["R@10_subset_std"], table_after["R@10_subset_std"]) / np.sqrt(2))
    return {
        "delta_R@10": ci.estimate, "ci_low": ci.low, "ci_high": ci.high, "se": ci.se,
        "excludes_zero": ci.excludes_zero, "n_boot": n_boot, "n_seeds": n_seeds, "n_queries": int(before.shape[1]),
        # paired: the bootstrap SE over queries and seeds of this very comparison
        "mde_paired": stats.min_detectable_effect(ci.se),
        # unpaired and conservative: seed spread plus the spread of one 500-clip subset
        "mde_unpaired": stats.min_detectable_effect(stats.difference_se(seed_std, subset_std, n_seeds)),
        "seed_std": seed_std, "subset_std": subset_std, "paper_step": PAPER_STEP,
    }
