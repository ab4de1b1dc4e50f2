//! Types shared by the four resources: references, condition vocabulary, annotations, and the
//! error type of the Rust-side validation that mirrors the admission rules.

#[cfg(feature = "kube")]
use kube::KubeSchema as KubeSchemaDerive;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// RE2 pattern of a Kubernetes object name (DNS-1123 subdomain).
pub const NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// RE2 pattern of a DNS-1123 label: names of sources, variants, lineages.
pub const LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// A reference to another object in the same namespace, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ObjectRef {
    /// Name of the referenced object, in the same namespace.
    #[schemars(length(min = 1, max = 253), pattern(NAME_PATTERN))]
    pub name: String,
}

impl ObjectRef {
    /// A reference to `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }
}

/// RE2 pattern of a plain-HTTP URL of an in-cluster Service (`http://<service>.<namespace>.svc`,
/// optionally `.cluster.local`, a port and a path): where a credential may go unencrypted when
/// an endpoint allows it ([`credential_url_allowed`]).
pub const IN_CLUSTER_HTTP_PATTERN: &str =
    r"^http://[a-z0-9]([-a-z0-9.]*[a-z0-9])?\.svc(\.cluster\.local)?(:[0-9]+)?(/.*)?$";

/// Whether a credential (an API key sent as a bearer token) may be sent to `url`: over
/// `https://`, or, when `allow_plaintext_in_cluster`, over `http://` to an in-cluster Service
/// ([`IN_CLUSTER_HTTP_PATTERN`], which the CRD's rule uses; this is the same test in Rust).
pub fn credential_url_allowed(url: &str, allow_plaintext_in_cluster: bool) -> bool {
    if url.starts_with("https://") {
        return true;
    }
    let Some(rest) = url
        .strip_prefix("http://")
        .filter(|_| allow_plaintext_in_cluster)
    else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.split_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        Some(_) => return false,
        None => authority,
    };
    let label_like = |h: &str| {
        let b = h.as_bytes();
        let edge = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        !b.is_empty()
            && b.first().is_some_and(edge)
            && b.last().is_some_and(edge)
            && b.iter().all(|c| edge(c) || *c == b'-' || *c == b'.')
    };
    [".svc.cluster.local", ".svc"]
        .iter()
        .any(|suffix| host.strip_suffix(suffix).is_some_and(label_like))
}

/// Label a Secret's owner sets to let Switchboard use it: a Router or AdapterPatch may name only
/// Secrets labelled `switchboard.dev/usable: "true"` (docs/security.md). The chart's admission
/// policy also requires the author to be allowed to read it; the label holds where that policy
/// is not installed, and keeps a namespace's other Secrets (service-account tokens, TLS keys)
/// out of reach even of authors who may read them.
pub const USABLE_SECRET_LABEL: &str = "switchboard.dev/usable";

/// Whether a Secret with these labels may be used by Switchboard.
pub fn secret_usable(labels: Option<&std::collections::BTreeMap<String, String>>) -> bool {
    labels
        .and_then(|l| l.get(USABLE_SECRET_LABEL))
        .is_some_and(|v| v == "true")
}

/// A reference to one key of a Secret in the same namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SecretKeyRef {
    /// Name of the Secret, in the same namespace.
    #[schemars(length(min = 1, max = 253), pattern(NAME_PATTERN))]
    pub name: String,
    /// Key within the Secret's data.
    #[schemars(length(min = 1, max = 253), pattern(r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// A content digest written `sha256:<64 lowercase hex>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

/// RE2 pattern of [`Digest`].
pub const DIGEST_PATTERN: &str = "^sha256:[0-9a-f]{64}$";

impl Digest {
    /// The digest as written (`sha256:...`).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 64 hex characters.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// Whether `bytes_sha256_hex` (lowercase hex of a computed digest) matches.
    pub fn matches_hex(&self, bytes_sha256_hex: &str) -> bool {
        self.hex().eq_ignore_ascii_case(bytes_sha256_hex)
    }
}

impl std::str::FromStr for Digest {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = s.strip_prefix("sha256:").is_some_and(|hex| {
            hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(format!("invalid digest {s:?}: {DIGEST_MESSAGE}"))
        }
    }
}

impl TryFrom<String> for Digest {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> Self {
        d.0
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Message of the digest rule.
pub const DIGEST_MESSAGE: &str =
    "must be a sha256 digest written sha256:<64 lowercase hex characters>";

impl JsonSchema for Digest {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Digest".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "maxLength": 71,
            "x-kubernetes-validations": [{
                "rule": format!("self.matches({})", crate::units::cel_string(DIGEST_PATTERN)),
                "message": DIGEST_MESSAGE,
            }],
        })
    }

    fn inline_schema() -> bool {
        true
    }
}

/// Condition types and reasons. Every resource reports `Ready`, `Progressing` and `Degraded`
/// (so GitOps health checks work from conditions alone), plus the resource-specific types below.
pub mod conditions {
    /// The resource does what its spec asks and serves traffic.
    pub const READY: &str = "Ready";
    /// The operator is moving the resource towards its spec (index build, rollout step, scaling).
    pub const PROGRESSING: &str = "Progressing";
    /// Something is wrong that needs attention, though the resource may still serve.
    pub const DEGRADED: &str = "Degraded";

    /// KnowledgeBase: an index generation is built and servable.
    pub const INDEX_READY: &str = "IndexReady";
    /// KnowledgeBase: every source could be fetched and parsed.
    pub const SOURCES_HEALTHY: &str = "SourcesHealthy";

    /// AdapterPatch: the artifact was downloaded and its sha256 matches `spec.artifact.sha256`.
    pub const ARTIFACT_VERIFIED: &str = "ArtifactVerified";
    /// AdapterPatch: every guardrail is within its limit in the last analysis.
    pub const GUARDRAILS_HEALTHY: &str = "GuardrailsHealthy";
    /// AdapterPatch: `True` when too many adapters stack on the same base model (a warning).
    pub const ADAPTER_STACKING: &str = "AdapterStacking";
    /// AdapterPatch with `spec.evaluation`: the candidate's offline evaluation on the golden set
    /// is within the limits (`Unknown` while its Job runs).
    pub const EVALUATED: &str = "Evaluated";

    /// Router: the compiled RuntimeConfig was written and the runtime pods loaded it.
    pub const RUNTIME_CONFIG_APPLIED: &str = "RuntimeConfigApplied";
    /// Router: every runtime replica can mount the KnowledgeBase's index volume (`False` when
    /// several replicas read a `ReadWriteOnce` claim, which only one node can mount).
    pub const INDEX_VOLUME_SHAREABLE: &str = "IndexVolumeShareable";
    /// Router: every replica shares one outcome store (`False` when several replicas each keep
    /// a per-pod SQLite file: feedback replays are then only caught per replica).
    pub const OUTCOME_STORE_SHARED: &str = "OutcomeStoreShared";
    /// KnowledgeBase: no document past its class's `staleAfter` still answers at least
    /// `spec.staleness.minQueryShare` of queries (`False`: `StaleDocumentsFound`, listed in
    /// `status.topStaleDocuments`; `Unknown`: the metrics could not be read).
    pub const CONTENT_FRESH: &str = "ContentFresh";
    /// KnowledgeBase: the served generation has no contradiction candidates (`False`:
    /// `ContradictionsFound`, listed in `status.topContradictions`).
    pub const CONTENT_CONSISTENT: &str = "ContentConsistent";
    /// KnowledgeBase: no topic of at least `spec.coverage.minQueries` escalated, unanswered or
    /// refused queries and `spec.coverage.minShare` of a Router's queries over
    /// `spec.coverage.window` (`False`: `CoverageGapsFound`, listed in `status.topCoverageGaps`;
    /// `Unknown`: a Router's runtime could not report them).
    pub const CONTENT_COVERS: &str = "ContentCovers";

    /// Experiment: it holds a range of its Router's experiment layer (`status.allocation`);
    /// `False` with `LayerFull` while no free range is as large as `spec.traffic`.
    pub const ALLOCATED: &str = "Allocated";
    /// Experiment: outcome metrics could be read for every variant.
    pub const METRICS_AVAILABLE: &str = "MetricsAvailable";
    /// Experiment: `True` when the observed assignment split differs from the configured weights.
    pub const SAMPLE_RATIO_MISMATCH: &str = "SampleRatioMismatch";
    /// Experiment with `spec.cuped`: `True` when the estimates are CUPED-adjusted with per-unit
    /// pre-period data from the outcome store, `False` (with why) when they fall back to the
    /// unadjusted per-interaction comparison.
    pub const CUPED_APPLIED: &str = "CupedApplied";

    /// Reasons: short CamelCase words set on the conditions above.
    pub mod reasons {
        /// Spec refused by the operator's validation (what admission could not check).
        pub const INVALID_SPEC: &str = "InvalidSpec";
        /// A referenced object does not exist.
        pub const REFERENCE_NOT_FOUND: &str = "ReferenceNotFound";
        /// A referenced Secret lacks the opt-in label `switchboard.dev/usable: "true"`.
        pub const SECRET_NOT_USABLE: &str = "SecretNotUsable";
        /// Everything is as the spec asks.
        pub const RECONCILED: &str = "Reconciled";
        /// Waiting for child objects (Job, Deployment) to become ready.
        pub const WAITING_FOR_CHILDREN: &str = "WaitingForChildren";
        /// An index build Job is running.
        pub const INDEX_BUILDING: &str = "IndexBuilding";
        /// The last index build failed; the previous generation keeps serving.
        pub const INDEX_BUILD_FAILED: &str = "IndexBuildFailed";
        /// Some sources could not be fetched or parsed (see `status.sourceErrors`).
        pub const SOURCE_ERRORS: &str = "SourceErrors";
        /// The adapter artifact could not be fetched.
        pub const ARTIFACT_UNAVAILABLE: &str = "ArtifactUnavailable";
        /// The adapter artifact's digest differs from `spec.artifact.sha256`.
        pub const DIGEST_MISMATCH: &str = "DigestMismatch";
        /// The artifact is not a loadable PEFT LoRA directory for the base model.
        pub const ARTIFACT_INVALID: &str = "ArtifactInvalid";
        /// Candidate is mirrored traffic only.
        pub const SHADOW_ANALYSIS: &str = "ShadowAnalysis";
        /// Candidate serves a canary step.
        pub const CANARY_STEP: &str = "CanaryStep";
        /// Candidate became the stable version.
        pub const PROMOTED: &str = "Promoted";
        /// A guardrail breach rolled the candidate back.
        pub const GUARDRAIL_BREACHED: &str = "GuardrailBreached";
        /// The offline evaluation Job of the candidate runs.
        pub const EVALUATING: &str = "Evaluating";
        /// The candidate is within every limit of `spec.evaluation`.
        pub const EVALUATION_PASSED: &str = "EvaluationPassed";
        /// The candidate is outside a limit of `spec.evaluation`: it is not rolled out.
        pub const EVALUATION_FAILED: &str = "EvaluationFailed";
        /// The evaluation could not run (its Job failed, the Router or golden set is missing);
        /// retried.
        pub const EVALUATION_ERROR: &str = "EvaluationError";
        /// The evaluation Job ran past `spec.evaluation.timeout`: the candidate is not rolled out.
        pub const EVALUATION_TIMED_OUT: &str = "EvaluationTimedOut";
        /// A user asked for a rollback through the action annotation.
        pub const MANUAL_ROLLBACK: &str = "ManualRollback";
        /// A user aborted the rollout through the action annotation.
        pub const MANUAL_ABORT: &str = "ManualAbort";
        /// `spec.paused` is true.
        pub const PAUSED: &str = "Paused";
        /// Not enough samples yet for a decision.
        pub const INSUFFICIENT_SAMPLES: &str = "InsufficientSamples";
        /// A guardrail's estimate is above its margin but the evidence is not yet conclusive: the
        /// step holds (neither advances nor rolls back) until it is.
        pub const RISE_NOT_RULED_OUT: &str = "RiseNotRuledOut";
        /// More adapters on one base model than the stacking limit.
        pub const TOO_MANY_ADAPTERS: &str = "TooManyAdapters";
        /// The metrics backend could not be queried.
        pub const METRICS_UNAVAILABLE: &str = "MetricsUnavailable";
        /// The sample-ratio-mismatch test rejected the configured split.
        pub const SAMPLE_RATIO_MISMATCH_DETECTED: &str = "SampleRatioMismatchDetected";
        /// The experiment reached its required sample size and concluded.
        pub const CONCLUDED: &str = "Concluded";
        /// The experiment hit `spec.maxDuration` before reaching its sample size.
        pub const MAX_DURATION_REACHED: &str = "MaxDurationReached";
        /// The runtime pods have not yet loaded the newest RuntimeConfig.
        pub const CONFIG_PENDING: &str = "ConfigPending";
        /// Several Router replicas read a `ReadWriteOnce` index claim.
        pub const READ_WRITE_ONCE_INDEX: &str = "ReadWriteOnceIndex";
        /// Several Router replicas keep per-pod SQLite outcome stores.
        pub const PER_POD_OUTCOME_STORE: &str = "PerPodOutcomeStore";
        /// Stale documents still answer queries (`ContentFresh=False`).
        pub const STALE_DOCUMENTS_FOUND: &str = "StaleDocumentsFound";
        /// Passages of the served generation disagree (`ContentConsistent=False`).
        pub const CONTRADICTIONS_FOUND: &str = "ContradictionsFound";
        /// Topics the knowledge base does not answer (`ContentCovers=False`).
        pub const COVERAGE_GAPS_FOUND: &str = "CoverageGapsFound";
        /// A Router's runtime (or its outcome store) could not report coverage gaps
        /// (`ContentCovers=Unknown`).
        pub const COVERAGE_UNAVAILABLE: &str = "CoverageUnavailable";
        /// The served generation was built without the consistency check (an older runtime),
        /// or no generation is served yet (`ContentConsistent=Unknown`).
        pub const NOT_CHECKED: &str = "NotChecked";
        /// The Router's experiment layer has no free range as large as the Experiment's traffic.
        pub const LAYER_FULL: &str = "LayerFull";
        /// The Experiment holds its range of the layer.
        pub const ALLOCATED: &str = "Allocated";
        /// The estimates are CUPED-adjusted.
        pub const CUPED_ADJUSTED: &str = "CupedAdjusted";
        /// CUPED could not be applied (store unreachable, too few units, no pre-period data);
        /// the estimates are unadjusted.
        pub const CUPED_UNAVAILABLE: &str = "CupedUnavailable";
    }
}

/// Annotations a user sets to act on a resource; the operator clears them once acted upon.
pub mod annotations {
    /// On an AdapterPatch: `promote` (skip remaining steps), `abort` (back to stable, keep the
    /// candidate marked failed), `rollback` (to `rollback-to` or the previous good version),
    /// `resume` (continue after a hold). On an Experiment: `stop`.
    pub const ACTION: &str = "switchboard.dev/action";
    /// On an AdapterPatch with `action: rollback`: the version to roll back to (within the rollback
    /// window).
    pub const ROLLBACK_TO: &str = "switchboard.dev/rollback-to";
    /// Set by the operator on children: the generation of the parent that produced them.
    pub const PARENT_GENERATION: &str = "switchboard.dev/parent-generation";

    /// Values of [`ACTION`].
    pub mod actions {
        /// Promote the candidate now.
        pub const PROMOTE: &str = "promote";
        /// Abort the rollout and serve the stable version.
        pub const ABORT: &str = "abort";
        /// Roll back to an earlier version.
        pub const ROLLBACK: &str = "rollback";
        /// Resume a held rollout.
        pub const RESUME: &str = "resume";
        /// Stop an experiment.
        pub const STOP: &str = "stop";
    }
}

/// One refused field: the path as the API server prints it and the rule it broke.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// JSON path of the field, e.g. `spec.rollout.canary.steps`.
    pub field: String,
    /// The rule, worded as the CEL message in the generated schema.
    pub message: String,
}

impl FieldError {
    /// A refusal of `field` with `message`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Every refused field of one object.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct ValidationErrors(pub Vec<FieldError>);

/// Validation of what admission checks, for code paths without an API server (manifests loaded
/// from a folder) and as the operator's first pipeline step.
pub trait Validate {
    /// Checks the cross-field rules of the spec. Field formats (percentages, durations) are
    /// already enforced by deserialization.
    fn validate(&self) -> Result<(), ValidationErrors>;
}

/// Collects [`FieldError`]s.
#[derive(Debug, Default)]
pub(crate) struct Errors(Vec<FieldError>);

impl Errors {
    pub(crate) fn check(&mut self, ok: bool, field: impl Into<String>, message: &str) {
        if !ok {
            self.0.push(FieldError::new(field, message));
        }
    }

    pub(crate) fn finish(self) -> Result<(), ValidationErrors> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(self.0))
        }
    }
}

/// Outcome and quality metrics that guardrails and experiments are measured on.
///
/// Rates are per interaction: `escalationRate` counts interactions escalated to a human,
/// `reopenRate` tickets reopened within 72h, `csatLow` ratings of 1-2 of 5, and so on.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum Metric {
    /// Share of interactions escalated to a human agent (lower is better).
    EscalationRate,
    /// Share of resolved tickets reopened within 72 hours (lower is better).
    ReopenRate,
    /// Share of rated interactions with CSAT 1-2 of 5 (lower is better).
    CsatLow,
    /// Share of rated interactions with CSAT 4-5 of 5 (higher is better).
    CsatHigh,
    /// Share of interactions resolved without escalation or reopen (higher is better).
    ResolutionRate,
    /// Share of answers that refuse (lower is better, within policy).
    RefusalRate,
    /// Share of answers citing a passage that was not retrieved (lower is better).
    InvalidCitationRate,
    /// Share of queries with no passage above `retrieval.minScore` (lower is better).
    RetrievalFailureRate,
    /// Shadow only: share of mirrored answers that diverge from the stable answer.
    ShadowDivergence,
}

impl Metric {
    /// Whether an increase of this metric is bad (guardrails watch for increases of these).
    pub fn lower_is_better(self) -> bool {
        !matches!(self, Self::CsatHigh | Self::ResolutionRate)
    }

    /// How long after an answer its outcome for this metric may still arrive (the default
    /// settle window of an Experiment's comparison): escalations, reopens, resolutions and CSAT
    /// ratings are reported by the helpdesk hours later (72h, the reopen window); refusals,
    /// invalid citations and retrieval failures are known when the answer is given.
    pub fn default_settle(self) -> std::time::Duration {
        match self {
            Self::EscalationRate
            | Self::ReopenRate
            | Self::CsatLow
            | Self::CsatHigh
            | Self::ResolutionRate => std::time::Duration::from_secs(72 * 3600),
            Self::RefusalRate
            | Self::InvalidCitationRate
            | Self::RetrievalFailureRate
            | Self::ShadowDivergence => std::time::Duration::ZERO,
        }
    }

    /// Whether the metric is an outcome the helpdesk reports after the answer (escalation,
    /// reopen, resolution, CSAT), rather than a property of the answer known when it is given.
    pub fn is_outcome(self) -> bool {
        !self.default_settle().is_zero()
    }

    /// The metric name as written in manifests and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EscalationRate => "escalationRate",
            Self::ReopenRate => "reopenRate",
            Self::CsatLow => "csatLow",
            Self::CsatHigh => "csatHigh",
            Self::ResolutionRate => "resolutionRate",
            Self::RefusalRate => "refusalRate",
            Self::InvalidCitationRate => "invalidCitationRate",
            Self::RetrievalFailureRate => "retrievalFailureRate",
            Self::ShadowDivergence => "shadowDivergence",
        }
    }
}

/// Message of the guardrail limit rule.
pub const GUARDRAIL_INCREASE_MESSAGE: &str =
    "guardrails[].maxRelativeIncrease must be a percentage above 0% and at most 100%";

/// A guardrail: the candidate (or variant) fails when `metric` is worse than the baseline by more
/// than `maxRelativeIncrease`, with at least `minSamples` interactions per arm, at the given
/// confidence.
#[cfg_attr(feature = "kube", derive(KubeSchemaDerive))]
#[cfg_attr(not(feature = "kube"), derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new("!has(self.settleAfter) || self.metric in ['escalationRate', 'reopenRate', 'resolutionRate', 'csatLow', 'csatHigh']").message(GUARDRAIL_SETTLE_METRIC_MESSAGE).field_path(".settleAfter")))]
pub struct Guardrail {
    /// The metric watched (e.g. `escalationRate`).
    pub metric: Metric,
    /// Largest tolerated relative worsening versus the baseline, in (0%, 100%]; e.g. `5%` means
    /// an escalation rate of 15% may rise to at most 15.75%.
    #[cfg_attr(feature = "kube", x_kube(validation = Rule::new(crate::units::percent_rule("self", 0.0, 100.0, false)).message(GUARDRAIL_INCREASE_MESSAGE)))]
    pub max_relative_increase: crate::units::Percent,
    /// Trailing window of the answers compared (for outcome metrics it ends `settleAfter` ago).
    #[serde(default = "default_guardrail_window")]
    pub window: crate::units::GoDuration,
    /// No decision before each arm has this many interactions in the window.
    #[serde(default = "default_min_samples")]
    #[schemars(range(min = 1, max = 100_000_000))]
    pub min_samples: i64,
    /// Confidence of the one-sided test that declares a breach (e.g. `95%`).
    #[serde(default = "default_confidence")]
    #[cfg_attr(feature = "kube", x_kube(validation = Rule::new(crate::units::percent_rule("self", 50.0, 99.99, true)).message("guardrails[].confidence must be between 50% and 99.99%")))]
    pub confidence: crate::units::Percent,
    /// How long each answer is followed for its outcome (outcome metrics only): an escalation,
    /// reopen, resolution or rating counts when it arrives within `settleAfter` of the answer,
    /// and only answers at least that old are compared, in both arms alike. A canary's young
    /// answers are therefore never compared, on outcomes that have not arrived yet, against a
    /// baseline whose outcomes have: the window holds the answers given between
    /// `window + settleAfter` and `settleAfter` ago. A longer follow-up sees more of the late
    /// outcomes and decides later. Default `1h`; refusalRate, invalidCitationRate,
    /// retrievalFailureRate and shadowDivergence are known when the answer is given and take
    /// none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "kube", x_kube(validation = Rule::new(format!("{} && duration(self) <= duration('720h')", crate::units::duration_at_least_rule("self", "1s"))).message(GUARDRAIL_SETTLE_MESSAGE)))]
    pub settle_after: Option<crate::units::GoDuration>,
}

/// Message of the guardrail follow-up rule.
pub const GUARDRAIL_SETTLE_MESSAGE: &str =
    "guardrails[].settleAfter must be a duration from 1s to 720h";

/// Message of the rule that answer-time metrics take no follow-up.
pub const GUARDRAIL_SETTLE_METRIC_MESSAGE: &str = "guardrails[].settleAfter applies to outcome metrics (escalationRate, reopenRate, resolutionRate, csatLow, csatHigh); this metric is known when the answer is given";

/// Default follow-up of an outcome guardrail (`settleAfter`).
pub const DEFAULT_GUARDRAIL_SETTLE: std::time::Duration = std::time::Duration::from_secs(3600);

fn default_guardrail_window() -> crate::units::GoDuration {
    crate::units::GoDuration::from_secs(24 * 3600)
}
fn default_min_samples() -> i64 {
    200
}
fn default_confidence() -> crate::units::Percent {
    crate::units::Percent::from_fraction(0.95)
}

impl Guardrail {
    /// A guardrail on `metric` with the default window, sample floor and confidence.
    pub fn new(metric: Metric, max_relative_increase: crate::units::Percent) -> Self {
        Self {
            metric,
            max_relative_increase,
            window: default_guardrail_window(),
            min_samples: default_min_samples(),
            confidence: default_confidence(),
            settle_after: None,
        }
    }

    /// The follow-up in force: `settleAfter` (default [`DEFAULT_GUARDRAIL_SETTLE`]) for outcome
    /// metrics, zero for the metrics known when the answer is given.
    pub fn settle(&self) -> std::time::Duration {
        if !self.metric.is_outcome() {
            return std::time::Duration::ZERO;
        }
        self.settle_after
            .as_ref()
            .map_or(DEFAULT_GUARDRAIL_SETTLE, crate::units::GoDuration::duration)
    }

    /// Rust-side mirror of the admission rules on one guardrail at `path`.
    pub(crate) fn check(&self, path: &str, errors: &mut Errors) {
        errors.check(
            self.max_relative_increase.percent() > 0.0,
            format!("{path}.maxRelativeIncrease"),
            GUARDRAIL_INCREASE_MESSAGE,
        );
        if let Some(settle) = &self.settle_after {
            let d = settle.duration();
            errors.check(
                d >= std::time::Duration::from_secs(1)
                    && d <= std::time::Duration::from_secs(720 * 3600),
                format!("{path}.settleAfter"),
                GUARDRAIL_SETTLE_MESSAGE,
            );
            errors.check(
                self.metric.is_outcome(),
                format!("{path}.settleAfter"),
                GUARDRAIL_SETTLE_METRIC_MESSAGE,
            );
        }
    }
}

#[cfg(feature = "kube")]
/// Sets `condition` in `conditions` the way `meta.SetStatusCondition` does in Go: replaces the
/// entry of the same type, keeping its `lastTransitionTime` when the status did not change (so
/// the time says when the state last flipped, not when the operator last looked). Returns whether
/// anything changed.
pub fn set_condition(
    conditions: &mut Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    mut condition: k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition,
) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == condition.type_) {
        Some(existing) => {
            if existing.status == condition.status {
                condition.last_transition_time = existing.last_transition_time.clone();
            }
            let changed = *existing != condition;
            *existing = condition;
            changed
        }
        None => {
            conditions.push(condition);
            true
        }
    }
}

#[cfg(feature = "kube")]
/// The condition of type `type_`, if present.
pub fn find_condition<'a>(
    conditions: &'a [k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(feature = "kube")]
/// Whether the condition of type `type_` is present with status `True`.
pub fn is_condition_true(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    type_: &str,
) -> bool {
    find_condition(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        apimachinery::pkg::apis::meta::v1::{Condition, Time},
        jiff::Timestamp,
    };

    use super::*;

    #[test]
    fn credentials_go_over_https_or_plain_http_to_an_in_cluster_service_when_allowed() {
        // The CRD's CEL rule uses the RE2 pattern; RE2 and Rust's regex agree on it.
        let pattern = regex::Regex::new(IN_CLUSTER_HTTP_PATTERN).unwrap();
        for (url, allow, ok) in [
            ("https://llm.example.com/v1", false, true),
            ("http://llm.example.com/v1", false, false),
            ("http://llm.example.com/v1", true, false),
            ("http://llm.models.svc/v1", false, false),
            ("http://llm.models.svc/v1", true, true),
            ("http://llm.models.svc.cluster.local:8000/v1", true, true),
            ("http://llm.models.svc:8000", true, true),
            ("http://llm.models.svc:/v1", true, false),
            ("http://user@llm.models.svc/v1", true, false),
            ("http://llm.models.svc.evil.com/v1", true, false),
            ("http://.svc/v1", true, false),
            ("http://LLM.models.svc/v1", true, false),
        ] {
            assert_eq!(
                credential_url_allowed(url, allow),
                ok,
                "{url} allow={allow}"
            );
            assert_eq!(
                url.starts_with("https://") || (allow && pattern.is_match(url)),
                ok,
                "pattern: {url} allow={allow}"
            );
        }
    }

    fn ready(status: &str, reason: &str, at: i64) -> Condition {
        Condition {
            type_: conditions::READY.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message: String::new(),
            observed_generation: Some(1),
            last_transition_time: Time(Timestamp::from_second(at).unwrap()),
        }
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let mut list = Vec::new();
        assert!(set_condition(
            &mut list,
            ready("False", conditions::reasons::WAITING_FOR_CHILDREN, 100)
        ));
        // Same status, new reason: updated, but the transition time stays.
        assert!(set_condition(
            &mut list,
            ready("False", conditions::reasons::INDEX_BUILDING, 200)
        ));
        assert_eq!(list[0].reason, conditions::reasons::INDEX_BUILDING);
        assert_eq!(
            list[0].last_transition_time,
            ready("False", "", 100).last_transition_time
        );
        // Nothing new: no change reported.
        assert!(!set_condition(
            &mut list,
            ready("False", conditions::reasons::INDEX_BUILDING, 300)
        ));
        // Status flips: the time moves.
        assert!(set_condition(
            &mut list,
            ready("True", conditions::reasons::RECONCILED, 400)
        ));
        assert_eq!(list.len(), 1);
        assert_eq!(
            list[0].last_transition_time,
            ready("True", "", 400).last_transition_time
        );
        assert!(is_condition_true(&list, conditions::READY));
        assert!(!is_condition_true(&list, conditions::DEGRADED));
    }

    #[test]
    fn digests_parse_strictly() {
        let hex = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        let d: Digest = format!("sha256:{hex}").parse().unwrap();
        assert_eq!(d.hex(), hex);
        assert!(d.matches_hex(&hex.to_uppercase()));
        assert!(
            format!("sha256:{}", hex.to_uppercase())
                .parse::<Digest>()
                .is_err()
        );
        let err = serde_json::from_str::<Digest>("\"md5:abc\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains(DIGEST_MESSAGE), "{err}");
    }
}
