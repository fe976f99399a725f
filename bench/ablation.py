"""Benchmark 4: wall time of `duetmc ablate` (Table 4's 4 rows x 1 seed, 30 epochs each) on a
1,000-clip musicnn + MiniLM cache. Target: < 2 min on 2 CPU cores.

The cache has the real layout (musicnn-mtt audio: 1 layer x T x 753; MiniLM text: 1 x max-length x
384, token lengths from the real MiniLM tokenizer) and the records a real `duetmc augment` makes
(tags, caption, 10 views, TextSwap negatives, template captioner), but random float16 values (see
bench/common.py). The ablation runs as the CLI does, in a subprocess, with early stopping off
(`--patience` = epochs) so every row trains all its epochs. Prints the CLI's per-phase breakdown
(load, train, eval) plus per-epoch training seconds.

    .venv/bin/python bench/ablation.py [--quick] [--epochs 30] [--work /tmp/duetmc_bench4]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common import build_cache, emit, stats


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--work", default="/tmp/duetmc_bench4", help="kept between runs: the cache is built once")
    ap.add_argument("--quick", action="store_true", help="3 epochs")
    args = ap.parse_args()
    if args.quick:
        args.epochs = 3
    work = Path(args.work)
    cache = work / f"cache_{args.clips}"
    t0 = time.perf_counter()
    if not (cache / "zarr.json").exists():
        shutil.rmtree(cache, ignore_errors=True)
        build_cache(cache, args.clips, audio_encoder="musicnn-mtt", audio_layers=1, audio_dim=753, tokens=4,
                    views=True, work=work)
    build_s = time.perf_counter() - t0
    out = work / f"ablate_{args.epochs}ep"
    shutil.rmtree(out, ignore_errors=True)
    duetmc = Path(sys.executable).with_name("duetmc")
    cmd = [str(duetmc), "ablate", "--cache", str(cache), "--out", str(out), "--seeds", "1", "--no-sweep",
           "--epochs", str(args.epochs), "--patience", str(args.epochs), "--queries", "all", "--json"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(proc.returncode)
    res = json.loads((out / "results.json").read_text())
    per_run = {}
    for run in sorted(out.glob("*/seed0")):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] \
            if (run / "metrics.jsonl").exists() else []
        if rows:
            per_run[run.parent.name] = {"epochs": len(rows), "epoch_train_s": stats([r["seconds"] for r in rows]),
                                        "samples_per_s": float(np.median([r["samples_per_s"] for r in rows])),
                                        "data_wait_frac": float(np.median([r["data_wait_frac"] for r in rows]))}
    t = res["timings"]
    train_loop = sum(r["epoch_train_s"]["median"] * r["epochs"] for r in per_run.values())
    result = {"command": " ".join(cmd), "clips": args.clips, "epochs": args.epochs, "build_cache_s": build_s,
              "wall_s": wall, "phases": t, "train_loop_s_est": train_loop, "runs": per_run,
              "table": res["table"]}
    lines = [f"`duetmc ablate` wall time: **{wall:.1f} s** ({args.epochs} epochs, 4 rows + untrained baseline, 1 seed).",
             f"Phases (CLI timings): load {t['load']:.1f} s, train {t['train']:.1f} s, eval {t['eval']:.1f} s; "
             f"process start-up and the rest {wall - sum(t.values()):.1f} s.",
             f"Of train: epoch loops (steps only) ≈ {train_loop:.1f} s; the rest is per-epoch validation and "
             "checkpoints.", "", "| row | epoch (steps only) | samples/s | waiting for data |", "|---|---|---|---|"]
    for name, r in per_run.items():
        e = r["epoch_train_s"]
        lines.append(f"| {name} | {e['median']:.2f} s (min {e['min']:.2f}, max {e['max']:.2f}) | "
                     f"{r['samples_per_s']:.0f} | {100 * r['data_wait_frac']:.1f} % |")
    emit("ablation", result, "\n".join(lines))


if __name__ == "__main__":
    main()
