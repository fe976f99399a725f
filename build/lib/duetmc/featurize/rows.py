"""The resumable, shard-safe write loop shared by the audio and text featurizers.

Rows are grouped into batches that are a fixed function of the plan (never of what is already done),
so a run killed at any point and rerun writes exactly the bytes an uninterrupted run writes. A batch
commits its features first and its done flags second; a batch whose rows are all done is skipped.
Preparation (decode, resample, tokenise) runs ahead in a thread pool while the encoder runs.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import zarr
from tqdm.auto import tqdm

from duetmc.cache_spec import shard_ranges


@dataclass
class RunSummary:
    done: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"done": self.done, "failed": self.failed, "skipped": self.skipped,
                "seconds": round(self.seconds, 3), "failures": [list(f) for f in self.failures]}


def fixed_batches(lengths: np.ndarray, lo: int, hi: int, batch_size: int) -> list[list[int]]:
    """Consecutive rows of equal length, at most `batch_size` each: no padding inside a batch."""
    batches: list[list[int]] = []
    cur: list[int] = []
    for r in range(lo, hi):
        if cur and (len(cur) == batch_size or lengths[r] != lengths[cur[0]]):
            batches.append(cur)
            cur = []
        cur.append(r)
    if cur:
        batches.append(cur)
    return batches


def run_rows(
    group: zarr.Group,
    shards: Sequence[int],
    batches_of: Callable[[int, int], list[list[int]]],
    prepare: Callable[[list[int]], Any],
    compute: Callable[[list[int], Any], tuple[np.ndarray, dict[int, str]]],
    label: Callable[[int], str],
    workers: int = 2,
    prefetch: int = 4,
    progress: bool = True,
    desc: str = "featurize",
) -> RunSummary:
    """Featurize every pending row of `shards`.

    `prepare(rows)` runs in worker threads and may raise for a whole batch; `compute(rows, prepared)`
    returns features for all rows (zeros where failed) and {row: reason} for failed rows.
    """
    t0 = time.perf_counter()
    rps = int(group.attrs["rows_per_shard"])
    n_rows = group["done"].shape[0]
    ranges = shard_ranges(n_rows, rps)
    summary = RunSummary()
    done_all = np.asarray(group["done"][:], dtype=bool)
    todo: list[list[int]] = []
    for s in shards:
        lo, hi = ranges[s]
        for batch in batches_of(lo, hi):
            if done_all[batch].all():
                summary.skipped += len(batch)
            else:
                todo.append(batch)
    features, done, failure = group["features"], group["done"], group["failure"]
    bar = tqdm(total=sum(map(len, todo)), desc=desc, unit="row", disable=not progress, leave=False)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: list[Future] = [pool.submit(prepare, b) for b in todo[:prefetch]]
        for i, batch in enumerate(todo):
            if i + prefetch < len(todo):
                pending.append(pool.submit(prepare, todo[i + prefetch]))
            fut = pending.pop(0)
            try:
                feats, failed = compute(batch, fut.result())
            except Exception as exc:  # one bad batch never loses the others' work
                feats, failed = None, {r: f"{type(exc).__name__}: {exc}" for r in batch}
            lo, hi = batch[0], batch[-1] + 1
            if feats is not None:
                features[lo:hi] = feats.astype(features.dtype, copy=False)
            ok = np.array([r not in failed for r in batch])
            done[lo:hi] = ok
            failure[lo:hi] = np.array([failed.get(r, "") for r in batch], dtype=object)
            summary.done += int(ok.sum())
            summary.failed += len(failed)
            summary.failures.extend((label(r), failed[r]) for r in batch if r in failed)
            bar.update(len(batch))
    bar.close()
    summary.seconds = time.perf_counter() - t0
    return summary
