//! `AdapterPatch`: one LoRA adapter lineage on a base model, rolled out shadow -> canary -> promoted.

#[cfg(feature = "kube")]
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
#[cfg(feature = "kube")]
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[cfg(feature = "kube")]
use crate::units::{cel_string, duration_at_least_rule, percent_rule};
use crate::{
    common::{
        Digest, Errors, Guardrail, LABEL_PATTERN, Metric, ObjectRef, Validate, ValidationErrors,
    },
    units::{GoDuration, Percent},
};

/// RE2 pattern of a semantic version (semver.org 2.0.0).
pub const SEMVER_PATTERN: &str = r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-((0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)(\.(0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*))*))?(\+([0-9a-zA-Z-]+(\.[0-9a-zA-Z-]+)*))?$";

/// RE2 pattern of an artifact URI: `oci://`, `http(s)://`, `pvc://<claim>/<path>` or `file:///<path>`.
pub const ARTIFACT_URI_PATTERN: &str = r"^((oci|https?|pvc)://[^/\s][^\s]*|file:///[^\s]+)$";

/// Above this many adapters on one base model, `AdapterStacking` turns `True` (a warning): stacks
/// of patches from different epochs interact in ways that are hard to debug; fold them into a
/// fine-tune instead.
pub const STACKING_WARNING_THRESHOLD: usize = 8;

/// Messages of the AdapterPatch admission rules (shared by the CEL rules and [`Validate`]).
pub mod messages {
    /// `spec.version`.
    pub const SEMVER: &str = "version must be a semantic version like 1.2.0 or 1.3.0-rc.1";
    /// `spec.baseModel`.
    pub const BASE_MODEL_IMMUTABLE: &str = "baseModel is immutable: an adapter is trained for one base model; create a new AdapterPatch instead";
    /// `spec.lineage`.
    pub const LINEAGE_IMMUTABLE: &str = "lineage is immutable: create a new AdapterPatch instead";
    /// `spec.artifact.uri`.
    pub const ARTIFACT_URI: &str =
        "artifact.uri must be an oci://, http(s)://, pvc://<claim>/<path> or file:///<path> URI";
    /// `spec.rollout.canary.steps`.
    pub const STEPS_INCREASING: &str =
        "rollout.canary.steps[].weight must be strictly increasing (each step between 1 and 100)";
    /// `spec.rollout.shadow.sampleShare`.
    pub const SHADOW_SHARE: &str = "rollout.shadow.sampleShare must be above 0% and at most 100%";
    /// `spec.rollout.canary.steps[*].duration`.
    pub const STEP_DURATION: &str = "rollout.canary.steps[].duration must be at least 1m";
    /// `spec.rollbackWindow`.
    pub const ROLLBACK_WINDOW: &str = "rollbackWindow must be at least 1h";
    /// `spec.guardrails`.
    pub const GUARDRAIL_UNIQUE: &str = "guardrails[].metric must be unique";
    /// `spec.evaluation.timeout`.
    pub const EVALUATION_TIMEOUT: &str = "evaluation.timeout must be at least 1m";
}

/// An AdapterPatch: one LoRA adapter lineage (e.g. `pricing`) on a named base model. Changing
/// `spec.version` and `spec.artifact` starts a rollout of the new version: shadow traffic, then
/// canary steps, then promotion, each gated by the guardrails; a breach rolls back to the last
/// good version.
// `printcolumn(...)` entries repeat `type_ = ...`, which clippy mistakes for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[cfg_attr(feature = "kube", derive(CustomResource, KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "kube",
    kube(
        group = "switchboard.dev",
        version = "v1alpha1",
        kind = "AdapterPatch",
        plural = "adapterpatches",
        singular = "adapterpatch",
        shortname = "ap",
        shortname = "adapter",
        category = "switchboard",
        namespaced,
        status = "AdapterPatchStatus",
        selectable = ".spec.lineage",
        selectable = ".spec.baseModel",
        derive = "PartialEq",
        doc = "An AdapterPatch: a versioned LoRA adapter lineage on a base model, rolled out through shadow and canary steps gated by guardrails, with automatic rollback.",
        printcolumn(name = "Lineage", type_ = "string", json_path = ".spec.lineage"),
        printcolumn(
            name = "Version",
            type_ = "string",
            json_path = ".spec.version",
            description = "Desired version"
        ),
        printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
        printcolumn(
            name = "Canary",
            type_ = "integer",
            json_path = ".status.canaryWeight",
            description = "Percent of traffic on the candidate"
        ),
        printcolumn(name = "Stable", type_ = "string", json_path = ".status.stableVersion"),
        printcolumn(
            name = "Age",
            type_ = "date",
            json_path = ".metadata.creationTimestamp"
        )
    )
)]
#[serde(rename_all = "camelCase")]
pub struct AdapterPatchSpec {
    /// The adapter lineage (a DNS label, e.g. `pricing`): versions of one lineage replace each
    /// other; different lineages are selected per query by domain similarity.
    #[schemars(length(min = 1, max = 63), pattern(LABEL_PATTERN))]
    #[cfg_attr(feature = "kube", x_kube(validation = Rule::new("self == oldSelf").message(messages::LINEAGE_IMMUTABLE)))]
    pub lineage: String,

    /// The base model the adapter was trained on (the Router's `smallModel.model` must match).
    #[schemars(length(min = 1, max = 2048))]
    #[cfg_attr(feature = "kube", x_kube(validation = Rule::new("self == oldSelf").message(messages::BASE_MODEL_IMMUTABLE)))]
    pub base_model: String,

    /// Semantic version of the adapter (e.g. `1.3.0`). Changing it starts a rollout.
    #[schemars(length(min = 5, max = 128))]
    #[cfg_attr(feature = "kube", x_kube(validation = Rule::new(format!("self.matches({})", cel_string(SEMVER_PATTERN))).message(messages::SEMVER)))]
    pub version: String,

    /// Where the PEFT adapter directory (`adapter_config.json`, `adapter_model.safetensors`) is,
    /// and its digest.
    pub artifact: Artifact,

    /// LoRA hyper-parameters, checked against the artifact's `adapter_config.json`.
    pub lora: Lora,

    /// What the adapter knows about; the Router embeds these to select adapters per query.
    pub domain: Domain,

    /// Shadow and canary stages.
    #[serde(default)]
    pub rollout: Rollout,

    /// Metrics that must not get worse; a breach rolls back. Default: escalation rate may not
    /// rise by more than 5% relative within 24h.
    #[serde(default = "default_guardrails")]
    #[schemars(length(max = 8))]
    #[cfg_attr(feature = "kube", x_kube(merge_strategy = ListMerge::Map(vec!["metric".into()])))]
    pub guardrails: Vec<Guardrail>,

    /// How long superseded versions stay loadable for rollback (default `720h`, 30 days).
    #[serde(default = "default_rollback_window")]
    #[cfg_attr(feature = "kube", x_kube(validation = Rule::new(duration_at_least_rule("self", "1h")).message(messages::ROLLBACK_WINDOW)))]
    pub rollback_window: GoDuration,

    /// Hold the rollout at its current step (no promotion, no automatic rollback decisions are
    /// acted upon except guardrail breaches).
    #[serde(default)]
    pub paused: bool,

    /// An offline evaluation before Shadow (seed section 6): once the artifact is verified, the
    /// candidate and the stable version answer a golden set through a Router's pipeline (a Job
    /// running `switchboard-runtime eval --answers`); a candidate that loses more than these
    /// limits allow is Failed with the numbers in its condition and never reaches Shadow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<Evaluation>,
}

/// The offline evaluation gate of a new version.
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Evaluation {
    /// The Router whose pipeline (knowledge base generation, grounding, base model, the other
    /// adapters) answers the golden set. It must select this AdapterPatch.
    pub router_ref: ObjectRef,
    /// The golden set: JSONL in a ConfigMap key (`query`, `answerable`, `key_facts`,
    /// `gold_docs`, ...; docs/evaluation.md), mounted read-only into the Job.
    pub golden_set: ConfigMapKeyRef,
    /// Key-fact accuracy (answerable questions) may be at most this many percentage points
    /// below the stable version's.
    #[serde(default = "default_max_key_fact_drop")]
    pub max_key_fact_accuracy_drop: Percent,
    /// Correct refusals (unanswerable questions) may be at most this many points below the
    /// stable version's.
    #[serde(default = "default_max_refusal_drop")]
    pub max_correct_refusal_drop: Percent,
    /// False refusals (answerable questions refused) may be at most this many points above the
    /// stable version's.
    #[serde(default = "default_max_false_refusal_rise")]
    pub max_false_refusal_increase: Percent,
    /// At most this share of the candidate's answers may come from model output citing a fact
    /// that was not in its prompt (the runtime removes such citations; an adapter that makes
    /// them is broken).
    #[serde(default = "zero_percent")]
    pub max_invalid_citation_rate: Percent,
    /// The version's stability anchors may have regressed at most this much (relative rise of
    /// their held-out loss over the starting adapter's), as `switchboard-train sft --anchors`
    /// recorded on the version (annotations `training.switchboard.dev/version` and
    /// `training.switchboard.dev/anchor-regression`). A version without that record for its own
    /// version number is not rolled out. Checked before the evaluation Job starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_anchor_regression: Option<Percent>,
    /// How long the evaluation Job may run before the version is Failed (`EvaluationTimedOut`).
    #[serde(default = "default_evaluation_timeout")]
    #[cfg_attr(feature = "kube", x_kube(validation = Rule::new(duration_at_least_rule("self", "1m")).message(messages::EVALUATION_TIMEOUT)))]
    pub timeout: GoDuration,
}

/// A key of a ConfigMap in the same namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapKeyRef {
    /// Name of the ConfigMap.
    #[schemars(length(min = 1, max = 253), pattern(crate::common::NAME_PATTERN))]
    pub name: String,
    /// The key holding the file.
    #[schemars(length(min = 1, max = 253), pattern(r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

fn default_max_key_fact_drop() -> Percent {
    Percent::from_fraction(0.02)
}
fn default_max_refusal_drop() -> Percent {
    Percent::from_fraction(0.05)
}
fn default_max_false_refusal_rise() -> Percent {
    Percent::from_fraction(0.02)
}
fn zero_percent() -> Percent {
    Percent::from_fraction(0.0)
}
fn default_evaluation_timeout() -> GoDuration {
    GoDuration::from_secs(30 * 60)
}

fn default_guardrails() -> Vec<Guardrail> {
    vec![Guardrail::new(
        Metric::EscalationRate,
        Percent::from_fraction(0.05),
    )]
}
fn default_rollback_window() -> GoDuration {
    GoDuration::from_secs(720 * 3600)
}

/// The adapter artifact.
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Artifact {
    /// Where the PEFT directory is: `oci://registry/repository:tag` or `...@sha256:<hex>` (an
    /// OCI artifact: one layer per file titled by `org.opencontainers.image.title`, as `oras
    /// push` writes it, or one tar(.gz) layer holding the directory), `https://...` (serving
    /// `adapter_config.json` and `adapter_model.safetensors` under the URL),
    /// `pvc://<claim>/<path>` (a directory on a PersistentVolumeClaim of this namespace, mounted
    /// read-only into the runtime pods and checked by a verification Job) or `file:///<path>` (a
    /// directory as the operator and the runtime see it).
    #[schemars(length(min = 1, max = 2048))]
    #[cfg_attr(feature = "kube", x_kube(validation = Rule::new(format!("self.matches({})", cel_string(ARTIFACT_URI_PATTERN))).message(messages::ARTIFACT_URI)))]
    pub uri: String,
    /// Digest of `adapter_model.safetensors` (`sha256:<64 hex>`) whatever the URI's scheme (not
    /// an OCI manifest or layer digest), verified before the version is rolled out and again
    /// before the runtime loads it.
    pub sha256: Digest,
    /// A Secret of this namespace holding registry credentials for an `oci://` URI (type
    /// `kubernetes.io/dockerconfigjson`, key `.dockerconfigjson`: `auth` or
    /// `username`/`password` for basic or token auth, `registrytoken` for a bearer token).
    /// Unset: anonymous pulls. The operator reads it for its check and the Router mounts it
    /// into the runtime pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_secret_ref: Option<ObjectRef>,
}

/// LoRA hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Lora {
    /// Rank. Hot-fixes are small perturbations: 4-8 is typical; more than 64 is refused (needing
    /// it means the change wants a full fine-tune).
    #[schemars(range(min = 1, max = 64))]
    pub rank: i32,
    /// Scaling `alpha` (the update is scaled by `alpha / rank`). Default: `2 * rank`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 4096.0))]
    pub alpha: Option<f64>,
    /// Module names the adapter applies to.
    #[serde(default = "default_target_modules")]
    #[schemars(length(min = 1, max = 16), inner(length(min = 1, max = 64)))]
    pub target_modules: Vec<String>,
}

fn default_target_modules() -> Vec<String> {
    vec!["q_proj".to_owned(), "v_proj".to_owned()]
}

impl Lora {
    /// `alpha / rank`, with the default alpha applied.
    pub fn scale(&self) -> f64 {
        self.alpha.unwrap_or(2.0 * f64::from(self.rank)) / f64::from(self.rank.max(1))
    }
}

impl From<&Lora> for crate::runtime_config::LoraConfig {
    /// The RuntimeConfig's LoRA entry, with the default alpha applied.
    fn from(lora: &Lora) -> Self {
        Self {
            rank: lora.rank,
            alpha: lora.alpha.unwrap_or(2.0 * f64::from(lora.rank)),
            target_modules: lora.target_modules.clone(),
        }
    }
}

impl From<&Domain> for crate::runtime_config::DomainConfig {
    fn from(domain: &Domain) -> Self {
        Self {
            description: domain.description.clone(),
            example_queries: domain.example_queries.clone(),
            fallback: domain.fallback,
        }
    }
}

/// The adapter's domain, used for per-query adapter selection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Domain {
    /// One or two sentences about what the adapter covers.
    #[schemars(length(min = 1, max = 2048))]
    pub description: String,
    /// Typical customer queries of this domain; with the description they form the domain
    /// centroid that queries are compared with.
    #[serde(default)]
    #[schemars(length(max = 64), inner(length(min = 1, max = 1024)))]
    pub example_queries: Vec<String>,
    /// Serve every query of the Router that no other lineage's domain is selected for: a
    /// general adapter (the grounded-answer fine-tune, an SFT of the whole support domain)
    /// rather than a hot-fix for one topic. Its own domain is then never compared with queries.
    /// At most one fallback lineage per Router (a second is refused when the Router's config is
    /// compiled).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fallback: bool,
}

/// Rollout stages.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// Shadow stage: mirrored traffic, answers compared and never returned.
    #[serde(default)]
    pub shadow: ShadowStage,
    /// Canary stage: real traffic in increasing steps.
    #[serde(default)]
    pub canary: CanaryStage,
    /// After promotion, guardrails keep being watched this long; a breach still rolls back.
    #[serde(default = "default_post_promotion_watch")]
    pub post_promotion_watch: GoDuration,
}

fn default_post_promotion_watch() -> GoDuration {
    GoDuration::from_secs(24 * 3600)
}

impl Default for Rollout {
    fn default() -> Self {
        Self {
            shadow: ShadowStage::default(),
            canary: CanaryStage::default(),
            post_promotion_watch: default_post_promotion_watch(),
        }
    }
}

/// Shadow stage.
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShadowStage {
    /// How long to shadow; `0s` skips the stage.
    #[serde(default = "default_shadow_duration")]
    pub duration: GoDuration,
    /// Share of eligible requests mirrored to the candidate.
    #[serde(default = "default_shadow_share")]
    #[cfg_attr(feature = "kube", x_kube(validation = Rule::new(percent_rule("self", 0.0, 100.0, false)).message(messages::SHADOW_SHARE)))]
    pub sample_share: Percent,
}

fn default_shadow_duration() -> GoDuration {
    GoDuration::from_secs(3600)
}
fn default_shadow_share() -> Percent {
    Percent::from_fraction(0.1)
}

impl Default for ShadowStage {
    fn default() -> Self {
        Self {
            duration: default_shadow_duration(),
            sample_share: default_shadow_share(),
        }
    }
}

/// Canary stage.
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CanaryStage {
    /// Steps of increasing traffic weight; after the last step (and its analysis) the candidate
    /// is promoted. Empty: promote right after the shadow stage.
    #[serde(default = "default_steps")]
    #[schemars(length(max = 10))]
    #[cfg_attr(feature = "kube", x_kube(validation = Rule::new("self.map(s, s.weight).isSorted() && self.all(s, self.exists_one(t, t.weight == s.weight))").message(messages::STEPS_INCREASING)))]
    pub steps: Vec<CanaryStep>,
}

fn default_steps() -> Vec<CanaryStep> {
    vec![
        CanaryStep {
            weight: 5,
            duration: GoDuration::from_secs(3600),
        },
        CanaryStep {
            weight: 25,
            duration: GoDuration::from_secs(2 * 3600),
        },
        CanaryStep {
            weight: 50,
            duration: GoDuration::from_secs(4 * 3600),
        },
    ]
}

impl Default for CanaryStage {
    fn default() -> Self {
        Self {
            steps: default_steps(),
        }
    }
}

/// One canary step.
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanaryStep {
    /// Percent of traffic (integer, 1..100) served by the candidate during this step.
    #[schemars(range(min = 1, max = 100))]
    pub weight: i32,
    /// How long the step lasts before its analysis decides to continue.
    #[cfg_attr(feature = "kube", x_kube(validation = Rule::new(duration_at_least_rule("self", "1m")).message(messages::STEP_DURATION)))]
    pub duration: GoDuration,
}

impl AdapterPatchSpec {
    /// The parsed version.
    pub fn semver(&self) -> Result<semver::Version, semver::Error> {
        semver::Version::parse(&self.version)
    }

    /// The canary steps, checked: weights strictly increasing within 1..=100.
    pub fn canary_steps(&self) -> Result<&[CanaryStep], ValidationErrors> {
        let mut errors = Errors::default();
        check_steps(&self.rollout.canary.steps, &mut errors);
        errors
            .finish()
            .map(|()| self.rollout.canary.steps.as_slice())
    }
}

fn check_steps(steps: &[CanaryStep], errors: &mut Errors) {
    let increasing = steps.windows(2).all(|w| w[0].weight < w[1].weight);
    let bounded = steps.iter().all(|s| (1..=100).contains(&s.weight));
    errors.check(
        increasing && bounded,
        "spec.rollout.canary.steps",
        messages::STEPS_INCREASING,
    );
}

impl Validate for AdapterPatchSpec {
    fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = Errors::default();
        errors.check(self.semver().is_ok(), "spec.version", messages::SEMVER);
        errors.check(
            artifact_uri_ok(&self.artifact.uri),
            "spec.artifact.uri",
            messages::ARTIFACT_URI,
        );
        errors.check(
            (1..=64).contains(&self.lora.rank),
            "spec.lora.rank",
            "lora.rank must be between 1 and 64",
        );
        check_steps(&self.rollout.canary.steps, &mut errors);
        for (i, step) in self.rollout.canary.steps.iter().enumerate() {
            errors.check(
                step.duration.duration().as_secs() >= 60,
                format!("spec.rollout.canary.steps[{i}].duration"),
                messages::STEP_DURATION,
            );
        }
        errors.check(
            self.rollout.shadow.sample_share.percent() > 0.0,
            "spec.rollout.shadow.sampleShare",
            messages::SHADOW_SHARE,
        );
        for (i, g) in self.guardrails.iter().enumerate() {
            g.check(&format!("spec.guardrails[{i}]"), &mut errors);
            errors.check(
                self.guardrails
                    .iter()
                    .filter(|o| o.metric == g.metric)
                    .count()
                    == 1,
                format!("spec.guardrails[{i}].metric"),
                messages::GUARDRAIL_UNIQUE,
            );
        }
        errors.check(
            self.rollback_window.duration().as_secs() >= 3600,
            "spec.rollbackWindow",
            messages::ROLLBACK_WINDOW,
        );
        // The limits are `Percent`s: out-of-range values are refused while parsing.
        if let Some(e) = &self.evaluation {
            errors.check(
                e.timeout.duration().as_secs() >= 60,
                "spec.evaluation.timeout",
                messages::EVALUATION_TIMEOUT,
            );
        }
        errors.finish()
    }
}

/// Whether a `baseModel` names a local file or directory (`/...`, `file://`, `pvc://`) rather
/// than a model id: its model name only the runtime can read, when it loads it.
pub fn is_local_model(name: &str) -> bool {
    name.starts_with('/') || name.starts_with("file://") || name.starts_with("pvc://")
}

/// The model a name points at: its last path segment without a `.gguf` / `.safetensors`
/// extension (`/models/SmolLM2-135M-Instruct.Q4_1.gguf` -> `SmolLM2-135M-Instruct.Q4_1`,
/// `HuggingFaceTB/SmolLM2-135M-Instruct/` -> `SmolLM2-135M-Instruct`). What the operator's
/// artifact check and the trainer compare base models by.
pub fn model_stem(name: &str) -> &str {
    let last = name
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(name);
    last.strip_suffix(".gguf")
        .or_else(|| last.strip_suffix(".safetensors"))
        .unwrap_or(last)
}

impl AdapterPatchSpec {
    /// Checks the rules that compare an update with the stored object (immutable fields).
    pub fn validate_update(&self, old: &Self) -> Result<(), ValidationErrors> {
        let mut errors = Errors::default();
        errors.check(
            self.lineage == old.lineage,
            "spec.lineage",
            messages::LINEAGE_IMMUTABLE,
        );
        errors.check(
            self.base_model == old.base_model,
            "spec.baseModel",
            messages::BASE_MODEL_IMMUTABLE,
        );
        errors.finish()
    }
}

fn artifact_uri_ok(uri: &str) -> bool {
    if uri.chars().any(char::is_whitespace) {
        return false;
    }
    if let Some(path) = uri.strip_prefix("file:///") {
        return !path.is_empty();
    }
    ["oci://", "http://", "https://", "pvc://"]
        .iter()
        .any(|scheme| {
            uri.strip_prefix(scheme)
                .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
        })
}

/// Rollout phase of an AdapterPatch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AdapterPhase {
    /// Seen, not yet acted on.
    #[default]
    Pending,
    /// Fetching the artifact and checking its digest and config.
    Validating,
    /// Serving mirrored traffic only.
    Shadow,
    /// Serving a canary step.
    Canary,
    /// The candidate is the stable version.
    Promoted,
    /// A guardrail breach or a user rolled the candidate back.
    RolledBack,
    /// A newer version replaced this one (history entries only).
    Superseded,
    /// The artifact could not be verified or loaded.
    Failed,
}

#[cfg(feature = "kube")]
/// Observed state of an AdapterPatch.
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdapterPatchStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing`, `Degraded`, `ArtifactVerified`, `GuardrailsHealthy`,
    /// `AdapterStacking`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "kube", x_kube(merge_strategy = ListMerge::Map(vec!["type".into()])))]
    pub conditions: Vec<Condition>,
    /// Phase of the candidate version's rollout (or `Promoted` when it is stable).
    #[serde(default)]
    pub phase: AdapterPhase,
    /// Index into `spec.rollout.canary.steps` of the current step (Canary phase).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_step: Option<i32>,
    /// Percent of traffic served by the candidate now (0 outside Canary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_weight: Option<i32>,
    /// The version serving the rest of the traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_version: Option<String>,
    /// The version being rolled out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate_version: Option<String>,
    /// When the current stage or step started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_at: Option<Time>,
    /// Every version seen, newest last; superseded versions stay loadable for `rollbackWindow`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryEntry>,
    /// The most recent guardrail analysis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_analysis: Option<Analysis>,
    /// The offline evaluation of the candidate (`spec.evaluation`): running, or its verdict
    /// with every metric of the candidate against the stable version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<EvaluationResult>,
}

#[cfg(feature = "kube")]
/// The offline evaluation of one candidate version.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EvaluationResult {
    /// The evaluated (candidate) version.
    pub version: String,
    /// The version it was compared with (the stable one; unset for a first version, which is
    /// held to the absolute limits only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_version: Option<String>,
    /// The evaluation Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Unset while the Job runs; then whether every limit held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passed: Option<bool>,
    /// Golden questions answered (answerable, unanswerable).
    #[serde(default)]
    pub questions: i32,
    /// Each metric of the candidate against the baseline and its limit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<EvaluationMetric>,
    /// What was decided, with the numbers.
    #[serde(default)]
    pub message: String,
    /// When the Job started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the verdict was reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
}

/// One metric of an offline evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EvaluationMetric {
    /// `keyFactAccuracy`, `correctRefusal`, `falseRefusal` or `invalidCitationRate`.
    pub name: String,
    /// The stable version's value (0..1), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<f64>,
    /// The candidate's value (0..1).
    pub candidate: f64,
    /// The limit, as written in `spec.evaluation` (`at most 2% below`, ...).
    pub limit: String,
    /// Whether the candidate is within it.
    pub passed: bool,
}

#[cfg(feature = "kube")]
/// One version in the history.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    /// The version.
    pub version: String,
    /// Its artifact digest.
    pub sha256: String,
    /// Its artifact URI as the spec named it, so the version stays loadable from its source
    /// after the spec moves on to a newer version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// How it ended (or its current phase, for the newest).
    pub phase: AdapterPhase,
    /// When its rollout started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When it stopped serving (superseded, rolled back, failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// Why it ended (condition reason, e.g. `GuardrailBreached`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Decision of one analysis.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AnalysisDecision {
    /// Not enough samples yet.
    #[default]
    Wait,
    /// Guardrails hold: move to the next step when the step's duration is over.
    Continue,
    /// A guardrail is breached: roll back.
    Rollback,
}

/// Outcome counts of one arm.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ArmCounts {
    /// Interactions with the outcome (e.g. escalations).
    pub events: i64,
    /// Interactions.
    pub trials: i64,
    /// `events / trials`.
    pub rate: f64,
    /// Answers younger than the guardrail's `settleAfter`: their outcomes may still arrive, so
    /// they are not compared yet (absent for the answer-time metrics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsettled: Option<i64>,
}

#[cfg(feature = "kube")]
/// Result of a guardrail analysis.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Analysis {
    /// When it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
    /// Overall decision (the worst of the guardrails).
    pub decision: AnalysisDecision,
    /// Human-readable summary, e.g. which guardrail breached and by how much.
    #[serde(default)]
    pub message: String,
    /// Per-guardrail results.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guardrails: Vec<GuardrailAnalysis>,
}

/// One guardrail's comparison of candidate and baseline.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GuardrailAnalysis {
    /// The metric.
    pub metric: String,
    /// The window it was measured over.
    pub window: String,
    /// The follow-up of each answer compared (`settleAfter`; absent for the answer-time
    /// metrics): the window's answers were given between `window + settleAfter` and
    /// `settleAfter` ago, with the outcomes that arrived within `settleAfter` of each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settle_after: Option<String>,
    /// The stable version's counts.
    pub baseline: ArmCounts,
    /// The candidate's counts.
    pub candidate: ArmCounts,
    /// `candidate.rate / baseline.rate - 1`.
    pub relative_change: f64,
    /// Lower bound of the confidence interval of the relative change.
    pub ci_low: f64,
    /// Upper bound of the confidence interval of the relative change.
    pub ci_high: f64,
    /// Whether the limit is breached at the configured confidence.
    pub breached: bool,
}
