//! A real OCI registry (the CNCF distribution registry, Debian's `docker-registry` package) on a
//! loopback port, for the `oci://` adapter artifact tests. It needs no Docker: `registry serve`
//! with a filesystem storage folder.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::{Process, free_addr, workspace_root};

/// User of the registry [`Registry::start_with_basic_auth`] starts.
pub const TEST_USER: &str = "switchboard";
/// Its password.
pub const TEST_PASSWORD: &str = "registry-test-password";
/// bcrypt of [`TEST_PASSWORD`] (the registry's htpasswd accepts bcrypt only; cost 4 keeps the
/// test fast).
const TEST_PASSWORD_BCRYPT: &str = "$2b$04$29c1l24YyHx/CGbuzMuw8ujM7eLkIXKuxyEzTnlVr5bd3YfNsZ.KC";

/// A running registry; killed on drop.
#[derive(Debug)]
pub struct Registry {
    process: Process,
    addr: SocketAddr,
}

impl Registry {
    /// The binary: `$SWITCHBOARD_REGISTRY`, else `.cache/bin/registry` (`hack/setup.sh tools`),
    /// else `registry` or `docker-registry` on the PATH.
    pub fn binary() -> Option<PathBuf> {
        if let Some(path) = std::env::var_os("SWITCHBOARD_REGISTRY") {
            return Some(PathBuf::from(path));
        }
        let cached = workspace_root().join(".cache/bin/registry");
        if cached.is_file() {
            return Some(cached);
        }
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .flat_map(|dir| [dir.join("registry"), dir.join("docker-registry")])
                .find(|p| p.is_file())
        })
    }

    /// Starts an anonymous registry storing under `dir` and waits until it listens.
    pub fn start(dir: &Path) -> Result<Self, String> {
        Self::start_inner(dir, None)
    }

    /// Starts a registry that requires HTTP basic auth as [`TEST_USER`] / [`TEST_PASSWORD`].
    pub fn start_with_basic_auth(dir: &Path) -> Result<Self, String> {
        Self::start_inner(dir, Some(format!("{TEST_USER}:{TEST_PASSWORD_BCRYPT}\n")))
    }

    fn start_inner(dir: &Path, htpasswd: Option<String>) -> Result<Self, String> {
        let binary = Self::binary()
            .ok_or("no registry binary (docker-registry): run `hack/setup.sh tools`")?;
        let storage = dir.join("storage");
        std::fs::create_dir_all(&storage).map_err(|e| format!("{}: {e}", storage.display()))?;
        let addr = free_addr();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {addr}\n  secret: switchboard-test-secret\n",
            storage.display()
        );
        if let Some(htpasswd) = htpasswd {
            let file = dir.join("htpasswd");
            std::fs::write(&file, htpasswd).map_err(|e| format!("{}: {e}", file.display()))?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: switchboard-test\n    path: {}\n",
                file.display()
            ));
        }
        let config_file = dir.join("registry.yml");
        std::fs::write(&config_file, config)
            .map_err(|e| format!("{}: {e}", config_file.display()))?;
        let mut command = Command::new(binary);
        command.arg("serve").arg(&config_file);
        let mut process = Process::spawn("registry", command, dir)?;
        process.wait_for_port(addr, Duration::from_secs(30))?;
        Ok(Self { process, addr })
    }

    /// `host:port` of the registry (what goes after `oci://`).
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The listen address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The process (for its log).
    pub fn process(&self) -> &Process {
        &self.process
    }
}
