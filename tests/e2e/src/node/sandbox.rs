//! A pod's sandbox on this machine: a folder as the container's filesystem, local ports for its
//! container ports, and its one container as a local process.
//!
//! The filesystem is `<pod folder>/root`, the container's `/`. The image's files are linked
//! into it ([`Image::files`]), and each volume mount is a folder at its mount path: ConfigMaps and
//! Secrets projected as files (each written aside and renamed into place, so a reader sees a
//! whole old or new file, as with a kubelet's atomic writer; projected again on every sync, so a
//! change reaches a running container), `emptyDir`s empty, and a claim linked to its folder under
//! the node's claims folder, shared by every pod that mounts it. The container's arguments and
//! environment values are mapped onto the sandbox ([`localize`]): absolute paths are rooted in
//! the pod's folder, and a listen address on a declared container port (`0.0.0.0:8080`) becomes
//! the free local port the sandbox gave that port. The process runs with the image's
//! environment, the container's, `PATH` and `HOSTNAME` only.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::core::v1::{ConfigMap, Container, KeyToPath, Pod, PodSpec, Secret, Volume};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Api, Client, ResourceExt};
use switchboard_testkit::process::{Process, free_addr};

use super::Error;
use super::status::{CREATE_CONTAINER_CONFIG_ERROR, termination_message};

/// A container image this node can run: a local program and the files the image ships.
#[derive(Clone, Debug)]
pub struct Image {
    /// The program the image's entrypoint runs; the container's `args` are its arguments (a
    /// container `command` is refused).
    pub entrypoint: PathBuf,
    /// The image's working directory, a path in the container.
    pub working_dir: String,
    /// The image's environment (the container's own wins); values are mapped like arguments.
    pub env: Vec<(String, String)>,
    /// What the image ships: (path in the container, local file or folder it is linked to).
    pub files: Vec<(String, PathBuf)>,
}

/// Why a container is not started.
#[derive(Debug)]
pub enum NotStarted {
    /// A volume's ConfigMap or Secret (or one of its keys) does not exist yet: the container
    /// waits in `ContainerCreating`, as with a kubelet.
    Waiting(String),
    /// This node cannot run it (an unsupported field or volume): reason and message.
    Refused(&'static str, String),
    /// An I/O or API failure; the next sync tries again.
    Failed(Error),
}

impl From<Error> for NotStarted {
    fn from(error: Error) -> Self {
        Self::Failed(error)
    }
}

fn refused(message: impl Into<String>) -> NotStarted {
    NotStarted::Refused(CREATE_CONTAINER_CONFIG_ERROR, message.into())
}

/// Where the kubelet puts a container's termination message unless its spec says otherwise.
const DEFAULT_TERMINATION_MESSAGE_PATH: &str = "/dev/termination-log";

/// A pod's folder, filesystem and ports.
#[derive(Debug)]
pub struct Sandbox {
    dir: PathBuf,
    root: PathBuf,
    /// Local address of each container port, by port number, with the port's name.
    ports: BTreeMap<u16, (Option<String>, SocketAddr)>,
}

impl Sandbox {
    /// Creates the sandbox of `pod` (its one `container`) in `<pods_dir>/<pod name>` (replacing
    /// what an earlier pod of that name left there): the image's files linked, the working
    /// directory and the termination message file created, a free local port per container
    /// port.
    pub fn create(
        pods_dir: &Path,
        pod: &Pod,
        container: &Container,
        image: &Image,
    ) -> Result<Self, Error> {
        let dir = pods_dir.join(pod.name_any());
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        let root = dir.join("root");
        let ports = container
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                let port = u16::try_from(p.container_port).ok()?;
                Some((port, (p.name.clone(), free_addr())))
            })
            .collect();
        let sandbox = Self { dir, root, ports };
        for (in_image, local) in &image.files {
            sandbox.link(local, in_image)?;
        }
        let working_dir = sandbox.path(
            container
                .working_dir
                .as_deref()
                .unwrap_or(&image.working_dir),
        );
        std::fs::create_dir_all(&working_dir).map_err(|e| Error::io(&working_dir, e))?;
        let message = sandbox.path(termination_message_path(container));
        if let Some(parent) = message.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        std::fs::write(&message, b"").map_err(|e| Error::io(&message, e))?;
        Ok(sandbox)
    }

    /// Where a path of the container is on this machine.
    pub fn path(&self, in_container: &str) -> PathBuf {
        self.root.join(in_container.trim_start_matches('/'))
    }

    /// The local address of a container port, by number or name.
    pub fn port(&self, port: &IntOrString) -> Option<SocketAddr> {
        self.ports.iter().find_map(|(number, (name, addr))| {
            let matches = match port {
                IntOrString::Int(n) => i32::from(*number) == *n,
                IntOrString::String(wanted) => name.as_deref() == Some(wanted.as_str()),
            };
            matches.then_some(*addr)
        })
    }

    /// Local addresses by port name (unnamed ports by number).
    pub fn named_ports(&self) -> BTreeMap<String, SocketAddr> {
        self.ports
            .iter()
            .map(|(number, (name, addr))| {
                (name.clone().unwrap_or_else(|| number.to_string()), *addr)
            })
            .collect()
    }

    /// `value` of the container (an argument or environment value) as the local process needs it.
    pub fn localize(&self, value: &str) -> String {
        let ports: BTreeMap<u16, SocketAddr> = self
            .ports
            .iter()
            .map(|(port, (_, addr))| (*port, *addr))
            .collect();
        localize(value, &self.root, &ports)
    }

    /// Links `local` at `in_container` (kept when it is there already).
    fn link(&self, local: &Path, in_container: &str) -> Result<(), Error> {
        let at = self.path(in_container);
        if at.symlink_metadata().is_ok() {
            return Ok(());
        }
        if let Some(parent) = at.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        std::os::unix::fs::symlink(local, &at).map_err(|e| Error::io(&at, e))
    }

    /// Sets up (or refreshes) the container's volume mounts; `claims_dir` holds a folder per
    /// PersistentVolumeClaim.
    pub async fn mount(
        &self,
        client: &Client,
        namespace: &str,
        spec: &PodSpec,
        container: &Container,
        claims_dir: &Path,
    ) -> Result<(), NotStarted> {
        for mount in container.volume_mounts.iter().flatten() {
            if mount.sub_path.is_some() || mount.sub_path_expr.is_some() {
                return Err(refused(format!(
                    "volume mount {}: subPath is not supported by the e2e node agent",
                    mount.name
                )));
            }
            let volume = spec
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == mount.name)
                .ok_or_else(|| refused(format!("no volume {} for its mount", mount.name)))?;
            let at = self.path(&mount.mount_path);
            match volume_source(volume) {
                VolumeSource::ConfigMap => {
                    let Some(source) = &volume.config_map else {
                        continue;
                    };
                    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
                    let found = api.get_opt(&source.name).await.map_err(|e| {
                        Error::api("get", &format!("ConfigMap {namespace}/{}", source.name), e)
                    })?;
                    let data = found.map(|cm| {
                        let text = cm
                            .data
                            .into_iter()
                            .flatten()
                            .map(|(k, v)| (k, v.into_bytes()));
                        let binary = cm.binary_data.into_iter().flatten().map(|(k, v)| (k, v.0));
                        text.chain(binary).collect()
                    });
                    let files = select(
                        "configmap",
                        &source.name,
                        data,
                        source.items.as_deref(),
                        source.optional.unwrap_or(false),
                    )?;
                    project(&at, &files)?;
                }
                VolumeSource::Secret => {
                    let Some(source) = &volume.secret else {
                        continue;
                    };
                    let name = source.secret_name.clone().unwrap_or_default();
                    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
                    let found = api
                        .get_opt(&name)
                        .await
                        .map_err(|e| Error::api("get", &format!("Secret {namespace}/{name}"), e))?;
                    let data = found.map(|s| {
                        s.data
                            .into_iter()
                            .flatten()
                            .map(|(k, v)| (k, v.0))
                            .collect()
                    });
                    let files = select(
                        "secret",
                        &name,
                        data,
                        source.items.as_deref(),
                        source.optional.unwrap_or(false),
                    )?;
                    project(&at, &files)?;
                }
                VolumeSource::EmptyDir => {
                    std::fs::create_dir_all(&at).map_err(|e| Error::io(&at, e))?;
                }
                VolumeSource::Claim(claim) => {
                    let folder = claims_dir.join(claim);
                    std::fs::create_dir_all(&folder).map_err(|e| Error::io(&folder, e))?;
                    self.link(&folder, &mount.mount_path)?;
                }
                VolumeSource::Unsupported => {
                    return Err(refused(format!(
                        "volume {}: only configMap, secret, emptyDir and persistentVolumeClaim \
                         volumes are supported by the e2e node agent",
                        volume.name
                    )));
                }
            }
        }
        Ok(())
    }

    /// Starts the container's process (its log is `<pod folder>/<container>.log`).
    pub fn start(
        &self,
        pod: &Pod,
        container: &Container,
        image: &Image,
    ) -> Result<Process, NotStarted> {
        if container.command.is_some() {
            return Err(refused(
                "a container command is not supported: the image's entrypoint runs with the args",
            ));
        }
        if container.env_from.is_some() {
            return Err(refused("envFrom is not supported by the e2e node agent"));
        }
        let mut env: Vec<(String, String)> = image.env.clone();
        for var in container.env.iter().flatten() {
            let Some(value) = var.value.clone().filter(|_| var.value_from.is_none()) else {
                return Err(refused(format!(
                    "env {}: only literal values are supported by the e2e node agent",
                    var.name
                )));
            };
            env.retain(|(name, _)| *name != var.name);
            env.push((var.name.clone(), value));
        }
        let working_dir = container
            .working_dir
            .as_deref()
            .unwrap_or(&image.working_dir);
        let mut command = Command::new(&image.entrypoint);
        command
            .args(container.args.iter().flatten().map(|a| self.localize(a)))
            .current_dir(self.path(working_dir))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOSTNAME", pod.name_any())
            .envs(env.iter().map(|(name, value)| (name, self.localize(value))));
        Process::spawn(&container.name, command, &self.dir)
            .map_err(|e| NotStarted::Failed(Error::Process(e)))
    }

    /// The container's termination message once it exited with `exit_code` (the message file,
    /// or with `FallbackToLogsOnError` the end of its log at `log`).
    pub fn termination_message(&self, container: &Container, exit_code: i32, log: &Path) -> String {
        let file =
            std::fs::read(self.path(termination_message_path(container))).unwrap_or_default();
        let log = std::fs::read_to_string(log).unwrap_or_default();
        let fallback =
            container.termination_message_policy.as_deref() == Some("FallbackToLogsOnError");
        termination_message(&file, &log, fallback, exit_code)
    }
}

fn termination_message_path(container: &Container) -> &str {
    container
        .termination_message_path
        .as_deref()
        .unwrap_or(DEFAULT_TERMINATION_MESSAGE_PATH)
}

enum VolumeSource<'a> {
    ConfigMap,
    Secret,
    EmptyDir,
    Claim(&'a str),
    Unsupported,
}

fn volume_source(volume: &Volume) -> VolumeSource<'_> {
    if volume.config_map.is_some() {
        VolumeSource::ConfigMap
    } else if volume.secret.is_some() {
        VolumeSource::Secret
    } else if volume.empty_dir.is_some() {
        VolumeSource::EmptyDir
    } else if let Some(claim) = &volume.persistent_volume_claim {
        VolumeSource::Claim(&claim.claim_name)
    } else {
        VolumeSource::Unsupported
    }
}

/// The files of a ConfigMap or Secret volume: every key, or the `items` at their paths. A missing
/// object or key keeps the container waiting unless the volume is optional.
fn select(
    kind: &str,
    name: &str,
    data: Option<BTreeMap<String, Vec<u8>>>,
    items: Option<&[KeyToPath]>,
    optional: bool,
) -> Result<BTreeMap<String, Vec<u8>>, NotStarted> {
    let Some(mut data) = data else {
        return if optional {
            Ok(BTreeMap::new())
        } else {
            Err(NotStarted::Waiting(format!("{kind} \"{name}\" not found")))
        };
    };
    let Some(items) = items else {
        return Ok(data);
    };
    let mut files = BTreeMap::new();
    for item in items {
        match data.remove(&item.key) {
            Some(content) => {
                files.insert(item.path.clone(), content);
            }
            None if optional => {}
            None => {
                return Err(NotStarted::Waiting(format!(
                    "{kind} \"{name}\" has no key \"{}\"",
                    item.key
                )));
            }
        }
    }
    Ok(files)
}

/// Writes `files` into `dir`, each through a rename so a reader sees a whole old or new file;
/// unchanged files are not touched, files no longer projected are removed.
fn project(dir: &Path, files: &BTreeMap<String, Vec<u8>>) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    for (name, content) in files {
        let path = dir.join(name);
        if std::fs::read(&path).is_ok_and(|old| old == *content) {
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        let aside = dir.join(format!("..{}.projecting", name.replace('/', "_")));
        std::fs::write(&aside, content).map_err(|e| Error::io(&aside, e))?;
        std::fs::rename(&aside, &path).map_err(|e| Error::io(&path, e))?;
    }
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().is_ok_and(|t| t.is_file()) && !files.contains_key(&name) {
            std::fs::remove_file(entry.path()).map_err(|e| Error::io(&entry.path(), e))?;
        }
    }
    Ok(())
}

/// A container's value (an argument, or an environment value) as its local process needs it:
/// an absolute path — also the value of `--flag=/path` and the path of `scheme:///path` — under
/// `root`, and a socket address whose port is a container port at that port's local address.
/// Anything else is kept.
pub fn localize(value: &str, root: &Path, ports: &BTreeMap<u16, SocketAddr>) -> String {
    if let Some((flag, rest)) = value.split_once('=')
        && flag.starts_with('-')
    {
        return format!("{flag}={}", localize_value(rest, root, ports));
    }
    localize_value(value, root, ports)
}

fn localize_value(value: &str, root: &Path, ports: &BTreeMap<u16, SocketAddr>) -> String {
    let rooted = |path: &str| {
        root.join(path.trim_start_matches('/'))
            .display()
            .to_string()
    };
    if value.starts_with('/') {
        return rooted(value);
    }
    if let Some((scheme, path)) = value.split_once("://")
        && path.starts_with('/')
        && !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    {
        return format!("{scheme}://{}", rooted(path));
    }
    if let Ok(addr) = value.parse::<SocketAddr>()
        && let Some(local) = ports.get(&addr.port())
    {
        return local.to_string();
    }
    value.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|_| unreachable!())
    }

    #[test]
    fn container_values_map_onto_the_sandbox() {
        let root = Path::new("/w/pods/helpdesk-runtime-7f9c-x2b/root");
        let ports = BTreeMap::from([
            (50051, addr("127.0.0.1:40001")),
            (8080, addr("127.0.0.1:40002")),
        ]);
        let local = |v: &str| localize(v, root, &ports);
        assert_eq!(local("serve"), "serve");
        assert_eq!(local("--runtime-config"), "--runtime-config");
        assert_eq!(
            local("/etc/switchboard/runtime-config.json"),
            "/w/pods/helpdesk-runtime-7f9c-x2b/root/etc/switchboard/runtime-config.json"
        );
        assert_eq!(
            local("--artifacts=/var/lib/switchboard/artifacts"),
            "--artifacts=/w/pods/helpdesk-runtime-7f9c-x2b/root/var/lib/switchboard/artifacts"
        );
        assert_eq!(
            local("sqlite:///var/lib/switchboard/state/outcomes.db"),
            "sqlite:///w/pods/helpdesk-runtime-7f9c-x2b/root/var/lib/switchboard/state/outcomes.db"
        );
        assert_eq!(local("/"), "/w/pods/helpdesk-runtime-7f9c-x2b/root/");
        assert_eq!(local("0.0.0.0:8080"), "127.0.0.1:40002");
        assert_eq!(
            local("--grpc-addr=0.0.0.0:50051"),
            "--grpc-addr=127.0.0.1:40001"
        );
        // Not a container port, not a path: kept.
        assert_eq!(local("0.0.0.0:9090"), "0.0.0.0:9090");
        assert_eq!(
            local("http://prometheus:9090/api"),
            "http://prometheus:9090/api"
        );
        assert_eq!(local("720h"), "720h");
    }

    #[test]
    fn config_map_volumes_project_every_key_or_the_items_and_wait_for_what_is_missing() {
        let data = BTreeMap::from([
            ("golden.jsonl".to_owned(), b"{}".to_vec()),
            ("other".to_owned(), b"x".to_vec()),
        ]);
        let all = select("configmap", "golden", Some(data.clone()), None, false);
        assert!(matches!(all, Ok(files) if files.len() == 2));
        let item = KeyToPath {
            key: "golden.jsonl".to_owned(),
            path: "set.jsonl".to_owned(),
            mode: None,
        };
        let one = select(
            "configmap",
            "golden",
            Some(data.clone()),
            Some(&[item]),
            false,
        );
        assert!(matches!(one, Ok(files) if files.keys().eq(["set.jsonl"])));
        let missing = KeyToPath {
            key: "absent".to_owned(),
            path: "absent".to_owned(),
            mode: None,
        };
        assert!(matches!(
            select("configmap", "golden", Some(data), Some(&[missing]), false),
            Err(NotStarted::Waiting(m)) if m == "configmap \"golden\" has no key \"absent\""
        ));
        assert!(matches!(
            select("secret", "token", None, None, false),
            Err(NotStarted::Waiting(m)) if m == "secret \"token\" not found"
        ));
        assert!(
            matches!(select("secret", "token", None, None, true), Ok(files) if files.is_empty())
        );
    }

    #[test]
    fn projection_replaces_changed_files_and_removes_dropped_ones() {
        let dir =
            std::env::temp_dir().join(format!("switchboard-e2e-project-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let files = |pairs: &[(&str, &str)]| -> BTreeMap<String, Vec<u8>> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
                .collect()
        };
        project(&dir, &files(&[("a", "1"), ("b", "2")])).unwrap_or_else(|e| panic!("{e}"));
        project(&dir, &files(&[("a", "3")])).unwrap_or_else(|e| panic!("{e}"));
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
        assert_eq!(read("a").as_deref(), Some("3"));
        assert_eq!(read("b"), None);
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{e}"))
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, ["a"], "nothing written aside is left behind");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
