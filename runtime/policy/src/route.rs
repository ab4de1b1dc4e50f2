//! Small or large model: a difficulty estimate from query features and retrieval signals, a
//! threshold, queue-depth awareness and an exploration share.
//!
//! The estimate is a logistic score over features a support query exposes before any model runs
//! (the essay's "router" problem): length, clause count, negations and qualifications, product
//! identifiers the KB knows (precise, easier) or does not know (harder), whether the answer needs
//! several documents (distinct documents scoring close to the best passage), and how well the
//! best passage matches. [`DifficultyModel::default`] holds hand-set weights that order queries
//! sensibly out of the box; [`DifficultyModel::fit`] learns them from outcomes of small-model
//! answers (`switchboard-runtime router fit`), which the Router then carries in
//! `spec.difficulty.model`. Every decision is logged with its features and its propensity
//! ([`RouteRecord`]), so the outcomes of today's routing are tomorrow's training data.
use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use switchboard_analysis::logistic;
use switchboard_crds::router::DifficultyWeights;

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
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
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
    /// Number of features.
    pub const LEN: usize = 7;

    /// Names, in [`Self::to_array`] order (the camelCase field names).
    pub const NAMES: [&'static str; Self::LEN] = [
        "length",
        "clauses",
        "qualifications",
        "knownIdentifiers",
        "unknownIdentifiers",
        "multiDocument",
        "weakMatch",
    ];

    /// The features in declaration order.
    pub fn to_array(&self) -> [f64; Self::LEN] {
        [
            self.length,
            self.clauses,
            self.qualifications,
            self.known_identifiers,
            self.unknown_identifiers,
            self.multi_document,
            self.weak_match,
        ]
    }

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

/// Logistic weights of the difficulty estimate: the Router's `difficulty.model.weights` (the
/// API type), with the estimate, the fit and the hand-set defaults.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DifficultyModel(pub DifficultyWeights);

impl Default for DifficultyModel {
    /// Hand-set weights that order queries sensibly before a Router has outcomes to fit on.
    fn default() -> Self {
        Self(DifficultyWeights {
            bias: -2.0,
            length: 1.2,
            clauses: 1.4,
            qualifications: 1.0,
            known_identifiers: -0.6,
            unknown_identifiers: 0.8,
            multi_document: 1.2,
            weak_match: 1.5,
        })
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

impl From<DifficultyWeights> for DifficultyModel {
    fn from(w: DifficultyWeights) -> Self {
        Self(w)
    }
}

impl From<DifficultyModel> for DifficultyWeights {
    fn from(m: DifficultyModel) -> Self {
        m.0
    }
}

impl DifficultyModel {
    /// The Router's fitted weights, else the hand-set ones.
    pub fn configured(weights: Option<&DifficultyWeights>) -> Self {
        weights.map_or_else(Self::default, |w| Self::from(*w))
    }

    /// The feature weights in [`QueryFeatures::to_array`] order.
    pub fn weights(&self) -> [f64; QueryFeatures::LEN] {
        let mut w = [0.0; QueryFeatures::LEN];
        w.copy_from_slice(&self.0.to_array()[1..]);
        w
    }

    fn logistic(&self) -> logistic::Logistic {
        logistic::Logistic {
            bias: self.0.bias,
            weights: self.weights().to_vec(),
        }
    }

    /// Scores the features.
    pub fn estimate(&self, features: QueryFeatures) -> Difficulty {
        Difficulty {
            score: self.logistic().predict(&features.to_array()),
            features,
        }
    }

    /// Fits "the small model's answer is unacceptable" to `(features, unacceptable, weight)`
    /// outcomes: weighted logistic regression, L2 `l2` on the weights. The weight is the
    /// inverse of the propensity the answer was served small with, so hard queries kept on the
    /// small model by exploration stand for all the hard queries sent large. No class
    /// balancing: the probabilities stay calibrated, which is what the threshold is set on.
    pub fn fit(examples: &[(QueryFeatures, bool, f64)], l2: f64) -> Self {
        let rows: Vec<[f64; QueryFeatures::LEN]> =
            examples.iter().map(|(f, _, _)| f.to_array()).collect();
        let weighted: Vec<logistic::Example<'_>> = rows
            .iter()
            .zip(examples)
            .map(|(x, (_, y, w))| logistic::Example {
                features: x,
                label: *y,
                weight: *w,
            })
            .collect();
        let fitted = logistic::Logistic::fit(&weighted, l2, 1.0, 3000);
        let mut all = [fitted.bias; 8];
        all[1..].copy_from_slice(&fitted.weights);
        Self(DifficultyWeights::from_array(all))
    }
}

/// What one routing decision is logged with (the outcome store's `routing`, the flywheel
/// export's `routing`): enough to refit the difficulty model on the outcomes that follow.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteRecord {
    /// The difficulty score.
    pub difficulty: f64,
    /// The threshold it was compared with.
    pub threshold: f64,
    /// Probability that the policy served this request with the model it was served with
    /// (1 for deterministic choices; the exploration share for a difficult query explored on
    /// the small model): its inverse is the example's weight when refitting.
    pub propensity: f64,
    /// The features.
    pub features: QueryFeatures,
}

impl RouteRecord {
    /// The record of `decision` taken on `input` with `features`.
    pub fn new(input: &RouteInput, decision: RouteDecision, features: QueryFeatures) -> Self {
        let share = input.exploration_share.clamp(0.0, 1.0);
        let propensity = match decision.reason {
            RouteReason::Exploration => share,
            RouteReason::Difficult => 1.0 - share,
            RouteReason::Easy
            | RouteReason::Forced
            | RouteReason::NoLargeModel
            | RouteReason::QueueFull => 1.0,
        };
        Self {
            difficulty: input.difficulty,
            threshold: input.threshold,
            propensity,
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
    fn fitting_learns_which_queries_the_small_model_fails() {
        // Outcomes where long, multi-document queries fail and the rest mostly succeed.
        let mut examples = Vec::new();
        for i in 0..400u32 {
            let hard = i % 4 == 0;
            let features = QueryFeatures {
                length: if hard { 0.8 } else { 0.2 },
                multi_document: if hard { 1.0 } else { 0.0 },
                weak_match: f64::from(i % 10) / 10.0,
                ..QueryFeatures::default()
            };
            let unacceptable = if hard { i % 8 != 4 } else { i % 20 == 1 };
            examples.push((features, unacceptable, 1.0));
        }
        let model = DifficultyModel::fit(&examples, 1e-3);
        let easy = model.estimate(examples[1].0).score;
        let hard = model.estimate(examples[0].0).score;
        assert!(easy < 0.15 && hard > 0.6, "{easy} {hard} {model:?}");
        // Calibrated: the mean prediction is the observed failure rate.
        let mean = examples
            .iter()
            .map(|e| model.estimate(e.0).score)
            .sum::<f64>()
            / 400.0;
        let observed = examples.iter().filter(|e| e.1).count() as f64 / 400.0;
        assert!((mean - observed).abs() < 0.02, "{mean} {observed}");
        // The weights go into a Router and come back unchanged.
        let back = DifficultyModel::from(DifficultyWeights::from(model));
        assert_eq!(back, model);
        assert_eq!(
            DifficultyModel::configured(None),
            DifficultyModel::default()
        );
    }

    #[test]
    fn decisions_are_logged_with_their_propensity() {
        let input = RouteInput {
            difficulty: 0.9,
            threshold: 0.6,
            large_available: true,
            large_queue_depth: 0,
            max_queue_depth: 4,
            exploration_share: 0.05,
            exploration_draw: 0.01,
            forced: None,
        };
        let f = QueryFeatures::default();
        let explored = RouteRecord::new(&input, decide(&input), f);
        assert!((explored.propensity - 0.05).abs() < 1e-12);
        let large = RouteInput {
            exploration_draw: 0.5,
            ..input
        };
        assert!((RouteRecord::new(&large, decide(&large), f).propensity - 0.95).abs() < 1e-12);
        let easy = RouteInput {
            difficulty: 0.1,
            ..input
        };
        let record = RouteRecord::new(&easy, decide(&easy), f);
        assert_eq!(record.propensity, 1.0);
        let json = serde_json::to_string(&record).unwrap();
        assert_eq!(serde_json::from_str::<RouteRecord>(&json).unwrap(), record);
    }
}
