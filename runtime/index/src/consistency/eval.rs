//! Measuring the contradiction finder: known contradictions and harmless paraphrases are written
//! into a copy of a knowledge base, the copy is indexed, and the report is scored against them.
//!
//! Each [`Injection`] copies a real passage (`original`, which must be found in the file `from`)
//! into a new document `to` of another source: edited so that one value disagrees (a
//! contradiction, whose edited value is `edited`), or reworded with the same values (a
//! paraphrase, which must not be flagged). Used by `runtime/index/tests/it/consistency.rs` (hashing
//! embedder) and the runtime's real-encoder test; the numbers are in `docs/evaluation.md`.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ConsistencyReport;

/// What an injected document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InjectionKind {
    /// One value of a real passage changed: the finder should flag it.
    Contradiction,
    /// A real passage reworded, values unchanged: the finder should not flag it.
    Paraphrase,
}

/// One document written into the copy of the knowledge base.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Injection {
    /// Contradiction or paraphrase.
    pub kind: InjectionKind,
    /// The file (relative to the knowledge base root) the passage comes from.
    pub from: String,
    /// The passage as it reads there (markup and line breaks aside).
    pub original: String,
    /// The new file (relative to the root); with sources named after their folders, as in the
    /// sample knowledge base, this is also the new document's id.
    pub to: String,
    /// The new file's whole content.
    pub text: String,
    /// Contradictions: the edited value as written in `text` (`21 days`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited: Option<String>,
}

/// Precision and recall of a report against the injections.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Score {
    /// Contradictions injected.
    pub injected: usize,
    /// Of those, flagged with their edited value.
    pub found: usize,
    /// Candidates with an injected document on one side.
    pub flagged: usize,
    /// Of those, the ones whose injected side is an edited value.
    pub correct: usize,
    /// `found / injected`.
    pub recall: f64,
    /// `correct / flagged` (1 when nothing was flagged).
    pub precision: f64,
    /// Injected contradictions not found (`to: edited`).
    pub missed: Vec<String>,
    /// Wrong candidates (`doc value <-> doc value`).
    pub wrong: Vec<String>,
}

/// Text without HTML tags, Markdown emphasis and line breaks, for finding a passage in a file.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_tag = false;
    for c in text.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                out.push(' ');
            }
            _ if in_tag => {}
            '*' | '`' => {}
            _ => out.push(c),
        }
    }
    out.replace("&gt;", ">")
        .replace("&amp;", "&")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Checks every injection against `source_root` (the original knowledge base: each `original`
/// must be in its `from` file, each contradiction's `edited` in its `text`) and writes the new
/// documents under `copy_root`. Errors name the injection.
pub fn inject(
    source_root: &Path,
    copy_root: &Path,
    injections: &[Injection],
) -> Result<(), String> {
    for (i, inj) in injections.iter().enumerate() {
        let from = source_root.join(&inj.from);
        let text = std::fs::read_to_string(&from)
            .map_err(|e| format!("injection {i}: reading {}: {e}", from.display()))?;
        if !plain(&text).contains(&plain(&inj.original)) {
            return Err(format!(
                "injection {i}: {:?} is not in {}",
                inj.original, inj.from
            ));
        }
        match (inj.kind, &inj.edited) {
            (InjectionKind::Contradiction, Some(edited))
                if plain(&inj.text).contains(edited.as_str()) => {}
            (InjectionKind::Contradiction, _) => {
                return Err(format!(
                    "injection {i}: a contradiction needs its edited value in the text"
                ));
            }
            (InjectionKind::Paraphrase, _) => {}
        }
        let to = copy_root.join(&inj.to);
        if to.exists() {
            return Err(format!("injection {i}: {} already exists", inj.to));
        }
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("injection {i}: creating {}: {e}", dir.display()))?;
        }
        std::fs::write(&to, &inj.text)
            .map_err(|e| format!("injection {i}: writing {}: {e}", to.display()))?;
    }
    Ok(())
}

fn same_value(a: &str, b: &str) -> bool {
    plain(a).eq_ignore_ascii_case(&plain(b))
}

/// Scores `report` (built from the copy, with `max_reported` large enough to hold every
/// candidate) against `injections`.
pub fn score(report: &ConsistencyReport, injections: &[Injection]) -> Score {
    let injected: Vec<&Injection> = injections
        .iter()
        .filter(|i| i.kind == InjectionKind::Contradiction)
        .collect();
    let by_doc = |doc: &str| injections.iter().find(|i| i.to == doc);
    let mut found = BTreeSet::new();
    let (mut flagged, mut correct) = (0, 0);
    let mut wrong = Vec::new();
    for c in &report.contradictions {
        let sides = [(&c.a, &c.b), (&c.b, &c.a)];
        let touched: Vec<_> = sides
            .iter()
            .filter_map(|(side, other)| by_doc(&side.doc_id).map(|inj| (inj, side, other)))
            .collect();
        if touched.is_empty() {
            continue;
        }
        flagged += 1;
        let right = touched.iter().any(|(inj, side, _)| {
            inj.kind == InjectionKind::Contradiction
                && inj
                    .edited
                    .as_deref()
                    .is_some_and(|e| same_value(e, &side.value))
        });
        if right {
            correct += 1;
            for (inj, _, _) in &touched {
                found.insert(inj.to.clone());
            }
        } else {
            wrong.push(format!(
                "{} {:?} <-> {} {:?}",
                c.a.doc_id, c.a.value, c.b.doc_id, c.b.value
            ));
        }
    }
    let missed: Vec<String> = injected
        .iter()
        .filter(|i| !found.contains(&i.to))
        .map(|i| format!("{}: {}", i.to, i.edited.as_deref().unwrap_or_default()))
        .collect();
    let found = injected.len() - missed.len();
    Score {
        injected: injected.len(),
        found,
        flagged,
        correct,
        recall: if injected.is_empty() {
            1.0
        } else {
            found as f64 / injected.len() as f64
        },
        precision: if flagged == 0 {
            1.0
        } else {
            correct as f64 / flagged as f64
        },
        missed,
        wrong,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consistency::{ClaimKind, Contradiction, Statement};

    fn statement(doc: &str, value: &str) -> Statement {
        Statement {
            chunk_id: format!("{doc}@0"),
            doc_id: doc.to_owned(),
            value: value.to_owned(),
            sentence: String::new(),
            last_modified: None,
        }
    }

    fn candidate(a: (&str, &str), b: (&str, &str)) -> Contradiction {
        Contradiction {
            kind: ClaimKind::Duration,
            unit: "day".to_owned(),
            a: statement(a.0, a.1),
            b: statement(b.0, b.1),
            cosine: 0.9,
            context: 0.9,
            score: 0.81,
        }
    }

    #[test]
    fn scores_count_edited_values_and_paraphrases() {
        let injection = |kind, to: &str, edited: Option<&str>| Injection {
            kind,
            from: "x".into(),
            original: "x".into(),
            to: to.into(),
            text: String::new(),
            edited: edited.map(str::to_owned),
        };
        let injections = [
            injection(InjectionKind::Contradiction, "notes/a.txt", Some("21 days")),
            injection(InjectionKind::Contradiction, "notes/b.txt", Some("$10")),
            injection(InjectionKind::Paraphrase, "notes/c.txt", None),
        ];
        let report = ConsistencyReport {
            contradictions: vec![
                candidate(("policies/p.md", "14 days"), ("notes/a.txt", "21 days")),
                candidate(("notes/c.txt", "two weeks"), ("guides/g.md", "30 days")),
                // Among original documents: not scored here.
                candidate(("wiki/w.html", "30 days"), ("policies/p.md", "14 days")),
            ],
            ..ConsistencyReport::default()
        };
        let s = score(&report, &injections);
        assert_eq!((s.injected, s.found, s.flagged, s.correct), (2, 1, 2, 1));
        assert_eq!((s.recall, s.precision), (0.5, 0.5));
        assert_eq!(s.missed, vec!["notes/b.txt: $10".to_owned()]);
        assert_eq!(s.wrong.len(), 1);
    }

    #[test]
    fn passages_are_found_through_markup() {
        assert_eq!(
            plain("<p>The reset link is valid for **60 minutes**\nand can be used once.</p>"),
            "The reset link is valid for 60 minutes and can be used once."
        );
    }
}
