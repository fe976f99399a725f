"""The evaluator: text->music retrieval (and music->text, tag retrieval) under one stated protocol.

Conventions live in duetmc.metrics: ranks start at 1, ties count worst-case, every caption is a
query whose target is its clip (keyed by item id, never by caption text), and metrics average over
seeded random subsets of 500 clips. A clip's embedding is the mean of its windows' embeddings,
re-normalised. Queries are the caption texts of the split's clips in each language; a dataset
without captions falls back to its tags-only texts (reported as language "tags").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from duetmc import metrics
from duetmc.feature_source import DEFAULT_MEMORY_BUDGET_GB, open_source, trim_padding
from duetmc.pairs import DataSpec, PairIndex
from duetmc.heads.model import DuetHeads
from duetmc.loss import contrastive_loss
from duetmc.errors import UsageError


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


def queries(index: PairIndex, items: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """lang -> (text rows, position of the target clip in `items`)."""
    position = {int(k): i for i, k in enumerate(items)}
    out = {}
    for lang, pairs in sorted(index.queries.items()):
        sel = [(row, position[k]) for row, k in pairs if k in position]
        if sel:
            rows, targets = zip(*sel)
            out[lang] = (np.array(rows), np.array(targets))
    if not out:
        sel = [(int(index.tags_row[k]), i) for i, k in enumerate(items) if index.tags_row[k] >= 0]
        if sel:
            rows, targets = zip(*sel)
            out["tags"] = (np.array(rows), np.array(targets))
    return out


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
        q = queries(index, items).get("en") or queries(index, items).get("tags")
        if q is not None:
            targets.append((embed_texts(model, source, d, q[0]), q[1] + n))
        n += len(items)
    model.train()
    if not audio:
        return {}
    a, t = torch.from_numpy(np.concatenate(audio)), torch.from_numpy(np.concatenate(text))
    scale = model.logit_scale().cpu()
    chunk = 1024  # the loss depends on the number of negatives: keep it like a training batch
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
    mode: str = "auto"  # feature source: auto | memory | streaming (duetmc.feature_source.choose_mode)
    memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB
    allow_missing: bool = False  # skip items whose feature shards are missing or unreadable (warned)


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


def evaluate_index(model: DuetHeads, index: PairIndex, cfg: EvalConfig, source=None, d: int = 0) -> dict:
    """Every metric for one cache: per-language text->music, music->text, zero-shot tag retrieval.

    `source`/`d` reuse a feature source that already holds this cache as dataset `d` (the trainer's).
    """
    own = source is None
    if own:
        d = 0
        source, _ = open_source([index], cfg.mode, cfg.memory_budget_gb, cfg.device)
    items = index.items(cfg.split) if cfg.split != "all" else np.flatnonzero(index.usable)
    if len(items) == 0:
        raise UsageError(f"{index.spec.cache}: no featurized clips in split {cfg.split!r}")
    item_emb = embed_items(model, source, d, index, items)
    result: dict = {"cache": index.spec.cache, "split": cfg.split, "n_items": int(len(items)), "text_to_music": {}}
    for lang, (rows, targets) in queries(index, items).items():
        q = embed_texts(model, source, d, rows)
        result["text_to_music"][lang] = metrics.retrieval_metrics(
            q, item_emb, targets, cfg.subset_size, cfg.n_subsets, cfg.seed)
        if cfg.music_to_text and lang in ("en", "tags"):
            result["music_to_text"] = metrics.music_to_text_metrics(
                item_emb, q, targets, cfg.subset_size, cfg.n_subsets, cfg.seed)
    labelled = _labels(index, items) if cfg.tag_retrieval else None
    if labelled is not None:
        names, labels = labelled
        tag_emb = embed_texts(model, source, d, np.array([index.labels[n] for n in names]))
        try:
            result["tag_retrieval"] = metrics.tag_retrieval_metrics(tag_emb, item_emb, labels)
        except ValueError as exc:
            result["tag_retrieval"] = {"skipped": str(exc)}
    if own:
        source.close()
    return result


def evaluate_run(run: str | Path, caches: list[str], cfg: EvalConfig, which: str = "best") -> list[dict]:
    """Evaluate a trained run on caches built with the same encoder settings (refused otherwise)."""
    from duetmc.train import load_run

    model, tcfg = load_run(run, which, cfg.device)
    spec = tcfg.data[0]
    results = []
    for cache in caches or [spec.cache]:
        index = PairIndex(DataSpec(cache, spec.audio, spec.text), cfg.allow_missing)
        results.append(evaluate_index(model, index, cfg))
    return results


def evaluate_embeddings(path: str | Path, cfg: EvalConfig) -> dict:
    """Baseline: precomputed embeddings from another model under exactly the same protocol.

    `path` is an .npz with `audio` [N, d], `audio_ids` [N], `query` [Q, d], `query_item` [Q] (ids)
    and optionally `query_lang` [Q]; a Zarr group with the same array names works too.
    """
    path = Path(path)
    if path.suffix == ".npz":
        data = dict(np.load(path, allow_pickle=False))
    else:
        import zarr

        g = zarr.open_group(str(path), mode="r")
        data = {k: np.asarray(g[k][:]) for k in g.array_keys()}
    missing = {"audio", "audio_ids", "query", "query_item"} - set(data)
    if missing:
        raise UsageError(f"{path}: missing arrays {sorted(missing)}; see `duetmc eval --help` for the format")
    ids = [str(x) for x in data["audio_ids"]]
    pos = {k: i for i, k in enumerate(ids)}
    unknown = [str(q) for q in data["query_item"] if str(q) not in pos]
    if unknown:
        raise UsageError(f"{path}: {len(unknown)} queries name clips not in audio_ids (first: {unknown[0]!r})")
    targets = np.array([pos[str(q)] for q in data["query_item"]])
    langs = np.array([str(x) for x in data.get("query_lang", np.full(len(targets), "en"))])
    result = {"baseline": str(path), "n_items": len(ids), "text_to_music": {}}
    for lang in sorted(set(langs)):
        sel = langs == lang
        result["text_to_music"][lang] = metrics.retrieval_metrics(
            data["query"][sel], data["audio"], targets[sel], cfg.subset_size, cfg.n_subsets, cfg.seed)
    return result


def table_rows(name: str, result: dict, lang: str = "en") -> dict:
    """One long-format row (for metrics.markdown_table) from an evaluation result."""
    t2m = result["text_to_music"]
    m = t2m.get(lang) or t2m.get("tags") or next(iter(t2m.values()))
    return {"config": name, "dataset": Path(result.get("cache", result.get("baseline", ""))).name, **m}
