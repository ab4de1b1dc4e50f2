//! The content-addressed adapter artifact cache (`--artifacts`).
//!
//! An adapter artifact is a PEFT directory (`adapter_config.json` + `adapter_model.safetensors`).
//! It is copied from its URI into `<root>/sha256-<hex>/`, where `<hex>` is the digest the
//! RuntimeConfig names ([`switchboard_artifact::weights_digest`], the definition the operator's
//! check uses too):
//! - `file:///abs/dir`: copied from the runtime's filesystem;
//! - `pvc://<claim>/<path>`: copied from `<pvc-root>/<claim>/<path>`, where the Router's
//!   Deployment mounts the claim read-only (`--pvc-root`, default `/var/run/switchboard/pvc`);
//! - `http(s)://...`: both files downloaded from under the URL;
//! - `oci://registry/repository:tag|@digest`: pulled from the registry (ORAS file layers or one
//!   tar.gz layer), with the credentials of the artifact's pull Secret read from
//!   `<secrets>/<name>/.dockerconfigjson` when it names one.
//!
//! The digest is verified before the directory is published (by rename, so a half-copied
//! artifact is never visible) and again whenever a cached directory is reused, so a corrupted
//! cache entry is fetched anew instead of being loaded.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use switchboard_artifact::{
    ArtifactUri, DOCKER_CONFIG_KEY, PVC_ROOT, UriError,
    oci::{Credentials, OciClient, OciError, RegistryAuth},
    pvc_path,
};
use switchboard_crds::runtime_config::AdapterArtifact;

use crate::http_client::HttpClient;

pub use switchboard_artifact::{ADAPTER_FILES, WEIGHTS_FILE};

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Largest file accepted from an HTTP artifact URI.
const MAX_HTTP_BYTES: usize = 1 << 30;

/// Why an artifact could not be made available.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The URI's scheme is not supported or the URI is malformed.
    #[error(transparent)]
    InvalidUri(#[from] UriError),
    /// No URI and nothing cached under the digest.
    #[error("artifact {digest}: no URI and not in the artifact cache {cache}")]
    NotCached {
        /// The digest.
        digest: String,
        /// The cache root.
        cache: String,
    },
    /// The content does not match the digest.
    #[error("artifact {uri}: sha256 of {WEIGHTS_FILE} is {actual}, expected {expected}")]
    DigestMismatch {
        /// Where it came from.
        uri: String,
        /// The digest computed.
        actual: String,
        /// The digest expected.
        expected: String,
    },
    /// Reading or writing a file failed.
    #[error("artifact {uri}: {action} {path}: {source}")]
    Io {
        /// Where it came from.
        uri: String,
        /// What was being done.
        action: &'static str,
        /// The path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// An HTTP download failed.
    #[error("artifact {uri}: {message}")]
    Http {
        /// Where it came from.
        uri: String,
        /// What went wrong.
        message: String,
    },
    /// An OCI registry pull failed (the message names the reference).
    #[error("artifact {uri}: {source}")]
    Oci {
        /// The URI.
        uri: String,
        /// The registry client's error.
        source: OciError,
    },
    /// The pull Secret's Docker config is missing or unusable.
    #[error("artifact {uri}: registry credentials {path}: {message}")]
    Credentials {
        /// The URI.
        uri: String,
        /// The Docker config file read.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// The cache directory.
#[derive(Debug)]
pub struct ArtifactCache {
    root: PathBuf,
    http: HttpClient,
    oci: OciClient,
    pvc_root: PathBuf,
    secrets: PathBuf,
    seq: AtomicU64,
}

impl ArtifactCache {
    /// A cache rooted at `root` (created if missing), reading `pvc://` artifacts under
    /// [`PVC_ROOT`] and pull Secrets under `/etc/switchboard/secrets` until
    /// [`with_sources`](Self::with_sources) says otherwise.
    pub fn open(root: impl Into<PathBuf>, http: HttpClient) -> std::io::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root)?;
        Ok(Self {
            root,
            http,
            oci: OciClient::default(),
            pvc_root: PathBuf::from(PVC_ROOT),
            secrets: PathBuf::from("/etc/switchboard/secrets"),
            seq: AtomicU64::new(0),
        })
    }

    /// Where claims of `pvc://` URIs are mounted (`<pvc_root>/<claim>`) and where the pull
    /// Secrets of `oci://` URIs are (`<secrets>/<name>/.dockerconfigjson`).
    pub fn with_sources(mut self, pvc_root: PathBuf, secrets: PathBuf) -> Self {
        self.pvc_root = pvc_root;
        self.secrets = secrets;
        self
    }

    /// The registry credentials of `artifact` for `registry`: anonymous without a pull Secret.
    fn registry_auth(
        &self,
        artifact: &AdapterArtifact,
        uri: &str,
        registry: &str,
    ) -> Result<RegistryAuth, ArtifactError> {
        let Some(secret) = &artifact.pull_secret else {
            return Ok(RegistryAuth::Anonymous);
        };
        let path = self.secrets.join(secret).join(DOCKER_CONFIG_KEY);
        let err = |message: String| ArtifactError::Credentials {
            uri: uri.to_owned(),
            path: path.display().to_string(),
            message,
        };
        let bytes = std::fs::read(&path).map_err(|e| err(e.to_string()))?;
        let credentials = Credentials::from_docker_config(&bytes).map_err(err)?;
        credentials
            .auth_for(registry)
            .map_err(|e| err(e.to_string()))
    }

    /// Where the artifact with `digest` lives once cached.
    pub fn dir_of(&self, artifact: &AdapterArtifact) -> PathBuf {
        self.root.join(format!(
            "sha256-{}",
            artifact.sha256.hex().to_ascii_lowercase()
        ))
    }

    /// Makes `artifact` available in the cache and returns its directory: reuses a verified cached
    /// copy, else copies or downloads it from its URI and verifies the digest.
    pub async fn ensure(&self, artifact: &AdapterArtifact) -> Result<PathBuf, ArtifactError> {
        let dir = self.dir_of(artifact);
        let label = artifact
            .uri
            .clone()
            .unwrap_or_else(|| artifact.sha256.to_string());
        if verify_blocking(&dir, artifact, &label).await.is_ok() {
            return Ok(dir);
        }
        let Some(uri) = artifact.uri.clone() else {
            return Err(ArtifactError::NotCached {
                digest: artifact.sha256.to_string(),
                cache: self.root.display().to_string(),
            });
        };
        let staging = self.root.join(format!(
            ".staging-{}-{}-{}",
            artifact.sha256.hex(),
            std::process::id(),
            self.seq.fetch_add(1, Ordering::Relaxed)
        ));
        let io = |action, path: &Path| {
            let uri = uri.clone();
            let path = path.display().to_string();
            move |source| ArtifactError::Io {
                uri,
                action,
                path,
                source,
            }
        };
        tokio::fs::create_dir_all(&staging)
            .await
            .map_err(io("create", &staging))?;
        let result = async {
            // A reference (Copy) for the closures below, so `staging` stays usable after.
            let staging = staging.as_path();
            let copy_from = |from: PathBuf| async move {
                for file in ADAPTER_FILES {
                    tokio::fs::copy(from.join(file), staging.join(file))
                        .await
                        .map_err(io("copy", &from.join(file)))?;
                }
                Ok::<(), ArtifactError>(())
            };
            match ArtifactUri::parse(&uri)? {
                ArtifactUri::File(from) => copy_from(from).await?,
                ArtifactUri::Pvc { claim, path } => {
                    copy_from(pvc_path(&self.pvc_root, &claim, &path)).await?;
                }
                ArtifactUri::Http(base) => {
                    let base = base.trim_end_matches('/');
                    for file in ADAPTER_FILES {
                        let url = format!("{base}/{file}");
                        let body = self.http.get(&url, MAX_HTTP_BYTES).await.map_err(|message| {
                            ArtifactError::Http {
                                uri: uri.clone(),
                                message: format!("GET {url}: {message}"),
                            }
                        })?;
                        tokio::fs::write(staging.join(file), body)
                            .await
                            .map_err(io("write", &staging.join(file)))?;
                    }
                }
                ArtifactUri::Oci(reference) => {
                    self.http
                        .egress()
                        .check_authority(reference.resolve_registry())
                        .await
                        .map_err(|message| ArtifactError::Http {
                            uri: uri.clone(),
                            message,
                        })?;
                    let auth =
                        self.registry_auth(artifact, &uri, reference.resolve_registry())?;
                    let pulled = self
                        .oci
                        .pull_peft(&reference, &auth, staging)
                        .await
                        .map_err(|source| ArtifactError::Oci {
                            uri: uri.clone(),
                            source,
                        })?;
                    tracing::info!(%uri, manifest = %pulled.manifest_digest, layout = ?pulled.layout, "adapter artifact pulled");
                }
            }
            verify_blocking(staging, artifact, &uri).await?;
            // A stale or corrupt entry under the final name is replaced.
            if dir.exists() {
                let _ = tokio::fs::remove_dir_all(&dir).await;
            }
            tokio::fs::rename(&staging, &dir)
                .await
                .map_err(io("rename", &dir))?;
            Ok(dir.clone())
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_dir_all(&staging).await;
        }
        if result.is_ok() {
            tracing::info!(%uri, dir = %dir.display(), "adapter artifact cached");
        }
        result
    }
}

/// Options of `verify-artifact`.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// The artifact: `pvc://<claim>/<path>` or `file:///<dir>`.
    #[arg(long)]
    uri: String,
    /// Where the claims of `pvc://` URIs are mounted (`<pvc-root>/<claim>`).
    #[arg(long, default_value = PVC_ROOT)]
    pvc_root: PathBuf,
    /// Also write the report to this file (the verification Job: `/dev/termination-log`).
    #[arg(long)]
    report_file: Option<PathBuf>,
}

/// `verify-artifact`: reports the digest and config of a directory artifact. A directory that
/// cannot be read is reported (`error`), not a failure of the command: the operator tells an
/// unavailable artifact from a broken Job by the report.
pub fn verify_command(args: &VerifyArgs) -> anyhow::Result<()> {
    let report = match ArtifactUri::parse(&args.uri) {
        Ok(ArtifactUri::Pvc { claim, path }) => switchboard_artifact::VerifyReport::of_dir(
            &args.uri,
            &pvc_path(&args.pvc_root, &claim, &path),
        ),
        Ok(ArtifactUri::File(dir)) => switchboard_artifact::VerifyReport::of_dir(&args.uri, &dir),
        Ok(other) => switchboard_artifact::VerifyReport {
            uri: args.uri.clone(),
            error: Some(format!(
                "verify-artifact reads directories (pvc://, file://), not {}:// URIs",
                other.scheme()
            )),
            ..Default::default()
        },
        Err(e) => switchboard_artifact::VerifyReport {
            uri: args.uri.clone(),
            error: Some(e.to_string()),
            ..Default::default()
        },
    };
    let json = serde_json::to_string(&report)?;
    if let Some(path) = &args.report_file {
        std::fs::write(path, &json)
            .map_err(|e| anyhow::anyhow!("writing the report to {}: {e}", path.display()))?;
    }
    println!("{json}");
    Ok(())
}

async fn verify_blocking(
    dir: &Path,
    artifact: &AdapterArtifact,
    label: &str,
) -> Result<(), ArtifactError> {
    let dir = dir.to_path_buf();
    let artifact = artifact.clone();
    let label = label.to_owned();
    tokio::task::spawn_blocking(move || verify(&dir, &artifact, &label))
        .await
        .map_err(|e| ArtifactError::Http {
            uri: String::new(),
            message: format!("verification task failed: {e}"),
        })?
}

/// Checks that `dir` holds both adapter files and that the weights match the digest.
pub fn verify(dir: &Path, artifact: &AdapterArtifact, label: &str) -> Result<(), ArtifactError> {
    let weights = dir.join(WEIGHTS_FILE);
    let config = dir.join(ADAPTER_FILES[0]);
    if !config.is_file() {
        return Err(ArtifactError::Io {
            uri: label.to_owned(),
            action: "read",
            path: config.display().to_string(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
    }
    let actual = switchboard_artifact::weights_digest(dir).map_err(|source| ArtifactError::Io {
        uri: label.to_owned(),
        action: "hash",
        path: weights.display().to_string(),
        source,
    })?;
    if !artifact.sha256.matches_hex(&actual) {
        return Err(ArtifactError::DigestMismatch {
            uri: label.to_owned(),
            actual: format!("sha256:{actual}"),
            expected: artifact.sha256.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_artifact::oci::{Layout, Reference};
    use switchboard_testkit::registry::{Registry, TEST_PASSWORD, TEST_USER};

    fn artifact(uri: Option<String>, hex: &str) -> AdapterArtifact {
        AdapterArtifact {
            uri,
            sha256: format!("sha256:{hex}").parse().unwrap(),
            pull_secret: None,
        }
    }

    fn peft_dir(dir: &Path, weights: &[u8]) -> String {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("adapter_config.json"), b"{}").unwrap();
        std::fs::write(dir.join(WEIGHTS_FILE), weights).unwrap();
        switchboard_artifact::sha256_hex(weights)
    }

    fn cache_entries(dir: &Path) -> Vec<std::fs::DirEntry> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    #[tokio::test]
    async fn file_artifacts_are_copied_verified_and_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let digest = peft_dir(&src, b"weights-v1");
        let cache = ArtifactCache::open(tmp.path().join("cache"), HttpClient::new()).unwrap();
        let a = artifact(Some(format!("file://{}", src.display())), &digest);
        let dir = cache.ensure(&a).await.unwrap();
        assert_eq!(
            dir,
            tmp.path().join("cache").join(format!("sha256-{digest}"))
        );
        assert_eq!(
            std::fs::read(dir.join(WEIGHTS_FILE)).unwrap(),
            b"weights-v1"
        );

        // Without a URI the cached copy is found by digest.
        std::fs::remove_dir_all(&src).unwrap();
        assert_eq!(cache.ensure(&artifact(None, &digest)).await.unwrap(), dir);

        // A corrupted cache entry is not served.
        std::fs::write(dir.join(WEIGHTS_FILE), b"tampered").unwrap();
        let err = cache.ensure(&artifact(None, &digest)).await.unwrap_err();
        assert!(matches!(err, ArtifactError::NotCached { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_digest_mismatch_is_refused_and_nothing_is_cached() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        peft_dir(&src, b"weights-v1");
        let cache = ArtifactCache::open(tmp.path().join("cache"), HttpClient::new()).unwrap();
        let wrong = "00".repeat(32);
        let err = cache
            .ensure(&artifact(Some(format!("file://{}", src.display())), &wrong))
            .await
            .unwrap_err();
        assert!(matches!(err, ArtifactError::DigestMismatch { .. }), "{err}");
        assert!(err.to_string().contains("expected sha256:0000"), "{err}");
        assert!(cache_entries(&tmp.path().join("cache")).is_empty());

        let err = cache
            .ensure(&artifact(Some("s3://bucket/x".into()), &wrong))
            .await
            .unwrap_err();
        assert!(matches!(err, ArtifactError::InvalidUri(_)), "{err}");
        assert!(err.to_string().contains("s3://bucket/x"), "{err}");
    }

    #[tokio::test]
    async fn pvc_uris_resolve_under_the_mount_root() {
        let tmp = tempfile::tempdir().unwrap();
        // What the Router's Deployment mounts: claim `adapters` at <pvc-root>/adapters.
        let pvc_root = tmp.path().join("pvc");
        let digest = peft_dir(&pvc_root.join("adapters/pricing/1.3.0"), b"pricing-1.3.0");
        let cache = ArtifactCache::open(tmp.path().join("cache"), HttpClient::new())
            .unwrap()
            .with_sources(pvc_root.clone(), tmp.path().join("secrets"));
        let uri = "pvc://adapters/pricing/1.3.0";
        let dir = cache
            .ensure(&artifact(Some(uri.into()), &digest))
            .await
            .unwrap();
        assert_eq!(
            std::fs::read(dir.join(WEIGHTS_FILE)).unwrap(),
            b"pricing-1.3.0"
        );
        // A claim that is not mounted: the error names the URI and the path looked at.
        let err = cache
            .ensure(&artifact(
                Some("pvc://other/pricing/1.3.0".into()),
                &"11".repeat(32),
            ))
            .await
            .unwrap_err();
        let message = err.to_string();
        assert!(message.contains("pvc://other/pricing/1.3.0"), "{message}");
        assert!(
            message.contains(&pvc_root.join("other/pricing/1.3.0").display().to_string()),
            "{message}"
        );
        // `..` cannot leave the claim.
        let err = cache
            .ensure(&artifact(
                Some("pvc://adapters/../x".into()),
                &"11".repeat(32),
            ))
            .await
            .unwrap_err();
        assert!(matches!(err, ArtifactError::InvalidUri(_)), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn oci_artifacts_are_pulled_from_a_registry_and_verified() {
        let tmp = tempfile::tempdir().unwrap();
        let registry = Registry::start(&tmp.path().join("registry")).unwrap();
        let src = tmp.path().join("pricing-1.3.0");
        let digest = peft_dir(&src, b"pricing-weights-1.3.0");
        let oci = OciClient::default();
        let push = |tag: &str, layout| {
            let reference: Reference = format!("{}/adapters/pricing:{tag}", registry.host())
                .parse()
                .unwrap();
            let (oci, src) = (oci.clone(), src.clone());
            async move {
                oci.push_peft(&reference, &RegistryAuth::Anonymous, &src, layout)
                    .await
                    .unwrap();
                format!("oci://{}", reference.whole())
            }
        };
        let files = push("1.3.0", Layout::Files).await;
        let tarball = push("1.3.0-tgz", Layout::TarGz).await;
        let cache_root = tmp.path().join("cache");
        let cache = ArtifactCache::open(&cache_root, HttpClient::new()).unwrap();

        // ORAS file layers: pulled, verified, cached under the weights digest.
        let dir = cache
            .ensure(&artifact(Some(files.clone()), &digest))
            .await
            .unwrap();
        assert_eq!(dir, cache_root.join(format!("sha256-{digest}")));
        assert_eq!(
            std::fs::read(dir.join(WEIGHTS_FILE)).unwrap(),
            b"pricing-weights-1.3.0"
        );
        assert_eq!(
            std::fs::read(dir.join("adapter_config.json")).unwrap(),
            b"{}"
        );

        // One tar.gz layer holding the directory: the same digest (of the weights, not of the
        // manifest or layer).
        std::fs::remove_dir_all(&dir).unwrap();
        let again = cache
            .ensure(&artifact(Some(tarball.clone()), &digest))
            .await
            .unwrap();
        assert_eq!(again, dir);

        // A wrong digest: refused, naming the URI and both digests; nothing cached.
        let wrong = "ab".repeat(32);
        let err = cache
            .ensure(&artifact(Some(files.clone()), &wrong))
            .await
            .unwrap_err();
        assert!(matches!(err, ArtifactError::DigestMismatch { .. }), "{err}");
        let message = err.to_string();
        assert!(message.contains(&files), "{message}");
        assert!(message.contains(&format!("sha256:{digest}")), "{message}");
        assert!(!cache_root.join(format!("sha256-{wrong}")).exists());
        assert_eq!(
            cache_entries(&cache_root).len(),
            1,
            "only the verified copy"
        );

        // A tag that was never pushed: the registry's refusal, naming the reference.
        let missing = format!("oci://{}/adapters/pricing:9.9.9", registry.host());
        let err = cache
            .ensure(&artifact(Some(missing.clone()), &wrong))
            .await
            .unwrap_err();
        assert!(matches!(err, ArtifactError::Oci { .. }), "{err}");
        assert!(err.to_string().contains(&missing), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn oci_pulls_use_the_mounted_pull_secret() {
        use base64::Engine as _;
        let tmp = tempfile::tempdir().unwrap();
        let registry = Registry::start_with_basic_auth(&tmp.path().join("registry")).unwrap();
        let src = tmp.path().join("adapter");
        let digest = peft_dir(&src, b"private-weights");
        let reference: Reference = format!("{}/private/billing:2.0.0", registry.host())
            .parse()
            .unwrap();
        let basic = RegistryAuth::Basic(TEST_USER.into(), TEST_PASSWORD.into());
        OciClient::default()
            .push_peft(&reference, &basic, &src, Layout::Files)
            .await
            .unwrap();
        let uri = format!("oci://{}", reference.whole());

        // The Secret as the kubelet mounts it: <secrets>/<name>/.dockerconfigjson.
        let secrets = tmp.path().join("secrets");
        std::fs::create_dir_all(secrets.join("registry-creds")).unwrap();
        let auth = base64::engine::general_purpose::STANDARD
            .encode(format!("{TEST_USER}:{TEST_PASSWORD}"));
        std::fs::write(
            secrets.join("registry-creds").join(DOCKER_CONFIG_KEY),
            serde_json::json!({"auths": {registry.host(): {"auth": auth}}}).to_string(),
        )
        .unwrap();
        let cache = ArtifactCache::open(tmp.path().join("cache"), HttpClient::new())
            .unwrap()
            .with_sources(tmp.path().join("pvc"), secrets);

        // Anonymous: the registry refuses.
        let err = cache
            .ensure(&artifact(Some(uri.clone()), &digest))
            .await
            .unwrap_err();
        assert!(matches!(err, ArtifactError::Oci { .. }), "{err}");
        // With the pull Secret: pulled and verified.
        let mut with_secret = artifact(Some(uri.clone()), &digest);
        with_secret.pull_secret = Some("registry-creds".into());
        let dir = cache.ensure(&with_secret).await.unwrap();
        assert_eq!(
            std::fs::read(dir.join(WEIGHTS_FILE)).unwrap(),
            b"private-weights"
        );
        // A Secret that is not mounted: the error names the file.
        std::fs::remove_dir_all(&dir).unwrap();
        with_secret.pull_secret = Some("missing".into());
        let err = cache.ensure(&with_secret).await.unwrap_err();
        assert!(matches!(err, ArtifactError::Credentials { .. }), "{err}");
        assert!(
            err.to_string().contains("missing/.dockerconfigjson"),
            "{err}"
        );
    }
}
