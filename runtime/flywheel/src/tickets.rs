//! Historical helpdesk tickets to multi-turn SFT conversations (seed section 2): what survives
//! the filters, scored, the top share kept.
//!
//! ```text
//! Zendesk export -> survival filters (per-rule counts) -> conversations (public turns only,
//!   personal data redacted) -> quality score -> duplicates dropped -> top share by score
//! ```
//!
//! **Survival filters**, in order (a ticket is counted under the first it fails): `spam`, `test`
//! (the index's Zendesk rules), `not_solved` (status other than solved/closed), `merged` (tags
//! `closed_by_merge`/`merged` or follow-ups: several threads in one), `supervisor_corrected`
//! (tags `supervisor_corrected`/`qa_fail`/`corrected`, or a public agent reply starting with
//! "Correction": the first answer was wrong), `no_agent_reply`, `too_short` (under
//! `min_tokens` estimated tokens of public conversation).
//!
//! **Quality score** (0..1, [`quality`]): a base of 0.3; resolved without reopen +0.3; CSAT
//! good +0.2 / bad -0.3; agent edits -0.05 each (at most -0.15); a final reply of 20-250 words
//! +0.1, with steps or a concrete detail (a number, a menu path) +0.1; a canned template reply
//! (cosine >= `template_threshold` to the final replies of `template_min` other tickets)
//! -0.2. With an embedder, tickets asking the same question (cosine >= `duplicate_threshold`
//! between problem descriptions) keep the best scored one (`duplicate`). Then the top
//! `keep_top` share by score is kept (`below_cut` for the rest).
use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use switchboard_index::Embedder;
use switchboard_index::parse::zendesk::{
    comments, is_agent, noise, requester, str_field, tags, tickets_and_roles,
};

use crate::{FlywheelError, embed_all};

/// How tickets are filtered and scored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TicketSettings {
    /// Fewest estimated tokens of public conversation.
    pub min_tokens: usize,
    /// Share of the surviving tickets kept, best scored first.
    pub keep_top: f64,
    /// Cosine at or above which two final replies are the same canned text.
    pub template_threshold: f32,
    /// Other tickets sharing a reply for it to count as a template.
    pub template_min: usize,
    /// Cosine at or above which two problem descriptions ask the same question.
    pub duplicate_threshold: f32,
    /// A system turn to start every conversation with (the serving prompt's, for example).
    pub system: Option<String>,
}

impl Default for TicketSettings {
    fn default() -> Self {
        Self {
            min_tokens: 50,
            keep_top: 0.3,
            template_threshold: 0.95,
            template_min: 3,
            duplicate_threshold: 0.92,
            system: None,
        }
    }
}

/// The filters and cuts, in order, as counted in the report.
pub const RULES: [&str; 9] = [
    "spam",
    "test",
    "not_solved",
    "merged",
    "supervisor_corrected",
    "no_agent_reply",
    "too_short",
    "duplicate",
    "below_cut",
];

/// What the score was made of.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Signals {
    /// Solved or closed, not reopened.
    pub resolved_without_reopen: bool,
    /// Zendesk `satisfaction_rating.score` (`good`, `bad`), when rated.
    pub csat: Option<String>,
    /// Agent comments marked edited (`edited` or `edit_count`).
    pub agent_edits: usize,
    /// Words of the final agent reply.
    pub reply_words: usize,
    /// The final reply has steps or a concrete detail.
    pub structured: bool,
    /// The final reply is a canned template (embedding-based; false without an embedder).
    pub template: bool,
}

/// One conversation for SFT.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    /// `zendesk ticket <id>`.
    pub origin: String,
    /// System (optional), then alternating user / assistant turns, ending with the assistant.
    pub messages: Vec<Turn>,
    /// Quality score (0..1).
    pub quality: f64,
    /// Its signals.
    pub signals: Signals,
}

/// A chat turn.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// What the pipeline did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TicketReport {
    /// Tickets read.
    pub read: usize,
    /// Conversations written.
    pub kept: usize,
    /// Tickets dropped, per rule (every rule listed).
    pub dropped: BTreeMap<String, usize>,
    /// Score at the cut (the lowest kept).
    pub cut_score: Option<f64>,
    /// Median score of the tickets that survived the filters.
    pub median_score: Option<f64>,
    /// Kept conversations with more than one assistant turn.
    pub multi_turn: usize,
    /// Whether duplicates and templates were detected (an embedder was given).
    pub embeddings: bool,
}

const MERGE_TAGS: &[&str] = &["closed_by_merge", "merged"];
const CORRECTED_TAGS: &[&str] = &["supervisor_corrected", "qa_fail", "corrected"];

fn is_public(c: &Value) -> bool {
    c.get("public").and_then(Value::as_bool).unwrap_or(true)
}

fn edited(c: &Value) -> bool {
    c.get("edited").and_then(Value::as_bool).unwrap_or(false)
        || c.get("edit_count").and_then(Value::as_u64).unwrap_or(0) > 0
}

/// Steps (a numbered or bulleted line) or a concrete detail (a digit, a `>` menu path).
fn structured(reply: &str) -> bool {
    reply.lines().any(|l| {
        let l = l.trim_start();
        l.starts_with("- ")
            || l.starts_with("* ")
            || l.split_once(". ")
                .is_some_and(|(n, _)| n.parse::<u32>().is_ok())
    }) || reply.chars().any(|c| c.is_ascii_digit())
        || reply.contains(" > ")
}

/// The score of a ticket's signals (module documentation).
pub fn quality(s: &Signals) -> f64 {
    let mut q = 0.3;
    if s.resolved_without_reopen {
        q += 0.3;
    }
    match s.csat.as_deref() {
        Some("good") => q += 0.2,
        Some("bad") => q -= 0.3,
        _ => {}
    }
    q -= (0.05 * s.agent_edits as f64).min(0.15);
    if (20..=250).contains(&s.reply_words) {
        q += 0.1;
        if s.structured {
            q += 0.1;
        }
    }
    if s.template {
        q -= 0.2;
    }
    q.clamp(0.0, 1.0)
}

/// A ticket that survived the filters, before scoring.
struct Candidate {
    origin: String,
    messages: Vec<Turn>,
    signals: Signals,
    problem: String,
    reply: String,
}

/// The ticket's conversation, or the rule it fails.
fn candidate(
    t: &Value,
    roles: &HashMap<i64, String>,
    settings: &TicketSettings,
    redact: &dyn Fn(&str) -> String,
) -> Result<Candidate, &'static str> {
    match noise(t) {
        Some("spam") => return Err("spam"),
        Some(_) => return Err("test"),
        None => {}
    }
    let status = str_field(t, "status");
    if !matches!(status, "solved" | "closed") {
        return Err("not_solved");
    }
    let tags = tags(t);
    let has = |list: &[&str]| tags.iter().any(|tag| list.contains(&tag.as_str()));
    let followups = t
        .get("followup_ids")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty());
    if has(MERGE_TAGS) || followups {
        return Err("merged");
    }
    let requester = requester(t);
    let comments = comments(t);
    let public_agent: Vec<&&Value> = comments
        .iter()
        .filter(|c| is_public(c) && is_agent(c, requester, roles))
        .collect();
    if has(CORRECTED_TAGS)
        || public_agent.iter().skip(1).any(|c| {
            str_field(c, "body")
                .trim_start()
                .to_ascii_lowercase()
                .starts_with("correction")
        })
    {
        return Err("supervisor_corrected");
    }
    if public_agent.is_empty() {
        return Err("no_agent_reply");
    }
    // Public turns, consecutive ones of a role merged; internal notes never leave the helpdesk.
    let mut messages: Vec<Turn> = Vec::new();
    if let Some(system) = &settings.system {
        messages.push(Turn {
            role: "system".into(),
            content: system.clone(),
        });
    }
    for c in comments.iter().filter(|c| is_public(c)) {
        let body = str_field(c, "body").trim();
        if body.is_empty() {
            continue;
        }
        let role = if is_agent(c, requester, roles) {
            "assistant"
        } else {
            "user"
        };
        match messages.last_mut() {
            Some(last) if last.role == role => {
                last.content.push_str("\n\n");
                last.content.push_str(&redact(body));
            }
            _ => messages.push(Turn {
                role: role.into(),
                content: redact(body),
            }),
        }
    }
    // Start with the customer, end with the agent's last reply (a trailing "thanks!" is not a
    // question to answer).
    let first_user = messages.iter().position(|m| m.role == "user");
    let Some(first_user) = first_user else {
        return Err("no_agent_reply");
    };
    let system: Vec<Turn> = messages
        .iter()
        .take_while(|m| m.role == "system")
        .cloned()
        .collect();
    let mut turns: Vec<Turn> = messages[first_user..].to_vec();
    while turns.last().is_some_and(|m| m.role != "assistant") {
        turns.pop();
    }
    if !turns.iter().any(|m| m.role == "assistant") {
        return Err("no_agent_reply");
    }
    let text: String = turns
        .iter()
        .map(|m| m.content.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    if switchboard_index::tokens::count(&text) < settings.min_tokens {
        return Err("too_short");
    }
    let reply = turns.last().map(|m| m.content.clone()).unwrap_or_default();
    let problem = turns
        .iter()
        .find(|m| m.role == "user")
        .map(|m| m.content.clone())
        .unwrap_or_default();
    let signals = Signals {
        resolved_without_reopen: !tags.iter().any(|t| t == "reopened"),
        csat: t
            .get("satisfaction_rating")
            .and_then(|r| r.get("score"))
            .and_then(Value::as_str)
            .filter(|s| matches!(*s, "good" | "bad"))
            .map(str::to_owned),
        agent_edits: comments
            .iter()
            .filter(|c| is_agent(c, requester, roles) && edited(c))
            .count(),
        reply_words: reply.split_whitespace().count(),
        structured: structured(&reply),
        template: false,
    };
    let id = t
        .get("id")
        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
        .unwrap_or_default();
    Ok(Candidate {
        origin: format!("zendesk ticket {id}"),
        messages: system.into_iter().chain(turns).collect(),
        signals,
        problem,
        reply,
    })
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Runs the pipeline on a Zendesk export. `redact` removes personal data from every text
/// (the runtime passes its built-in detectors); `embedder` enables duplicate and template
/// detection.
pub fn conversations(
    export: &Value,
    embedder: Option<&dyn Embedder>,
    redact: &dyn Fn(&str) -> String,
    settings: &TicketSettings,
) -> Result<(Vec<Conversation>, TicketReport), FlywheelError> {
    let (tickets, roles) = tickets_and_roles(export).map_err(FlywheelError::Input)?;
    let mut dropped: BTreeMap<String, usize> = RULES.iter().map(|r| ((*r).to_owned(), 0)).collect();
    let mut candidates = Vec::new();
    for t in &tickets {
        match candidate(t, &roles, settings, redact) {
            Ok(c) => candidates.push(c),
            Err(rule) => *dropped.entry(rule.to_owned()).or_default() += 1,
        }
    }
    let scores: Vec<f64>;
    let mut keep: Vec<bool> = vec![true; candidates.len()];
    if let Some(embedder) = embedder {
        let replies: Vec<String> = candidates.iter().map(|c| c.reply.clone()).collect();
        let problems: Vec<String> = candidates.iter().map(|c| c.problem.clone()).collect();
        let rv = embed_all(embedder, &replies)?;
        let pv = embed_all(embedder, &problems)?;
        for i in 0..candidates.len() {
            let shared = (0..candidates.len())
                .filter(|&j| j != i && cosine(&rv[i], &rv[j]) >= settings.template_threshold)
                .count();
            candidates[i].signals.template = shared >= settings.template_min;
        }
        scores = candidates
            .iter()
            .map(|c| round3(quality(&c.signals)))
            .collect();
        // The same question asked again: the best scored ticket stays.
        let mut order: Vec<usize> = (0..candidates.len()).collect();
        order.sort_by(|a, b| scores[*b].total_cmp(&scores[*a]).then(a.cmp(b)));
        let mut kept: Vec<usize> = Vec::new();
        for i in order {
            if kept
                .iter()
                .any(|&k| cosine(&pv[i], &pv[k]) >= settings.duplicate_threshold)
            {
                keep[i] = false;
                *dropped.entry("duplicate".into()).or_default() += 1;
            } else {
                kept.push(i);
            }
        }
    } else {
        scores = candidates
            .iter()
            .map(|c| round3(quality(&c.signals)))
            .collect();
    }
    let mut survivors: Vec<usize> = (0..candidates.len()).filter(|&i| keep[i]).collect();
    let mut sorted: Vec<f64> = survivors.iter().map(|&i| scores[i]).collect();
    sorted.sort_by(f64::total_cmp);
    let median_score = (!sorted.is_empty()).then(|| sorted[sorted.len() / 2]);
    survivors.sort_by(|a, b| scores[*b].total_cmp(&scores[*a]).then(a.cmp(b)));
    let n_keep = ((survivors.len() as f64 * settings.keep_top.clamp(0.0, 1.0)).ceil() as usize)
        .min(survivors.len());
    *dropped.entry("below_cut".into()).or_default() += survivors.len() - n_keep;
    survivors.truncate(n_keep);
    let cut_score = survivors.last().map(|&i| scores[i]);
    survivors.sort_unstable();
    let taken: std::collections::HashSet<usize> = survivors.iter().copied().collect();
    let out: Vec<Conversation> = candidates
        .into_iter()
        .enumerate()
        .filter(|(i, _)| taken.contains(i))
        .map(|(i, c)| Conversation {
            origin: c.origin,
            messages: c.messages,
            quality: scores[i],
            signals: c.signals,
        })
        .collect();
    let report = TicketReport {
        read: tickets.len(),
        kept: out.len(),
        dropped,
        cut_score,
        median_score,
        multi_turn: out
            .iter()
            .filter(|c| c.messages.iter().filter(|m| m.role == "assistant").count() > 1)
            .count(),
        embeddings: embedder.is_some(),
    };
    Ok((out, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ticket(id: i64, extra: Value, comments: Value) -> Value {
        let mut t = json!({"id": id, "subject": "Question", "status": "solved", "requester_id": 1,
                           "tags": [], "comments": comments});
        if let (Value::Object(t), Value::Object(e)) = (&mut t, extra) {
            t.extend(e);
        }
        t
    }

    fn long(words: usize, tail: &str) -> String {
        format!("{} {tail}", vec!["word"; words].join(" "))
    }

    fn conversation(agent_reply: &str) -> Value {
        json!([
            {"author_id": 1, "public": true, "body": long(30, "My invoice is wrong.")},
            {"author_id": 9, "public": false, "body": "internal: customer on legacy plan"},
            {"author_id": 9, "public": true, "body": "Which invoice number is it?"},
            {"author_id": 1, "public": true, "body": "INV-1041, sent to jane@example.com."},
            {"author_id": 9, "public": true, "body": agent_reply},
            {"author_id": 1, "public": true, "body": "Thanks!"},
        ])
    }

    fn export(tickets: Vec<Value>) -> Value {
        json!({"users": [{"id": 1, "role": "end-user"}, {"id": 9, "role": "agent"}],
               "tickets": tickets})
    }

    fn redact(s: &str) -> String {
        s.replace("jane@example.com", "[email]")
    }

    #[test]
    fn filters_count_each_rule_and_conversations_keep_public_turns() {
        let good = "I corrected it: go to Invoices > INV-1041 > Edit, fix the amount to 39 dollars and resend it; the customer gets the new PDF at once.";
        let settings = TicketSettings {
            keep_top: 1.0,
            ..TicketSettings::default()
        };
        let tickets = vec![
            ticket(1, json!({}), conversation(good)),
            ticket(2, json!({"tags": ["spam"]}), conversation(good)),
            ticket(3, json!({"tags": ["test"]}), conversation(good)),
            ticket(4, json!({"status": "open"}), conversation(good)),
            ticket(5, json!({"tags": ["closed_by_merge"]}), conversation(good)),
            ticket(6, json!({"tags": ["qa_fail"]}), conversation(good)),
            ticket(
                7,
                json!({}),
                json!([{"author_id": 1, "public": true, "body": long(30, "Help")}]),
            ),
            ticket(
                8,
                json!({}),
                json!([{"author_id": 1, "body": "Hi?"}, {"author_id": 9, "body": "Yes."}]),
            ),
        ];
        let (out, report) = conversations(&export(tickets), None, &redact, &settings).unwrap();
        for (rule, n) in [
            ("spam", 1),
            ("test", 1),
            ("not_solved", 1),
            ("merged", 1),
            ("supervisor_corrected", 1),
            ("no_agent_reply", 1),
            ("too_short", 1),
            ("duplicate", 0),
            ("below_cut", 0),
        ] {
            assert_eq!(report.dropped[rule], n, "{rule}: {report:?}");
        }
        assert_eq!((report.read, report.kept, report.multi_turn), (8, 1, 1));
        let c = &out[0];
        assert_eq!(c.origin, "zendesk ticket 1");
        let roles: Vec<&str> = c.messages.iter().map(|m| m.role.as_str()).collect();
        // The internal note is gone; the trailing "Thanks!" is not a turn to answer.
        assert_eq!(roles, ["user", "assistant", "user", "assistant"]);
        assert!(c.messages[2].content.contains("[email]"), "{c:?}");
        assert!(!c.messages.iter().any(|m| m.content.contains("internal")));
        assert!(c.signals.structured && c.signals.resolved_without_reopen);
    }

    #[test]
    fn the_score_orders_tickets_and_the_top_share_is_kept() {
        let good = "Go to Invoices > INV-1041 > Edit, fix the amount to 39 dollars and resend it; the customer gets the new PDF at once.";
        let meh = "We have looked into it and it should be fine now, let us know if there is anything else we can help you with today.";
        let tickets = vec![
            ticket(
                1,
                json!({"satisfaction_rating": {"score": "good"}}),
                conversation(good),
            ),
            ticket(
                2,
                json!({"satisfaction_rating": {"score": "bad"}}),
                conversation(good),
            ),
            ticket(3, json!({"tags": ["reopened"]}), conversation(meh)),
            ticket(4, json!({}), conversation(good)),
        ];
        let settings = TicketSettings {
            keep_top: 0.5,
            ..TicketSettings::default()
        };
        let (out, report) = conversations(&export(tickets), None, &redact, &settings).unwrap();
        let kept: Vec<&str> = out.iter().map(|c| c.origin.as_str()).collect();
        assert_eq!(kept, ["zendesk ticket 1", "zendesk ticket 4"]);
        assert_eq!(report.dropped["below_cut"], 2);
        assert!(out[0].quality > out[1].quality);
        assert_eq!(report.cut_score, Some(out[1].quality));
        let s = |csat: Option<&str>, reopen: bool| {
            quality(&Signals {
                resolved_without_reopen: !reopen,
                csat: csat.map(str::to_owned),
                reply_words: 30,
                structured: true,
                ..Signals::default()
            })
        };
        assert!(s(Some("good"), false) > s(None, false));
        assert!(s(None, false) > s(Some("bad"), false));
        assert!(s(None, false) > s(None, true));
    }
}
