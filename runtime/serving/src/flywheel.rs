//! The data flywheel on the command line and over HTTP (`switchboard-flywheel` does the work):
//!
//! - `switchboard-runtime export`: labelled, filtered, deduplicated training records (JSONL) and
//!   their summary, from the outcome store (docs/training-data.md);
//! - `switchboard-runtime coverage-gaps`: what the knowledge base does not answer, for people;
//! - `GET /v1/coverage-gaps`: the same for the operator (the KnowledgeBase's `ContentCovers`).
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use switchboard_flywheel::cluster::{DEDUP_THRESHOLD, TOPIC_THRESHOLD};
use switchboard_flywheel::export::{self, ExportSettings};
use switchboard_flywheel::filter::FilterSettings;
use switchboard_flywheel::gaps::{self, GapReport, GapSettings};
use switchboard_flywheel::tickets::TicketSettings;
use switchboard_flywheel::window::{self, parse_time, parse_until};
use switchboard_model::EncoderWorker;
use switchboard_store::{OutcomeStore, StoreError};

use crate::engine::Engine;
use crate::models::WorkerEmbedder;

fn parse_duration(s: &str) -> Result<Duration, String> {
    switchboard_crds::parse_duration(s).map_err(|e| e.to_string())
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Where the interactions come from (both commands).
#[derive(Debug, Clone, clap::Args)]
pub struct SourceArgs {
    /// The outcome store (the URL `serve` writes to): `sqlite://<path>` or `postgres://...`.
    #[arg(
        long,
        env = "SWITCHBOARD_OUTCOME_STORE",
        default_value = "sqlite://.cache/switchboard/outcomes.db",
        hide_env_values = true
    )]
    outcome_store: String,
    /// Only the interactions of this Router (`<namespace>/<name>`; `local/<router>` in the embedded
    /// default). All Routers of the store when unset.
    #[arg(long)]
    router: Option<String>,
    /// Window end (exclusive): `now`, Unix seconds, an RFC 3339 time, a date, or a duration ago.
    #[arg(long, default_value = "now")]
    until: String,
    /// sentence-transformers checkpoint the queries are embedded with.
    #[arg(
        long,
        env = "SWITCHBOARD_ENCODER",
        default_value = ".cache/models/all-MiniLM-L6-v2"
    )]
    encoder: PathBuf,
}

/// Options of `export`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Window start (inclusive): Unix seconds, an RFC 3339 time, a date, or a duration ago.
    #[arg(long, default_value = "720h")]
    from: String,
    /// The JSONL file written (the summary goes next to it: `x.jsonl` -> `x.summary.json`).
    #[arg(long, short = 'o')]
    out: PathBuf,
    /// Interactions younger than this are never labelled positive (a reopen may still arrive).
    #[arg(long, default_value = "72h", value_parser = parse_duration)]
    settle: Duration,
    /// Records kept per assignment unit (user, account or conversation).
    #[arg(long, default_value_t = FilterSettings::default().max_per_unit)]
    max_per_unit: usize,
    /// A unit asking the same query again within this window is a replay (the first is kept).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    replay_window: Duration,
    /// Longest query kept, in characters.
    #[arg(long, default_value_t = FilterSettings::default().max_query_chars)]
    max_query_chars: usize,
    /// Longest answer kept, in characters.
    #[arg(long, default_value_t = FilterSettings::default().max_answer_chars)]
    max_answer_chars: usize,
    /// Cosine (MiniLM) at or above which two queries are the same question.
    #[arg(long, default_value_t = DEDUP_THRESHOLD)]
    dedup_threshold: f32,
    /// Records kept per (query cluster, label); 0 keeps every record.
    #[arg(long, default_value_t = 1)]
    keep_per_cluster: usize,
    /// Cluster by exact (normalised) text only, without loading the encoder.
    #[arg(long)]
    no_embeddings: bool,
    /// Also write a curriculum sample (`x.jsonl` -> `x.curriculum.jsonl`): records drawn in
    /// this mix of categories, `negative=0.3,lowConfidence=0.2,novel=0.2` (the rest gets what
    /// is left), rare ones oversampled; the mix drawn is in the summary (docs/training-data.md).
    #[arg(long, value_parser = switchboard_flywheel::curriculum::Mix::parse)]
    curriculum: Option<switchboard_flywheel::curriculum::Mix>,
    /// Records in the curriculum sample (default: as many as the export has).
    #[arg(long, requires = "curriculum")]
    curriculum_size: Option<usize>,
    /// Seed of the curriculum draw.
    #[arg(long, default_value_t = 42, requires = "curriculum")]
    curriculum_seed: u64,
    /// The current training set (JSONL with a `query` or `prompt` field per line: an earlier
    /// export, SFT data): a record whose query's nearest one here is below --novel-below
    /// (cosine) is novel. Without it no record is novel.
    #[arg(long, requires = "curriculum")]
    seen: Option<PathBuf>,
    /// Cosine under which a query is unlike the seen training set.
    #[arg(long, default_value_t = 0.75, requires = "seen")]
    novel_below: f32,
}

/// Options of `tickets`.
#[derive(Debug, Clone, clap::Args)]
pub struct TicketsArgs {
    /// A Zendesk ticket export (JSON: `{"tickets": [...], "users": [...]}`).
    #[arg(long)]
    zendesk: PathBuf,
    /// The JSONL file written: one multi-turn conversation a line, `switchboard-train sft`'s
    /// input (the report goes next to it: `x.jsonl` -> `x.summary.json`).
    #[arg(long, short = 'o')]
    out: PathBuf,
    /// Share of the surviving tickets kept, best scored first.
    #[arg(long, default_value_t = TicketSettings::default().keep_top)]
    keep_top: f64,
    /// Fewest estimated tokens of public conversation.
    #[arg(long, default_value_t = TicketSettings::default().min_tokens)]
    min_tokens: usize,
    /// A system turn to start every conversation with.
    #[arg(long)]
    system: Option<String>,
    /// Skip duplicate and template detection (no encoder).
    #[arg(long)]
    no_embeddings: bool,
    /// sentence-transformers checkpoint for duplicate and template detection.
    #[arg(
        long,
        env = "SWITCHBOARD_ENCODER",
        default_value = ".cache/models/all-MiniLM-L6-v2"
    )]
    encoder: PathBuf,
}

/// `switchboard-runtime tickets`: historical tickets to scored multi-turn SFT conversations
/// (docs/training-data.md, "Tickets").
pub fn tickets(args: &TicketsArgs) -> Result<()> {
    anyhow::ensure!(
        args.keep_top > 0.0 && args.keep_top <= 1.0,
        "--keep-top {}: a share in (0, 1]",
        args.keep_top
    );
    let text = std::fs::read(&args.zendesk)
        .with_context(|| format!("reading {}", args.zendesk.display()))?;
    let export: serde_json::Value = serde_json::from_slice(&text)
        .with_context(|| format!("{}: not JSON", args.zendesk.display()))?;
    let encoder = if args.no_embeddings {
        None
    } else {
        Some(load_encoder(&args.encoder)?)
    };
    let settings = TicketSettings {
        keep_top: args.keep_top,
        min_tokens: args.min_tokens,
        system: args.system.clone(),
        ..TicketSettings::default()
    };
    let redact = |s: &str| switchboard_policy::redact::redact(s).into_owned();
    let (conversations, report) = switchboard_flywheel::tickets::conversations(
        &export,
        encoder
            .as_ref()
            .map(|e| e as &dyn switchboard_index::Embedder),
        &redact,
        &settings,
    )
    .with_context(|| args.zendesk.display().to_string())?;
    let mut out = String::new();
    for c in &conversations {
        out.push_str(&serde_json::to_string(c)?);
        out.push('\n');
    }
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(&args.out, out).with_context(|| format!("writing {}", args.out.display()))?;
    let summary = export::summary_path(&args.out);
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(&summary, format!("{json}\n"))
        .with_context(|| format!("writing {}", summary.display()))?;
    println!("{json}");
    eprintln!(
        "wrote {} conversations of {} tickets to {} (summary {})",
        report.kept,
        report.read,
        args.out.display(),
        summary.display()
    );
    Ok(())
}

/// Options of `coverage-gaps`.
#[derive(Debug, Clone, clap::Args)]
pub struct GapsArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Window start (inclusive): Unix seconds, an RFC 3339 time, a date, or a duration ago.
    #[arg(long, default_value = "168h")]
    from: String,
    /// A best-passage score below this is a gap signal too (the KnowledgeBase's score scale).
    #[arg(long)]
    min_score: Option<f64>,
    /// Interactions a cluster needs to be a gap.
    #[arg(long, default_value_t = 3)]
    min_queries: u64,
    /// Cosine (MiniLM) at or above which two queries are the same topic.
    #[arg(long, default_value_t = TOPIC_THRESHOLD)]
    threshold: f32,
    /// Gaps listed.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Print the report as JSON (the body of `GET /v1/coverage-gaps`).
    #[arg(long)]
    json: bool,
}

fn check_threshold(name: &str, t: f32) -> Result<()> {
    anyhow::ensure!(t > 0.0 && t <= 1.0, "{name}: a cosine in (0, 1], got {t}");
    Ok(())
}

fn load_encoder(path: &PathBuf) -> Result<WorkerEmbedder> {
    let worker = EncoderWorker::spawn("encoder", path, switchboard_model::default_device(), 32)
        .with_context(|| format!("loading the encoder {}", path.display()))?;
    Ok(WorkerEmbedder::new(worker))
}

fn tokio_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Most gap signals one report reads (the newest).
pub const MAX_GAP_SIGNALS: i64 = 20_000;

/// The query embeddings of `GET /v1/coverage-gaps`, kept between calls (the operator asks at
/// every KnowledgeBase reconcile): at most one report's worth of texts, about 30 MB with MiniLM.
fn gap_embeddings() -> &'static switchboard_flywheel::cache::EmbeddingCache {
    static CACHE: std::sync::OnceLock<switchboard_flywheel::cache::EmbeddingCache> =
        std::sync::OnceLock::new();
    CACHE.get_or_init(|| switchboard_flywheel::cache::EmbeddingCache::new(MAX_GAP_SIGNALS as usize))
}

/// `switchboard-runtime export`.
pub fn export(args: &ExportArgs) -> Result<()> {
    let started = Instant::now();
    let now = window::now();
    let from = parse_time(&args.from, now).map_err(|e| anyhow::anyhow!("--from {e}"))?;
    let until = parse_until(&args.source.until, now).map_err(|e| anyhow::anyhow!("--until {e}"))?;
    anyhow::ensure!(
        from < until,
        "--from ({from}) must be before --until ({until})"
    );
    check_threshold("--dedup-threshold", args.dedup_threshold)?;
    let settings = ExportSettings {
        settle_secs: secs(args.settle),
        filters: FilterSettings {
            max_query_chars: args.max_query_chars,
            max_answer_chars: args.max_answer_chars,
            max_per_unit: args.max_per_unit,
            replay_window_secs: secs(args.replay_window),
        },
        dedup_threshold: args.dedup_threshold,
        keep_per_cluster: args.keep_per_cluster,
    };
    // Load the encoder first: a wrong path fails before the store is read.
    let encoder = if args.no_embeddings {
        None
    } else {
        Some(load_encoder(&args.source.encoder)?)
    };
    let read_started = Instant::now();
    let rows = tokio_runtime()?.block_on(async {
        let store = OutcomeStore::connect(&args.source.outcome_store).await?;
        switchboard_flywheel::read_interactions(&store, args.source.router.as_deref(), from, until)
            .await
    })?;
    let read_seconds = read_started.elapsed().as_secs_f64();
    let embedder = encoder
        .as_ref()
        .map(|e| e as &dyn switchboard_index::Embedder);
    let mut export = export::build(&rows, now, embedder, &settings)?;
    let curriculum = match &args.curriculum {
        Some(mix) => Some(curriculum_sample(args, mix, &mut export, embedder)?),
        None => None,
    };
    let summary = &mut export.summary;
    summary.router.clone_from(&args.source.router);
    summary.from = from;
    summary.until = until;
    summary.timings.read_seconds = read_seconds;
    summary.timings.total_seconds = started.elapsed().as_secs_f64();
    let summary_path = export::write_jsonl(&args.out, &export)?;
    if let Some(sample) = &curriculum {
        let path = export::curriculum_path(&args.out);
        export::write_records(&path, sample)?;
        eprintln!(
            "wrote a curriculum sample of {} records to {}",
            sample.len(),
            path.display()
        );
    }
    println!("{}", serde_json::to_string_pretty(&export.summary)?);
    eprintln!(
        "wrote {} records of {} interactions to {} (summary {})",
        export.summary.written,
        export.summary.read,
        args.out.display(),
        summary_path.display()
    );
    Ok(())
}

/// The queries of a training-data file: each line's `query`, else `prompt`, else its first
/// user message (`messages`).
fn seen_queries(path: &std::path::Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not JSON", path.display(), n + 1))?;
        let query = v["query"]
            .as_str()
            .or_else(|| v["prompt"].as_str())
            .or_else(|| {
                v["messages"].as_array().and_then(|m| {
                    m.iter()
                        .find(|m| m["role"] == "user")
                        .and_then(|m| m["content"].as_str())
                })
            })
            .with_context(|| {
                format!(
                    "{}:{}: no `query`, `prompt` or user message",
                    path.display(),
                    n + 1
                )
            })?;
        out.push(query.to_owned());
    }
    Ok(out)
}

/// The curriculum sample of `export` (its summary gets the mix drawn).
fn curriculum_sample(
    args: &ExportArgs,
    mix: &switchboard_flywheel::curriculum::Mix,
    export: &mut export::Export,
    embedder: Option<&dyn switchboard_index::Embedder>,
) -> Result<Vec<switchboard_flywheel::record::ExportRecord>> {
    use switchboard_flywheel::curriculum;
    let novel = match &args.seen {
        Some(path) => {
            let embedder =
                embedder.context("--seen compares queries by embedding: drop --no-embeddings")?;
            let seen = seen_queries(path)?;
            let queries: Vec<String> = export.records.iter().map(|r| r.query.clone()).collect();
            let seen = switchboard_flywheel::embed_all(embedder, &seen)?;
            let vectors = switchboard_flywheel::embed_all(embedder, &queries)?;
            curriculum::novelty(&vectors, &seen, args.novel_below)
        }
        None => Vec::new(),
    };
    let size = args.curriculum_size.unwrap_or(export.records.len());
    let (drawn, report) =
        curriculum::sample(&export.records, &novel, mix, size, args.curriculum_seed);
    export.summary.curriculum = Some(report);
    Ok(drawn
        .into_iter()
        .map(|(i, category)| {
            let mut r = export.records[i].clone();
            r.curriculum = Some(category);
            r
        })
        .collect())
}

/// `switchboard-runtime coverage-gaps`.
pub fn coverage_gaps(args: &GapsArgs) -> Result<()> {
    let now = window::now();
    let from = parse_time(&args.from, now).map_err(|e| anyhow::anyhow!("--from {e}"))?;
    let until = parse_until(&args.source.until, now).map_err(|e| anyhow::anyhow!("--until {e}"))?;
    anyhow::ensure!(
        from < until,
        "--from ({from}) must be before --until ({until})"
    );
    check_threshold("--threshold", args.threshold)?;
    let settings = GapSettings {
        min_score: args.min_score,
        threshold: args.threshold,
        min_queries: args.min_queries.max(1),
        limit: args.limit,
        ..GapSettings::default()
    };
    let encoder = load_encoder(&args.source.encoder)?;
    let router = args.source.router.as_deref();
    let (rows, interactions) = tokio_runtime()?.block_on(async {
        let store = OutcomeStore::connect(&args.source.outcome_store).await?;
        let rows = store
            .coverage_signals(router, from, until, args.min_score, MAX_GAP_SIGNALS)
            .await?;
        let interactions = store.count_interactions(router, from, until).await?;
        Ok::<_, StoreError>((rows, interactions))
    })?;
    let truncated = rows.len() as i64 >= MAX_GAP_SIGNALS;
    let mut report = gaps::coverage_gaps(&rows, &encoder, &settings)?;
    report.set_interactions(interactions);
    report.router.clone_from(&args.source.router);
    report.from = from;
    report.until = until;
    report.truncated = truncated;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", describe(&report));
    }
    Ok(())
}

/// The report for people.
pub fn describe(report: &GapReport) -> String {
    let mut out = format!(
        "coverage gaps of {} from {} to {}: {} signals among {} interactions (escalated, nothing found, refused{}) in {} \
         clusters, {} gaps of at least {} queries{}\n",
        report.router.as_deref().unwrap_or("every Router"),
        window::rfc3339(report.from),
        window::rfc3339(report.until),
        report.signals,
        report.interactions,
        if report.settings.min_score.is_some() {
            ", low score"
        } else {
            ""
        },
        report.clusters,
        report.gaps_found,
        report.settings.min_queries,
        if report.truncated {
            " (only the newest signals were read)"
        } else {
            ""
        }
    );
    for (rank, gap) in report.gaps.iter().enumerate() {
        out.push_str(&format!(
            "\n{:>3}. {:?}\n     {} interactions ({:.1}% of all), {} escalated ({:.0}%), {} with nothing found, {} refused{}; last {}\n",
            rank + 1,
            gap.query,
            gap.volume,
            gap.share * 100.0,
            gap.escalated,
            gap.escalation_share * 100.0,
            gap.retrieval_failures,
            gap.refusals,
            if report.settings.min_score.is_some() {
                format!(", {} below the score", gap.low_score)
            } else {
                String::new()
            },
            window::rfc3339(gap.last_seen),
        ));
        let others: Vec<String> = gap
            .examples
            .iter()
            .filter(|e| **e != gap.query)
            .map(|e| format!("{e:?}"))
            .collect();
        if !others.is_empty() {
            out.push_str(&format!("     also asked: {}\n", others.join(", ")));
        }
        if gap.documents.is_empty() {
            out.push_str("     retrieved: nothing (the knowledge base has no passage on it)\n");
        } else {
            let docs: Vec<String> = gap
                .documents
                .iter()
                .map(|d| format!("{} ({}x)", d.document, d.interactions))
                .collect();
            out.push_str(&format!("     retrieved: {}\n", docs.join(", ")));
        }
    }
    out
}

/// Query of `GET /v1/coverage-gaps`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GapParams {
    /// Window start: Unix seconds, an RFC 3339 time, a date or a duration ago (default `168h`).
    #[serde(default)]
    pub since: Option<String>,
    /// Window end (default now).
    #[serde(default)]
    pub until: Option<String>,
    /// Gaps listed (1..=100, default 20).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Interactions a cluster needs (default 3).
    #[serde(default)]
    pub min_queries: Option<u64>,
    /// Best-passage score below which an interaction is a signal (default: unused).
    #[serde(default)]
    pub min_score: Option<f64>,
    /// Topic cosine (default 0.75).
    #[serde(default)]
    pub threshold: Option<f32>,
}

/// Why a gap report could not be made: `(status, code, message)` of the HTTP error.
#[derive(Debug)]
pub enum GapError {
    /// A parameter is wrong (400, naming it).
    Invalid(String),
    /// No config, store or encoder failure (503).
    Unavailable(String),
}

/// The coverage gaps of this runtime's Router over the window of `params`.
pub async fn gaps_of_engine(
    engine: &Arc<Engine>,
    params: GapParams,
) -> Result<GapReport, GapError> {
    let now = window::now();
    let from = parse_time(params.since.as_deref().unwrap_or("168h"), now)
        .map_err(|e| GapError::Invalid(format!("since: {e}")))?;
    let until = parse_until(params.until.as_deref().unwrap_or("now"), now)
        .map_err(|e| GapError::Invalid(format!("until: {e}")))?;
    if from >= until {
        return Err(GapError::Invalid(format!(
            "since: {from} is not before until ({until})"
        )));
    }
    let limit = params.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(GapError::Invalid(
            "limit: must be an integer from 1 to 100".into(),
        ));
    }
    let threshold = params.threshold.unwrap_or(TOPIC_THRESHOLD);
    if !(threshold > 0.0 && threshold <= 1.0) {
        return Err(GapError::Invalid("threshold: a cosine in (0, 1]".into()));
    }
    if params.min_score.is_some_and(|s| !s.is_finite()) {
        return Err(GapError::Invalid("minScore: must be a number".into()));
    }
    let settings = GapSettings {
        min_score: params.min_score,
        threshold,
        min_queries: params.min_queries.unwrap_or(3).max(1),
        limit,
        ..GapSettings::default()
    };
    let Some(active) = engine.active() else {
        return Err(GapError::Unavailable("no RuntimeConfig applied yet".into()));
    };
    let store_failed = |e: StoreError| {
        engine.metrics().store_error(e.label());
        GapError::Unavailable(e.to_string())
    };
    let rows = engine
        .store()
        .coverage_signals(
            Some(&active.router),
            from,
            until,
            settings.min_score,
            MAX_GAP_SIGNALS,
        )
        .await
        .map_err(store_failed)?;
    let interactions = engine
        .store()
        .count_interactions(Some(&active.router), from, until)
        .await
        .map_err(store_failed)?;
    let truncated = rows.len() as i64 >= MAX_GAP_SIGNALS;
    let encoder = Arc::clone(&active.encoder);
    let mut report = tokio::task::spawn_blocking(move || {
        let cached = gap_embeddings().wrap(encoder.as_ref());
        gaps::coverage_gaps(&rows, &cached, &settings)
    })
    .await
    .map_err(|e| GapError::Unavailable(format!("coverage gaps: {e}")))?
    .map_err(|e| GapError::Unavailable(e.to_string()))?;
    report.set_interactions(interactions);
    report.router = Some(active.router.clone());
    report.from = from;
    report.until = until;
    report.truncated = truncated;
    Ok(report)
}
