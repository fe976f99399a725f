"""Benchmark 7: peak RSS of training in streaming mode on caches larger than the memory budget.

Builds two MERT-330M-shaped caches (25 x T x 1024 float16 audio) of different sizes and trains one
epoch on each in a fresh process with `--memory-budget-gb` below both, so `mode=auto` streams. If
memory is bounded by the prefetch depth (and the reader's batch buffers), the two peaks match even
though the caches differ several-fold; in-memory mode on the same caches is the contrast, growing with
the cache. Peak RSS is the child's `ru_maxrss`.

    .venv/bin/python bench/peak_memory.py [--quick] [--clips 256 1024 4096] [--modes auto memory]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import build_cache, du_bytes, emit


def child(cache: str, mode: str, budget_gb: float, batch_size: int, out: str) -> None:
    """Train one epoch and print peak RSS (MB) and the mode used, as JSON; also the peak before
    validation starts, so the training loop's peak and validation's are told apart."""
    import resource

    import duetmc.train as train_module
    from duetmc.pairs import resolve_spec
    from duetmc.train import TrainConfig, train

    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    before_val, validate = [], train_module.validate

    def timed_validate(*a, **k):
        before_val.append(peak())
        return validate(*a, **k)

    train_module.validate = timed_validate
    cfg = TrainConfig(data=[resolve_spec(cache)], out=out, epochs=1, batch_size=batch_size, mode=mode,
                      memory_budget_gb=budget_gb, views=False, swap=False, p_cap=0.0,
                      keep_epoch_checkpoints=False, plots=False, progress=False)
    summary = train(cfg)
    print(json.dumps({"mode": summary["mode"], "peak_rss_mb": peak(), "peak_before_validation_mb": before_val[0]}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, nargs="+", default=[256, 1024, 4096])
    ap.add_argument("--tokens", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--budget-gb", type=float, default=0.02, help="memory budget given to the trainer")
    ap.add_argument("--modes", nargs="+", default=["auto", "memory"], choices=["auto", "memory"],
                    help="auto streams under the budget; drop memory for caches that do not fit in RAM")
    ap.add_argument("--work", help="build the caches here and keep them (reused when present); default: a temp folder")
    ap.add_argument("--quick", action="store_true", help="256 and 1024 clips")
    ap.add_argument("--child", nargs=4, metavar=("CACHE", "MODE", "BUDGET", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        cache, mode, budget, out = args.child
        child(cache, mode, float(budget), args.batch_size, out)
        return
    if args.quick:
        args.clips = [256, 1024]
    tmp = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="duetmc_bench7_", dir="/tmp"))
    try:
        result, rows = {"batch_size": args.batch_size, "budget_gb": args.budget_gb, "caches": {}}, []
        for n in args.clips:
            cache = tmp / f"cache{n}"
            if not (cache / "zarr.json").exists():
                shutil.rmtree(tmp / f"w{n}", ignore_errors=True)
                build_cache(cache, n, audio_encoder="mert-v1-330m", audio_layers=25, audio_dim=1024, tokens=args.tokens,
                            views=False, work=tmp / f"w{n}", splits=(0.1, 0.0))
            decoded_mb = n * 25 * args.tokens * 1024 * 2 / 2**20
            entry = {"clips": n, "decoded_audio_mb": decoded_mb, "on_disk_mb": du_bytes(cache) / 2**20}
            for mode in args.modes:
                out = tmp / f"run{n}{mode}"
                shutil.rmtree(out, ignore_errors=True)  # a kept --work folder: a fresh run each time
                proc = subprocess.run([sys.executable, __file__, "--batch-size", str(args.batch_size), "--child",
                                       str(cache), mode, str(args.budget_gb), str(out)],
                                      capture_output=True, text=True, env=os.environ)
                if proc.returncode:
                    print(proc.stderr[-3000:], file=sys.stderr)
                    raise SystemExit(proc.returncode)
                got = json.loads(proc.stdout.strip().splitlines()[-1])
                entry[got["mode"]] = got["peak_rss_mb"]
                entry[got["mode"] + "_before_validation"] = got["peak_before_validation_mb"]
                rows.append(f"| {n} | {decoded_mb:.0f} MB | {got['mode']} | {got['peak_before_validation_mb']:.0f} MB "
                            f"| {got['peak_rss_mb']:.0f} MB |")
            result["caches"][n] = entry
        batch_mb = args.batch_size * 25 * args.tokens * 1024 * 2 / 2**20
        md = (f"Budget {args.budget_gb} GB (below every cache), batch {args.batch_size} "
              f"({batch_mb:.0f} MB of decoded audio features per batch), prefetch depth 4 (trainer default).\n\n"
              "| clips | decoded audio features | mode | peak RSS before validation | peak RSS |\n|---|---|---|---|---|\n" + "\n".join(rows))
        emit("peak_memory", result, md)
    finally:
        if not args.work:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
