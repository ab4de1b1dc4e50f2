//! KnowledgeBase controller: the index volume, the manifest, build Jobs (on spec changes, on
//! changes of the ConfigMaps the sources read, and on `refreshInterval`), status from the Job's
//! build report; the previous generation is kept for switching back.

pub mod apply;
pub mod build;
pub mod content;
pub mod status;
pub mod validate;

use std::sync::Arc;

use k8s_openapi::api::{batch::v1::Job, core::v1::Pod};
use kube::{
    Api,
    api::ListParams,
    runtime::{controller::Action, reflector::ObjectRef},
};
use switchboard_crds::{
    KnowledgeBase, Router,
    conditions::{self as cond, reasons},
    knowledge_base::{KnowledgeBaseStatus, SourceKind},
};

use self::build::{
    KB_LABEL, KbChildren, build_hash, build_number, plan_build, refresh_due, report_from_pods,
};
use self::status::BuildOutcome;
use crate::context::{Context, apply_status, condition, describe, namespaced_name};
use crate::error::{Error, Result};
use crate::pod::{JobState, job_state};

/// Controller name in metrics.
pub const CONTROLLER: &str = "knowledgebase";

/// Reconciles one KnowledgeBase.
pub async fn reconcile(kb: Arc<KnowledgeBase>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_timer(CONTROLLER);
    let result = match reconcile_inner(&kb, &ctx).await {
        Ok((action, None)) => Ok(action),
        // The status written already says why (a missing ConfigMap or claim); failing hands the
        // retry to the error policy's backoff.
        Ok((_, Some(blocked))) => Err(blocked),
        Err(error) => {
            crate::context::report_failure(kb.as_ref(), &ctx, &error).await;
            Err(error)
        }
    };
    ctx.record_reconcile(CONTROLLER, &describe(kb.as_ref()), &result);
    result
}

/// The KnowledgeBases (of `namespace`) with a source for which `reads` is true: a changed or
/// created ConfigMap or claim maps to the KnowledgeBases that read it.
pub fn knowledge_bases_reading(
    kbs: &[Arc<KnowledgeBase>],
    namespace: Option<&str>,
    reads: impl Fn(SourceKind<'_>) -> bool,
) -> Vec<ObjectRef<KnowledgeBase>> {
    kbs.iter()
        .filter(|kb| kb.metadata.namespace.as_deref() == namespace)
        .filter(|kb| kb.spec.sources.iter().filter_map(|s| s.kind()).any(&reads))
        .map(|kb| ObjectRef::from_obj(kb.as_ref()))
        .collect()
}

/// Retries with exponential backoff.
pub use crate::context::error_policy;

/// validate -> apply the storage -> observe the builds -> plan (pure) -> apply the build ->
/// observe the content -> status (pure). `Ok((action, Some(error)))` when a missing input
/// (ConfigMap, claim) holds the build: the status already reports it.
async fn reconcile_inner(kb: &KnowledgeBase, ctx: &Context) -> Result<(Action, Option<Error>)> {
    let (namespace, name) = namespaced_name(kb)?;
    validate::spec(kb)?;
    let client = &ctx.client;
    let inputs = match validate::source_inputs(client, &namespace, kb).await {
        Ok(inputs) => Ok(inputs),
        Err(missing @ Error::ReferenceNotFound { .. }) => Err(missing),
        Err(other) => return Err(other),
    };
    let now = ctx.now();
    let children = KbChildren {
        kb,
        name: &name,
        namespace: &namespace,
        image: &ctx.settings.runtime_image,
        egress_allow: ctx.settings.egress_allow.as_deref(),
    };
    apply::storage(client, &children).await?;

    let jobs_api: Api<Job> = Api::namespaced(client.clone(), &namespace);
    let mut jobs = jobs_api
        .list(&ListParams::default().labels(&format!("{KB_LABEL}={name}")))
        .await
        .map_err(|e| {
            Error::kube(
                "list",
                format!("Jobs of KnowledgeBase {namespace}/{name}"),
                e,
            )
        })?
        .items;
    jobs.sort_by_key(build_number);
    let previous = kb.status.clone().unwrap_or_default();
    let outcome = observe_build(ctx, &namespace, &name, jobs.last(), &previous).await?;

    let hash = inputs.as_ref().ok().map(|inputs| build_hash(kb, inputs));
    let next_refresh = refresh_due(kb, now);
    let due = next_refresh.is_some_and(|t| t <= now);
    let plan = plan_build(&jobs, hash.as_deref(), due);
    let building = apply::build(ctx, kb, &children, &plan, hash.as_deref(), due).await?;
    apply::prune_jobs(&jobs_api, &jobs).await;

    // KB rot and coverage gaps, once a generation is served.
    let serving = outcome.generation().or(previous.index_generation).is_some();
    let (freshness, coverage) = if serving {
        (
            Some(observe_staleness(ctx, kb, &namespace, &name).await),
            Some(observe_coverage(ctx, kb, &namespace, &name).await),
        )
    } else {
        (None, None)
    };
    let observed = status::Observed {
        build: outcome,
        building,
        missing_input: inputs.as_ref().err(),
        next_refresh,
        freshness,
        coverage,
    };
    let (status, requeue) = status::status(kb, observed, now, ctx.settings.intervals());
    apply_status(client, kb, &status).await?;
    ctx.condition_events(kb, &previous.conditions, &status.conditions)
        .await;
    Ok((Action::requeue(requeue), inputs.err()))
}

/// The newest build Job's result, when it finished since the status last recorded one (its
/// completion time): the report its pod wrote, or why there is none. Counted in
/// `switchboard_operator_index_builds_total`.
async fn observe_build(
    ctx: &Context,
    namespace: &str,
    name: &str,
    newest: Option<&Job>,
    previous: &KnowledgeBaseStatus,
) -> Result<BuildOutcome> {
    let Some(newest) = newest else {
        return Ok(BuildOutcome::Unchanged);
    };
    let finished_at = newest
        .status
        .as_ref()
        .and_then(|s| s.completion_time.clone().or_else(|| s.start_time.clone()));
    if finished_at.as_ref() == previous.last_build_time.as_ref() {
        return Ok(BuildOutcome::Unchanged);
    }
    let job_name = newest.metadata.name.clone().unwrap_or_default();
    let outcome = match job_state(newest.status.as_ref()) {
        JobState::Running => return Ok(BuildOutcome::Unchanged),
        JobState::Succeeded => {
            let pods = Api::<Pod>::namespaced(ctx.client.clone(), namespace)
                .list(&ListParams::default().labels(&format!("job-name={job_name}")))
                .await
                .map_err(|e| Error::kube("list", format!("Pods of Job {namespace}/{job_name}"), e))?
                .items;
            match report_from_pods(&pods) {
                Ok(report) => BuildOutcome::Succeeded {
                    report,
                    finished_at,
                },
                Err(e) => BuildOutcome::Failed {
                    message: format!("build {job_name} succeeded but {e}"),
                    finished_at,
                },
            }
        }
        JobState::Failed(message) => BuildOutcome::Failed {
            message: format!("build {job_name} failed: {message}"),
            finished_at,
        },
    };
    let succeeded = matches!(outcome, BuildOutcome::Succeeded { .. });
    ctx.metrics.index_build(namespace, name, succeeded);
    Ok(outcome)
}

/// The Routers (of the KnowledgeBase's namespace) that use it, `namespace/name`, sorted.
async fn routers_using(
    ctx: &Context,
    namespace: &str,
    name: &str,
) -> std::result::Result<Vec<String>, String> {
    let mut routers: Vec<String> = Api::<Router>::namespaced(ctx.client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .map_err(|e| format!("listing the Routers of namespace {namespace}: {e}"))?
        .items
        .into_iter()
        .filter(|r| r.spec.knowledge_base_ref.name == name)
        .filter_map(|r| r.metadata.name.map(|n| format!("{namespace}/{n}")))
        .collect();
    routers.sort();
    Ok(routers)
}

/// Gaps listed per Router by its runtime (the operator then applies `minShare`).
const COVERAGE_LIMIT: usize = 100;

/// Reads the coverage gaps of the runtimes of the Routers that use the KnowledgeBase; `Err`
/// names the Router whose runtime could not answer.
async fn observe_coverage(
    ctx: &Context,
    kb: &KnowledgeBase,
    namespace: &str,
    name: &str,
) -> std::result::Result<content::CoverageCheck, String> {
    let routers = routers_using(ctx, namespace, name).await?;
    let spec = &kb.spec.coverage;
    let mut reports = Vec::with_capacity(routers.len());
    for router in routers {
        let request = crate::ports::CoverageRequest {
            namespace: namespace.to_owned(),
            router: router
                .split_once('/')
                .map_or(router.as_str(), |(_, n)| n)
                .to_owned(),
            window: spec.window.duration(),
            min_queries: u64::try_from(spec.min_queries.max(1)).unwrap_or(1),
            limit: COVERAGE_LIMIT,
        };
        let report = ctx
            .outcomes
            .coverage_gaps(&request)
            .await
            .map_err(|e| format!("Router {router}: {e}"))?;
        reports.push((router, report));
    }
    Ok(content::coverage_gaps(&reports, spec))
}

/// Measures stale documents on the runtimes of the Routers (of the KnowledgeBase's namespace)
/// that use it; `Err` says why it could not be measured.
async fn observe_staleness(
    ctx: &Context,
    kb: &KnowledgeBase,
    namespace: &str,
    name: &str,
) -> std::result::Result<content::Staleness, String> {
    let routers = routers_using(ctx, namespace, name).await?;
    if routers.is_empty() {
        return Ok(content::Staleness::default());
    }
    let staleness = &kb.spec.staleness;
    let queries = content::stale_queries(
        &routers,
        staleness.window.duration(),
        staleness.min_query_share.fraction(),
    );
    let shares = ctx.source.query(&queries.stale).await?;
    // The age is a detail: the documents are reported without it when it cannot be read.
    let modified = if shares.is_empty() {
        Vec::new()
    } else {
        ctx.source
            .query(&queries.modified)
            .await
            .unwrap_or_default()
    };
    let past_stale_after = ctx
        .source
        .query(&queries.past_stale_after)
        .await
        .ok()
        .and_then(|s| s.first().map(|s| s.value))
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(|v| v.round() as u64);
    Ok(content::Staleness {
        routers,
        documents: content::stale_documents(&shares, &modified),
        past_stale_after,
    })
}

/// A failed reconcile: Degraded; Ready stays true while a generation is served (pure; written by
/// [`crate::context::report_failure`]).
impl crate::context::FailureStatus for KnowledgeBase {
    type Status = KnowledgeBaseStatus;

    fn status_or_default(&self) -> KnowledgeBaseStatus {
        self.status.clone().unwrap_or_default()
    }

    fn conditions(
        status: &KnowledgeBaseStatus,
    ) -> &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition] {
        &status.conditions
    }

    fn failed(&self, error: &Error, now: k8s_openapi::jiff::Timestamp) -> KnowledgeBaseStatus {
        let generation = self.metadata.generation;
        let mut status = self.status_or_default();
        status.observed_generation = generation;
        let serving = status.index_generation.is_some();
        let ready_reason = if serving {
            reasons::RECONCILED
        } else {
            error.reason()
        };
        for c in [
            condition(
                cond::DEGRADED,
                true,
                error.reason(),
                error.to_string(),
                generation,
                now,
            ),
            condition(
                cond::READY,
                serving,
                ready_reason,
                error.to_string(),
                generation,
                now,
            ),
        ] {
            switchboard_crds::set_condition(&mut status.conditions, c);
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;
    use crate::knowledge_base::build::{BuildPlan, BuildReport};
    use crate::knowledge_base::status::fold_report;

    fn job(hash: &str, n: u64, complete: Option<bool>) -> Job {
        Job {
            metadata: ObjectMeta {
                name: Some(format!("kb-index-{hash}-{n}")),
                annotations: Some(
                    [
                        (build::SPEC_HASH_ANNOTATION.to_owned(), hash.to_owned()),
                        (build::BUILD_ANNOTATION.to_owned(), n.to_string()),
                    ]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            spec: None,
            status: complete.map(|ok| JobStatus {
                conditions: Some(vec![JobCondition {
                    type_: if ok { "Complete" } else { "Failed" }.to_owned(),
                    status: "True".to_owned(),
                    ..JobCondition::default()
                }]),
                ..JobStatus::default()
            }),
        }
    }

    #[test]
    fn builds_start_on_spec_changes_and_refreshes_only() {
        assert_eq!(plan_build(&[], Some("a"), false), BuildPlan::Start(1));
        let done = [job("a", 1, Some(true))];
        assert_eq!(plan_build(&done, Some("a"), false), BuildPlan::Done);
        assert_eq!(plan_build(&done, Some("b"), false), BuildPlan::Start(2));
        assert_eq!(plan_build(&done, Some("a"), true), BuildPlan::Start(2));
        // A failed build of the same spec is not retried in a loop; a refresh or edit retries.
        assert_eq!(
            plan_build(&[job("a", 1, Some(false))], Some("a"), false),
            BuildPlan::Done
        );
        let running = [job("a", 1, Some(true)), job("b", 2, None)];
        assert_eq!(
            plan_build(&running, Some("c"), true),
            BuildPlan::Wait("kb-index-b-2".to_owned())
        );
        // A missing input (no hash) starts nothing, not even a due refresh or a first build; a
        // running build still finishes.
        assert_eq!(plan_build(&[], None, false), BuildPlan::Done);
        assert_eq!(plan_build(&done, None, true), BuildPlan::Done);
        assert_eq!(
            plan_build(&running, None, false),
            BuildPlan::Wait("kb-index-b-2".to_owned())
        );
    }

    #[test]
    fn a_new_generation_keeps_the_previous_one() {
        let mut status = KnowledgeBaseStatus::default();
        let report = |g| BuildReport {
            generation: g,
            documents: 3,
            chunks: 9,
            ..BuildReport::default()
        };
        fold_report(&mut status, &report(1), None);
        assert_eq!(
            (status.index_generation, status.previous_generation),
            (Some(1), None)
        );
        fold_report(&mut status, &report(2), None);
        assert_eq!(
            (status.index_generation, status.previous_generation),
            (Some(2), Some(1))
        );
        // The same generation again (an unchanged rebuild) keeps the previous one.
        fold_report(&mut status, &report(2), None);
        assert_eq!(status.previous_generation, Some(1));
    }
}
