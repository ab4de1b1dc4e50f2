//! `switchboard-runtime`: the Switchboard data plane.
//!
//! Subcommands grow with the runtime; today:
//! - `embed`: sentence embeddings for lines of text (JSON lines out);
//! - `search`: exact dense search of a passage file for queries, printing ranked passages.
#![forbid(unsafe_code)]

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use switchboard_model::SentenceEncoder;

/// The Switchboard runtime.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// libtorch intra-op threads (0 = libtorch's default).
    #[arg(long, global = true, default_value_t = 0, env = "SWITCHBOARD_THREADS")]
    threads: i32,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Embed texts (arguments, or stdin lines) and print one JSON array per line.
    Embed {
        /// sentence-transformers checkpoint directory.
        #[arg(
            long,
            env = "SWITCHBOARD_ENCODER",
            default_value = ".cache/models/all-MiniLM-L6-v2"
        )]
        model: PathBuf,
        /// Texts to embed; read from stdin when none are given.
        texts: Vec<String>,
    },
    /// Rank passages for each query by cosine similarity of their embeddings.
    Search {
        /// sentence-transformers checkpoint directory.
        #[arg(
            long,
            env = "SWITCHBOARD_ENCODER",
            default_value = ".cache/models/all-MiniLM-L6-v2"
        )]
        model: PathBuf,
        /// JSONL file of passages: each line a JSON string, or an object with a text field.
        #[arg(long)]
        passages: PathBuf,
        /// Field holding the passage text when lines are objects.
        #[arg(long, default_value = "text")]
        field: String,
        /// Passages to print per query.
        #[arg(long, short = 'k', default_value_t = 3)]
        top_k: usize,
        /// Queries.
        #[arg(required = true)]
        queries: Vec<String>,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if cli.threads > 0 {
        tch::set_num_threads(cli.threads);
    }
    match cli.command {
        Command::Embed { model, texts } => embed(&model, texts),
        Command::Search {
            model,
            passages,
            field,
            top_k,
            queries,
        } => search(&model, &passages, &field, top_k, &queries),
    }
}

fn load(model: &PathBuf) -> Result<SentenceEncoder> {
    let device = switchboard_model::default_device();
    SentenceEncoder::load(model, device)
        .with_context(|| format!("loading encoder from {}", model.display()))
}

fn embed(model: &PathBuf, mut texts: Vec<String>) -> Result<()> {
    if texts.is_empty() {
        for line in std::io::stdin().lock().lines() {
            texts.push(line.context("reading stdin")?);
        }
    }
    let encoder = load(model)?;
    let vectors = encoder.embed(&texts, 32)?;
    let mut out = std::io::stdout().lock();
    for vector in vectors {
        serde_json::to_writer(&mut out, &vector)?;
        writeln!(out)?;
    }
    Ok(())
}

fn read_passages(path: &PathBuf, field: &str) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut passages = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let value: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not JSON", path.display(), n + 1))?;
        let passage = match &value {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Object(map) => match map.get(field) {
                Some(serde_json::Value::String(s)) => s.clone(),
                _ => bail!("{}:{}: no string field `{field}`", path.display(), n + 1),
            },
            _ => bail!(
                "{}:{}: expected a string or an object",
                path.display(),
                n + 1
            ),
        };
        passages.push(passage);
    }
    if passages.is_empty() {
        bail!("{}: no passages", path.display());
    }
    Ok(passages)
}

fn search(
    model: &PathBuf,
    path: &PathBuf,
    field: &str,
    top_k: usize,
    queries: &[String],
) -> Result<()> {
    let passages = read_passages(path, field)?;
    let encoder = load(model)?;
    let started = Instant::now();
    let matrix = encoder.embed_matrix(&passages, 32)?;
    let dim = encoder.dim();
    println!(
        "embedded {} passages from {} with {} ({} dims) in {:.2}s",
        passages.len(),
        path.display(),
        encoder.model_id(),
        dim,
        started.elapsed().as_secs_f64()
    );
    let query_vectors = encoder.embed(queries, 32)?;
    for (query, qv) in queries.iter().zip(&query_vectors) {
        let mut scored: Vec<(f32, usize)> = matrix
            .chunks_exact(dim)
            .enumerate()
            .map(|(i, row)| (row.iter().zip(qv).map(|(a, b)| a * b).sum::<f32>(), i))
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        println!("\nquery: {query}");
        for (rank, (score, i)) in scored.iter().take(top_k).enumerate() {
            let passage: String = passages[*i].chars().take(160).collect();
            println!("  {}. [{score:.3}] #{i}: {passage}", rank + 1);
        }
    }
    Ok(())
}
