//! Anomaly filters: records that are not training material, each dropped under a named rule.
//!
//! Applied in this order, a record counted under the first rule it breaks:
//!
//! | rule | drops |
//! |---|---|
//! | `empty_answer` | an answer with no words |
//! | `garbled_answer` | an answer with replacement or control characters (> 1% of its characters), mostly non-letters (< 30% letters among its non-space characters), or a generation loop (at least 24 words of which fewer than 25% are distinct) |
//! | `extreme_length` | a query shorter than 3 or longer than `max_query_chars` characters, or an answer longer than `max_answer_chars` |
//! | `refusal_labelled_positive` | a refusal whose outcomes came out positive: the helpdesk resolved it some other way, and a refusal is not an answer to imitate |
//! | `uncited_positive` | a positive answer that cites no passage: right by luck or from the model's memory, not grounded |
//! | `invalid_citation_positive` | a positive answer citing a passage that was not in its prompt |
//! | `replayed_query` | the same query (normalised text) from the same unit within `replay_window` of its previous occurrence: a retry, a double submit or a script replaying a conversation (a stream of repeats stays one record however long it lasts); the first is kept (a repeat of a record dropped by an earlier rule is a replay too) |
//! | `unit_cap` | more than `max_per_unit` records from one unit in the export: one user, account or bot must not make up the data set; the first ones (oldest) are kept |
//!
//! Interactions without a unit are never replays or over a cap (nothing ties them together).
//! The near-duplicate step (`near_duplicate`, [`crate::export`]) runs after these.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use switchboard_store::InteractionWithOutcomes;

use crate::label::{Labels, Overall};

/// A reason to drop a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    /// No words in the answer.
    EmptyAnswer,
    /// Replacement/control characters, mostly non-letters, or a generation loop.
    GarbledAnswer,
    /// Query or answer outside the length bounds.
    ExtremeLength,
    /// A refusal labelled positive.
    RefusalLabelledPositive,
    /// A positive answer citing nothing.
    UncitedPositive,
    /// A positive answer with an invalid citation.
    InvalidCitationPositive,
    /// The same query from the same unit shortly after a kept one.
    ReplayedQuery,
    /// Over the per-unit cap.
    UnitCap,
    /// Another record of the same query cluster and label was kept instead (dedup).
    NearDuplicate,
}

impl Rule {
    /// Every rule, in the order they apply.
    pub const ALL: [Rule; 9] = [
        Rule::EmptyAnswer,
        Rule::GarbledAnswer,
        Rule::ExtremeLength,
        Rule::RefusalLabelledPositive,
        Rule::UncitedPositive,
        Rule::InvalidCitationPositive,
        Rule::ReplayedQuery,
        Rule::UnitCap,
        Rule::NearDuplicate,
    ];

    /// The name used in summaries (`snake_case`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EmptyAnswer => "empty_answer",
            Self::GarbledAnswer => "garbled_answer",
            Self::ExtremeLength => "extreme_length",
            Self::RefusalLabelledPositive => "refusal_labelled_positive",
            Self::UncitedPositive => "uncited_positive",
            Self::InvalidCitationPositive => "invalid_citation_positive",
            Self::ReplayedQuery => "replayed_query",
            Self::UnitCap => "unit_cap",
            Self::NearDuplicate => "near_duplicate",
        }
    }
}

/// Bounds of the filters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FilterSettings {
    /// Longest query kept, in characters.
    pub max_query_chars: usize,
    /// Longest answer kept, in characters.
    pub max_answer_chars: usize,
    /// Records kept per unit.
    pub max_per_unit: usize,
    /// A repeat of a unit's query within this many seconds of its previous occurrence is a
    /// replay.
    pub replay_window_secs: i64,
}

impl Default for FilterSettings {
    fn default() -> Self {
        Self {
            max_query_chars: 2_000,
            max_answer_chars: 6_000,
            max_per_unit: 25,
            replay_window_secs: 3_600,
        }
    }
}

/// Shortest query kept, in characters.
pub const MIN_QUERY_CHARS: usize = 3;

/// Whether an answer is garbled (see the module table); `None` when it is fine, else why.
pub fn garbled(answer: &str) -> Option<&'static str> {
    let chars = answer.chars().count().max(1);
    let bad = answer
        .chars()
        .filter(|c| {
            *c == '\u{FFFD}'
                || (c.is_control() && !matches!(c, '\n' | '\t' | '\r'))
                || ('\u{E000}'..='\u{F8FF}').contains(c)
        })
        .count();
    if bad * 100 > chars {
        return Some("replacement or control characters");
    }
    let visible: Vec<char> = answer.chars().filter(|c| !c.is_whitespace()).collect();
    let letters = visible.iter().filter(|c| c.is_alphabetic()).count();
    if !visible.is_empty() && letters * 10 < visible.len() * 3 {
        return Some("mostly non-letters");
    }
    let words: Vec<String> = answer
        .split_whitespace()
        .map(|w| {
            w.trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase()
        })
        .filter(|w| !w.is_empty())
        .collect();
    if words.len() >= 24 {
        let distinct = words.iter().collect::<std::collections::HashSet<_>>().len();
        if distinct * 4 < words.len() {
            return Some("a repetition loop");
        }
    }
    None
}

/// The first of the per-record rules (everything but replays, caps and dedup) that `row`
/// breaks, given its labels.
pub fn record_rule(
    row: &InteractionWithOutcomes,
    labels: &Labels,
    settings: &FilterSettings,
) -> Option<Rule> {
    let i = &row.interaction;
    if i.answer.split_whitespace().next().is_none() {
        return Some(Rule::EmptyAnswer);
    }
    if garbled(&i.answer).is_some() {
        return Some(Rule::GarbledAnswer);
    }
    let query_chars = i.query.trim().chars().count();
    if query_chars < MIN_QUERY_CHARS
        || query_chars > settings.max_query_chars
        || i.answer.chars().count() > settings.max_answer_chars
    {
        return Some(Rule::ExtremeLength);
    }
    if labels.overall == Overall::Positive {
        if i.refused {
            return Some(Rule::RefusalLabelledPositive);
        }
        if i.cited_documents.is_empty() {
            return Some(Rule::UncitedPositive);
        }
        if i.invalid_citation {
            return Some(Rule::InvalidCitationPositive);
        }
    }
    None
}

/// Applies every rule but dedup to `rows` (oldest first) with their `labels`: the rule that
/// dropped each row, `None` for the rows kept.
pub fn apply(
    rows: &[InteractionWithOutcomes],
    labels: &[Labels],
    settings: &FilterSettings,
) -> Vec<Option<Rule>> {
    // Per unit: kept records, and when each normalised query was last asked.
    let mut kept_per_unit: HashMap<&str, usize> = HashMap::new();
    let mut last_query: HashMap<(&str, String), i64> = HashMap::new();
    rows.iter()
        .zip(labels)
        .map(|(row, labels)| {
            let rule = record_rule(row, labels, settings);
            let i = &row.interaction;
            // Without a unit: never a replay nor over a cap.
            let Some(unit) = i.unit.as_deref() else {
                return rule;
            };
            let key = (unit, crate::cluster::normalize_text(&i.query));
            // The previous occurrence, kept or dropped (by any rule): a stream of repeats stays
            // a replay, and a repeat of a dropped record is a replay too.
            let previous = last_query.insert(key, i.created_at);
            if rule.is_some() {
                return rule;
            }
            if let Some(at) = previous
                && i.created_at - at <= settings.replay_window_secs
            {
                return Some(Rule::ReplayedQuery);
            }
            let count = kept_per_unit.entry(unit).or_default();
            if *count >= settings.max_per_unit {
                return Some(Rule::UnitCap);
            }
            *count += 1;
            None
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use switchboard_store::{Interaction, Outcomes};

    use super::*;
    use crate::label::label;

    const NOW: i64 = 1_800_000_000;

    fn row(
        id: &str,
        unit: Option<&str>,
        at: i64,
        query: &str,
        answer: &str,
    ) -> InteractionWithOutcomes {
        InteractionWithOutcomes {
            interaction: Interaction {
                id: id.into(),
                created_at: at,
                unit: unit.map(str::to_owned),
                query: query.into(),
                answer: answer.into(),
                cited_documents: vec!["faq/a.md".into()],
                ..Interaction::default()
            },
            outcomes: Outcomes {
                resolved: true,
                ..Outcomes::default()
            },
        }
    }

    fn run(
        rows: &[InteractionWithOutcomes],
        settings: &FilterSettings,
    ) -> Vec<Option<&'static str>> {
        let labels: Vec<Labels> = rows.iter().map(|r| label(r, NOW, 72 * 3600)).collect();
        apply(rows, &labels, settings)
            .into_iter()
            .map(|r| r.map(Rule::as_str))
            .collect()
    }

    #[test]
    fn broken_answers_are_dropped_by_name() {
        let old = NOW - 100 * 3600;
        let ok = "You can reset it from Settings > Security [1].";
        let mut refusal = row(
            "r",
            None,
            old,
            "how do I fly a plane",
            "I can't help with that.",
        );
        refusal.interaction.refused = true;
        let mut uncited = row("u", None, old, "what is the refund window", ok);
        uncited.interaction.cited_documents.clear();
        let mut invalid = row("v", None, old, "what is the refund window", ok);
        invalid.interaction.invalid_citation = true;
        // The same refusal, escalated (negative): kept, it is a "rejected" example.
        let mut refused_negative = refusal.clone();
        refused_negative.outcomes.escalated = true;
        let rows = vec![
            row("ok", None, old, "reset password", ok),
            row("empty", None, old, "reset password", "  \n "),
            row(
                "fffd",
                None,
                old,
                "reset password",
                "Y\u{FFFD}\u{FFFD}u c\u{FFFD}n",
            ),
            row(
                "digits",
                None,
                old,
                "reset password",
                "1234 5678 9012 [1] ### 42",
            ),
            row(
                "loop",
                None,
                old,
                "reset password",
                &"the answer is ".repeat(20),
            ),
            row("short", None, old, "?", ok),
            row("long", None, old, &"why ".repeat(600), ok),
            refusal,
            uncited,
            invalid,
            refused_negative,
        ];
        assert_eq!(
            run(&rows, &FilterSettings::default()),
            [
                None,
                Some("empty_answer"),
                Some("garbled_answer"),
                Some("garbled_answer"),
                Some("garbled_answer"),
                Some("extreme_length"),
                Some("extreme_length"),
                Some("refusal_labelled_positive"),
                Some("uncited_positive"),
                Some("invalid_citation_positive"),
                None,
            ]
        );
        assert_eq!(garbled(ok), None);
        assert_eq!(garbled("Le délai est de 14 jours [1]."), None);
    }

    #[test]
    fn replays_and_floods_from_one_unit_are_cut() {
        let ok = "Settings > Security > Reset [1].";
        let settings = FilterSettings {
            max_per_unit: 3,
            replay_window_secs: 600,
            ..FilterSettings::default()
        };
        let t = NOW - 200 * 3600;
        let rows = vec![
            row("a1", Some("bot"), t, "Reset my password", ok),
            // The same question again 1 minute later, differently typed: a replay.
            row("a2", Some("bot"), t + 60, "reset my password!", ok),
            // Another user asking the same is not a replay.
            row("b1", Some("alice"), t + 61, "Reset my password", ok),
            // Outside the window it is a new question.
            row("a3", Some("bot"), t + 60 + 601, "reset my password", ok),
            row("a4", Some("bot"), t + 2000, "change my email", ok),
            row("a5", Some("bot"), t + 2001, "delete my account", ok),
            // No unit: never a replay nor capped.
            row("n1", None, t + 2002, "delete my account", ok),
            row("n2", None, t + 2003, "delete my account", ok),
        ];
        assert_eq!(
            run(&rows, &settings),
            [
                None,
                Some("replayed_query"),
                None,
                None,
                None,
                Some("unit_cap"),
                None,
                None
            ]
        );
        // A script repeating one question every 5 minutes for an hour, with a 10-minute
        // window: one record, however long the stream lasts.
        let stream: Vec<InteractionWithOutcomes> = (0..12)
            .map(|n| {
                row(
                    &format!("s{n}"),
                    Some("script"),
                    t + n * 300,
                    "order status",
                    ok,
                )
            })
            .collect();
        let verdicts = run(&stream, &settings);
        assert_eq!(verdicts[0], None);
        assert!(verdicts[1..].iter().all(|v| *v == Some("replayed_query")));
        // A double submit whose first copy was dropped (an uncited positive): the second is
        // still a replay, not a record in its place.
        let mut first = row("d1", Some("carol"), t, "enable 2FA", ok);
        first.interaction.cited_documents.clear();
        let double = vec![first, row("d2", Some("carol"), t + 5, "enable 2FA", ok)];
        assert_eq!(
            run(&double, &settings),
            [Some("uncited_positive"), Some("replayed_query")]
        );
        let names: Vec<&str> = Rule::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), 9);
        assert_eq!(names.last(), Some(&"near_duplicate"));
    }
}
