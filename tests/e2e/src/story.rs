//! One end-to-end "cluster" per story, on the real control plane of the test binary
//! ([`ControlPlane::shared`]: etcd, kube-apiserver and kube-controller-manager):
//! - a namespace of its own, where the test creates the Router, the KnowledgeBase and the
//!   AdapterPatches as a user would (the admin's client);
//! - the real `switchboard-operator` binary, authenticated as the chart's ServiceAccount under the
//!   chart's RBAC (a request the chart does not grant fails), watching the story's namespace, with
//!   its leader Lease in `switchboard-system` under a name of the story's own;
//! - the stories' node ([`crate::node`]), which runs every pod the operator's objects call for:
//!   the KnowledgeBase's index-build Job (the sample KnowledgeBase, `examples/kb`, is indexed by
//!   it), the Router's runtime Deployment, the AdapterPatches' evaluation Jobs;
//! - a real Prometheus scraping the operator and the runtime;
//! - adapter artifacts.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use switchboard_crds::knowledge_base::SourceKind;
use switchboard_crds::{AdapterPatch, KnowledgeBase, Router, Validate};
use switchboard_testkit::controlplane::{ControlPlane, OPERATOR_NAMESPACE};
use switchboard_testkit::process::{
    Process, cargo_bin, free_addr, http_request_as, workspace_root,
};
use switchboard_testkit::prometheus::{Prometheus, Target};

use crate::node::{Image, NodeAgent, NodeConfig};

/// The Router's name.
pub const ROUTER: &str = "helpdesk";
/// The AdapterPatch's name and lineage.
pub const LINEAGE: &str = "billing";
/// The sample KnowledgeBase (examples/kb).
pub const KNOWLEDGE_BASE: &str = "ledgerly-support";
/// The small model, as a Router names it (resolved under `--models` by the runtime).
pub const SMALL_MODEL: &str = "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
/// The runtime image the operator puts in its pods (`--runtime-image`); the node runs it as the
/// workspace's `switchboard-runtime` ([`runtime_image`]).
pub const RUNTIME_IMAGE: &str = "switchboard-runtime:e2e";

/// Polls `check` every 500 ms until it yields a value, or fails with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn sha256_hex(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("{}: {e}", to.display()));
    for entry in std::fs::read_dir(from)
        .unwrap_or_else(|e| panic!("{}: {e}", from.display()))
        .flatten()
    {
        let target = to.join(entry.file_name());
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target)
                .unwrap_or_else(|e| panic!("{}: {e}", target.display()));
        }
    }
}

/// An adapter artifact on disk: a PEFT directory and the digest of its weights.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// The directory.
    pub dir: PathBuf,
    /// `sha256:<hex>` of `adapter_model.safetensors`.
    pub sha256: String,
}

impl Artifact {
    /// `file://` URI of the directory.
    pub fn uri(&self) -> String {
        format!("file://{}", self.dir.display())
    }
}

/// Copies the SmolLM2 q/v LoRA fixture into `dir`; with `perturb`, flips the lowest bit of the
/// last weight's least significant byte, giving a new version with a different digest and the
/// same architecture (what retraining a hot-fix produces, as far as the platform can tell).
pub fn lora_artifact(dir: &Path, perturb: bool) -> Artifact {
    copy_dir(
        &workspace_root().join("runtime/model/tests/fixtures/lora/qv"),
        dir,
    );
    let weights = dir.join("adapter_model.safetensors");
    if perturb {
        let mut bytes =
            std::fs::read(&weights).unwrap_or_else(|e| panic!("{}: {e}", weights.display()));
        let at = bytes.len() - 4;
        bytes[at] ^= 1;
        std::fs::write(&weights, bytes).unwrap_or_else(|e| panic!("{}: {e}", weights.display()));
    }
    Artifact {
        dir: dir.to_path_buf(),
        sha256: format!("sha256:{}", sha256_hex(&weights)),
    }
}

/// The follow-up (`settleAfter`) of the stories' escalation guardrail.
pub const SETTLE_AFTER: &str = "5s";

/// Rollout settings of a story's AdapterPatch.
#[derive(Debug, Clone)]
pub struct RolloutPlan {
    /// Canary steps: (weight %, duration).
    pub steps: Vec<(u32, &'static str)>,
    /// Escalation-rate guardrail: minimum samples per arm.
    pub min_samples: u32,
}

/// The AdapterPatch of the `billing` lineage at `version`.
pub fn adapter_patch(version: &str, artifact: &Artifact, plan: &RolloutPlan) -> AdapterPatch {
    let steps: Vec<Value> = plan
        .steps
        .iter()
        .map(|(weight, duration)| json!({"weight": weight, "duration": duration}))
        .collect();
    let patch: AdapterPatch = serde_json::from_value(json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "AdapterPatch",
        "metadata": {"name": LINEAGE, "labels": {"switchboard.dev/router": ROUTER}},
        "spec": {
            "lineage": LINEAGE,
            "baseModel": SMALL_MODEL,
            "version": version,
            "artifact": {"uri": artifact.uri(), "sha256": artifact.sha256},
            "lora": {"rank": 4, "alpha": 8, "targetModules": ["q_proj", "v_proj"]},
            "domain": {
                "description": "Refunds, invoices, billing, charges and payments.",
                "exampleQueries": ["How do I get a refund?", "When is my invoice sent?", "Why was my card charged twice?"],
            },
            "rollout": {"shadow": {"duration": "0s"}, "canary": {"steps": steps}, "postPromotionWatch": "0s"},
            "guardrails": [{
                // The helpdesk reports each outcome right after the answer: a 5-second follow-up
                // sees all of them (a real helpdesk's escalations take the default hour or more).
                "metric": "escalationRate", "maxRelativeIncrease": "5%", "window": "1h",
                "settleAfter": SETTLE_AFTER, "minSamples": plan.min_samples, "confidence": "95%",
            }],
            "rollbackWindow": "24h",
        },
    }))
    .unwrap_or_else(|e| panic!("the story's AdapterPatch does not deserialize: {e}"));
    patch
        .spec
        .validate()
        .unwrap_or_else(|e| panic!("the story's AdapterPatch would not pass admission: {e}"));
    patch
}

/// The story's Router: everything to the small model, short answers.
pub fn router() -> Router {
    let router: Router = serde_json::from_value(json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "Router",
        "metadata": {"name": ROUTER},
        "spec": {
            "knowledgeBaseRef": {"name": KNOWLEDGE_BASE},
            "smallModel": {
                "model": SMALL_MODEL,
                "adapterSelector": {"matchLabels": {"switchboard.dev/router": ROUTER}},
                "maxActiveAdapters": 4,
            },
            // Never used: the difficulty threshold sends every query to the small model.
            "largeModel": {"endpoint": {"url": "http://127.0.0.1:9/v1", "model": "unused", "timeout": "5s"}, "maxQueueDepth": 1},
            "difficulty": {"threshold": 0.99},
            "adapterSelection": {"topK": 1, "minSimilarity": 0.05},
            "queryRewrite": {"policy": "Never"},
            "exploration": {"share": "0%"},
            "generation": {"maxNewTokens": 6},
            "replicas": 1,
        },
    }))
    .unwrap_or_else(|e| panic!("the story's Router does not deserialize: {e}"));
    router
        .spec
        .validate()
        .unwrap_or_else(|e| panic!("the story's Router would not pass admission: {e}"));
    router
}

/// Work folder of a story: kept when the story fails (logs), removed when it passes.
#[derive(Debug)]
pub struct WorkDir(PathBuf);

impl WorkDir {
    /// `<target>/debug/e2e/<story>-<pid>`, empty.
    pub fn new(story: &str) -> Self {
        let dir = switchboard_testkit::process::profile_dir()
            .join("e2e")
            .join(format!("{story}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        Self(dir)
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("story files kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The runtime image as this machine has it (Dockerfile.runtime): `switchboard-runtime` as the
/// entrypoint, `/opt/switchboard` as the working directory with the models at `.cache/models`
/// (where the runtime looks by default); and `documents`, the sample KnowledgeBase's source
/// folders at the image paths its volume sources name (an image that ships its documents: the
/// index-build Job reads them with `--volume-root /`). One compute thread per process: the
/// operator, Prometheus, the runtime and a Job share two cores.
pub fn runtime_image(
    runtime_bin: PathBuf,
    models: PathBuf,
    documents: Vec<(String, PathBuf)>,
) -> Image {
    Image {
        entrypoint: runtime_bin,
        working_dir: "/opt/switchboard".to_owned(),
        env: vec![
            ("RUST_LOG".to_owned(), "warn".to_owned()),
            ("SWITCHBOARD_THREADS".to_owned(), "1".to_owned()),
        ],
        files: std::iter::once(("/opt/switchboard/.cache/models".to_owned(), models))
            .chain(documents)
            .collect(),
    }
}

/// A running story cluster. Field order is drop order: processes go before the work folder.
pub struct Story {
    /// The operator process (None while "crashed").
    pub operator: Option<Process>,
    /// The node running the story's pods.
    pub node: NodeAgent,
    /// Prometheus.
    pub prometheus: Prometheus,
    /// The control plane (shared by the stories of a test binary).
    pub plane: &'static ControlPlane,
    /// The story's namespace.
    pub namespace: String,
    /// The admin's client (what the test does, a user would do with kubectl).
    pub client: Client,
    operator_bin: PathBuf,
    operator_kubeconfig: PathBuf,
    operator_metrics: SocketAddr,
    /// Work folder.
    pub work: WorkDir,
    /// Held for the story's life: stories run one at a time (each loads two models and runs
    /// four processes; side by side on a small machine they starve each other's traffic).
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

/// One story at a time per test binary.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Checks the story's prerequisites: models (hack/setup.sh models), Prometheus (tools) and the
/// control plane (controlplane).
pub fn prerequisites() -> Result<(), String> {
    let root = workspace_root();
    for needed in [
        ".cache/models/all-MiniLM-L6-v2/model.safetensors",
        ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf",
    ] {
        if !root.join(needed).exists() {
            return Err(format!("{needed} is missing: run hack/setup.sh models"));
        }
    }
    Prometheus::binary().ok_or("no prometheus binary: run hack/setup.sh tools")?;
    if !ControlPlane::available() {
        return Err("no control plane binaries: run hack/setup.sh controlplane".to_owned());
    }
    Ok(())
}

impl std::fmt::Debug for Story {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Story")
            .field("apiserver", &self.plane.url())
            .field("namespace", &self.namespace)
            .field("node", &self.node.node_name())
            .field("prometheus", &self.prometheus.url())
            .field("work", &self.work)
            .finish_non_exhaustive()
    }
}

impl Story {
    /// Starts everything in a new namespace and waits for the KnowledgeBase's first index
    /// generation (built by its index-build Job); the Router and KnowledgeBase exist, no
    /// AdapterPatch yet.
    pub async fn start(name: &str) -> Self {
        prerequisites().unwrap_or_else(|e| panic!("{e}"));
        let serial = SERIAL.lock().await;
        let work = WorkDir::new(name);
        let root = workspace_root();
        let (runtime_bin, operator_bin) = tokio::task::spawn_blocking(|| {
            (
                cargo_bin("switchboard-runtime", "switchboard-runtime"),
                cargo_bin("switchboard-operator", "switchboard-operator"),
            )
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let runtime_bin = runtime_bin.unwrap_or_else(|e| panic!("{e}"));
        let operator_bin = operator_bin.unwrap_or_else(|e| panic!("{e}"));

        // kubectl and helm run below: off the async workers.
        let (plane, namespace, operator_kubeconfig) = tokio::task::spawn_blocking(|| {
            let plane = ControlPlane::shared();
            // The chart's ServiceAccount and RBAC (and the CRDs); Secrets in the story's
            // namespace, as its owner grants them (docs/install.md).
            let namespace = plane.operator_namespace("story");
            (plane, namespace, plane.operator_kubeconfig())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let client = plane.admin_client(&namespace).await;

        let operator_metrics = free_addr();
        let prometheus = Prometheus::start(
            &work.path().join("prometheus"),
            &[Target::new("switchboard-operator", operator_metrics)],
        )
        .unwrap_or_else(|e| panic!("{e}"));

        // The sample KnowledgeBase, its documents where its volume sources name them.
        let kb_dir = work.path().join("kb");
        copy_dir(&root.join("examples/kb"), &kb_dir);
        let kb_text = std::fs::read_to_string(kb_dir.join("knowledgebase.yaml"))
            .unwrap_or_else(|e| panic!("{e}"));
        let kb: KnowledgeBase = serde_yaml::from_str(&kb_text).unwrap_or_else(|e| panic!("{e}"));
        let documents = kb
            .spec
            .sources
            .iter()
            .filter_map(|source| match source.kind() {
                Some(SourceKind::Volume(volume)) if volume.claim_name.is_none() => Some((
                    volume.path.clone(),
                    kb_dir.join(volume.path.trim_start_matches('/')),
                )),
                _ => None,
            })
            .collect();
        let node = NodeAgent::start(
            client.clone(),
            NodeConfig {
                node_name: format!("switchboard-e2e-{namespace}"),
                namespace: namespace.clone(),
                images: BTreeMap::from([(
                    RUNTIME_IMAGE.to_owned(),
                    runtime_image(runtime_bin, root.join(".cache/models"), documents),
                )]),
                pods_dir: work.path().join("pods"),
                claims_dir: work.path().join("claims"),
            },
        )
        .await
        .unwrap_or_else(|e| panic!("the node agent: {e}"));

        Api::<KnowledgeBase>::namespaced(client.clone(), &namespace)
            .create(&PostParams::default(), &kb)
            .await
            .unwrap_or_else(|e| panic!("create KnowledgeBase: {e}"));
        Api::<Router>::namespaced(client.clone(), &namespace)
            .create(&PostParams::default(), &router())
            .await
            .unwrap_or_else(|e| panic!("create Router: {e}"));

        let mut story = Self {
            operator: None,
            node,
            prometheus,
            plane,
            namespace,
            client,
            operator_bin,
            operator_kubeconfig,
            operator_metrics,
            work,
            _serial: serial,
        };
        tokio::task::block_in_place(|| story.start_operator());
        story.wait_for_index().await;
        story
    }

    /// Starts (or restarts) the operator process.
    pub fn start_operator(&mut self) {
        let mut command = Command::new(&self.operator_bin);
        command
            .env("KUBECONFIG", &self.operator_kubeconfig)
            .env("RUST_LOG", "info,kube=warn,hyper=warn")
            .arg("--prometheus-url")
            .arg(self.prometheus.url())
            .arg("--metrics-addr")
            .arg(self.operator_metrics.to_string())
            .args(["--namespace", &self.namespace])
            // The chart's leader-election Role is in its namespace; the stories of a test binary
            // share it, each with a Lease of its own.
            .args(["--leader-election-namespace", OPERATOR_NAMESPACE])
            .arg("--leader-election-lease")
            .arg(format!("switchboard-operator-{}", self.namespace))
            .args(["--runtime-image", RUNTIME_IMAGE])
            .args([
                "--lease-duration",
                "3s",
                "--analysis-interval",
                "2s",
                "--resync-interval",
                "30s",
            ])
            .arg("--artifact-cache")
            .arg(self.work.path().join("operator-artifacts"));
        let mut process =
            Process::spawn("operator", command, self.work.path()).unwrap_or_else(|e| panic!("{e}"));
        process
            .wait_for_http_ok(self.operator_metrics, "/healthz", Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e}"));
        self.operator = Some(process);
    }

    /// SIGKILLs the operator: no graceful shutdown, the Lease is not released.
    pub fn kill_operator(&mut self) {
        if let Some(mut process) = self.operator.take() {
            process.kill();
        }
    }

    /// Waits for the KnowledgeBase's first index generation: the operator's index-build Job ran
    /// on the node, the Job controller completed it, the operator read its report.
    async fn wait_for_index(&self) {
        let kbs: Api<KnowledgeBase> = Api::namespaced(self.client.clone(), &self.namespace);
        wait_for(
            "the KnowledgeBase's first index generation",
            Duration::from_secs(300),
            || {
                let kbs = kbs.clone();
                async move {
                    self.assert_alive();
                    let kb = kbs.get(KNOWLEDGE_BASE).await.ok()?;
                    kb.status?.index_generation.filter(|g| *g >= 1)
                }
            },
        )
        .await;
    }

    /// Typed API of AdapterPatches.
    pub fn adapter_patches(&self) -> Api<AdapterPatch> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Waits until the Router's runtime Deployment is available (its pods' readiness, as the
    /// Deployment controller counts it) and returns a ready runtime pod's HTTP address, which it
    /// registers with Prometheus.
    pub async fn runtime(&self) -> SocketAddr {
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), &self.namespace);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        // The Deployment's selector.
        let selector = format!(
            "app.kubernetes.io/name=switchboard-runtime,app.kubernetes.io/instance={ROUTER}"
        );
        let (pod, addr) = wait_for(
            "the runtime Deployment to be available",
            Duration::from_secs(300),
            || {
                let (deployments, pods, selector) =
                    (deployments.clone(), pods.clone(), selector.clone());
                async move {
                    self.assert_alive();
                    let deployment = deployments
                        .get_opt(&format!("{ROUTER}-runtime"))
                        .await
                        .ok()??;
                    let available = deployment.status?.available_replicas.unwrap_or(0);
                    if available < 1 {
                        return None;
                    }
                    let listed = pods
                        .list(&ListParams::default().labels(&selector))
                        .await
                        .ok()?;
                    listed.items.iter().filter(|p| is_ready(p)).find_map(|p| {
                        let name = p.name_any();
                        self.node.port(&name, "http").map(|addr| (name, addr))
                    })
                }
            },
        )
        .await;
        self.prometheus
            .set_targets(&[
                Target::new("switchboard-operator", self.operator_metrics),
                Target::new("switchboard-runtime", addr).label("pod", &pod),
            ])
            .unwrap_or_else(|e| panic!("{e}"));
        addr
    }

    /// Fails the story at once when the node cannot run its pods (a runtime that exited, with
    /// its log; a pod it cannot run; a request the API server refused), or when the chart's RBAC
    /// refused the operator a request (the API server's 403 says `... is forbidden: User
    /// "system:serviceaccount:switchboard-system:switchboard-operator" cannot ...`, and the
    /// operator logs every failed request).
    pub fn assert_alive(&self) {
        let failures = self.node.failures();
        assert!(failures.is_empty(), "node: {}", failures.join("\n"));
        let log =
            std::fs::read_to_string(self.work.path().join("operator.log")).unwrap_or_default();
        let refused: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(" is forbidden: "))
            .collect();
        assert!(
            refused.is_empty(),
            "the chart's RBAC refused the operator:\n{}",
            refused.join("\n")
        );
    }

    /// A ready runtime pod's admin API address and the Router's admin token (from the
    /// `<router>-runtime-token` Secret, as the operator reads it).
    pub async fn runtime_admin(&self) -> Option<(SocketAddr, String)> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let selector = format!(
            "app.kubernetes.io/name=switchboard-runtime,app.kubernetes.io/instance={ROUTER}"
        );
        let listed = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .ok()?;
        let addr = listed
            .items
            .iter()
            .filter(|p| is_ready(p))
            .find_map(|p| self.node.port(&p.name_any(), "admin"))?;
        let secrets: Api<k8s_openapi::api::core::v1::Secret> =
            Api::namespaced(self.client.clone(), &self.namespace);
        let secret = secrets
            .get_opt(&format!("{ROUTER}-runtime-token"))
            .await
            .ok()??;
        let token = secret.data?.get("admin-token")?.0.clone();
        Some((addr, String::from_utf8(token).ok()?.trim().to_owned()))
    }

    /// The runtime's `GET /v1/config` (admin API).
    pub fn runtime_config(admin: SocketAddr, token: &str) -> Value {
        let (status, body) = http_request_as(admin, "GET", "/v1/config", None, Some(token))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(status, 200, "GET /v1/config: {body}");
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("/v1/config is not JSON ({e}): {body}"))
    }

    /// The AdapterPatch's status as JSON (Null when none yet).
    pub async fn patch_status(&self) -> Value {
        match self.adapter_patches().get_opt(LINEAGE).await {
            Ok(Some(patch)) => serde_json::to_value(&patch.status).unwrap_or(Value::Null),
            Ok(None) => Value::Null,
            Err(e) => panic!("get AdapterPatch: {e}"),
        }
    }

    /// Waits until the AdapterPatch's status satisfies `accept`.
    pub async fn wait_for_status(
        &self,
        what: &str,
        timeout: Duration,
        accept: impl Fn(&Value) -> bool,
    ) -> Value {
        let accept = &accept;
        wait_for(what, timeout, || async move {
            self.assert_alive();
            let status = self.patch_status().await;
            accept(&status).then_some(status)
        })
        .await
    }

    /// Events (events.k8s.io/v1) about the AdapterPatch, oldest first.
    pub async fn events(&self) -> Vec<Event> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.namespace);
        let mut items: Vec<Event> = events
            .list(&ListParams::default())
            .await
            .unwrap_or_else(|e| panic!("list Events: {e}"))
            .items
            .into_iter()
            .filter(|e| {
                e.regarding.as_ref().is_some_and(|r| {
                    r.kind.as_deref() == Some("AdapterPatch") && r.name.as_deref() == Some(LINEAGE)
                })
            })
            .collect();
        items.sort_by(|a, b| {
            a.metadata
                .creation_timestamp
                .cmp(&b.metadata.creation_timestamp)
        });
        items
    }

    /// Waits until the runtime serves exactly these adapter versions of the lineage
    /// (`(version, role)`, all loaded), from `GET /v1/config`.
    pub async fn wait_for_runtime_adapters(
        &self,
        _runtime: SocketAddr,
        expected: &[(&str, &str)],
    ) -> Value {
        let what = format!("the runtime to serve {expected:?}");
        wait_for(&what, Duration::from_secs(120), || async move {
            self.assert_alive();
            let (admin, token) = self.runtime_admin().await?;
            let config = tokio::task::spawn_blocking(move || Self::runtime_config(admin, &token))
                .await
                .ok()?;
            let mut served: Vec<(String, String, bool)> = config["adapters"]
                .as_array()?
                .iter()
                .filter(|a| a["lineage"] == LINEAGE)
                .map(|a| {
                    (
                        a["version"].as_str().unwrap_or("").to_owned(),
                        a["role"].as_str().unwrap_or("").to_lowercase(),
                        a["loaded"].as_bool().unwrap_or(false),
                    )
                })
                .collect();
            served.sort();
            let mut want: Vec<(String, String, bool)> = expected
                .iter()
                .map(|(v, r)| ((*v).to_owned(), r.to_lowercase(), true))
                .collect();
            want.sort();
            (served == want).then_some(config)
        })
        .await
    }
}

/// Whether a pod is Ready (its condition) and not being deleted.
fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
