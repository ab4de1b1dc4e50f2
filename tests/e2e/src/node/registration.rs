//! The agent's Node: registered as a kubelet registers itself (a Node with its capacity, address
//! and a `Ready` condition), then kept alive the way kubelets are: its Lease in
//! `kube-node-lease` renewed every 10 s, and its `Ready` condition's heartbeat with it.
//!
//! kube-controller-manager's node-lifecycle controller marks a node whose Lease and status both
//! went unrenewed for `--node-monitor-grace-period` (50 s in 1.35) `Unknown`, taints it
//! `node.kubernetes.io/unreachable:NoExecute` and so evicts its pods 300 s later (the default
//! toleration); a 10 s renewal keeps it far from that.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};

use super::status::POD_IP;
use super::{Error, FIELD_MANAGER};

/// How often the Lease and the `Ready` heartbeat are renewed (a kubelet's default).
pub const RENEW_INTERVAL: Duration = Duration::from_secs(10);
/// The Lease's duration (a kubelet's `nodeLeaseDurationSeconds`).
const LEASE_DURATION_SECONDS: i32 = 40;
/// Namespace of node Leases.
const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";
/// Pods the node admits (a kubelet's default `maxPods`).
const MAX_PODS: &str = "110";

/// What the node reports about itself.
#[derive(Clone, Debug)]
pub struct Registration {
    /// The Node's name.
    pub name: String,
    /// The version it reports as its kubelet's (the control plane's own).
    pub kubelet_version: String,
    /// When it registered: the `Ready` condition's transition time.
    pub registered_at: Timestamp,
}

impl Registration {
    fn node(&self) -> Node {
        let labels = BTreeMap::from([
            ("kubernetes.io/hostname".to_owned(), self.name.clone()),
            ("kubernetes.io/os".to_owned(), "linux".to_owned()),
            ("kubernetes.io/arch".to_owned(), architecture().to_owned()),
        ]);
        Node {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                labels: Some(labels),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec::default()),
            status: None,
        }
    }

    /// The Node's status at `now`: `Ready` (and no pressure) since registration, heartbeat `now`.
    fn status(&self, now: Timestamp) -> Node {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let resources = BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpus.to_string())),
            ("memory".to_owned(), Quantity(memory())),
            ("pods".to_owned(), Quantity(MAX_PODS.to_owned())),
        ]);
        let condition = |type_: &str, status: &str, reason: &str, message: &str| NodeCondition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: Some(reason.to_owned()),
            message: Some(message.to_owned()),
            last_heartbeat_time: Some(Time(now)),
            last_transition_time: Some(Time(self.registered_at)),
        };
        Node {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                ..ObjectMeta::default()
            },
            spec: None,
            status: Some(NodeStatus {
                capacity: Some(resources.clone()),
                allocatable: Some(resources),
                addresses: Some(vec![
                    NodeAddress {
                        type_: "InternalIP".to_owned(),
                        address: POD_IP.to_owned(),
                    },
                    NodeAddress {
                        type_: "Hostname".to_owned(),
                        address: self.name.clone(),
                    },
                ]),
                conditions: Some(vec![
                    condition(
                        "MemoryPressure",
                        "False",
                        "KubeletHasSufficientMemory",
                        "kubelet has sufficient memory available",
                    ),
                    condition(
                        "DiskPressure",
                        "False",
                        "KubeletHasNoDiskPressure",
                        "kubelet has no disk pressure",
                    ),
                    condition(
                        "PIDPressure",
                        "False",
                        "KubeletHasSufficientPID",
                        "kubelet has sufficient PID available",
                    ),
                    condition(
                        "Ready",
                        "True",
                        "KubeletReady",
                        "the switchboard e2e node agent is posting ready status",
                    ),
                ]),
                daemon_endpoints: Some(NodeDaemonEndpoints {
                    kubelet_endpoint: Some(DaemonEndpoint { port: 0 }),
                }),
                node_info: Some(NodeSystemInfo {
                    architecture: architecture().to_owned(),
                    operating_system: "linux".to_owned(),
                    os_image: "switchboard e2e node agent (local processes)".to_owned(),
                    kernel_version: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                        .map(|v| v.trim().to_owned())
                        .unwrap_or_default(),
                    kubelet_version: self.kubelet_version.clone(),
                    container_runtime_version: "process://".to_owned(),
                    ..NodeSystemInfo::default()
                }),
                ..NodeStatus::default()
            }),
        }
    }

    fn lease(&self, node: &Node, now: Timestamp) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(NODE_LEASE_NAMESPACE.to_owned()),
                // As a kubelet does: the Lease goes with its Node.
                owner_references: node.metadata.uid.clone().map(|uid| {
                    vec![OwnerReference {
                        api_version: "v1".to_owned(),
                        kind: "Node".to_owned(),
                        name: self.name.clone(),
                        uid,
                        ..OwnerReference::default()
                    }]
                }),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.name.clone()),
                lease_duration_seconds: Some(LEASE_DURATION_SECONDS),
                renew_time: Some(MicroTime(now)),
                ..LeaseSpec::default()
            }),
        }
    }
}

fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The machine's memory (`MemTotal` of /proc/meminfo), as a quantity.
fn memory() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().strip_suffix("kB"))
                .map(|kb| format!("{}Ki", kb.trim()))
        })
        .unwrap_or_else(|| "8Gi".to_owned())
}

/// Registers the Node (server-side apply: a Node left by an earlier run is taken over), its
/// status and its Lease.
pub async fn register(client: &Client, registration: &Registration) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let object = format!("Node {}", registration.name);
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    let node = nodes
        .patch(
            &registration.name,
            &apply,
            &Patch::Apply(registration.node()),
        )
        .await
        .map_err(|source| Error::api("register", &object, source))?;
    renew(client, registration, &node).await
}

/// Renews the Lease and the `Ready` heartbeat.
async fn renew(client: &Client, registration: &Registration, node: &Node) -> Result<(), Error> {
    let now = Timestamp::now();
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    Api::<Node>::all(client.clone())
        .patch_status(
            &registration.name,
            &apply,
            &Patch::Apply(registration.status(now)),
        )
        .await
        .map_err(|source| {
            Error::api(
                "post the status of",
                &format!("Node {}", registration.name),
                source,
            )
        })?;
    Api::<Lease>::namespaced(client.clone(), NODE_LEASE_NAMESPACE)
        .patch(
            &registration.name,
            &apply,
            &Patch::Apply(registration.lease(node, now)),
        )
        .await
        .map_err(|source| {
            Error::api(
                "renew",
                &format!("Lease {NODE_LEASE_NAMESPACE}/{}", registration.name),
                source,
            )
        })?;
    Ok(())
}

/// Renews every [`RENEW_INTERVAL`] until the task is dropped; failures go to `report` (the next
/// renewal tries again).
pub async fn keep_alive(client: Client, registration: Registration, report: impl Fn(Error)) {
    let nodes: Api<Node> = Api::all(client.clone());
    loop {
        tokio::time::sleep(RENEW_INTERVAL).await;
        let renewed = match nodes.get(&registration.name).await {
            Ok(node) => renew(&client, &registration, &node).await,
            Err(source) => Err(Error::api(
                "get",
                &format!("Node {}", registration.name),
                source,
            )),
        };
        if let Err(error) = renewed {
            report(error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_is_ready_with_its_capacity_and_its_lease_names_it() {
        let registration = Registration {
            name: "switchboard-e2e-story-0".to_owned(),
            kubelet_version: "v1.35.4".to_owned(),
            registered_at: Timestamp::UNIX_EPOCH,
        };
        let now = Timestamp::UNIX_EPOCH + Duration::from_secs(30);
        let node = registration.status(now);
        let status = node.status.unwrap_or_default();
        let ready = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready")
            .unwrap_or_else(|| panic!("no Ready condition"));
        assert_eq!(ready.status, "True");
        assert_eq!(ready.last_heartbeat_time, Some(Time(now)));
        assert_eq!(
            ready.last_transition_time,
            Some(Time(Timestamp::UNIX_EPOCH))
        );
        let capacity = status.capacity.unwrap_or_default();
        assert!(
            ["cpu", "memory", "pods"]
                .iter()
                .all(|r| capacity.contains_key(*r))
        );
        assert_eq!(status.allocatable.unwrap_or_default(), capacity);

        let mut registered = registration.node();
        registered.metadata.uid = Some("node-uid".to_owned());
        let lease = registration.lease(&registered, now);
        let spec = lease.spec.unwrap_or_default();
        assert_eq!(
            spec.holder_identity.as_deref(),
            Some("switchboard-e2e-story-0")
        );
        assert_eq!(spec.renew_time, Some(MicroTime(now)));
        let owner = &lease.metadata.owner_references.unwrap_or_default()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("Node", "node-uid")
        );
    }
}
