"""Incomplete and noisy training tags: what an annotator or a tag scraper leaves of the truth.

Real training tags (MTG-Jamendo, MagnaTagATune) name only part of what is in a clip and are
sometimes wrong. `observe_tags` turns a clip's true tags into observed ones in three independent,
seeded steps, each a rate in `TagNoise`:
  1. a whole category is missing (no mood tag at all) with probability `p_drop_category`;
  2. in the instrument category, each instrument is left out with probability `p_drop_instrument`;
  3. each remaining tag is replaced by a wrong tag of the same category with probability `p_wrong`.
At least one tag always survives (the genre, when step 1 dropped every category), so no clip is
left without text. The `bpm` category follows `tempo` (a BPM is only written where the tempo is).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from duetmc.synth.genres import GENRES, INSTRUMENTS, MOODS, NOTE_NAMES, TEMPO_TAGS, tempo_tag

NOISY_CATEGORIES = ("genre", "instrument", "mood", "tempo", "key")


@dataclass(frozen=True)
class TagNoise:
    """Rates of the three noise steps; the defaults and their reasons are in the README."""

    p_drop_category: float = 0.3
    p_drop_instrument: float = 0.35
    p_wrong: float = 0.05


def _wrong_tag(category: str, true: Sequence[str], rng: np.random.Generator) -> str:
    """A tag of `category` that is not among the clip's true tags."""
    if category == "genre":
        pool = sorted(GENRES)
    elif category == "mood":
        pool = sorted(MOODS)
    elif category == "tempo":
        pool = list(TEMPO_TAGS)
    elif category == "instrument":
        pool = list(INSTRUMENTS)
    else:  # key
        pool = [f"{n} {m}" for n in NOTE_NAMES for m in ("major", "minor")]
    pool = [t for t in pool if t not in true]
    return pool[int(rng.integers(len(pool)))]


def observe_tags(true: Mapping[str, Sequence[str]], noise: TagNoise, rng: np.random.Generator) -> dict[str, list[str]]:
    """Observed tags for one training clip; every random draw is made whatever the outcome, so
    changing one rate does not reshuffle the others' draws."""
    observed: dict[str, list[str]] = {}
    for cat in NOISY_CATEGORIES:
        values = list(true.get(cat, []))
        drop_cat = rng.random() < noise.p_drop_category
        keep = rng.random(len(values)) >= (noise.p_drop_instrument if cat == "instrument" else 0.0)
        wrong = rng.random(len(values)) < noise.p_wrong
        if drop_cat or not values:
            continue
        kept = []
        for v, k, w in zip(values, keep, wrong):
            if k:
                kept.append(_wrong_tag(cat, values, rng) if w else v)
        if kept:
            observed[cat] = list(dict.fromkeys(kept))
    if not observed and true.get("genre"):
        observed["genre"] = list(true["genre"])
    if "tempo" in observed and true.get("bpm"):
        # a wrong tempo word keeps a BPM consistent with it out of the tags: drop the number then
        observed_tempo = observed["tempo"][0]
        if observed_tempo == tempo_tag(float(true["bpm"][0])):
            observed["bpm"] = list(true["bpm"])
    return observed
