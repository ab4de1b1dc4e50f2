//! `oci://` adapter artifacts: PEFT directories in OCI registries (the ORAS project's
//! `oci-client`).
//!
//! Two layouts are read, the two that `oras push` produces:
//! - **files**: each file of the directory is a layer whose `org.opencontainers.image.title`
//!   annotation is its file name (`oras push reg/repo:tag adapter_config.json
//!   adapter_model.safetensors`); layers with other titles (a README) are ignored;
//! - **one tar(.gz) layer** holding the directory (`oras push reg/repo:tag ./adapter`, or any
//!   single-layer image): `adapter_config.json` and `adapter_model.safetensors` are taken from it
//!   wherever they are (at the root or in one folder); a second copy of either is refused.
//!
//! Only those two files are written, under their own names: nothing in a manifest or tar chooses
//! a path. Credentials come from a Docker config (a `kubernetes.io/dockerconfigjson` Secret):
//! `auth` or `username`/`password` (HTTP basic, or exchanged for a bearer token when the registry
//! asks for one) and `registrytoken` (sent as a bearer token). Registries on a loopback address,
//! and those named in [`OciOptions::plain_http`], are spoken to over plain HTTP; every other one
//! over HTTPS (rustls, the platform's roots).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::{OciDescriptor, OciImageManifest, OciManifest};

pub use oci_client::Reference;
pub use oci_client::secrets::RegistryAuth;

use crate::{ADAPTER_FILES, CONFIG_FILE, MAX_FILE_BYTES, WEIGHTS_FILE};

/// Annotation naming a layer's file (OCI image spec; what ORAS writes).
pub const TITLE_ANNOTATION: &str = "org.opencontainers.image.title";
/// `artifactType` of the manifests [`OciClient::push_peft`] writes.
pub const ARTIFACT_TYPE: &str = "application/vnd.switchboard.adapter.v1";
/// Media type of the empty config blob of an OCI artifact manifest.
pub const EMPTY_CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// ORAS's default media type of a file layer.
pub const FILE_LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
/// Media type of a gzipped tar layer.
pub const TAR_GZIP_LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Why an `oci://` artifact could not be pulled (or pushed). The message names the reference.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The registry refused or failed a request (unreachable, 401/403, unknown manifest, ...).
    #[error("oci://{reference}: {message}")]
    Registry {
        /// The reference.
        reference: String,
        /// The client's error.
        message: String,
    },
    /// The manifest is not a PEFT artifact in a layout this reader understands.
    #[error("oci://{reference}: {message}")]
    Layout {
        /// The reference.
        reference: String,
        /// What is wrong.
        message: String,
    },
    /// The registry credentials cannot be used.
    #[error("registry credentials for {registry}: {message}")]
    Credentials {
        /// The registry (`host[:port]`).
        registry: String,
        /// What is wrong.
        message: String,
    },
    /// Writing or reading a local file failed.
    #[error("oci://{reference}: {action} {path}: {source}")]
    Io {
        /// The reference.
        reference: String,
        /// What was being done.
        action: &'static str,
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

/// How registries are reached.
#[derive(Debug, Clone, Default)]
pub struct OciOptions {
    /// Registries (`host[:port]`) spoken to over plain HTTP besides loopback ones.
    pub plain_http: Vec<String>,
}

/// What a pull fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// The manifest's digest (`sha256:...`), for logs.
    pub manifest_digest: String,
    /// Which layout the manifest had.
    pub layout: Layout,
}

/// Layout of a PEFT artifact in a registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One layer per file, named by the title annotation (ORAS files).
    Files,
    /// One tar.gz layer holding the directory (ORAS directory, or an image layer).
    TarGz,
}

/// Registry credentials from a Docker config file (`~/.docker/config.json`, the
/// `.dockerconfigjson` key of a `kubernetes.io/dockerconfigjson` Secret, or the older
/// `.dockercfg` map without `auths`).
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    entries: BTreeMap<String, serde_json::Value>,
}

impl Credentials {
    /// Parses a Docker config document.
    pub fn from_docker_config(bytes: &[u8]) -> Result<Self, String> {
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| format!("not a Docker config JSON document: {e}"))?;
        let auths = value.get("auths").unwrap_or(&value);
        let Some(map) = auths.as_object() else {
            return Err("a Docker config needs an \"auths\" object".to_owned());
        };
        let entries = map
            .iter()
            .map(|(key, entry)| (registry_key(key), entry.clone()))
            .collect();
        Ok(Self { entries })
    }

    /// The authentication for `registry` (`host[:port]`, as in the reference): anonymous when
    /// the config has no entry for it.
    pub fn auth_for(&self, registry: &str) -> Result<RegistryAuth, OciError> {
        let Some(entry) = self.entries.get(&registry_key(registry)) else {
            return Ok(RegistryAuth::Anonymous);
        };
        let err = |message: &str| OciError::Credentials {
            registry: registry.to_owned(),
            message: message.to_owned(),
        };
        let field = |name: &str| {
            entry
                .get(name)
                .and_then(serde_json::Value::as_str)
                .filter(|s| !s.is_empty())
        };
        if let Some(token) = field("registrytoken") {
            return Ok(RegistryAuth::Bearer(token.to_owned()));
        }
        if let (Some(user), Some(password)) = (field("username"), field("password")) {
            return Ok(RegistryAuth::Basic(user.to_owned(), password.to_owned()));
        }
        if let Some(auth) = field("auth") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|_| err("\"auth\" is not base64"))?;
            let decoded = String::from_utf8(decoded).map_err(|_| err("\"auth\" is not UTF-8"))?;
            let (user, password) = decoded
                .split_once(':')
                .ok_or_else(|| err("\"auth\" is not base64 of user:password"))?;
            return Ok(RegistryAuth::Basic(user.to_owned(), password.to_owned()));
        }
        if field("identitytoken").is_some() {
            return Err(err(
                "identitytoken (an OAuth2 refresh token) is not supported: use username/password \
                 or registrytoken",
            ));
        }
        Err(err(
            "the entry has none of auth, username/password or registrytoken",
        ))
    }
}

/// The key a registry is looked up by: host[:port] without scheme or path, Docker Hub's
/// aliases folded into one.
fn registry_key(key: &str) -> String {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key).to_ascii_lowercase();
    match host.as_str() {
        "docker.io" | "registry-1.docker.io" | "index.docker.io" => "docker.io".to_owned(),
        _ => host,
    }
}

/// Whether `registry` (`host[:port]`) is a loopback address.
fn is_loopback(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => registry.rsplit_once(':').map_or(registry, |(h, _)| h),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// An OCI registry client for PEFT artifacts.
#[derive(Debug, Clone, Default)]
pub struct OciClient {
    options: OciOptions,
}

impl OciClient {
    /// A client with `options`.
    pub fn new(options: OciOptions) -> Self {
        Self { options }
    }

    fn client_for(&self, reference: &Reference) -> Result<oci_client::Client, OciError> {
        // reqwest is built without a bundled crypto provider; the workspace's is ring. Installing
        // it as the process default fails harmlessly when one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let registry = reference.resolve_registry().to_owned();
        let plain = is_loopback(&registry) || self.options.plain_http.contains(&registry);
        let config = ClientConfig {
            protocol: if plain {
                ClientProtocol::HttpsExcept(vec![registry])
            } else {
                ClientProtocol::Https
            },
            // An image index is a multi-platform image, not an adapter: refused, not resolved.
            platform_resolver: None,
            connect_timeout: Some(std::time::Duration::from_secs(30)),
            read_timeout: Some(std::time::Duration::from_secs(120)),
            ..ClientConfig::default()
        };
        oci_client::Client::try_from(config).map_err(|e| OciError::Registry {
            reference: reference.whole(),
            message: format!("building the registry client: {e}"),
        })
    }

    /// Pulls the PEFT artifact `reference` into the existing, empty directory `dest`, which
    /// then holds `adapter_config.json` and `adapter_model.safetensors` (the caller verifies the
    /// digest). Blob digests are checked against the manifest as they stream in.
    pub async fn pull_peft(
        &self,
        reference: &Reference,
        auth: &RegistryAuth,
        dest: &Path,
    ) -> Result<Pulled, OciError> {
        let whole = reference.whole();
        let client = self.client_for(reference)?;
        let registry_err = |e: oci_client::errors::OciDistributionError| OciError::Registry {
            reference: whole.clone(),
            message: e.to_string(),
        };
        let layout_err = |message: String| OciError::Layout {
            reference: whole.clone(),
            message,
        };
        let (manifest, manifest_digest) = client
            .pull_manifest(reference, auth)
            .await
            .map_err(registry_err)?;
        let manifest = match manifest {
            OciManifest::Image(m) => m,
            OciManifest::ImageIndex(_) => {
                return Err(layout_err(
                    "is an image index (a multi-platform image), not a PEFT artifact manifest"
                        .into(),
                ));
            }
        };
        for layer in &manifest.layers {
            if u64::try_from(layer.size).unwrap_or(u64::MAX) > MAX_FILE_BYTES {
                return Err(layout_err(format!(
                    "layer {} has {} bytes, over the {MAX_FILE_BYTES} byte limit",
                    layer.digest, layer.size
                )));
            }
        }
        let titled: BTreeMap<&str, &OciDescriptor> = manifest
            .layers
            .iter()
            .filter_map(|l| {
                let title = l.annotations.as_ref()?.get(TITLE_ANNOTATION)?;
                ADAPTER_FILES
                    .contains(&title.as_str())
                    .then_some((title.as_str(), l))
            })
            .collect();
        let layout = if titled.is_empty() {
            let tars: Vec<&OciDescriptor> = manifest
                .layers
                .iter()
                .filter(|l| l.media_type.contains("tar"))
                .collect();
            let layer: &OciDescriptor = match (manifest.layers.as_slice(), tars.as_slice()) {
                ([only], _) => only,
                (_, [only]) => only,
                _ => {
                    return Err(layout_err(format!(
                        "{} layers, none titled {CONFIG_FILE} or {WEIGHTS_FILE} \
                         ({TITLE_ANNOTATION}) and not a single tar(.gz) layer",
                        manifest.layers.len()
                    )));
                }
            };
            let archive = dest.join(".layer");
            self.pull_blob(&client, reference, layer, &archive).await?;
            let (archive_for_task, dest_for_task) = (archive.clone(), dest.to_path_buf());
            let unpacked =
                tokio::task::spawn_blocking(move || unpack_peft(&archive_for_task, &dest_for_task))
                    .await
                    .map_err(|e| layout_err(format!("unpacking task failed: {e}")))?;
            let _ = tokio::fs::remove_file(&archive).await;
            unpacked.map_err(|m| layout_err(format!("layer {}: {m}", layer.digest)))?;
            Layout::TarGz
        } else {
            for file in ADAPTER_FILES {
                let Some(layer) = titled.get(file) else {
                    return Err(layout_err(format!(
                        "no layer titled {file} ({TITLE_ANNOTATION}); layers: {}",
                        describe_layers(&manifest)
                    )));
                };
                self.pull_blob(&client, reference, layer, &dest.join(file))
                    .await?;
            }
            Layout::Files
        };
        Ok(Pulled {
            manifest_digest,
            layout,
        })
    }

    async fn pull_blob(
        &self,
        client: &oci_client::Client,
        reference: &Reference,
        layer: &OciDescriptor,
        to: &Path,
    ) -> Result<(), OciError> {
        let file = tokio::fs::File::create(to)
            .await
            .map_err(|source| OciError::Io {
                reference: reference.whole(),
                action: "create",
                path: to.display().to_string(),
                source,
            })?;
        client
            .pull_blob(reference, layer, file)
            .await
            .map_err(|e| OciError::Registry {
                reference: reference.whole(),
                message: format!("blob {}: {e}", layer.digest),
            })
    }

    /// Pushes the PEFT directory `dir` as `reference` in `layout`: the files as titled layers
    /// (like `oras push ref adapter_config.json adapter_model.safetensors`), or the directory as
    /// one tar.gz layer (like `oras push ref ./dir`). Returns the manifest URL.
    pub async fn push_peft(
        &self,
        reference: &Reference,
        auth: &RegistryAuth,
        dir: &Path,
        layout: Layout,
    ) -> Result<String, OciError> {
        let whole = reference.whole();
        let io = |action: &'static str, path: &Path| {
            let (reference, path) = (whole.clone(), path.display().to_string());
            move |source| OciError::Io {
                reference,
                action,
                path,
                source,
            }
        };
        let title = |name: &str| {
            Some(BTreeMap::from([(
                TITLE_ANNOTATION.to_owned(),
                name.to_owned(),
            )]))
        };
        let layers = match layout {
            Layout::Files => {
                let mut layers = Vec::new();
                for file in ADAPTER_FILES {
                    let path = dir.join(file);
                    let data = tokio::fs::read(&path).await.map_err(io("read", &path))?;
                    layers.push(ImageLayer::new(
                        data,
                        FILE_LAYER_MEDIA_TYPE.to_owned(),
                        title(file),
                    ));
                }
                layers
            }
            Layout::TarGz => {
                let name = dir.file_name().map_or_else(
                    || "adapter".to_owned(),
                    |n| n.to_string_lossy().into_owned(),
                );
                let (dir_for_task, name_for_task) = (dir.to_path_buf(), name.clone());
                let data =
                    tokio::task::spawn_blocking(move || tar_gz_dir(&dir_for_task, &name_for_task))
                        .await
                        .map_err(|e| OciError::Layout {
                            reference: whole.clone(),
                            message: format!("packing task failed: {e}"),
                        })?
                        .map_err(io("pack", dir))?;
                let mut annotations = title(&name).unwrap_or_default();
                annotations.insert("io.deis.oras.content.unpack".to_owned(), "true".to_owned());
                vec![ImageLayer::new(
                    data,
                    TAR_GZIP_LAYER_MEDIA_TYPE.to_owned(),
                    Some(annotations),
                )]
            }
        };
        let config = Config::new(b"{}".to_vec(), EMPTY_CONFIG_MEDIA_TYPE.to_owned(), None);
        let mut manifest = OciImageManifest::build(&layers, &config, None);
        manifest.artifact_type = Some(ARTIFACT_TYPE.to_owned());
        let client = self.client_for(reference)?;
        let response = client
            .push(reference, &layers, config, auth, Some(manifest))
            .await
            .map_err(|e| OciError::Registry {
                reference: whole.clone(),
                message: format!("push: {e}"),
            })?;
        Ok(response.manifest_url)
    }
}

fn describe_layers(manifest: &OciImageManifest) -> String {
    manifest
        .layers
        .iter()
        .map(|l| {
            let title = l
                .annotations
                .as_ref()
                .and_then(|a| a.get(TITLE_ANNOTATION))
                .map_or("untitled", String::as_str);
            format!("{title} ({})", l.media_type)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Extracts the adapter files of the tar (gzipped or not: the magic bytes decide) at `archive`
/// into `dest`, by file name only.
fn unpack_peft(archive: &Path, dest: &Path) -> Result<(), String> {
    use std::io::Read;
    let mut magic = [0u8; 2];
    let gzip = std::fs::File::open(archive)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == [0x1f, 0x8b];
    let file = std::fs::File::open(archive).map_err(|e| format!("open: {e}"))?;
    let reader: Box<dyn Read> = if gzip {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut tar = tar::Archive::new(reader);
    let mut found: BTreeMap<&str, PathBuf> = BTreeMap::new();
    for entry in tar
        .entries()
        .map_err(|e| format!("not a tar archive: {e}"))?
    {
        let mut entry = entry.map_err(|e| format!("reading the tar archive: {e}"))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry
            .path()
            .map_err(|e| format!("a tar entry has an unreadable path: {e}"))?
            .into_owned();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(file) = ADAPTER_FILES.iter().find(|f| **f == name) else {
            continue;
        };
        if let Some(first) = found.get(file) {
            return Err(format!(
                "holds {file} twice ({} and {})",
                first.display(),
                path.display()
            ));
        }
        if entry.header().size().unwrap_or(u64::MAX) > MAX_FILE_BYTES {
            return Err(format!(
                "{} is over the {MAX_FILE_BYTES} byte limit",
                path.display()
            ));
        }
        let target = dest.join(file);
        let mut out =
            std::fs::File::create(&target).map_err(|e| format!("{}: {e}", target.display()))?;
        std::io::copy(&mut (&mut entry).take(MAX_FILE_BYTES), &mut out)
            .map_err(|e| format!("extracting {}: {e}", path.display()))?;
        found.insert(file, path);
    }
    for file in ADAPTER_FILES {
        if !found.contains_key(file) {
            return Err(format!("the archive holds no {file}"));
        }
    }
    Ok(())
}

/// A tar.gz of the adapter files of `dir`, under the folder `name`.
fn tar_gz_dir(dir: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    for file in ADAPTER_FILES {
        tar.append_path_with_name(dir.join(file), format!("{name}/{file}"))?;
    }
    tar.into_inner()?.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docker_config(entry: serde_json::Value) -> Credentials {
        let doc = serde_json::json!({"auths": {"https://registry.example.com:5000/v2/": entry}});
        Credentials::from_docker_config(doc.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn docker_config_entries_become_registry_auth() {
        let b64 = base64::engine::general_purpose::STANDARD.encode("robot:s3cret");
        let basic = RegistryAuth::Basic("robot".into(), "s3cret".into());
        assert_eq!(
            docker_config(serde_json::json!({"auth": b64}))
                .auth_for("registry.example.com:5000")
                .unwrap(),
            basic
        );
        assert_eq!(
            docker_config(serde_json::json!({"username": "robot", "password": "s3cret"}))
                .auth_for("REGISTRY.example.com:5000")
                .unwrap(),
            basic
        );
        assert_eq!(
            docker_config(serde_json::json!({"registrytoken": "tok"}))
                .auth_for("registry.example.com:5000")
                .unwrap(),
            RegistryAuth::Bearer("tok".into())
        );
        // Another registry: anonymous.
        assert_eq!(
            docker_config(serde_json::json!({"registrytoken": "tok"}))
                .auth_for("other.example.com")
                .unwrap(),
            RegistryAuth::Anonymous
        );
        let e = docker_config(serde_json::json!({"identitytoken": "x"}))
            .auth_for("registry.example.com:5000")
            .unwrap_err();
        assert!(e.to_string().contains("identitytoken"), "{e}");
        // Docker Hub's aliases and the legacy .dockercfg shape.
        let legacy = Credentials::from_docker_config(
            br#"{"https://index.docker.io/v1/": {"username": "u", "password": "p"}}"#,
        )
        .unwrap();
        assert_eq!(
            legacy.auth_for("docker.io").unwrap(),
            RegistryAuth::Basic("u".into(), "p".into())
        );
        assert!(Credentials::from_docker_config(b"[]").is_err());
    }

    #[test]
    fn loopback_registries_are_plain_http() {
        for r in [
            "127.0.0.1:5000",
            "localhost:5000",
            "[::1]:5000",
            "localhost",
        ] {
            assert!(is_loopback(r), "{r}");
        }
        for r in [
            "registry.example.com",
            "10.0.0.1:5000",
            "localhost.example.com",
        ] {
            assert!(!is_loopback(r), "{r}");
        }
    }

    #[test]
    fn tar_layers_yield_the_two_files_by_name_only() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("pricing-1.3.0");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join(CONFIG_FILE), b"{\"r\": 4}").unwrap();
        std::fs::write(src.join(WEIGHTS_FILE), b"weights").unwrap();
        let archive = tmp.path().join("layer");
        std::fs::write(&archive, tar_gz_dir(&src, "pricing-1.3.0").unwrap()).unwrap();
        let dest = tmp.path().join("out");
        std::fs::create_dir_all(&dest).unwrap();
        unpack_peft(&archive, &dest).unwrap();
        assert_eq!(std::fs::read(dest.join(WEIGHTS_FILE)).unwrap(), b"weights");
        assert_eq!(
            std::fs::read(dest.join(CONFIG_FILE)).unwrap(),
            b"{\"r\": 4}"
        );

        // A plain tar with a second weights file in another folder is ambiguous.
        let mut tar = tar::Builder::new(Vec::new());
        for path in [
            "a/adapter_model.safetensors",
            "b/adapter_model.safetensors",
            "a/adapter_config.json",
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(1);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, path, &b"x"[..]).unwrap();
        }
        std::fs::write(&archive, tar.into_inner().unwrap()).unwrap();
        let ambiguous = tempfile::tempdir().unwrap();
        let e = unpack_peft(&archive, ambiguous.path()).unwrap_err();
        assert!(e.contains("twice"), "{e}");

        std::fs::write(&archive, b"not a tar at all, just bytes").unwrap();
        assert!(unpack_peft(&archive, &dest).is_err());
    }
}
