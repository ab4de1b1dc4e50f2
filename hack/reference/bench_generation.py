#!/usr/bin/env python3
"""Reference side of runtime/benches/generation.rs: HF transformers (PyTorch eager, KV cache) on
the same SmolLM2-135M-Instruct weights (dequantised from the same GGUF file to fp32), greedy
decoding of the exact prompt token ids the Rust side used, without and with a PEFT LoRA adapter
(applied unmerged, as the runtime does).

Per variant: prompt processing (one forward over the prompt), time to first token (generate with
one new token: prefill + the first decoding step), and the median whole request; decode tokens/s
is (tokens - 1) / (request - time to first token). Prints one JSON line, with the generated ids so
the Rust side can compare outputs.

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


def timed(fn, runs):
    times = []
    out = None
    for _ in range(runs):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def bench(model, ids, max_new_tokens, runs, eos, label):
    input_ids = torch.tensor([ids], dtype=torch.long)
    attention = torch.ones_like(input_ids)

    def generate(n):
        return model.generate(input_ids, attention_mask=attention, max_new_tokens=n,
                              do_sample=False, use_cache=True, eos_token_id=eos,
                              pad_token_id=eos[0])

    with torch.inference_mode():
        # Warm-up (allocator, kernels), not timed.
        generate(4)
        prefill_s, _ = timed(lambda: model(input_ids=input_ids, use_cache=True), runs)
        ttft_s, _ = timed(lambda: generate(1), runs)
        times = []
        out = None
        for _ in range(runs):
            start = time.perf_counter()
            out = generate(max_new_tokens)
            times.append(time.perf_counter() - start)
            print(f"  reference {label}: {out.shape[1] - len(ids)} tokens in {times[-1]:.2f}s",
                  file=sys.stderr, flush=True)
    generated = out[0, len(ids):].tolist()
    # generate() keeps the stop token; the runtime does not count it.
    if generated and generated[-1] in eos:
        generated = generated[:-1]
    median = statistics.median(times)
    return {
        "median_s": median,
        "tokens": len(generated),
        "tokens_per_s": len(generated) / median,
        "prompt_tokens_per_s": len(ids) / prefill_s,
        "ttft_s": ttft_s,
        "decode_tokens_per_s": (len(generated) - 1) / max(median - ttft_s, 1e-9),
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
    base = bench(model, ids, args.max_new_tokens, args.runs, eos, "base")
    peft_model = PeftModel.from_pretrained(model, args.adapter).eval()
    adapted = bench(peft_model, ids, args.max_new_tokens, args.runs, eos, "lora")
    print(json.dumps({
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "base": base,
        "lora": adapted,
    }))


if __name__ == "__main__":
    main()
