"""Fault injection for featurizing: every bad input runs the real CLI and ends in a non-zero exit with
one line naming the thing, or in correct data. (Other modules keep their own fault tests.)"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from audio_fixtures import clip_set, write_manifest_rows
from duetmc.cli import main


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def error_line(res) -> str:
    """The one line that explains the failure (click's usage errors add a usage header before it)."""
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith(("error: ", "Error: "))]
    assert len(lines) == 1, res.stderr
    if lines[0].startswith("error: "):
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr  # duetmc's own errors: one line, no traceback
    return lines[0]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, duetmc_home):
    d = tmp_path_factory.mktemp("faults")
    rows = clip_set(d, 2, seconds=0.5)
    return d, rows, write_manifest_rows(d / "m.jsonl", rows)


def audio(manifest, cache, *more):
    return invoke("featurize", "audio", manifest, "--cache", cache, "--encoder", "tiny-audio", "--workers", "1", *more)


def text(views, cache, *more):
    return invoke("featurize", "text", views, "--cache", cache, "--encoder", "tiny-text", *more)


def test_latin1_manifest_names_the_line(corpus, tmp_path):
    d, rows, _ = corpus
    path = tmp_path / "latin1.jsonl"
    lines = [json.dumps(dict(r, audio=str(d / r["audio"])), ensure_ascii=False) for r in rows]
    lines[1] = lines[1].replace("a tone number 1", "caf\u00e9 music")
    path.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    res = audio(path, tmp_path / "c")
    assert res.exit_code == 2 and error_line(res).startswith(f"error: {path}:2: not UTF-8 (byte 0xe9")


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-1"])
def test_non_finite_start_names_the_row(corpus, tmp_path, value):
    d, rows, _ = corpus
    path = tmp_path / "m.jsonl"
    lines = [json.dumps(dict(r, audio=str(d / r["audio"]))) for r in rows]
    lines[1] = lines[1][:-1] + f', "start": {value}}}'
    path.write_text("\n".join(lines) + "\n")
    res = audio(path, tmp_path / "c")
    line = error_line(res)
    assert res.exit_code == 2 and f"{path}:2: field 'start' must be a finite non-negative number" in line
    assert not (tmp_path / "c").exists()


def test_cache_that_is_a_file_is_refused(corpus, tmp_path):
    _, _, manifest = corpus
    (tmp_path / "file").write_text("x")
    res = audio(manifest, tmp_path / "file")
    assert res.exit_code == 2 and "--cache" in error_line(res) and "is a file" in error_line(res)
    res = text(manifest, tmp_path / "file")
    assert res.exit_code == 2 and "is a file" in error_line(res)


@pytest.mark.parametrize("option, value", [("--window", "0"), ("--window", "-1"), ("--hop", "0"), ("--tokens", "0"),
                                           ("--rows-per-shard", "0"), ("--batch-size", "0"), ("--workers", "0"),
                                           ("--window", "nan")])
def test_impossible_audio_options_are_refused_before_any_cache_exists(corpus, tmp_path, option, value):
    _, _, manifest = corpus
    res = audio(manifest, tmp_path / "c", option, value)
    assert res.exit_code == 2 and option in error_line(res)
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("option, value", [("--max-tokens", "0"), ("--batch-size", "0"), ("--task", "3/2"),
                                           ("--task", "x")])
def test_impossible_text_options_are_refused_before_any_cache_exists(corpus, tmp_path, option, value):
    _, _, manifest = corpus
    res = text(manifest, tmp_path / "c", option, value)
    assert res.exit_code == 2 and option.lstrip("-") in error_line(res)
    assert not (tmp_path / "c").exists()


def test_library_configs_refuse_the_same_values():
    from duetmc.errors import UsageError
    from duetmc.featurize.audio import AudioFeaturizeConfig

    for kw, named in ((dict(window_s=0), "--window"), (dict(hop_s=-1.0), "--hop"), (dict(tokens=0), "--tokens"),
                      (dict(rows_per_shard=0), "--rows-per-shard"), (dict(task="2/2"), "--task")):
        with pytest.raises(UsageError, match=named):
            AudioFeaturizeConfig("m.jsonl", "c", "tiny-audio", **kw)


@pytest.mark.parametrize("record, field", [
    ({"item": "clip000", "kind": "caption", "text": 42}, "text"),
    ({"item": "clip000", "kind": "caption", "text": "a tone", "lang": None}, "lang"),
    ({"item": "clip000", "kind": "view", "text": "a tone", "view": "abc"}, "view"),
    ({"item": "clip000", "kind": "caption", "text": "  "}, "text"),
    ({"item": "clip000", "kind": "swap", "text": "a tone", "parent": 3}, "parent"),
])
def test_bad_views_rows_name_file_line_and_field(corpus, tmp_path, record, field):
    views = tmp_path / "views.jsonl"
    good = {"item": "clip000", "kind": "tags", "text": "rock"}
    views.write_text(json.dumps(good) + "\n" + json.dumps(record) + "\n")
    res = text(views, tmp_path / "c")
    assert res.exit_code == 2 and f"{views}:2: field '{field}' must be" in error_line(res)


def test_empty_views_file_says_it_is_empty(corpus, tmp_path):
    views = tmp_path / "views.jsonl"
    views.write_text("\n\n")
    res = text(views, tmp_path / "c")
    assert res.exit_code == 2 and f"{views}: the file is empty" in error_line(res)


def test_swaps_whose_parents_match_nothing_warn_that_textswap_is_off(corpus, tmp_path):
    views = tmp_path / "views.jsonl"
    records = [{"item": "clip000", "kind": "tags", "text": "rock"},
               {"item": "clip000", "kind": "swap", "text": "jazz", "parent": "rock, happy", "category": "genre"}]
    views.write_text("".join(json.dumps(r) + "\n" for r in records))
    res = text(views, tmp_path / "c")
    assert res.exit_code == 0, res.output
    assert "warning swaps: 1 of 1 swap records name a parent text that is not in the file; TextSwap will be off" \
        in res.stdout
    data = json.loads(text(views, tmp_path / "c", "--json").stdout)
    assert data["warnings"][0][0] == "swaps" and data["done"] == 0 and data["skipped"] == 2
