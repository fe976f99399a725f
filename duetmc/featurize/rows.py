"""The resumable, shard-safe write loop shared by the audio and text featurizers.

Rows are grouped into batches that are a fixed function of the plan (never of what is already done),
so a run killed at any point and rerun writes exactly the bytes an uninterrupted run writes. Only rows
not yet done are written, so rows appended to a plan never rewrite finished ones. Each shard is
claimed (duetmc.featurize.locks) before its done flags are read, so several processes can work on
one cache: a shard claimed by another process is left to it and revisited at the end, waiting for the
claim, so every process returns only when all its shards are finished. A shard's rows are buffered and
written once (a zarr shard is one object: per-batch writes rewrite it once per batch), read back, and
only then get their done flags: "done" means "verified written", and a kill loses at most one shard.
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
from duetmc.errors import UsageError, machine_error, naming_file
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
    # seconds: decode/tokenise (worker threads, overlapped), waiting on them, encoder, store writes
    timings: dict[str, float] = field(default_factory=lambda: dict.fromkeys(("decode", "wait", "encoder", "write"), 0.0))

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


SHARD_BUFFER_BYTES = 256 << 20  # a shard's pending features are written at once up to this size


class _ShardWriter:
    """A shard's computed rows, buffered and written as one store write (a zarr shard is one object:
    writing it batch by batch rewrites it once per batch). Done flags follow each write's read-back,
    so a kill loses at most the unwritten part of one shard; resume is at shard granularity."""

    def __init__(self, group: zarr.Group, lo: int, hi: int, done_now: np.ndarray):
        self.group, self.lo, self.hi, self.done_now = group, lo, hi, done_now
        features = group["features"]
        # rows already done (or retired) keep their stored bytes: start from the stored shard
        self.buf = (np.zeros((hi - lo,) + features.shape[1:], features.dtype) if not done_now.any()
                    else np.asarray(features[lo:hi]))
        self.failure = np.asarray(group["failure"][lo:hi], dtype=object)
        self.fresh: dict[int, str] = {}  # row -> failure reason ("" when computed fine), not yet written

    def add(self, batch: list[int], pending: np.ndarray, feats, failed: dict) -> None:
        for k, r in enumerate(batch):
            if not pending[k]:
                continue
            if feats is not None:
                self.buf[r - self.lo] = feats[k]
            self.fresh[r] = failed.get(r, "" if feats is not None else "not computed")

    @property
    def nbytes(self) -> int:
        return len(self.fresh) * self.buf[0].nbytes

    def flush(self) -> dict[int, str]:
        """Write the buffered shard, read it back, then set the done flags. Returns {row: reason} failed."""
        if not self.fresh:
            return {}
        features, lo, hi = self.group["features"], self.lo, self.hi
        where = f"{getattr(self.group.store, 'root', self.group.store)}/{self.group.path} (rows {lo}-{hi - 1})"
        with naming_file(where):  # the store's write names no file: name the cache group and rows
            features[lo:hi] = self.buf
        back = np.asarray(features[lo:hi])
        failed = {}
        for r, reason in self.fresh.items():
            if not reason and not np.array_equal(back[r - lo], self.buf[r - lo]):
                reason = "written features did not read back equal; rerun featurize"
            self.failure[r - lo] = reason
            self.done_now[r - lo] = not reason
            if reason:
                failed[r] = reason
        self.group["failure"][lo:hi] = self.failure
        self.group["done"][lo:hi] = self.done_now
        self.fresh = {}
        return failed


def _timed(fn, arg, acc: list):
    t0 = time.perf_counter()
    try:
        return fn(arg)
    finally:
        acc.append(time.perf_counter() - t0)  # list.append is atomic under the GIL


def _run_shard(group, s, lohi, job: Job, pool, prefetch: int, summary: RunSummary, bar) -> None:
    lo, hi = lohi
    done_now = np.asarray(group["done"][lo:hi], dtype=bool).copy()  # read under the claim
    todo = []
    for batch in job.batches_of(lo, hi):
        pending = ~done_now[np.asarray(batch) - lo]
        summary.skipped += int((~pending).sum())
        if pending.any():
            todo.append((batch, pending))
    if not todo:
        return
    t, decode = summary.timings, []
    writer = _ShardWriter(group, lo, hi, done_now)
    futures: list[Future] = [pool.submit(_timed, job.prepare, b, decode) for b, _ in todo[:prefetch]]
    written = 0
    for i, (batch, pending) in enumerate(todo):
        if i + prefetch < len(todo):
            futures.append(pool.submit(_timed, job.prepare, todo[i + prefetch][0], decode))
        t0, t1 = time.perf_counter(), None
        try:
            prepared = futures.pop(0).result()
            t1 = time.perf_counter()
            feats, failed = job.compute(batch, prepared)
        except Exception as exc:  # one bad batch never loses the others' work
            if machine_error(exc):
                raise
            feats, failed = None, {r: f"{type(exc).__name__}: {exc}" for r in batch}
        t2 = time.perf_counter()
        t1 = t1 or t2
        t["wait"] += t1 - t0
        t["encoder"] += t2 - t1
        writer.add(batch, pending, feats, failed)
        written += int(pending.sum())
        if writer.nbytes >= SHARD_BUFFER_BYTES or i == len(todo) - 1:
            failed = writer.flush()
            t["write"] += time.perf_counter() - t2
            summary.done += written - len(failed)
            summary.failed += len(failed)
            summary.failures.extend((job.label(r), reason) for r, reason in failed.items())
            bar.update(written)
            written = 0
    t["decode"] += sum(decode)


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
