//! `eval --rewrite`: does rewriting the query with the small model help retrieval?
//!
//! Each golden query is searched three ways on the same loaded generation: as written, rewritten
//! by the small model (the serving template [`rewrite_prompt`], greedy, cleaned exactly as the
//! answer path does: [`switchboard_serving::answer::clean_rewrite`]), and as the Router's `Auto` policy would
//! (rewritten only when [`should_rewrite`] says so: long queries with little vocabulary overlap
//! with the KB). A fourth row, `oracle`, takes the better of the first two per query: the ceiling
//! of a perfect rewrite router. Rows are reported per bucket of the policy's reason (`short`,
//! `precise`, `long_and_vague`) so a gain on the queries the policy targets is not averaged away.
//!
//! It also produces the rewriter's fine-tuning data (the seed essay: rewrites that raise the
//! gold passage's rank): `--rewrite-samples N` adds N sampled rewrites per query, and
//! `--rewrite-sft-out FILE` writes, for each query whose best rewrite ranks its gold document
//! strictly better than the query as written, one JSONL line `{messages, completion}` in the
//! serving template. Method and numbers: `docs/evaluation.md`.
use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;
use switchboard_crds::router::{QueryRewrite, RewritePolicy};
use switchboard_crds::units::Percent;
use switchboard_index::{Retriever, SearchOptions};
use switchboard_model::chat::ChatMessage;
use switchboard_model::generate::Generation;
use switchboard_model::generator_worker::WorkerOptions;
use switchboard_model::llama::WeightFormat;
use switchboard_model::{GenerationConfig, GeneratorWorker, Sampling};
use switchboard_policy::{Vocabulary, rewrite_prompt, should_rewrite};

use crate::eval::{GoldenQuery, Level, Scores, ranked_ids};
use switchboard_serving::answer::{REWRITE_TOKENS, clean_rewrite};

/// The small model hack/setup.sh installs.
pub const DEFAULT_SMALL_MODEL: &str = ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// Options of the rewrite comparison (part of `eval`).
#[derive(Debug, Clone, clap::Args)]
pub struct RewriteArgs {
    /// Also compare retrieval with the query as written, rewritten by the small model, and
    /// rewritten where the Router's Auto policy says so (per policy bucket).
    #[arg(long)]
    pub rewrite: bool,
    /// The small model that rewrites (GGUF file or Hugging Face directory).
    #[arg(long, env = "SWITCHBOARD_SMALL_MODEL", default_value = DEFAULT_SMALL_MODEL)]
    pub small_model: PathBuf,
    /// Auto policy: queries shorter than this many words are kept as written (Router default 12).
    #[arg(long, default_value_t = 12)]
    pub rewrite_min_words: i32,
    /// Auto policy: queries whose vocabulary overlap with the KB is above this share are kept
    /// (Router default 0.5).
    #[arg(long, default_value_t = 0.5)]
    pub rewrite_max_overlap: f64,
    /// Sampled rewrites per query (top-p 0.9, temperature 0.8) besides the greedy one; the
    /// fine-tuning data keeps the best of them.
    #[arg(long, default_value_t = 0)]
    pub rewrite_samples: usize,
    /// Write rewriter fine-tuning pairs (JSONL `{messages, completion}`) here.
    #[arg(long)]
    pub rewrite_sft_out: Option<PathBuf>,
    /// With `--rewrite-sft-out`: for each query no rewrite beats, also write a pair whose
    /// completion is the query as written, so the fine-tuned rewriter learns to leave a query
    /// that already retrieves well alone (the seed's "rewrite only when it improves R@5").
    #[arg(long, requires = "rewrite_sft_out")]
    pub rewrite_sft_keep: bool,
    /// A PEFT LoRA adapter directory the small model rewrites through (for example one
    /// `switchboard-train sft` trained on `--rewrite-sft-out` pairs), to measure a fine-tuned
    /// rewriter against the base one.
    #[arg(long)]
    pub rewrite_adapter: Option<PathBuf>,
    /// Write every query's rewrites and gold ranks (JSONL) here.
    #[arg(long)]
    pub rewrite_details: Option<PathBuf>,
}

impl RewriteArgs {
    /// Whether the comparison runs.
    pub fn enabled(&self) -> bool {
        self.rewrite
            || self.rewrite_sft_out.is_some()
            || self.rewrite_details.is_some()
            || self.rewrite_adapter.is_some()
    }

    fn policy(&self) -> QueryRewrite {
        QueryRewrite {
            policy: RewritePolicy::Auto,
            min_words: self.rewrite_min_words,
            max_vocabulary_overlap: Percent::from_fraction(self.rewrite_max_overlap),
        }
    }
}

/// The comparison's results.
#[derive(Debug, Clone, Serialize)]
pub struct RewriteReport {
    /// The small model.
    pub model: String,
    /// The LoRA adapter it rewrote through (`--rewrite-adapter`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
    /// Auto policy parameters.
    pub min_words: i32,
    /// Auto policy parameters.
    pub max_vocabulary_overlap: f64,
    /// Queries whose greedy rewrite was empty or invalid (searched as written).
    pub invalid_rewrites: usize,
    /// Seconds spent generating rewrites.
    pub generation_seconds: f64,
    /// One row per (bucket, variant).
    pub rows: Vec<RewriteRow>,
    /// Queries whose gold rank the greedy rewrite improved / worsened / left as it was.
    pub improved: usize,
    /// See `improved`.
    pub worsened: usize,
    /// See `improved`.
    pub unchanged: usize,
    /// Fine-tuning pairs written (`--rewrite-sft-out`).
    pub sft_pairs: usize,
    /// Of those, pairs that keep the query as written (`--rewrite-sft-keep`).
    pub sft_kept_original: usize,
    /// Candidate pairs dropped for being longer than the query + 20% (the essay's length filter).
    pub sft_too_long: usize,
}

/// Metrics of one variant on one bucket of queries.
#[derive(Debug, Clone, Serialize)]
pub struct RewriteRow {
    /// `all`, or the policy's reason: `short`, `precise`, `long_and_vague`.
    pub bucket: String,
    /// `original`, `rewritten`, `policy` or `oracle`.
    pub variant: String,
    /// Queries in the bucket.
    pub queries: usize,
    /// Queries of the bucket this variant searched rewritten.
    pub rewritten: usize,
    #[serde(flatten)]
    /// Averages over the bucket.
    pub scores: Scores,
}

/// One query's outcome.
#[derive(Debug, Clone, Serialize)]
struct Detail {
    query: String,
    reason: &'static str,
    words: usize,
    overlap: f64,
    rewrite: Option<String>,
    original_rank: Option<usize>,
    rewrite_rank: Option<usize>,
    samples: Vec<(String, Option<usize>)>,
}

/// 1-based rank of the first gold id (`None` when it is not in the list).
fn gold_rank(ranked: &[&str], gold: &HashSet<&str>) -> Option<usize> {
    ranked
        .iter()
        .position(|id| gold.contains(id))
        .map(|i| i + 1)
}

/// `a` ranks the gold strictly better than `b` (absent = worst).
fn better(a: Option<usize>, b: Option<usize>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a < b,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// Runs `requests` on a small-model worker (continuous batching, int4 weights as served),
/// through the LoRA adapter in `adapter` when given, and returns the generations in order; logs
/// progress every 50.
pub fn generate_all(
    model: &std::path::Path,
    adapter: Option<&std::path::Path>,
    requests: Vec<(Vec<ChatMessage>, GenerationConfig)>,
) -> Result<Vec<switchboard_model::Result<Generation>>> {
    let options =
        WorkerOptions::new(switchboard_model::default_device()).weights(WeightFormat::Int4);
    let worker = GeneratorWorker::spawn_with("small", model, options)
        .with_context(|| format!("loading the small model {}", model.display()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    const ADAPTER_ID: &str = "eval-adapter";
    if let Some(dir) = adapter {
        runtime
            .block_on(worker.load_adapter(ADAPTER_ID, dir))
            .with_context(|| format!("loading the LoRA adapter {}", dir.display()))?;
    }
    let adapter_id = adapter.map(|_| ADAPTER_ID.to_owned());
    let total = requests.len();
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let futures = requests.into_iter().map(|(messages, config)| {
        let worker = worker.clone();
        let done = Arc::clone(&done);
        let adapter_id = adapter_id.clone();
        async move {
            let out = worker.chat(messages, config, adapter_id).await;
            let n = done.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_multiple_of(50) || n == total {
                tracing::info!(
                    done = n,
                    total,
                    seconds = started.elapsed().as_secs_f64(),
                    "generating"
                );
            }
            out
        }
    });
    Ok(runtime.block_on(futures::future::join_all(futures)))
}

fn rewrite_request(query: &str, sampling: Sampling) -> (Vec<ChatMessage>, GenerationConfig) {
    (
        vec![ChatMessage::user(rewrite_prompt(query))],
        GenerationConfig {
            sampling,
            max_new_tokens: REWRITE_TOKENS,
            stop_token_ids: Vec::new(),
        },
    )
}

/// Runs the comparison on `golden` with `options` (the evaluation's hybrid configuration).
pub fn run(
    args: &RewriteArgs,
    retriever: &Retriever,
    options: &SearchOptions,
    golden: &[&GoldenQuery],
    level: Level,
) -> Result<RewriteReport> {
    let policy = args.policy();
    let vocabulary = Vocabulary::from_texts(
        retriever
            .generation()
            .chunks()
            .iter()
            .map(|c| c.text.as_str()),
    );
    let per_query = 1 + args.rewrite_samples;
    let mut requests = Vec::with_capacity(golden.len() * per_query);
    for (i, q) in golden.iter().enumerate() {
        requests.push(rewrite_request(&q.query, Sampling::Greedy));
        for s in 0..args.rewrite_samples {
            let seed = (i * per_query + s) as u64;
            requests.push(rewrite_request(
                &q.query,
                Sampling::TopP {
                    temperature: 0.8,
                    top_p: 0.9,
                    seed,
                },
            ));
        }
    }
    let started = Instant::now();
    let generated = generate_all(&args.small_model, args.rewrite_adapter.as_deref(), requests)?;
    let generation_seconds = started.elapsed().as_secs_f64();

    let search = |query: &str, gold: &HashSet<&str>| -> Result<(Scores, Option<usize>)> {
        let response = retriever
            .search(query, options)
            .with_context(|| format!("rewrite comparison: query {query:?}"))?;
        let ranked = ranked_ids(&response.passages, level);
        Ok((Scores::of(&ranked, gold), gold_rank(&ranked, gold)))
    };

    // Per query: (reason, [original, rewritten, policy, oracle] scores, rewritten flags).
    let mut outcomes = Vec::with_capacity(golden.len());
    let mut details = Vec::with_capacity(golden.len());
    let mut sft = Vec::new();
    let (mut invalid, mut improved, mut worsened, mut unchanged, mut too_long) = (0, 0, 0, 0, 0);
    let mut kept_original = 0;
    for (i, q) in golden.iter().enumerate() {
        let gold: HashSet<&str> = q.gold(level).iter().map(String::as_str).collect();
        let decision = should_rewrite(&q.query, &vocabulary, &policy);
        let outputs = &generated[i * per_query..(i + 1) * per_query];
        let mut candidates: Vec<Option<String>> = outputs
            .iter()
            .map(|g| g.as_ref().ok().and_then(|g| clean_rewrite(&g.text)))
            .collect();
        if let Some(Err(e)) = outputs.first() {
            tracing::warn!(query = %q.query, error = %e, "rewrite failed");
        }
        let greedy = candidates.remove(0);
        if greedy.is_none() {
            invalid += 1;
        }
        let (original, original_rank) = search(&q.query, &gold)?;
        let (rewritten, rewrite_rank) = match &greedy {
            Some(r) => search(r, &gold)?,
            None => (original, original_rank),
        };
        if better(rewrite_rank, original_rank) {
            improved += 1;
        } else if better(original_rank, rewrite_rank) {
            worsened += 1;
        } else {
            unchanged += 1;
        }
        let by_policy = if decision.rewrite {
            rewritten
        } else {
            original
        };
        let oracle = if better(rewrite_rank, original_rank) {
            rewritten
        } else {
            original
        };
        let rewrote = greedy.is_some();
        outcomes.push((
            decision.reason,
            [original, rewritten, by_policy, oracle],
            [
                false,
                rewrote,
                rewrote && decision.rewrite,
                rewrote && better(rewrite_rank, original_rank),
            ],
        ));

        // Fine-tuning data: the best-ranking rewrite, when it beats the query as written.
        let mut samples = Vec::new();
        let mut best: Option<(String, Option<usize>)> = greedy.clone().map(|r| (r, rewrite_rank));
        for candidate in candidates.into_iter().flatten() {
            let (_, rank) = search(&candidate, &gold)?;
            samples.push((candidate.clone(), rank));
            if best.as_ref().is_none_or(|(_, r)| better(rank, *r)) {
                best = Some((candidate, rank));
            }
        }
        let pair = |completion: &str, rank: Option<usize>| {
            serde_json::json!({
                "messages": [{"role": "user", "content": rewrite_prompt(&q.query)}],
                "completion": completion,
                "query": q.query,
                "original_rank": original_rank,
                "rewrite_rank": rank,
            })
        };
        match best.filter(|(_, rank)| better(*rank, original_rank)) {
            Some((rewrite, rank)) => {
                let limit = (switchboard_policy::text::words(&q.query).len() as f64 * 1.2).ceil();
                if switchboard_policy::text::words(&rewrite).len() as f64 > limit {
                    too_long += 1;
                } else {
                    sft.push(pair(&rewrite, rank));
                }
            }
            None if args.rewrite_sft_keep => {
                sft.push(pair(&q.query, original_rank));
                kept_original += 1;
            }
            None => {}
        }
        details.push(Detail {
            query: q.query.clone(),
            reason: decision.reason,
            words: decision.words,
            overlap: decision.overlap,
            rewrite: greedy,
            original_rank,
            rewrite_rank,
            samples,
        });
    }

    let variants = ["original", "rewritten", "policy", "oracle"];
    let mut buckets: Vec<&str> = vec!["all"];
    for reason in ["short", "precise", "long_and_vague"] {
        if outcomes.iter().any(|(r, _, _)| *r == reason) {
            buckets.push(reason);
        }
    }
    let mut rows = Vec::new();
    for bucket in buckets {
        let members: Vec<_> = outcomes
            .iter()
            .filter(|(r, _, _)| bucket == "all" || *r == bucket)
            .collect();
        for (v, variant) in variants.iter().enumerate() {
            let scores: Vec<Scores> = members.iter().map(|(_, s, _)| s[v]).collect();
            rows.push(RewriteRow {
                bucket: bucket.to_owned(),
                variant: (*variant).to_owned(),
                queries: members.len(),
                rewritten: members.iter().filter(|(_, _, f)| f[v]).count(),
                scores: Scores::mean(&scores),
            });
        }
    }
    if let Some(path) = &args.rewrite_sft_out {
        write_jsonl(path, sft.iter())?;
    }
    if let Some(path) = &args.rewrite_details {
        write_jsonl(path, details.iter())?;
    }
    Ok(RewriteReport {
        model: args.small_model.display().to_string(),
        adapter: args
            .rewrite_adapter
            .as_ref()
            .map(|p| p.display().to_string()),
        min_words: args.rewrite_min_words,
        max_vocabulary_overlap: args.rewrite_max_overlap,
        invalid_rewrites: invalid,
        generation_seconds,
        rows,
        improved,
        worsened,
        unchanged,
        sft_pairs: sft.len(),
        sft_kept_original: kept_original,
        sft_too_long: too_long,
    })
}

/// Writes one JSON document per line.
pub fn write_jsonl<'a, T: Serialize + 'a>(
    path: &std::path::Path,
    items: impl Iterator<Item = &'a T>,
) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    for item in items {
        serde_json::to_writer(&mut out, item)?;
        out.write_all(b"\n")?;
    }
    out.flush()
        .with_context(|| format!("writing {}", path.display()))
}

/// Prints the comparison as a table.
pub fn print_table(report: &RewriteReport) {
    println!();
    let model = match &report.adapter {
        Some(adapter) => format!("{} + LoRA {adapter}", report.model),
        None => report.model.clone(),
    };
    println!(
        "query rewriting ({}; Auto policy: >= {} words and vocabulary overlap <= {}): {} improved, {} worsened, {} unchanged, {} invalid rewrites; generation {:.0} s",
        model,
        report.min_words,
        report.max_vocabulary_overlap,
        report.improved,
        report.worsened,
        report.unchanged,
        report.invalid_rewrites,
        report.generation_seconds
    );
    println!(
        "{:<15} {:<10} {:>7} {:>9} {:>6} {:>6} {:>7}",
        "bucket", "variant", "queries", "rewritten", "R@1", "R@5", "MRR@10"
    );
    for row in &report.rows {
        println!(
            "{:<15} {:<10} {:>7} {:>9} {:>6.3} {:>6.3} {:>7.3}",
            row.bucket,
            row.variant,
            row.queries,
            row.rewritten,
            row.scores.recall_1,
            row.scores.recall_5,
            row.scores.mrr_10
        );
    }
    if report.sft_pairs > 0 || report.sft_too_long > 0 {
        println!(
            "fine-tuning pairs: {} written ({} keep the query as written), {} dropped as longer than the query + 20%",
            report.sft_pairs, report.sft_kept_original, report.sft_too_long
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_compare_with_absent_as_worst() {
        assert!(better(Some(1), Some(2)));
        assert!(better(Some(9), None));
        assert!(!better(None, Some(50)));
        assert!(!better(None, None));
        assert!(!better(Some(3), Some(3)));
        let gold: HashSet<&str> = ["g"].into_iter().collect();
        assert_eq!(gold_rank(&["a", "g"], &gold), Some(2));
        assert_eq!(gold_rank(&["a"], &gold), None);
    }
}
