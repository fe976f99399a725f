"""A synthetic labelled music corpus: seeded General MIDI songs whose tags are true by construction.

  genres   the tag vocabulary and the genre and mood templates
  compose  a seeded draw of a song's labels, and a seeded pretty_midi song for them
  render   FluidSynth rendering to 24 kHz mono
  corpus   the parallel, cached corpus build with its manifests (`synth_corpus`)
  noise    incomplete and noisy training tags (bench preset)
  variants near-duplicate songs that differ in one attribute (bench preset)
  describe human-style captions for evaluation clips (bench preset)
  presets  the named corpora: quickstart and bench
"""

from duetmc.synth.compose import SongSpec, compose, draw_spec, song_tags
from duetmc.synth.corpus import (
    HardConfig, SynthConfig, SynthError, SynthReport, differing_categories, item_id, split_of, synth_corpus,
)
from duetmc.synth.noise import TagNoise, observe_tags
from duetmc.synth.presets import PRESETS, preset_config
from duetmc.synth.genres import GENRES, INSTRUMENTS, MOODS, TEMPO_TAGS, key_tag, tempo_tag
from duetmc.synth.render import Renderer, SoundfontError

__all__ = [
    "GENRES", "INSTRUMENTS", "MOODS", "PRESETS", "TEMPO_TAGS", "HardConfig", "Renderer", "SongSpec",
    "SoundfontError", "TagNoise", "differing_categories", "observe_tags", "preset_config",
    "SynthConfig", "SynthError", "SynthReport", "compose", "draw_spec", "item_id", "key_tag",
    "song_tags", "split_of", "synth_corpus", "tempo_tag",
]
