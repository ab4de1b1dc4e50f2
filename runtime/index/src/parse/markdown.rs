//! Markdown: CommonMark (+ tables) with YAML front matter; the heading tree becomes section paths.

use pulldown_cmark::{Event, HeadingLevel, Options, Parser, Tag, TagEnd};

use super::InputFile;
use crate::document::{Document, Section, split_front_matter};

pub(super) fn parse(source: &str, doc_id: String, file: &InputFile) -> Result<Document, String> {
    let (fm, body) = split_front_matter(file.text()?)?;
    let mut b = SectionBuilder::new(fm.title);
    let mut buf = String::new();
    let mut heading: Option<(usize, String)> = None;
    // Lines of the list or table being read; flushed as one block when it ends.
    let mut group: Vec<String> = Vec::new();
    let mut list_depth = 0usize;
    let mut cells: Vec<String> = Vec::new();
    let mut in_table = false;

    for event in Parser::new_ext(body, Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH) {
        match event {
            Event::Start(Tag::Heading { level, .. }) => {
                flush(&mut buf, &mut b);
                heading = Some((heading_depth(level), String::new()));
            }
            Event::End(TagEnd::Heading(_)) => {
                if let Some((level, text)) = heading.take() {
                    b.heading(level, text.trim().to_string());
                }
            }
            Event::Start(Tag::List(_)) => {
                if list_depth > 0 && !buf.trim().is_empty() {
                    group.push(format!("{}- {}", "  ".repeat(list_depth - 1), buf.trim()));
                    buf.clear();
                } else {
                    flush(&mut buf, &mut b);
                }
                list_depth += 1;
            }
            Event::End(TagEnd::List(_)) => {
                list_depth = list_depth.saturating_sub(1);
                if list_depth == 0 {
                    b.block(group.join("\n"));
                    group.clear();
                }
            }
            Event::End(TagEnd::Item) => {
                if !buf.trim().is_empty() {
                    group.push(format!(
                        "{}- {}",
                        "  ".repeat(list_depth.saturating_sub(1)),
                        buf.trim()
                    ));
                }
                buf.clear();
            }
            Event::Start(Tag::Table(_)) => {
                flush(&mut buf, &mut b);
                in_table = true;
            }
            Event::End(TagEnd::TableCell) => {
                cells.push(buf.trim().to_string());
                buf.clear();
            }
            Event::End(TagEnd::TableHead | TagEnd::TableRow) => {
                group.push(cells.join(" | "));
                cells.clear();
            }
            Event::End(TagEnd::Table) => {
                in_table = false;
                b.block(group.join("\n"));
                group.clear();
            }
            Event::End(TagEnd::Paragraph | TagEnd::CodeBlock | TagEnd::BlockQuote(_)) => {
                if list_depth == 0 && !in_table {
                    flush(&mut buf, &mut b);
                } else {
                    buf.push(' ');
                }
            }
            Event::Text(t) | Event::Code(t) | Event::InlineHtml(t) => match heading.as_mut() {
                Some((_, h)) => h.push_str(&t),
                None => buf.push_str(&t),
            },
            Event::SoftBreak | Event::HardBreak => match heading.as_mut() {
                Some((_, h)) => h.push(' '),
                None => buf.push('\n'),
            },
            Event::Html(t) => {
                // Raw HTML blocks (comments, badges) carry no retrievable text worth keeping.
                let _ = t;
            }
            _ => {}
        }
    }
    flush(&mut buf, &mut b);
    Ok(b.finish(doc_id, source, file, fm.last_modified, fm.tags))
}

fn heading_depth(level: HeadingLevel) -> usize {
    match level {
        HeadingLevel::H1 => 1,
        HeadingLevel::H2 => 2,
        HeadingLevel::H3 => 3,
        HeadingLevel::H4 => 4,
        HeadingLevel::H5 => 5,
        HeadingLevel::H6 => 6,
    }
}

fn flush(buf: &mut String, b: &mut SectionBuilder) {
    b.block(std::mem::take(buf));
}

/// Builds sections from a stream of headings and blocks; shared by the Markdown, HTML and text
/// parsers. Paths are kept without the title, which is prepended in [`SectionBuilder::finish`]
/// (the title may only be known once the first H1 has been read).
#[derive(Debug)]
pub(super) struct SectionBuilder {
    title: Option<String>,
    /// Path prefix above the title (Confluence ancestors).
    pub(super) ancestors: Vec<String>,
    stack: Vec<(usize, String)>,
    sections: Vec<Section>,
}

impl SectionBuilder {
    pub(super) fn new(title: Option<String>) -> Self {
        SectionBuilder {
            title,
            ancestors: Vec::new(),
            stack: Vec::new(),
            sections: vec![Section {
                path: Vec::new(),
                blocks: Vec::new(),
            }],
        }
    }

    /// A heading of `level` (1-6). The first H1 is the title unless front matter gave one; an H1
    /// repeating the title opens the root section again.
    pub(super) fn heading(&mut self, level: usize, text: String) {
        if text.is_empty() {
            return;
        }
        if level == 1 {
            match &self.title {
                None => {
                    self.title = Some(text);
                    self.stack.clear();
                    self.open();
                    return;
                }
                Some(t) if t.eq_ignore_ascii_case(&text) => {
                    self.stack.clear();
                    self.open();
                    return;
                }
                _ => {}
            }
        }
        while self.stack.last().is_some_and(|(l, _)| *l >= level) {
            self.stack.pop();
        }
        self.stack.push((level, text));
        self.open();
    }

    fn open(&mut self) {
        let path: Vec<String> = self.stack.iter().map(|(_, t)| t.clone()).collect();
        match self.sections.last_mut() {
            // Reuse an empty section rather than keeping a heading-only one.
            Some(last) if last.blocks.is_empty() => last.path = path,
            _ => self.sections.push(Section {
                path,
                blocks: Vec::new(),
            }),
        }
    }

    pub(super) fn block(&mut self, text: String) {
        if text.trim().is_empty() {
            return;
        }
        if let Some(last) = self.sections.last_mut() {
            last.blocks.push(text);
        }
    }

    pub(super) fn finish(
        self,
        doc_id: String,
        source: &str,
        file: &InputFile,
        last_modified: Option<i64>,
        tags: Vec<String>,
    ) -> Document {
        let title = self
            .title
            .filter(|t| !t.trim().is_empty())
            .unwrap_or_else(|| file.fallback_title());
        let mut prefix = self.ancestors;
        prefix.push(title.clone());
        let sections = self
            .sections
            .into_iter()
            .map(|s| Section {
                path: prefix.iter().cloned().chain(s.path).collect(),
                blocks: s.blocks,
            })
            .collect();
        Document {
            doc_id,
            title,
            source: source.to_string(),
            last_modified: last_modified.or(file.mtime),
            tags,
            sections,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> InputFile {
        InputFile {
            rel_path: "billing/refund-policy.md".into(),
            bytes: text.as_bytes().to_vec(),
            mtime: Some(1),
        }
    }

    #[test]
    fn heading_tree_becomes_section_paths() {
        let md = "---\nlast_modified: 2025-09-01\ntags: [billing]\n---\n# Refund policy\n\nIntro text.\n\n\
                  ## Refund window\n\nYou can ask for a refund within 14 days.\n\n### Annual plans\n\n\
                  Annual plans are prorated.\n\n- first item\n- second item\n\n## Chargebacks\n\n\
                  | Plan | Fee |\n|---|---|\n| Growth | $15 |\n";
        let doc = parse("kb", "kb/billing/refund-policy.md".into(), &file(md))
            .unwrap()
            .normalise();
        assert_eq!(doc.title, "Refund policy");
        assert_eq!(doc.last_modified, Some(1_756_684_800));
        assert_eq!(doc.tags, ["billing"]);
        let paths: Vec<String> = doc.sections.iter().map(|s| s.path.join(" > ")).collect();
        assert_eq!(
            paths,
            [
                "Refund policy",
                "Refund policy > Refund window",
                "Refund policy > Refund window > Annual plans",
                "Refund policy > Chargebacks"
            ]
        );
        assert_eq!(
            doc.sections[2].blocks,
            ["Annual plans are prorated.", "- first item\n- second item"]
        );
        assert_eq!(doc.sections[3].blocks, ["Plan | Fee\nGrowth | $15"]);
    }

    #[test]
    fn title_falls_back_to_file_name_and_mtime() {
        let doc = parse("kb", "kb/x".into(), &file("Just text.")).unwrap();
        assert_eq!(doc.title, "Refund Policy");
        assert_eq!(doc.last_modified, Some(1));
    }
}
