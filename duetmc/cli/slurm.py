"""`duetmc slurm featurize|status|train|ablate`: submit the package's sbatch templates and follow them."""

from __future__ import annotations

import os

import click

from duetmc.cli.common import emit_json, parse_layers

# Options that only steer this command; a resubmission line leaves them out.
_LOCAL_FLAGS = {"dry_run", "force", "only_incomplete", "as_json"}


# `duetmc featurize` options the array tasks repeat: (flag, config field, click type, converter).
# All default to None here, so the planner and the tasks both fall back to the featurizer's defaults.
_FEATURIZE_OPTIONS = {
    "audio": [
        ("--encoder-path", "encoder_path", str, str),
        ("--revision", "revision", str, str),
        ("--window", "window_s", float, float),
        ("--hop", "hop_s", float, float),
        ("--tokens", "tokens", int, int),
        ("--layers", "layers", str, parse_layers),
        ("--batch-size", "batch_size", int, int),
        ("--workers", "workers", int, int),
        ("--device", "device", str, str),
        ("--dtype", "dtype", click.Choice(["float32", "bf16", "fp16"]), str),
        ("--rows-per-shard", "rows_per_shard", int, int),
    ],
    "text": [
        ("--encoder-path", "encoder_path", str, str),
        ("--revision", "revision", str, str),
        ("--layers", "layers", str, parse_layers),
        ("--max-tokens", "max_tokens", int, int),
        ("--languages", "languages", str, lambda v: tuple(v.split(","))),
        ("--batch-size", "batch_size", int, int),
        ("--device", "device", str, str),
        ("--dtype", "dtype", click.Choice(["float32", "bf16", "fp16"]), str),
    ],
}


def _resource_options(gpu_flag: str, gpu_help: str):
    def deco(fn):
        for opt in reversed([
            click.option("--partition", default=None, help="SLURM partition [default: the template's / the cluster's]."),
            click.option("--account", default=None, help="SLURM account to charge."),
            click.option("--time", default=None, help="Time limit, e.g. 04:00:00."),
            click.option("--mem", default=None, help="Memory per node, e.g. 32G."),
            click.option("--cpus-per-task", type=int, default=None),
            click.option(gpu_flag, "gpus", type=int, default=None, help=gpu_help),
            click.option("--dry-run", is_flag=True, help="Print the sbatch script; submit nothing."),
            click.option("--force", is_flag=True, help="Submit even while an earlier job over the same target is queued."),
        ]):
            fn = opt(fn)
        return fn

    return deco


def _command_line(ctx: click.Context) -> list[str]:
    """This invocation as `duetmc ...` arguments, without the local flags, for resubmission."""
    line = ["duetmc", *ctx.command_path.split()[1:]]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.name in _LOCAL_FLAGS or value is None or value is False or value == ():
            continue
        if isinstance(param, click.Argument):
            line.extend(map(str, value) if isinstance(value, tuple) else [str(value)])
        elif param.is_flag:
            line.append(param.opts[0])
        else:
            line.extend([param.opts[0], str(value)])
    return line


@click.group()
def slurm() -> None:
    """Run featurize arrays and training jobs on a SLURM cluster (templates in duetmc/resources/slurm/,
    or $DUETMC_SLURM_TEMPLATES)."""


@slurm.group("featurize")
def featurize_group() -> None:
    """Featurize with one SLURM array task per range of whole cache shards (--tasks N)."""


def _featurize_command(modality: str, source: str):
    def command(fn):
        for flag, dest, ctype, _ in reversed(_FEATURIZE_OPTIONS[modality]):
            fn = click.option(flag, dest, type=ctype, default=None,
                              help=f"Passed on to `duetmc featurize {modality}`.")(fn)
        for deco in reversed([
            click.argument(source, type=click.Path(exists=True, dir_okay=False, resolve_path=True)),
            click.option("--cache", required=True, help="Cache directory on a filesystem the nodes share."),
            click.option("--encoder", required=True, help="Encoder name, as for `duetmc featurize`."),
            click.option("--tasks", "n_tasks", type=click.IntRange(min=1), required=True,
                         help="Array tasks N; task I runs `duetmc featurize --task I/N` over its range of shards."),
            click.option("--only-incomplete", is_flag=True, help="Submit only the tasks whose shards are not all done."),
            _resource_options("--gpus-per-task", "GPUs per array task; 0 for a CPU-only array."),
            click.option("--allow-failures", is_flag=True, help="Tasks exit 0 even when some items failed."),
        ]):
            fn = deco(fn)
        return featurize_group.command(modality)(fn)

    return command


def _submit_featurize(modality: str, source_value: str, kw: dict) -> None:
    from duetmc.slurm import Resources, submit_featurize

    ctx = click.get_current_context()
    config_kw, extra = {}, []
    for flag, dest, _, convert in _FEATURIZE_OPTIONS[modality]:
        if kw.get(dest) is not None:
            config_kw[dest] = convert(kw[dest])
            extra += [flag, str(kw[dest])]
    if kw["allow_failures"]:
        extra.append("--allow-failures")
    cache = os.path.abspath(kw["cache"]) if "://" not in kw["cache"] else kw["cache"]
    if modality == "audio":
        from duetmc.featurize.audio import AudioFeaturizeConfig as Config
    else:
        from duetmc.featurize.text import TextFeaturizeConfig as Config
    config = Config(source_value, cache, kw["encoder"], progress=False, **config_kw)
    ctx.params["cache"] = cache
    resources = Resources(kw["partition"], kw["account"], kw["time"], kw["mem"], kw["cpus_per_task"],
                          gpus_per_task=kw["gpus"])
    job = submit_featurize(modality, config, kw["n_tasks"], resources, extra, _command_line(ctx),
                           dry_run=kw["dry_run"], force=kw["force"], only_incomplete=kw["only_incomplete"])
    for note in job.notes:
        click.echo(f"note: {note}", err=True)
    if kw["dry_run"]:
        click.echo(job.script, nl=False)
    elif job.job_id:
        click.echo(f"submitted array job {job.job_id}: tasks {job.tasks} of {job.n_tasks} over {job.target}; "
                   f"script {job.script_path}; follow with `duetmc slurm status {cache}`", err=True)
        click.echo(job.job_id)


@_featurize_command("audio", "manifest")
def featurize_audio_cmd(manifest, **kw):
    """Plan the cache once, then submit an array running `duetmc featurize audio --task I/N`."""
    _submit_featurize("audio", manifest, kw)


@_featurize_command("text", "input")
def featurize_text_cmd(input, **kw):
    """Plan the cache once, then submit an array running `duetmc featurize text --task I/N`."""
    _submit_featurize("text", input, kw)


@slurm.command("status")
@click.argument("cache")
@click.option("--json", "as_json", is_flag=True)
def status_cmd(cache, as_json):
    """Progress per shard and per array task from the cache's done-mask (not sacct)."""
    import shlex

    from duetmc.slurm import cache_progress

    groups = cache_progress(cache)
    if as_json:
        emit_json({"cache": cache, "groups": [g.to_json() for g in groups]})
        return
    if not groups:
        click.echo(f"{cache}: no feature groups yet")
    for g in groups:
        click.echo(f"{g.target}: {g.done}/{g.rows} rows done, {g.failed} failed, {g.pending} pending")
        if g.incomplete_shards:
            click.echo(f"  incomplete cache shards: {', '.join(map(str, g.incomplete_shards))}")
        for t in g.tasks:
            state = "complete" if t.pending == 0 else f"{t.pending} pending"
            click.echo(f"  task {t.task}/{g.n_tasks} (shards {t.shards}): {t.done}/{t.rows} done, "
                       f"{t.failed} failed, {state}")
        if g.incomplete_tasks:
            click.echo(f"  incomplete tasks: {','.join(map(str, g.incomplete_tasks))}")
        if g.resubmit:
            click.echo(f"  resubmit them with:\n    {shlex.join(g.resubmit)}")


def _run_command(kind: str):
    @slurm.command(kind, context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
    @_resource_options("--gpus", "GPUs on the node; more than 1 runs torchrun with one process per GPU.")
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def command(args, partition, account, time, mem, cpus_per_task, gpus, dry_run, force):
        from duetmc.slurm import Resources, submit_run
        from duetmc.train import REQUEUE_EXIT_CODE

        resources = Resources(partition, account, time, mem, cpus_per_task, gpus_per_node=gpus)
        job = submit_run(kind, list(args), REQUEUE_EXIT_CODE, resources,
                         _command_line(click.get_current_context()), dry_run=dry_run, force=force)
        if dry_run:
            click.echo(job.script, nl=False)
        else:
            click.echo(f"submitted {kind} job {job.job_id}; script {job.script_path}; log {job.out}/logs/", err=True)
            click.echo(job.job_id)

    command.help = (f"Submit `duetmc {kind} ARGS...` through the {kind}.sbatch template, with --requeue and USR1 "
                    f"120 s before the end so the run checkpoints and resumes. SLURM options come first, then "
                    f"`--`, then the {kind} arguments (which must include --out).")
    return command


train_cmd = _run_command("train")
ablate_cmd = _run_command("ablate")

COMMANDS = [slurm]
