//! Runs a model on a dedicated OS thread.
//!
//! tch forward passes are CPU-heavy and block; run on tokio worker threads they would stall every
//! other request. The worker owns the model (tensors are `Send` but not `Sync`), takes jobs from a
//! channel and answers each through a oneshot, so async callers `await` and sync callers block.
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use tokio::sync::oneshot;

use crate::encoder::SentenceEncoder;
use crate::error::{ModelError, Result};

type Reply = oneshot::Sender<Result<Vec<f32>>>;

struct Job {
    texts: Vec<String>,
    reply: Reply,
}

/// A cloneable handle to a [`SentenceEncoder`] running on its own thread.
#[derive(Clone)]
pub struct EncoderWorker {
    jobs: mpsc::Sender<Job>,
    queued: Arc<AtomicUsize>,
    dim: usize,
    max_seq_len: usize,
    model_id: Arc<str>,
    name: Arc<str>,
}

impl std::fmt::Debug for EncoderWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncoderWorker")
            .field("name", &self.name)
            .field("model_id", &self.model_id)
            .field("dim", &self.dim)
            .field("queued", &self.queue_depth())
            .finish()
    }
}

impl EncoderWorker {
    /// Loads the checkpoint at `dir` on a new thread named `name` and starts serving jobs.
    /// Returns once the model is loaded (or failed to load).
    pub fn spawn(
        name: &str,
        dir: impl AsRef<Path>,
        device: tch::Device,
        batch_size: usize,
    ) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let worker_queued = Arc::clone(&queued);
        std::thread::Builder::new()
            .name(format!("model-{name}"))
            .spawn(move || {
                let encoder = match SentenceEncoder::load(&dir, device) {
                    Ok(encoder) => {
                        let _ = ready_tx.send(Ok((
                            encoder.dim(),
                            encoder.max_seq_len(),
                            encoder.model_id().to_owned(),
                        )));
                        encoder
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                for job in rx {
                    let result = encoder.embed_matrix(&job.texts, batch_size);
                    worker_queued.fetch_sub(1, Ordering::Relaxed);
                    // The caller may have gone away (timeout); nothing to do then.
                    let _ = job.reply.send(result);
                }
            })
            .map_err(ModelError::io(format!("thread model-{name}")))?;
        let (dim, max_seq_len, model_id) = ready_rx
            .recv()
            .map_err(|_| ModelError::WorkerGone(name.to_owned()))??;
        Ok(Self {
            jobs,
            queued,
            dim,
            max_seq_len,
            model_id: model_id.into(),
            name: name.into(),
        })
    }

    /// Embedding width.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Longest input in tokens.
    pub fn max_seq_len(&self) -> usize {
        self.max_seq_len
    }

    /// The checkpoint's identifier.
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// Jobs submitted and not yet finished (for a queue-depth gauge).
    pub fn queue_depth(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    fn submit(&self, texts: Vec<String>) -> Result<oneshot::Receiver<Result<Vec<f32>>>> {
        let (reply, rx) = oneshot::channel();
        self.queued.fetch_add(1, Ordering::Relaxed);
        if self.jobs.send(Job { texts, reply }).is_err() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(ModelError::WorkerGone(self.name.to_string()));
        }
        Ok(rx)
    }

    /// Embeds `texts` (row-major `[n * dim]`) without blocking the async executor.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<f32>> {
        self.submit(texts)?
            .await
            .map_err(|_| ModelError::WorkerGone(self.name.to_string()))?
    }

    /// Embeds `texts` from synchronous code. Must not be called from inside an async task (use
    /// [`embed`](Self::embed) there).
    pub fn embed_blocking(&self, texts: Vec<String>) -> Result<Vec<f32>> {
        self.submit(texts)?
            .blocking_recv()
            .map_err(|_| ModelError::WorkerGone(self.name.to_string()))?
    }
}
