"""Trainer: the recipe's defaults, schedules, hard negatives in the loss, learning, resume identity."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from duetmc import train as train_mod
from duetmc.pairs import PairIndex, resolve_spec
from duetmc.sampler import SamplerConfig, epoch_batches
from duetmc.evaluate import EvalConfig, evaluate_index
from duetmc.errors import UsageError
from duetmc.run import load_run
from duetmc.train import TrainConfig, learning_rate, p_swap, train


def small(cache, out, **kw) -> TrainConfig:
    base = dict(epochs=3, batch_size=16, warmup_epochs=1, patience=100, progress=False, plots=False,
                keep_epoch_checkpoints=False)
    base.update(kw)
    return TrainConfig(data=[resolve_spec(cache)], out=str(out), **base)


def test_recipe_defaults():
    cfg = TrainConfig(data=[], out="x")
    assert (cfg.temperature, cfg.learn_temperature) == (0.03, False)
    assert (cfg.lr, cfg.weight_decay, cfg.warmup_epochs, cfg.epochs, cfg.batch_size) == (1e-3, 0.05, 5, 100, 1024)
    assert (cfg.dim, cfg.transformer_layers, cfg.heads) == (256, 2, 2)
    assert (cfg.swap_max, cfg.swap_warmup_epochs, cfg.swap_ramp_epochs) == (0.15, 5, 20)
    assert cfg.views and cfg.swap and cfg.p_cap == 0.5


def test_p_swap_schedule():
    cfg = TrainConfig(data=[], out="x")
    assert [p_swap(e, cfg) for e in range(5)] == [0.0] * 5
    ramp = [p_swap(e, cfg) for e in range(5, 25)]
    assert np.allclose(np.diff(ramp), 0.15 / 20) and ramp[0] == pytest.approx(0.0075)
    assert ramp[-1] == pytest.approx(0.15)
    assert p_swap(25, cfg) == p_swap(99, cfg) == pytest.approx(0.15)
    assert p_swap(50, dataclasses.replace(cfg, swap=False)) == 0.0


def test_learning_rate_schedule():
    cfg = TrainConfig(data=[], out="x", epochs=20, warmup_epochs=5)
    steps = 10
    lrs = [learning_rate(s, steps, cfg) for s in range(20 * steps)]
    assert lrs[0] == pytest.approx(1e-3 / 50)
    assert np.all(np.diff(lrs[:50]) > 0) and lrs[49] == pytest.approx(1e-3)
    assert np.all(np.diff(lrs[50:]) <= 1e-12)
    assert lrs[50 + 75] == pytest.approx(0.5e-3, rel=0.05)  # cosine midpoint
    assert lrs[-1] < 1e-5


def test_epoch_batches_are_deterministic_and_follow_the_text_rules(signal_cache):
    index = PairIndex(resolve_spec(signal_cache))
    cfg = SamplerConfig(p_cap=0.0, views=False, swap=False)
    a = epoch_batches([index], cfg, seed=1, epoch=3, batch_size=16, p_swap=0.0)
    b = epoch_batches([index], cfg, seed=1, epoch=3, batch_size=16, p_swap=0.0)
    assert all(np.array_equal(x.text_rows, y.text_rows) and np.array_equal(x.audio_rows, y.audio_rows) for x, y in zip(a, b))
    train_items = set(index.items("train").tolist())
    row_item = np.asarray(index.audio["window_item"][:])
    for batch in a:
        ks = row_item[batch.audio_rows]
        assert set(ks.tolist()) <= train_items
        assert np.array_equal(batch.text_rows, index.tags_row[ks])  # p_cap=0: tags only
    views = epoch_batches([index], SamplerConfig(p_cap=1.0, views=True, swap=False), 1, 3, 16, 0.0)
    for batch in views:
        for r, t in zip(batch.audio_rows, batch.text_rows):
            assert t in index.views[row_item[r]]
    fixed = epoch_batches([index], SamplerConfig(p_cap=1.0, views=False, swap=False), 1, 3, 16, 0.0)
    for batch in fixed:
        for r, t in zip(batch.audio_rows, batch.text_rows):
            assert t == index.captions[row_item[r]][0]


def test_hard_negatives_are_the_swaps_of_the_positive_text(signal_cache):
    index = PairIndex(resolve_spec(signal_cache))
    row_item = np.asarray(index.audio["window_item"][:])
    on = epoch_batches([index], SamplerConfig(p_cap=0.5, views=True, swap=True), 0, 0, 16, p_swap=1.0)
    found = 0
    for batch in on:
        for j, (r, t) in enumerate(zip(batch.audio_rows, batch.text_rows)):
            expected = index.swaps.get((row_item[r], t), [])
            got = [h for h in batch.hard_rows[j] if h >= 0]
            assert got == expected
            found += len(got)
    assert found > 0
    off = epoch_batches([index], SamplerConfig(p_cap=0.5, views=True, swap=True), 0, 0, 16, p_swap=0.0)
    assert all((b.hard_rows < 0).all() for b in off)


def test_hard_negatives_reach_the_loss_row_of_their_anchor(signal_cache, tmp_path, monkeypatch):
    calls = []
    real = train_mod.contrastive_loss

    def spy(audio, text, scale, hard_text=None, hard_mask=None, replace_mask=None, **kw):
        calls.append((hard_text, hard_mask, replace_mask))
        return real(audio, text, scale, hard_text, hard_mask, replace_mask, **kw)

    monkeypatch.setattr(train_mod, "contrastive_loss", spy)
    cfg = small(signal_cache, tmp_path / "run", epochs=1, swap_warmup_epochs=0, swap_ramp_epochs=1, swap_max=1.0,
                dropout=0.0)
    train(cfg)
    assert calls
    for hard_text, hard_mask, replace in calls:
        assert hard_mask is not None and hard_mask.any()
        assert torch.all(hard_text[hard_mask].norm(dim=-1) > 0.99)  # real unit embeddings
        assert torch.all(hard_text[~hard_mask] == 0)
        # as many in-batch negatives are replaced as hard negatives were added
        assert torch.equal(replace.sum(1), hard_mask.sum(1))


def test_training_learns_and_beats_untrained_heads(signal_cache, tmp_path):
    index = PairIndex(resolve_spec(signal_cache))
    run = tmp_path / "run"
    summary = train(small(signal_cache, run, epochs=25, batch_size=32, warmup_epochs=2))
    assert summary["status"] == "finished" and summary["trainable_parameters"] > 1_000_000
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 25 and rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert {"train_loss", "val_loss", "val_R@10", "lr", "p_swap", "samples_per_s"} <= set(rows[0])
    model, _ = load_run(run)
    learned = evaluate_index(model, index, EvalConfig(split="test", queries="all"))["text_to_music"]["en"]
    untrained = train(small(signal_cache, tmp_path / "untrained", epochs=0))
    model0, _ = load_run(tmp_path / "untrained")
    before = evaluate_index(model0, index, EvalConfig(split="test", queries="all"))["text_to_music"]["en"]
    n_test = len(index.items("test"))
    chance = 100 * 10 / n_test
    assert untrained["epochs"] == 0
    assert learned["R@10"] > 1.5 * chance, (learned, chance)
    assert learned["R@10"] > before["R@10"] + 15, (learned, before)


def _weights(run: Path, name: str) -> dict:
    return load_file(str(run / name / "model.safetensors"))


def _signal_at(step: int, signum=signal.SIGUSR1):
    """An on_step hook that sends this process `signum` after global step `step`: the real handler
    then stops the run at a known step, whatever the machine's speed."""
    def hook(trainer):
        if trainer.state["global_step"] == step:
            os.kill(os.getpid(), signum)
    return hook


def test_resume_after_sigusr1_gives_identical_weights(signal_cache, tmp_path):
    """A run pre-empted mid-epoch by SIGUSR1 and resumed with `--resume --out` alone ends bit-identical
    to an uninterrupted one, with one metrics line per epoch."""
    kw = dict(epochs=4, batch_size=8, warmup_epochs=1, swap_warmup_epochs=0, swap_ramp_epochs=2)
    train(small(signal_cache, tmp_path / "full", **kw))
    run = tmp_path / "cut"
    summary = train(small(signal_cache, run, **kw), on_step=_signal_at(10))  # 60 train clips: 8 steps/epoch
    assert summary["status"] == "preempted" and (summary["epoch"], summary["step"]) == (1, 2)
    assert json.loads((run / "last" / "state.json").read_text())["train"]["global_step"] == 10
    res = subprocess.run([sys.executable, "-m", "duetmc", "train", "--resume", "--out", str(run)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    full, cut = _weights(tmp_path / "full", "last"), _weights(run, "last")
    assert full.keys() == cut.keys()
    for k in full:
        assert torch.equal(full[k], cut[k]), k
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2, 3]


def test_checkpoints_load_without_pickle(signal_cache, tmp_path):
    run = tmp_path / "run"
    train(small(signal_cache, run, epochs=2, keep_epoch_checkpoints=True, plots=True))
    for name in ("best", "last", "checkpoints/epoch_000", "checkpoints/epoch_001"):
        assert (run / name / "model.safetensors").exists() and (run / name / "state.json").exists()
    assert (run / "last" / "optimizer.safetensors").exists()
    assert not list(run.glob("**/*.tmp-*")) and not list(run.glob("**/*.old"))
    assert (run / "loss.png").stat().st_size > 1000 and (run / "r10.png").exists()
    conf = json.loads((run / "config.json").read_text())
    assert conf["model"]["temperature"] == 0.03 and conf["model"]["dim"] == 256
    assert conf["features"]["shapes"]["audio_layers"] >= 1 and len(conf["features"]["weights_sha256"]["audio"]) == 64
    assert Path(conf["data"]["caches"][0]["cache"]).is_absolute()
    assert "heads" not in conf and "train" not in conf  # serialised once
    with pytest.raises(UsageError, match="already holds a run"):
        train(small(signal_cache, run, epochs=2))


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(signal_cache, tmp_path):
    """torchrun with 2 gloo ranks and global batch B == one process with batch B (60 train items: even batches)."""
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps({"dropout": 0.0, "warmup_epochs": 1, "plots": False, "keep_epoch_checkpoints": False,
                                "swap_warmup_epochs": 0, "swap_ramp_epochs": 1, "swap_max": 0.5}))
    args = ["train", "--cache", signal_cache, "--epochs", "2", "--batch-size", "16", "--config", str(conf)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DUETMC_DIST_BACKEND": "gloo"}
    subprocess.run([sys.executable, "-m", "duetmc", *args, "--out", str(tmp_path / "one")], check=True, env=env,
                   capture_output=True)
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "duetmc", *args, "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    one, two = _weights(tmp_path / "one", "last"), _weights(tmp_path / "two", "last")
    # Adam divides by sqrt(v): float-order noise in near-zero gradients moves a weight by a fraction of
    # one lr step (1e-3); dropping a single sample from a batch moves them by several steps.
    for k in one:
        assert torch.allclose(one[k], two[k], atol=1e-3, rtol=0), k
    m1, m2 = ([json.loads(x) for x in (tmp_path / r / "metrics.jsonl").read_text().splitlines()] for r in ("one", "two"))
    assert np.allclose([m["train_loss"] for m in m1], [m["train_loss"] for m in m2], rtol=1e-4)
    assert np.allclose([m["val_loss"] for m in m1], [m["val_loss"] for m in m2], rtol=1e-5)


def test_weight_decay_only_on_weight_matrices():
    from duetmc.heads.model import DuetHeads, HeadsConfig
    from duetmc.train import param_groups

    model = DuetHeads(HeadsConfig(audio_dim=16, audio_layers=3, text_dim=8, text_layers=2, learn_temperature=True,
                                  text_max_tokens=5, audio_max_tokens=4))
    decayed, exempt = param_groups(model, 0.05)
    assert decayed["weight_decay"] == 0.05 and exempt["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed_names = {names[id(p)] for p in decayed["params"]}
    exempt_names = {names[id(p)] for p in exempt["params"]}
    assert all(n.endswith(("linear.weight", "in_proj_weight", "out_proj.weight", "linear1.weight", "linear2.weight"))
               for n in decayed_names)
    for kept_out in ("log_logit_scale", "audio_aggregator.conv.weight", "text_projection.cls", "text_projection.pos",
                     "audio_projection.encoder.layers.0.norm1.weight", "audio_projection.linear.bias"):
        assert kept_out in exempt_names, kept_out
    assert len(decayed_names) + len(exempt_names) == len(list(model.parameters()))


def test_bf16_precision_trains_under_autocast_keeps_fp32_weights(signal_cache, tmp_path, monkeypatch):
    seen = []
    real = train_mod.DuetHeads.encode_audio

    def spy(self, *args):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return real(self, *args)

    monkeypatch.setattr(train_mod.DuetHeads, "encode_audio", spy)
    run = tmp_path / "run"
    train(small(signal_cache, run, epochs=6, batch_size=32, precision="bf16"))
    steps = [s for s in seen if s[0]]
    assert steps and set(steps) == {(True, torch.bfloat16)}
    assert any(not on for on, _ in seen)  # validation embeds in fp32
    tree = json.loads((run / "config.json").read_text())
    assert tree["run"]["precision"] == "bf16"
    assert {w.dtype for w in _weights(run, "best").values()} == {torch.float32}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]


def test_precision_must_be_fp32_or_bf16(signal_cache, tmp_path):
    with pytest.raises(UsageError, match="--precision must be fp32 or bf16"):
        small(signal_cache, tmp_path / "run", precision="fp16").validate()


@pytest.mark.parametrize("select_by", ["val_loss", "val_R@10"])
def test_best_checkpoint_and_early_stopping_follow_the_selection_metric(signal_cache, tmp_path, select_by):
    run = tmp_path / select_by
    s = train(small(signal_cache, run, epochs=5, lr=3e-3, select_by=select_by, keep_epoch_checkpoints=True))
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    values = [r[select_by] for r in rows]
    best = int(np.argmin(values)) if select_by == "val_loss" else int(np.argmax(values))  # the first best
    assert s["select_by"] == select_by and s["best_epoch"] == best and s["best_val"] == values[best]
    assert json.loads((run / "best" / "state.json").read_text())["epoch"] == best
    best_w, same_epoch = _weights(run, "best"), _weights(run, f"checkpoints/epoch_{best:03d}")
    assert all(torch.equal(best_w[k], same_epoch[k]) for k in best_w)
    # patience counts epochs without improvement of this metric
    stopped = train(small(signal_cache, tmp_path / f"{select_by}_p1", epochs=5, lr=3e-3, select_by=select_by,
                          patience=1))
    first_worse = next((i for i in range(1, 5) if not (values[i] < min(values[:i]) if select_by == "val_loss"
                                                       else values[i] > max(values[:i]))), None)
    assert stopped["epochs"] == (first_worse + 1 if first_worse is not None else 5)
