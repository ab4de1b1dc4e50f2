//! KB rot: contradiction candidates in the sample knowledge base, and the finder's precision and
//! recall on contradictions and paraphrases injected into a copy of it (hashing embedder; the
//! real encoder's numbers come from the runtime's test of the same injections). Results are in
//! docs/evaluation.md; `--nocapture` prints every candidate.

use crate::common;

use std::path::{Path, PathBuf};

use common::*;
use switchboard_index::consistency::eval::{Injection, inject, score};
use switchboard_index::consistency::{ConsistencyOptions, ConsistencyReport, REPORT_FILE};
use switchboard_index::{BuildOptions, Generation, Generations, SourceLocation, build};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn injections(file: &str) -> Vec<Injection> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(file);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Builds the sample KB found at `root` (a copy, or the original) and returns the generation.
fn build_kb(root: &Path, store_dir: &Path) -> (Generations, String) {
    let original = repo_root().join("examples/kb");
    let mut spec = kb_spec();
    for s in &mut spec.sources {
        if let SourceLocation::Path { path } = &mut s.location {
            *path = root.join(path.strip_prefix(&original).unwrap());
        }
    }
    let store = Generations::open(store_dir).unwrap();
    let e = embedder();
    let report = build(&spec, &store, e.as_ref(), &BuildOptions::default()).unwrap();
    (store, report.manifest.generation)
}

fn all_candidates(store: &Generations, id: &str) -> ConsistencyReport {
    let generation = Generation::load(store, id).unwrap();
    generation.contradictions(&ConsistencyOptions {
        max_reported: usize::MAX,
        ..ConsistencyOptions::default()
    })
}

fn print(report: &ConsistencyReport) {
    for c in &report.contradictions {
        eprintln!(
            "{:.2} (cos {:.2}, ctx {:.2}) {} {}: {} {:?} <-> {} {:?}",
            c.score,
            c.cosine,
            c.context,
            c.kind.as_str(),
            c.unit,
            c.a.doc_id,
            c.a.value,
            c.b.doc_id,
            c.b.value
        );
    }
}

fn is_refund_pair(a: &str, b: &str) -> bool {
    let old = [
        "wiki/Refund-Policy.html",
        "notes/refund-faq-2024.txt",
        "slack/support-escalations/1741948345.000100",
    ];
    (a == "policies/refund-policy.md" && old.contains(&b))
        || (b == "policies/refund-policy.md" && old.contains(&a))
}

#[test]
fn the_sample_kb_old_and_new_refund_windows_are_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let (store, id) = build_kb(&repo_root().join("examples/kb"), dir.path());
    let report = all_candidates(&store, &id);
    eprintln!(
        "sample KB: {} chunks, {} claims, {} pairs compared, {} candidates",
        report.chunks, report.claims, report.pairs_compared, report.total
    );
    print(&report);
    let refund: Vec<_> = report
        .contradictions
        .iter()
        .filter(|c| is_refund_pair(&c.a.doc_id, &c.b.doc_id))
        .collect();
    assert!(
        !refund.is_empty(),
        "the 2026 refund policy (14 days) against an older 30-day copy is not flagged"
    );
    for c in &refund {
        // The older copy comes first: it is the one to review.
        assert_ne!(c.a.doc_id, "policies/refund-policy.md", "{c:?}");
        assert!(c.b.value.starts_with("14"), "{c:?}");
    }
    // The build stored the same list and put the count and the best few in the manifest.
    let stored = store.consistency(&id).unwrap().unwrap();
    assert_eq!(stored.total, report.total);
    let summary = Generation::load(&store, &id)
        .unwrap()
        .manifest
        .consistency
        .unwrap();
    assert_eq!(summary.contradictions, report.total);
    assert!(summary.top.len() <= 5 && !summary.top.is_empty());
    assert!(store.path(&id).join(REPORT_FILE).exists());
    // An unchanged rebuild takes the report over instead of recomputing it; same content.
    let again = build(
        &kb_spec(),
        &store,
        embedder().as_ref(),
        &BuildOptions::default(),
    )
    .unwrap();
    assert_eq!(again.consistency, stored);
    assert_eq!(
        store
            .consistency(&again.manifest.generation)
            .unwrap()
            .unwrap(),
        stored
    );
}

/// Scores the finder on a copy of the sample KB with the injections of `file`.
fn evaluate(file: &str) -> switchboard_index::consistency::eval::Score {
    let injections = injections(file);
    let dir = tempfile::tempdir().unwrap();
    let kb: PathBuf = dir.path().join("kb");
    copy_dir(&repo_root().join("examples/kb"), &kb);
    inject(&repo_root().join("examples/kb"), &kb, &injections).unwrap();
    let (store, id) = build_kb(&kb, &dir.path().join("index"));
    let report = all_candidates(&store, &id);
    print(&report);
    let s = score(&report, &injections);
    eprintln!(
        "{file}: injected {} contradictions and {} paraphrases: recall {:.3} ({}/{}), precision \
         {:.3} ({}/{} candidates touching an injected document)\nmissed: {:#?}\nwrong: {:#?}",
        s.injected,
        injections.len() - s.injected,
        s.recall,
        s.found,
        s.injected,
        s.precision,
        s.correct,
        s.flagged,
        s.missed,
        s.wrong
    );
    s
}

/// Copies of real passages with one value edited, and paraphrases with the values kept: the
/// finder should flag the first and not the second (hashing embedder; measured in
/// docs/evaluation.md).
#[test]
fn injected_contradictions_are_found_and_paraphrases_are_not() {
    let s = evaluate("kb-injections.json");
    assert!(s.injected >= 15, "the evaluation set shrank");
    assert!(s.recall >= 0.8, "recall {:.3}", s.recall);
    assert!(s.precision >= 0.8, "precision {:.3}", s.precision);
}

/// Contradictions reworded by another author and paraphrases next to other numbers: what the
/// finder misses (values it cannot read, a slot restated with another value) is measured here.
#[test]
fn reworded_contradictions_are_measured() {
    let s = evaluate("kb-injections-hard.json");
    assert!(s.injected >= 8, "the evaluation set shrank");
    // Measured 5/8 and 9/10 (docs/evaluation.md): the floors guard against regressions.
    assert!(s.recall >= 0.5, "recall {:.3}", s.recall);
    assert!(s.precision >= 0.8, "precision {:.3}", s.precision);
}
