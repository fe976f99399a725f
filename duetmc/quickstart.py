"""`duetmc quickstart`: the whole recipe, offline, with genuinely pretrained encoders.

synth (FluidR3 GM; a held-out test split in TimGM6mb) -> augment (template captions, views, swaps)
-> featurize (musicnn audio, MiniLM text) -> train -> Table-4 ablation on both test splits -> search.
Every step reuses what an earlier run left, so a rerun costs a fraction of the first run.
The schedule is shortened for a laptop (see QUICKSTART_TRAIN); the paper's defaults stay the library's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from duetmc.errors import DuetmcError

class QuickstartError(DuetmcError):
    """A quickstart step produced nothing to continue with."""


# The paper's schedule is 100 epochs with a 5-epoch warm-up and a 5 + 20-epoch TextSwap ramp; the
# quickstart keeps its shape at a fifth of the length so it fits in minutes on two CPU cores.
QUICKSTART_TRAIN = dict(epochs=20, batch_size=64, warmup_epochs=2, swap_warmup_epochs=2, swap_ramp_epochs=8,
                        patience=100)


@dataclass
class QuickstartConfig:
    out: str = "quickstart"
    items: int = 240
    test_items: int = 100  # test-only clips beyond the 10 % test share: at least 100 test clips in all
    seed: int = 0
    seeds: int = 2
    workers: int = 2
    audio_encoder: str = "musicnn-mtt"
    text_encoder: str = "minilm"
    views: int = 10
    train: dict = field(default_factory=lambda: dict(QUICKSTART_TRAIN))


def corpus_config(cfg: QuickstartConfig, out: Path):
    """Clean, complete training tags (the quickstart shows the recipe, not the bench's hard data), and
    human-style captions on val and test clips, written by another generator than the training
    captions: the evaluation queries are human captions (docs/PROTOCOL.md)."""
    from duetmc.synth import SynthConfig
    from duetmc.synth.corpus import HardConfig
    from duetmc.synth.noise import TagNoise

    clean = HardConfig(noise=TagNoise(p_drop_category=0.0, p_drop_instrument=0.0, p_wrong=0.0), p_near_duplicate=0.0)
    return SynthConfig(out, n_items=cfg.items, test_items=cfg.test_items, seed=cfg.seed, workers=cfg.workers,
                       hard=clean)


# What the quickstart writes, measured on its default run (BENCHMARKS.md §0): audio (test clips in both
# soundfonts), features and views per clip; best/ and last/ (with optimizer state) per trained run.
BYTES_PER_CLIP = 1.9e6
BYTES_PER_RUN = 70e6


def check_disk(out: Path, cfg: QuickstartConfig) -> None:
    """Refuse at the start, not after minutes of work, when the disk cannot hold what the run writes."""
    import shutil

    runs = len({config for step in STEPS for config in step}) * cfg.seeds + 1  # + the catalog's model
    need = (cfg.items + cfg.test_items) * BYTES_PER_CLIP + runs * BYTES_PER_RUN
    need -= sum(f.stat().st_size for f in out.rglob("*") if f.is_file())  # a rerun reuses what is there
    free = shutil.disk_usage(out).free
    if need > free:
        raise QuickstartError(f"{out}: the quickstart needs about {need / 1e9:.1f} GB more here and "
                              f"{free / 1e9:.1f} GB are free; free some space or choose another --out")


def _step(name: str, timings: dict, say):
    class _Timer:
        def __enter__(self):
            say(f"\n== {name}")
            self.t = time.perf_counter()

        def __exit__(self, *exc):
            timings[name] = round(time.perf_counter() - self.t, 2)
            say(f"   {name}: {timings[name]:.1f} s")

    return _Timer()


def _complete(cache: str, modality: str) -> bool:
    from duetmc import cache_spec

    try:
        root = cache_spec.open_root(cache)
    except cache_spec.CacheError:
        return False
    groups = cache_spec.list_groups(root, modality)
    return bool(groups) and all(
        cache_spec.group_status(root[modality][k], modality, k).incomplete_shards == [] for k in groups)


def _featurize(manifest: Path, views: Path, cache: str, cfg: QuickstartConfig, say, progress: bool) -> dict:
    """Featurize what is missing; returns how many windows and texts were computed now."""
    from duetmc.featurize.audio import AudioFeaturizeConfig, featurize_audio
    from duetmc.featurize.text import TextFeaturizeConfig, featurize_text

    computed = {"audio": 0, "text": 0}
    if not _complete(cache, "audio"):
        # batch 1: musicnn's large activations make batched CPU forwards slower (BENCHMARKS.md, #3)
        s = featurize_audio(AudioFeaturizeConfig(str(manifest), cache, cfg.audio_encoder, batch_size=1,
                                                 workers=cfg.workers, progress=progress))
        say(f"   audio: {s.done} clips featurized, {s.failed} failed, {s.skipped} reused")
        _stop_if_nothing(s, manifest, "audio")
        computed["audio"] = s.done
    else:
        say("   audio: reused the cache")
    if not _complete(cache, "text"):
        s = featurize_text(TextFeaturizeConfig(str(views), cache, cfg.text_encoder, batch_size=128,
                                               progress=progress))
        say(f"   text: {s.done} texts featurized, {s.skipped} reused")
        computed["text"] = s.done
    else:
        say("   text: reused the cache")
    return computed


def _stop_if_nothing(summary, source: Path, what: str) -> None:
    """A step that failed for every item stops the pipeline now, with the first reason."""
    if summary.done + summary.skipped == 0 and summary.failed:
        item, reason = summary.failures[0]
        raise QuickstartError(f"{source}: every {what} item failed ({summary.failed}); first: {item}: {reason}")


def _augment(manifest: Path, views: Path, cfg: QuickstartConfig, say) -> int:
    """Write the views file unless it exists; returns the number of records written now."""
    from duetmc.augment.captions import TemplateCaptioner
    from duetmc.augment.pipeline import keep_queries_for_evaluation, run_augment
    from duetmc.augment.viewsfile import write_views
    from duetmc.manifest import load_manifest

    if views.exists():
        say(f"   reused {views}")
        return 0
    items = load_manifest(manifest)
    records = keep_queries_for_evaluation(
        run_augment(items, TemplateCaptioner(), n_views=cfg.views, seed=cfg.seed).records, items)
    write_views(records, views)
    say(f"   {len(records)} texts: {dict(Counter(r.kind for r in records))}")
    return len(records)


STEPS = (("untrained heads", "tags only"), ("tags only", "+ tag-to-caption"), ("+ tag-to-caption", "+ View Dropout"),
         ("+ View Dropout", "+ TextSwap"))


def step_verdicts(out: Path, caches: list[str], names: list[str], cfg: QuickstartConfig, eval_cfg) -> list[dict]:
    """Does each added idea help? A paired bootstrap 95 % interval of the R@10 difference over the same
    queries and seeds (duetmc.stats); an interval that includes zero means the data cannot decide."""
    from duetmc import stats
    from duetmc.ablate import run_dir
    from duetmc.evaluate import query_scores
    from duetmc.feature_source import MemorySource
    from duetmc.pairs import DataSpec, PairIndex
    from duetmc.run import load_run

    verdicts = []
    for cache, name in zip(caches, names):
        index, scores = None, {}
        for config in dict.fromkeys(c for step in STEPS for c in step):
            for seed in range(cfg.seeds):
                model, tcfg = load_run(run_dir(out / "ablation", config, seed))
                if index is None:
                    index = PairIndex(DataSpec(cache, tcfg.data[0].audio, tcfg.data[0].text))
                    source = MemorySource([index])
                scores.setdefault(config, []).append(query_scores(model, index, eval_cfg, source, 0)["R@10"])
        source.close()
        for before, after in STEPS:
            ci = stats.paired_bootstrap_ci(np.stack(scores[before]), np.stack(scores[after]), n_boot=2000)
            verdicts.append({"dataset": name, "step": f"{after} vs {before}", "delta_R@10": ci.estimate,
                             "ci_low": ci.low, "ci_high": ci.high, "n_queries": len(scores[before][0]), "n_seeds": cfg.seeds,
                             "verdict": "helps" if ci.low > 0 else "hurts" if ci.high < 0 else "cannot decide"})
    return verdicts


def verdict_line(v: dict) -> str:
    why = ("the 95 % interval excludes zero" if v["verdict"] != "cannot decide"
           else "the 95 % interval includes zero: this data cannot tell")
    return (f"{v['dataset']}: {v['step']}: ΔR@10 = {v['delta_R@10']:+.1f} [{v['ci_low']:+.1f}, {v['ci_high']:+.1f}] "
            f"over {v['n_queries']} queries x {v['n_seeds']} seeds: {v['verdict']} ({why})")


def _command() -> str:
    """How the user can call duetmc from here: the venv's script (relative when under the working
    directory, as in the README), else plain `duetmc`."""
    script = Path(sys.executable).parent / "duetmc"
    return _shown(script) if script.exists() else "duetmc"


def _shown(path: Path) -> str:
    """A path as the user would type it: relative to the working directory when inside it."""
    rel = os.path.relpath(path)
    return rel if not rel.startswith("..") else str(path)


def build_catalog(run: Path, cache: str, out: Path) -> Path:
    """The search index of the full recipe's run over every clip of the cache (for `duetmc serve`)."""
    from duetmc.catalog import build_index
    from duetmc.pretrained import DuetModel

    if not (out / "index.json").exists():
        build_index(DuetModel.from_run(run, progress=False), out, cache=cache)
    return out


def run_quickstart(cfg: QuickstartConfig, say=print, progress: bool = True) -> dict:
    from duetmc.ablate import AblateConfig, run_ablation
    from duetmc.pairs import resolve_spec
    from duetmc.evaluate import EvalConfig
    from duetmc.index import Index
    from duetmc.synth import synth_corpus
    from duetmc.train import TrainConfig

    out = Path(cfg.out).resolve()  # runs record absolute cache paths, so they work from any directory
    out.mkdir(parents=True, exist_ok=True)
    check_disk(out, cfg)
    previous = json.loads((out / "quickstart.json").read_text()) if (out / "quickstart.json").exists() else None
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    corpus = out / "corpus"
    with _step("1/5 synth", timings, say):
        rep = synth_corpus(corpus_config(cfg, corpus), progress)
        say(f"   {rep.n_items} clips ({rep.n_rendered} rendered, {rep.n_cached} reused), splits {rep.splits}")
    manifest, heldout = Path(rep.manifest), Path(rep.heldout_manifest)
    work = {"clips_rendered": rep.n_rendered}
    with _step("2/5 augment", timings, say):
        work["texts_written"] = (_augment(manifest, out / "views.jsonl", cfg, say)
                                 + _augment(heldout, out / "views_heldout_sf.jsonl", cfg, say))
    cache, cache_sf = str(out / "cache.zarr"), str(out / "cache_heldout_sf.zarr")
    with _step("3/5 featurize", timings, say):
        a = _featurize(manifest, out / "views.jsonl", cache, cfg, say, progress)
        b = _featurize(heldout, out / "views_heldout_sf.jsonl", cache_sf, cfg, say, progress)
        work["windows_featurized"], work["texts_featurized"] = a["audio"] + b["audio"], a["text"] + b["text"]
    names = ["test (FluidR3)", "test (TimGM6mb)"]
    eval_cfg = EvalConfig(split="test")  # human-style captions are the queries (docs/PROTOCOL.md)
    with _step("4/5 train + 5/5 ablate", timings, say):
        base = TrainConfig(data=[resolve_spec(cache)], out=str(out / "ablation"), seed=cfg.seed, **cfg.train)
        result = run_ablation(AblateConfig(base, [cache, cache_sf], names, seeds=cfg.seeds, p_cap_sweep=False,
                                           eval=eval_cfg), progress=progress)
        verdicts = step_verdicts(out, [cache, cache_sf], names, cfg, eval_cfg)
    table = result["table"]
    full_run = out / "ablation" / "textswap" / "seed0"
    catalog = build_catalog(full_run, cache, out / "catalog")
    test_tags = _common_test_tags(cache)
    query = f"a {test_tags['mood']} {test_tags['genre']} song with {test_tags['instrument']}"
    hits = Index.load(catalog).search_text(query, 5)
    total = time.perf_counter() - t0
    work["runs_trained"] = result["runs_trained"]
    summary = {"seconds": round(total, 1), "timings": timings, "work": work, "table": table,
               "chance_R@10": result["chance_R@10"], "verdicts": verdicts, "query": query, "hits": hits,
               "catalog": str(catalog), "serve": f"{_command()} serve {_shown(catalog)}",
               "plots": [str(out / "ablation" / "bars.png"), str(full_run / "loss.png"), str(full_run / "r10.png")],
               "config": dataclasses.asdict(cfg)}
    if previous is not None:
        summary["first_run_seconds"] = previous.get("first_run_seconds", previous["seconds"])
    else:
        summary["first_run_seconds"] = summary["seconds"]
    (out / "quickstart.json").write_text(json.dumps(summary, indent=2, default=str))
    _report(summary, out, say)
    return summary


def _common_test_tags(cache: str) -> dict[str, str]:
    from duetmc import cache_spec

    root = cache_spec.open_root(cache)
    group = root["audio"][cache_spec.list_groups(root, "audio")[0]]
    split = cache_spec.read_strings(group["split"])
    tags = [json.loads(t) for t, s in zip(cache_spec.read_strings(group["tags"]), split) if s == "test"]
    best = Counter((t["genre"][0], t["mood"][0]) for t in tags if t.get("genre") and t.get("mood")).most_common(1)[0][0]
    inst = Counter(i for t in tags if (t["genre"][0], t["mood"][0]) == best for i in t.get("instrument", []))
    return {"genre": best[0], "mood": best[1], "instrument": inst.most_common(1)[0][0]}


def _report(s: dict, out: Path, say) -> None:
    say("\n== Results: text→music retrieval on the test split (FluidR3) and the held-out soundfont (TimGM6mb)")
    say((out / "ablation" / "table.md").read_text())
    say("Does each idea help? Paired bootstrap over the same queries and seeds:")
    for v in s["verdicts"]:
        say("   " + verdict_line(v))
    say(f"\nplots: {', '.join(s['plots'])}")
    say(f"\n{_command()} index search {_shown(Path(s['catalog']))} \"{s['query']}\" -k 5")
    for rank, h in enumerate(s["hits"], 1):
        t = h["tags"]
        say(f"  {rank}. {h['score']:.3f} {h['id']}: {', '.join(t.get('genre', []) + t.get('mood', []))}; "
            f"{', '.join(t.get('instrument', []))}")
    say(f"\nlisten in a browser: {s['serve']}      # then open http://127.0.0.1:8000/")
    first = s["first_run_seconds"]
    if first != s["seconds"]:
        say(f"\nthis rerun took {s['seconds']:.0f} s, {100 * s['seconds'] / first:.0f} % of the first run ({first:.0f} s): "
            "audio, features and finished runs were reused")
    else:
        say(f"\ntotal {s['seconds']:.0f} s; a rerun reuses the audio, the features and the finished runs")
