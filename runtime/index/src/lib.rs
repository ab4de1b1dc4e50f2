//! Ingestion, chunking and the on-disk index generations (tantivy BM25 + dense vectors + chunk store),
//! and hybrid retrieval over a loaded generation.
//!
//! The crate is model-free: dense embeddings and cross-encoder scores come in through the
//! [`Embedder`] and [`Reranker`] traits, which the runtime implements with its tch models.
//!
//! Flow: [`IndexSpec`] -> [`ingest`] (per-format parsers -> [`Document`]s) -> [`chunk`] (fixed or
//! heading-aware hierarchical [`Chunk`]s) -> [`build()`] (an immutable generation directory under a
//! [`Generations`] store) -> [`Retriever`] (BM25 + dense -> fusion -> rerank -> recency decay).
//! Design notes: `docs/retrieval.md`.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod bm25;
pub mod chunk;
pub mod consistency;
pub mod document;
pub mod embed;
pub mod error;
pub mod generation;
pub mod ingest;
pub mod parse;
pub mod search;
pub mod spec;
mod store;
pub mod tokens;

pub use chunk::{Chunk, SectionRecord};
pub use consistency::{ConsistencyReport, ConsistencySummary, Contradiction};
pub use document::Document;
pub use embed::{Embedder, HashingEmbedder, Reranker};
pub use error::{Error, Result};
pub use generation::{
    BuildOptions, BuildReport, DocumentFreshness, EmbeddingInfo, Generation, GenerationInfo,
    Generations, Manifest, build,
};
pub use ingest::{SourceIssue, SourceReport};
pub use search::{
    Fusion, Passage, RelevanceFloor, RerankOptions, RerankStatus, RetrievalFailure, Retriever,
    SearchOptions, SearchResponse, StageScores, StageTimings,
};
pub use spec::{
    ChunkingSpec, FieldBoosts, FreshnessClass, IndexSpec, InlineFile, SourceFormat, SourceLocation,
    SourceSpec,
};
