//! Errors of this crate: one enum, one variant per failed step, each carrying its context.

use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, and where.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The index spec is invalid; `field` names the offending field (e.g. `sources[2].name`).
    #[error("invalid index spec: {field}: {message}")]
    InvalidSpec {
        /// Path of the offending field.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// Reading or writing a file of the generation store failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What we were doing (`create`, `read`, `rename`, ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A generation on disk is missing a part or is inconsistent.
    #[error("generation {generation} is corrupt: {message}")]
    CorruptGeneration {
        /// Generation id.
        generation: String,
        /// What is inconsistent.
        message: String,
    },
    /// No such generation in the store.
    #[error("generation {0} not found")]
    GenerationNotFound(String),
    /// The store has no published generation (or nothing to switch back to).
    #[error("{0}")]
    NothingPublished(&'static str),
    /// tantivy failed.
    #[error("tantivy ({op}): {source}")]
    Tantivy {
        /// What we were doing.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: tantivy::TantivyError,
    },
    /// The embedder failed or returned vectors of the wrong shape.
    #[error("embedder {model}: {message}")]
    Embedding {
        /// Embedding model id.
        model: String,
        /// What went wrong.
        message: String,
    },
    /// The query embedder does not match the generation's embedding model.
    #[error(
        "embedder mismatch: generation was built with {built} (dim {built_dim}), query embedder is {query} (dim {query_dim})"
    )]
    EmbedderMismatch {
        /// Model id recorded in the manifest.
        built: String,
        /// Dimension recorded in the manifest.
        built_dim: usize,
        /// Model id of the query embedder.
        query: String,
        /// Dimension of the query embedder.
        query_dim: usize,
    },
    /// Serialising or parsing a store file failed.
    #[error("{op} {}: {message}", path.display())]
    Format {
        /// What we were doing.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Parser message.
        message: String,
    },
}

impl Error {
    /// A short, bounded label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Error::InvalidSpec { .. } => "invalid_spec",
            Error::Io { .. } => "io",
            Error::CorruptGeneration { .. } => "corrupt_generation",
            Error::GenerationNotFound(_) => "generation_not_found",
            Error::NothingPublished(_) => "nothing_published",
            Error::Tantivy { .. } => "tantivy",
            Error::Embedding { .. } => "embedding",
            Error::EmbedderMismatch { .. } => "embedder_mismatch",
            Error::Format { .. } => "format",
        }
    }

    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }

    pub(crate) fn tantivy(op: &'static str) -> impl FnOnce(tantivy::TantivyError) -> Error {
        move |source| Error::Tantivy { op, source }
    }
}
