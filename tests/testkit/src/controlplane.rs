//! The real Kubernetes control plane for tests: etcd, kube-apiserver and kube-controller-manager
//! as `hack/setup.sh controlplane` builds them from the upstream Go modules (pinned in
//! `hack/controlplane/go.mod`), started by `hack/controlplane/start.sh` the way
//! controller-runtime's envtest starts its binaries: free loopback ports, a generated CA and
//! serving certificate, RBAC authorization, ServiceAccount token issuance and the default
//! admission plugins.
//!
//! One control plane per test binary ([`ControlPlane::shared`]), started on first use and stopped
//! when the test process ends (the script watches this process, so a killed test binary does not
//! leave servers behind). Tests isolate themselves by namespace.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::process::{Process, workspace_root};

/// A running control plane.
#[derive(Debug)]
pub struct ControlPlane {
    _process: Process,
    dir: PathBuf,
    apiserver_url: String,
    version: String,
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
    pub fn start(dir: &Path) -> Result<Self, String> {
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
            .env("CONTROLPLANE_REMOVE_DIR", "1");
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

    /// The control plane of this test binary, started on first use; prints the apiserver's
    /// version once. Panics with the setup command when the binaries are missing.
    pub fn shared() -> &'static Self {
        static PLANE: OnceLock<ControlPlane> = OnceLock::new();
        PLANE.get_or_init(|| {
            let dir = std::env::temp_dir()
                .join(format!("switchboard-controlplane-{}", std::process::id()));
            let plane = Self::start(&dir).unwrap_or_else(|e| panic!("{e}"));
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
        })
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
