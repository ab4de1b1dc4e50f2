//! Builds, reuse, bad files, publishing and switching back, and the retrieval pipeline's stages.
// Helpers outside #[test] fns panic on failure, like the tests themselves.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use switchboard_index::{
    BuildOptions, Embedder, Error, Fusion, Generations, HashingEmbedder, RelevanceFloor,
    RerankOptions, RerankStatus, Reranker, RetrievalFailure, Retriever, SearchOptions,
    SourceFormat, SourceLocation, SourceSpec, build,
};

const REFUND_NEW: &str = "---\ntitle: Refund policy\nlast_modified: 2026-09-01\n---\n# Refund policy\n\n\
    ## Refund window\n\nRequest a refund within 14 days of your first payment.\n";
const REFUND_OLD: &str = "---\ntitle: Refund policy refunds\nlast_modified: 2024-01-15\n---\n# Refund policy refunds\n\n\
    ## Refund window for refunds\n\nRefund refund refunds: request a refund within 30 days of any payment. Refund requests \
    are always approved.\n";

fn two_policies() -> switchboard_index::IndexSpec {
    spec(vec![
        inline_source(
            "current",
            SourceFormat::Markdown,
            "policy",
            &[("refund.md", REFUND_NEW)],
        ),
        inline_source(
            "archive",
            SourceFormat::Markdown,
            "policy",
            &[("refund-2023.md", REFUND_OLD)],
        ),
    ])
}

#[test]
fn fresh_policy_outranks_stale_one_only_with_decay() {
    let dir = tempfile::tempdir().unwrap();
    let store = Generations::open(dir.path()).unwrap();
    let e = embedder();
    let report = build(
        &two_policies(),
        &store,
        e.as_ref(),
        &BuildOptions::default(),
    )
    .unwrap();
    store.publish(&report.manifest.generation).unwrap();
    let r = Retriever::new(Arc::new(store.load_current().unwrap()), Some(as_dyn(&e))).unwrap();
    let q = "refund policy window";
    let off = r
        .search(
            q,
            &SearchOptions {
                recency: false,
                now: Some(NOW),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        off.passages[0].doc_id, "archive/refund-2023.md",
        "the stale page matches the words better"
    );
    assert!(off.passages.iter().all(|p| p.scores.decay == 1.0));
    let on = r
        .search(
            q,
            &SearchOptions {
                now: Some(NOW),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(on.passages[0].doc_id, "current/refund.md");
    let old = on
        .passages
        .iter()
        .find(|p| p.doc_id == "archive/refund-2023.md")
        .unwrap();
    // 2024-01-15 -> 2026-11-01 is 1021 days: floor + (1 - floor) * 0.5^(1021/90).
    assert!(
        (old.scores.decay - (0.5 + 0.5 * 0.5f32.powf(1021.0 / 90.0))).abs() < 1e-4,
        "{}",
        old.scores.decay
    );
    let pure = r
        .search(
            q,
            &SearchOptions {
                now: Some(NOW),
                recency_floor: 0.0,
                ..Default::default()
            },
        )
        .unwrap();
    let old = pure
        .passages
        .iter()
        .find(|p| p.doc_id == "archive/refund-2023.md")
        .unwrap();
    assert!(
        (old.scores.decay - 0.5f32.powf(1021.0 / 90.0)).abs() < 1e-6,
        "{}",
        old.scores.decay
    );
    // Evergreen: the same stale page in an evergreen source does not decay.
    let mut s = two_policies();
    s.sources[1].freshness_class = "evergreen".into();
    let report = build(&s, &store, e.as_ref(), &BuildOptions::default()).unwrap();
    store.publish(&report.manifest.generation).unwrap();
    let r = Retriever::new(Arc::new(store.load_current().unwrap()), Some(as_dyn(&e))).unwrap();
    let on = r
        .search(
            q,
            &SearchOptions {
                now: Some(NOW),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(on.passages[0].doc_id, "archive/refund-2023.md");
}

#[test]
fn a_corrupt_file_is_reported_and_the_rest_indexed() {
    let dir = tempfile::tempdir().unwrap();
    let kb = dir.path().join("kb");
    std::fs::create_dir_all(kb.join("pdf")).unwrap();
    std::fs::create_dir_all(kb.join("md")).unwrap();
    std::fs::copy(
        repo_root().join("examples/kb/pdf/sla.pdf"),
        kb.join("pdf/sla.pdf"),
    )
    .unwrap();
    std::fs::write(
        kb.join("pdf/broken.pdf"),
        b"%PDF-1.4\n1 0 obj << /Type /Catalog >> garbage",
    )
    .unwrap();
    std::fs::write(kb.join("pdf/not-a-pdf.pdf"), b"hello").unwrap();
    std::fs::write(kb.join("md/good.md"), "# Good\n\nFine text.\n").unwrap();
    std::fs::write(
        kb.join("md/bad-front-matter.md"),
        "---\ntitle: [oops\n---\nBody\n",
    )
    .unwrap();
    std::fs::write(kb.join("md/latin1.md"), b"# Caf\xe9\n").unwrap();
    let mut s = spec(vec![
        SourceSpec {
            name: "pdf".into(),
            format: SourceFormat::Pdf,
            freshness_class: "policy".into(),
            location: SourceLocation::Path {
                path: kb.join("pdf"),
            },
            resolved_tags: None,
        },
        SourceSpec {
            name: "md".into(),
            format: SourceFormat::Markdown,
            freshness_class: "policy".into(),
            location: SourceLocation::Path {
                path: kb.join("md"),
            },
            resolved_tags: None,
        },
        SourceSpec {
            name: "gone".into(),
            format: SourceFormat::Html,
            freshness_class: "policy".into(),
            location: SourceLocation::Path {
                path: kb.join("does-not-exist"),
            },
            resolved_tags: None,
        },
    ]);
    s.sources.push(inline_source(
        "tickets",
        SourceFormat::ZendeskTickets,
        "standard",
        &[("t.json", "{\"tickets\": [")],
    ));
    let store = Generations::open(dir.path().join("store")).unwrap();
    let report = build(
        &s,
        &store,
        &HashingEmbedder::new(64),
        &BuildOptions::default(),
    )
    .unwrap();
    let by_name = |n: &str| {
        report
            .manifest
            .sources
            .iter()
            .find(|s| s.name == n)
            .unwrap()
    };
    let pdf = by_name("pdf");
    assert_eq!(pdf.documents, 1);
    let mut bad: Vec<(&str, &str)> = pdf
        .errors
        .iter()
        .map(|e| (e.item.as_str(), e.reason.as_str()))
        .collect();
    bad.sort();
    assert_eq!(bad.len(), 2, "{bad:?}");
    assert_eq!(bad[0].0, "broken.pdf");
    assert_eq!(
        bad[1],
        ("not-a-pdf.pdf", "not a PDF (missing %PDF- header)")
    );
    let md = by_name("md");
    assert_eq!(md.documents, 1);
    let md_errors: Vec<&str> = md.errors.iter().map(|e| e.item.as_str()).collect();
    assert_eq!(md_errors, ["bad-front-matter.md", "latin1.md"]);
    assert!(by_name("gone").errors[0].reason.starts_with("cannot read"));
    assert!(by_name("tickets").errors[0].reason.contains("invalid JSON"));
    assert_eq!(report.source_errors(), 6);
    // The good content is searchable.
    store.publish(&report.manifest.generation).unwrap();
    let g = store.load_current().unwrap();
    assert!(g.chunks().iter().any(|c| c.doc_id == "md/good.md"));
    assert!(g.chunks().iter().any(|c| c.doc_id == "pdf/sla.pdf"));
}

#[test]
fn unchanged_sources_are_not_parsed_or_embedded_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = Generations::open(dir.path()).unwrap();
    let e = HashingEmbedder::new(128);
    let first = build(&kb_spec(), &store, &e, &BuildOptions::default()).unwrap();
    let embedded_first = e.texts_embedded();
    assert_eq!(embedded_first, first.manifest.chunks);
    store.publish(&first.manifest.generation).unwrap();

    // Same sources: nothing embedded, every source reused.
    let second = build(&kb_spec(), &store, &e, &BuildOptions::default()).unwrap();
    assert_eq!(e.texts_embedded(), embedded_first, "no re-embedding");
    assert_eq!(second.chunks_embedded, 0);
    assert_eq!(second.sources_reused, second.manifest.sources.len());
    assert_eq!(second.manifest.chunks, first.manifest.chunks);
    assert_eq!(second.manifest.sources, {
        let mut s = first.manifest.sources.clone();
        s.iter_mut().for_each(|s| s.reused = true);
        s
    });
    store.publish(&second.manifest.generation).unwrap();
    let a = store.load_current().unwrap();
    let b = switchboard_index::Generation::load(&store, &first.manifest.generation).unwrap();
    assert_eq!(a.chunks(), b.chunks());

    // One source changes: only its new chunk text is embedded.
    let mut s = kb_spec();
    s.sources.push(inline_source(
        "extra",
        SourceFormat::PlainText,
        "standard",
        &[("new.txt", "A brand new note about invoices.")],
    ));
    let third = build(&s, &store, &e, &BuildOptions::default()).unwrap();
    assert_eq!(third.chunks_embedded, 1);
    assert_eq!(e.texts_embedded(), embedded_first + 1);

    // A different model: vectors are not reused (chunks still are).
    let other = HashingEmbedder::new(64);
    let fourth = build(&s, &store, &other, &BuildOptions::default()).unwrap();
    assert_eq!(fourth.chunks_embedded, fourth.manifest.chunks);
}

/// Fails on the n-th `embed` call.
struct FailingEmbedder {
    inner: HashingEmbedder,
    calls: AtomicUsize,
    fail_on: usize,
}

impl Embedder for FailingEmbedder {
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    fn model_id(&self) -> String {
        self.inner.model_id()
    }
    fn embed(&self, texts: &[String]) -> switchboard_index::Result<Vec<Vec<f32>>> {
        if self.calls.fetch_add(1, Ordering::SeqCst) + 1 == self.fail_on {
            return Err(Error::Embedding {
                model: self.model_id(),
                message: "device lost".into(),
            });
        }
        self.inner.embed(texts)
    }
}

#[test]
fn a_failed_build_is_never_listed_or_published() {
    let dir = tempfile::tempdir().unwrap();
    let store = Generations::open(dir.path()).unwrap();
    let good = build(
        &two_policies(),
        &store,
        &HashingEmbedder::new(64),
        &BuildOptions::default(),
    )
    .unwrap();
    store.publish(&good.manifest.generation).unwrap();

    let failing = FailingEmbedder {
        inner: HashingEmbedder::new(64),
        calls: AtomicUsize::new(0),
        fail_on: 2,
    };
    let opts = BuildOptions {
        embed_batch: 1,
        reuse: false,
    };
    let err = build(&kb_spec(), &store, &failing, &opts).unwrap_err();
    assert!(err.to_string().contains("device lost"));
    let listed: Vec<String> = store.list().unwrap().into_iter().map(|g| g.id).collect();
    assert_eq!(listed, std::slice::from_ref(&good.manifest.generation));
    assert_eq!(
        store.current().unwrap(),
        Some(good.manifest.generation.clone())
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0,
        "partial build cleaned up"
    );

    // A crashed build (directory without manifest) is invisible and cannot be published.
    std::fs::create_dir_all(store.path("gen-000009/tantivy")).unwrap();
    std::fs::write(store.path("gen-000009/chunks.jsonl"), "{}\n").unwrap();
    assert_eq!(store.list().unwrap().len(), 1);
    assert!(matches!(
        store.publish("gen-000009"),
        Err(Error::GenerationNotFound(_))
    ));
    assert_eq!(store.current().unwrap(), Some(good.manifest.generation));
}

#[test]
fn publish_switch_back_and_prune() {
    let dir = tempfile::tempdir().unwrap();
    let store = Generations::open(dir.path()).unwrap();
    let e = HashingEmbedder::new(64);
    assert!(store.switch_back().is_err(), "nothing to switch back to");
    let mut ids = Vec::new();
    for i in 0..4 {
        let s = spec(vec![inline_source(
            "kb",
            SourceFormat::PlainText,
            "standard",
            &[("a.txt", &format!("Version {i} of the note."))],
        )]);
        let r = build(&s, &store, &e, &BuildOptions::default()).unwrap();
        store.publish(&r.manifest.generation).unwrap();
        ids.push(r.manifest.generation);
    }
    assert_eq!(
        ids,
        ["gen-000001", "gen-000002", "gen-000003", "gen-000004"]
    );
    let text = |store: &Generations| store.load_current().unwrap().chunks()[0].text.clone();
    assert_eq!(text(&store), "Version 3 of the note.");
    assert_eq!(store.switch_back().unwrap(), "gen-000003");
    assert_eq!(text(&store), "Version 2 of the note.");
    assert_eq!(store.switch_back().unwrap(), "gen-000002");
    store.publish("gen-000004").unwrap();
    // Keep 1: the newest (current) stays, and so does the switch-back target (gen-000002).
    let deleted = store.prune(1).unwrap();
    assert_eq!(deleted, ["gen-000001", "gen-000003"]);
    assert_eq!(store.switch_back().unwrap(), "gen-000002");
    assert!(store.switch_back().is_err());
}

struct FixedReranker {
    delay: Duration,
    prefer: &'static str,
}

impl Reranker for FixedReranker {
    fn model_id(&self) -> String {
        "fixed".into()
    }
    fn score(&self, _query: &str, passages: &[String]) -> switchboard_index::Result<Vec<f32>> {
        std::thread::sleep(self.delay);
        Ok(passages
            .iter()
            .map(|p| if p.contains(self.prefer) { 5.0 } else { -5.0 })
            .collect())
    }
}

fn kb_retriever(dir: &std::path::Path) -> Retriever {
    let store = Generations::open(dir).unwrap();
    let e = embedder();
    let r = build(&kb_spec(), &store, e.as_ref(), &BuildOptions::default()).unwrap();
    store.publish(&r.manifest.generation).unwrap();
    Retriever::new(Arc::new(store.load_current().unwrap()), Some(as_dyn(&e))).unwrap()
}

#[test]
fn rerank_reorders_within_deadline_and_is_skipped_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let base = kb_retriever(dir.path());
    let q = "refund window days";
    let opts = SearchOptions {
        now: Some(NOW),
        top_k: 10,
        rerank: Some(RerankOptions {
            top_n: 10,
            deadline: Duration::from_millis(500),
            weight: 1.0,
        }),
        ..Default::default()
    };
    let fused = base
        .search(
            q,
            &SearchOptions {
                rerank: None,
                ..opts.clone()
            },
        )
        .unwrap();
    assert_eq!(fused.rerank, RerankStatus::Off);

    // The reranker likes the 6th fused passage best: it moves to the top.
    let sixth = &fused.passages[5];
    let marker: &'static str = Box::leak(sixth.text.clone().into_boxed_str());
    let fast = base.clone().with_reranker(Arc::new(FixedReranker {
        delay: Duration::ZERO,
        prefer: marker,
    }));
    let res = fast.search(q, &opts).unwrap();
    assert_eq!(res.rerank, RerankStatus::Completed { candidates: 10 });
    assert_eq!(res.passages[0].chunk_id, sixth.chunk_id);
    assert!(res.passages[0].scores.rerank.is_some() && res.timings.rerank.is_some());

    let slow = base.clone().with_reranker(Arc::new(FixedReranker {
        delay: Duration::from_millis(400),
        prefer: "Duplicate",
    }));
    let opts = SearchOptions {
        rerank: Some(RerankOptions {
            top_n: 10,
            deadline: Duration::from_millis(50),
            weight: 1.0,
        }),
        ..opts
    };
    let res = slow.search(q, &opts).unwrap();
    assert_eq!(
        res.rerank,
        RerankStatus::TimedOut {
            deadline: Duration::from_millis(50)
        }
    );
    let ids = |r: &switchboard_index::SearchResponse| {
        r.passages
            .iter()
            .map(|p| p.chunk_id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&res), ids(&fused), "fused order is served on timeout");
    assert!(res.timings.rerank.unwrap() < Duration::from_millis(300));
}

#[test]
fn stages_switch_off_and_floor_reports_failure() {
    let dir = tempfile::tempdir().unwrap();
    let r = kb_retriever(dir.path());
    let q = "error LDG-429 too many requests";
    let bm25 = r
        .search(
            q,
            &SearchOptions {
                dense: false,
                ..Default::default()
            },
        )
        .unwrap();
    assert!(bm25.timings.dense.is_none() && bm25.timings.embed.is_none());
    assert!(
        bm25.passages
            .iter()
            .all(|p| p.scores.dense.is_none() && p.scores.bm25.is_some())
    );
    let dense = r
        .search(
            q,
            &SearchOptions {
                bm25: false,
                ..Default::default()
            },
        )
        .unwrap();
    assert!(dense.timings.bm25.is_none());
    assert!(
        dense
            .passages
            .iter()
            .all(|p| p.scores.bm25.is_none() && p.scores.dense.is_some())
    );
    for fusion in [
        Fusion::Rrf { k: 60.0 },
        Fusion::Weighted {
            bm25: 0.5,
            dense: 0.5,
        },
    ] {
        let res = r
            .search(
                q,
                &SearchOptions {
                    fusion,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(
            res.passages[0].doc_id, "guides/api-rate-limits.md",
            "{fusion:?}"
        );
        assert!(
            res.passages
                .windows(2)
                .all(|w| w[0].scores.final_score >= w[1].scores.final_score)
        );
    }

    // Nothing relevant: every passage is below the dense floor -> retrieval failure.
    let res = r
        .search(
            "zebra xylophone quantum",
            &SearchOptions {
                floor: Some(RelevanceFloor::Dense(0.5)),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(res.passages.is_empty());
    assert!(
        matches!(res.failure, Some(RetrievalFailure::BelowFloor { best: Some(b), .. }) if b < 0.5)
    );
    let ok = r
        .search(
            q,
            &SearchOptions {
                floor: Some(RelevanceFloor::Dense(0.2)),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(ok.failure.is_none() && !ok.passages.is_empty());
    // No stage on: no candidates.
    let none = r
        .search(
            q,
            &SearchOptions {
                bm25: false,
                dense: false,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(none.failure, Some(RetrievalFailure::NoCandidates));
}

#[test]
fn query_embedder_must_match_the_generation() {
    let dir = tempfile::tempdir().unwrap();
    let store = Generations::open(dir.path()).unwrap();
    let r = build(
        &two_policies(),
        &store,
        &HashingEmbedder::new(64),
        &BuildOptions::default(),
    )
    .unwrap();
    store.publish(&r.manifest.generation).unwrap();
    let g = Arc::new(store.load_current().unwrap());
    let err = Retriever::new(g, Some(Arc::new(HashingEmbedder::new(32)))).unwrap_err();
    assert!(matches!(err, Error::EmbedderMismatch { .. }), "{err}");
}

#[test]
fn fixed_chunking_builds_and_searches_the_sample_kb() {
    let dir = tempfile::tempdir().unwrap();
    let store = Generations::open(dir.path()).unwrap();
    let mut s = kb_spec();
    s.chunking = switchboard_index::ChunkingSpec::Fixed {
        max_tokens: 64,
        overlap: 16,
    };
    let e = embedder();
    let r = build(&s, &store, e.as_ref(), &BuildOptions::default()).unwrap();
    assert_eq!(r.source_errors(), 0);
    store.publish(&r.manifest.generation).unwrap();
    let g = Arc::new(store.load_current().unwrap());
    assert!(
        g.chunks().iter().all(|c| c.tokens <= 64),
        "fixed windows respect the budget"
    );
    assert!(
        g.chunks()
            .iter()
            .all(|c| g.section(&c.section_id).is_some())
    );
    let hierarchical = build(&kb_spec(), &store, e.as_ref(), &BuildOptions::default()).unwrap();
    assert!(
        r.manifest.chunks > hierarchical.manifest.chunks,
        "64-token windows make more chunks"
    );
    let res = Retriever::new(g, Some(as_dyn(&e)))
        .unwrap()
        .search("error LDG-429", &SearchOptions::default())
        .unwrap();
    assert_eq!(res.passages[0].doc_id, "guides/api-rate-limits.md");
}

#[test]
fn rerank_weight_blends_the_cross_encoder_with_the_fused_order() {
    let dir = tempfile::tempdir().unwrap();
    let base = kb_retriever(dir.path());
    let q = "refund window days";
    let with_weight = |weight: f32| SearchOptions {
        now: Some(NOW),
        top_k: 10,
        rerank: Some(RerankOptions {
            top_n: 10,
            deadline: Duration::from_secs(5),
            weight,
        }),
        ..Default::default()
    };
    let fused = base
        .search(
            q,
            &SearchOptions {
                rerank: None,
                ..with_weight(1.0)
            },
        )
        .unwrap();
    let ids = |r: &switchboard_index::SearchResponse| {
        r.passages
            .iter()
            .map(|p| p.chunk_id.clone())
            .collect::<Vec<_>>()
    };
    let sixth = &fused.passages[5];
    let marker: &'static str = Box::leak(sixth.text.clone().into_boxed_str());
    let reranked = base.clone().with_reranker(Arc::new(FixedReranker {
        delay: Duration::ZERO,
        prefer: marker,
    }));

    // Weight 0: the cross-encoder is consulted (its scores are reported) but the fused order
    // stands.
    let res = reranked.search(q, &with_weight(0.0)).unwrap();
    assert_eq!(res.rerank, RerankStatus::Completed { candidates: 10 });
    assert_eq!(ids(&res), ids(&fused));
    assert!(res.passages.iter().all(|p| p.scores.rerank.is_some()));

    // Weight 1: the cross-encoder alone orders the head.
    let res = reranked.search(q, &with_weight(1.0)).unwrap();
    assert_eq!(res.passages[0].chunk_id, sixth.chunk_id);

    // In between: the documented blend of sigmoid(rerank) x decay and the min-max normalised
    // fused score.
    let res = reranked.search(q, &with_weight(0.3)).unwrap();
    let (lo, hi) = res
        .passages
        .iter()
        .fold((f32::MAX, f32::MIN), |(lo, hi), p| {
            (lo.min(p.scores.fused), hi.max(p.scores.fused))
        });
    for p in &res.passages {
        let s = p.scores.rerank.unwrap();
        let want =
            0.3 / (1.0 + (-s).exp()) * p.scores.decay + 0.7 * (p.scores.fused - lo) / (hi - lo);
        assert!(
            (p.scores.final_score - want).abs() < 1e-5,
            "{}: {} vs {want}",
            p.chunk_id,
            p.scores.final_score
        );
    }
    assert!(
        res.passages
            .windows(2)
            .all(|w| w[0].scores.final_score >= w[1].scores.final_score)
    );
}
