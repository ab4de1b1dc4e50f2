//! Stable hashing of identifiers onto `[0, 1)`.
use sha2::{Digest, Sha256};

/// Maps `parts` (joined unambiguously) to a number in `[0, 1)`, uniformly and stably: the first
/// 8 bytes of SHA-256 as a big-endian integer divided by 2^64. The same parts give the same number
/// in every process, on every machine, in every version.
pub fn unit_interval(parts: &[&str]) -> f64 {
    let mut hasher = Sha256::new();
    for part in parts {
        // Length-prefixed so ("ab", "c") and ("a", "bc") differ.
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // 53 bits keep the result exactly representable and strictly below 1.
    (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
}

/// The id a unit (user, account, conversation) is stored under: `u:` and 32 hex digits of
/// HMAC-SHA256 with the Router's unit key. Stable for a key (experiments' per-unit analysis
/// groups by it), not reversible without the key: an email address given as the unit is not
/// stored, and its pseudonym cannot be found by hashing guesses.
pub fn pseudonym(key: &[u8], unit: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    mac.update(unit.as_bytes());
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("u:{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonyms_are_stable_per_key_and_hide_the_unit() {
        let p = pseudonym(b"key-1", "jane@example.com");
        assert_eq!(p, pseudonym(b"key-1", "jane@example.com"));
        assert_ne!(p, pseudonym(b"key-2", "jane@example.com"));
        assert_ne!(p, pseudonym(b"key-1", "john@example.com"));
        assert!(
            p.starts_with("u:") && p.len() == 34 && !p.contains("jane"),
            "{p}"
        );
    }

    #[test]
    fn stable_and_in_range() {
        let a = unit_interval(&["salt", "user-1"]);
        assert_eq!(a, unit_interval(&["salt", "user-1"]));
        assert!((0.0..1.0).contains(&a));
        assert_ne!(unit_interval(&["ab", "c"]), unit_interval(&["a", "bc"]));
    }

    #[test]
    fn roughly_uniform() {
        let n = 20_000;
        let below = (0..n)
            .filter(|i| unit_interval(&["s", &i.to_string()]) < 0.3)
            .count();
        let share = below as f64 / n as f64;
        assert!((share - 0.3).abs() < 0.015, "{share}");
    }
}
