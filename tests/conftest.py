"""Shared pytest fixtures."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest


@pytest.fixture(scope="module", autouse=True)
def duetmc_home(tmp_path_factory):
    """Generated tiny encoders go to one session-wide temp dir, never ~/.cache (subprocesses inherit it)."""
    with pytest.MonkeyPatch.context() as mp:
        home = tmp_path_factory.getbasetemp() / "duetmc-home"
        mp.setenv("DUETMC_HOME", str(home))
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield home


@pytest.fixture(scope="session")
def slurm_cluster():
    """A real single-node SLURM cluster on localhost (tests/slurm_cluster.py), shared by the session.

    Never skipped: without the Debian packages the tests fail with the command that installs them.
    """
    from slurm_cluster import SlurmClusterError, start_cluster

    # Not under tmp_path_factory: pytest's base dir is 0700 and munged needs an a+x path to its socket.
    root = Path(tempfile.mkdtemp(prefix="duetmc-slurm-"))
    try:
        cluster = start_cluster(root)
    except SlurmClusterError as exc:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"could not start the local SLURM cluster: {exc}", pytrace=False)
    yield cluster
    cluster.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def signal_cache(tmp_path_factory):
    """The learnable-signal cache of tests/train_fixtures.py, built once per session (defined here, not
    imported into each module: an imported fixture is a new fixture per module, built again each time)."""
    from train_fixtures import build_signal_cache

    return build_signal_cache(tmp_path_factory.mktemp("signal"))
