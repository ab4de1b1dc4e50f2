#!/usr/bin/env python3
"""A small generated BertForSequenceClassification checkpoint and its reference logits.

No pretrained cross-encoder is available here, so the reranker's loader is checked against a tiny
randomly initialised checkpoint (seeded) that Hugging Face transformers itself builds, saves and runs.
Writes runtime/model/tests/fixtures/tiny-cross-encoder/{config.json,model.safetensors,reference.json};
the test pairs it with the MiniLM tokenizer.json (same vocabulary) from .cache/models.

    hack/setup-reference.sh && .cache/venv-ref/bin/python hack/reference/cross_encoder_fixture.py
"""
import json
import pathlib

import torch
from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOKENIZER = ROOT / ".cache/models/all-MiniLM-L6-v2/tokenizer.json"
OUT = ROOT / "runtime/model/tests/fixtures/tiny-cross-encoder"

QUERY = "how long is the refund window for annual plans?"
PASSAGES = [
    "Annual plans can be refunded within 14 days of purchase.",
    "Reset your password from the sign-in page.",
    "Refund requests after the window are reviewed case by case by billing support, "
    "who may offer account credit instead of a refund.",
    "SSO",
]


def main() -> None:
    torch.manual_seed(7)
    config = BertConfig(
        vocab_size=30522, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=16, max_position_embeddings=512, num_labels=1, initializer_range=0.5,
    )
    model = BertForSequenceClassification(config).eval()
    OUT.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(OUT, safe_serialization=True)
    tok = PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZER))
    batch = tok([QUERY] * len(PASSAGES), PASSAGES, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits[:, 0]
    (OUT / "reference.json").write_text(json.dumps({
        "generator": "hack/reference/cross_encoder_fixture.py",
        "query": QUERY,
        "passages": PASSAGES,
        "logits": [float(x) for x in logits],
    }, indent=1) + "\n")
    print("logits", [round(float(x), 4) for x in logits])


if __name__ == "__main__":
    main()
