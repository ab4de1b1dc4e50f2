//! The artifact check of an AdapterPatch version: fetch the PEFT directory (`file://`,
//! `http(s)://` or `oci://`), verify the digest of `adapter_model.safetensors`
//! ([`switchboard_artifact::weights_digest`], the definition the runtime uses too) against the
//! spec, and check `adapter_config.json` (LoRA, rank, alpha, target modules, base model) against
//! the spec. `pvc://` artifacts are read by a verification Job instead (`verify_job.rs`): the
//! operator cannot mount a claim.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use switchboard_artifact::{
    ArtifactUri,
    oci::{Credentials, OciClient},
};
use switchboard_crds::{
    AdapterPatchSpec,
    adapter_patch::{is_local_model, model_stem},
    conditions::reasons,
};

use crate::{
    http_client::HttpClient,
    ports::{ArtifactCheck, ArtifactChecker, BoxFuture},
};
use switchboard_artifact::egress::EgressPolicy;

pub use switchboard_artifact::{CONFIG_FILE, WEIGHTS_FILE, sha256_hex};

/// Largest artifact file read (LoRA hot-fixes of rank <= 64 are far smaller).
pub const MAX_FILE_BYTES: usize = 1 << 30;

/// Fetches PEFT directories over `file://`, `http(s)://` and `oci://`; keeps verified copies in
/// a content-addressed cache (`<cache>/sha256-<hex>/`) when one is configured.
#[derive(Debug)]
pub struct PeftArtifacts {
    http: HttpClient,
    oci: OciClient,
    cache: Option<PathBuf>,
    seq: AtomicU64,
}

impl PeftArtifacts {
    /// A checker with an optional cache directory.
    pub fn new(cache: Option<PathBuf>) -> Self {
        Self::with_egress(cache, EgressPolicy::public_only())
    }

    /// A checker that downloads only where `egress` allows (`--egress-allow`).
    pub fn with_egress(cache: Option<PathBuf>, egress: EgressPolicy) -> Self {
        Self {
            http: HttpClient::with_egress(Duration::from_secs(60), egress),
            oci: OciClient::default(),
            cache,
            seq: AtomicU64::new(0),
        }
    }

    /// Copies, downloads or pulls the two files of `uri` into the empty directory `staging`.
    async fn fetch(
        &self,
        uri: &str,
        credentials: &Credentials,
        staging: &Path,
    ) -> Result<(), String> {
        match ArtifactUri::parse(uri).map_err(|e| e.to_string())? {
            ArtifactUri::File(dir) => {
                for file in [WEIGHTS_FILE, CONFIG_FILE] {
                    let path = dir.join(file);
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
                    tokio::fs::copy(&path, staging.join(file))
                        .await
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                }
                Ok(())
            }
            ArtifactUri::Http(base) => {
                for file in [WEIGHTS_FILE, CONFIG_FILE] {
                    let url = format!("{}/{file}", base.trim_end_matches('/'));
                    let (status, body) = self.http.get(&url, MAX_FILE_BYTES).await?;
                    if status != 200 {
                        return Err(format!("GET {url}: HTTP {status}"));
                    }
                    tokio::fs::write(staging.join(file), body)
                        .await
                        .map_err(|e| format!("writing {}: {e}", staging.join(file).display()))?;
                }
                Ok(())
            }
            ArtifactUri::Oci(reference) => {
                self.http
                    .egress()
                    .check_authority(reference.resolve_registry())
                    .await?;
                let auth = credentials
                    .auth_for(reference.resolve_registry())
                    .map_err(|e| e.to_string())?;
                let pulled = self
                    .oci
                    .pull_peft(&reference, &auth, staging)
                    .await
                    .map_err(|e| e.to_string())?;
                tracing::info!(%uri, manifest = %pulled.manifest_digest, layout = ?pulled.layout, "adapter artifact pulled");
                Ok(())
            }
            ArtifactUri::Pvc { .. } => Err(format!(
                "{uri}: pvc:// artifacts are read by a verification Job, not fetched"
            )),
        }
    }

    /// A fresh staging directory (in the cache, so a verified copy is published by rename).
    fn staging(&self) -> std::io::Result<PathBuf> {
        let parent = self.cache.clone().unwrap_or_else(std::env::temp_dir);
        let dir = parent.join(format!(
            ".staging-{}-{}",
            std::process::id(),
            self.seq.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// Publishes a verified `staging` directory as `<cache>/sha256-<hex>/` (rename, so readers
    /// never see half a copy).
    fn store(&self, hex: &str, staging: &Path) -> std::io::Result<()> {
        let Some(cache) = &self.cache else {
            return Ok(());
        };
        let dir = cache.join(format!("sha256-{hex}"));
        if dir.join(WEIGHTS_FILE).is_file() {
            return Ok(());
        }
        match std::fs::rename(staging, &dir) {
            Ok(()) => Ok(()),
            Err(_) if dir.join(WEIGHTS_FILE).is_file() => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl ArtifactChecker for PeftArtifacts {
    fn check<'a>(
        &'a self,
        spec: &'a AdapterPatchSpec,
        credentials: &'a Credentials,
    ) -> BoxFuture<'a, ArtifactCheck> {
        Box::pin(async move {
            let uri = spec.artifact.uri.as_str();
            let unavailable = |message: String| ArtifactCheck::Failed {
                reason: reasons::ARTIFACT_UNAVAILABLE.to_owned(),
                message,
            };
            let staging = match self.staging() {
                Ok(dir) => dir,
                Err(e) => return unavailable(format!("{uri}: creating a staging directory: {e}")),
            };
            let result = async {
                self.fetch(uri, credentials, &staging)
                    .await
                    .map_err(unavailable)?;
                let dir = staging.clone();
                let hashed =
                    tokio::task::spawn_blocking(move || switchboard_artifact::weights_digest(&dir))
                        .await;
                let weights_hex = match hashed {
                    Ok(Ok(hex)) => hex,
                    Ok(Err(e)) => return Err(unavailable(format!("{uri}: hashing: {e}"))),
                    Err(e) => return Err(unavailable(format!("{uri}: hashing task: {e}"))),
                };
                let config = tokio::fs::read(staging.join(CONFIG_FILE))
                    .await
                    .map_err(|e| unavailable(format!("{uri}: {CONFIG_FILE}: {e}")))?;
                Ok(verify(spec, &config, &weights_hex))
            }
            .await;
            let check = result.unwrap_or_else(|failed| failed);
            if check == ArtifactCheck::Verified
                && let Err(e) = self.store(spec.artifact.sha256.hex(), &staging)
            {
                tracing::warn!(error = %e, "caching a verified artifact failed");
            }
            let _ = std::fs::remove_dir_all(&staging);
            check
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

/// Normalises a model name for comparison: last path component, no extension, lowercase.
fn model_key(name: &str) -> String {
    model_stem(name).to_ascii_lowercase()
}

/// The pure part of the check: the weights' digest (`weights_sha256_hex`, from
/// [`switchboard_artifact::weights_digest`]), then `adapter_config.json` against the spec.
pub fn verify(spec: &AdapterPatchSpec, config: &[u8], weights_sha256_hex: &str) -> ArtifactCheck {
    let invalid = |message: String| ArtifactCheck::Failed {
        reason: reasons::ARTIFACT_INVALID.to_owned(),
        message,
    };
    let actual = weights_sha256_hex.to_ascii_lowercase();
    if !spec.artifact.sha256.matches_hex(&actual) {
        return ArtifactCheck::Failed {
            reason: reasons::DIGEST_MISMATCH.to_owned(),
            message: format!(
                "{}: {WEIGHTS_FILE} has digest sha256:{actual}, the spec says {}",
                spec.artifact.uri, spec.artifact.sha256
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
        && !is_local_model(&spec.base_model)
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
        let weights = &sha256_hex(b"weights");
        let hex = weights.clone();
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
        assert!(
            m.contains("file:///tmp/x"),
            "the message names the URI: {m}"
        );
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
        let anonymous = Credentials::default();
        assert_eq!(checker.check(&s, &anonymous).await, ArtifactCheck::Verified);
        let cached = cache.join(format!("sha256-{hex}"));
        assert_eq!(std::fs::read(cached.join(WEIGHTS_FILE)).unwrap(), b"w");
        checker.release(&hex);
        assert!(!cached.exists());

        s.artifact.uri = format!("file://{}/missing", dir.path().display());
        match checker.check(&s, &anonymous).await {
            ArtifactCheck::Failed { reason, .. } => {
                assert_eq!(reason, reasons::ARTIFACT_UNAVAILABLE);
            }
            other => panic!("{other:?}"),
        }
        // Nothing but the verified copy is left in the cache (no staging directories).
        let entries: Vec<_> = std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(entries.is_empty(), "{entries:?}");
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
        let anonymous = Credentials::default();
        let mut s = spec(&sha256_hex(b"weights"), repo);

        // By default a loopback (or any internal) address is refused, by literal and by name,
        // before a request is sent; the status names the rule, not the server's answer.
        let default = PeftArtifacts::new(None);
        for uri in [
            format!("http://{addr}/adapters/pricing/1.1.0/"),
            format!("http://localhost:{}/adapters/pricing/1.1.0/", addr.port()),
        ] {
            s.artifact.uri.clone_from(&uri);
            match default.check(&s, &anonymous).await {
                ArtifactCheck::Failed { reason, message } => {
                    assert_eq!(reason, reasons::ARTIFACT_UNAVAILABLE);
                    assert!(
                        message.contains("refused by the egress policy")
                            && message.contains("loopback"),
                        "{uri}: {message}"
                    );
                }
                other => panic!("{uri}: {other:?}"),
            }
        }

        // Allowed explicitly (the chart's egress.allowCidrs), it is fetched and verified.
        let checker =
            PeftArtifacts::with_egress(None, EgressPolicy::parse("127.0.0.0/8,::1").unwrap());
        s.artifact.uri = format!("http://{addr}/adapters/pricing/1.1.0/");
        assert_eq!(checker.check(&s, &anonymous).await, ArtifactCheck::Verified);
        s.artifact.uri = format!("http://{addr}/adapters/pricing/9.9.9");
        match checker.check(&s, &anonymous).await {
            ArtifactCheck::Failed { reason, message } => {
                assert_eq!(reason, reasons::ARTIFACT_UNAVAILABLE);
                assert!(message.contains("HTTP 404"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pulls_oci_artifacts_from_a_registry_and_verifies_them() {
        use switchboard_artifact::oci::{Layout, Reference, RegistryAuth};
        use switchboard_testkit::registry::{Registry, TEST_PASSWORD, TEST_USER};
        let tmp = tempfile::tempdir().unwrap();
        let repo = "HuggingFaceTB/SmolLM2-135M-Instruct";
        let src = tmp.path().join("pricing");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join(WEIGHTS_FILE), b"oci-weights").unwrap();
        std::fs::write(src.join(CONFIG_FILE), config(4, repo)).unwrap();

        // An anonymous registry with the ORAS file layout and the tar.gz layout.
        let public = Registry::start(&tmp.path().join("public")).unwrap();
        let oci = OciClient::default();
        let mut uris = Vec::new();
        for (tag, layout) in [("1.1.0", Layout::Files), ("1.1.0-dir", Layout::TarGz)] {
            let reference: Reference = format!("{}/adapters/pricing:{tag}", public.host())
                .parse()
                .unwrap();
            oci.push_peft(&reference, &RegistryAuth::Anonymous, &src, layout)
                .await
                .unwrap();
            uris.push(format!("oci://{}", reference.whole()));
        }
        let cache = tmp.path().join("cache");
        let anonymous = Credentials::default();
        let digest = sha256_hex(b"oci-weights");
        // A registry on an internal address needs the egress allow-list.
        let mut s = spec(&digest, repo);
        s.artifact.uri.clone_from(&uris[0]);
        match PeftArtifacts::new(None).check(&s, &anonymous).await {
            ArtifactCheck::Failed { message, .. } => {
                assert!(
                    message.contains("refused by the egress policy"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        let checker = PeftArtifacts::with_egress(
            Some(cache.clone()),
            EgressPolicy::parse("127.0.0.0/8,::1").unwrap(),
        );
        for uri in &uris {
            let mut s = spec(&digest, repo);
            s.artifact.uri.clone_from(uri);
            assert_eq!(
                checker.check(&s, &anonymous).await,
                ArtifactCheck::Verified,
                "{uri}"
            );
        }
        assert!(
            cache
                .join(format!("sha256-{digest}"))
                .join(WEIGHTS_FILE)
                .is_file()
        );

        // A wrong digest: DigestMismatch naming the URI (the rollout fails the version).
        let mut s = spec(&"0".repeat(64), repo);
        s.artifact.uri.clone_from(&uris[0]);
        match checker.check(&s, &anonymous).await {
            ArtifactCheck::Failed { reason, message } => {
                assert_eq!(reason, reasons::DIGEST_MISMATCH);
                assert!(message.contains(&uris[0]), "{message}");
                assert!(message.contains(&digest), "{message}");
            }
            other => panic!("{other:?}"),
        }

        // A registry with basic auth: anonymous is unavailable (retried), the pull Secret's
        // credentials work.
        let private = Registry::start_with_basic_auth(&tmp.path().join("private")).unwrap();
        let reference: Reference = format!("{}/private/pricing:1.1.0", private.host())
            .parse()
            .unwrap();
        let basic = RegistryAuth::Basic(TEST_USER.into(), TEST_PASSWORD.into());
        oci.push_peft(&reference, &basic, &src, Layout::Files)
            .await
            .unwrap();
        let mut s = spec(&digest, repo);
        s.artifact.uri = format!("oci://{}", reference.whole());
        match checker.check(&s, &anonymous).await {
            ArtifactCheck::Failed { reason, message } => {
                assert_eq!(reason, reasons::ARTIFACT_UNAVAILABLE);
                assert!(message.contains(&s.artifact.uri), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let docker_config = serde_json::json!({"auths": {private.host(): {
            "username": TEST_USER, "password": TEST_PASSWORD,
        }}});
        let credentials =
            Credentials::from_docker_config(docker_config.to_string().as_bytes()).unwrap();
        assert_eq!(
            checker.check(&s, &credentials).await,
            ArtifactCheck::Verified
        );
    }
}
