//! The format-independent document model every parser produces.

use serde::{Deserialize, Serialize};
use time::format_description::well_known::{Rfc2822, Rfc3339};
use time::{Date, OffsetDateTime, PrimitiveDateTime, Time};

/// One logical document (a page, a ticket, a Slack thread, a PDF).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Document {
    /// Stable id: `<source>/<relative path or item id>`.
    pub doc_id: String,
    /// Human title; the first element of every section path.
    pub title: String,
    /// Name of the source it came from.
    pub source: String,
    /// Last modification, Unix seconds (UTC), from the content's own metadata when it has some,
    /// else the file's modification time; `None` when unknown (no recency decay applies).
    pub last_modified: Option<i64>,
    /// Tags / keywords.
    pub tags: Vec<String>,
    /// Sections in document order. The first may have an empty body (title only).
    pub sections: Vec<Section>,
}

/// A section: a heading path and the paragraphs directly under it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Section {
    /// Breadcrumb from the outermost context to this section, e.g.
    /// `["Billing guide", "Refunds", "Annual plans"]`.
    pub path: Vec<String>,
    /// Paragraph-level blocks; table rows are lines of one block (`cell | cell | cell`).
    pub blocks: Vec<String>,
}

impl Document {
    /// Drops sections without text and collapses whitespace inside lines.
    pub(crate) fn normalise(mut self) -> Self {
        for section in &mut self.sections {
            section.blocks = section
                .blocks
                .iter()
                .map(|b| normalise_block(b))
                .filter(|b| !b.is_empty())
                .collect();
            section.path = section
                .path
                .iter()
                .map(|p| collapse_ws(p))
                .filter(|p| !p.is_empty())
                .collect();
        }
        self.sections.retain(|s| !s.blocks.is_empty());
        self.title = collapse_ws(&self.title);
        self
    }

    /// Total number of characters of text, for reports.
    pub fn text_len(&self) -> usize {
        self.sections
            .iter()
            .flat_map(|s| &s.blocks)
            .map(String::len)
            .sum()
    }
}

/// `[A > B > C]`: the breadcrumb prefix prepended to chunk text for embedding.
pub fn breadcrumb(path: &[String]) -> String {
    format!("[{}]", path.join(" > "))
}

/// Collapses runs of whitespace to one space and trims.
pub(crate) fn collapse_ws(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Keeps line structure (table rows, list items) but collapses whitespace within each line and
/// drops empty lines.
pub(crate) fn normalise_block(s: &str) -> String {
    s.lines()
        .map(collapse_ws)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Lower-case ASCII slug for ids: `Refunds & Credits` -> `refunds-credits`.
pub fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    while out.ends_with('-') {
        out.pop();
    }
    if out.is_empty() {
        "section".to_string()
    } else {
        out
    }
}

/// Parses the timestamp formats found in exports: RFC 3339 (`2025-03-01T10:00:00Z`), a bare date
/// (`2025-03-01`), RFC 2822, Confluence's `Mar 03, 2025`, PDF dates (`D:20250301120000Z`) and Unix
/// seconds (Slack's `1717171717.000100`). Returns Unix seconds.
pub fn parse_timestamp(raw: &str) -> Option<i64> {
    let s = raw.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Some(t.unix_timestamp());
    }
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc2822) {
        return Some(t.unix_timestamp());
    }
    if let Some(d) = parse_ymd(s) {
        return Some(d);
    }
    if let Some(rest) = s.strip_prefix("D:") {
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if digits.len() >= 8 {
            let num = |r: std::ops::Range<usize>| digits.get(r).and_then(|x| x.parse::<u32>().ok());
            let date = Date::from_calendar_date(
                num(0..4)? as i32,
                time::Month::try_from(num(4..6)? as u8).ok()?,
                num(6..8)? as u8,
            )
            .ok()?;
            let time = Time::from_hms(
                num(8..10).unwrap_or(0) as u8,
                num(10..12).unwrap_or(0) as u8,
                num(12..14).unwrap_or(0) as u8,
            )
            .ok()?;
            return Some(
                PrimitiveDateTime::new(date, time)
                    .assume_utc()
                    .unix_timestamp(),
            );
        }
    }
    if let Some(t) = parse_month_day_year(s) {
        return Some(t);
    }
    let secs = s.split('.').next()?;
    if secs.len() >= 9 && secs.chars().all(|c| c.is_ascii_digit()) {
        return secs.parse().ok();
    }
    None
}

fn parse_ymd(s: &str) -> Option<i64> {
    let mut parts = s.get(..10)?.split('-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if s.len() > 10 && !s[10..].starts_with([' ', 'T']) {
        return None;
    }
    let date = Date::from_calendar_date(
        y.parse().ok()?,
        time::Month::try_from(m.parse::<u8>().ok()?).ok()?,
        d.parse().ok()?,
    )
    .ok()?;
    Some(date.midnight().assume_utc().unix_timestamp())
}

/// `Mar 03, 2025` / `March 3, 2025` (Confluence page metadata).
fn parse_month_day_year(s: &str) -> Option<i64> {
    let cleaned = s.replace(',', " ");
    let mut it = cleaned.split_whitespace();
    let month = it.next()?.to_ascii_lowercase();
    let day: u8 = it.next()?.parse().ok()?;
    let year: i32 = it.next()?.parse().ok()?;
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let idx = MONTHS.iter().position(|m| month.starts_with(m))?;
    let date =
        Date::from_calendar_date(year, time::Month::try_from(idx as u8 + 1).ok()?, day).ok()?;
    Some(date.midnight().assume_utc().unix_timestamp())
}

/// Front matter found at the top of Markdown and plain-text files.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct FrontMatter {
    pub title: Option<String>,
    pub last_modified: Option<i64>,
    pub tags: Vec<String>,
}

/// Splits a leading `---\n<yaml>\n---` block off `text`. A block that is not a YAML mapping is
/// an error (the file is reported, not silently half-parsed).
pub(crate) fn split_front_matter(text: &str) -> Result<(FrontMatter, &str), String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let Some(rest) = text
        .strip_prefix("---\n")
        .or_else(|| text.strip_prefix("---\r\n"))
    else {
        return Ok((FrontMatter::default(), text));
    };
    let mut offset = 0;
    for line in rest.split_inclusive('\n') {
        if line.trim_end() == "---" {
            let yaml = &rest[..offset];
            let body = &rest[offset + line.len()..];
            let value: serde_yaml::Value =
                serde_yaml::from_str(yaml).map_err(|e| format!("front matter: {e}"))?;
            let map = match value {
                serde_yaml::Value::Mapping(m) => m,
                serde_yaml::Value::Null => Default::default(),
                _ => return Err("front matter is not a YAML mapping".into()),
            };
            let get = |k: &str| map.get(serde_yaml::Value::String(k.into()));
            let as_string = |v: &serde_yaml::Value| match v {
                serde_yaml::Value::String(s) => Some(s.clone()),
                serde_yaml::Value::Number(n) => Some(n.to_string()),
                _ => None,
            };
            let mut fm = FrontMatter {
                title: get("title").and_then(as_string),
                ..Default::default()
            };
            for key in ["last_modified", "lastModified", "updated", "date"] {
                if let Some(v) = get(key).and_then(as_string) {
                    fm.last_modified =
                        Some(parse_timestamp(&v).ok_or_else(|| {
                            format!("front matter: {key}: unparsable date {v:?}")
                        })?);
                    break;
                }
            }
            match get("tags") {
                Some(serde_yaml::Value::Sequence(items)) => {
                    fm.tags = items.iter().filter_map(as_string).collect();
                }
                Some(v) => {
                    if let Some(s) = as_string(v) {
                        fm.tags = s
                            .split(',')
                            .map(|t| t.trim().to_string())
                            .filter(|t| !t.is_empty())
                            .collect();
                    }
                }
                None => {}
            }
            return Ok((fm, body));
        }
        offset += line.len();
    }
    Err("front matter: opening `---` without a closing `---`".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_export_timestamps() {
        let day = 1_740_960_000; // 2025-03-03T00:00:00Z
        assert_eq!(parse_timestamp("2025-03-03"), Some(day));
        assert_eq!(parse_timestamp("2025-03-03T00:00:00Z"), Some(day));
        assert_eq!(parse_timestamp("Mar 03, 2025"), Some(day));
        assert_eq!(parse_timestamp("March 3, 2025"), Some(day));
        assert_eq!(parse_timestamp("D:20250303000000Z"), Some(day));
        assert_eq!(parse_timestamp("1740960000.000200"), Some(day));
        assert_eq!(parse_timestamp("soon"), None);
    }

    #[test]
    fn front_matter_is_split_and_bad_yaml_is_an_error() {
        let (fm, body) =
            split_front_matter("---\ntitle: Refunds\nlast_modified: 2025-03-03\ntags: [billing, refund]\n---\n# Body\n")
                .unwrap();
        assert_eq!(fm.title.as_deref(), Some("Refunds"));
        assert_eq!(fm.tags, ["billing", "refund"]);
        assert_eq!(body, "# Body\n");
        assert!(split_front_matter("---\ntitle: [unclosed\n---\n").is_err());
        assert!(split_front_matter("---\ntitle: x\n").is_err());
        assert_eq!(
            split_front_matter("no front matter").unwrap().1,
            "no front matter"
        );
    }

    #[test]
    fn slugs_are_stable() {
        assert_eq!(slug("Refunds & Credits"), "refunds-credits");
        assert_eq!(slug("  "), "section");
    }
}
