"""The trainer: DuET-MC heads learnt from cached features, with the paper's recipe as defaults.

Reads top to bottom: build the pair index and feature source, then per epoch draw the batch specs
(a pure function of seed and epoch), run the steps, validate, checkpoint. Every random draw is keyed
by (seed, epoch, step), so a run stopped by SIGUSR1/SIGTERM and resumed ends with the same weights as
one that never stopped. Under torchrun each rank reads its own slice of every batch and the loss
gathers embeddings across ranks (duetmc.loss).
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from duetmc.checkpoint import load_checkpoint, save_checkpoint
from duetmc.feature_source import DEFAULT_MEMORY_BUDGET_GB, open_source, trim_padding
from duetmc.pairs import DataSpec, PairIndex, check_compatible
from duetmc.sampler import BatchSpec, SamplerConfig, epoch_batches
from duetmc.heads.model import DuetHeads, HeadsConfig
from duetmc.loss import contrastive_loss, swap_replacement_mask
from duetmc.errors import PathError, UsageError

REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL: "try again"; slurm/train.sbatch requeues on it


@dataclass
class TrainConfig:
    data: list[DataSpec]
    out: str
    # text views (DESIGN.md §2)
    p_cap: float = 0.5
    views: bool = True
    swap: bool = True
    swap_max: float = 0.15
    swap_warmup_epochs: int = 5
    swap_ramp_epochs: int = 20
    # optimisation
    epochs: int = 100
    batch_size: int = 1024
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 5
    patience: int = 10
    seed: int = 0
    # heads
    dim: int = 256
    transformer_layers: int = 2
    heads: int = 2
    dropout: float = 0.1
    temperature: float = 0.03
    learn_temperature: bool = False
    # data loading
    mode: str = "auto"  # auto | memory | streaming
    memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB
    stream_threads: int = 8
    allow_missing: bool = False  # skip items whose feature shards are missing or unreadable (warned)
    prefetch: int = 4
    device: str = "cpu"
    val_every: int = 1
    keep_epoch_checkpoints: bool = True
    plots: bool = True
    progress: bool = True

    def to_json(self) -> dict:
        d = asdict(self)
        d["data"] = [s.to_json() for s in self.data]
        return d

    @staticmethod
    def from_json(d: dict) -> "TrainConfig":
        d = dict(d)
        d["data"] = [DataSpec.from_json(s) for s in d["data"]]
        return TrainConfig(**d)


def p_swap(epoch: int, cfg: TrainConfig) -> float:
    """TextSwap probability: 0 during warm-up, then a linear ramp to `swap_max` over the ramp, then held."""
    if not cfg.swap or epoch < cfg.swap_warmup_epochs:
        return 0.0
    return cfg.swap_max * min(1.0, (epoch - cfg.swap_warmup_epochs + 1) / cfg.swap_ramp_epochs)


def learning_rate(step: int, steps_per_epoch: int, cfg: TrainConfig) -> float:
    """Linear warm-up over `warmup_epochs`, then cosine decay to 0 at `epochs`."""
    warm = cfg.warmup_epochs * steps_per_epoch
    total = cfg.epochs * steps_per_epoch
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def heads_config(indices: list[PairIndex], cfg: TrainConfig) -> HeadsConfig:
    (al, at, ad), (tl, _, td) = indices[0].audio_shape, indices[0].text_shape
    return HeadsConfig(audio_dim=ad, audio_layers=al, text_dim=td, text_layers=tl, dim=cfg.dim,
                       transformer_layers=cfg.transformer_layers, heads=cfg.heads, dropout=cfg.dropout,
                       temperature=cfg.temperature, learn_temperature=cfg.learn_temperature,
                       audio_max_tokens=at, text_max_tokens=max(ix.text_shape[1] for ix in indices))


def make_source(indices: list[PairIndex], cfg: TrainConfig):
    """In memory when the selected arrays fit the budget, else streamed from Zarr (duetmc.feature_source)."""
    return open_source(indices, cfg.mode, cfg.memory_budget_gb, cfg.device, cfg.stream_threads)


class _Stop:
    """Set by SIGUSR1/SIGTERM (SLURM's pre-emption warning); checked between steps."""

    def __init__(self):
        self.requested = False

    def __call__(self, signum, frame):
        self.requested = True


class PairForward(torch.nn.Module):
    """One forward for positives and hard negatives, so DDP sees every parameter use."""

    def __init__(self, heads: DuetHeads):
        super().__init__()
        self.heads = heads

    def forward(self, audio, text, text_len, hard=None, hard_len=None):
        a = self.heads.encode_audio(audio)
        t = self.heads.encode_text(text, text_len)
        h = self.heads.encode_text(hard, hard_len) if hard is not None and hard.shape[0] else None
        return a, t, h, self.heads.logit_scale()


def fetch(source, spec: BatchSpec, lo: int, hi: int):
    """Features of rows lo:hi of a batch spec (this rank's slice), hard negatives flattened."""
    ds = spec.ds[lo:hi]
    audio = source.audio_batch(ds, spec.audio_rows[lo:hi])
    text, text_len = trim_padding(*source.text_batch(ds, spec.text_rows[lo:hi]))
    hard_rows = spec.hard_rows[lo:hi]
    valid = hard_rows >= 0
    if valid.any():
        r, k = np.nonzero(valid)
        hard, hard_len = trim_padding(*source.text_batch(ds[r], hard_rows[r, k]))
    else:
        hard = hard_len = None
    return audio, text, text_len, torch.from_numpy(valid), hard, hard_len


class Prefetcher:
    """Reads the next batches in background threads while the current one trains."""

    def __init__(self, fn, specs, depth: int):
        self.pool = ThreadPoolExecutor(max_workers=max(1, min(depth, 2)))
        self.fn, self.specs = fn, list(specs)
        self.queue = deque(self.pool.submit(fn, s) for s in self.specs[:depth])
        self.next = depth
        self.wait_s = 0.0

    def __iter__(self):
        while self.queue:
            t0 = time.perf_counter()
            out = self.queue.popleft().result()
            self.wait_s += time.perf_counter() - t0
            if self.next < len(self.specs):
                self.queue.append(self.pool.submit(self.fn, self.specs[self.next]))
                self.next += 1
            yield out

    def close(self):
        self.pool.shutdown(cancel_futures=True)


def _dist():
    """(rank, world_size), initialising torch.distributed when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("DUETMC_DIST_BACKEND") != "gloo" else "gloo"
        torch.distributed.init_process_group(backend)
    return (torch.distributed.get_rank(), world) if world > 1 else (0, 1)


def load_data(cfg: TrainConfig):
    """(pair indices, feature source, mode) for a config; reusable across runs on the same caches."""
    indices = [PairIndex(s, cfg.allow_missing) for s in cfg.data]
    check_compatible(indices)
    return (indices, *make_source(indices, cfg))


def train(cfg: TrainConfig, resume: bool = False, data=None) -> dict:
    """Train (or resume) a run in `cfg.out`; `data` reuses `load_data`'s result.

    Returns the run summary, whose status is "preempted" (exit code 75) after SIGUSR1/SIGTERM.
    """
    rank, world = _dist()
    out = Path(cfg.out)
    t_load = time.perf_counter()
    indices, source, mode = data or load_data(cfg)
    t_load = time.perf_counter() - t_load
    torch.manual_seed(cfg.seed)
    hcfg = heads_config(indices, cfg)
    model = DuetHeads(hcfg).to(cfg.device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    state = {"epoch": 0, "step": 0, "global_step": 0, "best_val": None, "best_epoch": None, "bad_epochs": 0,
             "train_loss_sum": 0.0, "train_samples": 0, "train_seconds": 0.0, "wait_seconds": 0.0}
    if (out / "last.json").exists():
        if not resume:
            raise UsageError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
        state.update(load_checkpoint(out / "last", model, optimizer, map_location=cfg.device)["train"])
    elif rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps({"train": cfg.to_json(), "heads": asdict(hcfg)}, indent=2))
    net = PairForward(model)
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(net)
    sampler = SamplerConfig(cfg.p_cap, cfg.views, cfg.swap)
    stop = _Stop()
    handlers = {s: signal.signal(s, stop) for s in (signal.SIGUSR1, signal.SIGTERM)}
    from duetmc.evaluate import validate

    try:
        while state["epoch"] < cfg.epochs:
            epoch = state["epoch"]
            ps = p_swap(epoch, cfg)
            batches = epoch_batches(indices, sampler, cfg.seed, epoch, cfg.batch_size, ps, multiple_of=world)
            t_epoch = time.perf_counter()
            prefetch = Prefetcher(lambda s: fetch(source, s, rank * (len(s.ds) // world),
                                                  (rank + 1) * (len(s.ds) // world)),
                                  batches[state["step"]:], cfg.prefetch)
            lr = learning_rate(max(0, state["global_step"] - 1), len(batches), cfg)  # if no step is left
            net.train()
            for spec, (audio, text, text_len, valid, hard, hard_len) in zip(batches[state["step"]:], prefetch):
                step = state["global_step"]
                torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout draws keyed by step
                lr = learning_rate(step, len(batches), cfg)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                a, t, h, scale = net(audio, text, text_len, hard, hard_len)
                b_global = len(spec.ds)
                b_local = b_global // world
                hard_text = hard_mask = replace = None
                if h is not None:
                    hard_text = torch.zeros(valid.shape + (h.shape[1],), dtype=h.dtype, device=h.device)
                    hard_text[valid.to(h.device)] = h
                    hard_mask = valid.to(h.device)
                    g = torch.Generator().manual_seed(cfg.seed * 7_919 + step)
                    full_valid = torch.from_numpy(spec.hard_rows >= 0)
                    replace = swap_replacement_mask(full_valid, b_global, torch.arange(b_global), g)
                    replace = replace[rank * b_local:(rank + 1) * b_local].to(h.device)
                loss = contrastive_loss(a, t, scale, hard_text, hard_mask, replace, rank=rank, world_size=world)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                state["global_step"] += 1
                state["step"] += 1
                logged = loss.detach().clone()
                if world > 1:  # log the global batch's loss, not this rank's share
                    torch.distributed.all_reduce(logged)
                    logged /= world
                state["train_loss_sum"] += float(logged) * b_global
                state["train_samples"] += b_global
                if _stop_requested(stop, world):
                    break
            prefetch.close()
            state["train_seconds"] += time.perf_counter() - t_epoch
            state["wait_seconds"] += prefetch.wait_s
            if stop.requested:
                if rank == 0:
                    save_checkpoint(out / "last", model, {"train": state}, optimizer)
                    _write_plots(out, cfg)
                return {"status": "preempted", "epoch": epoch, "step": state["step"], "exit_code": REQUEUE_EXIT_CODE}
            record = {"epoch": epoch, "train_loss": state["train_loss_sum"] / max(1, state["train_samples"]),
                      "lr": lr, "p_swap": ps, "samples_per_s": state["train_samples"] / max(1e-9, state["train_seconds"]),
                      "data_wait_frac": state["wait_seconds"] / max(1e-9, state["train_seconds"]),
                      "seconds": state["train_seconds"], "mode": mode}
            if (epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs:
                record.update(validate(model, indices, source, cfg.p_cap))
            improved = record.get("val_loss") is not None and (
                state["best_val"] is None or record["val_loss"] < state["best_val"])
            if improved:
                state["best_val"], state["best_epoch"], state["bad_epochs"] = record["val_loss"], epoch, 0
            elif record.get("val_loss") is not None:
                state["bad_epochs"] += 1
            state.update(epoch=epoch + 1, step=0, train_loss_sum=0.0, train_samples=0, train_seconds=0.0,
                         wait_seconds=0.0)
            if rank == 0:
                with open(out / "metrics.jsonl", "a") as fh:
                    fh.write(json.dumps(record) + "\n")
                if cfg.keep_epoch_checkpoints:
                    save_checkpoint(out / "checkpoints" / f"epoch_{epoch:03d}", model, {"epoch": epoch, "metrics": record})
                if improved or state["best_epoch"] is None:
                    save_checkpoint(out / "best", model, {"epoch": epoch, "metrics": record})
                save_checkpoint(out / "last", model, {"train": state}, optimizer)
                if cfg.progress:
                    print(_progress_line(record), flush=True)
            if state["bad_epochs"] >= cfg.patience:
                break
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
        if data is None:
            source.close()
    summary = {"status": "finished", "epochs": state["epoch"], "best_epoch": state["best_epoch"],
               "best_val_loss": state["best_val"], "trainable_parameters": model.trainable_parameters(),
               "mode": mode, "run": str(out), "load_seconds": t_load,
               "train_seconds": sum(r["seconds"] for r in read_metrics(out)) if rank == 0 else None}
    if rank == 0:
        if not (out / "best.json").exists():  # epochs=0: the untrained heads are the result
            save_checkpoint(out / "best", model, {"epoch": None, "metrics": {}})
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        _write_plots(out, cfg)
    return summary


def _stop_requested(stop: _Stop, world: int) -> bool:
    if world == 1:
        return stop.requested
    flag = torch.tensor([1.0 if stop.requested else 0.0])
    torch.distributed.all_reduce(flag)
    stop.requested = bool(flag.item() > 0)
    return stop.requested


def _progress_line(r: dict) -> str:
    val = f" val {r['val_loss']:.3f} R@10 {r['val_R@10']:.1f}" if "val_loss" in r else ""
    return (f"epoch {r['epoch']:3d}  train {r['train_loss']:.3f}{val}  lr {r['lr']:.2e}  p_swap {r['p_swap']:.3f}"
            f"  {r['samples_per_s']:.0f} samples/s")


def read_metrics(run: str | Path) -> list[dict]:
    path = Path(run) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _write_plots(out: Path, cfg: TrainConfig) -> None:
    if not cfg.plots:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(out)
    if not rows:
        return
    ep = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ep, [r["train_loss"] for r in rows], label="train")
    val = [(r["epoch"], r["val_loss"]) for r in rows if "val_loss" in r]
    if val:
        ax.plot(*zip(*val), label="val")
    ax.set(xlabel="epoch", ylabel="InfoNCE loss", title="Loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=100)
    plt.close(fig)
    r10 = [(r["epoch"], r["val_R@10"]) for r in rows if "val_R@10" in r]
    if r10:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(*zip(*r10), marker="o")
        ax.set(xlabel="epoch", ylabel="R@10 (%)", title="Validation text→music R@10")
        fig.tight_layout()
        fig.savefig(out / "r10.png", dpi=100)
        plt.close(fig)


def load_run(run: str | Path, which: str = "best", device: str = "cpu") -> tuple[DuetHeads, TrainConfig]:
    """A trained model and its config from a run directory."""
    run = Path(run)
    conf_path = run / "config.json"
    if not conf_path.exists():
        raise PathError(f"{run}: not a run directory (no config.json); train one with `duetmc train`")
    conf = json.loads(conf_path.read_text())
    model = DuetHeads(HeadsConfig(**conf["heads"])).to(device)
    load_checkpoint(run / which, model, map_location=device)
    model.eval()
    return model, TrainConfig.from_json(conf["train"])
