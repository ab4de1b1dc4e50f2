{{/*
The operator's permissions, exact resources and verbs, no wildcards. This is a copy of
`switchboard_operator::rbac::RBAC_RULES` (operator/src/rbac.rs); the chart tests
(tests/chart) fail when the two differ, so change both together.

"switchboard.rbac.rules": what the controllers read and write in the namespaces they watch
(a ClusterRole, or a Role when operator.watchNamespace is set).
"switchboard.rbac.leaderElectionRules": the Lease, in the leader-election namespace only.
*/}}
{{- define "switchboard.rbac.rules" -}}
- apiGroups: ["switchboard.dev"]
  resources: ["adapterpatches", "experiments", "knowledgebases", "routers"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["switchboard.dev"]
  resources: ["adapterpatches/status", "experiments/status", "knowledgebases/status", "routers/status"]
  verbs: ["get", "patch"]
- apiGroups: ["switchboard.dev"]
  resources: ["knowledgebases/finalizers", "routers/finalizers"]
  verbs: ["update"]
- apiGroups: [""]
  resources: ["configmaps", "services"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "patch", "delete"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{- define "switchboard.rbac.leaderElectionRules" -}}
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "create", "update"]
{{- end }}
