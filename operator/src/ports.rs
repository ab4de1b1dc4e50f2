//! The ports of the controllers: what they read from outside the API server, as traits with
//! the data they exchange. Implementations live beside what they talk to (Prometheus in
//! [`crate::observe`], the runtime's admin API in [`crate::outcomes`], artifact stores in
//! [`crate::adapter_patch::artifact`]); tests use [`crate::fakes`].

use std::{collections::BTreeMap, fmt, future::Future, pin::Pin, time::Duration};

use serde::Deserialize;
use switchboard_analysis::{CupedArm, ExperimentUnits};
use switchboard_artifact::oci::Credentials;
use switchboard_crds::{AdapterPatchSpec, Metric};

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One sample of an instant query.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Its labels (empty after `sum(...)`).
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// Where outcome counts come from.
pub trait MetricsSource: Send + Sync + fmt::Debug {
    /// Evaluates an instant query. `Ok(vec![])` when no series matched; `Err(reason)` when the
    /// backend is unreachable or refuses the query.
    fn query<'a>(&'a self, promql: &'a str) -> BoxFuture<'a, Result<Vec<Sample>, String>>;
}

/// Result of the controller's artifact check of the spec's version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArtifactCheck {
    /// Not checked yet (download or digest check in progress).
    Pending,
    /// Digest and `adapter_config.json` match the spec.
    Verified,
    /// Unusable; `reason` is a condition reason (`DigestMismatch`, `ArtifactUnavailable`, ...).
    Failed {
        /// Condition reason.
        reason: String,
        /// Sentence for the condition and Event.
        message: String,
    },
}

/// Checks an AdapterPatch's artifact.
pub trait ArtifactChecker: Send + Sync + fmt::Debug {
    /// The check of `spec.artifact` for `spec`; `credentials` are the registry credentials of
    /// `spec.artifact.pullSecretRef` (empty without one).
    fn check<'a>(
        &'a self,
        spec: &'a AdapterPatchSpec,
        credentials: &'a Credentials,
    ) -> BoxFuture<'a, ArtifactCheck>;

    /// Releases the cached copy of a digest no version needs any more (no-op without a cache).
    fn release(&self, _sha256_hex: &str) {}
}

/// What the Experiment analysis asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct CupedRequest {
    /// Namespace of the Router.
    pub namespace: String,
    /// The Router.
    pub router: String,
    /// The Experiment.
    pub experiment: String,
    /// The metric compared.
    pub metric: Metric,
    /// The pre-period covariate.
    pub covariate: Metric,
    /// When the experiment started (Unix seconds).
    pub started_at: i64,
    /// Length of the pre-period.
    pub preperiod: Duration,
    /// Only interactions before this (Unix seconds) count for the metric: those whose outcomes
    /// have settled.
    pub settled_before: i64,
}

/// What the Experiment analysis asks for every time: the arms' units and the primary metric per
/// unit.
#[derive(Clone, Debug, PartialEq)]
pub struct UnitsRequest {
    /// Namespace of the Router.
    pub namespace: String,
    /// The Router.
    pub router: String,
    /// The Experiment.
    pub experiment: String,
    /// Metrics with their settle windows.
    pub metrics: Vec<(Metric, Duration)>,
    /// Request attributes to break the first metric down by.
    pub segments: Vec<String>,
    /// When the experiment started (Unix seconds).
    pub started_at: i64,
    /// The analysis' now (Unix seconds).
    pub until: i64,
}

/// What the Router controller asks for its permanent holdout: both groups since the start.
#[derive(Clone, Debug, PartialEq)]
pub struct HoldoutRequest {
    /// Namespace of the Router.
    pub namespace: String,
    /// The Router.
    pub router: String,
    /// Metrics with their settle windows.
    pub metrics: Vec<(Metric, Duration)>,
    /// When the holdout started (Unix seconds).
    pub started_at: i64,
    /// The analysis' now (Unix seconds).
    pub until: i64,
}

/// What the KnowledgeBase controller asks a Router's runtime for.
#[derive(Clone, Debug, PartialEq)]
pub struct CoverageRequest {
    /// Namespace of the Router.
    pub namespace: String,
    /// The Router.
    pub router: String,
    /// How far back (`spec.coverage.window`).
    pub window: Duration,
    /// Queries a topic needs (`spec.coverage.minQueries`).
    pub min_queries: u64,
    /// Gaps listed, at most.
    pub limit: usize,
}

/// One gap of `GET /v1/coverage-gaps` (the fields the operator reads of the runtime's report).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportedGap {
    /// The query closest to the topic's centroid (never written into status).
    pub query: String,
    /// The newest interaction asking it (an id).
    #[serde(default)]
    pub interaction: String,
    /// Gap signals (escalated, nothing found, refused) of the topic.
    pub volume: u64,
    /// `volume` over every interaction of the Router in the window.
    pub share: f64,
    /// Of those, escalated.
    pub escalated: u64,
    /// Documents retrieved for the topic's queries, most often first.
    #[serde(default)]
    pub documents: Vec<ReportedDocument>,
    /// Newest one (Unix seconds).
    pub last_seen: i64,
}

/// A document retrieved for a gap's queries.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportedDocument {
    /// Document id.
    pub document: String,
}

/// The runtime's coverage-gap report, as the operator reads it.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CoverageReport {
    /// Every interaction of the Router in the window.
    pub interactions: u64,
    /// Gap signals among them.
    pub signals: u64,
    /// Gaps of at least `minQueries`, largest first (at most the limit asked).
    pub gaps: Vec<ReportedGap>,
}

/// Where per-unit outcomes and coverage gaps come from.
pub trait OutcomeSource: Send + Sync + fmt::Debug {
    /// Per-arm units and per-unit metric moments; `Err(reason)` when the runtime or its store
    /// cannot answer.
    fn units<'a>(
        &'a self,
        request: &'a UnitsRequest,
    ) -> BoxFuture<'a, Result<ExperimentUnits, String>>;

    /// The Router holdout's units against everyone else's (groups `holdout` and `exposed`);
    /// `Err(reason)` when the runtime or its store cannot answer.
    fn holdout_units<'a>(
        &'a self,
        request: &'a HoldoutRequest,
    ) -> BoxFuture<'a, Result<ExperimentUnits, String>>;

    /// Per-arm CUPED statistics; `Err(reason)` when the runtime or its store cannot answer.
    fn cuped<'a>(
        &'a self,
        request: &'a CupedRequest,
    ) -> BoxFuture<'a, Result<BTreeMap<String, CupedArm>, String>>;

    /// The Router's coverage gaps; `Err(reason)` when the runtime or its store cannot answer.
    fn coverage_gaps<'a>(
        &'a self,
        request: &'a CoverageRequest,
    ) -> BoxFuture<'a, Result<CoverageReport, String>>;
}
