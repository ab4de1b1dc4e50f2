{{/*
The operator's permissions, exact resources and verbs, no wildcards. This is a copy of
`switchboard_operator::rbac::RBAC_RULES` (operator/src/rbac.rs); the chart tests
(tests/chart) fail when the two differ, so change both together.

"switchboard.rbac.rules": what the controllers read and write in the namespaces they watch
(a ClusterRole, or a Role when operator.watchNamespace is set).
"switchboard.rbac.secretRules": Secrets, granted per namespace by its owner (a RoleBinding to the
`<release>-operator-secrets` ClusterRole; rbac.secretNamespaces), never cluster-wide; part of the
Role when operator.watchNamespace is set.
"switchboard.rbac.leaderElectionRules": the Lease, in the leader-election namespace only.
*/}}
{{- define "switchboard.rbac.rules" -}}
# The four resources: watched; AdapterPatch and Experiment action annotations are removed with a
# merge patch once acted upon.
- apiGroups: ["switchboard.dev"]
  resources: ["knowledgebases", "routers"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["switchboard.dev"]
  resources: ["adapterpatches", "experiments"]
  verbs: ["get", "list", "watch", "patch"]
# Status through the status subresource (server-side apply).
- apiGroups: ["switchboard.dev"]
  resources: ["adapterpatches/status", "experiments/status", "knowledgebases/status", "routers/status"]
  verbs: ["get", "patch"]
# Children carry blockOwnerDeletion owner references: with the OwnerReferencesPermissionEnforcement
# admission plugin that needs update on the owner's finalizers subresource.
- apiGroups: ["switchboard.dev"]
  resources: ["adapterpatches/finalizers", "experiments/finalizers", "knowledgebases/finalizers", "routers/finalizers"]
  verbs: ["update"]
# Router children (ConfigMap, Services, Deployment) and the KnowledgeBase index volume: server-side
# apply creates them the first time and patches them afterwards. The ConfigMaps and claims that
# KnowledgeBase sources read are watched (a ConfigMap's content change rebuilds the index).
- apiGroups: [""]
  resources: ["configmaps", "services", "persistentvolumeclaims"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch"]
# The runtime pods' NetworkPolicy: applied, and deleted when a Router turns it off.
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Index build Jobs (old ones are deleted) and their pods (the build report is the termination message).
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{- define "switchboard.rbac.secretRules" -}}
# The interaction-token key of each Router: created, and updated to rotate it (admission-policy.yaml
# limits updates to Secrets a Router controls). The Secrets a Router (endpoint key, outcome store
# URL) or an AdapterPatch (registry credentials) names are read to check them (no list/watch: the
# operator never sees Secrets it is not pointed at).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create", "update"]
{{- end }}

{{- define "switchboard.rbac.leaderElectionRules" -}}
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "create", "update"]
{{- end }}
