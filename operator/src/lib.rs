//! Switchboard operator: four kube-rs controllers (Router, AdapterPatch, KnowledgeBase,
//! Experiment), each a pipeline validate -> build (pure) -> apply (server-side apply) -> status.
//!
//! - `switchboard_crds::compile`: Router + KnowledgeBase + AdapterPatches + Experiments ->
//!   RuntimeConfig (pure; shared with the CLI and the runtime's embedded default).
//! - [`adapter_patch::rollout`]: the AdapterPatch rollout state machine (pure).
//! - [`router`], [`adapter_patch`], [`knowledge_base`], [`experiment`]: the controllers and their
//!   pure builders.
//! - [`observe`]: outcome counts from Prometheus (PromQL per docs/metrics.md).
//! - [`leader`]: Lease-based leader election; [`rbac`]: the ClusterRole rules.
//!
//! The pure parts are functions of their inputs (including `now`), so they are tested without an
//! API server and an operator restart resumes from status alone.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod adapter_patch;
pub mod child;
pub mod context;
pub mod controllers;
pub mod error;
pub mod experiment;
pub mod fakes;
pub mod http_client;
pub mod knowledge_base;
pub mod leader;
pub mod metrics;
pub mod names;
pub mod observe;
pub mod outcomes;
pub mod pod;
pub mod ports;
pub mod rbac;
pub mod router;
pub mod server;
