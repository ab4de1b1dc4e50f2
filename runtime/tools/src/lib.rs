//! Switchboard's offline tools, run by `switchboard-runtime <command>` beside serving (the same
//! engine as `serve`, through `switchboard-serving`), never on the serving path:
//!
//! - [`eval`] (retrieval), [`eval_answers`] (answers, staged; the AdapterPatch evaluation gate),
//!   [`eval_rewrite`] (query rewriting);
//! - [`rerank_training`], [`encoder_training`], [`evidence_training`]: the cross-encoder, the
//!   bi-encoder and the evidence scorer, trained in-process with tch;
//! - [`router_fit`]: the Router's difficulty model fitted on outcomes (`router fit`);
//! - [`synth_queries`], [`synth_answers`]: synthetic questions and grounded answers from a
//!   knowledge base.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod encoder_training;
pub mod eval;
pub mod eval_answers;
pub mod eval_rewrite;
pub mod evidence_training;
pub mod rerank_training;
pub mod router_fit;
pub mod synth_answers;
pub mod synth_queries;
