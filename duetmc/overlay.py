"""Overlays: a cache that reads every group of its bases and writes only into itself.

An overlay is an ordinary cache root whose attribute `duetmc_overlay` lists its bases (absolute paths
or URLs, first wins) and, for every group each base held when the overlay was made, a fingerprint
(rows, done rows, a hash of the item ids or texts, the feature shape). Lookups see the overlay's own
groups first, then each base's in order; new groups are created in the overlay. Bases are opened
read-only, so no code path can write through to them. A base whose groups changed since (another
featurizer appended to it) is reported with a `CacheDriftWarning` naming the group and what changed.
"""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import zarr

OVERLAY_ATTR = "duetmc_overlay"
MODALITIES = ("audio", "text")


class CacheDriftWarning(UserWarning):
    """A base of an overlay changed after the overlay was made."""


def fingerprint(group: zarr.Group, modality: str) -> dict:
    """What identifies a group's contents cheaply: rows, done rows, ids/texts hash, feature shape."""
    done = np.asarray(group["done"][:], dtype=bool)
    names = group["ids"] if modality == "audio" else group["texts"]
    h = hashlib.sha256()
    for s in np.asarray(names[:], dtype=object):
        h.update(str(s).encode() + b"\0")
    return {"rows": int(done.shape[0]), "done": int(done.sum()), "ids_sha256": h.hexdigest()[:16],
            "shape": list(group["features"].shape)}


def group_fingerprints(layers: list[tuple[str, zarr.Group]]) -> dict[str, dict]:
    """Fingerprints of every group visible through `layers` (first layer wins)."""
    out: dict[str, dict] = {}
    for _, g in layers:
        for modality in MODALITIES:
            if modality not in g:
                continue
            for key in g[modality].group_keys():
                path = f"{modality}/{key}"
                if path not in out and "encoder" in g[path].attrs:
                    out[path] = fingerprint(g[path], modality)
    return out


def _describe(old: dict, new: dict) -> str:
    parts = []
    if old.get("rows") != new.get("rows") or old.get("ids_sha256") != new.get("ids_sha256"):
        parts.append(f"rows {old.get('rows')} -> {new.get('rows')}, item ids changed" if old.get("ids_sha256") != new.get("ids_sha256")
                     else f"rows {old.get('rows')} -> {new.get('rows')}")
    if old.get("done") != new.get("done"):
        parts.append(f"done rows {old.get('done')} -> {new.get('done')}")
    if old.get("shape") != new.get("shape") and not parts:
        parts.append(f"shape {old.get('shape')} -> {new.get('shape')}")
    return ", ".join(parts)


def drift(recorded: dict[str, dict], layers: list[tuple[str, zarr.Group]]) -> list[str]:
    """One line per base group that differs from its recorded fingerprint (or vanished)."""
    now = group_fingerprints(layers)
    lines = []
    for path, old in sorted(recorded.items()):
        if path not in now:
            lines.append(f"{path} is gone")
        elif now[path] != old:
            lines.append(f"{path} changed ({_describe(old, now[path])})")
    return lines


_warned: set[tuple[str, str]] = set()


def warn_drift(url: str, base_url: str, lines: list[str]) -> None:
    for line in lines:
        if (url, base_url + line) in _warned:
            continue
        _warned.add((url, base_url + line))
        warnings.warn(f"overlay {url}: base {base_url}: {line} since the overlay was made; it is read as it is "
                      f"now. Accept the new state with `duetmc cache overlay {url} --refresh`",
                      CacheDriftWarning, stacklevel=3)


class _ModalityView:
    """`root["audio"]` of a layered root: the union of every layer's groups of one modality."""

    def __init__(self, root: "LayeredRoot", modality: str):
        self.root, self.modality = root, modality

    def __contains__(self, key: str) -> bool:
        return any(f"{self.modality}/{key}" in g for _, g in self.root.layers)

    def __getitem__(self, key: str) -> zarr.Group:
        return self.root[f"{self.modality}/{key}"]

    def group_keys(self):
        keys = set()
        for _, g in self.root.layers:
            if self.modality in g:
                keys.update(g[self.modality].group_keys())
        return iter(sorted(keys))

    def groups(self):
        return ((k, self[k]) for k in self.group_keys())

    def require_group(self, key: str) -> zarr.Group:
        return self.root.own.require_group(self.modality).require_group(key)


class LayeredRoot:
    """A cache root that reads its own groups first, then each base's; writes go only to its own."""

    def __init__(self, url: str, own: zarr.Group, bases: list[tuple[str, object]]):
        self.url, self.own = url, own
        self.layers: list[tuple[str, zarr.Group]] = [(url, own)]
        for base_url, base in bases:
            self.layers += base.layers if isinstance(base, LayeredRoot) else [(base_url, base)]

    @property
    def attrs(self):
        return self.own.attrs

    @property
    def bases(self) -> list[str]:
        return [b["url"] for b in self.own.attrs[OVERLAY_ATTR]["bases"]]

    def source_of(self, path: str) -> str:
        """The URL of the layer that serves `path` (for info and error messages)."""
        return next(u for u, g in self.layers if path in g)

    def __contains__(self, path: str) -> bool:
        return any(path in g for _, g in self.layers)

    def __getitem__(self, path: str):
        if path in MODALITIES:
            return _ModalityView(self, path)
        for _, g in self.layers:
            if path in g:
                return g[path]
        raise KeyError(path)

    def require_group(self, name: str):
        return _ModalityView(self, name) if name in MODALITIES else self.own.require_group(name)

    def group_keys(self):
        return iter(sorted({k for _, g in self.layers for k in g.group_keys()}))

    def __getattr__(self, name):  # store, path, ... of the overlay's own group
        return getattr(self.own, name)
