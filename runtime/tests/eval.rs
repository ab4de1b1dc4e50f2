//! `switchboard-runtime eval` end to end, with the real binary and the real MiniLM encoder:
//! a tiny FAQ whose BM25 numbers are checked by hand, and the sample KnowledgeBase's golden set.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod support;
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
