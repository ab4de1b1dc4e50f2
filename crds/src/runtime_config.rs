//! `RuntimeConfig`: the one document the operator compiles for a Router's runtime pods.
//!
//! The operator is a compiler (DESIGN.md): a Router, its KnowledgeBase, the AdapterPatches its
//! selector matches (with their rollout status) and the running Experiments become one
//! `RuntimeConfig`, written to a ConfigMap that the runtime mounts and hot-reloads. Adapters and
//! experiment arms therefore change without restarting pods.
//!
//! The runtime calls [`RuntimeConfig::from_json`] on every reload: a document that does not parse
//! or fails [`Validate::validate`] is rejected and the runtime keeps serving the previous one.
//! `revision` is a content hash (`sha256:<hex>` of [`RuntimeConfig::canonical_bytes`]) so that
//! runtime and operator can tell configs apart and report which one is loaded.

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    Digest,
    common::{Errors, SecretKeyRef, Validate, ValidationErrors},
    experiment::{AssignmentUnit, Overrides},
    knowledge_base::Retrieval,
    router::{AdapterSelection, QueryRewrite},
    units::{GoDuration, Percent},
};

/// `kind` of the document.
pub const KIND: &str = "RuntimeConfig";

/// File name of the document inside the ConfigMap (and the mounted directory).
pub const FILE_NAME: &str = "runtime-config.json";

/// The compiled configuration of one Router's runtime.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    /// Always `switchboard.dev/v1alpha1`.
    pub api_version: String,
    /// Always `RuntimeConfig`.
    pub kind: String,
    /// Content hash `sha256:<64 hex>` of [`RuntimeConfig::canonical_bytes`]; empty while being
    /// built.
    #[serde(default)]
    pub revision: String,
    /// The Router this config was compiled for.
    pub router: RouterIdentity,
    /// The knowledge base to retrieve from.
    pub knowledge_base: KnowledgeBaseConfig,
    /// The small model and its generation limits.
    pub small_model: SmallModelConfig,
    /// Adapters to load, sorted by lineage then role (stable, canary, shadow).
    #[serde(default)]
    pub adapters: Vec<AdapterConfig>,
    /// The large model that difficult queries go to.
    pub large_model: LargeModelConfig,
    /// Per-query routing policy.
    pub router_policy: RouterPolicy,
    /// Running experiments, in the order they started, with disjoint ranges of the layer.
    #[serde(default)]
    pub experiments: Vec<ExperimentConfig>,
    /// The follow-ups (`settleAfter`) of the outcome guardrails watching this Router's answers
    /// (its AdapterPatches' and running Experiments'), shortest first, at most
    /// [`MAX_SETTLE_WINDOWS`]: for each, the runtime counts feedback that arrived within it of
    /// its answer in `switchboard_feedback_settled_total{settle}`, once the answer is that old.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guardrail_settle_windows: Vec<GoDuration>,
    /// The Router's permanent holdout while it runs (`Router.spec.holdout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holdout: Option<HoldoutConfig>,
}

/// The Router's permanent holdout as the runtime applies it: a unit (the request's most durable
/// id) with `hash("router-holdout", id) < share` is enrolled in no experiment, gets no canary,
/// and is served each lineage's pinned version (a lineage not pinned: no adapter); its
/// interactions carry the arm [`HOLDOUT_ARM`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HoldoutConfig {
    /// Share of units held out (above 0%, at most 20%).
    pub share: Percent,
    /// Per lineage, the version its held-out units are served (an adapter entry of that
    /// lineage and version, Stable, Canary or Pinned).
    #[serde(default)]
    pub pinned: BTreeMap<String, String>,
}

/// The `arm` of the held-out units' interactions (metric label and stored interaction; the
/// experiment is empty).
pub const HOLDOUT_ARM: &str = "router-holdout";

/// Most distinct guardrail follow-ups one Router's runtime keeps counters for.
pub const MAX_SETTLE_WINDOWS: usize = 8;

/// Which Router the config belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RouterIdentity {
    /// Namespace of the Router.
    pub namespace: String,
    /// Name of the Router.
    pub name: String,
}

/// The knowledge base generation to serve and how to retrieve from it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KnowledgeBaseConfig {
    /// Name of the KnowledgeBase.
    pub name: String,
    /// Immutable index generation to serve (>= 1).
    pub index_generation: i64,
    /// The previous generation, kept so that experiments and a switch back can use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_generation: Option<i64>,
    /// Embedding model used for dense retrieval and adapter selection.
    pub embedding_model: String,
    /// Retrieval settings (as in the KnowledgeBase spec).
    pub retrieval: Retrieval,
}

/// The small model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SmallModelConfig {
    /// Base model path or URI (HF safetensors directory or GGUF file).
    pub model: String,
    /// Most adapters resident at once.
    pub max_active_adapters: i32,
    /// Generation limit per answer.
    pub max_new_tokens: i32,
    /// Answers admitted to the small model at once (generating or waiting); more are refused.
    #[serde(default = "default_small_max_queue_depth")]
    pub max_queue_depth: i32,
}

fn default_small_max_queue_depth() -> i32 {
    16
}

/// What an adapter entry is for.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
pub enum AdapterRole {
    /// Serves the lineage's traffic not taken by a canary.
    Stable,
    /// Serves `trafficWeight` percent of the lineage's traffic.
    Canary,
    /// Runs on a sampled share of the lineage's traffic, off the critical path; never returned.
    Shadow,
    /// Serves only the Router holdout's units ([`HoldoutConfig::pinned`]): the version that was
    /// stable when the holdout started, kept loaded after the lineage moved on.
    Pinned,
}

/// One adapter version to load.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdapterConfig {
    /// Name of the AdapterPatch.
    pub name: String,
    /// Lineage (one stable and at most one candidate per lineage).
    pub lineage: String,
    /// Semantic version.
    pub version: String,
    /// Role of this version.
    pub role: AdapterRole,
    /// Where the artifact is and its digest.
    pub artifact: AdapterArtifact,
    /// LoRA hyper-parameters, with the default alpha resolved.
    pub lora: LoraConfig,
    /// Description and example queries: the domain centroid for per-query selection.
    pub domain: DomainConfig,
    /// Percent (1..=100) of the lineage's traffic on this version; `Canary` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_weight: Option<i32>,
    /// Share of the lineage's requests mirrored to this version; `Shadow` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_sample_share: Option<Percent>,
}

/// An adapter artifact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdapterArtifact {
    /// Artifact URI; unset for a stable version that is no longer in the AdapterPatch spec, which
    /// the runtime loads from its content-addressed artifact store by digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Digest of `adapter_model.safetensors`, verified before loading.
    pub sha256: Digest,
    /// Secret with registry credentials for an `oci://` URI (the AdapterPatch's
    /// `artifact.pullSecretRef`): the runtime reads `<secrets>/<name>/.dockerconfigjson`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_secret: Option<String>,
}

/// LoRA hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoraConfig {
    /// Rank (1..=64).
    pub rank: i32,
    /// Scaling alpha (the update is scaled by `alpha / rank`).
    pub alpha: f64,
    /// Modules the adapter applies to.
    pub target_modules: Vec<String>,
}

/// An adapter's domain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DomainConfig {
    /// One or two sentences.
    pub description: String,
    /// Typical queries.
    #[serde(default)]
    pub example_queries: Vec<String>,
    /// The lineage serves queries no other lineage's domain is selected for.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fallback: bool,
}

/// The large model: a local model or an OpenAI-compatible endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LargeModelConfig {
    /// A model loaded in the runtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<String>,
    /// An OpenAI-compatible chat-completions endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<EndpointConfig>,
    /// Above this many queued large-model requests, route to the small model.
    pub max_queue_depth: i32,
}

/// An OpenAI-compatible endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointConfig {
    /// Base URL (`http://` or `https://`).
    pub url: String,
    /// Model name sent in requests.
    pub model: String,
    /// Secret key holding the API key; the runtime reads it from the mounted secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
    /// The API key may go over plain `http://` to an in-cluster Service (the Router's
    /// `largeModel.endpoint.allowPlaintextInCluster`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_plaintext_in_cluster: bool,
    /// Request timeout.
    pub timeout: GoDuration,
}

/// Per-query routing policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouterPolicy {
    /// Queries scoring above this difficulty (0..=1) go to the large model.
    pub difficulty_threshold: f64,
    /// The Router's fitted difficulty weights (`spec.difficulty.model`); absent: the runtime's
    /// hand-set weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub difficulty_model: Option<crate::router::DifficultyWeights>,
    /// Adapter selection by domain similarity.
    pub adapter_selection: AdapterSelection,
    /// Query rewriting policy.
    pub query_rewrite: QueryRewrite,
    /// Share of queries routed against the policy to keep learning (at most 50%).
    pub exploration_share: Percent,
    /// Shadow requests in flight per pod.
    pub shadow_max_concurrent: i32,
    /// How answers are grounded in the evidence (the Router's `spec.generation.grounding`).
    #[serde(default)]
    pub grounding: crate::router::Grounding,
    /// The Router's own redaction patterns (`spec.privacy.redact`), applied after the built-in
    /// detectors before anything is stored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redact: Vec<crate::router::RedactPattern>,
}

/// A running experiment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExperimentConfig {
    /// Name of the Experiment.
    pub name: String,
    /// Assignment unit.
    pub unit: AssignmentUnit,
    /// Assignment salt: `hash(unit id + salt)` picks the arm.
    pub salt: String,
    /// The experiment's range of the Router's experiment layer: units whose layer bucket
    /// (`hash("experiments", unit id)`) falls in it are enrolled. Experiments are listed in the
    /// order they started; a request is enrolled in the first whose range holds it.
    pub range: crate::experiment::LayerRange,
    /// Request attributes stored with its interactions for per-segment results.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<String>,
    /// Permanent holdout share (at most 20%), served with no experiment overrides.
    pub holdout_share: Percent,
    /// The control variant.
    pub control: String,
    /// Variants, weights summing to 100.
    pub variants: Vec<VariantConfig>,
}

/// One experiment arm.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VariantConfig {
    /// Name.
    pub name: String,
    /// Percent of non-holdout units.
    pub weight: i32,
    /// Settings that differ in this arm.
    #[serde(default)]
    pub overrides: Overrides,
}

/// Why a RuntimeConfig document could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeConfigError {
    /// Not JSON of the right shape.
    #[error("RuntimeConfig does not parse: {0}")]
    Parse(#[from] serde_json::Error),
    /// Parsed but inconsistent.
    #[error("RuntimeConfig is invalid: {0}")]
    Invalid(#[from] ValidationErrors),
}

impl RuntimeConfig {
    /// Parses and validates a document; the runtime keeps its current config on error.
    pub fn from_json(bytes: &[u8]) -> Result<Self, RuntimeConfigError> {
        let config: Self = serde_json::from_slice(bytes)?;
        config.validate()?;
        Ok(config)
    }

    /// The bytes the revision hashes: the compact JSON of the document with `revision` empty.
    /// Field order is fixed by the types and every list is sorted, so equal content gives equal
    /// bytes.
    pub fn canonical_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut unrevised = self.clone();
        unrevised.revision = String::new();
        serde_json::to_vec(&unrevised)
    }

    /// The adapter entry of `lineage` with `version`, if loaded.
    pub fn adapter(&self, lineage: &str, version: &str) -> Option<&AdapterConfig> {
        self.adapters
            .iter()
            .find(|a| a.lineage == lineage && a.version == version)
    }
}

fn http_url(url: &str) -> bool {
    ["http://", "https://"].iter().any(|scheme| {
        url.strip_prefix(scheme).is_some_and(|rest| {
            rest.chars()
                .next()
                .is_some_and(|c| !c.is_whitespace() && c != '/')
        })
    })
}

fn unit_interval(x: f64) -> bool {
    (0.0..=1.0).contains(&x)
}

impl Validate for RuntimeConfig {
    fn validate(&self) -> Result<(), ValidationErrors> {
        let mut e = Errors::default();
        e.check(
            self.api_version == crate::API_VERSION,
            "apiVersion",
            "apiVersion must be switchboard.dev/v1alpha1",
        );
        e.check(self.kind == KIND, "kind", "kind must be RuntimeConfig");
        e.check(
            self.revision.parse::<Digest>().is_ok(),
            "revision",
            "revision must be a sha256 digest written sha256:<64 lowercase hex characters>",
        );
        e.check(
            !self.router.name.is_empty() && !self.router.namespace.is_empty(),
            "router",
            "router.name and router.namespace must be set",
        );

        e.check(
            self.guardrail_settle_windows.len() <= MAX_SETTLE_WINDOWS,
            "guardrailSettleWindows",
            &format!("at most {MAX_SETTLE_WINDOWS} follow-ups"),
        );
        for (i, w) in self.guardrail_settle_windows.iter().enumerate() {
            let d = w.duration();
            e.check(
                d >= std::time::Duration::from_secs(1)
                    && d <= std::time::Duration::from_secs(720 * 3600),
                format!("guardrailSettleWindows[{i}]"),
                "must be from 1s to 720h",
            );
            e.check(
                i == 0 || self.guardrail_settle_windows[i - 1].duration() < d,
                format!("guardrailSettleWindows[{i}]"),
                "must be longer than the one before (shortest first, no repeats)",
            );
        }
        for (i, p) in self.router_policy.redact.iter().enumerate() {
            if let Some(problem) = p.problem() {
                e.check(false, format!("routerPolicy.redact[{i}].pattern"), &problem);
            }
        }

        let kb = &self.knowledge_base;
        e.check(
            !kb.name.is_empty(),
            "knowledgeBase.name",
            "must not be empty",
        );
        e.check(
            kb.index_generation >= 1,
            "knowledgeBase.indexGeneration",
            "must be at least 1",
        );
        e.check(
            kb.previous_generation
                .is_none_or(|p| p >= 1 && p < kb.index_generation),
            "knowledgeBase.previousGeneration",
            "must be at least 1 and older than indexGeneration",
        );
        kb.retrieval.check(&mut e, "knowledgeBase.retrieval");
        e.check(
            (1..=100).contains(&kb.retrieval.top_k),
            "knowledgeBase.retrieval.topK",
            "must be between 1 and 100",
        );

        let small = &self.small_model;
        e.check(
            !small.model.is_empty(),
            "smallModel.model",
            "must not be empty",
        );
        e.check(
            small.max_queue_depth >= 1,
            "smallModel.maxQueueDepth",
            "must be at least 1",
        );
        e.check(
            (1..=32).contains(&small.max_active_adapters),
            "smallModel.maxActiveAdapters",
            "must be between 1 and 32",
        );
        e.check(
            small.max_new_tokens >= 1,
            "smallModel.maxNewTokens",
            "must be at least 1",
        );

        self.validate_adapters(&mut e);

        let large = &self.large_model;
        e.check(
            large.local.is_some() != large.endpoint.is_some(),
            "largeModel",
            crate::router::messages::ONE_LARGE_MODEL,
        );
        if let Some(endpoint) = &large.endpoint {
            e.check(
                http_url(&endpoint.url),
                "largeModel.endpoint.url",
                crate::router::messages::ENDPOINT_URL,
            );
            // The runtime never sends the API key where the Router's admission rule would not.
            e.check(
                endpoint.secret_ref.is_none()
                    || crate::common::credential_url_allowed(
                        &endpoint.url,
                        endpoint.allow_plaintext_in_cluster,
                    ),
                "largeModel.endpoint",
                crate::router::messages::PLAINTEXT_CREDENTIALS,
            );
            e.check(
                !endpoint.timeout.duration().is_zero(),
                "largeModel.endpoint.timeout",
                "must be above 0s",
            );
        }
        e.check(
            large.max_queue_depth >= 0,
            "largeModel.maxQueueDepth",
            "must not be negative",
        );

        let policy = &self.router_policy;
        e.check(
            unit_interval(policy.difficulty_threshold),
            "routerPolicy.difficultyThreshold",
            "must be between 0 and 1",
        );
        e.check(
            policy
                .difficulty_model
                .is_none_or(|w| w.to_array().iter().all(|x| x.is_finite())),
            "routerPolicy.difficultyModel",
            "every weight must be a finite number",
        );
        e.check(
            policy.adapter_selection.top_k == 1,
            "routerPolicy.adapterSelection.topK",
            "must be 1: one adapter per request (topK is deprecated)",
        );
        e.check(
            unit_interval(policy.adapter_selection.min_similarity),
            "routerPolicy.adapterSelection.minSimilarity",
            "must be between 0 and 1",
        );
        e.check(
            policy.exploration_share.percent() <= 50.0,
            "routerPolicy.explorationShare",
            crate::router::messages::EXPLORATION_SHARE,
        );
        e.check(
            policy.shadow_max_concurrent >= 0,
            "routerPolicy.shadowMaxConcurrent",
            "must not be negative",
        );

        self.validate_experiments(&mut e);
        e.finish()
    }
}

impl RuntimeConfig {
    fn validate_adapters(&self, e: &mut Errors) {
        let mut roles = BTreeMap::<&str, Vec<AdapterRole>>::new();
        let mut versions = BTreeSet::new();
        for (i, a) in self.adapters.iter().enumerate() {
            let field = format!("adapters[{i}]");
            e.check(
                !a.lineage.is_empty() && !a.name.is_empty(),
                &field,
                "name and lineage must be set",
            );
            e.check(
                semver::Version::parse(&a.version).is_ok(),
                format!("{field}.version"),
                crate::adapter_patch::messages::SEMVER,
            );
            e.check(
                versions.insert((a.lineage.as_str(), a.version.as_str())),
                format!("{field}.version"),
                "a lineage's version may appear once",
            );
            e.check(
                (1..=64).contains(&a.lora.rank),
                format!("{field}.lora.rank"),
                "must be between 1 and 64",
            );
            e.check(
                a.lora.alpha.is_finite() && a.lora.alpha > 0.0,
                format!("{field}.lora.alpha"),
                "must be above 0",
            );
            e.check(
                !a.lora.target_modules.is_empty(),
                format!("{field}.lora.targetModules"),
                "must not be empty",
            );
            match a.role {
                AdapterRole::Stable => e.check(
                    a.traffic_weight.is_none() && a.shadow_sample_share.is_none(),
                    &field,
                    "a Stable adapter takes no trafficWeight or shadowSampleShare",
                ),
                AdapterRole::Canary => e.check(
                    a.traffic_weight.is_some_and(|w| (1..=100).contains(&w))
                        && a.shadow_sample_share.is_none(),
                    format!("{field}.trafficWeight"),
                    "a Canary adapter needs trafficWeight between 1 and 100 and no shadowSampleShare",
                ),
                AdapterRole::Shadow => e.check(
                    a.shadow_sample_share
                        .as_ref()
                        .is_some_and(|s| s.percent() > 0.0)
                        && a.traffic_weight.is_none(),
                    format!("{field}.shadowSampleShare"),
                    "a Shadow adapter needs shadowSampleShare above 0% and no trafficWeight",
                ),
                AdapterRole::Pinned => e.check(
                    a.traffic_weight.is_none()
                        && a.shadow_sample_share.is_none()
                        && self
                            .holdout
                            .as_ref()
                            .and_then(|h| h.pinned.get(&a.lineage))
                            == Some(&a.version),
                    &field,
                    "a Pinned adapter is the version holdout.pinned names for its lineage, with no trafficWeight or shadowSampleShare",
                ),
            }
            if a.role != AdapterRole::Pinned {
                roles.entry(&a.lineage).or_default().push(a.role);
            }
        }
        for (lineage, roles) in roles {
            let stable = roles.iter().filter(|r| **r == AdapterRole::Stable).count();
            let candidates = roles.len() - stable;
            e.check(
                stable <= 1 && candidates <= 1,
                format!("adapters[lineage={lineage}]"),
                "a lineage has at most one Stable and one Canary or Shadow version",
            );
            e.check(
                !roles.contains(&AdapterRole::Canary) || stable == 1,
                format!("adapters[lineage={lineage}]"),
                "a Canary version needs a Stable version of its lineage for the rest of the traffic",
            );
        }
        let fallbacks: BTreeSet<&str> = self
            .adapters
            .iter()
            .filter(|a| a.domain.fallback)
            .map(|a| a.lineage.as_str())
            .collect();
        if fallbacks.len() > 1 {
            e.check(
                false,
                "adapters",
                &format!(
                    "lineages {} are all domain.fallback: at most one per Router",
                    fallbacks.into_iter().collect::<Vec<_>>().join(", ")
                ),
            );
        }
        e.check(
            self.adapters
                .windows(2)
                .all(|w| (w[0].lineage.as_str(), w[0].role) < (w[1].lineage.as_str(), w[1].role)),
            "adapters",
            "adapters must be sorted by lineage and role",
        );
        if let Some(h) = &self.holdout {
            e.check(
                h.share.percent() > 0.0 && h.share.percent() <= 20.0,
                "holdout.share",
                "must be above 0% and at most 20%",
            );
            for (lineage, version) in &h.pinned {
                e.check(
                    self.adapters.iter().any(|a| {
                        a.lineage == *lineage
                            && a.version == *version
                            && a.role != AdapterRole::Shadow
                    }),
                    format!("holdout.pinned.{lineage}"),
                    "names a version with no Stable, Canary or Pinned adapter entry",
                );
            }
        }
    }

    fn validate_experiments(&self, e: &mut Errors) {
        let mut names = BTreeSet::new();
        for (i, x) in self.experiments.iter().enumerate() {
            let field = format!("experiments[{i}]");
            e.check(
                names.insert(x.name.as_str()),
                format!("{field}.name"),
                "experiment names must be unique",
            );
            e.check(
                !x.salt.is_empty(),
                format!("{field}.salt"),
                "must not be empty",
            );
            e.check(
                !x.range.is_empty() && x.range.end <= crate::experiment::LAYER_BUCKETS,
                format!("{field}.range"),
                "must be a non-empty range of the layer's 10000 buckets",
            );
            e.check(
                self.experiments[..i]
                    .iter()
                    .all(|other| !other.range.overlaps(&x.range)),
                format!("{field}.range"),
                "overlaps another experiment's range: a unit would be in two experiments",
            );
            e.check(
                x.holdout_share.percent() <= 20.0,
                format!("{field}.holdoutShare"),
                crate::experiment::messages::HOLDOUT_SHARE,
            );
            let sum: i64 = x.variants.iter().map(|v| i64::from(v.weight)).sum();
            e.check(
                sum == 100 && x.variants.iter().all(|v| v.weight >= 0),
                format!("{field}.variants"),
                crate::experiment::messages::WEIGHTS_SUM,
            );
            let mut variants = BTreeSet::new();
            e.check(
                x.variants.len() >= 2 && x.variants.iter().all(|v| variants.insert(&v.name)),
                format!("{field}.variants"),
                "at least two variants with unique names",
            );
            e.check(
                variants.contains(&x.control),
                format!("{field}.control"),
                crate::experiment::messages::CONTROL_EXISTS,
            );
            for (j, v) in x.variants.iter().enumerate() {
                let o = &v.overrides;
                let vfield = format!("{field}.variants[{j}].overrides");
                e.check(
                    o.difficulty_threshold.is_none_or(unit_interval),
                    format!("{vfield}.difficultyThreshold"),
                    "must be between 0 and 1",
                );
                e.check(
                    o.exploration_share
                        .as_ref()
                        .is_none_or(|s| s.percent() <= 50.0),
                    format!("{vfield}.explorationShare"),
                    crate::router::messages::EXPLORATION_SHARE,
                );
                e.check(
                    o.adapter_top_k.is_none_or(|k| k == 1),
                    format!("{vfield}.adapterTopK"),
                    "must be 1: one adapter per request (topK is deprecated)",
                );
                for (lineage, version) in &o.adapter_versions {
                    e.check(
                        self.adapter(lineage, version).is_some(),
                        format!("{vfield}.adapterVersions.{lineage}"),
                        "names an adapter version that this config does not load",
                    );
                }
                if let Some(generation) = o.knowledge_base_generation {
                    let kb = &self.knowledge_base;
                    e.check(
                        generation == kb.index_generation
                            || Some(generation) == kb.previous_generation,
                        format!("{vfield}.knowledgeBaseGeneration"),
                        "must be the served or the previous index generation",
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RuntimeConfig {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "switchboard.dev/v1alpha1",
            "kind": "RuntimeConfig",
            "revision": format!("sha256:{}", "ab".repeat(32)),
            "router": {"namespace": "support", "name": "helpdesk"},
            "knowledgeBase": {
                "name": "docs", "indexGeneration": 3, "previousGeneration": 2,
                "embeddingModel": "/models/all-MiniLM-L6-v2", "retrieval": {}
            },
            "smallModel": {"model": "/models/smollm2", "maxActiveAdapters": 8, "maxNewTokens": 256},
            "adapters": [
                {"name": "pricing", "lineage": "pricing", "version": "1.2.0", "role": "Stable",
                 "artifact": {"uri": "file:///a/1.2.0", "sha256": format!("sha256:{}", "01".repeat(32))},
                 "lora": {"rank": 8, "alpha": 16.0, "targetModules": ["q_proj", "v_proj"]},
                 "domain": {"description": "Prices", "exampleQueries": ["how much?"]}},
                {"name": "pricing", "lineage": "pricing", "version": "1.3.0", "role": "Canary",
                 "artifact": {"uri": "file:///a/1.3.0", "sha256": format!("sha256:{}", "02".repeat(32))},
                 "lora": {"rank": 8, "alpha": 16.0, "targetModules": ["q_proj", "v_proj"]},
                 "domain": {"description": "Prices", "exampleQueries": []},
                 "trafficWeight": 25}
            ],
            "largeModel": {"endpoint": {"url": "http://large:8080", "model": "big", "timeout": "30s"},
                           "maxQueueDepth": 32},
            "routerPolicy": {"difficultyThreshold": 0.5,
                             "adapterSelection": {"topK": 1, "minSimilarity": 0.3},
                             "queryRewrite": {}, "explorationShare": "5%", "shadowMaxConcurrent": 2},
            "experiments": [{"name": "rewrite", "unit": "User", "salt": "s1", "holdoutShare": "5%",
                             "range": {"start": 0, "end": 5000},
                             "control": "off", "variants": [
                                {"name": "off", "weight": 50},
                                {"name": "on", "weight": 50,
                                 "overrides": {"queryRewritePolicy": "Always",
                                               "adapterVersions": {"pricing": "1.3.0"}}}]}]
        }))
        .unwrap()
    }

    #[test]
    fn a_complete_document_round_trips_and_validates() {
        let config = sample();
        config.validate().unwrap();
        let bytes = serde_json::to_vec(&config).unwrap();
        assert_eq!(RuntimeConfig::from_json(&bytes).unwrap(), config);
    }

    #[test]
    fn canonical_bytes_ignore_the_revision_only() {
        let a = sample();
        let mut b = sample();
        b.revision = format!("sha256:{}", "cd".repeat(32));
        assert_eq!(a.canonical_bytes().unwrap(), b.canonical_bytes().unwrap());
        b.router_policy.difficulty_threshold = 0.6;
        assert_ne!(a.canonical_bytes().unwrap(), b.canonical_bytes().unwrap());
    }

    fn errors_of(config: &RuntimeConfig) -> Vec<String> {
        config
            .validate()
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn inconsistent_documents_are_rejected_naming_the_field() {
        let mut c = sample();
        c.adapters[1].traffic_weight = None;
        assert_eq!(errors_of(&c), ["adapters[1].trafficWeight"]);

        let mut c = sample();
        c.adapters.remove(0);
        let fields = errors_of(&c);
        assert!(
            fields.contains(&"adapters[lineage=pricing]".to_owned()),
            "{fields:?}"
        );

        let mut c = sample();
        c.experiments[0].variants[1]
            .overrides
            .adapter_versions
            .insert("pricing".into(), "9.9.9".into());
        assert_eq!(
            errors_of(&c),
            ["experiments[0].variants[1].overrides.adapterVersions.pricing"]
        );

        let mut c = sample();
        c.experiments[0].variants[0].weight = 60;
        assert_eq!(errors_of(&c), ["experiments[0].variants"]);

        let mut c = sample();
        let mut second = c.experiments[0].clone();
        second.name = "tone".into();
        second.range = crate::experiment::LayerRange {
            start: 4_000,
            end: 6_000,
        };
        c.experiments.push(second);
        assert_eq!(errors_of(&c), ["experiments[1].range"]);

        let mut c = sample();
        c.large_model.local = Some("/models/big".into());
        assert_eq!(errors_of(&c), ["largeModel"]);

        // Follow-ups: shortest first, no repeats, 1s..720h, at most eight.
        let mut c = sample();
        c.guardrail_settle_windows = ["1h", "30m", "30m", "0s"]
            .iter()
            .map(|d| d.parse().unwrap())
            .collect();
        assert_eq!(
            errors_of(&c),
            [
                "guardrailSettleWindows[1]",
                "guardrailSettleWindows[2]",
                "guardrailSettleWindows[3]",
                "guardrailSettleWindows[3]"
            ]
        );
        c.guardrail_settle_windows = (1..=9).map(|h| GoDuration::from_secs(h * 60)).collect();
        assert_eq!(errors_of(&c), ["guardrailSettleWindows"]);
        c.guardrail_settle_windows.truncate(8);
        assert!(c.validate().is_ok());

        let mut c = sample();
        c.revision = "v1".into();
        c.knowledge_base.index_generation = 0;
        let fields = errors_of(&c);
        assert!(fields.contains(&"revision".to_owned()), "{fields:?}");
        assert!(
            fields.contains(&"knowledgeBase.indexGeneration".to_owned()),
            "{fields:?}"
        );
    }

    #[test]
    fn unparsable_documents_say_where() {
        let err = RuntimeConfig::from_json(br#"{"apiVersion": 1}"#).unwrap_err();
        assert!(matches!(err, RuntimeConfigError::Parse(_)), "{err}");
    }
}
