//! The real Kubernetes control plane for tests: etcd, kube-apiserver and kube-controller-manager
//! as `hack/setup.sh controlplane` builds them from the upstream Go modules (pinned in
//! `hack/controlplane/go.mod`), started by `hack/controlplane/start.sh` the way
//! controller-runtime's envtest starts its binaries: free loopback ports, a generated CA and
//! serving certificate, RBAC authorization, ServiceAccount token issuance and the default
//! admission plugins.
//!
//! One control plane per test binary ([`ControlPlane::shared`]), started on first use and stopped
//! when the test process ends (the script watches this process, so a killed test binary does not
//! leave servers behind). Tests isolate themselves by namespace ([`ControlPlane::namespace`]).
//!
//! On it, [`ControlPlane::install_crds`] installs the generated CRDs and
//! [`ControlPlane::operator_kubeconfig`] the chart's ServiceAccount and RBAC (rendered by `helm
//! template` from `charts/switchboard`), with a kubeconfig holding a token of that ServiceAccount:
//! the operator under test is refused whatever the chart does not grant it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::process::{Process, workspace_root};

/// The chart's release the tests install (ServiceAccount, RBAC): namespace and release name.
pub const OPERATOR_NAMESPACE: &str = "switchboard-system";
/// The chart's release name in tests; the operator's ServiceAccount is `<release>-operator`.
pub const RELEASE: &str = "switchboard";
/// The ServiceAccount the chart creates for the operator (release `switchboard`).
pub const OPERATOR_SERVICE_ACCOUNT: &str = "switchboard-operator";

/// What runs in a control plane.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// kube-controller-manager controllers to leave off (`--controllers=*,-<name>...`). Controller
    /// tests that play the workload controllers themselves (writing a Job's status as the Job
    /// controller would) turn those off, the way envtest runs without any controller manager.
    pub disabled_controllers: Vec<String>,
}

impl Options {
    /// Everything kube-controller-manager runs by default (Deployments, ReplicaSets, Jobs,
    /// garbage collection, namespaces, ServiceAccounts...).
    pub fn all_controllers() -> Self {
        Self::default()
    }

    /// Without the workload controllers (Deployments, ReplicaSets, Jobs, CronJobs, StatefulSets,
    /// DaemonSets): the test writes their status. Garbage collection, namespaces and
    /// ServiceAccounts still run.
    pub fn without_workload_controllers() -> Self {
        Self {
            disabled_controllers: [
                "deployment-controller",
                "replicaset-controller",
                "job-controller",
                "cronjob-controller",
                "statefulset-controller",
                "daemonset-controller",
            ]
            .map(str::to_owned)
            .to_vec(),
        }
    }

    fn controllers_flag(&self) -> String {
        std::iter::once("*".to_owned())
            .chain(self.disabled_controllers.iter().map(|c| format!("-{c}")))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A running control plane.
#[derive(Debug)]
pub struct ControlPlane {
    _process: Process,
    dir: PathBuf,
    apiserver_url: String,
    version: String,
    options: Options,
    crds: OnceLock<()>,
    operator: Mutex<Option<PathBuf>>,
}

fn bin_dir() -> PathBuf {
    std::env::var_os("CONTROLPLANE_BIN").map_or_else(
        || workspace_root().join(".cache/controlplane/bin"),
        PathBuf::from,
    )
}

impl ControlPlane {
    /// Whether the binaries are built (`hack/setup.sh controlplane`).
    pub fn available() -> bool {
        ["etcd", "kube-apiserver", "kube-controller-manager"]
            .iter()
            .all(|b| bin_dir().join(b).is_file())
    }

    /// Starts a control plane in `dir` (created; must not exist or be empty) and waits until the
    /// apiserver's `/readyz` and the controller manager's `/healthz` answer. A component that
    /// does not come up fails with the tail of its log.
    pub fn start(dir: &Path, options: &Options) -> Result<Self, String> {
        if !Self::available() {
            return Err(format!(
                "no control plane binaries in {}: run `hack/setup.sh controlplane`",
                bin_dir().display()
            ));
        }
        let script = workspace_root().join("hack/controlplane/start.sh");
        let mut command = Command::new("bash");
        command
            .arg(&script)
            .arg(dir)
            .env("CONTROLPLANE_BIN", bin_dir())
            .env("CONTROLPLANE_WATCH_PID", std::process::id().to_string())
            .env("CONTROLPLANE_REMOVE_DIR", "1")
            .env("CONTROLPLANE_CONTROLLERS", options.controllers_flag());
        // The script's own log beside DIR (DIR itself must start empty).
        let log_name = format!(
            "{}.start",
            dir.file_name().unwrap_or_default().to_string_lossy()
        );
        let parent = dir.parent().unwrap_or(Path::new("."));
        let mut process = Process::spawn(&log_name, command, parent)?;
        let env_file = dir.join("controlplane.env");
        let deadline = Instant::now() + Duration::from_secs(240);
        while !env_file.is_file() {
            if !process.is_running() || Instant::now() > deadline {
                let mut report =
                    format!("the control plane did not start:\n{}", process.log_tail(30));
                for name in ["etcd", "kube-apiserver", "kube-controller-manager"] {
                    let log = dir.join(format!("logs/{name}.log"));
                    if let Ok(text) = std::fs::read_to_string(&log) {
                        let lines: Vec<&str> = text.lines().collect();
                        report.push_str(&format!(
                            "\n--- {name} ---\n{}",
                            lines[lines.len().saturating_sub(30)..].join("\n")
                        ));
                    }
                }
                return Err(report);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        // The file is written in one `cat`; give it a moment to be complete.
        std::thread::sleep(Duration::from_millis(100));
        let text = std::fs::read_to_string(&env_file).map_err(|e| e.to_string())?;
        let value = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")))
                .map(str::to_owned)
                .ok_or_else(|| format!("{} has no {key}", env_file.display()))
        };
        let mut plane = Self {
            _process: process,
            dir: dir.to_owned(),
            apiserver_url: value("APISERVER_URL")?,
            version: String::new(),
            options: options.clone(),
            crds: OnceLock::new(),
            operator: Mutex::new(None),
        };
        let version = plane.kubectl(&["version", "-o", "json"])?;
        let version: serde_json::Value =
            serde_json::from_str(&version).map_err(|e| format!("kubectl version: {e}"))?;
        plane.version = version["serverVersion"]["gitVersion"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        Ok(plane)
    }

    /// The control plane of this test binary with every controller, started on first use;
    /// prints the apiserver's version once. Panics with the setup command when the binaries are
    /// missing.
    pub fn shared() -> &'static Self {
        Self::shared_with(&Options::all_controllers())
    }

    /// The control plane of this test binary, started on first use with `options`; every call in
    /// one binary must ask for the same options.
    pub fn shared_with(options: &Options) -> &'static Self {
        static PLANE: OnceLock<ControlPlane> = OnceLock::new();
        let plane = PLANE.get_or_init(|| {
            let dir = std::env::temp_dir()
                .join(format!("switchboard-controlplane-{}", std::process::id()));
            let plane = Self::start(&dir, options).unwrap_or_else(|e| panic!("{e}"));
            // Straight to stderr, past libtest's capture: the run's log shows, once per test
            // binary, which API server its tests met.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "control plane: kube-apiserver {} at {}",
                plane.version(),
                plane.url()
            );
            plane
        });
        assert_eq!(
            &plane.options, options,
            "one control plane per test binary: every test must ask for the same options"
        );
        plane
    }

    /// kube-apiserver's `gitVersion` (`/version`).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The admin kubeconfig (user `admin`, group `system:masters`).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// The apiserver's URL (`https://127.0.0.1:<port>`).
    pub fn url(&self) -> &str {
        &self.apiserver_url
    }

    /// The project's kubectl (`hack/setup.sh tools`) pointed at this control plane.
    pub fn kubectl_command(&self) -> Command {
        let mut command = Command::new(workspace_root().join(".cache/bin/kubectl"));
        command
            .env("KUBECONFIG", self.kubeconfig())
            .arg("--request-timeout=60s");
        command
    }

    /// Runs kubectl with `args`; its stdout, or an error with its stderr.
    pub fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        let out = self
            .kubectl_command()
            .args(args)
            .output()
            .map_err(|e| format!("kubectl (run `hack/setup.sh tools`): {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

/// Names unique within this test binary (one control plane per binary).
static NEXT_NAME: AtomicU32 = AtomicU32::new(0);

impl ControlPlane {
    /// Installs the generated CRDs (`crds/yaml`, server-side apply) once per control plane and
    /// waits until they are Established.
    pub fn install_crds(&self) {
        self.crds.get_or_init(|| {
            let crds = workspace_root().join("crds/yaml");
            self.kubectl(&["apply", "--server-side", "-f", &crds.to_string_lossy()])
                .unwrap_or_else(|e| panic!("the generated CRDs are refused: {e}"));
            self.kubectl(&[
                "wait",
                "--for=condition=Established",
                "crd",
                "--all",
                "--timeout=120s",
            ])
            .unwrap_or_else(|e| panic!("{e}"));
        });
    }

    /// A new namespace `<prefix>-<n>` (unique in this control plane), once its `default`
    /// ServiceAccount exists (pods are refused until the ServiceAccount controller made it).
    pub fn namespace(&self, prefix: &str) -> String {
        let name = format!("{prefix}-{}", NEXT_NAME.fetch_add(1, Ordering::Relaxed));
        self.kubectl(&["create", "namespace", &name])
            .unwrap_or_else(|e| panic!("{e}"));
        let deadline = Instant::now() + Duration::from_secs(60);
        while self
            .kubectl(&[
                "get",
                "serviceaccount",
                "default",
                "-n",
                &name,
                "-o",
                "name",
            ])
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "namespace {name}: no default ServiceAccount after 60s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        name
    }

    /// The operator's identity as the chart installs it: the chart's ServiceAccount and RBAC
    /// (`helm template charts/switchboard --show-only` the ServiceAccount and RBAC templates,
    /// default values: a ClusterRole, and a Role for the leader Lease in
    /// [`OPERATOR_NAMESPACE`]) applied once per control plane, and a kubeconfig with a token of
    /// that ServiceAccount (`kubectl create token`). Also installs the CRDs.
    pub fn operator_kubeconfig(&self) -> PathBuf {
        self.install_crds();
        let mut operator = self
            .operator
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(path) = operator.as_ref() {
            return path.clone();
        }
        let root = workspace_root();
        let helm = root.join(".cache/bin/helm");
        let out = Command::new(&helm)
            .current_dir(root.join("charts/switchboard"))
            .args([
                "template",
                RELEASE,
                ".",
                "--namespace",
                OPERATOR_NAMESPACE,
                "--show-only",
                "templates/serviceaccount.yaml",
                "--show-only",
                "templates/rbac.yaml",
                "--show-only",
                "templates/admission-policy.yaml",
            ])
            .output()
            .unwrap_or_else(|e| panic!("{} (run `hack/setup.sh tools`): {e}", helm.display()));
        assert!(
            out.status.success(),
            "helm template: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rendered = self.dir.join("operator-rbac.yaml");
        std::fs::write(&rendered, &out.stdout).unwrap_or_else(|e| panic!("{e}"));
        if self
            .kubectl(&["get", "namespace", OPERATOR_NAMESPACE, "-o", "name"])
            .is_err()
        {
            self.kubectl(&["create", "namespace", OPERATOR_NAMESPACE])
                .unwrap_or_else(|e| panic!("{e}"));
        }
        self.kubectl(&["apply", "--server-side", "-f", &rendered.to_string_lossy()])
            .unwrap_or_else(|e| panic!("the chart's RBAC is refused: {e}"));
        // The authorizer sees new bindings through an informer: wait until they are in effect.
        self.wait_until_allowed(&[
            "watch",
            "knowledgebases.switchboard.dev",
            "--all-namespaces",
        ]);
        self.wait_until_allowed(&["update", "leases", "-n", OPERATOR_NAMESPACE]);
        let token = self
            .kubectl(&[
                "create",
                "token",
                OPERATOR_SERVICE_ACCOUNT,
                "-n",
                OPERATOR_NAMESPACE,
                "--duration=24h",
            ])
            .unwrap_or_else(|e| panic!("{e}"));
        let path = self.dir.join("operator.kubeconfig");
        self.write_kubeconfig(
            &path,
            OPERATOR_SERVICE_ACCOUNT,
            token.trim(),
            OPERATOR_NAMESPACE,
        );
        *operator = Some(path.clone());
        path
    }

    /// A new namespace ([`Self::namespace`]) where the operator under the chart's RBAC works as
    /// installed with `rbac.secretNamespaces` naming it: Secrets granted
    /// ([`Self::grant_operator_secrets`]).
    pub fn operator_namespace(&self, prefix: &str) -> String {
        let namespace = self.namespace(prefix);
        self.grant_operator_secrets(&namespace);
        namespace
    }

    /// What a namespace's owner does to let the operator use Secrets there (docs/install.md):
    /// binds the chart's `switchboard-operator-secrets` ClusterRole to the operator's
    /// ServiceAccount in `namespace`. Installs the operator's RBAC first.
    pub fn grant_operator_secrets(&self, namespace: &str) {
        self.operator_kubeconfig();
        self.kubectl(&[
            "create",
            "rolebinding",
            &format!("{OPERATOR_SERVICE_ACCOUNT}-secrets"),
            "-n",
            namespace,
            &format!("--clusterrole={OPERATOR_SERVICE_ACCOUNT}-secrets"),
            &format!("--serviceaccount={OPERATOR_NAMESPACE}:{OPERATOR_SERVICE_ACCOUNT}"),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        // kube-apiserver's authorizer reads RoleBindings from an informer: wait until the grant
        // is in effect, or the operator's first Secret call may still be refused.
        for verb in ["get", "create", "update"] {
            self.wait_until_allowed(&[verb, "secrets", "-n", namespace]);
        }
    }

    /// Waits (up to 30 s) until `kubectl auth can-i <args>` says yes for the operator's
    /// ServiceAccount.
    fn wait_until_allowed(&self, args: &[&str]) {
        let user = format!("system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SERVICE_ACCOUNT}");
        self.wait_until_allowed_as(&user, args);
    }

    /// Waits (up to 30 s) until `kubectl auth can-i --as <user> <args>` says yes.
    fn wait_until_allowed_as(&self, user: &str, args: &[&str]) {
        let mut command = vec!["auth", "can-i", "--as", user];
        command.extend_from_slice(args);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.kubectl(&command).is_err() {
            assert!(
                Instant::now() < deadline,
                "{user} is still not allowed to {args:?} after 30s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Writes a kubeconfig for this control plane authenticating `user` with `token`.
    fn write_kubeconfig(&self, path: &Path, user: &str, token: &str, namespace: &str) {
        let kubeconfig = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "controlplane", "cluster": {
                "server": self.url(),
                "certificate-authority": self.dir.join("pki/ca.crt"),
            }}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": user, "context": {
                "cluster": "controlplane", "user": user, "namespace": namespace,
            }}],
            "current-context": user,
        });
        std::fs::write(
            path,
            serde_yaml::to_string(&kubeconfig).unwrap_or_else(|e| panic!("{e}")),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// A kubeconfig of a namespace user with exactly `rules` (`(apiGroup, resource, verbs)`): a
    /// ServiceAccount `name` in `namespace`, bound there to a Role holding the rules, with a
    /// token. What an admission test needs to act as a manifest author who may not do
    /// everything (read Secrets, say).
    pub fn user_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
        rules: &[(&str, &str, &[&str])],
    ) -> PathBuf {
        let rules: Vec<serde_json::Value> = rules
            .iter()
            .map(|(group, resource, verbs)| {
                serde_json::json!({"apiGroups": [group], "resources": [resource], "verbs": verbs})
            })
            .collect();
        let objects = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "ServiceAccount",
             "metadata": {"name": name, "namespace": namespace}},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
             "metadata": {"name": name, "namespace": namespace}, "rules": rules},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
             "metadata": {"name": name, "namespace": namespace},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
             "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]},
        ]});
        let file = self.dir.join(format!("user-{namespace}-{name}.json"));
        std::fs::write(&file, objects.to_string()).unwrap_or_else(|e| panic!("{e}"));
        self.kubectl(&["apply", "-f", &file.to_string_lossy()])
            .unwrap_or_else(|e| panic!("{e}"));
        let user = format!("system:serviceaccount:{namespace}:{name}");
        if let Some((group, resource, verbs)) = rules.first().map(|r| {
            (
                r["apiGroups"][0].as_str().unwrap_or_default().to_owned(),
                r["resources"][0].as_str().unwrap_or_default().to_owned(),
                r["verbs"][0].as_str().unwrap_or_default().to_owned(),
            )
        }) {
            let resource = if group.is_empty() {
                resource
            } else {
                format!("{resource}.{group}")
            };
            self.wait_until_allowed_as(&user, &[&verbs, &resource, "-n", namespace]);
        }
        let token = self
            .kubectl(&["create", "token", name, "-n", namespace, "--duration=1h"])
            .unwrap_or_else(|e| panic!("{e}"));
        let path = self.dir.join(format!("user-{namespace}-{name}.kubeconfig"));
        self.write_kubeconfig(&path, name, token.trim(), namespace);
        path
    }

    /// A kube client of the admin (`system:masters`) whose default namespace is `namespace`:
    /// what the test itself does, as a user would with kubectl (`Api::default_namespaced`).
    /// Must be called inside a tokio runtime.
    pub async fn admin_client(&self, namespace: &str) -> kube::Client {
        client_from(&self.kubeconfig(), namespace).await
    }

    /// A kube client authenticated as the operator's ServiceAccount under the chart's RBAC
    /// ([`Self::operator_kubeconfig`]), default namespace `namespace`.
    pub async fn operator_client(&self, namespace: &str) -> kube::Client {
        let path = self.operator_kubeconfig();
        client_from(&path, namespace).await
    }
}

/// A kube client from a kubeconfig file (its current context), default namespace `namespace`.
pub async fn client_from(path: &Path, namespace: &str) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    namespace.clone_into(&mut config.default_namespace);
    kube::Client::try_from(config).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
