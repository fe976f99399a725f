"""One-command ablations: the paper's Table 4 rows and the Fig. 3 p_cap sweep, over seeds.

Each (configuration, seed) is an ordinary run directory under `out/`, so a finished run is reused when
the ablation is rerun, and any run can be inspected or evaluated on its own.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from duetmc import metrics
from duetmc.evaluate import PROBE_COLUMNS, EvalConfig, evaluate_index, probe_columns
from duetmc.pairs import DataSpec, PairIndex
from duetmc import run as rundir
from duetmc.config import TrainConfig
from duetmc.run import load_run
from duetmc.train import load_data, train

# Table 4: each row adds one idea to the previous one.
TABLE4_ROWS: list[tuple[str, dict]] = [
    ("tags only", {"p_cap": 0.0, "views": False, "swap": False}),
    ("+ tag-to-caption", {"p_cap": 0.5, "views": False, "swap": False}),
    ("+ View Dropout", {"p_cap": 0.5, "views": True, "swap": False}),
    ("+ TextSwap", {"p_cap": 0.5, "views": True, "swap": True}),
]
# Fig. 3: the probability of a caption rather than tags, with tag-to-caption alone (no View Dropout,
# no TextSwap), as in the paper; p_cap = 0 and 0.5 are then the first two Table 4 rows.
P_CAP_SWEEP = (0.0, 0.5, 1.0)


@dataclass
class AblateConfig:
    base: TrainConfig
    eval_caches: list[str] = field(default_factory=list)
    eval_names: list[str] = field(default_factory=list)  # table column names [default: cache folder names]
    seeds: int = 3
    p_cap_sweep: bool = True
    untrained_baseline: bool = True
    eval: EvalConfig = field(default_factory=EvalConfig)


def configurations(cfg: AblateConfig) -> list[tuple[str, dict]]:
    rows = list(TABLE4_ROWS)
    if cfg.p_cap_sweep:
        known = [o for _, o in rows]
        sweep = [{"p_cap": p, "views": False, "swap": False} for p in P_CAP_SWEEP]
        rows += [(f"p_cap={o['p_cap']:g}", o) for o in sweep if o not in known]
    return rows


def slug(name: str) -> str:
    """A configuration's (or dataset's) folder name: "+ View Dropout" -> "view_dropout"."""
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()


def run_dir(out: str | Path, config: str, seed: int) -> Path:
    """Where an ablation keeps the run of one configuration and seed."""
    return Path(out) / slug(config) / f"seed{seed}"


def run_ablation(cfg: AblateConfig, progress: bool = True) -> dict:
    """Train and evaluate every configuration for every seed; write table.md, results.json, bars.png."""
    out = Path(cfg.base.out)
    out.mkdir(parents=True, exist_ok=True)
    timings = {"load": 0.0, "train": 0.0, "eval": 0.0}
    t0 = time.perf_counter()
    data = load_data(cfg.base)
    spec = cfg.base.data[0]
    indices, source, _ = data
    trained_on = {ix.spec.cache: d for d, ix in enumerate(indices)}
    # an evaluation cache that is also a training cache reuses its loaded features
    eval_indices = [indices[trained_on[c]] if c in trained_on else PairIndex(DataSpec(c, spec.audio, spec.text))
                    for c in (cfg.eval_caches or [spec.cache])]
    timings["load"] += time.perf_counter() - t0
    rows: list[dict] = []
    notes: list[str] = []  # the evaluator's protocol warnings (small splits), once each
    runs_trained = 0
    configs = configurations(cfg)
    if cfg.untrained_baseline:
        configs = [("untrained heads", {})] + configs
    for name, overrides in configs:
        for seed in range(cfg.seeds):
            run = run_dir(out, name, seed)
            rcfg = dataclasses.replace(cfg.base, out=str(run), seed=seed, progress=False, **overrides)
            t = time.perf_counter()
            if name == "untrained heads":
                rcfg = dataclasses.replace(rcfg, epochs=0)
            if not (run / rundir.SUMMARY).exists():
                runs_trained += 1
                summary = train(rcfg, resume=(run / rundir.CONFIG).exists(), data=data)
                if summary["status"] != "finished":
                    return {"status": "preempted", "run": str(run)}
            timings["train"] += time.perf_counter() - t
            t = time.perf_counter()
            model, _ = load_run(run)
            for index in eval_indices:
                d = trained_on.get(index.spec.cache)
                res = evaluate_index(model, index, cfg.eval, *((source, d) if d is not None else ()))
                notes += [w for w in res["warnings"] if w not in notes]
                for lang, m in res["text_to_music"].items():
                    probes = probe_columns(res) if lang in ("en", "tags") else {}
                    rows.append({"config": name, "seed": seed, "dataset": _dataset_name(cfg, index, lang), **m,
                                 **probes, "queries": res["queries"]["by_lang"][lang]})
            timings["eval"] += time.perf_counter() - t
            if progress:
                last = rows[-1]
                print(f"{name:>18} seed {seed}: R@10 {last['R@10']:.1f}  MedR {last['MedR']:.0f}", flush=True)
    result = write_results(out, cfg, rows, notes, _chance(eval_indices, cfg.eval))
    result.update(timings=timings, runs_trained=runs_trained, seconds=time.perf_counter() - t0)
    (out / "results.json").write_text(json.dumps(result, indent=2))
    return result


def write_results(out: Path, cfg: AblateConfig, rows: list[dict], notes: list[str], chance: float) -> dict:
    """table.md (mean ± std over seeds, chance, queries used, probes, warnings) and bars.png."""
    table_rows = aggregate(rows)
    table = metrics.markdown_table(table_rows, metrics=("R@1", "R@5", "R@10", "MedR", *PROBE_COLUMNS))
    used = "; ".join(dict.fromkeys(f"{r['dataset']}: " + ", ".join(f"{n} {s}" for s, n in r["queries"].items())
                                   for r in rows))
    (out / "table.md").write_text(
        f"Text→music retrieval, mean ± std over {cfg.seeds} seed(s); subsets of {cfg.eval.subset_size} clips. "
        f"Chance R@10 ≈ {chance:.1f} %. Queries ({cfg.eval.queries}): {used}. Swap acc: % of TextSwap variants "
        "scored below the true text (chance ≈ 50); partial R@10: queries from one tag category.\n\n" + table
        + "".join(f"\nWarning: {w}\n" for w in notes))
    bar_chart(table_rows, out / "bars.png")
    return {"rows": rows, "table": table_rows, "chance_R@10": chance, "warnings": notes}


def _dataset_name(cfg: AblateConfig, index: PairIndex, lang: str) -> str:
    caches = cfg.eval_caches or [cfg.base.data[0].cache]
    position = caches.index(index.spec.cache)
    name = cfg.eval_names[position] if position < len(cfg.eval_names) else Path(index.spec.cache.rstrip("/")).stem
    return name if lang in ("en", "tags") else f"{name} [{lang}]"


def _chance(indices: list[PairIndex], cfg: EvalConfig) -> float:
    n = min(len(indices[0].items(cfg.split)) or 1, cfg.subset_size)
    return 100.0 * min(10, n) / n


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean and std over seeds for each (configuration, dataset)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["config"], r["dataset"]), []).append(r)
    out = []
    for (config, dataset), rs in groups.items():
        row = {"config": config, "dataset": dataset, "seeds": len(rs)}
        for key in ("R@1", "R@5", "R@10", "MedR", "MeanR", *PROBE_COLUMNS):
            if any(key not in r for r in rs):
                continue
            vals = np.array([r[key] for r in rs], dtype=float)
            row[key] = float(vals.mean())
            row[f"{key}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        out.append(row)
    return out


def bar_chart(table_rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = list(dict.fromkeys(r["config"] for r in table_rows))
    datasets = list(dict.fromkeys(r["dataset"] for r in table_rows))
    width = 0.8 / max(1, len(datasets))
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(configs)), 4))
    for j, d in enumerate(datasets):
        vals = [next((r for r in table_rows if r["config"] == c and r["dataset"] == d), None) for c in configs]
        x = np.arange(len(configs)) + j * width
        ax.bar(x, [v["R@10"] if v else 0 for v in vals], width, yerr=[v["R@10_std"] if v else 0 for v in vals],
               label=d, capsize=3)
    ax.set_xticks(np.arange(len(configs)) + width * (len(datasets) - 1) / 2)
    ax.set_xticklabels(configs, rotation=20, ha="right")
    ax.set(ylabel="R@10 (%)", title="Text→music R@10 by configuration")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

