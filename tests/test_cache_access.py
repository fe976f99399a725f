"""Who may write a cache: the fail-fast check and group-shared file modes (no encoder runs here)."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest
import zarr

from duetmc.cache_access import ensure_writable, shared_files
from duetmc.cache_spec import CacheError
from duetmc.errors import PathError


@pytest.fixture
def frozen(tmp_path):
    """A folder nobody can write into, even root (chattr +i); chmod where not root."""
    d = tmp_path / "frozen"
    d.mkdir()
    (d / "lab.zarr").mkdir()
    if subprocess.run(["chattr", "+i", str(d), str(d / "lab.zarr")], capture_output=True).returncode == 0:
        yield d
        subprocess.run(["chattr", "-i", str(d), str(d / "lab.zarr")])
    elif os.getuid() != 0:
        os.chmod(d / "lab.zarr", 0o555)
        os.chmod(d, 0o555)
        yield d
        os.chmod(d, 0o755)
        os.chmod(d / "lab.zarr", 0o755)
    else:
        pytest.skip("cannot make a folder unwritable here")


def test_unwritable_caches_are_one_line_naming_the_path_and_the_fix(frozen, tmp_path):
    with pytest.raises(PathError, match=r"lab.zarr: cannot write \(permission denied\); .*cache overlay MINE.zarr --base"):
        ensure_writable(str(frozen / "lab.zarr"), "text")
    with pytest.raises(PathError, match=r"frozen: cannot write .*choose a --cache under a folder you can write"):
        ensure_writable(str(frozen / "new" / "c.zarr"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(PathError, match="is a file, not a cache folder"):
        ensure_writable(str(tmp_path / "file"))
    with pytest.raises(CacheError, match="served over HTTP is read-only"):
        ensure_writable("http://example.org/lab.zarr")
    ensure_writable(str(tmp_path / "fresh" / "c.zarr"))  # a new cache under a writable folder: fine


@pytest.mark.parametrize("group_writable", [False, True])
def test_files_are_group_readable_whatever_the_umask(tmp_path, group_writable):
    old = os.umask(0o077)
    try:
        with shared_files(group_writable, str(tmp_path / "c.zarr")):
            g = zarr.open_group(str(tmp_path / "c.zarr"), mode="w")
            g.create_array("x", shape=(2,), dtype="int32")[:] = 1
        assert os.umask(0o077) == 0o077  # restored
    finally:
        os.umask(old)
    for d, _, files in os.walk(tmp_path / "c.zarr"):
        for p in [d] + [os.path.join(d, f) for f in files]:
            mode = os.stat(p).st_mode
            assert mode & stat.S_IRGRP and bool(mode & stat.S_IWGRP) == group_writable, (p, oct(mode))
            if os.path.isdir(p):
                assert bool(mode & stat.S_ISGID) == group_writable
