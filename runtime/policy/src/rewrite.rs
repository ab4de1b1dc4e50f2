//! Query rewriting: the fixed template, and the policy that skips short, precise queries.
//!
//! Rewriting costs a generation and can lose the words that matched (the essay's failure mode:
//! a KB article's traffic drops because queries are rewritten past it). `Auto` therefore
//! rewrites only queries that are both long (`minWords` or more) and vague (the share of their
//! content words found in the KB's vocabulary is at most `maxVocabularyOverlap`).
use std::collections::HashSet;

use serde::Serialize;
use switchboard_crds::router::{QueryRewrite, RewritePolicy};

use crate::text::{content_words, words};

/// The rewrite prompt (issue 5), `{query}` replaced by the customer's query.
pub const REWRITE_TEMPLATE: &str = "Rewrite the following customer query as a concise search query for a product knowledge base: {query}";

/// The rewrite prompt for `query`.
pub fn rewrite_prompt(query: &str) -> String {
    REWRITE_TEMPLATE.replace("{query}", query.trim())
}

/// The KnowledgeBase's vocabulary: lower-cased content words of its chunks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Vocabulary {
    terms: HashSet<String>,
}

impl Vocabulary {
    /// Collects the content words of `texts`.
    pub fn from_texts<'a>(texts: impl IntoIterator<Item = &'a str>) -> Self {
        let mut terms = HashSet::new();
        for text in texts {
            terms.extend(content_words(text));
        }
        Self { terms }
    }

    /// The terms.
    pub fn terms(&self) -> &HashSet<String> {
        &self.terms
    }

    /// Share (0..=1) of the query's content words found in the vocabulary; 1 for a query with
    /// none (nothing vague to fix).
    pub fn overlap(&self, query: &str) -> f64 {
        let words = content_words(query);
        if words.is_empty() {
            return 1.0;
        }
        words.iter().filter(|w| self.terms.contains(*w)).count() as f64 / words.len() as f64
    }
}

/// Whether to rewrite, and why.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RewriteDecision {
    /// Rewrite the query.
    pub rewrite: bool,
    /// `never`, `always`, `short`, `precise` or `long_and_vague`.
    pub reason: &'static str,
    /// Words in the query.
    pub words: usize,
    /// Vocabulary overlap of its content words.
    pub overlap: f64,
}

/// Applies the policy (the Router's, or an experiment arm's override of it).
pub fn should_rewrite(
    query: &str,
    vocabulary: &Vocabulary,
    policy: &QueryRewrite,
) -> RewriteDecision {
    let n = words(query).len();
    let overlap = vocabulary.overlap(query);
    let decide = |rewrite, reason| RewriteDecision {
        rewrite,
        reason,
        words: n,
        overlap,
    };
    match policy.policy {
        RewritePolicy::Never => decide(false, "never"),
        RewritePolicy::Always => decide(true, "always"),
        RewritePolicy::Auto => {
            if n < usize::try_from(policy.min_words.max(0)).unwrap_or(usize::MAX) {
                decide(false, "short")
            } else if overlap > policy.max_vocabulary_overlap.fraction() {
                decide(false, "precise")
            } else {
                decide(true, "long_and_vague")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_crds::units::Percent;

    #[test]
    fn template_is_exact() {
        assert_eq!(
            rewrite_prompt("  my thing broke "),
            "Rewrite the following customer query as a concise search query for a product knowledge base: my thing broke"
        );
    }

    #[test]
    fn auto_skips_short_and_precise_queries() {
        let vocab = Vocabulary::from_texts([
            "Export invoices to CSV from the billing page. Refunds take 5 days.",
        ]);
        let policy = QueryRewrite {
            policy: RewritePolicy::Auto,
            min_words: 8,
            max_vocabulary_overlap: Percent::from_fraction(0.5),
        };
        assert_eq!(
            should_rewrite("export invoices csv", &vocab, &policy).reason,
            "short"
        );
        assert_eq!(
            should_rewrite(
                "how can I export all of my invoices to a csv file from billing",
                &vocab,
                &policy
            )
            .reason,
            "precise"
        );
        let vague = should_rewrite(
            "so yesterday my colleague said the thing with the monthly statements was weird somehow",
            &vocab,
            &policy,
        );
        assert!(vague.rewrite, "{vague:?}");
        let never = QueryRewrite {
            policy: RewritePolicy::Never,
            ..policy.clone()
        };
        assert!(
            !should_rewrite(
                "anything at all really long and vague words words words",
                &vocab,
                &never
            )
            .rewrite
        );
        let always = QueryRewrite {
            policy: RewritePolicy::Always,
            ..policy
        };
        assert!(should_rewrite("csv", &vocab, &always).rewrite);
    }
}
