//! Bearer-token authentication of the runtime's two APIs (docs/security.md).
//!
//! - The **admin API** (`--admin-addr`: config, coverage gaps with customer queries, hits, CUPED
//!   sums, generation switch-back) always requires a token: `--admin-token-file`, or, without
//!   one, a random token the runtime writes to `<data>/admin-token` (mode 0600) at start-up.
//! - The **public API** (`--http-addr` answers, retrieval, feedback, chat completions, and the
//!   gRPC services) requires one when `--client-token-file` is given (a Router's
//!   `spec.access.clientTokens`).
//!
//! A token file holds one token per line (blank lines and `#` comments ignored); any line
//! authenticates, so a rotation adds the new token, moves clients over, then removes the old.
//! Files are re-read when they change (a mounted Secret updated by the kubelet): a file that no
//! longer parses is logged and counted and the tokens in force stay. Tokens are compared by their
//! SHA-256 digests in constant time.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use arc_swap::ArcSwap;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};

use crate::metrics::Metrics;

/// Shortest token accepted: 16 characters (a 64-bit random token written in hex).
pub const MIN_TOKEN_LEN: usize = 16;

/// Which API a token set guards (the metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// Answers, retrieval, feedback, chat completions, gRPC.
    Public,
    /// Config, coverage gaps, hits, CUPED sums, switch-back.
    Admin,
}

impl Api {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Admin => "admin",
        }
    }
}

/// Digests of the tokens in force.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Digests(Vec<[u8; 32]>);

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// Parses a token file: one token per line, blank lines and `#` comments ignored; at least one,
/// each at least [`MIN_TOKEN_LEN`] characters without whitespace.
fn parse(shown: &str, bytes: &[u8]) -> Result<Digests> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("{shown}: a token file must be UTF-8 text"))?;
    let mut digests = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let token = line.trim();
        if token.is_empty() || token.starts_with('#') {
            continue;
        }
        if token.len() < MIN_TOKEN_LEN || token.chars().any(char::is_whitespace) {
            anyhow::bail!(
                "{shown}:{}: a token must be at least {MIN_TOKEN_LEN} characters without spaces",
                i + 1
            );
        }
        digests.push(digest(token.as_bytes()));
    }
    if digests.is_empty() {
        anyhow::bail!("{shown}: no token (one per line)");
    }
    Ok(Digests(digests))
}

/// The bearer tokens one API accepts, re-read from their file when it changes.
#[derive(Debug)]
pub struct Tokens {
    api: Api,
    path: PathBuf,
    digests: ArcSwap<Digests>,
    metrics: Arc<Metrics>,
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization: Bearer` header.
    Missing,
    /// A token that is not listed.
    Invalid,
}

impl Refusal {
    fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Invalid => "invalid",
        }
    }
}

impl Tokens {
    /// The tokens of `path` (an error names the file and line when it does not parse).
    pub fn from_file(api: Api, path: &Path, metrics: Arc<Metrics>) -> Result<Arc<Self>> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).with_context(|| format!("reading {shown}"))?;
        Ok(Arc::new(Self {
            api,
            path: path.to_owned(),
            digests: ArcSwap::from_pointee(parse(&shown, &bytes)?),
            metrics,
        }))
    }

    /// A fresh random admin token written to `path` (mode 0600, replacing an earlier one), for
    /// a runtime started without `--admin-token-file`.
    pub fn generate(api: Api, path: &Path, metrics: Arc<Metrics>) -> Result<Arc<Self>> {
        let tmp = path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        write_private(&tmp, &random_hex(32)?)?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
        Self::from_file(api, path, metrics)
    }

    /// Checks an `Authorization` header value.
    pub fn check(&self, authorization: Option<&str>) -> Result<(), Refusal> {
        let Some(token) = authorization.and_then(bearer) else {
            return Err(Refusal::Missing);
        };
        let presented = digest(token.as_bytes());
        // Every listed digest is compared in full, whatever matched.
        let mut found = false;
        for known in &self.digests.load().0 {
            let diff = known
                .iter()
                .zip(presented.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            found |= diff == 0;
        }
        if found { Ok(()) } else { Err(Refusal::Invalid) }
    }

    /// Checks a request's headers, counting a refusal.
    pub fn check_headers(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let value = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        self.check(value).inspect_err(|r| {
            self.metrics.auth_refused(self.api.as_str(), r.as_str());
        })
    }

    /// Re-reads the file every `interval` while the process runs; a change that parses replaces
    /// the tokens, one that does not is logged and counted and the tokens in force stay.
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        let shown = self.path.display().to_string();
        let api = self.api.as_str();
        let initial = std::fs::read(&self.path).ok();
        follow_file(self.path.clone(), interval, initial, |bytes| {
            match parse(&shown, bytes) {
                Ok(digests) => {
                    tracing::info!(api, path = %shown, tokens = digests.0.len(), "bearer tokens reloaded");
                    self.digests.store(Arc::new(digests));
                    self.metrics.credential_reload(api, "applied");
                }
                Err(e) => {
                    tracing::error!(api, error = %e, "bearer tokens rejected; keeping the tokens in force");
                    self.metrics.credential_reload(api, "rejected");
                }
            }
        })
        .await;
    }
}

/// Polls `path` every `interval` for as long as the task runs and calls `changed` with its bytes
/// whenever they differ from the last ones seen (`initial` at first): how the runtime follows
/// its key and token files, which a mounted Secret updates in place. A file that becomes
/// unreadable is logged once; what it held stays in force, and its next readable content counts
/// as a change.
pub async fn follow_file(
    path: PathBuf,
    interval: Duration,
    initial: Option<Vec<u8>>,
    mut changed: impl FnMut(&[u8]),
) {
    let shown = path.display().to_string();
    let mut last = initial;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) => {
                if last.take().is_some() {
                    tracing::warn!(path = %shown, error = %e, "file not readable; keeping what it held in force");
                }
                continue;
            }
        };
        if last.as_deref() != Some(bytes.as_slice()) {
            changed(&bytes);
            last = Some(bytes);
        }
    }
}

/// `bytes` random bytes from /dev/urandom, in hex.
pub fn random_hex(bytes: usize) -> Result<String> {
    use std::io::Read as _;
    let mut raw = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .context("reading /dev/urandom")?;
    Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
}

/// Creates `path` (and its folder) readable by its owner only (mode 0600) with `line`; an
/// existing file is an error of kind `AlreadyExists` (nothing is overwritten).
pub fn write_private(path: &Path, line: &str) -> Result<()> {
    use std::io::Write as _;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(file, "{line}").with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The token of an `Authorization: Bearer <token>` value.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The 401 answer: the JSON error body and `WWW-Authenticate: Bearer`.
pub fn unauthenticated(api: Api, refusal: Refusal) -> Response {
    let message = match (api, refusal) {
        (Api::Admin, Refusal::Missing) => {
            "the admin API needs Authorization: Bearer <token> (--admin-token-file)"
        }
        (Api::Admin, Refusal::Invalid) => "the bearer token is not an admin token",
        (Api::Public, Refusal::Missing) => {
            "this Router requires Authorization: Bearer <token> (spec.access.clientTokens)"
        }
        (Api::Public, Refusal::Invalid) => {
            "the bearer token is not one of the Router's client tokens"
        }
    };
    let mut response = crate::http::error(
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        message.to_owned(),
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"switchboard\""),
    );
    response
}

/// Axum middleware: requests without a listed token get 401; `/healthz` and `/readyz` (the
/// kubelet's probes) and `/metrics` (Prometheus) pass without one.
pub async fn require(State(tokens): State<Arc<Tokens>>, request: Request, next: Next) -> Response {
    if matches!(request.uri().path(), "/healthz" | "/readyz" | "/metrics") {
        return next.run(request).await;
    }
    match tokens.check_headers(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(refusal) => unauthenticated(tokens.api, refusal),
    }
}

/// A tonic interceptor requiring a listed token in the `authorization` metadata (no tokens: every
/// call passes).
#[derive(Clone, Debug)]
pub struct GrpcAuth(pub Option<Arc<Tokens>>);

impl tonic::service::Interceptor for GrpcAuth {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let Some(tokens) = &self.0 else {
            return Ok(request);
        };
        let value = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        match tokens.check(value) {
            Ok(()) => Ok(request),
            Err(refusal) => {
                tokens
                    .metrics
                    .auth_refused(tokens.api.as_str(), refusal.as_str());
                Err(tonic::Status::unauthenticated(match refusal {
                    Refusal::Missing => {
                        "this Router requires authorization: Bearer <token> (spec.access.clientTokens)"
                    }
                    Refusal::Invalid => "the bearer token is not one of the Router's client tokens",
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(text: &str) -> Tokens {
        Tokens {
            api: Api::Public,
            path: PathBuf::from("tokens"),
            digests: ArcSwap::from_pointee(parse("tokens", text.as_bytes()).unwrap()),
            metrics: Arc::new(Metrics::new().unwrap()),
        }
    }

    #[test]
    fn any_listed_token_authenticates() {
        let t = tokens("# helpdesk\n0123456789abcdef0123\n\n  fedcba9876543210fedc  \n");
        assert_eq!(t.check(Some("Bearer 0123456789abcdef0123")), Ok(()));
        assert_eq!(t.check(Some("bearer  fedcba9876543210fedc ")), Ok(()));
        assert_eq!(
            t.check(Some("Bearer 0123456789abcdef012")),
            Err(Refusal::Invalid)
        );
        assert_eq!(
            t.check(Some("Basic 0123456789abcdef0123")),
            Err(Refusal::Missing)
        );
        assert_eq!(t.check(Some("Bearer ")), Err(Refusal::Missing));
        assert_eq!(t.check(None), Err(Refusal::Missing));
    }

    #[test]
    fn weak_or_empty_files_are_refused_with_the_line() {
        let e = parse("f", b"short\n").unwrap_err().to_string();
        assert!(e.contains("f:1") && e.contains("16 characters"), "{e}");
        let e = parse("f", b"# none\n\n").unwrap_err().to_string();
        assert!(e.contains("no token"), "{e}");
        let e = parse("f", b"0123456789abcdef0123 extra\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("without spaces"), "{e}");
    }

    #[test]
    fn generated_tokens_are_private_and_usable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin-token");
        let metrics = Arc::new(Metrics::new().unwrap());
        let t = Tokens::generate(Api::Admin, &path, Arc::clone(&metrics)).unwrap();
        let token = std::fs::read_to_string(&path).unwrap();
        assert_eq!(token.trim().len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(t.check(Some(&format!("Bearer {}", token.trim()))), Ok(()));
        // A second start writes a new one; the old no longer works.
        let t2 = Tokens::generate(Api::Admin, &path, metrics).unwrap();
        assert_eq!(
            t2.check(Some(&format!("Bearer {}", token.trim()))),
            Err(Refusal::Invalid)
        );
    }
}
