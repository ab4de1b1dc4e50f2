//! A kube-rs `Controller` (with `.owns()`) runs unmodified against the stand-in: reconciles on
//! create and spec change, re-creates a deleted child from the owned-object watch, writes status
//! through server-side apply, and the child is garbage-collected with its owner.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use switchboard_crds::Router;
use switchboard_testkit::apiserver::ApiServer;

const MANAGER: &str = "test-controller";

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Error(#[from] kube::Error);

async fn reconcile(router: Arc<Router>, client: Arc<Client>) -> Result<Action, Error> {
    let namespace = router.namespace().unwrap();
    let name = format!("{}-cfg", router.name_any());
    let owner = router.controller_owner_ref(&()).unwrap();
    let child = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "ownerReferences": [owner]},
        "data": {"maxNewTokens": router.spec.generation.max_new_tokens.to_string()},
    });
    let params = PatchParams::apply(MANAGER).force();
    Api::<ConfigMap>::namespaced((*client).clone(), &namespace)
        .patch(&name, &params, &Patch::Apply(&child))
        .await?;
    let status = json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "Router",
        "status": {"observedGeneration": router.metadata.generation},
    });
    Api::<Router>::namespaced((*client).clone(), &namespace)
        .patch_status(&router.name_any(), &params, &Patch::Apply(&status))
        .await?;
    Ok(Action::await_change())
}

fn error_policy(_: Arc<Router>, _: &Error, _: Arc<Client>) -> Action {
    Action::requeue(Duration::from_millis(200))
}

fn router(max_new_tokens: i32) -> Router {
    serde_json::from_value(json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "Router",
        "metadata": {"name": "front"},
        "spec": {
            "knowledgeBaseRef": {"name": "kb"},
            "smallModel": {"model": "/models/small.gguf"},
            "largeModel": {"endpoint": {"url": "http://llm.example.com/v1", "model": "large"}},
            "generation": {"maxNewTokens": max_new_tokens},
        },
    }))
    .unwrap()
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_reconciles_owned_children_and_status() {
    let server = ApiServer::start().unwrap();
    let client = server.client();
    let routers: Api<Router> = Api::namespaced(client.clone(), "support");
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "support");
    let controller = Controller::new(routers.clone(), watcher::Config::default())
        .owns(maps.clone(), watcher::Config::default())
        .run(reconcile, error_policy, Arc::new(client.clone()))
        .for_each(|_| async {});
    let controller = tokio::spawn(controller);

    routers
        .create(&PostParams::default(), &router(64))
        .await
        .unwrap();
    let tokens = |n: &'static str| {
        let maps = maps.clone();
        move || {
            let maps = maps.clone();
            async move {
                maps.get_opt("front-cfg")
                    .await
                    .unwrap()
                    .and_then(|c| c.data)
                    .is_some_and(|d| d["maxNewTokens"] == n)
            }
        }
    };
    eventually("the child ConfigMap", tokens("64")).await;
    let observed = |generation: i64| {
        let routers = routers.clone();
        move || {
            let routers = routers.clone();
            async move {
                let status = routers.get("front").await.unwrap().status;
                serde_json::to_value(status).unwrap()["observedGeneration"] == generation
            }
        }
    };
    eventually("observedGeneration 1", observed(1)).await;

    // A spec change: the child follows and status observes the new generation.
    routers
        .patch(
            "front",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"generation": {"maxNewTokens": 32}}})),
        )
        .await
        .unwrap();
    eventually("the child to follow the spec", tokens("32")).await;
    eventually("observedGeneration 2", observed(2)).await;

    // Someone deletes the child: the owned-object watch triggers a reconcile that restores it.
    maps.delete("front-cfg", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the child to be re-created", tokens("32")).await;

    // Deleting the owner collects the child. The controller is stopped first: a reconcile of the
    // owner still in its cache could re-apply the child after the cascade, and the stand-in's
    // garbage collector only cascades at the owner's deletion (a real one also collects children
    // whose owner is already gone).
    controller.abort();
    let _ = controller.await;
    routers
        .delete("front", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the child to be garbage-collected", || {
        let maps = maps.clone();
        async move { maps.get_opt("front-cfg").await.unwrap().is_none() }
    })
    .await;
}
