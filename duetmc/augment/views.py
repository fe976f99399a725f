"""Augmented View Dropout: K category-balanced partial views of an item's tags (docs/DESIGN.md §2).

Each view keeps between 1 and `max_per_category` tags of every category the item has, so no category
vanishes and none dominates. When the item has more tags than one per category, every view masks at
least one of them: it is a partial view of the track. Identical views are redrawn, up to a limit.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ViewConfig:
    n_views: int = 10
    # caps a category's share of a view, so an item with eight instruments still yields balanced views
    max_per_category: int = 3
    # redraws of a view that repeats an earlier one; an item with few tags has few distinct views
    max_redraws: int = 20

    def __post_init__(self) -> None:
        if self.n_views < 0 or self.max_per_category < 1 or self.max_redraws < 0:
            raise ValueError(f"ViewConfig needs n_views >= 0, max_per_category >= 1 and max_redraws >= 0, got {self}")


def _draw(cats: list[tuple[str, list[str]]], rng: random.Random, cap: int) -> dict[str, list[str]]:
    sizes = {c: rng.randint(1, min(len(tags), cap)) for c, tags in cats}
    maskable = [c for c, tags in cats if len(tags) > 1]
    if maskable and all(sizes[c] == len(tags) for c, tags in cats):
        # Nothing masked yet: shrink one category that can lose a tag.
        c = rng.choice(maskable)
        sizes[c] = rng.randint(1, len(dict(cats)[c]) - 1)
    view = {}
    for c, tags in cats:
        kept = set(rng.sample(range(len(tags)), sizes[c]))
        view[c] = [t for i, t in enumerate(tags) if i in kept]  # keep the item's order
    return view


def draw_views(tags: Mapping[str, Sequence[str]], seed: int = 0, config: ViewConfig = ViewConfig()) -> list[dict[str, list[str]]]:
    """`config.n_views` views of `tags` (category -> tags); none when the item has no tags."""
    cats = [(c, list(ts)) for c, ts in tags.items() if ts]
    if not cats:
        return []
    rng = random.Random(seed)
    views: list[dict[str, list[str]]] = []
    seen: set[frozenset] = set()
    for _ in range(config.n_views):
        for _attempt in range(config.max_redraws + 1):
            view = _draw(cats, rng, config.max_per_category)
            key = frozenset((c, t) for c, ts in view.items() for t in ts)
            if key not in seen:
                break
        seen.add(key)
        views.append(view)
    return views
