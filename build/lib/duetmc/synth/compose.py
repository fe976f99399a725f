"""Composing one song: a seeded draw of its labels (`SongSpec`), then a seeded pretty_midi song.

The spec fixes every tag: genre, mood (hence mode, tempo window, velocity, register and density),
key, BPM and the instrument of each part. `compose` turns a spec and a seed into notes: the drum
pattern variant, bass line, chord progression and voicings, melody, humanised timing and velocity
all come from the seed, so two songs with the same tags still sound different.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pretty_midi

from duetmc.synth.genres import (
    CRASH, DRUMS, GENRES, INSTRUMENT_OF_PROGRAM, MOODS, PROGRAMS, RANGES, SNARE, SUSTAINED, TOMS,
    Genre, Mood, key_tag, scale_of, tempo_tag,
)

PARTS = ("drums", "bass", "chords", "melody", "extra")
_TONE_OFFSETS = {"R": 0, "3": 2, "5": 4, "8": 7}  # bass tones as scale steps above the chord root
_DRUM_VELOCITY = {"x": 12, "o": 0, "g": -30}


@dataclass(frozen=True)
class SongSpec:
    """Everything a song is labelled with. `parts` pairs each part with its instrument."""

    genre: str
    mood: str
    tonic: int  # pitch class of the key's tonic, 0 = C
    bpm: int
    parts: tuple[tuple[str, str], ...]

    @property
    def mode(self) -> str:
        return MOODS[self.mood].mode


def draw_spec(rng: np.random.Generator, genre: str | None = None, mood: str | None = None) -> SongSpec:
    """Draw the labels of one song; `genre` and `mood` may be fixed by the caller."""
    g = GENRES[genre] if genre else GENRES[str(rng.choice(sorted(GENRES)))]
    if mood is not None and mood not in g.moods:
        raise ValueError(f"mood {mood!r} is not one of genre {g.name!r}'s moods {list(g.moods)}")
    m = MOODS[mood] if mood else MOODS[str(rng.choice(g.moods))]
    tonic = int(rng.integers(12))
    lo, hi = g.tempo
    bpm = int(round(lo + rng.uniform(*m.tempo) * (hi - lo)))
    parts: list[tuple[str, str]] = [("drums", DRUMS)] if g.drums else []
    used: set[str] = set()
    for part in ("bass", "chords", "melody", "extra"):
        if part == "extra" and rng.random() >= g.extra_p:
            continue
        free = [i for i in g.palettes[part] if i not in used]
        if not free:
            if part == "extra":
                continue
            raise ValueError(f"genre {g.name!r}: no unused instrument left for its {part} part")
        inst = str(rng.choice(free))
        used.add(inst)
        parts.append((part, inst))
    return SongSpec(g.name, m.name, tonic, bpm, tuple(parts))


def song_tags(spec: SongSpec, pm: pretty_midi.PrettyMIDI) -> dict[str, list[str]]:
    """The item's tags by category; instruments are read off the notes actually in the song."""
    playing = set()
    for inst in pm.instruments:
        if inst.notes:
            playing.add(DRUMS if inst.is_drum else INSTRUMENT_OF_PROGRAM[inst.program])
    return {
        "genre": [spec.genre],
        "instrument": sorted(playing),
        "mood": [spec.mood],
        "tempo": [tempo_tag(spec.bpm)],
        "bpm": [str(spec.bpm)],
        "key": [key_tag(spec.tonic, spec.mode)],
    }


def compose(spec: SongSpec, seed: int, seconds: float) -> pretty_midi.PrettyMIDI:
    """A `seconds`-long multi-track song for `spec`; the same spec and seed give the same song."""
    return _Composer(spec, np.random.default_rng(seed), seconds).song()


def _fold(pitch: int, lo: int, hi: int) -> int:
    """Move a pitch by octaves into the instrument's range."""
    while pitch < lo:
        pitch += 12
    while pitch > hi:
        pitch -= 12
    return pitch


class _Composer:
    def __init__(self, spec: SongSpec, rng: np.random.Generator, seconds: float):
        self.spec, self.rng, self.seconds = spec, rng, seconds
        self.g: Genre = GENRES[spec.genre]
        self.mood: Mood = MOODS[spec.mood]
        self.scale = scale_of(self.mood)
        self.beat = 60.0 / spec.bpm
        self.n_bars = math.ceil(seconds / (4 * self.beat))
        prog = self.g.progressions[rng.integers(len(self.g.progressions))]
        self.chords = [prog[b % len(prog)] for b in range(self.n_bars + 1)]  # chord root degree per bar
        self.velocity = int(rng.integers(self.mood.velocity[0], self.mood.velocity[1] + 1))

    # --- time, pitch and note helpers ---
    def time(self, gstep: int) -> float:
        """Seconds at a global sixteenth step, with the genre's swing on off-beat eighths."""
        beat, sub = divmod(gstep, 4)
        s = self.g.swing
        return (beat + (0.0, s / 2, s, (1 + s) / 2)[sub]) * self.beat

    def pitch(self, degree: int, base: int) -> int:
        """MIDI pitch of a scale degree counted from the tonic at or above MIDI pitch `base`."""
        octave, step = divmod(degree, 7)
        return base + 12 * octave + self.scale[step]

    def tonic_base(self, target: int) -> int:
        """The tonic's MIDI pitch nearest to `target`."""
        return target + ((self.spec.tonic - target + 6) % 12) - 6

    def chord_degrees(self, bar: int) -> list[int]:
        root = self.chords[bar]
        return [root, root + 2, root + 4] + ([root + 6] if self.g.sevenths else [])

    def add(self, inst: pretty_midi.Instrument, pitch: int, velocity: float, start: int, end: int,
            legato: float = 1.0) -> None:
        t0 = self.time(start) + (self.rng.normal(0, self.g.humanise_s) if self.g.humanise_s else 0.0)
        t0 = max(0.0, t0)
        t1 = min(t0 + (self.time(end) - self.time(start)) * legato, self.seconds)
        if t0 >= self.seconds - 0.05 or t1 - t0 < 0.02:
            return
        vel = int(np.clip(round(velocity + self.rng.normal(0, 4)), 1, 127))
        inst.notes.append(pretty_midi.Note(velocity=vel, pitch=int(pitch), start=t0, end=t1))

    @staticmethod
    def onsets(rhythm: str) -> list[tuple[int, int]]:
        """(step, length) of each 'x' in a part rhythm; '-' holds the note, '.' is a rest."""
        out = []
        for i, c in enumerate(rhythm):
            if c == "x":
                n = 1
                while i + n < len(rhythm) and rhythm[i + n] == "-":
                    n += 1
                out.append((i, n))
        return out

    # --- the parts ---
    def song(self) -> pretty_midi.PrettyMIDI:
        spec = self.spec
        pm = pretty_midi.PrettyMIDI(initial_tempo=float(spec.bpm))
        pm.time_signature_changes.append(pretty_midi.TimeSignature(4, 4, 0.0))
        key_number = spec.tonic + (12 if spec.mode == "minor" else 0)
        pm.key_signature_changes.append(pretty_midi.KeySignature(key_number, 0.0))
        make = {"drums": self.drums, "bass": self.bass, "chords": self.comp, "melody": self.melody_part,
                "extra": self.extra}
        for part, name in spec.parts:
            if name == DRUMS:
                inst = pretty_midi.Instrument(program=0, is_drum=True, name=DRUMS)
            else:
                inst = pretty_midi.Instrument(program=PROGRAMS[name], name=name)
            make[part](inst, name)
            pm.instruments.append(inst)
        return pm

    def drums(self, inst: pretty_midi.Instrument, _name: str) -> None:
        pattern = self.g.drums[self.rng.integers(len(self.g.drums))]
        fill_p = 0.5 if self.mood.density >= 1 else 0.2
        for bar in range(self.n_bars):
            fill = bar % 4 == 3 and self.rng.random() < fill_p
            for note, rhythm in pattern.items():
                for step, c in enumerate(rhythm):
                    if c == "." or (fill and step >= 12 and note != CRASH):
                        continue
                    g = bar * 16 + step
                    self.add(inst, note, self.velocity + _DRUM_VELOCITY[c], g, g + 1)
            if fill:
                for step in range(12, 16):
                    self.add(inst, int(self.rng.choice((SNARE, *TOMS))), self.velocity + 6, bar * 16 + step,
                             bar * 16 + step + 1)
            if bar == 0 or (bar % 4 == 0 and self.rng.random() < 0.5):
                self.add(inst, CRASH, self.velocity + 8, bar * 16, bar * 16 + 8)

    def bass(self, inst: pretty_midi.Instrument, name: str) -> None:
        rhythm, tones = self.g.bass[self.rng.integers(len(self.g.bass))]
        base = self.tonic_base(max(RANGES[name][0], 31) + 6)
        k = 0
        for bar in range(self.n_bars):
            root = self.chords[bar]
            for step, length in self.onsets(rhythm):
                tone = tones[k % len(tones)]
                k += 1
                if tone == "W":  # a walking step: a scale step next to the coming chord's root
                    nxt = self.chords[bar + 1] if step >= 8 else root
                    degree = nxt + int(self.rng.choice((-1, 1)))
                else:
                    degree = root + _TONE_OFFSETS[tone]
                p = self.pitch(degree, base)
                while p > base + 14:  # stay low: fold fifths and octaves down
                    p -= 12
                p = _fold(p, *RANGES[name])
                vel = self.velocity + (4 if step % 8 == 0 else -2)
                self.add(inst, p, vel, bar * 16 + step, bar * 16 + step + length, self.mood.legato)

    def voicing(self, bar: int, name: str, center: int, prev: float | None) -> list[int]:
        """Chord pitches near `center`, the inversion chosen for smooth voice leading."""
        if name == "distorted guitar":  # power chord: root, (diatonic) fifth, octave
            base = self.tonic_base(46)
            return [self.pitch(self.chords[bar] + k, base) for k in (0, 4, 7)]
        base = self.tonic_base(center - 12)
        pcs = [self.pitch(d, base) for d in self.chord_degrees(bar)]
        options = []
        for inv in range(len(pcs)):
            notes = pcs[inv:] + [p + 12 for p in pcs[:inv]]
            while notes[0] < center - 7:
                notes = [p + 12 for p in notes]
            while notes[0] >= center + 5:
                notes = [p - 12 for p in notes]
            options.append(notes)
        target = center if prev is None else prev
        options.sort(key=lambda v: abs(np.mean(v) - target))
        notes = options[0] if self.rng.random() < 0.7 else options[min(1, len(options) - 1)]
        lo, hi = RANGES[name]
        return [_fold(p, lo, hi) for p in notes]

    def comp(self, inst: pretty_midi.Instrument, name: str) -> None:
        rhythm = self.g.comp[self.rng.integers(len(self.g.comp))]
        center = int(np.clip(62 + self.rng.integers(-3, 4), RANGES[name][0] + 7, RANGES[name][1] - 12))
        vel = self.velocity - 10
        self.chord_part(inst, name, rhythm, center, vel, self.mood.legato)

    def chord_part(self, inst, name, rhythm, center, vel, legato) -> None:
        prev = None
        up_down = self.rng.random() < 0.5
        for bar in range(self.n_bars):
            notes = self.voicing(bar, name, center, prev)
            prev = float(np.mean(notes))
            if rhythm == "arp":
                order = notes + (notes[-2:0:-1] if up_down else [])
                for i in range(8):
                    g = bar * 16 + 2 * i
                    self.add(inst, order[i % len(order)], vel + (6 if i % 4 == 0 else 0), g, g + 2, 1.0)
                continue
            for step, length in self.onsets(rhythm):
                accent = 5 if step % 8 == 0 else 0
                for p in notes:
                    self.add(inst, p, vel + accent, bar * 16 + step, bar * 16 + step + length, legato)

    def extra(self, inst: pretty_midi.Instrument, name: str) -> None:
        if name in SUSTAINED:  # a pad: held chords above the comping
            center = int(np.clip(67, RANGES[name][0] + 7, RANGES[name][1] - 12))
            self.chord_part(inst, name, "x---------------", center, self.velocity - 18, 1.0)
        else:  # a sparser counter-melody below the lead
            self.melody(inst, name, 0.5 * self.mood.density, self.mood.register - 7, self.velocity - 8)

    def melody_part(self, inst: pretty_midi.Instrument, name: str) -> None:
        self.melody(inst, name, self.mood.density * self.g.melody_density, self.mood.register, self.velocity + 6)

    def melody(self, inst, name: str, density: float, register: int, vel: float) -> None:
        lo, hi = RANGES[name]
        center = int(np.clip((lo + hi) // 2 + register, lo + 7, hi - 7))
        base = self.tonic_base(center)
        in_range = [d for d in range(-14, 15) if lo <= self.pitch(d, base) <= hi
                    and abs(self.pitch(d, base) - center) <= 10]
        d_lo, d_hi = min(in_range), max(in_range)
        motif_a = self.motif(density)
        degree = 0
        for pair in range(math.ceil(self.n_bars / 2)):
            fresh = pair % 4 == 2  # the third phrase is new material, the others repeat the first
            motif = self.motif(density) if fresh else motif_a
            if pair == 0:
                start_a = degree
            elif not fresh:  # a repeat starts where the first phrase did, so the line does not drift
                degree = start_a
            for start, length, rest, move in motif:
                bar = pair * 2 + start // 16
                if bar >= self.n_bars:
                    break
                if rest:
                    continue
                if not fresh and pair > 0 and self.rng.random() < 0.25:  # vary the repeat
                    move = self.step_move()
                degree += move
                if degree < d_lo or degree > d_hi:  # reflect back into the range
                    degree = 2 * (d_lo if degree < d_lo else d_hi) - degree
                if start % 8 == 0:  # strong beats land on a chord tone
                    tones = {d % 7 for d in self.chord_degrees(bar)}
                    degree = min((d for d in range(d_lo, d_hi + 1) if d % 7 in tones),
                                 key=lambda d: (abs(d - degree), d))
                g = pair * 32 + start
                accent = 6 if start % 16 == 0 else 0
                self.add(inst, self.pitch(degree, base), vel + accent, g, g + length, self.mood.legato)

    def step_move(self) -> int:
        """A melodic move in scale steps: mostly steps, some skips, rare leaps."""
        return int(self.rng.choice((-3, -2, -1, 0, 1, 2, 3), p=(.04, .12, .3, .08, .3, .12, .04)))

    def motif(self, density: float) -> list[tuple[int, int, bool, int]]:
        """A two-bar phrase: (step, length, is_rest, move), about `density` notes per beat."""
        target = 4.0 / max(density, 0.1)
        options = np.array([1, 2, 3, 4, 6, 8, 12, 16])
        weights = np.exp(-2.0 * np.abs(np.log2(options / target)))
        weights /= weights.sum()
        out, step = [], 0
        while step < 32:
            length = int(min(self.rng.choice(options, p=weights), 32 - step))
            out.append((step, length, step > 0 and self.rng.random() < 0.12, self.step_move()))
            step += length
        if abs(sum(n[3] for n in out)) > 2:  # a line that drifts far turns back in its second half
            half = len(out) // 2
            out = out[:half] + [(s, n, r, -m) for s, n, r, m in out[half:]]
        return out
