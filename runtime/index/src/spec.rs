//! The index spec: what to ingest and how to chunk it. The runtime converts a KnowledgeBase's spec
//! into this type; HTTP and ConfigMap sources are materialised to files (or inline files) first.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Largest chunk the encoder accepts (MiniLM: 256 WordPiece tokens including `[CLS]`/`[SEP]`).
pub const ENCODER_MAX_TOKENS: usize = 256;

/// Everything needed to build one index generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexSpec {
    /// Knowledge sources, each parsed with one format.
    pub sources: Vec<SourceSpec>,
    /// Freshness classes by name; sources refer to one by name.
    #[serde(default = "default_freshness_classes")]
    pub freshness_classes: BTreeMap<String, FreshnessClass>,
    /// How documents are cut into retrievable chunks.
    #[serde(default)]
    pub chunking: ChunkingSpec,
}

/// One source of knowledge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceSpec {
    /// Unique name; prefixes the ids of the documents it yields (`<name>/<file or item>`).
    pub name: String,
    /// How its files are parsed.
    pub format: SourceFormat,
    /// Name of a freshness class of the spec.
    pub freshness_class: String,
    /// Where its content is.
    pub location: SourceLocation,
    /// Slack exports only: reactions (and `[tag]` message prefixes) that mark a thread as
    /// answered; `None`: [`crate::parse::slack::DEFAULT_RESOLVED_TAGS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_tags: Option<Vec<String>>,
}

/// The formats the ingester understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum SourceFormat {
    /// CommonMark with optional YAML front matter (`title`, `last_modified`, `tags`).
    Markdown,
    /// HTML; the heading hierarchy becomes the breadcrumb.
    Html,
    /// Confluence "HTML export" pages: page chrome is stripped, the page breadcrumbs become the
    /// breadcrumb prefix, `last modified on` is read from the page metadata.
    ConfluenceHtml,
    /// Zendesk ticket export JSON (`{"tickets": [...], "users": [...]}`).
    ZendeskTickets,
    /// Slack workspace export (`channels.json`, `users.json`, `<channel>/<day>.json`).
    SlackExport,
    /// PDF (text layer); tables are kept row by row.
    Pdf,
    /// Plain text with optional YAML front matter.
    PlainText,
}

impl SourceFormat {
    /// File extensions (lower case) picked up when the source location is a directory.
    pub fn extensions(self) -> &'static [&'static str] {
        match self {
            SourceFormat::Markdown => &["md", "markdown"],
            SourceFormat::Html | SourceFormat::ConfluenceHtml => &["html", "htm"],
            SourceFormat::ZendeskTickets | SourceFormat::SlackExport => &["json"],
            SourceFormat::Pdf => &["pdf"],
            SourceFormat::PlainText => &["txt", "text"],
        }
    }

    /// Stable lower-case name, used in reports and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceFormat::Markdown => "markdown",
            SourceFormat::Html => "html",
            SourceFormat::ConfluenceHtml => "confluence_html",
            SourceFormat::ZendeskTickets => "zendesk_tickets",
            SourceFormat::SlackExport => "slack_export",
            SourceFormat::Pdf => "pdf",
            SourceFormat::PlainText => "plain_text",
        }
    }
}

/// Where a source's content lives. Serialised untagged: `{path: ...}` or `{files: [...]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SourceLocation {
    /// Content given in the spec itself (or materialised from a ConfigMap / HTTP fetch).
    Inline {
        /// Files; `name` is the file's path relative to the source.
        files: Vec<InlineFile>,
    },
    /// A local file, or a directory walked recursively (files with the format's extensions;
    /// hidden entries skipped).
    Path {
        /// File or directory.
        path: PathBuf,
    },
}

/// One inline file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InlineFile {
    /// Relative path (becomes part of the document id).
    pub name: String,
    /// The file's text.
    pub content: String,
}

/// A freshness class: how fast retrieval scores of its documents decay with age, and when they
/// are due for review.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FreshnessClass {
    /// Half-life in days (`score * 0.5^(age / half_life)`); `None` = evergreen, no decay.
    pub half_life_days: Option<f64>,
    /// A document not modified for this many days is stale (the KnowledgeBase's `staleAfter`);
    /// `None` = never. Not part of any source digest: changing it re-publishes the same chunks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_after_days: Option<f64>,
}

impl FreshnessClass {
    /// Whether a document last modified at `last_modified` (Unix seconds) is stale at `now`.
    /// Undated documents are never stale: their age is unknown.
    pub fn is_stale(&self, last_modified: Option<i64>, now: i64) -> bool {
        match (self.stale_after_days, last_modified) {
            (Some(days), Some(modified)) => (now - modified) as f64 > days * 86_400.0,
            _ => false,
        }
    }

    /// Decay factor in (0, 1] for a document of `age_secs` seconds.
    pub fn decay(&self, age_secs: f64) -> f32 {
        match self.half_life_days {
            Some(days) if days > 0.0 => {
                let age_days = age_secs.max(0.0) / 86_400.0;
                0.5f64.powf(age_days / days) as f32
            }
            _ => 1.0,
        }
    }
}

/// Default classes, as the KnowledgeBase's built-ins: `policy` (90-day half-life, the seed
/// essay's figure; stale after a year untouched), `standard` (365 days; stale after 18 months),
/// `ephemeral` (30 days, for chat-derived knowledge; stale after 90 days) and `evergreen` (no
/// decay, never stale).
pub fn default_freshness_classes() -> BTreeMap<String, FreshnessClass> {
    [
        ("policy", Some(90.0), Some(365.0)),
        ("standard", Some(365.0), Some(547.5)),
        ("ephemeral", Some(30.0), Some(90.0)),
        ("evergreen", None, None),
    ]
    .into_iter()
    .map(|(name, half_life_days, stale_after_days)| {
        (
            name.to_string(),
            FreshnessClass {
                half_life_days,
                stale_after_days,
            },
        )
    })
    .collect()
}

/// How documents are cut into chunks. Token counts use the approximation of [`crate::tokens`].
/// Serialised as `{strategy: Hierarchical, maxTokens: 200, overlap: 32}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "strategy")]
pub enum ChunkingSpec {
    /// Windows of `max_tokens` over the whole document, consecutive windows sharing `overlap`
    /// tokens. Fast and predictable; ignores structure.
    #[serde(rename_all = "camelCase")]
    Fixed {
        /// Tokens per chunk, breadcrumb included.
        max_tokens: usize,
        /// Tokens shared by consecutive chunks.
        overlap: usize,
    },
    /// Heading-aware: paragraphs of one section are packed into chunks of at most `max_tokens`
    /// (never crossing a section boundary); a paragraph longer than that is split at line, then
    /// word boundaries with `overlap`. Each chunk knows its section, whose full text is kept for
    /// expansion at generation time.
    #[serde(rename_all = "camelCase")]
    Hierarchical {
        /// Tokens per chunk, breadcrumb included.
        max_tokens: usize,
        /// Overlap used when a single paragraph must be split.
        overlap: usize,
    },
}

impl Default for ChunkingSpec {
    fn default() -> Self {
        ChunkingSpec::Hierarchical {
            max_tokens: 200,
            overlap: 32,
        }
    }
}

impl ChunkingSpec {
    fn limits(&self) -> (usize, usize) {
        match *self {
            ChunkingSpec::Fixed {
                max_tokens,
                overlap,
            }
            | ChunkingSpec::Hierarchical {
                max_tokens,
                overlap,
            } => (max_tokens, overlap),
        }
    }
}

/// BM25 field weights. Defaults follow title > headings > body > tags.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FieldBoosts {
    /// Document title.
    pub title: f32,
    /// Section headings (breadcrumb below the title).
    pub headings: f32,
    /// Chunk text.
    pub body: f32,
    /// Tags / keywords.
    pub tags: f32,
}

impl Default for FieldBoosts {
    fn default() -> Self {
        FieldBoosts {
            title: 2.5,
            headings: 1.8,
            body: 1.0,
            tags: 0.6,
        }
    }
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Error {
    Error::InvalidSpec {
        field: field.into(),
        message: message.into(),
    }
}

impl IndexSpec {
    /// Checks what can be checked without reading sources; the error names the field.
    pub fn validate(&self) -> Result<()> {
        if self.sources.is_empty() {
            return Err(invalid("sources", "at least one source is required"));
        }
        let mut names = BTreeSet::new();
        for (i, source) in self.sources.iter().enumerate() {
            let field = format!("sources[{i}]");
            let name_ok = !source.name.is_empty()
                && source.name.len() <= 63
                && source
                    .name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
            if !name_ok {
                return Err(invalid(
                    format!("{field}.name"),
                    format!("{:?} must be 1-63 characters of [a-z0-9-_]", source.name),
                ));
            }
            if !names.insert(source.name.as_str()) {
                return Err(invalid(
                    format!("{field}.name"),
                    format!("duplicate source name {:?}", source.name),
                ));
            }
            if !self.freshness_classes.contains_key(&source.freshness_class) {
                return Err(invalid(
                    format!("{field}.freshnessClass"),
                    format!(
                        "unknown class {:?} (defined: {})",
                        source.freshness_class,
                        self.freshness_classes
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            if let SourceLocation::Inline { files } = &source.location {
                for (j, file) in files.iter().enumerate() {
                    if file.name.is_empty() || file.name.split('/').any(|part| part == "..") {
                        return Err(invalid(
                            format!("{field}.location.inline.files[{j}].name"),
                            "must be a non-empty relative path without `..`",
                        ));
                    }
                }
            }
        }
        for (name, class) in &self.freshness_classes {
            if let Some(days) = class.half_life_days
                && !(days.is_finite() && days > 0.0)
            {
                return Err(invalid(
                    format!("freshnessClasses.{name}.halfLifeDays"),
                    "must be a positive number of days (omit it for evergreen)",
                ));
            }
            if let Some(days) = class.stale_after_days
                && !(days.is_finite() && days > 0.0)
            {
                return Err(invalid(
                    format!("freshnessClasses.{name}.staleAfterDays"),
                    "must be a positive number of days (omit it: never stale)",
                ));
            }
        }
        let (max_tokens, overlap) = self.chunking.limits();
        if !(32..=ENCODER_MAX_TOKENS - 2).contains(&max_tokens) {
            return Err(invalid(
                "chunking.maxTokens",
                format!(
                    "{max_tokens} must be within 32..={} (encoder limit)",
                    ENCODER_MAX_TOKENS - 2
                ),
            ));
        }
        if overlap * 2 > max_tokens {
            return Err(invalid(
                "chunking.overlap",
                format!("{overlap} must be at most half of maxTokens"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> IndexSpec {
        IndexSpec {
            sources: vec![SourceSpec {
                name: "docs".into(),
                format: SourceFormat::Markdown,
                freshness_class: "policy".into(),
                location: SourceLocation::Inline { files: vec![] },
                resolved_tags: None,
            }],
            freshness_classes: default_freshness_classes(),
            chunking: ChunkingSpec::default(),
        }
    }

    #[test]
    fn validation_names_the_field() {
        assert!(spec().validate().is_ok());
        let mut s = spec();
        s.sources[0].freshness_class = "weekly".into();
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("sources[0].freshnessClass"), "{err}");
        let mut s = spec();
        s.chunking = ChunkingSpec::Fixed {
            max_tokens: 512,
            overlap: 128,
        };
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("chunking.maxTokens")
        );
        let mut s = spec();
        s.sources.push(s.sources[0].clone());
        assert!(s.validate().unwrap_err().to_string().contains("duplicate"));
    }

    #[test]
    fn decay_halves_per_half_life_and_evergreen_never_decays() {
        let policy = FreshnessClass {
            half_life_days: Some(90.0),
            stale_after_days: Some(365.0),
        };
        assert!((policy.decay(90.0 * 86_400.0) - 0.5).abs() < 1e-6);
        assert!((policy.decay(180.0 * 86_400.0) - 0.25).abs() < 1e-6);
        assert_eq!(policy.decay(-5.0), 1.0, "future timestamps do not boost");
        let evergreen = FreshnessClass {
            half_life_days: None,
            stale_after_days: None,
        };
        assert_eq!(evergreen.decay(1e12), 1.0);
        // Stale strictly after staleAfter; undated and evergreen documents never.
        let day = 86_400;
        assert!(!policy.is_stale(Some(0), 365 * day));
        assert!(policy.is_stale(Some(0), 365 * day + 1));
        assert!(!policy.is_stale(None, i64::MAX / 2));
        assert!(!evergreen.is_stale(Some(0), i64::MAX / 2));
    }

    #[test]
    fn spec_round_trips_through_yaml() {
        let yaml = r#"
sources:
  - name: help-center
    format: Markdown
    freshnessClass: policy
    location: { path: examples/kb/markdown }
  - name: inline
    format: PlainText
    freshnessClass: evergreen
    location: { files: [ { name: a.txt, content: hello } ] }
chunking: { strategy: Fixed, maxTokens: 128, overlap: 16 }
"#;
        let parsed: IndexSpec = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(
            parsed.chunking,
            ChunkingSpec::Fixed {
                max_tokens: 128,
                overlap: 16
            }
        );
        assert_eq!(
            parsed.sources[0].location,
            SourceLocation::Path {
                path: "examples/kb/markdown".into()
            }
        );
        assert!(
            matches!(&parsed.sources[1].location, SourceLocation::Inline { files } if files[0].content == "hello")
        );
        let json = serde_json::to_string(&parsed).unwrap();
        assert_eq!(serde_json::from_str::<IndexSpec>(&json).unwrap(), parsed);
        assert!(parsed.freshness_classes.contains_key("evergreen"));
        parsed.validate().unwrap();
    }
}
