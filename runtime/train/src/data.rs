//! Training data: JSONL files of SFT examples, DPO preference pairs, or the flywheel export of
//! the outcome store (interactions joined with their outcomes), turned into [`SftExample`]s and
//! [`DpoPair`]s.
//!
//! One JSON object per line (blank lines are skipped). A row is recognised by its fields:
//!
//! | row | fields |
//! |---|---|
//! | SFT | `messages` (or `prompt`) and `completion`; or `messages` ending with an `assistant` turn |
//! | DPO | `messages` (or `prompt`), `chosen`, `rejected` |
//! | flywheel export | a `switchboard.flywheel/v1` record (`format`, `query`, `answer`, `labels`, `cluster`) |
//! | outcome store | an `InteractionWithOutcomes` (`switchboard-store`): `query`, `answer`, `outcomes`, ... |
//!
//! `prompt` is a string (one user turn) or a list of `{role, content}` messages; `completion`,
//! `chosen` and `rejected` are strings or a list holding one assistant message (TRL's
//! conversational form).
//!
//! **Flywheel rows.** Records of the flywheel export (`switchboard-runtime export`,
//! docs/training-data.md) are used as the export labelled, filtered and deduplicated them:
//! `labels.overall` (`positive` / `negative` / `unknown`) and `cluster.id` (one question). Raw
//! outcome-store rows are labelled here ([`LabelPolicy`]): *positive* when resolved, not
//! reopened, not escalated, rated CSAT >= 4 and citing no invalid passage; *negative* when
//! escalated or reopened or rated CSAT <= 2; otherwise unused; their question is the
//! normalised query text ([`question_key`]). Either way, rows where retrieval failed are never
//! used (the fixed refusal: no model answered) and unlabelled rows are unused. **SFT** takes
//! one positive answer per question (the best rated, then the latest); **DPO** pairs, for each
//! question answered at least once positively and once negatively, the best positive answer
//! (chosen) with the worst negative one (rejected: most of escalated/reopened, then lowest CSAT,
//! then latest). One example per question keeps the most frequent questions from dominating the
//! adapter. The prompt is the row's `messages` when it carries the prompt the model saw, else
//! the query as one user turn (the store keeps the query, not the retrieved passages).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;
use switchboard_model::chat::ChatMessage;
use switchboard_store::InteractionWithOutcomes;

use crate::error::{Result, TrainError};

/// One supervised example: answer `completion` to the conversation `messages`.
#[derive(Debug, Clone, PartialEq)]
pub struct SftExample {
    /// The conversation up to the answer (system / user / assistant turns).
    pub messages: Vec<ChatMessage>,
    /// The answer to learn.
    pub completion: String,
    /// Where it came from (`line 12`, `interaction 7f3a…`), for messages.
    pub origin: String,
    /// Which of a hot-fix's sets it belongs to.
    pub set: DataSet,
}

/// The three sets of a hot-fix (seed section 6), each measured on its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum DataSet {
    /// `--data`: the behaviour to learn (the new policy, the corrected answers).
    #[default]
    Fix,
    /// `--negative-rejection`: questions about the old behaviour, answered by saying it changed.
    NegativeRejection,
    /// `--anchors`: good answers unrelated to the change, to keep and to detect regression on.
    Anchor,
}

impl DataSet {
    /// `fix`, `negativeRejection`, `anchor`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fix => "fix",
            Self::NegativeRejection => "negativeRejection",
            Self::Anchor => "anchor",
        }
    }
}

/// One preference pair: `chosen` is the better answer to `messages` than `rejected`.
#[derive(Debug, Clone, PartialEq)]
pub struct DpoPair {
    /// The conversation up to the answer.
    pub messages: Vec<ChatMessage>,
    /// The preferred answer.
    pub chosen: String,
    /// The dispreferred answer.
    pub rejected: String,
    /// Where it came from.
    pub origin: String,
    /// What the preference teaches (`tone`, `brandVoice`, `refusal`, ...: the row's `kind`,
    /// else `general`): held-out metrics are reported per kind (seed section 3).
    pub kind: String,
}

/// The flywheel export's record format this trainer reads (`switchboard-flywheel`'s
/// `record::FORMAT`; docs/training-data.md).
pub const EXPORT_FORMAT: &str = "switchboard.flywheel/v1";

/// An answered interaction from the flywheel: an export record or an outcome-store row.
#[derive(Debug, Clone, PartialEq)]
pub struct FlywheelRow {
    /// 1-based line of the file.
    pub line: usize,
    /// Interaction id.
    pub id: String,
    /// When it was answered (Unix seconds).
    pub created_at: i64,
    /// The customer's message.
    pub query: String,
    /// The answer returned.
    pub answer: String,
    /// The prompt the model saw, when the row carries it (`messages`).
    pub messages: Option<Vec<ChatMessage>>,
    /// CSAT rating, when one was given.
    pub csat: Option<i64>,
    /// Escalated and reopened signals (0-2): how bad a negative is.
    pub negative_signals: u8,
    /// No passage cleared the relevance floor: the fixed refusal, no model answered.
    pub retrieval_failed: bool,
    /// Where the label comes from.
    pub source: FlywheelSource,
}

/// How a flywheel row is labelled and grouped by question.
#[derive(Debug, Clone, PartialEq)]
pub enum FlywheelSource {
    /// A `switchboard.flywheel/v1` export record: labelled (`labels.overall`), filtered and
    /// deduplicated by the export; `cluster.id` names its question.
    Export {
        /// The export's composite label.
        label: Label,
        /// Its query cluster (the same question).
        cluster: u64,
    },
    /// An outcome-store row (`InteractionWithOutcomes`): labelled here by [`LabelPolicy`],
    /// grouped by [`question_key`].
    Store {
        /// Its outcomes.
        outcomes: switchboard_store::Outcomes,
        /// The answer cited a passage that was not in its prompt.
        invalid_citation: bool,
    },
}

/// A `switchboard.flywheel/v1` record: the fields the trainer reads (the format only ever adds
/// fields; unknown ones are ignored).
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExportRecord {
    id: String,
    created_at: i64,
    query: String,
    answer: String,
    labels: ExportLabels,
    cluster: ExportCluster,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExportLabels {
    overall: String,
    #[serde(default)]
    csat: Option<i64>,
    #[serde(default)]
    escalated: bool,
    #[serde(default)]
    reopened: bool,
    #[serde(default)]
    retrieval_failed: bool,
}

#[derive(Debug, serde::Deserialize)]
struct ExportCluster {
    id: u64,
}

/// A parsed line.
#[derive(Debug, Clone)]
pub enum Row {
    /// An SFT example.
    Sft(SftExample),
    /// A DPO pair.
    Dpo(DpoPair),
    /// A flywheel interaction.
    Interaction(Box<FlywheelRow>),
}

/// How outcome-store rows are labelled (export records carry their own label).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LabelPolicy {
    /// Lowest CSAT of a positive interaction (the rating is required).
    pub min_positive_csat: i64,
    /// Highest CSAT that makes an interaction negative on its own.
    pub max_negative_csat: i64,
}

impl Default for LabelPolicy {
    fn default() -> Self {
        Self {
            min_positive_csat: 4,
            max_negative_csat: 2,
        }
    }
}

/// The label of a flywheel interaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label {
    /// Good answer: learn it (SFT) or prefer it (DPO).
    Positive,
    /// Bad answer: only ever the rejected side of a pair.
    Negative,
    /// Ambiguous or not reported yet: unused.
    Unlabelled,
}

impl LabelPolicy {
    /// Labels one interaction (see the module documentation).
    pub fn label(&self, row: &FlywheelRow) -> Label {
        match &row.source {
            FlywheelSource::Export { label, .. } => *label,
            FlywheelSource::Store {
                outcomes: o,
                invalid_citation,
            } => {
                if o.escalated || o.reopened || o.csat.is_some_and(|c| c <= self.max_negative_csat)
                {
                    Label::Negative
                } else if o.resolved
                    && o.csat.is_some_and(|c| c >= self.min_positive_csat)
                    && !invalid_citation
                {
                    Label::Positive
                } else {
                    Label::Unlabelled
                }
            }
        }
    }
}

impl FlywheelRow {
    /// Which question it answers: the export's cluster, else the normalised query.
    pub fn question(&self) -> String {
        match &self.source {
            FlywheelSource::Export { cluster, .. } => format!("cluster {cluster}"),
            FlywheelSource::Store { .. } => question_key(&self.query),
        }
    }

    fn from_export(value: Value, line: usize) -> std::result::Result<Self, String> {
        let messages = value
            .get("messages")
            .map(|m| messages(m, "messages"))
            .transpose()?;
        let r: ExportRecord = serde_json::from_value(value)
            .map_err(|e| format!("not a {EXPORT_FORMAT} record: {e}"))?;
        let label = match r.labels.overall.as_str() {
            "positive" => Label::Positive,
            "negative" => Label::Negative,
            _ => Label::Unlabelled,
        };
        Ok(Self {
            line,
            id: r.id,
            created_at: r.created_at,
            query: r.query,
            answer: r.answer,
            messages,
            csat: r.labels.csat,
            negative_signals: u8::from(r.labels.escalated) + u8::from(r.labels.reopened),
            retrieval_failed: r.labels.retrieval_failed,
            source: FlywheelSource::Export {
                label,
                cluster: r.cluster.id,
            },
        })
    }

    fn from_store(value: Value, line: usize) -> std::result::Result<Self, String> {
        let messages = value
            .get("messages")
            .map(|m| messages(m, "messages"))
            .transpose()?;
        let row: InteractionWithOutcomes = serde_json::from_value(value)
            .map_err(|e| format!("not an interaction of the outcome store: {e}"))?;
        let (i, o) = (row.interaction, row.outcomes);
        Ok(Self {
            line,
            id: i.id,
            created_at: i.created_at,
            query: i.query,
            answer: i.answer,
            messages,
            csat: o.csat,
            negative_signals: u8::from(o.escalated) + u8::from(o.reopened),
            retrieval_failed: i.retrieval_failed,
            source: FlywheelSource::Store {
                outcomes: o,
                invalid_citation: i.invalid_citation,
            },
        })
    }
}

/// What the data held and what was made of it (part of the training report).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DataStats {
    /// The file read.
    pub file: PathBuf,
    /// Non-blank lines.
    pub lines: usize,
    /// Plain SFT rows.
    pub sft_rows: usize,
    /// Plain DPO rows.
    pub dpo_rows: usize,
    /// Flywheel interactions, when the file is an export.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flywheel: Option<FlywheelStats>,
    /// Examples (SFT) or pairs (DPO) made from the file.
    pub examples: usize,
}

/// How a flywheel export was mapped.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FlywheelStats {
    /// Interactions read.
    pub interactions: usize,
    /// Skipped: retrieval failed, no model answered.
    pub no_model_answer: usize,
    /// Labelled positive.
    pub positive: usize,
    /// Labelled negative.
    pub negative: usize,
    /// Neither (unused).
    pub unlabelled: usize,
    /// Distinct questions (normalised) among the labelled interactions.
    pub questions: usize,
    /// Positive interactions dropped as repeats of a question already used (SFT).
    pub duplicates_dropped: usize,
    /// Questions with a positive and a negative answer (DPO pairs).
    pub questions_with_both: usize,
}

/// Reads every row of a JSONL file; the first bad line is an error naming it.
pub fn read_rows(path: &Path) -> Result<(Vec<Row>, usize)> {
    let text = std::fs::read_to_string(path).map_err(TrainError::io(path))?;
    let mut rows = Vec::new();
    let mut lines = 0;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        lines += 1;
        let bad = |message: String| TrainError::Data {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        };
        let value: Value = serde_json::from_str(line).map_err(|e| bad(format!("not JSON: {e}")))?;
        rows.push(parse_row(value, i + 1).map_err(bad)?);
    }
    Ok((rows, lines))
}

/// Parses one row (see the module documentation).
pub fn parse_row(value: Value, line: usize) -> std::result::Result<Row, String> {
    let Value::Object(map) = &value else {
        return Err("a row must be a JSON object".to_owned());
    };
    let origin = format!("line {line}");
    if let Some(format) = map.get("format") {
        if format.as_str() != Some(EXPORT_FORMAT) {
            return Err(format!(
                "flywheel export format {format} is not one this trainer reads ({EXPORT_FORMAT})"
            ));
        }
        return Ok(Row::Interaction(Box::new(FlywheelRow::from_export(
            value, line,
        )?)));
    }
    if map.contains_key("outcomes") {
        return Ok(Row::Interaction(Box::new(FlywheelRow::from_store(
            value, line,
        )?)));
    }
    let prompt = match (map.get("messages"), map.get("prompt")) {
        (Some(_), Some(_)) => return Err("give `messages` or `prompt`, not both".to_owned()),
        (Some(m), None) => Some(messages(m, "messages")?),
        (None, Some(Value::String(p))) => Some(vec![ChatMessage::user(p.clone())]),
        (None, Some(p)) => Some(messages(p, "prompt")?),
        (None, None) => None,
    };
    if map.contains_key("chosen") || map.contains_key("rejected") {
        let prompt = prompt.ok_or("a DPO pair needs `messages` or `prompt`")?;
        let answer = |field: &str| -> std::result::Result<String, String> {
            answer_text(
                map.get(field).ok_or(format!(
                    "a DPO pair needs `chosen` and `rejected`; `{field}` is missing"
                ))?,
                field,
            )
        };
        let (chosen, rejected) = (answer("chosen")?, answer("rejected")?);
        if chosen == rejected {
            return Err("`chosen` and `rejected` are the same answer".to_owned());
        }
        check_prompt(&prompt)?;
        let kind = match map.get("kind") {
            None | Some(Value::Null) => "general".to_owned(),
            Some(Value::String(k)) if !k.trim().is_empty() => k.trim().to_owned(),
            Some(other) => return Err(format!("`kind` must be a non-empty string, got {other}")),
        };
        return Ok(Row::Dpo(DpoPair {
            messages: prompt,
            chosen,
            rejected,
            origin,
            kind,
        }));
    }
    let Some(mut prompt) = prompt else {
        return Err("expected an SFT example (`messages` or `prompt`, and `completion`), a DPO pair (`chosen`, `rejected`) or a flywheel interaction (`outcomes`)".to_owned());
    };
    let completion = match map.get("completion") {
        Some(c) => answer_text(c, "completion")?,
        None => match prompt.last() {
            Some(last) if last.role == "assistant" => {
                let answer = last.content.clone();
                prompt.pop();
                answer
            }
            _ => {
                return Err(
                    "an SFT example needs `completion` (or `messages` ending with an assistant turn)"
                        .to_owned(),
                );
            }
        },
    };
    if completion.trim().is_empty() {
        return Err("the completion is empty".to_owned());
    }
    check_prompt(&prompt)?;
    Ok(Row::Sft(SftExample {
        messages: prompt,
        completion,
        origin,
        set: DataSet::Fix,
    }))
}

fn check_prompt(messages: &[ChatMessage]) -> std::result::Result<(), String> {
    if !messages.iter().any(|m| m.role == "user") {
        return Err("the prompt has no user turn".to_owned());
    }
    Ok(())
}

fn messages(value: &Value, field: &str) -> std::result::Result<Vec<ChatMessage>, String> {
    let list = value.as_array().ok_or(format!(
        "`{field}` must be a list of {{role, content}} messages"
    ))?;
    if list.is_empty() {
        return Err(format!("`{field}` is empty"));
    }
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let text = |key: &str| {
                m.get(key)
                    .and_then(Value::as_str)
                    .ok_or(format!("`{field}[{i}].{key}` must be a string"))
            };
            let role = text("role")?;
            if !matches!(role, "system" | "user" | "assistant") {
                return Err(format!(
                    "`{field}[{i}].role` is `{role}` (system, user or assistant)"
                ));
            }
            Ok(ChatMessage::new(role, text("content")?))
        })
        .collect()
}

fn answer_text(value: &Value, field: &str) -> std::result::Result<String, String> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Array(list) => match &list[..] {
            [one] if one.get("role").and_then(Value::as_str) == Some("assistant") => one
                .get("content")
                .and_then(Value::as_str)
                .ok_or(format!("`{field}[0].content` must be a string"))?
                .to_owned(),
            _ => {
                return Err(format!(
                    "`{field}` as a list must hold one assistant message"
                ));
            }
        },
        _ => return Err(format!("`{field}` must be a string")),
    };
    if text.trim().is_empty() {
        return Err(format!("`{field}` is empty"));
    }
    Ok(text)
}

/// A question's key for deduplication: lowercase letters and digits, words separated by one
/// space (`"How do I reset my password?"` == `"how do i reset my  password"`).
pub fn question_key(text: &str) -> String {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

fn prompt_of(row: &FlywheelRow) -> Vec<ChatMessage> {
    row.messages
        .clone()
        .unwrap_or_else(|| vec![ChatMessage::user(row.query.clone())])
}

/// Labelled flywheel interactions grouped by question (in first-seen order).
struct Grouped<'a> {
    stats: FlywheelStats,
    questions: Vec<(String, Vec<(&'a FlywheelRow, Label)>)>,
}

fn group<'a>(rows: &[&'a FlywheelRow], policy: &LabelPolicy) -> Grouped<'a> {
    let mut stats = FlywheelStats {
        interactions: rows.len(),
        ..FlywheelStats::default()
    };
    let mut order: Vec<String> = Vec::new();
    let mut by_key: BTreeMap<String, Vec<(&FlywheelRow, Label)>> = BTreeMap::new();
    for row in rows {
        if row.retrieval_failed {
            stats.no_model_answer += 1;
            continue;
        }
        let label = policy.label(row);
        match label {
            Label::Positive => stats.positive += 1,
            Label::Negative => stats.negative += 1,
            Label::Unlabelled => {
                stats.unlabelled += 1;
                continue;
            }
        }
        let key = row.question();
        if !by_key.contains_key(&key) {
            order.push(key.clone());
        }
        by_key.entry(key).or_default().push((row, label));
    }
    stats.questions = order.len();
    let questions = order
        .into_iter()
        .map(|k| {
            let v = by_key.remove(&k).unwrap_or_default();
            (k, v)
        })
        .collect();
    Grouped { stats, questions }
}

/// Best first: highest CSAT, then latest.
fn best_positive<'a>(rows: &[&'a FlywheelRow]) -> Option<&'a FlywheelRow> {
    rows.iter()
        .copied()
        .max_by_key(|r| (r.csat.unwrap_or(0), r.created_at, std::cmp::Reverse(r.line)))
}

/// Worst first: escalated and reopened, then lowest CSAT, then latest.
fn worst_negative<'a>(rows: &[&'a FlywheelRow]) -> Option<&'a FlywheelRow> {
    rows.iter().copied().max_by_key(|r| {
        (
            r.negative_signals,
            std::cmp::Reverse(r.csat.unwrap_or(3)),
            r.created_at,
            std::cmp::Reverse(r.line),
        )
    })
}

/// SFT examples from rows: plain SFT rows as they are; flywheel interactions labelled positive,
/// one per question. DPO rows are refused (the mode is `dpo`).
pub fn sft_examples(
    path: &Path,
    rows: Vec<Row>,
    lines: usize,
    policy: &LabelPolicy,
) -> Result<(Vec<SftExample>, DataStats)> {
    let mut stats = DataStats {
        file: path.to_path_buf(),
        lines,
        ..DataStats::default()
    };
    let mut examples = Vec::new();
    let mut interactions = Vec::new();
    for row in &rows {
        match row {
            Row::Sft(e) => {
                stats.sft_rows += 1;
                examples.push(e.clone());
            }
            Row::Dpo(p) => {
                return Err(TrainError::Data {
                    path: path.to_path_buf(),
                    line: p.origin.trim_start_matches("line ").parse().unwrap_or(0),
                    message: "a DPO pair (`chosen`/`rejected`) in SFT data: train it with `switchboard-train dpo`".to_owned(),
                });
            }
            Row::Interaction(r) => interactions.push(r.as_ref()),
        }
    }
    if !interactions.is_empty() {
        let grouped = group(&interactions, policy);
        let mut fw = grouped.stats;
        for (_, answers) in &grouped.questions {
            let positives: Vec<&FlywheelRow> = answers
                .iter()
                .filter(|(_, l)| *l == Label::Positive)
                .map(|(r, _)| *r)
                .collect();
            if let Some(best) = best_positive(&positives) {
                fw.duplicates_dropped += positives.len() - 1;
                examples.push(SftExample {
                    messages: prompt_of(best),
                    completion: best.answer.clone(),
                    origin: format!("line {} (interaction {})", best.line, best.id),
                    set: DataSet::Fix,
                });
            }
        }
        stats.flywheel = Some(fw);
    }
    stats.examples = examples.len();
    Ok((examples, stats))
}

/// DPO pairs from rows: plain DPO rows as they are; from flywheel interactions, one pair per
/// question with a positive and a negative answer. SFT rows are refused (the mode is `sft`).
pub fn dpo_pairs(
    path: &Path,
    rows: Vec<Row>,
    lines: usize,
    policy: &LabelPolicy,
) -> Result<(Vec<DpoPair>, DataStats)> {
    let mut stats = DataStats {
        file: path.to_path_buf(),
        lines,
        ..DataStats::default()
    };
    let mut pairs = Vec::new();
    let mut interactions = Vec::new();
    for row in &rows {
        match row {
            Row::Dpo(p) => {
                stats.dpo_rows += 1;
                pairs.push(p.clone());
            }
            Row::Sft(e) => {
                return Err(TrainError::Data {
                    path: path.to_path_buf(),
                    line: e.origin.trim_start_matches("line ").parse().unwrap_or(0),
                    message: "an SFT example (no `chosen`/`rejected`) in DPO data: train it with `switchboard-train sft`".to_owned(),
                });
            }
            Row::Interaction(r) => interactions.push(r.as_ref()),
        }
    }
    if !interactions.is_empty() {
        let grouped = group(&interactions, policy);
        let mut fw = grouped.stats;
        for (_, answers) in &grouped.questions {
            let of = |label: Label| -> Vec<&FlywheelRow> {
                answers
                    .iter()
                    .filter(|(_, l)| *l == label)
                    .map(|(r, _)| *r)
                    .collect()
            };
            let (Some(chosen), Some(rejected)) = (
                best_positive(&of(Label::Positive)),
                worst_negative(&of(Label::Negative)),
            ) else {
                continue;
            };
            if chosen.answer == rejected.answer {
                continue;
            }
            fw.questions_with_both += 1;
            pairs.push(DpoPair {
                messages: prompt_of(chosen),
                chosen: chosen.answer.clone(),
                rejected: rejected.answer.clone(),
                origin: format!(
                    "lines {} / {} (interactions {} / {})",
                    chosen.line, rejected.line, chosen.id, rejected.id
                ),
                kind: "flywheel".to_owned(),
            });
        }
        stats.flywheel = Some(fw);
    }
    stats.examples = pairs.len();
    Ok((pairs, stats))
}

/// SplitMix64: a tiny seeded generator, identical on every platform (data order and the
/// held-out split are reproducible from `--seed`).
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

/// Splits `items` into (train, held-out) after a seeded shuffle: `round(n · fraction)` held out,
/// at least one and leaving at least one to train on. `fraction` 0 holds out nothing.
pub fn split<T>(mut items: Vec<T>, fraction: f64, seed: u64) -> Result<(Vec<T>, Vec<T>)> {
    if !(0.0..1.0).contains(&fraction) {
        return Err(TrainError::setting(
            "--held-out-fraction",
            format!("{fraction} is not in [0, 1)"),
        ));
    }
    if fraction == 0.0 {
        return Ok((items, Vec::new()));
    }
    let n = items.len();
    if n < 2 {
        return Err(TrainError::NotEnoughData(format!(
            "{n} example(s): holding some out needs at least 2 (or give --held-out FILE, or --held-out-fraction 0)"
        )));
    }
    SplitMix64(seed ^ 0x5eed_da7a).shuffle(&mut items);
    let held = ((n as f64 * fraction).round() as usize).clamp(1, n - 1);
    let held_out = items.split_off(n - held);
    Ok((items, held_out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn interaction(id: &str, query: &str, answer: &str, outcomes: Value) -> Value {
        json!({
            "id": id, "createdAt": 1_700_000_000 + id.len() as i64, "expiresAt": 1_800_000_000,
            "unit": "u1",
            "variant": {"router": "support/frontline", "lineage": "", "adapterVersion": "", "adapterRole": "", "experiment": "", "arm": "", "model": "small"},
            "kbGeneration": "gen-000001", "configRevision": "sha256:x", "routeReason": "easy",
            "query": query, "rewrittenQuery": null, "answer": answer, "refused": false,
            "invalidCitation": false, "retrievalFailed": false, "bestScore": 0.8,
            "citedDocuments": [], "retrievedDocuments": [],
            "outcomes": outcomes,
        })
    }

    fn rows(values: Vec<Value>) -> Vec<Row> {
        values
            .into_iter()
            .enumerate()
            .map(|(i, v)| parse_row(v, i + 1).unwrap())
            .collect()
    }

    #[test]
    fn plain_rows_in_every_accepted_shape() {
        let sft = parse_row(json!({"prompt": "Hi?", "completion": "Hello."}), 1).unwrap();
        let Row::Sft(e) = sft else { panic!() };
        assert_eq!(e.messages, vec![ChatMessage::user("Hi?")]);
        assert_eq!(e.completion, "Hello.");
        let chat = parse_row(
            json!({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]}),
            2,
        )
        .unwrap();
        let Row::Sft(e) = chat else { panic!() };
        assert_eq!(e.messages.len(), 2);
        assert_eq!(e.completion, "Hello.");
        let dpo = parse_row(
            json!({"prompt": [{"role": "user", "content": "Hi?"}], "chosen": [{"role": "assistant", "content": "Hello!"}], "rejected": "What."}),
            3,
        )
        .unwrap();
        assert!(matches!(dpo, Row::Dpo(DpoPair { ref chosen, .. }) if chosen == "Hello!"));
    }

    #[test]
    fn bad_rows_say_what_is_wrong() {
        let err = |v: Value| parse_row(v, 1).unwrap_err();
        assert!(err(json!({"prompt": "Hi"})).contains("`completion`"));
        assert!(err(json!({"completion": "x"})).contains("expected an SFT example"));
        assert!(err(json!({"prompt": "Hi", "chosen": "a"})).contains("`rejected` is missing"));
        assert!(
            err(json!({"prompt": "Hi", "chosen": "a", "rejected": "a"})).contains("same answer")
        );
        assert!(
            err(json!({"messages": [{"role": "user"}], "completion": "x"}))
                .contains("messages[0].content")
        );
        assert!(
            err(json!({"messages": [{"role": "robot", "content": "x"}], "completion": "x"}))
                .contains("robot")
        );
        assert!(err(json!({"prompt": "Hi", "completion": "  "})).contains("empty"));
        assert!(err(json!({"query": "q", "outcomes": {}})).contains("outcome store"));
        assert!(
            err(json!({"format": "switchboard.flywheel/v1", "query": "q"}))
                .contains("switchboard.flywheel/v1 record")
        );
        assert!(err(json!([1, 2])).contains("object"));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        std::fs::write(
            &path,
            "{\"prompt\": \"a\", \"completion\": \"b\"}\n\n{oops\n",
        )
        .unwrap();
        let e = read_rows(&path).unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("not JSON"), "{e}");
    }

    #[test]
    fn labels_follow_the_outcomes() {
        let policy = LabelPolicy::default();
        let label = |outcomes: Value| {
            let Row::Interaction(r) = parse_row(interaction("a", "q", "a", outcomes), 1).unwrap()
            else {
                panic!()
            };
            policy.label(&r)
        };
        let good = json!({"escalated": false, "resolved": true, "reopened": false, "csat": 5});
        assert_eq!(label(good), Label::Positive);
        // The rating is required; a 3 is ambiguous.
        assert_eq!(
            label(json!({"escalated": false, "resolved": true, "reopened": false, "csat": null})),
            Label::Unlabelled
        );
        assert_eq!(
            label(json!({"escalated": false, "resolved": true, "reopened": false, "csat": 3})),
            Label::Unlabelled
        );
        // Any of escalation, reopen, low CSAT is negative, whatever else was reported.
        assert_eq!(
            label(json!({"escalated": false, "resolved": true, "reopened": true, "csat": 5})),
            Label::Negative
        );
        assert_eq!(
            label(json!({"escalated": true, "resolved": false, "reopened": false, "csat": null})),
            Label::Negative
        );
        assert_eq!(
            label(json!({"escalated": false, "resolved": false, "reopened": false, "csat": 1})),
            Label::Negative
        );
    }

    #[test]
    fn flywheel_export_maps_to_deduplicated_examples_and_pairs() {
        let good =
            |csat| json!({"escalated": false, "resolved": true, "reopened": false, "csat": csat});
        let bad = json!({"escalated": true, "resolved": false, "reopened": false, "csat": null});
        let mut failed = interaction("f", "Refund window?", "I don't know", good(5));
        failed["retrievalFailed"] = true.into();
        let data = rows(vec![
            interaction(
                "a1",
                "How long is the refund window?",
                "14 days [1].",
                good(4),
            ),
            interaction(
                "a22",
                "how long is the refund  window",
                "You have 14 days [1].",
                good(5),
            ),
            interaction(
                "a333",
                "How long is the refund window?!",
                "30 days.",
                bad.clone(),
            ),
            interaction("b1", "Can I pay by PayPal?", "No.", bad),
            interaction("c1", "Reset password?", "Use Forgot password [1].", good(4)),
            interaction(
                "d1",
                "Export data?",
                "Settings > Export.",
                json!({"escalated": false, "resolved": true, "reopened": false, "csat": 3}),
            ),
            failed,
        ]);
        let path = Path::new("export.jsonl");
        let (sft, stats) = sft_examples(path, data.clone(), 7, &LabelPolicy::default()).unwrap();
        let fw = stats.flywheel.clone().unwrap();
        assert_eq!(
            (
                fw.interactions,
                fw.no_model_answer,
                fw.positive,
                fw.negative,
                fw.unlabelled
            ),
            (7, 1, 3, 2, 1)
        );
        assert_eq!(fw.questions, 3);
        assert_eq!(fw.duplicates_dropped, 1);
        // One example per question, the best-rated answer.
        let answers: Vec<&str> = sft.iter().map(|e| e.completion.as_str()).collect();
        assert_eq!(
            answers,
            ["You have 14 days [1].", "Use Forgot password [1]."]
        );
        assert_eq!(
            sft[0].messages,
            vec![ChatMessage::user("how long is the refund  window")]
        );

        let (pairs, stats) = dpo_pairs(path, data, 7, &LabelPolicy::default()).unwrap();
        assert_eq!(stats.flywheel.unwrap().questions_with_both, 1);
        assert_eq!(pairs.len(), 1);
        assert_eq!(
            (pairs[0].chosen.as_str(), pairs[0].rejected.as_str()),
            ("You have 14 days [1].", "30 days.")
        );
    }

    fn record(
        id: &str,
        query: &str,
        answer: &str,
        overall: &str,
        cluster: u64,
        csat: Option<i64>,
    ) -> Value {
        json!({
            "format": EXPORT_FORMAT, "id": id, "createdAt": 1_700_000_000, "router": "support/frontline",
            "unit": "sha256:0123456789abcdef",
            "servedBy": {"lineage": "", "adapterVersion": "", "adapterRole": "", "experiment": "", "arm": "", "model": "small", "routeReason": "easy"},
            "kbGeneration": "gen-000001", "configRevision": "sha256:x", "query": query, "rewrittenQuery": null,
            "answer": answer, "citedDocuments": [], "retrievedDocuments": [], "bestScore": 0.7,
            "labels": {"overall": overall, "reason": "r", "settled": true, "resolved": overall == "positive",
                "resolvedWithoutReopen": overall == "positive", "reopened": false, "escalated": overall == "negative",
                "csat": csat, "csatLevel": null, "refusal": false, "invalidCitation": false, "retrievalFailed": false},
            "cluster": {"id": cluster, "size": 3, "labelSize": 1},
            "someFutureField": {"ignored": true},
        })
    }

    #[test]
    fn export_records_keep_the_exports_labels_and_clusters() {
        let data = rows(vec![
            record(
                "1",
                "How long is the refund window?",
                "14 days [1].",
                "positive",
                7,
                None,
            ),
            record(
                "2",
                "refund window length",
                "30 days.",
                "negative",
                7,
                Some(1),
            ),
            record(
                "3",
                "Can I pay by PayPal?",
                "No [2].",
                "positive",
                9,
                Some(5),
            ),
            record(
                "4",
                "Why was I charged twice?",
                "Unsure.",
                "unknown",
                11,
                Some(3),
            ),
        ]);
        let path = Path::new("export.jsonl");
        let policy = LabelPolicy::default();
        // The export's label is used as is: a positive without a rating stays positive.
        let (sft, stats) = sft_examples(path, data.clone(), 4, &policy).unwrap();
        assert_eq!(sft.len(), 2);
        assert_eq!(sft[0].completion, "14 days [1].");
        let fw = stats.flywheel.unwrap();
        assert_eq!(
            (fw.positive, fw.negative, fw.unlabelled, fw.questions),
            (2, 1, 1, 2)
        );
        // Same cluster, different wording: one question, one pair.
        let (pairs, _) = dpo_pairs(path, data, 4, &policy).unwrap();
        assert_eq!(pairs.len(), 1);
        assert_eq!(
            (pairs[0].chosen.as_str(), pairs[0].rejected.as_str()),
            ("14 days [1].", "30 days.")
        );
        let mut wrong = record("5", "q", "a", "positive", 1, None);
        wrong["format"] = "switchboard.flywheel/v9".into();
        assert!(
            parse_row(wrong, 1)
                .unwrap_err()
                .contains("switchboard.flywheel/v9")
        );
    }

    #[test]
    fn modes_refuse_the_other_kind_of_row() {
        let sft = rows(vec![json!({"prompt": "a", "completion": "b"})]);
        let dpo = rows(vec![json!({"prompt": "a", "chosen": "b", "rejected": "c"})]);
        let policy = LabelPolicy::default();
        let e = dpo_pairs(Path::new("x"), sft, 1, &policy)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 1") && e.contains("switchboard-train sft"),
            "{e}"
        );
        let e = sft_examples(Path::new("x"), dpo, 1, &policy)
            .unwrap_err()
            .to_string();
        assert!(e.contains("switchboard-train dpo"), "{e}");
    }

    #[test]
    fn the_split_is_seeded_and_keeps_both_sides() {
        let (train, held) = split((0..10).collect::<Vec<_>>(), 0.2, 1).unwrap();
        assert_eq!((train.len(), held.len()), (8, 2));
        assert_eq!(split((0..10).collect::<Vec<_>>(), 0.2, 1).unwrap().1, held);
        assert_ne!(split((0..10).collect::<Vec<_>>(), 0.2, 2).unwrap().1, held);
        assert_eq!(split(vec![1, 2], 0.01, 1).unwrap().1.len(), 1);
        assert!(split(vec![1], 0.1, 1).is_err());
        assert_eq!(split(vec![1], 0.0, 1).unwrap().0, [1]);
    }
}
