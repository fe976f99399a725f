"""The cache spec: how locked-encoder features are laid out in a Zarr v3 store.

    <cache>/                         attrs: duetmc_spec_version
      audio/<key>/                   attrs: provenance (encoder, weights sha256, settings, versions)
        features  [window, layer, token, dim] float16   sharded: `rows_per_shard` windows per shard
        done      [window] bool                          1-D arrays chunked like the shards, so a
        failure   [window] str                           writer of one shard touches no other's files
        window_item [window] int32, window_start [window] float32 (seconds from the item's start);
                  window_item -1: a retired row (its item was re-planned or removed)
        ids       [item] str, item_rows [item, 2] int64 (first window, window count; 0 for a removed item)
        item_source [item] str       the plan of each item: fingerprint and decoder scan (featurize.plan)
      text/<key>/
        features  [text, layer, token, dim] float16, lengths/done/failure [text], texts [text] str
        records/  one row per views-file record: text_row, item, kind, lang, view, parent_row,
                  category, source

Rows of `audio/*` are windows: a 10 s clip is one row, a 2-minute track twelve. An item is done when
all its windows are; its failure reason is that of its first failed window. `<key>` encodes every
setting that changes the features, so several encoders and settings coexist in one cache.

Zarr v3 has no cross-process locking, so every writer claims whole shards (featurize.locks).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import platform
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Iterable

import numpy as np
import zarr
from duetmc.errors import DuetmcError

SPEC_VERSION = 1
READABLE_SPEC_VERSIONS = (1,)
DEFAULT_ROWS_PER_SHARD = 64


class CacheError(DuetmcError, ValueError):
    """The cache does not hold what was asked for; the message says what differs and what to do."""


def _fmt(x: float) -> str:
    return f"{x:g}"


@dataclass(frozen=True)
class AudioSettings:
    """Everything that changes audio features. Two runs with equal settings give equal features."""

    encoder: str
    window_s: float = 10.0
    hop_s: float | None = None  # None: hop = window (non-overlapping; the last window ends at the track's end)
    tokens: int = 4  # time pooling: tokens per window
    layers: tuple[int, ...] | None = None  # None: every hidden state
    dtype: str = "float16"

    def __post_init__(self):
        if self.hop_s is not None and float(self.hop_s) == float(self.window_s):
            object.__setattr__(self, "hop_s", None)  # same features, so the same settings and key

    @property
    def hop(self) -> float:
        return self.window_s if self.hop_s is None else self.hop_s

    def key(self) -> str:
        layers = "all" if self.layers is None else "-".join(map(str, self.layers))
        return f"{self.encoder}.w{_fmt(self.window_s)}.h{_fmt(self.hop)}.t{self.tokens}.l{layers}"


@dataclass(frozen=True)
class TextSettings:
    encoder: str
    layers: tuple[int, ...] | None = (-1,)  # default: the last hidden state only
    max_tokens: int | None = None  # None: the encoder's limit
    dtype: str = "float16"

    def key(self) -> str:
        layers = "all" if self.layers is None else "-".join(map(str, self.layers))
        cap = "" if self.max_tokens is None else f".m{self.max_tokens}"
        return f"{self.encoder}.l{layers}{cap}"


def settings_dict(settings) -> dict:
    d = dataclasses.asdict(settings)
    if d.get("layers") is not None:
        d["layers"] = list(d["layers"])
    return d


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict:
    from duetmc import __version__

    return {
        "duetmc": __version__,
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "zarr": _version("zarr"),
        "numpy": _version("numpy"),
        "python": platform.python_version(),
    }


def state_dict_sha256(state: dict[str, Any]) -> str:
    """sha256 over sorted tensor names, dtypes, shapes and bytes: identifies the loaded weights."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name]
        arr = t.detach().cpu().contiguous().numpy() if hasattr(t, "detach") else np.ascontiguousarray(t)
        h.update(name.encode())
        h.update(str(arr.dtype).encode())
        h.update(str(arr.shape).encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def shard_ranges(n_rows: int, rows_per_shard: int) -> list[tuple[int, int]]:
    return [(s, min(s + rows_per_shard, n_rows)) for s in range(0, n_rows, rows_per_shard)]


def parse_shard(spec: str | None) -> tuple[int, int]:
    """'I/N' -> (I, N), 0-based I; None -> (0, 1)."""
    if spec is None:
        return 0, 1
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise CacheError(f"--shard must look like I/N (for example 0/4), got {spec!r}") from None
    if n < 1 or not 0 <= i < n:
        raise CacheError(f"--shard {spec}: need 0 <= I < N")
    return i, n


def task_shards(n_shards: int, task: int, n_tasks: int) -> list[int]:
    """Contiguous, whole shards for task `task` of `n_tasks`; tasks never share a shard."""
    lo = n_shards * task // n_tasks
    hi = n_shards * (task + 1) // n_tasks
    return list(range(lo, hi))


# --- opening ---------------------------------------------------------------------------------


def open_root(url: str, mode: str = "r") -> zarr.Group:
    """Open (or with mode 'a' create) a cache root on a local path or any fsspec URL."""
    try:
        root = zarr.open_group(store=str(url), mode=mode)
    except FileNotFoundError:
        raise CacheError(f"{url}: no cache here; create one with `duetmc featurize audio|text ... --cache {url}`") from None
    version = root.attrs.get("duetmc_spec_version")
    if version is None:
        if mode == "r":
            raise CacheError(f"{url}: this Zarr group is not a duetmc cache (no duetmc_spec_version attribute)")
        root.attrs["duetmc_spec_version"] = SPEC_VERSION
    elif version not in READABLE_SPEC_VERSIONS:
        raise CacheError(
            f"{url}: cache spec version {version} cannot be read by duetmc {environment()['duetmc']}, "
            f"which reads versions {list(READABLE_SPEC_VERSIONS)}; upgrade duetmc or re-featurize"
        )
    return root


def list_groups(root: zarr.Group, modality: str) -> list[str]:
    if modality not in root:
        return []
    return sorted(root[modality].group_keys())


def _diff(stored: dict, requested: dict) -> list[str]:
    return [
        f"{k}: cache has {stored.get(k)!r}, requested {requested.get(k)!r}"
        for k in sorted(set(stored) | set(requested))
        if stored.get(k) != requested.get(k)
    ]


def open_features(root: zarr.Group, modality: str, settings, url: str = "") -> zarr.Group:
    """Open the group for `settings`, refusing any other settings with a message saying what differs."""
    key = settings.key()
    keys = list_groups(root, modality)
    requested = settings_dict(settings)
    if key not in keys:
        if not keys:
            raise CacheError(f"{url}: the cache has no {modality} features; run `duetmc featurize {modality}` first")
        lines = []
        for k in keys:
            stored = dict(root[modality][k].attrs).get("settings", {})
            lines.append(f"  {modality}/{k}: " + "; ".join(_diff(stored, requested)))
        raise CacheError(
            f"{url}: no {modality} features with the requested settings ({modality}/{key}). "
            "What the cache has instead, and what differs:\n" + "\n".join(lines)
            + "\nFeaturize with these settings, or request the cache's settings."
        )
    group = root[modality][key]
    stored = dict(group.attrs).get("settings", {})
    diff = _diff(stored, requested)
    if diff:
        raise CacheError(f"{url}: {modality}/{key} was built with other settings: " + "; ".join(diff))
    return group


def create_array(group: zarr.Group, name: str, shape, dtype, chunks, dims, shards=None, fill_value=None):
    from zarr.codecs import ZstdCodec

    kwargs = dict(shape=shape, dtype=dtype, chunks=chunks, dimension_names=dims, overwrite=True)
    if shards is not None:
        kwargs["shards"] = shards
    if fill_value is not None:
        kwargs["fill_value"] = fill_value
    if dtype is not str:
        kwargs["compressors"] = ZstdCodec(level=3)
    return group.create_array(name, **kwargs)


def read_strings(array, sl=slice(None)) -> np.ndarray:
    """A string array as a numpy object array of str (zarr returns numpy's StringDType)."""
    return np.asarray(array[sl], dtype=object)


def resolve_layers(requested: tuple[int, ...] | None, n_layers: int, encoder: str) -> list[int]:
    """The hidden states to store: all of them (None) or the requested indices, each checked."""
    layers = list(range(n_layers)) if requested is None else list(requested)
    for li in layers:
        if not -n_layers <= li < n_layers:
            raise CacheError(f"layer {li} does not exist: {encoder} has {n_layers} hidden states")
    return layers


def check_compute_dtype(group: zarr.Group, dtype: str, url: str) -> None:
    """One array, one compute precision: resuming a bf16 run in float32 (or back) would mix them."""
    stored = group.attrs.get("compute_dtype", "float32")
    if stored != dtype:
        raise CacheError(f"{url}: {group.path} was computed in {stored}; resume it with --dtype {stored}, "
                         f"or featurize into another --cache to use {dtype}")


def provenance(settings, encoder_info: dict, extra: dict | None = None) -> dict:
    return {
        "spec_version": SPEC_VERSION,
        "settings": settings_dict(settings),
        "encoder": encoder_info,
        "versions": environment(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }


# --- summaries -------------------------------------------------------------------------------


@dataclass
class GroupStatus:
    modality: str
    key: str
    rows: int
    rows_done: int
    rows_failed: int
    items: int
    items_done: int
    items_failed: int
    shards: list[dict] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def incomplete_shards(self) -> list[int]:
        return [s["shard"] for s in self.shards if s["pending"] > 0]


def group_status(group: zarr.Group, modality: str, key: str) -> GroupStatus:
    """Progress from the done-mask itself, shard by shard."""
    done = np.asarray(group["done"][:], dtype=bool)
    failure = read_strings(group["failure"])
    # audio rows of re-planned or removed items are retired (window_item -1): not part of any count
    live = np.asarray(group["window_item"][:]) >= 0 if modality == "audio" else np.ones(len(done), bool)
    done &= live
    failed = (failure != "") & ~done & live
    rps = int(group.attrs["rows_per_shard"])
    shards = []
    for s, (lo, hi) in enumerate(shard_ranges(len(done), rps)):
        d, f, n = int(done[lo:hi].sum()), int(failed[lo:hi].sum()), int(live[lo:hi].sum())
        shards.append({"shard": s, "rows": n, "done": d, "failed": f, "pending": n - d - f})
    if modality == "audio":
        ids = read_strings(group["ids"])
        item_rows = np.asarray(group["item_rows"][:])
        items_done = items_failed = 0
        failures = []
        for i, (start, count) in enumerate(item_rows):
            if count == 0:  # removed from the manifest
                continue
            sl = slice(int(start), int(start + count))
            if done[sl].all():
                items_done += 1
            elif failed[sl].any():
                items_failed += 1
                failures.append((str(ids[i]), str(failure[sl][failed[sl]][0])))
        n_items = int((item_rows[:, 1] > 0).sum())
    else:
        texts = read_strings(group["texts"])
        n_items, items_done, items_failed = len(done), int(done.sum()), int(failed.sum())
        failures = [(texts[i][:60], failure[i]) for i in np.flatnonzero(failed)]
    return GroupStatus(modality, key, int(live.sum()), int(done.sum()), int(failed.sum()), n_items, items_done,
                       items_failed, shards, failures)


def iter_groups(root: zarr.Group) -> Iterable[tuple[str, str, zarr.Group]]:
    for modality in ("audio", "text"):
        for key in list_groups(root, modality):
            yield modality, key, root[modality][key]



# --- inspection --------------------------------------------------------------------------------


def cache_info(url: str) -> dict:
    """Groups, encoders, item counts, shapes, bytes on disk and provenance, as a JSON-able dict."""
    root = open_root(url)
    out = {"cache": str(url), "spec_version": root.attrs.get("duetmc_spec_version"), "groups": []}
    for modality, key, group in iter_groups(root):
        st = group_status(group, modality, key)
        arrays = {name: arr for name, arr in group.arrays()}
        if modality == "text":
            arrays.update({f"records/{n}": a for n, a in group["records"].arrays()})
        attrs = dict(group.attrs)
        out["groups"].append({
            "modality": modality, "key": key, "encoder": attrs.get("encoder", {}).get("name"),
            "rows": st.rows, "rows_done": st.rows_done, "rows_failed": st.rows_failed,
            "items": st.items, "items_done": st.items_done, "items_failed": st.items_failed,
            "shards": len(st.shards), "incomplete_shards": st.incomplete_shards,
            "shape": list(group["features"].shape),
            "bytes_on_disk": int(sum(a.nbytes_stored() for a in arrays.values())),
            "failures": [list(f) for f in st.failures[:20]],
            "provenance": attrs,
        })
    return out


def validate_cache(url: str, scheduler: str | None = None) -> list[str]:
    """Scan every group out of core, one shard per dask chunk. Returns problems (empty: valid).

    Checks: array shapes agree, done rows are finite and not all zero, failed rows have a reason,
    and (audio) the window -> item map is consistent. Pass a dask.distributed address as `scheduler`
    to run the scan on a cluster.
    """
    import dask
    import dask.array as da

    root = open_root(url)
    problems: list[str] = []
    client = None
    if scheduler:
        from dask.distributed import Client

        client = Client(scheduler)
    try:
        for modality, key, group in iter_groups(root):
            where = f"{modality}/{key}"
            feats = group["features"]
            n = feats.shape[0]
            shapes = [f"{where}: {name} has {group[name].shape[0]} rows, features has {n}"
                      for name in ("done", "failure") + (("window_item", "window_start") if modality == "audio" else ("lengths", "texts"))
                      if group[name].shape[0] != n]
            if shapes:  # the row checks below need equal shapes; other groups are still checked
                problems += shapes
                continue
            x = da.from_zarr(feats, chunks=(int(group.attrs["rows_per_shard"]),) + feats.shape[1:])
            finite, nonzero = dask.compute(da.isfinite(x).all(axis=(1, 2, 3)), (x != 0).any(axis=(1, 2, 3)))
            done = np.asarray(group["done"][:], dtype=bool)
            failure = read_strings(group["failure"])
            for label, bad in (("NaN/Inf values", done & ~finite), ("all-zero features", done & ~nonzero)):
                if bad.any():
                    problems.append(f"{where}: {int(bad.sum())} done rows have {label} (first: row {int(np.flatnonzero(bad)[0])})")
            both = done & (failure != "")
            if both.any():
                problems.append(f"{where}: {int(both.sum())} rows are marked both done and failed")
            if modality == "audio":
                item_rows = np.asarray(group["item_rows"][:])
                expected = np.full(n, -1)  # rows no item points to are retired (-1)
                for i, (s, c) in enumerate(item_rows):
                    expected[s:s + c] = i
                if not np.array_equal(expected, np.asarray(group["window_item"][:])):
                    problems.append(f"{where}: window -> item map disagrees with item_rows")
            live = np.asarray(group["window_item"][:]) >= 0 if modality == "audio" else True
            pending = int((~done & (failure == "") & live).sum())
            if pending:
                problems.append(f"{where}: {pending} rows not featurized yet (rerun the featurizer to finish)")
    finally:
        if client is not None:
            client.close()
    return problems
