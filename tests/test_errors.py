"""Errors of the machine (a full disk or quota, a read-only mount) reach people as one line, and stop
loops that would otherwise record every later item as failed."""

from __future__ import annotations

import errno
import json
from collections import namedtuple

import pytest
from click.testing import CliRunner

from duetmc.cli import main
from duetmc.errors import machine_error, path_error

Usage = namedtuple("Usage", "total used free")


def _manifest(tmp_path):
    path = tmp_path / "manifest.jsonl"
    rows = [{"id": f"c{i}", "audio": f"c{i}.wav", "tags": {"genre": ["rock"], "mood": ["happy"]}, "split": "train"}
            for i in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "no space left on device"), (errno.EDQUOT, "quota"),
                                         (errno.EROFS, "read-only file system")])
def test_a_full_disk_is_one_line_naming_the_path_and_the_fix(tmp_path, monkeypatch, code, words):
    def full(*a, **k):
        raise OSError(code, __import__("os").strerror(code), str(tmp_path / "views.jsonl"))

    monkeypatch.setattr("duetmc.augment.viewsfile.write_views", full)
    res = CliRunner().invoke(main, ["augment", str(_manifest(tmp_path)), "--out", str(tmp_path / "views.jsonl")])
    assert res.exit_code == 2, res.output
    line = res.output.strip().splitlines()[-1]
    assert line.startswith(f"error: {tmp_path / 'views.jsonl'}: ") and words in line.lower(), line
    assert "run the same command again" in line


def test_other_os_errors_keep_their_traceback(tmp_path, monkeypatch):
    def broken(*a, **k):
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr("duetmc.augment.viewsfile.write_views", broken)
    res = CliRunner().invoke(main, ["augment", str(_manifest(tmp_path)), "--out", str(tmp_path / "views.jsonl")])
    assert isinstance(res.exception, OSError) and res.exception.errno == errno.EBADF


def test_machine_errors_are_told_apart_from_bad_items():
    assert machine_error(OSError(errno.ENOSPC, "No space left on device"))
    assert not machine_error(OSError(errno.ENOENT, "No such file or directory"))
    assert not machine_error(ValueError("bad row"))
    msg = str(path_error(OSError(errno.ENOSPC, "No space left on device", "/data/cache.zarr"), "writing a shard"))
    assert msg.startswith("/data/cache.zarr: no space left on device writing a shard; free some space")


def test_synth_stops_on_a_full_disk_instead_of_failing_every_clip(tmp_path, monkeypatch):
    from duetmc.synth import corpus

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "audio" / "x.wav"))

    monkeypatch.setattr(corpus, "_render", full)
    monkeypatch.setattr(corpus, "_CONFIG", corpus.SynthConfig(tmp_path, n_items=4), raising=False)
    with pytest.raises(OSError) as caught:
        corpus._make_item(("train", 0))
    assert caught.value.errno == errno.ENOSPC


def test_quickstart_refuses_at_the_start_when_the_disk_is_too_small(tmp_path, monkeypatch):
    from duetmc import quickstart

    cfg = quickstart.QuickstartConfig(out=str(tmp_path))
    monkeypatch.setattr("shutil.disk_usage", lambda p: Usage(10**12, 10**12 - 10**8, 10**8))
    with pytest.raises(quickstart.QuickstartError, match=r"needs about 1\.\d GB more here and 0\.1 GB are free"):
        quickstart.check_disk(tmp_path, cfg)
    (tmp_path / "reused.bin").write_bytes(b"\0" * 10**6)  # what a rerun finds counts as written
    small = quickstart.QuickstartConfig(out=str(tmp_path), items=20, test_items=10, seeds=1)
    need = 30 * quickstart.BYTES_PER_CLIP + 6 * quickstart.BYTES_PER_RUN - 10**6
    monkeypatch.setattr("shutil.disk_usage", lambda p: Usage(10**12, 0, int(need) + 10))
    quickstart.check_disk(tmp_path, small)
    monkeypatch.setattr("shutil.disk_usage", lambda p: Usage(10**12, 0, int(need) - 10**4))
    with pytest.raises(quickstart.QuickstartError):
        quickstart.check_disk(tmp_path, small)


def test_a_write_that_fills_the_disk_names_the_file_it_was_writing(tmp_path):
    from duetmc.atomic import atomic_write

    def fill(tmp):
        with open("/dev/full", "wb") as f:  # a real ENOSPC from the kernel, which names no file
            f.write(b"\0" * 65536)

    with pytest.raises(OSError) as caught:
        atomic_write(tmp_path / "clip.wav", fill)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path / "clip.wav")
    assert not list(tmp_path.iterdir())  # no temporary file left behind


def test_featurize_names_the_cache_when_the_disk_fills(tmp_path, monkeypatch):
    import zarr

    real = zarr.Array.__setitem__

    def full(self, key, value):
        if self.basename == "features":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, key, value)

    monkeypatch.setattr(zarr.Array, "__setitem__", full)
    cache = tmp_path / "c.zarr"
    res = CliRunner().invoke(main, ["featurize", "text", str(_manifest(tmp_path)), "--cache", str(cache),
                                    "--encoder", "tiny-text"])
    assert res.exit_code == 2, res.output
    line = res.output[res.output.index("error: "):].strip()  # after the progress bar's last frame
    assert line.startswith(f"error: {cache}/text/") and "(rows 0-" in line and "no space left on device" in line, line
