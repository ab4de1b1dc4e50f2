//! What every pod the operator creates shares (runtime Deployments, index-build, evaluation and
//! artifact-verification Jobs): the Kubernetes "restricted" Pod Security Standard — non-root
//! user 65532, the runtime's default seccomp profile, no privilege escalation, no capabilities —
//! the operator's own pods as a NetworkPolicy peer, and a Job's state.

use std::collections::BTreeMap;

use k8s_openapi::api::{
    batch::v1::JobStatus,
    core::v1::{Capabilities, PodSecurityContext, SeccompProfile, SecurityContext},
    networking::v1::NetworkPolicyPeer,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// The user, group and fs group every operator-created pod runs as (distroless `nonroot`).
pub const RUN_AS: i64 = 65532;

/// The pod-level security context.
pub fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS),
        run_as_group: Some(RUN_AS),
        fs_group: Some(RUN_AS),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

/// `SWITCHBOARD_EGRESS_ALLOW`: the operator's `--egress-allow`, passed on to every container that
/// fetches what a manifest names (index builds: HTTP sources; runtimes and evaluation Jobs:
/// adapter artifacts). `None` when nothing internal is allowed (the runtime's default).
pub fn egress_env(allow: Option<&str>) -> Option<k8s_openapi::api::core::v1::EnvVar> {
    allow
        .filter(|a| !a.trim().is_empty())
        .map(|a| k8s_openapi::api::core::v1::EnvVar {
            name: EGRESS_ALLOW_ENV.to_owned(),
            value: Some(a.to_owned()),
            ..Default::default()
        })
}

/// The environment variable of [`egress_env`] (the runtime's `--egress-allow`).
pub const EGRESS_ALLOW_ENV: &str = "SWITCHBOARD_EGRESS_ALLOW";

/// The container-level security context; `read_only_root_filesystem` where the container writes
/// only to its volumes.
pub fn container_security(read_only_root_filesystem: bool) -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: read_only_root_filesystem.then_some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

/// The operator's pods as a NetworkPolicy peer: pods labelled `pod_labels` in `namespace` (any
/// namespace when it is unknown).
pub fn operator_peer(
    namespace: Option<&str>,
    pod_labels: BTreeMap<String, String>,
) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: namespace.map(|ns| {
                BTreeMap::from([("kubernetes.io/metadata.name".to_owned(), ns.to_owned())])
            }),
            ..LabelSelector::default()
        }),
        pod_selector: Some(LabelSelector {
            match_labels: Some(pod_labels),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    }
}

/// State of a build Job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobState {
    /// Pods pending or running.
    Running,
    /// Completed.
    Succeeded,
    /// Failed (backoff limit reached or deadline exceeded), with the reason.
    Failed(String),
}

/// The state from the Job's status conditions.
pub fn job_state(status: Option<&JobStatus>) -> JobState {
    let Some(status) = status else {
        return JobState::Running;
    };
    for c in status.conditions.iter().flatten() {
        if c.status == "True" && c.type_ == "Complete" {
            return JobState::Succeeded;
        }
        if c.status == "True" && c.type_ == "Failed" {
            return JobState::Failed(
                c.message
                    .clone()
                    .or_else(|| c.reason.clone())
                    .unwrap_or_else(|| "the build Job failed".to_owned()),
            );
        }
    }
    if status.succeeded.unwrap_or(0) > 0 && status.active.unwrap_or(0) == 0 {
        return JobState::Succeeded;
    }
    JobState::Running
}
