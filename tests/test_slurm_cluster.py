"""The local SLURM cluster fixture really schedules: array tasks run side by side and all finish."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slurm

SCRIPT = """#!/bin/bash
date +%s.%N > start_$SLURM_ARRAY_TASK_ID
sleep 1
echo $SLURM_ARRAY_TASK_ID > out_$SLURM_ARRAY_TASK_ID
date +%s.%N > end_$SLURM_ARRAY_TASK_ID
"""


def test_array_tasks_run_concurrently_and_all_finish(slurm_cluster, tmp_path):
    script = tmp_path / "job.sh"
    script.write_text(SCRIPT)
    res = slurm_cluster.run("sbatch", "--parsable", "--array=0-3", f"--chdir={tmp_path}",
                            f"--output={tmp_path}/slurm_%a.log", str(script))
    job_id = res.stdout.strip()
    assert job_id.isdigit()
    slurm_cluster.wait_all(timeout=60)

    assert [(tmp_path / f"out_{i}").read_text().strip() for i in range(4)] == ["0", "1", "2", "3"]
    spans = [(float((tmp_path / f"start_{i}").read_text()), float((tmp_path / f"end_{i}").read_text()))
             for i in range(4)]
    overlapping = [(i, j) for i in range(4) for j in range(i + 1, 4)
                   if spans[i][0] < spans[j][1] and spans[j][0] < spans[i][1]]
    assert overlapping, f"array tasks ran one after another: {spans}"


def test_jobs_see_the_test_python(slurm_cluster, tmp_path):
    import os
    import sys

    slurm_cluster.run("sbatch", f"--chdir={tmp_path}", "--output=where.txt",
                      "--wrap", "command -v python; echo $SLURM_CONF")
    slurm_cluster.wait_all(timeout=30)
    python, conf = (tmp_path / "where.txt").read_text().split()
    assert os.path.samefile(python, sys.executable)
    assert conf == slurm_cluster.env["SLURM_CONF"]
