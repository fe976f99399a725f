"""`duetmc featurize audio|text` (the cache commands are in cli/cache.py)."""

from __future__ import annotations

import sys

import click

from duetmc.cli.common import emit_json, parse_layers

GROUP_WRITABLE = click.option("--group-writable", is_flag=True,
                              help="Make the cache's files group-writable, so your lab group can co-own it.")



@click.group()
def featurize() -> None:
    """Run a locked encoder once and write its features into a Zarr cache."""


def _finish(summary, as_json: bool, allow_failures: bool, unit: str) -> None:
    if as_json:
        emit_json(summary.to_json())
    else:
        plan = summary.plan
        if plan is not None:
            click.echo(f"plan: added {len(plan['added'])}, changed {len(plan['changed'])}, kept {plan['kept']}, "
                       f"removed {len(plan['removed'])}")
            for what in ("added", "changed", "removed"):
                if plan[what]:
                    click.echo(f"  {what}: {', '.join(plan[what][:20])}" + (" ..." if len(plan[what]) > 20 else ""))
            if plan["removed"]:
                click.echo("  removed items keep no rows and are left out of training and evaluation")
        click.echo(f"{unit}: done {summary.done}, failed {summary.failed}, skipped (already done) "
                   f"{summary.skipped} in {summary.seconds:.1f} s")
        for label, reason in summary.failures:
            click.echo(f"  FAILED {label}: {reason}")
        for label, reason in summary.warnings:
            click.echo(f"  warning {label}: {reason}")
        for shard in summary.waited_for:
            click.echo(f"  waited for {shard}")
    if summary.failed and not allow_failures:
        click.echo(f"{summary.failed} {unit} failed; rerun after fixing them, or pass --allow-failures", err=True)
        sys.exit(1)


POSITIVE = click.FloatRange(min=0, min_open=True)
TASK_HELP = ("I/N: this process featurizes the I-th of N whole-shard ranges (0-based). Without it, the "
             "process takes every shard no other process holds; several may share one local cache.")


@featurize.command("audio")
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False))
@click.option("--cache", required=True, help="Cache path or fsspec URL (created if missing).")
@click.option("--encoder", required=True, help="mert-v1-95m, mert-v1-330m, musicnn-mtt, musicnn-msd, tiny-audio.")
@click.option("--encoder-path", default=None, help="Local directory or HF id to load the encoder's weights from.")
@click.option("--revision", default=None, help="HF revision (commit) of the weights.")
@click.option("--window", "window_s", default=10.0, type=POSITIVE, show_default=True, help="Window length in seconds.")
@click.option("--hop", "hop_s", default=None, type=POSITIVE, help="Hop between windows in seconds [default: window].")
@click.option("--tokens", default=4, type=click.IntRange(min=1), show_default=True,
              help="Tokens per window after time pooling.")
@click.option("--layers", default="all", show_default=True, help="Hidden states to store: 'all' or e.g. 0,6,12.")
@click.option("--batch-size", default=None, type=click.IntRange(min=1),
              help="Windows per encoder call [default: 1 for musicnn (fastest on CPU), 8 otherwise].")
@click.option("--workers", default=2, type=click.IntRange(min=1), show_default=True, help="Decode threads.")
@click.option("--task", default=None, help=TASK_HELP)
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "bf16", "fp16"]), default="float32", show_default=True,
              help="Compute dtype (bf16/fp16 on GPU). Features are stored as float16.")
@click.option("--rows-per-shard", default=64, type=click.IntRange(min=1), show_default=True,
              help="Windows per Zarr shard (the unit one process writes).")
@click.option("--allow-failures", is_flag=True, help="Exit 0 even when some items failed.")
@GROUP_WRITABLE
@click.option("--json", "as_json", is_flag=True)
def audio_cmd(manifest, cache, encoder, encoder_path, revision, window_s, hop_s, tokens, layers, batch_size,
              workers, task, device, dtype, rows_per_shard, allow_failures, group_writable, as_json):
    """Featurize the manifest's audio. Resumable: a rerun skips finished windows; the plan follows the
    manifest (new items are appended, edited ones re-planned, removed ones left out), and says so."""
    from duetmc.cache_access import shared_files
    from duetmc.featurize.audio import AudioFeaturizeConfig, featurize_audio

    config = AudioFeaturizeConfig(manifest, cache, encoder, encoder_path, revision, window_s, hop_s, tokens,
                                  parse_layers(layers), batch_size, workers, task, device, dtype, rows_per_shard,
                                  progress=not as_json)
    with shared_files(group_writable, cache):
        summary = featurize_audio(config)
    _finish(summary, as_json, allow_failures, "windows")


@featurize.command("text")
@click.argument("input", type=click.Path(exists=True, dir_okay=False))
@click.option("--cache", required=True)
@click.option("--encoder", required=True, help="clip-text, mt5-base, mt5-xxl, flan-t5-xxl, roberta-base, minilm, tiny-text.")
@click.option("--encoder-path", default=None)
@click.option("--revision", default=None)
@click.option("--layers", default="-1", show_default=True, help="'-1' (final output), 'all', or e.g. 0,6,-1.")
@click.option("--max-tokens", default=None, type=click.IntRange(min=1), help="Truncate texts to this many tokens.")
@click.option("--languages", default=None, help="Comma-separated languages to keep, e.g. en,de [default: all].")
@click.option("--batch-size", default=32, type=click.IntRange(min=1), show_default=True)
@click.option("--task", default=None, help=TASK_HELP)
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "bf16", "fp16"]), default="float32", show_default=True)
@click.option("--text-set", default=None,
              help="Name of this set of texts; another set for the same encoder is kept next to it "
                   "[default: the file's stem].")
@GROUP_WRITABLE
@click.option("--json", "as_json", is_flag=True)
def text_cmd(input, cache, encoder, encoder_path, revision, layers, max_tokens, languages, batch_size, task,
             device, dtype, text_set, group_writable, as_json):
    """Featurize every text of a views file (duetmc augment) or a manifest."""
    from duetmc.cache_access import shared_files
    from duetmc.featurize.text import TextFeaturizeConfig, featurize_text

    config = TextFeaturizeConfig(input, cache, encoder, encoder_path, revision, parse_layers(layers), max_tokens,
                                 tuple(languages.split(",")) if languages else None, batch_size, 1, task,
                                 device, dtype, progress=not as_json, text_set=text_set)
    with shared_files(group_writable, cache):
        summary = featurize_text(config)
    _finish(summary, as_json, allow_failures=False, unit="texts")


COMMANDS = [featurize]
