"""Benchmark 4: wall time of `duetmc ablate` (Table 4's 4 rows x 1 seed, 30 epochs each) on a
1,000-clip musicnn + MiniLM cache. Target: < 2 min on 2 CPU cores.

The cache has the real layout (musicnn-mtt audio: 1 layer x T x 753; MiniLM text: 1 x max-length x
384, token lengths from the real MiniLM tokenizer) and the records a real `duetmc augment` makes
(tags, caption, 10 views, TextSwap negatives, template captioner), but random float16 values (see
bench/common.py). The ablation runs as the CLI does, in a subprocess, with early stopping off
(`--patience` = epochs) so every row trains all its epochs. Prints the CLI's per-phase breakdown
(load, train, eval) plus per-epoch training seconds.

    .venv/bin/python bench/ablation.py [--quick] [--epochs 30] [--work /tmp/duetmc_bench4]
        [--before CHECKOUT] [--bf16] [--cache quickstart/cache.zarr]

`--before` runs the previous commit's CLI (`git worktree add /tmp/duetmc_before HEAD~1`) on the same
cache in the same run, for the before/after ratio; `--cache` uses real features so that the R@ columns
of both sides can be compared.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from common import build_cache, emit, run_in_tree, stats

ROOT = Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--work", default="/tmp/duetmc_bench4", help="kept between runs: the cache is built once")
    ap.add_argument("--quick", action="store_true", help="3 epochs")
    ap.add_argument("--before", help="a checkout of the previous commit: its ablation runs too, same cache")
    ap.add_argument("--bf16", action="store_true", help="also run with --precision bf16")
    ap.add_argument("--cache", help="an existing cache with real features (e.g. quickstart/cache.zarr) instead of "
                                    "the random-valued one: results then mean something; human queries")
    args = ap.parse_args()
    if args.quick:
        args.epochs = 3
    work = Path(args.work)
    cache = Path(args.cache).resolve() if args.cache else work / f"cache_{args.clips}"
    t0 = time.perf_counter()
    if not args.cache and not (cache / "zarr.json").exists():
        shutil.rmtree(cache, ignore_errors=True)
        build_cache(cache, args.clips, audio_encoder="musicnn-mtt", audio_layers=1, audio_dim=753, tokens=4,
                    views=True, work=work)
    build_s = time.perf_counter() - t0
    sides = [("now", str(ROOT), [])]
    if args.bf16:
        sides.append(("now bf16", str(ROOT), ["--precision", "bf16"]))
    if args.before:  # the previous commit's CLI on the same cache, in the same run
        sides.insert(0, ("before", str(Path(args.before).resolve()), []))
    queries = "human" if args.cache else "all"  # the random-valued cache has template captions only
    results = {name: run_side(tree, extra + ["--queries", queries], cache, work, args.epochs)
               for name, tree, extra in sides}
    lines = []
    for name, r in results.items():
        lines += [f"### {name}", "", *r.pop("lines"), ""]
    if args.before:
        b, n = results["before"], results["now"]
        lines.append(f"**before / now: {b['wall_s'] / n['wall_s']:.2f}x by wall time, {b['cpu_s'] / n['cpu_s']:.2f}x by CPU time**")
    emit("ablation", {"clips": args.clips, "epochs": args.epochs, "build_cache_s": build_s, "sides": results},
         "\n".join(lines))


def run_side(tree: str, extra: list[str], cache: Path, work: Path, epochs: int) -> dict:
    """`duetmc ablate` from checkout `tree` (4 Table 4 rows + untrained heads, 1 seed, no early stop)."""
    out = work / f"ablate_{epochs}ep_{'now' if tree == str(ROOT) else 'before'}_{cache.parent.name}_{len(extra)}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "duetmc", "ablate", "--cache", str(cache), "--out", str(out), "--seeds", "1",
           "--no-sweep", "--epochs", str(epochs), "--patience", str(epochs), "--json", *extra]
    side = run_in_tree(cmd, tree)
    wall, cpu = side.wall_s, side.cpu_s
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
    lines = [f"`{' '.join(cmd[1:])}` (PYTHONPATH={tree}) wall time: **{wall:.1f} s**, CPU time {cpu:.1f} s.",
             f"Phases (CLI timings): load {t['load']:.1f} s, train {t['train']:.1f} s, eval {t['eval']:.1f} s; "
             f"process start-up and the rest {wall - sum(t.values()):.1f} s; epoch loops (steps only) ≈ {train_loop:.1f} s.",
             "", "| row | epoch (steps only) | samples/s | waiting for data | R@1 | R@10 | MedR |", "|---|---|---|---|---|---|---|"]
    from duetmc.ablate import slug  # the ablation's own run-folder names

    table = {slug(r["config"]): r for r in res["table"]}
    for row, r in per_run.items():
        e, m = r["epoch_train_s"], table.get(row, {})
        lines.append(f"| {row} | {e['median']:.2f} s | {r['samples_per_s']:.0f} | {100 * r['data_wait_frac']:.1f} % | "
                     f"{m.get('R@1', float('nan')):.2f} | {m.get('R@10', float('nan')):.2f} | {m.get('MedR', float('nan')):.1f} |")
    return {"command": " ".join(cmd), "tree": tree, "wall_s": wall, "cpu_s": cpu, "phases": t, "train_loop_s_est": train_loop,
            "runs": per_run, "table": res["table"], "lines": lines}


if __name__ == "__main__":
    main()
