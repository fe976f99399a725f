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
import pwd
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
pytestmark = pytest.mark.slow  # one lab cache, featurized once, shared by every test here


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
    home = tmp_path_factory.mktemp("ben")
    mine = home / "mine.zarr"
    res = run_cli("cache", "overlay", mine, "--base", lab["cache"])
    assert res.returncode == 0 and res.stdout.strip() == f"{mine}: overlay of {lab['cache']}", res.stderr
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
    info = run_cli("cache", "info", bens)
    assert info.returncode == 0 and f"overlay of {lab['cache']}" in info.stdout
    assert f"audio/tiny-audio.w2.h2.t2.lall  (from {lab['cache']})" in info.stdout
    assert mine.attrs["text_set"]["name"] == "mine" and len(mine.attrs["text_set"]["sha256"]) == 64


def test_overlays_stack_and_refuse_bad_bases(lab, bens, tmp_path):
    from duetmc.cache_ops import create_overlay

    create_overlay(str(tmp_path / "o2.zarr"), [str(bens)])  # an overlay of an overlay
    root = cache_spec.open_root(str(tmp_path / "o2.zarr"))
    assert [u for u, _ in root.layers] == [str(tmp_path / "o2.zarr"), str(bens), str(lab["cache"])]
    assert cache_spec.list_groups(root, "text") == ["tiny-text.l-1", "tiny-text.l-1.s-mine"]
    assert root.source_of("text/tiny-text.l-1.s-mine") == str(bens)
    with pytest.raises(UsageError, match="already exists and is not empty"):
        create_overlay(str(tmp_path / "o2.zarr"), [str(lab["cache"])])
    with pytest.raises(CacheError, match="no cache here"):
        create_overlay(str(tmp_path / "o3.zarr"), [str(tmp_path / "missing.zarr")])
    shutil.copytree(bens, tmp_path / "moved.zarr")
    create_overlay(str(tmp_path / "o4.zarr"), [str(tmp_path / "moved.zarr")])
    shutil.rmtree(tmp_path / "moved.zarr")
    with pytest.raises(CacheError, match=r"o4.zarr: this overlay's base cannot be opened: .*moved.zarr: no cache here"):
        cache_spec.open_root(str(tmp_path / "o4.zarr"))


def test_train_and_eval_from_an_overlay_choose_the_text_set_by_name(lab, bens, tmp_path):
    from duetmc.pairs import PairIndex, resolve_spec
    from duetmc.evaluate import EvalConfig, evaluate_run
    with pytest.raises(CacheError, match="2 text feature groups"):
        resolve_spec(str(bens))
    spec = resolve_spec(str(bens), text_key="mine")
    assert spec.text.text_set == "mine"
    theirs = PairIndex(resolve_spec(str(bens), text_key="views"))
    ours = PairIndex(spec)
    assert len(theirs.ids) == len(ours.ids) == 24
    assert theirs.text_lengths.shape != ours.text_lengths.shape  # two different sets of texts
    res = run_cli("train", "--cache", bens, "--text-set", "mine", "--out", tmp_path / "run", "--epochs", "1",
                  "--batch-size", "8", "--json")
    assert res.returncode == 0, res.stderr
    [result] = evaluate_run(tmp_path / "run", [], EvalConfig(queries="all"))
    assert result["cache"] == str(bens) and result["n_items"] == 5 and "en" in result["text_to_music"]
    # the same run queried with the lab's own texts, chosen by name
    [theirs_result] = evaluate_run(tmp_path / "run", [], EvalConfig(queries="all"), text_set="views")
    assert theirs_result["text_to_music"]["en"] != result["text_to_music"]["en"]
    with pytest.raises(CacheError, match=r"no text set 'nope' for tiny-text.l-1; it has \['tiny-text.l-1', 'tiny-text.l-1.s-mine'\]"):
        evaluate_run(tmp_path / "run", [], EvalConfig(queries="all"), text_set="nope")


def test_a_base_that_grew_after_the_overlay_is_reported(lab, tmp_path):
    from duetmc.cache_ops import create_overlay, refresh_overlay
    from duetmc.overlay import CacheDriftWarning

    base = tmp_path / "growing.zarr"
    featurize_audio(lab["root"] / "manifest.jsonl", base, task="0/2")
    create_overlay(str(tmp_path / "o.zarr"), [str(base)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cache_spec.open_root(str(tmp_path / "o.zarr"))  # unchanged: silent
    featurize_audio(lab["root"] / "manifest.jsonl", base, task="1/2")  # another featurizer appends
    with pytest.warns(CacheDriftWarning, match=r"audio/tiny-audio.w2.h2.t2.lall changed \(done rows 8 -> 24\).*--refresh"):
        cache_spec.open_root(str(tmp_path / "o.zarr"))
    assert refresh_overlay(str(tmp_path / "o.zarr")) == [
        f"{base}: audio/tiny-audio.w2.h2.t2.lall changed (done rows 8 -> 24)"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cache_spec.open_root(str(tmp_path / "o.zarr"))


# --- 3: copy a subset for a colleague, merge caches of different clips --------------------------


def _features_by_id(cache, text_key=None) -> dict[str, np.ndarray]:
    root = cache_spec.open_root(str(cache))
    g = root["audio"][cache_spec.list_groups(root, "audio")[0]]
    ids, item_rows, feats = cache_spec.read_strings(g["ids"]), np.asarray(g["item_rows"][:]), g["features"][:]
    return {str(i): feats[s:s + n] for i, (s, n) in zip(ids, item_rows)}


def test_copy_of_the_test_split_and_two_layers_trains_and_keeps_provenance(lab, bens, tmp_path):
    from duetmc.cache_ops import copy_cache
    from duetmc.pairs import PairIndex, resolve_spec

    out = copy_cache(str(bens), str(tmp_path / "test.zarr"), split="test", layers=[1, 2])
    assert [g["to"] for g in out["groups"]] == ["audio/tiny-audio.w2.h2.t2.l1-2", "text/tiny-text.l-1",
                                                "text/tiny-text.l-1.s-mine"]
    root = cache_spec.open_root(str(tmp_path / "test.zarr"))
    a = root["audio/tiny-audio.w2.h2.t2.l1-2"]
    src = cache_spec.open_root(str(lab["cache"]))["audio/tiny-audio.w2.h2.t2.lall"]
    assert a.attrs["encoder"] == src.attrs["encoder"] and a.attrs["layers"] == [1, 2]
    assert a.attrs["derived_from"]["sources"][0]["cache"] == str(bens)
    assert a.attrs["derived_from"]["selection"]["split"] == "test"
    full, part = _features_by_id(lab["cache"]), _features_by_id(tmp_path / "test.zarr")
    test_ids = sorted(i.id for i in lab["items"] if i.split == "test")
    assert sorted(part) == test_ids
    for i in test_ids:
        np.testing.assert_array_equal(part[i], full[i][:, 1:3])
    index = PairIndex(resolve_spec(str(tmp_path / "test.zarr"), text_key="mine"))
    assert index.usable.all() and set(index.split) == {"test"} and len(index.queries["en"]) > 0
    assert cache_spec.validate_cache(str(tmp_path / "test.zarr")) == []
    with pytest.raises(UsageError, match=r"--layers \[7\] are not stored; it holds layers \[0, 1, 2\]"):
        copy_cache(str(lab["cache"]), str(tmp_path / "x.zarr"), layers=[7])


def test_merge_of_two_halves_equals_the_whole_and_clashes_are_named(lab, tmp_path):
    from duetmc.cache_ops import copy_cache, merge_caches

    ids = [i.id for i in lab["items"]]
    for name, half in (("a", ids[:10]), ("b", ids[10:])):
        copy_cache(str(lab["cache"]), str(tmp_path / f"{name}.zarr"), items=set(half))
    merge_caches([str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr")], str(tmp_path / "ab.zarr"))
    whole, merged = _features_by_id(lab["cache"]), _features_by_id(tmp_path / "ab.zarr")
    assert sorted(merged) == sorted(whole)
    for i in whole:
        np.testing.assert_array_equal(merged[i], whole[i])
    t_whole = cache_spec.open_root(str(lab["cache"]))["text/tiny-text.l-1"]
    t_merged = cache_spec.open_root(str(tmp_path / "ab.zarr"))["text/tiny-text.l-1"]
    assert sorted(cache_spec.read_strings(t_merged["texts"])) == sorted(cache_spec.read_strings(t_whole["texts"]))
    assert len(t_merged.attrs["derived_from"]["selection"]["merge"]) == 2
    copy_cache(str(lab["cache"]), str(tmp_path / "c.zarr"), items=set(ids[8:12]))
    with pytest.raises(CacheError, match=r"2 item ids occur in more than one input \(clip008, clip009\)"):
        merge_caches([str(tmp_path / "a.zarr"), str(tmp_path / "c.zarr")], str(tmp_path / "bad.zarr"))


def test_merge_refuses_other_weights(lab, tmp_path):
    from duetmc.cache_ops import copy_cache, merge_caches

    copy_cache(str(lab["cache"]), str(tmp_path / "a.zarr"), items={"clip000"})
    copy_cache(str(lab["cache"]), str(tmp_path / "b.zarr"), items={"clip001"})
    g = zarr.open_group(str(tmp_path / "b.zarr" / "audio" / "tiny-audio.w2.h2.t2.lall"), mode="a")
    g.attrs["encoder"] = dict(g.attrs["encoder"], weights_sha256="0" * 64)
    with pytest.raises(CacheError, match=r"were made differently \(encoder weights_sha256"):
        merge_caches([str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr")], str(tmp_path / "ab.zarr"))


# --- 4 + 5: a catalog, and a flipped byte in a copy found and named ------------------------------


def test_ls_lists_every_cache_with_owner_size_and_completeness(lab, bens):
    from duetmc.cache_ops import list_caches

    caches = {Path(c["cache"]).name: c for c in list_caches(str(lab["root"].parent))}
    assert {"lab.zarr", "mine.zarr"} <= set(caches)
    lab_entry = caches["lab.zarr"]
    assert lab_entry["owner"] == pwd.getpwuid(os.getuid()).pw_name
    assert lab_entry["bytes"] > 0 and lab_entry["created"]
    audio = next(g for g in lab_entry["groups"] if g["group"].startswith("audio/"))
    assert (audio["encoder"], audio["items"], audio["items_done"], audio["complete"]) == ("tiny-audio", 24, 24, True)
    assert caches["mine.zarr"]["bases"] == [str(lab["cache"])]
    assert [g["text_set"] for g in caches["mine.zarr"]["groups"]] == ["mine"]
    res = run_cli("cache", "ls", lab["root"].parent, "--json")
    assert res.returncode == 0 and len(json.loads(res.stdout)) >= 2


def test_verify_names_the_shard_rows_and_items_of_a_flipped_byte(lab, tmp_path):
    copy = tmp_path / "copy.zarr"
    shutil.copytree(lab["cache"], copy)
    ok = run_cli("cache", "verify", copy, "--json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    report = json.loads(ok.stdout)
    assert all(g["manifest"] and g["files"] > 0 for g in report["groups"])
    shard = copy / "audio" / "tiny-audio.w2.h2.t2.lall" / "features" / "c" / "1" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0x01
    shard.write_bytes(bytes(data))
    res = run_cli("cache", "verify", copy, "--json")
    assert res.returncode == 1
    [damage] = json.loads(res.stdout)["damage"]
    assert (damage["array"], damage["file"], damage["rows"]) == ("features", "features/c/1/0/0/0", [8, 16])
    assert damage["items"] == [f"clip{i:03d}" for i in range(8, 16)]
    assert "sha256 differs" in damage["reason"]
    # without the manifest the chunk's CRC32C still finds it
    g = zarr.open_group(str(copy / "audio" / "tiny-audio.w2.h2.t2.lall"), mode="a")
    del g.attrs["checksums"]
    from duetmc.cache_integrity import verify_cache

    [damage] = verify_cache(str(copy))["damage"]
    assert damage["file"] == "features/c/1/0/0/0" and "unreadable" in damage["reason"]


# --- 6: a cache served over HTTP by a plain static file server ----------------------------------


@pytest.fixture(scope="module")
def served(lab):
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                             "--directory", str(lab["root"])], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/shared/lab.zarr"
    for _ in range(100):
        try:
            urllib.request.urlopen(url + "/zarr.json", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait()


def test_a_cache_over_http_reads_for_info_validate_train_and_eval(lab, served, tmp_path):
    from duetmc.pairs import resolve_spec
    from duetmc.evaluate import EvalConfig, evaluate_run
    from duetmc.train import TrainConfig, train

    info = run_cli("cache", "info", served, "--json")
    assert info.returncode == 0, info.stderr
    groups = {g["key"]: g for g in json.loads(info.stdout)["groups"]}
    assert groups["tiny-audio.w2.h2.t2.lall"]["items_done"] == 24
    assert cache_spec.validate_cache(served) == []
    from duetmc.cache_integrity import verify_cache

    assert verify_cache(served)["ok"] and all(g["manifest"] for g in verify_cache(served)["groups"])
    run = tmp_path / "run"
    train(TrainConfig(data=[resolve_spec(served)], out=str(run), epochs=1, batch_size=8, progress=False, plots=False))
    [remote] = evaluate_run(run, [served], EvalConfig(queries="all"))
    [local] = evaluate_run(run, [str(lab["cache"])], EvalConfig(queries="all"))
    assert remote["text_to_music"] == local["text_to_music"]
    # an overlay on the web-served cache takes a user's texts locally
    from duetmc.cache_ops import create_overlay

    create_overlay(str(tmp_path / "o.zarr"), [served])
    assert featurize_text(lab["root"] / "mine.jsonl", tmp_path / "o.zarr").done > 0
    res = run_cli("featurize", "text", lab["root"] / "mine.jsonl", "--cache", served, "--encoder", "tiny-text")
    assert res.returncode == 2 and "read-only" in res.stderr and res.stderr.count("\n") == 1


def test_a_missing_remote_extra_is_one_line():
    pytest.importorskip("zarr")
    try:
        import s3fs  # noqa: F401
        pytest.skip("s3fs is installed")
    except ImportError:
        pass
    res = run_cli("cache", "info", "s3://lab-bucket/lab.zarr")
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "pip install 'duetmc[s3]'" in res.stderr


# --- 7: files a lab group can share --------------------------------------------------------------


def test_group_writable_caches_whatever_the_umask(lab, tmp_path):
    import stat

    old = os.umask(0o077)
    try:
        res = run_cli("cache", "copy", lab["cache"], tmp_path / "g.zarr", "--items", _ids_file(tmp_path, ["clip001"]),
                      "--group-writable")
        assert res.returncode == 0, res.stderr
        res = run_cli("cache", "copy", lab["cache"], tmp_path / "r.zarr", "--items", _ids_file(tmp_path, ["clip001"]))
        assert res.returncode == 0, res.stderr
    finally:
        os.umask(old)
    for name, want, unwanted in (("g.zarr", stat.S_IRGRP | stat.S_IWGRP, 0), ("r.zarr", stat.S_IRGRP, stat.S_IWGRP)):
        for d, _, files in os.walk(tmp_path / name):
            for f in [d] + [os.path.join(d, f) for f in files]:
                mode = os.stat(f).st_mode
                assert mode & want == want and not mode & unwanted, (f, oct(mode))
                if os.path.isdir(f) and name == "g.zarr":
                    assert mode & stat.S_ISGID


def _ids_file(tmp_path, ids):
    p = tmp_path / "ids.txt"
    p.write_text("\n".join(ids) + "\n")
    return p


# --- 8: readers keep working while a featurizer appends --------------------------------------------

READER = """
import sys, time, numpy as np
from duetmc.pairs import PairIndex, resolve_spec
from duetmc import cache_spec
cache, stop = sys.argv[1], sys.argv[2]
import os
reads = 0
while not os.path.exists(stop) or reads < 3:
    index = PairIndex(resolve_spec(cache))
    g = cache_spec.open_root(cache)["audio"]["tiny-audio.w2.h2.t2.lall"]
    done = np.asarray(g["done"][:], dtype=bool)
    feats = g["features"][:]
    assert np.isfinite(feats).all()
    assert (np.abs(feats[done]).reshape(done.sum(), -1).sum(1) > 0).all(), "a done row reads as zeros"
    reads += 1
    time.sleep(0.2)  # leave the two CPUs to the writer
print(reads, int(index.usable.sum()))
"""


def test_readers_keep_working_while_a_featurizer_appends(lab, tmp_path):
    cache = tmp_path / "growing.zarr"
    featurize_audio(lab["root"] / "manifest.jsonl", cache, task="0/3")
    featurize_text(lab["root"] / "views.jsonl", cache)
    stop = tmp_path / "stop"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(cache), str(stop)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        writer = run_cli("featurize", "audio", lab["root"] / "manifest.jsonl", "--cache", cache, "--encoder",
                         "tiny-audio", "--window", "2", "--tokens", "2", "--rows-per-shard", "8", "--json")
        assert writer.returncode == 0, writer.stderr
        assert json.loads(writer.stdout)["done"] == 16
    finally:
        stop.touch()
        out, err = reader.communicate(timeout=300)
    assert reader.returncode == 0, err
    reads, usable = map(int, out.split())
    assert reads >= 3 and 8 <= usable <= 24


def test_checksums_of_a_cache_opened_by_a_relative_path(lab, tmp_path, monkeypatch):
    from duetmc.cache_integrity import CHECKSUM_ATTR, record_checksums

    shutil.copytree(lab["cache"], tmp_path / "rel.zarr")
    monkeypatch.chdir(tmp_path)
    group = zarr.open_group("rel.zarr", mode="a")["audio/tiny-audio.w2.h2.t2.lall"]
    recorded = dict(group.attrs[CHECKSUM_ATTR])
    del group.attrs[CHECKSUM_ATTR]
    assert record_checksums(group)
    assert dict(group.attrs[CHECKSUM_ATTR]) == recorded  # the same file names and hashes as from an absolute path
    assert "features/c/1/0/0/0" in recorded["files"]
