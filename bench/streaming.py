"""Benchmark 2: input-bound fraction. Trainer steps fed from the on-disk sharded Zarr cache
(StreamingSource) against in-memory mode (MemorySource), with identical batches.

Targets (issue 17): streaming >= 0.9x in-memory by CPU time, and the reader's bytes/s within 2x of a
plain sequential read of the same shard files. Every mode runs the trainer's own data path
(`epoch_batches` -> `Prefetcher(fetch)`, the sampler's order, which no source changes) and the
trainer's step on the same batch specs; the first batch of each mode is compared for equality. Four
sources side by side, interleaved per repetition: in memory; streaming straight from the shard files
(duetmc.shard_reader, the default: one pread per run of nearby frames, zstd decoded in place); the
same with the previous per-row shard reader (`PerRowRows` below: a pread, a zstd decode to a new
buffer and two copies per row); streaming through zarr (`direct=False`). The readers alone (no
training) are timed in MB/s of decoded features and of shard-file bytes, wall and per CPU second,
against a plain sequential read of the same shard files (page cache; the disk itself with O_DIRECT)
and against the floor: zstd decoding the same frames into a reused buffer in one thread.

    .venv/bin/python bench/streaming.py [--quick] [--clips 2048] [--batch-size 256]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from common import build_cache, disk_read_mb_s, emit, fmt, stats  # first: sets OMP_WAIT_POLICY before torch loads

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cached_vs_online import Step  # noqa: E402
from numcodecs import Zstd  # noqa: E402
from numcodecs.zstd import decompress  # noqa: E402

from duetmc.shard_reader import _EMPTY, ShardRows  # noqa: E402


ZSTD = Zstd()


class PerRowRows(ShardRows):
    """The previous reader, kept for comparison: per row one pread, one zstd decode into a new buffer,
    a copy into a per-shard block, and the caller's copy of the block into the batch."""

    def read_into(self, rows, out, pos):
        shard = int(rows[0]) // self.rps
        block = np.zeros((len(rows),) + self.row_shape, dtype=self.dtype)
        fd = os.open(self._path(shard), os.O_RDONLY)
        try:
            index = self._index(shard, fd)
            for j, r in enumerate(rows):
                offset, nbytes = index[int(r) - shard * self.rps]
                if offset != _EMPTY:
                    chunk = os.pread(fd, int(nbytes), int(offset))
                    raw = ZSTD.decode(chunk[:-4] if self.row_crc else chunk)  # (CRC check left out)
                    block[j] = np.frombuffer(raw, dtype=self.dtype).reshape(self.row_shape)
        finally:
            os.close(fd)
        out[pos] = block


def frame_bytes(src, specs) -> int:
    """Shard-file bytes of the row frames an epoch of `specs` reads (audio, text, hard negatives)."""
    total = 0
    for sp in specs:
        for modality, rows in (("audio", sp.audio_rows), ("text", sp.text_rows), ("text", sp.hard_rows[sp.hard_rows >= 0])):
            reader = src.direct[(modality, 0)]
            for r in np.asarray(rows, dtype=np.int64).ravel():
                total += int(reader.indices[int(r) // reader.rps][int(r) % reader.rps, 1])
    return total


def zstd_floor(src) -> dict:
    """Every frame of the shard files decoded in one thread into a reused buffer: the decode floor."""
    blobs = []
    for reader in src.direct.values():
        for shard, index in reader.indices.items():
            data = Path(reader._path(shard)).read_bytes()
            size = int(np.prod(reader.row_shape)) * reader.dtype.itemsize
            blobs += [(data, int(o), int(n) - 4 * reader.row_crc, size) for o, n in index if o != _EMPTY]
    out = np.empty(max(b[3] for b in blobs), dtype=np.uint8)
    t0, c0 = time.perf_counter(), time.process_time()
    for data, offset, n, size in blobs:
        decompress(memoryview(data)[offset:offset + n], out[:size])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    decoded = sum(b[3] for b in blobs) / 2**20
    return {"decoded_mb": decoded, "decoded_mb_s_wall": decoded / wall, "decoded_mb_s_cpu": decoded / cpu}


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
        per_row = StreamingSource([index], threads=args.threads)
        for reader in per_row.direct.values():
            reader.__class__ = PerRowRows
        via_zarr = StreamingSource([index], threads=args.threads, direct=False)
        sources = {"memory": memory, "streaming": streaming, "streaming_per_row": per_row, "streaming_zarr": via_zarr}

        first = {name: fetch(src, epoch_batches([index], sampler, 0, 0, args.batch_size, 0.0)[0], 0, args.batch_size)
                 for name, src in sources.items()}
        identical = all(torch.equal(a, b) for other in ("streaming", "streaming_per_row", "streaming_zarr")
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
        for name in ("streaming", "streaming_per_row", "streaming_zarr"):
            result[f"{name}_over_memory_throughput"] = stats([m / s for m, s in zip(times["memory"], times[name])])
            result[f"{name}_over_memory_cpu"] = stats([m / s for m, s in zip(cpu["memory"], cpu[name])])

        # the readers alone: every batch of an epoch, no training, interleaved with the plain file read
        specs = epoch_batches([index], sampler, 0, 0, args.batch_size, 0.0)
        files = shard_files(tmp / "cache" / "audio" / spec.audio.key()) + shard_files(tmp / "cache" / "text" / spec.text.key())
        readers = {"streaming": streaming, "streaming_per_row": per_row, "streaming_zarr": via_zarr}
        epoch_s = {n: [] for n in readers}
        epoch_cpu = {n: [] for n in readers}
        raw_runs, floors = [], []
        for rep in range(args.repeat + 1):
            raw = raw_read_mb_s(files, runs=1)
            floor = zstd_floor(streaming)
            for name, src in readers.items():
                src.bytes_read = 0
                t0, c0 = time.perf_counter(), time.process_time()
                for sp in specs:
                    fetch(src, sp, 0, len(sp.ds))
                if rep:
                    epoch_s[name].append(time.perf_counter() - t0)
                    epoch_cpu[name].append(time.process_time() - c0)
            if rep:
                raw_runs += raw["mb_s"]["values"]
                floors.append(floor)
        mb_per_epoch = streaming.bytes_read / 2**20  # decoded, as the batches hold them (text padded)
        file_mb = frame_bytes(streaming, specs) / 2**20
        raw_mb_s = statistics.median(raw_runs)
        floor = {k: stats([f[k] for f in floors]) for k in ("decoded_mb_s_wall", "decoded_mb_s_cpu")}
        floor["decoded_mb"] = floors[0]["decoded_mb"]
        disk = disk_read_mb_s(tmp, 256)
        result["reader"] = {"mb_per_epoch_decoded": mb_per_epoch, "file_mb_per_epoch": file_mb,
                            "shard_files_mb": raw["bytes"] / 2**20, "raw_shard_read_page_cache_mb_s": stats(raw_runs),
                            "zstd_one_thread": floor, "disk": disk}
        for name in readers:
            mb_s = [mb_per_epoch / t for t in epoch_s[name]]
            result["reader"][name] = {"epoch_s": stats(epoch_s[name]), "epoch_cpu_s": stats(epoch_cpu[name]),
                                      "decoded_mb_s": stats(mb_s), "file_mb_s": stats([file_mb / t for t in epoch_s[name]]),
                                      "decoded_mb_per_cpu_s": stats([mb_per_epoch / c for c in epoch_cpu[name]]),
                                      "over_raw_read": statistics.median(mb_s) / raw_mb_s}
        m, s, p, z = (result["modes"][n] for n in ("memory", "streaming", "streaming_per_row", "streaming_zarr"))
        rd = result["reader"]

        def reader_row(label, r):
            return (f"| {label} | {r['decoded_mb_s']['median']:.0f} | {r['file_mb_s']['median']:.0f} | "
                    f"{r['decoded_mb_per_cpu_s']['median']:.0f} | {r['over_raw_read']:.2f}x |")

        md = "\n".join([
            f"N = {args.clips} clips ({args.layers}x{args.tokens}x{args.dim} audio, MiniLM-shaped text), batch "
            f"{args.batch_size}, {args.threads} reader threads; identical batches: {identical}.",
            "",
            "| mode | epoch (wall) | epoch (process CPU) | samples/s | waiting for data |",
            "|---|---|---|---|---|",
            f"| in-memory | {fmt(m['epoch_s'])} | {fmt(m['epoch_cpu_s'])} | {m['samples_per_s']:.0f} | {100 * m['wait_fraction']['median']:.1f} % |",
            f"| streaming, shard files (now) | {fmt(s['epoch_s'])} | {fmt(s['epoch_cpu_s'])} | {s['samples_per_s']:.0f} | {100 * s['wait_fraction']['median']:.1f} % |",
            f"| streaming, per-row shard reader (before) | {fmt(p['epoch_s'])} | {fmt(p['epoch_cpu_s'])} | {p['samples_per_s']:.0f} | {100 * p['wait_fraction']['median']:.1f} % |",
            f"| streaming, zarr | {fmt(z['epoch_s'])} | {fmt(z['epoch_cpu_s'])} | {z['samples_per_s']:.0f} | {100 * z['wait_fraction']['median']:.1f} % |",
            "",
            "Streaming / in-memory (paired per repetition): "
            + "; ".join(f"{n}: wall **{fmt(result[f'{n}_over_memory_throughput'], 'x', 2)}**, CPU "
                        f"**{fmt(result[f'{n}_over_memory_cpu'], 'x', 2)}**"
                        for n in ("streaming", "streaming_per_row", "streaming_zarr")) + ".",
            "",
            f"Readers alone, one epoch: {mb_per_epoch:.0f} MB decoded from {file_mb:.0f} MB of shard-file frames.",
            "",
            "| reader | decoded MB/s (wall) | file MB/s (wall) | decoded MB per CPU s | / plain read |",
            "|---|---|---|---|---|",
            reader_row("shard files (now)", rd["streaming"]),
            reader_row("per-row shard reader (before)", rd["streaming_per_row"]),
            reader_row("zarr", rd["streaming_zarr"]),
            "",
            f"Plain sequential read of the same shard files ({raw['bytes'] / 2**20:.0f} MB): {raw_mb_s:.0f} MB/s "
            f"(page cache); disk {disk['direct_mb_s']['median']:.0f} MB/s (O_DIRECT). zstd alone, the same frames "
            f"in one thread: {floor['decoded_mb_s_wall']['median']:.0f} MB/s decoded (wall), "
            f"{floor['decoded_mb_s_cpu']['median']:.0f} MB per CPU s.",
        ])
        for src in (streaming, per_row, via_zarr):
            src.close()
        emit("streaming", result, md)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
