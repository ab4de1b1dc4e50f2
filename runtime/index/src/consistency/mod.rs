//! KB rot: contradiction candidates between the chunks of a generation.
//!
//! Two passages are a candidate when they talk about the same thing and state values that cannot
//! both hold: a duration, price, percentage, date or count of the same unit, or a policy term with
//! opposite polarity ("refundable" / "non-refundable"). "The same thing" is judged twice: the
//! words around the two claims overlap (IDF-weighted, so "refund" counts and "days" does not), and
//! the passages' stored vectors are close (cosine). Passages of one document are never compared.
//!
//! The seed essay proposes an LLM judge within topic clusters; no generator or NLI model is
//! available at index time, so this is a cheap, explainable first pass that feeds a human review
//! queue, ranked by how alike the passages are. It runs at every index build
//! ([`crate::build`]: a summary in the manifest, the full list in `contradictions.json`).
//! Measured precision and recall on injected contradictions: `docs/evaluation.md`.
//!
//! Candidate generation stays near-linear: claims are bucketed by (kind, unit), and only claims
//! that share a context word are compared; words found around more than
//! [`ConsistencyOptions::max_postings`] claims of a bucket are too common to propose candidates.

pub mod claims;
pub mod eval;

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use tantivy::tokenizer::{Language, LowerCaser, SimpleTokenizer, Stemmer, TextAnalyzer};

use crate::chunk::Chunk;
pub use claims::{Claim, ClaimKind};

/// File of a generation holding the full [`ConsistencyReport`].
pub const REPORT_FILE: &str = "contradictions.json";

/// Version of the finder (claims, rules, default thresholds). A build whose chunks and vectors
/// equal the previous generation's reuses its report only when the version matches; bump it
/// whenever what the finder reports for the same input changes.
pub const FINDER_VERSION: u32 = 1;

/// Thresholds of the contradiction finder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsistencyOptions {
    /// Smallest cosine between the two passages' vectors.
    pub min_cosine: f32,
    /// Smallest IDF-weighted overlap (Dice) of the words around two value claims.
    pub min_context: f32,
    /// The same for policy terms, stricter: polarity words are common and easy to misread.
    pub min_context_policy: f32,
    /// Most contradictions kept in a report ([`ConsistencyReport::total`] counts all).
    pub max_reported: usize,
    /// Context words around more than this many claims of one kind and unit do not propose
    /// candidates (they say nothing about the topic, and would make the comparison quadratic).
    pub max_postings: usize,
}

impl Default for ConsistencyOptions {
    fn default() -> Self {
        ConsistencyOptions {
            min_cosine: 0.3,
            min_context: 0.3,
            min_context_policy: 0.5,
            max_reported: 200,
            max_postings: 400,
        }
    }
}

/// One side of a contradiction: where a claim was made and what it says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Statement {
    /// Chunk id.
    pub chunk_id: String,
    /// Document id.
    pub doc_id: String,
    /// The claim as written (`30 days`).
    pub value: String,
    /// The sentence holding it (at most ~300 characters).
    pub sentence: String,
    /// The document's last modification (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<i64>,
}

/// Two passages that state different values about the same thing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Contradiction {
    /// What the claims state.
    pub kind: ClaimKind,
    /// Their common unit (`day`, `usd/month`, `refundable`, ...).
    pub unit: String,
    /// The older statement when both documents are dated (else the first by document id): the
    /// one to review first.
    pub a: Statement,
    /// The other statement.
    pub b: Statement,
    /// Cosine of the two passages' vectors.
    pub cosine: f32,
    /// IDF-weighted overlap (Dice) of the words around the two claims.
    pub context: f32,
    /// `cosine * context`: the ranking.
    pub score: f32,
}

/// What the finder found in one generation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsistencyReport {
    /// [`FINDER_VERSION`] of the finder that wrote it (0: unknown).
    #[serde(default)]
    pub version: u32,
    /// Chunks read.
    pub chunks: usize,
    /// Claims found in them.
    pub claims: usize,
    /// Claim pairs that shared a context word and were compared.
    pub pairs_compared: usize,
    /// Contradictions found: one per pair of documents and (kind, unit), the best-scoring
    /// passage pair.
    pub total: usize,
    /// The best `max_reported` of them, best first.
    pub contradictions: Vec<Contradiction>,
}

/// The part of a [`ConsistencyReport`] kept in a generation's manifest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsistencySummary {
    /// Claims found.
    pub claims: usize,
    /// Contradiction candidates found.
    pub contradictions: usize,
    /// The best few, best first.
    pub top: Vec<Contradiction>,
}

impl ConsistencyReport {
    /// The count and the `n` best candidates.
    pub fn summary(&self, n: usize) -> ConsistencySummary {
        ConsistencySummary {
            claims: self.claims,
            contradictions: self.total,
            top: self.contradictions.iter().take(n).cloned().collect(),
        }
    }

    /// The document pairs with a candidate, each pair sorted.
    pub fn document_pairs(&self) -> BTreeSet<(String, String)> {
        self.contradictions
            .iter()
            .map(|c| {
                let (x, y) = (c.a.doc_id.clone(), c.b.doc_id.clone());
                if x <= y { (x, y) } else { (y, x) }
            })
            .collect()
    }
}

/// English stems (the BM25 analyser's), cached.
struct Stems {
    analyzer: TextAnalyzer,
    cache: HashMap<String, u32>,
    names: Vec<String>,
}

impl Stems {
    fn new() -> Self {
        Stems {
            analyzer: TextAnalyzer::builder(SimpleTokenizer::default())
                .filter(LowerCaser)
                .filter(Stemmer::new(Language::English))
                .build(),
            cache: HashMap::new(),
            names: Vec::new(),
        }
    }

    /// The id of `word`'s stem (hyphenated words keep every part: `add-on` -> `add-on`).
    fn id(&mut self, word: &str) -> u32 {
        if let Some(&id) = self.cache.get(word) {
            return id;
        }
        let mut parts = Vec::new();
        let mut stream = self.analyzer.token_stream(word);
        while stream.advance() {
            parts.push(stream.token().text.clone());
        }
        let stem = parts.join("-");
        let id = match self.names.iter().position(|n| *n == stem) {
            Some(i) => i as u32,
            None => {
                self.names.push(stem);
                (self.names.len() - 1) as u32
            }
        };
        self.cache.insert(word.to_owned(), id);
        id
    }
}

/// Content words of a text (lower case), for document frequencies.
fn content_words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !(c.is_alphanumeric() || c == '-' || c == '\''))
        .filter(|w| w.len() > 1 && w.chars().next().is_some_and(char::is_alphabetic))
        .map(str::to_lowercase)
        .filter(|w| !claims::is_stop(w))
}

struct Found {
    row: usize,
    claim: Claim,
    /// Stem ids, sorted and deduplicated.
    context: Vec<u32>,
    weight: f32,
}

/// IDF-weighted Dice overlap of two sorted context word lists.
fn dice(a: &Found, b: &Found, idf: &dyn Fn(u32) -> f32) -> f32 {
    let (mut i, mut j, mut shared) = (0, 0, 0.0);
    while i < a.context.len() && j < b.context.len() {
        match a.context[i].cmp(&b.context[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                shared += idf(a.context[i]);
                i += 1;
                j += 1;
            }
        }
    }
    2.0 * shared / (a.weight + b.weight).max(f32::EPSILON)
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn excerpt(text: &str, max: usize) -> String {
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

fn statement(chunk: &Chunk, claim: &Claim) -> Statement {
    Statement {
        chunk_id: chunk.chunk_id.clone(),
        doc_id: chunk.doc_id.clone(),
        value: claim.text.clone(),
        sentence: excerpt(
            chunk.text.get(claim.sentence.clone()).unwrap_or_default(),
            300,
        ),
        last_modified: chunk.last_modified,
    }
}

/// Finds contradiction candidates among `chunks`; `vectors[i]` is the L2-normalised vector of
/// `chunks[i]` (as stored in a generation). Deterministic: the same input gives the same report.
pub fn find_contradictions(
    chunks: &[Chunk],
    vectors: &[&[f32]],
    options: &ConsistencyOptions,
) -> ConsistencyReport {
    let mut stems = Stems::new();
    let mut df: HashMap<u32, u32> = HashMap::new();
    let mut found: Vec<Found> = Vec::new();
    for (row, chunk) in chunks.iter().enumerate() {
        let mut seen: Vec<u32> = content_words(&chunk.text).map(|w| stems.id(&w)).collect();
        seen.sort_unstable();
        seen.dedup();
        for id in seen {
            *df.entry(id).or_default() += 1;
        }
        for claim in claims::extract(&chunk.text) {
            let mut context: Vec<u32> = claim.context.iter().map(|w| stems.id(w)).collect();
            context.sort_unstable();
            context.dedup();
            found.push(Found {
                row,
                claim,
                context,
                weight: 0.0,
            });
        }
    }
    let n = chunks.len().max(1) as f32;
    let idf = |id: u32| (1.0 + n / df.get(&id).copied().unwrap_or(1).max(1) as f32).ln();
    for f in &mut found {
        f.weight = f.context.iter().map(|&id| idf(id)).sum();
    }

    let mut buckets: HashMap<(ClaimKind, &str), Vec<usize>> = HashMap::new();
    for (i, f) in found.iter().enumerate() {
        buckets
            .entry((f.claim.kind, f.claim.unit.as_str()))
            .or_default()
            .push(i);
    }
    let mut keys: Vec<_> = buckets.keys().copied().collect();
    keys.sort();

    // Best candidate per (document pair, kind, unit).
    let mut best: HashMap<(String, String, ClaimKind, String), Contradiction> = HashMap::new();
    let mut pairs_compared = 0;
    for key in keys {
        let members = &buckets[&key];
        let mut postings: HashMap<u32, Vec<usize>> = HashMap::new();
        let mut by_doc: HashMap<&str, Vec<usize>> = HashMap::new();
        for &i in members {
            for &id in &found[i].context {
                postings.entry(id).or_default().push(i);
            }
            by_doc
                .entry(chunks[found[i].row].doc_id.as_str())
                .or_default()
                .push(i);
        }
        // Whether the document of claim `own` also states `other`'s value about the same thing:
        // then the two disagreeing claims are about different slots (a plan table's rows, a
        // wait time next to a look-back window), not a contradiction.
        let restates = |own: usize, other: &Found, needed: f32| {
            by_doc[chunks[found[own].row].doc_id.as_str()]
                .iter()
                .any(|&k| {
                    k != own
                        && !found[k].claim.disagrees_with(&other.claim)
                        && dice(&found[k], other, &idf) >= needed
                })
        };
        for &i in members {
            let f = &found[i];
            let mut shared: HashMap<usize, f32> = HashMap::new();
            for &id in &f.context {
                let Some(list) = postings.get(&id) else {
                    continue;
                };
                if list.len() > options.max_postings {
                    continue;
                }
                let w = idf(id);
                for &j in list {
                    if j > i {
                        *shared.entry(j).or_default() += w;
                    }
                }
            }
            let mut candidates: Vec<(usize, f32)> = shared.into_iter().collect();
            candidates.sort_by_key(|&(j, _)| j);
            for (j, overlap) in candidates {
                let g = &found[j];
                let (ca, cb) = (&chunks[f.row], &chunks[g.row]);
                if ca.doc_id == cb.doc_id || !f.claim.disagrees_with(&g.claim) {
                    continue;
                }
                pairs_compared += 1;
                let context = 2.0 * overlap / (f.weight + g.weight).max(f32::EPSILON);
                let needed = if key.0 == ClaimKind::Policy {
                    options.min_context_policy
                } else {
                    options.min_context
                };
                if context < needed {
                    continue;
                }
                let cos = match (vectors.get(f.row), vectors.get(g.row)) {
                    (Some(a), Some(b)) => cosine(a, b),
                    _ => 0.0,
                };
                if cos < options.min_cosine || restates(i, g, needed) || restates(j, f, needed) {
                    continue;
                }
                let (mut a, mut b) = (statement(ca, &f.claim), statement(cb, &g.claim));
                let b_is_older = match (a.last_modified, b.last_modified) {
                    (Some(x), Some(y)) if x != y => y < x,
                    _ => b.doc_id < a.doc_id,
                };
                if b_is_older {
                    std::mem::swap(&mut a, &mut b);
                }
                let candidate = Contradiction {
                    kind: key.0,
                    unit: key.1.to_owned(),
                    a,
                    b,
                    cosine: cos,
                    context,
                    score: cos.max(0.0) * context,
                };
                let (x, y) = if ca.doc_id <= cb.doc_id {
                    (ca.doc_id.clone(), cb.doc_id.clone())
                } else {
                    (cb.doc_id.clone(), ca.doc_id.clone())
                };
                let slot = best
                    .entry((x, y, key.0, key.1.to_owned()))
                    .or_insert_with(|| candidate.clone());
                if candidate.score > slot.score {
                    *slot = candidate;
                }
            }
        }
    }
    let mut contradictions: Vec<Contradiction> = best.into_values().collect();
    contradictions.sort_by(|x, y| {
        y.score
            .total_cmp(&x.score)
            .then_with(|| x.a.chunk_id.cmp(&y.a.chunk_id))
            .then_with(|| x.b.chunk_id.cmp(&y.b.chunk_id))
            .then_with(|| x.unit.cmp(&y.unit))
    });
    let total = contradictions.len();
    contradictions.truncate(options.max_reported);
    ConsistencyReport {
        version: FINDER_VERSION,
        chunks: chunks.len(),
        claims: found.len(),
        pairs_compared,
        total,
        contradictions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(doc: &str, text: &str, modified: Option<i64>) -> Chunk {
        Chunk {
            chunk_id: format!("{doc}@0"),
            doc_id: doc.to_owned(),
            section_id: format!("{doc}#s"),
            source: doc.split('/').next().unwrap_or_default().to_owned(),
            title: doc.to_owned(),
            section_path: vec![doc.to_owned()],
            text: text.to_owned(),
            tags: Vec::new(),
            last_modified: modified,
            freshness_class: "policy".to_owned(),
            tokens: 10,
        }
    }

    fn run(chunks: &[Chunk]) -> ConsistencyReport {
        // Every passage on one topic: the test is about the claims and their words.
        let v = [1.0f32, 0.0];
        let vectors: Vec<&[f32]> = chunks.iter().map(|_| &v[..]).collect();
        find_contradictions(chunks, &vectors, &ConsistencyOptions::default())
    }

    #[test]
    fn the_old_and_the_new_refund_window_are_a_candidate_older_first() {
        let chunks = [
            chunk(
                "policies/refund.md",
                "You can request a full refund within 14 days of your first payment.",
                Some(1_788_220_800),
            ),
            chunk(
                "notes/faq-2024.txt",
                "You can get a full refund within 30 days of any payment.",
                Some(1_717_200_000),
            ),
            chunk(
                "guides/export.md",
                "Exports are kept for 30 days and then deleted from the download page.",
                Some(1_788_220_800),
            ),
        ];
        let report = run(&chunks);
        assert_eq!(report.total, 1, "{report:#?}");
        let c = &report.contradictions[0];
        assert_eq!((c.kind, c.unit.as_str()), (ClaimKind::Duration, "day"));
        assert_eq!(
            (c.a.doc_id.as_str(), c.a.value.as_str()),
            ("notes/faq-2024.txt", "30 days")
        );
        assert_eq!(
            (c.b.doc_id.as_str(), c.b.value.as_str()),
            ("policies/refund.md", "14 days")
        );
        assert!(c.b.sentence.starts_with("You can request"));
    }

    #[test]
    fn paraphrases_the_same_document_and_other_topics_are_not_candidates() {
        let chunks = [
            chunk(
                "policies/refund.md",
                "You can request a full refund within 14 days of your first payment.",
                None,
            ),
            // Same value, other words.
            chunk(
                "help/refunds.html",
                "Customers have two weeks from their first payment to request a full refund.",
                None,
            ),
            // Another value, another topic.
            chunk(
                "guides/export.md",
                "Export downloads stay available for 30 days on the download page.",
                None,
            ),
        ];
        let report = run(&chunks);
        assert_eq!(report.total, 0, "{report:#?}");
        // Dissimilar passages are not compared even when the words match.
        let chunks = [
            chunk(
                "a/x.md",
                "Refunds within 14 days of the first payment.",
                None,
            ),
            chunk(
                "b/y.md",
                "Refunds within 30 days of the first payment.",
                None,
            ),
        ];
        let (x, y) = ([1.0f32, 0.0], [0.0f32, 1.0]);
        let report =
            find_contradictions(&chunks, &[&x[..], &y[..]], &ConsistencyOptions::default());
        assert_eq!(report.total, 0);
        let report =
            find_contradictions(&chunks, &[&x[..], &x[..]], &ConsistencyOptions::default());
        assert_eq!(report.total, 1);
    }

    #[test]
    fn policy_terms_with_opposite_polarity_are_candidates() {
        let chunks = [
            chunk(
                "policies/refund.md",
                "Add-on purchases such as SMS credits and custom domains are non-refundable once used.",
                None,
            ),
            chunk(
                "help/add-ons.html",
                "Add-on purchases such as SMS credits and custom domains are refundable once used.",
                None,
            ),
        ];
        let report = run(&chunks);
        assert_eq!(report.total, 1, "{report:#?}");
        assert_eq!(report.contradictions[0].kind, ClaimKind::Policy);
        assert_eq!(report.summary(1).top.len(), 1);
        assert_eq!(report.document_pairs().len(), 1);
    }
}
