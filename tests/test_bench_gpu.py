"""bench/gpu.py: its CPU smoke mode runs the real code paths on tiny shapes; without CUDA it skips cleanly."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import gpu  # noqa: E402


def test_tiny_cpu_run_writes_every_measurement(tmp_path):
    out = tmp_path / "gpu.json"
    assert gpu.main(["--device", "cpu", "--tiny", "--steps", "1", "--batches", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["train_samples_per_s"]) == {"fp32", "bf16"}
    assert all(v > 0 for v in result["train_samples_per_s"].values())
    assert set(result["featurize_clips_per_s"]["tiny"]) == {"fp32", "bf16"}
    assert all(v > 0 for v in result["featurize_clips_per_s"]["tiny"].values())


def test_without_cuda_it_says_so_in_one_line_and_exits_0(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "gpu.json"
    assert gpu.main(["--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == gpu.SKIPPED
    assert not out.exists()
