//! The content-addressed adapter artifact cache (`--artifacts`).
//!
//! An adapter artifact is a PEFT directory (`adapter_config.json` + `adapter_model.safetensors`).
//! It is copied from its URI (`file:///abs/dir`, or `http(s)://...` serving both files under the
//! URI) into `<root>/sha256-<hex>/`, where `<hex>` is the digest of `adapter_model.safetensors`
//! that the RuntimeConfig names. The digest is verified before the directory is published (by
//! rename, so a half-copied artifact is never visible) and again whenever a cached directory is
//! reused, so a corrupted cache entry is fetched anew instead of being loaded.
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest as _, Sha256};
use switchboard_crds::runtime_config::AdapterArtifact;

use crate::http_client::HttpClient;

/// The files of a PEFT adapter directory.
pub const ADAPTER_FILES: [&str; 2] = ["adapter_config.json", "adapter_model.safetensors"];
/// The file the digest covers.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// Largest file accepted from an HTTP artifact URI.
const MAX_HTTP_BYTES: usize = 1 << 30;

/// Why an artifact could not be made available.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The URI's scheme is not supported.
    #[error("artifact {uri}: unsupported URI (use file:///abs/dir or http(s)://...)")]
    UnsupportedUri {
        /// The URI.
        uri: String,
    },
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
}

/// The cache directory.
#[derive(Debug)]
pub struct ArtifactCache {
    root: PathBuf,
    http: HttpClient,
    seq: AtomicU64,
}

/// Lowercase hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

impl ArtifactCache {
    /// A cache rooted at `root` (created if missing).
    pub fn open(root: impl Into<PathBuf>, http: HttpClient) -> std::io::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root)?;
        Ok(Self {
            root,
            http,
            seq: AtomicU64::new(0),
        })
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
            if let Some(path) = uri.strip_prefix("file://") {
                let from = PathBuf::from(path);
                if !from.is_absolute() {
                    return Err(ArtifactError::UnsupportedUri { uri: uri.clone() });
                }
                for file in ADAPTER_FILES {
                    tokio::fs::copy(from.join(file), staging.join(file))
                        .await
                        .map_err(io("copy", &from.join(file)))?;
                }
            } else if uri.starts_with("http://") || uri.starts_with("https://") {
                let base = uri.trim_end_matches('/');
                for file in ADAPTER_FILES {
                    let url = format!("{base}/{file}");
                    let body = self
                        .http
                        .get(&url, MAX_HTTP_BYTES)
                        .await
                        .map_err(|message| ArtifactError::Http {
                            uri: uri.clone(),
                            message: format!("GET {url}: {message}"),
                        })?;
                    tokio::fs::write(staging.join(file), body)
                        .await
                        .map_err(io("write", &staging.join(file)))?;
                }
            } else {
                return Err(ArtifactError::UnsupportedUri { uri: uri.clone() });
            }
            verify_blocking(&staging, artifact, &uri).await?;
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
    let actual = sha256_file(&weights).map_err(|source| ArtifactError::Io {
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

    fn artifact(uri: Option<String>, hex: &str) -> AdapterArtifact {
        AdapterArtifact {
            uri,
            sha256: format!("sha256:{hex}").parse().unwrap(),
        }
    }

    fn peft_dir(dir: &Path, weights: &[u8]) -> String {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("adapter_config.json"), b"{}").unwrap();
        std::fs::write(dir.join(WEIGHTS_FILE), weights).unwrap();
        hex(&Sha256::digest(weights))
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
        let left: Vec<_> = std::fs::read_dir(tmp.path().join("cache"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "{left:?}");

        let err = cache
            .ensure(&artifact(Some("s3://bucket/x".into()), &wrong))
            .await
            .unwrap_err();
        assert!(matches!(err, ArtifactError::UnsupportedUri { .. }), "{err}");
    }
}
