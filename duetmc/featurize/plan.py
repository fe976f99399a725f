"""The audio plan: which windows each manifest item has, and how a plan follows its manifest.

An item is planned from what its decoder really returns (decode.scan), and the plan records the
item's fingerprint: audio path, start, end, file size and mtime. Featurizing against an existing
plan compares fingerprints: new ids are appended, items whose fingerprint changed (an edited start,
a replaced file, a file that was missing and now exists) get new windows appended and their old
windows retired, unchanged items keep their rows byte for byte, and items no longer in the manifest
are removed from use (no rows, split "removed") so training and evaluation never see them.
"""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from duetmc.featurize.decode import AudioError, Scan, resampled_length, scan
from duetmc.manifest import Item

REMOVED = "removed"  # the split of an item no longer in the manifest


def window_layout(n: int, window: int, hop: int) -> list[tuple[int, int]]:
    """(start, length) in samples. The last window ends at the track's end; short tracks: one window."""
    if n <= window:
        return [(0, n)]
    count = math.ceil((n - window) / hop) + 1
    return [(min(k * hop, n - window), window) for k in range(count)]


def fingerprint(item: Item) -> dict:
    """What must stay equal for an item's planned windows to stay valid."""
    try:
        st = item.audio.stat()
        size, mtime = st.st_size, st.st_mtime_ns
    except OSError:
        size = mtime = None
    return {"audio": str(item.audio), "start": item.start, "end": item.end, "size": size, "mtime_ns": mtime}


@dataclass
class PlannedItem:
    fingerprint: dict
    scan: Scan | None  # None: the item failed at planning
    failure: str
    layout: list[tuple[int, int]]

    def to_json(self) -> str:
        return json.dumps({"fingerprint": self.fingerprint, "failure": self.failure,
                           "scan": None if self.scan is None else self.scan.to_json()})

    @staticmethod
    def from_json(text: str) -> "PlannedItem":
        d = json.loads(text) if text else {}
        s = d.get("scan")
        return PlannedItem(d.get("fingerprint", {}), None if s is None else Scan(**s), d.get("failure", ""), [])


def plan_item(item: Item, sr: int, window: int, hop: int) -> PlannedItem:
    fp = fingerprint(item)
    try:
        s = scan(item)
    except AudioError as exc:
        return PlannedItem(fp, None, str(exc), [(0, 0)])
    n = resampled_length(s.frames, s.sample_rate, sr)
    return PlannedItem(fp, s, "", window_layout(n, window, hop))


def plan_items(items: list[Item], sr: int, window: int, hop: int, workers: int = 2) -> list[PlannedItem]:
    """Scan every item (libsndfile releases the GIL, so threads decode in parallel)."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda it: plan_item(it, sr, window, hop), items))


@dataclass
class PlanDiff:
    """Manifest items against a stored plan, by id."""

    added: list[int] = field(default_factory=list)  # manifest indices
    changed: list[tuple[int, int]] = field(default_factory=list)  # (manifest index, stored index)
    kept: list[tuple[int, int]] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)  # stored indices

    @property
    def unchanged(self) -> bool:
        return not (self.added or self.changed or self.removed)


def diff_plan(items: list[Item], stored_ids: list[str], stored: list[PlannedItem], stored_split) -> PlanDiff:
    pos = {i: k for k, i in enumerate(stored_ids)}
    d = PlanDiff()
    seen = set()
    for m, item in enumerate(items):
        k = pos.get(item.id)
        if k is None:
            d.added.append(m)
            continue
        seen.add(k)
        if stored[k].fingerprint == fingerprint(item) and stored_split[k] != REMOVED:
            d.kept.append((m, k))
        else:
            d.changed.append((m, k))
    d.removed = [k for k in range(len(stored_ids)) if k not in seen and stored_split[k] != REMOVED]
    return d


def report(d: PlanDiff, items: list[Item], stored_ids: list[str]) -> dict:
    """What the re-plan did, by id, for the summary and --json."""
    return {"added": [items[m].id for m in d.added], "changed": [items[m].id for m, _ in d.changed],
            "kept": len(d.kept), "removed": [stored_ids[k] for k in d.removed]}
