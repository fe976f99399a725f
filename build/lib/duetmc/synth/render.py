"""Rendering a pretty_midi song to a mono waveform with FluidSynth, in-process.

A reused FluidSynth synth is not stateless: even after `system_reset` (and with reverb and chorus
off) a song renders differently depending on what was played before, by up to 0.3 of full scale
as measured, which would make the corpus depend on the worker count. So every song gets a fresh
synth. Dynamic sample loading makes that cheap (the soundfont's headers are parsed, and only the
samples of the presets the song selects are read: about 0.07 s against 0.17 s per load of
FluidR3_GM). We also read float samples: `fluid_synth_write_s16` dithers from a counter that
carries over between calls.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pretty_midi
from duetmc.errors import DuetmcError

FLUIDR3_GM = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
TIMGM6MB = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")
# Debian package that ships each soundfont, for the error message
_PACKAGES = {FLUIDR3_GM: "fluid-soundfont-gm", TIMGM6MB: "timgm6mb-soundfont"}

DRUM_CHANNEL = 9  # MIDI channel 10
_PEAK = 10 ** (-1 / 20)  # normalise each clip to -1 dBFS
_FADE_S = 0.01  # short fade-out so a cut note does not click


class SoundfontError(DuetmcError, RuntimeError):
    """A soundfont is missing or unusable; the message says what to install."""


def check_soundfont(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        package = _PACKAGES.get(path)
        hint = (
            f"install it with `sudo apt-get install {package}`"
            if package
            else "pass the path of a General MIDI .sf2 file"
        )
        raise SoundfontError(f"soundfont {path} not found; {hint}")
    return path


class Renderer:
    """Renders songs with one soundfont, each on a fresh synth."""

    def __init__(self, soundfont: str | Path, sample_rate: int):
        import fluidsynth  # the C library is needed only when rendering

        self._fluidsynth = fluidsynth
        self.soundfont = check_soundfont(soundfont)
        self.sample_rate = int(sample_rate)
        write = fluidsynth._fl.fluid_synth_write_float
        write.restype = ctypes.c_int
        write.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                          ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        self._write = write
        synth, _ = self._new_synth()  # fail now, not on the first song, if the soundfont is bad
        synth.delete()

    def _new_synth(self):
        synth = self._fluidsynth.Synth(gain=0.3, samplerate=float(self.sample_rate), channels=16,
                                       **{"synth.dynamic-sample-loading": 1})
        sfid = synth.sfload(str(self.soundfont))
        if sfid < 0:
            synth.delete()
            raise SoundfontError(f"{self.soundfont}: FluidSynth could not load this soundfont; is it a valid .sf2 file?")
        return synth, sfid

    def render(self, pm: pretty_midi.PrettyMIDI, seconds: float) -> np.ndarray:
        """Render exactly `seconds` of `pm` as float32 mono, peak-normalised to -1 dBFS."""
        synth, sfid = self._new_synth()
        try:
            stereo = self._render_stereo(synth, sfid, pm, int(round(seconds * self.sample_rate)))
        finally:
            synth.delete()
        mono = stereo.mean(axis=1)
        peak = float(np.abs(mono).max())
        if peak > 0:
            mono *= _PEAK / peak
        fade = min(len(mono), int(_FADE_S * self.sample_rate))
        mono[len(mono) - fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
        return mono

    def _render_stereo(self, synth, sfid: int, pm: pretty_midi.PrettyMIDI, n: int) -> np.ndarray:
        sr = self.sample_rate
        events: list[tuple[int, int, tuple]] = []  # (sample, order, message); note-offs first at a tie
        for inst, chan in zip(pm.instruments, _assign_channels(pm.instruments)):
            if inst.is_drum:
                synth.program_select(chan, sfid, 128, 0)
            else:
                synth.program_select(chan, sfid, 0, inst.program)
            for cc in inst.control_changes:
                events.append((round(cc.time * sr), 1, ("cc", chan, cc.number, cc.value)))
            for note in inst.notes:
                events.append((round(note.start * sr), 2, ("on", chan, note.pitch, note.velocity)))
                events.append((round(note.end * sr), 0, ("off", chan, note.pitch)))
        events.sort(key=lambda e: (e[0], e[1], e[2]))

        buf = np.zeros(2 * n, dtype=np.float32)  # interleaved stereo, written in place
        ptr, pos = buf.ctypes.data, 0
        for sample, _, msg in events:
            sample = min(sample, n)
            if sample > pos:
                self._write(synth.synth, sample - pos, ptr, 2 * pos, 2, ptr, 2 * pos + 1, 2)
                pos = sample
            if pos >= n:
                break
            if msg[0] == "on":
                synth.noteon(msg[1], msg[2], msg[3])
            elif msg[0] == "off":
                synth.noteoff(msg[1], msg[2])
            else:
                synth.cc(msg[1], msg[2], msg[3])
        if pos < n:
            self._write(synth.synth, n - pos, ptr, 2 * pos, 2, ptr, 2 * pos + 1, 2)
        return buf.reshape(n, 2)


def _assign_channels(instruments: list[pretty_midi.Instrument]) -> list[int]:
    """Drums on channel 10 (index 9); melodic parts on the other 15 channels in order."""
    melodic = (c for c in range(16) if c != DRUM_CHANNEL)
    out = []
    for inst in instruments:
        if inst.is_drum:
            out.append(DRUM_CHANNEL)
        else:
            try:
                out.append(next(melodic))
            except StopIteration:
                raise ValueError("a song may have at most 15 melodic instruments") from None
    return out
