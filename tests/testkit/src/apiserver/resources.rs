//! The resource types the stand-in API server serves.

/// One served resource type: where it lives in the URL space and how it behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceType {
    /// API group; empty for the core group (`/api/v1`).
    pub group: &'static str,
    /// API version.
    pub version: &'static str,
    /// URL plural, e.g. `deployments`.
    pub plural: &'static str,
    /// `kind`, e.g. `Deployment`.
    pub kind: &'static str,
    /// Namespaced (true) or cluster-scoped (false).
    pub namespaced: bool,
    /// Has a `/status` subresource: the main endpoint ignores `status`, `/status` changes only it.
    pub status_subresource: bool,
}

impl ResourceType {
    /// `apiVersion` as written in objects: `v1` for core, `group/version` otherwise.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

const fn rt(
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    status_subresource: bool,
) -> ResourceType {
    ResourceType {
        group,
        version,
        plural,
        kind,
        namespaced,
        status_subresource,
    }
}

/// Every resource type the stand-in serves.
pub const RESOURCES: &[ResourceType] = &[
    rt("", "v1", "namespaces", "Namespace", false, true),
    rt("", "v1", "configmaps", "ConfigMap", true, false),
    rt("", "v1", "secrets", "Secret", true, false),
    rt("", "v1", "services", "Service", true, true),
    rt("", "v1", "pods", "Pod", true, true),
    rt("", "v1", "events", "Event", true, false),
    rt("", "v1", "serviceaccounts", "ServiceAccount", true, false),
    rt(
        "",
        "v1",
        "persistentvolumeclaims",
        "PersistentVolumeClaim",
        true,
        true,
    ),
    rt("apps", "v1", "deployments", "Deployment", true, true),
    rt("batch", "v1", "jobs", "Job", true, true),
    rt("batch", "v1", "cronjobs", "CronJob", true, true),
    rt("coordination.k8s.io", "v1", "leases", "Lease", true, false),
    rt("events.k8s.io", "v1", "events", "Event", true, false),
    rt(
        "switchboard.dev",
        "v1alpha1",
        "routers",
        "Router",
        true,
        true,
    ),
    rt(
        "switchboard.dev",
        "v1alpha1",
        "knowledgebases",
        "KnowledgeBase",
        true,
        true,
    ),
    rt(
        "switchboard.dev",
        "v1alpha1",
        "adapterpatches",
        "AdapterPatch",
        true,
        true,
    ),
    rt(
        "switchboard.dev",
        "v1alpha1",
        "experiments",
        "Experiment",
        true,
        true,
    ),
];

/// Looks a resource type up by its URL coordinates.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Looks a resource type up by `apiVersion` and `kind` (as written in owner references).
pub fn find_kind(api_version: &str, kind: &str) -> Option<&'static ResourceType> {
    RESOURCES
        .iter()
        .find(|r| r.api_version() == api_version && r.kind == kind)
}
