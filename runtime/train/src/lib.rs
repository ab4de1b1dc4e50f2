//! LoRA training for Switchboard: supervised fine-tuning and DPO of a PEFT LoRA adapter on a
//! frozen Llama-family base model (libtorch autograd through `switchboard-model`), producing the
//! PEFT directory an AdapterPatch version names, its digest, a training report, and the next
//! AdapterPatch manifest (or, with `--apply`, the patch itself) so the operator rolls it out
//! through Shadow -> Canary -> Promoted under its guardrails.
//!
//! - [`data`]: JSONL rows (SFT examples, DPO pairs, the outcome store's flywheel export) and
//!   their mapping to examples and pairs, deduplication, the held-out split;
//! - [`encode`]: chat-template rendering and tokenization as the runtime prompts the model;
//! - [`train`]: the SFT and DPO loops, AdamW, schedules, held-out metrics;
//! - [`output`]: where the PEFT directory is written (`pvc://`, `file://`, a directory) and its
//!   digest;
//! - [`manifest`]: the next AdapterPatch version (pure); [`apply`]: patching it in a cluster;
//! - [`report`]: the training report.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod alignment;
pub mod apply;
pub mod data;
pub mod encode;
pub mod error;
pub mod grpo;
pub mod manifest;
pub mod output;
pub mod report;
pub mod train;

pub use error::{Result, TrainError};
pub use train::{Hyperparameters, LoraSettings, Schedule, Trained, Trainer};
