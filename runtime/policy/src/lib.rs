//! Switchboard's per-request decisions, without models.
//!
//! The runtime answers a customer turn in steps (DESIGN.md "The runtime, one request"); every
//! decision in those steps that does not need a forward pass lives here, as pure functions over
//! the loaded [`RuntimeConfig`](switchboard_crds::runtime_config::RuntimeConfig), so it can be
//! tested exhaustively and reasoned about without libtorch:
//!
//! | Step | Module |
//! |---|---|
//! | experiment enrolment and arm (stable hash of unit + salt, permanent holdout) | [`experiment`] |
//! | which adapter version serves a lineage (stable / canary by weight, sticky per unit), shadow sampling | [`plan`] |
//! | small or large model (difficulty estimate, threshold, queue depth, exploration) | [`route`] |
//! | which adapters apply (query embedding vs each adapter's domain centroid) | [`select`] |
//! | rewrite the query or not, and the fixed rewrite template | [`rewrite`] |
//! | signed interaction tokens and outcomes | [`token`] |
//! | citations, refusals, divergence of two answers | [`answer`] |
//! | evidence sentences, their scores, the grounded prompt, the output check, generative / extractive / refusal | [`grounding`] |
//!
//! Hashing is SHA-256 everywhere ([`hash::unit_interval`]): assignments are stable across
//! processes, restarts and versions of this crate, which a `DefaultHasher` would not be.
#![warn(missing_docs)]
pub mod answer;
pub mod experiment;
pub mod grounding;
pub mod hash;
pub mod plan;
pub mod redact;
pub mod rewrite;
pub mod route;
pub mod select;
pub mod text;
pub mod token;

pub use answer::{
    CitationCheck, check_citations, cosine_distance, declines, is_refusal, parse_citations,
};
pub use experiment::{Assignment, HOLDOUT_ARM, assign, enrol};
pub use plan::{Served, ServingPlan};
pub use rewrite::{REWRITE_TEMPLATE, RewriteDecision, Vocabulary, rewrite_prompt, should_rewrite};
pub use route::{
    Difficulty, DifficultyModel, ModelKind, QueryFeatures, RetrievalSignals, RouteDecision,
    RouteInput, RouteReason, RouteRecord, decide,
};
pub use select::{DomainIndex, Selected};
pub use token::{
    Claims, Outcome, OutcomeError, TokenError, TokenKeys, Variant, new_interaction_id,
};
