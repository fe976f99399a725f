"""Benchmark: the search index. (1) Approximate search at scale: recall@10 of the faiss IVF-Flat index
(duetmc.index.build_ann, the settings `duetmc index build --ann` uses) against exact search at 1 million
256-d vectors, with build time and query latency; and faiss vs usearch (HNSW) side by side at
`--compare-n` vectors. (2) The real `Index` at 10,000 clips: cold start (new process: load the index and
the MiniLM text encoder, answer one query) and warm text-query latency (exact search).

Vectors are synthetic: `--clusters` random unit centres, each point a centre plus Gaussian noise of
norm ~`--noise`, renormalised (clustered like embeddings of a catalog with many similar clips; real
embeddings may cluster more tightly, which helps IVF). Queries are held-out points of the same mix.

    .venv/bin/python bench/index.py [--n 1000000] [--compare-n 50000] [--clips 10000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import ROOT, emit, stats


def clustered(n: int, d: int, clusters: int, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.empty((n, d), dtype=np.float32)
    for lo in range(0, n, 100_000):  # in blocks: bounded temporary memory
        hi = min(n, lo + 100_000)
        x[lo:hi] = centres[rng.integers(0, clusters, hi - lo)] + \
            rng.standard_normal((hi - lo, d)).astype(np.float32) * (noise / np.sqrt(d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def exact_top10(x: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    sims = q @ x.T
    top = np.argpartition(-sims, 10, axis=1)[:, :10]
    return top, (time.perf_counter() - t0) / len(q)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / 10 for f, t in zip(found, truth)]))


def per_query_ms(search, q: np.ndarray) -> dict:
    times = []
    for row in q:
        t0 = time.perf_counter()
        search(row[None])
        times.append((time.perf_counter() - t0) * 1e3)
    return stats(times)


def faiss_at(x: np.ndarray, q: np.ndarray, truth: np.ndarray, nprobe_factors=(1.0,)) -> dict:
    from duetmc.index import ann_params, build_ann

    params = ann_params(len(x))
    t0 = time.perf_counter()
    ivf = build_ann(x, params)
    out = {"library": "faiss", "params": params, "build_s": time.perf_counter() - t0, "by_nprobe": {}}
    for f in nprobe_factors:
        ivf.nprobe = max(1, int(round(params["nprobe"] * f)))
        _, found = ivf.search(q, 10)
        out["by_nprobe"][ivf.nprobe] = {"recall@10": recall(found, truth),
                                        "query_ms": per_query_ms(lambda v: ivf.search(v, 10), q[:100])}
    return out


def usearch_at(x: np.ndarray, q: np.ndarray, truth: np.ndarray) -> dict:
    from usearch.index import Index as USearchIndex

    u = USearchIndex(ndim=x.shape[1], metric="ip", dtype="f32", connectivity=16, expansion_add=128,
                     expansion_search=64)
    t0 = time.perf_counter()
    u.add(np.arange(len(x)), x)
    build = time.perf_counter() - t0
    found = u.search(q, 10).keys
    return {"library": "usearch", "params": {"kind": "HNSW", "connectivity": 16, "expansion_add": 128,
                                             "expansion_search": 64}, "build_s": build,
            "recall@10": recall(found, truth), "query_ms": per_query_ms(lambda v: u.search(v, 10), q[:100])}


def scale_part(args) -> dict:
    d = 256
    x = clustered(args.n + args.queries, d, args.clusters, args.noise, seed=0)
    x, q = x[:args.n], x[args.n:]
    truth, exact_s = exact_top10(x, q)
    out = {"n": args.n, "exact_query_ms": exact_s * 1e3,
           "faiss": faiss_at(x, q, truth, nprobe_factors=(1.0, 0.5, 2.0))}
    small, qs = x[:args.compare_n], q
    truth_s, exact_small = exact_top10(small, qs)
    out["compare"] = {"n": args.compare_n, "exact_query_ms": exact_small * 1e3,
                      "faiss": faiss_at(small, qs, truth_s), "usearch": usearch_at(small, qs, truth_s)}
    return out


COLD = """
import sys, time, json
t0 = time.perf_counter()
from duetmc.index import Index
index = Index.load(sys.argv[1]).warm()
index.search_text("calm piano for studying", k=10)
print(json.dumps({"cold_s": time.perf_counter() - t0}))
"""


def index_part(args, work: Path) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from model_fixtures import build_run

    from duetmc.index import Index, write_index
    from duetmc.pretrained import DuetModel

    run = build_run(work / "run", "tiny-audio", "minilm", n_items=8, seconds=1.5, window_s=1.0)
    model = DuetModel.from_run(run["run"], progress=False)
    emb = clustered(args.clips, model.dim, 100, args.noise, seed=1)
    entries = [{"id": f"clip{i:05d}", "audio": f"/music/clip{i:05d}.flac", "start": 0.0, "end": 30.0,
                "tags": {"genre": ["rock"]}, "split": "test"} for i in range(args.clips)]
    t0 = time.perf_counter()
    write_index(work / "bench.idx", model, emb, entries)
    build_s = time.perf_counter() - t0
    cold = [json.loads(subprocess.run([sys.executable, "-c", COLD, str(work / "bench.idx")], capture_output=True,
                                      text=True, check=True, cwd=ROOT).stdout)["cold_s"] for _ in range(args.cold_runs)]
    index = Index.load(work / "bench.idx").warm()
    queries = [f"a {m} {g} song with {i}" for m in ("calm", "dark", "happy", "sad") for g in ("jazz", "rock", "folk")
               for i in ("piano", "drums", "strings")]
    index.search_text(queries[0])  # first inference warms torch's kernels
    warm = []
    for q in queries:
        t = time.perf_counter()
        index.search_text(q, k=10)
        warm.append((time.perf_counter() - t) * 1e3)
    vec = index.embeddings[0]
    emb_ms = per_query_ms(lambda v: index.search_embedding(v[0], k=10), np.tile(vec, (50, 1)))
    return {"clips": args.clips, "write_s": build_s, "cold_start_s": stats(cold), "warm_text_query_ms": stats(warm),
            "embedding_query_ms": emb_ms, "text_encoder": model.text.encoder["name"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--compare-n", type=int, default=50_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--clusters", type=int, default=4096)
    ap.add_argument("--noise", type=float, default=0.8)
    ap.add_argument("--clips", type=int, default=10_000)
    ap.add_argument("--cold-runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="100k / 20k vectors, 1 cold run")
    args = ap.parse_args()
    if args.quick:
        args.n, args.compare_n, args.cold_runs = 100_000, 20_000, 1
    with tempfile.TemporaryDirectory() as tmp:
        result = {"index": index_part(args, Path(tmp)), "scale": scale_part(args)}
    s, i = result["scale"], result["index"]
    lines = [f"index at {i['clips']:,} clips (text encoder {i['text_encoder']}): cold start "
             f"{i['cold_start_s']['median']:.2f} s, warm text query {i['warm_text_query_ms']['median']:.1f} ms "
             f"(embedding only: {i['embedding_query_ms']['median']:.2f} ms)",
             f"{s['n']:,} vectors: exact {s['exact_query_ms']:.1f} ms/query; faiss IVF build {s['faiss']['build_s']:.1f} s"]
    for nprobe, r in s["faiss"]["by_nprobe"].items():
        lines.append(f"  nprobe {nprobe}: recall@10 {r['recall@10']:.3f}, {r['query_ms']['median']:.2f} ms/query")
    c = s["compare"]
    for lib in ("faiss", "usearch"):
        r = c[lib]
        rr = r.get("recall@10") or next(iter(r["by_nprobe"].values()))["recall@10"]
        ms = (r.get("query_ms") or next(iter(r["by_nprobe"].values()))["query_ms"])["median"]
        lines.append(f"{c['n']:,} vectors, {lib}: build {r['build_s']:.1f} s, recall@10 {rr:.3f}, {ms:.2f} ms/query")
    emit("index", result, "\n".join(lines))


if __name__ == "__main__":
    main()
