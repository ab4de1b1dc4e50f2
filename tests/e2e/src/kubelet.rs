//! The test's kubelet: what a node would do for the runtime Deployments the operator writes into
//! the stand-in API server. For each Deployment labelled `app.kubernetes.io/name=switchboard-runtime`
//! it runs one real `switchboard-runtime` process with the container's arguments (cluster paths
//! mapped to local folders), projects the ConfigMap `<router>-runtime` into the
//! `--runtime-config` file whenever its content changes (write aside + rename, like a ConfigMap
//! volume's symlink swap) and the token Secret into `--token-key-file`, and reports the replica
//! as ready in the Deployment's status.
//!
//! It also runs the AdapterPatch evaluation Jobs (label
//! `app.kubernetes.io/name=switchboard-adapter-evaluation`): their ConfigMap volumes projected
//! into files, the container's paths mapped to local folders, the real `switchboard-runtime
//! eval` run to completion; then, as a node and the Job controller would, a Pod object with the
//! container's termination message and the Job's `Complete`/`Failed` condition.
//!
//! Not simulated: index-build Jobs (the stories pre-build the KnowledgeBase's generation), pod
//! objects of runtime Deployments, restarts of crashed processes (a crash fails the story, with
//! the runtime's log).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use switchboard_testkit::process::{Process, free_addr};

/// Label of runtime Deployments (the shared contract).
pub const RUNTIME_SELECTOR: &str = "app.kubernetes.io/name=switchboard-runtime";
/// Key of the RuntimeConfig in the ConfigMap.
pub const CONFIG_KEY: &str = "runtime-config.json";
/// Key of the token Secret.
pub const TOKEN_KEY: &str = "key";
const FIELD_MANAGER: &str = "e2e-kubelet";

/// Where the kubelet finds things on this machine.
#[derive(Debug, Clone)]
pub struct KubeletConfig {
    /// Namespace whose Deployments it runs.
    pub namespace: String,
    /// The runtime binary.
    pub runtime_bin: PathBuf,
    /// Folder for pods (config files, artifact caches, logs).
    pub work: PathBuf,
    /// The index data folder (`--data`: one subfolder per KnowledgeBase).
    pub data: PathBuf,
    /// Model folder (`--models`).
    pub models: PathBuf,
    /// Extra environment for runtime processes.
    pub env: Vec<(String, String)>,
}

/// A running runtime "pod".
#[derive(Debug)]
pub struct Pod {
    /// The Router it serves.
    pub router: String,
    /// HTTP address.
    pub http: SocketAddr,
    /// gRPC address.
    pub grpc: SocketAddr,
    /// The process.
    pub process: Process,
    /// Its `--runtime-config` file.
    pub config_file: PathBuf,
}

/// Shared view of the pods, for the test.
pub type Pods = Arc<Mutex<BTreeMap<String, Pod>>>;

/// The kubelet loop; stops (killing its pods) when dropped.
#[derive(Debug)]
pub struct Kubelet {
    pods: Pods,
    task: tokio::task::JoinHandle<()>,
    errors: Arc<Mutex<Vec<String>>>,
}

/// Label of evaluation Jobs (the shared contract).
pub const EVALUATION_SELECTOR: &str = "app.kubernetes.io/name=switchboard-adapter-evaluation";

/// Where a pod's volumes and ports are on this machine.
#[derive(Debug, Clone)]
pub struct LocalPod {
    /// `--runtime-config` (the projected ConfigMap).
    pub config_file: PathBuf,
    /// `--data`.
    pub data: PathBuf,
    /// `--artifacts`.
    pub artifacts: PathBuf,
    /// `--token-key-file` (the projected Secret).
    pub token_file: PathBuf,
    /// `--models`.
    pub models: PathBuf,
    /// The pod's `state` volume: an `--outcome-store sqlite://` file lives there.
    pub state: PathBuf,
    /// `--grpc-addr`.
    pub grpc: SocketAddr,
    /// `--http-addr`.
    pub http: SocketAddr,
}

/// Maps the container's arguments to local paths and addresses.
pub fn local_args(container_args: &[String], pod: &LocalPod) -> Vec<String> {
    let LocalPod {
        config_file,
        data,
        artifacts,
        token_file,
        models,
        state,
        grpc,
        http,
    } = pod;
    let mapped = |flag: &str, value: &str| -> String {
        match flag {
            "--runtime-config" => config_file.display().to_string(),
            "--data" => data.display().to_string(),
            "--artifacts" => artifacts.display().to_string(),
            "--token-key-file" => token_file.display().to_string(),
            "--models" => models.display().to_string(),
            // A per-pod SQLite file moves to the pod's state folder; a postgres:// URL stays.
            "--outcome-store" if value.starts_with("sqlite:") => {
                format!("sqlite://{}/outcomes.db", state.display())
            }
            "--grpc-addr" => grpc.to_string(),
            "--http-addr" => http.to_string(),
            _ => value.to_owned(),
        }
    };
    let mut out = Vec::new();
    let mut iter = container_args.iter().peekable();
    let mut has_models = false;
    while let Some(arg) = iter.next() {
        if let Some((flag, value)) = arg.split_once('=').filter(|(f, _)| f.starts_with("--")) {
            has_models |= flag == "--models";
            out.push(format!("{flag}={}", mapped(flag, value)));
        } else if arg.starts_with("--")
            && iter.peek().is_some_and(|next| !next.starts_with("--"))
            && [
                "--runtime-config",
                "--data",
                "--artifacts",
                "--token-key-file",
                "--models",
                "--outcome-store",
                "--grpc-addr",
                "--http-addr",
            ]
            .contains(&arg.as_str())
        {
            has_models |= arg == "--models";
            let value = iter.next().map(String::as_str).unwrap_or_default();
            out.push(arg.clone());
            out.push(mapped(arg, value));
        } else {
            out.push(arg.clone());
        }
    }
    if !has_models {
        out.push("--models".into());
        out.push(models.display().to_string());
    }
    out
}

/// Writes `content` to `path` through a rename, so readers see the old or the new file whole.
fn project(path: &Path, content: &[u8]) -> std::io::Result<bool> {
    if std::fs::read(path).is_ok_and(|old| old == content) {
        return Ok(false);
    }
    let temp = path.with_extension("projecting");
    std::fs::write(&temp, content)?;
    std::fs::rename(&temp, path)?;
    Ok(true)
}

impl Kubelet {
    /// Starts the loop (every 300 ms) on the current tokio runtime.
    pub fn start(client: Client, config: KubeletConfig) -> Self {
        let pods: Pods = Arc::new(Mutex::new(BTreeMap::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let (pods, errors) = (pods.clone(), errors.clone());
            tokio::spawn(async move {
                let started: Arc<Mutex<std::collections::BTreeSet<String>>> = Arc::default();
                loop {
                    let jobs = sync_jobs(&client, &config, &started).await;
                    if let Err(e) = jobs.and(sync(&client, &config, &pods).await) {
                        tracing::warn!(error = %e, "kubelet sync failed");
                        let mut errors = errors.lock().unwrap_or_else(|e| e.into_inner());
                        if errors.last() != Some(&e) {
                            errors.push(e);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            })
        };
        Self { pods, task, errors }
    }

    /// The pods.
    pub fn pods(&self) -> &Pods {
        &self.pods
    }

    /// HTTP address of the Router's runtime, once it is ready.
    pub fn runtime_http(&self, router: &str) -> Option<SocketAddr> {
        self.pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(router)
            .map(|p| p.http)
    }

    /// Sync errors so far (distinct consecutive ones).
    pub fn errors(&self) -> Vec<String> {
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.task.abort();
        self.pods.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// Starts every evaluation Job not started yet; each runs in its own task and reports itself.
async fn sync_jobs(
    client: &Client,
    config: &KubeletConfig,
    started: &Arc<Mutex<std::collections::BTreeSet<String>>>,
) -> Result<(), String> {
    let jobs: Api<Job> = Api::namespaced(client.clone(), &config.namespace);
    let list = jobs
        .list(&ListParams::default().labels(EVALUATION_SELECTOR))
        .await
        .map_err(|e| format!("list evaluation Jobs: {e}"))?;
    for job in list.items {
        let name = job.name_any();
        // By uid: a Job deleted and created again under its name is a new Job.
        let uid = job.metadata.uid.clone().unwrap_or_else(|| name.clone());
        if !started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(uid)
        {
            continue;
        }
        let (client, config) = (client.clone(), config.clone());
        tokio::spawn(async move {
            if let Err(e) = run_job(&client, &config, &job).await {
                tracing::warn!(job = %name, error = %e, "evaluation Job could not run");
            }
        });
    }
    Ok(())
}

/// Runs one evaluation Job's container to completion and reports it.
async fn run_job(client: &Client, config: &KubeletConfig, job: &Job) -> Result<(), String> {
    let name = job.name_any();
    let pod_spec = job
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .ok_or_else(|| format!("Job {name} has no pod template"))?;
    let container = pod_spec
        .containers
        .first()
        .ok_or_else(|| format!("Job {name} has no container"))?;
    let dir = config.work.join("jobs").join(&name);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // ConfigMap volumes become folders of files; every other mount an empty folder, except the
    // index claim (the stories' data folder).
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &config.namespace);
    let mut mounts: Vec<(String, PathBuf)> = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let volume = pod_spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .ok_or_else(|| format!("Job {name}: no volume {}", mount.name))?;
        let local = dir.join("volumes").join(&mount.name);
        std::fs::create_dir_all(&local).map_err(|e| format!("{}: {e}", local.display()))?;
        if let Some(source) = &volume.config_map {
            let cm = maps
                .get(&source.name)
                .await
                .map_err(|e| format!("get ConfigMap {}: {e}", source.name))?;
            for (key, value) in cm.data.iter().flatten() {
                let wanted = source
                    .items
                    .as_ref()
                    .is_none_or(|items| items.iter().any(|i| &i.key == key));
                if wanted {
                    std::fs::write(local.join(key), value)
                        .map_err(|e| format!("{}: {e}", local.display()))?;
                }
            }
        }
        let local = if volume.persistent_volume_claim.is_some() && mount.name == "index" {
            let kb = Path::new(&mount.mount_path)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            config.data.join(kb)
        } else {
            local
        };
        mounts.push((mount.mount_path.clone(), local));
    }
    let termination = dir.join("termination-log");
    let message_path = container
        .termination_message_path
        .clone()
        .unwrap_or_else(|| "/dev/termination-log".to_owned());
    let index_root = config.data.display().to_string();
    let map_path = |value: &str| -> String {
        if value == message_path {
            return termination.display().to_string();
        }
        if value == "/var/lib/switchboard/index" {
            return index_root.clone();
        }
        for (at, local) in &mounts {
            if let Some(rest) = value.strip_prefix(at.as_str()) {
                return format!("{}{rest}", local.display());
            }
        }
        value.to_owned()
    };
    let mut args: Vec<String> = container
        .args
        .iter()
        .flatten()
        .map(|a| map_path(a))
        .collect();
    args.push("--models".into());
    args.push(config.models.display().to_string());
    let mut command = Command::new(&config.runtime_bin);
    command.args(&args).current_dir(&dir);
    for (k, v) in &config.env {
        command.env(k, v);
    }
    let log = dir.join("log.txt");
    let status = tokio::task::spawn_blocking(move || {
        let file = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = file.try_clone().map_err(|e| e.to_string())?;
        command
            .stdout(file)
            .stderr(err)
            .status()
            .map_err(|e| format!("running the evaluation: {e}"))
    })
    .await
    .map_err(|e| e.to_string())??;
    let code = status.code().unwrap_or(1);
    let message = std::fs::read_to_string(&termination).unwrap_or_default();
    tracing::info!(job = %name, code, "evaluation Job finished");

    // The pod a node would have run, with the container's termination message.
    let pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(client.clone(), &config.namespace);
    let pod_name = format!("{name}-0");
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod_name, "namespace": config.namespace, "labels": {"job-name": name}},
        "spec": {"containers": [{"name": container.name, "image": container.image}]},
    });
    pods.patch(
        &pod_name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&pod),
    )
    .await
    .map_err(|e| format!("Pod {pod_name}: {e}"))?;
    let pod_status = json!({
        "apiVersion": "v1", "kind": "Pod",
        "status": {
            "phase": if code == 0 { "Succeeded" } else { "Failed" },
            "containerStatuses": [{
                "name": container.name, "image": container.image.clone().unwrap_or_default(),
                "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": code, "message": message}},
            }],
        },
    });
    pods.patch_status(
        &pod_name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&pod_status),
    )
    .await
    .map_err(|e| format!("Pod {pod_name} status: {e}"))?;
    let condition = if code == 0 {
        json!({"type": "Complete", "status": "True"})
    } else {
        json!({"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": format!("the evaluation exited with {code}")})
    };
    let job_status = json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "status": {
            "succeeded": i32::from(code == 0), "failed": i32::from(code != 0), "active": 0,
            "conditions": [condition],
        },
    });
    Api::<Job>::namespaced(client.clone(), &config.namespace)
        .patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&job_status),
        )
        .await
        .map_err(|e| format!("Job {name} status: {e}"))?;
    Ok(())
}

async fn sync(client: &Client, config: &KubeletConfig, pods: &Pods) -> Result<(), String> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &config.namespace);
    let list = deployments
        .list(&ListParams::default().labels(RUNTIME_SELECTOR))
        .await
        .map_err(|e| format!("list runtime Deployments: {e}"))?;
    let wanted: Vec<String> = list
        .items
        .iter()
        .filter_map(|d| d.labels().get("switchboard.dev/router").cloned())
        .collect();
    // Deployments that went away take their pods with them.
    pods.lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|router, _| wanted.contains(router));

    for deployment in &list.items {
        let Some(router) = deployment.labels().get("switchboard.dev/router").cloned() else {
            continue;
        };
        let name = deployment.name_any();
        let pod_dir = config.work.join("pods").join(&router);
        std::fs::create_dir_all(&pod_dir).map_err(|e| format!("{}: {e}", pod_dir.display()))?;
        let config_file = pod_dir.join(CONFIG_KEY);
        let token_file = pod_dir.join("token-key");

        // Volumes: the ConfigMap and the Secret, projected as files.
        let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &config.namespace);
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &config.namespace);
        let config_map = maps
            .get_opt(&name)
            .await
            .map_err(|e| format!("get ConfigMap {name}: {e}"))?;
        if let Some(text) = config_map
            .as_ref()
            .and_then(|c| c.data.as_ref()?.get(CONFIG_KEY))
        {
            project(&config_file, text.as_bytes())
                .map_err(|e| format!("{}: {e}", config_file.display()))?;
        }
        let secret = secrets
            .get_opt(&format!("{name}-token"))
            .await
            .map_err(|e| format!("get Secret {name}-token: {e}"))?;
        if let Some(key) = secret
            .as_ref()
            .and_then(|s| s.data.as_ref()?.get(TOKEN_KEY))
        {
            project(&token_file, &key.0).map_err(|e| format!("{}: {e}", token_file.display()))?;
        }

        let running = {
            let mut pods = pods.lock().unwrap_or_else(|e| e.into_inner());
            match pods.get_mut(&router) {
                Some(pod) => {
                    if !pod.process.is_running() {
                        return Err(format!(
                            "the runtime of Router {router} exited; log:\n{}",
                            pod.process.log_tail(40)
                        ));
                    }
                    true
                }
                None => false,
            }
        };
        if running || !config_file.exists() || !token_file.exists() {
            continue;
        }

        let container_args: Vec<String> = deployment
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|s| s.containers.first())
            .and_then(|c| c.args.clone())
            .unwrap_or_default();
        let (http, grpc) = (free_addr(), free_addr());
        let args = local_args(
            &container_args,
            &LocalPod {
                config_file: config_file.clone(),
                data: config.data.clone(),
                artifacts: pod_dir.join("artifacts"),
                token_file: token_file.clone(),
                models: config.models.clone(),
                state: pod_dir.join("state"),
                grpc,
                http,
            },
        );
        let mut command = Command::new(&config.runtime_bin);
        command.args(&args).current_dir(&pod_dir);
        for (k, v) in &config.env {
            command.env(k, v);
        }
        let mut process = Process::spawn(&format!("runtime-{router}"), command, &pod_dir)?;
        // Readiness probe (the Deployment's /readyz), off the async workers.
        let process = tokio::task::spawn_blocking(move || {
            process
                .wait_for_http_ok(http, "/readyz", Duration::from_secs(300))
                .map(|()| process)
        })
        .await
        .map_err(|e| e.to_string())??;
        tracing::info!(%router, %http, "runtime pod ready");
        pods.lock().unwrap_or_else(|e| e.into_inner()).insert(
            router.clone(),
            Pod {
                router: router.clone(),
                http,
                grpc,
                process,
                config_file: config_file.clone(),
            },
        );
        let generation = deployment.metadata.generation.unwrap_or(1);
        let status = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "status": {
                "observedGeneration": generation, "replicas": 1, "updatedReplicas": 1,
                "readyReplicas": 1, "availableReplicas": 1,
                "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"}],
            }
        });
        deployments
            .patch_status(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&status),
            )
            .await
            .map_err(|e| format!("Deployment {name} status: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_args_map_to_local_paths() {
        let args: Vec<String> = [
            "serve",
            "--runtime-config",
            "/etc/switchboard/runtime-config.json",
            "--data",
            "/var/lib/switchboard/index",
            "--artifacts=/var/lib/switchboard/artifacts",
            "--token-key-file",
            "/var/run/switchboard/token/key",
            "--grpc-addr",
            "0.0.0.0:50051",
            "--http-addr",
            "0.0.0.0:8080",
            "--outcome-store",
            "sqlite:///var/lib/switchboard/state/outcomes.db",
            "--log-format",
            "json",
        ]
        .map(String::from)
        .to_vec();
        let grpc: SocketAddr = "127.0.0.1:1".parse().unwrap_or_else(|_| unreachable!());
        let http: SocketAddr = "127.0.0.1:2".parse().unwrap_or_else(|_| unreachable!());
        let out = local_args(
            &args,
            &LocalPod {
                config_file: "/w/cfg.json".into(),
                data: "/w/data".into(),
                artifacts: "/w/art".into(),
                token_file: "/w/key".into(),
                models: "/m".into(),
                state: "/w/state".into(),
                grpc,
                http,
            },
        );
        assert_eq!(
            out,
            [
                "serve",
                "--runtime-config",
                "/w/cfg.json",
                "--data",
                "/w/data",
                "--artifacts=/w/art",
                "--token-key-file",
                "/w/key",
                "--grpc-addr",
                "127.0.0.1:1",
                "--http-addr",
                "127.0.0.1:2",
                "--outcome-store",
                "sqlite:///w/state/outcomes.db",
                "--log-format",
                "json",
                "--models",
                "/m"
            ]
        );
    }
}
