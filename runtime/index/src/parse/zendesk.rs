//! Zendesk ticket export JSON.
//!
//! Accepted shapes: `{"tickets": [...], "users": [...]}` (users optional), a bare array of tickets,
//! or `{"ticket": {...}}`. Each ticket embeds its `comments` (`author_id`, `public`, `body`,
//! `created_at`; optionally `author_role`). What is indexed is the agent's final public reply (the
//! resolution note), with the customer's problem description as context, one document per ticket.
//! Skipped, and reported as such: spam and test tickets (tag `spam`/`test`/`test_ticket`, or a
//! subject starting with `[test]`/`test ticket`), tickets not `solved`/`closed`, tickets without an
//! agent reply, and resolutions shorter than [`MIN_RESOLUTION_WORDS`] words.

use std::collections::HashMap;

use serde_json::Value;

use super::{InputFile, Parsed};
use crate::document::{Document, Section, parse_timestamp};
use crate::tokens;

/// Resolution notes with fewer words than this ("Fixed.", "Thanks, closing") teach nothing.
pub const MIN_RESOLUTION_WORDS: usize = 8;

/// The problem description is context, not the answer: it is cut to this many estimated tokens.
const PROBLEM_CONTEXT_TOKENS: usize = 80;

const SPAM_TAGS: &[&str] = &["spam", "test", "test_ticket"];

pub(super) fn parse(source: &str, file: &InputFile) -> Result<Parsed, String> {
    let value: Value =
        serde_json::from_slice(&file.bytes).map_err(|e| format!("invalid JSON: {e}"))?;
    let (tickets, roles) = tickets_and_roles(&value)?;

    let mut out = Parsed::default();
    for (i, ticket) in tickets.iter().enumerate() {
        let Some(id) = ticket.get("id").and_then(|v| {
            v.as_i64()
                .map(|n| n.to_string())
                .or(v.as_str().map(String::from))
        }) else {
            return Err(format!("tickets[{i}] has no id"));
        };
        let item = format!("ticket {id}");
        match ticket_document(source, &id, ticket, &roles) {
            Ok(doc) => out.documents.push(doc),
            Err(reason) => out.skipped.push((item, reason.to_string())),
        }
    }
    Ok(out)
}

/// The tickets of an export (`{"tickets": [...], "users": [...]}`, a bare array, or
/// `{"ticket": {...}}`) and the users' roles by id.
pub fn tickets_and_roles(value: &Value) -> Result<(Vec<Value>, HashMap<i64, String>), String> {
    let (tickets, users) = match value {
        Value::Array(items) => (items.clone(), Vec::new()),
        Value::Object(map) => {
            let users = map
                .get("users")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            match (map.get("tickets"), map.get("ticket")) {
                (Some(Value::Array(t)), _) => (t.clone(), users),
                (_, Some(t @ Value::Object(_))) => (vec![t.clone()], users),
                _ => return Err("expected a `tickets` array".into()),
            }
        }
        _ => return Err("expected a JSON object or array of tickets".into()),
    };
    let roles: HashMap<i64, String> = users
        .iter()
        .filter_map(|u| Some((u.get("id")?.as_i64()?, u.get("role")?.as_str()?.to_string())))
        .collect();
    Ok((tickets, roles))
}

/// A ticket's tags.
pub fn tags(t: &Value) -> Vec<String> {
    t.get("tags")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(String::from)
        .collect()
}

/// `Some("spam")` or `Some("test ticket")` for tickets that are noise (a spam tag or deleted; a
/// test tag, or a subject starting with `[test]` / `test ticket`).
pub fn noise(t: &Value) -> Option<&'static str> {
    let tags = tags(t);
    if tags.iter().any(|tag| tag == "spam") || str_field(t, "status") == "deleted" {
        return Some("spam");
    }
    let lower_subject = str_field(t, "subject").trim().to_ascii_lowercase();
    if tags.iter().any(|tag| SPAM_TAGS.contains(&tag.as_str()))
        || lower_subject.starts_with("[test]")
        || lower_subject.starts_with("test ticket")
    {
        return Some("test ticket");
    }
    None
}

/// Whether comment `c` is an agent's: its `author_role`, else the author's user role, else any
/// author other than the requester.
pub fn is_agent(c: &Value, requester: Option<i64>, roles: &HashMap<i64, String>) -> bool {
    let author = c.get("author_id").and_then(Value::as_i64);
    match c
        .get("author_role")
        .and_then(Value::as_str)
        .or_else(|| author.and_then(|a| roles.get(&a)).map(String::as_str))
    {
        Some(role) => matches!(role, "agent" | "admin"),
        None => author.is_some() && author != requester,
    }
}

/// A ticket's comments, in order.
pub fn comments(t: &Value) -> Vec<&Value> {
    t.get("comments")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect()
}

/// A ticket's requester (the customer).
pub fn requester(t: &Value) -> Option<i64> {
    t.get("requester_id").and_then(Value::as_i64)
}

/// A string field of a JSON object (`""` when absent).
pub fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn ticket_document(
    source: &str,
    id: &str,
    t: &Value,
    roles: &HashMap<i64, String>,
) -> Result<Document, &'static str> {
    let subject = str_field(t, "subject").trim();
    if let Some(why) = noise(t) {
        return Err(why);
    }
    if !matches!(str_field(t, "status"), "solved" | "closed") {
        return Err("not solved");
    }
    let requester = requester(t);
    let comments = comments(t);
    let is_agent = |c: &Value| is_agent(c, requester, roles);
    let resolution = comments
        .iter()
        .rev()
        .find(|c| c.get("public").and_then(Value::as_bool).unwrap_or(true) && is_agent(c))
        .map(|c| str_field(c, "body").trim())
        .ok_or("no agent reply")?;
    if resolution.split_whitespace().count() < MIN_RESOLUTION_WORDS {
        return Err("resolution too short");
    }
    let description = match str_field(t, "description").trim() {
        "" => comments
            .first()
            .map(|c| str_field(c, "body").trim())
            .unwrap_or(""),
        d => d,
    };
    let mut blocks = Vec::new();
    if !description.is_empty() {
        blocks.push(format!(
            "Problem: {}",
            truncate_tokens(description, PROBLEM_CONTEXT_TOKENS)
        ));
    }
    blocks.push(format!("Resolution: {resolution}"));
    let title = if subject.is_empty() {
        format!("Ticket {id}")
    } else {
        subject.to_string()
    };
    let last_modified = ["solved_at", "updated_at", "created_at"]
        .iter()
        .find_map(|k| parse_timestamp(str_field(t, k)));
    Ok(Document {
        doc_id: format!("{source}/ticket-{id}"),
        title: title.clone(),
        source: source.to_string(),
        last_modified,
        tags: tags(t),
        sections: vec![Section {
            path: vec![title],
            blocks,
        }],
    })
}

/// Cuts `text` after about `max` estimated tokens, at a word boundary.
fn truncate_tokens(text: &str, max: usize) -> String {
    let mut used = 0;
    for w in tokens::words(text) {
        used += w.tokens;
        if used > max {
            return format!("{} …", text[..w.start].trim_end());
        }
    }
    text.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_resolutions_and_skips_noise() {
        let json = r#"{"users":[{"id":1,"role":"end-user"},{"id":9,"role":"agent"}],"tickets":[
          {"id":101,"subject":"Charged twice","status":"solved","requester_id":1,"tags":["billing"],"updated_at":"2025-05-02T10:00:00Z",
           "description":"I was charged twice for May.","comments":[
             {"author_id":1,"public":true,"body":"I was charged twice for May."},
             {"author_id":9,"public":false,"body":"internal: duplicate capture in Stripe"},
             {"author_id":9,"public":true,"body":"We refunded the duplicate charge; it shows on your card in 5 to 10 business days."}]},
          {"id":102,"subject":"WIN A PRIZE","status":"closed","tags":["spam"],"comments":[]},
          {"id":103,"subject":"[TEST] please ignore","status":"solved","comments":[]},
          {"id":104,"subject":"Export broken","status":"open","comments":[]},
          {"id":105,"subject":"Thanks","status":"solved","requester_id":1,"comments":[{"author_id":9,"public":true,"body":"Closing, thanks!"}]}
        ]}"#;
        let file = InputFile {
            rel_path: "tickets.json".into(),
            bytes: json.as_bytes().to_vec(),
            mtime: None,
        };
        let parsed = parse("zd", &file).unwrap();
        assert_eq!(parsed.documents.len(), 1);
        let doc = &parsed.documents[0];
        assert_eq!(doc.doc_id, "zd/ticket-101");
        assert_eq!(
            doc.sections[0].blocks,
            [
                "Problem: I was charged twice for May.",
                "Resolution: We refunded the duplicate charge; it shows on your card in 5 to 10 business days."
            ]
        );
        let reasons: Vec<&str> = parsed.skipped.iter().map(|(_, r)| r.as_str()).collect();
        assert_eq!(
            reasons,
            ["spam", "test ticket", "not solved", "resolution too short"]
        );
    }

    #[test]
    fn malformed_json_is_an_error() {
        let file = InputFile {
            rel_path: "t.json".into(),
            bytes: b"{\"tickets\": [".to_vec(),
            mtime: None,
        };
        assert!(parse("zd", &file).unwrap_err().contains("invalid JSON"));
    }
}
