//! `eval`: retrieval quality of a golden set, stage by stage.
//!
//! A golden set is JSONL, one query a line: `{"id": "q01", "query": "...", "gold_docs": [...],
//! "gold_sections": [...]}` (`id` optional; at least one of the gold lists). Each configuration
//! (BM25 only, dense only, hybrid, hybrid + rerank, plus any fusion variants asked for) runs every
//! query; the ranked passages are collapsed to unique document (or section) ids, and recall@1/5/10,
//! MRR@10 and nDCG@10 (binary relevance) are averaged over the queries.
//!
//! Two inputs: a KnowledgeBase manifest with its golden file, or the Zaragoza FAQ (`--zaragoza`:
//! corpus = the answers, one PlainText document each; query = the question; gold = its own answer).
//! Either way the corpus is indexed into a temporary generation store that is removed afterwards.
//! Method and results: `docs/evaluation.md`.
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use switchboard_index::{
    BuildOptions, ChunkingSpec, Embedder, Fusion, Generation, Generations, IndexSpec, InlineFile,
    RerankOptions, Reranker, Retriever, SearchOptions, SourceFormat, SourceLocation, SourceSpec,
};
use switchboard_model::{CrossEncoder, EncoderWorker};

use switchboard_serving::kb;
use switchboard_serving::models::{CrossEncoderReranker, WorkerEmbedder};

/// Ranks the metrics look at (R@10, MRR@10, nDCG@10).
pub const DEPTH: usize = 10;

/// Passages asked of the retriever per query: several chunks of one document collapse into one
/// ranked id, so ask for more than [`DEPTH`].
const PASSAGES: usize = 50;

/// Source name of the Zaragoza corpus (gold ids are `zaragoza/<n>.txt`).
const ZARAGOZA_SOURCE: &str = "zaragoza";

/// Where the corpus and the queries come from: shared by `eval`, `train-reranker` and
/// `synth-queries`.
#[derive(Debug, Clone, clap::Args)]
pub struct DatasetArgs {
    /// KnowledgeBase manifest (a file or a folder of manifests) whose sources form the corpus.
    #[arg(long, requires = "golden")]
    pub manifests: Option<PathBuf>,
    /// Which KnowledgeBase when the manifests hold several.
    #[arg(long)]
    pub knowledge_base: Option<String>,
    /// Golden set (JSONL: query, gold_docs and/or gold_sections).
    #[arg(long)]
    pub golden: Option<PathBuf>,
    /// Use the Zaragoza FAQ JSONL (rows id/q/a) instead of a KnowledgeBase.
    #[arg(long, conflicts_with_all = ["manifests", "golden", "knowledge_base"])]
    pub zaragoza: Option<PathBuf>,
    /// Sentence encoder checkpoint (default: the KnowledgeBase's, else MiniLM from hack/setup.sh).
    #[arg(long, env = "SWITCHBOARD_ENCODER")]
    pub encoder: Option<PathBuf>,
    /// Fusion of the hybrid configuration, overriding the manifest's (Zaragoza: RRF k=60):
    /// `rrf`, `rrf:K` or `weighted:W` (dense weight W, BM25 1 - W).
    #[arg(long, value_parser = parse_fusion)]
    pub fusion: Option<Fusion>,
    /// "Now" for recency decay, Unix seconds (default: the system clock).
    #[arg(long)]
    pub now: Option<i64>,
}

/// Arguments of `switchboard-runtime eval`.
#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {
    #[command(flatten)]
    /// The dataset: manifests and a golden set, or the Zaragoza FAQ.
    pub data: DatasetArgs,
    /// Which queries count: all, or one half of the fixed split (see [`Split`]).
    #[arg(long, value_enum, default_value_t = Split::All)]
    pub split: Split,
    /// Cross-encoder checkpoint: adds the hybrid+rerank configuration.
    #[arg(long)]
    pub reranker: Option<PathBuf>,
    /// Fused candidates the cross-encoder rescores; several (comma-separated) give one row each.
    #[arg(long, value_delimiter = ',', default_value = "20")]
    pub rerank_top_n: Vec<usize>,
    /// Cross-encoder share of the reranked head's order ([`RerankOptions::weight`]), one row
    /// per value (comma-separated, each in 0..1). Every (query, passage) pair is scored once and
    /// reused across the rows, so a sweep costs one rerank pass.
    #[arg(long, value_delimiter = ',', default_value = "1", value_parser = parse_weight)]
    pub rerank_weight: Vec<f32>,
    /// Gold level: documents or sections.
    #[arg(long, value_enum, default_value_t = Level::Doc)]
    pub level: Level,
    /// Extra hybrid rows with weighted fusion at these dense weights (BM25 gets 1 - w),
    /// comma-separated, e.g. `0.5,0.7,0.9`.
    #[arg(long, value_delimiter = ',')]
    pub dense_weights: Vec<f32>,
    /// Extra hybrid rows with reciprocal-rank fusion at these k, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub rrf_k: Vec<f32>,
    #[command(flatten)]
    /// The query-rewriting comparison (`--rewrite`).
    pub rewrite: crate::eval_rewrite::RewriteArgs,
    #[command(flatten)]
    /// The answer evaluation (`--answers`).
    pub answers: crate::eval_answers::AnswerArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// A fixed split of a query set into two halves, by position: rows 1, 3, 5, ... (1-based line
/// order of the golden set; for Zaragoza the FAQ's row order, which groups rows by category, so
/// both halves cover every category) are `train`, rows 2, 4, 6, ... are `test`. The corpus is
/// never split: held-out queries search the same documents the training queries did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Every query.
    All,
    /// Odd rows (1, 3, 5, ...).
    Train,
    /// Even rows (2, 4, 6, ...).
    Test,
}

impl Split {
    /// Whether the query at 0-based position `index` belongs to this half.
    pub fn keeps(self, index: usize) -> bool {
        match self {
            Split::All => true,
            Split::Train => index.is_multiple_of(2),
            Split::Test => !index.is_multiple_of(2),
        }
    }
}

/// Parses `rrf`, `rrf:K` or `weighted:W`.
pub fn parse_fusion(text: &str) -> Result<Fusion, String> {
    let (method, value) = match text.split_once(':') {
        Some((m, v)) => (m, Some(v)),
        None => (text, None),
    };
    let number = |v: &str| {
        v.parse::<f32>()
            .ok()
            .filter(|x| x.is_finite())
            .ok_or_else(|| format!("`{v}` is not a number"))
    };
    match (method, value) {
        ("rrf", None) => Ok(Fusion::Rrf { k: 60.0 }),
        ("rrf", Some(k)) => match number(k)? {
            k if k > 0.0 => Ok(Fusion::Rrf { k }),
            k => Err(format!("rrf k {k} must be > 0")),
        },
        ("weighted", Some(w)) => match number(w)? {
            w if (0.0..=1.0).contains(&w) => Ok(Fusion::Weighted {
                bm25: 1.0 - w,
                dense: w,
            }),
            w => Err(format!("dense weight {w} must be in [0, 1]")),
        },
        _ => Err(format!(
            "fusion `{text}`: expected `rrf`, `rrf:K` or `weighted:W`"
        )),
    }
}

/// What counts as a hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// A passage of a gold document.
    Doc,
    /// A passage of a gold section.
    Section,
}

/// One line of a golden set.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct GoldenQuery {
    /// Optional id (for messages).
    #[serde(default)]
    pub id: Option<String>,
    /// The query.
    pub query: String,
    /// Whether the knowledge base answers it (default: it does). Unanswerable queries have no
    /// gold ids and should be refused.
    #[serde(default)]
    pub answerable: Option<bool>,
    /// Facts a correct answer states: every fact, each as alternatives (any one suffices),
    /// matched case-insensitively in the answer (`eval --answers`).
    #[serde(default)]
    pub key_facts: Vec<Vec<String>>,
    /// Outdated facts an answer must not state (a policy that changed).
    #[serde(default)]
    pub stale_facts: Vec<String>,
    /// Relevant document ids.
    #[serde(default)]
    pub gold_docs: Vec<String>,
    /// Relevant section ids.
    #[serde(default)]
    pub gold_sections: Vec<String>,
    /// Free-form labels (`typo`, `indirect`, `off-topic`, ...).
    #[serde(default)]
    pub tags: Vec<String>,
}

impl GoldenQuery {
    /// Whether the knowledge base answers the query.
    pub fn is_answerable(&self) -> bool {
        self.answerable.unwrap_or(true)
    }

    /// The gold ids at `level`.
    pub fn gold(&self, level: Level) -> &[String] {
        match level {
            Level::Doc => &self.gold_docs,
            Level::Section => &self.gold_sections,
        }
    }
}

/// Parses a golden set; every line must be a query with at least one gold id.
pub fn parse_golden(text: &str, origin: &str) -> Result<Vec<GoldenQuery>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let q: GoldenQuery = serde_json::from_str(line)
            .with_context(|| format!("{origin}:{}: not a golden query", n + 1))?;
        if q.query.trim().is_empty() {
            bail!("{origin}:{}: empty query", n + 1);
        }
        let no_gold = q.gold_docs.is_empty() && q.gold_sections.is_empty();
        if q.is_answerable() && no_gold {
            bail!("{origin}:{}: no gold_docs or gold_sections", n + 1);
        }
        if !q.is_answerable() && (!no_gold || !q.key_facts.is_empty()) {
            bail!(
                "{origin}:{}: an unanswerable query has no gold ids or key facts",
                n + 1
            );
        }
        if let Some(i) = q
            .key_facts
            .iter()
            .position(|f| f.is_empty() || f.iter().any(|a| a.trim().is_empty()))
        {
            bail!(
                "{origin}:{}: key_facts[{i}] needs at least one non-empty alternative",
                n + 1
            );
        }
        out.push(q);
    }
    if out.is_empty() {
        bail!("{origin}: no queries");
    }
    Ok(out)
}

/// Ids in first-seen order without repeats (several chunks of one document count once, at the
/// rank of the best one).
pub fn dedup_ranked<'a>(ids: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen = HashSet::new();
    ids.into_iter().filter(|id| seen.insert(*id)).collect()
}

/// Share of the gold ids found in the first `k` ranked ids (0 when there is no gold id).
pub fn recall_at(ranked: &[&str], gold: &HashSet<&str>, k: usize) -> f64 {
    if gold.is_empty() {
        return 0.0;
    }
    let found = ranked
        .iter()
        .take(k)
        .filter(|id| gold.contains(*id))
        .count();
    found as f64 / gold.len() as f64
}

/// `1 / rank` of the first gold id within the first `k` (0 when none is there).
pub fn reciprocal_rank_at(ranked: &[&str], gold: &HashSet<&str>, k: usize) -> f64 {
    ranked
        .iter()
        .take(k)
        .position(|id| gold.contains(*id))
        .map_or(0.0, |i| 1.0 / (i as f64 + 1.0))
}

/// nDCG@k with binary relevance: `sum over gold hits at rank r of 1/log2(r + 1)`, divided by the
/// same sum for the ideal ranking (all gold ids first).
pub fn ndcg_at(ranked: &[&str], gold: &HashSet<&str>, k: usize) -> f64 {
    let gain = |rank0: usize| 1.0 / ((rank0 + 2) as f64).log2();
    let dcg: f64 = ranked
        .iter()
        .take(k)
        .enumerate()
        .filter(|(_, id)| gold.contains(*id))
        .map(|(i, _)| gain(i))
        .sum();
    let ideal: f64 = (0..gold.len().min(k)).map(gain).sum();
    if ideal == 0.0 { 0.0 } else { dcg / ideal }
}

/// Averaged metrics of one configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Scores {
    /// Recall@1.
    #[serde(rename = "recall@1")]
    pub recall_1: f64,
    /// Recall@5.
    #[serde(rename = "recall@5")]
    pub recall_5: f64,
    /// Recall@10.
    #[serde(rename = "recall@10")]
    pub recall_10: f64,
    /// MRR@10.
    #[serde(rename = "mrr@10")]
    pub mrr_10: f64,
    /// nDCG@10.
    #[serde(rename = "ndcg@10")]
    pub ndcg_10: f64,
}

impl Scores {
    /// Metrics of one query.
    pub fn of(ranked: &[&str], gold: &HashSet<&str>) -> Self {
        Scores {
            recall_1: recall_at(ranked, gold, 1),
            recall_5: recall_at(ranked, gold, 5),
            recall_10: recall_at(ranked, gold, DEPTH),
            mrr_10: reciprocal_rank_at(ranked, gold, DEPTH),
            ndcg_10: ndcg_at(ranked, gold, DEPTH),
        }
    }

    /// Mean over queries (zeros for none).
    pub fn mean(all: &[Scores]) -> Self {
        if all.is_empty() {
            return Scores::default();
        }
        let n = all.len() as f64;
        let sum = |f: fn(&Scores) -> f64| all.iter().map(f).sum::<f64>() / n;
        Scores {
            recall_1: sum(|s| s.recall_1),
            recall_5: sum(|s| s.recall_5),
            recall_10: sum(|s| s.recall_10),
            mrr_10: sum(|s| s.mrr_10),
            ndcg_10: sum(|s| s.ndcg_10),
        }
    }
}

/// A named retrieval configuration.
#[derive(Debug, Clone)]
struct Config {
    name: String,
    options: SearchOptions,
}

/// One row of the report.
#[derive(Debug, Clone, Serialize)]
struct Row {
    config: String,
    #[serde(flatten)]
    scores: Scores,
    /// Mean wall time per query, milliseconds.
    ms_per_query: f64,
    /// Queries whose rerank did not complete (deadline or failure): the fused order was scored.
    #[serde(skip_serializing_if = "is_zero")]
    rerank_incomplete: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[derive(Debug, Serialize)]
struct Report {
    dataset: String,
    split: Split,
    level: Level,
    queries: usize,
    skipped: usize,
    chunks: usize,
    documents: usize,
    encoder: String,
    reranker: Option<String>,
    rows: Vec<Row>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rewrite: Option<crate::eval_rewrite::RewriteReport>,
}

/// Removes the temporary generation store when dropped.
struct TempStore(PathBuf);

impl TempStore {
    fn new() -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir =
            std::env::temp_dir().join(format!("switchboard-eval-{}-{nanos:x}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(TempStore(dir))
    }
}

impl Drop for TempStore {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!(dir = %self.0.display(), "could not remove the evaluation index: {e}");
        }
    }
}

/// The corpus spec, the golden set and the base search options of one dataset.
#[derive(Debug)]
pub struct Dataset {
    /// Its name in reports.
    pub name: String,
    /// What is indexed.
    pub spec: IndexSpec,
    /// The golden queries.
    pub golden: Vec<GoldenQuery>,
    /// Search options from the manifest (every row starts from them).
    pub base: SearchOptions,
    /// The sentence encoder's checkpoint.
    pub encoder: PathBuf,
}

const DEFAULT_ENCODER: &str = ".cache/models/all-MiniLM-L6-v2";

impl Dataset {
    /// Reads the corpus and golden set `args` name; `--fusion` and `--now` apply to `base`.
    pub fn load(args: &DatasetArgs) -> Result<Self> {
        let mut dataset = match (&args.zaragoza, &args.manifests, &args.golden) {
            (Some(path), _, _) => zaragoza_dataset(args, path)?,
            (None, Some(manifests), Some(golden)) => kb_dataset(args, manifests, golden)?,
            _ => bail!("give --manifests with --golden, or --zaragoza"),
        };
        if let Some(fusion) = args.fusion {
            dataset.base.fusion = fusion;
        }
        if args.now.is_some() {
            dataset.base.now = args.now;
        }
        Ok(dataset)
    }

    /// The golden queries of one half of the split, with their 0-based positions in the set.
    pub fn queries(&self, split: Split) -> Vec<(usize, &GoldenQuery)> {
        self.golden
            .iter()
            .enumerate()
            .filter(|(i, _)| split.keeps(*i))
            .collect()
    }
}

fn kb_dataset(args: &DatasetArgs, manifests: &Path, golden: &Path) -> Result<Dataset> {
    let kbs = kb::load_knowledge_bases(manifests)?;
    let kb = kb::select(kbs, args.knowledge_base.as_deref())?;
    let base_dir = if manifests.is_dir() {
        manifests.to_path_buf()
    } else {
        manifests
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    };
    let spec = kb::index_spec(&kb, &base_dir)?;
    let text =
        std::fs::read_to_string(golden).with_context(|| format!("reading {}", golden.display()))?;
    let golden_set = parse_golden(&text, &golden.display().to_string())?;
    // Stage switches are the evaluation's; fusion, boosts and recency come from the manifest.
    let base = kb::search_options(&kb.spec.retrieval, false);
    let encoder = args.encoder.clone().unwrap_or_else(|| {
        let from_spec = PathBuf::from(&kb.spec.embedding.model);
        if from_spec.join("config.json").exists() {
            from_spec
        } else {
            PathBuf::from(DEFAULT_ENCODER)
        }
    });
    Ok(Dataset {
        name: format!("KnowledgeBase {} ({})", kb::name(&kb), golden.display()),
        spec,
        golden: golden_set,
        base,
        encoder,
    })
}

#[derive(Deserialize)]
struct FaqRow {
    q: String,
    a: String,
}

/// The Zaragoza FAQ as a corpus of answers and a golden set of questions. Files are named by row
/// number, not by the FAQ id, so that the id's category word does not leak into the fallback title.
fn zaragoza_dataset(args: &DatasetArgs, path: &Path) -> Result<Dataset> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut files = Vec::new();
    let mut golden = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row: FaqRow = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not an id/q/a row", path.display(), n + 1))?;
        let name = format!("{:04}.txt", files.len() + 1);
        golden.push(GoldenQuery {
            id: Some(name.clone()),
            query: row.q,
            gold_docs: vec![format!("{ZARAGOZA_SOURCE}/{name}")],
            ..GoldenQuery::default()
        });
        files.push(InlineFile {
            name,
            content: row.a,
        });
    }
    if files.is_empty() {
        bail!("{}: no rows", path.display());
    }
    let spec = IndexSpec {
        sources: vec![SourceSpec {
            name: ZARAGOZA_SOURCE.into(),
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
    Ok(Dataset {
        name: format!("Zaragoza FAQ ({})", path.display()),
        spec,
        golden,
        base: SearchOptions {
            recency: false,
            ..SearchOptions::default()
        },
        encoder: args
            .encoder
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ENCODER)),
    })
}

/// A dataset's corpus indexed with the real encoder into a temporary store (removed on drop).
pub struct EvalIndex {
    /// The loaded index generation.
    pub generation: Arc<Generation>,
    /// The encoder that embedded it.
    pub embedder: Arc<WorkerEmbedder>,
    /// Documents indexed.
    pub documents: usize,
    // Dropped last: the generation's files live here.
    _temp: TempStore,
}

impl std::fmt::Debug for EvalIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EvalIndex")
            .field("documents", &self.documents)
            .finish_non_exhaustive()
    }
}

impl EvalIndex {
    /// Builds the corpus of `dataset` (nothing is published anywhere).
    pub fn build(dataset: &Dataset) -> Result<Self> {
        let worker = EncoderWorker::spawn(
            "encoder",
            &dataset.encoder,
            switchboard_model::default_device(),
            32,
        )
        .with_context(|| format!("loading encoder {}", dataset.encoder.display()))?;
        let embedder = Arc::new(WorkerEmbedder::new(worker));
        let temp = TempStore::new()?;
        let store = Generations::open(&temp.0)?;
        let started = Instant::now();
        let report = switchboard_index::build(
            &dataset.spec,
            &store,
            embedder.as_ref(),
            &BuildOptions {
                embed_batch: 64,
                reuse: false,
            },
        )
        .context("building the evaluation index")?;
        let issues = report.source_errors();
        if issues > 0 {
            tracing::warn!(
                issues,
                "some source files were not indexed; see the build report"
            );
        }
        tracing::info!(
            chunks = report.manifest.chunks,
            seconds = started.elapsed().as_secs_f64(),
            "evaluation index built"
        );
        let generation = Arc::new(Generation::load(&store, &report.manifest.generation)?);
        Ok(Self {
            generation,
            embedder,
            documents: report.manifest.documents,
            _temp: temp,
        })
    }

    /// A retriever over the index (dense with the same encoder), optionally with a reranker.
    pub fn retriever(&self, reranker: Option<Arc<dyn Reranker>>) -> Result<Retriever> {
        let retriever = Retriever::new(
            Arc::clone(&self.generation),
            Some(Arc::clone(&self.embedder) as Arc<dyn Embedder>),
        )?;
        Ok(match reranker {
            Some(r) => retriever.with_reranker(r),
            None => retriever,
        })
    }
}

/// `name` of a fusion setting as the report prints it.
pub fn fusion_name(f: &Fusion) -> String {
    match f {
        Fusion::Rrf { k } => format!("rrf k={k}"),
        Fusion::Weighted { dense, .. } => format!("weighted dense={dense}"),
    }
}

/// The evaluation's search options: `base` with the stages the evaluation switches, asking for
/// [`PASSAGES`] passages, no rerank and no floor.
pub fn eval_options(base: &SearchOptions) -> SearchOptions {
    SearchOptions {
        top_k: PASSAGES,
        candidates: PASSAGES,
        rerank: None,
        floor: None,
        ..base.clone()
    }
}

fn configs(args: &EvalArgs, base: &SearchOptions, reranker: bool) -> Vec<Config> {
    let base = eval_options(base);
    let mut out = vec![
        Config {
            name: "bm25".into(),
            options: SearchOptions {
                dense: false,
                ..base.clone()
            },
        },
        Config {
            name: "dense".into(),
            options: SearchOptions {
                bm25: false,
                ..base.clone()
            },
        },
        Config {
            name: format!("hybrid ({})", fusion_name(&base.fusion)),
            options: base.clone(),
        },
    ];
    let variants =
        args.rrf_k
            .iter()
            .map(|&k| Fusion::Rrf { k })
            .chain(args.dense_weights.iter().map(|&w| Fusion::Weighted {
                bm25: 1.0 - w,
                dense: w,
            }));
    for fusion in variants {
        out.push(Config {
            name: format!("hybrid ({})", fusion_name(&fusion)),
            options: SearchOptions {
                fusion,
                ..base.clone()
            },
        });
    }
    if reranker {
        for &top_n in &args.rerank_top_n {
            for &weight in &args.rerank_weight {
                let blend = if weight < 1.0 {
                    format!(", weight {weight}")
                } else {
                    String::new()
                };
                out.push(Config {
                    name: format!(
                        "hybrid+rerank ({}, top {top_n}{blend})",
                        fusion_name(&base.fusion),
                    ),
                    options: SearchOptions {
                        // An evaluation measures quality: no deadline worth the name.
                        rerank: Some(RerankOptions {
                            top_n: top_n.max(1),
                            deadline: Duration::from_secs(120),
                            weight,
                        }),
                        ..base.clone()
                    },
                });
            }
        }
    }
    out
}

/// Ranked unique ids (documents or sections) of a response's passages.
pub fn ranked_ids(passages: &[switchboard_index::Passage], level: Level) -> Vec<&str> {
    dedup_ranked(passages.iter().map(|p| match level {
        Level::Doc => p.doc_id.as_str(),
        Level::Section => p.section_id.as_str(),
    }))
}

fn run_config(
    retriever: &Retriever,
    golden: &[&GoldenQuery],
    level: Level,
    config: &Config,
) -> Result<Row> {
    let mut scores = Vec::with_capacity(golden.len());
    let mut incomplete = 0;
    let started = Instant::now();
    for q in golden {
        let response = retriever
            .search(&q.query, &config.options)
            .with_context(|| format!("{}: query {:?}", config.name, q.query))?;
        if config.options.rerank.is_some()
            && !matches!(
                response.rerank,
                switchboard_index::RerankStatus::Completed { .. }
            )
        {
            incomplete += 1;
        }
        let ranked = ranked_ids(&response.passages, level);
        let gold: HashSet<&str> = q.gold(level).iter().map(String::as_str).collect();
        scores.push(Scores::of(&ranked, &gold));
    }
    Ok(Row {
        config: config.name.clone(),
        scores: Scores::mean(&scores),
        ms_per_query: started.elapsed().as_secs_f64() * 1e3 / golden.len().max(1) as f64,
        rerank_incomplete: incomplete,
    })
}

/// `--rerank-weight`: a number in [0, 1].
fn parse_weight(s: &str) -> std::result::Result<f32, String> {
    match s.trim().parse::<f32>() {
        Ok(w) if (0.0..=1.0).contains(&w) => Ok(w),
        _ => Err(format!("{s:?} is not a weight between 0 and 1")),
    }
}

/// A reranker that remembers every (query, passage) score, so the rows of one evaluation that
/// differ only in how the scores are used (`--rerank-weight`) run the cross-encoder once.
struct MemoReranker<R> {
    inner: R,
    /// Score by query, then by passage.
    scores: std::sync::Mutex<HashMap<String, HashMap<String, f32>>>,
}

impl<R> MemoReranker<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            scores: std::sync::Mutex::default(),
        }
    }
}

impl<R: Reranker> Reranker for MemoReranker<R> {
    fn model_id(&self) -> String {
        self.inner.model_id()
    }

    fn score(&self, query: &str, passages: &[String]) -> switchboard_index::Result<Vec<f32>> {
        let mut memo = self.scores.lock().unwrap_or_else(|e| e.into_inner());
        let known = memo.entry(query.to_owned()).or_default();
        let missing: Vec<String> = passages
            .iter()
            .filter(|p| !known.contains_key(*p))
            .cloned()
            .collect();
        if !missing.is_empty() {
            let fresh = self.inner.score(query, &missing)?;
            known.extend(missing.into_iter().zip(fresh));
        }
        Ok(passages
            .iter()
            .map(|p| known.get(p).copied().unwrap_or(f32::NAN))
            .collect())
    }
}

/// `switchboard-runtime eval`.
pub fn run(args: &EvalArgs) -> Result<()> {
    if args.answers.answers {
        return crate::eval_answers::run(&args.data, args.split, args.json, &args.answers);
    }
    let dataset = Dataset::load(&args.data)?;
    let reranker = match &args.reranker {
        Some(dir) => {
            let model = CrossEncoder::load(dir, switchboard_model::default_device())
                .with_context(|| format!("loading cross-encoder {}", dir.display()))?;
            Some(Arc::new(MemoReranker::new(CrossEncoderReranker::new(
                model,
            ))))
        }
        None => None,
    };
    let index = EvalIndex::build(&dataset)?;
    crate::eval_answers::check_gold_ids(&dataset.golden, &index.generation)?;
    let retriever = index.retriever(
        reranker
            .as_ref()
            .map(|r| Arc::clone(r) as Arc<dyn Reranker>),
    )?;

    let in_split: Vec<&GoldenQuery> = dataset
        .queries(args.split)
        .into_iter()
        .map(|(_, q)| q)
        .collect();
    let golden: Vec<&GoldenQuery> = in_split
        .iter()
        .copied()
        .filter(|q| !q.gold(args.level).is_empty())
        .collect();
    let skipped = in_split.len() - golden.len();
    if golden.is_empty() {
        bail!(
            "no query of the golden set ({:?} split) has gold ids at the {:?} level",
            args.split,
            args.level
        );
    }
    let mut rows = Vec::new();
    for config in configs(args, &dataset.base, reranker.is_some()) {
        rows.push(run_config(&retriever, &golden, args.level, &config)?);
    }
    let rewrite = if args.rewrite.enabled() {
        Some(crate::eval_rewrite::run(
            &args.rewrite,
            &retriever,
            &eval_options(&dataset.base),
            &golden,
            args.level,
        )?)
    } else {
        None
    };
    let report = Report {
        dataset: dataset.name.clone(),
        split: args.split,
        level: args.level,
        queries: golden.len(),
        skipped,
        chunks: index.generation.chunks().len(),
        documents: index.documents,
        encoder: index.embedder.model_id(),
        reranker: reranker.as_ref().map(|r| r.model_id()),
        rows,
        rewrite,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
        if let Some(rewrite) = &report.rewrite {
            crate::eval_rewrite::print_table(rewrite);
        }
    }
    Ok(())
}

fn print_table(report: &Report) {
    println!(
        "{}: {} queries ({:?} split; {} skipped: no gold at this level), gold = {:?}, {} documents, {} chunks",
        report.dataset,
        report.queries,
        report.split,
        report.skipped,
        report.level,
        report.documents,
        report.chunks
    );
    println!(
        "encoder {}{}",
        report.encoder,
        report
            .reranker
            .as_ref()
            .map(|r| format!(", reranker {r}"))
            .unwrap_or_default()
    );
    let width = report
        .rows
        .iter()
        .map(|r| r.config.len())
        .max()
        .unwrap_or(0)
        .max(13);
    println!(
        "{:<width$}  {:>6} {:>6} {:>6} {:>7} {:>8} {:>9}",
        "configuration", "R@1", "R@5", "R@10", "MRR@10", "nDCG@10", "ms/query"
    );
    for row in &report.rows {
        let s = &row.scores;
        println!(
            "{:<width$}  {:>6.3} {:>6.3} {:>6.3} {:>7.3} {:>8.3} {:>9.2}{}",
            row.config,
            s.recall_1,
            s.recall_5,
            s.recall_10,
            s.mrr_10,
            s.ndcg_10,
            row.ms_per_query,
            if row.rerank_incomplete > 0 {
                format!("  ({} reranks incomplete)", row.rerank_incomplete)
            } else {
                String::new()
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gold<'a>(ids: &[&'a str]) -> HashSet<&'a str> {
        ids.iter().copied().collect()
    }

    #[test]
    fn dedup_keeps_the_best_rank() {
        assert_eq!(dedup_ranked(["a", "b", "a", "c", "b"]), vec!["a", "b", "c"]);
    }

    #[test]
    fn single_gold_metrics_are_hand_checked() {
        // Gold at rank 3.
        let ranked = ["x", "y", "g", "z"];
        let g = gold(&["g"]);
        assert_eq!(recall_at(&ranked, &g, 1), 0.0);
        assert_eq!(recall_at(&ranked, &g, 5), 1.0);
        assert!((reciprocal_rank_at(&ranked, &g, 10) - 1.0 / 3.0).abs() < 1e-12);
        // DCG = 1/log2(4) = 0.5; IDCG = 1/log2(2) = 1.
        assert!((ndcg_at(&ranked, &g, 10) - 0.5).abs() < 1e-12);
        // Outside the cut-off: nothing.
        assert_eq!(reciprocal_rank_at(&ranked, &g, 2), 0.0);
        assert_eq!(ndcg_at(&ranked, &g, 2), 0.0);
    }

    #[test]
    fn several_gold_ids() {
        // Gold a (rank 1) and b (rank 4); c never retrieved.
        let ranked = ["a", "x", "y", "b"];
        let g = gold(&["a", "b", "c"]);
        assert!((recall_at(&ranked, &g, 1) - 1.0 / 3.0).abs() < 1e-12);
        assert!((recall_at(&ranked, &g, 5) - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(reciprocal_rank_at(&ranked, &g, 10), 1.0);
        // DCG = 1 + 1/log2(5); IDCG = 1 + 1/log2(3) + 1/log2(4).
        let dcg = 1.0 + 1.0 / 5f64.log2();
        let idcg = 1.0 + 1.0 / 3f64.log2() + 0.5;
        assert!((ndcg_at(&ranked, &g, 10) - dcg / idcg).abs() < 1e-12);
    }

    #[test]
    fn means_and_empty_inputs() {
        let empty: [&str; 0] = [];
        assert_eq!(Scores::of(&empty, &gold(&["a"])), Scores::default());
        assert_eq!(ndcg_at(&["a"], &gold(&[]), 10), 0.0);
        let a = Scores::of(&["g"], &gold(&["g"]));
        let b = Scores::of(&["x", "g"], &gold(&["g"]));
        let m = Scores::mean(&[a, b]);
        assert_eq!(m.recall_1, 0.5);
        assert_eq!(m.recall_5, 1.0);
        assert!((m.mrr_10 - 0.75).abs() < 1e-12);
        assert_eq!(Scores::mean(&[]), Scores::default());
    }

    #[test]
    fn golden_lines_are_validated() {
        let ok = parse_golden(
            "{\"query\": \"refund?\", \"gold_docs\": [\"p/r.md\"]}\n\n{\"id\": \"q2\", \"query\": \"x\", \"gold_sections\": [\"p/r.md#a\"]}\n",
            "t",
        )
        .unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[1].gold(Level::Section), ["p/r.md#a".to_string()]);
        let err = parse_golden("{\"query\": \"x\"}", "g.jsonl").unwrap_err();
        assert!(err.to_string().contains("g.jsonl:1"), "{err}");
        assert!(parse_golden("", "e").is_err());
    }
}
