"""`duetmc train | eval | ablate`: the daily loop, from the cache (search and embed: cli/index.py, cli/model.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import click

from duetmc.cli.common import emit_json
from duetmc.config import absolute_cache



def _specs(caches, weights, audio_key, text_key):
    from duetmc.config import absolute_cache
    from duetmc.pairs import resolve_spec
    from duetmc.errors import UsageError

    if len(weights) > len(caches):
        raise UsageError(f"--weight given {len(weights)} times for {len(caches)} --cache; give one per cache")
    weights = list(weights) + [1.0] * (len(caches) - len(weights))
    return [resolve_spec(absolute_cache(c), audio_key, text_key, w) for c, w in zip(caches, weights)]


def _file_values(config_file) -> dict:
    """TrainConfig fields from a --config JSON file (flat, or a run's config.json tree)."""
    if not config_file:
        return {}
    from duetmc.config import TrainConfig

    tree = json.loads(Path(config_file).read_text())
    tree.pop("features", None)
    cfg = TrainConfig.from_json(tree)
    keys = tree.keys() if "version" not in tree else [k for s in tree.values() if isinstance(s, dict) for k in s]
    return {k: getattr(cfg, k) for k in keys if k not in ("data", "caches", "out")}


def _base_config(caches, weights, audio_key, text_key, out, config_file, overrides: dict):
    """Defaults < --config file < command-line options that were given."""
    from duetmc.config import TrainConfig

    values = _file_values(config_file)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(data=_specs(caches, weights, audio_key, text_key), out=out, **values).validate()


def _config_option(f, hidden: bool = False):
    from duetmc.config import flag_of

    meta, default = f.metadata, f.default
    if meta.get("bool_flag"):
        flag = flag_of(f.name)
        return click.option(f"{flag}/--no-{flag[2:]}", f.name, default=None, hidden=hidden,
                            help=f"{meta['help']} [{'on' if default else 'off'}]")
    kind = click.Choice(list(meta["choices"])) if meta.get("choices") else {"int": int, "float": float}.get(f.type, str)
    return click.option(flag_of(f.name), f.name, type=kind, default=None, hidden=hidden,
                        help=f"{meta['help']} [{default}]")


def train_options(fn, hidden: tuple[str, ...] = ()):
    """--cache/--weight/--audio-key/--text-key/--config, then one option per TrainConfig field (duetmc.config);
    `hidden` fields are parsed (so the command can refuse them by name) but not listed in --help."""
    from duetmc.config import cli_fields

    options = [
        click.option("--cache", "caches", multiple=True,
                     help="Feature cache; repeat to mix datasets (A+B+C). Not needed with --resume."),
        click.option("--weight", "weights", multiple=True, type=float,
                     help="Sampling weight per --cache, in order [default: 1]."),
        click.option("--audio-key", default=None, help="Audio feature group when the cache has several."),
        click.option("--text-key", "--text-set", "text_key", default=None,
                     help="Text feature group (its key, or its text set's name) when the cache has several."),
        click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
                     help="JSON file of training options (flat, or a run's config.json)."),
    ] + [_config_option(f, f.name in hidden) for f in cli_fields()]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _overrides(kw: dict) -> dict:
    from duetmc.config import cli_fields

    return {f.name: kw.pop(f.name) for f in cli_fields() if f.name in kw}


def _resume_config(out, caches, weights, audio_key, text_key, config_file, given: dict):
    """The run's recorded config with the safe changes applied; changed science is refused, listed."""
    from duetmc.config import resume_changes
    from duetmc.errors import UsageError
    from duetmc.run import read_config

    recorded, _ = read_config(out)
    apply, refused = resume_changes(recorded, {**_file_values(config_file), **given})
    applied = [f"{k} {getattr(recorded, k)!r} -> {v!r}" for k, v in apply.items()]
    if caches:
        specs = _specs(caches, weights or [s.weight for s in recorded.data], audio_key, text_key)
        same = [dict(a.to_json(), cache=None) == dict(b.to_json(), cache=None) for a, b in zip(specs, recorded.data)]
        if len(specs) != len(recorded.data) or not all(same):
            refused.append("--cache: the caches or their feature groups differ from the run's "
                           "(only a moved cache with the same features may be given)")
        applied += [f"cache {a.cache} -> {b.cache}" for a, b in zip(recorded.data, specs) if a.cache != b.cache]
        apply["data"] = specs
    if refused:
        raise UsageError(f"{out}: --resume cannot change the science of a run: {'; '.join(refused)}; "
                         "start a new run with another --out")
    if applied:
        click.echo("resume: applied " + "; ".join(applied), err=True)
    return dataclasses.replace(recorded, **apply, out=out).validate()


class _Flag:
    """duetmc.train.StopFlag's twin, installed before duetmc.train (and torch) is imported."""

    requested = False

    def __call__(self, signum, frame):
        self.requested = True


def _catch_preemption() -> _Flag:
    import signal

    flag = _Flag()
    for s in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(s, flag)
    return flag


@click.command("train")
@train_options
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory.")
@click.option("--resume", is_flag=True, help="Continue the run in --out where it stopped; it needs no other "
              "option (changed science options are refused; more --epochs or a moved --cache are applied).")
@click.option("--json", "as_json", is_flag=True)
def train_cmd(caches, weights, audio_key, text_key, config_file, out, resume, as_json, **kw):
    """Train DuET-MC heads from cached features (no encoder runs).

    SIGUSR1 or SIGTERM (also during start-up) saves a checkpoint and exits with code 75; `--resume`
    continues it. One process writes a run: a second `train` into the same --out is refused.
    """
    stop = _catch_preemption()  # before the heavy imports: a signal during start-up still checkpoints
    from duetmc.errors import UsageError
    from duetmc.train import REQUEUE_EXIT_CODE, train

    given = {k: v for k, v in _overrides(kw).items() if v is not None}
    if given.get("epochs", 1) < 1:
        raise UsageError(f"--epochs must be at least 1; got {given['epochs']}")
    if resume and (Path(out) / "config.json").exists():
        cfg = _resume_config(out, caches, weights, audio_key, text_key, config_file, given)
    elif not caches:
        raise UsageError("--cache is required to start a run (a --resume of an existing run reads it from the run)")
    else:
        cfg = _base_config(caches, weights, audio_key, text_key, out, config_file, given)
    cfg.progress = not as_json
    summary = train(cfg, resume=resume, stop=stop)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        pass
    elif as_json:
        emit_json(summary)
    elif summary["status"] == "finished":
        metric = summary["select_by"].replace("_", " ")
        early = f" (stopped early: {metric} stopped improving)" if summary.get("stopped_early") else ""
        click.echo(f"finished {summary['epochs']} epochs{early}; best epoch {summary['best_epoch']} "
                   f"({metric} {summary['best_val']}); {summary['trainable_parameters']:,} trainable "
                   f"parameters; run in {out}")
    else:
        click.echo(f"pre-empted at epoch {summary['epoch']}, step {summary['step']}; checkpoint saved. "
                   f"Continue with: duetmc train --resume --out {out}", err=True)
    if summary["status"] != "finished":
        sys.exit(REQUEUE_EXIT_CODE)


def _eval_config(split, subset_size, subsets, seed, device, queries="human"):
    from duetmc.evaluate import EvalConfig

    return EvalConfig(split=split, subset_size=subset_size, n_subsets=subsets, seed=seed, device=device,
                      queries=queries)


queries_option = click.option(
    "--queries", default="human", show_default=True, type=click.Choice(["human", "all", "generated"]),
    help="Which captions are queries: the dataset's human captions (the paper's protocol), generated ones "
         "(template/llm/hf/fallback), or all; a split without the chosen kind is an error.")


def _print_results(results):
    from duetmc import metrics
    from duetmc.evaluate import PROBE_COLUMNS, report_lines, table_rows

    for res in results:
        click.echo("\n".join(report_lines(res)))
    click.echo("")
    click.echo(metrics.markdown_table([table_rows("model", r) for r in results],
                                      metrics=(*metrics.RANK_METRICS, *PROBE_COLUMNS)))


@click.command("eval")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--cache", "caches", multiple=True, help="Caches to evaluate on [default: the training cache].")
@click.option("--split", default="test", show_default=True, type=click.Choice(["train", "val", "test", "all"]))
@click.option("--subset-size", default=500, show_default=True)
@click.option("--subsets", default=10, show_default=True, help="Number of random subsets averaged.")
@click.option("--seed", default=0, show_default=True)
@click.option("--checkpoint", default="best", show_default=True, help="best, last, or checkpoints/epoch_007.")
@click.option("--baseline", "baselines", multiple=True, type=click.Path(exists=True),
              help="Another model's embeddings (.npz or Zarr with audio_ids, audio, query, query_item[, query_source, "
                   "query_lang]; docs/PROTOCOL.md; `duetmc embed` writes one) scored under the same protocol.")
@queries_option
@click.option("--text-set", default=None, help="Query with this text set of the cache [default: the run's].")
@click.option("--device", default="cpu", show_default=True)
@click.option("--allow-missing", is_flag=True,
              help="Skip (and report) clips whose feature shards are missing or unreadable instead of refusing.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False),
              help="Also write the results as JSON to this file (nothing is written into the run).")
@click.option("--json", "as_json", is_flag=True)
def eval_cmd(run, caches, split, subset_size, subsets, seed, checkpoint, baselines, queries, text_set, device,
             allow_missing, out_file, as_json):
    """Text→music retrieval (R@1/5/10, median and mean rank), music→text, tag retrieval and the probes."""
    from duetmc.errors import path_error
    from duetmc.evaluate import evaluate_embeddings, evaluate_run

    cfg = _eval_config(split, subset_size, subsets, seed, device, queries)
    cfg.allow_missing = allow_missing
    results = evaluate_run(run, list(caches), cfg, checkpoint, text_set)
    results += [evaluate_embeddings(b, cfg) for b in baselines]
    if as_json:
        emit_json(results)
    else:
        _print_results(results)
    if out_file:  # after printing: an unwritable file never loses the metrics
        try:
            Path(out_file).parent.mkdir(parents=True, exist_ok=True)
            Path(out_file).write_text(json.dumps(results, indent=2))
        except OSError as exc:
            raise path_error(exc, "(--out); the metrics were printed above") from exc


def _ablate_options(fn):
    return train_options(fn, hidden=("seed",))  # ablate's seeds are --seeds


@click.command("ablate")
@_ablate_options
@click.option("--eval-cache", "eval_caches", multiple=True,
              help="Caches to evaluate every run on [default: the first --cache].")
@click.option("--out", required=True, help="Directory for every run, table.md, results.json and bars.png.")
@click.option("--seeds", type=int, default=3, show_default=True,
              help="Train every configuration with seeds 0 .. N-1 (use this, not --seed).")
@click.option("--no-sweep", is_flag=True, help="Skip the p_cap sweep (Fig. 3).")
@click.option("--split", "eval_split", default="test", show_default=True, type=click.Choice(["train", "val", "test", "all"]),
              help="Split evaluated.")
@click.option("--subset-size", default=500, show_default=True, type=int, help="Clips per evaluation subset.")
@click.option("--subsets", default=10, show_default=True, type=int, help="Number of random subsets averaged.")
@queries_option
@click.option("--json", "as_json", is_flag=True)
def ablate_cmd(caches, weights, audio_key, text_key, config_file, eval_caches, out, seeds, no_sweep, eval_split,
               subset_size, subsets, queries, as_json, **kw):
    """Table 4 (tags only; + tag-to-caption; + View Dropout; + TextSwap) and the p_cap sweep, over seeds."""
    from duetmc.ablate import AblateConfig, run_ablation
    from duetmc.errors import UsageError
    from duetmc.evaluate import EvalConfig
    from duetmc.train import REQUEUE_EXIT_CODE

    overrides = _overrides(kw)
    if overrides.pop("seed", None) is not None:
        raise UsageError("ablate trains seeds 0 .. N-1: give --seeds N, not --seed")
    if not caches:
        raise UsageError("--cache is required: the training cache(s) of the ablation")
    if seeds < 1 or subset_size < 2 or subsets < 1:
        raise UsageError(f"--seeds and --subsets must be at least 1 and --subset-size at least 2; "
                         f"got {seeds}, {subsets}, {subset_size}")
    base = _base_config(caches, weights, audio_key, text_key, out, config_file, overrides)
    cfg = AblateConfig(base, eval_caches=[absolute_cache(c) for c in eval_caches], seeds=seeds,
                       p_cap_sweep=not no_sweep,
                       eval=EvalConfig(split=eval_split, subset_size=subset_size, n_subsets=subsets, queries=queries))
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
