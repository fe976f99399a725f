"""The listening study's results: win, tie and loss rates per system pair, per dataset and overall.

A pair is reported in a fixed order (the two system names sorted, "truth" always second): "win" means
the first system's clip was preferred. Intervals are percentile bootstrap 95 % intervals that resample
trials, not single judgements, because the judgements of one trial share its prompt and clips.
Agreement between participants is measured on trials that at least two people judged: the share of
agreeing pairs of judgements and Fleiss' kappa (categories A, B, tie; raters per trial may vary).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np

from duetmc.errors import PathError, path_error
from duetmc.study import CHOICES, TRUTH, answers, connect, read_meta

N_BOOT = 2000


def _pair(a: str, b: str) -> tuple[str, str]:
    if a == TRUTH or (b != TRUTH and b < a):
        return b, a
    return a, b


def _outcome(ans: dict) -> tuple[tuple[str, str], str]:
    """The answer's pair and its result for the pair's first system: win, tie or loss."""
    pair = _pair(ans["system_a"], ans["system_b"])
    if ans["choice"] == "tie":
        return pair, "tie"
    chosen = ans["system_a"] if ans["choice"] == "A" else ans["system_b"]
    return pair, "win" if chosen == pair[0] else "loss"


def bootstrap_rates(per_trial: np.ndarray, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """[3, 2] lower/upper 95 % bounds of the win, tie and loss rates; `per_trial` is [trials, 3] counts.

    Trials are resampled with replacement; a rate is the resample's summed count over its judgements."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(per_trial), size=(n_boot, len(per_trial)))
    sums = per_trial[picks].sum(axis=1).astype(float)  # [n_boot, 3]
    rates = sums / np.maximum(sums.sum(axis=1, keepdims=True), 1)
    return np.percentile(rates, [2.5, 97.5], axis=0).T


def _summary(per_trial: dict[int, np.ndarray], seed: int) -> dict:
    counts = np.array(list(per_trial.values()))
    total = counts.sum(axis=0)
    n = int(total.sum())
    ci = bootstrap_rates(counts, seed=seed)
    out = {"judgements": n, "trials": len(per_trial)}
    for j, name in enumerate(("win", "tie", "loss")):
        out[name] = int(total[j])
        out[f"{name}_rate"] = float(total[j] / n)
        out[f"{name}_ci"] = [float(ci[j, 0]), float(ci[j, 1])]
    return out


def pair_table(rows: list[dict], seed: int = 0) -> list[dict]:
    """One row per (system pair, dataset), plus each pair over all datasets ("all")."""
    groups: dict[tuple, dict[int, np.ndarray]] = defaultdict(dict)
    for ans in rows:
        pair, result = _outcome(ans)
        for dataset in (ans["dataset"], "all"):
            counts = groups[(pair, dataset)].setdefault(ans["trial"], np.zeros(3, dtype=np.int64))
            counts[("win", "tie", "loss").index(result)] += 1
    table = []
    for (pair, dataset), per_trial in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] == "all", kv[0][1])):
        table.append({"system": pair[0], "versus": pair[1], "dataset": dataset, **_summary(per_trial, seed)})
    return table


def agreement(rows: list[dict]) -> dict:
    """Pairwise agreement rate and Fleiss' kappa over trials with two or more judgements."""
    by_trial: dict[int, list[str]] = defaultdict(list)
    for ans in rows:
        by_trial[ans["trial"]].append(ans["choice"])
    shared = {t: c for t, c in by_trial.items() if len(c) >= 2}
    if not shared:
        return {"shared_trials": 0, "pairwise_agreement": None, "fleiss_kappa": None}
    counts = np.array([[c.count(k) for k in CHOICES] for c in shared.values()], dtype=float)
    n_i = counts.sum(axis=1)
    p_i = ((counts ** 2).sum(axis=1) - n_i) / (n_i * (n_i - 1))  # agreeing pairs / all pairs, per trial
    pairs = n_i * (n_i - 1) / 2
    agree = float((p_i * pairs).sum() / pairs.sum())
    p_bar = float(p_i.mean())
    p_j = counts.sum(axis=0) / counts.sum()
    p_e = float((p_j ** 2).sum())
    kappa = None if p_e >= 1 else (p_bar - p_e) / (1 - p_e)
    return {"shared_trials": len(shared), "judgements": int(n_i.sum()), "pairwise_agreement": agree,
            "fleiss_kappa": kappa}


def report(study: str | Path, seed: int = 0) -> dict:
    db = connect(study)
    try:
        rows, meta = answers(db), read_meta(db)
        n_trials = db.execute("SELECT COUNT(*) FROM trials").fetchone()[0]
        n_people = db.execute("SELECT COUNT(*) FROM participants").fetchone()[0]
    finally:
        db.close()
    return {"study": str(study), "systems": meta.get("systems", []), "trials": n_trials,
            "participants": n_people, "judgements": len(rows), "pairs": pair_table(rows, seed) if rows else [],
            "agreement": agreement(rows)}


def write_csv(study: str | Path, out: str | Path) -> int:
    """Every answer, one row each, with its trial's prompt, systems and clips."""
    db = connect(study)
    try:
        rows = answers(db)
    finally:
        db.close()
    fields = ["participant", "trial", "dataset", "prompt", "prompt_clip", "system_a", "clip_a", "system_b",
              "clip_b", "choice", "answered"]
    try:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
    except OSError as exc:
        raise path_error(exc, "writing the CSV export") from exc
    return len(rows)


def plot(result: dict, out: str | Path) -> Path:
    """Stacked win/tie/loss bars per pair and dataset, with the win rate's 95 % interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["pairs"]
    if not rows:
        raise PathError(f"{result['study']}: no answers yet, nothing to plot")
    labels = [f"{r['system']} vs {r['versus']}\n({r['dataset']}, n={r['judgements']})" for r in rows]
    y = np.arange(len(rows))[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.6 * len(rows) + 1.2))
    left = np.zeros(len(rows))
    for name, color in (("win", "#2b7bba"), ("tie", "#b0b0b0"), ("loss", "#d9534f")):
        vals = np.array([r[f"{name}_rate"] for r in rows])
        ax.barh(y, vals, left=left, color=color, label=name)
        left += vals
    win = np.array([r["win_rate"] for r in rows])
    lo, hi = np.array([r["win_ci"][0] for r in rows]), np.array([r["win_ci"][1] for r in rows])
    ax.errorbar(win, y, xerr=[win - lo, hi - win], fmt="none", ecolor="black", capsize=3, label="win 95 % CI")
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of judgements (win = first system preferred)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    try:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=120)
    except OSError as exc:
        raise path_error(exc, "writing the plot") from exc
    finally:
        plt.close(fig)
    return Path(out)
