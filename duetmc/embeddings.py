"""Embedding files: any model's clip and query embeddings, scored by `duetmc eval --baseline`.

An embeddings file is an `.npz` (no pickle; strings are fixed-width unicode) with

    audio         float32 [N, d]  one row per clip (L2-normalised or not: retrieval ranks by dot product)
    audio_ids     str [N]         the clips' ids
    query         float32 [Q, d]  one row per text query
    query_item    str [Q]         the id of the clip each query describes (its target)
    query_lang    str [Q]         language of the query (en, de, …; "tags" for tags-only texts)  [optional]
    query_source  str [Q]         where the query came from (human, template, llm, …)             [optional]
    query_text    str [Q]         the query itself                                                [optional]

`write_run_embeddings` writes a trained run's: the same clips, queries and code paths as `duetmc eval RUN`
(duetmc.evaluate), so scoring the file gives the run's numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from duetmc.errors import UsageError


def _query_sources(index) -> dict[tuple[int, str], str]:
    """(text row, item id) -> the record's source, for caption records."""
    from duetmc.cache_spec import read_strings

    rec = index.text["records"]
    kinds = read_strings(rec["kind"])
    rows, items, sources = np.asarray(rec["text_row"][:]), read_strings(rec["item"]), read_strings(rec["source"])
    return {(int(r), str(i)): str(s) for r, i, s, k in zip(rows, items, sources, kinds) if k == "caption"}


def run_embeddings(run: str | Path, cache: str | None = None, split: str = "test", checkpoint: str = "best",
                   device: str = "cpu") -> dict[str, np.ndarray]:
    """A run's clip and query embeddings of one split, as the arrays of an embeddings file."""
    from duetmc.cache_spec import read_strings
    from duetmc.dataset import DataSpec, MemorySource, PairIndex
    from duetmc.evaluate import embed_items, embed_texts, queries
    from duetmc.train import load_run

    model, cfg = load_run(run, checkpoint, device)
    spec = cfg.data[0]
    index = PairIndex(DataSpec(cache or spec.cache, spec.audio, spec.text))
    items = index.items(split) if split != "all" else np.flatnonzero(index.usable)
    if len(items) == 0:
        raise UsageError(f"{index.spec.cache}: no featurized clips in split {split!r}")
    source = MemorySource([index], device)
    try:
        audio = embed_items(model, source, 0, index, items)
        texts, sources = read_strings(index.text["texts"]), _query_sources(index)
        q, q_item, q_lang, q_src, q_text = [], [], [], [], []
        for lang, (rows, targets) in queries(index, items).items():
            q.append(embed_texts(model, source, 0, rows))
            ids = [str(index.ids[items[t]]) for t in targets]
            q_item += ids
            q_lang += [lang] * len(rows)
            q_src += [sources.get((int(r), i), "tags" if lang == "tags" else "") for r, i in zip(rows, ids)]
            q_text += [str(texts[r]) for r in rows]
    finally:
        source.close()
    return {"audio": audio.astype(np.float32), "audio_ids": np.array([str(i) for i in index.ids[items]]),
            "query": np.concatenate(q).astype(np.float32) if q else np.zeros((0, audio.shape[1]), np.float32),
            "query_item": np.array(q_item, dtype=str), "query_lang": np.array(q_lang, dtype=str),
            "query_source": np.array(q_src, dtype=str), "query_text": np.array(q_text, dtype=str)}


def write_embeddings(arrays: dict[str, np.ndarray], out: str | Path) -> Path:
    """Write an embeddings file (.npz); the folder is created, an unwritable path is one line."""
    from duetmc.errors import path_error

    out = Path(out)
    if out.suffix != ".npz":
        raise UsageError(f"--out {out}: an embeddings file ends in .npz")
    for name in ("audio", "audio_ids", "query", "query_item"):
        if name not in arrays:
            raise UsageError(f"embeddings need the array {name!r}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.stem + ".partial.npz")
        np.savez(tmp, **{k: np.asarray(v) for k, v in arrays.items()})
        tmp.replace(out)
    except OSError as exc:
        raise path_error(exc, "while writing embeddings") from None
    return out
