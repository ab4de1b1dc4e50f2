//! Prometheus metrics of the runtime (`/metrics`). Names follow `switchboard_<noun>_<unit>`; label
//! sets are small and bounded (stage, outcome, reason, and the knowledge base's own documents).
use std::collections::HashMap;
use std::sync::Mutex;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use switchboard_index::{SearchResponse, StageTimings};

/// Buckets for stage latencies: 0.25 ms .. 2.5 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

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
        for collector in [
            Box::new(stage_seconds.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(requests.clone()),
            Box::new(failures.clone()),
            Box::new(rerank_outcomes.clone()),
            Box::new(document_hits.clone()),
            Box::new(concentration.clone()),
            Box::new(generation_info.clone()),
            Box::new(chunks.clone()),
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
        })
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

    /// The text exposition of every family.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
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
}
