//! PII redaction at the storage boundary: what a customer typed (an email address, a phone
//! number, a card number, an IBAN, a password or API key pasted into a question) is replaced by
//! a placeholder (`[email]`, `[phone]`, `[card]`, `[iban]`, `[secret]`) before an interaction is
//! stored. Everything downstream reads the store — feedback analysis, the training-data export,
//! coverage gaps and the examples the operator writes into a KnowledgeBase's status — so none of
//! it ever holds the raw value. The answer served to the customer is not changed.
//!
//! Detectors are chosen to over-redact rather than leak: card numbers must pass the Luhn check
//! and IBANs the mod-97 check (so prices, dates and order amounts stay), phone numbers need 9 to
//! 15 digits, secrets are the shapes providers issue (`sk-...`, `ghp_...`, `AKIA...`, JWTs,
//! `password: ...`) and long random-looking strings.

use std::borrow::Cow;
use std::sync::OnceLock;

use regex::Regex;
use switchboard_crds::router::RedactPattern;

/// A compiled detector: its placeholder, its pattern (group `v` is the value; what precedes it
/// in the match is kept), and a check on the value.
struct Detector {
    placeholder: &'static str,
    pattern: Regex,
    check: fn(&str) -> bool,
}

fn always(_: &str) -> bool {
    true
}

fn digits(s: &str) -> Vec<u32> {
    s.chars().filter_map(|c| c.to_digit(10)).collect()
}

/// The Luhn checksum of a card number.
fn luhn(s: &str) -> bool {
    let d = digits(s);
    if !(13..=19).contains(&d.len()) {
        return false;
    }
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            if i % 2 == 1 {
                let y = x * 2;
                if y > 9 { y - 9 } else { y }
            } else {
                x
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// The ISO 13616 mod-97 check of an IBAN.
fn iban(s: &str) -> bool {
    let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let (head, tail) = compact.split_at(4);
    let mut remainder: u64 = 0;
    for c in tail.chars().chain(head.chars()) {
        let value = match c.to_digit(36) {
            Some(v) => v as u64,
            None => return false,
        };
        remainder = if value >= 10 {
            (remainder * 100 + value) % 97
        } else {
            (remainder * 10 + value) % 97
        };
    }
    remainder == 1
}

fn phone(s: &str) -> bool {
    static DATE: OnceLock<Regex> = OnceLock::new();
    let date = DATE.get_or_init(|| {
        Regex::new(r"[0-9]{4}[-./][0-9]{1,2}[-./][0-9]{1,2}")
            .unwrap_or_else(|e| unreachable!("{e}"))
    });
    (9..=15).contains(&digits(s).len()) && !date.is_match(s)
}

/// A long token that looks random (an access key, a hash): many letters and many digits.
fn random_looking(s: &str) -> bool {
    let letters = s.chars().filter(char::is_ascii_alphabetic).count();
    let numbers = s.chars().filter(char::is_ascii_digit).count();
    letters >= 6 && numbers >= 6 && s.matches('/').count() <= 3
}

fn detectors() -> &'static [Detector] {
    static DETECTORS: OnceLock<Vec<Detector>> = OnceLock::new();
    DETECTORS.get_or_init(|| {
        let d = |placeholder, pattern: &str, check| Detector {
            placeholder,
            pattern: Regex::new(pattern).unwrap_or_else(|e| unreachable!("{pattern}: {e}")),
            check,
        };
        vec![
            // Secrets first: a key may contain digits a later detector would take for a phone.
            d(
                "[secret]",
                r"(?i)(?P<v>\b(?:password|passwd|pwd|passcode|pin|api[_ -]?key|secret|token)\s*(?:is|:|=)\s*\S+)",
                always,
            ),
            d(
                "[secret]",
                r"(?P<v>\b(?:sk|pk|rk)[-_](?:live|test|proj)?[-_]?[A-Za-z0-9]{12,}\b|\bgh[pousr]_[A-Za-z0-9]{20,}\b|\bxox[abpr]-[A-Za-z0-9-]{10,}\b|\bAKIA[0-9A-Z]{16}\b|\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})",
                always,
            ),
            d("[secret]", r"(?P<v>\b[A-Za-z0-9_+/]{32,}={0,2})", random_looking),
            d(
                "[email]",
                r"(?P<v>[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,})",
                always,
            ),
            d("[iban]", r"(?P<v>\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}\b)", iban),
            d("[card]", r"(?P<v>\b[0-9](?:[ -]?[0-9]){12,18}\b)", luhn),
            // Not inside an identifier (`INV-2026-000123`): the preceding character is kept.
            d(
                "[phone]",
                r"(?:^|[^A-Za-z0-9_-])(?P<v>\+?\(?[0-9][0-9 ().-]{7,}[0-9])",
                phone,
            ),
        ]
    })
}

/// Replaces personal data and secrets in `text` with placeholders; borrowed when there is none.
/// The built-in detectors only: [`Redactor`] adds a Router's own patterns.
pub fn redact(text: &str) -> Cow<'_, str> {
    Redactor::default().redact(text)
}

/// The built-in detectors and a Router's own patterns (`spec.privacy.redact`).
#[derive(Clone, Debug, Default)]
pub struct Redactor {
    custom: Vec<(String, Regex)>,
}

impl Redactor {
    /// The built-in detectors and `patterns` after them (each match becomes `[<name>]`); an
    /// unusable pattern is an error naming it ([`RedactPattern::problem`]).
    pub fn new(patterns: &[RedactPattern]) -> Result<Self, String> {
        let mut custom = Vec::with_capacity(patterns.len());
        for p in patterns {
            if let Some(problem) = p.problem() {
                return Err(format!("redaction pattern {}: {problem}", p.name));
            }
            let re =
                Regex::new(&p.pattern).map_err(|e| format!("redaction pattern {}: {e}", p.name))?;
            custom.push((p.placeholder(), re));
        }
        Ok(Self { custom })
    }

    /// Replaces personal data and secrets in `text` with placeholders; borrowed when there is
    /// none.
    ///
    /// Detectors judge a match by its surroundings (digits inside an identifier are not a phone
    /// number), and a replacement changes the surroundings of what is left: `0044 05sk-live-...`
    /// is an identifier until the key in it becomes `[secret]`, and `3704 0044` then reads as a
    /// phone number. So the passes repeat until nothing changes (each only swaps text for
    /// placeholders, so it ends within a few; found by fuzzing, `fuzz/regressions/redact/`):
    /// what is stored is redacted as far as redaction goes, and redacting it again changes
    /// nothing.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = self.redact_once(text);
        for _ in 0..8 {
            let Cow::Owned(current) = &out else {
                break;
            };
            let again = self.redact_once(current);
            if again.as_ref() == current.as_str() {
                break;
            }
            out = Cow::Owned(again.into_owned());
        }
        out
    }

    fn redact_once<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = redact_once(text);
        for (placeholder, re) in &self.custom {
            if re.is_match(&out) {
                let replaced = re.replace_all(&out, placeholder.as_str()).into_owned();
                if replaced != out.as_ref() {
                    out = Cow::Owned(replaced);
                }
            }
        }
        out
    }
}

fn redact_once(text: &str) -> Cow<'_, str> {
    let mut out = Cow::Borrowed(text);
    for detector in detectors() {
        if !detector.pattern.is_match(&out) {
            continue;
        }
        let replaced = detector
            .pattern
            .replace_all(&out, |c: &regex::Captures<'_>| {
                let whole = &c[0];
                let Some(value) = c.name("v") else {
                    return whole.to_owned();
                };
                if (detector.check)(value.as_str()) {
                    let before = value.start() - c.get(0).map_or(0, |m| m.start());
                    format!("{}{}", &whole[..before], detector.placeholder)
                } else {
                    whole.to_owned()
                }
            })
            .into_owned();
        if replaced != out.as_ref() {
            out = Cow::Owned(replaced);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_routers_own_patterns_follow_the_built_in_detectors() {
        let pattern = |name: &str, pattern: &str| RedactPattern {
            name: name.to_owned(),
            pattern: pattern.to_owned(),
        };
        let r = Redactor::new(&[pattern("order", r"\bORD-[0-9]{6}\b")]).unwrap();
        assert_eq!(
            r.redact("order ORD-482913 for jane@example.com"),
            "order [order] for [email]"
        );
        // Without the pattern, only the built-in detectors.
        assert_eq!(redact("order ORD-482913"), "order ORD-482913");
        // Unusable patterns are refused, naming them.
        let e = Redactor::new(&[pattern("any", ".*")]).unwrap_err();
        assert!(e.contains("any") && e.contains("empty string"), "{e}");
        let e = Redactor::new(&[pattern("loop", r"\[loop\]")]).unwrap_err();
        assert!(e.contains("own placeholder"), "{e}");
        let e = Redactor::new(&[pattern("bad", "(")]).unwrap_err();
        assert!(e.contains("not a regular expression"), "{e}");
    }

    #[test]
    fn personal_data_and_secrets_become_placeholders() {
        for (text, want) in [
            (
                "I'm jane.doe+billing@example.co.uk, refund please",
                "I'm [email], refund please",
            ),
            (
                "card 4111 1111 1111 1111 was charged twice",
                "card [card] was charged twice",
            ),
            ("card 4111-1111-1111-1111", "card [card]"),
            (
                "pay to DE89 3704 0044 0532 0130 00 today",
                "pay to [iban] today",
            ),
            ("IBAN GB82WEST12345698765432", "IBAN [iban]"),
            ("call me on +44 20 7946 0958", "call me on [phone]"),
            ("my number is (555) 010-4477 ok", "my number is [phone] ok"),
            ("my password is hunter2!", "my [secret]"),
            ("API key: abc123", "[secret]"),
            (
                "this key sk-proj-8fJ3kLm9Qw2Er5Ty7Ui0 stopped working",
                "this key [secret] stopped working",
            ),
            (
                "token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
                "token [secret]",
            ),
        ] {
            assert_eq!(redact(text), want, "{text}");
        }
    }

    #[test]
    fn what_answers_are_made_of_is_kept() {
        for text in [
            "How many days do I have to request a refund? 14 days since 2026-03-01.",
            "The Team plan costs $49.00 per month (or 490 EUR a year).",
            "Order 12345678 was shipped; version 2.11.0; error E4012.",
            "Invoice INV-2026-000123 for 1,299.00",
            "Settings > Security > Two-factor authentication",
            "card ending 1111",
            "charged twice on 2026-12-07 10:30, see /help/articles/1234/refunds",
            "commit abc, build 7",
            "4111 1111 1111 1112 fails the Luhn check",
        ] {
            assert_eq!(redact(text), text);
        }
    }
}
