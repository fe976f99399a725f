"""The training configuration: one typed tree, serialised once into a run's config.json.

`TrainConfig` is flat to construct (`TrainConfig(data=..., out=..., epochs=3)`), but every field
belongs to one section of the tree — `model` (the heads), `text` (text sampling: tag-to-caption,
View Dropout, TextSwap), `optim` (optimisation), `data` (caches and how they are read) and `run`
(where and how a run executes) — and config.json stores it as that tree. Each field's metadata also
says how it is offered on the command line (`flag`, `help`) and what `--resume` may change
(`resume`: "science" is refused, "safe" is applied, "grow" may only increase). `duetmc.cli.train`
derives its options from these fields, so a new option is one edit here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from duetmc.feature_source import DEFAULT_MEMORY_BUDGET_GB
from duetmc.pairs import DataSpec
from duetmc.errors import UsageError

SECTIONS = ("model", "text", "optim", "data", "run")
CONFIG_VERSION = 2


def opt(default, section: str, help: str = "", flag: str | None = "", resume: str = "science", **kw):
    """A config field: `flag=""` derives `--name-with-dashes`; `flag=None` keeps it off the CLI."""
    meta = {"section": section, "help": help, "flag": flag, "resume": resume, **kw}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    data: list[DataSpec] = opt([], "data", flag=None)
    out: str = opt("", "run", flag=None, resume="safe")
    # text sampling (docs/DESIGN.md §2)
    p_cap: float = opt(0.5, "text", "Probability of a caption instead of tags.")
    views: bool = opt(True, "text", "Augmented View Dropout.", bool_flag=True)
    swap: bool = opt(True, "text", "TextSwap hard negatives.", bool_flag=True)
    swap_max: float = opt(0.15, "text", "Largest TextSwap probability, reached after the ramp.")
    swap_warmup_epochs: int = opt(5, "text", "Epochs without TextSwap.")
    swap_ramp_epochs: int = opt(20, "text", "Epochs of the linear TextSwap ramp.")
    # optimisation
    epochs: int = opt(100, "optim", "Maximum epochs.", resume="grow")
    batch_size: int = opt(1024, "optim", "Global batch size.")
    lr: float = opt(1e-3, "optim", "Peak learning rate.")
    weight_decay: float = opt(0.05, "optim", "AdamW weight decay.")
    warmup_epochs: int = opt(5, "optim", "Linear learning-rate warm-up epochs.")
    patience: int = opt(10, "optim", "Early-stopping patience in epochs.")
    select_by: str = opt("val_loss", "optim", "Validation metric that picks best/ and drives early stopping: "
                                              "val_loss (lower is better) or val_R@10 (higher is better).",
                         choices=("val_loss", "val_R@10"))
    seed: int = opt(0, "optim", "Seed of every random draw.")
    # the heads (duetmc.heads.model.HeadsConfig takes these plus the cache's shapes)
    dim: int = opt(256, "model", "Embedding size.")
    transformer_layers: int = opt(2, "model", "Transformer layers per projection head.")
    heads: int = opt(2, "model", "Attention heads per transformer layer.", flag="--attention-heads")
    dropout: float = opt(0.1, "model", "Dropout in the projection heads.")
    temperature: float = opt(0.03, "model", "Softmax temperature (initial value if learnt).")
    learn_temperature: bool = opt(False, "model", "Learn the temperature.", bool_flag=True)
    positions: bool = opt(False, "model", "Learnable positions in the heads, sized to the text encoder's own "
                                          "token limit (off: the encoders' features already carry position).",
                          bool_flag=True)
    # data loading: performance only, never the batches
    mode: str = opt("auto", "data", "Feature source [auto: memory when it fits --memory-budget-gb].",
                    choices=("auto", "memory", "streaming"), resume="safe")  # never changes the batches
    memory_budget_gb: float = opt(DEFAULT_MEMORY_BUDGET_GB, "data", "Largest selected feature size loaded in memory.", resume="safe")
    allow_missing: bool = opt(False, "data", "Skip (and report) items whose feature shards are missing or "
                                             "unreadable, instead of refusing the cache.", bool_flag=True)
    stream_threads: int = opt(8, "data", "Reader threads in streaming mode.", resume="safe")
    prefetch: int = opt(4, "data", "Batches read ahead of the step.", resume="safe")
    # how the run executes
    device: str = opt("cpu", "run", "cpu, cuda, cuda:1 ...", resume="safe")
    precision: str = opt("fp32", "run", "Arithmetic of the training step: fp32, or bf16 autocast (fast on CUDA "
                                        "and on CPUs with AVX-512 BF16 or AMX; weights stay fp32).",
                         choices=("fp32", "bf16"))
    val_every: int = opt(1, "run", "Validate every N epochs.", resume="safe")
    keep_epoch_checkpoints: bool = opt(False, "run", "Also keep a checkpoint per epoch in checkpoints/ (about "
                                                        "14 MB each with the default heads); best/ and last/ "
                                                        "are always written.", bool_flag=True, resume="safe")
    plots: bool = opt(True, "run", "Write loss.png and r10.png.", bool_flag=True, resume="safe")
    report_to: str = opt("none", "run", "Experiment tracking: TensorBoard events in RUN/tensorboard/.",
                         choices=("none", "tensorboard"), resume="safe")
    progress: bool = opt(True, "run", flag=None, resume="safe")

    def validate(self) -> "TrainConfig":
        """Refuse values that cannot work, naming the option (raises UsageError)."""
        checks = [
            ("batch_size", self.batch_size >= 2, "must be at least 2 (InfoNCE needs a negative)"),
            ("epochs", self.epochs >= 0, "must be 0 (untrained heads) or more"),
            ("p_cap", 0.0 <= self.p_cap <= 1.0, "is a probability: between 0 and 1"),
            ("swap_max", 0.0 <= self.swap_max <= 1.0, "is a probability: between 0 and 1"),
            ("lr", self.lr > 0, "must be positive"),
            ("weight_decay", self.weight_decay >= 0, "must be 0 or more"),
            ("warmup_epochs", self.warmup_epochs >= 0, "must be 0 or more"),
            ("swap_warmup_epochs", self.swap_warmup_epochs >= 0, "must be 0 or more"),
            ("swap_ramp_epochs", self.swap_ramp_epochs >= 1, "must be at least 1"),
            ("patience", self.patience >= 1, "must be at least 1"),
            ("val_every", self.val_every >= 1, "must be at least 1"),
            ("dim", self.dim >= 1 and self.heads >= 1 and self.dim % self.heads == 0,
             f"must be a positive multiple of --attention-heads ({self.heads})"),
            ("dropout", 0.0 <= self.dropout < 1.0, "must be in [0, 1)"),
            ("temperature", 0.0 < self.temperature <= 1.0, "must be in (0, 1]"),
            ("memory_budget_gb", self.memory_budget_gb >= 0, "must be 0 or more"),
            ("stream_threads", self.stream_threads >= 1, "must be at least 1"),
            ("prefetch", self.prefetch >= 1, "must be at least 1"),
            ("mode", self.mode in ("auto", "memory", "streaming"), "must be auto, memory or streaming"),
            ("report_to", self.report_to in ("none", "tensorboard"), "must be none or tensorboard"),
            ("precision", self.precision in ("fp32", "bf16"), "must be fp32 or bf16"),
        ]
        for name, ok, what in checks:
            if not ok:
                raise UsageError(f"{flag_of(name)} {what}; got {getattr(self, name)!r}")
        for spec in self.data:
            if not spec.weight > 0:
                raise UsageError(f"--weight of {spec.cache} must be positive; got {spec.weight}")
        return self

    def to_json(self) -> dict:
        """The tree: {"version", "model": {...}, "text": {...}, "optim": {...}, "data": {"caches": [...], ...},
        "run": {...}}; `out` is not stored (a run is where its config.json is)."""
        tree: dict = {"version": CONFIG_VERSION, **{s: {} for s in SECTIONS}}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "out":  # a run is wherever its config.json is
                continue
            if f.name == "data":  # local caches absolute: the run works from any directory
                value = [dict(s.to_json(), cache=absolute_cache(s.cache)) for s in value]
            tree[f.metadata["section"]]["caches" if f.name == "data" else f.name] = value
        return tree

    @staticmethod
    def from_json(tree: dict) -> "TrainConfig":
        """Reads the tree, and the flat form of older runs (and of `--config` files)."""
        if "version" in tree:
            flat = {k: v for s in SECTIONS for k, v in tree.get(s, {}).items()}
            flat["data"] = flat.pop("caches", [])
        else:
            flat = dict(tree)
        flat["data"] = [s if isinstance(s, DataSpec) else DataSpec.from_json(s) for s in flat.get("data", [])]
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(flat) - names)
        if unknown:
            raise UsageError(f"unknown training options {unknown}; see `duetmc train --help`")
        return TrainConfig(**flat)


def flag_of(name: str) -> str:
    """The command-line flag of a config field."""
    f = next(f for f in dataclasses.fields(TrainConfig) if f.name == name)
    return f.metadata.get("flag") or "--" + name.replace("_", "-")


def cli_fields() -> list[dataclasses.Field]:
    """The fields offered as `duetmc train` options, in declaration order."""
    return [f for f in dataclasses.fields(TrainConfig) if f.metadata.get("flag") is not None]


def absolute_cache(url: str) -> str:
    """Local cache paths are recorded absolute, so a run works from any directory; URLs stay as given."""
    return url if "://" in url else str(Path(url).expanduser().resolve())


def resume_changes(old: TrainConfig, given: dict) -> tuple[dict, list[str]]:
    """Split the options given to `--resume` into what may be applied and the refused differences.

    Returns ({field: new value} to apply, ["--flag: old -> new", ...] refused).
    """
    meta = {f.name: f.metadata for f in dataclasses.fields(TrainConfig)}
    apply, refused = {}, []
    for name, new in given.items():
        old_value = getattr(old, name)
        if new is None or new == old_value or name == "data":
            continue
        kind = meta[name]["resume"]
        if kind == "safe" or (kind == "grow" and new > old_value):
            apply[name] = new
        else:
            why = " (may only grow)" if kind == "grow" else ""
            refused.append(f"{flag_of(name)}: {old_value!r} -> {new!r}{why}")
    return apply, refused
