"""Benchmark 8: peak RSS of featurizing one long 44.1 kHz stereo track.

Writes a MINUTES-long 44.1 kHz stereo FLAC in blocks (tone plus noise), then featurizes it whole with
`duetmc featurize audio --encoder tiny-audio` (24 kHz, 10 s windows) in a fresh process per code
version and reports that process's peak RSS (`ru_maxrss` of the child). Decoding and resampling stream
in blocks, so the peak should not grow with the track; `--also REPO_DIR` runs another checkout's code on
the same file for a side-by-side number (e.g. the commit before block decoding).

    .venv/bin/python bench/featurize_memory.py --minutes 60 [--also /tmp/old-checkout [--only-also]]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent


def write_track(path: Path, minutes: float, sr: int = 44100) -> None:
    rng = np.random.default_rng(0)
    block = sr * 10
    with sf.SoundFile(str(path), "w", sr, 2, "PCM_16", format="FLAC") as f:
        for start in range(0, int(minutes * 60 * sr), block):
            t = (start + np.arange(block)) / sr
            x = 0.3 * np.sin(2 * np.pi * 220.0 * t)[:, None] + 0.05 * rng.standard_normal((block, 2))
            f.write(x.astype(np.float32))


def featurize(code: Path, manifest: Path, cache: Path) -> dict:
    """Run the CLI of the checkout at `code` in a child process; its peak RSS and wall time."""
    env = dict(os.environ, PYTHONPATH=str(code))
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "duetmc", "featurize", "audio", str(manifest), "--cache", str(cache),
                           "--encoder", "tiny-audio", "--workers", "2", "--json"], env=env, cwd=str(code), capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode != 0:
        return {"code": str(code), "error": proc.stderr.strip().splitlines()[-1:], "seconds": round(seconds, 1)}
    out = json.loads(proc.stdout)
    # ru_maxrss of children is the largest of any child so far: run the larger consumer last or alone
    return {"code": str(code), "peak_rss_mb": round(max(peak, before) / 1024), "seconds": round(seconds, 1),
            "done": out["done"], "failed": out["failed"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--also", type=Path, default=None, help="another checkout to measure on the same file (runs last)")
    ap.add_argument("--only-also", action="store_true", help="measure only the --also checkout")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="duetmc_bench8_", dir="/tmp") as tmp:
        tmp = Path(tmp)
        track = tmp / "long.flac"
        write_track(track, args.minutes)
        manifest = tmp / "m.jsonl"
        manifest.write_text(json.dumps({"id": "long", "audio": str(track)}) + "\n")
        results = {"minutes": args.minutes, "file_mb": round(track.stat().st_size / 1e6, 1),
                   "runs": [] if args.only_also else [featurize(REPO, manifest, tmp / "cache")]}
        if args.also is not None:
            results["runs"].append(featurize(args.also, manifest, tmp / "cache_also"))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
