#!/usr/bin/env python3
"""Python reference side of the retrieval benchmark (runtime/benches/retrieval.rs runs it).

Same corpus (the exact texts the Rust side embedded), same queries, same checkpoint, same thread
count. Build = BM25Okapi over lower-cased word tokens + sentence-transformers embeddings of every
passage (L2-normalised). Queries: BM25 (get_scores + top-k), dense (encode the query + exact dot
product + top-k), hybrid (both, reciprocal-rank fusion with k = 60 over the top `candidates` of
each). Prints one JSON line: {"build_s": ..., "bm25": {"p50_ms": ..., "p99_ms": ...}, ...}.
"""
import argparse
import json
import re
import time

import numpy as np
import torch
from rank_bm25 import BM25Okapi
from sentence_transformers import SentenceTransformer

TOKEN = re.compile(r"\w+")


def tokenize(text: str) -> list[str]:
    return TOKEN.findall(text.lower())


def top(scores: np.ndarray, k: int) -> np.ndarray:
    k = min(k, len(scores))
    idx = np.argpartition(-scores, k - 1)[:k]
    return idx[np.argsort(-scores[idx])]


def percentiles(samples: list[float]) -> dict:
    ms = np.array(samples) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--corpus", required=True, help="one JSON string per line")
    ap.add_argument("--queries", required=True, help="one JSON string per line")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--candidates", type=int, default=50)
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=20)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    corpus = [json.loads(l) for l in open(args.corpus, encoding="utf-8") if l.strip()]
    queries = [json.loads(l) for l in open(args.queries, encoding="utf-8") if l.strip()]
    model = SentenceTransformer(args.model, device="cpu")  # loading is not part of the build
    model.encode(corpus[: args.batch_size], batch_size=args.batch_size)  # warm-up

    start = time.perf_counter()
    bm25 = BM25Okapi([tokenize(t) for t in corpus])
    with torch.inference_mode():
        matrix = model.encode(corpus, batch_size=args.batch_size, convert_to_numpy=True,
                              normalize_embeddings=True)
    build_s = time.perf_counter() - start

    def q_bm25(q: str) -> np.ndarray:
        return top(bm25.get_scores(tokenize(q)), args.candidates)

    def q_dense(q: str) -> np.ndarray:
        with torch.inference_mode():
            v = model.encode([q], convert_to_numpy=True, normalize_embeddings=True)[0]
        return top(matrix @ v, args.candidates)

    def q_hybrid(q: str) -> list[int]:
        fused: dict[int, float] = {}
        for ranked in (q_bm25(q), q_dense(q)):
            for rank, i in enumerate(ranked):
                fused[int(i)] = fused.get(int(i), 0.0) + 1.0 / (60.0 + rank + 1)
        return sorted(fused, key=fused.get, reverse=True)[: args.top_k]

    out = {"passages": len(corpus), "queries": len(queries), "build_s": build_s}
    for name, fn in (("bm25", q_bm25), ("dense", q_dense), ("hybrid", q_hybrid)):
        for q in queries[: args.warmup]:
            fn(q)
        samples = []
        for q in queries:
            t = time.perf_counter()
            fn(q)
            samples.append(time.perf_counter() - t)
        out[name] = percentiles(samples)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
