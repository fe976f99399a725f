"""The daily loop through the CLI and the library: train, eval, ablate, search, embed; data sources."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from duetmc.cli import main
from duetmc.feature_source import MemorySource, StreamingSource
from duetmc.pairs import PairIndex, resolve_spec
from duetmc.sampler import SamplerConfig, epoch_batches
from duetmc.evaluate import EvalConfig, evaluate_embeddings, evaluate_index
from duetmc.run import load_run
from duetmc.train import TrainConfig, fetch, train
from train_fixtures import build_signal_cache


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_every_command_has_help():
    for cmd in ("train", "eval", "ablate", "search", "embed", "featurize", "cache", "augment", "synth",
                "quickstart", "slurm", "datasets"):
        assert "Usage:" in invoke(cmd, "--help")


def test_train_eval_search_embed_cli(signal_cache, tmp_path):
    run = tmp_path / "run"
    summary = json.loads(invoke("train", "--cache", signal_cache, "--out", run, "--epochs", 2, "--batch-size", 16,
                                "--json"))
    assert summary["status"] == "finished" and summary["epochs"] == 2
    cfg = json.loads((run / "config.json").read_text())["optim"]
    assert cfg["epochs"] == 2 and cfg["batch_size"] == 16 and cfg["lr"] == 1e-3  # given options and defaults
    results = json.loads(invoke("eval", run, "--json", "--subsets", 3, "--queries", "all"))
    res = results[0]
    assert res["split"] == "test" and res["n_items"] == 20
    for m in (res["text_to_music"]["en"], res["music_to_text"]):
        assert all(np.isfinite(m[k]) for k in ("R@1", "R@5", "R@10", "MedR", "MeanR"))
        assert 1 <= m["MedR"] <= 20
    # the test clips (80-99) carry all 8 genres and 3 of the 4 moods
    assert 0 <= res["tag_retrieval"]["roc_auc"] <= 1 and res["tag_retrieval"]["n_tags"] == 11
    assert not (run / "eval.json").exists()  # nothing is written into the run
    invoke("eval", run, "--subsets", 3, "--queries", "all", "--out", tmp_path / "res" / "eval.json")
    assert json.loads((tmp_path / "res" / "eval.json").read_text())[0]["n_items"] == 20
    hits = json.loads(invoke("search", run, "a calm jazz song", "-k", 3, "--json"))
    assert len(hits) == 3 and hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    assert set(hits[0]["tags"]) == {"genre", "mood"}
    out = tmp_path / "emb.npz"
    invoke("embed", run, "--out", out, "--split", "test")
    data = np.load(out)
    assert data["audio"].shape == (20, 256) and np.allclose(np.linalg.norm(data["audio"], axis=1), 1, atol=1e-5)
    assert list(data["audio_ids"][:2]) == ["clip080", "clip081"]


def test_eval_refuses_a_cache_built_with_other_settings(signal_cache, tmp_path):
    import shutil

    import zarr

    from duetmc.evaluate import evaluate_run

    run = tmp_path / "run"
    train(TrainConfig(data=[resolve_spec(signal_cache)], out=str(run), epochs=1, batch_size=16, progress=False,
                      plots=False))
    other = tmp_path / "other.zarr"
    shutil.copytree(signal_cache, other)
    key = next(iter(zarr.open_group(str(other / "audio")).group_keys()))
    group = zarr.open_group(str(other / "audio" / key), mode="a")
    settings = dict(group.attrs["settings"])
    settings["tokens"] = 3
    group.attrs["settings"] = settings
    with pytest.raises(ValueError, match="tokens: cache has 3, requested 2"):
        evaluate_run(run, [str(other)], EvalConfig())


def test_ablation_writes_table_chart_and_reuses_runs(signal_cache, tmp_path):
    out = tmp_path / "abl"
    text = invoke("ablate", "--cache", signal_cache, "--eval-cache", signal_cache, "--out", out, "--seeds", 2,
                  "--epochs", 2, "--batch-size", 16, "--no-sweep", "--subsets", 2, "--queries", "all")
    table = (out / "table.md").read_text()
    for row in ("untrained heads", "tags only", "+ tag-to-caption", "+ View Dropout", "+ TextSwap"):
        assert f"| {row} |" in table
    assert "±" in table and "phases: load" in text
    res = json.loads((out / "results.json").read_text())
    assert len(res["rows"]) == 5 * 2 and {r["seed"] for r in res["rows"]} == {0, 1}
    assert (out / "bars.png").stat().st_size > 1000
    assert json.loads((out / "tags_only" / "seed1" / "config.json").read_text())["text"]["p_cap"] == 0.0
    swap = json.loads((out / "textswap" / "seed0" / "config.json").read_text())["text"]
    assert (swap["p_cap"], swap["views"], swap["swap"]) == (0.5, True, True)
    mtime = (out / "textswap" / "seed0" / "last" / "model.safetensors").stat().st_mtime
    invoke("ablate", "--cache", signal_cache, "--eval-cache", signal_cache, "--out", out, "--seeds", 2,
           "--epochs", 2, "--batch-size", 16, "--no-sweep", "--subsets", 2, "--queries", "all")
    assert (out / "textswap" / "seed0" / "last" / "model.safetensors").stat().st_mtime == mtime  # reused, not retrained


def test_streaming_and_memory_sources_give_identical_batches(signal_cache):
    index = PairIndex(resolve_spec(signal_cache))
    specs = epoch_batches([index], SamplerConfig(p_cap=0.5, views=True, swap=True), 0, 0, 16, 1.0)
    mem, stream = MemorySource([index]), StreamingSource([index], threads=4)
    for spec in specs:
        a = fetch(mem, spec, 0, len(spec.ds))
        b = fetch(stream, spec, 0, len(spec.ds))
        for x, y in zip(a, b):
            assert (x is None and y is None) or torch.equal(x, y)
    assert stream.rows_read > 0
    stream.close()


def test_training_in_streaming_mode_equals_memory_mode(signal_cache, tmp_path):
    """The feature source is a performance choice: same seed and config, same losses in both modes."""
    common = dict(data=[resolve_spec(signal_cache)], epochs=2, batch_size=16, progress=False, plots=False,
                  keep_epoch_checkpoints=False)
    a = train(TrainConfig(out=str(tmp_path / "mem"), mode="memory", **common))
    b = train(TrainConfig(out=str(tmp_path / "stream"), mode="streaming", **common))
    assert (a["mode"], b["mode"]) == ("memory", "streaming")
    ma, mb = ([json.loads(x) for x in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
              for r in ("mem", "stream"))
    for key in ("train_loss", "val_loss"):
        assert [m[key] for m in ma] == pytest.approx([m[key] for m in mb], rel=1e-6), key


def test_mixed_caches_with_weights(signal_cache, tmp_path):
    other = build_signal_cache(tmp_path / "b", n_items=40, views=2)
    specs = [resolve_spec(signal_cache, weight=1.0), resolve_spec(other, weight=2.0)]
    indices = [PairIndex(s) for s in specs]
    batches = epoch_batches(indices, SamplerConfig(), 0, 0, 1024, 0.0)
    ds = np.concatenate([b.ds for b in batches])
    assert np.count_nonzero(ds == 0) == len(indices[0].items("train"))
    assert np.count_nonzero(ds == 1) == 2 * len(indices[1].items("train"))
    summary = train(TrainConfig(data=specs, out=str(tmp_path / "run"), epochs=1, batch_size=16, progress=False,
                                plots=False))
    assert summary["status"] == "finished"


def test_multilingual_queries_and_baseline_embeddings(tmp_path):
    from duetmc.featurize.audio import AudioFeaturizeConfig, featurize_audio
    from duetmc.featurize.text import TextFeaturizeConfig, featurize_text
    from duetmc.manifest import load_manifest, write_manifest
    from train_fixtures import write_signal_corpus
    import dataclasses

    items = write_signal_corpus(tmp_path, n_items=20)
    items = [dataclasses.replace(it, captions=[f"a {it.tags['genre'][0]} track"],
                                 captions_i18n={"de": [f"ein {it.tags['genre'][0]} Stück"]}, split="test")
             for it in items]
    write_manifest(items, tmp_path / "m.jsonl")
    cache = str(tmp_path / "c.zarr")
    featurize_audio(AudioFeaturizeConfig(str(tmp_path / "m.jsonl"), cache, "tiny-audio", window_s=2.0, tokens=2,
                                         progress=False))
    featurize_text(TextFeaturizeConfig(str(tmp_path / "m.jsonl"), cache, "minilm", progress=False))
    run = tmp_path / "run"
    index = PairIndex(resolve_spec(cache))
    assert sorted(index.queries) == ["de", "en"]
    train(TrainConfig(data=[resolve_spec(cache)], out=str(run), epochs=0, progress=False, plots=False))
    model, _ = load_run(run)
    res = evaluate_index(model, index, EvalConfig(split="test"))
    assert sorted(res["text_to_music"]) == ["de", "en"] and res["text_to_music"]["de"]["n_queries"] == 20
    # a baseline whose embeddings are perfect scores 100 % under the same protocol
    ids = np.array([it.id for it in load_manifest(tmp_path / "m.jsonl")])
    emb = np.eye(20, dtype=np.float32)
    np.savez(tmp_path / "base.npz", audio=emb, audio_ids=ids, query=emb, query_item=ids)
    base = evaluate_embeddings(tmp_path / "base.npz", EvalConfig())
    assert base["text_to_music"]["en"]["R@1"] == 100.0 and base["text_to_music"]["en"]["MedR"] == 1.0
