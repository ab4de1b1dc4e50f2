//! Tier 4: checks against a real cluster prepared by `hack/kind-e2e.sh` (chart installed,
//! examples/scenario.yaml applied). Runs only when `SWITCHBOARD_E2E_KUBECONFIG` names a
//! kubeconfig; otherwise it prints "skipped: no cluster" — a skip, not a pass: `cargo test`
//! cannot mark a test skipped at run time, so the line is the record (docs/testing.md).
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::ListParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, ResourceExt};
use switchboard_crds::runtime_config::RuntimeConfig;
use switchboard_crds::{AdapterPatch, KnowledgeBase, Router};

async fn cluster() -> Option<(Client, String)> {
    let path = std::env::var_os("SWITCHBOARD_E2E_KUBECONFIG")?;
    let namespace = std::env::var("SWITCHBOARD_E2E_NAMESPACE").unwrap_or_else(|_| "support".into());
    let kubeconfig = Kubeconfig::read_from(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    Some((Client::try_from(config).unwrap(), namespace))
}

fn condition_true(status: &serde_json::Value, kind: &str) -> bool {
    status["conditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["type"] == kind && c["status"] == "True"))
}

#[tokio::test]
async fn scenario_is_served_on_a_real_cluster() {
    let Some((client, namespace)) = cluster().await else {
        println!("skipped: no cluster (set SWITCHBOARD_E2E_KUBECONFIG, e.g. via hack/kind-e2e.sh)");
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(600);

    // Every KnowledgeBase built and Ready; every Router Ready with its runtime available.
    let kbs: Api<KnowledgeBase> = Api::namespaced(client.clone(), &namespace);
    let routers: Api<Router> = Api::namespaced(client.clone(), &namespace);
    loop {
        let kb_list = kbs.list(&ListParams::default()).await.unwrap().items;
        let router_list = routers.list(&ListParams::default()).await.unwrap().items;
        let ready = !kb_list.is_empty()
            && !router_list.is_empty()
            && kb_list.iter().all(|kb| {
                let status = serde_json::to_value(&kb.status).unwrap();
                condition_true(&status, "Ready")
                    && status["indexGeneration"].as_i64().unwrap_or(0) >= 1
            })
            && router_list
                .iter()
                .all(|r| condition_true(&serde_json::to_value(&r.status).unwrap(), "Ready"));
        if ready {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "KnowledgeBases/Routers not Ready within 10 minutes"
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
    }

    for router in routers.list(&ListParams::default()).await.unwrap().items {
        let name = format!("{}-runtime", router.name_any());
        let deployment = Api::<Deployment>::namespaced(client.clone(), &namespace)
            .get(&name)
            .await
            .unwrap();
        let available = deployment
            .status
            .as_ref()
            .and_then(|s| s.available_replicas)
            .unwrap_or(0);
        assert!(available >= 1, "{name}: no available replica");

        // The ConfigMap holds a RuntimeConfig the runtime accepts, naming this Router.
        let config_map = Api::<ConfigMap>::namespaced(client.clone(), &namespace)
            .get(&name)
            .await
            .unwrap();
        let text = config_map.data.unwrap()["runtime-config.json"].clone();
        let config = RuntimeConfig::from_json(text.as_bytes()).unwrap();
        assert_eq!(config.router.name, router.name_any());

        // The adapters it serves are exactly the selected AdapterPatches' stable versions
        // (and at most one candidate each).
        let patches: Api<AdapterPatch> = Api::namespaced(client.clone(), &namespace);
        for patch in patches.list(&ListParams::default()).await.unwrap().items {
            let status = serde_json::to_value(&patch.status).unwrap();
            if let Some(stable) = status["stableVersion"].as_str() {
                let served = config
                    .adapters
                    .iter()
                    .any(|a| a.lineage == patch.spec.lineage && a.version == stable);
                let selected = router
                    .spec
                    .small_model
                    .adapter_selector
                    .as_ref()
                    .and_then(|s| s.match_labels.as_ref())
                    .is_some_and(|labels| {
                        labels.iter().all(|(k, v)| patch.labels().get(k) == Some(v))
                    });
                assert_eq!(
                    served,
                    selected,
                    "{}: stable {stable} served={served}",
                    patch.name_any()
                );
            }
        }
    }
}
