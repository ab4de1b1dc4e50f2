//! The data flywheel end to end, with the real binary, MiniLM and SmolLM2 over the sample KB and
//! the embedded SQLite outcome store:
//! - answers go through `/v1/answer` and outcomes through `/v1/feedback`: questions about a topic
//!   the knowledge base does not cover (payroll, several wordings, escalated), a question asked
//!   again and again (near-duplicates with a low CSAT), a replayed query, one well-rated answer;
//! - `switchboard-runtime export` writes JSONL records with the composite labels, counts what its
//!   filters dropped under each rule, and keeps one record per (query cluster, label);
//! - `GET /v1/coverage-gaps` (and `switchboard-runtime coverage-gaps --json`) puts the payroll
//!   topic first with its volume, share and example queries; bad parameters are a 400 naming
//!   the parameter.

use crate::support;
use support::{
    Runtime, admin, admin_json, ask, http, http_with, post_json, prepare, runtime_cmd, start,
};

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// One topic the sample KB (Ledgerly, an accounting SaaS) has nothing on, in several wordings.
const PAYROLL: [&str; 6] = [
    "How do I run payroll for my employees?",
    "How can I run payroll for my employees?",
    "Can I run payroll for my employees?",
    "How do I set up payroll for my employees?",
    "Is there a payroll feature to pay my employees?",
    "How do I pay my employees through payroll?",
];

/// A question the KB answers, asked by several customers with small differences in writing.
const PASSWORD: [&str; 3] = [
    "How do I reset my password?",
    "how do I reset my password",
    "How do I reset my password ?",
];

fn feedback(rt: &Runtime, token: &str, body: Value) {
    let mut body = body;
    body["token"] = json!(token);
    let (status, reply) = post_json(rt.http, "/v1/feedback", &body);
    assert_eq!(status, 200, "{body} -> {reply}");
}

fn token(answer: &Value) -> &str {
    answer["interactionToken"].as_str().unwrap()
}

#[test]
fn interactions_become_labelled_deduplicated_records_and_coverage_gaps() {
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    // The Router's own redaction pattern (spec.privacy.redact): order numbers.
    let (config_path, key) = prepare(
        work,
        json!({
            "smallModel": {"maxNewTokens": 16},
            "routerPolicy": {
                "redact": [{"name": "order", "pattern": "\\bORD-[0-9]{6}\\b"}],
                // A fitted difficulty model (`router fit`) that knows nothing: every query
                // scores exactly 0.5, whatever the hand-set weights would say.
                "difficultyModel": {"bias": 0.0, "length": 0.0, "clauses": 0.0,
                    "qualifications": 0.0, "knownIdentifiers": 0.0, "unknownIdentifiers": 0.0,
                    "multiDocument": 0.0, "weakMatch": 0.0},
            },
        }),
    );
    let rt = start(work, "fw", &config_path, &key);
    let mut asked = 0;

    // The uncovered topic: every wording escalated to a human, from different customers.
    for (n, query) in PAYROLL.iter().enumerate() {
        let answer = ask(rt.http, query, &format!("payroll-{n}"));
        feedback(&rt, token(&answer), json!({"outcome": "escalated"}));
        asked += 1;
    }
    // The same question from three customers, each unhappy (CSAT 2): near-duplicates.
    for (n, query) in PASSWORD.iter().enumerate() {
        let answer = ask(rt.http, query, &format!("password-{n}"));
        feedback(&rt, token(&answer), json!({"outcome": "csat", "csat": 2}));
        asked += 1;
    }
    // One customer sends the same message twice in a row (a double submit): a replay.
    let first = ask(
        rt.http,
        "How do I enable two-factor authentication?",
        "replayer",
    );
    ask(
        rt.http,
        "How do I enable two-factor authentication?",
        "replayer",
    );
    asked += 2;
    feedback(&rt, token(&first), json!({"outcome": "resolved"}));
    // A well-rated answer: positive when it cites a passage, else dropped as uncited.
    let rated = ask(rt.http, "How do I connect Stripe to Ledgerly?", "rated");
    asked += 1;
    feedback(&rt, token(&rated), json!({"outcome": "resolved"}));
    feedback(&rt, token(&rated), json!({"outcome": "csat", "csat": 5}));
    let rated_cites = !rated["citations"].as_array().unwrap().is_empty();

    // --- the export ---
    let store = format!("sqlite://{}", work.join("outcomes-fw.db").display());
    let out = work.join("export/train.jsonl");
    let export = runtime_cmd()
        .args(["export", "--outcome-store", &store])
        .args(["--router", "support/helpdesk", "--settle", "0s", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    let summary: Value = serde_json::from_slice(&export.stdout).unwrap();
    let written: Value =
        serde_json::from_slice(&std::fs::read(work.join("export/train.summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary, written, "the printed summary is the one written");
    let records: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    println!("{}", serde_json::to_string_pretty(&summary).unwrap());
    // Every record carries its routing decision: what `router fit` learns from.
    for r in &records {
        let routing = &r["routing"];
        let propensity = routing["propensity"].as_f64().unwrap_or(-1.0);
        assert!((0.0..=1.0).contains(&propensity) && propensity > 0.0, "{r}");
        assert_eq!(routing["threshold"], 0.99, "{r}");
        assert!(routing["features"]["length"].as_f64().is_some(), "{r}");
        assert_eq!(
            routing["difficulty"], 0.5,
            "the Router's weights score: {r}"
        );
        let reason = r["servedBy"]["routeReason"].as_str().unwrap();
        assert!(["easy", "retrieval_failure"].contains(&reason), "{r}");
    }
    // Too few labelled answers to fit a router on: said plainly, nothing written.
    let fit = runtime_cmd()
        .args(["router", "fit", "--data"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(!fit.status.success());
    let err = String::from_utf8_lossy(&fit.stderr);
    assert!(err.contains("need at least 40"), "{err}");
    assert!(fit.stdout.is_empty());

    // A curriculum sample: half negatives (oversampled), a fifth novel against a "current
    // training set" that only knows the password question.
    let seen = work.join("seen.jsonl");
    std::fs::write(&seen, "{\"query\": \"How do I reset my password?\"}\n").unwrap();
    let cur_out = work.join("export/cur.jsonl");
    let cur = runtime_cmd()
        .args(["export", "--outcome-store", &store])
        .args(["--router", "support/helpdesk", "--settle", "0s", "--out"])
        .arg(&cur_out)
        .args([
            "--curriculum",
            "negative=0.5,novel=0.2",
            "--curriculum-size",
            "20",
        ])
        .arg("--seen")
        .arg(&seen)
        .output()
        .unwrap();
    assert!(
        cur.status.success(),
        "{}",
        String::from_utf8_lossy(&cur.stderr)
    );
    let summary: Value = serde_json::from_slice(&cur.stdout).unwrap();
    let mix = &summary["curriculum"]["mix"];
    assert_eq!(summary["curriculum"]["size"], 20, "{summary}");
    // The export holds negatives and novel answers only (the positives not about passwords):
    // negatives get their half plus the empty rest's 30%, oversampled from 4 records.
    assert_eq!(mix[0]["category"], "negative");
    assert_eq!(
        (&mix[0]["drawn"], &mix[0]["distinct"]),
        (&json!(16), &mix[0]["available"]),
        "{mix}"
    );
    assert_eq!(
        (&mix[2]["category"], &mix[2]["drawn"]),
        (&json!("novel"), &json!(4)),
        "{mix}"
    );
    assert_eq!(mix[3]["available"], 0, "{mix}");
    let sample: Vec<Value> = std::fs::read_to_string(work.join("export/cur.curriculum.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(sample.len(), 20);
    for r in &sample {
        let negative = r["labels"]["overall"] == "negative";
        assert_eq!(negative, r["curriculum"] == "negative", "{r}");
        if r["curriculum"] == "novel" {
            assert!(!PASSWORD.contains(&r["query"].as_str().unwrap()), "{r}");
        }
    }
    assert_eq!(
        summary["read"],
        asked,
        "{summary}\nruntime log:\n{}",
        std::fs::read_to_string(work.join("fw.log")).unwrap_or_default()
    );
    assert_eq!(summary["written"], records.len(), "{summary}");
    assert!(
        summary["encoder"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("minilm"),
        "{summary}"
    );
    let dropped = &summary["dropped"];
    // Every rule is listed, and the drops add up.
    let rules: Vec<&str> = dropped
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for rule in [
        "empty_answer",
        "garbled_answer",
        "extreme_length",
        "refusal_labelled_positive",
        "uncited_positive",
        "invalid_citation_positive",
        "replayed_query",
        "unit_cap",
        "near_duplicate",
    ] {
        assert!(rules.contains(&rule), "{rule} missing from {dropped}");
    }
    let total_dropped: u64 = dropped
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(total_dropped + records.len() as u64, asked as u64);
    assert_eq!(dropped["replayed_query"], 1, "{dropped}");
    // The three password complaints are one record (the other two are near-duplicates) ...
    let password: Vec<&Value> = records
        .iter()
        .filter(|r| PASSWORD.contains(&r["query"].as_str().unwrap()))
        .collect();
    assert_eq!(password.len(), 1, "{password:#?}");
    let password = password[0];
    assert_eq!(password["cluster"]["labelSize"], 3, "{password}");
    assert!(
        dropped["near_duplicate"].as_u64().unwrap() >= 2,
        "{dropped}"
    );
    // ... with its composite label: negative because of the CSAT, the unit hashed.
    let labels = &password["labels"];
    assert_eq!(labels["overall"], "negative", "{labels}");
    assert_eq!(labels["csat"], 2);
    assert_eq!(labels["csatLevel"], "low");
    assert_eq!(labels["escalated"], false);
    assert!(
        labels["reason"].as_str().unwrap().contains("CSAT"),
        "{labels}"
    );
    assert_eq!(password["format"], "switchboard.flywheel/v1");
    assert_eq!(password["router"], "support/helpdesk");
    assert!(
        password["unit"].as_str().unwrap().starts_with("sha256:"),
        "{password}"
    );
    assert!(!records.iter().any(|r| r.to_string().contains("password-0")));
    // The escalated payroll questions are negative, "escalated" in the reason.
    let payroll: Vec<&Value> = records
        .iter()
        .filter(|r| PAYROLL.contains(&r["query"].as_str().unwrap()))
        .collect();
    assert!(!payroll.is_empty());
    for r in &payroll {
        assert_eq!(r["labels"]["overall"], "negative", "{r}");
        assert_eq!(r["labels"]["escalated"], true, "{r}");
        assert!(
            r["labels"]["reason"]
                .as_str()
                .unwrap()
                .contains("escalated")
        );
    }
    // The replayed question: one record, resolved (not yet rated: positive once settled, here
    // with --settle 0s, if it cites; else dropped as an uncited positive).
    let two_factor = records
        .iter()
        .filter(|r| r["query"] == "How do I enable two-factor authentication?")
        .count();
    let uncited = dropped["uncited_positive"].as_u64().unwrap();
    assert!(two_factor <= 1);
    assert_eq!(two_factor as u64 + uncited, 1 + u64::from(!rated_cites));
    // The well-rated answer.
    let positive: Vec<&Value> = records
        .iter()
        .filter(|r| r["query"] == "How do I connect Stripe to Ledgerly?")
        .collect();
    if rated_cites {
        assert_eq!(positive.len(), 1);
        let labels = &positive[0]["labels"];
        assert_eq!(labels["overall"], "positive", "{labels}");
        assert_eq!(labels["resolvedWithoutReopen"], true);
        assert_eq!(labels["csatLevel"], "high");
        assert_eq!(labels["settled"], true);
    } else {
        assert!(positive.is_empty());
    }
    let by_label: BTreeMap<String, u64> =
        serde_json::from_value(summary["labels"].clone()).unwrap();
    assert_eq!(by_label.values().sum::<u64>(), records.len() as u64);

    // --- coverage gaps over HTTP ---
    // Customer queries are served by the admin API only, to its token (docs/security.md).
    let (status, _) = http(
        rt.http,
        "GET",
        "/v1/coverage-gaps?minQueries=1&minScore=1",
        "",
    );
    assert_eq!(status, 404, "coverage gaps are not on the public listener");
    for token in [None, Some("not-the-admin-token-0123456789")] {
        let (status, head, body) = http_with(
            rt.admin,
            "GET",
            "/v1/coverage-gaps?minQueries=1&minScore=1",
            "",
            token,
        );
        assert_eq!(status, 401, "{token:?}: {body}");
        assert!(head.contains("www-authenticate: Bearer"), "{head}");
        assert!(!body.contains("payroll"), "{body}");
    }
    let report = admin_json(rt.admin, "/v1/coverage-gaps?minQueries=3&limit=5");
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    assert_eq!(report["router"], "support/helpdesk");
    assert_eq!(report["interactions"], asked, "{report}");
    let top = &report["gaps"][0];
    assert!(
        PAYROLL.contains(&top["query"].as_str().unwrap()),
        "payroll is the top gap: {report}"
    );
    assert_eq!(top["volume"], PAYROLL.len(), "{top}");
    assert_eq!(top["escalated"], PAYROLL.len());
    let share = top["share"].as_f64().unwrap();
    assert!(
        (share - PAYROLL.len() as f64 / f64::from(asked)).abs() < 1e-9,
        "{top}"
    );
    let examples: Vec<&str> = top["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert_eq!(examples.len(), 3, "{top}");
    assert!(examples.iter().all(|e| PAYROLL.contains(e)), "{top}");
    // Nothing else was escalated, refused or unretrieved three times.
    assert!(
        report["gaps"]
            .as_array()
            .unwrap()
            .iter()
            .skip(1)
            .all(|g| !PAYROLL.contains(&g["query"].as_str().unwrap())),
        "{report}"
    );

    // The same report on the command line.
    let cli = runtime_cmd()
        .args(["coverage-gaps", "--outcome-store", &store, "--json"])
        .args(["--router", "support/helpdesk"])
        .output()
        .unwrap();
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let cli: Value = serde_json::from_slice(&cli.stdout).unwrap();
    assert_eq!(cli["gaps"][0]["query"], top["query"], "{cli}");
    assert_eq!(cli["gaps"][0]["volume"], top["volume"]);

    // Bad parameters: 400, naming the parameter.
    for (query, name) in [
        ("limit=0", "limit"),
        ("limit=many", "limit"),
        ("since=yesterday-ish", "since"),
        ("since=1h&until=2h", "since"),
        ("threshold=1.5", "threshold"),
        ("minQueries=-1", "minQueries"),
        ("colour=blue", "colour"),
    ] {
        let (status, body) = admin(rt.admin, "GET", &format!("/v1/coverage-gaps?{query}"));
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.contains(name), "{query}: {body}");
    }

    // Personal data and secrets customers type never reach the store, so neither the export
    // for training nor coverage-gap examples (what the operator writes into a KnowledgeBase's
    // status) hold them; placeholders stand in their place.
    let seeded = [
        "I'm jane.doe@example.com, how do I run payroll for my staff? Card 4111 1111 1111 1111",
        "Payroll for my team please, call +44 20 7946 0958; my password is hunter2!",
        "Refund to DE89 3704 0044 0532 0130 00, API key sk-live-8fJ3kLm9Qw2Er5Ty7Ui0",
        "Payroll question about order ORD-482913 please",
    ];
    for (n, query) in seeded.iter().enumerate() {
        let answer = ask(rt.http, query, &format!("pii-{n}"));
        feedback(&rt, token(&answer), json!({"outcome": "escalated"}));
    }
    let raw = [
        "jane.doe",
        "example.com",
        "4111",
        "7946",
        "hunter2",
        "DE89",
        "3704",
        "sk-live",
        "482913",
        // The units themselves: stored as pseudonyms (HMAC with the unit key).
        "pii-0",
    ];
    let gaps = admin_json(
        rt.admin,
        "/v1/coverage-gaps?minQueries=1&minScore=1&limit=100",
    )
    .to_string();
    let pii_out = work.join("export/pii.jsonl");
    let export = runtime_cmd()
        .args(["export", "--outcome-store", &store])
        .args(["--router", "support/helpdesk", "--settle", "0s", "--out"])
        .arg(&pii_out)
        .output()
        .unwrap();
    assert!(export.status.success());
    let exported = std::fs::read_to_string(&pii_out).unwrap();
    // The database file and its write-ahead log, byte for byte.
    let mut stored = std::fs::read(work.join("outcomes-fw.db")).unwrap();
    stored.extend(std::fs::read(work.join("outcomes-fw.db-wal")).unwrap_or_default());
    let stored = String::from_utf8_lossy(&stored);
    // Nor the runtime's log or its metrics.
    let log = std::fs::read_to_string(work.join("fw.log")).unwrap_or_default();
    let (_, metrics) = http(rt.http, "GET", "/metrics", "");
    for (what, text) in [
        ("coverage gaps", gaps.as_str()),
        ("export", exported.as_str()),
        ("outcome store", &*stored),
        ("runtime log", log.as_str()),
        ("metrics", metrics.as_str()),
    ] {
        for value in raw {
            assert!(!text.contains(value), "{what} holds {value}");
        }
    }
    for placeholder in ["[email]", "[card]", "[phone]", "[secret]", "[iban]"] {
        assert!(gaps.contains(placeholder), "{placeholder} in {gaps}");
    }
    assert!(
        stored.contains("[order]"),
        "the Router's own pattern was applied"
    );
}

/// `switchboard-runtime tickets` on the sample knowledge base's Zendesk export: the survival
/// filters count what they drop (its spam, test, open and one-line tickets), every kept
/// conversation starts with the customer and ends with the agent (no internal note), and the
/// quality cut keeps the top share.
#[test]
fn historical_tickets_become_scored_conversations() {
    let work = tempfile::tempdir().unwrap();
    let export = support::root().join("examples/kb/tickets/tickets.json");
    let run = |keep_top: &str, out: &str| {
        let out = work.path().join(out);
        let result = runtime_cmd()
            .arg("tickets")
            .arg("--zendesk")
            .arg(&export)
            .args(["--keep-top", keep_top, "--out"])
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            result.status.success(),
            "{}",
            String::from_utf8_lossy(&result.stderr)
        );
        let report: Value = serde_json::from_slice(&result.stdout).unwrap();
        let rows: Vec<Value> = std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (report, rows)
    };
    let (report, rows) = run("1", "all.jsonl");
    println!("{report}");
    assert_eq!(report["read"], 10);
    for (rule, n) in [
        ("spam", 1),
        ("test", 1),
        ("not_solved", 1),
        ("too_short", 1),
    ] {
        assert_eq!(report["dropped"][rule], n, "{rule}: {report}");
    }
    assert_eq!(report["kept"], rows.len());
    assert_eq!(rows.len(), 6);
    assert_eq!(report["embeddings"], true);
    for r in &rows {
        let messages = r["messages"].as_array().unwrap();
        assert_eq!(messages[0]["role"], "user", "{r}");
        assert_eq!(messages.last().unwrap()["role"], "assistant", "{r}");
        assert!(
            !r.to_string().contains("Duplicate confirmed"),
            "internal note leaked: {r}"
        );
        assert!(r["quality"].as_f64().unwrap() > 0.0);
    }
    let (report, rows) = run("0.3", "top.jsonl");
    assert_eq!(rows.len(), 2, "{report}");
    assert_eq!(report["dropped"]["below_cut"], 4);
    let cut = report["cutScore"].as_f64().unwrap();
    assert!(rows.iter().all(|r| r["quality"].as_f64().unwrap() >= cut));
}
