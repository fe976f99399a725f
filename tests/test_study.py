"""The listening study's store and report: trial plans, idempotent answers, privacy, rates, intervals, agreement."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from duetmc import study
from duetmc.errors import PathError
from duetmc.study import Clip, Prompt, StudyError, plan_trials
from duetmc.study_report import agreement, bootstrap_rates, pair_table, plot, report, write_csv


def _plan(n_prompts=4, n_trials=100, seed=0):
    prompts = [Prompt(f"prompt {i}", "setA" if i % 2 else "setB", f"c{i}") for i in range(n_prompts)]
    top1 = {"x": [Clip("x", f"c{i}", f"/a/c{i}.wav") for i in range(n_prompts)],
            # y agrees with x on prompt 0 (same clip): that pair is skipped
            "y": [Clip("y", f"c{(i + 1) % n_prompts if i else 0}", f"/a/c{(i + 1) % n_prompts if i else 0}.wav")
                  for i in range(n_prompts)]}
    truth = [Clip(study.TRUTH, f"c{i}", f"/a/c{i}.wav") for i in range(n_prompts)]
    return prompts, plan_trials(prompts, top1, truth, n_trials, seed)


def test_plan_skips_identical_clips_and_randomises_sides():
    prompts, trials = _plan()
    # per prompt: x-y, x-truth, y-truth; prompt 0: all three are c0; x is always the truth's clip
    assert len(trials) == 4 * 3 - 3 - 3
    assert all((t.a.audio, t.a.start) != (t.b.audio, t.b.start) for t in trials)
    assert sorted(sorted([t.a.system, t.b.system]) for t in trials) == [["truth", "y"]] * 3 + [["x", "y"]] * 3
    xy = [t.a.system == "x" for t in _plan(n_prompts=60, n_trials=1000)[1] if {t.a.system, t.b.system} == {"x", "y"}]
    assert len(xy) == 59 and 0.3 < np.mean(xy) < 0.7  # sides drawn, not fixed
    assert [(t.a, t.b) for t in _plan(seed=3)[1]] == [(t.a, t.b) for t in _plan(seed=3)[1]]
    assert len(_plan(n_trials=4)[1]) == 4


@pytest.fixture()
def db_path(tmp_path):
    _, trials = _plan(n_prompts=8)
    return study.write_study(tmp_path / "s.sqlite", trials, {"systems": ["x", "y"], "seed": 0, "per_participant": 6})


def test_answers_are_idempotent_and_private(db_path):
    db = study.connect(db_path)
    alice, bob = study.add_participant(db, "alice", 6), study.add_participant(db, "", 6)
    assert alice["trials"] == bob["trials"] == 6 and bob["participant"] == "P002"
    mine = study.progress(db, alice["token"])["trials"]
    t = mine[0]["trial"]
    assert study.record_answer(db, alice["token"], t, "A") == {"trial": t, "answer": "A"}
    assert study.record_answer(db, alice["token"], t, "A") == {"trial": t, "answer": "A"}  # double click
    with pytest.raises(StudyError, match="first answer stands"):
        study.record_answer(db, alice["token"], t, "B")
    assert len(study.answers(db)) == 1
    with pytest.raises(StudyError, match="unknown participant"):
        study.record_answer(db, "not-a-token", t, "A")
    with pytest.raises(StudyError, match="not one of A, B, tie"):
        study.record_answer(db, alice["token"], t, "C")
    others = {x["trial"] for x in study.progress(db, bob["token"])["trials"]}
    # trials judged least so far go first: two participants with 6 of the 18 trials share none
    assert not others & {x["trial"] for x in mine}
    with pytest.raises(StudyError, match="not one of this participant"):
        study.trial_clip(db, bob["token"], t, "A")
    with pytest.raises(StudyError, match="not one of this participant"):
        study.record_answer(db, bob["token"], t, "A")
    assert all(x["answer"] is None for x in study.progress(db, bob["token"])["trials"])  # never sees alice's


def test_write_study_refuses_to_overwrite(db_path):
    with pytest.raises(PathError, match="already exists"):
        study.write_study(db_path, _plan()[1], {})
    (db_path.parent / "junk.sqlite").write_text("not sqlite at all" * 100)
    with pytest.raises(StudyError, match="not a usable study file"):
        study.connect(db_path.parent / "junk.sqlite")


def _answer(trial, sa, sb, choice, dataset="d", who="p"):
    return {"participant": who, "trial": trial, "dataset": dataset, "system_a": sa, "system_b": sb, "choice": choice}


def test_pair_table_counts_from_the_first_systems_side():
    rows = [_answer(1, "x", "y", "A"), _answer(2, "y", "x", "A"), _answer(3, "x", "y", "tie"),
            _answer(4, "truth", "x", "A", dataset="e"), _answer(5, "x", "truth", "A", dataset="e")]
    table = {(r["system"], r["versus"], r["dataset"]): r for r in pair_table(rows)}
    xy = table[("x", "y", "d")]
    assert (xy["win"], xy["tie"], xy["loss"], xy["judgements"]) == (1, 1, 1, 3)
    assert xy["win_rate"] == pytest.approx(1 / 3)
    xt = table[("x", "truth", "all")]  # truth is always the second system
    assert (xt["win"], xt["loss"]) == (1, 1)
    assert table[("x", "y", "all")]["judgements"] == 3


def test_bootstrap_rates_hand_case():
    # every trial the same: no spread; otherwise the interval covers the estimate and stays in [0, 1]
    same = np.array([[1, 0, 1]] * 10)
    assert bootstrap_rates(same) == pytest.approx(np.array([[0.5, 0.5], [0, 0], [0.5, 0.5]]))
    mixed = np.array([[1, 0, 0]] * 30 + [[0, 0, 1]] * 10)
    ci = bootstrap_rates(mixed, n_boot=4000)
    assert ci[0, 0] < 0.75 < ci[0, 1] and 0.55 < ci[0, 0] and ci[0, 1] < 0.9
    # the normal approximation's half-width for p=0.75, n=40 is 0.134; the bootstrap's is close
    assert (ci[0, 1] - ci[0, 0]) / 2 == pytest.approx(1.96 * np.sqrt(0.75 * 0.25 / 40), abs=0.03)


def test_agreement_pairwise_and_fleiss():
    rows = [_answer(1, "x", "y", "A", who="p"), _answer(1, "x", "y", "A", who="q"),
            _answer(2, "x", "y", "B", who="p"), _answer(2, "x", "y", "tie", who="q"),
            _answer(3, "x", "y", "A", who="p")]
    ag = agreement(rows)
    assert ag["shared_trials"] == 2 and ag["pairwise_agreement"] == pytest.approx(0.5)
    # Fleiss: P_bar = 0.5; p = (2/4, 1/4, 1/4) -> P_e = 0.375; kappa = 0.125 / 0.625
    assert ag["fleiss_kappa"] == pytest.approx(0.2)
    assert agreement(rows[-1:])["pairwise_agreement"] is None


def test_report_csv_and_plot(db_path, tmp_path):
    db = study.connect(db_path)
    p = study.add_participant(db, "p1", 6)
    for i, t in enumerate(study.progress(db, p["token"])["trials"]):
        study.record_answer(db, p["token"], t["trial"], ["A", "B", "tie"][i % 3])
    db.close()
    result = report(db_path)
    assert result["judgements"] == 6 and result["participants"] == 1
    assert sum(r["judgements"] for r in result["pairs"] if r["dataset"] == "all") == 6
    json.dumps(result)
    assert write_csv(db_path, tmp_path / "a.csv") == 6
    rows = list(csv.DictReader(open(tmp_path / "a.csv")))
    assert [r["choice"] for r in rows].count("tie") == 2
    assert plot(result, tmp_path / "p.png").stat().st_size > 1000


def test_cli_refuses_bad_files_and_options_in_one_line(db_path, tmp_path):
    from click.testing import CliRunner

    from duetmc.cli import main

    cases = [(["study", "serve", str(tmp_path / "missing.sqlite")], "no such study file"),
             (["study", "serve", str(db_path), "--admin-token", "short"], "shorter than 12"),
             (["study", "report", str(tmp_path / "missing.sqlite")], "no such study file"),
             (["serve", str(tmp_path)], "not a duetmc index"),
             (["serve", str(tmp_path), "--port", "70000"], "70000")]
    for args, message in cases:
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 2 and message in res.stderr, (args, res.output)
    res = CliRunner().invoke(main, ["study", "report", str(db_path), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["judgements"] == 0
