"""The trainer: DuET-MC heads learnt from cached features, with the paper's recipe as defaults.

`Trainer` is a recipe of named steps: `setup` (data, heads, optimizer, a new or resumed run),
`epoch` (the epoch's batch specs, a pure function of seed and epoch, read ahead by a prefetcher),
`step` (one optimisation step), `validate`, `checkpoint` and `preempt`. Every random draw is keyed by
(seed, epoch, step), so a run stopped by SIGUSR1/SIGTERM and resumed ends with the same weights as
one that never stopped. Under torchrun each rank reads its own slice of every batch and the loss
gathers embeddings across ranks (duetmc.loss). The run directory (config, checkpoints, metrics,
plots, lock) belongs to duetmc.run.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from duetmc import run as rundir
from duetmc.cache_spec import CacheError
from duetmc.config import TrainConfig, resume_changes
from duetmc.feature_source import open_source, trim_padding
from duetmc.pairs import PairIndex, check_compatible
from duetmc.sampler import BatchSpec, SamplerConfig, epoch_batches
from duetmc.evaluate import validate, warn_no_validation
from duetmc.heads.model import DuetHeads, positional_sizes
from duetmc.loss import contrastive_loss, textswap_negatives
from duetmc.tracking import make_reporter
from duetmc.errors import UsageError
from duetmc.atomic import atomic_write_text

__all__ = ["REQUEUE_EXIT_CODE", "TrainConfig", "Trainer", "train", "load_data", "p_swap", "learning_rate"]

REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL: "try again"; slurm/train.sbatch requeues on it


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


def feature_shapes(indices: list[PairIndex], positions: bool = False) -> dict:
    """The heads' input shapes from the caches; with learnable positions, their sizes too (text: the
    text encoder's own token limit, so any text it can encode fits; docs/PROTOCOL.md)."""
    (al, at, ad), (tl, _, td) = indices[0].audio_shape, indices[0].text_shape
    shapes = {"audio_dim": ad, "audio_layers": al, "text_dim": td, "text_layers": tl}
    if positions:
        shapes.update(positional_sizes([dict(ix.text.attrs) for ix in indices], at))
    return shapes


def heads_config(indices: list[PairIndex], cfg: TrainConfig):
    return rundir.heads_config(cfg, feature_shapes(indices, cfg.positions))


def group_weights(index: PairIndex) -> dict:
    """{"audio": sha256, "text": sha256} of a cache's selected feature groups."""
    return {m: (dict(g.attrs).get("encoder") or {}).get("weights_sha256")
            for m, g in (("audio", index.audio), ("text", index.text))}


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on the weight matrices of the linear maps and attention only.

    Exempt, as is usual for Transformers: biases and LayerNorm gains (decay would fight the
    normalisation), the CLS token and positions (embeddings, not maps), the layer aggregator's weights
    (a weighted average of encoder layers, initialised uniform: decay would pull it towards silence)
    and the temperature. In these heads that is exactly "2-D or not".
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in trainable if p.ndim == 2], "weight_decay": weight_decay},
            {"params": [p for p in trainable if p.ndim != 2], "weight_decay": 0.0}]


def make_source(indices: list[PairIndex], cfg: TrainConfig):
    """In memory when the selected arrays fit the budget, else streamed (duetmc.feature_source)."""
    return open_source(indices, cfg.mode, cfg.memory_budget_gb, cfg.device, cfg.stream_threads)


class StopFlag:
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
        if hard is None or not hard.shape[0]:
            return a, self.heads.encode_text(text, text_len), None, self.heads.logit_scale()
        # Positives and hard negatives in one text pass, so the length buckets span both.
        tokens = max(text.shape[2], hard.shape[2])
        with torch.autocast(text.device.type, enabled=False):  # a copy of float16 features, not maths
            both = torch.cat([_pad_tokens(text, tokens), _pad_tokens(hard, tokens)])
        t = self.heads.encode_text(both, torch.cat([text_len, hard_len]))
        return a, t[: len(text)], t[len(text):], self.heads.logit_scale()


def autocast(cfg: TrainConfig):
    """bf16 autocast of the heads' forward (and so its backward) when `--precision bf16`."""
    device_type = torch.device(cfg.device).type
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")


def _pad_tokens(x: torch.Tensor, tokens: int) -> torch.Tensor:
    """`[B, L, T, D]` zero-padded to `tokens` along T (padding is masked by the lengths)."""
    return torch.nn.functional.pad(x, (0, 0, 0, tokens - x.shape[2])) if x.shape[2] < tokens else x


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


def _fresh_state() -> dict:
    return {"epoch": 0, "step": 0, "global_step": 0, "best_val": None, "best_epoch": None, "bad_epochs": 0,
            "stopped_early": False, "train_loss_sum": 0.0, "train_samples": 0, "train_seconds": 0.0,
            "wait_seconds": 0.0}


class Trainer:
    """One run: `Trainer(cfg, resume).run()` returns the summary (status "finished" or "preempted").

    `data` reuses `load_data`'s result across runs; `on_step(trainer)` is called after every step
    (tests use it to deliver a signal at a known step); `stop` is a `StopFlag` the caller installed
    as the signal handler before the trainer existed (the CLI does, to catch signals during imports).
    """

    def __init__(self, cfg: TrainConfig, resume: bool = False, data=None, on_step=None, stop=None):
        self.cfg, self.resume, self.shared_data, self.on_step = cfg.validate(), resume, data, on_step
        self.out = Path(cfg.out)
        self.rank, self.world = _dist()
        self.stop = stop if stop is not None else StopFlag()
        self.state = _fresh_state()
        self.source = None
        self.reporter = None
        self.t_load = 0.0

    # --- the recipe ---------------------------------------------------------------------------

    def run(self) -> dict:
        handlers = {s: signal.signal(s, self.stop) for s in (signal.SIGUSR1, signal.SIGTERM)}
        lock = rundir.RunLock(self.out)
        try:
            if self.rank == 0:
                self.out.mkdir(parents=True, exist_ok=True)
                lock.acquire()
            self.setup()
            if _stop_requested(self.stop, self.world):  # a signal during start-up
                return self.preempt()
            while self.state["epoch"] < self.cfg.epochs and not self.state["stopped_early"]:
                if not self.epoch():
                    return self.preempt()
            return self.finish()
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)
            if self.shared_data is None and self.source is not None:
                self.source.close()
            if self.reporter is not None:
                self.reporter.close()
            lock.release()

    def setup(self) -> None:
        """Data, heads and optimizer; a new run's config, or a resumed run's checkpoint."""
        cfg = self.cfg
        t = time.perf_counter()
        self.indices, self.source, self.mode = self.shared_data or load_data(cfg)
        if self.rank == 0:
            warn_no_validation(self.indices)
        self.t_load = time.perf_counter() - t
        features = {"shapes": feature_shapes(self.indices, cfg.positions), "weights_sha256": group_weights(self.indices[0])}
        torch.manual_seed(cfg.seed)
        self.model = DuetHeads(rundir.heads_config(cfg, features["shapes"])).to(cfg.device)
        self.optimizer = torch.optim.AdamW(param_groups(self.model, cfg.weight_decay), lr=cfg.lr)
        existing = (self.out / rundir.CONFIG).exists()
        if self.world > 1:  # every rank decides "new or resumed" before rank 0 writes the config
            torch.distributed.barrier()
        if existing:
            self._reopen(features)
        elif self.rank == 0:
            rundir.write_config(self.out, cfg, features)
        self.net = PairForward(self.model)
        if self.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(self.net)
        self.sampler = SamplerConfig(cfg.p_cap, cfg.views, cfg.swap)
        if self.rank == 0:
            self.reporter = make_reporter(cfg.report_to, self.out)

    def _reopen(self, features: dict) -> None:
        """Continue the run in `out`: same science, same feature weights; metrics cut to the checkpoint."""
        if not self.resume:
            raise UsageError(f"{self.out} already holds a run; pass --resume to continue it, or choose another --out")
        recorded, old_features = rundir.read_config(self.out)
        _, refused = resume_changes(recorded, {f: getattr(self.cfg, f) for f in vars(self.cfg) if f != "data"})
        refused += _data_changes(recorded, self.cfg)
        for modality, sha in old_features.get("weights_sha256", {}).items():
            if sha and features["weights_sha256"].get(modality) not in (None, sha):
                refused.append(f"{modality} encoder weights: sha256 {sha[:12]}… -> "
                               f"{features['weights_sha256'][modality][:12]}…")
        if refused:
            raise UsageError(f"{self.out}: --resume cannot change the science of a run: {'; '.join(refused)}; "
                             "start a new run with another --out")
        if self.rank == 0:
            rundir.write_config(self.out, self.cfg, features)  # applied safe changes (new cache path, epochs)
        if rundir.exists(self.out / "last"):
            self.state.update(rundir.load_checkpoint(self.out / "last", self.model, self.optimizer,
                                                     map_location=self.cfg.device)["train"])
        if self.rank == 0:
            rundir.truncate_metrics(self.out, self.state["epoch"])

    def epoch(self) -> bool:
        """Train the rest of the current epoch, then validate and checkpoint; False when pre-empted."""
        cfg, state = self.cfg, self.state
        epoch = state["epoch"]
        self._check_caches()
        ps = p_swap(epoch, cfg)
        batches = epoch_batches(self.indices, self.sampler, cfg.seed, epoch, cfg.batch_size, ps,
                                multiple_of=self.world)
        todo = batches[state["step"]:]
        t_epoch = time.perf_counter()
        prefetch = Prefetcher(self._fetch, todo, cfg.prefetch)
        self.lr = learning_rate(max(0, state["global_step"] - 1), len(batches), cfg)  # if no step is left
        self.net.train()
        try:
            for spec, batch in zip(todo, self._checked(prefetch)):
                self.step(spec, batch, len(batches))
                if self.on_step is not None:
                    self.on_step(self)
                if _stop_requested(self.stop, self.world):
                    break
        finally:
            prefetch.close()
        state["train_seconds"] += time.perf_counter() - t_epoch
        state["wait_seconds"] += prefetch.wait_s
        if self.stop.requested:
            return False
        self._check_caches()  # a moved cache may read as fill values: never checkpoint such an epoch
        record = self.validate(self._epoch_record(epoch, ps))
        self.checkpoint(record)
        return True

    def step(self, spec: BatchSpec, batch, steps_per_epoch: int) -> None:
        """One optimisation step on this rank's slice of a batch."""
        cfg, state = self.cfg, self.state
        audio, text, text_len, valid, hard, hard_len = batch
        step = state["global_step"]
        torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout draws keyed by step
        self.lr = learning_rate(step, steps_per_epoch, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        with autocast(cfg):
            a, t, h, scale = self.net(audio, text, text_len, hard, hard_len)
        a, t, h = (None if x is None else x.float() for x in (a, t, h))  # the loss in fp32
        g = torch.Generator().manual_seed(cfg.seed * 7_919 + step) if h is not None else None
        hard_text, hard_mask, replace = textswap_negatives(h, valid, spec.hard_rows, g, self.rank, self.world)
        loss = contrastive_loss(a, t, scale, hard_text, hard_mask, replace, rank=self.rank, world_size=self.world)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        state["global_step"] += 1
        state["step"] += 1
        logged = loss.detach().clone()
        if self.world > 1:  # log the global batch's loss, not this rank's share
            torch.distributed.all_reduce(logged)
            logged /= self.world
        state["train_loss_sum"] += float(logged) * len(spec.ds)
        state["train_samples"] += len(spec.ds)

    def validate(self, record: dict) -> dict:
        """Validation loss and R@10 (every `val_every` epochs and at the last); early-stopping bookkeeping."""
        cfg, state, epoch = self.cfg, self.state, record["epoch"]
        if (epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs:
            record.update(validate(self.model, self.indices, self.source, cfg.p_cap))
        value, best = record.get(cfg.select_by), state["best_val"]
        sign = -1.0 if cfg.select_by == "val_R@10" else 1.0  # compare as "lower is better"
        self.improved = value is not None and (best is None or sign * value < sign * best)
        if self.improved:
            state["best_val"], state["best_epoch"], state["bad_epochs"] = value, epoch, 0
        elif value is not None:
            state["bad_epochs"] += 1
        state.update(epoch=epoch + 1, step=0, train_loss_sum=0.0, train_samples=0, train_seconds=0.0,
                     wait_seconds=0.0, stopped_early=state["bad_epochs"] >= cfg.patience)
        return record

    def checkpoint(self, record: dict) -> None:
        """Metrics line, epoch and best checkpoints, then `last/` (published last: it is the resume point)."""
        if self.rank != 0:
            return
        epoch = record["epoch"]
        rundir.append_metrics(self.out, record)
        if self.cfg.keep_epoch_checkpoints:
            rundir.save_checkpoint(self.out / "checkpoints" / f"epoch_{epoch:03d}", self.model,
                                   {"epoch": epoch, "metrics": record})
        if self.improved or self.state["best_epoch"] is None:
            rundir.save_checkpoint(self.out / "best", self.model, {"epoch": epoch, "metrics": record})
        rundir.save_checkpoint(self.out / "last", self.model, {"train": self.state}, self.optimizer)
        if self.reporter is not None:
            self.reporter.epoch(record, self.model)
        if self.cfg.progress:
            print(_progress_line(record), flush=True)

    def preempt(self) -> dict:
        """Save where the run stands (mid-epoch, or before its first step) and ask to be requeued."""
        if self.rank == 0:
            rundir.save_checkpoint(self.out / "last", self.model, {"train": self.state}, self.optimizer)
            if self.cfg.plots:
                rundir.write_plots(self.out)
        return {"status": "preempted", "epoch": self.state["epoch"], "step": self.state["step"],
                "exit_code": REQUEUE_EXIT_CODE}

    def finish(self) -> dict:
        state = self.state
        summary = {"status": "finished", "epochs": state["epoch"], "best_epoch": state["best_epoch"],
                   "select_by": self.cfg.select_by, "best_val": state["best_val"],
                   "best_val_loss": state["best_val"] if self.cfg.select_by == "val_loss" else None,
                   "stopped_early": state["stopped_early"],
                   "trainable_parameters": self.model.trainable_parameters(), "mode": self.mode,
                   "run": str(self.out), "load_seconds": self.t_load, "train_seconds": None}
        if self.rank == 0:
            summary["train_seconds"] = sum(r["seconds"] for r in rundir.read_metrics(self.out))
            if not rundir.exists(self.out / "best"):  # epochs=0: the untrained heads are the result
                rundir.save_checkpoint(self.out / "best", self.model, {"epoch": None, "metrics": {}})
            atomic_write_text(self.out / rundir.SUMMARY, json.dumps(summary, indent=2))
            if self.cfg.plots:
                rundir.write_plots(self.out)
        return summary

    # --- helpers --------------------------------------------------------------------------------

    def _fetch(self, spec: BatchSpec):
        b = len(spec.ds) // self.world
        return fetch(self.source, spec, self.rank * b, (self.rank + 1) * b)

    def _check_caches(self) -> None:
        """A cache that vanished under a running job is named in one line (the last checkpoint stays)."""
        for ix in self.indices:
            cache = ix.spec.cache
            if "://" not in cache and not Path(cache).exists():
                raise CacheError(f"{cache}: the cache disappeared while training (moved or deleted); put it "
                                 f"back, or resume with `duetmc train --resume --out {self.out} --cache NEW`")

    def _checked(self, batches):
        """The prefetched batches; a read error from a vanished cache becomes `_check_caches`'s message."""
        try:
            yield from batches
        except (KeyError, OSError) as exc:
            try:
                self._check_caches()
            except CacheError as gone:
                raise gone from exc
            raise

    def _epoch_record(self, epoch: int, ps: float) -> dict:
        s = self.state
        return {"epoch": epoch, "train_loss": s["train_loss_sum"] / max(1, s["train_samples"]), "lr": self.lr,
                "p_swap": ps, "samples_per_s": s["train_samples"] / max(1e-9, s["train_seconds"]),
                "data_wait_frac": s["wait_seconds"] / max(1e-9, s["train_seconds"]),
                "seconds": s["train_seconds"], "mode": self.mode}


def _data_changes(recorded: TrainConfig, cfg: TrainConfig) -> list[str]:
    """Differences in what is read from the caches; only a cache's path may change."""
    old = [dict(s.to_json(), cache=None) for s in recorded.data]
    new = [dict(s.to_json(), cache=None) for s in cfg.data]
    if old == new:
        return []
    return [f"caches/feature groups/weights: {[s.to_json() for s in recorded.data]} -> "
            f"{[s.to_json() for s in cfg.data]}"]


def train(cfg: TrainConfig, resume: bool = False, data=None, on_step=None, stop=None) -> dict:
    """Train (or resume) a run in `cfg.out`; `data` reuses `load_data`'s result.

    Returns the run summary, whose status is "preempted" (exit code 75) after SIGUSR1/SIGTERM.
    """
    return Trainer(cfg, resume, data, on_step, stop).run()


def _stop_requested(stop: StopFlag, world: int) -> bool:
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
