//! The RBAC rules the controllers need — exactly the API calls they make. The Helm chart's roles
//! are written from [`RBAC_RULES`], and a test compares the two. Where each rule is granted is
//! [`Grant`]: most in every watched namespace (a ClusterRole, or a Role when the operator watches
//! one namespace), the Lease in the leader-election namespace, and Secrets only in the
//! namespaces whose owners bind the chart's `<release>-operator-secrets` ClusterRole.

use k8s_openapi::api::rbac::v1::PolicyRule;

/// One (apiGroup, resource, verbs) rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    /// API group (`""` for the core group).
    pub api_group: &'static str,
    /// Resource (or `resource/subresource`).
    pub resource: &'static str,
    /// Verbs.
    pub verbs: &'static [&'static str],
}

const READ: &[&str] = &["get", "list", "watch"];
/// Server-side apply creates an object the first time (`create`) and patches it afterwards.
const OWN: &[&str] = &["get", "list", "watch", "create", "patch"];

/// Every rule of the operator's ClusterRole.
pub const RBAC_RULES: &[Rule] = &[
    // The four resources: watched; AdapterPatch and Experiment action annotations are removed
    // with a merge patch once acted upon.
    Rule {
        api_group: "switchboard.dev",
        resource: "knowledgebases",
        verbs: READ,
    },
    Rule {
        api_group: "switchboard.dev",
        resource: "adapterpatches",
        verbs: &["get", "list", "watch", "patch"],
    },
    Rule {
        api_group: "switchboard.dev",
        resource: "routers",
        verbs: READ,
    },
    Rule {
        api_group: "switchboard.dev",
        resource: "experiments",
        verbs: &["get", "list", "watch", "patch"],
    },
    // Status through the status subresource (server-side apply).
    Rule {
        api_group: "switchboard.dev",
        resource: "knowledgebases/status",
        verbs: &["get", "patch"],
    },
    Rule {
        api_group: "switchboard.dev",
        resource: "adapterpatches/status",
        verbs: &["get", "patch"],
    },
    Rule {
        api_group: "switchboard.dev",
        resource: "routers/status",
        verbs: &["get", "patch"],
    },
    Rule {
        api_group: "switchboard.dev",
        resource: "experiments/status",
        verbs: &["get", "patch"],
    },
    // Children carry `blockOwnerDeletion` owner references: with the
    // OwnerReferencesPermissionEnforcement admission plugin, setting one needs `update` on the
    // owner's `finalizers` subresource.
    Rule {
        api_group: "switchboard.dev",
        resource: "knowledgebases/finalizers",
        verbs: &["update"],
    },
    Rule {
        api_group: "switchboard.dev",
        resource: "adapterpatches/finalizers",
        verbs: &["update"],
    },
    Rule {
        api_group: "switchboard.dev",
        resource: "routers/finalizers",
        verbs: &["update"],
    },
    Rule {
        api_group: "switchboard.dev",
        resource: "experiments/finalizers",
        verbs: &["update"],
    },
    // Router children; the ConfigMaps KnowledgeBase sources read are watched and their content
    // hashed (a change rebuilds).
    Rule {
        api_group: "",
        resource: "configmaps",
        verbs: OWN,
    },
    Rule {
        api_group: "",
        resource: "services",
        verbs: OWN,
    },
    Rule {
        api_group: "apps",
        resource: "deployments",
        verbs: OWN,
    },
    // The interaction-token key: created, and updated to rotate it (the chart's admission policy
    // limits updates to the Secrets a Router controls). The Secrets a Router (endpoint key,
    // outcome store URL) or an AdapterPatch (registry credentials) names are read to check them
    // (no list or watch: the operator never sees Secrets it is not pointed at). Granted per
    // namespace by its owner (`Grant::PerNamespace`), never cluster-wide.
    Rule {
        api_group: "",
        resource: "secrets",
        verbs: &["get", "create", "update"],
    },
    // The runtime pods' NetworkPolicy: applied, and deleted when a Router turns it off.
    Rule {
        api_group: "networking.k8s.io",
        resource: "networkpolicies",
        verbs: &["get", "list", "watch", "create", "patch", "delete"],
    },
    // KnowledgeBase children: the index volume and the build Jobs (old Jobs are deleted); the
    // claims volume sources mount are checked and watched.
    Rule {
        api_group: "",
        resource: "persistentvolumeclaims",
        verbs: OWN,
    },
    Rule {
        api_group: "batch",
        resource: "jobs",
        verbs: &["get", "list", "watch", "create", "patch", "delete"],
    },
    // The build report is the Job pod's termination message.
    Rule {
        api_group: "",
        resource: "pods",
        verbs: &["get", "list"],
    },
    // Events (kube's Recorder creates them and patches a series).
    Rule {
        api_group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
    },
    // Leader election.
    Rule {
        api_group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["get", "create", "update"],
    },
];

/// Where a rule is granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    /// Every namespace the operator watches (the ClusterRole, or the watched namespace's Role).
    Watched,
    /// The leader-election namespace only (a Role).
    LeaderElection,
    /// Only namespaces whose owner grants it (a RoleBinding to the `<release>-operator-secrets`
    /// ClusterRole); the watched namespace's Role when the operator watches one namespace.
    PerNamespace,
}

impl Rule {
    /// Where this rule is granted.
    pub fn grant(&self) -> Grant {
        match (self.api_group, self.resource) {
            ("coordination.k8s.io", "leases") => Grant::LeaderElection,
            ("", "secrets") => Grant::PerNamespace,
            _ => Grant::Watched,
        }
    }
}

/// The rules as RBAC `PolicyRule`s (one per resource, in [`RBAC_RULES`] order).
pub fn policy_rules() -> Vec<PolicyRule> {
    RBAC_RULES
        .iter()
        .map(|r| PolicyRule {
            api_groups: Some(vec![r.api_group.to_owned()]),
            resources: Some(vec![r.resource.to_owned()]),
            verbs: r.verbs.iter().map(|v| (*v).to_owned()).collect(),
            ..PolicyRule::default()
        })
        .collect()
}

/// Whether `verb` on `resource` of `api_group` is allowed.
pub fn allows(api_group: &str, resource: &str, verb: &str) -> bool {
    RBAC_RULES
        .iter()
        .any(|r| r.api_group == api_group && r.resource == resource && r.verbs.contains(&verb))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rule_per_resource_and_least_privilege() {
        let mut seen = std::collections::BTreeSet::new();
        for r in RBAC_RULES {
            assert!(seen.insert((r.api_group, r.resource)), "duplicate {r:?}");
            assert!(!r.verbs.contains(&"*") && r.resource != "*", "{r:?}");
        }
        assert!(allows("coordination.k8s.io", "leases", "update"));
        assert!(allows("switchboard.dev", "routers/status", "patch"));
        assert!(!allows("", "secrets", "list"));
        assert!(!allows("switchboard.dev", "routers", "delete"));
        // Owner references with blockOwnerDeletion need update on the owner's finalizers.
        for kind in ["knowledgebases", "adapterpatches", "routers", "experiments"] {
            assert!(allows(
                "switchboard.dev",
                &format!("{kind}/finalizers"),
                "update"
            ));
        }
        assert_eq!(policy_rules().len(), RBAC_RULES.len());
        let per_namespace: Vec<&str> = RBAC_RULES
            .iter()
            .filter(|r| r.grant() == Grant::PerNamespace)
            .map(|r| r.resource)
            .collect();
        assert_eq!(per_namespace, ["secrets"]);
    }
}
