"""Benchmark 8: the Table 4 recipe on the hard synthetic corpus, with intervals and a power statement.

  synth --preset bench (FluidR3 GM; test clips also in TimGM6mb) -> augment (template tag-to-caption
  for training clips; val/test keep only their human-style captions) -> featurize -> duetmc.ablate
  (untrained heads + the four Table 4 rows, N seeds) -> per-query scores -> paired bootstrap 95 % CI
  of each step's R@10 difference, minimal detectable effect, probes -> report.md, results.json, plots.

Everything lands under --work and is reused on a rerun (corpus, views, features, finished runs,
per-query scores); a rerun with different settings is refused. Scales:
  full   2,025 train / 225 val / 600 test clips, musicnn + MiniLM, 3 seeds (the issue's benchmark)
  small  198 train / 22 val / 100 test clips, musicnn + MiniLM, 2 seeds, 6 epochs (a trial run)
  tiny   18 train / 2 val / 10 test clips, tiny encoders, 1 seed, 2 epochs (the test suite's smoke run)

    .venv/bin/python bench/recipe.py --scale full --work bench_work
    .venv/bin/python bench/recipe_selection.py --work bench_work    # then: checkpoints chosen by val R@10
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [p for p in (str(BENCH.parent), str(BENCH)) if p not in sys.path]

import common  # noqa: E402,F401  (sets OMP_WAIT_POLICY before torch starts)
import numpy as np  # noqa: E402

from duetmc import stats  # noqa: E402
from duetmc.ablate import run_dir, slug  # noqa: E402

STEPS = [("untrained heads", "tags only"), ("tags only", "+ tag-to-caption"), ("+ tag-to-caption", "+ View Dropout"),
         ("+ View Dropout", "+ TextSwap"), ("tags only", "+ TextSwap")]
DATASETS = ("test (FluidR3)", "test (TimGM6mb)")
PROBE_KEYS = ("probes",)  # the evaluator's swap-accuracy and partial-query probes (docs/PROTOCOL.md)
# The paper's 100-epoch schedule (5 warm-up, TextSwap 5 + 20) at a fifth of the length, as in the quickstart.
TRAIN = dict(epochs=20, batch_size=128, warmup_epochs=2, swap_warmup_epochs=2, swap_ramp_epochs=8, patience=1000)
SCALES: dict[str, dict] = {
    "full": dict(items=2250, test_items=600, seeds=3, epochs=20, views=5),
    "small": dict(items=220, test_items=100, seeds=2, epochs=6, views=5),
    "tiny": dict(items=20, test_items=10, seeds=1, epochs=2, views=2, batch_size=8, seconds=2.0, window_s=2.0,
                 audio_encoder="tiny-audio", text_encoder="tiny-text"),
}


@dataclass
class RecipeConfig:
    work: str = "bench_work"
    scale: str = "full"
    items: int = 2250  # clips dealt 90/10 into train and val
    test_items: int = 600  # test-only clips, rendered with both soundfonts
    seeds: int = 3
    epochs: int = 20
    views: int = 5
    batch_size: int = 128
    seconds: float = 10.0
    window_s: float = 10.0
    audio_encoder: str = "musicnn-mtt"
    text_encoder: str = "minilm"
    corpus_seed: int = 0
    workers: int = 2
    n_boot: int = 10_000
    train: dict = field(default_factory=lambda: dict(TRAIN))

    @staticmethod
    def for_scale(scale: str, **overrides) -> "RecipeConfig":
        from duetmc.errors import UsageError

        if scale not in SCALES:
            raise UsageError(f"--scale must be one of {sorted(SCALES)}, got {scale!r}")
        values = {**SCALES[scale], **{k: v for k, v in overrides.items() if v is not None}}
        cfg = RecipeConfig(scale=scale, **values)
        cfg.train = {**TRAIN, "epochs": cfg.epochs, "batch_size": cfg.batch_size}
        return cfg

    def content(self) -> dict:
        """What decides the results; the seed count, workers and bootstrap size may change on a rerun."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("work", "seeds", "workers", "n_boot", "scale")}


def _claim(cfg: RecipeConfig) -> Path:
    from duetmc.errors import UsageError

    work = Path(cfg.work)
    path = work / "recipe_config.json"
    if path.exists():
        old = json.loads(path.read_text())
        diff = sorted(k for k in set(old) | set(cfg.content()) if old.get(k) != cfg.content().get(k))
        if diff:
            raise UsageError(f"{work} holds a recipe run with other settings ({', '.join(diff)}); "
                             "use another --work or delete it")
    work.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg.content(), indent=2, sort_keys=True) + "\n")
    return work


def recipe_views(items, n_views: int, seed: int = 0):
    """Training clips get every text the recipe trains on; val and test clips keep their queries (human
    captions), their TextSwap variants and the probes, so no generated caption becomes a query."""
    from duetmc.augment.captions import TemplateCaptioner
    from duetmc.augment.pipeline import keep_queries_for_evaluation, run_augment

    return keep_queries_for_evaluation(run_augment(items, TemplateCaptioner(), n_views=n_views, seed=seed).records, items)


def _complete(cache: Path, modality: str) -> bool:
    """Whether every shard of every feature group of `modality` is written (the quickstart's check)."""
    from duetmc import cache_spec

    try:
        root = cache_spec.open_root(str(cache))
    except cache_spec.CacheError:
        return False
    groups = cache_spec.list_groups(root, modality)
    return bool(groups) and all(
        cache_spec.group_status(root[modality][k], modality, k).incomplete_shards == [] for k in groups)


def _featurize(cfg: RecipeConfig, manifest: Path, views: Path, cache: Path, say) -> dict:
    from duetmc.featurize.audio import AudioFeaturizeConfig, featurize_audio
    from duetmc.featurize.text import TextFeaturizeConfig, featurize_text

    t = {"audio_clips": 0, "texts": 0, "audio_s": 0.0, "text_s": 0.0}
    if _complete(cache, "audio") and _complete(cache, "text"):
        say(f"   {cache.name}: reused")
        return t
    t0 = time.perf_counter()
    # batch 1: musicnn's large activations make batched CPU forwards slower (BENCHMARKS.md, #3)
    s = featurize_audio(AudioFeaturizeConfig(str(manifest), str(cache), cfg.audio_encoder, window_s=cfg.window_s,
                                             batch_size=1, workers=cfg.workers, progress=False))
    t["audio_s"], t["audio_clips"] = time.perf_counter() - t0, s.done
    t0 = time.perf_counter()
    s = featurize_text(TextFeaturizeConfig(str(views), str(cache), cfg.text_encoder, batch_size=128, progress=False))
    t["text_s"], t["texts"] = time.perf_counter() - t0, s.done
    say(f"   {cache.name}: {t['audio_clips']} clips in {t['audio_s']:.0f} s, {t['texts']} texts in {t['text_s']:.0f} s "
        "(0 = reused)")
    return t


def prepare(cfg: RecipeConfig, work: Path, say) -> tuple[list[Path], dict]:
    """Corpus, views and both caches; each reused when already there."""
    from duetmc.augment.viewsfile import write_views
    from duetmc.manifest import load_manifest
    from duetmc.synth import preset_config, synth_corpus

    timings: dict = {}
    t0 = time.perf_counter()
    scfg = preset_config("bench", work / "corpus", n_items=cfg.items, test_items=cfg.test_items,
                         seconds=cfg.seconds, seed=cfg.corpus_seed, workers=cfg.workers)
    rep = synth_corpus(scfg, progress=False)
    if rep.failed:
        from duetmc.errors import DuetmcError

        raise DuetmcError(f"synth: {len(rep.failed)} clips failed (first: {rep.failed[0]}); see {rep.out}")
    timings["synth"] = {"s": time.perf_counter() - t0, "rendered": rep.n_rendered, "splits": rep.splits,
                        "near_duplicates": rep.near_duplicates}
    say(f"== corpus: {rep.n_items} clips, {rep.splits}, {rep.near_duplicates} near-duplicate pairs, "
        f"{rep.n_rendered} rendered in {timings['synth']['s']:.0f} s")
    caches = []
    for manifest, name in ((rep.manifest, "cache"), (rep.heldout_manifest, "cache_heldout_sf")):
        views = work / f"{name}_views.jsonl"
        if not views.exists():
            write_views(recipe_views(load_manifest(manifest), cfg.views), views.with_suffix(".tmp"))
            views.with_suffix(".tmp").replace(views)
        cache = work / f"{name}.zarr"
        timings[name] = _featurize(cfg, Path(manifest), views, cache, say)
        caches.append(cache)
    return caches, timings


def ablate(cfg: RecipeConfig, work: Path, caches: list[Path], say) -> dict:
    """duetmc.ablate's Table 4 rows and untrained heads over the seeds; finished runs are reused."""
    from duetmc.ablate import AblateConfig, run_ablation
    from duetmc.pairs import resolve_spec
    from duetmc.evaluate import EvalConfig
    from duetmc.train import TrainConfig

    # every epoch's checkpoint is kept: bench/recipe_selection.py scores them again (12 runs x 20 x 14 MB)
    base = TrainConfig(data=[resolve_spec(str(caches[0]))], out=str(work / "ablation"), seed=0,
                       keep_epoch_checkpoints=True, **cfg.train)
    t0 = time.perf_counter()
    result = run_ablation(AblateConfig(base, [str(c) for c in caches], list(DATASETS), seeds=cfg.seeds,
                                       p_cap_sweep=False, eval=EvalConfig(split="test")), progress=False)
    if result.get("status") == "preempted":
        from duetmc.errors import DuetmcError

        raise DuetmcError(f"training was interrupted in {result['run']}; rerun to resume")
    say(f"== ablation: {result['runs_trained']} runs trained, {time.perf_counter() - t0:.0f} s")
    return result



def _scores_for_dataset(work: Path, cache: Path, dataset: str, configs: list[str], seeds: int, eval_cfg,
                        probes_offered: list, checkpoint=lambda config, seed: "best", tag: str = "") -> tuple[dict, dict]:
    """Per-query scores (and probes, where the evaluator offers them; `probes_offered` [False]: none) of
    every run on one test cache, at `checkpoint(config, seed)`; `tag` names another checkpoint's score files."""
    from duetmc.feature_source import MemorySource
    from duetmc.pairs import DataSpec, PairIndex, resolve_spec
    from duetmc.evaluate import evaluate_index
    from duetmc.run import load_run
    from recipe_stats import load_scores, query_scores, save_scores

    spec = resolve_spec(str(work / "cache.zarr"))
    index = PairIndex(DataSpec(str(cache), spec.audio, spec.text))
    source = None
    scores, probes = {}, {}
    try:
        for config in configs:
            for seed in range(seeds):
                run = run_dir(work / "ablation", config, seed)
                path = run / f"scores{tag}_{slug(dataset)}.npz"
                s = load_scores(path)
                if s is None or (probes_offered[0] is not False and not (run / f"probes_{slug(dataset)}.json").exists()):
                    source = source or MemorySource([index], "cpu")
                    model, _ = load_run(run, checkpoint(config, seed))  # best: last if pre-empted before validating
                    if s is None:
                        s = query_scores(model, index, eval_cfg, source, 0)
                        save_scores(path, s)
                    if probes_offered[0] is not False:  # the hook for issue 11's probes
                        res = evaluate_index(model, index, dataclasses.replace(
                            eval_cfg, music_to_text=False, tag_retrieval=False), source, 0)
                        found = {k: res[k] for k in PROBE_KEYS if k in res}
                        probes_offered[0] = bool(found)
                        if found:
                            (run / f"probes_{slug(dataset)}.json").write_text(json.dumps(found, default=float))
                scores.setdefault(config, []).append(s)
                ppath = run / f"probes_{slug(dataset)}.json"
                if ppath.exists():
                    probes[(config, seed)] = json.loads(ppath.read_text())
    finally:
        if source is not None:
            source.close()
    return scores, probes


def aggregate(rows: list[dict]) -> dict:
    """(config, dataset) -> mean over seeds, std across seeds, and the mean subset spread of R@10."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["config"], r["dataset"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        row = {"seeds": len(rs)}
        for m in ("R@1", "R@5", "R@10", "MedR"):
            row[m], row[f"{m}_std"] = stats.mean_std([r[m] for r in rs])
        row["R@10_subset_std"] = float(np.mean([r["R@10_std"] for r in rs]))
        out[key] = row
    return out


def analyse(cfg: RecipeConfig, work: Path, caches: list[Path], ablation: dict) -> dict:
    """Per-step paired bootstrap CIs and power, per-configuration CIs, probes, for both test caches."""
    from duetmc.evaluate import EvalConfig
    from recipe_stats import PAPER_STEP, stack, step_statistics

    eval_cfg = EvalConfig(split="test")
    table = aggregate(ablation["rows"])
    configs = list(dict.fromkeys(r["config"] for r in ablation["rows"]))
    probes_offered = [None]
    out = {"table": [], "steps": [], "probes": {}, "probes_available": False}
    for cache, dataset in zip(caches, DATASETS):
        scores, probes = _scores_for_dataset(work, cache, dataset, configs, cfg.seeds, eval_cfg, probes_offered)
        for config in configs:
            ci = stats.bootstrap_ci(stack(scores[config]), n_boot=cfg.n_boot, seed=0)
            out["table"].append({"config": config, "dataset": dataset, **table[(config, dataset)],
                                 "R@10_query_mean": ci.estimate, "R@10_ci": [ci.low, ci.high]})
        for before, after in STEPS:
            if before in scores and after in scores:
                st = step_statistics(stack(scores[before]), stack(scores[after]), table[(before, dataset)],
                                     table[(after, dataset)], cfg.n_boot, seed=0)
                paper = PAPER_STEP if (before, after) in STEPS[1:4] else ""  # Table 4's three steps only
                out["steps"].append({"dataset": dataset, "before": before, "after": after, **st, "paper_step": paper})
        out["probes"][dataset] = {f"{c} / seed{s}": p for (c, s), p in probes.items()}
    out["probes_available"] = bool(probes_offered[0])
    return out


def run_recipe(cfg: RecipeConfig, say=print) -> dict:
    from recipe_report import curves_plot, recipe_bars, write_report

    t0 = time.perf_counter()
    work = _claim(cfg)
    caches, timings = prepare(cfg, work, say)
    t = time.perf_counter()
    ablation = ablate(cfg, work, caches, say)
    timings["ablation_s"] = time.perf_counter() - t
    t = time.perf_counter()
    analysis = analyse(cfg, work, caches, ablation)
    timings["analysis_s"] = time.perf_counter() - t
    summary = {"config": dataclasses.asdict(cfg), "chance_R@10": ablation["chance_R@10"],
               "runs_trained": ablation["runs_trained"], "timings": timings, **analysis,
               "seconds": time.perf_counter() - t0}
    full = run_dir(work / "ablation", "+ TextSwap", 0)
    summary["plots"] = [str(recipe_bars(summary, work / "recipe_bars.png")),
                        str(curves_plot(full, work / "curves_textswap_seed0.png"))]
    (work / "results.json").write_text(json.dumps(summary, indent=2, default=float))
    say(write_report(summary, work / "report.md"))
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", default="full", choices=sorted(SCALES))
    ap.add_argument("--work", default="bench_work", help="kept between runs; everything in it is reused")
    for name in ("items", "test_items", "seeds", "epochs", "views", "workers", "n_boot"):
        ap.add_argument("--" + name.replace("_", "-"), type=int, default=None)
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args(argv)
    cfg = RecipeConfig.for_scale(args.scale, work=args.work, **{k: getattr(args, k) for k in (
        "items", "test_items", "seeds", "epochs", "views", "workers", "n_boot")})
    summary = run_recipe(cfg, say=(lambda *a: None) if args.json else print)
    if args.json:
        print(json.dumps(summary, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
