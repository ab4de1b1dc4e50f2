//! `Experiment`: an A/B test on a Router's traffic.

use std::collections::BTreeMap;

#[cfg(feature = "kube")]
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
#[cfg(feature = "kube")]
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[cfg(feature = "kube")]
use crate::units::{duration_at_least_rule, percent_rule};
use crate::{
    adapter_patch::SEMVER_PATTERN,
    common::{Errors, Guardrail, LABEL_PATTERN, Metric, ObjectRef, Validate, ValidationErrors},
    router::RewritePolicy,
    units::{GoDuration, Percent, cel_string},
};

/// A request attribute name (`spec.segments`).
pub const SEGMENT_PATTERN: &str = "^[a-zA-Z][a-zA-Z0-9_-]*$";

/// Messages of the Experiment admission rules (shared by the CEL rules and [`Validate`]).
pub mod messages {
    /// `spec.variants`.
    pub const WEIGHTS_SUM: &str = "variants[].weight must sum to 100";
    /// `spec.variants`.
    pub const VARIANT_NAMES_UNIQUE: &str = "variants[].name must be unique";
    /// `spec.holdout.share`.
    pub const HOLDOUT_SHARE: &str = "holdout.share must be between 0% and 20%";
    /// `spec.control`.
    pub const CONTROL_EXISTS: &str = "control must name one of variants[].name";
    /// `spec.minimumDetectableEffect`.
    pub const ONE_MDE: &str = "minimumDetectableEffect: set exactly one of absolute or relative";
    /// `spec.minimumDetectableEffect.*`.
    pub const MDE_POSITIVE: &str = "minimumDetectableEffect must be above 0%";
    /// `spec.alpha`.
    pub const ALPHA: &str = "alpha must be above 0% and at most 20%";
    /// `spec.power`.
    pub const POWER: &str = "power must be between 50% and 99.9%";
    /// `spec.routerRef`, `spec.unit`, `spec.salt`.
    pub const ASSIGNMENT_IMMUTABLE: &str = "routerRef, unit and salt are immutable: changing them reshuffles assignment; create a new Experiment";
    /// `spec.variants[*].overrides.adapterVersions`.
    pub const ADAPTER_VERSIONS: &str =
        "variants[].overrides.adapterVersions values must be semantic versions like 1.2.0";
    /// `spec.maxDuration`.
    pub const MAX_DURATION: &str = "maxDuration must be at least 1h";
    /// `spec.guardrails`.
    pub const GUARDRAIL_UNIQUE: &str = "guardrails[].metric must be unique";
    /// `spec.traffic`.
    pub const TRAFFIC: &str = "traffic must be above 0% and at most 100%";
    /// `spec.traffic`.
    pub const TRAFFIC_IMMUTABLE: &str = "traffic is immutable: the Experiment's range of the Router's experiment layer was allocated at the start and never moves; create a new Experiment for another share";
    /// `spec.segments`.
    pub const SEGMENTS: &str = "segments: at most 3 unique request attribute names (a letter, then letters, digits, _ or -)";
    /// `spec.cuped`.
    pub const CUPED_METRIC: &str = "cuped needs per-unit outcomes: primaryMetric and cuped.covariate cannot be shadowDivergence";
}

/// An Experiment: an A/B test on a Router's traffic. Units (users, accounts or conversations) are
/// assigned to variants by a stable hash of unit and salt; a permanent holdout never gets updates.
/// The analysis reports per-variant estimates with confidence intervals, the required sample size
/// and ETA, checks sample-ratio mismatch, and stops on a guardrail breach.
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
        kind = "Experiment",
        plural = "experiments",
        singular = "experiment",
        shortname = "exp",
        category = "switchboard",
        namespaced,
        status = "ExperimentStatus",
        selectable = ".spec.routerRef.name",
        derive = "PartialEq",
        doc = "An Experiment: an A/B test on a Router's traffic with stable hash assignment, a permanent holdout, guardrails, CUPED and sample-size planning.",
        printcolumn(name = "Router", type_ = "string", json_path = ".spec.routerRef.name"),
        printcolumn(
            name = "Traffic",
            type_ = "string",
            json_path = ".spec.traffic",
            description = "Share of the Router's units in this experiment",
            priority = 1
        ),
        printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
        printcolumn(
            name = "Samples",
            type_ = "integer",
            json_path = ".status.samples",
            description = "Units assigned so far"
        ),
        printcolumn(
            name = "Required",
            type_ = "integer",
            json_path = ".status.requiredSamplesPerVariant",
            priority = 1
        ),
        printcolumn(name = "Decision", type_ = "string", json_path = ".status.decision"),
        printcolumn(
            name = "Age",
            type_ = "date",
            json_path = ".metadata.creationTimestamp"
        )
    )
)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new("!has(self.control) || self.variants.exists(v, v.name == self.control)").message(messages::CONTROL_EXISTS).field_path(".control")))]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new("!has(self.cuped) || (self.primaryMetric.name != 'shadowDivergence' && (!has(self.cuped.covariate) || self.cuped.covariate != 'shadowDivergence'))").message(messages::CUPED_METRIC).field_path(".cuped")))]
pub struct ExperimentSpec {
    /// The Router whose traffic is split.
    #[cfg_attr(feature = "kube", x_kube(validation = Rule::new("self == oldSelf").message(messages::ASSIGNMENT_IMMUTABLE)))]
    pub router_ref: ObjectRef,

    /// What is randomised: `User` (default; stateful conversations stay in one arm), `Account`
    /// or `Conversation`. The runtime reads the id from the answer request's `userId`,
    /// `accountId` or `conversationId`; requests without it are not enrolled (counted by
    /// `switchboard_experiment_unenrolled_total`).
    #[serde(default)]
    #[cfg_attr(feature = "kube", x_kube(validation = Rule::new("self == oldSelf").message(messages::ASSIGNMENT_IMMUTABLE)))]
    pub unit: AssignmentUnit,

    /// Salt of the assignment hash; experiments with different salts assign independently.
    #[schemars(length(min = 1, max = 64))]
    #[cfg_attr(feature = "kube", x_kube(validation = Rule::new("self == oldSelf").message(messages::ASSIGNMENT_IMMUTABLE)))]
    pub salt: String,

    /// Share of the Router's units that enter this experiment (its holdout and variants), e.g.
    /// `20%`. At the start the Experiment is given a fixed range of that size in the Router's
    /// experiment layer (`status.allocation`), disjoint from every other running Experiment of
    /// the Router, so that a unit is in at most one experiment and never changes experiment while
    /// it runs; when the layer has no free range that large the Experiment stays `Pending`
    /// (condition `Allocated`, reason `LayerFull`). Immutable. Default: `100%`.
    #[serde(default = "default_traffic")]
    #[cfg_attr(feature = "kube", x_kube(validation = Rule::new(percent_rule("self", 0.0, 100.0, false)).message(messages::TRAFFIC)))]
    #[cfg_attr(feature = "kube", x_kube(validation = Rule::new("self == oldSelf").message(messages::TRAFFIC_IMMUTABLE)))]
    pub traffic: Percent,

    /// The experiment's holdout: units of its range that get none of its variants' overrides.
    #[serde(default)]
    pub holdout: Holdout,

    /// The arms. Weights are integer percents of the non-holdout traffic and sum to 100.
    #[schemars(length(min = 2, max = 8))]
    #[cfg_attr(feature = "kube", x_kube(merge_strategy = ListMerge::Map(vec!["name".into()])))]
    #[cfg_attr(feature = "kube", x_kube(validation = Rule::new("self.map(v, v.weight).sum() == 100").message(messages::WEIGHTS_SUM)))]
    #[cfg_attr(feature = "kube", x_kube(validation = Rule::new("self.all(v, self.exists_one(w, w.name == v.name))").message(messages::VARIANT_NAMES_UNIQUE)))]
    pub variants: Vec<Variant>,

    /// The variant compared against; default: the first variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), pattern(LABEL_PATTERN))]
    pub control: Option<String>,

    /// The metric the experiment decides on.
    pub primary_metric: PrimaryMetric,

    /// Metrics that must not get worse; a breach stops the experiment early.
    #[serde(default)]
    #[schemars(length(max = 8))]
    #[cfg_attr(feature = "kube", x_kube(merge_strategy = ListMerge::Map(vec!["metric".into()])))]
    pub guardrails: Vec<Guardrail>,

    /// The smallest effect worth detecting; with alpha, power and the baseline rate it gives the
    /// required sample size per variant.
    pub minimum_detectable_effect: MinimumDetectableEffect,

    /// Baseline rate of the primary metric used for planning before data arrives (e.g. `15%`);
    /// replaced by the holdout's observed rate once available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "kube", x_kube(validation = Rule::new(percent_rule("self", 0.0, 100.0, false)).message("expectedBaselineRate must be above 0% and at most 100%")))]
    pub expected_baseline_rate: Option<Percent>,

    /// Significance level (two-sided), e.g. `5%`.
    #[serde(default = "default_alpha")]
    #[cfg_attr(feature = "kube", x_kube(validation = Rule::new(percent_rule("self", 0.0, 20.0, false)).message(messages::ALPHA)))]
    pub alpha: Percent,

    /// Statistical power, e.g. `80%`.
    #[serde(default = "default_power")]
    #[cfg_attr(feature = "kube", x_kube(validation = Rule::new(percent_rule("self", 50.0, 99.9, true)).message(messages::POWER)))]
    pub power: Percent,

    /// CUPED variance reduction with a pre-period covariate. The analysis then compares per-unit
    /// rates adjusted by each unit's own rate in the pre-period before the start, read from the
    /// Router's outcome store (the runtime's `GET /v1/experiments/{name}/cuped`; docs/statistics.md).
    /// Units need an id on every request (the answer API's field for `spec.unit`: `userId`, `accountId` or `conversationId`) for this to work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cuped: Option<Cuped>,

    /// Request attributes to break the results down by (the answer request's `attributes`, e.g.
    /// `channel`, `plan`): `status.perSegment` shows each variant's units, rate and estimate per
    /// value (the 10 values with the most units; the rest, and requests without the attribute,
    /// as `(other)`). Exploratory: per-segment intervals are not corrected for the number of
    /// segments, and only the overall comparison decides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 3),
        inner(length(min = 1, max = 63), pattern(SEGMENT_PATTERN))
    )]
    #[cfg_attr(feature = "kube", x_kube(validation = Rule::new("self.all(a, self.exists_one(b, b == a))").message(messages::SEGMENTS)))]
    pub segments: Vec<String>,

    /// Stop (inconclusive) after this long even without enough samples.
    #[serde(default = "default_max_duration")]
    #[cfg_attr(feature = "kube", x_kube(validation = Rule::new(duration_at_least_rule("self", "1h")).message(messages::MAX_DURATION)))]
    pub max_duration: GoDuration,
}

fn default_traffic() -> Percent {
    Percent::from_fraction(1.0)
}
fn default_alpha() -> Percent {
    Percent::from_fraction(0.05)
}
fn default_power() -> Percent {
    Percent::from_fraction(0.8)
}
fn default_max_duration() -> GoDuration {
    GoDuration::from_secs(14 * 24 * 3600)
}

/// Randomisation unit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AssignmentUnit {
    /// The end user (all their conversations share an arm).
    #[default]
    User,
    /// The customer account.
    Account,
    /// Each conversation.
    Conversation,
}

/// The permanent holdout.
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Holdout {
    /// Share of units held out (0%..20%; 5-10% is typical).
    #[serde(default = "default_holdout_share")]
    #[cfg_attr(feature = "kube", x_kube(validation = Rule::new(percent_rule("self", 0.0, 20.0, true)).message(messages::HOLDOUT_SHARE)))]
    pub share: Percent,
}

fn default_holdout_share() -> Percent {
    Percent::from_fraction(0.05)
}

impl Default for Holdout {
    fn default() -> Self {
        Self {
            share: default_holdout_share(),
        }
    }
}

/// One arm.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Variant {
    /// Variant name (a DNS label), unique in the experiment.
    #[schemars(length(min = 1, max = 63), pattern(LABEL_PATTERN))]
    pub name: String,
    /// Integer percent of the non-holdout traffic.
    #[schemars(range(min = 0, max = 100))]
    pub weight: i32,
    /// What this arm changes; empty: the Router as configured.
    #[serde(default)]
    pub overrides: Overrides,
}

/// Settings a variant overrides.
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Overrides {
    /// Router `difficulty.threshold`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub difficulty_threshold: Option<f64>,
    /// Router `queryRewrite.policy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_rewrite_policy: Option<RewritePolicy>,
    /// Router `exploration.share`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exploration_share: Option<Percent>,
    /// Router `adapterSelection.topK`. Deprecated with it: only `1` is supported (one adapter
    /// per request); the field leaves the API in `v1beta1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1))]
    pub adapter_top_k: Option<i32>,
    /// Adapter version per lineage (e.g. `pricing: 1.2.0`); the version must be in the
    /// AdapterPatch's history within its rollback window.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "adapter_versions_schema")]
    pub adapter_versions: BTreeMap<String, String>,
    /// KnowledgeBase index generation to serve (must still be kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub knowledge_base_generation: Option<i64>,
}

/// Direction of improvement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Direction {
    /// Higher is better.
    Increase,
    /// Lower is better.
    Decrease,
}

/// The primary metric.
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PrimaryMetric {
    /// The metric.
    pub name: Metric,
    /// Which way is better.
    pub direction: Direction,
    /// How old an interaction must be before it counts for the comparison: its outcome has had
    /// time to arrive. Arms are compared on settled interactions only, so a late escalation
    /// never makes the newer interactions look better; `status.unsettledInteractions` shows how
    /// many wait. Default: `72h` for escalationRate, reopenRate, resolutionRate, csatLow and
    /// csatHigh (reported by the helpdesk later), `0s` for the answer-time metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "kube", x_kube(validation = Rule::new(duration_at_least_rule("self", "0s")).message("primaryMetric.settleAfter must be a duration like 72h")))]
    pub settle_after: Option<GoDuration>,
}

impl PrimaryMetric {
    /// The settle window in force.
    pub fn settle(&self) -> std::time::Duration {
        self.settle_after
            .as_ref()
            .map_or_else(|| self.name.default_settle(), GoDuration::duration)
    }
}

/// Minimum detectable effect: exactly one of `absolute` (percentage points, e.g. `1%` for 15% ->
/// 14%) or `relative` (e.g. `5%` of the baseline).
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new("has(self.absolute) != has(self.relative)").message(messages::ONE_MDE)))]
pub struct MinimumDetectableEffect {
    /// Absolute difference in percentage points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "kube", x_kube(validation = Rule::new(percent_rule("self", 0.0, 100.0, false)).message(messages::MDE_POSITIVE)))]
    pub absolute: Option<Percent>,
    /// Difference relative to the baseline rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "kube", x_kube(validation = Rule::new(percent_rule("self", 0.0, 100.0, false)).message(messages::MDE_POSITIVE)))]
    pub relative: Option<Percent>,
}

impl MinimumDetectableEffect {
    /// The absolute effect (a fraction) at baseline rate `baseline` (a fraction).
    pub fn absolute_at(&self, baseline: f64) -> Option<f64> {
        match (&self.absolute, &self.relative) {
            (Some(a), None) => Some(a.fraction()),
            (None, Some(r)) => Some(r.fraction() * baseline),
            _ => None,
        }
    }
}

/// CUPED settings.
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cuped {
    /// The pre-period covariate per unit; default: the primary metric itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub covariate: Option<Metric>,
    /// Length of the pre-period before the start.
    #[serde(default = "default_preperiod")]
    #[cfg_attr(feature = "kube", x_kube(validation = Rule::new(duration_at_least_rule("self", "24h")).message("cuped.preperiod must be at least 24h")))]
    pub preperiod: GoDuration,
}

fn default_preperiod() -> GoDuration {
    GoDuration::from_secs(14 * 24 * 3600)
}

impl ExperimentSpec {
    /// The control variant's name (`spec.control` or the first variant).
    pub fn control(&self) -> Option<&str> {
        self.control
            .as_deref()
            .or_else(|| self.variants.first().map(|v| v.name.as_str()))
    }

    /// Checks the rules that compare an update with the stored object (immutable fields).
    pub fn validate_update(&self, old: &Self) -> Result<(), ValidationErrors> {
        let mut errors = Errors::default();
        errors.check(
            self.router_ref == old.router_ref,
            "spec.routerRef",
            messages::ASSIGNMENT_IMMUTABLE,
        );
        errors.check(
            self.unit == old.unit,
            "spec.unit",
            messages::ASSIGNMENT_IMMUTABLE,
        );
        errors.check(
            self.salt == old.salt,
            "spec.salt",
            messages::ASSIGNMENT_IMMUTABLE,
        );
        errors.check(
            self.traffic == old.traffic,
            "spec.traffic",
            messages::TRAFFIC_IMMUTABLE,
        );
        errors.finish()
    }
}

impl Validate for ExperimentSpec {
    fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = Errors::default();
        let sum: i64 = self.variants.iter().map(|v| i64::from(v.weight)).sum();
        errors.check(sum == 100, "spec.variants", messages::WEIGHTS_SUM);
        let mut names = std::collections::BTreeSet::new();
        errors.check(
            self.variants.iter().all(|v| names.insert(v.name.as_str())),
            "spec.variants",
            messages::VARIANT_NAMES_UNIQUE,
        );
        errors.check(
            self.traffic.percent() > 0.0 && self.traffic.percent() <= 100.0,
            "spec.traffic",
            messages::TRAFFIC,
        );
        errors.check(
            self.holdout.share.percent() <= 20.0,
            "spec.holdout.share",
            messages::HOLDOUT_SHARE,
        );
        if let Some(control) = &self.control {
            errors.check(
                names.contains(control.as_str()),
                "spec.control",
                messages::CONTROL_EXISTS,
            );
        }
        let mde = &self.minimum_detectable_effect;
        errors.check(
            mde.absolute.is_some() != mde.relative.is_some(),
            "spec.minimumDetectableEffect",
            messages::ONE_MDE,
        );
        for (field, value) in [("absolute", &mde.absolute), ("relative", &mde.relative)] {
            if let Some(value) = value {
                errors.check(
                    value.percent() > 0.0,
                    format!("spec.minimumDetectableEffect.{field}"),
                    messages::MDE_POSITIVE,
                );
            }
        }
        errors.check(
            self.alpha.percent() > 0.0 && self.alpha.percent() <= 20.0,
            "spec.alpha",
            messages::ALPHA,
        );
        errors.check(
            (50.0..=99.9).contains(&self.power.percent()),
            "spec.power",
            messages::POWER,
        );
        for (i, variant) in self.variants.iter().enumerate() {
            errors.check(
                variant
                    .overrides
                    .adapter_versions
                    .values()
                    .all(|v| semver::Version::parse(v).is_ok()),
                format!("spec.variants[{i}].overrides.adapterVersions"),
                messages::ADAPTER_VERSIONS,
            );
        }
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
            self.max_duration.duration().as_secs() >= 3600,
            "spec.maxDuration",
            messages::MAX_DURATION,
        );
        let mut seen = std::collections::BTreeSet::new();
        errors.check(
            self.segments.len() <= 3
                && self.segments.iter().all(|a| {
                    seen.insert(a.as_str())
                        && a.len() <= 63
                        && a.starts_with(|c: char| c.is_ascii_alphabetic())
                        && a.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                }),
            "spec.segments",
            messages::SEGMENTS,
        );
        if let Some(cuped) = &self.cuped {
            errors.check(
                self.primary_metric.name != Metric::ShadowDivergence
                    && cuped.covariate != Some(Metric::ShadowDivergence),
                "spec.cuped",
                messages::CUPED_METRIC,
            );
        }
        errors.finish()
    }
}

/// Phase of an Experiment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ExperimentPhase {
    /// Waiting for the Router (or the pre-period data).
    #[default]
    Pending,
    /// Assigning and measuring.
    Running,
    /// Stopped early (guardrail breach, sample-ratio mismatch, `stop` action, max duration).
    Stopped,
    /// Reached its sample size; `decision` holds the result.
    Concluded,
}

/// What the analysis concluded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ExperimentDecision {
    /// Too early.
    #[default]
    Pending,
    /// A variant beats the control on the primary metric (see `winner`).
    ShipVariant,
    /// No variant beats the control.
    KeepControl,
    /// Sample size not reached before `maxDuration`, or the CI spans zero.
    Inconclusive,
    /// A guardrail was breached.
    GuardrailBreached,
    /// Sample-ratio mismatch: results are not trustworthy.
    InvalidSampleRatio,
}

#[cfg(feature = "kube")]
/// Observed state of an Experiment.
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExperimentStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing`, `Degraded`, `MetricsAvailable`, `SampleRatioMismatch`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "kube", x_kube(merge_strategy = ListMerge::Map(vec!["type".into()])))]
    pub conditions: Vec<Condition>,
    /// Lifecycle phase.
    #[serde(default)]
    pub phase: ExperimentPhase,
    /// When assignment started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// The Experiment's range of the Router's experiment layer, allocated at the start and kept
    /// until it ends (`spec.traffic` wide).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation: Option<LayerRange>,
    /// Units assigned to variants so far (holdout excluded): distinct unit ids in the outcome
    /// store, not interactions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<i64>,
    /// Units held out so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holdout_samples: Option<i64>,
    /// Enrolled interactions younger than `primaryMetric.settleAfter`: not yet in the
    /// comparison.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsettled_interactions: Option<i64>,
    /// Per-variant results.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_variant: Vec<VariantResult>,
    /// Per value of each `spec.segments` attribute: every variant's units, rate and estimate
    /// against the control (exploratory: not corrected for the number of segments).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_segment: Vec<SegmentResult>,
    /// Sample-ratio-mismatch check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub srm: Option<SampleRatioCheck>,
    /// Units needed per variant for the configured MDE, alpha and power.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_samples_per_variant: Option<i64>,
    /// When the required sample size will be reached at the current rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta: Option<Time>,
    /// Result.
    #[serde(default)]
    pub decision: ExperimentDecision,
    /// The winning variant with `ShipVariant`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub winner: Option<String>,
    /// Human-readable summary (e.g. "treatment: -1.1 pts escalation rate, 95% CI [-1.6, -0.6]").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Buckets of a Router's experiment layer: a unit's position is `hash(unit id)` in
/// `0..LAYER_BUCKETS`, and every running Experiment owns a disjoint range of them.
pub const LAYER_BUCKETS: u32 = 10_000;

/// A half-open range `[start, end)` of a Router's experiment layer, in buckets of
/// [`LAYER_BUCKETS`] (one bucket is 0.01% of the units).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
)]
pub struct LayerRange {
    /// First bucket.
    #[schemars(range(min = 0, max = 10000))]
    pub start: u32,
    /// One past the last bucket.
    #[schemars(range(min = 0, max = 10000))]
    pub end: u32,
}

impl LayerRange {
    /// Buckets in the range.
    pub fn len(&self) -> u32 {
        self.end.saturating_sub(self.start)
    }

    /// Whether the range holds no bucket.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `bucket` is in the range.
    pub fn contains(&self, bucket: u32) -> bool {
        (self.start..self.end).contains(&bucket)
    }

    /// Whether the two ranges share a bucket.
    pub fn overlaps(&self, other: &Self) -> bool {
        self.start < other.end && other.start < self.end
    }

    /// The share of the layer, as a fraction.
    pub fn fraction(&self) -> f64 {
        f64::from(self.len()) / f64::from(LAYER_BUCKETS)
    }
}

impl std::fmt::Display for LayerRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}, {}) of {}", self.start, self.end, LAYER_BUCKETS)
    }
}

/// Results of one variant.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VariantResult {
    /// Variant name.
    pub name: String,
    /// Units assigned.
    pub units: i64,
    /// Settled interactions that count for the primary metric.
    pub trials: i64,
    /// Of those, interactions with the outcome.
    pub events: i64,
    /// Observed rate of the primary metric (`events / trials`).
    pub rate: f64,
    /// Two-sided p-value of `estimate` (unit-level: delta method, or CUPED).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_value: Option<f64>,
    /// `pValue` after Holm's adjustment across the treatment variants: a variant wins or loses
    /// only when this is below `spec.alpha`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adjusted_p_value: Option<f64>,
    /// Estimated difference to the control (CUPED-adjusted when configured), as a fraction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimate: Option<f64>,
    /// Lower bound of the confidence interval of `estimate` (at `1 − alpha/k` for `k` treatment
    /// variants, Bonferroni, so that all of them hold together).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci_low: Option<f64>,
    /// Upper bound of the confidence interval of `estimate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci_high: Option<f64>,
    /// With CUPED: the per-unit comparison before adjustment (`estimate` is the adjusted one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unadjusted_estimate: Option<f64>,
    /// With CUPED: share of the estimate's variance removed by the pre-period covariate
    /// (about ρ², 0 when the covariate does not predict the outcome).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variance_reduction: Option<f64>,
    /// With CUPED: units of this variant that had pre-period data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub units_with_covariate: Option<i64>,
}

/// The results of one value of a segment attribute.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SegmentResult {
    /// The attribute (`channel`).
    pub attribute: String,
    /// Its value (`chat`), or `(other)`.
    pub value: String,
    /// Per variant.
    pub variants: Vec<SegmentVariant>,
}

/// One variant within a segment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SegmentVariant {
    /// Variant name.
    pub name: String,
    /// Units of the segment in the variant with settled outcomes.
    pub units: i64,
    /// The primary metric's rate.
    pub rate: f64,
    /// Difference to the control's rate in the segment (unit-level, delta method).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimate: Option<f64>,
    /// Lower bound of the `1 − alpha` interval of `estimate` (not corrected for segments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci_low: Option<f64>,
    /// Upper bound of that interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci_high: Option<f64>,
}

/// Sample-ratio-mismatch check (chi-square of assigned units against the weights).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SampleRatioCheck {
    /// p-value of the chi-square test.
    pub p_value: f64,
    /// `pValue` below 0.001: the split is broken and the results are not trusted.
    pub detected: bool,
}

/// `overrides.adapterVersions`: at most 16 lineages, each value a semantic version checked per
/// value, with a length bound, so the CEL cost estimate stays within the API server's budget (a
/// rule over the whole map of unbounded strings was refused by kube-apiserver: 18.9x over).
fn adapter_versions_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "Adapter version per lineage (e.g. `pricing: 1.2.0`); the version must be in the AdapterPatch's history within its rollback window.",
        "type": "object",
        "maxProperties": 16,
        "additionalProperties": {
            "type": "string",
            "maxLength": 64,
            "x-kubernetes-validations": [{
                "rule": format!("self.matches({})", cel_string(SEMVER_PATTERN)),
                "message": messages::ADAPTER_VERSIONS,
            }],
        },
    })
}
