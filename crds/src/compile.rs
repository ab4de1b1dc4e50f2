//! The compiler: Router + KnowledgeBase + selected AdapterPatches + running Experiments ->
//! [`RuntimeConfig`]. Pure and deterministic: lists are sorted, shares normalised, and the same
//! input always gives the same `revision`.

use std::collections::{BTreeMap, BTreeSet};

use crate::{
    AdapterPatch, Experiment, KnowledgeBase, Router, Validate, ValidationErrors,
    adapter_patch::AdapterPhase,
    experiment::ExperimentPhase,
    router::{HoldoutPhase, PinnedVersion},
    runtime_config::{
        AdapterArtifact, AdapterConfig, AdapterRole, EndpointConfig, ExperimentConfig,
        HoldoutConfig, KIND, KnowledgeBaseConfig, LargeModelConfig, MAX_SETTLE_WINDOWS,
        RouterIdentity, RouterPolicy, RuntimeConfig, SmallModelConfig, VariantConfig,
    },
    units::{GoDuration, Percent},
};
use sha2::{Digest as _, Sha256};

/// Why a Router could not be compiled. Each variant names the object at fault.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// The Router's spec breaks a rule.
    #[error("Router {router}: {source}")]
    InvalidRouter {
        /// Router name.
        router: String,
        /// The rules broken.
        source: ValidationErrors,
    },
    /// The KnowledgeBase given is not the one the Router references.
    #[error("Router {router} references KnowledgeBase {wanted}, got {got}")]
    WrongKnowledgeBase {
        /// Router name.
        router: String,
        /// Referenced name.
        wanted: String,
        /// Name given.
        got: String,
    },
    /// The KnowledgeBase has no index generation to serve yet.
    #[error("KnowledgeBase {0} has no index generation yet")]
    KnowledgeBaseNotReady(String),
    /// The compiled document fails its own validation (a compiler bug or an impossible status).
    #[error("compiled RuntimeConfig is invalid: {0}")]
    InvalidOutput(ValidationErrors),
    /// Serialisation for the revision failed.
    #[error("serialising the RuntimeConfig: {0}")]
    Serialize(#[from] serde_json::Error),
}

impl CompileError {
    /// Short label for metrics and condition reasons.
    pub fn reason(&self) -> &'static str {
        use crate::conditions::reasons;
        match self {
            Self::InvalidRouter { .. } => reasons::INVALID_SPEC,
            Self::WrongKnowledgeBase { .. } => reasons::REFERENCE_NOT_FOUND,
            Self::KnowledgeBaseNotReady(_) => reasons::INDEX_BUILDING,
            Self::InvalidOutput(_) | Self::Serialize(_) => "CompileFailed",
        }
    }
}

/// Something selected but left out of the config, with why (for status and Events).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// `AdapterPatch`, `Experiment`, or `HoldoutPin` (`lineage@version` of the Router holdout).
    pub kind: &'static str,
    /// Object name.
    pub name: String,
    /// CamelCase reason.
    pub reason: &'static str,
    /// Sentence.
    pub message: String,
}

/// The compiled config and what was left out.
#[derive(Clone, Debug, PartialEq)]
pub struct Compiled {
    /// The document, with its revision set.
    pub config: RuntimeConfig,
    /// Objects that matched but are not in the config.
    pub skipped: Vec<Skipped>,
}

/// Everything the compiler reads. `adapters` and `experiments` may hold objects of other Routers
/// or namespaces: the compiler selects.
#[derive(Clone, Copy, Debug)]
pub struct CompileInput<'a> {
    /// The Router.
    pub router: &'a Router,
    /// The KnowledgeBase it references.
    pub knowledge_base: &'a KnowledgeBase,
    /// AdapterPatches (with status) to select from.
    pub adapters: &'a [AdapterPatch],
    /// Experiments (with status) to select from.
    pub experiments: &'a [Experiment],
    /// The Router's permanent holdout ([`HoldoutPins::of`]).
    pub holdout: HoldoutPins<'a>,
}

/// What the compiler does with the Router's permanent holdout (`spec.holdout`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldoutPins<'a> {
    /// None runs: no `spec.holdout`, or it has ended.
    Off,
    /// It starts with this config: each lineage's stable version is pinned.
    Start,
    /// It runs with the versions pinned at its start (`status.holdout.pinned`).
    Pinned(&'a [PinnedVersion]),
}

impl<'a> HoldoutPins<'a> {
    /// The holdout of `router` at `now`, from its spec and status.
    pub fn of(router: &'a Router, now: k8s_openapi::jiff::Timestamp) -> Self {
        if router.spec.holdout.is_none() {
            return Self::Off;
        }
        match router.status.as_ref().and_then(|s| s.holdout.as_ref()) {
            None => Self::Start,
            Some(h) if h.phase == HoldoutPhase::Ended || now >= h.ends_at.0 => Self::Off,
            Some(h) => Self::Pinned(&h.pinned),
        }
    }
}

pub use crate::selector_matches;

fn normalized(p: &Percent) -> Percent {
    Percent::from_fraction(p.fraction())
}

/// Compiles one Router's RuntimeConfig.
pub fn compile(input: CompileInput<'_>) -> Result<Compiled, CompileError> {
    let router = input.router;
    let router_name = router.metadata.name.clone().unwrap_or_default();
    let namespace = router.metadata.namespace.clone().unwrap_or_default();
    let spec = &router.spec;
    spec.validate()
        .map_err(|source| CompileError::InvalidRouter {
            router: router_name.clone(),
            source,
        })?;

    let kb = input.knowledge_base;
    let kb_name = kb.metadata.name.clone().unwrap_or_default();
    if kb_name != spec.knowledge_base_ref.name {
        return Err(CompileError::WrongKnowledgeBase {
            router: router_name,
            wanted: spec.knowledge_base_ref.name.clone(),
            got: kb_name,
        });
    }
    let kb_status = kb.status.clone().unwrap_or_default();
    let Some(index_generation) = kb_status.index_generation.filter(|g| *g >= 1) else {
        return Err(CompileError::KnowledgeBaseNotReady(kb_name));
    };

    let mut skipped = Vec::new();
    let adapters = select_adapters(router, &namespace, input.adapters, &mut skipped);

    let mut config = RuntimeConfig {
        api_version: crate::API_VERSION.to_owned(),
        kind: KIND.to_owned(),
        revision: String::new(),
        router: RouterIdentity {
            namespace: namespace.clone(),
            name: router_name.clone(),
        },
        knowledge_base: KnowledgeBaseConfig {
            name: kb_name,
            index_generation,
            previous_generation: kb_status
                .previous_generation
                .filter(|p| *p >= 1 && *p < index_generation),
            embedding_model: kb.spec.embedding.model.clone(),
            retrieval: kb.spec.retrieval.clone(),
        },
        small_model: SmallModelConfig {
            model: spec.small_model.model.clone(),
            max_active_adapters: spec.small_model.max_active_adapters,
            max_new_tokens: spec.generation.max_new_tokens,
            max_queue_depth: spec.small_model.max_queue_depth,
        },
        adapters,
        large_model: LargeModelConfig {
            local: spec.large_model.local.as_ref().map(|l| l.model.clone()),
            endpoint: spec.large_model.endpoint.as_ref().map(|e| EndpointConfig {
                url: e.url.clone(),
                model: e.model.clone(),
                secret_ref: e.secret_ref.clone(),
                allow_plaintext_in_cluster: e.allow_plaintext_in_cluster,
                timeout: e.timeout.clone(),
            }),
            max_queue_depth: spec.large_model.max_queue_depth,
        },
        router_policy: RouterPolicy {
            difficulty_threshold: spec.difficulty.threshold,
            difficulty_model: spec.difficulty.model.as_ref().map(|m| m.weights),
            adapter_selection: spec.adapter_selection.clone(),
            query_rewrite: {
                let mut q = spec.query_rewrite.clone();
                q.max_vocabulary_overlap = normalized(&q.max_vocabulary_overlap);
                q
            },
            exploration_share: normalized(&spec.exploration.share),
            shadow_max_concurrent: spec.shadow.max_concurrent,
            grounding: spec.generation.grounding.clone(),
            redact: spec.privacy.redact.clone(),
        },
        experiments: Vec::new(),
        guardrail_settle_windows: Vec::new(),
        holdout: None,
    };
    config.experiments = select_experiments(
        &config,
        &router_name,
        &namespace,
        input.experiments,
        &mut skipped,
    );
    config.holdout = holdout(
        router,
        &mut config.adapters,
        input.adapters,
        input.holdout,
        &mut skipped,
    );
    config.guardrail_settle_windows =
        settle_windows(&config, &namespace, input.adapters, input.experiments);
    skipped.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));

    config.revision = revision(&config)?;
    config.validate().map_err(CompileError::InvalidOutput)?;
    Ok(Compiled { config, skipped })
}

/// The namespace the embedded default serves its manifests in: the RuntimeConfig's Router is
/// `local/<router name>` (docs/metrics.md).
pub const EMBEDDED_NAMESPACE: &str = "local";

/// What the embedded default (`switchboard-runtime serve --manifests`, no cluster) compiles: the
/// manifests of one Router, its KnowledgeBase at a generation the runtime indexed itself, and the
/// AdapterPatches whose artifacts are on this machine.
#[derive(Clone, Copy, Debug)]
pub struct EmbeddedInput<'a> {
    /// The Router.
    pub router: &'a Router,
    /// The KnowledgeBase it references.
    pub knowledge_base: &'a KnowledgeBase,
    /// The index generation served.
    pub generation: i64,
    /// The generation before it, if one is kept.
    pub previous: Option<i64>,
    /// AdapterPatches to select from (the Router's selector and base model decide, as in a
    /// cluster); each serves its spec's version as the stable one.
    pub adapters: &'a [AdapterPatch],
}

/// The embedded default's RuntimeConfig, compiled by [`compile`] from the objects a cluster
/// would hold once these manifests were applied in namespace [`EMBEDDED_NAMESPACE`] and settled
/// ([`embedded_objects`]). Experiments and the Router holdout are not run: their state lives
/// in a cluster's status, which local manifests don't carry.
pub fn compile_embedded(input: EmbeddedInput<'_>) -> Result<Compiled, CompileError> {
    let (router, knowledge_base, adapters) = embedded_objects(input);
    compile(CompileInput {
        router: &router,
        knowledge_base: &knowledge_base,
        adapters: &adapters,
        experiments: &[],
        holdout: HoldoutPins::Off,
    })
}

/// The objects of an embedded run as the compiler reads them: in namespace
/// [`EMBEDDED_NAMESPACE`], the KnowledgeBase serving `generation`, every AdapterPatch with its
/// spec's version promoted. Statuses the manifests carry are replaced.
pub fn embedded_objects(input: EmbeddedInput<'_>) -> (Router, KnowledgeBase, Vec<AdapterPatch>) {
    let mut router = input.router.clone();
    router.metadata.namespace = Some(EMBEDDED_NAMESPACE.to_owned());
    router.status = None;
    let mut knowledge_base = input.knowledge_base.clone();
    knowledge_base.metadata.namespace = Some(EMBEDDED_NAMESPACE.to_owned());
    knowledge_base.status = Some(crate::KnowledgeBaseStatus {
        index_generation: Some(input.generation),
        previous_generation: input.previous,
        ..Default::default()
    });
    let adapters = input
        .adapters
        .iter()
        .map(|patch| {
            let mut patch = patch.clone();
            patch.metadata.namespace = Some(EMBEDDED_NAMESPACE.to_owned());
            patch.status = Some(crate::AdapterPatchStatus {
                phase: AdapterPhase::Promoted,
                stable_version: Some(patch.spec.version.clone()),
                ..Default::default()
            });
            patch
        })
        .collect();
    (router, knowledge_base, adapters)
}

/// The RuntimeConfig's holdout: the share, and per lineage the pinned version, loaded as a
/// `Pinned` entry when the lineage has moved on (its URI and digest from the AdapterPatch's
/// history). A pinned version that cannot be loaded any more (its AdapterPatch gone, or its
/// history entry) is skipped: its lineage then serves the held-out units no adapter.
fn holdout(
    router: &Router,
    adapters: &mut Vec<AdapterConfig>,
    patches: &[AdapterPatch],
    pins: HoldoutPins<'_>,
    skipped: &mut Vec<Skipped>,
) -> Option<HoldoutConfig> {
    let spec = router.spec.holdout.as_ref()?;
    let pinned: BTreeMap<String, String> = match pins {
        HoldoutPins::Off => return None,
        HoldoutPins::Start => adapters
            .iter()
            .filter(|a| a.role == AdapterRole::Stable)
            .map(|a| (a.lineage.clone(), a.version.clone()))
            .collect(),
        HoldoutPins::Pinned(list) => list
            .iter()
            .map(|p| (p.lineage.clone(), p.version.clone()))
            .collect(),
    };
    let mut kept = BTreeMap::new();
    let mut extra = Vec::new();
    for (lineage, version) in pinned {
        let loaded = adapters
            .iter()
            .any(|a| a.lineage == lineage && a.version == version && a.role != AdapterRole::Shadow);
        if !loaded {
            // The lineage's AdapterPatch in the config (any of its entries names it).
            let patch = adapters
                .iter()
                .find(|a| a.lineage == lineage)
                .and_then(|a| {
                    patches
                        .iter()
                        .find(|p| p.metadata.name.as_deref() == Some(a.name.as_str()))
                });
            let entry = patch.and_then(|p| {
                history_artifact(p, &version).map(|artifact| {
                    let name = p.metadata.name.clone().unwrap_or_default();
                    adapter_entry(p, &name, &version, AdapterRole::Pinned, artifact)
                })
            });
            match entry {
                Some(e) => extra.push(e),
                None => {
                    skipped.push(Skipped {
                        kind: "HoldoutPin",
                        name: format!("{lineage}@{version}"),
                        reason: "PinnedVersionUnavailable",
                        message: format!(
                            "the holdout's pinned version {lineage}@{version} is no longer in its AdapterPatch's history: held-out units get no adapter of {lineage}"
                        ),
                    });
                    continue;
                }
            }
        }
        kept.insert(lineage, version);
    }
    adapters.extend(extra);
    adapters.sort_by(|a, b| (&a.lineage, a.role).cmp(&(&b.lineage, b.role)));
    Some(HoldoutConfig {
        share: normalized(&spec.share),
        pinned: kept,
    })
}

/// The artifact of `version` from the AdapterPatch's history (the spec's own when it is the
/// spec's version).
fn history_artifact(patch: &AdapterPatch, version: &str) -> Option<AdapterArtifact> {
    if patch.spec.version == version {
        return Some(spec_artifact(patch));
    }
    let status = patch.status.as_ref()?;
    status
        .history
        .iter()
        .rev()
        .find(|h| h.version == version)
        .and_then(|h| {
            h.sha256.parse().ok().map(|sha256| AdapterArtifact {
                uri: h.uri.clone(),
                sha256,
                pull_secret: pull_secret(patch, h.uri.as_ref()),
            })
        })
}

/// The distinct follow-ups of the outcome guardrails of the AdapterPatches and Experiments in
/// `config`, shortest first: the runtime keeps a settled-feedback counter for each. Beyond
/// [`MAX_SETTLE_WINDOWS`] the longest are left out (their guardrails read no data and hold).
fn settle_windows(
    config: &RuntimeConfig,
    namespace: &str,
    adapters: &[AdapterPatch],
    experiments: &[Experiment],
) -> Vec<GoDuration> {
    // An object of this namespace whose name the config lists.
    let compiled = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
                    names: &[&str]| {
        meta.namespace.as_deref().unwrap_or_default() == namespace
            && names.contains(&meta.name.as_deref().unwrap_or_default())
    };
    let adapter_names: Vec<&str> = config.adapters.iter().map(|a| a.name.as_str()).collect();
    let experiment_names: Vec<&str> = config.experiments.iter().map(|e| e.name.as_str()).collect();
    let adapter_guardrails = adapters
        .iter()
        .filter(|p| compiled(&p.metadata, &adapter_names))
        .flat_map(|p| &p.spec.guardrails);
    let experiment_guardrails = experiments
        .iter()
        .filter(|x| compiled(&x.metadata, &experiment_names))
        .flat_map(|x| &x.spec.guardrails);
    let windows: BTreeSet<std::time::Duration> = adapter_guardrails
        .chain(experiment_guardrails)
        .map(crate::Guardrail::settle)
        .filter(|d| !d.is_zero())
        .collect();
    windows
        .into_iter()
        .take(MAX_SETTLE_WINDOWS)
        .map(|d| GoDuration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
        .collect()
}

/// `sha256:<hex>` of the config's canonical bytes.
pub fn revision(config: &RuntimeConfig) -> Result<String, serde_json::Error> {
    let digest = Sha256::digest(config.canonical_bytes()?);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("sha256:{hex}"))
}

fn select_adapters(
    router: &Router,
    namespace: &str,
    patches: &[AdapterPatch],
    skipped: &mut Vec<Skipped>,
) -> Vec<AdapterConfig> {
    let small = &router.spec.small_model;
    let Some(selector) = &small.adapter_selector else {
        return Vec::new();
    };
    let empty = BTreeMap::new();
    let mut matched: Vec<&AdapterPatch> = patches
        .iter()
        .filter(|p| p.metadata.namespace.as_deref().unwrap_or_default() == namespace)
        .filter(|p| selector_matches(selector, p.metadata.labels.as_ref().unwrap_or(&empty)))
        .collect();
    // Oldest first, then by name: the winner of a lineage conflict does not flip between runs.
    matched.sort_by(|a, b| {
        let key = |p: &AdapterPatch| {
            (
                p.metadata.creation_timestamp.as_ref().map(|t| t.0),
                p.metadata.name.clone().unwrap_or_default(),
            )
        };
        key(a).cmp(&key(b))
    });

    let mut lineages = BTreeMap::<String, String>::new();
    let mut out = Vec::new();
    for patch in matched {
        let name = patch.metadata.name.clone().unwrap_or_default();
        let spec = &patch.spec;
        let skip = |reason, message: String| Skipped {
            kind: "AdapterPatch",
            name: name.clone(),
            reason,
            message,
        };
        if spec.base_model != small.model {
            skipped.push(skip(
                "BaseModelMismatch",
                format!(
                    "adapter is for base model {} but the Router serves {}",
                    spec.base_model, small.model
                ),
            ));
            continue;
        }
        if let Some(owner) = lineages.get(&spec.lineage) {
            skipped.push(skip(
                "DuplicateLineage",
                format!(
                    "lineage {} is already served by AdapterPatch {owner}",
                    spec.lineage
                ),
            ));
            continue;
        }
        let entries = adapter_entries(patch, &name);
        if entries.is_empty() {
            continue;
        }
        lineages.insert(spec.lineage.clone(), name.clone());
        out.extend(entries);
    }
    out.sort_by(|a, b| (&a.lineage, a.role).cmp(&(&b.lineage, b.role)));
    out
}

/// One version of an AdapterPatch as a RuntimeConfig entry.
fn adapter_entry(
    patch: &AdapterPatch,
    name: &str,
    version: &str,
    role: AdapterRole,
    artifact: AdapterArtifact,
) -> AdapterConfig {
    let spec = &patch.spec;
    AdapterConfig {
        name: name.to_owned(),
        lineage: spec.lineage.clone(),
        version: version.to_owned(),
        role,
        artifact,
        lora: (&spec.lora).into(),
        domain: (&spec.domain).into(),
        traffic_weight: None,
        shadow_sample_share: None,
    }
}

/// Registry credentials belong to the AdapterPatch, not to a version: every `oci://` version it
/// serves pulls with them.
fn pull_secret(patch: &AdapterPatch, uri: Option<&String>) -> Option<String> {
    patch
        .spec
        .artifact
        .pull_secret_ref
        .as_ref()
        .filter(|_| uri.is_some_and(|u| u.starts_with("oci://")))
        .map(|s| s.name.clone())
}

/// The artifact of the spec's version.
fn spec_artifact(patch: &AdapterPatch) -> AdapterArtifact {
    let spec = &patch.spec;
    AdapterArtifact {
        uri: Some(spec.artifact.uri.clone()),
        sha256: spec.artifact.sha256.clone(),
        pull_secret: pull_secret(patch, Some(&spec.artifact.uri)),
    }
}

/// The two RuntimeConfigs of an AdapterPatch's offline evaluation, from the Router's compiled
/// `config`: the **baseline** serves the lineage with its stable version alone (no canary or
/// shadow), the **candidate** with the spec's version alone, as Stable; everything else (the
/// knowledge base generation, grounding, other lineages, experiments) is the Router's. Without
/// a stable version the baseline serves the Router without the lineage.
pub fn evaluation_configs(
    config: &RuntimeConfig,
    patch: &AdapterPatch,
    name: &str,
) -> Result<(RuntimeConfig, RuntimeConfig), CompileError> {
    let lineage = &patch.spec.lineage;
    let mut baseline = config.clone();
    baseline
        .adapters
        .retain(|a| a.lineage != *lineage || a.role == AdapterRole::Stable);
    let mut candidate = baseline.clone();
    candidate.adapters.retain(|a| a.lineage != *lineage);
    candidate.adapters.push(adapter_entry(
        patch,
        name,
        &patch.spec.version,
        AdapterRole::Stable,
        spec_artifact(patch),
    ));
    candidate
        .adapters
        .sort_by(|a, b| (&a.lineage, a.role).cmp(&(&b.lineage, b.role)));
    for c in [&mut baseline, &mut candidate] {
        c.revision = revision(c)?;
        c.validate().map_err(CompileError::InvalidOutput)?;
    }
    Ok((baseline, candidate))
}

/// The stable and candidate entries of one AdapterPatch, from its status: the status is the
/// rollout's single source of truth.
fn adapter_entries(patch: &AdapterPatch, name: &str) -> Vec<AdapterConfig> {
    let spec = &patch.spec;
    let status = patch.status.clone().unwrap_or_default();
    let entry = |version: &str, role, artifact| adapter_entry(patch, name, version, role, artifact);
    let spec_artifact = spec_artifact(patch);

    let mut out = Vec::new();
    if let Some(stable) = &status.stable_version {
        // Once the spec has moved on to a candidate, the stable version's digest and URI are in
        // history (entries written before the URI was recorded carry the digest only, and the
        // runtime resolves them from its content-addressed artifact store).
        let artifact = history_artifact(patch, stable);
        if let Some(artifact) = artifact {
            out.push(entry(stable, AdapterRole::Stable, artifact));
        }
    }
    // A candidate is served only while its status says so, and only if it is the spec's version
    // (whose artifact we know). RolledBack, Failed, Pending and Validating candidates are not.
    let candidate = status
        .candidate_version
        .as_deref()
        .filter(|c| *c == spec.version && status.stable_version.as_deref() != Some(*c));
    if let Some(candidate) = candidate {
        match status.phase {
            AdapterPhase::Canary if !out.is_empty() => {
                let weight = status.canary_weight.unwrap_or(0);
                if (1..=100).contains(&weight) {
                    let mut e = entry(candidate, AdapterRole::Canary, spec_artifact);
                    e.traffic_weight = Some(weight);
                    out.push(e);
                }
            }
            AdapterPhase::Shadow => {
                let mut e = entry(candidate, AdapterRole::Shadow, spec_artifact);
                e.shadow_sample_share = Some(normalized(&spec.rollout.shadow.sample_share));
                out.push(e);
            }
            _ => {}
        }
    }
    out
}

fn select_experiments(
    config: &RuntimeConfig,
    router_name: &str,
    namespace: &str,
    experiments: &[Experiment],
    skipped: &mut Vec<Skipped>,
) -> Vec<ExperimentConfig> {
    let mut out = Vec::new();
    for x in experiments {
        if x.metadata.namespace.as_deref().unwrap_or_default() != namespace
            || x.spec.router_ref.name != router_name
        {
            continue;
        }
        let running = x
            .status
            .as_ref()
            .is_some_and(|s| s.phase == ExperimentPhase::Running);
        if !running {
            continue;
        }
        let name = x.metadata.name.clone().unwrap_or_default();
        let skip = |reason, message: String| Skipped {
            kind: "Experiment",
            name: name.clone(),
            reason,
            message,
        };
        let status = x.status.as_ref();
        let Some(range) = status.and_then(|s| s.allocation) else {
            skipped.push(skip(
                "NotAllocated",
                "running without a range of the Router's experiment layer (status.allocation)"
                    .to_owned(),
            ));
            continue;
        };
        let started = status.and_then(|s| s.started_at.as_ref()).map(|t| t.0);
        if let Err(errors) = x.spec.validate() {
            skipped.push(skip(
                crate::conditions::reasons::INVALID_SPEC,
                errors.to_string(),
            ));
            continue;
        }
        let missing: BTreeSet<String> = x
            .spec
            .variants
            .iter()
            .flat_map(|v| &v.overrides.adapter_versions)
            .filter(|(lineage, version)| config.adapter(lineage, version).is_none())
            .map(|(lineage, version)| format!("{lineage}@{version}"))
            .collect();
        if !missing.is_empty() {
            skipped.push(skip(
                "AdapterVersionNotLoaded",
                format!(
                    "variants override adapter versions this Router does not load: {}",
                    missing.into_iter().collect::<Vec<_>>().join(", ")
                ),
            ));
            continue;
        }
        let kb = &config.knowledge_base;
        let bad_generation = x
            .spec
            .variants
            .iter()
            .filter_map(|v| v.overrides.knowledge_base_generation)
            .find(|g| *g != kb.index_generation && Some(*g) != kb.previous_generation);
        if let Some(generation) = bad_generation {
            skipped.push(skip(
                "IndexGenerationUnavailable",
                format!(
                    "a variant needs index generation {generation}; served are {} and {:?}",
                    kb.index_generation, kb.previous_generation
                ),
            ));
            continue;
        }
        out.push((
            started,
            ExperimentConfig {
                name,
                unit: x.spec.unit,
                salt: x.spec.salt.clone(),
                range,
                segments: x.spec.segments.clone(),
                holdout_share: normalized(&x.spec.holdout.share),
                control: x.spec.control().unwrap_or_default().to_owned(),
                variants: x
                    .spec
                    .variants
                    .iter()
                    .map(|v| {
                        let mut overrides = v.overrides.clone();
                        overrides.exploration_share =
                            overrides.exploration_share.as_ref().map(normalized);
                        VariantConfig {
                            name: v.name.clone(),
                            weight: v.weight,
                            overrides,
                        }
                    })
                    .collect(),
            },
        ));
    }
    // In the order they started: a request goes to the first experiment whose range holds it,
    // so an older experiment's units are never taken by a newer one (units of different kinds
    // land in different buckets).
    out.sort_by(|(a_started, a), (b_started, b)| {
        a_started.cmp(b_started).then_with(|| a.name.cmp(&b.name))
    });
    out.into_iter().map(|(_, x)| x).collect()
}
