//! `Router`: the serving entry point (small model + adapters, large model, routing policy).

#[cfg(feature = "kube")]
use k8s_openapi::{
    api::core::v1::ResourceRequirements,
    api::networking::v1::NetworkPolicyPeer,
    apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, LabelSelectorRequirement, Time},
};
#[cfg(feature = "kube")]
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    common::SecretKeyRef,
    units::{GoDuration, Percent},
};
#[cfg(feature = "kube")]
use crate::{
    common::{Errors, ObjectRef, Validate, ValidationErrors},
    units::{duration_at_least_rule, percent_rule},
};

/// Messages of the Router admission rules (shared by the CEL rules and [`Validate`]).
pub mod messages {
    /// `spec.outcomeStore.retention`.
    pub const OUTCOME_RETENTION: &str =
        "outcomeStore.retention must be at least 168h (the interaction tokens' lifetime)";
    /// `spec.largeModel`.
    pub const ONE_LARGE_MODEL: &str = "largeModel: set exactly one of local or endpoint";
    /// `spec.holdout.share`.
    pub const HOLDOUT_SHARE: &str = "holdout.share must be above 0% and at most 20%";
    /// `spec.holdout.duration`.
    pub const HOLDOUT_DURATION: &str = "holdout.duration must be a duration of at least 1m";
    /// `spec.holdout.metrics`.
    pub const HOLDOUT_METRICS: &str = "holdout.metrics must name 1 to 4 distinct metrics measured on served answers (not shadowDivergence)";
    /// `spec.holdout.settleAfter`.
    pub const HOLDOUT_SETTLE: &str = "holdout.settleAfter must be a duration like 72h";
    /// `spec.holdout` once set.
    pub const HOLDOUT_IMMUTABLE: &str = "holdout cannot change while it exists: remove it (ending it) and add a new one, which pins the versions stable at its start";
    /// `spec.largeModel.endpoint.url`.
    pub const ENDPOINT_URL: &str = "largeModel.endpoint.url must be an http:// or https:// URL";
    /// `spec.largeModel.endpoint`.
    pub const PLAINTEXT_CREDENTIALS: &str = "largeModel.endpoint: an endpoint with a secretRef receives the API key, so its url must be https://, or http://<service>.<namespace>.svc[.cluster.local] with allowPlaintextInCluster: true";
    /// `spec.privacy.redact[*].pattern`.
    pub const REDACT_PATTERN: &str = "privacy.redact[].pattern must be a regular expression that matches neither the empty string nor its placeholder";
    /// `spec.exploration.share`.
    pub const EXPLORATION_SHARE: &str = "exploration.share must be between 0% and 50%";
    /// `spec.generation.grounding.minEvidenceScore`.
    pub const MIN_EVIDENCE_SCORE: &str =
        "generation.grounding.minEvidenceScore must be between 0 and 1";
    /// `spec.generation.grounding.evidenceSentences`.
    pub const EVIDENCE_SENTENCES: &str =
        "generation.grounding.evidenceSentences must be between 1 and 8";
}

/// A Router: the serving entry point. A small local model with LoRA adapters (selected from
/// AdapterPatches by label), a large model (local or an OpenAI-compatible endpoint), and the policy
/// that picks between them per query. References one KnowledgeBase.
// `printcolumn(...)` entries repeat `type_ = ...`, which clippy mistakes for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[cfg(feature = "kube")]
#[cfg_attr(feature = "kube", derive(CustomResource, KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "kube",
    kube(
        group = "switchboard.dev",
        version = "v1alpha1",
        kind = "Router",
        plural = "routers",
        singular = "router",
        shortname = "rt",
        category = "switchboard",
        namespaced,
        status = "RouterStatus",
        selectable = ".spec.knowledgeBaseRef.name",
        derive = "PartialEq",
        doc = "A Router: the serving entry point; small model with adapters, large model, and the per-query routing policy, over one KnowledgeBase.",
        scale(
            spec_replicas_path = ".spec.replicas",
            status_replicas_path = ".status.replicas",
            label_selector_path = ".status.selector"
        ),
        printcolumn(
            name = "KnowledgeBase",
            type_ = "string",
            json_path = ".spec.knowledgeBaseRef.name"
        ),
        printcolumn(
            name = "Ready",
            type_ = "string",
            json_path = ".status.conditions[?(@.type==\"Ready\")].status"
        ),
        printcolumn(
            name = "Replicas",
            type_ = "integer",
            json_path = ".status.readyReplicas",
            description = "Ready runtime pods"
        ),
        printcolumn(
            name = "Small",
            type_ = "string",
            json_path = ".status.routedShare.small",
            description = "Share of queries served by the small model"
        ),
        printcolumn(
            name = "Large",
            type_ = "string",
            json_path = ".status.routedShare.large",
            description = "Share of queries served by the large model"
        ),
        printcolumn(
            name = "Difficulty",
            type_ = "string",
            json_path = ".status.difficulty.source",
            description = "HandSet or Fitted difficulty weights",
            priority = 1
        ),
        printcolumn(
            name = "Holdout",
            type_ = "string",
            json_path = ".status.holdout.phase",
            description = "The permanent holdout: Running or Ended",
            priority = 1
        ),
        printcolumn(
            name = "Age",
            type_ = "date",
            json_path = ".metadata.creationTimestamp"
        )
    )
)]
#[serde(rename_all = "camelCase")]
pub struct RouterSpec {
    /// The KnowledgeBase to retrieve from.
    pub knowledge_base_ref: ObjectRef,
    /// The small model and its adapters.
    pub small_model: SmallModel,
    /// The large model, for hard queries.
    pub large_model: LargeModel,
    /// Difficulty estimation: which queries go to the large model.
    #[serde(default)]
    pub difficulty: Difficulty,
    /// Per-query adapter selection.
    #[serde(default)]
    pub adapter_selection: AdapterSelection,
    /// When to rewrite a query before retrieval.
    #[serde(default)]
    pub query_rewrite: QueryRewrite,
    /// Hard queries served by the small model anyway, so its training data is not only easy cases.
    #[serde(default)]
    pub exploration: Exploration,
    /// Limits for shadow requests (candidate adapters in their Shadow stage).
    #[serde(default)]
    pub shadow: ShadowLimits,
    /// Generation settings.
    #[serde(default)]
    pub generation: Generation,
    /// Where interactions and outcomes are stored: the feedback replay guard, the per-unit data
    /// of CUPED experiments and the training data of the flywheel.
    #[serde(default)]
    pub outcome_store: OutcomeStore,
    /// Who may call the runtime's public API (answers, retrieval, feedback, chat completions,
    /// gRPC): the NetworkPolicy of the runtime pods and, optionally, client bearer tokens. The
    /// admin API is never exposed by the Router's Service and answers the operator only.
    #[serde(default)]
    pub access: Access,
    /// What is removed from customers' text before it is stored (queries, rewrites, answers):
    /// the built-in detectors (emails, phone, card and IBAN numbers, keys and passwords) and
    /// these patterns.
    #[serde(default)]
    pub privacy: Privacy,
    /// Runtime pods.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,
    /// Runtime image; default: the image matching the operator's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub image: Option<String>,
    /// Resources of the runtime container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// A permanent holdout of the Router's units: they receive no canary, no promotion and no
    /// new lineage of any AdapterPatch, and no Experiment, while it runs; `status.holdout`
    /// compares them with everyone else (the cumulative effect of every change shipped since).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "kube", x_kube(validation = Rule::new("self == oldSelf").message(messages::HOLDOUT_IMMUTABLE)))]
    pub holdout: Option<RouterHoldout>,
}

/// A Router-level permanent holdout (the seed's "long-run cumulative" evaluation): per-change
/// experiments and canaries each measure one change against the versions of the day; the
/// holdout's units stay on the adapter versions that were stable when it started
/// (`status.holdout.pinned`) for `duration`, so their outcomes against everyone else's measure
/// every change shipped since, together.
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouterHoldout {
    /// Share of units held out, above 0% and at most 20%. A unit is the request's most durable
    /// id (`userId`, else `accountId`, else `conversationId`); requests with none are never held
    /// out.
    #[cfg_attr(feature = "kube", x_kube(validation = Rule::new(percent_rule("self", 0.0, 20.0, false)).message(messages::HOLDOUT_SHARE)))]
    pub share: Percent,
    /// How long it runs from its start (`status.holdout.startedAt`); then its units rejoin
    /// everyone else and the status keeps the final comparison.
    #[serde(default = "default_holdout_duration")]
    #[cfg_attr(feature = "kube", x_kube(validation = Rule::new(duration_at_least_rule("self", "1m")).message(messages::HOLDOUT_DURATION)))]
    pub duration: GoDuration,
    /// Metrics compared, per unit (delta method), held out against exposed.
    #[serde(default = "default_holdout_metrics")]
    #[schemars(length(min = 1, max = 4))]
    #[cfg_attr(feature = "kube", x_kube(validation = Rule::new("self.all(m, m != 'shadowDivergence') && self.all(m, self.exists_one(o, o == m))").message(messages::HOLDOUT_METRICS)))]
    pub metrics: Vec<crate::Metric>,
    /// How old an interaction must be to count, so its outcome has had time to arrive (both
    /// groups alike). Default: `72h` for the outcome metrics, `0s` for the answer-time ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "kube", x_kube(validation = Rule::new(duration_at_least_rule("self", "0s")).message(messages::HOLDOUT_SETTLE)))]
    pub settle_after: Option<GoDuration>,
}

fn default_holdout_duration() -> GoDuration {
    GoDuration::from_secs(2160 * 3600)
}

fn default_holdout_metrics() -> Vec<crate::Metric> {
    vec![crate::Metric::EscalationRate]
}

impl RouterHoldout {
    /// The settle window of `metric` in force.
    pub fn settle(&self, metric: crate::Metric) -> std::time::Duration {
        self.settle_after
            .as_ref()
            .map_or_else(|| metric.default_settle(), GoDuration::duration)
    }
}

#[cfg(feature = "kube")]
fn default_replicas() -> i32 {
    1
}

#[cfg(feature = "kube")]
/// The small model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SmallModel {
    /// Path or URI of the base model as seen by the runtime: a Hugging Face safetensors directory
    /// or a GGUF file of a Llama-family model. AdapterPatches must name the same `baseModel`.
    #[schemars(length(min = 1, max = 2048))]
    pub model: String,
    /// AdapterPatches (same namespace, same base model) this Router may load. Unset: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter_selector: Option<LabelSelector>,
    /// Most adapters kept loaded at once.
    #[serde(default = "default_max_active_adapters")]
    #[schemars(range(min = 1, max = 32))]
    pub max_active_adapters: i32,
    /// Answers admitted to the small model at once, generating or waiting, per runtime pod.
    /// Beyond it an answer is refused at once (HTTP 429 with `Retry-After`, gRPC `UNAVAILABLE`)
    /// instead of queueing without bound: latency stays bounded under a burst, and the caller
    /// (or a load balancer) retries elsewhere.
    #[serde(default = "default_small_max_queue_depth")]
    #[schemars(range(min = 1, max = 10_000))]
    pub max_queue_depth: i32,
}

#[cfg(feature = "kube")]
fn default_max_active_adapters() -> i32 {
    8
}

#[cfg(feature = "kube")]
fn default_small_max_queue_depth() -> i32 {
    16
}

/// The large model: exactly one of `local` or `endpoint`.
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new("has(self.local) != has(self.endpoint)").message(messages::ONE_LARGE_MODEL)))]
pub struct LargeModel {
    /// A second local model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalModel>,
    /// An external OpenAI-compatible chat-completions endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<Endpoint>,
    /// Requests waiting for the large model above which hard queries are served by the small
    /// model instead (queue-depth-aware routing).
    #[serde(default = "default_max_queue_depth")]
    #[schemars(range(min = 0, max = 100_000))]
    pub max_queue_depth: i32,
}

fn default_max_queue_depth() -> i32 {
    32
}

/// A local model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LocalModel {
    /// Path or URI of the model as seen by the runtime.
    #[schemars(length(min = 1, max = 2048))]
    pub model: String,
}

/// An external OpenAI-compatible endpoint.
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new(format!(
    "!has(self.secretRef) || self.url.startsWith('https://') || (has(self.allowPlaintextInCluster) && self.allowPlaintextInCluster && self.url.matches({}))",
    crate::units::cel_string(crate::common::IN_CLUSTER_HTTP_PATTERN)
)).message(messages::PLAINTEXT_CREDENTIALS)))]
pub struct Endpoint {
    /// Base URL (e.g. `https://llm.internal/v1`).
    #[schemars(length(min = 1, max = 2048))]
    #[cfg_attr(feature = "kube", x_kube(validation = Rule::new("self.matches('^https?://[^\\\\s/]+')").message(messages::ENDPOINT_URL)))]
    pub url: String,
    /// Model name sent in requests.
    #[schemars(length(min = 1, max = 256))]
    pub model: String,
    /// Secret key holding the API key (sent as a bearer token). The url must then be
    /// `https://` (or an in-cluster Service with `allowPlaintextInCluster`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
    /// Send the API key over plain `http://` to an in-cluster Service
    /// (`http://<service>.<namespace>.svc[.cluster.local]`), e.g. a model server inside a service
    /// mesh that encrypts pod-to-pod traffic. Without it an endpoint with a `secretRef` must use
    /// `https://`; other hosts are refused either way.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_plaintext_in_cluster: bool,
    /// Per-request timeout.
    #[serde(default = "default_endpoint_timeout")]
    pub timeout: GoDuration,
}

fn default_endpoint_timeout() -> GoDuration {
    GoDuration::from_secs(30)
}

/// Difficulty estimation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Difficulty {
    /// Probability (0..1) that the small model's answer is unacceptable, above which the query
    /// goes to the large model (unless its queue is full); a calibrated probability when
    /// `model` was fitted on outcomes, a score of the hand-set weights otherwise.
    #[serde(default = "default_difficulty_threshold")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub threshold: f64,
    /// The difficulty model fitted on this Router's outcomes (`switchboard-runtime router
    /// fit` writes it with the threshold it chose); without it the runtime's hand-set weights
    /// score queries and the threshold is not calibrated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<DifficultyModel>,
}

fn default_difficulty_threshold() -> f64 {
    0.5
}

impl Default for Difficulty {
    fn default() -> Self {
        Self {
            threshold: default_difficulty_threshold(),
            model: None,
        }
    }
}

/// A fitted difficulty model: logistic weights over the query features (docs/runtime.md,
/// "Route") and how it was calibrated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DifficultyModel {
    /// The weights.
    pub weights: DifficultyWeights,
    /// Where they come from and how well they predicted held-out outcomes.
    pub calibration: Calibration,
}

/// Logistic weights of "the small model's answer is unacceptable" over the query features,
/// each feature scaled to 0..1.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DifficultyWeights {
    /// Intercept.
    pub bias: f64,
    /// Words / 40, capped at 1.
    pub length: f64,
    /// (clauses - 1) / 4, capped.
    pub clauses: f64,
    /// Negations and qualifications / 2, capped.
    pub qualifications: f64,
    /// The query names identifiers the KnowledgeBase knows.
    pub known_identifiers: f64,
    /// The query names identifier-like tokens the KnowledgeBase has never seen.
    pub unknown_identifiers: f64,
    /// Distinct documents near the top passage (the answer spans documents).
    pub multi_document: f64,
    /// 1 - cosine similarity of the query and the best passage.
    pub weak_match: f64,
}

impl DifficultyWeights {
    /// From bias first, then the features in declaration order ([`Self::to_array`]'s order).
    pub fn from_array(w: [f64; 8]) -> Self {
        Self {
            bias: w[0],
            length: w[1],
            clauses: w[2],
            qualifications: w[3],
            known_identifiers: w[4],
            unknown_identifiers: w[5],
            multi_document: w[6],
            weak_match: w[7],
        }
    }

    /// Bias first, then the features in declaration order.
    pub fn to_array(&self) -> [f64; 8] {
        [
            self.bias,
            self.length,
            self.clauses,
            self.qualifications,
            self.known_identifiers,
            self.unknown_identifiers,
            self.multi_document,
            self.weak_match,
        ]
    }
}

/// How a difficulty model was fitted and calibrated; shown in the Router's status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Calibration {
    /// When it was fitted (RFC 3339).
    #[schemars(extend("format" = "date-time"))]
    pub fitted_at: String,
    /// Outcomes it was fitted on.
    #[schemars(range(min = 0))]
    pub train_examples: i64,
    /// Held-out outcomes it was measured on.
    #[schemars(range(min = 0))]
    pub held_out_examples: i64,
    /// Share of held-out outcomes whose acceptability it predicted at the threshold.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub held_out_accuracy: f64,
    /// Held-out Brier score of its probabilities (0 is perfect; a constant 0.5 scores 0.25).
    #[schemars(range(min = 0.0, max = 1.0))]
    pub brier_score: f64,
    /// Share of held-out queries the threshold sends to the large model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub large_share: Option<f64>,
}

/// Adapter selection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdapterSelection {
    /// Adapters applied per query. Deprecated: only `1` (the most similar domain's adapter) is
    /// supported; the runtime applies one LoRA adapter per request, and `2` was accepted
    /// without effect until v0.1, so it is refused now and the field leaves the API in
    /// `v1beta1` (docs/api-versioning.md).
    #[serde(default = "default_adapter_top_k")]
    #[schemars(range(min = 1, max = 1))]
    pub top_k: i32,
    /// Cosine similarity (0..1) of query and domain centroid below which no adapter is applied.
    #[serde(default = "default_min_similarity")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub min_similarity: f64,
}

fn default_adapter_top_k() -> i32 {
    1
}
fn default_min_similarity() -> f64 {
    0.3
}

impl Default for AdapterSelection {
    fn default() -> Self {
        Self {
            top_k: default_adapter_top_k(),
            min_similarity: default_min_similarity(),
        }
    }
}

/// Query-rewrite policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RewritePolicy {
    /// Never rewrite.
    Never,
    /// Rewrite only long or vague queries with low vocabulary overlap with the KnowledgeBase.
    #[default]
    Auto,
    /// Always rewrite.
    Always,
}

/// When to rewrite queries.
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryRewrite {
    /// `Never`, `Auto` (default) or `Always`.
    #[serde(default)]
    pub policy: RewritePolicy,
    /// `Auto`: queries shorter than this many words are kept (short precise queries retrieve
    /// well as written).
    #[serde(default = "default_min_words")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_words: i32,
    /// `Auto`: queries whose words overlap the KnowledgeBase vocabulary more than this are kept.
    #[serde(default = "default_max_vocabulary_overlap")]
    pub max_vocabulary_overlap: Percent,
}

fn default_min_words() -> i32 {
    12
}
fn default_max_vocabulary_overlap() -> Percent {
    Percent::from_fraction(0.5)
}

impl Default for QueryRewrite {
    fn default() -> Self {
        Self {
            policy: RewritePolicy::default(),
            min_words: default_min_words(),
            max_vocabulary_overlap: default_max_vocabulary_overlap(),
        }
    }
}

/// Exploration.
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Exploration {
    /// Share of queries routed large that are served by the small model instead (0%..50%).
    #[serde(default = "default_exploration_share")]
    #[cfg_attr(feature = "kube", x_kube(validation = Rule::new(percent_rule("self", 0.0, 50.0, true)).message(messages::EXPLORATION_SHARE)))]
    pub share: Percent,
}

fn default_exploration_share() -> Percent {
    Percent::from_fraction(0.05)
}

impl Default for Exploration {
    fn default() -> Self {
        Self {
            share: default_exploration_share(),
        }
    }
}

/// The outcome store of a Router's runtime pods.
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutcomeStore {
    /// A Secret key holding a PostgreSQL URL (`postgres://user:password@host:5432/database`),
    /// shared by every replica: feedback is then counted once whichever replica receives it, and
    /// experiments read every replica's units. Unset: an SQLite file in each pod (an `emptyDir`:
    /// kept across container restarts, lost with the pod), which only one replica can trust.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<SecretKeyRef>,
    /// How long interactions and outcomes are kept (at least the interaction tokens' lifetime,
    /// 168h, so feedback for a pruned interaction can never count again).
    #[serde(default = "default_outcome_retention")]
    #[cfg_attr(feature = "kube", x_kube(validation = Rule::new(duration_at_least_rule("self", "168h")).message(messages::OUTCOME_RETENTION)))]
    pub retention: GoDuration,
}

fn default_outcome_retention() -> GoDuration {
    GoDuration::from_secs(90 * 24 * 3600)
}

impl Default for OutcomeStore {
    fn default() -> Self {
        Self {
            postgres: None,
            retention: default_outcome_retention(),
        }
    }
}

/// Shadow request limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShadowLimits {
    /// Shadow requests in flight per pod; beyond it mirrored requests are dropped (and counted),
    /// never queued ahead of real traffic.
    #[serde(default = "default_shadow_concurrency")]
    #[schemars(range(min = 0, max = 64))]
    pub max_concurrent: i32,
}

fn default_shadow_concurrency() -> i32 {
    2
}

impl Default for ShadowLimits {
    fn default() -> Self {
        Self {
            max_concurrent: default_shadow_concurrency(),
        }
    }
}

/// Generation settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Generation {
    /// Most tokens generated per answer. Answers are one to three sentences and generation
    /// also stops at the end of the answer (a blank line); the default leaves room for three.
    #[serde(default = "default_max_new_tokens")]
    #[schemars(range(min = 1, max = 8192))]
    pub max_new_tokens: i32,
    /// How answers are grounded in the retrieved passages.
    #[serde(default)]
    pub grounding: Grounding,
}

fn default_max_new_tokens() -> i32 {
    96
}

impl Default for Generation {
    fn default() -> Self {
        Self {
            max_new_tokens: default_max_new_tokens(),
            grounding: Grounding::default(),
        }
    }
}

/// Grounding: the passages' sentences are scored against the question (the evidence); the best
/// ones are all the model sees, its answer is checked sentence by sentence against the facts it
/// cites, and the runtime answers generatively, extractively (quoting the evidence) or refuses
/// (docs/runtime.md, "Grounded answers").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Grounding {
    /// `Generative` (default): the model answers from the evidence and its answer is served when
    /// it passes the grounding check, else the extractive answer. `Extractive`: the model is
    /// not called; the best evidence sentences are the answer.
    #[serde(default)]
    pub mode: GroundingMode,
    /// Answerability: the score (0..1, the evidence model's probability that a sentence answers
    /// the question) the best evidence sentence must reach, else the runtime refuses without a
    /// model call. The default is calibrated on the sample knowledge base's golden set
    /// (`switchboard-runtime eval --answers`, docs/evaluation.md); raise it to refuse more.
    #[serde(default = "default_min_evidence_score")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub min_evidence_score: f64,
    /// Evidence sentences given to the model (1-8).
    #[serde(default = "default_evidence_sentences")]
    #[schemars(range(min = 1, max = 8))]
    pub evidence_sentences: i32,
}

/// How answers are made from the evidence.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum GroundingMode {
    /// Generate from the evidence, check, fall back to the extractive answer.
    #[default]
    Generative,
    /// Quote the best evidence sentences; no model call.
    Extractive,
}

fn default_min_evidence_score() -> f64 {
    0.69
}

fn default_evidence_sentences() -> i32 {
    3
}

impl Default for Grounding {
    fn default() -> Self {
        Self {
            mode: GroundingMode::default(),
            min_evidence_score: default_min_evidence_score(),
            evidence_sentences: default_evidence_sentences(),
        }
    }
}

#[cfg(feature = "kube")]
impl RouterSpec {
    /// Checks the rules that compare an update with the stored object: a holdout does not
    /// change while it exists (removing it, or adding one, is allowed).
    pub fn validate_update(&self, old: &Self) -> Result<(), ValidationErrors> {
        let mut errors = Errors::default();
        if let (Some(new), Some(old)) = (&self.holdout, &old.holdout) {
            errors.check(new == old, "spec.holdout", messages::HOLDOUT_IMMUTABLE);
        }
        errors.finish()
    }
}

#[cfg(feature = "kube")]
impl Validate for RouterSpec {
    fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = Errors::default();
        errors.check(
            self.large_model.local.is_some() != self.large_model.endpoint.is_some(),
            "spec.largeModel",
            messages::ONE_LARGE_MODEL,
        );
        if let Some(endpoint) = &self.large_model.endpoint {
            let ok = ["http://", "https://"].iter().any(|scheme| {
                endpoint.url.strip_prefix(scheme).is_some_and(|rest| {
                    rest.chars()
                        .next()
                        .is_some_and(|c| !c.is_whitespace() && c != '/')
                })
            });
            errors.check(ok, "spec.largeModel.endpoint.url", messages::ENDPOINT_URL);
            errors.check(
                endpoint.secret_ref.is_none()
                    || crate::common::credential_url_allowed(
                        &endpoint.url,
                        endpoint.allow_plaintext_in_cluster,
                    ),
                "spec.largeModel.endpoint",
                messages::PLAINTEXT_CREDENTIALS,
            );
        }
        errors.check(
            self.exploration.share.percent() <= 50.0,
            "spec.exploration.share",
            messages::EXPLORATION_SHARE,
        );
        errors.check(
            self.outcome_store.retention.duration().as_secs() >= 168 * 3600,
            "spec.outcomeStore.retention",
            messages::OUTCOME_RETENTION,
        );
        let grounding = &self.generation.grounding;
        errors.check(
            (0.0..=1.0).contains(&grounding.min_evidence_score),
            "spec.generation.grounding.minEvidenceScore",
            messages::MIN_EVIDENCE_SCORE,
        );
        errors.check(
            (1..=8).contains(&grounding.evidence_sentences),
            "spec.generation.grounding.evidenceSentences",
            messages::EVIDENCE_SENTENCES,
        );
        for (i, p) in self.privacy.redact.iter().enumerate() {
            if let Some(problem) = p.problem() {
                errors.check(
                    false,
                    format!("spec.privacy.redact[{i}].pattern"),
                    &format!("{}: {problem}", messages::REDACT_PATTERN),
                );
            }
        }
        if let Some(h) = &self.holdout {
            errors.check(
                h.share.percent() > 0.0 && h.share.percent() <= 20.0,
                "spec.holdout.share",
                messages::HOLDOUT_SHARE,
            );
            errors.check(
                h.duration.duration().as_secs() >= 60,
                "spec.holdout.duration",
                messages::HOLDOUT_DURATION,
            );
            let distinct: std::collections::BTreeSet<_> = h.metrics.iter().collect();
            errors.check(
                (1..=4).contains(&h.metrics.len())
                    && distinct.len() == h.metrics.len()
                    && !h.metrics.contains(&crate::Metric::ShadowDivergence),
                "spec.holdout.metrics",
                messages::HOLDOUT_METRICS,
            );
        }
        errors.finish()
    }
}

/// Personal data the runtime removes before storing (docs/security.md).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Privacy {
    /// The Router's own patterns, applied after the built-in detectors: each match becomes
    /// `[<name>]` in what is stored, exported and reported (e.g. customer numbers, order ids).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub redact: Vec<RedactPattern>,
}

/// One redaction pattern.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedactPattern {
    /// The placeholder's name: matches become `[<name>]`.
    #[schemars(length(min = 1, max = 32), pattern(r"^[a-z][a-z0-9-]*$"))]
    pub name: String,
    /// A regular expression (Rust `regex` syntax, no look-around), e.g. `\bACME-[0-9]{6}\b`.
    #[schemars(length(min = 1, max = 512))]
    pub pattern: String,
}

impl RedactPattern {
    /// `[<name>]`, what a match is replaced with.
    pub fn placeholder(&self) -> String {
        format!("[{}]", self.name)
    }

    /// Why the pattern cannot be used, if it cannot: it does not compile, matches the empty
    /// string (it would fill the text with placeholders) or its own placeholder (redacting twice
    /// would not give the same text).
    pub fn problem(&self) -> Option<String> {
        let re = match regex::Regex::new(&self.pattern) {
            Ok(re) => re,
            Err(e) => return Some(format!("not a regular expression: {e}")),
        };
        if re.is_match("") {
            Some("matches the empty string".to_owned())
        } else if re.is_match(&self.placeholder()) {
            Some(format!(
                "matches its own placeholder {}",
                self.placeholder()
            ))
        } else {
            None
        }
    }
}

#[cfg(feature = "kube")]
/// Access to a Router's runtime pods (docs/security.md).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Access {
    /// Bearer tokens the public API requires: a Secret key holding one token per line (at least
    /// 16 characters each; any line is accepted, so a rotation adds a line, moves the clients,
    /// then removes the old one). Unset: the public API needs no token, and the NetworkPolicy
    /// alone decides who can call it. The chart's admission policy requires the Router's author
    /// to be allowed to read the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_tokens: Option<SecretKeyRef>,
    /// Who may reach the public ports (HTTP 8080, gRPC 50051): NetworkPolicy peers, e.g. the
    /// helpdesk's pods or the monitoring namespace that scrapes `/metrics`. Empty: every pod of
    /// the Router's namespace. The operator always reaches the admin port (8081); nothing else
    /// does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub allow_from: Vec<NetworkPolicyPeer>,
    /// Create the NetworkPolicy (`<router>-runtime`). Turn off only where another policy layer
    /// (a service mesh's) decides who reaches the pods: the admin port is then open to the pod
    /// network, guarded by its token alone.
    #[serde(default = "enabled")]
    pub network_policy: bool,
}

#[cfg(feature = "kube")]
fn enabled() -> bool {
    true
}

#[cfg(feature = "kube")]
impl Default for Access {
    fn default() -> Self {
        Self {
            client_tokens: None,
            allow_from: Vec::new(),
            network_policy: true,
        }
    }
}

#[cfg(feature = "kube")]
/// Observed state of a Router.
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouterStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing`, `Degraded`, `RuntimeConfigApplied`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "kube", x_kube(merge_strategy = ListMerge::Map(vec!["type".into()])))]
    pub conditions: Vec<Condition>,
    /// Runtime pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Ready runtime pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Label selector of the runtime pods (for the scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Share of queries served by each model over the last hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routed_share: Option<RoutedShare>,
    /// Hash of the RuntimeConfig the pods should run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_config_hash: Option<String>,
    /// KnowledgeBase index generation compiled into the RuntimeConfig.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knowledge_base_generation: Option<i64>,
    /// Adapters compiled into the RuntimeConfig.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active_adapters: Vec<ActiveAdapter>,
    /// Running Experiments compiled into the RuntimeConfig.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub experiments: Vec<String>,
    /// The permanent holdout (`spec.holdout`): its pinned versions and its comparison.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holdout: Option<HoldoutStatus>,
    /// The difficulty model in force and its calibration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub difficulty: Option<DifficultyStatus>,
}

/// Where the difficulty weights come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DifficultySource {
    /// The runtime's hand-set weights: the threshold is not calibrated.
    #[default]
    HandSet,
    /// `spec.difficulty.model`, fitted on outcomes.
    Fitted,
}

/// The difficulty model in force (`spec.difficulty`), as the runtime pods were configured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DifficultyStatus {
    /// `HandSet` or `Fitted`.
    pub source: DifficultySource,
    /// The threshold.
    pub threshold: f64,
    /// When the fitted model was fitted (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fitted_at: Option<String>,
    /// Its held-out accuracy at the threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_out_accuracy: Option<f64>,
    /// Its held-out Brier score.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brier_score: Option<f64>,
}

/// Whether the holdout still holds its units out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum HoldoutPhase {
    /// Its units stay on the pinned versions.
    #[default]
    Running,
    /// `duration` has passed: its units rejoin; the comparison is final.
    Ended,
}

/// A lineage's version as the holdout keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PinnedVersion {
    /// Lineage.
    pub lineage: String,
    /// The version that was stable when the holdout started.
    pub version: String,
}

/// The holdout's comparison on one metric: per-unit ratios (delta method), exposed minus held
/// out, on interactions old enough to have settled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HoldoutComparison {
    /// The metric.
    pub metric: crate::Metric,
    /// Its rate among the held-out units.
    pub holdout_rate: f64,
    /// Its rate among everyone else.
    pub exposed_rate: f64,
    /// `exposedRate - holdoutRate`: the cumulative effect of the changes shipped since the
    /// start.
    pub difference: f64,
    /// Lower bound of the 95% confidence interval of the difference.
    pub ci_low: f64,
    /// Upper bound.
    pub ci_high: f64,
    /// Two-sided p-value of no difference.
    pub p_value: f64,
}

#[cfg(feature = "kube")]
/// Observed state of the permanent holdout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HoldoutStatus {
    /// Running or Ended.
    pub phase: HoldoutPhase,
    /// When it started (its versions were pinned).
    pub started_at: Time,
    /// When it ends (`startedAt + duration`).
    pub ends_at: Time,
    /// The versions its units are served, per lineage; a lineage created since serves them no
    /// adapter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pinned: Vec<PinnedVersion>,
    /// Held-out units with interactions since the start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub units: Option<i64>,
    /// Every other unit of the Router with interactions since the start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_units: Option<i64>,
    /// Per metric: held out against exposed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub comparisons: Vec<HoldoutComparison>,
    /// When the comparison was last computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_analysis: Option<Time>,
    /// Why the comparison could not be updated, when it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Routed shares.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RoutedShare {
    /// Share served by the small model.
    pub small: Percent,
    /// Share served by the large model.
    pub large: Percent,
}

/// An adapter in the compiled RuntimeConfig.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActiveAdapter {
    /// AdapterPatch name.
    pub name: String,
    /// Lineage.
    pub lineage: String,
    /// Stable version.
    pub stable_version: String,
    /// Candidate version, while a rollout runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate_version: Option<String>,
    /// Percent of the lineage's traffic on the candidate.
    #[serde(default)]
    pub candidate_weight: i32,
}

#[cfg(feature = "kube")]
/// Whether `labels` match a Kubernetes label selector (`matchLabels` AND every
/// `matchExpressions` requirement). An empty selector matches everything.
pub fn selector_matches(
    selector: &LabelSelector,
    labels: &std::collections::BTreeMap<String, String>,
) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    labels_ok
        && selector
            .match_expressions
            .iter()
            .flatten()
            .all(|req| requirement_matches(req, labels))
}

#[cfg(feature = "kube")]
fn requirement_matches(
    req: &LabelSelectorRequirement,
    labels: &std::collections::BTreeMap<String, String>,
) -> bool {
    let value = labels.get(&req.key);
    let values = req.values.as_deref().unwrap_or_default();
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        // An unknown operator selects nothing rather than everything.
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_patterns_that_cannot_work_are_refused_naming_the_field() {
        let mut spec: RouterSpec = serde_json::from_value(serde_json::json!({
            "knowledgeBaseRef": {"name": "kb"},
            "smallModel": {"model": "m"},
            "largeModel": {"endpoint": {"url": "https://llm.example.com/v1", "model": "big"}},
            "privacy": {"redact": [
                {"name": "account", "pattern": "\\bACME-[0-9]{6}\\b"},
                {"name": "everything", "pattern": "x*"},
                {"name": "broken", "pattern": "(ACME"},
            ]},
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let errors = spec.validate().unwrap_err().to_string();
        assert!(!errors.contains("redact[0]"), "{errors}");
        assert!(
            errors.contains("spec.privacy.redact[1].pattern") && errors.contains("empty string"),
            "{errors}"
        );
        assert!(
            errors.contains("spec.privacy.redact[2].pattern")
                && errors.contains("not a regular expression"),
            "{errors}"
        );
        spec.privacy.redact.truncate(1);
        assert!(spec.validate().is_ok());
    }
}
