//! Pure builders of a Router's children: the RuntimeConfig ConfigMap, the runtime Deployment and
//! Service, and the Router's status.

use std::collections::{BTreeMap, BTreeSet};

use crate::names::{
    ADMIN_PORT, ADMIN_TOKEN_KEY, ARTIFACTS_DIR, CLIENT_TOKENS_DIR, CONFIG_DIR, DATA_DIR, GRPC_PORT,
    HTTP_PORT, OUTCOME_STORE_ENV, PVC_DIR, REVISION_ANNOTATION, SECRETS_DIR, STATE_DIR, TOKEN_DIR,
    TOKEN_KEY, UNIT_KEY_KEY, admin_service_name, index_claim_name, labels, runtime_name,
    selector_labels, token_secret_name,
};
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment},
        core::v1::{
            ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
            EnvVar, EnvVarSource, HTTPGetAction, PersistentVolumeClaimVolumeSource, PodSpec,
            PodTemplateSpec, Probe, SecretKeySelector, SecretVolumeSource, Service, ServicePort,
            ServiceSpec, Volume, VolumeMount,
        },
        networking::v1::{
            NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
            NetworkPolicySpec,
        },
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};
use switchboard_crds::{
    Router,
    router::OutcomeStore,
    runtime_config::{FILE_NAME, RuntimeConfig},
};

/// What the runtime pods mount for the compiled config beyond the fixed volumes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigVolumes {
    /// Claims named by `pvc://` adapter artifacts and by a `pvc://` rerank model, mounted
    /// read-only at `<PVC_DIR>/<claim>`.
    pub claims: BTreeSet<String>,
    /// Pull Secrets of `oci://` adapter artifacts, mounted read-only (optional: a missing one is
    /// the artifact check's to report) at `<SECRETS_DIR>/<name>`.
    pub pull_secrets: BTreeSet<String>,
}

impl ConfigVolumes {
    /// The claims and Secrets `config` reads: every adapter version it serves (stable, canary,
    /// shadow, and so the versions its experiments pin) and the rerank model while rerank is on.
    pub fn of(config: &RuntimeConfig) -> Self {
        let mut volumes = Self::default();
        for adapter in &config.adapters {
            if let Some(claim) = adapter
                .artifact
                .uri
                .as_deref()
                .and_then(switchboard_artifact::pvc_claim)
            {
                volumes.claims.insert(claim);
            }
            if let Some(secret) = &adapter.artifact.pull_secret {
                volumes.pull_secrets.insert(secret.clone());
            }
        }
        let rerank = &config.knowledge_base.retrieval.rerank;
        if let Some(claim) = rerank
            .model
            .as_deref()
            .filter(|_| rerank.enabled)
            .and_then(switchboard_artifact::pvc_claim)
        {
            volumes.claims.insert(claim);
        }
        volumes
    }
}

/// What the builders need from the Router.
#[derive(Clone, Debug)]
pub struct RouterChildren<'a> {
    /// The Router.
    pub router: &'a Router,
    /// Its name.
    pub name: &'a str,
    /// Its namespace.
    pub namespace: &'a str,
    /// The image when the Router names none.
    pub default_image: &'a str,
    /// Internal address blocks adapter artifacts may come from (the operator's `--egress-allow`).
    pub egress_allow: Option<&'a str>,
    /// The operator's pods, as a NetworkPolicy peer: the only callers of the admin port.
    pub operator: &'a NetworkPolicyPeer,
}

impl RouterChildren<'_> {
    fn meta(&self, name: String, extra: BTreeMap<String, String>) -> ObjectMeta {
        crate::child::child_meta(self.router, name, self.namespace, labels(self.name), extra)
    }

    /// The ConfigMap holding the compiled RuntimeConfig (`runtime-config.json`).
    pub fn config_map(&self, config: &RuntimeConfig) -> Result<ConfigMap, serde_json::Error> {
        let json = serde_json::to_string_pretty(config)?;
        Ok(ConfigMap {
            metadata: self.meta(
                runtime_name(self.name),
                BTreeMap::from([(REVISION_ANNOTATION.to_owned(), config.revision.clone())]),
            ),
            data: Some(BTreeMap::from([(FILE_NAME.to_owned(), json)])),
            ..ConfigMap::default()
        })
    }

    /// The runtime Deployment. The config is mounted as a directory (no `subPath`), so a new
    /// RuntimeConfig reaches running pods, which hot-reload it: the pod template carries no
    /// config hash and does not change when adapters or experiments do — except that a newly
    /// referenced claim or pull Secret (`config_volumes`) is a new volume, which rolls the pods.
    pub fn deployment(&self, knowledge_base: &str, config_volumes: &ConfigVolumes) -> Deployment {
        let spec = &self.router.spec;
        let image = spec
            .image
            .clone()
            .unwrap_or_else(|| self.default_image.to_owned());
        let index_mount = format!("{DATA_DIR}/{knowledge_base}");
        let http_probe = |path: &str, period: i32, failures: i32| Probe {
            http_get: Some(HTTPGetAction {
                path: Some(path.to_owned()),
                port: IntOrString::String("http".to_owned()),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(period),
            failure_threshold: Some(failures),
            timeout_seconds: Some(2),
            ..Probe::default()
        };
        let mount = |name: &str, path: &str, read_only: bool| VolumeMount {
            name: name.to_owned(),
            mount_path: path.to_owned(),
            read_only: Some(read_only),
            ..VolumeMount::default()
        };
        let mut volume_mounts = vec![
            mount("config", CONFIG_DIR, true),
            mount("index", &index_mount, true),
            mount("artifacts", ARTIFACTS_DIR, false),
            mount("state", STATE_DIR, false),
            mount("token", TOKEN_DIR, true),
            mount("tmp", "/tmp", false),
        ];
        // The endpoint's API key: the whole Secret, not a subPath, so kubelet updates the files
        // of a rotated key in place (the runtime reads the key when it applies a RuntimeConfig).
        let endpoint_secret = spec
            .large_model
            .endpoint
            .as_ref()
            .and_then(|e| e.secret_ref.as_ref());
        if let Some(secret) = endpoint_secret {
            volume_mounts.push(mount(
                "endpoint-secret",
                &format!("{SECRETS_DIR}/{}", secret.name),
                true,
            ));
        }
        // Pull Secrets share the secrets directory; one that is also the endpoint's is mounted
        // once.
        let pull_secrets: Vec<&String> = config_volumes
            .pull_secrets
            .iter()
            .filter(|s| endpoint_secret.is_none_or(|e| e.name != **s))
            .collect();
        for (i, secret) in pull_secrets.iter().enumerate() {
            volume_mounts.push(mount(
                &format!("pull-secret-{i}"),
                &format!("{SECRETS_DIR}/{secret}"),
                true,
            ));
        }
        if spec.access.client_tokens.is_some() {
            volume_mounts.push(mount("client-tokens", CLIENT_TOKENS_DIR, true));
        }
        for (i, claim) in config_volumes.claims.iter().enumerate() {
            volume_mounts.push(mount(
                &format!("pvc-{i}"),
                &format!("{PVC_DIR}/{claim}"),
                true,
            ));
        }
        let container = Container {
            name: "runtime".to_owned(),
            image: Some(image),
            args: Some(
                runtime_args()
                    .into_iter()
                    .chain(outcome_store_args(&spec.outcome_store))
                    .chain(client_token_args(spec))
                    .collect(),
            ),
            env: Some(
                std::iter::once(EnvVar {
                    name: "RUST_LOG".to_owned(),
                    value: Some("info".to_owned()),
                    ..EnvVar::default()
                })
                .chain(outcome_store_env(&spec.outcome_store))
                .chain(crate::pod::egress_env(self.egress_allow))
                .collect(),
            ),
            ports: Some(vec![
                ContainerPort {
                    name: Some("grpc".to_owned()),
                    container_port: GRPC_PORT,
                    protocol: Some("TCP".to_owned()),
                    ..ContainerPort::default()
                },
                ContainerPort {
                    name: Some("http".to_owned()),
                    container_port: HTTP_PORT,
                    protocol: Some("TCP".to_owned()),
                    ..ContainerPort::default()
                },
                ContainerPort {
                    name: Some("admin".to_owned()),
                    container_port: ADMIN_PORT,
                    protocol: Some("TCP".to_owned()),
                    ..ContainerPort::default()
                },
            ]),
            // Model loading takes a while: the startup probe gives it up to 10 minutes before
            // liveness takes over.
            startup_probe: Some(http_probe("/healthz", 5, 120)),
            liveness_probe: Some(http_probe("/healthz", 10, 3)),
            readiness_probe: Some(http_probe("/readyz", 5, 2)),
            resources: spec.resources.clone(),
            security_context: Some(crate::pod::container_security(true)),
            volume_mounts: Some(volume_mounts),
            ..Container::default()
        };
        let mut volumes = vec![
            Volume {
                name: "config".to_owned(),
                config_map: Some(ConfigMapVolumeSource {
                    name: runtime_name(self.name),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            },
            Volume {
                name: "index".to_owned(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: index_claim_name(knowledge_base),
                    read_only: Some(true),
                }),
                ..Volume::default()
            },
            Volume {
                name: "artifacts".to_owned(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            },
            Volume {
                name: "token".to_owned(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(token_secret_name(self.name)),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            },
            Volume {
                name: "tmp".to_owned(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            },
            Volume {
                name: "state".to_owned(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            },
        ];
        if let Some(secret) = endpoint_secret {
            // A missing Secret (reported on the Router) must not keep the pods from starting:
            // the small model serves, the endpoint is called without a key.
            volumes.push(secret_volume("endpoint-secret", &secret.name, true));
        }
        if let Some(secret) = &spec.access.client_tokens {
            // Not optional: a runtime without its client tokens must not start (it would serve
            // the public API to anyone); the Router says the Secret is missing.
            volumes.push(secret_volume("client-tokens", &secret.name, false));
        }
        for (i, secret) in pull_secrets.iter().enumerate() {
            volumes.push(secret_volume(&format!("pull-secret-{i}"), secret, true));
        }
        for (i, claim) in config_volumes.claims.iter().enumerate() {
            volumes.push(Volume {
                name: format!("pvc-{i}"),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.clone(),
                    read_only: Some(true),
                }),
                ..Volume::default()
            });
        }
        let pod_annotations = BTreeMap::from([
            ("prometheus.io/scrape".to_owned(), "true".to_owned()),
            ("prometheus.io/port".to_owned(), HTTP_PORT.to_string()),
            ("prometheus.io/path".to_owned(), "/metrics".to_owned()),
        ]);
        Deployment {
            metadata: self.meta(runtime_name(self.name), BTreeMap::new()),
            spec: Some(DeploymentSpec {
                replicas: Some(spec.replicas),
                selector: LabelSelector {
                    match_labels: Some(selector_labels(self.name)),
                    ..LabelSelector::default()
                },
                strategy: Some(DeploymentStrategy {
                    type_: Some("RollingUpdate".to_owned()),
                    rolling_update: Some(RollingUpdateDeployment {
                        max_unavailable: Some(IntOrString::Int(0)),
                        max_surge: Some(IntOrString::Int(1)),
                    }),
                }),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels(self.name)),
                        annotations: Some(pod_annotations),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(PodSpec {
                        containers: vec![container],
                        volumes: Some(volumes),
                        security_context: Some(crate::pod::pod_security()),
                        // The runtime never calls the Kubernetes API: no token in its pods.
                        automount_service_account_token: Some(false),
                        // In-flight answers finish before the pod goes (the runtime drains on
                        // SIGTERM).
                        termination_grace_period_seconds: Some(60),
                        ..PodSpec::default()
                    }),
                },
                ..DeploymentSpec::default()
            }),
            status: None,
        }
    }

    /// The Service in front of the runtime pods: the public API (gRPC and HTTP), never the
    /// admin port.
    pub fn service(&self) -> Service {
        self.service_of(
            runtime_name(self.name),
            vec![
                service_port("grpc", GRPC_PORT),
                service_port("http", HTTP_PORT),
            ],
        )
    }

    /// The Service the operator reaches the admin API through (`<router>-runtime-admin`, the
    /// admin port only; the NetworkPolicy admits the operator's pods alone).
    pub fn admin_service(&self) -> Service {
        self.service_of(
            admin_service_name(self.name),
            vec![service_port("admin", ADMIN_PORT)],
        )
    }

    fn service_of(&self, name: String, ports: Vec<ServicePort>) -> Service {
        Service {
            metadata: self.meta(name, BTreeMap::new()),
            spec: Some(ServiceSpec {
                selector: Some(selector_labels(self.name)),
                ports: Some(ports),
                type_: Some("ClusterIP".to_owned()),
                ..ServiceSpec::default()
            }),
            status: None,
        }
    }

    /// The runtime pods' NetworkPolicy (`<router>-runtime`), unless `spec.access.networkPolicy`
    /// is off: the public ports from `spec.access.allowFrom` (default: the Router's namespace),
    /// the admin port from the operator only, nothing else.
    pub fn network_policy(&self) -> Option<NetworkPolicy> {
        let access = &self.router.spec.access;
        if !access.network_policy {
            return None;
        }
        let port = |name: &str| NetworkPolicyPort {
            port: Some(IntOrString::String(name.to_owned())),
            protocol: Some("TCP".to_owned()),
            ..NetworkPolicyPort::default()
        };
        let clients = if access.allow_from.is_empty() {
            // Every pod of the Router's namespace.
            vec![NetworkPolicyPeer {
                pod_selector: Some(LabelSelector::default()),
                ..NetworkPolicyPeer::default()
            }]
        } else {
            access.allow_from.clone()
        };
        Some(NetworkPolicy {
            metadata: self.meta(runtime_name(self.name), BTreeMap::new()),
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(LabelSelector {
                    match_labels: Some(selector_labels(self.name)),
                    ..LabelSelector::default()
                }),
                policy_types: Some(vec!["Ingress".to_owned()]),
                ingress: Some(vec![
                    NetworkPolicyIngressRule {
                        from: Some(clients),
                        ports: Some(vec![port("grpc"), port("http")]),
                    },
                    NetworkPolicyIngressRule {
                        from: Some(vec![self.operator.clone()]),
                        ports: Some(vec![port("admin")]),
                    },
                ]),
                egress: None,
            }),
        })
    }
}

/// A volume of the whole Secret `secret` (no `subPath`, so the kubelet updates its files).
fn secret_volume(name: &str, secret: &str, optional: bool) -> Volume {
    Volume {
        name: name.to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_owned()),
            optional: Some(optional),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn service_port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        port,
        target_port: Some(IntOrString::String(name.to_owned())),
        protocol: Some("TCP".to_owned()),
        ..ServicePort::default()
    }
}

/// `--client-token-file` when the Router requires client tokens.
pub fn client_token_args(spec: &switchboard_crds::router::RouterSpec) -> Vec<String> {
    spec.access
        .client_tokens
        .as_ref()
        .map(|secret| {
            vec![
                "--client-token-file".to_owned(),
                format!("{CLIENT_TOKENS_DIR}/{}", secret.key),
            ]
        })
        .unwrap_or_default()
}

/// The runtime's command line in operator mode (the shared contract).
pub fn runtime_args() -> Vec<String> {
    [
        "serve",
        "--runtime-config",
        &format!("{CONFIG_DIR}/{FILE_NAME}"),
        "--data",
        DATA_DIR,
        "--artifacts",
        ARTIFACTS_DIR,
        "--token-key-file",
        &format!("{TOKEN_DIR}/{TOKEN_KEY}"),
        // The lifetime a rotation keeps replaced keys for (super::token_key).
        "--token-ttl",
        &format!("{}s", super::token_key::TOKEN_LIFETIME.as_secs()),
        "--secrets",
        SECRETS_DIR,
        "--pvc-root",
        PVC_DIR,
        "--grpc-addr",
        &format!("0.0.0.0:{GRPC_PORT}"),
        "--http-addr",
        &format!("0.0.0.0:{HTTP_PORT}"),
        "--admin-addr",
        &format!("0.0.0.0:{ADMIN_PORT}"),
        "--admin-token-file",
        &format!("{TOKEN_DIR}/{ADMIN_TOKEN_KEY}"),
        "--unit-key-file",
        &format!("{TOKEN_DIR}/{UNIT_KEY_KEY}"),
    ]
    .into_iter()
    .map(str::to_owned)
    .collect()
}

/// The outcome store's part of the command line: the retention, and without PostgreSQL the
/// per-pod SQLite file on the `state` volume (with PostgreSQL the URL comes from the environment,
/// [`outcome_store_env`]).
pub fn outcome_store_args(store: &OutcomeStore) -> Vec<String> {
    let mut args = vec![
        "--outcome-retention".to_owned(),
        store.retention.to_string(),
    ];
    if store.postgres.is_none() {
        args.push("--outcome-store".to_owned());
        args.push(format!("sqlite://{STATE_DIR}/outcomes.db"));
    }
    args
}

/// `SWITCHBOARD_OUTCOME_STORE` from the PostgreSQL Secret key, when the Router names one. Not
/// optional: a runtime that cannot reach the shared store would accept replayed feedback, so a
/// missing Secret keeps new pods from starting (the old ones serve on; the Router says why).
pub fn outcome_store_env(store: &OutcomeStore) -> Option<EnvVar> {
    let secret = store.postgres.as_ref()?;
    Some(EnvVar {
        name: OUTCOME_STORE_ENV.to_owned(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.name.clone(),
                key: secret.key.clone(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    })
}

#[cfg(test)]
mod tests {
    use crate::names::selector_string;
    use crate::router::status::{
        config_status, deployment_state, index_volume_shareable, outcome_store_shared,
    };
    use switchboard_crds::knowledge_base::AccessMode;
    use switchboard_crds::runtime_config::RuntimeConfig;

    use super::*;

    fn router(resources: bool) -> Router {
        let mut v = serde_json::json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "Router",
            "metadata": {"name": "frontline", "namespace": "support", "uid": "r-uid", "generation": 4},
            "spec": {
                "knowledgeBaseRef": {"name": "help"},
                "smallModel": {"model": "/models/smollm2.gguf"},
                "largeModel": {"endpoint": {"url": "https://llm.internal/v1", "model": "big"}},
                "replicas": 2,
            },
        });
        if resources {
            v["spec"]["resources"] = serde_json::json!({"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "6Gi"}});
        }
        serde_json::from_value(v).unwrap()
    }

    static OPERATOR: std::sync::LazyLock<NetworkPolicyPeer> = std::sync::LazyLock::new(|| {
        crate::pod::operator_peer(
            Some("switchboard-system"),
            BTreeMap::from([(
                "app.kubernetes.io/component".to_owned(),
                "operator".to_owned(),
            )]),
        )
    });

    fn children(r: &Router) -> RouterChildren<'_> {
        RouterChildren {
            router: r,
            name: "frontline",
            namespace: "support",
            default_image: "runtime:0.1.0",
            egress_allow: None,
            operator: &OPERATOR,
        }
    }

    #[test]
    fn the_admin_port_is_for_the_operator_only() {
        let r = router(false);
        let c = children(&r);
        // The Router's Service never exposes the admin port; its own Service does, alone.
        let ports = |s: Service| -> Vec<(String, i32)> {
            s.spec
                .unwrap()
                .ports
                .unwrap()
                .iter()
                .map(|p| (p.name.clone().unwrap(), p.port))
                .collect()
        };
        assert!(!ports(c.service()).iter().any(|(n, _)| n == "admin"));
        let admin = c.admin_service();
        assert_eq!(
            admin.metadata.name.as_deref(),
            Some("frontline-runtime-admin")
        );
        assert_eq!(ports(admin), [("admin".to_owned(), 8081)]);
        // The runtime listens there with the admin token of the Router's token Secret.
        let args = runtime_args().join(" ");
        assert!(args.contains("--admin-addr 0.0.0.0:8081"), "{args}");
        assert!(
            args.contains("--admin-token-file /var/run/switchboard/token/admin-token"),
            "{args}"
        );
        // Public ports from the Router's namespace (the default), the admin port from the
        // operator's pods in the operator's namespace, nothing else.
        let policy = c.network_policy().expect("a NetworkPolicy by default");
        assert_eq!(policy.metadata.name.as_deref(), Some("frontline-runtime"));
        let spec = policy.spec.unwrap();
        assert_eq!(
            spec.pod_selector.unwrap().match_labels,
            Some(selector_labels("frontline"))
        );
        assert_eq!(spec.policy_types, Some(vec!["Ingress".to_owned()]));
        let rules = spec.ingress.unwrap();
        let names = |rule: &NetworkPolicyIngressRule| -> Vec<String> {
            rule.ports
                .iter()
                .flatten()
                .filter_map(|p| match &p.port {
                    Some(IntOrString::String(n)) => Some(n.clone()),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(rules.len(), 2);
        assert_eq!(names(&rules[0]), ["grpc", "http"]);
        let same_namespace = NetworkPolicyPeer {
            pod_selector: Some(LabelSelector::default()),
            ..NetworkPolicyPeer::default()
        };
        assert_eq!(rules[0].from, Some(vec![same_namespace]));
        assert_eq!(names(&rules[1]), ["admin"]);
        assert_eq!(rules[1].from, Some(vec![OPERATOR.clone()]));
        let operator = &rules[1].from.as_ref().unwrap()[0];
        assert_eq!(
            operator
                .namespace_selector
                .as_ref()
                .and_then(|s| s.match_labels.as_ref())
                .map(|l| l["kubernetes.io/metadata.name"].as_str()),
            Some("switchboard-system")
        );
    }

    #[test]
    fn access_names_the_clients_and_their_tokens() {
        let mut r = router(false);
        r.spec.access = serde_json::from_value(serde_json::json!({
            "clientTokens": {"name": "helpdesk-tokens", "key": "tokens"},
            "allowFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "helpdesk"}}}],
        }))
        .unwrap();
        let c = children(&r);
        let rules = c.network_policy().unwrap().spec.unwrap().ingress.unwrap();
        assert_eq!(rules[0].from, Some(r.spec.access.allow_from.clone()));
        let d = c.deployment("help", &ConfigVolumes::default());
        let pod = d.spec.unwrap().template.spec.unwrap();
        let container = &pod.containers[0];
        let args = container.args.clone().unwrap().join(" ");
        assert!(
            args.contains("--client-token-file /var/run/switchboard/client-tokens/tokens"),
            "{args}"
        );
        let volume = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "client-tokens")
            .expect("client-tokens volume");
        let secret = volume.secret.unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("helpdesk-tokens"));
        assert_eq!(secret.optional, Some(false));
        assert!(
            container
                .volume_mounts
                .iter()
                .flatten()
                .any(|m| m.name == "client-tokens" && m.read_only == Some(true))
        );
        // Turned off (a mesh decides): no policy; the operator deletes an earlier one.
        r.spec.access.network_policy = false;
        assert!(children(&r).network_policy().is_none());
    }

    #[test]
    fn children_carry_names_labels_and_a_controller_owner() {
        let r = router(false);
        let c = children(&r);
        let d = c.deployment("help", &ConfigVolumes::default());
        let s = c.service();
        for meta in [&d.metadata, &s.metadata] {
            assert_eq!(meta.name.as_deref(), Some("frontline-runtime"));
            assert_eq!(meta.namespace.as_deref(), Some("support"));
            let labels = meta.labels.as_ref().unwrap();
            assert_eq!(labels["app.kubernetes.io/name"], "switchboard-runtime");
            assert_eq!(labels["app.kubernetes.io/instance"], "frontline");
            assert_eq!(labels["switchboard.dev/router"], "frontline");
            let owner = &meta.owner_references.as_ref().unwrap()[0];
            assert_eq!(
                (
                    owner.kind.as_str(),
                    owner.name.as_str(),
                    owner.uid.as_str(),
                    owner.controller
                ),
                ("Router", "frontline", "r-uid", Some(true))
            );
            assert_eq!(
                meta.annotations.as_ref().unwrap()
                    [switchboard_crds::annotations::PARENT_GENERATION],
                "4"
            );
        }
        let spec = s.spec.unwrap();
        assert_eq!(spec.selector.unwrap(), selector_labels("frontline"));
        let ports: Vec<_> = spec
            .ports
            .unwrap()
            .iter()
            .map(|p| (p.name.clone().unwrap(), p.port))
            .collect();
        assert_eq!(
            ports,
            [("grpc".to_owned(), 50051), ("http".to_owned(), 8080)]
        );
        assert_eq!(
            selector_string("frontline"),
            "app.kubernetes.io/instance=frontline,app.kubernetes.io/name=switchboard-runtime"
        );
    }

    #[test]
    fn deployment_runs_the_contract_command_line_and_mounts_the_config_directory() {
        let r = router(true);
        let d = children(&r).deployment("help", &ConfigVolumes::default());
        let spec = d.spec.unwrap();
        assert_eq!(spec.replicas, Some(2));
        assert_eq!(
            spec.selector.match_labels.unwrap(),
            selector_labels("frontline")
        );
        let template = spec.template;
        // No config hash in the pod template: config changes must not restart pods.
        let pod_annotations = template.metadata.unwrap().annotations.unwrap();
        assert!(
            pod_annotations.keys().all(|k| !k.contains("config")),
            "{pod_annotations:?}"
        );
        let pod = template.spec.unwrap();
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("runtime:0.1.0"));
        assert_eq!(
            c.args.clone().unwrap(),
            [
                "serve",
                "--runtime-config",
                "/etc/switchboard/runtime-config.json",
                "--data",
                "/var/lib/switchboard/index",
                "--artifacts",
                "/var/lib/switchboard/artifacts",
                "--token-key-file",
                "/var/run/switchboard/token/key",
                "--token-ttl",
                "604800s",
                "--secrets",
                "/var/run/switchboard/secrets",
                "--pvc-root",
                "/var/run/switchboard/pvc",
                "--grpc-addr",
                "0.0.0.0:50051",
                "--http-addr",
                "0.0.0.0:8080",
                "--admin-addr",
                "0.0.0.0:8081",
                "--admin-token-file",
                "/var/run/switchboard/token/admin-token",
                "--unit-key-file",
                "/var/run/switchboard/token/unit-key",
                // No PostgreSQL named: each pod keeps its outcomes on its state volume.
                "--outcome-retention",
                "2160h",
                "--outcome-store",
                "sqlite:///var/lib/switchboard/state/outcomes.db",
            ]
        );
        let mounts = c.volume_mounts.clone().unwrap();
        let state = mounts.iter().find(|m| m.name == "state").unwrap();
        assert_eq!(
            (state.mount_path.as_str(), state.read_only),
            ("/var/lib/switchboard/state", Some(false))
        );
        assert!(
            c.env
                .as_ref()
                .unwrap()
                .iter()
                .all(|e| e.name != OUTCOME_STORE_ENV)
        );
        let config = mounts.iter().find(|m| m.name == "config").unwrap();
        assert_eq!(config.mount_path, "/etc/switchboard");
        assert!(
            config.sub_path.is_none(),
            "a subPath mount never sees ConfigMap updates"
        );
        let index = mounts.iter().find(|m| m.name == "index").unwrap();
        assert_eq!(
            (index.mount_path.as_str(), index.read_only),
            ("/var/lib/switchboard/index/help", Some(true))
        );
        let volumes = pod.volumes.unwrap();
        let cm = volumes.iter().find(|v| v.name == "config").unwrap();
        assert_eq!(cm.config_map.as_ref().unwrap().name, "frontline-runtime");
        let claim = volumes.iter().find(|v| v.name == "index").unwrap();
        assert_eq!(
            claim.persistent_volume_claim.as_ref().unwrap().claim_name,
            "help-index"
        );
        let token = volumes.iter().find(|v| v.name == "token").unwrap();
        assert_eq!(
            token.secret.as_ref().unwrap().secret_name.as_deref(),
            Some("frontline-runtime-token")
        );
        // No secretRef on the endpoint: no endpoint Secret mounted.
        assert!(volumes.iter().all(|v| v.name != "endpoint-secret"));
        // Probes on the runtime's endpoints.
        let path = |p: &Option<Probe>| {
            p.as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .clone()
                .unwrap()
        };
        assert_eq!(path(&c.readiness_probe), "/readyz");
        assert_eq!(path(&c.liveness_probe), "/healthz");
        // Non-root, no privilege escalation, no API token.
        assert_eq!(pod.automount_service_account_token, Some(false));
        let psc = pod.security_context.unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        let sc = c.security_context.clone().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        // Resources from the Router spec.
        let res = c.resources.clone().unwrap();
        assert_eq!(res.requests.unwrap()["memory"].0, "4Gi");
        assert_eq!(res.limits.unwrap()["memory"].0, "6Gi");
        // An image in the spec wins over the default.
        let mut custom = router(false);
        custom.spec.image = Some("registry/runtime:pinned".to_owned());
        let d = children(&custom).deployment("help", &ConfigVolumes::default());
        assert_eq!(
            d.spec.unwrap().template.spec.unwrap().containers[0]
                .image
                .as_deref(),
            Some("registry/runtime:pinned")
        );
    }

    #[test]
    fn the_endpoint_secret_is_mounted_read_only_where_the_runtime_reads_it() {
        let mut r = router(false);
        r.spec.large_model.endpoint.as_mut().unwrap().secret_ref =
            Some(switchboard_crds::SecretKeyRef {
                name: "llm-api".to_owned(),
                key: "token".to_owned(),
            });
        let pod = children(&r)
            .deployment("help", &ConfigVolumes::default())
            .spec
            .unwrap()
            .template
            .spec
            .unwrap();
        let c = &pod.containers[0];
        let args = c.args.clone().unwrap();
        let secrets = args.iter().position(|a| a == "--secrets").unwrap();
        assert_eq!(args[secrets + 1], SECRETS_DIR);
        // The runtime reads `<--secrets>/<name>/<key>`: the Secret's directory is named after it.
        let mount = c
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.name == "endpoint-secret")
            .unwrap();
        assert_eq!(
            (mount.mount_path.as_str(), mount.read_only),
            ("/var/run/switchboard/secrets/llm-api", Some(true))
        );
        let volume = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "endpoint-secret")
            .unwrap()
            .secret
            .unwrap();
        assert_eq!(volume.secret_name.as_deref(), Some("llm-api"));
        assert_eq!(volume.optional, Some(true));
        assert!(volume.items.is_none(), "every key, so rotation works");
    }

    /// A compiled config serving a `pvc://` adapter, an `oci://` one with a pull Secret, and a
    /// `pvc://` rerank model.
    #[test]
    fn a_postgres_outcome_store_comes_from_its_secret_and_one_sqlite_file_is_for_one_replica() {
        let mut r = router(true);
        r.spec.outcome_store = serde_json::from_value(serde_json::json!({
            "postgres": {"name": "outcomes-db", "key": "url"},
            "retention": "720h",
        }))
        .unwrap();
        let d = children(&r).deployment("help", &ConfigVolumes::default());
        let c = &d.spec.unwrap().template.spec.unwrap().containers[0];
        let args = c.args.clone().unwrap();
        // The URL (with its password) is never on the command line or in the pod spec.
        assert!(!args.iter().any(|a| a == "--outcome-store"), "{args:?}");
        let retention = args
            .iter()
            .position(|a| a == "--outcome-retention")
            .unwrap();
        assert_eq!(args[retention + 1], "720h");
        let env = c.env.as_ref().unwrap();
        let url = env.iter().find(|e| e.name == OUTCOME_STORE_ENV).unwrap();
        assert!(url.value.is_none());
        let key = url
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(
            (key.name.as_str(), key.key.as_str(), key.optional),
            ("outcomes-db", "url", Some(false))
        );
        assert!(outcome_store_shared(&r.spec.outcome_store, 2).0);

        let sqlite = OutcomeStore::default();
        let (shared, message) = outcome_store_shared(&sqlite, 2);
        assert!(!shared);
        assert!(message.contains("spec.outcomeStore.postgres"), "{message}");
        assert!(outcome_store_shared(&sqlite, 1).0);
    }

    fn config_reading_claims_and_secrets() -> RuntimeConfig {
        let adapter = |lineage: &str, uri: &str, secret: Option<&str>| {
            serde_json::json!({
                "name": lineage, "lineage": lineage, "version": "1.0.0", "role": "Stable",
                "artifact": {"uri": uri, "sha256": format!("sha256:{}", "a".repeat(64)),
                             "pullSecret": secret},
                "lora": {"rank": 4, "alpha": 8.0, "targetModules": ["q_proj"]},
                "domain": {"description": lineage},
            })
        };
        serde_json::from_value(serde_json::json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "RuntimeConfig",
            "revision": "sha256:abc",
            "router": {"namespace": "support", "name": "frontline"},
            "knowledgeBase": {"name": "help", "indexGeneration": 3, "embeddingModel": "/m",
                "retrieval": {"rerank": {"enabled": true, "model": "pvc://models/support-reranker"}}},
            "smallModel": {"model": "/models/smollm2.gguf", "maxActiveAdapters": 8, "maxNewTokens": 256},
            "adapters": [
                adapter("pricing", "pvc://adapters/pricing/1.0.0", None),
                adapter("billing", "oci://registry.example.com/adapters/billing:1.0.0", Some("registry-creds")),
                adapter("integrations", "pvc://adapters/integrations/1.0.0", None),
            ],
            "largeModel": {"maxQueueDepth": 32, "local": "/models/big.gguf"},
            "routerPolicy": {"difficultyThreshold": 0.5, "adapterSelection": {}, "queryRewrite": {},
                             "explorationShare": "5%", "shadowMaxConcurrent": 2},
        }))
        .unwrap()
    }

    #[test]
    fn claims_and_pull_secrets_of_the_config_are_mounted_read_only() {
        let volumes = ConfigVolumes::of(&config_reading_claims_and_secrets());
        assert_eq!(
            volumes.claims.iter().collect::<Vec<_>>(),
            ["adapters", "models"],
            "one mount per claim, the rerank model's included"
        );
        assert_eq!(
            volumes.pull_secrets.iter().collect::<Vec<_>>(),
            ["registry-creds"]
        );
        let r = router(false);
        let pod = children(&r)
            .deployment("help", &volumes)
            .spec
            .unwrap()
            .template
            .spec
            .unwrap();
        let c = &pod.containers[0];
        let args = c.args.clone().unwrap();
        let root = args.iter().position(|a| a == "--pvc-root").unwrap();
        assert_eq!(args[root + 1], "/var/run/switchboard/pvc");
        let mounts = c.volume_mounts.clone().unwrap();
        let volumes = pod.volumes.unwrap();
        for claim in ["adapters", "models"] {
            let mount = mounts
                .iter()
                .find(|m| m.mount_path == format!("/var/run/switchboard/pvc/{claim}"))
                .unwrap_or_else(|| panic!("claim {claim} not mounted: {mounts:?}"));
            assert_eq!(mount.read_only, Some(true));
            let volume = volumes.iter().find(|v| v.name == mount.name).unwrap();
            let pvc = volume.persistent_volume_claim.as_ref().unwrap();
            assert_eq!(
                (pvc.claim_name.as_str(), pvc.read_only),
                (claim, Some(true))
            );
        }
        let mount = mounts
            .iter()
            .find(|m| m.mount_path == "/var/run/switchboard/secrets/registry-creds")
            .unwrap();
        assert_eq!(mount.read_only, Some(true));
        let secret = volumes
            .iter()
            .find(|v| v.name == mount.name)
            .unwrap()
            .secret
            .clone()
            .unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("registry-creds"));
        assert_eq!(secret.optional, Some(true));
        // Volume names are unique (the API server refuses duplicates).
        let names: BTreeSet<_> = volumes.iter().map(|v| v.name.clone()).collect();
        assert_eq!(names.len(), volumes.len());

        // Without pvc:// or oci:// artifacts nothing extra is mounted.
        let plain = children(&r).deployment("help", &ConfigVolumes::default());
        let plain_volumes = plain.spec.unwrap().template.spec.unwrap().volumes.unwrap();
        assert!(
            plain_volumes
                .iter()
                .all(|v| !v.name.starts_with("pvc-") && !v.name.starts_with("pull-secret-"))
        );
    }

    #[test]
    fn config_map_holds_the_document_and_its_revision() {
        let r = router(false);
        let config: RuntimeConfig = serde_json::from_value(serde_json::json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "RuntimeConfig",
            "revision": "sha256:abc",
            "router": {"namespace": "support", "name": "frontline"},
            "knowledgeBase": {"name": "help", "indexGeneration": 3, "embeddingModel": "/m", "retrieval": {}},
            "smallModel": {"model": "/models/smollm2.gguf", "maxActiveAdapters": 8, "maxNewTokens": 256},
            "largeModel": {"maxQueueDepth": 32, "local": "/models/big.gguf"},
            "routerPolicy": {"difficultyThreshold": 0.5, "adapterSelection": {}, "queryRewrite": {},
                             "explorationShare": "5%", "shadowMaxConcurrent": 2},
        }))
        .unwrap();
        let cm = children(&r).config_map(&config).unwrap();
        assert_eq!(cm.metadata.name.as_deref(), Some("frontline-runtime"));
        assert_eq!(
            cm.metadata.annotations.as_ref().unwrap()[REVISION_ANNOTATION],
            "sha256:abc"
        );
        let back: RuntimeConfig = serde_json::from_str(&cm.data.unwrap()[FILE_NAME]).unwrap();
        assert_eq!(back, config);
        let status = config_status(&config, "frontline");
        assert_eq!(status.runtime_config_hash.as_deref(), Some("sha256:abc"));
        assert_eq!(status.knowledge_base_generation, Some(3));
    }

    #[test]
    fn several_replicas_on_a_read_write_once_index_are_flagged() {
        let (ok, message) = index_volume_shareable("help", AccessMode::ReadWriteOnce, 3);
        assert!(!ok);
        assert!(
            message.contains("help-index") && message.contains("ReadWriteMany"),
            "{message}"
        );
        assert!(index_volume_shareable("help", AccessMode::ReadWriteOnce, 1).0);
        assert!(index_volume_shareable("help", AccessMode::ReadWriteOnce, 0).0);
        assert!(index_volume_shareable("help", AccessMode::ReadWriteMany, 5).0);
    }

    #[test]
    fn deployment_state_reports_rollout_and_readiness() {
        use k8s_openapi::api::apps::v1::DeploymentStatus;
        let s = DeploymentStatus {
            replicas: Some(2),
            ready_replicas: Some(1),
            updated_replicas: Some(2),
            available_replicas: Some(1),
            ..DeploymentStatus::default()
        };
        let (ready, progressing, message) = deployment_state(2, true, Some(&s));
        assert!(ready && !progressing, "{message}");
        assert_eq!(message, "1/2 runtime pods ready (2 up to date)");
        let (ready, progressing, _) = deployment_state(2, false, None);
        assert!(!ready && progressing);
        let (ready, _, _) = deployment_state(0, true, None);
        assert!(ready, "a Router scaled to zero is as asked");
    }
}
