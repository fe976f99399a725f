"""Augment, Drop & Swap for a manifest: every text the trainer may see, as views-file records.

Per item, in this order, each English text followed by its TextSwap hard negatives:
  tags     the tags-only text ("rock, happy, piano")
  caption  human captions (source="human"), then captions_i18n (lang set, never swapped; the manifest's
           are source="human", machine translations of the English human captions made with
           `translator` are source="translation"), then the
           tag-to-caption caption of all tags (view=None, source = the captioner's, or "fallback")
  view     one Augmented View Dropout caption per view (view=0..K-1, tags = the view's tags)
  swap     parent = the text it was made from; a swap that could not be made leaves a note on the parent
  label    after all items: each distinct tag on its own (item ""), for zero-shot tag retrieval
  probe_swap, probe_partial   test items only, evaluation probes the trainer never samples
           (duetmc/probes.py): several TextSwap variants per category of the tags text and each human
           caption, and one query per tag category built from that category's tags alone
A text repeated within an item (two views with the same caption) gets its swaps once: they share one
text row in the cache, so a second set would merge into the first.
Every random choice is seeded from (seed, item id, purpose), so the output does not depend on the
order of items and reruns are identical.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from duetmc.augment.captions import CaptionRequest, Captioner
from duetmc.augment.swap import text_swaps
from duetmc.augment.views import ViewConfig, draw_views
from duetmc.augment.viewsfile import HUMAN_SOURCES, TextRecord
from duetmc.augment.vocab import Vocabulary, default_vocabulary, warn_unknown
from duetmc.manifest import Item


NO_LABEL = ("bpm", "other")  # numbers and unknown free text make poor tag queries
PROBE_VARIANTS = 5  # TextSwap variants per category and text in the swap-accuracy probe
PROBE_SPLITS = ("test",)


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from the run seed and a purpose, stable across processes (unlike hash())."""
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@dataclass
class AugmentReport:
    items: int = 0
    records_by_kind: dict[str, int] = field(default_factory=dict)
    captions_by_source: dict[str, int] = field(default_factory=dict)
    unknown_tags: int = 0
    unknown_examples: list[str] = field(default_factory=list)
    swaps_made: int = 0
    swaps_skipped: int = 0
    items_without_tags: int = 0
    translations: int = 0
    translations_failed: int = 0

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class AugmentResult:
    records: list[TextRecord]
    report: AugmentReport


def _flat(tags: dict[str, list[str]]) -> list[str]:
    return [t for ts in tags.values() for t in ts]


def _with_swaps(rec: TextRecord, tags: dict[str, list[str]], vocab: Vocabulary, seed: int, report: AugmentReport) -> list[TextRecord]:
    """The record followed by its TextSwap negatives; swaps that could not be made are noted on it."""
    notes, swaps = [], []
    for s in text_swaps(rec.text, tags, vocab, derive_seed(seed, "swap", rec.item, rec.kind, rec.view, rec.text)):
        if s.text is None:
            notes.append(s.note)
            report.swaps_skipped += 1
            continue
        report.swaps_made += 1
        swaps.append(TextRecord(rec.item, "swap", s.text, rec.lang, rec.view, parent=rec.text, category=s.category,
                                swapped_from=s.swapped_from, swapped_to=s.swapped_to, source="swap"))
    return [dataclasses.replace(rec, note="; ".join(notes)) if notes else rec, *swaps]


def _probe_records(item_id: str, texts: list[TextRecord], tags: dict[str, list[str]], vocab: Vocabulary,
                   seed: int, n_variants: int = PROBE_VARIANTS) -> list[TextRecord]:
    """Evaluation probes for one test item: swap variants of its tags text and human English captions,
    and one partial query per tag category (see duetmc/probes.py)."""
    out: list[TextRecord] = []
    for rec in texts:
        if rec.kind not in ("tags", "caption") or rec.source != "human" or rec.lang != "en":
            continue
        seen = {rec.text}
        for v in range(n_variants):
            for s in text_swaps(rec.text, tags, vocab, derive_seed(seed, "probe", item_id, rec.text, v)):
                if s.text is not None and s.text not in seen:
                    seen.add(s.text)
                    out.append(TextRecord(item_id, "probe_swap", s.text, parent=rec.text, category=s.category,
                                          swapped_from=s.swapped_from, swapped_to=s.swapped_to, source="swap"))
    for category, values in tags.items():
        if category not in NO_LABEL and values:
            out.append(TextRecord(item_id, "probe_partial", ", ".join(values), category=category, source="tags",
                                  tags=list(values)))
    return out


def _translations(items: Sequence[Item], translator, languages: Sequence[str], report: AugmentReport) -> dict:
    """(English caption, lang) -> translation, for items that lack human captions in that language."""
    out: dict[tuple[str, str], str] = {}
    for lang in languages:
        texts = list(dict.fromkeys(c for item in items if not item.captions_i18n.get(lang) for c in item.captions))
        for text, translated in zip(texts, translator.translate_many(texts, lang) if texts else []):
            if translated is None:
                report.translations_failed += 1
            else:
                out[(text, lang)] = translated
    return out


def _item_texts(item: Item, tags: dict, views: list, captions, translated: dict,
                languages: Sequence[str]) -> list[tuple[TextRecord, bool]]:
    """One item's texts as (record, swappable): the vocabulary is English only. `captions` yields the
    item's generated caption, then one per view, in the order run_augment requested them."""
    texts: list[tuple[TextRecord, bool]] = []
    if tags:
        texts.append((TextRecord(item.id, "tags", ", ".join(_flat(tags)), source="human", tags=_flat(tags)), True))
    texts += [(TextRecord(item.id, "caption", text, source="human"), True) for text in item.captions]
    texts += [(TextRecord(item.id, "caption", text, lang=lang, source="human"), False)
              for lang, texts_ in item.captions_i18n.items() for text in texts_]
    texts += [(TextRecord(item.id, "caption", translated[(text, lang)], lang=lang, source="translation"), False)
              for lang in languages for text in item.captions if (text, lang) in translated
              and not item.captions_i18n.get(lang)]
    if tags:
        full = next(captions)
        texts.append((TextRecord(item.id, "caption", full.text, source=full.source, tags=_flat(tags)), True))
        for k, view in enumerate(views):
            cap = next(captions)
            texts.append((TextRecord(item.id, "view", cap.text, view=k, source=cap.source, tags=_flat(view)), True))
    return texts


def run_augment(items: Sequence[Item], captioner: Captioner, n_views: int = 10, seed: int = 0, vocab: Vocabulary | None = None,
                translator=None, languages: Sequence[str] = ()) -> AugmentResult:
    """Captions, views and swaps for every item, plus a report of what was made and skipped.

    With a `translator` (duetmc.augment.translate), English human captions are also translated into
    `languages` for items without human captions in that language.
    """
    vocab = vocab or default_vocabulary()
    report = AugmentReport(items=len(items))
    unknown: list[str] = []
    tags_of: dict[str, dict[str, list[str]]] = {}
    views_of: dict[str, list[dict[str, list[str]]]] = {}
    requests: list[CaptionRequest] = []
    for item in items:
        sorted_tags = vocab.categorise(item.tags)
        unknown += sorted_tags.unknown
        tags_of[item.id] = sorted_tags.tags
        views_of[item.id] = draw_views(sorted_tags.tags, derive_seed(seed, "views", item.id), ViewConfig(n_views=n_views))
        if sorted_tags.tags:
            requests.append(CaptionRequest(sorted_tags.tags, derive_seed(seed, "caption", item.id, None)))
            requests += [CaptionRequest(v, derive_seed(seed, "caption", item.id, k)) for k, v in enumerate(views_of[item.id])]
        else:
            report.items_without_tags += 1
    warn_unknown(unknown)
    report.unknown_tags = len(unknown)
    report.unknown_examples = list(dict.fromkeys(unknown))[:10]

    translated = _translations(items, translator, languages, report) if translator is not None else {}
    # One batch for the whole manifest, so an LLM backend can keep its workers busy.
    captions = iter(captioner.caption_many(requests))
    records: list[TextRecord] = []
    for item in items:
        tags = tags_of[item.id]
        texts = _item_texts(item, tags, views_of[item.id], captions, translated, languages)
        swapped: set[str] = set()
        for rec, swappable in texts:
            records += _with_swaps(rec, tags, vocab, seed, report) if swappable and rec.text not in swapped else [rec]
            swapped.add(rec.text)
        if item.split in PROBE_SPLITS and tags:
            records += _probe_records(item.id, [r for r, _ in texts], tags, vocab, seed)

    # Each distinct tag on its own: the queries of zero-shot tag retrieval (TTMR style).
    labels = sorted({t for tags in tags_of.values() for cat, ts in tags.items() if cat not in NO_LABEL for t in ts})
    records += [TextRecord("", "label", t, source="vocabulary", tags=[t]) for t in labels]
    report.records_by_kind = dict(Counter(r.kind for r in records))
    report.captions_by_source = dict(Counter(r.source for r in records if r.kind in ("caption", "view")))
    report.translations = report.captions_by_source.get("translation", 0)
    return AugmentResult(records, report)


def keep_queries_for_evaluation(records: Sequence[TextRecord], items: Sequence[Item]) -> list[TextRecord]:
    """Training clips keep every text; val and test clips keep their tags text, their human captions
    (and translations of them: the queries), those texts' swaps and the probes, so no generated caption
    becomes a query and no featurizing is spent on texts evaluation never reads."""
    train = {it.id for it in items if it.split == "train"}
    kept: set[tuple[str, str]] = set()
    out: list[TextRecord] = []
    for r in records:
        if r.kind == "swap":
            if r.item in train or (r.item, r.parent) in kept:
                out.append(r)
            continue
        if r.item and r.item not in train and (r.kind == "view" or (r.kind == "caption" and r.source not in HUMAN_SOURCES)):
            continue
        kept.add((r.item, r.text))
        out.append(r)
    return out


def augment_items(items: Sequence[Item], captioner: Captioner, n_views: int = 10, seed: int = 0, vocab: Vocabulary | None = None) -> list[TextRecord]:
    """The views-file records for `items`; see `run_augment` for the report as well."""
    return run_augment(items, captioner, n_views, seed, vocab).records
