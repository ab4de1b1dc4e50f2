//! Wire formats shared by all resources: percentages (`"5%"`) and Go-style durations (`"15m"`).
//!
//! Both keep their string form on the wire so that what a user wrote round-trips unchanged through
//! GitOps tools (no `"5%"` turning into `0.05`). Parsing is strict and mirrors the CEL rules in the
//! generated schema ([`PERCENT_PATTERN`], [`DURATION_PATTERN`]); a test keeps the two in agreement.

use std::{borrow::Cow, fmt, str::FromStr, time::Duration};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// RE2 pattern (used in CEL `matches`) for a percentage: a non-negative decimal number and `%`.
pub const PERCENT_PATTERN: &str = r"^[0-9]{1,3}(\.[0-9]{1,4})?%$";

/// RE2 pattern (used in CEL `matches`) for a Go-style duration: one or more `<number><unit>`
/// groups with units `ns`, `us`, `ms`, `s`, `m`, `h` (e.g. `30s`, `1h30m`, `720h`).
pub const DURATION_PATTERN: &str = r"^([0-9]{1,6}(\.[0-9]{1,9})?(ns|us|ms|s|m|h)){1,6}$";

/// Why a percentage or duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// Not of the form `5%` / `0.5%`.
    #[error("invalid percentage {0:?}: expected a number followed by %, like \"5%\" or \"0.5%\"")]
    Percent(String),
    /// Above 100%.
    #[error("invalid percentage {0:?}: must be between 0% and 100%")]
    PercentRange(String),
    /// Not of the form `30s` / `1h30m`.
    #[error(
        "invalid duration {0:?}: expected a Go duration like \"30s\", \"15m\", \"24h\" or \"1h30m\""
    )]
    Duration(String),
}

/// A percentage written as a string (`"5%"`, `"0.5%"`, `"100%"`), between 0% and 100%.
///
/// Used for shares and thresholds (holdout share, exploration share, guardrail limits, MDE).
/// Traffic weights are integers instead.
#[derive(Clone, Debug, PartialEq)]
pub struct Percent {
    raw: String,
    value: f64,
}

impl Percent {
    /// The percentage as a number of percent (`"5%"` -> `5.0`).
    pub fn percent(&self) -> f64 {
        self.value
    }

    /// The percentage as a fraction (`"5%"` -> `0.05`).
    pub fn fraction(&self) -> f64 {
        self.value / 100.0
    }

    /// The string as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Formats a fraction (`0.05`) as a percentage string (`"5%"`), with at most four decimals.
    ///
    /// Fractions outside `[0, 1]` (or NaN) are clamped, so the result always parses back.
    pub fn from_fraction(fraction: f64) -> Self {
        let pct = if fraction.is_nan() {
            0.0
        } else {
            (fraction * 100.0).clamp(0.0, 100.0)
        };
        let mut raw = format!("{pct:.4}");
        while raw.ends_with('0') {
            raw.pop();
        }
        if raw.ends_with('.') {
            raw.pop();
        }
        raw.push('%');
        let value = raw[..raw.len() - 1].parse().unwrap_or(0.0);
        Self { raw, value }
    }
}

impl FromStr for Percent {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let number = s
            .strip_suffix('%')
            .ok_or_else(|| UnitError::Percent(s.to_owned()))?;
        let (int, frac) = match number.split_once('.') {
            Some((int, frac)) => (int, Some(frac)),
            None => (number, None),
        };
        let digits_ok = |d: &str, max: usize| {
            !d.is_empty() && d.len() <= max && d.bytes().all(|b| b.is_ascii_digit())
        };
        if !digits_ok(int, 3) || frac.is_some_and(|f| !digits_ok(f, 4)) {
            return Err(UnitError::Percent(s.to_owned()));
        }
        let value: f64 = number
            .parse()
            .map_err(|_| UnitError::Percent(s.to_owned()))?;
        if value > 100.0 {
            return Err(UnitError::PercentRange(s.to_owned()));
        }
        Ok(Self {
            raw: s.to_owned(),
            value,
        })
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl Serialize for Percent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.raw)
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

/// What the API server says about a malformed or out-of-range [`Percent`] field.
pub const PERCENT_MESSAGE: &str =
    "must be a percentage between 0% and 100% written like \"5%\" or \"0.5%\"";

impl JsonSchema for Percent {
    fn schema_name() -> Cow<'static, str> {
        "Percent".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "maxLength": 10,
            "x-kubernetes-validations": [{
                "rule": percent_rule("self", 0.0, 100.0, true),
                "message": PERCENT_MESSAGE,
            }],
        })
    }

    fn inline_schema() -> bool {
        true
    }
}

/// A CEL expression true when `expr` (a string) is a percentage within `[min, max]`
/// (`min` exclusive when `min_inclusive` is false).
///
/// The format check guards the numeric conversion, so a malformed value fails this rule instead of
/// raising an evaluation error.
pub fn percent_rule(expr: &str, min: f64, max: f64, min_inclusive: bool) -> String {
    let lower = if min_inclusive { ">=" } else { ">" };
    let pattern = cel_string(PERCENT_PATTERN);
    format!(
        "{expr}.matches({pattern}) && double({expr}.replace('%', '')) {lower} {min:?} && double({expr}.replace('%', '')) <= {max:?}"
    )
}

/// A CEL expression true when `expr` (a string) is a Go duration of at least `min` (a Go duration
/// literal). A malformed value fails this rule rather than raising an evaluation error.
pub fn duration_at_least_rule(expr: &str, min: &str) -> String {
    let pattern = cel_string(DURATION_PATTERN);
    format!("{expr}.matches({pattern}) && duration({expr}) >= duration('{min}')")
}

/// A duration as a Prometheus range, offset or label value: whole seconds as `3600s`, otherwise
/// milliseconds (`1500ms`). The runtime's `settle` label and the operator's queries agree on it.
pub fn prometheus_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Quotes `s` as a CEL single-quoted string literal (escaping backslashes and quotes).
pub fn cel_string(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A duration written the Go way (`"30s"`, `"15m"`, `"24h"`, `"1h30m"`, `"720h"`).
///
/// Days are not a unit (as in Go and Kubernetes): write 30 days as `720h`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoDuration {
    raw: String,
    value: Duration,
}

impl GoDuration {
    /// The parsed duration.
    pub fn duration(&self) -> Duration {
        self.value
    }

    /// The string as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// A duration of whole milliseconds, written in `ms` unless a whole number of seconds.
    pub fn from_millis(millis: u64) -> Self {
        if millis.is_multiple_of(1000) {
            Self::from_secs(millis / 1000)
        } else {
            Self {
                raw: format!("{millis}ms"),
                value: Duration::from_millis(millis),
            }
        }
    }

    /// A duration from a whole number of seconds, written the shortest exact way (`90` -> `"90s"`,
    /// `3600` -> `"1h"`).
    pub fn from_secs(secs: u64) -> Self {
        let raw = if secs > 0 && secs.is_multiple_of(3600) {
            format!("{}h", secs / 3600)
        } else if secs > 0 && secs.is_multiple_of(60) {
            format!("{}m", secs / 60)
        } else {
            format!("{secs}s")
        };
        Self {
            raw,
            value: Duration::from_secs(secs),
        }
    }
}

/// Parses a Go-style duration (`"1h30m"`, `"250ms"`, `"0.5s"`); see [`DURATION_PATTERN`].
pub fn parse_duration(s: &str) -> Result<Duration, UnitError> {
    let err = || UnitError::Duration(s.to_owned());
    if s.is_empty() {
        return Err(err());
    }
    let mut rest = s;
    let mut total = Duration::ZERO;
    let mut groups = 0;
    while !rest.is_empty() {
        groups += 1;
        let num_len = rest
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'.')
            .count();
        let (number, tail) = rest.split_at(num_len);
        let (int, frac) = match number.split_once('.') {
            Some((int, frac)) => (int, Some(frac)),
            None => (number, None),
        };
        if int.is_empty() || int.len() > 6 || frac.is_some_and(|f| f.is_empty() || f.len() > 9) {
            return Err(err());
        }
        if frac.is_some_and(|f| f.contains('.')) {
            return Err(err());
        }
        let unit_len = tail.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
        let (unit, tail) = tail.split_at(unit_len);
        let nanos_per_unit: u128 = match unit {
            "ns" => 1,
            "us" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3600 * 1_000_000_000,
            _ => return Err(err()),
        };
        let int: u128 = int.parse().map_err(|_| err())?;
        let mut nanos = int * nanos_per_unit;
        if let Some(frac) = frac {
            let frac_value: u128 = frac.parse().map_err(|_| err())?;
            let scale = 10u128.pow(u32::try_from(frac.len()).map_err(|_| err())?);
            nanos += frac_value * nanos_per_unit / scale;
        }
        let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| err())?;
        // The remainder is below 1e9, so it always fits in u32.
        let sub = u32::try_from(nanos % 1_000_000_000).map_err(|_| err())?;
        total = total
            .checked_add(Duration::new(secs, sub))
            .ok_or_else(err)?;
        rest = tail;
    }
    if groups > 6 {
        return Err(err());
    }
    Ok(total)
}

impl FromStr for GoDuration {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self {
            raw: s.to_owned(),
            value: parse_duration(s)?,
        })
    }
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.raw)
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for GoDuration {
    fn schema_name() -> Cow<'static, str> {
        "GoDuration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "maxLength": 64,
            "x-kubernetes-validations": [{
                "rule": format!("self.matches({})", cel_string(DURATION_PATTERN)),
                "message": "must be a Go duration like \"30s\", \"15m\", \"24h\" or \"1h30m\" (no days: write 720h for 30 days)",
            }],
        })
    }

    fn inline_schema() -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_parses_and_gives_fractions() {
        let p: Percent = "5%".parse().unwrap();
        assert_eq!(p.fraction(), 0.05);
        assert_eq!(p.percent(), 5.0);
        assert_eq!(p.to_string(), "5%");
        assert_eq!("0.5%".parse::<Percent>().unwrap().fraction(), 0.005);
        assert_eq!("100%".parse::<Percent>().unwrap().fraction(), 1.0);
        for bad in [
            "5", "%", "-5%", "5 %", "1e2%", "100.5%", "101%", ".5%", "5.%", "", "5%%",
        ] {
            assert!(bad.parse::<Percent>().is_err(), "{bad:?} must be refused");
        }
        assert_eq!(
            "101%".parse::<Percent>().unwrap_err(),
            UnitError::PercentRange("101%".into())
        );
    }

    #[test]
    fn percent_from_fraction_round_trips() {
        assert_eq!(Percent::from_fraction(0.05).as_str(), "5%");
        assert_eq!(Percent::from_fraction(0.123456).as_str(), "12.3456%");
        assert_eq!(Percent::from_fraction(2.0).as_str(), "100%");
        assert_eq!(Percent::from_fraction(f64::NAN).as_str(), "0%");
        for f in [0.0, 0.001, 0.5, 0.98765, 1.0] {
            let p = Percent::from_fraction(f);
            assert_eq!(p.as_str().parse::<Percent>().unwrap(), p);
        }
    }

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(
            parse_duration("720h").unwrap(),
            Duration::from_secs(720 * 3600)
        );
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        for bad in [
            "",
            "30",
            "30d",
            "1w",
            "h",
            "-5s",
            "1.s",
            ".5s",
            "1..5s",
            "5 s",
            "1h1h1h1h1h1h1h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} must be refused");
        }
        assert_eq!(GoDuration::from_secs(3600).as_str(), "1h");
        assert_eq!(GoDuration::from_secs(90).as_str(), "90s");
        assert_eq!(GoDuration::from_secs(120).as_str(), "2m");
    }

    #[test]
    fn serde_keeps_the_written_form() {
        let d: GoDuration = serde_json::from_str("\"1h30m\"").unwrap();
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"1h30m\"");
        let p: Percent = serde_json::from_str("\"0.50%\"").unwrap();
        assert_eq!(serde_json::to_string(&p).unwrap(), "\"0.50%\"");
        let err = serde_json::from_str::<Percent>("\"half\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid percentage \"half\""), "{err}");
    }
}
