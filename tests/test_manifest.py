"""The manifest: valid rows load; every malformed row is refused naming file, line and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from duetmc.manifest import Item, ManifestError, load_manifest, write_manifest

GOOD = {
    "id": "a1", "audio": "clips/a1.wav", "start": 1.5, "end": 11.5,
    "tags": {"genre": ["rock", " "], "mood": ["happy"], "era": ["80s"]},
    "captions": ["a happy rock song", "  "], "captions_i18n": {"de": ["ein fröhlicher Rocksong"]},
    "split": "val",
}


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_valid_rows_load_with_every_field(tmp_path):
    other = {"id": "b2", "audio": "/abs/b2.mp3"}
    m = write_lines(tmp_path / "m.jsonl", [json.dumps(GOOD), "", "   ", json.dumps(other, ensure_ascii=False)])
    items = load_manifest(m)
    assert [it.id for it in items] == ["a1", "b2"]
    a, b = items
    assert a.audio == tmp_path / "clips" / "a1.wav"  # relative: against the manifest's folder
    assert b.audio == Path("/abs/b2.mp3")
    assert (a.start, a.end, a.split) == (1.5, 11.5, "val")
    assert a.tags == {"genre": ["rock"], "mood": ["happy"], "era": ["80s"]}  # blank tags dropped
    assert a.captions == ["a happy rock song"]
    assert a.captions_i18n == {"de": ["ein fröhlicher Rocksong"]}
    assert (b.start, b.end, b.split, b.tags, b.captions) == (None, None, None, {}, [])
    assert isinstance(a.start, float)


def test_relative_paths_resolve_against_manifest_folder_not_cwd(tmp_path, monkeypatch):
    sub = tmp_path / "data" / "set"
    sub.mkdir(parents=True)
    write_lines(sub / "m.jsonl", [json.dumps({"id": "x", "audio": "../audio/x.wav"})])
    monkeypatch.chdir(tmp_path)
    (item,) = load_manifest(Path("data/set/m.jsonl"))  # a relative manifest path too
    assert item.audio.is_absolute()
    assert item.audio.resolve() == (tmp_path / "data" / "audio" / "x.wav").resolve()


def test_write_then_load_round_trips_and_stores_relative_paths(tmp_path):
    items = [Item("a", tmp_path / "audio" / "a.wav", {"genre": ["jazz"]}, ["cap"], {"fr": ["légende"]}, 0.0, 3.0, "train"),
             Item("b", Path("/elsewhere/b.flac"))]
    path = write_manifest(items, tmp_path / "m.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows[0]["audio"] == "audio/a.wav"
    assert rows[1]["audio"] == "/elsewhere/b.flac"
    assert load_manifest(path) == items


BAD_ROWS = [
    # (line content, field named in the message, a substring of what is wrong)
    ('{"id": "a", "audio": "a.wav"', None, "not valid JSON"),
    ('["a", "a.wav"]', None, "JSON object"),
    ('{"audio": "a.wav"}', "id", "required"),
    ('{"id": "a"}', "audio", "required"),
    ('{"id": 3, "audio": "a.wav"}', "id", "non-empty string"),
    ('{"id": "  ", "audio": "a.wav"}', "id", "non-empty string"),
    ('{"id": "a", "audio": ["a.wav"]}', "audio", "non-empty string"),
    ('{"id": "a", "audio": "a.wav", "start": "1"}', "start", "non-negative number"),
    ('{"id": "a", "audio": "a.wav", "start": -1}', "start", "non-negative number"),
    ('{"id": "a", "audio": "a.wav", "end": true}', "end", "non-negative number"),
    ('{"id": "a", "audio": "a.wav", "start": 5, "end": 5}', "end", "greater than 'start'"),
    ('{"id": "a", "audio": "a.wav", "start": 5, "end": 2}', "end", "greater than 'start'"),
    ('{"id": "a", "audio": "a.wav", "split": "dev"}', "split", "one of"),
    ('{"id": "a", "audio": "a.wav", "split": 1}', "split", "one of"),
    ('{"id": "a", "audio": "a.wav", "caption": ["typo"]}', "caption", "unknown field"),
    ('{"id": "a", "audio": "a.wav", "tags": ["rock"]}', "tags", "object mapping"),
    ('{"id": "a", "audio": "a.wav", "tags": {"genre": "rock"}}', "tags", "list of strings"),
    ('{"id": "a", "audio": "a.wav", "tags": {"genre": [1]}}', "tags", "list of strings"),
    ('{"id": "a", "audio": "a.wav", "captions": "one caption"}', "captions", "list of strings"),
    ('{"id": "a", "audio": "a.wav", "captions_i18n": {"de": "x"}}', "captions_i18n", "list of strings"),
    ('{"id": "a", "audio": "a.wav", "captions_i18n": ["x"]}', "captions_i18n", "object mapping"),
]


@pytest.mark.parametrize("line, field, what", BAD_ROWS, ids=[f"{i}-{b[1]}" for i, b in enumerate(BAD_ROWS)])
def test_malformed_row_names_file_line_and_field(tmp_path, line, field, what):
    good = json.dumps({"id": "ok", "audio": "ok.wav"})
    m = write_lines(tmp_path / "bad.jsonl", [good, "", line, good.replace("ok", "ok2")])
    with pytest.raises(ManifestError) as err:
        load_manifest(m)
    msg = str(err.value)
    assert f"{m}:3:" in msg  # file and 1-based line, blank lines counted
    assert what in msg
    if field is not None:
        assert field in msg


def test_duplicate_id_names_both_lines(tmp_path):
    m = write_lines(tmp_path / "m.jsonl", [json.dumps({"id": "a", "audio": "1.wav"}),
                                           json.dumps({"id": "b", "audio": "2.wav"}),
                                           json.dumps({"id": " a ", "audio": "3.wav"})])  # ids are stripped
    with pytest.raises(ManifestError, match=r"m\.jsonl:3: field 'id': duplicate id 'a', first seen on line 1"):
        load_manifest(m)


def test_missing_and_empty_manifests_are_errors(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        load_manifest(tmp_path / "nope.jsonl")
    with pytest.raises(ManifestError, match="no items"):
        load_manifest(write_lines(tmp_path / "empty.jsonl", ["", " "]))
