"""Shared caches as two people live them: Ana owns the lab's cache, Ben cannot write it.

A second Unix user cannot run this interpreter here (it lives under root's 0700 home), so Ben's
view of the lab cache is made the strictest way available: `chattr +i` on every file and folder,
which even root cannot write through (chmod a-w where not root). Every test that touches the lab cache
checks at the end of the module that its files hash exactly as before.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr

from duetmc import cache_spec
from duetmc.cache_spec import CacheError, TextSettings
from duetmc.errors import PathError, UsageError
from train_fixtures import write_signal_corpus

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "duetmc", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, env=env)


def tree_hash(root: Path) -> dict[str, str]:
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = Path(d) / f
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def featurize_text(views, cache, **kw):
    from duetmc.featurize.text import TextFeaturizeConfig, featurize_text as run

    return run(TextFeaturizeConfig(str(views), str(cache), "tiny-text", progress=False, **kw))


def featurize_audio(manifest, cache, **kw):
    from duetmc.featurize.audio import AudioFeaturizeConfig, featurize_audio as run

    return run(AudioFeaturizeConfig(str(manifest), str(cache), "tiny-audio", window_s=2.0, tokens=2,
                                    rows_per_shard=8, progress=False, **kw))


def write_views(items, path, n_views, seed):
    from duetmc.augment.captions import TemplateCaptioner
    from duetmc.augment.pipeline import augment_items
    from duetmc.augment.viewsfile import write_views as write

    write(augment_items(items, TemplateCaptioner(), n_views=n_views, seed=seed), path)
    return path


def make_immutable(path: Path) -> str:
    if subprocess.run(["chattr", "-R", "+i", str(path)], capture_output=True).returncode == 0:
        return "chattr"
    if os.getuid() != 0:
        subprocess.run(["chmod", "-R", "a-w", str(path)], check=True)
        return "chmod"
    pytest.skip("cannot make a folder unwritable here (chattr failed and running as root)")


def make_mutable(path: Path, how: str) -> None:
    subprocess.run(["chattr", "-R", "-i", str(path)] if how == "chattr" else ["chmod", "-R", "u+w", str(path)])


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """Ana's lab cache (audio + her views), then frozen; yields paths and the hashes before."""
    root = tmp_path_factory.mktemp("lab")
    items = write_signal_corpus(root, n_items=24)
    write_views(items, root / "views.jsonl", 2, 0)
    write_views(items, root / "mine.jsonl", 1, 7)  # Ben's own captions, other views
    lab_cache = root / "shared" / "lab.zarr"
    assert featurize_audio(root / "manifest.jsonl", lab_cache).failed == 0
    assert featurize_text(root / "views.jsonl", lab_cache).failed == 0
    how = make_immutable(root / "shared")
    before = tree_hash(lab_cache)
    yield {"root": root, "cache": lab_cache, "items": items}
    after = tree_hash(lab_cache)
    make_mutable(root / "shared", how)
    assert after == before, "the lab cache changed"


# --- 7: a cache its user cannot write fails fast, with one line that suggests an overlay ----------


def test_text_into_a_read_only_cache_fails_before_the_model_loads(lab, monkeypatch):
    import duetmc.featurize.text as text

    def no_model(*a, **k):
        raise AssertionError("the encoder was loaded")

    monkeypatch.setattr(text, "load_text_encoder", no_model)
    with pytest.raises(PathError, match=r"lab.zarr.*cannot write.*duetmc cache overlay MINE.zarr --base"):
        featurize_text(lab["root"] / "mine.jsonl", lab["cache"])
    res = run_cli("featurize", "text", lab["root"] / "mine.jsonl", "--cache", lab["cache"], "--encoder", "tiny-text")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.count("\n") == 1 and "overlay" in res.stderr, res.stderr


# --- 1 + 2: an overlay over the lab cache, with Ben's own text set, trains and evaluates ----------


@pytest.fixture(scope="module")
def bens(lab, tmp_path_factory):
    from duetmc.cache_ops import create_overlay

    home = tmp_path_factory.mktemp("ben")
    mine = home / "mine.zarr"
    create_overlay(str(mine), [str(lab["cache"])])
    assert featurize_text(lab["root"] / "mine.jsonl", mine).failed == 0
    return mine


def test_overlay_reads_the_base_and_writes_only_itself(lab, bens):
    root = cache_spec.open_root(str(bens))
    assert root.bases == [str(lab["cache"])]
    assert cache_spec.list_groups(root, "audio") == ["tiny-audio.w2.h2.t2.lall"]
    assert cache_spec.list_groups(root, "text") == ["tiny-text.l-1", "tiny-text.l-1.s-mine"]
    assert root.source_of("text/tiny-text.l-1.s-mine") == str(bens)
    assert root.source_of("audio/tiny-audio.w2.h2.t2.lall") == str(lab["cache"])
    assert sorted(os.listdir(bens / "text")) == ["tiny-text.l-1.s-mine", "zarr.json"]
    assert not (bens / "audio").exists()
    # featurizing the same clips into the overlay finds them done in the base: nothing is written
    summary = featurize_audio(lab["root"] / "manifest.jsonl", bens)
    assert (summary.done, summary.failed, summary.skipped) == (0, 0, 24)
    assert not (bens / "audio").exists()
    mine = cache_spec.open_features(root, "text", TextSettings("tiny-text", text_set="mine"), str(bens))
    assert mine.attrs["text_set"]["name"] == "mine" and len(mine.attrs["text_set"]["sha256"]) == 64


def test_train_and_eval_from_an_overlay_choose_the_text_set_by_name(lab, bens, tmp_path):
    from duetmc.dataset import PairIndex, resolve_spec
    from duetmc.evaluate import EvalConfig, evaluate_run
    from duetmc.train import TrainConfig, train

    with pytest.raises(CacheError, match="2 text feature groups"):
        resolve_spec(str(bens))
    spec = resolve_spec(str(bens), text_key="mine")
    assert spec.text.text_set == "mine"
    theirs = PairIndex(resolve_spec(str(bens), text_key="views"))
    ours = PairIndex(spec)
    assert len(theirs.ids) == len(ours.ids) == 24
    assert theirs.text_lengths.shape != ours.text_lengths.shape  # two different sets of texts
    run = tmp_path / "run"
    train(TrainConfig(data=[spec], out=str(run), epochs=1, batch_size=8, progress=False, plots=False))
    [result] = evaluate_run(run, [], EvalConfig())
    assert result["cache"] == str(bens) and result["n_items"] == 5 and "en" in result["text_to_music"]
    res = run_cli("train", "--cache", bens, "--text-set", "mine", "--out", tmp_path / "cli", "--epochs", "1",
                  "--batch-size", "8", "--json")
    assert res.returncode == 0, res.stderr


def test_a_base_that_grew_after_the_overlay_is_reported(lab, tmp_path):
    from duetmc.cache_ops import create_overlay, refresh_overlay
    from duetmc.overlay import CacheDriftWarning

    base = tmp_path / "growing.zarr"
    featurize_audio(lab["root"] / "manifest.jsonl", base, shard="0/2")
    create_overlay(str(tmp_path / "o.zarr"), [str(base)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cache_spec.open_root(str(tmp_path / "o.zarr"))  # unchanged: silent
    featurize_audio(lab["root"] / "manifest.jsonl", base, shard="1/2")  # another featurizer appends
    with pytest.warns(CacheDriftWarning, match=r"audio/tiny-audio.w2.h2.t2.lall changed \(done rows 8 -> 24\).*--refresh"):
        cache_spec.open_root(str(tmp_path / "o.zarr"))
    assert refresh_overlay(str(tmp_path / "o.zarr")) == [
        f"{base}: audio/tiny-audio.w2.h2.t2.lall changed (done rows 8 -> 24)"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cache_spec.open_root(str(tmp_path / "o.zarr"))
