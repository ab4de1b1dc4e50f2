//! The artifact check of an AdapterPatch version: fetch the PEFT directory (`file://` or
//! `http(s)://`), verify the sha256 of `adapter_model.safetensors` against the spec, and check
//! `adapter_config.json` (LoRA, rank, alpha, target modules, base model) against the spec.

use std::{
    collections::BTreeSet,
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use sha2::{Digest as _, Sha256};
use switchboard_crds::{AdapterPatchSpec, conditions::reasons};

use super::rollout::ArtifactCheck;
use crate::{http_client::HttpClient, observe::BoxFuture};

/// Config file of a PEFT adapter directory.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// Weights file of a PEFT adapter directory.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// Largest artifact file read (LoRA hot-fixes of rank <= 64 are far smaller).
pub const MAX_FILE_BYTES: usize = 1 << 30;

/// Checks an AdapterPatch's artifact.
pub trait ArtifactChecker: Send + Sync + fmt::Debug {
    /// The check of `spec.artifact` for `spec`.
    fn check<'a>(&'a self, spec: &'a AdapterPatchSpec) -> BoxFuture<'a, ArtifactCheck>;

    /// Releases the cached copy of a digest no version needs any more (no-op without a cache).
    fn release(&self, _sha256_hex: &str) {}
}

/// Fetches PEFT directories over `file://` and `http(s)://`; keeps verified copies in a
/// content-addressed cache (`<cache>/sha256-<hex>/`) when one is configured.
#[derive(Clone, Debug)]
pub struct PeftArtifacts {
    http: HttpClient,
    cache: Option<PathBuf>,
}

impl PeftArtifacts {
    /// A checker with an optional cache directory.
    pub fn new(cache: Option<PathBuf>) -> Self {
        Self {
            http: HttpClient::new(Duration::from_secs(60)),
            cache,
        }
    }

    async fn fetch(&self, uri: &str, file: &str) -> Result<Vec<u8>, String> {
        if let Some(path) = uri.strip_prefix("file://") {
            let path = Path::new(path).join(file);
            let meta = tokio::fs::metadata(&path)
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if meta.len() > MAX_FILE_BYTES as u64 {
                return Err(format!(
                    "{}: {} bytes is over the {MAX_FILE_BYTES} byte limit",
                    path.display(),
                    meta.len()
                ));
            }
            return tokio::fs::read(&path)
                .await
                .map_err(|e| format!("{}: {e}", path.display()));
        }
        if uri.starts_with("http://") || uri.starts_with("https://") {
            let url = format!("{}/{file}", uri.trim_end_matches('/'));
            let (status, body) = self.http.get(&url, MAX_FILE_BYTES).await?;
            if status != 200 {
                return Err(format!("GET {url}: HTTP {status}"));
            }
            return Ok(body.to_vec());
        }
        Err(format!(
            "{uri}: this operator fetches file:// and http(s):// artifacts only"
        ))
    }

    fn store(&self, hex: &str, config: &[u8], weights: &[u8]) -> std::io::Result<()> {
        let Some(cache) = &self.cache else {
            return Ok(());
        };
        let dir = cache.join(format!("sha256-{hex}"));
        if dir.join(WEIGHTS_FILE).is_file() {
            return Ok(());
        }
        std::fs::create_dir_all(cache)?;
        // Write into a temporary directory and rename, so readers never see half a copy.
        let tmp = cache.join(format!(".tmp-sha256-{hex}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        std::fs::write(tmp.join(CONFIG_FILE), config)?;
        std::fs::write(tmp.join(WEIGHTS_FILE), weights)?;
        match std::fs::rename(&tmp, &dir) {
            Ok(()) => Ok(()),
            Err(_) if dir.join(WEIGHTS_FILE).is_file() => {
                let _ = std::fs::remove_dir_all(&tmp);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

impl ArtifactChecker for PeftArtifacts {
    fn check<'a>(&'a self, spec: &'a AdapterPatchSpec) -> BoxFuture<'a, ArtifactCheck> {
        Box::pin(async move {
            let uri = spec.artifact.uri.as_str();
            let unavailable = |message: String| ArtifactCheck::Failed {
                reason: reasons::ARTIFACT_UNAVAILABLE.to_owned(),
                message,
            };
            let weights = match self.fetch(uri, WEIGHTS_FILE).await {
                Ok(b) => b,
                Err(e) => return unavailable(e),
            };
            let config = match self.fetch(uri, CONFIG_FILE).await {
                Ok(b) => b,
                Err(e) => return unavailable(e),
            };
            let result = verify(spec, &config, &weights);
            if result == ArtifactCheck::Verified
                && let Err(e) = self.store(spec.artifact.sha256.hex(), &config, &weights)
            {
                tracing::warn!(error = %e, "caching a verified artifact failed");
            }
            result
        })
    }

    fn release(&self, sha256_hex: &str) {
        let Some(cache) = &self.cache else {
            return;
        };
        let dir = cache.join(format!("sha256-{sha256_hex}"));
        if dir.is_dir() {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {
                    tracing::info!(dir = %dir.display(), "released an artifact past its rollback window")
                }
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "releasing an artifact failed")
                }
            }
        }
    }
}

/// Lowercase hex sha256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Normalises a model name for comparison: last path component, no extension, lowercase.
fn model_key(name: &str) -> String {
    let last = name
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(name);
    let stem = last
        .strip_suffix(".gguf")
        .or_else(|| last.strip_suffix(".safetensors"))
        .unwrap_or(last);
    stem.to_ascii_lowercase()
}

/// Whether the spec's base model names a local file or directory (whose model name only the
/// runtime can read, at load time).
fn is_local_path(name: &str) -> bool {
    name.starts_with('/') || name.starts_with("file://") || name.starts_with("pvc://")
}

/// The pure part of the check: digest, then `adapter_config.json` against the spec.
pub fn verify(spec: &AdapterPatchSpec, config: &[u8], weights: &[u8]) -> ArtifactCheck {
    let invalid = |message: String| ArtifactCheck::Failed {
        reason: reasons::ARTIFACT_INVALID.to_owned(),
        message,
    };
    let actual = sha256_hex(weights);
    if !spec.artifact.sha256.matches_hex(&actual) {
        return ArtifactCheck::Failed {
            reason: reasons::DIGEST_MISMATCH.to_owned(),
            message: format!(
                "{WEIGHTS_FILE} has digest sha256:{actual}, the spec says {}",
                spec.artifact.sha256
            ),
        };
    }
    let config: serde_json::Value = match serde_json::from_slice(config) {
        Ok(v) => v,
        Err(e) => return invalid(format!("{CONFIG_FILE} is not JSON: {e}")),
    };
    if let Some(peft_type) = config.get("peft_type").and_then(|v| v.as_str())
        && !peft_type.eq_ignore_ascii_case("LORA")
    {
        return invalid(format!(
            "{CONFIG_FILE}: peft_type {peft_type}, expected LORA"
        ));
    }
    match config.get("r").and_then(serde_json::Value::as_i64) {
        Some(r) if r == i64::from(spec.lora.rank) => {}
        Some(r) => {
            return invalid(format!(
                "{CONFIG_FILE}: rank r={r}, the spec says lora.rank={}",
                spec.lora.rank
            ));
        }
        None => return invalid(format!("{CONFIG_FILE}: no rank r")),
    }
    if let (Some(want), Some(have)) = (
        spec.lora.alpha,
        config.get("lora_alpha").and_then(serde_json::Value::as_f64),
    ) && (want - have).abs() > 1e-9
    {
        return invalid(format!(
            "{CONFIG_FILE}: lora_alpha={have}, the spec says lora.alpha={want}"
        ));
    }
    if let Some(targets) = config.get("target_modules").and_then(|v| v.as_array()) {
        let have: BTreeSet<&str> = targets.iter().filter_map(|t| t.as_str()).collect();
        let want: BTreeSet<&str> = spec
            .lora
            .target_modules
            .iter()
            .map(String::as_str)
            .collect();
        if have != want {
            return invalid(format!(
                "{CONFIG_FILE}: target_modules {have:?}, the spec says lora.targetModules {want:?}"
            ));
        }
    }
    if let Some(base) = config
        .get("base_model_name_or_path")
        .and_then(|v| v.as_str())
        .filter(|b| !b.is_empty())
        && !is_local_path(&spec.base_model)
        && model_key(base) != model_key(&spec.base_model)
    {
        return invalid(format!(
            "{CONFIG_FILE}: trained on base model {base}, the spec says baseModel {}",
            spec.base_model
        ));
    }
    ArtifactCheck::Verified
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(digest: &str, base: &str) -> AdapterPatchSpec {
        serde_json::from_value(serde_json::json!({
            "lineage": "pricing",
            "baseModel": base,
            "version": "1.1.0",
            "artifact": {"uri": "file:///tmp/x", "sha256": format!("sha256:{digest}")},
            "lora": {"rank": 4, "alpha": 8.0},
            "domain": {"description": "pricing"},
        }))
        .unwrap()
    }

    fn config(r: i64, base: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "peft_type": "LORA", "r": r, "lora_alpha": 8,
            "target_modules": ["v_proj", "q_proj"],
            "base_model_name_or_path": base,
        }))
        .unwrap()
    }

    #[test]
    fn verifies_digest_and_config() {
        let weights = b"weights";
        let hex = sha256_hex(weights);
        let repo = "HuggingFaceTB/SmolLM2-135M-Instruct";
        assert_eq!(
            verify(&spec(&hex, repo), &config(4, repo), weights),
            ArtifactCheck::Verified
        );
        // A local model path cannot be compared by name: the runtime checks it at load.
        assert_eq!(
            verify(
                &spec(&hex, "/models/smollm2.gguf"),
                &config(4, repo),
                weights
            ),
            ArtifactCheck::Verified
        );
        let reason = |c: ArtifactCheck| match c {
            ArtifactCheck::Failed { reason, message } => (reason, message),
            other => panic!("{other:?}"),
        };
        let (r, m) = reason(verify(
            &spec(&"0".repeat(64), repo),
            &config(4, repo),
            weights,
        ));
        assert_eq!(r, reasons::DIGEST_MISMATCH);
        assert!(m.contains(&hex), "{m}");
        let (r, m) = reason(verify(&spec(&hex, repo), &config(8, repo), weights));
        assert_eq!(r, reasons::ARTIFACT_INVALID);
        assert!(m.contains("r=8"), "{m}");
        let (r, _) = reason(verify(
            &spec(&hex, "meta/Llama-3-8B"),
            &config(4, repo),
            weights,
        ));
        assert_eq!(r, reasons::ARTIFACT_INVALID);
        let (r, _) = reason(verify(&spec(&hex, repo), b"not json", weights));
        assert_eq!(r, reasons::ARTIFACT_INVALID);
    }

    #[tokio::test]
    async fn reads_file_uris_and_caches_verified_copies() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("adapter");
        std::fs::create_dir_all(&src).unwrap();
        let repo = "HuggingFaceTB/SmolLM2-135M-Instruct";
        std::fs::write(src.join(WEIGHTS_FILE), b"w").unwrap();
        std::fs::write(src.join(CONFIG_FILE), config(4, repo)).unwrap();
        let hex = sha256_hex(b"w");
        let mut s = spec(&hex, repo);
        s.artifact.uri = format!("file://{}", src.display());
        let cache = dir.path().join("cache");
        let checker = PeftArtifacts::new(Some(cache.clone()));
        assert_eq!(checker.check(&s).await, ArtifactCheck::Verified);
        let cached = cache.join(format!("sha256-{hex}"));
        assert_eq!(std::fs::read(cached.join(WEIGHTS_FILE)).unwrap(), b"w");
        checker.release(&hex);
        assert!(!cached.exists());

        s.artifact.uri = format!("file://{}/missing", dir.path().display());
        match checker.check(&s).await {
            ArtifactCheck::Failed { reason, .. } => {
                assert_eq!(reason, reasons::ARTIFACT_UNAVAILABLE);
            }
            other => panic!("{other:?}"),
        }
        s.artifact.uri = "oci://registry/adapters:1".to_owned();
        assert!(matches!(
            checker.check(&s).await,
            ArtifactCheck::Failed { .. }
        ));
    }

    #[tokio::test]
    async fn fetches_http_peft_directories() {
        use axum::{Router, routing::get};
        let repo = "HuggingFaceTB/SmolLM2-135M-Instruct";
        let config_json = config(4, repo);
        let app = Router::new()
            .route(
                "/adapters/pricing/1.1.0/adapter_model.safetensors",
                get(|| async { b"weights".to_vec() }),
            )
            .route(
                "/adapters/pricing/1.1.0/adapter_config.json",
                get(move || async move { config_json.clone() }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let checker = PeftArtifacts::new(None);
        let mut s = spec(&sha256_hex(b"weights"), repo);
        s.artifact.uri = format!("http://{addr}/adapters/pricing/1.1.0/");
        assert_eq!(checker.check(&s).await, ArtifactCheck::Verified);
        s.artifact.uri = format!("http://{addr}/adapters/pricing/9.9.9");
        match checker.check(&s).await {
            ArtifactCheck::Failed { reason, message } => {
                assert_eq!(reason, reasons::ARTIFACT_UNAVAILABLE);
                assert!(message.contains("HTTP 404"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
}
