//! Builds an index generation from an IndexSpec YAML with the model-free hashing embedder,
//! publishes it and runs queries. A quick way to look at what ingestion and retrieval do:
//!
//! ```text
//! cargo run -p switchboard-index --example build_kb -- examples/kb/index-spec.yaml /tmp/kb-store \
//!     "how long do I have to get a refund?"
//! ```

use std::sync::Arc;

use switchboard_index::{
    BuildOptions, Generations, HashingEmbedder, IndexSpec, Retriever, SearchOptions, build,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(spec_path), Some(store_path)) = (args.next(), args.next()) else {
        eprintln!("usage: build_kb <index-spec.yaml> <store dir> [query...]");
        std::process::exit(2);
    };
    let spec: IndexSpec = serde_yaml::from_str(&std::fs::read_to_string(&spec_path)?)?;
    let store = Generations::open(&store_path)?;
    let embedder = Arc::new(HashingEmbedder::new(384));
    let report = build(&spec, &store, embedder.as_ref(), &BuildOptions::default())?;
    let m = &report.manifest;
    println!(
        "{}: {} documents, {} chunks, {} embedded, {} vectors reused, {} source errors ({:?} ingest, {:?} embed, {:?} write)",
        m.generation,
        m.documents,
        m.chunks,
        report.chunks_embedded,
        report.vectors_reused,
        report.source_errors(),
        report.ingest_time,
        report.embed_time,
        report.write_time
    );
    for s in &m.sources {
        println!(
            "  {:<12} files {:>3} docs {:>3} chunks {:>4} skipped {:?} reused {}",
            s.name, s.files, s.documents, s.chunks, s.skipped, s.reused
        );
        for e in &s.errors {
            println!("    error: {}: {}", e.item, e.reason);
        }
    }
    store.publish(&m.generation)?;
    let retriever = Retriever::new(Arc::new(store.load_current()?), Some(embedder))?;
    for query in args {
        let res = retriever.search(&query, &SearchOptions::default())?;
        println!("\n> {query}   ({:?})", res.timings.total);
        for (i, p) in res.passages.iter().enumerate() {
            println!(
                "{}. {:.4} {} {} (decay {:.2})",
                i + 1,
                p.scores.final_score,
                p.breadcrumb,
                p.doc_id,
                p.scores.decay
            );
            println!("   {}", p.text.lines().next().unwrap_or_default());
        }
    }
    Ok(())
}
