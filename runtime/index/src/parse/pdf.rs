//! PDF text layer via `pdf-extract` (pure Rust, on `lopdf`), with a small layout pass.
//!
//! `pdf-extract` walks the content streams and reports every glyph with its position and font
//! size. [`LayoutOutput`] turns that into lines and blocks:
//! - glyphs on one baseline form a line; a horizontal gap wider than [`CELL_GAP_EM`] ems inside a
//!   line separates table cells, written `a | b | c` as for HTML and Markdown tables; consecutive
//!   table lines form one block, so a table stays one block with one line per row, cells in order;
//! - a vertical gap larger than 1.5 line heights, or a new page, ends a block;
//! - a short line (at most 12 words) set noticeably larger than the body text (>= 1.15x the most
//!   common glyph size) is a heading; distinct heading sizes map to levels, largest first.
//!
//! Title: `/Title` from the info dictionary, else the first, largest heading; `last_modified`:
//! `/ModDate` (or `/CreationDate`). Not handled: multi-column layouts (text follows stream order)
//! and scanned PDFs (no text layer: reported as a bad file, OCR is not supported).

use pdf_extract::{MediaBox, OutputDev, OutputError, Transform};

use super::InputFile;
use super::markdown::SectionBuilder;
use crate::document::{Document, parse_timestamp};

/// Horizontal gap, in ems of the current font, above which two runs on a line are table cells.
const CELL_GAP_EM: f64 = 1.0;
/// Horizontal gap, in ems, above which a space is inserted between runs.
const WORD_GAP_EM: f64 = 0.1;
/// Size ratio to the body font from which a line counts as a heading.
const HEADING_RATIO: f64 = 1.15;

pub(super) fn parse(source: &str, doc_id: String, file: &InputFile) -> Result<Document, String> {
    if !file.bytes.starts_with(b"%PDF-") {
        return Err("not a PDF (missing %PDF- header)".into());
    }
    let bytes = file.bytes.as_slice();
    // pdf-extract and lopdf can panic on malformed input; a bad file must never take the build down.
    let (lines, meta_title, mod_date) = std::panic::catch_unwind(|| -> Result<_, String> {
        let mut doc = pdf_extract::Document::load_mem(bytes).map_err(|e| format!("PDF: {e}"))?;
        if doc.is_encrypted() {
            doc.decrypt("")
                .map_err(|e| format!("PDF is encrypted: {e}"))?;
        }
        let (title, date) = metadata(&doc);
        let mut layout = LayoutOutput::default();
        pdf_extract::output_doc(&doc, &mut layout).map_err(|e| format!("PDF: {e}"))?;
        Ok((layout.finish(), title, date))
    })
    .map_err(|_| "PDF parser panicked on malformed content".to_string())??;
    if lines.iter().all(|l| l.text.trim().is_empty()) {
        return Err("PDF has no text layer (scanned?); OCR is not supported".into());
    }

    // Body size: the most common glyph size, weighted by characters.
    let mut sizes: Vec<(i64, usize)> = Vec::new();
    for l in &lines {
        let key = (l.size * 10.0).round() as i64;
        match sizes.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += l.text.len(),
            None => sizes.push((key, l.text.len())),
        }
    }
    let body = sizes
        .iter()
        .max_by_key(|(_, n)| *n)
        .map_or(10.0, |(k, _)| *k as f64 / 10.0);
    let is_heading = |l: &Line| {
        l.size >= body * HEADING_RATIO
            && !l.is_table
            && (1..=12).contains(&l.text.split_whitespace().count())
    };
    let mut heading_sizes: Vec<i64> = lines
        .iter()
        .filter(|l| is_heading(l))
        .map(|l| (l.size * 10.0).round() as i64)
        .collect();
    heading_sizes.sort_unstable_by(|a, b| b.cmp(a));
    heading_sizes.dedup();

    let mut b = SectionBuilder::new(meta_title.clone());
    let mut block: Vec<String> = Vec::new();
    let mut block_is_table = false;
    for line in &lines {
        if is_heading(line) {
            b.block(std::mem::take(&mut block).join("\n"));
            let rank = heading_sizes
                .iter()
                .position(|s| *s == (line.size * 10.0).round() as i64)
                .unwrap_or(0);
            // With a /Title, the largest heading repeating it opens the root; otherwise the largest
            // heading level is the title (level 1) and the others nest below it.
            b.heading(rank + 1, line.text.clone());
            continue;
        }
        let continues_table = line.is_table && block_is_table;
        if (line.starts_block && !continues_table)
            || (line.is_table != block_is_table && !block.is_empty())
        {
            b.block(std::mem::take(&mut block).join("\n"));
        }
        block_is_table = line.is_table;
        block.push(line.text.clone());
    }
    b.block(block.join("\n"));
    Ok(b.finish(doc_id, source, file, mod_date, Vec::new()))
}

/// One line of text as laid out on the page.
#[derive(Debug, Clone)]
struct Line {
    text: String,
    size: f64,
    /// Preceded by a large vertical gap or a page break.
    starts_block: bool,
    /// Contains cell separators.
    is_table: bool,
}

/// Collects glyphs into lines (see the module docs).
#[derive(Debug, Default)]
struct LayoutOutput {
    lines: Vec<Line>,
    current: String,
    current_size: f64,
    current_starts_block: bool,
    current_is_table: bool,
    last_y: Option<f64>,
    last_end: f64,
    line_height: f64,
    new_page: bool,
    first_of_run: bool,
}

impl LayoutOutput {
    fn end_current_line(&mut self) {
        let text = self.current.trim().to_string();
        if !text.is_empty() {
            self.lines.push(Line {
                text,
                size: self.current_size,
                starts_block: self.current_starts_block,
                is_table: self.current_is_table,
            });
        }
        self.current.clear();
        self.current_size = 0.0;
        self.current_is_table = false;
    }

    fn finish(mut self) -> Vec<Line> {
        self.end_current_line();
        self.lines
    }
}

impl OutputDev for LayoutOutput {
    fn begin_page(
        &mut self,
        _page: u32,
        _media_box: &MediaBox,
        _art_box: Option<(f64, f64, f64, f64)>,
    ) -> Result<(), OutputError> {
        self.end_current_line();
        self.new_page = true;
        self.last_y = None;
        Ok(())
    }

    fn end_page(&mut self) -> Result<(), OutputError> {
        Ok(())
    }

    fn output_character(
        &mut self,
        trm: &Transform,
        width: f64,
        _spacing: f64,
        font_size: f64,
        ch: &str,
    ) -> Result<(), OutputError> {
        // Position in user space (y grows upwards) and the font size after the text matrix.
        let (x, y) = (trm.m31, trm.m32);
        let vx = font_size * (trm.m11 + trm.m21);
        let vy = font_size * (trm.m12 + trm.m22);
        let size = (vx * vy).abs().sqrt().max(0.1);
        let same_line = self.last_y.is_some_and(|ly| (y - ly).abs() <= size * 0.5);
        if !same_line {
            let gap = self.last_y.map(|ly| (ly - y).abs());
            self.end_current_line();
            self.current_starts_block =
                self.new_page || gap.is_some_and(|g| g > self.line_height.max(size) * 1.5);
            self.new_page = false;
        } else if self.first_of_run || x > self.last_end + size * CELL_GAP_EM {
            let gap = x - self.last_end;
            if gap > size * CELL_GAP_EM {
                self.current.push_str(" | ");
                self.current_is_table = true;
            } else if gap > size * WORD_GAP_EM && !self.current.ends_with(' ') && ch != " " {
                self.current.push(' ');
            }
        }
        if !same_line || self.last_y.is_none() {
            self.line_height = size;
        }
        self.current.push_str(ch);
        self.current_size = self.current_size.max(size);
        self.first_of_run = false;
        self.last_y = Some(y);
        self.last_end = x + width * size;
        Ok(())
    }

    fn begin_word(&mut self) -> Result<(), OutputError> {
        self.first_of_run = true;
        Ok(())
    }

    fn end_word(&mut self) -> Result<(), OutputError> {
        Ok(())
    }

    fn end_line(&mut self) -> Result<(), OutputError> {
        Ok(())
    }
}

/// `/Title` and `/ModDate` (falling back to `/CreationDate`) from the document information
/// dictionary.
fn metadata(doc: &pdf_extract::Document) -> (Option<String>, Option<i64>) {
    let Some(info) = doc
        .trailer
        .get(b"Info")
        .ok()
        .and_then(|o| o.as_reference().ok())
        .and_then(|id| doc.get_dictionary(id).ok())
    else {
        return (None, None);
    };
    let text = |key: &[u8]| {
        info.get(key)
            .ok()
            .and_then(|o| o.as_str().ok())
            .map(decode_pdf_string)
            .filter(|s| !s.trim().is_empty())
    };
    let title = text(b"Title").map(|t| t.trim().to_string());
    let date = text(b"ModDate")
        .or_else(|| text(b"CreationDate"))
        .and_then(|d| parse_timestamp(&d));
    (title, date)
}

/// PDF text strings are UTF-16BE with a BOM, or PDFDocEncoding (close enough to Latin-1 here).
fn decode_pdf_string(raw: &[u8]) -> String {
    if let Some(rest) = raw.strip_prefix(&[0xFE, 0xFF]) {
        let units: Vec<u16> = rest
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect();
        String::from_utf16_lossy(&units)
    } else {
        raw.iter().map(|&b| b as char).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str) -> InputFile {
        let path = format!(
            "{}/../../examples/kb/pdf/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        InputFile {
            rel_path: name.into(),
            bytes: std::fs::read(path).unwrap(),
            mtime: None,
        }
    }

    #[test]
    fn tables_become_rows_of_cells_and_headings_sections() {
        let doc = parse(
            "pdf",
            "pdf/pricing-2026.pdf".into(),
            &sample("pricing-2026.pdf"),
        )
        .unwrap()
        .normalise();
        assert_eq!(doc.title, "Ledgerly Plans and Pricing 2026");
        let paths: Vec<String> = doc.sections.iter().map(|s| s.path.join(" > ")).collect();
        assert_eq!(
            paths,
            [
                "Ledgerly Plans and Pricing 2026",
                "Ledgerly Plans and Pricing 2026 > Plan comparison",
                "Ledgerly Plans and Pricing 2026 > Extra seats and overages",
                "Ledgerly Plans and Pricing 2026 > Discounts"
            ]
        );
        assert_eq!(
            doc.sections[1].blocks,
            [
                "Plan | Monthly price | Annual price | Seats included | Invoices per month\n\
              Starter | $12 | $120 | 1 | 50\n\
              Growth | $39 | $390 | 5 | 1,000\n\
              Scale | $99 | $990 | 20 | Unlimited\n\
              Enterprise | Custom | Custom | Unlimited | Unlimited"
            ]
        );
        assert!(doc.sections[0].blocks[0].starts_with("Prices are in US dollars"));
        assert_eq!(
            doc.last_modified,
            Some(1_788_512_400),
            "ModDate 2026-09-04T09:00:00Z"
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let file = InputFile {
            rel_path: "x.pdf".into(),
            bytes: b"%PDF-1.4\n1 0 obj <<".to_vec(),
            mtime: None,
        };
        assert!(parse("pdf", "pdf/x.pdf".into(), &file).is_err());
    }
}
