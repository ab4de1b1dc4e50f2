//! AdapterPatch controller: artifact check -> guardrail observations -> rollout step -> status,
//! Events, consumed annotations, requeue.

pub mod artifact;
pub mod evaluation;
pub mod rollout;
pub mod verify_job;

use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{Pod, Secret},
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
    runtime::{controller::Action, events::EventType as KubeEventType},
};
use switchboard_artifact::{ArtifactUri, DOCKER_CONFIG_KEY, oci::Credentials};
use switchboard_crds::{
    AdapterPatch, Router, Validate,
    adapter_patch::{AdapterPatchStatus, AdapterPhase},
    conditions::{self as cond, reasons},
};

use crate::{
    context::{Context, apply, apply_status, condition, describe, namespaced_name},
    error::{Error, Result},
    observe::{RolloutScope, observe_rollout},
};

use self::evaluation::EvaluationCheck;
use self::rollout::{EventType, Observations, RolloutInput, RolloutOutput, step};
use crate::ports::ArtifactCheck;

/// Controller name in metrics.
pub const CONTROLLER: &str = "adapterpatch";

/// Reconciles one AdapterPatch.
pub async fn reconcile(patch: Arc<AdapterPatch>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_timer(CONTROLLER);
    let result = reconcile_inner(&patch, &ctx).await;
    if let Err(error) = &result {
        crate::context::report_failure(patch.as_ref(), &ctx, error).await;
    }
    ctx.record_reconcile(CONTROLLER, &describe(patch.as_ref()), &result);
    result
}

/// Retries with exponential backoff.
pub use crate::context::error_policy;

/// Whether the spec's version still needs its artifact checked: it is new, superseded earlier
/// and named again, or still validating. Versions past validation were verified when they
/// entered it; rejected ones are not rolled out again.
pub fn needs_artifact_check(patch: &AdapterPatch) -> bool {
    let spec = &patch.spec;
    let Some(status) = &patch.status else {
        return true;
    };
    let entry = status
        .history
        .iter()
        .rev()
        .find(|h| h.version == spec.version && h.sha256 == spec.artifact.sha256.as_str());
    match entry.map(|h| h.phase) {
        None
        | Some(AdapterPhase::Pending | AdapterPhase::Validating | AdapterPhase::Superseded) => {
            status.stable_version.as_deref() != Some(spec.version.as_str())
        }
        Some(_) => false,
    }
}

/// The version that was stable before the current one (for the post-promotion watch).
pub fn previous_stable(status: &AdapterPatchStatus) -> Option<String> {
    let stable = status.stable_version.as_deref();
    status
        .history
        .iter()
        .rev()
        .filter(|h| Some(h.version.as_str()) != stable)
        .find(|h| {
            h.phase == AdapterPhase::Superseded && h.reason.as_deref() == Some(reasons::PROMOTED)
        })
        .map(|h| h.version.clone())
}

/// What the current stage compares, if it compares anything: Shadow (both sides of mirrored
/// requests), Canary (stable vs candidate), or the post-promotion watch (previous vs new stable).
pub fn rollout_scope(
    patch: &AdapterPatch,
    routers: Vec<String>,
    now: k8s_openapi::jiff::Timestamp,
) -> Option<RolloutScope> {
    let status = patch.status.as_ref()?;
    let spec = &patch.spec;
    let stable = status.stable_version.clone()?;
    let candidate_is_spec = status.candidate_version.as_deref() == Some(spec.version.as_str());
    let scope = |baseline: String, candidate: String, shadow: bool| RolloutScope {
        routers,
        lineage: spec.lineage.clone(),
        baseline,
        candidate,
        shadow,
    };
    match status.phase {
        AdapterPhase::Shadow if candidate_is_spec => {
            Some(scope(stable, spec.version.clone(), true))
        }
        AdapterPhase::Canary if candidate_is_spec => {
            Some(scope(stable, spec.version.clone(), false))
        }
        AdapterPhase::Promoted => {
            let started = status.step_started_at.as_ref()?;
            let watch = k8s_openapi::jiff::SignedDuration::try_from(
                spec.rollout.post_promotion_watch.duration(),
            )
            .ok()?;
            let end = started.0.checked_add(watch).ok()?;
            if end <= now {
                return None;
            }
            previous_stable(status).map(|previous| scope(previous, stable, false))
        }
        _ => None,
    }
}

async fn reconcile_inner(patch: &AdapterPatch, ctx: &Context) -> Result<Action> {
    let (namespace, name) = namespaced_name(patch)?;
    patch.spec.validate().map_err(|source| Error::InvalidSpec {
        object: describe(patch),
        source,
    })?;
    let client = &ctx.client;
    let now = ctx.now();

    let siblings = Api::<AdapterPatch>::namespaced(client.clone(), &namespace)
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::kube("list", format!("AdapterPatches in {namespace}"), e))?
        .items;
    let adapters_on_base_model = siblings
        .iter()
        .filter(|p| p.spec.base_model == patch.spec.base_model)
        .count()
        .max(1);

    let artifact = if needs_artifact_check(patch) {
        check_artifact(ctx, patch, &namespace, &name).await?
    } else {
        ArtifactCheck::Verified
    };
    let evaluation = if needs_artifact_check(patch) && artifact == ArtifactCheck::Verified {
        evaluation_check(ctx, patch, &namespace, &name).await?
    } else {
        EvaluationCheck::NotRequired
    };

    let observations = match rollout_scope(patch, Vec::new(), now) {
        Some(_) => {
            let routers = Api::<Router>::namespaced(client.clone(), &namespace)
                .list(&ListParams::default())
                .await
                .map_err(|e| Error::kube("list", format!("Routers in {namespace}"), e))?
                .items
                .into_iter()
                .map(Arc::new)
                .collect::<Vec<_>>();
            let mut ids: Vec<String> = crate::router::routers_selecting(&routers, patch)
                .iter()
                .filter(|r| r.spec.small_model.model == patch.spec.base_model)
                .map(|r| format!("{namespace}/{}", r.name_any()))
                .collect();
            ids.sort();
            match rollout_scope(patch, ids, now) {
                Some(scope) => {
                    observe_rollout(ctx.source.as_ref(), &scope, &patch.spec.guardrails).await
                }
                None => Observations::new(),
            }
        }
        None => Observations::new(),
    };

    let empty = BTreeMap::new();
    let previous = patch.status.clone().unwrap_or_default();
    let RolloutOutput {
        status,
        events,
        consumed_annotations,
        retained_versions,
        requeue_after,
    } = step(RolloutInput {
        generation: patch.metadata.generation,
        spec: &patch.spec,
        annotations: patch.metadata.annotations.as_ref().unwrap_or(&empty),
        status: &previous,
        artifact: &artifact,
        evaluation: &evaluation,
        observations: &observations,
        adapters_on_base_model,
        now,
    });

    apply_status(client, patch, &status).await?;
    log_analysis(&name, &previous, &status);
    let lineage = &patch.spec.lineage;
    ctx.metrics.rollout(
        &namespace,
        &name,
        lineage,
        status.phase,
        status.canary_weight.unwrap_or(0),
    );
    for event in &events {
        if matches!(
            event.reason.as_str(),
            reasons::GUARDRAIL_BREACHED | reasons::MANUAL_ROLLBACK | reasons::MANUAL_ABORT
        ) {
            ctx.metrics
                .rollback(&namespace, &name, lineage, &event.reason);
        }
        let type_ = match event.type_ {
            EventType::Normal => KubeEventType::Normal,
            EventType::Warning => KubeEventType::Warning,
        };
        tracing::info!(adapterpatch = %name, reason = %event.reason, message = %event.message, "rollout event");
        ctx.event(
            patch,
            type_,
            &event.reason,
            "Rollout",
            event.message.clone(),
        )
        .await;
    }
    if !consumed_annotations.is_empty() {
        remove_annotations(ctx, &namespace, &name, &consumed_annotations).await?;
    }
    release_artifacts(ctx, &status, &retained_versions);

    let requeue = requeue_after.map_or(ctx.settings.resync_interval, |d| {
        d.min(ctx.settings.analysis_interval)
    });
    Ok(Action::requeue(requeue))
}

/// The artifact check of the spec's version: a `pvc://` artifact through its verification Job,
/// any other fetched by the operator (with the pull Secret's registry credentials).
async fn check_artifact(
    ctx: &Context,
    patch: &AdapterPatch,
    namespace: &str,
    name: &str,
) -> Result<ArtifactCheck> {
    let spec = &patch.spec;
    match ArtifactUri::parse(&spec.artifact.uri) {
        Err(e) => Ok(ArtifactCheck::Failed {
            reason: reasons::ARTIFACT_INVALID.to_owned(),
            message: e.to_string(),
        }),
        Ok(ArtifactUri::Pvc { claim, .. }) => pvc_check(ctx, patch, namespace, name, &claim).await,
        Ok(_) => match pull_credentials(ctx, patch, namespace).await? {
            Ok(credentials) => Ok(ctx.artifacts.check(spec, &credentials).await),
            Err(unavailable) => Ok(unavailable),
        },
    }
}

fn unavailable(message: String) -> ArtifactCheck {
    ArtifactCheck::Failed {
        reason: reasons::ARTIFACT_UNAVAILABLE.to_owned(),
        message,
    }
}

/// The registry credentials of `spec.artifact.pullSecretRef` (none without one); a missing or
/// unusable Secret is an unavailable artifact (retried: the Secret may be created later).
async fn pull_credentials(
    ctx: &Context,
    patch: &AdapterPatch,
    namespace: &str,
) -> Result<std::result::Result<Credentials, ArtifactCheck>> {
    let Some(secret_ref) = &patch.spec.artifact.pull_secret_ref else {
        return Ok(Ok(Credentials::default()));
    };
    let name = &secret_ref.name;
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(|e| Error::secret("get", namespace, name, e))?;
    let uri = &patch.spec.artifact.uri;
    let Some(secret) = secret else {
        return Ok(Err(unavailable(format!(
            "{uri}: Secret {name} (spec.artifact.pullSecretRef) does not exist"
        ))));
    };
    if !switchboard_crds::common::secret_usable(secret.metadata.labels.as_ref()) {
        return Ok(Err(unavailable(format!(
            "{uri}: Secret {name} (spec.artifact.pullSecretRef) is not labelled \
             switchboard.dev/usable=true: Switchboard uses only Secrets their owner opted in \
             (kubectl label secret {name} -n {namespace} switchboard.dev/usable=true)"
        ))));
    }
    let data = secret.data.unwrap_or_default();
    let Some(bytes) = data
        .get(DOCKER_CONFIG_KEY)
        .or_else(|| data.get(".dockercfg"))
    else {
        return Ok(Err(unavailable(format!(
            "{uri}: Secret {name} (spec.artifact.pullSecretRef) has no {DOCKER_CONFIG_KEY} key"
        ))));
    };
    Ok(Credentials::from_docker_config(&bytes.0)
        .map_err(|e| unavailable(format!("{uri}: Secret {name}: {e}"))))
}

/// A `pvc://` artifact's check: its verification Job is started (once the claim exists) and
/// read when it has finished. A finished Job whose result is "unavailable" is deleted, so the
/// next check starts a new one.
async fn pvc_check(
    ctx: &Context,
    patch: &AdapterPatch,
    namespace: &str,
    name: &str,
    claim: &str,
) -> Result<ArtifactCheck> {
    use crate::pod::{JobState, job_state};
    let client = &ctx.client;
    let spec = &patch.spec;
    let job_name = verify_job::job_name(name, spec);
    let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
    let object = format!("Job {namespace}/{job_name}");
    let Some(job) = jobs
        .get_opt(&job_name)
        .await
        .map_err(|e| Error::kube("get", object.clone(), e))?
    else {
        if !crate::context::claim_exists(client, namespace, claim).await? {
            return Ok(unavailable(format!(
                "{}: PersistentVolumeClaim {claim} does not exist in namespace {namespace}",
                spec.artifact.uri
            )));
        }
        let job = verify_job::VerifyJob {
            patch,
            name,
            namespace,
            image: &ctx.settings.runtime_image,
        }
        .job(claim);
        apply(client, namespace, &job).await?;
        tracing::info!(adapterpatch = %name, job = %job_name, uri = %spec.artifact.uri, "artifact verification Job started");
        return Ok(ArtifactCheck::Pending);
    };
    let check = match job_state(job.status.as_ref()) {
        JobState::Running => return Ok(ArtifactCheck::Pending),
        JobState::Succeeded => {
            let pods = Api::<Pod>::namespaced(client.clone(), namespace)
                .list(&ListParams::default().labels(&format!("job-name={job_name}")))
                .await
                .map_err(|e| Error::kube("list", format!("Pods of {object}"), e))?
                .items;
            verify_job::check_from_report(spec, &job_name, verify_job::termination_message(&pods))
        }
        JobState::Failed(message) => unavailable(format!(
            "{}: verification Job {job_name} failed: {message}",
            spec.artifact.uri
        )),
    };
    if matches!(&check, ArtifactCheck::Failed { reason, .. } if reason == reasons::ARTIFACT_UNAVAILABLE)
    {
        match jobs.delete(&job_name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(Error::kube("delete", object, e)),
        }
    }
    Ok(check)
}

/// The offline evaluation of the spec's version (`spec.evaluation`): its Job is started once the
/// Router's config, the golden set and the artifact are there, and read when it has finished. A
/// Job that failed (rather than judged) is deleted, so the next check starts a new one.
async fn evaluation_check(
    ctx: &Context,
    patch: &AdapterPatch,
    namespace: &str,
    name: &str,
) -> Result<EvaluationCheck> {
    use k8s_openapi::api::core::v1::ConfigMap;
    use switchboard_crds::adapter_patch::EvaluationResult;
    let Some(evaluation) = &patch.spec.evaluation else {
        return Ok(EvaluationCheck::NotRequired);
    };
    let client = &ctx.client;
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(ctx.now());
    if let Some(check) = evaluation::anchor_check(patch, evaluation, now.clone()) {
        return Ok(check);
    }
    let router_name = &evaluation.router_ref.name;
    let Some(router) = Api::<Router>::namespaced(client.clone(), namespace)
        .get_opt(router_name)
        .await
        .map_err(|e| Error::kube("get", format!("Router {namespace}/{router_name}"), e))?
    else {
        return Ok(EvaluationCheck::Error(format!(
            "spec.evaluation.routerRef: Router {router_name} not found in namespace {namespace}"
        )));
    };
    if crate::router::routers_selecting(&[Arc::new(router.clone())], patch).is_empty() {
        return Ok(EvaluationCheck::Error(format!(
            "spec.evaluation.routerRef: Router {router_name} does not select this AdapterPatch (labels)"
        )));
    }
    let configs: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let config_name = crate::names::runtime_name(router_name);
    let compiled = configs
        .get_opt(&config_name)
        .await
        .map_err(|e| Error::kube("get", format!("ConfigMap {namespace}/{config_name}"), e))?
        .and_then(|cm| cm.data)
        .and_then(|d| d.get(switchboard_crds::runtime_config::FILE_NAME).cloned());
    let Some(compiled) = compiled else {
        return Ok(EvaluationCheck::Error(format!(
            "Router {router_name} has no compiled RuntimeConfig yet"
        )));
    };
    let config =
        match switchboard_crds::runtime_config::RuntimeConfig::from_json(compiled.as_bytes()) {
            Ok(c) => c,
            Err(e) => {
                return Ok(EvaluationCheck::Error(format!(
                    "the RuntimeConfig of Router {router_name}: {e}"
                )));
            }
        };
    let golden = &evaluation.golden_set;
    let has_golden = configs
        .get_opt(&golden.name)
        .await
        .map_err(|e| Error::kube("get", format!("ConfigMap {namespace}/{}", golden.name), e))?
        .and_then(|cm| cm.data)
        .is_some_and(|d| d.contains_key(&golden.key));
    if !has_golden {
        return Ok(EvaluationCheck::Error(format!(
            "spec.evaluation.goldenSet: ConfigMap {} has no key {} in namespace {namespace}",
            golden.name, golden.key
        )));
    }
    let (baseline, candidate) =
        match switchboard_crds::compile::evaluation_configs(&config, patch, name) {
            Ok(c) => c,
            Err(e) => {
                return Ok(EvaluationCheck::Error(format!(
                    "the evaluation's RuntimeConfigs: {e}"
                )));
            }
        };
    let job_name = evaluation::job_name(name, patch, evaluation);
    let baseline_version = baseline
        .adapters
        .iter()
        .find(|a| a.lineage == patch.spec.lineage)
        .map(|a| a.version.clone());
    let mut running = EvaluationResult {
        version: patch.spec.version.clone(),
        baseline_version,
        job: Some(job_name.clone()),
        started_at: Some(now.clone()),
        ..EvaluationResult::default()
    };
    let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
    let object = format!("Job {namespace}/{job_name}");
    let Some(job) = jobs
        .get_opt(&job_name)
        .await
        .map_err(|e| Error::kube("get", object.clone(), e))?
    else {
        let image = router
            .spec
            .image
            .clone()
            .unwrap_or_else(|| ctx.settings.runtime_image.clone());
        let builder = evaluation::EvaluationJob {
            patch,
            name,
            namespace,
            evaluation,
            router: &router,
            image: &image,
            configs: (&baseline, &candidate),
            egress_allow: ctx.settings.egress_allow.as_deref(),
        };
        let config_map = builder.config_map().map_err(|source| Error::Serialize {
            what: "the evaluation ConfigMap",
            source,
        })?;
        apply(client, namespace, &config_map).await?;
        apply(client, namespace, &builder.job()).await?;
        tracing::info!(adapterpatch = %name, job = %job_name, version = %patch.spec.version, "offline evaluation Job started");
        return Ok(EvaluationCheck::Pending(running));
    };
    if let Some(created) = &job.metadata.creation_timestamp {
        running.started_at = Some(created.clone());
    }
    let status = job.status.as_ref();
    let deadline = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.type_ == "Failed"
                    && c.status == "True"
                    && c.reason.as_deref() == Some("DeadlineExceeded")
            })
        });
    let pods;
    let outcome = match crate::pod::job_state(status) {
        crate::pod::JobState::Running => evaluation::JobOutcome::Running,
        crate::pod::JobState::Succeeded => {
            pods = Api::<Pod>::namespaced(client.clone(), namespace)
                .list(&ListParams::default().labels(&format!("job-name={job_name}")))
                .await
                .map_err(|e| Error::kube("list", format!("Pods of {object}"), e))?
                .items;
            evaluation::JobOutcome::Succeeded(verify_job::termination_message(&pods))
        }
        crate::pod::JobState::Failed(_) if deadline => evaluation::JobOutcome::DeadlineExceeded,
        crate::pod::JobState::Failed(why) => {
            let check =
                evaluation::check_from_job(running, evaluation::JobOutcome::Failed(&why), now);
            match jobs.delete(&job_name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(Error::kube("delete", object, e)),
            }
            return Ok(check);
        }
    };
    Ok(evaluation::check_from_job(running, outcome, now))
}

/// Logs each new guardrail analysis with its counts, so a rollout that holds says why in the
/// operator's log as well as in status (`lastAnalysis`, the `GuardrailsHealthy` condition).
fn log_analysis(name: &str, previous: &AdapterPatchStatus, status: &AdapterPatchStatus) {
    let Some(analysis) = &status.last_analysis else {
        return;
    };
    let same_run = previous
        .last_analysis
        .as_ref()
        .is_some_and(|p| p.time == analysis.time);
    if same_run {
        return;
    }
    let counts = analysis
        .guardrails
        .iter()
        .map(|g| {
            format!(
                "{} {}/{} vs {}/{}",
                g.metric,
                g.candidate.events,
                g.candidate.trials,
                g.baseline.events,
                g.baseline.trials
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    tracing::info!(
        adapterpatch = %name,
        phase = ?status.phase,
        step = ?status.current_step,
        decision = ?analysis.decision,
        counts = %counts,
        message = %analysis.message,
        "guardrail analysis"
    );
}

/// Removes acted-upon annotations (JSON merge patch with `null` values) so they act once.
async fn remove_annotations(
    ctx: &Context,
    namespace: &str,
    name: &str,
    keys: &[String],
) -> Result<()> {
    let nulls: serde_json::Map<String, serde_json::Value> = keys
        .iter()
        .map(|k| (k.clone(), serde_json::Value::Null))
        .collect();
    let patch = serde_json::json!({"metadata": {"annotations": nulls}});
    Api::<AdapterPatch>::namespaced(ctx.client.clone(), namespace)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| {
            Error::kube(
                "remove annotations of",
                format!("AdapterPatch {namespace}/{name}"),
                e,
            )
        })?;
    Ok(())
}

/// Releases cached artifacts of versions past their rollback window (digests no retained
/// version shares).
fn release_artifacts(ctx: &Context, status: &AdapterPatchStatus, retained: &[String]) {
    let kept: Vec<&str> = status
        .history
        .iter()
        .filter(|h| retained.contains(&h.version))
        .map(|h| h.sha256.as_str())
        .collect();
    for h in &status.history {
        if !retained.contains(&h.version)
            && !kept.contains(&h.sha256.as_str())
            && let Some(hex) = h.sha256.strip_prefix("sha256:")
        {
            ctx.artifacts.release(hex);
        }
    }
}

/// A failed reconcile: Degraded; Ready stays true while a stable version is served (pure; written by
/// [`crate::context::report_failure`]).
impl crate::context::FailureStatus for AdapterPatch {
    type Status = AdapterPatchStatus;

    fn status_or_default(&self) -> AdapterPatchStatus {
        self.status.clone().unwrap_or_default()
    }

    fn conditions(
        status: &AdapterPatchStatus,
    ) -> &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition] {
        &status.conditions
    }

    fn failed(&self, error: &Error, now: k8s_openapi::jiff::Timestamp) -> AdapterPatchStatus {
        let generation = self.metadata.generation;
        let mut status = self.status_or_default();
        let reason = error.reason();
        let message = error.to_string();
        if matches!(error, Error::InvalidSpec { .. }) {
            status.observed_generation = generation;
        }
        let serving = status.stable_version.is_some();
        let stable = status.stable_version.as_deref().unwrap_or("none");
        let ready_message = format!("stable version: {stable}; {message}");
        let ready_reason = if serving { reasons::RECONCILED } else { reason };
        for c in [
            condition(cond::DEGRADED, true, reason, message, generation, now),
            condition(
                cond::READY,
                serving,
                ready_reason,
                ready_message,
                generation,
                now,
            ),
        ] {
            switchboard_crds::set_condition(&mut status.conditions, c);
        }
        status
    }
}
