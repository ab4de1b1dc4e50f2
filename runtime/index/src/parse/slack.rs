//! Slack workspace export: `users.json`, `channels.json` and `<channel>/<YYYY-MM-DD>.json` day files
//! (arrays of messages). Threads are reassembled across day files by `thread_ts`.
//!
//! Slack knowledge ages fast and is mostly noise, so only threads someone marked as answered are
//! indexed: a reaction named by one of the source's resolved tags (default
//! [`DEFAULT_RESOLVED_TAGS`]) on any message of the thread, or a message starting with one of them
//! in brackets (`[resolved]`, `[answer]`). The document is the thread's question (root message) plus the
//! answer: the marked reply, or, when the root itself carries the marker, the last reply.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use super::{InputFile, Parsed};
use crate::document::{Document, Section, parse_timestamp};

/// Tags that mark a thread as answered when a source names none: reaction names, and
/// `[tag]` prefixes of a message.
pub const DEFAULT_RESOLVED_TAGS: &[&str] = &[
    "white_check_mark",
    "heavy_check_mark",
    "ballot_box_with_check",
    "resolved",
    "answer",
    "answered",
];

/// Top-level files of a workspace export that hold no messages.
const EXPORT_METADATA_FILES: &[&str] = &[
    "users.json",
    "channels.json",
    "groups.json",
    "dms.json",
    "mpims.json",
    "integration_logs.json",
    "canvases.json",
    "org_users.json",
];

/// Subtypes that are not conversation (joins, topic changes, ...).
const IGNORED_SUBTYPES: &[&str] = &[
    "channel_join",
    "channel_leave",
    "channel_topic",
    "channel_purpose",
    "channel_name",
    "pinned_item",
];

#[derive(Debug, Clone)]
struct Message {
    ts: String,
    user: String,
    text: String,
    marked: bool,
}

pub(super) fn parse(
    source: &str,
    files: &[InputFile],
    resolved_tags: &[String],
) -> (Parsed, Vec<(String, String)>) {
    let tags: Vec<String> = resolved_tags
        .iter()
        .map(|t| {
            t.trim()
                .trim_start_matches(':')
                .trim_end_matches(':')
                .to_ascii_lowercase()
        })
        .filter(|t| !t.is_empty())
        .collect();
    let markers: Vec<String> = tags.iter().map(|t| format!("[{t}]")).collect();
    let mut errors = Vec::new();
    let mut users: HashMap<String, String> = HashMap::new();
    // (channel, thread ts) -> messages
    let mut threads: BTreeMap<(String, String), Vec<Message>> = BTreeMap::new();

    for file in files
        .iter()
        .filter(|f| f.rel_path.rsplit('/').next() == Some("users.json"))
    {
        match serde_json::from_slice::<Value>(&file.bytes) {
            Ok(Value::Array(list)) => {
                for u in list {
                    let id = u
                        .get("id")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string();
                    let name = ["display_name", "real_name"]
                        .iter()
                        .find_map(|k| {
                            u.get("profile")
                                .and_then(|p| p.get(k))
                                .and_then(Value::as_str)
                                .filter(|s| !s.is_empty())
                        })
                        .or_else(|| u.get("real_name").and_then(Value::as_str))
                        .or_else(|| u.get("name").and_then(Value::as_str))
                        .unwrap_or(&id)
                        .to_string();
                    users.insert(id, name);
                }
            }
            Ok(_) => errors.push((
                file.rel_path.clone(),
                "users.json: expected an array".to_string(),
            )),
            Err(e) => errors.push((file.rel_path.clone(), format!("invalid JSON: {e}"))),
        }
    }

    for file in files {
        let (channel, name) = match file.rel_path.rsplit_once('/') {
            Some((dir, name)) => (dir.rsplit('/').next().unwrap_or(dir).to_string(), name),
            // Workspace-level files of an export are not messages.
            None if EXPORT_METADATA_FILES.contains(&file.rel_path.as_str()) => continue,
            // A single day file given on its own: the source stands for the channel.
            None => (source.to_string(), file.rel_path.as_str()),
        };
        let messages = match serde_json::from_slice::<Value>(&file.bytes) {
            Ok(Value::Array(list)) => list,
            Ok(_) => {
                errors.push((
                    file.rel_path.clone(),
                    format!("{name}: expected an array of messages"),
                ));
                continue;
            }
            Err(e) => {
                errors.push((file.rel_path.clone(), format!("invalid JSON: {e}")));
                continue;
            }
        };
        for m in messages {
            let subtype = m.get("subtype").and_then(Value::as_str).unwrap_or("");
            if IGNORED_SUBTYPES.contains(&subtype) {
                continue;
            }
            let Some(ts) = m.get("ts").and_then(Value::as_str) else {
                continue;
            };
            let thread = m
                .get("thread_ts")
                .and_then(Value::as_str)
                .unwrap_or(ts)
                .to_string();
            let raw = m.get("text").and_then(Value::as_str).unwrap_or("");
            let reacted = m
                .get("reactions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|r| r.get("name").and_then(Value::as_str))
                .any(|n| tags.iter().any(|t| t.eq_ignore_ascii_case(n)));
            let lower = raw.trim_start().to_ascii_lowercase();
            let marker = markers.iter().find(|mk| lower.starts_with(mk.as_str()));
            let text = match marker {
                Some(mk) => raw.trim_start()[mk.len()..].trim_start().to_string(),
                None => raw.to_string(),
            };
            let user = m
                .get("user")
                .and_then(Value::as_str)
                .map(|u| users.get(u).cloned().unwrap_or_else(|| u.to_string()))
                .or_else(|| m.get("username").and_then(Value::as_str).map(String::from))
                .unwrap_or_default();
            threads
                .entry((channel.clone(), thread))
                .or_default()
                .push(Message {
                    ts: ts.to_string(),
                    user,
                    text: clean_text(&text, &users),
                    marked: reacted || marker.is_some(),
                });
        }
    }

    let mut out = Parsed::default();
    for ((channel, thread_ts), mut messages) in threads {
        messages.sort_by(|a, b| ts_key(&a.ts).total_cmp(&ts_key(&b.ts)));
        let item = format!("#{channel} thread {thread_ts}");
        let Some(root_idx) = messages.iter().position(|m| m.ts == thread_ts) else {
            out.skipped
                .push((item, "thread root missing from export".into()));
            continue;
        };
        let root = messages[root_idx].clone();
        let replies: Vec<&Message> = messages.iter().filter(|m| m.ts != thread_ts).collect();
        let answer = replies
            .iter()
            .rev()
            .find(|m| m.marked)
            .copied()
            .or_else(|| {
                if root.marked {
                    replies.last().copied()
                } else {
                    None
                }
            });
        let Some(answer) = answer else {
            let reason = if root.marked {
                "marked but has no reply"
            } else {
                "not marked resolved"
            };
            out.skipped.push((item, reason.into()));
            continue;
        };
        let title = thread_title(&root.text);
        out.documents.push(Document {
            doc_id: format!("{source}/{channel}/{thread_ts}"),
            title: title.clone(),
            source: source.to_string(),
            last_modified: parse_timestamp(&answer.ts),
            tags: vec![format!("#{channel}")],
            sections: vec![Section {
                path: vec![format!("#{channel}"), title],
                blocks: vec![
                    format!("Question ({}): {}", root.user, root.text),
                    format!("Answer ({}): {}", answer.user, answer.text),
                ],
            }],
        });
    }
    (out, errors)
}

fn ts_key(ts: &str) -> f64 {
    ts.parse().unwrap_or(0.0)
}

/// First sentence or line of the question, at most ~80 characters at a word boundary.
fn thread_title(text: &str) -> String {
    let first = text.lines().next().unwrap_or("").trim();
    let first = first
        .split_inclusive(['?', '.', '!'])
        .next()
        .unwrap_or(first)
        .trim();
    if first.chars().count() <= 80 {
        return first.to_string();
    }
    let mut out = String::new();
    for w in first.split_whitespace() {
        if out.chars().count() + w.chars().count() > 78 {
            break;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(w);
    }
    out.push('…');
    out
}

/// Resolves Slack markup: `<@U1>` -> `@name`, `<#C1|general>` -> `#general`, `<url|label>` ->
/// `label`, `<url>` -> `url`, and the three HTML entities Slack escapes.
fn clean_text(text: &str, users: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('<') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('>') else {
            out.push_str(&rest[open..]);
            rest = "";
            break;
        };
        let inner = &rest[open + 1..open + close];
        let (target, label) = inner
            .split_once('|')
            .map_or((inner, None), |(t, l)| (t, Some(l)));
        let rendered = if let Some(id) = target.strip_prefix('@') {
            format!(
                "@{}",
                users.get(id).map(String::as_str).or(label).unwrap_or(id)
            )
        } else if let Some(id) = target.strip_prefix('#') {
            format!("#{}", label.unwrap_or(id))
        } else if let Some(special) = target.strip_prefix('!') {
            format!("@{}", label.unwrap_or(special))
        } else {
            label.unwrap_or(target).to_string()
        };
        out.push_str(&rendered);
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Vec<String> {
        DEFAULT_RESOLVED_TAGS
            .iter()
            .map(|t| (*t).to_owned())
            .collect()
    }

    fn f(path: &str, json: &str) -> InputFile {
        InputFile {
            rel_path: path.into(),
            bytes: json.as_bytes().to_vec(),
            mtime: None,
        }
    }

    #[test]
    fn only_marked_threads_are_indexed_across_day_files() {
        let files = vec![
            f(
                "users.json",
                r#"[{"id":"U1","name":"ana","profile":{"display_name":"Ana"}},{"id":"U2","name":"raj"}]"#,
            ),
            f(
                "support/2025-06-01.json",
                r#"[
                {"type":"message","user":"U1","text":"Does Xero sync include <https://x.io/tax|tax rates>?","ts":"1748736000.000100","thread_ts":"1748736000.000100","reply_count":1},
                {"type":"message","user":"U2","text":"Anyone tried the new theme?","ts":"1748736100.000100"},
                {"type":"message","subtype":"channel_join","user":"U2","text":"joined","ts":"1748736200.000100"}]"#,
            ),
            f(
                "support/2025-06-02.json",
                r#"[
                {"type":"message","user":"U2","text":"Yes, <@U1>: tax rates sync one way &amp; nightly.","ts":"1748822400.000200","thread_ts":"1748736000.000100",
                 "reactions":[{"name":"white_check_mark","users":["U1"],"count":1}]}]"#,
            ),
            f("random/broken.json", "{not json"),
        ];
        let (parsed, errors) = parse("slack", &files, &defaults());
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(parsed.documents.len(), 1);
        let doc = &parsed.documents[0];
        assert_eq!(doc.doc_id, "slack/support/1748736000.000100");
        assert_eq!(
            doc.sections[0].path,
            ["#support", "Does Xero sync include tax rates?"]
        );
        assert_eq!(
            doc.sections[0].blocks[1],
            "Answer (raj): Yes, @Ana: tax rates sync one way & nightly."
        );
        assert_eq!(doc.last_modified, Some(1_748_822_400));
        assert_eq!(
            parsed.skipped.len(),
            1,
            "the unmarked message is skipped, the join ignored"
        );
        assert_eq!(parsed.skipped[0].1, "not marked resolved");

        // A team that marks answers with its own emoji: only that counts.
        let own = vec![":solved:".to_owned()];
        let (parsed, _) = parse("slack", &files, &own);
        assert!(
            parsed.documents.is_empty(),
            "white_check_mark is not theirs"
        );
        let mut files = files;
        files[2] = f(
            "support/2025-06-02.json",
            r#"[{"type":"message","user":"U2","text":"Yes, nightly.","ts":"1748822400.000200","thread_ts":"1748736000.000100",
                 "reactions":[{"name":"solved","users":["U1"],"count":1}]},
                {"type":"message","user":"U2","text":"[Solved] and one-way.","ts":"1748822500.000200","thread_ts":"1748736000.000100"}]"#,
        );
        let (parsed, _) = parse("slack", &files, &own);
        assert_eq!(parsed.documents.len(), 1);
        assert_eq!(
            parsed.documents[0].sections[0].blocks[1], "Answer (raj): and one-way.",
            "the last marked reply, its [tag] prefix removed"
        );
    }

    #[test]
    fn a_single_day_file_stands_for_a_channel_named_after_the_source() {
        let files = vec![f(
            "2025-06-01.json",
            r#"[{"type":"message","user":"U1","text":"How do I export?","ts":"1748736000.000100","thread_ts":"1748736000.000100"},
                {"type":"message","user":"U2","text":"[answer] Settings > Data > Export, then CSV.","ts":"1748736060.000100","thread_ts":"1748736000.000100"}]"#,
        )];
        let (parsed, errors) = parse("helpdesk", &files, &defaults());
        assert!(errors.is_empty());
        assert_eq!(
            parsed.documents[0].doc_id,
            "helpdesk/helpdesk/1748736000.000100"
        );
        assert_eq!(
            parsed.documents[0].sections[0].blocks[1],
            "Answer (U2): Settings > Data > Export, then CSV."
        );
    }
}
