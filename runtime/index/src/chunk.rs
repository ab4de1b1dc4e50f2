//! Chunking: documents -> retrievable chunks (+ the sections they expand to).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::document::{Document, breadcrumb, slug};
use crate::spec::ChunkingSpec;
use crate::tokens::{self, Word};

/// The unit of retrieval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chunk {
    /// Stable id: `<doc_id>@<n>` (n = position in the document). Stable across rebuilds of an
    /// unchanged document, so hit counts can be kept per chunk.
    pub chunk_id: String,
    /// Document id (`<source>/<path or item>`).
    pub doc_id: String,
    /// Section the chunk belongs to (`<doc_id>#<heading slug>`); for fixed chunking, the section
    /// in which the chunk starts.
    pub section_id: String,
    /// Source name.
    pub source: String,
    /// Document title.
    pub title: String,
    /// Breadcrumb path, title (or Confluence ancestors) first.
    pub section_path: Vec<String>,
    /// Chunk text, without the breadcrumb.
    pub text: String,
    /// Document tags.
    pub tags: Vec<String>,
    /// Document's last modification (Unix seconds).
    pub last_modified: Option<i64>,
    /// Freshness class of the source.
    pub freshness_class: String,
    /// Estimated tokens of [`Chunk::embedding_text`].
    pub tokens: usize,
}

impl Chunk {
    /// `[Doc > Section > Subsection]`.
    pub fn breadcrumb(&self) -> String {
        breadcrumb(&self.section_path)
    }

    /// What the encoder and the cross-encoder see: breadcrumb prefix + text.
    pub fn embedding_text(&self) -> String {
        format!("{} {}", self.breadcrumb(), self.text)
    }

    /// Headings below the title (the BM25 `headings` field).
    pub fn headings(&self) -> &[String] {
        let title_at = self
            .section_path
            .iter()
            .position(|p| *p == self.title)
            .map_or(0, |i| i + 1);
        &self.section_path[title_at.min(self.section_path.len())..]
    }
}

/// A whole section, for expanding a retrieved paragraph chunk into its context at generation time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SectionRecord {
    /// `<doc_id>#<heading slug>`, unique within the generation.
    pub section_id: String,
    /// Document id.
    pub doc_id: String,
    /// Breadcrumb path.
    pub path: Vec<String>,
    /// The section's paragraphs joined by blank lines.
    pub text: String,
}

/// Cuts one document into chunks and section records.
pub fn chunk_document(
    doc: &Document,
    freshness_class: &str,
    spec: &ChunkingSpec,
) -> (Vec<Chunk>, Vec<SectionRecord>) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let sections: Vec<SectionRecord> = doc
        .sections
        .iter()
        .map(|s| {
            let base = slug(s.path.last().map(String::as_str).unwrap_or(&doc.title));
            let n = seen.entry(base.clone()).or_insert(0);
            *n += 1;
            let anchor = if *n == 1 { base } else { format!("{base}-{n}") };
            SectionRecord {
                section_id: format!("{}#{anchor}", doc.doc_id),
                doc_id: doc.doc_id.clone(),
                path: s.path.clone(),
                text: s.blocks.join("\n\n"),
            }
        })
        .collect();

    let make = |n: usize, section: usize, text: String| {
        let rec = &sections[section];
        let tokens = tokens::count(&breadcrumb(&rec.path)) + tokens::count(&text);
        Chunk {
            chunk_id: format!("{}@{n}", doc.doc_id),
            doc_id: doc.doc_id.clone(),
            section_id: rec.section_id.clone(),
            source: doc.source.clone(),
            title: doc.title.clone(),
            section_path: rec.path.clone(),
            text,
            tags: doc.tags.clone(),
            last_modified: doc.last_modified,
            freshness_class: freshness_class.to_string(),
            tokens,
        }
    };

    let mut chunks = Vec::new();
    match *spec {
        ChunkingSpec::Hierarchical {
            max_tokens,
            overlap,
        } => {
            for (si, section) in doc.sections.iter().enumerate() {
                let budget = budget(max_tokens, &sections[si].path);
                let mut pieces = Vec::new();
                for block in &section.blocks {
                    if tokens::count(block) <= budget {
                        pieces.push(block.clone());
                    } else {
                        pieces.extend(split_block(block, budget, overlap));
                    }
                }
                let mut current: Vec<String> = Vec::new();
                let mut used = 0;
                for piece in pieces {
                    let t = tokens::count(&piece);
                    if !current.is_empty() && used + t > budget {
                        chunks.push(make(chunks.len(), si, current.join("\n\n")));
                        current.clear();
                        used = 0;
                    }
                    used += t;
                    current.push(piece);
                }
                if !current.is_empty() {
                    chunks.push(make(chunks.len(), si, current.join("\n\n")));
                }
            }
        }
        ChunkingSpec::Fixed {
            max_tokens,
            overlap,
        } => {
            // One text for the whole document; remember where each section starts.
            let mut text = String::new();
            let mut starts = Vec::new();
            for (si, section) in doc.sections.iter().enumerate() {
                for block in &section.blocks {
                    if !text.is_empty() {
                        text.push_str("\n\n");
                    }
                    starts.push((text.len(), si));
                    text.push_str(block);
                }
            }
            let longest_path = sections
                .iter()
                .map(|s| s.path.as_slice())
                .max_by_key(|p| tokens::count(&breadcrumb(p)));
            let budget = budget(max_tokens, longest_path.unwrap_or(&[]));
            let words = tokens::words(&text);
            for (a, b) in windows(&words, budget, overlap) {
                let start = words[a].start;
                let section = starts
                    .iter()
                    .rev()
                    .find(|(pos, _)| *pos <= start)
                    .map_or(0, |(_, s)| *s);
                chunks.push(make(
                    chunks.len(),
                    section,
                    text[start..words[b - 1].end].to_string(),
                ));
            }
        }
    }
    (chunks, sections)
}

/// Tokens left for text once the breadcrumb is paid for; never less than half the chunk.
fn budget(max_tokens: usize, path: &[String]) -> usize {
    max_tokens
        .saturating_sub(tokens::count(&breadcrumb(path)) + 1)
        .max(max_tokens / 2)
}

/// Splits an oversized block: at line boundaries first (table rows and list items stay whole),
/// and a line that alone exceeds the budget into overlapping word windows.
fn split_block(block: &str, budget: usize, overlap: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    let mut used = 0;
    for line in block.lines() {
        let t = tokens::count(line);
        if t > budget {
            if !current.is_empty() {
                out.push(current.join("\n"));
                current.clear();
                used = 0;
            }
            let words = tokens::words(line);
            out.extend(
                windows(&words, budget, overlap)
                    .into_iter()
                    .map(|(a, b)| line[words[a].start..words[b - 1].end].to_string()),
            );
            continue;
        }
        if !current.is_empty() && used + t > budget {
            out.push(current.join("\n"));
            current.clear();
            used = 0;
        }
        used += t;
        current.push(line);
    }
    if !current.is_empty() {
        out.push(current.join("\n"));
    }
    out
}

/// Word-index windows `[a, b)` of at most `budget` tokens (a single longer word gets a window of
/// its own), consecutive windows sharing up to `overlap` tokens.
fn windows(words: &[Word], budget: usize, overlap: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut a = 0;
    while a < words.len() {
        let mut b = a;
        let mut used = 0;
        while b < words.len() && (b == a || used + words[b].tokens <= budget) {
            used += words[b].tokens;
            b += 1;
        }
        out.push((a, b));
        if b == words.len() {
            break;
        }
        // Step back over at most `overlap` tokens, always moving forward by at least one word.
        let mut next = b;
        let mut shared = 0;
        while next > a + 1 && shared + words[next - 1].tokens <= overlap {
            next -= 1;
            shared += words[next].tokens;
        }
        a = next;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::Section;

    fn doc(sections: Vec<(Vec<&str>, Vec<String>)>) -> Document {
        Document {
            doc_id: "kb/guide.md".into(),
            title: "Guide".into(),
            source: "kb".into(),
            last_modified: Some(10),
            tags: vec!["t".into()],
            sections: sections
                .into_iter()
                .map(|(p, blocks)| Section {
                    path: p.into_iter().map(String::from).collect(),
                    blocks,
                })
                .collect(),
        }
    }

    fn words(n: usize, prefix: &str) -> String {
        (0..n)
            .map(|i| format!("{prefix}{i}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn hierarchical_chunks_stay_in_their_section_and_under_budget() {
        let d = doc(vec![
            (vec!["Guide"], vec!["Short intro.".into()]),
            (
                vec!["Guide", "Refunds"],
                vec![words(150, "a"), words(150, "b"), "Tail.".into()],
            ),
            (
                vec!["Guide", "Refunds"],
                vec!["Second section with same heading.".into()],
            ),
        ]);
        let (chunks, sections) = chunk_document(
            &d,
            "policy",
            &ChunkingSpec::Hierarchical {
                max_tokens: 200,
                overlap: 20,
            },
        );
        assert_eq!(
            sections
                .iter()
                .map(|s| s.section_id.as_str())
                .collect::<Vec<_>>(),
            [
                "kb/guide.md#guide",
                "kb/guide.md#refunds",
                "kb/guide.md#refunds-2"
            ]
        );
        assert!(
            chunks.iter().all(|c| c.tokens <= 200),
            "{:?}",
            chunks.iter().map(|c| c.tokens).collect::<Vec<_>>()
        );
        // Paragraphs are not merged across sections, and "b" paragraph starts its own chunk.
        assert_eq!(chunks[0].text, "Short intro.");
        assert!(chunks[1].text.starts_with("a0 ") && !chunks[1].text.contains("b0"));
        assert!(chunks.iter().any(|c| c.text.starts_with("b0 ")));
        assert_eq!(chunks.last().unwrap().section_id, "kb/guide.md#refunds-2");
        assert_eq!(chunks[1].embedding_text().split(' ').next(), Some("[Guide"));
        assert_eq!(chunks[1].headings(), ["Refunds"]);
        let ids: Vec<&str> = chunks.iter().map(|c| c.chunk_id.as_str()).collect();
        assert_eq!(ids[0], "kb/guide.md@0");
        assert_eq!(
            sections[1].text.matches("\n\n").count(),
            2,
            "section text keeps all paragraphs"
        );
    }

    #[test]
    fn oversized_table_is_split_between_rows() {
        let rows: Vec<String> = (0..60)
            .map(|i| format!("Plan{i} | ${i}0 | {i} seats"))
            .collect();
        let d = doc(vec![(vec!["Guide", "Prices"], vec![rows.join("\n")])]);
        let (chunks, _) = chunk_document(
            &d,
            "policy",
            &ChunkingSpec::Hierarchical {
                max_tokens: 64,
                overlap: 8,
            },
        );
        assert!(chunks.len() > 3);
        for c in &chunks {
            for line in c.text.lines() {
                assert!(rows.contains(&line.to_string()), "row cut: {line:?}");
            }
        }
    }

    #[test]
    fn fixed_windows_overlap_and_cover_everything() {
        let d = doc(vec![
            (vec!["Guide"], vec![words(100, "w")]),
            (vec!["Guide", "Next"], vec![words(100, "x")]),
        ]);
        let (chunks, _) = chunk_document(
            &d,
            "policy",
            &ChunkingSpec::Fixed {
                max_tokens: 64,
                overlap: 16,
            },
        );
        assert!(chunks.len() >= 4);
        for pair in chunks.windows(2) {
            let last_word = pair[0].text.split_whitespace().last().unwrap();
            assert!(
                pair[1].text.split_whitespace().any(|w| w == last_word),
                "no overlap between {pair:?}"
            );
        }
        assert!(chunks.iter().all(|c| c.tokens <= 64));
        assert!(chunks.last().unwrap().text.ends_with("x99"));
        assert_eq!(chunks.last().unwrap().section_id, "kb/guide.md#next");
    }
}
