"""The synthetic corpus's vocabulary: instruments, moods, genre templates, tempo and key names.

These words are the tags the corpus is labelled with; the template captioner uses the same words,
so change them only together.

Rhythms are written as 16-step strings, one character per sixteenth note of a 4/4 bar:
  drums:  x accent, o normal hit, g ghost note, . rest
  parts:  x note onset, - hold the previous note, . rest
"""

from __future__ import annotations

from dataclasses import dataclass

# --- instruments: one General MIDI program per tag, so the tags and the programs map one to one ---
DRUMS = "drums"
PROGRAMS: dict[str, int] = {  # 0-based GM program numbers
    "piano": 0,  # Acoustic Grand Piano
    "electric piano": 4,  # Electric Piano 1
    "vibraphone": 11,
    "marimba": 12,
    "organ": 16,  # Drawbar Organ
    "acoustic guitar": 25,  # Steel-string
    "electric guitar": 27,  # Clean
    "distorted guitar": 30,
    "bass": 32,  # Acoustic (upright) bass
    "electric bass": 33,  # Finger
    "synth bass": 38,  # Synth Bass 1
    "violin": 40,
    "cello": 42,
    "harp": 46,  # Orchestral Harp
    "strings": 48,  # String Ensemble 1
    "choir": 52,  # Choir Aahs
    "trumpet": 56,
    "brass": 61,  # Brass Section
    "saxophone": 65,  # Alto Sax
    "clarinet": 71,
    "flute": 73,
    "synth lead": 81,  # Lead 2 (sawtooth)
    "synth pad": 89,  # Pad 2 (warm)
}
INSTRUMENT_OF_PROGRAM = {p: name for name, p in PROGRAMS.items()}
INSTRUMENTS: tuple[str, ...] = tuple(sorted([*PROGRAMS, DRUMS]))

# playable MIDI range per instrument (lowest, highest)
RANGES: dict[str, tuple[int, int]] = {
    "piano": (36, 96), "electric piano": (40, 88), "vibraphone": (53, 89), "marimba": (45, 96),
    "organ": (36, 91), "acoustic guitar": (40, 81), "electric guitar": (40, 84),
    "distorted guitar": (40, 79), "bass": (28, 55), "electric bass": (28, 60), "synth bass": (24, 60),
    "violin": (55, 100), "cello": (36, 72), "harp": (24, 103), "strings": (40, 96), "choir": (48, 81),
    "trumpet": (54, 84), "brass": (40, 82), "saxophone": (49, 81), "clarinet": (50, 89),
    "flute": (60, 96), "synth lead": (48, 96), "synth pad": (36, 96),
}
# instruments that hold chords when they play the optional extra part; the others play a counter-melody
SUSTAINED = frozenset({"strings", "synth pad", "choir", "organ", "brass"})

# --- GM percussion keys ---
KICK, RIM, SNARE, CLAP, HAT, PEDAL_HAT, OPEN_HAT = 36, 37, 38, 39, 42, 44, 46
CRASH, RIDE, TAMBOURINE, COWBELL, HI_CONGA, LOW_CONGA, SHAKER = 49, 51, 54, 56, 63, 64, 70
TOMS = (50, 48, 45, 43)


# --- moods: a mood fixes the ranges of mode, tempo, velocity, register and note density ---
@dataclass(frozen=True)
class Mood:
    """How a mood is made. The song's parameters are drawn inside these ranges, so the tag follows
    from them:
      mode        major or minor (tense uses harmonic minor: a raised 7th)
      tempo       where the BPM falls inside the genre's tempo range, as fractions (low, high)
      velocity    MIDI velocity range of the parts
      register    semitones the melody sits above (+) or below (-) the instrument's middle
      density     melody notes per beat
      legato      fraction of each note's written length that sounds
    """

    name: str
    mode: str
    tempo: tuple[float, float]
    velocity: tuple[int, int]
    register: int
    density: float
    legato: float


MOODS: dict[str, Mood] = {m.name: m for m in (
    Mood("happy", "major", (0.55, 0.9), (80, 100), +5, 1.5, 0.8),
    Mood("energetic", "major", (0.8, 1.0), (95, 118), 0, 2.0, 0.7),
    Mood("calm", "major", (0.0, 0.3), (42, 62), 0, 0.6, 1.0),
    Mood("romantic", "major", (0.15, 0.45), (55, 75), +3, 0.9, 1.0),
    Mood("dreamy", "major", (0.0, 0.35), (40, 60), +10, 0.5, 1.0),
    Mood("sad", "minor", (0.0, 0.35), (45, 68), -3, 0.7, 0.95),
    Mood("dark", "minor", (0.2, 0.5), (65, 90), -10, 0.8, 0.9),
    Mood("tense", "minor", (0.6, 1.0), (88, 112), 0, 1.75, 0.5),
)}
SCALES = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "harmonic minor": (0, 2, 3, 5, 7, 8, 11),
}


def scale_of(mood: Mood) -> tuple[int, ...]:
    return SCALES["harmonic minor"] if mood.name == "tense" else SCALES[mood.mode]


# --- tempo and key words ---
TEMPO_TAGS = ("slow", "medium tempo", "fast")
NOTE_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")


def tempo_tag(bpm: float) -> str:
    """slow below 90 BPM, fast from 120 BPM, medium tempo in between."""
    return "slow" if bpm < 90 else "fast" if bpm >= 120 else "medium tempo"


def key_tag(tonic: int, mode: str) -> str:
    return f"{NOTE_NAMES[tonic % 12]} {mode}"


# --- genres ---
@dataclass(frozen=True)
class Genre:
    """A genre template. Progressions are scale degrees (0 = tonic), one chord per bar, and all
    start on the tonic. Palettes list the instruments each part may be played by."""

    name: str
    tempo: tuple[int, int]
    moods: tuple[str, ...]
    drums: tuple[dict[int, str], ...]  # pattern variants; empty: a drum-free genre
    bass: tuple[tuple[str, str], ...]  # (rhythm, tones) variants; tones cycle: R root, 3, 5, 8 octave, W walk
    comp: tuple[str, ...]  # rhythms for the chord part; "arp" arpeggiates in eighths
    progressions: tuple[tuple[int, ...], ...]
    palettes: dict[str, tuple[str, ...]]  # part -> instruments: bass, chords, melody, extra
    swing: float = 0.5  # where the off-beat eighth falls inside the beat: 0.5 straight, 0.67 triplet
    sevenths: bool = False
    melody_density: float = 1.0  # multiplies the mood's notes per beat
    humanise_s: float = 0.008  # timing jitter (standard deviation, seconds)
    extra_p: float = 0.5  # chance of the optional extra part


_ROCK_KIT = {KICK: "x.....o.x.o.....", SNARE: "....x.......x...", HAT: "x.o.x.o.x.o.x.o."}
GENRES: dict[str, Genre] = {g.name: g for g in (
    Genre(
        "rock", (100, 150), ("happy", "energetic", "dark", "sad", "tense"),
        drums=(_ROCK_KIT,
               {KICK: "x.......x.x.....", SNARE: "....x.......x...", RIDE: "x.o.x.o.x.o.x.o."},
               {KICK: "x.x.....x.x.....", SNARE: "....x.......x..g", HAT: "x.x.x.x.x.x.x.x.", CRASH: "x..............."}),
        bass=(("x-x-x-x-x-x-x-x-", "R"), ("x---x---x-x-x---", "RR58")),
        comp=("x-x-x-x-x-x-x-x-", "x-------x-------", "x--x--x-x--x--x-"),
        progressions=((0, 4, 5, 3), (0, 3, 4, 3), (0, 5, 3, 4), (0, 6, 3, 0)),
        palettes={"bass": ("electric bass",), "chords": ("distorted guitar", "electric guitar", "piano", "organ"),
                  "melody": ("electric guitar", "distorted guitar", "synth lead", "organ"),
                  "extra": ("organ", "strings", "piano")},
    ),
    Genre(
        "metal", (130, 190), ("dark", "energetic", "tense"),
        drums=({KICK: "xoxoxoxoxoxoxoxo", SNARE: "....x.......x...", CRASH: "x.......x......."},
               {KICK: "x.x.x.x.x.x.x.x.", SNARE: "....x.......x...", RIDE: "x.x.x.x.x.x.x.x."}),
        bass=(("x-x-x-x-x-x-x-x-", "R"), ("xxxxxxxxxxxxxxxx", "R")),
        comp=("x-x-x-x-x-x-x-x-", "xxx.xxx.xxx.x.x."),
        progressions=((0, 5, 6, 0), (0, 1, 0, 5), (0, 3, 5, 4)),
        palettes={"bass": ("electric bass",), "chords": ("distorted guitar",),
                  "melody": ("distorted guitar", "synth lead"), "extra": ("choir", "strings", "organ")},
        melody_density=1.2, humanise_s=0.005,
    ),
    Genre(
        "jazz", (80, 180), ("happy", "calm", "romantic", "sad", "dreamy"),
        drums=({RIDE: "x...x..ox...x..o", PEDAL_HAT: "....x.......x...", KICK: "x..............."},
               {RIDE: "x...x..ox...x..o", PEDAL_HAT: "....x.......x...", SNARE: "......g.....g..."}),
        bass=(("x---x---x---x---", "RW5W"), ("x---x---x---x---", "R35W")),
        comp=("x-----x-........", "....x-........x-", "x-......x-.x-..."),
        progressions=((0, 1, 4, 0), (0, 5, 1, 4), (0, 3, 1, 4), (0, 2, 5, 1)),
        palettes={"bass": ("bass",), "chords": ("piano", "electric piano", "vibraphone", "electric guitar"),
                  "melody": ("saxophone", "trumpet", "clarinet", "vibraphone", "flute"),
                  "extra": ("brass", "strings")},
        swing=0.64, sevenths=True, melody_density=1.2, humanise_s=0.012,
    ),
    Genre(
        "electronic", (118, 138), ("energetic", "happy", "dark", "dreamy", "tense"),
        drums=({KICK: "x...x...x...x...", CLAP: "....x.......x...", HAT: "oxoooxoooxoooxoo", OPEN_HAT: "..x...x...x...x."},
               {KICK: "x...x...x...x...", SNARE: "....x.......x...", HAT: "..x...x...x...x.", SHAKER: "oooooooooooooooo"}),
        bass=(("..x-..x-..x-..x-", "R"), ("x.x.x.x.x.x.x.x.", "R8"), ("x--.x--.x-x.x--.", "R5")),
        comp=("arp", "x---------------", "..x...x...x...x."),
        progressions=((0, 5, 3, 4), (0, 3, 5, 4), (0, 0, 5, 5), (0, 6, 5, 6)),
        palettes={"bass": ("synth bass",), "chords": ("synth pad", "electric piano", "marimba"),
                  "melody": ("synth lead", "marimba", "electric piano"), "extra": ("synth pad", "strings")},
        melody_density=1.3, humanise_s=0.0,
    ),
    Genre(
        "classical", (60, 140), ("happy", "sad", "calm", "romantic", "dark", "dreamy", "tense"),
        drums=(),
        bass=(("x-------x-------", "R5"), ("x---x---x---x---", "R538"), ("x---------------", "R")),
        comp=("arp", "x---x---x---x---", "x-------x-------"),
        progressions=((0, 3, 4, 0), (0, 5, 3, 4), (0, 1, 4, 0), (0, 3, 0, 4)),
        palettes={"bass": ("cello",), "chords": ("strings", "piano", "harp", "organ"),
                  "melody": ("violin", "flute", "clarinet", "piano"), "extra": ("strings", "choir", "harp")},
        humanise_s=0.012,
    ),
    Genre(
        "hip-hop", (80, 100), ("dark", "calm", "sad", "energetic"),
        drums=({KICK: "x......x..x.....", SNARE: "....x.......x...", HAT: "x.x.x.x.x.x.x.x."},
               {KICK: "x.....x...x..x..", CLAP: "....x.......x...", HAT: "xxxoxxxoxxxoxxxo"}),
        bass=(("x-----x...x-....", "R"), ("x-.....xx-......", "R5")),
        comp=("x-------x-------", "x---------------", "x-.x-...x-.x-..."),
        progressions=((0, 0, 5, 5), (0, 5, 3, 4), (0, 3, 0, 3)),
        palettes={"bass": ("synth bass", "electric bass"), "chords": ("electric piano", "piano", "strings", "synth pad"),
                  "melody": ("synth lead", "flute", "vibraphone", "saxophone"), "extra": ("strings", "synth pad")},
        swing=0.58, melody_density=0.8,
    ),
    Genre(
        "folk", (80, 130), ("happy", "sad", "calm", "romantic"),
        drums=(),
        bass=(("x-------x-------", "R5"), ("x---x---x---x---", "R5")),
        comp=("x-x-x-x-x-x-x-x-", "x--x--x-x--x--x-", "arp"),
        progressions=((0, 3, 4, 0), (0, 4, 5, 3), (0, 3, 0, 4)),
        palettes={"bass": ("bass", "cello"), "chords": ("acoustic guitar", "harp", "piano"),
                  "melody": ("violin", "flute", "clarinet"), "extra": ("harp", "strings")},
        humanise_s=0.012,
    ),
    Genre(
        "reggae", (70, 95), ("happy", "calm", "romantic"),
        drums=({KICK: "........x.......", RIM: "........x.......", HAT: "x.o.x.o.x.o.x.o."},
               {KICK: "x.......x.......", SNARE: "........x.......", HAT: "o.x.o.x.o.x.o.x."}),
        bass=(("x--.....x-.x-...", "R5R"), ("..x-..x...x-x...", "R58")),
        comp=("....x.......x...", "..x...x...x...x."),
        progressions=((0, 3, 0, 4), (0, 5, 3, 4), (0, 3, 3, 0)),
        palettes={"bass": ("electric bass",), "chords": ("electric guitar", "organ", "piano"),
                  "melody": ("trumpet", "saxophone", "synth lead"), "extra": ("organ", "brass")},
        swing=0.56,
    ),
    Genre(
        "ambient", (60, 85), ("calm", "dreamy", "dark", "sad"),
        drums=(),
        bass=(("x---------------", "R"), ("x-------x-------", "R5")),
        comp=("x---------------",),
        progressions=((0, 3, 0, 3), (0, 5, 3, 0), (0, 4, 5, 3)),
        palettes={"bass": ("synth bass", "cello"), "chords": ("synth pad", "strings", "choir"),
                  "melody": ("electric piano", "vibraphone", "harp", "flute", "piano"), "extra": ("choir", "synth pad")},
        melody_density=0.6, humanise_s=0.01, extra_p=0.7,
    ),
    Genre(
        "blues", (60, 120), ("sad", "happy", "romantic", "dark"),
        drums=({KICK: "x.......x.......", SNARE: "....x.......x...", HAT: "x.ox.ox.ox.ox.o."},),
        bass=(("x-x-x-x-x-x-x-x-", "R358"), ("x---x---x---x---", "R35W")),
        comp=("x-.x-.x-.x-.x-.x", "x-------x-------"),
        progressions=((0, 3, 0, 0, 3, 3, 0, 0, 4, 3, 0, 4),),
        palettes={"bass": ("electric bass", "bass"), "chords": ("piano", "organ", "electric guitar"),
                  "melody": ("electric guitar", "saxophone", "trumpet"), "extra": ("organ", "brass")},
        swing=0.66, sevenths=True,
    ),
    Genre(
        "funk", (95, 120), ("happy", "energetic"),
        drums=({KICK: "x..x......x.....", SNARE: "....x..g.g..x...", HAT: "xoxoxoxoxoxoxoxo"},
               {KICK: "x.x....x..x.....", SNARE: "....x.......x..g", HAT: "xxxxxxxxxxxxxxxx", OPEN_HAT: "..............x."}),
        bass=(("x.xx..x.x.xx..x.", "R885"), ("x..x..x...x.x...", "R8R5")),
        comp=("..x..x.x..x..x.x", "x..x...x.x..x..."),
        progressions=((0, 0, 3, 3), (0, 3, 0, 4), (0, 3, 0, 3)),
        palettes={"bass": ("electric bass", "synth bass"), "chords": ("electric guitar", "electric piano", "organ"),
                  "melody": ("brass", "saxophone", "trumpet", "synth lead"), "extra": ("brass", "organ")},
        sevenths=True, melody_density=1.2, humanise_s=0.005,
    ),
    Genre(
        "latin", (90, 130), ("happy", "romantic", "energetic"),
        drums=({KICK: "x..x..x.x..x..x.", RIM: "x..x...x..x.x...", SHAKER: "xoooxoooxoooxooo"},
               {LOW_CONGA: "......x.......x.", HI_CONGA: "..xx......xx....", COWBELL: "x...x...x...x...", KICK: "...x.......x...."}),
        bass=(("x-....x-x-....x-", "R55R"), ("...x-..x...x-..x", "5RR5")),
        comp=("x-.x-.x-.x.x-.x.", "x.x..x.x.x..x.x.", "arp"),
        progressions=((0, 1, 4, 0), (0, 3, 4, 0), (0, 5, 1, 4)),
        palettes={"bass": ("bass", "electric bass"), "chords": ("acoustic guitar", "piano", "marimba"),
                  "melody": ("trumpet", "flute", "saxophone", "marimba"), "extra": ("brass", "strings")},
        sevenths=True,
    ),
    Genre(
        "pop", (95, 130), ("happy", "sad", "energetic", "romantic"),
        drums=(_ROCK_KIT,
               {KICK: "x.......x.......", CLAP: "....x.......x...", HAT: "x.x.x.x.x.x.x.x.", TAMBOURINE: "....x.......x..."}),
        bass=(("x-x-x-x-x-x-x-x-", "R"), ("x--x--x-x--x--x-", "R58")),
        comp=("x-------x-------", "x--x--x-x--x--x-", "arp"),
        progressions=((0, 4, 5, 3), (0, 5, 3, 4), (0, 3, 5, 4)),
        palettes={"bass": ("electric bass", "synth bass"), "chords": ("piano", "acoustic guitar", "synth pad", "electric guitar"),
                  "melody": ("synth lead", "piano", "electric piano", "flute"), "extra": ("strings", "synth pad")},
    ),
    Genre(
        "country", (90, 140), ("happy", "sad", "calm"),
        drums=({KICK: "x.......x.......", SNARE: "gogxgogxgogxgogx"},
               {KICK: "x.......x.......", RIM: "....x.......x...", HAT: "x.x.x.x.x.x.x.x."}),
        bass=(("x---x---x---x---", "R5R5"), ("x-------x-------", "R5")),
        comp=("..x-..x-..x-..x-", "x-x-x-x-x-x-x-x-"),
        progressions=((0, 3, 4, 0), (0, 0, 3, 4), (0, 4, 3, 0)),
        palettes={"bass": ("bass", "electric bass"), "chords": ("acoustic guitar", "piano"),
                  "melody": ("violin", "electric guitar", "harp"), "extra": ("strings", "organ")},
    ),
)}
DRUM_FREE = frozenset(name for name, g in GENRES.items() if not g.drums)
