"""Benchmark 8b: does checkpoint selection decide the recipe's verdicts? Selection by validation R@10
instead of validation loss, on a finished `bench/recipe.py` work folder.

Needs the per-epoch checkpoints (`--keep-epoch-checkpoints`; the recipe run reported in BENCHMARKS.md
section 8 kept them). For every trained run it takes the epoch with the best validation R@10 (ties: the
earlier), scores it on both test caches with the recipe's protocol and compares each Table 4 step with
the same paired bootstrap as the recipe. Per-query scores land beside the runs and are reused.

    .venv/bin/python bench/recipe_selection.py --work bench_work
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [p for p in (str(BENCH.parent), str(BENCH)) if p not in sys.path]

import common  # noqa: E402,F401  (sets OMP_WAIT_POLICY before torch starts)
import numpy as np  # noqa: E402

from duetmc.ablate import run_dir, slug  # noqa: E402
from recipe import DATASETS, STEPS, _scores_for_dataset  # noqa: E402

TRAINED = ["tags only", "+ tag-to-caption", "+ View Dropout", "+ TextSwap"]


def best_epochs(run: Path) -> dict:
    from duetmc.run import read_metrics

    val = [r for r in read_metrics(run) if "val_R@10" in r]
    by_r10 = max(val, key=lambda r: (r["val_R@10"], -r["epoch"]))
    by_loss = min(val, key=lambda r: (r["val_loss"], r["epoch"]))
    return {"by_loss": by_loss["epoch"], "by_r10": by_r10["epoch"], "p_swap_at_r10": by_r10.get("p_swap", 0.0),
            "val_R@10_by_loss": by_loss["val_R@10"], "val_R@10_by_r10": by_r10["val_R@10"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="bench_work")
    ap.add_argument("--n-boot", type=int, default=10_000)
    args = ap.parse_args()
    from duetmc.evaluate import EvalConfig
    from recipe_stats import stack, step_statistics

    work = Path(args.work)
    seeds = len(list((work / "ablation" / slug("tags only")).glob("seed*")))
    caches = [work / "cache.zarr", work / "cache_heldout_sf.zarr"]
    epochs = {(c, s): best_epochs(run_dir(work / "ablation", c, s)) for c in TRAINED for s in range(seeds)}
    out = {"epochs": {f"{c} / seed{s}": e for (c, s), e in epochs.items()}, "steps": [], "R@10": {}}
    for cache, dataset in zip(caches, DATASETS):
        eval_cfg, no_probes = EvalConfig(split="test"), [False]
        scores, _ = _scores_for_dataset(work, cache, dataset, TRAINED, seeds, eval_cfg, no_probes,
                                        lambda c, s: f"checkpoints/epoch_{epochs[(c, s)]['by_r10']:03d}", "_r10sel")
        scores.update(_scores_for_dataset(work, cache, dataset, ["untrained heads"], seeds, eval_cfg, no_probes)[0])
        row = {"R@10_std": 0.0, "R@10_subset_std": 0.0}  # the unpaired MDE is not reported here
        for before, after in STEPS[1:4]:
            st = step_statistics(stack(scores[before]), stack(scores[after]), row, row, args.n_boot, seed=0)
            out["steps"].append({"dataset": dataset, "before": before, "after": after,
                                 **{k: st[k] for k in ("delta_R@10", "ci_low", "ci_high", "excludes_zero", "mde_paired")}})
        out["R@10"][dataset] = {c: float(np.mean([stack([s]).mean() for s in scores[c]])) for c in TRAINED}
    (work / "selection_by_r10.json").write_text(json.dumps(out, indent=1))
    print(report(out))


def report(out: dict) -> str:
    lines = ["| run | best val loss at epoch | best val R@10 at epoch (p_swap) | val R@10 there: by loss → by R@10 |",
             "|---|---|---|---|"]
    for name, e in out["epochs"].items():
        lines.append(f"| {name} | {e['by_loss']} | {e['by_r10']} ({e['p_swap_at_r10']:.2f}) "
                     f"| {e['val_R@10_by_loss']:.1f} → {e['val_R@10_by_r10']:.1f} |")
    lines += ["", "| step (checkpoints selected by val R@10) | test set | ΔR@10 | 95 % CI | excludes zero | MDE paired |",
              "|---|---|---|---|---|---|"]
    for s in out["steps"]:
        lines.append(f"| {s['before']} → {s['after']} | {s['dataset']} | {s['delta_R@10']:+.1f} "
                     f"| [{s['ci_low']:+.1f}, {s['ci_high']:+.1f}] | {'yes' if s['excludes_zero'] else 'no'} "
                     f"| {s['mde_paired']:.1f} |")
    lines += ["", "Test R@10 (mean of per-query scores over seeds): " + json.dumps(
        {d: {c: round(v, 1) for c, v in r.items()} for d, r in out["R@10"].items()})]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
