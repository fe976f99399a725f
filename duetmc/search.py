"""The one-off search: rank a cache's clips for one query with a run's model, nothing written.

It is the index's code on an in-memory index (duetmc.index, duetmc.catalog): for repeated queries,
build an index once (`duetmc index build`) and query that.
"""

from __future__ import annotations

from duetmc.catalog import cache_catalog
from duetmc.index import Index


def search(run, query: str, cache: str | None = None, top_k: int = 10, split: str = "all") -> list[dict]:
    """Hits (rank, id, score, tags, split, audio, start, end) of `cache` (default: the training cache)."""
    from duetmc.pretrained import DuetModel

    model = DuetModel.from_run(run, progress=False)
    catalog = cache or model.card["train"]["data"][0]["cache"]
    emb, entries, _ = cache_catalog(model, catalog, split)
    return Index.from_embeddings(model, emb, entries).search_text(query, top_k)
