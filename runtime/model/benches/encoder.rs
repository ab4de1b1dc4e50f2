//! Encoder throughput: this crate's MiniLM encoder vs sentence-transformers, same checkpoint, same
//! passages (the 503 Zaragoza FAQ answers), same batch size, 2 threads each, one run on one machine.
//!
//!     hack/setup-reference.sh && cargo bench -p switchboard-model --bench encoder
//!
//! Prints passages/s for both and the ratio (goal >= 1.2). Not a test: timings are only compared
//! within one run.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use switchboard_model::SentenceEncoder;

const THREADS: i32 = 2;
const BATCH: usize = 32;
const REPEATS: usize = 3;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let model_dir = root.join(".cache/models/all-MiniLM-L6-v2");
    let faq = root.join(".cache/models/zaragoza-faq-en.jsonl");
    let python = root.join(".cache/venv-ref/bin/python");
    for (path, fix) in [
        (&model_dir, "hack/setup.sh models"),
        (&faq, "hack/setup.sh models"),
        (&python, "hack/setup-reference.sh"),
    ] {
        if !path.exists() {
            return Err(format!("{} is missing: run {fix}", path.display()).into());
        }
    }

    let passages: Vec<String> = std::fs::read_to_string(&faq)?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let row: serde_json::Value = serde_json::from_str(l)?;
            Ok(row["a"].as_str().unwrap_or_default().to_owned())
        })
        .collect::<Result<_, serde_json::Error>>()?;
    let passages_file: PathBuf = std::env::temp_dir().join("switchboard-bench-passages.jsonl");
    let lines: Vec<String> = passages
        .iter()
        .map(serde_json::to_string)
        .collect::<Result<_, _>>()?;
    std::fs::write(&passages_file, lines.join("\n"))?;

    // Rust: same thread budget as the reference.
    tch::set_num_threads(THREADS);
    tch::set_num_interop_threads(1);
    let encoder = SentenceEncoder::load(&model_dir, tch::Device::Cpu)?;
    encoder.embed(&passages[..BATCH], BATCH)?; // warm-up
    let mut best = f64::INFINITY;
    for _ in 0..REPEATS {
        let start = Instant::now();
        let vectors = encoder.embed_matrix(&passages, BATCH)?;
        best = best.min(start.elapsed().as_secs_f64());
        assert_eq!(vectors.len(), passages.len() * encoder.dim());
    }
    let rust_pps = passages.len() as f64 / best;

    let output = Command::new(&python)
        .arg(root.join("hack/reference/bench_encoder.py"))
        .args(["--model".as_ref(), model_dir.as_os_str()])
        .args(["--passages".as_ref(), passages_file.as_os_str()])
        .args(["--threads", &THREADS.to_string()])
        .args(["--batch-size", &BATCH.to_string()])
        .args(["--repeats", &REPEATS.to_string()])
        .env("TOKENIZERS_PARALLELISM", "false")
        .output()?;
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
    let py_pps = reference["passages_per_s"].as_f64().unwrap_or(f64::NAN);

    println!(
        "encoder throughput, {} passages (Zaragoza FAQ answers), batch {BATCH}, {THREADS} threads, best of {REPEATS}",
        passages.len()
    );
    println!("  switchboard (tch)       {rust_pps:8.1} passages/s");
    println!("  sentence-transformers   {py_pps:8.1} passages/s");
    println!(
        "  ratio                   {:8.2}x (goal >= 1.2)",
        rust_pps / py_pps
    );
    Ok(())
}
