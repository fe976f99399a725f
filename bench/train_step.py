"""Benchmark 4b: the training step alone, this tree against another checkout, side by side.

Same cache as benchmark 4 (1,000 musicnn + MiniLM-shaped clips, built by bench/ablation.py), the
same batches (epoch 2: before TextSwap; epoch 25: TextSwap at its full rate), the real `Trainer.step`.
Each configuration runs in its own process, and the processes alternate `--repeat` times, so a
machine whose load drifts affects both sides alike. Reports samples/s (wall and process CPU), the
step's FLOPs per sample (torch's FLOP counter: matmuls and attention) and achieved GFLOP/s against
the machine's matmul peak measured in the same run.

    .venv/bin/python bench/train_step.py --before /tmp/duetmc_before [--repeat 3] [--steps 2]

`--before` is a checkout of the previous commit (`git worktree add /tmp/duetmc_before HEAD~1`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from common import emit, run_in_tree, stats

CACHE = "/tmp/duetmc_bench4/cache_1000"
HERE = Path(__file__).resolve().parent.parent


def measure(precision: str, steps: int, threads: int) -> dict:
    """In a worker process: samples/s and FLOPs of the training step at two points of the recipe."""
    sys.path.insert(0, os.environ["DUETMC_BENCH_TREE"])  # ahead of the checkout common.py put first
    import torch
    from duetmc.config import TrainConfig
    from duetmc.pairs import resolve_spec
    from duetmc.sampler import epoch_batches
    from duetmc.train import Trainer, p_swap

    assert Path(sys.modules["duetmc"].__file__).resolve().is_relative_to(Path(os.environ["DUETMC_BENCH_TREE"]).resolve())
    torch.set_num_threads(threads)
    kw = {} if precision == "default" else {"precision": precision}
    cfg = TrainConfig(data=[resolve_spec(CACHE)], out=f"/tmp/duetmc_step_{os.getpid()}", epochs=30,
                      batch_size=1024, plots=False, progress=False, **kw)
    trainer = Trainer(cfg)
    trainer.setup()
    trainer.net.train()
    out = {}
    for epoch in (2, 25):
        batches = epoch_batches(trainer.indices, trainer.sampler, cfg.seed, epoch, cfg.batch_size, p_swap(epoch, cfg))
        data = [trainer._fetch(b) for b in batches]
        flops = _flops(trainer, batches[0], data[0])
        n, c0, t0 = 0, time.process_time(), time.perf_counter()
        for _ in range(steps):
            for b, d in zip(batches, data):
                trainer.step(b, d, len(batches))
                n += len(b.ds)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        out[f"epoch{epoch}"] = {"samples": n, "wall_s": wall, "cpu_s": cpu, "samples_per_s": n / wall,
                                "gflop_per_sample": flops / len(batches[0].ds) / 1e9,
                                "gflop_per_s": flops / len(batches[0].ds) * n / wall / 1e9}
    return out


def _flops(trainer, spec, batch) -> float:
    """FLOPs of one step (forward, loss and backward; torch counts matmuls and attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        trainer.step(spec, batch, 1)
    return float(counter.get_total_flops())


def matmul_peak(threads: int) -> dict:
    """GFLOP/s of a large fp32 and bf16 matmul with `threads` threads: the machine's ceiling."""
    import torch

    torch.set_num_threads(threads)
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(8192, 1024, dtype=dtype), torch.randn(1024, 1024, dtype=dtype)
        for _ in range(3):
            a @ b
        t0 = time.perf_counter()
        for _ in range(10):
            a @ b
        out[name] = 2 * 8192 * 1024 * 1024 * 10 / (time.perf_counter() - t0) / 1e9
    return out


def _worker(tree: str, args: list[str]) -> dict:
    side = run_in_tree([sys.executable, __file__, "--worker", *args], tree, DUETMC_BENCH_TREE=tree,
                       OMP_WAIT_POLICY="PASSIVE")
    return json.loads(side.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", required=False, help="checkout of the previous commit")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2, help="passes over the epoch's batches per measurement")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--worker", nargs="*")
    args = ap.parse_args()
    if args.worker is not None:
        kind, *rest = args.worker
        result = matmul_peak(args.threads) if kind == "peak" else measure(rest[0], args.steps, args.threads)
        print(json.dumps(result))
        return
    if not Path(CACHE, "zarr.json").exists():
        raise SystemExit(f"{CACHE} is missing: run `.venv/bin/python bench/ablation.py --quick` once to build it")
    sides = [("now fp32", str(HERE), "fp32"), ("now bf16", str(HERE), "bf16")]
    if args.before:
        sides.insert(0, ("before", str(Path(args.before).resolve()), "default"))
    runs: dict = {name: [] for name, _, _ in sides}
    peaks = []
    for _ in range(args.repeat):
        peaks.append(_worker(str(HERE), ["peak", "--threads", str(args.threads)]))
        for name, tree, precision in sides:
            runs[name].append(_worker(tree, ["step", precision, "--steps", str(args.steps), "--threads", str(args.threads)]))
    emit("train_step", {"command": " ".join(sys.argv), "runs": runs, "peaks": peaks}, _table(runs, peaks))


def _table(runs: dict, peaks: list[dict]) -> str:
    peak = {k: stats([p[k] for p in peaks]) for k in ("fp32", "bf16")}
    lines = [f"Matmul peak (8192x1024 @ 1024x1024): fp32 {peak['fp32']['median']:.0f} GFLOP/s, "
             f"bf16 {peak['bf16']['median']:.0f} GFLOP/s.", "",
             "| side | recipe point | samples/s (wall) | CPU s per 1k samples | GFLOP/sample | GFLOP/s | vs before |",
             "|---|---|---|---|---|---|---|"]
    base = runs.get("before")
    for name, reps in runs.items():
        for point in ("epoch2", "epoch25"):
            sps = stats([r[point]["samples_per_s"] for r in reps])
            cpu = stats([1000 * r[point]["cpu_s"] / r[point]["samples"] for r in reps])
            ratio = ""
            if base:  # ratio of medians of per-repeat pairs: each pair ran back to back
                pairs = [r[point]["samples_per_s"] / b[point]["samples_per_s"] for r, b in zip(reps, base)]
                ratio = f"{stats(pairs)['median']:.2f}x (min {stats(pairs)['min']:.2f})"
            lines.append(f"| {name} | {point} | {sps['median']:.0f} | {cpu['median']:.1f} | "
                         f"{reps[0][point]['gflop_per_sample']:.3f} | "
                         f"{stats([r[point]['gflop_per_s'] for r in reps])['median']:.0f} | {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
