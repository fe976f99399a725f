"""`duetmc study create | serve | report`: the paper's pairwise listening study (§5.2)."""

from __future__ import annotations

import secrets
from pathlib import Path

import click

from duetmc.cli.common import emit_json


@click.group("study")
def study_group():
    """A pairwise listening study: systems' top-1 clips per prompt, judged by people in a browser."""


def _systems(specs: tuple[str, ...]) -> dict[str, Path]:
    from duetmc.errors import UsageError

    out: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name.strip() or not path:
            raise UsageError(f"--index {spec!r}: write NAME=INDEX, e.g. --index duetmc=runs/a.idx")
        if name in out:
            raise UsageError(f"--index {spec!r}: the name {name!r} is given twice; name each system once")
        out[name.strip()] = Path(path)
    return out


@study_group.command("create")
@click.option("--index", "indexes", multiple=True, required=True, metavar="NAME=INDEX",
              help="A system and its index (`duetmc index build`); repeat for each system.")
@click.option("--ground-truth", is_flag=True, help="Also pair each system's clip with the prompt's true clip.")
@click.option("--prompts", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="JSONL of prompts: {\"text\", \"id\" (true clip), \"dataset\", \"split\"} per line.")
@click.option("--from-cache", "cache", default=None, help="Take prompts from a cache: each clip's first English "
              "caption (human captions first).")
@click.option("--split", default="test", show_default=True, help="Split whose clips and prompts are used ('all': every clip).")
@click.option("--trials", "n_trials", type=click.IntRange(min=1), default=240, show_default=True,
              help="Most trials in the study (prompts are taken in a seeded order until this many).")
@click.option("--per-participant", type=click.IntRange(1, 200), default=24, show_default=True,
              help="Trials each participant judges.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for prompt order, sides and assignment.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The new study file (SQLite).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def create_cmd(indexes, ground_truth, prompts, cache, split, n_trials, per_participant, seed, out, as_json):
    """Make a study file: for each prompt, each system's top-1 clip, paired system against system
    (and against the true clip with --ground-truth); sides A/B drawn from the seed and recorded."""
    from duetmc import study
    from duetmc.errors import UsageError
    from duetmc.index import Index

    if (prompts is None) == (cache is None):
        raise UsageError("give exactly one of --prompts CAPTIONS.jsonl or --from-cache CACHE")
    split_filter = None if split == "all" else split
    items = study.read_prompts(prompts, split_filter) if prompts else study.prompts_from_cache(cache, split)
    loaded = {name: Index.load(path) for name, path in _systems(indexes).items()}
    summary = study.create_study(out, loaded, items, ground_truth, split_filter, n_trials, seed, per_participant)
    if as_json:
        emit_json(summary)
        return
    click.echo(f"{summary['trials']} trials from {summary['prompts']} prompts in {out}")
    for pair, n in sorted(summary["pairs"].items()):
        click.echo(f"  {pair}: {n}")
    if summary["prompts_without_truth"]:
        click.echo(f"note: {summary['prompts_without_truth']} prompts have no true clip in any index "
                   "(no ground-truth trial for them)")
    click.echo(f"next: duetmc study serve {out}")


@study_group.command("serve")
@click.argument("study_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every "
              "interface, so participants on other machines can reach it; a warning is printed).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="TCP port.")
@click.option("--admin-token", default=None, help="Token for the admin view [default: a new random one, printed].")
def serve_cmd(study_file, host, port, admin_token):
    """Serve the participant page and the admin view for STUDY_FILE; answers are saved as they are given."""
    from duetmc import study
    from duetmc.web.http import serve_app
    from duetmc.web.study_app import make_app

    from duetmc.errors import UsageError

    if admin_token is not None and len(admin_token) < 12:
        raise UsageError("--admin-token is shorter than 12 characters; choose a longer one or omit it for a random one")
    db = study.connect(study_file)
    token = admin_token or secrets.token_urlsafe(18)
    shown = f"[{host}]" if ":" in host else host
    n = db.execute("SELECT COUNT(*) FROM trials").fetchone()[0]
    serve_app(make_app(db, token), host, port, [
        f"duetmc study: {n} trials in {study_file}",
        f"participants: http://{shown}:{port}/",
        f"admin view:   http://{shown}:{port}/admin?token={token}  (keep this link private; Ctrl-C stops)"])


@study_group.command("report")
@click.argument("study_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--csv", "csv_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write every answer to this CSV file.")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also draw win/tie/loss bars with 95 % intervals to this image (PNG, PDF, SVG).")
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def report_cmd(study_file, csv_out, plot_out, seed, as_json):
    """Win, tie and loss rates per system pair, per dataset and overall, with bootstrap 95 % intervals,
    the number of judgements, and agreement between participants."""
    from duetmc.study_report import plot, report, write_csv

    result = report(study_file, seed)
    if csv_out:
        result["csv"] = str(csv_out)
        write_csv(study_file, csv_out)
    if plot_out and result["pairs"]:
        result["plot"] = str(plot(result, plot_out))
    if as_json:
        emit_json(result)
        return
    _print_report(result)


def _pct(x: float) -> str:
    return f"{100 * x:5.1f}"


def _print_report(result: dict) -> None:
    click.echo(f"{result['study']}: {result['judgements']} judgements from {result['participants']} participants "
               f"on {result['trials']} trials")
    if not result["pairs"]:
        click.echo("no answers yet")
        return
    click.echo(f"{'system':<12} {'versus':<12} {'dataset':<14} {'n':>4}  {'win %':>17}  {'tie %':>17}  {'loss %':>17}")
    for r in result["pairs"]:
        cells = [f"{_pct(r[f'{k}_rate'])} [{_pct(r[f'{k}_ci'][0])},{_pct(r[f'{k}_ci'][1])}]"
                 for k in ("win", "tie", "loss")]
        click.echo(f"{r['system']:<12} {r['versus']:<12} {r['dataset']:<14} {r['judgements']:>4}  " + "  ".join(cells))
    ag = result["agreement"]
    if ag["shared_trials"]:
        kappa = "n/a" if ag["fleiss_kappa"] is None else f"{ag['fleiss_kappa']:.3f}"
        click.echo(f"agreement on {ag['shared_trials']} trials judged by 2+ people: "
                   f"{100 * ag['pairwise_agreement']:.1f} % of pairs agree, Fleiss' kappa {kappa}")
    else:
        click.echo("agreement: no trial was judged by two people yet")
    for key in ("csv", "plot"):
        if key in result:
            click.echo(f"{key}: {result[key]}")


COMMANDS = [study_group]
