"""Benchmark 2: input-bound fraction. Trainer steps fed from the on-disk sharded Zarr cache
(StreamingSource) against in-memory mode (MemorySource), with identical batches.

Targets (issue 17): streaming >= 0.9x in-memory by CPU time, and the reader's bytes/s within 2x of a
plain sequential read of the same shard files. Every mode runs the trainer's own data path
(`epoch_batches` -> `Prefetcher(fetch)`, the sampler's order, which no source changes) and the
trainer's step on the same batch specs; the first batch of each mode is compared for equality. Three
sources side by side, interleaved per repetition: in memory; streaming straight from the shard files
(duetmc.shard_reader, the default); streaming through zarr (`direct=False`, the previous reader,
now fed the same shuffled order). The readers alone (no training) are timed in rows/s and MB/s of
decoded features, against the sequential read speed of the cache's shard files (page cache, as in the
benchmark, and the disk itself with O_DIRECT).

    .venv/bin/python bench/streaming.py [--quick] [--clips 2048] [--batch-size 256]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from common import build_cache, disk_read_mb_s, emit, fmt, stats  # first: sets OMP_WAIT_POLICY before torch loads

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cached_vs_online import Step  # noqa: E402


def shard_files(group_path: Path) -> list[Path]:
    return [f for f in (group_path / "features" / "c").rglob("*") if f.is_file()]


def raw_read_mb_s(files: list[Path], runs: int = 3) -> dict:
    total = sum(f.stat().st_size for f in files)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        for f in files:
            np.fromfile(f, dtype=np.uint8)
        times.append(total / 2**20 / (time.perf_counter() - t0))
    return {"bytes": total, "mb_s": stats(times)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--layers", type=int, default=13, help="13 x 768: MERT-95M; use 25 --dim 1024 for 330M")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--tokens", type=int, default=4)
    ap.add_argument("--threads", type=int, default=8, help="StreamingSource reader threads (trainer default 8)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="1,024 clips, batch 128")
    args = ap.parse_args()
    if args.quick:
        args.clips, args.batch_size = 1024, 128
    from duetmc.feature_source import MemorySource, StreamingSource
    from duetmc.pairs import PairIndex
    from duetmc.sampler import SamplerConfig, epoch_batches
    from duetmc.train import Prefetcher, TrainConfig, fetch, heads_config

    tmp = Path(tempfile.mkdtemp(prefix="duetmc_bench2_", dir="/tmp"))
    try:
        spec = build_cache(tmp / "cache", args.clips, audio_layers=args.layers, audio_dim=args.dim,
                           tokens=args.tokens, views=False, work=tmp, splits=(0.0, 0.0))
        index = PairIndex(spec)
        sampler = SamplerConfig(p_cap=0.0, views=False, swap=False)
        hcfg = heads_config([index], TrainConfig(data=[spec], out=""))
        t0 = time.perf_counter()
        memory = MemorySource([index])
        load_s = time.perf_counter() - t0
        streaming = StreamingSource([index], threads=args.threads)
        via_zarr = StreamingSource([index], threads=args.threads, direct=False)
        sources = {"memory": memory, "streaming": streaming, "streaming_zarr": via_zarr}

        first = {name: fetch(src, epoch_batches([index], sampler, 0, 0, args.batch_size, 0.0)[0], 0, args.batch_size)
                 for name, src in sources.items()}
        identical = all(torch.equal(a, b) for other in ("streaming", "streaming_zarr")
                        for a, b in zip(first["memory"][:3], first[other][:3]))

        def train_epoch(src, step, waits, epoch=[0]):
            specs = epoch_batches([index], sampler, 0, epoch[0] % 3, args.batch_size, 0.0)
            epoch[0] += 1
            pre = Prefetcher(lambda s: fetch(src, s, 0, len(s.ds)), specs, 4)
            for audio, text, text_len, _, _, _ in pre:
                step(audio, text, text_len)
            pre.close()
            waits.append(pre.wait_s)

        result = {"clips": args.clips, "batch_size": args.batch_size, "identical_batches": identical,
                  "memory_load_s": load_s, "modes": {}}
        # interleave the modes so drift in machine load hits both alike
        times = {n: [] for n in sources}
        cpu = {n: [] for n in sources}  # process CPU seconds: robust to other tenants' load
        waits = {n: [] for n in sources}
        steps = {n: Step(hcfg) for n in sources}
        for rep in range(args.repeat + 1):
            for name, src in sources.items():
                t0, c0 = time.perf_counter(), time.process_time()
                train_epoch(src, steps[name], waits[name])
                if rep:
                    times[name].append(time.perf_counter() - t0)
                    cpu[name].append(time.process_time() - c0)
                else:
                    waits[name].clear()
        for name in sources:
            frac = [w / t for w, t in zip(waits[name], times[name])]
            result["modes"][name] = {"epoch_s": stats(times[name]), "epoch_cpu_s": stats(cpu[name]),
                                     "samples_per_s": args.clips / np.median(times[name]),
                                     "wait_fraction": stats(frac)}
        for name in ("streaming", "streaming_zarr"):
            result[f"{name}_over_memory_throughput"] = stats([m / s for m, s in zip(times["memory"], times[name])])
            result[f"{name}_over_memory_cpu"] = stats([m / s for m, s in zip(cpu["memory"], cpu[name])])

        # the readers alone: every batch of an epoch, no training, interleaved with the plain file read
        specs = epoch_batches([index], sampler, 0, 0, args.batch_size, 0.0)
        files = shard_files(tmp / "cache" / "audio" / spec.audio.key()) + shard_files(tmp / "cache" / "text" / spec.text.key())
        readers = {"streaming": streaming, "streaming_zarr": via_zarr}
        epoch_s = {n: [] for n in readers}
        raw_runs = []
        for rep in range(args.repeat + 1):
            raw = raw_read_mb_s(files, runs=1)
            for name, src in readers.items():
                src.bytes_read = 0
                t0 = time.perf_counter()
                for sp in specs:
                    fetch(src, sp, 0, len(sp.ds))
                if rep:
                    epoch_s[name].append(time.perf_counter() - t0)
            if rep:
                raw_runs += raw["mb_s"]["values"]
        mb_per_epoch = streaming.bytes_read / 2**20
        raw_mb_s = statistics.median(raw_runs)
        disk = disk_read_mb_s(tmp, 256)
        result["reader"] = {"mb_per_epoch_decoded": mb_per_epoch, "shard_files_mb": raw["bytes"] / 2**20,
                            "raw_shard_read_page_cache_mb_s": stats(raw_runs), "disk": disk}
        for name in readers:
            mb_s = [mb_per_epoch / t for t in epoch_s[name]]
            result["reader"][name] = {"epoch_s": stats(epoch_s[name]), "decoded_mb_s": stats(mb_s),
                                      "over_raw_read": statistics.median(mb_s) / raw_mb_s}
        m, s, z = (result["modes"][n] for n in ("memory", "streaming", "streaming_zarr"))
        rd, rz = result["reader"]["streaming"], result["reader"]["streaming_zarr"]
        md = "\n".join([
            f"N = {args.clips} clips ({args.layers}x{args.tokens}x{args.dim} audio, MiniLM-shaped text), batch "
            f"{args.batch_size}, {args.threads} reader threads; identical batches: {identical}.",
            "",
            "| mode | epoch (wall) | epoch (process CPU) | samples/s | waiting for data |",
            "|---|---|---|---|---|",
            f"| in-memory | {fmt(m['epoch_s'])} | {fmt(m['epoch_cpu_s'])} | {m['samples_per_s']:.0f} | {100 * m['wait_fraction']['median']:.1f} % |",
            f"| streaming (shard files) | {fmt(s['epoch_s'])} | {fmt(s['epoch_cpu_s'])} | {s['samples_per_s']:.0f} | {100 * s['wait_fraction']['median']:.1f} % |",
            f"| streaming (zarr, before) | {fmt(z['epoch_s'])} | {fmt(z['epoch_cpu_s'])} | {z['samples_per_s']:.0f} | {100 * z['wait_fraction']['median']:.1f} % |",
            "",
            f"Streaming / in-memory (paired per repetition), shard files: wall **{fmt(result['streaming_over_memory_throughput'], 'x', 2)}**, "
            f"CPU **{fmt(result['streaming_over_memory_cpu'], 'x', 2)}**; through zarr: wall "
            f"{fmt(result['streaming_zarr_over_memory_throughput'], 'x', 2)}, CPU {fmt(result['streaming_zarr_over_memory_cpu'], 'x', 2)}.",
            f"Readers alone ({mb_per_epoch:.0f} MB decoded per epoch): shard files {rd['decoded_mb_s']['median']:.0f} MB/s "
            f"(**{rd['over_raw_read']:.2f}x** the plain read), zarr {rz['decoded_mb_s']['median']:.0f} MB/s "
            f"({rz['over_raw_read']:.2f}x); plain sequential read of the same shard files {raw_mb_s:.0f} MB/s (page "
            f"cache), disk {disk['direct_mb_s']['median']:.0f} MB/s (O_DIRECT).",
        ])
        streaming.close()
        via_zarr.close()
        emit("streaming", result, md)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
