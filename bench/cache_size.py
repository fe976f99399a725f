"""Benchmark 6: cache bytes per 10 s clip for MERT-330M features (25 layers x T x 1024, float16).

For T = 1, 4, 10 tokens per window, writes one cache-layout array (shards of 64 windows, chunks of
one window, as `duetmc featurize audio` does) with the cache's codec (zstd level 3) and with
blosc-zstd + byte shuffle, and reports bytes per clip, the projected size of a 100-hour cache
(36,000 windows, the paper's MusicTextHQ) and the time to read it once at the disk's measured
sequential speed. Values are seeded random float16 (normal), a pessimistic case for compression;
as a real-activation reference the same codecs are applied to real musicnn features of synthetic
audio (753-d, 1 layer) when --real is given.

    .venv/bin/python bench/cache_size.py [--quick] [--real]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from common import disk_read_mb_s, emit, stats

HOURS = 100
WINDOWS_100H = HOURS * 3600 // 10


def codecs():
    from zarr.codecs import BloscCodec, BloscShuffle, ZstdCodec

    return {
        "zstd-3": ZstdCodec(level=3),
        "blosc-zstd-3+shuffle": BloscCodec(cname="zstd", clevel=3, shuffle=BloscShuffle.shuffle, typesize=2),
    }


def measure(x: np.ndarray, where: Path, rps: int = 64) -> dict:
    import zarr

    out = {}
    for name, codec in codecs().items():
        group = zarr.open_group(str(where / name), mode="w")
        arr = group.create_array("features", shape=x.shape, dtype="float16", chunks=(1,) + x.shape[1:],
                                 shards=(rps,) + x.shape[1:], compressors=codec, fill_value=0)
        t0 = time.perf_counter()
        for lo in range(0, len(x), rps):
            arr[lo:lo + rps] = x[lo:lo + rps]
        write_s = time.perf_counter() - t0
        reads = []
        for _ in range(3):
            t0 = time.perf_counter()
            for lo in range(0, len(x), rps):
                arr[lo:lo + rps]
            reads.append(x.nbytes / 2**20 / (time.perf_counter() - t0))
        stored = sum(f.stat().st_size for f in (where / name / "features" / "c").rglob("*") if f.is_file())
        out[name] = {"bytes_per_clip": stored / len(x), "ratio": stored / x.nbytes,
                     "write_mb_s": x.nbytes / 2**20 / write_s, "decode_read_mb_s": stats(reads)}
        shutil.rmtree(where / name)
    return out


def real_musicnn(n: int, tokens: int) -> np.ndarray:
    """Real musicnn-mtt features of `n` synthetic 10 s clips (tones + noise), time-pooled to `tokens`."""
    import torch

    from duetmc.featurize.audio import time_pool
    from duetmc.featurize.musicnn import load_musicnn

    enc = load_musicnn("musicnn-mtt")
    rng = np.random.default_rng(0)
    t = np.arange(160000) / 16000
    feats = []
    with torch.inference_mode():
        for i in range(n):
            f0 = 110 * 2 ** (rng.integers(0, 24) / 12)
            x = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 6)) * (1 + np.sin(2 * np.pi * rng.uniform(0.5, 4) * t))
            x = (0.1 * x + 0.02 * rng.standard_normal(len(t))).astype(np.float32)
            feats.append(time_pool(enc(torch.from_numpy(x)[None]), tokens)[0].numpy())
    return np.stack(feats).astype(np.float16)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=128, help="windows written per setting")
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 4, 10])
    ap.add_argument("--real", action="store_true", help="also measure real musicnn features (slower)")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.clips = 64
    tmp = Path(tempfile.mkdtemp(prefix="duetmc_cache_size_", dir="/tmp"))
    try:
        disk = disk_read_mb_s(tmp, 256 if args.quick else 512)
        disk_mb_s = disk["direct_mb_s"]["median"]
        rng = np.random.default_rng(0)
        rows, result = [], {"disk": disk, "clips_written": args.clips, "settings": {}}
        for T in args.tokens:
            x = rng.standard_normal((args.clips, 25, T, 1024), dtype=np.float32).astype(np.float16)
            m = measure(x, tmp)
            raw = 25 * T * 1024 * 2
            entry = {"raw_bytes_per_clip": raw, "codecs": m}
            for name, v in m.items():
                size_gb = v["bytes_per_clip"] * WINDOWS_100H / 2**30
                v["size_100h_gb"] = size_gb
                v["read_100h_s"] = size_gb * 1024 / disk_mb_s
                rows.append(f"| {T} | {raw / 1024:.0f} KiB | {name} | {v['bytes_per_clip'] / 1024:.1f} KiB "
                            f"({v['ratio']:.3f}) | {size_gb:.2f} GB | {v['read_100h_s']:.0f} s | "
                            f"{v['decode_read_mb_s']['median']:.0f} MB/s |")
            result["settings"][f"T={T}"] = entry
        if args.real:
            real = {}
            for T in (4,):
                x = real_musicnn(32 if args.quick else 64, T)
                real[f"T={T}"] = measure(x, tmp)
                for name, v in real[f"T={T}"].items():
                    rows.append(f"| {T} (real musicnn 753-d) | {x[0].nbytes / 1024:.1f} KiB | {name} | "
                                f"{v['bytes_per_clip'] / 1024:.1f} KiB ({v['ratio']:.3f}) | – | – | "
                                f"{v['decode_read_mb_s']['median']:.0f} MB/s |")
            result["real_musicnn"] = real
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    md = (f"Disk sequential read (dd iflag=direct): {disk_mb_s:.0f} MB/s; page cache "
          f"{disk['page_cache_mb_s']['median']:.0f} MB/s. 100 h = {WINDOWS_100H:,} windows of 10 s.\n\n"
          "| T | raw per clip | codec | stored per clip (ratio) | 100 h cache | read 100 h once (disk) | decode+read |\n"
          "|---|---|---|---|---|---|---|\n" + "\n".join(rows))
    emit("cache_size", result, md)


if __name__ == "__main__":
    main()
