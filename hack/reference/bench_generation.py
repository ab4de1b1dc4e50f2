#!/usr/bin/env python3
"""Reference side of runtime/benches/generation.rs: HF transformers (PyTorch eager, KV cache) on
the same SmolLM2-135M-Instruct weights (dequantised from the same GGUF file to fp32), greedy
decoding of the exact prompt token ids the Rust side used, without and with a PEFT LoRA adapter
(applied unmerged, as the runtime does).

Prints one JSON line: per variant the median request time, generated tokens, tokens/s, and the
generated ids (so the Rust side can check both produced the same tokens).

    .cache/venv-ref/bin/python hack/reference/bench_generation.py --prompt-ids ids.json \
        --adapter runtime/model/tests/fixtures/lora/qv --max-new-tokens 64 --runs 3
"""
import argparse
import json
import os
import pathlib
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from peft import PeftModel
from transformers import LlamaForCausalLM

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODELS = ROOT / ".cache/models"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def bench(model, ids, max_new_tokens, runs, eos):
    input_ids = torch.tensor([ids], dtype=torch.long)
    attention = torch.ones_like(input_ids)
    times, out = [], None
    with torch.inference_mode():
        # Warm-up (allocator, kernels), not timed.
        model.generate(input_ids, attention_mask=attention, max_new_tokens=4, do_sample=False,
                       use_cache=True, eos_token_id=eos, pad_token_id=eos[0])
        for _ in range(runs):
            start = time.perf_counter()
            out = model.generate(input_ids, attention_mask=attention, max_new_tokens=max_new_tokens,
                                 do_sample=False, use_cache=True, eos_token_id=eos,
                                 pad_token_id=eos[0])
            times.append(time.perf_counter() - start)
            print(f"  reference: {out.shape[1] - len(ids)} tokens in {times[-1]:.2f}s", file=sys.stderr, flush=True)
    generated = out[0, len(ids):].tolist()
    # generate() keeps the stop token; the runtime does not count it.
    if generated and generated[-1] in eos:
        generated = generated[:-1]
    median = statistics.median(times)
    return {
        "median_s": median,
        "tokens": len(generated),
        "tokens_per_s": len(generated) / median,
        "ids": generated,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompt-ids", required=True)
    parser.add_argument("--adapter", required=True)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eos", default="")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ids = json.loads(pathlib.Path(args.prompt_ids).read_text())
    eos = [int(x) for x in args.eos.split(",") if x]

    model = LlamaForCausalLM.from_pretrained(
        str(MODELS), gguf_file=GGUF, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    if not eos:
        eos = [model.config.eos_token_id]
    base = bench(model, ids, args.max_new_tokens, args.runs, eos)
    peft_model = PeftModel.from_pretrained(model, args.adapter).eval()
    adapted = bench(peft_model, ids, args.max_new_tokens, args.runs, eos)
    print(json.dumps({
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "base": base,
        "lora": adapted,
    }))


if __name__ == "__main__":
    main()
