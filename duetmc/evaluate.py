"""The evaluator: text->music retrieval (and music->text, tag retrieval) under one stated protocol.

Conventions live in duetmc.metrics: ranks start at 1, ties count worst-case, every caption is a
query whose target is its clip (keyed by item id, never by caption text), and metrics average over
seeded random subsets of 500 clips. A clip's embedding is the mean of its windows' embeddings,
re-normalised. Queries are the caption texts of the split's clips in each language; a dataset
without captions falls back to its tags-only texts (reported as language "tags").
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from duetmc import cache_spec, metrics
from duetmc.augment.viewsfile import GENERATED_SOURCES, HUMAN_SOURCES
from duetmc.feature_source import DEFAULT_MEMORY_BUDGET_GB, open_source, trim_padding
from duetmc.pairs import DataSpec, PairIndex
from duetmc.heads.model import DuetHeads
from duetmc.loss import contrastive_loss
from duetmc.errors import UsageError
from duetmc.run import check_weights, load_run


BATCH_BYTES = 64 << 20  # float32 input per evaluation batch: bounds peak memory on any cache


def _rows_per_batch(shape) -> int:
    return int(max(1, min(512, BATCH_BYTES // (4 * int(np.prod(shape))))))


@torch.no_grad()
def embed_items(model: DuetHeads, source, d: int, index: PairIndex, items: np.ndarray) -> np.ndarray:
    """Clip embeddings: every window encoded, averaged per clip, normalised."""
    batch = _rows_per_batch(index.audio_shape)
    starts, counts = index.item_rows[items, 0], index.item_rows[items, 1]
    rows = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, counts)]) if len(items) else np.zeros(0, int)
    out = []
    for lo in range(0, len(rows), batch):
        r = rows[lo:lo + batch]
        out.append(model.encode_audio(source.audio_batch(np.full(len(r), d), r)).float().cpu())
    emb = torch.cat(out) if out else torch.zeros(0, model.config.dim)
    owner = torch.from_numpy(np.repeat(np.arange(len(items)), counts))
    pooled = torch.zeros(len(items), emb.shape[1]).index_add_(0, owner, emb)
    return torch.nn.functional.normalize(pooled, dim=1).numpy()


@torch.no_grad()
def embed_texts(model: DuetHeads, source, d: int, rows: np.ndarray, batch: int = 256) -> np.ndarray:
    out = []
    for lo in range(0, len(rows), batch):
        r = np.asarray(rows[lo:lo + batch])
        x, lens = trim_padding(*source.text_batch(np.full(len(r), d), r))
        out.append(model.encode_text(x, lens).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, model.config.dim), dtype=np.float32)


QUERY_CHOICES = ("human", "all", "generated")
PROBE_KINDS = ("probe_swap", "probe_partial")  # evaluation-only records; the trainer never samples them


@dataclass
class Queries:
    """One language's queries: text rows, the position of each target clip in `items`, sources."""

    rows: np.ndarray
    targets: np.ndarray
    sources: np.ndarray

    def counts(self) -> dict[str, int]:
        names, n = np.unique(self.sources, return_counts=True)
        return {str(a): int(b) for a, b in zip(names, n)}


def text_records(index: PairIndex) -> dict[str, np.ndarray]:
    """The text group's records whose text is featurized, with `pos` = the clip's index (-1: none)."""
    cached = getattr(index, "_text_records", None)
    if cached is not None:  # validation asks every epoch
        return cached
    from duetmc.cache_spec import read_strings

    rec = index.text["records"]
    cols = {name: read_strings(rec[name]) for name in ("item", "kind", "lang", "source")}
    cols["category"] = read_strings(rec["category"]) if "category" in rec else np.full(len(cols["item"]), "")
    cols["row"] = np.asarray(rec["text_row"][:], dtype=np.int64)
    cols["parent"] = np.asarray(rec["parent_row"][:], dtype=np.int64)
    pos = {str(i): k for k, i in enumerate(index.ids)}
    cols["pos"] = np.array([pos.get(str(i), -1) for i in cols["item"]], dtype=np.int64)
    keep = index.text_done[cols["row"]]
    index._text_records = {k: np.asarray(v)[keep] for k, v in cols.items()}
    return index._text_records


def _wanted(sources: np.ndarray, which: str) -> np.ndarray:
    if which == "human":
        return np.isin(sources, list(HUMAN_SOURCES))
    if which == "generated":
        return np.isin(sources, list(GENERATED_SOURCES))
    return np.ones(len(sources), dtype=bool)


def queries(index: PairIndex, items: np.ndarray, which: str = "human", what: str = "") -> dict[str, Queries]:
    """lang -> the split's caption queries of the chosen sources (`human`, `all` or `generated`).

    A split without such captions is an error naming the sources it does have; only `all` falls back
    to the tags-only texts (language "tags", source "tags") when the split has no caption at all.
    """
    if which not in QUERY_CHOICES:
        raise UsageError(f"--queries must be one of {list(QUERY_CHOICES)}, got {which!r}")
    rec = text_records(index)
    position = np.full(len(index.ids), -1, dtype=np.int64)
    position[items] = np.arange(len(items))
    in_split = (rec["pos"] >= 0) & (position[np.maximum(rec["pos"], 0)] >= 0)
    captions = in_split & (rec["kind"] == "caption")
    chosen = captions & _wanted(rec["source"], which)
    out: dict[str, Queries] = {}
    for lang in sorted(set(rec["lang"][chosen])):
        sel, seen = [], set()
        for j in np.flatnonzero(chosen & (rec["lang"] == lang)):
            key = (int(rec["row"][j]), int(rec["pos"][j]))  # one query per (text, clip), even if recorded twice
            if key not in seen:
                seen.add(key)
                sel.append(j)
        out[str(lang)] = Queries(rec["row"][sel], position[rec["pos"][sel]], rec["source"][sel].astype(str))
    if out:
        return out
    if which == "all":
        sel = [(int(index.tags_row[k]), i) for i, k in enumerate(items) if index.tags_row[k] >= 0]
        if sel:
            rows, targets = zip(*sel)
            return {"tags": Queries(np.array(rows), np.array(targets), np.full(len(rows), "tags"))}
    have = {str(a): int(b) for a, b in zip(*np.unique(rec["source"][captions].astype(str), return_counts=True))}
    found = ", ".join(f"{n} {s}" for s, n in have.items()) or "no captions at all"
    fix = "; evaluate on generated or tags texts with --queries all" if which != "all" else "; featurize a views file with captions"
    raise UsageError(f"{what or index.spec.cache}: no {which} caption queries among the {len(items)} clips of this split "
                     f"(found: {found}){fix}")


def _validation_queries(index: PairIndex, items: np.ndarray) -> Queries | None:
    """English human captions when the split has them, else any caption or the tags texts."""
    for which in ("human", "all"):
        try:
            q = queries(index, items, which)
        except UsageError:
            continue
        return q.get("en") or q.get("tags")
    return None


def warn_no_validation(indices: list[PairIndex]) -> None:
    """Without a `val` split there is no validation loss: early stopping and the best checkpoint are off."""
    if not any(len(ix.items("val")) for ix in indices):
        warnings.warn(f"{', '.join(ix.spec.cache for ix in indices)}: no clips in split 'val', so early stopping "
                      "is off and no best epoch is chosen; give some manifest rows \"split\": \"val\"",
                      UserWarning, stacklevel=2)


@torch.no_grad()
def validate(model: DuetHeads, indices: list[PairIndex], source, p_cap: float) -> dict:
    """Validation loss (fixed texts, no hard negatives) and R@10 on the val split."""
    model.eval()
    audio, text, targets, n = [], [], [], 0
    for d, index in enumerate(indices):
        items = index.items("val")
        if len(items) == 0:
            continue
        audio.append(embed_items(model, source, d, index, items))
        text.append(embed_texts(model, source, d, np.array([index.fixed_text(int(k), p_cap) for k in items])))
        q = _validation_queries(index, items)
        if q is not None:
            targets.append((embed_texts(model, source, d, q.rows), q.targets + n))
        n += len(items)
    model.train()
    if not audio:
        return {}
    a, t = torch.from_numpy(np.concatenate(audio)), torch.from_numpy(np.concatenate(text))
    scale = model.logit_scale().cpu()
    chunk = 1024  # the loss depends on the number of negatives: a fixed, paper-sized batch, so val losses
    # compare across runs whatever their --batch-size
    parts = [(a[i:i + chunk], t[i:i + chunk]) for i in range(0, len(a), chunk) if len(a[i:i + chunk]) > 1]
    out = {"val_loss": sum(float(contrastive_loss(x, y, scale)) * len(x) for x, y in parts)
           / max(1, sum(len(x) for x, _ in parts))}
    if targets:
        qe = np.concatenate([e for e, _ in targets])
        qt = np.concatenate([t for _, t in targets])
        r = metrics.retrieval_metrics(qe, a.numpy(), qt, subset_size=500, n_subsets=1, seed=0)
        out["val_R@10"] = r["R@10"]
        out["val_R@1"] = r["R@1"]
    return out


@dataclass
class EvalConfig:
    split: str = "test"
    subset_size: int = 500
    n_subsets: int = 10
    seed: int = 0
    device: str = "cpu"
    music_to_text: bool = True
    tag_retrieval: bool = True
    queries: str = "human"  # human | all | generated (see QUERY_CHOICES)
    probes: bool = True

    mode: str = "auto"  # feature source: auto | memory | streaming (duetmc.feature_source.choose_mode)
    memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB
    allow_missing: bool = False  # skip items whose feature shards are missing or unreadable (warned)

    def __post_init__(self):
        if self.queries not in QUERY_CHOICES:
            raise UsageError(f"queries must be one of {list(QUERY_CHOICES)}, got {self.queries!r}")


FEW_ITEMS = 100  # below this R@10's chance level exceeds 10 %


def context(n_items: int, cfg: EvalConfig, what: str) -> tuple[dict, list[str]]:
    """The chance level of R@k for the evaluated subset size, and warnings about the protocol."""
    n = min(n_items, cfg.subset_size) if cfg.subset_size else n_items
    chance = metrics.chance_levels(n)
    warns = []
    if cfg.subset_size and n_items < cfg.subset_size:
        warns.append(f"{what}: {n_items} clips is fewer than the protocol's subsets of {cfg.subset_size}, so the "
                     f"metrics come from one subset of {n_items} clips and are not comparable to published numbers")
    if n_items < FEW_ITEMS:
        warns.append(f"{what}: with {n_items} clips a random ranking already scores R@10 = {chance['R@10']:.1f} %; "
                     "R@10 says little here, read R@1 and the median rank")
    return chance, warns


def _labels(index: PairIndex, items: np.ndarray) -> tuple[list[str], np.ndarray] | None:
    if not index.labels or "tags" not in index.audio:
        return None
    from duetmc.cache_spec import read_strings

    tags = read_strings(index.audio["tags"])
    names = sorted(index.labels)
    lookup = {name.lower(): g for g, name in enumerate(names)}
    labels = np.zeros((len(items), len(names)), dtype=bool)
    for i, k in enumerate(items):
        for values in json.loads(tags[k]).values():
            for v in values:
                g = lookup.get(v.lower())
                if g is not None:
                    labels[i, g] = True
    return names, labels


def _ordered_items(index: PairIndex, split: str) -> np.ndarray:
    """The split's clips sorted by id, so subsets do not depend on manifest order (and match baselines)."""
    items = index.items(split) if split != "all" else np.flatnonzero(index.usable)
    if len(items) == 0:
        raise UsageError(f"{index.spec.cache}: no featurized clips in split {split!r}")
    return items[np.argsort(np.array([str(index.ids[k]) for k in items]), kind="stable")]


def query_scores(model, index: PairIndex, cfg: EvalConfig, source=None, d: int = 0) -> dict:
    """{"query_rows": [Q], "R@k": [Q]}: each English query's hit rate at k (in %) over the subsets that
    hold its target, the same subsets as `evaluate_index`; the unit of a paired bootstrap between two
    models (duetmc.stats), where the evaluator reports only means."""
    own = source is None
    if own:
        source, d = open_source([index], cfg.mode, cfg.memory_budget_gb, cfg.device)[0], 0
    try:
        items = _ordered_items(index, cfg.split)
        item_emb = embed_items(model, source, d, index, items)
        q = queries(index, items, cfg.queries)
        chosen = q.get("en") or q.get("tags") or next(iter(q.values()))
        rows, targets = chosen.rows, chosen.targets
        q_emb = embed_texts(model, source, d, rows)
    finally:
        if own:
            source.close()
    hits = {k: np.zeros(len(rows)) for k in (1, 5, 10)}
    seen = np.zeros(len(rows))
    for subset in metrics.item_subsets(len(items), cfg.subset_size, cfg.n_subsets, cfg.seed):
        position = np.full(len(items), -1)
        position[subset] = np.arange(len(subset))
        local = position[targets]
        chosen = np.flatnonzero(local >= 0)
        ranks = metrics.retrieval_ranks(q_emb[chosen] @ item_emb[subset].T, local[chosen])
        seen[chosen] += 1
        for k in (1, 5, 10):
            hits[k][chosen] += ranks <= k
    keep = seen > 0
    out = {"query_rows": np.asarray(rows)[keep]}
    out.update({f"R@{k}": 100.0 * hits[k][keep] / seen[keep] for k in (1, 5, 10)})
    return out


def evaluate_index(model: DuetHeads, index: PairIndex, cfg: EvalConfig, source=None, d: int = 0) -> dict:
    """Every metric for one cache: per-language text->music, music->text, zero-shot tag retrieval, probes.

    `source`/`d` reuse a feature source that already holds this cache as dataset `d` (the trainer's).
    """
    own = source is None
    if own:
        d = 0
        source, _ = open_source([index], cfg.mode, cfg.memory_budget_gb, cfg.device)
    items = _ordered_items(index, cfg.split)
    what = f"{index.spec.cache} [{cfg.split}]"
    qs = queries(index, items, cfg.queries, what)
    chance, warns = context(len(items), cfg, what)
    item_emb = embed_items(model, source, d, index, items)
    result: dict = {"cache": index.spec.cache, "split": cfg.split, "n_items": int(len(items)),
                    "queries": {"selection": cfg.queries, "by_lang": {lang: q.counts() for lang, q in qs.items()}},
                    "chance": chance, "warnings": warns, "text_to_music": {}}
    for lang, q in qs.items():
        q_emb = embed_texts(model, source, d, q.rows)
        result["text_to_music"][lang] = metrics.retrieval_metrics(
            q_emb, item_emb, q.targets, cfg.subset_size, cfg.n_subsets, cfg.seed)
        if cfg.music_to_text and lang in ("en", "tags"):
            result["music_to_text"] = metrics.music_to_text_metrics(
                item_emb, q_emb, q.targets, cfg.subset_size, cfg.n_subsets, cfg.seed)
    labelled = _labels(index, items) if cfg.tag_retrieval else None
    if labelled is not None:
        names, labels = labelled
        tag_emb = embed_texts(model, source, d, np.array([index.labels[n] for n in names]))
        try:
            result["tag_retrieval"] = metrics.tag_retrieval_metrics(tag_emb, item_emb, labels)
        except ValueError as exc:
            result["tag_retrieval"] = {"skipped": str(exc)}
    if cfg.probes:
        from duetmc.probes import run_probes

        result["probes"] = run_probes(lambda rows: embed_texts(model, source, d, rows), text_records(index),
                                      len(index.ids), items, item_emb, cfg.subset_size, cfg.n_subsets, cfg.seed)
    if own:
        source.close()
    return result


def evaluate_run(run: str | Path, caches: list[str], cfg: EvalConfig, which: str = "best",
                 text_set: str | None = None) -> list[dict]:
    """Evaluate a trained run on caches built with the same encoder settings and weights (refused
    otherwise); `text_set` names another set of texts of the same text encoder to query with."""
    model, tcfg = load_run(run, which, cfg.device)
    spec = tcfg.data[0]
    results = []
    for cache in caches or [spec.cache]:
        text = spec.text if text_set is None else cache_spec.find_text_set(
            cache_spec.open_root(cache), spec.text, text_set, cache)
        index = PairIndex(DataSpec(cache, spec.audio, text), cfg.allow_missing)
        check_weights(run, cache, {"audio": dict(index.audio.attrs), "text": dict(index.text.attrs)})
        results.append(evaluate_index(model, index, cfg))
    return results


BASELINE_REQUIRED = ("audio", "audio_ids", "query", "query_item")
BASELINE_OPTIONAL = ("query_source", "query_lang", "query_text")


def read_embeddings(path: str | Path) -> dict[str, np.ndarray]:
    """An embedding file (docs/PROTOCOL.md): .npz or Zarr group, checked array by array."""
    path = Path(path)
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                data = {k: f[k] for k in f.files}
        else:
            import zarr

            g = zarr.open_group(str(path), mode="r")
            data = {k: np.asarray(g[k][:]) for k in g.array_keys()}
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: not a readable .npz or Zarr embedding file ({exc}); see docs/PROTOCOL.md") from None
    missing = [k for k in BASELINE_REQUIRED if k not in data]
    if missing:
        raise UsageError(f"{path}: missing arrays {missing}; an embedding file holds audio, audio_ids, query, "
                         "query_item (and optionally query_source, query_lang); see docs/PROTOCOL.md")
    n, q = len(data["audio_ids"]), len(data["query_item"])
    for name, rows in (("audio", n), ("query", q)):
        a = data[name]
        if a.ndim != 2 or a.shape[0] != rows or a.dtype.kind not in "fiu":
            raise UsageError(f"{path}: array {name!r} must be numeric [{rows}, dim], got {a.dtype} {a.shape}")
        bad = ~np.isfinite(a.astype(np.float64))
        if bad.any():
            raise UsageError(f"{path}: array {name!r} holds {int(bad.any(axis=1).sum())} row(s) with NaN or Inf "
                             f"(first row {int(np.flatnonzero(bad.any(axis=1))[0])}); fix the model that wrote it")
    if data["audio"].shape[1] != data["query"].shape[1]:
        raise UsageError(f"{path}: 'audio' is {data['audio'].shape[1]}-d but 'query' is {data['query'].shape[1]}-d")
    for name in BASELINE_OPTIONAL:
        if name in data and len(data[name]) != q:
            raise UsageError(f"{path}: array {name!r} has {len(data[name])} entries for {q} queries")
    ids = np.array([str(x) for x in data["audio_ids"]])
    names, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        dup = names[counts > 1]
        raise UsageError(f"{path}: array 'audio_ids' repeats {len(dup)} id(s): {', '.join(repr(str(d)) for d in dup[:5])}; "
                         "each clip must appear once")
    return data


def evaluate_embeddings(path: str | Path, cfg: EvalConfig) -> dict:
    """Baseline: precomputed embeddings from another model under exactly the same protocol.

    The file format is docs/PROTOCOL.md's. Clips are ordered by id (so subsets match a run's on the
    same clips and row order never matters), and `cfg.queries` picks queries by `query_source`.
    """
    data = read_embeddings(path)
    ids = np.array([str(x) for x in data["audio_ids"]])
    order = np.argsort(ids, kind="stable")
    ids, audio = ids[order], data["audio"][order]
    pos = {k: i for i, k in enumerate(ids)}
    items = np.array([str(x) for x in data["query_item"]])
    unknown = [x for x in items if x not in pos]
    if unknown:
        raise UsageError(f"{path}: array 'query_item' names {len(unknown)} clip(s) not in audio_ids "
                         f"(first: {unknown[0]!r})")
    q = len(items)
    sources = np.array([str(x) for x in data.get("query_source", np.full(q, "human"))])
    langs = np.array([str(x) for x in data.get("query_lang", np.full(q, "en"))])
    chosen = _wanted(sources, cfg.queries)
    if not chosen.any():
        found = ", ".join(f"{n} {s}" for s, n in zip(*np.unique(sources, return_counts=True))) or "none"
        raise UsageError(f"{path}: no {cfg.queries} queries (query_source has: {found}); use --queries all")
    targets = np.array([pos[x] for x in items])
    chance, warns = context(len(ids), cfg, str(path))
    result = {"baseline": str(path), "n_items": len(ids), "chance": chance, "warnings": warns,
              "queries": {"selection": cfg.queries, "by_lang": {}}, "text_to_music": {}}
    for lang in sorted(set(langs[chosen])):
        sel = chosen & (langs == lang)
        names, counts = np.unique(sources[sel], return_counts=True)
        result["queries"]["by_lang"][lang] = {str(a): int(b) for a, b in zip(names, counts)}
        result["text_to_music"][lang] = metrics.retrieval_metrics(
            data["query"][sel], audio, targets[sel], cfg.subset_size, cfg.n_subsets, cfg.seed)
    return result


def _rank_line(label: str, m: dict) -> str:
    return (f"  {label:<16} R@1 {m['R@1']:.1f}  R@5 {m['R@5']:.1f}  R@10 {m['R@10']:.1f}  MedR {m['MedR']:.0f}  "
            f"MeanR {m['MeanR']:.1f}  ({m['n_queries']:.0f} queries, {m['n_subsets']} subset(s) of {m['subset_size']})")


def report_lines(result: dict) -> list[str]:
    """The printed form of one evaluation result: every number with its context."""
    name = result.get("cache") or result.get("baseline")
    lines = [f"{name}: {result['n_items']} clips, split {result.get('split', '-')}"]
    q = result.get("queries")
    if q:
        used = "; ".join(f"{lang}: " + ", ".join(f"{n} {s}" for s, n in by.items()) for lang, by in q["by_lang"].items())
        lines.append(f"  queries ({q['selection']}): {used}")
    if "chance" in result:
        c = result["chance"]
        lines.append(f"  chance level     R@1 {c['R@1']:.1f}  R@5 {c['R@5']:.1f}  R@10 {c['R@10']:.1f}")
    for lang, m in result["text_to_music"].items():
        lines.append(_rank_line(f"text→music [{lang}]", m))
    if "music_to_text" in result:
        lines.append(_rank_line("music→text", result["music_to_text"]))
    t = result.get("tag_retrieval", {})
    if "roc_auc" in t:
        lines.append(f"  tag retrieval    ROC-AUC {t['roc_auc']:.3f}  PR-AUC {t['pr_auc']:.3f}  ({t['n_tags']} tags)")
    probes = result.get("probes", {})
    for key, label, metric in (("swap_accuracy", "swap accuracy", "accuracy"), ("partial_query", "partial R@10", "R@10")):
        p = probes.get(key)
        if p and "per_category" in p:
            cats = "  ".join(f"{c} {v[metric]:.1f}" for c, v in p["per_category"].items())
            lines.append(f"  {label:<16} {cats}  (%)")
        elif p:
            lines.append(f"  {label:<16} skipped: {p['skipped']}")
    lines += [f"  warning: {w}" for w in result.get("warnings", [])]
    return lines


def table_rows(name: str, result: dict, lang: str = "en") -> dict:
    """One long-format row (for metrics.markdown_table) from an evaluation result."""
    t2m = result["text_to_music"]
    m = t2m.get(lang) or t2m.get("tags") or next(iter(t2m.values()))
    return {"config": name, "dataset": Path(result.get("cache", result.get("baseline", ""))).name, **m,
            **probe_columns(result)}


PROBE_COLUMNS = ("swap acc", "partial R@10")


def probe_columns(result: dict) -> dict:
    """The probes' headline numbers as table columns (absent when a probe was skipped)."""
    p = result.get("probes", {})
    out = {}
    if "mean" in p.get("swap_accuracy", {}):
        out["swap acc"] = p["swap_accuracy"]["mean"]
    if "mean_R@10" in p.get("partial_query", {}):
        out["partial R@10"] = p["partial_query"]["mean_R@10"]
    return out
