"""Near-duplicate songs: the same song with exactly one attribute changed.

TextSwap trains the model to score a clip below a caption that differs from its own in one tag.
Its claim can only be tested on clips that differ in one tag, so the bench corpus pairs songs:
  mood        same genre, key, BPM, instruments and composition seed; another mood of the same
              mode (so the key tag stays), which changes dynamics, register, density and articulation
  tempo       same everything; a BPM in another tempo class (slow / medium tempo / fast)
  instrument  same everything; one part played by another instrument from the genre's palette
`variant_spec` returns the changed spec and the attribute, or None when this song admits no such
variant (e.g. a genre whose tempo range spans one tempo class), and the caller tries another kind.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from duetmc.synth.compose import SongSpec
from duetmc.synth.genres import DRUMS, GENRES, MOODS, TEMPO_TAGS, tempo_tag

VARIANT_KINDS = ("mood", "tempo", "instrument")


@dataclass(frozen=True)
class Variant:
    spec: SongSpec
    attribute: str  # the tag category that differs: mood, tempo or instrument
    before: str  # the base song's tag in that category
    after: str  # the variant's


def _mood_variant(spec: SongSpec, rng: np.random.Generator) -> Variant | None:
    g = GENRES[spec.genre]
    options = [m for m in g.moods if m != spec.mood and MOODS[m].mode == MOODS[spec.mood].mode]
    if not options:
        return None
    mood = options[int(rng.integers(len(options)))]
    return Variant(dataclasses.replace(spec, mood=mood), "mood", spec.mood, mood)


def _tempo_variant(spec: SongSpec, rng: np.random.Generator) -> Variant | None:
    lo, hi = GENRES[spec.genre].tempo
    old = tempo_tag(spec.bpm)
    by_class: dict[str, list[int]] = {}
    for bpm in range(lo, hi + 1):
        by_class.setdefault(tempo_tag(bpm), []).append(bpm)
    classes = [c for c in TEMPO_TAGS if c != old and c in by_class]
    if not classes:
        return None
    new = classes[int(rng.integers(len(classes)))]
    bpm = by_class[new][int(rng.integers(len(by_class[new])))]
    return Variant(dataclasses.replace(spec, bpm=bpm), "tempo", old, new)


def _instrument_variant(spec: SongSpec, rng: np.random.Generator) -> Variant | None:
    g = GENRES[spec.genre]
    used = {inst for _, inst in spec.parts}
    choices = [(k, [i for i in g.palettes[part] if i not in used])
               for k, (part, inst) in enumerate(spec.parts) if inst != DRUMS]
    choices = [(k, free) for k, free in choices if free]
    if not choices:
        return None
    k, free = choices[int(rng.integers(len(choices)))]
    new = free[int(rng.integers(len(free)))]
    parts = list(spec.parts)
    old = parts[k][1]
    parts[k] = (parts[k][0], new)
    return Variant(dataclasses.replace(spec, parts=tuple(parts)), "instrument", old, new)


_MAKERS = {"mood": _mood_variant, "tempo": _tempo_variant, "instrument": _instrument_variant}


def variant_spec(spec: SongSpec, rng: np.random.Generator, kinds: tuple[str, ...] = VARIANT_KINDS) -> Variant | None:
    """A one-attribute variant of `spec`: kinds are tried in a seeded order until one applies."""
    for k in rng.permutation(len(kinds)):
        v = _MAKERS[kinds[int(k)]](spec, rng)
        if v is not None:
            return v
    return None
