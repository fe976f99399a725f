"""`duetmc study create` over real indexes: each system's top-1 clip of the split, pairs, truth, bad options."""

from __future__ import annotations

import json
import sqlite3
import subprocess

import pytest
from web_fixtures import web_indexes  # noqa: F401

from duetmc.index import Index

pytestmark = pytest.mark.slow  # needs the two small indexes (a featurized cache, two runs)


def _cli(*args):
    """The CLI in this process (the indexes' model stays loaded between calls)."""
    from click.testing import CliRunner

    from duetmc.cli import main

    res = CliRunner().invoke(main, [str(a) for a in args])
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return subprocess.CompletedProcess(args, res.exit_code, res.stdout, res.stderr)


def test_create_from_cache_with_ground_truth(web_indexes, tmp_path):  # noqa: F811
    indexes = {name: Index.load(p) for name, p in web_indexes.items()}
    cache = indexes["duetmc"].meta["source"]["cache"]
    out = tmp_path / "s.sqlite"
    r = _cli("study", "create", "--index", f"duetmc={web_indexes['duetmc']}", "--index",
             f"untrained={web_indexes['untrained']}", "--ground-truth", "--from-cache", cache, "--split", "test",
             "--trials", 15, "--out", out, "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["trials"] == 15 and summary["prompts"] == 8 and summary["prompts_without_truth"] == 0
    assert set(summary["pairs"]) <= {"duetmc vs untrained", "duetmc vs truth", "untrained vs truth"}
    db = sqlite3.connect(out)
    db.row_factory = sqlite3.Row
    rows = db.execute("SELECT * FROM trials").fetchall()
    assert len(rows) == 15
    test_ids = {e["id"] for e in indexes["duetmc"].entries if e["split"] == "test"}
    for t in rows:
        assert t["clip_a"] != t["clip_b"] and {t["clip_a"], t["clip_b"]} <= test_ids
        for side in ("a", "b"):
            system, clip = t[f"system_{side}"], t[f"clip_{side}"]
            if system == "truth":
                assert clip == t["prompt_clip"]
            else:  # the system's best clip among the split's clips
                hits = [h for h in indexes[system].search_text(t["prompt"], k=40) if h["split"] == "test"]
                assert clip == hits[0]["id"] and t[f"audio_{side}"] == hits[0]["audio"]
    sides = [t["system_a"] for t in rows if {t["system_a"], t["system_b"]} == {"duetmc", "untrained"}]
    assert len(set(sides)) == 2 or len(sides) < 3  # sides are drawn, not always the same system on A
    r = _cli("study", "create", "--index", f"duetmc={web_indexes['duetmc']}", "--ground-truth", "--from-cache",
             cache, "--trials", 3, "--out", out)
    assert r.returncode == 2 and "already exists" in r.stderr


def test_create_from_prompts_file_and_bad_options(web_indexes, tmp_path):  # noqa: F811
    a, b = web_indexes["duetmc"], web_indexes["untrained"]
    prompts = tmp_path / "captions.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in [
        {"text": "a happy rock song", "id": "clip032", "dataset": "signal", "split": "test"},
        {"caption": "slow sad blues", "id": "clip039", "split": "test"},
        {"text": "left out: another split", "split": "train"}]))
    out = tmp_path / "p.sqlite"
    r = _cli("study", "create", "--index", f"duetmc={a}", "--index", f"untrained={b}", "--prompts", prompts,
             "--out", out, "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["prompts"] == 2 and set(summary["pairs"]) <= {"duetmc vs untrained"}
    datasets = {row[0] for row in sqlite3.connect(out).execute("SELECT dataset FROM trials")}
    assert datasets <= {"signal", "captions"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"id": "x"}\n')
    cases = [
        (["--index", f"duetmc={a}", "--prompts", prompts], "at least two systems"),
        (["--index", f"duetmc={a}", "--index", f"duetmc={b}", "--prompts", prompts], "given twice"),
        (["--index", str(a), "--index", f"x={b}", "--prompts", prompts], "NAME=INDEX"),
        (["--index", f"truth={a}", "--index", f"x={b}", "--prompts", prompts], "may not be called"),
        (["--index", f"duetmc={a}", "--index", f"x={b}"], "exactly one of --prompts"),
        (["--index", f"duetmc={a}", "--index", f"x={b}", "--prompts", bad], "bad.jsonl:2"),
        (["--index", f"duetmc={a}", "--index", f"x={tmp_path}", "--prompts", prompts], "not a duetmc index"),
    ]
    for args, message in cases:
        r = _cli("study", "create", *args, "--out", tmp_path / "new.sqlite")
        assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
    assert not (tmp_path / "new.sqlite").exists()
