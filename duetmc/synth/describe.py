"""Human-style captions for evaluation clips, from a generator unlike tag-to-caption's templates.

A listener describes a clip in their own words: a few salient facts (rarely every tag), paraphrased
("laid-back" for calm, "sax" for saxophone, "up-tempo" for fast), in one of several voices (a quick
note, a reviewer's sentence, a musician's rundown, a use case). Every fact mentioned is true: each
phrase is drawn from the paraphrases of one of the clip's true tags. This generator shares no
sentence pattern with `duetmc.augment.captions.TemplateCaptioner`, which writes the training
captions, so the evaluation tests tag-to-caption out of distribution, as the paper does with
MusicCaps and Song Describer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np

# Paraphrases per tag. The first entry of each list is the plain word; the rest are what people say
# instead, many of them outside the tag vocabulary (resources/tags.json).
MOOD_WORDS: dict[str, tuple[str, ...]] = {
    "happy": ("happy", "cheerful", "sunny", "feel-good", "bright"),
    "energetic": ("energetic", "driving", "high-octane", "punchy", "pumped-up"),
    "calm": ("calm", "laid-back", "unhurried", "easygoing", "restful"),
    "romantic": ("romantic", "tender", "intimate", "warm-hearted", "affectionate"),
    "dreamy": ("dreamy", "hazy", "floaty", "drifting", "woozy"),
    "sad": ("sad", "wistful", "mournful", "downcast", "heartbroken"),
    "dark": ("dark", "brooding", "menacing", "shadowy", "grim"),
    "tense": ("tense", "anxious", "nervy", "on-edge", "restless"),
}
GENRE_WORDS: dict[str, tuple[str, ...]] = {
    "rock": ("rock", "guitar rock", "rock band"),
    "metal": ("metal", "headbanging metal", "thrash-style metal"),
    "jazz": ("jazz", "small-combo jazz", "jazz club"),
    "electronic": ("electronic", "electronica", "synth-driven electronic"),
    "classical": ("classical", "chamber-style classical", "concert-hall classical"),
    "hip-hop": ("hip-hop", "hip hop", "boom-bap"),
    "folk": ("folk", "acoustic folk", "campfire folk"),
    "reggae": ("reggae", "island reggae", "offbeat-skanking reggae"),
    "ambient": ("ambient", "drone-like ambient", "spacious ambient"),
    "blues": ("blues", "twelve-bar blues", "smoky blues"),
    "funk": ("funk", "old-school funk", "tight funk"),
    "latin": ("latin", "salsa-flavoured latin", "latin dance"),
    "pop": ("pop", "radio pop", "catchy pop"),
    "country": ("country", "honky-tonk country", "nashville-style country"),
}
INSTRUMENT_WORDS: dict[str, tuple[str, ...]] = {
    "drums": ("drums", "a drum kit", "a live-sounding beat", "percussion"),
    "piano": ("piano", "keys", "a piano"),
    "electric piano": ("electric piano", "rhodes-style keys", "an e-piano"),
    "vibraphone": ("vibraphone", "vibes", "shimmering mallets"),
    "marimba": ("marimba", "wooden mallets", "a marimba"),
    "organ": ("organ", "a drawbar organ", "churchy organ chords"),
    "acoustic guitar": ("acoustic guitar", "strummed steel-string guitar", "an acoustic"),
    "electric guitar": ("electric guitar", "clean guitar", "a clean electric"),
    "distorted guitar": ("distorted guitar", "crunchy overdriven guitars", "fuzzed-out guitar"),
    "bass": ("upright bass", "double bass", "a plucked upright"),
    "electric bass": ("electric bass", "bass guitar", "a fingered bass"),
    "synth bass": ("synth bass", "a fat synth bassline", "sub bass"),
    "violin": ("violin", "fiddle", "a solo violin"),
    "cello": ("cello", "a low cello line", "cellos"),
    "harp": ("harp", "plucked harp", "harp glissandi"),
    "strings": ("strings", "a string section", "lush strings"),
    "choir": ("choir", "wordless choir", "choral aahs"),
    "trumpet": ("trumpet", "a solo trumpet", "trumpet lines"),
    "brass": ("brass", "a brass section", "a horn section"),
    "saxophone": ("saxophone", "sax", "a breathy alto sax"),
    "clarinet": ("clarinet", "a woody clarinet", "clarinet lines"),
    "flute": ("flute", "an airy flute", "flute melodies"),
    "synth lead": ("synth lead", "a sawtooth lead", "a buzzy lead synth"),
    "synth pad": ("synth pad", "warm pads", "a synth wash"),
}
TEMPO_WORDS: dict[str, tuple[str, ...]] = {
    "slow": ("slow", "unhurried-paced", "ballad-paced", "slow-moving"),
    "medium tempo": ("mid-tempo", "moderately paced", "walking-pace", "medium-paced"),
    "fast": ("fast", "up-tempo", "brisk", "quick-fire"),
}
_USES = {
    "happy": "a sunny afternoon", "energetic": "a workout", "calm": "winding down after work",
    "romantic": "a candle-lit dinner", "dreamy": "staring out of a train window", "sad": "a rainy evening alone",
    "dark": "a night drive through the city", "tense": "a chase scene",
}


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return str(options[int(rng.integers(len(options)))])


def _join(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _article(phrase: str) -> str:
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


class _Facts:
    """Paraphrased facts about one clip, drawn from its true tags; each attribute may be absent."""

    def __init__(self, tags: Mapping[str, Sequence[str]], rng: np.random.Generator, max_instruments: int):
        self.rng = rng
        self.mood_tag = tags["mood"][0] if tags.get("mood") else None
        self.mood = _pick(rng, MOOD_WORDS[self.mood_tag]) if self.mood_tag in MOOD_WORDS else None
        genre = tags["genre"][0] if tags.get("genre") else None
        self.genre = _pick(rng, GENRE_WORDS[genre]) if genre in GENRE_WORDS else None
        tempo = tags["tempo"][0] if tags.get("tempo") else None
        self.tempo = _pick(rng, TEMPO_WORDS[tempo]) if tempo in TEMPO_WORDS and rng.random() < 0.5 else None
        known = [i for i in tags.get("instrument", []) if i in INSTRUMENT_WORDS]
        n = min(len(known), int(rng.integers(1, max_instruments + 1)))
        chosen = [known[int(j)] for j in rng.permutation(len(known))[:n]]
        self.instruments = [_pick(rng, INSTRUMENT_WORDS[i]) for i in chosen]
        key = tags["key"][0] if tags.get("key") else None
        self.key = key if key and rng.random() < 0.15 else None

    def piece(self) -> str:
        return " ".join(w for w in (self.mood, self.genre, _pick(self.rng, ("tune", "piece", "jam", "number"))) if w)


def _casual(f: _Facts) -> str:
    parts = [f.piece()]
    if f.instruments:
        parts.append("mostly " + _join(f.instruments))
    if f.tempo:
        parts.append("feels " + f.tempo)
    return ", ".join(parts) + "."


def _reviewer(f: _Facts) -> str:
    text = f"The recording presents {_article(f.piece())}"
    if f.instruments:
        verb = "carries" if len(f.instruments) == 1 and not f.instruments[0].endswith("s") else "carry"
        text += f", where {_join(f.instruments)} {verb} the arrangement"
    text += "."
    if f.tempo:
        text += f" The pace stays {f.tempo} throughout."
    if f.key:
        text += f" It sits in {f.key}."
    return text


def _musician(f: _Facts) -> str:
    lead = f"{_join(f.instruments)} over a {f.tempo} groove" if f.instruments and f.tempo else \
        _join(f.instruments) if f.instruments else f"a {f.tempo} groove" if f.tempo else "a simple arrangement"
    tail = [w for w in (f.genre and f"{f.genre} feel", f.mood and f"{f.mood} vibe", f.key) if w]
    return lead[:1].upper() + lead[1:] + (": " + "; ".join(tail) if tail else "") + "."


def _use_case(f: _Facts) -> str:
    setting = _USES.get(f.mood_tag, "background listening")
    text = f"Something to put on for {setting}: {_article(f.piece())}"
    if f.instruments:
        text += f" with {_join(f.instruments)}"
    return text + (f", {f.tempo}." if f.tempo else ".")


STYLES = {"casual": _casual, "reviewer": _reviewer, "musician": _musician, "use case": _use_case}


def human_captions(tags: Mapping[str, Sequence[str]], rng: np.random.Generator, n: int = 1,
                   max_instruments: int = 2) -> list[str]:
    """`n` captions in distinct styles (while styles last), each naming a few true facts in other words."""
    styles = [list(STYLES)[int(k)] for k in rng.permutation(len(STYLES))]
    out = []
    for k in range(n):
        out.append(STYLES[styles[k % len(styles)]](_Facts(tags, rng, max_instruments)))
    return out


_TABLES = {"mood": MOOD_WORDS, "genre": GENRE_WORDS, "instrument": INSTRUMENT_WORDS, "tempo": TEMPO_WORDS}


def _phrase_pattern() -> re.Pattern:
    phrases = sorted({w for table in _TABLES.values() for ws in table.values() for w in ws}, key=len, reverse=True)
    return re.compile(r"(?<![\w-])(" + "|".join(re.escape(p) for p in phrases) + r")(?![\w-])", re.IGNORECASE)


_PHRASES = _phrase_pattern()
_TAG_OF = {(w.lower()): (cat, tag) for cat, table in _TABLES.items() for tag, ws in table.items() for w in ws}
_KEY = re.compile(r"\b([A-G][b#]?) (major|minor)\b")


def facts_in(caption: str) -> dict[str, set[str]]:
    """The tags a caption states, read back through the paraphrase tables (longest phrase first)
    and key names: what a test checks against the clip's true tags."""
    out: dict[str, set[str]] = {}
    for m in _PHRASES.finditer(caption):
        cat, tag = _TAG_OF[m.group(1).lower()]
        out.setdefault(cat, set()).add(tag)
    for m in _KEY.finditer(caption):
        out.setdefault("key", set()).add(f"{m.group(1)} {m.group(2)}")
    return out
