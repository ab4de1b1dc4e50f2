//! libtorch (tch) model code for the Switchboard runtime.
//!
//! - [`bert`]: BERT-family transformer encoders loaded from Hugging Face checkpoints.
//! - [`cross_encoder`]: `BertForSequenceClassification` rerankers scoring (query, passage) pairs.
//! - [`encoder`]: sentence embeddings (sentence-transformers layout: pooling + normalisation).
//! - [`worker`]: runs a model on a dedicated thread so forward passes never block the async executor.
//!
//! Weights are loaded by [`weights::Checkpoint`], which checks every tensor's presence and shape
//! against the model definition and names the tensor when one is missing or wrong.
#![forbid(unsafe_code)]

mod batch;
pub mod bert;
pub mod cross_encoder;
pub mod encoder;
pub mod error;
pub mod gguf;
pub mod llama;
pub mod lora;
pub mod weights;
pub mod worker;

pub use cross_encoder::CrossEncoder;
pub use encoder::{Pooling, SentenceEncoder};
pub use error::{ModelError, Result};
pub use worker::EncoderWorker;

/// Picks the device models run on: the first CUDA device when libtorch sees one, else the CPU.
pub fn default_device() -> tch::Device {
    tch::Device::cuda_if_available()
}
