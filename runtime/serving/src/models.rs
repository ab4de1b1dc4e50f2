//! The tch models behind the index crate's model hooks.
use std::sync::Mutex;

use switchboard_index::{Embedder, Reranker};
use switchboard_model::{CrossEncoder, EncoderWorker};

/// [`Embedder`] backed by an [`EncoderWorker`] (forward passes on the worker's own thread).
///
/// `embed` blocks on the worker: call it from blocking contexts (index builds, and retrieval, which
/// the server runs on the blocking pool), never directly on an async task.
#[derive(Debug, Clone)]
pub struct WorkerEmbedder {
    worker: EncoderWorker,
}

impl WorkerEmbedder {
    /// Wraps a running worker.
    pub fn new(worker: EncoderWorker) -> Self {
        Self { worker }
    }
}

impl Embedder for WorkerEmbedder {
    fn dim(&self) -> usize {
        self.worker.dim()
    }

    fn model_id(&self) -> String {
        self.worker.model_id().to_owned()
    }

    fn embed(&self, texts: &[String]) -> switchboard_index::Result<Vec<Vec<f32>>> {
        let dim = self.worker.dim();
        let flat = self.worker.embed_blocking(texts.to_vec()).map_err(|e| {
            switchboard_index::Error::Embedding {
                model: self.model_id(),
                message: e.to_string(),
            }
        })?;
        Ok(flat.chunks_exact(dim).map(<[f32]>::to_vec).collect())
    }
}

/// [`Reranker`] backed by a cross-encoder. Reranks are serialised through a mutex: one cross-encoder
/// forward pass at a time uses every libtorch thread anyway.
#[derive(Debug)]
pub struct CrossEncoderReranker {
    model: Mutex<CrossEncoder>,
    model_id: String,
}

impl CrossEncoderReranker {
    /// Wraps a loaded cross-encoder.
    pub fn new(model: CrossEncoder) -> Self {
        let model_id = model.model_id().to_owned();
        Self {
            model: Mutex::new(model),
            model_id,
        }
    }
}

impl Reranker for CrossEncoderReranker {
    fn model_id(&self) -> String {
        self.model_id.clone()
    }

    fn score(&self, query: &str, passages: &[String]) -> switchboard_index::Result<Vec<f32>> {
        let model = self
            .model
            .lock()
            .map_err(|_| switchboard_index::Error::Embedding {
                model: self.model_id.clone(),
                message: "reranker poisoned by an earlier panic".into(),
            })?;
        // Logits: the retriever applies the sigmoid itself.
        model.relevance_logits(query, passages, 16).map_err(|e| {
            switchboard_index::Error::Embedding {
                model: self.model_id.clone(),
                message: e.to_string(),
            }
        })
    }
}
