"""`duetmc featurize` and `duetmc cache` from the command line: SIGKILL-and-resume identity, concurrent
shard processes, exit statuses and summaries, cache info and validate."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from audio_fixtures import BAD_KINDS, clip_set, write_bad, write_manifest_rows
from duetmc import cache_spec
from duetmc.cache_spec import AudioSettings
from duetmc.cli import main

# The subprocess runs: 24 clips of 4 s cut into 1 s windows = 96 rows, 12 shards of 8, batches of 2.
N_CLIPS, CLIP_S = 24, 4.0
N_ROWS = N_CLIPS * int(CLIP_S)
RUN_ARGS = ["--encoder", "tiny-audio", "--window", "1", "--batch-size", "2", "--rows-per-shard", "8",
            "--workers", "1", "--json"]
SETTINGS = AudioSettings("tiny-audio", window_s=1.0)



def cli(*args) -> list[str]:
    return [sys.executable, "-c", "from duetmc.cli import main; main()", *map(str, args)]


def start(*args) -> subprocess.Popen:
    return subprocess.Popen(cli(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 240) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out)


def all_arrays(group: zarr.Group, prefix: str = "") -> dict[str, zarr.Array]:
    out = {prefix + name: a for name, a in group.arrays()}
    for name, g in group.groups():
        out.update(all_arrays(g, f"{prefix}{name}/"))
    return out


def assert_same_group(a: zarr.Group, b: zarr.Group) -> None:
    """Every array equal in metadata and decoded values; attrs equal except the creation time."""
    arrays_a, arrays_b = all_arrays(a), all_arrays(b)
    assert sorted(arrays_a) == sorted(arrays_b)
    for name, x in arrays_a.items():
        y = arrays_b[name]
        assert (x.shape, x.dtype, x.chunks, x.shards) == (y.shape, y.dtype, y.chunks, y.shards), name
        assert x.metadata.dimension_names == y.metadata.dimension_names, name
        vx, vy = x[:], y[:]
        if x.dtype.kind in "OTU":
            vx, vy = np.asarray(vx, dtype=object), np.asarray(vy, dtype=object)
        assert np.array_equal(vx, vy), name
    strip = lambda g: {k: v for k, v in g.attrs.items() if k != "created"}  # noqa: E731
    assert strip(a) == strip(b)
    assert a.attrs["created"] and b.attrs["created"]


def audio_group(cache) -> zarr.Group:
    return cache_spec.open_features(cache_spec.open_root(str(cache)), "audio", SETTINGS, str(cache))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, duetmc_home):
    d = tmp_path_factory.mktemp("cli")
    manifest = write_manifest_rows(d / "m.jsonl", clip_set(d, N_CLIPS, seconds=CLIP_S))
    return d, manifest


@pytest.fixture(scope="module")
def reference(run_dir):
    """One uninterrupted single-process run, the yardstick for the kill and shard tests."""
    d, manifest = run_dir
    summary = finish(start("featurize", "audio", manifest, "--cache", d / "ref", *RUN_ARGS))
    assert (summary["done"], summary["failed"], summary["skipped"]) == (N_ROWS, 0, 0)
    return audio_group(d / "ref")


def done_count(cache) -> int | None:
    """Rows done so far, read while a writer runs (None until the group exists)."""
    try:
        return int(np.asarray(audio_group(cache)["done"][:]).sum())
    except Exception:  # the plan is still being written
        return None


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_is_identical_to_an_uninterrupted_run(run_dir, reference):
    d, manifest = run_dir
    for attempt in range(4):  # a busy machine may finish before we catch it mid-way: try again
        cache = d / f"killed{attempt}"
        proc = start("featurize", "audio", manifest, "--cache", cache, *RUN_ARGS)
        deadline = time.monotonic() + 180
        while proc.poll() is None and time.monotonic() < deadline:
            n = done_count(cache)
            if n is not None and 0 < n < N_ROWS // 2:
                proc.kill()  # SIGKILL: no cleanup, no flush
                break
            time.sleep(0.01)
        proc.wait(timeout=60)
        done_at_kill = done_count(cache)
        if proc.returncode == -9 and done_at_kill is not None and 0 < done_at_kill < N_ROWS:
            break
    else:
        pytest.fail("could not catch the featurizer mid-run in 4 attempts")
    assert not audio_group(cache)["done"][:].all()
    summary = finish(start("featurize", "audio", manifest, "--cache", cache, *RUN_ARGS))
    # nothing finished was recomputed; everything else was
    assert summary["skipped"] == done_at_kill
    assert summary["done"] == N_ROWS - done_at_kill and summary["failed"] == 0
    assert_same_group(audio_group(cache), reference)
    assert cache_spec.validate_cache(str(cache)) == []


@pytest.mark.slow
def test_two_concurrent_shard_processes_equal_one_process(run_dir, reference):
    d, manifest = run_dir
    cache = d / "sharded"
    procs = [start("featurize", "audio", manifest, "--cache", cache, "--task", f"{i}/2", *RUN_ARGS) for i in (0, 1)]
    summaries = [finish(p) for p in procs]
    # 12 shards of 8 rows: each process owns 6 whole shards and nothing else
    assert [s["done"] for s in summaries] == [N_ROWS // 2, N_ROWS // 2]
    assert [s["skipped"] for s in summaries] == [0, 0]
    assert_same_group(audio_group(cache), reference)


@pytest.mark.slow
def test_two_processes_on_one_cache_without_shards_equal_one_process(run_dir, reference):
    """A resubmitted job: both processes claim shards; neither corrupts or redoes the other's rows."""
    d, manifest = run_dir
    cache = d / "twice"
    procs = [start("featurize", "audio", manifest, "--cache", cache, *RUN_ARGS) for _ in range(2)]
    summaries = [finish(p) for p in procs]
    assert sum(s["done"] for s in summaries) == N_ROWS and all(s["failed"] == 0 for s in summaries)
    assert [s["done"] + s["skipped"] for s in summaries] == [N_ROWS, N_ROWS]  # each saw every row done
    g = audio_group(cache)
    feats = g["features"][:]
    assert g["done"][:].all() and (np.abs(feats).reshape(N_ROWS, -1).max(axis=1) > 0).all()
    assert_same_group(g, reference)


# --- in-process CLI: exit statuses, summaries, info, validate ---------------------------------------


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def bad_manifest(tmp_path_factory, duetmc_home):
    d = tmp_path_factory.mktemp("bad")
    rows = clip_set(d, 3, seconds=0.5)
    for kind in BAD_KINDS:
        write_bad(d / f"{kind}.wav", kind)
        rows.append({"id": f"bad_{kind}", "audio": f"{kind}.wav"})
    return d, write_manifest_rows(d / "m.jsonl", rows)


def test_failures_give_a_nonzero_exit_unless_allowed_and_are_listed(bad_manifest):
    d, manifest = bad_manifest
    args = ["featurize", "audio", manifest, "--cache", d / "c", "--encoder", "tiny-audio", "--workers", "1"]
    res = invoke(*args)
    assert res.exit_code == 1
    assert f"{len(BAD_KINDS)} windows failed" in res.stderr and "--allow-failures" in res.stderr
    assert f"windows: done 3, failed {len(BAD_KINDS)}, skipped (already done) 0" in res.stdout
    for kind, reason in BAD_KINDS.items():
        line = next(x for x in res.stdout.splitlines() if f"FAILED bad_{kind}:" in x)
        assert reason in line, line
    res = invoke(*args, "--allow-failures", "--json")
    assert res.exit_code == 0
    summary = json.loads(res.stdout)
    assert (summary["done"], summary["failed"], summary["skipped"]) == (0, len(BAD_KINDS), 3)
    assert sorted(f[0] for f in summary["failures"]) == sorted(f"bad_{k}" for k in BAD_KINDS)
    # the good items are kept, and cache info lists the failures too
    info = json.loads(invoke("cache", "info", d / "c", "--json").stdout)
    (g,) = info["groups"]
    assert (g["items"], g["items_done"], g["items_failed"]) == (3 + len(BAD_KINDS), 3, len(BAD_KINDS))
    assert {f[0] for f in g["failures"]} == {f"bad_{k}" for k in BAD_KINDS}
    res = invoke("cache", "info", d / "c")
    assert res.exit_code == 0 and f"3 done, {len(BAD_KINDS)} failed of {3 + len(BAD_KINDS)}" in res.stdout and "failed    bad_silent: silent" in res.stdout
    # failed items are not a corrupt cache
    assert invoke("cache", "validate", d / "c").exit_code == 0


def test_library_errors_exit_2_with_a_message_not_a_traceback(bad_manifest, tmp_path):
    d, manifest = bad_manifest
    other = write_manifest_rows(tmp_path / "other.jsonl", clip_set(tmp_path, 2, seconds=0.5))
    cache = tmp_path / "c"
    res = invoke("featurize", "audio", other, "--cache", cache, "--encoder", "tiny-audio")
    assert res.exit_code == 0, res.output
    res = invoke("featurize", "audio", manifest, "--cache", cache, "--encoder", "tiny-audio")
    # another manifest into the same cache: the plan follows it and says what it did
    assert res.exit_code == 1 and f"plan: added {1 + len(BAD_KINDS)}, changed 2, kept 0, removed 0" in res.stdout
    res = invoke("featurize", "audio", other, "--cache", cache, "--encoder", "tiny-audio", "--task", "2/2")
    assert res.exit_code == 2 and "need 0 <= I < N" in res.stderr
    res = invoke("featurize", "audio", other, "--cache", cache, "--encoder", "nope")
    assert res.exit_code == 2 and "unknown audio encoder 'nope'" in res.stderr
    zarr.open_group(str(cache), mode="a").attrs["duetmc_spec_version"] = 7
    for args in (["cache", "info", cache], ["cache", "validate", cache],
                 ["featurize", "audio", other, "--cache", cache, "--encoder", "tiny-audio"]):
        res = invoke(*args)
        assert res.exit_code == 2 and "spec version 7 cannot be read" in res.stderr, args
    bad = write_manifest_rows(tmp_path / "bad.jsonl", [{"id": "x", "audio": "x.wav", "split": "dev"}])
    res = invoke("featurize", "audio", bad, "--cache", tmp_path / "c2", "--encoder", "tiny-audio")
    assert res.exit_code == 2 and f"{bad}:1: field 'split'" in res.stderr


@pytest.fixture(scope="module")
def good_cache(tmp_path_factory, duetmc_home):
    d = tmp_path_factory.mktemp("good")
    rows = clip_set(d, 4, seconds=0.5)
    rows[0]["captions_i18n"] = {"de": ["ein Ton"]}
    manifest = write_manifest_rows(d / "m.jsonl", rows)
    cache = d / "cache"
    for args in (["audio", "--encoder", "tiny-audio", "--rows-per-shard", "2", "--batch-size", "2"],
                 ["text", "--encoder", "tiny-text", "--languages", "en"]):
        res = invoke("featurize", args[0], manifest, "--cache", cache, *args[1:], "--json")
        assert res.exit_code == 0, res.output
    return manifest, cache


def test_cache_info_json_has_counts_shapes_and_provenance(good_cache):
    from importlib import metadata

    import transformers

    _, cache = good_cache
    res = invoke("cache", "info", cache, "--json")
    assert res.exit_code == 0
    info = json.loads(res.stdout)
    assert info["spec_version"] == 1 and info["cache"] == str(cache)
    audio, text = info["groups"]
    assert (audio["items"], audio["items_done"], audio["rows"], audio["shards"]) == (4, 4, 4, 2)
    assert audio["shape"] == [4, 3, 4, 32]
    assert (text["items"], text["items_done"], text["shape"][:2]) == (5, 5, [5, 1])  # 1 tags text + 4 captions
    for g in (audio, text):
        p = g["provenance"]
        assert p["spec_version"] == 1 and p["settings"]["encoder"] == g["encoder"]
        assert len(p["encoder"]["weights_sha256"]) == 64
        assert p["versions"]["torch"] == metadata.version("torch")
        assert p["versions"]["transformers"] == metadata.version("transformers") == transformers.__version__
        assert p["created"] and p["versions"]["duetmc"]
    assert text["provenance"]["languages"] == ["en"]
    res = invoke("cache", "info", cache)
    assert "audio/tiny-audio.w10.h10.t4.lall" in res.stdout and "4 done, 0 failed of 4" in res.stdout


@pytest.mark.parametrize("damage", ["nan", "zero", "pending", "text-nan"])
def test_cache_validate_exits_nonzero_on_a_damaged_cache(good_cache, tmp_path, damage):
    _, cache = good_cache
    assert invoke("cache", "validate", cache).exit_code == 0
    c = tmp_path / "c"
    shutil.copytree(cache, c)
    root = cache_spec.open_root(str(c), mode="a")
    g = root["text/tiny-text.l-1"] if damage == "text-nan" else root["audio/tiny-audio.w10.h10.t4.lall"]
    x = g["features"][2]
    if damage in ("nan", "text-nan"):
        x[0, 1, 3] = np.nan
        g["features"][2] = x
    elif damage == "zero":
        g["features"][2] = np.zeros_like(x)
    else:
        g["done"][2] = False
    res = invoke("cache", "validate", c, "--json")
    assert res.exit_code == 1
    out = json.loads(res.stdout)
    assert out["valid"] is False
    expected = {"nan": "NaN/Inf values (first: row 2)", "text-nan": "NaN/Inf values (first: row 2)",
                "zero": "all-zero features (first: row 2)", "pending": "1 rows not featurized yet"}[damage]
    assert len(out["problems"]) == 1 and expected in out["problems"][0]


def test_text_cli_languages_and_resume(good_cache, tmp_path):
    manifest, _ = good_cache
    args = ["featurize", "text", manifest, "--cache", tmp_path / "c", "--encoder", "tiny-text", "--json"]
    res = invoke(*args, "--languages", "de")
    assert res.exit_code == 0 and json.loads(res.stdout)["done"] == 1
    root = cache_spec.open_root(str(tmp_path / "c"))
    assert list(cache_spec.read_strings(root["text/tiny-text.l-1/texts"])) == ["ein Ton"]
    res = invoke(*args, "--languages", "de")
    assert json.loads(res.stdout)["skipped"] == 1 and json.loads(res.stdout)["done"] == 0
