"""The run directory: atomic checkpoints under faults, metrics reconciled on resume, the run lock,
what --resume may change, option validation, start-up pre-emption, weights hashes, moved caches."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from duetmc import run as rundir
from duetmc.cache_spec import CacheError
from duetmc.cli import main
from duetmc.pairs import resolve_spec
from duetmc.errors import UsageError
from duetmc.evaluate import EvalConfig, evaluate_run
from duetmc.train import TrainConfig, Trainer, train


def _model_at(step: int) -> tuple[torch.nn.Module, torch.optim.Optimizer, dict]:
    """A model, optimizer and state that all carry `step`, so a mixed checkpoint is detectable."""
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 4)).sum().backward()
    opt.step()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float(step))
    for s in opt.state.values():
        s["exp_avg"].fill_(float(step))
    return model, opt, {"train": {"global_step": step}}


def _assert_consistent(path, step: int) -> None:
    model, opt, _ = _model_at(-1)
    meta = rundir.load_checkpoint(path, model, opt)
    assert meta["train"]["global_step"] == step
    assert all(torch.all(p == step) for p in model.parameters())
    assert all(torch.all(s["exp_avg"] == step) for s in opt.state.values())


class Boom(Exception):
    pass


@pytest.mark.parametrize("fail_at", ["model", "optimizer", "state", "first rename", "second rename"])
def test_a_crash_anywhere_in_a_checkpoint_write_leaves_a_complete_one(tmp_path, monkeypatch, fail_at):
    path = tmp_path / "last"
    m1, o1, s1 = _model_at(1)
    rundir.save_checkpoint(path, m1, s1, o1)
    model, opt, state = _model_at(2)
    real_save, real_rename = rundir.save_file, os.rename
    written, renames = [], []

    def save_file(tensors, filename):
        name = os.path.basename(filename)
        written.append(name)
        if (fail_at, name) in (("model", "model.safetensors"), ("optimizer", "optimizer.safetensors")):
            raise Boom(name)
        real_save(tensors, filename)

    def rename(src, dst):
        renames.append(dst)
        if (fail_at, len(renames)) in (("first rename", 1), ("second rename", 2)):
            raise Boom("rename")
        real_rename(src, dst)

    monkeypatch.setattr(rundir, "save_file", save_file)
    monkeypatch.setattr(rundir.os, "rename", rename)
    if fail_at == "state":  # state.json written but not yet synced
        monkeypatch.setattr(rundir.os, "fsync", lambda fd: (_ for _ in ()).throw(Boom("state")))
    with pytest.raises(Boom):
        rundir.save_checkpoint(path, model, state, opt)
    monkeypatch.undo()
    _assert_consistent(path, 1)  # the previous checkpoint, whole
    rundir.save_checkpoint(path, model, state, opt)  # the next save recovers and publishes
    _assert_consistent(path, 2)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("last.tmp")) == ["last"]


@pytest.mark.slow
def test_a_sigkill_during_checkpoint_writes_never_mixes_steps(tmp_path):
    """A process saving checkpoints in a loop is SIGKILLed five times; each time the checkpoint found
    is whole (weights, optimizer and state of one step), and the next process continues from it."""
    script = textwrap.dedent(f"""
        import sys
        import torch
        from duetmc import run as rundir
        start = int(sys.argv[1])
        print("ready", flush=True)
        for step in range(start, start + 100000):
            model = torch.nn.Linear(4, 3)
            opt = torch.optim.AdamW(model.parameters(), lr=0.1)
            model(torch.ones(1, 4)).sum().backward()
            opt.step()
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(float(step))
            for s in opt.state.values():
                s["exp_avg"].fill_(float(step))
            rundir.save_checkpoint({str(tmp_path / "last")!r}, model, {{"train": {{"global_step": step}}}}, opt)
    """)
    last = 0
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", script, str(last + 1)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        while _step(tmp_path / "last") < last + 3:
            time.sleep(0.005)  # let it publish a few checkpoints, then kill it wherever it is
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        step = _step(tmp_path / "last")
        assert step >= last + 3
        _assert_consistent(tmp_path / "last", step)
        last = step


def _step(path) -> int:
    try:
        return json.loads((rundir.resolve(path) / rundir.STATE_FILE).read_text())["train"]["global_step"]
    except (OSError, TypeError, ValueError):  # between renames: read again
        return -1


def test_run_lock_refuses_a_live_writer_and_takes_over_a_dead_ones(tmp_path):
    with rundir.RunLock(tmp_path):
        with pytest.raises(UsageError, match=rf"pid {os.getpid()}"):
            rundir.RunLock(tmp_path).acquire()
    assert not (tmp_path / rundir.LOCK).exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    (tmp_path / rundir.LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid}))
    with rundir.RunLock(tmp_path):
        assert json.loads((tmp_path / rundir.LOCK).read_text())["pid"] == os.getpid()
    (tmp_path / rundir.LOCK).write_text(json.dumps({"host": "elsewhere", "pid": dead.pid}))
    with pytest.raises(UsageError, match="host elsewhere"):
        rundir.RunLock(tmp_path).acquire()


def test_truncate_metrics_keeps_the_checkpoints_epochs(tmp_path):
    for e in range(3):
        rundir.append_metrics(tmp_path, {"epoch": e, "train_loss": 1.0})
    assert rundir.truncate_metrics(tmp_path, 2) == 1
    assert [r["epoch"] for r in rundir.read_metrics(tmp_path)] == [0, 1]


def small(cache, out, **kw) -> TrainConfig:
    base = dict(epochs=2, batch_size=16, warmup_epochs=1, patience=100, progress=False, plots=False,
                keep_epoch_checkpoints=False)
    base.update(kw)
    return TrainConfig(data=[resolve_spec(cache)], out=str(out), **base)


@pytest.mark.slow
def test_a_crash_while_checkpointing_does_not_duplicate_metrics(signal_cache, tmp_path, monkeypatch):
    full = train(small(signal_cache, tmp_path / "full"))
    run = tmp_path / "run"
    real = rundir.save_checkpoint

    def crash_on_last_of_epoch_1(path, model, state, optimizer=None):
        if path.name == "last" and state["train"]["epoch"] == 2:
            raise Boom("killed while saving")
        return real(path, model, state, optimizer)

    monkeypatch.setattr(rundir, "save_checkpoint", crash_on_last_of_epoch_1)
    with pytest.raises(Boom):
        train(small(signal_cache, run))
    monkeypatch.undo()
    assert [r["epoch"] for r in rundir.read_metrics(run)] == [0, 1]  # line written, checkpoint not
    assert not (run / rundir.LOCK).exists()
    train(small(signal_cache, run), resume=True)
    assert [r["epoch"] for r in rundir.read_metrics(run)] == [0, 1]
    a, b = (rundir.read_metrics(r)[-1]["train_loss"] for r in (tmp_path / "full", run))
    assert a == b and full["status"] == "finished"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.slow
def test_resume_refuses_science_changes_and_applies_safe_ones(signal_cache, tmp_path):
    run = tmp_path / "run"
    assert invoke("train", "--cache", signal_cache, "--out", run, "--epochs", 1, "--batch-size", 16,
                  "--no-plots").exit_code == 0
    res = invoke("train", "--resume", "--out", run, "--lr", 0.01, "--no-swap", "--epochs", 3)
    assert res.exit_code == 2
    assert "--lr: 0.001 -> 0.01" in res.output and "--swap: True -> False" in res.output
    assert "\n" not in res.output.strip()
    res = invoke("train", "--resume", "--out", run, "--epochs", 2)  # more epochs, asked for
    assert res.exit_code == 0, res.output
    assert "applied epochs 1 -> 2" in res.output and len(rundir.read_metrics(run)) == 2
    res = invoke("train", "--resume", "--out", run, "--epochs", 1)
    assert res.exit_code == 2 and "may only grow" in res.output
    moved = tmp_path / "moved.zarr"
    shutil.copytree(signal_cache, moved)
    res = invoke("train", "--resume", "--out", run, "--cache", moved, "--epochs", 3, "--json")
    assert res.exit_code == 0, res.output
    assert rundir.read_config(run)[0].data[0].cache == str(moved.resolve())


@pytest.mark.slow
def test_resuming_an_early_stopped_run_trains_no_more(signal_cache, tmp_path):
    run = tmp_path / "run"
    # lr 0 after warm-up never improves the validation loss: patience 1 stops after epoch 1
    s = train(small(signal_cache, run, epochs=10, patience=1, lr=1e-12, warmup_epochs=0))
    assert s["stopped_early"] and s["epochs"] < 10
    n = len(rundir.read_metrics(run))
    again = train(small(signal_cache, run, epochs=10, patience=1, lr=1e-12, warmup_epochs=0), resume=True)
    assert again["epochs"] == s["epochs"] and len(rundir.read_metrics(run)) == n


@pytest.mark.parametrize("args, named", [
    (["--batch-size", 1], "--batch-size"), (["--epochs", -3], "--epochs"), (["--epochs", 0], "--epochs"),
    (["--p-cap", 2], "--p-cap"), (["--lr", -1], "--lr"), (["--attention-heads", 3], "--dim"),
])
def test_train_options_are_validated_at_the_boundary(signal_cache, tmp_path, args, named):
    res = invoke("train", "--cache", signal_cache, "--out", tmp_path / "run", *args)
    assert res.exit_code == 2 and res.output.startswith(f"error: {named}"), res.output
    assert not (tmp_path / "run" / "config.json").exists()


@pytest.mark.slow
def test_a_signal_during_start_up_leaves_a_resumable_run(signal_cache, tmp_path, monkeypatch):
    real_setup = Trainer.setup

    def setup_then_signal(self):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while the data loads
        real_setup(self)

    monkeypatch.setattr(Trainer, "setup", setup_then_signal)
    s = train(small(signal_cache, tmp_path / "run"))
    assert s["status"] == "preempted" and s["exit_code"] == 75 and (s["epoch"], s["step"]) == (0, 0)
    monkeypatch.undo()
    assert rundir.exists(tmp_path / "run" / "last")
    done = train(small(signal_cache, tmp_path / "run"), resume=True)
    full = train(small(signal_cache, tmp_path / "full"))
    assert done["epochs"] == 2
    a, b = (rundir.read_metrics(tmp_path / r)[-1]["train_loss"] for r in ("run", "full"))
    assert a == b


def test_eval_refuses_a_cache_from_other_encoder_weights(signal_cache, tmp_path):
    import zarr

    run = tmp_path / "run"
    train(small(signal_cache, run, epochs=1))
    other = tmp_path / "other.zarr"
    shutil.copytree(signal_cache, other)
    key = next(iter(zarr.open_group(str(other / "audio")).group_keys()))
    group = zarr.open_group(str(other / "audio" / key), mode="a")
    enc = dict(group.attrs["encoder"])
    enc["weights_sha256"] = "0" * 64
    group.attrs["encoder"] = enc
    with pytest.raises(UsageError, match="audio features come from other encoder weights"):
        evaluate_run(run, [str(other)], EvalConfig())
    res = invoke("search", run, "calm jazz", "--cache", other)
    assert res.exit_code == 2 and "other.zarr" in res.output and "weights" in res.output


def test_eval_works_from_another_directory_and_on_a_read_only_run(signal_cache, tmp_path, monkeypatch):
    run = tmp_path / "run"
    train(small(signal_cache, run, epochs=1))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    os.chmod(run, 0o555)
    try:
        res = invoke("eval", run, "--subsets", 2, "--queries", "all", "--json")
    finally:
        os.chmod(run, 0o755)
    assert res.exit_code == 0, res.output
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # nothing written into the run
    assert json.loads(res.output)[0]["n_items"] == 20
    res = invoke("embed", run, "--out", tmp_path / "emb.npz", "--split", "test", "--json")
    assert res.exit_code == 0 and json.loads(res.output)["clips"] == 20


@pytest.mark.slow
def test_a_cache_moved_during_training_is_one_line(signal_cache, tmp_path):
    cache = tmp_path / "c.zarr"
    shutil.copytree(signal_cache, cache)
    run = tmp_path / "run"

    def move(trainer):
        if trainer.state["global_step"] == 2:
            cache.rename(tmp_path / "gone.zarr")

    with pytest.raises(CacheError, match="disappeared while training"):
        train(small(str(cache), run, mode="streaming"), on_step=move)
    assert not rundir.exists(run / "last") and rundir.read_metrics(run) == []
    (tmp_path / "gone.zarr").rename(cache)
    assert train(small(str(cache), run, mode="streaming"), resume=True)["epochs"] == 2
    assert np.isfinite(rundir.read_metrics(run)[-1]["train_loss"])


@pytest.mark.slow
def test_report_to_tensorboard_writes_metrics_aggregators_and_temperature(signal_cache, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    train(small(signal_cache, run, epochs=2, report_to="tensorboard"))
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/train_loss", "val/loss", "val/R@10", "temperature", "aggregator/audio/layer_00",
            "aggregator/text/layer_00"} <= tags
    losses = [e.value for e in events.Scalars("train/train_loss")]
    assert losses == pytest.approx([r["train_loss"] for r in rundir.read_metrics(run)])
    assert [e.value for e in events.Scalars("temperature")] == pytest.approx([0.03, 0.03])


def test_a_requeued_slurm_job_takes_over_its_own_lock(tmp_path, monkeypatch):
    (tmp_path / rundir.LOCK).write_text(json.dumps({"host": "node-a", "pid": 1, "slurm_job": "77"}))
    monkeypatch.setenv("SLURM_JOB_ID", "78")
    with pytest.raises(UsageError, match="host node-a"):
        rundir.RunLock(tmp_path).acquire()
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    with rundir.RunLock(tmp_path):
        assert json.loads((tmp_path / rundir.LOCK).read_text())["slurm_job"] == "77"


def test_ablate_refuses_seed_next_to_seeds(tmp_path):
    res = invoke("ablate", "--cache", tmp_path / "c.zarr", "--out", tmp_path / "abl", "--seed", 3, "--seeds", 2)
    assert res.exit_code == 2 and "give --seeds N, not --seed" in res.output
    assert "--seed " not in invoke("ablate", "--help").output


def test_a_second_train_into_a_locked_run_is_refused(signal_cache, tmp_path):
    import socket

    run = tmp_path / "run"
    run.mkdir()
    (run / rundir.LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    res = invoke("train", "--cache", signal_cache, "--out", run)
    assert res.exit_code == 2 and f"pid {os.getpid()}" in res.output and socket.gethostname() in res.output
