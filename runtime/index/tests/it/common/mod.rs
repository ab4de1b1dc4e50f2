//! Helpers shared by the integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use switchboard_index::{
    ChunkingSpec, Embedder, HashingEmbedder, IndexSpec, InlineFile, SourceFormat, SourceLocation,
    SourceSpec,
};

/// 2026-11-01T00:00:00Z: "now" for recency decay in tests.
pub const NOW: i64 = 1_793_491_200;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The sample KB's spec with paths made absolute.
pub fn kb_spec() -> IndexSpec {
    let root = repo_root();
    let text = std::fs::read_to_string(root.join("examples/kb/index-spec.yaml")).unwrap();
    let mut spec: IndexSpec = serde_yaml::from_str(&text).unwrap();
    for s in &mut spec.sources {
        if let SourceLocation::Path { path } = &mut s.location {
            *path = root.join(&*path);
        }
    }
    spec
}

pub fn embedder() -> Arc<HashingEmbedder> {
    Arc::new(HashingEmbedder::new(256))
}

pub fn as_dyn(e: &Arc<HashingEmbedder>) -> Arc<dyn Embedder> {
    e.clone()
}

pub fn inline_source(
    name: &str,
    format: SourceFormat,
    class: &str,
    files: &[(&str, &str)],
) -> SourceSpec {
    SourceSpec {
        name: name.into(),
        format,
        freshness_class: class.into(),
        location: SourceLocation::Inline {
            files: files
                .iter()
                .map(|(n, c)| InlineFile {
                    name: n.to_string(),
                    content: c.to_string(),
                })
                .collect(),
        },
        resolved_tags: None,
    }
}

pub fn spec(sources: Vec<SourceSpec>) -> IndexSpec {
    IndexSpec {
        sources,
        freshness_classes: switchboard_index::spec::default_freshness_classes(),
        chunking: ChunkingSpec::default(),
    }
}
