//! The stories' node: what a scheduler and a kubelet do for the Pods of one namespace on the real
//! control plane ([`switchboard_testkit::controlplane`]), with each container run as a local
//! process.
//!
//! [`NodeAgent::start`] registers a Node and keeps it `Ready` ([`registration`]), then syncs the
//! namespace's Pods (a reflector's cache; at once on every change and every 500 ms):
//!
//! - a Pod nobody scheduled is bound to the node through the `pods/binding` subresource, as
//!   kube-scheduler would (there is one node and no scheduler);
//! - a Pod bound to the node gets a sandbox ([`sandbox`]): its volumes set up as files, its
//!   image's program started with the container's arguments mapped onto the sandbox (Router
//!   runtime Deployments' `switchboard-runtime serve`, index-build Jobs' `switchboard-runtime
//!   index`, evaluation Jobs' `switchboard-runtime eval`), readiness probed ([`probe`]);
//! - its status goes to the `pods/status` subresource whenever it changes ([`status`]): phase,
//!   conditions, addresses, the container's state with its exit code and termination message.
//!   kube-controller-manager's own controllers do the rest — a Deployment becomes Available,
//!   a new ReplicaSet replaces an old one, a Job Completes or Fails;
//! - a Pod being deleted has its process stopped (SIGTERM, SIGKILL after the grace period) and
//!   is then deleted for good (`gracePeriodSeconds: 0`), which is a kubelet's last word on a pod.
//!
//! Not simulated: container restarts (an exited container ends its pod; one of a long-running
//! pod is a [`NodeAgent::failures`] entry, which fails the story with its log); liveness and
//! startup probes and resources are ignored. Refused — the Pod waits with a reason saying why,
//! and is a failure too: more than one container or init containers, a container `command`,
//! env `valueFrom` or `envFrom`, `subPath` mounts, volumes other than ConfigMap, Secret,
//! emptyDir and PersistentVolumeClaim (a claim is a folder of the node, bound or not). That
//! includes the projected ServiceAccount token: pods must not automount one (the operator's
//! runtime, index-build and evaluation pods do not).

mod pods;
pub mod probe;
pub mod registration;
pub mod sandbox;
pub mod status;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::{Arc, Mutex, PoisonError};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::Notify;

pub use pods::{LocalPod, Pods};
pub use sandbox::Image;
pub use status::POD_IP;

use pods::Agent;
use registration::Registration;

/// Field manager of everything the agent writes (Node, Lease, pod status).
pub const FIELD_MANAGER: &str = "switchboard-e2e-node";

/// A failure of the agent.
#[derive(Debug)]
pub enum Error {
    /// An API request failed.
    Api {
        /// What the agent did (`bind`, `post the status of`...).
        action: &'static str,
        /// To which object.
        object: String,
        /// The error.
        source: kube::Error,
    },
    /// A file of a sandbox could not be written.
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A container's process could not be started.
    Process(String),
}

impl Error {
    fn api(action: &'static str, object: &str, source: kube::Error) -> Self {
        Self::Api {
            action,
            object: object.to_owned(),
            source,
        }
    }

    fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// Whether the API server refused the request as such (invalid, forbidden): a mistake of
    /// the agent that retrying will not fix.
    fn is_refusal(&self) -> bool {
        matches!(self, Self::Api { source: kube::Error::Api(status), .. } if matches!(status.code, 400 | 403 | 422))
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Api {
                action,
                object,
                source,
            } => write!(f, "{action} {object}: {source}"),
            Self::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Self::Process(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Api { source, .. } => Some(source),
            Self::Io { source, .. } => Some(source),
            Self::Process(_) => None,
        }
    }
}

/// What the node is and runs.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The Node's name.
    pub node_name: String,
    /// The namespace whose Pods it schedules and runs.
    pub namespace: String,
    /// The images it has, by reference; it never pulls (a Pod naming another image waits in
    /// `ErrImageNeverPull`).
    pub images: BTreeMap<String, Image>,
    /// Folder of the pods' sandboxes (`<pods_dir>/<pod>/`: `root/`, the container's log).
    pub pods_dir: PathBuf,
    /// Folder of the PersistentVolumeClaims' contents (`<claims_dir>/<claim>/`).
    pub claims_dir: PathBuf,
}

/// What went wrong so far.
#[derive(Debug, Default)]
pub(super) struct Problems {
    /// Every distinct consecutive error.
    errors: Vec<String>,
    /// What fails a story: a long-running container that exited, a Pod the node cannot run, a
    /// request the API server refused.
    failures: Vec<String>,
}

/// The running agent; stops (killing its containers) when dropped. The Node stays registered:
/// once its heartbeats stop, the node-lifecycle controller marks it `Unknown`.
#[derive(Debug)]
pub struct NodeAgent {
    name: String,
    pods: Pods,
    problems: Arc<Mutex<Problems>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl NodeAgent {
    /// Registers the Node and starts the agent on the current tokio runtime.
    pub async fn start(client: Client, config: NodeConfig) -> Result<Self, Error> {
        let version = client
            .apiserver_version()
            .await
            .map_err(|e| Error::api("get", "the API server's version", e))?;
        let registration = Registration {
            name: config.node_name.clone(),
            kubelet_version: version.git_version,
            registered_at: Timestamp::now(),
        };
        registration::register(&client, &registration).await?;

        let pods: Pods = Arc::default();
        let problems: Arc<Mutex<Problems>> = Arc::default();
        let report = {
            let problems = problems.clone();
            move |error: Error| record(&problems, &error)
        };
        let heartbeat = tokio::spawn(registration::keep_alive(
            client.clone(),
            registration,
            report,
        ));

        let api: Api<Pod> = Api::namespaced(client.clone(), &config.namespace);
        let (store, writer) = reflector::store();
        let changed = Arc::new(Notify::new());
        let watch = {
            let (api, changed, problems) = (api.clone(), changed.clone(), problems.clone());
            tokio::spawn(async move {
                let events = reflector(writer, watcher(api, watcher::Config::default()))
                    .default_backoff()
                    .touched_objects();
                let mut events = pin!(events);
                while let Some(event) = events.next().await {
                    if let Err(e) = event {
                        record_message(&problems, format!("watch Pods: {e}"), false);
                    }
                    changed.notify_one();
                }
            })
        };
        let agent = Agent {
            client,
            config: config.clone(),
            api,
            pods: pods.clone(),
            problems: problems.clone(),
            changed,
        };
        let sync = tokio::spawn(agent.run(store));
        Ok(Self {
            name: config.node_name,
            pods,
            problems,
            tasks: vec![heartbeat, watch, sync],
        })
    }

    /// The Node's name.
    pub fn node_name(&self) -> &str {
        &self.name
    }

    /// The pods it runs.
    pub fn pods(&self) -> &Pods {
        &self.pods
    }

    /// The local address of pod `pod`'s container port `port` (by name).
    pub fn port(&self, pod: &str, port: &str) -> Option<SocketAddr> {
        lock(&self.pods).get(pod)?.port(port)
    }

    /// Every distinct consecutive error so far (API errors included, which are retried).
    pub fn errors(&self) -> Vec<String> {
        lock(&self.problems).errors.clone()
    }

    /// What should fail a test: a long-running container that exited (with its log), a Pod the
    /// node cannot run, a request the API server refused.
    pub fn failures(&self) -> Vec<String> {
        lock(&self.problems).failures.clone()
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        // Kills the processes now, so a failing test shows their logs.
        lock(&self.pods).clear();
    }
}

pub(super) fn record(problems: &Mutex<Problems>, error: &Error) {
    record_message(problems, error.to_string(), error.is_refusal());
}

pub(super) fn record_message(problems: &Mutex<Problems>, message: String, failure: bool) {
    tracing::warn!(error = %message, "node agent");
    let mut problems = lock(problems);
    if failure && !problems.failures.contains(&message) {
        problems.failures.push(message.clone());
    }
    if problems.errors.last() != Some(&message) {
        problems.errors.push(message);
    }
}
