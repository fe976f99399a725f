"""SLURM submission: render the sbatch templates in `duetmc/resources/slurm/`, submit them, and track
what was submitted.

Everything distributed here is SLURM's own machinery: a featurize run is one job array whose task I of
N runs `duetmc featurize ... --task I/N` over whole cache shards (Zarr v3 has no cross-process
locking, docs/DESIGN.md §4); training uses `--requeue` and `--signal=B:USR1@120` so the trainer can
checkpoint before preemption. Progress comes from the cache's done-mask, never from `sacct`.

Each submission is recorded in `<dir>/logs/jobs.json` next to the script it submitted, so a second
array over the same cache can be refused while the first is still in `squeue`.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from duetmc.errors import DuetmcError

TEMPLATES_ENV = "DUETMC_SLURM_TEMPLATES"
MODALITIES = ("audio", "text")
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
# "#SBATCH --opt=value" or "#SBATCH --opt value"; "##SBATCH" is a switched-off line.
_DIRECTIVE = re.compile(r"^#{1,2}SBATCH\s+--([\w-]+)")


class SlurmError(DuetmcError, RuntimeError):
    """SLURM is unreachable, refused a job, or a submission would be unsafe. The message says what to do."""


# What SLURM accepts for each string resource: names, lists of names, times, sizes; never a shell character.
_RESOURCE_PATTERNS = {
    "partition": (r"[A-Za-z0-9_.+-]+(,[A-Za-z0-9_.+-]+)*", "gpu or gpu,cpu"),
    "account": (r"[A-Za-z0-9_.+-]+", "my-lab"),
    "time": (r"[0-9]+(-[0-9]{1,2})?(:[0-9]{1,2}){0,2}", "04:00:00 or 1-12:00:00"),
    "mem": (r"[0-9]+[KMGT]?B?", "32G"),
}


@dataclass(frozen=True)
class Resources:
    """Per-job overrides of the template's `#SBATCH` lines; None keeps the template's value.

    A GPU count of 0 removes the template's GPU line (a CPU-only job).
    """

    partition: str | None = None
    account: str | None = None
    time: str | None = None
    mem: str | None = None
    cpus_per_task: int | None = None
    gpus_per_task: int | None = None
    gpus_per_node: int | None = None

    def __post_init__(self):
        # values land verbatim in "#SBATCH --opt=value" lines: a newline there would start a shell command
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            option = "--" + f.name.replace("_", "-")
            if value is None:
                continue
            if f.name in _RESOURCE_PATTERNS:
                pattern, example = _RESOURCE_PATTERNS[f.name]
                if not isinstance(value, str) or not re.fullmatch(pattern, value):
                    raise SlurmError(f"{option} {value!r} is not a valid SLURM value (expected e.g. {example}); "
                                     "it would be written into an #SBATCH line")
            elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise SlurmError(f"{option} must be a non-negative integer, got {value!r}")

    def overrides(self) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            option = f.name.replace("_", "-")
            out[option] = None if option.startswith("gpus") and int(value) == 0 else str(value)
        return out


# --- templates -------------------------------------------------------------------------------


def template_path(name: str) -> Path:
    """`<name>.sbatch` from the package (duetmc/resources/slurm), or from $DUETMC_SLURM_TEMPLATES (edited copies)."""
    folder = Path(os.environ.get(TEMPLATES_ENV) or Path(__file__).resolve().parent / "resources" / "slurm")
    path = folder / f"{name}.sbatch"
    if not path.is_file():
        raise SlurmError(
            f"sbatch template {path} not found. Set {TEMPLATES_ENV} to a folder holding {name}.sbatch "
            "(copy the templates from duetmc/resources/slurm/ of the duetmc package)."
        )
    return path


def set_directives(script: str, overrides: dict[str, str | None]) -> str:
    """Replace (or remove, for None) the `#SBATCH --option` lines named in `overrides`; add missing ones
    after the last directive, where sbatch still reads them."""
    out: list[str] = []
    seen: set[str] = set()
    last = 0
    for line in script.splitlines():
        m = _DIRECTIVE.match(line)
        if m and m.group(1) in overrides:
            option = m.group(1)
            if option not in seen and overrides[option] is not None:
                out.append(f"#SBATCH --{option}={overrides[option]}")
            seen.add(option)
            last = len(out)
            continue
        out.append(line)
        if m:
            last = len(out)
    extra = [f"#SBATCH --{k}={v}" for k, v in overrides.items() if k not in seen and v is not None]
    return "\n".join(out[:last] + extra + out[last:]) + "\n"


def _quote(value: str | int | list) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(shlex.quote(str(v)) for v in value)
    return shlex.quote(str(value))


def render(name: str, fields: dict[str, str | int | list], resources: Resources = Resources()) -> str:
    """The template with resources applied and every {{FIELD}} filled in, shell-quoted."""
    path = template_path(name)
    text = set_directives(path.read_text(), resources.overrides())
    wanted = set(_PLACEHOLDER.findall(text))
    missing = sorted(wanted - set(fields))
    if missing:
        raise SlurmError(f"{path}: no value for {', '.join('{{%s}}' % m for m in missing)}; "
                         f"this duetmc fills in {', '.join(sorted(fields))}")
    for name, value in fields.items():  # quoting protects shell lines, not "#SBATCH" lines: no line breaks
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if any(c in str(v) for c in "\n\r\0"):
                raise SlurmError(f"{name.lower()} {str(v)!r} contains a line break or NUL byte, which would end "
                                 "the script's line and start a command; rename it")
    return _PLACEHOLDER.sub(lambda m: _quote(fields[m.group(1)]), text)


def duetmc_executable() -> str:
    """The `duetmc` launcher of this very install, so jobs run the code that planned them."""
    here = Path(os.path.abspath(sys.executable)).parent / "duetmc"
    return str(here) if here.exists() else shutil.which("duetmc") or "duetmc"


def write_script(log_dir: Path, name: str, text: str) -> Path:
    log_dir.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = log_dir / f"{name}_{stamp}.sbatch"
    n = 1
    while path.exists():
        path = log_dir / f"{name}_{stamp}-{n}.sbatch"
        n += 1
    path.write_text(text)
    return path


def array_spec(tasks: list[int]) -> str:
    """[0, 1, 2, 3] -> '0-3'; [2, 5, 6, 7] -> '2,5-7' (sbatch --array syntax)."""
    runs: list[list[int]] = []
    for t in sorted(set(tasks)):
        if runs and runs[-1][1] == t - 1:
            runs[-1][1] = t
        else:
            runs.append([t, t])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


# --- talking to SLURM ------------------------------------------------------------------------


def _run(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


def require_slurm() -> None:
    """Fail with what to install or set when sbatch is missing or no controller answers."""
    if shutil.which("sbatch") is None:
        raise SlurmError(
            "`sbatch` is not on PATH, so nothing can be submitted to SLURM. On a cluster, run this on a "
            "login node or load the SLURM module (often `module load slurm`); on Debian/Ubuntu the client "
            "is `apt-get install slurm-client`. Without SLURM, run `duetmc featurize` / `duetmc train` "
            "directly, or use --dry-run to see the script."
        )
    try:
        res = _run(["scontrol", "ping"], timeout=60)
        reply = (res.stdout + res.stderr).strip()
        ok = res.returncode == 0 and "UP" in res.stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        ok, reply = False, str(exc)
    if not ok:
        conf = os.environ.get("SLURM_CONF")
        where = f"SLURM_CONF={conf}" if conf else "SLURM_CONF is not set"
        lines = [ln.strip() for ln in reply.splitlines() if ln.strip() and not ln.startswith("*")]
        said = next((ln for ln in lines if "fatal" in ln), lines[0] if lines else "no reply")
        raise SlurmError(
            f"no SLURM controller answers (`scontrol ping`: {said}). "
            f"{where}: point SLURM_CONF at your cluster's slurm.conf (or run on a login node where "
            "`sinfo` works), and check that the controller is up."
        )


def submit(script: Path) -> str:
    """`sbatch --parsable SCRIPT` -> job id; sbatch's own complaint is passed on with context."""
    res = _run(["sbatch", "--parsable", str(script)])
    if res.returncode != 0:
        raise SlurmError(
            f"sbatch refused {script}:\n  {res.stderr.strip() or res.stdout.strip()}\n"
            "Check the partition, account, time, memory and GPUs (override them with --partition, "
            "--account, --time, --mem, ...; `sinfo -s` lists the partitions you can use)."
        )
    return res.stdout.strip().split(";")[0]


def queued_job_ids() -> set[str]:
    """Base ids of every job (or job array) still in squeue, pending, running or requeued."""
    res = _run(["squeue", "--noheader", "--array", "--format=%F"])
    if res.returncode != 0:
        raise SlurmError(f"squeue failed: {res.stderr.strip()}")
    return {line.strip() for line in res.stdout.splitlines() if line.strip()}


# --- what was submitted ----------------------------------------------------------------------


@dataclass
class Submission:
    job_id: str
    kind: str  # featurize_audio, featurize_text, train, ablate
    target: str  # the cache group (modality/key) or run directory the job writes
    script: str
    submitted: str
    tasks: list[int] = field(default_factory=list)  # array task ids submitted
    n_tasks: int = 0  # the N of --task I/N
    command: list[str] = field(default_factory=list)  # the `duetmc slurm ...` line, for resubmission


class JobLog:
    """`<dir>/logs/jobs.json`: every submission over one cache or run directory."""

    def __init__(self, log_dir: Path):
        self.path = Path(log_dir) / "jobs.json"

    def load(self) -> list[Submission]:
        if not self.path.exists():
            return []
        try:
            return [Submission(**row) for row in json.loads(self.path.read_text())]
        except (ValueError, TypeError) as exc:
            raise SlurmError(f"{self.path} is not a duetmc job log ({exc}); move it away to start a new one") from None

    def append(self, sub: Submission) -> None:
        rows = [dataclasses.asdict(s) for s in self.load()] + [dataclasses.asdict(sub)]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(rows, indent=2))
        tmp.replace(self.path)

    def latest(self, kind: str, target: str) -> Submission | None:
        subs = [s for s in self.load() if s.kind == kind and s.target == target]
        return subs[-1] if subs else None

    def refuse_if_running(self, kind: str, target: str, what: str) -> None:
        mine = [s for s in self.load() if s.kind == kind and s.target == target]
        if not mine:
            return
        queued = queued_job_ids()
        running = [s.job_id for s in mine if s.job_id in queued]
        if running:
            ids = ",".join(running)
            raise SlurmError(
                f"job {ids} ({kind} over {what}) is still queued or running (see {self.path}). "
                f"Wait for it (`squeue -j {ids}`), cancel it (`scancel {ids}`), or pass --force to submit "
                "anyway; two jobs writing the same shards can lose rows."
            )


# --- featurize arrays ------------------------------------------------------------------------


def _local_dir(url: str) -> Path:
    if "://" in url and not url.startswith("file://"):
        raise SlurmError(f"{url}: SLURM featurize writes into a cache on a shared filesystem (array tasks own "
                         "whole shards and log next to the cache); featurize into a shared path, then publish it "
                         f"with `duetmc cache copy CACHE {url}`")
    return Path(url.removeprefix("file://")).absolute()


def plan_cache(modality: str, config):
    """Create the cache group's arrays once, before any task runs. Returns the zarr group."""
    if modality == "audio":
        from duetmc.featurize.audio import prepare_audio_cache

        return prepare_audio_cache(config)[0]
    from duetmc.featurize.text import prepare_text_cache

    return prepare_text_cache(config)[0]


def n_cache_shards(group) -> int:
    from duetmc.cache_spec import shard_ranges

    return len(shard_ranges(group["done"].shape[0], int(group.attrs["rows_per_shard"])))


@dataclass
class TaskProgress:
    task: int
    shards: list[int]
    rows: int
    done: int
    failed: int
    pending: int


def task_progress(group, modality: str, n_tasks: int) -> list[TaskProgress]:
    """Done-mask progress per array task, each task owning `task_shards(.., task, n_tasks)`."""
    from duetmc.cache_spec import group_status, task_shards

    status = group_status(group, modality, group.basename)
    by_shard = {s["shard"]: s for s in status.shards}
    out = []
    for t in range(n_tasks):
        shards = task_shards(len(status.shards), t, n_tasks)
        rows = [by_shard[s] for s in shards]
        out.append(TaskProgress(t, shards, *(sum(r[k] for r in rows) for k in ("rows", "done", "failed", "pending"))))
    return out


@dataclass
class FeaturizeJob:
    script: str  # the rendered script
    script_path: Path | None  # where it was written (None on a dry run)
    job_id: str | None  # None on a dry run or when nothing is left to do
    tasks: list[int]
    n_tasks: int
    target: str
    notes: list[str] = field(default_factory=list)


def submit_featurize(
    modality: str,
    config,
    n_tasks: int,
    resources: Resources = Resources(),
    extra_args: list[str] = (),
    command: list[str] = (),
    dry_run: bool = False,
    force: bool = False,
    only_incomplete: bool = False,
) -> FeaturizeJob:
    """Plan the cache, then submit one array whose task I runs `duetmc featurize MODALITY --task I/N`.

    `config` is an AudioFeaturizeConfig or TextFeaturizeConfig; `extra_args` are the featurize options
    the tasks repeat (they must describe the same settings as `config`). A dry run plans the cache
    (idempotent) but writes no script and submits nothing.
    """
    if modality not in MODALITIES:
        raise SlurmError(f"modality must be one of {MODALITIES}, got {modality!r}")
    if n_tasks < 1:
        raise SlurmError(f"--tasks must be at least 1, got {n_tasks}")
    cache_dir = _local_dir(config.cache)
    if not dry_run:
        require_slurm()
    group = plan_cache(modality, config)
    target = f"{modality}/{group.basename}"
    notes = []
    n_shards = n_cache_shards(group)
    if n_tasks > n_shards:
        notes.append(f"the cache has only {n_shards} shard(s) of {group.attrs['rows_per_shard']} rows; "
                     f"using {n_shards} array task(s) instead of {n_tasks}")
        n_tasks = n_shards
    tasks = list(range(n_tasks))
    if only_incomplete:
        tasks = [p.task for p in task_progress(group, modality, n_tasks) if p.pending > 0]
        if not tasks:
            return FeaturizeJob("", None, None, [], n_tasks, target, notes + [f"{target}: every shard is done"])
    log_dir = cache_dir / "logs"
    kind = f"featurize_{modality}"
    log = JobLog(log_dir)
    if not dry_run and not force:
        log.refuse_if_running(kind, target, f"{cache_dir} {target}")
    source = {"audio": "MANIFEST", "text": "INPUT"}[modality]
    text = render(kind, {
        "ARRAY": array_spec(tasks), "LOG_DIR": str(log_dir), "DUETMC": duetmc_executable(),
        source: str(Path(getattr(config, source.lower())).absolute()), "CACHE": str(cache_dir),
        "ENCODER": config.encoder, "TASKS": n_tasks, "EXTRA_ARGS": list(extra_args),
    }, resources)
    if dry_run:
        return FeaturizeJob(text, None, None, tasks, n_tasks, target, notes)
    path = write_script(log_dir, kind, text)
    job_id = submit(path)
    log.append(Submission(job_id, kind, target, str(path), _now(), tasks, n_tasks, list(command)))
    return FeaturizeJob(text, path, job_id, tasks, n_tasks, target, notes)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class GroupProgress:
    target: str
    rows: int
    done: int
    failed: int
    pending: int
    incomplete_shards: list[int]
    n_tasks: int | None  # from the latest submission over this group, if any
    tasks: list[TaskProgress]
    incomplete_tasks: list[int]
    resubmit: list[str] | None  # the command that submits just the incomplete tasks

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def cache_progress(cache: str) -> list[GroupProgress]:
    """Per-group, per-shard and per-array-task progress read from the cache's done-masks."""
    from duetmc import cache_spec

    root = cache_spec.open_root(cache, mode="r")
    log = JobLog(_local_dir(cache) / "logs")
    out = []
    for modality, key, group in cache_spec.iter_groups(root):
        status = cache_spec.group_status(group, modality, key)
        target = f"{modality}/{key}"
        last = log.latest(f"featurize_{modality}", target)
        n_tasks = last.n_tasks if last else None
        tasks = task_progress(group, modality, n_tasks) if n_tasks else []
        incomplete = [t.task for t in tasks if t.pending > 0]
        resubmit = None
        if incomplete and last and last.command:
            resubmit = [a for a in last.command if a != "--only-incomplete"] + ["--only-incomplete"]
        pending = status.rows - status.rows_done - status.rows_failed
        out.append(GroupProgress(target, status.rows, status.rows_done, status.rows_failed, pending,
                                 status.incomplete_shards, n_tasks, tasks, incomplete, resubmit))
    return out


# --- training and ablation -------------------------------------------------------------------


def option_value(args: list[str], name: str) -> str | None:
    """The value of `--name X` or `--name=X` in a pass-through argument list (the last one wins)."""
    value = None
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            value = args[i + 1]
        elif a.startswith(name + "="):
            value = a.split("=", 1)[1]
    return value


@dataclass
class RunJob:
    script: str
    script_path: Path | None
    job_id: str | None
    out: Path


def submit_run(
    kind: str,
    args: list[str],
    requeue_exit_code: int,
    resources: Resources = Resources(),
    command: list[str] = (),
    dry_run: bool = False,
    force: bool = False,
) -> RunJob:
    """Submit `duetmc {train,ablate} ARGS` through duetmc/resources/slurm/{kind}.sbatch; logs go to `<--out>/logs`."""
    if kind not in ("train", "ablate"):
        raise SlurmError(f"kind must be train or ablate, got {kind!r}")
    out = option_value(list(args), "--out")
    if out is None:
        raise SlurmError(f"`duetmc {kind}` needs --out RUN_DIR among its arguments (the job's logs go there)")
    out_dir = Path(out).absolute()
    if not dry_run:
        require_slurm()
    log_dir = out_dir / "logs"
    log = JobLog(log_dir)
    if not dry_run and not force:
        log.refuse_if_running(kind, str(out_dir), str(out_dir))
    text = render(kind, {
        "LOG_DIR": str(log_dir), "DUETMC": duetmc_executable(), "REQUEUE_EXIT_CODE": requeue_exit_code,
        f"{kind.upper()}_ARGS": list(args),
    }, resources)
    if dry_run:
        return RunJob(text, None, None, out_dir)
    path = write_script(log_dir, kind, text)
    job_id = submit(path)
    log.append(Submission(job_id, kind, str(out_dir), str(path), _now(), command=list(command)))
    return RunJob(text, path, job_id, out_dir)
