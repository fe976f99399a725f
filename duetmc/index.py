"""A search index over a catalog: clip embeddings from one model, kept in memory, searched by text or audio.

On disk an index is a folder (no pickle anywhere):

    index.json       format, version, the model's identity (model_id, encoders' weights), size, ANN settings
    embeddings.npy   float32 [N, dim], unit rows, in entry order
    entries.jsonl    one clip per line: id, audio (absolute path), start, end (seconds), tags, split
    model/           the exported model (duetmc.pretrained), so a query needs no run directory or cache
    ann.faiss        optional approximate index (faiss IVF-Flat, inner product) for large catalogs

`Index.load(path)` reads it once; a server keeps the object and calls its `search_*` methods, which
answer a warm query in milliseconds: the text encoder loads on the first text query (or `warm()`) and
stays loaded. Scores are cosine similarities. Exact search (one matrix product) is the default; an
index built with `ann=True` answers from faiss unless `exact=True` is asked.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from duetmc.errors import DuetmcError, PathError, UsageError

FORMAT, FORMAT_VERSION = "duetmc-index", 1
META_FILE, EMB_FILE, ENTRIES_FILE, MODEL_DIR, ANN_FILE = (
    "index.json", "embeddings.npy", "entries.jsonl", "model", "ann.faiss")
ENTRY_FIELDS = ("id", "audio", "start", "end", "tags", "split")


class SearchIndexError(DuetmcError, ValueError):
    """An index that cannot answer as asked: another model's query, an unknown id, a malformed folder."""


class Index:
    """A catalog's clip embeddings with their metadata, searchable by text, audio, embedding or id.

    Load once and keep: `index = Index.load("catalog.idx")`; then, from any request handler,
    `index.search_text("calm piano", k=10)`, `index.search_like("clip042")`,
    `index.search_audio("upload.wav")` or `index.search_embedding(vec)`. Each returns a list of hits,
    best first: `{"rank", "id", "score", "tags", "split", "audio", "start", "end"}` (audio is the
    absolute path of the source file; start/end the clip's segment in seconds). `index.entries` lists
    every clip as the same dict without rank and score; `index.entry(id)` finds one.

    `k` must be >= 1; a `k` above the catalog's size returns the whole catalog (see `clipped_k`).
    Searches are read-only, so one Index may serve concurrent requests from threads.
    """

    def __init__(self, path: Path, embeddings: np.ndarray, entries: list[dict], meta: dict, model=None):
        self.path, self.embeddings, self.entries, self.meta = path, embeddings, entries, meta
        self._model = model
        self._pos = {e["id"]: i for i, e in enumerate(entries)}
        self._ann = None

    # --- loading -------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path, model=None, device: str = "cpu") -> "Index":
        """Read an index folder. `model` (a DuetModel) replaces the stored one; it must be the same model."""
        path = Path(path)
        meta_path = path / META_FILE
        if not meta_path.is_file():
            raise PathError(f"{path}: not a duetmc index (no {META_FILE}); build one with `duetmc index build`")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT or meta.get("format_version", 0) > FORMAT_VERSION:
            raise SearchIndexError(f"{meta_path}: not a {FORMAT} v{FORMAT_VERSION} index; rebuild it with this duetmc")
        emb = np.load(path / EMB_FILE, allow_pickle=False)
        with open(path / ENTRIES_FILE, encoding="utf-8") as f:
            entries = [json.loads(line) for line in f if line.strip()]
        if len(entries) != len(emb):
            raise SearchIndexError(f"{path}: {len(entries)} entries but {len(emb)} embeddings; rebuild the index")
        index = cls(path, emb, entries, meta)
        if model is not None:
            index.check_model(model)
            index._model = model
        index._device = device
        return index

    @classmethod
    def from_embeddings(cls, model, embeddings: np.ndarray, entries: list[dict]) -> "Index":
        """An in-memory index (nothing written): the one-off `duetmc search` uses it."""
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": model.describe(),
                "n": len(entries), "dim": int(embeddings.shape[1]), "ann": None}
        return cls(Path("<memory>"), np.asarray(embeddings, dtype=np.float32), entries, meta, model)

    @property
    def model(self):
        """The index's DuetModel (loaded from `model/` on first use, once)."""
        if self._model is None:
            from duetmc.pretrained import DuetModel

            self._model = DuetModel.from_pretrained(self.path / MODEL_DIR, device=getattr(self, "_device", "cpu"),
                                                    progress=False)
            self.check_model(self._model)
        return self._model

    @property
    def model_id(self) -> str:
        return self.meta["model"]["model_id"]

    def check_model(self, model) -> None:
        """Refuse a model other than the one whose embeddings the index holds."""
        if model.model_id != self.model_id:
            raise SearchIndexError(f"{self.path}: the index was built with model {self.model_id[:12]}…, the query "
                              f"model is {model.model_id[:12]}…; rebuild the index with this model "
                              "(duetmc index build) or query it with its own")

    def warm(self) -> "Index":
        """Load the text encoder and the ANN index now, so the first request is as fast as the rest."""
        self.model.text_encoder()
        if self.meta.get("ann"):
            self._ann_index()
        return self

    def __len__(self) -> int:
        return len(self.entries)

    def entry(self, clip_id: str) -> dict:
        if clip_id not in self._pos:
            raise SearchIndexError(f"{self.path}: no clip with id {clip_id!r} in this index")
        return self.entries[self._pos[clip_id]]

    # --- searching -----------------------------------------------------------------------------

    def clipped_k(self, k: int) -> int:
        """k checked (>= 1) and clipped to the catalog's size."""
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise UsageError(f"-k {k}: ask for at least 1 result")
        return min(int(k), len(self))

    def search_text(self, query: str, k: int = 10, exact: bool = False) -> list[dict]:
        """Clips best matching one free-text query."""
        return self.search_texts([query], k, exact)[0]

    def search_texts(self, queries: list[str], k: int = 10, exact: bool = False) -> list[list[dict]]:
        """Several text queries at once (encoded in one batch)."""
        queries = list(queries)
        for i, q in enumerate(queries):
            if not isinstance(q, str) or not q.strip():
                raise UsageError(f"query {i + 1} is empty; type a description such as \"calm piano\"")
        if not queries:
            raise UsageError("no queries given")
        k = self.clipped_k(k)
        return self._search(self.model.embed_text(queries), k, exact)

    def search_embedding(self, embedding: np.ndarray, k: int = 10, exact: bool = False,
                         model_id: str | None = None) -> list[dict] | list[list[dict]]:
        """Nearest clips to an embedding [dim] (one list) or a batch [Q, dim] (a list per row).

        Pass `model_id` (DuetModel.model_id) when the embedding came from elsewhere: another model is refused."""
        if model_id is not None and model_id != self.model_id:
            raise SearchIndexError(f"{self.path}: the embedding comes from model {model_id[:12]}…, the index holds "
                              f"{self.model_id[:12]}…; embed it with the index's model")
        emb = np.asarray(embedding, dtype=np.float32)
        if emb.ndim not in (1, 2) or emb.shape[-1] != self.embeddings.shape[1]:
            raise UsageError(f"embedding of shape {emb.shape}; this index needs [{self.embeddings.shape[1]}] "
                             f"or [queries, {self.embeddings.shape[1]}]")
        hits = self._search(np.atleast_2d(emb), self.clipped_k(k), exact)
        return hits[0] if emb.ndim == 1 else hits

    def search_like(self, clip_id: str, k: int = 10, exact: bool = False) -> list[dict]:
        """"More like this": the clips nearest to one of the index's clips, itself left out."""
        i = self._pos.get(clip_id)
        if i is None:
            raise SearchIndexError(f"{self.path}: no clip with id {clip_id!r} in this index")
        k = self.clipped_k(k)
        hits = self._search(self.embeddings[i:i + 1], min(k + 1, len(self)), exact, exclude=i)[0]
        return hits[:k]

    def search_audio(self, audio, k: int = 10, sample_rate: int | None = None, exact: bool = False) -> list[dict]:
        """"More like this" for an audio file (path) or waveform (array at `sample_rate`)."""
        k = self.clipped_k(k)
        emb = self.model.embed_audio([audio], sample_rate=sample_rate, errors="raise")
        return self._search(emb, k, exact)[0]

    def _search(self, q: np.ndarray, k: int, exact: bool, exclude: int | None = None) -> list[list[dict]]:
        if self.meta.get("ann") and not exact:
            scores, idx = self._ann_index().search(np.ascontiguousarray(q, dtype=np.float32), k)
        else:
            sims = q @ self.embeddings.T
            idx = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < sims.shape[1] else \
                np.tile(np.arange(sims.shape[1]), (len(q), 1))
            scores = np.take_along_axis(sims, idx, 1)
            order = np.lexsort((idx, -scores), axis=1)  # best first; ties by catalog order
            idx, scores = np.take_along_axis(idx, order, 1), np.take_along_axis(scores, order, 1)
        return [self._hits(row_i, row_s, exclude) for row_i, row_s in zip(idx, scores)]

    def _hits(self, idx, scores, exclude) -> list[dict]:
        keep = [(int(i), float(s)) for i, s in zip(idx, scores) if i >= 0 and i != exclude]
        return [{"rank": r, "score": s, **self.entries[i]} for r, (i, s) in enumerate(keep, 1)]

    def _ann_index(self):
        if self._ann is None:
            import faiss

            self._ann = faiss.read_index(str(self.path / ANN_FILE))
            self._ann.nprobe = int(self.meta["ann"]["nprobe"])
        return self._ann


# --- building ----------------------------------------------------------------------------------


def ann_params(n: int) -> dict:
    """IVF-Flat sizes: ~sqrt(N) lists (cheap to train), probing 1/16 of them (at least 8): recall@10 and
    latency at 1M vectors are in BENCHMARKS.md ("Search index")."""
    nlist = int(max(1, min(65536, round(np.sqrt(n)), n // 39)))  # k-means wants >= 39 points a list
    return {"library": "faiss", "kind": "IVFFlat", "metric": "inner_product", "nlist": nlist,
            "nprobe": int(min(nlist, max(8, nlist // 16)))}


def build_ann(embeddings: np.ndarray, params: dict, train_size: int = 64 * 1024):
    """A faiss IVF-Flat inner-product index over unit vectors (trained on a seeded sample)."""
    import faiss

    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    d, nlist = x.shape[1], params["nlist"]
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    sample = x if len(x) <= max(train_size, 40 * nlist) else \
        x[np.random.default_rng(0).choice(len(x), max(train_size, 40 * nlist), replace=False)]
    ivf.cp.seed = 0
    ivf.train(sample)
    ivf.add(x)
    ivf.nprobe = params["nprobe"]
    return ivf


def write_index(out: str | Path, model, embeddings: np.ndarray, entries: list[dict], ann: bool = False,
                extra: dict | None = None) -> Index:
    """Write an index folder (replacing one that is there) and return it loaded."""
    import shutil

    out = Path(out)
    if len(entries) == 0:
        raise UsageError(f"{out}: nothing to index (no clip could be embedded)")
    if (out.exists() and not (out / META_FILE).exists() and any(out.iterdir())) or out.is_file():
        raise PathError(f"{out}: exists and is not a duetmc index; choose another --out")
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": model.describe(),
            "n": len(entries), "dim": int(embeddings.shape[1]), "ann": ann_params(len(entries)) if ann else None,
            **(extra or {})}
    tmp = out.with_name(out.name + ".partial")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        np.save(tmp / EMB_FILE, np.ascontiguousarray(embeddings, dtype=np.float32), allow_pickle=False)
        with open(tmp / ENTRIES_FILE, "w", encoding="utf-8") as f:
            for e in entries:
                f.write(json.dumps({k: e.get(k) for k in ENTRY_FIELDS}, ensure_ascii=False) + "\n")
        model.save_pretrained(tmp / MODEL_DIR)
        if ann:
            import faiss

            faiss.write_index(build_ann(embeddings, meta["ann"]), str(tmp / ANN_FILE))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except OSError as exc:
        from duetmc.errors import path_error

        shutil.rmtree(tmp, ignore_errors=True)
        raise path_error(exc, "while writing the index") from None
    return Index.load(out, model)
