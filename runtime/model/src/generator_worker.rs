//! Runs a [`Generator`] on a dedicated OS thread with continuous batching.
//!
//! The worker owns the model and its adapter registry (tch tensors are `Send` but not `Sync`).
//! Requests do not wait for each other to finish: up to `max_batch` sequences are in flight, and
//! every decoding step advances all of them by one token with one read of the weights
//! ([`LlamaModel::step`](crate::llama::LlamaModel::step)), each through its own LoRA adapter. A
//! new request's prompt is prefilled in chunks of `prefill_chunk` tokens between decoding steps,
//! so the streams already running keep flowing while it joins. Finished sequences leave at once
//! and the next waiting request takes their slot.
//!
//! Commands run in the order they arrive: a generation started with adapter `X` finishes with the
//! `X` it started with even if a `load_adapter("X", ..)` follows it, and an adapter loaded,
//! replaced or unloaded is seen by every request that arrives after the command.
//!
//! Admission is bounded ([`GeneratorWorker::set_queue_limit`]): a request beyond the limit fails at
//! once with [`ModelError::Overloaded`] instead of waiting in an unbounded queue. A caller that
//! goes away, or closes its stream, frees its slot at the next step (the generation so far is
//! still returned, [`FinishReason::Cancelled`]).
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use tch::Tensor;
use tokio::sync::{mpsc as async_mpsc, oneshot};

use crate::chat::ChatMessage;
use crate::error::{ModelError, Result};
use crate::generate::{FinishReason, Generation, GenerationConfig, Generator, Plan, Sampler};
use crate::kv::KvPool;
use crate::llama::{LoadOptions, WeightFormat};
use crate::lora::LoraAdapter;

/// How a worker loads its model and schedules requests.
#[derive(Debug, Clone, Copy)]
pub struct WorkerOptions {
    /// Device, kind and weight format of the model.
    pub load: LoadOptions,
    /// Sequences decoded together (slots of the key/value pool).
    pub max_batch: usize,
    /// Prompt tokens prefilled per scheduling step while other sequences decode.
    pub prefill_chunk: usize,
}

impl WorkerOptions {
    /// f32 dense weights on `device`, 8 sequences at once, 256-token prefill chunks.
    pub fn new(device: tch::Device) -> Self {
        Self {
            load: LoadOptions::new(device),
            max_batch: 8,
            prefill_chunk: 256,
        }
    }

    /// With the decoder projections in `weights` form.
    #[must_use]
    pub fn weights(mut self, weights: WeightFormat) -> Self {
        self.load.weights = weights;
        self
    }
}

/// A piece of a streamed generation.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// Text decoded since the previous event (whole characters only).
    Delta(String),
}

enum Command {
    Chat {
        messages: Vec<ChatMessage>,
        config: GenerationConfig,
        adapter: Option<String>,
        reply: oneshot::Sender<Result<Generation>>,
        stream: Option<async_mpsc::UnboundedSender<StreamEvent>>,
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

/// A streamed generation: text deltas as they are decoded, then the whole [`Generation`].
#[derive(Debug)]
pub struct GenerationStream {
    /// Text deltas; closed when the generation ends.
    pub deltas: async_mpsc::UnboundedReceiver<StreamEvent>,
    /// The finished generation (or why it failed).
    pub done: oneshot::Receiver<Result<Generation>>,
}

/// A cloneable handle to a [`Generator`] running on its own thread.
#[derive(Clone)]
pub struct GeneratorWorker {
    commands: mpsc::Sender<Command>,
    queued: Arc<AtomicUsize>,
    /// Generation requests admitted at once (0: unbounded).
    limit: Arc<AtomicUsize>,
    name: Arc<str>,
    options: WorkerOptions,
}

impl std::fmt::Debug for GeneratorWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratorWorker")
            .field("name", &self.name)
            .field("queued", &self.queue_depth())
            .field("options", &self.options)
            .finish()
    }
}

impl GeneratorWorker {
    /// Loads the model at `path` (GGUF file or Hugging Face directory) with f32 dense weights on a
    /// new thread named `model-<name>`; returns once it is loaded (or failed to load).
    pub fn spawn(name: &str, path: impl AsRef<Path>, device: tch::Device) -> Result<Self> {
        Self::spawn_with(name, path, WorkerOptions::new(device))
    }

    /// [`Self::spawn`] with explicit options.
    pub fn spawn_with(name: &str, path: impl AsRef<Path>, options: WorkerOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let (commands, rx) = mpsc::channel::<Command>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let worker_queued = Arc::clone(&queued);
        std::thread::Builder::new()
            .name(format!("model-{name}"))
            .spawn(move || {
                let generator = match Generator::load_with(&path, options.load) {
                    Ok(generator) => {
                        let _ = ready_tx.send(Ok(()));
                        generator
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                Scheduler::new(generator, options, worker_queued).run(&rx);
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
            options,
        })
    }

    /// The options it runs with.
    pub fn options(&self) -> WorkerOptions {
        self.options
    }

    /// Generation requests admitted and not yet finished (for a queue-depth gauge).
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

    fn submit(
        &self,
        messages: Vec<ChatMessage>,
        config: GenerationConfig,
        adapter: Option<String>,
        stream: Option<async_mpsc::UnboundedSender<StreamEvent>>,
    ) -> Result<oneshot::Receiver<Result<Generation>>> {
        self.admit()?;
        let rx = self.send(|reply| Command::Chat {
            messages,
            config,
            adapter,
            reply,
            stream,
        });
        if rx.is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
        }
        rx
    }

    /// Answers a conversation, through the resident adapter `adapter` when given. Refused with
    /// [`ModelError::Overloaded`] when the queue limit is reached.
    pub async fn chat(
        &self,
        messages: Vec<ChatMessage>,
        config: GenerationConfig,
        adapter: Option<String>,
    ) -> Result<Generation> {
        self.submit(messages, config, adapter, None)?
            .await
            .map_err(|_| ModelError::WorkerGone(self.name.to_string()))?
    }

    /// Like [`Self::chat`], streaming the text as it is generated. Closing (or dropping) the
    /// stream's `deltas` stops the generation at the next step; `done` then holds what was
    /// generated.
    pub fn chat_stream(
        &self,
        messages: Vec<ChatMessage>,
        config: GenerationConfig,
        adapter: Option<String>,
    ) -> Result<GenerationStream> {
        let (tx, deltas) = async_mpsc::unbounded_channel();
        let done = self.submit(messages, config, adapter, Some(tx))?;
        Ok(GenerationStream { deltas, done })
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

/// A request that has passed validation.
struct Request {
    prompt: Vec<u32>,
    plan: Plan,
    sampler: Sampler,
    adapter: Option<Rc<LoraAdapter>>,
    reply: oneshot::Sender<Result<Generation>>,
    stream: Option<async_mpsc::UnboundedSender<StreamEvent>>,
}

/// A request in a slot of the pool.
struct Sequence {
    request: Request,
    /// Prompt tokens prefilled so far.
    prefilled: usize,
    generated: Vec<u32>,
    /// The last token, fed to the next decoding step.
    next_input: Option<u32>,
    /// Text already streamed.
    streamed: String,
    finish: Option<FinishReason>,
}

impl Sequence {
    fn decoding(&self) -> bool {
        self.prefilled == self.request.prompt.len() && self.finish.is_none()
    }

    /// The caller closed its stream (it has what it wanted, e.g. a stop sequence appeared) or
    /// went away altogether: generate no further.
    fn abandoned(&self) -> bool {
        match &self.request.stream {
            Some(stream) => stream.is_closed(),
            None => self.request.reply.is_closed(),
        }
    }
}

struct Scheduler {
    generator: Generator,
    options: WorkerOptions,
    queued: Arc<AtomicUsize>,
    waiting: VecDeque<Request>,
    /// `active[i]` is in slot `i`; decoding sequences first, then at most one prefilling.
    active: Vec<Sequence>,
    pool: KvPool,
}

impl Scheduler {
    fn new(generator: Generator, options: WorkerOptions, queued: Arc<AtomicUsize>) -> Self {
        let max_batch = options.max_batch.max(1);
        let pool = generator.model().new_pool(max_batch);
        Self {
            generator,
            options: WorkerOptions {
                max_batch,
                prefill_chunk: options.prefill_chunk.max(1),
                ..options
            },
            queued,
            waiting: VecDeque::new(),
            active: Vec::with_capacity(max_batch),
            pool,
        }
    }

    fn run(mut self, rx: &mpsc::Receiver<Command>) {
        loop {
            if self.active.is_empty() && self.waiting.is_empty() {
                match rx.recv() {
                    Ok(command) => self.handle(command),
                    Err(_) => return,
                }
            }
            while let Ok(command) = rx.try_recv() {
                self.handle(command);
            }
            self.admit();
            if let Err(e) = self.step() {
                // A failed forward pass fails the sequences it carried; the worker goes on.
                tracing::error!(error = %e, "generation step failed");
                let failed = std::mem::take(&mut self.active);
                for s in failed {
                    self.reply(s.request, Err(ModelError::InvalidRequest(e.to_string())));
                }
                for slot in 0..self.pool.slots() {
                    self.pool.set_len(slot, 0);
                }
            }
            self.retire();
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Chat {
                messages,
                config,
                adapter,
                reply,
                stream,
            } => {
                let prepared = (|| {
                    let prompt = self.generator.chat_prompt_ids(&messages)?;
                    let plan = self.generator.plan(&prompt, &config)?;
                    let adapter = adapter.map(|id| self.generator.adapter(&id)).transpose()?;
                    Ok((prompt, plan, adapter))
                })();
                match prepared {
                    Ok((prompt, plan, adapter)) => self.waiting.push_back(Request {
                        prompt,
                        plan,
                        sampler: Sampler::new(config.sampling),
                        adapter,
                        reply,
                        stream,
                    }),
                    Err(e) => {
                        self.queued.fetch_sub(1, Ordering::AcqRel);
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::LoadAdapter { id, dir, reply } => {
                let _ = reply.send(self.generator.load_adapter(&id, &dir));
            }
            Command::UnloadAdapter { id, reply } => {
                let _ = reply.send(self.generator.unload_adapter(&id));
            }
            Command::Adapters { reply } => {
                let _ = reply.send(self.generator.adapters().ids());
            }
        }
    }

    /// Moves waiting requests into free slots (one prefilling at a time, behind the decoders).
    fn admit(&mut self) {
        let prefilling = self.active.iter().any(|s| !s.decoding());
        if prefilling || self.active.len() >= self.options.max_batch {
            return;
        }
        if let Some(request) = self.waiting.pop_front() {
            self.pool.set_len(self.active.len(), 0);
            self.active.push(Sequence {
                request,
                prefilled: 0,
                generated: Vec::new(),
                next_input: None,
                streamed: String::new(),
                finish: None,
            });
        }
    }

    /// One scheduling step: a prefill chunk of the newest sequence, then one decoding step of
    /// every decoding sequence.
    fn step(&mut self) -> Result<()> {
        if let Some(slot) = self
            .active
            .iter()
            .position(|s| !s.decoding() && s.finish.is_none())
        {
            let seq = &mut self.active[slot];
            let end = (seq.prefilled + self.options.prefill_chunk).min(seq.request.prompt.len());
            let chunk: Vec<i64> = seq.request.prompt[seq.prefilled..end]
                .iter()
                .map(|&t| i64::from(t))
                .collect();
            let logits = self.generator.model().step(
                &Tensor::from_slice(&chunk).f_unsqueeze(0)?,
                &mut self.pool,
                slot,
                &[seq.request.adapter.as_deref()],
            )?;
            seq.prefilled = end;
            if seq.prefilled == seq.request.prompt.len() {
                let token = seq.request.sampler.next(&logits.f_get(0)?)?;
                self.accept(slot, token);
            }
        }
        let decoding = self
            .active
            .iter()
            .take_while(|s| s.decoding() && s.next_input.is_some())
            .count();
        if decoding == 0 {
            return Ok(());
        }
        let inputs: Vec<i64> = self.active[..decoding]
            .iter()
            .map(|s| i64::from(s.next_input.unwrap_or(0)))
            .collect();
        let adapters: Vec<Option<&LoraAdapter>> = self.active[..decoding]
            .iter()
            .map(|s| s.request.adapter.as_deref())
            .collect();
        let logits = self.generator.model().step(
            &Tensor::from_slice(&inputs).f_view([decoding as i64, 1])?,
            &mut self.pool,
            0,
            &adapters,
        )?;
        let greedy = if self.active[..decoding]
            .iter()
            .all(|s| s.request.sampler.is_greedy())
        {
            Some(Vec::<i64>::try_from(logits.f_argmax(-1, false)?)?)
        } else {
            None
        };
        for slot in 0..decoding {
            let token = match &greedy {
                Some(ids) => ids[slot] as u32,
                None => self.active[slot]
                    .request
                    .sampler
                    .next(&logits.f_get(slot as i64)?)?,
            };
            self.accept(slot, token);
        }
        Ok(())
    }

    /// Records the token chosen for `slot`: a stop ends the sequence, else it is kept, streamed
    /// and fed to the next step until the budget is spent.
    fn accept(&mut self, slot: usize, token: u32) {
        let seq = &mut self.active[slot];
        if seq.request.plan.stops.contains(&token) {
            seq.finish = Some(FinishReason::Stop);
            seq.next_input = None;
            return;
        }
        seq.generated.push(token);
        seq.next_input = Some(token);
        if seq.generated.len() >= seq.request.plan.budget {
            seq.finish = Some(FinishReason::Length);
            seq.next_input = None;
        }
        if let Some(stream) = &seq.request.stream {
            // Decode everything so far and send what is new, holding back an incomplete
            // character (a token may end inside a multi-byte UTF-8 sequence).
            if let Ok(text) = self.generator.tokenizer().decode(&seq.generated, true)
                && text.len() > seq.streamed.len()
                && text.starts_with(seq.streamed.as_str())
                && !text.ends_with('\u{fffd}')
            {
                let delta = text[seq.streamed.len()..].to_owned();
                seq.streamed = text;
                let _ = stream.send(StreamEvent::Delta(delta));
            }
        }
    }

    /// Replies to finished (or abandoned) sequences and compacts the pool.
    fn retire(&mut self) {
        let mut slot = 0;
        while slot < self.active.len() {
            if self.active[slot].finish.is_none() && self.active[slot].abandoned() {
                self.active[slot].finish = Some(FinishReason::Cancelled);
            }
            if self.active[slot].finish.is_none() {
                slot += 1;
                continue;
            }
            let seq = self.active.remove(slot);
            // Slots after it move down by one, keeping decoders first and the prefiller last.
            for from in slot + 1..=self.active.len() {
                if let Err(e) = self.pool.move_slot(from, from - 1) {
                    tracing::error!(error = %e, "moving a sequence's cache failed");
                }
            }
            self.pool.set_len(self.active.len(), 0);
            let result = self
                .generator
                .tokenizer()
                .decode(&seq.generated, true)
                .map(|text| Generation {
                    text,
                    prompt_tokens: seq.request.prompt.len(),
                    finish_reason: seq.finish.unwrap_or(FinishReason::Length),
                    token_ids: seq.generated,
                });
            self.reply(seq.request, result);
        }
    }

    fn reply(&self, request: Request, result: Result<Generation>) {
        self.queued.fetch_sub(1, Ordering::AcqRel);
        let _ = request.reply.send(result);
    }
}
