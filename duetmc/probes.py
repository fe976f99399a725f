"""Probes of what the two text ideas claim, run on every evaluation.

- **Swap accuracy** (what TextSwap trains for): for each evaluated clip and each of its human or tags
  texts, the fraction of that text's TextSwap variants, per category, that the clip scores *below*
  the true text. Chance is about 50 %; a model that ignores the swapped words scores at most that.
  Variants are the `probe_swap` records `duetmc augment` writes for test clips (several per
  category); a cache without them falls back to the training `swap` records (one per category).
- **Partial-query retrieval** (what View Dropout claims to help): text->music R@k when each query is
  built from one tag category only (`probe_partial` records, e.g. just "rock, jazz" for the genre),
  under the same subsets as the main metrics.

Neither probe trains on anything: the records are featurized with the other texts but the trainer
never samples their kinds.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable

import numpy as np

from duetmc import metrics
from duetmc.augment.viewsfile import HUMAN_SOURCES

SWAP_PARENT_KINDS = ("tags", "caption")
PARENT_SOURCES = tuple(sorted(HUMAN_SOURCES))


def _swap_groups(rec: dict, position: np.ndarray) -> tuple[str, dict]:
    """(variant kind used, {(clip position, parent row, category): [variant rows]})."""
    parent_ok = set()
    for j in np.flatnonzero(np.isin(rec["kind"], SWAP_PARENT_KINDS) & np.isin(rec["source"], PARENT_SOURCES)
                            & (rec["lang"] == "en") & (rec["pos"] >= 0)):
        parent_ok.add((int(rec["pos"][j]), int(rec["row"][j])))
    for kind in ("probe_swap", "swap"):
        groups: dict[tuple[int, int, str], list[int]] = defaultdict(list)
        for j in np.flatnonzero((rec["kind"] == kind) & (rec["pos"] >= 0) & (rec["parent"] >= 0)):
            k, parent = int(rec["pos"][j]), int(rec["parent"][j])
            if position[k] >= 0 and (k, parent) in parent_ok:
                variants = groups[(int(position[k]), parent, str(rec["category"][j]))]
                if int(rec["row"][j]) not in variants:
                    variants.append(int(rec["row"][j]))
        if groups:
            return kind, groups
    return "", {}


def swap_accuracy(embed: Callable[[np.ndarray], np.ndarray], rec: dict, position: np.ndarray,
                  item_emb: np.ndarray) -> dict:
    """Per category: mean over (clip, text) of the share of variants scored below the true text (percent)."""
    kind, groups = _swap_groups(rec, position)
    if not groups:
        return {"skipped": "no TextSwap variants of the clips' human or tags texts; run `duetmc augment` "
                           "(it writes probe_swap records for test clips) and featurize its views file"}
    rows = np.array(sorted({r for (_, p, _), v in groups.items() for r in (p, *v)}))
    emb = embed(rows)
    metrics.check_finite(emb, "probe text embeddings")
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    at = {int(r): i for i, r in enumerate(rows)}
    per_cat: dict[str, list[float]] = defaultdict(list)
    n_variants: dict[str, int] = defaultdict(int)
    for (i, parent, cat), variants in groups.items():
        true = float(item_emb[i] @ emb[at[parent]])
        scores = emb[[at[v] for v in variants]] @ item_emb[i]
        per_cat[cat].append(float(np.mean(scores < true)))
        n_variants[cat] += len(variants)
    out = {c: {"accuracy": 100.0 * float(np.mean(v)), "n_texts": len(v), "n_variants": n_variants[c]}
           for c, v in sorted(per_cat.items())}
    return {"variants": kind, "per_category": out,
            "mean": float(np.mean([v["accuracy"] for v in out.values()]))}


def partial_retrieval(embed: Callable[[np.ndarray], np.ndarray], rec: dict, position: np.ndarray,
                      item_emb: np.ndarray, subset_size: int | None, n_subsets: int, seed: int) -> dict:
    """Per category: text->music retrieval with queries built from that category's tags only."""
    chosen = (rec["kind"] == "probe_partial") & (rec["pos"] >= 0)
    chosen &= position[np.maximum(rec["pos"], 0)] >= 0
    if not chosen.any():
        return {"skipped": "no probe_partial records for these clips; run `duetmc augment` (it writes them for "
                           "test clips) and featurize its views file"}
    out = {}
    for cat in sorted(set(rec["category"][chosen].astype(str))):
        sel = np.flatnonzero(chosen & (rec["category"] == cat))
        q = embed(rec["row"][sel])
        m = metrics.retrieval_metrics(q, item_emb, position[rec["pos"][sel]], subset_size, n_subsets, seed)
        out[cat] = {k: m[k] for k in ("R@1", "R@10", "R@10_std", "MedR", "n_queries")}
    return {"per_category": out, "mean_R@10": float(np.mean([v["R@10"] for v in out.values()]))}


def run_probes(embed: Callable[[np.ndarray], np.ndarray], rec: dict, n_clips: int, items: np.ndarray,
               item_emb: np.ndarray, subset_size: int | None, n_subsets: int, seed: int) -> dict:
    """Both probes for the clips `items` (indices among the cache's `n_clips`), embedded as `item_emb`.

    `rec` holds the text records (`duetmc.evaluate.text_records`); `embed(rows)` embeds text rows.
    """
    position = np.full(n_clips, -1, dtype=np.int64)
    position[items] = np.arange(len(items))
    return {"swap_accuracy": swap_accuracy(embed, rec, position, item_emb),
            "partial_query": partial_retrieval(embed, rec, position, item_emb, subset_size, n_subsets, seed)}
