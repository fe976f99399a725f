"""Per-query scores of trained runs and the statistics of the recipe's steps (bench/recipe.py).

The evaluator reports means over subsets; a paired bootstrap needs the score of every query. For a
run and a test cache, `duetmc.evaluate.query_scores` gives each query's hit rate at k over the
evaluator's own subsets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from duetmc import stats
from duetmc.evaluate import query_scores  # noqa: F401 (used by bench/recipe.py)

PAPER_STEP = "1-5"  # Table 4: each idea adds roughly 1-5 R@10 points per dataset


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
        "seed_std": seed_std, "subset_std": subset_std,
    }
