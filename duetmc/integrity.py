"""Read-time integrity of feature arrays: the data is checked, not only the done flags.

Zarr returns the fill value (zeros) for a shard file that is missing, and a damaged shard raises a
checksum error that names neither the array nor the rows. So readers list the store once at open and
refuse (or, with `--allow-missing`, skip) the items whose done rows lie in a missing shard, and every
read of feature rows goes through `read_rows`, which names the array, the shard and the items when
the store fails.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from duetmc.cache_spec import CacheError

ItemsOf = Callable[[np.ndarray], list[str]]  # rows -> the item ids they belong to


def rows_per_shard(arr) -> int:
    return int((arr.shards or arr.chunks)[0])


def stored_shards(arr) -> set[int]:
    """Shard numbers (along rows) whose file exists in the store: one listing, no data read."""
    from zarr.core.sync import sync

    async def keys():
        prefix = arr.store_path.path
        return [k[len(prefix):].lstrip("/") async for k in arr.store_path.store.list_prefix(prefix)]

    stored = set(sync(keys()))
    encode = arr.metadata.chunk_key_encoding.encode_chunk_key
    n_shards = -(-arr.shape[0] // rows_per_shard(arr))
    rest = (0,) * (len(arr.shape) - 1)
    return {s for s in range(n_shards) if encode((s,) + rest) in stored}


def missing_shards(arr, done: np.ndarray) -> dict[int, np.ndarray]:
    """{shard: its done rows} for every shard that holds done rows but has no file."""
    rps = rows_per_shard(arr)
    needed = np.unique(np.flatnonzero(done) // rps)
    present = stored_shards(arr) if len(needed) else set()
    out = {}
    for s in needed:
        if int(s) not in present:
            rows = np.arange(s * rps, min((s + 1) * rps, len(done)))
            out[int(s)] = rows[done[rows]]
    return out


def _examples(ids: list[str], n: int = 5) -> str:
    shown = ", ".join(ids[:n])
    return shown + (f" and {len(ids) - n} more" if len(ids) > n else "")


def damage_message(where: str, shards: dict[int, np.ndarray], items_of: ItemsOf, problem: str) -> str:
    """One line: which array, which shards, which items, and what to do."""
    ids = list(dict.fromkeys(items_of(np.concatenate(list(shards.values())))))
    names = ", ".join(str(s) for s in sorted(shards))
    return (f"{where}: shard{'s' if len(shards) > 1 else ''} {names} {problem}, affecting {len(ids)} item(s): "
            f"{_examples(ids)}; restore the shard file from a copy or re-featurize into a new cache, "
            f"or pass --allow-missing to skip these items")


def read_rows(arr, lo: int, hi: int, where: str, items_of: ItemsOf) -> np.ndarray:
    """arr[lo:hi] as numpy; a store or codec failure becomes a CacheError naming array, shard and items."""
    try:
        return np.asarray(arr[lo:hi])
    except Exception as exc:  # zarr raises plain RuntimeError/ValueError for damaged shards
        rps = rows_per_shard(arr)
        shards = {s: np.arange(s * rps, min((s + 1) * rps, arr.shape[0]))
                  for s in range(lo // rps, (hi - 1) // rps + 1)}
        raise CacheError(damage_message(where, shards, items_of, f"cannot be read ({exc})")) from exc
