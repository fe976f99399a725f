"""Training pairs: which cached texts pair with which clips, as row numbers into a cache's groups.

No encoder runs and no features are read here. A `DataSpec` names one cache and its feature groups;
a `PairIndex` links each clip to its texts (tags-only text, captions, views and their TextSwap
variants) using the text group's records. Only rows whose data exists are paired: at open the store
is listed, and a done row in a missing shard file is refused with the array, shard and items named,
or skipped (`allow_missing`) with a warning (duetmc.integrity).
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import zarr

from duetmc import cache_spec, integrity
from duetmc.cache_spec import AudioSettings, CacheError, TextSettings


@dataclass(frozen=True)
class DataSpec:
    """One cache and the feature groups to read from it."""

    cache: str
    audio: AudioSettings
    text: TextSettings
    weight: float = 1.0

    def to_json(self) -> dict:
        return {"cache": self.cache, "audio": cache_spec.settings_dict(self.audio),
                "text": cache_spec.settings_dict(self.text), "weight": self.weight}

    @staticmethod
    def from_json(d: dict) -> "DataSpec":
        a, t = dict(d["audio"]), dict(d["text"])
        for s in (a, t):
            if s.get("layers") is not None:
                s["layers"] = tuple(s["layers"])
        return DataSpec(d["cache"], AudioSettings(**a), TextSettings(**t), d.get("weight", 1.0))


def resolve_spec(cache: str, audio_key: str | None = None, text_key: str | None = None, weight: float = 1.0) -> DataSpec:
    """Pick the cache's audio and text groups; refuse ambiguity with the list of choices."""
    root = cache_spec.open_root(cache)

    def pick(modality: str, key: str | None):
        keys = cache_spec.list_groups(root, modality)
        if key is None:
            if len(keys) != 1:
                raise CacheError(f"{cache}: {'no' if not keys else len(keys)} {modality} feature groups "
                                 f"({', '.join(keys) or 'featurize first'}); choose one with --{modality}-key")
            key = keys[0]
        if key not in keys and modality == "text":  # a text set's name (`featurize text --text-set`)
            named = [k for k in keys if dict(root["text"][k].attrs).get("text_set", {}).get("name") == key]
            key = named[0] if len(named) == 1 else key
        if key not in keys:
            raise CacheError(f"{cache}: no {modality}/{key}; available: {', '.join(keys) or 'none'}")
        return dict(root[modality][key].attrs)["settings"]

    a, t = pick("audio", audio_key), pick("text", text_key)
    for s in (a, t):
        if s.get("layers") is not None:
            s["layers"] = tuple(s["layers"])
    return DataSpec(cache, AudioSettings(**a), TextSettings(**t), weight)


class PairIndex:
    """Clips and their texts in one cache, as row numbers into its audio and text groups.

    `allow_missing`: skip (with a warning) the items whose features lie in a missing or unreadable
    shard instead of refusing the cache; `skipped` lists them per modality.
    """

    def __init__(self, spec: DataSpec, allow_missing: bool = False):
        self.spec = spec
        self.allow_missing = allow_missing
        root = cache_spec.open_root(spec.cache)
        self.audio: zarr.Group = cache_spec.open_features(root, "audio", spec.audio, spec.cache)
        self.text: zarr.Group = cache_spec.open_features(root, "text", spec.text, spec.cache)
        a = self.audio
        self.ids = cache_spec.read_strings(a["ids"])
        self.split = np.array([s or "train" for s in cache_spec.read_strings(a["split"])], dtype=object)
        self.item_rows = np.asarray(a["item_rows"][:])
        self.audio_done = np.asarray(a["done"][:], dtype=bool)
        self.window_item = np.repeat(np.arange(len(self.item_rows)), self.item_rows[:, 1])
        self.text_lengths = np.asarray(self.text["lengths"][:])
        self.text_done = np.asarray(self.text["done"][:], dtype=bool)
        rec = self.text["records"]
        self._records = {name: cache_spec.read_strings(rec[name]) if name in ("item", "kind", "lang", "source")
                         else np.asarray(rec[name][:]) for name in ("text_row", "item", "kind", "lang", "view",
                                                                       "parent_row", "source")}
        self._texts = cache_spec.read_strings(self.text["texts"])
        self.skipped: dict[str, list[str]] = {"audio": [], "text": []}
        for modality in ("audio", "text"):
            done = self.audio_done if modality == "audio" else self.text_done
            gone = integrity.missing_shards(self.group(modality)["features"], done)
            if gone:
                self.exclude(modality, gone, "has no file (deleted or never written)")
        self._link()

    def group(self, modality: str) -> zarr.Group:
        return self.audio if modality == "audio" else self.text

    def where(self, modality: str) -> str:
        return f"{self.spec.cache}: {modality}/{self.group(modality).basename}/features"

    def items_of(self, modality: str):
        """rows -> the ids of the items they belong to (for messages)."""
        if modality == "audio":
            return lambda rows: [str(self.ids[k]) for k in np.unique(self.window_item[rows])]
        by_row = defaultdict(list)
        for row, item in zip(self._records["text_row"], self._records["item"]):
            by_row[int(row)].append(str(item) if item else f"text row {int(row)}")
        return lambda rows: list(dict.fromkeys(i for r in np.unique(rows) for i in by_row.get(int(r), [])))

    def exclude(self, modality: str, shards: dict[int, np.ndarray], problem: str) -> None:
        """Drop the rows of damaged shards: refused unless `allow_missing`, then warned and skipped."""
        items_of = self.items_of(modality)
        message = integrity.damage_message(self.where(modality), shards, items_of, problem)
        if not self.allow_missing:
            raise CacheError(message)
        rows = np.concatenate(list(shards.values()))
        ids = items_of(rows)
        warnings.warn(f"skipping {len(ids)} item(s): {message.split('; restore')[0]}", UserWarning, stacklevel=2)
        self.skipped[modality] += ids
        (self.audio_done if modality == "audio" else self.text_done)[rows] = False
        if hasattr(self, "captions"):
            self._link()

    def _link(self) -> None:
        """Usable clips and their texts, from the done rows."""
        self.usable = np.array([self.audio_done[s:s + n].all() and n > 0 for s, n in self.item_rows])
        pos = {str(i): k for k, i in enumerate(self.ids)}
        n = len(self.ids)
        self.tags_row = np.full(n, -1, dtype=np.int64)
        self.captions: list[list[int]] = [[] for _ in range(n)]  # English captions: human first
        self.views: list[list[int]] = [[] for _ in range(n)]
        self.queries: dict[str, list[tuple[int, int]]] = defaultdict(list)  # lang -> (text row, item)
        self.swaps: dict[tuple[int, int], list[int]] = defaultdict(list)  # (item, parent row) -> swaps
        self.labels: dict[str, int] = {}  # single-tag texts for zero-shot tag retrieval
        human: list[list[int]] = [[] for _ in range(n)]
        r = self._records
        for row, item, kind, lang, parent, source in zip(r["text_row"], r["item"], r["kind"], r["lang"],
                                                          r["parent_row"], r["source"]):
            row = int(row)
            if not self.text_done[row]:
                continue
            if kind == "label":
                self.labels[str(self._texts[row])] = row
                continue
            k = pos.get(str(item))
            if k is None:
                continue
            if kind == "swap":
                if parent >= 0:
                    self.swaps[(k, int(parent))].append(row)
                continue
            if kind == "caption":
                self.queries[str(lang)].append((row, k))
                if lang == "en":
                    (human[k] if source == "human" else self.captions[k]).append(row)
            elif kind == "tags" and lang == "en":
                self.tags_row[k] = row
            elif kind == "view" and lang == "en":
                self.views[k].append(row)
        self.captions = [h + c for h, c in zip(human, self.captions)]
        self.max_swaps = max((len(v) for v in self.swaps.values()), default=0)

    def items(self, split: str) -> np.ndarray:
        """Usable items of a split that have some English text."""
        has_text = np.array([self.tags_row[k] >= 0 or bool(self.captions[k]) for k in range(len(self.ids))])
        return np.flatnonzero((self.split == split) & self.usable & has_text)

    def fixed_text(self, k: int, p_cap: float) -> int:
        """The one text used for item k without View Dropout: its first caption, or its tags text."""
        if p_cap > 0 and self.captions[k]:
            return self.captions[k][0]
        return int(self.tags_row[k]) if self.tags_row[k] >= 0 else self.captions[k][0]

    @property
    def audio_shape(self) -> tuple[int, int, int]:
        return tuple(self.audio["features"].shape[1:])

    @property
    def text_shape(self) -> tuple[int, int, int]:
        return tuple(self.text["features"].shape[1:])


def weights_sha256(index: PairIndex, modality: str) -> str | None:
    return dict(index.group(modality).attrs).get("encoder", {}).get("weights_sha256")


def check_compatible(indices: list[PairIndex]) -> None:
    """Mixed caches must share encoders (same weights, not only names), layers and feature shapes except
    text length; clips present in several caches are warned about (they would be drawn as their own
    negatives)."""
    first = indices[0]
    a0, t0 = first.audio_shape, first.text_shape
    for ix in indices[1:]:
        if ix.audio_shape != a0 or (ix.text_shape[0], ix.text_shape[2]) != (t0[0], t0[2]):
            raise CacheError(
                f"{ix.spec.cache}: features {ix.audio_shape}/{ix.text_shape} differ from "
                f"{first.spec.cache}: {a0}/{t0}; mixed caches need the same encoders and layers")
        for modality in ("audio", "text"):
            mine, theirs = weights_sha256(ix, modality), weights_sha256(first, modality)
            if mine != theirs:
                name = ix.group(modality).basename
                raise CacheError(
                    f"{ix.spec.cache}: {modality}/{name} was computed with other encoder weights than in "
                    f"{first.spec.cache} (weights sha256 {str(mine)[:12]}… vs {str(theirs)[:12]}…); features "
                    f"of different weights cannot be mixed: re-featurize one cache with the other's weights")
    _warn_shared_ids(indices)


def _warn_shared_ids(indices: list[PairIndex]) -> None:
    seen: dict[str, str] = {}
    for ix in indices:
        ids = {str(i) for i in ix.ids[ix.items("train")]}
        shared = sorted(i for i in ids if i in seen)
        if shared:
            warnings.warn(f"{ix.spec.cache} and {seen[shared[0]]} share {len(shared)} training clip id(s) "
                          f"(e.g. {shared[0]}): the same clip may be drawn twice in an epoch and serve as its "
                          f"own negative; remove the overlap unless it is intended", UserWarning, stacklevel=3)
        for i in ids:
            seen.setdefault(i, ix.spec.cache)
