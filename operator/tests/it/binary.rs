//! The `switchboard-operator` binary as a process against the real kube-apiserver, with the
//! kubeconfig of the chart's ServiceAccount (the chart's RBAC, nothing more): takes the leader
//! Lease in the release namespace, reconciles the namespace it watches, serves its endpoints, and
//! on SIGTERM stops and releases the Lease.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use k8s_openapi::api::{coordination::v1::Lease, core::v1::ConfigMap};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use switchboard_crds::{KnowledgeBase, Router};
use switchboard_operator::http_client::HttpClient;
use switchboard_testkit::controlplane::{ControlPlane, OPERATOR_NAMESPACE, Options};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_for<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_leads_reconciles_serves_metrics_and_releases_the_lease_on_sigterm() {
    let (plane, ns, kubeconfig) = tokio::task::spawn_blocking(|| {
        // This binary's control plane (the controller tests' options: one per binary).
        let plane = ControlPlane::shared_with(&Options::without_workload_controllers());
        let kubeconfig = plane.operator_kubeconfig();
        (plane, plane.operator_namespace("operator"), kubeconfig)
    })
    .await
    .unwrap();
    let lease_name = format!("operator-{ns}");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("operator.log")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard-operator"))
        .args([
            "--prometheus-url",
            "http://127.0.0.1:9",
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
            "--namespace",
            &ns,
            "--leader-election-namespace",
            OPERATOR_NAMESPACE,
            "--leader-election-lease",
            &lease_name,
            "--analysis-interval",
            "1s",
            "--lease-duration",
            "3s",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();

    let client = plane.admin_client(&ns).await;
    let http = HttpClient::new(Duration::from_secs(2));
    let base = format!("http://127.0.0.1:{port}");
    wait_for("/readyz", || async {
        matches!(
            http.get(&format!("{base}/readyz"), 1 << 16).await,
            Ok((200, _))
        )
        .then_some(())
    })
    .await;
    let (status, _) = http.get(&format!("{base}/healthz"), 1 << 16).await.unwrap();
    assert_eq!(status, 200);

    let kbs: Api<KnowledgeBase> = Api::default_namespaced(client.clone());
    kbs.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "KnowledgeBase",
            "metadata": {"name": "help"},
            "spec": {"sources": [{"name": "faq", "format": "Markdown", "inline": {"a.md": "# A"}}]},
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    kbs.patch_status(
        "help",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"indexGeneration": 1}})),
    )
    .await
    .unwrap();
    Api::<Router>::default_namespaced(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "switchboard.dev/v1alpha1", "kind": "Router",
                "metadata": {"name": "frontline"},
                "spec": {
                    "knowledgeBaseRef": {"name": "help"},
                    "smallModel": {"model": "/models/smollm2.gguf"},
                    "largeModel": {"local": {"model": "/models/big.gguf"}},
                },
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    wait_for("the Router's ConfigMap", || async {
        cms.get_opt("frontline-runtime").await.ok().flatten()
    })
    .await;

    let leases: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let lease = leases.get(&lease_name).await.unwrap();
    let holder = lease.spec.unwrap().holder_identity.unwrap();
    assert!(!holder.is_empty());
    let (_, body) = http.get(&format!("{base}/metrics"), 1 << 20).await.unwrap();
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("switchboard_operator_leader 1"), "{text}");
    assert!(
        text.contains("switchboard_operator_reconciles_total{controller=\"router\""),
        "{text}"
    );

    // SIGTERM: a clean exit that hands the Lease back.
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = std::fs::read_to_string(dir.path().join("operator.log")).unwrap();
    assert!(exit.success(), "exit {exit:?}; log:\n{log}");
    let lease = leases.get(&lease_name).await.unwrap();
    assert_eq!(lease.spec.unwrap().holder_identity, None, "log:\n{log}");
}
