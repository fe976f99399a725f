"""Optional experiment tracking (`--report-to tensorboard`): per-epoch metrics, the layer aggregators'
weights and the temperature, written as TensorBoard events into `RUN/tensorboard/`. Off by default;
the metrics themselves always live in the run's metrics.jsonl (duetmc.run)."""

from __future__ import annotations

from pathlib import Path

from duetmc.errors import UsageError

REPORTERS = ("none", "tensorboard")


class TensorboardReporter:
    def __init__(self, run: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise UsageError("--report-to tensorboard needs the tensorboard package: "
                             "pip install 'duetmc[tensorboard]'") from exc
        self.writer = SummaryWriter(log_dir=str(Path(run) / "tensorboard"))

    def epoch(self, record: dict, model) -> None:
        """Every numeric field of the epoch's metrics line, the aggregator weights and the temperature."""
        step = record["epoch"]
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(("val/" + key[4:]) if key.startswith("val_") else f"train/{key}", value, step)
        for modality in ("audio", "text"):
            weights = getattr(model, f"{modality}_aggregator").layer_weights()
            for layer, w in enumerate(weights.tolist()):
                self.writer.add_scalar(f"aggregator/{modality}/layer_{layer:02d}", w, step)
        self.writer.add_scalar("temperature", 1.0 / float(model.logit_scale()), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def make_reporter(kind: str, run: str | Path):
    """A reporter for `--report-to`, or None when tracking is off."""
    if kind == "none":
        return None
    if kind == "tensorboard":
        return TensorboardReporter(run)
    raise UsageError(f"--report-to must be one of {', '.join(REPORTERS)}; got {kind!r}")
