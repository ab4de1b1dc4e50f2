//! `helm lint` and `helm template` of the chart with default and full values: every rendered
//! object is the Kubernetes type it claims to be, RBAC has no wildcard, the operator pod is
//! locked down, the alerts pass `promtool check rules`, and the dashboard and alerts read only
//! the series of docs/metrics.md. Then `helm install` and `helm upgrade` into the real
//! kube-apiserver, with the operator's ServiceAccount checked against the declared RBAC.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_yaml::Value;
use switchboard_chart_tests::{
    VALUE_SETS, alert_expressions, chart_dir, dashboard_expressions, documented_metric_names, helm,
    kind, metric_names, name, render, root, rule_groups, tool,
};
use switchboard_operator::rbac::{Grant, RBAC_RULES};

/// Deserializes `object` as `T` and serializes it back: the two must be equal, so a misspelled
/// or misplaced field (which a typed client would drop) fails the test.
fn round_trip<T>(object: &Value) -> Result<(), String>
where
    T: DeserializeOwned + Serialize + k8s_openapi::Resource,
{
    let typed: T = serde_yaml::from_value(object.clone()).map_err(|e| e.to_string())?;
    let written = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    let original = serde_json::to_value(object).map_err(|e| e.to_string())?;
    if object["apiVersion"].as_str() != Some(T::API_VERSION) {
        return Err(format!("apiVersion is not {}", T::API_VERSION));
    }
    match first_difference(&original, &written, "") {
        None => Ok(()),
        Some(path) => Err(format!(
            "{path} differs after a round trip through {}: a field the type does not know",
            std::any::type_name::<T>()
        )),
    }
}

fn first_difference(a: &serde_json::Value, b: &serde_json::Value, path: &str) -> Option<String> {
    use serde_json::Value as J;
    match (a, b) {
        (J::Object(x), J::Object(y)) => x
            .keys()
            .chain(y.keys())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .find_map(|k| {
                let p = format!("{path}.{k}");
                match (x.get(k), y.get(k)) {
                    (Some(l), Some(r)) => first_difference(l, r, &p),
                    _ => Some(p),
                }
            }),
        (J::Array(x), J::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (l, r))| first_difference(l, r, &format!("{path}[{i}]"))),
        _ if a == b => None,
        _ => Some(path.to_owned()),
    }
}

#[test]
fn helm_lint_passes_with_default_and_full_values() {
    for (set, values) in VALUE_SETS {
        let mut args = vec!["lint", ".", "--strict"];
        args.extend_from_slice(values);
        let out = helm(&args);
        assert!(out.contains("0 chart(s) failed"), "{set}: {out}");
    }
}

#[test]
fn every_rendered_object_is_its_kubernetes_type() {
    for (set, values) in VALUE_SETS {
        let objects = render(values);
        let mut kinds = BTreeSet::new();
        for object in &objects {
            let kind = kind(object);
            kinds.insert(kind.to_owned());
            let checked = match kind {
                "ServiceAccount" => round_trip::<ServiceAccount>(object),
                "Service" => round_trip::<Service>(object),
                "ConfigMap" => round_trip::<ConfigMap>(object),
                "Deployment" => round_trip::<Deployment>(object),
                "ClusterRole" => round_trip::<ClusterRole>(object),
                "ClusterRoleBinding" => round_trip::<ClusterRoleBinding>(object),
                "Role" => round_trip::<Role>(object),
                "RoleBinding" => round_trip::<RoleBinding>(object),
                "CustomResourceDefinition" => round_trip::<CustomResourceDefinition>(object),
                "ValidatingAdmissionPolicy" => round_trip::<ValidatingAdmissionPolicy>(object),
                "ValidatingAdmissionPolicyBinding" => {
                    round_trip::<ValidatingAdmissionPolicyBinding>(object)
                }
                "NetworkPolicy" => round_trip::<NetworkPolicy>(object),
                "ServiceMonitor" => check_service_monitor(object),
                "PrometheusRule" => check_prometheus_rule(object),
                other => Err(format!("unexpected kind {other}: add it to this test")),
            };
            if let Err(e) = checked {
                panic!("{set}: {kind} {}: {e}", name(object));
            }
            // Namespaced objects land in an explicit namespace (GitOps tools render without one).
            if !matches!(
                kind,
                "ClusterRole"
                    | "ClusterRoleBinding"
                    | "CustomResourceDefinition"
                    | "ValidatingAdmissionPolicy"
                    | "ValidatingAdmissionPolicyBinding"
            ) {
                assert!(
                    object["metadata"]["namespace"].as_str().is_some(),
                    "{set}: {kind} {} has no namespace",
                    name(object)
                );
            }
        }
        let expected: &[&str] = match set {
            "default" => &[
                "ClusterRole",
                "ClusterRoleBinding",
                "ConfigMap",
                "CustomResourceDefinition",
                "Deployment",
                "NetworkPolicy",
                "Role",
                "RoleBinding",
                "Service",
                "ServiceAccount",
                "ValidatingAdmissionPolicy",
                "ValidatingAdmissionPolicyBinding",
            ],
            // The aggregated view/edit ClusterRoles are people's, not the operator's.
            _ => &[
                "ClusterRole",
                "ConfigMap",
                "CustomResourceDefinition",
                "Deployment",
                "NetworkPolicy",
                "PrometheusRule",
                "Role",
                "RoleBinding",
                "Service",
                "ServiceAccount",
                "ServiceMonitor",
                "ValidatingAdmissionPolicy",
                "ValidatingAdmissionPolicyBinding",
            ],
        };
        assert_eq!(
            kinds,
            expected.iter().map(|k| (*k).to_owned()).collect(),
            "{set}"
        );
    }
}

fn check_service_monitor(object: &Value) -> Result<(), String> {
    if object["apiVersion"].as_str() != Some("monitoring.coreos.com/v1") {
        return Err("apiVersion must be monitoring.coreos.com/v1".into());
    }
    let spec = &object["spec"];
    if !spec["selector"]["matchLabels"].is_mapping() {
        return Err("spec.selector.matchLabels missing".into());
    }
    let endpoints = spec["endpoints"]
        .as_sequence()
        .filter(|e| !e.is_empty())
        .ok_or("spec.endpoints missing")?;
    for endpoint in endpoints {
        if endpoint["port"].as_str().is_none() || endpoint["path"].as_str() != Some("/metrics") {
            return Err(format!(
                "endpoint without port or /metrics path: {endpoint:?}"
            ));
        }
    }
    Ok(())
}

fn check_prometheus_rule(object: &Value) -> Result<(), String> {
    if object["apiVersion"].as_str() != Some("monitoring.coreos.com/v1") {
        return Err("apiVersion must be monitoring.coreos.com/v1".into());
    }
    let groups = rule_groups(object)
        .as_sequence()
        .filter(|g| !g.is_empty())
        .ok_or("spec.groups missing")?;
    for group in groups {
        group["name"].as_str().ok_or("group without name")?;
        for rule in group["rules"].as_sequence().ok_or("group without rules")? {
            let alert = rule["alert"].as_str().ok_or("rule without alert name")?;
            if rule["expr"].as_str().is_none_or(str::is_empty) {
                return Err(format!("{alert}: no expr"));
            }
            if rule["labels"]["severity"].as_str().is_none() {
                return Err(format!("{alert}: no severity label"));
            }
            if rule["annotations"]["summary"].as_str().is_none() {
                return Err(format!("{alert}: no summary annotation"));
            }
        }
    }
    Ok(())
}

#[test]
fn the_crds_are_the_generated_ones() {
    let objects = render(&[]);
    let mut rendered: Vec<String> = objects
        .iter()
        .filter(|o| kind(o) == "CustomResourceDefinition")
        .map(|o| name(o).to_owned())
        .collect();
    rendered.sort();
    let mut generated: Vec<String> = std::fs::read_dir(chart_dir().join("crds"))
        .expect("charts/switchboard/crds")
        .map(|e| {
            let file = e.expect("dir entry").file_name();
            file.to_string_lossy().trim_end_matches(".yaml").to_owned()
        })
        .collect();
    generated.sort();
    assert_eq!(rendered, generated);
    assert_eq!(
        rendered,
        [
            "adapterpatches.switchboard.dev",
            "experiments.switchboard.dev",
            "knowledgebases.switchboard.dev",
            "routers.switchboard.dev"
        ]
    );
}

fn rules_of(object: &Value) -> Vec<PolicyRule> {
    serde_yaml::from_value(object["rules"].clone()).expect("rules are PolicyRules")
}

#[test]
fn rbac_has_no_wildcards_and_only_namespaced_leases() {
    for (set, values) in VALUE_SETS {
        for object in render(values) {
            if !matches!(kind(&object), "ClusterRole" | "Role") {
                continue;
            }
            let role = name(&object).to_owned();
            let rules = rules_of(&object);
            assert!(!rules.is_empty(), "{set}: {role} has no rules");
            for rule in rules {
                let words = rule
                    .verbs
                    .iter()
                    .chain(rule.resources.iter().flatten())
                    .chain(rule.api_groups.iter().flatten());
                for word in words {
                    assert!(
                        !word.contains('*'),
                        "{set}: {role} has a wildcard: {rule:?}"
                    );
                }
                assert!(
                    rule.non_resource_urls.is_none(),
                    "{set}: {role}: non-resource URLs"
                );
                assert!(
                    !rule
                        .verbs
                        .iter()
                        .any(|v| matches!(v.as_str(), "escalate" | "bind" | "impersonate")),
                    "{set}: {role}: privilege escalation verb in {rule:?}"
                );
                let resources: Vec<&str> = rule
                    .resources
                    .iter()
                    .flatten()
                    .map(String::as_str)
                    .collect();
                if kind(&object) == "ClusterRole" {
                    assert!(
                        !resources.contains(&"leases"),
                        "{set}: the Lease is namespaced: {rule:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn the_operator_pod_is_locked_down() {
    for (set, values) in VALUE_SETS {
        let objects = render(values);
        let deployment: Deployment = objects
            .iter()
            .find(|o| kind(o) == "Deployment")
            .map(|o| serde_yaml::from_value(o.clone()).expect("Deployment"))
            .expect("a Deployment");
        let pod = deployment
            .spec
            .expect("spec")
            .template
            .spec
            .expect("pod spec");
        let pod_security = pod.security_context.clone().expect("pod securityContext");
        assert_eq!(pod_security.run_as_non_root, Some(true), "{set}");
        assert_eq!(pod_security.run_as_user, Some(65532), "{set}");
        assert_eq!(
            pod_security.seccomp_profile.map(|s| s.type_),
            Some("RuntimeDefault".to_owned()),
            "{set}"
        );
        assert_eq!(pod.containers.len(), 1, "{set}");
        let container = &pod.containers[0];
        let security = container.security_context.clone().expect("securityContext");
        assert_eq!(security.read_only_root_filesystem, Some(true), "{set}");
        assert_eq!(security.allow_privilege_escalation, Some(false), "{set}");
        assert_eq!(security.run_as_non_root, Some(true), "{set}");
        assert_ne!(security.privileged, Some(true), "{set}");
        let capabilities = security.capabilities.expect("capabilities");
        assert_eq!(capabilities.drop, Some(vec!["ALL".to_owned()]), "{set}");
        assert!(
            capabilities.add.is_none_or(|a| a.is_empty()),
            "{set}: capabilities added"
        );
        let resources = container.resources.clone().expect("resources");
        assert!(
            resources
                .requests
                .is_some_and(|r| r.contains_key("cpu") && r.contains_key("memory")),
            "{set}"
        );
        assert!(
            resources.limits.is_some_and(|l| l.contains_key("memory")),
            "{set}"
        );
        let probe_path = |probe: &Option<k8s_openapi::api::core::v1::Probe>| {
            probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref())
                .and_then(|h| h.path.clone())
        };
        assert_eq!(
            probe_path(&container.liveness_probe).as_deref(),
            Some("/healthz"),
            "{set}"
        );
        assert_eq!(
            probe_path(&container.readiness_probe).as_deref(),
            Some("/readyz"),
            "{set}"
        );
        // Writable paths are volumes, since the root filesystem is read-only.
        let mounts: Vec<&str> = container
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert!(mounts.contains(&"/tmp"), "{set}: {mounts:?}");
        // The shared contract's command line.
        let args = container.args.clone().expect("args");
        for flag in [
            "--prometheus-url=",
            "--metrics-addr=0.0.0.0:8080",
            "--leader-election-namespace=",
            "--runtime-image=",
            "--artifact-cache=",
            "--operator-pod-labels=",
        ] {
            assert!(
                args.iter().any(|a| a.starts_with(flag)),
                "{set}: {flag} missing in {args:?}"
            );
        }
        let watches_one_namespace = args.iter().any(|a| a == "--namespace=support");
        assert_eq!(watches_one_namespace, set == "full", "{set}: {args:?}");
        // The operator's pods accept connections on the metrics port only; the runtime pods'
        // policies admit the pods `--operator-pod-labels` names, which are these.
        let policy: NetworkPolicy = objects
            .iter()
            .find(|o| kind(o) == "NetworkPolicy")
            .map(|o| serde_yaml::from_value(o.clone()).expect("NetworkPolicy"))
            .expect("a NetworkPolicy");
        let spec = policy.spec.expect("spec");
        let selected = spec
            .pod_selector
            .and_then(|s| s.match_labels)
            .expect("matchLabels");
        let template_labels = deployment_labels(&objects);
        assert!(
            selected
                .iter()
                .all(|(k, v)| template_labels.get(k) == Some(v)),
            "{set}: {selected:?} vs {template_labels:?}"
        );
        assert_eq!(spec.policy_types, Some(vec!["Ingress".to_owned()]));
        let ingress = spec.ingress.expect("ingress");
        let ports: Vec<_> = ingress
            .iter()
            .flat_map(|r| r.ports.iter().flatten())
            .map(|p| p.port.clone())
            .collect();
        assert_eq!(
            ports,
            [Some(
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(
                    "metrics".to_owned()
                )
            )],
            "{set}"
        );
        let named = args
            .iter()
            .find_map(|a| a.strip_prefix("--operator-pod-labels="))
            .expect("--operator-pod-labels");
        for pair in named.split(',') {
            let (k, v) = pair.split_once('=').expect("key=value");
            assert_eq!(
                template_labels.get(k).map(String::as_str),
                Some(v),
                "{set}: {pair}"
            );
        }
    }
}

/// The operator pod template's labels.
fn deployment_labels(objects: &[Value]) -> BTreeMap<String, String> {
    let deployment: Deployment = objects
        .iter()
        .find(|o| kind(o) == "Deployment")
        .map(|o| serde_yaml::from_value(o.clone()).expect("Deployment"))
        .expect("a Deployment");
    deployment
        .spec
        .and_then(|s| s.template.metadata)
        .and_then(|m| m.labels)
        .unwrap_or_default()
}

#[test]
fn a_watched_namespace_gets_a_role_not_a_cluster_role() {
    let objects = render(&["--set", "operator.watchNamespace=support"]);
    assert!(
        !objects
            .iter()
            .any(|o| kind(o) == "ClusterRole" && !aggregated(o)),
        "the operator gets no ClusterRole"
    );
    let role = objects
        .iter()
        .find(|o| kind(o) == "Role" && o["metadata"]["namespace"].as_str() == Some("support"))
        .expect("a Role in the watched namespace");
    assert!(!rules_of(role).is_empty());
}

#[test]
fn values_outside_the_schema_are_refused() {
    for (args, needle) in [
        (
            vec!["--set", "operatorr.logLevel=debug"],
            "additional properties",
        ),
        (
            vec!["--set", "operator.prometheusUrl=prometheus:9090"],
            "prometheusUrl",
        ),
        (vec!["--set", "replicaCount=0"], "replicaCount"),
        (
            vec![
                "--set",
                "monitoring.prometheusRule.rules.documentRetrievalDrop=1.5",
            ],
            "documentRetrievalDrop",
        ),
    ] {
        let mut full = vec!["template", "switchboard", "."];
        full.extend_from_slice(&args);
        let output = Command::new(tool("helm"))
            .current_dir(chart_dir())
            .args(&full)
            .output()
            .expect("helm");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

fn full_prometheus_rule() -> Value {
    render(&["-f", "ci/full-values.yaml"])
        .into_iter()
        .find(|o| kind(o) == "PrometheusRule")
        .expect("the full values render a PrometheusRule")
}

#[test]
fn promtool_accepts_the_alert_rules() {
    let rule = full_prometheus_rule();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("switchboard.rules.yaml");
    let mut groups = serde_yaml::Mapping::new();
    groups.insert("groups".into(), rule_groups(&rule).clone());
    std::fs::write(&file, serde_yaml::to_string(&groups).expect("yaml")).expect("write rules");
    let output = Command::new(tool("promtool"))
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{text}");
    let alerts = alert_expressions(&rule).len();
    assert!(
        text.contains(&format!("SUCCESS: {alerts} rules found")),
        "{text}"
    );
}

#[test]
fn dashboard_and_alerts_read_only_documented_series() {
    let documented = documented_metric_names();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(chart_dir().join("files/dashboards/switchboard-overview.json"))
            .expect("dashboard JSON"),
    )
    .expect("dashboard is JSON");
    let mut expressions = dashboard_expressions(&dashboard);
    expressions.extend(alert_expressions(&full_prometheus_rule()));
    assert!(expressions.len() > 40, "{} expressions", expressions.len());
    let mut used = BTreeSet::new();
    for expression in &expressions {
        let names = metric_names(&expression.promql);
        assert!(
            !names.is_empty(),
            "{}: reads no switchboard series",
            expression.origin
        );
        for metric in names {
            assert!(
                documented.contains(&metric),
                "{}: {metric} is not in docs/metrics.md",
                expression.origin
            );
            used.insert(metric);
        }
    }
    // The questions of issue 8 each have a panel or an alert.
    for needed in [
        "switchboard_interactions_total",
        "switchboard_route_decisions_total",
        "switchboard_feedback_total",
        "switchboard_answer_seconds",
        "switchboard_retrieval_failures_total",
        "switchboard_adapter_rollout_phase",
        "switchboard_adapter_canary_weight",
        "switchboard_adapter_rollbacks_total",
        "switchboard_experiment_samples",
        "switchboard_experiment_required_samples",
        "switchboard_shadow_checks_total",
        "switchboard_document_retrievals_total",
        "switchboard_knowledge_base_index_builds_total",
        "switchboard_operator_reconciles_total",
    ] {
        assert!(used.contains(needed), "nothing shows {needed}");
    }
}

#[test]
fn the_dashboard_ships_in_a_configmap_with_the_sidecar_label() {
    let objects = render(&[]);
    let configmap = objects
        .iter()
        .find(|o| kind(o) == "ConfigMap" && name(o).ends_with("-dashboard"))
        .expect("dashboard ConfigMap");
    assert_eq!(
        configmap["metadata"]["labels"]["grafana_dashboard"].as_str(),
        Some("1")
    );
    let json = configmap["data"]["switchboard-overview.json"]
        .as_str()
        .expect("dashboard data");
    let shipped: serde_json::Value = serde_json::from_str(json).expect("valid JSON");
    let file: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(chart_dir().join("files/dashboards/switchboard-overview.json"))
            .expect("dashboard JSON"),
    )
    .expect("JSON");
    assert_eq!(shipped, file);
    assert_eq!(shipped["uid"], "switchboard-overview");
}

#[test]
fn the_dashboard_file_is_what_its_generator_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = chart_dir().join("hack/dashboard.py");
    let status = Command::new("python3")
        .arg(&script)
        .env("SWITCHBOARD_DASHBOARD_OUT", dir.path().join("d.json"))
        .current_dir(root())
        .status()
        .expect("python3");
    assert!(status.success());
    let generated = std::fs::read_to_string(dir.path().join("d.json")).expect("generated");
    let committed =
        std::fs::read_to_string(chart_dir().join("files/dashboards/switchboard-overview.json"))
            .expect("committed");
    assert!(
        generated == committed,
        "files/dashboards/switchboard-overview.json is stale: run python3 charts/switchboard/hack/dashboard.py"
    );
}

/// (apiGroup, resource) -> verbs of a list of rules.
fn permissions(rules: &[PolicyRule]) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut out: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for rule in rules {
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                out.entry((group.clone(), resource.clone()))
                    .or_default()
                    .extend(rule.verbs.iter().cloned());
            }
        }
    }
    out
}

#[test]
fn rendered_rbac_is_exactly_what_the_operator_declares() {
    let declared: BTreeMap<(String, String), BTreeSet<String>> = RBAC_RULES
        .iter()
        .map(|r| {
            (
                (r.api_group.to_owned(), r.resource.to_owned()),
                r.verbs.iter().map(|v| (*v).to_owned()).collect(),
            )
        })
        .collect();
    for (set, values) in VALUE_SETS {
        let objects = render(values);
        // The operator's roles; the aggregated ones are people's (checked on the real
        // apiserver below).
        let roles: Vec<&Value> = objects
            .iter()
            .filter(|o| matches!(kind(o), "ClusterRole" | "Role") && !aggregated(o))
            .collect();
        let all: Vec<PolicyRule> = roles.iter().flat_map(|r| rules_of(r)).collect();
        assert_eq!(permissions(&all), declared, "{set}");
        // The Lease is granted in the leader-election namespace only; Secrets never through a
        // ClusterRoleBinding: the `-secrets` ClusterRole is bound per namespace, or (one watched
        // namespace) they are in that namespace's Role.
        for role in roles {
            let granted = permissions(&rules_of(role));
            let leases = granted.keys().any(|(_, resource)| resource == "leases");
            let leader_role = name(role).ends_with("-leader-election");
            assert_eq!(leases, leader_role, "{set}: {}", name(role));
            let secrets = granted.keys().any(|(_, resource)| resource == "secrets");
            if kind(role) == "ClusterRole" {
                assert_eq!(
                    secrets,
                    name(role).ends_with("-secrets"),
                    "{set}: {}",
                    name(role)
                );
            }
        }
        for binding in objects.iter().filter(|o| kind(o) == "ClusterRoleBinding") {
            let role = binding["roleRef"]["name"].as_str().unwrap_or_default();
            assert!(
                !role.ends_with("-secrets"),
                "{set}: Secrets bound cluster-wide"
            );
        }
    }
}

#[test]
fn secrets_are_granted_only_in_the_listed_namespaces() {
    let objects = render(&["--set", "rbac.secretNamespaces={support,billing}"]);
    let bound: Vec<(&str, &str)> = objects
        .iter()
        .filter(|o| kind(o) == "RoleBinding" && name(o).ends_with("-secrets"))
        .map(|o| {
            (
                o["metadata"]["namespace"].as_str().unwrap_or_default(),
                o["roleRef"]["name"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        bound,
        [
            ("support", "switchboard-operator-secrets"),
            ("billing", "switchboard-operator-secrets")
        ]
    );
    let role = objects
        .iter()
        .find(|o| kind(o) == "ClusterRole" && name(o) == "switchboard-operator-secrets")
        .expect("the Secrets ClusterRole");
    let granted = permissions(&rules_of(role));
    assert_eq!(
        granted.keys().collect::<Vec<_>>(),
        [&(String::new(), "secrets".to_owned())]
    );
    // Names a values file could get wrong are refused at install time.
    let output = Command::new(tool("helm"))
        .current_dir(chart_dir())
        .args([
            "template",
            "x",
            ".",
            "--set",
            "rbac.secretNamespaces={Support}",
        ])
        .output()
        .expect("helm");
    assert!(
        !output.status.success(),
        "an invalid namespace name passed the schema"
    );
}

// --- The chart on the real kube-apiserver ------------------------------------------------------

/// A minimal stand-in for one of the Prometheus Operator's CRDs (the full values create a
/// ServiceMonitor and a PrometheusRule; their content is checked against the real schemas' rules
/// above): `monitoring.coreos.com/v1`, any content.
fn monitoring_crd(kind: &str) -> String {
    let plural = format!("{}s", kind.to_lowercase());
    format!(
        r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {{ name: {plural}.monitoring.coreos.com }}
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {{ kind: {kind}, plural: {plural}, singular: {singular}, listKind: {kind}List }}
  versions:
    - name: v1
      served: true
      storage: true
      schema: {{ openAPIV3Schema: {{ type: object, x-kubernetes-preserve-unknown-fields: true }} }}
---
"#,
        singular = kind.to_lowercase()
    )
}

/// A role whose rules Kubernetes aggregates into its default user-facing roles.
fn aggregated(object: &Value) -> bool {
    object["metadata"]["labels"]
        .as_mapping()
        .is_some_and(|labels| {
            labels.keys().any(|k| {
                k.as_str()
                    .is_some_and(|k| k.starts_with("rbac.authorization.k8s.io/aggregate-to-"))
            })
        })
}

/// `kubectl auth can-i` as `user` in `namespace`.
fn can_i(
    plane: &switchboard_testkit::controlplane::ControlPlane,
    user: &str,
    verb: &str,
    resource: &str,
    namespace: &str,
) -> bool {
    // `routers.switchboard.dev/status` is `routers.switchboard.dev --subresource=status`.
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, sub)) => (r, Some(sub)),
        None => (resource, None),
    };
    let mut command = plane.kubectl_command();
    command.args([
        "auth", "can-i", verb, resource, "--as", user, "-n", namespace,
    ]);
    if let Some(sub) = subresource {
        command.arg(format!("--subresource={sub}"));
    }
    let out = command.output().expect("kubectl");
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

/// The ServiceAccount the chart renders with `values`.
fn service_account(values: &[&str]) -> String {
    let objects = render(values);
    let sa = objects
        .iter()
        .find(|o| kind(o) == "ServiceAccount")
        .expect("a ServiceAccount");
    format!("system:serviceaccount:switchboard-system:{}", name(sa))
}

/// `helm install` with the default values, then `helm upgrade` to the full ones, into the real
/// control plane: the CRDs become Established, every object is accepted, and the operator's
/// ServiceAccount may do exactly what the operator declares (`RBAC_RULES`): every declared verb,
/// and not the escalations a compromised operator would want.
#[test]
fn the_chart_installs_and_upgrades_on_the_real_apiserver() {
    let plane = switchboard_testkit::controlplane::ControlPlane::shared();
    let kubeconfig = plane.kubeconfig();
    let kubeconfig = kubeconfig.to_str().unwrap();
    let install = helm(&[
        "install",
        "switchboard",
        ".",
        "--namespace",
        "switchboard-system",
        "--create-namespace",
        "--kubeconfig",
        kubeconfig,
    ]);
    assert!(install.contains("STATUS: deployed"), "{install}");
    plane
        .kubectl(&[
            "wait",
            "--for=condition=Established",
            "crd/knowledgebases.switchboard.dev",
            "crd/adapterpatches.switchboard.dev",
            "crd/routers.switchboard.dev",
            "crd/experiments.switchboard.dev",
            "--timeout=120s",
        ])
        .unwrap();
    plane
        .kubectl(&[
            "get",
            "deployment",
            "-n",
            "switchboard-system",
            "-o",
            "name",
        ])
        .unwrap();

    let user = service_account(&[]);
    let mut denied = Vec::new();
    for rule in RBAC_RULES {
        let (plural, subresource) = match rule.resource.split_once('/') {
            Some((plural, sub)) => (plural, format!("/{sub}")),
            None => (rule.resource, String::new()),
        };
        let resource = if rule.api_group.is_empty() {
            format!("{plural}{subresource}")
        } else {
            format!("{plural}.{}{subresource}", rule.api_group)
        };
        // Leases in the release's namespace (leader election), Secrets nowhere until a
        // namespace's owner grants them, the rest anywhere (default values watch every
        // namespace).
        let namespace = match rule.grant() {
            Grant::LeaderElection => "switchboard-system",
            Grant::PerNamespace => {
                for verb in rule.verbs {
                    assert!(
                        !can_i(plane, &user, verb, &resource, "support"),
                        "{user} may {verb} {resource} in support without a grant"
                    );
                }
                continue;
            }
            Grant::Watched => "support",
        };
        for verb in rule.verbs {
            if !can_i(plane, &user, verb, &resource, namespace) {
                denied.push(format!("{verb} {resource} in {namespace}"));
            }
        }
    }
    assert!(denied.is_empty(), "{user} may not: {denied:#?}");
    // A namespace's owner grants Secrets in theirs, as docs/install.md shows; other namespaces
    // stay closed.
    plane.kubectl(&["create", "namespace", "support"]).unwrap();
    plane
        .kubectl(&[
            "create",
            "rolebinding",
            "switchboard-operator-secrets",
            "-n",
            "support",
            "--clusterrole=switchboard-operator-secrets",
            "--serviceaccount=switchboard-system:switchboard-operator",
        ])
        .unwrap();
    for rule in RBAC_RULES
        .iter()
        .filter(|r| r.grant() == Grant::PerNamespace)
    {
        for verb in rule.verbs {
            assert!(
                can_i(plane, &user, verb, rule.resource, "support"),
                "{verb} {}",
                rule.resource
            );
            assert!(
                !can_i(plane, &user, verb, rule.resource, "default"),
                "{verb} {} in default",
                rule.resource
            );
        }
    }
    for (verb, resource) in [
        ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
        ("escalate", "clusterroles.rbac.authorization.k8s.io"),
        ("delete", "customresourcedefinitions.apiextensions.k8s.io"),
        ("create", "pods/exec"),
        ("delete", "namespaces"),
    ] {
        assert!(
            !can_i(plane, &user, verb, resource, "support"),
            "{user} may {verb} {resource}"
        );
    }

    // Upgrade to every optional part: a watched namespace (a Role there, not a ClusterRole), two
    // replicas, ServiceMonitor and PrometheusRule, the dashboard ConfigMap in `monitoring`.
    plane
        .kubectl(&["create", "namespace", "monitoring"])
        .unwrap();
    let crds = std::env::temp_dir().join(format!("monitoring-crds-{}.yaml", std::process::id()));
    std::fs::write(
        &crds,
        monitoring_crd("ServiceMonitor") + &monitoring_crd("PrometheusRule"),
    )
    .unwrap();
    plane
        .kubectl(&["apply", "--server-side", "-f", crds.to_str().unwrap()])
        .unwrap();
    std::fs::remove_file(&crds).ok();
    plane
        .kubectl(&[
            "wait",
            "--for=condition=Established",
            "crd/servicemonitors.monitoring.coreos.com",
            "crd/prometheusrules.monitoring.coreos.com",
            "--timeout=60s",
        ])
        .unwrap();
    let upgrade = helm(&[
        "upgrade",
        "switchboard",
        ".",
        "--namespace",
        "switchboard-system",
        "-f",
        "ci/full-values.yaml",
        "--kubeconfig",
        kubeconfig,
    ]);
    assert!(upgrade.contains("REVISION: 2"), "{upgrade}");
    let replicas = plane
        .kubectl(&[
            "get",
            "deployments",
            "-n",
            "switchboard-system",
            "-o",
            "jsonpath={.items[*].spec.replicas}",
        ])
        .unwrap();
    assert_eq!(replicas.trim(), "2");
    for kind in ["servicemonitor", "prometheusrule"] {
        plane
            .kubectl(&["get", kind, "-n", "switchboard-system", "-o", "name"])
            .unwrap_or_else(|e| panic!("{kind} after the upgrade: {e}"));
    }
    let user = service_account(&["-f", "ci/full-values.yaml"]);
    assert!(can_i(
        plane,
        &user,
        "watch",
        "routers.switchboard.dev",
        "support"
    ));
    assert!(
        !can_i(plane, &user, "watch", "routers.switchboard.dev", "default"),
        "with watchNamespace: support the operator may not read other namespaces"
    );

    // People bound to the default roles in `support` get the four kinds through aggregation
    // (kube-controller-manager's clusterrole-aggregation controller): `view` reads them and
    // their status, `edit` also writes them; neither writes status, the operator's own.
    for (user, role) in [("viewer", "view"), ("editor", "edit")] {
        plane
            .kubectl(&[
                "create",
                "rolebinding",
                &format!("{user}-{role}"),
                &format!("--clusterrole={role}"),
                &format!("--user={user}"),
                "-n",
                "support",
            ])
            .unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !can_i(
        plane,
        "editor",
        "create",
        "adapterpatches.switchboard.dev",
        "support",
    ) {
        assert!(
            std::time::Instant::now() < deadline,
            "the edit role never gained the four kinds"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    for plural in ["knowledgebases", "adapterpatches", "routers", "experiments"] {
        let resource = format!("{plural}.switchboard.dev");
        let status = format!("{resource}/status");
        for verb in ["get", "list", "watch"] {
            assert!(
                can_i(plane, "viewer", verb, &resource, "support"),
                "viewer {verb} {resource}"
            );
        }
        assert!(
            can_i(plane, "viewer", "get", &status, "support"),
            "viewer get {status}"
        );
        for verb in ["create", "patch", "delete"] {
            assert!(
                !can_i(plane, "viewer", verb, &resource, "support"),
                "viewer may {verb} {resource}"
            );
            assert!(
                can_i(plane, "editor", verb, &resource, "support"),
                "editor {verb} {resource}"
            );
        }
        assert!(
            !can_i(plane, "editor", "patch", &status, "support"),
            "editor may patch {status}"
        );
        assert!(
            !can_i(plane, "viewer", "list", &resource, "default"),
            "viewer outside its namespace"
        );
    }
}
