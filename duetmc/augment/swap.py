"""TextSwap: hard negatives made by swapping one category's keywords in a text (docs/DESIGN.md §2).

It works on the text itself: the item's tags are looked for in it (synonyms and multi-word forms
included), so LLM and human captions can be swapped as well as template ones. Each swappable category
the item has gives one swap; every keyword of that category found in the text is replaced by a
different descriptor of the same category from the dictionary that the item does not have.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from duetmc.augment.vocab import Vocabulary, normalise

_ARTICLE = re.compile(r"\b(an?)(\s+)$", re.IGNORECASE)


@dataclass(frozen=True)
class Swap:
    """One category's swap of a text; `text` is None when it was skipped, and `note` says why."""

    category: str
    text: str | None
    swapped_from: list[str] = field(default_factory=list)
    swapped_to: list[str] = field(default_factory=list)
    note: str | None = None


def _match_case(word: str, like: str) -> str:
    if like.isupper() and len(like) > 1:
        return word.upper()
    return word[:1].upper() + word[1:] if like[:1].isupper() else word


def _fix_article(prefix: str, word: str) -> str:
    """'a rock track' -> 'an ambient track': fix an a/an right before the new word."""
    m = _ARTICLE.search(prefix)
    if not m:
        return prefix
    article = "an" if word[:1].lower() in "aeiou" else "a"
    if m.group(1)[0].isupper():
        article = article.capitalize()
    return prefix[: m.start(1)] + article + m.group(2)


def text_swaps(text: str, item_tags: Mapping[str, Sequence[str]], vocab: Vocabulary, seed: int = 0) -> list[Swap]:
    """One `Swap` per swappable category of the item, in vocabulary order."""
    mentions = vocab.find_mentions(text, extra=item_tags)
    own = {normalise(vocab.canonical(t)) for ts in item_tags.values() for t in ts}
    in_text = {normalise(m.tag) for m in mentions}
    rng = random.Random(seed)
    swaps: list[Swap] = []
    for category in vocab.swap_categories:
        cat_own = {normalise(vocab.canonical(t)) for t in item_tags.get(category, [])}
        if not cat_own:
            continue
        hits = [m for m in mentions if m.category == category and normalise(m.tag) in cat_own]
        if not hits:
            swaps.append(Swap(category, None, note=f"no {category} tag of the item found in the text; no {category} swap"))
            continue
        found = list(dict.fromkeys(m.tag for m in hits))
        pool = vocab.swap_candidates(category, own | in_text)
        if len(pool) < len(found):
            swaps.append(Swap(category, None, note=f"the {category} dictionary has no descriptor the item lacks; no {category} swap"))
            continue
        new = dict(zip(found, rng.sample(pool, len(found))))
        out, pos = "", 0
        for m in hits:
            word = _match_case(new[m.tag], m.text)
            out = _fix_article(out + text[pos : m.start], word) + word
            pos = m.end
        out += text[pos:]
        first_seen = {m.tag: m.text for m in reversed(hits)}
        swaps.append(Swap(category, out, [first_seen[t] for t in found], [new[t] for t in found]))
    return swaps
