"""The synthetic labelled corpus: tags true by construction, determinism, caching, manifests."""

from __future__ import annotations

import json

import mido
import numpy as np
import pretty_midi
import pytest
import soundfile as sf
from click.testing import CliRunner

from duetmc.manifest import load_manifest
from duetmc.synth import (
    GENRES, INSTRUMENTS, MOODS, SoundfontError, SynthConfig, SynthError, compose, draw_spec, song_tags,
    split_of, synth_corpus, tempo_tag,
)
from duetmc.synth import corpus as corpus_mod
from duetmc.synth import render as render_mod
from duetmc.synth.genres import DRUM_FREE, PROGRAMS, RANGES, scale_of

needs_soundfonts = pytest.mark.skipif(
    not (render_mod.FLUIDR3_GM.is_file() and render_mod.TIMGM6MB.is_file()),
    reason="needs the Debian packages fluid-soundfont-gm and timgm6mb-soundfont",
)


def test_vocabulary_covers_the_required_words():
    assert {"rock", "jazz", "electronic", "classical", "hip-hop", "folk", "reggae", "ambient"} <= set(GENRES)
    assert {"happy", "sad", "calm", "energetic", "dark", "romantic"} <= set(MOODS)
    assert len(INSTRUMENTS) >= 12 and "drums" in INSTRUMENTS
    assert len(set(PROGRAMS.values())) == len(PROGRAMS)  # one program per instrument word
    for g in GENRES.values():
        assert set(g.moods) <= set(MOODS), g.name
        for part, names in g.palettes.items():
            assert set(names) <= set(PROGRAMS), (g.name, part)
    assert DRUM_FREE == {"classical", "folk", "ambient"}
    assert [tempo_tag(b) for b in (60, 89, 90, 119, 120, 180)] == [
        "slow", "slow", "medium tempo", "medium tempo", "fast", "fast"]


def test_tags_match_the_notes_for_many_songs():
    """Spot-check the labels against the MIDI itself, over every genre and many seeds."""
    seen_genres, seen_moods = set(), set()
    for i in range(120):
        rng = np.random.default_rng([7, i])
        spec = draw_spec(rng)
        pm = compose(spec, i, 6.0)
        tags = song_tags(spec, pm)
        seen_genres.add(spec.genre)
        seen_moods.add(spec.mood)
        mood, genre = MOODS[spec.mood], GENRES[spec.genre]

        playing = {"drums" if inst.is_drum else next(k for k, v in PROGRAMS.items() if v == inst.program)
                   for inst in pm.instruments if inst.notes}
        assert set(tags["instrument"]) == playing == {name for _, name in spec.parts}
        if spec.genre in DRUM_FREE:
            assert not any(inst.is_drum for inst in pm.instruments)
        for inst in pm.instruments:
            if not inst.is_drum:
                lo, hi = RANGES[inst.name]
                assert all(lo <= n.pitch <= hi for n in inst.notes), (inst.name, spec)

        # key: the key signature, every pitch in the scale, and the bass plays the tonic in bar one
        tonic_name, mode = tags["key"][0].split()
        assert mode == mood.mode
        assert pm.key_signature_changes[0].key_number == spec.tonic + (12 if mode == "minor" else 0)
        scale = {(spec.tonic + p) % 12 for p in scale_of(mood)}
        pitched = [n for inst in pm.instruments if not inst.is_drum for n in inst.notes]
        assert {n.pitch % 12 for n in pitched} <= scale
        bass = next(inst for (part, _), inst in zip(spec.parts, pm.instruments) if part == "bass")
        first_bar = 4 * 60 / spec.bpm  # every progression starts on the tonic chord
        assert spec.tonic in {n.pitch % 12 for n in bass.notes if n.start < first_bar}
        sharp = {"Eb": "D#", "Ab": "G#", "Bb": "A#"}.get(tonic_name, tonic_name)
        assert pretty_midi.note_number_to_name(spec.tonic + 60) == f"{sharp}4"

        # mood -> tempo window inside the genre's range, and velocities inside the mood's range
        bpm = int(tags["bpm"][0])
        lo, hi = genre.tempo
        assert lo + mood.tempo[0] * (hi - lo) - 0.5 <= bpm <= lo + mood.tempo[1] * (hi - lo) + 0.5
        assert tags["tempo"] == [tempo_tag(bpm)]
        vel = np.array([n.velocity for n in pitched])
        assert mood.velocity[0] - 40 <= np.median(vel) <= mood.velocity[1] + 20
        assert all(0 <= n.start < n.end <= 6.0 for n in pitched)
    assert len(seen_genres) >= 12 and len(seen_moods) == len(MOODS)


def test_moods_differ_in_density_and_velocity():
    """The mood really is audible in the notes: energetic songs are denser and louder than calm."""
    def stats(mood):
        counts, vels = [], []
        for seed in range(12):
            spec = draw_spec(np.random.default_rng(seed), genre="pop" if mood != "calm" else "folk", mood=mood)
            pm = compose(spec, seed, 8.0)
            melody = pm.instruments[[p for p, _ in spec.parts].index("melody")]
            counts.append(len(melody.notes) / (8.0 * spec.bpm / 60))
            vels += [n.velocity for n in melody.notes]
        return np.mean(counts), np.mean(vels)

    (d_energetic, v_energetic), (d_calm, v_calm) = stats("energetic"), stats("calm")
    assert d_energetic > 2 * d_calm
    assert v_energetic > v_calm + 30


def test_draw_spec_refuses_a_mood_foreign_to_the_genre():
    with pytest.raises(ValueError, match="metal"):
        draw_spec(np.random.default_rng(0), genre="metal", mood="romantic")


def test_splits_are_exact_per_block_and_seeded():
    splits = [split_of(3, i, (0.8, 0.1, 0.1)) for i in range(40)]
    for b in range(4):
        block = splits[10 * b: 10 * b + 10]
        assert (block.count("train"), block.count("val"), block.count("test")) == (8, 1, 1)
    assert splits == [split_of(3, i, (0.8, 0.1, 0.1)) for i in range(40)]
    assert splits != [split_of(4, i, (0.8, 0.1, 0.1)) for i in range(40)]
    assert [split_of(0, i, (0.6, 0.2, 0.2)) for i in range(10)].count("test") == 2


def test_config_is_validated(tmp_path):
    with pytest.raises(SynthError, match="splits"):
        SynthConfig(out=tmp_path, splits=(0.5, 0.1, 0.1))
    with pytest.raises(SynthError, match="n_items"):
        SynthConfig(out=tmp_path, n_items=0)


def test_missing_soundfont_names_the_package(tmp_path, monkeypatch):
    missing = tmp_path / "FluidR3_GM.sf2"
    monkeypatch.setattr(render_mod, "_PACKAGES", {missing: "fluid-soundfont-gm"})
    with pytest.raises(SoundfontError, match="apt-get install fluid-soundfont-gm"):
        synth_corpus(SynthConfig(out=tmp_path / "out", n_items=2, soundfont=missing), progress=False)
    assert not (tmp_path / "out").exists()  # nothing written before the check


@needs_soundfonts
def test_same_tags_different_seed_sound_different():
    spec = draw_spec(np.random.default_rng(5), genre="jazz")
    renderer = render_mod.Renderer(render_mod.FLUIDR3_GM, 24000)
    a, b = compose(spec, 1, 3.0), compose(spec, 2, 3.0)
    assert song_tags(spec, a) == song_tags(spec, b)
    xa, xb = renderer.render(a, 3.0), renderer.render(b, 3.0)
    assert xa.shape == xb.shape == (72000,)
    assert np.corrcoef(xa, xb)[0, 1] < 0.5
    # and the same seed renders identically, on a renderer that has played other songs since
    assert np.array_equal(renderer.render(a, 3.0), xa)


def _tree(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
            and p.name != "synth_config.json"}


@needs_soundfonts
@pytest.mark.slow
def test_corpus_end_to_end_deterministic_cached_and_worker_independent(tmp_path):
    cfg = SynthConfig(out=tmp_path / "w1", n_items=10, seed=11, seconds=3.0, workers=1)
    report = synth_corpus(cfg, progress=False)
    assert (report.n_items, report.n_rendered, report.n_cached, report.failed) == (10, 10, 0, [])
    assert report.splits == {"train": 8, "val": 1, "test": 1}

    items = load_manifest(report.manifest)
    assert [it.id for it in items] == [f"synth-{i:06d}" for i in range(10)]
    for it in items:
        x, sr = sf.read(it.audio, dtype="float32")
        assert sr == 24000 and x.ndim == 1 and len(x) == 72000
        assert sf.info(it.audio).subtype == "PCM_16"
        assert np.sqrt(np.mean(x**2)) > 0.01
        assert it.captions == [] and set(it.tags) == {"genre", "instrument", "mood", "tempo", "bpm", "key"}
        # the saved MIDI carries the tagged tempo, and drums on channel 10 exactly when tagged
        mid = it.audio.with_suffix(".mid")
        pm = pretty_midi.PrettyMIDI(str(mid))
        assert round(pm.get_tempo_changes()[1][0]) == int(it.tags["bpm"][0])
        channels = {m.channel for tr in mido.MidiFile(mid).tracks for m in tr if m.type == "note_on"}
        assert (9 in channels) == ("drums" in it.tags["instrument"])
        if it.tags["genre"][0] in DRUM_FREE:
            assert 9 not in channels

    held = load_manifest(report.heldout_manifest)
    test_items = [it for it in items if it.split == "test"]
    assert [h.id for h in held] == [it.id + "-heldout-sf" for it in test_items]
    for h, it in zip(held, test_items):
        assert h.split == "test" and h.tags == it.tags
        xh, xm = sf.read(h.audio)[0], sf.read(it.audio)[0]
        assert len(xh) == len(xm) and not np.array_equal(xh, xm)  # same notes, other timbre
    saved = json.loads(report.config_path.read_text())
    assert saved["seed"] == 11 and saved["heldout_soundfont"].endswith("TimGM6mb.sf2")

    # a rerun renders nothing and leaves the files alone
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "w1").rglob("*.wav")}
    again = synth_corpus(cfg, progress=False)
    assert (again.n_rendered, again.n_cached) == (0, 10)
    assert before == {p: p.stat().st_mtime_ns for p in (tmp_path / "w1").rglob("*.wav")}

    # two workers produce byte-identical files, and a bigger corpus keeps the first items
    cfg2 = SynthConfig(out=tmp_path / "w2", n_items=12, seed=11, seconds=3.0, workers=2)
    synth_corpus(cfg2, progress=False)
    t1, t2 = _tree(tmp_path / "w1"), _tree(tmp_path / "w2")
    shared = [k for k in t1 if k.suffix in (".wav", ".mid")]
    assert len(shared) == 21 and all(t1[k] == t2[k] for k in shared)
    name = report.manifest.relative_to(tmp_path / "w1")
    assert t2[name].startswith(t1[name])

    # a different seed into the same folder is refused, naming the difference
    with pytest.raises(SynthError, match="seed"):
        synth_corpus(SynthConfig(out=tmp_path / "w1", n_items=10, seed=12, seconds=3.0), progress=False)


@needs_soundfonts
def test_one_bad_item_does_not_lose_the_others(tmp_path, monkeypatch):
    real = corpus_mod.draw_spec
    calls = []

    def flaky(rng):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return real(rng)

    monkeypatch.setattr(corpus_mod, "draw_spec", flaky)
    report = synth_corpus(SynthConfig(out=tmp_path, n_items=3, seconds=1.0, heldout_soundfont=None), progress=False)
    assert report.failed == [("synth-000001", "RuntimeError: boom")]
    assert [it.id for it in load_manifest(report.manifest)] == ["synth-000000", "synth-000002"]
    assert report.heldout_manifest is None


@needs_soundfonts
def test_cli_json(tmp_path):
    from duetmc.cli import main

    args = ["synth", "--out", str(tmp_path), "--items", "3", "--seconds", "1", "--workers", "1",
            "--no-heldout-soundfont", "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["n_items"] == 3 and report["heldout_manifest"] is None
    assert len(load_manifest(tmp_path / "manifest.jsonl")) == 3
    bad = CliRunner().invoke(main, ["synth", "--out", str(tmp_path), "--items", "3", "--seconds", "2", "--json"])
    assert bad.exit_code == 2 and "different config" in bad.output
