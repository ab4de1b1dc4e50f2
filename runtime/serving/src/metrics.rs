//! Prometheus metrics of the runtime (`/metrics`). Names follow `switchboard_<noun>_<unit>`; label
//! sets are small and bounded (stage, outcome, reason, and the knowledge base's own documents).
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use switchboard_index::{DocumentFreshness, SearchResponse, StageTimings};

/// Buckets for stage latencies: 0.25 ms .. 2.5 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Buckets for answer stages: 5 ms .. 60 s (generation on CPU takes seconds).
const ANSWER_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
];

/// Every `outcome` label value of `switchboard_feedback_total` (docs/metrics.md).
pub const FEEDBACK_OUTCOMES: [&str; 8] = [
    "escalated",
    "resolved",
    "reopened",
    "csat_1",
    "csat_2",
    "csat_3",
    "csat_4",
    "csat_5",
];

/// Feedback waiting for its follow-up: (due, Unix seconds; label values of
/// `switchboard_feedback_settled_total`).
type Settling = (i64, Vec<String>);

/// Most feedback waiting for its follow-up at once (about 300 bytes each); beyond it feedback is
/// left out of the settled counters and counted in `switchboard_feedback_settled_dropped_total`.
const MAX_SETTLING: usize = 1_000_000;

/// Every `check` label value of `switchboard_answer_checks_total` (docs/metrics.md).
pub const ANSWER_CHECKS: [&str; 4] = [
    "refusal",
    "invalid_citation",
    "retrieval_failure",
    "ungrounded",
];

/// Every `path` label value of `switchboard_answer_paths_total` (docs/metrics.md).
pub const ANSWER_PATHS: [&str; 3] = ["generative", "extractive", "refusal"];

/// The runtime's metric families, registered in one registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    stage_seconds: HistogramVec,
    requests: IntCounterVec,
    failures: IntCounterVec,
    rerank_outcomes: IntCounterVec,
    document_hits: IntCounterVec,
    concentration: prometheus::Gauge,
    generation_info: IntGaugeVec,
    chunks: IntGauge,
    chunk_hits: Mutex<HashMap<String, u64>>,
    document_stale: IntGaugeVec,
    document_modified: IntGaugeVec,
    /// The served generation's documents; staleness is computed from them at every scrape, so
    /// it follows the clock without a rebuild.
    documents: Mutex<Vec<DocumentFreshness>>,
    interactions: IntCounterVec,
    feedback: IntCounterVec,
    feedback_settled: IntCounterVec,
    /// Feedback waiting for its answer to reach a guardrail's follow-up: (due, label values),
    /// released into `feedback_settled` by the first scrape at or after `due`.
    settling: Mutex<BinaryHeap<Reverse<Settling>>>,
    settling_dropped: prometheus::IntCounter,
    feedback_rejected: IntCounterVec,
    answer_checks: IntCounterVec,
    answer_paths: IntCounterVec,
    route_decisions: IntCounterVec,
    large_queue_depth: IntGaugeVec,
    answer_seconds: HistogramVec,
    config_info: IntGaugeVec,
    config_reloads: IntCounterVec,
    shadow_requests: IntCounterVec,
    shadow_checks: IntCounterVec,
    shadow_skipped: IntCounterVec,
    store_errors: IntCounterVec,
    generation_shed: IntCounterVec,
    generation_queue: IntGaugeVec,
    limit_refused: IntCounterVec,
    connections: IntGauge,
    token_key_reloads: IntCounterVec,
    auth_refused: IntCounterVec,
    credential_reloads: IntCounterVec,
    experiment_unenrolled: IntCounterVec,
}

pub use switchboard_policy::Variant;

/// Label names of [`Variant`], in the order [`Variant::labels`] gives them.
const VARIANT_LABELS: [&str; 7] = Variant::LABEL_NAMES;

fn with<'a>(variant: &'a Variant, extra: &'a str) -> Vec<&'a str> {
    let mut v = variant.labels().to_vec();
    v.push(extra);
    v
}

fn labels_with(extra: &'static str) -> Vec<&'static str> {
    let mut v = VARIANT_LABELS.to_vec();
    v.push(extra);
    v
}

impl Metrics {
    /// Creates and registers every family.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let stage_seconds = HistogramVec::new(
            HistogramOpts::new(
                "switchboard_retrieval_stage_seconds",
                "Latency of each retrieval stage (bm25, embed, dense, fusion, rerank, total).",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["stage"],
        )?;
        let requests = IntCounterVec::new(
            Opts::new(
                "switchboard_retrieval_requests_total",
                "Retrieval requests by protocol and outcome (ok, invalid_argument, unavailable, internal).",
            ),
            &["protocol", "outcome"],
        )?;
        let failures = IntCounterVec::new(
            Opts::new(
                "switchboard_retrieval_failures_total",
                "Queries for which no passage cleared the relevance floor, by reason.",
            ),
            &["reason"],
        )?;
        let rerank_outcomes = IntCounterVec::new(
            Opts::new(
                "switchboard_rerank_outcomes_total",
                "Rerank stage outcomes (completed; timed_out and failed: the fused order was served).",
            ),
            &["outcome"],
        )?;
        let document_hits = IntCounterVec::new(
            Opts::new(
                "switchboard_document_retrievals_total",
                "Times a document of the knowledge base was among the served passages.",
            ),
            &["document"],
        )?;
        // The search count (the `_count` of `total`) is the denominator of a document's query
        // share: exported at zero before the first search.
        stage_seconds.with_label_values(&["total"]);
        let concentration = prometheus::Gauge::new(
            "switchboard_retrieval_concentration_ratio",
            "Share of passage hits that went to the most-hit 1% of chunks (at least one chunk).",
        )?;
        let generation_info = IntGaugeVec::new(
            Opts::new(
                "switchboard_index_generation_info",
                "1 for the index generation being served.",
            ),
            &["generation"],
        )?;
        let chunks = IntGauge::new(
            "switchboard_index_chunks",
            "Chunks in the served index generation.",
        )?;
        let document_stale = IntGaugeVec::new(
            Opts::new(
                "switchboard_document_stale",
                "1 for each document of the served generation older than its freshness class's staleAfter, 0 for the others.",
            ),
            &["document"],
        )?;
        let document_modified = IntGaugeVec::new(
            Opts::new(
                "switchboard_document_last_modified_timestamp_seconds",
                "Last modification (Unix seconds, as ingested) of each dated document of the served generation.",
            ),
            &["document"],
        )?;
        let interactions = IntCounterVec::new(
            Opts::new(
                "switchboard_interactions_total",
                "Answers returned to a caller (one interaction token each), per variant.",
            ),
            &VARIANT_LABELS,
        )?;
        let feedback = IntCounterVec::new(
            Opts::new(
                "switchboard_feedback_total",
                "Verified first-time feedback per variant and outcome.",
            ),
            &labels_with("outcome"),
        )?;
        let mut settled_labels = labels_with("outcome");
        settled_labels.push("settle");
        let feedback_settled = IntCounterVec::new(
            Opts::new(
                "switchboard_feedback_settled_total",
                "Verified feedback that arrived within `settle` of its answer, counted once the answer is `settle` old (the guardrails' follow-ups; compare with switchboard_interactions_total offset by `settle`).",
            ),
            &settled_labels,
        )?;
        let settling_dropped = prometheus::IntCounter::new(
            "switchboard_feedback_settled_dropped_total",
            "Feedback left out of switchboard_feedback_settled_total because too much was waiting for its follow-up.",
        )?;
        let feedback_rejected = IntCounterVec::new(
            Opts::new(
                "switchboard_feedback_rejected_total",
                "Feedback refused (malformed, bad_signature, expired, replayed, unknown_outcome).",
            ),
            &["reason"],
        )?;
        let answer_checks = IntCounterVec::new(
            Opts::new(
                "switchboard_answer_checks_total",
                "Answers that failed a check: refusal, retrieval_failure, invalid_citation (the model cited a fact not in its prompt; removed before serving), ungrounded (the model's answer was not supported by its facts; the extractive answer was served).",
            ),
            &labels_with("check"),
        )?;
        let answer_paths = IntCounterVec::new(
            Opts::new(
                "switchboard_answer_paths_total",
                "Answers by how they were made: generative (the model's, grounded), extractive (evidence quoted), refusal.",
            ),
            &labels_with("path"),
        )?;
        let route_decisions = IntCounterVec::new(
            Opts::new(
                "switchboard_route_decisions_total",
                "Routing decisions (easy, difficult, queue_full, exploration, forced).",
            ),
            &["router", "model", "reason"],
        )?;
        let large_queue_depth = IntGaugeVec::new(
            Opts::new(
                "switchboard_large_model_queue_depth",
                "Requests queued or in flight to the large model.",
            ),
            &["router"],
        )?;
        let answer_seconds = HistogramVec::new(
            HistogramOpts::new(
                "switchboard_answer_seconds",
                "Latency of the answer pipeline's stages (rewrite, retrieve, generate, total).",
            )
            .buckets(ANSWER_BUCKETS.to_vec()),
            &["router", "model", "stage"],
        )?;
        let config_info = IntGaugeVec::new(
            Opts::new(
                "switchboard_runtime_config_info",
                "1 for the RuntimeConfig revision in force.",
            ),
            &["router", "revision"],
        )?;
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "switchboard_runtime_config_reloads_total",
                "RuntimeConfig documents read (applied, rejected, unchanged).",
            ),
            &["result"],
        )?;
        let shadow_requests = IntCounterVec::new(
            Opts::new(
                "switchboard_shadow_requests_total",
                "Mirrored requests whose shadow answer completed.",
            ),
            &["router", "lineage", "adapter_version"],
        )?;
        let shadow_checks = IntCounterVec::new(
            Opts::new(
                "switchboard_shadow_checks_total",
                "Failed checks of mirrored requests, per side (baseline, candidate).",
            ),
            &["router", "lineage", "adapter_version", "side", "check"],
        )?;
        let shadow_skipped = IntCounterVec::new(
            Opts::new(
                "switchboard_shadow_skipped_total",
                "Shadow runs not done (concurrency, error).",
            ),
            &["router", "reason"],
        )?;
        let store_errors = IntCounterVec::new(
            Opts::new(
                "switchboard_outcome_store_errors_total",
                "Failed outcome-store operations (record_interaction, record_outcome, cuped, export, prune).",
            ),
            &["operation"],
        )?;
        let generation_shed = IntCounterVec::new(
            Opts::new(
                "switchboard_generation_shed_total",
                "Generation requests refused because the model's queue was full (HTTP 429, gRPC UNAVAILABLE).",
            ),
            &["model"],
        )?;
        let generation_queue = IntGaugeVec::new(
            Opts::new(
                "switchboard_generation_queue_depth",
                "Generation requests admitted to a local model and not finished (running or waiting).",
            ),
            &["model"],
        )?;
        let limit_refused = IntCounterVec::new(
            Opts::new(
                "switchboard_limit_refused_total",
                "Requests (HTTP and gRPC) and connections refused by a serving limit: header_timeout, body_timeout, body_too_large, deadline_exceeded, retrieval_overloaded, admin_busy (docs/security.md).",
            ),
            &["reason"],
        )?;
        let connections = IntGauge::new(
            "switchboard_http_connections",
            "HTTP connections open now (at most --max-connections).",
        )?;
        let auth_refused = IntCounterVec::new(
            Opts::new(
                "switchboard_auth_refused_total",
                "Requests refused for their credentials, by API (public, admin) and reason (missing: no bearer token; invalid: not one of the listed tokens).",
            ),
            &["api", "reason"],
        )?;
        let credential_reloads = IntCounterVec::new(
            Opts::new(
                "switchboard_credential_reloads_total",
                "Changes of a bearer-token file (admin, client): applied or rejected (invalid; the tokens in force stay).",
            ),
            &["api", "result"],
        )?;
        let experiment_unenrolled = IntCounterVec::new(
            Opts::new(
                "switchboard_experiment_unenrolled_total",
                "Requests not enrolled in a running Experiment because they lack the id of its unit (field: userId, accountId or conversationId).",
            ),
            &["router", "experiment", "field"],
        )?;
        let token_key_reloads = IntCounterVec::new(
            Opts::new(
                "switchboard_token_key_reloads_total",
                "Changes of the token key file: applied (new keys in force) or rejected (invalid; the keys in force stay).",
            ),
            &["result"],
        )?;
        for collector in [
            Box::new(interactions.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(token_key_reloads.clone()),
            Box::new(auth_refused.clone()),
            Box::new(credential_reloads.clone()),
            Box::new(experiment_unenrolled.clone()),
            Box::new(limit_refused.clone()),
            Box::new(connections.clone()),
            Box::new(store_errors.clone()),
            Box::new(generation_shed.clone()),
            Box::new(generation_queue.clone()),
            Box::new(feedback.clone()),
            Box::new(feedback_settled.clone()),
            Box::new(settling_dropped.clone()),
            Box::new(feedback_rejected.clone()),
            Box::new(answer_checks.clone()),
            Box::new(answer_paths.clone()),
            Box::new(route_decisions.clone()),
            Box::new(large_queue_depth.clone()),
            Box::new(answer_seconds.clone()),
            Box::new(config_info.clone()),
            Box::new(config_reloads.clone()),
            Box::new(shadow_requests.clone()),
            Box::new(shadow_checks.clone()),
            Box::new(shadow_skipped.clone()),
            Box::new(stage_seconds.clone()),
            Box::new(requests.clone()),
            Box::new(failures.clone()),
            Box::new(rerank_outcomes.clone()),
            Box::new(document_hits.clone()),
            Box::new(concentration.clone()),
            Box::new(generation_info.clone()),
            Box::new(chunks.clone()),
            Box::new(document_stale.clone()),
            Box::new(document_modified.clone()),
        ] {
            registry.register(collector)?;
        }
        Ok(Self {
            registry,
            stage_seconds,
            requests,
            failures,
            rerank_outcomes,
            document_hits,
            concentration,
            generation_info,
            chunks,
            chunk_hits: Mutex::new(HashMap::new()),
            document_stale,
            document_modified,
            documents: Mutex::new(Vec::new()),
            interactions,
            feedback,
            feedback_settled,
            settling: Mutex::new(BinaryHeap::new()),
            settling_dropped,
            feedback_rejected,
            answer_checks,
            answer_paths,
            route_decisions,
            large_queue_depth,
            answer_seconds,
            config_info,
            config_reloads,
            shadow_requests,
            shadow_checks,
            shadow_skipped,
            store_errors,
            generation_shed,
            generation_queue,
            limit_refused,
            connections,
            token_key_reloads,
            auth_refused,
            credential_reloads,
            experiment_unenrolled,
        })
    }

    /// Counts a change of the token key file (`applied` or `rejected`).
    pub fn token_keys_reload(&self, result: &str) {
        self.token_key_reloads.with_label_values(&[result]).inc();
    }

    /// Counts a request refused for its credentials (`crate::auth`).
    pub fn auth_refused(&self, api: &str, reason: &str) {
        self.auth_refused.with_label_values(&[api, reason]).inc();
    }

    /// Counts a change of a bearer-token file: `applied` or `rejected`.
    pub fn credential_reload(&self, api: &str, result: &str) {
        self.credential_reloads
            .with_label_values(&[api, result])
            .inc();
    }

    /// Counts a request or connection refused by a serving limit (`crate::limits`).
    pub fn limit_refused(&self, reason: &str) {
        self.limit_refused.with_label_values(&[reason]).inc();
    }

    /// An HTTP connection was accepted.
    pub fn connection_opened(&self) {
        self.connections.inc();
    }

    /// An HTTP connection ended.
    pub fn connection_closed(&self) {
        self.connections.dec();
    }

    /// Counts a failed outcome-store operation.
    pub fn store_error(&self, operation: &str) {
        self.store_errors.with_label_values(&[operation]).inc();
    }

    /// Counts a generation request refused by a full queue.
    pub fn generation_shed(&self, model: &str) {
        self.generation_shed.with_label_values(&[model]).inc();
    }

    /// Sets the admitted-and-unfinished generation requests of a local model.
    pub fn generation_queue(&self, model: &str, depth: usize) {
        self.generation_queue
            .with_label_values(&[model])
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// Creates, at zero, every outcome series of a variant the config is about to serve, so
    /// Prometheus sees each counter from its first increment: `increase()` cannot count the
    /// increments before a series' first scrape, and a canary's first few answers are exactly the
    /// ones its guardrail is waiting for (the usual "initialise labelled counters" practice).
    pub fn initialise(&self, variant: &Variant, settle_windows: &[Duration]) {
        self.interactions.with_label_values(&variant.labels());
        for outcome in FEEDBACK_OUTCOMES {
            self.feedback.with_label_values(&with(variant, outcome));
            for window in settle_windows {
                let settle = switchboard_crds::units::prometheus_duration(*window);
                let mut labels = with(variant, outcome);
                labels.push(&settle);
                self.feedback_settled.with_label_values(&labels);
            }
        }
        for check in ANSWER_CHECKS {
            self.answer_checks.with_label_values(&with(variant, check));
        }
        for path in ANSWER_PATHS {
            self.answer_paths.with_label_values(&with(variant, path));
        }
    }

    /// Counts an answer by how it was made (`generative`, `extractive`, `refusal`).
    pub fn answer_path(&self, variant: &Variant, path: &str) {
        self.answer_paths
            .with_label_values(&with(variant, path))
            .inc();
    }

    /// Counts an answer returned to a caller.
    pub fn interaction(&self, variant: &Variant) {
        self.interactions.with_label_values(&variant.labels()).inc();
    }

    /// Counts verified first-time feedback (`outcome`: `escalated`, ..., `csat_1`..`csat_5`).
    pub fn feedback(&self, variant: &Variant, outcome: &str) {
        self.feedback
            .with_label_values(&with(variant, outcome))
            .inc();
    }

    /// Schedules verified feedback for the guardrails' settled counters: for each follow-up `h`
    /// in `windows` that it arrived within (`at - answered_at <= h`), it is counted in
    /// `switchboard_feedback_settled_total{settle=h}` by the first scrape once the answer is `h`
    /// old, the moment the answer itself enters `switchboard_interactions_total offset h`. Both
    /// arms of a guardrail are then compared on answers of the same age with the outcomes of the
    /// same follow-up, however young one arm is (docs/statistics.md, "Late outcomes").
    pub fn feedback_settled(
        &self,
        variant: &Variant,
        outcome: &str,
        answered_at: i64,
        at: i64,
        windows: &[Duration],
    ) {
        let delay = at.saturating_sub(answered_at).max(0);
        let Ok(mut settling) = self.settling.lock() else {
            return;
        };
        for window in windows {
            let h = i64::try_from(window.as_secs()).unwrap_or(i64::MAX);
            // A sub-second follow-up is rounded up: the answer time is known to the second.
            let h = if window.subsec_nanos() > 0 {
                h.saturating_add(1)
            } else {
                h
            };
            if delay > h {
                continue;
            }
            if settling.len() >= MAX_SETTLING {
                self.settling_dropped.inc();
                continue;
            }
            let mut labels: Vec<String> =
                variant.labels().iter().map(|l| (*l).to_owned()).collect();
            labels.push(outcome.to_owned());
            labels.push(switchboard_crds::units::prometheus_duration(*window));
            settling.push(Reverse((answered_at.saturating_add(h), labels)));
        }
    }

    /// Moves the feedback whose follow-up has ended by `now` into the settled counters.
    fn release_settled(&self, now: i64) {
        let Ok(mut settling) = self.settling.lock() else {
            return;
        };
        while settling.peek().is_some_and(|Reverse((due, _))| *due <= now) {
            if let Some(Reverse((_, labels))) = settling.pop() {
                let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
                self.feedback_settled.with_label_values(&labels).inc();
            }
        }
    }

    /// Counts refused feedback.
    pub fn feedback_rejected(&self, reason: &str) {
        self.feedback_rejected.with_label_values(&[reason]).inc();
    }

    /// Counts a served answer that failed `check`.
    pub fn answer_check(&self, variant: &Variant, check: &str) {
        self.answer_checks
            .with_label_values(&with(variant, check))
            .inc();
    }

    /// Counts a routing decision.
    pub fn route(&self, router: &str, model: &str, reason: &str) {
        self.route_decisions
            .with_label_values(&[router, model, reason])
            .inc();
    }

    /// Sets the large model's queue depth.
    pub fn large_queue_depth(&self, router: &str, depth: usize) {
        self.large_queue_depth
            .with_label_values(&[router])
            .set(depth as i64);
    }

    /// Counts a request not enrolled in `experiment` for want of the id in `field`.
    pub fn experiment_unenrolled(&self, router: &str, experiment: &str, field: &str) {
        self.experiment_unenrolled
            .with_label_values(&[router, experiment, field])
            .inc();
    }

    /// Records one stage of the answer pipeline.
    pub fn answer_stage(&self, router: &str, model: &str, stage: &str, seconds: f64) {
        self.answer_seconds
            .with_label_values(&[router, model, stage])
            .observe(seconds);
    }

    /// Marks `revision` of `router` as the RuntimeConfig in force.
    pub fn config_in_force(&self, router: &str, revision: &str) {
        self.config_info.reset();
        self.config_info
            .with_label_values(&[router, revision])
            .set(1);
    }

    /// Counts a RuntimeConfig read (`applied`, `rejected`, `unchanged`).
    pub fn config_reload(&self, result: &str) {
        self.config_reloads.with_label_values(&[result]).inc();
    }

    /// Counts a completed shadow comparison and its failed checks.
    pub fn shadow(&self, router: &str, lineage: &str, version: &str, failed: &[(&str, &str)]) {
        self.shadow_requests
            .with_label_values(&[router, lineage, version])
            .inc();
        for (side, check) in failed {
            self.shadow_checks
                .with_label_values(&[router, lineage, version, side, check])
                .inc();
        }
    }

    /// Counts a shadow run not done.
    pub fn shadow_skipped(&self, router: &str, reason: &str) {
        self.shadow_skipped
            .with_label_values(&[router, reason])
            .inc();
    }

    /// Counts a finished request.
    pub fn request(&self, protocol: &str, outcome: &str) {
        self.requests.with_label_values(&[protocol, outcome]).inc();
    }

    /// Records what one successful search did.
    pub fn observe(&self, response: &SearchResponse) {
        self.observe_timings(&response.timings);
        if let Some(failure) = &response.failure {
            let reason = match failure {
                switchboard_index::RetrievalFailure::NoCandidates => "no_candidates",
                switchboard_index::RetrievalFailure::BelowFloor { .. } => "below_floor",
            };
            self.failures.with_label_values(&[reason]).inc();
        }
        match &response.rerank {
            switchboard_index::RerankStatus::Off => {}
            switchboard_index::RerankStatus::Completed { .. } => {
                self.rerank_outcomes.with_label_values(&["completed"]).inc();
            }
            switchboard_index::RerankStatus::TimedOut { .. } => {
                self.rerank_outcomes.with_label_values(&["timed_out"]).inc();
            }
            switchboard_index::RerankStatus::Failed { .. } => {
                self.rerank_outcomes.with_label_values(&["failed"]).inc();
            }
        }
        let mut seen_docs = std::collections::HashSet::new();
        for passage in &response.passages {
            if seen_docs.insert(passage.doc_id.as_str()) {
                self.document_hits
                    .with_label_values(&[passage.doc_id.as_str()])
                    .inc();
            }
        }
        if let Ok(mut hits) = self.chunk_hits.lock() {
            for passage in &response.passages {
                *hits.entry(passage.chunk_id.clone()).or_default() += 1;
            }
            self.concentration.set(concentration(&hits));
        }
    }

    fn observe_timings(&self, t: &StageTimings) {
        let stages = [
            ("bm25", t.bm25),
            ("embed", t.embed),
            ("dense", t.dense),
            ("fusion", Some(t.fusion)),
            ("rerank", t.rerank),
            ("total", Some(t.total)),
        ];
        for (stage, duration) in stages {
            if let Some(d) = duration {
                self.stage_seconds
                    .with_label_values(&[stage])
                    .observe(d.as_secs_f64());
            }
        }
    }

    /// Marks `generation` (with `chunks` chunks) as the one being served.
    pub fn serving(&self, generation: &str, chunks: usize) {
        self.generation_info.reset();
        self.generation_info.with_label_values(&[generation]).set(1);
        self.chunks.set(chunks as i64);
        if let Ok(mut hits) = self.chunk_hits.lock() {
            // Chunk ids of another generation are not comparable.
            hits.clear();
        }
    }

    /// Records the documents of the generation being served: their last modification is
    /// exported, and whether each is stale is computed at every scrape (see
    /// [`refresh_staleness`](Self::refresh_staleness)). Documents of the previous generation
    /// disappear.
    pub fn serving_documents(&self, documents: Vec<DocumentFreshness>) {
        // Held while the gauges are rewritten, so a scrape never sees half of them.
        let Ok(mut held) = self.documents.lock() else {
            return;
        };
        self.document_modified.reset();
        for d in &documents {
            // At zero from the start, so `increase()` counts a document's first retrieval too
            // (the stale-document share; see `initialise` for the same reason).
            self.document_hits.with_label_values(&[d.doc_id.as_str()]);
            if let Some(t) = d.last_modified {
                self.document_modified
                    .with_label_values(&[d.doc_id.as_str()])
                    .set(t);
            }
        }
        *held = documents;
        self.set_staleness(&held, unix_now());
    }

    /// Sets `switchboard_document_stale` for every served document as of `now` (Unix seconds):
    /// a document turns stale when it ages past its class's `staleAfter`, without a rebuild.
    /// ([`render`](Self::render) does it with the clock at every scrape.)
    #[cfg(test)]
    fn refresh_staleness(&self, now: i64) {
        if let Ok(documents) = self.documents.lock() {
            self.set_staleness(&documents, now);
        }
    }

    fn set_staleness(&self, documents: &[DocumentFreshness], now: i64) {
        self.document_stale.reset();
        for d in documents {
            self.document_stale
                .with_label_values(&[d.doc_id.as_str()])
                .set(i64::from(d.is_stale(now)));
        }
    }

    /// Per-chunk hit counts since the served generation was loaded, most hit first.
    pub fn top_chunks(&self, n: usize) -> Vec<(String, u64)> {
        let Ok(hits) = self.chunk_hits.lock() else {
            return Vec::new();
        };
        let mut all: Vec<(String, u64)> = hits.iter().map(|(k, v)| (k.clone(), *v)).collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }

    /// The text exposition of every family (staleness as of now).
    pub fn render(&self) -> String {
        let now = unix_now();
        self.release_settled(now);
        // Held while encoding: a concurrent scrape cannot reset the gauge under this one.
        let documents = self.documents.lock();
        if let Ok(documents) = &documents {
            self.set_staleness(documents, now);
        }
        self.encode()
    }

    fn encode(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Share of all hits taken by the most-hit 1% of chunks (at least one).
fn concentration(hits: &HashMap<String, u64>) -> f64 {
    let total: u64 = hits.values().sum();
    if total == 0 {
        return 0.0;
    }
    let mut counts: Vec<u64> = hits.values().copied().collect();
    counts.sort_unstable_by(|a, b| b.cmp(a));
    let top = (counts.len() / 100).max(1);
    counts[..top].iter().sum::<u64>() as f64 / total as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concentration_is_the_top_percent_share() {
        let mut hits = HashMap::new();
        for i in 0..200 {
            hits.insert(format!("c{i}"), 1);
        }
        hits.insert("hot".into(), 98);
        // 201 chunks -> top 2 chunks: 98 + 1 of 298 hits.
        assert!((concentration(&hits) - 99.0 / 298.0).abs() < 1e-9);
        assert_eq!(concentration(&HashMap::new()), 0.0);
    }

    /// The canary version of the `billing` lineage.
    fn canary() -> Variant {
        Variant {
            router: "support/helpdesk".into(),
            lineage: "billing".into(),
            adapter_version: "1.1.0".into(),
            adapter_role: "canary".into(),
            experiment: String::new(),
            arm: String::new(),
            model: "small".into(),
        }
    }

    #[test]
    fn a_served_variant_is_exported_at_zero_before_its_first_answer() {
        let metrics = Metrics::new().unwrap();
        let canary = canary();
        metrics.initialise(&canary, &[Duration::from_secs(3600)]);
        let text = metrics.render();
        let zero_series = |name: &str, extra: &str| {
            text.lines().any(|l| {
                l.starts_with(name)
                    && l.contains("adapter_version=\"1.1.0\"")
                    && l.contains(extra)
                    && l.ends_with(" 0")
            })
        };
        assert!(zero_series("switchboard_interactions_total", ""), "{text}");
        for outcome in FEEDBACK_OUTCOMES {
            assert!(
                zero_series(
                    "switchboard_feedback_total",
                    &format!("outcome=\"{outcome}\"")
                ),
                "{outcome}: {text}"
            );
        }
        assert!(
            zero_series("switchboard_answer_checks_total", "check=\"refusal\""),
            "{text}"
        );
        assert!(
            zero_series(
                "switchboard_feedback_settled_total",
                "outcome=\"escalated\",router=\"support/helpdesk\",settle=\"3600s\""
            ),
            "{text}"
        );
        // The first answer then counts from zero.
        metrics.interaction(&canary);
        assert!(text_has(
            &metrics.render(),
            "switchboard_interactions_total",
            " 1"
        ));
    }

    #[test]
    fn feedback_is_counted_settled_when_its_answer_reaches_the_follow_up() {
        let metrics = Metrics::new().unwrap();
        let variant = canary();
        let windows = [Duration::from_secs(60), Duration::from_secs(3600)];
        let now = unix_now();
        // Answered 2 minutes ago, escalated now: outside the 1-minute follow-up, inside the
        // hour's, which ends in 58 minutes.
        metrics.feedback_settled(&variant, "escalated", now - 120, now, &windows);
        // Answered 2 hours ago and escalated 30 s later (reported late to this replica): both
        // follow-ups have ended, so both count at the next scrape.
        metrics.feedback_settled(&variant, "escalated", now - 7200, now - 7170, &windows);
        let value = |text: &str, settle: &str| -> Option<u64> {
            text.lines()
                .find(|l| {
                    l.starts_with("switchboard_feedback_settled_total{")
                        && l.contains(&format!("settle=\"{settle}\""))
                })
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
        };
        let text = metrics.render();
        assert_eq!(value(&text, "60s"), Some(1), "{text}");
        assert_eq!(value(&text, "3600s"), Some(1), "{text}");
        // An hour on, the first escalation's follow-up has ended too.
        metrics.release_settled(now + 3600);
        let text = metrics.render();
        assert_eq!(value(&text, "60s"), Some(1), "{text}");
        assert_eq!(value(&text, "3600s"), Some(2), "{text}");
    }

    #[test]
    fn documents_turn_stale_as_time_passes_without_a_new_generation() {
        use switchboard_index::FreshnessClass;
        let day = 86_400;
        let policy = FreshnessClass {
            half_life_days: Some(90.0),
            stale_after_days: Some(365.0),
        };
        let doc = |id: &str, modified: Option<i64>, class: FreshnessClass| DocumentFreshness {
            doc_id: id.to_owned(),
            freshness_class: "policy".to_owned(),
            last_modified: modified,
            class,
        };
        let metrics = Metrics::new().unwrap();
        let now = unix_now();
        metrics.serving_documents(vec![
            doc("notes/refund-faq-2024.txt", Some(now - 900 * day), policy),
            doc("policies/refund-policy.md", Some(now - 300 * day), policy),
            doc("notes/undated.txt", None, policy),
        ]);
        let text = metrics.render();
        let stale = |text: &str, doc: &str, value: &str| {
            text.lines()
                .any(|l| l == format!("switchboard_document_stale{{document=\"{doc}\"}} {value}"))
        };
        assert!(stale(&text, "notes/refund-faq-2024.txt", "1"), "{text}");
        assert!(stale(&text, "policies/refund-policy.md", "0"), "{text}");
        assert!(stale(&text, "notes/undated.txt", "0"), "{text}");
        assert!(text.contains(&format!(
            "switchboard_document_last_modified_timestamp_seconds{{document=\"policies/refund-policy.md\"}} {}",
            now - 300 * day
        )));
        // Every served document's retrieval counter and the search count exist at zero.
        assert!(
            text.contains(
                "switchboard_document_retrievals_total{document=\"notes/undated.txt\"} 0"
            )
        );
        assert!(text.contains("switchboard_retrieval_stage_seconds_count{stage=\"total\"} 0"));
        // 100 days later the 2026 policy is past its year too.
        metrics.refresh_staleness(now + 100 * day);
        assert!(stale(&metrics.encode(), "policies/refund-policy.md", "1"));
        // A new generation replaces the documents of both gauges (the retrieval counter of a
        // document that left keeps its count, as counters do).
        metrics.serving_documents(vec![doc("policies/refund-policy.md", Some(now), policy)]);
        let text = metrics.render();
        assert!(
            !text.lines().any(|l| l.contains("refund-faq-2024")
                && (l.starts_with("switchboard_document_stale")
                    || l.starts_with("switchboard_document_last_modified"))),
            "{text}"
        );
        assert!(stale(&text, "policies/refund-policy.md", "0"));
    }

    fn text_has(text: &str, name: &str, suffix: &str) -> bool {
        text.lines()
            .any(|l| l.starts_with(name) && l.ends_with(suffix))
    }
}
