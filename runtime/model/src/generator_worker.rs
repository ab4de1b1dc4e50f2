//! Runs a [`Generator`] on a dedicated OS thread, like [`crate::EncoderWorker`] does for encoders.
//!
//! The worker owns the model and its adapter registry (tch tensors are `Send` but not `Sync`).
//! Requests and adapter commands share one queue and run in order, one at a time: a generation
//! started with adapter `X` finishes with the `X` it started with even if a `load_adapter("X", ..)`
//! is queued behind it, and an adapter loaded, replaced or unloaded is seen by every request queued
//! after the command.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use tokio::sync::oneshot;

use crate::chat::ChatMessage;
use crate::error::{ModelError, Result};
use crate::generate::{Generation, GenerationConfig, Generator};

enum Command {
    Chat {
        messages: Vec<ChatMessage>,
        config: GenerationConfig,
        adapter: Option<String>,
        reply: oneshot::Sender<Result<Generation>>,
    },
    LoadAdapter {
        id: String,
        dir: PathBuf,
        reply: oneshot::Sender<Result<()>>,
    },
    UnloadAdapter {
        id: String,
        reply: oneshot::Sender<bool>,
    },
    Adapters {
        reply: oneshot::Sender<Vec<String>>,
    },
}

/// A cloneable handle to a [`Generator`] running on its own thread.
#[derive(Clone)]
pub struct GeneratorWorker {
    commands: mpsc::Sender<Command>,
    queued: Arc<AtomicUsize>,
    /// Generation requests admitted at once (0: unbounded).
    limit: Arc<AtomicUsize>,
    name: Arc<str>,
}

impl std::fmt::Debug for GeneratorWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratorWorker")
            .field("name", &self.name)
            .field("queued", &self.queue_depth())
            .finish()
    }
}

impl GeneratorWorker {
    /// Loads the model at `path` (GGUF file or Hugging Face directory) on a new thread named
    /// `model-<name>`; returns once it is loaded (or failed to load).
    pub fn spawn(name: &str, path: impl AsRef<Path>, device: tch::Device) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let (commands, rx) = mpsc::channel::<Command>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let worker_queued = Arc::clone(&queued);
        std::thread::Builder::new()
            .name(format!("model-{name}"))
            .spawn(move || {
                let mut generator = match Generator::load(&path, device) {
                    Ok(generator) => {
                        let _ = ready_tx.send(Ok(()));
                        generator
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                // Replies to callers that went away (timeouts) are dropped.
                for command in rx {
                    match command {
                        Command::Chat {
                            messages,
                            config,
                            adapter,
                            reply,
                        } => {
                            let result = generator.chat(&messages, &config, adapter.as_deref());
                            worker_queued.fetch_sub(1, Ordering::Relaxed);
                            let _ = reply.send(result);
                        }
                        Command::LoadAdapter { id, dir, reply } => {
                            let _ = reply.send(generator.load_adapter(&id, &dir));
                        }
                        Command::UnloadAdapter { id, reply } => {
                            let _ = reply.send(generator.unload_adapter(&id));
                        }
                        Command::Adapters { reply } => {
                            let _ = reply.send(generator.adapters().ids());
                        }
                    }
                }
            })
            .map_err(ModelError::io(format!("thread model-{name}")))?;
        ready_rx
            .recv()
            .map_err(|_| ModelError::WorkerGone(name.to_owned()))??;
        Ok(Self {
            commands,
            queued,
            limit: Arc::new(AtomicUsize::new(0)),
            name: name.into(),
        })
    }

    /// Generation requests submitted and not yet finished (for a queue-depth gauge).
    pub fn queue_depth(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Admits at most `limit` generation requests at once (generating or waiting; 0: no bound).
    /// A request beyond it fails at once with [`ModelError::Overloaded`] instead of waiting in
    /// an unbounded queue. Shared by every clone of this handle.
    pub fn set_queue_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// The admission limit (0: no bound).
    pub fn queue_limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Takes a slot for one generation request, or refuses it when the model is at capacity.
    fn admit(&self) -> Result<()> {
        let limit = self.limit.load(Ordering::Relaxed);
        let before = self.queued.fetch_add(1, Ordering::AcqRel);
        if limit > 0 && before >= limit {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(ModelError::Overloaded {
                model: self.name.to_string(),
                limit,
            });
        }
        Ok(())
    }

    fn send<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<oneshot::Receiver<T>> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(make(reply))
            .map_err(|_| ModelError::WorkerGone(self.name.to_string()))?;
        Ok(rx)
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T> {
        self.send(make)?
            .await
            .map_err(|_| ModelError::WorkerGone(self.name.to_string()))
    }

    /// Answers a conversation, through the resident adapter `adapter` when given. Refused with
    /// [`ModelError::Overloaded`] when the queue limit is reached.
    pub async fn chat(
        &self,
        messages: Vec<ChatMessage>,
        config: GenerationConfig,
        adapter: Option<String>,
    ) -> Result<Generation> {
        self.admit()?;
        let rx = self.send(|reply| Command::Chat {
            messages,
            config,
            adapter,
            reply,
        });
        if rx.is_err() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
        rx?.await
            .map_err(|_| ModelError::WorkerGone(self.name.to_string()))?
    }

    /// Loads (or replaces) the PEFT adapter in `dir` under `id`; validated against the base model.
    pub async fn load_adapter(&self, id: impl Into<String>, dir: impl Into<PathBuf>) -> Result<()> {
        let (id, dir) = (id.into(), dir.into());
        self.ask(|reply| Command::LoadAdapter { id, dir, reply })
            .await?
    }

    /// Unloads the adapter `id`; returns whether it was resident.
    pub async fn unload_adapter(&self, id: impl Into<String>) -> Result<bool> {
        let id = id.into();
        self.ask(|reply| Command::UnloadAdapter { id, reply }).await
    }

    /// Ids of the resident adapters, sorted.
    pub async fn adapters(&self) -> Result<Vec<String>> {
        self.ask(|reply| Command::Adapters { reply }).await
    }
}
