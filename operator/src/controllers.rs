//! Runs the four controllers concurrently until shutdown.

use std::{future::Future, sync::Arc};

use futures::StreamExt;
use k8s_openapi::api::{
    apps::v1::Deployment,
    batch::v1::Job,
    core::v1::{ConfigMap, PersistentVolumeClaim, Service},
};
use kube::{
    Api, Client, Resource,
    runtime::{Controller, reflector::ObjectRef, watcher},
};
use serde::de::DeserializeOwned;
use switchboard_crds::{
    AdapterPatch, Experiment, KnowledgeBase, Router, knowledge_base::SourceKind,
};

use crate::{adapter_patch, context::Context, experiment, knowledge_base, router};

/// Label on every child the operator writes; owned-object watches select on it.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by=switchboard-operator";

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs every controller until `shutdown` resolves (each stops taking new work and finishes
/// the reconciles in flight).
pub async fn run<F>(ctx: Arc<Context>, namespace: Option<String>, shutdown: F)
where
    F: Future<Output = ()> + Send + Sync + Clone + 'static,
{
    let client = ctx.client.clone();
    let ns = namespace.as_deref();
    let all = watcher::Config::default();
    let owned = watcher::Config::default().labels(MANAGED_BY);

    // Router: children owned; KnowledgeBase, AdapterPatch and Experiment changes map to the
    // Routers that use them.
    let routers = Controller::new(api::<Router>(&client, ns), all.clone());
    let store = routers.store();
    let by_kb = store.clone();
    let by_adapter = store.clone();
    let by_experiment = store;
    let routers = routers
        .owns(api::<ConfigMap>(&client, ns), owned.clone())
        .owns(api::<Deployment>(&client, ns), owned.clone())
        .owns(api::<Service>(&client, ns), owned.clone())
        .watches(api::<KnowledgeBase>(&client, ns), all.clone(), move |kb| {
            by_kb
                .state()
                .into_iter()
                .filter(|r| {
                    r.metadata.namespace == kb.metadata.namespace
                        && Some(&r.spec.knowledge_base_ref.name) == kb.metadata.name.as_ref()
                })
                .map(|r| ObjectRef::from_obj(r.as_ref()))
                .collect::<Vec<_>>()
        })
        .watches(
            api::<AdapterPatch>(&client, ns),
            all.clone(),
            move |patch| {
                router::routers_selecting(&by_adapter.state(), &patch)
                    .into_iter()
                    .map(|r| ObjectRef::from_obj(r.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .watches(api::<Experiment>(&client, ns), all.clone(), move |x| {
            by_experiment
                .state()
                .into_iter()
                .filter(|r| {
                    r.metadata.namespace == x.metadata.namespace
                        && r.metadata.name.as_ref() == Some(&x.spec.router_ref.name)
                })
                .map(|r| ObjectRef::from_obj(r.as_ref()))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown.clone())
        .run(router::reconcile, router::error_policy, ctx.clone())
        .for_each(|r| log_result("router", r));

    // AdapterPatch: the verification Jobs of pvc:// artifacts are owned (a finished Job
    // reconciles its AdapterPatch at once).
    let adapters = Controller::new(api::<AdapterPatch>(&client, ns), all.clone())
        .owns(api::<Job>(&client, ns), owned.clone())
        .graceful_shutdown_on(shutdown.clone())
        .run(
            adapter_patch::reconcile,
            adapter_patch::error_policy,
            ctx.clone(),
        )
        .for_each(|r| log_result("adapterpatch", r));

    // KnowledgeBase: children owned; the ConfigMaps and claims its sources read (anyone's, not
    // only ours) map to the KnowledgeBases reading them, so an edited ConfigMap rebuilds and a
    // missing one that appears unblocks the build.
    let knowledge_bases = Controller::new(api::<KnowledgeBase>(&client, ns), all.clone());
    let by_config_map = knowledge_bases.store();
    let by_claim = by_config_map.clone();
    let knowledge_bases = knowledge_bases
        .owns(api::<Job>(&client, ns), owned.clone())
        .owns(api::<PersistentVolumeClaim>(&client, ns), owned.clone())
        .owns(api::<ConfigMap>(&client, ns), owned)
        .watches(api::<ConfigMap>(&client, ns), all.clone(), move |cm| {
            knowledge_base::knowledge_bases_reading(
                &by_config_map.state(),
                cm.metadata.namespace.as_deref(),
                |source| {
                    matches!(source, SourceKind::ConfigMap(r) if Some(&r.name) == cm.metadata.name.as_ref())
                },
            )
        })
        .watches(
            api::<PersistentVolumeClaim>(&client, ns),
            all.clone(),
            move |claim| {
                knowledge_base::knowledge_bases_reading(
                    &by_claim.state(),
                    claim.metadata.namespace.as_deref(),
                    |source| {
                        matches!(source, SourceKind::Volume(v) if v.claim_name.as_ref() == claim.metadata.name.as_ref())
                    },
                )
            },
        )
        .graceful_shutdown_on(shutdown.clone())
        .run(
            knowledge_base::reconcile,
            knowledge_base::error_policy,
            ctx.clone(),
        )
        .for_each(|r| log_result("knowledgebase", r));

    let experiments = Controller::new(api::<Experiment>(&client, ns), all)
        .graceful_shutdown_on(shutdown)
        .run(experiment::reconcile, experiment::error_policy, ctx)
        .for_each(|r| log_result("experiment", r));

    futures::join!(routers, adapters, knowledge_bases, experiments);
}

async fn log_result<K, E1, E2>(
    controller: &'static str,
    result: Result<
        (ObjectRef<K>, kube::runtime::controller::Action),
        kube::runtime::controller::Error<E1, E2>,
    >,
) where
    K: Resource,
    E1: std::error::Error,
    E2: std::error::Error,
{
    match result {
        Ok((obj, _)) => tracing::debug!(controller, object = %obj, "reconciled"),
        // Reconcile errors were logged (with their object) by the reconciler.
        Err(kube::runtime::controller::Error::ReconcilerFailed(..)) => {}
        Err(error) => tracing::warn!(controller, %error, "controller stream error"),
    }
}
