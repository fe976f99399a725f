"""The package works when installed from its wheel, not only as an editable checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_holds_package_data_and_runs_slurm_dry_run(tmp_path):
    # Build from a copy of the tracked files: setuptools writes build/ into the source tree, and a stale
    # build/ there could smuggle removed modules into the wheel.
    src = tmp_path / "src"
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for rel in tracked.splitlines():
        if (REPO / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, src / rel)
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, src],
                   check=True, capture_output=True, text=True)
    wheel = next(dist.glob("duetmc-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for name in ("duetmc/resources/tags.json", "duetmc/resources/slurm/train.sbatch",
                 "duetmc/resources/slurm/featurize_audio.sbatch", "duetmc/resources/web/search.html"):
        assert name in names, name
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", site, wheel],
                   check=True, capture_output=True, text=True)

    work = tmp_path / "work"
    (work / "audio").mkdir(parents=True)
    sf.write(work / "audio" / "a.wav", np.random.default_rng(0).normal(0, 0.1, 16000 * 12).astype("float32"), 16000)
    (work / "manifest.jsonl").write_text('{"id": "a", "audio": "audio/a.wav", "split": "train"}\n')
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    env.pop("DUETMC_SLURM_TEMPLATES", None)
    probe = subprocess.run([sys.executable, "-c", "import duetmc; print(duetmc.__file__)"], env=env, cwd=work,
                           capture_output=True, text=True, check=True)
    assert probe.stdout.strip().startswith(str(site)), probe.stdout  # the wheel's copy, not the checkout
    res = subprocess.run([sys.executable, "-m", "duetmc", "slurm", "featurize", "audio", "manifest.jsonl",
                          "--cache", "cache.zarr", "--encoder", "tiny-audio", "--tasks", "1", "--dry-run"],
                         env=env, cwd=work, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "#SBATCH --array" in res.stdout and "featurize audio" in res.stdout, res.stdout
