"""Benchmark 5: the evaluator's retrieval metrics for 10k queries x 10k clips (target: < 5 s on CPU).

Times `duetmc.metrics.retrieval_metrics` with the protocol's 10 subsets of 500 clips, the whole 10k x
10k set at once (`subset_size=None`), and music->text over the same subsets, on random unit
embeddings (the ranking cost does not depend on the values). Peak traced memory shows the bound
set by `max_bytes`.

    .venv/bin/python bench/evaluator.py [--quick] [--queries 10000] [--clips 10000]
"""

from __future__ import annotations

import argparse
import tracemalloc

import numpy as np

from common import emit, fmt, timeit


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--clips", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="2,000 x 2,000")
    args = ap.parse_args()
    if args.quick:
        args.queries = args.clips = 2000
    from duetmc import metrics

    rng = np.random.default_rng(0)
    items = rng.standard_normal((args.clips, args.dim), dtype=np.float32)
    # queries near their targets, so ranks span the whole range rather than all being ~N/2
    target = rng.integers(0, args.clips, args.queries)
    queries = items[target] + 8.0 * rng.standard_normal((args.queries, args.dim), dtype=np.float32)

    runs = {
        "text_to_music_10x500": lambda: metrics.retrieval_metrics(queries, items, target, 500, 10, 0),
        "text_to_music_full": lambda: metrics.retrieval_metrics(queries, items, target, None),
        "music_to_text_10x500": lambda: metrics.music_to_text_metrics(items, queries, target, 500, 10, 0),
    }
    result, lines = {"queries": args.queries, "clips": args.clips, "dim": args.dim}, []
    for name, fn in runs.items():
        t = timeit(fn, repeat=args.repeat)
        tracemalloc.start()
        out = fn()
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        result[name] = {"seconds": t, "peak_traced_mb": round(peak, 1), "R@10": out["R@10"], "n_queries": out["n_queries"]}
        lines.append(f"| {name} | {fmt(t)} | {peak:.0f} MB |")
    md = ("| metric call | time | peak traced memory |\n|---|---|---|\n" + "\n".join(lines))
    emit("evaluator", result, md)


if __name__ == "__main__":
    main()
