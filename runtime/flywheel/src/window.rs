//! Time bounds given on a command line or in a query string.

/// A point in time (Unix seconds) from `spec`, relative to `now`:
/// - `now`;
/// - Unix seconds (`1767225600`);
/// - an RFC 3339 time (`2026-01-01T00:00:00Z`) or a date (`2026-01-01`, midnight UTC);
/// - a duration (`720h`, `30m`, Go syntax): that long before `now`.
pub fn parse_time(spec: &str, now: i64) -> Result<i64, String> {
    let spec = spec.trim();
    if spec == "now" {
        return Ok(now);
    }
    if !spec.is_empty() && spec.bytes().all(|b| b.is_ascii_digit()) {
        return spec
            .parse()
            .map_err(|e| format!("{spec:?}: not a Unix time: {e}"));
    }
    if spec.len() >= 10 && spec.as_bytes().get(4) == Some(&b'-') {
        use time::format_description::well_known::Rfc3339;
        if let Ok(t) = time::OffsetDateTime::parse(spec, &Rfc3339) {
            return Ok(t.unix_timestamp());
        }
        let format = time::macros::format_description!("[year]-[month]-[day]");
        return time::Date::parse(spec, &format)
            .map(|d| d.midnight().assume_utc().unix_timestamp())
            .map_err(|e| format!("{spec:?}: not an RFC 3339 time or a YYYY-MM-DD date ({e})"));
    }
    let ago = switchboard_crds::parse_duration(spec).map_err(|e| {
        format!(
            "{spec:?}: expected now, Unix seconds, an RFC 3339 time, a date or a duration ago (720h): {e}"
        )
    })?;
    Ok(now.saturating_sub(i64::try_from(ago.as_secs()).unwrap_or(i64::MAX)))
}

/// The (exclusive) end of a window from `spec`, like [`parse_time`] except that `now` includes
/// the current second: an interaction stored a moment ago (same Unix second) is in a window
/// ending `now`.
pub fn parse_until(spec: &str, now: i64) -> Result<i64, String> {
    if spec.trim() == "now" {
        return Ok(now.saturating_add(1));
    }
    parse_time(spec, now)
}

/// Now, in Unix seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `2026-01-01T00:00:00Z` of Unix seconds (the seconds themselves when out of range).
pub fn rfc3339(unix: i64) -> String {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_of_a_time() {
        let now = 1_800_000_000;
        assert_eq!(parse_time("now", now), Ok(now));
        assert_eq!(parse_time("1767225600", now), Ok(1_767_225_600));
        assert_eq!(parse_time("2026-01-01", now), Ok(1_767_225_600));
        assert_eq!(parse_time("2026-01-01T01:00:00Z", now), Ok(1_767_229_200));
        assert_eq!(parse_time("72h", now), Ok(now - 72 * 3600));
        assert_eq!(parse_time(" 30m ", now), Ok(now - 1800));
        let err = parse_time("yesterday", now).unwrap_err();
        assert!(
            err.contains("\"yesterday\"") && err.contains("720h"),
            "{err}"
        );
        assert!(
            parse_time("2026-13-01", now)
                .unwrap_err()
                .contains("YYYY-MM-DD")
        );
        // A window ending now includes the current second; any other end is as written.
        assert_eq!(parse_until("now", now), Ok(now + 1));
        assert_eq!(parse_until("1h", now), Ok(now - 3600));
        assert_eq!(rfc3339(1_767_225_600), "2026-01-01T00:00:00Z");
    }
}
