//! HTML and Confluence-export HTML. Headings (h1-h6) build the section tree; block elements become
//! paragraphs; lists and tables become one block each, one line per item or row.

use scraper::{ElementRef, Html, Node};

use super::InputFile;
use super::markdown::SectionBuilder;
use crate::document::{Document, collapse_ws, parse_timestamp};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flavor {
    Plain,
    /// Confluence "HTML export": strip page chrome (breadcrumbs, page metadata, attachments,
    /// footer), use the breadcrumbs as ancestors, read the date from the page metadata.
    Confluence,
}

/// Elements never read: scripts and page chrome.
const SKIPPED_TAGS: &[&str] = &[
    "script", "style", "noscript", "template", "nav", "footer", "aside", "svg", "button", "form",
    "head",
];

/// Confluence export chrome, by id and by class.
const CONFLUENCE_SKIPPED_IDS: &[&str] = &[
    "breadcrumb-section",
    "main-header",
    "footer",
    "attachments",
    "comments-section",
    "likes-and-labels-container",
];
const CONFLUENCE_SKIPPED_CLASSES: &[&str] =
    &["page-metadata", "pageSection", "greybox", "footer-body"];

pub(super) fn parse(
    source: &str,
    doc_id: String,
    file: &InputFile,
    flavor: Flavor,
) -> Result<Document, String> {
    let text = file.text()?;
    if !text.contains('<') {
        return Err("no HTML markup found".into());
    }
    let html = Html::parse_document(text);
    let root = html.root_element();

    let mut title = None;
    let mut ancestors = Vec::new();
    let mut last_modified = None;
    let mut tags = Vec::new();
    let mut content_root = find(root, |e| e.value().name() == "body").unwrap_or(root);

    for meta in descendants(root).filter(|e| e.value().name() == "meta") {
        let key = meta
            .value()
            .attr("name")
            .or_else(|| meta.value().attr("property"))
            .unwrap_or("");
        let content = meta.value().attr("content").unwrap_or("");
        match key.to_ascii_lowercase().as_str() {
            "last-modified" | "dcterms.modified" | "article:modified_time" | "date" => {
                last_modified = last_modified.or_else(|| parse_timestamp(content));
            }
            "keywords" => {
                tags = content
                    .split(',')
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
                    .collect()
            }
            _ => {}
        }
    }

    if flavor == Flavor::Confluence {
        if let Some(t) = find(root, |e| e.value().id() == Some("title-text")) {
            title = Some(strip_space_prefix(&element_text(t)));
        }
        if let Some(crumbs) = find(root, |e| e.value().id() == Some("breadcrumbs")) {
            ancestors = descendants(crumbs)
                .filter(|e| e.value().name() == "li")
                .map(|li| collapse_ws(&element_text(li)))
                .filter(|t| !t.is_empty())
                .collect();
        }
        if let Some(meta) = find(root, |e| has_class(e, "page-metadata")) {
            // "Created by Jane Doe, last modified by Sam Lee on Mar 03, 2025"
            let text = collapse_ws(&element_text(meta));
            last_modified = text
                .rsplit_once(" on ")
                .and_then(|(_, date)| parse_timestamp(date))
                .or(last_modified);
        }
        if let Some(main) = find(root, |e| e.value().id() == Some("main-content")) {
            content_root = main;
        }
    }
    if title.is_none() {
        // The page's own <title>, stripped of a " | Site" or "Space : " decoration, is used only
        // when the body has no H1 (the first H1 becomes the title in the section builder).
        let has_h1 = descendants(content_root).any(|e| e.value().name() == "h1");
        if !has_h1 {
            title = find(root, |e| e.value().name() == "title")
                .map(|t| {
                    strip_space_prefix(element_text(t).split(" | ").next().unwrap_or_default())
                })
                .filter(|t| !t.is_empty());
        }
    }

    let mut walker = Walker {
        b: SectionBuilder::new(title),
        buf: String::new(),
        group: None,
        flavor,
        pre: 0,
    };
    walker.b.ancestors = ancestors;
    walker.walk(content_root);
    walker.flush();
    let doc = walker.b.finish(doc_id, source, file, last_modified, tags);
    if doc.sections.iter().all(|s| s.blocks.is_empty()) {
        return Err("no text content found".into());
    }
    Ok(doc)
}

/// "Support KB : Refund policy" -> "Refund policy" (Confluence prefixes titles with the space).
fn strip_space_prefix(s: &str) -> String {
    let s = collapse_ws(s);
    match s.split_once(" : ") {
        Some((_, rest)) => rest.to_string(),
        None => s,
    }
}

fn descendants(e: ElementRef<'_>) -> impl Iterator<Item = ElementRef<'_>> {
    e.descendants().filter_map(ElementRef::wrap)
}

fn find<'a>(e: ElementRef<'a>, pred: impl Fn(&ElementRef<'a>) -> bool) -> Option<ElementRef<'a>> {
    descendants(e).find(|x| pred(x))
}

fn has_class(e: &ElementRef<'_>, class: &str) -> bool {
    e.value().classes().any(|c| c == class)
}

fn element_text(e: ElementRef<'_>) -> String {
    e.text().collect::<Vec<_>>().join(" ")
}

struct Walker {
    b: SectionBuilder,
    buf: String,
    /// Lines of the list or table being read.
    group: Option<Vec<String>>,
    flavor: Flavor,
    pre: usize,
}

impl Walker {
    fn walk(&mut self, e: ElementRef<'_>) {
        for child in e.children() {
            match child.value() {
                Node::Text(t) => {
                    if self.pre > 0 {
                        self.buf.push_str(t);
                    } else {
                        // Keep a word boundary between inline elements.
                        let collapsed = collapse_ws(t);
                        if !collapsed.is_empty() {
                            if t.starts_with(char::is_whitespace) && !self.buf.is_empty() {
                                self.buf.push(' ');
                            }
                            self.buf.push_str(&collapsed);
                            if t.ends_with(char::is_whitespace) {
                                self.buf.push(' ');
                            }
                        }
                    }
                }
                Node::Element(_) => {
                    if let Some(el) = ElementRef::wrap(child) {
                        self.element(el);
                    }
                }
                _ => {}
            }
        }
    }

    fn skipped(&self, e: &ElementRef<'_>) -> bool {
        let v = e.value();
        if SKIPPED_TAGS.contains(&v.name())
            || v.attr("hidden").is_some()
            || v.attr("aria-hidden") == Some("true")
        {
            return true;
        }
        self.flavor == Flavor::Confluence
            && (v
                .id()
                .is_some_and(|id| CONFLUENCE_SKIPPED_IDS.contains(&id))
                || v.classes().any(|c| CONFLUENCE_SKIPPED_CLASSES.contains(&c)))
    }

    fn element(&mut self, e: ElementRef<'_>) {
        if self.skipped(&e) {
            return;
        }
        let name = e.value().name();
        match name {
            "h1" | "h2" | "h3" | "h4" | "h5" | "h6" => {
                self.flush();
                let level = name[1..].parse().unwrap_or(6);
                self.b.heading(level, collapse_ws(&element_text(e)));
            }
            "ul" | "ol" | "table" | "dl" if self.group.is_none() => {
                self.flush();
                self.group = Some(Vec::new());
                self.walk(e);
                self.line();
                if let Some(lines) = self.group.take() {
                    self.b.block(lines.join("\n"));
                }
            }
            "li" | "dt" | "dd" => {
                self.line();
                self.walk(e);
                let text = collapse_ws(&std::mem::take(&mut self.buf));
                if !text.is_empty() {
                    self.push_line(format!("- {text}"));
                }
            }
            "tr" => {
                self.line();
                let cells: Vec<String> = e
                    .children()
                    .filter_map(ElementRef::wrap)
                    .filter(|c| matches!(c.value().name(), "td" | "th"))
                    .map(|c| collapse_ws(&element_text(c)))
                    .collect();
                if cells.iter().any(|c| !c.is_empty()) {
                    self.push_line(cells.join(" | "));
                }
            }
            "br" => self.buf.push('\n'),
            "pre" => {
                self.flush();
                self.pre += 1;
                self.walk(e);
                self.pre -= 1;
                self.flush();
            }
            "p" | "div" | "section" | "article" | "main" | "blockquote" | "header" | "figure"
            | "figcaption" | "details" | "summary" | "caption" => {
                if self.group.is_some() {
                    self.walk(e);
                    self.buf.push(' ');
                } else {
                    self.flush();
                    self.walk(e);
                    self.flush();
                }
            }
            _ => self.walk(e),
        }
    }

    /// Ends the current line of a list or table.
    fn line(&mut self) {
        if self.group.is_some() {
            let text = collapse_ws(&std::mem::take(&mut self.buf));
            if !text.is_empty() {
                self.push_line(text);
            }
        }
    }

    fn push_line(&mut self, line: String) {
        if let Some(lines) = self.group.as_mut() {
            lines.push(line);
        } else {
            self.b.block(line);
        }
    }

    fn flush(&mut self) {
        if self.group.is_some() {
            self.line();
        } else {
            self.b.block(std::mem::take(&mut self.buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, html: &str) -> InputFile {
        InputFile {
            rel_path: name.into(),
            bytes: html.as_bytes().to_vec(),
            mtime: None,
        }
    }

    #[test]
    fn heading_hierarchy_becomes_breadcrumbs() {
        let html = r#"<html><head><title>Payments | Ledgerly Help</title>
            <meta name="last-modified" content="2025-08-01"><meta name="keywords" content="billing, cards"></head>
            <body><nav>Home | Pricing</nav><h1>Payment methods</h1><p>We accept <b>cards</b> and ACH.</p>
            <h2>Cards</h2><p>Visa and Mastercard.</p><h3>Declined cards</h3><ul><li>Check the CVC.</li><li>Call your bank.</li></ul>
            <h2>Bank transfer</h2><table><tr><th>Region</th><th>Method</th></tr><tr><td>US</td><td>ACH</td></tr></table>
            <footer>Copyright</footer></body></html>"#;
        let doc = parse(
            "help",
            "help/payments.html".into(),
            &file("payments.html", html),
            Flavor::Plain,
        )
        .unwrap()
        .normalise();
        assert_eq!(doc.title, "Payment methods");
        assert_eq!(doc.tags, ["billing", "cards"]);
        assert_eq!(doc.last_modified, Some(1_754_006_400));
        let crumbs: Vec<String> = doc
            .sections
            .iter()
            .map(|s| crate::document::breadcrumb(&s.path))
            .collect();
        assert_eq!(
            crumbs,
            [
                "[Payment methods]",
                "[Payment methods > Cards]",
                "[Payment methods > Cards > Declined cards]",
                "[Payment methods > Bank transfer]"
            ]
        );
        assert_eq!(doc.sections[0].blocks, ["We accept cards and ACH."]);
        assert_eq!(
            doc.sections[2].blocks,
            ["- Check the CVC.\n- Call your bank."]
        );
        assert_eq!(doc.sections[3].blocks, ["Region | Method\nUS | ACH"]);
        let all: String = doc.sections.iter().flat_map(|s| s.blocks.clone()).collect();
        assert!(
            !all.contains("Copyright") && !all.contains("Home"),
            "chrome leaked: {all}"
        );
    }

    #[test]
    fn confluence_chrome_is_stripped_and_breadcrumbs_become_ancestors() {
        let html = r#"<html><head><title>Support KB : Chargebacks</title></head><body><div id="page">
            <div id="main-header"><div id="breadcrumb-section"><ol id="breadcrumbs">
              <li><a href="index.html">Support KB</a></li><li><a href="Billing.html">Billing</a></li></ol></div>
              <h1 id="title-heading" class="pagetitle"><span id="title-text">Support KB : Chargebacks</span></h1></div>
            <div id="content" class="view"><div class="page-metadata">Created by Ana Ruiz, last modified by Sam Lee on Mar 03, 2025</div>
            <div id="main-content" class="wiki-content group"><p>A chargeback is a disputed payment.</p>
              <h2 id="Chargebacks-Responding">Responding</h2><p>Upload evidence within 7 days.</p></div>
            <div class="pageSection group"><div class="pageSectionHeader"><h2 id="attachments" class="pageSectionTitle">Attachments:</h2></div>
              <div class="greybox"><a href="x.png">evidence-template.png</a></div></div></div>
            <div id="footer"><section class="footer-body"><p>Document generated by Confluence on Mar 04, 2025</p></section></div>
            </div></body></html>"#;
        let doc = parse(
            "wiki",
            "wiki/Chargebacks.html".into(),
            &file("Chargebacks.html", html),
            Flavor::Confluence,
        )
        .unwrap()
        .normalise();
        assert_eq!(doc.title, "Chargebacks");
        assert_eq!(doc.last_modified, Some(1_740_960_000));
        assert_eq!(
            doc.sections[1].path,
            ["Support KB", "Billing", "Chargebacks", "Responding"]
        );
        let all = doc
            .sections
            .iter()
            .flat_map(|s| s.blocks.clone())
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(
            all,
            "A chargeback is a disputed payment.\nUpload evidence within 7 days."
        );
    }

    #[test]
    fn text_without_markup_is_rejected() {
        assert!(
            parse(
                "h",
                "h/x".into(),
                &file("x.html", "just words"),
                Flavor::Plain
            )
            .is_err()
        );
    }
}
