//! The stand-in API server, driven by kube-rs exactly as the operator drives a real one.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use switchboard_crds::AdapterPatch;
use switchboard_testkit::apiserver::ApiServer;

fn config_map(name: &str, labels: &[(&str, &str)], data: &[(&str, &str)]) -> ConfigMap {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "labels": labels.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        },
        "data": data.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
    }))
    .unwrap()
}

fn adapter_patch() -> AdapterPatch {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/adapterpatch.yaml"
    ))
    .unwrap();
    let mut patch: AdapterPatch = serde_yaml::from_str(&text).unwrap();
    patch.metadata.namespace = None;
    patch
}

fn api_error(result: Result<impl std::fmt::Debug, kube::Error>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.reason.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn crud_selectors_pagination_and_conflicts() {
    let server = ApiServer::start().unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "support");

    let created = api
        .create(
            &PostParams::default(),
            &config_map("a", &[("tier", "web")], &[("k", "1")]),
        )
        .await
        .unwrap();
    let uid = created.uid().unwrap();
    assert!(created.resource_version().is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    assert_eq!(created.namespace().as_deref(), Some("support"));
    for (name, tier) in [("b", "web"), ("c", "db"), ("d", "web")] {
        api.create(
            &PostParams::default(),
            &config_map(name, &[("tier", tier)], &[]),
        )
        .await
        .unwrap();
    }

    let again = api
        .create(&PostParams::default(), &config_map("a", &[], &[]))
        .await;
    assert_eq!(api_error(again), (409, "AlreadyExists".into()));
    let bad_name = api
        .create(&PostParams::default(), &config_map("Not_Valid", &[], &[]))
        .await;
    assert_eq!(api_error(bad_name), (422, "Invalid".into()));
    assert_eq!(
        api_error(api.get("missing").await),
        (404, "NotFound".into())
    );

    // Optimistic concurrency: a replace based on a stale version is refused.
    let mut first = api.get("a").await.unwrap();
    let mut stale = first.clone();
    first.data = Some([("k".to_string(), "2".to_string())].into());
    let updated = api
        .replace("a", &PostParams::default(), &first)
        .await
        .unwrap();
    assert_eq!(updated.uid().unwrap(), uid);
    assert_ne!(updated.resource_version(), created.resource_version());
    stale.data = Some([("k".to_string(), "3".to_string())].into());
    assert_eq!(
        api_error(api.replace("a", &PostParams::default(), &stale).await),
        (409, "Conflict".into())
    );

    let names = |list: kube::core::ObjectList<ConfigMap>| {
        list.items.iter().map(|c| c.name_any()).collect::<Vec<_>>()
    };
    let web = api
        .list(&ListParams::default().labels("tier=web"))
        .await
        .unwrap();
    assert_eq!(names(web), ["a", "b", "d"]);
    let not_web = api
        .list(&ListParams::default().labels("tier notin (web)"))
        .await
        .unwrap();
    assert_eq!(names(not_web), ["c"]);
    let by_name = api
        .list(&ListParams::default().fields("metadata.name=c"))
        .await
        .unwrap();
    assert_eq!(names(by_name), ["c"]);

    let page1 = api.list(&ListParams::default().limit(3)).await.unwrap();
    let token = page1.metadata.continue_.clone().unwrap();
    assert_eq!(names(page1), ["a", "b", "c"]);
    let page2 = api
        .list(&ListParams::default().limit(3).continue_token(&token))
        .await
        .unwrap();
    assert!(page2.metadata.continue_.as_deref().unwrap_or("").is_empty());
    assert_eq!(names(page2), ["d"]);

    // Other namespaces are separate; an all-namespaces list sees everything.
    let elsewhere: Api<ConfigMap> = Api::namespaced(server.client(), "other");
    elsewhere
        .create(&PostParams::default(), &config_map("a", &[], &[]))
        .await
        .unwrap();
    let all: Api<ConfigMap> = Api::all(server.client());
    assert_eq!(
        all.list(&ListParams::default()).await.unwrap().items.len(),
        5
    );

    api.delete("a", &DeleteParams::default()).await.unwrap();
    assert_eq!(api_error(api.get("a").await), (404, "NotFound".into()));
    assert!(elsewhere.get("a").await.is_ok());
}

#[tokio::test]
async fn server_side_apply_owns_fields_per_manager() {
    let server = ApiServer::start().unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let operator = PatchParams::apply("switchboard-operator").force();

    let first = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "labels": {"app": "x", "old": "y"}},
                       "data": {"keep": "1", "drop": "2"}});
    let created = api
        .patch("cfg", &operator, &Patch::Apply(&first))
        .await
        .unwrap();
    assert_eq!(created.data.as_ref().unwrap().len(), 2);

    // Someone else adds a field with a plain merge patch: applies don't remove what they never owned.
    api.patch(
        "cfg",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"manual": "3"}})),
    )
    .await
    .unwrap();

    let second = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "labels": {"app": "x"}},
                        "data": {"keep": "1"}});
    let applied = api
        .patch("cfg", &operator, &Patch::Apply(&second))
        .await
        .unwrap();
    let data = applied.data.unwrap();
    assert_eq!(
        data.keys().collect::<Vec<_>>(),
        ["keep", "manual"],
        "the field the operator stopped applying is gone"
    );
    assert_eq!(
        applied.metadata.labels.unwrap().keys().collect::<Vec<_>>(),
        ["app"]
    );

    // Re-applying the same configuration is a no-op: no new resource version.
    let again = api
        .patch("cfg", &operator, &Patch::Apply(&second))
        .await
        .unwrap();
    assert_eq!(again.resource_version(), applied.metadata.resource_version);

    // A second manager disagreeing on an owned field conflicts unless it forces.
    let rival = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"keep": "other"}});
    let conflict = api
        .patch("cfg", &PatchParams::apply("rival"), &Patch::Apply(&rival))
        .await;
    assert_eq!(api_error(conflict), (409, "Conflict".into()));
    let forced = api
        .patch(
            "cfg",
            &PatchParams::apply("rival").force(),
            &Patch::Apply(&rival),
        )
        .await
        .unwrap();
    assert_eq!(forced.data.unwrap()["keep"], "other");

    let no_manager = api
        .patch("cfg", &PatchParams::default(), &Patch::Apply(&rival))
        .await;
    assert_eq!(api_error(no_manager).0, 400);
}

#[tokio::test]
async fn status_subresource_and_generation() {
    let server = ApiServer::start().unwrap();
    let api: Api<AdapterPatch> = Api::namespaced(server.client(), "support");
    let mut patch = adapter_patch();
    patch.status = Some(serde_json::from_value(json!({"phase": "Promoted"})).unwrap());
    let created = api.create(&PostParams::default(), &patch).await.unwrap();
    assert!(created.status.is_none(), "status is ignored on create");
    assert_eq!(created.metadata.generation, Some(1));

    // The main endpoint ignores status; a spec change bumps generation.
    let spec_change = json!({"spec": {"version": "1.4.0"}, "status": {"phase": "Promoted"}});
    let changed = api
        .patch(
            "pricing",
            &PatchParams::default(),
            &Patch::Merge(&spec_change),
        )
        .await
        .unwrap();
    assert_eq!(changed.metadata.generation, Some(2));
    assert!(changed.status.is_none());
    assert_eq!(changed.spec.version.to_string(), "1.4.0");

    // /status changes only status and leaves generation alone.
    let status = json!({"apiVersion": "switchboard.dev/v1alpha1", "kind": "AdapterPatch",
                        "status": {"phase": "Canary", "observedGeneration": 2}, "spec": {"version": "9.9.9"}});
    let with_status = api
        .patch_status(
            "pricing",
            &PatchParams::apply("switchboard-operator").force(),
            &Patch::Apply(&status),
        )
        .await
        .unwrap();
    assert_eq!(with_status.metadata.generation, Some(2));
    assert_eq!(with_status.spec.version.to_string(), "1.4.0");
    let phase = serde_json::to_value(&with_status.status).unwrap()["phase"].clone();
    assert_eq!(phase, "Canary");
    let fetched = api.get_status("pricing").await.unwrap();
    assert_eq!(fetched.resource_version(), with_status.resource_version());

    let missing = api
        .patch_status(
            "absent",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {}})),
        )
        .await;
    assert_eq!(api_error(missing), (404, "NotFound".into()));
}

#[tokio::test]
async fn watcher_sees_changes_and_recovers_from_compaction() {
    let server = ApiServer::start().unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    api.create(
        &PostParams::default(),
        &config_map("before", &[("w", "1")], &[]),
    )
    .await
    .unwrap();

    let config = watcher::Config::default().labels("w=1").timeout(5);
    let mut objects = watcher(api.clone(), config).applied_objects().boxed();
    let first = tokio::time::timeout(Duration::from_secs(10), objects.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.name_any(), "before");

    api.create(
        &PostParams::default(),
        &config_map("ignored", &[("w", "2")], &[]),
    )
    .await
    .unwrap();
    api.create(
        &PostParams::default(),
        &config_map("after", &[("w", "1")], &[]),
    )
    .await
    .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), objects.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.name_any(), "after", "the selector filters the watch");

    // Raw watch from an old version after compaction: 410 Gone as a watch ERROR event.
    let old_version = first.resource_version().unwrap();
    server.compact();
    let mut raw = api
        .watch(&WatchParams::default(), &old_version)
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(Duration::from_secs(10), raw.try_next())
        .await
        .unwrap()
        .unwrap()
    {
        Some(WatchEvent::Error(e)) => assert_eq!(e.code, 410),
        other => panic!("expected 410 Gone, got {other:?}"),
    }

    // The watcher keeps working through the compaction (it re-lists when told its version is gone).
    api.patch(
        "before",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"x": "1"}})),
    )
    .await
    .unwrap();
    let modified = tokio::time::timeout(Duration::from_secs(10), objects.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(modified.name_any(), "before");
    assert_eq!(modified.data.unwrap()["x"], "1");

    // An object that stops matching the selector is deleted for the watcher.
    let mut raw = api
        .watch(
            &WatchParams::default().labels("w=1"),
            &server.resource_version().to_string(),
        )
        .await
        .unwrap()
        .boxed();
    api.patch(
        "after",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"w": "3"}}})),
    )
    .await
    .unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), raw.try_next())
            .await
            .unwrap()
            .unwrap()
        {
            Some(WatchEvent::Bookmark(_)) => continue,
            Some(WatchEvent::Deleted(cm)) => break assert_eq!(cm.name_any(), "after"),
            other => panic!("expected DELETED, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn bookmarks_arrive_when_asked_for() {
    let server = ApiServer::start().unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    api.create(&PostParams::default(), &config_map("x", &[], &[]))
        .await
        .unwrap();
    let rv = server.resource_version().to_string();
    let mut raw = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(Duration::from_secs(5), raw.try_next())
        .await
        .unwrap()
        .unwrap()
    {
        Some(WatchEvent::Bookmark(b)) => assert_eq!(b.metadata.resource_version, rv),
        other => panic!("expected a bookmark, got {other:?}"),
    }
}

#[tokio::test]
async fn deletes_cascade_to_owned_objects_and_wait_for_finalizers() {
    let server = ApiServer::start().unwrap();
    let client = server.client();
    let patches: Api<AdapterPatch> = Api::namespaced(client.clone(), "support");
    let owner = patches
        .create(&PostParams::default(), &adapter_patch())
        .await
        .unwrap();
    let owner_ref: OwnerReference = owner.controller_owner_ref(&()).unwrap();

    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "support");
    let mut owned = config_map("owned", &[], &[]);
    owned.metadata.owner_references = Some(vec![owner_ref.clone()]);
    maps.create(&PostParams::default(), &owned).await.unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "support");
    let deployment: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "owned", "ownerReferences": [owner_ref]},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}}}}
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    maps.create(&PostParams::default(), &config_map("unowned", &[], &[]))
        .await
        .unwrap();

    // A finalizer holds the owner (and so its children) until it is removed.
    patches
        .patch(
            "pricing",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["switchboard.dev/cleanup"]}})),
        )
        .await
        .unwrap();
    patches
        .delete("pricing", &DeleteParams::default())
        .await
        .unwrap();
    let marked = patches.get("pricing").await.unwrap();
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert!(maps.get("owned").await.is_ok());
    let re_added = patches
        .patch(
            "pricing",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["a", "b"]}})),
        )
        .await;
    assert_eq!(api_error(re_added).0, 422);

    patches
        .patch(
            "pricing",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    assert_eq!(api_error(patches.get("pricing").await).0, 404);
    assert_eq!(api_error(maps.get("owned").await).0, 404);
    assert_eq!(api_error(deployments.get("owned").await).0, 404);
    assert!(maps.get("unowned").await.is_ok());
}

#[tokio::test]
async fn json_patch_and_kubeconfig_for_processes() {
    let server = ApiServer::start().unwrap();
    let dir = std::env::temp_dir().join(format!("standin-kubeconfig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("kubeconfig");
    server.write_kubeconfig(&path).unwrap();
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    assert_eq!(config.default_namespace, "default");
    let client = kube::Client::try_from(config).unwrap();
    let api: Api<ConfigMap> = Api::default_namespaced(client);
    api.create(&PostParams::default(), &config_map("j", &[], &[("a", "1")]))
        .await
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/data/a", "value": "1"},
        {"op": "add", "path": "/data/b", "value": "2"}
    ]))
    .unwrap();
    let patched = api
        .patch("j", &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
        .unwrap();
    assert_eq!(patched.data.unwrap().len(), 2);
    assert_eq!(
        server.object("v1", "configmaps", "default", "j").unwrap()["data"]["b"],
        "2"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_plain_sync_test_can_use_it_too() {
    let server = ApiServer::start().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let api: Api<ConfigMap> = Api::default_namespaced(server.client());
        api.create(&PostParams::default(), &config_map("s", &[], &[]))
            .await
            .unwrap();
    });
    assert!(server.object("v1", "configmaps", "default", "s").is_some());
    assert_eq!(ConfigMap::kind(&()), "ConfigMap");
}
