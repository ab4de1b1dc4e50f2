//! KnowledgeBase controller: the index volume, the manifest, build Jobs (on spec changes and on
//! `refreshInterval`), status from the Job's build report; the previous generation is kept for
//! switching back.

pub mod build;

use std::{sync::Arc, time::Duration};

use k8s_openapi::{
    api::{batch::v1::Job, core::v1::Pod},
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api,
    api::{DeleteParams, ListParams, PropagationPolicy},
    runtime::controller::Action,
};
use switchboard_crds::{
    KnowledgeBase, Validate,
    conditions::{self as cond, reasons},
    knowledge_base::KnowledgeBaseStatus,
};

use crate::{
    context::{
        Context, apply, apply_status, condition, describe, merge_conditions, namespaced_name,
    },
    error::{Error, Result},
};

use self::build::{
    BuildReport, JOBS_KEPT, JobState, KB_LABEL, KbChildren, build_number, job_spec_hash, job_state,
    report_from_pods, spec_hash,
};

/// Controller name in metrics.
pub const CONTROLLER: &str = "knowledgebase";

/// Reconciles one KnowledgeBase.
pub async fn reconcile(kb: Arc<KnowledgeBase>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_timer(CONTROLLER);
    let result = reconcile_inner(&kb, &ctx).await;
    if let Err(error) = &result {
        report_failure(&kb, &ctx, error).await;
    }
    ctx.record_reconcile(CONTROLLER, &describe(kb.as_ref()), &result);
    result
}

/// Retries with exponential backoff.
pub use crate::context::error_policy;

/// Whether a scheduled refresh is due: the last build finished `refreshInterval` ago.
pub fn refresh_due(kb: &KnowledgeBase, now: Timestamp) -> Option<Timestamp> {
    let interval = kb.spec.refresh_interval.as_ref()?.duration();
    let last = kb.status.as_ref()?.last_build_time.as_ref()?.0;
    last.checked_add(SignedDuration::try_from(interval).ok()?)
        .ok()
        .map(|next| if next <= now { now } else { next })
}

/// What to do about builds, given the Jobs of this KnowledgeBase (newest last).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BuildPlan {
    /// Start build number `n` of the current spec.
    Start(u64),
    /// A build is running (its name).
    Wait(String),
    /// The newest build is of the current spec and finished; nothing to do until the refresh.
    Done,
}

/// Decides on a new build: the spec changed since the newest Job, or a refresh is due.
pub fn plan_build(jobs: &[Job], hash: &str, refresh_due: bool) -> BuildPlan {
    let Some(newest) = jobs.last() else {
        return BuildPlan::Start(1);
    };
    let next = build_number(newest) + 1;
    if job_state(newest.status.as_ref()) == JobState::Running {
        return BuildPlan::Wait(newest.metadata.name.clone().unwrap_or_default());
    }
    if job_spec_hash(newest) != Some(hash) || refresh_due {
        BuildPlan::Start(next)
    } else {
        BuildPlan::Done
    }
}

async fn reconcile_inner(kb: &KnowledgeBase, ctx: &Context) -> Result<Action> {
    let (namespace, name) = namespaced_name(kb)?;
    kb.spec.validate().map_err(|source| Error::InvalidSpec {
        object: describe(kb),
        source,
    })?;
    let client = &ctx.client;
    let now = ctx.now();
    let children = KbChildren {
        kb,
        name: &name,
        namespace: &namespace,
        image: &ctx.settings.runtime_image,
    };
    apply(client, &namespace, &children.claim()).await?;
    let manifest = children.manifest().map_err(|source| Error::Serialize {
        what: "KnowledgeBase manifest",
        source,
    })?;
    apply(client, &namespace, &manifest).await?;

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

    let hash = spec_hash(kb);
    let next_refresh = refresh_due(kb, now);
    let due = next_refresh.is_some_and(|t| t <= now);
    let previous = kb.status.clone().unwrap_or_default();
    let mut status = previous.clone();
    status.observed_generation = kb.metadata.generation;
    status.next_refresh_time = next_refresh.filter(|t| *t > now).map(Time);

    // Fold the newest finished build into status (once: its completion time is recorded).
    let mut build_failure = None;
    if let Some(newest) = jobs.last() {
        let finished_at = newest
            .status
            .as_ref()
            .and_then(|s| s.completion_time.clone().or_else(|| s.start_time.clone()));
        let new_result = finished_at.as_ref() != previous.last_build_time.as_ref();
        match job_state(newest.status.as_ref()) {
            JobState::Succeeded if new_result => {
                let job_name = newest.metadata.name.clone().unwrap_or_default();
                let pods = Api::<Pod>::namespaced(client.clone(), &namespace)
                    .list(&ListParams::default().labels(&format!("job-name={job_name}")))
                    .await
                    .map_err(|e| {
                        Error::kube("list", format!("Pods of Job {namespace}/{job_name}"), e)
                    })?
                    .items;
                match report_from_pods(&pods) {
                    Ok(report) => {
                        fold_report(&mut status, &report, finished_at);
                        ctx.metrics.index_build(&namespace, &name, true);
                    }
                    Err(e) => {
                        status.last_build_time = finished_at;
                        build_failure = Some(format!("build {job_name} succeeded but {e}"));
                        ctx.metrics.index_build(&namespace, &name, false);
                    }
                }
            }
            JobState::Failed(message) if new_result => {
                status.last_build_time = finished_at;
                build_failure = Some(format!(
                    "build {} failed: {message}",
                    newest.metadata.name.as_deref().unwrap_or_default()
                ));
                ctx.metrics.index_build(&namespace, &name, false);
            }
            _ => {}
        }
    }
    // A failure stays reported until a later build succeeds.
    let failed_before = switchboard_crds::find_condition(&previous.conditions, cond::DEGRADED)
        .filter(|c| c.status == "True" && c.reason == reasons::INDEX_BUILD_FAILED)
        .map(|c| c.message.clone());
    let succeeded_now =
        status.last_build_time != previous.last_build_time && build_failure.is_none();
    let failure = build_failure.or(if succeeded_now { None } else { failed_before });

    let plan = plan_build(&jobs, &hash, due);
    let building = match &plan {
        BuildPlan::Start(n) => {
            let job = children.job(&hash, *n);
            let job_name = job.metadata.name.clone().unwrap_or_default();
            apply(client, &namespace, &job).await?;
            ctx.event(
                kb,
                kube::runtime::events::EventType::Normal,
                "IndexBuildStarted",
                "Build",
                format!(
                    "index build {job_name} started ({})",
                    if due {
                        "scheduled refresh"
                    } else {
                        "spec changed"
                    }
                ),
            )
            .await;
            Some(job_name)
        }
        BuildPlan::Wait(job) => Some(job.clone()),
        BuildPlan::Done => None,
    };
    prune_jobs(&jobs_api, &jobs).await;

    let generation = kb.metadata.generation;
    let has_index = status.index_generation.is_some();
    let source_errors = !status.source_errors.is_empty();
    let mut computed = vec![
        condition(
            cond::READY,
            has_index,
            if has_index {
                reasons::RECONCILED
            } else {
                reasons::INDEX_BUILDING
            },
            match status.index_generation {
                Some(g) => format!("serving index generation {g}"),
                None => "no index generation built yet".to_owned(),
            },
            generation,
            now,
        ),
        condition(
            cond::INDEX_READY,
            has_index,
            if has_index {
                reasons::RECONCILED
            } else {
                reasons::INDEX_BUILDING
            },
            format!(
                "generation {:?}, previous {:?}",
                status.index_generation, status.previous_generation
            ),
            generation,
            now,
        ),
        condition(
            cond::PROGRESSING,
            building.is_some(),
            if building.is_some() {
                reasons::INDEX_BUILDING
            } else {
                reasons::RECONCILED
            },
            building
                .as_ref()
                .map_or_else(String::new, |j| format!("index build {j} running")),
            generation,
            now,
        ),
        condition(
            cond::SOURCES_HEALTHY,
            !source_errors,
            if source_errors {
                reasons::SOURCE_ERRORS
            } else {
                reasons::RECONCILED
            },
            status
                .source_errors
                .iter()
                .map(|e| {
                    format!(
                        "{}{}: {} {}",
                        e.source,
                        e.file
                            .as_deref()
                            .map(|f| format!("/{f}"))
                            .unwrap_or_default(),
                        e.reason,
                        e.message
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
            generation,
            now,
        ),
    ];
    computed.push(match &failure {
        Some(message) => condition(
            cond::DEGRADED,
            true,
            reasons::INDEX_BUILD_FAILED,
            match status.index_generation {
                Some(g) => format!("{message}; generation {g} keeps serving"),
                None => message.clone(),
            },
            generation,
            now,
        ),
        None if source_errors => condition(
            cond::DEGRADED,
            true,
            reasons::SOURCE_ERRORS,
            format!(
                "{} sources failed in the last build",
                status.source_errors.len()
            ),
            generation,
            now,
        ),
        None => condition(
            cond::DEGRADED,
            false,
            reasons::RECONCILED,
            "",
            generation,
            now,
        ),
    });
    status.conditions = merge_conditions(&previous.conditions, computed);
    apply_status(client, kb, &status).await?;
    ctx.condition_events(kb, &previous.conditions, &status.conditions)
        .await;

    let requeue = if building.is_some() {
        ctx.settings.analysis_interval
    } else {
        next_refresh
            .filter(|t| *t > now)
            .and_then(|t| Duration::try_from(t.duration_since(now)).ok())
            .map_or(ctx.settings.resync_interval, |d| {
                d.min(ctx.settings.resync_interval)
            })
    };
    Ok(Action::requeue(requeue.max(Duration::from_secs(1))))
}

/// Records a successful build: the new generation is served, the one before is kept for
/// switching back.
pub fn fold_report(
    status: &mut KnowledgeBaseStatus,
    report: &BuildReport,
    finished_at: Option<Time>,
) {
    if status.index_generation != Some(report.generation) {
        status.previous_generation = status.index_generation.filter(|g| *g < report.generation);
    }
    status.index_generation = Some(report.generation);
    status.documents = Some(report.documents);
    status.chunks = Some(report.chunks);
    status.stale_documents = Some(report.stale_documents);
    status.source_errors.clone_from(&report.source_errors);
    status.last_build_time = finished_at;
}

/// Deletes finished Jobs beyond the newest [`JOBS_KEPT`].
async fn prune_jobs(api: &Api<Job>, jobs: &[Job]) {
    if jobs.len() <= JOBS_KEPT {
        return;
    }
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    for job in &jobs[..jobs.len() - JOBS_KEPT] {
        if job_state(job.status.as_ref()) == JobState::Running {
            continue;
        }
        if let Some(name) = &job.metadata.name
            && let Err(error) = api.delete(name, &params).await
        {
            tracing::warn!(job = %name, %error, "deleting an old index build Job failed");
        }
    }
}

async fn report_failure(kb: &KnowledgeBase, ctx: &Context, error: &Error) {
    let generation = kb.metadata.generation;
    let now = ctx.now();
    let previous = kb.status.clone().unwrap_or_default();
    let mut status = previous.clone();
    status.observed_generation = generation;
    let serving = status.index_generation.is_some();
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
            if serving {
                reasons::RECONCILED
            } else {
                error.reason()
            },
            error.to_string(),
            generation,
            now,
        ),
    ] {
        switchboard_crds::set_condition(&mut status.conditions, c);
    }
    if let Err(e) = apply_status(&ctx.client, kb, &status).await {
        tracing::warn!(knowledgebase = %describe(kb), error = %e, "writing the failure status failed");
        return;
    }
    ctx.condition_events(kb, &previous.conditions, &status.conditions)
        .await;
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

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
        assert_eq!(plan_build(&[], "a", false), BuildPlan::Start(1));
        let done = [job("a", 1, Some(true))];
        assert_eq!(plan_build(&done, "a", false), BuildPlan::Done);
        assert_eq!(plan_build(&done, "b", false), BuildPlan::Start(2));
        assert_eq!(plan_build(&done, "a", true), BuildPlan::Start(2));
        // A failed build of the same spec is not retried in a loop; a refresh or edit retries.
        assert_eq!(
            plan_build(&[job("a", 1, Some(false))], "a", false),
            BuildPlan::Done
        );
        let running = [job("a", 1, Some(true)), job("b", 2, None)];
        assert_eq!(
            plan_build(&running, "c", true),
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
