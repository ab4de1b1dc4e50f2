//! Adapter artifacts, as the operator's artifact check and the runtime's artifact cache both see
//! them: where a PEFT LoRA directory comes from ([`ArtifactUri`]: `file://`, `http(s)://`,
//! `oci://`, `pvc://`) and what its digest is ([`weights_digest`]).
//!
//! **The digest of an adapter artifact** is the sha256 of its `adapter_model.safetensors`, written
//! `sha256:<64 hex>` in `AdapterPatch.spec.artifact.sha256` and the RuntimeConfig. It is the same
//! whichever scheme delivered the directory: an OCI manifest or layer digest is the registry's
//! integrity check, not the adapter's identity (the same weights pushed as ORAS files or as one
//! tar.gz layer have different manifests and one artifact digest). The operator and the runtime
//! both call [`weights_digest`], so they cannot disagree.
//!
//! [`oci`] pulls (and, for tests and tooling, pushes) PEFT directories from OCI registries.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod egress;
pub mod oci;

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// Config file of a PEFT adapter directory.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// Weights file of a PEFT adapter directory; its sha256 is the artifact's digest.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// The files an adapter artifact consists of.
pub const ADAPTER_FILES: [&str; 2] = [CONFIG_FILE, WEIGHTS_FILE];
/// Largest artifact file accepted from any source (LoRA hot-fixes of rank <= 64 are far smaller).
pub const MAX_FILE_BYTES: u64 = 1 << 30;
/// Where the runtime pod mounts the PersistentVolumeClaims that `pvc://` artifacts name:
/// `pvc://<claim>/<path>` is `<PVC_ROOT>/<claim>/<path>` (the runtime's `--pvc-root`).
pub const PVC_ROOT: &str = "/var/run/switchboard/pvc";
/// Key of a `kubernetes.io/dockerconfigjson` Secret (registry credentials for `oci://`).
pub const DOCKER_CONFIG_KEY: &str = ".dockerconfigjson";

/// Lowercase hex sha256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
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

/// The digest of the PEFT directory `dir` (lowercase hex, without `sha256:`): the sha256 of its
/// [`WEIGHTS_FILE`]. The one definition the operator and the runtime share.
pub fn weights_digest(dir: &Path) -> std::io::Result<String> {
    sha256_file(&dir.join(WEIGHTS_FILE))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Why an artifact URI is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("artifact {uri}: {message}")]
pub struct UriError {
    /// The URI as written.
    pub uri: String,
    /// What is wrong with it.
    pub message: String,
}

/// A parsed `spec.artifact.uri`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactUri {
    /// `file:///abs/dir`: a directory on the reader's own filesystem.
    File(PathBuf),
    /// `http(s)://.../`: both files served under the URL.
    Http(String),
    /// `oci://registry/repository:tag` or `...@sha256:<hex>` (the reference without `oci://`).
    Oci(oci::Reference),
    /// `pvc://<claim>/<path>`: a directory on a PersistentVolumeClaim of the object's namespace,
    /// mounted read-only into the runtime pod under [`PVC_ROOT`].
    Pvc {
        /// The claim's name.
        claim: String,
        /// The directory inside the claim, normalised (no leading `/`, no `.` or empty segments;
        /// empty for the claim's root).
        path: String,
    },
}

impl ArtifactUri {
    /// Parses an artifact URI. `..` in a `pvc://` path and relative `file://` paths are refused:
    /// a URI may only name what its scheme grants.
    pub fn parse(uri: &str) -> Result<Self, UriError> {
        let err = |message: String| UriError {
            uri: uri.to_owned(),
            message,
        };
        if let Some(path) = uri.strip_prefix("file://") {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(err(
                    "a file:// URI needs an absolute path (file:///dir)".into()
                ));
            }
            return Ok(Self::File(path));
        }
        if uri.starts_with("http://") || uri.starts_with("https://") {
            return Ok(Self::Http(uri.to_owned()));
        }
        if let Some(reference) = uri.strip_prefix("oci://") {
            let parsed: oci::Reference = reference.parse().map_err(|e| {
                err(format!(
                    "not an OCI reference registry/repository[:tag|@sha256:digest]: {e}"
                ))
            })?;
            return Ok(Self::Oci(parsed));
        }
        if let Some(rest) = uri.strip_prefix("pvc://") {
            let (claim, path) = rest.split_once('/').unwrap_or((rest, ""));
            if !claim_name_ok(claim) {
                return Err(err(format!(
                    "claim {claim:?} is not a valid PersistentVolumeClaim name"
                )));
            }
            let mut segments = Vec::new();
            for segment in path.split('/') {
                match segment {
                    "" | "." => {}
                    ".." => return Err(err("a pvc:// path may not contain '..'".into())),
                    s => segments.push(s),
                }
            }
            return Ok(Self::Pvc {
                claim: claim.to_owned(),
                path: segments.join("/"),
            });
        }
        Err(err(
            "unsupported scheme (use oci://, http(s)://, pvc://<claim>/<path> or file:///<path>)"
                .into(),
        ))
    }

    /// The scheme, for messages and metrics (`file`, `http`, `oci`, `pvc`).
    pub fn scheme(&self) -> &'static str {
        match self {
            Self::File(_) => "file",
            Self::Http(_) => "http",
            Self::Oci(_) => "oci",
            Self::Pvc { .. } => "pvc",
        }
    }

    /// The claim a `pvc://` URI reads, if it is one.
    pub fn claim(&self) -> Option<&str> {
        match self {
            Self::Pvc { claim, .. } => Some(claim),
            _ => None,
        }
    }
}

/// What a verification Job reports about a `pvc://` artifact (the operator cannot mount claims,
/// so `switchboard-runtime verify-artifact` reads the directory inside the namespace and writes
/// this as its termination message, at most 4 KiB).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyReport {
    /// The URI verified.
    pub uri: String,
    /// `sha256:<hex>` of the weights ([`weights_digest`]), when they could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// `adapter_config.json` reduced to the fields the operator checks (`peft_type`, `r`,
    /// `lora_alpha`, `target_modules`, `base_model_name_or_path`), as JSON text; the first
    /// 512 bytes of the file when it is not JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// Why the directory could not be read (missing file, unreadable claim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Fields of `adapter_config.json` an artifact check compares with the spec.
pub const CHECKED_CONFIG_FIELDS: [&str; 5] = [
    "peft_type",
    "r",
    "lora_alpha",
    "target_modules",
    "base_model_name_or_path",
];

impl VerifyReport {
    /// Reads the PEFT directory `dir` that `uri` names.
    pub fn of_dir(uri: &str, dir: &Path) -> Self {
        let mut report = Self {
            uri: uri.to_owned(),
            ..Self::default()
        };
        let config_path = dir.join(CONFIG_FILE);
        let config = match std::fs::read(&config_path) {
            Ok(bytes) => bytes,
            Err(e) => {
                report.error = Some(format!("{}: {e}", config_path.display()));
                return report;
            }
        };
        match weights_digest(dir) {
            Ok(hex) => report.sha256 = Some(format!("sha256:{hex}")),
            Err(e) => {
                report.error = Some(format!("{}: {e}", dir.join(WEIGHTS_FILE).display()));
                return report;
            }
        }
        report.config = Some(match serde_json::from_slice::<serde_json::Value>(&config) {
            Ok(serde_json::Value::Object(map)) => serde_json::Value::Object(
                map.into_iter()
                    .filter(|(k, _)| CHECKED_CONFIG_FIELDS.contains(&k.as_str()))
                    .collect(),
            )
            .to_string(),
            _ => String::from_utf8_lossy(&config[..config.len().min(512)]).into_owned(),
        });
        report
    }
}

/// The claim of a `pvc://` URI, or `None` for other schemes and unparsable URIs.
pub fn pvc_claim(uri: &str) -> Option<String> {
    ArtifactUri::parse(uri).ok()?.claim().map(str::to_owned)
}

/// Where `pvc://<claim>/<path>` is when claims are mounted at `<root>/<claim>`.
pub fn pvc_path(root: &Path, claim: &str, path: &str) -> PathBuf {
    let mut out = root.join(claim);
    if !path.is_empty() {
        out.push(path);
    }
    out
}

/// A DNS-1123 subdomain (what Kubernetes accepts as a claim name).
fn claim_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse_by_scheme() {
        assert_eq!(
            ArtifactUri::parse("file:///adapters/pricing").unwrap(),
            ArtifactUri::File("/adapters/pricing".into())
        );
        assert_eq!(
            ArtifactUri::parse("https://a.example/x/").unwrap(),
            ArtifactUri::Http("https://a.example/x/".into())
        );
        match ArtifactUri::parse("oci://127.0.0.1:5000/adapters/pricing:1.3.0").unwrap() {
            ArtifactUri::Oci(r) => {
                assert_eq!(r.registry(), "127.0.0.1:5000");
                assert_eq!(r.repository(), "adapters/pricing");
                assert_eq!(r.tag(), Some("1.3.0"));
            }
            other => panic!("{other:?}"),
        }
        let digest = format!("sha256:{}", "a".repeat(64));
        match ArtifactUri::parse(&format!("oci://registry.example.com/adapters@{digest}")).unwrap()
        {
            ArtifactUri::Oci(r) => assert_eq!(r.digest(), Some(digest.as_str())),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            ArtifactUri::parse("pvc://adapters/pricing//1.3.0/").unwrap(),
            ArtifactUri::Pvc {
                claim: "adapters".into(),
                path: "pricing/1.3.0".into()
            }
        );
        assert_eq!(
            pvc_claim("pvc://adapters/pricing/1.3.0").as_deref(),
            Some("adapters")
        );
        assert_eq!(pvc_claim("oci://r.example/a:1"), None);
    }

    #[test]
    fn unusable_uris_are_refused_with_the_reason() {
        for (uri, needle) in [
            ("file://relative/dir", "absolute"),
            ("pvc://adapters/../secrets", ".."),
            ("pvc://Adapters/x", "claim"),
            ("pvc:///x", "claim"),
            ("oci://Registry.Example/UPPER:1", "OCI reference"),
            ("s3://bucket/x", "unsupported scheme"),
        ] {
            let e = ArtifactUri::parse(uri).unwrap_err();
            assert!(e.to_string().contains(uri), "{e}");
            assert!(e.to_string().contains(needle), "{uri}: {e}");
        }
    }

    #[test]
    fn pvc_paths_resolve_under_the_mount_root() {
        let root = Path::new(PVC_ROOT);
        assert_eq!(
            pvc_path(root, "adapters", "pricing/1.3.0"),
            Path::new("/var/run/switchboard/pvc/adapters/pricing/1.3.0")
        );
        assert_eq!(
            pvc_path(root, "adapters", ""),
            Path::new("/var/run/switchboard/pvc/adapters")
        );
    }

    #[test]
    fn verify_reports_carry_the_digest_and_the_checked_config_fields() {
        let dir = tempfile::tempdir().unwrap();
        let uri = "pvc://adapters/pricing";
        let missing = VerifyReport::of_dir(uri, dir.path());
        assert!(missing.sha256.is_none());
        assert!(missing.error.unwrap().contains(CONFIG_FILE));

        std::fs::write(dir.path().join(WEIGHTS_FILE), b"w").unwrap();
        let config = serde_json::json!({
            "peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"],
            "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
            "revision": null, "task_type": "CAUSAL_LM", "long": "x".repeat(5000),
        });
        std::fs::write(dir.path().join(CONFIG_FILE), config.to_string()).unwrap();
        let report = VerifyReport::of_dir(uri, dir.path());
        assert_eq!(report.sha256, Some(format!("sha256:{}", sha256_hex(b"w"))));
        let summary: serde_json::Value =
            serde_json::from_str(report.config.as_deref().unwrap()).unwrap();
        assert_eq!(summary["r"], 8);
        assert!(summary.get("long").is_none());
        // Small enough for a termination message.
        assert!(serde_json::to_string(&report).unwrap().len() < 1024);

        std::fs::write(dir.path().join(CONFIG_FILE), "x".repeat(4000)).unwrap();
        assert_eq!(
            VerifyReport::of_dir(uri, dir.path()).config.unwrap().len(),
            512
        );
    }

    #[test]
    fn the_digest_is_the_weights_sha256() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(WEIGHTS_FILE), b"weights").unwrap();
        std::fs::write(dir.path().join(CONFIG_FILE), b"{}").unwrap();
        // sha256("weights"), independent of the config file.
        assert_eq!(weights_digest(dir.path()).unwrap(), sha256_hex(b"weights"));
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
