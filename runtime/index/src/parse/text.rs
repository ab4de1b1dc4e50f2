//! Plain text with optional YAML front matter. Paragraphs are separated by blank lines; a line
//! underlined with `===` or `---` is a heading (level 1 or 2), as in setext Markdown.

use super::InputFile;
use super::markdown::SectionBuilder;
use crate::document::{Document, split_front_matter};

pub(super) fn parse(source: &str, doc_id: String, file: &InputFile) -> Result<Document, String> {
    let (fm, body) = split_front_matter(file.text()?)?;
    if body.contains('\0') {
        return Err("binary content (NUL bytes) in a plain-text source".into());
    }
    let mut b = SectionBuilder::new(fm.title);
    let mut para: Vec<&str> = Vec::new();
    let lines: Vec<&str> = body.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let underline = lines.get(i + 1).map(|l| l.trim()).filter(|l| {
            l.len() >= 3 && (l.chars().all(|c| c == '=') || l.chars().all(|c| c == '-'))
        });
        if let (Some(u), false) = (underline, line.trim().is_empty()) {
            b.block(para.join("\n"));
            para.clear();
            b.heading(
                if u.starts_with('=') { 1 } else { 2 },
                line.trim().to_string(),
            );
            i += 2;
            continue;
        }
        if line.trim().is_empty() {
            b.block(para.join("\n"));
            para.clear();
        } else {
            para.push(line);
        }
        i += 1;
    }
    b.block(para.join("\n"));
    Ok(b.finish(doc_id, source, file, fm.last_modified, fm.tags))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn underlined_headings_and_paragraphs() {
        let text = "---\ntitle: Known issues\nlast_modified: 2025-10-01\n---\nIntro line one\nline two\n\n\
                    Bank feeds\n----------\nChase feeds lag by a day.\n";
        let file = InputFile {
            rel_path: "known-issues.txt".into(),
            bytes: text.as_bytes().to_vec(),
            mtime: None,
        };
        let doc = parse("notes", "notes/known-issues.txt".into(), &file)
            .unwrap()
            .normalise();
        assert_eq!(doc.title, "Known issues");
        assert_eq!(doc.sections[0].blocks, ["Intro line one\nline two"]);
        assert_eq!(doc.sections[1].path, ["Known issues", "Bank feeds"]);
    }
}
