//! The KnowledgeBase's status, from the previous one and what this reconcile observed (pure):
//! the newest finished build folded in (a new generation served, the one before kept), what
//! runs and what is missing, KB rot and coverage gaps, the conditions, and when to look again.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use switchboard_crds::{
    KnowledgeBase,
    conditions::{self as cond, reasons},
    knowledge_base::{KnowledgeBaseStatus, MAX_LISTED_CONTRADICTIONS},
};

use super::build::BuildReport;
use super::content;
use crate::context::{Intervals, condition, merge_conditions};

/// The newest finished build Job, when it finished since the status last recorded one.
#[derive(Clone, Debug, PartialEq)]
pub enum BuildOutcome {
    /// Nothing finished since the last recorded build.
    Unchanged,
    /// It succeeded; its report.
    Succeeded {
        /// The build report from the pod's termination message.
        report: BuildReport,
        /// When it finished.
        finished_at: Option<Time>,
    },
    /// It failed, or succeeded without a readable report; why.
    Failed {
        /// The sentence for the Degraded condition.
        message: String,
        /// When it finished.
        finished_at: Option<Time>,
    },
}

impl BuildOutcome {
    /// The generation it built, when it succeeded.
    pub fn generation(&self) -> Option<i64> {
        match self {
            Self::Succeeded { report, .. } => Some(report.generation),
            _ => None,
        }
    }
}

/// What one reconcile saw.
#[derive(Debug)]
pub struct Observed<'a> {
    /// The newest build's result.
    pub build: BuildOutcome,
    /// The build Job running (started now, or before).
    pub building: Option<String>,
    /// A ConfigMap, key or claim a source reads that does not exist.
    pub missing_input: Option<&'a crate::error::Error>,
    /// When the scheduled refresh is due.
    pub next_refresh: Option<Timestamp>,
    /// KB rot on the runtimes, when measured (none is served yet: `None`).
    pub freshness: Option<Result<content::Staleness, String>>,
    /// Coverage gaps from the outcome stores, when read.
    pub coverage: Option<Result<content::CoverageCheck, String>>,
}

/// The KnowledgeBase's status after this reconcile, and when to reconcile again.
pub fn status(
    kb: &KnowledgeBase,
    observed: Observed<'_>,
    now: Timestamp,
    intervals: Intervals,
) -> (KnowledgeBaseStatus, Duration) {
    let previous = kb.status.clone().unwrap_or_default();
    let mut status = previous.clone();
    status.observed_generation = kb.metadata.generation;
    status.next_refresh_time = observed.next_refresh.filter(|t| *t > now).map(Time);

    // Fold the newest finished build into status (once: its completion time is recorded).
    let build_failure = match observed.build {
        BuildOutcome::Unchanged => None,
        BuildOutcome::Succeeded {
            report,
            finished_at,
        } => {
            fold_report(&mut status, &report, finished_at);
            None
        }
        BuildOutcome::Failed {
            message,
            finished_at,
        } => {
            status.last_build_time = finished_at;
            Some(message)
        }
    };
    // A failure stays reported until a later build succeeds.
    let failed_before = switchboard_crds::find_condition(&previous.conditions, cond::DEGRADED)
        .filter(|c| c.status == "True" && c.reason == reasons::INDEX_BUILD_FAILED)
        .map(|c| c.message.clone());
    let succeeded_now =
        status.last_build_time != previous.last_build_time && build_failure.is_none();
    let failure = build_failure.or(if succeeded_now { None } else { failed_before });
    let building = observed.building;
    let missing_input = observed.missing_input.map(|e| {
        format!(
            "{e}; no build starts until it does{}",
            status
                .index_generation
                .map(|g| format!(", generation {g} keeps serving"))
                .unwrap_or_default()
        )
    });

    // KB rot (a failed check keeps the last counts; the condition says it is unknown) and
    // coverage gaps (a failed check keeps the last list).
    let freshness = observed.freshness;
    if let Some(Ok(found)) = &freshness {
        content::fold_staleness(&mut status, found);
    }
    let coverage = observed.coverage;
    if let Some(Ok(found)) = &coverage {
        content::fold_coverage(&mut status, found);
    }

    let generation = kb.metadata.generation;
    let has_index = status.index_generation.is_some();
    let source_errors = !status.source_errors.is_empty();
    let mut computed = vec![
        condition(
            cond::READY,
            has_index,
            if has_index {
                reasons::RECONCILED
            } else {
                reasons::INDEX_BUILDING
            },
            match status.index_generation {
                Some(g) => format!("serving index generation {g}"),
                None => "no index generation built yet".to_owned(),
            },
            generation,
            now,
        ),
        condition(
            cond::INDEX_READY,
            has_index,
            if has_index {
                reasons::RECONCILED
            } else {
                reasons::INDEX_BUILDING
            },
            format!(
                "generation {:?}, previous {:?}",
                status.index_generation, status.previous_generation
            ),
            generation,
            now,
        ),
        condition(
            cond::PROGRESSING,
            building.is_some(),
            if building.is_some() {
                reasons::INDEX_BUILDING
            } else {
                reasons::RECONCILED
            },
            building
                .as_ref()
                .map_or_else(String::new, |j| format!("index build {j} running")),
            generation,
            now,
        ),
        match &missing_input {
            Some(message) => condition(
                cond::SOURCES_HEALTHY,
                false,
                reasons::REFERENCE_NOT_FOUND,
                message.clone(),
                generation,
                now,
            ),
            None => condition(
                cond::SOURCES_HEALTHY,
                !source_errors,
                if source_errors {
                    reasons::SOURCE_ERRORS
                } else {
                    reasons::RECONCILED
                },
                status
                    .source_errors
                    .iter()
                    .map(|e| {
                        format!(
                            "{}{}: {} {}",
                            e.source,
                            e.file
                                .as_deref()
                                .map(|f| format!("/{f}"))
                                .unwrap_or_default(),
                            e.reason,
                            e.message
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
                generation,
                now,
            ),
        },
    ];
    computed.push(match (&missing_input, &failure) {
        (Some(message), _) => condition(
            cond::DEGRADED,
            true,
            reasons::REFERENCE_NOT_FOUND,
            message.clone(),
            generation,
            now,
        ),
        (None, Some(message)) => condition(
            cond::DEGRADED,
            true,
            reasons::INDEX_BUILD_FAILED,
            match status.index_generation {
                Some(g) => format!("{message}; generation {g} keeps serving"),
                None => message.clone(),
            },
            generation,
            now,
        ),
        (None, None) if source_errors => condition(
            cond::DEGRADED,
            true,
            reasons::SOURCE_ERRORS,
            format!(
                "{} sources failed in the last build",
                status.source_errors.len()
            ),
            generation,
            now,
        ),
        (None, None) => condition(
            cond::DEGRADED,
            false,
            reasons::RECONCILED,
            "",
            generation,
            now,
        ),
    });
    computed.push(content::freshness_condition(
        freshness.as_ref(),
        &kb.spec.staleness.min_query_share,
        kb.spec.staleness.window.as_str(),
        generation,
        now,
    ));
    computed.push(content::consistency_condition(&status, generation, now));
    computed.push(content::coverage_condition(
        coverage.as_ref(),
        &kb.spec.coverage,
        generation,
        now,
    ));
    status.conditions = merge_conditions(&previous.conditions, computed);

    let requeue = if building.is_some() {
        intervals.settling
    } else {
        observed
            .next_refresh
            .filter(|t| *t > now)
            .and_then(|t| Duration::try_from(t.duration_since(now)).ok())
            .map_or(intervals.resync, |d| d.min(intervals.resync))
    };
    (status, requeue.max(Duration::from_secs(1)))
}

/// Records a successful build: the new generation is served, the one before is kept for
/// switching back.
pub fn fold_report(
    status: &mut KnowledgeBaseStatus,
    report: &BuildReport,
    finished_at: Option<Time>,
) {
    if status.index_generation != Some(report.generation) {
        status.previous_generation = status.index_generation.filter(|g| *g < report.generation);
    }
    status.index_generation = Some(report.generation);
    status.documents = Some(report.documents);
    status.chunks = Some(report.chunks);
    status.contradictions = report.contradictions.as_ref().map(|c| c.count);
    status.top_contradictions = report
        .contradictions
        .iter()
        .flat_map(|c| &c.top)
        .take(MAX_LISTED_CONTRADICTIONS)
        .map(super::build::ReportedContradiction::candidate)
        .collect();
    status.source_errors.clone_from(&report.source_errors);
    status.last_build_time = finished_at;
}

#[cfg(test)]
mod tests {
    use switchboard_crds::find_condition;

    use super::*;

    fn kb(status: Option<KnowledgeBaseStatus>) -> KnowledgeBase {
        let mut kb: KnowledgeBase = serde_json::from_value(serde_json::json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "KnowledgeBase",
            "metadata": {"name": "help", "namespace": "support", "generation": 1},
            "spec": {"sources": [{"name": "faq", "format": "Markdown", "inline": {"a.md": "# A"}}]},
        }))
        .unwrap();
        kb.status = status;
        kb
    }

    fn report(generation: i64) -> BuildReport {
        serde_json::from_value(serde_json::json!({
            "generation": generation, "documents": 4, "chunks": 12,
        }))
        .unwrap()
    }

    const INTERVALS: Intervals = Intervals {
        settling: Duration::from_secs(60),
        resync: Duration::from_secs(300),
    };

    fn observed(build: BuildOutcome) -> Observed<'static> {
        Observed {
            build,
            building: None,
            missing_input: None,
            next_refresh: None,
            freshness: None,
            coverage: None,
        }
    }

    /// A failed build keeps the served generation and says so until a later build succeeds; a
    /// success serves the new generation and keeps the one before for switching back.
    #[test]
    fn a_failed_build_keeps_serving_and_a_later_success_clears_it() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let at = |s: i64| Some(Time(Timestamp::from_second(s).unwrap()));
        let (first, _) = status(
            &kb(None),
            observed(BuildOutcome::Succeeded {
                report: report(3),
                finished_at: at(100),
            }),
            now,
            INTERVALS,
        );
        assert_eq!(first.index_generation, Some(3));
        let ready = find_condition(&first.conditions, cond::READY).unwrap();
        assert_eq!(ready.status, "True");

        let (failed, _) = status(
            &kb(Some(first.clone())),
            observed(BuildOutcome::Failed {
                message: "build help-index-b-2 failed: BackoffLimitExceeded".into(),
                finished_at: at(200),
            }),
            now,
            INTERVALS,
        );
        let degraded = find_condition(&failed.conditions, cond::DEGRADED).unwrap();
        assert_eq!(degraded.reason, reasons::INDEX_BUILD_FAILED);
        assert!(
            degraded.message.ends_with("generation 3 keeps serving"),
            "{}",
            degraded.message
        );
        assert_eq!(failed.index_generation, Some(3));

        // Nothing new finished: the failure stays reported.
        let (still, _) = status(
            &kb(Some(failed.clone())),
            observed(BuildOutcome::Unchanged),
            now,
            INTERVALS,
        );
        let degraded = find_condition(&still.conditions, cond::DEGRADED).unwrap();
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", reasons::INDEX_BUILD_FAILED)
        );

        let (fixed, requeue) = status(
            &kb(Some(still)),
            observed(BuildOutcome::Succeeded {
                report: report(4),
                finished_at: at(300),
            }),
            now,
            INTERVALS,
        );
        assert_eq!(
            (fixed.index_generation, fixed.previous_generation),
            (Some(4), Some(3))
        );
        assert_eq!(
            find_condition(&fixed.conditions, cond::DEGRADED)
                .unwrap()
                .status,
            "False"
        );
        assert_eq!(requeue, INTERVALS.resync);
    }
}
