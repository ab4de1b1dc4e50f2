//! KB rot with the real encoder: `switchboard-runtime index` finds contradiction candidates on
//! the MiniLM vectors of the generation it builds, writes them to `contradictions.json` and puts
//! the count and the best few into the build report the operator reads. On a copy of the sample
//! knowledge base with known contradictions and paraphrases injected
//! (`runtime/index/tests/fixtures/kb-injections.json`), precision and recall are measured
//! (docs/evaluation.md; `--nocapture` prints them).

use crate::support;

use std::path::Path;

use support::{copy_dir, root, runtime_cmd};
use switchboard_index::Generations;
use switchboard_index::consistency::ConsistencyReport;
use switchboard_index::consistency::eval::{Injection, inject, score};

/// Indexes the KnowledgeBase manifest of `kb` into `data` with the real encoder; returns the
/// build report (the termination message) and the generation's candidates.
fn index(kb: &Path, data: &Path) -> (serde_json::Value, ConsistencyReport) {
    let report_file = data.join("report.json");
    std::fs::create_dir_all(data).unwrap();
    let out = runtime_cmd()
        .arg("index")
        .arg("--manifests")
        .arg(kb.join("knowledgebase.yaml"))
        .arg("--data")
        .arg(data)
        .arg("--report-file")
        .arg(&report_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "index failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report_file).unwrap()).unwrap();
    let store = Generations::open(data.join("ledgerly-support")).unwrap();
    let current = store.current().unwrap().unwrap();
    (report, store.consistency(&current).unwrap().unwrap())
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

/// Floors of the MiniLM run (measured: docs/evaluation.md).
const MIN_RECALL: f64 = 0.8;
const MIN_PRECISION: f64 = 0.8;

#[test]
fn the_index_build_reports_contradictions_and_finds_injected_ones_with_the_real_encoder() {
    assert!(
        root()
            .join(".cache/models/all-MiniLM-L6-v2/model.safetensors")
            .exists(),
        "run hack/setup.sh models"
    );
    let work = tempfile::tempdir().unwrap();

    // The sample knowledge base as it is: the old 30-day refund copies against the 2026 policy.
    let (report, original) = index(&root().join("examples/kb"), &work.path().join("original"));
    eprintln!(
        "sample KB (MiniLM): {} claims, {} candidates",
        original.claims, original.total
    );
    print(&original);
    let summary = &report["contradictions"];
    assert_eq!(summary["count"], original.total, "{report}");
    assert!(
        summary["top"]
            .as_array()
            .is_some_and(|t| !t.is_empty() && t.len() <= 3),
        "{report}"
    );
    assert!(
        original.contradictions.iter().any(|c| {
            c.b.doc_id == "policies/refund-policy.md"
                && ["wiki/Refund-Policy.html", "notes/refund-faq-2024.txt"]
                    .contains(&c.a.doc_id.as_str())
        }),
        "the 2026 refund policy against an older 30-day copy is not flagged"
    );

    // Copies with known contradictions and paraphrases: copied passages with one value edited,
    // then passages reworded by another author (harder; lower floors).
    for (file, min_recall, min_precision) in [
        ("kb-injections.json", MIN_RECALL, MIN_PRECISION),
        ("kb-injections-hard.json", 0.5, 0.8),
    ] {
        let injections: Vec<Injection> = serde_json::from_str(
            &std::fs::read_to_string(root().join("runtime/index/tests/fixtures").join(file))
                .unwrap(),
        )
        .unwrap();
        let kb = work.path().join(file).join("kb");
        copy_dir(&root().join("examples/kb"), &kb);
        inject(&root().join("examples/kb"), &kb, &injections).unwrap();
        let (_, injected) = index(&kb, &work.path().join(file).join("data"));
        print(&injected);
        let s = score(&injected, &injections);
        eprintln!(
            "MiniLM, {file}: injected {} contradictions and {} paraphrases: recall {:.3} \
             ({}/{}), precision {:.3} ({}/{} candidates touching an injected document)\n\
             missed: {:#?}\nwrong: {:#?}",
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
        assert!(s.recall >= min_recall, "{file}: recall {:.3}", s.recall);
        assert!(
            s.precision >= min_precision,
            "{file}: precision {:.3}",
            s.precision
        );
    }
}
