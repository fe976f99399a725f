"""`duetmc quickstart`: the whole recipe offline, in minutes."""

from __future__ import annotations

import click

from duetmc.cli.common import emit_json, stdout_to_stderr


@click.command("quickstart")
@click.option("--out", default="quickstart", show_default=True, help="Working directory (reused by reruns).")
@click.option("--items", default=240, show_default=True, help="Synthetic clips (80/10/10 train/val/test).")
@click.option("--test-items", default=100, show_default=True, help="Extra test-only clips (both soundfonts).")
@click.option("--seed", default=0, show_default=True)
@click.option("--seeds", default=2, show_default=True, help="Training seeds per ablation row.")
@click.option("--epochs", default=None, type=int, help="Epochs per run [20].")
@click.option("--workers", default=2, show_default=True, help="Synthesis processes and decode threads.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON at the end.")
def quickstart(out, items, test_items, seed, seeds, epochs, workers, as_json):
    """Synthesize music, augment, featurize (musicnn + MiniLM), train and ablate, all offline."""
    from duetmc.quickstart import QuickstartConfig, run_quickstart

    cfg = QuickstartConfig(out=out, items=items, test_items=test_items, seed=seed, seeds=seeds, workers=workers)
    if epochs is not None:
        cfg.train["epochs"] = epochs
    if as_json:
        with stdout_to_stderr():
            summary = run_quickstart(cfg, say=lambda *_: None, progress=False)
        emit_json(summary)
    else:
        run_quickstart(cfg, say=click.echo)


COMMANDS = [quickstart]
