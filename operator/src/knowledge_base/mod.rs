//! KnowledgeBase controller: the index volume, the manifest, build Jobs (on spec changes, on
//! changes of the ConfigMaps the sources read, and on `refreshInterval`), status from the Job's
//! build report; the previous generation is kept for switching back.

pub mod build;
pub mod content;

use std::{sync::Arc, time::Duration};

use k8s_openapi::{
    api::{
        batch::v1::Job,
        core::v1::{ConfigMap, PersistentVolumeClaim, Pod},
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, PropagationPolicy},
    runtime::{controller::Action, reflector::ObjectRef},
};
use switchboard_crds::{
    KnowledgeBase, Router, Validate,
    conditions::{self as cond, reasons},
    knowledge_base::{KnowledgeBaseStatus, MAX_LISTED_CONTRADICTIONS, SourceKind},
};

use crate::{
    context::{
        Context, apply, apply_status, condition, describe, merge_conditions, namespaced_name,
    },
    error::{Error, Result},
};

use self::build::{
    BuildReport, JOBS_KEPT, KB_LABEL, KbChildren, SourceInputs, build_hash, build_number,
    config_map_digest, job_spec_hash, report_from_pods,
};
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

/// Reads what a build reads beyond the spec: the content digest of each ConfigMap source, and
/// checks that each claim of a volume source exists (a build pod waiting for a missing volume
/// would never finish). A missing one is [`Error::ReferenceNotFound`].
async fn source_inputs(
    client: &Client,
    namespace: &str,
    kb: &KnowledgeBase,
) -> Result<SourceInputs> {
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let missing = |kind: &'static str, name: String| Error::ReferenceNotFound {
        object: describe(kb),
        kind,
        name,
    };
    let mut inputs = SourceInputs::new();
    for source in &kb.spec.sources {
        match source.kind() {
            Some(SourceKind::ConfigMap(reference)) => {
                let name = &reference.name;
                let config_map = config_maps
                    .get_opt(name)
                    .await
                    .map_err(|e| Error::kube("get", format!("ConfigMap {namespace}/{name}"), e))?
                    .ok_or_else(|| missing("ConfigMap", name.clone()))?;
                let digest =
                    config_map_digest(&config_map, reference.key.as_deref()).ok_or_else(|| {
                        missing(
                            "ConfigMap key",
                            format!("{name}/{}", reference.key.as_deref().unwrap_or_default()),
                        )
                    })?;
                inputs.insert(source.name.clone(), digest);
            }
            Some(SourceKind::Volume(volume)) => {
                if let Some(claim) = &volume.claim_name {
                    claims
                        .get_metadata_opt(claim)
                        .await
                        .map_err(|e| {
                            Error::kube(
                                "get",
                                format!("PersistentVolumeClaim {namespace}/{claim}"),
                                e,
                            )
                        })?
                        .ok_or_else(|| missing("PersistentVolumeClaim", claim.clone()))?;
                }
            }
            _ => {}
        }
    }
    Ok(inputs)
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

/// Decides on a new build: what the build reads (`hash`, see [`build_hash`]) changed since the
/// newest Job, or a refresh is due. `hash` is `None` while an input is missing: nothing starts
/// (a running build finishes).
pub fn plan_build(jobs: &[Job], hash: Option<&str>, refresh_due: bool) -> BuildPlan {
    let newest = jobs.last();
    if let Some(running) = newest.filter(|job| job_state(job.status.as_ref()) == JobState::Running)
    {
        return BuildPlan::Wait(running.metadata.name.clone().unwrap_or_default());
    }
    let Some(hash) = hash else {
        return BuildPlan::Done;
    };
    let Some(newest) = newest else {
        return BuildPlan::Start(1);
    };
    let next = build_number(newest) + 1;
    if job_spec_hash(newest) != Some(hash) || refresh_due {
        BuildPlan::Start(next)
    } else {
        BuildPlan::Done
    }
}

/// One reconcile; `Ok((action, Some(error)))` when a missing input (ConfigMap, claim) holds the
/// build: the status already reports it.
async fn reconcile_inner(kb: &KnowledgeBase, ctx: &Context) -> Result<(Action, Option<Error>)> {
    let (namespace, name) = namespaced_name(kb)?;
    kb.spec.validate().map_err(|source| Error::InvalidSpec {
        object: describe(kb),
        source,
    })?;
    let client = &ctx.client;
    let inputs = match source_inputs(client, &namespace, kb).await {
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

    let hash = inputs.as_ref().ok().map(|inputs| build_hash(kb, inputs));
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

    let plan = plan_build(&jobs, hash.as_deref(), due);
    let building = match (&plan, &hash) {
        (BuildPlan::Start(n), Some(hash)) => {
            let job = children.job(hash, *n);
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
                        "spec or ConfigMap content changed"
                    }
                ),
            )
            .await;
            Some(job_name)
        }
        (BuildPlan::Wait(job), _) => Some(job.clone()),
        (BuildPlan::Start(_) | BuildPlan::Done, _) => None,
    };
    let missing_input = inputs.as_ref().err().map(|e| {
        format!(
            "{e}; no build starts until it does{}",
            status
                .index_generation
                .map(|g| format!(", generation {g} keeps serving"))
                .unwrap_or_default()
        )
    });
    prune_jobs(&jobs_api, &jobs).await;

    // KB rot: documents past staleAfter that the runtimes still retrieve (a failed check keeps
    // the last counts; the condition says it is unknown).
    let freshness = match status.index_generation {
        Some(_) => Some(observe_staleness(ctx, kb, &namespace, &name).await),
        None => None,
    };
    if let Some(Ok(found)) = &freshness {
        content::fold_staleness(&mut status, found);
    }
    // Coverage gaps: what the Routers' runtimes escalated, found nothing for or refused,
    // clustered by topic from their outcome stores (a failed check keeps the last list).
    let coverage = match status.index_generation {
        Some(_) => Some(observe_coverage(ctx, kb, &namespace, &name).await),
        None => None,
    };
    if let Some(Ok(found)) = &coverage {
        content::fold_coverage(&mut status, found);
    }

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
        match &missing_input {
            Some(message) => condition(
                cond::SOURCES_HEALTHY,
                false,
                reasons::REFERENCE_NOT_FOUND,
                message.clone(),
                generation,
                now,
            ),
            None => condition(
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
        },
    ];
    computed.push(match (&missing_input, &failure) {
        (Some(message), _) => condition(
            cond::DEGRADED,
            true,
            reasons::REFERENCE_NOT_FOUND,
            message.clone(),
            generation,
            now,
        ),
        (None, Some(message)) => condition(
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
        (None, None) if source_errors => condition(
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
        (None, None) => condition(
            cond::DEGRADED,
            false,
            reasons::RECONCILED,
            "",
            generation,
            now,
        ),
    });
    computed.push(content::freshness_condition(
        freshness.as_ref(),
        &kb.spec.staleness.min_query_share,
        kb.spec.staleness.window.as_str(),
        generation,
        now,
    ));
    computed.push(content::consistency_condition(&status, generation, now));
    computed.push(content::coverage_condition(
        coverage.as_ref(),
        &kb.spec.coverage,
        generation,
        now,
    ));
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
    Ok((
        Action::requeue(requeue.max(Duration::from_secs(1))),
        inputs.err(),
    ))
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
    status.contradictions = report.contradictions.as_ref().map(|c| c.count);
    status.top_contradictions = report
        .contradictions
        .iter()
        .flat_map(|c| &c.top)
        .take(MAX_LISTED_CONTRADICTIONS)
        .map(build::ReportedContradiction::candidate)
        .collect();
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

    fn failed(&self, error: &Error, now: Timestamp) -> KnowledgeBaseStatus {
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
