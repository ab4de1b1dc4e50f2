//! Small or large model: a difficulty estimate from query features and retrieval signals, a
//! threshold, queue-depth awareness and an exploration share.
//!
//! The estimate is a logistic score over features a support query exposes before any model runs
//! (the essay's "router" problem): length, clause count, negations and qualifications, product
//! identifiers the KB knows (precise, easier) or does not know (harder), whether the answer needs
//! several documents (distinct documents scoring close to the best passage), and how well the
//! best passage matches. [`DifficultyModel::default`] holds hand-set weights that order queries
//! sensibly out of the box; [`calibrate_threshold`] picks the Router's threshold from labelled
//! outcomes (e.g. escalations of small-model answers) instead of guessing it.
use std::collections::HashSet;

use serde::Serialize;

use crate::text::words;

/// Which model answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// The local base model with adapters.
    Small,
    /// The large model (local or an OpenAI-compatible endpoint).
    Large,
}

impl ModelKind {
    /// `small` / `large` (metric label value).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Small => "small",
            Self::Large => "large",
        }
    }
}

/// Why the router chose the model (metric label `reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteReason {
    /// Difficulty at or below the threshold.
    Easy,
    /// Difficulty above the threshold.
    Difficult,
    /// Difficult, but the large model's queue is full.
    QueueFull,
    /// Difficult, kept on the small model by the exploration share.
    Exploration,
    /// The caller asked for a model.
    Forced,
    /// Difficult, but no large model is configured.
    NoLargeModel,
}

impl RouteReason {
    /// Metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Easy => "easy",
            Self::Difficult => "difficult",
            Self::QueueFull => "queue_full",
            Self::Exploration => "exploration",
            Self::Forced => "forced",
            Self::NoLargeModel => "no_large_model",
        }
    }
}

/// Query features, each scaled to `0..=1`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryFeatures {
    /// Words / 40, capped.
    pub length: f64,
    /// (clauses - 1) / 4, capped: sentences plus clause-joining words and separators.
    pub clauses: f64,
    /// Negations and qualifications / 2, capped ("not", "unless", "except", "only", ...).
    pub qualifications: f64,
    /// 1 when the query names identifiers the KB knows (SKUs, plan names, error codes).
    pub known_identifiers: f64,
    /// 1 when it names identifier-like tokens the KB has never seen.
    pub unknown_identifiers: f64,
    /// (distinct documents near the top - 1) / 2, capped: the answer spans documents.
    pub multi_document: f64,
    /// 1 - similarity of the best passage (0 when unknown).
    pub weak_match: f64,
}

/// What retrieval told us about the query (optional: routing can run before retrieval).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RetrievalSignals {
    /// Cosine similarity (0..=1) of the query and the best passage, when dense retrieval ran.
    pub best_similarity: Option<f64>,
    /// Distinct documents among the top passages scoring within 90% of the best.
    pub documents_near_top: usize,
}

const QUALIFIERS: &[&str] = &[
    "not", "no", "never", "none", "nothing", "without", "except", "unless", "only", "but",
    "however", "although", "though", "whereas", "instead", "neither", "nor", "cannot", "can't",
    "don't", "doesn't", "didn't", "won't", "isn't", "aren't", "wasn't", "haven't", "hasn't",
];

const CLAUSE_JOINERS: &[&str] = &[
    "and", "but", "because", "although", "while", "whereas", "if", "unless", "when", "since", "so",
    "then", "also", "or",
];

/// An identifier-like token: letters and digits mixed (`X200`, `v2`, `E-1042`) or an all-caps
/// acronym of 2+ letters in the original text.
fn identifier_like(original: &str) -> bool {
    let has_digit = original.chars().any(|c| c.is_ascii_digit());
    let has_alpha = original.chars().any(char::is_alphabetic);
    (has_digit && has_alpha)
        || (original.len() >= 2 && original.chars().all(|c| c.is_ascii_uppercase()))
}

impl QueryFeatures {
    /// Extracts the features of `query`; `kb_terms` is the KB's vocabulary (lower-case words).
    pub fn extract(query: &str, kb_terms: &HashSet<String>, signals: &RetrievalSignals) -> Self {
        let all = words(query);
        let sentences = query
            .split(['.', '?', '!', ';'])
            .filter(|s| s.chars().any(char::is_alphanumeric))
            .count()
            .max(1);
        let joiners = all
            .iter()
            .filter(|w| CLAUSE_JOINERS.contains(&w.as_str()))
            .count()
            + query.matches(',').count();
        let clauses = sentences + joiners;
        let qualifications = all
            .iter()
            .filter(|w| QUALIFIERS.contains(&w.as_str()) || w.ends_with("n't"))
            .count();
        let (mut known, mut unknown) = (0usize, 0usize);
        for token in query.split(|c: char| c.is_whitespace() || ",.;:?!()\"".contains(c)) {
            if !token.is_empty() && identifier_like(token) {
                if kb_terms.contains(&token.to_lowercase()) {
                    known += 1;
                } else {
                    unknown += 1;
                }
            }
        }
        let cap = |x: f64| x.clamp(0.0, 1.0);
        Self {
            length: cap(all.len() as f64 / 40.0),
            clauses: cap((clauses as f64 - 1.0) / 4.0),
            qualifications: cap(qualifications as f64 / 2.0),
            known_identifiers: f64::from(u8::from(known > 0)),
            unknown_identifiers: f64::from(u8::from(unknown > 0)),
            multi_document: cap((signals.documents_near_top.max(1) as f64 - 1.0) / 2.0),
            weak_match: signals.best_similarity.map_or(0.0, |s| cap(1.0 - s)),
        }
    }
}

/// Logistic weights of the difficulty estimate.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DifficultyModel {
    /// Intercept.
    pub bias: f64,
    /// Weight of [`QueryFeatures::length`].
    pub length: f64,
    /// Weight of [`QueryFeatures::clauses`].
    pub clauses: f64,
    /// Weight of [`QueryFeatures::qualifications`].
    pub qualifications: f64,
    /// Weight of [`QueryFeatures::known_identifiers`] (negative: precise queries are easier).
    pub known_identifiers: f64,
    /// Weight of [`QueryFeatures::unknown_identifiers`].
    pub unknown_identifiers: f64,
    /// Weight of [`QueryFeatures::multi_document`].
    pub multi_document: f64,
    /// Weight of [`QueryFeatures::weak_match`].
    pub weak_match: f64,
}

impl Default for DifficultyModel {
    fn default() -> Self {
        Self {
            bias: -2.0,
            length: 1.2,
            clauses: 1.4,
            qualifications: 1.0,
            known_identifiers: -0.6,
            unknown_identifiers: 0.8,
            multi_document: 1.2,
            weak_match: 1.5,
        }
    }
}

/// A difficulty estimate and what it was made of.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Difficulty {
    /// Probability-like score in `0..1`.
    pub score: f64,
    /// The features.
    pub features: QueryFeatures,
}

impl DifficultyModel {
    /// Scores the features.
    pub fn estimate(&self, features: QueryFeatures) -> Difficulty {
        let z = self.bias
            + self.length * features.length
            + self.clauses * features.clauses
            + self.qualifications * features.qualifications
            + self.known_identifiers * features.known_identifiers
            + self.unknown_identifiers * features.unknown_identifiers
            + self.multi_document * features.multi_document
            + self.weak_match * features.weak_match;
        Difficulty {
            score: 1.0 / (1.0 + (-z).exp()),
            features,
        }
    }
}

/// Everything the routing decision reads.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RouteInput {
    /// The difficulty score.
    pub difficulty: f64,
    /// The Router's (or experiment arm's) threshold.
    pub threshold: f64,
    /// Whether a large model is configured.
    pub large_available: bool,
    /// Requests queued or in flight to the large model.
    pub large_queue_depth: usize,
    /// The configured maximum.
    pub max_queue_depth: usize,
    /// Share (0..=1) of difficult queries kept on the small model to keep learning.
    pub exploration_share: f64,
    /// This request's draw in `0..1` (stable hash of the interaction id).
    pub exploration_draw: f64,
    /// A model the caller insisted on.
    pub forced: Option<ModelKind>,
}

/// The routing decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteDecision {
    /// The model.
    pub model: ModelKind,
    /// Why.
    pub reason: RouteReason,
}

/// Small or large.
pub fn decide(input: &RouteInput) -> RouteDecision {
    let pick = |model, reason| RouteDecision { model, reason };
    if let Some(model) = input.forced {
        return pick(model, RouteReason::Forced);
    }
    if input.difficulty <= input.threshold {
        return pick(ModelKind::Small, RouteReason::Easy);
    }
    if !input.large_available {
        return pick(ModelKind::Small, RouteReason::NoLargeModel);
    }
    if input.exploration_draw < input.exploration_share {
        return pick(ModelKind::Small, RouteReason::Exploration);
    }
    if input.large_queue_depth >= input.max_queue_depth {
        return pick(ModelKind::Small, RouteReason::QueueFull);
    }
    pick(ModelKind::Large, RouteReason::Difficult)
}

/// The threshold that best separates queries the small model handled (`false`) from those it
/// did not (`true`, e.g. escalated), by balanced accuracy over the observed scores. `None` when
/// either class is empty.
pub fn calibrate_threshold(scored: &[(f64, bool)]) -> Option<f64> {
    let positives = scored.iter().filter(|(_, hard)| *hard).count();
    let negatives = scored.len() - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    let mut sorted: Vec<(f64, bool)> = scored.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Threshold t routes score > t to large. Sweep t over the midpoints between distinct scores.
    let (mut best, mut best_t) = (f64::NEG_INFINITY, None);
    let (mut neg_below, mut pos_below) = (0usize, 0usize);
    for i in 0..sorted.len() {
        if sorted[i].1 {
            pos_below += 1;
        } else {
            neg_below += 1;
        }
        let next = sorted.get(i + 1).map(|x| x.0);
        if next.is_some_and(|n| n == sorted[i].0) {
            continue;
        }
        let t = next.map_or(sorted[i].0, |n| (sorted[i].0 + n) / 2.0);
        let tnr = neg_below as f64 / negatives as f64;
        let tpr = (positives - pos_below) as f64 / positives as f64;
        let balanced = (tnr + tpr) / 2.0;
        if balanced > best {
            best = balanced;
            best_t = Some(t);
        }
    }
    best_t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(query: &str, signals: RetrievalSignals) -> f64 {
        let kb: HashSet<String> = ["x200", "pro", "invoice"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        DifficultyModel::default()
            .estimate(QueryFeatures::extract(query, &kb, &signals))
            .score
    }

    #[test]
    fn hard_queries_score_higher() {
        let easy = score(
            "How do I reset my password?",
            RetrievalSignals {
                best_similarity: Some(0.8),
                documents_near_top: 1,
            },
        );
        let hard = score(
            "I was charged twice for the annual plan but I never upgraded, and my invoice shows a \
             different amount than the pricing page unless the discount applies. Can you refund \
             the difference and also explain why?",
            RetrievalSignals {
                best_similarity: Some(0.45),
                documents_near_top: 3,
            },
        );
        assert!(easy < 0.35, "{easy}");
        assert!(hard > 0.8, "{hard}");
        let known = score("X200 firmware update", RetrievalSignals::default());
        let unknown = score("ZQ9000 firmware update", RetrievalSignals::default());
        assert!(known < unknown);
    }

    #[test]
    fn decisions() {
        let base = RouteInput {
            difficulty: 0.9,
            threshold: 0.6,
            large_available: true,
            large_queue_depth: 0,
            max_queue_depth: 4,
            exploration_share: 0.05,
            exploration_draw: 0.5,
            forced: None,
        };
        assert_eq!(decide(&base).reason, RouteReason::Difficult);
        assert_eq!(decide(&base).model, ModelKind::Large);
        let easy = RouteInput {
            difficulty: 0.2,
            ..base
        };
        assert_eq!(decide(&easy).reason, RouteReason::Easy);
        let full = RouteInput {
            large_queue_depth: 4,
            ..base
        };
        assert_eq!(
            decide(&full),
            RouteDecision {
                model: ModelKind::Small,
                reason: RouteReason::QueueFull
            }
        );
        let explore = RouteInput {
            exploration_draw: 0.01,
            ..base
        };
        assert_eq!(decide(&explore).reason, RouteReason::Exploration);
        let none = RouteInput {
            large_available: false,
            ..base
        };
        assert_eq!(decide(&none).reason, RouteReason::NoLargeModel);
        let forced = RouteInput {
            forced: Some(ModelKind::Large),
            difficulty: 0.0,
            ..base
        };
        assert_eq!(
            decide(&forced),
            RouteDecision {
                model: ModelKind::Large,
                reason: RouteReason::Forced
            }
        );
    }

    #[test]
    fn calibration_separates_classes() {
        let data: Vec<(f64, bool)> = (0..100).map(|i| (f64::from(i) / 100.0, i >= 70)).collect();
        let t = calibrate_threshold(&data).unwrap();
        assert!((0.69..0.70).contains(&t), "{t}");
        assert!(calibrate_threshold(&[(0.1, false)]).is_none());
    }
}
