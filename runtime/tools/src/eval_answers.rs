//! `eval --answers`: what the customer reads, measured in stages (seed section 11).
//!
//! The manifests' KnowledgeBase is indexed (reusing unchanged sources) and served in-process by
//! the same [`Engine`] and answer path `serve` runs, configured from the manifests' Router (or
//! a default one). Each golden query then goes through:
//!
//! - **retrieval**: whether the prompt passages, the top passage and the evidence sentences given
//!   to the model hold a key fact, and whether a gold document is among the passages;
//! - **gold context** (answerable queries): the gold sections injected as the top passages,
//!   the rest of the pipeline unchanged — the generator's ceiling when retrieval is right;
//! - **full pipeline**: `POST /v1/answer` as served.
//!
//! Answer metrics per stage: key-fact accuracy (every key fact, any alternative, in the answer),
//! stale-fact rate, citation precision and recall against the gold documents, invalid-citation
//! rate (numbers the model cited that named no fact; they are removed before serving, so the
//! served rate is 0 by construction and this counts the model's), prompt echo rate, correct- and
//! false-refusal rates, answer length, latency p50/p95 and the share of each answer path.
//!
//! `--fit-evidence` first fits the evidence model (`switchboard_policy::grounding`) and the
//! answerability threshold on the `train` half of the golden set, then evaluates with them;
//! `--baseline` compares with an earlier `--json` report.
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use switchboard_index::{Passage, StageScores};
use switchboard_policy::grounding::{EvidenceFeatures, EvidenceModel};

use crate::eval::{GoldenQuery, Split};
use switchboard_serving::answer::{
    AnswerRequest, AnswerResponse, gather_evidence, prompt_passages,
};
use switchboard_serving::engine::{Engine, EngineOptions};
use switchboard_serving::kb;
use switchboard_serving::metrics::Metrics;
use switchboard_serving::serve::{KbArgs, build_and_publish};

/// Arguments of `eval --answers`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AnswerArgs {
    /// Measure answers (retrieval, gold-context and full-pipeline stages) instead of retrieval
    /// rankings. `--manifests` may hold a Router (its settings are used) besides the
    /// KnowledgeBase; the golden set needs `key_facts` on answerable queries.
    #[arg(long)]
    pub answers: bool,
    /// Skip the gold-context stage (halves the run time).
    #[arg(long, requires = "answers")]
    pub no_gold_context: bool,
    /// Print every query's answer and verdict.
    #[arg(long, requires = "answers")]
    pub per_query: bool,
    /// An earlier `eval --answers --json` report: print the change of every metric and the
    /// queries whose verdict changed.
    #[arg(long, requires = "answers")]
    pub baseline: Option<PathBuf>,
    /// Fit the evidence model and the answerability threshold on the `train` half first, then
    /// evaluate with them (prints the fitted weights).
    #[arg(long, requires = "answers")]
    pub fit_evidence: bool,
    /// Override the Router's `generation.grounding.minEvidenceScore`.
    #[arg(long, requires = "answers")]
    pub min_evidence_score: Option<f64>,
    /// Override the Router's `generation.grounding.mode` (`generative` or `extractive`).
    #[arg(long, requires = "answers", value_parser = parse_mode)]
    pub mode: Option<switchboard_crds::router::GroundingMode>,
    /// Override the Router's `generation.maxNewTokens`.
    #[arg(long, requires = "answers")]
    pub max_new_tokens: Option<i32>,
    /// Ask a running runtime instead (`http://host:8080`): the full-pipeline stage over its
    /// `POST /v1/answer`, as a helpdesk would — any version, local or in a cluster. The other
    /// stages need the pipeline in-process and are skipped.
    #[arg(long, requires = "answers", conflicts_with_all = ["runtime_config", "fit_evidence"])]
    pub endpoint: Option<String>,
    /// Operator mode (the AdapterPatch evaluation Job): answer the golden set with this
    /// compiled RuntimeConfig (the stable version) instead of `--manifests`; index generations
    /// from `--index-data/<kb>/`, as a runtime pod serves them.
    #[arg(long, requires = "answers", conflicts_with = "manifests")]
    pub runtime_config: Option<PathBuf>,
    /// Operator mode: the candidate's RuntimeConfig; the golden set is answered with both and
    /// compared against `--limits`.
    #[arg(long, requires = "runtime_config")]
    pub candidate_config: Option<PathBuf>,
    /// The AdapterPatch's `spec.evaluation` (JSON): the limits of the comparison.
    #[arg(long, requires = "candidate_config")]
    pub limits: Option<PathBuf>,
    /// Write the verdict (compact JSON, under 4 KiB: a pod's termination message) here.
    #[arg(long, requires = "candidate_config")]
    pub report_file: Option<PathBuf>,
    /// Operator mode: mounted Secrets (`<secrets>/<name>/<key>`).
    #[arg(long, default_value = "/etc/switchboard/secrets")]
    pub secrets: PathBuf,
    /// Where `pvc://<claim>/<path>` artifacts are mounted (default: `/var/run/switchboard/pvc`
    /// in operator mode, the manifests' folder otherwise).
    #[arg(long)]
    pub pvc_root: Option<PathBuf>,
    /// Content-addressed adapter artifact cache.
    #[arg(long, default_value = ".cache/switchboard/artifacts")]
    pub artifacts: PathBuf,
    /// Internal address blocks adapter artifacts may be downloaded from (as `serve`).
    #[arg(long, env = "SWITCHBOARD_EGRESS_ALLOW", default_value = "", value_parser = switchboard_serving::serve::parse_egress)]
    pub egress_allow: switchboard_artifact::egress::EgressPolicy,
    /// Leave the manifests' AdapterPatches out (the base model alone): the "before" of an
    /// adapter, compared with `--baseline`.
    #[arg(long, requires = "answers")]
    pub without_adapters: bool,
    /// Index generations of the evaluated KnowledgeBase (unchanged sources are reused).
    #[arg(long, default_value = ".cache/switchboard/eval-index")]
    pub index_data: PathBuf,
    /// Folder searched for the model files the Router names.
    #[arg(long, default_value = ".cache/models")]
    pub models: PathBuf,
    /// Only the first N queries of the split (a quick look).
    #[arg(long)]
    pub limit: Option<usize>,
    /// For every failed query, print its evidence candidates with their features and scores
    /// (`*` marks a sentence stating a key fact): what to look at when tuning the evidence model.
    #[arg(long, requires = "answers")]
    pub explain: bool,
    /// Write every query's evidence candidates as JSONL (text, features, several cosines, term
    /// IDFs, key-fact label) for offline analysis of the evidence model, then stop.
    #[arg(long, requires = "answers")]
    pub dump_evidence: Option<PathBuf>,
    /// Keep the answered interactions in this outcome store (`sqlite://path`, `postgres://...`)
    /// instead of a temporary one, and report each full-pipeline answer's verdict as its
    /// outcome through the feedback path, as a helpdesk would: `resolved` when right (the key
    /// facts; a refusal of an unanswerable question), `escalated` when not. `export` then
    /// gives labelled records with their routing decisions: `router fit`'s data.
    #[arg(long, requires = "answers", conflicts_with_all = ["endpoint", "runtime_config"])]
    pub outcome_store: Option<String>,
    /// With `--dump-evidence`: also score every candidate with this evidence scorer
    /// (`train-evidence` output), as column `scorer`.
    #[arg(long, requires = "dump_evidence")]
    pub evidence_scorer: Option<PathBuf>,
}

fn parse_mode(s: &str) -> Result<switchboard_crds::router::GroundingMode, String> {
    use switchboard_crds::router::GroundingMode;
    match s.to_ascii_lowercase().as_str() {
        "generative" => Ok(GroundingMode::Generative),
        "extractive" => Ok(GroundingMode::Extractive),
        _ => Err(format!("`{s}` is not generative or extractive")),
    }
}

pub use switchboard_policy::text::{has_any, has_key_facts, normalise};

/// Whether the answer repeats the prompt's scaffolding: a passage breadcrumb, a bracketed
/// `[A > B]` path, or the prompt's labels.
pub fn echoes_prompt(answer: &str, breadcrumbs: &[String]) -> bool {
    let lower = answer.to_lowercase();
    ["passages:", "facts:", "question:", "passage:"]
        .iter()
        .any(|l| lower.contains(l))
        || breadcrumbs
            .iter()
            .filter(|b| b.len() > 2)
            .any(|b| lower.contains(&b.to_lowercase()))
        || answer.split('[').skip(1).any(|rest| {
            rest.split_once(']')
                .is_some_and(|(inner, _)| inner.contains(" > "))
        })
}

/// One query's verdict at one stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryVerdict {
    /// Golden id (or the 1-based line).
    pub id: String,
    /// The query.
    pub query: String,
    /// Answerable per the golden set.
    pub answerable: bool,
    /// The answer served.
    pub answer: String,
    /// `generative`, `extractive` or `refusal`.
    pub path: String,
    /// Refused.
    pub refused: bool,
    /// Every key fact is in the answer (answerable queries).
    pub key_fact: bool,
    /// An outdated fact is in the answer.
    pub stale: bool,
    /// Cited documents.
    pub cited: Vec<String>,
    /// Cited documents that are gold.
    pub cited_gold: usize,
    /// Numbers the model cited that named no fact.
    pub invalid_citations: usize,
    /// The answer repeats the prompt's scaffolding.
    pub echo: bool,
    /// Words in the answer.
    pub words: usize,
    /// Wall time, milliseconds.
    pub ms: f64,
    /// Best evidence score.
    pub evidence_score: f64,
}

/// Averages of one stage.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageSummary {
    /// Stage name.
    pub stage: String,
    /// Answerable queries.
    pub answerable: usize,
    /// Unanswerable queries.
    pub unanswerable: usize,
    /// Share of answerable queries whose answer holds every key fact.
    pub key_fact_accuracy: f64,
    /// Share of answers stating an outdated fact.
    pub stale_rate: f64,
    /// Share of cited documents that are gold (answers with citations, answerable queries).
    pub citation_precision: f64,
    /// Share of answered answerable queries citing at least one gold document.
    pub citation_recall: f64,
    /// Share of answers whose model output cited a number that named no fact (removed before
    /// serving).
    pub invalid_citation_rate: f64,
    /// Share of answers repeating the prompt's scaffolding.
    pub echo_rate: f64,
    /// Share of unanswerable queries refused.
    pub correct_refusal: f64,
    /// Share of answerable queries refused.
    pub false_refusal: f64,
    /// Mean words per answer (answered queries).
    pub mean_words: f64,
    /// Latency percentiles, milliseconds.
    pub p50_ms: f64,
    /// 95th percentile latency, milliseconds.
    pub p95_ms: f64,
    /// Answers by path.
    pub paths: BTreeMap<String, usize>,
}

/// Retrieval-stage shares (answerable queries).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetrievalSummary {
    /// Answerable queries.
    pub answerable: usize,
    /// A gold document is among the prompt passages.
    pub gold_in_passages: f64,
    /// A key fact is in the prompt passages.
    pub fact_in_passages: f64,
    /// A key fact is in the top passage.
    pub fact_in_top_passage: f64,
    /// A key fact is in the evidence sentences given to the model.
    pub fact_in_evidence: f64,
    /// A key fact is in the best evidence sentence.
    pub fact_in_best_evidence: f64,
}

/// The answer evaluation's report (`--json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnswerReport {
    /// The golden set.
    pub dataset: String,
    /// Which half.
    pub split: String,
    /// Config: model, adapter, thresholds.
    pub config: BTreeMap<String, String>,
    /// Retrieval stage.
    pub retrieval: RetrievalSummary,
    /// Gold-context and full-pipeline stages.
    pub stages: Vec<StageSummary>,
    /// The fitted evidence model, with `--fit-evidence`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fitted: Option<Fitted>,
    /// Per query and stage.
    pub queries: BTreeMap<String, Vec<QueryVerdict>>,
    /// Refusal precision/recall over thresholds of the best evidence score (full pipeline's
    /// retrieval).
    pub refusal_curve: Vec<RefusalPoint>,
}

/// The fitted evidence model and threshold.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fitted {
    /// The model.
    pub model: EvidenceModel,
    /// The answerability threshold chosen on the train half.
    pub threshold: f64,
    /// Labelled (query, sentence) pairs it was fitted on.
    pub pairs: usize,
    /// Of which positive.
    pub positives: usize,
}

/// One point of the refusal curve: refuse when the best evidence scores below `threshold`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefusalPoint {
    /// The threshold.
    pub threshold: f64,
    /// Share of refusals that are of unanswerable queries.
    pub precision: f64,
    /// Share of unanswerable queries refused.
    pub recall: f64,
    /// Share of answerable queries refused.
    pub false_refusal: f64,
}

/// `pct` percentile (nearest rank) of `values`.
fn percentile(values: &[f64], pct: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((pct / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn share(n: usize, of: usize) -> f64 {
    if of == 0 { 0.0 } else { n as f64 / of as f64 }
}

/// Averages of verdicts.
pub fn summarise(stage: &str, verdicts: &[QueryVerdict]) -> StageSummary {
    let answerable: Vec<&QueryVerdict> = verdicts.iter().filter(|v| v.answerable).collect();
    let unanswerable: Vec<&QueryVerdict> = verdicts.iter().filter(|v| !v.answerable).collect();
    let answered: Vec<&QueryVerdict> = verdicts.iter().filter(|v| !v.refused).collect();
    let answered_answerable: Vec<&&QueryVerdict> =
        answerable.iter().filter(|v| !v.refused).collect();
    let with_citations: Vec<&&&QueryVerdict> = answered_answerable
        .iter()
        .filter(|v| !v.cited.is_empty())
        .collect();
    let mut paths = BTreeMap::new();
    for v in verdicts {
        *paths.entry(v.path.clone()).or_default() += 1;
    }
    let ms: Vec<f64> = verdicts.iter().map(|v| v.ms).collect();
    StageSummary {
        stage: stage.to_owned(),
        answerable: answerable.len(),
        unanswerable: unanswerable.len(),
        key_fact_accuracy: share(
            answerable.iter().filter(|v| v.key_fact).count(),
            answerable.len(),
        ),
        stale_rate: share(verdicts.iter().filter(|v| v.stale).count(), verdicts.len()),
        citation_precision: if with_citations.is_empty() {
            0.0
        } else {
            with_citations
                .iter()
                .map(|v| share(v.cited_gold, v.cited.len()))
                .sum::<f64>()
                / with_citations.len() as f64
        },
        citation_recall: share(
            answered_answerable
                .iter()
                .filter(|v| v.cited_gold > 0)
                .count(),
            answered_answerable.len(),
        ),
        invalid_citation_rate: share(
            verdicts.iter().filter(|v| v.invalid_citations > 0).count(),
            verdicts.len(),
        ),
        echo_rate: share(verdicts.iter().filter(|v| v.echo).count(), verdicts.len()),
        correct_refusal: share(
            unanswerable.iter().filter(|v| v.refused).count(),
            unanswerable.len(),
        ),
        false_refusal: share(
            answerable.iter().filter(|v| v.refused).count(),
            answerable.len(),
        ),
        mean_words: if answered.is_empty() {
            0.0
        } else {
            answered.iter().map(|v| v.words as f64).sum::<f64>() / answered.len() as f64
        },
        p50_ms: percentile(&ms, 50.0),
        p95_ms: percentile(&ms, 95.0),
        paths,
    }
}

/// The refusal curve over `points`: (best evidence score, answerable) per query.
pub fn refusal_curve(points: &[(f64, bool)]) -> Vec<RefusalPoint> {
    let unanswerable = points.iter().filter(|(_, a)| !a).count();
    let answerable = points.len() - unanswerable;
    (1..20)
        .map(|i| {
            let threshold = f64::from(i) * 0.05;
            let refused: Vec<&(f64, bool)> =
                points.iter().filter(|(s, _)| *s < threshold).collect();
            let right = refused.iter().filter(|(_, a)| !a).count();
            RefusalPoint {
                threshold,
                precision: if refused.is_empty() {
                    1.0
                } else {
                    share(right, refused.len())
                },
                recall: share(right, unanswerable),
                false_refusal: share(refused.len() - right, answerable),
            }
        })
        .collect()
}

/// The threshold a support team would pick from `points`: the one refusing the most
/// unanswerable queries while refusing at most 5% of answerable ones (ties: the lower
/// threshold); when none keeps false refusals that low, the one maximising correct minus false
/// refusals.
pub fn choose_threshold(points: &[(f64, bool)]) -> f64 {
    let mut candidates: Vec<f64> = points.iter().map(|(s, _)| *s).collect();
    candidates.push(0.0);
    candidates.sort_by(f64::total_cmp);
    candidates.dedup();
    let unanswerable = points.iter().filter(|(_, a)| !a).count().max(1) as f64;
    let answerable = points.iter().filter(|(_, a)| *a).count().max(1) as f64;
    let rates = |t: f64| {
        let correct = points.iter().filter(|(s, a)| !a && *s < t).count() as f64;
        let wrong = points.iter().filter(|(s, a)| *a && *s < t).count() as f64;
        (correct / unanswerable, wrong / answerable)
    };
    // Thresholds between observed scores: just above a score refuses it.
    let thresholds: Vec<f64> = candidates
        .windows(2)
        .map(|w| (w[0] + w[1]) / 2.0)
        .chain(std::iter::once(0.0))
        .collect();
    let within: Option<f64> = thresholds
        .iter()
        .copied()
        .filter(|t| rates(*t).1 <= 0.05)
        .max_by(|a, b| rates(*a).0.total_cmp(&rates(*b).0).then(b.total_cmp(a)));
    within.unwrap_or_else(|| {
        thresholds
            .iter()
            .copied()
            .max_by(|a, b| {
                let (ca, wa) = rates(*a);
                let (cb, wb) = rates(*b);
                (ca - wa).total_cmp(&(cb - wb)).then(b.total_cmp(a))
            })
            .unwrap_or(0.5)
    })
}

/// The in-process engine over the manifests' KnowledgeBase and Router.
pub struct Harness {
    /// The engine serving the manifests' Router.
    pub engine: Arc<Engine>,
    _store_dir: tempdir::TempDir,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness").finish_non_exhaustive()
    }
}

mod tempdir {
    /// A directory removed on drop.
    pub struct TempDir(pub std::path::PathBuf);

    impl TempDir {
        pub fn new(prefix: &str) -> std::io::Result<Self> {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let dir =
                std::env::temp_dir().join(format!("{prefix}-{}-{nanos:x}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            Ok(Self(dir))
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Indexes the manifests' KnowledgeBase (reusing unchanged sources) and applies the
/// RuntimeConfig of the Router that references it, as the embedded default serves it.
pub async fn harness(
    manifests: &Path,
    knowledge_base: Option<&str>,
    encoder: Option<PathBuf>,
    args: &AnswerArgs,
) -> Result<(Harness, switchboard_index::IndexSpec)> {
    let kb_args = KbArgs {
        manifests: manifests.to_path_buf(),
        knowledge_base: knowledge_base.map(str::to_owned),
        data: args.index_data.clone(),
        encoder,
    };
    let loaded = tokio::task::spawn_blocking(move || -> Result<_> {
        let loaded = kb_args.load()?;
        let spec = kb::index_spec(&loaded.kb, &loaded.base)?;
        build_and_publish(&loaded, &spec, true, 2)?;
        Ok((loaded, spec))
    })
    .await??;
    let (loaded, spec) = loaded;
    let kb_name = kb::name(&loaded.kb).to_owned();
    let mut router = kb::load_routers(manifests)?
        .into_iter()
        .find(|r| r.spec.knowledge_base_ref.name == kb_name)
        .with_context(|| {
            format!(
                "no Router in {} references KnowledgeBase {kb_name}: --answers evaluates a Router's answers (examples/scenario.yaml has one)",
                manifests.display()
            )
        })?;
    let g = &mut router.spec.generation;
    if let Some(t) = args.min_evidence_score {
        g.grounding.min_evidence_score = t;
    }
    if let Some(m) = args.mode {
        g.grounding.mode = m;
    }
    if let Some(n) = args.max_new_tokens {
        g.max_new_tokens = n;
    }
    let store_dir = tempdir::TempDir::new("switchboard-eval-answers")?;
    let store = switchboard_store::OutcomeStore::connect(
        &args
            .outcome_store
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", store_dir.0.join("outcomes.db").display())),
    )
    .await?;
    let options = EngineOptions {
        data: args.index_data.clone(),
        models: args.models.clone(),
        encoder: Some(loaded.encoder_path.clone()),
        reranker: None,
        secrets: store_dir.0.join("secrets"),
        pvc_root: loaded.base.clone(),
        artifacts: PathBuf::from(".cache/switchboard/artifacts"),
        token_ttl: std::time::Duration::from_secs(3600),
        lenient_large_model: true,
        egress: args.egress_allow.clone(),
        retrieval_admission: Default::default(),
        unit_key: Arc::from(&b"evaluation"[..]),
        generation: switchboard_model::generator_worker::WorkerOptions::new(
            switchboard_model::default_device(),
        )
        .weights(switchboard_model::llama::WeightFormat::Int4),
    };
    let engine = Arc::new(Engine::new(
        options,
        Arc::new(Metrics::new()?),
        switchboard_policy::TokenKeys::random().context("reading /dev/urandom")?,
        store,
    )?);
    engine
        .seed_encoder(loaded.encoder_path.clone(), Arc::clone(&loaded.embedder))
        .await;
    let current = loaded
        .store
        .current()?
        .context("no index generation published")?;
    let n = kb::generation_number(&current).context("generation id")?;
    let adapters = if args.without_adapters {
        Vec::new()
    } else {
        kb::local_adapters(&kb::load_adapter_patches(manifests)?, &loaded.base)
    };
    let config = kb::local_runtime_config(&router, &loaded.kb, n, None, &adapters)?;
    engine
        .apply(config)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((
        Harness {
            engine,
            _store_dir: store_dir,
        },
        spec,
    ))
}

/// Every gold id of `golden` names a document or section of the generation; otherwise an error
/// listing each unknown id with its query (a typo must not read as a miss).
pub fn check_gold_ids(
    golden: &[GoldenQuery],
    generation: &switchboard_index::Generation,
) -> Result<()> {
    let docs: HashSet<&str> = generation
        .chunks()
        .iter()
        .map(|c| c.doc_id.as_str())
        .collect();
    let mut unknown = Vec::new();
    for (i, q) in golden.iter().enumerate() {
        let id = q.id.clone().unwrap_or_else(|| format!("line {}", i + 1));
        for d in &q.gold_docs {
            if !docs.contains(d.as_str()) {
                unknown.push(format!("{id}: gold_docs {d:?}"));
            }
        }
        for s in &q.gold_sections {
            if generation.section(s).is_none() {
                unknown.push(format!("{id}: gold_sections {s:?}"));
            }
        }
    }
    if !unknown.is_empty() {
        bail!(
            "{} gold id(s) name nothing in the index:\n  {}",
            unknown.len(),
            unknown.join("\n  ")
        );
    }
    Ok(())
}

/// The gold passages of `q`: the first chunk of each gold section, else the chunk of each gold
/// document that holds a key fact (or its first chunk).
fn gold_passages(q: &GoldenQuery, generation: &switchboard_index::Generation) -> Vec<Passage> {
    let chunks = generation.chunks();
    let mut picked: Vec<&switchboard_index::Chunk> = Vec::new();
    for s in &q.gold_sections {
        if let Some(c) = chunks.iter().find(|c| &c.section_id == s) {
            picked.push(c);
        }
    }
    if picked.is_empty() {
        for d in &q.gold_docs {
            let of_doc: Vec<&switchboard_index::Chunk> =
                chunks.iter().filter(|c| &c.doc_id == d).collect();
            let with_fact = of_doc.iter().find(|c| {
                let section = generation
                    .section(&c.section_id)
                    .map_or(c.text.as_str(), |s| s.text.as_str());
                has_key_facts(section, &q.key_facts)
            });
            if let Some(c) = with_fact.or(of_doc.first()) {
                picked.push(c);
            }
        }
    }
    picked
        .into_iter()
        .map(|chunk| Passage {
            chunk_id: chunk.chunk_id.clone(),
            doc_id: chunk.doc_id.clone(),
            section_id: chunk.section_id.clone(),
            source: chunk.source.clone(),
            title: chunk.title.clone(),
            breadcrumb: chunk.breadcrumb(),
            text: chunk.text.clone(),
            section_text: generation
                .section(&chunk.section_id)
                .map_or_else(|| chunk.text.clone(), |s| s.text.clone()),
            last_modified: chunk.last_modified,
            freshness_class: chunk.freshness_class.clone(),
            scores: StageScores {
                final_score: 1.0,
                ..StageScores::default()
            },
        })
        .collect()
}

fn verdict(q: &GoldenQuery, id: &str, a: &AnswerResponse, ms: f64) -> QueryVerdict {
    verdict_of_answer(
        q,
        id,
        &Answered {
            answer: a.answer.clone(),
            citations: a
                .citations
                .iter()
                .map(|c| CitedDocument {
                    document_id: c.document_id.clone(),
                })
                .collect(),
            invalid_citations: a.invalid_citations.clone(),
            refused: a.refused,
            path: a.path.clone(),
            passages: a
                .passages
                .iter()
                .map(|p| AnsweredPassage {
                    breadcrumb: p.breadcrumb.clone(),
                })
                .collect(),
            evidence: a
                .evidence
                .iter()
                .map(|e| AnsweredEvidence { score: e.score })
                .collect(),
        },
        ms,
    )
}

/// The fields of an answer the evaluation reads: [`AnswerResponse`] in-process, or the JSON of
/// any runtime's `POST /v1/answer` (older versions have no `path` or `evidence`).
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Answered {
    answer: String,
    citations: Vec<CitedDocument>,
    invalid_citations: Vec<usize>,
    refused: bool,
    path: String,
    passages: Vec<AnsweredPassage>,
    evidence: Vec<AnsweredEvidence>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct CitedDocument {
    document_id: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct AnsweredPassage {
    breadcrumb: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct AnsweredEvidence {
    score: f64,
}

fn verdict_of_answer(q: &GoldenQuery, id: &str, a: &Answered, ms: f64) -> QueryVerdict {
    let gold: HashSet<&str> = q.gold_docs.iter().map(String::as_str).collect();
    let mut cited: Vec<String> = a.citations.iter().map(|c| c.document_id.clone()).collect();
    cited.dedup();
    let breadcrumbs: Vec<String> = a.passages.iter().map(|p| p.breadcrumb.clone()).collect();
    QueryVerdict {
        id: id.to_owned(),
        query: q.query.clone(),
        answerable: q.is_answerable(),
        answer: a.answer.clone(),
        path: if a.path.is_empty() {
            if a.refused { "refusal" } else { "generative" }.to_owned()
        } else {
            a.path.clone()
        },
        refused: a.refused,
        key_fact: !a.refused && has_key_facts(&a.answer, &q.key_facts),
        stale: !a.refused && has_any(&a.answer, &q.stale_facts),
        cited_gold: cited.iter().filter(|d| gold.contains(d.as_str())).count(),
        cited,
        invalid_citations: a.invalid_citations.len(),
        echo: echoes_prompt(&a.answer, &breadcrumbs),
        words: a.answer.split_whitespace().count(),
        ms,
        evidence_score: a.evidence.first().map_or(0.0, |e| e.score),
    }
}

/// `--endpoint`: the golden set against a running runtime's `POST /v1/answer`.
async fn remote(
    endpoint: &str,
    golden_path: &Path,
    queries: &[(String, &GoldenQuery)],
    json: bool,
    args: &AnswerArgs,
) -> Result<()> {
    let client = switchboard_serving::http_client::HttpClient::new();
    let url = format!("{}/v1/answer", endpoint.trim_end_matches('/'));
    let mut full = Vec::new();
    let mut curve = Vec::new();
    for (id, q) in queries {
        let body = serde_json::to_vec(
            &serde_json::json!({"query": q.query, "userId": format!("eval-{id}")}),
        )?;
        let t = Instant::now();
        let response = client
            .post_json(
                &url,
                None,
                body,
                std::time::Duration::from_secs(300),
                8 << 20,
            )
            .await
            .map_err(|e| anyhow::anyhow!("{id}: POST {url}: {e}"))?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        if response.status != 200 {
            bail!(
                "{id}: POST {url}: HTTP {}: {}",
                response.status,
                String::from_utf8_lossy(&response.body)
            );
        }
        let a: Answered = serde_json::from_slice(&response.body)
            .with_context(|| format!("{id}: the answer of {url} is not JSON"))?;
        let v = verdict_of_answer(q, id, &a, ms);
        curve.push((v.evidence_score, q.is_answerable()));
        full.push(v);
        if !json {
            eprint!(".");
        }
    }
    if !json {
        eprintln!();
    }
    let report = AnswerReport {
        dataset: golden_path.display().to_string(),
        split: "all".into(),
        config: BTreeMap::from([("endpoint".to_owned(), endpoint.to_owned())]),
        retrieval: RetrievalSummary::default(),
        stages: vec![summarise("full pipeline", &full)],
        fitted: None,
        queries: BTreeMap::from([("full pipeline".to_owned(), full)]),
        refusal_curve: refusal_curve(&curve),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report, args.per_query);
        if let Some(path) = &args.baseline {
            print_comparison(&read_report(path)?, &report);
        }
    }
    Ok(())
}

/// Labelled evidence pairs of one query: its retrieved passages' sentences, positive when they
/// state a key fact.
async fn labelled_pairs(
    engine: &Arc<Engine>,
    q: &GoldenQuery,
) -> Result<Vec<(EvidenceFeatures, bool)>> {
    let active = engine.active().context("no config applied")?;
    let passages = prompt_passages(&active, &q.query)
        .await
        .map_err(|e| anyhow::anyhow!("{}: {e}", q.query))?;
    let evidence = gather_evidence(&active, &engine.evidence_model(), &q.query, &passages)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(evidence
        .into_iter()
        .map(|e| {
            let positive = q.is_answerable() && has_key_facts(&e.text, &q.key_facts);
            (e.features, positive)
        })
        .collect())
}

/// Writes the evidence candidates of every query (see [`AnswerArgs::dump_evidence`]).
async fn dump_evidence(
    engine: &Arc<Engine>,
    golden: &[GoldenQuery],
    out: &Path,
    scorer: Option<&Path>,
) -> Result<()> {
    use std::io::Write;
    let active = engine.active().context("no config applied")?;
    let scorer = scorer
        .map(|dir| switchboard_model::CrossEncoder::load(dir, switchboard_model::default_device()))
        .transpose()
        .context("loading the evidence scorer")?;
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?,
    );
    let idf = |text: &str| -> Vec<(String, f64)> {
        switchboard_policy::grounding::terms(text)
            .into_iter()
            .map(|t| {
                let w = active.terms.idf(&t);
                (t, w)
            })
            .collect()
    };
    for (i, q) in golden.iter().enumerate() {
        let passages = prompt_passages(&active, &q.query)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let evidence = gather_evidence(&active, &engine.evidence_model(), &q.query, &passages)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut texts = vec![q.query.clone()];
        for e in &evidence {
            let p = &passages[e.passage];
            texts.push(e.text.clone());
            texts.push(format!("{} {}", p.breadcrumb, e.text));
        }
        let encoder = Arc::clone(&active.encoder);
        let vectors = tokio::task::spawn_blocking(move || {
            switchboard_index::Embedder::embed(encoder.as_ref(), &texts)
        })
        .await??;
        let scored: Vec<f32> = match &scorer {
            Some(s) => {
                let texts: Vec<String> = evidence
                    .iter()
                    .map(|e| {
                        switchboard_serving::answer::scorer_text(
                            &passages[e.passage].breadcrumb,
                            &e.text,
                        )
                    })
                    .collect();
                s.relevance_logits(&q.query, &texts, 32)?
            }
            None => vec![0.0; evidence.len()],
        };
        let cos = |a: &[f32], b: &[f32]| 1.0 - switchboard_policy::cosine_distance(a, b);
        for (j, e) in evidence.iter().enumerate() {
            let p = &passages[e.passage];
            let row = serde_json::json!({
                "query_index": i,
                "id": q.id,
                "query": q.query,
                "answerable": q.is_answerable(),
                "label": q.is_answerable() && has_key_facts(&e.text, &q.key_facts),
                "passage": e.passage,
                "passage_score": p.score,
                "document": p.document_id,
                "gold_doc": q.gold_docs.contains(&p.document_id),
                "breadcrumb": p.breadcrumb,
                "text": e.text,
                "features": e.features,
                "cos_heading": e.features.cosine,
                "scorer": scored[j],
                "cos_alone": cos(&vectors[0], &vectors[1 + 2 * j]),
                "cos_breadcrumb": cos(&vectors[0], &vectors[2 + 2 * j]),
                "query_terms": idf(&q.query),
                "sentence_terms": idf(&e.text),
                "passage_terms": idf(&format!("{} {}", p.breadcrumb, p.raw_text)),
            });
            writeln!(file, "{row}")?;
        }
    }
    file.flush()?;
    Ok(())
}

/// Prints the evidence candidates of a failed query, best first.
async fn explain(engine: &Arc<Engine>, id: &str, q: &GoldenQuery) -> Result<()> {
    let active = engine.active().context("no config applied")?;
    let passages = prompt_passages(&active, &q.query)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut evidence = gather_evidence(&active, &engine.evidence_model(), &q.query, &passages)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    evidence.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut out = format!(
        "\n{id} {:?} (key facts {:?})\n  features: {}\n",
        q.query,
        q.key_facts,
        EvidenceFeatures::NAMES.join(" ")
    );
    for (i, e) in evidence.iter().enumerate() {
        let hit = has_key_facts(&e.text, &q.key_facts);
        if i < 6 || hit {
            let f = e.features.to_array().map(|x| format!("{x:.2}"));
            out.push_str(&format!(
                "  {}{:>2} {:.3} p{} [{}] {}\n",
                if hit { "*" } else { " " },
                i + 1,
                e.score,
                e.passage + 1,
                f.join(" "),
                e.text.chars().take(110).collect::<String>()
            ));
        }
    }
    eprint!("{out}");
    Ok(())
}

/// What one pass over the golden set measured.
#[derive(Debug)]
pub struct Evaluated {
    /// Retrieval stage.
    pub retrieval: RetrievalSummary,
    /// Gold-context (when run) and full-pipeline stages.
    pub stages: Vec<StageSummary>,
    /// Per stage, per query.
    pub queries: BTreeMap<String, Vec<QueryVerdict>>,
    /// Refusal over thresholds of the best evidence score.
    pub refusal_curve: Vec<RefusalPoint>,
}

/// Answers `queries` with the engine's config in force: the full pipeline, and with
/// `gold_context` the answerable ones again on their gold sections.
async fn evaluate(
    engine: &Arc<Engine>,
    queries: &[(String, &GoldenQuery)],
    generation: &switchboard_index::Generation,
    gold_context: bool,
    explain_failures: bool,
    progress: bool,
    report_outcomes: bool,
) -> Result<Evaluated> {
    let mut retrieval = RetrievalSummary::default();
    let (mut gold_in, mut fact_in, mut fact_top, mut fact_ev, mut fact_best) = (0, 0, 0, 0, 0);
    let mut full = Vec::new();
    let mut gold = Vec::new();
    let mut curve_points = Vec::new();
    for (id, q) in queries {
        let t = Instant::now();
        let a = switchboard_serving::answer::answer(
            engine,
            AnswerRequest {
                query: q.query.clone(),
                user_id: Some(format!("eval-{id}")),
                ..AnswerRequest::default()
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{id}: {e}"))?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let v = verdict(q, id, &a, ms);
        let failed = if q.is_answerable() {
            !v.key_fact
        } else {
            !v.refused
        };
        if explain_failures && failed {
            explain(engine, id, q).await?;
        }
        if report_outcomes {
            switchboard_serving::answer::feedback(
                engine,
                &switchboard_serving::answer::FeedbackRequest {
                    token: a.interaction_token.clone(),
                    outcome: if failed { "escalated" } else { "resolved" }.to_owned(),
                    csat: None,
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("{id}: reporting the outcome: {e}"))?;
        }
        curve_points.push((v.evidence_score, q.is_answerable()));
        if q.is_answerable() {
            retrieval.answerable += 1;
            let gold_docs: HashSet<&str> = q.gold_docs.iter().map(String::as_str).collect();
            gold_in += usize::from(
                a.passages
                    .iter()
                    .any(|p| gold_docs.contains(p.document_id.as_str())),
            );
            fact_in += usize::from(a.passages.iter().any(|p| {
                has_key_facts(&p.raw_text, &q.key_facts) || has_key_facts(&p.text, &q.key_facts)
            }));
            fact_top += usize::from(a.passages.first().is_some_and(|p| {
                has_key_facts(&p.raw_text, &q.key_facts) || has_key_facts(&p.text, &q.key_facts)
            }));
            fact_ev += usize::from(
                a.evidence
                    .iter()
                    .any(|e| has_key_facts(&e.text, &q.key_facts)),
            );
            fact_best += usize::from(
                a.evidence
                    .first()
                    .is_some_and(|e| has_key_facts(&e.text, &q.key_facts)),
            );
        }
        if progress {
            eprint!(".");
        }
        full.push(v);
        if q.is_answerable() && gold_context {
            let t = Instant::now();
            let a = switchboard_serving::answer::answer(
                engine,
                AnswerRequest {
                    query: q.query.clone(),
                    user_id: Some(format!("eval-{id}")),
                    passages: Some(gold_passages(q, generation)),
                    ..AnswerRequest::default()
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("{id} (gold context): {e}"))?;
            gold.push(verdict(q, id, &a, t.elapsed().as_secs_f64() * 1e3));
        }
    }
    if progress {
        eprintln!();
    }
    let n = retrieval.answerable;
    retrieval.gold_in_passages = share(gold_in, n);
    retrieval.fact_in_passages = share(fact_in, n);
    retrieval.fact_in_top_passage = share(fact_top, n);
    retrieval.fact_in_evidence = share(fact_ev, n);
    retrieval.fact_in_best_evidence = share(fact_best, n);

    let mut stages = Vec::new();
    let mut per_query = BTreeMap::new();
    if !gold.is_empty() {
        stages.push(summarise("gold context", &gold));
        per_query.insert("gold context".to_owned(), gold);
    }
    stages.push(summarise("full pipeline", &full));
    per_query.insert("full pipeline".to_owned(), full);
    Ok(Evaluated {
        retrieval,
        stages,
        queries: per_query,
        refusal_curve: refusal_curve(&curve_points),
    })
}

/// `eval --answers`.
pub fn run(
    data: &crate::eval::DatasetArgs,
    split: Split,
    json: bool,
    args: &AnswerArgs,
) -> Result<()> {
    let Some(golden_path) = &data.golden else {
        bail!("--answers needs --golden");
    };
    let text = std::fs::read_to_string(golden_path)
        .with_context(|| format!("reading {}", golden_path.display()))?;
    let golden = crate::eval::parse_golden(&text, &golden_path.display().to_string())?;
    for (i, q) in golden.iter().enumerate() {
        if q.is_answerable() && q.key_facts.is_empty() {
            bail!(
                "{}:{}: answerable query {:?} has no key_facts (needed by --answers)",
                golden_path.display(),
                i + 1,
                q.query
            );
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let Some(config) = &args.runtime_config {
        return rt.block_on(gate(config, &golden, args));
    }
    if let Some(endpoint) = &args.endpoint {
        let mut queries: Vec<(String, &GoldenQuery)> = golden
            .iter()
            .enumerate()
            .filter(|(i, _)| split.keeps(*i))
            .map(|(i, q)| (q.id.clone().unwrap_or_else(|| format!("line {}", i + 1)), q))
            .collect();
        if let Some(n) = args.limit {
            queries.truncate(n);
        }
        return rt.block_on(remote(endpoint, golden_path, &queries, json, args));
    }
    let Some(manifests) = &data.manifests else {
        bail!("--answers needs --manifests (or --runtime-config)");
    };
    rt.block_on(async {
        let (h, _) = harness(
            manifests,
            data.knowledge_base.as_deref(),
            data.encoder.clone(),
            args,
        )
        .await?;
        let engine = &h.engine;
        let active = engine.active().context("no config applied")?;
        let generation = Arc::clone(active.retriever.generation());
        check_gold_ids(&golden, &generation)?;
        if let Some(out) = &args.dump_evidence {
            dump_evidence(engine, &golden, out, args.evidence_scorer.as_deref()).await?;
            println!(
                "evidence candidates of {} queries written to {}",
                golden.len(),
                out.display()
            );
            return Ok(());
        }

        let mut config = BTreeMap::new();
        let grounding = &active.config.router_policy.grounding;
        config.insert("router".into(), active.router.clone());
        config.insert("smallModel".into(), active.config.small_model.model.clone());
        config.insert(
            "maxNewTokens".into(),
            active.config.small_model.max_new_tokens.to_string(),
        );
        config.insert("mode".into(), format!("{:?}", grounding.mode));
        config.insert(
            "adapters".into(),
            active
                .adapters
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(","),
        );

        let fitted = if args.fit_evidence {
            let mut pairs = Vec::new();
            let mut best = Vec::new();
            let train: Vec<&GoldenQuery> = golden
                .iter()
                .enumerate()
                .filter(|(i, _)| Split::Train.keeps(*i))
                .map(|(_, q)| q)
                .collect();
            let mut per_query = Vec::new();
            for q in &train {
                let p = labelled_pairs(engine, q).await?;
                per_query.push((
                    q.is_answerable(),
                    p.iter().map(|(f, _)| *f).collect::<Vec<_>>(),
                ));
                pairs.extend(p);
            }
            let model = EvidenceModel::fit(&pairs, 1e-3, 4000);
            for (answerable, features) in &per_query {
                let s = features.iter().map(|f| model.score(f)).fold(0.0, f64::max);
                best.push((s, *answerable));
            }
            let threshold = choose_threshold(&best);
            engine.set_evidence_model(model.clone());
            let positives = pairs.iter().filter(|(_, y)| *y).count();
            Some(Fitted {
                model,
                threshold,
                pairs: pairs.len(),
                positives,
            })
        } else {
            None
        };
        let threshold = match (&fitted, args.min_evidence_score) {
            (Some(f), None) => {
                // Evaluate with the fitted threshold.
                let mut c = active.config.clone();
                c.router_policy.grounding.min_evidence_score = f.threshold;
                c.revision = format!("sha256:{:064x}", 1);
                engine.apply(c).await.map_err(|e| anyhow::anyhow!("{e}"))?;
                f.threshold
            }
            _ => grounding.min_evidence_score,
        };
        config.insert("minEvidenceScore".into(), format!("{threshold:.3}"));

        let mut queries: Vec<(String, &GoldenQuery)> = golden
            .iter()
            .enumerate()
            .filter(|(i, _)| split.keeps(*i))
            .map(|(i, q)| (q.id.clone().unwrap_or_else(|| format!("line {}", i + 1)), q))
            .collect();
        if let Some(n) = args.limit {
            queries.truncate(n);
        }

        let evaluated = evaluate(
            engine,
            &queries,
            &generation,
            !args.no_gold_context,
            args.explain,
            !json,
            args.outcome_store.is_some(),
        )
        .await?;
        let report = AnswerReport {
            dataset: golden_path.display().to_string(),
            split: format!("{split:?}").to_lowercase(),
            config,
            retrieval: evaluated.retrieval,
            stages: evaluated.stages,
            fitted,
            queries: evaluated.queries,
            refusal_curve: evaluated.refusal_curve,
        };
        let baseline = match &args.baseline {
            Some(path) => Some(read_report(path)?),
            None => None,
        };
        if json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print_report(&report, args.per_query);
            if let Some(b) = &baseline {
                print_comparison(b, &report);
            }
        }
        Ok(())
    })
}

/// The gate's verdict: what the evaluation Job writes as its termination message and the
/// operator copies into `status.evaluation`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GateVerdict {
    /// Every limit held.
    pub passed: bool,
    /// Golden questions answered.
    pub questions: usize,
    /// Each metric.
    pub metrics: Vec<switchboard_crds::adapter_patch::EvaluationMetric>,
    /// One line with the numbers.
    pub message: String,
}

/// Compares the candidate's full-pipeline summary with the baseline's under `limits`.
pub fn verdict_of(
    baseline: &StageSummary,
    candidate: &StageSummary,
    limits: &switchboard_crds::adapter_patch::Evaluation,
) -> GateVerdict {
    use switchboard_crds::adapter_patch::EvaluationMetric;
    let mut metrics = Vec::new();
    let mut metric = |name: &str, b: f64, c: f64, limit: String, passed: bool| {
        metrics.push(EvaluationMetric {
            name: name.to_owned(),
            baseline: Some(b),
            candidate: c,
            limit,
            passed,
        });
    };
    let points = |p: &switchboard_crds::Percent| p.fraction();
    let eps = 1e-9;
    let kf = points(&limits.max_key_fact_accuracy_drop);
    metric(
        "keyFactAccuracy",
        baseline.key_fact_accuracy,
        candidate.key_fact_accuracy,
        format!("at most {} below", limits.max_key_fact_accuracy_drop),
        candidate.key_fact_accuracy >= baseline.key_fact_accuracy - kf - eps,
    );
    if candidate.unanswerable > 0 {
        let cr = points(&limits.max_correct_refusal_drop);
        metric(
            "correctRefusal",
            baseline.correct_refusal,
            candidate.correct_refusal,
            format!("at most {} below", limits.max_correct_refusal_drop),
            candidate.correct_refusal >= baseline.correct_refusal - cr - eps,
        );
    }
    let fr = points(&limits.max_false_refusal_increase);
    metric(
        "falseRefusal",
        baseline.false_refusal,
        candidate.false_refusal,
        format!("at most {} above", limits.max_false_refusal_increase),
        candidate.false_refusal <= baseline.false_refusal + fr + eps,
    );
    metric(
        "invalidCitationRate",
        baseline.invalid_citation_rate,
        candidate.invalid_citation_rate,
        format!("at most {}", limits.max_invalid_citation_rate),
        candidate.invalid_citation_rate <= points(&limits.max_invalid_citation_rate) + eps,
    );
    let passed = metrics.iter().all(|m| m.passed);
    let describe = |m: &EvaluationMetric| {
        format!(
            "{} {:.1}% -> {:.1}% ({})",
            m.name,
            100.0 * m.baseline.unwrap_or(0.0),
            100.0 * m.candidate,
            m.limit
        )
    };
    let failed: Vec<String> = metrics.iter().filter(|m| !m.passed).map(describe).collect();
    let message = if passed {
        format!(
            "within every limit: {}",
            metrics.iter().map(describe).collect::<Vec<_>>().join("; ")
        )
    } else {
        format!("outside the limits: {}", failed.join("; "))
    };
    GateVerdict {
        passed,
        questions: candidate.answerable + candidate.unanswerable,
        metrics,
        message,
    }
}

/// Operator mode: answers the golden set with the baseline and the candidate RuntimeConfig and
/// writes the verdict.
async fn gate(config_path: &Path, golden: &[GoldenQuery], args: &AnswerArgs) -> Result<()> {
    let (Some(candidate_path), Some(limits_path)) = (&args.candidate_config, &args.limits) else {
        bail!("--runtime-config needs --candidate-config and --limits");
    };
    let read_config = |path: &Path| -> Result<switchboard_crds::runtime_config::RuntimeConfig> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        switchboard_crds::runtime_config::RuntimeConfig::from_json(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    };
    let baseline_config = read_config(config_path)?;
    let candidate_config = read_config(candidate_path)?;
    let limits: switchboard_crds::adapter_patch::Evaluation = serde_json::from_slice(
        &std::fs::read(limits_path)
            .with_context(|| format!("reading {}", limits_path.display()))?,
    )
    .with_context(|| {
        format!(
            "{}: not an AdapterPatch spec.evaluation",
            limits_path.display()
        )
    })?;
    let store_dir = tempdir::TempDir::new("switchboard-eval-gate")?;
    let store = switchboard_store::OutcomeStore::connect(&format!(
        "sqlite://{}",
        store_dir.0.join("outcomes.db").display()
    ))
    .await?;
    let engine = Arc::new(Engine::new(
        EngineOptions {
            data: args.index_data.clone(),
            models: args.models.clone(),
            encoder: None,
            reranker: None,
            secrets: args.secrets.clone(),
            pvc_root: args
                .pvc_root
                .clone()
                .unwrap_or_else(|| PathBuf::from(switchboard_artifact::PVC_ROOT)),
            artifacts: args.artifacts.clone(),
            token_ttl: std::time::Duration::from_secs(3600),
            // The large model is part of the pipeline being judged: it must load.
            lenient_large_model: false,
            egress: args.egress_allow.clone(),
            retrieval_admission: Default::default(),
            unit_key: Arc::from(&b"evaluation"[..]),
            generation: switchboard_model::generator_worker::WorkerOptions::new(
                switchboard_model::default_device(),
            )
            .weights(switchboard_model::llama::WeightFormat::Int4),
        },
        Arc::new(Metrics::new()?),
        switchboard_policy::TokenKeys::random().context("reading /dev/urandom")?,
        store,
    )?);
    let queries: Vec<(String, &GoldenQuery)> = golden
        .iter()
        .enumerate()
        .map(|(i, q)| (q.id.clone().unwrap_or_else(|| format!("line {}", i + 1)), q))
        .collect();
    let mut summaries = Vec::new();
    for (name, config) in [
        ("baseline", baseline_config),
        ("candidate", candidate_config),
    ] {
        engine
            .apply(config)
            .await
            .map_err(|e| anyhow::anyhow!("the {name} RuntimeConfig: {e}"))?;
        let active = engine.active().context("no config applied")?;
        let generation = Arc::clone(active.retriever.generation());
        if name == "baseline" {
            check_gold_ids(golden, &generation)?;
        }
        let evaluated =
            evaluate(&engine, &queries, &generation, false, false, false, false).await?;
        let summary = evaluated
            .stages
            .into_iter()
            .last()
            .context("no full-pipeline stage")?;
        println!(
            "{name}: key-fact {:.1}%, correct refusal {:.1}%, false refusal {:.1}%, invalid citations {:.1}% ({} adapters: {})",
            100.0 * summary.key_fact_accuracy,
            100.0 * summary.correct_refusal,
            100.0 * summary.false_refusal,
            100.0 * summary.invalid_citation_rate,
            active.adapters.len(),
            active
                .adapters
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
        summaries.push(summary);
    }
    let verdict = verdict_of(&summaries[0], &summaries[1], &limits);
    println!(
        "{}: {}",
        if verdict.passed { "PASSED" } else { "FAILED" },
        verdict.message
    );
    let json = serde_json::to_string(&verdict)?;
    if let Some(path) = &args.report_file {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Reads an earlier `--json` report.
pub fn read_report(path: &Path) -> Result<AnswerReport> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{}: not an `eval --answers --json` report", path.display()))
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

fn print_report(r: &AnswerReport, per_query: bool) {
    println!("answers on {} ({} split)", r.dataset, r.split);
    println!(
        "config: {}",
        r.config
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    if let Some(f) = &r.fitted {
        println!(
            "evidence model fitted on the train half ({} pairs, {} positive): bias {:.3}, weights {:?}; answerability threshold {:.3}",
            f.pairs,
            f.positives,
            f.model.bias,
            f.model.weights.map(|w| (w * 1000.0).round() / 1000.0),
            f.threshold
        );
    }
    let rt = &r.retrieval;
    println!(
        "\nretrieval ({} answerable): gold document in the passages {}, key fact in the passages {}, in the top passage {}, in the evidence given to the model {}, in the best evidence sentence {}",
        rt.answerable,
        pct(rt.gold_in_passages),
        pct(rt.fact_in_passages),
        pct(rt.fact_in_top_passage),
        pct(rt.fact_in_evidence),
        pct(rt.fact_in_best_evidence)
    );
    println!(
        "\n{:<14} {:>4} {:>4} {:>8} {:>6} {:>7} {:>7} {:>8} {:>6} {:>8} {:>8} {:>6} {:>7} {:>7}  paths",
        "stage",
        "ans",
        "unans",
        "key-fact",
        "stale",
        "cite-P",
        "cite-R",
        "invalid",
        "echo",
        "refuse✓",
        "refuse✗",
        "words",
        "p50 ms",
        "p95 ms"
    );
    for s in &r.stages {
        println!(
            "{:<14} {:>4} {:>4} {:>8} {:>6} {:>7} {:>7} {:>8} {:>6} {:>8} {:>8} {:>6.1} {:>7.0} {:>7.0}  {}",
            s.stage,
            s.answerable,
            s.unanswerable,
            pct(s.key_fact_accuracy),
            pct(s.stale_rate),
            pct(s.citation_precision),
            pct(s.citation_recall),
            pct(s.invalid_citation_rate),
            pct(s.echo_rate),
            if s.unanswerable > 0 {
                pct(s.correct_refusal)
            } else {
                "-".into()
            },
            pct(s.false_refusal),
            s.mean_words,
            s.p50_ms,
            s.p95_ms,
            s.paths
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if per_query {
        for (stage, verdicts) in &r.queries {
            println!("\n{stage}:");
            for v in verdicts {
                let mark = match (v.answerable, v.refused, v.key_fact) {
                    (true, false, true) => "ok  ",
                    (true, false, false) => "MISS",
                    (true, true, _) => "REF✗",
                    (false, true, _) => "ref ",
                    (false, false, _) => "ANS✗",
                };
                println!(
                    "{mark} {:<6} {:>5.0}ms {:<10} {:.2} {:?} -> {}{}",
                    v.id,
                    v.ms,
                    v.path,
                    v.evidence_score,
                    v.query,
                    v.answer.replace('\n', " "),
                    if v.echo { "  [ECHO]" } else { "" }
                );
            }
        }
    }
    println!("\nrefusal curve (refuse when the best evidence scores below t):");
    println!(
        "{:>6} {:>10} {:>8} {:>14}",
        "t", "precision", "recall", "false refusal"
    );
    for p in &r.refusal_curve {
        println!(
            "{:>6.2} {:>10} {:>8} {:>14}",
            p.threshold,
            pct(p.precision),
            pct(p.recall),
            pct(p.false_refusal)
        );
    }
}

fn print_comparison(before: &AnswerReport, after: &AnswerReport) {
    println!(
        "\ncompared with the baseline ({}):",
        before
            .config
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    for s in &after.stages {
        let Some(b) = before.stages.iter().find(|b| b.stage == s.stage) else {
            continue;
        };
        let delta = |name: &str, a: f64, b: f64| {
            format!("{name} {} -> {} ({:+.1})", pct(b), pct(a), 100.0 * (a - b))
        };
        println!(
            "  {}: {}; {}; {}; {}; {}; p50 {:.0} -> {:.0} ms",
            s.stage,
            delta("key-fact", s.key_fact_accuracy, b.key_fact_accuracy),
            delta("correct refusal", s.correct_refusal, b.correct_refusal),
            delta("false refusal", s.false_refusal, b.false_refusal),
            delta(
                "invalid citations",
                s.invalid_citation_rate,
                b.invalid_citation_rate
            ),
            delta("echo", s.echo_rate, b.echo_rate),
            b.p50_ms,
            s.p50_ms
        );
        let (Some(now), Some(then)) = (after.queries.get(&s.stage), before.queries.get(&s.stage))
        else {
            continue;
        };
        for v in now {
            if let Some(old) = then.iter().find(|o| o.id == v.id) {
                let good = |x: &QueryVerdict| if x.answerable { x.key_fact } else { x.refused };
                if good(old) != good(v) {
                    println!(
                        "    {} {}: {:?} -> {:?}",
                        if good(v) { "fixed " } else { "broken" },
                        v.id,
                        old.answer,
                        v.answer
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_facts_need_every_fact_and_any_alternative() {
        let facts = vec![
            vec!["14 days".to_owned(), "fourteen days".to_owned()],
            vec!["Settings > Billing".to_owned()],
        ];
        assert!(has_key_facts(
            "Within **14  days**, under settings > billing [1].",
            &facts
        ));
        assert!(!has_key_facts("Within 14 days [1].", &facts));
        assert!(!has_key_facts("anything", &[]));
        assert!(has_any("It was 30 days.", &["30 days".to_owned()]));
    }

    #[test]
    fn echoes_are_breadcrumbs_paths_and_labels() {
        let crumbs = vec!["[Refund policy > Refund window]".to_owned()];
        assert!(echoes_prompt(
            "[Refund policy > Refund window] 14 days",
            &crumbs
        ));
        assert!(echoes_prompt("see [Billing > Refunds]", &[]));
        assert!(echoes_prompt("Question: how long", &[]));
        assert!(!echoes_prompt("You have 14 days [1].", &crumbs));
    }

    fn v(
        answerable: bool,
        refused: bool,
        key_fact: bool,
        cited: &[&str],
        gold: usize,
    ) -> QueryVerdict {
        QueryVerdict {
            id: "q".into(),
            query: "q".into(),
            answerable,
            answer: "a b c".into(),
            path: if refused { "refusal" } else { "extractive" }.into(),
            refused,
            key_fact,
            stale: false,
            cited: cited.iter().map(|s| (*s).to_owned()).collect(),
            cited_gold: gold,
            invalid_citations: 0,
            echo: false,
            words: 3,
            ms: 100.0,
            evidence_score: 0.5,
        }
    }

    #[test]
    fn summaries_count_what_they_say() {
        let s = summarise(
            "full",
            &[
                v(true, false, true, &["a", "b"], 1),
                v(true, false, false, &["c"], 0),
                v(true, true, false, &[], 0),
                v(false, true, false, &[], 0),
                v(false, false, false, &["a"], 0),
            ],
        );
        assert_eq!((s.answerable, s.unanswerable), (3, 2));
        assert!((s.key_fact_accuracy - 1.0 / 3.0).abs() < 1e-9);
        assert!((s.false_refusal - 1.0 / 3.0).abs() < 1e-9);
        assert!((s.correct_refusal - 0.5).abs() < 1e-9);
        assert!((s.citation_precision - 0.25).abs() < 1e-9, "{s:?}");
        assert!((s.citation_recall - 0.5).abs() < 1e-9);
        assert_eq!(s.paths["refusal"], 2);
    }

    #[test]
    fn the_threshold_keeps_false_refusals_at_most_five_percent() {
        let mut points: Vec<(f64, bool)> =
            (0..40).map(|i| (0.3 + f64::from(i) * 0.01, true)).collect();
        points.extend((0..10).map(|i| (0.05 + f64::from(i) * 0.03, false)));
        let t = choose_threshold(&points);
        let false_refusals = points.iter().filter(|(s, a)| *a && *s < t).count();
        let caught = points.iter().filter(|(s, a)| !a && *s < t).count();
        assert!(false_refusals <= 2, "{t}");
        assert!(caught >= 9, "{t}");
        let curve = refusal_curve(&points);
        assert_eq!(curve.len(), 19);
        assert!(curve.windows(2).all(|w| w[0].recall <= w[1].recall));
    }
}
