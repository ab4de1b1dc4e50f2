//! Coverage gaps: the questions the knowledge base does not answer.
//!
//! An interaction is a **gap signal** when it was escalated, when retrieval found no passage
//! above the relevance floor, when the answer was a refusal, or — with a `min_score` — when its
//! best passage scored below it (the score is on the KnowledgeBase's final scale, the one
//! `retrieval.minScore` uses, so pick it relative to that; without one the score is not used).
//! Signals are clustered by query embedding at [`TOPIC_THRESHOLD`] (one topic, several
//! questions), and every cluster with at least `min_queries` interactions is a gap, ranked by
//! volume (then escalations, then recency). Each gap carries the query closest to its centroid,
//! a few distinct example queries and the documents its interactions retrieved: none means the
//! knowledge base has nothing on it; some means it has something that did not answer.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use switchboard_index::Embedder;
use switchboard_store::InteractionWithOutcomes;

use crate::cluster::{TOPIC_THRESHOLD, cosine, leader_clusters, normalize_text, normalized};
use crate::{FlywheelError, embed_all};

/// How gaps are found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GapSettings {
    /// A best-passage score below this is a gap signal (`None`: scores are not used).
    pub min_score: Option<f64>,
    /// Cosine at or above which two queries are one topic.
    pub threshold: f32,
    /// Interactions a cluster needs to be reported.
    pub min_queries: u64,
    /// Gaps listed, at most.
    pub limit: usize,
    /// Example queries per gap, at most.
    pub examples: usize,
}

impl Default for GapSettings {
    fn default() -> Self {
        Self {
            min_score: None,
            threshold: TOPIC_THRESHOLD,
            min_queries: 3,
            limit: 20,
            examples: 3,
        }
    }
}

/// A document retrieved for a gap's queries, and how often.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetrievedDocument {
    /// Document id (`<source>/<path or item>`).
    pub document: String,
    /// Interactions of the gap whose prompt included it.
    pub interactions: u64,
}

/// One gap.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CoverageGap {
    /// The query closest to the cluster's centroid.
    pub query: String,
    /// The newest interaction asking it: an id (random, not personal) that names the topic
    /// where its text may not go (a KnowledgeBase's status).
    pub interaction: String,
    /// Interactions (gap signals) in the cluster.
    pub volume: u64,
    /// `volume` over every interaction of the window ([`GapReport::interactions`]): how much of
    /// the traffic asks about it.
    pub share: f64,
    /// Of those, escalated.
    pub escalated: u64,
    /// `escalated / volume`.
    pub escalation_share: f64,
    /// Of those, with no passage above the relevance floor.
    pub retrieval_failures: u64,
    /// Of those, refused.
    pub refusals: u64,
    /// Of those, with a best score below `minScore`.
    pub low_score: u64,
    /// Distinct queries of the cluster, most frequent first (the representative included).
    pub examples: Vec<String>,
    /// Documents retrieved for these queries, most often first (at most 3; empty: nothing
    /// was retrieved for any of them).
    pub documents: Vec<RetrievedDocument>,
    /// Oldest interaction (Unix seconds).
    pub first_seen: i64,
    /// Newest interaction (Unix seconds).
    pub last_seen: i64,
}

/// Gaps of a window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GapReport {
    /// The Router, when filtered on one.
    pub router: Option<String>,
    /// Window start (Unix seconds).
    pub from: i64,
    /// Window end (Unix seconds).
    pub until: i64,
    /// Every interaction of the window, signal or not (the denominator of a gap's `share`).
    pub interactions: u64,
    /// Gap signals considered.
    pub signals: u64,
    /// More signals were stored than were read (the newest were kept).
    pub truncated: bool,
    /// Clusters among the signals (any size).
    pub clusters: u64,
    /// Clusters with at least `minQueries` interactions: the gaps.
    pub gaps_found: u64,
    /// The largest gaps, at most `limit`.
    pub gaps: Vec<CoverageGap>,
    /// Settings used.
    pub settings: GapSettings,
    /// The encoder (`model_id`).
    pub encoder: String,
    /// Seconds spent embedding and clustering.
    pub seconds: f64,
}

impl GapReport {
    /// Sets the window's interaction count (when `rows` given to [`coverage_gaps`] were only the
    /// signals, e.g. from [`switchboard_store::OutcomeStore::coverage_signals`]) and each gap's
    /// share of it. A count below the signals (rows added between the two reads) counts the
    /// signals instead.
    pub fn set_interactions(&mut self, interactions: u64) {
        self.interactions = interactions.max(self.signals);
        for gap in &mut self.gaps {
            gap.share = share(gap.volume, self.interactions);
        }
    }
}

fn share(volume: u64, interactions: u64) -> f64 {
    if interactions == 0 {
        0.0
    } else {
        volume as f64 / interactions as f64
    }
}

/// Whether `row` is a gap signal (see the module documentation).
pub fn is_signal(row: &InteractionWithOutcomes, min_score: Option<f64>) -> bool {
    let i = &row.interaction;
    row.outcomes.escalated || i.retrieval_failed || i.refused || low_score(row, min_score)
}

fn low_score(row: &InteractionWithOutcomes, min_score: Option<f64>) -> bool {
    matches!((row.interaction.best_score, min_score), (Some(s), Some(m)) if s < m)
}

/// The gaps among `rows` (any order; rows that are not signals are ignored).
pub fn coverage_gaps(
    rows: &[InteractionWithOutcomes],
    embedder: &dyn Embedder,
    settings: &GapSettings,
) -> Result<GapReport, FlywheelError> {
    let started = Instant::now();
    let rows_total = rows.len() as u64;
    let signals: Vec<&InteractionWithOutcomes> = rows
        .iter()
        .filter(|r| is_signal(r, settings.min_score))
        .collect();
    // Embed each normalised text once.
    let mut text_ids: HashMap<String, usize> = HashMap::new();
    let mut texts: Vec<String> = Vec::new();
    let mut weights: Vec<usize> = Vec::new();
    let row_text: Vec<usize> = signals
        .iter()
        .map(|r| {
            let id = *text_ids
                .entry(normalize_text(&r.interaction.query))
                .or_insert_with(|| {
                    texts.push(r.interaction.query.clone());
                    weights.push(0);
                    texts.len() - 1
                });
            weights[id] += 1;
            id
        })
        .collect();
    let vectors = embed_all(embedder, &texts)?;
    // Leader clustering depends on the order it sees texts in; rows that share a second come
    // back in the order of their random ids. Most frequent first, then by text: the same
    // queries always make the same gaps.
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by(|&a, &b| {
        weights[b]
            .cmp(&weights[a])
            .then_with(|| texts[a].cmp(&texts[b]))
    });
    let sorted: Vec<Vec<f32>> = order.iter().map(|&t| vectors[t].clone()).collect();
    let sorted_weights: Vec<usize> = order.iter().map(|&t| weights[t]).collect();
    let mut clusters = leader_clusters(&sorted, Some(&sorted_weights), settings.threshold);
    let mut assignment = vec![0; texts.len()];
    for (k, &t) in order.iter().enumerate() {
        assignment[t] = clusters.assignment[k];
    }
    clusters.assignment = assignment;

    // Centroids (for the representative) and members per cluster.
    let dim = vectors.first().map_or(0, Vec::len);
    let mut sums = vec![vec![0.0f32; dim]; clusters.len()];
    for (t, v) in vectors.iter().enumerate() {
        let c = clusters.assignment[t];
        for (s, x) in sums[c].iter_mut().zip(v) {
            *s += x * weights[t] as f32;
        }
    }
    let centroids: Vec<Vec<f32>> = sums.into_iter().map(normalized).collect();
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); clusters.len()];
    for (n, &t) in row_text.iter().enumerate() {
        members[clusters.assignment[t]].push(n);
    }

    let mut gaps: Vec<CoverageGap> = members
        .iter()
        .enumerate()
        .filter(|(_, m)| m.len() as u64 >= settings.min_queries.max(1))
        .map(|(c, m)| {
            let rows: Vec<&InteractionWithOutcomes> = m.iter().map(|&n| signals[n]).collect();
            // Distinct texts of the cluster, most frequent first.
            let mut text_counts: BTreeMap<usize, u64> = BTreeMap::new();
            for &n in m {
                *text_counts.entry(row_text[n]).or_default() += 1;
            }
            let representative = text_counts
                .keys()
                .copied()
                .max_by(|&a, &b| {
                    cosine(&vectors[a], &centroids[c])
                        .total_cmp(&cosine(&vectors[b], &centroids[c]))
                        .then(b.cmp(&a))
                })
                .unwrap_or(0);
            let mut by_count: Vec<(usize, u64)> = text_counts.into_iter().collect();
            by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            let mut examples = vec![texts[representative].clone()];
            examples.extend(
                by_count
                    .iter()
                    .filter(|(t, _)| *t != representative)
                    .map(|(t, _)| texts[*t].clone()),
            );
            examples.truncate(settings.examples.max(1));
            let mut documents: BTreeMap<&str, u64> = BTreeMap::new();
            for r in &rows {
                let mut seen: Vec<&str> = r
                    .interaction
                    .retrieved_documents
                    .iter()
                    .map(String::as_str)
                    .collect();
                seen.sort_unstable();
                seen.dedup();
                for d in seen {
                    *documents.entry(d).or_default() += 1;
                }
            }
            let mut documents: Vec<RetrievedDocument> = documents
                .into_iter()
                .map(|(document, interactions)| RetrievedDocument {
                    document: document.to_owned(),
                    interactions,
                })
                .collect();
            documents.sort_by(|a, b| {
                b.interactions
                    .cmp(&a.interactions)
                    .then_with(|| a.document.cmp(&b.document))
            });
            documents.truncate(3);
            let volume = rows.len() as u64;
            let escalated = rows.iter().filter(|r| r.outcomes.escalated).count() as u64;
            let interaction = rows
                .iter()
                .zip(m)
                .filter(|(_, n)| row_text[**n] == representative)
                .max_by_key(|(r, _)| (r.interaction.created_at, r.interaction.id.clone()))
                .map(|(r, _)| r.interaction.id.clone())
                .unwrap_or_default();
            CoverageGap {
                query: texts[representative].clone(),
                interaction,
                volume,
                share: share(volume, rows_total),
                escalated,
                escalation_share: escalated as f64 / volume as f64,
                retrieval_failures: rows
                    .iter()
                    .filter(|r| r.interaction.retrieval_failed)
                    .count() as u64,
                refusals: rows.iter().filter(|r| r.interaction.refused).count() as u64,
                low_score: rows
                    .iter()
                    .filter(|r| low_score(r, settings.min_score))
                    .count() as u64,
                examples,
                documents,
                first_seen: rows
                    .iter()
                    .map(|r| r.interaction.created_at)
                    .min()
                    .unwrap_or(0),
                last_seen: rows
                    .iter()
                    .map(|r| r.interaction.created_at)
                    .max()
                    .unwrap_or(0),
            }
        })
        .collect();
    gaps.sort_by(|a, b| {
        b.volume
            .cmp(&a.volume)
            .then(b.escalated.cmp(&a.escalated))
            .then(b.last_seen.cmp(&a.last_seen))
            .then_with(|| a.query.cmp(&b.query))
    });
    let gaps_found = gaps.len() as u64;
    gaps.truncate(settings.limit);
    Ok(GapReport {
        router: None,
        from: 0,
        until: 0,
        interactions: rows_total,
        signals: signals.len() as u64,
        truncated: false,
        clusters: clusters.len() as u64,
        gaps_found,
        gaps,
        settings: settings.clone(),
        encoder: embedder.model_id(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use switchboard_store::{Interaction, Outcomes};

    use super::*;

    /// Embeds by topic keyword.
    #[derive(Debug)]
    struct Topics;

    impl Embedder for Topics {
        fn dim(&self) -> usize {
            3
        }
        fn model_id(&self) -> String {
            "topics".into()
        }
        fn embed(&self, texts: &[String]) -> switchboard_index::Result<Vec<Vec<f32>>> {
            Ok(texts
                .iter()
                .map(|t| {
                    if t.contains("okta") || t.contains("SSO") {
                        vec![1.0, 0.0, 0.1]
                    } else if t.contains("iceland") {
                        vec![0.0, 1.0, 0.1]
                    } else {
                        vec![0.0, 0.1, 1.0]
                    }
                })
                .collect())
        }
    }

    fn row(
        id: usize,
        query: &str,
        escalated: bool,
        failed: bool,
        score: f64,
        docs: &[&str],
    ) -> InteractionWithOutcomes {
        InteractionWithOutcomes {
            interaction: Interaction {
                id: format!("i{id}"),
                created_at: 1_000 + id as i64,
                query: query.into(),
                retrieval_failed: failed,
                refused: failed,
                best_score: Some(score),
                retrieved_documents: docs.iter().map(|d| (*d).to_owned()).collect(),
                segments: String::new(),
                ..Interaction::default()
            },
            outcomes: Outcomes {
                escalated,
                ..Outcomes::default()
            },
        }
    }

    #[test]
    fn signals_cluster_into_gaps_ranked_by_volume() {
        let rows = vec![
            row(1, "can I log in with okta", true, true, 0.1, &[]),
            row(2, "okta sso setup", true, false, 0.3, &["faq/login.md"]),
            row(3, "Do you support SSO with Okta?", false, true, 0.1, &[]),
            row(4, "can I log in with okta", true, true, 0.1, &[]),
            row(
                5,
                "ship to iceland?",
                true,
                false,
                0.6,
                &["faq/shipping.md"],
            ),
            row(
                6,
                "iceland shipping cost",
                true,
                false,
                0.6,
                &["faq/shipping.md"],
            ),
            // Answered, not escalated, good score: not a signal.
            row(
                7,
                "how do I reset my password",
                false,
                false,
                0.9,
                &["faq/password.md"],
            ),
            row(
                8,
                "how do I reset my password",
                false,
                false,
                0.9,
                &["faq/password.md"],
            ),
            row(
                9,
                "how do I reset my password",
                false,
                false,
                0.9,
                &["faq/password.md"],
            ),
        ];
        let settings = GapSettings {
            min_queries: 2,
            ..GapSettings::default()
        };
        let report = coverage_gaps(&rows, &Topics, &settings).unwrap();
        assert_eq!(report.signals, 6);
        assert_eq!(report.gaps_found, 2);
        let top = &report.gaps[0];
        assert_eq!(top.volume, 4);
        assert!((top.share - 4.0 / 9.0).abs() < 1e-9, "{}", top.share);
        assert_eq!(top.escalated, 3);
        assert!((top.escalation_share - 0.75).abs() < 1e-9);
        assert_eq!(top.retrieval_failures, 3);
        // The most frequent text first among the examples after the representative.
        assert!(top.examples.contains(&"can I log in with okta".to_owned()));
        assert_eq!(top.examples.len(), 3);
        assert_eq!(
            top.documents,
            [RetrievedDocument {
                document: "faq/login.md".into(),
                interactions: 1
            }]
        );
        assert_eq!((top.first_seen, top.last_seen), (1_001, 1_004));
        assert_eq!(report.gaps[1].documents[0].interactions, 2);

        // A score threshold turns well-answered but weakly retrieved queries into signals.
        let scored = coverage_gaps(
            &rows,
            &Topics,
            &GapSettings {
                min_score: Some(0.95),
                min_queries: 3,
                ..GapSettings::default()
            },
        )
        .unwrap();
        assert_eq!(scored.signals, 9);
        assert_eq!(scored.gaps_found, 2, "{:#?}", scored.gaps);
        let password = scored
            .gaps
            .iter()
            .find(|g| g.query.contains("password"))
            .unwrap();
        assert_eq!(
            (password.volume, password.low_score, password.escalated),
            (3, 3, 0)
        );
        // Only the signals were read: the share is of the window's count.
        let mut counted = coverage_gaps(&rows[..6], &Topics, &settings).unwrap();
        assert_eq!(counted.interactions, 6);
        counted.set_interactions(40);
        assert_eq!(counted.interactions, 40);
        assert!((counted.gaps[0].share - 0.1).abs() < 1e-9);
        counted.set_interactions(2);
        assert_eq!(counted.interactions, 6, "never fewer than the signals");
        // Limit and minimum size.
        let one = coverage_gaps(
            &rows,
            &Topics,
            &GapSettings {
                limit: 1,
                min_queries: 5,
                ..GapSettings::default()
            },
        )
        .unwrap();
        assert_eq!((one.gaps_found, one.gaps.len()), (0, 0));
    }
}
