//! Retrieval benchmark: this runtime's index build and query latency vs the Python reference
//! (rank_bm25 + sentence-transformers, same MiniLM checkpoint), one run on one machine, 2 threads
//! on each side.
//!
//!     hack/setup-reference.sh && cargo bench -p switchboard-runtime --bench retrieval
//!
//! Corpus: the 503 Zaragoza FAQ answers x 20 perturbed variants (sentences rotated, a reference
//! line added) = 10 060 PlainText documents of one chunk each. Build = parse, chunk, tantivy BM25,
//! MiniLM embeddings of every chunk, written as a generation (Rust) vs BM25Okapi + encode (Python,
//! in memory; given the exact texts the Rust side embedded). Queries = the 503 FAQ questions, top 10
//! of 50 candidates per list: BM25 only, dense only (query encoding included), hybrid (RRF k=60,
//! no rerank). Prints p50/p99 per stage and the reference/runtime ratio (> 1 = runtime faster).
//! Not a test: timings are only compared within one run. Goal: hybrid p99 <= 30 ms.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_index::{
    BuildOptions, ChunkingSpec, Embedder, Generation, Generations, IndexSpec, InlineFile,
    Retriever, SearchOptions, SourceFormat, SourceLocation, SourceSpec,
};
use switchboard_model::EncoderWorker;

type BoxError = Box<dyn std::error::Error>;

const THREADS: i32 = 2;
const VARIANTS: usize = 20;
const WARMUP: usize = 20;
const TOP_K: usize = 10;
const CANDIDATES: usize = 50;

/// The production embedder path: forward passes on the encoder worker's thread.
struct WorkerEmbedder(EncoderWorker);

impl Embedder for WorkerEmbedder {
    fn dim(&self) -> usize {
        self.0.dim()
    }

    fn model_id(&self) -> String {
        self.0.model_id().to_owned()
    }

    fn embed(&self, texts: &[String]) -> switchboard_index::Result<Vec<Vec<f32>>> {
        let dim = self.0.dim();
        let flat = self.0.embed_blocking(texts.to_vec()).map_err(|e| {
            switchboard_index::Error::Embedding {
                model: self.model_id(),
                message: e.to_string(),
            }
        })?;
        Ok(flat.chunks_exact(dim).map(<[f32]>::to_vec).collect())
    }
}

/// Variant `v` of an answer: sentences rotated by `v`, plus a reference line (v = 0: as is).
fn perturb(answer: &str, row: usize, v: usize) -> String {
    if v == 0 {
        return answer.to_owned();
    }
    let sentences: Vec<&str> = answer
        .split_inclusive(". ")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let shift = v % sentences.len().max(1);
    let mut out: Vec<&str> = sentences[shift..].to_vec();
    out.extend_from_slice(&sentences[..shift]);
    format!("{} See reference {row}-{v}.", out.join(" "))
}

struct Latency {
    p50: Duration,
    p99: Duration,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    // Linear interpolation between closest ranks, as numpy.percentile does.
    let pos = p / 100.0 * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    let frac = pos - lo as f64;
    sorted[lo].mul_f64(1.0 - frac) + sorted[hi].mul_f64(frac)
}

fn measure(
    retriever: &Retriever,
    queries: &[String],
    opts: &SearchOptions,
) -> Result<Latency, BoxError> {
    for q in queries.iter().take(WARMUP) {
        retriever.search(q, opts)?;
    }
    let mut samples = Vec::with_capacity(queries.len());
    for q in queries {
        let t = Instant::now();
        let response = retriever.search(q, opts)?;
        samples.push(t.elapsed());
        assert!(!response.passages.is_empty(), "no passage for {q:?}");
    }
    samples.sort();
    Ok(Latency {
        p50: percentile(&samples, 50.0),
        p99: percentile(&samples, 99.0),
    })
}

fn write_jsonl(path: &Path, items: &[String]) -> Result<(), BoxError> {
    let lines: Vec<String> = items
        .iter()
        .map(serde_json::to_string)
        .collect::<Result<_, _>>()?;
    std::fs::write(path, lines.join("\n"))?;
    Ok(())
}

fn main() -> Result<(), BoxError> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
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

    let mut answers = Vec::new();
    let mut questions = Vec::new();
    for line in std::fs::read_to_string(&faq)?.lines() {
        if line.trim().is_empty() {
            continue;
        }
        let row: serde_json::Value = serde_json::from_str(line)?;
        answers.push(row["a"].as_str().unwrap_or_default().to_owned());
        questions.push(row["q"].as_str().unwrap_or_default().to_owned());
    }
    let mut files = Vec::with_capacity(answers.len() * VARIANTS);
    for v in 0..VARIANTS {
        for (row, answer) in answers.iter().enumerate() {
            files.push(InlineFile {
                name: format!("{:05}.txt", files.len()),
                content: perturb(answer, row, v),
            });
        }
    }
    let spec = IndexSpec {
        sources: vec![SourceSpec {
            name: "faq".into(),
            format: SourceFormat::PlainText,
            freshness_class: "evergreen".into(),
            location: SourceLocation::Inline { files },
            resolved_tags: None,
        }],
        freshness_classes: switchboard_index::spec::default_freshness_classes(),
        chunking: ChunkingSpec::Hierarchical {
            max_tokens: 200,
            overlap: 32,
        },
    };

    tch::set_num_threads(THREADS);
    tch::set_num_interop_threads(1);
    let worker = EncoderWorker::spawn("bench", &model_dir, tch::Device::Cpu, 64)?;
    let embedder = Arc::new(WorkerEmbedder(worker));
    embedder.embed(&answers[..64])?; // warm-up, as the reference does

    let scratch = std::env::temp_dir().join(format!("switchboard-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let store = Generations::open(scratch.join("store"))?;
    let started = Instant::now();
    let report = switchboard_index::build(
        &spec,
        &store,
        embedder.as_ref(),
        &BuildOptions {
            embed_batch: 64,
            reuse: false,
        },
    )?;
    let rust_build = started.elapsed();
    let generation = Arc::new(Generation::load(&store, &report.manifest.generation)?);
    let chunks = generation.chunks().len();
    if chunks < 10_000 {
        return Err(format!("only {chunks} chunks; the benchmark needs >= 10 000").into());
    }
    let retriever = Retriever::new(
        Arc::clone(&generation),
        Some(Arc::clone(&embedder) as Arc<dyn Embedder>),
    )?;
    let base = SearchOptions {
        top_k: TOP_K,
        candidates: CANDIDATES,
        ..SearchOptions::default()
    };
    let stages = [
        (
            "bm25",
            SearchOptions {
                dense: false,
                ..base.clone()
            },
        ),
        (
            "dense",
            SearchOptions {
                bm25: false,
                ..base.clone()
            },
        ),
        ("hybrid", base.clone()),
    ];
    let mut rust = Vec::new();
    for (name, opts) in &stages {
        rust.push((*name, measure(&retriever, &questions, opts)?));
    }

    // The reference gets the very texts the encoder saw (breadcrumb prefix included).
    let corpus_file: PathBuf = scratch.join("corpus.jsonl");
    let queries_file: PathBuf = scratch.join("queries.jsonl");
    let texts: Vec<String> = generation
        .chunks()
        .iter()
        .map(|c| c.embedding_text())
        .collect();
    write_jsonl(&corpus_file, &texts)?;
    write_jsonl(&queries_file, &questions)?;
    let output = Command::new(&python)
        .arg(root.join("hack/reference/bench_retrieval.py"))
        .args(["--model".as_ref(), model_dir.as_os_str()])
        .args(["--corpus".as_ref(), corpus_file.as_os_str()])
        .args(["--queries".as_ref(), queries_file.as_os_str()])
        .args(["--threads", &THREADS.to_string()])
        .args(["--batch-size", "64"])
        .args(["--candidates", &CANDIDATES.to_string()])
        .args(["--top-k", &TOP_K.to_string()])
        .args(["--warmup", &WARMUP.to_string()])
        .env("TOKENIZERS_PARALLELISM", "false")
        .env("OMP_NUM_THREADS", THREADS.to_string())
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

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let py_build = reference["build_s"].as_f64().unwrap_or(f64::NAN);
    println!(
        "retrieval benchmark: {chunks} chunks ({} FAQ answers x {VARIANTS} variants), {} queries, \
         {THREADS} threads each side, top {TOP_K} of {CANDIDATES} candidates per list",
        answers.len(),
        questions.len()
    );
    println!(
        "{:<22} {:>12} {:>12} {:>8}",
        "", "switchboard", "reference", "ratio"
    );
    println!(
        "{:<22} {:>10.2} s {:>10.2} s {:>7.2}x",
        "index build",
        rust_build.as_secs_f64(),
        py_build,
        py_build / rust_build.as_secs_f64()
    );
    for (name, latency) in &rust {
        for (label, ours, key) in [
            ("p50", latency.p50, "p50_ms"),
            ("p99", latency.p99, "p99_ms"),
        ] {
            let theirs = reference[*name][key].as_f64().unwrap_or(f64::NAN);
            println!(
                "{:<22} {:>9.2} ms {:>9.2} ms {:>7.2}x",
                format!("{name} {label}"),
                ms(ours),
                theirs,
                theirs / ms(ours)
            );
        }
    }
    let hybrid_p99 = rust
        .iter()
        .find(|(n, _)| *n == "hybrid")
        .map_or(f64::NAN, |(_, l)| ms(l.p99));
    println!(
        "ratio = reference / switchboard (> 1: switchboard faster); hybrid p99 {hybrid_p99:.2} ms \
         (goal <= 30 ms)"
    );
    Ok(())
}
