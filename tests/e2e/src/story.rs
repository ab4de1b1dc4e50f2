//! One end-to-end "cluster" per story: the stand-in API server, the real operator binary, the
//! test's kubelet running real runtime processes, a real Prometheus scraping them, the sample
//! KnowledgeBase's index, and adapter artifacts.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use switchboard_crds::{AdapterPatch, KnowledgeBase, Router, Validate};
use switchboard_testkit::apiserver::ApiServer;
use switchboard_testkit::process::{Process, cargo_bin, free_addr, http_request, workspace_root};
use switchboard_testkit::prometheus::{Prometheus, Target};

use crate::kubelet::{Kubelet, KubeletConfig};

/// Namespace of every story.
pub const NAMESPACE: &str = "support";
/// The Router's name.
pub const ROUTER: &str = "helpdesk";
/// The AdapterPatch's name and lineage.
pub const LINEAGE: &str = "billing";
/// The sample KnowledgeBase (examples/kb).
pub const KNOWLEDGE_BASE: &str = "ledgerly-support";
/// The small model, as a Router names it (resolved under `--models` by the runtime).
pub const SMALL_MODEL: &str = "/models/SmolLM2-135M-Instruct.Q4_1.gguf";

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
        "metadata": {"name": LINEAGE, "namespace": NAMESPACE, "labels": {"switchboard.dev/router": ROUTER}},
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
                "metric": "escalationRate", "maxRelativeIncrease": "5%", "window": "1h",
                "minSamples": plan.min_samples, "confidence": "95%",
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
        "metadata": {"name": ROUTER, "namespace": NAMESPACE},
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
    fn new(story: &str) -> Self {
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

/// A running story cluster. Field order is drop order: processes go before the work folder.
pub struct Story {
    /// The operator process (None while "crashed").
    pub operator: Option<Process>,
    /// Runtime pods.
    pub kubelet: Kubelet,
    /// Prometheus.
    pub prometheus: Prometheus,
    /// The stand-in API server.
    pub api: ApiServer,
    /// A client for it.
    pub client: Client,
    operator_bin: PathBuf,
    operator_metrics: SocketAddr,
    /// Work folder.
    pub work: WorkDir,
    /// Held for the story's life: stories run one at a time (each loads two models and runs
    /// four processes; side by side on a small machine they starve each other's traffic).
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

/// One story at a time per test binary.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Checks the story's prerequisites: models (hack/setup.sh models) and Prometheus (tools).
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
    Ok(())
}

impl std::fmt::Debug for Story {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Story")
            .field("api", &self.api.url())
            .field("prometheus", &self.prometheus.url())
            .field("work", &self.work)
            .finish_non_exhaustive()
    }
}

impl Story {
    /// Builds the binaries, the KnowledgeBase's first index generation, and starts everything;
    /// the Router and KnowledgeBase exist, no AdapterPatch yet.
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

        // The KnowledgeBase's generation 1, as its first index build left it.
        let kb_dir = work.path().join("kb");
        copy_dir(&root.join("examples/kb"), &kb_dir);
        let data = work.path().join("data");
        let output = Command::new(&runtime_bin)
            .current_dir(&root)
            .arg("index")
            .arg("--manifests")
            .arg(kb_dir.join("knowledgebase.yaml"))
            .arg("--data")
            .arg(&data)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap_or_else(|e| panic!("switchboard-runtime index: {e}"));
        assert!(
            output.status.success(),
            "switchboard-runtime index failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );

        let api = ApiServer::start().unwrap_or_else(|e| panic!("stand-in API server: {e}"));
        let kubeconfig = work.path().join("kubeconfig");
        api.write_kubeconfig(&kubeconfig)
            .unwrap_or_else(|e| panic!("kubeconfig: {e}"));
        let client = api.client();

        let operator_metrics = free_addr();
        let prometheus = Prometheus::start(
            &work.path().join("prometheus"),
            &[Target::new("switchboard-operator", operator_metrics)],
        )
        .unwrap_or_else(|e| panic!("{e}"));

        // The KnowledgeBase, with the status its first build would have left.
        let kb_text = std::fs::read_to_string(kb_dir.join("knowledgebase.yaml"))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut kb: KnowledgeBase =
            serde_yaml::from_str(&kb_text).unwrap_or_else(|e| panic!("{e}"));
        kb.metadata.namespace = Some(NAMESPACE.into());
        let kbs: Api<KnowledgeBase> = Api::namespaced(client.clone(), NAMESPACE);
        kbs.create(&PostParams::default(), &kb)
            .await
            .unwrap_or_else(|e| panic!("create KnowledgeBase: {e}"));
        let built =
            json!({"status": {"indexGeneration": 1, "lastBuildTime": "2026-01-01T00:00:00Z"}});
        kbs.patch_status(
            KNOWLEDGE_BASE,
            &PatchParams::default(),
            &Patch::Merge(&built),
        )
        .await
        .unwrap_or_else(|e| panic!("KnowledgeBase status: {e}"));
        let routers: Api<Router> = Api::namespaced(client.clone(), NAMESPACE);
        routers
            .create(&PostParams::default(), &router())
            .await
            .unwrap_or_else(|e| panic!("create Router: {e}"));

        let kubelet = Kubelet::start(
            client.clone(),
            KubeletConfig {
                namespace: NAMESPACE.into(),
                runtime_bin,
                work: work.path().to_path_buf(),
                data,
                models: root.join(".cache/models"),
                env: vec![
                    ("RUST_LOG".into(), "warn".into()),
                    ("SWITCHBOARD_THREADS".into(), "1".into()),
                ],
            },
        );
        let mut story = Self {
            operator: None,
            kubelet,
            prometheus,
            api,
            client,
            operator_bin,
            operator_metrics,
            work,
            _serial: serial,
        };
        story.start_operator();
        story
    }

    /// Starts (or restarts) the operator process.
    pub fn start_operator(&mut self) {
        let mut command = Command::new(&self.operator_bin);
        command
            .env("KUBECONFIG", self.work.path().join("kubeconfig"))
            .env("RUST_LOG", "info,kube=warn,hyper=warn")
            .arg("--prometheus-url")
            .arg(self.prometheus.url())
            .arg("--metrics-addr")
            .arg(self.operator_metrics.to_string())
            .args([
                "--namespace",
                NAMESPACE,
                "--leader-election-namespace",
                NAMESPACE,
            ])
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

    /// Typed API of AdapterPatches.
    pub fn adapter_patches(&self) -> Api<AdapterPatch> {
        Api::namespaced(self.client.clone(), NAMESPACE)
    }

    /// Waits for the Router's runtime pod, and registers it with Prometheus.
    pub async fn runtime(&self) -> SocketAddr {
        let addr = wait_for(
            "the runtime pod to be ready",
            Duration::from_secs(300),
            || async move {
                self.assert_alive();
                self.kubelet.runtime_http(ROUTER)
            },
        )
        .await;
        self.prometheus
            .set_targets(&[
                Target::new("switchboard-operator", self.operator_metrics),
                Target::new("switchboard-runtime", addr).label("pod", "helpdesk-runtime-0"),
            ])
            .unwrap_or_else(|e| panic!("{e}"));
        addr
    }

    /// Fails the story at once when the operator died or the kubelet cannot run pods.
    pub fn assert_alive(&self) {
        let errors = self.kubelet.errors();
        assert!(
            errors.iter().all(|e| !e.contains("exited")),
            "kubelet: {}",
            errors.join("\n")
        );
    }

    /// The runtime's `GET /v1/config`.
    pub fn runtime_config(addr: SocketAddr) -> Value {
        let (status, body) =
            http_request(addr, "GET", "/v1/config", None).unwrap_or_else(|e| panic!("{e}"));
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
        let events: Api<Event> = Api::namespaced(self.client.clone(), NAMESPACE);
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
        runtime: SocketAddr,
        expected: &[(&str, &str)],
    ) -> Value {
        let what = format!("the runtime to serve {expected:?}");
        wait_for(&what, Duration::from_secs(120), || async move {
            self.assert_alive();
            let config = tokio::task::spawn_blocking(move || Self::runtime_config(runtime))
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
