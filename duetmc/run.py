"""The run directory: its layout, config, checkpoints, metrics, plots, lock, and loading a trained run.

Layout (every path relative to the run, so a run can be moved or copied whole):

    config.json             the TrainConfig tree (duetmc.config) + "features": the caches' feature
                            shapes and the weights sha256 of every feature group trained on
    metrics.jsonl           one JSON line per finished epoch
    last/  best/            checkpoints (below); checkpoints/epoch_NNN/ one per epoch when kept
    summary.json            written when training finishes
    loss.png  r10.png       training curves
    .lock                   {"host", "pid"} of the process writing the run

A checkpoint is a directory holding `model.safetensors`, `optimizer.safetensors` (training state
only) and `state.json`; no pickle anywhere. It is written into a fresh `NAME.tmp-PID/` directory,
then published by renames: `NAME/` -> `NAME.old/`, `NAME.tmp-PID/` -> `NAME/`, then `NAME.old/` is
removed. A kill at any point leaves either the old or the new checkpoint complete, and `resolve`
finds it (`NAME/`, else `NAME.old/`), so weights, optimizer and training state always belong to the
same step. Metrics are appended before `last/` is published; on resume `truncate_metrics` drops the
lines of epochs the checkpoint does not contain, so a crash in between never duplicates a line.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from duetmc.config import TrainConfig
from duetmc.errors import PathError, UsageError
from duetmc.heads.model import DuetHeads, HeadsConfig
from duetmc.atomic import atomic_write_text

CONFIG = "config.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
LOCK = ".lock"
MODEL_FILE, OPTIM_FILE, STATE_FILE = "model.safetensors", "optimizer.safetensors", "state.json"


# --- checkpoints --------------------------------------------------------------------------------


def _old(path: Path) -> Path:
    return path.with_name(path.name + ".old")


def resolve(path: str | Path) -> Path | None:
    """The complete checkpoint directory for `path` (itself, or the one a killed publish left), or None."""
    path = Path(path)
    for p in (path, _old(path)):
        if (p / STATE_FILE).is_file():
            return p
    return None


def exists(path: str | Path) -> bool:
    return resolve(path) is not None or Path(path).with_suffix(".json").is_file()


def _optimizer_parts(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    opt = optimizer.state_dict()
    tensors = {f"{i}.{name}": t.detach().cpu().contiguous()
               for i, s in opt["state"].items() for name, t in s.items() if torch.is_tensor(t)}
    meta = {"param_groups": opt["param_groups"],
            "scalars": {f"{i}.{n}": v for i, s in opt["state"].items() for n, v in s.items() if not torch.is_tensor(v)}}
    return tensors, meta


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_checkpoint_files(tmp: Path, model: torch.nn.Module, state: dict, optimizer) -> None:
    """Weights, optimizer tensors and state, in that order (a test interrupts between them)."""
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(tmp / MODEL_FILE))
    meta = dict(state)
    if optimizer is not None:
        tensors, meta["optimizer"] = _optimizer_parts(optimizer)
        save_file(tensors, str(tmp / OPTIM_FILE))
    with open(tmp / STATE_FILE, "w") as fh:
        fh.write(json.dumps(meta, indent=2, default=str))
        fh.flush()
        os.fsync(fh.fileno())


def save_checkpoint(path: str | Path, model: torch.nn.Module, state: dict,
                    optimizer: torch.optim.Optimizer | None = None) -> Path:
    """Write a checkpoint directory atomically (see the module docstring); returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    _write_checkpoint_files(tmp, model, state, optimizer)
    _fsync_dir(tmp)
    old = _old(path)
    if not path.exists() and old.exists():  # a previous publish was killed after its first rename
        os.rename(old, path)
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.rename(path, old)
    os.rename(tmp, path)
    _fsync_dir(path.parent)
    shutil.rmtree(old, ignore_errors=True)
    return path


def _legacy_files(prefix: Path) -> tuple[Path, Path, Path]:
    """`prefix.safetensors`, `prefix.optim.safetensors`, `prefix.json` of runs written before run dirs."""
    return prefix.with_suffix(".safetensors"), prefix.with_suffix(".optim.safetensors"), prefix.with_suffix(".json")


def _load_optimizer(optimizer, tensors: dict, meta: dict) -> None:
    state: dict = {}
    for key, t in tensors.items():
        i, name = key.split(".", 1)
        state.setdefault(int(i), {})[name] = t
    for key, v in meta["scalars"].items():
        i, name = key.split(".", 1)
        state.setdefault(int(i), {})[name] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def load_checkpoint(path: str | Path, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None = None, map_location: str = "cpu") -> dict:
    """Load weights (strictly) and, when given, the optimizer; returns the JSON state."""
    path = Path(path)
    found = resolve(path)
    if found is not None:
        model_file, optim_file, state_file = found / MODEL_FILE, found / OPTIM_FILE, found / STATE_FILE
    else:
        model_file, optim_file, state_file = _legacy_files(path)
        if not state_file.is_file():
            raise PathError(f"{path}: no complete checkpoint here")
    meta = json.loads(state_file.read_text())
    missing, unexpected = model.load_state_dict(load_file(str(model_file), device=map_location), strict=False)
    if missing or unexpected:
        raise PathError(f"{model_file} does not fit the model (missing {missing}, unexpected {unexpected}); "
                        "it belongs to another run")
    if optimizer is not None:
        _load_optimizer(optimizer, load_file(str(optim_file), device=map_location), meta["optimizer"])
    return meta


# --- metrics and plots --------------------------------------------------------------------------


def read_metrics(run: str | Path) -> list[dict]:
    path = Path(run) / METRICS
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def append_metrics(run: str | Path, record: dict) -> None:
    with open(Path(run) / METRICS, "a") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def truncate_metrics(run: str | Path, epochs_done: int) -> int:
    """Keep only the lines of epochs before `epochs_done` (those the checkpoint holds); returns lines dropped."""
    rows = read_metrics(run)
    keep = [r for r in rows if r["epoch"] < epochs_done]
    if len(keep) != len(rows):
        atomic_write_text(Path(run) / METRICS, "".join(json.dumps(r) + "\n" for r in keep))
    return len(rows) - len(keep)


def write_plots(run: str | Path) -> None:
    """loss.png (train and validation loss) and r10.png (validation R@10) from metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(run)
    rows = read_metrics(run)
    curves = [("loss.png", "InfoNCE loss", "Loss", [("train", "train_loss"), ("val", "val_loss")]),
              ("r10.png", "R@10 (%)", "Validation text→music R@10", [("val", "val_R@10")])]
    for name, ylabel, title, series in curves:
        points = [(label, [(r["epoch"], r[key]) for r in rows if key in r]) for label, key in series]
        points = [(label, p) for label, p in points if p]
        if not points:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, p in points:
            ax.plot(*zip(*p), label=label, marker="o" if len(p) < 30 else None)
        ax.set(xlabel="epoch", ylabel=ylabel, title=title)
        ax.legend()
        fig.tight_layout()
        fig.savefig(run / name, dpi=100)
        plt.close(fig)


# --- config ---------------------------------------------------------------------------------------


def write_config(run: str | Path, cfg: TrainConfig, features: dict) -> None:
    """config.json: the config tree plus the trained-on feature shapes and weights hashes."""
    atomic_write_text(Path(run) / CONFIG, json.dumps({**cfg.to_json(), "features": features}, indent=2))


def read_config(run: str | Path) -> tuple[TrainConfig, dict]:
    """(TrainConfig, features) of a run; refuses a folder that is not a run."""
    path = Path(run) / CONFIG
    if not path.is_file():
        raise PathError(f"{run}: not a run directory (no {CONFIG}); train one with `duetmc train`")
    tree = json.loads(path.read_text())
    if "train" in tree:  # written before the config tree: {"train": flat, "heads": HeadsConfig}
        heads = tree["heads"]
        features = {"shapes": {k: heads[k] for k in ("audio_dim", "audio_layers", "text_dim", "text_layers",
                                                       "audio_max_tokens", "text_max_tokens")}, "weights_sha256": {}}
        return TrainConfig.from_json(tree["train"]), features
    features = tree.pop("features", {})
    return TrainConfig.from_json(tree), features


def heads_config(cfg: TrainConfig, shapes: dict) -> HeadsConfig:
    """The heads: the model section of the config plus the feature shapes of the caches."""
    return HeadsConfig(**shapes, dim=cfg.dim, transformer_layers=cfg.transformer_layers, heads=cfg.heads,
                       dropout=cfg.dropout, temperature=cfg.temperature, learn_temperature=cfg.learn_temperature)


def load_run(run: str | Path, which: str = "best", device: str = "cpu") -> tuple[DuetHeads, TrainConfig]:
    """A trained model (in eval mode) and its config; `which`: best, last or checkpoints/epoch_NNN."""
    run = Path(run)
    cfg, features = read_config(run)
    model = DuetHeads(heads_config(cfg, features["shapes"])).to(device)
    if which == "best" and not exists(run / "best") and exists(run / "last"):
        which = "last"  # pre-empted before its first validation
    load_checkpoint(run / which, model, map_location=device)
    model.eval()
    return model, cfg


def weights_hashes(run: str | Path) -> dict:
    """{"audio": sha256, "text": sha256} of the feature groups the run was trained on ({} for old runs)."""
    return read_config(run)[1].get("weights_sha256", {})


def check_weights(run: str | Path, cache: str, group_attrs: dict[str, dict]) -> None:
    """Refuse a cache whose feature groups come from other encoder weights than the run's."""
    want = weights_hashes(run)
    for modality, attrs in group_attrs.items():
        have = (attrs.get("encoder") or {}).get("weights_sha256")
        if want.get(modality) and have and have != want[modality]:
            raise UsageError(f"{cache}: its {modality} features come from other encoder weights (sha256 "
                             f"{have[:12]}…) than run {run} was trained on ({want[modality][:12]}…); "
                             "featurize this data with the run's encoder")


# --- lock -----------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """One writer per run directory: `.lock` holds the writer's host, pid and SLURM job id. A lock left
    by a dead process on this host, or by an earlier run of this same SLURM job (requeued, maybe on
    another node), is taken over; any other is refused."""

    def __init__(self, run: str | Path):
        self.path = Path(run) / LOCK
        self.held = False

    def acquire(self) -> "RunLock":
        me = {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job": os.environ.get("SLURM_JOB_ID")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._take_over_stale(me):
                    continue
                raise
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(me))
            self.held = True
            return self
        raise UsageError(f"{self.path}: could not take the run lock; remove it if no process writes this run")

    def _take_over_stale(self, me: dict) -> bool:
        try:
            other = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            other = {}
        dead_here = other.get("host") == me["host"] and isinstance(other.get("pid"), int) and not _alive(other["pid"])
        requeued = me["slurm_job"] is not None and other.get("slurm_job") == me["slurm_job"]  # same job, rerun
        if dead_here or requeued:
            self.path.unlink(missing_ok=True)
            return True
        if not other:  # a writer between create and write: treat as held
            other = {"host": "?", "pid": "?"}
        raise UsageError(f"{self.path.parent}: another `duetmc train` writes this run (host {other.get('host')}, "
                         f"pid {other.get('pid')}); wait for it, or choose another --out "
                         f"(remove {self.path} only if that process is gone)")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
