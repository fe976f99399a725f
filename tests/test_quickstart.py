"""A CI-sized quickstart through the real CLI: real soundfonts, real musicnn weights, real MiniLM."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest


def duetmc(*args, cwd=None):
    res = subprocess.run([sys.executable, "-m", "duetmc", *map(str, args)], capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=cwd)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


@pytest.mark.slow
def test_quickstart_end_to_end_and_cached_rerun(tmp_path):
    # A relative --out from the working directory, as a user types it (the README's command has the
    # relative default); the eval below runs from another directory.
    out = tmp_path / "qs"
    args = ("quickstart", "--out", "qs", "--items", 40, "--test-items", 12, "--seeds", 1, "--epochs", 6, "--json")
    first = json.loads(duetmc(*args, cwd=tmp_path))
    for path in ("corpus/manifest.jsonl", "corpus/manifest_heldout_sf.jsonl", "views.jsonl", "cache.zarr",
                 "cache_heldout_sf.zarr", "ablation/table.md", "ablation/results.json", "quickstart.json"):
        assert (out / path).exists(), path
    for plot in first["plots"]:
        assert os.path.getsize(plot) > 1000, plot
    assert first["work"]["clips_rendered"] == 52  # 40 + 12 test-only clips
    assert first["work"]["runs_trained"] == 5  # untrained heads + the four Table-4 rows
    configs = {r["config"] for r in first["table"]}
    assert configs == {"untrained heads", "tags only", "+ tag-to-caption", "+ View Dropout", "+ TextSwap"}
    assert {r["dataset"] for r in first["table"]} == {"test (FluidR3)", "test (TimGM6mb)"}
    for row in first["table"]:
        assert all(np.isfinite(row[k]) for k in ("R@1", "R@5", "R@10", "MedR"))
    assert first["hits"] and all({"id", "score", "tags", "audio", "start", "end"} <= set(h) for h in first["hits"])
    assert first["query"].startswith("a ") and first["verdicts"]

    # The CI-sized test split has 4 clips, where every R@10 is 100 %; score the trained model on all
    # 40 clips (chance R@10 = 25 %) to check that it learnt something from real pretrained features.
    run = out / "ablation" / "textswap" / "seed0"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    res = json.loads(duetmc("eval", run, "--split", "all", "--json", cwd=elsewhere))[0]["text_to_music"]["en"]
    assert res["R@10"] > 25.0 and res["MedR"] < 20.5, res

    second = json.loads(duetmc(*args, cwd=tmp_path))
    assert second["work"] == {"clips_rendered": 0, "texts_written": 0, "windows_featurized": 0,
                              "texts_featurized": 0, "runs_trained": 0}
    assert second["first_run_seconds"] == first["seconds"]
    assert second["table"] == first["table"]
