"""Integrity of a cache's bytes: a sha256 per stored file, written when a group completes, and `verify`.

Chunks also carry a CRC32C (`cache_spec.create_array`), so a damaged chunk fails its read. The
manifest catches what a CRC cannot (a whole shard replaced, truncated or missing) and lets a copy be
checked without decoding. `verify` reports each problem with the array, the shard file, and the rows
and items it holds, so the owner knows what to re-featurize or re-copy.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import zarr

from duetmc.cache_spec import iter_groups, open_root, read_strings, shard_ranges

CHECKSUM_ATTR = "checksums"


def _files(group: zarr.Group):
    """(filesystem, folder of the group) for local and fsspec stores."""
    import fsspec

    store = group.store
    if hasattr(store, "fs"):  # FsspecStore: its filesystem is async; a sync twin reads the files here
        fs = store.fs
        if getattr(fs, "asynchronous", False):
            fs = type(fs)(**{**fs.storage_options, "asynchronous": False})
        return fs, f"{store.path.rstrip('/')}/{group.path}"
    # absolute: `find` lists absolute paths, and a relative root would cut them at the wrong place
    return fsspec.filesystem("file"), os.path.abspath(f"{store.root}/{group.path}")


def _sha256(fs, path: str) -> str:
    h = hashlib.sha256()
    with fs.open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def data_files(group: zarr.Group) -> list[str]:
    """Chunk and shard files of the group's arrays, relative to the group (metadata excluded)."""
    fs, base = _files(group)
    found = [p for p in fs.find(base) if not p.endswith("zarr.json")]
    return sorted(p[len(base.rstrip("/")) + 1:] for p in found)


def record_checksums(group: zarr.Group) -> bool:
    """Write the sha256 manifest of a group once it has no pending rows. Featurizers call this when
    their shards are finished; only the call that sees the group complete (and changed) writes."""
    if getattr(group.store, "read_only", False):  # a base seen through an overlay: never written
        return False
    done = np.asarray(group["done"][:], dtype=bool)
    failed = (read_strings(group["failure"]) != "") & ~done
    if (~done & ~failed).any():
        return False
    state = {"rows_done": int(done.sum()), "rows_failed": int(failed.sum())}
    old = dict(group.attrs).get(CHECKSUM_ATTR, {})
    if old and all(old.get(k) == v for k, v in state.items()):
        return False
    fs, base = _files(group)
    files = {rel: _sha256(fs, f"{base}/{rel}") for rel in data_files(group)}
    # no timestamp: a resumed run must leave the same attributes as an uninterrupted one
    group.attrs[CHECKSUM_ATTR] = {"algorithm": "sha256", "files": files, **state}
    return True


@dataclass
class Damage:
    group: str
    array: str
    file: str
    rows: list[int]  # [first, end) rows of the array this file holds
    items: list[str] = field(default_factory=list)
    reason: str = ""

    def line(self) -> str:
        shown = ", ".join(self.items[:5]) + (f" (+{len(self.items) - 5} more)" if len(self.items) > 5 else "")
        return (f"{self.group}/{self.file}: {self.reason}; array {self.array}, rows {self.rows[0]}-{self.rows[1] - 1}"
                + (f", items {shown}" if shown else ""))


def _rows_of(group: zarr.Group, rel: str) -> tuple[str, list[int]]:
    """'features/c/3/0/0/0' -> ('features', [3 * rows per shard, ...)); records/<col> likewise."""
    parts = rel.split("/")
    at = parts.index("c") if "c" in parts else len(parts) - 1
    name = "/".join(parts[:at])
    arr = group[name]
    step = (arr.shards or arr.chunks)[0]
    index = int(parts[at + 1]) if at + 1 < len(parts) and parts[at + 1].isdigit() else 0
    return name, [index * step, min((index + 1) * step, arr.shape[0])]


def _items_of(group: zarr.Group, modality: str, array: str, rows: list[int]) -> list[str]:
    lo, hi = rows
    if modality == "audio":
        ids = read_strings(group["ids"])
        if array in ("ids", "item_rows", "split", "tags"):
            return [str(i) for i in ids[lo:hi]]
        return [str(ids[i]) for i in dict.fromkeys(np.asarray(group["window_item"][lo:hi]).tolist())]
    if array.startswith("records/"):
        return list(dict.fromkeys(str(i) for i in read_strings(group["records/item"], slice(lo, hi))))
    return [str(t)[:60] for t in read_strings(group["texts"], slice(lo, hi))]


def _check_files(group, modality, where) -> list[Damage]:
    manifest = dict(group.attrs).get(CHECKSUM_ATTR, {}).get("files", {})
    fs, base = _files(group)
    out = []
    for rel, sha in sorted(manifest.items()):
        try:
            now = _sha256(fs, f"{base}/{rel}")
        except FileNotFoundError:
            now = None
        if now != sha:
            array, rows = _rows_of(group, rel)
            reason = "file missing" if now is None else "sha256 differs from the manifest"
            out.append(Damage(where, array, rel, rows, _items_of(group, modality, array, rows), reason))
    return out


def _check_decode(group, modality, where, skip: set[str]) -> list[Damage]:
    """Read every array shard by shard: a chunk whose CRC32C fails is named even without a manifest."""
    out = []
    arrays = [(n, a) for n, a in group.arrays()]
    if "records" in group:
        arrays += [(f"records/{n}", a) for n, a in group["records"].arrays()]
    for name, arr in arrays:
        step = (arr.shards or arr.chunks)[0]
        for s, (lo, hi) in enumerate(shard_ranges(arr.shape[0], step)):
            rel = f"{name}/c/{s}" + "/0" * (arr.ndim - 1)
            if rel in skip:
                continue
            try:
                arr[lo:hi]
            except Exception as exc:  # a damaged chunk: zarr raises codec errors of several types
                out.append(Damage(where, name, rel, [lo, hi], _items_of(group, modality, name, [lo, hi]),
                                  f"unreadable ({type(exc).__name__}: {' '.join(str(exc).split())[:120]})"))
    return out


def verify_cache(url: str) -> dict:
    """Check every group's files against its sha256 manifest and decode every chunk (CRC32C)."""
    root = open_root(url)
    report = {"cache": str(url), "groups": [], "damage": []}
    for modality, key, group in iter_groups(root):
        where = f"{modality}/{key}"
        manifest = dict(group.attrs).get(CHECKSUM_ATTR)
        damage = _check_files(group, modality, where)
        damage += _check_decode(group, modality, where, {d.file for d in damage})
        report["groups"].append({"group": where, "manifest": manifest is not None,
                                 "files": len((manifest or {}).get("files", {})), "damaged": len(damage)})
        report["damage"] += [asdict(d) | {"line": d.line()} for d in damage]
    report["ok"] = not report["damage"]
    return report
