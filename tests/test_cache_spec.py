"""The cache spec: shard planning, opening and refusing, info and validation, readability by plain tools."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import torch
import zarr

from audio_fixtures import clip_set, write_manifest_rows, write_sine
from duetmc import cache_spec
from duetmc.cache_spec import AudioSettings, CacheError, TextSettings



# --- shard planning ------------------------------------------------------------------------------


def test_task_shards_partition_whole_shards_without_overlap():
    for n_shards in range(0, 23):
        for n_tasks in range(1, 9):
            parts = [cache_spec.task_shards(n_shards, t, n_tasks) for t in range(n_tasks)]
            flat = [s for p in parts for s in p]
            assert flat == list(range(n_shards)), (n_shards, n_tasks)  # each shard exactly once, in order
            sizes = [len(p) for p in parts]
            assert max(sizes) - min(sizes) <= 1  # balanced
            for p in parts:
                assert p == list(range(p[0], p[0] + len(p))) if p else True  # contiguous


def test_shard_ranges_and_parse_task():
    from duetmc.errors import UsageError
    from duetmc.featurize.rows import parse_task

    assert cache_spec.shard_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert cache_spec.shard_ranges(8, 4) == [(0, 4), (4, 8)]
    assert cache_spec.shard_ranges(0, 4) == []
    assert parse_task(None) == (0, 1)
    assert parse_task("2/5") == (2, 5)
    for bad in ("5/5", "-1/2", "1/0", "a/b", "1", "1/2/3"):
        with pytest.raises(UsageError, match="--task"):
            parse_task(bad)


def test_settings_keys_encode_every_feature_setting():
    keys = {AudioSettings("m").key(), AudioSettings("m", window_s=5).key(), AudioSettings("m", hop_s=5).key(),
            AudioSettings("m", tokens=8).key(), AudioSettings("m", layers=(0, 12)).key(), AudioSettings("n").key()}
    assert len(keys) == 6
    # a hop equal to the window gives the same features: the same settings, key and stored dict
    assert AudioSettings("m", window_s=10.0, hop_s=10.0) == AudioSettings("m")
    assert cache_spec.settings_dict(AudioSettings("m", hop_s=10)) == cache_spec.settings_dict(AudioSettings("m"))
    assert AudioSettings("m", hop_s=5.0).hop == 5.0 and AudioSettings("m").hop == 10.0
    assert AudioSettings("tiny-audio", layers=(0, 12)).key() == "tiny-audio.w10.h10.t4.l0-12"
    assert TextSettings("clip-text").key() == "clip-text.l-1"
    assert TextSettings("clip-text", layers=None, max_tokens=32).key() == "clip-text.lall.m32"


def test_weights_sha256_changes_with_any_weight_byte_or_name():
    a = {"w": torch.zeros(3), "b": torch.ones(2)}
    h = cache_spec.state_dict_sha256(a)
    assert h == cache_spec.state_dict_sha256({"b": torch.ones(2), "w": torch.zeros(3)})  # order-free
    assert h != cache_spec.state_dict_sha256({"w": torch.tensor([0.0, 0.0, 1e-7]), "b": torch.ones(2)})
    assert h != cache_spec.state_dict_sha256({"v": torch.zeros(3), "b": torch.ones(2)})
    assert h != cache_spec.state_dict_sha256({"w": torch.zeros(3, dtype=torch.float64), "b": torch.ones(2)})
    assert h != cache_spec.state_dict_sha256({"w": torch.zeros(1, 3), "b": torch.ones(2)})


# --- a real cache with an audio and a text group ---------------------------------------------------


@pytest.fixture(scope="module")
def cache(tmp_path_factory, duetmc_home):
    from duetmc.featurize.audio import AudioFeaturizeConfig, featurize_audio
    from duetmc.featurize.text import TextFeaturizeConfig, featurize_text

    d = tmp_path_factory.mktemp("spec")
    rows = clip_set(d, 5, seconds=0.6)
    write_sine(d / "long.wav", seconds=12.0, sr=16000)
    rows.append({"id": "long", "audio": "long.wav", "captions": ["a long tone"]})
    rows.append({"id": "gone", "audio": "missing.wav"})
    manifest = write_manifest_rows(d / "m.jsonl", rows)
    url = str(d / "cache")
    featurize_audio(AudioFeaturizeConfig(str(manifest), url, "tiny-audio", window_s=5.0, rows_per_shard=4,
                                         batch_size=2, workers=1, progress=False))
    featurize_text(TextFeaturizeConfig(str(manifest), url, "tiny-text", rows_per_shard=4, progress=False))
    return d / "cache"


@pytest.fixture
def copy(cache, tmp_path):
    shutil.copytree(cache, tmp_path / "c")
    return tmp_path / "c"


def test_cache_info_reports_counts_shapes_and_provenance(cache):
    from importlib import metadata

    import transformers

    info = cache_spec.cache_info(str(cache))
    assert info["spec_version"] == cache_spec.SPEC_VERSION
    audio, text = info["groups"]
    assert (audio["modality"], audio["key"], audio["encoder"]) == ("audio", "tiny-audio.w5.h5.t4.lall", "tiny-audio")
    # 5 short clips (one window each), a 12 s track (3 windows of 5 s), a missing file (one failed row)
    assert (audio["items"], audio["items_done"], audio["items_failed"]) == (7, 6, 1)
    assert (audio["rows"], audio["rows_done"], audio["rows_failed"]) == (9, 8, 1)
    assert audio["shape"] == [9, 3, 4, 32]
    assert audio["shards"] == 3 and audio["incomplete_shards"] == []
    assert audio["failures"] == [["gone", f"file not found: {cache.parent / 'missing.wav'}"]]
    assert audio["bytes_on_disk"] > 0
    prov = audio["provenance"]
    assert prov["spec_version"] == 1
    assert prov["settings"] == {"encoder": "tiny-audio", "window_s": 5.0, "hop_s": None, "tokens": 4,
                                "layers": None, "dtype": "float16"}
    assert len(prov["encoder"]["weights_sha256"]) == 64
    assert prov["versions"]["torch"] == metadata.version("torch") and torch.__version__.startswith(prov["versions"]["torch"])
    assert prov["versions"]["transformers"] == transformers.__version__
    assert prov["created"].startswith("20")
    assert (prov["sample_rate"], prov["window_samples"], prov["hop_samples"]) == (24000, 120000, 120000)
    assert prov["layers"] == [0, 1, 2]
    assert text["modality"] == "text" and text["encoder"] == "tiny-text"
    # texts: 5 "rock" tag texts collapse to one, 5 tone captions + "a long tone"
    assert (text["items"], text["items_done"], text["items_failed"]) == (7, 7, 0)
    assert text["shape"][:2] == [7, 1]


def test_validate_passes_a_good_cache(cache):
    assert cache_spec.validate_cache(str(cache)) == []


def open_rw(url, modality, settings):
    return cache_spec.open_features(cache_spec.open_root(str(url), mode="a"), modality, settings)


AUDIO = AudioSettings("tiny-audio", window_s=5.0)
TEXT = TextSettings("tiny-text")


def test_validate_finds_nan_zero_pending_and_inconsistent_rows(copy):
    g = open_rw(copy, "audio", AUDIO)
    x = g["features"][1]
    x[0, 0, 0] = np.nan
    g["features"][1] = x
    g["features"][6] = 0
    g["done"][7] = False
    g["failure"][3] = "made up"
    t = open_rw(copy, "text", TEXT)
    y = t["features"][2]
    y[0, 0, 1] = np.inf
    t["features"][2] = y
    problems = cache_spec.validate_cache(str(copy))
    joined = "\n".join(problems)
    assert "audio/tiny-audio.w5.h5.t4.lall: 1 done rows have NaN/Inf values (first: row 1)" in joined
    assert "1 done rows have all-zero features (first: row 6)" in joined
    assert "1 rows are marked both done and failed" in joined
    assert "audio/tiny-audio.w5.h5.t4.lall: 1 rows not featurized yet" in joined
    # a problem in the audio group does not hide the text group's
    assert "text/tiny-text.l-1: 1 done rows have NaN/Inf values (first: row 2)" in joined
    assert len(problems) == 5


def test_validate_finds_a_broken_window_map(copy):
    g = open_rw(copy, "audio", AUDIO)
    wi = g["window_item"][:]
    wi[[0, 1]] = wi[[1, 0]]
    g["window_item"][:] = wi
    assert any("window -> item map" in p for p in cache_spec.validate_cache(str(copy)))


def test_unreadable_spec_version_and_non_caches_are_refused(copy, tmp_path):
    root = zarr.open_group(str(copy), mode="a")
    root.attrs["duetmc_spec_version"] = 99
    with pytest.raises(CacheError, match=r"spec version 99 cannot be read .* reads versions \[1\]"):
        cache_spec.open_root(str(copy))
    with pytest.raises(CacheError, match="spec version 99"):
        cache_spec.cache_info(str(copy))
    zarr.open_group(str(tmp_path / "plain"), mode="w")
    with pytest.raises(CacheError, match="not a duetmc cache"):
        cache_spec.open_root(str(tmp_path / "plain"))
    with pytest.raises(CacheError, match="no cache here"):
        cache_spec.open_root(str(tmp_path / "nothing"))


def test_open_features_lists_what_the_cache_has_instead(cache):
    root = cache_spec.open_root(str(cache))
    with pytest.raises(CacheError) as err:
        cache_spec.open_features(root, "audio", AudioSettings("tiny-audio", window_s=10.0, tokens=2), "C")
    msg = str(err.value)
    assert "no audio features with the requested settings (audio/tiny-audio.w10.h10.t2.lall)" in msg
    assert "audio/tiny-audio.w5.h5.t4.lall: tokens: cache has 4, requested 2; window_s: cache has 5.0, requested 10.0" in msg
    with pytest.raises(CacheError, match="layers: cache has \\[-1\\], requested None"):
        cache_spec.open_features(root, "text", TextSettings("tiny-text", layers=None))


def test_every_array_has_dimension_names_and_plain_zarr_and_dask_read_it(cache):
    import dask.array as da

    root = zarr.open_group(str(cache), mode="r")  # plain zarr, no duetmc
    arrays = []

    def walk(group):
        for _, a in group.arrays():
            arrays.append(a)
        for _, g in group.groups():
            walk(g)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing in the store that zarr does not recognise
        walk(root)
    assert len(arrays) >= 20
    for a in arrays:
        dims = a.metadata.dimension_names
        assert dims is not None and len(dims) == a.ndim and all(dims), a.path
    feats = root["audio/tiny-audio.w5.h5.t4.lall/features"]
    assert feats.shards == (4, 3, 4, 32) and feats.chunks == (1, 3, 4, 32)
    x = da.from_zarr(feats, chunks=feats.shards)
    assert x.numblocks[0] == 3
    np.testing.assert_array_equal(x.compute(), feats[:])
    done = root["audio/tiny-audio.w5.h5.t4.lall/done"][:]
    assert float(da.from_zarr(feats)[done].astype("float32").std().compute()) > 0
