//! Per-format parsers: bytes in, [`Document`]s out. A parser error concerns one file and is
//! reported by the ingester; deliberate skips (spam tickets, unresolved threads) are not errors.

mod html;
mod markdown;
mod pdf;
pub mod slack;
mod text;
pub mod zendesk;

use crate::document::Document;
use crate::spec::SourceFormat;

pub use zendesk::MIN_RESOLUTION_WORDS;

/// One file of a source.
#[derive(Debug, Clone)]
pub struct InputFile {
    /// Path relative to the source root, `/`-separated.
    pub rel_path: String,
    /// Raw content.
    pub bytes: Vec<u8>,
    /// File modification time (Unix seconds), used when the content carries no date.
    pub mtime: Option<i64>,
}

impl InputFile {
    fn text(&self) -> Result<&str, String> {
        std::str::from_utf8(&self.bytes).map_err(|e| format!("not valid UTF-8 ({e})"))
    }

    /// File name without directories and extension, for fallback titles.
    fn stem(&self) -> &str {
        let name = self.rel_path.rsplit('/').next().unwrap_or(&self.rel_path);
        name.rsplit_once('.').map_or(name, |(stem, _)| stem)
    }

    fn fallback_title(&self) -> String {
        let words: Vec<String> = self
            .stem()
            .split(['-', '_', ' '])
            .filter(|w| !w.is_empty())
            .map(|w| {
                let mut c = w.chars();
                c.next()
                    .map(|f| f.to_uppercase().chain(c).collect())
                    .unwrap_or_default()
            })
            .collect();
        if words.is_empty() {
            self.rel_path.clone()
        } else {
            words.join(" ")
        }
    }
}

/// What a parser yields: documents and deliberately skipped items (item, reason).
#[derive(Debug, Default)]
pub struct Parsed {
    /// Documents to index.
    pub documents: Vec<Document>,
    /// Items left out on purpose, with the reason (`spam`, `unresolved`, ...).
    pub skipped: Vec<(String, String)>,
}

impl Parsed {
    fn one(document: Document) -> Self {
        Parsed {
            documents: vec![document],
            skipped: Vec::new(),
        }
    }
}

/// Parses one file of a per-file format. `source` prefixes document ids.
///
/// Slack exports are parsed as a whole with [`parse_slack_export`] (threads span day files).
pub fn parse_file(format: SourceFormat, source: &str, file: &InputFile) -> Result<Parsed, String> {
    let doc_id = format!("{source}/{}", file.rel_path);
    let parsed = match format {
        SourceFormat::Markdown => Parsed::one(markdown::parse(source, doc_id, file)?),
        SourceFormat::Html => Parsed::one(html::parse(source, doc_id, file, html::Flavor::Plain)?),
        SourceFormat::ConfluenceHtml => {
            Parsed::one(html::parse(source, doc_id, file, html::Flavor::Confluence)?)
        }
        SourceFormat::ZendeskTickets => zendesk::parse(source, file)?,
        SourceFormat::SlackExport => return Err("Slack exports are parsed per source".into()),
        SourceFormat::Pdf => Parsed::one(pdf::parse(source, doc_id, file)?),
        SourceFormat::PlainText => Parsed::one(text::parse(source, doc_id, file)?),
    };
    let mut parsed = parsed;
    parsed.documents = parsed
        .documents
        .into_iter()
        .map(Document::normalise)
        .collect();
    Ok(parsed)
}

/// Parses a whole Slack export, indexing the threads marked with one of `resolved_tags`
/// (reactions or `[tag]` prefixes; see [`slack::DEFAULT_RESOLVED_TAGS`]). Returns the documents
/// plus per-file errors (file, reason).
pub fn parse_slack_export(
    source: &str,
    files: &[InputFile],
    resolved_tags: &[String],
) -> (Parsed, Vec<(String, String)>) {
    let (mut parsed, errors) = slack::parse(source, files, resolved_tags);
    parsed.documents = parsed
        .documents
        .into_iter()
        .map(Document::normalise)
        .collect();
    (parsed, errors)
}
