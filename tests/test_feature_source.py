"""Feature sources: streaming never changes the science, one memory-vs-streaming policy, and readers
that check the data (missing or damaged shards are named, refused or skipped), not only the done flags."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from duetmc.cache_spec import CacheError
from duetmc.cli import main
from duetmc.feature_source import MemorySource, StreamingSource, choose_mode, open_source, selected_bytes
from duetmc.pairs import PairIndex, check_compatible, resolve_spec
from duetmc.train import TrainConfig, make_source, train
from train_fixtures import build_signal_cache

# 40 one-window clips, 16 windows per shard: shard 0 holds the train clips clip000-clip015; 24-31 are val.


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    return build_signal_cache(tmp_path_factory.mktemp("tiny"), n_items=40, views=2)


def _copy(cache, tmp_path, name="copy.zarr") -> str:
    dst = tmp_path / name
    shutil.copytree(cache, dst)
    return str(dst)


def _shard_file(cache: str, modality: str, shard: int) -> Path:
    group = next((Path(cache) / modality).iterdir())
    return group / "features" / "c" / str(shard) / "0" / "0" / "0"


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.slow
def test_training_in_streaming_mode_equals_memory_mode(tiny_cache, tmp_path):
    common = dict(data=[resolve_spec(tiny_cache)], epochs=3, batch_size=8, warmup_epochs=1, progress=False,
                  plots=False, keep_epoch_checkpoints=False)
    runs = {}
    for mode in ("memory", "streaming"):
        assert train(TrainConfig(out=str(tmp_path / mode), mode=mode, **common))["mode"] == mode
        runs[mode] = [json.loads(line) for line in (tmp_path / mode / "metrics.jsonl").read_text().splitlines()]
    for key in ("train_loss", "val_loss", "val_R@10"):
        assert [r[key] for r in runs["memory"]] == [r[key] for r in runs["streaming"]]  # exactly, every epoch
    assert len(runs["memory"]) == 3 and all(np.isfinite(r["train_loss"]) for r in runs["memory"])


def test_one_policy_counts_exactly_the_arrays_read(tiny_cache, tmp_path):
    ix = PairIndex(resolve_spec(tiny_cache))
    audio, both = selected_bytes([ix], ("audio",)), selected_bytes([ix])
    assert audio == ix.audio["features"].nbytes and both == audio + ix.text["features"].nbytes
    budget = (audio + (both - audio) / 2) / 2**30  # fits the audio, not audio + text
    assert choose_mode([ix], "auto", budget, ("audio",)) == "memory"  # search reads audio only
    assert choose_mode([ix], "auto", budget) == "streaming"  # train and eval read both
    assert choose_mode([ix], "memory", 0.0) == "memory"
    source, mode = open_source([ix], "auto", budget, modalities=("audio",))
    assert mode == "memory" and isinstance(source, MemorySource) and source.text == []
    cfg = TrainConfig(data=[ix.spec], out=str(tmp_path), memory_budget_gb=budget)
    source, mode = make_source([ix], cfg)  # the trainer asks the same policy
    assert mode == "streaming" and isinstance(source, StreamingSource)
    source.close()


def test_a_deleted_shard_is_refused_by_name(tiny_cache, tmp_path):
    cache = _copy(tiny_cache, tmp_path)
    _shard_file(cache, "audio", 0).unlink()
    with pytest.raises(CacheError, match=r"audio/.*features: shard 0 has no file.*16 item\(s\): clip000, clip001"):
        PairIndex(resolve_spec(cache))
    res = _run("train", "--cache", cache, "--out", tmp_path / "run", "--epochs", 1, "--batch-size", 8)
    assert res.exit_code == 2
    line = res.output.strip()
    assert "\n" not in line and line.startswith("error: ") and "shard 0" in line and "clip000" in line
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_deleted_text_shard_is_refused_or_its_texts_skipped(tiny_cache, tmp_path):
    cache = _copy(tiny_cache, tmp_path)
    _shard_file(cache, "text", 1).unlink()
    with pytest.raises(CacheError, match=r"text/.*features: shard 1 has no file"):
        PairIndex(resolve_spec(cache))
    with pytest.warns(UserWarning, match=r"skipping \d+ item\(s\)"):
        ix = PairIndex(resolve_spec(cache), allow_missing=True)
    gone = np.arange(256, min(512, len(ix.text_done)))
    assert not ix.text_done[gone].any() and ix.skipped["text"]
    used = {r for k in range(len(ix.ids)) for r in ix.captions[k] + ix.views[k] + [int(ix.tags_row[k])]}
    assert not used & set(gone.tolist())


@pytest.mark.slow
def test_allow_missing_trains_and_evaluates_without_the_lost_items(tiny_cache, tmp_path):
    cache = _copy(tiny_cache, tmp_path)
    _shard_file(cache, "audio", 0).unlink()
    run = tmp_path / "run"
    with pytest.warns(UserWarning, match=r"skipping 16 item\(s\).*shard 0.*clip000"):
        res = _run("train", "--cache", cache, "--out", run, "--epochs", 1, "--batch-size", 8, "--allow-missing",
                   "--json")
    assert res.exit_code == 0, res.output
    assert json.loads((run / "config.json").read_text())["data"]["allow_missing"] is True
    res = _run("eval", run, "--subsets", 1, "--split", "val", "--queries", "all", "--json")  # the same loss, refused
    assert res.exit_code == 2 and "shard 0" in res.output
    with pytest.warns(UserWarning, match="skipping 16 item"):
        res = _run("eval", run, "--subsets", 1, "--split", "val", "--allow-missing", "--queries", "all", "--json")
    assert res.exit_code == 0, res.output


def test_a_truncated_shard_is_named_in_both_modes(tiny_cache, tmp_path):
    cache = _copy(tiny_cache, tmp_path)
    path = _shard_file(cache, "audio", 0)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    ix = PairIndex(resolve_spec(cache))  # the file exists: only reading finds the damage
    with pytest.raises(CacheError, match=r"audio/.*features: shard 0 cannot be read .*16 item\(s\): clip000"):
        MemorySource([ix])
    stream = StreamingSource([ix], threads=2)
    with pytest.raises(CacheError, match=r"shard 0 cannot be read .*clip000"):
        stream.audio_batch(np.zeros(2, dtype=np.int64), np.array([20, 3]))
    stream.close()
    ix = PairIndex(resolve_spec(cache), allow_missing=True)
    with pytest.warns(UserWarning, match=r"skipping 16 item\(s\)"):
        source = MemorySource([ix])
    assert not ix.usable[:16].any() and ix.usable[16:].all() and set(ix.skipped["audio"]) == {
        f"clip{i:03d}" for i in range(16)}
    assert float(source.audio[0][16:].abs().sum()) > 0


def test_mixing_refuses_other_weights_and_warns_about_shared_clips(tiny_cache, tmp_path):
    other = _copy(tiny_cache, tmp_path)
    a, b = PairIndex(resolve_spec(tiny_cache)), PairIndex(resolve_spec(other))
    with pytest.warns(UserWarning, match=r"share 24 training clip id\(s\) \(e\.g\. clip000\)"):
        check_compatible([a, b])
    group = zarr.open_group(str(Path(other) / "audio" / a.audio.basename), mode="a")
    encoder = dict(group.attrs["encoder"])
    encoder["weights_sha256"] = "0" * 64
    group.attrs["encoder"] = encoder
    with pytest.raises(CacheError, match="other encoder weights"):
        check_compatible([a, PairIndex(resolve_spec(other))])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_compatible([a])


def test_direct_shard_reads_equal_zarr_reads(tmp_path):
    from duetmc.cache_spec import create_array
    from duetmc.shard_reader import ShardRows

    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    arr = create_array(group, "features", (40, 2, 3, 4), "float16", (1, 2, 3, 4), ("w", "l", "t", "d"),
                       shards=(16, 2, 3, 4))
    data = np.random.default_rng(0).standard_normal((21, 2, 3, 4)).astype(np.float16)
    arr[:21] = data  # shard 1 holds written and never-written rows; shard 2 has no file
    assert ShardRows.supports(arr)
    plain = create_array(group, "plain", (40, 2), "float16", (8, 2), ("w", "d"))
    assert not ShardRows.supports(plain)
    reader = ShardRows(arr, "g/features", lambda rows: [f"item{r}" for r in rows])
    for rows in (np.array([5, 0, 15, 5]), np.array([31, 16, 20, 25])):
        np.testing.assert_array_equal(reader.read(rows), np.asarray(arr[:])[rows])
    with pytest.raises(CacheError, match=r"g/features: shard 2 has no file.*item32"):
        reader.read(np.array([33]))
    first = tmp_path / "g.zarr" / "features" / "c" / "0" / "0" / "0" / "0"
    raw = bytearray(first.read_bytes())
    raw[10] ^= 0xFF  # one flipped bit pattern inside row 0's chunk: its CRC32C no longer matches
    first.write_bytes(bytes(raw))
    with pytest.raises(CacheError, match=r"g/features: shard 0 cannot be read \(row 0"):
        ShardRows(arr, "g/features", lambda rows: [f"item{r}" for r in rows]).read(np.array([0]))
    path = tmp_path / "g.zarr" / "features" / "c" / "1" / "0" / "0" / "0"
    path.write_bytes(path.read_bytes()[:-3])
    fresh = ShardRows(arr, "g/features", lambda rows: [f"item{r}" for r in rows])
    with pytest.raises(CacheError, match=r"g/features: shard 1 cannot be read \(shard index"):
        fresh.read(np.array([16]))


def test_direct_reads_decode_in_place_with_one_pread_per_run(tmp_path, monkeypatch):
    from duetmc import shard_reader
    from duetmc.cache_spec import create_array
    from duetmc.shard_reader import ShardRows

    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    arr = create_array(group, "features", (32, 2, 3, 4), "float16", (1, 2, 3, 4), ("w", "l", "t", "d"),
                       shards=(16, 2, 3, 4))
    data = np.random.default_rng(1).standard_normal((30, 2, 3, 4)).astype(np.float16)
    arr[:30] = data  # rows 30, 31 never written: zeros
    reader = ShardRows(arr, "g/features", lambda rows: [f"item{r}" for r in rows])
    sizes = []
    pread = shard_reader.os.pread
    monkeypatch.setattr(shard_reader.os, "pread", lambda fd, n, at: sizes.append(n) or pread(fd, n, at))
    out = np.full((6, 2, 3, 4), 7, dtype=np.float16)
    reader.read_into(np.array([16, 31, 17, 16, 30]), out, np.array([5, 0, 3, 1, 2]))
    np.testing.assert_array_equal(out[[5, 3, 1]], data[[16, 17, 16]])
    assert not out[[0, 2]].any() and (out[4] == 7).all()  # fill value written; other rows untouched
    assert len(sizes) == 2  # the shard index, then rows 16-17 in one read
    sizes.clear()
    monkeypatch.setattr(shard_reader, "GAP", 0)
    np.testing.assert_array_equal(reader.read(np.array([15, 0, 14])), data[[15, 0, 14]])
    assert len(sizes) == 1 + 2  # the shard index, then rows 0 and 14-15: frames not adjacent are not read


def test_a_chunk_of_the_wrong_size_is_named(tmp_path):
    from duetmc.cache_spec import create_array
    from duetmc.shard_reader import ShardRows

    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    small = create_array(group, "small", (16, 2, 3, 4), "float16", (1, 2, 3, 4), ("w", "l", "t", "d"), shards=(16, 2, 3, 4))
    big = create_array(group, "big", (16, 2, 3, 5), "float16", (1, 2, 3, 5), ("w", "l", "t", "d"), shards=(16, 2, 3, 5))
    small[:] = np.ones((16, 2, 3, 4), dtype=np.float16)
    big[:] = np.ones((16, 2, 3, 5), dtype=np.float16)
    shutil.copy(tmp_path / "g.zarr" / "small" / "c" / "0" / "0" / "0" / "0",
                tmp_path / "g.zarr" / "big" / "c" / "0" / "0" / "0" / "0")  # valid frames, checksums, index
    with pytest.raises(CacheError, match=r"g/big: shard 0 cannot be read \(row 3: decoded 48 bytes, expected 60\)"):
        ShardRows(big, "g/big", lambda rows: [f"item{r}" for r in rows]).read(np.array([3]))
