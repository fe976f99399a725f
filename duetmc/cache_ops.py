"""Managing caches as wholes: overlays, copies (whole or a subset), merges, and a catalog.

A copy or merge writes ordinary groups with the source's provenance unchanged (encoder, weights
sha256, settings, versions) plus `derived_from`: where every row came from (absolute source URLs,
group, the selection) and when. Groups of one key merge only when their provenance agrees, so a merged
cache is one encoder's features, never a mix. Copied caches are complete caches: train and eval read
them directly; an overlay copied this way comes out flat (its bases' groups included).
"""

from __future__ import annotations

import datetime as _dt
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from duetmc import cache_spec, overlay
from duetmc.cache_access import ensure_writable
from duetmc.cache_integrity import record_checksums
from duetmc.cache_spec import CacheError, absolute_url, create_array, read_strings
from duetmc.errors import UsageError


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _new_root(url: str) -> zarr.Group:
    ensure_writable(url)  # one line now, not a traceback after the first group
    path = Path(url)
    if not cache_spec.is_remote(url) and path.exists() and any(path.iterdir()):
        raise UsageError(f"{url}: already exists and is not empty; give a new path")
    root = zarr.open_group(store=url, mode="w")
    root.attrs["duetmc_spec_version"] = cache_spec.SPEC_VERSION
    return root


# --- overlays --------------------------------------------------------------------------------


def _base_layers(url: str):
    root = cache_spec.open_root(url)
    return root.layers if isinstance(root, overlay.LayeredRoot) else [(url, root)]


def create_overlay(new: str, bases: list[str]) -> dict:
    """A new, empty cache that reads `bases` (first wins) and writes only into itself."""
    if not bases:
        raise UsageError("give at least one --base cache")
    recorded = []
    for b in bases:
        url = absolute_url(b)
        if url == absolute_url(new):
            raise UsageError(f"{new}: an overlay cannot be its own base")
        recorded.append({"url": url, "groups": overlay.group_fingerprints(_base_layers(url))})
    root = _new_root(new)
    root.attrs[overlay.OVERLAY_ATTR] = {"bases": recorded, "created": _now(), "owner": _owner_name(os.getuid())}
    return root.attrs[overlay.OVERLAY_ATTR]


def refresh_overlay(url: str) -> list[str]:
    """Record the bases' current state (after reviewing what changed). Returns what changed."""
    root = zarr.open_group(store=url, mode="r+")
    spec = dict(root.attrs.get(overlay.OVERLAY_ATTR) or {})
    if not spec:
        raise UsageError(f"{url}: not an overlay (made with `duetmc cache overlay`)")
    changed = []
    for b in spec["bases"]:
        layers = _base_layers(b["url"])
        changed += [f"{b['url']}: {line}" for line in overlay.drift(b.get("groups", {}), layers)]
        b["groups"] = overlay.group_fingerprints(layers)
    spec["refreshed"] = _now()
    root.attrs[overlay.OVERLAY_ATTR] = spec
    return changed


# --- copying rows between groups -------------------------------------------------------------


@dataclass
class Part:
    """Rows of one source group to write: `items` are item indices (audio) or record indices (text)."""

    url: str
    group: zarr.Group
    items: np.ndarray


def _layer_positions(group: zarr.Group, layers: list[int] | None, where: str) -> list[int]:
    stored = list(group.attrs["layers"])
    if layers is None:
        return list(range(len(stored)))
    missing = [li for li in layers if li not in stored]
    if missing:
        raise UsageError(f"{where}: --layers {missing} are not stored; it holds layers {stored}")
    return [stored.index(li) for li in layers]


def _copy_features(dst, sources: list[tuple[zarr.Array, np.ndarray]], positions: list[int], rps: int) -> None:
    """Write rows gathered from several source arrays into `dst`, one destination shard at a time."""
    flat = [(k, int(r)) for k, (_, rows) in enumerate(sources) for r in rows]
    for lo in range(0, len(flat), rps):
        block = flat[lo:lo + rps]
        out = np.zeros((len(block),) + dst.shape[1:], dtype=dst.dtype)
        for k, (arr, _) in enumerate(sources):
            at = [i for i, (kk, _) in enumerate(block) if kk == k]
            if at:
                rows = np.array([block[i][1] for i in at])
                got = arr.oindex[rows, positions]
                out[at, :, : got.shape[2]] = got
        dst[lo:lo + len(block)] = out


def _derived_attrs(parts: list[Part], positions: list[int], selection: dict) -> dict:
    attrs = dict(parts[0].group.attrs)
    attrs.pop("checksums", None)
    layers = [attrs["layers"][p] for p in positions]
    if layers != attrs["layers"]:
        attrs["settings"] = dict(attrs["settings"], layers=layers)
    attrs["layers"] = layers
    attrs["derived_from"] = {"sources": [{"cache": p.url, "group": p.group.path, "items": int(len(p.items))}
                                         for p in parts], "selection": selection, "at": _now()}
    return attrs


def _settings_key(modality: str, settings: dict) -> str:
    s = dict(settings)
    if s.get("layers") is not None:
        s["layers"] = tuple(s["layers"])
    cls = cache_spec.AudioSettings if modality == "audio" else cache_spec.TextSettings
    return cls(**s).key()


def write_audio(dst_root, parts: list[Part], layers, selection: dict) -> zarr.Group:
    first = parts[0].group
    positions = _layer_positions(first, layers, first.path)
    attrs = _derived_attrs(parts, positions, selection)
    ids = np.concatenate([read_strings(p.group["ids"])[p.items] for p in parts]) if parts else np.array([])
    uniq, counts_id = np.unique(ids.astype(str), return_counts=True)
    if (counts_id > 1).any():
        clash = uniq[counts_id > 1]
        raise CacheError(f"{first.path}: {len(clash)} item ids occur in more than one input "
                         f"({', '.join(map(str, clash[:5]))}{' ...' if len(clash) > 5 else ''}); "
                         "merge caches of different clips, or copy with --items to leave them out")
    item_rows = [np.asarray(p.group["item_rows"][:])[p.items] for p in parts]
    rows = [np.concatenate([np.arange(s, s + n) for s, n in ir] or [np.zeros(0, int)]).astype(np.int64)
            for ir in item_rows]
    counts = np.concatenate([ir[:, 1] for ir in item_rows])
    n, n_items, rps = int(counts.sum()), len(ids), int(attrs["rows_per_shard"])
    g = dst_root.require_group("audio").require_group(_settings_key("audio", attrs["settings"]))
    shape = first["features"].shape
    feats = create_array(g, "features", (n, len(positions)) + shape[2:], "float16", (1, len(positions)) + shape[2:],
                         ["window", "layer", "token", "dim"], shards=(rps, len(positions)) + shape[2:], fill_value=0)
    for name, dtype, fill in (("done", "bool", False), ("failure", str, None), ("window_start", "float32", None),
                              ("window_len", "int64", None)):
        values = np.concatenate([np.asarray(p.group[name][:], dtype=object if dtype is str else None)[r]
                                 for p, r in zip(parts, rows)])
        create_array(g, name, (n,), dtype, (rps,), ["window"], fill_value=fill)[:] = values
    create_array(g, "window_item", (n,), "int32", (rps,), ["window"])[:] = np.repeat(np.arange(n_items), counts)
    m = max(1, n_items)
    create_array(g, "ids", (n_items,), str, (m,), ["item"])[:] = ids.astype(object)
    create_array(g, "item_rows", (n_items, 2), "int64", (m, 2), ["item", "pair"])[:] = np.stack(
        [np.cumsum(counts) - counts, counts], axis=1)
    for name in ("split", "tags"):
        create_array(g, name, (n_items,), str, (m,), ["item"])[:] = np.concatenate(
            [read_strings(p.group[name])[p.items] for p in parts])
    _copy_features(feats, [(p.group["features"], r) for p, r in zip(parts, rows)], positions, rps)
    g.attrs.update(attrs)  # provenance last: a group without it is a copy cut short
    record_checksums(g)
    return g


RECORD_COLUMNS = ("text_row", "item", "kind", "lang", "view", "parent_row", "category", "source")


def write_text(dst_root, parts: list[Part], layers, selection: dict) -> zarr.Group:
    first = parts[0].group
    positions = _layer_positions(first, layers, first.path)
    attrs = _derived_attrs(parts, positions, selection)
    row_of: dict[str, int] = {}
    sources: list[np.ndarray] = []
    records = {c: [] for c in RECORD_COLUMNS}
    for p in parts:
        texts = read_strings(p.group["texts"])
        rec = {c: np.asarray(p.group["records"][c][:], dtype=object if c in ("item", "kind", "lang", "category", "source") else None)[p.items]
               for c in RECORD_COLUMNS}
        used = sorted({int(r) for r in rec["text_row"]} | {int(r) for r in rec["parent_row"] if r >= 0})
        mine = [r for r in used if str(texts[r]) not in row_of]  # a text already taken keeps its row
        for r in mine:
            row_of[str(texts[r])] = len(row_of)
        sources.append(np.array(mine, dtype=np.int64))
        for c in RECORD_COLUMNS:
            if c in ("text_row", "parent_row"):
                values = [row_of[str(texts[int(r)])] if r >= 0 else -1 for r in rec[c]]
            else:
                values = list(rec[c])
            records[c] += values
    n, rps = len(row_of), int(attrs["rows_per_shard"])
    T = max(int(p.group["features"].shape[2]) for p in parts)
    D = int(first["features"].shape[3])
    attrs["max_tokens"] = T
    texts = list(row_of)
    sha = cache_spec.text_set_sha256(texts, {c: records[c] for c in RECORD_COLUMNS})
    attrs["text_set"] = dict(attrs.get("text_set") or {"name": "texts"}, sha256=sha, texts=n, records=len(records["item"]))
    g = dst_root.require_group("text").require_group(_settings_key("text", attrs["settings"]))
    L = len(positions)
    feats = create_array(g, "features", (n, L, T, D), "float16", (1, L, T, D), ["text", "layer", "token", "dim"],
                         shards=(rps, L, T, D), fill_value=0)
    for name, dtype, fill in (("done", "bool", False), ("failure", str, None), ("lengths", "int32", None)):
        values = np.concatenate([np.asarray(p.group[name][:], dtype=object if dtype is str else None)[r]
                                 for p, r in zip(parts, sources)])
        create_array(g, name, (n,), dtype, (rps,), ["text"], fill_value=fill)[:] = values
    create_array(g, "texts", (n,), str, (rps,), ["text"])[:] = np.array(texts, dtype=object)
    rec_group = g.require_group("records")
    m = len(records["item"])
    for c in RECORD_COLUMNS:
        dtype = first["records"][c].dtype
        dtype = str if dtype.kind not in "biuf" else dtype
        create_array(rec_group, c, (m,), dtype, (max(1, m),), ["record"])[:] = np.array(
            records[c], dtype=object if dtype is str else dtype)
    _copy_features(feats, [(p.group["features"], r) for p, r in zip(parts, sources)], positions, rps)
    g.attrs.update(attrs)
    record_checksums(g)
    return g


# --- copy, subset, merge ---------------------------------------------------------------------


def _selected_items(root, split: str | None, items: set[str] | None, url: str) -> set[str] | None:
    """Item ids chosen by --split/--items (None: all), from the cache's audio groups."""
    if split is None and items is None:
        return None
    chosen: set[str] = set()
    audio = cache_spec.list_groups(root, "audio")
    if split is not None and not audio:
        raise UsageError(f"{url}: --split needs an audio group (splits are stored with the clips)")
    for key in audio:
        g = root["audio"][key]
        ids = read_strings(g["ids"])
        keep = np.ones(len(ids), dtype=bool)
        if split is not None:
            keep &= np.array([(s or "train") == split for s in read_strings(g["split"])], dtype=bool)
        if items is not None:
            keep &= np.isin(ids.astype(str), list(items))
        chosen.update(map(str, ids[keep]))
    if audio and not chosen:
        raise UsageError(f"{url}: no items match --split {split} / --items ({len(items or ())} ids)")
    return chosen if audio else set(items)


def _part(url: str, group: zarr.Group, modality: str, chosen: set[str] | None) -> Part:
    if modality == "audio":
        ids = read_strings(group["ids"]).astype(str)
        keep = np.arange(len(ids)) if chosen is None else np.flatnonzero(np.isin(ids, list(chosen)))
    else:
        items = read_strings(group["records/item"]).astype(str)
        kinds = read_strings(group["records/kind"]).astype(str)
        keep = (np.arange(len(items)) if chosen is None
                else np.flatnonzero(np.isin(items, list(chosen)) | (kinds == "label")))
    return Part(url, group, keep)


def _wanted(modality: str, key: str, groups: list[str] | None) -> bool:
    return not groups or key in groups or f"{modality}/{key}" in groups


def copy_cache(src: str, dst: str, split: str | None = None, items: set[str] | None = None,
               layers: list[int] | None = None, groups: list[str] | None = None) -> dict:
    """Copy the cache `src` (an overlay comes out flat) into the new cache `dst`, optionally only
    the clips of one split or id list (with their texts), some audio hidden-state layers (the stored
    layer numbers, e.g. MERT's 6..12), or some groups."""
    root = cache_spec.open_root(src)
    chosen = _selected_items(root, split, items, src)
    selection = {"split": split, "items": None if items is None else len(items), "layers": layers, "groups": groups}
    todo = [(m, k, g) for m, k, g in cache_spec.iter_groups(root) if _wanted(m, k, groups)]
    if not todo:
        raise UsageError(f"{src}: no group matches --groups {groups}; it has "
                         f"{[f'{m}/{k}' for m, k, _ in cache_spec.iter_groups(root)]}")
    out = _new_root(dst)
    url = absolute_url(src)
    written = []
    for modality, key, group in todo:
        write = write_audio if modality == "audio" else write_text
        g = write(out, [_part(url, group, modality, chosen)], layers if modality == "audio" else None, selection)
        written.append({"from": f"{modality}/{key}", "to": g.path, "rows": int(g["done"].shape[0])})
    return {"source": url, "cache": absolute_url(dst), "groups": written}


_SAME = ("settings", "layers", "dim", "sample_rate", "window_samples", "hop_samples", "compute_dtype")


def _provenance_diff(a: zarr.Group, b: zarr.Group) -> list[str]:
    pa, pb = dict(a.attrs), dict(b.attrs)
    diff = [f"{k}: {pa.get(k)!r} vs {pb.get(k)!r}" for k in _SAME if pa.get(k) != pb.get(k)]
    for k in ("name", "source", "revision", "weights_sha256"):
        va, vb = pa.get("encoder", {}).get(k), pb.get("encoder", {}).get(k)
        if va != vb:
            diff.append(f"encoder {k}: {va!r} vs {vb!r}")
    return diff


def merge_caches(inputs: list[str], out: str) -> dict:
    """One cache holding every input's clips and texts; groups of one key must share provenance and
    no clip id may occur in two inputs (the error names them)."""
    if len(inputs) < 2:
        raise UsageError("give at least two caches to merge")
    roots = [(absolute_url(u), cache_spec.open_root(u)) for u in inputs]
    by_key: dict[tuple[str, str], list[Part]] = {}
    for url, root in roots:
        for modality, key, group in cache_spec.iter_groups(root):
            by_key.setdefault((modality, key), []).append(_part(url, group, modality, None))
    for (modality, key), parts in by_key.items():
        for p in parts[1:]:
            diff = _provenance_diff(parts[0].group, p.group)
            if diff:
                raise CacheError(f"{modality}/{key}: {p.url} and {parts[0].url} were made differently "
                                 f"({'; '.join(diff)}); only features of one provenance merge")
    dst = _new_root(out)
    written = []
    for (modality, key), parts in sorted(by_key.items()):
        write = write_audio if modality == "audio" else write_text
        g = write(dst, parts, None, {"merge": [p.url for p in parts]})
        written.append({"group": f"{modality}/{key}", "inputs": len(parts), "rows": int(g["done"].shape[0])})
    return {"inputs": [u for u, _ in roots], "cache": absolute_url(out), "groups": written}


# --- catalog ---------------------------------------------------------------------------------


def _owner_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _du(path: Path) -> int:
    return sum(os.lstat(os.path.join(d, f)).st_size for d, _, fs in os.walk(path) for f in fs)


def _describe_cache(path: Path) -> dict | None:
    try:
        root = zarr.open_group(store=str(path), mode="r")
    except Exception:  # not a zarr group at all: not a cache, keep walking
        return None
    if "duetmc_spec_version" not in root.attrs:
        return None
    groups = []
    for modality in ("audio", "text"):
        for key in cache_spec.list_groups(root, modality):
            g = root[modality][key]
            attrs = dict(g.attrs)
            st = cache_spec.group_status(g, modality, key)
            groups.append({"group": f"{modality}/{key}", "encoder": attrs.get("encoder", {}).get("name"),
                           "revision": attrs.get("encoder", {}).get("revision"),
                           "weights_sha256": attrs.get("encoder", {}).get("weights_sha256"),
                           "items": st.items, "items_done": st.items_done, "items_failed": st.items_failed,
                           "complete": not st.incomplete_shards, "created": attrs.get("created"),
                           "text_set": attrs.get("text_set", {}).get("name")})
    spec = root.attrs.get(overlay.OVERLAY_ATTR)
    st = path.stat()
    created = min([g["created"] for g in groups if g["created"]] + ([spec["created"]] if spec else []),
                  default=_dt.datetime.fromtimestamp(st.st_mtime, _dt.timezone.utc).isoformat(timespec="seconds"))
    return {"cache": str(path.resolve()), "groups": groups, "bases": [b["url"] for b in spec["bases"]] if spec else [],
            "bytes": _du(path), "owner": _owner_name(st.st_uid), "created": created}


def list_caches(top: str) -> list[dict]:
    """Every duetmc cache under the folder `top` (not descending into caches)."""
    top_path = Path(top)
    if not top_path.is_dir():
        raise UsageError(f"{top}: not a folder")
    found = []
    for dirpath, dirnames, filenames in os.walk(top_path):
        dirnames.sort()
        if "zarr.json" in filenames:
            info = _describe_cache(Path(dirpath))
            if info is not None:
                found.append(info)
                dirnames[:] = []  # its groups are not caches of their own
    return found
