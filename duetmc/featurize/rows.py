"""The resumable, shard-safe write loop shared by the audio and text featurizers.

Rows are grouped into batches that are a fixed function of the plan (never of what is already done),
so a run killed at any point and rerun writes exactly the bytes an uninterrupted run writes. Only rows
not yet done are written, so rows appended to a plan never rewrite finished ones. Each shard is
claimed (duetmc.featurize.locks) before its done flags are read, so several processes can work on
one cache: a shard claimed by another process is left to it and revisited at the end, waiting for the
claim, so every process returns only when all its shards are finished. A batch commits its features,
reads them back, and only then sets its done flags: "done" means "verified written".
Preparation (decode, resample, tokenise) runs ahead in a thread pool while the encoder runs.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import zarr
from tqdm.auto import tqdm

from duetmc.cache_spec import shard_ranges, task_shards
from duetmc.errors import UsageError
from duetmc.featurize.locks import ShardClaims


def parse_task(spec: str | None) -> tuple[int, int]:
    """'I/N' (the --task option: this process runs the I-th of N whole-shard ranges, 0-based) -> (I, N)."""
    if spec is None:
        return 0, 1
    try:
        i, n = (int(x) for x in str(spec).split("/"))
    except ValueError:
        raise UsageError(f"--task must look like I/N (for example 0/4), got {spec!r}") from None
    if n < 1 or not 0 <= i < n:
        raise UsageError(f"--task {spec}: need 0 <= I < N")
    return i, n


def shards_of_task(n_rows: int, rows_per_shard: int, task: str | None) -> list[int]:
    i, n = parse_task(task)
    return task_shards(len(shard_ranges(n_rows, rows_per_shard)), i, n)


def check_positive(**values) -> None:
    """UsageError naming the option (--window, --rows-per-shard ...) whose value is not > 0."""
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be a positive number, got {value!r}")


@dataclass
class RunSummary:
    done: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)
    waited_for: list[str] = field(default_factory=list)  # shards another process held when we came
    plan: dict | None = None  # what a re-plan added, changed, kept and removed
    warnings: list[tuple[str, str]] = field(default_factory=list)

    def to_json(self) -> dict:
        out = {"done": self.done, "failed": self.failed, "skipped": self.skipped,
               "seconds": round(self.seconds, 3), "failures": [list(f) for f in self.failures],
               "warnings": [list(w) for w in self.warnings], "waited_for": self.waited_for}
        if self.plan is not None:
            out["plan"] = self.plan
        return out


def fixed_batches(lengths: np.ndarray, lo: int, hi: int, batch_size: int, live=None) -> list[list[int]]:
    """Consecutive rows of equal length, at most `batch_size` each: no padding inside a batch.

    `live` (bool per row) leaves out rows retired by a re-plan."""
    batches: list[list[int]] = []
    cur: list[int] = []
    for r in range(lo, hi):
        if live is not None and not live[r]:
            continue
        if cur and (len(cur) == batch_size or lengths[r] != lengths[cur[0]] or r != cur[-1] + 1):
            batches.append(cur)
            cur = []
        cur.append(r)
    if cur:
        batches.append(cur)
    return batches


@dataclass
class Job:
    """What run_rows needs from a featurizer."""

    batches_of: Callable[[int, int], list[list[int]]]
    prepare: Callable[[list[int]], Any]  # runs in worker threads; may raise for a whole batch
    compute: Callable[[list[int], Any], tuple[np.ndarray, dict[int, str]]]  # features, {row: reason}
    label: Callable[[int], str]


def _commit(group: zarr.Group, batch: list[int], pending: np.ndarray, feats, failed: dict) -> dict:
    """Write the pending rows of a batch, read them back, then set their done flags."""
    features, done, failure = group["features"], group["done"], group["failure"]
    lo, hi = batch[0], batch[-1] + 1
    failed = dict(failed)
    if feats is not None:
        feats = feats.astype(features.dtype, copy=False)
        if pending.all():
            features[lo:hi] = feats
        else:
            for k in np.flatnonzero(pending):
                features[lo + k] = feats[k]
        back = features[lo:hi]
        for k in np.flatnonzero(pending):
            if batch[k] not in failed and not np.array_equal(back[k], feats[k]):
                failed[batch[k]] = "written features did not read back equal; rerun featurize"
    ok = np.array([r not in failed for r in batch]) & pending
    reasons = np.array([failed.get(r, "") for r in batch], dtype=object)
    if pending.all():
        done[lo:hi] = ok
        failure[lo:hi] = reasons
    else:
        for k in np.flatnonzero(pending):
            done[lo + k], failure[lo + k] = bool(ok[k]), reasons[k]
    return {r: failed[r] for r, p in zip(batch, pending) if p and r in failed}


def _run_shard(group, s, lohi, job: Job, pool, prefetch: int, summary: RunSummary, bar) -> None:
    lo, hi = lohi
    done_now = np.asarray(group["done"][lo:hi], dtype=bool)  # read under the claim
    todo = []
    for batch in job.batches_of(lo, hi):
        pending = ~done_now[np.asarray(batch) - lo]
        summary.skipped += int((~pending).sum())
        if pending.any():
            todo.append((batch, pending))
    futures: list[Future] = [pool.submit(job.prepare, b) for b, _ in todo[:prefetch]]
    for i, (batch, pending) in enumerate(todo):
        if i + prefetch < len(todo):
            futures.append(pool.submit(job.prepare, todo[i + prefetch][0]))
        fut = futures.pop(0)
        try:
            feats, failed = job.compute(batch, fut.result())
        except Exception as exc:  # one bad batch never loses the others' work
            feats, failed = None, {r: f"{type(exc).__name__}: {exc}" for r in batch}
        failed = _commit(group, batch, pending, feats, failed)
        summary.done += int(pending.sum()) - len(failed)
        summary.failed += len(failed)
        summary.failures.extend((job.label(r), reason) for r, reason in failed.items())
        bar.update(int(pending.sum()))


def run_rows(group: zarr.Group, shards: Sequence[int], job: Job, claims: ShardClaims, workers: int = 2,
             prefetch: int = 4, progress: bool = True, desc: str = "featurize") -> RunSummary:
    """Featurize every pending row of `shards`, shard by shard, each under its claim."""
    t0 = time.perf_counter()
    ranges = shard_ranges(group["done"].shape[0], int(group.attrs["rows_per_shard"]))
    summary = RunSummary()
    bar = tqdm(total=sum(ranges[s][1] - ranges[s][0] for s in shards), desc=desc, unit="row",
               disable=not progress, leave=False)
    busy = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for s in shards:
            if not claims.try_claim(s):
                busy.append(s)
                continue
            try:
                _run_shard(group, s, ranges[s], job, pool, prefetch, summary, bar)
            finally:
                claims.release(s)
        for s in busy:  # another process holds it: wait, then finish whatever it left
            summary.waited_for.append(f"shard {s} ({claims.holder(s)})")
            claims.claim(s)
            try:
                _run_shard(group, s, ranges[s], job, pool, prefetch, summary, bar)
            finally:
                claims.release(s)
    bar.close()
    summary.seconds = time.perf_counter() - t0
    return summary
