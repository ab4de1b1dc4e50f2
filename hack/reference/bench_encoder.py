#!/usr/bin/env python3
"""sentence-transformers side of the encoder benchmark (runtime/model/benches/encoder.rs runs it).

Embeds the given passages with the same checkpoint, batch size and thread count as the Rust side and
prints one JSON line: {"passages": n, "seconds": best, "passages_per_s": ...}.
"""
import argparse
import json
import time

import torch
from sentence_transformers import SentenceTransformer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--passages", required=True, help="file with one JSON string per line")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    passages = [json.loads(line) for line in open(args.passages, encoding="utf-8") if line.strip()]
    model = SentenceTransformer(args.model, device="cpu")
    model.encode(passages[: args.batch_size], batch_size=args.batch_size)  # warm-up
    best = float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        with torch.inference_mode():
            model.encode(passages, batch_size=args.batch_size, convert_to_numpy=True)
        best = min(best, time.perf_counter() - start)
    print(json.dumps({"passages": len(passages), "seconds": best, "passages_per_s": len(passages) / best}))


if __name__ == "__main__":
    main()
