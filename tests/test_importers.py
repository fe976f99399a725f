"""Dataset importers: small fixtures with the real column names, written here, imported and read back."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from duetmc.importers import DatasetError, ImportOptions, import_dataset, import_lp_musiccaps, import_musiccaps, import_song_describer
from duetmc.manifest import load_manifest

MUSICCAPS_COLUMNS = ["ytid", "start_s", "end_s", "audioset_positive_labels", "aspect_list", "caption", "author_id",
                     "is_balanced_subset", "is_audioset_eval"]
SDD_COLUMNS = ["caption_id", "track_id", "caption", "is_valid_subset", "familiarity", "artist_id", "album_id", "path", "duration",
               "genre", "instrument", "mood/theme"]


def _csv(path: Path, columns: list[str], rows: list[list]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(columns)
        w.writerows(rows)
    return path


def _touch(root: Path, *rels: str) -> None:
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"RIFF")


@pytest.fixture
def musiccaps(tmp_path):
    src = _csv(tmp_path / "musiccaps-public.csv", MUSICCAPS_COLUMNS, [
        ["-0Gj8-vB1q4", 30, 40, "/m/0140xf,/m/02cjck", "['low quality', 'sustained strings melody', 'soft female vocal', 'mellow piano melody', 'sad']",
         "The low quality recording features a sad, mellow piano melody.", 4, False, True],
        ["-0SdAVK79lg", 30, 40, "/m/0155w", "['guitar song', 'Hip Hop', 'fast tempo', 'electric guitar']", "A fast hip hop song with electric guitar.", 0, True, False],
        ["-0vPFx-wRRI", 30, 40, "/m/025_jnm", "['amateur recording', 'live performance']", "An amateur live recording.", 6, False, False],
        ["-0vPFx-wRRI", 30, 40, "", "[]", "duplicate ytid", 6, False, False],
        ["-bad-times-", 40, 30, "", "[]", "end before start", 6, False, False],
        ["-1LrH01Ei1w", 30, 40, "", "['not', 'closed'", "Aspect list is broken.", 1, False, False],
    ])
    audio = tmp_path / "audio"
    _touch(audio, "-0Gj8-vB1q4.wav", "-0SdAVK79lg.flac", "-1LrH01Ei1w.mp3")
    return src, audio


def test_musiccaps_round_trip_with_missing_audio_reported_once(musiccaps, tmp_path):
    src, audio = musiccaps
    with pytest.warns(UserWarning) as caught:
        report = import_dataset("musiccaps", src, ImportOptions(audio_root=audio), tmp_path / "m.jsonl")
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2 and "1 of 4 audio file(s) not found, left out" in messages[0]
    assert "4 tag(s) (4 distinct" in messages[1] and "kept under 'other'" in messages[1]
    items = {i.id: i for i in load_manifest(tmp_path / "m.jsonl")}
    assert report.rows == 6 and report.items == 3 == len(items)
    assert report.missing_audio == [str(audio / "-0vPFx-wRRI.wav")]
    assert len(report.problems) == 3
    assert any("duplicate ytid" in p for p in report.problems) and any("bad clip times" in p for p in report.problems)
    assert any("musiccaps-public.csv:7: aspect_list is not a list" in p for p in report.problems)
    a = items["-0Gj8-vB1q4"]
    assert (a.start, a.end, a.split, a.audio) == (30.0, 40.0, "test", audio / "-0Gj8-vB1q4.wav")
    assert a.captions == ["The low quality recording features a sad, mellow piano melody."]
    assert a.tags == {"mood": ["sad"], "production": ["low quality"],
                      "other": ["sustained strings melody", "soft female vocal", "mellow piano melody"]}
    b = items["-0SdAVK79lg"]
    assert b.tags == {"genre": ["hip-hop"], "instrument": ["electric guitar"], "tempo": ["fast"], "other": ["guitar song"]}
    assert b.split == "train" and b.audio.suffix == ".flac"
    assert items["-1LrH01Ei1w"].tags == {} and report.unknown_tags == 4


def test_musiccaps_options_keep_missing_clip_files_and_split(musiccaps, tmp_path):
    src, audio = musiccaps
    with pytest.warns(UserWarning):
        items, report = import_musiccaps(src, ImportOptions(audio_root=audio, split="val", keep_missing=True), clip_files=True)
    assert len(items) == 4 and len(report.missing_audio) == 1
    assert all(i.start is None and i.end is None and i.split == "val" for i in items)


def test_song_describer_groups_captions_per_track_with_jamendo_tags(tmp_path):
    src = _csv(tmp_path / "song_describer.csv", SDD_COLUMNS, [
        [1, 1051198, "Upbeat pop with a catchy synth line.", True, 2, 1, 2, "98/1051198.mp3", 240.0, "['pop', 'electronic']", "['synthesizer']", "['happy']"],
        [2, 1051198, "Electronic pop track, joyful.", True, 1, 1, 2, "98/1051198.mp3", 240.0, "['pop', 'electronic']", "['synthesizer']", "['happy']"],
        [3, 1051198, "not validated caption", False, 0, 1, 2, "98/1051198.mp3", 240.0, "['pop', 'electronic']", "['synthesizer']", "['happy']"],
        [4, 18500, "Calm acoustic guitar piece.", True, 0, 3, 4, "00/18500.mp3", 180.0, "[]", "", ""],
        [5, 246601, "Only an invalid caption here.", "", 0, 5, 6, "01/246601.mp3", 100.0, "['rock']", "", ""],
    ])
    (tmp_path / "song_describer.mtg-jamendo.tsv").write_text(
        "TRACK_ID\tARTIST_ID\tALBUM_ID\tPATH\tDURATION\tTAGS\n"
        "track_0018500\tartist_000003\talbum_000004\t00/18500.mp3\t180.0\tgenre---folk\tinstrument---acousticguitar\tinstrument---computer\tmood/theme---relaxing\n")
    audio = tmp_path / "sdd"
    _touch(audio, "audio/98/1051198.2min.mp3", "audio/00/18500.2min.mp3")
    report = import_dataset("song-describer", src, ImportOptions(audio_root=audio), tmp_path / "m.jsonl")
    items = {i.id: i for i in load_manifest(tmp_path / "m.jsonl")}
    assert report.rows == 5 and sorted(items) == ["1051198", "18500"] and report.captions == 3 and report.missing_audio == []
    pop = items["1051198"]
    assert pop.captions == ["Upbeat pop with a catchy synth line.", "Electronic pop track, joyful."]
    assert pop.tags == {"genre": ["pop", "electronic"], "mood": ["happy"], "instrument": ["synth"]}
    assert pop.split == "test" and pop.audio == audio / "audio/98/1051198.2min.mp3" and pop.start is None
    # tags from the MTG-Jamendo tsv; MTG spellings are synonyms, and an unknown tag ("computer") keeps its category
    assert items["18500"].tags == {"genre": ["folk"], "mood": ["relaxing"], "instrument": ["acoustic guitar", "computer"]}

    with pytest.warns(UserWarning, match="1 of 3 audio"):
        items, report = import_song_describer(src, ImportOptions(audio_root=audio, keep_missing=True), valid_only=False)
    by_id = {i.id: i for i in items}
    assert len(by_id["1051198"].captions) == 3 and by_id["246601"].split is None and by_id["1051198"].split == "test"


def test_lp_musiccaps_reads_tags_and_the_four_caption_kinds(tmp_path):
    recs = [
        {"track_id": "2", "tag": ["classical", "violin", "slow", "strings"], "caption_writing": "A slow classical piece for violin.",
         "caption_summary": "Slow classical strings.", "caption_paraphrase": "Violins play slowly.",
         "caption_attribute_prediction": "A slow, classical piece with strings and a solo violin.", "path": "f/track-02.mp3", "split": "train"},
        {"track_id": "6", "tag": "['techno', 'beat', 'no vocals']", "caption_writing": "A techno beat.", "caption_summary": "",
         "caption_paraphrase": "Techno.", "caption_attribute_prediction": "A techno beat.", "path": "c/track-06.mp3", "split": "valid"},
        {"track_id": "6", "tag": [], "path": "c/track-06.mp3", "split": "test"},
        {"track_id": "9", "tag": ["pop"], "caption_writing": "Pop.", "path": "e/track-09.mp3", "split": "holdout"},
    ]
    audio = tmp_path / "mtt"
    _touch(audio, "f/track-02.mp3", "c/track-06.mp3", "e/track-09.mp3")
    for name, payload in (("lp.json", json.dumps(recs)), ("lp.jsonl", "\n".join(map(json.dumps, recs)))):
        (tmp_path / name).write_text(payload)
        items, report = import_lp_musiccaps(tmp_path / name, ImportOptions(audio_root=audio))
        by_id = {i.id: i for i in items}
        assert sorted(by_id) == ["2", "6", "9"] and report.missing_audio == []
        assert by_id["2"].captions == [recs[0][k] for k in ("caption_writing", "caption_summary", "caption_paraphrase", "caption_attribute_prediction")]
        assert by_id["2"].tags == {"genre": ["classical"], "instrument": ["violin", "strings"], "tempo": ["slow"]}
        assert by_id["6"].captions == ["A techno beat.", "Techno."] and by_id["6"].split == "val"
        assert by_id["6"].tags == {"genre": ["techno"], "vocals": ["no vocals"], "rhythm": ["beat"]}
        assert by_id["9"].split is None
        assert [p.split(": ", 2)[-1] for p in report.problems] == ["duplicate track_id '6'; skipped", "unknown split 'holdout'; imported without a split"]


def test_jsonl_import_validates_rows_and_keeps_the_good_ones(tmp_path):
    audio = tmp_path / "mine"
    _touch(audio, "one.wav", "two.wav")
    src = tmp_path / "pairs.jsonl"
    src.write_text("\n".join([
        json.dumps({"audio": "one.wav", "caption": "A calm piano piece.", "tags": ["piano", "calm", "field recording"]}),
        json.dumps({"id": "t2", "audio": "two.wav", "captions": ["Fast drums."], "tags": {"tempo": ["fast"]}, "start": 1, "end": 4}),
        json.dumps({"id": "t3", "audio": "three.wav", "captions": ["Missing file."]}),
        json.dumps({"id": "bad", "audio": "one.wav", "colour": "blue"}),
        "{not json",
    ]) + "\n")
    with pytest.warns(UserWarning):
        report = import_dataset("jsonl", src, ImportOptions(audio_root=audio, split="train"), tmp_path / "m.jsonl")
    items = load_manifest(tmp_path / "m.jsonl")
    assert [i.id for i in items] == ["one", "t2"] and all(i.split == "train" for i in items)
    assert items[0].tags == {"mood": ["calm"], "instrument": ["piano"], "other": ["field recording"]} and items[0].audio == audio / "one.wav"
    assert (items[1].start, items[1].end) == (1.0, 4.0)
    assert report.missing_audio == [str(audio / "three.wav")]
    assert len(report.problems) == 2 and "pairs.jsonl:4" in report.problems[0] and "unknown field" in report.problems[0]
    assert "pairs.jsonl:5: not valid JSON" in report.problems[1]


def test_wrong_file_and_nothing_to_write_are_clear_errors(tmp_path, musiccaps):
    src, audio = musiccaps
    with pytest.raises(DatasetError, match=r"missing column\(s\) \['caption_id'"):
        import_dataset("song-describer", src, ImportOptions(audio_root=audio), tmp_path / "m.jsonl")
    with pytest.warns(UserWarning, match="check --audio-root"), pytest.warns(UserWarning, match="not in the vocabulary"), pytest.raises(DatasetError, match="no items to write"):
        import_dataset("musiccaps", src, ImportOptions(audio_root=tmp_path / "nowhere"), tmp_path / "m.jsonl")
    assert not (tmp_path / "m.jsonl").exists()


def test_cli_datasets_import(musiccaps, tmp_path):
    from duetmc.cli import main

    src, audio = musiccaps
    out = tmp_path / "m.jsonl"
    res = CliRunner().invoke(main, ["datasets", "import", "musiccaps", str(src), "--audio-root", str(audio), "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["items"] == 3 and report["missing_audio_count"] == 1 and len(load_manifest(out)) == 3
    res = CliRunner().invoke(main, ["datasets", "import", "musiccaps", str(src), "--audio-root", str(audio), "--out", str(out)])
    assert res.exit_code == 0 and "missing audio: 1 file(s), left out" in res.output and "warning:" in res.output
    res = CliRunner().invoke(main, ["datasets", "import", "jsonl", str(src), "--audio-root", str(audio), "--out", str(out), "--clip-files"])
    assert res.exit_code != 0 and "musiccaps only" in res.output


@pytest.mark.parametrize("kind", ["musiccaps", "yt8m-mtc"])
def test_imported_paths_read_back_from_another_working_directory(kind, musiccaps, tmp_path, monkeypatch):
    """`--audio-root audio --out sub/manifest.jsonl`, run from the data folder, then read from elsewhere."""
    from duetmc.cli import main

    src, _ = musiccaps  # tmp_path/audio holds the MusicCaps files
    if kind == "yt8m-mtc":
        src = _csv(tmp_path / "test.csv", ["video_id", "start", "end", "text"],
                   [["vidA", 10, 20, "calm piano"], ["vidA", 10, 20, "a quiet piano piece"], ["vidB", "", "", "loud drums"]])
        _touch(tmp_path / "audio", "clips/vidA_10_20.ogg", "vidB.wav")
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["datasets", "import", kind, src.name, "--audio-root", "audio", "--out", "sub/manifest.jsonl"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in (tmp_path / "sub" / "manifest.jsonl").read_text().splitlines()]
    assert all(Path(r["audio"]).is_absolute() or (tmp_path / "sub" / r["audio"]).is_file() for r in rows)
    monkeypatch.chdir(tmp_path / "sub")
    items = load_manifest(tmp_path / "sub" / "manifest.jsonl")
    assert items and all(i.audio.is_file() for i in items)


def test_yt8m_mtc_groups_captions_per_clip_and_reads_clip_or_whole_video_files(tmp_path):
    from duetmc.importers import import_yt8m_mtc

    src = _csv(tmp_path / "train.csv", ["video_id", "start", "end", "text"], [
        ["vidA", 10, 20, "calm piano"], ["vidA", 10, 20, "a quiet piano piece"], ["vidA", 30, 40, "a drum solo"],
        ["", 1, 2, "no id"], ["vidC", 20, 10, "end before start"]])
    _touch(tmp_path / "audio", "vidA_10_20.wav", "vidA.flac")
    items, report = import_yt8m_mtc(src, ImportOptions(audio_root=tmp_path / "audio"))
    by_id = {i.id: i for i in items}
    assert set(by_id) == {"vidA_10_20", "vidA_30_40"} and report.rows == 5 and len(report.problems) == 2
    a, b = by_id["vidA_10_20"], by_id["vidA_30_40"]
    assert a.captions == ["calm piano", "a quiet piano piece"] and a.split == "train"
    assert a.audio.name == "vidA_10_20.wav" and (a.start, a.end) == (None, None)  # the clip file itself
    assert b.audio.name == "vidA.flac" and (b.start, b.end) == (30.0, 40.0)  # cut from the whole video
