//! The data flywheel over the outcome store (`switchboard-store`).
//!
//! Every answered interaction and every outcome the helpdesk reports is a row in the outcome
//! store. This crate turns those rows into two things people and programs act on:
//!
//! - **Training records** ([`export`]): each interaction with a composite label
//!   ([`label::label`]: positive / negative / unknown, with the rule and why), after anomaly
//!   filters ([`filter`]: each drop counted under a named rule) and near-duplicate clustering of
//!   the queries ([`cluster`]: one representative per cluster *and* label, so a question answered
//!   well and badly stays as a preference pair). The record format ([`record::ExportRecord`],
//!   [`record::FORMAT`]) is what the LoRA trainer reads; docs/training-data.md describes it.
//! - **Coverage gaps** ([`gaps`]): the questions the knowledge base does not answer — escalated
//!   interactions, retrieval failures, refusals, low best-passage scores — clustered by meaning
//!   and ranked by volume, each with example queries and the documents that were retrieved.
//!
//! Pure where it can be: labels, filters, clustering and ranking are functions of rows and
//! vectors. Embeddings come through [`switchboard_index::Embedder`] (the runtime passes its
//! MiniLM encoder worker; tests pass a deterministic stand-in), so this crate never links tch.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod cache;
pub mod cluster;
pub mod curriculum;
pub mod export;
pub mod filter;
pub mod gaps;
pub mod label;
pub mod record;
pub mod tickets;
pub mod window;

use switchboard_store::{InteractionWithOutcomes, OutcomeStore, StoreError};

/// Why an export or a gap report failed.
#[derive(Debug, thiserror::Error)]
pub enum FlywheelError {
    /// The outcome store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The encoder failed.
    #[error("embedding {count} queries with {model}: {message}")]
    Embedding {
        /// The model.
        model: String,
        /// How many texts were sent.
        count: usize,
        /// The encoder's error.
        message: String,
    },
    /// The encoder answered with a number of vectors other than asked, or vectors of another
    /// width (a wrong checkpoint or a bug: nothing is written).
    #[error("the encoder {model} returned {got} vectors of width {width} for {expected} texts")]
    EmbeddingShape {
        /// The model.
        model: String,
        /// Vectors asked.
        expected: usize,
        /// Vectors returned.
        got: usize,
        /// Width of the first one.
        width: usize,
    },
    /// The input is not what it should be (a ticket export that is not one).
    #[error("{0}")]
    Input(String),
    /// Writing the export failed (nothing is left half-written: see [`export::write_jsonl`]).
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

/// Rows per page when reading the store.
pub const PAGE: i64 = 2_000;

/// Every interaction created in `[from, until)` (of `router`, when given) with its outcomes,
/// oldest first, read page by page.
pub async fn read_interactions(
    store: &OutcomeStore,
    router: Option<&str>,
    from: i64,
    until: i64,
) -> Result<Vec<InteractionWithOutcomes>, StoreError> {
    let mut rows = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .export_page(router, from, until, after.clone(), PAGE)
            .await?;
        let Some(last) = page.last() else {
            break;
        };
        after = Some((last.interaction.created_at, last.interaction.id.clone()));
        let full = page.len() as i64 == PAGE;
        rows.extend(page);
        if !full {
            break;
        }
    }
    Ok(rows)
}

/// Embeds `texts` (in batches of 256, so progress is logged and no single call is huge) and
/// checks the shape of what comes back. Vectors are L2-normalised here, whatever the encoder
/// did, so a dot product is a cosine.
pub fn embed_all(
    embedder: &dyn switchboard_index::Embedder,
    texts: &[String],
) -> Result<Vec<Vec<f32>>, FlywheelError> {
    let model = embedder.model_id();
    let dim = embedder.dim();
    let mut out = Vec::with_capacity(texts.len());
    for batch in texts.chunks(256) {
        let vectors = embedder
            .embed(batch)
            .map_err(|e| FlywheelError::Embedding {
                model: model.clone(),
                count: batch.len(),
                message: e.to_string(),
            })?;
        let width = vectors.first().map_or(dim, Vec::len);
        if vectors.len() != batch.len() || vectors.iter().any(|v| v.len() != dim) {
            return Err(FlywheelError::EmbeddingShape {
                model,
                expected: batch.len(),
                got: vectors.len(),
                width,
            });
        }
        out.extend(vectors.into_iter().map(cluster::normalized));
        tracing::debug!(done = out.len(), total = texts.len(), "embedded queries");
    }
    Ok(out)
}
