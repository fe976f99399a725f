"""Benchmark 3: featurize throughput. `duetmc featurize audio` (batched, decode and resample in worker
threads ahead of the encoder) against a naive per-clip loop (decode, resample, forward, write, one clip
at a time) into the same cache layout, for tiny-audio and musicnn. Target: >= 2x the naive loop.

Input: N synthetic 10 s clips, 44.1 kHz stereo FLAC (tones plus noise), so both paths decode,
downmix and resample like real files. Each repetition writes a fresh cache; both timings include
planning (header probes, array creation) and the encoder load. Reports clips/s, seconds of audio per
second, and the largest difference between the two paths' features.

    .venv/bin/python bench/featurize.py [--quick] [--clips 32] [--batch-sizes 8 1] [--encoders tiny-audio musicnn-mtt]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np

from common import emit, fmt, ratio, timeit


def write_clips(folder: Path, n: int, sr: int = 44100, seconds: float = 10.0) -> Path:
    import soundfile as sf

    from duetmc.manifest import Item, write_manifest

    rng = np.random.default_rng(0)
    t = np.arange(int(sr * seconds)) / sr
    items = []
    for i in range(n):
        f0 = 110 * 2 ** (rng.integers(0, 36) / 12)
        x = sum(np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6)) / h for h in range(1, 5))
        x = 0.2 * x * (1 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t))
        stereo = np.stack([x, np.roll(x, 100)], 1) + 0.01 * rng.standard_normal((len(t), 2))
        path = folder / f"clip{i:04d}.flac"
        sf.write(str(path), stereo.astype(np.float32), sr)
        items.append(Item(f"clip{i:04d}", path, tags={"genre": ["rock"]}, split="train"))
    return write_manifest(items, folder / "manifest.jsonl")


def naive(manifest: Path, cache: Path, encoder_name: str, tokens: int = 4):
    """One clip at a time: decode, resample, forward, time-pool, write its row."""
    import torch

    from duetmc.featurize.audio import AudioFeaturizeConfig, load_audio, prepare_audio_cache, time_pool

    cfg = AudioFeaturizeConfig(manifest=str(manifest), cache=str(cache), encoder=encoder_name, tokens=tokens,
                               progress=False)
    group, items, encoder, _ = prepare_audio_cache(cfg)
    layers = group.attrs["layers"]
    features, done = group["features"], group["done"]
    for r, item in enumerate(items):  # 10 s clips: one window per item
        wav = load_audio(item, encoder.sample_rate)
        hidden = encoder(torch.from_numpy(wav)[None])[:, layers]
        features[r] = time_pool(hidden.float(), tokens)[0].numpy().astype(np.float16)
        done[r] = True
    return group


def batched(manifest: Path, cache: Path, encoder_name: str, batch_size: int, workers: int, tokens: int = 4):
    from duetmc.featurize.audio import AudioFeaturizeConfig, featurize_audio

    cfg = AudioFeaturizeConfig(manifest=str(manifest), cache=str(cache), encoder=encoder_name, tokens=tokens,
                               batch_size=batch_size, workers=workers, progress=False)
    summary = featurize_audio(cfg)
    assert summary.failed == 0, summary.failures
    return summary


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=32)
    ap.add_argument("--encoders", nargs="+", default=["tiny-audio", "musicnn-mtt"])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 1], help="featurizer batch sizes (8: CLI default)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="16 clips")
    args = ap.parse_args()
    if args.quick:
        args.clips = 16
    import zarr

    tmp = Path(tempfile.mkdtemp(prefix="duetmc_bench3_", dir="/tmp"))
    try:
        manifest = write_clips(tmp, args.clips)
        result, lines = {"clips": args.clips, "clip_seconds": 10.0, "input": "44.1 kHz stereo FLAC", "encoders": {}}, []
        counter = [0]

        def fresh():
            counter[0] += 1
            return tmp / f"cache{counter[0]}"

        for name in args.encoders:
            t_naive = timeit(lambda: naive(manifest, fresh(), name), repeat=args.repeat)
            ref = counter[0]
            entry = {"naive_s": t_naive, "naive_clips_per_s": args.clips / t_naive["median"], "featurizer": {}}
            for bs in args.batch_sizes:
                t_batch = timeit(lambda: batched(manifest, fresh(), name, bs, args.workers), repeat=args.repeat)
                a = zarr.open_group(str(tmp / f"cache{ref}"), mode="r")
                b = zarr.open_group(str(tmp / f"cache{counter[0]}"), mode="r")
                key = next(iter(a["audio"].group_keys()))
                diff = float(np.abs(a["audio"][key]["features"][:].astype(np.float32)
                                    - b["audio"][key]["features"][:].astype(np.float32)).max())
                speedup = ratio(t_naive, t_batch)
                entry["featurizer"][f"batch{bs}"] = {
                    "seconds": t_batch, "speedup": speedup, "clips_per_s": args.clips / t_batch["median"],
                    "audio_s_per_s": 10 * args.clips / t_batch["median"], "max_abs_feature_diff": diff}
                lines.append(f"| {name} | {fmt(t_naive)} ({args.clips / t_naive['median']:.1f} clips/s) | {bs} | {fmt(t_batch)} "
                             f"({args.clips / t_batch['median']:.1f} clips/s, {10 * args.clips / t_batch['median']:.0f} s audio/s) "
                             f"| **{speedup:.2f}x** | {diff:.2g} |")
            result["encoders"][name] = entry
            for i in range(counter[0]):
                shutil.rmtree(tmp / f"cache{i + 1}", ignore_errors=True)
        md = (f"{args.clips} clips of 10 s, 44.1 kHz stereo FLAC; {args.workers} "
              "decode workers. GPU bf16: not measured (no GPU lent).\n\n"
              "| encoder | naive per-clip loop | featurizer batch | featurizer | speed-up | max feature diff |\n|---|---|---|---|---|---|\n"
              + "\n".join(lines))
        emit("featurize", result, md)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
