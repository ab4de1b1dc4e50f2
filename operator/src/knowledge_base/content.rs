//! KB rot in a KnowledgeBase's status: stale documents (old *and* still retrieved, measured in
//! Prometheus), contradiction candidates (found by the index build) and coverage gaps (topics
//! the runtimes escalated, found nothing for or refused, from their outcome stores). Pure: the
//! PromQL, the folding of the answers, and the `ContentFresh` / `ContentConsistent` /
//! `ContentCovers` conditions.
//!
//! "Old" is the runtime's `switchboard_document_stale{document}` gauge (1 past the class's
//! `staleAfter`, computed at every scrape from the served generation, so it follows the clock).
//! "Still retrieved" is the document's share of the queries over `spec.staleness.window`:
//! `switchboard_document_retrievals_total{document}` over the searches
//! (`switchboard_retrieval_stage_seconds_count{stage="total"}`: every search, the answer path's
//! included, where `switchboard_retrieval_requests_total` counts only the Retrieve API).
//!
//! Document ids are only unique within a KnowledgeBase, and the runtime's series carry no
//! KnowledgeBase label, so every series is scoped to the runtimes that served a Router using
//! this KnowledgeBase during the window: joined `on (instance, job)` with
//! `switchboard_runtime_config_info{router=...}`, which each runtime exports itself (no
//! dependence on how the scrape is labelled). Several Routers on one KnowledgeBase are summed.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use switchboard_crds::{
    Percent,
    conditions::{self as cond, reasons},
    knowledge_base::{
        ContradictionCandidate, Coverage, CoverageGap, KnowledgeBaseStatus,
        MAX_COVERAGE_GAP_DOCUMENTS, MAX_LISTED_COVERAGE_GAPS, MAX_LISTED_STALE_DOCUMENTS,
        StaleDocument,
    },
};

use crate::{
    context::condition,
    observe::{range, router_matcher},
    ports::{CoverageReport, Sample},
};

/// The three instant queries of a staleness check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaleQueries {
    /// Stale documents whose query share is at least the minimum; value: the share.
    pub stale: String,
    /// Last modification (Unix seconds) of the stale documents.
    pub modified: String,
    /// How many served documents are past `staleAfter`, retrieved or not.
    pub past_stale_after: String,
}

/// The queries for a KnowledgeBase used by `routers` (`namespace/name`, not empty), over
/// `window`, keeping documents with a share of at least `min_share` (a fraction).
pub fn stale_queries(routers: &[String], window: Duration, min_share: f64) -> StaleQueries {
    let w = range(window);
    let scope = format!(
        "max by (instance, job) (max_over_time(switchboard_runtime_config_info{{{}}}{w}))",
        router_matcher(routers)
    );
    let scoped = |expr: &str| format!("({expr}) * on (instance, job) group_left {scope}");
    let hits = format!(
        "sum by (document) ({})",
        scoped(&format!(
            "increase(switchboard_document_retrievals_total{w})"
        ))
    );
    let searches = format!(
        "sum ({})",
        scoped(&format!(
            "increase(switchboard_retrieval_stage_seconds_count{{stage=\"total\"}}{w})"
        ))
    );
    let old = format!(
        "max by (document) ({}) == 1",
        scoped("switchboard_document_stale")
    );
    StaleQueries {
        stale: format!(
            "({hits} / on () group_left {searches}) >= {min_share} and on (document) ({old})"
        ),
        modified: format!(
            "max by (document) ({}) and on (document) ({old})",
            scoped("switchboard_document_last_modified_timestamp_seconds")
        ),
        past_stale_after: format!("count ({old})"),
    }
}

/// What a staleness check found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Staleness {
    /// The Routers measured (`namespace/name`); none: nothing serves the KnowledgeBase.
    pub routers: Vec<String>,
    /// Stale documents at or above the minimum share, largest share first.
    pub documents: Vec<StaleDocument>,
    /// Served documents past `staleAfter`, retrieved or not (when Prometheus said).
    pub past_stale_after: Option<u64>,
}

/// Stale documents from the answers to [`StaleQueries::stale`] (`shares`) and
/// [`StaleQueries::modified`] (`modified`): largest share first, then by name. Samples without a
/// `document` label or with a share that is not a number are ignored.
pub fn stale_documents(shares: &[Sample], modified: &[Sample]) -> Vec<StaleDocument> {
    let modified: BTreeMap<&str, f64> = modified
        .iter()
        .filter_map(|s| Some((s.labels.get("document")?.as_str(), s.value)))
        .collect();
    let mut documents: Vec<(f64, StaleDocument)> = shares
        .iter()
        .filter(|s| s.value.is_finite())
        .filter_map(|s| {
            let document = s.labels.get("document")?;
            let last_modified = modified
                .get(document.as_str())
                .filter(|t| t.is_finite())
                .and_then(|t| Timestamp::from_second(t.round() as i64).ok())
                .map(Time);
            Some((
                s.value,
                StaleDocument {
                    document: document.clone(),
                    query_share: Percent::from_fraction(s.value),
                    last_modified,
                },
            ))
        })
        .collect();
    documents.sort_by(|(x, a), (y, b)| y.total_cmp(x).then_with(|| a.document.cmp(&b.document)));
    documents.into_iter().map(|(_, d)| d).collect()
}

/// Writes a successful check into `status`: the count of all stale documents and the top
/// [`MAX_LISTED_STALE_DOCUMENTS`]. (A failed check leaves the last values in place.)
pub fn fold_staleness(status: &mut KnowledgeBaseStatus, found: &Staleness) {
    status.stale_documents = Some(found.documents.len() as i64);
    status.top_stale_documents = found
        .documents
        .iter()
        .take(MAX_LISTED_STALE_DOCUMENTS)
        .cloned()
        .collect();
}

/// A condition with status `Unknown`.
pub fn unknown(
    type_: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    Condition {
        status: "Unknown".to_owned(),
        ..condition(type_, false, reason, message, generation, now)
    }
}

/// What a content check's condition says before its findings: its type, the reason and words
/// when the measurement failed, and the words when no Router uses the KnowledgeBase.
struct Checked {
    type_: &'static str,
    unavailable: &'static str,
    failed: &'static str,
    unused: &'static str,
}

/// The findings of a content check, or the condition that stands for them: Unknown while no
/// generation is served (`None`) or when the measurement failed, True when `unused` (no Router
/// uses the KnowledgeBase, so there is nothing to find).
fn measured<T>(
    check: Option<&Result<T, String>>,
    unused: impl Fn(&T) -> bool,
    words: Checked,
    generation: Option<i64>,
    now: Timestamp,
) -> Result<&T, Box<Condition>> {
    match check {
        None => Err(Box::new(unknown(
            words.type_,
            reasons::INDEX_BUILDING,
            "no index generation is served yet".to_owned(),
            generation,
            now,
        ))),
        Some(Err(e)) => Err(Box::new(unknown(
            words.type_,
            words.unavailable,
            format!("{}: {e}", words.failed),
            generation,
            now,
        ))),
        Some(Ok(found)) if unused(found) => Err(Box::new(condition(
            words.type_,
            true,
            reasons::RECONCILED,
            words.unused,
            generation,
            now,
        ))),
        Some(Ok(found)) => Ok(found),
    }
}

/// `ContentFresh` from a staleness check (`None`: no generation served yet), with the minimum
/// share and the window for the message.
pub fn freshness_condition(
    check: Option<&Result<Staleness, String>>,
    min_share: &Percent,
    window: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let found = match measured(
        check,
        |f| f.routers.is_empty(),
        Checked {
            type_: cond::CONTENT_FRESH,
            unavailable: reasons::METRICS_UNAVAILABLE,
            failed: "stale documents could not be measured",
            unused: "no Router uses this KnowledgeBase, so no document is retrieved",
        },
        generation,
        now,
    ) {
        Ok(found) => found,
        Err(condition) => return *condition,
    };
    let past = found
        .past_stale_after
        .map(|n| format!(" ({n} served documents are past staleAfter in all)"))
        .unwrap_or_default();
    if found.documents.is_empty() {
        return condition(
            cond::CONTENT_FRESH,
            true,
            reasons::RECONCILED,
            format!(
                "no document past its freshness class's staleAfter answers {min_share} or more \
                 of the queries over {window}{past}"
            ),
            generation,
            now,
        );
    }
    let listed: Vec<String> = found
        .documents
        .iter()
        .take(3)
        .map(|d| format!("{} ({})", d.document, d.query_share))
        .collect();
    let more = found.documents.len().saturating_sub(listed.len());
    condition(
        cond::CONTENT_FRESH,
        false,
        reasons::STALE_DOCUMENTS_FOUND,
        format!(
            "{} documents past their freshness class's staleAfter still answer {min_share} or \
             more of the queries over {window}: {}{}{past}; review them at their source \
             (status.topStaleDocuments)",
            found.documents.len(),
            listed.join(", "),
            and_more(more)
        ),
        generation,
        now,
    )
}

/// ` and 3 more` after a capped list (nothing when none was left out).
fn and_more(more: usize) -> String {
    if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    }
}

/// `ContentConsistent` from the status a build report was folded into.
pub fn consistency_condition(
    status: &KnowledgeBaseStatus,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let (Some(served), Some(count)) = (status.index_generation, status.contradictions) else {
        return unknown(
            cond::CONTENT_CONSISTENT,
            reasons::NOT_CHECKED,
            match status.index_generation {
                Some(g) => format!(
                    "index generation {g} was built without the contradiction check (an older runtime image)"
                ),
                None => "no index generation is served yet".to_owned(),
            },
            generation,
            now,
        );
    };
    if count == 0 {
        return condition(
            cond::CONTENT_CONSISTENT,
            true,
            reasons::RECONCILED,
            format!("no contradiction candidates in index generation {served}"),
            generation,
            now,
        );
    }
    let examples: Vec<String> = status
        .top_contradictions
        .iter()
        .take(2)
        .map(describe_candidate)
        .collect();
    condition(
        cond::CONTENT_CONSISTENT,
        false,
        reasons::CONTRADICTIONS_FOUND,
        format!(
            "{count} contradiction candidates in index generation {served}{}; review them \
             (status.topContradictions, the full list is contradictions.json in the generation)",
            if examples.is_empty() {
                String::new()
            } else {
                format!(", e.g. {}", examples.join("; "))
            }
        ),
        generation,
        now,
    )
}

/// What a coverage check found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CoverageCheck {
    /// The Routers asked (`namespace/name`); none: nothing serves the KnowledgeBase.
    pub routers: Vec<String>,
    /// Gaps at or above `spec.coverage.minShare` (the runtimes already applied `minQueries`),
    /// most queries first.
    pub gaps: Vec<CoverageGap>,
    /// Queries of the Routers over the window, in all.
    pub interactions: u64,
}

/// The gaps of `reports` (one per Router, `namespace/name`) that clear `spec`'s thresholds
/// (`minQueries` again, in case a runtime ignored it, and `minShare`), most queries first, then
/// largest share, then by query.
pub fn coverage_gaps(reports: &[(String, CoverageReport)], spec: &Coverage) -> CoverageCheck {
    let min_share = spec.min_share.fraction();
    let min_queries = u64::try_from(spec.min_queries.max(1)).unwrap_or(1);
    let mut gaps: Vec<(f64, CoverageGap)> = reports
        .iter()
        .flat_map(|(router, report)| {
            report
                .gaps
                .iter()
                .filter(|g| g.volume >= min_queries && g.share.is_finite() && g.share >= min_share)
                .map(move |g| {
                    (
                        g.share,
                        CoverageGap {
                            router: router.clone(),
                            interaction: g.interaction.chars().take(128).collect(),
                            volume: i64::try_from(g.volume).unwrap_or(i64::MAX),
                            share: Percent::from_fraction(g.share),
                            escalated: i64::try_from(g.escalated).unwrap_or(i64::MAX),
                            documents: g
                                .documents
                                .iter()
                                .take(MAX_COVERAGE_GAP_DOCUMENTS)
                                .map(|d| d.document.clone())
                                .collect(),
                            last_seen: Timestamp::from_second(g.last_seen).ok().map(Time),
                        },
                    )
                })
        })
        .collect();
    gaps.sort_by(|(x, a), (y, b)| {
        b.volume
            .cmp(&a.volume)
            .then(y.total_cmp(x))
            .then_with(|| a.router.cmp(&b.router))
            .then_with(|| a.interaction.cmp(&b.interaction))
    });
    CoverageCheck {
        routers: reports.iter().map(|(r, _)| r.clone()).collect(),
        gaps: gaps.into_iter().map(|(_, g)| g).collect(),
        interactions: reports.iter().map(|(_, r)| r.interactions).sum(),
    }
}

/// Writes a successful check into `status`: the count of all gaps and the top
/// [`MAX_LISTED_COVERAGE_GAPS`]. (A failed check leaves the last values in place.)
pub fn fold_coverage(status: &mut KnowledgeBaseStatus, found: &CoverageCheck) {
    status.coverage_gaps = Some(found.gaps.len() as i64);
    status.top_coverage_gaps = found
        .gaps
        .iter()
        .take(MAX_LISTED_COVERAGE_GAPS)
        .cloned()
        .collect();
}

/// `ContentCovers` from a coverage check (`None`: no generation served yet).
pub fn coverage_condition(
    check: Option<&Result<CoverageCheck, String>>,
    spec: &Coverage,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let found = match measured(
        check,
        |f| f.routers.is_empty(),
        Checked {
            type_: cond::CONTENT_COVERS,
            unavailable: reasons::COVERAGE_UNAVAILABLE,
            failed: "coverage gaps could not be read",
            unused: "no Router uses this KnowledgeBase, so no query goes unanswered",
        },
        generation,
        now,
    ) {
        Ok(found) => found,
        Err(condition) => return *condition,
    };
    let thresholds = format!(
        "{} or more escalated, unanswered or refused queries and {} or more of a Router's \
         queries over {}",
        spec.min_queries,
        spec.min_share,
        spec.window.as_str()
    );
    if found.gaps.is_empty() {
        return condition(
            cond::CONTENT_COVERS,
            true,
            reasons::RECONCILED,
            format!(
                "no topic with {thresholds} ({} queries read)",
                found.interactions
            ),
            generation,
            now,
        );
    }
    let listed: Vec<String> = found
        .gaps
        .iter()
        .take(3)
        .map(|g| {
            format!(
                "interaction {} ({} queries, {}{})",
                g.interaction,
                g.volume,
                g.share,
                g.documents
                    .first()
                    .map(|d| format!(", retrieving {d}"))
                    .unwrap_or_default()
            )
        })
        .collect();
    let more = found.gaps.len().saturating_sub(listed.len());
    condition(
        cond::CONTENT_COVERS,
        false,
        reasons::COVERAGE_GAPS_FOUND,
        format!(
            "{} topics with {thresholds}: {}{}; add content for them (status.topCoverageGaps; \
             their questions: the Router's admin API, GET /v1/coverage-gaps)",
            found.gaps.len(),
            listed.join(", "),
            and_more(more)
        ),
        generation,
        now,
    )
}

/// `a "30 days" vs b "14 days"`.
pub fn describe_candidate(c: &ContradictionCandidate) -> String {
    format!(
        "{} {:?} vs {} {:?}",
        c.document, c.value, c.other_document, c.other_value
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap_or_else(|_| unreachable!())
    }

    fn sample(document: &str, value: f64) -> Sample {
        Sample {
            labels: [("document".to_owned(), document.to_owned())].into(),
            value,
        }
    }

    #[test]
    fn queries_scope_every_series_to_the_runtimes_of_the_routers() {
        let q = stale_queries(
            &["support/frontline".to_owned(), "support/vip".to_owned()],
            Duration::from_secs(90 * 86_400),
            0.005,
        );
        let scope = r#"* on (instance, job) group_left max by (instance, job) (max_over_time(switchboard_runtime_config_info{router=~"support/frontline|support/vip"}[7776000s]))"#;
        assert_eq!(
            q.stale,
            format!(
                r#"(sum by (document) ((increase(switchboard_document_retrievals_total[7776000s])) {scope}) / on () group_left sum ((increase(switchboard_retrieval_stage_seconds_count{{stage="total"}}[7776000s])) {scope})) >= 0.005 and on (document) (max by (document) ((switchboard_document_stale) {scope}) == 1)"#
            )
        );
        assert!(q.modified.starts_with(
            "max by (document) ((switchboard_document_last_modified_timestamp_seconds) * on"
        ));
        assert!(q.past_stale_after.starts_with("count (max by (document)"));
        // One Router: an exact match.
        let one = stale_queries(
            &["support/frontline".to_owned()],
            Duration::from_secs(3600),
            0.01,
        );
        assert!(
            one.stale.contains(r#"{router="support/frontline"}[3600s]"#),
            "{}",
            one.stale
        );
    }

    #[test]
    fn stale_documents_are_sorted_by_share_with_their_age_and_capped_in_status() {
        let shares = [
            sample("wiki/Refund-Policy.html", 0.012),
            sample("notes/refund-faq-2024.txt", 0.031),
            sample("slack/x", f64::NAN),
            Sample {
                labels: BTreeMap::new(),
                value: 0.5,
            },
        ];
        let modified = [sample("notes/refund-faq-2024.txt", 1_717_200_000.0)];
        let docs = stale_documents(&shares, &modified);
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].document, "notes/refund-faq-2024.txt");
        assert_eq!(docs[0].query_share.as_str(), "3.1%");
        assert_eq!(
            docs[0].last_modified.as_ref().map(|t| t.0.as_second()),
            Some(1_717_200_000)
        );
        assert_eq!(docs[1].last_modified, None);

        let many: Vec<Sample> = (0..25)
            .map(|i| sample(&format!("d/{i:02}"), 0.01))
            .collect();
        let mut status = KnowledgeBaseStatus::default();
        fold_staleness(
            &mut status,
            &Staleness {
                routers: vec!["support/frontline".to_owned()],
                documents: stale_documents(&many, &[]),
                past_stale_after: Some(30),
            },
        );
        assert_eq!(status.stale_documents, Some(25));
        assert_eq!(status.top_stale_documents.len(), MAX_LISTED_STALE_DOCUMENTS);
        assert_eq!(status.top_stale_documents[0].document, "d/00");
    }

    #[test]
    fn content_fresh_says_what_was_found_or_why_it_is_unknown() {
        let share: Percent = "0.5%".parse().unwrap_or_else(|_| unreachable!());
        let c = |check: Option<&Result<Staleness, String>>| {
            freshness_condition(check, &share, "2160h", Some(4), at(1_800_000_000))
        };
        let none = c(None);
        assert_eq!(
            (none.status.as_str(), none.reason.as_str()),
            ("Unknown", "IndexBuilding")
        );
        let down = c(Some(&Err("connection refused".to_owned())));
        assert_eq!(
            (down.status.as_str(), down.reason.as_str()),
            ("Unknown", reasons::METRICS_UNAVAILABLE)
        );
        assert!(down.message.contains("connection refused"));
        let unused = c(Some(&Ok(Staleness::default())));
        assert_eq!(unused.status, "True");
        assert!(unused.message.contains("no Router"), "{}", unused.message);
        let routers = vec!["support/frontline".to_owned()];
        let fresh = c(Some(&Ok(Staleness {
            routers: routers.clone(),
            documents: Vec::new(),
            past_stale_after: Some(3),
        })));
        assert_eq!(fresh.status, "True");
        assert!(
            fresh
                .message
                .contains("3 served documents are past staleAfter"),
            "{}",
            fresh.message
        );
        let docs = stale_documents(
            &[
                sample("a", 0.04),
                sample("b", 0.03),
                sample("c", 0.02),
                sample("d", 0.01),
            ],
            &[],
        );
        let stale = c(Some(&Ok(Staleness {
            routers,
            documents: docs,
            past_stale_after: Some(5),
        })));
        assert_eq!(
            (stale.status.as_str(), stale.reason.as_str()),
            ("False", reasons::STALE_DOCUMENTS_FOUND)
        );
        assert!(
            stale.message.starts_with("4 documents"),
            "{}",
            stale.message
        );
        assert!(
            stale.message.contains("a (4%), b (3%), c (2%) and 1 more"),
            "{}",
            stale.message
        );
    }

    #[test]
    fn coverage_gaps_of_several_routers_are_thresholded_ranked_and_capped() {
        use crate::ports::ReportedGap;
        let gap = |q: &str, volume: u64, share: f64| ReportedGap {
            query: q.to_owned(),
            interaction: format!("i-{q}"),
            volume,
            share,
            escalated: 1,
            documents: Vec::new(),
            last_seen: 1_800_000_000,
        };
        let spec = Coverage {
            min_queries: 3,
            min_share: "1%".parse().unwrap_or_else(|_| unreachable!()),
            ..Coverage::default()
        };
        let reports = vec![
            (
                "support/frontline".to_owned(),
                CoverageReport {
                    interactions: 1000,
                    signals: 50,
                    gaps: vec![
                        gap("payroll", 20, 0.02),
                        gap("iphone app", 10, 0.01),
                        gap("rare", 2, 0.5),
                        gap("nan", 9, f64::NAN),
                    ],
                },
            ),
            (
                "support/vip".to_owned(),
                CoverageReport {
                    interactions: 100,
                    signals: 30,
                    gaps: vec![gap("payroll", 20, 0.2), gap("tiny share", 5, 0.009)],
                },
            ),
        ];
        let found = coverage_gaps(&reports, &spec);
        let got: Vec<(&str, &str, i64, &str)> = found
            .gaps
            .iter()
            .map(|g| {
                (
                    g.router.as_str(),
                    g.interaction.as_str(),
                    g.volume,
                    g.share.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("support/vip", "i-payroll", 20, "20%"),
                ("support/frontline", "i-payroll", 20, "2%"),
                ("support/frontline", "i-iphone app", 10, "1%"),
            ]
        );
        assert_eq!(found.interactions, 1100);
        let mut many: Vec<ReportedGap> = (0..15).map(|i| gap(&format!("t{i}"), 5, 0.05)).collect();
        many[0].query = "my email is jane@example.com, about ".repeat(10);
        let mut status = KnowledgeBaseStatus::default();
        fold_coverage(
            &mut status,
            &coverage_gaps(
                &[(
                    "support/frontline".to_owned(),
                    CoverageReport {
                        interactions: 100,
                        signals: 75,
                        gaps: many,
                    },
                )],
                &spec,
            ),
        );
        assert_eq!(status.coverage_gaps, Some(15));
        assert_eq!(status.top_coverage_gaps.len(), MAX_LISTED_COVERAGE_GAPS);
        // Counts and ids only: no customer's words in status.
        let written = serde_json::to_string(&status).unwrap_or_default();
        assert!(
            !written.contains("jane") && !written.contains("about"),
            "{written}"
        );
        let c = |check: Option<&Result<CoverageCheck, String>>| {
            coverage_condition(check, &spec, Some(2), at(1_800_000_000))
        };
        assert_eq!(c(None).reason, reasons::INDEX_BUILDING);
        assert_eq!(c(Some(&Ok(CoverageCheck::default()))).status, "True");
        let found = c(Some(&Ok(found)));
        assert_eq!(found.status, "False");
        assert!(
            found.message.starts_with("3 topics with 3 or more")
                && found
                    .message
                    .contains("interaction i-payroll (20 queries, 20%)")
                && !found.message.contains("\"payroll\""),
            "{}",
            found.message
        );
    }

    #[test]
    fn content_consistent_follows_the_folded_build_report() {
        let now = at(1_800_000_000);
        let mut status = KnowledgeBaseStatus::default();
        assert_eq!(
            consistency_condition(&status, Some(1), now).status,
            "Unknown"
        );
        status.index_generation = Some(7);
        let old = consistency_condition(&status, Some(1), now);
        assert_eq!(
            (old.status.as_str(), old.reason.as_str()),
            ("Unknown", reasons::NOT_CHECKED)
        );
        status.contradictions = Some(0);
        assert_eq!(consistency_condition(&status, Some(1), now).status, "True");
        status.contradictions = Some(3);
        status.top_contradictions = vec![ContradictionCandidate {
            kind: "duration".to_owned(),
            document: "wiki/Refund-Policy.html".to_owned(),
            value: "30 days".to_owned(),
            other_document: "policies/refund-policy.md".to_owned(),
            other_value: "14 days".to_owned(),
        }];
        let found = consistency_condition(&status, Some(1), now);
        assert_eq!(
            (found.status.as_str(), found.reason.as_str()),
            ("False", reasons::CONTRADICTIONS_FOUND)
        );
        assert!(
            found.message.contains(
                r#"3 contradiction candidates in index generation 7, e.g. wiki/Refund-Policy.html "30 days" vs policies/refund-policy.md "14 days""#
            ),
            "{}",
            found.message
        );
    }
}
