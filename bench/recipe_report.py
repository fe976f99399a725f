"""The recipe benchmark's report: markdown tables, the ablation bar chart and the training curves."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np


def _pm(row: dict, key: str, digits: int = 1) -> str:
    return f"{row[key]:.{digits}f} ± {row[key + '_std']:.{digits}f}"


def results_table(summary: dict) -> str:
    lines = ["| configuration | test set | R@1 | R@5 | R@10 | R@10 95 % CI (queries × seeds) | MedR |",
             "|---|---|---|---|---|---|---|"]
    for r in summary["table"]:
        lo, hi = r["R@10_ci"]
        lines.append(f"| {r['config']} | {r['dataset']} | {_pm(r, 'R@1')} | {_pm(r, 'R@5')} | {_pm(r, 'R@10')} "
                     f"| [{lo:.1f}, {hi:.1f}] | {_pm(r, 'MedR', 0)} |")
    return "\n".join(lines)


def steps_table(summary: dict) -> str:
    lines = ["| step | test set | ΔR@10 | 95 % CI (paired bootstrap) | excludes zero | MDE paired | MDE unpaired "
             "| paper's step |", "|---|---|---|---|---|---|---|---|"]
    for s in summary["steps"]:
        lines.append(f"| {s['before']} → {s['after']} | {s['dataset']} | {s['delta_R@10']:+.1f} "
                     f"| [{s['ci_low']:+.1f}, {s['ci_high']:+.1f}] | {'yes' if s['excludes_zero'] else 'no'} "
                     f"| {s['mde_paired']:.1f} | {s['mde_unpaired']:.1f} | {s['paper_step']} |")
    return "\n".join(lines)


def write_report(summary: dict, path: Path) -> str:
    cfg = summary["config"]
    first = summary["steps"][0] if summary["steps"] else None
    n_queries = first["n_queries"] if first else 0
    parts = [
        f"# Recipe benchmark (scale {cfg['scale']}): {cfg['seeds']} seed(s), {cfg['epochs']} epochs, "
        f"{cfg['audio_encoder']} + {cfg['text_encoder']}",
        f"Text→music retrieval on human-style captions ({n_queries} queries), 10 random 500-clip subsets "
        f"(one subset when a split has ≤ 500 clips). Chance R@10 ≈ {summary['chance_R@10']:.1f} %. "
        "R@k: mean ± std across seeds; CI: percentile bootstrap over queries and seeds.",
        results_table(summary),
        "## Steps: does each idea help, and could this benchmark see it?",
        "Paired bootstrap over queries and seeds (the same draw for both configurations). MDE: the "
        "smallest R@10 difference detected with 80 % power at α = 0.05 — *paired* from this comparison's "
        "bootstrap SE, *unpaired* (conservative) from the seed spread plus one 500-clip subset's spread.",
        steps_table(summary),
    ]
    if summary.get("probes_available"):
        parts += ["## Probes (issue 11)", probes_table(summary),
                  "Every probe number per seed:", "```json\n" + json.dumps(summary["probes"], indent=1, default=float) + "\n```"]
    else:
        parts += ["Probes (swap accuracy, partial-query retrieval): the evaluator on this checkout does not "
                  "offer them yet; bench/recipe.py reports them once `evaluate_index` returns them."]
    parts.append(f"Plots: {', '.join(summary.get('plots', []))}. Wall time {summary['seconds']:.0f} s.")
    text = "\n\n".join(parts) + "\n"
    path.write_text(text)
    return text


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def headline_probes(probes: dict) -> dict[str, float]:
    """The two probe numbers a reader compares across configurations: swap accuracy (% of one-attribute
    variants scored below the true text, chance 50) and partial-query R@10 (mean over tag categories)."""
    out = {}
    swap = probes.get("swap_accuracy") or {}
    if "mean" in swap:
        out["swap acc"] = float(swap["mean"])
    categories = (probes.get("partial_query") or {}).get("per_category") or {}
    if categories:
        out["partial R@10"] = float(np.mean([c["R@10"] for c in categories.values()]))
    return out


def probe_means(summary: dict, dataset: str) -> dict[str, dict[str, float]]:
    """config -> headline probe -> mean over seeds."""
    acc: dict[str, dict[str, list[float]]] = {}
    for name, entry in summary.get("probes", {}).get(dataset, {}).items():
        config = name.rsplit(" / seed", 1)[0]
        for metric, v in headline_probes(entry.get("probes", {})).items():
            acc.setdefault(config, {}).setdefault(metric, []).append(v)
    return {c: {m: float(np.mean(v)) for m, v in ms.items()} for c, ms in acc.items()}


def probes_table(summary: dict) -> str:
    lines = ["| configuration | test set | swap acc (chance 50) | partial R@10 |", "|---|---|---|---|"]
    for dataset in summary.get("probes", {}):
        for config, m in probe_means(summary, dataset).items():
            lines.append(f"| {config} | {dataset} | {m.get('swap acc', float('nan')):.1f} "
                         f"| {m.get('partial R@10', float('nan')):.1f} |")
    return "\n".join(lines)


def _probe_panel(ax, summary: dict, configs: list[str]) -> None:
    series = [(metric, dataset, probe_means(summary, dataset)) for metric in ("swap acc", "partial R@10")
              for dataset in summary.get("probes", {})]
    width = 0.8 / max(1, len(series))
    for j, (metric, dataset, means) in enumerate(series):
        ax.bar(np.arange(len(configs)) + j * width, [means.get(c, {}).get(metric, np.nan) for c in configs], width,
               label=f"{metric}, {dataset}", hatch="//" if metric == "partial R@10" else None)
    ax.axhline(50, color="k", ls=":", lw=1, label="swap acc chance (50 %)")
    ax.set_xticks(np.arange(len(configs)) + width * (len(series) - 1) / 2)
    ax.set_xticklabels(configs, rotation=20, ha="right")
    ax.set(ylabel="%", title="Probes (mean over seeds)", ylim=(0, 125))
    ax.legend(fontsize=7, ncol=2, loc="upper center")


def recipe_bars(summary: dict, path: Path) -> Path:
    """R@10 per configuration and test set with bootstrap 95 % CIs and the chance level; the probes
    in a panel beside it when the evaluator reports them."""
    plt = _plt()
    rows = summary["table"]
    configs = list(dict.fromkeys(r["config"] for r in rows))
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    width = 0.8 / max(1, len(datasets))
    probes = summary.get("probes_available")
    fig, axes = plt.subplots(1, 2 if probes else 1, figsize=(max(6, 1.4 * len(configs)) * (2 if probes else 1), 4),
                             squeeze=False)
    ax = axes[0][0]
    if probes:
        _probe_panel(axes[0][1], summary, configs)
    for j, d in enumerate(datasets):
        sel = [next(r for r in rows if r["config"] == c and r["dataset"] == d) for c in configs]
        mid = np.array([r["R@10_query_mean"] for r in sel])
        err = np.array([[m - r["R@10_ci"][0], r["R@10_ci"][1] - m] for m, r in zip(mid, sel)]).T
        ax.bar(np.arange(len(configs)) + j * width, mid, width, yerr=err, capsize=3, label=d)
    ax.axhline(summary["chance_R@10"], color="k", ls="--", lw=1, label=f"chance ({summary['chance_R@10']:.1f} %)")
    ax.set_xticks(np.arange(len(configs)) + width * (len(datasets) - 1) / 2)
    ax.set_xticklabels(configs, rotation=20, ha="right")
    ax.set(ylabel="R@10 (%)", title="Text→music R@10, bootstrap 95 % CI over queries and seeds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def curves_plot(run: Path, path: Path) -> Path:
    """Loss and validation R@10 over epochs, with the warm-up, the TextSwap schedule and the best epoch."""
    plt = _plt()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    from duetmc.run import read_config

    conf = dataclasses.asdict(read_config(run)[0])
    best = json.loads((run / "summary.json").read_text()).get("best_epoch")
    ep = np.array([r["epoch"] for r in rows])
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    top.plot(ep, [r["train_loss"] for r in rows], label="train loss")
    val = [(r["epoch"], r["val_loss"]) for r in rows if "val_loss" in r]
    if val:
        top.plot(*zip(*val), label="val loss")
    r10 = [(r["epoch"], r["val_R@10"]) for r in rows if "val_R@10" in r]
    if r10:
        twin = top.twinx()
        twin.plot(*zip(*r10), color="tab:green", marker=".", label="val R@10")
        twin.set_ylabel("val R@10 (%)")
        twin.legend(loc="upper center", fontsize=8)
    bottom.plot(ep, [r["p_swap"] for r in rows], color="tab:red", label="p_swap (TextSwap)")
    bottom.plot(ep, np.array([r["lr"] for r in rows]) / max(r["lr"] for r in rows) * max(1e-9, conf["swap_max"]),
                color="tab:gray", ls=":", label="lr (scaled)")
    for ax in (top, bottom):
        ax.axvspan(-0.5, conf["warmup_epochs"] - 0.5, color="orange", alpha=0.15, label="lr warm-up")
        ax.axvline(conf["swap_warmup_epochs"] - 0.5, color="tab:red", ls="--", lw=1, label="TextSwap starts")
        if best is not None:
            ax.axvline(best, color="k", lw=1.5, label=f"best epoch ({best})")
    top.set(ylabel="InfoNCE loss", title=f"Training curves: {run.parent.name}/{run.name}")
    bottom.set(xlabel="epoch", ylabel="p_swap")
    top.legend(loc="upper right", fontsize=8)
    bottom.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
