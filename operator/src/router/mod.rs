//! Router controller: compile the RuntimeConfig, apply the ConfigMap, Deployment and Service,
//! report replicas, config revision and routed share.

pub mod apply;
pub mod build;
pub mod holdout;
pub mod status;
pub mod token_key;
pub mod validate;

use std::{collections::BTreeMap, sync::Arc};

use kube::{Api, api::ListParams, runtime::controller::Action};
use switchboard_crds::{
    AdapterPatch, Experiment, KnowledgeBase, Percent, Router,
    compile::{CompileError, CompileInput, Compiled, HoldoutPins, compile},
    conditions as cond,
    router::{HoldoutPhase, HoldoutStatus, RoutedShare, RouterStatus},
};

use self::build::RouterChildren;
use crate::{
    context::{Context, apply_status, condition, describe, namespaced_name},
    error::{Error, Result},
    observe::{count, router_matcher},
    ports::HoldoutRequest,
};

/// Controller name in metrics.
pub const CONTROLLER: &str = "router";

/// Reconciles one Router.
pub async fn reconcile(router: Arc<Router>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_timer(CONTROLLER);
    let result = reconcile_inner(&router, &ctx).await;
    if let Err(error) = &result {
        crate::context::report_failure(router.as_ref(), &ctx, error).await;
    }
    ctx.record_reconcile(CONTROLLER, &describe(router.as_ref()), &result);
    result
}

/// Retries with exponential backoff.
pub use crate::context::error_policy;

/// validate -> read -> build (compile, children) -> apply -> observe -> status.
async fn reconcile_inner(router: &Router, ctx: &Context) -> Result<Action> {
    let (namespace, name) = namespaced_name(router)?;
    validate::spec(router)?;
    let inputs = read_inputs(ctx, router, &namespace).await?;
    let now = ctx.now();
    let previous = router.status.clone().unwrap_or_default();
    let Compiled { config, skipped } = compile(CompileInput {
        router,
        knowledge_base: &inputs.knowledge_base,
        adapters: &inputs.adapters,
        experiments: &inputs.experiments,
        holdout: HoldoutPins::of(router, now),
    })?;

    let secret_problems = validate::secret_problems(ctx, router, &namespace).await?;
    let rotation = apply::token_secret(ctx, router, &namespace, &name).await?;
    let children = RouterChildren {
        router,
        name: &name,
        namespace: &namespace,
        default_image: &ctx.settings.runtime_image,
        egress_allow: ctx.settings.egress_allow.as_deref(),
        operator: &ctx.settings.operator_peer,
    };
    let deployment = apply::children(&ctx.client, &children, &config).await?;

    // Observe: pods, the revision they run, the routed share, the holdout's units.
    let router_id = format!("{namespace}/{name}");
    let deployment_current = deployment
        .status
        .as_ref()
        .and_then(|s| s.observed_generation)
        .zip(deployment.metadata.generation)
        .is_some_and(|(observed, want)| observed >= want);
    let observed = status::Observed {
        config: &config,
        skipped: &skipped,
        secret_problems: &secret_problems,
        deployment: deployment.status.as_ref(),
        deployment_current,
        loaded: loaded_revisions(ctx, &router_id).await,
        routed_share: routed_share(ctx, &router_id).await,
        holdout_data: holdout_units(ctx, router, &previous, now).await,
        index_access_mode: inputs.knowledge_base.spec.storage.access_mode,
        rotation,
    };
    let (status, requeue) = status::status(router, observed, now, ctx.settings.intervals());

    apply_status(&ctx.client, router, &status).await?;
    ctx.condition_events(router, &previous.conditions, &status.conditions)
        .await;
    if previous.runtime_config_hash.as_deref() != Some(config.revision.as_str()) {
        ctx.event(
            router,
            kube::runtime::events::EventType::Normal,
            "RuntimeConfigWritten",
            "Compile",
            format!(
                "RuntimeConfig {} written: generation {}, {} adapter entries, {} experiments",
                config.revision,
                config.knowledge_base.index_generation,
                config.adapters.len(),
                config.experiments.len()
            ),
        )
        .await;
    }
    holdout_events(
        ctx,
        router,
        previous.holdout.as_ref(),
        status.holdout.as_ref(),
    )
    .await;
    Ok(Action::requeue(requeue))
}

/// What the compiler reads besides the Router.
struct Inputs {
    knowledge_base: KnowledgeBase,
    adapters: Vec<AdapterPatch>,
    experiments: Vec<Experiment>,
}

/// The Router's KnowledgeBase (an error when it does not exist), and the AdapterPatches and
/// Experiments of its namespace (the compiler selects among them).
async fn read_inputs(ctx: &Context, router: &Router, namespace: &str) -> Result<Inputs> {
    let client = &ctx.client;
    let kb_name = &router.spec.knowledge_base_ref.name;
    let knowledge_base = Api::<KnowledgeBase>::namespaced(client.clone(), namespace)
        .get_opt(kb_name)
        .await
        .map_err(|e| Error::kube("get", format!("KnowledgeBase {namespace}/{kb_name}"), e))?
        .ok_or_else(|| Error::ReferenceNotFound {
            object: describe(router),
            kind: "KnowledgeBase",
            name: kb_name.clone(),
        })?;
    let adapters = Api::<AdapterPatch>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::kube("list", format!("AdapterPatches in {namespace}"), e))?
        .items;
    let experiments = Api::<Experiment>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::kube("list", format!("Experiments in {namespace}"), e))?
        .items;
    Ok(Inputs {
        knowledge_base,
        adapters,
        experiments,
    })
}

/// The holdout's units from the outcome store, while it runs and when its comparison is due
/// (every resync interval, and once more as it ends): the read covers every interaction since
/// its start.
async fn holdout_units(
    ctx: &Context,
    router: &Router,
    previous: &RouterStatus,
    now: k8s_openapi::jiff::Timestamp,
) -> Option<Result<switchboard_analysis::ExperimentUnits, String>> {
    let (Some(spec), Some(h)) = (&router.spec.holdout, &previous.holdout) else {
        return None;
    };
    if !holdout::due(h, now, ctx.settings.resync_interval) {
        return None;
    }
    Some(
        ctx.outcomes
            .holdout_units(&HoldoutRequest {
                namespace: router.metadata.namespace.clone().unwrap_or_default(),
                router: router.metadata.name.clone().unwrap_or_default(),
                metrics: spec.metrics.iter().map(|&m| (m, spec.settle(m))).collect(),
                started_at: h.started_at.0.as_second(),
                until: now.as_second(),
            })
            .await,
    )
}

/// Normal Events when the holdout starts (with its pins) and when it ends (with its result).
async fn holdout_events(
    ctx: &Context,
    router: &Router,
    before: Option<&HoldoutStatus>,
    after: Option<&HoldoutStatus>,
) {
    let Some(after) = after else {
        return;
    };
    let message = match before {
        None => Some((
            "HoldoutStarted",
            format!(
                "holdout started: {} of units stay on {} until {}",
                router
                    .spec
                    .holdout
                    .as_ref()
                    .map_or_else(String::new, |h| h.share.to_string()),
                if after.pinned.is_empty() {
                    "no adapter".to_owned()
                } else {
                    after
                        .pinned
                        .iter()
                        .map(|p| format!("{}@{}", p.lineage, p.version))
                        .collect::<Vec<_>>()
                        .join(", ")
                },
                after.ends_at.0
            ),
        )),
        Some(b) if b.phase == HoldoutPhase::Running && after.phase == HoldoutPhase::Ended => {
            Some((
                "HoldoutEnded",
                format!(
                    "holdout ended; exposed minus held out: {}",
                    if after.comparisons.is_empty() {
                        "no comparison (too few units)".to_owned()
                    } else {
                        after
                            .comparisons
                            .iter()
                            .map(|c| {
                                format!(
                                    "{} {:+.4} (95% CI {:+.4} to {:+.4})",
                                    c.metric.as_str(),
                                    c.difference,
                                    c.ci_low,
                                    c.ci_high
                                )
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ),
            ))
        }
        Some(_) => None,
    };
    if let Some((reason, message)) = message {
        ctx.event(
            router,
            kube::runtime::events::EventType::Normal,
            reason,
            "Holdout",
            message,
        )
        .await;
    }
}

/// Revisions the runtime pods report (`switchboard_runtime_config_info`).
async fn loaded_revisions(ctx: &Context, router_id: &str) -> Result<Vec<String>, String> {
    let q = format!(
        "max by (revision) (switchboard_runtime_config_info{{{}}})",
        router_matcher(&[router_id.to_owned()])
    );
    let samples = ctx.source.query(&q).await?;
    let mut out: Vec<String> = samples
        .into_iter()
        .filter(|s| s.value > 0.0)
        .filter_map(|s| s.labels.get("revision").cloned())
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// PromQL of the routed share over the last hour, by model.
pub fn routed_share_query(router_id: &str, model: &str) -> String {
    format!(
        "sum(increase(switchboard_route_decisions_total{{{},model=\"{model}\"}}[3600s]))",
        router_matcher(&[router_id.to_owned()])
    )
}

/// Share of answers per model over the last hour, when Prometheus has it.
async fn routed_share(ctx: &Context, router_id: &str) -> Option<RoutedShare> {
    let small = count(ctx.source.as_ref(), &routed_share_query(router_id, "small"))
        .await
        .ok()
        .flatten()
        .unwrap_or(0);
    let large = count(ctx.source.as_ref(), &routed_share_query(router_id, "large"))
        .await
        .ok()
        .flatten()
        .unwrap_or(0);
    let total = small + large;
    (total > 0).then(|| {
        #[allow(clippy::cast_precision_loss)]
        let fraction = small as f64 / total as f64;
        let round = |f: f64| (f * 1000.0).round() / 1000.0;
        RoutedShare {
            small: Percent::from_fraction(round(fraction)),
            large: Percent::from_fraction(round(1.0 - fraction)),
        }
    })
}

/// A failed reconcile: Ready false; Progressing while the KnowledgeBase is not ready, Degraded otherwise (pure; written by
/// [`crate::context::report_failure`]).
impl crate::context::FailureStatus for Router {
    type Status = RouterStatus;

    fn status_or_default(&self) -> RouterStatus {
        self.status.clone().unwrap_or_default()
    }

    fn conditions(
        status: &RouterStatus,
    ) -> &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition] {
        &status.conditions
    }

    fn failed(&self, error: &Error, now: k8s_openapi::jiff::Timestamp) -> RouterStatus {
        let generation = self.metadata.generation;
        let waiting = matches!(
            error,
            Error::Compile(CompileError::KnowledgeBaseNotReady(_))
        );
        let mut status = self.status_or_default();
        status.observed_generation = generation;
        let reason = error.reason();
        let message = error.to_string();
        for c in [
            condition(cond::READY, false, reason, message.clone(), generation, now),
            condition(
                cond::PROGRESSING,
                waiting,
                reason,
                message.clone(),
                generation,
                now,
            ),
            condition(cond::DEGRADED, !waiting, reason, message, generation, now),
        ] {
            switchboard_crds::set_condition(&mut status.conditions, c);
        }
        status
    }
}

/// Routers of `namespace` that select an AdapterPatch with these labels and base model.
pub fn routers_selecting(routers: &[Arc<Router>], patch: &AdapterPatch) -> Vec<Arc<Router>> {
    let empty = BTreeMap::new();
    let labels = patch.metadata.labels.as_ref().unwrap_or(&empty);
    routers
        .iter()
        .filter(|r| r.metadata.namespace == patch.metadata.namespace)
        .filter(|r| {
            r.spec
                .small_model
                .adapter_selector
                .as_ref()
                .is_some_and(|s| switchboard_crds::compile::selector_matches(s, labels))
        })
        .cloned()
        .collect()
}
