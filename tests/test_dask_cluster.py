"""`cache validate --scheduler` on a dask cluster whose workers are jobs on the local SLURM cluster
(dask-jobqueue's SLURMCluster, tests/slurm_cluster.py): the scan really runs on the SLURM worker,
through the Python API and through the CLI, and reports a NaN injected into a done row."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from audio_fixtures import clip_set, write_manifest_rows
from duetmc import cache_spec
from duetmc.cache_spec import AudioSettings, validate_cache

pytestmark = [pytest.mark.slow, pytest.mark.slurm]


def build_cache(folder: Path) -> Path:
    """6 clips of 1.5 s, 1 s windows -> 12 rows; 4 rows per shard -> 3 shards, so 3 dask chunks."""
    from duetmc.featurize.audio import AudioFeaturizeConfig, featurize_audio

    rows = clip_set(folder / "audio", 6, seconds=1.5)
    manifest = write_manifest_rows(folder / "audio" / "manifest.jsonl", rows)
    cache = folder / "cache"
    featurize_audio(AudioFeaturizeConfig(str(manifest), str(cache), "tiny-audio", window_s=1.0, workers=1,
                                         rows_per_shard=4, progress=False))
    return cache


def scan_tasks(client, run):
    """`run()`'s result and the tasks the scheduler saw finish meanwhile (its task stream), each with its worker."""
    from dask.distributed import get_task_stream

    with get_task_stream(client) as stream:
        out = run()
    return out, stream.data


def shard_chunks_read(tasks: list[dict]) -> list[int]:
    """Row-chunk indices of the feature reads among `tasks` (keys like ('from-zarr-<token>', i, 0, 0, 0))."""
    return sorted(t["key"][1] for t in tasks if isinstance(t["key"], tuple) and t["key"][0].startswith("from-zarr"))


def test_validate_runs_on_a_slurm_dask_worker_via_api_and_cli(slurm_cluster, tmp_path, monkeypatch):
    from dask.distributed import Client
    from dask_jobqueue import SLURMCluster

    monkeypatch.setenv("DUETMC_HOME", str(tmp_path / "duetmc-home"))  # tiny encoders never go to ~/.cache
    cache = build_cache(tmp_path)
    # SLURMCluster runs sbatch/scancel with this process's environment, so they reach the local cluster.
    # The job gets SLURM_CONF and PATH (venv first) through --export=ALL (sbatch's default, stated in case
    # a site sets SBATCH_EXPORT) and SLURM_CONF again from the prologue; the worker runs this venv's python.
    for name in ("SLURM_CONF", "PATH"):
        monkeypatch.setenv(name, slurm_cluster.env[name])
    for name in [n for n in os.environ if n.startswith(("SLURM_", "SBATCH_")) and n not in slurm_cluster.env]:
        monkeypatch.delenv(name)  # e.g. when the tests themselves run inside a SLURM job
    logs = tmp_path / "dask-logs"
    cluster = SLURMCluster(
        interface="lo", cores=1, processes=1, memory="1GB", walltime="00:05:00", queue="debug",
        python=sys.executable, log_directory=str(logs), local_directory=str(tmp_path / "dask-worker"),
        job_extra_directives=["--export=ALL"], job_script_prologue=[f"export SLURM_CONF={slurm_cluster.env['SLURM_CONF']}"],
        scheduler_options={"dashboard_address": ":0"},  # never the fixed :8787, other sessions may hold it
    )
    with cluster, contextlib.ExitStack() as stack:  # the client closes first, then the cluster scancels its job
        assert sys.executable in cluster.job_script()
        cluster.scale(jobs=1)
        client = stack.enter_context(Client(cluster))
        client.wait_for_workers(1, timeout=60)
        jobs = slurm_cluster.squeue_ids()
        assert len(jobs) == 1, f"expected the one dask worker job in squeue, found {jobs}"
        (worker_addr,) = client.scheduler_info()["workers"]
        assert worker_addr.startswith("tcp://127.0.0.1:")

        # (a) Python API: valid, and every scan task ran on the SLURM job's worker.
        problems, tasks = scan_tasks(client, lambda: validate_cache(str(cache), scheduler=cluster.scheduler_address))
        assert problems == []
        assert shard_chunks_read(tasks) == [0, 1, 2]  # one chunk per shard
        assert {t["worker"] for t in tasks} == {worker_addr}

        # (b) the CLI, in a separate process, against the same scheduler: exit 0 when valid ...
        cli = [str(Path(sys.executable).with_name("duetmc")), "cache", "validate", str(cache), "--scheduler", cluster.scheduler_address]
        res, tasks = scan_tasks(client, lambda: subprocess.run(cli, capture_output=True, text=True, timeout=60))
        assert res.returncode == 0, res.stdout + res.stderr
        assert res.stdout.strip() == "valid"
        assert shard_chunks_read(tasks) == [0, 1, 2]
        assert {t["worker"] for t in tasks} == {worker_addr}

        # ... and exit 1 naming the row once a done row holds a NaN (found by the cluster-side scan).
        group = cache_spec.open_features(cache_spec.open_root(str(cache), mode="r+"), "audio",
                                         AudioSettings("tiny-audio", window_s=1.0), str(cache))
        assert bool(group["done"][9])
        row = group["features"][9]
        row[0, 0, 0] = np.nan
        group["features"][9] = row
        res, tasks = scan_tasks(client, lambda: subprocess.run(cli, capture_output=True, text=True, timeout=60))
        assert res.returncode == 1, res.stdout + res.stderr
        assert "1 done rows have NaN/Inf values (first: row 9)" in res.stdout
        assert {t["worker"] for t in tasks} == {worker_addr}
    slurm_cluster.wait_all(timeout=30)
    assert slurm_cluster.squeue_ids() == []
    worker_log = "".join(p.read_text(errors="replace") for p in logs.glob("*.err"))
    assert re.search(rf"Start worker at:\s+{re.escape(worker_addr)}", worker_log), worker_log[-2000:]  # SLURM job's output
