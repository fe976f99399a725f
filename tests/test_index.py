"""Index: build from a cache or new audio, search by text, audio, id and embedding; the CLI; bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from duetmc.catalog import build_index
from duetmc.cli import main
from duetmc.errors import PathError, UsageError
from duetmc.index import Index, SearchIndexError
from duetmc.pretrained import DuetModel
from audio_fixtures import write_bad
from model_fixtures import tiny_run  # noqa: F401  (fixture)


def cli(*args, code=0):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output


@pytest.fixture(scope="module")
def built(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("index") / "catalog.idx"
    model = DuetModel.from_run(tiny_run["run"])
    index, skipped = build_index(model, out, cache=tiny_run["cache"])
    return {"model": model, "index": index, "path": out, "skipped": skipped, **tiny_run}


def test_index_from_cache_holds_clips_with_metadata_and_searches_exactly(built):
    index = Index.load(built["path"])
    assert len(index) == 12 and built["skipped"] == []
    e = index.entry("clip003")
    assert e["audio"] == str(built["items"][3].audio.resolve()) and e["start"] == 0.0 and e["end"] == pytest.approx(2.5)
    assert e["tags"] == built["items"][3].tags and e["split"] == "train"
    # scores are the cosine with the model's text embedding, best first, exactly
    q = built["model"].embed_text(["a calm jazz song"])[0]
    hits = index.search_text("a calm jazz song", k=5)
    expected = index.embeddings @ q
    assert [h["id"] for h in hits] == [index.entries[i]["id"] for i in np.argsort(-expected, kind="stable")[:5]]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([h["score"] for h in hits], np.sort(expected)[::-1][:5], atol=1e-5)
    assert set(hits[0]) == {"rank", "id", "score", "tags", "split", "audio", "start", "end"}
    like = index.search_like("clip003", k=3)
    assert "clip003" not in [h["id"] for h in like] and len(like) == 3
    # more like this audio: the clip's own file is its own best match
    assert index.search_audio(str(built["items"][3].audio), k=1)[0]["id"] == "clip003"
    assert index.search_embedding(index.embeddings[5], k=1)[0]["id"] == "clip005"
    assert len(index.search_embedding(index.embeddings[:2], k=2)) == 2


def test_index_from_new_audio_equals_the_cache_index_and_skips_bad_files(built, tmp_path):
    import shutil

    folder = tmp_path / "audio"
    shutil.copytree(built["root"] / "audio", folder)
    write_bad(folder / "zz_broken.wav", "text")
    index, skipped = build_index(built["model"], tmp_path / "new.idx", audio=folder)
    assert len(index) == 12 and [s[0] for s in skipped] == ["zz_broken.wav"] and "cannot decode" in skipped[0][1]
    assert json.loads((tmp_path / "new.idx" / "index.json").read_text())["skipped"][0]["id"] == "zz_broken.wav"
    cached = Index.load(built["path"])
    cos = np.sum(index.embeddings * cached.embeddings, axis=1)  # same order: 000.wav … 011.wav
    assert cos.min() >= 0.999


def test_ann_index_agrees_with_exact_search(built, tmp_path):
    index, _ = build_index(built["model"], tmp_path / "ann.idx", cache=built["cache"], ann=True)
    assert (tmp_path / "ann.idx" / "ann.faiss").exists() and index.meta["ann"]["library"] == "faiss"
    reloaded = Index.load(tmp_path / "ann.idx")
    for q in ("calm jazz", "dark metal", "happy folk"):  # one list over 12 clips: ANN is exact here
        assert [h["id"] for h in reloaded.search_text(q, 5)] == [h["id"] for h in reloaded.search_text(q, 5, exact=True)]


def test_bad_queries_and_another_models_index(built, tmp_path):
    index = Index.load(built["path"])
    with pytest.raises(UsageError, match="empty"):
        index.search_text("   ")
    with pytest.raises(UsageError, match="at least 1"):
        index.search_text("jazz", k=0)
    assert len(index.search_text("jazz", k=100)) == 12  # clipped to the catalog
    with pytest.raises(SearchIndexError, match="no clip with id"):
        index.search_like("nope")
    other = DuetModel.from_run(built["run"])
    for p in other.heads.parameters():
        p.data += 0.01
        break
    from duetmc.cache_spec import state_dict_sha256

    other.heads_sha256 = state_dict_sha256(other.heads.state_dict())
    with pytest.raises(SearchIndexError, match="built with model"):
        Index.load(built["path"], model=other)
    with pytest.raises(SearchIndexError, match="embed it with the index's model"):
        index.search_embedding(index.embeddings[0], model_id=other.model_id)
    with pytest.raises(PathError, match="not a duetmc index"):
        Index.load(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(PathError, match="not a duetmc index"):
        build_index(built["model"], tmp_path, cache=built["cache"])  # a non-empty folder that is no index


def test_index_cli_build_search_queries_audio_like(built, tmp_path):
    out = tmp_path / "cli.idx"
    summary = json.loads(cli("index", "build", built["run"], "--cache", built["cache"], "--out", out, "--json"))
    assert summary["clips"] == 12 and summary["skipped"] == []
    hits = json.loads(cli("index", "search", out, "a calm jazz song", "-k", 3, "--json"))
    assert hits == Index.load(out).search_text("a calm jazz song", 3)
    text = cli("index", "search", out, "a calm jazz song", "-k", 2)
    assert text.count("\n") == 2 and "genre:" in text and ".wav 0.0-2.5s" in text
    (tmp_path / "q.txt").write_text("calm jazz\n\nhappy rock\n")
    many = json.loads(cli("index", "search", out, "--queries-file", tmp_path / "q.txt", "-k", 2, "--json"))
    assert [m["query"] for m in many] == ["calm jazz", "happy rock"] and all(len(m["hits"]) == 2 for m in many)
    like = json.loads(cli("index", "search", out, "--like", "clip004", "-k", 2, "--json"))
    assert len(like) == 2 and "clip004" not in [h["id"] for h in like]
    same = json.loads(cli("index", "search", out, "--audio", built["items"][4].audio, "-k", 1, "--json"))
    assert same[0]["id"] == "clip004"
    # the one-off search answers as the index does
    one_off = json.loads(cli("search", built["run"], "a calm jazz song", "-k", 3, "--json"))
    assert [h["id"] for h in one_off] == [h["id"] for h in hits]
    np.testing.assert_allclose([h["score"] for h in one_off], [h["score"] for h in hits], atol=1e-5)


def test_index_cli_errors_are_one_line(built, tmp_path):
    out = built["path"]
    for args, msg in [
        (("index", "search", out, ""), "empty"),
        (("index", "search", out, "jazz", "-k", 0), "at least 1"),
        (("index", "search", out), "exactly one of"),
        (("index", "search", out, "--like", "nope"), "no clip with id"),
        (("index", "search", tmp_path, "jazz"), "not a duetmc index"),
        (("index", "build", built["run"], "--out", tmp_path / "x"), "exactly one of --cache"),
    ]:
        result = CliRunner().invoke(main, [str(a) for a in args])
        assert result.exit_code == 2, (args, result.output)
        assert result.output.startswith("error: ") and msg in result.output and result.output.count("\n") == 1
    result = CliRunner().invoke(main, ["index", "search", str(out), "jazz", "-k", "50"])
    assert result.exit_code == 0 and "note: -k 50 is more than the 12 clips" in result.output
