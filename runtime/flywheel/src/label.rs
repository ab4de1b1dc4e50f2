//! The composite label of an interaction: what its outcomes say about the answer.
//!
//! The rule (docs/training-data.md, "Labels"):
//!
//! - **negative** when it was escalated, or reopened, or rated CSAT 1-2 — whatever its age: a
//!   later outcome cannot make a bad answer good;
//! - **positive** when it was resolved, not reopened, not escalated and either not rated or
//!   rated CSAT 4-5 — *and settled*: at least the settle window (default 72 h, the reopen window
//!   of docs/metrics.md) has passed since it was answered, because a reopen arrives late and
//!   would turn it negative;
//! - **unknown** otherwise: no outcome, CSAT 3, a rating without a resolution, or a positive
//!   that has not settled yet (the record says so: `settled: false`).
//!
//! Refusals and invalid citations are labelled too but do not enter the overall label: they are
//! facts about the answer, not outcomes. A refusal or an answer citing nothing that still came out
//! positive is dropped by the filters ([`crate::filter`]), not relabelled.

use serde::{Deserialize, Serialize};
use switchboard_store::InteractionWithOutcomes;

/// The overall label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overall {
    /// A good answer (SFT target; DPO "chosen").
    Positive,
    /// A bad answer (DPO "rejected").
    Negative,
    /// Not enough signal yet.
    Unknown,
}

impl Overall {
    /// All three, in report order.
    pub const ALL: [Overall; 3] = [Overall::Positive, Overall::Negative, Overall::Unknown];

    /// `positive`, `negative`, `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Positive => "positive",
            Self::Negative => "negative",
            Self::Unknown => "unknown",
        }
    }
}

/// A CSAT rating in three bands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CsatLevel {
    /// 1-2.
    Low,
    /// 3.
    Neutral,
    /// 4-5.
    High,
}

impl CsatLevel {
    /// The band of a rating (`None` for a value outside 1..=5).
    pub fn of(csat: i64) -> Option<Self> {
        match csat {
            1 | 2 => Some(Self::Low),
            3 => Some(Self::Neutral),
            4 | 5 => Some(Self::High),
            _ => None,
        }
    }
}

/// Every label of one record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Labels {
    /// The composite label (the rule is in the module documentation).
    pub overall: Overall,
    /// Why, in words (`resolved, not reopened within 72h, CSAT 5`; `escalated`; `not settled:
    /// answered 5h ago, a reopen may still arrive within 72h`).
    pub reason: String,
    /// At least the settle window old when exported: its outcomes are final enough for a
    /// positive label.
    pub settled: bool,
    /// The helpdesk reported it resolved.
    pub resolved: bool,
    /// Resolved and not reopened (so far: see `settled`).
    pub resolved_without_reopen: bool,
    /// Reopened after being resolved.
    pub reopened: bool,
    /// Handed to a human.
    pub escalated: bool,
    /// CSAT rating (1-5), when one was given.
    pub csat: Option<i64>,
    /// Its band.
    pub csat_level: Option<CsatLevel>,
    /// The answer was a refusal.
    pub refusal: bool,
    /// The answer cited a passage that was not in its prompt.
    pub invalid_citation: bool,
    /// No passage cleared the relevance floor.
    pub retrieval_failed: bool,
    /// Composite quality score: the probability that the answer was good, combining every
    /// signal by its weight ([`quality_score`]; 0.5 = no evidence either way).
    #[serde(default = "half")]
    pub score: f64,
    /// How far the score is from a coin flip, `|2 · score - 1|` (0 = no evidence, 1 = certain):
    /// a trainer's example weight, a curriculum's "low confidence".
    #[serde(default)]
    pub confidence: f64,
}

fn half() -> f64 {
    0.5
}

/// Log-likelihood ratios of "the answer was good" for each outcome signal, summed and squashed
/// into [`Labels::score`] (seed section 12: weight noisy signals rather than discard them):
/// an escalation and a reopen are strong negatives; a CSAT of 1-2 a negative that may be about
/// the support experience rather than the answer; a 5 only a weak positive (polite users rate
/// well answers that did not help); a resolution that stayed resolved past the settle window
/// the strongest positive, one not yet settled a weak one.
pub mod evidence {
    /// Handed to a human.
    pub const ESCALATED: f64 = -2.5;
    /// Reopened after being resolved.
    pub const REOPENED: f64 = -2.0;
    /// CSAT 1.
    pub const CSAT_1: f64 = -1.5;
    /// CSAT 2.
    pub const CSAT_2: f64 = -1.0;
    /// CSAT 4.
    pub const CSAT_4: f64 = 0.4;
    /// CSAT 5.
    pub const CSAT_5: f64 = 0.6;
    /// Resolved and not reopened within the settle window.
    pub const RESOLVED_SETTLED: f64 = 2.0;
    /// Resolved, settle window still open.
    pub const RESOLVED_UNSETTLED: f64 = 0.7;
}

/// The composite score and confidence of a set of outcomes (see [`evidence`]).
pub fn quality_score(
    escalated: bool,
    reopened: bool,
    resolved: bool,
    csat: Option<i64>,
    settled: bool,
) -> (f64, f64) {
    let mut z = 0.0;
    if escalated {
        z += evidence::ESCALATED;
    }
    if reopened {
        z += evidence::REOPENED;
    }
    z += match csat {
        Some(1) => evidence::CSAT_1,
        Some(2) => evidence::CSAT_2,
        Some(4) => evidence::CSAT_4,
        Some(5) => evidence::CSAT_5,
        _ => 0.0,
    };
    if resolved && !reopened {
        z += if settled {
            evidence::RESOLVED_SETTLED
        } else {
            evidence::RESOLVED_UNSETTLED
        };
    }
    let score = 1.0 / (1.0 + (-z).exp());
    (score, (2.0 * score - 1.0).abs())
}

/// `72h`, `90m`, `45s`: the shortest exact form of a number of seconds.
pub fn human_duration(secs: i64) -> String {
    let secs = secs.max(0);
    if secs % 3600 == 0 && secs > 0 {
        format!("{}h", secs / 3600)
    } else if secs % 60 == 0 && secs > 0 {
        format!("{}m", secs / 60)
    } else if secs >= 3600 {
        format!("{}h", secs / 3600)
    } else {
        format!("{secs}s")
    }
}

/// The labels of `row` exported at `now` (Unix seconds) with a settle window of `settle_secs`.
pub fn label(row: &InteractionWithOutcomes, now: i64, settle_secs: i64) -> Labels {
    let (i, o) = (&row.interaction, &row.outcomes);
    let csat = o.csat.filter(|c| (1..=5).contains(c));
    let csat_level = csat.and_then(CsatLevel::of);
    let age = now.saturating_sub(i.created_at);
    let settled = age >= settle_secs;
    let mut negative = Vec::new();
    if o.escalated {
        negative.push("escalated".to_owned());
    }
    if o.reopened {
        negative.push("reopened".to_owned());
    }
    if let (Some(c), Some(CsatLevel::Low)) = (csat, csat_level) {
        negative.push(format!("CSAT {c}"));
    }
    let positive_signal = o.resolved && csat_level.is_none_or(|l| l == CsatLevel::High);
    let (overall, reason) = if !negative.is_empty() {
        (Overall::Negative, negative.join(", "))
    } else if positive_signal && settled {
        let mut why = format!(
            "resolved, not reopened within {}, not escalated",
            human_duration(settle_secs)
        );
        if let Some(c) = csat {
            why.push_str(&format!(", CSAT {c}"));
        }
        (Overall::Positive, why)
    } else if positive_signal {
        (
            Overall::Unknown,
            format!(
                "not settled: answered {} ago, a reopen may still arrive within {}",
                human_duration(age),
                human_duration(settle_secs)
            ),
        )
    } else {
        let why = match (o.resolved, csat) {
            (false, None) => "no outcome reported".to_owned(),
            (true, Some(c)) => format!("resolved but CSAT {c}"),
            (false, Some(c)) => format!("CSAT {c} without a resolution"),
            (true, None) => "resolved".to_owned(),
        };
        (Overall::Unknown, why)
    };
    let (score, confidence) = quality_score(o.escalated, o.reopened, o.resolved, csat, settled);
    Labels {
        score,
        confidence,
        overall,
        reason,
        settled,
        resolved: o.resolved,
        resolved_without_reopen: o.resolved && !o.reopened,
        reopened: o.reopened,
        escalated: o.escalated,
        csat,
        csat_level,
        refusal: i.refused,
        invalid_citation: i.invalid_citation,
        retrieval_failed: i.retrieval_failed,
    }
}

#[cfg(test)]
mod tests {
    use switchboard_store::{Interaction, Outcomes};

    use super::*;

    const NOW: i64 = 1_800_000_000;
    const SETTLE: i64 = 72 * 3600;

    fn row(age: i64, outcomes: Outcomes) -> InteractionWithOutcomes {
        InteractionWithOutcomes {
            interaction: Interaction {
                id: "i".into(),
                created_at: NOW - age,
                ..Interaction::default()
            },
            outcomes,
        }
    }

    fn overall(age: i64, o: Outcomes) -> (Overall, String) {
        let l = label(&row(age, o), NOW, SETTLE);
        (l.overall, l.reason)
    }

    #[test]
    fn the_composite_rule_and_its_reasons() {
        let old = SETTLE + 1;
        let resolved = Outcomes {
            resolved: true,
            ..Outcomes::default()
        };
        assert_eq!(
            overall(old, resolved.clone()),
            (
                Overall::Positive,
                "resolved, not reopened within 72h, not escalated".to_owned()
            )
        );
        let rated = |csat| Outcomes {
            csat: Some(csat),
            ..resolved.clone()
        };
        assert_eq!(overall(old, rated(5)).0, Overall::Positive);
        assert!(overall(old, rated(4)).1.ends_with("CSAT 4"));
        assert_eq!(
            overall(old, rated(3)),
            (Overall::Unknown, "resolved but CSAT 3".to_owned())
        );
        assert_eq!(
            overall(old, rated(2)),
            (Overall::Negative, "CSAT 2".to_owned())
        );
        // Escalated and reopened are negative even when resolved and rated well.
        let mixed = Outcomes {
            escalated: true,
            reopened: true,
            ..rated(5)
        };
        assert_eq!(
            overall(old, mixed),
            (Overall::Negative, "escalated, reopened".to_owned())
        );
        assert_eq!(
            overall(old, Outcomes::default()),
            (Overall::Unknown, "no outcome reported".to_owned())
        );
        // A good rating without a resolution is a weak signal: unknown.
        let only_rated = Outcomes {
            csat: Some(5),
            ..Outcomes::default()
        };
        assert_eq!(overall(old, only_rated).0, Overall::Unknown);
    }

    /// The essay's cases: a 1/5 with an immediate reopen is a confident negative, a 3/5 with
    /// no reopen ambiguous, a lone 5/5 a weak positive; a settled resolution is the strongest
    /// positive and no outcome at all is no evidence.
    #[test]
    fn the_score_weighs_each_signal() {
        let (bad, bad_c) = quality_score(false, true, true, Some(1), true);
        assert!(bad < 0.05 && bad_c > 0.9, "{bad} {bad_c}");
        let (ambiguous, c) = quality_score(false, false, false, Some(3), true);
        assert_eq!((ambiguous, c), (0.5, 0.0));
        let (polite, polite_c) = quality_score(false, false, false, Some(5), true);
        assert!(polite > 0.5 && polite_c < 0.35, "{polite} {polite_c}");
        let (settled, _) = quality_score(false, false, true, None, true);
        let (young, _) = quality_score(false, false, true, None, false);
        assert!(settled > 0.85 && young < settled && young > 0.5);
        let (escalated, _) = quality_score(true, false, false, None, true);
        let (csat2, _) = quality_score(false, false, false, Some(2), true);
        assert!(escalated < csat2 && csat2 < 0.5);
        // Every label carries its score.
        let l = label(
            &row(
                SETTLE + 1,
                Outcomes {
                    resolved: true,
                    csat: Some(5),
                    ..Outcomes::default()
                },
            ),
            NOW,
            SETTLE,
        );
        assert!(l.score > settled && l.confidence > 0.8, "{l:?}");
    }

    #[test]
    fn a_young_interaction_is_never_positive_but_may_be_negative() {
        let young = 5 * 3600;
        let resolved = Outcomes {
            resolved: true,
            csat: Some(5),
            ..Outcomes::default()
        };
        let l = label(&row(young, resolved), NOW, SETTLE);
        assert_eq!(l.overall, Overall::Unknown);
        assert!(!l.settled);
        assert_eq!(
            l.reason,
            "not settled: answered 5h ago, a reopen may still arrive within 72h"
        );
        assert!(l.resolved_without_reopen);
        let escalated = Outcomes {
            escalated: true,
            ..Outcomes::default()
        };
        assert_eq!(overall(young, escalated).0, Overall::Negative);
        // Exactly the settle window old counts as settled.
        assert!(label(&row(SETTLE, Outcomes::default()), NOW, SETTLE).settled);
    }

    #[test]
    fn out_of_range_ratings_are_ignored_and_bands_are_reported() {
        let l = label(
            &row(
                SETTLE * 2,
                Outcomes {
                    resolved: true,
                    csat: Some(9),
                    ..Outcomes::default()
                },
            ),
            NOW,
            SETTLE,
        );
        assert_eq!(
            (l.csat, l.csat_level, l.overall),
            (None, None, Overall::Positive)
        );
        assert_eq!(CsatLevel::of(1), Some(CsatLevel::Low));
        assert_eq!(CsatLevel::of(3), Some(CsatLevel::Neutral));
        assert_eq!(CsatLevel::of(4), Some(CsatLevel::High));
        assert_eq!(human_duration(90 * 60), "90m");
        assert_eq!(human_duration(45), "45s");
    }
}
