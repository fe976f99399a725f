"""Real recordings, generated: whole 44.1 kHz stereo tracks of 2-2.5 minutes in FLAC, OGG Vorbis, MP3 and
WAV (one truncated, its header promising more than decodes), featurized whole at 24 and 16 kHz; then one
start edited and one item added, and only those recomputed. No audio is committed or downloaded."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from audio_fixtures import noise, tone, write_audio, write_manifest_rows
from duetmc import cache_spec
from duetmc.featurize import audio as fa
from duetmc.featurize.audio import AudioFeaturizeConfig, featurize_audio

SR = 44100
WAV_FRAMES = 5292149  # 120.003 s: torchaudio's resample returns one sample short of the plan at 16 and 24 kHz


@pytest.fixture(scope="module")
def tracks(tmp_path_factory):
    d = tmp_path_factory.mktemp("real")
    music = lambda s, seed: tone(s, SR, freq=196.0 + 20 * seed, channels=2, seed=seed) + noise(s, SR, 2, 0.05, seed)  # noqa: E731
    write_audio(d / "a.flac", music(150.0, 0), SR)
    write_audio(d / "b.ogg", music(130.0, 1), SR)
    write_audio(d / "c.mp3", music(125.0, 2), SR)
    write_audio(d / "d.wav", music(WAV_FRAMES / SR, 3)[:WAV_FRAMES], SR)
    p = write_audio(d / "e.flac", music(140.0, 4), SR)
    p.write_bytes(p.read_bytes()[: int(p.stat().st_size * 0.6)])  # the header still promises 140 s
    rows = [{"id": n, "audio": f"{n}.{ext}"} for n, ext in (("a", "flac"), ("b", "ogg"), ("c", "mp3"), ("d", "wav"),
                                                              ("e", "flac"))]
    rows.append({"id": "b_cut", "audio": "b.ogg", "start": 10.0, "end": 75.0})
    return d, rows


def featurize(manifest, cache, encoder):
    return featurize_audio(AudioFeaturizeConfig(str(manifest), str(cache), encoder, window_s=10.0, batch_size=4,
                                                rows_per_shard=8, workers=2, progress=False))


def group_of(cache):
    root = cache_spec.open_root(str(cache))
    return root["audio"][cache_spec.list_groups(root, "audio")[0]]


@pytest.mark.slow
@pytest.mark.parametrize("rate", [24000, 16000])
def test_whole_tracks_are_featurized_every_window_of_every_clip(tracks, tmp_path, monkeypatch, rate):
    d, rows = tracks
    o, m = 44100 // math.gcd(44100, rate), rate // math.gcd(44100, rate)  # torchaudio's float32 ceiling
    assert torch.ceil(torch.as_tensor(m * WAV_FRAMES / o)) < -(-m * WAV_FRAMES // o)
    monkeypatch.setitem(fa.AUDIO_ENCODERS, "tiny-audio", fa.AudioEncoderSpec("tiny-hubert", "tiny-audio", rate))
    manifest = write_manifest_rows(d / f"m{rate}.jsonl", rows)
    summary = featurize(manifest, tmp_path / "c", "tiny-audio")
    assert (summary.failed, summary.failures) == (0, [])
    assert [w[0] for w in summary.warnings] == ["e"] and "the header promises 140.00 s" in summary.warnings[0][1]
    g = group_of(tmp_path / "c")
    st = cache_spec.group_status(g, "audio", g.basename)
    assert (st.items_done, st.rows_done) == (len(rows), st.rows) and g["done"][:].all()
    ids = list(cache_spec.read_strings(g["ids"]))
    counts = dict(zip(ids, g["item_rows"][:, 1].tolist()))
    assert counts["a"] == 15 and counts["b"] == 13 and counts["d"] == 13 and counts["b_cut"] == 7
    assert 8 <= counts["e"] <= 9  # what decodes of the truncated file: ~84 s of the promised 140
    d_rows = slice(*np.cumsum([0, counts["d"]]) + g["item_rows"][ids.index("d"), 0])
    assert (g["window_len"][d_rows] == 10 * rate).all()  # the last window of d reaches its true end
    assert cache_spec.validate_cache(str(tmp_path / "c")) == []


@pytest.mark.slow
def test_an_edited_start_and_an_added_item_recompute_only_those(tracks, tmp_path):
    d, rows = tracks
    cache = tmp_path / "c"
    first = featurize(write_manifest_rows(d / "m_edit0.jsonl", rows), cache, "tiny-audio")
    assert first.failed == 0
    g = group_of(cache)
    before = {i: g["features"][int(s): int(s + n)] for i, (s, n) in zip(cache_spec.read_strings(g["ids"]), g["item_rows"][:])}
    edited = [dict(r) for r in rows]
    edited[-1]["start"] = 12.5  # b_cut: edited start
    edited.append({"id": "c_cut", "audio": "c.mp3", "start": 5.0, "end": 38.0})
    again = featurize(write_manifest_rows(d / "m_edit1.jsonl", edited), cache, "tiny-audio")
    assert again.plan == {"added": ["c_cut"], "changed": ["b_cut"], "kept": 5, "removed": []}
    assert (again.done, again.failed) == (7 + 4, 0)  # b_cut: 62.5 s -> 7 windows; c_cut: 33 s -> 4
    g = group_of(cache)
    ids = list(cache_spec.read_strings(g["ids"]))
    after = {i: g["features"][int(s): int(s + n)] for i, (s, n) in zip(ids, g["item_rows"][:])}
    for item in ("a", "b", "c", "d", "e"):
        assert after[item].tobytes() == before[item].tobytes(), item  # kept byte for byte
    assert not np.array_equal(after["b_cut"][0], before["b_cut"][0])
    assert g["done"][:][g["window_item"][:] >= 0].all()
    starts = g["window_start"][int(g["item_rows"][ids.index("b_cut"), 0]):][:7]
    assert starts[0] == 0.0 and abs(starts[-1] - 52.5) < 1e-3  # the last window ends at 75 - 12.5 s
    status = json.loads(json.dumps(cache_spec.cache_info(str(cache))["groups"][0]["items_done"]))
    assert status == len(edited)
