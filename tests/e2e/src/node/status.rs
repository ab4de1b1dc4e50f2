//! A Pod's status as a kubelet reports it, from what the node agent observed of its one
//! container. Pure: the agent applies the result to the `pods/status` subresource, and the
//! apiserver's validation of status updates holds it to the same rules as a kubelet (container
//! statuses named after the spec's containers, `podIPs[0] == podIP`, no way back from a
//! terminal phase).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// The address of the node and of every pod on it: processes listen on loopback.
pub const POD_IP: &str = "127.0.0.1";

/// Reason of a container waiting for its volumes (a ConfigMap or Secret that does not exist yet).
pub const CONTAINER_CREATING: &str = "ContainerCreating";
/// Reason of a container the node cannot run: an env `valueFrom`, a `command`, a second container.
pub const CREATE_CONTAINER_CONFIG_ERROR: &str = "CreateContainerConfigError";
/// Reason of a container whose image the node does not have (it never pulls).
pub const ERR_IMAGE_NEVER_PULL: &str = "ErrImageNeverPull";

/// What the node observed of a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    /// Not started: why.
    Waiting {
        /// `ContainerCreating`, `CreateContainerConfigError`, `ErrImageNeverPull`.
        reason: &'static str,
        /// Details (the missing volume source, the unsupported field).
        message: Option<String>,
    },
    /// The process runs.
    Running {
        /// When it started.
        started_at: Timestamp,
        /// Whether its readiness probe passes (or it has none).
        ready: bool,
        /// Its process id (reported as the container id).
        pid: u32,
    },
    /// The process exited.
    Terminated {
        /// Exit code (128 + signal when a signal ended it, as container runtimes report).
        exit_code: i32,
        /// The termination message.
        message: String,
        /// When it started.
        started_at: Timestamp,
        /// When it exited.
        finished_at: Timestamp,
        /// Its process id.
        pid: u32,
    },
}

impl Observed {
    /// Whether the container has been started (its volumes were set up).
    fn started(&self) -> bool {
        !matches!(self, Self::Waiting { .. })
    }
}

/// The last transition time of each pod condition: a condition keeps its time until its status
/// changes.
#[derive(Clone, Debug, Default)]
pub struct Transitions(BTreeMap<&'static str, (bool, Timestamp)>);

impl Transitions {
    fn condition(
        &mut self,
        type_: &'static str,
        status: bool,
        reason: Option<&str>,
        message: Option<String>,
        now: Timestamp,
    ) -> PodCondition {
        let (_, since) = *self
            .0
            .entry(type_)
            .and_modify(|(was, since)| {
                if *was != status {
                    *was = status;
                    *since = now;
                }
            })
            .or_insert((status, now));
        PodCondition {
            type_: type_.to_owned(),
            status: if status { "True" } else { "False" }.to_owned(),
            reason: reason.map(str::to_owned),
            message,
            last_transition_time: Some(Time(since)),
            ..PodCondition::default()
        }
    }
}

/// The container the status describes.
#[derive(Clone, Copy, Debug)]
pub struct ContainerRef<'a> {
    /// Its name in the pod spec.
    pub name: &'a str,
    /// Its image.
    pub image: &'a str,
}

/// The pod's status: phase, the kubelet's conditions (`PodScheduled` is the binding's), the
/// node's and the pod's address, and the container's status. `start_time` is when the node first
/// saw the pod bound to it.
pub fn pod_status(
    container: ContainerRef<'_>,
    observed: &Observed,
    start_time: Timestamp,
    transitions: &mut Transitions,
    now: Timestamp,
) -> PodStatus {
    let (phase, state, ready) = match observed {
        Observed::Waiting { reason, message } => (
            "Pending",
            ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some((*reason).to_owned()),
                    message: message.clone(),
                }),
                ..ContainerState::default()
            },
            false,
        ),
        Observed::Running {
            started_at, ready, ..
        } => (
            "Running",
            ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(Time(*started_at)),
                }),
                ..ContainerState::default()
            },
            *ready,
        ),
        Observed::Terminated {
            exit_code,
            message,
            started_at,
            finished_at,
            pid,
        } => (
            // Restarts are not simulated: an exited container ends the pod.
            if *exit_code == 0 {
                "Succeeded"
            } else {
                "Failed"
            },
            ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: *exit_code,
                    reason: Some(
                        if *exit_code == 0 {
                            "Completed"
                        } else {
                            "Error"
                        }
                        .to_owned(),
                    ),
                    message: (!message.is_empty()).then(|| message.clone()),
                    started_at: Some(Time(*started_at)),
                    finished_at: Some(Time(*finished_at)),
                    container_id: Some(container_id(*pid)),
                    ..ContainerStateTerminated::default()
                }),
                ..ContainerState::default()
            },
            false,
        ),
    };
    let pid = match observed {
        Observed::Running { pid, .. } | Observed::Terminated { pid, .. } => Some(*pid),
        Observed::Waiting { .. } => None,
    };
    let (not_ready_reason, not_ready_message) = match observed {
        Observed::Terminated { .. } => ("PodCompleted", None),
        _ => (
            "ContainersNotReady",
            Some(format!(
                "containers with unready status: [{}]",
                container.name
            )),
        ),
    };
    let readiness = |transitions: &mut Transitions, type_| {
        if ready {
            transitions.condition(type_, true, None, None, now)
        } else {
            transitions.condition(
                type_,
                false,
                Some(not_ready_reason),
                not_ready_message.clone(),
                now,
            )
        }
    };
    let conditions = vec![
        transitions.condition(
            "PodReadyToStartContainers",
            observed.started(),
            None,
            None,
            now,
        ),
        transitions.condition("Initialized", true, None, None, now),
        readiness(transitions, "ContainersReady"),
        readiness(transitions, "Ready"),
    ];
    PodStatus {
        phase: Some(phase.to_owned()),
        conditions: Some(conditions),
        host_ip: Some(POD_IP.to_owned()),
        host_ips: Some(vec![HostIP {
            ip: POD_IP.to_owned(),
        }]),
        // The pod has an address once its sandbox (here: its process) exists.
        pod_ip: observed.started().then(|| POD_IP.to_owned()),
        pod_ips: observed.started().then(|| {
            vec![PodIP {
                ip: POD_IP.to_owned(),
            }]
        }),
        start_time: Some(Time(start_time)),
        container_statuses: Some(vec![ContainerStatus {
            name: container.name.to_owned(),
            image: container.image.to_owned(),
            image_id: String::new(),
            container_id: pid.map(container_id),
            ready,
            restart_count: 0,
            started: Some(matches!(observed, Observed::Running { .. })),
            state: Some(state),
            ..ContainerStatus::default()
        }]),
        ..PodStatus::default()
    }
}

/// A container's id: the process that runs it.
fn container_id(pid: u32) -> String {
    format!("process://{pid}")
}

/// Longest termination message a kubelet keeps from the message file (4 KiB).
pub const MAX_MESSAGE_BYTES: usize = 4096;
/// With `FallbackToLogsOnError`: at most this many lines of the log...
pub const FALLBACK_LOG_LINES: usize = 80;
/// ...and at most this many bytes of them (2 KiB).
pub const FALLBACK_LOG_BYTES: usize = 2048;

/// The termination message the kubelet reports: the container's message file (its first 4 KiB);
/// with `FallbackToLogsOnError`, when that file is empty and the container failed, the end of its
/// log (the last 80 lines, at most 2 KiB).
pub fn termination_message(
    file: &[u8],
    log: &str,
    fallback_to_logs: bool,
    exit_code: i32,
) -> String {
    let file = &file[..file.len().min(MAX_MESSAGE_BYTES)];
    if !file.is_empty() || !fallback_to_logs || exit_code == 0 {
        return String::from_utf8_lossy(file).into_owned();
    }
    let lines: Vec<&str> = log.lines().collect();
    let tail = lines[lines.len().saturating_sub(FALLBACK_LOG_LINES)..].join("\n");
    let mut start = tail.len().saturating_sub(FALLBACK_LOG_BYTES);
    while !tail.is_char_boundary(start) {
        start += 1;
    }
    tail[start..].to_owned()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const CONTAINER: ContainerRef<'static> = ContainerRef {
        name: "runtime",
        image: "switchboard-runtime:e2e",
    };

    fn at(seconds: u64) -> Timestamp {
        Timestamp::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + seconds)
    }

    fn terminated_state(status: &PodStatus) -> ContainerStateTerminated {
        status
            .container_statuses
            .as_ref()
            .unwrap_or_else(|| unreachable!())[0]
            .state
            .clone()
            .and_then(|s| s.terminated)
            .unwrap_or_else(|| panic!("not terminated: {status:?}"))
    }

    fn condition<'a>(status: &'a PodStatus, type_: &str) -> &'a PodCondition {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == type_)
            .unwrap_or_else(|| panic!("no {type_} condition in {status:?}"))
    }

    #[test]
    fn a_container_goes_from_waiting_to_ready_with_the_transition_times_of_each_step() {
        let mut transitions = Transitions::default();
        let waiting = Observed::Waiting {
            reason: CONTAINER_CREATING,
            message: Some("configmap \"helpdesk-runtime\" not found".to_owned()),
        };
        let status = pod_status(CONTAINER, &waiting, at(0), &mut transitions, at(0));
        assert_eq!(status.phase.as_deref(), Some("Pending"));
        assert_eq!(status.pod_ip, None, "no address before the sandbox exists");
        assert_eq!(status.host_ip.as_deref(), Some(POD_IP));
        let container = &status
            .container_statuses
            .as_ref()
            .unwrap_or_else(|| unreachable!())[0];
        assert_eq!(
            container
                .state
                .as_ref()
                .and_then(|s| s.waiting.as_ref())
                .and_then(|w| w.reason.as_deref()),
            Some(CONTAINER_CREATING)
        );
        assert_eq!(condition(&status, "Ready").status, "False");

        let started = Observed::Running {
            started_at: at(5),
            ready: false,
            pid: 42,
        };
        let status = pod_status(CONTAINER, &started, at(0), &mut transitions, at(5));
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.pod_ip.as_deref(), Some(POD_IP));
        assert_eq!(
            status.pod_ips.as_deref().map(|ips| ips[0].ip.as_str()),
            Some(POD_IP)
        );
        let ready_to_start = condition(&status, "PodReadyToStartContainers");
        assert_eq!(ready_to_start.status, "True");
        assert_eq!(ready_to_start.last_transition_time, Some(Time(at(5))));
        // Still not ready: the condition keeps the time it became False.
        assert_eq!(
            condition(&status, "Ready").last_transition_time,
            Some(Time(at(0)))
        );

        let ready = Observed::Running {
            started_at: at(5),
            ready: true,
            pid: 42,
        };
        let status = pod_status(CONTAINER, &ready, at(0), &mut transitions, at(9));
        let condition_ready = condition(&status, "Ready");
        assert_eq!(
            (
                condition_ready.status.as_str(),
                condition_ready.last_transition_time.clone()
            ),
            ("True", Some(Time(at(9))))
        );
        assert_eq!(condition(&status, "ContainersReady").status, "True");
        let container = &status
            .container_statuses
            .as_ref()
            .unwrap_or_else(|| unreachable!())[0];
        assert!(container.ready);
        assert_eq!(container.started, Some(true));
        assert_eq!(container.container_id.as_deref(), Some("process://42"));
        assert_eq!(status.start_time, Some(Time(at(0))));
    }

    #[test]
    fn an_exited_container_ends_the_pod_with_its_exit_code_and_message() {
        let mut transitions = Transitions::default();
        let terminated = |exit_code, message: &str| Observed::Terminated {
            exit_code,
            message: message.to_owned(),
            started_at: at(1),
            finished_at: at(8),
            pid: 7,
        };
        let status = pod_status(
            CONTAINER,
            &terminated(0, "{\"generation\":1}"),
            at(0),
            &mut transitions,
            at(8),
        );
        assert_eq!(status.phase.as_deref(), Some("Succeeded"));
        let state = terminated_state(&status);
        assert_eq!(
            (
                state.exit_code,
                state.reason.as_deref(),
                state.message.as_deref()
            ),
            (0, Some("Completed"), Some("{\"generation\":1}"))
        );
        assert_eq!(
            condition(&status, "Ready").reason.as_deref(),
            Some("PodCompleted")
        );

        let status = pod_status(
            CONTAINER,
            &terminated(3, ""),
            at(0),
            &mut transitions,
            at(8),
        );
        assert_eq!(status.phase.as_deref(), Some("Failed"));
        let state = terminated_state(&status);
        assert_eq!(
            (state.exit_code, state.reason.as_deref(), state.message),
            (3, Some("Error"), None)
        );
    }

    #[test]
    fn the_termination_message_falls_back_to_the_log_tail_only_for_a_failed_container() {
        let log: String = (1..=100).map(|i| format!("line {i}\n")).collect();
        assert_eq!(termination_message(b"report", &log, true, 1), "report");
        assert_eq!(termination_message(b"", &log, false, 1), "");
        assert_eq!(termination_message(b"", &log, true, 0), "");
        let fallback = termination_message(b"", &log, true, 2);
        assert!(fallback.starts_with("line 21\n"), "{fallback}");
        assert!(fallback.ends_with("line 100"), "{fallback}");
        let long = "é".repeat(3000);
        let fallback = termination_message(b"", &long, true, 1);
        assert!(fallback.len() <= FALLBACK_LOG_BYTES && fallback.len() >= FALLBACK_LOG_BYTES - 1);
        let big = vec![b'x'; 10_000];
        assert_eq!(
            termination_message(&big, "", true, 0).len(),
            MAX_MESSAGE_BYTES
        );
    }
}
