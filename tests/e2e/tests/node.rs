//! The stories' node agent on the real control plane, with a small Python program as the image:
//! the pods it runs are what kube-controller-manager's controllers act on, as with a kubelet —
//!
//! - a Deployment's pod is bound to the node, runs, passes its readiness probe and the
//!   Deployment controller counts it available; its ConfigMap volume follows the ConfigMap;
//! - a changed pod template rolls out: a new ReplicaSet's pod becomes ready, the old pod is
//!   stopped and deleted by the node, and the rollout completes;
//! - Jobs are completed and failed by the Job controller from their pods' status, which carries
//!   the exit code and the termination message (the message file, or the log's end with
//!   `FallbackToLogsOnError`);
//! - a pod naming an image the node does not have waits, saying why.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use switchboard_e2e::node::{Image, NodeAgent, NodeConfig, POD_IP};
use switchboard_e2e::story::{WorkDir, wait_for};
use switchboard_testkit::controlplane::ControlPlane;
use switchboard_testkit::process::http_request;

/// The image the test's pods name; the node runs it as the machine's Python.
const IMAGE: &str = "e2e/python:3";

/// An HTTP server on `argv[1]` (`host:port`) answering `/greeting` with the file `argv[2]`.
const SERVER: &str = r#"
import http.server, sys
host, port = sys.argv[1].rsplit(":", 1)
greeting = sys.argv[2]
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = open(greeting, "rb").read() if self.path == "/greeting" else b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer((host, int(port)), Handler).serve_forever()
"#;

/// The interpreter itself (not a shim: pods run with `PATH` alone).
fn python() -> PathBuf {
    let out = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .unwrap_or_else(|e| panic!("python3: {e}"));
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn object<T: k8s_openapi::serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).unwrap()
}

fn get(addr: std::net::SocketAddr, path: &str) -> Option<String> {
    match http_request(addr, "GET", path, None) {
        Ok((200, body)) => Some(body),
        _ => None,
    }
}

/// The state of the pod's only container.
fn terminated(pod: &Pod) -> Option<(i32, String)> {
    let state = pod.status.as_ref()?.container_statuses.as_ref()?[0]
        .state
        .as_ref()?
        .terminated
        .clone()?;
    Some((state.exit_code, state.message.unwrap_or_default()))
}

fn job_condition(job: &Job, type_: &str) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == type_ && c.status == "True"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_run_as_local_processes_and_the_controllers_see_them_as_a_kubelet_reports_them() {
    let (plane, namespace) = tokio::task::spawn_blocking(|| {
        let plane = ControlPlane::shared();
        (plane, plane.namespace("node"))
    })
    .await
    .unwrap();
    let client = plane.admin_client(&namespace).await;
    // Kept with the pods' logs when the test fails.
    let work = WorkDir::new("node");
    let node_name = format!("switchboard-e2e-{namespace}");
    let agent = NodeAgent::start(
        client.clone(),
        NodeConfig {
            node_name: node_name.clone(),
            namespace: namespace.clone(),
            images: BTreeMap::from([(
                IMAGE.to_owned(),
                Image {
                    entrypoint: python(),
                    working_dir: "/".to_owned(),
                    env: vec![],
                    files: vec![],
                },
            )]),
            pods_dir: work.path().join("pods"),
            claims_dir: work.path().join("claims"),
        },
    )
    .await
    .unwrap();

    // The node is registered Ready, and holds its Lease.
    let node = Api::<Node>::all(client.clone())
        .get(&node_name)
        .await
        .unwrap();
    let ready = node.status.and_then(|s| s.conditions).unwrap_or_default();
    assert!(
        ready
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True"),
        "{ready:?}"
    );
    let lease = Api::<Lease>::namespaced(client.clone(), "kube-node-lease")
        .get(&node_name)
        .await
        .unwrap();
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some(node_name.as_str())
    );

    // A Deployment: its pod runs, is probed ready, and the Deployment controller counts it.
    let maps: Api<ConfigMap> = Api::default_namespaced(client.clone());
    maps.create(
        &PostParams::default(),
        &object(json!({"metadata": {"name": "greeting"}, "data": {"greeting": "hello"}})),
    )
    .await
    .unwrap();
    let deployments: Api<Deployment> = Api::default_namespaced(client.clone());
    let deployment: Deployment = object(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    // No ServiceAccount token: the node projects no `projected` volumes, and
                    // the operator's pods carry none either.
                    "automountServiceAccountToken": false,
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{
                        "name": "web", "image": IMAGE,
                        "args": ["-c", SERVER, "0.0.0.0:8080", "/etc/web/greeting"],
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
                        "volumeMounts": [{"name": "greeting", "mountPath": "/etc/web"}],
                    }],
                    "volumes": [{"name": "greeting", "configMap": {"name": "greeting"}}],
                },
            },
        },
    }));
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let web_pod = |pods: Api<Pod>| async move {
        let listed = pods
            .list(&ListParams::default().labels("app=web"))
            .await
            .ok()?;
        let [pod] = listed.items.as_slice() else {
            return None;
        };
        Some(pod.clone())
    };
    let available = |generation: i64| {
        let deployments = deployments.clone();
        move || {
            let deployments = deployments.clone();
            async move {
                let d = deployments.get("web").await.ok()?;
                let status = d.status?;
                (status.observed_generation >= Some(generation)
                    && status.available_replicas == Some(1)
                    && status.updated_replicas == Some(1)
                    && status.replicas == Some(1))
                .then_some(())
            }
        }
    };
    wait_for(
        "the Deployment to be available",
        Duration::from_secs(60),
        available(1),
    )
    .await;
    let first = web_pod(pods.clone()).await.unwrap();
    let spec = first.spec.clone().unwrap();
    assert_eq!(spec.node_name.as_deref(), Some(node_name.as_str()));
    let status = first.status.clone().unwrap();
    assert_eq!(status.pod_ip.as_deref(), Some(POD_IP));
    assert_eq!(status.phase.as_deref(), Some("Running"));
    let addr = agent.port(&first.name_any(), "http").unwrap();
    assert_eq!(get(addr, "/greeting").as_deref(), Some("hello"));

    // The ConfigMap volume follows the ConfigMap.
    maps.patch(
        "greeting",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"greeting": "hello again"}})),
    )
    .await
    .unwrap();
    wait_for(
        "the new greeting in the pod",
        Duration::from_secs(30),
        || async move { (get(addr, "/greeting")? == "hello again").then_some(()) },
    )
    .await;

    // A new pod template rolls out: the new ReplicaSet's pod replaces the old one, which the
    // node stops and deletes.
    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"template": {"metadata": {"annotations": {"revision": "2"}}}}}),
            ),
        )
        .await
        .unwrap();
    wait_for(
        "the rollout to complete",
        Duration::from_secs(90),
        available(2),
    )
    .await;
    let second = wait_for(
        "the old pod to be gone",
        Duration::from_secs(60),
        || async {
            web_pod(pods.clone())
                .await
                .filter(|p| p.name_any() != first.name_any())
        },
    )
    .await;
    assert!(
        agent.port(&first.name_any(), "http").is_none(),
        "the node still runs the old pod"
    );
    assert!(get(addr, "/").is_none(), "the old process still answers");
    let addr = agent.port(&second.name_any(), "http").unwrap();
    assert_eq!(get(addr, "/greeting").as_deref(), Some("hello again"));

    // Jobs: the Job controller completes and fails them from their pods' status.
    let jobs: Api<Job> = Api::default_namespaced(client.clone());
    let job = |name: &str, args: serde_json::Value| -> Job {
        object(json!({
            "metadata": {"name": name},
            "spec": {
                "backoffLimit": 0,
                "template": {"spec": {
                    "automountServiceAccountToken": false,
                    "restartPolicy": "Never",
                    "containers": [{
                        "name": "main", "image": IMAGE, "args": args,
                        "terminationMessagePolicy": "FallbackToLogsOnError",
                    }],
                }},
            },
        }))
    };
    let report = "import sys; open(sys.argv[1], 'w').write('all good')";
    let fail = "import sys; print('something broke', flush=True); sys.exit(3)";
    for job in [
        job("succeeds", json!(["-c", report, "/dev/termination-log"])),
        job("fails", json!(["-c", fail])),
    ] {
        jobs.create(&PostParams::default(), &job).await.unwrap();
    }
    for (name, condition) in [("succeeds", "Complete"), ("fails", "Failed")] {
        let jobs = jobs.clone();
        wait_for(
            &format!("Job {name} to be {condition}"),
            Duration::from_secs(60),
            || {
                let jobs = jobs.clone();
                async move { job_condition(&jobs.get(name).await.ok()?, condition).then_some(()) }
            },
        )
        .await;
    }
    let job_pod = |name: &str| {
        let (pods, selector) = (pods.clone(), format!("job-name={name}"));
        async move {
            let listed = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .unwrap();
            listed.items.into_iter().next().unwrap()
        }
    };
    let succeeded = job_pod("succeeds").await;
    assert_eq!(
        succeeded.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded")
    );
    assert_eq!(terminated(&succeeded), Some((0, "all good".to_owned())));
    let failed = job_pod("fails").await;
    assert_eq!(
        failed.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Failed")
    );
    assert_eq!(terminated(&failed), Some((3, "something broke".to_owned())));

    // A pod the node cannot run waits, saying why.
    pods.create(
        &PostParams::default(),
        &object(json!({
            "metadata": {"name": "elsewhere"},
            "spec": {
                "automountServiceAccountToken": false,
                "containers": [{"name": "main", "image": "registry.example/none:1"}],
            },
        })),
    )
    .await
    .unwrap();
    let waiting = wait_for(
        "the pod to wait for its image",
        Duration::from_secs(30),
        || {
            let pods = pods.clone();
            async move {
                let pod = pods.get("elsewhere").await.ok()?;
                let state = pod.status?.container_statuses?.first()?.state.clone()?;
                state.waiting?.reason
            }
        },
    )
    .await;
    assert_eq!(waiting, "ErrImageNeverPull");
    let failures = agent.failures();
    assert!(
        failures.len() == 1 && failures[0].contains("registry.example/none:1"),
        "{failures:#?}"
    );

    // The processes go before their folders.
    drop(agent);
}
