//! The node's sync loop: the namespace's Pods bound, run, reported and stopped, and the state
//! it keeps of each Pod it runs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Binding, Container, ObjectReference, Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::reflector::Store;
use kube::{Api, Client, ResourceExt};
use switchboard_testkit::process::Process;
use tokio::sync::Notify;

use super::probe::{self, Prober};
use super::sandbox::{Image, NotStarted, Sandbox};
use super::status::{self, ContainerRef, ERR_IMAGE_NEVER_PULL, Observed, Transitions};
use super::{Error, FIELD_MANAGER, NodeConfig, Problems, lock, record, record_message};

/// The scheduler name of Pods the node binds (the API server's default).
const SCHEDULER_NAME: &str = "default-scheduler";
/// Longest wait between two syncs of the Pods (a change syncs at once).
const SYNC_PERIOD: Duration = Duration::from_millis(500);

/// The pods this node runs, by name.
pub type Pods = Arc<Mutex<BTreeMap<String, LocalPod>>>;

/// A Pod this node runs.
#[derive(Debug)]
pub struct LocalPod {
    uid: String,
    labels: BTreeMap<String, String>,
    sandbox: Option<Arc<Sandbox>>,
    container: ContainerRun,
    start_time: Timestamp,
    transitions: Transitions,
    reported: Option<PodStatus>,
    /// Whether the final delete (grace period 0) has been accepted.
    deleted: bool,
}

/// The container's run.
#[derive(Debug)]
enum ContainerRun {
    Waiting {
        reason: &'static str,
        message: Option<String>,
    },
    Running {
        process: Process,
        started_at: Timestamp,
        prober: Option<Prober>,
    },
    /// Its Pod was deleted: SIGTERM sent, SIGKILL at `deadline`.
    Stopping {
        process: Process,
        started_at: Timestamp,
        deadline: Instant,
    },
    Exited(Observed),
}

impl LocalPod {
    /// The pod's labels.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }

    /// The local address of a container port, by name.
    pub fn port(&self, name: &str) -> Option<SocketAddr> {
        self.sandbox.as_ref()?.named_ports().get(name).copied()
    }

    /// Where a path of the container is on this machine.
    pub fn path(&self, in_container: &str) -> Option<PathBuf> {
        Some(self.sandbox.as_ref()?.path(in_container))
    }

    /// Whether the container runs and is ready.
    pub fn is_ready(&self) -> bool {
        match &self.container {
            ContainerRun::Running { prober, .. } => prober.as_ref().is_none_or(Prober::ready),
            _ => false,
        }
    }

    fn observed(&self) -> Observed {
        match &self.container {
            ContainerRun::Waiting { reason, message } => Observed::Waiting {
                reason,
                message: message.clone(),
            },
            ContainerRun::Running {
                process,
                started_at,
                ..
            } => Observed::Running {
                started_at: *started_at,
                ready: self.is_ready(),
                pid: process.pid(),
            },
            ContainerRun::Stopping {
                process,
                started_at,
                ..
            } => Observed::Running {
                started_at: *started_at,
                ready: false,
                pid: process.pid(),
            },
            ContainerRun::Exited(observed) => observed.clone(),
        }
    }
}

/// The sync loop.
pub(super) struct Agent {
    pub(super) client: Client,
    pub(super) config: NodeConfig,
    pub(super) api: Api<Pod>,
    pub(super) pods: Pods,
    pub(super) problems: Arc<Mutex<Problems>>,
    pub(super) changed: Arc<Notify>,
}

impl Agent {
    /// Syncs every Pod of the namespace at once when `changed` is notified, and at least every
    /// [`SYNC_PERIOD`].
    pub(super) async fn run(self, store: Store<Pod>) {
        if store.wait_until_ready().await.is_err() {
            return;
        }
        loop {
            let pods = store.state();
            for pod in &pods {
                if let Err(error) = self.sync(pod).await {
                    record(&self.problems, &error);
                }
            }
            // Pods gone from the API server (deleted for good) take their containers with them.
            lock(&self.pods).retain(|name, local| {
                pods.iter().any(|p| {
                    p.name_any() == *name && p.uid().as_deref() == Some(local.uid.as_str())
                })
            });
            tokio::select! {
                () = self.changed.notified() => {}
                () = tokio::time::sleep(SYNC_PERIOD) => {}
            }
        }
    }

    async fn sync(&self, pod: &Pod) -> Result<(), Error> {
        let Some(spec) = &pod.spec else {
            return Ok(());
        };
        match spec.node_name.as_deref() {
            None if pod.metadata.deletion_timestamp.is_none()
                && spec.scheduler_name.as_deref().unwrap_or(SCHEDULER_NAME) == SCHEDULER_NAME =>
            {
                self.bind(pod).await
            }
            Some(node) if node == self.config.node_name => {
                if pod.metadata.deletion_timestamp.is_some() {
                    self.stop(pod).await
                } else {
                    self.run_pod(pod).await
                }
            }
            _ => Ok(()),
        }
    }

    /// Binds `pod` to the node, as a scheduler does.
    async fn bind(&self, pod: &Pod) -> Result<(), Error> {
        let name = pod.name_any();
        let binding = Binding {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: pod.namespace(),
                uid: pod.uid(),
                ..ObjectMeta::default()
            },
            target: ObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Node".to_owned()),
                name: Some(self.config.node_name.clone()),
                ..ObjectReference::default()
            },
        };
        match self
            .api
            .create_subresource::<_, serde_json::Value>(
                "binding",
                &name,
                &PostParams::default(),
                &binding,
            )
            .await
        {
            // 409: bound already (the cache had not seen it yet).
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
            Err(e) => Err(Error::api("bind", &self.describe(pod), e)),
        }
    }

    fn describe(&self, pod: &Pod) -> String {
        format!("Pod {}/{}", self.config.namespace, pod.name_any())
    }

    fn fail(&self, message: String) {
        record_message(&self.problems, message, true);
    }

    /// Runs a Pod bound to the node: sandbox, volumes, process, probes; then reports its status.
    async fn run_pod(&self, pod: &Pod) -> Result<(), Error> {
        if let Some(sandbox) = self.admit(pod)? {
            // Volumes: set up before the start, refreshed while the container runs (without the
            // lock: the ConfigMaps and Secrets are read from the API server).
            let spec = pod.spec.as_ref();
            let mounted = match spec {
                Some(spec) => {
                    sandbox
                        .mount(
                            &self.client,
                            &self.config.namespace,
                            spec,
                            &spec.containers[0],
                            &self.config.claims_dir,
                        )
                        .await
                }
                None => Ok(()),
            };
            self.advance(pod, &sandbox, mounted)?;
        }
        self.report_status(pod).await
    }

    /// The pod's sandbox while its container waits for its start or runs; on first sight, the
    /// pod is admitted: a sandbox when the node can run it, a waiting reason when not.
    fn admit(&self, pod: &Pod) -> Result<Option<Arc<Sandbox>>, Error> {
        let name = pod.name_any();
        let uid = pod.uid().unwrap_or_default();
        let mut pods = lock(&self.pods);
        if pods.get(&name).is_none_or(|local| local.uid != uid) {
            let (sandbox, container) = match self.runnable(pod) {
                Ok((container, image)) => (
                    Some(Arc::new(Sandbox::create(
                        &self.config.pods_dir,
                        pod,
                        container,
                        image,
                    )?)),
                    ContainerRun::Waiting {
                        reason: status::CONTAINER_CREATING,
                        message: None,
                    },
                ),
                Err((reason, message)) => {
                    self.fail(format!("{}: {message}", self.describe(pod)));
                    (
                        None,
                        ContainerRun::Waiting {
                            reason,
                            message: Some(message),
                        },
                    )
                }
            };
            pods.insert(
                name.clone(),
                LocalPod {
                    uid,
                    labels: pod.labels().clone(),
                    sandbox,
                    container,
                    start_time: Timestamp::now(),
                    transitions: Transitions::default(),
                    reported: None,
                    deleted: false,
                },
            );
        }
        let Some(local) = pods.get(&name) else {
            return Ok(None);
        };
        let active = match &local.container {
            ContainerRun::Waiting { reason, .. } => *reason == status::CONTAINER_CREATING,
            ContainerRun::Running { .. } => true,
            ContainerRun::Stopping { .. } | ContainerRun::Exited(_) => false,
        };
        Ok(local.sandbox.clone().filter(|_| active))
    }

    /// The pod's container and image, or why this node cannot run it.
    fn runnable<'a>(
        &'a self,
        pod: &'a Pod,
    ) -> Result<(&'a Container, &'a Image), (&'static str, String)> {
        let spec = pod.spec.as_ref();
        let containers = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
        let init_containers = spec
            .and_then(|s| s.init_containers.as_deref())
            .unwrap_or_default();
        let [container] = containers else {
            return Err((
                status::CREATE_CONTAINER_CONFIG_ERROR,
                "the e2e node agent runs pods of one container".to_owned(),
            ));
        };
        if !init_containers.is_empty() {
            return Err((
                status::CREATE_CONTAINER_CONFIG_ERROR,
                "the e2e node agent runs no init containers".to_owned(),
            ));
        }
        let reference = container.image.as_deref().unwrap_or_default();
        let image = self.config.images.get(reference).ok_or_else(|| {
            (
                ERR_IMAGE_NEVER_PULL,
                format!("image {reference:?} is not one of the e2e node's images"),
            )
        })?;
        Ok((container, image))
    }

    /// One step of the container after its volumes were set up (`mounted`): a waiting container
    /// starts, a running one may have exited.
    fn advance(
        &self,
        pod: &Pod,
        sandbox: &Sandbox,
        mounted: Result<(), NotStarted>,
    ) -> Result<(), Error> {
        let name = pod.name_any();
        let mut pods = lock(&self.pods);
        let Some(local) = pods.get_mut(&name) else {
            return Ok(());
        };
        let Ok((container, image)) = self.runnable(pod) else {
            return Ok(());
        };
        match (&mut local.container, mounted) {
            (_, Err(NotStarted::Failed(error))) => return Err(error),
            (ContainerRun::Waiting { .. }, Ok(())) => {
                local.container = self.start(pod, sandbox, container, image);
            }
            (ContainerRun::Waiting { .. }, Err(NotStarted::Waiting(message))) => {
                local.container = ContainerRun::Waiting {
                    reason: status::CONTAINER_CREATING,
                    message: Some(message),
                };
            }
            (ContainerRun::Waiting { .. }, Err(NotStarted::Refused(reason, message))) => {
                self.fail(format!("{}: {message}", self.describe(pod)));
                local.container = ContainerRun::Waiting {
                    reason,
                    message: Some(message),
                };
            }
            (
                ContainerRun::Running {
                    process,
                    started_at,
                    ..
                },
                _,
            ) => {
                if let Some(exit) = process.exit_status() {
                    let exit_code = exit_code(exit);
                    let message =
                        sandbox.termination_message(container, exit_code, process.log_path());
                    // Restarts are not simulated: a long-running container that exits fails
                    // the test, with its log.
                    if pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) != Some("Never")
                    {
                        self.fail(format!(
                            "{}: container {} exited ({exit}); log {}:\n{}",
                            self.describe(pod),
                            container.name,
                            process.log_path().display(),
                            process.log_tail(40)
                        ));
                    }
                    local.container = ContainerRun::Exited(Observed::Terminated {
                        exit_code,
                        message,
                        started_at: *started_at,
                        finished_at: Timestamp::now(),
                        pid: process.pid(),
                    });
                }
            }
            (ContainerRun::Stopping { .. } | ContainerRun::Exited(_), _) => {}
        }
        Ok(())
    }

    /// Starts `container`'s process in `sandbox`, and its readiness prober.
    fn start(
        &self,
        pod: &Pod,
        sandbox: &Sandbox,
        container: &Container,
        image: &Image,
    ) -> ContainerRun {
        match sandbox.start(pod, container, image) {
            Ok(process) => {
                let prober =
                    container.readiness_probe.as_ref().and_then(|probe| {
                        match probe::check(probe, |port| sandbox.port(port)) {
                            Ok(check) => Some(Prober::start(check, probe, self.changed.clone())),
                            Err(probe::Unsupported(why)) => {
                                self.fail(format!(
                                    "{}: readiness probe: {why}",
                                    self.describe(pod)
                                ));
                                None
                            }
                        }
                    });
                ContainerRun::Running {
                    process,
                    started_at: Timestamp::now(),
                    prober,
                }
            }
            Err(error) => {
                let (reason, message) = match error {
                    NotStarted::Refused(reason, message) => (reason, message),
                    NotStarted::Waiting(message) => (status::CONTAINER_CREATING, message),
                    NotStarted::Failed(error) => {
                        (status::CREATE_CONTAINER_CONFIG_ERROR, error.to_string())
                    }
                };
                self.fail(format!("{}: {message}", self.describe(pod)));
                ContainerRun::Waiting {
                    reason,
                    message: Some(message),
                }
            }
        }
    }

    /// Sends the pod's status when it differs from the last one sent.
    async fn report_status(&self, pod: &Pod) -> Result<(), Error> {
        let name = pod.name_any();
        let Some(container) = pod.spec.as_ref().map(|s| &s.containers[0]) else {
            return Ok(());
        };
        let status = {
            let mut pods = lock(&self.pods);
            let Some(local) = pods.get_mut(&name) else {
                return Ok(());
            };
            let observed = local.observed();
            let status = status::pod_status(
                ContainerRef {
                    name: &container.name,
                    image: container.image.as_deref().unwrap_or_default(),
                },
                &observed,
                local.start_time,
                &mut local.transitions,
                Timestamp::now(),
            );
            if local.reported.as_ref() == Some(&status) {
                return Ok(());
            }
            status
        };
        let patch = Pod {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..ObjectMeta::default()
            },
            spec: None,
            status: Some(status.clone()),
        };
        match self
            .api
            .patch_status(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
        {
            Ok(_) => {
                if let Some(local) = lock(&self.pods).get_mut(&name) {
                    local.reported = Some(status);
                }
                Ok(())
            }
            // Deleted meanwhile.
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(Error::api("post the status of", &self.describe(pod), e)),
        }
    }

    /// A deleted Pod: its process is stopped (SIGTERM, SIGKILL once the grace period is over;
    /// the sync loop comes back to it), then the Pod is deleted for good.
    async fn stop(&self, pod: &Pod) -> Result<(), Error> {
        let name = pod.name_any();
        let stopped = {
            let mut pods = lock(&self.pods);
            match pods.get_mut(&name) {
                None => true,
                Some(local) if local.deleted => return Ok(()),
                Some(local) => {
                    let grace = Duration::from_secs(
                        pod.metadata
                            .deletion_grace_period_seconds
                            .and_then(|s| u64::try_from(s).ok())
                            .unwrap_or(30),
                    );
                    let run = std::mem::replace(
                        &mut local.container,
                        ContainerRun::Waiting {
                            reason: status::CONTAINER_CREATING,
                            message: None,
                        },
                    );
                    local.container = stop_step(run, grace);
                    !matches!(local.container, ContainerRun::Stopping { .. })
                }
            }
        };
        if !stopped {
            return Ok(());
        }
        let params = DeleteParams::default()
            .grace_period(0)
            .preconditions(Preconditions {
                uid: pod.uid(),
                resource_version: None,
            });
        match self.api.delete(&name, &params).await {
            Ok(_) => {}
            // Gone already, or another pod of that name.
            Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409) => {}
            Err(e) => return Err(Error::api("delete", &self.describe(pod), e)),
        }
        if let Some(local) = lock(&self.pods).get_mut(&name) {
            local.deleted = true;
        }
        Ok(())
    }
}

/// One step of stopping a container: a running one gets SIGTERM; a stopping one that exited, or
/// that outlived its grace period (then SIGKILL), has exited.
fn stop_step(run: ContainerRun, grace: Duration) -> ContainerRun {
    match run {
        ContainerRun::Running {
            mut process,
            started_at,
            ..
        } => {
            // What a container runtime sends first: the runtime drains its requests on it.
            if process.exit_status().is_none() {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &process.pid().to_string()])
                    .status();
            }
            ContainerRun::Stopping {
                process,
                started_at,
                deadline: Instant::now() + grace,
            }
        }
        ContainerRun::Stopping {
            mut process,
            started_at,
            deadline,
        } => {
            if process.exit_status().is_none() && Instant::now() < deadline {
                return ContainerRun::Stopping {
                    process,
                    started_at,
                    deadline,
                };
            }
            process.kill();
            ContainerRun::Exited(Observed::Terminated {
                exit_code: process.exit_status().map_or(137, exit_code),
                message: String::new(),
                started_at,
                finished_at: Timestamp::now(),
                pid: process.pid(),
            })
        }
        other @ (ContainerRun::Waiting { .. } | ContainerRun::Exited(_)) => other,
    }
}

/// Exit code as container runtimes report it: 128 + the signal for a killed process.
fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(1)
}
