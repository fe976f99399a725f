"""Audio featurizer, in process with the tiny-audio encoder: decoding, windows, bad inputs, refusals."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
import zarr

from audio_fixtures import BAD_KINDS, clip_set, write_bad, write_manifest_rows, write_sine
from duetmc import cache_spec
from duetmc.cache_spec import AudioSettings, CacheError
from duetmc.featurize.audio import (AudioError, AudioFeaturizeConfig, featurize_audio, load_audio, load_audio_encoder,
                                    resampled_length, time_pool, window_layout)
from duetmc.featurize.decode import scan
from duetmc.featurize.hf import EncoderLoadError, strict_from_pretrained
from duetmc.manifest import Item

SR = 24000  # tiny-audio's rate
MIN_SAMPLES = 400  # tiny-audio's conv front end needs 400 samples for one frame



def featurize(manifest, cache, **kw):
    kw.setdefault("workers", 1)
    return featurize_audio(AudioFeaturizeConfig(str(manifest), str(cache), "tiny-audio", progress=False, **kw))


def group_of(cache, settings=None):
    root = cache_spec.open_root(str(cache))
    return cache_spec.open_features(root, "audio", settings or AudioSettings("tiny-audio"), str(cache))


def failures_by_id(group) -> dict[str, str]:
    ids = cache_spec.read_strings(group["ids"])
    failure = cache_spec.read_strings(group["failure"])
    item_rows = group["item_rows"][:]
    return {str(ids[i]): str(failure[s]) for i, (s, n) in enumerate(item_rows) if failure[s]}


# --- pure helpers ------------------------------------------------------------------------------


def test_window_layout_covers_track_with_last_window_aligned_to_end():
    assert window_layout(250, 100, 100) == [(0, 100), (100, 100), (150, 100)]
    assert window_layout(300, 100, 100) == [(0, 100), (100, 100), (200, 100)]
    assert window_layout(100, 100, 100) == [(0, 100)]
    assert window_layout(40, 100, 100) == [(0, 40)]  # short clip: one unpadded window
    assert window_layout(250, 100, 50) == [(0, 100), (50, 100), (100, 100), (150, 100)]
    for n in range(101, 400, 7):
        lay = window_layout(n, 100, 100)
        assert lay[-1][0] + lay[-1][1] == n and all(length == 100 for _, length in lay)
        covered = np.zeros(n, bool)
        for s, length in lay:
            covered[s:s + length] = True
        assert covered.all()


def test_time_pool_averages_equal_spans_of_frames():
    x = torch.arange(2 * 3 * 8 * 2, dtype=torch.float32).reshape(2, 3, 8, 2)
    out = time_pool(x, 4)
    assert out.shape == (2, 3, 4, 2)
    expected = x.reshape(2, 3, 4, 2, 2).mean(dim=3)  # frames (0,1), (2,3), ...
    assert torch.allclose(out, expected)
    assert torch.allclose(time_pool(x, 1)[:, :, 0], x.mean(dim=2))


def test_planned_length_is_the_exact_ceiling_which_torchaudio_misses_for_long_tracks():
    import torchaudio.functional as AF

    for sr in (8000, 11025, 16000, 22050, 32000, 44100, 48000, 96000):
        for n in (1, 7, 399, 1000, 44101, 123457):
            assert resampled_length(n, sr, SR) == AF.resample(torch.zeros(n), sr, SR).shape[-1], (sr, n)
    # torchaudio takes the ceiling of a float32: one sample short for some lengths of a 2-minute track
    n = 5292047
    assert resampled_length(n, 44100, 16000) == -(-160 * n // 441)
    assert AF.resample(torch.zeros(n), 44100, 16000).shape[-1] == resampled_length(n, 44100, 16000) - 1


# --- decoding ----------------------------------------------------------------------------------


def spectrum_peak_hz(x: np.ndarray, sr: int) -> float:
    mag = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[mag.argmax()])


@pytest.mark.parametrize("sr", [8000, 22050, 24000, 44100, 48000])
@pytest.mark.parametrize("ext", ["wav", "flac", "ogg", "mp3"])
def test_decode_any_rate_and_format_to_mono_24k(tmp_path, sr, ext):
    path = write_sine(tmp_path / f"x.{ext}", seconds=1.3, sr=sr, freq=440.0)
    item = Item("x", path)
    wav = load_audio(item, SR)
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert len(wav) == resampled_length(scan(item).frames, sr, SR)  # the plan and the decode agree
    assert abs(len(wav) - 1.3 * SR) <= 0.05 * SR  # mp3 may add an encoder delay
    assert abs(spectrum_peak_hz(wav, SR) - 440.0) < 3.0
    assert 0.2 < np.abs(wav).max() < 0.4  # amplitude kept (0.3)


@pytest.mark.parametrize("channels", [2, 6])
def test_multichannel_is_downmixed_by_averaging(tmp_path, channels):
    path = write_sine(tmp_path / "x.wav", seconds=1.0, sr=SR, freq=300.0, channels=channels)
    data, _ = sf.read(str(path), dtype="float32")
    wav = load_audio(Item("x", path), SR)
    np.testing.assert_allclose(wav, data.mean(axis=1), atol=1e-6)
    mag = np.abs(np.fft.rfft(wav))
    freqs = np.fft.rfftfreq(len(wav), 1 / SR)
    for k in range(channels):  # channel k is a sine at 300*(k+1) Hz; each survives at 1/channels amplitude
        assert mag[np.argmin(np.abs(freqs - 300.0 * (k + 1)))] > 0.5 * (0.3 / channels) * len(wav) / 2


def test_start_and_end_cut_the_clip(tmp_path):
    path = write_sine(tmp_path / "x.wav", seconds=5.0, sr=SR)
    full, _ = sf.read(str(path), dtype="float32")
    item = Item("x", path, start=1.0, end=3.5)
    np.testing.assert_array_equal(load_audio(item, SR), full[SR: int(3.5 * SR)])
    assert scan(item).frames == int(2.5 * SR)
    assert len(load_audio(Item("x", path, start=4.0, end=99.0), SR)) == SR  # end past the file: clipped
    with pytest.raises(AudioError, match="beyond the end"):
        load_audio(Item("x", path, start=6.0), SR)


@pytest.mark.parametrize("kind", [k for k in BAD_KINDS if k != "too_short"])
def test_load_audio_names_what_is_wrong(tmp_path, kind):
    path = write_bad(tmp_path / "bad.wav", kind)
    with pytest.raises(AudioError, match=BAD_KINDS[kind]):
        load_audio(Item("bad", path), SR)


def test_truncated_wav_decodes_what_is_there_with_a_warning_from_its_header(tmp_path):
    path = write_bad(tmp_path / "t.wav", "truncated")
    # libsndfile alone would silently report the shorter length
    assert sf.info(str(path)).frames < SR
    s = scan(Item("t", path))
    assert s.frames == sf.info(str(path)).frames
    assert s.warning.startswith("truncated: the header promises 48000 bytes")
    assert len(load_audio(Item("t", path), SR)) == s.frames


# --- featurizing -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mixed_cache(tmp_path_factory, duetmc_home):
    """Good clips in every rate, layout and format, plus every kind of bad input, featurized once."""
    d = tmp_path_factory.mktemp("mixed")
    rows = clip_set(d, 3)
    for sr in (8000, 22050, 44100, 48000):
        for ch in (1, 2, 6):
            name = f"sr{sr}_ch{ch}"
            write_sine(d / f"{name}.wav", seconds=0.8, sr=sr, channels=ch)
            rows.append({"id": name, "audio": f"{name}.wav"})
    for ext in ("flac", "ogg", "mp3"):
        write_sine(d / f"fmt.{ext}", seconds=1.2, sr=44100, channels=2)
        rows.append({"id": f"fmt_{ext}", "audio": f"fmt.{ext}"})
    write_sine(d / "long.wav", seconds=25.0, sr=8000, freq=330.0)
    rows.append({"id": "long", "audio": "long.wav"})
    rows.append({"id": "long_last", "audio": "long.wav", "start": 15.0, "end": 25.0})
    rows.append({"id": "cut", "audio": "long.wav", "start": 2.0, "end": 4.5})
    rows.append({"id": "late_start", "audio": "clip000.wav", "start": 30.0})
    bad = {}
    for kind, reason in BAD_KINDS.items():
        write_bad(d / f"bad_{kind}.wav", kind)
        rows.append({"id": f"bad_{kind}", "audio": f"bad_{kind}.wav"})
        bad[f"bad_{kind}"] = reason
    warned = []
    for kind in ("wav", "flac", "mp3"):  # truncated: what decodes is featurized, with a warning
        p = write_sine(d / f"trunc.{kind}", seconds=3.0, sr=SR)
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
        rows.append({"id": f"trunc_{kind}", "audio": f"trunc.{kind}"})
        warned.append(f"trunc_{kind}")
    bad["late_start"] = "beyond the end"
    manifest = write_manifest_rows(d / "m.jsonl", rows)
    cache = d / "cache"
    summary = featurize(manifest, cache, window_s=10.0, batch_size=4, rows_per_shard=8)
    return {"dir": d, "manifest": manifest, "cache": cache, "summary": summary, "bad": bad,
            "ids": [r["id"] for r in rows], "warned": warned}


def test_bad_inputs_fail_with_reasons_and_the_rest_succeed(mixed_cache):
    g = group_of(mixed_cache["cache"])
    bad = mixed_cache["bad"]
    failures = failures_by_id(g)
    assert set(failures) == set(bad), failures
    for item_id, reason in bad.items():
        assert reason in failures[item_id], (item_id, failures[item_id])
    st = cache_spec.group_status(g, "audio", g.basename)
    assert st.items == len(mixed_cache["ids"])
    assert st.items_failed == len(bad)
    assert st.items_done == len(mixed_cache["ids"]) - len(bad)
    assert st.rows_done + st.rows_failed == st.rows  # nothing left pending
    s = mixed_cache["summary"]
    assert s.failed == len(bad) and s.done == st.rows_done and s.skipped == 0
    assert dict(s.failures).keys() == bad.keys()
    done = g["done"][:]
    feats = g["features"][:]
    assert np.isfinite(feats).all()
    assert (np.abs(feats[done]).reshape(done.sum(), -1).max(axis=1) > 0).all()  # every good row has features
    assert not feats[~done].any()  # failed rows stay zero


def test_every_rate_channel_count_and_format_succeeds(mixed_cache):
    g = group_of(mixed_cache["cache"])
    ids = list(cache_spec.read_strings(g["ids"]))
    done = g["done"][:]
    item_rows = g["item_rows"][:]
    for item_id in ids:
        if item_id.startswith(("sr", "fmt_", "clip")):
            s, n = item_rows[ids.index(item_id)]
            assert n == 1 and done[s], item_id


def test_same_tone_at_any_rate_and_layout_gives_nearly_the_same_features(mixed_cache):
    g = group_of(mixed_cache["cache"])
    ids = list(cache_spec.read_strings(g["ids"]))
    feats = g["features"][:].astype(np.float32)
    row = {i: int(g["item_rows"][ids.index(i)][0]) for i in ids}
    ref = feats[row["sr48000_ch1"]]
    same = feats[row["sr44100_ch1"]]
    other = feats[row["clip000"]]  # another tone and length
    assert np.abs(same - ref).mean() < 0.25 * np.abs(other - ref).mean()


def test_long_track_becomes_windows_with_the_last_aligned_to_the_end(mixed_cache):
    g = group_of(mixed_cache["cache"])
    ids = list(cache_spec.read_strings(g["ids"]))
    k = ids.index("long")
    start, count = g["item_rows"][k]
    assert count == 3
    rows = slice(start, start + count)
    np.testing.assert_array_equal(g["window_item"][rows], [k] * 3)
    np.testing.assert_allclose(g["window_start"][rows], [0.0, 10.0, 15.0])
    np.testing.assert_array_equal(g["window_len"][rows], [10 * SR] * 3)
    # the window -> item map covers every row exactly once, in order
    expected = np.repeat(np.arange(len(ids)), g["item_rows"][:, 1])
    np.testing.assert_array_equal(g["window_item"][:], expected)
    assert g["window_item"].shape[0] == int(g["item_rows"][:, 1].sum())
    # the last window is the same audio as the item cut to 15..25 s
    last = g["features"][start + 2].astype(np.float32)
    cut = g["features"][int(g["item_rows"][ids.index("long_last")][0])].astype(np.float32)
    np.testing.assert_allclose(last, cut, atol=2e-3)
    assert not np.allclose(last, g["features"][start].astype(np.float32), atol=1e-2)


def test_start_end_in_manifest_cut_the_featurized_clip(mixed_cache):
    g = group_of(mixed_cache["cache"])
    ids = list(cache_spec.read_strings(g["ids"]))
    s, n = g["item_rows"][ids.index("cut")]
    assert n == 1
    assert g["window_len"][s] == int(2.5 * SR)
    assert g["window_start"][s] == 0.0  # seconds from the item's own start


def test_arrays_carry_dimension_names_and_ids_split_tags(mixed_cache):
    g = group_of(mixed_cache["cache"])
    dims = {name: tuple(a.metadata.dimension_names) for name, a in g.arrays()}
    assert dims["features"] == ("window", "layer", "token", "dim")
    assert dims["done"] == dims["failure"] == dims["window_item"] == ("window",)
    assert dims["ids"] == ("item",) and dims["item_rows"] == ("item", "pair")
    assert all(all(d for d in v) for v in dims.values()), dims
    assert g["features"].dtype == np.float16
    assert g["features"].shape[1:] == (3, 4, 32)  # tiny-audio: 3 hidden states of 32-d; 4 tokens
    assert list(cache_spec.read_strings(g["ids"])) == mixed_cache["ids"]
    assert g.attrs["sample_rate"] == SR and g.attrs["window_samples"] == 10 * SR


def test_rerun_skips_everything_done_and_retries_only_failures(mixed_cache, tmp_path):
    cache = tmp_path / "c"
    shutil.copytree(mixed_cache["cache"], cache)
    before = group_of(cache)["features"][:]
    s = featurize(mixed_cache["manifest"], cache, window_s=10.0, batch_size=4, rows_per_shard=8)
    g = group_of(cache)
    assert s.done == 0
    assert s.skipped == int(g["done"][:].sum())
    assert s.failed == len(mixed_cache["bad"])
    np.testing.assert_array_equal(g["features"][:], before)


def test_layer_selection_stores_the_same_states(tmp_path, mixed_cache):
    manifest = write_manifest_rows(tmp_path / "m.jsonl", clip_set(tmp_path, 3))
    featurize(manifest, tmp_path / "all", rows_per_shard=4)
    featurize(manifest, tmp_path / "sel", layers=(0, -1), rows_per_shard=4)
    full = group_of(tmp_path / "all")["features"][:]
    sel = group_of(tmp_path / "sel", AudioSettings("tiny-audio", layers=(0, -1)))["features"][:]
    assert sel.shape[1] == 2
    np.testing.assert_array_equal(sel[:, 0], full[:, 0])
    np.testing.assert_array_equal(sel[:, 1], full[:, 2])
    with pytest.raises(CacheError, match="layer 7 does not exist"):
        featurize(manifest, tmp_path / "x", layers=(7,))


# --- refusals ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory, duetmc_home):
    d = tmp_path_factory.mktemp("small")
    manifest = write_manifest_rows(d / "m.jsonl", clip_set(d, 4))
    featurize(manifest, d / "cache", rows_per_shard=2, batch_size=2)
    return d, manifest


def test_the_plan_follows_an_edited_manifest(small, tmp_path):
    """Edited start, replaced file, removed and added items: exactly those change; the rest keep their bytes."""
    import os
    import json

    d, manifest = small
    cache = tmp_path / "c"
    shutil.copytree(d / "cache", cache)
    before = group_of(cache)
    n_before = before["done"].shape[0]
    rows = [dict(r, audio=str(d / r["audio"])) for r in map(json.loads, manifest.read_text().splitlines())]
    kept_rows = {i: before["features"][int(s)] for i, (s, n) in enumerate(before["item_rows"][:])}
    rows[0]["start"] = 0.25  # clip000: edited start
    write_sine(tmp_path / "clip002.wav", seconds=1.0, sr=SR, freq=700.0)
    rows[2]["audio"] = str(tmp_path / "clip002.wav")  # clip002: another file
    del rows[1]  # clip001: removed
    rows.append(clip_set(tmp_path, 1, prefix="new")[0])  # new000: added
    rows[-1]["audio"] = str(tmp_path / rows[-1]["audio"])
    edited = write_manifest_rows(tmp_path / "edited.jsonl", rows)
    summary = featurize(edited, cache, rows_per_shard=2, batch_size=2)
    assert summary.plan == {"added": ["new000"], "changed": ["clip000", "clip002"], "kept": 1, "removed": ["clip001"]}
    assert (summary.done, summary.failed) == (3, 0)
    g = group_of(cache)
    ids = list(cache_spec.read_strings(g["ids"]))
    item_rows = g["item_rows"][:]
    split = list(cache_spec.read_strings(g["split"]))
    assert ids == ["clip000", "clip001", "clip002", "clip003", "new000"]
    np.testing.assert_array_equal(g["features"][int(item_rows[3, 0])], kept_rows[3])  # kept: same bytes
    assert item_rows[1, 1] == 0 and split[1] == "removed"  # removed: no rows, out of every split
    for k in (0, 2, 4):
        s = int(item_rows[k, 0])
        assert g["done"][s] and s >= n_before  # re-planned rows are appended
        assert not np.array_equal(g["features"][s], kept_rows.get(k, 0 * kept_rows[3]))
    assert g["window_start"][int(item_rows[0, 0])] == 0.0 and g["window_len"][int(item_rows[0, 0])] == int(0.75 * SR)
    st = cache_spec.group_status(g, "audio", g.basename)
    assert (st.items, st.items_done, st.rows, st.rows_done) == (4, 4, 4, 4)
    assert cache_spec.validate_cache(str(cache)) == []
    again = featurize(edited, cache, rows_per_shard=2, batch_size=2)
    assert again.plan == {"added": [], "changed": [], "kept": 4, "removed": []} and again.done == 0
    # a touched file (same bytes, new mtime) is re-planned too
    st = (d / "clip003.wav").stat()
    os.utime(d / "clip003.wav", ns=(1, 1))
    try:
        assert featurize(edited, cache).plan["changed"] == ["clip003"]
    finally:  # the fixture is shared
        os.utime(d / "clip003.wav", ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_cache_planned_before_fingerprints_keeps_finished_items_and_replans_the_rest(small, tmp_path):
    d, manifest = small
    cache = tmp_path / "c"
    shutil.copytree(d / "cache", cache)
    g = group_of(cache)
    kept = g["features"][:]
    shutil.rmtree(cache / "audio" / g.basename / "item_source")  # as written by an older duetmc
    zarr.open_array(str(cache / "audio" / g.basename / "done"), mode="r+")[1] = False  # clip001 unfinished
    summary = featurize(manifest, cache, rows_per_shard=2, batch_size=2)
    assert summary.plan["changed"] == ["clip001"] and summary.plan["kept"] == 3 and summary.done == 1
    g = group_of(cache)
    np.testing.assert_array_equal(g["features"][:4][[0, 2, 3]], kept[[0, 2, 3]])
    assert cache_spec.group_status(g, "audio", "").items_done == 4


def test_a_file_missing_at_plan_time_is_planned_when_it_appears(tmp_path):
    rows = clip_set(tmp_path, 2)
    (tmp_path / "clip001.wav").rename(tmp_path / "later.wav")
    manifest = write_manifest_rows(tmp_path / "m.jsonl", rows)
    first = featurize(manifest, tmp_path / "c")
    assert first.failed == 1 and "not found" in dict(first.failures)["clip001"]
    (tmp_path / "later.wav").rename(tmp_path / "clip001.wav")
    second = featurize(manifest, tmp_path / "c")
    assert second.plan["changed"] == ["clip001"] and (second.done, second.failed) == (1, 0)
    assert cache_spec.group_status(group_of(tmp_path / "c"), "audio", "").items_done == 2


def test_other_encoder_weights_are_refused(small, tmp_path, duetmc_home):
    from transformers import HubertModel

    d, manifest = small
    cache = tmp_path / "c"
    shutil.copytree(d / "cache", cache)
    model = strict_from_pretrained(HubertModel, str(duetmc_home / "encoders" / "tiny-audio-v1"))
    with torch.no_grad():
        model.encoder.layer_norm.weight.add_(0.5)
    model.save_pretrained(tmp_path / "modified")
    assert load_audio_encoder("tiny-audio", str(tmp_path / "modified")).info["source"] == str(tmp_path / "modified")
    with pytest.raises(CacheError, match="weights sha256"):
        featurize(manifest, cache, encoder_path=str(tmp_path / "modified"))
    # the same weights from another path are fine
    shutil.copytree(duetmc_home / "encoders" / "tiny-audio-v1", tmp_path / "copy")
    assert featurize(manifest, cache, encoder_path=str(tmp_path / "copy")).done == 0


def test_a_plan_cut_short_by_a_kill_is_planned_again(small, tmp_path):
    d, manifest = small
    key = AudioSettings("tiny-audio").key()
    root = cache_spec.open_root(str(tmp_path / "c"), mode="a")
    partial = root.require_group("audio").require_group(key)  # killed before arrays and provenance
    cache_spec.create_array(partial, "ids", (1,), str, (1,), ["item"])
    summary = featurize(manifest, tmp_path / "c", rows_per_shard=2, batch_size=2)
    assert summary.done == 4
    ref = group_of(d / "cache")
    np.testing.assert_array_equal(group_of(tmp_path / "c")["features"][:], ref["features"][:])


def test_settings_are_keyed_and_refused_on_open(small):
    d, _ = small
    root = cache_spec.open_root(str(d / "cache"))
    g = cache_spec.open_features(root, "audio", AudioSettings("tiny-audio"))
    assert g.attrs["settings"] == {"encoder": "tiny-audio", "window_s": 10.0, "hop_s": None, "tokens": 4,
                                   "layers": None, "dtype": "float16"}
    for other, what in [(AudioSettings("tiny-audio", tokens=8), "tokens: cache has 4, requested 8"),
                        (AudioSettings("tiny-audio", window_s=5.0), "window_s: cache has 10.0, requested 5.0"),
                        (AudioSettings("tiny-audio", layers=(0,)), "layers: cache has None, requested [0]"),
                        (AudioSettings("mert-v1-95m"), "encoder: cache has 'tiny-audio', requested 'mert-v1-95m'")]:
        with pytest.raises(CacheError) as err:
            cache_spec.open_features(root, "audio", other, "c")
        assert what in str(err.value)
    with pytest.raises(CacheError, match="no text features"):
        cache_spec.open_features(root, "text", cache_spec.TextSettings("tiny-text"))


def test_edited_settings_attr_under_the_same_key_is_refused(small, tmp_path):
    d, _ = small
    shutil.copytree(d / "cache", tmp_path / "c")
    root = cache_spec.open_root(str(tmp_path / "c"), mode="a")
    g = root["audio"][AudioSettings("tiny-audio").key()]
    g.attrs["settings"] = {**g.attrs["settings"], "dtype": "float32"}
    with pytest.raises(CacheError, match="built with other settings: dtype: cache has 'float32'"):
        cache_spec.open_features(cache_spec.open_root(str(tmp_path / "c")), "audio", AudioSettings("tiny-audio"))


# --- strict weight loading ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_hubert(tmp_path_factory):
    from transformers import HubertConfig, HubertModel

    d = tmp_path_factory.mktemp("hubert") / "ok"
    config = HubertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                          conv_dim=(8,) * 7, do_stable_layer_norm=True, feat_extract_norm="layer",
                          num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2, vocab_size=4)
    torch.manual_seed(1)
    HubertModel(config).save_pretrained(d)
    return d


def corrupt(src, dst, edit):
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    state = load_file(str(dst / "model.safetensors"))
    edit(state)
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


KEY = "encoder.layers.0.attention.k_proj.weight"


def test_strict_load_accepts_the_intact_checkpoint(saved_hubert):
    from safetensors.torch import load_file
    from transformers import HubertModel

    model = strict_from_pretrained(HubertModel, str(saved_hubert))
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    torch.testing.assert_close(model.state_dict()[KEY], load_file(str(saved_hubert / "model.safetensors"))[KEY])


@pytest.mark.parametrize("edit, named", [
    (lambda s: s.__setitem__(KEY.replace("k_proj", "key_proj"), s.pop(KEY)), ["missing", KEY, "unexpected", "key_proj"]),
    (lambda s: s.pop(KEY), ["missing", KEY]),
    (lambda s: s.__setitem__("encoder.extra.weight", torch.zeros(3)), ["unexpected", "encoder.extra.weight"]),
    (lambda s: s.__setitem__(KEY, torch.zeros(4, 4)), ["mismatched", KEY]),
], ids=["renamed", "dropped", "added", "reshaped"])
def test_strict_load_names_the_bad_key(saved_hubert, tmp_path, edit, named):
    from transformers import HubertModel

    bad = corrupt(saved_hubert, tmp_path / "bad", edit)
    with pytest.raises(EncoderLoadError) as err:
        strict_from_pretrained(HubertModel, str(bad))
    for word in named:
        assert word in str(err.value)


def test_unknown_encoder_and_missing_path_are_load_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never reach for the Hub in tests
    with pytest.raises(EncoderLoadError, match="unknown audio encoder"):
        load_audio_encoder("mert-v2")
    with pytest.raises(EncoderLoadError, match="cannot load HubertModel: no directory .*nothing-here"):
        load_audio_encoder("mert-v1-95m", str(tmp_path / "nothing-here"))
    with pytest.raises(EncoderLoadError, match="cannot load HubertModel from 'no-such-model'"):
        load_audio_encoder("mert-v1-95m", "no-such-model")  # a Hub id, offline


def test_resuming_with_another_compute_dtype_is_refused(tmp_path):
    from duetmc.cache_spec import CacheError
    from duetmc.featurize.audio import AudioFeaturizeConfig, featurize_audio, prepare_audio_cache

    rows = clip_set(tmp_path, 2, seconds=0.5)
    write_manifest_rows(tmp_path / "m.jsonl", rows)
    cfg = AudioFeaturizeConfig(str(tmp_path / "m.jsonl"), str(tmp_path / "c.zarr"), "tiny-audio", progress=False)
    featurize_audio(cfg)
    cfg.dtype = "bf16"
    with pytest.raises(CacheError, match="computed in float32; resume it with --dtype float32"):
        prepare_audio_cache(cfg)
