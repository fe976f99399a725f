"""`duetmc train | eval | ablate`: the daily loop, from the cache (search and embed: cli/index.py, cli/model.py)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from duetmc.cli.common import emit_json



def _specs(caches, weights, audio_key, text_key):
    from duetmc.dataset import resolve_spec

    weights = list(weights) + [1.0] * (len(caches) - len(weights))
    return [resolve_spec(c, audio_key, text_key, w) for c, w in zip(caches, weights)]


def _base_config(caches, weights, audio_key, text_key, out, config_file, overrides: dict):
    """Defaults < --config file < command-line options that were given."""
    from duetmc.train import TrainConfig

    values = {}
    if config_file:
        values.update(json.loads(Path(config_file).read_text()))
        values.pop("data", None)
        values.pop("out", None)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(data=_specs(caches, weights, audio_key, text_key), out=out, **values)


def train_options(fn):
    options = [
        click.option("--cache", "caches", multiple=True, required=True,
                     help="Feature cache; repeat to mix datasets (A+B+C)."),
        click.option("--weight", "weights", multiple=True, type=float,
                     help="Sampling weight per --cache, in order [default: 1]."),
        click.option("--audio-key", default=None, help="Audio feature group when the cache has several."),
        click.option("--text-key", default=None, help="Text feature group when the cache has several."),
        click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
                     help="JSON file of TrainConfig fields."),
        click.option("--p-cap", type=float, default=None, help="Probability of a caption instead of tags [0.5]."),
        click.option("--views/--no-views", default=None, help="Augmented View Dropout [on]."),
        click.option("--swap/--no-swap", default=None, help="TextSwap hard negatives [on]."),
        click.option("--epochs", type=int, default=None, help="Maximum epochs [100]."),
        click.option("--batch-size", type=int, default=None, help="Global batch size [1024]."),
        click.option("--lr", type=float, default=None, help="Peak learning rate [1e-3]."),
        click.option("--patience", type=int, default=None, help="Early-stopping patience in epochs [10]."),
        click.option("--seed", type=int, default=None, help="[0]"),
        click.option("--mode", type=click.Choice(["auto", "memory", "streaming"]), default=None,
                     help="Feature source [auto: memory when it fits --memory-budget-gb]."),
        click.option("--memory-budget-gb", type=float, default=None, help="[8]"),
        click.option("--device", default=None, help="cpu, cuda, cuda:1 … [cpu]"),
        click.option("--val-every", type=int, default=None, help="Validate every N epochs [1]."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _overrides(kw: dict) -> dict:
    keys = ("p_cap", "views", "swap", "epochs", "batch_size", "lr", "patience", "seed", "mode",
            "memory_budget_gb", "device", "val_every")
    return {k: kw.get(k) for k in keys}


@click.command("train")
@train_options
@click.option("--out", required=True, help="Run directory.")
@click.option("--resume", is_flag=True, help="Continue the run in --out exactly where it stopped.")
@click.option("--json", "as_json", is_flag=True)
def train_cmd(caches, weights, audio_key, text_key, config_file, out, resume, as_json, **kw):
    """Train DuET-MC heads from cached features (no encoder runs).

    SIGUSR1 or SIGTERM saves a checkpoint and exits with code 75; `--resume` continues it.
    """
    from duetmc.train import REQUEUE_EXIT_CODE, TrainConfig, train

    conf_path = Path(out) / "config.json"
    if resume and conf_path.exists():
        cfg = TrainConfig.from_json(json.loads(conf_path.read_text())["train"])
    else:
        cfg = _base_config(caches, weights, audio_key, text_key, out, config_file, _overrides(kw))
    cfg.progress = not as_json
    summary = train(cfg, resume=resume)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        pass
    elif as_json:
        emit_json(summary)
    elif summary["status"] == "finished":
        click.echo(f"finished {summary['epochs']} epochs; best epoch {summary['best_epoch']} "
                   f"(val loss {summary['best_val_loss']}); {summary['trainable_parameters']:,} trainable "
                   f"parameters; run in {out}")
    else:
        click.echo(f"pre-empted at epoch {summary['epoch']}, step {summary['step']}; checkpoint saved. "
                   f"Continue with: duetmc train --out {out} --cache {caches[0]} --resume", err=True)
    if summary["status"] != "finished":
        sys.exit(REQUEUE_EXIT_CODE)


def _eval_config(split, subset_size, subsets, seed, device):
    from duetmc.evaluate import EvalConfig

    return EvalConfig(split=split, subset_size=subset_size, n_subsets=subsets, seed=seed, device=device)


def _print_results(results):
    from duetmc import metrics
    from duetmc.evaluate import table_rows

    for res in results:
        name = res.get("cache") or res.get("baseline")
        click.echo(f"{name}: {res['n_items']} clips, split {res.get('split', '-')}")
        for lang, m in res["text_to_music"].items():
            click.echo(f"  text→music [{lang}] R@1 {m['R@1']:.1f}  R@5 {m['R@5']:.1f}  R@10 {m['R@10']:.1f}  "
                       f"MedR {m['MedR']:.0f}  MeanR {m['MeanR']:.1f}  ({m['n_queries']:.0f} queries, "
                       f"{m['n_subsets']} subsets of {m['subset_size']})")
        if "music_to_text" in res:
            m = res["music_to_text"]
            click.echo(f"  music→text      R@1 {m['R@1']:.1f}  R@5 {m['R@5']:.1f}  R@10 {m['R@10']:.1f}  MedR {m['MedR']:.0f}")
        if "roc_auc" in res.get("tag_retrieval", {}):
            t = res["tag_retrieval"]
            click.echo(f"  tag retrieval   ROC-AUC {t['roc_auc']:.3f}  PR-AUC {t['pr_auc']:.3f}  ({t['n_tags']} tags)")
    click.echo("")
    click.echo(metrics.markdown_table([table_rows("model", r) for r in results]))


@click.command("eval")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--cache", "caches", multiple=True, help="Caches to evaluate on [default: the training cache].")
@click.option("--split", default="test", show_default=True, type=click.Choice(["train", "val", "test", "all"]))
@click.option("--subset-size", default=500, show_default=True)
@click.option("--subsets", default=10, show_default=True, help="Number of random subsets averaged.")
@click.option("--seed", default=0, show_default=True)
@click.option("--checkpoint", default="best", show_default=True, help="best, last, or checkpoints/epoch_007.")
@click.option("--baseline", "baselines", multiple=True, type=click.Path(exists=True),
              help="Precomputed embeddings (.npz or Zarr with audio, audio_ids, query, query_item[, query_lang]) "
                   "scored under the same protocol.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def eval_cmd(run, caches, split, subset_size, subsets, seed, checkpoint, baselines, device, as_json):
    """Text→music retrieval (R@1/5/10, median and mean rank), music→text and tag retrieval."""
    from duetmc.evaluate import evaluate_embeddings, evaluate_run

    cfg = _eval_config(split, subset_size, subsets, seed, device)
    results = evaluate_run(run, list(caches), cfg, checkpoint)
    results += [evaluate_embeddings(b, cfg) for b in baselines]
    (Path(run) / "eval.json").write_text(json.dumps(results, indent=2))
    if as_json:
        emit_json(results)
    else:
        _print_results(results)


@click.command("ablate")
@train_options
@click.option("--eval-cache", "eval_caches", multiple=True, help="Caches to evaluate every run on.")
@click.option("--out", required=True, help="Directory for every run, table.md, results.json and bars.png.")
@click.option("--seeds", default=3, show_default=True)
@click.option("--no-sweep", is_flag=True, help="Skip the p_cap sweep (Fig. 3).")
@click.option("--subsets", default=10, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def ablate_cmd(caches, weights, audio_key, text_key, config_file, eval_caches, out, seeds, no_sweep, subsets,
               as_json, **kw):
    """Table 4 (tags only; + tag-to-caption; + View Dropout; + TextSwap) and the p_cap sweep, over seeds."""
    from duetmc.ablate import AblateConfig, run_ablation
    from duetmc.evaluate import EvalConfig
    from duetmc.train import REQUEUE_EXIT_CODE

    base = _base_config(caches, weights, audio_key, text_key, out, config_file, _overrides(kw))
    cfg = AblateConfig(base, eval_caches=list(eval_caches), seeds=seeds, p_cap_sweep=not no_sweep,
                       eval=EvalConfig(n_subsets=subsets))
    result = run_ablation(cfg, progress=not as_json)
    if result.get("status") == "preempted":
        click.echo(f"pre-empted in {result['run']}; rerun the same command to continue", err=True)
        sys.exit(REQUEUE_EXIT_CODE)
    if as_json:
        emit_json(result)
    else:
        click.echo((Path(out) / "table.md").read_text())
        t = result["timings"]
        click.echo(f"phases: load {t['load']:.1f} s, train {t['train']:.1f} s, eval {t['eval']:.1f} s; "
                   f"bar chart {Path(out) / 'bars.png'}")


COMMANDS = [train_cmd, eval_cmd, ablate_cmd]
