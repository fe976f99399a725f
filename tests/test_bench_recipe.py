"""bench/recipe.py: the views it trains and evaluates on, its statistics, and a tiny end-to-end run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import recipe  # noqa: E402
import recipe_report  # noqa: E402
import recipe_selection  # noqa: E402
import recipe_stats  # noqa: E402
from duetmc.errors import UsageError  # noqa: E402
from duetmc.manifest import Item  # noqa: E402
from duetmc.synth.render import FLUIDR3_GM, TIMGM6MB  # noqa: E402


def test_eval_clips_keep_only_human_captions_as_queries():
    tags = {"genre": ["rock"], "mood": ["happy"], "instrument": ["piano", "drums"]}
    items = [Item("tr", Path("a.wav"), tags={"genre": ["rock"], "instrument": ["piano"]}, split="train"),
             Item("te", Path("b.wav"), tags=tags, captions=["a sunny guitar rock jam with keys"], split="test")]
    records = recipe.recipe_views(items, n_views=3)
    test = [r for r in records if r.item == "te"]
    assert {r.kind for r in test} <= {"tags", "caption", "swap", "probe_swap", "probe_partial"}
    assert [r.text for r in test if r.kind == "caption"] == ["a sunny guitar rock jam with keys"]
    parents = {r.text for r in test if r.kind in ("tags", "caption")}
    assert all(r.parent in parents for r in test if r.kind == "swap")
    train = [r for r in records if r.item == "tr"]
    assert sum(r.kind == "view" for r in train) == 3
    assert any(r.kind == "caption" and r.source == "template" for r in train)


def test_step_statistics_on_a_known_difference():
    rng = np.random.default_rng(0)
    before = (rng.random((3, 400)) < 0.3).astype(float) * 100
    after = before.copy()
    after[:, :40] = 100.0  # the same 40 queries gained in every seed
    gained = float(np.mean(after) - np.mean(before))
    row = {"R@10_std": 1.0, "R@10_subset_std": 2.0}
    st = recipe_stats.step_statistics(before, after, row, row, n_boot=2000, seed=0)
    assert st["delta_R@10"] == pytest.approx(gained)
    assert st["ci_low"] > 0 and st["excludes_zero"] and st["n_queries"] == 400 and st["n_seeds"] == 3
    assert st["mde_unpaired"] == pytest.approx(2.8016 * np.sqrt(2 * 1 / 3 + 2 * 4), rel=1e-3)
    assert 0 < st["mde_paired"] < st["mde_unpaired"]


def test_aggregate_keeps_seed_and_subset_spread():
    rows = [{"config": "a", "dataset": "d", "R@1": v, "R@5": v, "R@10": v, "MedR": 3, "R@10_std": s}
            for v, s in ((10.0, 1.0), (14.0, 3.0))]
    agg = recipe.aggregate(rows)[("a", "d")]
    assert agg["R@10"] == 12.0 and agg["R@10_std"] == pytest.approx(np.sqrt(8)) and agg["R@10_subset_std"] == 2.0


@pytest.mark.slow
@pytest.mark.skipif(not (FLUIDR3_GM.is_file() and TIMGM6MB.is_file()), reason="needs both soundfonts")
def test_tiny_recipe_end_to_end_and_rerun_reuses_everything(tmp_path, monkeypatch, capsys):
    cfg = recipe.RecipeConfig.for_scale("tiny", work=str(tmp_path / "w"), items=10, test_items=4, epochs=1,
                                        n_boot=200)
    s = recipe.run_recipe(cfg, say=lambda *a: None)
    assert len(s["table"]) == 5 * 2 and len(s["steps"]) == 5 * 2
    for st in s["steps"]:
        assert st["ci_low"] <= st["delta_R@10"] <= st["ci_high"] and st["n_queries"] == 8  # 2 captions x 4 clips
    probes = s["probes"]["test (FluidR3)"]["+ TextSwap / seed0"]["probes"]
    assert s["probes_available"] and {"swap_accuracy", "partial_query"} <= set(probes)
    assert all(Path(p).stat().st_size > 0 for p in s["plots"])
    report = (tmp_path / "w" / "report.md").read_text()
    assert "excludes zero" in report and "Probes (issue 11)" in report
    means = recipe_report.probe_means(s, "test (FluidR3)")["+ TextSwap"]
    assert set(means) == {"swap acc", "partial R@10"} and 0 <= means["swap acc"] <= 100
    assert f"| + TextSwap | test (FluidR3) | {means['swap acc']:.1f} |" in report
    # benchmark 8b: the same runs scored at the epoch with the best validation R@10
    monkeypatch.setattr(sys, "argv", ["recipe_selection.py", "--work", str(tmp_path / "w"), "--n-boot", "200"])
    recipe_selection.main()
    sel = json.loads((tmp_path / "w" / "selection_by_r10.json").read_text())
    assert len(sel["epochs"]) == 4 and all(e["by_r10"] == e["by_loss"] == 0 for e in sel["epochs"].values())
    assert [(st["before"], st["after"]) for st in sel["steps"]] == recipe.STEPS[1:4] * 2
    assert "checkpoints selected by val R@10" in capsys.readouterr().out
    again = recipe.run_recipe(cfg, say=lambda *a: None)
    assert again["runs_trained"] == 0 and again["timings"]["synth"]["rendered"] == 0
    assert again["timings"]["cache"]["texts"] == 0 and again["table"] == s["table"]
    with pytest.raises(UsageError, match="other settings"):
        recipe.run_recipe(recipe.RecipeConfig.for_scale("tiny", work=str(tmp_path / "w"), items=10, test_items=4,
                                                        epochs=2), say=lambda *a: None)
