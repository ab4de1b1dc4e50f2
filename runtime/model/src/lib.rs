//! libtorch (tch) model code for the Switchboard runtime.
//!
//! - [`bert`]: BERT-family transformer encoders loaded from Hugging Face checkpoints.
//! - [`cross_encoder`]: `BertForSequenceClassification` rerankers scoring (query, passage) pairs.
//! - [`encoder`]: sentence embeddings (sentence-transformers layout: pooling + normalisation).
//! - [`encoder_train`]: fine-tunes a sentence encoder for retrieval (multiple-negatives ranking loss).
//! - [`gguf`]: GGUF reader and dequantisation (F32, F16, BF16, Q4_0, Q4_1, Q8_0).
//! - [`llama`]: Llama-family causal LM (GGUF or safetensors) with a KV cache.
//! - [`lora`]: PEFT LoRA adapters applied per request without merging.
//! - [`rerank_train`]: trains a cross-encoder reranker (listwise loss, autograd) from an encoder.
//! - [`tokenizer`], [`chat`], [`generate`]: tokenizer from GGUF metadata or `tokenizer.json`, chat
//!   templates, greedy / top-p generation with stop tokens.
//! - [`generator_worker`]: a [`Generator`] on its own thread with an async API and adapter commands.
//! - [`worker`]: runs a model on a dedicated thread so forward passes never block the async executor.
//!
//! Weights are loaded by [`weights::Checkpoint`], which checks every tensor's presence and shape
//! against the model definition and names the tensor when one is missing or wrong.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod batch;
pub mod bert;
pub mod chat;
pub mod cross_encoder;
pub mod encoder;
pub mod encoder_train;
pub mod error;
pub mod generate;
pub mod generator_worker;
pub mod gguf;
pub mod kv;
pub mod linear;
pub mod llama;
pub mod lora;
pub mod rerank_train;
pub mod tokenizer;
mod train_common;
pub mod weights;
pub mod worker;

pub use cross_encoder::CrossEncoder;
pub use encoder::{Pooling, SentenceEncoder};
pub use error::{ModelError, Result};
pub use generate::{GenerationConfig, Generator, Sampling};
pub use generator_worker::GeneratorWorker;
pub use llama::LlamaModel;
pub use worker::EncoderWorker;

/// Picks the device models run on: the first CUDA device when libtorch sees one, else the CPU.
pub fn default_device() -> tch::Device {
    tch::Device::cuda_if_available()
}
