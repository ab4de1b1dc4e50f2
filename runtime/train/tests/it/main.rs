//! The integration tests of this crate in one test binary (`cargo test --test it`), one module
//! per story: one link and one codegen of the dependencies' generics instead of one per file
//! (a cold CI build links each test binary against libtorch and the async stack).
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod cli;
mod dpo;
mod grpo;
mod hotfix;
mod multiturn;
mod sft_rollout;
mod support;
mod training_job;
