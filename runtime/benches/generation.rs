//! Generation benchmark: the runtime's Llama (tch, KV cache) vs the reference (HF transformers,
//! PyTorch eager, KV cache) on the same SmolLM2-135M-Instruct weights (the same GGUF file
//! dequantised to fp32 on both sides), one run on one machine, 2 threads on each side.
//!
//!     hack/setup-reference.sh && cargo bench -p switchboard-runtime --bench generation
//!
//! Both sides decode greedily from the exact same prompt token ids (a grounded support prompt
//! rendered with the model's chat template) up to 64 new tokens, without and with a PEFT LoRA
//! adapter (`runtime/model/tests/fixtures/lora/qv`: r=4 on q_proj and v_proj of every layer,
//! applied per request, unmerged, on both sides). Reported: median request time (prefill +
//! decode), tokens/s, the ratio (> 1: runtime faster; goal >= 1.0) and the per-request LoRA
//! overhead (goal <= 15%). Greedy outputs are compared token by token. Not a test: timings are
//! only compared within one run.
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use switchboard_model::Generator;
use switchboard_model::chat::ChatMessage;
use switchboard_model::generate::{Generation, GenerationConfig, Sampling};
use switchboard_model::lora::LoraAdapter;

type BoxError = Box<dyn std::error::Error>;

const THREADS: i32 = 2;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn greedy(max_new_tokens: usize) -> GenerationConfig {
    GenerationConfig {
        sampling: Sampling::Greedy,
        max_new_tokens,
        stop_token_ids: Vec::new(),
    }
}

/// Median request time and the last generation.
fn bench(
    generator: &Generator,
    ids: &[u32],
    adapter: Option<&LoraAdapter>,
    (max_new_tokens, runs): (usize, usize),
) -> Result<(Duration, Generation), BoxError> {
    generator.generate_ids(ids, &greedy(4), adapter)?;
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..runs {
        let started = Instant::now();
        let g = generator.generate_ids(ids, &greedy(max_new_tokens), adapter)?;
        times.push(started.elapsed());
        eprintln!(
            "  switchboard {}: {} tokens in {:.2}s",
            if adapter.is_some() { "lora" } else { "base" },
            g.token_ids.len(),
            started.elapsed().as_secs_f64()
        );
        last = Some(g);
    }
    times.sort();
    let generation = last.ok_or("no run")?;
    // The median as Python's statistics.median computes it (mean of the middle two when even).
    let mid = times.len() / 2;
    let median = if times.len() % 2 == 0 {
        (times[mid - 1] + times[mid]) / 2
    } else {
        times[mid]
    };
    Ok((median, generation))
}

fn main() -> Result<(), BoxError> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let gguf = root.join(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let adapter_dir = root.join("runtime/model/tests/fixtures/lora/qv");
    let python = root.join(".cache/venv-ref/bin/python");
    for (path, fix) in [
        (&gguf, "hack/setup.sh models"),
        (
            &python,
            "hack/setup-reference.sh (and `.cache/venv-ref/bin/pip install peft`)",
        ),
    ] {
        if !path.exists() {
            return Err(format!("{} is missing: run {fix}", path.display()).into());
        }
    }
    // SWITCHBOARD_BENCH_TOKENS / SWITCHBOARD_BENCH_RUNS shorten a run on a busy machine.
    let max_new_tokens = env_usize("SWITCHBOARD_BENCH_TOKENS", 64);
    let runs = env_usize("SWITCHBOARD_BENCH_RUNS", 3).max(1);
    tch::set_num_threads(THREADS);
    let mut generator = Generator::load(&gguf, tch::Device::Cpu)?;
    generator.load_adapter("qv", &adapter_dir)?;
    let adapter = generator.adapter("qv")?;

    let prompt = generator.render_chat(&[
        ChatMessage::system("You are a customer support assistant. Use only the passages the user gives you."),
        ChatMessage::user(
            "Passages:\n[1] [Refund policy > Refund window]\nYou can request a full refund within 14 days \
             of your first payment for a new subscription or an upgrade. After 14 days, payments are \
             non-refundable, but you can cancel at any time to stop future renewals.\n\n\
             Question: Explain in detail how refunds work, step by step, and what happens after 14 days.",
        ),
    ])?;
    let ids = generator.tokenizer().encode(&prompt, false)?;
    let eos: Vec<String> = generator
        .tokenizer()
        .eos_token_ids()
        .iter()
        .map(u32::to_string)
        .collect();

    let limits = (max_new_tokens, runs);
    let (base_time, base) = bench(&generator, &ids, None, limits)?;
    let (lora_time, lora) = bench(&generator, &ids, Some(adapter.as_ref()), limits)?;
    eprintln!("running the reference (HF transformers + PEFT)...");

    let scratch = std::env::temp_dir().join(format!("sb-bench-gen-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let ids_file = scratch.join("prompt_ids.json");
    std::fs::write(&ids_file, serde_json::to_string(&ids)?)?;
    let output = Command::new(&python)
        .arg(root.join("hack/reference/bench_generation.py"))
        .args(["--prompt-ids".as_ref(), ids_file.as_os_str()])
        .args(["--adapter".as_ref(), adapter_dir.as_os_str()])
        .args(["--max-new-tokens", &max_new_tokens.to_string()])
        .args(["--runs", &runs.to_string()])
        .args(["--threads", &THREADS.to_string()])
        .args(["--eos", &eos.join(",")])
        .env("OMP_NUM_THREADS", THREADS.to_string())
        .stderr(std::process::Stdio::inherit())
        .output()?;
    let _ = std::fs::remove_dir_all(&scratch);
    if !output.status.success() {
        return Err(format!(
            "reference benchmark failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    let reference: serde_json::Value = serde_json::from_slice(
        output
            .stdout
            .split(|b| *b == b'\n')
            .rfind(|l| !l.is_empty())
            .unwrap_or_default(),
    )?;

    let tps = |g: &Generation, t: Duration| g.token_ids.len() as f64 / t.as_secs_f64();
    let ours_base = tps(&base, base_time);
    let ours_lora = tps(&lora, lora_time);
    let ref_base = reference["base"]["tokens_per_s"]
        .as_f64()
        .unwrap_or(f64::NAN);
    let ref_lora = reference["lora"]["tokens_per_s"]
        .as_f64()
        .unwrap_or(f64::NAN);
    let same = |side: &str, g: &Generation| {
        reference[side]["ids"]
            .as_array()
            .map(|ids| {
                let theirs: Vec<u64> = ids.iter().filter_map(serde_json::Value::as_u64).collect();
                let ours: Vec<u64> = g.token_ids.iter().map(|&t| u64::from(t)).collect();
                let common = theirs.iter().zip(&ours).take_while(|(a, b)| a == b).count();
                format!("{common}/{} tokens identical", ours.len().max(theirs.len()))
            })
            .unwrap_or_default()
    };
    println!(
        "generation benchmark: SmolLM2-135M-Instruct (GGUF Q4_1 -> fp32), prompt {} tokens, greedy, \
         up to {max_new_tokens} new tokens, median of {runs}, {THREADS} threads each side (torch {})",
        ids.len(),
        reference["torch"].as_str().unwrap_or("?")
    );
    println!(
        "{:<14} {:>20} {:>20} {:>8}",
        "", "switchboard", "reference", "ratio"
    );
    for (name, ours, ours_t, g, theirs, side) in [
        ("base", ours_base, base_time, &base, ref_base, "base"),
        ("with LoRA", ours_lora, lora_time, &lora, ref_lora, "lora"),
    ] {
        println!(
            "{name:<14} {:>9.1} tok/s {:>4.2}s {:>9.1} tok/s {:>4.2}s {:>7.2}x   ({})",
            ours,
            ours_t.as_secs_f64(),
            theirs,
            reference[side]["median_s"].as_f64().unwrap_or(f64::NAN),
            ours / theirs,
            same(side, g)
        );
    }
    let overhead = |base: f64, lora: f64| (base / lora - 1.0) * 100.0;
    println!(
        "LoRA overhead per request: switchboard {:+.1}% (goal <= 15%), reference (PEFT unmerged) {:+.1}%",
        overhead(ours_base, ours_lora),
        overhead(ref_base, ref_lora)
    );
    println!("ratio = switchboard tok/s / reference tok/s (> 1: switchboard faster; goal >= 1.0)");
    Ok(())
}
