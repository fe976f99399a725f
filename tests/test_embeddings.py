"""Embedding files: `duetmc embed` -> `duetmc eval --baseline` gives the run's own numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from duetmc.cli import main
from duetmc.embeddings import run_embeddings, write_embeddings
from duetmc.errors import PathError, UsageError
from duetmc.evaluate import EvalConfig, evaluate_embeddings, evaluate_run
from model_fixtures import tiny_run  # noqa: F401  (fixture)


def test_embed_then_eval_baseline_gives_the_runs_numbers(tiny_run, tmp_path):
    out = tmp_path / "emb.npz"
    result = CliRunner().invoke(main, ["embed", str(tiny_run["run"]), "--out", str(out), "--split", "all", "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    data = np.load(out, allow_pickle=False)
    assert summary["clips"] == 12 and data["audio"].shape == (12, 256) and data["query"].shape[0] == summary["queries"]
    assert set(data["query_lang"].tolist()) == {"tags"} and set(data["query_source"].tolist()) == {"tags"}
    assert set(data["query_item"].tolist()) <= set(data["audio_ids"].tolist())
    cfg = EvalConfig(split="all", subset_size=5, n_subsets=3)
    ours = evaluate_run(tiny_run["run"], [], cfg)[0]["text_to_music"]
    theirs = evaluate_embeddings(out, cfg)["text_to_music"]
    assert ours.keys() == theirs.keys()
    for lang in ours:
        for key in ("R@1", "R@5", "R@10", "MedR", "MeanR", "n_queries"):
            assert theirs[lang][key] == pytest.approx(ours[lang][key], abs=1e-9), (lang, key)


def test_embeddings_file_errors(tiny_run, tmp_path):
    arrays = run_embeddings(tiny_run["run"], split="test")
    assert len(arrays["audio"]) == 3  # clips 9-11
    with pytest.raises(UsageError, match="ends in .npz"):
        write_embeddings(arrays, tmp_path / "x.zarr")
    (tmp_path / "afile").write_text("x")  # a file where a folder is needed (root ignores permissions)
    with pytest.raises(PathError, match="afile"):
        write_embeddings(arrays, tmp_path / "afile" / "x.npz")
    result = CliRunner().invoke(main, ["embed", str(tiny_run["run"]), "--out", str(tmp_path / "afile" / "x.npz")])
    assert result.exit_code == 2 and result.output.startswith("error: ") and result.output.count("\n") == 1
