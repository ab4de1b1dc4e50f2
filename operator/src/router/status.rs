//! The Router's status, from what was compiled and observed (pure): replicas, the revision the
//! pods run, the routed share, the holdout, the conditions, and when to look again.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::DeploymentStatus;
use k8s_openapi::jiff::Timestamp;
use switchboard_analysis::ExperimentUnits;
use switchboard_crds::{
    Router,
    compile::Skipped,
    conditions::{self as cond, reasons},
    knowledge_base::AccessMode,
    router::{
        ActiveAdapter, Difficulty, DifficultySource, DifficultyStatus, OutcomeStore, RoutedShare,
        RouterStatus,
    },
    runtime_config::{AdapterRole, RuntimeConfig},
};

use crate::context::{Intervals, condition, merge_conditions};
use crate::names::{index_claim_name, runtime_name, selector_string};

/// What one reconcile saw after applying the Router's children.
#[derive(Debug)]
pub struct Observed<'a> {
    /// The compiled config written to the ConfigMap.
    pub config: &'a RuntimeConfig,
    /// What the compiler left out.
    pub skipped: &'a [Skipped],
    /// The Secrets the Router names that are missing or lack their key (one sentence each).
    pub secret_problems: &'a [String],
    /// The runtime Deployment's status.
    pub deployment: Option<&'a DeploymentStatus>,
    /// The Deployment controller has seen the Deployment's generation.
    pub deployment_current: bool,
    /// The revisions the runtime pods report, or why they could not be read.
    pub loaded: Result<Vec<String>, String>,
    /// Share of answers per model over the last hour, when Prometheus has it.
    pub routed_share: Option<RoutedShare>,
    /// The holdout's units, when they were read this time.
    pub holdout_data: Option<Result<ExperimentUnits, String>>,
    /// The access mode of the KnowledgeBase's index claim.
    pub index_access_mode: AccessMode,
    /// When the token key rotation in progress takes its next step.
    pub rotation: Option<Duration>,
}

/// The Router's status after this reconcile, and when to reconcile again.
pub fn status(
    router: &Router,
    observed: Observed<'_>,
    now: Timestamp,
    intervals: Intervals,
) -> (RouterStatus, Duration) {
    let config = observed.config;
    let name = router.metadata.name.as_deref().unwrap_or_default();
    let previous = router.status.clone().unwrap_or_default();
    let generation = router.metadata.generation;
    let kb_name = &router.spec.knowledge_base_ref.name;
    let (ready, progressing, pods_message) = deployment_state(
        router.spec.replicas,
        observed.deployment_current,
        observed.deployment,
    );
    let mut status = config_status(config, name);
    status.holdout = super::holdout::status(
        router.spec.holdout.as_ref(),
        previous.holdout.as_ref(),
        config,
        now,
        observed.holdout_data,
    );
    let (replicas, ready_replicas, _, _) = replica_counts(observed.deployment);
    status.observed_generation = generation;
    status.replicas = Some(replicas);
    status.ready_replicas = Some(ready_replicas);
    status.routed_share = observed.routed_share;
    status.difficulty = Some(difficulty_status(&router.spec.difficulty));

    let (applied, applied_reason, applied_message) = match &observed.loaded {
        Ok(revisions) if revisions.is_empty() => (
            None,
            reasons::CONFIG_PENDING,
            format!(
                "revision {} written to ConfigMap {}; no runtime pod reports a revision yet",
                config.revision,
                runtime_name(name)
            ),
        ),
        Ok(revisions) if revisions.iter().all(|r| *r == config.revision) => (
            Some(true),
            reasons::RECONCILED,
            format!("runtime pods run revision {}", config.revision),
        ),
        Ok(revisions) => (
            Some(false),
            reasons::CONFIG_PENDING,
            format!(
                "revision {} written; pods still report {}",
                config.revision,
                revisions
                    .iter()
                    .filter(|r| **r != config.revision)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        Err(e) => (
            None,
            reasons::METRICS_UNAVAILABLE,
            format!(
                "revision {} written to ConfigMap {}; whether pods loaded it is unknown: {e}",
                config.revision,
                runtime_name(name)
            ),
        ),
    };
    let missing_secret =
        (!observed.secret_problems.is_empty()).then(|| observed.secret_problems.join("; "));
    let degraded_message = missing_secret
        .iter()
        .cloned()
        .chain(observed.skipped.iter().map(|s| {
            format!(
                "{} {} skipped ({}): {}",
                s.kind, s.name, s.reason, s.message
            )
        }))
        .collect::<Vec<_>>()
        .join("; ");
    let degraded = missing_secret.is_some() || !observed.skipped.is_empty();
    let (shareable, shareable_message) =
        index_volume_shareable(kb_name, observed.index_access_mode, router.spec.replicas);
    let (outcomes_shared, outcomes_message) =
        outcome_store_shared(&router.spec.outcome_store, router.spec.replicas);
    let reason = |ok: bool, yes: &'static str, no: &'static str| if ok { yes } else { no };
    let mut computed = vec![
        condition(
            cond::READY,
            ready,
            reason(ready, reasons::RECONCILED, reasons::WAITING_FOR_CHILDREN),
            pods_message.clone(),
            generation,
            now,
        ),
        condition(
            cond::PROGRESSING,
            progressing,
            reason(
                progressing,
                reasons::WAITING_FOR_CHILDREN,
                reasons::RECONCILED,
            ),
            pods_message,
            generation,
            now,
        ),
        condition(
            cond::DEGRADED,
            degraded,
            if missing_secret.is_some() {
                reasons::REFERENCE_NOT_FOUND
            } else if degraded {
                "ObjectsSkipped"
            } else {
                reasons::RECONCILED
            },
            degraded_message,
            generation,
            now,
        ),
        condition(
            cond::INDEX_VOLUME_SHAREABLE,
            shareable,
            reason(
                shareable,
                reasons::RECONCILED,
                reasons::READ_WRITE_ONCE_INDEX,
            ),
            shareable_message,
            generation,
            now,
        ),
        condition(
            cond::OUTCOME_STORE_SHARED,
            outcomes_shared,
            reason(
                outcomes_shared,
                reasons::RECONCILED,
                reasons::PER_POD_OUTCOME_STORE,
            ),
            outcomes_message,
            generation,
            now,
        ),
    ];
    let mut applied_condition = condition(
        cond::RUNTIME_CONFIG_APPLIED,
        applied.unwrap_or(false),
        applied_reason,
        applied_message,
        generation,
        now,
    );
    if applied.is_none() {
        "Unknown".clone_into(&mut applied_condition.status);
    }
    computed.push(applied_condition);
    status.conditions = merge_conditions(&previous.conditions, computed);

    // A missing Secret is not watched (that would need list/watch on every Secret): look again
    // soon. A key rotation's next step, and the holdout's end, come at their own time.
    let settling = progressing || applied != Some(true) || missing_secret.is_some();
    let requeue = if settling {
        intervals.settling.max(Duration::from_secs(1))
    } else {
        intervals.resync
    };
    let requeue = [
        observed.rotation,
        super::holdout::next_look(status.holdout.as_ref(), now)
            .map(|d| d.max(Duration::from_secs(1))),
    ]
    .into_iter()
    .flatten()
    .fold(requeue, Duration::min);
    (status, requeue)
}

/// Whether feedback is deduplicated across every replica: `(shared, message)`. Per-pod SQLite
/// files are only sound for one replica: feedback that reaches another replica than the one that
/// stored the interaction is counted by that replica's file, so a replay sent to each replica in
/// turn counts once per replica, and experiments see each pod's units only.
pub fn outcome_store_shared(store: &OutcomeStore, replicas: i32) -> (bool, String) {
    match &store.postgres {
        Some(secret) => (
            true,
            format!(
                "every replica uses the PostgreSQL outcome store of Secret {} key {}",
                secret.name, secret.key
            ),
        ),
        None if replicas > 1 => (
            false,
            format!(
                "{replicas} replicas each keep their own SQLite outcome store: a feedback replay \
                 sent to another replica is counted again and CUPED sees one pod's units; set \
                 spec.outcomeStore.postgres, or run 1 replica"
            ),
        ),
        None => (
            true,
            "1 replica keeps its outcomes in a per-pod SQLite file (lost with the pod)".to_owned(),
        ),
    }
}

/// The adapters of a compiled config, one entry per AdapterPatch.
pub fn active_adapters(config: &RuntimeConfig) -> Vec<ActiveAdapter> {
    let mut out: BTreeMap<String, ActiveAdapter> = BTreeMap::new();
    for a in &config.adapters {
        let entry = out.entry(a.name.clone()).or_insert_with(|| ActiveAdapter {
            name: a.name.clone(),
            lineage: a.lineage.clone(),
            ..ActiveAdapter::default()
        });
        match a.role {
            AdapterRole::Stable => entry.stable_version = a.version.clone(),
            AdapterRole::Canary => {
                entry.candidate_version = Some(a.version.clone());
                entry.candidate_weight = a.traffic_weight.unwrap_or(0);
            }
            AdapterRole::Shadow => entry.candidate_version = Some(a.version.clone()),
            // The holdout's version: status.holdout.pinned lists it.
            AdapterRole::Pinned => {}
        }
    }
    out.into_values().collect()
}

/// Replica counts of the Deployment's status: `(replicas, ready, updated, available)`.
pub fn replica_counts(status: Option<&DeploymentStatus>) -> (i32, i32, i32, i32) {
    status.map_or((0, 0, 0, 0), |s| {
        (
            s.replicas.unwrap_or(0),
            s.ready_replicas.unwrap_or(0),
            s.updated_replicas.unwrap_or(0),
            s.available_replicas.unwrap_or(0),
        )
    })
}

/// Whether the Router's pods are rolled out and ready: `(ready, progressing, message)`.
pub fn deployment_state(
    desired: i32,
    observed_generation_current: bool,
    status: Option<&DeploymentStatus>,
) -> (bool, bool, String) {
    let (replicas, ready, updated, available) = replica_counts(status);
    let progressing = !observed_generation_current || updated < desired || replicas > desired;
    let ready_ok = if desired == 0 {
        true
    } else {
        available >= 1 && ready >= 1
    };
    let message = format!("{ready}/{desired} runtime pods ready ({updated} up to date)");
    (ready_ok, progressing, message)
}

/// Whether every runtime replica can mount the KnowledgeBase's index claim:
/// `(shareable, message)`. A `ReadWriteOnce` claim is mounted by one node at a time, so a second
/// replica scheduled on another node never starts (Multi-Attach error).
pub fn index_volume_shareable(
    knowledge_base: &str,
    access_mode: AccessMode,
    replicas: i32,
) -> (bool, String) {
    let claim = index_claim_name(knowledge_base);
    match access_mode {
        AccessMode::ReadWriteOnce if replicas > 1 => (
            false,
            format!(
                "{replicas} replicas read the index claim {claim} of KnowledgeBase \
                 {knowledge_base}, which is ReadWriteOnce: replicas on other nodes than the one \
                 mounting it cannot start; use storage.accessMode ReadWriteMany on a \
                 KnowledgeBase, or 1 replica"
            ),
        ),
        AccessMode::ReadWriteOnce => (
            true,
            format!("1 replica reads the ReadWriteOnce index claim {claim}"),
        ),
        AccessMode::ReadWriteMany => (true, format!("the index claim {claim} is ReadWriteMany")),
    }
}

/// Which difficulty weights the pods score queries with, and the fitted model's calibration.
pub fn difficulty_status(difficulty: &Difficulty) -> DifficultyStatus {
    match &difficulty.model {
        None => DifficultyStatus {
            source: DifficultySource::HandSet,
            threshold: difficulty.threshold,
            ..DifficultyStatus::default()
        },
        Some(model) => DifficultyStatus {
            source: DifficultySource::Fitted,
            threshold: difficulty.threshold,
            fitted_at: Some(model.calibration.fitted_at.clone()),
            held_out_accuracy: Some(model.calibration.held_out_accuracy),
            brier_score: Some(model.calibration.brier_score),
        },
    }
}

/// Status fields computed from the compiled config (conditions are set by the controller).
pub fn config_status(config: &RuntimeConfig, router: &str) -> RouterStatus {
    RouterStatus {
        selector: Some(selector_string(router)),
        runtime_config_hash: Some(config.revision.clone()),
        knowledge_base_generation: Some(config.knowledge_base.index_generation),
        active_adapters: active_adapters(config),
        experiments: config.experiments.iter().map(|e| e.name.clone()).collect(),
        ..RouterStatus::default()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::DeploymentStatus;
    use switchboard_crds::find_condition;

    use super::*;

    fn router() -> Router {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "Router",
            "metadata": {"name": "frontline", "namespace": "support", "generation": 2},
            "spec": {
                "knowledgeBaseRef": {"name": "help"},
                "smallModel": {"model": "/models/smollm2.gguf"},
                "largeModel": {"endpoint": {"url": "https://llm.internal/v1", "model": "big"}},
                "replicas": 2,
            },
        }))
        .unwrap()
    }

    fn config() -> RuntimeConfig {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "RuntimeConfig",
            "revision": "sha256:new",
            "router": {"namespace": "support", "name": "frontline"},
            "knowledgeBase": {"name": "help", "indexGeneration": 3, "embeddingModel": "/m", "retrieval": {}},
            "smallModel": {"model": "/models/smollm2.gguf", "maxActiveAdapters": 8, "maxNewTokens": 256},
            "largeModel": {"maxQueueDepth": 32},
            "routerPolicy": {"difficultyThreshold": 0.5, "adapterSelection": {}, "queryRewrite": {},
                             "explorationShare": "5%", "shadowMaxConcurrent": 2},
        }))
        .unwrap()
    }

    fn pods(ready: i32) -> DeploymentStatus {
        DeploymentStatus {
            replicas: Some(2),
            ready_replicas: Some(ready),
            updated_replicas: Some(2),
            available_replicas: Some(ready),
            ..DeploymentStatus::default()
        }
    }

    const INTERVALS: Intervals = Intervals {
        settling: Duration::from_secs(60),
        resync: Duration::from_secs(300),
    };

    fn observe<'a>(
        config: &'a RuntimeConfig,
        deployment: &'a DeploymentStatus,
        loaded: Result<Vec<String>, String>,
        secret_problems: &'a [String],
    ) -> Observed<'a> {
        Observed {
            config,
            skipped: &[],
            secret_problems,
            deployment: Some(deployment),
            deployment_current: true,
            loaded,
            routed_share: None,
            holdout_data: None,
            index_access_mode: AccessMode::ReadWriteMany,
            rotation: None,
        }
    }

    fn condition_of<'a>(status: &'a RouterStatus, type_: &str) -> (&'a str, &'a str, &'a str) {
        let c = find_condition(&status.conditions, type_).expect(type_);
        (c.status.as_str(), c.reason.as_str(), c.message.as_str())
    }

    /// What `kubectl get router` shows while the pods still run the old revision, and once
    /// they run the new one; the controller looks again sooner while it settles.
    #[test]
    fn the_status_says_which_revision_the_pods_run_and_requeues_until_they_do() {
        let (router, config, deployment) = (router(), config(), pods(2));
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let stale = observe(&config, &deployment, Ok(vec!["sha256:old".into()]), &[]);
        let (status, requeue) = status(&router, stale, now, INTERVALS);
        let (state, reason, message) = condition_of(&status, cond::RUNTIME_CONFIG_APPLIED);
        assert_eq!((state, reason), ("False", reasons::CONFIG_PENDING));
        assert!(
            message.contains("pods still report sha256:old"),
            "{message}"
        );
        assert_eq!(requeue, INTERVALS.settling);
        assert_eq!(status.ready_replicas, Some(2));
        assert_eq!(status.runtime_config_hash.as_deref(), Some("sha256:new"));

        let current = observe(&config, &deployment, Ok(vec!["sha256:new".into()]), &[]);
        let (status, requeue) = super::status(&router, current, now, INTERVALS);
        assert_eq!(
            condition_of(&status, cond::RUNTIME_CONFIG_APPLIED).0,
            "True"
        );
        assert_eq!(condition_of(&status, cond::READY).0, "True");
        assert_eq!(condition_of(&status, cond::DEGRADED).0, "False");
        assert_eq!(requeue, INTERVALS.resync);

        // Prometheus unreachable: whether the pods loaded it is Unknown, not False.
        let unknown = observe(&config, &deployment, Err("connection refused".into()), &[]);
        let (status, _) = super::status(&router, unknown, now, INTERVALS);
        let (state, reason, _) = condition_of(&status, cond::RUNTIME_CONFIG_APPLIED);
        assert_eq!((state, reason), ("Unknown", reasons::METRICS_UNAVAILABLE));
    }

    /// `kubectl get router -o wide` says whether the threshold is calibrated, and since when.
    #[test]
    fn the_status_shows_the_difficulty_model_and_its_calibration() {
        let (mut router, config, deployment) = (router(), config(), pods(2));
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let observed = observe(&config, &deployment, Ok(vec!["sha256:new".into()]), &[]);
        let (status, _) = status(&router, observed, now, INTERVALS);
        let d = status.difficulty.expect("difficulty");
        assert_eq!((d.source, d.threshold), (DifficultySource::HandSet, 0.5));
        assert_eq!(d.fitted_at, None);

        router.spec.difficulty = serde_json::from_value(serde_json::json!({
            "threshold": 0.31,
            "model": {
                "weights": {"bias": -1.2, "length": 0.4, "clauses": 0.1, "qualifications": 0.0,
                            "knownIdentifiers": -0.3, "unknownIdentifiers": 0.2,
                            "multiDocument": 0.5, "weakMatch": 2.1},
                "calibration": {"fittedAt": "2026-12-08T03:00:00Z", "trainExamples": 120,
                                "heldOutExamples": 50, "heldOutAccuracy": 0.74,
                                "brierScore": 0.17, "largeShare": 0.2},
            },
        }))
        .unwrap();
        let observed = observe(&config, &deployment, Ok(vec!["sha256:new".into()]), &[]);
        let (status, _) = super::status(&router, observed, now, INTERVALS);
        let d = status.difficulty.expect("difficulty");
        assert_eq!((d.source, d.threshold), (DifficultySource::Fitted, 0.31));
        assert_eq!(d.fitted_at.as_deref(), Some("2026-12-08T03:00:00Z"));
        assert_eq!(
            (d.held_out_accuracy, d.brier_score),
            (Some(0.74), Some(0.17))
        );
    }

    #[test]
    fn a_missing_secret_degrades_the_router_and_is_looked_at_again_soon() {
        let (router, config, deployment) = (router(), config(), pods(0));
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let problems =
            vec!["Secret llm-key (spec.largeModel.endpoint.secretRef) does not exist".to_owned()];
        let observed = observe(
            &config,
            &deployment,
            Ok(vec!["sha256:new".into()]),
            &problems,
        );
        let (status, requeue) = status(&router, observed, now, INTERVALS);
        let (state, reason, message) = condition_of(&status, cond::DEGRADED);
        assert_eq!((state, reason), ("True", reasons::REFERENCE_NOT_FOUND));
        assert!(message.contains("llm-key"), "{message}");
        assert_eq!(condition_of(&status, cond::READY).0, "False");
        assert_eq!(requeue, INTERVALS.settling);
    }
}
