"""`duetmc synth`: render the synthetic labelled music corpus."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from duetmc.cli.common import emit_json


@click.command("synth")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder; a rerun with the same settings reuses the clips already there.")
@click.option("--preset", type=click.Choice(["quickstart", "bench"]), default="quickstart", show_default=True,
              help="quickstart: 200 clean clips (every tag true and complete). bench: 2,250 clips (train/val) "
                   "+ 600 test clips, with partial and noisy training tags, near-duplicate pairs and human-style "
                   "val/test captions (README: 'The bench corpus').")
@click.option("--items", "n_items", type=click.IntRange(min=1), default=None,
              help="Number of clips dealt into train/val/test [default: the preset's, 200 or 2,250].")
@click.option("--test-items", type=click.IntRange(min=0), default=None,
              help="Extra test-only clips, beyond the test share of --items [default: the preset's, 0 or 600].")
@click.option("--seed", type=int, default=0, show_default=True, help="Corpus seed; item i depends only on (seed, i).")
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="Clip length.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Worker processes (default: the number of CPUs). The corpus does not depend on it.")
@click.option("--soundfont", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="General MIDI soundfont (default: FluidR3_GM from the Debian package fluid-soundfont-gm).")
@click.option("--heldout-soundfont/--no-heldout-soundfont", "heldout", default=True, show_default=True,
              help="Also render the test split with TimGM6mb (timgm6mb-soundfont) to measure robustness to timbre.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def synth(out, preset, n_items, test_items, seed, seconds, workers, soundfont, heldout, as_json):
    """Render seeded multi-track General MIDI songs to 24 kHz mono WAV, with a tagged manifest.

    Tags are true by construction: genre, instrument, mood, tempo (with the BPM) and key. With
    --preset bench the manifest keeps the observed (partial, noisy) training tags in `tags` and the
    truth in `true_tags`, and near_duplicates.jsonl lists the one-attribute pairs.
    """
    from duetmc.synth import preset_config, synth_corpus
    from duetmc.synth.render import FLUIDR3_GM, TIMGM6MB

    def run():
        config = preset_config(
            preset, out, n_items=n_items, test_items=test_items, seed=seed, seconds=seconds,
            workers=workers or os.cpu_count() or 1, soundfont=soundfont or FLUIDR3_GM, heldout_soundfont=TIMGM6MB)
        if not heldout:  # None means "the preset's" to preset_config, so switch it off here
            config.heldout_soundfont = None
        return synth_corpus(config, progress=not as_json)

    report = run()
    if as_json:
        emit_json(report.to_json())
    else:
        click.echo(f"{report.n_items} clips in {report.out} ({report.n_rendered} rendered, {report.n_cached} cached) "
                   f"in {report.seconds_wall:.1f} s")
        click.echo("splits: " + ", ".join(f"{k} {v}" for k, v in report.splits.items()))
        if report.near_duplicates:
            click.echo(f"near-duplicate pairs: {report.near_duplicates} (near_duplicates.jsonl)")
        click.echo(f"manifest: {report.manifest}")
        if report.heldout_manifest:
            click.echo(f"held-out soundfont manifest: {report.heldout_manifest}")
    for iid, error in report.failed:
        click.echo(f"error: item {iid} failed: {error}", err=True)
    if report.failed:
        sys.exit(1)


COMMANDS = [synth]
