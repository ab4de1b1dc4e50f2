//! Router controller: compile the RuntimeConfig, apply the ConfigMap, Deployment and Service,
//! report replicas, config revision and routed share.

pub mod build;
pub mod holdout;
pub mod token_key;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::{
    api::{core::v1::Secret, networking::v1::NetworkPolicy},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, PostParams},
    runtime::controller::Action,
};
use switchboard_crds::{
    AdapterPatch, Experiment, KnowledgeBase, Percent, Router, SecretKeyRef, Validate,
    compile::{CompileError, CompileInput, Compiled, HoldoutPins, compile},
    conditions::{self as cond, reasons},
    router::{HoldoutPhase, HoldoutStatus, RoutedShare, RouterStatus},
};

use crate::{
    context::{
        Context, apply, apply_status, condition, describe, merge_conditions, namespaced_name,
    },
    error::{Error, Result},
    observe::{count, router_matcher},
    ports::HoldoutRequest,
};

use self::build::{
    ConfigVolumes, RouterChildren, config_status, deployment_state, index_volume_shareable,
    outcome_store_shared,
};
use crate::names::token_secret_name;

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

async fn reconcile_inner(router: &Router, ctx: &Context) -> Result<Action> {
    let (namespace, name) = namespaced_name(router)?;
    router
        .spec
        .validate()
        .map_err(|source| Error::InvalidSpec {
            object: describe(router),
            source,
        })?;
    let client = &ctx.client;
    let kb_name = &router.spec.knowledge_base_ref.name;
    let kb = Api::<KnowledgeBase>::namespaced(client.clone(), &namespace)
        .get_opt(kb_name)
        .await
        .map_err(|e| Error::kube("get", format!("KnowledgeBase {namespace}/{kb_name}"), e))?
        .ok_or_else(|| Error::ReferenceNotFound {
            object: describe(router),
            kind: "KnowledgeBase",
            name: kb_name.clone(),
        })?;
    let adapters = Api::<AdapterPatch>::namespaced(client.clone(), &namespace)
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::kube("list", format!("AdapterPatches in {namespace}"), e))?
        .items;
    let experiments = Api::<Experiment>::namespaced(client.clone(), &namespace)
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::kube("list", format!("Experiments in {namespace}"), e))?
        .items;
    let now = ctx.now();
    let previous = router.status.clone().unwrap_or_default();
    let Compiled { config, skipped } = compile(CompileInput {
        router,
        knowledge_base: &kb,
        adapters: &adapters,
        experiments: &experiments,
        holdout: HoldoutPins::of(router, now),
    })?;

    let secret_problems = secret_problems(ctx, router, &namespace).await?;
    let rotation = ensure_token_secret(ctx, router, &namespace, &name).await?;
    let missing_secret = (!secret_problems.is_empty()).then(|| secret_problems.join("; "));
    let children = RouterChildren {
        router,
        name: &name,
        namespace: &namespace,
        default_image: &ctx.settings.runtime_image,
        egress_allow: ctx.settings.egress_allow.as_deref(),
        operator: &ctx.settings.operator_peer,
    };
    let config_map = children
        .config_map(&config)
        .map_err(|source| Error::Serialize {
            what: "RuntimeConfig",
            source,
        })?;
    apply(client, &namespace, &config_map).await?;
    let deployment = apply(
        client,
        &namespace,
        &children.deployment(kb_name, &ConfigVolumes::of(&config)),
    )
    .await?;
    apply(client, &namespace, &children.service()).await?;
    apply(client, &namespace, &children.admin_service()).await?;
    match children.network_policy() {
        Some(policy) => {
            apply(client, &namespace, &policy).await?;
        }
        None => remove_network_policy(client, &namespace, &name).await?,
    }

    // Observe: pods, the revision they run, the routed share.
    let router_id = format!("{namespace}/{name}");
    let generation_current = deployment
        .status
        .as_ref()
        .and_then(|s| s.observed_generation)
        .zip(deployment.metadata.generation)
        .is_some_and(|(observed, want)| observed >= want);
    let (ready, progressing, pods_message) = deployment_state(
        router.spec.replicas,
        generation_current,
        deployment.status.as_ref(),
    );
    let loaded = loaded_revisions(ctx, &router_id).await;
    let routed_share = routed_share(ctx, &router_id).await;

    let generation = router.metadata.generation;
    // The holdout's comparison, read while it runs (and once more as it ends).
    let holdout_data = match (&router.spec.holdout, &previous.holdout) {
        (Some(spec), Some(h)) if holdout::due(h, now, ctx.settings.resync_interval) => Some(
            ctx.outcomes
                .holdout_units(&HoldoutRequest {
                    namespace: namespace.clone(),
                    router: name.clone(),
                    metrics: spec.metrics.iter().map(|&m| (m, spec.settle(m))).collect(),
                    started_at: h.started_at.0.as_second(),
                    until: now.as_second(),
                })
                .await,
        ),
        _ => None,
    };
    let mut status = config_status(&config, &name);
    status.holdout = holdout::status(
        router.spec.holdout.as_ref(),
        previous.holdout.as_ref(),
        &config,
        now,
        holdout_data,
    );
    let (replicas, ready_replicas, _, _) = build::replica_counts(deployment.status.as_ref());
    status.observed_generation = generation;
    status.replicas = Some(replicas);
    status.ready_replicas = Some(ready_replicas);
    status.routed_share = routed_share;

    let (applied, applied_reason, applied_message) = match &loaded {
        Ok(revisions) if revisions.is_empty() => (
            None,
            reasons::CONFIG_PENDING,
            format!(
                "revision {} written to ConfigMap {}; no runtime pod reports a revision yet",
                config.revision,
                crate::names::runtime_name(&name)
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
                crate::names::runtime_name(&name)
            ),
        ),
    };
    let degraded_message = missing_secret
        .iter()
        .cloned()
        .chain(skipped.iter().map(|s| {
            format!(
                "{} {} skipped ({}): {}",
                s.kind, s.name, s.reason, s.message
            )
        }))
        .collect::<Vec<_>>()
        .join("; ");
    let degraded = missing_secret.is_some() || !skipped.is_empty();
    let (shareable, shareable_message) =
        index_volume_shareable(kb_name, kb.spec.storage.access_mode, router.spec.replicas);
    let (outcomes_shared, outcomes_message) =
        outcome_store_shared(&router.spec.outcome_store, router.spec.replicas);
    let mut computed = vec![
        condition(
            cond::READY,
            ready,
            if ready {
                reasons::RECONCILED
            } else {
                reasons::WAITING_FOR_CHILDREN
            },
            pods_message.clone(),
            generation,
            now,
        ),
        condition(
            cond::PROGRESSING,
            progressing,
            if progressing {
                reasons::WAITING_FOR_CHILDREN
            } else {
                reasons::RECONCILED
            },
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
            if shareable {
                reasons::RECONCILED
            } else {
                reasons::READ_WRITE_ONCE_INDEX
            },
            shareable_message,
            generation,
            now,
        ),
        condition(
            cond::OUTCOME_STORE_SHARED,
            outcomes_shared,
            if outcomes_shared {
                reasons::RECONCILED
            } else {
                reasons::PER_POD_OUTCOME_STORE
            },
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

    // A missing Secret is not watched (that would need list/watch on every Secret): look again
    // soon.
    let settle = progressing || applied != Some(true) || missing_secret.is_some();
    let requeue = if settle {
        ctx.settings.analysis_interval.max(Duration::from_secs(1))
    } else {
        ctx.settings.resync_interval
    };
    // A key rotation's next step, and the holdout's end, come at their own time.
    let requeue = [
        rotation,
        holdout::next_look(status.holdout.as_ref(), now).map(|d| d.max(Duration::from_secs(1))),
    ]
    .into_iter()
    .flatten()
    .fold(requeue, Duration::min);
    Ok(Action::requeue(requeue))
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

/// Deletes the runtime pods' NetworkPolicy of a Router that turned `spec.access.networkPolicy`
/// off (absent already: nothing to do).
async fn remove_network_policy(client: &Client, namespace: &str, router: &str) -> Result<()> {
    let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), namespace);
    let name = crate::names::runtime_name(router);
    match api.delete(&name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(Error::Kube {
            verb: "delete",
            object: format!("NetworkPolicy {namespace}/{name}"),
            source: Box::new(e),
        }),
    }
}

/// The interaction-token key of a Router's runtime pods: created once with 32 random bytes, then
/// rotated only on request, in the steps of [`token_key`] (rewriting it at once would invalidate
/// every token in flight). Returns when to look again while a rotation runs.
async fn ensure_token_secret(
    ctx: &Context,
    router: &Router,
    namespace: &str,
    name: &str,
) -> Result<Option<Duration>> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let secret_name = token_secret_name(name);
    let requested = router
        .annotations()
        .get(token_key::ROTATE_ANNOTATION)
        .map(String::as_str);
    let key_error = |e: std::io::Error| Error::Serialize {
        what: "token key",
        source: serde_json::Error::io(e),
    };
    let Some(existing) = api
        .get_opt(&secret_name)
        .await
        .map_err(|e| Error::secret("get", namespace, &secret_name, e))?
    else {
        let mut state = token_key::KeyState::new(random_hex(32).map_err(key_error)?, requested);
        state.admin_token = Some(random_hex(32).map_err(key_error)?);
        state.unit_key = Some(random_hex(32).map_err(key_error)?);
        let mut annotations = BTreeMap::new();
        state.annotate(&mut annotations);
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(secret_name.clone()),
                namespace: Some(namespace.to_owned()),
                labels: Some(crate::names::labels(name)),
                annotations: Some(annotations),
                owner_references: Some(router.controller_owner_ref(&()).into_iter().collect()),
                ..ObjectMeta::default()
            },
            data: Some(state.data()),
            type_: Some("Opaque".to_owned()),
            ..Secret::default()
        };
        return match api.create(&PostParams::default(), &secret).await {
            Ok(_) => Ok(None),
            // Another writer won the race: its key stands.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
            Err(e) => Err(Error::secret("create", namespace, &secret_name, e)),
        };
    };
    let mut current = token_key::KeyState::read(&existing);
    // A Secret written before the admin API (or unit pseudonyms) existed gets its token (key)
    // now.
    let add_admin_token = current.admin_token.is_none() || current.unit_key.is_none();
    if current.admin_token.is_none() {
        current.admin_token = Some(random_hex(32).map_err(key_error)?);
    }
    if current.unit_key.is_none() {
        current.unit_key = Some(random_hex(32).map_err(key_error)?);
    }
    let mut fresh_key = None;
    let mut new_key = || match random_hex(32) {
        Ok(k) => k,
        Err(e) => {
            fresh_key = Some(e);
            String::new()
        }
    };
    let step = token_key::plan(&current, requested, ctx.now(), &mut new_key);
    if let Some(e) = fresh_key {
        return Err(key_error(e));
    }
    let (next, event) = match step.write {
        Some((next, reason, note)) => (next, Some((reason, note))),
        None if add_admin_token => (current, None),
        None => return Ok(step.requeue),
    };
    // Replaced at the version read (a concurrent writer makes this a 409: retried with backoff);
    // the chart's admission policy lets the operator update only Secrets a Router controls.
    let mut secret = existing;
    next.annotate(
        secret
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new),
    );
    secret.data = Some(next.data());
    secret.string_data = None;
    api.replace(&secret_name, &PostParams::default(), &secret)
        .await
        .map_err(|e| Error::secret("update", namespace, &secret_name, e))?;
    if let Some((reason, note)) = event {
        ctx.event(
            router,
            kube::runtime::events::EventType::Normal,
            reason,
            "RotateTokenKey",
            note,
        )
        .await;
    }
    Ok(step.requeue)
}

/// Why a Secret key the Router names is unusable, if it is: the Secret or its key does not
/// exist. `field` names the spec field, `consequence` what happens meanwhile. A Secret its owner
/// has not labelled `switchboard.dev/usable: "true"` is an error: the Router's children are not
/// touched while it names one.
async fn secret_key_problem(
    ctx: &Context,
    router: &Router,
    namespace: &str,
    secret_ref: &SecretKeyRef,
    field: &'static str,
    consequence: &str,
) -> Result<Option<String>> {
    let name = &secret_ref.name;
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(|e| Error::secret("get", namespace, name, e))?;
    let has_key = |s: &Secret| {
        s.data
            .as_ref()
            .is_some_and(|d| d.contains_key(&secret_ref.key))
            || s.string_data
                .as_ref()
                .is_some_and(|d| d.contains_key(&secret_ref.key))
    };
    Ok(match secret {
        None => Some(format!(
            "Secret {name} ({field}) does not exist: {consequence}"
        )),
        Some(s) if !switchboard_crds::common::secret_usable(s.metadata.labels.as_ref()) => {
            return Err(Error::SecretNotUsable {
                object: describe(router),
                field,
                namespace: namespace.to_owned(),
                name: name.clone(),
            });
        }
        Some(s) if !has_key(&s) => Some(format!(
            "Secret {name} has no key {} ({field}): {consequence}",
            secret_ref.key
        )),
        Some(_) => None,
    })
}

/// Problems with the Secrets the Router names: the large model endpoint's API key (the Router
/// still serves: the Secret volume is optional and the endpoint is called without a key), the
/// outcome store's PostgreSQL URL and the client tokens (new runtime pods cannot start without
/// them; the running ones serve on).
async fn secret_problems(ctx: &Context, router: &Router, namespace: &str) -> Result<Vec<String>> {
    let spec = &router.spec;
    let named = [
        (
            spec.large_model
                .endpoint
                .as_ref()
                .and_then(|e| e.secret_ref.as_ref()),
            "spec.largeModel.endpoint.secretRef",
            "the large model endpoint is called without an API key until it does",
        ),
        (
            spec.outcome_store.postgres.as_ref(),
            "spec.outcomeStore.postgres",
            "new runtime pods cannot start (they would not share the feedback replay guard); \
             the running ones keep serving",
        ),
        (
            spec.access.client_tokens.as_ref(),
            "spec.access.clientTokens",
            "new runtime pods cannot start (they would serve the public API without its \
             tokens); the running ones keep serving",
        ),
    ];
    let mut problems = Vec::new();
    for (secret_ref, field, consequence) in named {
        if let Some(secret_ref) = secret_ref {
            problems.extend(
                secret_key_problem(ctx, router, namespace, secret_ref, field, consequence).await?,
            );
        }
    }
    Ok(problems)
}

fn random_hex(bytes: usize) -> std::io::Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
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
