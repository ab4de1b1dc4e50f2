//! What every reconciler shares: the client, Events, metrics, the metrics source, the artifact
//! check, settings and the clock; and the apply/status/Event helpers of the pipeline.

use std::{collections::BTreeMap, fmt, sync::Arc, time::Duration};

use k8s_openapi::{
    NamespaceResourceScope, apimachinery::pkg::apis::meta::v1::Condition, jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
    },
};
use serde::{Serialize, de::DeserializeOwned};

use crate::{
    error::{Error, Result},
    metrics::Metrics,
    names::{DEFAULT_RUNTIME_URL, FIELD_MANAGER},
    outcomes::RuntimeOutcomes,
    ports::{ArtifactChecker, MetricsSource, OutcomeSource},
};

/// How often a rollout in progress is re-evaluated when nothing else is due sooner.
pub const ANALYSIS_INTERVAL: Duration = Duration::from_secs(60);

/// How soon a controller looks again at an object.
#[derive(Clone, Copy, Debug)]
pub struct Intervals {
    /// While something settles: pods roll out, a build runs, a Secret is missing.
    pub settling: Duration,
    /// Otherwise: the periodic resync.
    pub resync: Duration,
}

/// The time source (a fake one in tests).
pub trait Clock: Send + Sync + fmt::Debug {
    /// Now.
    fn now(&self) -> Timestamp;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// Operator settings from the command line.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Runtime image for Routers without `spec.image` (and index build Jobs).
    pub runtime_image: String,
    /// How often running rollouts and experiments are re-analysed (at most).
    pub analysis_interval: Duration,
    /// Requeue of healthy, idle objects (drift correction).
    pub resync_interval: Duration,
    /// Local directory where verified adapter artifacts are kept (content-addressed), if any.
    pub artifact_cache: Option<std::path::PathBuf>,
    /// `--egress-allow`: internal address blocks the pods it creates may fetch sources and
    /// artifacts from (passed on as `SWITCHBOARD_EGRESS_ALLOW`); `None`: public addresses only.
    pub egress_allow: Option<String>,
    /// The operator's own pods as a NetworkPolicy peer: the only callers the runtime pods'
    /// policies admit to the admin port (`--operator-namespace`, `--operator-pod-labels`).
    pub operator_peer: k8s_openapi::api::networking::v1::NetworkPolicyPeer,
}

/// The operator pods' labels when `--operator-pod-labels` is not given (the chart's
/// `app.kubernetes.io/component`).
pub fn default_operator_pod_labels() -> BTreeMap<String, String> {
    BTreeMap::from([(
        "app.kubernetes.io/component".to_owned(),
        "operator".to_owned(),
    )])
}

impl Settings {
    /// How soon controllers look again: the analysis interval while something settles, the
    /// resync interval otherwise.
    pub fn intervals(&self) -> Intervals {
        Intervals {
            settling: self.analysis_interval,
            resync: self.resync_interval,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            runtime_image: default_runtime_image(),
            analysis_interval: ANALYSIS_INTERVAL,
            resync_interval: Duration::from_secs(300),
            artifact_cache: None,
            egress_allow: None,
            operator_peer: crate::pod::operator_peer(None, default_operator_pod_labels()),
        }
    }
}

/// The runtime image matching this operator's version.
pub fn default_runtime_image() -> String {
    format!(
        "ghcr.io/switchboard-dev/switchboard-runtime:{}",
        env!("CARGO_PKG_VERSION")
    )
}

/// Per-object exponential backoff of failed reconciles: 5 s doubling to 5 min, reset by a
/// success.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: std::sync::Mutex<std::collections::HashMap<String, u32>>,
}

impl Backoff {
    /// First retry delay.
    pub const BASE: Duration = Duration::from_secs(5);
    /// Longest delay.
    pub const MAX: Duration = Duration::from_secs(300);

    /// Records a failure of `key` and returns the delay before the next try.
    pub fn failed(&self, key: &str) -> Duration {
        let mut map = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = map.entry(key.to_owned()).or_insert(0);
        let delay = Self::BASE
            .saturating_mul(1u32 << (*n).min(10))
            .min(Self::MAX);
        *n = n.saturating_add(1);
        delay
    }

    /// Forgets the failures of `key`.
    pub fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key);
    }
}

/// Shared by the reconcilers.
#[derive(Clone)]
pub struct Context {
    /// API client.
    pub client: Client,
    /// Event recorder (events.k8s.io/v1).
    pub recorder: Recorder,
    /// Operator metrics.
    pub metrics: Arc<Metrics>,
    /// Outcome counts (Prometheus).
    pub source: Arc<dyn MetricsSource>,
    /// Adapter artifact checks.
    pub artifacts: Arc<dyn ArtifactChecker>,
    /// What the Routers' runtimes learned from outcomes: experiments' per-unit data (CUPED) and
    /// KnowledgeBases' coverage gaps.
    pub outcomes: Arc<dyn OutcomeSource>,
    /// Settings.
    pub settings: Settings,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// Backoff of failed reconciles.
    pub backoff: Arc<Backoff>,
    /// Held while an Experiment is given its range of a Router's experiment layer, from reading
    /// the other Experiments' ranges to writing its own: two Experiments starting at once never
    /// get overlapping ranges (one operator acts at a time: leader election).
    pub layer_allocation: Arc<tokio::sync::Mutex<()>>,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("source", &self.source)
            .field("artifacts", &self.artifacts)
            .field("outcomes", &self.outcomes)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// The bookkeeping every reconciler shares once its work is done: resets the object's
    /// backoff on success, counts the outcome (and the error's reason) and logs a failure. The
    /// caller reports the failure on the object (condition, Event) itself.
    pub fn record_reconcile(&self, controller: &'static str, key: &str, result: &Result<Action>) {
        match result {
            Ok(_) => {
                self.backoff.succeeded(key);
                self.metrics.reconciled(controller, true);
            }
            Err(error) => {
                self.metrics.reconciled(controller, false);
                self.metrics.reconcile_error(controller, error.reason());
                tracing::warn!(controller, object = %key, %error, "reconcile failed");
            }
        }
    }

    /// A context with the given parts; Events are reported as `switchboard-operator` from
    /// `instance` (the pod name).
    pub fn new(
        client: Client,
        instance: Option<String>,
        metrics: Arc<Metrics>,
        source: Arc<dyn MetricsSource>,
        artifacts: Arc<dyn ArtifactChecker>,
        settings: Settings,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_owned(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            source,
            artifacts,
            outcomes: Arc::new(RuntimeOutcomes::new(
                DEFAULT_RUNTIME_URL,
                Duration::from_secs(10),
            )),
            settings,
            clock,
            backoff: Arc::default(),
            layer_allocation: Arc::default(),
        }
    }

    /// Reads experiments' per-unit outcomes from `outcomes` instead of the Routers' Services.
    #[must_use]
    pub fn with_outcomes(mut self, outcomes: Arc<dyn OutcomeSource>) -> Self {
        self.outcomes = outcomes;
        self
    }

    /// Now.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Publishes an Event about `obj`. Event delivery is best effort: a failure is logged, never
    /// fails the reconcile (the status already says what happened).
    pub async fn event<K>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) where
        K: Resource<DynamicType = ()>,
    {
        let event = Event {
            type_,
            reason: truncate(reason, 128),
            note: Some(truncate(&note, 1024)),
            action: truncate(action, 128),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::warn!(%error, reason, "publishing an Event failed");
        }
    }

    /// Publishes one Event per condition whose status or reason changed between `old` and
    /// `new` (Warning when the new state is bad).
    pub async fn condition_events<K>(&self, obj: &K, old: &[Condition], new: &[Condition])
    where
        K: Resource<DynamicType = ()>,
    {
        for (type_, reason, message, warning) in condition_transitions(old, new) {
            let kind = if warning {
                EventType::Warning
            } else {
                EventType::Normal
            };
            self.event(obj, kind, &reason, &type_, message).await;
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// `(type, reason, message, warning)` of each condition that is new or whose status or reason
/// changed. A condition is bad when `Degraded`/`AdapterStacking`/`SampleRatioMismatch` turn
/// `True` or any other turns `False`.
pub fn condition_transitions(
    old: &[Condition],
    new: &[Condition],
) -> Vec<(String, String, String, bool)> {
    new.iter()
        .filter(|c| {
            old.iter()
                .find(|o| o.type_ == c.type_)
                .is_none_or(|o| o.status != c.status || o.reason != c.reason)
        })
        // A first `Unknown` or a healthy "nothing wrong" on creation is noise, not a transition.
        .filter(|c| {
            old.iter().any(|o| o.type_ == c.type_)
                || (c.status != "Unknown" && is_bad(c))
                || c.type_ == switchboard_crds::conditions::READY
        })
        .map(|c| {
            (
                c.type_.clone(),
                c.reason.clone(),
                format!("{} is {}: {}", c.type_, c.status, c.message),
                is_bad(c),
            )
        })
        .collect()
}

fn is_bad(c: &Condition) -> bool {
    use switchboard_crds::conditions as k;
    let inverted = [k::DEGRADED, k::ADAPTER_STACKING, k::SAMPLE_RATIO_MISMATCH];
    if inverted.contains(&c.type_.as_str()) {
        c.status == "True"
    } else {
        c.status == "False"
    }
}

/// The error policy of every controller: retry with the object's exponential backoff.
pub fn error_policy<K: Resource<DynamicType = ()>>(
    obj: Arc<K>,
    _error: &Error,
    ctx: Arc<Context>,
) -> Action {
    Action::requeue(ctx.backoff.failed(&describe(obj.as_ref())))
}

/// A resource whose failed reconcile is written into its status: each controller says, as a
/// pure function, what its status becomes after an error; [`report_failure`] writes it and
/// emits the Events of the conditions that changed.
pub trait FailureStatus:
    Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + fmt::Debug
{
    /// The status subresource.
    type Status: Clone + Default + Serialize;

    /// The status as read (default when unset).
    fn status_or_default(&self) -> Self::Status;

    /// The conditions of a status.
    fn conditions(status: &Self::Status) -> &[Condition];

    /// The status after `error` at `now` (pure).
    fn failed(&self, error: &Error, now: Timestamp) -> Self::Status;
}

/// Writes the status of a failed reconcile (best effort: a failure to write is logged) and
/// the Events of the conditions it changed.
pub async fn report_failure<K: FailureStatus>(obj: &K, ctx: &Context, error: &Error) {
    let previous = obj.status_or_default();
    let status = obj.failed(error, ctx.now());
    if let Err(e) = apply_status(&ctx.client, obj, &status).await {
        tracing::warn!(object = %describe(obj), error = %e, "writing the failure status failed");
        return;
    }
    ctx.condition_events(obj, K::conditions(&previous), K::conditions(&status))
        .await;
}

/// Whether PersistentVolumeClaim `claim` exists in `namespace` (a build or verification pod
/// waiting for a missing volume would never finish, so callers report it instead).
pub async fn claim_exists(client: &Client, namespace: &str, claim: &str) -> Result<bool> {
    Api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>::namespaced(client.clone(), namespace)
        .get_metadata_opt(claim)
        .await
        .map(|found| found.is_some())
        .map_err(|e| {
            Error::kube(
                "get",
                format!("PersistentVolumeClaim {namespace}/{claim}"),
                e,
            )
        })
}

/// `Kind namespace/name` of an object, for errors and logs.
pub fn describe<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{} {}/{}",
        K::kind(&()),
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default()
    )
}

/// The object's namespace and name (set on every object the API server returns).
pub fn namespaced_name<K: Resource<DynamicType = ()>>(obj: &K) -> Result<(String, String)> {
    let ns = obj
        .meta()
        .namespace
        .clone()
        .ok_or(Error::MissingMetadata("object", "namespace"))?;
    let name = obj
        .meta()
        .name
        .clone()
        .ok_or(Error::MissingMetadata("object", "name"))?;
    Ok((ns, name))
}

/// Server-side applies `obj` (our field manager, forced: the operator owns what it writes).
pub async fn apply<K>(client: &Client, namespace: &str, obj: &K) -> Result<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let name = obj.name_any();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(|e| Error::kube("apply", format!("{} {namespace}/{name}", K::kind(&())), e))
}

/// Server-side applies the whole computed `status` of `obj` through the status subresource.
pub async fn apply_status<K, S>(client: &Client, obj: &K, status: &S) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + fmt::Debug,
    S: Serialize,
{
    let (namespace, name) = namespaced_name(obj)?;
    let api: Api<K> = Api::namespaced(client.clone(), &namespace);
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|e| Error::kube("apply status of", describe(obj), e))?;
    Ok(())
}

/// A condition of `generation` set now.
pub fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now),
    }
}

/// Merges freshly computed conditions into the previous list: an unchanged status keeps its
/// `lastTransitionTime` (see [`switchboard_crds::set_condition`]).
pub fn merge_conditions(previous: &[Condition], computed: Vec<Condition>) -> Vec<Condition> {
    let mut out: Vec<Condition> = previous
        .iter()
        .filter(|p| computed.iter().any(|c| c.type_ == p.type_))
        .cloned()
        .collect();
    for c in computed {
        switchboard_crds::set_condition(&mut out, c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_crds::conditions as k;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn transitions_report_changes_once() {
        let old = vec![condition(
            k::READY,
            false,
            "IndexBuilding",
            "",
            Some(1),
            at(1),
        )];
        let new = merge_conditions(
            &old,
            vec![
                condition(k::READY, true, "Reconciled", "ok", Some(2), at(5)),
                condition(k::DEGRADED, false, "Reconciled", "", Some(2), at(5)),
            ],
        );
        let t = condition_transitions(&old, &new);
        assert_eq!(t.len(), 1, "{t:?}");
        assert_eq!(t[0].0, k::READY);
        assert!(!t[0].3);
        // Nothing changed: no Event.
        assert!(condition_transitions(&new, &new).is_empty());
        // Degraded turning True is a Warning.
        let worse = merge_conditions(
            &new,
            vec![condition(
                k::DEGRADED,
                true,
                "IndexBuildFailed",
                "x",
                Some(2),
                at(9),
            )],
        );
        let t = condition_transitions(&new, &worse);
        assert_eq!(t.len(), 1);
        assert!(t[0].3);
        // Unchanged status keeps its transition time.
        let again = merge_conditions(
            &new,
            vec![condition(
                k::READY,
                true,
                "Reconciled",
                "still",
                Some(3),
                at(20),
            )],
        );
        assert_eq!(again[0].last_transition_time.0, at(5));
    }

    #[test]
    fn backoff_doubles_and_resets() {
        let b = Backoff::default();
        assert_eq!(b.failed("a"), Duration::from_secs(5));
        assert_eq!(b.failed("a"), Duration::from_secs(10));
        assert_eq!(b.failed("b"), Duration::from_secs(5));
        for _ in 0..20 {
            b.failed("a");
        }
        assert_eq!(b.failed("a"), Backoff::MAX);
        b.succeeded("a");
        assert_eq!(b.failed("a"), Duration::from_secs(5));
    }

    #[test]
    fn long_notes_are_cut_on_a_char_boundary() {
        let s = "é".repeat(700);
        let t = truncate(&s, 1024);
        assert!(t.len() <= 1024 && t.ends_with("..."));
    }
}
