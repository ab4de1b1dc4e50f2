//! Switchboard operator core: the pure parts of the controllers.
//!
//! - [`compile`]: Router + KnowledgeBase + AdapterPatches + Experiments -> RuntimeConfig.
//! - [`adapter_patch::rollout`]: the AdapterPatch rollout state machine.
//!
//! Both are pure functions of their inputs (including `now`), so they are tested without an API
//! server and an operator restart resumes from status alone.
#![forbid(unsafe_code)]

pub mod adapter_patch;
pub mod compile;
