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
import re
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Iterable

import numpy as np
import zarr
from duetmc.errors import DuetmcError, UsageError, path_error
from duetmc.overlay import OVERLAY_ATTR, LayeredRoot, drift, warn_drift

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
    # which texts: None is the encoder's first set (key without a suffix, as in caches made before sets);
    # a name keeps another set of texts for the same encoder next to it, as text/<key>.s-<name>
    text_set: str | None = None

    def __post_init__(self):
        if self.text_set is not None and not _SET_NAME.fullmatch(self.text_set):
            raise UsageError(f"--text-set {self.text_set!r}: use letters, digits, '_' and '-' (at most 64)")

    def key(self) -> str:
        layers = "all" if self.layers is None else "-".join(map(str, self.layers))
        cap = "" if self.max_tokens is None else f".m{self.max_tokens}"
        text_set = "" if self.text_set is None else f".s-{self.text_set}"
        return f"{self.encoder}.l{layers}{cap}{text_set}"


_SET_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def settings_dict(settings) -> dict:
    d = dataclasses.asdict(settings)
    if d.get("text_set", "") is None:
        del d["text_set"]  # the first set: stored settings identical to caches made before text sets
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


def task_shards(n_shards: int, task: int, n_tasks: int) -> list[int]:
    """Contiguous, whole shards for task `task` of `n_tasks`; tasks never share a shard."""
    lo = n_shards * task // n_tasks
    hi = n_shards * (task + 1) // n_tasks
    return list(range(lo, hi))


# --- opening ---------------------------------------------------------------------------------


REMOTE_EXTRAS = {"s3": "s3", "s3a": "s3", "http": "http", "https": "http"}  # scheme -> pyproject extra


def is_remote(url: str) -> bool:
    return "://" in str(url) and not str(url).startswith("file://")


def absolute_url(url: str) -> str:
    """Local paths made absolute (what an overlay or a copy records); URLs unchanged."""
    import os

    return str(url) if is_remote(url) else os.path.abspath(str(url).removeprefix("file://"))


def _open_group(url: str, mode: str) -> zarr.Group:
    if is_remote(url) and mode != "r" and str(url).startswith(("http://", "https://")):
        raise CacheError(f"{url}: a cache served over HTTP is read-only; write into a local overlay "
                         f"(`duetmc cache overlay MINE --base {url}`) and use --cache MINE")
    try:
        if str(url).startswith(("http://", "https://")):
            from duetmc.remote import http_store  # any static server, with or without Range support

            return zarr.open_group(store=http_store(str(url)), mode="r")
        return zarr.open_group(store=str(url), mode=mode)
    except ImportError as exc:  # fsspec's protocol packages are optional extras
        scheme = str(url).split("://", 1)[0]
        fix = (f"pip install 'duetmc[{REMOTE_EXTRAS[scheme]}]'" if scheme in REMOTE_EXTRAS
               else f"install fsspec's package for {scheme}://")
        raise CacheError(f"{url}: reading {scheme}:// needs a package that is not installed "
                         f"({' '.join(str(exc).split())}); {fix}") from None
    except (FileNotFoundError, zarr.errors.NodeNotFoundError):
        raise CacheError(f"{url}: no cache here; create one with `duetmc featurize audio|text ... --cache {url}`") from None
    except PermissionError as exc:
        raise path_error(exc, "(opening the cache)") from None
    except OSError as exc:
        if not is_remote(url):
            raise
        raise CacheError(f"{url}: cannot be read ({' '.join(str(exc).split())}); check the address and that "
                         "the server is up") from None


def _open_base(url: str, base: str):
    try:
        return open_root(base, "r")
    except CacheError as exc:
        raise CacheError(f"{url}: this overlay's base cannot be opened: {exc}; restore it there, or make a "
                         "new overlay on its new place") from None


def open_root(url: str, mode: str = "r"):
    """Open (or with mode 'a' create) a cache root on a local path or any fsspec URL.

    An overlay (`duetmc cache overlay`) opens as a `LayeredRoot` that reads its bases' groups too and
    writes only into itself; a plain cache opens as its zarr group.
    """
    root = _open_group(url, mode)
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
    spec = root.attrs.get(OVERLAY_ATTR)
    if spec is None:
        return root
    bases = [(b["url"], _open_base(url, b["url"])) for b in spec["bases"]]  # read-only: never written
    layered = LayeredRoot(str(url), root, bases)
    for b, (base_url, base) in zip(spec["bases"], bases):
        layers = base.layers if isinstance(base, LayeredRoot) else [(base_url, base)]
        warn_drift(str(url), base_url, drift(b.get("groups", {}), layers))
    return layered


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


def text_set_sha256(texts: list[str], records: dict[str, list]) -> str:
    """Identity of a text set: its texts in row order and every record column."""
    h = hashlib.sha256()
    for t in texts:
        h.update(str(t).encode() + b"\0")
    for name in sorted(records):
        h.update(name.encode() + b"\1" + "\0".join(map(str, records[name])).encode())
    return h.hexdigest()


def _same_texts(group: zarr.Group, texts: list[str], sha: str) -> bool:
    stored = dict(group.attrs).get("text_set", {}).get("sha256")
    if stored is not None:
        return stored == sha
    return read_strings(group["texts"]).tolist() == texts  # a cache made before text sets


def choose_text_set(root, settings: TextSettings, texts: list[str], sha: str, name: str,
                    explicit: bool, url: str = "") -> TextSettings:
    """The text group for this set of texts: the one already holding them, else a new one.

    Without an explicit `--text-set`, the encoder's first set takes the plain key (as before text
    sets existed) and later sets take `<key>.s-<name>`, `name` being the views file's stem.
    """
    def planned(s: TextSettings):
        k = s.key()
        return k in root["text"] and "encoder" in root["text"][k].attrs if "text" in root else False

    if explicit:
        named = dataclasses.replace(settings, text_set=name)
        if planned(named) and not _same_texts(root["text"][named.key()], texts, sha):
            raise CacheError(f"{url}: text set {name!r} (text/{named.key()}) holds other texts; "
                             "choose another --text-set name to keep both")
        return named
    plain = dataclasses.replace(settings, text_set=None)
    keys = list_groups(root, "text")
    prefix = plain.key()
    for k in [k for k in keys if k == prefix or k.startswith(prefix + ".s-")]:
        if "encoder" in root["text"][k].attrs and _same_texts(root["text"][k], texts, sha):
            return dataclasses.replace(settings, text_set=None if k == prefix else k[len(prefix) + 3:])
    if not planned(plain):
        return plain
    auto = re.sub(r"[^A-Za-z0-9_-]", "-", name)[:64] or "texts"
    named = dataclasses.replace(settings, text_set=auto)
    if planned(named):
        raise CacheError(f"{url}: text/{prefix} and text/{named.key()} hold other texts; name this set "
                         "with --text-set NAME to keep it next to them")
    return named


def find_text_set(root, settings: TextSettings, name: str, url: str = "") -> TextSettings:
    """`settings` pointed at the text set called `name` (its --text-set name or its group key)."""
    plain = dataclasses.replace(settings, text_set=None).key()
    for key in list_groups(root, "text"):
        if key != plain and not key.startswith(plain + ".s-"):
            continue
        if name == key or dict(root["text"][key].attrs).get("text_set", {}).get("name") == name:
            return dataclasses.replace(settings, text_set=None if key == plain else key[len(plain) + 3:])
    raise CacheError(f"{url}: no text set {name!r} for {plain}; it has "
                     f"{[k for k in list_groups(root, 'text') if k.startswith(plain)] or 'none'}")


def create_array(group: zarr.Group, name: str, shape, dtype, chunks, dims, shards=None, fill_value=None):
    """Every chunk carries a CRC32C of its compressed bytes, so a flipped byte fails the read of that
    chunk (and `duetmc cache verify` names it) instead of decoding into wrong numbers."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    kwargs = dict(shape=shape, dtype=dtype, chunks=chunks, dimension_names=dims, overwrite=True)
    if shards is not None:
        kwargs["shards"] = shards
    if fill_value is not None:
        kwargs["fill_value"] = fill_value
    kwargs["compressors"] = [ZstdCodec(level=3), Crc32cCodec()]
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


def check_base_group(group: zarr.Group, url: str) -> None:
    """A group an overlay reads from its base is read-only here: featurizing can only find it done."""
    if not getattr(group.store, "read_only", False):
        return
    done = np.asarray(group["done"][:], dtype=bool)
    if not done.all():
        raise CacheError(f"{url}: {group.path} is read from a base of this overlay and has {int((~done).sum())} "
                         "rows not done (still being featurized, or failed); an overlay never writes to its base: "
                         "ask the base's owner to finish it, or featurize into a cache of your own")


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
    layered = isinstance(root, LayeredRoot)
    if layered:
        out["bases"] = root.bases
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
            "source": root.source_of(f"{modality}/{key}") if layered else None,
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
