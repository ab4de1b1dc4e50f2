//! The interaction-token key of a Router's runtimes: created once, rotated on request without a
//! restart and without refusing a token that is still valid.
//!
//! Secret `<router>-runtime-token` (key `key`, mounted into every runtime pod, re-read by the
//! runtime when it changes) holds one key per line: the first signs, every one verifies. A
//! rotation is requested by giving the Router's annotation [`ROTATE_ANNOTATION`] a new value (a
//! date, a ticket id) and runs in three steps, each written to the Secret and announced by an
//! Event on the Router:
//!
//! 1. **Distributing**: a new key is *appended*. Runtimes accept it; none signs with it yet, so a
//!    replica that has not received the change yet (the kubelet refreshes Secret volumes about
//!    once a minute) never sees a token it cannot verify.
//! 2. after [`DISTRIBUTION`], **Retiring**: the new key moves *first* and signs; the old keys
//!    still verify the tokens they signed.
//! 3. after the token lifetime ([`TOKEN_LIFETIME`], the runtimes' `--token-ttl`) the old keys are
//!    *dropped*: every token they signed has expired.
//!
//! The state lives in the Secret's annotations (the rotation acted on, the phase, since when), so
//! an operator restarted mid-rotation carries on. [`plan`] is pure; the controller applies it.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::{ByteString, api::core::v1::Secret, jiff::Timestamp};

/// Router annotation requesting a rotation: each new value starts one.
pub const ROTATE_ANNOTATION: &str = "switchboard.dev/rotate-token-key";
/// Secret annotation: the value of [`ROTATE_ANNOTATION`] last acted on.
pub const ROTATION_ANNOTATION: &str = "switchboard.dev/token-key-rotation";
/// Secret annotation: `Distributing` or `Retiring` while a rotation runs.
pub const PHASE_ANNOTATION: &str = "switchboard.dev/token-key-phase";
/// Secret annotation: when the phase began (RFC 3339).
pub const SINCE_ANNOTATION: &str = "switchboard.dev/token-key-phase-since";
/// The Secret's data key holding the key file.
pub const KEY: &str = "key";
/// The Secret's data key holding the admin API's bearer token (the runtimes'
/// `--admin-token-file`; the operator sends it to the admin API).
pub const ADMIN_TOKEN: &str = crate::names::ADMIN_TOKEN_KEY;
/// The Secret's data key holding the key units are pseudonymised with before they are stored
/// (the runtimes' `--unit-key-file`): created once, never rotated (a new key would split every
/// unit's history in two).
pub const UNIT_KEY: &str = crate::names::UNIT_KEY_KEY;

/// How long a new key is only accepted before it signs: the kubelet's refresh of Secret volumes
/// (its sync period, one minute by default, plus its cache) and the runtime's poll of the file.
pub const DISTRIBUTION: Duration = Duration::from_secs(180);
/// Interaction tokens' lifetime (the runtimes' `--token-ttl`): how long a replaced key still
/// verifies.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(168 * 3600);

/// Where a Router's key is in its rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// One key, or the keys as the last rotation left them.
    Steady,
    /// The newest key (the last line) is accepted, not yet signing.
    Distributing,
    /// The newest key (the first line) signs; the others still verify.
    Retiring,
}

impl Phase {
    fn as_str(self) -> Option<&'static str> {
        match self {
            Self::Steady => None,
            Self::Distributing => Some("Distributing"),
            Self::Retiring => Some("Retiring"),
        }
    }
}

/// The key file and its rotation state, as stored in the Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyState {
    /// Keys, one per line of the file; the first signs.
    pub keys: Vec<String>,
    /// The rotation request last acted on.
    pub rotation: Option<String>,
    /// The phase.
    pub phase: Phase,
    /// When the phase began.
    pub since: Option<Timestamp>,
    /// The admin API's token (created with the Secret; added to a Secret of an earlier
    /// version).
    pub admin_token: Option<String>,
    /// The unit pseudonym key (created with the Secret; added to a Secret of an earlier
    /// version).
    pub unit_key: Option<String>,
}

impl KeyState {
    /// A new key file with one key; `rotation` (the Router's request at creation, if any) counts
    /// as done.
    pub fn new(key: String, rotation: Option<&str>) -> Self {
        Self {
            keys: vec![key],
            rotation: rotation.map(str::to_owned),
            phase: Phase::Steady,
            since: None,
            admin_token: None,
            unit_key: None,
        }
    }

    /// Reads the state of `secret`. A phase whose keys do not fit it (edited by hand) reads as
    /// steady.
    pub fn read(secret: &Secret) -> Self {
        let field = |key: &str| {
            secret
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                .or_else(|| {
                    secret
                        .string_data
                        .as_ref()
                        .and_then(|d| d.get(key))
                        .cloned()
                })
        };
        let text = field(KEY).unwrap_or_default();
        let admin_token = field(ADMIN_TOKEN)
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty());
        let unit_key = field(UNIT_KEY)
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty());
        let keys: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        let annotations = secret.metadata.annotations.clone().unwrap_or_default();
        let since = annotations
            .get(SINCE_ANNOTATION)
            .and_then(|s| s.parse::<Timestamp>().ok());
        let phase = match annotations.get(PHASE_ANNOTATION).map(String::as_str) {
            Some("Distributing") if keys.len() >= 2 && since.is_some() => Phase::Distributing,
            Some("Retiring") if keys.len() >= 2 && since.is_some() => Phase::Retiring,
            _ => Phase::Steady,
        };
        Self {
            keys,
            rotation: annotations.get(ROTATION_ANNOTATION).cloned(),
            phase,
            since,
            admin_token,
            unit_key,
        }
    }

    /// The Secret's data: the key file, and the admin token.
    pub fn data(&self) -> BTreeMap<String, ByteString> {
        let mut file = self.keys.join("\n");
        file.push('\n');
        let mut data = BTreeMap::from([(KEY.to_owned(), ByteString(file.into_bytes()))]);
        if let Some(token) = &self.admin_token {
            data.insert(
                ADMIN_TOKEN.to_owned(),
                ByteString(format!("{token}\n").into_bytes()),
            );
        }
        if let Some(key) = &self.unit_key {
            data.insert(
                UNIT_KEY.to_owned(),
                ByteString(format!("{key}\n").into_bytes()),
            );
        }
        data
    }

    /// Writes the state's annotations into `annotations` (removing those that no longer apply).
    pub fn annotate(&self, annotations: &mut BTreeMap<String, String>) {
        let mut set = |key: &str, value: Option<String>| match value {
            Some(v) => {
                annotations.insert(key.to_owned(), v);
            }
            None => {
                annotations.remove(key);
            }
        };
        set(ROTATION_ANNOTATION, self.rotation.clone());
        set(PHASE_ANNOTATION, self.phase.as_str().map(str::to_owned));
        set(
            SINCE_ANNOTATION,
            self.since
                .filter(|_| self.phase != Phase::Steady)
                .map(|t| t.to_string()),
        );
    }
}

/// A short, non-secret name of a key, as the runtime's `/v1/config` (`tokenKeys`) shows it.
fn fingerprint(key: &str) -> String {
    switchboard_policy::token::fingerprint(key.as_bytes())
}

/// The next step of a rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The state to write, with the Event's reason and note; `None`: nothing to write now.
    pub write: Option<(KeyState, &'static str, String)>,
    /// When to look again (the current phase's end).
    pub requeue: Option<Duration>,
}

fn elapsed(since: Option<Timestamp>, now: Timestamp) -> Duration {
    since.map_or(Duration::MAX, |s| {
        Duration::try_from(now.duration_since(s)).unwrap_or(Duration::ZERO)
    })
}

/// What to do about the key of a Router whose rotation request is `requested`, at `now`.
/// `new_key` makes a key when a rotation starts. Pure.
pub fn plan(
    current: &KeyState,
    requested: Option<&str>,
    now: Timestamp,
    new_key: &mut dyn FnMut() -> String,
) -> Step {
    let nothing = |requeue| Step {
        write: None,
        requeue,
    };
    match current.phase {
        Phase::Steady => {
            let Some(requested) = requested.filter(|r| Some(*r) != current.rotation.as_deref())
            else {
                return nothing(None);
            };
            let key = new_key();
            let fp = fingerprint(&key);
            let mut keys = current.keys.clone();
            keys.push(key);
            let next = KeyState {
                keys,
                rotation: Some(requested.to_owned()),
                phase: Phase::Distributing,
                since: Some(now),
                admin_token: current.admin_token.clone(),
                unit_key: current.unit_key.clone(),
            };
            Step {
                write: Some((
                    next,
                    "TokenKeyRotationStarted",
                    format!(
                        "rotation {requested:?}: new token key {fp} added for verification; it signs in {}s, once every runtime has it",
                        DISTRIBUTION.as_secs()
                    ),
                )),
                requeue: Some(DISTRIBUTION),
            }
        }
        Phase::Distributing => {
            let waited = elapsed(current.since, now);
            if waited < DISTRIBUTION {
                return nothing(Some(DISTRIBUTION - waited));
            }
            let mut keys = current.keys.clone();
            let newest = keys.pop().unwrap_or_default();
            let fp = fingerprint(&newest);
            keys.insert(0, newest);
            let retired: Vec<String> = keys[1..].iter().map(|k| fingerprint(k)).collect();
            let next = KeyState {
                keys,
                phase: Phase::Retiring,
                since: Some(now),
                ..current.clone()
            };
            Step {
                write: Some((
                    next,
                    "TokenKeySigning",
                    format!(
                        "token key {fp} signs; {} still verify tokens until {}",
                        retired.join(", "),
                        k8s_openapi::jiff::SignedDuration::try_from(TOKEN_LIFETIME)
                            .ok()
                            .and_then(|d| now.checked_add(d).ok())
                            .unwrap_or(now)
                    ),
                )),
                requeue: Some(TOKEN_LIFETIME),
            }
        }
        Phase::Retiring => {
            let waited = elapsed(current.since, now);
            if waited < TOKEN_LIFETIME {
                return nothing(Some(TOKEN_LIFETIME - waited));
            }
            let retired: Vec<String> = current.keys[1..].iter().map(|k| fingerprint(k)).collect();
            let next = KeyState {
                keys: current.keys[..1].to_vec(),
                phase: Phase::Steady,
                since: None,
                ..current.clone()
            };
            Step {
                write: Some((
                    next,
                    "TokenKeyRotated",
                    format!(
                        "token keys {} retired: every token they signed has expired",
                        retired.join(", ")
                    ),
                )),
                // A request made during the rotation starts the next one.
                requeue: Some(Duration::from_secs(1)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn secret(state: &KeyState) -> Secret {
        let mut annotations = BTreeMap::new();
        state.annotate(&mut annotations);
        Secret {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                annotations: Some(annotations),
                ..Default::default()
            },
            data: Some(state.data()),
            ..Default::default()
        }
    }

    /// Applies `plan` and reads the written state back from a Secret, as the controller does.
    fn step(state: &KeyState, requested: Option<&str>, now: Timestamp) -> (KeyState, Step) {
        let mut n = 0;
        let mut new_key = || {
            n += 1;
            format!("{n}").repeat(64)
        };
        let step = plan(state, requested, now, &mut new_key);
        let next = step
            .write
            .as_ref()
            .map_or_else(|| state.clone(), |(s, _, _)| KeyState::read(&secret(s)));
        (next, step)
    }

    #[test]
    fn a_rotation_appends_then_promotes_then_retires() {
        let old = "a".repeat(64);
        let s0 = KeyState::read(&secret(&KeyState::new(old.clone(), None)));
        assert_eq!((s0.keys.len(), s0.phase), (1, Phase::Steady));
        // Nothing requested, nothing to do.
        assert_eq!(step(&s0, None, at(0)).1.write, None);

        let (s1, st) = step(&s0, Some("2026-12"), at(0));
        let new = "1".repeat(64);
        assert_eq!(
            s1.keys,
            [old.clone(), new.clone()],
            "appended: verifies, does not sign"
        );
        assert_eq!(s1.phase, Phase::Distributing);
        assert_eq!(st.requeue, Some(DISTRIBUTION));
        let (_, _, note) = st.write.unwrap();
        assert!(note.contains(&fingerprint(&new)), "{note}");

        // Too early to sign: wait out the rest.
        let (same, st) = step(&s1, Some("2026-12"), at(60));
        assert_eq!(
            (same, st.write, st.requeue),
            (
                s1.clone(),
                None,
                Some(DISTRIBUTION - Duration::from_secs(60))
            )
        );

        let (s2, st) = step(&s1, Some("2026-12"), at(180));
        assert_eq!(s2.keys, [new.clone(), old.clone()], "the new key signs");
        assert_eq!(s2.phase, Phase::Retiring);
        assert_eq!(st.write.unwrap().1, "TokenKeySigning");

        // A new request meanwhile waits for the old keys' tokens to expire.
        let (same, st) = step(&s2, Some("2027-01"), at(3600));
        assert_eq!((same, st.write), (s2.clone(), None));

        let (s3, st) = step(&s2, Some("2027-01"), at(180 + 168 * 3600));
        assert_eq!(s3.keys, std::slice::from_ref(&new));
        assert_eq!(
            (s3.phase, s3.rotation.as_deref()),
            (Phase::Steady, Some("2026-12"))
        );
        assert_eq!(st.write.unwrap().1, "TokenKeyRotated");
        // ...then starts.
        let (s4, _) = step(&s3, Some("2027-01"), at(200 + 168 * 3600));
        assert_eq!((s4.keys.len(), s4.phase), (2, Phase::Distributing));
        // The request acted on is not repeated.
        let (s5, _) = step(&s4, Some("2027-01"), at(400 + 168 * 3600));
        let (s6, st) = step(&s5, Some("2027-01"), at(400 + 2 * 168 * 3600));
        let (s7, st2) = step(&s6, Some("2027-01"), at(500 + 2 * 168 * 3600));
        assert!(st.write.is_some() && st2.write.is_none(), "{s7:?}");
        assert_eq!(s7.keys.len(), 1);
    }

    #[test]
    fn a_request_at_creation_is_not_a_rotation_and_hand_edits_read_as_steady() {
        let s = KeyState::read(&secret(&KeyState::new("a".repeat(64), Some("x"))));
        assert_eq!(step(&s, Some("x"), at(0)).1.write, None);
        // A phase annotation without the keys it implies (someone removed a line).
        let mut broken = secret(&KeyState {
            keys: vec!["a".repeat(64), "b".repeat(64)],
            rotation: Some("x".into()),
            phase: Phase::Distributing,
            since: Some(at(0)),
            admin_token: None,
            unit_key: None,
        });
        broken.data = Some(KeyState::new("a".repeat(64), None).data());
        assert_eq!(KeyState::read(&broken).phase, Phase::Steady);
    }
}
