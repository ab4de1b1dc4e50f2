//! `switchboard-runtime`: the Switchboard data plane.
//!
//! - `serve`: build the KnowledgeBase of a folder of manifests and serve retrieval over gRPC
//!   (`switchboard.runtime.v1`, health, reflection) and HTTP/JSON, with `/metrics`;
//! - `index`: build (and publish) an index generation from KnowledgeBase manifests;
//! - `query`: a gRPC client printing ranked passages;
//! - `embed`, `search`: the sentence encoder on its own.
#![forbid(unsafe_code)]

use switchboard_serving::{artifacts, flywheel, http_client, kb, serve};
use switchboard_tools::{
    encoder_training, eval, evidence_training, rerank_training, router_fit, synth_answers,
    synth_queries,
};

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use switchboard_artifact::egress::EgressPolicy;
use switchboard_model::SentenceEncoder;

/// `switchboard-runtime router ...`.
#[derive(Debug, Subcommand)]
enum RouterCommand {
    /// Fit the difficulty model (small or large model) on flywheel exports: held-out
    /// calibration (Brier, reliability), routing accuracy, false escalations and cost against
    /// the hand-set weights, always-small and always-large; writes `spec.difficulty` (weights,
    /// threshold, calibration) into a Router manifest or prints it (docs/training.md).
    Fit(Box<router_fit::RouterFitArgs>),
}

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
    /// Build the KnowledgeBase's index and serve retrieval over gRPC and HTTP.
    Serve(Box<serve::ServeArgs>),
    /// Build an index generation from KnowledgeBase manifests and publish it.
    Index {
        #[command(flatten)]
        kb: serve::KbArgs,
        /// Build without publishing (the served generation stays as it is).
        #[arg(long)]
        no_publish: bool,
        /// Publish the previous generation again instead of building.
        #[arg(long, conflicts_with = "no_publish")]
        switch_back: bool,
        /// Also write a JSON build report (at most 4 KiB) to this file; an index-build Job sets
        /// `/dev/termination-log` so the operator reads it from the pod's status.
        #[arg(long)]
        report_file: Option<PathBuf>,
        /// Where ConfigMap sources are mounted, one folder per source (`<dir>/<source name>/`),
        /// as the index-build Job mounts them. Without it, ConfigMap sources are refused.
        #[arg(long)]
        sources_dir: Option<PathBuf>,
        /// Folder that volume source paths resolve under (default: the manifests' folder); the
        /// index-build Job passes `/`, where it mounts claims at their paths.
        #[arg(long)]
        volume_root: Option<PathBuf>,
        /// Internal address blocks HTTP sources may be fetched from, comma-separated
        /// (`10.20.0.0/16,fd00::/8`; `*`: any). Public addresses only by default: loopback,
        /// private, link-local (metadata) and other internal addresses are refused, after DNS
        /// resolution (docs/security.md). The operator passes its own `--egress-allow`.
        #[arg(long, env = "SWITCHBOARD_EGRESS_ALLOW", default_value = "", value_parser = serve::parse_egress)]
        egress_allow: EgressPolicy,
    },
    /// The Router's routing policy: `router fit` learns its difficulty model from outcomes.
    #[command(subcommand)]
    Router(RouterCommand),
    /// Retrieval quality of a golden set per stage (recall@1/5/10, MRR@10, nDCG@10), or with
    /// `--answers` the answers' quality in stages (retrieval, gold context, full pipeline).
    Eval(Box<eval::EvalArgs>),
    /// Train a cross-encoder reranker on a corpus's golden (and synthetic) queries with hard
    /// negatives from its own retriever; writes a BertForSequenceClassification directory.
    TrainReranker(rerank_training::TrainRerankerArgs),
    /// Train an evidence scorer (a cross-encoder: does this sentence answer the question?) from
    /// synth-answers questions over the knowledge base, FAQ files and a golden set's train half;
    /// compare it with `eval --answers --dump-evidence F --evidence-scorer DIR`.
    TrainEvidence(evidence_training::TrainEvidenceArgs),
    /// Fine-tune the retrieval encoder (the bi-encoder behind dense search) on a corpus's golden
    /// (and synthetic) queries; writes a sentence-encoder directory `eval --encoder` and a
    /// KnowledgeBase can use.
    TrainEncoder(encoder_training::TrainEncoderArgs),
    /// Generate synthetic queries from a corpus's passages with the small model, filtered by
    /// round-trip retrieval (training data for `train-reranker`).
    SynthQueries(synth_queries::SynthArgs),
    /// Generate SFT data for the grounded-answer adapter from the knowledge base: synthetic
    /// questions per evidence sentence, grounded prompts as the runtime renders them, targets
    /// citing the answering fact, refusals where the facts don't answer, held out by document.
    SynthAnswers(synth_answers::SynthAnswersArgs),
    /// Ask a running runtime (gRPC) for passages and print them.
    Query {
        /// gRPC address of the runtime.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        addr: String,
        /// Passages per query.
        #[arg(long, short = 'k', default_value_t = 3)]
        top_k: u32,
        /// Queries.
        #[arg(required = true)]
        queries: Vec<String>,
    },
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
    /// Read a PEFT adapter directory (`pvc://<claim>/<path>` under `--pvc-root`, or
    /// `file:///<dir>`) and print its digest and checked config fields as JSON: the AdapterPatch
    /// controller's verification Job.
    VerifyArtifact(artifacts::VerifyArgs),
    /// Export labelled, filtered, deduplicated training records (JSONL + summary) from the
    /// outcome store: the LoRA trainer's input (docs/training-data.md).
    Export(flywheel::ExportArgs),
    /// Historical helpdesk tickets (a Zendesk export) to multi-turn SFT conversations:
    /// survival filters with per-rule counts, a quality score, the top share kept
    /// (docs/training-data.md, "Tickets").
    Tickets(flywheel::TicketsArgs),
    /// Report the questions the knowledge base does not answer (escalations, retrieval
    /// failures, refusals), clustered by meaning and ranked by volume.
    CoverageGaps(flywheel::GapsArgs),
    /// Check manifest files as the API server would (schema, unknown fields, CEL rules) and
    /// as the operator does (the Rust rules): prints each file's verdict, fails if any is
    /// refused. What `serve --manifests` reads is held to the same rules.
    Validate {
        /// YAML files of Switchboard resources.
        #[arg(required = true)]
        files: Vec<PathBuf>,
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
        Command::Serve(args) => runtime()?.block_on(serve::serve(*args)),
        Command::Validate { files } => validate(&files),
        Command::Index {
            kb,
            no_publish,
            switch_back,
            report_file,
            sources_dir,
            volume_root,
            egress_allow,
        } => index(
            &kb,
            &IndexOptions {
                publish: !no_publish,
                switch_back,
                report_file,
                sources_dir,
                volume_root,
                egress: egress_allow,
            },
        ),
        Command::Eval(args) => eval::run(&args),
        Command::Router(RouterCommand::Fit(args)) => router_fit::run(&args),
        Command::TrainReranker(args) => rerank_training::run(&args),
        Command::TrainEvidence(args) => evidence_training::run(&args),
        Command::TrainEncoder(args) => encoder_training::run(&args),
        Command::SynthQueries(args) => synth_queries::run(&args),
        Command::SynthAnswers(args) => synth_answers::run(&args),
        Command::Query {
            addr,
            top_k,
            queries,
        } => runtime()?.block_on(query(addr, top_k, queries)),
        Command::Embed { model, texts } => embed(&model, texts),
        Command::VerifyArtifact(args) => artifacts::verify_command(&args),
        Command::Export(args) => flywheel::export(&args),
        Command::Tickets(args) => flywheel::tickets(&args),
        Command::CoverageGaps(args) => flywheel::coverage_gaps(&args),
        Command::Search {
            model,
            passages,
            field,
            top_k,
            queries,
        } => search(&model, &passages, &field, top_k, &queries),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// What `index` was asked to do besides the KnowledgeBase arguments.
struct IndexOptions {
    publish: bool,
    switch_back: bool,
    report_file: Option<PathBuf>,
    sources_dir: Option<PathBuf>,
    volume_root: Option<PathBuf>,
    egress: EgressPolicy,
}

fn index(args: &serve::KbArgs, options: &IndexOptions) -> Result<()> {
    if options.switch_back {
        let kbs = kb::load_knowledge_bases(&args.manifests)?;
        let kb = kb::select(kbs, args.knowledge_base.as_deref())?;
        let store = switchboard_index::Generations::open(args.data.join(kb::name(&kb)))?;
        let id = store.switch_back()?;
        println!("published generation {id} again");
        return Ok(());
    }
    let loaded = args.load()?;
    // HTTP sources are fetched first, into a scratch folder that lives as long as the build.
    let scratch = Scratch::new()?;
    let (fetched, failures) = if loaded.kb.spec.sources.iter().any(|s| s.http.is_some()) {
        let client = http_client::HttpClient::with_egress(options.egress.clone());
        runtime()?.block_on(kb::fetch_http_sources(
            &loaded.kb,
            &scratch.0,
            &client,
            kb::HTTP_SOURCE_TIMEOUT,
        ))
    } else {
        Default::default()
    };
    for failure in &failures {
        tracing::warn!(source = %failure.source, reason = failure.reason, "{}", failure.message);
    }
    let roots = kb::SourceRoots {
        volumes: options
            .volume_root
            .clone()
            .unwrap_or_else(|| loaded.base.clone()),
        config_maps: options.sources_dir.clone(),
        fetched: Some(fetched),
    };
    let spec = kb::index_spec_with(&loaded.kb, &roots)?;
    let keep = loaded.kb.spec.keep_generations.max(2) as usize;
    let report = serve::build_and_publish(&loaded, &spec, options.publish, keep)?;
    serve::print_report(&report);
    for failure in &failures {
        println!(
            "  source {:<22} not indexed: {} {}",
            failure.source, failure.reason, failure.message
        );
    }
    if let Some(path) = &options.report_file {
        std::fs::write(path, manifest_report(&report.manifest, &failures))
            .with_context(|| format!("writing the build report to {}", path.display()))?;
    }
    if options.publish {
        println!("published {}", report.manifest.generation);
    } else {
        println!("not published (--no-publish)");
    }
    Ok(())
}

/// A folder removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("switchboard-sources-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating the scratch folder {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!(dir = %self.0.display(), %error, "removing the scratch folder failed");
        }
    }
}

/// Longest termination message Kubernetes keeps.
const REPORT_LIMIT: usize = 4096;

/// Bytes of the build report kept for the contradictions summary (three candidates with clipped
/// document ids and values).
const CONTRADICTIONS_ROOM: usize = 1400;

/// One entry of the build report's `sourceErrors`
/// (`switchboard_operator::knowledge_base::build::BuildReport`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ReportedError {
    source: String,
    file: Option<String>,
    reason: String,
    message: String,
}

/// The build report the operator reads from an index Job's termination message
/// (`switchboard_operator::knowledge_base::build::BuildReport`): generation number, documents,
/// chunks, and source errors — sources that could not be fetched first, then files that could
/// not be parsed — as many as fit in 4 KiB, the rest summarised in one entry.
fn manifest_report(
    manifest: &switchboard_index::Manifest,
    failures: &[kb::SourceFailure],
) -> String {
    let fetch_errors = failures.iter().map(|f| ReportedError {
        source: f.source.clone(),
        file: None,
        reason: f.reason.to_owned(),
        message: f.message.clone(),
    });
    let parse_errors = manifest.sources.iter().flat_map(|source| {
        source.errors.iter().map(|issue| ReportedError {
            source: source.name.clone(),
            file: Some(issue.item.clone()),
            reason: "ParseFailed".to_owned(),
            message: issue.reason.clone(),
        })
    });
    let mut report: serde_json::Value = serde_json::from_str(&termination_report(
        kb::generation_number(&manifest.generation).unwrap_or(0),
        manifest.documents,
        manifest.chunks,
        fetch_errors.chain(parse_errors).collect(),
    ))
    .unwrap_or_default();
    // KB rot: the contradiction count and the best three candidates (a few hundred bytes at
    // most; the source errors above leave room for them).
    if let (Some(c), Some(object)) = (&manifest.consistency, report.as_object_mut()) {
        let side = |s: &switchboard_index::consistency::Statement| {
            let (document, value) = (clip(&s.doc_id, 120), clip(&s.value, 40));
            serde_json::json!({ "document": document, "value": value })
        };
        let top: Vec<serde_json::Value> = c
            .top
            .iter()
            .take(3)
            .map(|c| serde_json::json!({"kind": c.kind.as_str(), "a": side(&c.a), "b": side(&c.b)}))
            .collect();
        object.insert(
            "contradictions".to_owned(),
            serde_json::json!({"count": c.contradictions, "top": top}),
        );
    }
    report.to_string()
}

/// `s` cut to at most `max` bytes on a character boundary.
fn clip(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// See [`manifest_report`].
fn termination_report(
    generation: i64,
    documents: usize,
    chunks: usize,
    errors: Vec<ReportedError>,
) -> String {
    let errors: Vec<serde_json::Value> = errors
        .into_iter()
        .map(|e| {
            let mut v =
                serde_json::json!({"source": e.source, "reason": e.reason, "message": e.message});
            if let Some(file) = e.file {
                v["file"] = serde_json::Value::String(file);
            }
            v
        })
        .collect();
    let total = errors.len();
    let mut listed = total;
    loop {
        let mut shown: Vec<serde_json::Value> = errors[..listed].to_vec();
        if listed < total {
            shown.push(serde_json::json!({
                "source": "*",
                "reason": "TooManyErrors",
                "message": format!("{} more source errors not listed (see the Job's log)", total - listed),
            }));
        }
        let report = serde_json::json!({
            "generation": generation,
            "documents": documents,
            "chunks": chunks,
            "sourceErrors": shown,
        })
        .to_string();
        // Room kept for the contradictions summary `manifest_report` adds.
        if report.len() <= REPORT_LIMIT - CONTRADICTIONS_ROOM || listed == 0 {
            return report;
        }
        listed -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn termination_report_fits_in_4_kib_and_says_what_was_left_out() {
        let small: serde_json::Value = serde_json::from_str(&termination_report(
            7,
            12,
            40,
            vec![
                ReportedError {
                    source: "wiki".into(),
                    file: None,
                    reason: "DigestMismatch".into(),
                    message: "sha256 differs".into(),
                },
                ReportedError {
                    source: "pdf".into(),
                    file: Some("broken.pdf".into()),
                    reason: "ParseFailed".into(),
                    message: "not a PDF".into(),
                },
            ],
        ))
        .unwrap();
        assert_eq!(small["generation"], 7);
        assert_eq!(small["chunks"], 40);
        // A source-level failure names no file; a file-level one does.
        assert_eq!(small["sourceErrors"][0]["reason"], "DigestMismatch");
        assert!(small["sourceErrors"][0].get("file").is_none());
        assert_eq!(small["sourceErrors"][1]["file"], "broken.pdf");
        assert_eq!(small["sourceErrors"][1]["reason"], "ParseFailed");

        let many: Vec<ReportedError> = (0..500)
            .map(|i| ReportedError {
                source: "tickets".into(),
                file: Some(format!("ticket {i}")),
                reason: "ParseFailed".into(),
                message: "resolution too short".into(),
            })
            .collect();
        let report = termination_report(8, 1, 1, many.clone());
        assert!(report.len() <= REPORT_LIMIT, "{}", report.len());

        // With the contradictions summary, long ids included, it still fits.
        let long = "x".repeat(300);
        let statement =
            serde_json::json!({"chunkId": "c", "docId": long, "value": long, "sentence": long});
        let candidate = serde_json::json!({"kind": "duration", "unit": "day", "a": statement,
            "b": statement, "cosine": 0.9, "context": 0.9, "score": 0.8});
        let manifest: switchboard_index::Manifest = serde_json::from_value(serde_json::json!({
            "layout_version": 1, "generation": "gen-000008", "built_at": 0, "build_millis": 0,
            "embedding": {"model_id": "m", "dim": 8},
            "chunking": {"strategy": "Hierarchical", "maxTokens": 200, "overlap": 32},
            "freshness_classes": {},
            "sources": [{"name": "tickets", "format": null, "digest": "", "files": 1,
                "documents": 1, "chunks": 1, "skipped": {}, "skipped_examples": [], "reused": false,
                "errors": many.iter().map(|e| serde_json::json!(
                    {"item": e.file.clone().unwrap_or_default(), "reason": e.message})).collect::<Vec<_>>()}],
            "documents": 1, "sections": 1, "chunks": 1,
            "consistency": {"claims": 9, "contradictions": 7, "top": [candidate.clone(), candidate.clone(), candidate.clone(), candidate]},
        }))
        .unwrap();
        let report = manifest_report(&manifest, &[]);
        assert!(report.len() <= REPORT_LIMIT, "{}", report.len());
        let v: serde_json::Value = serde_json::from_str(&report).unwrap();
        assert_eq!(v["contradictions"]["count"], 7);
        assert_eq!(v["contradictions"]["top"].as_array().unwrap().len(), 3);
        assert_eq!(v["contradictions"]["top"][0]["kind"], "duration");
        let v: serde_json::Value = serde_json::from_str(&report).unwrap();
        let listed = v["sourceErrors"].as_array().unwrap();
        let last = listed.last().unwrap();
        assert_eq!(last["reason"], "TooManyErrors");
        let left_out = 500 - (listed.len() - 1);
        assert!(
            last["message"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{left_out} more"))
        );
    }
}

async fn query(addr: String, top_k: u32, queries: Vec<String>) -> Result<()> {
    use switchboard_proto::v1::{RetrieveRequest, retrieval_client::RetrievalClient};
    let mut client = RetrievalClient::connect(addr.clone())
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    for query in queries {
        let response = client
            .retrieve(RetrieveRequest {
                query: query.clone(),
                top_k,
                stages: None,
            })
            .await
            .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))?
            .into_inner();
        println!(
            "\nquery: {query}\n  (generation {}, {:.1} ms, rerank {})",
            response.generation,
            response.timings.as_ref().map_or(0.0, |t| t.total_ms),
            response.rerank
        );
        if !response.failure.is_empty() {
            println!(
                "  no passage cleared the relevance floor: {}",
                response.failure
            );
        }
        for (rank, p) in response.passages.iter().enumerate() {
            let score = p.scores.as_ref().map_or(0.0, |s| s.r#final);
            let updated = if p.last_modified > 0 {
                format!(", updated {}", date(p.last_modified))
            } else {
                String::new()
            };
            println!(
                "  {}. [{score:.4}] {}\n     source {} ({}{updated})",
                rank + 1,
                p.breadcrumb,
                p.source,
                p.freshness_class
            );
            let text: String = p.text.split_whitespace().collect::<Vec<_>>().join(" ");
            let text: String = text.chars().take(220).collect();
            println!("     {text}");
        }
    }
    Ok(())
}

/// `YYYY-MM-DD` of a Unix timestamp (UTC), by the civil-from-days algorithm.
fn date(unix: i64) -> String {
    let z = unix.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
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

#[cfg(test)]
mod date_tests {
    #[test]
    fn dates_are_civil() {
        assert_eq!(super::date(0), "1970-01-01");
        assert_eq!(super::date(1_709_251_200), "2024-03-01");
        assert_eq!(super::date(951_782_400), "2000-02-29");
    }
}

/// `validate`: every file's verdict; an error when any is refused.
fn validate(files: &[PathBuf]) -> Result<()> {
    let mut refused = 0;
    for file in files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        match switchboard_crds::resources_from_yaml(&text) {
            Ok(resources) => {
                let names: Vec<String> = resources
                    .iter()
                    .map(|r| format!("{} {}", r.kind(), r.name()))
                    .collect();
                println!("{}: ok ({})", file.display(), names.join(", "));
            }
            Err(e) => {
                refused += 1;
                println!("{}: {e}", file.display());
            }
        }
    }
    if refused > 0 {
        bail!("{refused} of {} files refused", files.len());
    }
    Ok(())
}
