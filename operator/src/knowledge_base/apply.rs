//! Writing a KnowledgeBase's children: the index claim and the manifest ConfigMap
//! (server-side apply, built by [`super::build`]), build Jobs as the plan says, and the pruning
//! of old Jobs.

use k8s_openapi::api::batch::v1::Job;
use kube::{
    Api, Client,
    api::{DeleteParams, PropagationPolicy},
};
use switchboard_crds::KnowledgeBase;

use super::build::{BuildPlan, JOBS_KEPT, KbChildren};
use crate::context::{Context, apply};
use crate::error::{Error, Result};
use crate::pod::{JobState, job_state};

/// Applies the index claim and the manifest ConfigMap the build Job reads.
pub async fn storage(client: &Client, children: &KbChildren<'_>) -> Result<()> {
    apply(client, children.namespace, &children.claim()).await?;
    let manifest = children.manifest().map_err(|source| Error::Serialize {
        what: "KnowledgeBase manifest",
        source,
    })?;
    apply(client, children.namespace, &manifest).await?;
    Ok(())
}

/// Starts the build the plan asks for (with an Event saying why); returns the build Job that
/// runs, if any.
pub async fn build(
    ctx: &Context,
    kb: &KnowledgeBase,
    children: &KbChildren<'_>,
    plan: &BuildPlan,
    hash: Option<&str>,
    refresh: bool,
) -> Result<Option<String>> {
    Ok(match (plan, hash) {
        (BuildPlan::Start(n), Some(hash)) => {
            let job = children.job(hash, *n);
            let job_name = job.metadata.name.clone().unwrap_or_default();
            apply(&ctx.client, children.namespace, &job).await?;
            ctx.event(
                kb,
                kube::runtime::events::EventType::Normal,
                "IndexBuildStarted",
                "Build",
                format!(
                    "index build {job_name} started ({})",
                    if refresh {
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
    })
}

/// Deletes finished Jobs beyond the newest [`JOBS_KEPT`].
pub async fn prune_jobs(api: &Api<Job>, jobs: &[Job]) {
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
