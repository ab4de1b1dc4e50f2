//! `switchboard-runtime eval` end to end, with the real binary and the real MiniLM encoder:
//! a tiny FAQ whose BM25 numbers are checked by hand, and the sample KnowledgeBase's golden set.

use crate::support;
use support::root;

use std::process::Command;

use serde_json::Value;

fn eval(args: &[&str]) -> Value {
    assert!(
        root()
            .join(".cache/models/all-MiniLM-L6-v2/model.safetensors")
            .exists(),
        "run hack/setup.sh models"
    );
    let output = Command::new(env!("CARGO_BIN_EXE_switchboard-runtime"))
        .current_dir(root())
        .env(
            "SWITCHBOARD_ENCODER",
            root().join(".cache/models/all-MiniLM-L6-v2"),
        )
        .env("SWITCHBOARD_THREADS", "2")
        .env("RUST_LOG", "warn")
        .arg("eval")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "eval failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn row<'a>(report: &'a Value, prefix: &str) -> &'a Value {
    report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["config"].as_str().unwrap().starts_with(prefix))
        .unwrap_or_else(|| panic!("no row {prefix} in {report}"))
}

fn metric(row: &Value, name: &str) -> f64 {
    row[name]
        .as_f64()
        .unwrap_or_else(|| panic!("no {name} in {row}"))
}

/// Three answers with disjoint vocabularies and four questions: three share rare words with their
/// own answer only (BM25 ranks it first: every metric 1), one shares no word with any answer
/// (BM25 retrieves nothing: every metric 0). Means: exactly 3/4 for BM25. Dense always ranks
/// something, and with three documents every gold is within the top 5.
#[test]
fn metrics_on_a_hand_checked_faq() {
    let dir = tempfile::tempdir().unwrap();
    let faq = dir.path().join("faq.jsonl");
    let rows = [
        (
            "How do I renew a passport?",
            "Passport renewal: bring the expired passport and a photo to the passport office.",
        ),
        (
            "Where can I park a bicycle?",
            "Bicycle parking racks stand next to the railway station entrance.",
        ),
        (
            "When is the swimming pool open?",
            "The swimming pool opens at seven in the morning on weekdays.",
        ),
        ("Zxqv wrlt?", "Recycling bins are emptied every Tuesday."),
    ];
    let lines: Vec<String> = rows
        .iter()
        .enumerate()
        .map(|(i, (q, a))| serde_json::json!({"id": format!("r{i}"), "q": q, "a": a}).to_string())
        .collect();
    std::fs::write(&faq, lines.join("\n")).unwrap();

    let report = eval(&["--zaragoza", faq.to_str().unwrap()]);
    assert_eq!(report["queries"], 4);
    assert_eq!(report["documents"], 4);
    let bm25 = row(&report, "bm25");
    for name in ["recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10"] {
        assert!(
            (metric(bm25, name) - 0.75).abs() < 1e-9,
            "bm25 {name}: {bm25}"
        );
    }
    let dense = row(&report, "dense");
    assert_eq!(metric(dense, "recall@5"), 1.0, "{dense}");
    assert!(metric(dense, "mrr@10") >= 0.75, "{dense}");
    // MRR >= nDCG's lower bound for a single gold: nDCG = 1/log2(rank+1) >= 1/rank.
    assert!(metric(dense, "ndcg@10") >= metric(dense, "mrr@10") - 1e-9);
}

/// The sample KnowledgeBase and its golden set: every configuration runs and the numbers are
/// those of a working pipeline (the golden set is small: 35 queries).
#[test]
fn sample_knowledge_base_golden_set() {
    let report = eval(&[
        "--manifests",
        "examples/kb/knowledgebase.yaml",
        "--golden",
        "examples/kb/golden.jsonl",
        "--now",
        "1793491200", // 2026-11-01: the sample KB's dates are fixed, so is "now"
        "--dense-weights",
        "0.7",
    ]);
    assert!(report["queries"].as_u64().unwrap() >= 30, "{report}");
    assert_eq!(report["skipped"], 0);
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "bm25, dense, hybrid, weighted: {report}");
    for r in rows {
        for name in ["recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10"] {
            let v = metric(r, name);
            assert!((0.0..=1.0).contains(&v), "{name} {v} in {r}");
        }
        assert!(metric(r, "recall@1") <= metric(r, "recall@5"));
        assert!(metric(r, "recall@5") <= metric(r, "recall@10"));
        assert!(metric(r, "mrr@10") <= metric(r, "recall@10") + 1e-9);
    }
    let hybrid = row(&report, "hybrid (rrf");
    assert!(metric(hybrid, "recall@5") > 0.8, "{hybrid}");
    assert!(metric(hybrid, "mrr@10") > 0.6, "{hybrid}");
    assert!(metric(row(&report, "dense"), "recall@5") > 0.8, "{report}");
}

/// `eval --answers` on the demo's configuration (extractive: no generation, so the test is
/// quick) and the independent 35-question set: the stages are there and the numbers are those
/// of answers that carry the fact, cite it and never echo the prompt.
#[test]
fn answers_on_the_sample_knowledge_base() {
    let data = tempfile::tempdir().unwrap();
    let report = eval(&[
        "--answers",
        "--manifests",
        "examples/scenario.yaml",
        "--golden",
        "examples/kb/golden.jsonl",
        "--mode",
        "extractive",
        "--no-gold-context",
        "--index-data",
        data.path().to_str().unwrap(),
    ]);
    let full = &report["stages"][0];
    assert_eq!(full["stage"], "full pipeline", "{report}");
    assert_eq!(full["answerable"], 35);
    assert!(metric(full, "keyFactAccuracy") >= 0.85, "{full}");
    assert_eq!(metric(full, "echoRate"), 0.0, "{full}");
    assert_eq!(metric(full, "invalidCitationRate"), 0.0, "{full}");
    assert!(metric(full, "falseRefusal") <= 0.05, "{full}");
    assert!(
        metric(&report["retrieval"], "factInPassages") >= 0.9,
        "{report}"
    );
    for v in report["queries"]["full pipeline"].as_array().unwrap() {
        let answer = v["answer"].as_str().unwrap();
        if v["refused"] == false {
            assert!(answer.contains("[1]"), "uncited: {v}");
            assert_eq!(v["echo"], false, "breadcrumb echoed: {v}");
        }
    }
    // The demo's question: 14 days, the refund policy cited.
    let q01 = report["queries"]["full pipeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == "q01")
        .unwrap();
    assert_eq!(q01["keyFact"], true, "{q01}");
    assert!(
        q01["cited"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d == "policies/refund-policy.md"),
        "{q01}"
    );
}

/// A gold id that names nothing in the index is an error naming the query and the id, not a
/// silent miss.
#[test]
fn a_gold_id_typo_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let golden = dir.path().join("golden.jsonl");
    std::fs::write(
        &golden,
        r#"{"id": "t1", "query": "How many days do I have to request a refund?", "key_facts": [["14 days"]], "gold_docs": ["policies/refund-polcy.md"]}"#,
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_switchboard-runtime"))
        .current_dir(root())
        .env("RUST_LOG", "warn")
        .args([
            "eval",
            "--answers",
            "--manifests",
            "examples/scenario.yaml",
            "--golden",
        ])
        .arg(&golden)
        .arg("--index-data")
        .arg(dir.path().join("index"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("t1: gold_docs \"policies/refund-polcy.md\""),
        "{stderr}"
    );
    // An answerable question without key facts is refused before anything is built.
    std::fs::write(
        &golden,
        r#"{"id": "t2", "query": "refund?", "gold_docs": ["policies/refund-policy.md"]}"#,
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_switchboard-runtime"))
        .current_dir(root())
        .args([
            "eval",
            "--answers",
            "--manifests",
            "examples/scenario.yaml",
            "--golden",
        ])
        .arg(&golden)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("has no key_facts"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
