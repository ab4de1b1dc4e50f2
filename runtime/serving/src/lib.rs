//! The Switchboard runtime as a library: what `switchboard-runtime serve` runs.
//!
//! - [`engine`]: the loaded RuntimeConfig (knowledge base generation, models, adapters, policies)
//!   and its hot reload; [`answer`]: the answer path (retrieve -> route -> ground -> generate ->
//!   check), [`service`]: retrieval;
//! - [`serving`]: the [`serving::Serving`] trait — answer, retrieve, feedback — that both front
//!   ends call: [`grpc`] (tonic) and [`http`] (axum, with the OpenAI-compatible surface of
//!   [`openai_server`]);
//! - [`serve`]: process setup (operator mode and the embedded default of [`kb`]), [`auth`],
//!   [`limits`], [`metrics`], [`artifacts`] (adapter artifacts), [`flywheel`] (outcome-store
//!   reads), [`models`] (model paths), [`openai`] (the large model's endpoint client).
//!
//! The offline tools (evaluation, training, synthetic data) are `switchboard-tools`; the binary
//! is `switchboard-runtime` (`runtime/src/main.rs`).
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod answer;
pub mod artifacts;
pub mod auth;
pub mod engine;
pub mod flywheel;
pub mod grpc;
pub mod http;
pub mod http_client;
pub mod kb;
pub mod limits;
pub mod metrics;
pub mod models;
pub mod openai;
pub mod openai_server;
#[cfg(test)]
mod request_bodies;
pub mod serve;
pub mod service;
pub mod serving;
