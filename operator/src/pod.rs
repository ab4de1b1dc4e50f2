//! Security settings shared by every pod the operator creates (runtime Deployments, index-build
//! and artifact-verification Jobs): the Kubernetes "restricted" Pod Security Standard — non-root
//! user 65532, the runtime's default seccomp profile, no privilege escalation, no capabilities.

use k8s_openapi::api::core::v1::{
    Capabilities, PodSecurityContext, SeccompProfile, SecurityContext,
};

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
