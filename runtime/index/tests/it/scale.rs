//! Build and query at ~10k chunks. Timing numbers are printed, not asserted tightly (machines
//! differ); run in release for meaningful numbers:
//! `cargo test -p switchboard-index --release --test it scale:: -- --ignored --nocapture`.
// Helpers outside #[test] fns panic on failure, like the tests themselves.

use crate::common;

use std::sync::Arc;
use std::time::Instant;

use common::*;
use switchboard_index::{
    BuildOptions, ChunkingSpec, Generations, HashingEmbedder, Retriever, SearchOptions,
    SourceFormat, build,
};

/// Synthesises `n` Markdown documents of 5 sections x 2 paragraphs from the sample KB's vocabulary.
fn synthetic_docs(n: usize) -> Vec<(String, String)> {
    let words: Vec<String> =
        std::fs::read_to_string(repo_root().join("examples/kb/policies/refund-policy.md"))
            .unwrap()
            .split_whitespace()
            .chain(
                std::fs::read_to_string(repo_root().join("examples/kb/guides/api-rate-limits.md"))
                    .unwrap()
                    .split_whitespace(),
            )
            .map(|w| {
                w.trim_matches(|c: char| !c.is_alphanumeric())
                    .to_lowercase()
            })
            .filter(|w| w.len() > 2)
            .collect();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    (0..n)
        .map(|d| {
            let mut md = format!(
                "---\nlast_modified: 2025-0{}-1{}\n---\n# Article {d}\n\n",
                1 + d % 9,
                d % 10
            );
            for s in 0..5 {
                md.push_str(&format!(
                    "## Topic {} {s}\n\n",
                    words[(next() % words.len() as u64) as usize]
                ));
                for _ in 0..2 {
                    let para: Vec<&str> = (0..60)
                        .map(|_| words[(next() % words.len() as u64) as usize].as_str())
                        .collect();
                    md.push_str(&para.join(" "));
                    md.push_str(".\n\n");
                }
            }
            (format!("doc-{d:05}.md"), md)
        })
        .collect()
}

#[test]
#[ignore = "scale run; use --release"]
fn ten_thousand_chunks() {
    let docs = synthetic_docs(1000);
    let files: Vec<(&str, &str)> = docs.iter().map(|(n, c)| (n.as_str(), c.as_str())).collect();
    let mut s = spec(vec![inline_source(
        "synthetic",
        SourceFormat::Markdown,
        "policy",
        &files,
    )]);
    s.chunking = ChunkingSpec::Hierarchical {
        max_tokens: 96,
        overlap: 16,
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Generations::open(dir.path()).unwrap();
    let e = Arc::new(HashingEmbedder::new(384));
    let t = Instant::now();
    let report = build(&s, &store, e.as_ref(), &BuildOptions::default()).unwrap();
    let build_time = t.elapsed();
    let chunks = report.manifest.chunks;
    eprintln!(
        "build: {chunks} chunks in {build_time:?} (ingest {:?}, embed {:?}, contradiction check \
         {:?}: {} claims, {} pairs compared, {} candidates; write {:?})",
        report.ingest_time,
        report.embed_time,
        report.consistency_time,
        report.consistency.claims,
        report.consistency.pairs_compared,
        report.consistency.total,
        report.write_time
    );
    assert!(chunks >= 10_000, "{chunks} chunks");
    let t = Instant::now();
    let rebuild = build(&s, &store, e.as_ref(), &BuildOptions::default()).unwrap();
    eprintln!(
        "rebuild with everything reused: {:?} ({} embedded; ingest {:?}, embed {:?}, write {:?})",
        t.elapsed(),
        rebuild.chunks_embedded,
        rebuild.ingest_time,
        rebuild.embed_time,
        rebuild.write_time
    );

    store.publish(&report.manifest.generation).unwrap();
    let t = Instant::now();
    let g = Arc::new(store.load_current().unwrap());
    eprintln!("load: {:?}", t.elapsed());
    let r = Retriever::new(g, Some(e.clone())).unwrap();
    let queries = [
        "refund within 14 days",
        "api rate limit per minute",
        "annual plans cancelled",
        "webhook retries backoff",
    ];
    for (name, opts) in [
        (
            "bm25",
            SearchOptions {
                dense: false,
                ..Default::default()
            },
        ),
        (
            "dense",
            SearchOptions {
                bm25: false,
                ..Default::default()
            },
        ),
        ("hybrid", SearchOptions::default()),
    ] {
        let mut times: Vec<f64> = Vec::new();
        for i in 0..400 {
            let t = Instant::now();
            let res = r.search(queries[i % queries.len()], &opts).unwrap();
            times.push(t.elapsed().as_secs_f64() * 1e3);
            assert!(!res.passages.is_empty());
        }
        times.sort_by(f64::total_cmp);
        eprintln!(
            "{name:>6}: p50 {:.2} ms  p99 {:.2} ms",
            times[times.len() / 2],
            times[times.len() * 99 / 100]
        );
    }
}
