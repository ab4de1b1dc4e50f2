//! Signed interaction tokens and outcomes. (Replays are refused by the durable outcome store,
//! `switchboard-store`, across replicas and restarts.)
//!
//! Every answer carries a token that names the interaction and the variant that served it
//! (router, adapter lineage@version and role, experiment arm, model). The helpdesk hands it back
//! with the outcome; because the variant comes from the signed token, feedback cannot be counted
//! for a variant that did not serve the interaction. Format: `sb1.<payload>.<mac>`, both
//! base64url without padding, `payload` = JSON [`Claims`], `mac` = HMAC-SHA256 over `sb1.<payload>`
//! with the first key of the key file. Verification accepts any key in the file, so keys rotate
//! without a restart (the runtime re-reads the file): append the new key (every replica then
//! accepts it), move it first once every replica has it (it signs), and drop the old line after
//! the token lifetime. The operator does this for a Router on request (docs/runtime.md).
use std::io::Read;
use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

const PREFIX: &str = "sb1";
/// Longest token accepted (anything longer is malformed, not parsed).
pub const MAX_TOKEN_BYTES: usize = 4096;
/// Shortest key accepted (bytes).
pub const MIN_KEY_BYTES: usize = 32;

/// The variant that served an interaction; the fields are the metric labels of docs/metrics.md.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Variant {
    /// `<namespace>/<name>` of the Router.
    pub router: String,
    /// Primary adapter's lineage, `""` without adapter.
    #[serde(default)]
    pub lineage: String,
    /// Primary adapter's version.
    #[serde(default)]
    pub adapter_version: String,
    /// `stable`, `canary` or `""`.
    #[serde(default)]
    pub adapter_role: String,
    /// Experiment, `""` when not enrolled.
    #[serde(default)]
    pub experiment: String,
    /// Arm, `""` when not enrolled.
    #[serde(default)]
    pub arm: String,
    /// `small` or `large`.
    pub model: String,
}

impl Variant {
    /// Label values in the order router, lineage, adapter_version, adapter_role, experiment, arm,
    /// model.
    pub fn labels(&self) -> [&str; 7] {
        [
            &self.router,
            &self.lineage,
            &self.adapter_version,
            &self.adapter_role,
            &self.experiment,
            &self.arm,
            &self.model,
        ]
    }

    /// Label names matching [`Variant::labels`].
    pub const LABEL_NAMES: [&'static str; 7] = [
        "router",
        "lineage",
        "adapter_version",
        "adapter_role",
        "experiment",
        "arm",
        "model",
    ];
}

/// What a token asserts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Claims {
    /// Interaction id (unique).
    pub id: String,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Expires at, Unix seconds.
    pub exp: u64,
    /// The variant that served it.
    pub variant: Variant,
}

/// Why a token was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a token of this format.
    #[error("malformed interaction token: {0}")]
    Malformed(String),
    /// The MAC does not verify with any key (forged or signed by another deployment).
    #[error("interaction token signature does not verify")]
    BadSignature,
    /// Past `exp`.
    #[error("interaction token expired at {expired_at} (Unix seconds)")]
    Expired {
        /// When it expired.
        expired_at: u64,
    },
}

impl TokenError {
    /// Metric label (`switchboard_feedback_rejected_total{reason}`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::BadSignature => "bad_signature",
            Self::Expired { .. } => "expired",
        }
    }
}

/// HMAC keys: the first signs, all verify.
#[derive(Clone)]
pub struct TokenKeys {
    keys: Vec<Vec<u8>>,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenKeys({} keys, redacted)", self.keys.len())
    }
}

/// Why a key set could not be made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("reading token key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// A key is too short or there is none.
    #[error("token key file {path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// A short, non-secret name of a key: the first 8 hex digits of its SHA-256 (the runtime's
/// `/v1/config` and the operator's rotation Events use it).
pub fn fingerprint(key: &[u8]) -> String {
    Sha256::digest(key)
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl TokenKeys {
    /// Keys from bytes; each must have at least [`MIN_KEY_BYTES`].
    pub fn new(keys: Vec<Vec<u8>>) -> Result<Self, KeyError> {
        let invalid = |message: String| KeyError::Invalid {
            path: "<memory>".into(),
            message,
        };
        if keys.is_empty() {
            return Err(invalid("no key".into()));
        }
        if let Some((i, k)) = keys
            .iter()
            .enumerate()
            .find(|(_, k)| k.len() < MIN_KEY_BYTES)
        {
            return Err(invalid(format!(
                "key {} has {} bytes; at least {MIN_KEY_BYTES} are required",
                i + 1,
                k.len()
            )));
        }
        Ok(Self { keys })
    }

    /// Reads a key file (a mounted Secret): one key per non-empty line, the first signs.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let shown = path.display().to_string();
        let text = std::fs::read(path).map_err(|source| KeyError::Io {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&shown, &text)
    }

    /// Parses the contents of a key file read from `source` (named in errors).
    pub fn parse(source: &str, text: &[u8]) -> Result<Self, KeyError> {
        let keys: Vec<Vec<u8>> = text
            .split(|b| *b == b'\n')
            .map(|line| line.trim_ascii().to_vec())
            .filter(|line| !line.is_empty())
            .collect();
        Self::new(keys).map_err(|e| match e {
            KeyError::Invalid { message, .. } => KeyError::Invalid {
                path: source.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Each key's [`fingerprint`], the signing key first: what logs and `/v1/config` show to
    /// follow a rotation.
    pub fn fingerprints(&self) -> Vec<String> {
        self.keys.iter().map(|k| fingerprint(k)).collect()
    }

    /// A random key for this process only (the embedded default without a key file; tokens
    /// die with the process).
    pub fn random() -> std::io::Result<Self> {
        let mut key = vec![0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
        Ok(Self { keys: vec![key] })
    }

    fn mac(key: &[u8], message: &[u8]) -> HmacSha256 {
        // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
        let mut mac = <HmacSha256 as Mac>::new_from_slice(key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(message);
        mac
    }

    /// Signs `claims`.
    pub fn sign(&self, claims: &Claims) -> String {
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
        let signed = format!("{PREFIX}.{payload}");
        let tag = Self::mac(&self.keys[0], signed.as_bytes())
            .finalize()
            .into_bytes();
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// Verifies `token` at `now` (Unix seconds) and returns its claims.
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        let malformed = |m: &str| TokenError::Malformed(m.to_owned());
        if token.len() > MAX_TOKEN_BYTES {
            return Err(malformed("longer than 4096 bytes"));
        }
        let (signed, tag) = token
            .rsplit_once('.')
            .ok_or_else(|| malformed("expected sb1.<payload>.<mac>"))?;
        let (prefix, payload) = signed
            .split_once('.')
            .ok_or_else(|| malformed("expected sb1.<payload>.<mac>"))?;
        if prefix != PREFIX {
            return Err(malformed("unknown token version (expected sb1)"));
        }
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| malformed("mac is not base64url"))?;
        // Constant-time comparison against every key; the signature is checked before the
        // payload is parsed, so unauthenticated input never reaches the JSON parser.
        if !self
            .keys
            .iter()
            .any(|k| Self::mac(k, signed.as_bytes()).verify_slice(&tag).is_ok())
        {
            return Err(TokenError::BadSignature);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| malformed("payload is not base64url"))?;
        let claims: Claims = serde_json::from_slice(&bytes)
            .map_err(|e| TokenError::Malformed(format!("payload: {e}")))?;
        if now >= claims.exp {
            return Err(TokenError::Expired {
                expired_at: claims.exp,
            });
        }
        Ok(claims)
    }
}

/// A new interaction id: 32 hex characters, unique per process and across processes (a random
/// per-process seed from /dev/urandom, a counter and the time, hashed).
pub fn new_interaction_id() -> String {
    static SEED: OnceLock<[u8; 16]> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = SEED.get_or_init(|| {
        let mut s = [0u8; 16];
        if std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut s))
            .is_err()
        {
            // No urandom: fall back to time and pid, still unique per process.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            s.copy_from_slice(&Sha256::digest(format!("{t}-{}", std::process::id()))[..16]);
        }
        s
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut h = Sha256::new();
    h.update(seed);
    h.update(n.to_be_bytes());
    h.update(t.to_be_bytes());
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An interaction outcome reported by the helpdesk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Handed to a human.
    Escalated,
    /// Resolved by the answer.
    Resolved,
    /// The ticket was reopened.
    Reopened,
    /// A satisfaction rating 1..=5.
    Csat(u8),
}

/// Why an outcome was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum OutcomeError {
    /// Not one of the outcomes.
    #[error("unknown outcome {0:?}: expected escalated, resolved, reopened or csat")]
    Unknown(String),
    /// csat without a rating in 1..=5.
    #[error("outcome csat needs csat between 1 and 5, got {0:?}")]
    CsatRange(Option<i64>),
}

impl Outcome {
    /// Parses the API's `outcome` (+ `csat` rating).
    pub fn parse(outcome: &str, csat: Option<i64>) -> Result<Self, OutcomeError> {
        match outcome {
            "escalated" => Ok(Self::Escalated),
            "resolved" => Ok(Self::Resolved),
            "reopened" => Ok(Self::Reopened),
            "csat" => match csat {
                Some(r @ 1..=5) => Ok(Self::Csat(u8::try_from(r).unwrap_or(1))),
                other => Err(OutcomeError::CsatRange(other)),
            },
            other => Err(OutcomeError::Unknown(other.to_owned())),
        }
    }

    /// Metric label: `escalated`, `resolved`, `reopened`, `csat_1` .. `csat_5`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Escalated => "escalated",
            Self::Resolved => "resolved",
            Self::Reopened => "reopened",
            Self::Csat(1) => "csat_1",
            Self::Csat(2) => "csat_2",
            Self::Csat(3) => "csat_3",
            Self::Csat(4) => "csat_4",
            Self::Csat(_) => "csat_5",
        }
    }

    /// What is deduplicated: each kind counts once per interaction (one CSAT rating, whatever
    /// its value).
    pub fn kind(self) -> &'static str {
        match self {
            Self::Csat(_) => "csat",
            other => other.label(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(id: &str, exp: u64) -> Claims {
        Claims {
            id: id.into(),
            iat: 100,
            exp,
            variant: Variant {
                router: "ns/r".into(),
                lineage: "pricing".into(),
                adapter_version: "1.1.0".into(),
                adapter_role: "canary".into(),
                model: "small".into(),
                ..Variant::default()
            },
        }
    }

    fn keys() -> TokenKeys {
        TokenKeys::new(vec![b"k".repeat(32)]).unwrap()
    }

    #[test]
    fn round_trip_and_rejections() {
        let k = keys();
        let c = claims("abc", 1_000);
        let token = k.sign(&c);
        assert!(token.starts_with("sb1."));
        assert_eq!(k.verify(&token, 500).unwrap(), c);
        assert_eq!(
            k.verify(&token, 1_000),
            Err(TokenError::Expired { expired_at: 1_000 })
        );

        // Forged: payload changed to claim another variant, MAC kept.
        let (signed, tag) = token.rsplit_once('.').unwrap();
        let mut other = c.clone();
        other.variant.adapter_version = "1.0.0".into();
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&other).unwrap());
        let forged = format!("sb1.{forged_payload}.{tag}");
        assert_eq!(k.verify(&forged, 500), Err(TokenError::BadSignature));
        // Signed with another key.
        let stranger = TokenKeys::new(vec![b"z".repeat(32)]).unwrap();
        assert_eq!(
            k.verify(&stranger.sign(&c), 500),
            Err(TokenError::BadSignature)
        );
        // Garbage.
        assert!(matches!(
            k.verify("hello", 500),
            Err(TokenError::Malformed(_))
        ));
        assert!(matches!(
            k.verify(&format!("sb2.{}", &signed[4..]), 500),
            Err(TokenError::Malformed(_))
        ));
        assert!(matches!(
            k.verify(&"a".repeat(5000), 500),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn rotation_verifies_old_tokens() {
        let old = keys();
        let token = old.sign(&claims("x", 1_000));
        let rotated = TokenKeys::new(vec![b"n".repeat(32), b"k".repeat(32)]).unwrap();
        assert!(rotated.verify(&token, 10).is_ok());
        assert_ne!(rotated.sign(&claims("x", 1_000)), token);
    }

    #[test]
    fn key_file_errors_name_the_problem() {
        let dir = std::env::temp_dir().join(format!("sb-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let short = dir.join("short");
        std::fs::write(&short, "tooshort\n").unwrap();
        let err = TokenKeys::from_file(&short).unwrap_err().to_string();
        assert!(err.contains("at least 32"), "{err}");
        let good = dir.join("good");
        std::fs::write(&good, format!("{}\n\n{}\n", "a".repeat(40), "b".repeat(32))).unwrap();
        assert!(TokenKeys::from_file(&good).is_ok());
        assert!(
            TokenKeys::from_file(&dir.join("missing"))
                .unwrap_err()
                .to_string()
                .contains("missing")
        );
    }

    #[test]
    fn outcomes_and_ledger() {
        assert_eq!(Outcome::parse("csat", Some(4)).unwrap().label(), "csat_4");
        assert_eq!(
            Outcome::parse("csat", Some(9)),
            Err(OutcomeError::CsatRange(Some(9)))
        );
        assert!(matches!(
            Outcome::parse("happy", None),
            Err(OutcomeError::Unknown(_))
        ));

        assert_eq!(Outcome::Csat(5).kind(), Outcome::Csat(1).kind());
        assert_ne!(Outcome::Escalated.kind(), Outcome::Reopened.kind());
    }

    #[test]
    fn ids_are_unique() {
        let a = new_interaction_id();
        let b = new_interaction_id();
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }
}
